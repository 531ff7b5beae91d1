"""Approximate k nearest neighbours for targets of 10^5 to 10^6 images (docs/method.md#pseudo-labels, step 1).

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

How many neighbours a given ``probe`` misses depends on the features, not on N alone: identities
spread over the whole sphere with loose members need many more cells than tight look-alike
families. So before its lists are used the search measures itself (:func:`choose_probe`): the
exact k nearest points of a random sample (sample x N x d products) give the recall of every
probe at once (a neighbour is found exactly when its cell is among the probed cells of the
query's cell), the smallest probe that reaches the asked recall is taken, and when that probe
would compare about as many pairs as the exact search the caller searches exactly instead.
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

__all__ = [
    "CellIndex", "CellSearch", "ProbeChoice", "cell_search", "choose_probe", "default_cells", "require_faiss",
    "unit_features_half",
]

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


def _cell_order(centroids: torch.Tensor) -> np.ndarray:
    """Per cell, every cell by similarity of its centroid: its own first, ties by the lower index."""
    sims = centroids @ centroids.T
    sims.fill_diagonal_(float("inf"))
    return torch.argsort(sims, dim=1, descending=True, stable=True).cpu().numpy()


@dataclass(frozen=True)
class ProbeChoice:
    """What the approximate search measured of itself and chose (logged with each epoch's labels).

    ``recall`` is the share of the sample's k - 1 exact nearest neighbours (the point itself aside)
    that the search at ``probe`` finds; ``recall_asked_probe`` the same at the configured probe.
    ``pairs`` and ``exact_pairs`` are the similarities each search computes; ``exact`` says that
    the probe needed makes the approximate search no cheaper, so the caller should search exactly.
    """

    probe: int
    recall: float
    asked_probe: int
    recall_asked_probe: float
    target: float
    sample: int
    cells: int
    pairs: int
    exact_pairs: int
    exact: bool

    def summary(self) -> str:
        """One log line."""
        line = (f"approximate kNN: recall {self.recall:.4f} at probe {self.probe} of {self.cells} cells "
                f"(asked {self.target:g}, measured on {self.sample} sampled points")
        if self.probe != self.asked_probe:
            line += f"; probe {self.asked_probe} gave {self.recall_asked_probe:.4f}"
        line += ")"
        if self.exact:
            line += (f": that probe compares {self.pairs / max(1, self.exact_pairs):.0%} of the exact search's pairs, "
                     "so the search is exact")
        return line

    def metrics(self) -> dict[str, float]:
        """The figures a run's history and ``metrics.csv`` keep (``knn_*``)."""
        return {"knn_recall": round(self.recall, 5), "knn_probe": float(self.probe),
                "knn_exact_fallback": float(self.exact)}


# An approximate pair costs more than an exact one (a cell's few query rows against its gathered
# float16 candidates, converted to float32: a product with little reuse, where the exact search
# multiplies square 2048-row tiles): measured on a 2-core CPU at N = 20,000 x 2048, 1.7x at probe 32
# and 3.3x at the exhaustive probe. The approximate search is kept only while it computes fewer than
# this share of the exact search's pairs, beyond which it is no faster.
FALLBACK_SHARE = 0.3


class CellIndex:
    """The cells of a set of points: centroids, each point's cell and the cells' member lists.

    Built once (k-means and assignment, the part that does not depend on the probe); searched at any
    probe, and measured (:func:`choose_probe`) before it is searched.
    """

    def __init__(self, unit: torch.Tensor, settings: CellSearch | None = None, *, show_progress: bool = True) -> None:
        self.settings = settings = settings or CellSearch()
        n = unit.shape[0]
        self.n = n
        self.cells = min(n, settings.cells or default_cells(n))
        self.centroids = _train_centroids(unit, self.cells, settings)
        self.cell = _assign(unit, self.centroids, show_progress)
        self.order = torch.argsort(self.cell, stable=True)
        self.sizes = torch.bincount(self.cell, minlength=self.cells).cpu().numpy().astype(np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.sizes)])
        self.cell_order = _cell_order(self.centroids)

    def widths(self, probe: int, k: int) -> np.ndarray:
        """Per cell, how many cells (in ``cell_order``) its points are compared with: at least
        ``probe`` and as many more as it takes to hold k candidates."""
        counts = np.cumsum(self.sizes[self.cell_order], axis=1)
        enough = np.argmax(counts >= min(k, self.n), axis=1) + 1  # cells needed for k candidates
        return np.maximum(np.minimum(probe, self.cells), enough)

    def pairs(self, probe: int, k: int) -> int:
        """Similarities the search at ``probe`` computes: every point against its cell's candidates."""
        widths = self.widths(probe, k)
        cumulative = np.cumsum(self.sizes[self.cell_order], axis=1)
        candidates = cumulative[np.arange(self.cells), widths - 1]
        return int((self.sizes * candidates).sum())

    def search(self, unit: torch.Tensor, k: int, probe: int, *, show_progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest points of every point among its cell's probed cells (see :func:`cell_search`)."""
        n = unit.shape[0]
        widths = self.widths(probe, k)
        k = min(k, n)
        out_indices = torch.empty((n, k), dtype=torch.int64, device=unit.device)
        out_values = torch.empty((n, k), dtype=torch.float32, device=unit.device)
        members = [self.order[self.starts[c] : self.starts[c + 1]] for c in range(self.cells)]
        visit = [c for c in range(self.cells) if self.sizes[c] > 0]
        for c in progress(visit, "approximate kNN: cells searched", total=len(visit), enabled=show_progress):
            probed = self.cell_order[c, : widths[c]]
            candidates = torch.cat([members[p] for p in probed])  # own cell first, in the order of ``members``
            own = int(self.sizes[c])
            for q0 in range(0, own, _QUERIES):
                rows = members[c][q0 : q0 + _QUERIES]
                indices, values = _top_among(unit, rows, candidates, k)
                queries = unit[rows].float()
                values[:, 0] = (queries * queries).sum(dim=1)
                out_indices[rows] = indices
                out_values[rows] = values
        return out_indices.cpu().numpy(), out_values.cpu().numpy()


def _top_among(
    unit: torch.Tensor, rows: torch.Tensor, candidates: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k most similar of ``candidates`` (row indices of ``unit``) for each of ``rows`` (row
    indices too), in canonical order; a row among the candidates heads its own list."""
    queries = unit[rows].float()
    best_values = best_indices = None
    for c0 in range(0, candidates.shape[0], _COLUMNS):
        columns = candidates[c0 : c0 + _COLUMNS]
        sims = queries @ unit[columns].float().T
        sims.masked_fill_(columns[None, :] == rows[:, None], float("inf"))  # a point heads its own list
        values, positions = torch.topk(sims, min(k, sims.shape[1]), dim=1, sorted=False)
        indices = columns[positions]
        if best_values is not None:
            values = torch.cat([best_values, values], dim=1)
            indices = torch.cat([best_indices, indices], dim=1)
            values, positions = torch.topk(values, min(k, values.shape[1]), dim=1, sorted=False)
            indices = torch.gather(indices, 1, positions)
        best_values, best_indices = values, indices
    return canonical_order(best_indices, best_values)


def sample_exact_neighbors(unit: torch.Tensor, rows: np.ndarray, k: int) -> np.ndarray:
    """The exact k nearest points (the point itself first) of the sampled ``rows`` among all N:
    a sample x N product in float32 blocks, the measure the approximate search is held to."""
    n = unit.shape[0]
    k = min(k, n)
    index = torch.from_numpy(np.asarray(rows, dtype=np.int64)).to(unit.device)
    everyone = torch.arange(n, device=unit.device)
    out = np.empty((len(rows), k), dtype=np.int64)
    for a in range(0, len(rows), _QUERIES):
        chunk = index[a : a + _QUERIES]
        out[a : a + len(chunk)] = _top_among(unit, chunk, everyone, k)[0].cpu().numpy()
    return out


def choose_probe(
    index: CellIndex, unit: torch.Tensor, k: int, target: float, *, probe: int | None = None, sample: int = 1000,
    seed: int = 0,
) -> ProbeChoice:
    """The smallest probe, not below ``probe`` (default: the index's settings), whose recall of the k
    nearest neighbours on ``sample`` random points reaches ``target``, and whether the exact search
    is the cheaper way to that recall.

    A neighbour j of a point i is found exactly when j's cell is among the cells i's cell probes
    (the candidates hold it, and a true top-k point is in the top k of any subset holding it), so
    one exact search of the sample gives the recall of every probe without searching again.
    """
    if not 0.0 < target <= 1.0:
        raise ValueError(f"the recall asked of the approximate search is a share in (0, 1], got {target}")
    n = index.n
    asked = index.settings.probe if probe is None else probe
    exact_pairs = n * (n + 1) // 2  # the exact search computes each pair once
    rng = np.random.default_rng(seed)
    size = min(n, max(1, sample))
    rows = np.sort(rng.choice(n, size=size, replace=False)) if size < n else np.arange(n)
    neighbors = sample_exact_neighbors(unit, rows, k)[:, 1:]  # the point itself is always found
    cell = index.cell.cpu().numpy()
    rank_of = np.empty_like(index.cell_order)
    rank_of[np.arange(index.cells)[:, None], index.cell_order] = np.arange(index.cells)[None, :]
    query_cells = cell[rows]
    ranks = rank_of[query_cells[:, None], cell[neighbors]]  # position of each neighbour's cell in the probe order

    def recall(p: int) -> float:
        if neighbors.shape[1] == 0:
            return 1.0
        return float((ranks < index.widths(p, k)[query_cells][:, None]).mean())

    low = max(1, min(asked, index.cells))
    asked_recall = recall(low)
    chosen = low
    if asked_recall < target:
        lo, hi = low, index.cells  # recall(cells) = 1 (exhaustive)
        while lo < hi:  # recall grows with the probe: the smallest probe that reaches the target
            mid = (lo + hi) // 2
            if recall(mid) >= target:
                hi = mid
            else:
                lo = mid + 1
        chosen = lo
    pairs = index.pairs(chosen, k)
    return ProbeChoice(
        probe=chosen, recall=recall(chosen), asked_probe=asked, recall_asked_probe=asked_recall, target=target,
        sample=size, cells=index.cells, pairs=pairs, exact_pairs=exact_pairs,
        exact=pairs >= FALLBACK_SHARE * exact_pairs,
    )


def cell_search(
    unit: torch.Tensor, k: int, settings: CellSearch | None = None, *, show_progress: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Approximate k nearest points of every point of ``unit`` (L2-normalised, float16 or float32),
    at the settings' probe (measured or not: see :func:`choose_probe`).

    Returns (indices N x k int64, similarities float32) in the exact search's convention: the point
    itself first (with its own similarity), then by similarity, ties by the lower index.
    """
    settings = settings or CellSearch()
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    index = CellIndex(unit, settings, show_progress=show_progress)
    return index.search(unit, k, settings.probe, show_progress=show_progress)
