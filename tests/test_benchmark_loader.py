"""benchmarks/loader.py: the formats are written as they say (lossless where they are, at their
rate), the loader passes are training's minibatches, and the benchmark runs and writes both tables."""

import csv
import math
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks import loader  # noqa: E402
from conftest import sweep, write_audio  # noqa: E402


def test_loader_passes_are_whole_epochs_of_training_minibatches():
    durations = [2.0 + 0.1 * i for i in range(20)]
    batches = loader.loader_batches(durations, [10] * 20, batch_size=4, at_least=50, seed=0)
    counts = Counter(index for batch in batches for index in batch)
    assert set(counts.values()) == {3}  # 3 whole epochs: the first with at least 50 utterances
    assert max(len(batch) for batch in batches) == 4
    assert batches[:5] != batches[5:10]  # each epoch cut and ordered anew


def test_a_format_this_libsndfile_cannot_write_is_reported_not_fatal(tmp_path, monkeypatch):
    path = write_audio(tmp_path / "a.wav", sweep(1.0, 16000), 16000, subtype="PCM_16")
    records = [{"audio_filepath": str(path), "duration": 1.0, "text": "a"}]
    formats = {name: spec for name, spec in soundfile.available_formats().items() if name != "MP3"}
    monkeypatch.setattr(soundfile, "available_formats", lambda: formats)
    written = loader.write_formats(records, tmp_path / "out", ["wav16", "mp3"])
    assert written["wav16"][1] == "ok" and written["wav16"][0].exists()
    assert written["mp3"][0] is None and written["mp3"][1].startswith("unsupported: libsndfile")


def test_snr_of_identical_and_noisy_audio():
    signal = sweep(1.0, 16000)
    assert loader.snr_db(signal, signal) == math.inf
    noisy = signal + 0.01 * np.random.default_rng(0).standard_normal(len(signal)).astype(np.float32)
    assert loader.snr_db(signal, noisy) == pytest.approx(10 * math.log10(np.mean(signal**2) / 1e-4), abs=0.2)


def test_the_benchmark_runs_and_writes_both_tables(tmp_path):
    table = tmp_path / "loader.csv"
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "loader.py"), "--utterances", "4", "--workers", "0,1",
         "--repeats", "1", "--loader-utterances", "8", "--csv", str(table)],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "data: 4 utterances" in result.stdout
    for spec in loader.FORMATS.values():
        for stage in loader.STAGES:
            assert f"| {spec.label} | {stage} |" in result.stdout or f"| {spec.label} | all |" in result.stdout
    for label in ("WAV 16 kHz", "FLAC 16 kHz"):
        for workers in (0, 1):
            assert f"| {label} | {workers} |" in result.stdout
    with open(table, newline="") as stream:
        rows = list(csv.DictReader(stream))
    decode = {(r["format"], r["stage"]): r for r in rows if r["table"] == "decode" and r["status"] == "ok"}
    assert {stage for _, stage in decode} == set(loader.STAGES)
    assert {name for name, _ in decode} >= {"wav16", "flac16", "wav22"}
    assert [r["status"] for r in rows if r["format"] == "mp3"][0] == "ok" or "MP3" not in soundfile.available_formats()
    for (_, stage), row in decode.items():
        assert float(decode["wav16", stage]["ratio"]) == 1.0
        reference = float(decode["wav16", stage]["ms_per_utt"])
        assert float(row["ratio"]) == pytest.approx(float(row["ms_per_utt"]) / reference)
        assert float(row["ms_per_utt"]) * int(row["utterances"]) == pytest.approx(
            float(row["ms_per_audio_s"]) * float(row["audio_s"]), rel=1e-3)
        assert float(row["x_real_time"]) == pytest.approx(1000 / float(row["ms_per_audio_s"]), rel=1e-6)
    # PCM16 at 16 and 22.05 kHz: 256 and 352.8 kbit/s plus the headers; FLAC and MP3 smaller
    assert 256 <= float(decode["wav16", "item"]["kbit_per_s"]) < 258
    assert 352.8 <= float(decode["wav22", "item"]["kbit_per_s"]) < 355
    assert float(decode["flac16", "item"]["kbit_per_s"]) < 256
    assert decode["flac16", "read+resample"]["snr_db"] == "inf"  # lossless: the same samples as the WAV
    assert 20 < float(decode["wav22", "read+resample"]["snr_db"]) < math.inf  # resampled twice: close, not equal
    load = [r for r in rows if r["table"] == "loader"]
    assert sorted((r["format"], int(r["workers"])) for r in load) == [
        ("flac16", 0), ("flac16", 1), ("wav16", 0), ("wav16", 1)]
    assert len({(r["utterances"], r["audio_s"]) for r in load}) == 1  # every setting reads the same minibatches
    assert int(load[0]["utterances"]) >= 8
    for row in load:
        assert float(row["x_real_time"]) > 0 and float(row["utt_per_s"]) > 0
        assert float(row["cpu_ms_per_audio_s"]) > 0 and float(row["cpu_over_wall"]) > 0  # the workers' CPU counted
        if row["workers"] == "0":
            assert float(row["ratio"]) == 1.0
