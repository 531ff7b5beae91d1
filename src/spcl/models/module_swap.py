"""Module swap as a function: the recursion shared by domain-specific BN and images-per-BN."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["BATCH_NORMS", "plain_bn_type", "replace_modules"]

BATCH_NORMS: tuple[type[_BatchNorm], ...] = (nn.BatchNorm1d, nn.BatchNorm2d)
"""The BatchNorm kinds a re-ID encoder has (feature maps and the neck); both swaps handle these."""


def plain_bn_type(bn: _BatchNorm) -> type | None:
    """The torch BatchNorm class a BN module is (or derives from), None for other norms."""
    for plain in BATCH_NORMS:
        if isinstance(bn, plain):
            return plain
    return None


def replace_modules(module: nn.Module, fn: Callable[[nn.Module], nn.Module | None]) -> nn.Module:
    """Recursively replace submodules: ``fn(m)`` returns a replacement or None to recurse into m."""
    new = fn(module)
    if new is not None:
        return new
    for name, child in module.named_children():
        replaced = replace_modules(child, fn)
        if replaced is not child:
            setattr(module, name, replaced)
    return module
