"""The domain-generalisation protocol: a model trained elsewhere, tested on small unseen sets.

The multi-source benchmark (Song et al., "Generalizable Person Re-identification by Domain-Invariant
Mapping Network", CVPR 2019) tests on VIPeR (316 / 316), PRID (100 / 649), GRID (125 / 900) and QMUL
iLIDS (60 / 60), each averaged over its 10 splits. The splits overlap in their images, so every image
of a set is encoded once and the 10 splits are scored from those features.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from spcl.data import Dataset, DatasetError, Item, load
from spcl.evaluation.features import extract_features
from spcl.evaluation.metrics import ImageSet, metrics_from_features
from spcl.models import use_domain

__all__ = ["DG_DATASETS", "DG_SPLITS", "evaluate_dg", "evaluate_splits", "format_dg_table", "present_datasets"]

DG_DATASETS = ("viper", "prid", "grid", "ilids")
"""The test sets of the protocol, in the order papers report them."""
DG_SPLITS = 10


def present_datasets(names: Sequence[str], data_root: str | Path) -> tuple[list[str], dict[str, str]]:
    """Which of ``names`` can be read under ``data_root``: (present, {absent name: why})."""
    first, absent = _first_splits(names, data_root)
    return list(first), absent


def _first_splits(names: Sequence[str], data_root: str | Path) -> tuple[dict[str, Dataset], dict[str, str]]:
    """Split 0 of each of ``names`` that has a test split under ``data_root``, and why the others are left out."""
    first, absent = {}, {}
    for name in names:
        try:
            data = load(name, data_root, split=0)
        except DatasetError as exc:
            absent[name] = str(exc)
            continue
        if data.query and data.gallery:
            first[name] = data
        else:  # fast-reid's folders of GRID, PRID, iLIDS: training images only
            absent[name] = f"{data.root} holds training images only (no test split to evaluate on)"
    return first, absent


def evaluate_splits(
    model: nn.Module,
    splits: Sequence[Dataset],
    transform: Callable,
    device: torch.device | str,
    *,
    domain: int = -1,
    batch_size: int = 128,
    workers: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """mAP and CMC of each split of one dataset, and their means; each image is encoded once.

    Returns ``mAP``, ``cmc`` (the means), ``split_mAP`` and ``split_cmc`` (one row per split)."""
    items: dict[str, Item] = {}
    for data in splits:
        if not data.query or not data.gallery:
            raise ValueError(f"{data.name} has no query/gallery split to evaluate on")
        for item in data.query + data.gallery:
            items.setdefault(item[0], item)
    paths = list(items)
    name = splits[0].name.rsplit("-split", 1)[0]
    with use_domain(model, domain):
        features = extract_features(model, list(items.values()), transform, device, batch_size, workers,
                                    f"{name} features", progress)
    row = {path: i for i, path in enumerate(paths)}
    maps, cmcs = [], []
    for data in splits:
        query = ImageSet.from_items(data.query, features[[row[p] for p, _, _ in data.query]])
        gallery = ImageSet.from_items(data.gallery, features[[row[p] for p, _, _ in data.gallery]])
        result = metrics_from_features(query, gallery, "cosine", topk=20, device=device)
        maps.append(float(result["mAP"]))
        cmcs.append(np.asarray(result["cmc"], dtype=np.float64))
    length = min(len(c) for c in cmcs)
    cmc = np.stack([c[:length] for c in cmcs])
    return {"mAP": float(np.mean(maps)), "cmc": cmc.mean(axis=0), "split_mAP": maps, "split_cmc": cmc,
            "num_query": len(splits[0].query), "num_gallery": len(splits[0].gallery)}


def evaluate_dg(
    model: nn.Module,
    data_root: str | Path,
    transform: Callable,
    device: torch.device | str,
    datasets: Sequence[str] = DG_DATASETS,
    *,
    num_splits: int = DG_SPLITS,
    log: Callable[[str], None] = print,
    **options: Any,
) -> dict[str, dict[str, Any]]:
    """Every set of ``datasets`` present under ``data_root``, averaged over its ``num_splits``
    splits (``options`` go to :func:`evaluate_splits`). A set that is absent is said and skipped;
    none present is an error that says where each was looked for."""
    allowed = (*DG_DATASETS, "cuhk01")
    unknown = [name for name in datasets if name not in allowed]
    if unknown or not datasets:
        raise ValueError(
            f"the domain-generalisation protocol tests on {', '.join(allowed)} (10 random splits each), "
            f"not {', '.join(unknown) or 'nothing'}"
        )
    first, absent = _first_splits(datasets, data_root)
    for name, why in absent.items():
        log(f"note: {name} left out: {why}")
    if not first:
        raise DatasetError(
            f"none of the domain-generalisation test sets ({', '.join(datasets)}) is under {data_root}: "
            + "; ".join(f"{name}: {why}" for name, why in absent.items())
        )
    results = {}
    for name, split0 in first.items():
        splits = [split0] + [load(name, data_root, split=k) for k in range(1, num_splits)]
        results[name] = evaluate_splits(model, splits, transform, device, **options)
    return results


def format_dg_table(results: dict[str, dict[str, Any]], ranks: Sequence[int] = (1, 5)) -> str:
    """One row per set (its mAP and CMC ranks averaged over its splits, in %) and their mean."""
    header = f"{'dataset':<8} | splits | query | gallery | {'mAP':>5} | " + " | ".join(f"{'R' + str(r):>5}" for r in ranks)
    lines = [header, "-" * len(header)]
    rows = []
    for name, result in results.items():
        values = [100 * result["mAP"], *(100 * result["cmc"][r - 1] for r in ranks)]
        rows.append(values)
        lines.append(
            f"{name:<8} | {len(result['split_mAP']):>6} | {result['num_query']:>5} | {result['num_gallery']:>7} | "
            + " | ".join(f"{v:5.1f}" for v in values)
        )
    if len(rows) > 1:
        mean = np.mean(rows, axis=0)
        lines.append(f"{'mean':<8} | {'':>6} | {'':>5} | {'':>7} | " + " | ".join(f"{v:5.1f}" for v in mean))
    return "\n".join(lines)
