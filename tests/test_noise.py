"""Noise sources and noisy test sets: generated colours, hum and babble; MUSAN-layout and plain
folders split disjointly; simulated rooms; corrupted copies of a test set at the asked SNR."""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile
from typer.testing import CliRunner

from conftest import noise_burst, tone, write_audio
from ds2 import audio, espeak
from ds2.cli import app
from ds2.data import read_manifest, write_manifest
from ds2.noise import (BABBLE_VOICES, NoiseOptions, RirOptions, colored_noise, hum, make_noisy_set,
                       prepare_noise, prepare_rirs, scan_collection)
from ds2.synth import ENGLISH_VOICES, SynthConfig

RATE = audio.SAMPLE_RATE


def _slope_db_per_decade(signal: np.ndarray) -> float:
    """Slope of the power spectrum between 100 Hz and 6 kHz, by a log-log fit over octave bands."""
    power = np.abs(np.fft.rfft(signal)) ** 2
    freqs = np.fft.rfftfreq(len(signal), 1 / RATE)
    centres = 100 * 2.0 ** np.arange(0, 6)
    band_power = [power[(freqs >= c) & (freqs < 2 * c)].mean() for c in centres]
    return float(np.polyfit(np.log10(centres), 10 * np.log10(band_power), 1)[0])


def test_noise_colours_have_their_spectral_slopes():
    rng = np.random.default_rng(0)
    for exponent, expected in ((0.0, 0.0), (1.0, -10.0), (2.0, -20.0)):  # white, pink, brown: dB per decade
        noise = colored_noise(10 * RATE, exponent, rng)
        assert _slope_db_per_decade(noise) == pytest.approx(expected, abs=1.0)
        assert np.sqrt(np.mean(noise ** 2)) == pytest.approx(0.1, rel=0.02)
    mains = hum(4 * RATE, np.random.default_rng(1))
    freqs = np.fft.rfftfreq(len(mains), 1 / RATE)
    assert freqs[np.abs(np.fft.rfft(mains)).argmax()] in (50.0, 60.0)


def test_babble_voices_are_neither_training_nor_test_voices():
    speech_variants = {espeak.voice_variant(v) for split in ("train", "dev")
                       for v in SynthConfig().resolved_voices(split)}
    train_babble = {espeak.voice_variant(v) for v in BABBLE_VOICES["train"]}
    test_babble = {espeak.voice_variant(v) for v in BABBLE_VOICES["test"]}
    assert not (train_babble | test_babble) & speech_variants
    assert not train_babble & test_babble
    assert ENGLISH_VOICES.train and ENGLISH_VOICES.heldout


def test_generated_noise_has_disjoint_train_and_test_clips(tmp_path):
    options = NoiseOptions(train_clips=2, test_clips=1, clip_seconds=2.0, babble_speakers=(2, 3))
    paths = prepare_noise(tmp_path / "noise", options, progress=False)
    train = list(read_manifest(paths["train"], required=("audio_filepath", "duration")))
    test = list(read_manifest(paths["test"], required=("audio_filepath", "duration")))
    assert sorted({r["kind"] for r in train}) == sorted(options.kinds) == sorted({r["kind"] for r in test})
    assert len(train) == 10 and len(test) == 5
    train_audio = {r["audio_filepath"]: soundfile.read(r["audio_filepath"])[0] for r in train}
    for record in test:
        samples = soundfile.read(record["audio_filepath"])[0]
        assert len(samples) == 2 * RATE and np.abs(samples).max() > 0
        assert not any(np.array_equal(samples, other) for other in train_audio.values())
    split = json.loads((tmp_path / "noise" / "split.json").read_text())
    assert split["kinds"]["babble"] == {"train": 2, "test": 1, "train_seconds": 4.0, "test_seconds": 2.0}
    assert split["babble_voices"]["test"] == list(BABBLE_VOICES["test"])
    again = prepare_noise(tmp_path / "again", options, progress=False)  # deterministic
    assert (tmp_path / "again" / "wav" / "test" / "babble_000.wav").read_bytes() == \
        (tmp_path / "noise" / "wav" / "test" / "babble_000.wav").read_bytes()
    assert again["train"].name == "train.json"


def _musan_tree(root: Path) -> Path:
    for kind, count in (("noise", 4), ("music", 3), ("speech", 1)):
        for i in range(count):
            write_audio(root / kind / f"src{i % 2}" / f"{kind}-{i}.wav", noise_burst(0.3, RATE, seed=i), RATE)
    write_audio(root / "noise" / "stereo-8k.flac", np.stack([tone(200, 0.4, 8000)] * 2, axis=1), 8000)
    (root / "music" / "broken.wav").write_bytes(b"RIFF....not a wav")
    (root / "README.txt").write_text("not audio")
    return root


