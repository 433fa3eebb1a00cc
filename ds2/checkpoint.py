"""Checkpoints: a model's weights with everything needed to use it, in a versioned format.

A checkpoint is a dict of tensors and plain containers (it loads with
``torch.load(..., weights_only=True)``; nothing in it is code)::

    {
      "format": "ds2-checkpoint", "version": 2, "ds2_version": "0.1.0",
      "model_config": {...},        # ModelConfig.to_dict(), the alphabet included
      "features": {...},            # ds2.features.FEATURES the model was trained on
      "model": state_dict,
      "training": None | {          # what --resume needs; best.pt keeps it without optimizer
          "config": {...}, "state": {...}, "optimizer": state_dict | None,
          "rng": {...}, "ctc_backend": "numba" | "cuda" | "torch" | None,
      },
    }

Older formats are migrated when loaded (:func:`migrate`), so a checkpoint written by an
earlier ds2 loads and decodes exactly as it did. Version 1 (before the format field): the
training entries at the top level (``optimizer``, ``train_state``, ``train_config``, ``rng``)
and no ``features``; its features were those of FEATURES today.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ds2 import __version__
from ds2.features import FEATURES
from ds2.io import atomic_write, load_torch_file
from ds2.model import DeepSpeech2, ModelConfig
from ds2.text import Alphabet

FORMAT = "ds2-checkpoint"
VERSION = 2


def save_checkpoint(path: str | Path, model: DeepSpeech2, training: dict | None = None) -> None:
    """Write ``model`` (and, for resuming, ``training``: config, state, optimizer, rng,
    ctc_backend) to ``path`` atomically."""
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "ds2_version": __version__,
        "model_config": model.config.to_dict(),
        "features": features_of(model.config.normalize),
        "model": model.state_dict(),
        "training": training,
    }
    with atomic_write(path, "wb") as handle:
        torch.save(payload, handle)


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Read a checkpoint safely (no pickled code) and migrate it to the current format.

    Raises ValueError naming the file when it is missing, unreadable, not a ds2 checkpoint,
    from a newer ds2, or made for other features.
    """
    payload = load_torch_file(path, "ds2 checkpoint", map_location)
    if not isinstance(payload, dict) or "model_config" not in payload or "model" not in payload:
        raise ValueError(f"{path}: not a ds2 checkpoint (no model_config/model)")
    payload = migrate(payload, path)
    expected = features_of(payload["model_config"].get("normalize", "utterance"))
    if payload["features"] != expected:
        changed = sorted(k for k in expected if payload["features"].get(k) != expected[k])
        raise ValueError(f"{path}: the model was trained on other input features ({', '.join(changed)} differ)")
    return payload


def features_of(normalize: str) -> dict:
    """FEATURES of a model whose features are normalized per ``normalize`` (ModelConfig)."""
    return dict(FEATURES, normalize=normalize)


def migrate(payload: dict, path: str | Path = "checkpoint") -> dict:
    """The current format of a checkpoint dict of any earlier version."""
    version = payload.get("version", 1)
    if not isinstance(version, int) or version > VERSION:
        raise ValueError(f"{path}: checkpoint format version {version} is newer than this ds2 reads ({VERSION}); upgrade ds2")
    if version == 1:
        training = {
            "config": payload.get("train_config"),
            "state": payload.get("train_state"),
            "optimizer": payload.get("optimizer"),
            "rng": payload.get("rng"),
            "ctc_backend": None,  # not recorded before version 2
        }
        payload = {
            "format": FORMAT,
            "version": 2,
            "ds2_version": None,
            "model_config": payload["model_config"],
            "features": dict(FEATURES),
            "model": payload["model"],
            "training": training if training["state"] is not None else None,
        }
    return payload


def model_from_checkpoint(payload: dict, device: str | torch.device = "cpu") -> tuple[DeepSpeech2, Alphabet]:
    """The model of a loaded checkpoint, in eval mode on ``device``, and its alphabet."""
    config = ModelConfig.from_dict(payload["model_config"])
    model = DeepSpeech2(config)
    model.load_state_dict(payload["model"])
    model.to(device).eval()
    return model, Alphabet(config.alphabet)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[DeepSpeech2, Alphabet]:
    """The model of a checkpoint file, in eval mode, and its alphabet."""
    return model_from_checkpoint(load_checkpoint(path), device)
