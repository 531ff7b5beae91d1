"""Feature files (``spcl extract``): the features of a list of images, with the paths and what is
known of each image, in one ``.npz`` file, and an extraction that survives being interrupted.

File format (numpy ``.npz``, readable without this package, ``allow_pickle=False``):

- ``features``: float32, N x d, L2-normalised rows, in the order of ``paths``;
- ``paths``: N unicode strings (absolute paths);
- ``pids``, ``camids``: int64, N each, -1 where unknown;
- ``meta``: one JSON string: the checkpoint, its architecture, the preprocessing, the BN domain.

An extraction writes its work in chunks of images into ``<out>.partial/`` as it goes (each chunk
atomically) and assembles the file at the end; run again after an interruption, it continues
after the last finished chunk. A partial folder left by another job (other images, or the same
paths with other contents, checkpoint or domain) is started afresh. The output path is checked
before the first image is read (not the checkpoint, not a folder, writable, room on the disk).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spcl.inference.extractor import FeatureExtractor
from spcl.inference.images import ImageList
from spcl.utils import progress as show_progress
from spcl.utils.files import atomic_output, check_output, check_space

__all__ = ["FeatureSet", "extract_to_file", "load_features"]

CHUNK = 2048  # images per finished piece of an extraction: what an interruption can lose at most


@dataclass
class FeatureSet:
    """Features with the images they belong to (see the module docstring for the file format)."""

    features: np.ndarray
    images: ImageList
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.images)

    def save(self, path: str | Path) -> Path:
        """Write the ``.npz`` file atomically (see ``spcl.utils.files.atomic_output``): a failure
        names the file and leaves neither half a file nor a temporary one."""
        path = Path(path)
        with atomic_output(path, what="the feature file") as tmp, open(tmp, "wb") as fh:
            np.savez(
                fh, features=self.features, paths=np.array(self.images.paths, dtype=str), pids=self.images.pids,
                camids=self.images.camids, meta=np.array(json.dumps(self.meta)),
            )
            fh.flush()
            os.fsync(fh.fileno())
        return path

    def nbytes(self) -> int:
        """About the size of its file: the features and the paths."""
        return int(self.features.nbytes) + _paths_bytes(self.images.paths)


def _paths_bytes(paths: list[str]) -> int:
    """About the bytes the paths take in a feature file (numpy stores them as UTF-32)."""
    return sum(len(p) * 4 + 16 for p in paths)


def load_features(path: str | Path) -> FeatureSet:
    """Read a feature file written by ``spcl extract``; a file of another kind says what was expected."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such feature file (a .npz written by spcl extract)")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = {"features", "paths"} - set(data.files)
            if missing:
                raise _NotFeatures(f"{path}: not a feature file of spcl extract (no {', '.join(sorted(missing))} array)")
            features = np.asarray(data["features"], dtype=np.float32)
            paths = [str(p) for p in data["paths"]]
            pids = data["pids"] if "pids" in data.files else np.zeros(0, np.int64)
            camids = data["camids"] if "camids" in data.files else np.zeros(0, np.int64)
            meta = json.loads(str(data["meta"])) if "meta" in data.files else {}
    except _NotFeatures:
        raise
    except Exception as exc:  # noqa: BLE001  (truncated zip, damaged array, bad JSON: all name the file)
        raise ValueError(
            f"{path}: cannot read it as a feature file of spcl extract: it is truncated or damaged "
            f"({type(exc).__name__}: {exc}); extract it again"
        ) from None
    if features.ndim != 2 or len(features) != len(paths):
        raise ValueError(f"{path}: {features.shape} features for {len(paths)} paths (expected N x d, one row per path)")
    return FeatureSet(features, ImageList(paths, pids, camids), meta)


class _NotFeatures(ValueError):
    pass


def _job_key(extractor: FeatureExtractor, images: ImageList) -> str:
    """What the partial results depend on: the images in order with each file's size and time of
    change (an image replaced under the same name changes the key), the checkpoint file, the domain."""
    h = hashlib.sha256()
    stat = extractor.checkpoint.stat()
    h.update(f"{extractor.checkpoint.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{extractor.domain}|".encode())
    h.update(repr(extractor.preprocessing).encode())
    for p in images.paths:
        try:
            image = os.stat(p)
            h.update(f"{p}|{image.st_size}|{image.st_mtime_ns}".encode())
        except OSError:
            h.update(f"{p}|missing".encode())  # the extraction itself names it
        h.update(b"\0")
    return h.hexdigest()


