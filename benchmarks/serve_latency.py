"""Latency of `ds2 serve` under load: real clients, real sockets, audio at real-time pace.

    .venv/bin/python benchmarks/serve_latency.py --model recipes/streaming/exp/stream/best.pt \\
        --manifest recipes/tiny/data/test.json

The server (`ds2 serve`, a subprocess) runs on one CPU core (taskset, one torch thread, one
decoding thread); this process plays the clients on the other core. Each client streams test
utterances one after another over a WebSocket, a new connection per utterance, sending
--chunk-ms of 16-bit PCM at the moment its last sample would have been spoken (clients start
at random offsets within the first chunk). For every chunk it records the time from sending
it to receiving its partial result ("partial"), and for every utterance the time from the end
of its speech (the last chunk and the end message, sent together) to its final result
("final"): queueing, the acoustic model, decoding and the sockets included.

Rows: 1, 10 and 50 concurrent streams (--streams), each with Batch Dispatch (all streams'
waiting chunks in one model batch) and without it (each chunk alone, in arrival order), and
with --int8 the int8 server too. "rt" is whether the server kept up: the streams' audio was
all answered within a second of the end of the run, and the p98 partial latency stayed under
one second. "batch" is the mean number of streams per model batch (from /metrics).

Then the streams one core sustains in real time (--capacity): the stream count is raised
until the server falls behind (p98 partial latency over one second), with and without Batch
Dispatch.

And the model itself on --wer-utterances test utterances, one stream at a time in this
process: the WER of float32 and int8 (greedy), and their compute per audio second.

Anchor: DS2 (section 7) served 10 streams at 44 ms median and 70 ms p98 on a GPU.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import random
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from ds2 import audio  # noqa: E402
from ds2.data import read_manifest  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`ds2 serve` in a subprocess pinned to one core."""

    def __init__(self, model: str, batch_dispatch: bool, int8: bool, core: int, lm: str | None):
        self.port = free_port()
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        model = str(Path(model).resolve())  # the server runs in the repository root
        lm = str(Path(lm).resolve()) if lm else None
        command = [sys.executable, "-m", "ds2.cli", "serve", model, "--port", str(self.port), "--max-streams", "512",
                   "--decode-threads", "1", "--threads", "1", "--device", "cpu"]
        command += [] if batch_dispatch else ["--no-batch-dispatch"]
        command += ["--int8"] if int8 else []
        command += ["--lm", lm] if lm else []
        if core >= 0 and hasattr(os, "sched_setaffinity"):
            command = ["taskset", "-c", str(core)] + command
        self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=1):
                    break
            except OSError:
                if self.process.poll() is not None:
                    raise RuntimeError("ds2 serve failed: " + self.process.stderr.read().decode()[-2000:])
                if time.monotonic() > deadline:
                    raise RuntimeError("ds2 serve did not start in 120 s")
                time.sleep(0.2)

    def metrics(self) -> dict[str, float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics") as response:
            text = response.read().decode()
        values = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                values[name] = float(value)
        return values

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()


async def client(port: int, utterances: list[bytes], chunk_bytes: int, chunk_s: float, until: float,
                 partials: list, finals: list, behind: list, rng: random.Random) -> None:
    from websockets.asyncio.client import connect

    await asyncio.sleep(rng.uniform(0, chunk_s))
    order = list(range(len(utterances)))
    rng.shuffle(order)
    position = 0
    while time.perf_counter() < until:
        data = utterances[order[position % len(order)]]
        position += 1
        async with connect(f"ws://127.0.0.1:{port}/v1/stream?format=pcm16", max_size=None) as ws:
            json.loads(await ws.recv())  # ready
            sent: dict[int, float] = {}
            done = asyncio.get_running_loop().create_future()
            end_sent = [0.0]

            async def receive():
                async for text in ws:
                    message = json.loads(text)
                    now = time.perf_counter()
                    if message["type"] == "partial" and message.get("seq") in sent:
                        partials.append(now - sent[message["seq"]])
                    elif message["type"] == "end":
                        done.set_result(now)
                    elif message["type"] == "final" and end_sent[0]:
                        finals.append(now - end_sent[0])
                    elif message["type"] == "error":
                        raise RuntimeError(message["message"])
                if not done.done():
                    done.set_result(time.perf_counter())

            receiver = asyncio.create_task(receive())
            start = time.perf_counter()
            n_chunks = -(-len(data) // chunk_bytes)
            for k in range(n_chunks):
                due = start + (k + 1) * chunk_s
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
                sent[k + 1] = time.perf_counter()
                await ws.send(data[k * chunk_bytes : (k + 1) * chunk_bytes])
            end_sent[0] = time.perf_counter()
            await ws.send(json.dumps({"type": "end"}))
            finished = await done
            behind.append(finished - end_sent[0])
            await receiver


def run_load(server: Server, n_streams: int, utterances: list[bytes], chunk_ms: float, seconds: float,
             seed: int) -> dict:
    chunk_s = chunk_ms / 1000
    chunk_bytes = int(audio.SAMPLE_RATE * chunk_s) * 2
    partials, finals, behind = [], [], []
    before = server.metrics()
    until = time.perf_counter() + seconds

    async def main():
        rng = random.Random(seed)
        await asyncio.gather(*[client(server.port, utterances, chunk_bytes, chunk_s, until, partials, finals, behind,
                                      random.Random(rng.random())) for _ in range(n_streams)])

    asyncio.run(main())
    after = server.metrics()
    batches = after["ds2_batch_streams_count"] - before["ds2_batch_streams_count"]
    chunks = after["ds2_batch_streams_sum"] - before["ds2_batch_streams_sum"]
    p98 = percentile(partials, 98)
    return dict(streams=n_streams, chunks=len(partials), utterances=len(finals),
                partial_p50_ms=1000 * percentile(partials, 50), partial_p98_ms=1000 * p98,
                final_p50_ms=1000 * percentile(finals, 50), final_p98_ms=1000 * percentile(finals, 98),
                batch=chunks / batches if batches else float("nan"),
                realtime=bool(p98 < 1.0 and (max(behind) if behind else 0) < 1.0))


def model_table(model_path: str, manifest: str, n: int) -> list[dict]:
    """WER and compute per audio second of float32 and int8, one stream at a time, greedy."""
    from ds2.checkpoint import load_model
    from ds2.decode import greedy_decode
    from ds2.metrics import score_pairs
    from ds2.quantize import quantize_dynamic
    from ds2.streaming import StreamingModel

    torch.set_num_threads(1)
    model, alphabet = load_model(model_path)
    variants = {"float32": StreamingModel(model), "int8": StreamingModel(quantize_dynamic(model))}
    records = list(read_manifest(manifest))[:n]
    waves = [audio.load_audio(r["audio_filepath"]) for r in records]
    seconds = sum(len(w) for w in waves) / audio.SAMPLE_RATE
    rows = []
    timings = {name: 0.0 for name in variants}
    texts = {name: [] for name in variants}
    for wave in waves:  # alternate the variants so that load drifts over both alike
        for name, stream in variants.items():
            start = time.perf_counter()
            log_probs = stream.run(wave, 1600)
            timings[name] += time.perf_counter() - start
            texts[name].append(greedy_decode(log_probs[None], torch.tensor([len(log_probs)]), alphabet)[0])
    for name in variants:
        report = score_pairs(zip([r["text"] for r in records], texts[name]))
        rows.append(dict(model=name, utterances=len(records), wer=round(report.wer, 2), cer=round(report.cer, 2),
                         compute_per_audio_s=round(timings[name] / seconds, 4),
                         speed_vs_float=round(timings["float32"] / timings[name], 2)))
    return rows


def print_table(rows: list[dict], columns: list[str]) -> None:
    widths = [max(len(c), *(len(fmt(r[c])) for r in rows)) for c in columns]
    print(" | ".join(c.rjust(w) for c, w in zip(columns, widths)))
    print("-|-".join("-" * w for w in widths))
    for r in rows:
        print(" | ".join(fmt(r[c]).rjust(w) for c, w in zip(columns, widths)))


def fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.1f}" if abs(value) >= 10 else f"{value:.3g}"
    return str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="A streamable checkpoint.")
    parser.add_argument("--manifest", required=True, help="Utterances the clients stream (e.g. the test set).")
    parser.add_argument("--streams", default="1,10,50", help="Concurrent stream counts.")
    parser.add_argument("--chunk-ms", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=20.0, help="Load per row (seconds).")
    parser.add_argument("--int8", action="store_true", help="Also rows of the int8 server.")
    parser.add_argument("--capacity", default="", help="Stream counts to try for the real-time capacity of one "
                        "core, e.g. 20,40,60,80,100,130,160 (empty: skip).")
    parser.add_argument("--wer-utterances", type=int, default=200, help="0: skip the float32/int8 WER table.")
    parser.add_argument("--lm", default=None, help="A KenLM model: the server decodes with it.")
    parser.add_argument("--utterances", type=int, default=50, help="Distinct utterances the clients draw from.")
    parser.add_argument("--server-core", type=int, default=1, help="CPU core of the server (-1: no pinning).")
    parser.add_argument("--csv", default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    if args.server_core >= 0 and hasattr(os, "sched_setaffinity"):
        others = sorted(set(os.sched_getaffinity(0)) - {args.server_core}) or [args.server_core]
        os.sched_setaffinity(0, others)  # the clients keep off the server's core
    records = list(read_manifest(args.manifest))[: args.utterances]
    utterances = [(audio.load_audio(r["audio_filepath"]).clamp(-1, 1 - 1 / 32768) * 32768).round()
                  .to(torch.int16).numpy().tobytes() for r in records]
    rows = []
    variants = [("batch", True, False), ("no batch", False, False)]
    if args.int8:
        variants.append(("batch int8", True, True))
    for n in [int(s) for s in args.streams.split(",")]:
        for name, batch_dispatch, int8 in variants:
            server = Server(args.model, batch_dispatch, int8, args.server_core, args.lm)
            try:
                run_load(server, min(n, 2), utterances, args.chunk_ms, 2.0, args.seed)  # warm-up
                row = dict(server=name, **run_load(server, n, utterances, args.chunk_ms, args.seconds, args.seed))
            finally:
                server.close()
            rows.append(row)
            print(f"  {name}, {n} streams: partial p50 {row['partial_p50_ms']:.1f} ms, p98 "
                  f"{row['partial_p98_ms']:.1f} ms", flush=True)
    print(f"\nLatency ({args.chunk_ms:g} ms chunks at real-time pace, server on one core, {args.seconds:g} s per row)")
    columns = ["server", "streams", "chunks", "utterances", "partial_p50_ms", "partial_p98_ms", "final_p50_ms",
               "final_p98_ms", "batch", "realtime"]
    print_table(rows, columns)

    capacity_rows = []
    if args.capacity:
        for name, batch_dispatch in (("batch", True), ("no batch", False)):
            best = 0
            for n in [int(s) for s in args.capacity.split(",")]:
                server = Server(args.model, batch_dispatch, False, args.server_core, args.lm)
                try:
                    row = run_load(server, n, utterances, args.chunk_ms, args.seconds, args.seed)
                finally:
                    server.close()
                print(f"  capacity {name}, {n} streams: p98 {row['partial_p98_ms']:.0f} ms, real time "
                      f"{row['realtime']}", flush=True)
                if not row["realtime"]:
                    break
                best = n
            capacity_rows.append(dict(server=name, streams_in_real_time=best))
        print("\nStreams one core sustains in real time (p98 partial latency under 1 s)")
        print_table(capacity_rows, ["server", "streams_in_real_time"])

    model_rows = []
    if args.wer_utterances:
        model_rows = model_table(args.model, args.manifest, args.wer_utterances)
        print(f"\nThe model alone, one stream at a time, greedy, {model_rows[0]['utterances']} utterances of "
              f"{args.manifest}")
        print_table(model_rows, ["model", "utterances", "wer", "cer", "compute_per_audio_s", "speed_vs_float"])

    if args.csv:
        with open(args.csv, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["table", "key", "value"])
            for i, row in enumerate(rows + capacity_rows + model_rows):
                for key, value in row.items():
                    writer.writerow([i, key, value])


if __name__ == "__main__":
    main()
