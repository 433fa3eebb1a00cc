#!/usr/bin/env python3
"""Text for a corpus recipe's n-gram LM: the training transcripts, plus more text if given,
without any sentence of the held-out sets (the LM must not have seen what it is scored on).

    python ../local/lm_text.py data/train.json -o data/lm_text.txt --exclude data/dev.json data/test.json
    python ../local/lm_text.py data/train.json --text sentences.txt -o data/lm_text.txt --exclude data/dev.json

Sentences are compared after ds2's normalization (lower case, no punctuation), the form
``ds2 lm build`` and the manifests hold them in.
"""

from __future__ import annotations

import argparse
import gzip
import itertools
from pathlib import Path

from ds2.data import read_manifest
from ds2.io import atomic_write
from ds2.text import normalize


def _lines(path: Path):
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as handle:
        yield from handle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("manifests", nargs="+", type=Path, help="manifests whose transcripts go in (training)")
    parser.add_argument("-o", "--output", required=True, type=Path, help="text file, one sentence a line")
    parser.add_argument("--text", nargs="*", default=[], type=Path, help="more text files (.gz read as gzip)")
    parser.add_argument("--exclude", nargs="*", default=[], type=Path, help="manifests whose sentences stay out")
    args = parser.parse_args()

    held_out = {normalize(record["text"]) for path in args.exclude for record in read_manifest(path, resolve_paths=False)}
    kept = dropped = 0
    with atomic_write(args.output) as handle:
        transcripts = (record["text"] for path in args.manifests for record in read_manifest(path, resolve_paths=False))
        for text in itertools.chain(transcripts, (line for path in args.text for line in _lines(path))):
            sentence = normalize(text)
            if not sentence:
                continue
            if sentence in held_out:
                dropped += 1
                continue
            handle.write(sentence + "\n")
            kept += 1
    print(f"{args.output}: {kept} sentences ({dropped} held-out sentences left out)")


if __name__ == "__main__":
    main()
