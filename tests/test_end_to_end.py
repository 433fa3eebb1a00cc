"""The whole pipeline through the command line, on a handful of synthesized utterances."""

import json

import pytest
import soundfile
import torch
from typer.testing import CliRunner

from ds2.cli import app
from ds2 import audio
from ds2.data import read_manifest

runner = CliRunner()


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.slow
def test_synthesize_prepare_train_decode_score_transcribe(tmp_path):
    invoke("prepare", "synth", tmp_path / "synth", "--n-train", 16, "--n-dev", 4, "--n-test", 4, "--seed", 1)
    for split in ("train", "dev", "test"):
        out = invoke("prepare", "folder", tmp_path / "synth" / "wav" / split, tmp_path / f"{split}.json")
        assert "0 rejected" in out
    exp = tmp_path / "exp"
    invoke(
        "train", tmp_path / "train.json", tmp_path / "dev.json", "-o", exp, "--epochs", 2, "--batch-size", 8,
        "--optimizer", "adam", "--lr", "1e-3", "--conv-layers", 1, "--conv-channels", 8, "--conv-kernels", "41x11",
        "--conv-strides", "2x2", "--rnn-layers", 1, "--rnn-hidden", 32, "--fc-hidden", 32, "--num-workers", 0,
        "--no-progress",
    )
    for name in ("best.pt", "last.pt", "log.csv", "epochs.csv", "curves.png", "train.log"):
        assert (exp / name).exists(), name
    assert list((exp / "tensorboard").iterdir()), "no TensorBoard event file"
    assert (exp / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    invoke("decode", exp / "best.pt", tmp_path / "test.json", "-o", exp / "hyp.json", "--num-workers", 0, "--no-progress")
    hypotheses = list(read_manifest(exp / "hyp.json"))
    references = list(read_manifest(tmp_path / "test.json"))
    assert [h["text"] for h in hypotheses] == [r["text"] for r in references]
    assert all(isinstance(h["pred_text"], str) for h in hypotheses)

    out = invoke("score", exp / "hyp.json", "--json", exp / "score.json")
    figures = json.loads((exp / "score.json").read_text())
    assert figures["n_utterances"] == 4
    assert figures["words"]["n_ref"] == sum(len(r["text"].split()) for r in references)
    assert "WER" in out and "CER" in out
    # Two epochs of 16 clips learn little, but the scorer must see real hypotheses.
    assert 0 < figures["cer"] <= 100 + 100 * figures["chars"]["insertions"] / figures["chars"]["n_ref"]

    # transcribe: any rate and channel count, one line per file, same text as decode
    waveform = audio.load_audio(references[0]["audio_filepath"])
    stereo_8k = tmp_path / "stereo_8k.wav"
    resampled = audio.resample(waveform, audio.SAMPLE_RATE, 8000)
    soundfile.write(stereo_8k, torch.stack([resampled, resampled], dim=1).numpy(), 8000)
    out = invoke("transcribe", exp / "best.pt", references[0]["audio_filepath"], stereo_8k, "--device", "cpu")
    lines = out.splitlines()
    assert len(lines) == 2
    by_path = {h["audio_filepath"]: h["pred_text"] for h in hypotheses}
    assert lines[0] == by_path[references[0]["audio_filepath"]]


def test_cli_reports_bad_input_without_traceback(tmp_path):
    result = runner.invoke(app, ["score", str(tmp_path / "nope.json")])
    assert result.exit_code == 1
    assert "error:" in result.output and "nope.json" in result.output and "Traceback" not in result.output
    bad = tmp_path / "bad.json"
    bad.write_text('{"audio_filepath": "a.wav", "duration": 1, "text": "a"}\nnot json\n')
    result = runner.invoke(app, ["decode", str(tmp_path / "missing.pt"), str(bad), "-o", str(tmp_path / "o.json")])
    assert result.exit_code == 1 and "missing.pt" in result.output
    result = runner.invoke(app, ["transcribe", str(tmp_path / "missing.pt"), str(tmp_path / "a.wav")])
    assert result.exit_code == 1 and "checkpoint not found" in result.output


def test_every_command_explains_itself():
    for command in ([], ["prepare"], ["prepare", "synth"], ["prepare", "librispeech"], ["prepare", "folder"],
                    ["train"], ["decode"], ["transcribe"], ["score"]):
        result = runner.invoke(app, [*command, "--help"])
        assert result.exit_code == 0 and "Usage" in result.output, command
