"""Hooks: the stages of ``Trainer.fit`` around the training itself (checkpoint, evaluate, log,
signals), and the place to add more without editing the loop.

A hook overrides the moments it needs; ``Trainer(config, hooks=...)`` takes the list, run in
order at every moment (``default_hooks()`` when not given). ``after_train`` runs also when
training stopped with an error, so files, locks and threads are released. ``TrainerView`` is what
a hook may read and call on the trainer; ``EpochLog`` and ``StepLosses`` are the records it gets.

What is never lost: the checkpoint is written right after an epoch's training, before anything
that can fail (evaluation, logs), and every ``checkpoint_every`` iterations within an epoch; a
SIGTERM or SIGINT stops after the current step with a checkpoint; an evaluation cut short runs
again on resume; ``metrics.csv`` is rebuilt from the history the checkpoint holds.
"""

from __future__ import annotations

import math
import os
import signal
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from spcl.config import Config
from spcl.data import Dataset
from spcl.evaluation import ImageSet, save_results
from spcl.evaluation.protocol import Protocol as EvaluationProtocol
from spcl.training.checkpoint import CheckpointError, newest_checkpoint, remove_stale_temporaries
from spcl.training.run_folder import RunFolder
from spcl.utils import Distributed, fault_point, write_csv

__all__ = [
    "Checkpointing",
    "ConsoleLog",
    "EpochLog",
    "Evaluation",
    "Hook",
    "MetricsLog",
    "SignalHandling",
    "StepLosses",
    "TrainerView",
    "TrainingInterrupted",
    "default_hooks",
]


class TrainingInterrupted(RuntimeError):
    """A signal stopped the run after a checkpoint was written; ``signal`` is its number."""

    def __init__(self, message: str, signal: int) -> None:
        super().__init__(message)
        self.signal = signal


