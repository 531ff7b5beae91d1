"""The dataset record every reader returns, and the registry that maps names to readers (docs/datasets.md).

A dataset is three lists of ``(path, pid, camid)``.  The training list is sorted by path and its
identities relabelled to 0..n-1, so memory slots, pseudo labels and checkpoints refer to the same
images on every run and every machine; query and gallery keep their original identities.

A camera of ``None`` means "unknown" (VehicleID, image folders, manifests without ``camid``), from
the reader to the metrics: such an image counts as its own camera, so the evaluation's
same-camera filter never removes its true matches and the sampler may pair it with any image.
"""

from __future__ import annotations

import csv
import hashlib
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

Item = tuple[str, int, int | None]
"""One image: (absolute path, identity, camera).  Unlabelled training images have identity -1;
camera None: unknown (the image is its own camera)."""

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
"""File endings read as images in dataset folders (any format Pillow decodes is read from a manifest)."""
_NOT_DATA = {"thumbs.db", "desktop.ini"}


class DatasetError(ValueError):
    """A dataset could not be read as the layout it claims to be; the message says what was expected."""


@dataclass
class Dataset:
    """Train / query / gallery lists of one dataset, ready for training and evaluation."""

    name: str
    root: str
    train: list[Item]
    query: list[Item] = field(default_factory=list)
    gallery: list[Item] = field(default_factory=list)
    test: list[Item] = field(default_factory=list)
    """The whole test list, for a protocol that redraws query and gallery from it (VehicleID: one
    gallery image per identity, averaged over 10 seeded draws; query/gallery then hold one draw).
    Empty for datasets with a fixed query/gallery split."""
    skipped: list[str] = field(default_factory=list)
    """Files found in the dataset's folders that are not read (not an image ending, or an image that
    cannot be decoded when bad images are skipped): listed, never dropped silently."""
    parts: list[tuple[str, int]] = field(default_factory=list)
    """For several sources combined into one (:func:`combine_sources`): each source's name and its
    number of training images, in the order the training list holds them. Empty otherwise."""

    @property
    def num_train_pids(self) -> int:
        """Number of labelled training identities (unlabelled images, pid -1, are not counted)."""
        return len({pid for _, pid, _ in self.train if pid >= 0})

    def fingerprint(self) -> str:
        """A short hash of the training list, so a checkpoint can tell whether it matches the data."""
        digest = hashlib.sha256()
        root = Path(self.root)
        for path, pid, cam in self.train:
            try:
                rel = str(Path(path).relative_to(root))
            except ValueError:
                rel = path
            digest.update(f"{rel}\t{pid}\t{cam}\n".encode())
        return digest.hexdigest()[:16]

    def statistics(self) -> dict[str, dict[str, int]]:
        """Images, identities and cameras per split, as printed by ``spcl data-info``."""
        stats = {}
        for split in ("train", "query", "gallery"):
            items = getattr(self, split)
            stats[split] = {
                "images": len(items),
                "ids": len({pid for _, pid, _ in items if pid >= 0}),
                "unlabelled": sum(1 for _, pid, _ in items if pid < 0),
                "cameras": len({cam for _, _, cam in items if cam is not None}),
            }
        return stats

    def format_statistics(self) -> str:
        stats = self.statistics()
        lines = [
            f"dataset {self.name} ({self.root})",
            "  split   | images  | ids    | cameras",
            "  --------+---------+--------+--------",
        ]
        any_unknown = False
        for split, s in stats.items():
            unknown = sum(1 for _, _, cam in getattr(self, split) if cam is None)
            any_unknown |= unknown > 0
            cams = str(s["cameras"]) if s["cameras"] or not s["images"] else "none"
            extra = f"  (+{s['unlabelled']} unlabelled)" if s["unlabelled"] else ""
            if s["cameras"] and unknown:
                extra += f"  ({unknown} of unknown camera)"
            lines.append(f"  {split:<7} | {s['images']:>7} | {s['ids']:>6} | {cams:>7}{extra}")
        if any_unknown:
            lines.append("  images of unknown camera count as their own camera in evaluation")
        if self.skipped:
            shown = ", ".join(self.skipped[:3]) + (", ..." if len(self.skipped) > 3 else "")
            lines.append(f"  skipped {len(self.skipped)} files: {shown}")
        return "\n".join(lines)


