"""CTC forced alignment: which output frames carry each character and word of a transcript.

:func:`viterbi` finds the single best CTC path of a label sequence through a (T, V) matrix of
log-probabilities (DS2 section 5.1: argmax over alignments of prod_t p_ctc(l_t | x)); the
numba kernel runs on the CPU, a frame-by-frame torch loop on the GPU (or anywhere), and
tests check both against torchaudio.functional.forced_align. :func:`align` turns the path
into character and word :class:`Span` objects (frames and a confidence: the mean
probability of the aligned character over its frames). With a bigram alphabet the path is
one of labels, a bigram one label: both its characters get the bigram's frames and score.

Long recordings: a full Viterbi needs one byte per (frame, state), which for an hour of
frames and tens of thousands of characters does not fit. Past ``max_cells`` the transcript
is aligned in windows: the greedy transcription of the log-probs is matched word for word
against the transcript (difflib), runs of at least ``anchor_words`` matching words are
anchors, and the windows are cut between two anchored words, in the middle of the pause
the greedy path puts between them. Each window is aligned on its own, so memory depends on
the window, not on the recording. A stretch with no anchor that is still too large is
reported as unaligned (its words get no frames) instead of exhausting memory.

Frames are the model's output steps; ``frame_seconds`` (time stride / 100) converts them.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import torch

from ds2.text import BLANK, Alphabet, normalize

BACKENDS = ("auto", "numba", "torch")
MAX_CELLS = 1 << 26  # frames x states of one Viterbi window: 64 MiB of backpointers


class AlignmentError(ValueError):
    """A transcript that cannot be aligned to its frames; the message says why."""


@dataclass(frozen=True)
class Span:
    """A character or a word: frames [start, end) and a confidence in [0, 1].

    An unaligned word (a stretch the windowed alignment could not place) has start = end = -1
    and score nan.
    """

    text: str
    start: int
    end: int
    score: float

    @property
    def aligned(self) -> bool:
        return self.start >= 0


@dataclass
class Alignment:
    text: str  # the normalized transcript that was aligned
    chars: list[Span]  # one per character of ``text``, spaces included (unaligned: -1)
    words: list[Span]  # one per word of ``text``
    score: float  # total log-probability of the best path (sum over windows)
    n_frames: int
    windows: int = 1
    unaligned: list[str] = field(default_factory=list)  # why stretches were left out

    def to_record(self, frame_seconds: float, with_chars: bool = False) -> dict:
        """JSON-ready: words (and characters) with start/end in seconds."""

        def seconds(span: Span) -> dict:
            if not span.aligned:
                return {"word": span.text, "start": None, "end": None, "score": None}
            return {"word": span.text, "start": round(span.start * frame_seconds, 3),
                    "end": round(span.end * frame_seconds, 3), "score": round(span.score, 4)}

        record = {"text": self.text, "score": round(self.score, 3), "n_frames": self.n_frames,
                  "windows": self.windows, "words": [seconds(w) for w in self.words]}
        if with_chars:
            record["chars"] = [{**seconds(c), "char": c.text} for c in self.chars]
            for entry in record["chars"]:
                del entry["word"]
        if self.unaligned:
            record["unaligned"] = self.unaligned
        return record


# --------------------------------------------------------------------------- Viterbi


def viterbi(log_probs, labels, blank: int = BLANK, backend: str = "auto") -> tuple[np.ndarray, float]:
    """Best CTC path of ``labels`` through ``log_probs``.

    log_probs: shape = (T, V), log-probabilities (numpy or torch); labels: shape = (L,).
    Returns (states, score): the extended-sequence state of each frame, int32 (T,) (even: a
    blank, 2k+1: label k), and the path's log-probability. Raises AlignmentError when the
    labels cannot fit the frames (T < L + repeated neighbours).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown alignment backend {backend!r}; available: {', '.join(BACKENDS)}")
    labels_np = np.asarray(labels.cpu() if torch.is_tensor(labels) else labels, dtype=np.int64)
    n_frames = log_probs.shape[0]
    needed = len(labels_np) + int(np.sum(labels_np[1:] == labels_np[:-1]))
    if needed > n_frames:
        raise AlignmentError(f"{len(labels_np)} labels need {needed} frames, the audio has {n_frames}")
    on_gpu = torch.is_tensor(log_probs) and log_probs.device.type == "cuda"
    if backend == "torch" or (backend == "auto" and on_gpu):
        states, score = _viterbi_torch(torch.as_tensor(log_probs), torch.as_tensor(labels_np), blank)
    else:
        values = log_probs.detach().cpu().numpy() if torch.is_tensor(log_probs) else np.asarray(log_probs)
        states, score = _numba_kernel()(np.ascontiguousarray(values), labels_np, blank)
    if not math.isfinite(score):
        raise AlignmentError("no CTC path carries the transcript (a required character has probability 0)")
    return states, float(score)


@lru_cache(maxsize=None)
def _numba_kernel():
    from ds2._align_numba import viterbi as kernel

    return kernel


