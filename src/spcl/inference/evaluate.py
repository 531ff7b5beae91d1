"""``spcl eval``: a checkpoint's encoder on a dataset's test split, with the preprocessing and BN
branch the checkpoint records; metrics printed first, then written next to the checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from spcl.data import load
from spcl.data.transforms import build_test_transform
from spcl.evaluation import evaluate_model, format_result, save_results
from spcl.models import load_model
from spcl.utils import resolve_device

__all__ = ["evaluate_checkpoint"]


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
    prep = state["model"]["preprocessing"]
    data = load(dataset, data_root, **options)
    transform = build_test_transform(prep["height"], prep["width"])
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
