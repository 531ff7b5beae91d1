"""The hybrid memory and the unified contrastive loss (docs/method.md#hybrid-memory).

One ``HybridMemory`` holds a unit feature per *slot* and a class label per slot:

- slots ``0 .. S-1``: the ``S = num_source_classes`` source class centroids ``w_k`` (label = k);
- slots ``S .. S+N-1``: the target instance features ``v_i`` (target sample i -> slot ``S + i``,
  label = ``S + pseudo label``, or -1 for a slot that belongs to no class).

A class prototype is the mean of its member slots (a source class or an outlier has one member,
itself; a target cluster's prototype is the un-normalised mean of its members' features, so
``<f, c_k>`` is the mean of the similarities, as the reference computes it). The loss is a
softmax over every class with at least one member, ``-log(p_target + 1e-6)``; in UDA the mean over
the source samples plus the mean over the target samples. The memory gets no gradient; the
trainer calls ``update`` (momentum + re-normalisation) after the optimizer step.

The memory is the single owner of the sample -> slot mapping (``source_slots``, ``target_slots``,
``set_pseudo_labels``): callers never add ``num_source_classes`` by hand.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from spcl.config import MemoryConfig, PseudoLabelConfig
from spcl.memory.base import ArrayLike, Extract, MemoryData, SlotMemory
from spcl.memory.registry import register_memory

__all__ = ["HybridMemory"]

_SLOT_BLOCK = 65536  # slots converted to float32 at a time by the low-precision loss (512 MiB at d = 2048)


class _BlockedClassLogits(torch.autograd.Function):
    """logits[b, c] = mean over the slots s of class c of <f_b, w_s>, with w in a low precision.

    Forward and backward each read the slots once, a block at a time in float32; autograd would
    instead keep every converted block for the backward pass.
    """

    @staticmethod
    def forward(ctx, features, slots, labels, counts, num_classes):  # type: ignore[override]
        logits = features.new_zeros(features.shape[0], num_classes)
        for a in range(0, slots.shape[0], _SLOT_BLOCK):
            block_labels = labels[a : a + _SLOT_BLOCK]
            member = block_labels >= 0
            sims = features @ slots[a : a + _SLOT_BLOCK][member].float().T
            logits.index_add_(1, block_labels[member], sims)
        ctx.save_for_backward(slots, labels, counts)
        return logits / counts.clamp(min=1)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        slots, labels, counts = ctx.saved_tensors
        scaled = grad / counts.clamp(min=1)
        grad_features = grad.new_zeros(grad.shape[0], slots.shape[1])
        for a in range(0, slots.shape[0], _SLOT_BLOCK):
            block_labels = labels[a : a + _SLOT_BLOCK]
            member = block_labels >= 0
            grad_features += scaled[:, block_labels[member]] @ slots[a : a + _SLOT_BLOCK][member].float()
        return grad_features, None, None, None, None


@register_memory("hybrid")
class HybridMemory(SlotMemory):
    """Source class centroids + target instance features, with the unified contrastive loss.

    Args:
        num_features: feature dimension d.
        num_slots: ``num_source_classes`` + number of target training images.
        temp: softmax temperature tau (0.05).
        momentum: momentum m of the update ``w = m*w + (1-m)*f`` (0.2).
        num_source_classes: number of source classes (0 for USL / source-free).
        source_update: ``"sample"`` (reference, default): every source sample of a batch pulls its
            class centroid in turn, in batch order; ``"mean"`` (paper wording): each source class of
            the batch is pulled once by the mean of its batch features.
        eps: the epsilon in ``log(p + eps)`` (reference: 1e-6).
        dtype: how the slots are stored: float32 (default), or float16 / bfloat16 for memories of
            10^6 instances (4 GiB instead of 8 at d = 2048); the loss and the update still compute
            in float32, only the stored slots are rounded.

    Buffers (saved by ``state_dict``): ``features`` (num_slots x d, ``dtype``), ``labels``
    (num_slots, int64). Before any pseudo labels every slot is its own class.
    """

    labels: torch.Tensor
    title = "SpCL (hybrid memory)"
    settings: ClassVar[dict[str, str]] = {
        "temp": "temp", "momentum": "momentum", "source_update": "source_update", "precision": "dtype",
    }

    def __init__(
        self,
        num_features: int,
        num_slots: int,
        temp: float = 0.05,
        momentum: float = 0.2,
        *,
        num_source_classes: int = 0,
        source_update: str = "sample",
        eps: float = 1e-6,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if source_update not in ("sample", "mean"):
            raise ValueError(f"source_update must be 'sample' or 'mean', got {source_update!r}")
        super().__init__(num_features, num_slots, temp, momentum, num_source_classes, dtype)
        self.source_update = source_update
        self.eps = eps
        self.register_buffer("labels", torch.arange(num_slots))

    # ------------------------------------------------------------------------------ the method
    @classmethod
    def build(cls, data: MemoryData, **arguments: Any) -> HybridMemory:
        return cls(data.num_features, data.num_source_classes + data.num_target,
                   num_source_classes=data.num_source_classes, **arguments)

    @classmethod
    def arguments(cls, config: MemoryConfig) -> dict[str, Any]:
        arguments = super().arguments(config)
        if "dtype" in arguments:
            arguments["dtype"] = getattr(torch, arguments["dtype"])
        return arguments

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return {**super().defaults(), "precision": "float32"}

    @classmethod
    def pseudo_settings(cls, pseudo: PseudoLabelConfig) -> PseudoLabelConfig:
        """SpCL's pseudo labels as configured: the self-paced criterion, outliers trained on as
        their own classes (unless an ablation says otherwise)."""
        return pseudo

    def initial_target(self, extract: Extract) -> None:
        # in the memory's precision: a float16 memory of 10^6 targets never needs them in float32
        if self.num_target:
            self.init_target(extract(self.features.dtype))

    def clustering_features(self, extract: Extract) -> torch.Tensor:
        """SpCL clusters the memory's own instance features: no extraction."""
        return self.target_features

    def set_epoch_labels(self, epoch: int, features: torch.Tensor, labels: np.ndarray) -> None:
        self.set_pseudo_labels(labels)

    @classmethod
    def state_target_labels(cls, state: dict[str, Any]) -> np.ndarray:
        return state["labels"][cls.state_source_classes(state):].numpy()

    @classmethod
    def state_target_features(cls, state: dict[str, Any]) -> np.ndarray | None:
        return state["features"][cls.state_source_classes(state):].float().numpy()

    # ---------------------------------------------------------------------------------- layout
    @property
    def num_target(self) -> int:
        """Number of target instance slots."""
        return self.num_slots - self.num_source_classes

    @property
    def target_features(self) -> torch.Tensor:
        """The target instance features, in target-sample order (a view: num_target x d); the
        input of the pseudo-labelling step."""
        return self.features[self.num_source_classes :]

    @property
    def target_labels(self) -> torch.Tensor:
        """Target pseudo labels as given to ``set_pseudo_labels`` (-1: no class)."""
        labels = self.labels[self.num_source_classes :]
        return torch.where(labels >= 0, labels - self.num_source_classes, labels)

    def target_slots(self, target_indices: ArrayLike) -> torch.Tensor:
        """Memory slots of target samples with these indices in the sorted target training list."""
        index = torch.as_tensor(target_indices, dtype=torch.long, device=self.labels.device)
        return index + self.num_source_classes

    # ------------------------------------------------------------------------------- contents
    @torch.no_grad()
    def init_features(self, features: torch.Tensor) -> None:
        """Set every slot (num_slots x d), L2-normalised."""
        self._check_rows(features, self.num_slots, "init_features")
        self.features.copy_(F.normalize(features.to(self.features.device, torch.float32), dim=1))

    @torch.no_grad()
    def init_target(self, features: torch.Tensor) -> None:
        """Set the target instance slots (num_target x d, sorted training-list order),
        L2-normalised."""
        self._check_rows(features, self.num_target, "init_target")
        target = self.features[self.num_source_classes :]
        for a in range(0, self.num_target, _SLOT_BLOCK):  # a block at a time: no float32 copy of 10^6 rows
            block = features[a : a + _SLOT_BLOCK].to(self.features.device, torch.float32)
            target[a : a + _SLOT_BLOCK] = F.normalize(block, dim=1).to(self.features.dtype)

    @torch.no_grad()
    def set_labels(self, labels: ArrayLike) -> None:
        """Set the whole slot -> class table (num_slots; -1 = the slot belongs to no class)."""
        labels = torch.as_tensor(labels, dtype=torch.long, device=self.labels.device)
        if labels.shape != self.labels.shape:
            raise ValueError(
                f"labels must have shape {tuple(self.labels.shape)}, got {tuple(labels.shape)}"
            )
        if (labels < -1).any():
            raise ValueError("labels must be >= -1 (-1: slot belongs to no class)")
        self.labels.copy_(labels)

    @torch.no_grad()
    def set_pseudo_labels(self, pseudo_labels: ArrayLike) -> None:
        """Set the target classes from pseudo labels (one per target image, classes from 0: the
        clusters, then one per un-clustered instance, as ``spcl.pseudo_labels.generate`` returns
        them). They are placed after the source classes. -1 takes a slot out of every class (the
        discard-outliers ablation); such samples must not be trained on."""
        s = self.num_source_classes
        pseudo = torch.as_tensor(pseudo_labels, dtype=torch.long, device=self.labels.device)
        if pseudo.shape != (self.num_target,):
            raise ValueError(
                f"expected {self.num_target} target pseudo labels, got shape {tuple(pseudo.shape)}"
            )
        target = torch.where(pseudo >= 0, pseudo + s, -1)
        labels = torch.cat([torch.arange(s, device=pseudo.device), target])
        self.set_labels(labels)

    # ------------------------------------------------------------------------------------ loss
    def prototypes(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Class prototypes (num_classes x d: the un-normalised mean of each class's member slots)
        and the mask of classes with at least one member."""
        labels = self.labels
        num_classes = self._num_classes()
        rows = torch.where(labels >= 0, labels, num_classes)  # row num_classes collects the -1s
        sums = torch.zeros(num_classes + 1, self.num_features, dtype=torch.float32, device=self.features.device)
        sums.index_add_(0, rows, self.features.float())
        counts = torch.bincount(rows, minlength=num_classes + 1)[:num_classes]
        means = sums[:num_classes].div_(counts.clamp(min=1)[:, None].to(sums.dtype))  # in place: slots x d is large
        return means, counts > 0

    def _num_classes(self) -> int:
        num_classes = int(self.labels.max()) + 1
        if num_classes <= 0:
            raise ValueError("no memory slot belongs to a class (all labels are -1)")
        return num_classes

    def _class_logits(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``features @ prototypes.T`` for slots held in a lower precision, without the prototypes.

        The similarity to a class prototype is the mean of the similarities to its member slots, so
        the logits are summed a block of slots at a time, each block converted to float32 on the
        way: all arithmetic is float32, and neither the prototypes nor the slots exist in float32
        (8 GiB at 10^6 x 2048). Linear in the number of slots, forward and backward.
        """
        labels = self.labels
        num_classes = self._num_classes()
        counts = torch.bincount(labels[labels >= 0], minlength=num_classes)
        logits = _BlockedClassLogits.apply(features, self.features, labels, counts.to(features.dtype), num_classes)
        return logits, counts > 0

    def loss_terms(
        self, features: torch.Tensor, indexes: torch.Tensor, batch_slots: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """The terms of ``loss``: ``source``, the mean over the source samples, and ``target``, the
        mean over the target samples of ``-log(p + eps)``, each 0 when the batch has no such sample."""
        self._check_rows(features, indexes.shape[0], "loss")
        indexes = indexes.to(self.labels.device)
        targets = self.labels[indexes]
        if (targets < 0).any():
            raise ValueError("loss() got samples whose memory slot belongs to no class (label -1)")
        if self.features.dtype == torch.float32:
            prototypes, nonempty = self.prototypes()
            logits = features.to(self.features.dtype) @ prototypes.T / self.temp
        else:
            logits, nonempty = self._class_logits(features.float())
            logits = logits / self.temp
        logits = logits.masked_fill(~nonempty, float("-inf"))
        log_p = logits.gather(1, targets[:, None]).squeeze(1) - torch.logsumexp(logits, dim=1)
        nll = -torch.log(torch.exp(log_p) + self.eps)
        return self.split_means(nll, indexes)

    # ---------------------------------------------------------------------------------- update
    @torch.no_grad()
    def update(self, features: torch.Tensor, indexes: torch.Tensor) -> None:
        """Momentum update after the optimizer step: each sample, in batch order, pulls its slot
        ``w = m*w + (1-m)*f`` and re-normalises it. A slot repeated in the batch is pulled once
        per occurrence, each pull starting from the previous result (vectorised by occurrence
        rank: all first occurrences, then all second ones, ...). With ``source_update="mean"``
        each source class of the batch is pulled once by the mean of its batch features."""
        self._check_rows(features, indexes.shape[0], "update")
        features = features.detach().to(self.features.device, torch.float32)
        indexes = indexes.to(self.labels.device)
        if self.source_update == "mean":
            features, indexes = self._merge_source(features, indexes)
        self.pull(features, indexes)

    def _merge_source(
        self, features: torch.Tensor, indexes: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Replace the source samples by one row per source class: its batch features' mean."""
        source = indexes < self.num_source_classes
        slots, inverse = torch.unique(indexes[source], return_inverse=True)
        sums = features.new_zeros(slots.shape[0], features.shape[1])
        sums.index_add_(0, inverse, features[source])
        counts = torch.bincount(inverse, minlength=slots.shape[0])
        means = sums / counts[:, None].to(sums)
        return torch.cat([means, features[~source]]), torch.cat([slots, indexes[~source]])

    def extra_repr(self) -> str:
        return (
            f"num_features={self.num_features}, num_slots={self.num_slots}, "
            f"num_source_classes={self.num_source_classes}, temp={self.temp}, "
            f"momentum={self.momentum}, source_update={self.source_update!r}, dtype={self.features.dtype}"
        )

