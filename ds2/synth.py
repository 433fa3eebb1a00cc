"""A speech corpus synthesized with eSpeak NG (and with ``engines``, Flite and Festival:
:mod:`ds2.voices`): no downloads, reproducible from a seed.

Sentences come from the English grammar of :mod:`ds2.grammar`; each is spoken by an
eSpeak NG voice (:mod:`ds2.espeak`: an English accent plus a voice variant, e.g.
``"en-us+m3"``) at a random speaking rate (words per minute) and pitch (0-100), with
silence before and after and a background noise floor (eSpeak alone is digitally silent
between and around words, which no recording is); a share of the utterances are two
sentences with a pause between, as speech in long recordings is. Every utterance's text, voice, rate,
pitch, silences and noise level are planned from :class:`SynthConfig` before any audio is
made, and its noise is seeded by its place in the corpus, so the same config gives
byte-identical files whatever the number of worker processes.

Dev and test hold sentences *and* voices never seen in training: the voices are split
into two disjoint groups (:data:`ENGLISH_VOICES`, and :data:`ENGINE_VOICES` for the other
engines, one of which, Festival, is held out whole), no person on both sides, and the
dev/test sentences are drawn first and excluded from the training sentences.

Usage::

    from ds2.synth import SynthConfig, synthesize_corpus
    manifests = synthesize_corpus("data/synth", SynthConfig(n_train=2000, seed=0))
    # {"train": Path("data/synth/train.json"), "dev": ..., "test": ...}
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile

from ds2 import audio, espeak, grammar, io, voices
from ds2.config import (ConfigError, check, flag_name, option, parse_floats, parse_ints, parse_strs, show_floats,
                        show_ints, show_strs)
from ds2.data import write_manifest

log = logging.getLogger(__name__)

SPLITS = ("train", "dev", "test")
RATE_RANGE = (130, 210)  # speaking rate, words per minute (eSpeak's default is 175)
PITCH_RANGE = (30, 70)  # eSpeak base pitch, 0-100 (50 is the voice's own pitch)
MAX_WORKERS = 8  # default cap on synthesis processes
# eSpeak's speech starts and ends at the first and last sample, and is digitally silent in
# between words: a model trained on that has never heard a pause or a room, and cannot
# transcribe a recording with either. Each utterance gets silence on both sides and a
# noise floor 25-45 dB below the speech (eSpeak's speech is about -25 dBFS RMS).
PAD_RANGE = (0.1, 0.6)
JOIN_PAUSE_RANGE = (0.2, 1.2)
NOISE_DB_RANGE = (-70.0, -50.0)


@dataclass(frozen=True)
class VoicePartition:
    """eSpeak voice names for training and for dev/test (never seen in training).

    A name is ``<language>[+<variant>]``: the language picks the accent (its
    pronunciation rules), the variant (espeak-ng-data/voices/!v) the speaker's formants,
    pitch range and voice quality. A name written as a bare ``+<variant>`` takes
    :attr:`SynthConfig.language` as its language.
    """

    train: tuple[str, ...]
    heldout: tuple[str, ...]


# Variants were chosen by measurement: a periodicity (voicing) check dropped the whispered
# and breathy ones (whisper, whisperf, caleb, croak, klatt, klatt2, grandpa), and the
# robotic/echo ones (robosoft*, RicishayMax*, UniRobot, Demonic, announcer, Marco) and
# those that reach full scale at eSpeak's default volume (iven, paul, antonio, Jacky,
# steph2/3, ...) were left out. test_synth checks the voicing and length of every voice.
# Held-out variants appear in no training voice, under any accent; the accents are shared
# so that dev/test measure generalization to new speakers, not to a new dialect.
ENGLISH_VOICES = VoicePartition(
    train=(
        "en-us",  # the accent's own default voice (no variant)
        "+m1",
        "+m3",
        "+m6",
        "+f1",
        "+f4",
        "+adam",
        "+steph",
        "en+m4",
        "en+f2",
        "en+robert",
        "en-gb-x-rp+m7",
        "en-gb-x-rp+linda",
        "en-gb-scotland+david",
        "en-029+max",
        "en-us-nyc+Annie",
    ),
    heldout=("+m5", "+f3", "en+m2", "en-gb-x-rp+f5"),
)

# The voices `--engines` adds beyond eSpeak. Festival is the engine held out whole: it speaks
# only in dev and test. Its two voices are the people behind Flite's slt and kal16, so those
# are held out too; Flite trains on awb and rms.
ENGINE_VOICES = {
    "flite": VoicePartition(train=("flite:awb", "flite:rms"), heldout=("flite:slt", "flite:kal16")),
    "festival": VoicePartition(train=(), heldout=("festival:cmu_us_slt_arctic_hts", "festival:kal_diphone")),
}


@dataclass(frozen=True)
class SynthConfig:
    """What :func:`synthesize_corpus` makes; the same config gives the same bytes."""

    n_train: int = option(2000, "Training utterances.", min=0)
    n_dev: int = option(200, "Dev utterances (sentences and voices unseen in training).", min=0)
    n_test: int = option(200, "Test utterances (sentences and voices unseen in training).", min=0)
    seed: int = option(0, "Same seed, same corpus.")
    language: str = option("en-us", 'eSpeak language of the voices written as a bare "+variant".')
    min_words: int = option(3, "Shortest sentence, in words.", min=1)
    max_words: int = option(12, "Longest sentence, in words.", min=1)
    rate_range: tuple[int, int] = option(RATE_RANGE, "Speaking rate range, words per minute (one drawn per "
                                         "utterance).", parse=parse_ints, show=show_ints)
    pitch_range: tuple[int, int] = option(PITCH_RANGE, "Base pitch range, 0-100 (one drawn per utterance).",
                                          parse=parse_ints, show=show_ints)
    train_voices: tuple[str, ...] = option(ENGLISH_VOICES.train, "eSpeak voices of the training split.",
                                           parse=parse_strs, show=show_strs)
    heldout_voices: tuple[str, ...] = option(ENGLISH_VOICES.heldout, "eSpeak voices of dev and test (no variant "
                                             "of a training voice).", parse=parse_strs, show=show_strs)
    engines: tuple[str, ...] = option(("espeak",), "Synthesizers: espeak, and flite (Debian flite) and festival "
                                      "(Debian festival, festvox-us-slt-hts, festvox-kallpc16k), whose voices are "
                                      "added (festival's to dev/test only); an engine not installed is skipped "
                                      "with a note in voices.json.", parse=parse_strs, show=show_strs)
    pad_range: tuple[float, float] = option(PAD_RANGE, "Silence before and after the speech, seconds (drawn for "
                                            "each side of each utterance; 0,0: none).", parse=parse_floats,
                                            show=show_floats)
    noise_db_range: tuple[float, float] = option(NOISE_DB_RANGE, "Background noise floor, dB below full scale "
                                                 "(RMS; one level drawn per utterance).", parse=parse_floats,
                                                 show=show_floats)
    noise: bool = option(True, "Add the background noise floor (recordings are never digitally silent).")
    join_share: float = option(0.25, "Share of utterances that are two sentences with a pause between: a model "
                               "must hear pauses inside utterances to transcribe long recordings.", min=0, max=1)
    join_pause_range: tuple[float, float] = option(JOIN_PAUSE_RANGE, "Pause between the two sentences of a joined "
                                                   "utterance, seconds.", parse=parse_floats, show=show_floats)

    def __post_init__(self):
        check(self)
        grammar.check_word_range(self.min_words, self.max_words)
        for name, values, (lowest, highest) in (
            ("rate_range", self.rate_range, (80, 450)),  # espeakRATE_MINIMUM/MAXIMUM
            ("pitch_range", self.pitch_range, (0, 100)),
        ):
            if len(values) != 2 or not lowest <= values[0] <= values[1] <= highest:
                raise ConfigError(f"{flag_name(name)} must be LOW,HIGH with {lowest} <= LOW <= HIGH <= {highest}")
        for name, values, (lowest, highest) in (("pad_range", self.pad_range, (0.0, 10.0)),
                                                ("join_pause_range", self.join_pause_range, (0.0, 10.0)),
                                                ("noise_db_range", self.noise_db_range, (-120.0, -10.0))):
            if len(values) != 2 or not lowest <= values[0] <= values[1] <= highest:
                raise ConfigError(f"{flag_name(name)} must be LOW,HIGH with {lowest:g} <= LOW <= HIGH <= {highest:g}")
        unknown = sorted(set(self.engines) - {"espeak", *ENGINE_VOICES})
        if unknown:
            raise ConfigError(f"--engines: unknown {', '.join(unknown)} (known: espeak, {', '.join(ENGINE_VOICES)})")
        if not self.train_voices or not self.heldout_voices:
            raise ValueError("train_voices and heldout_voices must not be empty")
        for voice in self.all_voices("train") + self.all_voices("dev"):
            voices.info(voice)  # an unknown voice of another engine fails here
        shared = {voices.info(v).person for v in self.all_voices("train")} & {
            voices.info(v).person for v in self.all_voices("dev")
        }
        if shared:
            raise ValueError(f"voices of the same person (eSpeak: variant) in both train and held-out voices: "
                             f"{sorted(shared)}")

    def all_voices(self, split: str) -> tuple[str, ...]:
        """Every voice a split asks for, with full names ("+m3" -> "en-us+m3"), engines' included."""
        names = self.train_voices if split == "train" else self.heldout_voices
        for engine in self.engines:
            if engine in ENGINE_VOICES:
                partition = ENGINE_VOICES[engine]
                names = names + (partition.train if split == "train" else partition.heldout)
        return tuple(self.language + v if v.startswith("+") else v for v in names)

    def resolved_voices(self, split: str) -> tuple[str, ...]:
        """The voices of a split that can speak here: those of engines not installed are left out
        (:func:`skipped_voices` says which and why)."""
        return tuple(v for v in self.all_voices(split) if voices.available(voices.engine_of(v)) is None)

    def skipped_voices(self) -> dict[str, str]:
        """Voices asked for whose engine is not installed here, with the reason."""
        return {v: voices.available(voices.engine_of(v)) for split in SPLITS for v in self.all_voices(split)
                if voices.available(voices.engine_of(v)) is not None}

    def n_utterances(self, split: str) -> int:
        return {"train": self.n_train, "dev": self.n_dev, "test": self.n_test}[split]


