"""Small real audio for the data-pipeline tests: written with soundfile into tmp_path."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch


def tone(frequency: float, seconds: float, rate: int, amplitude: float = 0.5) -> np.ndarray:
    """A sine, shape = (round(seconds * rate),), float32."""
    t = np.arange(int(round(seconds * rate))) / rate
    return (amplitude * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


def sweep(seconds: float, rate: int, low: float = 200.0, high: float = 3000.0) -> np.ndarray:
    """A linear chirp from ``low`` to ``high`` Hz, float32 in [-0.5, 0.5]."""
    t = np.arange(int(round(seconds * rate))) / rate
    phase = 2 * np.pi * (low * t + (high - low) * t**2 / (2 * seconds))
    return (0.5 * np.sin(phase)).astype(np.float32)


def noise_burst(seconds: float, rate: int, seed: int = 0) -> np.ndarray:
    """Gaussian noise with a raised-cosine envelope, float32."""
    n = int(round(seconds * rate))
    envelope = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / max(n - 1, 1))
    return (0.2 * envelope * np.random.default_rng(seed).standard_normal(n)).astype(np.float32)


def write_audio(path: Path, samples: np.ndarray, rate: int, subtype: str | None = None) -> Path:
    """Write ``samples`` (n,) or (n, channels) to ``path``; creates parent folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), samples, rate, subtype=subtype)
    return path


@pytest.fixture(autouse=True)
def _float32_default():
    """Every test starts with torch's usual default dtype.

    A module that sets another default at import time (collection) would otherwise set
    it for every test that runs before its own; a module's own autouse fixture still
    runs after this one and wins for that module's tests.
    """
    torch.set_default_dtype(torch.float32)
    yield


@pytest.fixture
def restore_logging():
    """The CLI reconfigures the root logger (basicConfig force=True); put it back after."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def pytest_collection_modifyitems(config, items):
    """Tests marked requires_cuda are skipped, with the reason, where no GPU is visible."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (run on a GPU machine: pytest -m requires_cuda)")
    for item in items:
        if "requires_cuda" in item.keywords:
            item.add_marker(skip)


def confusable_log_probs(text: str, alphabet, confusions: dict[str, str] | None = None) -> np.ndarray:
    """(T, V) log-probabilities spelling ``text``, a blank after each character; a character
    in ``confusions`` is heard as its stand-in slightly more often (0.5 against 0.45), so that
    greedy decoding gets it wrong and an LM or a hotword can set it right."""
    confusions = confusions or {}
    rows = []
    for char in text:
        row = np.full(len(alphabet), 1e-4)
        if char in confusions:
            row[alphabet.encode(confusions[char])[0]], row[alphabet.encode(char)[0]] = 0.5, 0.45
        else:
            row[alphabet.encode(char)[0]] = 0.95
        rows += [row / row.sum(), np.eye(len(alphabet))[0] * 0.95 + 0.05 / len(alphabet)]
    return np.log(np.array(rows, dtype=np.float32))


class WeakModelFrames:
    """Rows of (T, V) log-probabilities like a weak model's: each frame puts ``p`` on one label
    (and ``q`` on a second), and spreads the rest over the vocabulary but the space (label
    ``space``: a model hears a word break only between words)."""

    def __init__(self, vocabulary: int, space: int, rng: np.random.Generator):
        self.rng, self.rows = rng, []
        self.spread = np.full(vocabulary, 5.0)
        self.spread[space] = 1e-6

    def add(self, peak: int, p: float, second: int | None = None, q: float = 0.0) -> None:
        row = self.rng.dirichlet(self.spread) * (1 - p - q)
        row[peak] += p
        if second is not None:
            row[second] += q
        self.rows.append(row)

    def log_probs(self) -> np.ndarray:
        probs = np.maximum(np.array(self.rows), 1e-12)
        return np.log(probs / probs.sum(axis=1, keepdims=True)).astype(np.float32)


def sentences_lm(folder: Path, sentences: list[str], repeats: int = 5, order: int = 3):
    """A KenLM model (ds2.lm.build_lm's LmFiles) of ``sentences``, each ``repeats`` times, built
    in ``folder``; the test fails, saying what builds it, where lmplz is missing."""
    from ds2 import lm

    try:
        lm.kenlm_tool("lmplz")
    except lm.LmError as err:
        pytest.fail(f"{err} (scripts/setup.sh builds it)")
    text = folder / "text.txt"
    text.write_text("\n".join(sentences * repeats) + "\n", encoding="utf-8")
    return lm.build_lm([text], folder / "lm", order=order)
