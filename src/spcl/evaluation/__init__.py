"""Evaluation (SPEC section 8): exact mAP / CMC in bounded memory, the VehicleID protocol and
k-reciprocal re-ranking."""

from __future__ import annotations

from spcl.evaluation.metrics import (
    METRICS,
    RankMetrics,
    evaluate_features,
    format_metrics,
    pairwise_distance,
    rank_metrics,
    ranked_gallery,
)
from spcl.evaluation.reranking import re_rank
from spcl.evaluation.vehicleid import (
    VEHICLEID_NUM_DRAWS,
    VEHICLEID_TEST_SIZES,
    VehicleIDMetrics,
    evaluate_vehicleid,
    vehicleid_gallery_split,
)

__all__ = [
    "METRICS",
    "RankMetrics",
    "VEHICLEID_NUM_DRAWS",
    "VEHICLEID_TEST_SIZES",
    "VehicleIDMetrics",
    "evaluate_features",
    "evaluate_vehicleid",
    "format_metrics",
    "pairwise_distance",
    "rank_metrics",
    "ranked_gallery",
    "re_rank",
    "vehicleid_gallery_split",
]