# --------------------------------------------------------------------------- corpus


def _plan(config: SynthConfig) -> dict[str, list[dict]]:
    """Every utterance's text, voice, rate and pitch, before any audio is made.

    Dev and test sentences are drawn first (so they do not depend on ``n_train``), each
    excluding those drawn before it. Voices go round-robin over a shuffled order so that
    each voice of a split gets the same share of utterances (within one).
    """
    sentence_rng = random.Random(f"{config.seed}:sentences")
    texts: dict[str, list[str]] = {}
    seconds: dict[str, list[str]] = {}  # the second sentence of each joined utterance, in order
    joined: dict[str, list[bool]] = {}
    taken: set[str] = set()
    # dev's and test's sentences (first, then the second ones of joined utterances) before
    # training's, so that dev and test do not depend on n_train
    for group in (("dev", "test"), ("train",)):
        for split in group:
            texts[split] = grammar.generate_sentences(
                config.n_utterances(split), sentence_rng, config.min_words, config.max_words, taken
            )
            taken.update(texts[split])
        for split in group:
            join_rng = random.Random(f"{config.seed}:{split}:join")
            joined[split] = [join_rng.random() < config.join_share for _ in texts[split]]
            seconds[split] = grammar.generate_sentences(
                sum(joined[split]), sentence_rng, config.min_words, config.max_words, taken
            )
            taken.update(seconds[split])

    plan = {}
    for split in SPLITS:
        rng = random.Random(f"{config.seed}:{split}:voices")
        voices = config.resolved_voices(split)
        assigned = [voices[i % len(voices)] for i in range(len(texts[split]))]
        rng.shuffle(assigned)
        second = iter(seconds[split])
        plan[split] = []
        for index, (text, voice, join) in enumerate(zip(texts[split], assigned, joined[split])):
            utterance = {
                "utt_id": f"{split}_{index:05d}",
                "sentences": [text, next(second)] if join else [text],
                "voice": voice,
                "rate": rng.randint(*config.rate_range),
                "pitch": rng.randint(*config.pitch_range),
                "pad": (round(rng.uniform(*config.pad_range), 3), round(rng.uniform(*config.pad_range), 3)),
                "noise_db": round(rng.uniform(*config.noise_db_range), 1) if config.noise else None,
                "join_pause": round(rng.uniform(*config.join_pause_range), 3) if join else None,
            }
            utterance["text"] = " ".join(utterance["sentences"])
            plan[split].append(utterance)
    return plan


