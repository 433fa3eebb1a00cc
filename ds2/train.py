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

Utterances that cannot be used (unreadable audio, labels longer than the output frames)
and non-finite losses are skipped and counted in the log; they never enter the average.
"""

from __future__ import annotations

import csv
import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from ds2 import ctc
from ds2.data import Batch, SpeechDataset, atomic_write, collate, epoch_batch_order, make_batches
from ds2.decode import greedy_decode, select_device
from ds2.metrics import score_pairs
from ds2.model import DeepSpeech2, ModelConfig
from ds2.text import Alphabet

log = logging.getLogger("ds2.train")

CHECKPOINT_VERSION = 1

# Our loss is the mean over a minibatch's utterances, so these are per-utterance-average
# rates. On the tiny corpus, one epoch of SGD (Nesterov 0.99) at 3e-3 reached dev CER 22.6%
# against 28.0% at 3e-4 (DS2's published range assumes another loss scaling); Adam at 2e-3
# reached 14.1% (recipes/tiny/RESULTS.md).
DEFAULT_LR = {"sgd": 3e-3, "adam": 1e-3}


@dataclass
class TrainConfig:
    train_manifest: str
    dev_manifest: str
    out_dir: str
    epochs: int = 20
    batch_size: int = 32  # most utterances in a minibatch
    batch_seconds: float = 0.0  # most padded audio seconds in a minibatch (0: no limit)
    max_duration: float | None = None  # drop longer utterances (seconds)
    optimizer: str = "sgd"  # "sgd" (Nesterov momentum) or "adam"
    lr: float | None = None  # first-epoch learning rate (None: DEFAULT_LR of the optimizer)
    momentum: float = 0.99
    anneal: float = 1.2  # learning rate divided by this after every epoch
    weight_decay: float = 0.0
    grad_clip: float = 400.0  # max global gradient norm
    sortagrad: bool = True
    seed: int = 0
    num_workers: int = 1  # data loading processes
    ctc_backend: str = "auto"  # ds2.ctc backend: auto (cuda on GPU, numba on CPU), cuda, numba, torch
    device: str = "auto"
    checkpoint_every: int = 200  # steps between last.pt saves (and at every epoch end)
    log_every: int = 10
    max_steps: int = 0  # stop (saving last.pt) after this many optimizer steps in total (0: never)
    threads: int = 0  # torch CPU threads (0: torch's default)
    resume: bool = False
    progress: bool = True
    model: ModelConfig = field(default_factory=ModelConfig)

    def __post_init__(self):
        if self.optimizer not in DEFAULT_LR:
            raise ValueError("optimizer must be 'sgd' or 'adam'")
        if self.lr is None:
            self.lr = DEFAULT_LR[self.optimizer]
        for name in ("lr", "anneal", "grad_clip"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value}")


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
    audio_seconds: float = 0.0


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


def save_checkpoint(path: Path, model: DeepSpeech2, optimizer, state: TrainState, config: TrainConfig) -> None:
    """Write a checkpoint atomically. Everything in it loads with weights_only=True."""
    payload = {
        "version": CHECKPOINT_VERSION,
        "model_config": model.config.to_dict(),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "train_state": asdict(state),
        "train_config": {k: v for k, v in asdict(config).items() if k != "model"},
        "rng": {
            "torch": torch.get_rng_state(),
            "python": _python_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        },
    }
    with atomic_write(path, "wb") as handle:
        torch.save(payload, handle)


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Read a checkpoint safely (no pickled code). Raises ValueError naming the file."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: checkpoint not found")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise ValueError(f"{path}: not a readable ds2 checkpoint ({err.__class__.__name__})") from None
    if not isinstance(payload, dict) or "model_config" not in payload or "model" not in payload:
        raise ValueError(f"{path}: not a ds2 checkpoint (no model_config/model)")
    return payload


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[DeepSpeech2, Alphabet]:
    """The model of a checkpoint, in eval mode, and its alphabet."""
    payload = load_checkpoint(path)
    config = ModelConfig.from_dict(payload["model_config"])
    model = DeepSpeech2(config)
    model.load_state_dict(payload["model"])
    model.to(device).eval()
    return model, Alphabet(config.alphabet)


def _python_rng_state():
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _set_python_rng_state(saved) -> None:
    version, internal, gauss = saved
    random.setstate((version, tuple(internal), gauss))


def _worker_init(_worker_id: int) -> None:
    torch.set_num_threads(1)  # the main process owns the cores for the model


def make_loader(dataset: SpeechDataset, batches: list[list[int]], num_workers: int):
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=batches,
        collate_fn=collate,
        num_workers=num_workers,
        worker_init_fn=_worker_init if num_workers else None,
        multiprocessing_context="fork" if num_workers else None,
    )


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


def train_step(model, optimizer, batch: Batch, device, config: TrainConfig) -> StepResult:
    """One optimizer step: loss, backward, clip, update; non-finite gradients skip the update."""
    optimizer.zero_grad(set_to_none=True)
    loss, result = compute_loss(model, batch, device, config.ctc_backend)
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
    """Dev loss, greedy WER and CER (%) over a dataset."""
    model.eval()
    batches = make_batches(dataset.durations, math.inf, batch_size)
    loss_sum, n_loss, pairs = 0.0, 0, []
    for batch in make_loader(dataset, batches, num_workers):
        for index, message in batch.failures:  # unreadable audio scores as all deletions
            log.warning("dev: %s", message)
            pairs.append((dataset.alphabet.normalize(dataset.records[index]["text"]), ""))
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
            reference = dataset.alphabet.normalize(dataset.records[index]["text"])
            pairs.append((reference, hypothesis))
    model.train()
    report = score_pairs(pairs)
    return (loss_sum / n_loss if n_loss else math.nan), report.wer, report.cer


# --------------------------------------------------------------------------- the loop


def train(config: TrainConfig, alphabet: Alphabet | None = None) -> TrainState:
    """Train a model as configured; returns the final TrainState."""
    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if config.threads:
        torch.set_num_threads(config.threads)
    device = select_device(config.device)
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"

    resume_payload = None
    if config.resume:
        if not last_path.exists():
            raise ValueError(f"--resume: no {last_path} to continue from")
        resume_payload = load_checkpoint(last_path)
        model_config = ModelConfig.from_dict(resume_payload["model_config"])
        alphabet = Alphabet(model_config.alphabet)
    else:
        alphabet = alphabet or Alphabet()
        model_config = config.model
        model_config.alphabet = alphabet.to_list()
        model_config.n_outputs = len(alphabet)
        torch.manual_seed(config.seed)
        random.seed(config.seed)

    train_set = SpeechDataset(config.train_manifest, alphabet, config.max_duration)
    dev_set = SpeechDataset(config.dev_manifest, alphabet)
    for message in train_set.skipped + dev_set.skipped:
        log.warning("skipped: %s", message)
    if len(train_set) == 0:
        raise ValueError(f"{config.train_manifest}: no usable utterances")
    if len(dev_set) == 0:
        raise ValueError(f"{config.dev_manifest}: no usable utterances")

    model = DeepSpeech2(model_config).to(device)
    optimizer = build_optimizer(model, config)
    state = TrainState()
    if resume_payload is not None:
        model.load_state_dict(resume_payload["model"])
        optimizer.load_state_dict(resume_payload["optimizer"])
        state = TrainState(**resume_payload["train_state"])
        torch.set_rng_state(resume_payload["rng"]["torch"])
        _set_python_rng_state(resume_payload["rng"]["python"])
        if resume_payload["rng"]["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(resume_payload["rng"]["cuda"])
        log.info("resumed from %s at epoch %d, batch %d, step %d", last_path, state.epoch, state.batches_done, state.step)

    batch_seconds = config.batch_seconds if config.batch_seconds > 0 else math.inf
    batches = make_batches(train_set.durations, batch_seconds, config.batch_size)
    total_audio = sum(train_set.durations)
    ctc_backend = ctc.resolve_backend(config.ctc_backend, device)
    log.info(
        "model: %.2fM parameters; train: %d utterances (%.2f h, %d skipped) in %d batches; dev: %d; device: %s; CTC: %s",
        model.n_parameters() / 1e6, len(train_set), total_audio / 3600, len(train_set.skipped),
        len(batches), len(dev_set), device, ctc_backend,
    )

    logger = RunLogger(out_dir, append=resume_payload is not None)
    model.train()
    try:
        while state.epoch < config.epochs:
            stopped = _train_epoch(model, optimizer, train_set, batches, state, config, device, logger)
            if stopped:
                save_checkpoint(last_path, model, optimizer, state, config)
                log.info("stopped after %d steps (max_steps); resume with --resume", state.step)
                return state
            dev_loss, dev_wer, dev_cer = evaluate(model, dev_set, device, config.ctc_backend, config.batch_size)
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
            if improved:
                save_checkpoint(best_path, model, None, state, config)
            save_checkpoint(last_path, model, optimizer, state, config)
    except KeyboardInterrupt:
        save_checkpoint(last_path, model, optimizer, state, config)
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


def _train_epoch(model, optimizer, train_set, batches, state: TrainState, config, device, logger) -> bool:
    """Run the rest of the current epoch; True if max_steps stopped it early."""
    lr = epoch_lr(config, state.epoch)
    for group in optimizer.param_groups:
        group["lr"] = lr
    order = epoch_batch_order(len(batches), state.epoch, config.seed, config.sortagrad)
    remaining = [batches[i] for i in order[state.batches_done :]]
    loader = make_loader(train_set, remaining, config.num_workers)
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
        if len(batch):
            result = train_step(model, optimizer, batch, device, config)
            state.skipped_unaligned += result.n_unaligned
            state.skipped_nonfinite += result.n_nonfinite
            if result.n_used and not result.applied:
                state.skipped_steps += 1
            applied = result.applied
            if applied:
                state.step += 1
                seconds = float(batch.feature_lengths.sum()) / 100.0
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
            save_checkpoint(Path(config.out_dir) / "last.pt", model, optimizer, state, config)
    bar.close()
    return False


class RunLogger:
    """log.csv (steps), epochs.csv, TensorBoard events, and the curves PNG."""

    STEP_FIELDS = ["step", "epoch", "lr", "loss", "grad_norm", "audio_seconds_per_second"]
    EPOCH_FIELDS = [
        "epoch", "step", "lr", "dev_loss", "dev_wer", "dev_cer", "skipped_unaligned",
        "skipped_load", "skipped_nonfinite", "skipped_steps", "audio_hours",
    ]

    def __init__(self, out_dir: Path, append: bool):
        self.out_dir = out_dir
        self.step_file, self.step_writer = self._open("log.csv", self.STEP_FIELDS, append)
        self.epoch_file, self.epoch_writer = self._open("epochs.csv", self.EPOCH_FIELDS, append)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(str(out_dir / "tensorboard"))
        except ImportError:  # tensorboard is a declared dependency; stay usable without it
            self.tensorboard = None

    def _open(self, name: str, fieldnames: list[str], append: bool):
        path = self.out_dir / name
        fresh = not (append and path.exists())
        handle = open(path, "w" if fresh else "a", newline="", encoding="utf-8")
        writer = csv.DictWriter(handle, fieldnames=fieldnames)
        if fresh:
            writer.writeheader()
        return handle, writer

    def step_row(self, state: TrainState, lr: float, loss: float, grad_norm: float, speed: float) -> None:
        row = dict(step=state.step, epoch=state.epoch + 1, lr=lr, loss=round(loss, 4),
                   grad_norm=round(grad_norm, 3), audio_seconds_per_second=round(speed, 1))
        scalars = {"train/loss": loss, "train/grad_norm": grad_norm, "train/lr": lr,
                   "train/audio_seconds_per_second": speed}
        self._emit(self.step_file, self.step_writer, row, scalars, state.step)

    def epoch_row(self, state: TrainState, lr: float, dev_loss: float, dev_wer: float, dev_cer: float) -> None:
        row = dict(
            epoch=state.epoch + 1, step=state.step, lr=lr, dev_loss=round(dev_loss, 4),
            dev_wer=round(dev_wer, 2), dev_cer=round(dev_cer, 2),
            skipped_unaligned=state.skipped_unaligned, skipped_load=state.skipped_load,
            skipped_nonfinite=state.skipped_nonfinite, skipped_steps=state.skipped_steps,
            audio_hours=round(state.audio_seconds / 3600, 3),
        )
        scalars = {"dev/loss": dev_loss, "dev/wer": dev_wer, "dev/cer": dev_cer}
        self._emit(self.epoch_file, self.epoch_writer, row, scalars, state.step)

    def _emit(self, handle, writer: csv.DictWriter, row: dict, scalars: dict, step: int) -> None:
        """One CSV row (flushed, so a crash loses nothing) and its TensorBoard scalars."""
        writer.writerow(row)
        handle.flush()
        if self.tensorboard:
            for tag, value in scalars.items():
                self.tensorboard.add_scalar(tag, value, step)

    def close(self) -> None:
        self.step_file.close()
        self.epoch_file.close()
        if self.tensorboard:
            self.tensorboard.close()

    def plot(self, path: Path) -> None:
        plot_curves(self.out_dir / "log.csv", self.out_dir / "epochs.csv", path)


def plot_curves(step_csv: Path, epoch_csv: Path, path: Path) -> None:
    """PNG: training loss per step with dev loss per epoch; dev WER/CER per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    steps = list(csv.DictReader(open(step_csv, encoding="utf-8")))
    epochs = list(csv.DictReader(open(epoch_csv, encoding="utf-8")))
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
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
        axis.legend()
    figure.tight_layout()
    with atomic_write(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=100)
    plt.close(figure)
