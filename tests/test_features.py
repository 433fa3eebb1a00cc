import numpy as np
import pytest
import torch

from conftest import noise_burst, sweep, tone, write_audio
from ds2 import audio
from ds2 import features as features_module
from ds2.audio import HOP_LENGTH, N_FREQ, SAMPLE_RATE, load_audio
from ds2.features import FEATURES, spectrogram

BIN_HZ = SAMPLE_RATE / audio.N_FFT  # 50 Hz between spectrogram bins


def test_features_description_matches_the_computation():
    assert FEATURES["n_freq"] == N_FREQ == spectrogram(torch.zeros(SAMPLE_RATE)).shape[0]
    assert FEATURES["sample_rate"] == SAMPLE_RATE and FEATURES["hop_ms"] * SAMPLE_RATE // 1000 == HOP_LENGTH


# --------------------------------------------------------------------------- spectrogram


@pytest.mark.parametrize("n_samples", [320, 1000, 1600, 16000, 16037])
def test_spectrogram_shape(n_samples):
    features = spectrogram(torch.from_numpy(noise_burst(n_samples / SAMPLE_RATE, SAMPLE_RATE)))
    assert features.shape == (N_FREQ, 1 + n_samples // HOP_LENGTH)
    assert features.dtype == torch.float32
    assert torch.isfinite(features).all()


@pytest.mark.parametrize("n_samples", [1, 100, 319, 320, 321, 480, 4799, 16000])
def test_n_frames_agrees_with_spectrogram(n_samples):
    waveform = torch.from_numpy(np.random.default_rng(n_samples).standard_normal(n_samples).astype(np.float32))
    assert spectrogram(waveform).shape[1] == audio.n_frames(n_samples)


def test_per_utterance_normalization_per_bin():
    waveform = torch.from_numpy(sweep(1.0, SAMPLE_RATE) + noise_burst(1.0, SAMPLE_RATE))
    features = spectrogram(waveform)
    torch.testing.assert_close(features.mean(dim=1), torch.zeros(N_FREQ), atol=1e-4, rtol=0)
    torch.testing.assert_close(features.std(dim=1), torch.ones(N_FREQ), atol=1e-3, rtol=0)

    raw = spectrogram(waveform, normalize=False)
    assert raw.mean(dim=1).abs().max() > 1.0  # unnormalized log power: not zero mean
    expected = (raw - raw.mean(dim=1, keepdim=True)) / raw.std(dim=1, keepdim=True)
    torch.testing.assert_close(features, expected, atol=1e-3, rtol=0)


def test_normalization_does_not_depend_on_loudness():
    waveform = torch.from_numpy(sweep(0.5, SAMPLE_RATE) + noise_burst(0.5, SAMPLE_RATE))
    torch.testing.assert_close(spectrogram(waveform), spectrogram(10 * waveform), atol=5e-3, rtol=0)


@pytest.mark.parametrize("frequency", [500, 1000, 2750, 6000])
def test_pure_tone_peaks_in_its_bin(frequency):
    features = spectrogram(torch.from_numpy(tone(frequency, 0.5, SAMPLE_RATE)), normalize=False)
    assert int(features.mean(dim=1).argmax()) == frequency / BIN_HZ


def test_tone_through_resampling_peaks_in_its_bin(tmp_path):
    path = write_audio(tmp_path / "tone.wav", tone(2000, 0.5, 44100), 44100, "PCM_16")
    features = spectrogram(load_audio(path), normalize=False)
    assert int(features.mean(dim=1).argmax()) == 2000 / BIN_HZ


def test_spectrogram_dtype_follows_the_waveform_not_the_default(monkeypatch):
    monkeypatch.setattr(features_module, "_WINDOWS", {})  # a window cached under another default would leak
    waveform = torch.from_numpy(noise_burst(0.2, SAMPLE_RATE))
    torch.set_default_dtype(torch.float64)
    try:
        first = spectrogram(waveform)
    finally:
        torch.set_default_dtype(torch.float32)
    assert first.dtype == torch.float32
    assert spectrogram(waveform).dtype == torch.float32
    assert spectrogram(waveform.double()).dtype == torch.float64
