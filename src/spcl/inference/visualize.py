"""``spcl visualize``: the ranked lists of an evaluation's worst and best queries, as PNG.

Reads what every evaluation writes (``per_query.csv``: AP per query; ``ranked.csv``: the first
gallery entries of each query's ranked list, as the metrics scored it) from a run folder (its
newest ``eval-epochN/``), an ``eval-<dataset>/`` folder of ``spcl eval``, or any folder holding the
two files. No model and no feature is needed.
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spcl.inference.ranklist import Entry, Row, draw_ranked_lists, thumb_size

__all__ = ["EvaluationLists", "find_evaluation", "read_evaluation", "visualize_run"]


@dataclass
class EvaluationLists:
    """The per-query results of one evaluation folder."""

    folder: Path
    queries: list[dict[str, str]]  # per_query.csv rows
    ranked: dict[int, list[dict[str, str]]]  # query index -> its ranked.csv rows in rank order

    @property
    def ap(self) -> np.ndarray:
        return np.array([float(q["ap"]) if q["ap"] not in ("", "nan") else math.nan for q in self.queries])


def _epoch_of(folder: Path) -> int:
    match = re.fullmatch(r"eval-epoch(\d+)", folder.name)
    return int(match.group(1)) if match else -1


def find_evaluation(path: str | Path) -> Path:
    """The evaluation folder ``path`` names: itself when it holds ``per_query.csv``, else the newest
    ``eval-epochN`` (or the one ``eval-*`` folder) inside it."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such folder (expected a run folder or an evaluation folder)")
    if (path / "per_query.csv").is_file():
        return path
    found = [p for p in path.glob("eval-*") if (p / "per_query.csv").is_file()]
    epochs = [p for p in found if _epoch_of(p) >= 0]
    if epochs:
        return max(epochs, key=_epoch_of)
    if len(found) == 1:
        return found[0]
    if found:
        names = ", ".join(sorted(p.name for p in found))
        raise ValueError(f"{path} holds several evaluations ({names}): name the one to show")
    raise FileNotFoundError(
        f"{path}: no evaluation results (per_query.csv and ranked.csv in {path} or in an eval-*/ folder inside it); "
        "a run writes them when it evaluates, spcl eval next to the checkpoint"
    )


def read_evaluation(folder: str | Path) -> EvaluationLists:
    """The per-query results and ranked lists of an evaluation folder."""
    folder = find_evaluation(folder)
    with open(folder / "per_query.csv", newline="") as fh:
        queries = list(csv.DictReader(fh))
    ranked_file = folder / "ranked.csv"
    if not ranked_file.is_file():
        raise FileNotFoundError(
            f"{folder} has per-query results but no ranked.csv (written by evaluations of this version): "
            "evaluate the checkpoint again with spcl eval"
        )
    ranked: dict[int, list[dict[str, str]]] = {}
    with open(ranked_file, newline="") as fh:
        for row in csv.DictReader(fh):
            ranked.setdefault(int(row["query_index"]), []).append(row)
    for rows in ranked.values():
        rows.sort(key=lambda r: int(r["rank"]))
    return EvaluationLists(folder, queries, ranked)


def _spread(order: np.ndarray, ap: np.ndarray, count: int) -> list[int]:
    """The first ``count`` queries of ``order``, except that among queries tied at the boundary
    AP (often many at AP = 1) an evenly spaced selection is taken, so the picture is not one
    identity's queries side by side."""
    if len(order) <= count:
        return [int(i) for i in order]
    boundary = ap[order[count - 1]]
    sure = [int(i) for i in order[:count] if ap[i] != boundary]
    tied = [int(i) for i in order if ap[i] == boundary]
    need = count - len(sure)
    picks = np.linspace(0, len(tied) - 1, need).round().astype(int) if need > 0 else []
    return sure + [tied[p] for p in picks]


def _row(lists: EvaluationLists, q: int, topk: int) -> Row:
    query = lists.queries[q]
    entries = []
    for r in lists.ranked.get(q, [])[:topk]:
        camera = f" c{r['camid']}" if r["camid"] != "" else ""
        entries.append(Entry(r["gallery"], f"#{r['rank']}  {float(r['distance']):.3f}", f"id {r['pid']}{camera}",
                             match=r["match"] == "1"))
    camera = f" c{query['camid']}" if query["camid"] != "" else ""
    ap = float(query["ap"]) if query["ap"] not in ("", "nan") else math.nan
    first = int(query["first_match_rank"])
    note = f"AP {100 * ap:.1f}%" + (f", 1st match #{first}" if first > 0 else "")
    return Row(query["query"], f"query id {query['pid']}{camera}", entries, note=note)


def visualize_run(
    path: str | Path, out: str | Path | None = None, *, count: int = 10, topk: int = 10,
    thumb: tuple[int, int] | None = None,
) -> dict[str, list[Path]]:
    """Draw the ``count`` worst and best queries (by AP) of an evaluation with their ``topk``
    entries; writes ``worst.png`` and ``best.png`` into ``out`` (default: ``<evaluation>/ranked/``).
    Returns the files by name."""
    if count < 1 or topk < 1:
        raise ValueError(f"count and topk must be at least 1, got {count}, {topk}")
    lists = read_evaluation(path)
    ap = lists.ap
    valid = np.flatnonzero(~np.isnan(ap))
    if not len(valid):
        raise ValueError(f"{lists.folder}: no query has a valid match, so none has an AP to rank by")
    out = Path(out) if out else lists.folder / "ranked"
    worst = valid[np.argsort(ap[valid], kind="stable")]
    best = valid[np.argsort(-ap[valid], kind="stable")]
    where = lists.folder.name
    thumb = thumb or thumb_size(lists.queries[int(valid[0])]["query"])
    written = {}
    for name, order, label in (("worst", worst, "lowest"), ("best", best, "highest")):
        chosen = _spread(order, ap, count)
        rows = [_row(lists, q, topk) for q in chosen]
        title = f"{where}: the {len(rows)} queries with the {label} AP, top {topk} of the ranked gallery"
        written[name] = draw_ranked_lists(rows, out / f"{name}.png", title=title, thumb=thumb)
    return written
