"""Self-describing checkpoints, written atomically and read with ``weights_only=True``.

A checkpoint carries what is needed to rebuild the model without the training config at hand
(architecture, feature size, BN domains, preprocessing) and what is needed to resume exactly
(optimizer, scheduler, memory, alpha, epoch, RNG state), plus fingerprints of the training lists so a
resume on different data is refused instead of silently mixing memory slots.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spcl.config import Config, ModelConfig, load_config
from spcl.data.transforms import IMAGENET_MEAN, IMAGENET_STD

FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint is unreadable, of another format, or does not match the run that loads it."""


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write to a temporary file in the same folder, then rename: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        found = state.get("format_version") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(
            f"{path} is not an spcl checkpoint of format {FORMAT_VERSION} (found {found!r})"
        )
    return state


def model_description(model_cfg: ModelConfig, out_features: int, bn_domains: int, height: int, width: int) -> dict:
    return {
        "arch": model_cfg.arch,
        "features": model_cfg.features,
        "out_features": out_features,
        "pooling": model_cfg.pooling,
        "dropout": model_cfg.dropout,
        "bn_domains": bn_domains,
        "images_per_bn": model_cfg.images_per_bn,
        "preprocessing": {
            "height": height,
            "width": width,
            "interpolation": "bicubic",
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
        },
    }


def build_model(description: dict[str, Any], pretrained: bool | str = False) -> nn.Module:
    """Rebuild the encoder a checkpoint describes (weights are loaded by the caller)."""
    from spcl.models import build_encoder, convert_dsbn, set_images_per_bn

    model = build_encoder(
        description["arch"],
        pretrained=pretrained,
        pooling=description["pooling"],
        features=description["features"],
        dropout=description["dropout"],
    )
    if description["bn_domains"] > 1:
        convert_dsbn(model, num_domains=description["bn_domains"])
    set_images_per_bn(model, description["images_per_bn"] or None)
    return model


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """The trained encoder of a checkpoint, in eval mode, and the checkpoint's description."""
    state = load_checkpoint(path)
    model = build_model(state["model"])
    model.load_state_dict(state["state_dict"])
    return model.to(device).eval(), state


def config_of(state: dict[str, Any]) -> Config:
    return load_config(overrides=_flatten(state["config"]))


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


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
    **options: Any,
) -> dict[str, Any]:
    """Evaluate a checkpoint on a dataset's query/gallery split; print and save the results."""
    from spcl.data import load
    from spcl.data.transforms import build_test_transform
    from spcl.models import use_domain
    from spcl.training.trainer import evaluate_model, resolve_device

    dev = resolve_device(device)
    model, state = load_model(checkpoint, dev)
    prep = state["model"]["preprocessing"]
    data = load(dataset, data_root, **options)
    transform = build_test_transform(prep["height"], prep["width"])
    if data.name.startswith("vehicleid-"):
        return _evaluate_vehicleid(model, data, transform, dev, batch_size, workers, test_source)
    with use_domain(model, 0 if test_source else -1):
        result = evaluate_model(
            model, data, transform, dev, batch_size=batch_size, workers=workers, rerank=rerank,
        )
    out_dir = Path(output) if output else Path(checkpoint).parent / f"eval-{data.name}"
    save_per_query(result, out_dir, data)
    print(format_result(result, f"{Path(checkpoint).name} on {data.name}" + (" (re-ranked)" if rerank else "")))
    print(f"per-query results: {out_dir / 'per_query.csv'}")
    return result


def format_result(result: dict[str, Any], title: str) -> str:
    cmc = result["cmc"]
    ranks = "  ".join(f"rank-{k}: {100 * cmc[k - 1]:.1f}" for k in (1, 5, 10) if k <= len(cmc))
    return f"{title}: mAP {100 * result['mAP']:.1f}  {ranks}"


def save_per_query(result: dict[str, Any], folder: str | Path, data: Any) -> None:
    """One row per query: its file, identity, AP and the rank of its first true match (for ranked-list views)."""
    import csv

    import numpy as np

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ap = np.asarray(result.get("ap", []))
    first = np.asarray(result.get("first_match_rank", []))
    tmp = folder / ".per_query.csv.tmp"
    with open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["query", "pid", "camid", "ap", "first_match_rank"])
        for i, (path, pid, cam) in enumerate(data.query):
            a = ap[i] if i < len(ap) else float("nan")
            r = int(first[i]) if i < len(first) else -1
            writer.writerow([path, pid, cam, f"{a:.6f}", r])
    os.replace(tmp, folder / "per_query.csv")


def _evaluate_vehicleid(model, data, transform, device, batch_size: int, workers: int, test_source: bool) -> dict:
    """The VehicleID protocol: 10 seeded gallery draws over the whole test list, mean and spread."""
    import numpy as np

    from spcl.evaluation import evaluate_vehicleid
    from spcl.evaluation.features import extract_features
    from spcl.models import use_domain

    # the reader numbers VehicleID "cameras" by test-list position, so sorting restores the list
    test = sorted(data.query + data.gallery, key=lambda item: item[2])
    with use_domain(model, 0 if test_source else -1):
        feats = extract_features(model, test, transform, device, batch_size, workers, "test features")
    result = evaluate_vehicleid(feats, np.array([p for _, p, _ in test]), device=device)
    cmc, std = result["cmc"], result["cmc_std"]
    print(
        f"{data.name} ({result['num_identities']} identities, 10 draws): mAP {100 * result['mAP']:.1f} "
        f"+- {100 * result['mAP_std']:.1f}  rank-1 {100 * cmc[0]:.1f} +- {100 * std[0]:.1f}  "
        f"rank-5 {100 * cmc[4]:.1f} +- {100 * std[4]:.1f}"
    )
    return dict(result)
