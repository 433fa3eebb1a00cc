"""ds2.metrics: hand-computed cases, and equality with the real NIST sclite binary."""

from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
import subprocess

import pytest

from ds2.data import ManifestError
from ds2.metrics import ErrorCounts, ScoreReport, align_counts, char_errors, score_manifest, score_pairs, word_errors

DEBIAN_SCLITE = "/usr/lib/sctk/bin/sclite"  # Debian/Ubuntu package sctk
SPACE_STAND_IN = "_"  # never in the generated texts (nor in ds2.text.normalize's output)


# --------------------------------------------------------------------------- hand-computed


def counts(n_ref, correct, substitutions, deletions, insertions):
    return ErrorCounts(n_ref, correct, substitutions, deletions, insertions)


def test_identical():
    assert word_errors("the cat sat", "the cat sat") == counts(3, 3, 0, 0, 0)
    assert char_errors("the cat", "the cat") == counts(7, 7, 0, 0, 0)
    assert word_errors("the cat sat", "the cat sat").rate == 0.0


def test_empty_hypothesis_deletes_everything():
    result = word_errors("the cat sat", "")
    assert result == counts(3, 0, 0, 3, 0)
    assert result.errors == 3 and result.rate == 1.0
    assert char_errors("ab cd", "") == counts(5, 0, 0, 5, 0)  # the space is a character
    assert char_errors("ab cd", "", include_spaces=False) == counts(4, 0, 0, 4, 0)


def test_empty_reference_only_insertions():
    result = word_errors("", "a b")
    assert result == counts(0, 0, 0, 0, 2)
    assert result.rate == math.inf
    assert word_errors("", "").rate == 0.0
    assert word_errors("  ", " \t") == counts(0, 0, 0, 0, 0)


def test_substitution_is_cheaper_than_deletion_plus_insertion():
    # S costs 4 < D + I = 6: one substitution, not a deletion and an insertion.
    assert word_errors("a b c", "a x c") == counts(3, 2, 1, 0, 0)


def test_two_substitutions_cost_more_than_deletion_plus_insertion():
    # Unit-cost Levenshtein ties S S with D C I (2 edits each); sclite's weights
    # (8 against 6) pick D C I. Checked with sclite: "REF: a b * / HYP: * b a".
    assert word_errors("a b", "b a") == counts(2, 1, 0, 1, 1)


def test_cost_tie_goes_to_substitutions():
    # S S S and D D C I I both cost 12; sclite's back-trace prefers the diagonal.
    assert word_errors("a b c", "c d e") == counts(3, 0, 3, 0, 0)


def test_cost_tie_between_deletion_and_insertion_goes_to_insertion():
    # 3 S + 1 I and 2 D + 3 I both cost 15; preferring the insertion where a deletion
    # ties with it leads sclite to the first: "REF: b c c b * / HYP: a a a b c".
    assert word_errors("b c c b", "a a a b c") == counts(4, 1, 3, 0, 1)


def test_tokens_are_literal_and_case_sensitive():
    assert word_errors("The cat", "the cat") == counts(2, 1, 1, 0, 0)
    assert align_counts(["ab", "c"], ["a", "bc"]) == counts(2, 0, 2, 0, 0)


def test_char_mode_spaces():
    # "ab cd" -> "abcd": the space is deleted; plain sclite -c sees no error.
    assert char_errors("ab cd", "abcd") == counts(5, 4, 0, 1, 0)
    assert char_errors("ab cd", "abcd", include_spaces=False) == counts(4, 4, 0, 0, 0)
    assert char_errors("  ab   cd ", "ab cd") == counts(5, 5, 0, 0, 0)  # whitespace collapsed


def test_error_counts_add_and_validate():
    total = counts(3, 2, 1, 0, 0) + counts(2, 0, 0, 2, 1)
    assert total == counts(5, 2, 1, 2, 1)
    assert total.errors == 4 and total.rate == pytest.approx(0.8)
    with pytest.raises(ValueError):
        counts(3, 1, 1, 0, 0)  # correct + S + D must equal n_ref


