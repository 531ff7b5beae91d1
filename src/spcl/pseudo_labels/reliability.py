"""Self-paced cluster reliability and re-indexing (docs/method.md#pseudo-labels, steps 3 and 4).

Independence and compactness are intersection-over-union sizes of a sample's cluster at eps
with its cluster at eps + gap (independence) or eps - gap (compactness). Those sizes are
contingency counts of label pairs, computed from the N labels (one sort), never from the
N x N label-equality matrices the reference builds.

Everything is compared in the reference's representation: d = 1 - IoU per sample, each
cluster's minimum over its members, the threshold taken from that same array, keep when
d <= threshold. alpha = 1 - threshold is reported; turning it back into the threshold
(1 - alpha) gives the same float64 exactly, so a reused alpha keeps ties where they were.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "as_sets",
    "iou_distance",
    "independence_threshold",
    "ClusterReliability",
    "cluster_reliability",
    "self_paced_labels",
]


def as_sets(labels: np.ndarray) -> np.ndarray:
    """Labels where every outlier (-1) is its own set: outliers get fresh ids after the clusters."""
    labels = np.asarray(labels, dtype=np.int64)
    sets = labels.copy()
    outliers = labels < 0
    sets[outliers] = labels.max(initial=-1) + 1 + np.arange(int(outliers.sum()))
    return sets


def iou_distance(labels_a: np.ndarray, labels_b: np.ndarray) -> np.ndarray:
    """Per sample i: 1 - |A(i) & B(i)| / |A(i) | B(i)|, A(i) and B(i) its sets in the two labellings.

    |A & B| is the number of samples carrying the same (a, b) label pair: a contingency count.
    Outliers (-1) are sets of one.
    """
    a, b = as_sets(labels_a), as_sets(labels_b)
    size_a = np.bincount(a)[a]
    size_b = np.bincount(b)[b]
    _, pair, pair_count = np.unique(a * (b.max(initial=0) + 1) + b, return_inverse=True, return_counts=True)
    inter = pair_count[pair.reshape(-1)]
    return 1.0 - inter / (size_a + size_b - inter)


def independence_threshold(cluster_min_distance: np.ndarray, cluster_sizes: np.ndarray) -> float | None:
    """The epoch-0 threshold on 1 - independence: s[min(L - 1, round(0.9 L))] over multi-member clusters.

    ``round`` is numpy's (half to even), as in the reference. None when no cluster has more
    than one member (L = 0, where the reference crashes): the caller tries again next epoch.
    """
    s = np.sort(np.asarray(cluster_min_distance, dtype=np.float64)[np.asarray(cluster_sizes) > 1])
    if s.size == 0:
        return None
    return float(s[min(s.size - 1, int(np.round(s.size * 0.9)))])


@dataclass(frozen=True)
class ClusterReliability:
    """Reliability of the DBSCAN clusters at eps (index = cluster id), for the criterion and for logging."""

    sizes: np.ndarray  # members per cluster
    independence: np.ndarray  # best (max) IoU with the loose clustering over the members
    compactness: np.ndarray  # best (max) IoU with the tight clustering over the members
    independence_distance: np.ndarray  # 1 - IoU, minimum over members (the compared representation)
    compactness_distance: np.ndarray  # per cluster: the compactness bar in the compared representation
    sample_compactness_distance: np.ndarray  # per sample: 1 - IoU with the tight clustering


def cluster_reliability(labels: np.ndarray, labels_tight: np.ndarray, labels_loose: np.ndarray) -> ClusterReliability:
    """Independence and compactness of every cluster of ``labels`` (outliers excluded), O(N)."""
    labels = np.asarray(labels, dtype=np.int64)
    d_indep = iou_distance(labels, labels_loose)
    d_comp = iou_distance(labels, labels_tight)
    clustered = labels >= 0
    num = int(labels.max(initial=-1)) + 1
    sizes = np.bincount(labels[clustered], minlength=num)
    indep = np.full(num, np.inf)
    comp = np.full(num, np.inf)
    np.minimum.at(indep, labels[clustered], d_indep[clustered])
    np.minimum.at(comp, labels[clustered], d_comp[clustered])
    return ClusterReliability(
        sizes=sizes,
        independence=1.0 - indep,
        compactness=1.0 - comp,
        independence_distance=indep,
        compactness_distance=comp,
        sample_compactness_distance=d_comp,
    )


def self_paced_labels(
    labels: np.ndarray, reliability: ClusterReliability, threshold: float | None, *, apply_criterion: bool = True
) -> tuple[np.ndarray, np.ndarray, int]:
    """Apply the criterion and re-index: clusters 0..C-1, then one class per un-clustered sample.

    A sample stays in its cluster when the cluster's independence distance is <= ``threshold``
    and its own compactness distance is <= the cluster's bar (it is among the best members).
    Clusters left with at least two members are numbered in DBSCAN order; every other sample
    (outlier, rejected, or the lone survivor of a cluster) becomes its own class, numbered in
    sample order after the clusters. ``threshold=None`` keeps no cluster;
    ``apply_criterion=False`` keeps every DBSCAN cluster whole (the paper's ablation).
    Returns (labels, kept members per DBSCAN cluster, number of clusters).
    """
    labels = np.asarray(labels, dtype=np.int64)
    n = labels.shape[0]
    clustered = labels >= 0
    keep = clustered.copy() if not apply_criterion else np.zeros(n, dtype=bool)
    if apply_criterion and threshold is not None and clustered.any():
        cluster = labels[clustered]
        keep[clustered] = (reliability.independence_distance[cluster] <= threshold) & (
            reliability.sample_compactness_distance[clustered] <= reliability.compactness_distance[cluster]
        )
    kept_members = np.bincount(labels[keep], minlength=reliability.sizes.shape[0])
    is_cluster = kept_members > 1
    cluster_ids = np.cumsum(is_cluster) - 1
    num_clusters = int(is_cluster.sum())
    in_cluster = keep.copy()
    in_cluster[keep] = is_cluster[labels[keep]]
    out = np.empty(n, dtype=np.int64)
    out[in_cluster] = cluster_ids[labels[in_cluster]]
    out[~in_cluster] = num_clusters + np.arange(int((~in_cluster).sum()))
    return out, kept_members, num_clusters
