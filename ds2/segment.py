"""Long recordings into training segments, and a classifier that drops the bad ones (DS2 5.1).

**Segmentation** (:func:`cut_points`, :func:`segment_manifest`): after forced alignment, a
recording is cut where the best path has a long run of blanks between two words (for
space-delimited languages the run must hold the space, i.e. lie between words; with
``require_space=False`` any two characters). The run length K (frames) is chosen so that
segments average ``target_seconds`` with none longer than ``max_seconds``; a segment that
is still too long is split at its widest inner pause. Each cut falls in the middle of its
pause. Segments are windows (offset, duration) over the original file: no audio is copied,
and training reads them directly. Words the alignment could not place are never inside a
segment: the stretch goes to the rejects with the reason.

**Filtering** (:func:`segment_features`, :class:`LinearFilter`): per segment DS2's features:
the raw CTC cost -log p(transcript | audio), the cost per frame and per character, frames per
character, words and characters. A logistic regression on (standardized) features is
trained on a labelled subset: segments whose ``truth`` (a trusted transcript) is known,
labelled good when the segment's transcript is within ``max_word_errors`` word edits of it.
It then keeps or rejects every segment. Plain numpy (Newton's method with an L2 penalty):
six features do not need more.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ds2 import ctc
from ds2.align import AlignOptions, align_records, recording_of
from ds2.alignment import Alignment, Span
from ds2.checkpoint import load_model
from ds2.config import check, option
from ds2.data import read_manifest, write_manifest
from ds2.io import atomic_write
from ds2.longform import ChunkOptions
from ds2.metrics import scoring_text, word_errors
from ds2.text import Alphabet

log = logging.getLogger("ds2.segment")

FEATURES = ("ctc_cost", "cost_per_frame", "cost_per_char", "frames_per_char", "words", "chars")
EDGE_SECONDS = 0.2  # margin kept before/after a segment that has no aligned neighbour on that side


@dataclass(frozen=True)
class SegmentOptions:
    target_seconds: float = option(7.0, "Mean segment length to aim for (DS2: about 7 s).", above=0)
    max_seconds: float = option(15.0, "Longest segment.", above=0)
    min_seconds: float = option(1.0, "Segments shorter than this are merged into a neighbour when possible.", min=0)
    require_space: bool = option(True, "Cut only between words (space-delimited languages); --no-require-space "
                                 "cuts between any two characters.")

    def __post_init__(self):
        check(self)
        if self.max_seconds < self.target_seconds:
            raise ValueError("--max-seconds must be at least --target-seconds")


# --------------------------------------------------------------------------- cutting


def _units(alignment: Alignment, require_space: bool) -> list[Span]:
    """What segments are made of: words, or characters (spaces left out)."""
    return alignment.words if require_space else [c for c in alignment.chars if c.text != " "]


def _segments_for(units: list[Span], threshold: int) -> list[tuple[int, int]]:
    """Runs [a, b) of aligned units between pauses of >= threshold frames (unaligned units cut too)."""
    runs, start = [], None
    for k, unit in enumerate(units):
        if not unit.aligned:
            if start is not None:
                runs.append((start, k))
            start = None
            continue
        if start is None:
            start = k
        elif unit.start - units[k - 1].end >= threshold:
            runs.append((start, k))
            start = k
    if start is not None:
        runs.append((start, len(units)))
    return runs


def _window(units: list[Span], a: int, b: int, n_frames: int, edge: int) -> tuple[int, int]:
    """Frames [f0, f1) of the segment of units [a, b): the middle of the pause to each aligned
    neighbour, or ``edge`` frames of margin where there is none (the recording's ends, an
    unaligned stretch)."""
    first, last = units[a], units[b - 1]
    before = units[a - 1] if a > 0 and units[a - 1].aligned else None
    after = units[b] if b < len(units) and units[b].aligned else None
    f0 = (before.end + first.start + 1) // 2 if before else max(0, first.start - edge)
    f1 = (last.end + after.start + 1) // 2 if after else min(n_frames, last.end + edge)
    return f0, f1


def cut_points(units: list[Span], frame_seconds: float, options: SegmentOptions, n_frames: int,
               edge: int = 0) -> tuple[list[tuple[int, int]], int]:
    """Choose K and cut: returns the runs [a, b) of units forming segments, and K (frames).

    K is the pause length whose segments' mean length is closest to the target among those
    with no segment over the maximum (if none, the K with the shortest longest segment);
    runs still over the maximum are then split at their widest pause, and runs under the
    minimum joined to a neighbour. Lengths are those of the windows segment_bounds cuts.
    """
    if not units:
        return [], 0

    def length(run) -> float:
        f0, f1 = _window(units, run[0], run[1], n_frames, edge)
        return (f1 - f0) * frame_seconds

    gaps = sorted({units[k].start - units[k - 1].end for k in range(1, len(units))
                   if units[k].aligned and units[k - 1].aligned} | {1})
    best, best_key = None, None
    for threshold in gaps:
        if threshold < 1:
            continue
        runs = _segments_for(units, threshold)
        lengths = [length(run) for run in runs]
        if not lengths:
            continue
        too_long = max(lengths) > options.max_seconds
        key = (too_long, max(lengths) if too_long else abs(float(np.mean(lengths)) - options.target_seconds))
        if best_key is None or key < best_key:
            best, best_key = (runs, threshold), key
    runs, threshold = best if best else ([], 0)
    split = []
    for run in runs:
        split += _split_long(run, length, units, options.max_seconds)
    return _merge_short(split, length, options), threshold


def _split_long(run, length, units, max_seconds) -> list[tuple[int, int]]:
    a, b = run
    if length(run) <= max_seconds or b - a < 2:
        return [run]
    k = max(range(a + 1, b), key=lambda k: (units[k].start - units[k - 1].end, -abs(k - (a + b) / 2)))
    return _split_long((a, k), length, units, max_seconds) + _split_long((k, b), length, units, max_seconds)


def _merge_short(runs, length, options) -> list[tuple[int, int]]:
    """Join a segment shorter than min_seconds to the neighbour it is adjacent to (same
    aligned stretch) when the result stays within max_seconds."""
    merged: list[tuple[int, int]] = []
    for run in runs:
        if merged and merged[-1][1] == run[0]:
            joined = (merged[-1][0], run[1])
            if min(length(merged[-1]), length(run)) < options.min_seconds and length(joined) <= options.max_seconds:
                merged[-1] = joined
                continue
        merged.append(run)
    return merged


def segment_bounds(units: list[Span], runs: list[tuple[int, int]], n_frames: int, edge: int) -> list[tuple[int, int]]:
    """Frames [f0, f1) of each segment (see _window)."""
    return [_window(units, a, b, n_frames, edge) for a, b in runs]


def _text_of(alignment: Alignment, units: list[Span], run: tuple[int, int], require_space: bool) -> str:
    pieces = [unit.text for unit in units[run[0]: run[1]]]
    return " ".join(pieces) if require_space else "".join(pieces)


# --------------------------------------------------------------------------- features


def segment_features(log_probs: torch.Tensor, text: str, alphabet: Alphabet) -> dict[str, float]:
    """DS2's filter features of one segment: CTC cost and its ratios, words, characters."""
    labels = torch.tensor([alphabet.encode(text)])  # fewer than the characters with bigrams
    n_frames, n_chars = len(log_probs), len(text)
    cost = float(ctc.ctc_loss(log_probs[None].float(), labels, torch.tensor([n_frames]), torch.tensor([labels.shape[1]]),
                              reduction="none", backend="torch")[0])
    return {"ctc_cost": round(cost, 4), "cost_per_frame": round(cost / max(n_frames, 1), 5),
            "cost_per_char": round(cost / max(n_chars, 1), 5), "frames_per_char": round(n_frames / max(n_chars, 1), 4),
            "words": len(text.split()), "chars": n_chars}


