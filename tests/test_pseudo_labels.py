"""Pseudo-labelling engine (docs/method.md#pseudo-labels) against a slow dense implementation written in this file.

The dense version follows the spec's formulas literally: N x N distance matrices, Python loops
over samples, k-reciprocal sets as lists, the reference's label-equality matrices for the
reliability criterion. It shares no code with ``spcl.pseudo_labels``.
"""

from __future__ import annotations

import tracemalloc
from functools import lru_cache

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from sklearn.cluster import DBSCAN

from spcl.pseudo_labels import generate, jaccard_distance, labels_from_jaccard, nearest_neighbors
from spcl.pseudo_labels.jaccard import jaccard_from_neighbors
from spcl.neighbors import as_unit_features
from spcl.pseudo_labels.reliability import (
    ClusterReliability,
    cluster_reliability,
    independence_threshold,
    iou_distance,
    self_paced_labels,
)

# ----------------------------------------------------------------------------------------------
# Data: identities of varied size and spread, camera-like sub-modes, and singletons.


def identity_features(seed: int, num_ids: int = 32, dim: int = 24, singletons: int = 25) -> np.ndarray:
    """float64 features; half the identities are look-alikes of an earlier one (hard negatives)."""
    rng = np.random.default_rng(seed)
    parts, centers = [], []
    for _ in range(num_ids):
        size = int(rng.integers(2, 24))
        center = rng.normal(size=dim)
        center /= np.linalg.norm(center)
        if centers and rng.random() < 0.5:
            center = centers[rng.integers(len(centers))] + rng.uniform(0.3, 0.8) * center
            center /= np.linalg.norm(center)
        centers.append(center)
        modes = center + rng.uniform(0.1, 0.5) * rng.normal(size=(int(rng.integers(1, 4)), dim)) / np.sqrt(dim)
        spread = rng.uniform(0.2, 1.0)
        parts.append(modes[rng.integers(len(modes), size=size)] + spread * rng.normal(size=(size, dim)) / np.sqrt(dim))
    parts.append(rng.normal(size=(singletons, dim)))
    x = np.concatenate(parts)
    return x[rng.permutation(len(x))]


# ----------------------------------------------------------------------------------------------
# The dense implementation, straight from docs/method.md#pseudo-labels.


def dense_jaccard(x: np.ndarray, k1: int = 30, k2: int = 6) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    n = len(x)
    sq = (x**2).sum(axis=1)
    dist = np.maximum(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0.0)  # squared Euclidean, N x N
    order = np.empty((n, n), dtype=np.int64)
    for i in range(n):
        key = dist[i].copy()
        key[i] = -np.inf  # a point is its own nearest neighbour
        order[i] = np.lexsort((np.arange(n), key))
    searched = order[:, : min(k1, n)]  # the reference searches k1 neighbours

    def forward(i: int, k: int) -> list[int]:
        return list(searched[i, : min(k + 1, k1)])

    @lru_cache(maxsize=None)
    def reciprocal(i: int, k: int) -> tuple[int, ...]:
        return tuple(j for j in forward(i, k) if i in forward(j, k))

    half = int(np.around(k1 / 2))
    v = np.zeros((n, n))
    for i in range(n):
        r_i = reciprocal(i, k1)
        expanded = set(r_i)
        for j in r_i:
            r_j = reciprocal(j, half)
            if len(set(r_j) & set(r_i)) > 2 / 3 * len(r_j):
                expanded |= set(r_j)
        members = sorted(expanded)
        w = np.exp(-dist[i, members])
        v[i, members] = w / w.sum()
    if k2 > 1:
        v = np.stack([v[searched[i, :k2]].mean(axis=0) for i in range(n)])
    totals = v.sum(axis=1)
    jac = np.empty((n, n))
    for i in range(n):
        columns = np.flatnonzero(v[i])  # min(V[i,k], V[j,k]) is 0 wherever V[i,k] is
        mins = np.minimum(v[i, columns], v[:, columns]).sum(axis=1)
        maxs = totals[i] + totals - mins  # sum of max = sum a + sum b - sum of min
        jac[i] = 1.0 - mins / maxs
    return np.maximum(jac, 0.0)


