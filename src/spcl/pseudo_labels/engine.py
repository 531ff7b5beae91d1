"""One call per epoch: features in, self-paced pseudo labels out (docs/method.md#pseudo-labels).

``generate`` chains the stages (kNN search, sparse k-reciprocal Jaccard distance, DBSCAN at three
radii, reliability criterion, re-indexing) and returns a small immutable result;
``labels_from_jaccard`` runs the last three on a distance computed elsewhere. It is a pure
function of the features and the settings, so the same features give the same labels on
every run. The independence threshold alpha is computed at the first call that has a
multi-member cluster; the trainer passes it back on later epochs.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from spcl.config import PseudoLabelConfig
from spcl.neighbors.approximate import CellIndex, CellSearch, choose_probe, unit_features_half
from spcl.neighbors.search import CANDIDATE_SLOTS, as_unit_features, search_unit
from spcl.pseudo_labels.clustering import check_radii, cluster_three_radii
from spcl.pseudo_labels.jaccard import jaccard_from_neighbors
from spcl.pseudo_labels.reliability import cluster_reliability, independence_threshold, self_paced_labels
from spcl.utils import check_memory
from spcl.utils.progress import stage
from spcl.utils.optional import FAISS_INSTALL, optional_faiss

__all__ = ["PseudoLabels", "generate", "generate_with", "labels_from_jaccard", "resolve_neighbors", "EXACT_UP_TO"]

EXACT_UP_TO = PseudoLabelConfig.exact_up_to
"""``neighbors="auto"`` searches exactly up to this many features (100,000), approximately above."""


@dataclass(frozen=True)
class PseudoLabels:
    """Pseudo labels of one epoch and what produced them.

    ``labels`` (int64, N): clusters 0..num_clusters-1, then one class per un-clustered sample
    (DBSCAN outliers, members dropped by the criterion, lone survivors), in sample order.
    ``alpha`` is None only when it was not given and no cluster had more than one member
    (docs/method.md#pseudo-labels, the L = 0 case: nothing is clustered then, and passing ``alpha=None``
    again on the next epoch computes it there), or when ``self_paced=False`` left it unset. ``alpha_computed`` says whether this call
    computed it (the trainer stores it on the first such epoch).
    """

    labels: np.ndarray
    num_clusters: int
    num_outliers: int
    alpha: float | None
    alpha_computed: bool
    dbscan_labels: np.ndarray  # raw DBSCAN labels at eps (-1 = outlier)
    dbscan_labels_tight: np.ndarray  # at eps - eps_gap
    dbscan_labels_loose: np.ndarray  # at eps + eps_gap
    cluster_sizes: np.ndarray  # per DBSCAN cluster at eps: members
    cluster_independence: np.ndarray  # best IoU with the loose clustering (kept when >= alpha)
    cluster_compactness: np.ndarray  # best IoU with the tight clustering (the members' bar)
    cluster_kept_members: np.ndarray  # members kept by the criterion (0: cluster rejected)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    neighbors: str = "exact"  # the search that ran: "exact" or "approximate"
    search: dict[str, float] = field(default_factory=dict)
    """What the approximate search measured of itself (``knn_recall``, ``knn_probe``,
    ``knn_exact_fallback``); empty when it did not run or was not measured."""
    search_note: str = ""
    """The approximate search's one-line account of its recall and probe (empty: none)."""

    @property
    def independence_threshold(self) -> float | None:
        """The threshold in the compared representation: keep a cluster when 1 - independence <= this."""
        return None if self.alpha is None else 1.0 - self.alpha

    def summary(self) -> str:
        """One log line: clusters, un-clustered instances, alpha, DBSCAN clusters rejected."""
        rejected = int(((self.cluster_kept_members == 0) & (self.cluster_sizes > 1)).sum())
        alpha = "none yet" if self.alpha is None else f"{self.alpha:.4f}"
        return (
            f"{self.num_clusters} clusters, {self.num_outliers} un-clustered instances, alpha {alpha}, "
            f"{rejected} of {self.cluster_sizes.shape[0]} DBSCAN clusters rejected as unreliable"
        )


def _check_settings(k1: int, k2: int, min_samples: int, alpha: float | None) -> None:
    if k1 < 1 or k2 < 1:
        raise ValueError(f"k1 and k2 must be at least 1, got k1={k1}, k2={k2}")
    if min_samples < 1:
        raise ValueError(f"min_samples must be at least 1, got {min_samples}")
    if alpha is not None and not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha is an IoU threshold in [0, 1], got {alpha}")


