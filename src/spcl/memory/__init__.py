"""The memories that the contrastive losses compare features against: one registered class per
method (docs/method.md#hybrid-memory, #successors, #o2cap); ``memory.kind`` names it.

- ``hybrid`` (``HybridMemory``): SpCL's source class centroids + target instance features, whose
  prototypes follow the epoch's self-paced clusters; the unified contrastive loss.
- ``cluster`` (``ClusterMemory``): Cluster Contrast's one slot per class (source classes, target
  clusters), set each epoch from fresh features; cross-entropy over the slots.
- ``cap`` (``CameraAwareMemory``): one proxy per (cluster, camera) with CAP's intra- and
  inter-camera terms.
- ``o2cap`` (``O2CAPMemory``): CAP's proxies with O2CAP's offline and online association terms.

All share ``base.SlotMemory``: the source centroids first, ``source_slots`` / ``target_slots``,
``loss`` / ``loss_terms`` (named terms) / ``update``, and what the trainer asks a method (how it is
built, what it clusters, what the sampler draws). Add a method with ``@register_memory("name")``.
"""

from spcl.memory.base import MemoryData, SlotMemory
from spcl.memory.camera import CameraAwareMemory, ProxyMemory
from spcl.memory.cluster import ClusterMemory
from spcl.memory.hybrid import HybridMemory
from spcl.memory.o2cap import O2CAPMemory
from spcl.memory.registry import memory_class, register_memory, registered_memories

__all__ = [
    "CameraAwareMemory",
    "ClusterMemory",
    "HybridMemory",
    "MemoryData",
    "O2CAPMemory",
    "ProxyMemory",
    "SlotMemory",
    "memory_class",
    "register_memory",
    "registered_memories",
]
