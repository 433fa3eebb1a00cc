"""Data-parallel training on the CPU: `ds2 train` under torchrun (gloo) against one process.

What is guaranteed, and checked here:

- With --sync-batch-norm, N ranks compute each step's sums as one process does with the same
  minibatch, in another order (gradient all-reduce, BatchNorm statistics summed over ranks):
  from the same parameters, the loss and the gradient agree to float32 rounding (checked on
  the first step: loss to 1e-6, gradient norm to 2e-5). The training state (position, step,
  every count, the dev scores) is equal.
- Over several steps the rounding differences (about 1e-6 of a tensor's largest value) stay
  that small, except when one moves an activation across a kink of the clipped ReLU: that
  step's gradient then changes by the activation's share (measured once, in a run resumed
  across rank counts: 7.5e-4 of a tensor's largest value after 4 steps of minibatches of 4; the same resume from
  a one-process checkpoint with 1e-6 random noise added ended 3.4e-6 away). So parameters and
  momentum are checked to 1e-2 of each tensor's largest value, which still tells real errors
  apart: per-rank instead of synchronized BatchNorm ends 0.14 away, a learning rate 10 %
  off 0.17, a batch of 2 instead of 4 0.63.
- A run stopped mid-epoch resumes with another number of ranks and ends where the
  uninterrupted run ends, to the same tolerance: the checkpoint holds the position among the
  global minibatches, which do not depend on the number of ranks.
- With per-rank BatchNorm (the default, as in DS2) the result depends on the number of ranks
  (each rank normalizes by its own shard); a resume with the same number of ranks ends
  bit-identical to the uninterrupted run.
"""

import csv
import json
import os
import subprocess
import sys

import pytest
import torch

from ds2.augment import AugmentOptions
from ds2.checkpoint import load_checkpoint
from ds2.distributed import SINGLE, Ranks, device_for, ranks_from_env
from ds2.model import ModelConfig
from ds2.synth import SynthConfig, synthesize_corpus
from ds2.train import TrainConfig, replayable, train

# The tiny model of tests/test_train.py, as options and as a config.
TINY_OPTIONS = dict(conv_layers=1, conv_channels="4", conv_kernels="41x11", conv_strides="4x2", rnn_layers=1,
                    rnn_hidden=16, fc_hidden=16)
TINY_MODEL = dict(conv_layers=1, conv_channels=(4,), conv_kernels=((41, 11),), conv_strides=((4, 2),), rnn_layers=1,
                  rnn_hidden=16, fc_hidden=16)
# 8 utterances in minibatches of 3, 3 and 2: 2 epochs are 6 steps, and 2 ranks get 2 and 1
# utterances of a minibatch of 3, so a mean of each rank's mean would differ from the mean. The
# second epoch's minibatches are cut anew (--bucket-jitter; with this corpus and seed they differ
# from the first's: tests/test_train.py), so the runs resumed inside it replay jittered ones. The
# CTC is the CPU default, numba, which accumulates in float64 (torch's float32 CTC makes the
# rounding differences of another summation order about 20 times larger).
RUN = dict(epochs=2, batch_size=3, bucket_jitter=0.5, optimizer="sgd", lr=1e-3, num_workers=0, checkpoint_every=1,
           log_every=1, threads=1, progress=False)
# Speed is drawn per global minibatch and gain per utterance: the same draws on any number of ranks.
AUGMENT = dict(speed_prob=0.7, gain_prob=0.5)


# Of each tensor's largest value, for results several steps on (see the module docstring).
SEVERAL_STEPS_TOLERANCE = 1e-2


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    return synthesize_corpus(out, SynthConfig(n_train=8, n_dev=2, n_test=2, seed=3), progress=False)


@pytest.fixture(scope="module")
def one_process(corpus, tmp_path_factory):
    """The reference: one process, the whole run."""
    out = tmp_path_factory.mktemp("one_process")
    train(_config(corpus, out))
    return out


def _config(corpus, out_dir, **overrides) -> TrainConfig:
    return TrainConfig(train_manifest=str(corpus["train"]), dev_manifest=str(corpus["dev"]), out_dir=str(out_dir),
                       model=ModelConfig(**TINY_MODEL), augment=AugmentOptions(**AUGMENT), **{**RUN, **overrides})


