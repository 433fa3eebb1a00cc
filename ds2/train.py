"""Training: SortaGrad minibatches, CTC, SGD with Nesterov momentum (or Adam), checkpoints.

Usage (the tiny recipe does this)::

    ds2 train data/train.json data/dev.json -o exp/tiny --epochs 12 --batch-size 32 \\
        --optimizer adam --lr 1e-3 --rnn-hidden 256 --rnn-layers 3

What lands in the output folder:

- ``last.pt``: the newest state (model, optimizer, epoch, position in the epoch, RNG
  states); ``ds2 train ... --resume`` continues from it exactly.
- ``best.pt``: the model with the lowest dev WER so far (CER breaks ties).
- ``log.csv`` (one row per logged step), ``epochs.csv`` (one row per epoch),
  TensorBoard event files under ``tensorboard/`` and ``curves.png`` at the end.
- ``run.json``: what actually ran (CTC backend, device, versions), rewritten on resume.

Utterances that cannot be used (unreadable audio, labels longer than the output frames)
and non-finite losses are skipped and counted in the log; they never enter the average.
A run that cannot use most of its data (more than ``max_unusable`` of an epoch, or audio
files missing up front) stops with an error instead of training on what is left.

Nothing imports this module but the command line: decoding, tuning and alignment use
ds2.checkpoint, ds2.data and ds2.decode.
"""

from __future__ import annotations

import json
import logging
import math
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from ds2 import __version__, audio, ctc
from ds2.augment import AugmentOptions, Augmenter
from ds2.checkpoint import load_checkpoint, save_checkpoint
from ds2.config import DEVICE_HELP, DEVICE_PATTERN, check, option
from ds2.data import Batch, SpeechDataset, epoch_batch_order, make_batches, make_loader
from ds2.decode import greedy_decode
from ds2.io import CsvLog, atomic_write, compact_heap, pyplot, read_csv, save_figure, select_device
from ds2.metrics import score_pairs
from ds2.model import DeepSpeech2, ModelConfig
from ds2.text import Alphabet

log = logging.getLogger("ds2.train")

# Our loss is the mean over a minibatch's utterances, so these are per-utterance-average
# rates. On the tiny corpus, one epoch of SGD (Nesterov 0.99) at 3e-3 reached dev CER 22.6%
# against 28.0% at 3e-4 (DS2's published range assumes another loss scaling); Adam at 2e-3
# reached 14.1% (recipes/tiny/RESULTS.md).
DEFAULT_LR = {"sgd": 3e-3, "adam": 1e-3}


