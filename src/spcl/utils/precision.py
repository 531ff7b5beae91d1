"""Numerics of the encoder on a device: mixed precision, memory layout, deterministic kernels.

The settings are "auto" by default: bf16 autocast and channels-last on CUDA (where they pay),
neither on the CPU (where bf16 convolutions are slower than float32 on most machines).
"""

from __future__ import annotations

import os

import torch

__all__ = ["resolve_amp", "resolve_channels_last", "set_deterministic"]


def resolve_amp(setting: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``setting`` ("auto", "off", "bf16", "fp16") on ``device``; None: float32.

    "auto" is bf16 on CUDA devices that support it, fp16 on older ones (with a gradient scaler, see
    the trainer), float32 elsewhere. fp16 on the CPU is refused: its CPU kernels are slow and
    partial, bf16 is the CPU's mixed precision.
    """
    if setting == "off":
        return None
    if setting == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if setting == "bf16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ValueError("this GPU has no bf16 support: use --runtime.amp fp16 (or auto)")
        return torch.bfloat16
    if setting == "fp16":
        if device.type != "cuda":
            raise ValueError(f"fp16 mixed precision needs a CUDA device (the run is on {device}); use bf16 on the CPU")
        return torch.float16
    raise ValueError(f"runtime.amp must be auto, off, bf16 or fp16, got {setting!r}")


def resolve_channels_last(setting: str, device: torch.device, token_backbone: bool = False) -> bool:
    """Whether convolutions run channels-last: "auto" is on with CUDA (tensor cores want NHWC), except
    for a token backbone (a ViT), whose work is matrix products on tokens: the layout would change a
    stem convolution or two and cost a copy of every input."""
    if setting == "auto":
        return device.type == "cuda" and not token_backbone
    return setting == "on"


def set_deterministic(deterministic: bool, device: torch.device) -> None:
    """Choose between reproducible and fastest kernels for this process.

    These are process-wide switches of PyTorch; the trainer sets them from its config once.
    Deterministic: ``torch.use_deterministic_algorithms(True, warn_only=True)`` (an operation with
    no deterministic kernel warns instead of failing), cuDNN without autotuning, and the cuBLAS
    workspace setting that makes its reductions reproducible. Otherwise cuDNN picks the fastest
    convolution algorithm for the input shape (``cudnn.benchmark``), which may differ run to run.
    """
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not deterministic
        torch.backends.cudnn.deterministic = deterministic
        if deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
