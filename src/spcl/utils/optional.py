"""Optional packages (faiss): imported in one place, with one way of saying how to install them.

faiss serves the approximate pseudo-label search, the faiss kNN backend and large gallery indexes;
everything has an exact path without it, so it is never a hard dependency.
"""

from __future__ import annotations

from typing import Any

__all__ = ["FAISS_INSTALL", "optional_faiss", "need_faiss"]

FAISS_INSTALL = "pip install faiss-cpu (or faiss-gpu), or pip install 'spcl[faiss]'"


def optional_faiss() -> Any | None:
    """faiss when installed, else None: for callers that fall back to an exact path."""
    try:
        import faiss  # noqa: PLC0415 (optional dependency, imported only when used)
    except ImportError:
        return None
    return faiss


def need_faiss(purpose: str, instead: str) -> Any:
    """faiss, or an ImportError naming what needs it, how to install it and the exact alternative."""
    faiss = optional_faiss()
    if faiss is None:
        raise ImportError(f"{purpose} needs faiss: {FAISS_INSTALL}; or {instead}")
    return faiss
