"""Training throughput: audio hours per hour of ds2's DS2 models against a plain-PyTorch DS2.

    .venv/bin/python benchmarks/train_throughput.py                 # CPU: tiny and small, batch 4
    python benchmarks/train_throughput.py --device cuda --configs small,large --precision bf16 \\
        --csv throughput_cuda_bf16.csv                              # a GPU: bf16 autocast, batch 64

Configurations (DS2's layer sizes; 29 outputs, 161 spectrogram bins):
- tiny: recipes/tiny's model: conv 32/16 channels, 41x11 and 21x11 filters, strides 2x3 and 2x1;
  2 bidirectional GRU layers of 256; FC 256.
- small: DS2's 2 conv layers (32/32, 41x11 and 21x11, strides 2x2 and 2x1); 3 bidirectional GRU
  layers of 512; FC 512.
- large: DS2's 3 conv layers (32/32/96, 41x11, 21x11, 21x11, strides 2x2, 2x1, 2x1); 7
  bidirectional simple (ReLU) RNN layers of 1760; FC 1760: about 92M parameters.

The two models, with the same layer sizes (their parameter counts are printed):
- ours: ds2.model.DeepSpeech2 trained by ds2.train.train_step, what `ds2 train` runs per step:
  sequence-wise BatchNorm of the input products over real frames only, folded into the fused
  bidirectional RNN kernel over the padded batch; ds2.ctc.ctc_loss, backend auto (our CUDA kernel
  on a GPU, numba on the CPU); fused SGD; clipping without a host read.
- baseline: the layout of the popular DS2 port (SeanNaren's deepspeech.pytorch), written here in
  plain PyTorch: MaskConv (Conv2d, BatchNorm2d, Hardtanh(0, 20), padded frames zeroed after each
  module), then per layer SequenceWise(BatchNorm1d) over every time step + nn.GRU / nn.RNN(relu)
  bidirectional on pack_padded_sequence, directions summed; FC with BatchNorm; log_softmax and
  nn.CTCLoss (sum, zero_infinity, divided by the batch size); SGD as torch.optim builds it.
  Its masks are built on the device in one comparison (the port's per-utterance Python loop over
  .item() would only make the peer slower), and it reads no loss back per step.
Both take the same step: zero the gradients, forward (under the same autocast), loss, backward,
clip the global norm to 400, SGD step (Nesterov momentum 0.99, lr 1e-4), on the same minibatch.

Data: one minibatch of --batch utterances with durations uniform in --seconds (seed --seed),
random N(0, 1) features at 100 frames/s (zero padding), labels of 15 characters per second
drawn uniformly from the 28 symbols; the same CPU tensors for both models (pinned on a GPU),
copied to the device at every step as the loader's batches are.

Measurement: for each configuration, --repeats rounds; each round builds each model afresh
(seeded), runs --warmup untimed steps, then --steps timed steps (the device synchronized before
and after), alternating which model goes first, so that drift of the machine's load falls on
both. Before the first round, one step of each model on a 2-utterance batch takes the one-off
costs (numba's JIT, our CUDA extension's load, cuDNN's handles).

Columns:
- params: parameters of the model (ours counts BatchNorm of the gate products, the baseline
  BatchNorm of the inputs and the RNN's two biases).
- audio s/step: the real (unpadded) audio of the minibatch.
- steps/s: median over the rounds; audio-h/h = audio s/step x steps/s (hours of audio trained per
  hour). ratio: ours / baseline of the same configuration.
- peak MiB: memory training takes beyond the shared input tensors (weights, gradients, optimizer
  state, activations, workspaces), the most of any round. CUDA: max_memory_allocated after
  reset_peak_memory_stats minus memory_allocated before the model was built. CPU: the peak resident
  set (VmHWM, reset through /proc/self/clear_refs after malloc_trim) minus the resident set before
  the model was built (ru_maxrss growth where /proc cannot be reset: a lower bound).
- syncs/step (CUDA): host synchronizations per step, counted from the warnings of
  torch.cuda.set_sync_debug_mode("warn") over 2 extra steps after the timed ones (backward's
  warnings included: autograd replays them to the caller).
- TFLOP/s and MFU (CUDA): model FLOPs counted analytically over the real frames (2 x multiply-
  adds of the convolutions, the input and recurrent products of every RNN direction and the FC
  layers; elementwise work, BatchNorm and CTC not counted), x 3 for forward + backward, the same
  count for both models, per second; MFU divides by the device's dense bf16 peak (PEAK_TFLOPS,
  matched on the device name, or --peak-tflops), whatever --precision is.

Target (issue 12): the large configuration at >= 1.5x the baseline on an H100.
"""

