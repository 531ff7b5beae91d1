"""Evaluation (docs/method.md#evaluation): exact mAP / CMC in bounded memory, the VehicleID protocol,
k-reciprocal re-ranking, feature extraction, and evaluating an encoder on a dataset.

Modules: ``protocol`` (which gallery items count for a query), ``ranking`` (the blocked ranking
engine), ``metrics`` (the public functions), ``reranking``, ``vehicleid``, ``features``,
``cluster_quality`` (pseudo labels against the truth) and ``runner`` (a model on a dataset).
"""

from __future__ import annotations

from spcl.data.vehicleid import VEHICLEID_NUM_DRAWS, VEHICLEID_TEST_SIZES, vehicleid_gallery_split
from spcl.evaluation.cluster_quality import pseudo_label_quality
from spcl.evaluation.features import extract_features
from spcl.evaluation.metrics import (
    METRICS,
    ImageSet,
    RankMetrics,
    evaluate_features,
    format_metrics,
    metrics_from_distances,
    metrics_from_features,
    metrics_from_ranked_lists,
    pairwise_distance,
    rank_metrics,
    ranked_from_distances,
    ranked_gallery,
)
from spcl.evaluation.reranking import re_rank
from spcl.evaluation.runner import evaluate_model, format_result, save_results
from spcl.evaluation.vehicleid import VehicleIDMetrics, vehicleid_metrics

__all__ = [
    "METRICS",
    "ImageSet",
    "RankMetrics",
    "VEHICLEID_NUM_DRAWS",
    "VEHICLEID_TEST_SIZES",
    "VehicleIDMetrics",
    "evaluate_features",
    "evaluate_model",
    "extract_features",
    "format_metrics",
    "format_result",
    "metrics_from_distances",
    "metrics_from_features",
    "metrics_from_ranked_lists",
    "pairwise_distance",
    "pseudo_label_quality",
    "rank_metrics",
    "ranked_from_distances",
    "ranked_gallery",
    "re_rank",
    "save_results",
    "vehicleid_gallery_split",
    "vehicleid_metrics",
]
