"""Manifests, the training dataset, batching and the SortaGrad sampler.

A manifest is a JSON-lines file, one utterance a line, with NeMo's field names so that
manifests move between tools::

    {"audio_filepath": "wav/utt1.wav", "duration": 2.31, "text": "the cat sat"}

``offset`` (seconds) marks a segment of a longer file. A relative ``audio_filepath`` is
relative to the manifest's own folder, so a corpus can be moved as a whole. Other fields
(``pred_text``, ``speaker``, ...) are kept as they are.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ds2 import audio
from ds2.features import spectrogram
from ds2.io import atomic_write
from ds2.text import Alphabet

REQUIRED_FIELDS = ("audio_filepath", "duration", "text")


class ManifestError(ValueError):
    """A manifest line that cannot be used; the message names the file and line."""


# --------------------------------------------------------------------------- files


def read_manifest(path: str | Path, resolve_paths: bool = True,
                  required: tuple[str, ...] = REQUIRED_FIELDS) -> Iterator[dict]:
    """Yield the records of a manifest lazily, one dict per non-empty line.

    ``required``: the fields every line must have (a noise manifest has no ``text``).

    Each record gets ``line`` (1-based line number, for messages) and, with
    ``resolve_paths``, an absolute ``audio_filepath``. Raises ManifestError naming
    ``path:line`` for invalid JSON, missing fields or bad values.
    """
    path = Path(path)
    if not path.exists():
        raise ManifestError(f"{path}: manifest not found")
    base = path.parent
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{line_number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ManifestError(f"{where}: invalid JSON ({err.msg})") from None
            if not isinstance(record, dict):
                raise ManifestError(f"{where}: expected a JSON object")
            missing = [key for key in required if key not in record]
            if missing:
                raise ManifestError(f"{where}: missing field(s) {', '.join(missing)}")
            try:
                duration = float(record["duration"])
                offset = float(record.get("offset", 0.0))
            except (TypeError, ValueError):
                raise ManifestError(f"{where}: duration/offset must be numbers") from None
            if not (math.isfinite(duration) and duration > 0) or not (math.isfinite(offset) and offset >= 0):
                raise ManifestError(f"{where}: bad duration {duration} or offset {offset}")
            if "text" in record and not isinstance(record["text"], str):
                raise ManifestError(f"{where}: text must be a string")
            record["duration"] = duration
            if "offset" in record:
                record["offset"] = offset
            if resolve_paths:
                audio_path = Path(record["audio_filepath"])
                if not audio_path.is_absolute():
                    record["audio_filepath"] = str((base / audio_path).resolve())
            record["line"] = line_number
            yield record


def write_manifest(path: str | Path, records: Iterable[dict], relative_to_manifest: bool = True) -> int:
    """Write records as JSON lines, atomically. Returns the number written.

    With ``relative_to_manifest``, audio paths under the manifest's folder are stored
    relative to it. The bookkeeping field ``line`` is dropped.
    """
    path = Path(path)
    base = path.parent.resolve()
    count = 0
    with atomic_write(path) as handle:
        for record in records:
            record = {key: value for key, value in record.items() if key != "line"}
            if relative_to_manifest and "audio_filepath" in record:
                audio_path = Path(record["audio_filepath"])
                if audio_path.is_absolute():
                    # ValueError: not under base; RuntimeError/OSError: a path that cannot be
                    # resolved (a symlink loop, in a rejects manifest) stays as it is.
                    with contextlib.suppress(ValueError, RuntimeError, OSError):
                        record["audio_filepath"] = str(audio_path.resolve().relative_to(base))
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
    return count


# --------------------------------------------------------------------------- dataset


@dataclass
class Example:
    """One utterance ready for the model."""

    features: torch.Tensor  # shape = (N_FREQ, n_frames)
    labels: torch.Tensor  # shape = (n_labels,), int64, no blanks
    index: int  # position in the dataset
    notes: tuple[str, ...] = ()  # augmentation clips that could not be used (they were skipped)


class SpeechDataset(torch.utils.data.Dataset):
    """Utterances of a manifest as (features, labels).

    The manifest is read once for the durations and texts (needed to sort and batch);
    audio is read when an item is asked for. An utterance that cannot be loaded gives
    ``(index, message)`` instead of an Example (the collate function moves it to
    ``Batch.failures`` and the trainer counts it), so one bad file never stops training.

    With an ``augmenter`` (:class:`ds2.augment.Augmenter`), items are asked for as
    ``(index, epoch)`` or ``(index, epoch, first index of the batch)`` (:func:`make_loader`
    does this) and each utterance is augmented with a generator seeded by (``seed``, epoch,
    index), its speed by (``seed``, epoch, first index) when that is given.
    """

    def __init__(
        self,
        manifest: str | Path,
        alphabet: Alphabet,
        max_duration: float | None = None,
        require_labels: bool = True,
        augmenter=None,
        seed: int = 0,
        featurize=spectrogram,
    ):
        """``require_labels=False`` (decoding) keeps entries whose text is empty or does
        not fit the alphabet; their labels are empty. ``featurize``: waveform -> features,
        :func:`ds2.features.featurizer` of the model (per-utterance normalization by default)."""
        self.featurize = featurize
        self.manifest = Path(manifest)
        self.alphabet = alphabet
        self.augmenter = augmenter
        self.seed = seed
        self.records: list[dict] = []
        self.skipped: list[str] = []  # reasons for entries dropped when the manifest was read
        for record in read_manifest(self.manifest):
            where = f"{self.manifest}:{record['line']}"
            if max_duration is not None and record["duration"] > max_duration:
                self.skipped.append(f"{where}: longer than {max_duration}s")
                continue
            try:
                record["labels"] = alphabet.encode(alphabet.normalize(record["text"]))
            except ValueError as err:
                if require_labels:
                    self.skipped.append(f"{where}: {err}")
                    continue
                record["labels"] = []
            if not record["labels"] and require_labels:
                self.skipped.append(f"{where}: empty transcript")
                continue
            self.records.append(record)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def durations(self) -> list[float]:
        return [record["duration"] for record in self.records]

    @property
    def label_lengths(self) -> list[int]:
        return [len(record["labels"]) for record in self.records]

    def __getitem__(self, item: int | tuple[int, ...]) -> Example | tuple[int, str]:
        index, epoch, first = (tuple(item) + (None,))[:3] if isinstance(item, tuple) else (item, None, None)
        record = self.records[index]
        try:
            waveform = audio.load_audio(
                record["audio_filepath"],
                offset=record.get("offset", 0.0),
                duration=record["duration"] if "offset" in record else None,
            )
        except audio.AudioError as err:
            return index, f"{self.manifest}:{record['line']}: {err}"
        notes: list[str] = []
        if self.augmenter is not None and epoch is not None and self.augmenter.applies(epoch):
            rng = self.augmenter.generator(self.seed, epoch, index)
            batch_rng = None if first is None else self.augmenter.batch_generator(self.seed, epoch, first)
            waveform, notes = self.augmenter.waveform(waveform, rng, batch_rng)
            features = self.augmenter.features(self.featurize(waveform), rng)
        else:
            features = self.featurize(waveform)
        return Example(features, torch.tensor(record["labels"], dtype=torch.long), index, tuple(notes))


@dataclass
class Batch:
    """A padded minibatch.

    features: shape = (batch, N_FREQ, max_frames), zero-padded
    feature_lengths: shape = (batch,), int64
    labels: shape = (batch, max_labels), zero-padded (0 is the blank, never a label)
    label_lengths: shape = (batch,), int64
    indices: dataset positions of the utterances in the batch
    failures: (dataset index, message) of utterances that could not be loaded
    notes: messages about augmentation clips that could not be used (skipped)
    """

    features: torch.Tensor
    feature_lengths: torch.Tensor
    labels: torch.Tensor
    label_lengths: torch.Tensor
    indices: list[int]
    failures: list[tuple[int, str]]
    notes: list[str] = field(default_factory=list)  # augmentation clips skipped

    def __len__(self) -> int:
        return len(self.indices)

    def pin_memory(self) -> "Batch":
        """The batch with its tensors in page-locked memory (the DataLoader calls this with
        ``pin_memory=True``), so that ``.to("cuda", non_blocking=True)`` does not wait."""
        return Batch(self.features.pin_memory(), self.feature_lengths.pin_memory(), self.labels.pin_memory(),
                     self.label_lengths.pin_memory(), self.indices, self.failures, self.notes)


def collate(items: list) -> Batch:
    """Pad a list of Examples into a Batch; failed items only add to ``failures``."""
    examples = [item for item in items if isinstance(item, Example)]
    failures = [item for item in items if not isinstance(item, Example)]
    if not examples:
        empty = torch.zeros(0, dtype=torch.long)
        return Batch(torch.zeros(0, audio.N_FREQ, 0), empty, torch.zeros(0, 0, dtype=torch.long), empty, [], failures)
    feature_lengths = torch.tensor([ex.features.shape[1] for ex in examples])
    label_lengths = torch.tensor([ex.labels.numel() for ex in examples])
    features = torch.zeros(len(examples), audio.N_FREQ, int(feature_lengths.max()))
    labels = torch.zeros(len(examples), int(label_lengths.max()), dtype=torch.long)
    for row, ex in enumerate(examples):
        features[row, :, : ex.features.shape[1]] = ex.features
        labels[row, : ex.labels.numel()] = ex.labels
    return Batch(features, feature_lengths, labels, label_lengths, [ex.index for ex in examples], failures,
                 [note for ex in examples for note in ex.notes])


# --------------------------------------------------------------------------- batching


@dataclass(frozen=True)
class BatchCost:
    """What a padded minibatch costs against a budget, in seconds of padded audio.

    A minibatch of B utterances whose longest lasts D seconds and whose longest transcript has
    L labels costs B x (D + c x T' x (2L + 1)) seconds: its padded audio, which the features
    and every layer's activations grow with, plus CTC's alpha/beta lattice of B x T' x (2L + 1)
    cells (T' output steps of D seconds at the model's time stride; each label with a blank on
    either side), each cell counted as the c seconds of audio whose activations take as much
    memory. With c = 0 (the default) the cost is the padded audio alone.
    """

    ctc_seconds_per_cell: float = 0.0  # c: audio seconds whose activations fill one lattice cell's memory
    time_stride: int = 1  # input frames per output step (the model's convolution stride in time)

    def __call__(self, count: int, longest: float, most_labels: int) -> float:
        if not self.ctc_seconds_per_cell:
            return count * longest
        steps = -(-audio.duration_to_frames(longest) // self.time_stride)
        return count * (longest + self.ctc_seconds_per_cell * steps * (2 * most_labels + 1))


def make_batches(durations: list[float], batch_seconds: float, max_batch_size: int,
                 label_lengths: list[int] | None = None, cost: BatchCost = BatchCost(),
                 sort_keys: list[float] | None = None) -> list[list[int]]:
    """Group utterances of similar length into minibatches.

    Utterances are sorted by ``sort_keys`` (default: their durations) and cut into consecutive
    groups of at most ``max_batch_size`` utterances whose ``cost`` is at most ``batch_seconds``
    (:class:`BatchCost`: padded audio seconds, and CTC's lattice when it counts it and
    ``label_lengths`` are given). An utterance over the budget alone gets a minibatch of its
    own. Sorting first keeps padding small.

    Returns the batches in increasing order of their sort keys (with the durations as keys, the
    SortaGrad order of DS2's first epoch); each lists its utterances by increasing duration.
    """
    keys = durations if sort_keys is None else sort_keys
    order = sorted(range(len(durations)), key=lambda i: (keys[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    longest = most_labels = 0
    for index in order:
        labels = label_lengths[index] if label_lengths is not None else 0
        grown = (max(longest, durations[index]), max(most_labels, labels))
        if current and (len(current) + 1 > max_batch_size or cost(len(current) + 1, *grown) > batch_seconds):
            batches.append(current)
            current, grown = [], (durations[index], labels)
        current.append(index)
        longest, most_labels = grown
    if current:
        batches.append(current)
    if sort_keys is not None:  # deal out by length (SortaGradSampler.shard), shortest first
        batches = [sorted(batch, key=lambda i: (durations[i], i)) for batch in batches]
    return batches


def epoch_batch_order(n_batches: int, epoch: int, seed: int, sortagrad: bool = True) -> list[int]:
    """The order in which an epoch visits its (length-sorted) batches.

    SortaGrad: epoch 0 goes in increasing length; later epochs, and every epoch when
    ``sortagrad`` is off, in a random order that depends only on (seed, epoch), so a
    resumed run replays exactly the same order.
    """
    order = list(range(n_batches))
    if epoch == 0 and sortagrad:
        return order
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order


@dataclass(frozen=True)
class Bucketing:
    """How the utterances are cut into global minibatches, epoch by epoch.

    :meth:`batches` is a pure function of these fields and the epoch: every rank computes the
    same global minibatches, and a run resumed inside an epoch replays that epoch's exactly.

    SortaGrad's first epoch sorts the utterances by duration, cuts them by the budget
    (:func:`make_batches`) and goes by increasing length. Every other epoch (every epoch without
    ``sortagrad``) sorts them by their duration times a factor drawn from [1 - jitter,
    1 + jitter] (seeded by seed and epoch), cuts them by the budget again and visits the
    minibatches in a random order (:func:`epoch_batch_order`): an utterance meets other
    neighbours of about its length each epoch, while the padding stays within about 2 x jitter
    of each minibatch's longest. The number of minibatches may differ from epoch to epoch.
    With jitter 0 every epoch has the first epoch's minibatches, in a new order.
    """

    durations: tuple[float, ...]  # seconds, one per utterance (dataset order)
    max_batch_size: int  # most utterances per minibatch
    batch_seconds: float = math.inf  # budget of BatchCost per minibatch
    label_lengths: tuple[int, ...] | None = None  # labels per utterance, for the CTC term of the cost
    cost: BatchCost = BatchCost()
    seed: int = 0
    sortagrad: bool = True
    jitter: float = 0.0  # 0 <= jitter < 1

    def __post_init__(self):
        object.__setattr__(self, "durations", tuple(self.durations))
        if self.label_lengths is not None:
            object.__setattr__(self, "label_lengths", tuple(self.label_lengths))
        if not 0 <= self.jitter < 1:
            raise ValueError(f"bucket jitter must be in [0, 1), got {self.jitter}")

    def batches(self, epoch: int) -> list[list[int]]:
        """The global minibatches of ``epoch`` (lists of dataset indices), in the order it visits them."""
        keys = None
        if self.jitter and not (epoch == 0 and self.sortagrad):
            rng = random.Random(f"ds2 bucketing {self.seed} {epoch}")  # str seeds hash with SHA-512: stable
            keys = [duration * rng.uniform(1 - self.jitter, 1 + self.jitter) for duration in self.durations]
        batches = make_batches(self.durations, self.batch_seconds, self.max_batch_size, self.label_lengths,
                               self.cost, keys)
        return [batches[i] for i in epoch_batch_order(len(batches), epoch, self.seed, self.sortagrad)]

    def cost_of(self, batch: list[int]) -> float:
        """``batch``'s cost against the budget (seconds)."""
        labels = max((self.label_lengths[i] for i in batch), default=0) if self.label_lengths is not None else 0
        return self.cost(len(batch), max(self.durations[i] for i in batch), labels)


class SortaGradSampler:
    """This rank's share of every minibatch of an epoch, in the epoch's order (a DataLoader
    ``batch_sampler``).

    The global minibatches (lists of dataset indices) are the epoch's :meth:`Bucketing.batches`,
    the same on every rank (SortaGrad: the first epoch by increasing length). Each global batch
    is dealt out like cards, in its length order: rank r gets the utterances at positions r,
    r + N, r + 2N, ... So the ranks' shards are disjoint, of similar lengths (neighbours in
    length order, so each rank's padding and work are alike), sizes differ by at most one, and
    every rank gets one shard per global batch (empty when the batch has fewer utterances than
    ranks): every rank takes the same number of steps. With one rank the shard is the whole batch.

    Items are ``(index, epoch, first index of the global batch)``: what the dataset's
    augmenter seeds from, so an utterance gets the same augmentation whatever the number of
    ranks (:class:`SpeechDataset`). ``set_epoch(epoch, start)`` chooses the epoch and the
    global batch to start from (a resumed run); the DataLoader reads it each time it starts
    iterating, so one loader with persistent workers serves every epoch.
    """

    def __init__(self, bucketing: Bucketing, rank: int = 0, world_size: int = 1):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not one of {world_size} ranks")
        self.bucketing = bucketing
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.start = 0
        self._batches: list[list[int]] | None = None  # the epoch's, cut when first asked for

    @property
    def batches(self) -> list[list[int]]:
        """The epoch's global minibatches, in order."""
        if self._batches is None:
            self._batches = self.bucketing.batches(self.epoch)
        return self._batches

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        if epoch != self.epoch:
            self._batches = None
        self.epoch = epoch
        self.start = start

    def global_batches(self) -> list[list[int]]:
        """The global batches still to come in this epoch, in order."""
        return self.batches[self.start :]

    def shard(self, batch: list[int]) -> list[int]:
        """This rank's utterances of a global batch."""
        return batch[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        for batch in self.global_batches():
            yield [(index, self.epoch, batch[0]) for index in self.shard(batch)]

    def __len__(self) -> int:
        return max(0, len(self.batches) - self.start)


def _worker_init(_worker_id: int) -> None:
    torch.set_num_threads(1)  # the main process owns the cores for the model


def make_loader(dataset: SpeechDataset, batches: Iterable[list], num_workers: int, epoch: int | None = None,
                pin_memory: bool = False, persistent_workers: bool = False) -> torch.utils.data.DataLoader:
    """Batches of ``dataset`` as padded Batch objects, read by ``num_workers`` forked processes
    (0: in this process).

    batches: lists of dataset indices, in the order given; or a :class:`SortaGradSampler`,
        whose items carry the epoch. ``epoch`` (of training, with a plain list) seeds the
        augmentation of a dataset that has an augmenter.
    pin_memory: hand out batches in page-locked memory (for copies to a GPU that do not wait).
    persistent_workers: keep the workers between passes over the loader, so an epoch (or a
        dev evaluation) does not fork new ones from a process that by then holds CUDA and
        busy thread pools; a SortaGradSampler's ``set_epoch`` is read at each new pass.
    """
    if epoch is not None and dataset.augmenter is not None and not isinstance(batches, SortaGradSampler):
        batches = [[(index, epoch, batch[0]) for index in batch] for batch in batches]
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=batches,
        collate_fn=collate,
        num_workers=num_workers,
        worker_init_fn=_worker_init if num_workers else None,
        multiprocessing_context="fork" if num_workers else None,
        pin_memory=pin_memory,
        persistent_workers=persistent_workers and num_workers > 0,
    )
