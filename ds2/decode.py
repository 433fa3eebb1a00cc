"""Decoding: from the model's outputs to text.

Greedy (best path) decoding takes the most likely symbol at every output step, merges
repeats and drops blanks. It is DS2's no-language-model baseline.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ds2 import audio
from ds2.data import SpeechDataset, make_batches, write_manifest
from ds2.text import BLANK, Alphabet

log = logging.getLogger("ds2.decode")


@dataclass(frozen=True)
class DecodingOptions:
    batch_size: int = 32  # utterances per forward pass
    device: str = "auto"  # "auto", "cpu", "cuda", ...
    num_workers: int = 1  # data loading processes
    progress: bool = True


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


@dataclass(frozen=True)
class BeamSearchOptions:
    """Beam search with an n-gram LM: maximizes log p_ctc + alpha log p_lm + beta words.

    alpha weighs the LM log-probability in NATURAL log (pyctcdecode converts KenLM's log10
    scores to natural log before weighting); beta is added once per word.
    """

    lm: str  # lm.bin (or .arpa) from `ds2 lm build`
    unigrams: str | None = None  # unigrams.txt beside it (default: found next to the LM)
    alpha: float = 0.5
    beta: float = 1.0
    beam_width: int = 100
    prune_p: float = 0.99  # DS2 pruning: the fewest characters whose probability sums to p ...
    prune_top: int = 40  # ... and at most this many per frame; prune_p >= 1 and top >= V: off
    jobs: int = 0  # decoding processes (0: one per core)

    def __post_init__(self):
        for name in ("alpha", "beta", "prune_p"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number, got {getattr(self, name)}")
        if self.beam_width < 1 or self.prune_top < 1 or not 0 < self.prune_p:
            raise ValueError("beam_width and prune_top must be >= 1 and prune_p > 0")


def ds2_prune(log_probs: np.ndarray, p: float = 0.99, top: int = 40) -> np.ndarray:
    """DS2's per-frame candidate pruning, applied to a (T, V) log-probability matrix.

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
    return np.where(rank < n_keep[:, None], log_probs, PRUNED_LOGP).astype(np.float32)


_BEAM_DECODER = None  # built once in the parent; forked workers inherit it


def build_beam_decoder(alphabet: Alphabet, options: BeamSearchOptions):
    from pyctcdecode import Alphabet as CtcAlphabet
    from pyctcdecode import BeamSearchDecoderCTC, LanguageModel

    from ds2.lm import load_lm

    kenlm_model = load_lm(options.lm)  # clear errors for a missing or corrupt file; loaded once per path
    unigrams_path = Path(options.unigrams) if options.unigrams else Path(options.lm).with_name("unigrams.txt")
    unigrams = unigrams_path.read_text(encoding="utf-8").split() if unigrams_path.exists() else None
    if unigrams:
        outside = sorted({c for word in unigrams for c in word if c not in alphabet.symbols})
        if outside:
            raise ValueError(f"{unigrams_path}: the LM's words use characters outside the model's alphabet: {outside[:10]}")
    labels = [""] + list(alphabet.symbols)  # index 0 is the blank
    language_model = LanguageModel(kenlm_model, unigrams, alpha=options.alpha, beta=options.beta)
    return BeamSearchDecoderCTC(CtcAlphabet.build_alphabet(labels), language_model)


def _beam_decode_one(args: tuple[np.ndarray, int, float, int]) -> str:
    log_probs, beam_width, prune_p, prune_top = args
    if prune_p < 1 or prune_top < log_probs.shape[1]:
        log_probs = ds2_prune(log_probs, prune_p, prune_top)
        token_min_logp = PRUNED_LOGP / 2  # everything DS2 kept is a candidate
    else:
        token_min_logp = -math.inf  # no pruning at all
    beams = _BEAM_DECODER.decode_beams(log_probs, beam_width=beam_width, token_min_logp=token_min_logp)
    return beams[0][0]


def beam_decode(log_probs: list[np.ndarray], alphabet: Alphabet, options: BeamSearchOptions) -> list[str]:
    """LM beam search over per-utterance (T, V) natural-log probabilities, in a fork pool."""
    global _BEAM_DECODER
    _BEAM_DECODER = build_beam_decoder(alphabet, options)
    tasks = [(lp, options.beam_width, options.prune_p, options.prune_top) for lp in log_probs]
    jobs = options.jobs or os.cpu_count() or 1
    if jobs == 1 or len(tasks) < 2:
        return [_beam_decode_one(task) for task in tasks]
    with multiprocessing.get_context("fork").Pool(jobs) as pool:
        return pool.map(_beam_decode_one, tasks, chunksize=max(1, len(tasks) // (4 * jobs)))


def select_device(name: str) -> torch.device:
    """"auto" -> cuda when available, else cpu; anything else as torch names it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@torch.no_grad()
def run_model(model, dataset: SpeechDataset, options: DecodingOptions) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor, list[tuple[int, str]]]]:
    """Run the acoustic model once over a dataset, in length-sorted batches.

    Yields (dataset indices, logits (B, T, V) on the CPU, output lengths (B,), failures).
    """
    from ds2.train import make_loader

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
    from ds2.train import load_model

    model, alphabet = load_model(checkpoint)
    dataset = SpeechDataset(manifest, alphabet, require_labels=False)
    log_probs: dict[int, torch.Tensor] = {}
    errors: dict[int, str] = {}
    for indices, logits, lengths, failures in run_model(model, dataset, options):
        for index, row, length in zip(indices, torch.log_softmax(logits, dim=-1), lengths.tolist()):
            log_probs[index] = row[:length].clone()
        for index, message in failures:
            log.warning("%s", message)
            errors[index] = message
    return {"alphabet": list(alphabet.symbols), "log_probs": log_probs, "errors": errors}


def save_log_probs(cache: dict, path: str | Path) -> None:
    """Write a compute_log_probs() result atomically (loads with weights_only=True)."""
    from ds2.data import atomic_write

    with atomic_write(path, "wb") as handle:
        torch.save(cache, handle)


def load_log_probs(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: log-prob cache not found")
    try:
        cache = torch.load(path, weights_only=True)
    except Exception as err:
        raise ValueError(f"{path}: not a readable log-prob cache ({type(err).__name__})") from None
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
    from ds2.data import read_manifest

    cache = load_log_probs(logprobs) if logprobs else compute_log_probs(checkpoint, manifest, options)
    if save_logprobs:
        save_log_probs(cache, save_logprobs)
    hypotheses = decode_cache(cache, beam)
    records = []
    for index, record in enumerate(read_manifest(manifest)):
        record["pred_text"] = hypotheses.get(index, "")
        if index in cache["errors"]:
            record["error"] = cache["errors"][index]
        records.append(record)
    return write_manifest(out_path, records)


@torch.no_grad()
def transcribe(checkpoint: str | Path, paths: list[str | Path], device: str = "auto") -> list[str]:
    """Greedy transcripts of audio files, in the order given. Raises AudioError naming a bad file."""
    from ds2.train import load_model

    target = select_device(device)
    model, alphabet = load_model(checkpoint, target)
    texts = []
    for path in paths:
        features = audio.spectrogram(audio.load_audio(path))  # N_FREQ x T
        lengths = torch.tensor([features.shape[1]], device=target)
        logits, output_lengths = model(features.unsqueeze(0).to(target), lengths)
        texts.extend(greedy_decode(logits, output_lengths, alphabet))
    return texts