from __future__ import annotations

import argparse
import gc
import re
import statistics
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.ctc import fmt, is_oom, parse_seconds, peak_rss_growth, start_peak_rss, write_csv  # noqa: E402
from ds2 import audio, ctc  # noqa: E402
from ds2.data import Batch  # noqa: E402
from ds2.io import compact_heap  # noqa: E402
from ds2.model import CLIP, DeepSpeech2, ModelConfig  # noqa: E402
from ds2.train import TrainConfig, autocast_dtype, backend_settings, build_optimizer, train_step  # noqa: E402

CONFIGS = {
    "tiny": ModelConfig(conv_layers=2, conv_channels=(32, 16), conv_kernels=((41, 11), (21, 11)),
                        conv_strides=((2, 3), (2, 1)), rnn_type="gru", rnn_layers=2, rnn_hidden=256, fc_hidden=256),
    "small": ModelConfig(conv_layers=2, rnn_type="gru", rnn_layers=3, rnn_hidden=512, fc_hidden=512),
    "large": ModelConfig(conv_layers=3, rnn_type="rnn", rnn_layers=7, rnn_hidden=1760, fc_hidden=1760),
}
# Dense bf16 tensor-core peaks (TFLOP/s) from the vendor's data sheets, matched in this order
# on torch.cuda.get_device_name().
PEAK_TFLOPS = (
    (r"H100 PCIe", 756.0),
    (r"H100|H200|GH200", 989.0),
    (r"A100", 312.0),
    (r"L40S", 362.0),
    (r"\bL4\b", 121.0),
    (r"\bA10\b", 125.0),
)
CHARS_PER_SECOND = 15.0
LEARNING_RATE = 1e-4
MOMENTUM = 0.99
GRAD_CLIP = 400.0
SYNC_COUNT_STEPS = 2
CSV_FIELDS = ["device", "precision", "threads", "config", "model", "params", "batch", "seconds", "audio_s_per_step",
              "steps_per_s", "audio_h_per_h", "ratio_ours_over_baseline", "peak_mib", "syncs_per_step", "tflops",
              "mfu", "ctc", "status"]


# ---------------------------------------------------------------------------------- the baseline


class SequenceWise(nn.Module):
    """A module applied at every time step: (T, B, H) -> (T * B, H) -> module -> (T, B, H')."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n_steps, batch = x.shape[:2]
        return self.module(x.reshape(n_steps * batch, -1)).view(n_steps, batch, -1)


class MaskConv(nn.Module):
    """The conv stack; after every module the frames beyond each utterance's length are zeroed."""

    def __init__(self, modules: nn.Sequential):
        super().__init__()
        self.seq_module = modules

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """x: shape = (B, 1, F, T); lengths: shape = (B,), the input frames (CPU)."""
        for module in self.seq_module:
            x = module(x)
            if isinstance(module, nn.Conv2d):
                kernel, stride, pad = module.kernel_size[1], module.stride[1], module.padding[1]
                lengths = torch.div(lengths + 2 * pad - kernel, stride, rounding_mode="floor") + 1
                padded = torch.arange(x.shape[-1]) >= lengths[:, None]  # B x T
                padded = padded.to(x.device, non_blocking=True)[:, None, None, :]
            x = x.masked_fill(padded, 0)
        return x


