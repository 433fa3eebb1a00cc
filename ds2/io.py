"""Ground-level services every other module may use; this module imports nothing from ds2.

- :func:`atomic_write`: a file appears whole or not at all (temp file + fsync + rename).
- :class:`CsvLog`: a CSV file a run appends to, which survives a kill at any moment and
  can be reopened by a resumed run without duplicated or headerless rows.
- :func:`load_torch_file`: ``torch.load(..., weights_only=True)`` with errors that name the file.
- :func:`select_device`: "auto" -> cuda when available, else cpu.
- :func:`compact_heap`: large CPU tensors from mmap, so their memory goes back to the system.
- :func:`process_map`: ``map`` over forked worker processes, results in input order.
- :func:`pyplot` / :func:`save_figure`: matplotlib without a display, PNGs written atomically.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import multiprocessing
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import torch
from tqdm import tqdm

log = logging.getLogger("ds2.io")

# The process umask, read once (os.umask can only be read by setting it, which is not
# thread-safe): files written through atomic_write get the permissions open() would give.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


# --------------------------------------------------------------------------- files


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "w", encoding: str | None = "utf-8"):
    """Open a temporary file beside ``path``; rename it over ``path`` only on success.

    A crash or an exception leaves the previous ``path`` (if any) untouched and no
    partial file behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; give what open() would
        kwargs = {} if "b" in mode else {"encoding": encoding}
        with os.fdopen(fd, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


class CsvLog:
    """A CSV file that a run appends rows to, one flushed line at a time.

    A kill can land anywhere: before the header reached the disk, or in the middle of a
    row. Opening with ``append=True`` repairs what such a kill leaves (a missing header,
    a partial last line) and drops the rows for which ``keep(row)`` is false (a resumed
    run passes "logged before the checkpoint it resumes from", so the steps it repeats
    are not logged twice); the repaired file replaces the old one atomically. A header that
    lacks only columns added at the end of ``fields`` (a log of an older version) gets them,
    empty in the old rows; any other header is another run's log: an error, not a repair.
    """

    def __init__(self, path: str | Path, fields: list[str], append: bool = False,
                 keep: Callable[[dict], bool] | None = None):
        self.path = Path(path)
        self.fields = list(fields)
        kept = self._existing_rows(keep) if append and self.path.exists() else []
        with atomic_write(self.path) as handle:
            writer = csv.DictWriter(handle, fieldnames=self.fields, lineterminator="\n")
            writer.writeheader()
            writer.writerows(kept)
        self._handle = open(self.path, "a", encoding="utf-8", newline="")
        self._writer = csv.DictWriter(self._handle, fieldnames=self.fields, lineterminator="\n")

    def _existing_rows(self, keep) -> list[dict]:
        text = self.path.read_text(encoding="utf-8", errors="replace")
        if text and not text.endswith("\n"):
            text = text[: text.rfind("\n") + 1]  # a row cut short by a kill
        lines = text.splitlines()
        if not lines:
            return []  # killed before the header reached the disk
        header = next(csv.reader([lines[0]]))
        if header != self.fields[: len(header)]:
            raise ValueError(f"{self.path}: header {header} is not this log's {self.fields}; move the file away")
        rows = list(csv.DictReader(io.StringIO("\n".join(lines) + "\n")))
        return [row for row in rows if keep is None or keep(row)]

    def write(self, row: dict) -> None:
        """Append one row and flush it to the operating system (a crash of this process
        loses nothing written before it)."""
        self._writer.writerow(row)
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()


def read_csv(path: str | Path) -> list[dict]:
    """Rows of a CSV file with a header (what :class:`CsvLog` writes)."""
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def load_torch_file(path: str | Path, what: str, map_location="cpu"):
    """``torch.load(path, weights_only=True)``: tensors and plain containers, never code.

    Raises ValueError naming the file and ``what`` it should have been when it is missing
    or unreadable.
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: {what} not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise ValueError(f"{path}: not a readable {what} ({type(err).__name__})") from None


_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
_heap_compacted = False


def compact_heap(threshold: int = 1 << 20) -> bool:
    """Serve allocations of ``threshold`` bytes or more from mmap (returned to the system when
    freed) instead of the heap. Returns whether it took effect (glibc only; once per process).

    glibc raises its mmap threshold each time a large block is freed, up to 32 MiB, after
    which CPU tensors of varying sizes (batches of different lengths) come from the heap,
    fragment it, and the process only grows: training the tiny model reached 7 GB resident
    in two epochs (0.9 GB with this), and every forked loader worker copied it. A fixed
    threshold stops that; measured no slower. Forked workers inherit it.
    """
    global _heap_compacted
    if _heap_compacted:
        return True
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        _heap_compacted = bool(libc.mallopt(_M_MMAP_THRESHOLD, int(threshold)))
    except (OSError, AttributeError):  # not glibc (musl, macOS): their allocators behave differently
        _heap_compacted = False
    return _heap_compacted


def select_device(name: str) -> torch.device:
    """"auto" -> cuda when available, else cpu; anything else as torch names it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but this machine has no usable CUDA device")
    return device


# --------------------------------------------------------------------------- processes


def default_jobs(cap: int | None = None) -> int:
    """Cores this process may run on (at most ``cap``)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(cores or 1, cap or cores or 1))


def _init_worker(initializer: Callable[[], None] | None) -> None:
    # One process per core already: torch's own threads would only compete with them.
    # Also OpenMP thread pools are not safe after a fork: a child that inherits a pool the
    # parent used (e.g. for resampling) can hang in its first parallel op unless it stays
    # single-threaded.
    torch.set_num_threads(1)
    if initializer is not None:
        initializer()


def process_map(
    function: Callable,
    tasks: Iterable,
    jobs: int = 1,
    *,
    initializer: Callable[[], None] | None = None,
    chunksize: int | None = None,
    progress: bool = False,
    desc: str | None = None,
    unit: str = "it",
) -> Iterator:
    """``map(function, tasks)`` in ``jobs`` forked processes; results in the order of ``tasks``.

    Forked workers inherit the parent's memory (a decoder, a loaded LM) without pickling
    it; each runs single-threaded, then ``initializer``. ``jobs`` of 0 means one per core;
    1 (or a single task) runs here, in this process. ``function`` must be a module-level
    function. With ``progress``, a tqdm bar counts the results.
    """
    tasks = list(tasks)
    jobs = default_jobs() if jobs == 0 else jobs
    if jobs < 0:
        raise ValueError(f"jobs must be >= 0, got {jobs}")
    jobs = min(jobs, len(tasks))
    if "fork" not in multiprocessing.get_all_start_methods():
        jobs = 1  # spawn would re-import torch in every worker: slower than one process
    bar = tqdm(total=len(tasks), disable=not progress, desc=desc, unit=unit, dynamic_ncols=True)
    with bar, contextlib.ExitStack() as stack:
        if jobs > 1:
            pool = stack.enter_context(
                multiprocessing.get_context("fork").Pool(jobs, initializer=_init_worker, initargs=(initializer,))
            )
            results = pool.imap(function, tasks, chunksize=chunksize or max(1, len(tasks) // (4 * jobs)))
        else:
            results = map(function, tasks)
        for result in results:
            bar.update()
            yield result


# --------------------------------------------------------------------------- plots


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure, path: str | Path, dpi: int = 100) -> None:
    """Write a matplotlib figure as PNG, atomically, and free it."""
    with atomic_write(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=dpi)
    pyplot().close(figure)
