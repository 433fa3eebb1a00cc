"""Data augmentation, online in the loader: noise, reverberation, speed, gain, SpecAugment.

DS2 (section 5.2) added noise to 40% of the training utterances, several clips mixed per
utterance, and found the model then holds up in noise at little cost on clean speech. Here::

    ds2 train data/train.json data/dev.json -o exp/aug --noise data/noise/train.json \\
        --rir data/rirs/train.json --reverb-prob 0.2 --speed-prob 0.3

Every utterance draws its augmentations from a generator seeded by (run seed, epoch,
utterance index) and nothing else: which worker reads it and whether the run was interrupted
and resumed change nothing (tests/test_augment.py). In training, the speed is drawn once per
batch (seeded by the epoch and the batch's first utterance; batches are the same in every
run of a seed): utterances of one batch have similar lengths, and a speed drawn for each of
them would stretch a few and the batch's padding with them (about 9 % more frames to compute
at --speed-prob 0.3 and batch 16).

Noise and impulse responses come from manifests (JSON lines with ``audio_filepath`` and
``duration``; :mod:`ds2.noise` makes them). A noise file of any length is read at a random
offset, only the samples needed; one shorter than the utterance is repeated. A clip that
cannot be used (unreadable, silent, NaN) is skipped and reported in the example's notes,
which the trainer counts: one bad clip never stops training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchaudio

from ds2 import audio
from ds2.config import ConfigError, check, check_ranges, option, parse_floats, show_floats
from ds2.data import read_manifest


@dataclass(frozen=True)
class AugmentOptions:
    """Augmentation of training utterances; every kind off unless its source or probability is set."""

    noise: str | None = option(None, "Noise manifest (JSON lines: audio_filepath, duration) for additive noise.")
    noise_prob: float = option(0.4, "Share of utterances that get noise (DS2: 0.4); needs --noise.", min=0, max=1)
    snr: tuple[float, ...] = option((0.0, 20.0), "Signal-to-noise ratio range in dB, LOW,HIGH (drawn uniformly).",
                                    parse=parse_floats, show=show_floats)
    noise_clips: int = option(3, "Most noise clips mixed into one utterance (1..N, drawn uniformly).", min=1)
    rir: str | None = option(None, "Room impulse response manifest for reverberation.")
    reverb_prob: float = option(0.2, "Share of utterances convolved with an impulse response; needs --rir.",
                                min=0, max=1)
    speed: tuple[float, ...] = option((0.9, 1.1), "Speed factors to choose from (pitch and tempo change "
                                      "together, as by resampling).", parse=parse_floats, show=show_floats, each_min=0.5)
    speed_prob: float = option(0.0, "Share of utterances played at another speed.", min=0, max=1)
    gain_db: tuple[float, ...] = option((-6.0, 6.0), "Gain range in dB, LOW,HIGH.", parse=parse_floats, show=show_floats)
    gain_prob: float = option(0.0, "Share of utterances with a random gain.", min=0, max=1)
    freq_masks: int = option(2, "SpecAugment: frequency masks per utterance.", min=0)
    freq_width: int = option(20, "SpecAugment: widest frequency mask, in bins (of 161).", min=1)
    time_masks: int = option(2, "SpecAugment: time masks per utterance.", min=0)
    time_width: float = option(0.05, "SpecAugment: widest time mask, as a share of the utterance.", above=0, max=1)
    specaugment_prob: float = option(0.0, "Share of utterances with SpecAugment masks (not in DS2).", min=0, max=1)
    augment_from_epoch: int = option(1, "First epoch (from 1) that is augmented; the ones before are clean, so that "
                              "SortaGrad's easy first epoch stays easy.", min=1)

    def __post_init__(self):
        check(self)
        check_ranges(self, "snr", "gain_db")
        if not self.speed:
            raise ConfigError("--speed: give at least one factor")

    @property
    def active(self) -> bool:
        """Whether any augmentation can happen."""
        return bool((self.noise and self.noise_prob > 0) or (self.rir and self.reverb_prob > 0)
                    or self.speed_prob > 0 or self.gain_prob > 0 or self.specaugment_prob > 0)


class ClipBank:
    """The audio files of a noise or impulse-response manifest, read on demand.

    A collection of at most ``cache_seconds`` of audio (the generated noises are 800 s) is
    kept in memory as each file is first used (float32: 3600 s take 230 MB per loader
    worker): reading a slice from memory instead of opening the file for every clip halves
    what noise costs the loader. Larger collections (MUSAN is about 100 h) are read from disk.
    """

    def __init__(self, manifest: str | Path, what: str, cache_seconds: float = 3600.0):
        self.manifest = Path(manifest)
        self.what = what
        self.records = []
        for record in read_manifest(self.manifest, required=("audio_filepath", "duration")):
            if record["duration"] > 0:
                self.records.append((record["audio_filepath"], float(record["duration"])))
        if not self.records:
            raise ValueError(f"{self.manifest}: no {what} files with a positive duration")
        self.cached = sum(duration for _, duration in self.records) <= cache_seconds
        self._audio: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.records)

    def pick(self, rng: np.random.Generator) -> tuple[str, float]:
        return self.records[int(rng.integers(len(self.records)))]

    def samples(self, path: str, offset: float = 0.0, duration: float | None = None) -> np.ndarray:
        """The file's samples from ``offset`` seconds on, ``duration`` seconds of them (None:
        to the end), as :func:`ds2.audio.load_audio` reads them; from memory when cached."""
        if not self.cached:
            return _read_file(path, offset, duration)
        if path not in self._audio:  # an unreadable file raises here, each time it is picked
            self._audio[path] = _read_file(path)
        start = int(round(offset * audio.SAMPLE_RATE))
        stop = None if duration is None else start + int(round(duration * audio.SAMPLE_RATE))
        return self._audio[path][start:stop]


def _read_file(path: str, offset: float = 0.0, duration: float | None = None) -> np.ndarray:
    return audio.load_audio(path, offset=offset, duration=duration).numpy()


def read_clip(path: str, duration: float, n_samples: int, rng: np.random.Generator,
              bank: ClipBank | None = None) -> np.ndarray:
    """``n_samples`` of a noise file from a random offset (the file repeated when shorter),
    through ``bank`` (its memory cache) when given.

    Raises AudioError (unreadable) or ValueError (silent or non-finite) naming the file.
    """
    needed = n_samples / audio.SAMPLE_RATE
    read = bank.samples if bank is not None else _read_file
    if duration > needed + 0.01:
        offset = float(rng.uniform(0.0, duration - needed - 0.01))
        clip = read(path, offset, needed + 0.01)
    else:
        clip = read(path)
    if len(clip) < n_samples:  # a short clip, or rounding at the end of a file: repeat it from a random start
        clip = np.roll(clip, int(rng.integers(len(clip))))
        clip = np.tile(clip, n_samples // len(clip) + 1)
    clip = clip[:n_samples].astype(np.float32)
    power = float(np.mean(clip.astype(np.float64) ** 2))
    if not power > 1e-12:  # also catches NaN
        raise ValueError(f"{path}: silent noise (power {power:.3g})")
    return clip


def fft_convolve(signal: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Full linear convolution by FFT, float32."""
    n = len(signal) + len(kernel) - 1
    size = 1 << (n - 1).bit_length()
    spectrum = np.fft.rfft(signal, size) * np.fft.rfft(kernel, size)
    return np.fft.irfft(spectrum, size)[:n].astype(np.float32)


