"""O2CAP (``spcl.memory.O2CAPMemory``) against a slow float64 reference written from docs/method.md#o2cap:
offline and online association terms, their gradient, the update, and the edge cases spcl decides
(cameras without proxies, fewer cameras than positives, fewer proxies than negatives)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from spcl.config import MemoryConfig
from spcl.memory import MemoryData, O2CAPMemory, memory_class

D = 12
# 18 target samples: clusters 0, 4, 5, 9 and three outliers; cameras 0-3, camera 3 only on outliers
LABELS = np.array([0, 0, 4, 4, 4, 5, 5, -1, 0, 4, 5, 0, -1, 5, 9, 9, 9, -1])
CAMERAS = np.array([0, 1, 0, 0, 2, 1, 1, 3, 1, 2, 2, 0, 3, 1, 0, 2, 2, 3])


def _memory(num_source: int = 0, labels: np.ndarray = LABELS, **kwargs) -> O2CAPMemory:
    features = torch.randn(len(labels), D, generator=torch.Generator().manual_seed(0))
    memory = O2CAPMemory(D, CAMERAS, num_source_classes=num_source, **kwargs)
    if num_source:
        memory.features[:num_source] = F.normalize(torch.randn(num_source, D, generator=torch.Generator().manual_seed(1)), dim=1)
    memory.set_clusters(features, labels)
    return memory


class SlowO2CAP:
    """docs/method.md#o2cap, sample by sample in float64, on a copy of the proxies (P x d) with each
    proxy's (cluster, camera)."""

    def __init__(self, memory: O2CAPMemory) -> None:
        s = memory.num_source_classes
        self.m = memory.features[s:].double().clone()
        self.cluster = memory.proxy_cluster.tolist()
        self.camera = memory.proxy_camera.tolist()
        self.temp, self.momentum = memory.temp, memory.momentum
        self.negatives, self.positives, self.balance = memory.negatives, memory.positives, memory.balance

    def _term(self, z: torch.Tensor, positives: list[int], scores: list[float]) -> torch.Tensor:
        """-1/|pos| sum log softmax over the positives and the best-scoring others."""
        others = sorted((q for q in range(len(self.cluster)) if q not in positives), key=lambda q: -scores[q])
        chosen = positives + others[: self.negatives]
        log_z = torch.logsumexp(z[chosen], 0)
        return -sum(z[p] - log_z for p in positives) / len(positives)

    def terms(self, f: torch.Tensor, proxies: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        offline, online = f.new_zeros((), dtype=torch.float64), f.new_zeros((), dtype=torch.float64)
        cameras = [self.camera[p] for p in proxies]
        for camera in sorted(set(cameras)):
            rows = [i for i, c in enumerate(cameras) if c == camera]
            for i in rows:
                x, y = f[i].double(), proxies[i]
                s = torch.stack([x @ self.m[q] for q in range(len(self.cluster))])
                z = s / self.temp
                plain = s.detach().tolist()
                own_cluster = [q for q in range(len(self.cluster)) if self.cluster[q] == self.cluster[y]]
                offline = offline + self._term(z, own_cluster, plain) / len(rows)
                h = [self.balance * plain[q] + (1 - self.balance) * float(self.m[y] @ self.m[q]) for q in range(len(plain))]
                best = []
                for c in sorted(set(self.camera)):  # only cameras that have proxies
                    mine = [q for q in range(len(h)) if self.camera[q] == c]
                    best.append(max(mine, key=lambda q: (h[q], -q)))  # the first on a tie, as argmax
                chosen = sorted(best, key=lambda q: -h[q])[: self.positives]
                online = online + self._term(z, chosen, h) / len(rows)
        return offline, online

    def update(self, f: torch.Tensor, proxies: list[int]) -> None:
        for x, y in zip(f.double(), proxies):
            pulled = self.momentum * self.m[y] + (1 - self.momentum) * x
            self.m[y] = pulled / pulled.norm()


def _batch(seed: int, samples: list[int]) -> torch.Tensor:
    return F.normalize(torch.randn(len(samples), D, generator=torch.Generator().manual_seed(seed)), dim=1)


@pytest.mark.parametrize("negatives,positives", [(50, 3), (2, 3), (3, 1), (50, 5)])
def test_usl_loss_gradient_and_update_match_the_slow_reference(negatives: int, positives: int) -> None:
    memory = _memory(negatives=negatives, positives=positives)
    slow = SlowO2CAP(memory)
    clustered = [i for i in range(len(LABELS)) if LABELS[i] >= 0]
    for step in range(3):  # the state carries over from one step to the next
        rng = np.random.default_rng(step)
        samples = [int(i) for i in rng.choice(clustered, 10)]  # repeats: one proxy pulled twice in a step
        batch = _batch(10 + step, samples)
        slots = memory.target_slots(samples)
        proxies = slots.tolist()
        x = batch.clone().requires_grad_(True)
        terms = memory.loss_terms(x, slots)
        assert list(terms) == ["offline", "online"]
        (terms["offline"] + terms["online"]).backward()
        y = batch.double().clone().requires_grad_(True)
        offline, online = slow.terms(y, proxies)
        (offline + online).backward()
        assert terms["offline"].item() == pytest.approx(offline.item(), abs=1e-5)
        assert terms["online"].item() == pytest.approx(online.item(), abs=1e-5)
        np.testing.assert_allclose(x.grad.numpy(), y.grad.numpy(), atol=1e-5)
        memory.update(batch, slots)
        slow.update(batch, proxies)
        np.testing.assert_allclose(memory.features.numpy(), slow.m.numpy(), atol=1e-5)


def test_a_camera_without_proxies_is_skipped_and_fewer_cameras_share_the_positives() -> None:
    # camera 3 holds only outliers: three cameras have proxies, so five positives asked are three
    memory = _memory(positives=5)
    assert sorted(set(memory.proxy_camera.tolist())) == [0, 1, 2]
    samples = [0, 2, 5, 14]
    batch = _batch(3, samples)
    similarity = batch @ memory.features.T
    _, chosen = memory._online_association(similarity, memory.target_slots(samples))
    assert chosen.sum(1).tolist() == [3, 3, 3, 3]
    cameras = memory.proxy_camera[chosen.nonzero()[:, 1]].view(4, 3)
    assert all(sorted(row) == [0, 1, 2] for row in cameras.tolist())  # one positive per camera


def test_a_look_alike_proxy_can_take_the_own_proxys_place() -> None:
    """docs/method.md#o2cap: the own proxy drops out of the online positives when another proxy of its camera
    has 0.15 (s_p - s_y) > 0.85 (1 - <m_y, m_p>); it then is an online negative."""
    memory = _memory()
    y = int(memory.target_slots([0]))  # cluster 0, camera 0
    twin = next(p for p in range(memory.num_proxies) if p != y and memory.proxy_camera[p] == memory.proxy_camera[y])
    base = memory.features[y].clone()
    nudge = F.normalize(torch.randn(D, generator=torch.Generator().manual_seed(4)) - base * 0.0, dim=0)
    memory.features[twin] = F.normalize(base + 0.02 * nudge, dim=0)  # cosine about 0.9998 to the own proxy
    f = F.normalize(base + 0.5 * nudge, dim=0)[None]  # nearer the twin than the own proxy
    s = f @ memory.features.T
    assert 0.15 * float(s[0, twin] - s[0, y]) > 0.85 * (1 - float(memory.features[y] @ memory.features[twin]))
    _, chosen = memory._online_association(s, torch.tensor([y]))
    assert bool(chosen[0, twin]) and not bool(chosen[0, y])
    slow = SlowO2CAP(memory)
    x = f.clone().requires_grad_(True)
    terms = memory.loss_terms(x, torch.tensor([y]))
    assert terms["online"].item() == pytest.approx(slow.terms(f.double(), [y])[1].item(), abs=1e-5)


def test_uda_source_term_and_target_terms_over_the_proxies_only() -> None:
    memory = _memory(num_source=3)
    samples = [0, 2, 5, 9, 14]
    batch = _batch(6, [0, 1, 2, *samples])
    slots = torch.cat([torch.tensor([0, 2, 1]), memory.target_slots(samples)])
    terms = memory.loss_terms(batch, slots)
    assert list(terms) == ["source", "offline", "online"]
    expected = F.cross_entropy(batch[:3] @ memory.features.T / memory.temp, slots[:3])
    assert terms["source"].item() == pytest.approx(expected.item(), abs=1e-6)
    offline, online = SlowO2CAP(memory).terms(batch[3:].double(), (slots[3:] - 3).tolist())
    assert terms["offline"].item() == pytest.approx(offline.item(), abs=1e-5)
    assert terms["online"].item() == pytest.approx(online.item(), abs=1e-5)
    memory.update(batch, slots)  # source samples pull their centroids, target samples their proxies
    assert torch.allclose(memory.features.norm(dim=1), torch.ones(memory.num_slots), atol=1e-6)


def test_slices_of_a_global_batch_average_to_the_whole_batchs_loss() -> None:
    memory = _memory(num_source=2)
    batch = _batch(8, list(range(8)))
    slots = torch.cat([torch.tensor([0, 1]), memory.target_slots([0, 1, 2, 4, 5, 9])])
    whole = memory.loss_terms(batch, slots)
    halves = [memory.loss_terms(batch[i::2], slots[i::2], batch_slots=slots) for i in (0, 1)]
    for term in whole:
        assert (halves[0][term] + halves[1][term]).item() / 2 == pytest.approx(whole[term].item(), rel=1e-6)


def test_state_dict_round_trip_and_the_config_builds_the_public_defaults() -> None:
    memory = _memory(num_source=2, negatives=7)
    buffer = io.BytesIO()
    torch.save(memory.state_dict(), buffer)
    buffer.seek(0)
    fresh = O2CAPMemory(D, CAMERAS, num_source_classes=2)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    for name in ("features", "assignment", "proxy_cluster", "proxy_camera"):
        assert torch.equal(getattr(fresh, name), getattr(memory, name)), name
    assert memory_class("o2cap") is O2CAPMemory
    built = O2CAPMemory.from_config(MemoryConfig(kind="o2cap"), MemoryData(D, 0, len(CAMERAS), CAMERAS.tolist()))
    assert (built.temp, built.momentum, built.negatives, built.positives, built.balance) == (0.07, 0.2, 50, 3, 0.15)
    resolved = O2CAPMemory.resolve(MemoryConfig(kind="o2cap", balance=0.3, cluster_update="hard"))
    assert (resolved.temp, resolved.balance, resolved.negatives, resolved.cluster_update) == (0.07, 0.3, 50, None)
    with pytest.raises(ValueError, match="needs the camera of every target training image"):
        O2CAPMemory.from_config(MemoryConfig(kind="o2cap"), MemoryData(D, 0, 2, [0, None]))
