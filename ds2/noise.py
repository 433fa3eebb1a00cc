"""Noise and room impulse responses for augmentation, and noisy copies of test sets.

    ds2 prepare noise data/noise [--from /data/musan]   # generated noises (+ collections on disk)
    ds2 prepare rirs data/rirs [--from /data/my_irs]     # simulated rooms (+ measured responses)
    ds2 prepare noisy data/test.json data/test_snr5 --noise data/noise/test.json --snr 5

Each writes ``train.json`` and ``test.json`` (JSON lines: audio_filepath, duration, kind,
split, source, ...) and ``split.json`` (what went where and how it was decided): the noises
and rooms of the test manifests are never used in training. Generated noise is white, pink,
brown, mains hum, and babble made by eSpeak voices that are in neither the speech training
voices nor the dev/test voices (:data:`BABBLE_VOICES`; the test babble has voices of its
own). Rooms are simulated with pyroomacoustics (image source method, shoebox rooms with a
reverberation time drawn from a range); train and test rooms are different rooms.

A collection on disk is split per kind by a hash of each file's path below its root (the
same files always go to the same side); the MUSAN layout (noise/, music/, speech/) gives
the kinds, any other folder tree is all "noise". Files that cannot be read go to
``rejects.json`` with the reason.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile
from tqdm import tqdm

from ds2 import audio, espeak, grammar
from ds2.augment import ClipBank, mix_at_snr, read_clip, reverberate
from ds2.config import ConfigError, check, check_ranges, option, parse_floats, parse_strs, show_floats, show_strs
from ds2.data import read_manifest, write_manifest
from ds2.io import atomic_write
from ds2.prepare import FileTree

log = logging.getLogger(__name__)

GENERATED_KINDS = ("white", "pink", "brown", "hum", "babble")
MUSAN_KINDS = ("noise", "music", "speech")
LEVEL = 0.1  # RMS of generated clips (-20 dBFS); the SNR sets the level in use

# eSpeak variants in no voice of ds2.synth.ENGLISH_VOICES (train or held out), so babble never
# holds a speaker the model is trained or tested on; train and test babble share none.
BABBLE_VOICES = {
    "train": ("en-us+quincy", "en-us+rob", "en-us+zac", "en-us+norbert", "en+belinda", "en-gb-x-rp+m8",
              "en-us+edward", "en+mike2"),
    "test": ("en-us+Lee", "en-us+shelby", "en+travis", "en-gb-x-rp+aunty", "en-us+benjamin"),
}


@dataclass(frozen=True)
class NoiseOptions:
    """What `ds2 prepare noise` makes."""

    kinds: tuple[str, ...] = option(GENERATED_KINDS, "Kinds of noise to generate (empty: none, only --from).",
                                    parse=parse_strs, show=show_strs)
    train_clips: int = option(8, "Generated training clips per kind.", min=0)
    test_clips: int = option(4, "Generated test clips per kind.", min=0)
    clip_seconds: float = option(20.0, "Length of a generated clip (s).", above=0)
    babble_speakers: tuple[float, ...] = option((3, 7), "Fewest and most voices talking at once in babble.",
                                                parse=parse_floats, show=show_floats, each_min=1)
    test_share: float = option(0.25, "Share of each kind of a collection on disk kept for testing.", min=0, max=1)
    seed: int = option(0, "Random seed.")

    def __post_init__(self):
        check(self)
        unknown = sorted(set(self.kinds) - set(GENERATED_KINDS))
        if unknown:
            raise ConfigError(f"--kinds: unknown {', '.join(unknown)}; known: {', '.join(GENERATED_KINDS)}")
        check_ranges(self, "babble_speakers")


@dataclass(frozen=True)
class RirOptions:
    """What `ds2 prepare rirs` makes."""

    train_rooms: int = option(40, "Simulated training rooms.", min=0)
    test_rooms: int = option(10, "Simulated test rooms (other rooms than training's).", min=0)
    rt60: tuple[float, ...] = option((0.2, 0.8), "Reverberation time range (s), LOW,HIGH.",
                                     parse=parse_floats, show=show_floats, each_min=0.05)
    test_share: float = option(0.25, "Share of the responses on disk kept for testing.", min=0, max=1)
    seed: int = option(0, "Random seed.")

    def __post_init__(self):
        check(self)
        check_ranges(self, "rt60")


# --------------------------------------------------------------------------- generated noise


def colored_noise(n_samples: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Noise with power spectral density proportional to 1/f**exponent (0 white, 1 pink,
    2 brown), nothing below 20 Hz, at RMS :data:`LEVEL`."""
    spectrum = np.fft.rfft(rng.standard_normal(n_samples))
    freqs = np.fft.rfftfreq(n_samples, 1 / audio.SAMPLE_RATE)
    gain = np.zeros_like(freqs)
    audible = freqs >= 20
    gain[audible] = freqs[audible] ** (-exponent / 2)
    return _level(np.fft.irfft(spectrum * gain, n_samples))


