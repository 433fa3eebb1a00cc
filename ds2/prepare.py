"""Manifests from corpora on disk, with every entry checked before training sees it.

- :func:`prepare_librispeech`: ``speaker/chapter/*.flac`` beside ``speaker-chapter.trans.txt``.
- :func:`prepare_folder`: any audio file beside a same-name ``.txt`` transcript.

Each candidate is read in full (corrupt, empty, NaN audio is caught here, not in epoch 7),
its transcript normalized and checked against the alphabet. Good entries go to the
manifest; bad ones go, with a ``reason``, to a rejects manifest beside it, and a warning
names the file. Nothing is dropped silently.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ds2 import audio
from ds2.data import write_manifest
from ds2.io import process_map
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
    tasks = [(c, alphabet) for c in candidates]
    results = list(process_map(_check_task, tasks, jobs, chunksize=16, progress=progress, desc="check", unit="file"))
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


def _read_text(path: Path) -> tuple[str | None, str | None]:
    """(text, problem) of a transcript file."""
    try:
        return path.read_bytes().decode("utf-8-sig"), None  # -sig: a BOM is not text
    except UnicodeDecodeError as err:
        return None, f"{path}: transcript is not UTF-8 (byte {err.start})"
    except OSError as err:
        return None, f"{path}: cannot read transcript ({err.strerror})"


class FileTree:
    """The files under a folder, collected once; entries that cannot be read become rejects.

    Symlinked folders are followed, each real folder once (a symlink loop ends there);
    unreadable folders and paths that cannot be resolved (a symlink pointing at itself)
    are reported as candidates with a problem instead of stopping the command.
    """

    def __init__(self, root: Path):
        self.root = root
        self.files: list[Path] = []
        self.problems: list[Candidate] = []
        seen: set[tuple[int, int]] = set()

        def unreadable(error: OSError) -> None:
            where = error.filename or str(root)
            self.problems.append(Candidate(str(where), None, str(where), f"{where}: cannot read folder ({error.strerror})"))

        for folder, subfolders, names in os.walk(root, followlinks=True, onerror=unreadable):
            try:
                status = os.stat(folder)
            except OSError as error:
                unreadable(error)
                subfolders[:] = []
                continue
            if (status.st_dev, status.st_ino) in seen:  # reached again through a symlink
                subfolders[:] = []
                continue
            seen.add((status.st_dev, status.st_ino))
            subfolders.sort()
            self.files.extend(Path(folder) / name for name in names)
        self.files.sort()

    def audio_files(self) -> list[Path]:
        return [path for path in self.files if path.suffix.lower() in AUDIO_EXTENSIONS]

    def ending_with(self, suffix: str) -> list[Path]:
        return [path for path in self.files if path.name.endswith(suffix)]


def _absolute(path: Path) -> tuple[str, str | None]:
    """(the resolved path, None), or (the path as found, problem) when it cannot be resolved."""
    try:
        return str(path.resolve()), None
    except (OSError, RuntimeError) as error:  # RuntimeError: a symlink loop, in Python 3.11
        return str(path), f"{path}: cannot resolve the path ({error})"


def librispeech_candidates(root: str | Path) -> list[Candidate]:
    """Candidates of a LibriSpeech-style tree (any depth above speaker/chapter)."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root}: not a directory")
    tree = FileTree(root)
    candidates = list(tree.problems)
    for transcript in tree.ending_with(".trans.txt"):
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
            resolved, problem = _absolute(audio_path)
            if problem is None and not audio_path.exists():
                problem = f"{source}: audio file {audio_path} not found"
            candidates.append(Candidate(resolved, text, source, problem))
    if len(candidates) == len(tree.problems):
        raise ValueError(f"{root}: no *.trans.txt transcripts found (expected speaker/chapter/*.trans.txt)")
    # Audio no transcript line names is rejected too, unless its folder's transcript could
    # not be read at all (that reject already covers it).
    listed = {candidate.audio_filepath for candidate in candidates}
    unreadable = {Path(candidate.source).parent for candidate in candidates if candidate.text is None}
    for path in tree.audio_files():
        resolved, problem = _absolute(path)
        if resolved not in listed and path.parent not in unreadable:
            candidates.append(Candidate(resolved, None, str(path), problem or f"{path}: no line for it in a *.trans.txt"))
    return candidates


def folder_candidates(root: str | Path) -> list[Candidate]:
    """Candidates of a folder tree of audio files beside same-name .txt transcripts."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root}: not a directory")
    tree = FileTree(root)
    candidates = list(tree.problems)
    audio_stems = set()
    for path in tree.audio_files():
        audio_stems.add(path.with_suffix(""))
        resolved, problem = _absolute(path)
        transcript = path.with_suffix(".txt")
        if problem:
            candidates.append(Candidate(resolved, None, str(path), problem))
        elif not transcript.exists():
            candidates.append(Candidate(resolved, None, str(path), f"{path}: no transcript {transcript.name} beside it"))
        else:
            text, problem = _read_text(transcript)
            candidates.append(Candidate(resolved, text, str(transcript), problem))
    for transcript in tree.ending_with(".txt"):
        if transcript.with_suffix("") not in audio_stems:
            resolved, _ = _absolute(transcript.with_suffix(".wav"))
            candidates.append(
                Candidate(resolved, None, str(transcript), f"{transcript}: no audio file beside this transcript")
            )
    if len(candidates) == len(tree.problems):
        raise ValueError(f"{root}: no audio files ({', '.join(AUDIO_EXTENSIONS)}) found")
    return candidates


def prepare_librispeech(root, manifest, alphabet: Alphabet | None = Alphabet(), jobs: int = 1, progress: bool = True) -> PrepareResult:
    return write_checked(librispeech_candidates(root), manifest, alphabet, jobs, progress)


def prepare_folder(root, manifest, alphabet: Alphabet | None = Alphabet(), jobs: int = 1, progress: bool = True) -> PrepareResult:
    return write_checked(folder_candidates(root), manifest, alphabet, jobs, progress)
