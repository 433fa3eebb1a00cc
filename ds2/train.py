"""Training: SortaGrad minibatches, CTC, SGD with Nesterov momentum (or Adam), checkpoints;
one process or data-parallel under torchrun.

Usage (the tiny recipe does this)::

    ds2 train data/train.json data/dev.json -o exp/tiny --epochs 12 --batch-size 32 \\
        --optimizer adam --lr 1e-3 --rnn-hidden 256 --rnn-layers 3

The same command runs data-parallel on N GPUs (or N CPU processes) of one or more machines::

    torchrun --standalone --nproc-per-node 4 -m ds2.cli train data/train.json data/dev.json \\
        -o exp/big --batch-size 128 ...

Each rank works on its LOCAL_RANK GPU (NCCL) or the CPU (gloo), wrapped in
DistributedDataParallel. ``--batch-size`` (most utterances) and ``--batch-seconds`` (a memory
budget in seconds of padded audio, CTC's lattice included; by default --batch-size x 15 s) size
the global minibatch, all ranks together; SortaGrad's first epoch is sorted by length, and
every later epoch is cut anew from lengths with a little noise (``--bucket-jitter``;
:class:`ds2.data.Bucketing`). :class:`ds2.data.SortaGradSampler` deals each minibatch out to
the ranks; so the minibatches, the learning rate and the checkpoints mean the same whatever
the number of ranks, and a run can be resumed with another number of ranks. BatchNorm
statistics are each rank's own, as in DS2 (``--sync-batch-norm``: over the global minibatch).

Before the first step, forward, CTC and backward run once on zeros shaped like the costliest
minibatch (``--no-dry-run`` skips it): a budget too large for the device fails in seconds,
with the option to lower, instead of hours in, when SortaGrad reaches the longest utterances.

What lands in the output folder (written by rank 0 only):

- ``last.pt``: the newest state (model, optimizer, epoch, position in the epoch, RNG
  states); ``ds2 train ... --resume`` continues from it exactly.
- ``best.pt``: the model with the lowest dev WER so far (CER breaks ties).
- ``log.csv`` (one row per logged step), ``epochs.csv`` (one row per epoch),
  TensorBoard event files under ``tensorboard/`` and ``curves.png`` at the end.
- ``run.json``: what actually ran (CTC backend, device, ranks, precision, versions),
  rewritten on resume.

Utterances that cannot be used (unreadable audio, labels longer than the output frames)
and non-finite losses are skipped and counted in the log; they never enter the average.
A run that cannot use most of its data (more than ``max_unusable`` of an epoch, or audio
files missing up front) stops with an error instead of training on what is left.

On a GPU the step never waits for the device: losses, counts and the gradient norm stay on
it and are read back at logging and checkpoint points only; a step whose gradient is not
finite is skipped by the optimizer itself (its ``found_inf``), not by a Python ``if``.

Nothing imports this module but the command line: decoding, tuning and alignment use
ds2.checkpoint, ds2.data and ds2.decode.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import random
import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from ds2 import __version__, audio, ctc, distributed
from ds2.augment import AugmentOptions, Augmenter
from ds2.checkpoint import load_checkpoint, save_checkpoint
from ds2.config import DEVICE_HELP, DEVICE_PATTERN, check, option
from ds2.data import Batch, BatchCost, Bucketing, SortaGradSampler, SpeechDataset, make_batches, make_loader, read_manifest
from ds2.features import feature_statistics, featurizer
from ds2.decode import greedy_decode
from ds2.distributed import SINGLE, Ranks
from ds2.io import CsvLog, atomic_write, compact_heap, pyplot, read_csv, save_figure
from ds2.metrics import score_pairs
from ds2.model import DeepSpeech2, ModelConfig
from ds2.text import Alphabet

log = logging.getLogger("ds2.train")

# Rates for our loss: the mean CTC loss per utterance of the global minibatch (see
# train_step). On the tiny corpus, one epoch of SGD (Nesterov 0.99) at 3e-3 reached dev CER
# 22.6% against 28.0% at 3e-4 (DS2's published range assumes another loss scaling); Adam at
# 2e-3 reached 14.1% (recipes/tiny/RESULTS.md).
DEFAULT_LR = {"sgd": 3e-3, "adam": 1e-3}
# The default --batch-seconds is --batch-size utterances of this length: only minibatches of
# longer utterances get fewer (the tiny recipe's, of at most 10 s, are not cut).
BUDGET_SECONDS_PER_UTTERANCE = 15.0
# What autograd keeps for the backward pass, per value of the input and of each layer's output
# (a conv's output, its BatchNorm and clipped ReLU; a GRU's gates and states): 2.3 to 3.0
# values, measured with saved-tensor hooks on the CPU in fp32 for the tests' model, the tiny
# recipe's, the default and DS2's 2 conv + 3 x 512 GRU (tests/test_train.py checks it).
SAVED_VALUES_PER_OUTPUT = 3
# Bytes per CTC lattice cell (frame x label state) in training: torch's CTC keeps log-alpha and
# computes log-beta in float32 (8); our CUDA kernel keeps alpha in float32 (4).
CTC_BYTES_PER_CELL = 8
PRECISIONS = ("auto", "bf16", "tf32", "fp32")
IDLE_FRAMES = 8  # input frames of the empty utterance a rank forwards when it has nothing to train on


@dataclass
class TrainConfig:
    """A training run. The fields with help text are `ds2 train`'s options."""

    train_manifest: str
    dev_manifest: str
    out_dir: str
    epochs: int = option(20, "Passes over the training set.", min=1)
    batch_size: int = option(32, "Most utterances per minibatch, all ranks together (under torchrun each rank "
                                 "gets its share of every minibatch).", min=1)
    batch_seconds: float | None = option(
        None, "Memory budget of a minibatch, all ranks together, in seconds of padded audio: the number of utterances "
        "times the longest one's duration, plus CTC's lattice (utterances x output steps x (2 x longest transcript + "
        "1)) counted as the audio whose activations take as much memory, estimated from the model's layer sizes. "
        "Minibatches take utterances of similar length up to --batch-size or this budget. Default: --batch-size x "
        f"{BUDGET_SECONDS_PER_UTTERANCE:g} s, which caps only minibatches of longer utterances; 0: no budget.", min=0)
    bucket_jitter: float = option(0.05, "After SortaGrad's first epoch, cut the minibatches anew every epoch from the "
                                  "utterances sorted by duration times a random factor in [1 - J, 1 + J] (seeded by "
                                  "--seed and the epoch), so utterances meet other neighbours of similar length; "
                                  "padding grows with J (tiny recipe: 0.3 % of the frames at 0, 4.4 % at 0.05, 8.5 % "
                                  "at 0.1). 0: the same minibatches every epoch, in a new order.", min=0, max=0.5)
    dry_run: bool = option(True, "Before training, run forward, CTC and backward once on zeros shaped like the "
                           "costliest minibatch (the model is left as it was), so a budget too large for the device "
                           "fails in seconds, with the option to lower; logs its time and peak memory.")
    max_duration: float | None = option(None, "Skip utterances longer than this (s).", above=0)
    optimizer: str = option("sgd", "sgd (Nesterov momentum, DS2) or adam.", choices=tuple(DEFAULT_LR))
    lr: float | None = option(None, "Learning rate of the first epoch, for the mean loss per utterance of a "
                              "minibatch (default: 3e-3 sgd, 1e-3 adam).", above=0)
    momentum: float = option(0.99, "Nesterov momentum (sgd).", min=0, max=1)
    anneal: float = option(1.2, "Divide the learning rate by this after each epoch.", above=0)
    weight_decay: float = option(0.0, "L2 weight decay.", min=0)
    grad_clip: float = option(400.0, "Clip the global gradient norm (of the mean loss per utterance) to this.",
                              above=0)
    sortagrad: bool = option(True, "First epoch in increasing length order (SortaGrad).")
    ctc: str = option("auto", "CTC loss: auto (our CUDA kernel on a GPU, numba on the CPU), cuda, numba, "
                              "or torch.", choices=ctc.BACKENDS)
    device: str = option("auto", "auto, cpu, cuda, cuda:1, ... (under torchrun: auto, cuda or cpu; each rank "
                                 "takes GPU LOCAL_RANK).", pattern=DEVICE_PATTERN, pattern_help=DEVICE_HELP)
    precision: str = option("auto", "Forward pass arithmetic: auto (bf16 on a GPU, fp32 on the CPU); bf16 (autocast, "
                            "on the CPU too, where it is slow); tf32 (fp32 values, TF32 matrix products and "
                            "convolutions on a GPU); fp32 (TF32 off too). bf16 uses TF32 for what autocast keeps in "
                            "fp32. The loss, gradients, optimizer and BatchNorm statistics are fp32 in every mode.",
                            choices=PRECISIONS)
    deterministic: bool = option(False, "Bit-identical reruns on a GPU: only deterministic cuDNN/cuBLAS algorithms "
                                 "(torch.use_deterministic_algorithms, a fixed cuBLAS workspace). Costs speed: cuDNN "
                                 "may not use its fastest convolution and RNN algorithms (not measured yet); an "
                                 "operation without a deterministic GPU version stops the run with an error naming "
                                 "it. The CPU path is deterministic without it.")
    sync_batch_norm: bool = option(False, "Under torchrun: BatchNorm statistics over the whole minibatch of all ranks "
                                   "(two small all-reduces per BatchNorm layer and step), so training computes what "
                                   "one process computes. Default: each rank's own utterances, as in DS2 (results "
                                   "then depend on the number of ranks); the running averages are averaged over the "
                                   "ranks whenever the model is evaluated or saved.")
    num_workers: int = option(1, "Data loading processes per rank (0: in this process), started once for the run.",
                              min=0)
    threads: int = option(0, "Torch CPU threads per rank (0: default).", min=0)
    seed: int = option(0, "Random seed.")
    checkpoint_every: int = option(200, "Save last.pt every N steps (and every epoch; 0: only every epoch).", min=0)
    log_every: int = option(10, "Write a log.csv row every N steps (the only points, with checkpoints, where the "
                            "loop waits for the GPU).", min=1)
    max_steps: int = option(0, "Stop after N steps in total (0: no limit).", min=0)
    max_minutes: float = option(0.0, "Stop after N minutes of training (the steps' wall time: evaluation and "
                                "checkpoints not counted; all ranks together), evaluate dev and save last.pt; "
                                "--resume continues the budget. A budget of time, not of steps: where it stops "
                                "depends on the machine (0: no limit).", min=0)
    eval_minutes: float = option(0.0, "Also evaluate dev every N minutes of training (dev.csv gets a row per "
                                 "evaluation, with the training minutes; best.pt follows the best); 0: at the end "
                                 "of each epoch only.", min=0)
    max_unusable: float = option(0.5, "Stop with an error when more than this share of the training "
                                 "utterances cannot be used (missing or unreadable audio, labels "
                                 "longer than the output, non-finite loss).", min=0, max=1)
    resume: bool = option(False, "Continue OUT_DIR/last.pt exactly where it stopped (with any number of ranks).")
    bigrams: int = option(0, "Bigram outputs (DS2's, for English at time stride 3, e.g. --conv-strides 2x3,2x1): "
                          "the N most frequent within-word character bigrams of the training transcripts join the "
                          "alphabet, and each word is labelled as non-overlapping bigrams from the left (decoding "
                          "joins them back into characters). 0: characters only.", min=0)
    init: str | None = option(None, "Start from the weights of this checkpoint (fine-tuning); its model "
                              "configuration and alphabet replace the model options.")
    progress: bool = option(True, "Show a progress bar.")
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentOptions = field(default_factory=AugmentOptions)

    def __post_init__(self):
        check(self)
        if self.lr is None:
            self.lr = DEFAULT_LR[self.optimizer]


