"""DS2 input features: log power spectrogram, normalized per utterance.

20 ms Hamming windows every 10 ms (ds2.audio's WINDOW_MS, HOP_MS): N_FREQ = 161 frequency
bins at 16 kHz; each utterance is normalized to zero mean and unit variance per frequency
bin. FEATURES describes this computation; it is saved with every model, so a checkpoint
is never fed features it was not trained on.
"""

from __future__ import annotations

import torch

from ds2.audio import HOP_LENGTH, HOP_MS, N_FFT, N_FREQ, SAMPLE_RATE, WINDOW_MS

LOG_EPS = 1e-10  # floor under the power spectrum before the log

# What a model's input is; checkpoints carry it and loading compares it.
FEATURES = dict(kind="log_power_spectrogram", sample_rate=SAMPLE_RATE, window_ms=WINDOW_MS, hop_ms=HOP_MS,
                window="hamming", n_freq=N_FREQ, log_eps=LOG_EPS, normalize="utterance")


def spectrogram(waveform: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """DS2 input features.

    Parameters
    ----------
    waveform: torch.Tensor, shape = (n_samples,), 16 kHz.
    normalize: subtract the utterance's mean and divide by its standard deviation,
        per frequency bin (DS2's per-utterance normalization).

    Returns
    -------
    torch.Tensor, shape = (N_FREQ, n_frames) with n_frames = 1 + n_samples // HOP_LENGTH.
    """
    if waveform.numel() < N_FFT:  # stft needs one full window; pad very short clips
        waveform = torch.nn.functional.pad(waveform, (0, N_FFT - waveform.numel()))
    window = _hamming(waveform.device, waveform.dtype)
    stft = torch.stft(
        waveform,
        n_fft=N_FFT,
        hop_length=HOP_LENGTH,
        window=window,
        center=True,
        return_complex=True,
    )  # (N_FREQ, n_frames)
    features = torch.log(stft.real.square() + stft.imag.square() + LOG_EPS)
    if normalize:
        mean = features.mean(dim=1, keepdim=True)
        std = features.std(dim=1, keepdim=True)
        features = (features - mean) / (std + 1e-5)
    return features


_WINDOWS: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}


def _hamming(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    # Keyed by dtype too: a window made under another default dtype would change the
    # dtype of every later spectrogram.
    if (device, dtype) not in _WINDOWS:
        _WINDOWS[device, dtype] = torch.hamming_window(N_FFT, device=device, dtype=dtype)
    return _WINDOWS[device, dtype]
