"""`ds2 transcribe`: audio files of any length to text, with word times and confidences.

The model runs over each file in chunks (:mod:`ds2.longform`; pieces of several files share
a batch). It is decoded in pieces cut at pauses (a pause ends a word: a model trained on
single utterances emits no space between two sentences) and kept under ``search_seconds``,
by greedy decoding or, with an LM or hotwords, ds2's beam search on threads
(:mod:`ds2.decode`; alpha/beta tuned beside the model are used by default), and the words
get their times by aligning that text to the model's outputs (:mod:`ds2.alignment`). A
word's confidence is the mean probability the model gives its characters over the frames
the alignment puts them on.

Output formats: ``text`` (a line per file), ``json`` (a line per file: text, duration and
words with start, end, confidence), ``srt`` and ``vtt`` (captions: a new one at a pause or
when one grows too long), ``ctm`` (NIST, a line per word).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ds2 import audio
from ds2.alignment import AlignmentError, align
from ds2.checkpoint import load_model
from ds2.config import check, option
from ds2.decode import BeamSearchOptions, beam_decode, build_beam_decoder, greedy_decode, split_at_pauses
from ds2.longform import ChunkOptions, Recording, log_probs_of
from ds2.text import normalize

log = logging.getLogger("ds2.transcribe")

FORMATS = ("text", "json", "srt", "vtt", "ctm")


@dataclass(frozen=True)
class TranscribeOptions:
    format: str = option("text", "Output: text (a line per file), json (a line per file: words with start, end, "
                         "confidence), srt or vtt (captions), ctm (a line per word).", choices=FORMATS)
    caption_seconds: float = option(6.0, "srt/vtt: the longest caption.", above=0)
    caption_chars: int = option(84, "srt/vtt: the most characters in a caption.", min=10)
    caption_pause: float = option(0.6, "srt/vtt: a pause this long (seconds) starts a new caption.", min=0)
    search_seconds: float = option(15.0, "Decode pieces of at most this many seconds, cut at pauses (beam "
                                   "search costs more than linearly in a piece's length).", above=1)
    pause_seconds: float = option(0.4, "A pause (blank frames) at least this long ends a word: the pieces are "
                                  "decoded apart (0: cut only to keep pieces short).", min=0)
    stream: bool = option(False, "Read each file as a live stream through ds2 serve's code path (a forward-only "
                          "model; Batch Dispatch, endpointing); partial results on stderr.")
    stream_chunk_ms: float = option(100.0, "--stream: milliseconds of audio per chunk.", above=0)
    realtime: bool = option(True, "--stream: send the chunks at real-time pace (--no-realtime: as fast as the "
                            "model goes).")

    def __post_init__(self):
        check(self)


@dataclass(frozen=True)
class Word:
    text: str
    start: float | None  # seconds; None when the word could not be placed
    end: float | None
    confidence: float | None


@dataclass
class Transcript:
    path: str
    text: str | None  # None when the file could not be used
    duration: float = 0.0
    words: list[Word] = field(default_factory=list)
    error: str | None = None


@torch.no_grad()
def transcribe(checkpoint: str | Path, paths: list[str | Path], chunks: ChunkOptions = ChunkOptions(),
               beam: BeamSearchOptions | None = None, options: TranscribeOptions = TranscribeOptions()
               ) -> Iterator[Transcript]:
    """Transcripts of audio files, in the order given, each as soon as it is done.

    A file that cannot be read gives a Transcript with ``error`` (naming the file) and the
    rest are transcribed; a bad checkpoint raises ValueError before any file is read.
    """
    model, alphabet = load_model(checkpoint)
    decoder = build_beam_decoder(alphabet, beam) if beam is not None else None  # the LM is loaded once
    for result in log_probs_of(model, [Recording(str(path)) for path in paths], chunks):
        path = result.recording.path
        if result.error:
            yield Transcript(path, None, error=result.error)
            continue
        log_probs = result.log_probs
        values = log_probs.numpy()
        pieces = split_at_pauses(values, int(options.search_seconds / result.frame_seconds),
                                 int(round(options.pause_seconds / result.frame_seconds)))
        if beam is None:
            texts = [greedy_decode(log_probs[None, a:b], torch.tensor([b - a]), alphabet)[0] for a, b in pieces]
        else:
            texts = beam_decode([values[a:b] for a, b in pieces], alphabet, beam, decoder)
        # Normalized as references are: a stray apostrophe at a word edge ("'nrn") is no part of
        # the word, and the words timed by alignment must be the words of the text.
        text = normalize(" ".join(texts))
        yield Transcript(path, text, round(result.seconds, 3), timed_words(log_probs, text, alphabet,
                                                                         result.frame_seconds))


def timed_words(log_probs: torch.Tensor, text: str, alphabet, frame_seconds: float) -> list[Word]:
    """The words of ``text`` placed on the frames by forced alignment, with confidences."""
    if not text:
        return []
    try:
        alignment = align(log_probs, text, alphabet)
    except AlignmentError as err:  # a hypothesis always fits its own frames; this is a safeguard
        log.warning("could not time the words of %r: %s", text[:60], err)
        return [Word(word, None, None, None) for word in text.split()]
    return [Word(w.text, round(w.start * frame_seconds, 3), round(w.end * frame_seconds, 3), round(w.score, 4))
            if w.aligned else Word(w.text, None, None, None) for w in alignment.words]


# --------------------------------------------------------------------------- formats


def as_json(transcript: Transcript) -> str:
    return json.dumps({"audio_filepath": transcript.path, "duration": transcript.duration, "text": transcript.text,
                       "words": [{"word": w.text, "start": w.start, "end": w.end, "confidence": w.confidence}
                                 for w in transcript.words]}, ensure_ascii=False)


def as_ctm(transcript: Transcript) -> str:
    name = Path(transcript.path).stem
    return "".join(f"{name} 1 {w.start:.3f} {w.end - w.start:.3f} {w.text} {w.confidence:.4f}\n"
                   for w in transcript.words if w.start is not None)


def captions(words: list[Word], options: TranscribeOptions) -> list[tuple[float, float, str]]:
    """Words grouped into captions (start, end, text): a new caption after a long pause, or
    when the current one would grow past the longest caption in seconds or characters."""
    cues: list[list[Word]] = []
    for word in (w for w in words if w.start is not None):
        if cues:
            current = cues[-1]
            text_length = sum(len(w.text) + 1 for w in current) + len(word.text)
            if (word.start - current[-1].end < options.caption_pause and word.end - current[0].start
                    <= options.caption_seconds and text_length <= options.caption_chars):
                current.append(word)
                continue
        cues.append([word])
    return [(cue[0].start, cue[-1].end, " ".join(w.text for w in cue)) for cue in cues]


def _timestamp(seconds: float, separator: str) -> str:
    milliseconds = int(round(seconds * 1000))
    hours, rest = divmod(milliseconds, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    return f"{hours:02d}:{minutes:02d}:{rest // 1000:02d}{separator}{rest % 1000:03d}"


def as_srt(transcript: Transcript, options: TranscribeOptions) -> str:
    return "".join(f"{k}\n{_timestamp(start, ',')} --> {_timestamp(end, ',')}\n{text}\n\n"
                   for k, (start, end, text) in enumerate(captions(transcript.words, options), start=1))


def as_vtt(transcript: Transcript, options: TranscribeOptions) -> str:
    return "WEBVTT\n\n" + "".join(f"{_timestamp(start, '.')} --> {_timestamp(end, '.')}\n{text}\n\n"
                                  for start, end, text in captions(transcript.words, options))


def render(transcript: Transcript, options: TranscribeOptions) -> str:
    """The transcript in ``options.format`` (text and json end with a newline)."""
    if options.format == "text":
        return (transcript.text or "") + "\n"
    if options.format == "json":
        return as_json(transcript) + "\n"
    if options.format == "ctm":
        return as_ctm(transcript)
    return as_srt(transcript, options) if options.format == "srt" else as_vtt(transcript, options)


def transcribe_stream(checkpoint: str | Path, paths: list[str | Path], beam: BeamSearchOptions | None = None,
                      options: TranscribeOptions = TranscribeOptions(), on_partial=None, serve_options=None
                      ) -> Iterator[Transcript]:
    """Transcripts of files read as live streams: each file is cut into ``stream_chunk_ms``
    chunks, sent at real-time pace (``realtime``), through the engine of ``ds2 serve``
    (:class:`ds2.serve.Engine`: Batch Dispatch, per-stream state, endpointing). Its text is
    the stream's finals joined; ``on_partial(path, result)`` sees every partial and final.
    """
    import asyncio

    from ds2.serve import Engine, ServeOptions

    engine = Engine(str(checkpoint), serve_options or ServeOptions(), beam)
    step = max(1, int(options.stream_chunk_ms * audio.SAMPLE_RATE / 1000))

    async def one(path) -> Transcript:
        try:
            waveform = audio.load_audio(path)
        except audio.AudioError as err:
            return Transcript(str(path), None, error=str(err))
        session, finals = engine.session(), []
        start = time.perf_counter()
        for at in range(0, len(waveform), step):
            end = at + step
            if options.realtime:  # the chunk exists only once its last sample was spoken
                await asyncio.sleep(max(0.0, start + min(end, len(waveform)) / audio.SAMPLE_RATE - time.perf_counter()))
            for result in await session.push(waveform[at:end], final=end >= len(waveform)):
                if result["type"] == "final":
                    finals.append(result)
                if on_partial is not None:
                    on_partial(str(path), result)
        words = [Word(w["word"], w["start"], w["end"], w["confidence"]) for f in finals for w in f["words"]]
        return Transcript(str(path), " ".join(f["text"] for f in finals), round(len(waveform) / audio.SAMPLE_RATE, 3),
                          words)

    try:
        for path in paths:
            yield asyncio.run(one(path))
    finally:
        engine.close()
