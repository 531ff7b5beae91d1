"""Tests for spcl.evaluation metrics (docs/method.md#evaluation) against a plain-loop float64 reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spcl.evaluation import (
    ImageSet,
    evaluate_features,
    format_metrics,
    metrics_from_ranked_lists,
    pairwise_distance,
    rank_metrics,
    ranked_gallery,
)
from spcl.evaluation import ranking as ranking_module
from spcl.evaluation.protocol import Protocol


def slow_metrics(dist, qpids, gpids, qcams, gcams, topk, qpaths=None, gpaths=None):
    """The protocol written out: stable sort by (distance, gallery index), drop same id + same camera
    and the query's own file, AP = mean precision at each true match."""
    dist = np.asarray(dist, dtype=np.float64)
    nq, ng = dist.shape
    aps, firsts, counts = [], [], []
    for i in range(nq):
        order = sorted(range(ng), key=lambda j: (dist[i, j], j))
        hits = []
        for j in order:
            same_cam = qcams is not None and gcams[j] == qcams[i]
            if gpids[j] == qpids[i] and same_cam:
                continue
            if qpaths is not None and gpaths[j] == qpaths[i]:
                continue
            hits.append(gpids[j] == qpids[i])
        found, precisions = 0, []
        for rank, hit in enumerate(hits):
            if hit:
                found += 1
                precisions.append(found / (rank + 1))
        counts.append(found)
        aps.append(sum(precisions) / found if found else float("nan"))
        firsts.append(hits.index(True) + 1 if found else -1)
    aps, firsts, counts = np.array(aps), np.array(firsts), np.array(counts)
    valid = counts > 0
    cmc = np.array([np.mean(firsts[valid] <= k) for k in range(1, topk + 1)])
    return {"mAP": aps[valid].mean(), "cmc": cmc, "ap": aps, "first_match_rank": firsts, "num_matches": counts}


def assert_same(result, expected):
    assert result["mAP"] == pytest.approx(expected["mAP"], abs=1e-12)
    np.testing.assert_allclose(result["cmc"], expected["cmc"], atol=1e-12)
    np.testing.assert_allclose(result["ap"], expected["ap"], atol=1e-12)  # NaNs compare equal
    np.testing.assert_array_equal(result["first_match_rank"], expected["first_match_rank"])
    np.testing.assert_array_equal(result["num_matches"], expected["num_matches"])
    np.testing.assert_array_equal(result["valid"], expected["num_matches"] > 0)
    assert result["num_valid_queries"] == int((expected["num_matches"] > 0).sum())


def random_problem(seed, nq=23, ng=41, num_ids=7, num_cams=3, levels=5):
    """Distances on a coarse grid (many exact ties), a distractor id 0 in the gallery only, query
    ids absent from the gallery, and same-camera true matches."""
    rng = np.random.default_rng(seed)
    dist = rng.integers(0, levels, size=(nq, ng)).astype(np.float64)
    gpids = rng.integers(0, num_ids, size=ng)  # 0 = distractor, never a query id
    qpids = rng.integers(1, num_ids + 2, size=nq)  # ids num_ids, num_ids + 1 are not in the gallery
    qcams = rng.integers(0, num_cams, size=nq)
    gcams = rng.integers(0, num_cams, size=ng)
    return dist, qpids, gpids, qcams, gcams


# ------------------------------------------------------------------------- hand-computed cases


def test_matches_at_ranks_one_and_three():
    dist = np.array([[0.1, 0.2, 0.3, 0.4, 0.5]])
    result = rank_metrics(dist, [1], [1, 2, 1, 3, 4], [0], [1, 1, 1, 1, 1], topk=5)
    assert result["mAP"] == pytest.approx((1 / 1 + 2 / 3) / 2)
    np.testing.assert_allclose(result["cmc"], [1, 1, 1, 1, 1])
    assert result["first_match_rank"].tolist() == [1]


def test_same_camera_match_is_removed_not_counted():
    # gallery 0 is the query's identity seen by the query's camera: removed, so the match at
    # distance 0.3 moves to rank 2 and the one at 0.5 to rank 4.
    dist = np.array([[0.1, 0.2, 0.3, 0.4, 0.5]])
    result = rank_metrics(dist, [1], [1, 2, 1, 3, 1], [0], [0, 1, 1, 1, 1], topk=3)
    assert result["mAP"] == pytest.approx((1 / 2 + 2 / 4) / 2)
    np.testing.assert_allclose(result["cmc"], [0, 1, 1])
    assert result["num_matches"].tolist() == [2]


