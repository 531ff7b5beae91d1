"""Data: dataset readers, the built-in synthetic domains, the sampler and the transforms
(docs/method.md#training-loop, docs/datasets.md).

``spcl.data.load("market1501", root)`` reads a dataset by name; ``spcl.data.load(path)`` detects the
layout of a folder or a CSV manifest.  New readers plug in with ``register_dataset``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from spcl.data import cuhk03 as _cuhk03  # noqa: F401  (registers CUHK03)
from spcl.data import datasets as _datasets  # noqa: F401  (registers the built-in readers)
from spcl.data import small_sets as _small_sets  # noqa: F401  (registers CUHK01/02, VIPeR, GRID, PRID, iLIDS)
from spcl.data.base import (
    Dataset,
    DatasetError,
    Item,
    camera_codes,
    combine_sources,
    detect_layouts,
    get_reader,
    register_dataset,
    registered_datasets,
    relabel_train,
)
from spcl.data.image_dataset import ImageDataset, read_image

__all__ = [
    "Dataset",
    "DatasetError",
    "ImageDataset",
    "Item",
    "camera_codes",
    "combine_sources",
    "dataset_options",
    "load",
    "read_image",
    "register_dataset",
    "registered_datasets",
    "relabel_train",
]

_DETECT_ORDER = ("veri", "folder", "market-style")


def _reader_options(reader: Callable[..., Dataset]) -> tuple[list[str], bool]:
    """The options a reader names after its root, and whether it takes any other keyword too."""
    parameters = list(inspect.signature(reader).parameters.values())[1:]
    named = [p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return named, any(p.kind is p.VAR_KEYWORD for p in parameters)


def _check_options(name: str, reader: Callable[..., Dataset], options: dict[str, Any]) -> None:
    """An option the reader does not take is a clear error, not a TypeError from inside it."""
    accepted, takes_any = _reader_options(reader)
    if takes_any:
        return
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        takes = f"its options are {', '.join(accepted)}" if accepted else "it takes no options"
        raise DatasetError(f"option {', '.join(unknown)} does not apply to the dataset {name} ({takes})")


def dataset_options(name: str) -> set[str]:
    """The options the reader registered as ``name`` takes by name (``split``, ``protocol``, ...);
    empty for a path or an unknown name. A caller with settings for many datasets passes each reader
    only its own."""
    entry = get_reader(str(name))
    return set(_reader_options(entry.reader)[0]) if entry is not None else set()


def _read_as(name: str, path: Path, options: dict[str, Any]) -> Dataset:
    entry = get_reader(name)
    assert entry is not None
    _check_options(name, entry.reader, options)
    return entry.reader(path, **options)


def load(name_or_path: str | Path, root: str | Path | None = None, **options) -> Dataset:
    """Read a dataset by registered name (from ``root``, default ``data``) or by path.

    A path may be a CSV manifest, an image-folder layout, a Market-1501-style folder, or a folder in one
    of the registered layouts.  ``options`` go to the reader (e.g. ``test_size`` and ``draw`` for vehicleid).
    """
    key = str(name_or_path)
    if get_reader(key) is not None:
        data_root = Path(root) if root is not None else Path("data")
        return _read_as(key, data_root.expanduser(), options)
    path = Path(key).expanduser()
    if root is not None and not path.is_absolute() and not path.exists():
        path = Path(root) / path
    if path.is_file() and path.suffix.lower() == ".csv":
        return _read_as("manifest", path, options)
    if path.is_dir():
        if (path / "manifest.csv").is_file():
            return _read_as("manifest", path / "manifest.csv", options)
        found = detect_layouts(path)
        for name in _DETECT_ORDER + tuple(sorted(found)):
            if name in found:
                return _read_as(name, path, options)
        raise DatasetError(
            f"{path}: could not recognise the layout. Expected one of: a manifest.csv "
            "(columns path,split,pid[,camid]); folders train/, query/, gallery/ with one sub-folder per "
            "identity; the Market-1501 layout bounding_box_train/, query/, bounding_box_test/; or a dataset "
            f"name ({', '.join(registered_datasets())}) with --data-root pointing at the folder that holds it."
        )
    raise DatasetError(
        f"{key!r} is neither a known dataset ({', '.join(registered_datasets())}) nor an existing "
        "folder or CSV manifest"
    )