def segment_manifest(checkpoint: str | Path, manifest: str | Path, out_dir: str | Path,
                     options: SegmentOptions = SegmentOptions(), chunks: ChunkOptions = ChunkOptions(),
                     align_options: AlignOptions = AlignOptions(), truth_field: str | None = None) -> dict:
    """Align, cut and measure every recording of ``manifest``.

    Writes ``segments.json`` (audio_filepath, offset, duration, text, the filter features,
    and ``truth``: the words of ``truth_field`` (a word-timed reference) that fall inside the
    segment, when the manifest has one), ``segments.rejects.json`` (recordings or stretches
    that could not be aligned, with the reason) and ``segment_summary.json``.
    """
    out_dir = Path(out_dir)
    model, alphabet = load_model(checkpoint)
    records = list(read_manifest(manifest))
    if not records:
        raise ValueError(f"{manifest}: no records to segment")
    segments, rejects, thresholds = [], [], []
    for item in align_records(model, alphabet, records, chunks, align_options):
        record = {k: v for k, v in item.record.items() if k != "line"}
        if item.error:
            rejects.append({**record, "reason": item.error})
            continue
        alignment, frame_seconds = item.alignment, item.log_probs.frame_seconds
        units = _units(alignment, options.require_space)
        edge = int(round(EDGE_SECONDS / frame_seconds))
        runs, threshold = cut_points(units, frame_seconds, options, alignment.n_frames, edge)
        thresholds.append(threshold)
        offset = float(record.get("offset", 0.0))
        for reason in alignment.unaligned:
            rejects.append({**record, "reason": f"{record['audio_filepath']}: {reason}"})
        for run, (f0, f1) in zip(runs, segment_bounds(units, runs, alignment.n_frames, edge)):
            text = _text_of(alignment, units, run, options.require_space)
            start = offset + f0 * frame_seconds
            end = min(offset + f1 * frame_seconds, offset + float(record["duration"]))  # the last frame overhangs
            segment = {
                "audio_filepath": record["audio_filepath"],
                "offset": round(start, 3),
                "duration": round(end - start, 3),
                "text": text,
                **segment_features(item.log_probs.log_probs[f0:f1], text, alphabet),
            }
            if truth_field and isinstance(record.get(truth_field), list):
                segment["truth"] = _truth_between(record[truth_field], segment["offset"],
                                                  segment["offset"] + segment["duration"])
            segments.append(segment)
    write_manifest(out_dir / "segments.json", segments)
    write_manifest(out_dir / "segments.rejects.json", rejects)
    lengths = [s["duration"] for s in segments]
    summary = {"recordings": len(records), "segments": len(segments), "rejected": len(rejects),
               "pause_frames_K": sorted(set(thresholds)),
               "mean_seconds": round(float(np.mean(lengths)), 2) if lengths else None,
               "max_seconds": round(max(lengths), 2) if lengths else None,
               "hours": round(sum(lengths) / 3600, 3)}
    with atomic_write(out_dir / "segment_summary.json") as handle:
        json.dump(summary, handle, indent=2)
    if not segments:
        raise ValueError(f"{manifest}: no segment could be cut; reasons in {out_dir / 'segments.rejects.json'}")
    return summary