@torch.no_grad()
def _viterbi_torch(log_probs: torch.Tensor, labels: torch.Tensor, blank: int) -> tuple[np.ndarray, float]:
    """The same recursion, one vectorized step per frame, on the tensors' device."""
    device = log_probs.device
    log_probs = log_probs.double() if device.type == "cpu" else log_probs.float()
    labels = labels.to(device)
    n_frames, n_states = log_probs.shape[0], 2 * len(labels) + 1
    token = torch.full((n_states,), blank, dtype=torch.long, device=device)
    token[1::2] = labels
    skip = torch.zeros(n_states, dtype=torch.bool, device=device)
    if n_states > 3:
        skip[3::2] = labels[1:] != labels[:-1]
    emissions = log_probs[:, token]  # T x S
    score = torch.full((n_states,), -math.inf, dtype=log_probs.dtype, device=device)
    score[:2] = emissions[0, :2]
    back = torch.zeros((n_frames, n_states), dtype=torch.int8, device=device)
    never = torch.full((2,), -math.inf, dtype=log_probs.dtype, device=device)
    positions = torch.arange(n_states, device=device)
    for t in range(1, n_frames):
        candidates = torch.stack([
            score,
            torch.cat([never[:1], score[:-1]]),
            torch.where(skip, torch.cat([never, score[:-2]]), -math.inf),
        ])  # 3 x S: stay, advance, skip; ties go to the first (as in the numba kernel)
        best, move = candidates.max(dim=0)
        reachable = (positions <= 2 * t + 1) & (positions >= n_states - 2 * (n_frames - t))
        score = torch.where(reachable, best + emissions[t], -math.inf)
        back[t] = move.to(torch.int8)
    last = n_states - 1
    if n_states > 1 and score[n_states - 2] > score[last]:
        last = n_states - 2
    total = float(score[last])
    back = back.cpu().numpy()
    states = np.zeros(n_frames, dtype=np.int32)
    s = last
    for t in range(n_frames - 1, -1, -1):
        states[t] = s
        s -= back[t, s]
    return states, total


# --------------------------------------------------------------------------- spans


