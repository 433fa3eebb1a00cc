"""The whole pipeline through the command line, on a handful of synthesized utterances."""

import csv
import json

import pytest
import soundfile
import torch
from typer.testing import CliRunner

from ds2.cli import app
from ds2 import audio
from ds2.data import read_manifest
from ds2.metrics import score_pairs

runner = CliRunner()


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.mark.slow
def test_synthesize_prepare_train_decode_score_transcribe(tmp_path):
    invoke("prepare", "synth", tmp_path / "synth", "--n-train", 16, "--n-dev", 4, "--n-test", 4, "--seed", 1)
    for split in ("train", "dev", "test"):
        out = invoke("prepare", "folder", tmp_path / "synth" / "wav" / split, tmp_path / f"{split}.json")
        assert "0 rejected" in out
    exp = tmp_path / "exp"
    invoke(
        "train", tmp_path / "train.json", tmp_path / "dev.json", "-o", exp, "--epochs", 3, "--batch-size", 8,
        "--optimizer", "adam", "--lr", "5e-3", "--anneal", 1, "--conv-layers", 1, "--conv-channels", 8, "--conv-kernels", "41x11",
        "--conv-strides", "2x2", "--rnn-layers", 1, "--rnn-hidden", 32, "--fc-hidden", 32, "--num-workers", 0,
        "--no-progress", "--log-every", 1,
    )
    for name in ("best.pt", "last.pt", "log.csv", "epochs.csv", "curves.png", "train.log", "run.json"):
        assert (exp / name).exists(), name
    # it learned something: the dev CTC loss fell from epoch to epoch (the per-step training
    # loss is no measure: SortaGrad's first batches are the short utterances)
    assert len(list(csv.DictReader(open(exp / "log.csv")))) == 6  # --log-every 1, 2 steps per epoch
    dev_losses = [float(row["dev_loss"]) for row in csv.DictReader(open(exp / "epochs.csv"))]
    assert dev_losses[0] > dev_losses[1] > dev_losses[2] and dev_losses[2] < 0.9 * dev_losses[0], dev_losses
    assert json.loads((exp / "run.json").read_text())["ctc_backend"] == "numba"
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
    # the scorer saw the real hypotheses: its figures are those of the pairs in hyp.json
    again = score_pairs((h["text"], h["pred_text"]) for h in hypotheses)
    assert (figures["wer"], figures["cer"]) == (again.wer, again.cer)
    assert figures["chars"]["n_ref"] == sum(len(" ".join(r["text"].split())) for r in references)

    # transcribe: any rate and channel count, one line per file, same text as decode
    waveform = audio.load_audio(references[0]["audio_filepath"])
    stereo_8k = tmp_path / "stereo_8k.wav"
    resampled = audio.resample(waveform, audio.SAMPLE_RATE, 8000)
    soundfile.write(stereo_8k, torch.stack([resampled, resampled], dim=1).numpy(), 8000)
    out = invoke("transcribe", exp / "best.pt", references[0]["audio_filepath"], stereo_8k, "--device", "cpu",
                 "--no-progress")
    lines = out.splitlines()
    assert len(lines) == 2
    by_path = {h["audio_filepath"]: h["pred_text"] for h in hypotheses}
    assert lines[0] == by_path[references[0]["audio_filepath"]]
