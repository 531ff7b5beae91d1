"""What every memory of this package shares: unit feature slots, source class centroids first, and
what a *method* is to the trainer.

A memory holds one L2-normalised feature per *slot*. Slots ``0 .. S-1`` are the ``S =
num_source_classes`` source class centroids (UDA; none in USL), initialised as the mean feature
of each class and pulled by their samples after every step. What the slots after them hold, and
what a target sample's slot is, depends on the method (``hybrid``: one per target instance;
``cluster``: one per cluster; ``cap`` / ``o2cap``: one per (cluster, camera)). The memory is the
single owner of the sample -> slot mapping (``source_slots``, ``target_slots``): callers never add
``num_source_classes`` by hand. It gets no gradient; the trainer calls ``update`` after the
optimizer step with the whole global batch.

A registered memory class (``spcl.memory.register_memory``) is a whole method: besides the loss and
the update it says how it is built from the config and the data (``from_config``, its
hyper-parameters' defaults being its constructor's), which features it clusters each epoch and
with which clustering settings (``clustering_features``, ``pseudo_settings``: whether outliers
train), how the epoch's labels enter it (``set_epoch_labels``), what the identity sampler draws
(``sampling_labels``) and the names of its loss terms (``loss_names``). The defaults here are those
of the memories that are set each epoch from fresh features (Cluster Contrast and its successors);
the hybrid memory overrides them.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from spcl.config import MemoryConfig, PseudoLabelConfig
from spcl.data import camera_codes

__all__ = ["ArrayLike", "Extract", "MemoryData", "SlotMemory", "occurrence_rank"]

ArrayLike = torch.Tensor | np.ndarray | list[int]
Extract = Callable[[torch.dtype], torch.Tensor]
"""Extracts the target training features with the current encoder (evaluation mode, target BNs),
in the given dtype: what a memory asks for when it needs fresh features."""


@dataclasses.dataclass(frozen=True)
class MemoryData:
    """What a memory is built from besides its settings: the encoder's width and the training data."""

    num_features: int
    num_source_classes: int
    num_target: int
    """Target training images (0 when the target is not trained on)."""
    target_cameras: Sequence[int | None] = ()
    """The camera of every target training image, in the sorted training-list order (None: unknown)."""

    def camera_codes(self, method: str) -> np.ndarray:
        """The target cameras as codes 0..C-1; a method that needs them refuses data without them."""
        cameras = list(self.target_cameras)
        missing = sum(cam is None for cam in cameras)
        if missing:
            raise ValueError(
                f"memory.kind {method} needs the camera of every target training image, but {missing} of "
                f"{len(cameras)} images have none: give cameras (the camid column of a manifest, _cN_ in "
                "Market-style names) or use a memory.kind that does not split clusters by camera"
            )
        return camera_codes(cameras)


