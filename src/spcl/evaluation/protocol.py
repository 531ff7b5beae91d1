"""The Market-1501 evaluation protocol (docs/method.md#evaluation): which gallery items count for a query.

For a query, the gallery items with its identity *and* its camera are removed, and so is any
gallery entry that is the query's own file; every other item of its identity is a true match,
everything else a negative. A camera of None means "unknown": the image is its own camera, so
the filter never removes its true matches (data without cameras, e.g. VehicleID or a manifest
without ``camid``).

``ImageSet`` is what the protocol knows of one side of the evaluation (queries or gallery);
``Protocol`` turns two of them into the per-query sets the ranking engine needs, in
O(num_query + num_gallery).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from spcl.data.base import Item, camera_codes

__all__ = ["ImageSet", "Protocol"]

Array = np.ndarray | torch.Tensor


@dataclass(frozen=True)
class ImageSet:
    """One side of a retrieval evaluation: the queries or the gallery.

    Each field is one entry per image, or None: no ``pids`` = no identities (nothing matches, only
    own files are removed); no ``camids`` = no cameras (give None on both sides), and a None entry
    = that image's camera is unknown; no ``paths`` = own files are not looked for. ``features``
    (N x d) are needed to compute distances, not to rank given ones.
    """

    features: Any = None
    pids: Array | Sequence | None = None
    camids: Array | Sequence | None = None
    paths: Sequence[str | os.PathLike] | None = None

    @classmethod
    def from_items(cls, items: Sequence[Item], features: Any = None) -> ImageSet:
        """The set of a dataset split's ``(path, pid, camid)`` items, with their features."""
        return cls(
            features=features,
            pids=np.array([pid for _, pid, _ in items], dtype=np.int64),
            camids=[cam for _, _, cam in items],
            paths=[path for path, _, _ in items],
        )


def _as_1d(values: Array | Sequence, name: str, length: int | None = None) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    if length is not None and len(array) != length:
        raise ValueError(f"{name} has {len(array)} entries, expected {length} (one per row/column)")
    return array