class BatchRNN(nn.Module):
    """BatchNorm1d of the inputs at every time step, then a bidirectional GRU or ReLU RNN over
    the packed sequences; the two directions are summed."""

    def __init__(self, input_size: int, hidden_size: int, rnn_type: str, bidirectional: bool):
        super().__init__()
        self.batch_norm = SequenceWise(nn.BatchNorm1d(input_size))
        kind = nn.GRU if rnn_type == "gru" else lambda *a, **k: nn.RNN(*a, nonlinearity="relu", **k)
        self.rnn = kind(input_size, hidden_size, bidirectional=bidirectional, bias=True)
        self.bidirectional = bidirectional

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """x: shape = (T, B, input_size); lengths: shape = (B,) on the CPU. Returns (T, B, H)."""
        n_steps, batch = x.shape[:2]
        x = self.batch_norm(x)
        x = pack_padded_sequence(x, lengths, enforce_sorted=False)
        x, _ = self.rnn(x)
        x, _ = pad_packed_sequence(x, total_length=n_steps)  # T x B x dirs*H
        if self.bidirectional:
            x = x.view(n_steps, batch, 2, -1).sum(2)
        return x


class BaselineDS2(nn.Module):
    """deepspeech.pytorch's DS2 layout with ``config``'s layer sizes: features (B, F, T) ->
    logits (T', B, n_outputs) and output lengths (B,) on the CPU."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        modules, channels, n_freq = [], 1, config.n_freq
        for layer in range(config.conv_layers):
            kernel, stride = config.conv_kernels[layer], config.conv_strides[layer]
            out_channels = config.conv_channels[layer]
            modules += [
                nn.Conv2d(channels, out_channels, kernel, stride, padding=(kernel[0] // 2, kernel[1] // 2)),
                nn.BatchNorm2d(out_channels),
                nn.Hardtanh(0, CLIP, inplace=True),
            ]
            channels = out_channels
            n_freq = (n_freq + 2 * (kernel[0] // 2) - kernel[0]) // stride[0] + 1
        self.conv = MaskConv(nn.Sequential(*modules))
        self.rnns = nn.ModuleList(
            BatchRNN(channels * n_freq if layer == 0 else config.rnn_hidden, config.rnn_hidden, config.rnn_type,
                     config.bidirectional)
            for layer in range(config.rnn_layers)
        )
        self.fc = SequenceWise(nn.Sequential(
            nn.BatchNorm1d(config.rnn_hidden),
            nn.Linear(config.rnn_hidden, config.fc_hidden),
            nn.Hardtanh(0, CLIP, inplace=True),
            nn.Linear(config.fc_hidden, config.n_outputs),
        ))

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        for module in self.conv.seq_module:
            if isinstance(module, nn.Conv2d):
                kernel, stride, pad = module.kernel_size[1], module.stride[1], module.padding[1]
                lengths = torch.div(lengths + 2 * pad - kernel, stride, rounding_mode="floor") + 1
        return lengths

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.conv(features.unsqueeze(1), lengths)  # B x C x F' x T'
        batch, channels, n_freq, n_steps = x.shape
        x = x.view(batch, channels * n_freq, n_steps).permute(2, 0, 1)  # T' x B x C*F'
        output_lengths = self.output_lengths(lengths)
        for rnn in self.rnns:
            x = rnn(x, output_lengths)  # T' x B x H
        return self.fc(x), output_lengths  # T' x B x n_outputs


def n_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------- steps


def make_batch(batch_size: int, seconds: tuple[float, float], n_outputs: int, seed: int) -> Batch:
    """A minibatch as the loader gives it (CPU tensors, zero-padded); see the module docstring."""
    generator = torch.Generator().manual_seed(seed)
    durations = seconds[0] + (seconds[1] - seconds[0]) * torch.rand(batch_size, generator=generator, dtype=torch.float64)
    frames = torch.round(durations * audio.FRAMES_PER_SECOND).long().clamp(min=1)
    label_lengths = torch.round(durations * CHARS_PER_SECOND).long().clamp(min=1)
    features = torch.randn(batch_size, audio.N_FREQ, int(frames.max()), generator=generator)
    features *= torch.arange(features.shape[-1]) < frames[:, None, None]
    labels = torch.randint(1, n_outputs, (batch_size, int(label_lengths.max())), generator=generator)
    labels *= torch.arange(labels.shape[1]) < label_lengths[:, None]
    return Batch(features, frames, labels, label_lengths, list(range(batch_size)), [])


@dataclass
class Trainer:
    """One model with its optimizer and a ``step()`` over the benchmark's minibatch."""

    model: nn.Module
    step: Callable[[], None]
    ctc_backend: str


