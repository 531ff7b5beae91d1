"""The one place that turns a device setting ("auto", "cpu", "cuda:1") into a ``torch.device``, and a
loader-workers setting into a number."""

from __future__ import annotations

import os

import torch

__all__ = ["resolve_device", "resolve_workers"]


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


def resolve_workers(workers: int, device: torch.device, processes: int = 1) -> int:
    """``workers`` loader processes, or for -1 as many as the cores allow: on CUDA one per core left
    for each of the ``processes`` training processes (at most 16: decoding must keep up with the
    GPU), on the CPU half the cores (at most 4), since the workers compete with the computation."""
    if workers >= 0:
        return workers
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if device.type == "cuda":
        return max(1, min(16, cores // max(1, processes) - 1))
    return max(0, min(4, cores // 2))
