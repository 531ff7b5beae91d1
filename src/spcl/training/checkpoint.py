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

Reading a checkpoint and rebuilding its encoder live below training, in ``spcl.models.checkpoint``
(the model tools need them without the trainer); they are re-exported here.

Writing goes to a temporary file in the same folder, synced, then renamed over the target: a crash
never leaves half a file under the checkpoint's name. With ``keep_previous`` the file it replaces
is kept as ``<name>.previous.pth``, and :func:`newest_checkpoint` falls back to it when the newest
one is damaged.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from spcl.config import Config, dotted, load_config
from spcl.models.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    build_model,
    checksum,
    describe_model,
    load_checkpoint,
    load_model,
)
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


def config_of(state: dict[str, Any]) -> Config:
    """The config of the run that wrote a checkpoint."""
    return load_config(overrides=dotted(state["config"]))
