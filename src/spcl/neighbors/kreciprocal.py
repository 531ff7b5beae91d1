"""Sparse k-reciprocal encoding (Zhong et al., CVPR 2017), shared by the pseudo labels
(docs/method.md#pseudo-labels, step 1) and the evaluation's re-ranking (#evaluation).

The reference builds V, its query expansion and the Jaccard distance as dense N x N arrays
and loops over N in Python. Here every step is a sparse-matrix operation on the N x k
neighbour lists, so memory is O(N k) plus the stored pairs (the pairs that share a
k-reciprocal neighbour: tens per row on re-ID features) and the hot path has no per-sample loop:

- forward lists F(i, k) are CSR patterns; the k-reciprocal sets are F AND F^T;
- the expansion test |R(j, k/2) & R(i, k1)| > 2/3 |R(j, k/2)| is one sparse product R1 @ Rh
  read on the support of R1; the expanded sets R*(i) are R1 + D @ Rh;
- V (softmax of -d over R*(i)) is row-wise arithmetic on the CSR data; the query expansion is
  Q @ V with Q the k2-nearest averaging matrix;
- sum_k min(V[i,k], V[j,k]) is only non-zero for pairs sharing a column, so it is accumulated
  over the (row entry, column partner) pairs of V in blocks of rows, in an order (reverse
  Cuthill-McKee) where those pairs mostly form a narrow band: a block whose band is narrow
  sums into a dense (rows x band) accumulator, a wide one (large, well-connected targets) sorts
  its pairs instead, so the work stays O(pairs) whatever the band; the Jaccard distance is
  1 - sum min / sum max with sum max = r_i + r_j - sum min (r the row sums: the reference's
  2 - sum min, as rows sum to 1), clipped below at 0.

The two users differ only in the lengths of the forward lists: min(k + 1, k1) for the pseudo
labels (the reference's quirk), k + 1 for the re-ranking.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import reverse_cuthill_mckee

from spcl.utils.progress import progress, stage

__all__ = [
    "k_reciprocal_sets",
    "encoding_weights",
    "query_expansion",
    "upper_min_overlap",
    "cross_min_overlap_blocks",
    "half_k",
]

# Work per accumulation block: (entry, partner) pairs, and the largest dense accumulator (float64
# cells: 32 MiB). A block sums densely only when its accumulator has at most _DENSE_RATIO cells
# per pair (zeroing and scanning a cell costs a few percent of sorting a pair); else it sorts.
_TRIPLE_BUDGET = 1 << 21
_CELL_BUDGET = 1 << 22
_DENSE_RATIO = 16


def half_k(k1: int) -> int:
    """round(k1 / 2), half to even, as the reference's np.around does."""
    return int(np.around(k1 / 2))


def _forward_pattern(ranks: np.ndarray, length: int) -> sp.csr_matrix:
    n = ranks.shape[0]
    m = min(length, ranks.shape[1])
    indices = np.ascontiguousarray(ranks[:, :m]).ravel()
    indptr = np.arange(0, n * m + 1, m, dtype=np.int64)
    pattern = sp.csr_matrix((np.ones(n * m, dtype=np.int32), indices, indptr), shape=(n, n))
    pattern.sort_indices()
    return pattern


def _reciprocal(ranks: np.ndarray, length: int) -> sp.csr_matrix:
    """R(i, k): j in F(i, k) with i in F(j, k), as a symmetric 0/1 CSR matrix."""
    forward = _forward_pattern(ranks, length)
    reciprocal = sp.csr_matrix(forward.multiply(forward.T))
    reciprocal.sort_indices()
    return reciprocal


