"""The blocked ranking engine behind the metrics (docs/method.md#evaluation): exact, in bounded memory.

Algorithm. No row is argsorted and no query x gallery matrix is held: queries are processed in
blocks. The position of a true match m in the valid ranking of its query is

    (#true matches before m) + (#valid negatives before m),

and #valid negatives before m = #gallery items with a smaller distance (binary search of m's
distance in the *sorted values* of the row) - #items of the query's identity or own file with a
smaller distance (a handful, known in advance), plus a tie correction that runs only where a
negative has exactly m's distance. Sorting values (numpy's vectorised sort, threaded over rows) is
about 3x faster than an argsort and needs no index array; everything else costs O(matches) per
query. Tests compare every output with a plain-loop reference.

Tie rule. The ranking is the stable sort by (distance, gallery index): among gallery items at
exactly the same distance, the one listed first in the gallery ranks first. It is what
``np.argsort(row, kind="stable")`` gives, it never depends on sort luck, and it is the order
``ranked_gallery`` returns, so the metrics and the ranked lists a user looks at agree.
Exact float32 ties between a true match and a negative do occur (about one true match in 200 in
the MSMT17-sized benchmark), so the rule matters in the last digits.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypedDict

import numpy as np
import torch

from spcl.evaluation.protocol import Array, Protocol

__all__ = [
    "BLOCK_BYTES",
    "METRICS",
    "FeatureBlocks",
    "RankMetrics",
    "as_tensor",
    "block_rows",
    "check_topk",
    "device_of",
    "score_blocks",
]

Device = str | torch.device | None

METRICS = ("cosine", "euclidean")
# Rows per block are chosen so that one query x gallery block of distances takes about this much
# memory; a block exists twice at once (distances and their sorted copy).
BLOCK_BYTES = 256 * 2**20
_EPS = 1e-12  # as torch.nn.functional.normalize: a zero feature has cosine similarity 0


class RankMetrics(TypedDict):
    """Result of :func:`rank_metrics` / :func:`evaluate_features` (all arrays are numpy)."""

    mAP: float  # mean AP over valid queries, in 0..1
    cmc: np.ndarray  # float64 (topk,): cmc[k - 1] = share of valid queries with a hit in the top k
    ap: np.ndarray  # float64 (num_query,): AP per query, NaN where the query has no valid match
    first_match_rank: np.ndarray  # int64 (num_query,): 1-based rank of the first valid match, -1 if none
    num_matches: np.ndarray  # int64 (num_query,): valid true matches per query
    valid: np.ndarray  # bool (num_query,): the query has at least one valid match
    num_valid_queries: int


def check_topk(topk: int) -> None:
    if isinstance(topk, bool) or not isinstance(topk, (int, np.integer)) or topk < 1:
        raise ValueError(f"topk must be a positive integer, got {topk!r}")


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {METRICS}")


def as_tensor(values: Array | Sequence) -> torch.Tensor:
    """A tensor sharing memory with `values` where possible (numpy views with negative strides and
    nested lists are copied; lists keep float64)."""
    if isinstance(values, torch.Tensor):
        return values.detach()
    array = np.asarray(values)
    if any(stride < 0 for stride in array.strides):
        array = np.ascontiguousarray(array)
    return torch.from_numpy(array)


def _as_features(values: Array, name: str, device: torch.device) -> torch.Tensor:
    tensor = as_tensor(values)
    if tensor.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (num_images, dim) array, got shape {tuple(tensor.shape)}")
    if tensor.shape[0] == 0 or tensor.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(tensor.shape)}): nothing to evaluate")
    if tensor.dtype not in (torch.float32, torch.float64):
        tensor = tensor.to(torch.float32)
    return tensor.to(device).contiguous()


def device_of(device: Device, *arrays: Array) -> torch.device:
    if device is not None:
        return torch.device(device)
    for array in arrays:
        if isinstance(array, torch.Tensor):
            return array.device
    return torch.device("cpu")


def block_rows(block_size: int | None, num_columns: int, itemsize: int) -> int:
    if block_size is None:
        return max(1, BLOCK_BYTES // max(1, num_columns * itemsize))
    if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) or block_size < 1:
        raise ValueError(f"block_size must be a positive integer, got {block_size!r}")
    return int(block_size)


class _Counter:
    """For each row of a distance block and each of a few values: how many items of the row are
    strictly below the value, and how many are at or below it. The row's values are sorted once,
    then binary searched.

    On CPU: numpy's vectorised sort and searchsorted, rows split over threads (numpy releases the
    GIL), into one reused buffer (a fresh block-sized allocation costs its page faults every time).
    numpy rather than torch: torch's small ops each hand work to its thread pool, which costs
    milliseconds per call on a busy machine. Elsewhere (or without a pool): torch.sort and
    torch.searchsorted on the block's device.
    """

    def __init__(self, pool: ThreadPoolExecutor | None, threads: int = 1) -> None:
        self.pool, self.threads = pool, threads
        self.buffer: np.ndarray | None = None

    def __call__(self, block: torch.Tensor, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(below, at_or_below) of shape values.shape, and per row whether it is all finite."""
        if self.pool is None or block.device.type != "cpu":
            ordered = torch.sort(block, dim=1).values  # NaN last
            queries = torch.as_tensor(values, device=block.device)
            below = torch.searchsorted(ordered, queries, side="left").cpu().numpy()
            at_or_below = torch.searchsorted(ordered, queries, side="right").cpu().numpy()
            finite = (torch.isfinite(ordered[:, 0]) & torch.isfinite(ordered[:, -1])).cpu().numpy()
            return below, at_or_below, finite
        source = block.numpy()
        buffer = self.buffer
        fits = buffer is not None and buffer.dtype == source.dtype and buffer.shape[1] == source.shape[1]
        if not fits or len(buffer) < len(source):
            buffer = self.buffer = np.empty(source.shape, dtype=source.dtype)
        below = np.empty(values.shape, dtype=np.int64)
        at_or_below = np.empty(values.shape, dtype=np.int64)
        finite = np.empty(len(source), dtype=bool)

        def count_rows(lo: int, hi: int) -> None:
            ordered = buffer[lo:hi]
            ordered[...] = source[lo:hi]
            ordered.sort(axis=1)  # NaN last
            finite[lo:hi] = np.isfinite(ordered[:, 0]) & np.isfinite(ordered[:, -1])
            for row in range(lo, hi):
                below[row] = np.searchsorted(buffer[row], values[row], side="left")
                at_or_below[row] = np.searchsorted(buffer[row], values[row], side="right")

        bounds = np.linspace(0, len(source), max(1, min(self.threads, len(source))) + 1).astype(int)
        list(self.pool.map(count_rows, bounds[:-1], bounds[1:]))
        return below, at_or_below, finite


