"""Tests for the VehicleID protocol helpers (docs/method.md#evaluation)."""

from __future__ import annotations

import numpy as np
import pytest

from spcl.data.vehicleid import vehicleid_gallery_split
from spcl.evaluation import evaluate_features, rank_metrics, vehicleid_metrics


def test_split_takes_one_gallery_image_per_identity():
    rng = np.random.default_rng(0)
    pids = rng.integers(100, 160, size=400)
    query_idx, gallery_idx = vehicleid_gallery_split(pids, draw=3)
    assert sorted(pids[gallery_idx].tolist()) == sorted(np.unique(pids).tolist())
    assert np.all(np.diff(gallery_idx) > 0) and np.all(np.diff(query_idx) > 0)
    assert np.array_equal(np.sort(np.concatenate([query_idx, gallery_idx])), np.arange(len(pids)))


def test_split_convention_and_determinism():
    pids = np.array([7, 3, 7, 3, 3, 9, 7])
    query_idx, gallery_idx = vehicleid_gallery_split(pids, draw=2, seed_base=5)
    # written out: identities in ascending order (3, 7, 9), images of each in list order
    choice = np.random.default_rng(7).integers(0, [3, 3, 1])
    groups = {3: [1, 3, 4], 7: [0, 2, 6], 9: [5]}
    expected = sorted(groups[pid][c] for pid, c in zip((3, 7, 9), choice))
    assert gallery_idx.tolist() == expected
    again = vehicleid_gallery_split(pids, draw=2, seed_base=5)
    assert np.array_equal(again[0], query_idx) and np.array_equal(again[1], gallery_idx)


def test_draws_differ():
    pids = np.repeat(np.arange(50), 6)
    galleries = {tuple(vehicleid_gallery_split(pids, draw)[1]) for draw in range(10)}
    assert len(galleries) == 10
    assert not np.array_equal(vehicleid_gallery_split(pids, 0, seed_base=1)[1], vehicleid_gallery_split(pids, 0)[1])


def test_split_errors():
    with pytest.raises(ValueError, match="draw"):
        vehicleid_gallery_split(np.array([1, 1]), draw=-1)
    with pytest.raises(ValueError, match="non-empty"):
        vehicleid_gallery_split(np.array([], dtype=int), draw=0)


def test_vehicleid_metrics_mean_and_spread():
    rng = np.random.default_rng(1)
    pids = np.repeat(np.arange(30), 4)
    features = rng.normal(size=(30, 16))[pids] + 0.8 * rng.normal(size=(120, 16))
    result = vehicleid_metrics(features, pids, num_draws=4, topk=5)
    maps = []
    for draw in range(4):
        q, g = vehicleid_gallery_split(pids, draw)
        one = evaluate_features(features[q], features[g], pids[q], pids[g], None, None, topk=5)
        maps.append(one["mAP"])
        # no camera filter: every query keeps its true match (one gallery image per identity)
        assert one["num_matches"].tolist() == [1] * len(q)
    assert result["draw_mAP"].tolist() == pytest.approx(maps)
    assert result["mAP"] == pytest.approx(np.mean(maps))
    assert result["mAP_std"] == pytest.approx(np.std(maps))
    assert result["cmc"].shape == (5,) and result["draw_cmc"].shape == (4, 5)
    assert (result["num_identities"], result["num_query"], result["num_gallery"]) == (30, 90, 30)


def test_single_gallery_match_ap_is_reciprocal_rank():
    dist = np.array([[0.3, 0.1, 0.2]])
    result = rank_metrics(dist, [5], [5, 1, 2], None, None, topk=3)
    assert result["mAP"] == pytest.approx(1 / 3)
