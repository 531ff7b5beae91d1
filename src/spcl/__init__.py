"""spcl: self-paced contrastive learning with a hybrid memory for object re-ID (SpCL, NeurIPS 2020).

``spcl.FeatureExtractor(checkpoint)`` turns a trained checkpoint into a function from images to
features; the rest lives in the sub-packages (``spcl.training``, ``spcl.evaluation``, ...).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["FeatureExtractor", "__version__"]


def __getattr__(name: str) -> Any:
    # imported on first use: ``import spcl`` (and the CLI's start) stays free of torch
    if name == "FeatureExtractor":
        from spcl.inference.extractor import FeatureExtractor

        return FeatureExtractor
    raise AttributeError(f"module 'spcl' has no attribute {name!r}")
