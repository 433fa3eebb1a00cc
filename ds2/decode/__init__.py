"""Decoding: from the model's outputs to text.

Greedy (best path) decoding takes the most likely symbol at every output step, merges
repeats and drops blanks (bigram labels are joined back into characters by
``Alphabet.decode``): DS2's no-language-model baseline. LM beam search maximizes
log p_ctc + alpha log p_lm + beta words with DS2's per-frame pruning, in ds2's own compiled
decoder (:mod:`ds2.decode.beam`; pyctcdecode stays as the reference, ``decoder="pyctcdecode"``).
The acoustic model runs once per manifest; its log-probs can be cached and decoded again
(``ds2 tune`` searches alpha and beta on them). Files of any length, with word times and
confidences: ds2.transcribe.

The decoding defaults live here, once: :class:`DecodingOptions`, :class:`BeamSearchOptions`,
and ``decoding.json`` beside a model (written by ``ds2 tune``), which
:func:`beam_options` reads for an alpha or beta the caller did not give.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ds2.checkpoint import load_model
from ds2.config import DEVICE_HELP, DEVICE_PATTERN, check, option, parse_strs, show_strs
from ds2.data import SpeechDataset, make_batches, make_loader, read_manifest, write_manifest
from ds2.features import featurizer
from ds2.io import atomic_write, load_torch_file, process_map, select_device
from ds2.text import BLANK, Alphabet

log = logging.getLogger("ds2.decode")

DECODING_FILE = "decoding.json"  # tuned alpha/beta beside a model (ds2 tune writes it)


@dataclass(frozen=True)
class DecodingOptions:
    """How the acoustic model runs over a manifest."""

    batch_size: int = option(32, "Utterances per forward pass.", min=1)
    device: str = option("auto", "auto, cpu, cuda, cuda:1, ...", pattern=DEVICE_PATTERN, pattern_help=DEVICE_HELP)
    num_workers: int = option(1, "Data loading processes (0: in this process).", min=0)
    progress: bool = option(True, "Show a progress bar.")

    def __post_init__(self):
        check(self)


def greedy_decode(logits: torch.Tensor, lengths: torch.Tensor, alphabet: Alphabet) -> list[str]:
    """Best-path decoding.

    logits: shape = (B, T, V) (or log-probabilities: only the argmax matters)
    lengths: shape = (B,), valid output steps per utterance
    Returns one string per utterance.
    """
    best = logits.argmax(dim=-1).cpu()  # B x T
    texts = []
    for row, length in zip(best, lengths.tolist()):
        path = torch.unique_consecutive(row[:length])
        texts.append(alphabet.decode(path[path != BLANK].tolist()))
    return texts


# ----------------------------------------------------------------------------- LM beam search

PRUNED_LOGP = -1e4  # log-probability given to characters DS2's pruning removes from a frame
PYCTCDECODE_PRUNED_CUT = math.log(1e-15) + 1.0  # pyctcdecode's token_min_logp that skips them (see _beam_decode_one)
ISLAND_FRAMES = 3  # split_at_pauses: this few non-blank frames alone between pauses belong to the next word


@dataclass(frozen=True)
class BeamSearchOptions:
    """Beam search with an n-gram LM: maximizes log p_ctc + alpha log p_lm + beta words.

    alpha weighs the LM log-probability in NATURAL log (pyctcdecode converts KenLM's log10
    scores to natural log before weighting); beta is added once per word.
    """

    lm: str = option("", "KenLM model (lm.bin or .arpa from `ds2 lm build`); empty: beam search without an LM.",
                     cli=False)
    unigrams: str | None = option(None, "unigrams.txt of the LM (default: found beside it).", cli=False)
    alpha: float = option(0.5, "LM weight, on the LM's NATURAL-log probability "
                          "(default: decoding.json beside the checkpoint from `ds2 tune`, else 0.5).")
    beta: float = option(1.0, "Bonus per word (default: decoding.json beside the checkpoint, else 1.0).")
    beam_width: int = option(100, "Beams kept per step.", min=1)
    beam_threshold: float = option(25.0, "Drop prefixes scoring this far (natural log) below the best one at "
                                   "each step (0: off).", min=0)
    prune_p: float = option(0.99, "DS2 pruning: per frame, the fewest characters whose probability "
                            "reaches p (1: off).", above=0, max=1)
    prune_top: int = option(40, "DS2 pruning: at most this many characters per frame.", min=1)
    jobs: int = option(0, "Beam search threads (0: one per core).", min=0)
    hotwords: tuple[str, ...] = option((), "Words to favour (names, jargon), separated by commas: each gets "
                                       "--hotword-weight when the search spells it.", parse=parse_strs,
                                       show=show_strs)
    hotword_weight: float = option(10.0, "Score bonus of a hotword (natural log).", min=0)
    unk_offset: float = option(-10.0, "log10 cost of a word the LM does not know, and of a partial word that "
                               "starts none of its words.", max=0)
    decoder: str = option("ds2", "ds2 (compiled, threads) or pyctcdecode (the reference it is checked "
                          "against; processes, no word times).", choices=("ds2", "pyctcdecode"))
    n_best: int = option(1, "ds2 decode: also write the N best texts with their scores (field n_best; "
                         "decoder ds2).", min=1)

    def __post_init__(self):
        check(self)


def load_decoding_defaults(model_path: str | Path | None) -> dict:
    """decoding.json beside a checkpoint or a log-prob cache ({} if there is none)."""
    if model_path is None:
        return {}
    path = Path(model_path).parent / DECODING_FILE
    if not path.exists():
        return {}
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not a JSON decoding file ({err})") from None
    if not all(isinstance(values.get(key), (int, float)) and math.isfinite(values[key]) for key in ("alpha", "beta")):
        raise ValueError(f"{path}: alpha/beta must be finite numbers")
    return values


def beam_options(base: BeamSearchOptions, model_path: str | Path | None = None, alpha: float | None = None,
                 beta: float | None = None) -> tuple[BeamSearchOptions, bool]:
    """``base`` with alpha and beta as given, else from decoding.json beside ``model_path``
    (a checkpoint or a log-prob cache), else base's own. Returns (options, tuned): whether
    decoding.json supplied a value."""
    tuned = load_decoding_defaults(model_path)
    values = dict(
        alpha=alpha if alpha is not None else tuned.get("alpha", base.alpha),
        beta=beta if beta is not None else tuned.get("beta", base.beta),
    )
    used_tuned = bool(tuned) and (alpha is None or beta is None)
    return replace(base, **values), used_tuned


def ds2_prune(log_probs: np.ndarray, p: float = 0.99, top: int = 40) -> np.ndarray:
    """DS2's per-frame candidate pruning, applied to a (T, V) log-probability matrix (for the
    pyctcdecode reference; ds2's decoder prunes inside its search, the same way).

    Keeps, at each frame, the fewest characters whose cumulative probability reaches ``p``
    (at most ``top``); the others get PRUNED_LOGP so the search never expands them.
    """
    probs = np.exp(log_probs)
    order = np.argsort(-probs, axis=1, kind="stable")  # T x V, most likely first
    descending = np.take_along_axis(probs, order, axis=1)
    n_keep = (np.cumsum(descending, axis=1) < p).sum(axis=1) + 1
    n_keep = np.minimum(n_keep, min(top, probs.shape[1]))
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(probs.shape[1])[None, :].repeat(len(probs), 0), axis=1)
    kept = rank < n_keep[:, None]
    return np.where(kept, log_probs, PRUNED_LOGP).astype(np.float32)


_BEAM_DECODER = None  # pyctcdecode's, built once in the parent; forked workers inherit it


def build_beam_decoder(alphabet: Alphabet, options: BeamSearchOptions):
    """The decoder ``options.decoder`` names, its LM loaded: ds2's (an LmDecoder) or pyctcdecode's.

    When ds2's cannot be compiled (no compiler, KenLM's library not built), pyctcdecode's is
    used with a warning if it is installed; otherwise the build error, which says what to do.
    """
    if options.decoder == "ds2":
        from ds2.decode.beam import DecoderBuildError, LmDecoder

        try:
            return LmDecoder(alphabet, options)
        except DecoderBuildError as error:
            try:
                import pyctcdecode  # noqa: F401
            except ImportError:
                raise error from None
            log.warning("%s\nfalling back to pyctcdecode (slower, no N-best scores or word times)", error)
    return build_pyctcdecode(alphabet, options)


def _is_ours(decoder) -> bool:
    from ds2.decode.beam import LmDecoder

    return isinstance(decoder, LmDecoder)


def build_pyctcdecode(alphabet: Alphabet, options: BeamSearchOptions):
    from pyctcdecode import Alphabet as CtcAlphabet
    from pyctcdecode import BeamSearchDecoderCTC, LanguageModel

    labels = [""] + list(alphabet.symbols)  # index 0 is the blank
    if not options.lm:  # beam search without an LM (e.g. for hotwords)
        return BeamSearchDecoderCTC(CtcAlphabet.build_alphabet(labels), None)

    from ds2.lm import load_lm

    kenlm_model = load_lm(options.lm)  # clear errors for a missing or corrupt file; loaded once per path
    unigrams_path = Path(options.unigrams) if options.unigrams else Path(options.lm).with_name("unigrams.txt")
    unigrams = unigrams_path.read_text(encoding="utf-8").split() if unigrams_path.exists() else None
    if unigrams:
        outside = sorted({c for word in unigrams for c in word if c not in alphabet.symbols})
        if outside:
            raise ValueError(f"{unigrams_path}: the LM's words use characters outside the model's alphabet: {outside[:10]}")
    language_model = LanguageModel(kenlm_model, unigrams, alpha=options.alpha, beta=options.beta,
                                   unk_score_offset=options.unk_offset)
    return BeamSearchDecoderCTC(CtcAlphabet.build_alphabet(labels), language_model)


def _beam_decode_one(args: tuple[np.ndarray, BeamSearchOptions]) -> str:
    log_probs, options = args
    beam_width, prune_p, prune_top = options.beam_width, options.prune_p, options.prune_top
    if prune_p < 1 or prune_top < log_probs.shape[1]:
        log_probs = ds2_prune(log_probs, prune_p, prune_top)
        # pyctcdecode clips log-probs at log(1e-15) before comparing them with token_min_logp:
        # pruned characters come back at -34.5, so the cut must sit above that to prune at all
        token_min_logp = PYCTCDECODE_PRUNED_CUT
    else:
        token_min_logp = -math.inf  # no pruning at all
    hotwords = {"hotwords": list(options.hotwords), "hotword_weight": options.hotword_weight} if options.hotwords else {}
    threshold = -options.beam_threshold if options.beam_threshold > 0 else -math.inf
    beams = _BEAM_DECODER.decode_beams(log_probs, beam_width=beam_width, token_min_logp=token_min_logp,
                                       beam_prune_logp=threshold, **hotwords)
    return beams[0][0]


def beam_decode(log_probs: list[np.ndarray], alphabet: Alphabet, options: BeamSearchOptions, decoder=None) -> list[str]:
    """LM beam search over per-utterance (T, V) natural-log probabilities: ds2's decoder on
    threads, or pyctcdecode in a fork pool.

    ``decoder``: one build_beam_decoder() made for these options, to reuse over many calls.
    """
    decoder = decoder if decoder is not None else build_beam_decoder(alphabet, options)
    if _is_ours(decoder):
        return [hypothesis.text for hypothesis in decoder.decode_batch(log_probs, options.jobs)]
    global _BEAM_DECODER
    _BEAM_DECODER = decoder
    tasks = [(lp, options) for lp in log_probs]
    return list(process_map(_beam_decode_one, tasks, options.jobs))


def split_at_pauses(log_probs: np.ndarray, max_frames: int, pause_frames: int | None = None) -> list[tuple[int, int]]:
    """Frames [a, b) of the pieces of a long recording, decoded one by one.

    Cut in the middle of every run of at least ``pause_frames`` blank-dominated frames (a
    pause: a word ends there, even where the model, trained on single utterances, emits no
    space), then within any piece still longer than ``max_frames`` in the middle of its
    longest blank run in the second half of the window (at the limit where there is none).

    Short pieces keep a search's memory (every frame is kept for the word alignment) and
    its prefix tree small, and let pieces run in parallel.
    """
    n_frames = len(log_probs)
    blank = np.asarray(log_probs).argmax(axis=1) == BLANK
    edges = np.flatnonzero(np.diff(np.concatenate([[0], blank.astype(np.int8), [0]])))
    runs = list(zip(edges[::2].tolist(), edges[1::2].tolist()))  # [start, end) of every run of blanks
    cuts = [0]
    if pause_frames:
        previous_end = 0  # end of the last pause (or of leading silence)
        for begin, end in runs:
            if end - begin < pause_frames:
                continue
            # A character or two alone between two pauses (or after the leading silence) is the
            # start of the next word, emitted early: CTC often puts the "w" of "where" at the
            # start of the silence before it. It goes with what follows: no cut after it.
            island = np.count_nonzero(~blank[previous_end:begin]) <= ISLAND_FRAMES
            if begin > 0 and end < n_frames and not island:
                cuts.append((begin + end) // 2)
            previous_end = end
    cuts.append(n_frames)
    pieces = []
    for start, stop in zip(cuts, cuts[1:]):
        while stop - start > max_frames:
            low, high = start + max_frames // 2, start + max_frames
            inside = [(end - begin, (begin + end) // 2) for begin, end in runs if low <= (begin + end) // 2 < high]
            cut = max(inside)[1] if inside else high
            pieces.append((start, cut))
            start = cut
        pieces.append((start, stop))
    return pieces


def beam_decoder(alphabet: Alphabet, options: BeamSearchOptions):
    """A function (T, V) log-probs -> text that searches with ``options`` in this process;
    the decoder (and its LM) is built once, for many calls."""
    decoder = build_beam_decoder(alphabet, options)
    if _is_ours(decoder):
        return lambda log_probs: decoder.decode(log_probs, timing=False).text

    def decode_one(log_probs: np.ndarray) -> str:
        global _BEAM_DECODER
        _BEAM_DECODER = decoder
        return _beam_decode_one((log_probs, options))

    return decode_one


@torch.no_grad()
def run_model(model, dataset: SpeechDataset, options: DecodingOptions) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor, list[tuple[int, str]]]]:
    """Run the acoustic model once over a dataset, in length-sorted batches.

    Yields (dataset indices, logits (B, T, V) on the CPU, output lengths (B,), failures).
    """
    device = select_device(options.device)
    model.to(device).eval()
    batches = make_batches(dataset.durations, math.inf, options.batch_size)
    loader = make_loader(dataset, batches, options.num_workers)
    for batch in tqdm(loader, total=len(batches), disable=not options.progress, desc="decode", unit="batch"):
        if not len(batch):
            yield [], torch.zeros(0, 0, 0), torch.zeros(0, dtype=torch.long), batch.failures
            continue
        logits, output_lengths = model(batch.features.to(device), batch.feature_lengths.to(device))
        yield batch.indices, logits.float().cpu(), output_lengths.cpu(), batch.failures


def compute_log_probs(checkpoint: str | Path, manifest: str | Path, options: DecodingOptions = DecodingOptions()) -> dict:
    """Run the acoustic model once over a manifest.

    Returns {"alphabet": symbols, "log_probs": {index: tensor (T, V) natural log},
    "errors": {index: message}}; indices are positions in the manifest's records.
    """
    model, alphabet = load_model(checkpoint)
    dataset = SpeechDataset(manifest, alphabet, require_labels=False, featurize=featurizer(model.config))
    log_probs: dict[int, torch.Tensor] = {}
    errors: dict[int, str] = {}
    for indices, logits, lengths, failures in run_model(model, dataset, options):
        for index, row, length in zip(indices, torch.log_softmax(logits, dim=-1), lengths.tolist()):
            log_probs[index] = row[:length].clone()
        for index, message in failures:
            log.warning("%s", message)
            errors[index] = message
    if errors and not log_probs:
        raise ValueError(f"{manifest}: none of its {len(errors)} audio files could be read, e.g. "
                         f"{errors[min(errors)]} (relative paths are read from the manifest's folder)")
    return {"alphabet": list(alphabet.symbols), "log_probs": log_probs, "errors": errors}


def save_log_probs(cache: dict, path: str | Path) -> None:
    """Write a compute_log_probs() result atomically (loads with weights_only=True)."""
    with atomic_write(path, "wb") as handle:
        torch.save(cache, handle)


def load_log_probs(path: str | Path) -> dict:
    """A compute_log_probs() result saved by save_log_probs (weights_only loading)."""
    cache = load_torch_file(path, "log-prob cache")
    if not isinstance(cache, dict) or "log_probs" not in cache:
        raise ValueError(f"{path}: not a ds2 log-prob cache")
    return cache


def decode_cache(cache: dict, beam: BeamSearchOptions | None = None) -> dict[int, str]:
    """Hypotheses for cached log-probs: greedy, or LM beam search when ``beam`` is given."""
    alphabet = Alphabet(cache["alphabet"])
    indices = sorted(cache["log_probs"])
    if beam is None:
        return {i: greedy_decode(cache["log_probs"][i][None], torch.tensor([len(cache["log_probs"][i])]), alphabet)[0]
                for i in indices}
    texts = beam_decode([cache["log_probs"][i].numpy() for i in indices], alphabet, beam)
    return dict(zip(indices, texts))


def n_best_cache(cache: dict, beam: BeamSearchOptions) -> dict[int, list[dict]]:
    """The ``beam.n_best`` best hypotheses of each cached utterance, best first, as
    {text, score, acoustic, lm} (natural log; ds2's decoder, on ``beam.jobs`` threads)."""
    if beam.decoder != "ds2":
        raise ValueError("--n-best needs --decoder ds2 (pyctcdecode's scores are not DS2's objective)")
    from concurrent.futures import ThreadPoolExecutor

    decoder = build_beam_decoder(Alphabet(cache["alphabet"]), beam)
    if not _is_ours(decoder):
        raise ValueError("--n-best needs ds2's decoder, which could not be built (see the warning above)")
    indices = sorted(cache["log_probs"])

    def one(index):
        return [dict(text=h.text, score=round(h.score, 4), acoustic=round(h.acoustic, 4), lm=round(h.lm, 4))
                for h in decoder.n_best_of(cache["log_probs"][index].numpy(), beam.n_best, timing=False)]

    with ThreadPoolExecutor(max_workers=beam.jobs or os.cpu_count() or 1) as pool:
        return dict(zip(indices, pool.map(one, indices)))


def decode_manifest(
    checkpoint: str | Path | None,
    manifest: str | Path,
    out_path: str | Path,
    options: DecodingOptions = DecodingOptions(),
    beam: BeamSearchOptions | None = None,
    save_logprobs: str | Path | None = None,
    logprobs: str | Path | None = None,
) -> int:
    """Decode every utterance of ``manifest``; write its records plus ``pred_text``.

    Greedy by default; LM beam search with ``beam``. The acoustic model runs once: its
    log-probs can be saved (``save_logprobs``) and reused (``logprobs``, no checkpoint needed).
    Entries whose audio cannot be read keep an empty ``pred_text`` and an ``error`` field
    (they count as errors when scored, and nothing is dropped). Returns the number written.
    """
    cache = load_log_probs(logprobs) if logprobs else compute_log_probs(checkpoint, manifest, options)
    if save_logprobs:
        save_log_probs(cache, save_logprobs)
    n_best = n_best_cache(cache, beam) if beam is not None and beam.n_best > 1 else {}
    hypotheses = {i: found[0]["text"] for i, found in n_best.items()} if n_best else decode_cache(cache, beam)
    records = []
    for index, record in enumerate(read_manifest(manifest)):
        record["pred_text"] = hypotheses.get(index, "")
        if index in n_best:
            record["n_best"] = n_best[index]
        if index in cache["errors"]:
            record["error"] = cache["errors"][index]
        records.append(record)
    return write_manifest(out_path, records)