def k_reciprocal_sets(ranks: np.ndarray, forward_length: int, half_forward_length: int) -> sp.csr_matrix:
    """The expanded k-reciprocal sets R*(i) as a 0/1 CSR pattern (sorted column indices).

    ``ranks`` holds each point's neighbours, itself first. ``forward_length`` is the length of
    F(i, k1) and ``half_forward_length`` that of F(i, round(k1/2)): min(k + 1, k1) for the
    pseudo labels, k + 1 for the re-ranking. A candidate j of R(i, k1) adds R(j, round(k1/2))
    when more than 2/3 of that set already lies in R(i, k1) (the reference's float comparison).
    """
    full = _reciprocal(ranks, forward_length)
    half = _reciprocal(ranks, half_forward_length)
    overlap = sp.csr_matrix(full.multiply(full @ half))  # |R(i,k1) & R(j,k1/2)| on the support of R(i,k1)
    overlap.sort_indices()
    rows = np.repeat(np.arange(overlap.shape[0]), np.diff(overlap.indptr))
    half_sizes = np.diff(half.indptr)
    expands = overlap.data > 2.0 / 3.0 * half_sizes[overlap.indices]
    chosen = sp.csr_matrix(
        (np.ones(int(expands.sum()), dtype=np.int32), (rows[expands], overlap.indices[expands])), shape=full.shape
    )
    expanded = full + chosen @ half
    expanded.data[:] = 1
    expanded.sort_indices()
    return expanded


def encoding_weights(pattern: sp.csr_matrix, distances: np.ndarray) -> sp.csr_matrix:
    """V: row-wise softmax of -distance over each row's pattern (the k-reciprocal set), float64.

    ``distances`` is aligned with ``pattern.data``. The row minimum is subtracted before the
    exponential (the same softmax, stable for any distance scale).
    """
    indptr = pattern.indptr
    d = np.asarray(distances, dtype=np.float64)
    starts = indptr[:-1]
    if np.any(np.diff(indptr) == 0):
        raise ValueError("every point must have a non-empty k-reciprocal set (it contains the point itself)")
    lengths = np.diff(indptr)
    row_min = np.minimum.reduceat(d, starts)
    weights = np.exp(-(d - np.repeat(row_min, lengths)))
    row_sum = np.add.reduceat(weights, starts)
    weights /= np.repeat(row_sum, lengths)
    return sp.csr_matrix((weights, pattern.indices.copy(), indptr.copy()), shape=pattern.shape)


def query_expansion(weights: sp.csr_matrix, ranks: np.ndarray, k2: int) -> sp.csr_matrix:
    """Local query expansion: row i becomes the mean of the rows of its k2 nearest points (itself included)."""
    n = weights.shape[0]
    m = min(k2, ranks.shape[1])
    if m <= 1:
        return weights
    indptr = np.arange(0, n * m + 1, m, dtype=np.int64)
    averaging = sp.csr_matrix(
        (np.full(n * m, 1.0 / m), np.ascontiguousarray(ranks[:, :m]).ravel(), indptr), shape=(n, n)
    )
    averaging.sort_indices()  # the same neighbour set sums in the same order: duplicates stay identical
    expanded = sp.csr_matrix(averaging @ weights)
    expanded.sort_indices()
    return expanded


