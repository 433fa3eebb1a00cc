"""DS2's bigram outputs (issue 15): the alphabet's segmentation of words into non-overlapping
bigrams from the left, the vocabulary built from training text, and every decoder (greedy,
streaming, forced alignment, ds2's LM beam search, pyctcdecode) turning bigram labels back
into characters."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import WeakModelFrames, sentences_lm

from ds2.alignment import align, greedy_words
from ds2.checkpoint import load_model, save_checkpoint
from ds2.ctc import min_frames
from ds2.decode import BeamSearchOptions, beam_decode, decode_cache, greedy_decode
from ds2.decode.beam import LmDecoder, extension
from ds2.metrics import score_pairs
from ds2.model import DeepSpeech2, ModelConfig
from ds2.segment import segment_features
from ds2.streaming import StreamDecoder
from ds2.text import BLANK, ENGLISH, Alphabet

V1_CHECKPOINT = Path(__file__).parent / "data" / "checkpoint_v1.pt"  # written before bigrams existed
SENTENCES = [
    "the cat sat on the mat", "a dog ran in the park", "the old man sold his boat", "she reads a book at night",
    "my brother likes green apples", "we walk to the school", "the red car stopped here", "they sing a song",
    "his sister bought a new lamp", "the small bird can fly", "our friends play in the garden",
    "the baker sells fresh bread", "a girl found the key", "the teacher opened the door",
]
# English letters plus a few bigrams: enough to check the segmentation rule by hand
HAND = Alphabet(ENGLISH + ("th", "he", "ll", "el", "ee"))


def english_bigrams(n_bigrams: int = 40) -> Alphabet:
    return Alphabet.with_bigrams(SENTENCES, n_bigrams, base=Alphabet())


def random_texts(rng: np.random.Generator, n_texts: int, letters: str = "abelst") -> list[str]:
    """Normalized texts of 1-6 words: words of odd and even length (1-9), drawn from few
    letters so that repeated letters ("lll") and bigrams are common, some with an apostrophe
    inside."""
    texts = []
    for _ in range(n_texts):
        words = []
        for _ in range(rng.integers(1, 7)):
            word = "".join(rng.choice(list(letters), rng.integers(1, 10)))
            if len(word) > 2 and rng.random() < 0.2:
                cut = int(rng.integers(1, len(word)))
                word = word[:cut] + "'" + word[cut:]
            words.append(word)
        texts.append(" ".join(words))
    return texts


# --------------------------------------------------------------------------- the alphabet


@pytest.mark.parametrize("text, symbols", [
    ("hello", ["he", "ll", "o"]),
    ("the", ["th", "e"]),  # not t + he: pairs are taken from the left
    ("heel", ["he", "el"]),  # non-overlapping: "ee" is not looked at
    ("shell", ["s", "he", "ll"]),  # "sh" is no bigram: s alone, then the pairs go on at "h"
    ("bell", ["b", "el", "l"]),
    ("lll", ["ll", "l"]),
    ("ab", ["a", "b"]),
    ("e", ["e"]),
    ("don't", ["d", "o", "n", "'", "t"]),
    ("the hello", ["th", "e", " ", "he", "ll", "o"]),  # each word starts afresh after the space
    ("sheet  eel", ["s", "he", "e", "t", " ", " ", "ee", "l"]),
    ("", []),
])
def test_segmentation_follows_ds2s_rule(text, symbols):
    assert HAND.segment(text) == symbols
    assert HAND.encode(text) == [HAND.symbols.index(symbol) + 1 for symbol in symbols]
    assert HAND.decode(HAND.encode(text)) == text


def test_round_trip_on_random_texts():
    """decode(encode(t)) == t, and the labels are DS2's segmentation: bigrams wherever the
    left-to-right cut finds one, a single character only where the pair it starts is none."""
    rng = np.random.default_rng(0)
    alphabet = Alphabet.with_bigrams(random_texts(rng, 200), 12)
    assert alphabet.has_bigrams and len(alphabet.bigrams) == 12
    n_bigram_labels = 0
    for text in random_texts(rng, 500) + ["aaaa", "l", "'", "ee ll tt"]:
        labels = alphabet.encode(text)
        assert alphabet.decode(labels) == text
        symbols = [alphabet.symbols[label - 1] for label in labels]
        assert "".join(symbols) == text
        n_bigram_labels += sum(len(symbol) == 2 for symbol in symbols)
        position = 0
        for symbol in symbols:
            if len(symbol) == 1:  # DS2's rule: taken alone only when the pair it starts is no bigram
                assert text[position:position + 2] not in alphabet.bigrams, (text, symbols)
            position += len(symbol)
        # blanks anywhere do not change the text
        with_blanks = [x for label in labels for x in (label, BLANK)]
        assert alphabet.decode(with_blanks) == text
    assert n_bigram_labels > 500  # the texts did use bigrams


def test_single_character_alphabets_are_unchanged():
    alphabet = Alphabet()
    assert not alphabet.has_bigrams and alphabet.characters == alphabet.symbols
    assert alphabet.encode("the hello") == [alphabet.symbols.index(char) + 1 for char in "the hello"]
    assert repr(alphabet) == "Alphabet(\" 'abcdefghijklmnopqrstuvwxyz\")"


def test_with_bigrams_counts_non_overlapping_pairs_most_frequent_first():
    texts = ["Hello, yellow bell!", "cab ab"]
    # pairs from the left: he ll | ye ll ow | be ll | ca | ab ("el" is in all three words but
    # never a pair of the cut; counted overlapping it would tie with "ll")
    alphabet = Alphabet.with_bigrams(texts, 3)
    assert alphabet.symbols == Alphabet.from_texts(texts).symbols + ("ll", "ab", "be")  # ties by the string
    assert Alphabet.with_bigrams(list(reversed(texts)), 3) == alphabet
    assert alphabet.segment("yellow") == ["y", "e", "ll", "o", "w"]  # "ye" was not among the 3
    everything = Alphabet.with_bigrams(texts, 100)
    assert sorted(everything.bigrams) == ["ab", "be", "ca", "he", "ll", "ow", "ye"]
    assert everything.symbols[-7:-4] == ("ll", "ab", "be")
    assert Alphabet.with_bigrams(texts, 0) == Alphabet.from_texts(texts)


def test_with_bigrams_on_a_base_alphabet():
    alphabet = Alphabet.with_bigrams(["hello yellow bell", "cab ab"], 10, base=Alphabet(" abehlowy"))
    assert alphabet.symbols[:9] == tuple(" abehlowy")
    assert "ca" not in alphabet.bigrams  # "c" is not in the base: no pair with it
    assert alphabet.bigrams == {"ab", "be", "he", "ll", "ow", "ye"}
    english = english_bigrams()
    assert english.symbols[:28] == ENGLISH and len(english) == 29 + 40
    with pytest.raises(ValueError, match="single characters"):
        Alphabet.with_bigrams(SENTENCES, 5, base=english)
    with pytest.raises(ValueError, match=">= 0"):
        Alphabet.with_bigrams(SENTENCES, -1)


def test_bigram_labels_are_fewer_than_characters():
    """What stride 3 needs: fewer labels, so fewer output frames, per transcript."""
    alphabet = english_bigrams()
    labels = []
    for text in SENTENCES:
        labels.append(alphabet.encode(text))
        assert len(labels[-1]) < len(text)
    padded = torch.zeros(len(labels), max(map(len, labels)), dtype=torch.long)
    for row, sequence in enumerate(labels):
        padded[row, :len(sequence)] = torch.tensor(sequence)
    needed = min_frames(padded, torch.tensor([len(sequence) for sequence in labels]))
    needed_chars = [len(text) + sum(a == b for a, b in zip(text, text[1:])) for text in SENTENCES]
    assert needed.sum() < 0.8 * sum(needed_chars), (needed.sum(), sum(needed_chars))


@pytest.mark.parametrize("symbols", [
    list(ENGLISH) + ["a b"],  # a space inside
    list(ENGLISH) + ["the"],  # three characters
    list("abc ") + ["ax"],  # "x" is not a character of the alphabet
    list("abc ") + ["ab", "ab"],
])
def test_bad_bigram_alphabets_are_refused(symbols):
    with pytest.raises(ValueError, match="single characters|repeated"):
        Alphabet(symbols)


def test_unknown_characters_are_named_with_bigrams_too():
    with pytest.raises(ValueError, match="outside the alphabet: '4', '\u00e9'$"):
        english_bigrams().encode("the caf\u00e9 at 4")


def test_saved_alphabets_and_checkpoints_keep_their_bigrams(tmp_path):
    alphabet = english_bigrams(10)
    alphabet.save(tmp_path / "alphabet.json")
    assert json.loads((tmp_path / "alphabet.json").read_text()) == list(alphabet.symbols)  # the same format
    assert Alphabet.load(tmp_path / "alphabet.json") == alphabet
    model = DeepSpeech2(ModelConfig(conv_layers=1, rnn_layers=1, rnn_hidden=8, fc_hidden=8,
                                    alphabet=alphabet.to_list(), n_outputs=len(alphabet)))
    save_checkpoint(tmp_path / "m.pt", model, {"state": {"step": 1}})
    loaded, loaded_alphabet = load_model(tmp_path / "m.pt")
    assert loaded_alphabet == alphabet and loaded_alphabet.has_bigrams
    assert loaded.config.n_outputs == 29 + 10


def test_an_old_single_character_checkpoint_still_loads():
    model, alphabet = load_model(V1_CHECKPOINT)
    assert alphabet == Alphabet() and not alphabet.has_bigrams and model.config.n_outputs == 29
    assert alphabet.encode("the cat") == [alphabet.symbols.index(char) + 1 for char in "the cat"]
    # its outputs decode as they did (the texts stored beside it, from before bigrams)
    expected = torch.load(V1_CHECKPOINT.with_name("checkpoint_v1_expected.pt"), weights_only=True)
    assert greedy_decode(expected["logits"], expected["output_lengths"], alphabet) == expected["texts"]


# --------------------------------------------------------------------------- decoding


def label_log_probs(labels: list[int], vocabulary: int, rng: np.random.Generator,
                    confusions: dict[int, int] | None = None, space: int = 1) -> np.ndarray:
    """(T, V) log-probs of a model that spells ``labels``: each over 1-3 frames (p 0.8-0.99),
    blanks between (always between a repeated label), the rest of the mass spread over the
    labels but the space (label ``space``: a model hears a word break only between words); a
    label in ``confusions`` is heard as its look-alike (0.5) more than as itself (0.35)."""
    confusions = confusions or {}
    frames = WeakModelFrames(vocabulary, space, rng)
    frame = frames.add
    frame(BLANK, 0.9)
    for k, label in enumerate(labels):
        for _ in range(rng.integers(1, 4)):
            if label in confusions:
                frame(confusions[label], 0.5, label, 0.35)
            else:
                frame(label, rng.uniform(0.8, 0.99))
        repeat = k + 1 < len(labels) and labels[k + 1] == label
        for _ in range(rng.integers(1 if repeat else 0, 3)):
            frame(BLANK, rng.uniform(0.8, 0.99))
    frame(BLANK, 0.9)
    return frames.log_probs()


def clean_log_probs(labels: list[int], vocabulary: int, p: float = 0.98) -> np.ndarray:
    """(3 L, V) log-probs: each label on 2 frames (probability p), then a blank frame."""
    rows = [row for label in labels for row in (label, label, BLANK)]
    probs = np.full((len(rows), vocabulary), (1 - p) / (vocabulary - 1))
    probs[np.arange(len(rows)), rows] = p
    return np.log(probs).astype(np.float32)


def test_greedy_decoding_expands_bigrams():
    alphabet = english_bigrams()
    rng = np.random.default_rng(1)
    log_probs = [label_log_probs(alphabet.encode(text), len(alphabet), rng) for text in SENTENCES]
    best_labels = {int(label) for values in log_probs for label in values.argmax(axis=1)}
    assert len({label for label in best_labels if len(alphabet.symbols[label - 1]) == 2}) > 10
    batch = torch.full((len(SENTENCES), max(map(len, log_probs)), len(alphabet)), -50.0)
    batch[:, :, BLANK] = 0.0
    for row, values in enumerate(log_probs):
        batch[row, :len(values)] = torch.from_numpy(values)
    lengths = torch.tensor([len(values) for values in log_probs])
    assert greedy_decode(batch, lengths, alphabet) == SENTENCES
    cache = {"alphabet": alphabet.to_list(), "errors": {},
             "log_probs": {i: torch.from_numpy(values) for i, values in enumerate(log_probs)}}
    assert decode_cache(cache) == dict(enumerate(SENTENCES))
    words = greedy_words(log_probs[0], alphabet)
    assert [word for word, _, _ in words] == SENTENCES[0].split()


def test_streaming_greedy_finals_expand_bigrams():
    alphabet = english_bigrams()
    rng = np.random.default_rng(2)
    text = "the baker sells fresh bread"
    log_probs = torch.from_numpy(label_log_probs(alphabet.encode(text), len(alphabet), rng))
    decoder = StreamDecoder(alphabet, frame_seconds=0.03)
    partials = [result for start in range(0, len(log_probs), 7) for result in decoder.push(log_probs[start:start + 7])]
    (final,) = decoder.finish()
    assert final["text"] == text and partials[-1]["text"] == text
    assert [word["word"] for word in final["words"]] == text.split()
    assert all(word["start"] is not None for word in final["words"])


def test_forced_alignment_times_the_characters_of_bigram_labels():
    """Frames are known: each label spans 2 frames, one blank after it. Both characters of a
    bigram get its frames; words get their first to last label's frames."""
    alphabet = english_bigrams()
    text = "the small bird"
    labels = alphabet.encode(text)
    spans = [(3 * k, 3 * k + 2) for k in range(len(labels))]
    alignment = align(clean_log_probs(labels, len(alphabet)), text, alphabet)
    assert "".join(char.text for char in alignment.chars) == text and len(alignment.chars) == len(text)
    symbols = alphabet.segment(text)
    assert symbols[:2] == ["th", "e"]
    expected_chars = [span for symbol, span in zip(symbols, spans) for _ in symbol]
    assert [(char.start, char.end) for char in alignment.chars] == expected_chars
    word_labels = np.cumsum([0] + [len(alphabet.segment(word)) + 1 for word in text.split()])
    assert [(word.text, word.start, word.end) for word in alignment.words] == [
        (word, spans[word_labels[k]][0], spans[word_labels[k + 1] - 2][1]) for k, word in enumerate(text.split())]
    assert all(word.score == pytest.approx(0.98, abs=1e-6) for word in alignment.words)
    # long transcripts are aligned in windows cut between words: the same times
    long_text = " ".join(SENTENCES)
    long_log_probs = clean_log_probs(alphabet.encode(long_text), len(alphabet))
    whole = align(long_log_probs, long_text, alphabet)
    windows = align(long_log_probs, long_text, alphabet, max_cells=len(long_log_probs) * 60)
    assert windows.windows > 1 and not windows.unaligned
    assert [(w.text, w.start, w.end) for w in windows.words] == [(w.text, w.start, w.end) for w in whole.words]
    assert [w.text for w in whole.words] == long_text.split()
    assert "".join(char.text for char in windows.chars) == long_text