def camera_codes(camids: Sequence[Any]) -> np.ndarray:
    """Cameras (ints or strings) as int64 codes where an unknown camera (None) never equals any other.

    Known cameras map to 0..K-1 in ascending order; the i-th image of unknown camera gets K + i. The
    sampler's "other camera" rule and the evaluation's same-camera filter then need no special case.
    """
    unknown = np.fromiter((c is None for c in camids), dtype=bool, count=len(camids))
    if unknown.any():
        known = np.asarray([c for c, missing in zip(camids, unknown) if not missing])
    else:  # the common case, kept vectorised
        known = np.asarray(camids)
    try:
        values, inverse = np.unique(known, return_inverse=True)
    except TypeError as error:
        raise ValueError(f"cameras must be comparable labels of one kind (ints or strings): {error}") from None
    codes = np.empty(len(camids), dtype=np.int64)
    codes[~unknown] = inverse.reshape(-1)
    codes[unknown] = len(values) + np.arange(int(unknown.sum()))
    return codes


def relabel_train(items: Iterable[Item]) -> list[Item]:
    """Sort by path and map the labelled identities to 0..n-1 in ascending order of the original id."""
    items = sorted(items, key=lambda it: it[0])
    pids = sorted({pid for _, pid, _ in items if pid >= 0})
    mapping = {pid: i for i, pid in enumerate(pids)}
    return [(path, mapping[pid] if pid >= 0 else -1, cam) for path, pid, cam in items]


def combine_sources(datasets: Sequence[Dataset]) -> Dataset:
    """Several labelled datasets as one source with more classes.

    Each dataset's training identities follow the previous ones' (0..n1-1, then n1..n1+n2-1, ...),
    so two sources never share a class even when their numbers coincide; cameras and test
    identities are shifted the same way. The training lists are concatenated in the given order
    (each stays sorted by path), and ``parts`` records where each one lies, so a trainer can give
    each source its own batches and BatchNorm. One dataset is returned as it is.
    """
    if not datasets:
        raise ValueError("combine_sources needs at least one dataset")
    if len(datasets) == 1:
        return datasets[0]
    names = [d.name for d in datasets]
    if len(set(names)) < len(names):
        raise DatasetError(f"the sources {', '.join(names)} name one dataset twice")
    combined = Dataset(name="+".join(names), root="", train=[], skipped=[])
    pid_base = test_base = cam_base = 0
    for data in datasets:
        items = data.train + data.query + data.gallery + data.test
        cams = [cam for _, _, cam in items if cam is not None]
        test_ids = [pid for _, pid, _ in data.query + data.gallery + data.test if pid >= 0]

        def shift(item: Item, pid_offset: int) -> Item:
            path, pid, cam = item
            return path, pid + pid_offset if pid >= 0 else -1, None if cam is None else cam + cam_base

        combined.train += [shift(it, pid_base) for it in data.train]
        for split in ("query", "gallery", "test"):
            getattr(combined, split).extend(shift(it, test_base) for it in getattr(data, split))
        combined.skipped += data.skipped
        combined.parts.append((data.name, len(data.train)))
        pid_base += data.num_train_pids
        test_base += max(test_ids, default=-1) + 1
        cam_base += max(cams, default=-1) + 1
    try:
        combined.root = os.path.commonpath([d.root for d in datasets])
    except ValueError:  # roots on different drives
        combined.root = datasets[0].root
    return combined


Reader = Callable[..., Dataset]


@dataclass(frozen=True)
class _Entry:
    reader: Reader
    detect: Callable[[Path], bool] | None
    description: str


_REGISTRY: dict[str, _Entry] = {}


