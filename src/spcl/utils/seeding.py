"""Named random streams derived from the run seed, so no stream depends on another's consumption.

Every source of randomness of a run (model initialisation, each sampler, the augmentation of each
epoch) has its own stream, seeded from ``(run seed, stream, ...)``: changing the number of
iterations, resuming, or adding a stream leaves the others unchanged. The numbers of the streams
are part of the results: changing one changes every run's numbers.
"""

from __future__ import annotations

import hashlib
from enum import IntEnum

__all__ = ["RngStream", "derive_seed"]


class RngStream(IntEnum):
    """The random streams of a training run."""

    MODEL_INIT = -1
    """Weights of the layers that are not loaded from a file."""
    SOURCE_SAMPLER = 1
    """Identity sampler and loader order of the source domain (per epoch)."""
    TARGET_SAMPLER = 2
    """Identity sampler and loader order of the target domain (per epoch)."""
    AUGMENTATION = 7
    """Dropout and the augmentation done in the main process (per epoch)."""


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from a tuple of ints, e.g. ``(run seed, RngStream.SOURCE_SAMPLER, epoch)``.

    The order of the parts matters: each call site of the trainer keeps the order it has always
    used, so that the streams, and the results, stay the same from one version to the next.
    """
    digest = hashlib.sha256(",".join(str(int(p)) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1
