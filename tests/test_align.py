"""`ds2 align` on synthesized speech: outputs, truth comparison, bad records, the plot."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ds2.align import AlignOptions, align_manifest
from ds2.cli import app
from ds2.data import read_manifest, write_manifest
from ds2.longform import ChunkOptions
from ds2.synth import SynthConfig, synthesize_corpus

CHECKPOINT = Path(__file__).parent / "data" / "checkpoint_v1.pt"  # small, untrained: aligns, not well


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("align_corpus")
    return synthesize_corpus(out, SynthConfig(n_train=0, n_dev=0, n_test=4, seed=2), progress=False)


def test_align_writes_words_ctm_summary_and_rejects(corpus, tmp_path):
    records = list(read_manifest(corpus["test"]))
    bad = [
        {**records[0], "audio_filepath": str(tmp_path / "missing.wav")},
        {**records[1], "text": "!!!"},  # nothing left after normalization
        {**records[2], "text": " ".join(["abracadabra"] * 40)},  # far more characters than frames
        {**records[3], "text": "the 7 seas"},  # a digit is not in the alphabet
    ]
    manifest = tmp_path / "m.json"
    write_manifest(manifest, records + bad)
    out = tmp_path / "out"
    summary = align_manifest(CHECKPOINT, manifest, out, ChunkOptions(progress=False, device="cpu"), AlignOptions(),
                             plot=1)
    assert (summary["records"], summary["aligned"], summary["rejected"]) == (8, 4, 4)
    aligned = list(read_manifest(out / "alignments.json"))
    for record, original in zip(aligned, records):
        assert [w["word"] for w in record["words"]] == original["text"].split()
        starts = [w["start"] for w in record["words"]]
        assert starts == sorted(starts) and 0 <= starts[0] and record["words"][-1]["end"] <= original["duration"] + 0.05
        assert all(0 < w["score"] <= 1 for w in record["words"]) and record["align_score"] < 0
    ctm = (out / "alignments.ctm").read_text().splitlines()
    assert len(ctm) == summary["words"] == sum(len(r["text"].split()) for r in records)
    first = ctm[0].split()
    assert first[0] == Path(records[0]["audio_filepath"]).stem and first[1] == "1" and first[4] == records[0]["text"].split()[0]
    reasons = [r["reason"] for r in read_manifest(out / "alignments.rejects.json", resolve_paths=False)]
    assert "file not found" in reasons[0] and "empty transcript" in reasons[1]
    assert "frames, the audio has" in reasons[2] and "outside the alphabet" in reasons[3]
    error = json.loads((out / "summary.json").read_text())["word_start_error"]
    assert error["words"] >= 20 and 0 <= error["within_50ms"] <= 1 and error["median_ms"] <= error["p90_ms"]
    assert (out / "align_1.png").read_bytes()[:4] == b"\x89PNG"


def test_a_manifest_with_nothing_alignable_fails_loudly(tmp_path, restore_logging):
    manifest = tmp_path / "m.json"
    write_manifest(manifest, [{"audio_filepath": str(tmp_path / "gone.wav"), "duration": 1.0, "text": "hello"}])
    result = CliRunner().invoke(app, ["align", str(CHECKPOINT), str(manifest), "-o", str(tmp_path / "out"),
                                      "--no-progress"])
    assert result.exit_code == 1 and "no record could be aligned" in result.output
    assert "gone.wav: file not found" in (tmp_path / "out" / "alignments.rejects.json").read_text()


def test_align_command_reports_the_word_start_error(corpus, tmp_path, restore_logging):
    result = CliRunner().invoke(app, ["align", str(CHECKPOINT), str(corpus["test"]), "-o", str(tmp_path / "out"),
                                      "--no-progress", "--chunk-seconds", "1.5", "--context-seconds", "0.5"])
    assert result.exit_code == 0, result.output
    assert "4 of 4 records aligned" in result.output and "word start error against the truth" in result.output
