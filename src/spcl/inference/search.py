"""Searching a gallery with query images (``spcl search``): the ranked gallery of each query.

Two engines, one answer format:

- exact: cosine distances in blocks of queries (the evaluation's engine,
  ``spcl.evaluation.ranked_gallery``), never the whole query x gallery matrix; ties are ordered by
  gallery index. Any gallery size; cost O(queries x gallery x d) per search.
- faiss (when installed; chosen by ``index="auto"`` from 100,000 gallery images): an inverted-file
  index (``IVF<nlist>,Flat`` on the inner product of the unit features) probed in ``nprobe`` of
  its lists, approximate but two orders of magnitude less work per query on a large gallery;
  ``index="flat"`` is faiss's exact search. A trained index can be kept next to the gallery's
  feature file and is reused while that file is unchanged.

Re-ranking (k-reciprocal, k1 20, k2 6, lambda 0.3, as in evaluation) is exact and costs time in
(queries + gallery)^2: it is meant for galleries up to some tens of thousands of images.

A result lists, for each query, its top-k gallery entries with the cosine distance (or the
re-ranked distance), the entry's identity and camera when known, whether it is a true match
(same identity), and whether the evaluation protocol would ignore it (the same identity seen by
the query's own camera, or the query's own file).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spcl.evaluation import ImageSet, ranked_from_distances, ranked_gallery, re_rank
from spcl.inference.images import ImageList
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
    ivf index is kept and read back (it is rebuilt when the gallery differs)."""

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

    def _ivf(self, faiss: Any, cache: Path | None) -> Any:
        fingerprint = f"{self.features.shape}|{float(self.features[:: max(1, len(self.features) // 997)].sum()):.6e}|{self.nlist}"
        if cache is not None and cache.is_file() and Path(f"{cache}.key").is_file():
            if Path(f"{cache}.key").read_text() == fingerprint:
                return faiss.read_index(str(cache))
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
            tmp = cache.with_name(f".{cache.name}.tmp")
            faiss.write_index(index, str(tmp))
            os.replace(tmp, cache)
            Path(f"{cache}.key").write_text(fingerprint)
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
        sims, index = self.index.search(self._unit(np.ascontiguousarray(queries, dtype=np.float32)), min(k, len(self)))
        distances = np.where(index < 0, np.inf, 1.0 - sims.astype(np.float64))
        out_i = np.full((len(queries), k), -1, dtype=np.int64)
        out_d = np.full((len(queries), k), np.inf)
        out_i[:, : index.shape[1]], out_d[:, : index.shape[1]] = index, distances
        return out_i, out_d


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
