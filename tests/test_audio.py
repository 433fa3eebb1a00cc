import numpy as np
import pytest
import torch

from conftest import noise_burst, sweep, tone, write_audio
from ds2 import audio
from ds2.audio import HOP_LENGTH, N_FREQ, SAMPLE_RATE, AudioError, load_audio



def _interior(x, margin: int = 400):
    """Drop the edges, where a resampler's filter runs off the signal."""
    return x[margin:-margin]


# --------------------------------------------------------------------------- load_audio


def test_constants_describe_ds2_features():
    assert (audio.N_FFT, HOP_LENGTH, N_FREQ, audio.FRAMES_PER_SECOND) == (320, 160, 161, 100)


def test_16k_int16_file_is_read_unchanged(tmp_path):
    pcm = (np.random.default_rng(0).integers(-20000, 20000, 4000)).astype(np.int16)
    path = write_audio(tmp_path / "a.wav", pcm, SAMPLE_RATE, "PCM_16")
    waveform = load_audio(path)
    assert waveform.dtype == torch.float32
    np.testing.assert_allclose(waveform.numpy(), pcm / 32768.0, atol=1e-7)


def test_8k_stereo_is_downmixed_and_resampled_to_16k(tmp_path):
    left = tone(200, 0.5, 8000)
    right = 0.5 * tone(200, 0.5, 8000)
    path = write_audio(tmp_path / "stereo8k.wav", np.stack([left, right], axis=1), 8000, "FLOAT")
    waveform = load_audio(path)
    assert waveform.shape == (8000,)  # 0.5 s at 16 kHz
    expected = 0.75 * tone(200, 0.5, SAMPLE_RATE)  # mean of the channels, at 16 kHz
    np.testing.assert_allclose(_interior(waveform.numpy()), _interior(expected), atol=5e-3)


def test_channels_in_antiphase_cancel(tmp_path):
    left = sweep(0.3, 8000)
    path = write_audio(tmp_path / "antiphase.wav", np.stack([left, -left], axis=1), 8000, "FLOAT")
    waveform = load_audio(path)
    assert waveform.shape == (4800,)
    assert waveform.abs().max() < 1e-6


def test_downmix_is_the_channel_mean(tmp_path):
    rng = np.random.default_rng(1)
    channels = (0.3 * rng.standard_normal((1600, 3))).astype(np.float32)
    path = write_audio(tmp_path / "three.wav", channels, SAMPLE_RATE, "FLOAT")
    np.testing.assert_allclose(load_audio(path).numpy(), channels.mean(axis=1), atol=1e-7)


@pytest.mark.parametrize("seconds, n_expected", [(1.0, 16000), (0.3, 4800), (2.5, 40000)])
def test_44100_hz_keeps_its_duration(tmp_path, seconds, n_expected):
    path = write_audio(tmp_path / "cd.flac", tone(1000, seconds, 44100), 44100, "PCM_24")
    waveform = load_audio(path)
    assert waveform.shape == (n_expected,)
    np.testing.assert_allclose(_interior(waveform.numpy()), _interior(tone(1000, seconds, SAMPLE_RATE)), atol=5e-3)


def test_offset_and_duration_select_a_segment(tmp_path):
    ramp = (np.arange(SAMPLE_RATE) / SAMPLE_RATE).astype(np.float32)  # value = time in seconds
    path = write_audio(tmp_path / "ramp.wav", ramp, SAMPLE_RATE, "FLOAT")

    segment = load_audio(path, offset=0.25, duration=0.5)
    np.testing.assert_array_equal(segment.numpy(), ramp[4000:12000])

    tail = load_audio(path, offset=0.75)
    np.testing.assert_array_equal(tail.numpy(), ramp[12000:])

    clipped = load_audio(path, offset=0.9, duration=5.0)  # asks past the end: what is there
    np.testing.assert_array_equal(clipped.numpy(), ramp[14400:])


def test_offset_and_duration_are_in_seconds_at_the_native_rate(tmp_path):
    path = write_audio(tmp_path / "a8k.wav", sweep(1.0, 8000), 8000, "FLOAT")
    whole = load_audio(path)
    segment = load_audio(path, offset=0.5, duration=0.25)
    assert segment.shape == (4000,)
    # Away from the cut edges the segment is the same audio as the whole file's.
    np.testing.assert_allclose(segment[200:-200].numpy(), whole[8200:11800].numpy(), atol=5e-3)


def test_offset_past_the_end_is_an_error_naming_the_file(tmp_path):
    path = write_audio(tmp_path / "short.wav", tone(440, 0.5, SAMPLE_RATE), SAMPLE_RATE)
    with pytest.raises(AudioError, match="short.wav"):
        load_audio(path, offset=2.0)


def _nan_audio(path):
    samples = tone(440, 0.2, SAMPLE_RATE)
    samples[100] = np.nan
    write_audio(path, samples, SAMPLE_RATE, "FLOAT")


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda path: None, "file not found"),
        (lambda path: path.write_bytes(b""), "empty file"),
        (lambda path: path.write_bytes(np.random.default_rng(0).bytes(3000)), "cannot decode audio"),
        (lambda path: write_audio(path, np.zeros(0, np.float32), SAMPLE_RATE), "no audio samples"),
        (_nan_audio, "NaN"),
    ],
    ids=["missing", "empty", "corrupt", "no-samples", "nan"],
)
def test_unusable_audio_raises_audio_error_naming_the_file(tmp_path, make, reason):
    path = tmp_path / "bad.wav"
    make(path)
    with pytest.raises(AudioError) as error:
        load_audio(path)
    message = str(error.value)
    assert message.startswith(f"{path}: ")
    assert reason in message


# --------------------------------------------------------------------------- frames <-> seconds


def test_duration_to_frames():
    assert audio.duration_to_frames(1.0) == 101
    assert audio.duration_to_frames(2.345) == 1 + 37520 // 160


def test_frames_to_seconds_is_one_hop_per_frame():
    assert audio.frames_to_seconds(audio.FRAMES_PER_SECOND) == 1.0
    assert audio.frames_to_seconds(250) == pytest.approx(250 * audio.HOP_LENGTH / SAMPLE_RATE)
