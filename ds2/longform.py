"""Recordings of any length through the acoustic model, in overlapping chunks.

A recording is read ``chunk_seconds`` at a time, with ``context_seconds`` more on each side
that the model hears but whose outputs are dropped, so the bidirectional layers see enough
of what comes before and after every kept frame. Each piece's spectrogram is normalized on
its own (per-utterance normalization, as in training, where utterances are seconds long); a
recording shorter than one chunk is one piece, so its log-probs are exactly those of
``ds2 decode``. Chunk borders sit on multiples of the model's time stride, so output frame
f of the recording always means the same instant, f * stride / 100 s.

Memory: one batch of pieces is decoded at a time (``batch_size`` x (chunk + 2 context)
seconds), whatever the length of the recording; what grows with the length is the result,
the (T, V) log-probabilities (float32: 3.5 MB per audio hour and output symbol at 33 frames
per second).

Pieces of several files share a batch, so many short files go through the model as fast
as a few long ones.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from ds2 import audio
from ds2.config import DEVICE_HELP, DEVICE_PATTERN, check, option
from ds2.features import featurizer
from ds2.model import DeepSpeech2

log = logging.getLogger("ds2.longform")


@dataclass(frozen=True)
class ChunkOptions:
    chunk_seconds: float = option(30.0, "Seconds of a long recording per piece through the model.", above=0)
    context_seconds: float = option(3.0, "Seconds on each side of a piece that the model hears but whose "
                                    "output is dropped.", min=0)
    chunk_batch: int = option(8, "Pieces per forward pass (from one or several files).", min=1)
    device: str = option("auto", "auto, cpu, cuda, cuda:1, ...", pattern=DEVICE_PATTERN, pattern_help=DEVICE_HELP)
    progress: bool = option(True, "Show a progress bar (audio seconds).")

    def __post_init__(self):
        check(self)


@dataclass(frozen=True)
class Recording:
    """A file, or a segment of one (offset, duration in seconds; duration None: to the end)."""

    path: str
    offset: float = 0.0
    duration: float | None = None


@dataclass
class LogProbs:
    """What the model says about one recording."""

    recording: Recording
    log_probs: torch.Tensor | None  # shape = (T, V), natural log, float32 on the CPU
    frame_seconds: float  # seconds per output frame
    error: str | None = None  # why the recording could not be used (log_probs is None)

    @property
    def seconds(self) -> float:
        return 0.0 if self.log_probs is None else len(self.log_probs) * self.frame_seconds


@dataclass
class _Piece:
    index: int  # which recording
    start_frame: int  # first input frame of the piece (a multiple of the stride)
    keep: tuple[int, int]  # global output frames [a, b) this piece fills
    features: torch.Tensor  # (N_FREQ, frames)


class _Job:
    """One recording being filled piece by piece."""

    def __init__(self, index: int, recording: Recording, model: DeepSpeech2, options: ChunkOptions):
        self.index, self.recording = index, recording
        self.error: str | None = None
        self.result: torch.Tensor | None = None
        self.pending = 0  # pieces read but not yet through the model
        self.read_all = False
        stride = model.config.time_stride
        self.config = model.config
        try:
            total, _, _ = audio.audio_info(recording.path)
            available = total - recording.offset
            if available <= 0:
                raise audio.AudioError(f"{recording.path}: offset {recording.offset}s is past the end ({total:.2f}s)")
            seconds = available if recording.duration is None else min(recording.duration, available)
        except audio.AudioError as err:
            self.error = str(err)
            return
        self.seconds = seconds
        self.n_input = audio.duration_to_frames(seconds)
        self.n_output = int(model.output_lengths(torch.tensor([self.n_input]))[0])
        self.chunk = max(stride, int(round(options.chunk_seconds * audio.FRAMES_PER_SECOND)) // stride * stride)
        self.context = int(math.ceil(options.context_seconds * audio.FRAMES_PER_SECOND / stride)) * stride
        self.stride = stride
        self.result = torch.zeros(self.n_output, model.config.n_outputs)

    @property
    def finished(self) -> bool:
        return self.read_all and (self.error is not None or self.pending == 0)

    def pieces(self) -> Iterator[_Piece]:
        """Read and featurize the recording piece by piece (lazily: memory stays bounded)."""
        if self.n_input <= self.chunk + 2 * self.context:  # short: the whole recording at once
            starts = [0]
        else:
            starts = range(0, self.n_input, self.chunk)
        for chunk_start in starts:
            last = len(starts) == 1 or chunk_start + self.chunk >= self.n_input
            first_frame = max(0, chunk_start - self.context)
            end_frame = self.n_input if last else min(self.n_input, chunk_start + self.chunk + self.context)
            offset = self.recording.offset + first_frame * audio.HOP_LENGTH / audio.SAMPLE_RATE
            duration = (end_frame - first_frame) * audio.HOP_LENGTH / audio.SAMPLE_RATE
            if last:  # to the end of the recording, so the final frames are the same as whole
                duration = self.seconds - first_frame * audio.HOP_LENGTH / audio.SAMPLE_RATE
            waveform = audio.load_audio(self.recording.path, offset=offset, duration=duration)
            features = featurizer(self.config)(waveform)
            keep_from = chunk_start // self.stride
            keep_to = self.n_output if last else min(self.n_output, (chunk_start + self.chunk) // self.stride)
            if len(starts) == 1:
                keep_from, keep_to = 0, self.n_output
            self.pending += 1
            yield _Piece(self.index, first_frame, (keep_from, keep_to), features)


@torch.no_grad()
def log_probs_of(model: DeepSpeech2, recordings: list[Recording], options: ChunkOptions = ChunkOptions()
                 ) -> Iterator[LogProbs]:
    """Log-probabilities of every recording, in order, one LogProbs each as soon as it is done.

    A recording that cannot be read yields a LogProbs with ``error`` naming the file; the
    others go on.
    """
    from ds2.io import select_device

    device = select_device(options.device)
    model.to(device).eval()
    frame_seconds = model.config.time_stride / audio.FRAMES_PER_SECOND
    jobs = [_Job(i, r, model, options) for i, r in enumerate(recordings)]
    total_seconds = sum(getattr(job, "seconds", 0.0) for job in jobs)
    bar = tqdm(total=round(total_seconds), disable=not options.progress, desc="audio", unit="s", dynamic_ncols=True)
    batch: list[_Piece] = []
    next_to_yield = 0  # recordings before this one have been handed over

    def ready() -> Iterator[LogProbs]:
        """Hand over, in order, the recordings whose every piece has been through the model."""
        nonlocal next_to_yield
        while next_to_yield < len(jobs) and jobs[next_to_yield].finished:
            job = jobs[next_to_yield]
            yield LogProbs(job.recording, None if job.error else job.result, frame_seconds, job.error)
            job.result = None  # handed over: let it go with the caller
            next_to_yield += 1

    def run(pieces: list[_Piece]) -> None:
        lengths = torch.tensor([p.features.shape[1] for p in pieces])
        features = torch.zeros(len(pieces), audio.N_FREQ, int(lengths.max()))
        for row, piece in enumerate(pieces):
            features[row, :, : piece.features.shape[1]] = piece.features
        logits, output_lengths = model(features.to(device), lengths.to(device))
        log_probs = torch.log_softmax(logits.float(), dim=-1).cpu()
        for row, piece in enumerate(pieces):
            job = jobs[piece.index]
            first_output = piece.start_frame // job.stride
            a, b = piece.keep
            available = min(b, first_output + int(output_lengths[row])) - a
            job.result[a: a + available] = log_probs[row, a - first_output: a - first_output + available]
            job.pending -= 1
            bar.update(round(available * frame_seconds))

    for job in jobs:
        if job.error is None:
            try:
                for piece in job.pieces():
                    batch.append(piece)
                    if len(batch) == options.chunk_batch:
                        run(batch)
                        batch = []
            except audio.AudioError as err:
                job.error = str(err)
                batch = [p for p in batch if p.index != job.index]
        job.read_all = True
        if job.error:
            log.warning("%s", job.error)
        yield from ready()
    if batch:
        run(batch)
    yield from ready()
    bar.close()


def log_probs_of_file(model: DeepSpeech2, path: str | Path, options: ChunkOptions = ChunkOptions()) -> torch.Tensor:
    """(T, V) log-probabilities of one file; AudioError if it cannot be read."""
    (result,) = log_probs_of(model, [Recording(str(path))], options)
    if result.error:
        raise audio.AudioError(result.error)
    return result.log_probs
