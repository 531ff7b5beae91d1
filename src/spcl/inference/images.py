"""The images a user points a trained model at: a folder, a manifest, a list file or one image.

``spcl extract``, ``spcl search`` and :class:`~spcl.inference.FeatureExtractor` take any of these:

- a folder: every image under it, recursively, in sorted order. File names in the Market-1501
  convention (``0001_c1s1_000151_01.jpg``: identity, then ``c`` and the camera) give each image
  its identity and camera, so that matches can be judged; other names leave both unknown.
- a CSV file with a ``path`` column (relative to the CSV's folder) and optional ``pid`` and
  ``camid`` columns: the dataset manifest of ``spcl train`` is one (its ``split`` column is kept
  in file order, not used).
- a text file with one image path per line (relative to the file's folder; ``#`` starts a comment).
- one image file.

Unknown identities and cameras are -1.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from spcl.data.base import IMAGE_SUFFIXES, DatasetError, list_images, read_csv_rows

__all__ = ["ImageList", "list_input_images"]

_MARKET_NAME = re.compile(r"^(-?\d+)_c(\d+)")


@dataclass
class ImageList:
    """Paths with their identity and camera (-1: unknown), in a fixed order."""

    paths: list[str]
    pids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    camids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def __post_init__(self) -> None:
        n = len(self.paths)
        self.pids = np.full(n, -1, dtype=np.int64) if len(self.pids) == 0 and n else np.asarray(self.pids, np.int64)
        self.camids = np.full(n, -1, dtype=np.int64) if len(self.camids) == 0 and n else np.asarray(self.camids, np.int64)
        if len(self.pids) != n or len(self.camids) != n:
            raise ValueError(f"{n} paths but {len(self.pids)} pids and {len(self.camids)} camids")

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def has_identities(self) -> bool:
        return bool(len(self.pids)) and bool((self.pids >= 0).all())


def list_input_images(source: str | Path) -> ImageList:
    """The images of a folder, CSV, list file or single image (see the module docstring)."""
    path = Path(source)
    if path.is_dir():
        images = list_images(path)
        if not images:
            raise DatasetError(f"{path}: no image files ({', '.join(IMAGE_SUFFIXES)}) under this folder")
        return _with_market_names([str(p.resolve()) for p in images])
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such folder or file (expected a folder of images, a .csv, a .txt or an image)")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _read_csv(path)
    if suffix == ".txt":
        return _read_list(path)
    if suffix in IMAGE_SUFFIXES:
        return _with_market_names([str(path.resolve())])
    raise DatasetError(
        f"{path}: expected a folder of images, a .csv with a path column, a .txt list of paths, or an image file"
    )


def _with_market_names(paths: list[str]) -> ImageList:
    """Identities and cameras from Market-1501 style names (``0201_c1s1_002228_00.jpg``), file by
    file: an image named otherwise has an unknown identity and camera (-1)."""
    found = [_MARKET_NAME.match(Path(p).name) for p in paths]
    if not any(found):
        return ImageList(paths)
    pids = np.array([int(m.group(1)) if m else -1 for m in found], dtype=np.int64)
    cams = np.array([int(m.group(2)) if m else -1 for m in found], dtype=np.int64)
    return ImageList(paths, np.where(pids < 0, -1, pids), cams)


def _read_list(path: Path) -> ImageList:
    paths = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        image = (path.parent / text).resolve()
        if not image.is_file():
            raise DatasetError(f"{path}:{lineno}: image {image} does not exist")
        paths.append(str(image))
    if not paths:
        raise DatasetError(f"{path}: the list names no images (one path per line)")
    return _with_market_names(paths)


def _read_csv(path: Path) -> ImageList:
    rows = read_csv_rows(path, ("path",), "path[,pid,camid]")
    paths, pids, cams = [], [], []
    for lineno, row in rows:
        image = (path.parent / row["path"]).resolve()
        if not row["path"] or not image.is_file():
            raise DatasetError(f"{path}:{lineno}: image {image} does not exist")
        paths.append(str(image))
        for key, out in (("pid", pids), ("camid", cams)):
            text = row.get(key, "")
            try:
                value = int(text) if text else -1
            except ValueError:
                raise DatasetError(f"{path}:{lineno}: {key} must be an integer or empty, got {text!r}") from None
            if value < -1:
                raise DatasetError(f"{path}:{lineno}: {key} must be >= 0, or -1 / empty when unknown, got {value}")
            out.append(value)
    if not paths:
        raise DatasetError(f"{path}: the CSV lists no images")
    return ImageList(paths, np.array(pids, dtype=np.int64), np.array(cams, dtype=np.int64))