def _meta(extractor: FeatureExtractor, key: str) -> dict[str, Any]:
    p = extractor.preprocessing
    return {
        "checkpoint": str(extractor.checkpoint.resolve()),
        "arch": extractor.state["model"]["arch"],
        "domain": extractor.domain,
        "feature_dim": extractor.feature_dim,
        "preprocessing": {"height": p.height, "width": p.width, "interpolation": p.interpolation,
                          "mean": list(p.mean), "std": list(p.std)},
        "job": key,
    }


def _save_chunk(folder: Path, index: int, features: np.ndarray) -> None:
    with atomic_output(folder / f"{index:06d}.npy", what="a finished chunk of the extraction") as tmp, \
            open(tmp, "wb") as fh:
        np.save(fh, features)
        fh.flush()
        os.fsync(fh.fileno())


def extract_to_file(
    extractor: FeatureExtractor,
    images: ImageList,
    out: str | Path,
    *,
    chunk: int = CHUNK,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> FeatureSet:
    """Features of ``images`` into ``out`` (``.npz``), continuing an interrupted run of the same job."""
    if chunk < 1:
        raise ValueError(f"chunk must be at least 1, got {chunk}")
    out = Path(out)
    if not len(images):
        raise ValueError("no images to extract features from")
    check_output(out, inputs=[extractor.checkpoint], what="the feature file")
    if str(out.resolve()) in set(images.paths):
        raise ValueError(f"the feature file {out} is one of the images to extract: choose another file")
    partial = out.with_name(out.name + ".partial")
    key = _job_key(extractor, images)
    job_file = partial / "job.json"
    if partial.is_dir():
        try:
            job = json.loads(job_file.read_text())
        except (OSError, ValueError):
            job = {}
        if job.get("key") != key or job.get("chunk") != chunk:
            log(f"{partial}: a partial extraction of another job (images, checkpoint or domain): starting afresh")
            shutil.rmtree(partial)
    partial.mkdir(parents=True, exist_ok=True)
    if not job_file.exists():
        job_file.write_text(json.dumps({"key": key, "chunk": chunk, "images": len(images)}))
    num_chunks = -(-len(images) // chunk)
    done = 0
    while done < num_chunks and (partial / f"{done:06d}.npy").is_file():
        done += 1
    if done:
        log(f"continuing an interrupted extraction: {min(done * chunk, len(images))} of {len(images)} images done")
    # the chunks still to write and the assembled file, which exist together until the chunks go
    row_bytes = extractor.feature_dim * 4
    left = max(0, len(images) - done * chunk) * row_bytes
    check_space(out, left + len(images) * row_bytes + _paths_bytes(images.paths), "the feature file")
    start = done * chunk
    pending: list[torch.Tensor] = []
    count = 0
    batches = extractor.batches(images.paths[start:], progress=False) if start < len(images) else iter(())
    bar = show_progress(batches, "extract", total=-(-(len(images) - start) // extractor.batch_size), enabled=progress)
    for batch in bar:
        pending.append(batch)
        count += len(batch)
        while count >= chunk or (count and start + count >= len(images)):
            block = torch.cat(pending)
            take = min(chunk, len(block))
            _save_chunk(partial, done, block[:take].numpy())
            done, start, count = done + 1, start + take, count - take
            pending = [block[take:]] if count else []
    # assembled in memory (no memory-mapped file: a full disk must be an error, not a SIGBUS)
    features = np.empty((len(images), extractor.feature_dim), dtype=np.float32)
    for i in range(num_chunks):
        piece = np.load(partial / f"{i:06d}.npy")
        features[i * chunk : i * chunk + len(piece)] = piece
    result = FeatureSet(features, images, _meta(extractor, key))
    check_space(out, result.nbytes(), "the feature file")
    try:
        result.save(out)
    except OSError as exc:
        raise type(exc)(exc.errno, f"{exc}; the {len(images)} extracted images are kept in {partial}: run the same "
                        "command again to write the file without extracting them again", str(out)) from exc
    shutil.rmtree(partial)
    return result
