"""The one place that turns a device setting ("auto", "cpu", "cuda:1") into a ``torch.device``."""

from __future__ import annotations

import torch

__all__ = ["resolve_device"]


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` picks CUDA when available, else the CPU; anything else is passed to ``torch.device``.

    Asking for CUDA on a machine without it fails here, with the reason, rather than at the first
    tensor moved there.
    """
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} was asked for, but this PyTorch build sees no CUDA device; "
                         "use --device cpu or --device auto")
    return resolved
