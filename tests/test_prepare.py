"""prepare: every bad input ends in the rejects manifest with a reason naming the file."""

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from ds2.cli import app
from conftest import noise_burst, sweep, tone, write_audio
from ds2.audio import SAMPLE_RATE, load_audio
from ds2.data import read_manifest
from ds2.prepare import prepare_folder, prepare_librispeech, rejects_path


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _good_pair(folder: Path, name: str = "good", seconds: float = 0.5, text: str = "Good audio.") -> Path:
    wav = write_audio(folder / f"{name}.wav", sweep(seconds, SAMPLE_RATE), SAMPLE_RATE)
    (folder / f"{name}.txt").write_text(text, encoding="utf-8")
    return wav


def _prepare_folder_with(tmp_path, make_bad, alphabet="default"):
    """A folder with one good pair plus whatever ``make_bad(root)`` adds; (manifest, rejects)."""
    root = tmp_path / "corpus"
    _good_pair(root)
    make_bad(root)
    kwargs = {} if alphabet == "default" else {"alphabet": alphabet}
    result = prepare_folder(root, tmp_path / "train.json", progress=False, **kwargs)
    return _read_jsonl(result.manifest), _read_jsonl(result.rejects)


def _assert_one_reject(manifest, rejects, caplog, names: str, phrase: str):
    """Only the good pair is accepted; one reject whose reason (and a warning) names the file."""
    assert [r["text"] for r in manifest] == ["good audio"]
    assert len(rejects) == 1, rejects
    reason = rejects[0]["reason"]
    assert names in reason and phrase in reason, reason
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == "ds2.prepare"]
    assert [w.getMessage() for w in warnings] == [f"rejected: {reason}"]


# --------------------------------------------------------------------------- bad inputs, one each


def test_corrupt_audio(tmp_path, caplog):
    def make_bad(root):
        (root / "bad.wav").write_bytes(np.random.default_rng(0).bytes(5000))
        (root / "bad.txt").write_text("hello", encoding="utf-8")

    manifest, rejects = _prepare_folder_with(tmp_path, make_bad)
    _assert_one_reject(manifest, rejects, caplog, str(tmp_path / "corpus" / "bad.wav"), "cannot decode audio")


def test_empty_audio_file(tmp_path, caplog):
    def make_bad(root):
        (root / "bad.wav").write_bytes(b"")
        (root / "bad.txt").write_text("hello", encoding="utf-8")

    manifest, rejects = _prepare_folder_with(tmp_path, make_bad)
    _assert_one_reject(manifest, rejects, caplog, str(tmp_path / "corpus" / "bad.wav"), "empty file (0 bytes)")


def test_audio_with_no_samples(tmp_path, caplog):
    def make_bad(root):
        write_audio(root / "bad.wav", np.zeros(0, np.float32), SAMPLE_RATE)
        (root / "bad.txt").write_text("hello", encoding="utf-8")

    manifest, rejects = _prepare_folder_with(tmp_path, make_bad)
    _assert_one_reject(manifest, rejects, caplog, str(tmp_path / "corpus" / "bad.wav"), "no audio samples")


def test_audio_containing_nan(tmp_path, caplog):
    def make_bad(root):
        samples = tone(440, 0.5, SAMPLE_RATE)
        samples[1234] = np.nan
        write_audio(root / "bad.wav", samples, SAMPLE_RATE, "FLOAT")
        (root / "bad.txt").write_text("hello", encoding="utf-8")

    manifest, rejects = _prepare_folder_with(tmp_path, make_bad)
    _assert_one_reject(manifest, rejects, caplog, str(tmp_path / "corpus" / "bad.wav"), "NaN")


