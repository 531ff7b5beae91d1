"""Self-describing checkpoints, written atomically and read with ``weights_only=True``.

A checkpoint is a dict of plain values and tensors:

- ``format_version``;
- ``model``: the description of the encoder (architecture, feature size, BN domains, images per
  BN, preprocessing), enough to rebuild it without the training config (:func:`build_model`);
- ``config``: the run's effective config; ``fingerprints``: hashes of the training lists, so a
  resume on different data is refused instead of silently mixing memory slots;
- one entry per checkpointable part of the trainer, each that part's ``state_dict()``:
  ``state_dict`` (the encoder's weights), ``optimizer``, ``scheduler``, ``memory``, ``labels``
  (the pseudo-label stage: alpha), ``trainer`` (epoch, best, whether the memory is initialised)
  and ``rng``. Format 1 kept the trainer's values as top-level keys; it still loads.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spcl.config import Config, ModelConfig, load_config
from spcl.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from spcl.models import Pretrained, build_encoder, convert_dsbn, set_images_per_bn

__all__ = [
    "FORMAT_VERSION",
    "CheckpointError",
    "build_model",
    "config_of",
    "describe_model",
    "load_checkpoint",
    "load_model",
    "save_checkpoint",
]

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)


class CheckpointError(ValueError):
    """A checkpoint is unreadable, of another format, or does not match the run that loads it."""


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write to a temporary file in the same folder, then rename: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The checkpoint's dict, read without unpickling code; any other file is a ``CheckpointError``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    if not isinstance(state, dict) or state.get("format_version") not in READABLE_VERSIONS:
        found = state.get("format_version") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(
            f"{path} is not an spcl checkpoint of format {FORMAT_VERSION} (found {found!r})"
        )
    return state


def describe_model(model: ModelConfig, bn_domains: int, height: int, width: int) -> dict[str, Any]:
    """The description a checkpoint carries of its encoder, from the run's model settings.

    ``out_features`` depends on the backbone and is None here; the trainer records it once the
    encoder exists (:func:`build_model` does not need it).
    """
    return {
        "arch": model.arch,
        "features": model.features,
        "out_features": None,
        "pooling": model.pooling,
        "dropout": model.dropout,
        "bn_domains": bn_domains,
        "images_per_bn": model.images_per_bn,
        "preprocessing": {
            "height": height,
            "width": width,
            "interpolation": "bicubic",
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
        },
    }


def build_model(
    description: dict[str, Any], pretrained: Pretrained = False, *, freeze_dsbn_neck_bias: bool = False
) -> nn.Module:
    """The encoder a description names: backbone and neck, DSBN, images per BN (weights are loaded
    by the caller). The trainer builds its model through this function too.

    ``freeze_dsbn_neck_bias`` matters for training only: False reproduces the reference, where
    converting to DSBN makes the neck's bias trainable (SPEC section 5).
    """
    model = build_encoder(
        description["arch"],
        pretrained=pretrained,
        pooling=description["pooling"],
        features=description["features"],
        dropout=description["dropout"],
    )
    if description["bn_domains"] > 1:
        convert_dsbn(model, num_domains=description["bn_domains"], keep_requires_grad=freeze_dsbn_neck_bias)
    set_images_per_bn(model, description["images_per_bn"] or None)
    return model


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """The trained encoder of a checkpoint, in eval mode, and the checkpoint's dict."""
    state = load_checkpoint(path)
    model = build_model(state["model"])
    model.load_state_dict(state["state_dict"])
    return model.to(device).eval(), state


def config_of(state: dict[str, Any]) -> Config:
    """The config of the run that wrote a checkpoint."""
    return load_config(overrides=_flatten(state["config"]))


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out
