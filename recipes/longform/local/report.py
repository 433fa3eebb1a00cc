#!/usr/bin/env python3
"""The longform recipe's results: alignment accuracy, segmentation and filtering, training on
kept vs all segments, long-file vs per-utterance WER, word-confidence AUC, peak memory.

    python local/report.py data exp        # prints a Markdown table, writes exp/results.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ds2.data import read_manifest
from ds2.io import atomic_write
from ds2.metrics import hypothesis_correct, roc_auc, score_pairs, scoring_text


def load(path: Path) -> dict | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def confidence_auc(transcripts: list[dict], truth: dict[str, str]) -> tuple[float, int]:
    """ROC AUC of the word confidences: correct words (in sclite's alignment) against wrong ones."""
    confidences, correct = [], []
    for t in transcripts:
        words = [w for w in t["words"] if w["confidence"] is not None]
        correct += hypothesis_correct(scoring_text(truth[t["audio_filepath"]]).split(),
                                      [scoring_text(w["word"]) for w in words])
        confidences += [w["confidence"] for w in words]
    return round(roc_auc(confidences, correct), 4), len(correct)


def _json_lines(path: Path) -> list[dict]:
    """Transcripts as `ds2 transcribe --format json` writes them, their paths made absolute."""
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    for line in lines:
        line["audio_filepath"] = str(Path(line["audio_filepath"]).resolve())
    return lines


def long_form(data: Path, exp: Path) -> dict:
    """WER of the long recordings transcribed whole and of the same speech as utterances;
    AUC of the word confidences (correct against wrong words)."""
    truth = {r["audio_filepath"]: r["truth"] for r in read_manifest(data / "long.json")}
    result = {}
    whole = exp / "transcribe_long.json"
    if whole.exists():
        transcripts = _json_lines(whole)
        result["wer_whole"] = round(score_pairs((truth[t["audio_filepath"]], t["text"]) for t in transcripts).wer, 2)
        result["confidence_auc"], result["words_scored"] = confidence_auc(transcripts, truth)
    test = exp / "transcribe_test.json"
    if test.exists():
        transcripts = _json_lines(test)
        references = {t["audio_filepath"]: Path(t["audio_filepath"]).with_suffix(".txt").read_text(encoding="utf-8")
                      .strip() for t in transcripts}
        result["test_wer"] = round(score_pairs((references[t["audio_filepath"]], t["text"]) for t in transcripts).wer, 2)
        result["test_confidence_auc"], result["test_words_scored"] = confidence_auc(transcripts, references)
    separate = exp / "decode_utterances.json"
    if separate.exists():
        result["wer_separate"] = round(score_pairs((r["text"], r["pred_text"]) for r in read_manifest(separate)).wer, 2)
    return result


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    data, exp = Path(sys.argv[1]), Path(sys.argv[2])
    results = {
        "alignment": (load(exp / "align_test" / "summary.json") or {}).get("word_start_error"),
        "segments": load(exp / "seg" / "segment_summary.json"),
        "filter_cv": load(exp / "filter" / "labelled" / "filter_report.json"),
        "filter_held_out": load(exp / "filter" / "held_out" / "filter_report.json"),
        "train": {name: load(exp / f"score_{name}.json") for name in ("base", "all", "kept")},
        "long_form": long_form(data, exp),
        "longest": load(exp / "longest" / "measure.json"),
    }
    with atomic_write(exp / "results.json") as handle:
        json.dump(results, handle, indent=2)
    rows = []
    if results["alignment"]:
        a = results["alignment"]
        rows.append(("word-start error, tiny test set (unseen voices)",
                     f"median {a['median_ms']} ms, 90th pct {a['p90_ms']} ms, {100 * a['within_50ms']:.1f}% within 50 ms "
                     f"({a['words']} words)"))
    if results["segments"]:
        s = results["segments"]
        rows.append(("segments", f"{s['segments']} from {s['recordings']} recordings, {s['hours']} h, mean "
                                 f"{s['mean_seconds']} s, longest {s['max_seconds']} s, pause K = "
                                 f"{min(s['pause_frames_K'])}-{max(s['pause_frames_K'])} frames per recording"))
    if results["filter_cv"]:
        f = results["filter_cv"]
        rows.append(("filter on the labelled recordings (cross-validated)",
                     f"precision {f['cv_precision']}, recall {f['cv_recall']} ({f['labelled']} segments, "
                     f"{f['labelled_good']} good)"))
    if results["filter_held_out"]:
        f = results["filter_held_out"]
        rows.append(("held-out transcripts: WER all -> kept (rejected)",
                     f"{f['wer_all']}% -> {f['wer_kept']}% ({f['wer_rejected']}%), kept "
                     f"{100 * f['kept_fraction']:.1f}% of {f['segments']} segments"))
    for name, label in (("base", "tiny model"), ("all", "fine-tuned on all segments"),
                        ("kept", "fine-tuned on kept segments")):
        score = results["train"][name]
        if score:
            rows.append((f"tiny test set, greedy WER / CER: {label}", f"{score['wer']:.2f} / {score['cer']:.2f}"))
    lf = results["long_form"]
    if "wer_whole" in lf:
        rows.append(("long recordings transcribed whole (LM) vs as utterances: WER",
                     f"{lf['wer_whole']}% vs {lf.get('wer_separate', '-')}%"))
        rows.append(("word confidence on the long recordings, correct vs wrong words: ROC AUC",
                     f"{lf['confidence_auc']} ({lf['words_scored']} words)"))
    if "test_wer" in lf:
        rows.append(("tiny test set transcribed (LM): WER; word confidence ROC AUC",
                     f"{lf['test_wer']}%; {lf['test_confidence_auc']} ({lf['test_words_scored']} words)"))
    if results["longest"]:
        m = results["longest"]
        rows.append(("longest recording aligned", f"{m['minutes']} min, {m['words']} words: peak memory "
                                                  f"{m['peak_mib']} MiB, {m['seconds']} s"))
    print("| measure | value |")
    print("|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