def dense_reliability_labels(
    labels: np.ndarray, tight: np.ndarray, loose: np.ndarray, alpha: float | None = None
) -> tuple[np.ndarray, float | None]:
    """The reference's criterion: label-equality matrices, per-cluster lists, then our re-indexing."""

    def with_outlier_ids(lab: np.ndarray) -> np.ndarray:
        num = lab.max() + 1
        out, extra = [], 0
        for value in lab:
            if value != -1:
                out.append(value)
            else:
                out.append(num + extra)
                extra += 1
        return np.array(out)

    lab, lab_t, lab_l = with_outlier_ids(labels), with_outlier_ids(tight), with_outlier_ids(loose)
    same = lab[:, None] == lab[None, :]
    same_t = lab_t[:, None] == lab_t[None, :]
    same_l = lab_l[:, None] == lab_l[None, :]
    r_comp = 1 - np.minimum(same, same_t).sum(-1) / np.maximum(same, same_t).sum(-1)
    r_indep = 1 - np.minimum(same, same_l).sum(-1) / np.maximum(same, same_l).sum(-1)
    comp, indep, count = {}, {}, {}
    for i, label in enumerate(lab):
        comp.setdefault(label, []).append(r_comp[i])
        indep.setdefault(label, []).append(r_indep[i])
        count[label] = count.get(label, 0) + 1
    comp_min = {c: min(v) for c, v in comp.items()}
    indep_min = {c: min(v) for c, v in indep.items()}
    if alpha is None:
        multi = sorted(indep_min[c] for c in sorted(indep_min) if count[c] > 1)
        if not multi:
            return np.arange(len(lab)), None
        threshold = multi[min(len(multi) - 1, int(np.round(len(multi) * 0.9)))]
        alpha = 1 - threshold
    threshold = 1 - alpha
    kept = [i for i, c in enumerate(lab) if labels[i] >= 0 and indep_min[c] <= threshold and r_comp[i] <= comp_min[c]]
    members: dict[int, list[int]] = {}
    for i in kept:
        members.setdefault(int(labels[i]), []).append(i)
    final = np.full(len(lab), -1)
    next_id = 0
    for c in sorted(members):
        if len(members[c]) > 1:
            final[members[c]] = next_id
            next_id += 1
    for i in range(len(lab)):
        if final[i] == -1:
            final[i] = next_id
            next_id += 1
    return final, alpha


def dense_generate(x, eps=0.6, eps_gap=0.02, k1=30, k2=6, min_samples=4, alpha=None):
    jac = dense_jaccard(x, k1, k2)
    raw = [
        DBSCAN(eps=e, min_samples=min_samples, metric="precomputed").fit_predict(jac)
        for e in (eps, eps - eps_gap, eps + eps_gap)
    ]
    labels, alpha = dense_reliability_labels(raw[0], raw[1], raw[2], alpha)
    return jac, raw, labels, alpha


def as_dense(matrix: sp.csr_matrix) -> np.ndarray:
    full = np.ones(matrix.shape)
    coo = matrix.tocoo()
    full[coo.row, coo.col] = coo.data
    return full


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    _, ca = np.unique(a, return_inverse=True)
    _, cb = np.unique(b, return_inverse=True)
    pairs = np.unique(np.stack([ca, cb]), axis=1)
    return pairs.shape[1] == len(np.unique(ca)) == len(np.unique(cb))


# ----------------------------------------------------------------------------------------------
# Sparse == dense.


SETTINGS = [dict(), dict(k1=20, k2=4), dict(eps=0.5, eps_gap=0.04), dict(k1=11, k2=1, min_samples=3)]


@pytest.fixture(scope="module", params=[(1, 0), (2, 1), (3, 2), (7, 3), (6, 0)])
def case(request):
    seed, which = request.param
    settings = SETTINGS[which]
    x = identity_features(seed)
    return x, settings, dense_generate(x, **settings)


def test_jaccard_matches_dense(case):
    x, settings, (jac, _, _, _) = case
    sparse = jaccard_distance(x, k1=settings.get("k1", 30), k2=settings.get("k2", 6))
    assert isinstance(sparse, sp.csr_matrix) and sparse.shape == jac.shape
    coo = sparse.tocoo()
    stored = np.zeros(jac.shape, dtype=bool)
    stored[coo.row, coo.col] = True
    np.testing.assert_array_equal(stored, jac < 1)  # every pair < 1 stored, nothing else
    np.testing.assert_allclose(as_dense(sparse), jac, atol=1e-5, rtol=0)
    assert np.all(sparse.diagonal() == 0) and len(np.unique(coo.row * len(x) + coo.col)) == sparse.nnz


