"""Nearest neighbours and the k-reciprocal encoding (docs/method.md#pseudo-labels, #evaluation).

The neutral home of what the pseudo labels (``spcl.pseudo_labels``) and the evaluation's
re-ranking (``spcl.evaluation.re_rank``) share: exact tiled k-nearest-neighbour search of
L2-normalised features (faiss optional), the approximate inverted-file search for large targets, and the sparse k-reciprocal sets, their softmax
encoding, the local query expansion and the sums of minima behind the Jaccard distance.
"""

from __future__ import annotations

from spcl.neighbors.approximate import (
    CellIndex,
    CellSearch,
    ProbeChoice,
    cell_search,
    choose_probe,
    default_cells,
    unit_features_half,
)
from spcl.neighbors.kreciprocal import (
    cross_min_overlap_blocks,
    encoding_weights,
    half_k,
    k_reciprocal_sets,
    query_expansion,
    upper_min_overlap,
)
from spcl.neighbors.search import (
    as_unit_features,
    canonical_order,
    nearest_neighbors,
    pair_similarities,
    search_unit,
    symmetric_search,
)

__all__ = [
    "CellIndex",
    "CellSearch",
    "ProbeChoice",
    "cell_search",
    "choose_probe",
    "default_cells",
    "unit_features_half",
    "as_unit_features",
    "canonical_order",
    "cross_min_overlap_blocks",
    "encoding_weights",
    "half_k",
    "k_reciprocal_sets",
    "nearest_neighbors",
    "pair_similarities",
    "query_expansion",
    "search_unit",
    "symmetric_search",
    "upper_min_overlap",
]