def _truth_between(words: list, start: float, end: float) -> str:
    """The reference words (``[[word, start_seconds], ...]``) that start inside [start, end)."""
    return " ".join(word for word, at in words if start <= at < end)


# --------------------------------------------------------------------------- filtering


@dataclass
class LinearFilter:
    """Logistic regression on standardized DS2 segment features; P(good) >= threshold keeps."""

    weights: np.ndarray  # (len(FEATURES) + 1,), the last is the bias
    mean: np.ndarray
    scale: np.ndarray
    threshold: float = 0.5

    @staticmethod
    def matrix(segments: list[dict]) -> np.ndarray:
        try:
            return np.array([[float(s[name]) for name in FEATURES] for s in segments])
        except KeyError as err:
            raise ValueError(f"segment without the feature {err} (made by `ds2 segment`?)") from None

    @classmethod
    def fit(cls, features: np.ndarray, good: np.ndarray, l2: float = 1e-2, threshold: float = 0.5) -> "LinearFilter":
        if len(set(good.tolist())) < 2:
            raise ValueError("the labelled segments are all good or all bad: nothing to learn a boundary from")
        mean, scale = features.mean(axis=0), features.std(axis=0) + 1e-9
        x = np.hstack([(features - mean) / scale, np.ones((len(features), 1))])
        w = np.zeros(x.shape[1])
        penalty = l2 * np.eye(x.shape[1])
        penalty[-1, -1] = 0.0  # no penalty on the bias
        for _ in range(100):  # Newton's method (IRLS)
            p = 1 / (1 + np.exp(-np.clip(x @ w, -30, 30)))
            gradient = x.T @ (p - good) + penalty @ w
            hessian = x.T @ (x * (p * (1 - p))[:, None]) + penalty + 1e-9 * np.eye(x.shape[1])
            step = np.linalg.solve(hessian, gradient)
            w -= step
            if np.abs(step).max() < 1e-9:
                break
        return cls(w, mean, scale, threshold)

    def probability(self, features: np.ndarray) -> np.ndarray:
        x = np.hstack([(features - self.mean) / self.scale, np.ones((len(features), 1))])
        return 1 / (1 + np.exp(-np.clip(x @ self.weights, -30, 30)))

    def to_dict(self) -> dict:
        return {"features": list(FEATURES), "weights": self.weights.tolist(), "mean": self.mean.tolist(),
                "scale": self.scale.tolist(), "threshold": self.threshold}

    @classmethod
    def load(cls, path: str | Path) -> "LinearFilter":
        try:
            values = json.loads(Path(path).read_text(encoding="utf-8"))
            if values["features"] != list(FEATURES):
                raise ValueError(f"{path}: made for features {values['features']}, not {list(FEATURES)}")
            return cls(np.array(values["weights"]), np.array(values["mean"]), np.array(values["scale"]),
                       float(values["threshold"]))
        except (OSError, KeyError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: not a ds2 filter classifier ({err})") from None


@dataclass(frozen=True)
class FilterOptions:
    max_word_errors: int = option(1, "A labelled segment is good when its transcript is within this many word "
                                  "edits of its truth.", min=0)
    threshold: float = option(0.5, "Keep a segment when the classifier's P(good) reaches this.", min=0, max=1)
    folds: int = option(5, "Cross-validation folds for the precision/recall report.", min=2)
    truth_field: str = option("truth", "The field with a segment's trusted transcript: it labels segments to "
                              "train on (without --classifier) and scores the transcripts kept and rejected.")

    def __post_init__(self):
        check(self)


def _labels(segments: list[dict], max_word_errors: int, field: str) -> np.ndarray:
    return np.array([word_errors(scoring_text(s[field]), scoring_text(s["text"])).errors <= max_word_errors
                     for s in segments], dtype=float)


def _transcript_wer(segments: list[dict], field: str) -> float | None:
    """WER (%) of the segments' transcripts against their truth (None without labelled segments)."""
    from ds2.metrics import score_pairs

    pairs = [(s[field], s["text"]) for s in segments if isinstance(s.get(field), str)]
    return round(score_pairs(pairs).wer, 2) if pairs else None


def filter_segments(segments_path: str | Path, out_dir: str | Path, options: FilterOptions = FilterOptions(),
                    classifier: str | Path | None = None) -> dict:
    """Keep the segments a linear classifier calls good; writes kept.json, rejected.json,
    classifier.json and filter_report.json, and returns the report.

    Without ``classifier``, one is trained on the segments that carry ``truth``; its
    precision and recall (on "good") are measured by cross-validation over them.
    """
    out_dir = Path(out_dir)
    segments = [{k: v for k, v in s.items() if k != "line"} for s in read_manifest(segments_path)]
    if not segments:
        raise ValueError(f"{segments_path}: no segments")
    features = LinearFilter.matrix(segments)
    field = options.truth_field
    labelled = [i for i, s in enumerate(segments) if isinstance(s.get(field), str)]
    report: dict = {"segments": len(segments), "labelled": len(labelled)}
    if classifier is not None:
        model = LinearFilter.load(classifier)
    else:
        if len(labelled) < 2 * options.folds:
            raise ValueError(f"{segments_path}: {len(labelled)} segments carry a {field!r}; at least "
                             f"{2 * options.folds} are needed to train the filter (or give --classifier)")
        good = _labels([segments[i] for i in labelled], options.max_word_errors, field)
        report.update(_cross_validate(features[labelled], good, options))
        model = LinearFilter.fit(features[labelled], good, threshold=options.threshold)
    probability = model.probability(features)
    kept = [{**s, "p_good": round(float(p), 4)} for s, p in zip(segments, probability) if p >= model.threshold]
    rejected = [{**s, "p_good": round(float(p), 4)} for s, p in zip(segments, probability) if p < model.threshold]
    write_manifest(out_dir / "kept.json", kept)
    write_manifest(out_dir / "rejected.json", rejected)
    with atomic_write(out_dir / "classifier.json") as handle:
        json.dump(model.to_dict(), handle, indent=2)
    report.update({
        "kept": len(kept), "kept_fraction": round(len(kept) / len(segments), 4),
        "kept_hours": round(sum(s["duration"] for s in kept) / 3600, 3),
        "wer_all": _transcript_wer(segments, field), "wer_kept": _transcript_wer(kept, field),
        "wer_rejected": _transcript_wer(rejected, field),
    })
    with atomic_write(out_dir / "filter_report.json") as handle:
        json.dump(report, handle, indent=2)
    if not kept:
        log.warning("the filter kept no segment")
    return report


def _cross_validate(features: np.ndarray, good: np.ndarray, options: FilterOptions) -> dict:
    """Precision and recall of "good" on held-out folds (every labelled segment predicted once)."""
    order = np.random.default_rng(0).permutation(len(good))
    predicted = np.zeros(len(good), dtype=bool)
    for fold in range(options.folds):
        test = order[fold:: options.folds]
        train = np.setdiff1d(order, test)
        if len(set(good[train].tolist())) < 2:
            predicted[test] = bool(good[train][0])
            continue
        model = LinearFilter.fit(features[train], good[train], threshold=options.threshold)
        predicted[test] = model.probability(features[test]) >= options.threshold
    truth = good.astype(bool)
    true_positive = int(np.sum(predicted & truth))
    precision = true_positive / max(int(predicted.sum()), 1)
    recall = true_positive / max(int(truth.sum()), 1)
    return {"labelled_good": int(truth.sum()), "cv_precision": round(precision, 4), "cv_recall": round(recall, 4),
            "cv_accuracy": round(float(np.mean(predicted == truth)), 4)}
