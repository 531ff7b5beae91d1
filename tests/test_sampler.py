"""Tests for the random multiple gallery sampler (docs/method.md#training-loop)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from spcl.data.sampler import RandomMultipleGallerySampler


def _toy_labels() -> tuple[np.ndarray, np.ndarray]:
    """Classes covering every branch of the rule, shuffled into dataset order."""
    pids, cams = [], []

    def add(pid: int, cam_list: list[int]) -> None:
        pids.extend([pid] * len(cam_list))
        cams.extend(cam_list)

    add(0, [0, 0, 1, 1, 2, 2, 3])  # many other-camera images: without replacement
    add(1, [0, 1])  # one other-camera image: with replacement
    add(2, [5, 5, 5, 5, 5])  # a single camera, 4 other images: without replacement
    add(3, [4, 4])  # a single camera, 1 other image: with replacement
    add(4, [2])  # un-clustered instance: anchor only
    add(5, [3])
    add(6, [1, 2, 3, 4, 5])  # exactly 4 other cameras: without replacement
    add(7, [1, 2, 3, 4])  # exactly 3 other cameras: with replacement (reference threshold)
    add(-1, [0, 1])  # unlabelled: skipped
    order = np.random.default_rng(123).permutation(len(pids))
    return np.asarray(pids)[order], np.asarray(cams)[order]


def _groups(stream: list[int], pids: np.ndarray) -> list[list[int]]:
    """Split a stream into per-class groups (consecutive indices of one label)."""
    groups: list[list[int]] = []
    for i in stream:
        if groups and pids[groups[-1][0]] == pids[i]:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def test_every_class_once_per_pass_with_the_camera_rule() -> None:
    pids, cams = _toy_labels()
    sampler = RandomMultipleGallerySampler(pids, cams, num_instances=4, seed=0)
    assert sampler.num_classes == 8
    assert len(sampler) == 6 * 4 + 2 * 1
    for epoch in range(20):
        sampler.set_epoch(epoch)
        stream = list(sampler)
        assert len(stream) == len(sampler)
        groups = _groups(stream, pids)
        labels = [int(pids[g[0]]) for g in groups]
        assert sorted(labels) == list(range(8)), "every class, singletons included, exactly once"
        for g in groups:
            label = int(pids[g[0]])
            assert all(pids[i] == label for i in g)
            anchor, rest = g[0], g[1:]
            members = np.flatnonzero(pids == label)
            if members.size == 1:
                assert rest == []
                continue
            assert len(rest) == 3
            other_cam = [m for m in members if cams[m] != cams[anchor]]
            if other_cam:
                assert all(cams[i] != cams[anchor] for i in rest)
                pool = other_cam
            else:
                assert anchor not in rest
                pool = [m for m in members if m != anchor]
            assert set(rest) <= set(pool)
            if len(pool) >= 4:
                assert len(set(rest)) == 3, f"class {label}: expected a draw without replacement"


def test_small_pools_are_drawn_with_replacement() -> None:
    pids, cams = _toy_labels()
    sampler = RandomMultipleGallerySampler(pids, cams, num_instances=4, seed=1)
    repeats: Counter[int] = Counter()
    for epoch in range(30):
        sampler.set_epoch(epoch)
        for g in _groups(list(sampler), pids):
            if len(set(g[1:])) < len(g[1:]):
                repeats[int(pids[g[0]])] += 1
    # Classes 1 and 3 have a pool of one image: always repeated. Class 7 (3 other cameras) is
    # drawn with replacement, so repeats appear; classes with pools of >= 4 never repeat.
    assert repeats[1] == 30 and repeats[3] == 30
    assert repeats[7] > 0
    assert repeats[0] == repeats[2] == repeats[6] == 0


def test_deterministic_for_a_seed_and_epochs_differ() -> None:
    pids, cams = _toy_labels()
    a = RandomMultipleGallerySampler(pids, cams, seed=7)
    b = RandomMultipleGallerySampler(pids, cams, seed=7)
    assert list(a) == list(b)
    assert list(a) == list(b), "second passes agree too"
    a.set_epoch(3)
    b.set_epoch(3)
    first = list(a)
    assert first == list(b)
    a.set_epoch(4)
    assert list(a) != first
    c = RandomMultipleGallerySampler(pids, cams, seed=8, epoch=3)
    assert list(c) != first


def test_passes_within_an_epoch_differ_and_resume_replays() -> None:
    pids, cams = _toy_labels()
    s = RandomMultipleGallerySampler(pids, cams, seed=0, epoch=2)
    first = list(s)
    state = s.state_dict()
    second = list(s)
    assert first != second
    resumed = RandomMultipleGallerySampler(pids, cams, seed=99)
    resumed.load_state_dict(state)
    assert list(resumed) == second


def test_no_global_rng_is_used() -> None:
    pids, cams = _toy_labels()
    np_state = np.random.get_state()[1].copy()
    import random

    import torch

    py_state = random.getstate()
    torch_state = torch.get_rng_state().clone()
    list(RandomMultipleGallerySampler(pids, cams, seed=0))
    assert np.array_equal(np.random.get_state()[1], np_state)
    assert random.getstate() == py_state
    assert torch.equal(torch.get_rng_state(), torch_state)


def test_rejects_mismatched_inputs() -> None:
    with pytest.raises(ValueError, match="same length"):
        RandomMultipleGallerySampler([0, 1], [0])
    with pytest.raises(ValueError, match="num_instances"):
        RandomMultipleGallerySampler([0], [0], num_instances=0)


def test_all_singletons_and_empty() -> None:
    s = RandomMultipleGallerySampler(list(range(10)), [0] * 10, seed=0)
    assert sorted(s) == list(range(10))
    assert len(s) == 10
    empty = RandomMultipleGallerySampler([-1, -1], [0, 1])
    assert list(empty) == [] and len(empty) == 0


def test_short_passes_are_chained_up_to_min_length() -> None:
    # two large classes: one pass yields 8 indices, fewer than a batch of 20
    pids = np.repeat([0, 1], 10)
    cams = np.tile(np.arange(5), 4)
    sampler = RandomMultipleGallerySampler(pids, cams, num_instances=4, seed=1, min_length=20)
    first = list(sampler)
    assert len(first) == 24 and sampler.pass_index == 3
    again = RandomMultipleGallerySampler(pids, cams, num_instances=4, seed=1)
    chained = list(again) + list(again) + list(again)
    assert first == chained


def test_rank_batches_split_the_global_batches() -> None:
    from spcl.data.loader import RankBatches

    pids, cams = _toy_labels()
    sampler = RandomMultipleGallerySampler(pids, cams, num_instances=4, seed=5, min_length=40)
    sampler.set_epoch(2)
    whole = list(RankBatches(sampler, batch_size=8))
    parts = []
    for rank in range(4):
        sampler.set_epoch(2)  # every rank draws the same global stream
        parts.append(list(RankBatches(sampler, batch_size=8, rank=rank, world_size=4)))
    assert whole and all(len(p) == len(whole) for p in parts)
    for i, batch in enumerate(whole):
        assert len(batch) == 8
        assert [x for p in parts for x in p[i]] == batch  # rank 0's two, then rank 1's two, ...
    with pytest.raises(ValueError, match="does not split evenly over 3 processes"):
        RankBatches(sampler, batch_size=8, rank=0, world_size=3)
