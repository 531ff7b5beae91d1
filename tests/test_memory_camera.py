"""Camera-aware proxies (``spcl.memory.CameraAwareMemory``, CAP) against a slow float64 reference
written from CAP's description: proxies, intra- and inter-camera terms, update, sampling, resume."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from spcl.memory import CameraAwareMemory

D = 10
# 14 target samples: clusters 0, 1, 2 (ids with a gap: 0, 3, 7) and two outliers; cameras 0-2
LABELS = np.array([0, 0, 3, 3, 3, 7, 7, -1, 0, 3, 7, 0, -1, 7])
CAMERAS = np.array([0, 1, 0, 0, 2, 1, 1, 0, 1, 2, 2, 0, 2, 1])


def _memory(num_source: int = 0, **kwargs) -> tuple[CameraAwareMemory, torch.Tensor]:
    features = torch.randn(len(LABELS), D, generator=torch.Generator().manual_seed(0))
    memory = CameraAwareMemory(D, CAMERAS, num_source_classes=num_source, **kwargs)
    if num_source:
        memory.features[:num_source] = F.normalize(torch.randn(num_source, D, generator=torch.Generator().manual_seed(1)), dim=1)
    memory.set_clusters(features, LABELS)
    return memory, features


def _slow_proxies() -> tuple[list[tuple[int, int]], dict[int, int]]:
    """(cluster, camera) pairs in sorted order and each clustered sample's proxy."""
    clusters = {c: i for i, c in enumerate(sorted(set(LABELS[LABELS >= 0].tolist())))}
    pairs = sorted({(clusters[int(l)], int(c)) for l, c in zip(LABELS, CAMERAS) if l >= 0})
    own = {i: pairs.index((clusters[int(LABELS[i])], int(CAMERAS[i]))) for i in range(len(LABELS)) if LABELS[i] >= 0}
    return pairs, own


def test_one_proxy_per_cluster_and_camera_each_its_images_mean() -> None:
    memory, features = _memory(num_source=2)
    pairs, own = _slow_proxies()
    assert memory.num_proxies == len(pairs) and memory.num_slots == 2 + len(pairs) and memory.num_clusters == 3
    for p, (cluster, camera) in enumerate(pairs):
        members = [i for i, q in own.items() if q == p]
        mean = features[members].mean(0)
        assert torch.allclose(memory.features[2 + p], mean / mean.norm(), atol=1e-6)
        assert (int(memory.proxy_cluster[p]), int(memory.proxy_camera[p])) == (cluster, camera)
    assert memory.target_slots(list(own)).tolist() == [2 + q for q in own.values()]
    assert memory.target_slots([7, 12]).tolist() == [-1, -1]  # the outliers sit the epoch out
    expected_clusters = [{0: 0, 3: 1, 7: 2}.get(int(l), -1) for l in LABELS]
    assert memory.target_labels.tolist() == expected_clusters
    assert memory.sampling_labels.tolist() == [own.get(i, -1) for i in range(len(LABELS))]  # proxies are drawn


class SlowCAP:
    """CAP's target loss sample by sample in float64: for each camera of the batch, the mean over its
    samples of the intra-camera cross-entropy (own camera's proxies) plus weight x the inter-camera
    soft cross-entropy (the cluster's proxies against the hardest other proxies), summed over cameras."""

    def __init__(self, proxies: torch.Tensor, pairs: list[tuple[int, int]], temp: float, negatives: int, weight: float,
                 inter: bool) -> None:
        self.w, self.pairs, self.temp, self.negatives, self.weight, self.inter = proxies.double(), pairs, temp, negatives, weight, inter

    def loss(self, f: torch.Tensor, proxies: list[int]) -> torch.Tensor:
        total = f.new_zeros((), dtype=torch.float64)
        cameras = [self.pairs[p][1] for p in proxies]
        for camera in sorted(set(cameras)):
            rows = [i for i, c in enumerate(cameras) if c == camera]
            part = f.new_zeros((), dtype=torch.float64)
            for i in rows:
                x, p = f[i].double(), proxies[i]
                same_camera = [q for q, (_, c) in enumerate(self.pairs) if c == camera]
                logits = torch.stack([x @ self.w[q] / self.temp for q in same_camera])
                part = part + torch.logsumexp(logits, 0) - logits[same_camera.index(p)]
                if self.inter:
                    cluster = self.pairs[p][0]
                    positives = [q for q, (k, _) in enumerate(self.pairs) if k == cluster]
                    others = sorted((q for q in range(len(self.pairs)) if q not in positives),
                                    key=lambda q: -float((x @ self.w[q]).detach()))[: self.negatives]
                    chosen = positives + others
                    logits = torch.stack([x @ self.w[q] / self.temp for q in chosen])
                    log_p = logits - torch.logsumexp(logits, 0)
                    part = part + self.weight * -(log_p[: len(positives)].sum() / len(positives))
            total = total + part / len(rows)
        return total


