import csv
import json
import logging
import math

import pytest
import torch

from ds2 import ctc
from ds2.checkpoint import load_checkpoint, load_model
from ds2.data import SpeechDataset, collate, read_manifest, write_manifest
from ds2.model import DeepSpeech2, ModelConfig
from ds2.synth import SynthConfig, synthesize_corpus
from ds2.text import Alphabet
from ds2.train import TrainConfig, compute_loss, train

TINY_MODEL = dict(
    conv_layers=1, conv_channels=(4,), conv_kernels=((41, 11),), conv_strides=((4, 2),),
    rnn_hidden=16, rnn_layers=1, fc_hidden=16,
)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    return synthesize_corpus(out, SynthConfig(n_train=8, n_dev=2, n_test=2, seed=3), progress=False)


def _config(corpus, out_dir, **overrides) -> TrainConfig:
    values = dict(
        train_manifest=str(corpus["train"]), dev_manifest=str(corpus["dev"]), out_dir=str(out_dir),
        epochs=3, batch_size=4, optimizer="sgd", lr=1e-3, num_workers=0, progress=False,
        checkpoint_every=1, threads=1, model=ModelConfig(**TINY_MODEL),
    )
    values.update(overrides)
    return TrainConfig(**values)


def test_resume_continues_exactly_where_it_stopped(corpus, tmp_path):
    train(_config(corpus, tmp_path / "straight"))
    straight = load_checkpoint(tmp_path / "straight" / "last.pt")

    interrupted = tmp_path / "interrupted"
    state = train(_config(corpus, interrupted, max_steps=3))  # 2 batches/epoch: stops inside epoch 2
    assert (state.epoch, state.batches_done, state.step) == (1, 1, 3)
    train(_config(corpus, interrupted, resume=True))
    resumed = load_checkpoint(interrupted / "last.pt")

    assert resumed["training"]["state"] == straight["training"]["state"]
    for key, value in straight["model"].items():
        assert torch.equal(resumed["model"][key], value), key
    momentum = [s["momentum_buffer"] for s in straight["training"]["optimizer"]["state"].values()]
    resumed_momentum = [s["momentum_buffer"] for s in resumed["training"]["optimizer"]["state"].values()]
    assert all(torch.equal(a, b) for a, b in zip(momentum, resumed_momentum))
    # the learning rate followed the annealing schedule: lr / 1.2^(epochs - 1)
    assert resumed["training"]["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-3 / 1.2**2)
    with open(interrupted / "epochs.csv") as handle:
        assert [row["epoch"] for row in csv.DictReader(handle)] == ["1", "2", "3"]


def test_training_skips_and_counts_what_it_cannot_use(corpus, tmp_path, caplog):
    records = list(read_manifest(corpus["train"]))
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00garbage" * 10)
    bad = [
        {**records[0], "audio_filepath": str(tmp_path / "missing.wav")},
        {**records[1], "audio_filepath": str(corrupt)},
        # a label far longer than a 2 s clip's output steps (50 per second here)
        {**records[2], "text": "a b " * 120},
    ]
    manifest = tmp_path / "train_with_bad.json"
    write_manifest(manifest, records + bad)
    with caplog.at_level(logging.WARNING, logger="ds2.train"):
        state = train(_config(corpus, tmp_path / "run", train_manifest=str(manifest), epochs=1))
    assert state.skipped_load == 2
    assert state.skipped_unaligned == 1
    assert state.step > 0
    assert any("missing.wav: file not found" in message for message in caplog.messages)
    assert any("corrupt.wav: cannot decode audio" in message for message in caplog.messages)
    with open(tmp_path / "run" / "epochs.csv") as handle:
        row = next(csv.DictReader(handle))
    assert (row["skipped_load"], row["skipped_unaligned"]) == ("2", "1")
    assert (tmp_path / "run" / "best.pt").exists() and (tmp_path / "run" / "curves.png").exists()


def test_non_finite_losses_are_skipped_not_averaged(corpus, monkeypatch):
    alphabet = Alphabet()
    dataset = SpeechDataset(corpus["train"], alphabet)
    batch = collate([dataset[i] for i in range(4)])
    model = DeepSpeech2(ModelConfig(**TINY_MODEL)).train()
    real = ctc.ctc_loss

    def poisoned(*args, **kwargs):
        losses = real(*args, **kwargs)
        return torch.cat([losses[:1] * math.nan, losses[1:2] * math.inf, losses[2:]])

    torch.manual_seed(0)
    expected_losses = real(*_forward(model, batch), reduction="none")
    monkeypatch.setattr(ctc, "ctc_loss", poisoned)
    torch.manual_seed(0)
    loss, result = compute_loss(model, batch, torch.device("cpu"), "torch")
    assert result.n_nonfinite == 2 and result.n_used == 2
    assert float(loss.detach()) == pytest.approx(float(expected_losses[2:].detach().mean()), rel=1e-5)


def _forward(model, batch):
    logits, lengths = model(batch.features, batch.feature_lengths)
    return logits, batch.labels, lengths, batch.label_lengths


def test_checkpoint_loads_with_weights_only_and_keeps_the_alphabet(corpus, tmp_path):
    alphabet = Alphabet.from_texts(record["text"] for record in read_manifest(corpus["train"]))
    train(_config(corpus, tmp_path / "run", epochs=1), alphabet)
    model, loaded = load_model(tmp_path / "run" / "best.pt")
    assert loaded == alphabet and model.config.n_outputs == len(alphabet)
    torch.load(tmp_path / "run" / "last.pt", weights_only=True)  # raises on pickled code
    with pytest.raises(ValueError, match="not a readable ds2 checkpoint"):
        (tmp_path / "junk.pt").write_bytes(b"junk")
        load_model(tmp_path / "junk.pt")
    assert json.loads(json.dumps(model.config.to_dict()))["alphabet"] == list(alphabet.symbols)


def test_learning_rate_defaults_per_optimizer_and_bad_values_are_refused(tmp_path):
    base = dict(train_manifest="t.json", dev_manifest="d.json", out_dir=str(tmp_path))
    assert TrainConfig(**base, optimizer="sgd").lr == 3e-3
    assert TrainConfig(**base, optimizer="adam").lr == 1e-3
    assert TrainConfig(**base, optimizer="adam", lr=5e-4).lr == 5e-4
    for bad in (dict(lr=math.nan), dict(lr=-1.0), dict(anneal=0.0), dict(grad_clip=math.inf), dict(optimizer="rmsprop")):
        with pytest.raises(ValueError):
            TrainConfig(**base, **bad)
