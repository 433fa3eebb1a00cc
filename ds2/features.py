"""DS2 input features: log power spectrogram, normalized per utterance or online.

20 ms Hamming windows every 10 ms (ds2.audio's WINDOW_MS, HOP_MS): N_FREQ = 161 frequency
bins at 16 kHz. FEATURES describes this computation; it is saved with every model, so a
checkpoint is never fed features it was not trained on.

Two normalizations, per frequency bin (a model's ``ModelConfig.normalize`` says which):

- ``utterance`` (DS2's): zero mean and unit variance over the whole utterance. It needs the
  whole utterance, so it cannot stream.
- ``online`` (streaming models): frame t is normalized with the mean and variance of a prior,
  the training set's statistics weighted as ``prior`` frames, pooled with the stream's own
  frames 0..t. It is causal, so a stream normalized chunk by chunk
  (:meth:`OnlineNormalizer.push`) gets what the whole recording gets
  (:meth:`OnlineNormalizer.__call__`), and a stream adapts to its speaker and channel as
  it goes.
"""

from __future__ import annotations

from collections.abc import Callable

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
    features = log_power(stft)
    if normalize:
        mean = features.mean(dim=1, keepdim=True)
        std = features.std(dim=1, keepdim=True)
        features = (features - mean) / (std + 1e-5)
    return features


class OnlineNormalizer:
    """Causal per-bin normalization: training-set statistics updated by each stream's frames.

    mean, var: shape = (N_FREQ,), the training set's raw log-spectrogram statistics
    (:func:`feature_statistics`); prior: how many frames they weigh against the stream's.
    Sums are kept in float64, so chunked and whole-recording results agree to float32.
    """

    EPS = 1e-5

    def __init__(self, mean, var, prior: float):
        self.mean = torch.as_tensor(mean, dtype=torch.float64)
        self.var = torch.as_tensor(var, dtype=torch.float64)
        if self.mean.shape != self.var.shape or self.mean.dim() != 1:
            raise ValueError("online normalization: mean and var must be vectors of the same length")
        self.prior = float(prior)

    def start(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A new stream's running (count, sum, sum of squares); count shape = (), sums (F,)."""
        count = torch.tensor(self.prior, dtype=torch.float64)
        return count, self.mean * self.prior, (self.var + self.mean.square()) * self.prior

    def push(self, state: tuple, raw: torch.Tensor) -> tuple[torch.Tensor, tuple]:
        """Normalize ``raw`` frames, shape = (F, T), that follow the frames ``state`` has seen.
        Returns the normalized frames (float32) and the new state."""
        count, total, squares = state
        x = raw.to(torch.float64)
        counts = count + torch.arange(1, x.shape[1] + 1, dtype=torch.float64)
        totals = total[:, None] + x.cumsum(1)
        squared = squares[:, None] + x.square().cumsum(1)
        mean = totals / counts
        var = (squared / counts - mean.square()).clamp(min=0)
        out = ((x - mean) / (var.sqrt() + self.EPS)).to(torch.float32)
        if x.shape[1]:
            state = (counts[-1], totals[:, -1], squared[:, -1])
        return out, state

    def __call__(self, raw: torch.Tensor) -> torch.Tensor:
        """A whole recording's raw features, shape = (F, T), normalized."""
        return self.push(self.start(), raw)[0]


def featurizer(config) -> Callable[[torch.Tensor], torch.Tensor]:
    """waveform -> the features a model with ``config`` (a ModelConfig) takes."""
    if config.normalize == "utterance":
        return spectrogram
    if not config.feature_mean:
        raise ValueError("online normalization: the model has no training-set feature statistics")
    return OnlineFeatures(OnlineNormalizer(config.feature_mean, config.feature_var, config.norm_prior * 1000 / HOP_MS))


class OnlineFeatures:
    """waveform -> online-normalized features (a class, not a closure: loader workers pickle it)."""

    def __init__(self, normalizer: OnlineNormalizer):
        self.normalizer = normalizer

    def __call__(self, waveform: torch.Tensor) -> torch.Tensor:
        return self.normalizer(spectrogram(waveform, normalize=False))


def feature_statistics(waveforms) -> tuple[list[float], list[float], int]:
    """Per-bin mean and variance of the raw (unnormalized) features of ``waveforms`` (an
    iterable of 1-D tensors), and the number of frames they come from."""
    count, total, squares = 0, torch.zeros(N_FREQ, dtype=torch.float64), torch.zeros(N_FREQ, dtype=torch.float64)
    for waveform in waveforms:
        x = spectrogram(waveform, normalize=False).to(torch.float64)
        count += x.shape[1]
        total += x.sum(1)
        squares += x.square().sum(1)
    if count == 0:
        raise ValueError("feature statistics: no audio")
    mean = total / count
    var = (squares / count - mean.square()).clamp(min=1e-8)
    return mean.tolist(), var.tolist(), count


def log_power(stft: torch.Tensor) -> torch.Tensor:
    """log(|X|^2 + LOG_EPS) of a complex STFT."""
    return torch.log(stft.real.square() + stft.imag.square() + LOG_EPS)


def analysis_window(device: torch.device = torch.device("cpu"), dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The analysis window (cached per device and dtype)."""
    return _hamming(device, dtype)


_WINDOWS: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}


def _hamming(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    # Keyed by dtype too: a window made under another default dtype would change the
    # dtype of every later spectrogram.
    if (device, dtype) not in _WINDOWS:
        _WINDOWS[device, dtype] = torch.hamming_window(N_FFT, device=device, dtype=dtype)
    return _WINDOWS[device, dtype]