@pytest.mark.parametrize("inter,negatives", [(False, 50), (True, 50), (True, 2)])
def test_target_loss_and_gradient_match_the_slow_reference(inter: bool, negatives: int) -> None:
    memory, _ = _memory(temp=0.07, negatives=negatives)
    memory.inter_camera = inter
    pairs, own = _slow_proxies()
    batch = F.normalize(torch.randn(9, D, generator=torch.Generator().manual_seed(5)), dim=1)
    samples = [0, 1, 2, 4, 5, 9, 10, 11, 13]
    proxies = [own[i] for i in samples]
    x = batch.clone().requires_grad_(True)
    terms = memory.loss_terms(x, memory.target_slots(samples))
    assert list(terms) == ["intra", "inter"]  # USL: no source term
    target = terms["intra"] + terms["inter"]
    target.backward()
    y = batch.double().clone().requires_grad_(True)
    expected = SlowCAP(memory.features, pairs, 0.07, negatives, 0.5, inter).loss(y, proxies)
    expected.backward()
    assert target.item() == pytest.approx(expected.item(), abs=1e-5)
    np.testing.assert_allclose(x.grad.numpy(), y.grad.numpy(), atol=1e-5)


def test_uda_source_term_is_the_cross_entropy_over_every_slot() -> None:
    memory, _ = _memory(num_source=3)
    batch = F.normalize(torch.randn(4, D, generator=torch.Generator().manual_seed(6)), dim=1)
    slots = torch.tensor([0, 2, 2, 1])
    terms = memory.loss_terms(batch, slots)
    expected = F.cross_entropy(batch @ memory.features.T / memory.temp, slots)
    assert terms["source"].item() == pytest.approx(expected.item(), abs=1e-6)
    assert terms["intra"].item() == 0.0 and terms["inter"].item() == 0.0


def test_update_pulls_each_samples_own_proxy_in_batch_order() -> None:
    memory, _ = _memory(momentum=0.2)
    before = memory.features.clone()
    batch = F.normalize(torch.randn(3, D, generator=torch.Generator().manual_seed(7)), dim=1)
    slots = memory.target_slots([0, 11, 2])  # samples 0 and 11 share a proxy (cluster 0, camera 0)
    memory.update(batch, slots)
    p, q = int(slots[0]), int(slots[2])
    first = F.normalize(0.2 * before[p] + 0.8 * batch[0], dim=0)
    assert torch.allclose(memory.features[p], F.normalize(0.2 * first + 0.8 * batch[1], dim=0), atol=1e-6)
    assert torch.allclose(memory.features[q], F.normalize(0.2 * before[q] + 0.8 * batch[2], dim=0), atol=1e-6)
    untouched = [r for r in range(memory.num_slots) if r not in (p, q)]
    assert torch.equal(memory.features[untouched], before[untouched])


def test_state_dict_round_trip_with_the_epochs_proxies() -> None:
    memory, _ = _memory(num_source=2)
    memory.inter_camera = True
    buffer = io.BytesIO()
    torch.save(memory.state_dict(), buffer)
    buffer.seek(0)
    fresh = CameraAwareMemory(D, CAMERAS, num_source_classes=2)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    for name in ("features", "assignment", "proxy_cluster", "proxy_camera"):
        assert torch.equal(getattr(fresh, name), getattr(memory, name)), name
    assert fresh.inter_camera


def test_slices_of_a_global_batch_average_to_the_whole_batchs_loss() -> None:
    memory, _ = _memory(num_source=2)
    memory.inter_camera = True
    batch = F.normalize(torch.randn(8, D, generator=torch.Generator().manual_seed(8)), dim=1)
    slots = torch.cat([torch.tensor([0, 1]), memory.target_slots([0, 1, 2, 4, 5, 9])])
    whole = memory.loss_terms(batch, slots)
    halves = [memory.loss_terms(batch[i::2], slots[i::2], batch_slots=slots) for i in (0, 1)]
    assert list(whole) == ["source", "intra", "inter"]
    for term in whole:
        assert (halves[0][term] + halves[1][term]).item() / 2 == pytest.approx(whole[term].item(), rel=1e-6)
