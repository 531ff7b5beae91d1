"""What every memory of this package shares: unit feature slots, source class centroids first.

A memory holds one L2-normalised feature per *slot*. Slots ``0 .. S-1`` are the ``S =
num_source_classes`` source class centroids (UDA; none in USL), initialised as the mean feature
of each class and pulled by their samples after every step. What the slots after them hold, and
what a target sample's slot is, depends on the kind (``hybrid``: one per target instance;
``cluster``: one per cluster). The memory is the single owner of the sample -> slot mapping
(``source_slots``, ``target_slots``): callers never add ``num_source_classes`` by hand. It gets no
gradient; the trainer calls ``update`` after the optimizer step with the whole global batch.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ArrayLike", "SlotMemory", "occurrence_rank"]

ArrayLike = torch.Tensor | np.ndarray | list[int]


class SlotMemory(nn.Module):
    """Unit feature slots with the source class centroids first (see the module docstring)."""

    features: torch.Tensor
    kind = ""

    def __init__(
        self, num_features: int, num_slots: int, temp: float, momentum: float, num_source_classes: int,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        if dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise ValueError(f"memory slots are stored in float32, float16 or bfloat16, got {dtype}")
        if not 0 <= num_source_classes <= num_slots:
            raise ValueError(
                f"need 0 <= num_source_classes <= num_slots, got {num_source_classes}, {num_slots}"
            )
        if temp <= 0 or not 0.0 <= momentum < 1.0:
            raise ValueError(f"need temp > 0 and 0 <= momentum < 1, got {temp}, {momentum}")
        self.num_features = num_features
        self.num_source_classes = num_source_classes
        self.temp = temp
        self.momentum = momentum
        self.register_buffer("features", torch.zeros(num_slots, num_features, dtype=dtype))

    @property
    def num_slots(self) -> int:
        return self.features.shape[0]

    @property
    def source_features(self) -> torch.Tensor:
        """The source class centroids (a view: num_source_classes x d)."""
        return self.features[: self.num_source_classes]

    @property
    def target_labels(self) -> torch.Tensor:
        raise NotImplementedError

    @property
    def sampling_labels(self) -> torch.Tensor:
        """The target samples' classes as the identity sampler draws them (-1: not drawn)."""
        return self.target_labels

    def source_slots(self, class_ids: ArrayLike) -> torch.Tensor:
        """Memory slots of source samples with these class ids."""
        return torch.as_tensor(class_ids, dtype=torch.long, device=self.features.device)

    @torch.no_grad()
    def init_source(self, features: torch.Tensor, class_ids: ArrayLike) -> None:
        """Set the source centroids from the features of all source training images and their
        class ids: per-class mean, L2-normalised (SPEC section 4). Every class needs an image."""
        s = self.num_source_classes
        class_ids = self.source_slots(class_ids)
        self._check_rows(features, class_ids.shape[0], "init_source")
        if class_ids.numel() and (class_ids.min() < 0 or class_ids.max() >= s):
            raise ValueError(f"source class ids must lie in [0, {s})")
        counts = torch.bincount(class_ids, minlength=s)
        if (counts == 0).any():
            missing = torch.nonzero(counts == 0).flatten()[:5].tolist()
            raise ValueError(f"source classes without any image, e.g. {missing}")
        sums = torch.zeros(s, self.num_features, dtype=torch.float32, device=self.features.device)
        sums.index_add_(0, class_ids, features.to(sums))
        self.features[:s] = F.normalize(sums / counts[:, None], dim=1).to(self.features.dtype)

    @torch.no_grad()
    def pull(self, features: torch.Tensor, slots: torch.Tensor) -> None:
        """Each row, in order, pulls its slot ``w = m*w + (1-m)*f`` and re-normalises it. A slot
        repeated in the batch is pulled once per occurrence, each pull starting from the previous
        result (vectorised by occurrence rank: all first occurrences, then all second ones, ...).
        Slots stored in a lower precision are pulled in float32 and rounded once when stored."""
        rank = occurrence_rank(slots)
        m = self.momentum
        features = features.float()
        for r in range(int(rank.max()) + 1 if rank.numel() else 0):
            chosen = rank == r
            rows = slots[chosen]
            pulled = m * self.features[rows].float() + (1.0 - m) * features[chosen]
            self.features[rows] = F.normalize(pulled, dim=1).to(self.features.dtype)

    @staticmethod
    def split_means(nll: torch.Tensor, slots: torch.Tensor, num_source_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
        """SPEC section 3's two terms: the mean over the source samples (slot < S) and the mean
        over the target samples, each 0 when the batch has no such sample."""
        is_source = slots < num_source_classes
        source = (nll * is_source).sum() / is_source.sum().clamp(min=1)
        target = (nll * ~is_source).sum() / (~is_source).sum().clamp(min=1)
        return source, target

    def loss(self, features: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """The loss of L2-normalised ``features`` (B x d) whose memory slots are ``slots`` (B): the
        source samples' mean plus the target samples' mean. Gradient flows to ``features`` only."""
        source, target = self.loss_terms(features, slots)
        return source + target

    def loss_terms(self, features: torch.Tensor, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _epoch_labels(self, features: torch.Tensor, labels: ArrayLike) -> torch.Tensor:
        """Check what ``set_clusters`` gets (num_target features and cluster labels, -1 = out of
        training, at least one clustered sample) and return the labels as a tensor."""
        num_target = self.assignment.shape[0]
        self._check_rows(features, num_target, "set_clusters")
        labels = torch.as_tensor(labels, dtype=torch.long, device=self.features.device)
        if labels.shape != (num_target,):
            raise ValueError(f"expected {num_target} target labels, got shape {tuple(labels.shape)}")
        if (labels < -1).any():
            raise ValueError("cluster labels must be >= -1 (-1: out of training)")
        if not bool((labels >= 0).any()):
            raise ValueError("no target sample belongs to a cluster: nothing to train the target on")
        return labels

    def _check_slots(self, slots: torch.Tensor) -> None:
        """Every sample of a loss needs a slot: the cluster memories give outliers none (-1)."""
        if (slots < 0).any() or (slots >= self.num_slots).any():
            raise ValueError(
                f"loss() got samples without a memory slot (slot -1: an outlier, or >= {self.num_slots}); "
                "outliers must not be sampled"
            )

    def _take_sizes(self, state_dict: dict[str, Any], prefix: str, names: tuple[str, ...]) -> None:
        """Give the named buffers the sizes a checkpoint holds (the epoch's number of clusters or
        proxies) before ``load_state_dict`` copies into them; a mismatched feature width is left
        for it to report."""
        for name in names:
            value = state_dict.get(prefix + name)
            current = getattr(self, name)
            if isinstance(value, torch.Tensor) and value.dim() == current.dim():
                if name != "features" or value.shape[1] == self.num_features:
                    setattr(self, name, current.new_zeros(value.shape))

    def _check_rows(self, features: torch.Tensor, rows: int, where: str) -> None:
        if features.dim() != 2 or features.shape != (rows, self.num_features):
            raise ValueError(
                f"{where}: expected features of shape ({rows}, {self.num_features}), "
                f"got {tuple(features.shape)}"
            )

    def get_extra_state(self) -> dict[str, Any]:
        return {"num_source_classes": self.num_source_classes, "kind": self.kind}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        kind = state.get("kind", "hybrid")
        if kind != self.kind:
            raise ValueError(f"the memory state is of kind {kind!r}, this memory is {self.kind!r} (memory.kind)")
        if state["num_source_classes"] != self.num_source_classes:
            raise ValueError(
                f"memory state has {state['num_source_classes']} source classes, this memory "
                f"{self.num_source_classes}: the checkpoint was made with other training data"
            )


def occurrence_rank(indexes: torch.Tensor) -> torch.Tensor:
    """For each position, how many earlier positions hold the same value (0 for a first
    occurrence), without a Python loop over the batch."""
    order = torch.argsort(indexes, stable=True)
    _, counts = torch.unique_consecutive(indexes[order], return_counts=True)
    starts = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(indexes.shape[0], device=indexes.device) - starts
    return rank
