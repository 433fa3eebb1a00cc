import math

import numpy as np
import pytest
import torch

from conftest import confusable_log_probs
from ds2 import decode
from ds2.decode import greedy_decode
from ds2.text import Alphabet


def _logits(paths: list[list[int]], n_outputs: int) -> torch.Tensor:
    """One-hot-ish logits whose argmax follows each path (padded with index 1)."""
    T = max(len(p) for p in paths)
    logits = torch.zeros(len(paths), T, n_outputs)
    for b, path in enumerate(paths):
        for t in range(T):
            logits[b, t, path[t] if t < len(path) else 1] = 5.0
    return logits


def test_greedy_merges_repeats_drops_blanks_and_respects_lengths():
    alphabet = Alphabet()  # 1 = space, 2 = apostrophe, 3 = a, ...
    c, a, t = (alphabet.encode(ch)[0] for ch in "cat")
    paths = [[c, c, 0, a, a, 0, 0, t], [t, 0, t, t, 0, 0], [0, 0, 0]]
    texts = greedy_decode(_logits(paths, len(alphabet)), torch.tensor([8, 6, 3]), alphabet)
    assert texts == ["cat", "tt", ""]


def test_greedy_ignores_steps_beyond_the_length():
    alphabet = Alphabet()
    a = alphabet.encode("a")[0]
    logits = _logits([[a, 0, a, a, a]], len(alphabet))
    assert greedy_decode(logits, torch.tensor([2]), alphabet) == ["a"]
    assert greedy_decode(logits, torch.tensor([5]), alphabet) == ["aa"]


def test_ds2_pruning_keeps_the_fewest_characters_reaching_p_at_most_top():
    log_probs = np.log(np.array([[0.5, 0.3, 0.15, 0.05], [0.97, 0.01, 0.01, 0.01]]))
    kept = decode.ds2_prune(log_probs, p=0.9, top=40) > decode.PRUNED_LOGP
    assert kept.tolist() == [[True, True, True, False], [True, False, False, False]]
    kept = decode.ds2_prune(log_probs, p=0.999, top=2) > decode.PRUNED_LOGP
    assert kept.sum(axis=1).tolist() == [2, 2]  # ties never push past the cap
    assert np.allclose(decode.ds2_prune(log_probs, 0.9, 40)[0, :3], log_probs[0, :3])


def test_beam_search_options_refuse_non_finite_weights():
    for bad in (dict(alpha=math.nan), dict(beta=math.inf), dict(beam_width=0)):
        with pytest.raises(ValueError):
            decode.BeamSearchOptions("lm.bin", **bad)


def test_lm_beam_search_fixes_what_greedy_gets_wrong(tmp_path):
    """An ambiguous frame between 'c' and 'k': greedy picks the misspelling, the LM the word."""
    from ds2 import lm

    try:
        lm.kenlm_tool("lmplz")
    except lm.LmError as err:
        pytest.skip(str(err))
    text = tmp_path / "text.txt"
    text.write_text("the cat sat\nthe cat ran\na cat sat here\n" * 20, encoding="utf-8")
    files = lm.build_lm([text], tmp_path / "lm", order=3)
    alphabet = Alphabet()
    log_probs = confusable_log_probs("the cat", alphabet, {"c": "k"})
    assert greedy_decode(torch.from_numpy(log_probs)[None], torch.tensor([len(log_probs)]), alphabet) == ["the kat"]
    options = decode.BeamSearchOptions(str(files.binary), alpha=1.0, beta=0.5, beam_width=20, jobs=1)
    assert decode.beam_decode([log_probs], alphabet, options) == ["the cat"]
    no_lm_weight = decode.BeamSearchOptions(str(files.binary), alpha=0.0, beta=0.0, beam_width=20, jobs=1)
    assert decode.beam_decode([log_probs], alphabet, no_lm_weight) == ["the kat"]