def reverberate(speech: np.ndarray, rir: np.ndarray) -> np.ndarray:
    """``speech`` heard in the room of ``rir``: aligned on the direct path (the strongest
    tap), cut to the original length, at the original level."""
    direct = int(np.argmax(np.abs(rir)))
    wet = fft_convolve(speech, rir)[direct: direct + len(speech)]
    dry_power, wet_power = float(np.mean(speech ** 2)), float(np.mean(wet ** 2))
    if wet_power > 0 and dry_power > 0:
        wet *= math.sqrt(dry_power / wet_power)
    return wet


def mix_at_snr(speech: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """``speech + noise`` with the noise scaled to ``snr_db`` below the speech power."""
    speech_power = float(np.mean(speech.astype(np.float64) ** 2))
    noise_power = float(np.mean(noise.astype(np.float64) ** 2))
    if speech_power <= 0 or noise_power <= 0:
        return speech
    scale = math.sqrt(speech_power / (noise_power * 10 ** (snr_db / 10)))
    return (speech + scale * noise).astype(np.float32)


_resamplers: dict[int, torchaudio.transforms.Resample] = {}


def change_speed(waveform: torch.Tensor, factor: float) -> torch.Tensor:
    """Play ``waveform`` ``factor`` times faster (tempo and pitch together), by resampling
    (torchaudio's windowed sinc, as :func:`ds2.audio.resample`, with the kernel made once per
    factor: half the cost of making it at every call)."""
    if factor == 1.0:
        return waveform
    rate = int(round(audio.SAMPLE_RATE * factor / 100)) * 100  # keep the rates' ratio simple
    if rate not in _resamplers:
        _resamplers[rate] = torchaudio.transforms.Resample(rate, audio.SAMPLE_RATE)
    with torch.no_grad():
        return _resamplers[rate](waveform)


def spec_augment(features: torch.Tensor, options: AugmentOptions, rng: np.random.Generator) -> torch.Tensor:
    """Zero random bands of frequency bins and spans of frames (features are normalized to
    mean 0, so zero is the mean). ``features``: (N_FREQ, frames); a new tensor is returned."""
    features = features.clone()
    n_freq, n_frames = features.shape
    for _ in range(options.freq_masks):
        width = int(rng.integers(0, min(options.freq_width, n_freq) + 1))
        start = int(rng.integers(0, n_freq - width + 1))
        features[start: start + width, :] = 0
    widest = max(1, int(options.time_width * n_frames))
    for _ in range(options.time_masks):
        width = int(rng.integers(0, widest + 1))
        start = int(rng.integers(0, n_frames - width + 1))
        features[:, start: start + width] = 0
    return features


class Augmenter:
    """Applies :class:`AugmentOptions` to one utterance with a generator the caller seeds."""

    def __init__(self, options: AugmentOptions):
        self.options = options
        self.noises = ClipBank(options.noise, "noise") if options.noise and options.noise_prob > 0 else None
        self.rirs = ClipBank(options.rir, "impulse response") if options.rir and options.reverb_prob > 0 else None
        self._rir_cache: dict[str, np.ndarray] = {}

    @staticmethod
    def generator(seed: int, epoch: int, index: int) -> np.random.Generator:
        """The generator of one utterance in one epoch: the same numbers in any process, batch
        or resumed run."""
        return np.random.default_rng([seed & 0xFFFFFFFF, epoch, index])

    def applies(self, epoch: int) -> bool:
        """Whether training epoch ``epoch`` (from 0) is augmented (``--augment-from-epoch`` counts from 1)."""
        return epoch + 1 >= self.options.augment_from_epoch

    @staticmethod
    def batch_generator(seed: int, epoch: int, first_index: int) -> np.random.Generator:
        """The generator of the batch-wide draws (speed) of the batch that starts with
        utterance ``first_index``; a stream apart from the utterances' own."""
        return np.random.default_rng([seed & 0xFFFFFFFF, epoch, first_index, 1])

    def waveform(self, waveform: torch.Tensor, rng: np.random.Generator,
                 batch_rng: np.random.Generator | None = None) -> tuple[torch.Tensor, list[str]]:
        """The augmented waveform and notes on clips that could not be used. With
        ``batch_rng`` (shared by the utterances of one batch) the speed comes from it.

        The decisions are drawn in a fixed order, every one of them whether or not it applies,
        so that changing one probability does not reshuffle the other augmentations.
        """
        o, notes = self.options, []
        draws = rng.random(4)
        speed = o.speed[int(rng.integers(len(o.speed)))]
        gain = float(rng.uniform(*o.gain_db))
        snr = float(rng.uniform(*o.snr))
        n_clips = int(rng.integers(1, o.noise_clips + 1))
        if batch_rng is not None:
            draws[0] = batch_rng.random()
            speed = o.speed[int(batch_rng.integers(len(o.speed)))]
        if draws[0] < o.speed_prob:
            waveform = change_speed(waveform, speed)
        samples = waveform.numpy().astype(np.float32)
        if self.rirs is not None and draws[1] < o.reverb_prob:
            path, _ = self.rirs.pick(rng)
            try:
                samples = reverberate(samples, self._rir(path))
            except (ValueError, audio.AudioError) as err:
                notes.append(str(err))
        if self.noises is not None and draws[2] < o.noise_prob:
            mixed = np.zeros_like(samples)
            for _ in range(n_clips):
                path, duration = self.noises.pick(rng)
                try:
                    clip = read_clip(path, duration, len(samples), rng, self.noises)
                except (ValueError, audio.AudioError) as err:
                    notes.append(str(err))
                    continue
                mixed += clip / math.sqrt(float(np.mean(clip.astype(np.float64) ** 2)))  # each clip at unit power
            if mixed.any():
                samples = mix_at_snr(samples, mixed, snr)
        if draws[3] < o.gain_prob:
            samples = samples * np.float32(10 ** (gain / 20))
        return torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32)), notes

    def features(self, features: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        if self.options.specaugment_prob > 0 and rng.random() < self.options.specaugment_prob:
            return spec_augment(features, self.options, rng)
        return features

    def _rir(self, path: str) -> np.ndarray:
        if path not in self._rir_cache:  # impulse responses are short and reused: keep them
            rir = audio.load_audio(path).numpy()
            if not np.abs(rir).max() > 0:
                raise ValueError(f"{path}: silent impulse response")
            self._rir_cache[path] = rir
        return self._rir_cache[path]