def char_spans(states: np.ndarray, log_probs: np.ndarray, labels: np.ndarray, text: str | list[str]) -> list[Span]:
    """One Span per label from a Viterbi path; frame offsets as given. ``text``: the symbol of
    each label (a string: one character per label)."""
    probs = np.exp(log_probs[np.arange(len(states)), _frame_tokens(states, labels)])
    spans = []
    label_of_frame = np.where(states % 2 == 1, (states - 1) // 2, -1)
    change = np.flatnonzero(np.diff(label_of_frame, prepend=-2, append=-2))  # run boundaries
    runs = {}
    for start, end in zip(change[:-1], change[1:]):
        if label_of_frame[start] >= 0:
            runs[int(label_of_frame[start])] = (int(start), int(end))
    for k, char in enumerate(text):
        start, end = runs[k]  # a valid path visits every label
        spans.append(Span(char, start, end, float(probs[start:end].mean())))
    return spans


def _frame_tokens(states: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return np.where(states % 2 == 1, labels[np.maximum(states - 1, 0) // 2], BLANK)


def word_spans(chars: list[Span]) -> list[Span]:
    """Words of a character (or label) sequence (split at spaces): first frame of the first
    character to the end of the last; score is the frame-weighted mean of the characters' scores."""
    words, current = [], []
    for span in chars + [Span(" ", -1, -1, math.nan)]:
        if span.text != " ":
            current.append(span)
            continue
        if current:
            text = "".join(c.text for c in current)
            if all(c.aligned for c in current):
                frames = np.array([c.end - c.start for c in current], dtype=float)
                score = float(np.dot(frames, [c.score for c in current]) / frames.sum())
                words.append(Span(text, current[0].start, current[-1].end, score))
            else:
                words.append(Span(text, -1, -1, math.nan))
        current = []
    return words


# --------------------------------------------------------------------------- align


def align(log_probs, text: str, alphabet: Alphabet, backend: str = "auto", max_cells: int = MAX_CELLS,
          anchor_words: int = 3) -> Alignment:
    """Align ``text`` (normalized here) to ``log_probs`` (T, V) of one recording.

    The labels are those the model was trained on (``alphabet.encode``: bigrams where it has
    them); the returned characters are the text's either way. Raises AlignmentError for a
    transcript that is empty, holds characters outside the alphabet, or cannot fit the frames.
    """
    text = normalize(text)
    if not text:
        raise AlignmentError("empty transcript")
    try:
        labels = np.array(alphabet.encode(text), dtype=np.int64)
    except ValueError as err:
        raise AlignmentError(str(err)) from None
    symbols = [alphabet.symbols[label - 1] for label in labels]
    values = log_probs.detach().float().cpu().numpy() if torch.is_tensor(log_probs) else np.asarray(log_probs)
    n_frames = len(values)
    if n_frames * (2 * len(labels) + 1) <= max_cells:
        states, score = viterbi(log_probs, labels, backend=backend)
        spans = char_spans(states, values, labels, symbols)
        return Alignment(text, _characters(spans), word_spans(spans), score, n_frames)
    return _align_in_windows(values, text, labels, symbols, alphabet, backend, max_cells, anchor_words)


def _characters(spans: list[Span]) -> list[Span]:
    """Label spans -> one span per character: a bigram's two characters share its frames."""
    if all(len(span.text) == 1 for span in spans):
        return spans
    return [Span(char, span.start, span.end, span.score) for span in spans for char in span.text]


def greedy_words(log_probs: np.ndarray, alphabet: Alphabet) -> list[tuple[str, int, int]]:
    """The best-path transcription as (word, first frame, end frame) triples."""
    best = log_probs.argmax(axis=1)
    words, chars, start, end = [], [], -1, -1
    previous = BLANK
    for t, token in enumerate(best.tolist()):
        if token != previous and token != BLANK:
            char = alphabet.symbols[token - 1]
            if char == " ":
                if chars:
                    words.append(("".join(chars), start, end))
                chars = []
            else:
                if not chars:
                    start = t
                chars.append(char)
        if token != BLANK and alphabet.symbols[token - 1] != " ":
            end = t + 1
        previous = token
    if chars:
        words.append(("".join(chars), start, end))
    return words


def anchor_cuts(log_probs: np.ndarray, words: list[str], alphabet: Alphabet, anchor_words: int) -> list[tuple[int, int]]:
    """Places where the transcript can be cut safely: (word index j, frame) meaning words
    [.., j) lie before ``frame`` and words [j, ..) after it.

    Only at the edges of, and inside, runs of >= anchor_words transcript words that the
    greedy transcription got right; the frame is the middle of the pause the greedy path
    puts between the two words. Cuts at the very start and end (j = 0, len(words)) are left
    to the caller.
    """
    hypothesis = greedy_words(log_probs, alphabet)
    matcher = difflib.SequenceMatcher(None, [w for w, _, _ in hypothesis], words, autojunk=False)
    cuts: dict[int, int] = {}
    for i, j, size in matcher.get_matching_blocks():
        if size < anchor_words:
            continue
        for k in range(size + 1):  # before the block's first word, between its words, after its last
            left = hypothesis[i + k - 1][2] if i + k > 0 else 0
            right = hypothesis[i + k][1] if i + k < len(hypothesis) else len(log_probs)
            if 0 < j + k < len(words):
                cuts[j + k] = (left + right) // 2
    return sorted(cuts.items())


def _align_in_windows(values, text, labels, symbols, alphabet, backend, max_cells, anchor_words) -> Alignment:
    words = text.split(" ")
    # label offset of each word (bigrams never hold a space: each word's labels are its own)
    starts = [0] + [k + 1 for k, symbol in enumerate(symbols) if symbol == " "]
    offsets = np.array(starts + [len(symbols) + 1])
    n_frames = len(values)
    cuts = [(0, 0)] + anchor_cuts(values, words, alphabet, anchor_words) + [(len(words), n_frames)]

    def cells(a, b) -> int:
        n_labels = offsets[b[0]] - offsets[a[0]] - 1
        return (b[1] - a[1]) * (2 * n_labels + 1)

    windows, start, index = [], cuts[0], 1
    while index < len(cuts):
        # the farthest cut that keeps the window within budget (at least the next one)
        end = index
        while end + 1 < len(cuts) and cells(start, cuts[end + 1]) <= max_cells:
            end += 1
        windows.append((start, cuts[end]))
        start, index = cuts[end], end + 1

    spans: list[Span] = [Span(symbol, -1, -1, math.nan) for symbol in symbols]
    score, unaligned = 0.0, []
    for (j0, f0), (j1, f1) in windows:
        if j1 == j0:
            continue
        c0, c1 = int(offsets[j0]), int(offsets[j1]) - 1
        window_symbols = symbols[c0:c1]
        where = f"words {j0 + 1}-{j1} (frames {f0}-{f1})"
        if cells((j0, f0), (j1, f1)) > 4 * max_cells:
            unaligned.append(f"{where}: no anchor for {(f1 - f0)} frames, too large to align")
            continue
        try:
            states, window_score = viterbi(values[f0:f1], labels[c0:c1], backend=backend)
        except AlignmentError as err:
            unaligned.append(f"{where}: {err}")
            continue
        score += window_score
        for k, span in enumerate(char_spans(states, values[f0:f1], labels[c0:c1], window_symbols)):
            spans[c0 + k] = Span(span.text, span.start + f0, span.end + f0, span.score)
    if len(unaligned) == len([w for w in windows if w[1][0] > w[0][0]]):
        raise AlignmentError("; ".join(unaligned))
    return Alignment(text, _characters(spans), word_spans(spans), score, n_frames, len(windows), unaligned)


def ctm_lines(utterance: str, alignment: Alignment, frame_seconds: float, start_seconds: float = 0.0) -> list[str]:
    """NIST CTM: ``<utterance> 1 <start> <duration> <word> <confidence>`` per aligned word."""
    return [
        f"{utterance} 1 {start_seconds + w.start * frame_seconds:.3f} {(w.end - w.start) * frame_seconds:.3f} "
        f"{w.text} {w.score:.4f}"
        for w in alignment.words if w.aligned
    ]
