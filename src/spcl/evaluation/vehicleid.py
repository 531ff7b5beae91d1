"""VehicleID evaluation protocol (docs/method.md#evaluation).

Test sets of 800 / 1600 / 2400 identities; for each of 10 seeded draws the gallery is one random image
per identity and the queries are all the other images; results are averaged over the draws. VehicleID
has no cameras, so no camera filter applies and no true match is ever removed (the reference gave
every image camera 0, which removes every true match; we do not).

The draw itself is the data layer's convention (``spcl.data.vehicleid``): the reader's
``draw=d`` split and draw ``d`` here are the same images.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypedDict

import numpy as np
import torch

from spcl.data.vehicleid import VEHICLEID_NUM_DRAWS, vehicleid_gallery_split
from spcl.evaluation.metrics import metrics_from_distances, metrics_from_features
from spcl.evaluation.protocol import Array, ImageSet
from spcl.evaluation.ranking import Device, as_tensor
from spcl.evaluation.reranking import re_rank

__all__ = ["VehicleIDMetrics", "vehicleid_metrics"]


class VehicleIDMetrics(TypedDict):
    """Result of :func:`vehicleid_metrics`: mean and spread (std over draws, ddof=0)."""

    mAP: float  # mean over draws
    mAP_std: float
    cmc: np.ndarray  # (topk,) mean over draws
    cmc_std: np.ndarray
    draw_mAP: np.ndarray  # (num_draws,)
    draw_cmc: np.ndarray  # (num_draws, topk)
    num_identities: int
    num_query: int  # per draw (the same for every draw)
    num_gallery: int


def vehicleid_metrics(
    features: Array,
    pids: Array | Sequence[int],
    num_draws: int = VEHICLEID_NUM_DRAWS,
    seed_base: int = 0,
    metric: str = "cosine",
    topk: int = 50,
    *,
    rerank: bool = False,
    block_size: int | None = None,
    device: Device = None,
) -> VehicleIDMetrics:
    """mAP / CMC of one VehicleID test set (features and pids of all its images, e.g. test_list_800)
    averaged over `num_draws` seeded gallery draws. Cameras are not used. ``rerank`` re-ranks the
    query x gallery distances of every draw (k-reciprocal, docs/method.md#evaluation)."""
    if isinstance(num_draws, bool) or not isinstance(num_draws, (int, np.integer)) or num_draws < 1:
        raise ValueError(f"num_draws must be a positive integer, got {num_draws!r}")
    features = as_tensor(features)
    pids = as_tensor(pids).cpu().numpy()
    if features.ndim != 2 or len(features) != len(pids):
        raise ValueError(
            f"features must be (num_images, dim) with one row per pid, got {tuple(features.shape)} for {len(pids)} pids"
        )
    maps, cmcs = [], []
    for draw in range(num_draws):
        query_idx, gallery_idx = vehicleid_gallery_split(pids, draw, seed_base)
        if len(query_idx) == 0:
            raise ValueError("every identity has a single image: VehicleID needs at least two per identity")
        query = ImageSet(features[torch.as_tensor(query_idx)], pids[query_idx])
        gallery = ImageSet(features[torch.as_tensor(gallery_idx)], pids[gallery_idx])
        if rerank:
            distances = re_rank(query.features, gallery.features, device=device)
            result = metrics_from_distances(distances, query, gallery, topk, block_size=block_size, device=device)
        else:
            result = metrics_from_features(query, gallery, metric, topk, block_size=block_size, device=device)
        maps.append(result["mAP"])
        cmcs.append(result["cmc"])
    draw_map, draw_cmc = np.asarray(maps), np.stack(cmcs)
    return VehicleIDMetrics(
        mAP=float(draw_map.mean()),
        mAP_std=float(draw_map.std()),
        cmc=draw_cmc.mean(axis=0),
        cmc_std=draw_cmc.std(axis=0),
        draw_mAP=draw_map,
        draw_cmc=draw_cmc,
        num_identities=len(np.unique(pids)),
        num_query=len(query_idx),
        num_gallery=len(gallery_idx),
    )
