"""Images per BN (docs/method.md#training-loop, #published-results): BatchNorm over sub-batches, as on the
reference's 4 GPUs.

``set_images_per_bn(model, n)`` makes every BatchNorm (plain or inside a domain-specific one)
normalise consecutive sub-batches of ``n`` images separately in training, the way each of the
reference's 4 GPUs normalised its own 16 images (16 source + 16 target with DSBN). A batch of 64
on one device then behaves like 4 x 16 under DataParallel, so results do not depend on the number
of devices. It composes with ``convert_dsbn`` in either order: DSBN splits the batch into
domains, then each domain's part is split into chunks of ``n``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from spcl.models.module_swap import plain_bn_type, replace_modules

__all__ = [
    "SubBatchNorm1d",
    "SubBatchNorm2d",
    "batchnorm_buffers",
    "get_images_per_bn",
    "set_bn_groups",
    "set_images_per_bn",
]


class _SubBatchNorm(_BatchNorm):
    """BatchNorm that, in training, normalises consecutive chunks of ``images_per_bn`` samples
    separately, each with its own batch statistics (as one GPU of a DataParallel run would).

    - ``images_per_bn`` None or 0: the whole batch, exactly ``nn.BatchNorm``.
    - A batch that is not a multiple of ``n``: the last chunk is smaller (as DataParallel would
      scatter it); a batch of at most ``n`` is one chunk.
    - Running statistics: updated once per forward with the *average of the chunks' statistics*
      (mean of the chunk means, mean of the chunks' unbiased variances, every chunk weighted
      equally). DataParallel keeps only the first replica's statistics; the average has the same
      expectation and less noise. ``num_batches_tracked`` counts forward calls, as in BatchNorm.
    - Evaluation is exactly ``nn.BatchNorm`` (running statistics; sub-batching is for training).

    The chunks go through ``F.batch_norm`` one by one (a loop over the B/n chunks, never over
    samples). Folding the chunk index into the channel axis (``(k, n, C, ...) -> (n, k*C, ...)``)
    would give one kernel call but costs two transposed copies of the activations forward and two
    backward; the loop costs one ``torch.cat``. Measured on CPU (ResNet-18 training step, batch
    64 at 128x64, n = 16): both within noise of plain BN, so the simpler loop stays.
    The state dict is the one of ``nn.BatchNorm`` (no extra keys).
    """

    images_per_bn: int | None = None
    sync_group: Any = None
    """A process group whose ranks' inputs form one BatchNorm group together (``set_bn_groups``)."""

    def extra_repr(self) -> str:
        synced = ", synced across processes" if self.sync_group is not None else ""
        return f"{super().extra_repr()}, images_per_bn={self.images_per_bn}{synced}"

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        parts = self.forward_parts(input)
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def forward_parts(self, input: torch.Tensor) -> list[torch.Tensor]:
        """The output as consecutive pieces (one per sub-batch), before they are concatenated: a
        caller that concatenates several BatchNorms' outputs (DSBN) copies the activations once."""
        n = self.images_per_bn
        if self.sync_group is not None and self.training:
            self._check_input_dim(input)
            return [self._synced_forward(input)]
        if not n or not self.training or input.shape[0] <= n:
            return [super().forward(input)]
        self._check_input_dim(input)
        return self._sub_batch_forward(input, n)

    def _sub_batch_forward(self, input: torch.Tensor, n: int) -> list[torch.Tensor]:
        factor = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average, as nn.BatchNorm
                factor = 1.0 / float(self.num_batches_tracked)
        track = self.running_mean is not None and self.running_var is not None

        chunks = input.split(n)
        if track:
            # momentum 1 into zeroed rows: F.batch_norm writes each chunk's own statistics there
            means = self.running_mean.new_zeros(len(chunks), self.num_features)
            variances = self.running_var.new_zeros(len(chunks), self.num_features)
        outputs = []
        for i, chunk in enumerate(chunks):
            stats = (means[i], variances[i]) if track else (None, None)
            outputs.append(F.batch_norm(chunk, *stats, self.weight, self.bias, True, 1.0, self.eps))
        if track:
            with torch.no_grad():
                self.running_mean.lerp_(means.mean(0), factor)
                self.running_var.lerp_(variances.mean(0), factor)
        return outputs

    def _synced_forward(self, input: torch.Tensor) -> torch.Tensor:
        """Batch statistics over the inputs of all ranks of ``sync_group`` (this rank's input is
        its part of one group), differentiable through the collectives like ``nn.SyncBatchNorm``,
        which has no CPU kernels; computed in float32 whatever the autocast dtype."""
        from torch.distributed.nn.functional import all_reduce

        factor = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                factor = 1.0 / float(self.num_batches_tracked)
        x = input.float()
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        local_count = x.new_tensor([x.numel() / x.shape[1]])
        sums = all_reduce(torch.cat([x.sum(dims), local_count]), group=self.sync_group)
        count = sums[-1]
        mean = sums[:-1] / count
        centred = x - mean.view(shape)
        var = all_reduce((centred * centred).sum(dims), group=self.sync_group) / count
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.weight is not None:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        if self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                self.running_mean.lerp_(mean.detach(), factor)
                self.running_var.lerp_(var.detach() * count / (count - 1).clamp(min=1), factor)
        return out.to(input.dtype)


