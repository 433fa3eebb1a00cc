"""Audio: the constants of the signal the model hears, loading, resampling, frames <-> seconds.

Everything the model hears goes through :func:`load_audio` (soundfile, downmix to mono,
resample to 16 kHz with torchaudio), then :func:`ds2.features.spectrogram`. The window and
hop defined here fix the frame rate: FRAMES_PER_SECOND spectrogram frames per second.
"""

from __future__ import annotations

import io

import math
from pathlib import Path

import numpy as np
import soundfile
import torch
import torchaudio.functional as AF

SAMPLE_RATE = 16000  # Hz; every waveform is resampled to this
WINDOW_MS = 20
HOP_MS = 10
N_FFT = SAMPLE_RATE * WINDOW_MS // 1000  # 320 samples
HOP_LENGTH = SAMPLE_RATE * HOP_MS // 1000  # 160 samples
N_FREQ = N_FFT // 2 + 1  # 161 bins
FRAMES_PER_SECOND = 1000 // HOP_MS  # 100


class AudioError(ValueError):
    """An audio file that cannot be used; the message names the file and the reason."""


def audio_info(path: str | Path) -> tuple[float, int, int]:
    """Header facts without decoding: (duration in seconds, sample rate, channels)."""
    if not Path(path).exists():
        raise AudioError(f"{path}: file not found")
    try:
        info = soundfile.info(str(path))
    except FileNotFoundError:
        raise AudioError(f"{path}: file not found") from None
    except Exception as err:  # soundfile raises LibsndfileError / RuntimeError
        raise AudioError(f"{path}: cannot read audio header ({_reason(err)})") from None
    return info.frames / info.samplerate, info.samplerate, info.channels


def load_audio(
    path: str | Path, offset: float = 0.0, duration: float | None = None
) -> torch.Tensor:
    """Read an audio file (or a segment of it) as a mono 16 kHz float32 waveform.

    Parameters
    ----------
    path: any format libsndfile reads (wav, flac, ogg, ...).
    offset, duration: segment start and length in seconds (``duration=None``: to the end).

    Returns
    -------
    torch.Tensor, shape = (n_samples,), values in [-1, 1], sample rate SAMPLE_RATE.

    Raises AudioError naming the file for missing, corrupt, empty or non-finite audio.
    """
    path = Path(path)
    if not path.exists():
        raise AudioError(f"{path}: file not found")
    if path.is_file() and path.stat().st_size == 0:  # libsndfile would only say "format not recognised"
        raise AudioError(f"{path}: empty file (0 bytes)")
    try:
        with soundfile.SoundFile(str(path)) as handle:
            native_rate = handle.samplerate
            start = int(round(offset * native_rate))
            if start:
                handle.seek(start)
            n_read = -1 if duration is None else int(round(duration * native_rate))
            samples = handle.read(n_read, dtype="float32", always_2d=True)
    except Exception as err:
        raise AudioError(f"{path}: cannot decode audio ({_reason(err)})") from None
    if samples.shape[0] == 0:
        raise AudioError(f"{path}: no audio samples" + (f" at offset {offset}s" if offset else ""))
    if not np.isfinite(samples).all():
        raise AudioError(f"{path}: audio contains NaN or infinite samples")
    waveform = torch.from_numpy(samples.mean(axis=1))  # downmix: (n_samples,)
    return resample(waveform, native_rate)


def decode_audio_bytes(data: bytes, what: str = "audio") -> torch.Tensor:
    """An audio file held in memory (any format libsndfile reads) as a mono 16 kHz float32
    waveform; AudioError naming ``what`` for empty, undecodable or non-finite audio."""
    if not data:
        raise AudioError(f"{what}: empty (0 bytes)")
    try:
        with soundfile.SoundFile(io.BytesIO(data)) as handle:
            native_rate = handle.samplerate
            samples = handle.read(-1, dtype="float32", always_2d=True)
    except Exception as err:
        raise AudioError(f"{what}: cannot decode audio ({_reason(err)})") from None
    if samples.shape[0] == 0:
        raise AudioError(f"{what}: no audio samples")
    if not np.isfinite(samples).all():
        raise AudioError(f"{what}: audio contains NaN or infinite samples")
    return resample(torch.from_numpy(samples.mean(axis=1)), native_rate)


def resample(waveform: torch.Tensor, rate: int, target_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Band-limited resampling (torchaudio's windowed sinc); a no-op at the target rate."""
    if rate == target_rate:
        return waveform
    return AF.resample(waveform, rate, target_rate)


def n_frames(n_samples: int) -> int:
    """Number of spectrogram frames for a waveform of ``n_samples`` (centered STFT)."""
    return 1 + max(n_samples, N_FFT) // HOP_LENGTH


def frames_to_seconds(n_frames: float) -> float:
    """Seconds of audio that ``n_frames`` spectrogram frames cover (one hop each)."""
    return n_frames / FRAMES_PER_SECOND


def duration_to_frames(seconds: float) -> int:
    """Spectrogram frames for ``seconds`` of audio at SAMPLE_RATE."""
    return n_frames(int(math.floor(seconds * SAMPLE_RATE)))


def _reason(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return text[-1] if text else type(err).__name__