def test_query_without_valid_match_does_not_count():
    dist = np.array([[0.1, 0.2], [0.3, 0.1]])
    # query 1 has identity 5 only under its own camera: no valid match
    result = rank_metrics(dist, [1, 5], [1, 5], [0, 0], [1, 0], topk=2)
    assert result["num_valid_queries"] == 1
    assert result["mAP"] == pytest.approx(1.0)
    assert np.isnan(result["ap"][1]) and result["first_match_rank"][1] == -1
    assert result["valid"].tolist() == [True, False]


def test_tie_rule_is_gallery_order():
    # a negative and a true match at the same distance: the one listed first ranks first
    result = rank_metrics(np.array([[0.5, 0.5]]), [1], [2, 1], [0], [1, 1], topk=2)
    assert result["mAP"] == pytest.approx(1 / 2)
    assert result["first_match_rank"].tolist() == [2]
    result = rank_metrics(np.array([[0.5, 0.5]]), [1], [1, 2], [0], [1, 1], topk=2)
    assert result["mAP"] == pytest.approx(1.0)
    # ties with a removed item and another match: order inside the tie is by gallery index
    dist = np.array([[0.2, 0.2, 0.2, 0.2, 0.1]])
    result = rank_metrics(dist, [1], [1, 3, 1, 1, 4], [0], [0, 1, 1, 1, 1], topk=4)
    # valid ranking: 4(neg, 0.1), 1(neg), 2(match), 3(match) -> precisions 1/3, 2/4
    assert result["mAP"] == pytest.approx((1 / 3 + 2 / 4) / 2)
    assert result["first_match_rank"].tolist() == [3]


def test_no_cameras_keeps_every_true_match():
    dist = np.array([[0.1, 0.2, 0.3]])
    # giving every image camera 0 (the reference's VehicleID bug) removes every true match
    with pytest.raises(ValueError, match="no query has a valid true match"):
        rank_metrics(dist, [1], [1, 2, 1], [0], [0, 0, 0], topk=3)
    without = rank_metrics(dist, [1], [1, 2, 1], None, None, topk=3)
    assert without["mAP"] == pytest.approx((1 + 2 / 3) / 2)
    assert without["num_matches"].tolist() == [2]


def test_own_file_never_counts():
    dist = np.array([[0.0, 0.2, 0.3, 0.1]])
    result = rank_metrics(
        dist, [1], [1, 2, 1, 9], None, None, topk=3, query_paths=["a.jpg"], gallery_paths=["./a.jpg", "b", "c", "d"]
    )
    # gallery 0 is the query's own file: dropped; ranking d(neg), b(neg), c(match)
    assert result["mAP"] == pytest.approx(1 / 3)
    # an own file listed under another identity is dropped too, not kept as a negative
    result = rank_metrics(
        dist, [1], [7, 2, 1, 9], None, None, topk=3, query_paths=["a.jpg"], gallery_paths=["a.jpg", "b", "c", "d"]
    )
    assert result["mAP"] == pytest.approx(1 / 3)


# ------------------------------------------------------------------------- against the reference


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("block_size", [None, 1, 4])
def test_rank_metrics_matches_reference(seed, block_size):
    dist, qpids, gpids, qcams, gcams = random_problem(seed)
    expected = slow_metrics(dist, qpids, gpids, qcams, gcams, topk=10)
    assert_same(rank_metrics(dist, qpids, gpids, qcams, gcams, topk=10, block_size=block_size), expected)


@pytest.mark.parametrize("seed", range(3))
def test_reference_with_paths_and_without_cameras(seed):
    dist, qpids, gpids, _, _ = random_problem(seed, levels=3)
    rng = np.random.default_rng(100 + seed)
    gpaths = [f"img{j}.jpg" for j in range(dist.shape[1])]
    picks = rng.integers(0, dist.shape[1], len(qpids))
    qpaths = [gpaths[j] if rng.random() < 0.5 else f"q{i}.jpg" for i, j in enumerate(picks)]
    expected = slow_metrics(dist, qpids, gpids, None, None, 7, qpaths, gpaths)
    result = rank_metrics(
        dist, qpids, gpids, None, None, topk=7, query_paths=qpaths, gallery_paths=gpaths, block_size=5
    )
    assert_same(result, expected)


