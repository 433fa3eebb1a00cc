#!/usr/bin/env python3
"""The variants recipe's comparison: one Markdown table and a PNG of dev CER against training time.

    python local/compare.py exp --minutes 8 -o exp/results.md --plot exp/dev_cer.png

Reads every exp/<model>/ with a dev.csv (ds2 train's evaluations: training minutes, dev WER/CER,
skipped steps), best.pt (parameters, configuration) and score_{,lm_}{dev,test}.json. A model
counts as diverged when a dev loss was not finite or its last dev CER is more than 1.5 times
its best (it got worse and stayed so); skipped steps (non-finite gradients) are shown apart.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

from ds2.checkpoint import load_checkpoint


def _score(folder: Path, name: str) -> dict | None:
    path = folder / f"score_{name}.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def _cells(score: dict | None) -> str:
    return f"{score['wer']:.2f} / {score['cer']:.2f}" if score else "-"


def describe(folder: Path) -> dict | None:
    dev_csv = folder / "dev.csv"
    if not dev_csv.exists() or not (folder / "best.pt").exists():
        return None
    with open(dev_csv, encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        return None
    saved = load_checkpoint(folder / "best.pt")
    config = saved["model_config"]
    n_parameters = sum(value.numel() for key, value in saved["model"].items()
                       if not key.endswith(("running_mean", "running_var", "steps_seen")))
    minutes = float(rows[-1]["train_minutes"])
    audio_hours = float(rows[-1]["audio_hours"])
    cers = [float(row["dev_cer"]) for row in rows]
    losses = [float(row["dev_loss"]) for row in rows]
    diverged = any(not math.isfinite(loss) for loss in losses) or cers[-1] > 1.5 * min(cers)
    command = json.loads((folder / "run.json").read_text(encoding="utf-8")).get("command", []) \
        if (folder / "run.json").exists() else []
    return dict(
        name=folder.name, rnn_type=config.get("rnn_type"), rnn_norm=config.get("rnn_norm"),
        outputs=config.get("n_outputs"), parameters=n_parameters, minutes=minutes,
        speed=audio_hours * 3600 / (minutes * 60) if minutes else math.nan,
        curve=[(float(row["train_minutes"]), float(row["dev_cer"])) for row in rows],
        best_cer=min(cers), steps=int(rows[-1]["step"]),
        skipped=int(rows[-1]["skipped_steps"]), diverged=diverged, sortagrad="--no-sortagrad" not in command,
        dev=_score(folder, "dev"), test=_score(folder, "test"), lm_dev=_score(folder, "lm_dev"),
        lm_test=_score(folder, "lm_test"),
    )


def table(models: list[dict], minutes: float) -> str:
    lines = [
        f"Each model trained for {minutes:g} min of wall time on the same data (recipes/tiny's corpus), "
        "then best.pt decoded; LM: 4-gram, alpha/beta fixed for all. WER / CER in %.",
        "",
        "| model | cell | norm | SortaGrad | outputs | parameters | audio s / s | steps | dev greedy | "
        "test greedy | dev LM | test LM | skipped steps | diverged |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for m in models:
        lines.append(
            f"| {m['name']} | {m['rnn_type']} | {m['rnn_norm']} | {'yes' if m['sortagrad'] else 'no'} | {m['outputs']} "
            f"| {m['parameters'] / 1e6:.2f}M | {m['speed']:.1f} | {m['steps']} | {_cells(m['dev'])} "
            f"| {_cells(m['test'])} | {_cells(m['lm_dev'])} | {_cells(m['lm_test'])} | {m['skipped']} "
            f"| {'yes' if m['diverged'] else 'no'} |")
    return "\n".join(lines) + "\n"


def plot(models: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(9.5, 5))
    for m in models:
        x, y = zip(*m["curve"])
        axes.plot(x, y, "o-", label=m["name"], markersize=3)
    axes.set_xlabel("training time (min, 2-core CPU)")
    axes.set_ylabel("dev CER % (greedy)")
    axes.set_title("DS2 variants: dev CER against training time")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))  # beside the lines, not over them
    figure.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    figure.savefig(tmp, dpi=120)
    tmp.replace(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("exp", type=Path)
    parser.add_argument("--minutes", type=float, required=True)
    parser.add_argument("-o", "--output", type=Path, required=True)
    parser.add_argument("--plot", type=Path, required=True)
    args = parser.parse_args()
    models = [m for m in (describe(folder) for folder in sorted(args.exp.iterdir()) if folder.is_dir()) if m]
    if not models:
        raise SystemExit(f"{args.exp}: no trained model (a folder with dev.csv and best.pt)")
    order = ["gru-bn", "rnn-bn", "lstm-bn", "gru-rbn", "gru-ln", "gru-none", "gru-none-nosortagrad", "gru-bn-bigrams"]
    models.sort(key=lambda m: (order.index(m["name"]) if m["name"] in order else len(order), m["name"]))
    text = table(models, args.minutes)
    tmp = args.output.with_suffix(".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(args.output)
    plot(models, args.plot)


if __name__ == "__main__":
    main()
