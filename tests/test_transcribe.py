"""Long-form transcription: words with times and confidences, captions, hotwords, formats."""

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import confusable_log_probs
from ds2.cli import app
from ds2.decode import BeamSearchOptions, beam_decoder
from ds2.longform import ChunkOptions
from ds2.synth import SynthConfig, synthesize_corpus
from ds2.text import Alphabet
from ds2.transcribe import TranscribeOptions, Transcript, Word, as_srt, as_vtt, captions, transcribe

CHECKPOINT = Path(__file__).parent / "data" / "checkpoint_v1.pt"
OPTIONS = TranscribeOptions(caption_seconds=3.0, caption_chars=30, caption_pause=0.5)


def test_captions_break_at_pauses_and_length():
    words = [Word("one", 0.0, 0.4, 0.9), Word("two", 0.5, 0.9, 0.9), Word("three", 1.6, 2.0, 0.9),  # pause 0.7
             Word("four", 2.1, 2.5, 0.9), Word("five", 2.6, 3.0, 0.9), Word("six", 3.1, 3.5, 0.9),
             Word("seven", 3.6, 4.0, 0.9), Word("lost", None, None, None)]
    assert captions(words, OPTIONS) == [(0.0, 0.9, "one two"), (1.6, 4.0, "three four five six seven")]
    short = TranscribeOptions(caption_seconds=1.0, caption_chars=30, caption_pause=0.5)
    assert [text for _, _, text in captions(words, short)] == ["one two", "three four", "five six", "seven"]


def test_srt_and_vtt_timestamps():
    transcript = Transcript("a.wav", "one two", 3725.5, [Word("one", 3723.25, 3723.5, 0.9), Word("two", 3723.6, 3724.0, 0.8)])
    assert as_srt(transcript, OPTIONS) == "1\n01:02:03,250 --> 01:02:04,000\none two\n\n"
    assert as_vtt(transcript, OPTIONS) == "WEBVTT\n\n01:02:03.250 --> 01:02:04.000\none two\n\n"


def test_hotwords_steer_the_search_without_an_lm():
    alphabet = Alphabet()
    log_probs = confusable_log_probs("the cat", alphabet, {"c": "k"})
    plain = beam_decoder(alphabet, BeamSearchOptions(beam_width=16, jobs=1))
    assert plain(log_probs) == "the kat"
    boosted = beam_decoder(alphabet, BeamSearchOptions(beam_width=16, jobs=1, hotwords=("cat",), hotword_weight=5.0))
    assert boosted(log_probs) == "the cat"


@pytest.fixture(scope="module")
def recordings(tmp_path_factory):
    out = tmp_path_factory.mktemp("transcribe")
    manifests = synthesize_corpus(out, SynthConfig(n_train=0, n_dev=0, n_test=3, seed=8), progress=False)
    return sorted((out / "wav" / "test").glob("*.wav"))


def test_transcripts_have_timed_words_in_order(recordings):
    results = list(transcribe(CHECKPOINT, recordings, ChunkOptions(chunk_seconds=1.0, context_seconds=0.3,
                                                                   progress=False, device="cpu")))
    assert [Path(r.path) for r in results] == [Path(p) for p in recordings]
    for result in results:
        assert result.error is None and result.text and result.duration > 0.5
        assert [w.text for w in result.words] == result.text.split()
        starts = [w.start for w in result.words]
        assert starts == sorted(starts) and result.words[-1].end <= result.duration + 0.05
        assert all(0 < w.confidence <= 1 for w in result.words)


def test_transcribe_formats_and_a_folder_of_captions(recordings, tmp_path):
    runner = CliRunner()
    base = ["transcribe", str(CHECKPOINT), *map(str, recordings), "--no-progress", "--device", "cpu"]
    result = runner.invoke(app, base + ["--format", "json"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [Path(line["audio_filepath"]).name for line in lines] == [p.name for p in recordings]
    result = runner.invoke(app, base + ["--format", "ctm", "-o", str(tmp_path / "all.ctm")])
    ctm = (tmp_path / "all.ctm").read_text().splitlines()
    assert result.exit_code == 0 and len(ctm) == sum(len(line["words"]) for line in lines)
    result = runner.invoke(app, base + ["--format", "srt"])
    assert result.exit_code == 1 and "give --output FOLDER" in result.output
    result = runner.invoke(app, base + ["--format", "vtt", "-o", str(tmp_path / "captions")])
    assert result.exit_code == 0 and sorted(p.name for p in (tmp_path / "captions").iterdir()) == \
        sorted(p.stem + ".vtt" for p in recordings)
    assert (tmp_path / "captions" / (recordings[0].stem + ".vtt")).read_text().startswith("WEBVTT\n\n00:00:")


def test_a_long_file_of_room_noise_only_is_transcribed_without_error(tmp_path):
    import soundfile

    noise = (10 ** (-60 / 20) * np.random.default_rng(0).standard_normal(16000 * 40)).astype(np.float32)
    soundfile.write(tmp_path / "room.wav", noise, 16000)
    (result,) = transcribe(CHECKPOINT, [tmp_path / "room.wav"], ChunkOptions(chunk_seconds=10, progress=False,
                                                                              device="cpu"))
    assert result.error is None and result.duration == pytest.approx(40.0, abs=0.05)
    assert [w.text for w in result.words] == result.text.split()  # whatever it hears, it is timed and complete