def _render(utterance: dict) -> tuple[int, list[float] | None]:
    """Synthesize one utterance, write its wav and its transcript beside it (same name,
    .txt: the folder layout `ds2 prepare folder` reads).

    Returns its length in samples and where each of its words starts (seconds, from eSpeak's
    word events, silence before included; None for a word without an event).
    """
    text = utterance["text"]
    before, after = (int(round(seconds * audio.SAMPLE_RATE)) for seconds in utterance["pad"])
    pieces, starts = [np.zeros(before, np.float32)], []
    for k, sentence in enumerate(utterance["sentences"]):
        if k:
            pieces.append(np.zeros(int(round(utterance["join_pause"] * audio.SAMPLE_RATE)), np.float32))
        speech = voices.speak(grammar.spoken_form(sentence), utterance["voice"], utterance["rate"], utterance["pitch"])
        starts += _word_starts(sentence, speech, sum(len(p) for p in pieces) / audio.SAMPLE_RATE)
        pieces.append(speech.waveform.numpy())
    pieces.append(np.zeros(after, np.float32))
    waveform = np.concatenate(pieces)
    if utterance["noise_db"] is not None:
        rng = np.random.default_rng(utterance["noise_seed"])
        waveform += (10 ** (utterance["noise_db"] / 20) * rng.standard_normal(len(waveform))).astype(np.float32)
    soundfile.write(utterance["path"], np.clip(waveform, -1.0, 1.0), audio.SAMPLE_RATE, subtype="PCM_16")
    Path(utterance["path"]).with_suffix(".txt").write_text(text + "\n", encoding="utf-8")
    return len(waveform), starts


