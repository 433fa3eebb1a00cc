"""n-gram language models with KenLM: build (lmplz, build_binary) and query.

``build_lm`` normalizes training text into the acoustic model's alphabet (the LM must speak
the same characters as the decoder), runs ``lmplz`` with its memory capped (never its
default of 80% of RAM) and writes, into one folder::

    text.txt        the normalized corpus, one sentence a line
    lm.arpa         the ARPA model
    lm.bin          the same, in KenLM's binary format (fast to load)
    unigrams.txt    the vocabulary, one word a line (the beam search decoder needs it)

``lmplz`` and ``build_binary`` are built by ``lm/build_kenlm.sh`` into the environment's
``bin`` folder; the ``kenlm`` Python module answers queries.
"""

from __future__ import annotations

import functools
import gzip
import logging
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ds2.io import atomic_write
from ds2.text import Alphabet

log = logging.getLogger("ds2.lm")

DEFAULT_MEMORY = "1G"  # lmplz -S: its default is 80% of physical memory


class LmError(ValueError):
    """A language model that cannot be built or read; the message says what to do."""


@dataclass(frozen=True)
class LmFiles:
    folder: Path
    text: Path
    arpa: Path
    binary: Path
    unigrams: Path
    n_sentences: int
    n_rejected: int  # lines dropped: empty, or characters outside the alphabet
    vocabulary: int


def kenlm_tool(name: str) -> Path:
    """Path of ``lmplz`` or ``build_binary``: the environment's bin folder first, then PATH."""
    candidate = Path(sys.prefix) / "bin" / name
    if candidate.exists():
        return candidate
    found = shutil.which(name)
    if found:
        return Path(found)
    raise LmError(f"KenLM's {name} is not built: run `bash lm/build_kenlm.sh` (or `bash scripts/setup.sh`)")


def normalized_sentences(paths: Iterable[str | Path], alphabet: Alphabet) -> Iterator[str | None]:
    """Each non-empty line of text files (``.gz`` read as gzip) normalized, or None for a line
    with characters outside the alphabet. Streamed: a corpus larger than memory (LibriSpeech's
    LM text, 40M sentences) is never held whole."""
    for path in paths:
        path = Path(path)
        if not path.exists():
            raise LmError(f"{path}: text file not found")
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8", errors="replace") as handle:
            for line_number, line in enumerate(handle, start=1):
                text = alphabet.normalize(line)
                if not text:
                    continue
                try:
                    alphabet.encode(text)
                except ValueError as err:
                    log.debug("%s:%d: %s", path, line_number, err)
                    yield None
                    continue
                yield text


def build_lm(
    texts: Iterable[str | Path],
    out_dir: str | Path,
    order: int = 3,
    alphabet: Alphabet = Alphabet(),
    memory: str = DEFAULT_MEMORY,
    prune: str | None = None,
) -> LmFiles:
    """Build an ``order``-gram KenLM model from text files (see the module docstring).

    prune: passed to ``lmplz --prune`` (e.g. "0 1 1": drop singleton bigrams and trigrams).
    """
    if not 2 <= order <= 6:
        raise LmError(f"order must be between 2 and 6 (KENLM_MAX_ORDER), got {order}")
    lmplz, build_binary = kenlm_tool("lmplz"), kenlm_tool("build_binary")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    text_path, arpa, binary, unigrams = (out_dir / name for name in ("text.txt", "lm.arpa", "lm.bin", "unigrams.txt"))
    rejected, n_sentences, vocabulary = 0, 0, set()
    with atomic_write(text_path) as handle:
        for sentence in normalized_sentences(texts, alphabet):
            if sentence is None:
                rejected += 1
                continue
            handle.write(sentence + "\n")
            n_sentences += 1
            vocabulary.update(sentence.split())
        if not n_sentences:
            raise LmError("no usable sentences in the text files (after normalization and the alphabet check)")
    if rejected:
        log.warning("dropped %d lines with characters outside the alphabet", rejected)
    command = [str(lmplz), "-o", str(order), "-S", memory, "-T", str(out_dir), "--discount_fallback"]
    if prune:
        command += ["--prune", *prune.split()]
    with open(text_path, "rb") as source, atomic_write(arpa, "wb") as target:
        _run(command, stdin=source, stdout=target)
    partial = binary.with_name(binary.name + ".tmp")  # build_binary writes to a path: rename when done
    _run([str(build_binary), str(arpa), str(partial)])
    os.replace(partial, binary)
    with atomic_write(unigrams) as handle:
        handle.write("\n".join(sorted(vocabulary)) + "\n")
    log.info("%s: %d-gram from %d sentences, %d words", binary, order, n_sentences, len(vocabulary))
    return LmFiles(out_dir, text_path, arpa, binary, unigrams, n_sentences, rejected, len(vocabulary))


def _run(command: list[str], **kwargs) -> None:
    result = subprocess.run(command, stderr=subprocess.PIPE, **kwargs)
    if result.returncode != 0:
        tail = result.stderr.decode("utf-8", "replace").strip().splitlines()[-5:]
        raise LmError(f"{Path(command[0]).name} failed (exit {result.returncode}): " + " | ".join(tail))


def load_lm(path: str | Path):
    """A ``kenlm.Model`` for an ARPA or binary file; LmError naming the file otherwise.

    Models are cached by resolved path and modification time, so tuning's many decoder
    builds read the file once.
    """
    path = Path(path)
    if not path.exists():
        raise LmError(f"{path}: language model not found")
    return _load_lm(str(path.resolve()), path.stat().st_mtime_ns)


@functools.lru_cache(maxsize=2)
def _load_lm(path: str, _mtime_ns: int):
    import kenlm

    path = Path(path)
    try:
        return kenlm.Model(str(path))
    except Exception as err:  # kenlm raises OSError / RuntimeError with a long C++ message
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise LmError(f"{path}: not a readable KenLM model ({reason[:200]})") from None


@dataclass(frozen=True)
class QueryResult:
    words: list[tuple[str, float, int, bool]]  # (word or </s>, log10 prob, n-gram length used, out of vocabulary)
    log10_prob: float
    perplexity: float


def query(model, text: str, alphabet: Alphabet = Alphabet()) -> QueryResult:
    """Per-word log10 probabilities (with </s>) and perplexity of a normalized sentence."""
    sentence = alphabet.normalize(text)
    words = sentence.split() + ["</s>"]
    scores = list(model.full_scores(sentence, bos=True, eos=True))
    rows = [(word, prob, ngram, oov) for word, (prob, ngram, oov) in zip(words, scores)]
    total = sum(prob for _, prob, _, _ in rows)
    return QueryResult(rows, total, math.pow(10.0, -total / len(rows)))
