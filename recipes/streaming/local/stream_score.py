#!/usr/bin/env python3
"""Score the streamed transcripts of a test set and compare them with the offline decode.

    python local/stream_score.py TEST.json STREAM.jsonl OFFLINE_DECODE.json [--json OUT]

STREAM.jsonl: `ds2 transcribe --stream --format json` of the test files in manifest order.
OFFLINE_DECODE.json: `ds2 decode` of the same model on the same manifest (greedy). A
streaming model computes the same log-probs chunk by chunk as offline, so the texts differ
only where endpointing cut a segment (a space at the cut).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from ds2.data import read_manifest  # noqa: E402
from ds2.io import atomic_write  # noqa: E402
from ds2.metrics import score_pairs  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("test")
    parser.add_argument("stream")
    parser.add_argument("offline")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    references = [r["text"] for r in read_manifest(args.test)]
    streamed = [json.loads(line)["text"] or "" for line in Path(args.stream).read_text(encoding="utf-8").splitlines()]
    offline = [r.get("pred_text", "") for r in read_manifest(args.offline)]
    if not (len(references) == len(streamed) == len(offline)):
        sys.exit(f"{len(references)} references, {len(streamed)} streamed, {len(offline)} offline texts")
    stream_report = score_pairs(zip(references, streamed))
    offline_report = score_pairs(zip(references, offline))
    same = sum(a == b for a, b in zip(streamed, offline))
    result = dict(utterances=len(references), stream_wer=round(stream_report.wer, 2), stream_cer=round(stream_report.cer, 2),
                  offline_wer=round(offline_report.wer, 2), offline_cer=round(offline_report.cer, 2),
                  identical_to_offline=same)
    print(f"streamed: WER {result['stream_wer']:.2f} %, CER {result['stream_cer']:.2f} %; offline: WER "
          f"{result['offline_wer']:.2f} %, CER {result['offline_cer']:.2f} %; {same} of {len(references)} texts identical")
    if args.json:
        with atomic_write(args.json) as handle:
            json.dump(result, handle, indent=1)


if __name__ == "__main__":
    main()