def test_segment_features_count_labels_for_ctc_and_characters_for_the_ratios():
    alphabet = english_bigrams()
    text = "the small bird can fly"
    labels = alphabet.encode(text)
    log_probs = torch.from_numpy(label_log_probs(labels, len(alphabet), np.random.default_rng(4)))
    features = segment_features(log_probs, text, alphabet)
    expected = torch.nn.functional.ctc_loss(log_probs[:, None], torch.tensor([labels]), torch.tensor([len(log_probs)]),
                                            torch.tensor([len(labels)]), reduction="sum").item()
    assert features["ctc_cost"] == pytest.approx(expected, abs=1e-3)
    assert features["chars"] == len(text)


@pytest.fixture(scope="module")
def lm_files(tmp_path_factory):
    return sentences_lm(tmp_path_factory.mktemp("bigram_lm"), SENTENCES)


# look-alike letters; a label's look-alike is the label with them swapped, when the alphabet has it
LOOK_ALIKES = {"c": "k", "k": "c", "s": "z", "e": "i", "i": "e", "o": "u", "a": "e", "d": "t", "t": "d", "b": "p",
               "p": "b", "m": "n", "n": "m", "g": "k"}


def confused_log_probs(text: str, alphabet: Alphabet, rng: np.random.Generator, rate: float = 0.3) -> np.ndarray:
    labels = alphabet.encode(text)
    confusions = {}
    for label in set(labels):
        symbol = alphabet.symbols[label - 1]
        other = "".join(LOOK_ALIKES.get(char, char) for char in symbol)
        if other != symbol and other in alphabet.symbols and rng.random() < rate:
            confusions[label] = alphabet.symbols.index(other) + 1
    return label_log_probs(labels, len(alphabet), rng, confusions)


