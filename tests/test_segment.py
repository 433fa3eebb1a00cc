"""Segmentation at long pauses and the linear filter of bad transcripts."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile

from ds2.alignment import Span
from ds2.data import SpeechDataset, read_manifest, write_manifest
from ds2.segment import (FEATURES, FilterOptions, LinearFilter, SegmentOptions, cut_points, filter_segments,
                         segment_bounds, segment_manifest)
from ds2.synth import SynthConfig, synthesize_corpus
from ds2.text import Alphabet

CHECKPOINT = Path(__file__).parent / "data" / "checkpoint_v1.pt"


def _words(layout: list[tuple[int, int]]) -> list[Span]:
    """Word spans from (length, pause after) pairs in frames."""
    spans, frame = [], 0
    for k, (length, pause) in enumerate(layout):
        spans.append(Span(f"w{k}", frame, frame + length, 0.9))
        frame += length + pause
    return spans


def test_cuts_land_in_long_pauses_and_reach_the_target_length():
    # 40 words of 10 frames (0.1 s at 10 ms frames); a 30-frame pause after every 7th word, 2 frames otherwise
    words = _words([(10, 30 if k % 7 == 6 else 2) for k in range(40)])
    runs, threshold = cut_points(words, 0.01, SegmentOptions(target_seconds=0.8, max_seconds=2.0, min_seconds=0),
                                 n_frames=words[-1].end + 5, edge=3)
    assert 2 < threshold <= 30
    assert runs == [(0, 7), (7, 14), (14, 21), (21, 28), (28, 35), (35, 40)]
    bounds = segment_bounds(words, runs, n_frames=words[-1].end + 5, edge=3)
    assert bounds[0] == (0, (words[6].end + words[7].start + 1) // 2)
    assert all(a[1] in (b[0], b[0] + 1) for a, b in zip(bounds, bounds[1:]))  # cut in the middle of each pause
    assert bounds[-1][1] == words[-1].end + 3


def test_a_run_too_long_is_split_at_its_widest_pause_and_unaligned_words_are_never_inside():
    words = _words([(10, 4 if k == 12 else 1) for k in range(30)])  # one wider pause, after word 12
    runs, _ = cut_points(words, 0.01, SegmentOptions(target_seconds=1.0, max_seconds=2.0, min_seconds=0),
                         n_frames=words[-1].end)
    assert all(f1 - f0 <= 200 for f0, f1 in segment_bounds(words, runs, words[-1].end, 0))
    assert (0, 13) in runs or any(b == 13 for _, b in runs)
    holes = words[:10] + [Span("lost", -1, -1, math.nan)] + words[11:]
    runs, _ = cut_points(holes, 0.01, SegmentOptions(target_seconds=1.0, max_seconds=5.0, min_seconds=0),
                         n_frames=holes[-1].end)
    assert all(not (a <= 10 < b) for a, b in runs)


def test_segment_manifest_windows_are_readable_by_training(tmp_path):
    corpus = synthesize_corpus(tmp_path / "c", SynthConfig(n_train=0, n_dev=0, n_test=6, seed=4), progress=False)
    records = list(read_manifest(corpus["test"]))
    # one long recording: the six utterances one after the other, with the truth timed
    audio = [soundfile.read(r["audio_filepath"], dtype="float32")[0] for r in records]
    truth, offset = [], 0.0
    for record, samples in zip(records, audio):
        truth += [[w, offset + t] for w, t in zip(record["text"].split(), record["word_starts"]) if t is not None]
        offset += len(samples) / 16000
    soundfile.write(tmp_path / "long.wav", np.concatenate(audio), 16000)
    long_manifest = tmp_path / "long.json"
    text = " ".join(r["text"] for r in records)
    write_manifest(long_manifest, [{"audio_filepath": str(tmp_path / "long.wav"), "duration": offset, "text": text,
                                    "truth_words": truth}])
    summary = segment_manifest(CHECKPOINT, long_manifest, tmp_path / "out",
                               SegmentOptions(target_seconds=3.0, max_seconds=6.0), truth_field="truth_words")
    segments = list(read_manifest(tmp_path / "out" / "segments.json"))
    assert summary["segments"] == len(segments) >= 2 and summary["max_seconds"] <= 6.0
    assert " ".join(s["text"] for s in segments) == text  # every word once, in order
    assert all(set(FEATURES) <= set(s) and s["ctc_cost"] > 0 for s in segments)
    assert all(s["offset"] + s["duration"] <= offset + 2e-3 for s in segments)  # within the file (rounding)
    assert all("truth" in s for s in segments)
    dataset = SpeechDataset(tmp_path / "out" / "segments.json", Alphabet())
    example = dataset[0]
    assert abs(example.features.shape[1] - segments[0]["duration"] * 100) <= 2  # the window, not the file


def _segments(n_good: int, n_bad: int, seed: int = 0) -> list[dict]:
    """Hand-made segments: bad transcripts cost more per character."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n_good + n_bad):
        bad = k >= n_good
        chars = int(rng.integers(20, 80))
        cost = chars * (rng.uniform(1.5, 3.0) if bad else rng.uniform(0.05, 0.6))
        frames = int(chars * rng.uniform(2.5, 4))
        truth = " ".join(["word"] * (chars // 5))
        text = truth if not bad else " ".join(["drow"] * (chars // 5))
        out.append({"audio_filepath": f"/a/{k}.wav", "offset": 0.0, "duration": frames * 0.03, "text": text,
                    "truth": truth, "ctc_cost": cost, "cost_per_frame": cost / frames, "cost_per_char": cost / chars,
                    "frames_per_char": frames / chars, "words": chars // 5, "chars": chars})
    return out


def test_linear_filter_learns_the_boundary_and_reports_the_wer(tmp_path):
    segments = _segments(60, 25)
    write_manifest(tmp_path / "segments.json", segments)
    report = filter_segments(tmp_path / "segments.json", tmp_path / "out", FilterOptions(max_word_errors=0))
    assert report["cv_precision"] > 0.95 and report["cv_recall"] > 0.95
    assert report["wer_all"] > 20 and report["wer_kept"] < 2 and report["wer_rejected"] > 80
    kept = list(read_manifest(tmp_path / "out" / "kept.json", resolve_paths=False))
    assert abs(len(kept) - 60) <= 2 and all(0.5 <= s["p_good"] <= 1 for s in kept)
    # the saved classifier gives the same decisions on segments without a truth
    unlabelled = [{k: v for k, v in s.items() if k != "truth"} for s in segments]
    write_manifest(tmp_path / "new.json", unlabelled)
    again = filter_segments(tmp_path / "new.json", tmp_path / "out2", classifier=tmp_path / "out" / "classifier.json")
    assert again["kept"] == report["kept"] and again["wer_all"] is None


def test_filter_needs_labels_of_both_kinds(tmp_path):
    write_manifest(tmp_path / "good.json", _segments(20, 0))
    with pytest.raises(ValueError, match="all good or all bad"):
        filter_segments(tmp_path / "good.json", tmp_path / "out")
    write_manifest(tmp_path / "few.json", _segments(3, 2))
    with pytest.raises(ValueError, match="at least 10 are needed"):
        filter_segments(tmp_path / "few.json", tmp_path / "out")
    (tmp_path / "bad_classifier.json").write_text(json.dumps({"features": ["x"]}))
    with pytest.raises(ValueError, match="made for features"):
        LinearFilter.load(tmp_path / "bad_classifier.json")


def test_without_any_pause_a_long_recording_is_still_cut_under_the_maximum():
    words = _words([(10, 0)] * 100)  # 100 words back to back: no blank run at all
    runs, threshold = cut_points(words, 0.01, SegmentOptions(target_seconds=2.0, max_seconds=3.0, min_seconds=0),
                                 n_frames=1000)
    assert [b - a for a, b in runs] and all((words[b - 1].end - words[a].start) <= 300 for a, b in runs)
    assert runs[0][0] == 0 and runs[-1][1] == 100 and all(x[1] == y[0] for x, y in zip(runs, runs[1:]))
