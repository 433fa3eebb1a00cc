import copy
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
from torch.utils._python_dispatch import TorchDispatchMode

from ds2 import audio, ctc
from ds2.augment import AugmentOptions
from ds2.checkpoint import load_checkpoint, load_model
from ds2.data import SpeechDataset, collate, read_manifest, write_manifest
from ds2.model import DeepSpeech2, ModelConfig
from ds2.synth import SynthConfig, synthesize_corpus
from ds2.text import Alphabet
from ds2.distributed import SINGLE
from ds2.train import (
    DryRun, Tally, TrainConfig, TrainingError, activation_bytes_per_step, build_optimizer, compute_losses, dry_run,
    load_optimizer_state, make_bucketing, replayable, train, train_step,
)

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

    assert replayable(resumed["training"]["state"]) == replayable(straight["training"]["state"])
    for key, value in straight["model"].items():
        assert torch.equal(resumed["model"][key], value), key
    momentum = [s["momentum_buffer"] for s in straight["training"]["optimizer"]["state"].values()]
    resumed_momentum = [s["momentum_buffer"] for s in resumed["training"]["optimizer"]["state"].values()]
    assert all(torch.equal(a, b) for a, b in zip(momentum, resumed_momentum))
    # the learning rate followed the annealing schedule: lr / 1.2^(epochs - 1)
    assert resumed["training"]["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-3 / 1.2**2)
    with open(interrupted / "epochs.csv") as handle:
        assert [row["epoch"] for row in csv.DictReader(handle)] == ["1", "2", "3"]


def test_a_run_stopped_inside_a_jittered_epoch_resumes_exactly(corpus, tmp_path):
    jittered = dict(batch_size=3, bucket_jitter=0.5)  # 3 minibatches an epoch (3, 3, 2), cut anew each epoch
    config = _config(corpus, tmp_path / "straight", **jittered)
    bucketing = make_bucketing(config, SpeechDataset(corpus["train"], Alphabet()), config.model)
    assert sorted(map(sorted, bucketing.batches(1))) != sorted(map(sorted, bucketing.batches(0)))
    train(config)
    straight = load_checkpoint(tmp_path / "straight" / "last.pt")

    interrupted = tmp_path / "interrupted"  # and loaded by a worker process: the same minibatches
    state = train(_config(corpus, interrupted, max_steps=5, num_workers=1, **jittered))
    assert (state.epoch, state.batches_done) == (1, 2)  # inside the second epoch, the first jittered one
    with pytest.raises(ValueError, match=r"stopped inside epoch 2, whose minibatches were cut otherwise.*--bucket-jitter"):
        train(_config(corpus, interrupted, resume=True, batch_size=3, bucket_jitter=0.1))
    train(_config(corpus, interrupted, resume=True, num_workers=1, **jittered))
    resumed = load_checkpoint(interrupted / "last.pt")
    assert replayable(resumed["training"]["state"]) == replayable(straight["training"]["state"])
    for key, value in straight["model"].items():
        assert torch.equal(resumed["model"][key], value), key
    for a, b in zip(straight["training"]["optimizer"]["state"].values(),
                    resumed["training"]["optimizer"]["state"].values(), strict=True):
        assert torch.equal(a["momentum_buffer"], b["momentum_buffer"])


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


# --------------------------------------------------------------------------- one step


class _DeviceReads(TorchDispatchMode):
    """Follows which tensors hold values computed on the device (from the model's parameters
    and buffers, the optimizer's state or the features) and records every op that would copy
    one of them to the host. The CPU cannot show GPU synchronizations; their causes it can."""

    HOST_READS = {"aten::nonzero", "aten::masked_select", "aten::_local_scalar_dense", "aten::is_nonzero",
                  "aten::item", "aten::equal", "aten::allclose"}

    def __init__(self, sources):
        super().__init__()
        self.held = list(sources)  # kept alive, so that their ids stay theirs
        self.on_device = {id(t) for t in self.held}
        self.reads, self.n_ops = [], 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs = [t for t in torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        from_device = any(id(t) in self.on_device for t in inputs)
        name = func._schema.name
        boolean_index = name.startswith("aten::index") and any(
            t.dtype == torch.bool for t in torch.utils._pytree.tree_leaves(args[1:]) if isinstance(t, torch.Tensor))
        if from_device and (name in self.HOST_READS or "unique" in name or boolean_index):
            self.reads.append(name)
        self.n_ops += 1
        out = func(*args, **kwargs)
        if from_device:
            for t in torch.utils._pytree.tree_leaves(out):
                if isinstance(t, torch.Tensor):
                    self.held.append(t)
                    self.on_device.add(id(t))
        return out


class _NanGradient(torch.autograd.Function):
    """The identity whose gradient is NaN: a step with a non-finite gradient."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * math.nan


def test_a_step_reads_nothing_back_and_skips_a_non_finite_gradient_on_the_device(corpus, monkeypatch):
    torch.manual_seed(0)
    dataset = SpeechDataset(corpus["train"], Alphabet())
    examples = [dataset[i] for i in range(4)]
    examples[3].labels = torch.ones(400, dtype=torch.long)  # cannot fit its frames: dropped on the host
    batch = collate(examples)
    config = TrainConfig("t.json", "d.json", "out", optimizer="sgd", lr=1e-3, model=ModelConfig(**TINY_MODEL))
    model = DeepSpeech2(config.model).train()
    optimizer = build_optimizer(model, config)
    tally = Tally(torch.device("cpu"), SINGLE)
    sources = [*model.parameters(), *model.buffers(), batch.features]
    sources += [t for state in optimizer.state.values() for t in state.values()]
    with _DeviceReads(sources) as reads:
        grad_norm = train_step(model, model, optimizer, batch, torch.device("cpu"), config, "torch", tally=tally)
    assert reads.reads == [], f"ops that would wait for the GPU: {sorted(set(reads.reads))}"
    assert reads.n_ops > 200  # it saw the forward, the backward and the update
    assert math.isfinite(float(grad_norm))

    before = {name: value.clone() for name, value in model.state_dict().items() if "running" not in name}
    momentum = [state["momentum_buffer"].clone() for state in optimizer.state.values()]
    real = ctc.ctc_loss
    monkeypatch.setattr(ctc, "ctc_loss", lambda *args, **kwargs: _NanGradient.apply(real(*args, **kwargs)))
    grad_norm = train_step(model, model, optimizer, batch, torch.device("cpu"), config, "torch", tally=tally)
    assert math.isnan(float(grad_norm))
    for name, value in before.items():  # the optimizer skipped the update: nothing moved
        assert torch.equal(model.state_dict()[name], value), name
    assert all(torch.equal(state["momentum_buffer"], m) for state, m in zip(optimizer.state.values(), momentum))
    counts = tally.read()
    assert (counts["skipped_steps"], counts["unaligned"], counts["n_loss"], counts["nonfinite"]) == (1, 2, 6, 0)
    assert counts["audio_frames"] == int(batch.feature_lengths.sum())  # the applied step's audio only


def test_a_skipped_first_step_leaves_sgd_momentum_at_zero():
    """Fused SGD allocates its momentum uninitialized on its first step; ours starts at zero,
    so a skipped first step cannot leave garbage in it."""
    config = TrainConfig("t.json", "d.json", "out", optimizer="sgd", lr=0.1, model=ModelConfig(**TINY_MODEL))
    model = DeepSpeech2(config.model)
    optimizer = build_optimizer(model, config)
    for parameter in model.parameters():
        parameter.grad = torch.full_like(parameter, 7.0)
    optimizer.found_inf = torch.tensor(1.0)
    optimizer.step()
    assert all(torch.equal(state["momentum_buffer"], torch.zeros_like(state["momentum_buffer"]))
               for state in optimizer.state.values())
    optimizer.found_inf = torch.tensor(0.0)
    parameter = next(model.parameters())
    start = parameter.detach().clone()
    optimizer.step()  # the first applied step: buffer = gradient; Nesterov: p -= lr (g + momentum g)
    torch.testing.assert_close(parameter.detach(), start - 0.1 * 7.0 * (1 + config.momentum))


@pytest.mark.requires_cuda
def test_a_cuda_step_in_bf16_never_waits_for_the_device():
    from ds2.data import Batch

    torch.manual_seed(0)
    device = torch.device("cuda")
    try:
        backend = ctc.resolve_backend("cuda", device)
    except ValueError as err:  # the torch fallback reads lengths back: not what is measured here
        pytest.skip(f"our CUDA CTC is not available: {err}")
    lengths = torch.tensor([300, 280, 260, 120])
    label_lengths = torch.tensor([20, 18, 15, 200])  # the last cannot fit: dropped on the host
    labels = torch.randint(1, 29, (4, 200)) * (torch.arange(200) < label_lengths[:, None])
    features = torch.randn(4, 161, 300) * (torch.arange(300) < lengths[:, None, None])
    batch = Batch(features, lengths, labels, label_lengths, [0, 1, 2, 3], []).pin_memory()
    config = TrainConfig("t.json", "d.json", "out", optimizer="sgd", lr=1e-3, model=ModelConfig(**TINY_MODEL))
    model = DeepSpeech2(config.model).to(device).train()
    optimizer = build_optimizer(model, config)
    tally = Tally(device, SINGLE)
    train_step(model, model, optimizer, batch, device, config, backend, precision=torch.bfloat16)  # warm-up
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(2):
            grad_norm = train_step(model, model, optimizer, batch, device, config, backend,
                                   precision=torch.bfloat16, tally=tally)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    counts = tally.read()
    assert (counts["n_loss"], counts["unaligned"], counts["skipped_steps"]) == (6, 2, 0)
    assert math.isfinite(float(grad_norm)) and all(p.dtype == torch.float32 for p in model.parameters())


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_an_unfused_optimizer_state_of_an_earlier_ds2_resumes_in_the_fused_one(name):
    config = TrainConfig("t.json", "d.json", "out", optimizer=name, lr=0.1, model=ModelConfig(**TINY_MODEL))
    torch.manual_seed(1)
    model = DeepSpeech2(config.model)
    earlier = (torch.optim.Adam(model.parameters(), lr=0.1) if name == "adam" else
               torch.optim.SGD(model.parameters(), lr=0.1, momentum=config.momentum, nesterov=True))
    reference = copy.deepcopy(model)
    for step in range(2):  # the earlier optimizer's first step, then the step to compare
        for parameter, same in zip(model.parameters(), reference.parameters()):
            parameter.grad = torch.full_like(parameter, 0.5 + step)
            same.grad = parameter.grad.clone()
        if step == 0:
            earlier.step()
            reference.load_state_dict(model.state_dict())
            ours = build_optimizer(reference, config)
            load_optimizer_state(ours, copy.deepcopy(earlier.state_dict()))
            assert all(group["fused"] for group in ours.param_groups)
    earlier.step()
    ours.found_inf = torch.tensor(0.0)
    ours.step()
    for parameter, same in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(same, parameter)


def test_bf16_autocast_trains_on_the_cpu_close_to_fp32(corpus, tmp_path):
    runs = {precision: tmp_path / precision for precision in ("fp32", "bf16")}
    for precision, out in runs.items():
        train(_config(corpus, out, epochs=1, precision=precision, log_every=1))
    fp32, bf16 = (list(csv.DictReader(open(out / "log.csv"))) for out in runs.values())
    assert [row["step"] for row in fp32] == [row["step"] for row in bf16] == ["1", "2"]
    for a, b in zip(fp32, bf16):
        assert float(b["loss"]) == pytest.approx(float(a["loss"]), rel=0.01)
    run_info = json.loads((runs["bf16"] / "run.json").read_text())
    assert run_info["precision"] == "bf16"
    weights = load_checkpoint(runs["bf16"] / "last.pt")["model"]
    assert all(value.dtype == torch.float32 for value in weights.values())  # autocast changes no parameter


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


def test_the_callers_thread_count_and_backend_settings_are_restored(corpus, tmp_path):
    before = torch.get_num_threads()
    train(_config(corpus, tmp_path / "run", epochs=1, threads=1 if before != 1 else 2, deterministic=True))
    assert torch.get_num_threads() == before
    assert not torch.are_deterministic_algorithms_enabled()


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


# --------------------------------------------------------------------------- memory: budget and dry run


def _saved_bytes_per_step(config: ModelConfig) -> float:
    """What autograd keeps for the backward pass per output step and utterance, measured: the
    bytes of the distinct storages saved by a training forward of 2 utterances, 300 frames against 150."""
    model = DeepSpeech2(config).train()

    def saved(n_frames):
        storages = {}

        def pack(tensor):
            storage = tensor.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            logits, _ = model(torch.randn(2, config.n_freq, n_frames), torch.full((2,), n_frames))
        return sum(storages.values()), logits.shape[1]

    (small, small_steps), (large, large_steps) = saved(150), saved(300)
    return (large - small) / (2 * (large_steps - small_steps))


@pytest.mark.parametrize("model", [
    TINY_MODEL,
    dict(conv_layers=2, conv_channels=(32, 16), conv_kernels=((41, 11), (21, 11)), conv_strides=((2, 3), (2, 1)),
         rnn_layers=2, rnn_hidden=256, fc_hidden=256),  # the tiny recipe's
    dict(),  # the default
    dict(rnn_type="relu", bidirectional=False, lookahead=4, rnn_layers=2, rnn_hidden=64),
    dict(rnn_type="rnn", rnn_layers=2, rnn_hidden=64),  # the TorchScript loop's layers
    dict(rnn_type="lstm", rnn_norm="recurrent", rnn_layers=2, rnn_hidden=64),
    dict(rnn_norm="layer", rnn_layers=2, rnn_hidden=64),
])
def test_the_activation_estimate_is_close_to_what_autograd_keeps(model):
    config = ModelConfig(**model)
    assert 0.7 < _saved_bytes_per_step(config) / activation_bytes_per_step(config) < 1.3


def test_the_dry_run_leaves_the_model_as_it_was():
    torch.manual_seed(0)
    model = DeepSpeech2(ModelConfig(**TINY_MODEL))
    before = {key: value.clone() for key, value in model.state_dict().items()}
    result = dry_run(model, [300, 250, 120], [40, 30, 5], torch.device("cpu"), "auto")
    assert result.seconds > 0 and result.peak_bytes > 0
    assert all(torch.equal(model.state_dict()[key], value) for key, value in before.items())
    assert all(parameter.grad is None for parameter in model.parameters())
    model(torch.randn(2, 161, 100), torch.tensor([100, 80]))  # a training forward does move them
    assert not torch.equal(model.state_dict()["convs.0.norm.running_mean"], before["convs.0.norm.running_mean"])


def test_the_dry_run_tries_the_costliest_minibatch_before_the_first_step(corpus, tmp_path, monkeypatch, caplog):
    tried = []
    monkeypatch.setattr("ds2.train.dry_run", lambda model, frames, labels, *args: tried.append((frames, labels))
                        or DryRun(0.5, 2 * 10**9))
    config = _config(corpus, tmp_path / "run", batch_size=3, batch_seconds=10.0, max_steps=1,
                     augment=AugmentOptions(speed_prob=0.5))  # speeds 0.9 and 1.1: up to 1 / 0.9 as long
    with caplog.at_level(logging.INFO, logger="ds2.train"):
        train(config)
    dataset = SpeechDataset(corpus["train"], Alphabet())
    bucketing = make_bucketing(config, dataset, config.model)
    costliest = max(bucketing.batches(0), key=bucketing.cost_of)
    assert len(bucketing.batches(0)) > 3  # the budget made minibatches smaller than --batch-size
    padded = [audio.duration_to_frames(max(dataset.durations[i] for i in costliest) / 0.9)] * len(costliest)
    assert tried == [(padded, [max(dataset.label_lengths[i] for i in costliest)] * len(costliest))]
    assert "dry run of the costliest minibatch" in caplog.text and "2.00 GB" in caplog.text
    train(_config(corpus, tmp_path / "skipped", max_steps=1, dry_run=False))
    assert len(tried) == 1


def test_a_budget_too_large_for_the_device_fails_in_the_dry_run(corpus, tmp_path, monkeypatch):
    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr("ds2.train.compute_losses", out_of_memory)
    run = tmp_path / "run"
    with pytest.raises(TrainingError, match=r"dry run of the costliest minibatch \(4 utterances, the longest .* s, at "
                       r"most \d+ labels: \d+ s of a budget of 60 s\) ran out of memory on cpu: CUDA out of memory\. "
                       r"Tried to allocate 20\.00 GiB; lower --batch-seconds below \d+ \(or --batch-size below 4\)"):
        train(_config(corpus, run))
    assert not (run / "last.pt").exists() and not (run / "log.csv").exists()  # before the first step


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
    assert replayable(ours["training"]["state"]) == replayable(theirs["training"]["state"])
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


def test_a_budget_of_minutes_stops_evaluates_and_resumes_with_the_rest(corpus, tmp_path, monkeypatch):
    import ds2.train as ds2_train

    class Clock:  # every reading is a second later: the budget is reached after a known number of readings
        now = 0.0

        def perf_counter(self):
            Clock.now += 1.0
            return Clock.now

    monkeypatch.setattr(ds2_train, "time", Clock())
    out = tmp_path / "run"
    config = dict(epochs=50, log_every=1, max_minutes=0.2, eval_minutes=0.06)
    state = train(_config(corpus, out, **config))
    assert state.epoch < 50 and 12 <= state.train_seconds < 20  # 2 batches an epoch: a few epochs, not fifty
    with open(out / "dev.csv") as handle:
        rows = list(csv.DictReader(handle))
    minutes = [float(row["train_minutes"]) for row in rows]
    assert len(rows) >= 4 and minutes == sorted(minutes) and minutes[-1] >= 0.2  # the budget's end is evaluated
    assert min(float(row["dev_wer"]) for row in rows) == pytest.approx(state.best_wer, abs=0.01)
    assert load_checkpoint(out / "best.pt")["training"]["state"]["best_wer"] == state.best_wer
    saved = load_checkpoint(out / "last.pt")["training"]["state"]
    assert saved["train_seconds"] == state.train_seconds and saved["step"] == state.step

    resumed = train(_config(corpus, out, **{**config, "max_minutes": 0.4}, resume=True))
    assert resumed.step > state.step and 24 <= resumed.train_seconds < 32
    with open(out / "dev.csv") as handle:
        more = list(csv.DictReader(handle))
    assert more[: len(rows)] == rows and len(more) > len(rows)


def test_bigram_outputs_come_from_the_training_text_and_are_saved_with_the_model(corpus, tmp_path):
    out = tmp_path / "bigrams"
    state = train(_config(corpus, out, epochs=1, bigrams=20))
    saved = load_checkpoint(out / "last.pt")
    symbols = saved["model_config"]["alphabet"]
    bigrams = [s for s in symbols if len(s) > 1]
    assert len(bigrams) == 20 and saved["model_config"]["n_outputs"] == len(symbols) + 1
    texts = [Alphabet.normalize(r["text"]) for r in read_manifest(corpus["train"])]
    assert Alphabet(symbols) == Alphabet.with_bigrams(texts, 20, base=Alphabet())
    assert state.step > 0 and state.skipped_unaligned == 0


@pytest.mark.parametrize("variant", [dict(rnn_type="lstm", rnn_norm="recurrent"), dict(rnn_type="rnn", rnn_norm="layer")],
                         ids=["lstm-recurrent-bn", "clipped-rnn-layernorm"])
def test_a_loop_variant_resumes_exactly(corpus, tmp_path, variant):
    def model():  # a fresh config per run: training fills in the alphabet
        return ModelConfig(**{**TINY_MODEL, **variant})

    train(_config(corpus, tmp_path / "straight", epochs=2, model=model()))
    straight = load_checkpoint(tmp_path / "straight" / "last.pt")
    train(_config(corpus, tmp_path / "cut", epochs=2, max_steps=3, model=model()))
    train(_config(corpus, tmp_path / "cut", epochs=2, resume=True, model=model()))
    resumed = load_checkpoint(tmp_path / "cut" / "last.pt")
    assert replayable(resumed["training"]["state"]) == replayable(straight["training"]["state"])
    assert resumed["model_config"]["rnn_norm"] == variant["rnn_norm"]
    for key, value in straight["model"].items():
        assert torch.equal(resumed["model"][key], value), key
