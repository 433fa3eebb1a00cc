"""The Python pieces of scripts/gpu_check.sh (each prints what it checked and exits 1 on a failure).

    python scripts/gpu_check.py corpus DIR                 # a tone corpus: DIR/train.json, DIR/dev.json
    python scripts/gpu_check.py check-train RUN --steps 60 [--resumed-from 60] [--device cuda]
    python scripts/gpu_check.py parity [--device cuda]     # the same model and batch on the CPU and the device
    python scripts/gpu_check.py syncs [--device cuda]      # host synchronizations per training step

corpus: every character is 80 ms of its own tone (a space is 80 ms of silence), so a small model
learns the texts within ~100 steps; WAV files written with the standard library. It stands in for
the eSpeak corpus of the recipes, whose synthesizer is not installed on the GPU machines.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import random
import sys
import wave
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SAMPLE_RATE = 16000
CHARACTER_SECONDS = 0.08
WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "quick", "brown",
         "fox", "jumps", "over", "lazy", "dog", "it's")
# Tolerances of the fp32 parity (TF32 off): relative to the largest magnitude of each quantity.
PARITY_RTOL = {"logits": 1e-4, "loss": 1e-4, "gradients": 1e-3, "running statistics": 1e-4, "eval logits": 1e-4}


def tone_corpus(directory: Path, n_train: int = 32, n_dev: int = 8, seed: int = 0) -> dict[str, Path]:
    """WAV files and manifests; each text is 2-4 words of WORDS. Returns {"train": path, "dev": path}."""
    symbols = "abcdefghijklmnopqrstuvwxyz'"
    frequency = {char: 200.0 * 2 ** (i / 6) for i, char in enumerate(symbols)}  # 200 Hz to 4 kHz
    rng = random.Random(seed)
    noise = np.random.default_rng(seed)
    n_char = int(CHARACTER_SECONDS * SAMPLE_RATE)
    t = np.arange(n_char) / SAMPLE_RATE
    envelope = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.01)  # 10 ms ramps: no clicks between characters
    manifests = {}
    for split, count in (("train", n_train), ("dev", n_dev)):
        records = []
        for i in range(count):
            text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 4)))
            pieces = [np.zeros(SAMPLE_RATE // 10)]
            for char in text:
                pieces.append(np.zeros(n_char) if char == " " else 0.5 * envelope * np.sin(2 * np.pi * frequency[char] * t))
            pieces.append(np.zeros(SAMPLE_RATE // 10))
            samples = np.concatenate(pieces) + 1e-3 * noise.standard_normal(sum(len(p) for p in pieces))
            path = directory / "wav" / f"{split}{i:03d}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            with wave.open(str(path), "wb") as stream:
                stream.setnchannels(1)
                stream.setsampwidth(2)
                stream.setframerate(SAMPLE_RATE)
                stream.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
            records.append({"audio_filepath": str(path.resolve()), "duration": len(samples) / SAMPLE_RATE, "text": text})
        manifests[split] = directory / f"{split}.json"
        manifests[split].write_text("".join(json.dumps(record) + "\n" for record in records))
    return manifests


class Checks:
    """Named pass/fail lines; ``exit_code`` is 1 if any failed."""

    def __init__(self):
        self.failed = []

    def __call__(self, name: str, ok: bool, detail: str = "") -> None:
        print(f"  {'PASS' if ok else 'FAIL'}  {name}" + (f": {detail}" if detail else ""), flush=True)
        if not ok:
            self.failed.append(name)

    @property
    def exit_code(self) -> int:
        print(f"{len(self.failed)} failed" + (f": {', '.join(self.failed)}" if self.failed else ""))
        return 1 if self.failed else 0


def check_train(run: Path, steps: int, resumed_from: int | None, device: str) -> int:
    """What a `ds2 train` run that stopped at ``steps`` (resumed at ``resumed_from``) must have left."""
    from ds2.checkpoint import load_checkpoint

    check = Checks()
    for name in ("last.pt", "best.pt", "log.csv", "epochs.csv", "run.json", "train.log"):
        check(f"{name} written", (run / name).is_file())
    if check.failed:
        return check.exit_code
    state = load_checkpoint(run / "last.pt")["training"]["state"]
    check("last.pt is at the last step", state["step"] == steps, f"step {state['step']}, expected {steps}")
    info = json.loads((run / "run.json").read_text())
    check("ran on the device asked for", str(info.get("device", "")).startswith(device), f"run.json: {info.get('device')}")
    with open(run / "log.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    logged = [int(row["step"]) for row in rows]
    check("log.csv: every logged step once, in order", logged == sorted(set(logged)) and bool(logged),
          f"steps {logged[:3]} ... {logged[-3:]}")
    check("log.csv reaches the last step", bool(logged) and logged[-1] == steps, f"last logged {logged[-1:]}")
    losses = [float(row["loss"]) for row in rows]
    if losses:
        first, last = losses[0], losses[-1]
        check("loss falls", math.isfinite(last) and last < 0.5 * first,
              f"{first:.3f} (steps to {logged[0]}) -> {last:.3f} (to {logged[-1]}); wanted < half")
    log_text = (run / "train.log").read_text()
    if resumed_from is not None:
        check("run.json: the resumed run started at the saved step", info.get("started_at_step") == resumed_from,
              f"started_at_step {info.get('started_at_step')}")
        check("the second run resumed from the saved step", f"step {resumed_from}" in log_text
              and "resumed from" in log_text, next((line for line in log_text.splitlines() if "resumed from" in line),
                                                   "no 'resumed from' line in train.log"))
        check("rows logged after the resume", any(step > resumed_from for step in logged))
    print(f"  run.json: CTC {info.get('ctc_backend')}, precision {info.get('precision')}")
    return check.exit_code


def max_relative(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """(max |a - b|, that over max |b|), in float64 on the CPU."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    diff = (a - b).abs().max().item() if a.numel() else 0.0
    scale = b.abs().max().item() if b.numel() else 0.0
    return diff, diff / max(scale, 1e-30)


