"""CTC forced alignment: Viterbi (numba, torch) against torchaudio and brute force; spans; windows."""

import itertools
import math

import numpy as np
import pytest
import torch
import torchaudio.functional as TAF

from ds2.alignment import AlignmentError, align, anchor_cuts, char_spans, ctm_lines, greedy_words, viterbi, word_spans
from ds2.text import BLANK, Alphabet

ALPHABET = Alphabet()


def _random_log_probs(n_frames: int, n_outputs: int, seed: int, peak: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((n_frames, n_outputs)) * 2
    if peak:
        logits[np.arange(n_frames), rng.integers(0, n_outputs, n_frames)] += peak
    return torch.log_softmax(torch.from_numpy(logits), dim=-1).float().numpy()


def _path_tokens(states: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return np.where(states % 2 == 1, labels[np.maximum(states - 1, 0) // 2], BLANK)


def _path_score(log_probs: np.ndarray, states: np.ndarray, labels: np.ndarray) -> float:
    return float(log_probs[np.arange(len(states)), _path_tokens(states, labels)].astype(np.float64).sum())


def _brute_force_best(log_probs: np.ndarray, labels: list[int]) -> float:
    """max over every frame labelling that collapses to ``labels``."""
    best = -math.inf
    for path in itertools.product(range(log_probs.shape[1]), repeat=len(log_probs)):
        collapsed = [k for k, _ in itertools.groupby(path) if k != BLANK]
        if collapsed == labels:
            best = max(best, float(sum(log_probs[t, k] for t, k in enumerate(path))))
    return best


@pytest.mark.parametrize("labels", [[1], [1, 2], [2, 2], [1, 2, 1], [3, 3, 3]])
def test_viterbi_is_the_best_path_by_brute_force(labels):
    log_probs = _random_log_probs(6, 4, seed=len(labels) * 7 + labels[0]).astype(np.float64)
    for backend in ("numba", "torch"):
        states, score = viterbi(log_probs, np.array(labels), backend=backend)
        assert score == pytest.approx(_brute_force_best(log_probs, labels), abs=1e-9)
        assert score == pytest.approx(_path_score(log_probs, states, np.array(labels)), abs=1e-9)
        collapsed = [k for k, _ in itertools.groupby(_path_tokens(states, np.array(labels)).tolist()) if k != BLANK]
        assert collapsed == labels


@pytest.mark.parametrize("seed", range(12))
def test_numba_and_torch_agree_with_torchaudio_forced_align(seed):
    rng = np.random.default_rng(seed)
    n_labels = int(rng.integers(1, 30))
    labels = rng.integers(1, 29, n_labels)
    if seed % 3 == 0:
        labels[1::2] = labels[0]  # many repeated neighbours
    n_frames = n_labels + int(np.sum(labels[1:] == labels[:-1])) + int(rng.integers(0, 60))
    log_probs = _random_log_probs(n_frames, 29, seed, peak=4.0 if seed % 2 else 0.0)
    reference, reference_scores = TAF.forced_align(torch.from_numpy(log_probs)[None], torch.from_numpy(labels)[None])
    reference_score = float(reference_scores.double().sum())
    for backend in ("numba", "torch"):
        states, score = viterbi(log_probs, labels, backend=backend)
        same_path = np.array_equal(_path_tokens(states, labels), reference[0].numpy())
        assert same_path or score == pytest.approx(reference_score, abs=1e-4), backend  # a tie may go either way
        assert score == pytest.approx(reference_score, abs=1e-4)


def test_labels_that_cannot_fit_are_an_alignment_error():
    log_probs = _random_log_probs(4, 5, seed=0)
    with pytest.raises(AlignmentError, match="need 5 frames, the audio has 4"):
        viterbi(log_probs, np.array([1, 1, 2, 3]))  # 4 labels + 1 repeat
    with pytest.raises(AlignmentError, match="no CTC path"):
        impossible = np.full((5, 5), -np.inf, dtype=np.float32)
        impossible[:, 0] = 0.0  # only blanks are possible
        viterbi(impossible, np.array([2]))


def _spelled(text: str, frames_per_char: int = 3, blank_frames: int = 2, confidence: float = 0.9) -> np.ndarray:
    """Log-probs that spell ``text``: each character for a few frames, blanks between."""
    rows = []
    for char in text:
        for _ in range(frames_per_char):
            row = np.full(len(ALPHABET), (1 - confidence) / (len(ALPHABET) - 1))
            row[ALPHABET.encode(char)[0]] = confidence
            rows.append(row)
        rows += [np.eye(len(ALPHABET))[0] * 0.98 + 0.02 / len(ALPHABET)] * blank_frames
    return np.log(np.array(rows, dtype=np.float32))


def test_spans_of_characters_and_words():
    text = "the cat"
    log_probs = _spelled(text)
    labels = np.array(ALPHABET.encode(text))
    states, _ = viterbi(log_probs, labels)
    chars = char_spans(states, log_probs, labels, text)
    assert [(c.text, c.start, c.end) for c in chars[:2]] == [("t", 0, 3), ("h", 5, 8)]
    assert all(c.score == pytest.approx(0.9, abs=1e-5) for c in chars)
    words = word_spans(chars)
    assert [(w.text, w.start, w.end) for w in words] == [("the", 0, 13), ("cat", 20, 33)]
    lines = ctm_lines("utt1", align(log_probs, "The CAT!", ALPHABET), frame_seconds=0.03)
    assert lines == ["utt1 1 0.000 0.390 the 0.9000", "utt1 1 0.600 0.390 cat 0.9000"]


def test_align_refuses_what_it_cannot_align():
    log_probs = _spelled("the cat")
    with pytest.raises(AlignmentError, match="empty transcript"):
        align(log_probs, " ... ", ALPHABET)
    with pytest.raises(AlignmentError, match="outside the alphabet"):
        align(log_probs, "the 2 cats", ALPHABET)
    with pytest.raises(AlignmentError, match="frames, the audio has"):
        align(log_probs, "the cat sat on the mat " * 3, ALPHABET)


def test_greedy_words_and_anchor_cuts():
    text = "one two three four five six"
    log_probs = _spelled(text)
    words = greedy_words(log_probs, ALPHABET)
    assert [w for w, _, _ in words] == text.split()
    assert words[0][1:] == (0, 13)  # "one": 3 characters of 3 frames with 2 blank frames between
    wrong = "one two tree four five six".split()  # "tree" breaks the run of matches
    cuts = anchor_cuts(log_probs, wrong, ALPHABET, anchor_words=2)
    assert [j for j, _ in cuts] == [1, 2, 3, 4, 5]  # around and inside "one two" and "four five six"
    assert all(words[j - 1][2] <= frame <= words[j][1] for j, frame in cuts)


def test_long_alignment_in_windows_matches_the_full_alignment():
    rng = np.random.default_rng(0)
    vocabulary = "the cat sat on a mat and dog ran far away home".split()
    text = " ".join(rng.choice(vocabulary, 120))
    log_probs = _spelled(text, confidence=0.7)
    full = align(log_probs, text, ALPHABET)
    assert full.windows == 1
    windowed = align(log_probs, text, ALPHABET, max_cells=60_000)  # forces many windows
    assert windowed.windows > 5 and not windowed.unaligned
    assert [(w.start, w.end) for w in windowed.words] == [(w.start, w.end) for w in full.words]


def test_a_stretch_without_anchors_that_is_too_large_is_reported_not_aligned():
    good = "one two three four five six seven eight nine ten"
    log_probs = np.concatenate([_spelled(good), _spelled(" " + "x" * 150 + " ", frames_per_char=1, blank_frames=1),
                                _spelled(good)])
    transcript = good + " " + " ".join(["zzz"] * 40) + " " + good  # the middle matches nothing
    result = align(log_probs, transcript, ALPHABET, max_cells=3000, anchor_words=3)
    assert result.unaligned and "no anchor" in result.unaligned[0]
    aligned = [w.text for w in result.words if w.aligned]
    assert aligned[:10] == good.split() and aligned[-10:] == good.split()
    assert all(not w.aligned for w in result.words if w.text == "zzz")
    record = result.to_record(0.03)
    assert record["words"][12]["start"] is None and record["unaligned"]
