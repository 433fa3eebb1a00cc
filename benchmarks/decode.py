"""LM beam search: ds2's decoder against pyctcdecode and flashlight-text, speed and accuracy.

Two cases, every decoder on the same log-probs, LM, alpha/beta and beam in one process:
  - the model's case: cached log-probs of a manifest (``ds2 decode --save-logprobs``) with
    its word LM; WER/CER against the references;
  - ``--large-vocab N``: N outputs (like Mandarin characters), log-probs made here, random
    but peaked around known sentences, with a word LM built here from sentences of the same
    made-up language; WER/CER against those sentences.
For each beam width (10, 50, 100, 500 by default), with DS2's pruning (p = 0.99, at most 40
labels a frame) and without, it prints WER, CER, the real-time factor (decode seconds per
audio second, one thread), our speed over pyctcdecode's at the same setting, and how many
best texts equal pyctcdecode's. Then the effect of the beam threshold on ours.

The peers (none is a dependency of ds2):
  - pyctcdecode 0.5.0, ds2's former decoder: the same objective; pruned characters get
    log p = -1e4 and a token_min_logp that skips them, its beam_prune_logp = our threshold;
  - flashlight-text (``pip install flashlight-text``; the engine of torchaudio's
    ctc_decoder), its lexicon decoder on the same word LM with the LM's words as the lexicon
    (its lexicon-free decoder needs a token-level LM); lm_weight = alpha, word_score = beta,
    beam_size_token = the pruning cap, its own beam_threshold. Rows say "-" where it is not
    installed.
A decoder whose row takes longer than --slow-limit seconds skips its wider beams.

    .venv/bin/python benchmarks/decode.py recipes/tiny/exp/logprobs_test.pt \\
        recipes/tiny/data/test.json --lm recipes/tiny/exp/lm/lm.bin --limit 50
    .venv/bin/python benchmarks/decode.py --large-vocab 5000 --limit 20
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from ctc import fmt, write_csv  # noqa: E402

from ds2.data import read_manifest  # noqa: E402
from ds2.decode import BeamSearchOptions, beam_decode, beam_options, build_beam_decoder, load_log_probs  # noqa: E402
from ds2.lm import kenlm_tool  # noqa: E402
from ds2.metrics import score_pairs  # noqa: E402
from ds2.text import Alphabet  # noqa: E402

FIELDS = ["case", "decoder", "beam", "pruning", "threshold", "wer", "cer", "rtf", "speedup_vs_pyctcdecode",
          "speedup_vs_flashlight", "agree_with_pyctcdecode"]


# ----------------------------------------------------------------------------- the peers


class Flashlight:
    """flashlight-text's lexicon decoder over the same KenLM word model (torchaudio's setup)."""

    def __init__(self, labels: list[str], lm_path: str, words: list[str], options: BeamSearchOptions):
        from flashlight.lib.text.decoder import (CriterionType, KenLM, LexiconDecoder, LexiconDecoderOptions,
                                                 SmearingMode, Trie)
        from flashlight.lib.text.dictionary import Dictionary, create_word_dict

        tokens = ["<blank>"] + ["|" if label == " " else label for label in labels[1:]]
        self.tokens = Dictionary(tokens)
        self.words = create_word_dict({word: [list(word) + ["|"]] for word in words + ["<unk>"]})
        self.lm = KenLM(lm_path, self.words)
        silence = self.tokens.get_index("|")
        trie = Trie(self.tokens.index_size(), silence)
        start = self.lm.start(False)
        for word in words:
            _, score = self.lm.score(start, self.words.get_index(word))
            trie.insert([self.tokens.get_index(c) for c in word] + [silence], self.words.get_index(word), score)
        trie.smear(SmearingMode.MAX)
        settings = LexiconDecoderOptions(
            beam_size=options.beam_width,
            beam_size_token=min(options.prune_top, len(tokens)),
            beam_threshold=options.beam_threshold or 1e9,
            lm_weight=options.alpha, word_score=options.beta, unk_score=-math.inf, sil_score=0.0,
            log_add=True, criterion_type=CriterionType.CTC)
        self.decoder = LexiconDecoder(settings, trie, self.lm, silence, 0, self.words.get_index("<unk>"), [], False)

    def __call__(self, log_probs: np.ndarray) -> str:
        values = np.ascontiguousarray(log_probs, dtype=np.float32)
        result = self.decoder.decode(values.ctypes.data, values.shape[0], values.shape[1])[0]
        return " ".join(self.words.get_entry(w) for w in result.words if w >= 0)


def flashlight_available() -> bool:
    try:
        import flashlight.lib.text.decoder  # noqa: F401
    except ImportError:
        return False
    return True


# ----------------------------------------------------------------------------- the cases


def model_case(args) -> tuple[str, Alphabet, list[np.ndarray], list[str], float, str, list[str], tuple[float, float]]:
    cache = load_log_probs(args.logprobs)
    alphabet = Alphabet(cache["alphabet"])
    records = list(read_manifest(args.manifest, resolve_paths=False))
    indices = sorted(cache["log_probs"])[: args.limit or None]
    log_probs = [cache["log_probs"][i].numpy() for i in indices]
    base, _ = beam_options(BeamSearchOptions(lm=args.lm), args.logprobs, args.alpha, args.beta)
    unigrams = Path(args.lm).with_name("unigrams.txt").read_text(encoding="utf-8").split()
    return ("model", alphabet, log_probs, [records[i]["text"] for i in indices],
            sum(records[i]["duration"] for i in indices), args.lm, unigrams, (base.alpha, base.beta))


def large_vocab_case(args, folder: Path):
    """A made-up language over ``args.large_vocab`` characters: words of 1-3 of them, Zipf
    frequent, sentences from a word bigram chain; log-probs peaked on the spoken characters
    with look-alikes and a tail over the whole vocabulary."""
    rng = np.random.default_rng(args.seed)
    V = args.large_vocab
    symbols = [chr(0x4E00 + i) for i in range(V - 2)] + [" "]  # CJK ideographs + the space
    alphabet = Alphabet(symbols)
    n_words = max(200, V // 2)
    words = sorted({"".join(rng.choice(symbols[:-1], rng.integers(1, 4))) for _ in range(n_words)})
    zipf = 1.0 / np.arange(1, len(words) + 1)
    zipf /= zipf.sum()
    follow = rng.integers(0, len(words), size=(len(words), 8))  # each word's likely successors

    def sentence() -> str:
        current = rng.choice(len(words), p=zipf)
        out = [current]
        for _ in range(rng.integers(5, 15)):
            current = follow[current, rng.integers(0, 8)] if rng.random() < 0.8 else rng.choice(len(words), p=zipf)
            out.append(current)
        return " ".join(words[i] for i in out)

    text = folder / "text.txt"
    text.write_text("\n".join(sentence() for _ in range(20000)) + "\n", encoding="utf-8")
    arpa, binary = folder / "lm.arpa", folder / "lm.bin"
    with open(text, "rb") as source, open(arpa, "wb") as target:
        subprocess.run([str(kenlm_tool("lmplz")), "-o", "3", "-S", "1G", "-T", str(folder), "--discount_fallback"],
                       stdin=source, stdout=target, stderr=subprocess.DEVNULL, check=True)
    subprocess.run([str(kenlm_tool("build_binary")), str(arpa), str(binary)], stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, check=True)
    (folder / "unigrams.txt").write_text("\n".join(words) + "\n", encoding="utf-8")
    references = [sentence() for _ in range(args.limit or 20)]
    look_alike = rng.integers(1, V, size=V)
    log_probs = []
    for reference in references:
        rows = []
        for char in reference:
            index = alphabet.encode(char)[0]
            for _ in range(rng.integers(1, 3)):
                row = rng.dirichlet(np.full(V, 0.05)) * 0.1
                if rng.random() < 0.25:  # heard as its look-alike
                    row[look_alike[index]] += 0.5
                    row[index] += 0.4
                else:
                    row[index] += 0.9
                rows.append(row)
            blank = rng.dirichlet(np.full(V, 0.05)) * 0.05
            blank[0] += 0.95
            rows.append(blank)
        probs = np.maximum(np.array(rows), 1e-12)
        log_probs.append(np.log(probs / probs.sum(axis=1, keepdims=True)).astype(np.float32))
    frames = sum(len(lp) for lp in log_probs)
    return (f"{V} outputs", alphabet, log_probs, references, frames * 0.02, str(binary), words, (0.8, 1.0))


# ----------------------------------------------------------------------------- measuring


def run_rows(case, args) -> list[dict]:
    name, alphabet, log_probs, references, audio_seconds, lm_path, unigrams, (alpha, beta) = case
    labels = [""] + list(alphabet.symbols)
    print(f"\n## {name}: {len(log_probs)} utterances, {audio_seconds:.0f} s of audio, {len(labels)} outputs; "
          f"alpha={alpha} beta={beta}; one thread", flush=True)
    print("| decoder | beam | DS2 pruning | threshold | WER % | CER % | real-time factor | ours / pyctcdecode | "
          "ours / flashlight | same text as pyctcdecode |")
    print("|---|---:|:-:|---:|---:|---:|---:|---:|---:|---:|")
    base = BeamSearchOptions(lm=lm_path, alpha=alpha, beta=beta, jobs=1, beam_threshold=args.threshold)
    decoders = [d for d in args.decoders.split(",") if d != "flashlight" or flashlight_available()]
    rows, too_slow = [], set()

    def measure(decoder: str, options: BeamSearchOptions):
        if decoder == "flashlight":
            search = Flashlight(labels, lm_path, unigrams, options)
            start = time.perf_counter()
            texts = [search(lp) for lp in log_probs]
        else:
            built = build_beam_decoder(alphabet, replace(options, decoder=decoder))
            start = time.perf_counter()
            texts = beam_decode(log_probs, alphabet, replace(options, decoder=decoder), built)
        seconds = time.perf_counter() - start
        report = score_pairs(zip(references, texts))
        return texts, report.wer, report.cer, seconds

    def emit(row):
        rows.append(row)
        ratios = [f"{row[key]:.1f}x faster" if row[key] is not None else "-"
                  for key in ("speedup_vs_pyctcdecode", "speedup_vs_flashlight")]
        print(f"| {row['decoder']} | {row['beam']} | {row['pruning']} | {row['threshold']} | {fmt(row['wer'])} | "
              f"{fmt(row['cer'])} | {row['rtf']:.2e} | {ratios[0]} | {ratios[1]} | {row['agree_with_pyctcdecode']} |",
              flush=True)

    for beam in (int(b) for b in args.beams.split(",")):
        for pruning in (True, False):
            options = replace(base, beam_width=beam, prune_p=base.prune_p if pruning else 1.0,
                              prune_top=base.prune_top if pruning else len(labels))
            results = {}
            for decoder in decoders:
                if not pruning and decoder not in args.unpruned_decoders.split(","):
                    continue
                if (decoder, pruning) in too_slow:
                    print(f"| {decoder} | {beam} | {'yes' if pruning else 'no'} | {args.threshold} | skipped: a narrower "
                          f"beam took over {args.slow_limit:.0f} s | | | | | |", flush=True)
                    continue
                results[decoder] = measure(decoder, options)
                if results[decoder][3] > args.slow_limit:
                    too_slow.add((decoder, pruning))
            reference, flashlight = results.get("pyctcdecode"), results.get("flashlight")
            for decoder, (texts, wer, cer, seconds) in results.items():
                speedup = reference[3] / seconds if reference and decoder == "ds2" else None
                over_flashlight = flashlight[3] / seconds if flashlight and decoder == "ds2" else None
                agree = (f"{sum(a == b for a, b in zip(texts, reference[0]))}/{len(texts)}"
                         if reference and decoder != "pyctcdecode" else "-")
                emit(dict(case=name, decoder=decoder, beam=beam, pruning="yes" if pruning else "no",
                          threshold=args.threshold, wer=wer, cer=cer, rtf=seconds / audio_seconds,
                          speedup_vs_pyctcdecode=speedup, speedup_vs_flashlight=over_flashlight,
                          agree_with_pyctcdecode=agree))
    # the beam threshold: what it saves and costs, ours, beam 100, pruning on
    for threshold in (0.0, 10.0, 25.0, 50.0):
        texts, wer, cer, seconds = measure("ds2", replace(base, beam_width=100, beam_threshold=threshold))
        emit(dict(case=name, decoder="ds2", beam=100, pruning="yes", threshold=threshold or "off", wer=wer, cer=cer,
                  rtf=seconds / audio_seconds, speedup_vs_pyctcdecode=None, speedup_vs_flashlight=None,
                  agree_with_pyctcdecode="-"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("logprobs", nargs="?", help="log-probs saved by `ds2 decode --save-logprobs`")
    parser.add_argument("manifest", nargs="?", help="the manifest they belong to (references, durations)")
    parser.add_argument("--lm", help="lm.bin (unigrams.txt beside it)")
    parser.add_argument("--alpha", type=float, help="default: decoding.json beside the log-probs, else 0.5")
    parser.add_argument("--beta", type=float, help="default: decoding.json beside the log-probs, else 1.0")
    parser.add_argument("--large-vocab", type=int, default=0, help="also the made-up N-output case (e.g. 5000)")
    parser.add_argument("--beams", default="10,50,100,500")
    parser.add_argument("--threshold", type=float, default=BeamSearchOptions().beam_threshold,
                        help="beam threshold of ours and pyctcdecode (natural log)")
    parser.add_argument("--decoders", default="ds2,pyctcdecode,flashlight")
    parser.add_argument("--unpruned-decoders", default="ds2,pyctcdecode,flashlight",
                        help="the decoders also run without pruning (pyctcdecode over thousands of outputs "
                        "without pruning takes minutes per utterance)")
    parser.add_argument("--limit", type=int, default=50, help="the first N utterances (0: all)")
    parser.add_argument("--slow-limit", type=float, default=120.0, help="seconds a row may take before the "
                        "decoder's wider beams are skipped")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--csv", help="also write the rows here")
    args = parser.parse_args()
    if not args.logprobs and not args.large_vocab:
        parser.error("give cached log-probs (with their manifest and --lm), --large-vocab N, or both")
    rows = []
    if args.logprobs:
        if not (args.manifest and args.lm):
            parser.error("cached log-probs need their manifest and --lm")
        rows += run_rows(model_case(args), args)
    if args.large_vocab:
        with tempfile.TemporaryDirectory() as folder:
            rows += run_rows(large_vocab_case(args, Path(folder)), args)
    if args.csv:
        write_csv(args.csv, rows, FIELDS)


if __name__ == "__main__":
    main()