def hum(n_samples: int, rng: np.random.Generator) -> np.ndarray:
    """Mains hum: 50 or 60 Hz and its harmonics (odd ones stronger, as from a transformer),
    a slow wobble of the amplitude, and a little hiss."""
    t = np.arange(n_samples) / audio.SAMPLE_RATE
    mains = 50.0 if rng.random() < 0.5 else 60.0
    signal = np.zeros(n_samples)
    for harmonic in range(1, 16):
        amplitude = rng.uniform(0.2, 1.0) / harmonic ** rng.uniform(0.5, 1.5) * (1.0 if harmonic % 2 else 0.4)
        signal += amplitude * np.sin(2 * np.pi * mains * harmonic * t + rng.uniform(0, 2 * np.pi))
    signal *= 1 + 0.2 * np.sin(2 * np.pi * rng.uniform(0.1, 1.0) * t)
    signal = _level(signal)
    return _level(signal + 0.05 * colored_noise(n_samples, 0.0, rng))


def babble(n_samples: int, voices: tuple[str, ...], speakers: tuple[float, float], rng: np.random.Generator) -> np.ndarray:
    """Several voices talking at once, each reading grammar sentences with short pauses."""
    n_speakers = int(rng.integers(int(speakers[0]), int(speakers[1]) + 1))
    mixed = np.zeros(n_samples)
    sentence_rng = random.Random(int(rng.integers(2**31)))
    for _ in range(n_speakers):
        voice = voices[int(rng.integers(len(voices)))]
        rate, pitch = int(rng.integers(140, 200)), int(rng.integers(30, 71))
        pieces, length = [], 0
        while length < n_samples:
            sentence = grammar.generate_sentences(1, sentence_rng, 4, 14)[0]
            speech = espeak.synthesize(grammar.spoken_form(sentence), voice, rate, pitch).numpy()
            pause = np.zeros(int(rng.uniform(0.05, 0.4) * audio.SAMPLE_RATE))
            pieces += [speech, pause]
            length += len(speech) + len(pause)
        stream = np.roll(np.concatenate(pieces)[:n_samples], int(rng.integers(n_samples)))
        mixed += stream / max(np.sqrt(np.mean(stream ** 2)), 1e-9)
    return _level(mixed)


def _level(signal: np.ndarray) -> np.ndarray:
    rms = np.sqrt(np.mean(signal ** 2))
    return np.clip(signal * (LEVEL / max(rms, 1e-12)), -0.99, 0.99).astype(np.float32)


def generate_clip(kind: str, split: str, index: int, options: NoiseOptions) -> np.ndarray:
    """One generated clip; the same (kind, split, index, seed) always gives the same samples."""
    rng = np.random.default_rng([options.seed & 0xFFFFFFFF, GENERATED_KINDS.index(kind), ("train", "test").index(split), index])
    n_samples = int(options.clip_seconds * audio.SAMPLE_RATE)
    if kind == "babble":
        return babble(n_samples, BABBLE_VOICES[split], options.babble_speakers, rng)
    if kind == "hum":
        return hum(n_samples, rng)
    return colored_noise(n_samples, {"white": 0.0, "pink": 1.0, "brown": 2.0}[kind], rng)


