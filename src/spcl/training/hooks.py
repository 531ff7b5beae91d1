"""Hooks: the stages of ``Trainer.fit`` that come after an epoch's training (evaluate, checkpoint,
log), and the place to add more (mid-epoch checkpoints, signals, reporting) without editing the loop.

A hook overrides the moments it needs; ``Trainer(config, hooks=...)`` takes the list, run in
order at every moment (``default_hooks()`` when not given). ``after_train`` runs also when
training stopped with an error, so files and threads are released. ``TrainerView`` is what a
hook may read and call on the trainer; ``EpochLog`` and ``StepLosses`` are the records it gets.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from spcl.config import Config
from spcl.data import Dataset
from spcl.evaluation import save_results
from spcl.training.checkpoint import load_checkpoint

__all__ = [
    "Checkpointing",
    "ConsoleLog",
    "EpochLog",
    "Evaluation",
    "Hook",
    "MetricsLog",
    "StepLosses",
    "TrainerView",
    "default_hooks",
]


@dataclass
class EpochLog:
    """What one epoch did: its mean losses, the target labels it trained on, and its evaluation."""

    epoch: int
    loss: float
    loss_source: float = float("nan")
    loss_target: float = float("nan")
    num_clusters: int = 0
    num_outliers: int = 0
    alpha: float = float("nan")
    lr: float = 0.0
    seconds: float = 0.0
    quality: dict[str, float] = field(default_factory=dict)
    eval: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class StepLosses:
    """The losses of one training step (NaN for a domain the run does not train on)."""

    iteration: int
    loss: float
    loss_source: float
    loss_target: float


class TrainerView(Protocol):
    """The part of ``spcl.training.Trainer`` that hooks use."""

    config: Config
    output: Path
    device: torch.device
    source: Dataset | None
    target: Dataset
    train_target: bool
    num_source_classes: int
    epoch: int
    best: dict[str, float]

    def log(self, message: str) -> None: ...

    def evaluate(self, on_source: bool = False, rerank: bool | None = None) -> dict[str, Any]: ...

    def save(self, name: str) -> Path: ...

    def load_state(self, state: dict[str, Any]) -> None: ...


class Hook:
    """Extension point of ``Trainer.fit``; every method is a no-op here."""

    def before_train(self, trainer: TrainerView) -> None:
        """After the trainer is built, before the memory is initialised."""

    def before_epoch(self, trainer: TrainerView) -> None:
        """Before the epoch's pseudo labels."""

    def after_step(self, trainer: TrainerView, losses: StepLosses) -> None:
        """After each optimizer step and memory update."""

    def after_epoch(self, trainer: TrainerView, entry: EpochLog) -> None:
        """After the epoch's training; ``entry`` is its record (hooks may add to it)."""

    def after_train(self, trainer: TrainerView) -> None:
        """When ``fit`` ends, normally or with an error."""


class Evaluation(Hook):
    """Every ``eval.every`` epochs and after the last one: mAP / CMC on the target (SPEC section 8),
    its per-query results in ``eval-epochN/``, and the best mAP so far."""

    def after_epoch(self, trainer: TrainerView, entry: EpochLog) -> None:
        c = trainer.config
        final = trainer.epoch == c.optim.epochs
        if not ((c.eval.every > 0 and trainer.epoch % c.eval.every == 0) or final) or not trainer.target.query:
            return
        result = trainer.evaluate()
        cmc = result["cmc"]
        entry.eval = {"mAP": float(result["mAP"]), "rank1": float(cmc[0]), "rank5": float(cmc[4]), "rank10": float(cmc[9])}
        save_results(result, trainer.output / f"eval-epoch{trainer.epoch}", trainer.target.query)
        if entry.eval["mAP"] > trainer.best["mAP"]:
            trainer.best = {"mAP": entry.eval["mAP"], "epoch": trainer.epoch}


class Checkpointing(Hook):
    """The run folder: ``config.yaml``, resuming from ``last.pth``, and after every epoch
    ``best.pth`` (when the epoch set a new best target mAP) and ``last.pth``."""

    def before_train(self, trainer: TrainerView) -> None:
        c = trainer.config
        trainer.output.mkdir(parents=True, exist_ok=True)
        c.save(trainer.output / "config.yaml")
        last = trainer.output / "last.pth"
        if c.resume and last.exists():
            trainer.load_state(load_checkpoint(last, trainer.device))
            trainer.log(f"resumed from {last} at epoch {trainer.epoch}")

    def after_epoch(self, trainer: TrainerView, entry: EpochLog) -> None:
        if entry.eval and trainer.best["epoch"] == trainer.epoch:
            trainer.save("best.pth")
        trainer.save("last.pth")