def test_continuous_distances_float32_torch_input():
    rng = np.random.default_rng(7)
    dist = rng.random((30, 200)).astype(np.float32)
    qpids, gpids = rng.integers(0, 12, 30), rng.integers(0, 12, 200)
    qcams, gcams = rng.integers(0, 4, 30), rng.integers(0, 4, 200)
    expected = slow_metrics(dist, qpids, gpids, qcams, gcams, 20)
    result = rank_metrics(torch.from_numpy(dist), torch.from_numpy(qpids), gpids, qcams, gcams, topk=20, block_size=7)
    assert_same(result, expected)


def test_strided_and_list_inputs():
    dist, qpids, gpids, qcams, gcams = random_problem(5)
    flipped = dist[:, ::-1]  # negative strides
    expected = slow_metrics(flipped, qpids, gpids[::-1], qcams, gcams[::-1], 5)
    assert_same(rank_metrics(flipped, qpids, gpids[::-1], qcams, gcams[::-1], topk=5), expected)
    as_lists = rank_metrics(
        flipped.tolist(), qpids.tolist(), gpids[::-1].tolist(), qcams.tolist(), gcams[::-1].tolist(), topk=5
    )
    assert_same(as_lists, expected)


def test_all_distances_tied():
    dist = np.zeros((5, 12))
    qpids, gpids = np.array([0, 1, 2, 3, 1]), np.arange(12) % 4
    qcams, gcams = np.array([0, 1, 0, 1, 0]), np.arange(12) % 3
    expected = slow_metrics(dist, qpids, gpids, qcams, gcams, 12)
    assert_same(rank_metrics(dist, qpids, gpids, qcams, gcams, topk=12), expected)


def test_string_labels():
    dist, qpids, gpids, qcams, gcams = random_problem(3)
    expected = slow_metrics(dist, qpids, gpids, qcams, gcams, 5)
    labelled = [("id", qpids), ("id", gpids), ("c", qcams), ("c", gcams)]
    names = [[f"{prefix}{v}" for v in values] for prefix, values in labelled]
    result = rank_metrics(dist, *names, topk=5)
    assert_same(result, expected)


def test_ap_is_sklearn_average_precision():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(11)
    dist = rng.random((20, 80))
    qpids, gpids = rng.integers(0, 6, 20), rng.integers(0, 6, 80)
    result = rank_metrics(dist, qpids, gpids, None, None)
    for i in range(20):
        y_true = gpids == qpids[i]
        if y_true.any():
            expected = sklearn_metrics.average_precision_score(y_true, -dist[i])
            assert result["ap"][i] == pytest.approx(expected, abs=1e-12)


def test_torch_sort_path_matches_numpy_path():
    # the counting used on accelerators (torch.sort + searchsorted) gives the same result
    dist, qpids, gpids, qcams, gcams = random_problem(4, levels=4)
    protocol = Protocol.build(ImageSet(pids=qpids, camids=qcams), ImageSet(pids=gpids, camids=gcams), len(qpids), len(gpids))
    related, is_match = protocol.related(0, len(qpids))
    ap, first, _, finite = ranking_module._rank_block(
        torch.from_numpy(dist), related, is_match, ranking_module._Counter(None)
    )
    expected = slow_metrics(dist, qpids, gpids, qcams, gcams, 3)
    assert finite.all()
    np.testing.assert_allclose(ap, expected["ap"], atol=1e-12)
    np.testing.assert_array_equal(np.where(first >= 0, first + 1, -1), expected["first_match_rank"])


def test_accelerator_tie_count_matches_cpu_tie_count():
    rng = np.random.default_rng(9)
    block = torch.from_numpy(rng.integers(0, 3, size=(6, 50)).astype(np.float32))
    rows, index = rng.integers(0, 6, 200), rng.integers(0, 50, 200)
    values = block.numpy()[rows, index]
    cpu = ranking_module._tied_before(block, rows, values, index)
    vectorised = ranking_module._tied_before_vectorised(block, rows, values, index, chunk=7)
    expected = [int((block[r, :i] == float(v)).sum()) for r, v, i in zip(rows, values, index)]
    assert cpu.tolist() == expected and vectorised.tolist() == expected


