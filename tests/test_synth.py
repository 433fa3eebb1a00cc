"""The synthesized corpus: the voice partition, the config, real corpora of small sizes."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from ds2 import audio
from ds2.data import read_manifest
from ds2.espeak import synthesize
from ds2.synth import ENGLISH_VOICES, SynthConfig, synthesize_corpus
from ds2.text import Alphabet

SENTENCE = "the old farmer carried seven heavy baskets to the market"
TINY = dict(n_train=12, n_dev=4, n_test=4)


def voicing(waveform: torch.Tensor, rate: int = audio.SAMPLE_RATE) -> float:
    """Median peak of the normalized autocorrelation (60-400 Hz lags) over loud 40 ms frames.

    Voiced speech is periodic (~0.5-0.9); whispered or noise-like speech is not (~0.2).
    """
    x = waveform.double().numpy()
    frame, hop = int(0.04 * rate), int(0.01 * rate)
    loudness_floor = 0.1 * np.sqrt(np.mean(x**2))
    peaks = []
    for start in range(0, len(x) - frame, hop):
        f = x[start : start + frame] - x[start : start + frame].mean()
        if np.sqrt(np.mean(f**2)) < loudness_floor:
            continue
        ac = np.correlate(f, f, "full")[frame - 1 :]
        peaks.append(ac[rate // 400 : rate // 60].max() / ac[0])
    return float(np.median(peaks))


def duration(waveform: torch.Tensor) -> float:
    return waveform.numel() / audio.SAMPLE_RATE


# --------------------------------------------------------------------------- voices


def all_voices() -> list[str]:
    config = SynthConfig()
    return list(config.resolved_voices("train") + config.resolved_voices("dev"))


def test_voice_partition_is_disjoint_down_to_the_variant():
    config = SynthConfig()
    train, heldout = config.resolved_voices("train"), config.resolved_voices("test")
    assert len(train) >= 10 and len(heldout) >= 3
    assert len(set(train)) == len(train) and len(set(heldout)) == len(heldout)
    variants = lambda voices: {voice.partition("+")[2] for voice in voices}  # noqa: E731
    assert not variants(train) & variants(heldout)
    assert config.resolved_voices("dev") == config.resolved_voices("test")
    assert all(v.startswith("en") for v in train + heldout)
    assert "+m3" in ENGLISH_VOICES.train and "en-us+m3" in train  # bare variants take config.language


def test_every_voice_speaks_with_a_clear_voice():
    """All partition voices give voiced speech of ordinary length; a whisper does not."""
    durations = {}
    for voice in all_voices():
        waveform = synthesize(SENTENCE, voice, rate=175, pitch=50)
        assert waveform.abs().max() < 0.999, f"{voice} clips"
        assert voicing(waveform) > 0.45, f"{voice} is not clearly voiced"
        durations[voice] = duration(waveform)
    median = float(np.median(list(durations.values())))
    for voice, seconds in durations.items():
        assert 0.75 * median < seconds < 1.33 * median, f"{voice}: {seconds:.2f}s vs median {median:.2f}s"
    # The check can fail: the whispering variant left out of the partition does.
    assert voicing(synthesize(SENTENCE, "en-us+whisper", rate=175, pitch=50)) < 0.45


def test_config_rejects_a_variant_in_both_groups():
    with pytest.raises(ValueError, match="both train and held-out"):
        SynthConfig(heldout_voices=("en-gb-x-rp+m1",))  # "+m1" is a training voice
    with pytest.raises(ValueError):
        SynthConfig(rate_range=(200, 150))
    with pytest.raises(ValueError):
        SynthConfig(pitch_range=(20, 120))
    with pytest.raises(ValueError):
        SynthConfig(min_words=5, max_words=4)


# --------------------------------------------------------------------------- corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("synth")
    config = SynthConfig(seed=5, **TINY)
    return out_dir, config, synthesize_corpus(out_dir, config, progress=False)


def records(manifests) -> dict[str, list[dict]]:
    return {split: list(read_manifest(path)) for split, path in manifests.items()}


def test_corpus_layout_and_durations(corpus):
    out_dir, config, manifests = corpus
    assert set(manifests) == {"train", "dev", "test"}
    by_split = records(manifests)
    for split, split_records in by_split.items():
        assert manifests[split] == out_dir / f"{split}.json"
        assert len(split_records) == config.n_utterances(split)
        for record in split_records:
            info = soundfile.info(record["audio_filepath"])
            assert record["audio_filepath"].startswith(str((out_dir / "wav" / split).resolve()))
            assert (info.samplerate, info.channels, info.subtype) == (audio.SAMPLE_RATE, 1, "PCM_16")
            assert record["duration"] == pytest.approx(info.frames / info.samplerate, abs=1e-9)
            assert 0.3 < record["duration"] < 15
            Alphabet().encode(record["text"])
            transcript = Path(record["audio_filepath"]).with_suffix(".txt")
            assert transcript.read_text(encoding="utf-8") == record["text"] + "\n"
            n = record["sentences"]  # 1, or 2 for an utterance joined from two sentences
            assert n in (1, 2) and config.min_words * n <= len(record["text"].split()) <= config.max_words * n
            assert record["speaker"] == record["voice"]
            assert config.rate_range[0] <= record["rate"] <= config.rate_range[1]
            assert config.pitch_range[0] <= record["pitch"] <= config.pitch_range[1]
    # Paths are stored relative to the manifest, so the corpus can be moved.
    assert manifests["train"].read_text().startswith('{"audio_filepath": "wav/train/train_00000.wav"')


def test_dev_and_test_are_unseen_sentences_and_voices(corpus):
    _, config, manifests = corpus
    by_split = records(manifests)
    texts = {split: {r["text"] for r in rs} for split, rs in by_split.items()}
    voices = {split: [r["voice"] for r in rs] for split, rs in by_split.items()}
    assert not texts["train"] & (texts["dev"] | texts["test"])
    assert not texts["dev"] & texts["test"]
    assert not set(voices["train"]) & (set(voices["dev"]) | set(voices["test"]))
    assert set(voices["train"]) <= set(config.resolved_voices("train"))
    assert set(voices["dev"]) | set(voices["test"]) <= set(config.resolved_voices("dev"))
    # Voices are dealt out evenly: 12 utterances over 16 voices, 4 over 4.
    assert max(Counter(voices["train"]).values()) == 1
    assert sorted(voices["dev"]) == sorted(config.resolved_voices("dev"))
    assert len(set(r["rate"] for r in by_split["train"])) > 3  # rate varies per utterance


def test_corpus_is_byte_identical_for_a_seed(corpus, tmp_path):
    out_dir, config, manifests = corpus
    # In this process rather than in forked workers: the bytes must not depend on that.
    again = synthesize_corpus(tmp_path / "again", config, progress=False, workers=1)
    for split in manifests:
        assert again[split].read_bytes() == manifests[split].read_bytes()
    for name in ("train/train_00000.wav", "dev/dev_00003.wav"):
        assert (tmp_path / "again" / "wav" / name).read_bytes() == (out_dir / "wav" / name).read_bytes()
    other = synthesize_corpus(tmp_path / "other", SynthConfig(seed=6, **TINY), progress=False)
    for split in manifests:
        assert other[split].read_bytes() != manifests[split].read_bytes()


def test_silence_around_the_speech_with_a_noise_floor_and_word_start_times(corpus):
    _, config, manifests = corpus
    for record in records(manifests)["test"] + records(manifests)["train"]:
        samples, _ = soundfile.read(record["audio_filepath"], dtype="float32")
        lead = samples[: int(config.pad_range[0] * audio.SAMPLE_RATE * 0.9)]
        floor = 20 * np.log10(np.sqrt(np.mean(lead.astype(np.float64) ** 2)))
        assert floor == pytest.approx(record["noise_db"], abs=1.5)  # no digital silence, at the planned level
        assert config.noise_db_range[0] <= record["noise_db"] <= config.noise_db_range[1]
        starts = record["word_starts"]
        assert len(starts) == len(record["text"].split())
        assert sum(start is None for start in starts) <= 1  # eSpeak gives (nearly) every word an event
        starts = [start for start in starts if start is not None]
        assert starts == sorted(starts)
        assert config.pad_range[0] - 0.01 <= starts[0] <= config.pad_range[1] + 0.05  # after the silence
        assert starts[-1] < record["duration"] - config.pad_range[0]
        speech_onset = np.argmax(np.abs(samples) > 20 * 10 ** (record["noise_db"] / 20)) / audio.SAMPLE_RATE
        # the first word starts where the sound does (a soft first consonant rises above the
        # threshold up to ~0.1 s later)
        assert starts[0] - 0.01 <= speech_onset < starts[0] + 0.15


def test_no_noise_and_no_padding_when_asked(tmp_path):
    config = SynthConfig(n_train=0, n_dev=1, n_test=0, seed=5, pad_range=(0.0, 0.0), noise=False)
    manifests = synthesize_corpus(tmp_path, config, progress=False, workers=1)
    (record,) = records(manifests)["dev"]
    samples, _ = soundfile.read(record["audio_filepath"], dtype="float32")
    assert record["noise_db"] is None and record["word_starts"][0] == pytest.approx(0.0, abs=0.02)
    windows = samples[: len(samples) // 160 * 160].reshape(-1, 160)
    assert (np.abs(windows).max(axis=1) == 0).any()  # eSpeak's own digital silence is left as it is


def test_some_utterances_are_two_sentences_with_a_pause_between(tmp_path):
    config = SynthConfig(n_train=0, n_dev=12, n_test=0, seed=5, join_share=0.5, join_pause_range=(0.8, 0.8))
    manifests = synthesize_corpus(tmp_path, config, progress=False)
    dev = records(manifests)["dev"]
    joined = [r for r in dev if r["sentences"] == 2]
    assert 2 <= len(joined) <= 10
    for record in joined:
        starts = [t for t in record["word_starts"] if t is not None]
        assert starts == sorted(starts)
        gaps = np.diff(starts)
        assert gaps.max() > 0.8  # the pause between the sentences is in the audio and in the times
    texts = [r["text"] for r in dev]
    assert len(set(" ".join(texts).split())) > 20 and len(set(texts)) == len(texts)


def test_dev_and_test_do_not_depend_on_the_training_size():
    from ds2.synth import _plan

    small, large = (_plan(SynthConfig(n_train=n, n_dev=6, n_test=6, seed=2, join_share=0.5)) for n in (0, 40))
    for split in ("dev", "test"):
        assert small[split] == large[split]
