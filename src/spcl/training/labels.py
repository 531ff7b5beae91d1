"""The target labels of each epoch (docs/method.md#pseudo-labels, step 4): the stage of the loop that gives every
target memory slot its class before the epoch's training.

Two kinds, one interface (``labeler(features) -> TargetLabels``, plus ``state_dict`` for resume):

- ``SelfPacedLabels``: pseudo labels of the features the method clusters (SpCL: the memory's
  instance features; Cluster Contrast and its successors: freshly extracted ones), with the
  settings the method asks for (``SlotMemory.pseudo_settings``): SpCL's self-paced criterion with
  the independence threshold alpha fixed at the first epoch that has a real cluster, or DBSCAN's
  clusters as they come; with ``discard_outliers`` the un-clustered samples leave training;
- ``GroundTruthLabels``: the target's true identities (the oracle run).

Source-only runs have no target slots and no labeler.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from spcl.config import Config, PseudoLabelConfig
from spcl.data import Dataset
from spcl.evaluation import pseudo_label_quality
from spcl.pseudo_labels import generate_with

__all__ = ["GroundTruthLabels", "SelfPacedLabels", "TargetLabels", "target_labeler"]


@dataclass(frozen=True)
class TargetLabels:
    """The class of every target sample for one epoch (-1: out of training) and what is logged of it."""

    labels: np.ndarray
    num_clusters: int
    num_outliers: int
    alpha: float | None = None
    quality: dict[str, float] = field(default_factory=dict)
    """Pairwise precision / recall / NMI against the true identities, when they are known."""
    search: dict[str, float] = field(default_factory=dict)
    """What the approximate neighbour search measured of itself (``knn_recall``, ``knn_probe``,
    ``knn_exact_fallback``), when it ran."""
    search_note: str = ""
    """Its one-line account for the log."""


class SelfPacedLabels:
    """Pseudo labels (docs/method.md#pseudo-labels) of the target features a method clusters each epoch."""

    def __init__(
        self, settings: PseudoLabelConfig, device: torch.device, truth: np.ndarray | None = None,
        show_progress: bool = False,
    ) -> None:
        self.settings = settings
        self.device = device
        self.truth = truth
        self.show_progress = show_progress
        self.alpha: float | None = None

    def __call__(self, features: torch.Tensor) -> TargetLabels:
        result = generate_with(features, self.settings, self.alpha, device=self.device, show_progress=self.show_progress)
        if result.alpha_computed:
            self.alpha = float(result.alpha)  # fixed at the first epoch that has a real cluster
        labels = np.asarray(result.labels, dtype=np.int64)
        quality = pseudo_label_quality(labels, self.truth) if self.truth is not None else {}
        if self.settings.discard_outliers:
            # the classic pseudo-label baseline: un-clustered samples leave the memory's classes and
            # the sampler (both skip label -1)
            labels = np.where(np.bincount(labels)[labels] == 1, -1, labels)
        return TargetLabels(
            labels, result.num_clusters, result.num_outliers, self.alpha, quality, dict(result.search), result.search_note
        )

    def state_dict(self) -> dict[str, Any]:
        return {"alpha": self.alpha}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.alpha = state["alpha"]


class GroundTruthLabels:
    """The target's true identities as its classes: the oracle's upper bound."""

    def __init__(self, target: Dataset) -> None:
        labels = np.array([pid for _, pid, _ in target.train], dtype=np.int64)
        if (labels < 0).any():
            raise ValueError("oracle mode needs the target's training identities, but some are unlabelled")
        self.labels = labels

    def __call__(self, features: torch.Tensor) -> TargetLabels:
        return TargetLabels(self.labels, num_clusters=int(self.labels.max()) + 1, num_outliers=0)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def target_labeler(
    config: Config, target: Dataset, device: torch.device, show_progress: bool = False,
    settings: PseudoLabelConfig | None = None,
) -> SelfPacedLabels | GroundTruthLabels | None:
    """The label stage a run's mode calls for (None: the target is not trained on); ``settings`` are
    the clustering settings the method asks for (default: ``config.pseudo`` as it is)."""
    if config.mode == "oracle":
        return GroundTruthLabels(target)
    if config.mode in ("uda", "usl"):
        truth = np.array([pid for _, pid, _ in target.train])
        known = bool((truth >= 0).all()) and target.num_train_pids > 1
        return SelfPacedLabels(settings or config.pseudo, device, truth if known else None, show_progress)
    return None