# ------------------------------------------------------------------------- from features


def integer_features(seed, n, dim=6):
    # small integers: every dot product is exact, so the distances do not depend on the blocking
    return np.random.default_rng(seed).integers(-2, 3, size=(n, dim)).astype(np.float64)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("block_size", [1, 7, 13])
def test_evaluate_features_equals_rank_metrics(metric, block_size):
    query, gallery = integer_features(0, 31), integer_features(1, 53)
    query[3] = gallery[5]  # exact ties and zero distances
    rng = np.random.default_rng(2)
    qpids, gpids = rng.integers(1, 8, 31), rng.integers(0, 8, 53)
    qcams, gcams = rng.integers(0, 3, 31), rng.integers(0, 3, 53)
    dist = pairwise_distance(query, gallery, metric)
    expected = slow_metrics(dist.numpy(), qpids, gpids, qcams, gcams, 10)
    assert_same(rank_metrics(dist, qpids, gpids, qcams, gcams, topk=10), expected)
    result = evaluate_features(
        query, gallery, qpids, gpids, qcams, gcams, metric=metric, topk=10, block_size=block_size
    )
    assert_same(result, expected)
    as_torch = evaluate_features(
        torch.from_numpy(query), torch.from_numpy(gallery), qpids, gpids, qcams, gcams, metric, 10,
        block_size=block_size,
    )
    assert_same(as_torch, expected)


def test_distances_are_what_the_metric_says():
    rng = np.random.default_rng(3)
    query, gallery = rng.normal(size=(4, 5)), rng.normal(size=(6, 5))
    unit_query = query / np.linalg.norm(query, axis=1, keepdims=True)
    cos = 1 - unit_query @ (gallery / np.linalg.norm(gallery, axis=1, keepdims=True)).T
    np.testing.assert_allclose(pairwise_distance(query, gallery, "cosine").numpy(), cos, atol=1e-12)
    euclid = np.linalg.norm(query[:, None] - gallery[None], axis=2)
    np.testing.assert_allclose(pairwise_distance(query, gallery, "euclidean", block_size=3).numpy(), euclid, atol=1e-12)


def test_float32_features_random():
    rng = np.random.default_rng(5)
    centers = rng.normal(size=(10, 32))
    gpids, qpids = rng.integers(0, 10, 300), rng.integers(0, 10, 40)
    gallery = (centers[gpids] + rng.normal(size=(300, 32))).astype(np.float32)
    query = (centers[qpids] + rng.normal(size=(40, 32))).astype(np.float32)
    qcams, gcams = rng.integers(0, 5, 40), rng.integers(0, 5, 300)
    dist = pairwise_distance(query, gallery, block_size=9)
    expected = slow_metrics(dist.numpy(), qpids, gpids, qcams, gcams, 50)
    assert_same(evaluate_features(query, gallery, qpids, gpids, qcams, gcams, block_size=9), expected)
    timings = {}
    evaluate_features(query, gallery, qpids, gpids, qcams, gcams, timings=timings)
    assert set(timings) == {"distances", "ranking"}
    assert "mAP" in format_metrics(expected | {"num_valid_queries": 1})


# ------------------------------------------------------------------------- ranked lists


def test_ranked_gallery_is_stable_order_and_drops_removed_items():
    query, gallery = integer_features(4, 9, dim=3), integer_features(5, 40, dim=3)  # many ties
    dist = pairwise_distance(query, gallery, "euclidean").numpy()
    index, values = ranked_gallery(ImageSet(query), ImageSet(gallery), k=12, metric="euclidean", block_size=4)
    expected = np.argsort(dist, axis=1, kind="stable")[:, :12]
    np.testing.assert_array_equal(index, expected)
    np.testing.assert_array_equal(values, np.take_along_axis(dist, expected, 1))

    rng = np.random.default_rng(6)
    qpids, gpids = rng.integers(0, 4, 9), rng.integers(0, 4, 40)
    qcams, gcams = rng.integers(0, 2, 9), rng.integers(0, 2, 40)
    index, _ = ranked_gallery(
        ImageSet(query, pids=qpids, camids=qcams), ImageSet(gallery, pids=gpids, camids=gcams), k=45, metric="euclidean",
    )
    for i in range(9):
        keep = [j for j in np.argsort(dist[i], kind="stable") if not (gpids[j] == qpids[i] and gcams[j] == qcams[i])]
        assert index[i, : len(keep)].tolist() == keep
        assert (index[i, len(keep) :] == -1).all()
        # the first true match of the ranked list is the rank the metrics report
    result = evaluate_features(query, gallery, qpids, gpids, qcams, gcams, "euclidean")
    for i in np.flatnonzero(result["valid"]):
        first = next(r for r, j in enumerate(index[i]) if j >= 0 and gpids[j] == qpids[i])
        assert first + 1 == result["first_match_rank"][i]


