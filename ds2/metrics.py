"""Word and character error rates whose counts equal NIST sclite's.

sclite (2.10, from SCTK 2.4.10 as packaged by Debian: ``sclite -r ref.trn trn -h
hyp.trn trn -i rm -s``) aligns a reference with a hypothesis by dynamic programming
with the weights of its ``wwd_WORD``: correct 0, substitution 4, insertion 3, deletion
3. A substitution costs less than a deletion plus an insertion but more than either
alone, so the weights decide how the errors split into S, D and I, and so does the
order in which cost ties are broken: the diagonal (match or substitution) first, then
the insertion, then the deletion. :func:`align_counts` does the same, so Corr, Sub, Del,
Ins and N are sclite's exactly (``tests/test_metrics.py`` checks this against the real
binary).

One normalization for scoring: :func:`score_pairs` and :func:`score_manifest` (so
``ds2 score``), training's dev evaluation, ``ds2 tune`` and the benchmarks all compare
:func:`scoring_text` of the reference and of the hypothesis (:func:`ds2.text.normalize`:
lower case, punctuation removed, whitespace collapsed), so the same hypotheses get the
same WER wherever they are scored, whatever the manifest's casing or punctuation. With
``normalize=False`` texts are compared as given: case-sensitive (sclite's ``-s``), tokens
taken literally (sclite's markup such as ``@``, ``(optionally deletable)`` or
``{alt / alt}`` means nothing here). :func:`word_errors` and :func:`char_errors` always
compare as given.

- Words are the whitespace-separated tokens of a text.
- Characters are those of the words joined by single spaces, so by default the space
  between two words counts as a character (a missing or extra word boundary is an
  error the CTC model made). sclite reproduces this with ``-c`` on texts whose spaces
  were replaced by a character found nowhere else (``_``). With
  ``include_spaces=False`` the words are concatenated, which is plain ``sclite -c``
  (it splits words into characters and drops the spaces).

Rates are errors / reference tokens; an empty reference gives 0.0 if the hypothesis is
empty too and ``inf`` otherwise. Usage::

    from ds2.metrics import score_manifest
    report = score_manifest("exp/decode/test.jsonl")  # fields "text" and "pred_text"
    print(report.format())
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ds2.data import ManifestError, read_manifest
from ds2.text import normalize as _normalize

# sclite's default alignment weights (SCTK src/sclite/word.c, wwd_WORD).
CORRECT_COST = 0
SUBSTITUTION_COST = 4
INSERTION_COST = 3
DELETION_COST = 3

MAX_CELLS = 200_000_000  # the largest reference x hypothesis table aligned (about 4 GiB of numpy arrays)

# Back-trace moves, one int8 per DP cell.
_DIAGONAL, _DELETION, _INSERTION = 0, 1, 2


@dataclass(frozen=True)
class ErrorCounts:
    """Alignment counts of one or more utterances; ``n_ref`` = correct + S + D."""

    n_ref: int  # reference tokens (words or characters)
    correct: int
    substitutions: int
    deletions: int
    insertions: int

    def __post_init__(self):
        counts = (self.n_ref, self.correct, self.substitutions, self.deletions, self.insertions)
        if min(counts) < 0 or self.correct + self.substitutions + self.deletions != self.n_ref:
            raise ValueError(f"inconsistent error counts {self}")

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def rate(self) -> float:
        """errors / n_ref; for an empty reference 0.0 without errors, else inf."""
        if self.n_ref == 0:
            return 0.0 if self.errors == 0 else float("inf")
        return self.errors / self.n_ref

    def __add__(self, other: ErrorCounts) -> ErrorCounts:
        if not isinstance(other, ErrorCounts):
            return NotImplemented
        return ErrorCounts(
            self.n_ref + other.n_ref,
            self.correct + other.correct,
            self.substitutions + other.substitutions,
            self.deletions + other.deletions,
            self.insertions + other.insertions,
        )


ZERO = ErrorCounts(0, 0, 0, 0, 0)


def _moves(reference: Sequence[str], hypothesis: Sequence[str]) -> np.ndarray:
    """sclite's back-trace move of every DP cell, shape = (n_ref + 1, n_hyp + 1), int8.

    Rows of the DP table are filled with numpy: a row's insertion chain
    ``row[b] = min(from_above[b], row[b - 1] + INSERTION_COST)`` equals
    ``INSERTION_COST * b`` plus a running minimum of ``from_above[k] - INSERTION_COST * k``,
    so a row costs a few array operations whatever its length (about 2 ms for 200 x 200
    characters; memory is a few bytes per cell).
    """
    n_ref, n_hyp = len(reference), len(hypothesis)
    if n_ref * n_hyp > MAX_CELLS:
        raise ValueError(f"{n_ref} x {n_hyp} tokens are too many to align as one pair (the table would take "
                         f"{n_ref * n_hyp * 22 / 2**30:.0f} GiB): score the recording in segments")
    token_ids: dict[str, int] = {}
    ref_ids = np.array([token_ids.setdefault(token, len(token_ids)) for token in reference])
    hyp_ids = np.array([token_ids.setdefault(token, len(token_ids)) for token in hypothesis])
    same = ref_ids[:, None] == hyp_ids[None, :]  # shape = (n_ref, n_hyp)
    diagonal_cost = np.where(same, CORRECT_COST, SUBSTITUTION_COST).astype(np.int32)

    # cost[a, b]: least cost of aligning reference[:a] with hypothesis[:b].
    insertion_ramp = INSERTION_COST * np.arange(n_hyp + 1, dtype=np.int32)
    cost = np.empty((n_ref + 1, n_hyp + 1), dtype=np.int32)
    cost[0] = insertion_ramp
    for a in range(1, n_ref + 1):
        row, above = cost[a], cost[a - 1]
        row[0] = DELETION_COST * a
        np.minimum(above[:-1] + diagonal_cost[a - 1], above[1:] + DELETION_COST, out=row[1:])  # from_above
        row -= insertion_ramp
        np.minimum.accumulate(row, out=row)
        row += insertion_ramp

    # sclite's choice per cell (net_dp.c): the diagonal if no worse than both others,
    # then the deletion if strictly better than the insertion, else the insertion.
    diagonal = cost[:-1, :-1] + diagonal_cost
    deletion = cost[:-1, 1:] + DELETION_COST
    insertion = cost[1:, :-1] + INSERTION_COST
    moves = np.empty((n_ref + 1, n_hyp + 1), dtype=np.int8)
    moves[0, :] = _INSERTION
    moves[:, 0] = _DELETION
    moves[1:, 1:] = np.where(
        (diagonal <= deletion) & (diagonal <= insertion),
        _DIAGONAL,
        np.where(deletion < insertion, _DELETION, _INSERTION),
    )
    return moves


def align_counts(reference: Sequence[str], hypothesis: Sequence[str]) -> ErrorCounts:
    """Align two token sequences as sclite does and count the edits (the back-trace walks
    from the end, as sclite's does)."""
    n_ref, n_hyp = len(reference), len(hypothesis)
    if n_ref == 0 or n_hyp == 0:
        return ErrorCounts(n_ref, 0, 0, n_ref, n_hyp)
    moves = _moves(reference, hypothesis)
    moves_flat = moves.tobytes()  # indexing bytes gives Python ints, fast in the loop

    correct = substitutions = deletions = insertions = 0
    for move, a, b in _backtrace(moves_flat, n_ref, n_hyp):
        if move == _DIAGONAL:
            if reference[a] == hypothesis[b]:
                correct += 1
            else:
                substitutions += 1
        elif move == _DELETION:
            deletions += 1
        else:
            insertions += 1
    return ErrorCounts(n_ref, correct, substitutions, deletions, insertions)


def _backtrace(moves_flat: bytes, n_ref: int, n_hyp: int):
    """(move, reference index, hypothesis index) from the end to the start of the path."""
    a, b = n_ref, n_hyp
    while a > 0 or b > 0:
        move = moves_flat[a * (n_hyp + 1) + b]
        if move == _DIAGONAL:
            a, b = a - 1, b - 1
        elif move == _DELETION:
            a -= 1
        else:
            b -= 1
        yield move, a, b


def hypothesis_correct(reference: Sequence[str], hypothesis: Sequence[str]) -> list[bool]:
    """For each hypothesis token: is it a correct match in sclite's alignment with the
    reference (False for substitutions and insertions)? What word confidences are scored on."""
    correct = [False] * len(hypothesis)
    if not reference or not hypothesis:
        return correct
    n_ref, n_hyp = len(reference), len(hypothesis)
    moves_flat = _moves(reference, hypothesis).tobytes()
    for move, a, b in _backtrace(moves_flat, n_ref, n_hyp):
        if move == _DIAGONAL and reference[a] == hypothesis[b]:
            correct[b] = True
    return correct


def roc_auc(scores: Sequence[float], positive: Sequence[bool]) -> float:
    """Area under the ROC curve: the chance that a random positive scores above a random
    negative (ties count half). nan without both kinds."""
    scores, positive = np.asarray(scores, dtype=float), np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    # average ranks over ties
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(scores)]])
    for start, end in zip(starts, ends):
        ranks[order[start:end]] = (start + end + 1) / 2
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def scoring_text(text: str) -> str:
    """A transcript as every ds2 score sees it: :func:`ds2.text.normalize` (NFC, lower case,
    punctuation removed, apostrophes kept inside words, whitespace collapsed)."""
    return _normalize(text)


