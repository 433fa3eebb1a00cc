"""Per-step cost of ds2's recurrent layer variants against PyTorch's fused GRU (cuDNN on a GPU).

Every row is one recurrent layer as ds2 builds it (ds2.model.recurrent_layer), in training
mode: forward over a padded batch, then backward of the outputs' sum. The fused rows run
PyTorch's RNN kernels; the others run ds2.recurrent's TorchScript loop, and for each of those
the same loop run eagerly (a Python loop per time step, what the TorchScript loop replaces)
is the peer measured beside it.

    .venv/bin/python benchmarks/rnn_variants.py                        # the tiny recipe's layer
    .venv/bin/python benchmarks/rnn_variants.py --device cuda --batch 64 --steps 500 --hidden 800

Columns: ms per step (forward + backward of the whole batch, divided by the steps; median of
--repeats after two warm-up runs), x fused GRU (the row over the fused GRU + sequence-BN row), and
for loop variants "eager / script": the Python loop's time over the TorchScript loop's.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from ds2.model import ModelConfig, recurrent_layer, time_mask
from ds2.recurrent import ScanLayer, scan_eager

VARIANTS = [
    ("gru", "batch"), ("gru", "none"), ("relu", "batch"), ("lstm", "batch"),
    ("rnn", "batch"), ("rnn", "none"), ("gru", "recurrent"), ("gru", "layer"),
    ("lstm", "recurrent"), ("lstm", "layer"), ("rnn", "layer"),
]


def time_layer(layer, x, lengths, mask, repeats: int, device: torch.device) -> float:
    def once() -> float:
        layer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        layer(x, lengths, mask).sum().backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    for _ in range(2):  # TorchScript's profiling executor optimizes the loop after its first runs
        once()
    return statistics.median(once() for _ in range(repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=200, help="Time steps of the longest utterance.")
    parser.add_argument("--input", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--unidirectional", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--no-eager", action="store_true", help="Skip the eager-loop peer rows.")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    lengths = torch.randint(args.steps // 2, args.steps + 1, (args.batch,))
    lengths[0] = args.steps
    mask = time_mask(lengths, args.steps).t().to(device)
    lengths = lengths.to(device)
    x = torch.randn(args.steps, args.batch, args.input, device=device)
    print(f"device {device}, batch {args.batch}, steps {args.steps}, input {args.input}, hidden {args.hidden}, "
          f"{'uni' if args.unidirectional else 'bi'}directional, torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads")
    print(f"{'cell':6} {'norm':10} {'kernel':8} {'ms/step':>9} {'x fused GRU':>12} {'eager ms/step':>14} {'eager/script':>13}")
    reference = None
    for rnn_type, norm in VARIANTS:
        config = ModelConfig(rnn_type=rnn_type, rnn_norm=norm, rnn_hidden=args.hidden,
                             bidirectional=not args.unidirectional)
        torch.manual_seed(0)
        layer = recurrent_layer(args.input, config).to(device).train()
        seconds = time_layer(layer, x, lengths, mask, args.repeats, device) / args.steps
        reference = reference or seconds
        eager = ""
        if isinstance(layer, ScanLayer) and not args.no_eager:
            layer.scan = scan_eager
            slow = time_layer(layer, x, lengths, mask, args.repeats, device) / args.steps
            eager = f"{slow * 1e3:14.3f} {slow / seconds:13.2f}"
        kernel = "fused" if config.fused else "script"
        print(f"{rnn_type:6} {norm:10} {kernel:8} {seconds * 1e3:9.3f} {seconds / reference:12.2f} {eager}", flush=True)


if __name__ == "__main__":
    main()
