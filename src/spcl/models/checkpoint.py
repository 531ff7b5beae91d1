"""Reading a checkpoint and rebuilding the encoder it describes: what using a trained model needs.

A checkpoint (written by ``spcl.training``, format in ``spcl.training.checkpoint``) is a dict of
plain values and tensors with a ``format_version``, a ``model`` description (architecture, feature
size, BN domains, images per BN, preprocessing: enough to rebuild the encoder without the training
config), the weights (``state_dict``) and a ``checksum`` of everything else. Reading lives here,
below training, so that the model tools (``spcl.inference``) never import the trainer.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spcl.config import ModelConfig
from spcl.models.backbones import Pretrained, backbone_normalization
from spcl.models.dsbn import convert_dsbn
from spcl.models.encoder import build_encoder
from spcl.models.images_per_bn import set_images_per_bn

__all__ = [
    "FORMAT_VERSION",
    "READABLE_VERSIONS",
    "CheckpointError",
    "build_model",
    "checksum",
    "describe_model",
    "load_checkpoint",
    "load_model",
    "model_normalization",
]

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)


class CheckpointError(ValueError):
    """A checkpoint is unreadable, of another format, or does not match the run that loads it."""


def checksum(state: dict[str, Any]) -> str:
    """A hash of a checkpoint's contents (its ``checksum`` entry aside): tensors by dtype, shape and
    bytes, everything else by its repr."""
    digest = hashlib.blake2b(digest_size=16)

    def walk(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            tensor = value.detach().cpu().contiguous()
            digest.update(f"T{tensor.dtype}{tuple(tensor.shape)}".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().data)
        elif isinstance(value, dict):
            digest.update(b"{")
            for key in sorted(value, key=repr):
                if key != "checksum" or value is not state:
                    digest.update(repr(key).encode())
                    walk(value[key])
            digest.update(b"}")
        elif isinstance(value, (list, tuple)):
            digest.update(b"[")
            for item in value:
                walk(item)
            digest.update(b"]")
        else:
            digest.update(repr(value).encode())

    walk(state)
    return digest.hexdigest()


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The checkpoint's dict, read without unpickling code and checked against its checksum; any
    other file, or a damaged one, is a ``CheckpointError`` that says which."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): its write was interrupted")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        text = str(exc)
        if "Unsupported global" in text:
            reason = ("it holds pickled Python objects, not only tensors and plain values, so it was not "
                      "written by spcl (spcl never runs code from a checkpoint)")
        else:
            detail = text.split("WeightsUnpickler error:")[-1].strip().split(". ")[0][:160] if text else type(exc).__name__
            reason = f"truncated, damaged or not a checkpoint ({detail})"
        raise CheckpointError(f"cannot read {path}: {reason}") from None
    if not isinstance(state, dict) or state.get("format_version") not in READABLE_VERSIONS:
        found = state.get("format_version") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(
            f"{path} is not an spcl checkpoint of format {FORMAT_VERSION} (found {found!r})"
        )
    if "checksum" in state and checksum(state) != state["checksum"]:
        raise CheckpointError(f"{path} is damaged: its contents do not match their checksum")
    return state


def model_normalization(model: ModelConfig) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The (mean, std) a run normalises its images with: ``model.input_mean`` / ``input_std``
    where given, else what the architecture's weights were trained with."""
    mean, std = backbone_normalization(model.arch)
    return tuple(model.input_mean) or mean, tuple(model.input_std) or std


def describe_model(model: ModelConfig, bn_domains: int, height: int, width: int) -> dict[str, Any]:
    """The description a checkpoint carries of its encoder, from the run's model settings.

    ``out_features`` depends on the backbone and is None here; the trainer records it once the
    encoder exists (:func:`build_model` does not need it).
    """
    mean, std = model_normalization(model)
    return {
        "arch": model.arch,
        "img_size": [height, width],
        "drop_path": model.drop_path,
        "grad_checkpointing": model.grad_checkpointing,
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
            "mean": list(mean),
            "std": list(std),
        },
    }


def build_model(
    description: dict[str, Any], pretrained: Pretrained = False, *, freeze_dsbn_neck_bias: bool = False
) -> nn.Module:
    """The encoder a description names: backbone and neck, DSBN, images per BN (weights are loaded
    by the caller). The trainer builds its model through this function too.

    ``freeze_dsbn_neck_bias`` matters for training only: False reproduces the reference, where
    converting to DSBN makes the neck's bias trainable (docs/method.md#dsbn).
    """
    prep = description.get("preprocessing", {})
    model = build_encoder(
        description["arch"],
        pretrained=pretrained,
        pooling=description["pooling"],
        features=description["features"],
        dropout=description["dropout"],
        img_size=tuple(description.get("img_size") or (prep.get("height", 256), prep.get("width", 128))),
        drop_path=description.get("drop_path"),
        grad_checkpointing=bool(description.get("grad_checkpointing", False)),
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