def _gather(block: torch.Tensor, index: np.ndarray) -> np.ndarray:
    if block.device.type == "cpu":
        return np.take_along_axis(block.numpy(), index, axis=1)
    return block.gather(1, torch.as_tensor(index, device=block.device)).cpu().numpy()


def _tied_before(block: torch.Tensor, rows: np.ndarray, values: np.ndarray, gallery_index: np.ndarray) -> np.ndarray:
    """For each (row, value, index): #gallery items of the row with exactly that value and a smaller
    gallery index. Only needed for true matches tied with a negative: one match in a few hundred
    with float32 distances at MSMT17 size; every match when all distances are equal (then it costs
    a scan of half a row per true match)."""
    if block.device.type != "cpu":
        return _tied_before_vectorised(block, rows, values, gallery_index)
    data = block.numpy()
    counts = [np.count_nonzero(data[r, :i] == v) for r, v, i in zip(rows, values, gallery_index)]
    return np.asarray(counts, dtype=np.int64)


def _tied_before_vectorised(
    block: torch.Tensor, rows: np.ndarray, values: np.ndarray, gallery_index: np.ndarray, chunk: int = 64
) -> np.ndarray:
    """:func:`_tied_before` for accelerators: whole-row comparisons, `chunk` pairs at a time."""
    device = block.device
    rows_t = torch.as_tensor(rows, device=device)
    values_t = torch.as_tensor(values, device=device)
    index_t = torch.as_tensor(gallery_index, device=device)
    positions = torch.arange(block.shape[1], device=device)
    counts = torch.empty(len(rows), dtype=torch.long, device=device)
    for lo in range(0, len(rows), chunk):
        hi = lo + chunk
        tied = block[rows_t[lo:hi]] == values_t[lo:hi, None]
        tied &= positions[None, :] < index_t[lo:hi, None]
        counts[lo:hi] = tied.sum(dim=1)
    return counts.cpu().numpy()