def test_8k_stereo_is_accepted_resampled_and_downmixed(tmp_path, caplog):
    root = tmp_path / "corpus"
    left = tone(300, 0.75, 8000)
    write_audio(root / "phone.wav", np.stack([left, 0.5 * left], axis=1), 8000, "PCM_16")
    (root / "phone.txt").write_text("Hello, PHONE!", encoding="utf-8")
    result = prepare_folder(root, tmp_path / "train.json", progress=False)
    (record,) = read_manifest(result.manifest)
    assert record["text"] == "hello phone"
    assert record["duration"] == 0.75
    waveform = load_audio(record["audio_filepath"])
    assert waveform.shape == (12000,)
    peak = float(waveform.abs().max())
    assert 0.36 < peak < 0.39  # the mean of amplitudes 0.5 and 0.25: not one channel, not their sum
    assert result.n_rejected == 0 and _read_jsonl(result.rejects) == []
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_transcript_without_audio(tmp_path, caplog):
    manifest, rejects = _prepare_folder_with(
        tmp_path, lambda root: (root / "lonely.txt").write_text("hello", encoding="utf-8")
    )
    _assert_one_reject(manifest, rejects, caplog, str(tmp_path / "corpus" / "lonely.txt"), "no audio file")


def test_audio_without_transcript(tmp_path, caplog):
    manifest, rejects = _prepare_folder_with(
        tmp_path, lambda root: write_audio(root / "sub" / "mute.flac", noise_burst(0.3, SAMPLE_RATE), SAMPLE_RATE)
    )
    _assert_one_reject(manifest, rejects, caplog, str(tmp_path / "corpus" / "sub" / "mute.flac"), "no transcript mute.txt")


def test_transcript_not_utf8(tmp_path, caplog):
    def make_bad(root):
        write_audio(root / "latin.wav", sweep(0.4, SAMPLE_RATE), SAMPLE_RATE)
        (root / "latin.txt").write_bytes("caf\u00e9 au lait".encode("latin-1"))

    manifest, rejects = _prepare_folder_with(tmp_path, make_bad)
    _assert_one_reject(manifest, rejects, caplog, str(tmp_path / "corpus" / "latin.txt"), "not UTF-8 (byte 3)")


@pytest.mark.parametrize("content", ["", "  \n", "... --- !!!"], ids=["empty", "whitespace", "punctuation"])
def test_empty_transcript(tmp_path, caplog, content):
    def make_bad(root):
        write_audio(root / "quiet.wav", sweep(0.4, SAMPLE_RATE), SAMPLE_RATE)
        (root / "quiet.txt").write_text(content, encoding="utf-8")

    manifest, rejects = _prepare_folder_with(tmp_path, make_bad)
    _assert_one_reject(manifest, rejects, caplog, str(tmp_path / "corpus" / "quiet.txt"), "empty transcript")


@pytest.mark.parametrize("text, shown", [("Room 101", "'0', '1'"), ("Caf\u00e9 time", "'\u00e9'")], ids=["digits", "accent"])
def test_characters_outside_the_alphabet(tmp_path, caplog, text, shown):
    def make_bad(root):
        write_audio(root / "odd.wav", sweep(0.4, SAMPLE_RATE), SAMPLE_RATE)
        (root / "odd.txt").write_text(text, encoding="utf-8")

    manifest, rejects = _prepare_folder_with(tmp_path, make_bad)
    _assert_one_reject(manifest, rejects, caplog, str(tmp_path / "corpus" / "odd.txt"), f"outside the alphabet: {shown}")
    assert rejects[0]["text"] == text  # the original text, to fix by hand


def test_any_characters_when_no_alphabet(tmp_path):
    def make_extra(root):
        write_audio(root / "odd.wav", sweep(0.4, SAMPLE_RATE), SAMPLE_RATE)
        (root / "odd.txt").write_text("Caf\u00e9 101", encoding="utf-8")

    manifest, rejects = _prepare_folder_with(tmp_path, make_extra, alphabet=None)
    assert sorted(r["text"] for r in manifest) == ["caf\u00e9 101", "good audio"] and rejects == []


def test_transcript_with_byte_order_mark_is_accepted(tmp_path):
    def make_extra(root):
        write_audio(root / "bom.wav", sweep(0.4, SAMPLE_RATE), SAMPLE_RATE)
        (root / "bom.txt").write_text("Saved by Notepad", encoding="utf-8-sig")

    manifest, rejects = _prepare_folder_with(tmp_path, make_extra)
    assert sorted(r["text"] for r in manifest) == ["good audio", "saved by notepad"] and rejects == []