def word_errors(reference: str, hypothesis: str) -> ErrorCounts:
    """sclite word counts of two texts split on whitespace."""
    return align_counts(reference.split(), hypothesis.split())


def char_errors(reference: str, hypothesis: str, include_spaces: bool = True) -> ErrorCounts:
    """sclite character counts; words joined by one space (counted), or by none."""
    separator = " " if include_spaces else ""
    return align_counts(separator.join(reference.split()), separator.join(hypothesis.split()))


@dataclass(frozen=True)
class ScoreReport:
    """Corpus totals: word and character counts summed over utterances."""

    n_utterances: int
    words: ErrorCounts
    chars: ErrorCounts

    @property
    def wer(self) -> float:
        """Word error rate in %."""
        return 100.0 * self.words.rate

    @property
    def cer(self) -> float:
        """Character error rate in % (spaces between words count as characters)."""
        return 100.0 * self.chars.rate

    def to_dict(self) -> dict:
        """Plain JSON-ready dict: counts, errors and the rates in %."""
        return {
            "n_utterances": self.n_utterances,
            "wer": self.wer,
            "cer": self.cer,
            "words": {**asdict(self.words), "errors": self.words.errors},
            "chars": {**asdict(self.chars), "errors": self.chars.errors},
        }

    def format(self) -> str:
        """A small table, sclite's columns as counts and the rate in % (2 decimals)."""
        header = ("", "N", "Corr", "Sub", "Del", "Ins", "Err", "%")
        rows = [header]
        for name, counts, rate in (("WER", self.words, self.wer), ("CER", self.chars, self.cer)):
            numbers = (counts.n_ref, counts.correct, counts.substitutions, counts.deletions, counts.insertions)
            rows.append((name, *(str(number) for number in numbers), str(counts.errors), f"{rate:.2f}"))
        widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
        lines = [f"utterances: {self.n_utterances}"]
        for row in rows:
            name, *numbers = row
            cells = [name.ljust(widths[0])] + [cell.rjust(width) for cell, width in zip(numbers, widths[1:])]
            lines.append("  ".join(cells))
        return "\n".join(lines)


