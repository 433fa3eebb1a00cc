"""Manifests from corpora on disk, with every entry checked before training sees it.

- :func:`prepare_librispeech`: ``speaker/chapter/*.flac`` beside ``speaker-chapter.trans.txt``.
- :func:`prepare_folder`: any audio file beside a same-name ``.txt`` transcript.
- :func:`prepare_commonvoice`: a Common Voice language folder (``clips/*.mp3``, ``train.tsv``,
  ``dev.tsv``, ``test.tsv``); the clips are converted once to 16 kHz FLAC and the alphabet is
  that of the training sentences, in any language.

Each candidate is read in full (corrupt, empty, NaN audio is caught here, not in epoch 7),
its transcript normalized and checked against the alphabet. Good entries go to the
manifest; bad ones go, with a ``reason``, to a rejects manifest beside it, and a warning
names the file. Nothing is dropped silently.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile

from ds2 import audio
from ds2.data import read_manifest, write_manifest
from ds2.io import atomic_write, process_map
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
    converted: str | None = None  # write the checked 16 kHz audio here; the manifest points to it
    speaker: str | None = None  # kept in the manifest as ``speaker`` when known


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
        if candidate.converted and Path(candidate.converted).exists():  # converted by an earlier, stopped run
            waveform = audio.load_audio(candidate.converted)
        else:
            waveform = audio.load_audio(candidate.audio_filepath)
            if candidate.converted:
                _write_converted(waveform, Path(candidate.converted))
    except (ValueError, audio.AudioError) as err:
        return {**record, "text": candidate.text or "", "reason": str(err)}
    duration = waveform.numel() / audio.SAMPLE_RATE
    accepted = {"audio_filepath": candidate.converted or candidate.audio_filepath,
                "duration": round(duration, 4), "text": text}
    return accepted if candidate.speaker is None else {**accepted, "speaker": candidate.speaker}


CONVERTED_FORMATS = {"flac": "FLAC", "wav": "WAV"}  # file suffix -> soundfile format


def _write_converted(waveform, path: Path) -> None:
    """Write a waveform (torch.Tensor, shape = (n_samples,), float32 at SAMPLE_RATE) as 16-bit
    audio in the format of ``path``'s suffix, atomically: a file that exists is complete."""
    samples = np.clip(waveform.numpy(), -1.0, 32767 / 32768)  # resampling can overshoot 1
    with atomic_write(path, "wb") as handle:
        soundfile.write(handle, samples, audio.SAMPLE_RATE, format=CONVERTED_FORMATS[path.suffix[1:]], subtype="PCM_16")


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


# --------------------------------------------------------------------------- Common Voice

COMMONVOICE_SPLITS = ("train", "dev", "test")


@dataclass(frozen=True)
class CorpusResult:
    alphabet: Path  # the alphabet the first split was checked against, saved as JSON
    splits: dict[str, PrepareResult]


def commonvoice_candidates(tsv: str | Path, clips: str | Path, converted: str | Path | None = None,
                           audio_format: str = "flac") -> list[Candidate]:
    """Candidates of one Common Voice TSV: a header row, then one clip a line.

    Columns are found by their header name (``path`` and ``sentence`` are needed,
    ``client_id`` becomes ``speaker``), so releases that add or reorder columns read the
    same. Fields are split at tabs only: Common Voice writes no quoting, and a sentence's
    quotation marks are text. ``converted``: a folder for the 16 kHz copies
    (``<clip name>.<audio_format>``); None keeps the clips as they are.
    """
    tsv, clips = Path(tsv), Path(clips)
    converted = None if converted is None else Path(converted).resolve()
    content, problem = _read_text(tsv)
    if problem:
        raise ValueError(problem)
    lines = content.splitlines()
    header = lines[0].split("\t") if lines else []
    missing = [name for name in ("path", "sentence") if name not in header]
    if missing:
        raise ValueError(f"{tsv}: no {' or '.join(repr(name) for name in missing)} column in the header line "
                         f"(found: {', '.join(repr(name) for name in header) or 'an empty file'})")
    candidates, first_line = [], {}
    for line_number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        source = f"{tsv}:{line_number}"
        fields = line.split("\t")
        row = dict(zip(header, fields))
        name = row.get("path", "").strip()
        clip = clips / name if name else tsv
        if len(fields) != len(header):
            problem = f"{source}: {len(fields)} tab-separated fields, the header has {len(header)}"
        elif not name:
            problem = f"{source}: empty 'path' field"
        elif name in first_line:
            problem = f"{source}: clip {name} is already listed on line {first_line[name]}"
        else:
            first_line[name] = line_number
            if not clip.exists() and not clip.suffix and clip.with_suffix(".mp3").exists():
                clip = clip.with_suffix(".mp3")  # the first releases named clips without the suffix
            problem = None if clip.exists() else f"{source}: audio file {clip} not found"
        resolved, path_problem = _absolute(clip)
        target = None
        if converted is not None and problem is None:
            target = str(converted / f"{Path(name).stem}.{audio_format}")
        candidates.append(Candidate(resolved, row.get("sentence", ""), source, problem or path_problem, target,
                                    row.get("client_id") or None))
    return candidates