@dataclass
class EpochLog:
    """What one epoch did: its mean losses (the total and each named term of the method's loss), the
    target labels it trained on, and its evaluation."""

    epoch: int
    loss: float
    losses: dict[str, float] = field(default_factory=dict)
    """The epoch mean of each named term of the loss (SpCL: source, target; CAP: source, intra,
    inter; O2CAP: source, offline, online); a term of a domain the run does not train is absent."""
    num_clusters: int = 0
    num_outliers: int = 0
    alpha: float = float("nan")
    lr: float = 0.0
    seconds: float = 0.0
    quality: dict[str, float] = field(default_factory=dict)
    eval: dict[str, float] = field(default_factory=dict)
    search: dict[str, float] = field(default_factory=dict)
    """The approximate neighbour search's measured recall and probe (``knn_*``), when it ran."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> EpochLog:
        """The record as a checkpoint's history holds it (earlier versions: ``loss_source`` /
        ``loss_target`` fields, NaN for a domain not trained)."""
        values = dict(values)
        losses = dict(values.pop("losses", {}))
        for name in ("source", "target"):
            value = values.pop(f"loss_{name}", None)
            if value is not None and math.isfinite(value):
                losses[name] = value
        return cls(losses=losses, **values)


@dataclass(frozen=True)
class StepLosses:
    """The losses of one training step: the total and each named term."""

    iteration: int
    loss: float
    terms: dict[str, float] = field(default_factory=dict)


class TrainerView(Protocol):
    """The part of ``spcl.training.Trainer`` that hooks use."""

    config: Config
    output: Path
    device: torch.device
    dist: Distributed
    source: Dataset | None
    target: Dataset
    train_target: bool
    num_source_classes: int
    epoch: int
    iteration: int
    best: dict[str, float]
    history: list[EpochLog]
    saved_at: tuple[int, int] | None

    def log(self, message: str) -> None: ...

    def evaluate(self, on_source: bool = False, rerank: bool | None = None) -> dict[str, Any]: ...

    def save(self, name: str) -> Path: ...

    def save_progress(self) -> Path: ...

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


class Checkpointing(Hook):
    """The run folder and ``last.pth``: hold the folder, resume from the newest readable checkpoint
    (or move an earlier run aside with ``resume`` off), write ``config.yaml`` once the run is known,
    then write ``last.pth`` every ``checkpoint_every`` iterations and right after every epoch.

    With several processes rank 0 holds the folder and writes; every rank then reads the same
    checkpoint (the output must be on a file system all nodes share) and the ranks check that they
    resume from the same step."""

    def __init__(self) -> None:
        self.folder: RunFolder | None = None

    def before_train(self, trainer: TrainerView) -> None:
        c, dist = trainer.config, trainer.dist
        if dist.is_main:
            self.folder = RunFolder(trainer.output, trainer.log)
            self.folder.acquire()
            for stale in remove_stale_temporaries(trainer.output):
                trainer.log(f"removed {stale}, left by an interrupted write")
            if not c.resume:
                moved = self.folder.move_aside()
                if moved is not None:
                    trainer.log(f"moved the earlier run in {trainer.output} to {moved} (--no-resume)")
        dist.barrier()  # the folder is settled before any rank reads it
        if c.resume:
            found = newest_checkpoint(trainer.output / "last.pth", trainer.log, trainer.device)
            if found is not None:
                state, path = found
                trainer.load_state(state)
                where = f"epoch {trainer.epoch}" + (f", iteration {trainer.iteration}" if trainer.iteration else "")
                trainer.log(f"resumed from {path} at {where}")
        here = (trainer.epoch, trainer.iteration)
        main = dist.broadcast_object(here)
        if here != main:
            raise CheckpointError(
                f"rank {dist.rank} would start at epoch {here[0]}, iteration {here[1]}, rank 0 at epoch {main[0]}, "
                f"iteration {main[1]}: every process must see the same {trainer.output} (a file system all nodes share)"
            )
        if dist.is_main:
            c.save(trainer.output / "config.yaml")

    def after_step(self, trainer: TrainerView, losses: StepLosses) -> None:
        every = trainer.config.checkpoint_every
        if every > 0 and trainer.iteration % every == 0 and trainer.iteration < trainer.config.iters_per_epoch:
            trainer.save_progress()

    def after_epoch(self, trainer: TrainerView, entry: EpochLog) -> None:
        trainer.save_progress()

    def after_train(self, trainer: TrainerView) -> None:
        if self.folder is not None:
            self.folder.release()


class Evaluation(Hook):
    """Every ``eval.every`` epochs and after the last one: mAP / CMC on the target (docs/method.md#evaluation),
    its per-query results in ``eval-epochN/``, the best mAP so far and ``best.pth``. The query and
    gallery are checked before the first step; an evaluation a stopped run did not finish runs on
    resume."""

    def before_train(self, trainer: TrainerView) -> None:
        self._check_split(trainer)
        last = trainer.history[-1] if trainer.history else None
        if last is not None and trainer.iteration == 0 and last.epoch == trainer.epoch and not last.eval:
            self.after_epoch(trainer, last)  # the run stopped after the epoch's checkpoint

    def after_epoch(self, trainer: TrainerView, entry: EpochLog) -> None:
        if not self._due(trainer, entry.epoch):
            return
        fault_point(f"eval:{entry.epoch}")
        result = trainer.evaluate()
        cmc = result["cmc"]
        entry.eval = {"mAP": float(result["mAP"]), "rank1": float(cmc[0]), "rank5": float(cmc[4]), "rank10": float(cmc[9])}
        if trainer.dist.is_main:
            target = trainer.target
            save_results(result, trainer.output / f"eval-epoch{entry.epoch}", target.query, target.gallery)
        if entry.eval["mAP"] > trainer.best["mAP"]:
            trainer.best = {"mAP": entry.eval["mAP"], "epoch": entry.epoch}
            trainer.save("best.pth")
        trainer.save_progress()  # the history now holds the evaluation

    @staticmethod
    def _due(trainer: TrainerView, epoch: int) -> bool:
        c = trainer.config
        every = c.eval.every > 0 and epoch % c.eval.every == 0
        return bool(trainer.target.query) and (every or epoch == c.optim.epochs)

    @staticmethod
    def _check_split(trainer: TrainerView) -> None:
        """An evaluation that cannot work fails now, not after an epoch of training."""
        target = trainer.target
        if not target.query:
            trainer.log(f"note: {target.name} has no query/gallery split: the run will not be evaluated")
            return
        if not target.gallery:
            raise ValueError(f"{target.name}: the gallery is empty, but {len(target.query)} queries need it")
        query, gallery = ImageSet.from_items(target.query), ImageSet.from_items(target.gallery)
        protocol = EvaluationProtocol.build(query, gallery, len(target.query), len(target.gallery))
        _, is_match = protocol.related(0, len(target.query))
        if not is_match.any():
            raise ValueError(
                f"{target.name}: no query has a true match in the gallery (same identity, another camera): "
                "check the identities and cameras of the query and gallery lists"
            )


class MetricsLog(Hook):
    """``metrics.csv`` (one row per epoch, rebuilt from the history a checkpoint holds, so no row is
    ever lost) and the same scalars in TensorBoard (``tensorboard/``)."""

    def __init__(self) -> None:
        self.writer: Any = None

    def before_train(self, trainer: TrainerView) -> None:
        if not trainer.dist.is_main:
            return
        if trainer.history:
            self._write_csv(trainer)
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional at run time; metrics.csv always exists
            return
        self.writer = SummaryWriter(str(trainer.output / "tensorboard"))

    def after_epoch(self, trainer: TrainerView, entry: EpochLog) -> None:
        if not trainer.dist.is_main:
            return
        self._write_csv(trainer)
        if self.writer is not None:
            for key, value in _row(entry).items():
                if key != "epoch" and isinstance(value, (int, float)) and math.isfinite(value):
                    self.writer.add_scalar(key, value, entry.epoch)
            self.writer.flush()

    def after_train(self, trainer: TrainerView) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    @staticmethod
    def _write_csv(trainer: TrainerView) -> None:
        rows = [_row(entry) for entry in trainer.history]
        keys = list(dict.fromkeys(k for r in rows for k in r))
        write_csv(trainer.output / "metrics.csv", keys, ([str(r[k]) if k in r else "" for k in keys] for r in rows))


def _row(entry: EpochLog) -> dict[str, Any]:
    return {
        "epoch": entry.epoch, "loss": entry.loss, **{f"loss_{name}": value for name, value in entry.losses.items()},
        "clusters": entry.num_clusters, "outliers": entry.num_outliers,
        "alpha": entry.alpha, "lr": entry.lr, "seconds": round(entry.seconds, 2),
        **{f"pl_{k}": v for k, v in entry.quality.items()},
        **dict(entry.search.items()),
        **dict(entry.eval.items()),
    }


class ConsoleLog(Hook):
    """What the run prints: its set-up, one line per epoch, and the best evaluation at the end."""

    def before_train(self, trainer: TrainerView) -> None:
        c = trainer.config
        source = trainer.source
        trainer.log(
            f"{c.mode} (memory.kind {c.memory.kind}): source {source.name if source else '-'} "
            f"({trainer.num_source_classes} classes), target {trainer.target.name} "
            f"({len(trainer.target.train)} train images); {c.optim.epochs} epochs x {c.iters_per_epoch} iterations "
            f"on {trainer.device}; output {trainer.output}"
        )

    def after_epoch(self, trainer: TrainerView, entry: EpochLog) -> None:
        e = entry
        parts = [f"epoch {e.epoch:>3}/{trainer.config.optim.epochs}", f"loss {e.loss:.3f}"]
        if len(e.losses) > 1:
            parts.append("(" + " ".join(f"{name} {value:.3f}" for name, value in e.losses.items()) + ")")
        if trainer.train_target and trainer.config.mode != "oracle":
            parts.append(f"clusters {e.num_clusters} outliers {e.num_outliers}")
            if math.isfinite(e.alpha):
                parts.append(f"alpha {e.alpha:.3f}")
            if e.search.get("knn_exact_fallback"):
                parts.append(f"kNN exact (approximate recall {e.search['knn_recall']:.3f} needed probe "
                             f"{e.search['knn_probe']:.0f})")
            elif "knn_recall" in e.search:
                parts.append(f"kNN recall {e.search['knn_recall']:.3f} probe {e.search['knn_probe']:.0f}")
        if e.quality:
            q = e.quality
            parts.append(f"pseudo-labels P {q['pair_precision']:.2f} R {q['pair_recall']:.2f} NMI {q['nmi']:.2f}")
        if e.eval:
            parts.append(f"| target mAP {100 * e.eval['mAP']:.1f} rank-1 {100 * e.eval['rank1']:.1f}")
        parts.append(f"({e.seconds:.0f}s)")
        trainer.log("  ".join(parts))

    def after_train(self, trainer: TrainerView) -> None:
        if trainer.epoch < trainer.config.optim.epochs:
            return
        if trainer.best["epoch"] > 0:
            trainer.log(
                f"best target mAP {100 * trainer.best['mAP']:.1f} at epoch {trainer.best['epoch']} (selected on "
                "the test set, as the reference does; the last epoch's numbers are the ones to report)"
            )
        for data in (trainer.source, trainer.target):
            if data is not None and data.skipped:
                trainer.log(f"{data.name}: {len(data.skipped)} files were left out of this run:")
                for entry in data.skipped[:20]:
                    trainer.log(f"  {entry}")
                if len(data.skipped) > 20:
                    trainer.log(f"  ... and {len(data.skipped) - 20} more")


class SignalHandling(Hook):
    """SIGTERM (a scheduler pre-empting the job) or SIGINT (Ctrl-C): finish the current step, write a
    checkpoint, say how to resume, and stop with ``TrainingInterrupted`` (exit status 143 / 130 from
    the command line). A second signal ends the process at once. With several processes the ranks
    agree after every step whether any of them received one, so all stop at the same step."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def before_train(self, trainer: TrainerView) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # only the main thread may install signal handlers
        for signum in self.SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None:  # the second one: stop now
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.received = signum

    def before_epoch(self, trainer: TrainerView) -> None:
        self._stop_if_asked(trainer)

    def after_step(self, trainer: TrainerView, losses: StepLosses) -> None:
        self._stop_if_asked(trainer)

    def after_train(self, trainer: TrainerView) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def _stop_if_asked(self, trainer: TrainerView) -> None:
        received = trainer.dist.max_int(self.received or 0)
        if not received:
            return
        self.received = received
        if trainer.saved_at != (trainer.epoch, trainer.iteration):
            trainer.save_progress()
        name = signal.Signals(self.received).name
        where = f"epoch {trainer.epoch}" + (f", iteration {trainer.iteration}" if trainer.iteration else "")
        message = (f"stopped by {name} at {where}; checkpoint {trainer.output / 'last.pth'}. "
                   "Run the same command again to continue exactly from there.")
        trainer.log(message)
        raise TrainingInterrupted(message, self.received)


def default_hooks() -> list[Hook]:
    """The stages around the training, in order: checkpoint, evaluate, log, signals."""
    return [Checkpointing(), Evaluation(), MetricsLog(), ConsoleLog(), SignalHandling()]