def parity(device: torch.device, config_name: str) -> int:
    """Forward, CTC loss and gradients of one training step, and the eval forward after it, on the
    CPU and on ``device`` from the same weights and batch, in fp32 with TF32 off."""
    from benchmarks.train_throughput import CONFIGS, make_batch
    from ds2 import ctc
    from ds2.model import DeepSpeech2, time_mask

    torch.manual_seed(0)
    config = CONFIGS[config_name]
    batch = make_batch(4, (3.0, 6.0), config.n_outputs, seed=1)
    models = {"cpu": DeepSpeech2(config).train()}
    models["device"] = copy.deepcopy(models["cpu"]).to(device)
    results = {}
    saved = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision("highest")
    torch.backends.cudnn.allow_tf32 = False
    try:
        for where, model in models.items():
            on = torch.device("cpu") if where == "cpu" else device
            backend = ctc.resolve_backend("auto", on)
            logits, lengths = model(batch.features.to(on), batch.feature_lengths.to(on))
            losses = ctc.ctc_loss(logits, batch.labels.to(on), lengths, batch.label_lengths.to(on), reduction="none",
                                  backend=backend)
            losses.sum().backward()
            model.eval()
            with torch.no_grad():
                eval_logits, _ = model(batch.features.to(on), batch.feature_lengths.to(on))
            results[where] = dict(logits=logits, lengths=lengths.cpu(), loss=losses, backend=backend,
                                  gradients={name: p.grad for name, p in model.named_parameters()},
                                  statistics=[b.clone() for b in model.batch_norm_statistics()], eval=eval_logits)
    finally:
        torch.set_float32_matmul_precision(saved[0])
        torch.backends.cudnn.allow_tf32 = saved[1]
    cpu, dev = results["cpu"], results["device"]
    print(f"parity: config {config_name}, batch of {len(batch)} ({batch.feature_lengths.tolist()} frames), fp32, "
          f"TF32 off; CTC {cpu['backend']} (CPU) vs {dev['backend']} ({device})")
    check = Checks()
    check("output lengths equal", torch.equal(cpu["lengths"], dev["lengths"]))
    real = time_mask(cpu["lengths"], cpu["logits"].shape[1])
    comparisons = {
        "logits": (dev["logits"].cpu()[real], cpu["logits"][real]),
        "loss": (dev["loss"], cpu["loss"]),
        "eval logits": (dev["eval"].cpu()[real], cpu["eval"][real]),
        "running statistics": (torch.cat([s.flatten() for s in dev["statistics"]]).cpu(),
                               torch.cat([s.flatten() for s in cpu["statistics"]])),
    }
    for name, (ours, reference) in comparisons.items():
        diff, relative = max_relative(ours, reference)
        check(name, relative <= PARITY_RTOL[name], f"max abs diff {diff:.2e}, {relative:.2e} of the largest "
              f"(tolerance {PARITY_RTOL[name]:g})")
    worst = max(((name, *max_relative(dev["gradients"][name], grad)) for name, grad in cpu["gradients"].items()),
                key=lambda item: item[2])
    check("gradients", worst[2] <= PARITY_RTOL["gradients"], f"worst {worst[0]}: max abs diff {worst[1]:.2e}, "
          f"{worst[2]:.2e} of its largest (tolerance {PARITY_RTOL['gradients']:g})")
    return check.exit_code


def syncs(device: torch.device, configs: list[str]) -> int:
    """Host synchronizations per training step, ours (ds2.train.train_step) and the baseline of
    benchmarks/train_throughput.py, fp32 and bf16; ours must have none."""
    from benchmarks.train_throughput import CONFIGS, MODELS, count_syncs, make_batch
    from ds2.train import backend_settings

    check = Checks()
    print("| config | precision | model | syncs/step |")
    print("|---|---|---|---:|")
    for config_name in configs:
        config = CONFIGS[config_name]
        batch = make_batch(8, (4.0, 8.0), config.n_outputs, seed=2).pin_memory()
        for precision in ("fp32", "bf16"):
            with backend_settings(device, precision, deterministic=False):
                for kind, build in MODELS.items():
                    torch.manual_seed(0)
                    trainer = build(config, batch, device, precision)
                    for _ in range(2):  # first-call costs (cuDNN plans, our kernel's load)
                        trainer.step()
                    count = count_syncs(trainer.step, device, n_steps=3)
                    print(f"| {config_name} | {precision} | {kind} | {count:g} |", flush=True)
                    if kind == "ours":
                        check(f"ours, {config_name}, {precision}: no host synchronization", count == 0, f"{count:g}/step")
                    del trainer
    return check.exit_code


