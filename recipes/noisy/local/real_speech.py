#!/usr/bin/env python3
"""A small test set of real human speech from Debian's pocketsphinx-testdata (no download).

    python local/real_speech.py /usr/share/pocketsphinx/test/data data/real

Writes OUT.json (a manifest) with OUT/goforward.wav beside it: five LibriVox utterances
(Sense and Sensibility, read by a volunteer, public domain), five utterances of playing
cards ("ten of clubs", read to a microphone) and "go forward ten meters" (16 kHz raw PCM in
the package). Transcripts come from the package's transcription files; an utterance whose
audio is missing is reported and left out. Eleven utterances, about 40 s: enough to say
honestly how a model trained on synthesized voices fares with people, not to rank models
closely.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from ds2 import audio  # noqa: E402
from ds2.data import write_manifest  # noqa: E402
from ds2.noise import write_wav  # noqa: E402

LINE = re.compile(r"^<s>\s*(?P<text>.*?)\s*</s>\s*\((?P<id>[^)]+)\)\s*$")
RAW = {"goforward.raw": "go forward ten meters"}


def transcriptions(path: Path) -> dict[str, str]:
    """Sphinx transcription file: ``<s> words </s> (utterance id)`` per line."""
    texts = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        match = LINE.match(line.strip())
        if not match:
            if line.strip():
                print(f"{path}:{number}: not '<s> text </s> (id)', skipped", file=sys.stderr)
            continue
        texts[match["id"]] = match["text"]
    return texts


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    root, out = Path(sys.argv[1]), Path(sys.argv[2])
    if not root.is_dir():
        sys.exit(f"{root}: not found; install the Debian package pocketsphinx-testdata")
    records = []
    for folder, listing in (("librivox", "transcription"), ("cards", "cards.transcription")):
        for utterance, text in transcriptions(root / folder / listing).items():
            path = root / folder / f"{utterance}.wav"
            if not path.exists():
                print(f"{path}: missing, skipped", file=sys.stderr)
                continue
            duration, _, _ = audio.audio_info(path)
            records.append({"audio_filepath": str(path), "duration": round(duration, 4), "text": text,
                            "source": f"pocketsphinx-testdata/{folder}"})
    for name, text in RAW.items():
        path = root / name
        if path.exists():  # 16 kHz, 16-bit little-endian mono, no header
            samples = np.fromfile(path, dtype="<i2").astype(np.float32) / 32768
            wav = out / Path(name).with_suffix(".wav")
            write_wav(wav, samples)
            records.append({"audio_filepath": str(wav.resolve()), "duration": round(len(samples) / audio.SAMPLE_RATE, 4),
                            "text": text, "source": f"pocketsphinx-testdata/{name}"})
    if not records:
        sys.exit(f"{root}: no utterances found")
    manifest = out.with_suffix(".json")
    write_manifest(manifest, records)
    seconds = sum(r["duration"] for r in records)
    print(f"{manifest}: {len(records)} utterances of real speech, {seconds:.1f} s")


if __name__ == "__main__":
    main()
