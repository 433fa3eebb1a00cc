"""The eSpeak NG binding: real synthesis, short sentences."""

from __future__ import annotations

import pytest
import torch

from ds2 import audio, espeak
from ds2.espeak import synthesize

SENTENCE = "the old farmer carried seven heavy baskets to the market"


def duration(waveform: torch.Tensor) -> float:
    return waveform.numel() / audio.SAMPLE_RATE


def test_synthesize_gives_speech_like_16khz_audio():
    waveform = synthesize(SENTENCE, "en-us", rate=175, pitch=50)
    assert waveform.dtype == torch.float32 and waveform.ndim == 1
    assert torch.isfinite(waveform).all()
    assert waveform.abs().max() <= 1.0
    rms = waveform.square().mean().sqrt().item()
    assert rms > 0.02  # not silence
    assert 2.0 < duration(waveform) < 5.0  # 10 words at 175 words per minute: ~3.4 s
    # Resampled from eSpeak's 22050 Hz: same length in seconds, 16000/22050 the samples.
    native_rate = espeak.native_sample_rate()
    assert native_rate == 22050
    with espeak._ENGINE_LOCK:
        native, _ = espeak._engine().speak(SENTENCE, "en-us", rate=175, pitch=50)
    assert abs(waveform.numel() - len(native) * audio.SAMPLE_RATE / native_rate) <= 1


def test_duration_grows_with_text_and_shrinks_with_rate():
    short = synthesize("the cat sat", "en-us", rate=175, pitch=50)
    long = synthesize(SENTENCE, "en-us", rate=175, pitch=50)
    fast = synthesize(SENTENCE, "en-us", rate=300, pitch=50)
    slow = synthesize(SENTENCE, "en-us", rate=100, pitch=50)
    assert duration(long) > 2 * duration(short)
    assert duration(slow) > 1.8 * duration(fast)
    assert duration(slow) > duration(long) > duration(fast)


def test_synthesize_depends_only_on_its_arguments():
    # eSpeak keeps state between utterances; each call must start from scratch.
    first = synthesize(SENTENCE, "en-us+f3", rate=160, pitch=40)
    synthesize("something else entirely", "en+m2", rate=210, pitch=70)
    again = synthesize(SENTENCE, "en-us+f3", rate=160, pitch=40)
    assert torch.equal(first, again)


def test_pitch_changes_the_audio():
    low = synthesize(SENTENCE, "en-us+m3", rate=175, pitch=30)
    high = synthesize(SENTENCE, "en-us+m3", rate=175, pitch=70)
    assert low.numel() != high.numel() or not torch.equal(low, high)


@pytest.mark.parametrize("voice", ["en-us+nosuchvariant", "xx-nosuchlanguage"])
def test_unknown_voice_is_an_error(voice):
    with pytest.raises(ValueError, match="unknown eSpeak voice"):
        synthesize("hello", voice, rate=175, pitch=50)
    with pytest.raises(ValueError, match="unknown eSpeak voice"):
        espeak.check_voice(voice)


@pytest.mark.parametrize(
    "text, rate, pitch", [("   ", 175, 50), ("hello", 40, 50), ("hello", 175, 101)]
)
def test_bad_arguments_are_errors(text, rate, pitch):
    with pytest.raises(ValueError):
        synthesize(text, "en-us", rate=rate, pitch=pitch)


def test_voice_variant():
    assert espeak.voice_variant("en-gb-x-rp+linda") == "linda"
    assert espeak.voice_variant("+m3") == "m3"
    assert espeak.voice_variant("en-us") == ""


def test_reset_after_fork_replaces_a_held_lock():
    # A forked child inherits the lock in whatever state a parent's thread left it.
    with espeak._ENGINE_LOCK:
        espeak.reset_after_fork()
        assert espeak._ENGINE_LOCK.acquire(timeout=1)  # the old lock is still held here
        espeak._ENGINE_LOCK.release()
    assert synthesize("the cat sat", "en-us", rate=175, pitch=50).numel() > 0


def test_speak_reports_where_every_word_starts():
    text = "where did the seventy two red boxes go?"
    speech = espeak.speak(text, "en-us+f3", rate=175, pitch=50)
    assert torch.equal(speech.waveform, synthesize(text, "en-us+f3", rate=175, pitch=50))
    assert [word for word, _ in speech.words] == ["where", "did", "the", "seventy", "two", "red", "boxes", "go"]
    starts = [start for _, start in speech.words]
    assert starts[0] == pytest.approx(0.0, abs=0.02) and starts == sorted(starts) and len(set(starts)) == len(starts)
    seconds = len(speech.waveform) / audio.SAMPLE_RATE
    assert starts[-1] < seconds - 0.1
    slower = espeak.speak(text, "en-us+f3", rate=110, pitch=50)  # the same words, later
    assert all(b > a for (_, a), (_, b) in zip(speech.words[1:], slower.words[1:]))
