"""Camera-aware proxies (CAP: Wang et al., AAAI 2021) on top of the cluster memory.

A camera sees a person under its own light and angle, so one centroid per cluster mixes camera
styles. ``CameraAwareMemory`` splits every target cluster into one *proxy* per camera it appears
in: the proxy of (cluster k, camera c) starts each epoch as the normalised mean of k's images from
c. A target sample i (cluster y_i, camera c_i, own proxy p_i) is trained with, summed over the
cameras c present in the batch, each camera's mean over its samples of

- the intra-camera term: cross-entropy of the softmax over the proxies of camera c only, p_i the
  positive: ``-log softmax_{p in P(c)}(<f, w_p> / tau)[p_i]``;
- ``inter_weight`` (0.5) times the inter-camera term, from epoch ``inter_from`` on (CAP: 5, once the
  clusters are worth associating across cameras): a softmax over the positives (every proxy of
  cluster y_i, whatever its camera) and the ``negatives`` (50) proxies of other clusters most
  similar to f (all of them when there are fewer), with the target spread evenly over the positives:
  ``-1/|pos| sum_{p in pos} log softmax_{pos + hardest negatives}(<f, w_p> / tau)[p]``.

The temperature is 0.07 and the momentum 0.2 in CAP's scripts. After each step every sample pulls
its own proxy in batch order (``w = m*w + (1-m)*f``, re-normalised). DBSCAN's outliers sit the
epoch out. The sampler draws proxies, not clusters (``sampling_labels``), ``num_instances`` images
each: the batches are camera-balanced, as CAP's proxy-uniform sampler makes them.

In UDA the source class centroids come first, as in the other memories: a source sample's term is
the cross-entropy over every slot (source centroids and target proxies), and the loss is the
source mean plus the target terms. This is CAP's published loss (``memory.kind cap``); its
learning-rate warm-up is ``optim.warmup_epochs`` (the ``usl_*_cap`` presets set it). The proxies
themselves (``ProxyMemory``) are shared with O2CAP (``spcl.memory.o2cap``). The terms are logged
as ``intra`` and ``inter``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from spcl.memory.base import ArrayLike, MemoryData, SlotMemory
from spcl.memory.registry import register_memory

__all__ = ["CameraAwareMemory", "ProxyMemory"]


class ProxyMemory(SlotMemory):
    """Source class centroids, then one proxy per (target cluster, camera), set each epoch from
    fresh features; every sample pulls its own slot after each step. The losses are the subclasses'.

    Buffers (saved by ``state_dict``): ``features`` (slots x d), ``assignment`` (each target
    sample's proxy slot, -1 = out of training), ``proxy_cluster`` and ``proxy_camera`` (per proxy),
    ``target_cameras``.
    """

    assignment: torch.Tensor
    proxy_cluster: torch.Tensor
    proxy_camera: torch.Tensor
    target_cameras: torch.Tensor

    def __init__(
        self, num_features: int, target_cameras: ArrayLike, temp: float, momentum: float, num_source_classes: int
    ) -> None:
        super().__init__(num_features, num_source_classes, temp, momentum, num_source_classes)
        cameras = torch.as_tensor(np.asarray(target_cameras), dtype=torch.long)
        self.register_buffer("target_cameras", cameras.clone())
        self.register_buffer("assignment", torch.full_like(cameras, -1))
        self.register_buffer("proxy_cluster", torch.zeros(0, dtype=torch.long))
        self.register_buffer("proxy_camera", torch.zeros(0, dtype=torch.long))

    @classmethod
    def build(cls, data: MemoryData, **arguments: Any) -> ProxyMemory:
        cameras = data.camera_codes(cls.kind) if data.num_target else np.zeros(0, dtype=np.int64)
        return cls(data.num_features, cameras, num_source_classes=data.num_source_classes, **arguments)

    @classmethod
    def state_target_labels(cls, state: dict[str, Any]) -> np.ndarray:
        """The cluster of every target sample (not its proxy): a report colours clusters."""
        source = cls.state_source_classes(state)
        assignment, clusters = state["assignment"].numpy(), state["proxy_cluster"].numpy()
        if not len(clusters):
            return np.full_like(assignment, -1)
        return np.where(assignment >= 0, clusters[np.clip(assignment - source, 0, None)], -1)

    # ---------------------------------------------------------------------------------- layout
    @property
    def num_target(self) -> int:
        return self.assignment.shape[0]

    @property
    def num_proxies(self) -> int:
        return self.num_slots - self.num_source_classes

    @property
    def num_clusters(self) -> int:
        return int(self.proxy_cluster.max()) + 1 if self.proxy_cluster.numel() else 0

    @property
    def target_labels(self) -> torch.Tensor:
        """Each target sample's cluster (0 .. C-1) or -1 (out of training this epoch)."""
        a = self.assignment
        cluster = self.proxy_cluster[(a - self.num_source_classes).clamp(min=0)] if self.num_proxies else a
        return torch.where(a >= 0, cluster, -1)

    @property
    def sampling_labels(self) -> torch.Tensor:
        """Each target sample's proxy (0 .. P-1) or -1: the classes the sampler draws from."""
        a = self.assignment
        return torch.where(a >= 0, a - self.num_source_classes, -1)

    def target_slots(self, target_indices: ArrayLike) -> torch.Tensor:
        index = torch.as_tensor(target_indices, dtype=torch.long, device=self.assignment.device)
        return self.assignment[index]

    # ------------------------------------------------------------------------------- contents
    @torch.no_grad()
    def set_clusters(self, features: torch.Tensor, labels: ArrayLike) -> None:
        """The epoch's proxies from the target training features (num_target x d) and their cluster
        labels (-1: outlier): one proxy per (cluster, camera), ordered by cluster then camera, each
        the normalised mean of its images."""
        labels = self._epoch_labels(features, labels)
        member = labels >= 0
        _, cluster = torch.unique(labels[member], return_inverse=True)
        cameras = self.target_cameras[member]
        span = int(cameras.max()) + 1
        pairs, proxy = torch.unique(cluster * span + cameras, return_inverse=True)
        sums = self.features.new_zeros(pairs.numel(), self.num_features)
        sums.index_add_(0, proxy, features.to(self.features)[member])
        s = self.num_source_classes
        self.features = torch.cat([self.features[:s], F.normalize(sums, dim=1)])
        self.proxy_cluster = pairs // span
        self.proxy_camera = pairs % span
        assignment = torch.full_like(labels, -1)
        assignment[member] = proxy + s
        self.assignment.copy_(assignment)

    # ------------------------------------------------------------------------------------ loss
    def _split(
        self, features: torch.Tensor, slots: torch.Tensor, batch_slots: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The source samples' mean cross-entropy over every slot (0 without source samples), the
        target samples' logits over the proxies (targets x P), their proxies (0 .. P-1) and the weight
        of each target sample in a sum over the batch's cameras of per-camera means (CAP and O2CAP's
        reduction).

        With several processes the per-camera counts are the global batch's (``batch_slots``) and the
        weights are scaled so that the mean over the ranks is one process's loss."""
        self._check_rows(features, slots.shape[0], "loss")
        slots = slots.to(self.features.device)
        batch_slots = slots if batch_slots is None else batch_slots.to(self.features.device)
        self._check_slots(slots)
        s = self.num_source_classes
        logits = features.to(self.features.dtype) @ self.features.T / self.temp
        is_source = slots < s
        source = F.cross_entropy(logits[is_source], slots[is_source]) if bool(is_source.any()) else logits.new_zeros(())
        proxy = slots[~is_source] - s
        batch_target = batch_slots[batch_slots >= s] - s
        if proxy.numel():
            counts = torch.bincount(self.proxy_camera[batch_target], minlength=int(self.proxy_camera.max()) + 1)
            weight = (batch_slots.numel() / slots.numel()) / counts[self.proxy_camera[proxy]].to(logits.dtype)
        else:
            weight = logits.new_zeros(0)
        return source, logits[~is_source, s:], proxy, weight

    # ---------------------------------------------------------------------------------- update
    @torch.no_grad()
    def update(self, features: torch.Tensor, slots: torch.Tensor) -> None:
        """Every sample pulls its own slot (source centroid or proxy) in batch order."""
        self._check_rows(features, slots.shape[0], "update")
        self.pull(features.detach().to(self.features), slots.to(self.features.device))

    # ------------------------------------------------------------------------------ plumbing
    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # the epoch's number of proxies is the checkpoint's: take its sizes before loading
        self._take_sizes(state_dict, prefix, ("features", "proxy_cluster", "proxy_camera"))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


@register_memory("cap")
class CameraAwareMemory(ProxyMemory):
    """Camera-aware proxies with CAP's loss (see the module docstring).

    Args:
        num_features: feature dimension d.
        target_cameras: the camera code of every target training sample (sorted training-list order).
        temp: softmax temperature (CAP: 0.07).
        momentum: momentum of the proxies' update (CAP: 0.2).
        num_source_classes: number of source classes (0 for USL).
        negatives: hardest other-cluster proxies in the inter-camera term (50).
        inter_weight: weight of the inter-camera term (0.5).
        inter_from: the first epoch (counted from 0) with the inter-camera term (CAP: 5).

    ``inter_camera`` (whether the inter-camera term is on) is set by ``set_epoch_labels`` and
    travels with the state as extra state.
    """

    title = "camera-aware proxies (CAP: one proxy per cluster and camera)"
    legacy_kinds = ("camera",)
    settings: ClassVar[dict[str, str]] = {
        "temp": "temp", "momentum": "momentum", "negatives": "negatives", "inter_camera_weight": "inter_weight",
        "inter_camera_from": "inter_from",
    }
    target_loss_names = ("intra", "inter")

    def __init__(
        self,
        num_features: int,
        target_cameras: ArrayLike,
        temp: float = 0.07,
        momentum: float = 0.2,
        *,
        num_source_classes: int = 0,
        negatives: int = 50,
        inter_weight: float = 0.5,
        inter_from: int = 5,
    ) -> None:
        super().__init__(num_features, target_cameras, temp, momentum, num_source_classes)
        if negatives < 1 or inter_weight < 0 or inter_from < 0:
            raise ValueError(
                f"need negatives >= 1, inter_weight >= 0 and inter_from >= 0, got {negatives}, {inter_weight}, {inter_from}"
            )
        self.negatives, self.inter_weight, self.inter_from = int(negatives), float(inter_weight), int(inter_from)
        self.inter_camera = False

    def set_epoch_labels(self, epoch: int, features: torch.Tensor, labels: np.ndarray) -> None:
        self.inter_camera = epoch >= self.inter_from
        self.set_clusters(features, labels)

    # ------------------------------------------------------------------------------------ loss
    def loss_terms(
        self, features: torch.Tensor, slots: torch.Tensor, batch_slots: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """``source``: the source samples' mean cross-entropy over every slot; ``intra`` and
        ``inter``: CAP's target terms (the module docstring), each a sum over the batch's cameras of
        per-camera means, ``inter`` weighted and 0 before ``inter_from``."""
        source, target_logits, proxy, weight = self._split(features, slots, batch_slots)
        zero = source.new_zeros(())
        if not proxy.numel():
            return self._named({"source": source, "intra": zero, "inter": zero})
        intra = (self._intra(target_logits, proxy, self.proxy_camera[proxy]) * weight).sum()
        inter = zero
        if self.inter_camera and self.inter_weight > 0:
            inter = self.inter_weight * (self._inter(target_logits, proxy) * weight).sum()
        return self._named({"source": source, "intra": intra, "inter": inter})

    def _intra(self, logits: torch.Tensor, proxy: torch.Tensor, camera: torch.Tensor) -> torch.Tensor:
        """Cross-entropy over the proxies of each sample's own camera."""
        own_camera = self.proxy_camera[None, :] == camera[:, None]
        return F.cross_entropy(logits.masked_fill(~own_camera, float("-inf")), proxy, reduction="none")

    def _inter(self, logits: torch.Tensor, proxy: torch.Tensor) -> torch.Tensor:
        """Soft cross-entropy over the cluster's proxies (positives) and the hardest other proxies."""
        positive = self.proxy_cluster[None, :] == self.proxy_cluster[proxy][:, None]
        return soft_cross_entropy(logits, positive, hardest_outside(logits.detach(), positive, self.negatives))

    # ------------------------------------------------------------------------------ plumbing
    def get_extra_state(self) -> dict[str, Any]:
        return {**super().get_extra_state(), "inter_camera": self.inter_camera}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        super().set_extra_state(state)
        self.inter_camera = bool(state.get("inter_camera", False))

    def extra_repr(self) -> str:
        return (
            f"num_features={self.num_features}, num_slots={self.num_slots}, "
            f"num_source_classes={self.num_source_classes}, num_target={self.num_target}, temp={self.temp}, "
            f"momentum={self.momentum}, negatives={self.negatives}, inter_weight={self.inter_weight}, "
            f"inter_from={self.inter_from}"
        )


def hardest_outside(scores: torch.Tensor, positive: torch.Tensor, k: int) -> torch.Tensor:
    """Per row, the ``k`` highest-scoring columns outside ``positive`` (B x P masks), as a mask; a row
    with fewer than ``k`` such columns gets all of them."""
    k = min(k, scores.shape[1])
    # where a row has fewer than k other columns, topk also returns (masked) positives: dropped here
    hardest = scores.masked_fill(positive, float("-inf")).topk(k, dim=1).indices
    return torch.zeros_like(positive).scatter_(1, hardest, True) & ~positive


def soft_cross_entropy(logits: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """Per row, ``-1/|pos| sum_{p in pos} log softmax_{pos + neg}(logits)[p]``: the target spread
    evenly over the positives, the softmax over the positives and the chosen negatives only."""
    chosen = positive | negative
    log_p = torch.log_softmax(logits.masked_fill(~chosen, float("-inf")), dim=1)
    return -(log_p.masked_fill(~positive, 0.0)).sum(1) / positive.sum(1)
