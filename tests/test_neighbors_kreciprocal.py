"""The sums of minima behind the sparse Jaccard distance: both accumulation paths (dense band,
sorted pairs) against slow references written here, bit for bit where the summation order is
the same."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

import spcl.neighbors.kreciprocal as kr


def _sequential_sums(key: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each key's values added one after another in input order, in plain Python floats."""
    sums: dict[int, float] = {}
    for k, v in zip(key.tolist(), values.tolist()):
        sums[k] = sums.get(k, 0.0) + v
    keys = np.array(sorted(sums), dtype=np.int64)
    return keys, np.array([sums[k] for k in keys.tolist()])


@pytest.mark.parametrize("cells", [64, 5000, 1 << 62])
def test_sum_pairs_adds_in_input_order_on_every_path(cells):
    """64 cells: dense; 5000 or 2^62 cells for 300 values: sorted."""
    rng = np.random.default_rng(cells % 97)
    key = rng.integers(0, min(cells, 64), size=300).astype(np.int64) * (cells // 64)
    values = rng.random(300) * 10.0 ** rng.integers(-8, 8, size=300)  # order-sensitive sums
    keys, sums = kr._sum_pairs(key, values, cells)
    want_keys, want_sums = _sequential_sums(key, values)
    np.testing.assert_array_equal(keys, want_keys)
    np.testing.assert_array_equal(sums, want_sums)


def test_sum_pairs_of_nothing():
    keys, sums = kr._sum_pairs(np.zeros(0, dtype=np.int64), np.zeros(0), 1 << 30)
    assert keys.size == 0 and sums.size == 0


def test_row_blocks_cover_the_rows_within_the_budget(monkeypatch):
    monkeypatch.setattr(kr, "_TRIPLE_BUDGET", 100)
    work = np.random.default_rng(0).integers(1, 60, size=500)
    work[17] = 250  # a row above the budget gets a block of its own
    blocks = list(kr._row_blocks(work))
    assert blocks[0][0] == 0 and blocks[-1][1] == 500
    assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:]))
    assert all(work[lo:hi].sum() <= 100 or hi == lo + 1 for lo, hi in blocks)
    assert any(hi == 17 for _, hi in blocks)
    assert (17, 18) in blocks


def _random_weights(n: int, seed: int) -> sp.csr_matrix:
    """Row-stochastic sparse rows, each with its own column, two rows duplicated."""
    rng = np.random.default_rng(seed)
    dense = np.where(rng.random((n, n)) < 0.08, rng.random((n, n)), 0.0)
    np.fill_diagonal(dense, rng.random(n) + 0.1)
    dense[7] = dense[3]
    dense /= dense.sum(axis=1, keepdims=True)
    return sp.csr_matrix(dense)


def _collect(weights: sp.csr_matrix) -> dict[tuple[int, int], tuple[float, float]]:
    out = {}
    for rows, cols, mins, maxs in kr.upper_min_overlap(weights):
        for i, j, a, b in zip(rows.tolist(), cols.tolist(), mins.tolist(), maxs.tolist()):
            key = (min(i, j), max(i, j))
            assert key not in out, "every unordered pair comes once"
            out[key] = (a, b)
    return out


def test_upper_min_overlap_paths_agree_with_a_dense_reference(monkeypatch):
    weights = _random_weights(120, 0)
    dense = weights.toarray()
    monkeypatch.setattr(kr, "_TRIPLE_BUDGET", 700)  # many blocks
    monkeypatch.setattr(kr, "_DENSE_RATIO", 1 << 30)
    monkeypatch.setattr(kr, "_CELL_BUDGET", 1 << 30)
    banded = _collect(weights)
    monkeypatch.setattr(kr, "_DENSE_RATIO", 0)
    sorted_ = _collect(weights)
    assert banded == sorted_  # the same bits either way
    n = dense.shape[0]
    for i in range(n):
        for j in range(i, n):
            shared = np.minimum(dense[i], dense[j]).sum()
            if shared == 0:
                assert (i, j) not in banded
                continue
            got_min, got_max = banded[(i, j)]
            assert got_min == pytest.approx(shared, rel=1e-12)
            assert got_max == pytest.approx(np.maximum(dense[i], dense[j]).sum(), rel=1e-12)
    dup_min, dup_max = banded[(3, 7)]
    assert dup_min == dup_max  # duplicates: distance exactly 0
