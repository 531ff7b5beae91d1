"""Pseudo-label quality against the true identities: pairwise precision / recall / F and NMI.

Only available when the target's identities are known (synthetic data, benchmarks); it explains a run,
it never steers one.  Pair counts come from the contingency table, so the cost is O(N), not O(N^2).
"""

from __future__ import annotations

import numpy as np
from scipy.sparse import coo_matrix
from sklearn.metrics import normalized_mutual_info_score


def _pairs(counts: np.ndarray) -> float:
    counts = counts.astype(np.float64)
    return float((counts * (counts - 1) / 2).sum())


def pseudo_label_quality(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Pairwise precision (share of same-cluster pairs that are the same identity), recall (share of
    same-identity pairs put in one cluster), their F-score, and NMI.  Each un-clustered sample is its
    own class in ``pred``."""
    pred = np.asarray(pred)
    truth = np.asarray(truth)
    if pred.shape != truth.shape or pred.ndim != 1:
        raise ValueError(f"pred and truth must be 1-d arrays of one length, got {pred.shape} and {truth.shape}")
    _, p = np.unique(pred, return_inverse=True)
    _, t = np.unique(truth, return_inverse=True)
    table = coo_matrix((np.ones(len(p)), (p, t))).tocsr()
    table.sum_duplicates()
    together = _pairs(table.data)
    pred_pairs = _pairs(np.bincount(p))
    true_pairs = _pairs(np.bincount(t))
    precision = together / pred_pairs if pred_pairs else 1.0
    recall = together / true_pairs if true_pairs else 1.0
    f_score = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "pair_precision": precision,
        "pair_recall": recall,
        "pair_f": f_score,
        "nmi": float(normalized_mutual_info_score(t, p)),
    }
