#!/usr/bin/env python3
"""The tiny recipe's results table (Markdown) from the score files of an experiment folder.

    python local/results_table.py exp
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    exp = Path(sys.argv[1])
    print("| split | utterances | greedy WER % | greedy CER % | LM WER % | LM CER % |")
    print("|-------|-----------:|-------------:|-------------:|---------:|---------:|")
    for split in ("dev", "test"):
        greedy_path = exp / f"score_{split}.json"
        if not greedy_path.exists():
            continue
        greedy = json.loads(greedy_path.read_text(encoding="utf-8"))
        lm_path = exp / f"score_lm_{split}.json"
        lm = json.loads(lm_path.read_text(encoding="utf-8")) if lm_path.exists() else None
        lm_cells = f"{lm['wer']:.2f} | {lm['cer']:.2f}" if lm else "- | -"
        print(f"| {split} | {greedy['n_utterances']} | {greedy['wer']:.2f} | {greedy['cer']:.2f} | {lm_cells} |")
    decoding = exp / "decoding.json"
    if decoding.exists():
        tuned = json.loads(decoding.read_text(encoding="utf-8"))
        print(f"LM: alpha={tuned['alpha']} beta={tuned['beta']} (tuned on dev, beam {tuned['beam_width']}); "
              "decoding beam 100")


if __name__ == "__main__":
    main()
