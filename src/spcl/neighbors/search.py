"""Exact k-nearest neighbours of L2-normalised features, in tiles (docs/method.md#pseudo-labels, step 1; the
re-ranking, #evaluation).

The search is the floor of the whole pseudo-labelling step: every later stage works on the
N x k lists it returns. The Gram matrix is computed tile by tile (torch matmul + topk, on the
CPU or any device), so the N x N similarity matrix never exists, and only its upper tiles are
multiplied (it is symmetric): half the work of a row-blocked search. faiss is used only when
it is installed and asked for (``backend="faiss"``), including its approximate indexes.

Neighbour order is canonical so that every later stage is deterministic: each point first
(whatever its duplicates), then by similarity, descending, ties broken by the lower index.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from spcl.utils.optional import need_faiss

__all__ = [
    "as_unit_features",
    "nearest_neighbors",
    "search_unit",
    "symmetric_search",
    "canonical_order",
    "pair_similarities",
    "TileVisitor",
]

# Side of the square tiles of the Gram matrix computed at a time (2048^2 float32 = 16 MiB),
# and how many tiles' top-k lists a row keeps before reducing them to one.
_TILE = 2048
CANDIDATE_SLOTS = 8


def as_unit_features(features: Any, device: torch.device | str | None = None) -> torch.Tensor:
    """Validate a feature matrix (numpy or torch) and return it L2-normalised as a torch tensor.

    float64 input stays float64 (the slow reference tests use it); anything else becomes float32.
    Non-finite values and all-zero rows are rejected: they have no direction, so no neighbours.
    """
    if isinstance(features, torch.Tensor):
        tensor = features.detach()
    else:
        tensor = torch.from_numpy(np.ascontiguousarray(np.asarray(features)))
    if tensor.dim() != 2:
        raise ValueError(f"features must be a 2-D (samples x dims) matrix, got shape {tuple(tensor.shape)}")
    if tensor.shape[0] == 0:
        raise ValueError("features is empty: there is nothing to label")
    if tensor.dtype != torch.float64:
        tensor = tensor.to(torch.float32)
    if device is not None:
        tensor = tensor.to(device)
    return tensor / row_norms(tensor)


def row_norms(rows: torch.Tensor, offset: int = 0) -> torch.Tensor:
    """The L2 norm of each row (rows x 1), refusing rows that cannot be normalised: NaN or inf
    values, or all zeros. ``offset`` is the first row's index in the whole matrix, for the message."""
    norms = torch.linalg.vector_norm(rows, dim=1, keepdim=True)
    if not bool(torch.isfinite(norms).all()):  # one pass in the common case: NaN/inf show in the norm
        finite = torch.isfinite(rows).all(dim=1)
        if not bool(finite.all()):
            bad = (offset + torch.nonzero(~finite).flatten()[:5]).tolist()
            raise ValueError(
                f"features contain NaN or inf values (rows {bad}...): they cannot be compared; a diverged "
                "encoder or memory produces them (check the loss and the learning rate)"
            )
        norms = torch.linalg.vector_norm(rows.double(), dim=1, keepdim=True).to(rows.dtype)  # overflow
    if not bool((norms > 0).all()):
        bad = (offset + torch.nonzero(norms.flatten() == 0).flatten()[:5]).tolist()
        raise ValueError(f"features contain all-zero rows (rows {bad}...): they have no direction to compare")
    return norms


