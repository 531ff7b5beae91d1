"""Random train / test splits that every machine draws the same: seeded, written once, read back.

The small person sets (CUHK01, VIPeR, PRID, iLIDS) come without a split file; their protocol is
"10 random halves of the identities, results averaged". Libraries draw those halves without a
seed, so two papers (or two machines) rarely test on the same identities. Here split ``k`` of a
dataset is drawn by ``numpy.random.default_rng(k)`` (:data:`SPLIT_SEED`) from the sorted list of
its identities, and all 10 are written once to ``splits_<name>.json`` beside the data. Later loads
read that file, so a split stays what it was even if the drawing code changes; a file that does not
match the images found (another copy of the data, images added or lost) is refused, naming it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from spcl.data.base import DatasetError
from spcl.utils.files import OutputError, write_text

__all__ = ["NUM_SPLITS", "SPLIT_SEED", "check_split_index", "draw_id_split", "load_splits"]

NUM_SPLITS = 10
"""Random splits of each small set (the domain-generalisation protocol averages over them)."""

SPLIT_SEED = "numpy.random.default_rng(k) for split k, drawn from the identities in ascending order"
"""How split ``k`` is drawn; written into every split file."""

_FORMAT = 1
_log = logging.getLogger(__name__)


def check_split_index(name: str, split: int, count: int = NUM_SPLITS) -> int:
    """``split`` as an int in 0..count-1, or a DatasetError that says what is expected."""
    if isinstance(split, bool) or not isinstance(split, (int, np.integer)) or not 0 <= split < count:
        raise DatasetError(f"{name}: split must be an integer in 0..{count - 1}, got {split!r}")
    return int(split)


def draw_id_split(ids: Sequence[int], num_train: int, k: int) -> dict[str, list[int]]:
    """Split ``k``: ``num_train`` identities for training, the rest for testing (both ascending).

    The identities are sorted first, so the draw depends on the set of identities only, never on the
    order a folder listing returned them in."""
    ordered = np.array(sorted(int(i) for i in ids), dtype=np.int64)
    order = np.random.default_rng(k).permutation(len(ordered))
    return {
        "train": sorted(int(i) for i in ordered[order[:num_train]]),
        "test": sorted(int(i) for i in ordered[order[num_train:]]),
    }


def load_splits(
    folder: Path,
    name: str,
    identities: Sequence[int],
    draw: Callable[[int], dict[str, Any]],
    check: Callable[[dict[str, Any]], str | None] | None = None,
    num_splits: int = NUM_SPLITS,
) -> list[dict[str, Any]]:
    """The ``num_splits`` splits of dataset ``name`` from ``folder/splits_<name>.json``, drawn with
    ``draw(k)`` and written there first when the file does not exist.

    ``identities`` are the dataset's identities as found on disk: the file records them, and a file
    whose identities differ is refused. ``check(split)`` may refuse a split for another reason
    (e.g. an image it names is missing) by returning what is wrong. A data folder that cannot be
    written (a read-only mount) still gets the same splits, drawn again at every load, with a note.
    """
    path = folder / f"splits_{name}.json"
    found = sorted(int(i) for i in identities)
    if path.is_file():
        splits = _read(path, name, found, num_splits)
    else:
        splits = [draw(k) for k in range(num_splits)]
        record = {"dataset": name, "format": _FORMAT, "seed": SPLIT_SEED, "identities": found, "splits": splits}
        try:
            write_text(path, json.dumps(record, indent=1) + "\n", what="the split file")
        except OutputError as exc:
            _log.warning("note: %s; the seeded splits are drawn again at every load", exc)
    if check is not None:
        for k, split in enumerate(splits):
            problem = check(split)
            if problem:
                raise DatasetError(
                    f"{path}: split {k} does not match the images found ({problem}). The file belongs to another "
                    "copy of the data; restore the images, or delete the file to draw the splits again"
                )
    return splits


def _read(path: Path, name: str, found: list[int], num_splits: int) -> list[dict[str, Any]]:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        saved = [int(i) for i in record["identities"]]
        splits = list(record["splits"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DatasetError(
            f"{path}: not a split file of spcl ({type(exc).__name__}: {exc}); delete it to draw the splits again"
        ) from None
    if saved != found:
        missing, extra = sorted(set(saved) - set(found)), sorted(set(found) - set(saved))
        what = "; ".join(
            part for part in (
                f"{len(missing)} of its identities are not in the images (e.g. {missing[:5]})" if missing else "",
                f"{len(extra)} identities of the images are not in it (e.g. {extra[:5]})" if extra else "",
            ) if part
        )
        raise DatasetError(
            f"{path}: the split file was drawn for {len(saved)} identities of {name}, the images have "
            f"{len(found)}: {what}. It belongs to another copy of the data; restore the images, or delete "
            "the file to draw the splits again"
        )
    if len(splits) < num_splits or not all(isinstance(s, dict) for s in splits):
        raise DatasetError(f"{path}: expected {num_splits} splits, found {len(splits)}; delete it to draw them again")
    return splits[:num_splits]
