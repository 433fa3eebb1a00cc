"""ds2's LM beam search: the Python face of the compiled core in csrc/beam_search.cpp.

The core is a CTC prefix beam search that maximizes DS2's Q(y) = log p_ctc(y|x) +
alpha log p_lm(y) + beta words(y), with DS2's per-frame pruning and KenLM queried through
its C++ state API; it is compiled on first use (torch.utils.cpp_extension, cached like the
CUDA CTC kernel) against the KenLM libraries that ``lm/build_kenlm.sh`` installs into the
environment. Its calls release the GIL, so a batch decodes on threads sharing one LM.

    decoder = LmDecoder(alphabet, BeamSearchOptions(lm="exp/lm/lm.bin", alpha=0.8, beta=1.5))
    best = decoder.decode(log_probs)            # (T, V) natural-log probabilities
    best.text, best.words[0].start              # words with frames and confidences
    texts = decoder.decode_batch(many, jobs=2)  # threads
    stream = decoder.stream()                   # chunk by chunk
    stream.feed(chunk); stream.partial().text; stream.finalize()
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

log = logging.getLogger("ds2.decode")

SOURCES = Path(__file__).parent / "csrc"
ROW_SUM_TOLERANCE = 1e-2  # |sum(exp(row)) - 1| allowed in the log-probs given


class DecoderBuildError(RuntimeError):
    """The compiled decoder could not be built; the message says what to do."""


def kenlm_root() -> Path:
    """Where lm/build_kenlm.sh put KenLM's headers (include/kenlm) and libraries (lib/kenlm)."""
    return Path(os.environ.get("DS2_KENLM_ROOT", sys.prefix))


@lru_cache(maxsize=None)
def extension():
    """The compiled core, built once per source version into torch's extension cache."""
    from torch.utils import cpp_extension

    root = kenlm_root()
    include, libraries = root / "include" / "kenlm", root / "lib" / "kenlm"
    needed = [include / "lm" / "model.hh", libraries / "libkenlm.a", libraries / "libkenlm_util.a"]
    missing = [str(path) for path in needed if not path.exists()]
    if missing:
        raise DecoderBuildError(f"KenLM's query library is not built ({missing[0]} is missing): "
                                "run `bash lm/build_kenlm.sh` (or `bash scripts/setup.sh`)")
    venv_bin = str(Path(sys.prefix) / "bin")  # the ninja torch builds with may live only there
    if venv_bin not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = venv_bin + os.pathsep + os.environ.get("PATH", "")
    sources = sorted(SOURCES.glob("*.cpp"))
    digest = hashlib.sha1()
    for path in sources:
        digest.update(path.name.encode() + path.read_bytes())
    digest.update(str(root).encode())
    log.info("loading ds2's beam search decoder (the first use after an install compiles it, about 30 s)")
    try:
        return cpp_extension.load(
            name=f"ds2_beam_search_{digest.hexdigest()[:12]}",
            sources=[str(path) for path in sources],
            extra_include_paths=[str(include)],
            extra_cflags=["-O3", "-DKENLM_MAX_ORDER=6"],
            extra_ldflags=[str(libraries / "libkenlm.a"), str(libraries / "libkenlm_util.a"), "-lz", "-lbz2", "-llzma"],
        )
    except Exception as error:  # compiler missing, ...
        lines = str(error).strip().splitlines()
        raise DecoderBuildError("building ds2's beam search decoder failed:\n" + "\n".join(lines[-20:])) from None


@dataclass(frozen=True)
class WordTiming:
    """A word of a hypothesis placed on the frames by Viterbi alignment."""

    word: str
    start: int  # first frame
    end: int  # one past the last frame
    confidence: float  # mean probability of its labels over their frames

    def seconds(self, frame_seconds: float) -> tuple[float, float]:
        """(start, end) in seconds, for a model whose output frames are ``frame_seconds`` apart."""
        return round(self.start * frame_seconds, 3), round(self.end * frame_seconds, 3)


@dataclass(frozen=True)
class Hypothesis:
    text: str
    acoustic: float  # log p_ctc (natural log, summed over alignments)
    lm: float  # alpha * ln p_lm + beta * words (+ hotword bonuses, partial-word costs)
    score: float  # acoustic + lm: what the search ranks by
    words: tuple[WordTiming, ...] = ()


def _hypotheses(raw) -> list[Hypothesis]:
    return [Hypothesis(text, acoustic, lm, total, tuple(WordTiming(*word) for word in words))
            for text, acoustic, lm, total, words in raw]


@lru_cache(maxsize=2)
def _language_model(path: str, _mtime_ns: int, unigrams: tuple[str, ...]):
    return extension().LanguageModel(path, list(unigrams))


def load_language_model(path: str | Path, unigrams: list[str]):
    """The core's KenLM model with its unigrams, cached by path, mtime and unigrams (tuning
    builds many decoders on one LM)."""
    from ds2.lm import LmError

    path = Path(path)
    if not path.exists():
        raise LmError(f"{path}: language model not found")
    if path.stat().st_size == 0:
        raise LmError(f"{path}: empty file, not a KenLM model")
    try:
        model = _language_model(str(path.resolve()), path.stat().st_mtime_ns, tuple(unigrams))
    except ValueError as error:
        raise LmError(str(error)) from None
    if unigrams and model.unigrams_known == 0:
        raise LmError(f"{path}: none of the {len(unigrams)} unigrams is a word of this LM: the unigrams "
                      "belong to another model")
    return model


