"""Feature extraction: one forward pass of the encoder in evaluation mode over a list of images.

Used to initialise the hybrid memory (docs/method.md#initialisation) and to evaluate (#evaluation).  The model must
already be in the BN domain that fits the images (``spcl.models.use_domain``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader

from spcl.data import ImageDataset, Item
from spcl.utils import Distributed
from spcl.utils import progress as show_progress

__all__ = ["extract_features"]


@torch.no_grad()
def extract_features(
    model: nn.Module,
    items: Sequence[Item],
    transform: Callable,
    device: torch.device | str = "cpu",
    batch_size: int = 128,
    workers: int = 0,
    desc: str = "features",
    progress: bool = True,
    dist: Distributed | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Features of ``items`` in list order, as a CPU tensor (N x d) of ``dtype`` (float32; float16
    halves the features of a 10^6-image target, which a float16 memory stores anyway).

    With ``dist`` (several processes), each rank encodes its contiguous share of the list and every
    rank receives all the features, in list order."""
    if dist is not None and dist.enabled:
        if not items:
            raise ValueError(f"{desc}: no images to extract features from")
        share = list(items[dist.shard(len(items))])
        local = (
            extract_features(model, share, transform, device, batch_size, workers, desc, progress, dtype=dtype)
            if share else torch.empty(0, 0, dtype=dtype)
        )
        return dist.gather_rows(local)
    loader = DataLoader(
        ImageDataset(items, transform), batch_size=batch_size, shuffle=False, num_workers=workers,
        pin_memory=torch.device(device).type == "cuda",
    )
    was_training = model.training
    model.eval()
    chunks = []
    try:
        for images, _, _ in show_progress(loader, desc, total=len(loader), enabled=progress):
            chunks.append(model(images.to(device, non_blocking=True)).float().to("cpu", dtype))
    finally:
        model.train(was_training)
    if not chunks:
        raise ValueError(f"{desc}: no images to extract features from")
    return torch.cat(chunks)