def test_score_pairs_sums_counts():
    report = score_pairs([("the cat sat on the mat", "the bat sat the mat mat"), ("hello world", ""), ("ab cd", "abcd")])
    # Counts checked with sclite -s (words) and -c on "_"-joined text (characters).
    assert report.n_utterances == 3
    assert report.words == counts(10, 4, 2, 4, 1)
    assert report.wer == pytest.approx(70.0)
    assert report.chars.n_ref == 22 + 11 + 5
    assert report.to_dict()["words"] == {
        "n_ref": 10, "correct": 4, "substitutions": 2, "deletions": 4, "insertions": 1, "errors": 7,
    }
    table = report.format()
    assert "utterances: 3" in table
    assert re.search(r"^WER\s+10\s+4\s+2\s+4\s+1\s+7\s+70\.00$", table, re.MULTILINE), table
    assert re.search(rf"^CER\s+38\s+.*\s{report.cer:.2f}$", table, re.MULTILINE), table


def test_score_manifest(tmp_path):
    path = tmp_path / "decoded.jsonl"
    records = [
        {"audio_filepath": "a.wav", "duration": 1.0, "text": "a b c", "pred_text": "a x c"},
        {"audio_filepath": "b.wav", "duration": 1.0, "text": "d e", "pred_text": ""},
    ]
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    report = score_manifest(path)
    assert report == ScoreReport(2, counts(5, 2, 1, 2, 0), char_errors("a b c", "a x c") + char_errors("d e", ""))

    del records[1]["pred_text"]
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}:2: missing field 'pred_text'"):
        score_manifest(path)
    with pytest.raises(ManifestError, match=r":1: missing field 'hyp'"):
        score_manifest(path, hyp_field="hyp")


# --------------------------------------------------------------------------- random pairs

VOCABULARY = ("a", "an", "at", "the", "cat", "cab", "bat", "tab", "act", "sat", "tea", "eat", "naïve", "café", "été")


