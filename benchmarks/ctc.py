"""CTC loss speed, memory and agreement: our kernel ("cuda" on a GPU, "numba" on CPU) vs torch.

For each shape (B, T, L, V) = (batch, frames, label length, vocabulary) and each kind of
lengths, every backend that `ds2.ctc.available_backends(device)` lists among ours and
"torch" runs `ds2.ctc.ctc_loss(logits, ..., reduction="sum")` on the same inputs:

    .venv/bin/python benchmarks/ctc.py                       # GPU if there is one, else CPU
    .venv/bin/python benchmarks/ctc.py --device cpu --shapes "32,300,50,29" --lengths both \\
        --repeats 5 --csv ctc_cpu.csv

Inputs (fixed seed per case): logits ~ N(0, 1) in --dtype; labels uniform in 1..V-1.
"equal": every utterance has T frames and L labels. "ragged": frames uniform in [T/2, T],
labels round(L * T_b / T), at least 1. Labels are always alignable (labels + repeats <= frames):
a repeat that would not fit is replaced by another label (with V = 2 the length shrinks).

Columns:
- fwd ms / bwd ms: the `ctc_loss` call with logits.requires_grad = True, then `loss.backward()`;
  median of --repeats runs after --warmup runs (JIT compilation and other first-call costs
  happen there). total ms is the median of the per-run sums. On CUDA the device is
  synchronized before each run and the regions are timed with CUDA events; on CPU with
  time.perf_counter.
- peak MiB: memory the call needs beyond its inputs. CUDA: torch.cuda.max_memory_allocated()
  after reset_peak_memory_stats(), minus memory_allocated() with the inputs held (max over the
  timed runs). CPU: each case and backend runs in a fresh "spawn" child (the CPU timings come
  from it too). It first runs the backend on a tiny batch (imports, thread pools, numba JIT in
  the same dtype: fixed costs that would otherwise be counted), then builds the inputs, hands
  freed heap pages back to the OS (glibc malloc_trim, so the call cannot reuse pages that are
  already resident and stay invisible), resets the kernel's peak-RSS mark (write 5 to
  /proc/self/clear_refs), reads the resident set, does the warm-up and timed runs and reports
  the peak resident set (VmHWM) minus that reading. Not ru_maxrss: it is a high-water mark since
  the process began (import-time garbage, and on a fork the parent's pages, can hide the call)
  and cannot be reset. Without /proc/self/clear_refs (not Linux) it falls back to the growth of
  ru_maxrss, a lower bound.
- floor ms = max(bytes / bandwidth, latency). bytes = 3 * B*T*V * element size: the logits read
  once by the forward and once by the backward, and the gradient written once (the padded
  tensor, also for ragged lengths). bandwidth: median of timed dst.copy_(src) on the device
  (2 * size bytes moved) in the same run. latency: our backend (torch's when ours is missing;
  the header says which) forward + backward at (B=1, T, L=1, V=2), the 2T dependent time steps
  with no width to spread. total/floor: the row's total over the floor.
- speedup vs torch: torch's total / the row's total.
- agreement (on our row): the same inputs through both backends with reduction="none":
  max relative difference of the per-utterance losses and max absolute difference of the
  gradients of their sum w.r.t. the logits; "ok" within 1e-4 (losses) and 2e-2 (gradients,
  which lie in [-1, 1]), else "MISMATCH". The gradient tolerance is loose on purpose: torch's
  float32 CTC gradient is itself off from a float64 evaluation by up to ~5e-3 at T = 1500
  (measured on CPU; bfloat16 gradients add ~4e-3 of rounding), and a wrong recursion moves
  gradients by far more. The column shows the numbers either way. A target counts as met only with agreement ok.

Targets (issue): on CUDA ours >= 3x torch total at (64,700,150,29), (128,750,150,850) and
(64,400,60,6000); on CPU numba >= 2x torch total at (32,300,50,29).
A case that runs out of memory shows OOM in its row.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import csv
import ctypes
import ctypes.util
import multiprocessing
import os
import resource
import statistics
import sys
import tempfile
import time
import traceback

import torch

from ds2 import ctc

DEFAULT_SHAPES = "64,150,40,28;64,150,20,5000;32,300,50,29;64,700,150,29;128,1500,300,29;128,750,150,850;64,400,60,6000"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
TARGETS = {
    "cuda": (3.0, [(64, 700, 150, 29), (128, 750, 150, 850), (64, 400, 60, 6000)]),
    "cpu": (2.0, [(32, 300, 50, 29)]),
}
LOSS_RTOL = 1e-4
GRAD_ATOL = 2e-2
CSV_FIELDS = [
    "device", "dtype", "B", "T", "L", "V", "lengths", "backend", "status", "fwd_ms", "bwd_ms",
    "total_ms", "peak_mib", "floor_ms", "total_over_floor", "speedup_vs_torch",
    "loss_max_rel_diff", "grad_max_abs_diff", "agreement",
]


class OOM(Exception):
    """The case did not fit in memory."""


def is_oom(error: BaseException) -> bool:
    if isinstance(error, (MemoryError, torch.OutOfMemoryError)):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and ("out of memory" in text or "not enough memory" in text
                                                or "can't allocate memory" in text)


def our_backend(device: torch.device) -> str:
    return "cuda" if device.type == "cuda" else "numba"


def backends_on(device: torch.device) -> list[str]:
    available = getattr(ctc, "available_backends", None)
    return list(available(device)) if available is not None else ["torch"]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------- inputs


def make_inputs(B: int, T: int, L: int, V: int, ragged: bool, dtype: torch.dtype, device: torch.device, seed: int):
    """Logits (B, T, V), zero-padded labels (B, L), frame and label lengths; deterministic in seed."""
    if V < 2:
        raise ValueError("V must be at least 2 (blank + one label)")
    g = torch.Generator().manual_seed(seed)
    if ragged:
        frames = torch.randint(max(1, T // 2), T + 1, (B,), generator=g)
        lengths = torch.clamp(torch.round(L * frames.double() / T).long(), min=1)
    else:
        frames = torch.full((B,), T, dtype=torch.long)
        lengths = torch.full((B,), L, dtype=torch.long)
    lengths = torch.minimum(lengths, frames)
    labels = torch.randint(1, V, (B, max(L, 1)), generator=g)
    for b in range(B):
        n, row = int(lengths[b]), labels[b]
        repeats = [i for i in range(1, n) if row[i] == row[i - 1]]
        need = n + len(repeats) - int(frames[b])
        for i in repeats:  # break repeats that do not fit (a different label, also != the next one)
            if need <= 0:
                break
            for candidate in range(1, V):
                if row[i] == row[i - 1] and candidate != int(row[i - 1]) and (i + 1 >= n or candidate != int(row[i + 1])):
                    row[i] = candidate
                    need -= 1
                    break
        while n > 1 and n + sum(int(row[i] == row[i - 1]) for i in range(1, n)) > int(frames[b]):
            n -= 1  # only when V = 2: every pair is a repeat
        lengths[b] = n
        row[n:] = 0
    logits = torch.empty(B, T, V, dtype=dtype, device=device)
    lg = torch.Generator(device=device).manual_seed(seed + 1)
    for b in range(B):  # one utterance at a time: no full-size float32 temporary
        logits[b].normal_(generator=lg)
    assert bool(ctc.feasible(labels, lengths, frames).all())
    return logits, labels.to(device), frames.to(device), lengths.to(device)


# ---------------------------------------------------------------------------------- timing


def run_once(x, targets, frames, lengths, backend: str, device: torch.device) -> tuple[float, float]:
    """Forward and backward milliseconds of one reduction="sum" call."""
    x.grad = None
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        events = [torch.cuda.Event(enable_timing=True) for _ in range(3)]
        events[0].record()
        loss = ctc.ctc_loss(x, targets, frames, lengths, blank=0, reduction="sum", backend=backend)
        events[1].record()
        loss.backward()
        events[2].record()
        events[2].synchronize()
        return events[0].elapsed_time(events[1]), events[1].elapsed_time(events[2])
    start = time.perf_counter()
    loss = ctc.ctc_loss(x, targets, frames, lengths, blank=0, reduction="sum", backend=backend)
    middle = time.perf_counter()
    loss.backward()
    end = time.perf_counter()
    return (middle - start) * 1e3, (end - middle) * 1e3


def time_backend(inputs, backend: str, device: torch.device, warmup: int, repeats: int) -> dict:
    """Medians of fwd/bwd/total ms; on CUDA also the peak memory beyond the inputs."""
    logits, targets, frames, lengths = inputs
    x = logits.detach().requires_grad_(True)
    for _ in range(warmup):
        run_once(x, targets, frames, lengths, backend, device)
    x.grad = None
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        held = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    runs = [run_once(x, targets, frames, lengths, backend, device) for _ in range(repeats)]
    result = {
        "fwd_ms": statistics.median(f for f, _ in runs),
        "bwd_ms": statistics.median(b for _, b in runs),
        "total_ms": statistics.median(f + b for f, b in runs),
    }
    if device.type == "cuda":
        result["peak_mib"] = (torch.cuda.max_memory_allocated(device) - held) / 2**20
    return result


def maxrss_mib() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB on Linux


def status_mib(field: str) -> float:
    """VmRSS / VmHWM of this process from /proc/self/status, in MiB."""
    with open("/proc/self/status") as stream:
        for line in stream:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 2**10  # kB
    raise KeyError(field)


def start_peak_rss() -> tuple[str, float]:
    """Start a peak-memory window: ("hwm", current RSS) after resetting VmHWM, else ("maxrss", ru_maxrss)."""
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w") as stream:
            stream.write("5")  # reset the peak resident set (VmHWM) to the current one
        return "hwm", status_mib("VmRSS")
    except OSError:
        return "maxrss", maxrss_mib()


def peak_rss_growth(window: tuple[str, float]) -> float:
    kind, start = window
    return max(0.0, (status_mib("VmHWM") if kind == "hwm" else maxrss_mib()) - start)


def cpu_child(shape, ragged: bool, dtype_name: str, seed: int, backend: str, warmup: int, repeats: int) -> dict:
    """One case in a fresh process: timings and ru_maxrss growth from the inputs to the end."""
    try:
        device, dtype = torch.device("cpu"), DTYPES[dtype_name]
        tiny = make_inputs(2, 16, 3, shape[3], ragged, dtype, device, seed)  # fixed costs before the baseline
        time_backend(tiny, backend, device, warmup=1, repeats=1)
        del tiny
        inputs = make_inputs(*shape, ragged, dtype, device, seed)
        window = start_peak_rss()
        result = time_backend(inputs, backend, device, warmup, repeats)
        result["peak_mib"] = peak_rss_growth(window)
        return result
    except Exception as error:  # noqa: BLE001 - the parent prints it in the row
        if is_oom(error):
            return {"status": "OOM"}
        return {"status": "error", "message": "".join(traceback.format_exception_only(error)).strip()}


def measure_case(shape, ragged: bool, args, device: torch.device, seed: int, backend: str) -> dict:
    if device.type == "cpu":
        context = multiprocessing.get_context("spawn")
        try:
            with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
                return pool.submit(cpu_child, shape, ragged, args.dtype, seed, backend, args.warmup, args.repeats).result()
        except concurrent.futures.process.BrokenProcessPool:
            return {"status": "OOM", "message": "child process killed (out of memory?)"}
    inputs = None
    try:
        inputs = make_inputs(*shape, ragged, DTYPES[args.dtype], device, seed)
        return time_backend(inputs, backend, device, args.warmup, args.repeats)
    except Exception as error:  # noqa: BLE001
        if is_oom(error):
            return {"status": "OOM"}
        return {"status": "error", "message": "".join(traceback.format_exception_only(error)).strip()}
    finally:
        del inputs
        torch.cuda.empty_cache()


def agreement(shape, ragged: bool, args, device: torch.device, seed: int, ours: str) -> dict:
    """Per-utterance losses and gradients of ours vs torch on the same inputs."""
    dtype = DTYPES[args.dtype]
    inputs = None
    try:
        inputs = make_inputs(*shape, ragged, dtype, device, seed)
        logits, targets, frames, lengths = inputs
        results = {}
        for backend in (ours, "torch"):
            x = logits.detach().requires_grad_(True)
            losses = ctc.ctc_loss(x, targets, frames, lengths, blank=0, reduction="none", backend=backend)
            losses.sum().backward()
            results[backend] = (losses.detach().float(), x.grad)
            del x, losses
        (loss_a, grad_a), (loss_b, grad_b) = results[ours], results["torch"]
        loss_diff = ((loss_a - loss_b).abs() / loss_b.abs().clamp_min(1e-30)).max().item()
        grad_diff = 0.0
        for b in range(grad_a.shape[0]):  # one utterance at a time: no full-size float32 copies
            grad_diff = max(grad_diff, (grad_a[b].float() - grad_b[b].float()).abs().max().item())
        ok = loss_diff <= LOSS_RTOL and grad_diff <= GRAD_ATOL  # NaN fails both
        return {"loss": loss_diff, "grad": grad_diff, "ok": ok,
                "text": f"{'ok' if ok else 'MISMATCH'} (loss rel {loss_diff:.1e}, grad abs {grad_diff:.1e})"}
    except Exception as error:  # noqa: BLE001
        text = "OOM" if is_oom(error) else f"error: {type(error).__name__}"
        if not is_oom(error):
            print(f"  agreement check failed: {error}", file=sys.stderr)
        return {"loss": None, "grad": None, "ok": False, "text": text}
    finally:
        del inputs
        if device.type == "cuda":
            torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------- floor


def bandwidth(device: torch.device, mib: int, repeats: int = 5) -> float:
    """Bytes per second of dst.copy_(src) (2 * size bytes moved), median of a few."""
    src = torch.ones(mib * 2**20 // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)  # touch the pages, first-call costs
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        dst.copy_(src)
        sync(device)
        times.append(time.perf_counter() - start)
    del src, dst
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return 2 * mib * 2**20 / statistics.median(times)


def step_latency_ms(T: int, backend: str, device: torch.device, warmup: int, repeats: int) -> float:
    """Forward + backward of (B=1, T, L=1, V=2): the cost of the 2T dependent steps alone."""
    inputs = make_inputs(1, T, 1, 2, False, torch.float32, device, seed=T)
    return time_backend(inputs, backend, device, warmup, repeats)["total_ms"]


# ---------------------------------------------------------------------------------- output


def fmt(value, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and value != value):  # None or NaN
        return "-"
    if isinstance(value, str):
        return value
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.{digits}f}" if abs(value) >= 1 else f"{value:.3f}"


def write_csv(path: str, rows: list[dict], fieldnames: list[str] = CSV_FIELDS) -> None:
    """The rows as CSV, written atomically (a temporary file renamed over ``path``)."""
    directory = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=".ctc-bench-", suffix=".csv")
    try:
        with os.fdopen(handle, "w", newline="") as stream:
            writer = csv.DictWriter(stream, fieldnames=fieldnames)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def parse_seconds(text: str) -> tuple[float, float]:
    """--seconds LOW,HIGH of the benchmarks that draw utterance durations."""
    low, high = (float(v) for v in text.split(","))
    if not 0 < low <= high:
        raise argparse.ArgumentTypeError(f"--seconds {text!r}: want LOW,HIGH with 0 < LOW <= HIGH")
    return low, high


def parse_shapes(text: str) -> list[tuple[int, int, int, int]]:
    shapes = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        values = tuple(int(v) for v in part.split(","))
        if len(values) != 4 or min(values) < 1 or values[3] < 2:
            raise argparse.ArgumentTypeError(f"shape {part!r}: want B,T,L,V with V >= 2")
        shapes.append(values)
    return shapes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--shapes", type=parse_shapes, default=DEFAULT_SHAPES, help='"B,T,L,V;B,T,L,V" (default: the issue\'s 7)')
    parser.add_argument("--lengths", choices=("equal", "ragged", "both"), default="both")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per case (median)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs first (at least 1)")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="float32", help="logits dtype (both backends)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bandwidth-mib", type=int, help="copy size for the bandwidth (default 1024 on CUDA, 256 on CPU)")
    parser.add_argument("--csv", help="also write the rows here")
    args = parser.parse_args()
    if isinstance(args.shapes, str):
        args.shapes = parse_shapes(args.shapes)
    args.warmup, args.repeats = max(1, args.warmup), max(1, args.repeats)
    device = torch.device(args.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    dtype = DTYPES[args.dtype]

    available = backends_on(device)
    ours = our_backend(device)
    backends = [b for b in (ours, "torch") if b in available]
    has_ours = ours in backends
    lengths_kinds = ["equal", "ragged"] if args.lengths == "both" else [args.lengths]

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} torch threads"
    bw = bandwidth(device, args.bandwidth_mib or (1024 if device.type == "cuda" else 256))
    latency_backend = ours if has_ours else "torch"
    latency: dict[int, float] = {}
    for T in sorted({shape[1] for shape in args.shapes}):
        try:
            latency[T] = step_latency_ms(T, latency_backend, device, args.warmup, args.repeats)
        except Exception as error:  # noqa: BLE001
            print(f"latency at T={T} failed: {error}", file=sys.stderr)
            latency[T] = float("nan")

    print(f"device: {name}; logits {args.dtype}; backends {', '.join(backends)}"
          + ("" if has_ours else f" (ours, {ours!r}, is not available)")
          + f"; median of {args.repeats} after {args.warmup} warm-up")
    print(f"floor: bandwidth {bw / 1e9:.1f} GB/s (copy), latency of 2T steps from {latency_backend!r} at "
          f"(1,T,1,2): " + ", ".join(f"T={T} {fmt(ms)} ms" for T, ms in latency.items()))
    print(f"peak memory: {'max_memory_allocated beyond the inputs' if device.type == 'cuda' else 'peak resident set (VmHWM) beyond the inputs, fresh process per case'}")
    print()
    print("| shape (B,T,L,V) | lengths | backend | fwd ms | bwd ms | total ms | peak MiB | floor ms | total/floor "
          "| speedup vs torch (total) | agreement |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|", flush=True)

    rows: list[dict] = []
    totals: dict[tuple, dict] = {}  # (shape, lengths) -> backend -> total ms (or None), agreement ok
    cases = [(shape, kind) for shape in args.shapes for kind in lengths_kinds]
    for number, (shape, kind) in enumerate(cases, 1):
        B, T, L, V = shape
        seed = args.seed * 1_000_003 + number
        floor = max(3 * B * T * V * dtype.itemsize / bw * 1e3, latency[T])
        results = {}
        for backend in backends:
            started = time.perf_counter()
            results[backend] = measure_case(shape, kind == "ragged", args, device, seed, backend)
            status = results[backend].get("status", "ok")
            print(f"[{number}/{len(cases)}] {','.join(map(str, shape))} {kind} {backend}: "
                  + (f"{results[backend]['total_ms']:.3f} ms" if status == "ok" else status)
                  + f" ({time.perf_counter() - started:.1f} s)", file=sys.stderr, flush=True)
            if "message" in results[backend]:
                print(f"  {results[backend]['message']}", file=sys.stderr)
        check = agreement(shape, kind == "ragged", args, device, seed, ours) if has_ours else None
        torch_total = results.get("torch", {}).get("total_ms")
        totals[(shape, kind)] = {"ok": check is not None and check["ok"]}
        for backend in backends:
            r = results[backend]
            status = r.get("status", "ok")
            total = r.get("total_ms")
            totals[(shape, kind)][backend] = total
            speedup = torch_total / total if total and torch_total else None
            if backend == ours and check is not None:
                agree = check["text"]
            else:
                agree = "reference" if check is not None else "-"
            cells = [status] * 4 if status != "ok" else [fmt(r["fwd_ms"]), fmt(r["bwd_ms"]), fmt(total), fmt(r["peak_mib"], 1)]
            print(f"| {','.join(map(str, shape))} | {kind} | {backend} | " + " | ".join(cells)
                  + f" | {fmt(floor)} | {fmt(total / floor if total else None)} | {fmt(speedup)} | {agree} |", flush=True)
            rows.append({
                "device": name, "dtype": args.dtype, "B": B, "T": T, "L": L, "V": V, "lengths": kind,
                "backend": backend, "status": status, "fwd_ms": r.get("fwd_ms"), "bwd_ms": r.get("bwd_ms"),
                "total_ms": total, "peak_mib": r.get("peak_mib"), "floor_ms": floor,
                "total_over_floor": total / floor if total else None, "speedup_vs_torch": speedup,
                "loss_max_rel_diff": check["loss"] if check and backend == ours else None,
                "grad_max_abs_diff": check["grad"] if check and backend == ours else None,
                "agreement": agree,
            })
        if args.csv:
            write_csv(args.csv, rows)

    factor, target_shapes = TARGETS["cuda" if device.type == "cuda" else "cpu"]
    print()
    for shape in target_shapes:
        for kind in lengths_kinds:
            label = f"target: {ours} >= {factor:g}x torch total at ({','.join(map(str, shape))}), {kind} lengths: "
            entry = totals.get((shape, kind))
            if entry is None:
                print(label + "not measured (shape not in --shapes)")
            elif not has_ours:
                print(label + f"NOT met ({ours} backend not available)")
            elif not entry.get(ours) or not entry.get("torch"):
                print(label + "NOT met (a backend did not finish: OOM or error)")
            else:
                ratio = entry["torch"] / entry[ours]
                met = ratio >= factor and entry["ok"]
                why = "" if entry["ok"] else ", backends disagree"
                print(label + f"{'met' if met else 'NOT met'} ({ratio:.2f}x{why})")


if __name__ == "__main__":
    main()
