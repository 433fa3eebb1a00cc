"""eSpeak NG through ctypes: text in, 16 kHz speech out, the same samples for the same arguments.

The shared library and its voice data come from the ``espeakng-loader`` wheel; the API
used is declared in espeak-ng's ``speak_lib.h``. A voice is named
``<language>[+<variant>]``: the language picks the accent (its pronunciation rules), the
variant (espeak-ng-data/voices/!v) the speaker's formants, pitch range and voice quality,
e.g. ``"en-us+f3"``. The speaking rate is in words per minute (80-450), the base pitch
0-100 (50 is the voice's own).

:func:`synthesize` returns float32 samples in [-1, 1), shape = (n_samples,), at
``ds2.audio.SAMPLE_RATE`` (16 kHz, resampled from eSpeak's native 22050 Hz). eSpeak
starts from scratch for every call (see :class:`_Espeak`), so the same arguments always
give the same samples. There is one engine per process, behind a lock; a forked child
calls :func:`reset_after_fork` before its first use.

Usage::

    from ds2 import espeak
    waveform = espeak.synthesize("where is the red box?", "en-us+f3", rate=175, pitch=50)
"""

from __future__ import annotations

import _ctypes
import contextlib
import ctypes
import os
import shutil
import tempfile
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ds2 import audio

# eSpeak's volume, 0-200 (100 = its default). Some accent/variant/pitch combinations clip
# at 100; at 75 none of the voices of ds2.synth.ENGLISH_VOICES reaches full scale.
VOLUME = 75
INT16_SCALE = 32768.0  # eSpeak returns signed 16-bit samples

# Values from espeak-ng's speak_lib.h.
_AUDIO_OUTPUT_SYNCHRONOUS = 2  # espeak_Synth returns when synthesis is done; no threads
_INITIALIZE_DONT_EXIT = 0x8000  # return an error instead of exit() when data is missing
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_PARAM_RATE, _PARAM_VOLUME, _PARAM_PITCH = 1, 2, 3
_EE_OK = 0
_RANDOM_SEED = 0  # eSpeak seeds its noise generator from the clock; fix it

_EVENT_LIST_TERMINATED, _EVENT_WORD = 0, 1


class _Event(ctypes.Structure):
    """espeak_EVENT (speak_lib.h); ``id`` is a union of int, const char* and char[8]."""

    _fields_ = [
        ("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint), ("text_position", ctypes.c_int),
        ("length", ctypes.c_int), ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p), ("id", ctypes.c_void_p),
    ]  # fmt: skip


# int SynthCallback(short *wav, int numsamples, espeak_EVENT *events); returns 0 to go on.
_SYNTH_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)
_UNLOAD_LIBRARY = getattr(_ctypes, "dlclose", None) or getattr(_ctypes, "FreeLibrary")


def _declare(lib: ctypes.CDLL) -> None:
    """Argument and return types of the functions used (ctypes guesses int otherwise)."""
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_SetSynthCallback.argtypes = [_SYNTH_CALLBACK]
    lib.espeak_SetSynthCallback.restype = None
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetVoiceByName.restype = ctypes.c_int
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_SetParameter.restype = ctypes.c_int
    lib.espeak_Synth.argtypes = [
        ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
        ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
    ]  # fmt: skip
    lib.espeak_Synth.restype = ctypes.c_int
    lib.espeak_Synchronize.restype = ctypes.c_int
    lib.espeak_Terminate.restype = ctypes.c_int


def voice_variant(voice: str) -> str:
    """The variant part of a voice name ("" for an accent's default voice)."""
    return voice.partition("+")[2]


