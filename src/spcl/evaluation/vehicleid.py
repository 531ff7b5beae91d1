"""VehicleID evaluation protocol (SPEC section 8).

Test sets of 800 / 1600 / 2400 identities; for each of 10 seeded draws the gallery is one random image
per identity and the queries are all the other images; results are averaged over the draws. VehicleID
has no cameras, so no camera filter applies and no true match is ever removed (the reference gave
every image camera 0, which removes every true match; we do not).

The draw is a shared convention: the dataset reader builds its query/gallery lists with
:func:`vehicleid_gallery_split`, so a ``spcl.data.load("vehicleid", draw=d)`` split and
:func:`evaluate_vehicleid`'s draw ``d`` are the same images.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypedDict

import numpy as np
import torch

from spcl.evaluation.metrics import Array, Device, _tensor, evaluate_features

VEHICLEID_TEST_SIZES = (800, 1600, 2400)
VEHICLEID_NUM_DRAWS = 10


def vehicleid_gallery_split(
    pids: np.ndarray | Sequence[int], draw: int, seed_base: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(query_idx, gallery_idx): positions into `pids` for VehicleID draw `draw`.

    Convention: ``rng = np.random.default_rng(seed_base + draw)``; the identities are taken in
    ascending pid order and ``choice = rng.integers(0, counts)`` draws, for the k-th identity, which
    of its images (counted in list order) goes to the gallery. Both outputs are ascending positions;
    every other image is a query. Deterministic for (pids, draw, seed_base).
    """
    pids = np.asarray(pids)
    if pids.ndim != 1 or len(pids) == 0:
        raise ValueError(f"pids must be a non-empty 1-D array, got shape {pids.shape}")
    if isinstance(draw, bool) or not isinstance(draw, (int, np.integer)) or draw < 0:
        raise ValueError(f"draw must be a non-negative integer, got {draw!r}")
    order = np.argsort(pids, kind="stable")  # grouped by ascending pid, list order inside a group
    _, first, counts = np.unique(pids[order], return_index=True, return_counts=True)
    rng = np.random.default_rng(seed_base + int(draw))
    choice = rng.integers(0, counts)
    gallery = np.sort(order[first + choice])
    is_gallery = np.zeros(len(pids), dtype=bool)
    is_gallery[gallery] = True
    return np.flatnonzero(~is_gallery), gallery


class VehicleIDMetrics(TypedDict):
    """Result of :func:`evaluate_vehicleid`: mean and spread (std over draws, ddof=0)."""

    mAP: float  # mean over draws
    mAP_std: float
    cmc: np.ndarray  # (topk,) mean over draws
    cmc_std: np.ndarray
    draw_mAP: np.ndarray  # (num_draws,)
    draw_cmc: np.ndarray  # (num_draws, topk)
    num_identities: int
    num_query: int  # per draw (the same for every draw)
    num_gallery: int


def evaluate_vehicleid(
    features: Array,
    pids: Array | Sequence[int],
    num_draws: int = VEHICLEID_NUM_DRAWS,
    seed_base: int = 0,
    metric: str = "cosine",
    topk: int = 50,
    *,
    block_size: int | None = None,
    device: Device = None,
) -> VehicleIDMetrics:
    """mAP / CMC of one VehicleID test set (features and pids of all its images, e.g. test_list_800)
    averaged over `num_draws` seeded gallery draws. Cameras are not used."""
    if isinstance(num_draws, bool) or not isinstance(num_draws, (int, np.integer)) or num_draws < 1:
        raise ValueError(f"num_draws must be a positive integer, got {num_draws!r}")
    features = _tensor(features)
    pids = _tensor(pids).cpu().numpy()
    if features.ndim != 2 or len(features) != len(pids):
        raise ValueError(
            f"features must be (num_images, dim) with one row per pid, got {tuple(features.shape)} for {len(pids)} pids"
        )
    maps, cmcs = [], []
    for draw in range(num_draws):
        query_idx, gallery_idx = vehicleid_gallery_split(pids, draw, seed_base)
        if len(query_idx) == 0:
            raise ValueError("every identity has a single image: VehicleID needs at least two per identity")
        result = evaluate_features(
            features[torch.as_tensor(query_idx)],
            features[torch.as_tensor(gallery_idx)],
            pids[query_idx],
            pids[gallery_idx],
            None,
            None,
            metric=metric,
            topk=topk,
            block_size=block_size,
            device=device,
        )
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
