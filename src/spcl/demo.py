"""The CPU demo: synthetic source -> synthetic target, source-only vs SpCL (and the paper's ablations,
or the successor methods beside SpCL).

It uses the same trainer and config as the paper presets; only the settings in ``configs/demo.yaml``
differ (a small ResNet trained from scratch on 64x32 images, a few short epochs), so a newcomer sees
SpCL learn within minutes on a laptop CPU.
"""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from spcl.config import load_config

# name -> (mode, overrides): the runs of the demo table, baseline first.
RUNS: dict[str, tuple[str, dict[str, Any]]] = {
    "source-only": ("source-only", {}),
    "SpCL (UDA)": ("uda", {}),
}
ABLATIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "SpCL w/o outliers (discard them)": ("uda", {"pseudo.discard_outliers": True}),
    "SpCL w/o self-paced criterion": ("uda", {"pseudo.self_paced": False}),
    "SpCL w/o DSBN": ("uda", {"model.dsbn": False}),
    "SpCL w/o source data (USL)": ("usl", {}),
    "oracle (target labels)": ("oracle", {}),
}
# Each method with its own hyper-parameters (the memory class's defaults); everything else is the
# demo's setting
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "SpCL (USL)": ("usl", {}),
    "Cluster Contrast (UDA)": ("uda", {"memory.kind": "cluster"}),
    "Cluster Contrast (USL)": ("usl", {"memory.kind": "cluster"}),
    "camera-aware proxies (UDA)": ("uda", {"memory.kind": "cap"}),
    "camera-aware proxies (USL)": ("usl", {"memory.kind": "cap"}),
    "O2CAP (UDA)": ("uda", {"memory.kind": "o2cap"}),
    "O2CAP (USL)": ("usl", {"memory.kind": "o2cap"}),
}


def _slug(name: str) -> str:
    """The run's folder: "SpCL (UDA)" -> "spcl" (the folder earlier demos wrote), others spelled out."""
    if name in RUNS or name in ABLATIONS:
        return name.split(" (")[0].lower().replace(" ", "-").replace("/", "")
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def run_demo(
    data_root: str = "data",
    output: str = "runs/demo",
    seeds: list[int] | tuple[int, ...] = (0,),
    ablations: bool = False,
    device: str = "auto",
    methods: bool = False,
    epochs: int | None = None,
    progress: bool = True,
    only: list[str] | tuple[str, ...] | None = None,
) -> dict[str, list[dict[str, float]]]:
    """Train every run of the table for each seed and print mean (and spread over seeds):
    source-only and SpCL, plus the paper's ablations (``ablations``) and the successor methods in the
    same trainer (``methods``). ``only`` keeps the runs whose name contains one of its strings, so a
    table too long for one sitting can be measured in parts (each run also records its seconds)."""
    from spcl.data import load
    from spcl.training import Trainer

    runs = dict(RUNS, **(ABLATIONS if ablations else {}), **(METHODS if methods else {}))
    if only:
        runs = {name: run for name, run in runs.items() if any(part.lower() in name.lower() for part in only)}
        if not runs:
            raise ValueError(f"no run of the table matches {list(only)}")
    started = time.time()
    for name in ("synth-source", "synth-target"):
        print(load(name, data_root).format_statistics())
    results: dict[str, list[dict[str, float]]] = {name: [] for name in runs}
    quality: list[dict[str, Any]] = []
    for seed in seeds:
        for name, (mode, overrides) in runs.items():
            slug = _slug(name)
            values = {
                "mode": mode, "data.root": data_root, "seed": seed, "device": device,
                "output": str(Path(output) / f"seed{seed}" / slug), **overrides,
            }
            if mode == "usl" or mode == "oracle":
                values["data.source"] = None
            if epochs is not None:
                values["optim.epochs"] = epochs
            config = load_config("demo", values)
            print(f"\n== {name} (seed {seed}) ==")
            run_started = time.time()
            trainer = Trainer(config, progress=progress)
            history = trainer.fit()
            final = dict(history[-1].eval) if history else {}
            final["seconds"] = round(time.time() - run_started, 1)
            results[name].append(final)
            if name == "SpCL (UDA)":
                quality.extend({"seed": seed, "epoch": e.epoch, **e.quality, "clusters": e.num_clusters,
                                "outliers": e.num_outliers} for e in history)
    table = format_table(results)
    print("\nTarget domain (synth-target), last epoch:")
    print(table)
    if quality:
        print("\nSpCL pseudo-label quality per epoch (pairwise precision / recall against the true identities):")
        print(format_quality(quality))
    print(f"\ntotal time {time.time() - started:.0f}s")
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"results": results, "pseudo_label_quality": quality}, indent=2))
    (out / "results.md").write_text(table + "\n")
    return results


def merge_results(paths: list[str] | tuple[str, ...]) -> dict[str, list[dict[str, float]]]:
    """The rows of several ``results.json`` (a table measured in parts: other seeds, ``only``), in
    the order the table lists its runs; a run's seeds are appended in the order of ``paths``."""
    merged: dict[str, list[dict[str, float]]] = {}
    for path in paths:
        try:
            results = json.loads(Path(path).read_text())["results"]
        except (OSError, ValueError, KeyError) as error:
            raise ValueError(f"{path} is not a results.json written by spcl demo ({error})") from error
        for name, rows in results.items():
            merged.setdefault(name, []).extend(rows)
    order = [*RUNS, *ABLATIONS, *METHODS]
    return dict(sorted(merged.items(), key=lambda item: order.index(item[0]) if item[0] in order else len(order)))


def _mean_spread(values: list[float]) -> str:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return "-"
    mean = 100 * float(np.mean(values))
    if len(values) == 1:
        return f"{mean:.1f}"
    return f"{mean:.1f} ± {100 * float(np.std(values, ddof=1)):.1f}"


def format_table(results: dict[str, list[dict[str, float]]]) -> str:
    timed = any("seconds" in r for rows in results.values() for r in rows)
    lines = ["| method | mAP | rank-1 | rank-5 | seeds |" + (" minutes a run |" if timed else ""),
             "| --- | --- | --- | --- | --- |" + (" --- |" if timed else "")]
    for name, rows in results.items():
        line = (f"| {name} | {_mean_spread([r.get('mAP') for r in rows])} | {_mean_spread([r.get('rank1') for r in rows])} "
                f"| {_mean_spread([r.get('rank5') for r in rows])} | {len(rows)} |")
        if timed:
            seconds = [r["seconds"] for r in rows if "seconds" in r]
            line += f" {np.mean(seconds) / 60:.1f} |" if seconds else " - |"
        lines.append(line)
    return "\n".join(lines)


def format_quality(rows: list[dict[str, Any]]) -> str:
    lines = ["| seed | epoch | clusters | outliers | precision | recall | NMI |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        if "pair_precision" not in r:
            continue
        lines.append(
            f"| {r['seed']} | {r['epoch']} | {r['clusters']} | {r['outliers']} | {r['pair_precision']:.3f} "
            f"| {r['pair_recall']:.3f} | {r['nmi']:.3f} |"
        )
    return "\n".join(lines)