def _column_view(weights: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Column view of V (CSC pointers, rows, values) and, for every CSR entry, its position in it.

    Rows are sorted inside each column, so the partners j >= i of an entry (i, k) are the
    positions from the entry itself to the end of column k.
    """
    nnz = weights.nnz
    ids = sp.csr_matrix(
        (np.arange(1, nnz + 1, dtype=np.int64), weights.indices, weights.indptr), shape=weights.shape
    ).tocsc()
    entry = ids.data - 1
    position = np.empty(nnz, dtype=np.int64)
    position[entry] = np.arange(nnz, dtype=np.int64)
    return ids.indptr.astype(np.int64), ids.indices.astype(np.int64), weights.data[entry], position


def _expand_pairs(
    weights: sp.csr_matrix, lo: int, hi: int, first: np.ndarray, count: np.ndarray, col_rows: np.ndarray,
    col_values: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(local row, partner, min) for every entry of rows [lo, hi) and each partner of its column.

    ``first``/``count`` give, per CSR entry of the block, where its partners start in the
    column view and how many there are. Vectorised with repeat + arange: no loop over samples.
    """
    e0, e1 = weights.indptr[lo], weights.indptr[hi]
    total = int(count.sum())
    offsets = np.cumsum(count) - count
    positions = np.repeat(first - offsets, count) + np.arange(total, dtype=np.int64)
    partner = col_rows[positions]
    mins = np.minimum(np.repeat(weights.data[e0:e1], count), col_values[positions])
    local_row = np.repeat(np.arange(hi - lo, dtype=np.int64), np.diff(weights.indptr[lo : hi + 1]))
    return np.repeat(local_row, count), partner, mins


def _row_blocks(work: np.ndarray) -> Iterator[tuple[int, int]]:
    """Greedy row blocks [lo, hi) of at most ``_TRIPLE_BUDGET`` (entry, partner) pairs (one row
    at least), ``work[i]`` being the pairs of row i."""
    n = work.shape[0]
    ends = np.cumsum(work)
    lo = 0
    while lo < n:
        before = ends[lo - 1] if lo else 0
        hi = int(np.searchsorted(ends, before + _TRIPLE_BUDGET, side="right"))
        hi = min(n, max(hi, lo + 1))
        yield lo, hi
        lo = hi


def _cross_row_blocks(work: np.ndarray, width: int) -> Iterator[tuple[int, int]]:
    """Row blocks within the pair budget whose dense (rows x ``width``) accumulator stays within
    the cell budget (the re-ranking's output is dense anyway)."""
    rows = max(1, _CELL_BUDGET // max(width, 1))
    for lo, hi in _row_blocks(work):
        for a in range(lo, hi, rows):
            yield a, min(hi, a + rows)


def _sum_pairs(key: np.ndarray, values: np.ndarray, cells: int) -> tuple[np.ndarray, np.ndarray]:
    """The distinct keys in [0, cells) (ascending) and the sum of ``values`` over each.

    Either way a key's values are added one after another in their input order (bincount), so
    the dense and the sorting path give the same bits: a duplicate's sums equal its row sums.
    """
    if cells <= _CELL_BUDGET and cells <= _DENSE_RATIO * key.shape[0]:
        flat = np.bincount(key, weights=values, minlength=cells)
        touched = np.flatnonzero(flat)  # every touched cell holds a positive sum of minima
        return touched, flat[touched]
    # A stable sort keeps each key's values in input order. numpy's stable sort (timsort) also
    # profits from the keys coming grouped by row: about 2x faster than its quicksort here.
    order = np.argsort(key, kind="stable")
    ordered = key[order]
    first = np.empty(ordered.shape[0], dtype=bool)
    first[:1] = True
    np.not_equal(ordered[1:], ordered[:-1], out=first[1:])
    group = np.cumsum(first) - 1
    sums = np.bincount(group, weights=values[order], minlength=int(group[-1]) + 1 if group.size else 0)
    return ordered[first], sums


def _sharing_order(weights: sp.csr_matrix) -> np.ndarray:
    """A permutation that makes points sharing a column of V close in index (reverse Cuthill-McKee).

    Pairs that share a column form a banded matrix in this order, so a block of rows touches a
    narrow window of columns and sums densely; on large targets with many links across identities
    the band widens (half of N at 10^6) and the blocks sort instead, still in this order, which
    keeps their gathers local.
    """
    pattern = sp.csr_matrix((np.ones(weights.nnz, dtype=np.int32), weights.indices, weights.indptr), weights.shape)
    sharing = sp.csr_matrix(pattern @ pattern.T)
    return np.asarray(reverse_cuthill_mckee(sharing, symmetric_mode=True), dtype=np.int64)


def _row_sums(weights: sp.csr_matrix) -> np.ndarray:
    """sum_k V[i, k], accumulated in the same order as the sums of minima (a sequential bincount)."""
    rows = np.repeat(np.arange(weights.shape[0]), np.diff(weights.indptr))
    return np.bincount(rows, weights=weights.data, minlength=weights.shape[0])


def upper_min_overlap(
    weights: sp.csr_matrix, show_progress: bool = False
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Yield blocks of sum_k min(V[i,k], V[j,k]) and sum_k max(V[i,k], V[j,k]) for pairs sharing a column.

    Each block is (rows, cols, min sums, max sums); every unordered pair (diagonal included)
    appears once. The max sum is r_i + r_j - min sum with r the row sums (the reference's
    2 - min sum, since rows sum to 1, without its rounding: identical rows give exactly equal
    sums, so duplicates come out at distance exactly 0). Work is the number of
    (entry, same-column partner) pairs, O(N k^2); memory per block is bounded by the budgets.
    ``show_progress`` reports the blocks (minutes at 10^6 points).
    """
    n = weights.shape[0]
    with stage("Jaccard distance: sharing order and column view", enabled=show_progress):
        order = _sharing_order(weights)
        permuted = sp.csr_matrix(weights[order][:, order])
        permuted.sort_indices()
        colptr, col_rows, col_values, position = _column_view(permuted)
    entry_cols = permuted.indices.astype(np.int64)
    col_end = colptr[1:][entry_cols]
    partners = col_end - position
    starts = permuted.indptr[:-1]
    row_work = np.add.reduceat(partners, starts)
    # Partners of row i lie in [i, reach_i] (the last row of a column is its largest); in the
    # sharing order reach_i - i is mostly small, and a block's keys are offsets in that band.
    row_band = np.maximum.reduceat(col_rows[col_end - 1], starts) - np.arange(n) + 1
    row_sums = _row_sums(permuted)
    blocks = list(_row_blocks(row_work))
    for lo, hi in progress(blocks, "Jaccard distance: blocks of rows", total=len(blocks), enabled=show_progress):
        e0, e1 = permuted.indptr[lo], permuted.indptr[hi]
        local_row, partner, mins = _expand_pairs(
            permuted, lo, hi, position[e0:e1], partners[e0:e1], col_rows, col_values
        )
        width = int(row_band[lo:hi].max())
        partner -= local_row + lo  # offset in the row's band [0, width)
        key = local_row * width + partner
        del local_row, partner
        touched, mins = _sum_pairs(key, mins, (hi - lo) * width)
        del key
        row = touched // width + lo
        col = touched % width + row
        yield order[row], order[col], mins, row_sums[row] + row_sums[col] - mins


def cross_min_overlap_blocks(
    weights: sp.csr_matrix, num_rows: int
) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
    """Yield dense blocks of the min and max sums (as ``upper_min_overlap``) for rows i < num_rows
    against columns j >= num_rows.

    The query x gallery layout of the re-ranking: the output is dense there anyway, so each block
    is a (rows x gallery) array. Yields (row_lo, row_hi, min sums, max sums).
    """
    n = weights.shape[0]
    width = n - num_rows
    colptr, col_rows, col_values, _ = _column_view(weights)
    entry_cols = weights.indices.astype(np.int64)
    before = np.bincount(entry_cols[: weights.indptr[num_rows]], minlength=n)  # query rows in each column
    first = (colptr[:-1] + before)[entry_cols]
    partners = colptr[1:][entry_cols] - first
    starts = weights.indptr[:-1]
    row_work = np.add.reduceat(partners, starts)[:num_rows]
    row_sums = _row_sums(weights)
    for lo, hi in _cross_row_blocks(row_work, width):
        e0, e1 = weights.indptr[lo], weights.indptr[hi]
        local_row, partner, mins = _expand_pairs(weights, lo, hi, first[e0:e1], partners[e0:e1], col_rows, col_values)
        flat = np.bincount(local_row * width + (partner - num_rows), weights=mins, minlength=(hi - lo) * width)
        shared = flat.reshape(hi - lo, width)
        yield lo, hi, shared, row_sums[lo:hi, None] + row_sums[None, num_rows:] - shared