# --------------------------------------------------------------------------- LibriSpeech layout


def _librispeech_tree(root: Path) -> dict[str, tuple[float, str]]:
    """Two speakers; returns {utterance id: (duration, normalized text)} of the good ones."""
    good = {
        "19-198-0001": (1.0, "NORTHANGER ABBEY", "northanger abbey"),
        "19-198-0002": (0.5, "IT'S A TEST", "it's a test"),
        "84-121-0003": (0.75, "WELL-KNOWN, SHE SAID", "well known she said"),
    }
    lines: dict[Path, list[str]] = {}
    for n, (utterance_id, (seconds, raw, _)) in enumerate(good.items()):
        speaker, chapter, _ = utterance_id.split("-")
        folder = root / speaker / chapter
        write_audio(folder / f"{utterance_id}.flac", sweep(seconds, SAMPLE_RATE) + noise_burst(seconds, SAMPLE_RATE, n), SAMPLE_RATE)
        lines.setdefault(folder / f"{speaker}-{chapter}.trans.txt", []).append(f"{utterance_id} {raw}")
    for transcript, content in lines.items():
        transcript.write_text("\n".join(content) + "\n", encoding="utf-8")
    return {utterance_id: (seconds, text) for utterance_id, (seconds, _, text) in good.items()}


def test_librispeech_good_tree(tmp_path, caplog):
    root = tmp_path / "LibriSpeech" / "dev-clean"
    expected = _librispeech_tree(root)
    result = prepare_librispeech(root, tmp_path / "dev.json", progress=False)
    assert (result.n_accepted, result.n_rejected) == (3, 0)
    assert result.hours == pytest.approx(2.25 / 3600)
    stored = _read_jsonl(result.manifest)
    assert [r["audio_filepath"] for r in stored] == [
        "LibriSpeech/dev-clean/19/198/19-198-0001.flac",  # relative to the manifest's folder
        "LibriSpeech/dev-clean/19/198/19-198-0002.flac",
        "LibriSpeech/dev-clean/84/121/84-121-0003.flac",
    ]
    for record in read_manifest(result.manifest):
        utterance_id = Path(record["audio_filepath"]).stem
        assert Path(record["audio_filepath"]).is_file()
        assert (record["duration"], record["text"]) == expected[utterance_id]
    assert _read_jsonl(rejects_path(result.manifest)) == []


