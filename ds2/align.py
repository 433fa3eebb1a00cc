"""`ds2 align`: forced alignment of a manifest's transcripts with a trained model.

For every record (a file, or a segment of one: ``offset``/``duration``), the model runs over
the audio in chunks (:mod:`ds2.longform`: any length, bounded memory) and the transcript is
aligned to its frames (:mod:`ds2.alignment`: Viterbi, in windows for long transcripts).
Writes, in the output folder:

- ``alignments.json``: JSON lines, the input record plus ``words`` (word, start, end in
  seconds from the start of the file, confidence), ``align_score`` (the best path's
  log-probability), ``n_frames``, ``frame_seconds`` and ``windows``;
- ``alignments.ctm``: NIST CTM, one line per aligned word;
- ``alignments.rejects.json``: the records that could not be aligned, each with ``reason``;
- ``summary.json``: counts, and, when the manifest carries the true word start times
  (``word_starts``, as ``ds2 prepare synth`` writes them), the word-start error: median,
  90th percentile and the share within 50 ms;
- with ``--plot N``: ``align_N.png``, spectrogram, blank probability and word spans of record N.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ds2 import audio
from ds2.alignment import BACKENDS, MAX_CELLS, Alignment, AlignmentError, align, ctm_lines
from ds2.checkpoint import load_model
from ds2.config import check, option
from ds2.data import read_manifest, write_manifest
from ds2.features import spectrogram
from ds2.io import atomic_write, pyplot, save_figure
from ds2.longform import ChunkOptions, LogProbs, Recording, log_probs_of
from ds2.text import Alphabet

log = logging.getLogger("ds2.align")


@dataclass(frozen=True)
class AlignOptions:
    backend: str = option("auto", "Viterbi: auto (numba on the CPU, torch on a GPU), numba or torch.", choices=BACKENDS)
    max_cells: int = option(MAX_CELLS, "Largest Viterbi window in frames x states (one byte each); longer "
                            "transcripts are aligned in windows.", min=1000)
    anchor_words: int = option(3, "Words in a row the greedy transcript must get right to anchor a window cut.",
                               min=1)

    def __post_init__(self):
        check(self)


@dataclass
class Aligned:
    record: dict
    log_probs: LogProbs
    alignment: Alignment | None
    error: str | None = None


def recording_of(record: dict) -> Recording:
    """The audio a manifest record names (a segment when it has an offset)."""
    offset = float(record.get("offset", 0.0))
    return Recording(record["audio_filepath"], offset, record["duration"] if "offset" in record else None)


def utterance_id(record: dict) -> str:
    if "utt_id" in record:
        return str(record["utt_id"])
    stem = Path(record["audio_filepath"]).stem
    return f"{stem}_{float(record['offset']):.2f}" if "offset" in record else stem


def align_records(model, alphabet: Alphabet, records: list[dict], chunks: ChunkOptions = ChunkOptions(),
                  options: AlignOptions = AlignOptions()) -> Iterator[Aligned]:
    """Align every record, in order; a record that cannot be aligned comes with ``error``."""
    recordings = [recording_of(record) for record in records]
    for record, result in zip(records, log_probs_of(model, recordings, chunks)):
        if result.error:
            yield Aligned(record, result, None, result.error)
            continue
        try:
            alignment = align(result.log_probs, record["text"], alphabet, options.backend, options.max_cells,
                              options.anchor_words)
        except AlignmentError as err:
            yield Aligned(record, result, None, f"{record['audio_filepath']}: cannot align: {err}")
            continue
        for reason in alignment.unaligned:
            log.warning("%s: %s", record["audio_filepath"], reason)
        yield Aligned(record, result, alignment)


def word_start_errors(alignment: Alignment, frame_seconds: float, offset: float, truth: list) -> list[float]:
    """|aligned start - true start| in seconds for every word that has both."""
    return [abs(offset + word.start * frame_seconds - true)
            for word, true in zip(alignment.words, truth) if word.aligned and true is not None]


def align_manifest(checkpoint: str | Path, manifest: str | Path, out_dir: str | Path,
                   chunks: ChunkOptions = ChunkOptions(), options: AlignOptions = AlignOptions(),
                   plot: int | None = None) -> dict:
    """Align a manifest; writes the files of the module docstring and returns the summary."""
    out_dir = Path(out_dir)
    model, alphabet = load_model(checkpoint)
    records = list(read_manifest(manifest))
    if not records:
        raise ValueError(f"{manifest}: no records to align")
    aligned, rejected, ctm, errors = [], [], [], []
    n_unaligned_words = 0
    for index, item in enumerate(align_records(model, alphabet, records, chunks, options)):
        record = {k: v for k, v in item.record.items() if k != "line"}
        if item.error:
            log.warning("%s", item.error)
            rejected.append({**record, "reason": item.error})
            continue
        frame_seconds = item.log_probs.frame_seconds
        offset = float(record.get("offset", 0.0))
        words = item.alignment.to_record(frame_seconds)["words"]
        for word in words:
            if word["start"] is not None:
                word["start"] = round(word["start"] + offset, 3)
                word["end"] = round(word["end"] + offset, 3)
        n_unaligned_words += sum(word["start"] is None for word in words)
        aligned.append({**record, "words": words, "align_score": round(item.alignment.score, 3),
                        "n_frames": item.alignment.n_frames, "frame_seconds": frame_seconds,
                        "windows": item.alignment.windows})
        ctm += ctm_lines(utterance_id(record), item.alignment, frame_seconds, offset)
        if isinstance(record.get("word_starts"), list) and len(record["word_starts"]) == len(item.alignment.words):
            errors += word_start_errors(item.alignment, frame_seconds, offset, record["word_starts"])
        if plot == index:
            plot_alignment(out_dir / f"align_{index}.png", item)
    write_manifest(out_dir / "alignments.json", aligned)
    write_manifest(out_dir / "alignments.rejects.json", rejected)
    with atomic_write(out_dir / "alignments.ctm") as handle:
        handle.write("".join(line + "\n" for line in ctm))
    summary = {"records": len(records), "aligned": len(aligned), "rejected": len(rejected),
               "words": len(ctm), "unaligned_words": n_unaligned_words}
    if errors:
        error_ms = np.array(errors) * 1000
        summary["word_start_error"] = {
            "words": len(errors), "median_ms": round(float(np.median(error_ms)), 1),
            "p90_ms": round(float(np.percentile(error_ms, 90)), 1),
            "within_50ms": round(float(np.mean(error_ms <= 50)), 4),
        }
    with atomic_write(out_dir / "summary.json") as handle:
        json.dump(summary, handle, indent=2)
    if not aligned:
        raise ValueError(f"{manifest}: no record could be aligned; reasons in {out_dir / 'alignments.rejects.json'}")
    return summary


def plot_alignment(path: Path, item: Aligned, max_seconds: float = 30.0) -> None:
    """PNG: spectrogram, blank probability and the aligned words of (the first 30 s of) one record."""
    recording = recording_of(item.record)
    seconds = min(max_seconds, item.log_probs.seconds)
    waveform = audio.load_audio(recording.path, recording.offset, seconds)
    features = spectrogram(waveform, normalize=False).numpy()
    frame_seconds = item.log_probs.frame_seconds
    n_frames = int(seconds / frame_seconds)
    blank = torch.exp(item.log_probs.log_probs[:n_frames, 0]).numpy()
    figure, (top, bottom) = pyplot().subplots(2, 1, figsize=(12, 5.5), sharex=True,
                                              gridspec_kw={"height_ratios": [2, 1]})
    top.imshow(features, origin="lower", aspect="auto", cmap="magma",
               extent=(0, features.shape[1] / audio.FRAMES_PER_SECOND, 0, audio.SAMPLE_RATE / 2000))
    top.set(ylabel="kHz", title=f"{Path(recording.path).name}: forced alignment")
    bottom.plot(np.arange(n_frames) * frame_seconds, blank, color="0.3", linewidth=0.8, label="P(blank)")
    for k, word in enumerate(item.alignment.words):
        if not word.aligned or word.start * frame_seconds > seconds:
            continue
        start, end = word.start * frame_seconds, word.end * frame_seconds
        for axis in (top, bottom):
            axis.axvspan(start, end, color=("tab:blue", "tab:orange")[k % 2], alpha=0.25)
        bottom.text((start + end) / 2, 1.05, word.text, ha="center", va="bottom", fontsize=7, rotation=45)
    bottom.set(xlabel="seconds", ylabel="P(blank)", ylim=(0, 1.4), xlim=(0, seconds))
    figure.tight_layout()
    save_figure(figure, path)
