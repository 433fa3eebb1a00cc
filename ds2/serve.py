"""``ds2 serve``: transcription over HTTP and WebSocket, with DS2's Batch Dispatch.

Starlette on uvicorn (an established ASGI stack). Endpoints:

- ``GET /``: a web page that streams the microphone (or a file) and shows the live transcript.
- ``POST /v1/transcribe``: the body is an audio file (any format libsndfile reads, any rate);
  the answer is JSON: ``text``, ``duration``, ``segments`` (finals) and ``words`` (``word``,
  ``start``, ``end``, ``confidence``).
- ``WS /v1/stream?format=pcm16|wav``: binary messages of 16-bit little-endian mono PCM at
  16 kHz (``format=wav``: the same as a WAV file, header first); the text message
  ``{"type": "end"}`` ends the stream. The server answers ``ready`` (limits, lookahead),
  then for every audio message a ``partial`` (``seq`` counts the messages), a ``final``
  whenever endpointing ends a segment and at the end, then ``end``. Malformed input gets an
  ``error`` message (``code``, ``message``) and the socket is closed; others are unaffected.
- ``GET /health`` (JSON) and ``GET /metrics`` (Prometheus text format).

Batch Dispatch (DS2 section 7): one thread runs the acoustic model. Audio of every live
stream and pending file waits in one queue; as soon as the model is free, everything
waiting (up to ``max_batch`` streams, after at most ``max_wait_ms`` for more) runs as one
batch through :class:`ds2.streaming.StreamingModel`, which keeps each stream's state. With
``--no-batch-dispatch`` each chunk runs alone, in arrival order (the benchmark's baseline).
Decoding (greedy or LM beam search) runs per stream on a thread pool.

Safe by default: binds to 127.0.0.1; limits on message size, stream length, file size and
length, concurrent streams and idle time (:class:`ServeOptions`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources

import numpy as np
import torch

from ds2 import audio
from ds2.config import DEVICE_HELP, DEVICE_PATTERN, check, option
from ds2.streaming import EndpointOptions, StreamDecoder, StreamingModel, StreamState

log = logging.getLogger("ds2.serve")


@dataclass(frozen=True)
class ServeOptions:
    host: str = option("127.0.0.1", "Address to bind (0.0.0.0: every interface; think before exposing it).")
    port: int = option(8000, "TCP port.", min=0, max=65535)
    max_streams: int = option(32, "Concurrent streams and file requests; more are refused (busy).", min=1)
    max_message_kb: int = option(64, "Largest audio message on a stream (KiB; 64 KiB = 2 s of 16 kHz PCM).", min=1)
    max_stream_s: float = option(3600.0, "Longest stream (seconds of audio); then it is finalized and closed.",
                                 above=0)
    max_file_mb: float = option(50.0, "Largest file a POST may send (MiB).", above=0)
    max_file_s: float = option(900.0, "Longest file a POST may send (seconds of audio).", above=0)
    idle_timeout_s: float = option(30.0, "A stream that sends nothing this long is finalized and closed.", above=0)
    batch_dispatch: bool = option(True, "Batch the chunks of all streams and files for the model (DS2's Batch "
                                  "Dispatch); --no-batch-dispatch runs each chunk alone.")
    max_batch: int = option(64, "Most streams in one batch.", min=1)
    max_wait_ms: float = option(0.0, "After the model frees up, wait at most this long for more work to batch "
                                "(0: run what is waiting at once, as DS2 did).", min=0)
    file_chunk_s: float = option(2.0, "Files go through the model this many seconds at a time, batched with the "
                                 "live streams.", above=0)
    endpoint_silence_ms: float = option(700.0, "Trailing silence (blank) that ends a segment with a final result.",
                                        above=0)
    max_segment_s: float = option(30.0, "A segment this long gets its final result wherever it is.", above=0)
    decode_threads: int = option(0, "Threads decoding the streams' results (0: one per core).", min=0)
    threads: int = option(0, "Torch threads of the acoustic model (0: PyTorch's default, one per core).", min=0)
    device: str = option("auto", "auto, cpu, cuda, cuda:1, ...", pattern=DEVICE_PATTERN, pattern_help=DEVICE_HELP)
    int8: bool = option(False, "Dynamic int8 quantization of the recurrent and linear layers (CPU only).")

    def __post_init__(self):
        check(self)

    @property
    def endpoint(self) -> EndpointOptions:
        return EndpointOptions(silence_ms=self.endpoint_silence_ms, max_segment_s=self.max_segment_s)


class InputError(ValueError):
    """Malformed input from a client: answered with an error message naming ``code``."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


