"""Re-ID ranking metrics, exact and in bounded memory (docs/method.md#evaluation): the public functions.

Protocol (Market-1501 style, ``spcl.evaluation.protocol``). For each query the gallery is ranked
by distance; gallery items with the query's identity *and* camera are removed, and so is any
gallery entry that is the query's own file; AP is the mean of the precision at each remaining true
match (non-interpolated AP, what re-ID toolkits report); mAP averages AP over the queries that have
at least one valid match; CMC rank-k is the share of those queries whose first valid match is in
the top k. A camera of None is unknown: the image is its own camera and the filter removes
nothing but a query's own file.

The ranking is exact, in blocks of queries, and never holds the query x gallery matrix or any
argsort of it (``spcl.evaluation.ranking``); ties are broken by gallery index.

Two forms of each function: ``metrics_from_features`` / ``metrics_from_distances`` /
``ranked_gallery`` take the two sides as ``ImageSet`` values; ``evaluate_features`` and
``rank_metrics`` take the same values as separate arrays.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from spcl.evaluation.protocol import Array, ImageSet, Protocol
from spcl.evaluation.ranking import (
    METRICS,
    Device,
    FeatureBlocks,
    RankMetrics,
    as_tensor,
    block_rows,
    check_topk,
    device_of,
    score_blocks,
)

__all__ = [
    "METRICS",
    "ImageSet",
    "RankMetrics",
    "evaluate_features",
    "format_metrics",
    "metrics_from_distances",
    "metrics_from_features",
    "metrics_from_ranked_lists",
    "pairwise_distance",
    "rank_metrics",
    "ranked_from_distances",
    "ranked_gallery",
]


def metrics_from_distances(
    distmat: Array,
    query: ImageSet,
    gallery: ImageSet,
    topk: int = 50,
    *,
    block_size: int | None = None,
    device: Device = None,
) -> RankMetrics:
    """mAP, CMC and per-query AP / first-match rank from a (num_query, num_gallery) distance matrix.

    ``query`` and ``gallery`` give the pids, cameras and paths (their features are not used).
    Rows are ranked in blocks of `block_size` queries, on `device` (default: where `distmat` is).
    """
    check_topk(topk)
    device = device_of(device, distmat)
    dist = as_tensor(distmat)
    if dist.ndim != 2:
        raise ValueError(f"distmat must be 2-D (num_query, num_gallery), got shape {tuple(dist.shape)}")
    num_query, num_gallery = dist.shape
    if num_query == 0 or num_gallery == 0:
        raise ValueError(f"distmat is empty (shape {tuple(dist.shape)}): nothing to evaluate")
    if not dist.is_floating_point():
        dist = dist.to(torch.float64)
    elif dist.dtype not in (torch.float32, torch.float64):
        dist = dist.to(torch.float32)  # exact for half types: the order is unchanged
    protocol = Protocol.build(query, gallery, num_query, num_gallery)
    rows = block_rows(block_size, num_gallery, dist.element_size())

    def blocks() -> Iterator[tuple[int, int, torch.Tensor]]:
        for start in range(0, num_query, rows):
            end = min(start + rows, num_query)
            yield start, end, dist[start:end].to(device).contiguous()

    return score_blocks(blocks(), protocol, num_query, topk, "distmat", None)


def rank_metrics(
    distmat: Array,
    query_pids: Array | Sequence,
    gallery_pids: Array | Sequence,
    query_camids: Array | Sequence | None,
    gallery_camids: Array | Sequence | None,
    topk: int = 50,
    *,
    query_paths: Sequence[str | os.PathLike] | None = None,
    gallery_paths: Sequence[str | os.PathLike] | None = None,
    block_size: int | None = None,
    device: Device = None,
) -> RankMetrics:
    """:func:`metrics_from_distances` with the two sides as separate arrays.

    Camids are required positionally so that forgetting them cannot silently keep same-camera
    matches; pass ``None`` for both when the data has no cameras. With paths, a gallery entry that
    is the query's own file never counts.
    """
    query = ImageSet(pids=query_pids, camids=query_camids, paths=query_paths)
    gallery = ImageSet(pids=gallery_pids, camids=gallery_camids, paths=gallery_paths)
    return metrics_from_distances(distmat, query, gallery, topk, block_size=block_size, device=device)


def metrics_from_features(
    query: ImageSet,
    gallery: ImageSet,
    metric: str = "cosine",
    topk: int = 50,
    *,
    block_size: int | None = None,
    device: Device = None,
    timings: dict[str, float] | None = None,
) -> RankMetrics:
    """:func:`metrics_from_distances` straight from the two sides' features, one block of queries
    at a time, so that neither the full distance matrix nor any argsort is ever held.

    `metric` is "cosine" (1 - cosine similarity; features need not be normalised) or "euclidean".
    `device` (default: where the features are) runs the matmul and the ranking there, e.g. "cuda".
    `block_size` queries per block (default: about 256 MiB of distances). If `timings` is a dict, the
    seconds spent computing distances and ranking are added to its "distances" and "ranking" keys
    (on an accelerator the split is approximate: kernels run asynchronously).
    """
    check_topk(topk)
    features = FeatureBlocks.build(query.features, gallery.features, metric, device)
    num_query, num_gallery = len(features.query), len(features.gallery)
    protocol = Protocol.build(query, gallery, num_query, num_gallery)
    blocks = features.blocks(block_size, reuse=True)
    return score_blocks(blocks, protocol, num_query, topk, "the distances", timings)


def _check_lists(indices: np.ndarray, num_gallery: int) -> None:
    """A ranked list names each gallery item at most once, within the gallery (-1 pads): a repeated
    match would be counted twice (an AP above 1)."""
    if indices.size and (indices.max() >= num_gallery or indices.min() < -1):
        bad = np.argwhere((indices >= num_gallery) | (indices < -1))[0]
        raise ValueError(
            f"ranked list of query {bad[0]} holds gallery index {indices[tuple(bad)]} at rank {bad[1] + 1}: the gallery "
            f"has {num_gallery} items (indices 0..{num_gallery - 1}, -1 pads a short list)"
        )
    ordered = np.sort(indices, axis=1)
    repeated = (ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0)
    if repeated.any():
        q, at = np.argwhere(repeated)[0]
        raise ValueError(
            f"ranked list of query {q} names gallery index {ordered[q, at + 1]} more than once: a ranked list "
            "holds each gallery item at most once"
        )


def metrics_from_ranked_lists(
    indices: np.ndarray, query: ImageSet, gallery: ImageSet, *, block_size: int = 1024
) -> dict[str, Any]:
    """mAP and CMC from each query's top-L gallery list (Q x L, -1 = padding), as an approximate
    index (``spcl search --index ivf``) returns it: the evaluation of a gallery too large to rank
    exactly, with what the lists miss measured.

    Items the protocol removes are skipped in the lists, as in the exact engine. A valid true match
    absent from a query's list counts as never retrieved: AP is then a lower bound of the exact AP,
    equal to it when the list holds every valid match (a full exact ranking gives the exact
    metrics). ``recall`` is the share of all valid true matches that the lists hold; CMC has L
    ranks. Memory: one block of queries' lists and related gallery items at a time.
    """
    indices = np.asarray(indices, dtype=np.int64)
    if indices.ndim != 2:
        raise ValueError(f"indices must be a (queries x list length) matrix, got shape {indices.shape}")
    num_query, length = indices.shape
    num_gallery = len(gallery.pids) if gallery.pids is not None else int(indices.max(initial=-1)) + 1
    _check_lists(indices, num_gallery)
    protocol = Protocol.build(query, gallery, num_query, num_gallery)
    ap = np.zeros(num_query)
    first_hit = np.full(num_query, length, dtype=np.int64)  # valid rank (0-based) of the first match
    valid = np.zeros(num_query, dtype=bool)
    listed = total = 0
    for start in range(0, num_query, block_size):
        end = min(num_query, start + block_size)
        lists = indices[start:end]
        related, match = protocol.related(start, end)  # (B, K): related gallery items, valid matches
        same = (lists[:, :, None] == related[:, None, :]) & (lists[:, :, None] >= 0)
        is_related = same.any(axis=2)
        is_match = (same & match[:, None, :]).any(axis=2)
        kept = (lists >= 0) & ~(is_related & ~is_match)  # removed items leave the ranking
        position = np.cumsum(kept, axis=1)  # 1-based valid rank of each kept item
        hits = np.cumsum(is_match, axis=1)
        num_matches = match.sum(axis=1)
        valid[start:end] = num_matches > 0
        precision = np.where(is_match, hits / np.maximum(position, 1), 0.0)
        ap[start:end] = precision.sum(axis=1) / np.maximum(num_matches, 1)
        found = is_match.any(axis=1)
        first = np.argmax(is_match, axis=1)
        first_hit[start:end] = np.where(found, position[np.arange(end - start), first] - 1, length)
        listed += int(is_match.sum())
        total += int(num_matches.sum())
    if not valid.any():
        raise ValueError("no query has a valid true match in the gallery: mAP and CMC are undefined")
    cmc = np.array([(first_hit[valid] <= r).mean() for r in range(length)])
    return {
        "mAP": float(ap[valid].mean()),
        "cmc": cmc,
        "recall": listed / total,
        "num_valid_queries": int(valid.sum()),
        "per_query_ap": np.where(valid, ap, np.nan),
    }


def evaluate_features(
    query_features: Array,
    gallery_features: Array,
    query_pids: Array | Sequence,
    gallery_pids: Array | Sequence,
    query_camids: Array | Sequence | None,
    gallery_camids: Array | Sequence | None,
    metric: str = "cosine",
    topk: int = 50,
    *,
    query_paths: Sequence[str | os.PathLike] | None = None,
    gallery_paths: Sequence[str | os.PathLike] | None = None,
    block_size: int | None = None,
    device: Device = None,
    timings: dict[str, float] | None = None,
) -> RankMetrics:
    """:func:`metrics_from_features` with the two sides as separate arrays (camids None for both
    when the data has no cameras)."""
    query = ImageSet(query_features, query_pids, query_camids, query_paths)
    gallery = ImageSet(gallery_features, gallery_pids, gallery_camids, gallery_paths)
    return metrics_from_features(query, gallery, metric, topk, block_size=block_size, device=device, timings=timings)


def pairwise_distance(
    query_features: Array,
    gallery_features: Array,
    metric: str = "cosine",
    *,
    block_size: int | None = None,
    device: Device = None,
) -> torch.Tensor:
    """The full (num_query, num_gallery) distance matrix that :func:`evaluate_features` ranks, for
    small problems, re-ranking and tests (the same arithmetic, block by block)."""
    features = FeatureBlocks.build(query_features, gallery_features, metric, device)
    return torch.cat([block for _, _, block in features.blocks(block_size)])


def ranked_gallery(
    query: ImageSet,
    gallery: ImageSet,
    k: int = 10,
    metric: str = "cosine",
    *,
    block_size: int | None = None,
    device: Device = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k gallery indices and distances per query, in the metrics' order (distance, then gallery
    index), for visualising ranked lists. Computed in blocks of queries from the sides' features.

    With pids and camids (and/or paths), the items the protocol removes (same identity and camera,
    the query's own file) are left out, so the list is the one the metrics scored. Where fewer than
    k items remain, the tail holds index -1 and distance inf.
    """
    features = FeatureBlocks.build(query.features, gallery.features, metric, device)
    return _top_k(features.blocks(block_size, reuse=True), query, gallery, len(features.query), len(features.gallery), k)