def streaming(device: torch.device) -> int:
    """StreamingModel on the device: streams batched at different points equal the offline
    forward of the same model on the device; then the audio seconds per second of 64 streams
    in 100 ms chunks (Batch Dispatch's batches)."""
    import time

    from ds2.features import feature_statistics, featurizer
    from ds2.model import DeepSpeech2, ModelConfig
    from ds2.streaming import StreamingModel

    check = Checks()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    generator = torch.Generator().manual_seed(0)
    waves = [torch.randn(16000 * s, generator=generator) * 0.1 for s in (2, 3, 1)]
    mean, var, _ = feature_statistics(waves)
    config = ModelConfig(conv_layers=2, conv_channels=(32, 16), conv_kernels=((41, 11), (21, 11)),
                         conv_strides=((2, 3), (2, 1)), rnn_layers=2, rnn_hidden=256, fc_hidden=256,
                         bidirectional=False, lookahead=3, normalize="online", feature_mean=mean, feature_var=var)
    torch.manual_seed(0)
    model = DeepSpeech2(config).to(device).eval()
    stream = StreamingModel(model)
    states = [stream.new_state() for _ in waves]
    outputs = [[] for _ in waves]
    positions = [0] * len(waves)
    sizes = (1600, 777, 4000)
    while not all(s.finished for s in states):
        active = [i for i, s in enumerate(states) if not s.finished]
        chunks = [waves[i][positions[i] : positions[i] + sizes[i]] for i in active]
        finals = [positions[i] + sizes[i] >= len(waves[i]) for i in active]
        for i in active:
            positions[i] += sizes[i]
        for i, out in zip(active, stream.forward(chunks, [states[i] for i in active], finals)):
            outputs[i].append(out)
    worst = 0.0
    for i, wave in enumerate(waves):
        features = featurizer(config)(wave).to(device)
        with torch.no_grad():
            logits, lengths = model(features[None], torch.tensor([features.shape[1]], device=device))
        expected = torch.log_softmax(logits[0, : int(lengths[0])].float(), -1).cpu()
        got = torch.cat(outputs[i])
        check(f"stream {i}: as many steps as offline", got.shape == expected.shape, f"{got.shape} vs {expected.shape}")
        if got.shape == expected.shape:
            worst = max(worst, (got - expected).abs().max().item())
    check("streaming equals offline on the device", worst < 1e-3, f"max abs diff of log-probs {worst:.2e}")
    n = 64
    states = [stream.new_state() for _ in range(n)]
    chunk = torch.randn(1600, generator=generator) * 0.1
    start = time.perf_counter()
    for _ in range(30):
        stream.forward([chunk] * n, states, [False] * n)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    print(f"{n} streams x 30 chunks of 100 ms: {seconds:.2f} s, {n * 3.0 / seconds:.0f} audio seconds per second, "
          f"{1000 * seconds / 30:.1f} ms per batch")
    return check.exit_code


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    corpus = commands.add_parser("corpus")
    corpus.add_argument("directory", type=Path)
    corpus.add_argument("--train", type=int, default=32)
    corpus.add_argument("--dev", type=int, default=8)
    train = commands.add_parser("check-train")
    train.add_argument("run", type=Path)
    train.add_argument("--steps", type=int, required=True)
    train.add_argument("--resumed-from", type=int)
    train.add_argument("--device", default="cuda")
    same = commands.add_parser("parity")
    same.add_argument("--device", default="cuda")
    same.add_argument("--config", default="tiny")
    streams = commands.add_parser("streaming")
    streams.add_argument("--device", default="cuda")
    count = commands.add_parser("syncs")
    count.add_argument("--device", default="cuda")
    count.add_argument("--configs", default="tiny,small")
    args = parser.parse_args()
    if args.command == "corpus":
        manifests = tone_corpus(args.directory, args.train, args.dev)
        print(f"tone corpus: {args.train} train, {args.dev} dev utterances: {manifests['train']}, {manifests['dev']}")
        return 0
    if args.command == "check-train":
        return check_train(args.run, args.steps, args.resumed_from, args.device)
    device = torch.device(args.device)
    if args.command == "parity":
        return parity(device, args.config)
    if args.command == "streaming":
        return streaming(device)
    if device.type != "cuda":
        print("syncs: torch.cuda.set_sync_debug_mode sees CUDA synchronizations only; nothing to count on", device)
        return 0
    return syncs(device, args.configs.split(","))


if __name__ == "__main__":
    sys.exit(main())
