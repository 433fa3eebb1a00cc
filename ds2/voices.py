"""Voices of several offline speech synthesizers behind one interface.

A voice is named ``engine:voice``; a name without an engine is an eSpeak NG voice
(``en-us+m3``), as the corpus has always named them::

    speak("the cat sat", "flite:awb", rate=175, pitch=50)   # -> espeak.Speech (16 kHz)

Engines (each a program or library from Debian or PyPI, its voices inside the package):

- ``espeak``: eSpeak NG through :mod:`ds2.espeak` (PyPI espeakng-loader); formant voices;
  rate and pitch; exact word start times.
- ``flite``: CMU Flite (Debian ``flite``): awb, rms, slt (statistical parametric, 16 kHz),
  kal16 (diphone); rate (duration stretch) and pitch (target F0 mean; rms keeps its own).
- ``festival``: Festival (Debian ``festival`` + ``festvox-us-slt-hts`` (HMM: hts_engine's
  speed; its pitch stays) and ``festvox-kallpc16k`` (diphone: duration stretch and target F0)).

Flite and Festival give no word times: their utterances have none (alignment accuracy is
measured on eSpeak's). :data:`VOICES` holds each voice's person (the same person behind two
engines must stay on one side of a train/test split) and licence; the corpus records both.
An engine that is not installed is reported by :func:`available` with how to install it.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
import torch

from ds2 import audio, espeak

ESPEAK_LICENCE = "GPL-3.0-or-later (eSpeak NG program and voice data)"
FLITE_LICENCE = "Flite licence (BSD-style: any use, with the copyright notice); CMU ARCTIC voices"
FESTIVAL_LICENCE = "Festival/Festvox licence (BSD-style: any use, with the copyright notice)"


@dataclass(frozen=True)
class VoiceInfo:
    engine: str
    person: str  # who was recorded (voices of one person share it across engines)
    licence: str
    default_f0: float | None = None  # Hz, measured: pitch 50 leaves it, 0-100 spans half an octave each way
    pitch: bool = True  # whether the engine can move this voice's pitch


VOICES: dict[str, VoiceInfo] = {
    "flite:awb": VoiceInfo("flite", "awb", FLITE_LICENCE, 130.0),
    "flite:rms": VoiceInfo("flite", "rms", FLITE_LICENCE, 101.0, pitch=False),  # ignores F0 targets and shifts
    "flite:slt": VoiceInfo("flite", "slt", FLITE_LICENCE, 170.0),
    "flite:kal16": VoiceInfo("flite", "kal", FLITE_LICENCE, 92.0),
    "festival:cmu_us_slt_arctic_hts": VoiceInfo("festival", "slt", FESTIVAL_LICENCE, pitch=False),  # hts_engine's
    # F0 shift options (-fm, -fs) leave Festival 2.5's output unchanged (measured)
    "festival:kal_diphone": VoiceInfo("festival", "kal", FESTIVAL_LICENCE, 105.0),
}
INSTALL = {
    "flite": "apt-get install flite",
    "festival": "apt-get install festival festvox-us-slt-hts festvox-kallpc16k",
}


def engine_of(voice: str) -> str:
    return voice.partition(":")[0] if ":" in voice else "espeak"


def info(voice: str) -> VoiceInfo:
    """Engine, person and licence of a voice (eSpeak voices: the variant is the person)."""
    if engine_of(voice) == "espeak":
        return VoiceInfo("espeak", "espeak+" + (espeak.voice_variant(voice) or voice), ESPEAK_LICENCE)
    if voice not in VOICES:
        known = ", ".join(v for v in VOICES if v.startswith(engine_of(voice) + ":"))
        raise ValueError(f"unknown voice {voice!r}" + (f"; known: {known}" if known else ""))
    return VOICES[voice]


def available(engine: str) -> str | None:
    """None when ``engine`` can speak here, else why not and how to install it."""
    if engine == "espeak":
        return None
    program = {"flite": "flite", "festival": "text2wave"}.get(engine)
    if program is None:
        return f"unknown engine {engine!r} (known: espeak, flite, festival)"
    if shutil.which(program) is None:
        return f"{engine} is not installed ({INSTALL[engine]})"
    return None


def check_voice(voice: str) -> None:
    """Raise ValueError unless ``voice`` speaks here (engine installed, voice known)."""
    speak("a", voice, rate=175, pitch=50)


def speak(text: str, voice: str, rate: int, pitch: int) -> espeak.Speech:
    """``text`` spoken by ``voice`` at ``rate`` words per minute (80-450; 175 is every
    engine's own pace) and ``pitch`` 0-100 (50: the voice's own), as a 16 kHz waveform.
    Flite and Festival give no word positions (an empty tuple)."""
    espeak.check_request(text, rate, pitch)
    engine = engine_of(voice)
    if engine == "espeak":
        return espeak.speak(text, voice, rate, pitch)
    problem = available(engine)
    if problem:
        raise ValueError(f"voice {voice}: {problem}")
    details = info(voice)
    name = voice.partition(":")[2]
    stretch = 175.0 / rate
    f0 = details.default_f0 * 2 ** ((pitch - 50) / 100) if details.default_f0 and details.pitch else None
    with tempfile.TemporaryDirectory(prefix="ds2-voice-") as tmp:
        out = Path(tmp) / "speech.wav"
        if engine == "flite":
            command = ["flite", "-voice", name, "--setf", f"duration_stretch={stretch:.4f}"]
            if f0 is not None and pitch != 50:
                command += ["--setf", f"int_f0_target_mean={f0:.1f}"]
            command += ["-t", text, "-o", str(out)]
            stdin = None
        elif name.endswith("_hts"):  # festival's text2wave reads the text from stdin
            command = ["text2wave", "-eval", f"(voice_{name})", "-eval",  # hts_engine's speed rate
                       f"(set! hts_engine_params (append hts_engine_params (list '(\"-r\" {1 / stretch:.4f}))))",
                       "-o", str(out)]
            stdin = text
        else:
            command = ["text2wave", "-eval", f"(voice_{name})", "-eval", f"(Parameter.set 'Duration_Stretch {stretch:.4f})"]
            if f0 is not None and pitch != 50:  # the diphone voice's linear-regression intonation
                command += ["-eval", f"(set! int_lr_params '((target_f0_mean {f0:.1f}) (target_f0_std 20) "
                                     "(model_f0_mean 170) (model_f0_std 34)))"]
            command += ["-o", str(out)]
            stdin = text
        done = subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=120)
        if done.returncode != 0 or not out.exists() or out.stat().st_size <= 44:
            message = (done.stderr or done.stdout or "no audio written").strip().splitlines()
            raise ValueError(f"voice {voice}: {command[0]} failed: {message[-1] if message else 'no output'}")
        samples, native_rate = soundfile.read(str(out), dtype="float32", always_2d=True)
    waveform = torch.from_numpy(np.ascontiguousarray(samples.mean(axis=1)))
    if not len(waveform) or not torch.isfinite(waveform).all():
        raise ValueError(f"voice {voice}: no usable audio for {text[:40]!r}")
    return espeak.Speech(audio.resample(waveform, native_rate).contiguous(), ())
