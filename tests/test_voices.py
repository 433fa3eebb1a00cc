"""Voices beyond eSpeak: Flite and Festival speak at a rate and pitch; corpora keep people and
one whole engine out of training; a missing engine is skipped with a note."""

import json
import shutil

import numpy as np
import pytest

from ds2 import audio, voices
from ds2.config import ConfigError
from ds2.synth import ENGINE_VOICES, SynthConfig, synthesize_corpus

ENGINE_VOICE_NAMES = [v for v in voices.VOICES]
MISSING = {engine: voices.available(engine) for engine in ("flite", "festival")}


def _f0(waveform: np.ndarray) -> float:
    """Median autocorrelation pitch (Hz) of the voiced 40 ms frames."""
    frame, hop, found = int(0.04 * audio.SAMPLE_RATE), int(0.01 * audio.SAMPLE_RATE), []
    low, high = audio.SAMPLE_RATE // 400, audio.SAMPLE_RATE // 60
    for start in range(0, len(waveform) - frame, hop):
        window = waveform[start: start + frame]
        if np.sqrt(np.mean(window ** 2)) < 0.02:
            continue
        correlation = np.correlate(window, window, "full")[frame - 1:]
        lag = low + int(np.argmax(correlation[low:high]))
        if correlation[lag] > 0.3 * correlation[0]:
            found.append(audio.SAMPLE_RATE / lag)
    return float(np.median(found))


def _need(engine: str) -> None:
    if MISSING[engine]:  # scripts/setup.sh --test installs both; say so loudly where it did not
        pytest.fail(f"{MISSING[engine]}: run bash scripts/setup.sh --test")


@pytest.mark.parametrize("voice", ENGINE_VOICE_NAMES)
def test_every_voice_speaks_faster_and_higher_when_asked(voice):
    _need(voices.engine_of(voice))
    text = "the old man sat by the window and looked at the rain"
    slow_low = voices.speak(text, voice, rate=120, pitch=20).waveform.numpy()
    fast_high = voices.speak(text, voice, rate=240, pitch=80).waveform.numpy()
    plain = voices.speak(text, voice, rate=175, pitch=50)
    assert plain.word_positions == () and np.isfinite(plain.waveform.numpy()).all()
    assert 0.3 < len(fast_high) / len(slow_low) < 0.75  # twice the rate: about half the time
    if voices.info(voice).pitch:
        assert _f0(fast_high) > 1.2 * _f0(slow_low)  # 60 points of pitch: at least a fifth of an octave
    else:
        assert _f0(fast_high) == pytest.approx(_f0(slow_low), rel=0.1)  # documented: this voice keeps its pitch
    assert np.abs(plain.waveform.numpy()).max() > 0.05


def test_unknown_voices_and_bad_settings_are_refused():
    with pytest.raises(ValueError, match="unknown voice 'flite:nobody'; known: flite:awb"):
        voices.info("flite:nobody")
    with pytest.raises(ValueError, match="rate must be 80-450"):
        voices.speak("hello", "flite:awb", rate=40, pitch=50)
    assert "unknown engine 'mbrola'" in voices.available("mbrola")
    with pytest.raises(ConfigError, match="--engines: unknown piper"):
        SynthConfig(engines=("espeak", "piper"))


def test_one_person_cannot_be_on_both_sides_of_the_split():
    # festival's slt is the person behind flite's slt: training on flite:slt while festival is held out fails
    with pytest.raises(ValueError, match="same person.*'slt'"):
        SynthConfig(train_voices=("+m1", "flite:slt"), engines=("espeak", "festival"))
    people = {split: {voices.info(v).person for v in SynthConfig(engines=("espeak", "flite", "festival")).all_voices(split)}
              for split in ("train", "dev")}
    assert not people["train"] & people["dev"]
    assert not ENGINE_VOICES["festival"].train  # the engine held out whole


def test_a_corpus_of_three_engines_records_engines_people_and_licences(tmp_path):
    _need("flite")
    _need("festival")
    config = SynthConfig(n_train=8, n_dev=4, n_test=8, seed=2, engines=("espeak", "flite", "festival"))
    manifests = synthesize_corpus(tmp_path, config, progress=False, workers=1)
    records = {split: [json.loads(line) for line in open(path)] for split, path in manifests.items()}
    assert {r["engine"] for r in records["train"]} <= {"espeak", "flite"}
    assert "festival" in {r["engine"] for r in records["dev"] + records["test"]}
    for record in records["test"]:
        if record["engine"] != "espeak":
            assert set(record["word_starts"]) == {None}  # no word times from these engines
    summary = json.loads((tmp_path / "voices.json").read_text())
    assert summary["skipped"] == {}
    assert summary["voices"]["flite:awb"] == {"splits": ["train"], "engine": "flite", "person": "awb",
                                              "licence": voices.FLITE_LICENCE}
    assert summary["voices"]["festival:kal_diphone"]["splits"] == ["dev", "test"]


def test_a_missing_engine_is_skipped_with_a_note(tmp_path, monkeypatch):
    real_which = shutil.which
    monkeypatch.setattr(voices.shutil, "which", lambda name: None if name == "text2wave" else real_which(name))
    config = SynthConfig(n_train=2, n_dev=2, n_test=2, seed=1, engines=("espeak", "festival"))
    assert set(config.skipped_voices()) == set(ENGINE_VOICES["festival"].heldout)
    manifests = synthesize_corpus(tmp_path, config, progress=False, workers=1)
    assert {json.loads(line)["engine"] for line in open(manifests["dev"])} == {"espeak"}
    skipped = json.loads((tmp_path / "voices.json").read_text())["skipped"]
    assert "festival is not installed (apt-get install festival" in skipped["festival:kal_diphone"]
    only_festival = SynthConfig(n_train=2, n_dev=2, n_test=0, heldout_voices=("festival:kal_diphone",))
    with pytest.raises(ValueError, match="no voice of the dev split can speak here"):
        synthesize_corpus(tmp_path / "none", only_festival, progress=False, workers=1)