def test_librispeech_bad_entries(tmp_path, caplog):
    root = tmp_path / "LibriSpeech"
    expected = _librispeech_tree(root)
    chapter = root / "19" / "198"
    transcript = chapter / "19-198.trans.txt"
    with open(transcript, "a", encoding="utf-8") as handle:
        handle.write("19-198-0009 THIS FLAC IS MISSING\n")  # line 3
        handle.write("19-198-0004\n")  # line 4: empty transcript
        handle.write("19-198-0005 ROOM 101\n")  # line 5: digits
    write_audio(chapter / "19-198-0004.flac", sweep(0.3, SAMPLE_RATE), SAMPLE_RATE)
    write_audio(chapter / "19-198-0005.flac", sweep(0.3, SAMPLE_RATE), SAMPLE_RATE)
    write_audio(chapter / "19-198-0006.flac", sweep(0.3, SAMPLE_RATE), SAMPLE_RATE)  # no line for it
    (chapter / "19-198-0007.flac").write_bytes(b"")
    with open(transcript, "a", encoding="utf-8") as handle:
        handle.write("19-198-0007 EMPTY FILE\n")  # line 6
    other = root / "7" / "70"
    write_audio(other / "7-70-0001.flac", sweep(0.3, SAMPLE_RATE), SAMPLE_RATE)
    (other / "7-70.trans.txt").write_bytes("7-70-0001 CAF\xc9\n".encode("latin-1"))

    result = prepare_librispeech(root, tmp_path / "train.json", progress=False)

    assert {Path(r["audio_filepath"]).stem: (r["duration"], r["text"]) for r in read_manifest(result.manifest)} == expected
    reasons = sorted(r["reason"] for r in _read_jsonl(result.rejects))
    assert reasons == sorted(
        [
            f"{transcript}:3: audio file {chapter / '19-198-0009.flac'} not found",
            f"{transcript}:4: empty transcript",
            f"{transcript}:5: characters outside the alphabet: '0', '1'",
            f"{chapter / '19-198-0006.flac'}: no line for it in a *.trans.txt",
            f"{chapter / '19-198-0007.flac'}: empty file (0 bytes)",
            f"{other / '7-70.trans.txt'}: transcript is not UTF-8 (byte 13)",  # and not its flac again
        ]
    )
    assert (result.n_accepted, result.n_rejected) == (3, 6)
    warned = sorted(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert warned == [f"rejected: {reason}" for reason in reasons]


def test_librispeech_without_transcripts_is_an_error(tmp_path):
    write_audio(tmp_path / "1" / "2" / "1-2-0001.flac", sweep(0.3, SAMPLE_RATE), SAMPLE_RATE)
    with pytest.raises(ValueError, match=r"no \*\.trans\.txt transcripts found"):
        prepare_librispeech(tmp_path, tmp_path / "train.json", progress=False)


# --------------------------------------------------------------------------- folder layout


def _folder_tree(root: Path) -> dict[str, tuple[float, str]]:
    """Nested folders of good pairs at several rates and formats, and bad entries."""
    write_audio(root / "spk1" / "a.wav", sweep(0.5, 16000), 16000)
    (root / "spk1" / "a.txt").write_text("The FIRST one.\n", encoding="utf-8")
    write_audio(root / "spk1" / "deep" / "b.flac", noise_burst(0.8, 22050), 22050)
    (root / "spk1" / "deep" / "b.txt").write_text("O\u2019Neil\u2019s  second", encoding="utf-8")
    write_audio(root / "spk2" / "c.wav", np.stack([tone(500, 1.25, 8000)] * 2, axis=1), 8000)
    (root / "spk2" / "c.txt").write_text("\u201cThird\u201d \u2014 stereo", encoding="utf-8")
    # Bad:
    (root / "spk2" / "corrupt.wav").write_bytes(np.random.default_rng(1).bytes(4000))
    (root / "spk2" / "corrupt.txt").write_text("corrupt", encoding="utf-8")
    write_audio(root / "spk2" / "orphan.wav", sweep(0.2, 16000), 16000)
    (root / "notes.txt").write_text("not a transcript", encoding="utf-8")
    write_audio(root / "spk3" / "digits.wav", sweep(0.2, 16000), 16000)
    (root / "spk3" / "digits.txt").write_text("take 2", encoding="utf-8")
    return {"a": (0.5, "the first one"), "b": (0.8, "o'neil's second"), "c": (1.25, "third stereo")}


def test_folder_tree(tmp_path, caplog):
    root = tmp_path / "corpus"
    expected = _folder_tree(root)
    result = prepare_folder(root, tmp_path / "out" / "train.json", progress=False)
    records = list(read_manifest(result.manifest))
    assert {Path(r["audio_filepath"]).stem: (r["duration"], r["text"]) for r in records} == expected
    for record in records:
        assert Path(record["audio_filepath"]).is_file()
        assert load_audio(record["audio_filepath"]).numel() == round(record["duration"] * SAMPLE_RATE)
    assert result.hours == pytest.approx(2.55 / 3600)

    rejects = _read_jsonl(result.rejects)
    assert result.rejects == tmp_path / "out" / "train.rejects.json"
    named = {
        root / "spk2" / "corrupt.wav": "cannot decode audio",
        root / "spk2" / "orphan.wav": "no transcript orphan.txt",
        root / "notes.txt": "no audio file",
        root / "spk3" / "digits.txt": "outside the alphabet: '2'",
    }
    assert len(rejects) == len(named) == result.n_rejected
    for path, phrase in named.items():
        (match,) = [r for r in rejects if r["reason"].startswith(f"{path}: ")]
        assert phrase in match["reason"]
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sorted(warned) == sorted(f"rejected: {r['reason']}" for r in rejects)


def test_symlink_loops_are_rejected_and_every_good_file_kept(tmp_path, caplog):
    root = tmp_path / "corpus"
    _good_pair(root)
    _good_pair(root / "more", "second", text="second one")
    (root / "loop.wav").symlink_to("loop.wav")  # points at itself
    (root / "loop.txt").write_text("a loop", encoding="utf-8")
    (root / "more" / "back").symlink_to("..", target_is_directory=True)  # a folder loop
    (root / "dangling.wav").symlink_to(tmp_path / "gone.wav")
    (root / "dangling.txt").write_text("gone", encoding="utf-8")
    for layout in (prepare_folder, prepare_librispeech):
        if layout is prepare_librispeech:
            (root / "more" / "1-2.trans.txt").write_text("1-2-3 hello\n", encoding="utf-8")
        result = layout(root, tmp_path / f"{layout.__name__}.json", progress=False)
        rejects = {Path(r["audio_filepath"]).name: r["reason"] for r in _read_jsonl(result.rejects)}
        assert "cannot resolve the path" in rejects["loop.wav"] and str(root / "loop.wav") in rejects["loop.wav"]
        if layout is prepare_folder:
            texts = sorted(r["text"] for r in read_manifest(result.manifest))
            assert texts == ["good audio", "second one"]  # each once: the folder loop is walked once
            assert "file not found" in rejects["gone.wav"]


def test_folder_that_is_not_a_directory(tmp_path):
    with pytest.raises(ValueError, match="not a directory"):
        prepare_folder(tmp_path / "nope", tmp_path / "train.json", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no audio files"):
        prepare_folder(tmp_path / "empty", tmp_path / "train.json", progress=False)


def test_rejects_path():
    assert rejects_path("data/train.json") == Path("data/train.rejects.json")
    assert rejects_path("data/train.jsonl") == Path("data/train.rejects.jsonl")
    assert rejects_path("train") == Path("train.rejects.json")


# --------------------------------------------------------------------------- CLI


@pytest.fixture
def cli(restore_logging):
    runner = CliRunner()
    return lambda *args: runner.invoke(app, [str(arg) for arg in args])


def test_cli_prepare_folder_with_bad_entries_succeeds(tmp_path, cli):
    root = tmp_path / "corpus"
    _folder_tree(root)
    manifest = tmp_path / "train.json"
    result = cli("prepare", "folder", root, manifest)
    assert result.exit_code == 0, result.output
    assert f"{manifest}: 3 utterances" in result.output
    assert f"4 rejected -> {tmp_path / 'train.rejects.json'}" in result.output
    assert "rejected: " in result.output  # the warnings reach the user
    assert len(_read_jsonl(manifest)) == 3 and len(_read_jsonl(tmp_path / "train.rejects.json")) == 4


@pytest.mark.parametrize("layout", ["folder", "librispeech"])
def test_cli_missing_directory_is_one_clear_error(tmp_path, cli, layout):
    missing = tmp_path / "no-such-dir"
    result = cli("prepare", layout, missing, tmp_path / "train.json")
    assert result.exit_code == 1
    assert f"error: {missing}: not a directory" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "train.json").exists()


def test_cli_jobs_2_gives_the_same_manifest(tmp_path, cli):
    root = tmp_path / "corpus"
    _folder_tree(root)
    for i in range(12):  # enough files for both workers
        _good_pair(root / "more", f"u{i:02d}", seconds=0.1 + 0.05 * i, text=f"utterance {'x' * i}")
    assert cli("prepare", "folder", root, tmp_path / "one.json", "--jobs", "1").exit_code == 0
    result = cli("prepare", "folder", root, tmp_path / "two.json", "--jobs", "2")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "two.json").read_bytes() == (tmp_path / "one.json").read_bytes()
    assert (tmp_path / "two.rejects.json").read_bytes() == (tmp_path / "one.rejects.json").read_bytes()
    assert len(_read_jsonl(tmp_path / "two.json")) == 15
