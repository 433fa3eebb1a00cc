import csv
import json
import logging
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ds2 import ctc
from ds2.checkpoint import load_checkpoint, load_model
from ds2.data import SpeechDataset, collate, read_manifest, write_manifest
from ds2.model import DeepSpeech2, ModelConfig
from ds2.synth import SynthConfig, synthesize_corpus
from ds2.text import Alphabet
from ds2.train import TrainConfig, TrainingError, compute_losses, train

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
    losses = compute_losses(model, batch, torch.device("cpu"), "torch")
    assert losses.n_forwarded == 4 and int(losses.n_finite) == 2  # 2 non-finite
    mean = float(losses.loss_sum.detach() / losses.n_finite)
    assert mean == pytest.approx(float(expected_losses[2:].detach().mean()), rel=1e-5)


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


def test_the_callers_thread_count_is_restored(corpus, tmp_path):
    before = torch.get_num_threads()
    train(_config(corpus, tmp_path / "run", epochs=1, threads=1 if before != 1 else 2))
    assert torch.get_num_threads() == before


def test_learning_rate_defaults_per_optimizer_and_bad_values_are_refused(tmp_path):
    base = dict(train_manifest="t.json", dev_manifest="d.json", out_dir=str(tmp_path))
    assert TrainConfig(**base, optimizer="sgd").lr == 3e-3
    assert TrainConfig(**base, optimizer="adam").lr == 1e-3
    assert TrainConfig(**base, optimizer="adam", lr=5e-4).lr == 5e-4
    for bad in (dict(lr=math.nan), dict(lr=-1.0), dict(anneal=0.0), dict(grad_clip=math.inf), dict(optimizer="rmsprop")):
        with pytest.raises(ValueError):
            TrainConfig(**base, **bad)


# --------------------------------------------------------------------------- data it cannot use


def test_a_manifest_whose_audio_is_all_missing_stops_before_training(corpus, tmp_path):
    moved = tmp_path / "elsewhere" / "train.json"  # relative paths copied away from their corpus
    moved.parent.mkdir()
    moved.write_text(corpus["train"].read_text())
    with pytest.raises(TrainingError, match=r"8 of 8 audio files are missing \(100% > --max-unusable 50%\)"):
        train(_config(corpus, tmp_path / "run", train_manifest=str(moved)))
    assert not (tmp_path / "run" / "last.pt").exists()


def test_an_epoch_that_cannot_use_most_of_its_data_is_an_error(corpus, tmp_path):
    records = list(read_manifest(corpus["train"]))
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00garbage" * 10)
    manifest = tmp_path / "mostly_bad.json"
    write_manifest(manifest, records[:3] + [{**r, "audio_filepath": str(corrupt)} for r in records[3:]])
    with pytest.raises(TrainingError, match=r"epoch 1: 5 of 8 training utterances could not be used"):
        train(_config(corpus, tmp_path / "run", train_manifest=str(manifest), batch_size=8))
    # with a higher tolerance the same data trains
    state = train(_config(corpus, tmp_path / "run2", train_manifest=str(manifest), batch_size=8, epochs=1,
                          max_unusable=0.7))
    assert state.skipped_load == 5 and state.step > 0