def test_lm_beam_search_over_bigram_labels(lm_files):
    """ds2's compiled search: bigram labels extend the words being spelled (checked against
    the LM's unigrams), words end only at the space label, and the LM sets right what the
    look-alike labels got wrong."""
    alphabet = english_bigrams()
    rng = np.random.default_rng(5)
    references = [SENTENCES[i % len(SENTENCES)] for i in range(28)]
    log_probs = [confused_log_probs(text, alphabet, rng) for text in references]
    options = BeamSearchOptions(str(lm_files.binary), alpha=0.8, beta=1.0, beam_width=32, jobs=1)
    texts = beam_decode(log_probs, alphabet, options)
    greedy = [greedy_decode(torch.from_numpy(lp)[None], torch.tensor([len(lp)]), alphabet)[0] for lp in log_probs]
    wer_greedy = score_pairs(zip(references, greedy)).wer
    wer_beam = score_pairs(zip(references, texts)).wer
    assert wer_greedy > 10 and wer_beam < 2, (wer_greedy, wer_beam)
    assert sum(a == b for a, b in zip(texts, references)) >= 0.9 * len(references)
    # without an LM, nothing says which spelling is a word: the look-alikes stay
    no_lm = beam_decode(log_probs, alphabet, replace(options, lm=""))
    assert score_pairs(zip(references, no_lm)).wer > 10