@dataclass
class TrainConfig:
    """A training run. The fields with help text are `ds2 train`'s options."""

    train_manifest: str
    dev_manifest: str
    out_dir: str
    epochs: int = option(20, "Passes over the training set.", min=1)
    batch_size: int = option(32, "Most utterances per minibatch.", min=1)
    batch_seconds: float = option(0.0, "Most padded audio seconds per minibatch (0: no limit).", min=0)
    max_duration: float | None = option(None, "Skip utterances longer than this (s).", above=0)
    optimizer: str = option("sgd", "sgd (Nesterov momentum, DS2) or adam.", choices=tuple(DEFAULT_LR))
    lr: float | None = option(None, "Learning rate of the first epoch (default: 3e-3 sgd, 1e-3 adam).", above=0)
    momentum: float = option(0.99, "Nesterov momentum (sgd).", min=0, max=1)
    anneal: float = option(1.2, "Divide the learning rate by this after each epoch.", above=0)
    weight_decay: float = option(0.0, "L2 weight decay.", min=0)
    grad_clip: float = option(400.0, "Clip the global gradient norm to this.", above=0)
    sortagrad: bool = option(True, "First epoch in increasing length order (SortaGrad).")
    ctc: str = option("auto", "CTC loss: auto (our CUDA kernel on a GPU, numba on the CPU), cuda, numba, "
                              "or torch.", choices=ctc.BACKENDS)
    device: str = option("auto", "auto, cpu, cuda, cuda:1, ...", pattern=DEVICE_PATTERN, pattern_help=DEVICE_HELP)
    num_workers: int = option(1, "Data loading processes (0: in this process).", min=0)
    threads: int = option(0, "Torch CPU threads (0: default).", min=0)
    seed: int = option(0, "Random seed.")
    checkpoint_every: int = option(200, "Save last.pt every N steps (and every epoch; 0: only every epoch).", min=0)
    log_every: int = option(10, "Write a log.csv row every N steps.", min=1)
    max_steps: int = option(0, "Stop after N optimizer steps in total (0: no limit).", min=0)
    max_unusable: float = option(0.5, "Stop with an error when more than this share of the training "
                                 "utterances cannot be used (missing or unreadable audio, labels "
                                 "longer than the output, non-finite loss).", min=0, max=1)
    resume: bool = option(False, "Continue OUT_DIR/last.pt exactly where it stopped.")
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
    """Where a run stands; saved in every checkpoint."""

    epoch: int = 0
    batches_done: int = 0  # position in the current epoch's batch order
    step: int = 0  # optimizer steps in total
    best_wer: float = math.inf
    best_cer: float = math.inf
    skipped_unaligned: int = 0  # labels longer than the output frames
    skipped_load: int = 0  # audio that could not be read
    skipped_nonfinite: int = 0  # utterances with inf/nan loss
    skipped_steps: int = 0  # steps dropped for a non-finite gradient
    skipped_augment: int = 0  # noise clips / impulse responses that could not be used (the rest was)
    audio_seconds: float = 0.0
    epoch_seen: int = 0  # training utterances the current epoch has come to so far
    epoch_unusable: int = 0  # ... of which could not be used (unreadable, unaligned, non-finite)


# --------------------------------------------------------------------------- helpers


def build_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(
        model.parameters(),
        lr=config.lr,
        momentum=config.momentum,
        nesterov=config.momentum > 0,
        weight_decay=config.weight_decay,
    )


def epoch_lr(config: TrainConfig, epoch: int) -> float:
    """DS2's schedule: the learning rate annealed by a constant factor per epoch."""
    return config.lr / config.anneal**epoch


def _python_rng_state():
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _set_python_rng_state(saved) -> None:
    version, internal, gauss = saved
    random.setstate((version, tuple(internal), gauss))


# --------------------------------------------------------------------------- steps


@dataclass
class StepResult:
    loss: float  # mean CTC loss of the utterances used (nan if none)
    n_used: int
    n_unaligned: int
    n_nonfinite: int
    grad_norm: float = math.nan
    applied: bool = False


def compute_loss(
    model: DeepSpeech2, batch: Batch, device: torch.device, backend: str
) -> tuple[torch.Tensor | None, StepResult]:
    """Forward a batch and return the mean loss over usable utterances (None if none)."""
    output_lengths = model.output_lengths(batch.feature_lengths)
    fits = ctc.feasible(batch.labels, batch.label_lengths, output_lengths)
    n_unaligned = int((~fits).sum())
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
    if len(batch) < 2 and model.training and model.config.batch_norm:
        # Batch statistics need more than one utterance; too small to use.
        return None, StepResult(math.nan, 0, n_unaligned + len(batch), 0)
    features = batch.features.to(device, non_blocking=True)
    logits, output_lengths = model(features, batch.feature_lengths.to(device))
    losses = ctc.ctc_loss(
        logits,
        batch.labels.to(device),
        output_lengths,
        batch.label_lengths.to(device),
        reduction="none",
        backend=backend,
    )
    finite = torch.isfinite(losses)
    n_finite = int(finite.sum())
    result = StepResult(math.nan, n_finite, n_unaligned, len(batch) - n_finite)
    if n_finite == 0:
        return None, result
    loss = losses[finite].sum() / n_finite
    result.loss = float(loss.detach())
    return loss, result