def ours(config: ModelConfig, batch: Batch, device: torch.device, precision: str) -> Trainer:
    model = DeepSpeech2(config).to(device).train()
    train_config = TrainConfig("-", "-", "-", optimizer="sgd", lr=LEARNING_RATE, momentum=MOMENTUM,
                               grad_clip=GRAD_CLIP, model=config)
    optimizer = build_optimizer(model, train_config)
    backend = ctc.resolve_backend("auto", device)
    dtype = autocast_dtype(precision, device)
    fits = ctc.feasible(batch.labels, batch.label_lengths, model.output_lengths(batch.feature_lengths))
    if not bool(fits.all()):
        raise ValueError("the benchmark's labels do not fit the model's output steps: lower --seconds' spread")

    def step() -> None:
        train_step(model, model, optimizer, batch, device, train_config, backend, precision=dtype)

    return Trainer(model, step, backend)


def baseline(config: ModelConfig, batch: Batch, device: torch.device, precision: str) -> Trainer:
    model = BaselineDS2(config).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM, nesterov=True)
    dtype = autocast_dtype(precision, device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        features = batch.features.to(device, non_blocking=True)
        labels = batch.labels.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            logits, output_lengths = model(features, batch.feature_lengths)
            log_probs = logits.log_softmax(-1)  # T' x B x V; float32 under autocast
            loss = nn.functional.ctc_loss(log_probs, labels, output_lengths, batch.label_lengths, blank=0,
                                          reduction="sum", zero_infinity=True) / len(batch)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        optimizer.step()

    return Trainer(model, step, "torch")


MODELS = {"ours": ours, "baseline": baseline}


# ---------------------------------------------------------------------------------- measuring


@dataclass
class Run:
    steps_per_second: float
    peak_mib: float
    syncs_per_step: float | None
    ctc_backend: str


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def count_syncs(step, device: torch.device, n_steps: int = SYNC_COUNT_STEPS) -> float:
    """Host synchronizations per step: warnings of torch.cuda.set_sync_debug_mode("warn")."""
    synchronize(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for _ in range(n_steps):
                step()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    synchronize(device)
    return sum("synchroniz" in str(w.message).lower() for w in caught) / n_steps


def release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def measure(kind: str, config: ModelConfig, batch: Batch, device: torch.device, precision: str, warmup: int,
            steps: int) -> Run:
    """Build the model afresh, warm up, time ``steps`` steps; see the module docstring."""
    release(device)
    if device.type == "cuda":
        held = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    else:
        window = start_peak_rss()
    torch.manual_seed(0)
    trainer = MODELS[kind](config, batch, device, precision)
    for _ in range(warmup):
        trainer.step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        trainer.step()
    synchronize(device)
    elapsed = time.perf_counter() - start
    if device.type == "cuda":
        peak_mib = (torch.cuda.max_memory_allocated(device) - held) / 2**20
        syncs = count_syncs(trainer.step, device)
    else:
        peak_mib, syncs = peak_rss_growth(window), None
    backend = trainer.ctc_backend
    del trainer
    release(device)
    return Run(steps / elapsed, peak_mib, syncs, backend)


def training_flops(config: ModelConfig, frames: list[int]) -> float:
    """Forward + backward FLOPs (3 x the forward's 2 x multiply-adds) of one step over the real
    frames of utterances of ``frames`` input frames each."""
    total = 0
    gates = {"gru": 3, "rnn": 1}[config.rnn_type]
    directions = 2 if config.bidirectional else 1
    for n_steps in frames:
        n_freq, channels = config.n_freq, 1
        for layer in range(config.conv_layers):
            (k_freq, k_time), (s_freq, s_time) = config.conv_kernels[layer], config.conv_strides[layer]
            out_channels = config.conv_channels[layer]
            n_freq = (n_freq + 2 * (k_freq // 2) - k_freq) // s_freq + 1
            n_steps = (n_steps + 2 * (k_time // 2) - k_time) // s_time + 1
            total += 2 * k_freq * k_time * channels * out_channels * n_freq * n_steps
            channels = out_channels
        inputs = channels * n_freq
        for _ in range(config.rnn_layers):
            total += 2 * directions * gates * config.rnn_hidden * (inputs + config.rnn_hidden) * n_steps
            inputs = config.rnn_hidden
        total += 2 * (config.rnn_hidden * config.fc_hidden + config.fc_hidden * config.n_outputs) * n_steps
    return 3.0 * total


def peak_tflops(device: torch.device, override: float | None) -> tuple[float | None, str]:
    if override:
        return override, "--peak-tflops"
    if device.type != "cuda":
        return None, "no peak for the CPU"
    name = torch.cuda.get_device_name(device)
    for pattern, tflops in PEAK_TFLOPS:
        if re.search(pattern, name):
            return tflops, f"{name} dense bf16"
    return None, f"{name}: unknown peak (give --peak-tflops)"


# ---------------------------------------------------------------------------------- output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"))
    parser.add_argument("--configs", help=f"comma-separated, of {', '.join(CONFIGS)} (default: tiny,small on the "
                        "CPU, all on cuda)")
    parser.add_argument("--batch", type=int, help="utterances per minibatch (default: 4 on the CPU, 64 on cuda)")
    parser.add_argument("--seconds", type=parse_seconds, default=(10.0, 15.0),
                        help="utterance durations, uniform in LOW,HIGH seconds (default 10,15)")
    parser.add_argument("--steps", type=int, help="timed steps per round (default: 3 on the CPU, 20 on cuda)")
    parser.add_argument("--warmup", type=int, help="untimed steps before them (default: 1 on the CPU, 3 on cuda)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds per model (median)")
    parser.add_argument("--precision", choices=("fp32", "tf32", "bf16"),
                        help="fp32 (TF32 off), tf32 (TF32 products on a GPU) or bf16 autocast (cuda only; "
                             "default: bf16 on cuda, fp32 on the CPU)")
    parser.add_argument("--peak-tflops", type=float, help="the device's peak for MFU (default: from PEAK_TFLOPS)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--csv", help="also write the rows here")
    args = parser.parse_args()
    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    if on_gpu:
        if not torch.cuda.is_available():
            parser.error("--device cuda: no usable CUDA device here")
        device = torch.device("cuda", torch.cuda.current_device())
    configs = (args.configs or ("tiny,small,large" if on_gpu else "tiny,small")).split(",")
    unknown = [name for name in configs if name not in CONFIGS]
    if unknown:
        parser.error(f"--configs: unknown {', '.join(unknown)} (known: {', '.join(CONFIGS)})")
    batch_size = args.batch or (64 if on_gpu else 4)
    steps = args.steps or (20 if on_gpu else 3)
    warmup = args.warmup if args.warmup is not None else (3 if on_gpu else 1)
    precision = args.precision or ("bf16" if on_gpu else "fp32")
    if precision == "bf16" and not on_gpu:
        parser.error("--precision bf16 is for cuda (the baseline's nn.GRU has no CPU autocast path)")
    if not on_gpu:
        compact_heap()  # what `ds2 train` does: large tensors from mmap, so rounds do not inherit a grown heap
    peak, peak_source = peak_tflops(device, args.peak_tflops)

    name = torch.cuda.get_device_name(device) if on_gpu else "CPU"
    print(f"device: {name}; torch {torch.__version__}; {torch.get_num_threads()} torch threads; precision {precision}; "
          f"CTC: ours {ctc.resolve_backend('auto', device)}, baseline torch (nn.CTCLoss)")
    print(f"data: {batch_size} utterances of {args.seconds[0]:g}-{args.seconds[1]:g} s (seed {args.seed}), "
          f"{audio.N_FREQ} features x 100 frames/s, {CHARS_PER_SECOND:g} labels/s; the same tensors for both")
    print(f"timing: median of {args.repeats} rounds of {steps} steps after {warmup} warm-up, alternating; "
          f"peak memory: {'max_memory_allocated' if on_gpu else 'peak resident set'} beyond the inputs"
          + (f"; MFU of {fmt(peak)} TFLOP/s ({peak_source})" if on_gpu else ""))
    print()
    columns = ["config", "model", "params", "batch", "audio s/step", "steps/s", "audio-h/h", "ratio ours/baseline",
               "peak MiB"] + (["syncs/step", "TFLOP/s", "MFU"] if on_gpu else [])
    print("| " + " | ".join(columns) + " |")
    print("|" + "|".join("---" if i < 2 else "---:" for i in range(len(columns))) + "|", flush=True)

    rows: list[dict] = []
    with backend_settings(device, precision, deterministic=False):
        for config_name in configs:
            config = CONFIGS[config_name]
            batch = make_batch(batch_size, args.seconds, config.n_outputs, args.seed)
            warm = make_batch(2, (1.0, 1.0), config.n_outputs, args.seed)
            if on_gpu:
                batch, warm = batch.pin_memory(), warm.pin_memory()
            audio_seconds = audio.frames_to_seconds(float(batch.feature_lengths.sum()))
            flops = training_flops(config, batch.feature_lengths.tolist())
            params = {"ours": n_parameters(DeepSpeech2(config)), "baseline": n_parameters(BaselineDS2(config))}
            runs: dict[str, list[Run]] = {kind: [] for kind in MODELS}
            status: dict[str, str] = {kind: "ok" for kind in MODELS}
            for kind in MODELS:  # one-off costs, outside every round
                try:
                    measure(kind, config, warm, device, precision, warmup=1, steps=1)
                except Exception as error:  # noqa: BLE001 - the row says it
                    status[kind] = _failure(error)
            for repeat in range(args.repeats):
                for kind in (MODELS if repeat % 2 == 0 else reversed(list(MODELS))):
                    if status[kind] != "ok":
                        continue
                    try:
                        runs[kind].append(measure(kind, config, batch, device, precision, warmup, steps))
                    except Exception as error:  # noqa: BLE001
                        status[kind] = _failure(error)
                        release(device)
            speed = {kind: statistics.median(r.steps_per_second for r in runs[kind]) if runs[kind] else None
                     for kind in MODELS}
            for kind in MODELS:
                rate = speed[kind]
                ratio = rate / speed["baseline"] if rate and speed["baseline"] and kind == "ours" else None
                syncs = [r.syncs_per_step for r in runs[kind] if r.syncs_per_step is not None]
                tflops = flops * rate / 1e12 if rate else None
                row = {
                    "device": name, "precision": precision, "threads": torch.get_num_threads(), "config": config_name,
                    "model": kind, "params": params[kind], "batch": batch_size,
                    "seconds": f"{args.seconds[0]:g}-{args.seconds[1]:g}", "audio_s_per_step": round(audio_seconds, 2),
                    "steps_per_s": rate, "audio_h_per_h": audio_seconds * rate if rate else None,
                    "ratio_ours_over_baseline": ratio,
                    "peak_mib": max(r.peak_mib for r in runs[kind]) if runs[kind] else None,
                    "syncs_per_step": max(syncs) if syncs else None, "tflops": tflops if on_gpu else None,
                    "mfu": tflops / peak if on_gpu and tflops and peak else None,
                    "ctc": runs[kind][0].ctc_backend if runs[kind] else None, "status": status[kind],
                }
                rows.append(row)
                cells = [config_name, kind + ("" if status[kind] == "ok" else f" ({status[kind]})"),
                         f"{params[kind] / 1e6:.2f}M", str(batch_size), fmt(audio_seconds), fmt(rate),
                         fmt(row["audio_h_per_h"]), fmt(ratio) + ("x" if ratio else ""), fmt(row["peak_mib"])]
                if on_gpu:
                    cells += [fmt(row["syncs_per_step"]), fmt(tflops),
                              f"{100 * row['mfu']:.1f} %" if row["mfu"] is not None else "-"]
                print("| " + " | ".join(cells) + " |", flush=True)
    if "large" in configs and on_gpu:
        large = next(r for r in rows if r["config"] == "large" and r["model"] == "ours")
        ratio = large["ratio_ours_over_baseline"]
        print(f"\ntarget (issue 12, on an H100): large >= 1.5x the baseline: {fmt(ratio)}x, "
              f"{'met' if ratio and ratio >= 1.5 else 'NOT met'} on {name}")
    if args.csv:
        write_csv(args.csv, rows, CSV_FIELDS)


def _failure(error: BaseException) -> str:
    if is_oom(error):
        return "OOM"
    traceback.print_exc()
    return f"error: {type(error).__name__}"


if __name__ == "__main__":
    main()