def write_wav(path: Path, samples: np.ndarray, subtype: str = "PCM_16") -> None:
    """A 16 kHz mono wav, written atomically."""
    with atomic_write(path, "wb") as handle:
        soundfile.write(handle, samples, audio.SAMPLE_RATE, subtype=subtype, format="WAV")


# --------------------------------------------------------------------------- collections on disk


def _hash_share(relative: str) -> float:
    """A number in [0, 1) fixed by the path: the split does not depend on listing order."""
    return int(hashlib.sha1(relative.encode("utf-8")).hexdigest()[:12], 16) / 16**12


def scan_collection(root: str | Path, test_share: float, musan_kinds: tuple[str, ...] = MUSAN_KINDS
                    ) -> tuple[list[dict], list[dict]]:
    """(records, rejects) of the audio files under ``root``, each record with kind, split and source.

    In each kind the files whose path hash falls lowest go to test, ``ceil(share * n)`` of
    them (none when a kind has a single file: it stays in training).
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root}: not a folder")
    tree = FileTree(root)
    top = {p.name for p in root.iterdir() if p.is_dir()}
    musan = bool(top & set(musan_kinds))
    records, rejects = [], [{"audio_filepath": c.audio_filepath, "reason": c.problem} for c in tree.problems]
    for path in tree.audio_files():
        relative = path.relative_to(root).as_posix()
        kind = relative.split("/")[0] if musan and "/" in relative else "noise"
        try:
            duration, _, _ = audio.audio_info(path)
        except audio.AudioError as err:
            rejects.append({"audio_filepath": str(path), "reason": str(err)})
            continue
        if duration <= 0:
            rejects.append({"audio_filepath": str(path), "reason": f"{path}: no audio samples"})
            continue
        records.append({"audio_filepath": str(path.resolve()), "duration": round(duration, 4), "kind": kind,
                        "source": str(root), "_hash": _hash_share(relative)})
    for kind in {r["kind"] for r in records}:
        group = sorted((r for r in records if r["kind"] == kind), key=lambda r: r["_hash"])
        n_test = math.ceil(test_share * len(group)) if len(group) > 1 else 0
        for position, record in enumerate(group):
            record["split"] = "test" if position < n_test else "train"
    for record in records:
        del record["_hash"]
    return records, rejects


def _write_split(out_dir: Path, records: list[dict], rejects: list[dict], summary: dict) -> dict[str, Path]:
    paths = {}
    for split in ("train", "test"):
        paths[split] = out_dir / f"{split}.json"
        write_manifest(paths[split], [r for r in records if r["split"] == split])
    write_manifest(out_dir / "rejects.json", rejects)
    for record in rejects:
        log.warning("rejected: %s", record["reason"])
    kinds = {}
    for record in records:
        entry = kinds.setdefault(record["kind"], {"train": 0, "test": 0, "train_seconds": 0.0, "test_seconds": 0.0})
        entry[record["split"]] += 1
        entry[record["split"] + "_seconds"] = round(entry[record["split"] + "_seconds"] + record["duration"], 2)
    summary = {**summary, "kinds": kinds, "rejected": len(rejects)}
    with atomic_write(out_dir / "split.json") as handle:
        json.dump(summary, handle, indent=2)
        handle.write("\n")
    if not any(r["split"] == "train" for r in records):
        raise ValueError(f"{out_dir}: no training clips were made or found (see rejects.json)")
    return paths


def prepare_noise(out_dir: str | Path, options: NoiseOptions = NoiseOptions(), collections: list[str | Path] = (),
                  progress: bool = True) -> dict[str, Path]:
    """Generate noise and/or index collections on disk; write train.json, test.json,
    rejects.json and split.json in ``out_dir``. Returns the manifest paths."""
    out_dir = Path(out_dir)
    if not options.kinds and not collections:
        raise ValueError("nothing to do: no kinds to generate and no --from collection")
    records, rejects = [], []
    jobs = [(kind, split, i) for kind in options.kinds for split, n in (("train", options.train_clips),
                                                                      ("test", options.test_clips)) for i in range(n)]
    for kind, split, index in tqdm(jobs, disable=not progress, desc="noise", unit="clip", dynamic_ncols=True):
        path = out_dir / "wav" / split / f"{kind}_{index:03d}.wav"
        if not path.exists():  # clips are deterministic: a re-run keeps what an interrupted one wrote
            write_wav(path, generate_clip(kind, split, index, options))
        records.append({"audio_filepath": str(path.resolve()), "duration": options.clip_seconds, "kind": kind,
                        "split": split, "source": "generated"})
    for root in collections:
        found, bad = scan_collection(root, options.test_share)
        records += found
        rejects += bad
    summary = {"options": asdict(options), "collections": [str(c) for c in collections],
               "babble_voices": {s: list(v) for s, v in BABBLE_VOICES.items()} if "babble" in options.kinds else None,
               "rule": "generated: separate clips (own seeds; own babble voices) for train and test; "
                       "collections: per kind, the test_share of files with the lowest path hash go to test"}
    return _write_split(out_dir, records, rejects, summary)


# --------------------------------------------------------------------------- rooms


def simulate_room(rng: np.random.Generator, rt60: tuple[float, float]) -> tuple[np.ndarray, dict]:
    """The impulse response from a talker to a microphone in a random shoebox room, and the
    room's description. Image source method (pyroomacoustics), reverberation time drawn
    uniformly from ``rt60`` and reached through Sabine's formula."""
    import pyroomacoustics as pra  # a prepare-time dependency only: training reads the wav files

    dims = np.array([rng.uniform(3, 10), rng.uniform(3, 8), rng.uniform(2.4, 4)])
    target = float(rng.uniform(*rt60))
    try:
        absorption, max_order = pra.inverse_sabine(target, dims)
    except ValueError:  # a reverberation time this room cannot have: the most absorbing walls
        absorption, max_order = 0.99, 2
    room = pra.ShoeBox(dims, fs=audio.SAMPLE_RATE, materials=pra.Material(absorption), max_order=min(max_order, 60))

    def inside(height: tuple[float, float]) -> np.ndarray:
        return np.array([rng.uniform(0.5, dims[0] - 0.5), rng.uniform(0.5, dims[1] - 0.5), rng.uniform(*height)])

    source = inside((1.2, 1.9))
    mic = inside((0.8, 1.6))
    for _ in range(20):  # at least half a metre apart
        if np.linalg.norm(source - mic) >= 0.5:
            break
        mic = inside((0.8, 1.6))
    room.add_source(source.tolist())
    room.add_microphone(mic.tolist())
    room.compute_rir()
    rir = np.asarray(room.rir[0][0], dtype=np.float64)
    rir = (rir / np.abs(rir).max()).astype(np.float32)
    info = {"room_m": [round(float(d), 2) for d in dims], "rt60_target": round(target, 3),
            "distance_m": round(float(np.linalg.norm(source - mic)), 2)}
    return rir, info


