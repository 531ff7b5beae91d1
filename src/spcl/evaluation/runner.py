"""Evaluating an encoder on a dataset (docs/method.md#evaluation), as the trainer and ``spcl eval`` both do.

One function chooses the protocol the dataset calls for: the fixed query / gallery split of the
Market-1501 family, or the VehicleID draws (a dataset with a ``test`` list: one gallery image per
identity, averaged over 10 seeded draws). The results are written next to the run (one row per
query, or one per draw) and formatted as one log line.

Opening a checkpoint file is not done here: ``spcl.models.load_model`` rebuilds the encoder a
checkpoint describes, with the preprocessing it records; ``spcl.inference.evaluate_checkpoint``
chains the two.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from spcl.data import Dataset, Item
from spcl.evaluation.features import extract_features
from spcl.evaluation.metrics import (
    format_metrics,
    metrics_from_distances,
    metrics_from_features,
    ranked_from_distances,
    ranked_gallery,
)
from spcl.evaluation.protocol import ImageSet
from spcl.evaluation.reranking import re_rank
from spcl.evaluation.vehicleid import vehicleid_metrics
from spcl.models import use_domain
from spcl.utils import Distributed, memory_advice, write_csv

__all__ = ["RANKED_LIST_LENGTH", "evaluate_model", "format_result", "save_results"]

# How many gallery items of each query's ranked list an evaluation keeps (``ranked.csv``): the
# ranked-list pictures (``spcl visualize``, ``spcl report``) show up to this many.
RANKED_LIST_LENGTH = 20

_SMALLER_BATCH = "lower eval.batch_size (--eval.batch_size), or evaluate with --device cpu"


def evaluate_model(
    model: nn.Module,
    data: Dataset,
    transform: Callable,
    device: torch.device | str,
    *,
    domain: int = -1,
    rerank: bool = False,
    batch_size: int = 128,
    workers: int = 0,
    progress: bool = True,
    dist: Distributed | None = None,
) -> dict[str, Any]:
    """mAP / CMC of ``model`` on ``data``'s test images through BN branch ``domain`` (-1: the
    target, 0: the source of a DSBN model; ignored without DSBN).

    ``transform`` is the test preprocessing (the one a checkpoint records). ``rerank`` applies
    k-reciprocal re-ranking (k1 20, k2 6, lambda 0.3) to the query x gallery distances. With
    ``dist`` (several processes) the ranks share the feature extraction, rank 0 computes the
    metrics once (re-ranking needs the whole gallery in one place) and every rank gets the result.
    """
    dist = dist or Distributed()
    test_set = data.test if data.test else data.query + data.gallery
    if not data.test and (not data.query or not data.gallery):
        raise ValueError(f"{data.name} has no query/gallery split to evaluate on")
    with use_domain(model, domain), memory_advice(f"extracting the features of {data.name}", _SMALLER_BATCH):
        desc = "test features" if data.test else "eval features"
        features = extract_features(model, test_set, transform, device, batch_size, workers, desc, progress, dist)
    return dist.run_on_main(lambda: _metrics(data, features, rerank, device), f"evaluating on {data.name}")


def _metrics(data: Dataset, features: torch.Tensor, rerank: bool, device: torch.device | str) -> dict[str, Any]:
    if data.test:
        pids = np.array([pid for _, pid, _ in data.test])
        return dict(vehicleid_metrics(features, pids, rerank=rerank, device=device))
    query = ImageSet.from_items(data.query, features[: len(data.query)])
    gallery = ImageSet.from_items(data.gallery, features[len(data.query) :])
    if rerank:
        distances = re_rank(query.features, gallery.features)
        result = dict(metrics_from_distances(distances, query, gallery))
        ranked = ranked_from_distances(distances, query, gallery, RANKED_LIST_LENGTH)
    else:
        result = dict(metrics_from_features(query, gallery, "cosine", device=device))
        ranked = ranked_gallery(query, gallery, RANKED_LIST_LENGTH, "cosine", device=device)
    result["ranked_index"], result["ranked_distance"] = ranked
    return result


def format_result(result: Mapping[str, Any], title: str) -> str:
    """The log line of an evaluation: ``title: mAP ...  rank-1 ...``."""
    return f"{title}: {format_metrics(result)}"


def save_results(
    result: Mapping[str, Any], folder: str | Path, queries: list[Item], gallery: list[Item] | None = None
) -> Path:
    """Write the evaluation next to the run: ``per_query.csv`` (one row per query: file, identity,
    camera, AP and the rank of its first true match) and, given the gallery, ``ranked.csv`` (the
    first gallery items of each query's ranked list, as the metrics scored it: what
    ``spcl visualize`` draws); or, for a protocol that averages gallery draws, ``draws.csv`` (one
    row per draw). Returns the per-query (or per-draw) file."""
    folder = Path(folder)
    if "draw_mAP" in result:
        cmc = np.asarray(result["draw_cmc"])
        header = ["draw", "mAP", *(f"rank{k}" for k in (1, 5, 10) if k <= cmc.shape[1])]
        rows = [
            [d, f"{m:.6f}", *(f"{cmc[d, k - 1]:.6f}" for k in (1, 5, 10) if k <= cmc.shape[1])]
            for d, m in enumerate(result["draw_mAP"])
        ]
        return write_csv(folder / "draws.csv", header, rows)
    ap = np.asarray(result.get("ap", []))
    first = np.asarray(result.get("first_match_rank", []))
    rows = []
    for i, (path, pid, cam) in enumerate(queries):
        a = ap[i] if i < len(ap) else float("nan")
        r = int(first[i]) if i < len(first) else -1
        rows.append([os.path.abspath(path), pid, _camera(cam), f"{a:.6f}", r])
    written = write_csv(folder / "per_query.csv", ["query", "pid", "camid", "ap", "first_match_rank"], rows)
    if gallery is not None and "ranked_index" in result:
        write_csv(folder / "ranked.csv", RANKED_COLUMNS, _ranked_rows(result, queries, gallery))
    return written


# Columns of ``ranked.csv``: one row per (query, rank); ``match`` is 1 for a true match.
RANKED_COLUMNS = ["query_index", "rank", "gallery", "pid", "camid", "distance", "match"]


def _camera(cam: Any) -> str:
    return "" if cam is None else str(cam)


def _ranked_rows(result: Mapping[str, Any], queries: list[Item], gallery: list[Item]) -> Iterator[list[Any]]:
    index, distance = np.asarray(result["ranked_index"]), np.asarray(result["ranked_distance"])
    for q, (_, qpid, _) in enumerate(queries):
        for rank, (g, d) in enumerate(zip(index[q], distance[q]), start=1):
            if g < 0:
                break
            path, pid, cam = gallery[g]
            yield [q, rank, os.path.abspath(path), pid, _camera(cam), f"{d:.6f}", int(pid == qpid)]
