"""Manifests from corpora on disk, with every entry checked before training sees it.

- :func:`prepare_librispeech`: ``speaker/chapter/*.flac`` beside ``speaker-chapter.trans.txt``.
- :func:`prepare_folder`: any audio file beside a same-name ``.txt`` transcript.

Each candidate is read in full (corrupt, empty, NaN audio is caught here, not in epoch 7),
its transcript normalized and checked against the alphabet. Good entries go to the
manifest; bad ones go, with a ``reason``, to a rejects manifest beside it, and a warning
names the file. Nothing is dropped silently.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from ds2 import audio
from ds2.data import write_manifest
from ds2.text import Alphabet

log = logging.getLogger("ds2.prepare")

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".opus", ".mp3", ".aiff", ".aif", ".au", ".sph")


@dataclass(frozen=True)
class Candidate:
    """An utterance found on disk, before checking. ``text`` is None if unreadable."""

    audio_filepath: str
    text: str | None
    source: str  # where the transcript came from (file or file:line), for messages
    problem: str | None = None  # a problem found while collecting (e.g. non-UTF-8 text)


@dataclass(frozen=True)
class PrepareResult:
    manifest: Path
    rejects: Path
    n_accepted: int
    n_rejected: int
    hours: float


def rejects_path(manifest: str | Path) -> Path:
    """``train.json`` -> ``train.rejects.json`` beside it."""
    manifest = Path(manifest)
    return manifest.with_name(manifest.stem + ".rejects" + (manifest.suffix or ".json"))


def check_candidate(candidate: Candidate, alphabet: Alphabet | None) -> dict:
    """A manifest record for a good candidate, or a record with ``reason`` for a bad one."""
    record = {"audio_filepath": candidate.audio_filepath}
    if candidate.problem:
        return {**record, "text": candidate.text or "", "reason": candidate.problem}
    try:
        text = Alphabet.normalize(candidate.text or "")
        if not text:
            raise ValueError(f"{candidate.source}: empty transcript")
        if alphabet is not None:
            try:
                alphabet.encode(text)
            except ValueError as err:
                raise ValueError(f"{candidate.source}: {err}") from None
        waveform = audio.load_audio(candidate.audio_filepath)
    except (ValueError, audio.AudioError) as err:
        return {**record, "text": candidate.text or "", "reason": str(err)}
    duration = waveform.numel() / audio.SAMPLE_RATE
    return {**record, "duration": round(duration, 4), "text": text}


def write_checked(
    candidates: Iterable[Candidate],
    manifest: str | Path,
    alphabet: Alphabet | None = Alphabet(),
    jobs: int = 1,
    progress: bool = True,
) -> PrepareResult:
    """Check candidates (in ``jobs`` forked processes) and write the manifest and rejects."""
    candidates = list(candidates)
    tasks = [(c, alphabet) for c in candidates]
    with contextlib.ExitStack() as stack:
        if jobs > 1:
            pool = stack.enter_context(multiprocessing.get_context("fork").Pool(jobs, initializer=_init_worker))
            checked = pool.imap(_check_task, tasks, chunksize=16)  # keeps the order of candidates
        else:
            checked = map(_check_task, tasks)
        results = list(tqdm(checked, total=len(tasks), disable=not progress, desc="check", unit="file"))
    accepted = [r for r in results if "reason" not in r]
    rejected = [r for r in results if "reason" in r]
    for record in rejected:
        log.warning("rejected: %s", record["reason"])
    manifest = Path(manifest)
    rejects = rejects_path(manifest)
    write_manifest(manifest, accepted)
    write_manifest(rejects, rejected)
    hours = sum(r["duration"] for r in accepted) / 3600
    log.info("%s: %d utterances (%.2f h); %d rejected -> %s", manifest, len(accepted), hours, len(rejected), rejects)
    return PrepareResult(manifest, rejects, len(accepted), len(rejected), hours)


def _check_task(task: tuple[Candidate, Alphabet | None]) -> dict:
    return check_candidate(*task)


def _init_worker() -> None:
    # One process per core already. Also, OpenMP thread pools are not safe after a fork:
    # a child that inherits a pool the parent used (e.g. for resampling) can hang in its
    # first parallel op unless it stays single-threaded.
    torch.set_num_threads(1)


def _read_text(path: Path) -> tuple[str | None, str | None]:
    """(text, problem) of a transcript file."""
    try:
        return path.read_bytes().decode("utf-8-sig"), None  # -sig: a BOM is not text
    except UnicodeDecodeError as err:
        return None, f"{path}: transcript is not UTF-8 (byte {err.start})"
    except OSError as err:
        return None, f"{path}: cannot read transcript ({err.strerror})"


def librispeech_candidates(root: str | Path) -> list[Candidate]:
    """Candidates of a LibriSpeech-style tree (any depth above speaker/chapter)."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root}: not a directory")
    candidates = []
    for transcript in sorted(root.rglob("*.trans.txt")):
        content, problem = _read_text(transcript)
        if problem:
            candidates.append(Candidate(str(transcript), None, str(transcript), problem))
            continue
        for line_number, line in enumerate(content.splitlines(), start=1):
            if not line.strip():
                continue
            utterance_id, _, text = line.strip().partition(" ")
            source = f"{transcript}:{line_number}"
            matches = [transcript.parent / f"{utterance_id}{ext}" for ext in AUDIO_EXTENSIONS]
            audio_path = next((p for p in matches if p.exists()), matches[1])  # default: .flac
            problem = None if audio_path.exists() else f"{source}: audio file {audio_path} not found"
            candidates.append(Candidate(str(audio_path.resolve()), text, source, problem))
    if not candidates:
        raise ValueError(f"{root}: no *.trans.txt transcripts found (expected speaker/chapter/*.trans.txt)")
    # Audio no transcript line names is rejected too, unless its folder's transcript could
    # not be read at all (that reject already covers it).
    listed = {candidate.audio_filepath for candidate in candidates}
    unreadable = {Path(candidate.source).parent for candidate in candidates if candidate.text is None}
    for path in _audio_files(root):
        if str(path.resolve()) not in listed and path.parent not in unreadable:
            candidates.append(Candidate(str(path.resolve()), None, str(path), f"{path}: no line for it in a *.trans.txt"))
    return candidates