@dataclass
class TrainState:
    """Where a run stands; saved in every checkpoint. Every count is of the whole run, all
    ranks together, so a run resumes from it with any number of ranks."""

    epoch: int = 0
    batches_done: int = 0  # position in the current epoch's order of global minibatches
    step: int = 0  # steps in total: global minibatches that went through the optimizer, skipped_steps included
    best_wer: float = math.inf
    best_cer: float = math.inf
    skipped_unaligned: int = 0  # labels longer than the output frames
    skipped_load: int = 0  # audio that could not be read
    skipped_nonfinite: int = 0  # utterances with inf/nan loss
    skipped_steps: int = 0  # steps whose update was skipped: non-finite gradient, or no usable utterance
    skipped_augment: int = 0  # noise clips / impulse responses that could not be used (the rest was)
    audio_seconds: float = 0.0  # audio trained on (steps that updated the model)
    epoch_seen: int = 0  # training utterances the current epoch has come to so far
    epoch_unusable: int = 0  # ... of which could not be used (unreadable, unaligned, non-finite)
    audio_frames: int = 0  # audio_seconds in spectrogram frames (an exact count)
    batches: str = ""  # digest of the current epoch's minibatches, in order (a resume must replay the same)
    train_seconds: float = 0.0  # wall time of the training steps (mean over the ranks)
    eval_seconds: float = 0.0  # train_seconds at the last dev evaluation


CLOCK_FIELDS = ("train_seconds", "eval_seconds")  # wall times: they differ between two identical runs


def replayable(state: dict) -> dict:
    """A saved TrainState without its wall times: what an exact resume reproduces."""
    return {key: value for key, value in state.items() if key not in CLOCK_FIELDS}


# --------------------------------------------------------------------------- helpers


def build_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD (Nesterov) or Adam, fused: the update is one kernel, and the optimizer itself skips
    a step whose ``found_inf`` is set, without the host reading the flag (train_step)."""
    if config.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=True)
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=config.lr,
        momentum=config.momentum,
        nesterov=config.momentum > 0,
        weight_decay=config.weight_decay,
        fused=True,
    )
    if config.momentum > 0:
        # Fused SGD allocates its momentum buffers uninitialized on the first step and fills
        # them only if that step is applied: zeros make a skipped first step harmless, and an
        # applied one computes exactly what the first step does (0 * momentum + gradient).
        for group in optimizer.param_groups:
            for parameter in group["params"]:
                optimizer.state[parameter]["momentum_buffer"] = torch.zeros_like(parameter)
    return optimizer


def load_optimizer_state(optimizer: torch.optim.Optimizer, saved: dict) -> None:
    """Restore a saved optimizer state (of any earlier ds2: unfused ones too) into our fused optimizer."""
    saved = {**saved, "param_groups": [{**group, "fused": True, "foreach": None} for group in saved["param_groups"]]}
    optimizer.load_state_dict(saved)


def epoch_lr(config: TrainConfig, epoch: int) -> float:
    """DS2's schedule: the learning rate annealed by a constant factor per epoch."""
    return config.lr / config.anneal**epoch


