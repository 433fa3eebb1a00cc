#!/usr/bin/env python3
"""Long recordings with flawed transcripts, made from unseen-voice speech, for the longform recipe.

Each recording is one held-out eSpeak voice (the test voices of ds2.synth) reading grammar
sentences that are not in the given manifests, joined with pauses of 0.3-2.5 s, over one
noise floor. Its transcript is corrupted the way found transcripts are: a share of the
sentences replaced by another sentence entirely, and words substituted, deleted and
inserted elsewhere. Writes OUT/wav/rec_NNN.wav and

- OUT/long.json: a line per recording, ``text`` the flawed transcript, ``truth`` the true
  one and ``truth_words`` [[word, start_seconds], ...] (from eSpeak's word events);
- OUT/utterances.json: the same speech as separate utterances, (offset, duration) windows
  over the recordings (cut in the middle of the pauses), with the true text.

    python local/make_longform.py data --recordings 12 --minutes 4 --exclude ../tiny/data/train.json
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import numpy as np
import soundfile

from ds2 import audio, espeak, grammar
from ds2.data import read_manifest, write_manifest
from ds2.io import process_map
from ds2.synth import ENGLISH_VOICES, SynthConfig, _word_starts

PAUSE_RANGE = (0.3, 2.5)  # seconds between sentences
NOISE_DB_RANGE = (-65.0, -50.0)


def corrupt(sentences: list[str], rng: random.Random, vocabulary: list[str], spare: list[str],
            bad_sentence: float, word_error: float) -> list[str]:
    """The transcript as it was found: some sentences wrong entirely, some words wrong."""
    out = []
    for sentence in sentences:
        if rng.random() < bad_sentence:
            out.append(spare.pop())
            continue
        words = []
        for word in sentence.split():
            roll = rng.random()
            if roll < word_error / 2:
                words.append(rng.choice(vocabulary))  # substituted
            elif roll < 3 * word_error / 4:
                continue  # deleted
            else:
                words.append(word)
                if roll > 1 - word_error / 4:
                    words.append(rng.choice(vocabulary))  # inserted
        out.append(" ".join(words) if words else sentence)
    return out


def render(job: tuple) -> tuple[int, list, list]:
    """One recording: write its wav; returns (samples, truth words, utterance windows)."""
    path, sentences, voice, rate, pitch, noise_db, pauses, seed = job
    pieces, truth_words, windows, position = [], [], [], 0
    for sentence, pause in zip(sentences, pauses):
        speech = espeak.speak(grammar.spoken_form(sentence), voice, rate, pitch)
        samples = speech.waveform.numpy()
        starts = _word_starts(sentence, speech, position / audio.SAMPLE_RATE)
        truth_words += [[word, start] for word, start in zip(sentence.split(), starts) if start is not None]
        windows.append((position, len(samples)))
        silence = np.zeros(int(pause * audio.SAMPLE_RATE), np.float32)
        pieces += [samples, silence]
        position += len(samples) + len(silence)
    waveform = np.concatenate(pieces)
    rng = np.random.default_rng(seed)
    waveform += (10 ** (noise_db / 20) * rng.standard_normal(len(waveform))).astype(np.float32)
    soundfile.write(path, np.clip(waveform, -1, 1), audio.SAMPLE_RATE, subtype="PCM_16")
    return len(waveform), truth_words, windows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--recordings", type=int, default=12)
    parser.add_argument("--minutes", type=float, default=4.0, help="length of each recording (about)")
    parser.add_argument("--exclude", nargs="*", default=[],
                        help="manifests (or .txt, a sentence a line) whose sentences must not be used")
    parser.add_argument("--bad-sentences", type=float, default=0.10, help="share of sentences replaced entirely")
    parser.add_argument("--word-errors", type=float, default=0.05, help="share of the other words made wrong")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=0)
    args = parser.parse_args()

    rng = random.Random(args.seed)
    taken = set()
    for path in args.exclude:  # manifests, or text files of one sentence a line (an LM's text)
        if path.endswith(".txt"):
            taken.update(line.strip() for line in open(path, encoding="utf-8"))
        else:
            taken.update(r["text"] for r in read_manifest(path, resolve_paths=False))
    sentences_per_recording = int(args.minutes * 60 / 3.2) + 1  # ~3.2 s of speech and pause a sentence
    needed = args.recordings * sentences_per_recording
    pool = grammar.generate_sentences(2 * needed, rng, 5, 14, exclude=taken)
    true_sentences, spare = pool[:needed], pool[needed:]
    vocabulary = sorted({word for sentence in pool for word in sentence.split()})
    voices = SynthConfig().resolved_voices("test")  # held out: never heard in training
    (args.out / "wav").mkdir(parents=True, exist_ok=True)
    jobs, plans = [], []
    for k in range(args.recordings):
        sentences = true_sentences[k * sentences_per_recording:(k + 1) * sentences_per_recording]
        voice = voices[k % len(voices)]
        rate, pitch = rng.randint(140, 200), rng.randint(35, 65)
        noise_db = round(rng.uniform(*NOISE_DB_RANGE), 1)
        pauses = [round(rng.uniform(*PAUSE_RANGE), 2) for _ in sentences]
        path = str((args.out / "wav" / f"rec_{k:03d}.wav").resolve())
        jobs.append((path, sentences, voice, rate, pitch, noise_db, pauses, [args.seed, k]))
        flawed = corrupt(sentences, rng, vocabulary, spare, args.bad_sentences, args.word_errors)
        plans.append((path, sentences, flawed, voice, pauses))
    results = list(process_map(render, jobs, args.jobs, initializer=espeak.reset_after_fork, chunksize=1,
                               progress=True, desc="recordings", unit="rec"))
    long_records, utterances = [], []
    for (path, sentences, flawed, voice, pauses), (n_samples, truth_words, windows) in zip(plans, results):
        long_records.append({"audio_filepath": path, "duration": n_samples / audio.SAMPLE_RATE,
                             "text": " ".join(flawed), "truth": " ".join(sentences), "truth_words": truth_words,
                             "voice": voice})
        for k, (sentence, (start, length)) in enumerate(zip(sentences, windows)):
            before = pauses[k - 1] / 2 if k else 0.0
            after = pauses[k] / 2
            offset = max(0.0, start / audio.SAMPLE_RATE - before)
            duration = min(length / audio.SAMPLE_RATE + before + after, n_samples / audio.SAMPLE_RATE - offset)
            utterances.append({"audio_filepath": path, "offset": round(offset, 3), "duration": round(duration, 3),
                               "text": sentence, "voice": voice})
    write_manifest(args.out / "long.json", long_records)
    write_manifest(args.out / "utterances.json", utterances)
    hours = sum(r["duration"] for r in long_records) / 3600
    from ds2.metrics import score_pairs

    # sentence by sentence: an hour's transcript is too long to align as one pair
    flawed_wer = score_pairs((truth, flawed) for (_, sentences, flaws, _, _) in plans
                             for truth, flawed in zip(sentences, flaws)).wer
    print(f"{args.out / 'long.json'}: {len(long_records)} recordings, {hours:.2f} h, transcript WER {flawed_wer:.1f}%; "
          f"{args.out / 'utterances.json'}: {len(utterances)} utterances")


if __name__ == "__main__":
    main()