def test_generate_matches_dense(case):
    x, settings, (_, raw, labels, alpha) = case
    result = generate(x, **settings)
    np.testing.assert_array_equal(result.dbscan_labels, raw[0])
    np.testing.assert_array_equal(result.dbscan_labels_tight, raw[1])
    np.testing.assert_array_equal(result.dbscan_labels_loose, raw[2])
    np.testing.assert_array_equal(result.labels, labels)
    assert same_partition(result.labels, labels)
    assert result.alpha == alpha and result.alpha_computed
    assert result.labels.dtype == np.int64
    assert result.num_clusters == int((np.bincount(labels) > 1).sum())
    assert result.num_outliers == int((np.bincount(labels) == 1).sum())
    # the sets are not trivial: clusters formed, DBSCAN outliers, the criterion drops members
    assert result.num_clusters > 10 and np.any(result.dbscan_labels < 0)
    assert np.any((result.cluster_kept_members < result.cluster_sizes) & (result.cluster_sizes > 1))


def test_criterion_rejects_whole_clusters_on_some_sets():
    rejected = 0
    for seed, which in [(1, 0), (2, 1), (3, 2), (7, 3)]:
        result = generate(identity_features(seed), **SETTINGS[which])
        rejected += int(((result.cluster_kept_members == 0) & (result.cluster_sizes > 1)).sum())
        assert result.alpha < 1
    assert rejected >= 3


def test_labels_from_a_dense_distance(case):
    x, settings, (jac, raw, labels, alpha) = case
    keys = {"eps", "eps_gap", "min_samples"}
    result = labels_from_jaccard(jac, **{k: v for k, v in settings.items() if k in keys})
    np.testing.assert_array_equal(result.dbscan_labels, raw[0])
    np.testing.assert_array_equal(result.labels, labels)


def test_reused_alpha_matches_dense(case):
    x, settings, _ = case
    jac, raw, labels, alpha = dense_generate(x, **settings, alpha=0.8)
    result = generate(x, **settings, alpha=0.8)
    np.testing.assert_array_equal(result.labels, labels)
    assert result.alpha == 0.8 and not result.alpha_computed


def test_without_the_criterion_dbscan_clusters_stay_whole(case):
    x, settings, (_, raw, _, _) = case
    result = generate(x, **settings, self_paced=False)
    assert result.alpha is None and not result.alpha_computed
    assert same_partition(result.labels, np.where(raw[0] >= 0, raw[0], len(x) + np.arange(len(x))))
    assert result.num_clusters == int((np.bincount(raw[0][raw[0] >= 0]) > 1).sum())


def test_float32_and_torch_input_give_same_labels():
    x = identity_features(5)
    reference = generate(x).labels
    np.testing.assert_array_equal(generate(torch.from_numpy(x)).labels, reference)
    np.testing.assert_array_equal(generate(x.astype(np.float32)).labels, reference)
    np.testing.assert_array_equal(generate(x, device="cpu").labels, reference)


def test_deterministic():
    x = identity_features(6).astype(np.float32)
    first, second = generate(x), generate(x.copy())
    np.testing.assert_array_equal(first.labels, second.labels)
    a, b = jaccard_distance(x), jaccard_distance(x.copy())
    np.testing.assert_array_equal(a.indptr, b.indptr)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(a.data, b.data)


def test_neighbors_blocked_and_canonical():
    x = identity_features(7)
    idx, sims = nearest_neighbors(x, 12)
    idx_small, sims_small = nearest_neighbors(x, 12, tile=7)
    np.testing.assert_array_equal(idx, idx_small)
    np.testing.assert_allclose(sims, sims_small, atol=1e-12)
    assert np.all(idx[:, 0] == np.arange(len(x)))
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    full = unit @ unit.T
    np.fill_diagonal(full, np.inf)
    expected = np.argsort(-full, axis=1, kind="stable")[:, :12]
    np.testing.assert_array_equal(idx, expected)


def test_faiss_backend_matches_torch():
    pytest.importorskip("faiss")
    x = identity_features(8).astype(np.float32)
    np.testing.assert_array_equal(generate(x, knn_backend="faiss").labels, generate(x).labels)


