"""The approximate neighbour search (spcl.neighbors.approximate) and the ``neighbors`` setting of
``spcl.pseudo_labels.generate``, against a brute-force reference written here."""

from __future__ import annotations

import sys
import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

pytest.importorskip("faiss")

from spcl.neighbors import approximate as approx  # noqa: E402
from spcl.neighbors.approximate import CellSearch, cell_search, default_cells, unit_features_half  # noqa: E402
from spcl.neighbors.search import pair_similarities  # noqa: E402
from spcl.pseudo_labels import generate, resolve_neighbors  # noqa: E402


def clustered(n: int = 1200, dim: int = 32, ids: int = 60, noise: float = 0.6, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((ids, dim))
    x = centers[rng.integers(ids, size=n)] + noise * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def brute_force(unit: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Every pair compared in float64: the point first, then by similarity, ties by lower index."""
    x = unit.astype(np.float64)
    sims = x @ x.T
    n = x.shape[0]
    indices = np.empty((n, k), dtype=np.int64)
    values = np.empty((n, k))
    for i in range(n):
        others = [j for j in range(n) if j != i]
        ranked = sorted(others, key=lambda j: (-sims[i, j], j))[: k - 1]
        indices[i] = [i, *ranked]
        values[i] = sims[i, indices[i]]
    return indices, values


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / truth.shape[1] for a, b in zip(found, truth)]))


def test_probing_every_cell_is_the_exact_search():
    x = clustered(400)
    truth, truth_values = brute_force(x, 12)
    indices, values = cell_search(torch.from_numpy(x), 12, CellSearch(cells=20, probe=20), show_progress=False)
    np.testing.assert_array_equal(indices, truth)
    np.testing.assert_allclose(values, truth_values, atol=1e-5)


def test_blocks_of_queries_and_candidates_change_nothing(monkeypatch):
    x = clustered(500)
    settings = CellSearch(cells=6, probe=3)
    whole = cell_search(torch.from_numpy(x), 10, settings, show_progress=False)
    monkeypatch.setattr(approx, "_QUERIES", 7)
    monkeypatch.setattr(approx, "_COLUMNS", 13)
    monkeypatch.setattr(approx, "_ROWS", 50)
    blocked = cell_search(torch.from_numpy(x), 10, settings, show_progress=False)
    np.testing.assert_array_equal(blocked[0], whole[0])
    np.testing.assert_allclose(blocked[1], whole[1], atol=1e-6)


def test_recall_and_the_lists_are_well_formed():
    x = clustered(1500)
    k = 20
    truth, _ = brute_force(x, k)
    indices, values = cell_search(torch.from_numpy(x), k, CellSearch(probe=8), show_progress=False)
    assert recall(indices, truth) >= 0.95
    assert (indices[:, 0] == np.arange(x.shape[0])).all()
    assert all(len(set(row)) == k for row in indices)  # no neighbour twice
    assert (np.diff(values[:, 1:], axis=1) <= 1e-7).all()  # descending after the point itself
    exact = np.einsum("ikd,ikd->ik", x[:, None, :].repeat(k, 1), x[indices])
    np.testing.assert_allclose(values, exact, atol=1e-5)  # the candidates' similarities are exact


def test_small_cells_are_widened_to_hold_k_candidates():
    x = clustered(300)
    k = 25  # far more than one cell of 2 points holds
    indices, _ = cell_search(torch.from_numpy(x), k, CellSearch(cells=150, probe=1), show_progress=False)
    assert indices.shape == (300, k)
    assert all(len(set(row)) == k for row in indices)
    assert (indices >= 0).all() and (indices < 300).all()


def test_k_larger_than_n_and_one_point():
    x = clustered(5)
    indices, _ = cell_search(torch.from_numpy(x), 30, show_progress=False)
    assert indices.shape == (5, 5)
    np.testing.assert_array_equal(np.sort(indices, axis=1), np.tile(np.arange(5), (5, 1)))
    one, values = cell_search(torch.from_numpy(x[:1]), 3, show_progress=False)
    assert one.tolist() == [[0]] and values[0, 0] == pytest.approx(1.0, abs=1e-6)


def test_default_cells():
    assert default_cells(100_000) == 632
    assert default_cells(1_000_000) == 2000
    assert default_cells(1) == 1


def test_half_features_are_the_rounded_unit_features(monkeypatch):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((70, 16)).astype(np.float32) * 30
    monkeypatch.setattr(approx, "_ROWS", 16)
    half = unit_features_half(x)
    assert half.dtype == torch.float16
    expected = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)
    np.testing.assert_array_equal(half.numpy(), expected)


@pytest.mark.parametrize("bad", [np.nan, np.inf, 0.0])
def test_half_features_reject_what_cannot_be_compared(bad):
    x = np.ones((40, 8), dtype=np.float32)
    x[33] = bad
    with pytest.raises(ValueError, match="rows \\[33\\]"):
        unit_features_half(x)
    with pytest.raises(ValueError, match="2-D"):
        unit_features_half(np.ones(4, dtype=np.float32))


def test_pair_similarities_of_half_features(monkeypatch):
    x = clustered(90, dim=12)
    half = unit_features_half(x)
    rng = np.random.default_rng(2)
    counts = rng.integers(0, 6, size=90)
    indptr = np.concatenate([[0], np.cumsum(counts)])
    indices = rng.integers(0, 90, size=int(indptr[-1]))
    monkeypatch.setattr("spcl.neighbors.search._PAIR_CHUNK", 8)
    got = pair_similarities(half, indptr, indices)
    h = half.numpy().astype(np.float64)
    rows = np.repeat(np.arange(90), counts)
    computed = np.einsum("ij,ij->i", h[rows], h[indices])
    np.testing.assert_allclose(got, computed, atol=1e-6)

    # the pairs a search already compared are read from its lists (marked here by an offset of 10)
    ranks = np.stack([rng.permutation(90)[:7] for _ in range(90)])
    listed = ranks.astype(np.float32) + 10.0
    got = pair_similarities(half, indptr, indices, known=(ranks, listed))
    lookup = {(i, int(j)): float(v) for i in range(90) for j, v in zip(ranks[i], listed[i])}
    expected = [lookup.get((int(i), int(j)), c) for i, j, c in zip(rows, indices, computed)]
    assert any((int(i), int(j)) in lookup for i, j in zip(rows, indices))
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_approximate_pseudo_labels_agree_with_exact():
    x = clustered(1500, dim=48, ids=50, noise=0.5)
    exact = generate(x, neighbors="exact")
    approximate = generate(x, neighbors="approximate", approx_probe=8)
    assert exact.neighbors == "exact" and approximate.neighbors == "approximate"
    assert exact.num_clusters > 10
    assert adjusted_rand_score(exact.labels, approximate.labels) >= 0.97


def test_auto_is_exact_up_to_the_threshold():
    x = clustered(300)
    assert generate(x).neighbors == "exact"
    assert generate(x, exact_up_to=299, approx_recall=0).neighbors == "approximate"
    assert resolve_neighbors("auto", 100_000) == "exact"
    assert resolve_neighbors("auto", 100_001) == "approximate"
    with pytest.raises(ValueError, match="'auto', 'exact' or 'approximate'"):
        resolve_neighbors("fast", 10)


def test_without_faiss(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss now raises ImportError
    x = clustered(200)
    with pytest.raises(ImportError, match="pip install faiss-cpu"):
        generate(x, neighbors="approximate")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = generate(x, exact_up_to=100)
    assert result.neighbors == "exact"
    assert any("faiss is not installed" in str(w.message) for w in caught)


def test_bad_settings_are_rejected():
    with pytest.raises(ValueError, match="positive"):
        CellSearch(probe=0)
    with pytest.raises(ValueError, match="k must be at least 1"):
        cell_search(torch.from_numpy(clustered(10)), 0)


# ---------------------------------------------------------------------------------------------------
# the search measures its own recall and raises its probe (or searches exactly)


def loose(n: int = 1500, dim: int = 32, ids: int = 150, seed: int = 0) -> np.ndarray:
    """Identities spread over the whole sphere with loose members (cosine 0.2-0.6 to each other):
    features an IVF of few probes misses many neighbours of."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((ids, dim))
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    cos = rng.uniform(0.2, 0.6, size=ids)
    who = rng.integers(ids, size=n)
    noise = rng.standard_normal((n, dim)) / np.sqrt(dim)
    x = np.sqrt(cos[who])[:, None] * centers[who] + np.sqrt(1 - cos[who])[:, None] * noise
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def true_recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Share of the true neighbours (the point itself aside) that the found lists hold."""
    return float(np.mean([len(set(a[1:]) & set(b[1:])) / (truth.shape[1] - 1) for a, b in zip(found, truth)]))


def test_the_measured_recall_is_the_recall_of_the_search_at_that_probe():
    x = loose()
    unit = torch.from_numpy(x)
    truth, _ = brute_force(x, 10)
    index = approx.CellIndex(unit, CellSearch(cells=40, probe=2), show_progress=False)
    for target in (0.8, 0.95, 0.99):
        choice = approx.choose_probe(index, unit, 10, target, sample=len(x))  # the whole set: no sampling error
        found, _ = index.search(unit, 10, choice.probe, show_progress=False)
        assert choice.recall == pytest.approx(true_recall(found, truth), abs=1e-9)
        assert choice.recall >= target
        if choice.probe > 2:  # the smallest probe that reaches it
            below, _ = index.search(unit, 10, choice.probe - 1, show_progress=False)
            assert true_recall(below, truth) < target
        at_two, _ = index.search(unit, 10, 2, show_progress=False)
        assert choice.recall_asked_probe == pytest.approx(true_recall(at_two, truth), abs=1e-9)
    pairs = sum(index.sizes[c] * index.sizes[index.cell_order[c, : w]].sum()
                for c, w in enumerate(index.widths(choice.probe, 10)))
    assert choice.pairs == pairs and choice.exact_pairs == len(x) * (len(x) + 1) // 2


def test_a_sample_estimates_the_recall():
    x = loose(3000, ids=300)
    unit = torch.from_numpy(x)
    index = approx.CellIndex(unit, CellSearch(cells=60, probe=4), show_progress=False)
    whole = approx.choose_probe(index, unit, 10, 0.9, sample=len(x))
    part = approx.choose_probe(index, unit, 10, 0.9, sample=400, seed=3)
    assert abs(part.recall_asked_probe - whole.recall_asked_probe) < 0.05  # 400 of 3000 points


def test_labels_of_loose_features_agree_with_exact_and_say_what_the_search_did():
    x = loose(2000, ids=200)
    exact = generate(x, neighbors="exact")
    unmeasured = generate(x, neighbors="approximate", approx_probe=2, approx_recall=0, approx_cells=45)
    measured = generate(x, neighbors="approximate", approx_probe=2, approx_cells=45, approx_sample=2000)
    assert unmeasured.search == {} and unmeasured.search_note == ""
    assert adjusted_rand_score(exact.labels, measured.labels) >= 0.97
    assert measured.search["knn_recall"] >= 0.99 or measured.search["knn_exact_fallback"] == 1.0
    assert measured.search["knn_probe"] > 2 and "recall" in measured.search_note
    # what the labels record agrees with the search that ran
    assert measured.search["knn_exact_fallback"] == float(measured.neighbors == "exact")


def test_the_search_falls_back_to_exact_when_that_is_cheaper():
    x = loose(800, ids=400)
    result = generate(x, neighbors="approximate", approx_cells=30, approx_probe=1, approx_recall=1.0,
                      approx_sample=800)
    assert result.neighbors == "exact" and result.search["knn_exact_fallback"] == 1.0
    assert "so the search is exact" in result.search_note
    np.testing.assert_array_equal(result.labels, generate(x, neighbors="exact").labels)
    fast = generate(clustered(1500, dim=48, ids=50, noise=0.5), neighbors="approximate", approx_sample=500)
    assert fast.neighbors == "approximate" and fast.search["knn_exact_fallback"] == 0.0


def test_bad_recall_settings_are_rejected():
    unit = torch.from_numpy(clustered(100))
    index = approx.CellIndex(unit, CellSearch(cells=4), show_progress=False)
    with pytest.raises(ValueError, match=r"share in \(0, 1\]"):
        approx.choose_probe(index, unit, 5, 1.5)
