"""ds2 serve over real sockets: WebSocket streams, file requests, limits, health and metrics."""

import io
import json
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest
import soundfile
import torch
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from ds2 import audio
from ds2.checkpoint import save_checkpoint
from ds2.decode import greedy_decode
from ds2.espeak import synthesize
from ds2.features import feature_statistics, featurizer
from ds2.model import DeepSpeech2, ModelConfig
from ds2.serve import Engine, ServeOptions, running
from ds2.text import Alphabet

SENTENCES = ["the cat sat on the mat", "a dog ran in the park", "seven green boxes", "she reads a book at night"]
NO_ENDPOINT = dict(endpoint_silence_ms=60_000, max_segment_s=600)  # one final per stream: the offline text


@pytest.fixture(scope="module")
def speech():
    return [synthesize(text, "en-us", 170, 50) for text in SENTENCES]


@pytest.fixture(scope="module")
def checkpoint(speech, tmp_path_factory):
    torch.manual_seed(0)
    mean, var, _ = feature_statistics(speech)
    alphabet = Alphabet()
    config = ModelConfig(conv_layers=2, conv_channels=(8, 4), conv_kernels=((41, 11), (21, 11)),
                         conv_strides=((2, 3), (2, 1)), rnn_layers=2, rnn_hidden=32, fc_hidden=16,
                         bidirectional=False, lookahead=2, normalize="online", feature_mean=mean, feature_var=var,
                         n_outputs=len(alphabet), alphabet=alphabet.to_list())
    model = DeepSpeech2(config).eval()
    path = tmp_path_factory.mktemp("serve") / "stream.pt"
    save_checkpoint(path, model)
    return path, model, alphabet


def offline_text(checkpoint, waveform) -> str:
    _, model, alphabet = checkpoint
    features = featurizer(model.config)(waveform)
    with torch.no_grad():
        logits, lengths = model(features[None], torch.tensor([features.shape[1]]))
    return " ".join(greedy_decode(logits, lengths, alphabet)[0].split())


@pytest.fixture(scope="module")
def server(checkpoint):
    engine = Engine(str(checkpoint[0]), ServeOptions(**NO_ENDPOINT))
    with running(engine) as url:
        yield url, engine


def pcm16(waveform: torch.Tensor) -> bytes:
    return (waveform.clamp(-1, 1 - 1 / 32768) * 32768).round().to(torch.int16).numpy().tobytes()


def stream(url: str, waveform: torch.Tensor, chunk: int = 1600, fmt: str = "pcm16") -> list[dict]:
    """Send a waveform in chunks (waiting for each partial), then end; every message back."""
    messages = []
    data = pcm16(waveform)
    if fmt == "wav":
        buffer = io.BytesIO()
        soundfile.write(buffer, np.frombuffer(data, dtype="<i2"), audio.SAMPLE_RATE, subtype="PCM_16", format="WAV")
        data = buffer.getvalue()
    with connect(url.replace("http", "ws") + f"/v1/stream?format={fmt}") as ws:
        messages.append(json.loads(ws.recv(timeout=30)))
        for start in range(0, len(data), 2 * chunk):
            try:
                ws.send(data[start : start + 2 * chunk])
            except ConnectionClosed:  # the server ended the stream (a limit): what it said before
                messages += [json.loads(text) for text in ws]
                return messages
            while True:
                message = json.loads(ws.recv(timeout=30))
                messages.append(message)
                if message["type"] == "error":
                    return messages
                if message["type"] == "partial":
                    break
        ws.send(json.dumps({"type": "end"}))
        for text in ws:
            messages.append(json.loads(text))
    return messages


def quantized(waveform: torch.Tensor) -> torch.Tensor:
    """What the server hears of a waveform sent as 16-bit PCM."""
    return torch.from_numpy(np.frombuffer(pcm16(waveform), dtype="<i2").astype(np.float32) / 32768)


