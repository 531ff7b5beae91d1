"""Approximate k nearest neighbours for targets of 10^5 to 10^6 images (SPEC section 6, step 1).

The exact search compares every pair: N^2 d multiply-adds, hours at N = 10^6 on a CPU. This is
an inverted file (IVF) searched cell against cells:

1. spherical k-means (faiss) on a sample puts ``cells`` centroids on the unit sphere;
2. every point joins the cell of its nearest centroid;
3. the points of a cell are compared with the points of the ``probe`` cells whose centroids are
   nearest to their own centroid (their own cell first), by matrix products in float32.

Probing per cell rather than per point is what makes it fast: a cell's points share one set of
candidates, so the comparison is one dense product per cell (BLAS speed, on any device) where a
per-point probe reads every candidate list once per point. The similarities of the candidates
are exact; only candidates outside the probed cells are missed. With ``probe >= cells`` the
search is exhaustive and returns the exact neighbours. Cost: N x probe x N / cells x d.

Features are held in float16 (2 bytes a value: 4 GiB at 10^6 x 2048) and every product runs in
float32 on blocks: the neighbour order then differs from float32 storage only among candidates
whose similarities differ by less than about 1e-3.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from spcl.neighbors.search import canonical_order, row_norms
from spcl.utils.progress import progress
from spcl.utils.optional import need_faiss

__all__ = ["CellSearch", "cell_search", "unit_features_half", "require_faiss", "default_cells"]

_ROWS = 32768  # rows per block when normalising or assigning (float32 block: 256 MiB at d = 2048)
_COLUMNS = 16384  # candidate columns compared at a time
_QUERIES = 2048  # query rows of a cell compared at a time


def require_faiss() -> Any:
    """faiss, or an error that says how to install it (the approximate search trains its cells with it)."""
    return need_faiss(
        "the approximate neighbour search", "search exactly with neighbors='exact' (pseudo.neighbors exact)"
    )


def default_cells(n: int) -> int:
    """About 2 sqrt(N) cells (632 at 10^5, 2,000 at 10^6): cells of sqrt(N) / 2 points, so that the
    assignment (N x cells) stays a small share of the search (N x probe x N / cells)."""
    return max(1, min(n, int(round(2.0 * math.sqrt(n)))))


@dataclass(frozen=True)
class CellSearch:
    """Settings of the approximate search (``pseudo.approximate`` in a run's config).

    ``cells`` 0 means :func:`default_cells`; ``probe`` is the number of cells each cell is compared
    with, its own included (more: slower and closer to exact); ``train_per_cell`` sample points per
    centroid for the k-means, ``iterations`` its Lloyd iterations.
    """

    cells: int = 0
    probe: int = 8
    train_per_cell: int = 32
    iterations: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        if self.cells < 0 or self.probe < 1 or self.train_per_cell < 1 or self.iterations < 1:
            raise ValueError(
                f"approximate search settings must be positive (cells may be 0 for automatic), got {self}"
            )


def unit_features_half(features: Any, device: torch.device | str | None = None) -> torch.Tensor:
    """Validate and L2-normalise a feature matrix into float16, one block of rows at a time.

    The float32 copy of the whole matrix never exists (8 GiB at 10^6 x 2048): each block is
    normalised in float32 and stored in float16. Rejects what ``as_unit_features`` rejects.
    """
    if not isinstance(features, torch.Tensor):
        features = torch.from_numpy(np.ascontiguousarray(np.asarray(features)))
    if features.dim() != 2:
        raise ValueError(f"features must be a 2-D (samples x dims) matrix, got shape {tuple(features.shape)}")
    n, d = features.shape
    if n == 0:
        raise ValueError("features is empty: there is nothing to label")
    target = torch.device(device) if device is not None else features.device
    out = torch.empty((n, d), dtype=torch.float16, device=target)
    for a in range(0, n, _ROWS):
        block = features[a : a + _ROWS].to(target, torch.float32)
        out[a : a + _ROWS] = block / row_norms(block, offset=a)
    return out


def _train_centroids(unit: torch.Tensor, cells: int, settings: CellSearch) -> torch.Tensor:
    faiss = require_faiss()
    n, d = unit.shape
    rng = np.random.default_rng(settings.seed)
    size = min(n, cells * settings.train_per_cell)
    sample = np.sort(rng.choice(n, size=size, replace=False)) if size < n else np.arange(n)
    x = np.ascontiguousarray(unit[torch.from_numpy(sample).to(unit.device)].float().cpu().numpy())
    kmeans = faiss.Kmeans(
        d, cells, niter=settings.iterations, seed=settings.seed, spherical=True, verbose=False,
        min_points_per_centroid=1, max_points_per_centroid=max(settings.train_per_cell, 1),
    )
    kmeans.train(x)
    centroids = torch.from_numpy(np.ascontiguousarray(kmeans.centroids)).to(unit.device)
    return centroids / torch.linalg.vector_norm(centroids, dim=1, keepdim=True).clamp_min(1e-12)


def _assign(unit: torch.Tensor, centroids: torch.Tensor, show: bool) -> torch.Tensor:
    n = unit.shape[0]
    cell = torch.empty(n, dtype=torch.int64, device=unit.device)
    blocks = range(0, n, _ROWS)
    for a in progress(blocks, "approximate kNN: cells of the points", total=len(blocks), enabled=show):
        cell[a : a + _ROWS] = (unit[a : a + _ROWS].float() @ centroids.T).argmax(dim=1)
    return cell


def _probes(centroids: torch.Tensor, sizes: np.ndarray, probe: int, k: int) -> list[np.ndarray]:
    """Per cell, the cells its points are compared with: its own, then by centroid similarity, at
    least ``probe`` of them and as many more as it takes to hold k candidates."""
    sims = centroids @ centroids.T
    sims.fill_diagonal_(float("inf"))
    order = torch.argsort(sims, dim=1, descending=True, stable=True).cpu().numpy()
    counts = np.cumsum(sizes[order], axis=1)
    enough = np.argmax(counts >= k, axis=1) + 1  # cells needed for k candidates (all: k <= N)
    width = np.maximum(np.minimum(probe, order.shape[1]), enough)
    return [order[c, : width[c]] for c in range(order.shape[0])]


def cell_search(
    unit: torch.Tensor, k: int, settings: CellSearch | None = None, *, show_progress: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Approximate k nearest points of every point of ``unit`` (L2-normalised, float16 or float32).

    Returns (indices N x k int64, similarities float32) in the exact search's convention: the point
    itself first (with its own similarity), then by similarity, ties by the lower index.
    """
    settings = settings or CellSearch()
    n, _ = unit.shape
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    k = min(k, n)
    cells = min(n, settings.cells or default_cells(n))
    centroids = _train_centroids(unit, cells, settings)
    cell = _assign(unit, centroids, show_progress)
    order = torch.argsort(cell, stable=True)
    sizes = torch.bincount(cell, minlength=cells).cpu().numpy()
    starts = np.concatenate([[0], np.cumsum(sizes)])
    probes = _probes(centroids, sizes, settings.probe, k)

    out_indices = torch.empty((n, k), dtype=torch.int64, device=unit.device)
    out_values = torch.empty((n, k), dtype=torch.float32, device=unit.device)
    members = [order[starts[c] : starts[c + 1]] for c in range(cells)]
    visit = [c for c in range(cells) if sizes[c] > 0]
    for c in progress(visit, "approximate kNN: cells searched", total=len(visit), enabled=show_progress):
        candidates = torch.cat([members[p] for p in probes[c]])  # own cell first, in the order of ``members``
        own = int(sizes[c])
        for q0 in range(0, own, _QUERIES):
            rows = members[c][q0 : q0 + _QUERIES]
            queries = unit[rows].float()
            best_values = best_indices = None
            for c0 in range(0, candidates.shape[0], _COLUMNS):
                columns = candidates[c0 : c0 + _COLUMNS]
                sims = queries @ unit[columns].float().T
                self_start = q0 - c0  # the queries themselves sit at columns q0.. of the own cell
                if self_start < sims.shape[1] and self_start + rows.shape[0] > 0:
                    lo, hi = max(0, self_start), min(sims.shape[1], self_start + rows.shape[0])
                    r = torch.arange(lo - self_start, hi - self_start, device=sims.device)
                    sims[r, r + self_start] = float("inf")  # a point heads its own list
                values, positions = torch.topk(sims, min(k, sims.shape[1]), dim=1, sorted=False)
                indices = columns[positions]
                if best_values is not None:
                    values = torch.cat([best_values, values], dim=1)
                    indices = torch.cat([best_indices, indices], dim=1)
                    values, positions = torch.topk(values, min(k, values.shape[1]), dim=1, sorted=False)
                    indices = torch.gather(indices, 1, positions)
                best_values, best_indices = values, indices
            indices, values = canonical_order(best_indices, best_values)
            values[:, 0] = (queries * queries).sum(dim=1)
            out_indices[rows] = indices
            out_values[rows] = values
    return out_indices.cpu().numpy(), out_values.cpu().numpy()
