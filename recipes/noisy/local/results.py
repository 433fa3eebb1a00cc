#!/usr/bin/env python3
"""The noisy recipe's tables (Markdown) and WER-against-SNR plot from exp/decode/MODEL/SET/score_*.json.

    python local/results.py exp --sets "clean snr0 snr5 snr10 snr20 reverb voices real" -o exp/results.md --plot exp/wer_snr.png

The first table is noise: the eSpeak models trained clean and with augmentation on every
test set. The second is voices: the four models (eSpeak alone or all synthesizers, each
clean or augmented) on the eSpeak test set, the all-synthesizer test set, 5 dB and real speech.

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

MODELS = {"clean": "trained clean", "aug": "trained with augmentation"}  # the eSpeak corpus
VOICE_MODELS = {"clean": "eSpeak", "aug": "eSpeak + augmentation", "all": "all synthesizers",
                "all_aug": "all synthesizers + augmentation"}
VOICE_SETS = {"clean": "eSpeak test", "voices": "all-synthesizer test", "snr5": "5 dB", "real": "real speech"}


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
    wer = {(m, s, k): _wer(args.exp, m, s, k) for m in VOICE_MODELS for s in sets for k in ("greedy", "lm")}
    noise_sets = [s for s in sets if s != "voices"]
    lines = ["| test set | clean model greedy | aug model greedy | clean model LM | aug model LM |",
             "|----------|------:|------:|------:|------:|"]
    for test_set in noise_sets:
        cells = [_cell(wer[m, test_set, k]) for k in ("greedy", "lm") for m in MODELS]
        label = f"{test_set[3:]} dB SNR" if test_set.startswith("snr") else test_set
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Test WER % (200 utterances of unseen voices and sentences); noisy sets: test-only noises "
                 "(white, pink, brown, hum, babble of test-only voices); reverb: test-only simulated rooms.")
    if "real" in sets:
        lines.append("real: 11 utterances of people (LibriVox, playing cards, 37 s; Debian pocketsphinx-testdata), "
                     "mostly words outside the grammar and the LM.")
    voice_sets = [s for s in VOICE_SETS if s in sets]
    if any(wer[m, s, k] is not None for m in ("all", "all_aug") for s in voice_sets for k in ("greedy", "lm")):
        lines += ["", "| model trained on | " + " | ".join(f"{VOICE_SETS[s]} greedy / LM" for s in voice_sets) + " |",
                  "|---|" + "---:|" * len(voice_sets)]
        for model, label in VOICE_MODELS.items():
            cells = [f"{_cell(wer[model, s, 'greedy'])} / {_cell(wer[model, s, 'lm'])}" for s in voice_sets]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines += ["", "Test WER % greedy / with each model's own LM and tuned alpha, beta. all-synthesizer test: "
                  "200 utterances of the held-out voices of eSpeak NG, flite and festival (festival heard only "
                  "there). All synthesizers: the tiny corpus synthesized by eSpeak NG and flite's training voices."]
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