def batches_digest(batches: list[list[int]]) -> str:
    """A short fingerprint of the minibatches (which utterances, in which groups, in which order)."""
    return hashlib.sha1(json.dumps(batches).encode()).hexdigest()[:16]


def activation_bytes_per_step(config: ModelConfig) -> float:
    """Estimated training memory of one utterance's activations per output step, in fp32:
    SAVED_VALUES_PER_OUTPUT x 4 bytes x the widths of the input and of every layer's output,
    each at its own time resolution (a convolution before the last time stride has several
    steps per output step)."""
    frames = float(config.time_stride)  # input frames per output step
    n_freq = config.n_freq
    values = n_freq * frames
    for layer in range(config.conv_layers):
        kernel, stride = config.conv_kernels[layer], config.conv_strides[layer]
        n_freq = (n_freq + 2 * (kernel[0] // 2) - kernel[0]) // stride[0] + 1
        frames /= stride[1]
        values += config.conv_channels[layer] * n_freq * frames
    from ds2.recurrent import GATES

    gates = GATES.get(config.rnn_type, 1)
    directions = 2 if config.bidirectional else 1
    # input products and outputs; the TorchScript loop's autograd keeps every gate's intermediates
    per_unit = gates + 1 if config.fused else 3 * gates + 4
    values += config.rnn_layers * config.rnn_hidden * directions * per_unit
    values += config.rnn_hidden if config.lookahead else 0
    values += config.fc_hidden + config.n_outputs
    return SAVED_VALUES_PER_OUTPUT * 4 * values


def batch_cost(config: ModelConfig) -> BatchCost:
    """The cost of a minibatch for ``config``'s model: padded audio seconds plus CTC's lattice,
    each cell counted as the audio whose activations take as much memory (CTC_BYTES_PER_CELL)."""
    bytes_per_second = activation_bytes_per_step(config) * audio.FRAMES_PER_SECOND / config.time_stride
    return BatchCost(CTC_BYTES_PER_CELL / bytes_per_second, config.time_stride)


def make_bucketing(config: TrainConfig, dataset: SpeechDataset, model_config: ModelConfig) -> Bucketing:
    """The training set's minibatches, epoch by epoch, as configured (the budget's default:
    --batch-size x BUDGET_SECONDS_PER_UTTERANCE; 0: none)."""
    budget = config.batch_seconds
    if budget is None:
        budget = config.batch_size * BUDGET_SECONDS_PER_UTTERANCE
    return Bucketing(dataset.durations, config.batch_size, budget or math.inf, dataset.label_lengths,
                     batch_cost(model_config), config.seed, config.sortagrad, config.bucket_jitter)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a --precision on ``device`` (None: no autocast)."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def _autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


@contextlib.contextmanager
def backend_settings(device: torch.device, precision: str, deterministic: bool):
    """TF32 for fp32 matrix products and convolutions on a GPU (off for --precision fp32);
    --deterministic's algorithm restrictions. Process-wide settings, put back as they were
    afterwards."""
    saved = (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32, torch.backends.cudnn.deterministic,
             torch.backends.cudnn.benchmark, torch.are_deterministic_algorithms_enabled())
    try:
        if device.type == "cuda":
            tf32 = precision != "fp32"
            torch.set_float32_matmul_precision("high" if tf32 else "highest")
            torch.backends.cudnn.allow_tf32 = tf32
        if deterministic:
            # cuBLAS is deterministic only with a fixed workspace, chosen before its first use.
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.deterministic = True
            torch.backends.cudnn.benchmark = False
        yield
    finally:
        torch.set_float32_matmul_precision(saved[0])
        torch.backends.cudnn.allow_tf32, torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[1:4]
        torch.use_deterministic_algorithms(saved[4])


def _python_rng_state():
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _set_python_rng_state(saved) -> None:
    version, internal, gauss = saved
    random.setstate((version, tuple(internal), gauss))


# --------------------------------------------------------------------------- steps


@dataclass
class StepLosses:
    """The CTC losses of one rank's share of a minibatch."""

    loss_sum: torch.Tensor  # shape = (), float32: sum of the finite losses (differentiable); 0 if none
    n_finite: torch.Tensor  # shape = (), int64: how many utterances that sum holds (on the device)
    n_forwarded: int  # utterances forwarded (loaded and alignable)
    n_unaligned: int  # dropped before the forward: labels longer than the output frames


def compute_losses(model: DeepSpeech2, batch: Batch, device: torch.device, backend: str,
                   forward: torch.nn.Module | None = None) -> StepLosses:
    """Forward a batch through ``forward`` (``model``, or its DistributedDataParallel wrapper)
    and sum the finite CTC losses.

    Utterances whose labels cannot fit their output frames are dropped before the forward
    (decided on the host from lengths: no device read). A batch with nothing left forwards one
    empty utterance (length 0) instead: it reaches every parameter with zero gradient and adds
    nothing to BatchNorm statistics, so this rank takes part in DDP's gradient all-reduce (and
    in synchronized BatchNorm's) like the others and no rank waits forever. Non-finite losses
    are masked with torch.where (boolean indexing would wait for the device).
    """
    forward = forward or model
    output_lengths = model.output_lengths(batch.feature_lengths)
    fits = ctc.feasible(batch.labels, batch.label_lengths, output_lengths)
    n_unaligned = len(batch) - int(fits.sum())  # CPU tensors: no device involved
    if n_unaligned:
        keep = fits.nonzero().squeeze(1)
        batch = Batch(
            batch.features[keep],
            batch.feature_lengths[keep],
            batch.labels[keep],
            batch.label_lengths[keep],
            [batch.indices[i] for i in keep.tolist()],
            batch.failures,
        )
    if not len(batch):
        features = torch.zeros(1, model.config.n_freq, IDLE_FRAMES, device=device)
        logits, _ = forward(features, torch.zeros(1, dtype=torch.long, device=device))
        zero = torch.zeros((), dtype=torch.long, device=device)
        return StepLosses(logits.float().sum() * 0.0, zero, 0, n_unaligned)
    features = batch.features.to(device, non_blocking=True)
    logits, output_lengths = forward(features, batch.feature_lengths.to(device, non_blocking=True))
    losses = ctc.ctc_loss(
        logits,
        batch.labels.to(device, non_blocking=True),
        output_lengths,
        batch.label_lengths.to(device, non_blocking=True),
        reduction="none",
        backend=backend,
    )
    finite = torch.isfinite(losses)
    return StepLosses(torch.where(finite, losses, 0.0).sum(), finite.sum(), len(batch), n_unaligned)


class Tally:
    """What one rank counts between two readings, kept where it arises: utterance counts on the
    host (they are known from the batch), losses and skipped steps on the device (a per-step
    read would make the CPU wait for the GPU). :meth:`read` sums both over the ranks in one
    all-reduce: the only point where the training loop waits for the device."""

    HOST = ("seen", "load_failures", "unaligned", "augment_notes", "train_seconds")
    DEVICE = ("loss_sum", "n_loss", "nonfinite", "skipped_steps", "audio_frames")

    def __init__(self, device: torch.device, ranks: Ranks):
        self.device, self.ranks = device, ranks
        self.host = dict.fromkeys(self.HOST, 0)
        self.on_device = torch.zeros(len(self.DEVICE), dtype=torch.float64, device=device)

    def add_step(self, losses: StepLosses, skipped: torch.Tensor, audio_frames: int) -> None:
        """Count a step: its losses, whether the optimizer skipped it (device bool) and the
        audio frames this rank trained on (counted when the step was applied)."""
        self.host["unaligned"] += losses.n_unaligned
        applied = (~skipped).to(torch.float64)
        steps_skipped = skipped.to(torch.float64) if self.ranks.is_main else torch.zeros_like(applied)  # once per step
        n_finite = losses.n_finite.to(torch.float64)
        self.on_device += torch.stack([losses.loss_sum.detach().to(torch.float64), n_finite,
                                       losses.n_forwarded - n_finite, steps_skipped, applied * audio_frames])

    def read(self) -> dict[str, float]:
        """The counts of all ranks since the last reading (integers are exact: float64), and
        start again from zero."""
        host = torch.tensor([self.host[name] for name in self.HOST], dtype=torch.float64, device=self.device)
        values = distributed.all_sum(torch.cat([host, self.on_device]), self.ranks).tolist()
        self.host = dict.fromkeys(self.HOST, 0)
        self.on_device.zero_()
        return dict(zip(self.HOST + self.DEVICE, values))


def train_step(model: DeepSpeech2, forward, optimizer, batch: Batch, device, config: TrainConfig, backend: str,
               ranks: Ranks = SINGLE, precision: torch.dtype | None = None, tally: Tally | None = None) -> torch.Tensor:
    """One step on this rank's share of a global minibatch: loss, backward, clip, update.
    Returns the gradient norm before clipping (a device tensor; nothing is read back).

    The loss is the SUM of the global minibatch's finite per-utterance CTC losses divided by
    their COUNT over all ranks (one all-reduce of a scalar, which stays on the device). Each
    rank backpropagates N x (its sum) / (global count) and DDP averages the N gradients, so
    the gradient is that of the mean loss per utterance of the global minibatch however it is
    split: 2 ranks x B utterances compute what 1 process x 2B computes, where a mean of each
    rank's own mean would weigh the utterances of a rank with fewer usable ones more.

    Why utterances, not frames: for one process and a full minibatch this is exactly the loss
    ds2 always trained with (the per-utterance mean over usable utterances), so the default
    learning rates, measured for it (DEFAULT_LR), and DS2's clip norm of 400 keep their meaning
    and the recipes' settings need no conversion. A per-frame mean would divide the gradient
    by the mean output length, which grows through SortaGrad's first epoch and differs between
    corpora, so the effective learning rate would drift with it. A minibatch is not weighted
    by its size either: dividing by the nominal --batch-size would shrink the steps of the
    smaller, long-utterance minibatches that --batch-seconds makes.

    A step whose gradient norm is not finite, or whose global minibatch had no usable
    utterance, is skipped by the fused optimizer on the device (``found_inf``); every rank
    sees the same all-reduced gradient and count, so every rank skips it alike. Gradients are
    clipped as they are: bf16 autocast needs no loss scaling, so there is nothing to unscale.
    """
    optimizer.zero_grad(set_to_none=True)
    with _autocast(device, precision):
        losses = compute_losses(model, batch, device, backend, forward)
    n_global = distributed.all_sum(losses.n_finite.to(torch.float32), ranks)
    (losses.loss_sum * (ranks.world_size / n_global.clamp(min=1))).backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
    skipped = ~torch.isfinite(grad_norm) | (n_global == 0)
    optimizer.found_inf = skipped.to(torch.float32)
    optimizer.step()
    if tally is not None:
        tally.add_step(losses, skipped, int(batch.feature_lengths.sum()))
    return grad_norm


@dataclass
class DryRun:
    """What the dry run of one minibatch took."""

    seconds: float
    peak_bytes: int  # GPU: the most memory allocated on it; CPU: the process's peak resident size so far


def dry_run(model: DeepSpeech2, frames: list[int], label_lengths: list[int], device: torch.device, backend: str,
            precision: torch.dtype | None = None) -> DryRun:
    """Forward, CTC loss and backward of one minibatch of zeros as a training step computes them
    (no optimizer step): utterances of ``frames`` input frames with ``label_lengths`` labels.

    The model is left as it was: its buffers (BatchNorm running averages) are put back and its
    gradients set to None. Running out of memory raises what the step would raise
    (torch.OutOfMemoryError on a GPU; the CPU allocator's RuntimeError, if the system does not
    kill the process first).
    """
    model.train()
    buffers = [buffer.detach().clone() for buffer in model.buffers()]
    n_labels = max(label_lengths, default=0)
    # labels 1, 2, 1, 2, ...: no repeats, so a transcript fits as many output steps as it has labels
    pattern = torch.arange(n_labels) % max(model.config.n_outputs - 1, 1) + 1
    labels = torch.where(torch.arange(n_labels)[None, :] < torch.tensor(label_lengths)[:, None], pattern, 0)
    batch = Batch(torch.zeros(len(frames), model.config.n_freq, max(frames, default=0)), torch.tensor(frames),
                  labels, torch.tensor(label_lengths), list(range(len(frames))), [])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    try:
        with _autocast(device, precision):
            losses = compute_losses(model, batch, device, backend)
        losses.loss_sum.backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    finally:
        model.zero_grad(set_to_none=True)
        with torch.no_grad():
            for buffer, saved in zip(model.buffers(), buffers):
                buffer.copy_(saved)
    seconds = time.perf_counter() - start
    if device.type == "cuda":
        return DryRun(seconds, torch.cuda.max_memory_allocated(device))
    return DryRun(seconds, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)  # KiB on Linux


def _out_of_memory(err: BaseException) -> bool:
    text = str(err)
    return isinstance(err, torch.OutOfMemoryError) or "can't allocate memory" in text or "out of memory" in text


def _dry_run_costliest(model: DeepSpeech2, sampler: SortaGradSampler, batches: list[list[int]], config: TrainConfig,
                       device: torch.device, backend: str, precision: torch.dtype | None, ranks: Ranks) -> None:
    """The dry run of this rank's share of the epoch's costliest minibatch, padded as a step pads
    it (every utterance as long as the longest, at the slowest speed augmentation may play it,
    with as many labels as the longest transcript). Every rank calls it; if any runs out of
    memory, every rank stops with an error that says which option to lower.

    Later epochs cut their minibatches within the same budget, so they cost about as much (the
    costliest of the first epoch is within one utterance of the budget where the budget binds).
    """
    bucketing = sampler.bucketing
    batch = max(batches, key=bucketing.cost_of)
    longest = max(bucketing.durations[i] for i in batch)
    most_labels = max(bucketing.label_lengths[i] for i in batch)
    stretch = max(1.0, 1 / min(config.augment.speed)) if config.augment.speed_prob > 0 else 1.0
    n_share = len(sampler.shard(batch))
    frames, labels = [audio.duration_to_frames(longest * stretch)] * n_share, [most_labels] * n_share
    cost, budget = bucketing.cost_of(batch), bucketing.batch_seconds
    what = f"{len(batch)} utterances, the longest {longest:.1f} s, at most {most_labels} labels: " + (
        f"{cost:.0f} s of a budget of {budget:g} s" if math.isfinite(budget) else f"{cost:.0f} s, no budget")
    problem = ""
    try:
        result = dry_run(model, frames, labels, device, backend, precision)
    except RuntimeError as err:  # torch.OutOfMemoryError is one
        if not _out_of_memory(err):
            raise
        problem = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if device.type == "cuda":
            torch.cuda.empty_cache()
    failed = distributed.all_sum(torch.tensor(float(bool(problem)), device=device), ranks)
    if float(failed):
        if len(batch) > 1:
            advice = (f"lower --batch-seconds below {cost:.0f}" if math.isfinite(budget) else
                      f"set --batch-seconds below {cost:.0f}") + f" (or --batch-size below {len(batch)})"
        else:
            advice = f"skip utterances this long with --max-duration below {longest:.1f}"
        where = f"on {device}: {problem}" if problem else "on another rank"
        raise TrainingError(f"the dry run of the costliest minibatch ({what}) ran out of memory {where}; {advice}")
    if ranks.is_main:
        peak = "peak memory allocated" if device.type == "cuda" else "peak resident memory of the process"
        log.info("dry run of the costliest minibatch (%s)%s: %.2f s, %s %.2f GB", what,
                 f", rank 0's {n_share}" if ranks.distributed else "", result.seconds, peak, result.peak_bytes / 1e9)


@torch.no_grad()
def evaluate(model: DeepSpeech2, dataset: SpeechDataset, device, backend: str, batch_size: int = 32,
             num_workers: int = 0, *, loader=None, ranks: Ranks = SINGLE, precision: torch.dtype | None = None):
    """Dev loss, greedy WER and CER (%) over a dataset (scored as `ds2 score` scores).

    Under torchrun each rank evaluates its share of every minibatch (``loader``: one made on
    a :class:`SortaGradSampler` of this rank, whose persistent workers serve every epoch) and
    all ranks get the same totals. Needs the same BatchNorm running averages on every rank
    (the trainer averages them first).
    """
    model.eval()
    if loader is None:
        sampler = SortaGradSampler(Bucketing(dataset.durations, batch_size), ranks.rank, ranks.world_size)
        loader = make_loader(dataset, sampler, num_workers)
    loss_sum, n_loss, results = 0.0, 0, []
    for batch in loader:
        for index, message in batch.failures:  # unreadable audio scores as all deletions
            log.warning("dev: %s", message)
            results.append((index, ""))
        if not len(batch):
            continue
        with _autocast(device, precision):
            logits, output_lengths = model(batch.features.to(device, non_blocking=True),
                                           batch.feature_lengths.to(device, non_blocking=True))
            losses = ctc.ctc_loss(
                logits, batch.labels.to(device), output_lengths, batch.label_lengths.to(device),
                reduction="none", backend=backend,
            )
        finite = torch.isfinite(losses)
        loss_sum += float(torch.where(finite, losses, 0.0).sum())
        n_loss += int(finite.sum())
        results.extend(zip(batch.indices, greedy_decode(logits, output_lengths, dataset.alphabet)))
    model.train()
    gathered = distributed.gather_objects((loss_sum, n_loss, results), ranks)
    loss_sum, n_loss = sum(part[0] for part in gathered), sum(part[1] for part in gathered)
    hypotheses = sorted((pair for part in gathered for pair in part[2]), key=lambda pair: pair[0])
    report = score_pairs((dataset.records[index]["text"], hypothesis) for index, hypothesis in hypotheses)
    return (loss_sum / n_loss if n_loss else math.nan), report.wer, report.cer


# --------------------------------------------------------------------------- the loop


class TrainingError(ValueError):
    """A run that cannot do anything useful with its data; the message says why."""


def train(config: TrainConfig, alphabet: Alphabet | None = None) -> TrainState:
    """Train a model as configured; returns the final TrainState (the same on every rank).

    One process, or one rank of a torchrun job (from the environment, ds2.distributed): the
    process group is joined here and left at the end. ``config.threads`` and the GPU backend
    settings (TF32, --deterministic) hold for the run only: the caller's are restored
    afterwards (a model run later in the same process computes in the same summation order
    as before)."""
    threads = torch.get_num_threads()
    ranks = distributed.ranks_from_env()
    device = distributed.device_for(config.device, ranks)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # the current device: pinned-memory thread, NCCL, our CUDA CTC
    started = distributed.start(ranks, device)
    try:
        with backend_settings(device, config.precision, config.deterministic):
            return _train(config, alphabet, ranks, device)
    finally:
        if started:
            distributed.stop()
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


FEATURE_STATISTICS_UTTERANCES = 300


def _bigram_alphabet(manifest: str | Path, n_bigrams: int, base: Alphabet) -> Alphabet:
    """``base`` plus the ``n_bigrams`` most frequent bigrams of the manifest's transcripts."""
    texts = [Alphabet.normalize(record["text"]) for record in read_manifest(manifest)]
    alphabet = Alphabet.with_bigrams(texts, n_bigrams, base=base)
    bigrams = [symbol for symbol in alphabet.symbols if len(symbol) > 1]
    log.info("bigram outputs: %d bigrams + %d characters (most frequent: %s)", len(bigrams),
             len(alphabet.symbols) - len(bigrams), " ".join(repr(b) for b in bigrams[:10]))
    return alphabet


def _set_feature_statistics(model_config: ModelConfig, manifest: str | Path, seed: int) -> None:
    """Online normalization's prior: the raw feature mean and variance of up to
    FEATURE_STATISTICS_UTTERANCES training utterances (a seeded sample; unreadable ones skipped)."""
    records = list(read_manifest(manifest))
    sample = random.Random(seed).sample(records, min(len(records), FEATURE_STATISTICS_UTTERANCES))

    def waveforms():
        for record in sample:
            try:
                yield audio.load_audio(record["audio_filepath"], offset=record.get("offset", 0.0),
                                       duration=record["duration"] if "offset" in record else None)
            except audio.AudioError as err:
                log.warning("feature statistics: skipped %s", err)

    mean, var, frames = feature_statistics(waveforms())
    model_config.feature_mean, model_config.feature_var = mean, var
    log.info("online normalization: training-set feature statistics from %d utterances (%.1f min)",
             len(sample), frames / audio.FRAMES_PER_SECOND / 60)


def _train(config: TrainConfig, alphabet: Alphabet | None, ranks: Ranks, device: torch.device) -> TrainState:
    out_dir = Path(config.out_dir)
    if ranks.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    compact_heap()  # else the heap fragments and the process (and each forked worker) grows to GBs
    if config.threads:
        torch.set_num_threads(config.threads)
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"

    resumed = None
    if config.resume:
        if not last_path.exists():
            raise ValueError(f"--resume: no {last_path} to continue from")
        payload = load_checkpoint(last_path)
        resumed = payload["training"]
        if resumed is None or resumed.get("optimizer") is None:
            raise ValueError(f"{last_path}: holds no training state to resume from")
        model_config = ModelConfig.from_dict(payload["model_config"])
        alphabet = Alphabet(model_config.alphabet)
    elif config.init:
        initial = load_checkpoint(config.init)
        model_config = ModelConfig.from_dict(initial["model_config"])
        alphabet = Alphabet(model_config.alphabet)
        torch.manual_seed(config.seed)
        random.seed(config.seed)
    else:
        alphabet = alphabet or Alphabet()
        if config.bigrams:
            alphabet = _bigram_alphabet(config.train_manifest, config.bigrams, alphabet)
        model_config = config.model
        model_config.alphabet = alphabet.to_list()
        model_config.n_outputs = len(alphabet)
        torch.manual_seed(config.seed)
        random.seed(config.seed)

    if model_config.normalize == "online" and not model_config.feature_mean:
        _set_feature_statistics(model_config, config.train_manifest, config.seed)
    featurize = featurizer(model_config)
    augmenter = Augmenter(config.augment) if config.augment.active else None
    train_set = SpeechDataset(config.train_manifest, alphabet, config.max_duration, augmenter=augmenter,
                              seed=config.seed, featurize=featurize)
    dev_set = SpeechDataset(config.dev_manifest, alphabet, featurize=featurize)
    if ranks.is_main:
        for message in train_set.skipped + dev_set.skipped:
            log.warning("skipped: %s", message)
    if len(train_set) == 0:
        raise TrainingError(f"{config.train_manifest}: no usable utterances")
    if len(dev_set) == 0:
        raise TrainingError(f"{config.dev_manifest}: no usable utterances")
    _check_audio_exists(train_set, config.max_unusable, ranks)

    model = DeepSpeech2(model_config).to(device)
    if config.init and resumed is None:
        model.load_state_dict(initial["model"])
        log.info("initialized from %s", config.init)
    optimizer = build_optimizer(model, config)
    state = TrainState()
    if resumed is not None:
        model.load_state_dict(payload["model"])
        load_optimizer_state(optimizer, resumed["optimizer"])
        state = TrainState(**resumed["state"])
        if "audio_frames" not in resumed["state"]:  # a checkpoint of an earlier ds2
            state.audio_frames = round(state.audio_seconds * audio.FRAMES_PER_SECOND)
        torch.set_rng_state(resumed["rng"]["torch"])
        _set_python_rng_state(resumed["rng"]["python"])
        if resumed["rng"]["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(resumed["rng"]["cuda"])
        log.info("resumed from %s at epoch %d, batch %d, step %d", last_path, state.epoch, state.batches_done, state.step)

    bucketing = make_bucketing(config, train_set, model_config)
    sampler = SortaGradSampler(bucketing, ranks.rank, ranks.world_size)
    sampler.set_epoch(state.epoch, state.batches_done)
    batches = sampler.batches
    if resumed is not None and state.batches and state.batches_done:
        _check_same_batches(state, batches, bucketing, last_path)
    total_audio = sum(train_set.durations)
    backend = ctc.resolve_backend(config.ctc, device)
    precision = autocast_dtype(config.precision, device)  # None: fp32 (TF32 unless --precision fp32)
    log.info(
        "model: %.2fM parameters; train: %d utterances (%.2f h, %d skipped) in %d batches (epoch %d; budget %s); "
        "dev: %d; device: %s; ranks: %d; precision: %s; CTC: %s",
        model.n_parameters() / 1e6, len(train_set), total_audio / 3600, len(train_set.skipped), len(batches),
        state.epoch + 1, f"{bucketing.batch_seconds:g} s" if math.isfinite(bucketing.batch_seconds) else "none",
        len(dev_set), device, ranks.world_size, _precision_name(config.precision, device), backend,
    )

    # One loader per dataset for the whole run: their workers are forked once, before any
    # training step has run threads or kernels, and serve every epoch and evaluation.
    pin = device.type == "cuda"
    loader = make_loader(train_set, sampler, config.num_workers, pin_memory=pin, persistent_workers=True)
    dev_bucketing = Bucketing(dev_set.durations, config.batch_size, bucketing.batch_seconds, dev_set.label_lengths,
                              bucketing.cost)  # forward only: what fits in training fits here
    dev_sampler = SortaGradSampler(dev_bucketing, ranks.rank, ranks.world_size)
    dev_loader = make_loader(dev_set, dev_sampler, config.num_workers, pin_memory=pin, persistent_workers=True)
    if config.num_workers:  # start the workers now, before the dry run and the first step run threads and kernels
        iter(dev_loader)
        iter(loader)
    if config.dry_run:  # on the model alone: before DDP's hooks and synchronized BatchNorm
        _dry_run_costliest(model, sampler, batches, config, device, backend, precision, ranks)

    forward = model
    if ranks.distributed:
        if config.sync_batch_norm:
            model.sync_batch_norm()
        # BatchNorm running averages stay each rank's own between the points where they are
        # averaged (Run.publish): no broadcast of buffers at every forward.
        forward = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            broadcast_buffers=False, gradient_as_bucket_view=True,
        )
    run = _Run(config, backend, ranks, model, optimizer)
    if ranks.is_main:
        _write_run_info(out_dir / "run.json", device, backend, state, ranks, _precision_name(config.precision, device))

    loop = _Loop(config, model, forward, optimizer, sampler, loader, state, device, backend, ranks, precision, run)
    loop.dev = (dev_set, dev_loader)

    logger = RunLogger(out_dir, resume_state=state if resumed is not None else None) if ranks.is_main else None
    loop.logger = logger
    model.train()
    try:
        while state.epoch < config.epochs:
            if loop.epoch():
                if loop.out_of_time:
                    loop.evaluate_dev()
                    run.save(last_path, state)
                    log.info("stopped after %.1f min of training, %d steps (max_minutes); resume with --resume",
                             state.train_seconds / 60, state.step)
                    break
                run.save(last_path, state)
                log.info("stopped after %d steps (max_steps); resume with --resume", state.step)
                return state
            _check_usable(state, config)
            improved = loop.evaluate_dev(end_of_epoch=True)
            state.epoch += 1
            state.batches_done = 0
            state.epoch_seen = state.epoch_unusable = 0
            if improved:
                run.save(best_path, state, with_optimizer=False)
            run.save(last_path, state)
    except KeyboardInterrupt:
        if ranks.distributed:  # the other ranks may be gone: no collective, so no consistent state to save
            log.warning("interrupted: the last checkpoint in %s is the newest state; continue with --resume",
                        last_path)
        else:
            loop.read_counts()
            run.save(last_path, state)
            log.warning("interrupted: state saved to %s; continue with --resume", last_path)
        raise
    finally:
        if logger:
            logger.close()
    if logger:
        logger.plot(out_dir / "curves.png")
    log.info(
        "done: best dev WER %.2f%% CER %.2f%%; skipped %d unaligned, %d unreadable, %d non-finite utterances, %d steps",
        state.best_wer, state.best_cer, state.skipped_unaligned, state.skipped_load,
        state.skipped_nonfinite, state.skipped_steps,
    )
    return state


class _Run:
    """Writes checkpoints (rank 0) of the model as every rank holds it."""

    def __init__(self, config: TrainConfig, backend: str, ranks: Ranks, model: DeepSpeech2, optimizer):
        self.config = {k: v for k, v in asdict(config).items() if k != "model"}
        self.backend = backend
        self.ranks = ranks
        self.model = model
        self.optimizer = optimizer
        self.noted: set[str] = set()  # augmentation problems already logged

    def publish(self) -> None:
        """Make every rank's BatchNorm running averages their mean over the ranks, before the
        model is evaluated or saved: with per-rank statistics each rank's averages saw only
        its own shards (with --sync-batch-norm they are equal already, and stay so)."""
        distributed.average_buffers(self.model.batch_norm_statistics(), self.ranks)

    def save(self, path: Path, state: TrainState, with_optimizer: bool = True) -> None:
        """Every rank calls this at the same point; rank 0 writes."""
        self.publish()
        if not self.ranks.is_main:
            return
        training = {
            "config": self.config,
            "state": asdict(state),
            "optimizer": self.optimizer.state_dict() if with_optimizer else None,
            "rng": {
                "torch": torch.get_rng_state(),
                "python": _python_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            },
            "ctc_backend": self.backend,
            "world_size": self.ranks.world_size,
        }
        save_checkpoint(path, self.model, training)


def _precision_name(precision: str, device: torch.device) -> str:
    """What --precision means on ``device``: bf16, tf32 or fp32."""
    if autocast_dtype(precision, device) is not None:
        return "bf16"
    return "tf32" if device.type == "cuda" and precision != "fp32" else "fp32"


def _write_run_info(path: Path, device: torch.device, backend: str, state: TrainState, ranks: Ranks,
                    precision: str) -> None:
    info = dict(ds2_version=__version__, torch_version=torch.__version__, device=str(device), ctc_backend=backend,
                world_size=ranks.world_size, precision=precision,
                torch_threads=torch.get_num_threads(), started_at_step=state.step, command=sys.argv)
    with atomic_write(path) as handle:
        json.dump(info, handle, indent=2)


def _check_audio_exists(dataset: SpeechDataset, max_unusable: float, ranks: Ranks = SINGLE) -> None:
    """Fail before training when too many audio files are missing (e.g. relative paths of
    a manifest copied away from its corpus); fewer are skipped and counted as they come."""
    missing = [r for r in dataset.records if not Path(r["audio_filepath"]).exists()]
    if not missing:
        return
    share = len(missing) / len(dataset)
    examples = ", ".join(f"{dataset.manifest}:{r['line']}: {r['audio_filepath']}" for r in missing[:3])
    if share > max_unusable:
        raise TrainingError(
            f"{dataset.manifest}: {len(missing)} of {len(dataset)} audio files are missing "
            f"({100 * share:.0f}% > --max-unusable {100 * max_unusable:.0f}%), e.g. {examples}"
        )
    if ranks.is_main:
        log.warning("%s: %d of %d audio files are missing; they will be skipped (e.g. %s)",
                    dataset.manifest, len(missing), len(dataset), examples)


def _check_same_batches(state: TrainState, batches: list[list[int]], bucketing: Bucketing, last_path: Path) -> None:
    """A run stopped inside an epoch must resume with the same minibatches in the same order."""
    if state.batches == batches_digest(batches):
        return
    # ds2 before per-epoch bucketing recorded the digest of its one set of minibatches, sorted
    # by length; with --bucket-jitter 0 they are still cut that way.
    if not bucketing.jitter and state.batches == batches_digest(make_batches(
            bucketing.durations, bucketing.batch_seconds, bucketing.max_batch_size, bucketing.label_lengths,
            bucketing.cost)):
        return
    raise ValueError(
        f"{last_path}: stopped inside epoch {state.epoch + 1}, whose minibatches were cut otherwise than this run's "
        "(--batch-size, --batch-seconds, --bucket-jitter, --seed, --sortagrad, --max-duration or the manifest "
        "changed; a checkpoint of an earlier ds2 resumes inside an epoch with --bucket-jitter 0 and the "
        "--batch-seconds it ran with, 0 by default); resume with the options it ran with"
    )


def _check_usable(state: TrainState, config: TrainConfig) -> None:
    """After an epoch: stop if the run has trained nothing or the epoch could not use most of its data."""
    if state.epoch_seen and state.epoch_unusable / state.epoch_seen > config.max_unusable:
        raise TrainingError(
            f"epoch {state.epoch + 1}: {state.epoch_unusable} of {state.epoch_seen} training utterances could not be "
            f"used (> --max-unusable {config.max_unusable}); see the warnings in train.log"
        )
    if state.step == state.skipped_steps:
        raise TrainingError(f"epoch {state.epoch + 1} ended without a single applied optimizer step; see train.log")


class _Loop:
    """The steps of the epochs; every rank runs the same steps and reads its counts at the same points."""

    def __init__(self, config, model, forward, optimizer, sampler, loader, state, device, backend, ranks, precision,
                 run: _Run):
        self.config, self.model, self.forward, self.optimizer = config, model, forward, optimizer
        self.sampler, self.loader, self.state = sampler, loader, state
        self.device, self.backend, self.ranks, self.precision, self.run = device, backend, ranks, precision, run
        self.tally = Tally(device, ranks)
        self.logger: RunLogger | None = None
        self.window = _new_window()  # since the last log.csv row
        self.out_of_time = False  # max_minutes stopped the run
        self.dev = None  # (dataset, loader) for evaluate_dev

    def evaluate_dev(self, end_of_epoch: bool = False) -> bool:
        """Evaluate dev (every rank): a dev.csv row (and at an epoch's end an epochs.csv row),
        best.pt when it improved. Returns whether it did."""
        state = self.state
        self.run.publish()
        dev_set, dev_loader = self.dev
        dev_loss, dev_wer, dev_cer = evaluate(self.model, dev_set, self.device, self.backend, loader=dev_loader,
                                              ranks=self.ranks, precision=self.precision)
        state.eval_seconds = state.train_seconds
        improved = (dev_wer, dev_cer) < (state.best_wer, state.best_cer)
        if improved:
            state.best_wer, state.best_cer = dev_wer, dev_cer
        if self.logger:
            self.logger.dev_row(state, dev_loss, dev_wer, dev_cer)
            if end_of_epoch:
                self.logger.epoch_row(state, epoch_lr(self.config, state.epoch), dev_loss, dev_wer, dev_cer)
        log.info("%s: dev loss %.3f, WER %.2f%%, CER %.2f%% (%.1f min of training)%s",
                 f"epoch {state.epoch + 1}" if end_of_epoch else f"step {state.step}", dev_loss, dev_wer, dev_cer,
                 state.train_seconds / 60, " (best)" if improved else "")
        if improved and not end_of_epoch:
            self.run.save(Path(self.config.out_dir) / "best.pt", state, with_optimizer=False)
        return improved

    def read_counts(self) -> None:
        """Add every rank's counts since the last reading to the state (a collective)."""
        counts, state = self.tally.read(), self.state
        state.epoch_seen += round(counts["seen"])
        state.skipped_load += round(counts["load_failures"])
        state.skipped_unaligned += round(counts["unaligned"])
        state.skipped_nonfinite += round(counts["nonfinite"])
        state.epoch_unusable += round(counts["load_failures"] + counts["unaligned"] + counts["nonfinite"])
        state.skipped_steps += round(counts["skipped_steps"])
        state.skipped_augment += round(counts["augment_notes"])
        state.audio_frames += round(counts["audio_frames"])
        state.audio_seconds = audio.frames_to_seconds(state.audio_frames)
        state.train_seconds += counts["train_seconds"]
        self.window["loss_sum"] += counts["loss_sum"]
        self.window["n_loss"] += counts["n_loss"]
        self.window["frames"] += counts["audio_frames"]

    def epoch(self) -> bool:
        """Run the rest of the current epoch; True if max_steps or max_minutes stopped it early."""
        config, state = self.config, self.state
        lr = epoch_lr(config, state.epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.sampler.set_epoch(state.epoch, state.batches_done)
        state.batches = batches_digest(self.sampler.batches)
        self.window = _new_window()  # a row's window stays within an epoch (evaluation time is not training)
        bar = tqdm(
            self.loader, total=len(self.sampler.batches), initial=state.batches_done,
            disable=not (config.progress and self.ranks.is_main),
            desc=f"epoch {state.epoch + 1}/{config.epochs}", unit="batch", dynamic_ncols=True,
        )
        clock = time.perf_counter()
        for batch in bar:
            for _, message in batch.failures:
                log.warning("skipped: %s", message)
            for message in batch.notes:
                if message not in self.run.noted:  # one warning per bad clip, every use counted
                    self.run.noted.add(message)
                    log.warning("augmentation skipped: %s", message)
            self.tally.host["augment_notes"] += len(batch.notes)
            self.tally.host["seen"] += len(batch) + len(batch.failures)
            self.tally.host["load_failures"] += len(batch.failures)
            grad_norm = train_step(self.model, self.forward, self.optimizer, batch, self.device, config, self.backend,
                                   self.ranks, self.precision, self.tally)
            state.step += 1
            state.batches_done += 1
            now = time.perf_counter()
            self.tally.host["train_seconds"] += (now - clock) / self.ranks.world_size  # summed: the ranks' mean
            clock = now
            logged = state.step % config.log_every == 0
            saved = bool(config.checkpoint_every) and state.step % config.checkpoint_every == 0
            stop = bool(config.max_steps) and state.step >= config.max_steps
            if logged or saved or stop:
                self.read_counts()  # the same on every rank, so are the decisions below
            if logged:
                self._log_row(lr, grad_norm, bar)
            if logged and config.max_minutes and state.train_seconds >= config.max_minutes * 60:
                self.out_of_time = stop = True
            if stop:
                bar.close()
                return True
            if logged and config.eval_minutes and state.train_seconds - state.eval_seconds >= config.eval_minutes * 60:
                self.evaluate_dev()
                self.window = _new_window()
            if saved:
                self.run.save(Path(config.out_dir) / "last.pt", state)
            clock = time.perf_counter()
        bar.close()
        self.read_counts()
        return False

    def _log_row(self, lr: float, grad_norm: torch.Tensor, bar) -> None:
        """A log.csv row (rank 0): the mean loss per utterance since the last row, all ranks
        together, and the last step's gradient norm (the same on every rank)."""
        window = self.window
        loss = window["loss_sum"] / window["n_loss"] if window["n_loss"] else math.nan
        speed = audio.frames_to_seconds(window["frames"]) / max(time.perf_counter() - window["start"], 1e-9)
        if self.logger is not None:
            self.logger.step_row(self.state, lr, loss, float(grad_norm), speed)
            bar.set_postfix(loss=f"{loss:.2f}", audio_s_per_s=f"{speed:.0f}")
        self.window = _new_window()


def _new_window() -> dict[str, float]:
    """Sums over the steps of one log.csv row, all ranks together."""
    return dict(loss_sum=0.0, n_loss=0.0, frames=0.0, start=time.perf_counter())


class RunLogger:
    """log.csv (steps), epochs.csv, TensorBoard events, and the curves PNG.

    The CSV files survive a kill at any moment (ds2.io.CsvLog). A resumed run keeps the
    rows up to the checkpoint it resumes from and drops later ones, which it will log again.
    """

    STEP_FIELDS = ["step", "epoch", "lr", "loss", "grad_norm", "audio_seconds_per_second"]
    DEV_FIELDS = ["step", "epoch", "train_minutes", "audio_hours", "dev_loss", "dev_wer", "dev_cer",
                  "skipped_nonfinite", "skipped_steps"]
    EPOCH_FIELDS = [
        "epoch", "step", "lr", "dev_loss", "dev_wer", "dev_cer", "skipped_unaligned",
        "skipped_load", "skipped_nonfinite", "skipped_steps", "audio_hours", "skipped_augment",
    ]

    def __init__(self, out_dir: Path, resume_state: TrainState | None = None):
        self.out_dir = out_dir
        append = resume_state is not None
        step, epoch = (resume_state.step, resume_state.epoch) if append else (0, 0)
        self.steps = CsvLog(out_dir / "log.csv", self.STEP_FIELDS, append, keep=lambda row: _int(row["step"]) <= step)
        self.epochs = CsvLog(out_dir / "epochs.csv", self.EPOCH_FIELDS, append,
                             keep=lambda row: _int(row["epoch"]) <= epoch)
        self.devs = CsvLog(out_dir / "dev.csv", self.DEV_FIELDS, append, keep=lambda row: _int(row["step"]) <= step)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(str(out_dir / "tensorboard"))
        except ImportError:  # tensorboard is a declared dependency; stay usable without it
            self.tensorboard = None

    def step_row(self, state: TrainState, lr: float, loss: float, grad_norm: float, speed: float) -> None:
        row = dict(step=state.step, epoch=state.epoch + 1, lr=lr, loss=round(loss, 4),
                   grad_norm=round(grad_norm, 3), audio_seconds_per_second=round(speed, 1))
        scalars = {"train/loss": loss, "train/grad_norm": grad_norm, "train/lr": lr,
                   "train/audio_seconds_per_second": speed}
        self._emit(self.steps, row, scalars, state.step)

    def epoch_row(self, state: TrainState, lr: float, dev_loss: float, dev_wer: float, dev_cer: float) -> None:
        row = dict(
            epoch=state.epoch + 1, step=state.step, lr=lr, dev_loss=round(dev_loss, 4),
            dev_wer=round(dev_wer, 2), dev_cer=round(dev_cer, 2),
            skipped_unaligned=state.skipped_unaligned, skipped_load=state.skipped_load,
            skipped_nonfinite=state.skipped_nonfinite, skipped_steps=state.skipped_steps,
            audio_hours=round(state.audio_seconds / 3600, 3), skipped_augment=state.skipped_augment,
        )
        scalars = {"dev/loss": dev_loss, "dev/wer": dev_wer, "dev/cer": dev_cer}
        self._emit(self.epochs, row, scalars, state.step)

    def dev_row(self, state: TrainState, dev_loss: float, dev_wer: float, dev_cer: float) -> None:
        row = dict(step=state.step, epoch=state.epoch + 1, train_minutes=round(state.train_seconds / 60, 3),
                   audio_hours=round(state.audio_seconds / 3600, 3), dev_loss=round(dev_loss, 4),
                   dev_wer=round(dev_wer, 2), dev_cer=round(dev_cer, 2), skipped_nonfinite=state.skipped_nonfinite,
                   skipped_steps=state.skipped_steps)
        self.devs.write(row)

    def _emit(self, csv_log: CsvLog, row: dict, scalars: dict, step: int) -> None:
        """One CSV row (flushed, so a crash loses nothing) and its TensorBoard scalars."""
        csv_log.write(row)
        if self.tensorboard:
            for tag, value in scalars.items():
                self.tensorboard.add_scalar(tag, value, step)

    def close(self) -> None:
        self.steps.close()
        self.epochs.close()
        self.devs.close()
        if self.tensorboard:
            self.tensorboard.close()

    def plot(self, path: Path) -> None:
        plot_curves(self.out_dir / "log.csv", self.out_dir / "epochs.csv", path)


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        return 1 << 62  # a mangled row: drop it


def plot_curves(step_csv: Path, epoch_csv: Path, path: Path) -> None:
    """PNG: training loss per step with dev loss per epoch; dev WER/CER per epoch."""
    import matplotlib.ticker

    steps, epochs = read_csv(step_csv), read_csv(epoch_csv)
    figure, (left, right) = pyplot().subplots(1, 2, figsize=(11, 4))
    if steps:
        left.plot([int(r["step"]) for r in steps], [float(r["loss"]) for r in steps], label="train (per step)")
    if epochs:
        left.plot([int(r["step"]) for r in epochs], [float(r["dev_loss"]) for r in epochs], "o-", label="dev (per epoch)")
        right.plot([int(r["epoch"]) for r in epochs], [float(r["dev_wer"]) for r in epochs], "o-", label="dev WER")
        right.plot([int(r["epoch"]) for r in epochs], [float(r["dev_cer"]) for r in epochs], "s-", label="dev CER")
    left.set(xlabel="step", ylabel="CTC loss per utterance", yscale="log", title="loss")
    right.set(xlabel="epoch", ylabel="%", title="dev error rates (greedy)")
    right.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    for axis in (left, right):
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend()
    figure.tight_layout()
    save_figure(figure, path)