# ------------------------------------------------------------------------- errors


def test_clear_errors():
    dist = np.zeros((2, 3))
    with pytest.raises(ValueError, match="query_pids has 3 entries"):
        rank_metrics(dist, [1, 2, 3], [1, 2, 3], None, None)
    with pytest.raises(ValueError, match="empty"):
        rank_metrics(np.zeros((0, 3)), [], [1, 2, 3], None, None)
    with pytest.raises(ValueError, match="2-D"):
        rank_metrics(np.zeros(3), [1], [1, 2, 3], None, None)
    with pytest.raises(ValueError, match="NaN or inf"):
        rank_metrics(np.array([[0.1, np.nan, 0.3], [0.1, 0.2, 0.3]]), [1, 2], [1, 2, 3], None, None)
    with pytest.raises(ValueError, match="NaN or inf"):
        rank_metrics(np.array([[0.1, 0.2, 0.3], [0.1, -np.inf, 0.3]]), [1, 2], [1, 2, 3], None, None)
    with pytest.raises(ValueError, match="both query_camids and gallery_camids"):
        rank_metrics(dist, [1, 2], [1, 2, 3], [0, 0], None)
    with pytest.raises(ValueError, match="no query has a valid true match"):
        rank_metrics(dist, [7, 8], [1, 2, 3], None, None)
    with pytest.raises(ValueError, match="topk"):
        rank_metrics(dist, [1, 2], [1, 2, 3], None, None, topk=0)
    with pytest.raises(ValueError, match="differ in dimension"):
        evaluate_features(np.ones((2, 4)), np.ones((3, 5)), [1, 2], [1, 2, 3], None, None)
    with pytest.raises(ValueError, match="query_features contains NaN"):
        evaluate_features(np.array([[1.0, np.nan]]), np.ones((3, 2)), [1], [1, 2, 3], None, None)
    with pytest.raises(ValueError, match="gallery_features contains NaN.*row 2"):
        gallery = np.array([[1, 0], [0, 1], [np.inf, 1]])
        evaluate_features(np.ones((1, 2)), gallery, [1], [1, 2, 3], None, None, "euclidean")
    with pytest.raises(ValueError, match="gallery_features is empty"):
        evaluate_features(np.ones((2, 4)), np.ones((0, 4)), [1, 2], [], None, None)
    with pytest.raises(ValueError, match="unknown metric"):
        evaluate_features(np.ones((2, 4)), np.ones((3, 4)), [1, 2], [1, 2, 3], None, None, metric="manhattan")
    with pytest.raises(ValueError, match="block_size"):
        evaluate_features(np.ones((2, 4)), np.ones((3, 4)), [1, 2], [1, 2, 3], None, None, block_size=0)
    with pytest.raises(ValueError, match="query_features contains NaN or inf, or values too large"):
        huge = np.full((3, 4), 1e30, np.float32)
        evaluate_features(huge[:2], huge, [1, 2], [1, 2, 3], None, None, metric="euclidean")