class _Espeak:
    """eSpeak NG, loaded afresh for every utterance.

    The library keeps synthesis state in static variables that no API call resets (the
    pitch-flutter phase, the gain control, the echo buffer, a clock-seeded noise
    generator), so the same call made twice gives different samples (durations differ by
    up to ~15 ms). To make every utterance a function of its arguments alone, a private
    copy of the library is loaded, used for one utterance and unloaded again: unloading
    drops its static data. It costs ~1 ms beyond selecting the voice (~3.5 ms), which
    every utterance does anyway. The copy is private so that another user of eSpeak in
    this process neither keeps it loaded nor sees its state changed.
    """

    def __init__(self):
        import espeakng_loader  # imported here so that ds2 imports without it

        self.data_path = Path(espeakng_loader.get_data_path())
        source = Path(espeakng_loader.get_library_path())
        folder = tempfile.mkdtemp(prefix="ds2-espeak-")
        weakref.finalize(self, _remove_folder, folder, os.getpid())
        self.library_path = Path(folder) / f"ds2-{source.name}"
        shutil.copyfile(source, self.library_path)
        self._chunks: list[np.ndarray] = []
        self._words: list[tuple[int, int, int]] = []  # (text position, length, native sample) per word
        # Keep a reference: ctypes frees the trampoline with the Python object, and the
        # library would then call freed memory.
        self._callback = _SYNTH_CALLBACK(self._collect)
        with self._fresh_library() as (_, sample_rate):
            self.sample_rate = sample_rate

    @contextlib.contextmanager
    def _fresh_library(self):
        """Yield (library, sample rate) initialized from scratch; unload it afterwards."""
        lib = ctypes.CDLL(str(self.library_path), mode=getattr(os, "RTLD_LOCAL", 0))
        initialized = False
        try:
            _declare(lib)
            sample_rate = lib.espeak_Initialize(
                _AUDIO_OUTPUT_SYNCHRONOUS, 0, str(self.data_path).encode(), _INITIALIZE_DONT_EXIT
            )
            if sample_rate <= 0:
                raise RuntimeError(f"espeak_Initialize failed (data path {self.data_path})")
            initialized = True
            seed = getattr(lib, "espeak_ng_SetRandSeed", None)  # eSpeak NG >= 1.52
            if seed is not None:
                seed.argtypes = [ctypes.c_long]
                seed(_RANDOM_SEED)
            lib.espeak_SetSynthCallback(self._callback)
            yield lib, sample_rate
        finally:
            if initialized:
                lib.espeak_Terminate()
            _UNLOAD_LIBRARY(lib._handle)

    def _collect(self, wav, n_samples, events) -> int:
        if wav and n_samples > 0:  # wav is NULL at the end; n_samples may be 0 mid-stream
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n_samples,)).copy())
        if events:
            event = ctypes.cast(events, ctypes.POINTER(_Event))
            i = 0
            while event[i].type != _EVENT_LIST_TERMINATED:
                if event[i].type == _EVENT_WORD:  # text_position is 1-based, in characters
                    self._words.append((event[i].text_position - 1, event[i].length, event[i].sample))
                i += 1
        return 0

    def variant_exists(self, variant: str) -> bool:
        return (self.data_path / "voices" / "!v" / variant).is_file()

    def speak(self, text: str, voice: str, rate: int, pitch: int) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
        """int16 samples at ``self.sample_rate``, shape = (n_samples,), and the words as eSpeak
        reported them: (character offset in ``text``, length, first sample). Caller holds the lock."""
        variant = voice_variant(voice)
        # eSpeak ignores an unknown variant without an error; check it here instead.
        if variant and not self.variant_exists(variant):
            raise ValueError(f"unknown eSpeak voice variant {variant!r} in {voice!r}")
        encoded = text.encode("utf-8") + b"\0"
        with self._fresh_library() as (lib, _):
            if lib.espeak_SetVoiceByName(voice.encode()) != _EE_OK:
                raise ValueError(f"unknown eSpeak voice {voice!r}")
            # Parameters after the voice: selecting a voice resets them.
            for parameter, value in ((_PARAM_RATE, rate), (_PARAM_PITCH, pitch), (_PARAM_VOLUME, VOLUME)):
                lib.espeak_SetParameter(parameter, value, 0)
            self._chunks, self._words = [], []
            status = lib.espeak_Synth(encoded, len(encoded), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
            lib.espeak_Synchronize()
        if status != _EE_OK:
            raise RuntimeError(f"espeak_Synth failed with status {status} for {text!r}")
        chunks, self._chunks = self._chunks, []
        words, self._words = self._words, []
        return (np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)), words


