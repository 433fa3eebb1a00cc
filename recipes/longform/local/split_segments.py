#!/usr/bin/env python3
"""Split segments by recording: the first recordings' segments keep their truth (the labelled
set the filter is trained on); the others' truth moves to ``reference`` (held out: the filter
never sees it, the recipe scores with it).

    python local/split_segments.py exp/seg/segments.json --labelled 6 -o exp/filter
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ds2.data import read_manifest, write_manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("segments", type=Path)
    parser.add_argument("--labelled", type=int, required=True, help="recordings whose segments are labelled")
    parser.add_argument("-o", "--out", type=Path, required=True)
    args = parser.parse_args()
    segments = [{k: v for k, v in s.items() if k != "line"} for s in read_manifest(args.segments)]
    recordings = sorted({s["audio_filepath"] for s in segments})
    labelled_files = set(recordings[: args.labelled])
    labelled = [s for s in segments if s["audio_filepath"] in labelled_files]
    held_out = [{**{k: v for k, v in s.items() if k != "truth"}, "reference": s["truth"]}
                for s in segments if s["audio_filepath"] not in labelled_files]
    write_manifest(args.out / "labelled.json", labelled)
    write_manifest(args.out / "held_out.json", held_out)
    print(f"{len(labelled)} labelled segments ({args.labelled} recordings), {len(held_out)} held out")


if __name__ == "__main__":
    main()