def random_pairs(n_pairs: int, seed: int = 1234) -> list[tuple[str, str]]:
    """Reference/hypothesis texts with substitutions, insertions, deletions, swaps, empties."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(n_pairs):
        reference = [rng.choice(VOCABULARY) for _ in range(rng.randint(1, 12))]
        hypothesis = list(reference)
        for _ in range(rng.randint(0, 5)):
            edit = rng.choice(("substitute", "insert", "delete", "swap"))
            position = rng.randrange(len(hypothesis) + 1)
            if edit == "insert" or not hypothesis:
                hypothesis.insert(position, rng.choice(VOCABULARY))
            elif edit == "substitute":
                hypothesis[min(position, len(hypothesis) - 1)] = rng.choice(VOCABULARY)
            elif edit == "delete":
                del hypothesis[min(position, len(hypothesis) - 1)]
            elif len(hypothesis) > 1:
                i = min(position, len(hypothesis) - 2)
                hypothesis[i], hypothesis[i + 1] = hypothesis[i + 1], hypothesis[i]
        roll = rng.random()
        if roll < 0.05:
            hypothesis = []
        elif roll < 0.08:
            reference = []
        pairs.append((" ".join(reference), " ".join(hypothesis)))
    return pairs


# Pairs on which breaking cost ties in another order changes the split (found by search);
# random pairs rarely show the deletion/insertion tie.
TIE_PAIRS = [("cat bat bat cat", "tab tab tab cat bat"), ("tab tab cat", "cat bat bat"), ("bccb", "aaabc"), ("aab", "bcc")]
PAIRS = TIE_PAIRS + random_pairs(400)


def plain_dp(reference, hypothesis, substitution=4, indel=3, priority="SID"):
    """sclite's DP (net_dp.c) in plain Python; weights and tie order are knobs.

    ``priority`` orders the moves for ties: sclite takes the diagonal (S), then the
    insertion (I), then the deletion (D).
    """
    n_ref, n_hyp = len(reference), len(hypothesis)
    cost = [[indel * (a + b) if a == 0 or b == 0 else 0 for b in range(n_hyp + 1)] for a in range(n_ref + 1)]
    move = [["D" if b == 0 else "I" for b in range(n_hyp + 1)] for a in range(n_ref + 1)]
    for a in range(1, n_ref + 1):
        for b in range(1, n_hyp + 1):
            candidates = {
                "S": cost[a - 1][b - 1] + (0 if reference[a - 1] == hypothesis[b - 1] else substitution),
                "D": cost[a - 1][b] + indel,
                "I": cost[a][b - 1] + indel,
            }
            move[a][b] = min(priority, key=candidates.__getitem__)  # the first of the minimal
            cost[a][b] = candidates[move[a][b]]
    tally = {"C": 0, "S": 0, "D": 0, "I": 0}
    a, b = n_ref, n_hyp
    while a > 0 or b > 0:
        step = move[a][b]
        if step == "S":
            tally["C" if reference[a - 1] == hypothesis[b - 1] else "S"] += 1
            a, b = a - 1, b - 1
        elif step == "D":
            tally["D"] += 1
            a -= 1
        else:
            tally["I"] += 1
            b -= 1
    return ErrorCounts(n_ref, tally["C"], tally["S"], tally["D"], tally["I"])


def test_vectorized_dp_equals_plain_dp():
    for reference, hypothesis in PAIRS:
        for ref_tokens, hyp_tokens in ((reference.split(), hypothesis.split()), (reference, hypothesis)):
            assert align_counts(ref_tokens, hyp_tokens) == plain_dp(ref_tokens, hyp_tokens), (ref_tokens, hyp_tokens)


# --------------------------------------------------------------------------- sclite


def find_sclite() -> str:
    path = shutil.which("sclite") or (DEBIAN_SCLITE if os.access(DEBIAN_SCLITE, os.X_OK) else None)
    if path is None:
        message = "NIST sclite not found (Debian/Ubuntu: apt-get install sctk)"
        if os.environ.get("CI"):
            pytest.fail(f"{message}; CI is set, so the comparison with sclite must run")
        pytest.skip(message)
    return path


SCLITE_SCORES = re.compile(r"^id: \(utt_(\d+)\)\s*\nScores: \(#C #S #D #I\) (\d+) (\d+) (\d+) (\d+)", re.MULTILINE)
SCLITE_SUM_ROW = re.compile(r"^\s*\|\s*Sum\s*\|(.*)$", re.MULTILINE)


def run_sclite(sclite, folder, pairs, options):
    """Score pairs with sclite; returns (totals, [counts of each pair])."""
    folder.mkdir()
    for name, side in (("ref.trn", 0), ("hyp.trn", 1)):
        lines = [f"{pair[side]} (utt_{index:04d})\n" for index, pair in enumerate(pairs)]
        (folder / name).write_text("".join(lines), encoding="utf-8")
    command = [sclite, "-r", "ref.trn", "trn", "-h", "hyp.trn", "trn", "-i", "rm", "-s", "-e", "utf-8"]
    command += [*options, "-o", "rsum", "pralign", "stdout"]
    output = subprocess.run(command, cwd=folder, capture_output=True, text=True, check=True).stdout

    per_utterance = {}
    for utterance_id, *numbers in SCLITE_SCORES.findall(output):
        correct, substitutions, deletions, insertions = map(int, numbers)
        n_ref = correct + substitutions + deletions
        per_utterance[int(utterance_id)] = ErrorCounts(n_ref, correct, substitutions, deletions, insertions)
    assert sorted(per_utterance) == list(range(len(pairs))), output[-2000:]

    sum_rows = SCLITE_SUM_ROW.findall(output)  # "| Sum | #Snt #Wrd | Corr Sub Del Ins Err S.Err |"
    assert len(sum_rows) == 1, output[:3000]
    n_sentences, n_ref, correct, substitutions, deletions, insertions, errors, _ = map(int, re.findall(r"\d+", sum_rows[0]))
    assert n_sentences == len(pairs)
    totals = ErrorCounts(n_ref, correct, substitutions, deletions, insertions)
    assert totals.errors == errors
    return totals, [per_utterance[index] for index in range(len(pairs))]


def joined(text: str, separator: str) -> str:
    return separator.join(text.split())


def char_errors_without_spaces(reference: str, hypothesis: str) -> ErrorCounts:
    return char_errors(reference, hypothesis, include_spaces=False)


# mode: (sclite options, text as given to sclite, our counts of a pair, tokens for plain_dp)
MODES = {
    "words": ((), str, word_errors, str.split),
    "chars with spaces": (("-c",), lambda text: joined(text, SPACE_STAND_IN), char_errors, lambda text: joined(text, " ")),
    "chars without spaces": (("-c",), str, char_errors_without_spaces, lambda text: joined(text, "")),
}


@pytest.mark.parametrize("mode", list(MODES))
def test_counts_equal_sclite(tmp_path, mode):
    sclite = find_sclite()
    options, for_sclite, ours, tokens = MODES[mode]
    sclite_pairs = [(for_sclite(reference), for_sclite(hypothesis)) for reference, hypothesis in PAIRS]
    sclite_totals, sclite_counts = run_sclite(sclite, tmp_path / "sclite", sclite_pairs, options)

    our_counts = [ours(reference, hypothesis) for reference, hypothesis in PAIRS]
    disagreements = [(pair, mine, theirs) for pair, mine, theirs in zip(PAIRS, our_counts, sclite_counts) if mine != theirs]
    assert not disagreements
    assert sum(our_counts, ErrorCounts(0, 0, 0, 0, 0)) == sclite_totals
    if mode == "words":
        assert score_pairs(PAIRS, normalize=False).words == sclite_totals
    if mode == "chars with spaces":
        assert score_pairs(PAIRS, normalize=False).chars == sclite_totals

    # The pairs tell sclite's alignment from near misses: unit-cost Levenshtein, and
    # sclite's weights with ties broken in another order, each split the errors
    # differently on some pair.
    def split(result):
        return result.substitutions, result.deletions, result.insertions

    for variant in ({"substitution": 1, "indel": 1}, {"priority": "SDI"}, {"priority": "IDS"}):
        differs = [
            pair
            for pair, theirs in zip(PAIRS, sclite_counts)
            if split(plain_dp(tokens(pair[0]), tokens(pair[1]), **variant)) != split(theirs)
        ]
        assert differs, f"no pair tells {variant} from sclite"


def test_hypothesis_correct_marks_matches_in_sclites_alignment():
    from ds2.metrics import hypothesis_correct

    # "on" is deleted, "bat" substituted; of the two "mat"s sclite's back-trace matches the last
    assert hypothesis_correct("the cat sat on the mat".split(), "the bat sat the mat mat".split()) == [
        True, False, True, True, False, True]
    assert hypothesis_correct([], ["a"]) == [False] and hypothesis_correct(["a"], []) == []


def test_roc_auc():
    from ds2.metrics import roc_auc

    assert roc_auc([0.9, 0.8, 0.2, 0.1], [True, True, False, False]) == 1.0
    assert roc_auc([0.1, 0.2, 0.8, 0.9], [True, True, False, False]) == 0.0
    assert roc_auc([0.5, 0.5, 0.5, 0.5], [True, False, True, False]) == 0.5  # ties count half
    assert roc_auc([0.9, 0.3, 0.6, 0.1], [True, True, False, False]) == 0.75
    assert math.isnan(roc_auc([0.3, 0.4], [True, True]))


def test_a_pair_too_long_to_align_is_a_clear_error(monkeypatch):
    from ds2 import metrics

    monkeypatch.setattr(metrics, "MAX_CELLS", 10_000)
    with pytest.raises(ValueError, match="too many to align as one pair"):
        char_errors("a" * 150, "b" * 150)
    assert word_errors("a b c", "a b d").substitutions == 1  # short pairs as before