# --------------------------------------------------------------------------- Batch Dispatch


@dataclass
class _Work:
    state: StreamState
    chunk: torch.Tensor
    final: bool
    future: Future
    queued: float


class Dispatcher:
    """The one thread that runs the acoustic model, on batches of whatever is waiting."""

    def __init__(self, model: StreamingModel, batch_dispatch: bool = True, max_batch: int = 64,
                 max_wait_ms: float = 0.0, on_batch=None):
        self.model = model
        self.max_batch = max_batch if batch_dispatch else 1
        self.max_wait = max_wait_ms / 1000
        self.on_batch = on_batch  # called with (batch size, seconds) after each batch
        self._queue: deque[_Work] = deque()
        self._ready = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="ds2-dispatch", daemon=True)
        self._thread.start()

    def submit(self, state: StreamState, chunk: torch.Tensor, final: bool = False) -> Future:
        """Queue a stream's next chunk; the future gives its log-probs, shape = (steps, V).
        A stream must wait for one chunk's result before it submits the next."""
        future: Future = Future()
        with self._ready:
            if self._closed:
                raise RuntimeError("the server is shutting down")
            self._queue.append(_Work(state, chunk, final, future, time.perf_counter()))
            self._ready.notify()
        return future

    def close(self) -> None:
        with self._ready:
            self._closed = True
            self._ready.notify()
        self._thread.join(timeout=10)

    def _take(self) -> list[_Work]:
        with self._ready:
            while not self._queue and not self._closed:
                self._ready.wait()
            if self.max_wait and len(self._queue) < self.max_batch:
                deadline = time.perf_counter() + self.max_wait
                while len(self._queue) < self.max_batch and not self._closed:
                    left = deadline - time.perf_counter()
                    if left <= 0:
                        break
                    self._ready.wait(left)
            batch = []
            while self._queue and len(batch) < self.max_batch:
                batch.append(self._queue.popleft())
            return batch

    def _run(self) -> None:
        torch.set_grad_enabled(False)
        while True:
            batch = self._take()
            if not batch:
                if self._closed:
                    return
                continue
            start = time.perf_counter()
            try:
                outputs = self.model.forward([w.chunk for w in batch], [w.state for w in batch],
                                             [w.final for w in batch])
                for work, out in zip(batch, outputs):
                    work.future.set_result(out)
            except Exception:  # noqa: BLE001 - isolate the stream that failed; the others go on
                log.exception("a batch of %d failed; running its streams one by one", len(batch))
                for work in batch:
                    if work.future.done():
                        continue
                    try:
                        work.future.set_result(self.model.forward([work.chunk], [work.state], [work.final])[0])
                    except Exception as err:  # noqa: BLE001
                        work.future.set_exception(err)
            if self.on_batch is not None:
                self.on_batch(len(batch), time.perf_counter() - start)


# --------------------------------------------------------------------------- the engine


class Engine:
    """The model, its decoders and the dispatcher, shared by every request."""

    def __init__(self, checkpoint: str, options: ServeOptions = ServeOptions(), beam=None):
        from ds2.checkpoint import load_model
        from ds2.decode import build_beam_decoder
        from ds2.io import select_device

        self.options = options
        device = select_device(options.device)
        if options.threads:
            torch.set_num_threads(options.threads)
        model, self.alphabet = load_model(checkpoint, device)
        if options.int8:
            if device.type != "cpu":
                raise ValueError("--int8 is for the CPU (dynamic quantization); use --device cpu")
            from ds2.quantize import quantize_dynamic

            model = quantize_dynamic(model)
        self.streaming = StreamingModel(model)  # NotStreamableError says what a model lacks
        self.checkpoint = str(checkpoint)
        self.lm_decoder = None
        if beam is not None and beam.lm:
            self.lm_decoder = build_beam_decoder(self.alphabet, beam)
            from ds2.decode import _is_ours

            if not _is_ours(self.lm_decoder):
                raise ValueError("ds2 serve streams LM results through ds2's own decoder, which could not be built")
        self.metrics = Metrics()
        self.dispatcher = Dispatcher(self.streaming, options.batch_dispatch, options.max_batch, options.max_wait_ms,
                                     on_batch=self.metrics.batch)
        self.decode_pool = ThreadPoolExecutor(max_workers=options.decode_threads or None,
                                              thread_name_prefix="ds2-decode")
        self.active = 0
        self._lock = threading.Lock()

    def close(self) -> None:
        self.dispatcher.close()
        self.decode_pool.shutdown(wait=False, cancel_futures=True)

    def acquire(self) -> bool:
        """A slot for a stream or file request (False: all max_streams are taken)."""
        with self._lock:
            if self.active >= self.options.max_streams:
                return False
            self.active += 1
            self.metrics.active.set(self.active)
            return True

    def release(self) -> None:
        with self._lock:
            self.active -= 1
            self.metrics.active.set(self.active)

    def session(self) -> "Session":
        return Session(self)


