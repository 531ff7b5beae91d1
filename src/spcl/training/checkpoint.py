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
  and ``rng``. Format 1 kept the trainer's values as top-level keys; it still loads;
- ``checksum``: a hash of everything else, so a damaged file is found (a torch file whose tensor
  bytes were damaged loads without complaint).

Writing goes to a temporary file in the same folder, synced, then renamed over the target: a crash
never leaves half a file under the checkpoint's name. With ``keep_previous`` the file it replaces
is kept as ``<name>.previous.pth``, and :func:`newest_checkpoint` falls back to it when the newest
one is damaged.
"""

from __future__ import annotations

import errno
import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spcl.config import Config, ModelConfig, dotted, load_config
from spcl.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from spcl.models import Pretrained, build_encoder, convert_dsbn, set_images_per_bn
from spcl.utils import fault_point

__all__ = [
    "FORMAT_VERSION",
    "CheckpointError",
    "build_model",
    "checksum",
    "config_of",
    "describe_model",
    "load_checkpoint",
    "load_model",
    "newest_checkpoint",
    "previous_path",
    "remove_stale_temporaries",
    "save_checkpoint",
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


def previous_path(path: str | Path) -> Path:
    """Where :func:`save_checkpoint` keeps the file a new checkpoint replaces (``last.previous.pth``)."""
    path = Path(path)
    return path.with_name(f"{path.stem}.previous{path.suffix}")


def save_checkpoint(state: dict[str, Any], path: str | Path, *, keep_previous: bool = False) -> None:
    """Write ``state`` (and its checksum) to ``path`` atomically; readable as the folder's other files.

    A full disk or an unwritable folder raises ``CheckpointError`` naming the file; the checkpoint
    that was there is left as it was.
    """
    path = Path(path)
    state = {**state, "checksum": checksum(state)}
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        tmp = Path(name)
        with os.fdopen(fd, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a checkpoint is as readable as any file
        fault_point(f"checkpoint:{path.name}")
        if keep_previous and path.exists():
            os.replace(path, previous_path(path))
        os.replace(tmp, path)
        tmp = None
        _sync_folder(path.parent)
    except OSError as exc:
        reason = "no space left on device" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
        kept = f"; {path} is left as it was" if path.exists() else ""
        raise CheckpointError(f"cannot write the checkpoint {path}: {reason}{kept}") from exc
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _sync_folder(folder: Path) -> None:
    """Make the rename itself durable (a power cut after it must not bring the old name back)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


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


def newest_checkpoint(
    path: str | Path, log: Callable[[str], None] = print, map_location: str | torch.device = "cpu"
) -> tuple[dict[str, Any], Path] | None:
    """The checkpoint at ``path``, or the one it replaced when it is damaged (reported through
    ``log``); None when neither exists. Both damaged is an error naming them."""
    path = Path(path)
    candidates = [c for c in (path, previous_path(path)) if c.exists()]
    problems = []
    for candidate in candidates:
        try:
            return load_checkpoint(candidate, map_location), candidate
        except CheckpointError as exc:
            problems.append(str(exc))
            log(f"warning: {exc}; trying the previous checkpoint")
    if problems:
        raise CheckpointError("no readable checkpoint: " + "; ".join(problems))
    return None


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporary files interrupted writes left in ``folder`` (``.last.pth.xyz``,
    ``.metrics.csv.tmp``); returns them."""
    folder = Path(folder)
    stale = [p for p in folder.glob(".*") if p.is_file() and (".pth." in p.name or p.name.endswith(".tmp"))]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


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
    return load_config(overrides=dotted(state["config"]))