class _FakeFaiss:
    """Stands in for faiss (not installed here) to exercise the backend's glue: an exact inner-product
    index that, like an approximate one, may leave a query out of its own results."""

    METRIC_INNER_PRODUCT = 0

    class _Index:
        is_trained = True

        def __init__(self, drop_self: bool) -> None:
            self.drop_self = drop_self

        def add(self, x):
            self.x = x

        def search(self, q, k):
            sims = q @ self.x.T
            if self.drop_self:
                np.fill_diagonal(sims, -np.inf)
            order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
            return np.take_along_axis(sims, order, axis=1).astype(np.float32), order

    def __init__(self, drop_self: bool = False) -> None:
        self.drop_self = drop_self

    def index_factory(self, dim, spec, metric):
        assert metric == self.METRIC_INNER_PRODUCT
        return self._Index(self.drop_self)


@pytest.mark.parametrize("drop_self", [False, True])
def test_faiss_glue_with_a_stand_in(monkeypatch, drop_self):
    import sys

    monkeypatch.setitem(sys.modules, "faiss", _FakeFaiss(drop_self))
    x = identity_features(8).astype(np.float32)
    idx_torch, _ = nearest_neighbors(x, 30)
    idx_faiss, sims = nearest_neighbors(x, 30, backend="faiss")
    np.testing.assert_array_equal(idx_faiss, idx_torch)
    np.testing.assert_allclose(sims[:, 0], 1.0, atol=1e-5)
    np.testing.assert_array_equal(generate(x, knn_backend="faiss").labels, generate(x).labels)


def test_unknown_backend_is_rejected():
    with pytest.raises(ValueError, match="backend"):
        generate(identity_features(0), knn_backend="annoy")


def test_jaccard_memory_is_linear(monkeypatch):
    """No N x N array: with small accumulation blocks, the sparse stage stays below N^2 bytes
    (one N x N boolean) at N = 8000, where an N x N float64 would be 512 MB."""
    import spcl.neighbors.kreciprocal as jaccard_module

    monkeypatch.setattr(jaccard_module, "_TRIPLE_BUDGET", 1 << 16)
    monkeypatch.setattr(jaccard_module, "_CELL_BUDGET", 1 << 16)
    n, rng = 8000, np.random.default_rng(0)
    centers = rng.normal(size=(400, 64)) + rng.normal(size=(20, 64))[rng.integers(20, size=400)]
    x = centers[rng.integers(400, size=n)] + 0.3 * rng.normal(size=(n, 64))
    unit = as_unit_features(x)
    ranks, _ = nearest_neighbors(unit, 30)
    tracemalloc.start()
    result = jaccard_from_neighbors(unit, ranks)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert result.nnz < n * 200
    assert peak < n * n, f"peak {peak / 2**20:.1f} MiB"


# ----------------------------------------------------------------------------------------------
# Edge cases.


def test_fewer_points_than_k1():
    x = identity_features(9, num_ids=3, singletons=2)[:20]
    jac, raw, labels, _ = dense_generate(x)
    np.testing.assert_allclose(as_dense(jaccard_distance(x)), jac, atol=1e-5, rtol=0)
    result = generate(x)
    np.testing.assert_array_equal(result.labels, labels)


def test_single_point():
    x = np.array([[0.3, -1.0, 2.0]])
    jac = jaccard_distance(x)
    assert jac.shape == (1, 1) and jac.nnz == 1 and jac[0, 0] == 0
    result = generate(x)
    np.testing.assert_array_equal(result.labels, [0])
    assert result.num_clusters == 0 and result.num_outliers == 1 and result.alpha is None


def test_duplicates_are_at_distance_zero_and_stored():
    x = identity_features(10)
    x[[3, 50, 77, 120]] = x[3]
    jac = jaccard_distance(x)
    for a in (3, 50, 77, 120):
        for b in (3, 50, 77, 120):
            start, stop = jac.indptr[a], jac.indptr[a + 1]
            pos = np.flatnonzero(jac.indices[start:stop] == b)
            assert pos.size == 1 and jac.data[start + pos[0]] == 0.0  # an explicit zero
    result = generate(x)
    assert len(set(result.dbscan_labels[[3, 50, 77, 120]])) == 1 and result.dbscan_labels[3] >= 0


def test_all_points_in_one_cluster():
    rng = np.random.default_rng(11)
    x = np.ones(16) + 0.05 * rng.normal(size=(40, 16))
    result = generate(x)
    assert np.all(result.dbscan_labels == 0) and np.all(result.dbscan_labels_tight == 0)
    np.testing.assert_array_equal(result.labels, np.zeros(40))
    assert result.num_clusters == 1 and result.num_outliers == 0 and result.alpha == 1.0