class LmDecoder:
    """LM beam search for one alphabet and one set of options; the LM is loaded once.

    Labels may be bigrams (DS2's English outputs): a prefix grows by the label's characters,
    checked against the LM's unigrams and the hotwords byte by byte; a word ends only at the
    space label. Different spellings of one text ("th"+"e", "t"+"he") are different prefixes
    of the search, counted once in the N best.
    """

    def __init__(self, alphabet, options):
        from ds2.text import Alphabet

        self.alphabet: Alphabet = alphabet
        self.options = options
        self.labels = [""] + list(alphabet.symbols)  # index 0 is the blank
        symbols = set(alphabet.symbols)
        for phrase in options.hotwords:
            outside = sorted({c for c in phrase if c not in symbols and c != " "})
            if outside:
                raise ValueError(f"hotword {phrase!r} has characters outside the model's alphabet: {outside}")
        self.lm = None
        if options.lm:
            unigrams = read_unigrams(options, alphabet)
            self.lm = load_language_model(options.lm, unigrams)
        core = extension()
        settings = core.Options()
        settings.beam_width = options.beam_width
        settings.beam_threshold = options.beam_threshold
        settings.prune_p = options.prune_p
        settings.prune_top = options.prune_top
        settings.alpha = options.alpha
        settings.beta = options.beta
        settings.unk_offset = options.unk_offset
        settings.hotword_weight = options.hotword_weight
        self._settings = settings
        self._core = core

    def _check(self, log_probs, first_frame: int = 0) -> np.ndarray:
        """(T, V) float32, C order; ValueError for another width or rows that are not
        log-probabilities (NaN and positive values the core itself refuses)."""
        values = np.ascontiguousarray(np.asarray(log_probs, dtype=np.float32))
        if values.ndim != 2 or values.shape[1] != len(self.labels):
            raise ValueError(f"log-probs of shape {values.shape}: expected (frames, {len(self.labels)}) for this "
                             "alphabet (blank included)")
        with np.errstate(over="ignore", invalid="ignore"):
            sums = np.exp(values).sum(axis=1, dtype=np.float64)  # float32 exp: the check costs little
        bad = np.flatnonzero(~(np.abs(sums - 1.0) <= ROW_SUM_TOLERANCE) & ~np.isnan(sums))
        if len(bad):
            raise ValueError(f"frame {first_frame + bad[0]}: probabilities sum to {sums[bad[0]]:.4g}, not 1: the "
                             "decoder takes log_softmax output, not logits")
        return values

    def decode(self, log_probs, n_best: int = 1, timing: bool = True) -> Hypothesis:
        """The best hypothesis for a (T, V) natural-log probability matrix (see n_best_of)."""
        return self.n_best_of(log_probs, n_best, timing)[0]

    def n_best_of(self, log_probs, n_best: int = 5, timing: bool = True) -> list[Hypothesis]:
        """Up to ``n_best`` distinct texts, best first, each with its scores and timed words."""
        values = self._check(log_probs)
        raw = self._core.decode(self.lm, self.labels, self._settings, list(self.options.hotwords), values,
                                n_best, timing)
        return _hypotheses(raw)

    def decode_batch(self, log_probs: list, jobs: int = 0, timing: bool = False) -> list[Hypothesis]:
        """The best hypothesis of each matrix, on ``jobs`` threads (0: one per core)."""
        jobs = jobs or os.cpu_count() or 1
        if jobs == 1 or len(log_probs) <= 1:
            return [self.decode(lp, timing=timing) for lp in log_probs]
        with ThreadPoolExecutor(max_workers=min(jobs, len(log_probs))) as pool:
            return list(pool.map(lambda lp: self.decode(lp, timing=timing), log_probs))

    def stream(self) -> "StreamingSearch":
        """A search fed chunk by chunk (its result after the last chunk equals decode())."""
        return StreamingSearch(self._core.Search(self.lm, self.labels, self._settings, list(self.options.hotwords)),
                               self)


class StreamingSearch:
    """One utterance decoded as its frames arrive."""

    def __init__(self, search, decoder: LmDecoder):
        self._search = search
        self._decoder = decoder

    @property
    def frames(self) -> int:
        return self._search.frames

    def feed(self, log_probs) -> None:
        """Add (frames, V) log-probs; a chunk may have any number of frames (0 too)."""
        values = self._decoder._check(log_probs, self.frames)
        if len(values):
            self._search.feed(values)

    def partial(self, timing: bool = False) -> Hypothesis:
        """The best hypothesis so far (the word being spelled still counts as partial)."""
        return _hypotheses(self._search.results(1, False, timing))[0]

    def finalize(self, n_best: int = 1, timing: bool = True) -> list[Hypothesis]:
        """The n best hypotheses with the end of the sentence scored."""
        return _hypotheses(self._search.results(n_best, True, timing))


def read_unigrams(options, alphabet) -> list[str]:
    """The LM's words (unigrams.txt beside it unless named); [] when there is none. Their
    characters must be the model's."""
    path = Path(options.unigrams) if options.unigrams else Path(options.lm).with_name("unigrams.txt")
    if not path.exists():
        if options.unigrams:
            raise ValueError(f"{path}: unigrams file not found")
        return []
    unigrams = path.read_text(encoding="utf-8").split()
    symbols = set(alphabet.symbols)
    outside = sorted({c for word in unigrams for c in word if c not in symbols})
    if outside:
        raise ValueError(f"{path}: the LM's words use characters outside the model's alphabet: {outside[:10]}")
    return unigrams