def ranked_from_distances(
    distmat: Array, query: ImageSet, gallery: ImageSet, k: int = 10, *, block_size: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`ranked_gallery` from a given (num_query, num_gallery) distance matrix, e.g. the
    re-ranked one (its rows are copied block by block: the matrix is not changed)."""
    dist = as_tensor(distmat)
    if dist.ndim != 2:
        raise ValueError(f"distmat must be 2-D (num_query, num_gallery), got shape {tuple(dist.shape)}")
    num_query, num_gallery = dist.shape
    rows = block_rows(block_size, num_gallery, dist.element_size())

    def blocks() -> Iterator[tuple[int, int, torch.Tensor]]:
        for start in range(0, num_query, rows):
            end = min(start + rows, num_query)
            yield start, end, dist[start:end].clone()

    return _top_k(blocks(), query, gallery, num_query, num_gallery, k)


def _top_k(
    blocks: Iterator[tuple[int, int, torch.Tensor]], query: ImageSet, gallery: ImageSet, num_query: int,
    num_gallery: int, k: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The k best gallery items of each query from distance blocks (which it may overwrite)."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    sides = (query.pids, query.paths, gallery.pids, gallery.paths)
    protocol = None
    if any(side is not None for side in sides):
        protocol = Protocol.build(query, gallery, num_query, num_gallery)
    width = min(k, num_gallery)
    indices = np.full((num_query, k), -1, dtype=np.int64)
    distances = np.full((num_query, k), np.inf, dtype=np.float64)
    for start, end, block in blocks:
        if protocol is not None:
            related, is_match = protocol.related(start, end)
            removed = torch.as_tensor((related >= 0) & ~is_match, device=block.device)
            r, c = torch.nonzero(removed, as_tuple=True)
            block[r, torch.as_tensor(related, device=block.device)[r, c]] = math.inf
        top_values, top_index = torch.topk(block, width, dim=1, largest=False, sorted=True)
        # topk breaks ties arbitrarily: put the k items in (distance, index) order, and redo rows
        # where items tied with the k-th one were left out.
        top_index, perm = torch.sort(top_index, dim=1)
        top_values = top_values.gather(1, perm)
        top_values, perm = torch.sort(top_values, dim=1, stable=True)
        top_index = top_index.gather(1, perm)
        kth = top_values[:, -1:]
        boundary_ties = torch.isfinite(kth[:, 0]) & ((block <= kth).sum(dim=1) > width)
        for row in torch.nonzero(boundary_ties).flatten().tolist():
            candidates = torch.nonzero(block[row] <= kth[row]).flatten()  # ascending gallery index
            candidate_values, perm = torch.sort(block[row, candidates], stable=True)
            top_values[row], top_index[row] = candidate_values[:width], candidates[perm[:width]]
        top_values, top_index = top_values.cpu().double().numpy(), top_index.cpu().numpy()
        top_index = np.where(np.isinf(top_values), -1, top_index)
        indices[start:end, :width], distances[start:end, :width] = top_index, top_values
    return indices, distances


def format_metrics(result: Mapping[str, Any], ranks: Sequence[int] = (1, 5, 10)) -> str:
    """One log line: mAP and CMC at the given ranks, in percent; for the VehicleID protocol also the
    spread over its gallery draws."""
    cmc = result["cmc"]
    if "draw_mAP" in result:  # averaged over gallery draws
        spread = result["cmc_std"]
        parts = [f"mAP {100 * result['mAP']:.1f}% ± {100 * result['mAP_std']:.1f}"]
        parts += [f"rank-{r} {100 * cmc[r - 1]:.1f}% ± {100 * spread[r - 1]:.1f}" for r in ranks if r <= len(cmc)]
        count = f"{len(result['draw_mAP'])} draws, {result['num_identities']} identities, {result['num_query']} queries each"
    else:
        parts = [f"mAP {100 * result['mAP']:.1f}%"]
        parts += [f"rank-{r} {100 * cmc[r - 1]:.1f}%" for r in ranks if r <= len(cmc)]
        count = f"{result['num_valid_queries']} queries"
    return "  ".join(parts) + f"  ({count})"