def prepare_rirs(out_dir: str | Path, options: RirOptions = RirOptions(), collections: list[str | Path] = (),
                 progress: bool = True) -> dict[str, Path]:
    """Simulate rooms and/or index measured responses on disk; writes like :func:`prepare_noise`."""
    out_dir = Path(out_dir)
    if not options.train_rooms + options.test_rooms and not collections:
        raise ValueError("nothing to do: no rooms to simulate and no --from collection")
    records, rejects = [], []
    jobs = [("train", i) for i in range(options.train_rooms)] + [("test", i) for i in range(options.test_rooms)]
    for split, index in tqdm(jobs, disable=not progress, desc="rooms", unit="room", dynamic_ncols=True):
        rng = np.random.default_rng([options.seed & 0xFFFFFFFF, ("train", "test").index(split), index])
        rir, info = simulate_room(rng, options.rt60)
        path = out_dir / "wav" / split / f"room_{index:03d}.wav"
        write_wav(path, rir, subtype="FLOAT")
        records.append({"audio_filepath": str(path.resolve()), "duration": round(len(rir) / audio.SAMPLE_RATE, 4),
                        "kind": "simulated", "split": split, "source": "pyroomacoustics", **info})
    for root in collections:
        found, bad = scan_collection(root, options.test_share, musan_kinds=())
        for record in found:
            record["kind"] = "measured"
        records += found
        rejects += bad
    summary = {"options": asdict(options), "collections": [str(c) for c in collections],
               "rule": "simulated: train and test rooms drawn separately (own seeds); collections: the "
                       "test_share of files with the lowest path hash go to test"}
    return _write_split(out_dir, records, rejects, summary)