def test_a_musan_layout_gives_kinds_and_a_stable_disjoint_split(tmp_path):
    root = _musan_tree(tmp_path / "musan")
    records, rejects = scan_collection(root, test_share=0.25)
    kinds = {kind: [r for r in records if r["kind"] == kind] for kind in ("noise", "music", "speech")}
    assert [len(kinds[k]) for k in ("noise", "music", "speech")] == [5, 3, 1]
    assert sum(r["split"] == "test" for r in kinds["noise"]) == 2  # ceil(0.25 * 5)
    assert sum(r["split"] == "test" for r in kinds["music"]) == 1
    assert kinds["speech"][0]["split"] == "train"  # a kind with one file keeps it for training
    assert [r["reason"] for r in rejects] and "broken.wav" in rejects[0]["reason"]
    # the same files go to the same side after a rename of the root or a re-scan
    moved = root.rename(tmp_path / "elsewhere")
    again, _ = scan_collection(moved, test_share=0.25)
    assert [(Path(r["audio_filepath"]).name, r["split"]) for r in again] == \
        [(Path(r["audio_filepath"]).name, r["split"]) for r in records]


def test_prepare_noise_command_indexes_a_plain_folder_only(tmp_path):
    for i in range(4):
        write_audio(tmp_path / "mine" / f"fan{i}.wav", noise_burst(0.5, 22050, seed=i), 22050)
    result = CliRunner().invoke(app, ["prepare", "noise", str(tmp_path / "out"), "--from", str(tmp_path / "mine"),
                                      "--kinds", ""])
    assert result.exit_code == 0, result.output
    train = list(read_manifest(tmp_path / "out" / "train.json", required=("audio_filepath", "duration")))
    test = list(read_manifest(tmp_path / "out" / "test.json", required=("audio_filepath", "duration")))
    assert (len(train), len(test)) == (3, 1) and {r["kind"] for r in train + test} == {"noise"}
    result = CliRunner().invoke(app, ["prepare", "noise", str(tmp_path / "none"), "--kinds", ""])
    assert result.exit_code == 1 and "nothing to do" in result.output
    result = CliRunner().invoke(app, ["prepare", "noise", str(tmp_path / "bad"), "--kinds", "white,purple"])
    assert result.exit_code == 1 and "--kinds: unknown purple" in result.output


def test_simulated_rooms_decay_and_train_and_test_rooms_differ(tmp_path):
    paths = prepare_rirs(tmp_path / "rirs", RirOptions(train_rooms=2, test_rooms=1, rt60=(0.3, 0.5)), progress=False)
    records = [r for split in ("train", "test") for r in read_manifest(paths[split], required=("audio_filepath", "duration"))]
    assert [r["split"] for r in records] == ["train", "train", "test"]
    assert len({tuple(r["room_m"]) for r in records}) == 3
    for record in records:
        rir, rate = soundfile.read(record["audio_filepath"])
        assert rate == RATE and np.abs(rir).max() == pytest.approx(1.0)
        energy = np.cumsum(rir[::-1] ** 2)[::-1]  # Schroeder decay
        decay_db = 10 * np.log10(energy / energy[0])
        t20 = np.argmax(decay_db < -25) - np.argmax(decay_db < -5)
        assert 0.1 < 3 * t20 / RATE < 1.0  # RT60 from T20, near the asked 0.3-0.5 s


def test_a_noisy_copy_of_a_test_set_is_at_the_asked_snr_and_reproducible(tmp_path):
    clean = [write_audio(tmp_path / "clean" / f"u{i}.wav", tone(300 + 100 * i, 1.0, RATE, 0.3), RATE) for i in range(3)]
    write_manifest(tmp_path / "test.json", [{"audio_filepath": str(p), "duration": 1.0, "text": f"utt {i}"}
                                            for i, p in enumerate(clean)] +
                   [{"audio_filepath": str(tmp_path / "missing.wav"), "duration": 1.0, "text": "gone"}])
    noise = np.random.default_rng(0).standard_normal(3 * RATE).astype(np.float32) * 0.1
    write_manifest(tmp_path / "noise.json", [{"audio_filepath": str(write_audio(tmp_path / "n.wav", noise, RATE)),
                                              "duration": 3.0}])
    path, written, rejected = make_noisy_set(tmp_path / "test.json", tmp_path / "snr5", tmp_path / "noise.json", 5.0,
                                             progress=False)
    assert (path.name, written, rejected) == ("snr5.json", 3, 1)
    assert "missing.wav: file not found" in (tmp_path / "snr5.rejects.json").read_text()
    for record, source in zip(read_manifest(path), clean):
        noisy, _ = soundfile.read(record["audio_filepath"], dtype="float32")
        original, _ = soundfile.read(source, dtype="float32")
        snr = 10 * np.log10(np.mean(original ** 2) / np.mean((noisy - original) ** 2))
        assert snr == pytest.approx(5.0, abs=0.05) and record["snr"] == 5.0 and record["text"].startswith("utt")
    first = sorted(p.read_bytes() for p in (tmp_path / "snr5" / "wav").iterdir())
    make_noisy_set(tmp_path / "test.json", tmp_path / "again", tmp_path / "noise.json", 5.0, progress=False)
    assert sorted(p.read_bytes() for p in (tmp_path / "again" / "wav").iterdir()) == first
    result = CliRunner().invoke(app, ["prepare", "noisy", str(tmp_path / "test.json"), str(tmp_path / "x"),
                                      "--noise", str(tmp_path / "noise.json")])
    assert result.exit_code == 1 and "--snr is needed" in result.output
