"""Decoding speed and accuracy on cached log-probs: greedy vs LM beam search.

For greedy and for LM beam widths 1, 10, 50, 100, 500, with and without DS2's per-frame
pruning (p = 0.99, at most 40 characters), prints WER, CER and the real-time factor
(decode seconds per second of audio, one process). All rows run in the same process on the
same utterances, so they compare with each other even on a noisy machine.

    .venv/bin/python benchmarks/decode.py recipes/tiny/exp/logprobs_test.pt \\
        recipes/tiny/data/test.json --lm recipes/tiny/exp/lm/lm.bin
"""

from __future__ import annotations

import argparse
import time

from dataclasses import replace

from ds2.data import read_manifest
from ds2.decode import BeamSearchOptions, beam_options, decode_cache, load_log_probs
from ds2.metrics import score_pairs
from ds2.text import Alphabet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("logprobs", help="log-probs saved by `ds2 decode --save-logprobs`")
    parser.add_argument("manifest", help="the manifest they belong to (references, durations)")
    parser.add_argument("--lm", required=True, help="lm.bin")
    parser.add_argument("--alpha", type=float, help="default: decoding.json beside the log-probs, else 0.5")
    parser.add_argument("--beta", type=float, help="default: decoding.json beside the log-probs, else 1.0")
    parser.add_argument("--beams", default="1,10,50,100,500")
    parser.add_argument("--limit", type=int, default=0, help="only the first N utterances (0: all)")
    args = parser.parse_args()

    cache = load_log_probs(args.logprobs)
    alphabet = Alphabet(cache["alphabet"])
    records = list(read_manifest(args.manifest, resolve_paths=False))
    indices = sorted(cache["log_probs"])[: args.limit or None]
    cache = {**cache, "log_probs": {i: cache["log_probs"][i] for i in indices}}
    audio_seconds = sum(records[i]["duration"] for i in indices)
    base, _ = beam_options(BeamSearchOptions(lm=args.lm, jobs=1), args.logprobs, args.alpha, args.beta)
    alpha, beta = base.alpha, base.beta

    def measure(options):
        start = time.perf_counter()
        hypotheses = decode_cache(cache, options)
        seconds = time.perf_counter() - start
        report = score_pairs((records[i]["text"], hypotheses[i]) for i in indices)
        return report.wer, report.cer, seconds / audio_seconds

    print(f"{len(indices)} utterances, {audio_seconds:.0f} s of audio; alpha={alpha} beta={beta}; one process")
    print(f"| decoder | beam | DS2 pruning | WER % | CER % | real-time factor |")
    print(f"|---------|-----:|:-----------:|------:|------:|-----------------:|")
    wer, cer, rtf = measure(None)
    print(f"| greedy | - | - | {wer:.2f} | {cer:.2f} | {rtf:.5f} |", flush=True)
    for beam in (int(b) for b in args.beams.split(",")):
        for pruning in (True, False):
            options = replace(base, beam_width=beam, prune_p=base.prune_p if pruning else 1.0,
                              prune_top=base.prune_top if pruning else len(alphabet))
            wer, cer, rtf = measure(options)
            print(f"| LM | {beam} | {'yes' if pruning else 'no'} | {wer:.2f} | {cer:.2f} | {rtf:.4f} |", flush=True)


if __name__ == "__main__":
    main()
