"""Cluster Contrast's memory (``spcl.memory.ClusterMemory``) against a slow float64 reference
written from the method's description: loss, gradient, both updates, the epoch's slots, resume."""

from __future__ import annotations

import io
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from spcl.memory import ClusterMemory

D = 12


def _unit(*shape: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


class SlowClusterMemory:
    """The method as its paper and public code describe it, one sample at a time, in float64:
    logits = f . W^T / temp, cross-entropy averaged over the batch; after the step, every sample
    pulls its cluster's row in batch order (w <- m w + (1 - m) f, then w / |w|), or, hard, each
    cluster of the batch (in order of first appearance) is pulled once by the member whose dot
    product with the row is smallest (the first one on a tie)."""

    def __init__(self, features: torch.Tensor, temp: float, momentum: float, hard: bool) -> None:
        self.rows = [row.double().clone() for row in features]
        self.temp, self.momentum, self.hard = temp, momentum, hard

    def loss_and_grad(self, batch: torch.Tensor, targets: list[int]) -> tuple[float, np.ndarray]:
        inputs = batch.double().clone().requires_grad_(True)
        total = 0.0
        for f, y in zip(inputs, targets):
            logits = torch.stack([torch.dot(f, w) / self.temp for w in self.rows])
            total = total + (torch.logsumexp(logits, 0) - logits[y])
        loss = total / len(targets)
        loss.backward()
        return float(loss.detach()), inputs.grad.numpy()

    def update(self, batch: torch.Tensor, targets: list[int]) -> None:
        m = self.momentum
        if not self.hard:
            for f, y in zip(batch.double(), targets):
                w = m * self.rows[y] + (1 - m) * f
                self.rows[y] = w / w.norm()
            return
        members: OrderedDict[int, list[torch.Tensor]] = OrderedDict()
        for f, y in zip(batch.double(), targets):
            members.setdefault(y, []).append(f)
        for y, fs in members.items():
            dots = [float(torch.dot(f, self.rows[y])) for f in fs]
            chosen = fs[int(np.argmin(dots))]
            w = self.rows[y] * m + (1 - m) * chosen
            self.rows[y] = w / w.norm()

    def matrix(self) -> np.ndarray:
        return torch.stack(self.rows).numpy()


def _usl_memory(hard: bool, clusters: int = 7, momentum: float = 0.1) -> ClusterMemory:
    memory = ClusterMemory(D, clusters, temp=0.05, momentum=momentum, hard=hard)
    memory.features.copy_(_unit(clusters, D, seed=1))
    return memory


@pytest.mark.parametrize("hard", [False, True])
def test_usl_loss_gradient_and_update_match_the_slow_reference(hard: bool) -> None:
    memory = _usl_memory(hard)
    slow = SlowClusterMemory(memory.features, 0.05, 0.1, hard)
    for step in range(3):  # the state carries over from one step to the next
        batch = _unit(16, D, seed=10 + step)
        targets = [int(t) for t in torch.randint(0, 7, (16,), generator=torch.Generator().manual_seed(step))]
        features = batch.clone().requires_grad_(True)
        loss = memory.loss(features, torch.tensor(targets))
        loss.backward()
        expected_loss, expected_grad = slow.loss_and_grad(batch, targets)
        assert loss.item() == pytest.approx(expected_loss, abs=1e-5)
        np.testing.assert_allclose(features.grad.numpy(), expected_grad, atol=1e-5)
        assert torch.allclose(loss, F.cross_entropy(features.detach() @ memory.features.T / 0.05, torch.tensor(targets)))
        memory.update(batch, torch.tensor(targets))
        slow.update(batch, targets)
        np.testing.assert_allclose(memory.features.numpy(), slow.matrix(), atol=1e-5)


def test_hard_update_pulls_each_cluster_once_by_its_least_similar_member() -> None:
    memory = ClusterMemory(2, 2, momentum=0.5, hard=True)
    memory.features.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    near, far = F.normalize(torch.tensor([[1.0, 0.1]]), dim=1), F.normalize(torch.tensor([[0.2, 1.0]]), dim=1)
    batch = torch.cat([near, far, near])
    memory.update(batch, torch.tensor([0, 0, 0]))
    expected = F.normalize(0.5 * torch.tensor([1.0, 0.0]) + 0.5 * far[0], dim=0)
    assert torch.allclose(memory.features[0], expected)
    assert torch.equal(memory.features[1], torch.tensor([0.0, 1.0]))  # no sample of cluster 1: unchanged
    # a tie: the first of the equally dissimilar samples pulls (and only once)
    memory.features.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    memory.update(torch.cat([far, far * 1.0]), torch.tensor([0, 0]))
    assert torch.allclose(memory.features[0], expected)


def test_uda_loss_is_the_source_mean_plus_the_target_mean() -> None:
    s, clusters = 3, 4
    memory = ClusterMemory(D, s + clusters, num_source_classes=s, num_target=10)
    memory.features.copy_(_unit(s + clusters, D, seed=2))
    batch = _unit(8, D, seed=3)
    slots = torch.tensor([0, 2, 1, 1, 3, 6, 4, 5])  # four source samples, four target samples
    terms = memory.loss_terms(batch, slots)
    source, target = terms["source"], terms["target"]
    nll = F.cross_entropy(batch @ memory.features.T / 0.05, slots, reduction="none")
    assert source.item() == pytest.approx(nll[:4].mean().item(), abs=1e-6)
    assert target.item() == pytest.approx(nll[4:].mean().item(), abs=1e-6)
    assert memory.loss(batch, slots).item() == pytest.approx((source + target).item(), abs=1e-6)
    only_target = memory.loss_terms(batch[4:], slots[4:])
    assert only_target["source"].item() == 0.0


def test_set_clusters_gives_one_normalised_mean_per_cluster_and_drops_outliers() -> None:
    s = 2
    memory = ClusterMemory(D, s, num_source_classes=s, num_target=9)
    source = _unit(s, D, seed=4)
    memory.features.copy_(source)
    features = torch.randn(9, D, generator=torch.Generator().manual_seed(5))
    labels = np.array([5, -1, 2, 5, 2, -1, 9, 5, 9])  # ids with gaps: slots follow their sorted order
    memory.set_clusters(features, labels)
    assert memory.num_slots == s + 3 and memory.num_clusters == 3
    assert torch.equal(memory.features[:s], source)  # the source centroids stay
    for slot, cluster in enumerate((2, 5, 9)):
        mean = features[torch.as_tensor(labels == cluster)].mean(0)
        assert torch.allclose(memory.features[s + slot], mean / mean.norm(), atol=1e-6)
    assert memory.target_slots([0, 1, 2, 6]).tolist() == [s + 1, -1, s + 0, s + 2]
    assert memory.target_labels.tolist() == [1, -1, 0, 1, 0, -1, 2, 1, 2]
    with pytest.raises(ValueError, match="without a memory slot"):
        memory.loss(features[:2], memory.target_slots([0, 1]))
    with pytest.raises(ValueError, match="no target sample belongs to a cluster"):
        memory.set_clusters(features, np.full(9, -1))


def test_state_dict_round_trip_between_memories_of_other_sizes() -> None:
    memory = ClusterMemory(D, 2, num_source_classes=2, num_target=6, hard=True)
    memory.set_clusters(torch.randn(6, D), [0, 0, 1, 2, 2, -1])
    buffer = io.BytesIO()
    torch.save(memory.state_dict(), buffer)
    buffer.seek(0)
    fresh = ClusterMemory(D, 2, num_source_classes=2, num_target=6, hard=True)  # before its first epoch
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    assert fresh.num_slots == 5 and torch.equal(fresh.features, memory.features)
    assert torch.equal(fresh.assignment, memory.assignment)
    other = ClusterMemory(D, 3, num_source_classes=3, num_target=6)
    with pytest.raises(ValueError, match="source classes"):
        other.load_state_dict(memory.state_dict())
    from spcl.memory import HybridMemory

    with pytest.raises(ValueError, match="kind"):
        HybridMemory(D, 8, num_source_classes=2).load_state_dict(memory.state_dict(), strict=False)