def prepare_commonvoice(
    root: str | Path,
    out_dir: str | Path,
    splits: Sequence[str] = COMMONVOICE_SPLITS,
    alphabet: Alphabet | None = None,
    min_char_count: int = 1,
    audio_format: str | None = "flac",
    jobs: int = 1,
    progress: bool = True,
) -> CorpusResult:
    """Manifests ``OUT_DIR/<split>.json`` of a Common Voice language folder (``ROOT/<split>.tsv``,
    ``ROOT/clips``), each with its rejects, and ``OUT_DIR/alphabet.json``.

    The first split (train) is checked against ``alphabet``, by default the characters of its
    own normalized sentences seen at least ``min_char_count`` times (letters of any script,
    accented ones included, digits, apostrophes; punctuation removed). The other splits are
    kept whole, as Common Voice published them: a sentence with a character outside the
    alphabet stays, and a warning counts such sentences (the model cannot spell them; they
    score as errors). ``audio_format`` "flac" or "wav": every clip is decoded once, resampled to
    16 kHz and written to ``OUT_DIR/clips``, so training never decodes mp3 (a 6 s clip: 8.5 ms
    to read and resample the 48 kHz mp3, 2 ms the FLAC); an existing copy is reused, so a
    stopped run resumes. None: the manifests point to the original clips.
    """
    root, out_dir = Path(root), Path(out_dir)
    if not root.is_dir():
        raise ValueError(f"{root}: not a directory")
    if audio_format is not None and audio_format not in CONVERTED_FORMATS:
        raise ValueError(f"audio format must be {' or '.join(CONVERTED_FORMATS)} (or none: keep the clips), "
                         f"got {audio_format!r}")
    if not splits:
        raise ValueError("no splits to prepare")
    for split in splits:
        if not (root / f"{split}.tsv").is_file():
            raise ValueError(f"{root / f'{split}.tsv'}: not found (a Common Voice language folder has "
                             f"train.tsv, dev.tsv, test.tsv and clips/)")
    converted = out_dir / "clips" if audio_format else None
    candidates = {split: commonvoice_candidates(root / f"{split}.tsv", root / "clips", converted, audio_format or "flac")
                  for split in splits}
    if alphabet is None:
        texts = [c.text for c in candidates[splits[0]] if c.problem is None and c.text]
        try:
            alphabet = Alphabet.from_texts(texts, min_char_count)
        except ValueError:
            raise ValueError(f"{root / f'{splits[0]}.tsv'}: no sentence to take an alphabet from "
                             f"({len(texts)} usable rows)") from None
    out_dir.mkdir(parents=True, exist_ok=True)
    alphabet_path = out_dir / "alphabet.json"
    alphabet.save(alphabet_path)
    log.info("%s: %d symbols: %s", alphabet_path, len(alphabet.symbols), "".join(alphabet.symbols))
    results = {}
    for i, split in enumerate(splits):
        results[split] = write_checked(candidates[split], out_dir / f"{split}.json", alphabet if i == 0 else None,
                                       jobs, progress)
        if i:
            _warn_outside(results[split].manifest, alphabet)
    _warn_shared_speakers(candidates)
    return CorpusResult(alphabet_path, results)


def _warn_outside(manifest: Path, alphabet: Alphabet) -> None:
    """Count the sentences of a kept split that the alphabet cannot spell."""
    symbols = set(alphabet.symbols)
    unknown, sentences = Counter(), 0
    for record in read_manifest(manifest, resolve_paths=False):
        outside = set(record["text"]) - symbols
        sentences += bool(outside)
        unknown.update(outside)
    if sentences:
        shown = ", ".join(f"{char!r} ({count})" for char, count in unknown.most_common(10))
        log.warning("%s: %d sentences (kept) have characters outside the training alphabet: %s", manifest, sentences,
                    shown)


def _warn_shared_speakers(candidates: dict[str, list[Candidate]]) -> None:
    """Common Voice's official splits have no speaker in two splits; say so if these do."""
    speakers = {split: {c.speaker for c in found if c.speaker} for split, found in candidates.items()}
    names = list(speakers)
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            shared = speakers[first] & speakers[second]
            if shared:
                log.warning("speakers (client_id) in both %s and %s: %d; %s does not measure unseen speakers",
                            first, second, len(shared), second)