def test_beam_search_word_times_and_n_best_over_bigram_labels(lm_files):
    """Each label on 2 known frames: a word runs from its first label's first frame to its
    last label's last, whether those labels are bigrams or characters; the confidence is the
    labels' probability."""
    alphabet = english_bigrams()
    text = "the teacher opened the door"
    log_probs = clean_log_probs(alphabet.encode(text), len(alphabet), p=0.9)
    label_frames = range(0, len(log_probs), 3)
    decoder = LmDecoder(alphabet, BeamSearchOptions(str(lm_files.binary), alpha=0.8, beta=1.0, beam_width=16))
    best = decoder.decode(log_probs)
    assert best.text == text
    first_label = np.cumsum([0] + [len(alphabet.segment(word)) + 1 for word in text.split()])
    assert [(w.word, w.start, w.end) for w in best.words] == [
        (word, label_frames[first_label[k]], label_frames[first_label[k + 1] - 2] + 2)
        for k, word in enumerate(text.split())]
    assert all(w.confidence == pytest.approx(0.9, abs=1e-4) for w in best.words)
    n_best = decoder.n_best_of(log_probs, 4)
    assert len({h.text for h in n_best}) == len(n_best) > 1  # distinct texts, not spellings of one


def test_hotwords_spelled_with_bigram_labels(lm_files):
    """'zebra' is no word of the LM; spelled with the bigram labels "ze" and "br" (the first heard
    as "s"), only its hotword boost, given while the bigrams grow it, keeps it."""
    alphabet = Alphabet.with_bigrams(SENTENCES + ["zebra zebra"], 40, base=Alphabet())
    assert "ze" in alphabet.bigrams and "br" in alphabet.bigrams
    text = "the zebra"
    labels = alphabet.encode(text)
    ze, se = alphabet.symbols.index("ze") + 1, alphabet.symbols.index("s") + 1
    log_probs = label_log_probs(labels, len(alphabet), np.random.default_rng(6), {ze: se})
    options = BeamSearchOptions(str(lm_files.binary), alpha=0.5, beta=1.0, beam_width=16)
    assert LmDecoder(alphabet, options).decode(log_probs).text != text
    boosted = replace(options, hotwords=("zebra",), hotword_weight=12.0)
    assert LmDecoder(alphabet, boosted).decode(log_probs).text == text


def test_the_compiled_search_refuses_a_label_with_a_space():
    core = extension()
    log_probs = np.log(np.full((2, 3), 1 / 3, dtype=np.float32))
    with pytest.raises(ValueError, match="contains a space"):
        core.decode(None, ["", " ", "a b"], core.Options(), [], log_probs)


def test_pyctcdecode_decodes_bigram_labels_too(lm_files):
    pytest.importorskip("pyctcdecode")
    alphabet = english_bigrams()
    rng = np.random.default_rng(7)
    references = SENTENCES[:6]
    log_probs = [confused_log_probs(text, alphabet, rng) for text in references]
    options = BeamSearchOptions(str(lm_files.binary), alpha=0.8, beta=1.0, beam_width=32, jobs=1,
                                decoder="pyctcdecode")
    greedy = [greedy_decode(torch.from_numpy(lp)[None], torch.tensor([len(lp)]), alphabet)[0] for lp in log_probs]
    assert sum(a != b for a, b in zip(greedy, references)) >= 3  # the LM has work to do
    assert beam_decode(log_probs, alphabet, options) == references
