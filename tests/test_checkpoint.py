"""Checkpoints: format version, migration of older files, safe loading, clear errors."""

import pickle
from pathlib import Path

import pytest
import torch

from ds2 import checkpoint
from ds2.checkpoint import load_checkpoint, load_model, migrate, save_checkpoint
from ds2.decode import greedy_decode
from ds2.features import FEATURES
from ds2.model import DeepSpeech2, ModelConfig, time_mask
from ds2.text import Alphabet

DATA = Path(__file__).parent / "data"
# checkpoint_v1.pt was written by ds2 at commit 6a9d433 (train.save_checkpoint, format 1:
# no "format" field, training entries at the top level): a 1-conv, 1-BiGRU model after
# three SGD steps. checkpoint_v1_expected.pt holds zero-padded probe features and the logits
# and greedy texts that the model code before the fused-bidirectional change (9600c64, which
# still gave 6a9d433's logits bit for bit) gave for them. The probe's padding used to hold
# random values, which that code let into the last real frames; the model now ignores padding.
V1 = DATA / "checkpoint_v1.pt"
V1_EXPECTED = DATA / "checkpoint_v1_expected.pt"


def test_a_version_1_checkpoint_loads_and_decodes_exactly_as_before():
    raw = torch.load(V1, weights_only=True)
    assert "format" not in raw and raw["version"] == 1  # really the old format
    expected = torch.load(V1_EXPECTED, weights_only=True)
    model, alphabet = load_model(V1)
    with torch.no_grad():
        logits, lengths = model(expected["features"], expected["lengths"])
    assert torch.equal(lengths, expected["output_lengths"])
    real = time_mask(lengths, logits.shape[1])  # logits at padded steps mean nothing (and differ)
    # float32 rounding only: batch statistics are masked sums now, both directions one kernel call
    torch.testing.assert_close(logits[real], expected["logits"][real], rtol=1e-5, atol=1e-6)
    assert greedy_decode(logits, lengths, alphabet) == expected["texts"]


def test_version_1_training_state_moves_under_training():
    payload = load_checkpoint(V1)
    raw = torch.load(V1, weights_only=True)
    assert payload["version"] == checkpoint.VERSION and payload["format"] == checkpoint.FORMAT
    assert payload["features"] == FEATURES
    training = payload["training"]
    assert training["state"] == raw["train_state"] and training["config"] == raw["train_config"]
    assert training["optimizer"]["state"].keys() == raw["optimizer"]["state"].keys()
    assert torch.equal(training["rng"]["torch"], raw["rng"]["torch"])
    assert training["ctc_backend"] is None  # version 1 did not record it


def test_save_and_load_round_trip(tmp_path):
    alphabet = Alphabet("abc ")
    model = DeepSpeech2(ModelConfig(conv_layers=1, rnn_layers=1, rnn_hidden=8, fc_hidden=8,
                                    alphabet=alphabet.to_list(), n_outputs=len(alphabet)))
    save_checkpoint(tmp_path / "m.pt", model, {"state": {"step": 7}, "ctc_backend": "numba"})
    payload = torch.load(tmp_path / "m.pt", weights_only=True)  # no pickled code in it
    assert payload["version"] == checkpoint.VERSION and payload["training"]["ctc_backend"] == "numba"
    loaded, loaded_alphabet = load_model(tmp_path / "m.pt")
    assert loaded_alphabet == alphabet and not loaded.training
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_newer_format_and_other_features_are_refused(tmp_path):
    payload = load_checkpoint(V1)
    torch.save({**payload, "version": checkpoint.VERSION + 1}, tmp_path / "new.pt")
    with pytest.raises(ValueError, match="newer than this ds2 reads"):
        load_checkpoint(tmp_path / "new.pt")
    torch.save({**payload, "features": {**FEATURES, "hop_ms": 20}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"other input features \(hop_ms differ\)"):
        load_checkpoint(tmp_path / "other.pt")


class _NotATensor:
    pass


@pytest.mark.parametrize("content,message", [
    (None, "ds2 checkpoint not found"),
    (b"junk", "not a readable ds2 checkpoint"),
    ({"model": {}}, "not a ds2 checkpoint"),
    ("pickled code", "not a readable ds2 checkpoint"),
])
def test_bad_files_are_named(tmp_path, content, message):
    path = tmp_path / "bad.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, dict):
        torch.save(content, path)
    elif content == "pickled code":
        with open(path, "wb") as handle:
            torch.save({"model_config": {}, "model": _NotATensor()}, handle, pickle_module=pickle)
    with pytest.raises(ValueError, match=message) as error:
        load_checkpoint(path)
    assert str(path) in str(error.value)


def test_migrate_leaves_the_current_format_alone():
    payload = load_checkpoint(V1)
    assert migrate(payload) is payload
