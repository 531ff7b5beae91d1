"""The cluster-level memory of Cluster Contrast (Dai et al., 2021) behind the memory interface.

``ClusterMemory`` holds one unit feature per *class*: slots ``0 .. S-1`` the source class centroids
(UDA, as in the hybrid memory), slots ``S .. S+C-1`` the target clusters of the epoch. Each epoch
the trainer extracts the target training features with the current encoder (evaluation mode,
target BNs), clusters them (Jaccard + DBSCAN, no self-paced criterion) and calls ``set_clusters``:
a cluster's slot starts as the normalised mean of its members' features, and DBSCAN's outliers get
no slot (they leave the loss and the sampler for the epoch). The loss of a sample with slot ``y``
is the cross-entropy of the softmax over all slots,

    -log( exp(<f, w_y> / tau) / sum_k exp(<f, w_k> / tau) ),   tau = 0.05,

the source samples' mean plus the target samples' mean in UDA (docs/method.md#hybrid-memory), the plain batch
mean in USL. After each step (``update``), with momentum m (0.1 in Cluster Contrast's scripts):

- ``hard=False``: every batch sample pulls its slot in batch order, ``w = m*w + (1-m)*f``,
  re-normalised (Cluster Contrast's ``ClusterMemory`` without ``use_hard``);
- ``hard=True``: each slot present in the batch is pulled once, by the batch sample least similar
  to the slot as it was before the step (the first such sample on a tie), re-normalised
  (``use_hard``).

The number of slots changes every epoch; a checkpoint holds the epoch's slots and assignments and
loads into a memory of any size.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from spcl.config import MemoryConfig
from spcl.memory.base import ArrayLike, MemoryData, SlotMemory
from spcl.memory.registry import register_memory

__all__ = ["ClusterMemory"]


@register_memory("cluster")
class ClusterMemory(SlotMemory):
    """One slot per source class and per target cluster, with Cluster Contrast's loss and update.

    Args:
        num_features: feature dimension d.
        num_slots: the number of slots until ``set_clusters`` sets them (source classes + clusters).
        temp: softmax temperature (0.05).
        momentum: momentum m of the update (0.1 in the reference scripts).
        hard: pull each slot once by its hardest batch sample instead of by every sample.
        num_source_classes: number of source classes (0 for USL).
        num_target: number of target training samples (the length of the sample -> slot table).

    Buffers (saved by ``state_dict``): ``features`` (num_slots x d, float32) and ``assignment``
    (num_target, int64: each target sample's slot, -1 = out of training this epoch).
    """

    assignment: torch.Tensor
    title = "Cluster Contrast (cluster memory)"
    settings: ClassVar[dict[str, str]] = {"temp": "temp", "momentum": "momentum", "cluster_update": "hard"}

    def __init__(
        self,
        num_features: int,
        num_slots: int,
        temp: float = 0.05,
        momentum: float = 0.1,
        *,
        hard: bool = False,
        num_source_classes: int = 0,
        num_target: int = 0,
    ) -> None:
        super().__init__(num_features, num_slots, temp, momentum, num_source_classes)
        self.hard = bool(hard)
        self.register_buffer("assignment", torch.full((num_target,), -1, dtype=torch.long))

    # ------------------------------------------------------------------------------ the method
    @classmethod
    def build(cls, data: MemoryData, **arguments: Any) -> ClusterMemory:
        return cls(data.num_features, data.num_source_classes, num_source_classes=data.num_source_classes,
                   num_target=data.num_target, **arguments)

    @classmethod
    def arguments(cls, config: MemoryConfig) -> dict[str, Any]:
        arguments = super().arguments(config)
        if "hard" in arguments:
            arguments["hard"] = arguments["hard"] == "hard"
        return arguments

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        defaults = super().defaults()
        return {**defaults, "cluster_update": "hard" if defaults["cluster_update"] else "sample"}

    @classmethod
    def state_target_labels(cls, state: dict[str, Any]) -> np.ndarray:
        source = cls.state_source_classes(state)
        assignment = state["assignment"].numpy()
        return np.where(assignment >= 0, assignment - source, -1)

    # ---------------------------------------------------------------------------------- layout
    @property
    def num_target(self) -> int:
        return self.assignment.shape[0]

    @property
    def num_clusters(self) -> int:
        return self.num_slots - self.num_source_classes

    @property
    def target_labels(self) -> torch.Tensor:
        """Each target sample's cluster (0 .. C-1) or -1 (out of training this epoch)."""
        a = self.assignment
        return torch.where(a >= 0, a - self.num_source_classes, a)

    def target_slots(self, target_indices: ArrayLike) -> torch.Tensor:
        """Memory slots of target samples with these indices in the sorted target training list."""
        index = torch.as_tensor(target_indices, dtype=torch.long, device=self.assignment.device)
        return self.assignment[index]

    # ------------------------------------------------------------------------------- contents
    @torch.no_grad()
    def set_clusters(self, features: torch.Tensor, labels: ArrayLike) -> None:
        """The epoch's target slots from the target training features (num_target x d) and their
        cluster labels (-1: outlier, out of training): one slot per cluster, the normalised mean of
        its members. Cluster ids need not be consecutive; slots follow their sorted order."""
        labels = self._epoch_labels(features, labels)
        member = labels >= 0
        ids, compact = torch.unique(labels[member], return_inverse=True)
        sums = self.features.new_zeros(ids.numel(), self.num_features)
        sums.index_add_(0, compact, features.to(self.features)[member])
        centroids = F.normalize(sums, dim=1)  # the mean's direction: normalising the sum is the same
        s = self.num_source_classes
        self.features = torch.cat([self.features[:s], centroids])
        assignment = torch.full_like(labels, -1)
        assignment[member] = compact + s
        self.assignment.copy_(assignment)

    # ------------------------------------------------------------------------------------ loss
    def loss_terms(
        self, features: torch.Tensor, slots: torch.Tensor, batch_slots: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """``source`` and ``target``: the source samples' and the target samples' mean cross-entropy
        over all slots, each 0 when the batch has no such sample (docs/method.md#hybrid-memory's two terms)."""
        self._check_rows(features, slots.shape[0], "loss")
        slots = slots.to(self.features.device)
        self._check_slots(slots)
        logits = features.to(self.features.dtype) @ self.features.T / self.temp
        nll = F.cross_entropy(logits, slots, reduction="none")
        return self.split_means(nll, slots)

    # ---------------------------------------------------------------------------------- update
    @torch.no_grad()
    def update(self, features: torch.Tensor, slots: torch.Tensor) -> None:
        """The momentum update after the optimizer step (see the module docstring)."""
        self._check_rows(features, slots.shape[0], "update")
        features = features.detach().to(self.features)
        slots = slots.to(self.features.device)
        if self.hard:
            features, slots = self._hardest(features, slots)
        self.pull(features, slots)

    def _hardest(self, features: torch.Tensor, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For each slot of the batch, its batch sample least similar to it (first on a tie)."""
        similarity = (features * self.features[slots]).sum(dim=1)
        present, group = torch.unique(slots, return_inverse=True)
        lowest = torch.full((present.numel(),), float("inf"), device=slots.device, dtype=similarity.dtype)
        lowest = lowest.scatter_reduce(0, group, similarity, reduce="amin")
        position = torch.arange(slots.numel(), device=slots.device)
        candidate = torch.where(similarity == lowest[group], position, slots.numel())
        first = torch.full((present.numel(),), slots.numel(), device=slots.device, dtype=torch.long)
        first = first.scatter_reduce(0, group, candidate, reduce="amin")
        first = first.sort().values  # batch order of the chosen samples (one pull per slot)
        return features[first], slots[first]

    # ------------------------------------------------------------------------------ plumbing
    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # the epoch's number of clusters is the checkpoint's: take its size before loading
        self._take_sizes(state_dict, prefix, ("features",))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return (
            f"num_features={self.num_features}, num_slots={self.num_slots}, "
            f"num_source_classes={self.num_source_classes}, num_target={self.num_target}, "
            f"temp={self.temp}, momentum={self.momentum}, hard={self.hard}"
        )