def score_pairs(pairs: Iterable[tuple[str, str]], normalize: bool = True) -> ScoreReport:
    """Score (reference, hypothesis) text pairs; counts are summed, not rates averaged.

    Both texts go through :func:`scoring_text` first unless ``normalize`` is False.
    """
    n_utterances, words, chars = 0, ZERO, ZERO
    for reference, hypothesis in pairs:
        if normalize:
            reference, hypothesis = scoring_text(reference), scoring_text(hypothesis)
        n_utterances += 1
        words += word_errors(reference, hypothesis)
        chars += char_errors(reference, hypothesis)
    return ScoreReport(n_utterances, words, chars)


def score_manifest(
    path: str | Path, ref_field: str = "text", hyp_field: str = "pred_text", normalize: bool = True
) -> ScoreReport:
    """Score a JSON-lines manifest whose records hold a reference and a hypothesis
    (normalized by :func:`scoring_text` unless ``normalize`` is False).

    Raises ManifestError (a ValueError) naming ``path:line`` for a record without
    either field or with a field that is not a string.
    """

    def pairs():
        for record in read_manifest(path, resolve_paths=False):
            for field in (ref_field, hyp_field):
                if not isinstance(record.get(field), str):
                    problem = "missing field" if field not in record else "not a string:"
                    raise ManifestError(f"{path}:{record['line']}: {problem} {field!r}")
            yield record[ref_field], record[hyp_field]

    return score_pairs(pairs(), normalize)