class MetricsLog(Hook):
    """One row per epoch in ``metrics.csv`` and the same scalars in TensorBoard (``tensorboard/``)."""

    def __init__(self) -> None:
        self.writer: Any = None

    def before_train(self, trainer: TrainerView) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional at run time; metrics.csv always exists
            return
        self.writer = SummaryWriter(str(trainer.output / "tensorboard"))

    def after_epoch(self, trainer: TrainerView, entry: EpochLog) -> None:
        row = {
            "epoch": entry.epoch, "loss": entry.loss, "loss_source": entry.loss_source,
            "loss_target": entry.loss_target, "clusters": entry.num_clusters, "outliers": entry.num_outliers,
            "alpha": entry.alpha, "lr": entry.lr, "seconds": round(entry.seconds, 2),
            **{f"pl_{k}": v for k, v in entry.quality.items()},
            **dict(entry.eval.items()),
        }
        path = trainer.output / "metrics.csv"
        rows = []
        if path.exists():
            with open(path, newline="") as fh:
                rows = [r for r in csv.DictReader(fh) if int(r["epoch"]) < entry.epoch]
        rows.append({k: str(v) for k, v in row.items()})
        keys = list(dict.fromkeys(k for r in rows for k in r))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=keys)
            w.writeheader()
            w.writerows(rows)
        tmp.replace(path)
        if self.writer is not None:
            for key, value in row.items():
                if key != "epoch" and isinstance(value, (int, float)) and math.isfinite(value):
                    self.writer.add_scalar(key, value, entry.epoch)
            self.writer.flush()

    def after_train(self, trainer: TrainerView) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class ConsoleLog(Hook):
    """What the run prints: its set-up, one line per epoch, and the best evaluation at the end."""

    def before_train(self, trainer: TrainerView) -> None:
        c = trainer.config
        source = trainer.source
        trainer.log(
            f"{c.mode}: source {source.name if source else '-'} "
            f"({trainer.num_source_classes} classes), target {trainer.target.name} "
            f"({len(trainer.target.train)} train images); {c.optim.epochs} epochs x {c.iters_per_epoch} iterations "
            f"on {trainer.device}; output {trainer.output}"
        )

    def after_epoch(self, trainer: TrainerView, entry: EpochLog) -> None:
        e = entry
        parts = [f"epoch {e.epoch:>3}/{trainer.config.optim.epochs}", f"loss {e.loss:.3f}"]
        if trainer.source is not None and trainer.train_target:
            parts.append(f"(src {e.loss_source:.3f} tgt {e.loss_target:.3f})")
        if trainer.train_target and trainer.config.mode != "oracle":
            parts.append(f"clusters {e.num_clusters} outliers {e.num_outliers}")
            if math.isfinite(e.alpha):
                parts.append(f"alpha {e.alpha:.3f}")
        if e.quality:
            q = e.quality
            parts.append(f"pseudo-labels P {q['pair_precision']:.2f} R {q['pair_recall']:.2f} NMI {q['nmi']:.2f}")
        if e.eval:
            parts.append(f"| target mAP {100 * e.eval['mAP']:.1f} rank-1 {100 * e.eval['rank1']:.1f}")
        parts.append(f"({e.seconds:.0f}s)")
        trainer.log("  ".join(parts))

    def after_train(self, trainer: TrainerView) -> None:
        if trainer.epoch >= trainer.config.optim.epochs and trainer.best["epoch"] > 0:
            trainer.log(
                f"best target mAP {100 * trainer.best['mAP']:.1f} at epoch {trainer.best['epoch']} (selected on "
                "the test set, as the reference does; the last epoch's numbers are the ones to report)"
            )


def default_hooks() -> list[Hook]:
    """The stages after each epoch, in order: evaluate, checkpoint, log."""
    return [Evaluation(), Checkpointing(), MetricsLog(), ConsoleLog()]