class Session:
    """One stream (or file) through the engine: audio in, results out (async)."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.state = engine.streaming.new_state()
        self.decoder = StreamDecoder(engine.alphabet, engine.streaming.frame_seconds, engine.lm_decoder,
                                     engine.options.endpoint)
        self.samples = 0

    async def push(self, chunk: torch.Tensor, final: bool = False) -> list[dict]:
        """Feed audio; returns the results it produced (finals, a partial; at the end the last final)."""
        self.samples += len(chunk)
        self.engine.metrics.audio.inc(len(chunk) / audio.SAMPLE_RATE)
        log_probs = await asyncio.wrap_future(self.engine.dispatcher.submit(self.state, chunk, final))
        loop = asyncio.get_running_loop()
        results = await loop.run_in_executor(self.engine.decode_pool, self.decoder.push, log_probs)
        if final:
            results += await loop.run_in_executor(self.engine.decode_pool, self.decoder.finish)
        return results

    @property
    def seconds(self) -> float:
        return self.samples / audio.SAMPLE_RATE


# --------------------------------------------------------------------------- metrics


class Metrics:
    """Prometheus metrics of one server (its own registry)."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.active = Gauge("ds2_active_streams", "Streams and file requests in progress", registry=self.registry)
        self.requests = Counter("ds2_requests", "Requests by kind and outcome", ["kind", "outcome"],
                                registry=self.registry)
        self.audio = Counter("ds2_audio_seconds", "Seconds of audio received", registry=self.registry)
        self.batch_size = Histogram("ds2_batch_streams", "Streams per acoustic-model batch",
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=self.registry)
        self.batch_seconds = Histogram("ds2_batch_seconds", "Time of one acoustic-model batch",
                                       buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
                                       registry=self.registry)
        self.partial_seconds = Histogram("ds2_partial_seconds", "From an audio message received to its partial sent",
                                         buckets=(0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5),
                                         registry=self.registry)
        self.errors = Counter("ds2_errors", "Error messages sent to clients, by code", ["code"], registry=self.registry)

    def batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)

    def text(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


# --------------------------------------------------------------------------- audio messages


class PcmReader:
    """Audio messages of a stream -> float32 waveform chunks (16 kHz mono).

    ``pcm16``: raw 16-bit little-endian samples, an even number of bytes per message.
    ``wav``: the bytes of a WAV file, header first (16-bit PCM, mono, 16 kHz).
    """

    def __init__(self, fmt: str, max_bytes: int):
        if fmt not in ("pcm16", "wav"):
            raise InputError("bad_format", f"format={fmt!r}: use pcm16 (raw 16-bit little-endian mono 16 kHz) or wav")
        self.fmt = fmt
        self.max_bytes = max_bytes
        self.header = b"" if fmt == "wav" else None  # bytes of the WAV header not yet complete
        self.odd = b""

    def read(self, data: bytes) -> torch.Tensor:
        if len(data) > self.max_bytes:
            raise InputError("too_large", f"audio message of {len(data)} bytes: at most {self.max_bytes} per message")
        if self.header is not None:
            self.header += data
            data = self._parse_header()
        if len(data) % 2:
            raise InputError("bad_audio", f"audio message of {len(data)} bytes: 16-bit PCM needs an even number")
        samples = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
        return torch.from_numpy(samples)

    def _parse_header(self) -> bytes:
        data = self.header
        if len(data) >= 4 and data[:4] != b"RIFF":
            raise InputError("bad_audio", "format=wav: the stream does not start with a RIFF/WAVE header")
        if len(data) > 1 << 16:
            raise InputError("bad_audio", "format=wav: no data chunk in the first 64 KiB")
        if len(data) < 12:
            return b""
        if data[8:12] != b"WAVE":
            raise InputError("bad_audio", "format=wav: a RIFF file but not WAVE")
        position, fmt = 12, None
        while position + 8 <= len(data):
            kind, size = data[position : position + 4], int.from_bytes(data[position + 4 : position + 8], "little")
            body = position + 8
            if kind == b"fmt ":
                if body + 16 > len(data):
                    return b""
                code, channels, rate = (int.from_bytes(data[body : body + 2], "little"),
                                        int.from_bytes(data[body + 2 : body + 4], "little"),
                                        int.from_bytes(data[body + 4 : body + 8], "little"))
                bits = int.from_bytes(data[body + 14 : body + 16], "little")
                fmt = (code, channels, rate, bits)
                if code not in (1, 0xFFFE) or channels != 1 or rate != audio.SAMPLE_RATE or bits != 16:
                    raise InputError("bad_audio", f"format=wav: need 16-bit PCM, mono, {audio.SAMPLE_RATE} Hz; got "
                                     f"format {code}, {channels} channels, {rate} Hz, {bits} bits")
            elif kind == b"data":
                if fmt is None:
                    raise InputError("bad_audio", "format=wav: data chunk before the fmt chunk")
                self.header = None
                return data[body:]
            position = body + size + (size & 1)
        return b""


# --------------------------------------------------------------------------- the app


def create_app(engine: Engine):
    """The Starlette application serving ``engine``."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, Response
    from starlette.routing import Route, WebSocketRoute
    from starlette.websockets import WebSocket, WebSocketDisconnect

    options = engine.options
    page = resources.files("ds2").joinpath("web/index.html").read_text(encoding="utf-8")

    async def index(request: Request):
        return HTMLResponse(page)

    async def health(request: Request):
        return JSONResponse({"status": "ok", "model": engine.checkpoint, "active_streams": engine.active,
                             "max_streams": options.max_streams, "lm": engine.lm_decoder is not None,
                             "lookahead_ms": engine.streaming.lookahead_ms})

    async def metrics(request: Request):
        return Response(engine.metrics.text(), media_type="text/plain; version=0.0.4; charset=utf-8")

    def refuse(kind: str, code: str, message: str, status: int):
        engine.metrics.requests.labels(kind, code).inc()
        engine.metrics.errors.labels(code).inc()
        return JSONResponse({"type": "error", "code": code, "message": message}, status_code=status)

    async def transcribe(request: Request):
        limit = int(options.max_file_mb * 1024 * 1024)
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return refuse("file", "too_large", f"{declared} bytes: at most {limit} per file", 413)
        body = bytearray()
        async for piece in request.stream():
            body += piece
            if len(body) > limit:
                return refuse("file", "too_large", f"more than {limit} bytes: at most {limit} per file", 413)
        loop = asyncio.get_running_loop()
        try:
            waveform = await loop.run_in_executor(engine.decode_pool, audio.decode_audio_bytes, bytes(body),
                                                  "the request body")
        except audio.AudioError as err:
            return refuse("file", "bad_audio", str(err), 400)
        seconds = len(waveform) / audio.SAMPLE_RATE
        if seconds > options.max_file_s:
            return refuse("file", "too_long", f"{seconds:.1f} s of audio: at most {options.max_file_s:g} s per file",
                          413)
        if not engine.acquire():
            return refuse("file", "busy", f"all {options.max_streams} stream slots are in use; try again", 503)
        try:
            session = engine.session()
            step = int(options.file_chunk_s * audio.SAMPLE_RATE)
            finals = []
            for start in range(0, max(1, len(waveform)), step):
                end = start + step
                results = await session.push(waveform[start:end], final=end >= len(waveform))
                finals += [r for r in results if r["type"] == "final"]
        finally:
            engine.release()
        engine.metrics.requests.labels("file", "ok").inc()
        return JSONResponse({"text": " ".join(f["text"] for f in finals), "duration": round(seconds, 3),
                             "segments": finals, "words": [w for f in finals for w in f["words"]]})

    async def stream(websocket: WebSocket):
        await websocket.accept()

        async def fail(code: str, message: str, close_code: int = 1008):
            engine.metrics.errors.labels(code).inc()
            engine.metrics.requests.labels("stream", code).inc()
            await websocket.send_json({"type": "error", "code": code, "message": message})
            await websocket.close(close_code)

        try:
            reader = PcmReader(websocket.query_params.get("format", "pcm16"), options.max_message_kb * 1024)
        except InputError as err:
            await fail(err.code, str(err), 1003)
            return
        if not engine.acquire():
            await fail("busy", f"all {options.max_streams} stream slots are in use; try again", 1013)
            return
        try:
            await _serve_stream(websocket, engine, reader, fail, WebSocketDisconnect)
        finally:
            engine.release()

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        engine.close()

    routes = [Route("/", index), Route("/health", health), Route("/metrics", metrics),
              Route("/v1/transcribe", transcribe, methods=["POST"]), WebSocketRoute("/v1/stream", stream)]
    return Starlette(routes=routes, lifespan=lifespan)


async def _serve_stream(websocket, engine: Engine, reader: PcmReader, fail, disconnect) -> None:
    options = engine.options
    session = engine.session()
    await websocket.send_json({"type": "ready", "sample_rate": audio.SAMPLE_RATE, "format": reader.fmt,
                               "lookahead_ms": engine.streaming.lookahead_ms,
                               "frame_seconds": engine.streaming.frame_seconds,
                               "limits": {"max_message_bytes": reader.max_bytes, "max_stream_s": options.max_stream_s,
                                          "idle_timeout_s": options.idle_timeout_s}})
    seq = 0
    try:
        while True:
            try:
                message = await asyncio.wait_for(websocket.receive(), options.idle_timeout_s)
            except asyncio.TimeoutError:
                for result in await session.push(torch.zeros(0), final=True):
                    if result["type"] == "final":
                        await websocket.send_json(result)
                await fail("idle", f"nothing received for {options.idle_timeout_s:g} s; the stream is closed", 1000)
                return
            if message["type"] == "websocket.disconnect":
                return
            if message.get("bytes") is not None:
                received = time.perf_counter()
                try:
                    chunk = reader.read(message["bytes"])
                except InputError as err:
                    await fail(err.code, str(err), 1003)
                    return
                over = session.seconds + len(chunk) / audio.SAMPLE_RATE > options.max_stream_s
                if over:
                    chunk = chunk[: max(0, int(options.max_stream_s * audio.SAMPLE_RATE) - session.samples)]
                seq += 1
                results = await session.push(chunk, final=over)
                for result in results:
                    if result["type"] == "partial":
                        result["seq"] = seq
                    await websocket.send_json(result)
                engine.metrics.partial_seconds.observe(time.perf_counter() - received)
                if over:
                    await fail("too_long", f"streams are limited to {options.max_stream_s:g} s of audio; the stream "
                               "is finalized and closed", 1000)
                    return
                continue
            text = message.get("text")
            try:
                control = json.loads(text) if text is not None else None
            except json.JSONDecodeError:
                control = None
            if not isinstance(control, dict) or control.get("type") != "end":
                await fail("bad_message", 'text messages must be JSON {"type": "end"}; audio goes in binary messages',
                           1003)
                return
            for result in await session.push(torch.zeros(0), final=True):
                if result["type"] == "final":  # the lookahead's last steps: in the final, no partial
                    await websocket.send_json(result)
            await websocket.send_json({"type": "end", "seconds": round(session.seconds, 3)})
            engine.metrics.requests.labels("stream", "ok").inc()
            await websocket.close(1000)
            return
    except disconnect:
        return


def _uvicorn_config(engine: Engine, host: str, port: int):
    import uvicorn

    return uvicorn.Config(create_app(engine), host=host, port=port, log_level="warning", ws="websockets-sansio",
                          ws_max_size=16 * engine.options.max_message_kb * 1024)  # up to 16x: our error message


def serve(checkpoint: str, options: ServeOptions = ServeOptions(), beam=None) -> None:
    """Run the server until interrupted."""
    import uvicorn

    engine = Engine(checkpoint, options, beam)
    log.info("serving %s on http://%s:%d (lookahead %.0f ms; Batch Dispatch %s)", checkpoint, options.host,
             options.port, engine.streaming.lookahead_ms, "on" if options.batch_dispatch else "off")
    uvicorn.Server(_uvicorn_config(engine, options.host, options.port)).run()


@contextlib.contextmanager
def running(engine: Engine, host: str = "127.0.0.1", port: int = 0):
    """The server of ``engine`` in a background thread (``port=0``: a free one); yields its
    base URL, e.g. ``http://127.0.0.1:41234``, and stops it on exit."""
    import uvicorn

    server = uvicorn.Server(_uvicorn_config(engine, host, port))
    thread = threading.Thread(target=server.run, name="ds2-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.02)
    bound = server.servers[0].sockets[0].getsockname()
    try:
        yield f"http://{bound[0]}:{bound[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
