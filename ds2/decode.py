"""Decoding: from the model's outputs to text.

Greedy (best path) decoding takes the most likely symbol at every output step, merges
repeats and drops blanks. It is DS2's no-language-model baseline.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

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


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@torch.no_grad()
def run_model(model, dataset: SpeechDataset, options: DecodingOptions) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor, list[tuple[int, str]]]]:
    """Run the acoustic model once over a dataset, in length-sorted batches.

    Yields (dataset indices, logits (B, T, V) on the CPU, output lengths (B,), failures).
    """
    from ds2.train import make_loader

    device = _device(options.device)
    model.to(device).eval()
    batches = make_batches(dataset.durations, math.inf, options.batch_size)
    loader = make_loader(dataset, batches, options.num_workers)
    for batch in tqdm(loader, total=len(batches), disable=not options.progress, desc="decode", unit="batch"):
        if not len(batch):
            yield [], torch.zeros(0, 0, 0), torch.zeros(0, dtype=torch.long), batch.failures
            continue
        logits, output_lengths = model(batch.features.to(device), batch.feature_lengths.to(device))
        yield batch.indices, logits.float().cpu(), output_lengths.cpu(), batch.failures


def decode_manifest(
    checkpoint: str | Path, manifest: str | Path, out_path: str | Path, options: DecodingOptions = DecodingOptions()
) -> int:
    """Greedy-decode every utterance of ``manifest``; write its records plus ``pred_text``.

    Entries whose audio cannot be read keep an empty ``pred_text`` and an ``error`` field
    (they count as errors when scored, and nothing is dropped). Returns the number written.
    """
    from ds2.train import load_model

    model, alphabet = load_model(checkpoint)
    dataset = SpeechDataset(manifest, alphabet, require_labels=False)
    hypotheses: dict[int, str] = {}
    errors: dict[int, str] = {}
    for indices, logits, lengths, failures in run_model(model, dataset, options):
        hypotheses.update(zip(indices, greedy_decode(logits, lengths, alphabet)))
        for index, message in failures:
            log.warning("%s", message)
            errors[index] = message
    records = []
    for index, record in enumerate(dataset.records):
        record = {key: value for key, value in record.items() if key != "labels"}
        record["pred_text"] = hypotheses.get(index, "")
        if index in errors:
            record["error"] = errors[index]
        records.append(record)
    return write_manifest(out_path, records)


@torch.no_grad()
def transcribe(checkpoint: str | Path, paths: list[str | Path], device: str = "auto") -> list[str]:
    """Greedy transcripts of audio files, in the order given. Raises AudioError naming a bad file."""
    from ds2.train import load_model

    target = _device(device)
    model, alphabet = load_model(checkpoint, target)
    texts = []
    for path in paths:
        features = audio.spectrogram(audio.load_audio(path))  # N_FREQ x T
        lengths = torch.tensor([features.shape[1]], device=target)
        logits, output_lengths = model(features.unsqueeze(0).to(target), lengths)
        texts.extend(greedy_decode(logits, output_lengths, alphabet))
    return texts
