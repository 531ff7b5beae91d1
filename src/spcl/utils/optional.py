"""Optional packages (faiss, onnx, onnxscript, onnxruntime, h5py): imported in one place, with one way of
saying how to install them, and checked when a command starts rather than after its work.

faiss serves the approximate pseudo-label search, the faiss kNN backend and large gallery indexes;
onnx and onnxscript the ONNX export, onnxruntime its check, h5py CUHK03's MATLAB v7.3 file. Everything else works without them.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["FAISS_INSTALL", "MissingPackage", "need", "need_faiss", "optional", "optional_faiss"]

FAISS_INSTALL = "pip install faiss-cpu (or faiss-gpu), or pip install 'spcl[faiss]'"

INSTALL = {
    "faiss": FAISS_INSTALL,
    "onnx": "pip install 'spcl[onnx]'",
    "onnxscript": "pip install 'spcl[onnx]'",
    "onnxruntime": "pip install onnxruntime, or pip install 'spcl[onnx]'",
    "h5py": "pip install h5py, or pip install 'spcl[cuhk03]'",
}


class MissingPackage(ImportError):
    """An optional package a requested feature needs is not installed; the message says how to install it."""


def optional(module: str) -> Any | None:
    """The module when it can be imported, else None: for callers with a path without it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


def need(module: str, purpose: str, instead: str = "") -> Any:
    """The module, or ``MissingPackage`` naming what needs it, how to install it and the alternative."""
    found = optional(module)
    if found is None:
        hint = INSTALL.get(module, f"pip install {module}")
        raise MissingPackage(f"{purpose} needs {module} (not installed): {hint}" + (f"; or {instead}" if instead else ""))
    return found


def optional_faiss() -> Any | None:
    """faiss when installed, else None: for callers that fall back to an exact path."""
    return optional("faiss")


def need_faiss(purpose: str, instead: str) -> Any:
    """faiss, or a ``MissingPackage`` error naming what needs it, how to install it and the exact alternative."""
    return need("faiss", purpose, instead)
