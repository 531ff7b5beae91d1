"""Domain-specific BatchNorm (docs/method.md#dsbn).

``convert_dsbn(model, num_domains)`` gives every BatchNorm one branch per domain (source first,
then target). In training the batch is cut into ``num_domains`` equal consecutive parts, each
normalised by its own branch; in evaluation one branch (default: the last, the target) serves the
whole batch. ``convert_bn`` is the inverse used for deployment. Any number of domains works; SpCL
uses two. Images per BN (``spcl.models.images_per_bn``) composes with it in either order.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from spcl.models.module_swap import plain_bn_type, replace_modules

__all__ = [
    "DomainSpecificBatchNorm",
    "convert_bn",
    "convert_dsbn",
    "num_bn_domains",
    "set_domain",
    "use_domain",
]

class DomainSpecificBatchNorm(nn.Module):
    """One BatchNorm branch per domain (docs/method.md#dsbn).

    Training: the batch is cut into ``num_domains`` equal consecutive parts (domain 0 first; in
    SpCL source then target), each normalised by its own branch; a batch that does not split
    evenly is an error. Evaluation: branch ``self.domain`` (default -1, the last = target) for the
    whole batch; change it with ``set_domain`` / ``use_domain``.
    """

    def __init__(self, bn: _BatchNorm, num_domains: int = 2, *, keep_requires_grad: bool = False) -> None:
        super().__init__()
        if num_domains < 1:
            raise ValueError(f"num_domains must be >= 1, got {num_domains}")
        self.branches = nn.ModuleList(copy.deepcopy(bn) for _ in range(num_domains))
        if not keep_requires_grad:
            # Reference quirk (docs/method.md#dsbn): the reference builds fresh BNs and copies the values
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
        # branches with sub-batches hand over their pieces: the activations are concatenated once
        pieces = [
            piece
            for branch, x in zip(self.branches, chunks)
            for piece in (branch.forward_parts(x) if hasattr(branch, "forward_parts") else [branch(x)])
        ]
        return torch.cat(pieces)


def convert_dsbn(model: nn.Module, num_domains: int = 2, *, keep_requires_grad: bool = False) -> nn.Module:
    """Replace every BatchNorm1d/2d of ``model`` by a ``DomainSpecificBatchNorm``.

    Each branch starts as a copy of the original (weights, bias, running statistics, images per
    BN). ``keep_requires_grad=False`` (default) reproduces the reference: the copies' affine
    parameters are all trainable, so the encoder neck's frozen bias becomes trainable (the
    config's ``model.freeze_dsbn_neck_bias`` is this switch); ``True`` keeps each parameter's
    ``requires_grad``. The copies are new Parameters: build the
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
        if isinstance(m, _BatchNorm) and plain_bn_type(m) is not None:
            dsbn = DomainSpecificBatchNorm(m, num_domains, keep_requires_grad=keep_requires_grad)
            return dsbn.train(m.training)
        return None

    return replace_modules(model, swap)


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

    return replace_modules(model, swap)


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