def labels_from_jaccard(
    distances: sp.spmatrix | np.ndarray,
    eps: float = 0.6,
    eps_gap: float = 0.02,
    min_samples: int = 4,
    alpha: float | None = None,
    *,
    self_paced: bool = True,
    show_progress: bool = False,
) -> PseudoLabels:
    """Steps 2 to 4 of docs/method.md#pseudo-labels on a Jaccard distance: sparse as ``jaccard_distance`` returns
    it (absent pairs at distance 1), or a dense N x N array.

    DBSCAN at eps - gap, eps and eps + gap, the reliability criterion with ``alpha`` (computed
    here when None and a multi-member cluster exists), and the re-indexing. ``self_paced=False``
    is the paper's ablation: every DBSCAN cluster is kept whole and alpha is left as given.
    ``show_progress`` tells the steps that run long (DBSCAN at 10^6 points).
    """
    check_radii(eps, eps_gap)
    _check_settings(1, 1, min_samples, alpha)
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    with stage(f"pseudo labels: DBSCAN at eps {eps:g} +- {eps_gap:g}", enabled=show_progress):
        labels, tight, loose = cluster_three_radii(distances, eps, eps_gap, min_samples)
    timings["dbscan"] = time.perf_counter() - clock

    clock = time.perf_counter()
    with stage("pseudo labels: cluster reliability", enabled=show_progress):
        reliability = cluster_reliability(labels, tight, loose)
    threshold = None if alpha is None else 1.0 - alpha
    alpha_computed = False
    if threshold is None and self_paced:
        threshold = independence_threshold(reliability.independence_distance, reliability.sizes)
        alpha_computed = threshold is not None
        alpha = None if threshold is None else 1.0 - threshold
    final, kept_members, num_clusters = self_paced_labels(labels, reliability, threshold, apply_criterion=self_paced)
    timings["reliability"] = time.perf_counter() - clock

    return PseudoLabels(
        labels=final,
        num_clusters=num_clusters,
        num_outliers=int(final.shape[0] - kept_members[kept_members > 1].sum()),
        alpha=alpha,
        alpha_computed=alpha_computed,
        dbscan_labels=labels,
        dbscan_labels_tight=tight,
        dbscan_labels_loose=loose,
        cluster_sizes=reliability.sizes,
        cluster_independence=reliability.independence,
        cluster_compactness=reliability.compactness,
        cluster_kept_members=kept_members,
        timings=timings,
    )


def _check_search_memory(features: Any, k1: int, device: torch.device | str | None, approximate: bool) -> None:
    """The exact search holds the normalised features in float32 and, per row, a few tiles' worth of
    candidates; the approximate one holds them in float16 and k candidates a row."""
    shape = tuple(features.shape) if hasattr(features, "shape") else np.shape(features)
    if len(shape) != 2:
        return  # as_unit_features says what is wrong
    n, d = shape
    where = device if device is not None else (features.device if isinstance(features, torch.Tensor) else "cpu")
    if approximate:
        needed = n * d * 2 + n * min(k1, n) * 12
        remedy = "run with --device cpu to give the search the machine's memory"
    else:
        needed = n * d * 4 + n * CANDIDATE_SLOTS * min(k1, n) * 12
        remedy = ("use --pseudo.neighbors approximate (float16 features), or run with --device cpu to give "
                  "the search the machine's memory")
    check_memory(needed, where, f"the neighbour search of {n} features", remedy)


def resolve_neighbors(neighbors: str, n: int, exact_up_to: int = EXACT_UP_TO) -> str:
    """The search ``neighbors`` means for N features: "exact" or "approximate".

    "auto" is exact up to ``exact_up_to`` features. Above it, without faiss, it stays exact with a
    warning (the labels are right, only slower); an explicit "approximate" without faiss is an error.
    """
    if neighbors not in ("auto", "exact", "approximate"):
        raise ValueError(f"neighbors must be 'auto', 'exact' or 'approximate', got {neighbors!r}")
    if neighbors != "auto":
        return neighbors
    if n <= exact_up_to:
        return "exact"
    if optional_faiss() is None:
        warnings.warn(
            f"{n} features are more than the {exact_up_to} that are searched exactly by default, but faiss is "
            f"not installed, so the search stays exact (N^2 work: slow at this size). {FAISS_INSTALL} "
            "to search approximately, or set neighbors='exact' to silence this.",
            stacklevel=3,
        )
        return "exact"
    return "approximate"