def test_a_websocket_stream_gets_a_partial_per_message_and_the_offline_text(server, checkpoint, speech):
    url, _ = server
    messages = stream(url, speech[0])
    ready, *rest = messages
    assert ready["type"] == "ready" and ready["sample_rate"] == 16000 and ready["lookahead_ms"] > 0
    partials = [m for m in rest if m["type"] == "partial"]
    n_messages = -(-2 * len(speech[0]) // 3200)
    assert [p["seq"] for p in partials] == list(range(1, n_messages + 1))
    finals = [m for m in rest if m["type"] == "final"]
    assert len(finals) == 1 and finals[0]["text"] == offline_text(checkpoint, quantized(speech[0]))
    assert finals[0]["text"], "the model says something: the comparison is not of two empty texts"
    assert [w["word"] for w in finals[0]["words"]] == finals[0]["text"].split()
    assert all(0 <= w["start"] < w["end"] <= finals[0]["end"] + 1e-6 for w in finals[0]["words"])
    assert rest[-1] == {"type": "end", "seconds": round(len(speech[0]) / 16000, 3)}


def test_concurrent_streams_are_batched_and_each_gets_its_own_text(server, checkpoint, speech):
    url, engine = server
    before = engine.metrics.batch_size.collect()[0].samples
    results = {}

    def client(i, chunk, fmt):
        results[i] = stream(url, speech[i], chunk, fmt)

    threads = [threading.Thread(target=client, args=args) for args in
               [(0, 1600, "pcm16"), (1, 800, "pcm16"), (2, 3200, "wav"), (3, 1111, "pcm16")]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for i, messages in results.items():
        finals = [m["text"] for m in messages if m["type"] == "final"]
        assert finals == [offline_text(checkpoint, quantized(speech[i]))], i
    after = engine.metrics.batch_size.collect()[0].samples
    value = {s.name: s.value for s in after}
    old = {s.name: s.value for s in before}
    batches = value["ds2_batch_streams_count"] - old["ds2_batch_streams_count"]
    chunks = value["ds2_batch_streams_sum"] - old["ds2_batch_streams_sum"]
    assert chunks / batches > 1.2, "streams in flight together share the model's batches"


def error_of(url: str, path: str, send) -> dict:
    with connect(url.replace("http", "ws") + path) as ws:
        first = json.loads(ws.recv(timeout=30))
        if first["type"] == "error":
            return first
        send(ws)
        while True:
            message = json.loads(ws.recv(timeout=30))
            if message["type"] == "error":
                return message


def test_malformed_input_gets_an_error_message_and_other_streams_go_on(server, checkpoint, speech):
    url, _ = server
    good = {}
    thread = threading.Thread(target=lambda: good.update(messages=stream(url, speech[1], 800)))
    thread.start()
    assert error_of(url, "/v1/stream", lambda ws: ws.send(b"\x01\x02\x03"))["code"] == "bad_audio"
    assert error_of(url, "/v1/stream", lambda ws: ws.send(b"\x00" * (65 * 1024)))["code"] == "too_large"
    assert error_of(url, "/v1/stream", lambda ws: ws.send("hello"))["code"] == "bad_message"
    assert error_of(url, "/v1/stream?format=wav", lambda ws: ws.send(b"GARBAGE!" * 10))["code"] == "bad_audio"
    header = io.BytesIO()
    soundfile.write(header, np.zeros(800, dtype=np.int16), 8000, subtype="PCM_16", format="WAV")
    bad_rate = error_of(url, "/v1/stream?format=wav", lambda ws: ws.send(header.getvalue()))
    assert bad_rate["code"] == "bad_audio" and "8000 Hz" in bad_rate["message"]
    assert error_of(url, "/v1/stream?format=mp3", lambda ws: None)["code"] == "bad_format"
    thread.join()
    finals = [m["text"] for m in good["messages"] if m["type"] == "final"]
    assert finals == [offline_text(checkpoint, quantized(speech[1]))]


def post(url: str, body: bytes):
    request = urllib.request.Request(url + "/v1/transcribe", data=body, method="POST",
                                     headers={"Content-Type": "application/octet-stream"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_a_posted_file_of_any_rate_gets_text_and_timed_words(server, checkpoint, speech, tmp_path):
    url, _ = server
    waveform = torch.cat([speech[2], torch.zeros(8000), speech[3]])
    path = tmp_path / "two.flac"
    soundfile.write(path, audio.resample(waveform, 16000, 22050).numpy(), 22050)
    status, result = post(url, path.read_bytes())
    assert status == 200
    assert result["text"] == offline_text(checkpoint, audio.load_audio(path))
    assert result["duration"] == pytest.approx(len(waveform) / 16000, abs=0.01)
    assert [w["word"] for w in result["words"]] == result["text"].split()
    status, error = post(url, b"this is not audio")
    assert status == 400 and error["code"] == "bad_audio" and "cannot decode" in error["message"]


def test_limits_on_streams_idle_time_length_and_size(checkpoint, speech):
    options = ServeOptions(max_streams=1, idle_timeout_s=0.5, max_stream_s=1.0, max_file_mb=0.01, **NO_ENDPOINT)
    with running(Engine(str(checkpoint[0]), options)) as url:
        ws_url = url.replace("http", "ws") + "/v1/stream"
        with connect(ws_url) as first:
            assert json.loads(first.recv(timeout=30))["type"] == "ready"
            assert error_of(url, "/v1/stream", lambda ws: None)["code"] == "busy"
            first.send(pcm16(speech[0][:1600]))
            messages = [json.loads(m) for m in first]  # nothing more sent: idle
        assert [m["type"] for m in messages] == ["partial", "final", "error"] and messages[-1]["code"] == "idle"
        too_long = stream(url, speech[0])  # 2 s of audio, 1 s allowed: finalized, then closed
        assert [m["type"] for m in too_long][-2:] == ["final", "error"] and too_long[-1]["code"] == "too_long"
        assert too_long[-2]["end"] <= 1.0 + 0.03
        status, error = post(url, b"\x00" * 20_000)
        assert status == 413 and error["code"] == "too_large"


def test_health_metrics_and_the_page(server):
    url, _ = server
    with urllib.request.urlopen(url + "/health") as response:
        health = json.loads(response.read())
    assert health["status"] == "ok" and health["max_streams"] == 32 and health["lm"] is False
    with urllib.request.urlopen(url + "/metrics") as response:
        text = response.read().decode()
    assert "ds2_audio_seconds_total" in text and "ds2_batch_streams_bucket" in text
    with urllib.request.urlopen(url + "/") as response:
        page = response.read().decode()
    assert "ds2 live transcription" in page and "/v1/stream" in page
    assert ServeOptions().host == "127.0.0.1"


def test_transcribe_stream_reads_files_in_real_time_through_the_same_path(checkpoint, speech, tmp_path):
    import time

    from typer.testing import CliRunner

    from ds2.cli import app

    paths = []
    for i in (0, 2):
        paths.append(tmp_path / f"s{i}.wav")
        soundfile.write(paths[-1], speech[i].numpy(), 16000, subtype="PCM_16")
    runner = CliRunner()
    start = time.perf_counter()
    result = runner.invoke(app, ["transcribe", str(checkpoint[0]), *map(str, paths), "--stream", "--format", "json"])
    elapsed = time.perf_counter() - start
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    for line, path in zip(lines, paths):
        assert line["text"] == offline_text(checkpoint, audio.load_audio(path))
    # real-time pace: the last chunk of a file is sent no sooner than it would have been spoken
    assert elapsed >= sum(len(speech[i]) for i in (0, 2)) / 16000
    fast = runner.invoke(app, ["transcribe", str(checkpoint[0]), str(paths[0]), "--stream", "--no-realtime"])
    assert fast.exit_code == 0 and fast.stdout.strip() == lines[0]["text"]
