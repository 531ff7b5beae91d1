"""The k-reciprocal Jaccard distance among the target features (docs/method.md#pseudo-labels, step 1).

A sparse N x N matrix holding only the pairs closer than 1: the pairs that share a k-reciprocal
neighbour, tens per row on re-ID features, where the reference holds the dense N x N matrix (its
main scalability failure). The neighbour search and the k-reciprocal encoding live in
``spcl.neighbors``, which the evaluation's re-ranking shares.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from spcl.neighbors.kreciprocal import (
    encoding_weights,
    half_k,
    k_reciprocal_sets,
    query_expansion,
    upper_min_overlap,
)
from spcl.neighbors.search import as_unit_features, pair_similarities, search_unit
from spcl.utils.progress import stage

__all__ = ["jaccard_distance", "jaccard_from_neighbors"]


def jaccard_from_neighbors(
    unit_features: torch.Tensor, ranks: np.ndarray, k1: int = 30, k2: int = 6,
    similarities: np.ndarray | None = None,
    show_progress: bool = False,
) -> sp.csr_matrix:
    """The sparse Jaccard distance (docs/method.md#pseudo-labels) from normalised features and their neighbour lists.

    ``ranks`` are the min(k1, N) nearest points of each point, itself first (as returned by
    ``nearest_neighbors``). ``similarities`` (the search's, aligned with ``ranks``) are reused for
    the pairs they cover when the features are held in float16. Returns float32 CSR holding every
    pair with distance < 1.
    """
    n = ranks.shape[0]
    forward = min(k1 + 1, k1)  # the reference searches k1 neighbours: F(i, k1) has k1 entries
    half = min(half_k(k1) + 1, k1)
    with stage("Jaccard distance: k-reciprocal sets", enabled=show_progress):
        pattern = k_reciprocal_sets(ranks, forward, half)
    known = None if similarities is None else (ranks, similarities)
    with stage("Jaccard distance: similarities of the set members", enabled=show_progress):
        sims = pair_similarities(unit_features, pattern.indptr, pattern.indices, known)
    with stage("Jaccard distance: encoding and query expansion", enabled=show_progress):
        weights = encoding_weights(pattern, 2.0 - 2.0 * sims.astype(np.float64))
        del sims, pattern
        weights = query_expansion(weights, ranks, k2)
    index_dtype = np.int32 if n < np.iinfo(np.int32).max else np.int64
    rows_out, cols_out, values_out = [], [], []
    for rows, cols, shared, union in upper_min_overlap(weights, show_progress):
        distance = 1.0 - shared / union
        np.maximum(distance, 0.0, out=distance)  # the reference clips below 0
        distance[rows == cols] = 0.0
        rows_out.append(rows.astype(index_dtype))
        cols_out.append(cols.astype(index_dtype))
        values_out.append(distance.astype(np.float32))
    del weights
    with stage("Jaccard distance: the symmetric sparse matrix", enabled=show_progress):
        # Mirror the upper triangle; a COO -> CSR conversion is a counting sort by row, keeps explicit
        # zeros, and the arrays are released as soon as they are consumed to keep the peak low.
        rows, cols = np.concatenate(rows_out), np.concatenate(cols_out)
        values = np.concatenate(values_out)
        del rows_out, cols_out, values_out
        off = rows != cols
        mirrored = (np.concatenate([rows, cols[off]]), np.concatenate([cols, rows[off]]))
        coo = sp.coo_matrix((np.concatenate([values, values[off]]), mirrored), shape=(n, n))
        del rows, cols, values, off, mirrored
        matrix = sp.csr_matrix(coo)
        del coo
        matrix.sort_indices()
    return matrix


def jaccard_distance(
    features: Any,
    k1: int = 30,
    k2: int = 6,
    *,
    device: torch.device | str | None = None,
    knn_backend: str = "torch",
) -> sp.csr_matrix:
    """k-reciprocal Jaccard distance among the rows of ``features`` (docs/method.md#pseudo-labels, step 1).

    Returns an N x N ``scipy.sparse.csr_matrix`` (float32) storing every pair at distance < 1;
    an absent entry means distance 1. Pairs at distance 0 (the diagonal, duplicate features) are
    stored as explicit zeros, because DBSCAN on a sparse matrix reads an absent entry as "not a
    neighbour". ``device`` runs the neighbour search there (torch); ``knn_backend="faiss"`` uses
    faiss when installed.
    """
    if k1 < 1 or k2 < 1:
        raise ValueError(f"k1 and k2 must be at least 1, got k1={k1}, k2={k2}")
    unit = as_unit_features(features, device)
    ranks, _ = search_unit(unit, k1, backend=knn_backend)
    return jaccard_from_neighbors(unit, ranks, k1, k2)
