"""Pseudo labels for the target domain (docs/method.md#pseudo-labels): sparse k-reciprocal Jaccard distance,
DBSCAN at three radii and the self-paced cluster reliability criterion, in O(N k) memory.

Main entry points: ``generate(features, neighbors="auto")`` once per epoch (``generate_with(features, config.pseudo)``
with a run's settings), and ``jaccard_distance(features)``. The neighbour search and the
k-reciprocal encoding they build on live in ``spcl.neighbors`` (re-exported here).
"""

from __future__ import annotations

from spcl.pseudo_labels.clustering import cluster_three_radii, dbscan_labels, radius_graph
from spcl.neighbors import k_reciprocal_sets, nearest_neighbors
from spcl.pseudo_labels.engine import (
    EXACT_UP_TO,
    PseudoLabels,
    generate,
    generate_with,
    labels_from_jaccard,
    resolve_neighbors,
)
from spcl.pseudo_labels.jaccard import jaccard_distance, jaccard_from_neighbors
from spcl.pseudo_labels.reliability import cluster_reliability, independence_threshold, self_paced_labels

__all__ = [
    "EXACT_UP_TO",
    "PseudoLabels",
    "resolve_neighbors",
    "generate",
    "generate_with",
    "labels_from_jaccard",
    "jaccard_distance",
    "jaccard_from_neighbors",
    "k_reciprocal_sets",
    "nearest_neighbors",
    "radius_graph",
    "dbscan_labels",
    "cluster_three_radii",
    "cluster_reliability",
    "independence_threshold",
    "self_paced_labels",
]