def test_beam_options_take_alpha_and_beta_as_given_else_tuned_else_the_defaults(tmp_path):
    model = tmp_path / "best.pt"
    defaults = decode.BeamSearchOptions(lm="lm.bin")
    options, tuned = decode.beam_options(defaults, model)
    assert (options.alpha, options.beta, tuned) == (defaults.alpha, defaults.beta, False)
    (tmp_path / decode.DECODING_FILE).write_text('{"alpha": 0.75, "beta": -1.5}')
    options, tuned = decode.beam_options(decode.BeamSearchOptions(lm="lm.bin", beam_width=7), model)
    assert (options.alpha, options.beta, options.beam_width, options.lm, tuned) == (0.75, -1.5, 7, "lm.bin", True)
    options, tuned = decode.beam_options(defaults, model, alpha=2.0)
    assert (options.alpha, options.beta, tuned) == (2.0, -1.5, True)
    options, tuned = decode.beam_options(defaults, model, alpha=2.0, beta=0.0)
    assert (options.alpha, options.beta, tuned) == (2.0, 0.0, False)
    (tmp_path / decode.DECODING_FILE).write_text('{"alpha": "high", "beta": 1}')
    with pytest.raises(ValueError, match="alpha/beta must be finite numbers"):
        decode.beam_options(defaults, model)
    (tmp_path / decode.DECODING_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="not a JSON decoding file"):
        decode.beam_options(defaults, model)


def test_split_at_pauses_cuts_long_log_probs_in_their_longest_blank_runs():
    frames = np.full((100, 5), -5.0)
    frames[:, 1] = 0.0  # speech everywhere ...
    frames[30:34, 0] = frames[60:70, 0] = frames[75:77, 0] = 1.0  # ... but three pauses
    assert decode.split_at_pauses(frames, 100) == [(0, 100)]
    assert decode.split_at_pauses(frames, 100, pause_frames=4) == [(0, 32), (32, 65), (65, 100)]  # every pause
    assert decode.split_at_pauses(frames, 80) == [(0, 65), (65, 100)]  # the longest pause in [40, 80)
    island = frames.copy()
    island[56:70, 0], island[62, 0] = 1.0, -9.0  # one frame of speech alone inside a long pause
    assert decode.split_at_pauses(island, 100, pause_frames=6) == [(0, 59), (59, 100)]  # cut before it only
    early = frames.copy()
    early[:, 0] = -9.0
    early[0:2, 1], early[2:20, 0] = 1.0, 1.0  # "w" at the very start, then silence before the word
    assert decode.split_at_pauses(early, 100, pause_frames=6) == [(0, 100)]  # nothing to cut it from
    pieces = decode.split_at_pauses(frames, 20)
    assert pieces[0] == (0, 20) and all(b - a <= 20 for a, b in pieces) and pieces[-1][1] == 100
    assert all(x[1] == y[0] for x, y in zip(pieces, pieces[1:]))


def test_decoding_a_manifest_whose_audio_all_fails_stops_with_a_message(tmp_path):
    """A manifest copied away from the audio its relative paths name: no hypotheses file full of
    errors, but an error naming the manifest and a file."""
    from ds2.checkpoint import save_checkpoint
    from ds2.data import write_manifest
    from ds2.decode import decode_manifest
    from ds2.model import DeepSpeech2, ModelConfig

    checkpoint = tmp_path / "best.pt"
    save_checkpoint(checkpoint, DeepSpeech2(ModelConfig(conv_layers=1, rnn_layers=1, rnn_hidden=8, fc_hidden=8)))
    manifest = tmp_path / "moved.json"
    write_manifest(manifest, [{"audio_filepath": f"wav/{i}.wav", "duration": 1.0, "text": "a b"} for i in range(3)])
    with pytest.raises(ValueError, match=r"moved\.json: none of its 3 audio files could be read.*0\.wav"):
        decode_manifest(checkpoint, manifest, tmp_path / "out.json")
    assert not (tmp_path / "out.json").exists()