def _word_starts(text: str, speech: espeak.Speech, offset: float) -> list[float | None]:
    """Start (seconds) of each word of ``text`` from eSpeak's word events; None for a word
    eSpeak ran into its neighbour without an event of its own (e.g. "the" in "on the desk")."""
    spoken = grammar.spoken_form(text)  # the text eSpeak was given: the same words, plus "?" or "."
    starts: list[float | None] = [None] * len(text.split())
    position, index = 0, 0
    bounds = []
    for word in text.split():
        position = spoken.index(word, position)
        bounds.append((position, position + len(word)))
        position += len(word)
    for event_text, start, event_position in speech.word_positions:
        while index < len(bounds) and bounds[index][1] <= event_position:
            index += 1
        if index < len(bounds) and bounds[index][0] <= event_position and starts[index] is None:
            starts[index] = round(start + offset, 4)
    return starts


def _write_voices(path: Path, config: SynthConfig, skipped: dict[str, str]) -> None:
    """voices.json: every voice of the corpus with its split, engine, person and licence, and
    the voices skipped (engine not installed) with the reason."""
    used = {}
    for split in ("train", "dev"):
        for voice in config.resolved_voices(split):
            details = voices.info(voice)
            used[voice] = {"splits": ["train"] if split == "train" else ["dev", "test"], "engine": details.engine,
                           "person": details.person, "licence": details.licence}
    path.parent.mkdir(parents=True, exist_ok=True)
    with io.atomic_write(path) as handle:
        json.dump({"voices": used, "skipped": skipped}, handle, indent=2)
        handle.write("\n")