def generate(
    features: Any,
    eps: float = 0.6,
    eps_gap: float = 0.02,
    k1: int = 30,
    k2: int = 6,
    min_samples: int = 4,
    alpha: float | None = None,
    *,
    device: torch.device | str | None = None,
    knn_backend: str = "torch",
    faiss_index: str = "Flat",
    self_paced: bool = True,
    neighbors: str = "auto",
    exact_up_to: int = EXACT_UP_TO,
    approx_cells: int = 0,
    approx_probe: int = 8,
    approx_recall: float = 0.99,
    approx_sample: int = 1000,
) -> PseudoLabels:
    """Self-paced pseudo labels for the target instance features (N x d, numpy or torch).

    ``alpha`` is the independence threshold from the first epoch (None: compute it now, when a
    multi-member cluster exists); ``self_paced=False`` keeps every DBSCAN cluster whole (the
    paper's "without self-paced criterion" ablation). ``device`` runs the kNN search and the pair similarities there
    (e.g. "cuda").

    ``neighbors`` chooses the search: "exact" (tiled products in float32), "approximate" (an
    inverted file searched cell against cells with features in float16, ``approx_cells`` cells of
    which each is compared with at least ``approx_probe``; needs faiss, see ``spcl.neighbors.approximate``)
    or "auto": exact up to ``exact_up_to`` features (100,000), approximate above. The approximate
    search first measures its recall of the k1 nearest neighbours on ``approx_sample`` random points
    and raises its probe until the recall reaches ``approx_recall`` (0: not measured), or searches
    exactly when that probe makes it no faster; ``result.search`` and ``result.search_note`` say
    what it measured and chose. Everything after
    the search is the same for both and runs on the CPU in memory linear in the number of stored
    pairs. ``knn_backend="faiss"`` instead searches with a faiss index built from ``faiss_index``
    (a factory string, "Flat" exact). ``result.timings`` holds the seconds spent in each stage.
    """
    settings = PseudoLabelConfig(
        eps=eps, eps_gap=eps_gap, k1=k1, k2=k2, min_samples=min_samples, self_paced=self_paced,
        knn_backend=knn_backend, faiss_index=faiss_index,  # type: ignore[arg-type]
        neighbors=neighbors, exact_up_to=exact_up_to, approx_cells=approx_cells,  # type: ignore[arg-type]
        approx_probe=approx_probe, approx_recall=approx_recall, approx_sample=approx_sample,
    )
    return generate_with(features, settings, alpha, device=device)


def generate_with(
    features: Any,
    settings: PseudoLabelConfig,
    alpha: float | None = None,
    *,
    device: torch.device | str | None = None,
    show_progress: bool = False,
) -> PseudoLabels:
    """:func:`generate` with its settings as one value: the ``pseudo`` section of a run's config.

    A setting added to the config reaches the algorithm without touching its callers.
    ``settings.discard_outliers`` is not used here: it decides what the trainer does with the
    un-clustered samples, not how they are found. ``show_progress`` reports the long stages of a
    large target (with an estimate of the time left) on standard error.
    """
    s = settings
    check_radii(s.eps, s.eps_gap)
    _check_settings(s.k1, s.k2, s.min_samples, alpha)
    n = int(features.shape[0]) if hasattr(features, "shape") and len(features.shape) == 2 else 0
    search = "exact" if s.knn_backend == "faiss" else resolve_neighbors(s.neighbors, n, s.exact_up_to)
    _check_search_memory(features, s.k1, device, search == "approximate")
    clock = time.perf_counter()
    measured: dict[str, float] = {}
    note = ""
    if search == "approximate":
        unit = unit_features_half(features, device)
        index = CellIndex(unit, CellSearch(cells=s.approx_cells, probe=s.approx_probe), show_progress=show_progress)
        probe = s.approx_probe
        if s.approx_recall > 0:
            with stage(f"approximate kNN: recall on {min(n, s.approx_sample)} sampled points", enabled=show_progress):
                choice = choose_probe(index, unit, s.k1, s.approx_recall, sample=s.approx_sample)
            measured, note, probe = choice.metrics(), choice.summary(), choice.probe
            if choice.exact:
                search = "exact"
                del unit, index
                _check_search_memory(features, s.k1, device, False)
    if search == "approximate":
        ranks, similarities = index.search(unit, s.k1, probe, show_progress=show_progress)
        del index
    else:
        unit = as_unit_features(features, device)
        ranks, _ = search_unit(unit, s.k1, backend=s.knn_backend, faiss_index=s.faiss_index)
        similarities = None  # float32 features: one sampled product is faster than the look-up
    knn_seconds = time.perf_counter() - clock

    clock = time.perf_counter()
    distances = jaccard_from_neighbors(unit, ranks, s.k1, s.k2, similarities, show_progress)
    del ranks, unit, similarities
    jaccard_seconds = time.perf_counter() - clock

    result = labels_from_jaccard(
        distances, s.eps, s.eps_gap, s.min_samples, alpha, self_paced=s.self_paced, show_progress=show_progress
    )
    return replace(
        result, timings={"knn": knn_seconds, "jaccard": jaccard_seconds, **result.timings}, neighbors=search,
        search=measured, search_note=note,
    )
