"""k-reciprocal re-ranking (docs/method.md#evaluation) against a dense implementation of the widely used formula.

The dense version below follows the torchreid / reference recipe step by step: joint matrix of
squared Euclidean distances, squared, each column divided by its maximum, transposed; full
argsort; forward lists of k + 1; expansion; softmax weights; query expansion; Jaccard over the
query rows; final = (1 - lambda) jaccard + lambda original. It shares no code with spcl.
"""

from __future__ import annotations

import tracemalloc
from functools import lru_cache

import numpy as np
import pytest
import torch

from spcl.evaluation.reranking import re_rank


def identity_features(seed: int, num_ids: int = 14, dim: int = 24, singletons: int = 12) -> np.ndarray:
    rng = np.random.default_rng(seed)
    parts = []
    for _ in range(num_ids):
        size = int(rng.integers(2, 30))
        center = rng.normal(size=dim)
        center /= np.linalg.norm(center)
        spread = rng.uniform(0.2, 1.0)
        parts.append(center + spread * rng.normal(size=(size, dim)) / np.sqrt(dim))
    parts.append(rng.normal(size=(singletons, dim)))
    x = np.concatenate(parts)
    return x[rng.permutation(len(x))]


def dense_re_rank(query, gallery, k1=20, k2=6, lambda_value=0.3):
    q = np.asarray(query, dtype=np.float64)
    g = np.asarray(gallery, dtype=np.float64)
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    g = g / np.linalg.norm(g, axis=1, keepdims=True)

    def squared_euclidean(a, b):
        return np.stack([((b - a[i]) ** 2).sum(axis=1) for i in range(len(a))])

    num_query = len(q)
    q_g, q_q, g_g = squared_euclidean(q, g), squared_euclidean(q, q), squared_euclidean(g, g)
    original = np.concatenate([np.concatenate([q_q, q_g], axis=1), np.concatenate([q_g.T, g_g], axis=1)], axis=0)
    original = np.power(original, 2)
    original = np.transpose(original / np.max(original, axis=0))
    n = len(original)
    rank = np.empty((n, n), dtype=np.int64)
    for i in range(n):
        key = original[i].copy()
        key[i] = -np.inf  # a point first in its own list
        rank[i] = np.lexsort((np.arange(n), key))

    @lru_cache(maxsize=None)
    def reciprocal(i: int, k: int) -> tuple[int, ...]:
        forward = rank[i, : k + 1]
        return tuple(int(j) for j in forward if i in rank[j, : k + 1])

    half = int(np.around(k1 / 2.0))
    v = np.zeros((n, n))
    for i in range(n):
        r_i = reciprocal(i, k1)
        expansion = list(r_i)
        for candidate in r_i:
            r_c = reciprocal(candidate, half)
            if len(np.intersect1d(r_c, r_i)) > 2.0 / 3 * len(r_c):
                expansion.extend(r_c)
        expansion = np.unique(expansion)
        weight = np.exp(-original[i, expansion])
        v[i, expansion] = weight / np.sum(weight)
    if k2 != 1:
        v = np.stack([np.mean(v[rank[i, :k2]], axis=0) for i in range(n)])
    jaccard = np.empty((num_query, n))
    for i in range(num_query):
        jaccard[i] = 1 - np.minimum(v[i], v).sum(axis=1) / np.maximum(v[i], v).sum(axis=1)
    final = jaccard * (1 - lambda_value) + original[:num_query] * lambda_value
    return final[:, num_query:]


def split(x: np.ndarray, seed: int, share: float = 0.25):
    perm = np.random.default_rng(seed).permutation(len(x))
    num_query = int(len(x) * share)
    return x[perm[:num_query]], x[perm[num_query:]]


@pytest.mark.parametrize(
    "seed, settings",
    [
        (0, dict()),
        (1, dict(k1=10, k2=3, lambda_value=0.5)),
        (2, dict(k1=7, k2=1, lambda_value=0.0)),
        (3, dict(k1=20, k2=6, lambda_value=1.0)),
        (4, dict(k1=3, k2=2)),
    ],
)
def test_matches_dense_formula(seed, settings):
    query, gallery = split(identity_features(seed), seed)
    expected = dense_re_rank(query, gallery, **settings)
    result = re_rank(query, gallery, **settings)
    assert result.shape == (len(query), len(gallery)) and result.dtype == np.float32
    np.testing.assert_allclose(result, expected, atol=1e-5, rtol=0)


def test_blocks_and_inputs_do_not_change_the_result():
    query, gallery = split(identity_features(5), 5)
    reference = re_rank(query, gallery)
    np.testing.assert_array_equal(re_rank(query, gallery, tile=50), reference)
    np.testing.assert_array_equal(re_rank(torch.from_numpy(query), torch.from_numpy(gallery)), reference)
    np.testing.assert_array_equal(re_rank(query, gallery, device="cpu"), reference)
    np.testing.assert_allclose(re_rank(query.astype(np.float32), gallery.astype(np.float32)), reference, atol=1e-5)


def test_small_problems():
    x = identity_features(6)
    query, gallery = x[:2], x[2:9]  # fewer points than k1 + 1
    np.testing.assert_allclose(re_rank(query, gallery), dense_re_rank(query, gallery), atol=1e-5, rtol=0)
    one = re_rank(x[:1], x[1:2])
    assert one.shape == (1, 1) and np.isfinite(one).all()


def test_duplicate_of_the_query_in_the_gallery_ranks_first():
    query, gallery = split(identity_features(7), 7)
    gallery = gallery.copy()
    gallery[10] = query[3]
    result = re_rank(query, gallery)
    assert np.argmin(result[3]) == 10


def test_memory_grows_with_points_times_k(monkeypatch):
    """q x g output aside, no (q + g)^2 array: at 500 x 2000 the joint float64 matrix is 50 MB."""
    import spcl.neighbors.kreciprocal as jaccard_module

    monkeypatch.setattr(jaccard_module, "_TRIPLE_BUDGET", 1 << 16)
    monkeypatch.setattr(jaccard_module, "_CELL_BUDGET", 1 << 16)
    rng = np.random.default_rng(8)
    centers = rng.normal(size=(250, 64)) + rng.normal(size=(20, 64))[rng.integers(20, size=250)]
    x = (centers[rng.integers(250, size=2500)] + 0.3 * rng.normal(size=(2500, 64))).astype(np.float32)
    query, gallery = x[:500], x[500:]
    tracemalloc.start()
    result = re_rank(query, gallery)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    output = result.nbytes
    assert peak - output < 2500 * 2500 * 8 / 4, f"peak {peak / 2**20:.1f} MiB, output {output / 2**20:.1f} MiB"


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_rejects_bad_input(value):
    query, gallery = split(identity_features(9), 9)
    query[1, 1] = value
    with pytest.raises(ValueError, match="NaN or inf"):
        re_rank(query, gallery)
    with pytest.raises(ValueError, match="differ"):
        re_rank(gallery[:, :5], gallery)
    with pytest.raises(ValueError, match="lambda"):
        re_rank(gallery[:3], gallery, lambda_value=1.5)
