"""``spcl eval``: a checkpoint's encoder on a dataset's test split (or on the domain-generalisation
sets, each averaged over its splits), with the preprocessing and BN branch the checkpoint records;
metrics printed first, then written next to the checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from collections.abc import Sequence

from spcl.data import load
from spcl.evaluation import evaluate_model, format_result, save_results
from spcl.evaluation.dg import DG_DATASETS, DG_SPLITS, evaluate_dg, format_dg_table
from spcl.inference.extractor import Preprocessing
from spcl.models import load_model
from spcl.utils import resolve_device, write_csv

__all__ = ["evaluate_checkpoint", "evaluate_checkpoint_dg"]


def _test_transform(state: dict[str, Any]) -> Any:
    """The preprocessing the checkpoint records: size, interpolation and normalisation (0.5 / 0.5
    for the LUPerson ViTs, ImageNet's for the others)."""
    return Preprocessing.from_checkpoint(state).transform()


def evaluate_checkpoint(
    checkpoint: str | Path,
    dataset: str,
    data_root: str = "data",
    rerank: bool = False,
    test_source: bool = False,
    device: str = "auto",
    output: str | Path | None = None,
    batch_size: int = 128,
    workers: int = 2,
    progress: bool = True,
    **options: Any,
) -> dict[str, Any]:
    """Evaluate a checkpoint on a dataset (name or path; ``options`` go to its reader, e.g.
    ``test_size`` for VehicleID, whose 10 gallery draws are averaged). ``test_source`` uses the
    source BN branch of a DSBN model. Prints the result and writes the per-query (or per-draw)
    file into ``output`` (default: ``eval-<dataset>/`` next to the checkpoint)."""
    dev = resolve_device(device)
    model, state = load_model(checkpoint, dev)
    data = load(dataset, data_root, **options)
    transform = _test_transform(state)
    result = evaluate_model(
        model, data, transform, dev, domain=0 if test_source else -1, rerank=rerank, batch_size=batch_size,
        workers=workers, progress=progress,
    )
    title = f"{Path(checkpoint).name} on {data.name}" + (" (re-ranked)" if rerank else "")
    print(format_result(result, title))
    out_dir = Path(output) if output else Path(checkpoint).parent / f"eval-{data.name}"
    written = save_results(result, out_dir, data.query, data.gallery)
    print(f"{'per-query' if written.name == 'per_query.csv' else 'per-draw'} results: {written}")
    return result


def evaluate_checkpoint_dg(
    checkpoint: str | Path,
    data_root: str = "data",
    datasets: Sequence[str] = DG_DATASETS,
    test_source: bool = False,
    device: str = "auto",
    output: str | Path | None = None,
    batch_size: int = 128,
    workers: int = 2,
    progress: bool = True,
) -> dict[str, dict[str, Any]]:
    """The domain-generalisation protocol: the checkpoint on each of ``datasets`` present under
    ``data_root`` (VIPeR, PRID, GRID, iLIDS), each averaged over its 10 splits. Prints one table and
    writes ``dg.csv`` (one row per set and split) into ``output`` (default: ``eval-dg/`` next to
    the checkpoint)."""
    dev = resolve_device(device)
    model, state = load_model(checkpoint, dev)
    results = evaluate_dg(
        model, data_root, _test_transform(state), dev, datasets, domain=0 if test_source else -1,
        batch_size=batch_size, workers=workers, progress=progress,
    )
    print(f"{Path(checkpoint).name}: domain generalisation, each set averaged over {DG_SPLITS} splits (%)")
    print(format_dg_table(results))
    rows = [
        [name, k, f"{result['split_mAP'][k]:.6f}", *(f"{result['split_cmc'][k][r - 1]:.6f}" for r in (1, 5, 10))]
        for name, result in results.items() for k in range(len(result["split_mAP"]))
    ]
    out_dir = Path(output) if output else Path(checkpoint).parent / "eval-dg"
    written = write_csv(out_dir / "dg.csv", ["dataset", "split", "mAP", "rank1", "rank5", "rank10"], rows)
    print(f"per-split results: {written}")
    return results
