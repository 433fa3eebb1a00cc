#!/usr/bin/env python3
"""A corpus recipe's results table (Markdown) from the score files of an experiment folder:
greedy and LM WER/CER of each evaluation set, and the tuned LM weights.

    python ../local/results_table.py exp dev-clean dev-other test-clean test-other -o exp/results.md

Reads exp/score_<set>.json (greedy) and exp/score_lm_<set>.json (LM beam search), as
``ds2 score --json`` writes them; a set without scores is left out.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ds2.io import atomic_write


def _scores(path: Path) -> dict | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def table(exp: Path, sets: list[str]) -> str:
    lines = ["| set | utterances | greedy WER % | greedy CER % | LM WER % | LM CER % |",
             "|-----|-----------:|-------------:|-------------:|---------:|---------:|"]
    for name in sets:
        greedy, lm = _scores(exp / f"score_{name}.json"), _scores(exp / f"score_lm_{name}.json")
        if greedy is None:
            continue
        lm_cells = f"{lm['wer']:.2f} | {lm['cer']:.2f}" if lm else "- | -"
        lines.append(f"| {name} | {greedy['n_utterances']} | {greedy['wer']:.2f} | {greedy['cer']:.2f} | {lm_cells} |")
    tuned = _scores(exp / "decoding.json")
    if tuned:
        lines += ["", f"LM beam search: alpha={tuned['alpha']} beta={tuned['beta']} (tuned on dev at beam "
                      f"{tuned['beam_width']})"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("exp", type=Path, help="experiment folder (score_*.json, decoding.json)")
    parser.add_argument("sets", nargs="+", help="evaluation sets, in table order")
    parser.add_argument("-o", "--output", type=Path, help="also write the table here")
    args = parser.parse_args()
    text = table(args.exp, args.sets)
    if args.output:
        with atomic_write(args.output) as handle:
            handle.write(text)
    print(text, end="")


if __name__ == "__main__":
    main()
