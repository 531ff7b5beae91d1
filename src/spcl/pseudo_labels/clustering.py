"""DBSCAN at three radii on the sparse Jaccard distance (docs/method.md#pseudo-labels, step 2).

One distance computation serves eps - gap, eps and eps + gap: the graph keeps only the pairs
within the loosest radius, and scikit-learn's DBSCAN (``metric="precomputed"``) reads a stored
entry as a neighbour when its value is <= eps and an absent entry as no neighbour. That is why
pairs at distance 0 must be stored as explicit zeros, and why a radius of 1 or more is
rejected: absent pairs are at distance exactly 1, which the sparse graph cannot offer.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from sklearn.cluster import DBSCAN

__all__ = ["check_radii", "radius_graph", "dbscan_labels", "cluster_three_radii"]


def check_radii(eps: float, eps_gap: float = 0.0) -> tuple[float, float, float]:
    """(eps_tight, eps, eps_loose), validated; raises ValueError with the reason otherwise."""
    if not np.isfinite(eps) or not np.isfinite(eps_gap):
        raise ValueError(f"eps and eps_gap must be finite numbers, got eps={eps}, eps_gap={eps_gap}")
    if eps_gap < 0:
        raise ValueError(f"eps_gap must be >= 0, got {eps_gap}")
    tight, loose = eps - eps_gap, eps + eps_gap
    if loose >= 1:
        raise ValueError(
            f"DBSCAN radius eps + eps_gap = {loose:g} must be below 1: the Jaccard distance lies in [0, 1] and "
            "pairs at distance 1 (no shared k-reciprocal neighbour) are not stored, so a radius of 1 or more "
            "would silently miss them; the reference uses eps = 0.6, eps_gap = 0.02"
        )
    if tight <= 0:
        raise ValueError(f"DBSCAN radius eps - eps_gap = {tight:g} must be above 0 (scikit-learn needs eps > 0)")
    return tight, eps, loose


def radius_graph(distances: sp.spmatrix | np.ndarray, radius: float) -> sp.csr_matrix:
    """The pairs of ``distances`` within ``radius`` (explicit zeros kept), each row sorted by distance.

    ``distances`` is sparse (absent = 1, as ``jaccard_distance`` returns) or a dense array.
    Sorting by value is what scikit-learn expects of a precomputed sparse graph; doing it here,
    vectorised, avoids its warning and its per-row Python loop.
    """
    check_radii(radius)
    if sp.issparse(distances):
        coo = sp.coo_matrix(distances)  # keeps explicit zeros
        rows, cols, values = coo.row.astype(np.int64), coo.col, coo.data
    else:
        dense = np.asarray(distances)
        rows, cols = np.nonzero(dense <= radius)
        values = dense[rows, cols]
    n = distances.shape[0]
    keep = values <= radius
    rows, cols, values = rows[keep], cols[keep], values[keep]
    order = np.lexsort((cols, values, rows))
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n), out=indptr[1:])
    return sp.csr_matrix((values[order], cols[order], indptr), shape=(n, n))


def dbscan_labels(graph: sp.csr_matrix, eps: float, min_samples: int = 4) -> np.ndarray:
    """DBSCAN labels (int64, -1 = outlier) of a precomputed sparse distance graph at radius ``eps``.

    The graph must hold every pair within ``eps`` (``radius_graph`` at eps or any larger radius).
    A point counts itself among its ``min_samples`` neighbours, as in scikit-learn.
    """
    check_radii(eps)
    if min_samples < 1:
        raise ValueError(f"min_samples must be at least 1, got {min_samples}")
    model = DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed")
    return model.fit(graph).labels_.astype(np.int64)


def cluster_three_radii(
    distances: sp.spmatrix | np.ndarray, eps: float = 0.6, eps_gap: float = 0.02, min_samples: int = 4
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """DBSCAN labels at eps, eps - gap and eps + gap, from one radius graph at eps + gap."""
    tight, eps, loose = check_radii(eps, eps_gap)
    graph = radius_graph(distances, loose)
    return (
        dbscan_labels(graph, eps, min_samples),
        dbscan_labels(graph, tight, min_samples),
        dbscan_labels(graph, loose, min_samples),
    )
