"""Hybrid memory and unified contrastive loss (docs/method.md#hybrid-memory) against slow float64 references."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from spcl.memory import HybridMemory

D = 16
NUM_SOURCE = 5
# target pseudo labels: clusters 0 (4 members), 1 (3), 3 (5); class 2 unused (a gap, so masked);
# outliers get their own classes 4..; slot 7 is out of every class (-1).
PSEUDO = [0, 0, 1, 4, 0, 3, 1, 3, -1, 5, 3, 0, 6, 3, 1, 3, 7, 8]


def _unit(*shape: int, generator: torch.Generator) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=generator), dim=-1)


def _memory(num_source: int = NUM_SOURCE, pseudo=PSEUDO, **kwargs) -> HybridMemory:
    g = torch.Generator().manual_seed(0)
    memory = HybridMemory(D, num_source + len(pseudo), num_source_classes=num_source, **kwargs)
    memory.init_features(_unit(memory.num_slots, D, generator=g))
    memory.set_pseudo_labels(pseudo)
    return memory


def reference_loss(
    features: torch.Tensor,
    slots: list[int],
    slot_features: np.ndarray,
    num_source: int,
    pseudo: list[int],
    temp: float = 0.05,
    eps: float = 1e-6,
) -> torch.Tensor:
    """docs/method.md#hybrid-memory written out: explicit prototypes of the three kinds, explicit softmax over
    the non-empty classes, log(p + eps), UDA = mean over source + mean over target."""
    mem = torch.as_tensor(slot_features, dtype=torch.float64)
    prototypes, class_of_slot = {}, {}
    for k in range(num_source):  # source class centroids
        prototypes[("source", k)] = mem[k]
        class_of_slot[k] = ("source", k)
    for label in sorted(set(pseudo) - {-1}):
        members = [i for i, p in enumerate(pseudo) if p == label]
        # a cluster: the un-normalised mean of its members; an outlier: its own feature
        prototypes[("target", label)] = torch.stack([mem[num_source + i] for i in members]).mean(0)
        for i in members:
            class_of_slot[num_source + i] = ("target", label)
    keys = list(prototypes)
    source_terms, target_terms = [], []
    for f, slot in zip(features, slots):
        exps = {key: torch.exp(f @ prototypes[key] / temp) for key in keys}
        p = exps[class_of_slot[slot]] / sum(exps.values())
        term = -torch.log(p + eps)
        (source_terms if slot < num_source else target_terms).append(term)
    loss = torch.zeros((), dtype=torch.float64)
    for terms in (source_terms, target_terms):
        if terms:
            loss = loss + torch.stack(terms).mean()
    return loss


def _batch(memory: HybridMemory, g: torch.Generator, source_ids, target_ids):
    slots = torch.cat([memory.source_slots(source_ids), memory.target_slots(target_ids)])
    # features near their slot so probabilities are not all tiny
    feats = F.normalize(memory.features[slots] + 0.7 * torch.randn(len(slots), D, generator=g), dim=1)
    return feats, slots


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("num_source", [NUM_SOURCE, 0])
def test_loss_and_gradient_match_float64_reference(monkeypatch, num_source: int, dtype: torch.dtype) -> None:
    """Slots stored in float16 / bfloat16 compute in float32 too: the reference on the rounded slots,
    across blocks of slots (the low-precision path is forced to small blocks)."""
    monkeypatch.setattr("spcl.memory.hybrid._SLOT_BLOCK", 4)
    g = torch.Generator().manual_seed(1)
    memory = _memory(num_source, dtype=dtype)
    assert memory.features.dtype == dtype
    source_ids = [0, 0, 3, 4, 4, 4] if num_source else []
    target_ids = [0, 1, 3, 5, 9, 12, 12, 16, 17]  # clusters, outliers, a repeated image
    feats, slots = _batch(memory, g, source_ids, target_ids)
    feats = feats.float()

    x = feats.clone().requires_grad_(True)
    loss = memory.loss(x, slots)
    loss.backward()

    x64 = feats.double().clone().requires_grad_(True)
    ref = reference_loss(x64, slots.tolist(), memory.features.double().numpy(), num_source, PSEUDO)
    ref.backward()

    assert loss.dtype == torch.float32
    assert math.isclose(loss.item(), ref.item(), rel_tol=1e-5, abs_tol=1e-5)
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=1e-4, atol=1e-5)


def test_uda_loss_is_source_mean_plus_target_mean() -> None:
    g = torch.Generator().manual_seed(2)
    memory = _memory()
    feats, slots = _batch(memory, g, [0, 1, 1], [0, 2, 3, 4, 5, 6, 9])
    source = slots < memory.num_source_classes
    full = memory.loss(feats, slots)
    parts = memory.loss(feats[source], slots[source]) + memory.loss(feats[~source], slots[~source])
    torch.testing.assert_close(full, parts)
    # not the mean over the whole batch (3 source vs 7 target samples)
    source_loss = memory.loss(feats[source], slots[source])
    target_loss = memory.loss(feats[~source], slots[~source])
    single_mean = (3 * source_loss + 7 * target_loss) / 10
    assert not torch.isclose(full, single_mean)


def test_empty_classes_are_masked() -> None:
    g = torch.Generator().manual_seed(3)
    memory = _memory()
    feats, slots = _batch(memory, g, [2], [0, 3, 9])
    before = memory.loss(feats, slots)
    # add unused class ids (gaps) between the existing ones: the loss must not change
    spread = [3 * p if p >= 0 else -1 for p in PSEUDO]
    memory.set_pseudo_labels(spread)
    torch.testing.assert_close(memory.loss(feats, slots), before)
    _, nonempty = memory.prototypes()
    assert nonempty.sum().item() == NUM_SOURCE + len(set(PSEUDO) - {-1})


def test_slot_without_class_is_excluded_and_rejected_as_target() -> None:
    memory = _memory()
    prototypes, nonempty = memory.prototypes()
    assert prototypes.shape[0] == memory.labels.max().item() + 1
    slot = memory.target_slots([8])  # pseudo label -1
    with pytest.raises(ValueError, match="no class"):
        memory.loss(memory.features[slot], slot)


def test_memory_receives_no_gradient_and_backward_leaves_it_unchanged() -> None:
    g = torch.Generator().manual_seed(4)
    memory = _memory()
    feats, slots = _batch(memory, g, [0, 1], [0, 1, 2])
    before_f, before_l = memory.features.clone(), memory.labels.clone()
    x = feats.requires_grad_(True)
    memory.loss(x, slots).backward()
    assert not memory.features.requires_grad and memory.features.grad is None
    assert list(memory.parameters()) == []
    assert torch.equal(memory.features, before_f) and torch.equal(memory.labels, before_l)
    assert x.grad is not None and torch.isfinite(x.grad).all()


def _loop_update(mem: np.ndarray, feats: np.ndarray, slots: list[int], m: float) -> np.ndarray:
    mem = mem.astype(np.float64).copy()
    for f, s in zip(feats.astype(np.float64), slots):  # the reference: sample by sample
        mem[s] = m * mem[s] + (1 - m) * f
        mem[s] /= np.linalg.norm(mem[s])
    return mem


def test_momentum_update_equals_sample_by_sample_loop_with_repeated_slots() -> None:
    g = torch.Generator().manual_seed(5)
    memory = _memory()
    # four images of source class 1 (not adjacent), two of class 3, target image 2 drawn three times
    source_ids = [1, 3, 1, 1, 0, 3, 1]
    target_ids = [2, 5, 2, 7, 2, 0]
    feats, slots = _batch(memory, g, source_ids, target_ids)
    perm = torch.randperm(len(slots), generator=g)  # interleave source and target
    feats, slots = feats[perm], slots[perm]
    expected = _loop_update(memory.features.numpy(), feats.numpy(), slots.tolist(), 0.2)
    labels = memory.labels.clone()
    memory.update(feats, slots)
    np.testing.assert_allclose(memory.features.numpy(), expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(memory.labels, labels)


def test_scatter_keeping_one_occurrence_would_differ() -> None:
    g = torch.Generator().manual_seed(6)
    memory = _memory()
    feats, slots = _batch(memory, g, [1, 1, 1, 1], [])
    start = memory.features.clone()
    memory.update(feats, slots)
    last_only = F.normalize(0.2 * start[1] + 0.8 * feats[-1], dim=0)
    assert not torch.allclose(memory.features[1], last_only, atol=1e-4)


def test_mean_source_update_option() -> None:
    g = torch.Generator().manual_seed(7)
    memory = _memory(source_update="mean", momentum=0.3)
    feats, slots = _batch(memory, g, [1, 3, 1, 1, 3, 0], [4, 4, 6])
    start = memory.features.clone().double()
    memory.update(feats, slots)
    expected = start.clone()
    for k in (0, 1, 3):  # each source class once, with the mean of its batch features
        mean = feats.double()[slots == k].mean(0)
        expected[k] = F.normalize(0.3 * start[k] + 0.7 * mean, dim=0)
    target = slots >= NUM_SOURCE
    expected = torch.as_tensor(
        _loop_update(expected.numpy(), feats[target].numpy(), slots[target].tolist(), 0.3)
    )
    torch.testing.assert_close(memory.features.double(), expected, rtol=1e-5, atol=1e-6)


def test_slot_mapping_init_and_state_dict_round_trip() -> None:
    g = torch.Generator().manual_seed(8)
    memory = HybridMemory(D, 3 + 4, num_source_classes=3, temp=0.1, momentum=0.5)
    assert memory.labels.tolist() == list(range(7))  # before clustering: one class per slot
    assert memory.target_slots([0, 3]).tolist() == [3, 6]
    assert memory.source_slots([2]).tolist() == [2]
    source_feats = torch.randn(6, D, generator=g)
    class_ids = [0, 1, 1, 2, 2, 2]
    memory.init_source(source_feats, class_ids)
    expected = F.normalize(source_feats[3:].mean(0), dim=0)
    torch.testing.assert_close(memory.source_features[2], expected)
    target_feats = torch.randn(4, D, generator=g)
    memory.init_target(target_feats)
    torch.testing.assert_close(memory.target_features, F.normalize(target_feats, dim=1))
    memory.set_pseudo_labels(np.array([1, 0, 1, -1]))
    assert memory.labels.tolist() == [0, 1, 2, 4, 3, 4, -1]
    assert memory.target_labels.tolist() == [1, 0, 1, -1]
    with pytest.raises(ValueError, match="without any image"):
        memory.init_source(source_feats[:1], [0])
    with pytest.raises(ValueError, match="target pseudo labels"):
        memory.set_pseudo_labels([0, 1])

    buffer = io.BytesIO()
    torch.save(memory.state_dict(), buffer)
    buffer.seek(0)
    restored = HybridMemory(D, 7, num_source_classes=3)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert torch.equal(restored.features, memory.features)
    assert torch.equal(restored.labels, memory.labels)
    with pytest.raises(ValueError, match="source classes"):
        HybridMemory(D, 7, num_source_classes=2).load_state_dict(memory.state_dict())


def test_loss_terms_are_the_two_means() -> None:
    g = torch.Generator().manual_seed(9)
    memory = _memory()
    feats, slots = _batch(memory, g, [0, 2], [1, 4, 9])
    terms = memory.loss_terms(feats, slots)
    assert list(terms) == ["source", "target"]
    source, target = terms["source"], terms["target"]
    torch.testing.assert_close(source, memory.loss(feats[:2], slots[:2]))
    torch.testing.assert_close(target, memory.loss(feats[2:], slots[2:]))
    torch.testing.assert_close(source + target, memory.loss(feats, slots))


# ----------------------------------------------------------------- slots in a lower precision
def test_low_precision_update_rounds_once() -> None:
    """A pull of float16 slots is the float64 loop on the stored values, rounded when stored."""
    g = torch.Generator().manual_seed(5)
    memory = _memory(dtype=torch.float16)
    feats, slots = _batch(memory, g, [1, 3, 1], [2, 5, 2, 7])
    feats = feats.float()
    start = memory.features.double().numpy()
    expected = _loop_update(start, feats.double().numpy(), slots.tolist(), 0.2)
    memory.update(feats, slots)
    np.testing.assert_allclose(memory.features.double().numpy(), expected, rtol=0, atol=2e-3)  # float16 ulp at 1
    changed = sorted(set(slots.tolist()))
    untouched = [s for s in range(memory.num_slots) if s not in changed]
    np.testing.assert_array_equal(memory.features.double().numpy()[untouched], start[untouched])


def test_low_precision_state_dict_and_bad_dtype() -> None:
    memory = _memory(dtype=torch.float16)
    buffer = io.BytesIO()
    torch.save(memory.state_dict(), buffer)
    buffer.seek(0)
    other = HybridMemory(D, memory.num_slots, num_source_classes=NUM_SOURCE, dtype=torch.float16)
    other.load_state_dict(torch.load(buffer, weights_only=True))
    assert other.features.dtype == torch.float16 and torch.equal(other.features, memory.features)
    assert "float16" in repr(memory)
    with pytest.raises(ValueError, match="float32, float16 or bfloat16"):
        HybridMemory(D, 10, dtype=torch.int8)
