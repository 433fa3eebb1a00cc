"""Ground services: atomic writes, kill-safe CSV logs, safe loading, devices, the process pool, PNGs."""

import os
import pickle

import pytest
import torch

from ds2 import io
from ds2.io import CsvLog, atomic_write, load_torch_file, process_map, read_csv, save_figure, select_device

FIELDS = ["step", "loss"]


def test_atomic_write_keeps_the_old_file_when_the_writer_fails(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_write(path) as handle:
            handle.write("half of the new")
            raise RuntimeError("killed")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["a.txt"]


# --------------------------------------------------------------------------- CsvLog: what a kill leaves


def test_csv_log_rows_reach_the_file_as_they_are_written(tmp_path):
    log = CsvLog(tmp_path / "log.csv", FIELDS)
    assert (tmp_path / "log.csv").read_text() == "step,loss\n"  # the header is on disk before any row
    log.write({"step": 1, "loss": 2.5})
    assert (tmp_path / "log.csv").read_text() == "step,loss\n1,2.5\n"  # no close needed
    log.close()


@pytest.mark.parametrize("left_behind", ["", "step,lo", "step,loss\n1,2.5\n2,2.", "step,loss\n1,2.5\n2,2.4\n3,2.3\n"])
def test_csv_log_repairs_what_a_kill_left_and_drops_rows_a_resume_repeats(tmp_path, left_behind):
    path = tmp_path / "log.csv"
    path.write_text(left_behind)
    log = CsvLog(path, FIELDS, append=True, keep=lambda row: int(row["step"]) <= 1)
    log.write({"step": 2, "loss": 2.4})
    log.close()
    rows = read_csv(path)
    kept = [{"step": "1", "loss": "2.5"}] if "1,2.5" in left_behind else []
    assert rows == kept + [{"step": "2", "loss": "2.4"}]


def test_csv_log_refuses_another_logs_file(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("epoch,wer\n1,20\n")
    with pytest.raises(ValueError, match="is not this log's"):
        CsvLog(path, FIELDS, append=True)
    assert path.read_text() == "epoch,wer\n1,20\n"  # untouched


def test_csv_log_without_append_starts_over(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("step,loss\n1,2.5\n")
    CsvLog(path, FIELDS).close()
    assert read_csv(path) == []


# --------------------------------------------------------------------------- loading, devices


def test_load_torch_file_refuses_pickled_code_and_names_the_file(tmp_path):
    torch.save({"x": torch.ones(2)}, tmp_path / "ok.pt")
    assert torch.equal(load_torch_file(tmp_path / "ok.pt", "cache")["x"], torch.ones(2))
    with open(tmp_path / "code.pt", "wb") as handle:
        torch.save({"f": os.getcwd}, handle, pickle_module=pickle)  # a function: code, not data
    with pytest.raises(ValueError, match=f"{tmp_path / 'code.pt'}: not a readable cache"):
        load_torch_file(tmp_path / "code.pt", "cache")
    with pytest.raises(ValueError, match="cache not found"):
        load_torch_file(tmp_path / "missing.pt", "cache")


def test_select_device():
    assert select_device("cpu") == torch.device("cpu")
    assert select_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="unknown device"):
        select_device("gpu7")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no usable CUDA device"):
            select_device("cuda:0")


# --------------------------------------------------------------------------- process_map

_MARK = "parent"


def _mark_worker():
    global _MARK
    _MARK = "worker"


def _describe(x):
    return x * x, os.getpid(), _MARK, torch.get_num_threads()


def test_process_map_keeps_order_and_runs_in_single_threaded_workers():
    results = list(process_map(_describe, range(40), 2, initializer=_mark_worker))
    assert [r[0] for r in results] == [x * x for x in range(40)]
    assert {r[1] for r in results} - {os.getpid()} and os.getpid() not in {r[1] for r in results}
    assert {r[2] for r in results} == {"worker"} and {r[3] for r in results} == {1}


def test_process_map_with_one_job_runs_here():
    results = list(process_map(_describe, range(3), 1))
    assert {r[1] for r in results} == {os.getpid()} and {r[2] for r in results} == {"parent"}
    assert list(process_map(_describe, [], 0)) == []
    with pytest.raises(ValueError, match="jobs must be >= 0"):
        list(process_map(_describe, range(3), -1))


def test_save_figure_writes_a_png_atomically(tmp_path):
    figure, axis = io.pyplot().subplots()
    axis.plot([0, 1], [1, 0])
    save_figure(figure, tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert os.listdir(tmp_path) == ["p.png"]


_HEAP_PROBE = """
import sys, torch
sys.path.insert(0, {root!r})
if {compact}:
    from ds2.io import compact_heap
    assert compact_heap()
def rss_mb():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
big = torch.ones(4 << 20); del big  # 16 MB: glibc's dynamic mmap threshold rises to it when freed
start = rss_mb()
blocks = [torch.ones(1 << 20) for _ in range(50)]  # 50 x 4 MB, like a batch's activations
del blocks[:-1]  # freed, but the last one, allocated last, pins the top of the heap
print(round(rss_mb() - start))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/statm") or os.uname().sysname != "Linux", reason="glibc on Linux")
def test_compact_heap_gives_freed_tensors_back_to_the_system():
    import subprocess
    import sys
    from pathlib import Path

    root = str(Path(__file__).resolve().parent.parent)
    held = {compact: int(subprocess.run([sys.executable, "-c", _HEAP_PROBE.format(root=root, compact=compact)],
                                        capture_output=True, text=True, check=True).stdout)
            for compact in (False, True)}
    assert held[False] > 150  # glibc's default: 196 MB of freed tensors stay in the process
    assert held[True] < 20  # with compact_heap: only the live block