def _remove_folder(folder: str, owner_pid: int) -> None:
    if os.getpid() == owner_pid:  # a forked child that exits must not delete the parent's copy
        shutil.rmtree(folder, ignore_errors=True)


_ENGINE: _Espeak | None = None
_ENGINE_LOCK = threading.Lock()  # the engine's buffer and the library are one per process


def _engine() -> _Espeak:
    global _ENGINE
    if _ENGINE is None:
        _ENGINE = _Espeak()
    return _ENGINE


def reset_after_fork() -> None:
    """Give this process a lock of its own; a forked child calls it before any synthesis.

    The parent's lock may have been held by one of its threads at the fork; that thread
    does not exist in the child and would never release it.
    """
    global _ENGINE_LOCK
    _ENGINE_LOCK = threading.Lock()


def native_sample_rate() -> int:
    """eSpeak NG's output rate in Hz (22050 for its formant synthesizer)."""
    with _ENGINE_LOCK:
        return _engine().sample_rate


def check_voice(voice: str) -> None:
    """Raise ValueError unless eSpeak knows ``voice`` (language and variant)."""
    synthesize("a", voice, rate=175, pitch=50)


@dataclass(frozen=True)
class Speech:
    waveform: torch.Tensor  # shape = (n_samples,), float32 in [-1, 1), at audio.SAMPLE_RATE
    word_positions: tuple[tuple[str, float, int], ...]  # (text eSpeak read as a word, start in seconds,
    #                                                     its character offset in the text), in order

    @property
    def words(self) -> tuple[tuple[str, float], ...]:
        """(word, start in seconds) per word event. eSpeak may stop a word at an apostrophe
        ("don" for "don't") and may give an unstressed word no event of its own."""
        return tuple((word, start) for word, start, _ in self.word_positions)


def synthesize(text: str, voice: str, rate: int, pitch: int) -> torch.Tensor:
    """Speak ``text`` with an eSpeak NG voice.

    Parameters
    ----------
    text: what to say (UTF-8; punctuation shapes the intonation).
    voice: ``<language>[+<variant>]``, e.g. ``"en-us+f3"``.
    rate: speaking rate in words per minute, 80-450.
    pitch: base pitch, 0-100 (50 is the voice's own).

    Returns
    -------
    torch.Tensor, shape = (n_samples,), float32 in [-1, 1), at ``audio.SAMPLE_RATE``
    (resampled from eSpeak's native rate).

    The same arguments always give the same samples: eSpeak starts from scratch for
    every call. Thread-safe (one engine per process, behind a lock). Raises ValueError
    for empty text, an unknown voice or out-of-range settings.
    """
    return speak(text, voice, rate, pitch).waveform


def check_request(text: str, rate: int, pitch: int) -> None:
    """Raise ValueError for empty text, a rate outside 80-450 words per minute or a pitch
    outside 0-100 (the ranges every engine of :mod:`ds2.voices` takes)."""
    if not text.strip():
        raise ValueError("nothing to synthesize: empty text")
    if not 80 <= rate <= 450:
        raise ValueError(f"rate must be 80-450 words per minute, got {rate}")
    if not 0 <= pitch <= 100:
        raise ValueError(f"pitch must be 0-100, got {pitch}")


def speak(text: str, voice: str, rate: int, pitch: int) -> Speech:
    """:func:`synthesize`, with where each word starts.

    eSpeak reports a word event at the first sample it generates for the word (its
    ``sample`` field, at the native rate): the start times are exact for the synthesized
    audio, which makes them a ground truth for forced alignment.
    """
    check_request(text, rate, pitch)
    with _ENGINE_LOCK:
        engine = _engine()
        samples, events = engine.speak(text, voice, rate, pitch)
        native_rate = engine.sample_rate
    waveform = torch.from_numpy(samples.astype(np.float32) / INT16_SCALE)
    words = tuple((text[position: position + length], sample / native_rate, position)
                  for position, length, sample in events)
    return Speech(audio.resample(waveform, native_rate).contiguous(), words)