def _torchrun(n_ranks, corpus, out_dir, **overrides):
    """`ds2 train` as torchrun starts it on ``n_ranks`` CPU processes (gloo)."""
    options = {**RUN, **TINY_OPTIONS, **AUGMENT, **overrides}
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n_ranks}",
            "-m", "ds2.cli", "train", str(corpus["train"]), str(corpus["dev"]), "-o", str(out_dir)]
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        args += ([flag if value else f"--no-{flag[2:]}"] if isinstance(value, bool) else [flag, str(value)])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    result = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def _assert_same_end(ours, reference, exact=False):
    mine, theirs = load_checkpoint(ours / "last.pt"), load_checkpoint(reference / "last.pt")
    assert replayable(mine["training"]["state"]) == replayable(theirs["training"]["state"])
    pairs = [(key, mine["model"][key], value) for key, value in theirs["model"].items()]
    pairs += [(f"momentum {index}", a["momentum_buffer"], b["momentum_buffer"]) for index, (a, b) in enumerate(zip(
        mine["training"]["optimizer"]["state"].values(), theirs["training"]["optimizer"]["state"].values(), strict=True))]
    for name, value, expected in pairs:
        scale = 0.0 if exact else SEVERAL_STEPS_TOLERANCE * float(expected.abs().max())
        torch.testing.assert_close(value, expected, rtol=0, atol=scale, msg=lambda text, name=name: f"{name}: {text}")
    steps, reference_steps = _rows(ours / "log.csv"), _rows(reference / "log.csv")
    assert [row["step"] for row in steps] == [row["step"] for row in reference_steps] == list("123456")
    for row, reference_row in zip(steps, reference_steps):
        # the log rounds the loss to 4 decimals, the gradient norm to 3
        first = row["step"] == "1" and not exact  # the same parameters: rounding only
        for name, tight in (("loss", 1e-6), ("grad_norm", 2e-5)):
            expected = pytest.approx(float(reference_row[name]), rel=tight if first else SEVERAL_STEPS_TOLERANCE)
            assert float(row[name]) == (float(reference_row[name]) if exact else expected), (row["step"], name)
    assert [row["epoch"] for row in _rows(ours / "epochs.csv")] == ["1", "2"]


def _rows(path):
    with open(path, encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_two_ranks_with_gloo_equal_one_process_with_the_same_minibatch(corpus, one_process, tmp_path):
    run = tmp_path / "two_ranks"
    _torchrun(2, corpus, run, sync_batch_norm=True)
    _assert_same_end(run, one_process)
    # rank 0 alone wrote the run's files, and says how many ranks ran
    assert json.loads((run / "run.json").read_text())["world_size"] == 2
    assert load_checkpoint(run / "last.pt")["training"]["world_size"] == 2
    assert "ranks: 2" in (run / "train.log").read_text() and "[rank 1]" not in (run / "train.log").read_text()
    assert sorted(path.name for path in run.iterdir()) == sorted([path.name for path in one_process.iterdir()]
                                                                  + ["train.log"])  # no temporary files left


def test_a_run_stopped_mid_epoch_resumes_with_another_number_of_ranks(corpus, one_process, tmp_path):
    run = tmp_path / "run"
    state = train(_config(corpus, run, max_steps=1))  # 1 process: stops inside epoch 1
    assert (state.epoch, state.batches_done) == (0, 1)
    _torchrun(2, corpus, run, sync_batch_norm=True, resume=True, max_steps=4)  # 2 ranks: into epoch 2
    assert load_checkpoint(run / "last.pt")["training"]["state"]["batches_done"] == 1
    train(_config(corpus, run, resume=True))  # 1 process again, to the end
    _assert_same_end(run, one_process)


@pytest.mark.requires_cuda
def test_two_gpus_with_nccl_equal_one_gpu(corpus, tmp_path):
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs (NCCL refuses two ranks on one GPU)")
    one, two = tmp_path / "one", tmp_path / "two"
    train(_config(corpus, one, device="cuda", precision="fp32", deterministic=True))
    _torchrun(2, corpus, two, device="cuda", precision="fp32", deterministic=True, sync_batch_norm=True)
    _assert_same_end(two, one)


@pytest.mark.slow
def test_per_rank_batch_norm_resumes_on_the_same_ranks_bit_for_bit(corpus, tmp_path):
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    _torchrun(2, corpus, straight)
    _torchrun(2, corpus, stopped, max_steps=4)
    _torchrun(2, corpus, stopped, resume=True)
    _assert_same_end(stopped, straight, exact=True)


# --------------------------------------------------------------------------- the environment


def test_ranks_come_from_torchruns_environment():
    assert ranks_from_env({}) == SINGLE and SINGLE.is_main and not SINGLE.distributed
    ranks = ranks_from_env({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"})
    assert ranks == Ranks(rank=3, world_size=4, local_rank=1) and not ranks.is_main and ranks.distributed
    with pytest.raises(ValueError, match="RANK='x' is not an integer"):
        ranks_from_env({"WORLD_SIZE": "2", "RANK": "x", "LOCAL_RANK": "0"})
    with pytest.raises(ValueError, match="WORLD_SIZE=2, RANK=2"):
        ranks_from_env({"WORLD_SIZE": "2", "RANK": "2", "LOCAL_RANK": "0"})


def test_each_rank_takes_the_device_asked_for_or_its_local_gpu():
    ranks = Ranks(rank=1, world_size=2, local_rank=1)
    assert device_for("cpu", ranks) == torch.device("cpu")
    if not torch.cuda.is_available():
        assert device_for("auto", ranks) == torch.device("cpu")
        with pytest.raises(ValueError, match="no usable CUDA device"):
            device_for("cuda", ranks)
    elif torch.cuda.device_count() > 1:
        assert device_for("auto", ranks) == torch.device("cuda", 1)
        with pytest.raises(ValueError, match="each rank uses cuda:LOCAL_RANK"):
            device_for("cuda:0", ranks)
