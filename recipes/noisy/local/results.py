#!/usr/bin/env python3
"""The noisy recipe's table (Markdown) and WER-against-SNR plot from exp/decode/MODEL/SET/score_*.json.

    python local/results.py exp --sets "clean snr0 snr5 snr10 snr20 reverb" -o exp/results.md --plot exp/wer_snr.png

Also checks the issue's target: at 5 dB, augmentation cuts the greedy and the LM WER by at
least a third (relative), while the clean WER rises by no more than 1 point (absolute).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from ds2.io import atomic_write, pyplot, save_figure  # noqa: E402

MODELS = {"clean": "trained clean", "aug": "trained with augmentation"}


def _wer(exp: Path, model: str, test_set: str, kind: str) -> float | None:
    path = exp / "decode" / model / test_set / f"score_{kind}.json"
    return json.loads(path.read_text(encoding="utf-8"))["wer"] if path.exists() else None


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("exp", type=Path)
    parser.add_argument("--sets", default="clean snr0 snr5 snr10 snr20 reverb")
    parser.add_argument("-o", "--output", type=Path, required=True)
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args()
    sets = args.sets.split()
    wer = {(m, s, k): _wer(args.exp, m, s, k) for m in MODELS for s in sets for k in ("greedy", "lm")}
    lines = ["| test set | clean model greedy | aug model greedy | clean model LM | aug model LM |",
             "|----------|------:|------:|------:|------:|"]
    for test_set in sets:
        cells = [_cell(wer[m, test_set, k]) for k in ("greedy", "lm") for m in MODELS]
        label = f"{test_set[3:]} dB SNR" if test_set.startswith("snr") else test_set
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Test WER % (200 utterances of unseen voices and sentences); noisy sets: test-only noises "
                 "(white, pink, brown, hum, babble of test-only voices); reverb: test-only simulated rooms.")
    if "real" in sets:
        lines.append("real: 11 utterances of people (LibriVox, playing cards, 37 s; Debian pocketsphinx-testdata), "
                     "mostly words outside the grammar and the LM.")
    verdicts = []
    for kind in ("greedy", "lm"):
        at5 = (wer["clean", "snr5", kind], wer["aug", "snr5", kind])
        clean = (wer["clean", "clean", kind], wer["aug", "clean", kind])
        if None in at5 + clean:
            continue
        cut = (at5[0] - at5[1]) / at5[0] if at5[0] else 0.0
        rise = clean[1] - clean[0]
        ok = cut >= 1 / 3 and rise <= 1.0
        verdicts.append(f"- {kind}: at 5 dB {at5[0]:.2f} -> {at5[1]:.2f} ({100 * cut:.0f}% relative cut, target >= 33%); "
                        f"clean {clean[0]:.2f} -> {clean[1]:.2f} ({rise:+.2f} points, target <= +1): "
                        f"{'met' if ok else 'NOT met'}")
    if verdicts:
        lines += ["", "Target (issue 11):"] + verdicts
    with atomic_write(args.output) as handle:
        handle.write("\n".join(lines) + "\n")
    if args.plot:
        snr_sets = sorted((s for s in sets if s.startswith("snr")), key=lambda s: float(s[3:]))
        xs = [float(s[3:]) for s in snr_sets]
        clean_x = max(xs) + 10 if xs else 0
        plt = pyplot()
        figure, axis = plt.subplots(figsize=(7, 4.5))
        for model, style in (("clean", "-"), ("aug", "--")):
            for kind, color in (("greedy", "tab:blue"), ("lm", "tab:orange")):
                ys = [wer[model, s, kind] for s in snr_sets] + [wer[model, "clean", kind]]
                points = [(x, y) for x, y in zip(xs + [clean_x], ys) if y is not None]
                if points:
                    axis.plot(*zip(*points), style, marker="o", color=color,
                              label=f"{MODELS[model]}, {'LM' if kind == 'lm' else 'greedy'}")
        axis.set_xticks(xs + [clean_x], [f"{x:g}" for x in xs] + ["clean"])
        axis.set_xlabel("SNR of the test set (dB)")
        axis.set_ylabel("test WER (%)")
        axis.set_title("Noise never heard in training")
        axis.grid(alpha=0.3)
        axis.legend()
        save_figure(figure, args.plot)


if __name__ == "__main__":
    main()