# --------------------------------------------------------------------------- noisy test sets


def make_noisy_set(manifest: str | Path, out_dir: str | Path, noise: str | Path | None = None,
                   snr: float | None = None, rir: str | Path | None = None, seed: int = 0,
                   progress: bool = True) -> tuple[Path, int, int]:
    """Write a corrupted copy of every utterance of ``manifest`` (reverberated with ``rir``
    responses, then mixed with one ``noise`` clip at ``snr`` dB) as audio in
    ``out_dir``/wav and a manifest ``out_dir``.json beside it, so every model is scored
    on the same files. Utterance i always gets the same clip, offset and response.

    Returns (manifest path, utterances written, utterances rejected (rejects manifest)).
    """
    if noise is None and rir is None:
        raise ValueError("give a noise manifest (with an SNR), an impulse response manifest, or both")
    if noise is not None and snr is None:
        raise ValueError("--snr is needed with --noise")
    out_dir = Path(out_dir)
    noises = ClipBank(noise, "noise") if noise is not None else None
    rirs = ClipBank(rir, "impulse response") if rir is not None else None
    records, rejects = [], []
    source = list(read_manifest(manifest))
    for index, record in enumerate(tqdm(source, disable=not progress, desc=out_dir.name, unit="utt", dynamic_ncols=True)):
        rng = np.random.default_rng([seed & 0xFFFFFFFF, index])
        where = f"{manifest}:{record['line']}"
        try:
            speech = audio.load_audio(record["audio_filepath"], offset=record.get("offset", 0.0),
                                      duration=record["duration"] if "offset" in record else None).numpy()
            added = {}
            if rirs is not None:
                path, _ = rirs.pick(rng)
                speech = reverberate(speech, audio.load_audio(path).numpy())
                added["rir"] = path
            if noises is not None:
                path, duration = noises.pick(rng)
                speech = mix_at_snr(speech, read_clip(path, duration, len(speech), rng), snr)
                added.update(noise=path, snr=snr)
        except (ValueError, audio.AudioError) as err:
            rejects.append({**record, "reason": f"{where}: {err}"})
            continue
        peak = float(np.abs(speech).max())
        if peak > 0.99:  # scale down rather than clip
            speech = speech * (0.99 / peak)
        out = out_dir / "wav" / f"{index:05d}_{Path(record['audio_filepath']).stem}.wav"
        write_wav(out, speech)
        kept = {k: v for k, v in record.items() if k not in ("offset", "line", "audio_filepath", "duration")}
        records.append({"audio_filepath": str(out.resolve()), "duration": round(len(speech) / audio.SAMPLE_RATE, 4),
                        **kept, **added})
    target = out_dir.with_suffix(".json") if out_dir.suffix != ".json" else out_dir
    write_manifest(target, records)
    write_manifest(target.with_name(target.stem + ".rejects.json"), rejects)
    for record in rejects:
        log.warning("rejected: %s", record["reason"])
    if not records:
        raise ValueError(f"{manifest}: no utterance could be corrupted (see {target.stem}.rejects.json)")
    return target, len(records), len(rejects)
