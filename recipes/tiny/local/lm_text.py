#!/usr/bin/env python3
"""Text for the tiny recipe's n-gram LM: the training transcripts plus grammar sentences.

The dev and test sentences are excluded, so the LM has not seen what it is scored on.

    python local/lm_text.py data/train.json data/dev.json data/test.json -o data/lm_text.txt --extra 50000
"""

from __future__ import annotations

import argparse
import random

from ds2.data import read_manifest
from ds2.grammar import generate_sentences
from ds2.io import atomic_write


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("train", help="training manifest: its transcripts go in")
    parser.add_argument("held_out", nargs="+", help="manifests whose sentences must stay out (dev, test)")
    parser.add_argument("-o", "--output", required=True, help="text file, one sentence a line")
    parser.add_argument("--extra", type=int, default=50000, help="grammar sentences added")
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args()

    held_out = {record["text"] for path in args.held_out for record in read_manifest(path, resolve_paths=False)}
    train = [record["text"] for record in read_manifest(args.train, resolve_paths=False)]
    extra = generate_sentences(args.extra, random.Random(args.seed), 3, 12, exclude=held_out)
    with atomic_write(args.output) as handle:
        handle.write("\n".join(train + extra) + "\n")
    print(f"{args.output}: {len(train)} training transcripts + {len(extra)} grammar sentences")


if __name__ == "__main__":
    main()