def _rank_block(
    block: torch.Tensor, related: np.ndarray, is_match: np.ndarray, counter: _Counter
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per query row of `block`: AP, 0-based position of the first valid match (-1 if none), number
    of valid matches, and whether the row's distances are all finite; under the stable
    (distance, gallery index) order."""
    num_rows, num_gallery = block.shape
    # each row's related items in (distance, gallery index) order; padding (index -1) last
    index = np.where(related < 0, num_gallery, related)
    order = np.argsort(index, axis=1, kind="stable")
    index, match = np.take_along_axis(index, order, 1), np.take_along_axis(is_match, order, 1)
    pad = index == num_gallery
    values = _gather(block, np.minimum(index, num_gallery - 1))
    values[pad] = np.inf
    order = np.argsort(values, axis=1, kind="stable")
    index, match, values = (np.take_along_axis(a, order, 1) for a in (index, match, values))

    below, at_or_below, finite = counter(block, values)
    # runs of equal distance among the related items: columns run_start .. run_end - 1
    column = np.arange(values.shape[1])
    new_run = np.ones(values.shape, dtype=bool)
    new_run[:, 1:] = values[:, 1:] != values[:, :-1]
    run_start = np.maximum.accumulate(np.where(new_run, column, 0), axis=1)
    run_ends = np.ones(values.shape, dtype=bool)
    run_ends[:, :-1] = new_run[:, 1:]
    run_end = np.minimum.accumulate(np.where(run_ends, column + 1, len(column))[:, ::-1], axis=1)[:, ::-1]
    negatives_before = below - run_start
    tied_negatives = (at_or_below - below) - (run_end - run_start)
    rows, cols = np.nonzero(match & (tied_negatives > 0) & finite[:, None])
    if len(rows):
        # the row count includes the related items tied before this one: columns run_start .. col - 1
        tied = _tied_before(block, rows, values[rows, cols], index[rows, cols])
        negatives_before[rows, cols] += tied - (cols - run_start[rows, cols])

    matches_before = np.cumsum(match, axis=1) - match
    position = matches_before + negatives_before  # 0-based position in the valid ranking
    num_matches = match.sum(axis=1)
    precision = np.where(match, (matches_before + 1) / (position + 1), 0.0)
    with np.errstate(invalid="ignore"):
        ap = precision.sum(axis=1) / num_matches  # 0 / 0 = NaN for queries without a valid match
    first = np.where(match, position, num_gallery).min(axis=1, initial=num_gallery)
    first[num_matches == 0] = -1
    return ap, first, num_matches, finite


def score_blocks(
    blocks: Iterator[tuple[int, int, torch.Tensor]],
    protocol: Protocol,
    num_query: int,
    topk: int,
    what: str,
    timings: dict[str, float] | None,
) -> RankMetrics:
    ap = np.empty(num_query, dtype=np.float64)
    first = np.empty(num_query, dtype=np.int64)
    num_matches = np.empty(num_query, dtype=np.int64)
    threads = max(1, torch.get_num_threads())
    with ThreadPoolExecutor(max_workers=threads) as pool:
        counter = _Counter(pool, threads)
        tic = time.perf_counter()
        for start, end, block in blocks:
            if timings is not None:
                timings["distances"] = timings.get("distances", 0.0) + time.perf_counter() - tic
                tic = time.perf_counter()
            related, is_match = protocol.related(start, end)
            ap[start:end], first[start:end], num_matches[start:end], finite = _rank_block(
                block, related, is_match, counter
            )
            if not finite.all():
                row = start + int(np.flatnonzero(~finite)[0])
                raise ValueError(f"NaN or inf in {what} (query row {row}): check the features or distances")
            del block  # before the next block is computed: one block alive at a time
            if timings is not None:
                timings["ranking"] = timings.get("ranking", 0.0) + time.perf_counter() - tic
            tic = time.perf_counter()
    valid = num_matches > 0
    num_valid = int(valid.sum())
    if num_valid == 0:
        raise ValueError(
            "no query has a valid true match in the gallery (every identity is missing from the gallery "
            "or seen only by the query's own camera): check the split, the identities and the cameras "
            "(data without cameras must pass camids=None)"
        )
    hist = np.bincount(np.minimum(first[valid], topk), minlength=topk + 1)[:topk]
    return RankMetrics(
        mAP=float(ap[valid].mean()),
        cmc=np.cumsum(hist) / num_valid,
        ap=ap,
        first_match_rank=np.where(valid, first + 1, -1),
        num_matches=num_matches,
        valid=valid,
        num_valid_queries=num_valid,
    )


@dataclass
class FeatureBlocks:
    """Query and gallery features on the evaluation device, with the per-row norm terms the
    distances need (computed once; they also reveal NaN / inf rows in O(rows))."""

    query: torch.Tensor
    gallery: torch.Tensor
    query_term: torch.Tensor  # cosine: 1 / |q|; euclidean: |q|^2
    gallery_term: torch.Tensor
    metric: str

    @classmethod
    def build(cls, query_features: Array, gallery_features: Array, metric: str, device: Device) -> FeatureBlocks:
        _check_metric(metric)
        device = device_of(device, query_features, gallery_features)
        query = _as_features(query_features, "query_features", device)
        gallery = _as_features(gallery_features, "gallery_features", device)
        if query.shape[1] != gallery.shape[1]:
            raise ValueError(
                f"query and gallery features differ in dimension ({query.shape[1]} vs {gallery.shape[1]}): "
                "were they produced by the same model?"
            )
        dtype = torch.promote_types(query.dtype, gallery.dtype)
        query, gallery = query.to(dtype), gallery.to(dtype)
        terms = []
        for name, features in (("query_features", query), ("gallery_features", gallery)):
            if metric == "cosine":
                term = 1.0 / torch.linalg.vector_norm(features, dim=1).clamp_min(_EPS)
            else:  # squared norms in chunks of rows: no feature-sized temporary
                term = torch.cat([(chunk * chunk).sum(dim=1) for chunk in features.split(4096)])
            bad = ~torch.isfinite(term) if metric == "euclidean" else torch.isnan(term) | (term == 0)
            if bool(bad.any()):
                row = int(bad.nonzero()[0, 0])
                raise ValueError(
                    f"{name} contains NaN or inf, or values too large for {dtype} (first in row {row}): "
                    "check the model's outputs"
                )
            terms.append(term)
        return cls(query, gallery, terms[0], terms[1], metric)

    def rows(self, block_size: int | None) -> int:
        return block_rows(block_size, len(self.gallery), self.gallery.element_size())

    def distances(self, start: int, end: int, out: torch.Tensor | None = None) -> torch.Tensor:
        """Distances of queries start..end-1 to the whole gallery, in place after one matmul (into
        `out`'s first rows when given): cosine = 1 - <q, g> / (|q| |g|);
        euclidean = sqrt(max(|q|^2 + |g|^2 - 2 <q, g>, 0))."""
        if out is None:
            product = self.query[start:end] @ self.gallery.T
        else:
            product = torch.matmul(self.query[start:end], self.gallery.T, out=out[: end - start])
        if self.metric == "cosine":
            product.mul_(self.query_term[start:end, None]).mul_(self.gallery_term[None, :])
            return product.neg_().add_(1.0)
        product.mul_(-2.0).add_(self.query_term[start:end, None]).add_(self.gallery_term[None, :])
        return product.clamp_min_(0.0).sqrt_()

    def blocks(self, block_size: int | None, reuse: bool = False) -> Iterator[tuple[int, int, torch.Tensor]]:
        """Distance blocks in query order. With `reuse`, every block is written into the same
        memory: the consumer must be done with a block before it asks for the next one."""
        rows = min(self.rows(block_size), len(self.query))
        out = None
        if reuse:
            out = torch.empty((rows, len(self.gallery)), dtype=self.gallery.dtype, device=self.gallery.device)
        for start in range(0, len(self.query), rows):
            end = min(start + rows, len(self.query))
            yield start, end, self.distances(start, end, out)