def register_dataset(
    name: str, detect: Callable[[Path], bool] | None = None, description: str = ""
) -> Callable[[Reader], Reader]:
    """Register ``reader(root: Path, **options) -> Dataset`` under ``name``.

    ``detect(folder)`` says whether a folder holds this layout, so ``load(path)`` can find the reader
    without being told.  Registering a name twice is an error, to keep readers from shadowing each other.
    """

    def wrap(reader: Reader) -> Reader:
        key = name.lower()
        if key in _REGISTRY:
            raise ValueError(f"a dataset reader named {name!r} is already registered")
        _REGISTRY[key] = _Entry(reader, detect, description or (reader.__doc__ or "").strip().split("\n")[0])
        return reader

    return wrap


def registered_datasets() -> dict[str, str]:
    """Names of the known datasets and a one-line description of each."""
    return {name: entry.description for name, entry in sorted(_REGISTRY.items())}


def get_reader(name: str) -> _Entry | None:
    return _REGISTRY.get(name.lower())


def detect_layouts(folder: Path) -> list[str]:
    return [name for name, entry in _REGISTRY.items() if entry.detect is not None and entry.detect(folder)]


def locate_folder(root: Path, folder: str, markers: Sequence[str], aliases: Sequence[str] = ()) -> Path:
    """Find the dataset folder whether ``root`` is the folder itself, its parent, or ``root/<alias>/``.

    The reference code and torchreid nest datasets differently (``data/market1501/Market-1501-v15.09.15``
    vs ``data/Market-1501-v15.09.15``); accepting both saves users from moving gigabytes around.
    """
    candidates = [root, root / folder] + [root / a / folder for a in aliases] + [root / a for a in aliases]
    for cand in candidates:
        if all((cand / m).exists() for m in markers):
            return cand
    looked = ", ".join(str(c) for c in dict.fromkeys(candidates))
    raise DatasetError(
        f"expected a folder {folder!r} containing {', '.join(markers)}; looked in: {looked}. "
        f"Pass the folder that contains {folder!r} as the data root."
    )


def list_images(folder: Path, skipped: list[str] | None = None) -> list[Path]:
    """All image files under ``folder`` (recursively), sorted. Other files are appended to
    ``skipped``, except those that are never data (hidden files, Thumbs.db, desktop.ini)."""
    images = []
    for path in sorted(folder.rglob("*")):
        if not path.is_file():
            continue
        if path.suffix.lower() in IMAGE_SUFFIXES:
            images.append(path)
        elif skipped is not None:
            note_skipped(path, skipped)
    return images


def note_skipped(path: Path, skipped: list[str]) -> None:
    """Record a file of a dataset folder that is not read, unless it is never data (hidden files,
    Thumbs.db, desktop.ini)."""
    if not path.name.startswith(".") and path.name.lower() not in _NOT_DATA:
        skipped.append(str(path))


def require_dirs(base: Path, names: Sequence[str], layout: str) -> None:
    """Fail with the full expected layout when a folder is missing, instead of an empty dataset."""
    missing = [n for n in names if not (base / n).is_dir()]
    if missing:
        raise DatasetError(
            f"{layout}: expected folders {', '.join(names)} under {base}, "
            f"but {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing"
        )


def read_csv_rows(path: Path, required: Sequence[str], layout: str) -> list[tuple[int, dict[str, str]]]:
    """The rows of a CSV file as (line number, stripped cells by stripped column name).

    Files from spreadsheets read as plain CSV (UTF-8 byte-order mark, Windows line ends); a file
    that is not UTF-8 text, not CSV, or lacks one of ``required`` columns is refused with the
    expected ``layout`` (e.g. "path,split,pid[,camid]") in the message."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            columns = [c.strip() for c in (reader.fieldnames or [])]
            if not set(required).issubset(columns):
                raise DatasetError(f"{path}: expected columns {layout}, found {','.join(columns) or 'none'}")
            return [
                (reader.line_num, {k.strip(): (v or "").strip() for k, v in row.items() if k is not None})
                for row in reader
            ]
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not a UTF-8 text file ({exc.reason} at byte {exc.start})") from None
    except csv.Error as exc:
        raise DatasetError(f"{path}: not a readable CSV file ({exc})") from None
