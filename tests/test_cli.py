"""The command line: every command explains itself; bad options and bad files fail clearly."""

import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from conftest import tone, write_audio
from ds2.cli import app
from ds2.config import cli_fields
from ds2.decode import BeamSearchOptions, DecodingOptions
from ds2.model import ModelConfig
from ds2.synth import SynthConfig
from ds2.train import TrainConfig

runner = CliRunner()
CHECKPOINT = Path(__file__).parent / "data" / "checkpoint_v1.pt"  # a small real model


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def _command_paths(command, path=()):
    yield path
    if hasattr(command, "commands"):  # a group
        for name, sub in command.commands.items():
            yield from _command_paths(sub, path + (name,))


ALL_COMMANDS = list(_command_paths(typer.main.get_command(app)))


def test_the_command_list_is_what_we_document():
    names = {" ".join(path) for path in ALL_COMMANDS}
    assert {"", "prepare", "prepare synth", "prepare librispeech", "prepare folder", "prepare commonvoice", "lm",
            "lm build", "lm query", "train", "decode", "tune", "transcribe", "score"} <= names


@pytest.mark.parametrize("path", ALL_COMMANDS, ids=lambda p: " ".join(p) or "ds2")
def test_every_command_and_subcommand_has_help(path):
    result = invoke(*path, "--help")
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output and "Traceback" not in result.output


def _flat(text: str) -> str:
    return re.sub(r"[\s│]+", " ", text)


@pytest.mark.parametrize("command,configs", [
    ("train", (TrainConfig, ModelConfig)),
    ("decode", (DecodingOptions, BeamSearchOptions)),
    ("prepare synth", (SynthConfig,)),
])
def test_options_come_from_the_config_fields(command, configs):
    """Every option of the dataclass is on the command line, with the field's own help."""
    result = runner.invoke(app, [*command.split(), "--help"], env={"COLUMNS": "400"})
    help_text = _flat(result.output)
    for config in configs:
        for field in cli_fields(config):
            assert "--" + field.name.replace("_", "-") in help_text, field.name
            assert _flat(field.help) in help_text, field.name


@pytest.mark.parametrize("args,message", [
    (["--epochs", "-1"], "--epochs: must be >= 1, got -1"),
    (["--batch-size", "0"], "--batch-size: must be >= 1, got 0"),
    (["--lr", "0"], "--lr: must be > 0, got 0.0"),
    (["--optimizer", "rmsprop"], "--optimizer: must be one of sgd, adam, got 'rmsprop'"),
    (["--conv-channels", "32,x"], "--conv-channels: expected integers separated by commas"),
    (["--conv-kernels", "41x11,21"], "--conv-kernels: expected FxT pairs"),
    (["--conv-layers", "3", "--conv-channels", "32,32"], "--conv-channels: 3 conv layers need 3 values"),
    (["--lookahead", "2"], "--lookahead (row convolution) is for forward-only models"),
    (["--max-unusable", "1.5"], "--max-unusable: must be <= 1, got 1.5"),
    (["--momentum", "nan"], "--momentum: must be a number"),
    (["--device", "tpu"], "--device: must be auto, cpu, cuda or cuda:N"),
])
def test_out_of_range_training_options_fail_before_any_work(tmp_path, args, message):
    out = tmp_path / "exp"
    result = runner.invoke(app, ["train", "t.json", "d.json", "-o", str(out), *args])
    assert result.exit_code == 1, result.output
    assert f"error: {message}" in result.output and "Traceback" not in result.output
    assert not out.exists()  # nothing was started


@pytest.mark.parametrize("command", [
    ["decode", str(CHECKPOINT), "m.json", "-o", "h.json", "--lm", "lm.bin", "--beam-width", "0"],
    ["decode", str(CHECKPOINT), "m.json", "-o", "h.json", "--lm", "lm.bin", "--prune-p", "0"],
    ["decode", str(CHECKPOINT), "m.json", "-o", "h.json", "--batch-size", "0"],
    ["prepare", "synth", "out", "--n-train", "-5"],
    ["prepare", "synth", "out", "--rate-range", "300,100"],
    ["tune", "lp.pt", "dev.json", "--lm", "lm.bin", "-o", "exp", "--beam-width", "0"],
])
def test_other_commands_check_their_options_too(command):
    result = runner.invoke(app, command)
    assert result.exit_code == 1 and "error: --" in result.output, result.output


def test_transcribe_goes_on_past_a_bad_file_and_fails_at_the_end(tmp_path, restore_logging):
    good = write_audio(tmp_path / "good.wav", tone(440, 0.6, 16000), 16000)
    other = write_audio(tmp_path / "other.flac", tone(880, 0.4, 22050), 22050)
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF" + np.random.default_rng(0).bytes(300))
    result = runner.invoke(app, ["transcribe", str(CHECKPOINT), str(good), str(broken), str(other), "--device", "cpu"])
    assert result.exit_code == 1
    assert len(result.stdout.splitlines()) == 3  # one line per file, in order (the bad one empty)
    assert result.stdout.splitlines()[1] == ""
    assert f"error: {broken}: cannot read audio header" in result.stderr
    assert "1 of 3 files could not be transcribed" in result.stderr
    alone = runner.invoke(app, ["transcribe", str(CHECKPOINT), str(other), "--device", "cpu"])
    assert alone.exit_code == 0 and alone.stdout.splitlines()[0] == result.stdout.splitlines()[2]


def test_errors_are_one_line_without_traceback(tmp_path):
    result = invoke("score", tmp_path / "nope.json")
    assert result.exit_code == 1 and "error:" in result.output and "nope.json" in result.output
    result = invoke("transcribe", tmp_path / "missing.pt", tmp_path / "a.wav")
    assert result.exit_code == 1 and "checkpoint not found" in result.output
    bad = tmp_path / "bad.json"
    bad.write_text('{"audio_filepath": "a.wav", "duration": 1, "text": "a"}\nnot json\n')
    result = invoke("decode", tmp_path / "missing.pt", bad, "-o", tmp_path / "o.json")
    assert result.exit_code == 1 and "missing.pt" in result.output and "Traceback" not in result.output
    result = invoke("train", tmp_path / "t.json", tmp_path / "d.json", "-o", tmp_path / "exp")
    assert result.exit_code == 1 and f"{tmp_path / 't.json'}: manifest not found" in result.output


def test_no_option_is_defined_twice():
    for config in (TrainConfig, ModelConfig, DecodingOptions, BeamSearchOptions, SynthConfig):
        names = [field.name for field in dataclasses.fields(config)]
        assert len(names) == len(set(names))