def _audio_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file())


def folder_candidates(root: str | Path) -> list[Candidate]:
    """Candidates of a folder tree of audio files beside same-name .txt transcripts."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root}: not a directory")
    candidates = []
    audio_stems = set()
    for path in _audio_files(root):
        audio_stems.add(path.with_suffix(""))
        transcript = path.with_suffix(".txt")
        if not transcript.exists():
            candidates.append(Candidate(str(path.resolve()), None, str(path), f"{path}: no transcript {transcript.name} beside it"))
            continue
        text, problem = _read_text(transcript)
        candidates.append(Candidate(str(path.resolve()), text, str(transcript), problem))
    for transcript in sorted(root.rglob("*.txt")):
        if transcript.with_suffix("") not in audio_stems:
            candidates.append(
                Candidate(str(transcript.with_suffix(".wav").resolve()), None, str(transcript),
                          f"{transcript}: no audio file beside this transcript")
            )
    if not candidates:
        raise ValueError(f"{root}: no audio files ({', '.join(AUDIO_EXTENSIONS)}) found")
    return candidates


def prepare_librispeech(root, manifest, alphabet: Alphabet | None = Alphabet(), jobs: int = 1, progress: bool = True) -> PrepareResult:
    return write_checked(librispeech_candidates(root), manifest, alphabet, jobs, progress)


def prepare_folder(root, manifest, alphabet: Alphabet | None = Alphabet(), jobs: int = 1, progress: bool = True) -> PrepareResult:
    return write_checked(folder_candidates(root), manifest, alphabet, jobs, progress)