def train_step(model, optimizer, batch: Batch, device, config: TrainConfig, backend: str) -> StepResult:
    """One optimizer step: loss, backward, clip, update; non-finite gradients skip the update."""
    optimizer.zero_grad(set_to_none=True)
    loss, result = compute_loss(model, batch, device, backend)
    if loss is None:
        return result
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
    result.grad_norm = float(grad_norm)
    if math.isfinite(result.grad_norm):
        optimizer.step()
        result.applied = True
    return result


@torch.no_grad()
def evaluate(model: DeepSpeech2, dataset: SpeechDataset, device, backend: str, batch_size: int = 32, num_workers: int = 0):
    """Dev loss, greedy WER and CER (%) over a dataset (scored as `ds2 score` scores)."""
    model.eval()
    batches = make_batches(dataset.durations, math.inf, batch_size)
    loss_sum, n_loss, pairs = 0.0, 0, []
    for batch in make_loader(dataset, batches, num_workers):
        for index, message in batch.failures:  # unreadable audio scores as all deletions
            log.warning("dev: %s", message)
            pairs.append((dataset.records[index]["text"], ""))
        if not len(batch):
            continue
        logits, output_lengths = model(batch.features.to(device), batch.feature_lengths.to(device))
        losses = ctc.ctc_loss(
            logits, batch.labels.to(device), output_lengths, batch.label_lengths.to(device),
            reduction="none", backend=backend,
        )
        finite = torch.isfinite(losses)
        loss_sum += float(losses[finite].sum())
        n_loss += int(finite.sum())
        hypotheses = greedy_decode(logits, output_lengths, dataset.alphabet)
        for index, hypothesis in zip(batch.indices, hypotheses):
            pairs.append((dataset.records[index]["text"], hypothesis))
    model.train()
    report = score_pairs(pairs)
    return (loss_sum / n_loss if n_loss else math.nan), report.wer, report.cer


# --------------------------------------------------------------------------- the loop


class TrainingError(ValueError):
    """A run that cannot do anything useful with its data; the message says why."""


def train(config: TrainConfig, alphabet: Alphabet | None = None) -> TrainState:
    """Train a model as configured; returns the final TrainState. ``config.threads`` holds
    for the run only: the caller's torch thread count is restored afterwards (a model run
    later in the same process computes in the same summation order as before)."""
    threads = torch.get_num_threads()
    try:
        return _train(config, alphabet)
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