class SubBatchNorm1d(_SubBatchNorm, nn.BatchNorm1d):
    """``nn.BatchNorm1d`` normalising sub-batches of ``images_per_bn`` separately in training."""


class SubBatchNorm2d(_SubBatchNorm, nn.BatchNorm2d):
    """``nn.BatchNorm2d`` normalising sub-batches of ``images_per_bn`` separately in training."""


_SUB_BATCH_CLASS: dict[type, type] = {
    nn.BatchNorm1d: SubBatchNorm1d,
    nn.BatchNorm2d: SubBatchNorm2d,
}


def _swap_class(bn: _BatchNorm, cls: type) -> _BatchNorm:
    """A module of class ``cls`` sharing ``bn``'s Parameter and buffer objects.

    Sharing (rather than copying) keeps an optimizer built before the swap valid.
    """
    new = cls(
        bn.num_features,
        eps=bn.eps,
        momentum=bn.momentum,
        affine=bn.affine,
        track_running_stats=bn.track_running_stats,
        device="meta",
    )
    for name, param in bn._parameters.items():
        new._parameters[name] = param
    for name, buf in bn._buffers.items():
        new._buffers[name] = buf
    new.train(bn.training)
    return new


def set_images_per_bn(model: nn.Module, images_per_bn: int | None) -> nn.Module:
    """Make every BatchNorm of ``model`` normalise sub-batches of ``images_per_bn`` in training.

    ``images_per_bn`` None or 0 restores plain ``nn.BatchNorm`` modules (whole-batch statistics).
    Works in place on submodules (parameters and buffers are shared, so an existing optimizer stays
    valid) and returns the model (a new object only when ``model`` itself is a BatchNorm). Composes
    with ``convert_dsbn`` in either order. See ``_SubBatchNorm`` for the running-statistics rule.
    """
    if images_per_bn is not None and images_per_bn < 0:
        raise ValueError(f"images_per_bn must be >= 0 or None, got {images_per_bn}")
    n = images_per_bn or None

    def swap(m: nn.Module) -> nn.Module | None:
        plain = plain_bn_type(m) if isinstance(m, _BatchNorm) else None
        if plain is None:
            return None
        if n is None:
            return _swap_class(m, plain) if isinstance(m, _SubBatchNorm) else m
        new = m if isinstance(m, _SubBatchNorm) else _swap_class(m, _SUB_BATCH_CLASS[plain])
        new.images_per_bn = n
        return new

    return replace_modules(model, swap)


def set_bn_groups(model: nn.Module, ranks_per_group: int, dist: Any) -> nn.Module:
    """Let ``ranks_per_group`` consecutive ranks (a ``spcl.utils.Distributed``) normalise their
    images together in every BatchNorm of ``model`` during training.

    With K processes each holding ``B / K`` images of a domain, a group of ``images_per_bn`` images
    spans ``images_per_bn / (B / K)`` ranks (all K for whole-batch statistics). Every rank must call
    this (it creates the process groups). 1 leaves the BatchNorms as they are.
    """
    if ranks_per_group <= 1:
        return model
    if dist.world_size % ranks_per_group:
        raise ValueError(f"{dist.world_size} processes do not split into BatchNorm groups of {ranks_per_group}")
    import torch.distributed

    group, _ = torch.distributed.new_subgroups(ranks_per_group)

    def swap(m: nn.Module) -> nn.Module | None:
        plain = plain_bn_type(m) if isinstance(m, _BatchNorm) else None
        if plain is None:
            return None
        new = m if isinstance(m, _SubBatchNorm) else _swap_class(m, _SUB_BATCH_CLASS[plain])
        new.sync_group = group
        return new

    return replace_modules(model, swap)


def batchnorm_buffers(model: nn.Module) -> list[torch.Tensor]:
    """The running means and variances of every BatchNorm of ``model`` (what the ranks average)."""
    return [
        buf
        for m in model.modules()
        if isinstance(m, _BatchNorm)
        for buf in (m.running_mean, m.running_var)
        if buf is not None
    ]


def get_images_per_bn(model: nn.Module) -> int | None:
    """The images-per-BN setting of ``model`` (None: whole batch); error if its BNs disagree."""
    values = {
        m.images_per_bn if isinstance(m, _SubBatchNorm) else None
        for m in model.modules()
        if isinstance(m, _BatchNorm)
    }
    if len(values) > 1:
        raise ValueError(f"BatchNorm layers have different images_per_bn settings: {values}")
    return values.pop() if values else None
