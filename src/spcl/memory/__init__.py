"""The memories that the contrastive losses compare features against (SPEC section 3).

- ``hybrid`` (``HybridMemory``): SpCL's source class centroids + target instance features, whose
  prototypes follow the epoch's self-paced clusters; the unified contrastive loss.
- ``cluster`` (``ClusterMemory``): Cluster Contrast's one slot per class (source classes, target
  clusters), set each epoch from fresh features; cross-entropy over the slots.
- ``camera`` (``CameraAwareMemory``): the cluster memory with one proxy per (cluster, camera) and
  CAP's intra- and inter-camera terms (``memory.camera_aware``).

Both share ``base.SlotMemory``: the source centroids first, ``source_slots`` / ``target_slots``,
``loss`` / ``loss_terms`` / ``update``, so the trainer, DDP and checkpoints treat them alike.
"""

from spcl.memory.base import SlotMemory
from spcl.memory.camera import CameraAwareMemory
from spcl.memory.cluster import ClusterMemory
from spcl.memory.hybrid import HybridMemory

__all__ = ["CameraAwareMemory", "ClusterMemory", "HybridMemory", "SlotMemory"]