def _encode_pair(query: np.ndarray, gallery: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Map query and gallery labels (ints or strings) to shared int64 codes."""
    try:
        _, codes = np.unique(np.concatenate([query, gallery]), return_inverse=True)
    except TypeError as error:
        raise ValueError(f"{name} must be comparable labels of one kind (ints or strings): {error}") from None
    codes = codes.astype(np.int64).reshape(-1)
    return codes[: len(query)], codes[len(query) :]


def _encode_cameras(query: np.ndarray, gallery: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Shared camera codes (``spcl.data.camera_codes``: an unknown camera equals no other).

    All cameras unknown is the same as no cameras: (None, None), and the filter removes nothing.
    """
    both = np.concatenate([query, gallery])
    if both.dtype == object and all(c is None for c in both):
        return None, None
    codes = camera_codes(both)
    return codes[: len(query)], codes[len(query) :]


@dataclass
class Protocol:
    """The per-query sets the Market-1501 filter needs, built once in O(num_query + num_gallery).

    For a query, the "related" gallery items are those with its identity plus its own file(s): they
    are the only items that are not valid negatives. Each is either a valid true match or removed.
    """

    query_pids: np.ndarray
    query_camids: np.ndarray | None
    gallery_camids: np.ndarray | None
    gallery_order: np.ndarray  # gallery indices sorted by (pid code, index)
    gallery_sorted_pids: np.ndarray
    rank_in_pid: np.ndarray  # position of each gallery item within its pid group
    gallery_pids: np.ndarray
    own_query: np.ndarray  # (query, gallery) pairs where the gallery entry is the query's own file
    own_gallery: np.ndarray

    @classmethod
    def build(cls, query: ImageSet, gallery: ImageSet, num_query: int, num_gallery: int) -> Protocol:
        if (query.pids is None) != (gallery.pids is None):
            raise ValueError("give both query_pids and gallery_pids, or neither")
        if query.pids is None:  # no identities: nothing matches, only own files are removed
            qp = np.arange(num_query, dtype=np.int64)
            gp = np.arange(num_query, num_query + num_gallery, dtype=np.int64)
        else:
            qp, gp = _encode_pair(
                _as_1d(query.pids, "query_pids", num_query),
                _as_1d(gallery.pids, "gallery_pids", num_gallery),
                "pids",
            )
        if (query.camids is None) != (gallery.camids is None):
            raise ValueError(
                "give both query_camids and gallery_camids, or None for both (data without cameras: "
                "every image is its own camera and no true match is removed)"
            )
        qc = gc = None
        if query.camids is not None:
            qc, gc = _encode_cameras(
                _as_1d(query.camids, "query_camids", num_query),
                _as_1d(gallery.camids, "gallery_camids", num_gallery),
            )
        if (query.paths is None) != (gallery.paths is None):
            raise ValueError("give both query_paths and gallery_paths, or neither")
        own_q = own_g = np.zeros(0, dtype=np.int64)
        if query.paths is not None and gallery.paths is not None:
            if len(query.paths) != num_query or len(gallery.paths) != num_gallery:
                raise ValueError(
                    f"query_paths/gallery_paths have {len(query.paths)}/{len(gallery.paths)} entries, "
                    f"expected {num_query}/{num_gallery}"
                )
            where: dict[str, list[int]] = {}
            for j, path in enumerate(gallery.paths):
                where.setdefault(os.path.normpath(os.fspath(path)), []).append(j)
            pairs = [
                (i, j)
                for i, path in enumerate(query.paths)
                for j in where.get(os.path.normpath(os.fspath(path)), ())
            ]
            if pairs:
                own_q, own_g = (np.asarray(column, dtype=np.int64) for column in zip(*pairs))
        order = np.argsort(gp, kind="stable")
        sorted_pids = gp[order]
        group_start = np.searchsorted(sorted_pids, sorted_pids, side="left")
        rank_in_pid = np.empty(num_gallery, dtype=np.int64)
        rank_in_pid[order] = np.arange(num_gallery) - group_start
        return cls(qp, qc, gc, order, sorted_pids, rank_in_pid, gp, own_q, own_g)

    def related(self, start: int, end: int) -> tuple[np.ndarray, np.ndarray]:
        """Padded (B, K) gallery indices (-1 = padding) related to queries start..end-1, and
        whether each is a valid true match (else it is removed from the ranking)."""
        qp = self.query_pids[start:end]
        lo = np.searchsorted(self.gallery_sorted_pids, qp, side="left")
        count = np.searchsorted(self.gallery_sorted_pids, qp, side="right") - lo
        width = int(count.max()) if len(count) else 0
        slot = np.arange(width)
        inside = slot[None, :] < count[:, None]
        index = self.gallery_order[np.minimum(lo[:, None] + slot[None, :], len(self.gallery_order) - 1)]
        index = np.where(inside, index, -1)
        match = inside.copy()
        if self.query_camids is not None:
            match &= self.gallery_camids[np.maximum(index, 0)] != self.query_camids[start:end, None]
        in_block = (self.own_query >= start) & (self.own_query < end)
        if in_block.any():
            rows = self.own_query[in_block] - start
            own = self.own_gallery[in_block]
            same_pid = self.gallery_pids[own] == qp[rows]
            match[rows[same_pid], self.rank_in_pid[own[same_pid]]] = False
            rows, own = rows[~same_pid], own[~same_pid]
            if len(rows):  # own file listed under another identity: append it as a removed item
                first = np.searchsorted(rows, rows, side="left")  # rows are sorted (pairs built in order)
                column = np.arange(len(rows)) - first
                extra = np.full((end - start, int(column.max()) + 1), -1, dtype=np.int64)
                extra[rows, column] = own
                index = np.concatenate([index, extra], axis=1)
                match = np.concatenate([match, np.zeros(extra.shape, dtype=bool)], axis=1)
        return index, match
