"""O2CAP: offline-online associated camera-aware proxies (Wang et al., 2022; docs/method.md#o2cap).

The proxies are CAP's (``ProxyMemory``): each epoch the target training features are extracted with
the current encoder, clustered (Jaccard + DBSCAN, no self-paced criterion; DBSCAN's outliers sit
the epoch out), and every cluster is split into one proxy per camera it appears in, the normalised
mean of its images there. The sampler draws proxies (O2CAP: 8 proxies x 4 images). A target sample
i with own proxy y_i, similarities ``s_i = M f_i`` to the proxies and logits ``z_i = s_i / tau``
(tau = 0.07) is trained with two terms, each a sum over the batch's cameras of per-camera means:

- ``offline`` (offline association): the positives are all proxies of i's cluster (its own among
  them), the negatives the ``negatives`` (50) other proxies with the highest s_i;
  ``-1/|P| sum_{p in P} log softmax_{P + N}(z_i)[p]``;
- ``online`` (online association), on selections made without gradient: the hybrid similarity
  ``h_i = w s_i + (1 - w) M m_{y_i}`` (w = ``balance`` = 0.15: instance-to-proxy plus
  proxy-to-proxy similarity); the best proxy of every camera that has proxies this epoch (the
  argmax of h_i over that camera's proxies); the ``positives`` (3) of those with the highest h_i as
  positives (as many as there are cameras, when fewer), the ``negatives`` proxies outside them with
  the highest h_i as negatives; ``-1/|Q| sum_{q in Q} log softmax_{Q + N'}(z_i)[q]``. The online
  positives ignore the pseudo labels: a look-alike proxy of another cluster can be one, and i's own
  proxy can drop out (it then usually is a negative), as in O2CAP's code.

Selection and loss use the memory as it was before the step; where fewer proxies than asked exist,
all of them are used. After the step every sample pulls its own proxy in batch order with momentum
0.2 (``w = m w + (1 - m) f``, re-normalised). O2CAP's code crashes on a camera whose images are all
outliers in an epoch (no proxy to take the argmax over) and divides by 3 when fewer cameras exist;
here such cameras are skipped and the mean runs over the positives there are.

In UDA the source class centroids come first, as in the other memories: a source sample is trained
with the cross-entropy of its class against every slot (source centroids and target proxies,
tau = 0.07) and pulls its centroid after the step; the loss is that source mean plus the two target
terms, which run over the target proxies only. O2CAP's learning-rate warm-up and milestones are
``optim.warmup_epochs`` / ``optim.milestones`` (the ``*_o2cap`` presets set them).
"""

from __future__ import annotations

from typing import ClassVar

import torch

from spcl.memory.base import ArrayLike
from spcl.memory.camera import ProxyMemory, hardest_outside, soft_cross_entropy
from spcl.memory.registry import register_memory

__all__ = ["O2CAPMemory"]


@register_memory("o2cap")
class O2CAPMemory(ProxyMemory):
    """Camera-aware proxies with O2CAP's offline and online association terms.

    Args:
        num_features: feature dimension d.
        target_cameras: the camera code of every target training sample (sorted training-list order).
        temp: softmax temperature (0.07).
        momentum: momentum of the proxies' update (0.2).
        num_source_classes: number of source classes (0 for USL).
        negatives: hard negatives of each term (50).
        positives: online positives: the best proxies of this many cameras (3).
        balance: weight w of the instance-to-proxy similarity in the online association (0.15).
    """

    title = "O2CAP (offline and online associated camera-aware proxies)"
    settings: ClassVar[dict[str, str]] = {
        "temp": "temp", "momentum": "momentum", "negatives": "negatives", "positives": "positives", "balance": "balance",
    }
    target_loss_names = ("offline", "online")

    def __init__(
        self,
        num_features: int,
        target_cameras: ArrayLike,
        temp: float = 0.07,
        momentum: float = 0.2,
        *,
        num_source_classes: int = 0,
        negatives: int = 50,
        positives: int = 3,
        balance: float = 0.15,
    ) -> None:
        super().__init__(num_features, target_cameras, temp, momentum, num_source_classes)
        if negatives < 1 or positives < 1 or not 0.0 <= balance <= 1.0:
            raise ValueError(
                f"need negatives >= 1, positives >= 1 and balance in [0, 1], got {negatives}, {positives}, {balance}"
            )
        self.negatives, self.positives, self.balance = int(negatives), int(positives), float(balance)

    def loss_terms(
        self, features: torch.Tensor, slots: torch.Tensor, batch_slots: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """``source``: the source samples' mean cross-entropy over every slot; ``offline`` and
        ``online``: O2CAP's target terms (the module docstring)."""
        source, z, proxy, weight = self._split(features, slots, batch_slots)  # z: target samples x proxies
        if not proxy.numel():
            zero = source.new_zeros(())
            return self._named({"source": source, "offline": zero, "online": zero})
        similarity = z.detach() * self.temp
        same_cluster = self.proxy_cluster[None, :] == self.proxy_cluster[proxy][:, None]
        offline = soft_cross_entropy(z, same_cluster, hardest_outside(similarity, same_cluster, self.negatives))
        hybrid, chosen = self._online_association(similarity, proxy)
        online = soft_cross_entropy(z, chosen, hardest_outside(hybrid, chosen, self.negatives))
        return self._named({"source": source, "offline": (offline * weight).sum(), "online": (online * weight).sum()})

    @torch.no_grad()
    def _online_association(self, similarity: torch.Tensor, proxy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The hybrid similarity (B x P) and the online positives (B x P mask): of each camera's best
        proxy under the hybrid similarity, the ``positives`` best."""
        proxies = self.features[self.num_source_classes :].float()
        hybrid = self.balance * similarity + (1.0 - self.balance) * (proxies[proxy] @ proxies.T)
        cameras = torch.unique(self.proxy_camera)  # only the cameras with proxies this epoch
        in_camera = self.proxy_camera[None, :] == cameras[:, None]  # C x P
        best = torch.stack([hybrid.masked_fill(~m, float("-inf")).argmax(1) for m in in_camera], dim=1)  # B x C
        top = hybrid.gather(1, best).topk(min(self.positives, cameras.numel()), dim=1).indices
        chosen = torch.zeros_like(hybrid, dtype=torch.bool).scatter_(1, best.gather(1, top), True)
        return hybrid, chosen

    def extra_repr(self) -> str:
        return (
            f"num_features={self.num_features}, num_slots={self.num_slots}, "
            f"num_source_classes={self.num_source_classes}, num_target={self.num_target}, temp={self.temp}, "
            f"momentum={self.momentum}, negatives={self.negatives}, positives={self.positives}, balance={self.balance}"
        )