def _train(config: TrainConfig, alphabet: Alphabet | None) -> TrainState:
    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    compact_heap()  # else the heap fragments and the process (and each forked worker) grows to GBs
    if config.threads:
        torch.set_num_threads(config.threads)
    device = select_device(config.device)
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
        model_config = config.model
        model_config.alphabet = alphabet.to_list()
        model_config.n_outputs = len(alphabet)
        torch.manual_seed(config.seed)
        random.seed(config.seed)

    augmenter = Augmenter(config.augment) if config.augment.active else None
    train_set = SpeechDataset(config.train_manifest, alphabet, config.max_duration, augmenter=augmenter,
                              seed=config.seed)
    dev_set = SpeechDataset(config.dev_manifest, alphabet)
    for message in train_set.skipped + dev_set.skipped:
        log.warning("skipped: %s", message)
    if len(train_set) == 0:
        raise TrainingError(f"{config.train_manifest}: no usable utterances")
    if len(dev_set) == 0:
        raise TrainingError(f"{config.dev_manifest}: no usable utterances")
    _check_audio_exists(train_set, config.max_unusable)

    model = DeepSpeech2(model_config).to(device)
    if config.init and resumed is None:
        model.load_state_dict(initial["model"])
        log.info("initialized from %s", config.init)
    optimizer = build_optimizer(model, config)
    state = TrainState()
    if resumed is not None:
        model.load_state_dict(payload["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        state = TrainState(**resumed["state"])
        torch.set_rng_state(resumed["rng"]["torch"])
        _set_python_rng_state(resumed["rng"]["python"])
        if resumed["rng"]["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(resumed["rng"]["cuda"])
        log.info("resumed from %s at epoch %d, batch %d, step %d", last_path, state.epoch, state.batches_done, state.step)

    batch_seconds = config.batch_seconds if config.batch_seconds > 0 else math.inf
    batches = make_batches(train_set.durations, batch_seconds, config.batch_size)
    total_audio = sum(train_set.durations)
    backend = ctc.resolve_backend(config.ctc, device)
    log.info(
        "model: %.2fM parameters; train: %d utterances (%.2f h, %d skipped) in %d batches; dev: %d; device: %s; CTC: %s",
        model.n_parameters() / 1e6, len(train_set), total_audio / 3600, len(train_set.skipped),
        len(batches), len(dev_set), device, backend,
    )
    _write_run_info(out_dir / "run.json", device, backend, state)
    run = _Run(config, backend, out_dir)

    logger = RunLogger(out_dir, resume_state=state if resumed is not None else None)
    model.train()
    try:
        while state.epoch < config.epochs:
            stopped = _train_epoch(model, optimizer, train_set, batches, state, config, device, logger, run)
            if stopped:
                run.save(last_path, model, optimizer, state)
                log.info("stopped after %d steps (max_steps); resume with --resume", state.step)
                return state
            _check_usable(state, config)
            dev_loss, dev_wer, dev_cer = evaluate(model, dev_set, device, backend, config.batch_size)
            improved = (dev_wer, dev_cer) < (state.best_wer, state.best_cer)
            if improved:
                state.best_wer, state.best_cer = dev_wer, dev_cer
            logger.epoch_row(state, epoch_lr(config, state.epoch), dev_loss, dev_wer, dev_cer)
            log.info(
                "epoch %d: dev loss %.3f, WER %.2f%%, CER %.2f%%%s",
                state.epoch + 1, dev_loss, dev_wer, dev_cer, " (best)" if improved else "",
            )
            state.epoch += 1
            state.batches_done = 0
            state.epoch_seen = state.epoch_unusable = 0
            if improved:
                run.save(best_path, model, None, state)
            run.save(last_path, model, optimizer, state)
    except KeyboardInterrupt:
        run.save(last_path, model, optimizer, state)
        log.warning("interrupted: state saved to %s; continue with --resume", last_path)
        raise
    finally:
        logger.close()
    logger.plot(out_dir / "curves.png")
    log.info(
        "done: best dev WER %.2f%% CER %.2f%%; skipped %d unaligned, %d unreadable, %d non-finite utterances, %d steps",
        state.best_wer, state.best_cer, state.skipped_unaligned, state.skipped_load,
        state.skipped_nonfinite, state.skipped_steps,
    )
    return state


class _Run:
    """Writes checkpoints with the run's configuration and the CTC backend that ran."""

    def __init__(self, config: TrainConfig, backend: str, out_dir: Path):
        self.config = {k: v for k, v in asdict(config).items() if k != "model"}
        self.backend = backend
        self.out_dir = out_dir
        self.noted: set[str] = set()  # augmentation problems already logged

    def save(self, path: Path, model: DeepSpeech2, optimizer, state: TrainState) -> None:
        training = {
            "config": self.config,
            "state": asdict(state),
            "optimizer": optimizer.state_dict() if optimizer is not None else None,
            "rng": {
                "torch": torch.get_rng_state(),
                "python": _python_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            },
            "ctc_backend": self.backend,
        }
        save_checkpoint(path, model, training)


def _write_run_info(path: Path, device: torch.device, backend: str, state: TrainState) -> None:
    info = dict(ds2_version=__version__, torch_version=torch.__version__, device=str(device), ctc_backend=backend,
                torch_threads=torch.get_num_threads(), started_at_step=state.step, command=sys.argv)
    with atomic_write(path) as handle:
        json.dump(info, handle, indent=2)


def _check_audio_exists(dataset: SpeechDataset, max_unusable: float) -> None:
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
    log.warning("%s: %d of %d audio files are missing; they will be skipped (e.g. %s)",
                dataset.manifest, len(missing), len(dataset), examples)


def _check_usable(state: TrainState, config: TrainConfig) -> None:
    """After an epoch: stop if it trained nothing or could not use most of its data."""
    if state.epoch_seen and state.epoch_unusable / state.epoch_seen > config.max_unusable:
        raise TrainingError(
            f"epoch {state.epoch + 1}: {state.epoch_unusable} of {state.epoch_seen} training utterances could not be "
            f"used (> --max-unusable {config.max_unusable}); see the warnings in train.log"
        )
    if state.step == 0:
        raise TrainingError(f"epoch {state.epoch + 1} ended without a single optimizer step; see train.log")


def _train_epoch(model, optimizer, train_set, batches, state: TrainState, config, device, logger, run: _Run) -> bool:
    """Run the rest of the current epoch; True if max_steps stopped it early."""
    lr = epoch_lr(config, state.epoch)
    for group in optimizer.param_groups:
        group["lr"] = lr
    order = epoch_batch_order(len(batches), state.epoch, config.seed, config.sortagrad)
    remaining = [batches[i] for i in order[state.batches_done :]]
    loader = make_loader(train_set, remaining, config.num_workers, epoch=state.epoch)
    bar = tqdm(
        loader, total=len(order), initial=state.batches_done, disable=not config.progress,
        desc=f"epoch {state.epoch + 1}/{config.epochs}", unit="batch", dynamic_ncols=True,
    )
    window_audio, window_start, window_loss, window_n = 0.0, time.perf_counter(), 0.0, 0
    for batch in bar:
        applied = False
        for _, message in batch.failures:
            log.warning("skipped: %s", message)
        state.skipped_load += len(batch.failures)
        for message in batch.notes:
            if message not in run.noted:  # one warning per bad clip, every use counted
                run.noted.add(message)
                log.warning("augmentation skipped: %s", message)
        state.skipped_augment += len(batch.notes)
        state.epoch_seen += len(batch) + len(batch.failures)
        state.epoch_unusable += len(batch.failures)
        if len(batch):
            result = train_step(model, optimizer, batch, device, config, run.backend)
            state.skipped_unaligned += result.n_unaligned
            state.skipped_nonfinite += result.n_nonfinite
            state.epoch_unusable += result.n_unaligned + result.n_nonfinite
            if result.n_used and not result.applied:
                state.skipped_steps += 1
            applied = result.applied
            if applied:
                state.step += 1
                seconds = audio.frames_to_seconds(float(batch.feature_lengths.sum()))
                state.audio_seconds += seconds
                window_audio += seconds
                window_loss += result.loss * result.n_used
                window_n += result.n_used
                if state.step % config.log_every == 0:
                    speed = window_audio / max(time.perf_counter() - window_start, 1e-9)
                    logger.step_row(state, lr, window_loss / window_n, result.grad_norm, speed)
                    bar.set_postfix(loss=f"{window_loss / window_n:.2f}", audio_s_per_s=f"{speed:.0f}")
                    window_audio, window_start, window_loss, window_n = 0.0, time.perf_counter(), 0.0, 0
        state.batches_done += 1
        if config.max_steps and state.step >= config.max_steps:
            bar.close()
            return True
        if applied and config.checkpoint_every and state.step % config.checkpoint_every == 0:
            run.save(Path(config.out_dir) / "last.pt", model, optimizer, state)
    bar.close()
    return False


class RunLogger:
    """log.csv (steps), epochs.csv, TensorBoard events, and the curves PNG.

    The CSV files survive a kill at any moment (ds2.io.CsvLog). A resumed run keeps the
    rows up to the checkpoint it resumes from and drops later ones, which it will log again.
    """

    STEP_FIELDS = ["step", "epoch", "lr", "loss", "grad_norm", "audio_seconds_per_second"]
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

    def _emit(self, csv_log: CsvLog, row: dict, scalars: dict, step: int) -> None:
        """One CSV row (flushed, so a crash loses nothing) and its TensorBoard scalars."""
        csv_log.write(row)
        if self.tensorboard:
            for tag, value in scalars.items():
                self.tensorboard.add_scalar(tag, value, step)

    def close(self) -> None:
        self.steps.close()
        self.epochs.close()
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