class SlotMemory(nn.Module):
    """Unit feature slots with the source class centroids first (see the module docstring)."""

    features: torch.Tensor
    kind: ClassVar[str] = ""
    """The registered name (``memory.kind``); set by ``register_memory``."""
    title: ClassVar[str] = ""
    """What the method is called in logs and reports."""
    settings: ClassVar[dict[str, str]] = {"temp": "temp", "momentum": "momentum"}
    """The ``MemoryConfig`` fields this method reads -> its constructor's arguments. A field left
    None in the config takes the constructor's default: a method's hyper-parameters are written
    once, in its signature, and presets override them."""
    legacy_kinds: ClassVar[tuple[str, ...]] = ()
    """Kinds that checkpoints of earlier versions recorded for this memory."""
    target_loss_names: ClassVar[tuple[str, ...]] = ("target",)
    """The names of the target samples' loss terms (``loss_names`` adds ``source`` in UDA)."""

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

    # ------------------------------------------------------------------------------ the method
    @classmethod
    def from_config(cls, config: MemoryConfig, data: MemoryData) -> SlotMemory:
        """The memory a run's ``memory`` settings describe, for this data (no contents yet)."""
        return cls.build(data, **cls.arguments(config))

    @classmethod
    def build(cls, data: MemoryData, **arguments: Any) -> SlotMemory:
        """The memory for ``data`` with these constructor ``arguments`` (those the config sets)."""
        raise NotImplementedError

    @classmethod
    def arguments(cls, config: MemoryConfig) -> dict[str, Any]:
        """The constructor arguments the config sets (its None fields are left to the defaults)."""
        return {arg: getattr(config, field) for field, arg in cls.settings.items() if getattr(config, field) is not None}

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """The ``MemoryConfig`` value of each setting this method reads, when the config leaves it None."""
        defaults = {}
        for field, arg in cls.settings.items():
            # the nearest constructor that names the argument (a subclass may wrap it in *args, **kwargs)
            for klass in cls.__mro__:
                parameter = inspect.signature(klass.__init__).parameters.get(arg) if "__init__" in vars(klass) else None
                if parameter is not None and parameter.default is not inspect.Parameter.empty:
                    defaults[field] = parameter.default
                    break
            else:
                raise TypeError(f"{cls.__qualname__}: no constructor gives argument {arg!r} (memory.{field}) a default")
        return defaults

    @classmethod
    def resolve(cls, config: MemoryConfig) -> MemoryConfig:
        """``config`` as this method runs it: its settings' defaults filled in, the settings it does not
        read set to None (so the saved config shows what the run used, and nothing else)."""
        defaults = cls.defaults()
        values = {}
        for f in dataclasses.fields(config):
            if f.name == "kind":
                continue
            value = getattr(config, f.name)
            values[f.name] = (defaults[f.name] if value is None else value) if f.name in defaults else None
        return dataclasses.replace(config, **values)

    @classmethod
    def unread_settings(cls, config: MemoryConfig) -> list[str]:
        """The ``memory.*`` fields the config sets that this method does not read (to tell the user)."""
        return [f"memory.{f.name}" for f in dataclasses.fields(config)
                if f.name != "kind" and f.name not in cls.settings and getattr(config, f.name) is not None]

    @classmethod
    def pseudo_settings(cls, pseudo: PseudoLabelConfig) -> PseudoLabelConfig:
        """How the epoch's features are clustered: here DBSCAN's clusters as they come (no self-paced
        criterion), and the outliers sit the epoch out (out of the loss and the sampler)."""
        return dataclasses.replace(pseudo, self_paced=False, discard_outliers=True)

    def initial_target(self, extract: Extract) -> None:
        """Fill the target slots before the first epoch (docs/method.md#initialisation); here they come with each
        epoch's clusters instead."""

    def clustering_features(self, extract: Extract) -> torch.Tensor:
        """The target features the epoch's clustering runs on: here freshly extracted ones."""
        return extract(torch.float32)

    def set_epoch_labels(self, epoch: int, features: torch.Tensor, labels: np.ndarray) -> None:
        """Take the labels of epoch ``epoch`` (counted from 0) of the target samples (-1: out of
        training), computed on ``features``: here one slot per class, set from ``features``."""
        self.set_clusters(features, labels)

    def set_clusters(self, features: torch.Tensor, labels: ArrayLike) -> None:
        raise NotImplementedError

    @property
    def loss_names(self) -> tuple[str, ...]:
        """The names of the terms ``loss_terms`` returns (each logged per epoch as ``loss_<name>``):
        the source samples' term when there is a source, the target terms when a target trains."""
        has_target = self.num_target > 0 or self.num_slots > self.num_source_classes
        return (("source",) if self.num_source_classes else ()) + (self.target_loss_names if has_target else ())

    @property
    def num_target(self) -> int:
        raise NotImplementedError

    @classmethod
    def state_target_labels(cls, state: dict[str, Any]) -> np.ndarray:
        """Each target sample's class (-1: none) as a checkpoint's memory state holds it (for reports)."""
        raise NotImplementedError

    @classmethod
    def state_target_features(cls, state: dict[str, Any]) -> np.ndarray | None:
        """The target instance features a checkpoint's memory holds, or None when it holds none."""
        return None

    @staticmethod
    def state_source_classes(state: dict[str, Any]) -> int:
        """The number of source class slots of a checkpoint's memory state."""
        return int(state.get("_extra_state", {}).get("num_source_classes", 0))

    # ---------------------------------------------------------------------------------- layout
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
        class ids: per-class mean, L2-normalised (docs/method.md#initialisation). Every class needs an image."""
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

    def split_means(self, nll: torch.Tensor, slots: torch.Tensor) -> dict[str, torch.Tensor]:
        """docs/method.md#hybrid-memory's two terms: ``source``, the mean over the source samples (slot < S), and
        ``target``, the mean over the target samples, each 0 when the batch has no such sample (a
        term of a domain the memory has no slots for is left out)."""
        is_source = slots < self.num_source_classes
        return self._named({
            "source": (nll * is_source).sum() / is_source.sum().clamp(min=1),
            "target": (nll * ~is_source).sum() / (~is_source).sum().clamp(min=1),
        })

    def _named(self, terms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The terms this memory's ``loss_names`` list, in their order (a domain without slots has none)."""
        return {name: terms[name] for name in self.loss_names}

    def loss(self, features: torch.Tensor, slots: torch.Tensor, batch_slots: torch.Tensor | None = None) -> torch.Tensor:
        """The loss of L2-normalised ``features`` (B x d) whose memory slots are ``slots`` (B): the
        sum of the named terms. Gradient flows to ``features`` only."""
        return sum(self.loss_terms(features, slots, batch_slots).values(), features.new_zeros(()))

    def loss_terms(
        self, features: torch.Tensor, slots: torch.Tensor, batch_slots: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """The loss's terms by name (``loss_names``: each 0 when the batch has no sample it covers).

        ``batch_slots``: with several processes, the slots of the whole global batch (this rank's
        ``slots`` being one of its equal slices), for losses whose terms depend on the batch's
        composition (per-camera means); the others ignore it."""
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
            raise ValueError(
                "no target sample belongs to a cluster (DBSCAN put every target image out of the clusters), so "
                f"the {self.kind or 'cluster'} memory has nothing to train on: raise pseudo.eps or lower "
                "pseudo.min_samples"
            )
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
        if kind != self.kind and kind not in self.legacy_kinds:
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