# ------------------------------------------------------------------ metrics from ranked lists
def _slow_lists(dist, qpids, gpids, qcams, gcams, length, qpaths=None, gpaths=None):
    """Each query's first ``length`` gallery items in the stable order, and the protocol on them
    written out: AP over the listed valid matches, divided by all of the query's valid matches."""
    nq, ng = dist.shape
    lists = np.full((nq, length), -1, dtype=np.int64)
    aps, firsts, listed, total = [], [], 0, 0
    for i in range(nq):
        order = sorted(range(ng), key=lambda j: (dist[i, j], j))
        lists[i, : min(length, ng)] = order[:length]

        def removed(j):
            same_cam = qcams is not None and gcams[j] == qcams[i]
            own = qpaths is not None and gpaths[j] == qpaths[i]
            return (gpids[j] == qpids[i] and same_cam) or own

        matches = sum(1 for j in range(ng) if gpids[j] == qpids[i] and not removed(j))
        rank = found = 0
        precisions, first = [], None
        for j in order[:length]:
            if removed(j):
                continue
            rank += 1
            if gpids[j] == qpids[i]:
                found += 1
                precisions.append(found / rank)
                first = rank if first is None else first
        listed, total = listed + found, total + matches
        aps.append(sum(precisions) / matches if matches else np.nan)
        firsts.append(first if first is not None else (length + 1 if matches else -1))
    aps, firsts = np.array(aps), np.array(firsts)
    valid = ~np.isnan(aps)
    cmc = np.array([np.mean(firsts[valid] <= k) for k in range(1, length + 1)])
    return lists, {"mAP": aps[valid].mean(), "cmc": cmc, "ap": aps, "recall": listed / total}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_full_ranked_lists_give_the_exact_metrics(seed):
    dist, qpids, gpids, qcams, gcams = random_problem(seed)
    qpaths = [f"img{i}.jpg" for i in range(len(qpids))]
    gpaths = [f"img{j + 20}.jpg" for j in range(len(gpids))]  # queries 20.. are their own gallery files
    lists, _ = _slow_lists(dist, qpids, gpids, qcams, gcams, dist.shape[1])
    query = ImageSet(pids=qpids, camids=qcams, paths=qpaths)
    gallery = ImageSet(pids=gpids, camids=gcams, paths=gpaths)
    result = metrics_from_ranked_lists(lists, query, gallery, block_size=5)
    expected = slow_metrics(dist, qpids, gpids, qcams, gcams, dist.shape[1], qpaths, gpaths)
    assert result["mAP"] == pytest.approx(expected["mAP"], abs=1e-12)
    np.testing.assert_allclose(result["cmc"], expected["cmc"], atol=1e-12)
    np.testing.assert_allclose(result["per_query_ap"], expected["ap"], atol=1e-12)
    assert result["recall"] == 1.0


@pytest.mark.parametrize("length", [1, 4, 9])
def test_truncated_lists_count_missing_matches_as_not_retrieved(length):
    dist, qpids, gpids, qcams, gcams = random_problem(3)
    lists, expected = _slow_lists(dist, qpids, gpids, qcams, gcams, length)
    result = metrics_from_ranked_lists(lists, ImageSet(pids=qpids, camids=qcams), ImageSet(pids=gpids, camids=gcams))
    assert result["mAP"] == pytest.approx(expected["mAP"], abs=1e-12)
    np.testing.assert_allclose(result["cmc"], expected["cmc"], atol=1e-12)
    assert result["recall"] == pytest.approx(expected["recall"], abs=1e-12)
    exact = slow_metrics(dist, qpids, gpids, qcams, gcams, length)
    assert result["mAP"] <= exact["mAP"] + 1e-12  # a lower bound of the exact mAP
    np.testing.assert_allclose(result["cmc"], exact["cmc"][:length], atol=1e-12)  # CMC within the lists is exact


def test_ranked_lists_by_hand_and_bad_input():
    # gallery: ids 1 1 2 1, cameras 0 1 1 1; the query is id 1 seen by camera 0: item 0 is removed
    gallery = ImageSet(pids=[1, 1, 2, 1], camids=[0, 1, 1, 1])
    query = ImageSet(pids=[1], camids=[0])
    result = metrics_from_ranked_lists(np.array([[0, 2, 1, -1]]), query, gallery)
    # valid ranking: 2 (miss), 1 (hit at rank 2); item 3 is a valid match not listed
    assert result["mAP"] == pytest.approx((1 / 2) / 2)
    np.testing.assert_allclose(result["cmc"], [0.0, 1.0, 1.0, 1.0])
    assert result["recall"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="queries x list length"):
        metrics_from_ranked_lists(np.array([0, 1]), query, gallery)
    with pytest.raises(ValueError, match="no query has a valid true match"):
        metrics_from_ranked_lists(np.array([[2]]), ImageSet(pids=[5], camids=[0]), gallery)
