"""k-reciprocal re-ranking (Zhong et al., CVPR 2017) as docs/method.md#evaluation pins it, in O((q + g) k) memory.

The widely used implementation (torchreid, the SpCL reference) builds the joint (q + g) x (q + g)
matrix of squared Euclidean distances of the normalised features, squares it, divides each
column by its maximum and transposes (the joint matrix is symmetric, so row i ends up divided
by the largest distance of row i), then encodes k-reciprocal sets exactly as the pseudo labels
do, but with forward lists of k + 1 entries; query expansion over the k2 nearest; Jaccard
distance 1 - s / (2 - s) with s = sum of minima; final = (1 - lambda) jaccard + lambda original.

Here the joint matrix is never held: one pass over its upper tiles (it is symmetric) keeps,
per row, the k1 + 1 nearest points and the largest distance, and writes the query x gallery
distances straight into the output. The k-reciprocal machinery is the sparse one the pseudo
labels use (``spcl.neighbors``); only the q x g result is dense.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from spcl.neighbors.kreciprocal import (
    cross_min_overlap_blocks,
    encoding_weights,
    half_k,
    k_reciprocal_sets,
    query_expansion,
)
from spcl.neighbors.search import TileVisitor, as_unit_features, pair_similarities, symmetric_search
from spcl.utils import check_memory

__all__ = ["re_rank"]


def _squared_distances(sims: torch.Tensor) -> np.ndarray:
    """d^2 with d = squared Euclidean distance of unit vectors = 2 - 2 cos (clamped at 0)."""
    return torch.clamp(2.0 - 2.0 * sims, min=0.0).square_().cpu().numpy()


def _query_gallery_writer(num_query: int, out: np.ndarray) -> TileVisitor:
    """A tile visitor of the symmetric search that writes the query x gallery part of d^2 into ``out``.

    Queries come first in the joint order, so every query x gallery pair lies in an upper tile.
    """

    def visit(a: int, b: int, c: int, d: int, sims: torch.Tensor) -> None:
        if a < num_query and d > num_query:
            q_stop, g_start = min(b, num_query), max(c, num_query)
            out[a:q_stop, g_start - num_query : d - num_query] = _squared_distances(sims[: q_stop - a, g_start - c :])

    return visit


def re_rank(
    query_features: Any,
    gallery_features: Any,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    *,
    device: torch.device | str | None = None,
    tile: int | None = None,
) -> np.ndarray:
    """Re-ranked query x gallery distances (float32 numpy array, q x g).

    Features are L2-normalised here. Memory beyond the q x g output grows with (q + g) x k1
    (plus one tile of the joint matrix during the search). ``device`` runs the tiled search
    and the pair similarities there (e.g. "cuda"); the rest runs on the CPU. Each point heads its own neighbour list, even among exact
    duplicates (the reference's argsort leaves that order to chance).
    """
    if k1 < 1 or k2 < 1:
        raise ValueError(f"k1 and k2 must be at least 1, got k1={k1}, k2={k2}")
    if not 0.0 <= lambda_value <= 1.0:
        raise ValueError(f"lambda_value weighs the original distance in [0, 1], got {lambda_value}")
    query = as_unit_features(query_features, device)
    gallery = as_unit_features(gallery_features, device)
    if query.shape[1] != gallery.shape[1]:
        raise ValueError(f"query and gallery features differ in size: {query.shape[1]} vs {gallery.shape[1]}")
    num_query = query.shape[0]
    # the q x g result is dense (float32), and each block of it is built in float64 next to it
    check_memory(
        num_query * gallery.shape[0] * 4 * 2, "cpu", f"re-ranking {num_query} queries x {gallery.shape[0]} gallery images",
        "re-ranking holds the whole query x gallery matrix: evaluate without --rerank (eval.rerank false), "
        "or with a smaller gallery",
    )
    unit = torch.cat([query, gallery.to(query.dtype)])
    del query, gallery
    n = unit.shape[0]
    out = np.empty((num_query, n - num_query), dtype=np.float32)

    k = min(n, max(k1 + 1, k2))
    ranks, _, lowest = symmetric_search(unit, k, tile=tile, visit=_query_gallery_writer(num_query, out), track_min=True)
    row_max = np.square(np.maximum(2.0 - 2.0 * lowest.astype(np.float64), 0.0))  # the column maxima of d^2
    scale = np.divide(1.0, row_max, out=np.zeros_like(row_max), where=row_max > 0)

    pattern = k_reciprocal_sets(ranks, k1 + 1, half_k(k1) + 1)
    sims = pair_similarities(unit, pattern.indptr, pattern.indices).astype(np.float64)
    rows = np.repeat(np.arange(n), np.diff(pattern.indptr))
    original = np.square(np.maximum(2.0 - 2.0 * sims, 0.0)) * scale[rows]
    del sims, rows, unit
    weights = query_expansion(encoding_weights(pattern, original), ranks, k2)
    del pattern, original, ranks

    for lo, hi, shared, union in cross_min_overlap_blocks(weights, num_query):
        jaccard = np.divide(shared, union, out=union)
        np.subtract(1.0, jaccard, out=jaccard)
        block = out[lo:hi]
        block *= (lambda_value * scale[lo:hi])[:, None].astype(np.float32)
        block += (1.0 - lambda_value) * jaccard
    return out
