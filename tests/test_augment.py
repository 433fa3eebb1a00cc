"""Augmentation: noise at the asked SNR from files of any length and format, reverberation,
speed, gain, SpecAugment; bad clips skipped and counted; the same augmentations after a resume."""

import csv
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import noise_burst, tone, write_audio
from ds2 import audio
from ds2.augment import (AugmentOptions, Augmenter, ClipBank, change_speed, mix_at_snr, read_clip, reverberate,
                         spec_augment)
from ds2.checkpoint import load_checkpoint
from ds2.config import ConfigError
from ds2.data import SpeechDataset, make_loader, write_manifest
from ds2.model import ModelConfig
from ds2.synth import SynthConfig, synthesize_corpus
from ds2.text import Alphabet
from ds2.train import TrainConfig, replayable, train

RATE = audio.SAMPLE_RATE


def _snr(clean: np.ndarray, noisy: np.ndarray) -> float:
    noise = noisy.astype(np.float64) - clean
    return 10 * np.log10(np.mean(clean.astype(np.float64) ** 2) / np.mean(noise ** 2))


def _noise_manifest(folder: Path, files: dict[str, tuple[np.ndarray, int]]) -> Path:
    records = []
    for name, (samples, rate) in files.items():
        path = write_audio(folder / name, samples, rate)
        records.append({"audio_filepath": str(path), "duration": len(samples) / rate})
    write_manifest(folder / "noise.json", records)
    return folder / "noise.json"


def test_noise_is_mixed_at_the_asked_snr():
    rng = np.random.default_rng(0)
    speech, noise = tone(440, 1.0, RATE), rng.standard_normal(RATE).astype(np.float32)
    for snr in (0.0, 5.0, 20.0):
        assert _snr(speech, mix_at_snr(speech, noise, snr)) == pytest.approx(snr, abs=0.01)