def test_the_ctc_backend_that_ran_is_recorded_and_a_fallback_is_logged(corpus, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(ctc, "_numba_kernels", lambda: None)  # as if numba could not load
    monkeypatch.setattr(ctc, "_FALLBACK_LOGGED", set())
    with caplog.at_level(logging.INFO):
        train(_config(corpus, tmp_path / "run", epochs=1))
    assert json.loads((tmp_path / "run" / "run.json").read_text())["ctc_backend"] == "torch"
    assert load_checkpoint(tmp_path / "run" / "last.pt")["training"]["ctc_backend"] == "torch"
    assert any("CTC: torch" in message for message in caplog.messages)
    assert any("--ctc auto: our numba kernel is unavailable" in message for message in caplog.messages)
    with pytest.raises(ValueError, match="--ctc numba: the numba CTC kernel cannot load"):
        train(_config(corpus, tmp_path / "run2", epochs=1, ctc="numba"))


# --------------------------------------------------------------------------- one scoring normalization


def test_ds2_score_and_the_dev_evaluation_agree_on_mixed_case_and_punctuation(corpus, tmp_path, restore_logging):
    """The same hypotheses get the same WER/CER from `ds2 score` and from training's dev
    evaluation, on a manifest whose references are written the way people write."""
    from typer.testing import CliRunner

    from ds2.cli import app
    from ds2.train import evaluate

    records = list(read_manifest(corpus["dev"])) + list(read_manifest(corpus["test"]))
    styled = [
        {**records[0], "text": records[0]["text"].capitalize() + "!"},
        {**records[1], "text": '"' + records[1]["text"].upper() + '"'},
        {**records[2], "text": records[2]["text"].replace(" ", " -- ", 1) + "?"},
        {**records[3], "text": records[3]["text"].title() + "."},
    ]
    manifest = tmp_path / "styled.json"
    write_manifest(manifest, styled)
    model_path = Path(__file__).parent / "data" / "checkpoint_v1.pt"  # says something for every clip
    model, alphabet = load_model(model_path)
    _, dev_wer, dev_cer = evaluate(model, SpeechDataset(manifest, alphabet), torch.device("cpu"), "numba")

    runner = CliRunner()
    hypotheses = tmp_path / "hyp.json"
    result = runner.invoke(app, ["decode", str(model_path), str(manifest), "-o", str(hypotheses),
                                 "--no-progress", "--num-workers", "0", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    for normalize, agree in (("--normalize", True), ("--no-normalize", False)):
        result = runner.invoke(app, ["score", str(hypotheses), normalize, "--json", str(tmp_path / "s.json")])
        assert result.exit_code == 0, result.output
        scored = json.loads((tmp_path / "s.json").read_text())
        same = scored["wer"] == pytest.approx(dev_wer) and scored["cer"] == pytest.approx(dev_cer)
        assert same == agree, (normalize, scored["wer"], scored["cer"], dev_wer, dev_cer)


# --------------------------------------------------------------------------- kill -9 at any moment


def _train_command(corpus, out_dir, **overrides):
    options = dict(epochs=4, batch_size=2, optimizer="sgd", lr=1e-3, num_workers=0, checkpoint_every=1,
                   log_every=1, threads=1, conv_layers=1, conv_channels="4", conv_kernels="41x11",
                   conv_strides="4x2", rnn_layers=1, rnn_hidden=16, fc_hidden=16)
    options.update(overrides)
    args = [sys.executable, "-m", "ds2.cli", "train", str(corpus["train"]), str(corpus["dev"]), "-o", str(out_dir),
            "--no-progress"]
    for name, value in options.items():
        flag = name.replace("_", "-")
        args += ([f"--{flag}" if value else f"--no-{flag}"] if isinstance(value, bool) else [f"--{flag}", str(value)])
    return args


def _kill_when(args, ready, timeout=120.0):
    """Start ``args``, SIGKILL it as soon as ``ready()`` holds (or when it ends by itself)."""
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        if ready():
            process.kill()
            break
        time.sleep(0.005)
    process.wait()
    return process.returncode


@pytest.mark.slow
def test_killed_with_sigkill_at_any_moment_training_resumes_to_the_same_end(corpus, tmp_path):
    straight = tmp_path / "straight"
    subprocess.run(_train_command(corpus, straight), check=True, capture_output=True)

    run = tmp_path / "killed"
    log_csv = run / "log.csv"

    def rows():
        return log_csv.read_text().count("\n") - 1 if log_csv.exists() else -1

    # 1: killed the moment log.csv exists (the header may or may not be on disk, no row yet)
    assert _kill_when(_train_command(corpus, run), lambda: log_csv.exists()) == -signal.SIGKILL
    assert rows() <= 0
    # 2, 3: killed in the middle of later epochs, after checkpoints
    for target in (5, 11):
        code = _kill_when(_train_command(corpus, run, resume=(run / "last.pt").exists()), lambda t=target: rows() >= t)
        assert code == -signal.SIGKILL
    finished = subprocess.run(_train_command(corpus, run, resume=True), capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr[-2000:]

    ours, theirs = load_checkpoint(run / "last.pt"), load_checkpoint(straight / "last.pt")
    for key, value in theirs["model"].items():
        assert torch.equal(ours["model"][key], value), key
    assert ours["training"]["state"] == theirs["training"]["state"]
    # every file the runs appended to is whole: one header, each step and epoch exactly once
    steps = [int(row["step"]) for row in csv.DictReader(open(log_csv))]
    assert steps == [int(row["step"]) for row in csv.DictReader(open(straight / "log.csv"))]
    assert steps == sorted(set(steps))
    epochs = [row["epoch"] for row in csv.DictReader(open(run / "epochs.csv"))]
    assert epochs == ["1", "2", "3", "4"]
    assert (run / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_init_starts_from_a_checkpoints_weights_and_alphabet(corpus, tmp_path):
    alphabet = Alphabet.from_texts(record["text"] for record in read_manifest(corpus["train"]))
    train(_config(corpus, tmp_path / "first", epochs=1), alphabet)
    first = load_checkpoint(tmp_path / "first" / "last.pt")
    # a learning rate too small to move anything: the run ends where --init started it
    train(_config(corpus, tmp_path / "tuned", epochs=1, lr=1e-30, init=str(tmp_path / "first" / "last.pt"),
                  model=ModelConfig(conv_layers=1, rnn_hidden=8, rnn_layers=1, fc_hidden=8)))
    tuned = load_checkpoint(tmp_path / "tuned" / "last.pt")
    assert tuned["model_config"] == first["model_config"]  # the checkpoint's model, not the options'
    for key, value in first["model"].items():
        if "running" not in key and "num_batches" not in key:  # BatchNorm statistics keep moving
            torch.testing.assert_close(tuned["model"][key], value, rtol=0, atol=1e-6)