def test_all_outliers_leaves_alpha_for_a_later_epoch():
    x = np.eye(3) + 0.01
    result = generate(x)
    assert np.all(result.dbscan_labels == -1)
    np.testing.assert_array_equal(result.labels, [0, 1, 2])
    assert result.num_clusters == 0 and result.num_outliers == 3
    assert result.alpha is None and not result.alpha_computed and result.independence_threshold is None
    later = generate(identity_features(0), alpha=result.alpha)  # passed on unchanged: computed now
    assert later.alpha is not None and later.alpha_computed
    kept = generate(x, alpha=0.9)
    assert kept.alpha == 0.9 and not kept.alpha_computed


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_features_are_rejected(value):
    x = identity_features(12)
    x[5, 2] = value
    with pytest.raises(ValueError, match="NaN or inf"):
        generate(x)
    with pytest.raises(ValueError, match="NaN or inf"):
        jaccard_distance(x)


def test_zero_rows_and_bad_shapes_are_rejected():
    x = identity_features(12)
    x[4] = 0
    with pytest.raises(ValueError, match="all-zero"):
        generate(x)
    with pytest.raises(ValueError, match="2-D"):
        generate(np.ones(5))


@pytest.mark.parametrize("eps, gap", [(1.0, 0.02), (1.2, 0.0), (0.99, 0.02), (0.01, 0.02), (0.6, -0.1)])
def test_bad_radii_are_rejected(eps, gap):
    with pytest.raises(ValueError, match="eps"):
        generate(identity_features(0), eps=eps, eps_gap=gap)


# ----------------------------------------------------------------------------------------------
# The criterion on hand-made labellings.


def test_iou_distance_is_the_label_equality_formula():
    rng = np.random.default_rng(13)
    a = rng.integers(-1, 6, size=200)
    b = rng.integers(-1, 9, size=200)
    lab_a = np.where(a < 0, 100 + np.arange(200), a)
    lab_b = np.where(b < 0, 100 + np.arange(200), b)
    sa = lab_a[:, None] == lab_a[None, :]
    sb = lab_b[:, None] == lab_b[None, :]
    expected = 1 - (sa & sb).sum(1) / (sa | sb).sum(1)
    np.testing.assert_allclose(iou_distance(a, b), expected, rtol=0, atol=0)


@pytest.mark.parametrize("size, index", [(1, 0), (4, 3), (5, 4), (10, 9), (15, 14), (25, 22), (35, 32)])
def test_threshold_index_rounds_half_to_even(size, index):
    values = np.linspace(0.0, 0.5, size)
    assert independence_threshold(values[::-1], np.full(size, 2)) == values[index]
    assert independence_threshold(values, np.ones(size)) is None  # single-member clusters do not count


def test_clusters_at_the_threshold_are_kept():
    # ten clusters of 4; the loose clustering merges cluster 8 and 9 with one outlier each:
    # their independence distance is 1 - 4/5, the ninth smallest of ten: exactly the threshold.
    labels = np.repeat(np.arange(10), 4)
    labels = np.concatenate([labels, [-1, -1]])
    loose = labels.copy()
    loose[40], loose[41] = 8, 9
    tight = labels.copy()
    tight[0] = -1  # cluster 0 splits: its member 0 is no longer among the best
    rel = cluster_reliability(labels, tight, loose)
    threshold = independence_threshold(rel.independence_distance, rel.sizes)
    assert threshold == 1 - 4 / 5
    final, kept, num = self_paced_labels(labels, rel, threshold)
    assert num == 10 and kept[0] == 3 and kept[8] == 4 and kept[9] == 4
    assert final[0] >= 10 and len(set(final[40:])) == 2 and final[40] >= 10
    expected, _ = dense_reliability_labels(labels, tight, loose)
    np.testing.assert_array_equal(final, expected)


def test_alpha_round_trip_keeps_ties():
    """alpha = 1 - t and back gives t exactly for every t = 1 - a/b: a reused alpha keeps ties."""
    for b in range(1, 400):
        a = np.arange(0, b + 1)
        t = 1.0 - a / b
        assert np.all(1.0 - (1.0 - t) == t)


def test_rejected_cluster_members_become_instances():
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1, -1])
    loose = np.array([0, 0, 0, 0, 0, 0, 0, 0, 0])  # everything merges when the radius grows
    rel = cluster_reliability(labels, labels, loose)
    assert isinstance(rel, ClusterReliability)
    final, kept, num = self_paced_labels(labels, rel, threshold=0.1)
    assert num == 0 and np.all(kept == 0)
    np.testing.assert_array_equal(final, np.arange(9))