def test_noise_files_of_any_length_rate_and_channels_are_read_at_the_needed_length(tmp_path, monkeypatch):
    long = np.random.default_rng(1).standard_normal(30 * RATE).astype(np.float32) * 0.1
    stereo_8k = np.stack([noise_burst(0.5, 8000), noise_burst(0.5, 8000, seed=2)], axis=1)
    manifest = _noise_manifest(tmp_path, {"long.wav": (long, RATE), "short_8k_stereo.wav": (stereo_8k, 8000)})
    calls = []
    original = audio.load_audio
    monkeypatch.setattr(audio, "load_audio", lambda *a, **k: calls.append((a, k)) or original(*a, **k))
    rng = np.random.default_rng(3)
    clip = read_clip(str(tmp_path / "long.wav"), 30.0, 2 * RATE, rng)
    assert clip.shape == (2 * RATE,)
    (_, kwargs), = calls
    assert kwargs["duration"] < 2.1 and kwargs["offset"] > 0  # only the samples needed, from a random offset
    short = read_clip(str(tmp_path / "short_8k_stereo.wav"), 0.5, 3 * RATE, rng)  # repeated to 3 s
    assert short.shape == (3 * RATE,) and np.isfinite(short).all()
    assert np.abs(short[: RATE // 2]).max() > 0 and np.abs(short[-RATE // 2:]).max() > 0
    # a small collection is read once into memory, and slices of it equal reading the file there
    bank, on_disk = ClipBank(manifest, "noise"), ClipBank(manifest, "noise", cache_seconds=10.0)
    assert bank.cached and not on_disk.cached
    calls.clear()
    for seed in range(5):
        cached = read_clip(str(tmp_path / "long.wav"), 30.0, 2 * RATE, np.random.default_rng(seed), bank)
        assert np.array_equal(cached, read_clip(str(tmp_path / "long.wav"), 30.0, 2 * RATE,
                                                np.random.default_rng(seed), on_disk))
    assert len(calls) == 1 + 5  # the whole file once for the cache, then each on-disk read


def test_a_bad_noise_clip_is_skipped_and_reported_not_fatal(tmp_path):
    manifest = _noise_manifest(tmp_path, {"silent.wav": (np.zeros(RATE, np.float32), RATE)})
    write_audio(tmp_path / "nan.wav", np.full(RATE, np.nan, np.float32), RATE, subtype="FLOAT")
    (tmp_path / "empty.wav").write_bytes(b"")
    with open(manifest, "a") as handle:
        for name in ("nan.wav", "empty.wav"):
            handle.write(json.dumps({"audio_filepath": str(tmp_path / name), "duration": 1.0}) + "\n")
    augmenter = Augmenter(AugmentOptions(noise=str(manifest), noise_prob=1.0, noise_clips=3))
    speech = torch.from_numpy(tone(300, 1.0, RATE))
    reasons = {"silent.wav: silent noise", "nan.wav: audio contains NaN", "empty.wav: empty file"}
    seen = set()
    for seed in range(10):
        out, notes = augmenter.waveform(speech, np.random.default_rng(seed))
        assert torch.equal(out, speech)  # nothing usable: the utterance stays clean
        assert notes and all(any(reason in note for reason in reasons) for note in notes)
        seen |= {reason for reason in reasons for note in notes if reason in note}
    assert seen == reasons


def test_bad_options_are_refused_with_the_option_named(tmp_path):
    with pytest.raises(ConfigError, match="--snr: give LOW,HIGH"):
        AugmentOptions(snr=(20.0, 0.0))
    with pytest.raises(ConfigError, match="--noise-prob: must be <= 1"):
        AugmentOptions(noise_prob=1.5)
    with pytest.raises(ConfigError, match="--reverb-prob: must be >= 0"):
        AugmentOptions(reverb_prob=-0.1)
    (tmp_path / "empty.json").write_text("")
    with pytest.raises(ValueError, match="empty.json: no noise files"):
        Augmenter(AugmentOptions(noise=str(tmp_path / "empty.json")))
    with pytest.raises(ValueError, match="missing.json: manifest not found"):
        Augmenter(AugmentOptions(noise=str(tmp_path / "missing.json")))
    assert not AugmentOptions().active and AugmentOptions(speed_prob=0.5).active
    assert not AugmentOptions(noise_prob=1.0).active  # no noise manifest: nothing to add


def test_reverberation_keeps_the_timing_and_the_level():
    speech = tone(500, 1.0, RATE) * np.hanning(RATE).astype(np.float32)
    delayed_impulse = np.zeros(800, dtype=np.float32)
    delayed_impulse[100] = 1.0
    assert np.allclose(reverberate(speech, delayed_impulse), speech, atol=1e-5)  # aligned on the direct path
    room = delayed_impulse.copy()
    room[100:] += 0.3 * np.random.default_rng(0).standard_normal(700) * np.exp(-np.arange(700) / 150)
    wet = reverberate(speech, room)
    assert wet.shape == speech.shape
    assert np.mean(wet ** 2) == pytest.approx(np.mean(speech ** 2), rel=1e-3)
    assert not np.allclose(wet, speech, atol=1e-2)


def test_speed_resamples_as_ds2_audio_does():  # to float rounding: the kernel is made once, in float32
    speech = torch.from_numpy(tone(300, 1.0, RATE))
    for factor in (0.9, 1.1, 0.9):  # the second 0.9 reuses the kernel made for the first
        rate = int(round(RATE * factor / 100)) * 100
        torch.testing.assert_close(change_speed(speech, factor), audio.resample(speech, rate, RATE), rtol=0, atol=1e-5)


def test_speed_changes_the_length_and_the_pitch():
    fast = change_speed(torch.from_numpy(tone(1000, 1.0, RATE)), 1.1).numpy()
    assert len(fast) == pytest.approx(RATE / 1.1, abs=2)
    spectrum = np.abs(np.fft.rfft(fast))
    assert np.fft.rfftfreq(len(fast), 1 / RATE)[spectrum.argmax()] == pytest.approx(1100, abs=5)


def test_spec_augment_zeroes_bands_and_spans_within_the_widths():
    options = AugmentOptions(freq_masks=1, freq_width=10, time_masks=1, time_width=0.1, specaugment_prob=1.0)
    features = torch.ones(161, 200)
    for seed in range(20):
        masked = spec_augment(features, options, np.random.default_rng(seed))
        zero_rows = int((masked == 0).all(dim=1).sum())
        zero_cols = int((masked == 0).all(dim=0).sum())
        assert zero_rows <= 10 and zero_cols <= 20
        assert torch.equal(features, torch.ones(161, 200))  # the input is left alone
    assert any((spec_augment(features, options, np.random.default_rng(s)) == 0).any() for s in range(5))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    manifests = synthesize_corpus(out, SynthConfig(n_train=8, n_dev=2, n_test=2, seed=5), progress=False)
    noise = np.random.default_rng(4).standard_normal(5 * RATE).astype(np.float32) * 0.1
    manifests["noise"] = _noise_manifest(out / "noise", {"white.wav": (noise, RATE),
                                                         "silent.wav": (np.zeros(RATE, np.float32), RATE)})
    return manifests


def test_each_utterance_gets_the_same_augmentation_in_any_batch_or_worker(corpus):
    options = AugmentOptions(noise=str(corpus["noise"]), noise_prob=0.5, speed_prob=0.5, specaugment_prob=0.5)
    one = SpeechDataset(corpus["train"], Alphabet(), augmenter=Augmenter(options), seed=7)
    other = SpeechDataset(corpus["train"], Alphabet(), augmenter=Augmenter(options), seed=7)
    first = [one[(i, 2)].features for i in range(len(one))]
    shuffled = {i: other[(i, 2)].features for i in reversed(range(len(other)))}
    assert all(torch.equal(first[i], shuffled[i]) for i in range(len(one)))
    later = [one[(i, 3)].features for i in range(len(one))]
    assert sum(not torch.equal(a, b) for a, b in zip(first, later)) >= len(one) // 2  # a new epoch, new draws
    clean = SpeechDataset(corpus["train"], Alphabet())
    assert sum(not torch.equal(a, clean[i].features) for i, a in enumerate(first)) >= 2
    loaded = [b for b in make_loader(one, [[0, 1], [2, 3]], num_workers=1, epoch=2)]  # a forked worker
    in_batch = one[(2, 2, 2)].features  # the speed drawn for the batch that starts with utterance 2
    assert torch.equal(loaded[1].features[0, :, : in_batch.shape[1]], in_batch)


def test_the_utterances_of_a_batch_share_one_speed(corpus):
    options = AugmentOptions(speed=(0.8, 1.25), speed_prob=1.0)
    dataset = SpeechDataset(corpus["train"], Alphabet(), augmenter=Augmenter(options))
    clean = SpeechDataset(corpus["train"], Alphabet())
    batches = [[0, 1, 2, 3], [4, 5, 6, 7]]
    factors = set()
    for epoch in range(4):
        for batch, loaded in zip(batches, make_loader(dataset, batches, num_workers=0, epoch=epoch)):
            ratios = [clean[i].features.shape[1] / int(n) for i, n in zip(batch, loaded.feature_lengths)]
            assert max(ratios) - min(ratios) < 0.02, ratios  # one factor for the whole batch
            factor = min(options.speed, key=lambda f: abs(f - ratios[0]))
            assert abs(factor - ratios[0]) < 0.03, ratios
            factors.add(factor)
    assert factors == {0.8, 1.25}  # both drawn over the epochs


def test_epochs_before_augment_from_epoch_are_clean(corpus):
    options = AugmentOptions(noise=str(corpus["noise"]), noise_prob=1.0, augment_from_epoch=2)
    dataset = SpeechDataset(corpus["train"], Alphabet(), augmenter=Augmenter(options))
    clean = SpeechDataset(corpus["train"], Alphabet())
    first, second = (next(iter(make_loader(dataset, [[0, 1]], num_workers=0, epoch=e))) for e in (0, 1))
    reference = next(iter(make_loader(clean, [[0, 1]], num_workers=0)))
    assert torch.equal(first.features, reference.features)
    assert not torch.equal(second.features, reference.features)


def _config(corpus, out_dir, **overrides) -> TrainConfig:
    values = dict(
        train_manifest=str(corpus["train"]), dev_manifest=str(corpus["dev"]), out_dir=str(out_dir),
        epochs=2, batch_size=4, lr=1e-3, num_workers=0, progress=False, checkpoint_every=1, threads=1,
        model=ModelConfig(conv_layers=1, conv_channels=(4,), conv_kernels=((41, 11),), conv_strides=((4, 2),),
                          rnn_hidden=16, rnn_layers=1, fc_hidden=16),
        augment=AugmentOptions(noise=str(corpus["noise"]), noise_prob=0.7, speed_prob=0.5, gain_prob=0.5,
                               specaugment_prob=0.5),
    )
    values.update(overrides)
    return TrainConfig(**values)


def test_a_resumed_augmented_run_sees_what_the_uninterrupted_run_saw(corpus, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="ds2.train"):
        train(_config(corpus, tmp_path / "straight"))
    straight = load_checkpoint(tmp_path / "straight" / "last.pt")
    assert straight["training"]["state"]["skipped_augment"] > 0  # the silent clip, skipped and counted
    assert sum("silent.wav: silent noise" in r.message for r in caplog.records) == 1  # logged once
    train(_config(corpus, tmp_path / "resumed", max_steps=3))  # stops inside epoch 2
    train(_config(corpus, tmp_path / "resumed", resume=True))
    resumed = load_checkpoint(tmp_path / "resumed" / "last.pt")
    assert replayable(resumed["training"]["state"]) == replayable(straight["training"]["state"])
    for key, value in straight["model"].items():
        assert torch.equal(resumed["model"][key], value), key
    train(_config(corpus, tmp_path / "clean", augment=AugmentOptions()))
    plain = load_checkpoint(tmp_path / "clean" / "last.pt")
    assert any(not torch.equal(plain["model"][k], v) for k, v in straight["model"].items())
    with open(tmp_path / "straight" / "epochs.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert int(rows[-1]["skipped_augment"]) == straight["training"]["state"]["skipped_augment"]


def test_an_older_epochs_csv_gets_the_new_column_on_resume(tmp_path):
    from ds2.io import CsvLog

    path = tmp_path / "epochs.csv"
    path.write_text("epoch,step\n1,10\n")
    log = CsvLog(path, ["epoch", "step", "skipped_augment"], append=True)
    log.write({"epoch": 2, "step": 20, "skipped_augment": 3})
    log.close()
    assert path.read_text() == "epoch,step,skipped_augment\n1,10,\n2,20,3\n"
    path.write_text("step,epoch\n1,10\n")
    with pytest.raises(ValueError, match="is not this log's"):
        CsvLog(path, ["epoch", "step", "skipped_augment"], append=True)


def test_train_command_takes_the_augmentation_options(corpus, tmp_path):
    from typer.testing import CliRunner

    from ds2.cli import app

    result = CliRunner().invoke(app, ["train", str(corpus["train"]), str(corpus["dev"]), "-o", str(tmp_path / "x"),
                                      "--snr", "10,5", "--noise", str(corpus["noise"])])
    assert result.exit_code == 1 and "--snr: give LOW,HIGH with LOW <= HIGH, got 10,5" in result.output