def canonical_order(indices: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort each row by descending value, ties by ascending index."""
    by_index = torch.argsort(indices, dim=1)
    indices = torch.gather(indices, 1, by_index)
    values = torch.gather(values, 1, by_index)
    by_value = torch.sort(values, dim=1, descending=True, stable=True).indices
    return torch.gather(indices, 1, by_value), torch.gather(values, 1, by_value)


TileVisitor = Callable[[int, int, int, int, torch.Tensor], None]


class _Candidates:
    """Per row block, the top-k lists of the tiles seen so far, reduced to one list when full.

    Keeping candidates and selecting once (instead of merging after every tile) keeps the
    number of small tensor operations per tile low, which matters on a busy machine.
    """

    def __init__(self, n: int, k: int, tile: int, slots: int, dtype: torch.dtype, device: torch.device) -> None:
        self.k, self.tile, self.slots = k, tile, slots
        self.values = torch.full((n, slots * k), -float("inf"), dtype=dtype, device=device)
        self.indices = torch.zeros((n, slots * k), dtype=torch.int64, device=device)
        self.used = [0] * ((n + tile - 1) // tile)

    def add(self, a: int, b: int, values: torch.Tensor, indices: torch.Tensor) -> None:
        block = a // self.tile
        if self.used[block] == self.slots:
            self._reduce(a, b)
        start = self.used[block] * self.k
        width = values.shape[1]
        self.values[a:b, start : start + width] = values
        self.indices[a:b, start : start + width] = indices
        self.used[block] += 1

    def _reduce(self, a: int, b: int) -> None:
        top, pos = torch.topk(self.values[a:b], self.k, dim=1)
        self.indices[a:b, : self.k] = torch.gather(self.indices[a:b], 1, pos)
        self.values[a:b, : self.k] = top
        self.values[a:b, self.k :] = -float("inf")
        self.used[a // self.tile] = 1

    def best(self) -> tuple[torch.Tensor, torch.Tensor]:
        top, pos = torch.topk(self.values, self.k, dim=1)
        return torch.gather(self.indices, 1, pos), top


def symmetric_search(
    unit: torch.Tensor, k: int, *, tile: int | None = None, visit: TileVisitor | None = None, track_min: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Exact k nearest points of every point (cosine order), each similarity computed once.

    Tile (I, J) with J >= I serves the rows of I (its rows) and the rows of J (its columns).
    ``visit(a, b, c, d, sims)`` sees every upper tile (rows a:b, columns c:d) before it is
    used; ``track_min`` also returns each row's smallest similarity. Returns (indices,
    similarities, row minima or None): the point itself first (with its real similarity),
    then canonical order.
    """
    n = unit.shape[0]
    k = min(k, n)
    tile = max(1, min(n, tile or _TILE))
    device, dtype = unit.device, unit.dtype
    candidates = _Candidates(n, k, tile, min(CANDIDATE_SLOTS, (n + tile - 1) // tile), dtype, device)
    own = torch.empty(n, dtype=dtype, device=device)
    row_min = torch.full((n,), float("inf"), dtype=dtype, device=device) if track_min else None
    for a in range(0, n, tile):
        b = min(n, a + tile)
        rows = unit[a:b]
        for c in range(a, n, tile):
            d = min(n, c + tile)
            sims = rows @ unit[c:d].T
            if visit is not None:
                visit(a, b, c, d, sims)
            mirrored = sims.T.contiguous() if c != a else None
            if row_min is not None:
                row_min[a:b] = torch.minimum(row_min[a:b], sims.min(dim=1).values)
                if mirrored is not None:
                    row_min[c:d] = torch.minimum(row_min[c:d], mirrored.min(dim=1).values)
            if mirrored is None:  # a point heads its own list, even among exact duplicates
                diagonal = torch.diagonal(sims)
                own[a:b] = diagonal
                diagonal.fill_(float("inf"))
            vals, idx = torch.topk(sims, min(k, d - c), dim=1, sorted=False)
            candidates.add(a, b, vals, idx + c)
            if mirrored is not None:
                vals, idx = torch.topk(mirrored, min(k, b - a), dim=1, sorted=False)
                candidates.add(c, d, vals, idx + a)
            del sims, mirrored
    indices, values = canonical_order(*candidates.best())
    values[:, 0] = own
    minima = None if row_min is None else row_min.cpu().numpy()
    return indices.cpu().numpy(), values.cpu().numpy(), minima


def _faiss_search(features: torch.Tensor, k: int, index_spec: str) -> tuple[np.ndarray, np.ndarray]:
    faiss = need_faiss("knn_backend='faiss'", "use knn_backend='torch'")
    x = np.ascontiguousarray(features.detach().cpu().numpy().astype(np.float32))
    n, dim = x.shape
    index = faiss.index_factory(dim, index_spec, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        index.train(x)
    index.add(x)
    # One extra column so that the point itself can be put first without losing a neighbour.
    search_k = min(n, k + 1)
    values, indices = index.search(x, search_k)
    return _self_first(indices.astype(np.int64), values, k, x)


def _self_first(indices: np.ndarray, values: np.ndarray, k: int, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Put each point first in its own list and order the rest canonically (for external searches)."""
    n = indices.shape[0]
    own = np.arange(n)[:, None]
    values = np.where(indices < 0, -np.inf, values)  # faiss pads missing neighbours with -1
    values = np.where(indices == own, np.inf, values)
    order = np.lexsort((indices, -values), axis=1)
    indices = np.take_along_axis(indices, order, axis=1)
    values = np.take_along_axis(values, order, axis=1)
    missing_self = indices[:, 0] != own[:, 0]
    if missing_self.any():  # an approximate index may not return the query itself
        indices[missing_self, 1:] = indices[missing_self, :-1]
        values[missing_self, 1:] = values[missing_self, :-1]
        indices[missing_self, 0] = own[missing_self, 0]
    indices = indices[:, :k]
    values = values[:, :k]
    values[:, 0] = np.einsum("ij,ij->i", x, x)
    if (indices < 0).any():
        raise RuntimeError("the faiss index returned fewer neighbours than asked for; use an exact index ('Flat')")
    return np.ascontiguousarray(indices), np.ascontiguousarray(values)


def nearest_neighbors(
    features: Any,
    k: int,
    *,
    device: torch.device | str | None = None,
    backend: str = "torch",
    tile: int | None = None,
    faiss_index: str = "Flat",
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (N x k, int64) and cosine similarities of the k nearest points of every point.

    Exact by default (Euclidean order on normalised features = cosine order). ``k`` is capped at
    N. The point itself is always in column 0. ``backend="faiss"`` uses a faiss index built
    from ``faiss_index`` (a factory string: "Flat" is exact, e.g. "IVF1024,Flat" approximate).
    """
    return search_unit(as_unit_features(features, device), k, backend=backend, tile=tile, faiss_index=faiss_index)


def search_unit(
    unit: torch.Tensor, k: int, *, backend: str = "torch", tile: int | None = None, faiss_index: str = "Flat"
) -> tuple[np.ndarray, np.ndarray]:
    """``nearest_neighbors`` on features already validated and normalised by ``as_unit_features``."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    k = min(k, unit.shape[0])
    if backend == "torch":
        indices, values, _ = symmetric_search(unit, k, tile=tile)
        return indices, values
    if backend == "faiss":
        return _faiss_search(unit, k, faiss_index)
    raise ValueError(f"unknown kNN backend {backend!r}: use 'torch' or 'faiss'")


def pair_similarities(
    features: torch.Tensor, indptr: np.ndarray, indices: np.ndarray,
    known: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """Cosine similarities of the sparse set of pairs given in CSR form (row i, column indices[...]).

    A sampled matrix product: only the requested entries of F F^T are computed, without
    gathering copies of the feature rows (an order of magnitude faster than a gather). Features
    held in float16 (the approximate search's) are multiplied in float32 a chunk of pairs at a time,
    and ``known`` (the search's neighbour lists and similarities) spares the pairs it already holds.
    """
    if features.dtype in (torch.float16, torch.bfloat16):
        return _pair_similarities_blocked(features, np.asarray(indptr, dtype=np.int64), np.asarray(indices), known)
    n = features.shape[0]
    dtype = features.dtype
    device = features.device
    crow = torch.from_numpy(np.asarray(indptr, dtype=np.int64)).to(device)
    col = torch.from_numpy(np.asarray(indices, dtype=np.int64)).to(device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        pattern = torch.sparse_csr_tensor(crow, col, torch.zeros(col.numel(), dtype=dtype, device=device), (n, n))
        sampled = torch.sparse.sampled_addmm(pattern, features, features.T, beta=0.0, alpha=1.0)
        values = sampled.values()
    return values.cpu().numpy()


_PAIR_CHUNK = 16384  # pairs multiplied at a time by the low-precision path (64 MiB of float16 rows at d = 2048)


def _known_positions(rows: np.ndarray, indices: np.ndarray, ranks: np.ndarray) -> np.ndarray:
    """For each pair (rows[...], indices[...]), its flat position in ``ranks`` (the neighbour lists),
    or -1 when the column is not among the row's neighbours. One sorted search, O(pairs log)."""
    n, k = ranks.shape
    wanted = rows * n + np.asarray(indices, dtype=np.int64)
    order = np.argsort(ranks, axis=1, kind="stable")
    listed = (np.arange(n, dtype=np.int64)[:, None] * n + np.take_along_axis(ranks, order, axis=1)).ravel()
    flat = (np.arange(n, dtype=np.int64)[:, None] * k + order).ravel()
    at = np.minimum(np.searchsorted(listed, wanted), listed.shape[0] - 1)
    return np.where(listed[at] == wanted, flat[at], -1)


def _pair_similarities_blocked(
    features: torch.Tensor, indptr: np.ndarray, indices: np.ndarray,
    known: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """``pair_similarities`` of low-precision features, in float32 arithmetic.

    Pairs already compared by the neighbour search (``known``: its lists and similarities, the
    same float32 products of the same rows) are read from it; only the rest are multiplied, a
    chunk of pairs at a time, so neither F in float32 nor all the gathered rows exist at once.
    """
    out = np.empty(indices.shape[0], dtype=np.float32)
    rows_all = np.repeat(np.arange(indptr.shape[0] - 1, dtype=np.int64), np.diff(indptr))
    todo = np.arange(indices.shape[0])
    if known is not None:
        ranks, values = known
        position = _known_positions(rows_all, indices, ranks)
        found = position >= 0
        out[found] = np.asarray(values, dtype=np.float32).ravel()[position[found]]
        todo = np.flatnonzero(~found)
    if todo.shape[0]:
        device = features.device
        for a in range(0, todo.shape[0], _PAIR_CHUNK):
            chunk = todo[a : a + _PAIR_CHUNK]
            rows = torch.from_numpy(rows_all[chunk]).to(device)
            cols = torch.from_numpy(np.asarray(indices[chunk], dtype=np.int64)).to(device)
            sims = torch.einsum("pd,pd->p", features[rows].float(), features[cols].float())
            out[chunk] = sims.cpu().numpy()
    return out
