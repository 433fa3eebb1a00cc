"""benchmarks/decode.py runs end to end: the made-up large-vocabulary case builds its LM, every
decoder named gets a row per beam and pruning setting, the CSV holds them, and the ratios
are filled where the peer ran."""

import csv
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def test_the_benchmark_prints_and_writes_every_row(tmp_path):
    pytest.importorskip("pyctcdecode")
    out = tmp_path / "rows.csv"
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "decode.py"), "--large-vocab", "300", "--limit", "3",
         "--beams", "4,8", "--decoders", "ds2,pyctcdecode", "--csv", str(out)],
        capture_output=True, text=True, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "## 300 outputs: 3 utterances" in result.stdout
    rows = list(csv.DictReader(out.open()))
    swept = rows[:-4]  # then the threshold sweep
    assert {(r["decoder"], r["beam"], r["pruning"]) for r in swept} == {
        (d, b, p) for d in ("ds2", "pyctcdecode") for b in ("4", "8") for p in ("yes", "no")}
    ours = [r for r in swept if r["decoder"] == "ds2"]
    assert all(float(r["speedup_vs_pyctcdecode"]) > 0 and "/3" in r["agree_with_pyctcdecode"] for r in ours)
    assert [r["threshold"] for r in rows[-4:]] == ["off", "10.0", "25.0", "50.0"]  # the threshold sweep
    assert all(0 <= float(r["wer"]) <= 100 for r in rows)
