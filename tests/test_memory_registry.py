"""The registry of methods (``spcl.memory.register_memory``): names, errors, and what a method's
class answers for the trainer (defaults, resolved settings, clustering settings, loss names)."""

from __future__ import annotations

import pytest
import torch

from spcl.config import MemoryConfig, PseudoLabelConfig
from spcl.memory import (
    CameraAwareMemory,
    ClusterMemory,
    HybridMemory,
    MemoryData,
    SlotMemory,
    memory_class,
    register_memory,
    registered_memories,
)


def test_the_shipped_methods_are_registered_under_their_kinds() -> None:
    kinds = registered_memories()
    assert {"hybrid", "cluster", "cap"} <= set(kinds)
    assert (kinds["hybrid"], kinds["cluster"], kinds["cap"]) == (HybridMemory, ClusterMemory, CameraAwareMemory)
    assert all(cls.kind == name for name, cls in kinds.items())
    with pytest.raises(ValueError, match="memory.kind 'nope' is not a registered memory; registered: .*hybrid"):
        memory_class("nope")


def test_a_taken_name_or_a_foreign_class_is_refused() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_memory("cluster")(type("Other", (ClusterMemory,), {}))
    with pytest.raises(TypeError, match="subclass of spcl.memory.SlotMemory"):
        register_memory("not-a-memory")(dict)  # type: ignore[type-var]
    with pytest.raises(ValueError, match="short name"):
        register_memory("a b")
    assert register_memory("cluster")(ClusterMemory) is ClusterMemory  # registering the same class again is harmless


def test_defaults_come_from_the_constructor_and_resolve_fills_only_what_the_method_reads() -> None:
    assert HybridMemory.defaults() == {"temp": 0.05, "momentum": 0.2, "source_update": "sample", "precision": "float32"}
    assert ClusterMemory.defaults() == {"temp": 0.05, "momentum": 0.1, "cluster_update": "sample"}
    assert CameraAwareMemory.defaults() == {"temp": 0.07, "momentum": 0.2, "negatives": 50, "inter_camera_weight": 0.5,
                                            "inter_camera_from": 5}
    given = MemoryConfig(kind="cluster", momentum=0.3, negatives=9, cluster_update="hard")
    resolved = ClusterMemory.resolve(given)
    assert (resolved.temp, resolved.momentum, resolved.cluster_update, resolved.negatives) == (0.05, 0.3, "hard", None)
    assert ClusterMemory.unread_settings(given) == ["memory.negatives"]
    memory = ClusterMemory.from_config(given, MemoryData(8, 2, 5))
    assert (memory.momentum, memory.hard, memory.num_source_classes, memory.num_target) == (0.3, True, 2, 5)
    hybrid = HybridMemory.from_config(MemoryConfig(precision="float16"), MemoryData(8, 2, 5))
    assert hybrid.features.dtype == torch.float16 and hybrid.num_slots == 7 and hybrid.temp == 0.05


def test_what_each_method_clusters_and_whether_its_outliers_train() -> None:
    pseudo = PseudoLabelConfig()
    assert HybridMemory.pseudo_settings(pseudo) == pseudo  # SpCL: self-paced, outliers are classes
    for cls in (ClusterMemory, CameraAwareMemory):
        settings = cls.pseudo_settings(pseudo)
        assert not settings.self_paced and settings.discard_outliers
    hybrid = HybridMemory(4, 6, num_source_classes=2)
    assert hybrid.clustering_features(lambda dtype: pytest.fail("SpCL extracts nothing")) is not None
    cluster = ClusterMemory(4, 2, num_source_classes=2, num_target=3)
    fresh = torch.ones(3, 4)
    assert cluster.clustering_features(lambda dtype: fresh) is fresh
    assert (hybrid.loss_names, cluster.loss_names) == (("source", "target"), ("source", "target"))
    assert ClusterMemory(4, 0).loss_names == ()  # neither a source nor a target: nothing to train
    assert CameraAwareMemory(4, [0, 1], num_source_classes=0).loss_names == ("intra", "inter")


def test_a_subclass_inherits_its_construction() -> None:
    @register_memory("test-registry-warm-cluster")
    class Warm(ClusterMemory):
        title = "a warmer cluster memory"

    memory = memory_class("test-registry-warm-cluster").from_config(MemoryConfig(kind="test-registry-warm-cluster"),
                                                                   MemoryData(8, 0, 4))
    assert type(memory) is Warm and memory.kind == "test-registry-warm-cluster" and ClusterMemory.kind == "cluster"
    assert isinstance(memory, SlotMemory) and memory.momentum == 0.1

    class Wrapped(ClusterMemory):  # a constructor that wraps its parent's: the parent's defaults still hold
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)

    assert Wrapped.defaults() == ClusterMemory.defaults()