def _default_workers() -> int:
    return io.default_jobs(cap=MAX_WORKERS)  # process_map runs 1 where there is no fork


def synthesize_corpus(
    out_dir: str | Path, config: SynthConfig, progress: bool = True, workers: int | None = None
) -> dict[str, Path]:
    """Synthesize train/dev/test and write their audio and manifests.

    Writes ``out_dir/wav/<split>/<utt_id>.wav`` (16 kHz mono PCM_16) with its transcript
    in ``<utt_id>.txt`` beside it, and
    ``out_dir/<split>.json`` (JSON lines: ``audio_filepath`` relative to ``out_dir``,
    ``duration`` in seconds, ``text``, and ``voice``, ``speaker`` (= the voice), ``rate``
    (words per minute), ``pitch`` (0-100), ``noise_db`` (the noise floor, dBFS, or None) and
    ``word_starts`` (seconds from the start of the file where each word of ``text`` begins,
    from eSpeak's word events: the ground truth of forced alignment; null for the few words
    eSpeak runs into the next one without an event)). Everything is decided by ``config`` before
    any audio is made, so the same config gives byte-identical manifests whatever the
    number of ``workers`` (forked processes; default: one per available core, at most
    MAX_WORKERS; 1 runs in this process).

    Returns {"train": path, "dev": path, "test": path} of the manifests.
    """
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    out_dir = Path(out_dir)
    skipped = config.skipped_voices()
    for voice, reason in skipped.items():
        log.warning("voice %s skipped: %s", voice, reason)
    for split in SPLITS:
        if config.n_utterances(split) and not config.resolved_voices(split):
            raise ValueError(f"no voice of the {split} split can speak here: {sorted(set(skipped.values()))}")
    plan = _plan(config)
    for voice in sorted({u["voice"] for split in SPLITS for u in plan[split]}):
        voices.check_voice(voice)  # fail before minutes of synthesis, not in the middle
    _write_voices(out_dir / "voices.json", config, skipped)
    jobs = []
    for split_index, split in enumerate(SPLITS):
        (out_dir / "wav" / split).mkdir(parents=True, exist_ok=True)
        for index, utterance in enumerate(plan[split]):
            utterance["path"] = str((out_dir / "wav" / split / f"{utterance['utt_id']}.wav").resolve())
            utterance["noise_seed"] = [config.seed, split_index, index]  # the noise of this utterance only
            jobs.append(utterance)
    rendered = io.process_map(
        _render, jobs, workers or _default_workers(), initializer=espeak.reset_after_fork,
        chunksize=8, progress=progress, desc="synthesizing", unit="utt",
    )
    results = iter(list(rendered))  # (samples, word starts) per utterance, in the order of the plan
    manifests = {}
    for split in SPLITS:
        records = []
        for utterance in plan[split]:
            n_samples, word_starts = next(results)
            record = {
                "audio_filepath": utterance["path"],
                "duration": n_samples / audio.SAMPLE_RATE,
                "text": utterance["text"],
                "voice": utterance["voice"],
                "speaker": utterance["voice"],
                "engine": voices.engine_of(utterance["voice"]),
                "rate": utterance["rate"],
                "pitch": utterance["pitch"],
                "noise_db": utterance["noise_db"],
                "sentences": len(utterance["sentences"]),
            }
            record["word_starts"] = word_starts
            records.append(record)
        manifests[split] = out_dir / f"{split}.json"
        write_manifest(manifests[split], records)
    return manifests
