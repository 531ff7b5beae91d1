"""Domain-specific BatchNorm and images-per-BN (SPEC sections 5, 7 and 10).

Two module swaps, each a short recursive function that works on any model:

- ``convert_dsbn(model, num_domains)`` gives every BatchNorm one branch per domain (source first,
  then target). In training the batch is cut into ``num_domains`` equal consecutive parts, each
  normalised by its own branch; in evaluation one branch (default: the last, the target) serves the
  whole batch. ``convert_bn`` is the inverse used for deployment.
- ``set_images_per_bn(model, n)`` makes every BatchNorm (plain or inside a domain-specific one)
  normalise consecutive sub-batches of ``n`` images separately in training, the way each of the
  reference's 4 GPUs normalised its own 16 images (16 source + 16 target with DSBN). A batch of 64
  on one device then behaves like 4 x 16 under DataParallel, so results do not depend on the number
  of devices.

The two compose in either order: DSBN splits the batch into domains, then each domain's part is
split into chunks of ``n``.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = [
    "DomainSpecificBatchNorm",
    "SubBatchNorm1d",
    "SubBatchNorm2d",
    "SubBatchNorm3d",
    "convert_bn",
    "convert_dsbn",
    "get_images_per_bn",
    "num_bn_domains",
    "set_domain",
    "set_images_per_bn",
    "use_domain",
]


# --------------------------------------------------------------------------------------------------
# Images per BN
# --------------------------------------------------------------------------------------------------


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

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, images_per_bn={self.images_per_bn}"

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        n = self.images_per_bn
        if not n or not self.training or input.shape[0] <= n:
            return super().forward(input)
        self._check_input_dim(input)
        return self._sub_batch_forward(input, n)

    def _sub_batch_forward(self, input: torch.Tensor, n: int) -> torch.Tensor:
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
        out = torch.cat(outputs)
        if track:
            with torch.no_grad():
                self.running_mean.lerp_(means.mean(0), factor)
                self.running_var.lerp_(variances.mean(0), factor)
        return out

class SubBatchNorm1d(_SubBatchNorm, nn.BatchNorm1d):
    """``nn.BatchNorm1d`` normalising sub-batches of ``images_per_bn`` separately in training."""


class SubBatchNorm2d(_SubBatchNorm, nn.BatchNorm2d):
    """``nn.BatchNorm2d`` normalising sub-batches of ``images_per_bn`` separately in training."""


class SubBatchNorm3d(_SubBatchNorm, nn.BatchNorm3d):
    """``nn.BatchNorm3d`` normalising sub-batches of ``images_per_bn`` separately in training."""


_SUB_BATCH_CLASS: dict[type, type] = {
    nn.BatchNorm1d: SubBatchNorm1d,
    nn.BatchNorm2d: SubBatchNorm2d,
    nn.BatchNorm3d: SubBatchNorm3d,
}
_PLAIN_CLASS: dict[type, type] = {sub: plain for plain, sub in _SUB_BATCH_CLASS.items()}


def _plain_bn_type(bn: _BatchNorm) -> type | None:
    """The torch BatchNorm class a BN module is (or derives from), None for other norms."""
    for plain in _SUB_BATCH_CLASS:
        if isinstance(bn, plain):
            return plain
    return None


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


def _replace(module: nn.Module, fn) -> nn.Module:
    """Recursively replace submodules: ``fn(m)`` returns a replacement or None to recurse into m."""
    new = fn(module)
    if new is not None:
        return new
    for name, child in module.named_children():
        replaced = _replace(child, fn)
        if replaced is not child:
            setattr(module, name, replaced)
    return module


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
        plain = _plain_bn_type(m) if isinstance(m, _BatchNorm) else None
        if plain is None:
            return None
        if n is None:
            return _swap_class(m, plain) if isinstance(m, _SubBatchNorm) else m
        new = m if isinstance(m, _SubBatchNorm) else _swap_class(m, _SUB_BATCH_CLASS[plain])
        new.images_per_bn = n
        return new

    return _replace(model, swap)


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


# --------------------------------------------------------------------------------------------------
# Domain-specific BN
# --------------------------------------------------------------------------------------------------


class DomainSpecificBatchNorm(nn.Module):
    """One BatchNorm branch per domain (SPEC section 5).

    Training: the batch is cut into ``num_domains`` equal consecutive parts (domain 0 first; in
    SpCL source then target), each normalised by its own branch; a batch that does not split
    evenly is an error. Evaluation: branch ``self.domain`` (default -1, the last = target) for the
    whole batch; change it with ``set_domain`` / ``use_domain``.
    """

    def __init__(
        self, bn: _BatchNorm, num_domains: int = 2, keep_frozen_bias: bool = False
    ) -> None:
        super().__init__()
        if num_domains < 1:
            raise ValueError(f"num_domains must be >= 1, got {num_domains}")
        self.branches = nn.ModuleList(copy.deepcopy(bn) for _ in range(num_domains))
        if not keep_frozen_bias:
            # Reference quirk (SPEC section 5): the reference builds fresh BNs and copies the values
            # in, so every affine parameter of the copies is trainable, even a frozen neck bias.
            for branch in self.branches:
                for param in branch.parameters(recurse=False):
                    param.requires_grad_(True)
        self.domain = -1

    @property
    def num_domains(self) -> int:
        return len(self.branches)

    def extra_repr(self) -> str:
        return f"num_domains={self.num_domains}, domain={self.domain}"

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self.branches[self.domain](input)
        batch, parts = input.shape[0], self.num_domains
        if batch % parts:
            raise ValueError(
                f"domain-specific BN got a training batch of {batch}, which does not split into "
                f"{parts} equal domain parts: give each domain the same number of images "
                "(source first, then target)"
            )
        chunks = input.split(batch // parts)
        return torch.cat([branch(x) for branch, x in zip(self.branches, chunks)])


def convert_dsbn(
    model: nn.Module, num_domains: int = 2, keep_frozen_bias: bool = False
) -> nn.Module:
    """Replace every BatchNorm1d/2d/3d of ``model`` by a ``DomainSpecificBatchNorm``.

    Each branch starts as a copy of the original (weights, bias, running statistics, images per
    BN). ``keep_frozen_bias=False`` (default) reproduces the reference: the copies' affine
    parameters are all trainable, so the encoder neck's frozen bias becomes trainable;
    ``True`` keeps each parameter's ``requires_grad``. The copies are new Parameters: build the
    optimizer after converting. BNs already domain-specific are left alone (converting twice is a
    no-op; a different ``num_domains`` is an error). Returns the model (in place, except when
    ``model`` itself is a BatchNorm).
    """

    def swap(m: nn.Module) -> nn.Module | None:
        if isinstance(m, DomainSpecificBatchNorm):
            if m.num_domains != num_domains:
                raise ValueError(
                    f"model already has domain-specific BN with {m.num_domains} domains, "
                    f"asked for {num_domains}"
                )
            return m
        if isinstance(m, _BatchNorm) and _plain_bn_type(m) is not None:
            dsbn = DomainSpecificBatchNorm(m, num_domains, keep_frozen_bias)
            return dsbn.train(m.training)
        return None

    return _replace(model, swap)


def convert_bn(model: nn.Module, domain: int = -1) -> nn.Module:
    """Inverse of ``convert_dsbn`` for deployment: keep branch ``domain`` of every
    domain-specific BN (default -1: the last = target; 0 for source).

    The kept branch is a copy of that domain's BN as it is (a sub-batching BN stays one; call
    ``set_images_per_bn(model, None)`` for plain ``nn.BatchNorm``). Returns the model.
    """

    def swap(m: nn.Module) -> nn.Module | None:
        if isinstance(m, DomainSpecificBatchNorm):
            return copy.deepcopy(m.branches[domain])
        return None

    return _replace(model, swap)


def num_bn_domains(model: nn.Module) -> int:
    """Number of BN domains of ``model`` (1 when it has no domain-specific BN)."""
    counts = {m.num_domains for m in model.modules() if isinstance(m, DomainSpecificBatchNorm)}
    if len(counts) > 1:
        raise ValueError(f"domain-specific BN layers have different numbers of domains: {counts}")
    return counts.pop() if counts else 1


def set_domain(model: nn.Module, domain: int) -> int:
    """Select the BN branch every domain-specific BN uses in evaluation (0 = source,
    -1 or num_domains - 1 = target). Returns the previous setting (for restoring)."""
    previous = -1
    for m in model.modules():
        if isinstance(m, DomainSpecificBatchNorm):
            if not -m.num_domains <= domain < m.num_domains:
                raise IndexError(f"domain {domain} out of range for {m.num_domains} BN domains")
            previous = m.domain
            m.domain = domain
    return previous


@contextlib.contextmanager
def use_domain(model: nn.Module, domain: int) -> Iterator[nn.Module]:
    """Context manager: evaluate ``model`` with BN branch ``domain``, then restore the setting."""
    previous = set_domain(model, domain)
    try:
        yield model
    finally:
        set_domain(model, previous)
