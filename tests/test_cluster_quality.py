"""Pseudo-label quality against a brute-force pair count."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from spcl.evaluation.cluster_quality import pseudo_label_quality


def _brute(pred, truth):
    tp = fp = fn = 0
    for i, j in itertools.combinations(range(len(pred)), 2):
        same_p, same_t = pred[i] == pred[j], truth[i] == truth[j]
        tp += same_p and same_t
        fp += same_p and not same_t
        fn += same_t and not same_p
    return tp / (tp + fp), tp / (tp + fn)


@pytest.mark.parametrize("seed", range(4))
def test_pairwise_precision_recall_match_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 8, 60)
    pred = np.where(rng.random(60) < 0.7, truth, rng.integers(8, 40, 60))
    q = pseudo_label_quality(pred, truth)
    p, r = _brute(pred, truth)
    assert q["pair_precision"] == pytest.approx(p)
    assert q["pair_recall"] == pytest.approx(r)
    assert 0 <= q["nmi"] <= 1


def test_perfect_and_hand_computed() -> None:
    truth = np.array([0, 0, 1, 1])
    assert pseudo_label_quality(np.array([5, 5, 9, 9]), truth)["pair_f"] == 1.0
    # one cluster of everything: 2 true pairs out of 6 -> precision 1/3, recall 1
    q = pseudo_label_quality(np.zeros(4, int), truth)
    assert q["pair_precision"] == pytest.approx(1 / 3) and q["pair_recall"] == 1.0
