#!/usr/bin/env python3
"""The streaming recipe's table: the bidirectional and the forward-only model side by side.

    python local/results.py TINY_EXP STREAM_EXP -o results.md
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from ds2.checkpoint import load_model  # noqa: E402
from ds2.io import atomic_write  # noqa: E402
from ds2.streaming import StreamingModel  # noqa: E402


def cells(exp: Path, name: str) -> str:
    path = exp / name
    if not path.exists():
        return "- | -"
    score = json.loads(path.read_text(encoding="utf-8"))
    return f"{score['wer']:.2f} | {score['cer']:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("tiny_exp", type=Path)
    parser.add_argument("exp", type=Path)
    parser.add_argument("-o", "--output", type=Path, required=True)
    args = parser.parse_args()
    lines = ["| model | parameters | lookahead | dev greedy WER / CER | test greedy WER / CER | test LM WER / CER |",
             "|-------|-----------:|----------:|-----:|-----:|-----:|"]
    for label, exp in (("bidirectional (tiny recipe)", args.tiny_exp), ("forward-only, streaming", args.exp / "stream")):
        if not (exp / "best.pt").exists():
            continue
        model, _ = load_model(exp / "best.pt")
        lookahead = f"{StreamingModel(model).lookahead_ms:.0f} ms" if model.config.streamable else "whole utterance"
        lines.append(f"| {label} | {model.n_parameters() / 1e6:.2f}M | {lookahead} | "
                     f"{cells(exp, 'score_dev.json').replace(' | ', ' / ')} | "
                     f"{cells(exp, 'score_test.json').replace(' | ', ' / ')} | "
                     f"{cells(exp, 'score_lm_test.json').replace(' | ', ' / ')} |")
    stream = args.exp / "stream_score.json"
    if stream.exists():
        s = json.loads(stream.read_text(encoding="utf-8"))
        lines += ["", f"Streamed (ds2 transcribe --stream, 100 ms chunks, endpointing): test WER {s['stream_wer']:.2f} %, "
                  f"CER {s['stream_cer']:.2f} %; {s['identical_to_offline']} of {s['utterances']} texts identical to "
                  "the offline greedy decode."]
    latency = args.exp / "latency.txt"
    if latency.exists():
        lines += ["", "```", latency.read_text(encoding="utf-8").strip(), "```"]
    with atomic_write(args.output) as handle:
        handle.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
