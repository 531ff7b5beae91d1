"""Searching a gallery with query images (``spcl search``): the ranked gallery of each query.

Two engines, one answer format:

- exact: cosine distances in blocks of queries (the evaluation's engine,
  ``spcl.evaluation.ranked_gallery``), never the whole query x gallery matrix; ties are ordered by
  gallery index. Any gallery size; cost O(queries x gallery x d) per search.
- faiss (when installed; chosen by ``index="auto"`` from 100,000 gallery images): an inverted-file
  index (``IVF<nlist>,Flat`` on the inner product of the unit features) probed in ``nprobe`` of
  its lists, approximate but two orders of magnitude less work per query on a large gallery;
  ``index="flat"`` is faiss's exact search. A trained index can be kept next to the gallery's
  feature file: it is keyed on a digest of every feature value (computed once per search), so a
  re-extracted gallery of the same name and size never reuses an index of other features, and a
  folder that cannot hold it (read-only) only means that the index is not kept.

An approximate index knows its error: :meth:`GalleryIndex.measure_recall` compares its top-k with
the exact top-k on a sample of the queries (sample x gallery x d work), and
:meth:`GalleryIndex.tune` doubles ``nprobe`` until that recall reaches what is asked (``spcl
search --recall``, 0.95 by default). Every distance it returns is computed on the current features
(the index only proposes the candidates).

Re-ranking (k-reciprocal, k1 20, k2 6, lambda 0.3, as in evaluation) is exact and costs time in
(queries + gallery)^2: it is meant for galleries up to some tens of thousands of images.

A result lists, for each query, its top-k gallery entries with the cosine distance (or the
re-ranked distance), the entry's identity and camera when known, whether it is a true match
(same identity), and whether the evaluation protocol would ignore it (the same identity seen by
the query's own camera, or the query's own file).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spcl.evaluation import ImageSet, ranked_from_distances, ranked_gallery, re_rank
from spcl.inference.images import ImageList
from spcl.utils.files import OutputError, atomic_output, write_text
from spcl.utils.optional import need_faiss, optional_faiss

__all__ = ["INDEX_KINDS", "GalleryIndex", "Match", "QueryResult", "search_gallery", "to_rows", "to_text"]

INDEX_KINDS = ("auto", "exact", "flat", "ivf")
FAISS_FROM = 100_000  # index="auto": faiss's inverted file from this gallery size on, when installed


@dataclass
class Match:
    """One gallery entry of a ranked list."""

    rank: int
    index: int  # position in the gallery
    path: str
    distance: float
    pid: int  # -1: unknown
    camid: int  # -1: unknown
    match: bool | None  # same identity as the query (None: an identity is unknown)
    ignored: bool  # what the evaluation protocol leaves out (same identity and camera, or the query's file)

    def to_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "index": self.index, "path": self.path, "distance": round(self.distance, 6),
                "pid": self.pid, "camid": self.camid, "match": self.match, "ignored": self.ignored}


@dataclass
class QueryResult:
    """The ranked gallery of one query."""

    path: str
    pid: int
    camid: int
    matches: list[Match]

    def to_dict(self) -> dict[str, Any]:
        return {"query": self.path, "pid": self.pid, "camid": self.camid, "results": [m.to_dict() for m in self.matches]}


class GalleryIndex:
    """Gallery features ready to be searched by cosine distance (see the module docstring).

    ``kind``: "exact" (blocked torch search), "flat" (faiss exact), "ivf" (faiss inverted file,
    ``nlist`` lists, ``nprobe`` probed; defaults grow with the gallery), or "auto" (ivf from
    100,000 images when faiss is installed, exact otherwise). ``cache``: a file where the trained
    ivf index is kept and read back (it is rebuilt when any feature value differs); ``notes`` says
    what happened to it when that is worth a line (not kept: the folder is read-only)."""

    def __init__(
        self,
        features: np.ndarray | torch.Tensor,
        kind: str = "auto",
        *,
        nlist: int = 0,
        nprobe: int = 0,
        device: str | torch.device = "cpu",
        cache: str | Path | None = None,
    ) -> None:
        if kind not in INDEX_KINDS:
            raise ValueError(f"index must be one of {', '.join(INDEX_KINDS)}, got {kind!r}")
        if nlist < 0 or nprobe < 0:
            raise ValueError(f"nlist and nprobe count lists: give 0 (automatic) or more, got nlist {nlist}, nprobe {nprobe}")
        features = features.numpy() if isinstance(features, torch.Tensor) else np.asarray(features)
        if features.ndim != 2 or len(features) == 0:
            raise ValueError(f"the gallery needs an N x d feature matrix with N >= 1, got shape {features.shape}")
        self.features = np.ascontiguousarray(features, dtype=np.float32)
        self.device = torch.device(device)
        faiss = optional_faiss()
        if kind == "auto":
            kind = "ivf" if faiss is not None and len(features) >= FAISS_FROM else "exact"
        if kind in ("flat", "ivf"):
            faiss = need_faiss(f"index {kind!r}", "use --index exact")
        self.kind = kind
        self.index: Any = None
        self.notes: list[str] = []
        self._norms: np.ndarray | None = None  # of the gallery rows, computed at the first search
        if kind == "flat":
            self.index = faiss.IndexFlatIP(self.features.shape[1])
            self.index.add(self._unit(self.features))
        elif kind == "ivf":
            n = len(self.features)
            self.nlist = nlist or max(1, min(n // 39, int(4 * math.sqrt(n))))  # faiss wants >= 39 points per list
            self.nprobe = min(nprobe or max(1, self.nlist // 16), self.nlist)
            self.index = self._ivf(faiss, Path(cache) if cache else None)
            self.index.nprobe = self.nprobe

    @staticmethod
    def _unit(x: np.ndarray) -> np.ndarray:
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        return np.ascontiguousarray(x / np.maximum(norms, 1e-12), dtype=np.float32)

    def digest(self) -> str:
        """A digest of every feature value and the shape: what a kept index depends on."""
        h = hashlib.blake2b(digest_size=20)
        h.update(repr(self.features.shape).encode())
        rows = max(1, (64 * 2**20) // max(1, self.features.shape[1] * 4))
        for a in range(0, len(self.features), rows):  # 64 MiB at a time
            h.update(self.features[a : a + rows].tobytes())
        return h.hexdigest()

    def _cached(self, faiss: Any, cache: Path, key: dict[str, Any]) -> Any | None:
        key_file = Path(f"{cache}.key")
        try:
            if not (cache.is_file() and key_file.is_file()) or json.loads(key_file.read_text()) != key:
                return None
            index = faiss.read_index(str(cache))
        except (OSError, ValueError, RuntimeError):  # unreadable or damaged: built again
            return None
        if index.ntotal != len(self.features) or index.d != self.features.shape[1]:
            return None
        return index

    def _keep(self, faiss: Any, index: Any, cache: Path, key: dict[str, Any]) -> None:
        try:
            with atomic_output(cache, what="the gallery's index") as tmp:
                faiss.write_index(index, str(tmp))
            write_text(f"{cache}.key", json.dumps(key) + "\n", what="the key of the gallery's index")
        except OutputError as exc:
            self.notes.append(f"note: the trained index is not kept ({exc}); the search goes on without it")

    def _ivf(self, faiss: Any, cache: Path | None) -> Any:
        key = {"digest": self.digest(), "nlist": self.nlist, "shape": list(self.features.shape)} if cache else {}
        if cache is not None:
            kept = self._cached(faiss, cache, key)
            if kept is not None:
                return kept
        d = self.features.shape[1]
        index = faiss.index_factory(d, f"IVF{self.nlist},Flat", faiss.METRIC_INNER_PRODUCT)
        unit = self._unit(self.features)
        # a seeded training sample of 64 points per list (faiss asks for 39 to 256): k-means on it
        # costs a quarter of faiss's default on a million images, and the same gallery gives the same index
        rng = np.random.default_rng(0)
        sample = unit[np.sort(rng.choice(len(unit), min(len(unit), 64 * self.nlist), replace=False))]
        index.train(sample)
        index.add(unit)
        if cache is not None:
            self._keep(faiss, index, cache, key)
        return index

    def __len__(self) -> int:
        return len(self.features)

    def search(self, queries: np.ndarray | torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Indices (Q x k, int64; -1 past the gallery's end) and cosine distances (float64, inf there)."""
        queries = queries.numpy() if isinstance(queries, torch.Tensor) else np.asarray(queries)
        if queries.ndim != 2 or queries.shape[1] != self.features.shape[1]:
            raise ValueError(
                f"query features of shape {queries.shape} do not fit a gallery of {self.features.shape[1]}-d features: "
                "were both made by the same model?"
            )
        if self.index is None:
            return ranked_gallery(ImageSet(queries), ImageSet(self.features), k, "cosine", device=self.device)
        unit_queries = self._unit(np.ascontiguousarray(queries, dtype=np.float32))
        _, index = self.index.search(unit_queries, min(k, len(self)))
        index = np.where((index >= 0) & (index < len(self)), index, -1).astype(np.int64)
        # the index proposes candidates; their distances are computed on the current features
        if self._norms is None:
            self._norms = np.maximum(np.linalg.norm(self.features, axis=1), 1e-12)
        norms = self._norms
        distances = np.empty(index.shape, dtype=np.float64)
        step = max(1, 2**22 // max(1, index.shape[1] * self.features.shape[1]))  # 16 MiB of gathered rows
        for a in range(0, len(index), step):
            block = np.maximum(index[a : a + step], 0)
            sims = np.einsum("qkd,qd->qk", self.features[block], unit_queries[a : a + step]) / norms[block]
            distances[a : a + step] = 1.0 - sims.astype(np.float64)
        distances = np.where(index < 0, np.inf, distances)
        order = np.lexsort((np.where(index < 0, np.iinfo(np.int64).max, index), distances), axis=1)
        index, distances = np.take_along_axis(index, order, 1), np.take_along_axis(distances, order, 1)
        out_i = np.full((len(queries), k), -1, dtype=np.int64)
        out_d = np.full((len(queries), k), np.inf)
        out_i[:, : index.shape[1]], out_d[:, : index.shape[1]] = index, distances
        return out_i, out_d

    def measure_recall(self, queries: np.ndarray | torch.Tensor, k: int, *, sample: int = 500, seed: int = 0) -> float:
        """Recall@k of this index: the share of the exact top-k gallery entries that its top-k holds,
        on ``sample`` random queries (all of them when fewer). 1.0 for the exact kinds."""
        if self.kind in ("exact", "flat"):
            return 1.0
        queries = queries.numpy() if isinstance(queries, torch.Tensor) else np.asarray(queries)
        k = min(k, len(self))
        rng = np.random.default_rng(seed)
        rows = np.sort(rng.choice(len(queries), size=min(sample, len(queries)), replace=False))
        chosen = np.ascontiguousarray(queries[rows], dtype=np.float32)
        exact, _ = ranked_gallery(ImageSet(chosen), ImageSet(self.features), k, "cosine", device=self.device)
        found, _ = self.search(chosen, k)
        hits = (exact[:, :, None] == found[:, None, :]).any(axis=2) & (exact >= 0)
        return float(hits.sum() / max(1, (exact >= 0).sum()))

    def tune(
        self, queries: np.ndarray | torch.Tensor, k: int, target: float, *, sample: int = 500, seed: int = 0
    ) -> tuple[float, int]:
        """Double ``nprobe`` until the measured recall@k reaches ``target`` (or every list is probed);
        returns (recall, nprobe). An exact index returns (1.0, 0)."""
        if not 0.0 <= target <= 1.0:
            raise ValueError(f"the recall to reach is a share in [0, 1], got {target}")
        if self.index is None or self.kind == "flat":
            return 1.0, 0
        recall = self.measure_recall(queries, k, sample=sample, seed=seed)
        while recall < target and self.nprobe < self.nlist:
            self.nprobe = min(self.nlist, 2 * self.nprobe)
            self.index.nprobe = self.nprobe
            recall = self.measure_recall(queries, k, sample=sample, seed=seed)
        return recall, self.nprobe


def search_gallery(
    query_features: np.ndarray,
    queries: ImageList,
    gallery: GalleryIndex,
    gallery_images: ImageList,
    topk: int = 10,
    *,
    rerank: bool = False,
) -> list[QueryResult]:
    """The top-k gallery entries of every query, with what is known of each (see the module docstring)."""
    if topk < 1:
        raise ValueError(f"topk must be at least 1, got {topk}")
    if len(query_features) != len(queries) or len(gallery) != len(gallery_images):
        raise ValueError("one feature row per image is needed on both sides")
    if rerank:
        distances = re_rank(query_features, gallery.features)
        index, dist = ranked_from_distances(distances, ImageSet(), ImageSet(), topk)
    else:
        index, dist = gallery.search(query_features, topk)
    results = []
    for q, path in enumerate(queries.paths):
        qpid, qcam = int(queries.pids[q]), int(queries.camids[q])
        matches = []
        for rank, (g, d) in enumerate(zip(index[q], dist[q]), start=1):
            if g < 0:
                break
            gpid, gcam = int(gallery_images.pids[g]), int(gallery_images.camids[g])
            known = qpid >= 0 and gpid >= 0
            same_file = os.path.normpath(gallery_images.paths[g]) == os.path.normpath(path)
            ignored = same_file or (known and gpid == qpid and qcam >= 0 and gcam == qcam)
            matches.append(Match(rank, int(g), gallery_images.paths[g], float(d), gpid, gcam,
                                 (gpid == qpid) if known else None, ignored))
        results.append(QueryResult(path, qpid, qcam, matches))
    return results


def _who(pid: int, camid: int, camera: str = "camera") -> str:
    parts = ([f"id {pid}"] if pid >= 0 else []) + ([f"{camera} {camid}"] if camid >= 0 else [])
    return f" ({', '.join(parts)})" if parts else ""


def to_text(results: list[QueryResult], engine: str = "") -> str:
    """The ranked lists as a readable table, one block per query."""
    lines = []
    for number, result in enumerate(results, start=1):
        lines.append(f"query {number}/{len(results)}: {result.path}{_who(result.pid, result.camid)}"
                     + (f"  [{engine}]" if engine and number == 1 else ""))
        lines.append(f"  {'rank':>4}  {'distance':>8}  {'match':<7} gallery")
        for m in result.matches:
            verdict = "-" if m.match is None else ("yes" if m.match else "no")
            note = "  [ignored by the protocol]" if m.ignored else ""
            lines.append(f"  {m.rank:>4}  {m.distance:>8.4f}  {verdict:<7} {m.path}{_who(m.pid, m.camid)}{note}")
    return "\n".join(lines)


def to_rows(results: list[QueryResult]) -> list[Any]:
    """The ranked lists as rows of the ranked-list picture."""
    from spcl.inference.ranklist import Entry, Row

    rows = []
    for r in results:
        # "cam": the picture's captions are one thumbnail wide
        entries = [Entry(m.path, f"#{m.rank}  {m.distance:.3f}", _who(m.pid, m.camid, "cam").strip(" ()"),
                         match=m.match, ignored=m.ignored) for m in r.matches]
        rows.append(Row(r.path, "query", entries, detail=_who(r.pid, r.camid, "cam").strip(" ()") or Path(r.path).name))
    return rows
