"""The one SpCL trainer (SPEC sections 3-7): UDA with a source, USL without, plus the source-only and
oracle baselines, all through the hybrid memory.

Memory slots: one per source class (when a source is used), then one per target training image (when
the target is trained on).  Per epoch the target slots get labels (``spcl.training.labels``): pseudo
labels with the self-paced criterion (uda, usl), or the true identities (oracle).  A source-only run
has no target slots.

``fit`` is the loop of SPEC section 7; what happens around the training (checkpoint, evaluate,
log, signals) is done by hooks (``spcl.training.hooks``), and every stage is a method a subclass
may replace. What a resume restores is one list, :meth:`Trainer.checkpointables`; a run resumed
in the middle of an epoch continues with exactly the next batch.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from spcl.config import Config
from spcl.data import Dataset, Item, load
from spcl.data.image_dataset import AugmentedImages, without_unreadable
from spcl.data.loader import TrainLoader
from spcl.data.sampler import RandomMultipleGallerySampler
from spcl.data.transforms import build_test_transform, build_train_transform
from spcl.evaluation import evaluate_model, extract_features
from spcl.memory import HybridMemory
from spcl.models import require_backbone, use_domain
from spcl.training.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    build_model,
    config_of,
    describe_model,
    save_checkpoint,
)
from spcl.training.hooks import EpochLog, Hook, StepLosses, TrainingInterrupted, default_hooks
from spcl.training.labels import TargetLabels, target_labeler
from spcl.utils import RngStream, derive_seed, fault_point, memory_advice, progress, resolve_device

__all__ = ["RESUMABLE_CHANGES", "Trainer", "TrainingDiverged", "TrainingInterrupted"]

RESUMABLE_CHANGES = (
    "optim.epochs", "eval.every", "eval.rerank", "eval.batch_size", "data.workers", "data.cache_images",
    "data.root", "data.source", "data.target", "data.vehicleid_test_size", "device", "output", "resume",
    "checkpoint_every",
)
"""Settings a resume may change: how long to train, how and when to evaluate, where things are and
how fast they are read. The data itself is compared by its fingerprints."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclasses.dataclass
class _EpochProgress:
    """What an epoch in progress has done so far (restored by a mid-epoch resume)."""

    labels: TargetLabels | None = None
    totals: list[float] = dataclasses.field(default_factory=lambda: [0.0, 0.0, 0.0])
    seconds: float = 0.0

    def state_dict(self) -> dict[str, Any]:
        labels = None
        if self.labels is not None:
            labels = {f.name: getattr(self.labels, f.name) for f in dataclasses.fields(self.labels) if f.name != "labels"}
        return {"labels": labels, "totals": list(self.totals), "seconds": self.seconds}

    @classmethod
    def from_state(cls, state: dict[str, Any], labels: np.ndarray | None) -> _EpochProgress:
        stats = state["labels"]
        restored = TargetLabels(labels=labels, **stats) if stats is not None and labels is not None else None
        return cls(restored, list(state["totals"]), float(state["seconds"]))


class _Progress:
    """The trainer's place in the run as one checkpoint part: epochs and iterations done, the best
    evaluation, whether the memory is initialised, the history, and the epoch in progress."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer

    def state_dict(self) -> dict[str, Any]:
        t = self.trainer
        return {
            "epoch": t.epoch,
            "iteration": t.iteration,
            "best": dict(t.best),
            "memory_ready": t.memory_ready,
            "history": [dataclasses.asdict(entry) for entry in t.history],
            "epoch_progress": t._epoch.state_dict(),
            "loaders": {domain: loader.state_dict() for domain, loader in t._loaders.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        t = self.trainer
        t.epoch, t.iteration = int(state["epoch"]), int(state.get("iteration", 0))
        t.best, t.memory_ready = dict(state["best"]), bool(state["memory_ready"])
        t.history = [EpochLog(**entry) for entry in state.get("history", [])]
        progress = state.get("epoch_progress")
        t._epoch = _EpochProgress.from_state(progress, t.target_labels) if progress else _EpochProgress()
        t._resume_loaders = dict(state.get("loaders", {}))


class _TorchRNG:
    """The global torch generator as one checkpoint part."""

    def state_dict(self) -> dict[str, Any]:
        return {"torch": torch.get_rng_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        torch.set_rng_state(state["torch"])


class Trainer:
    """Builds data, model, memory and optimizer from a ``Config`` and trains with exact resume.

    ``hooks`` (default: :func:`spcl.training.hooks.default_hooks`) run after each epoch's training
    and at the other moments of :meth:`fit`; ``log`` receives every line the run prints;
    ``progress`` shows progress bars (plain lines when standard error is not a terminal).
    """

    def __init__(
        self,
        config: Config,
        log: Callable[[str], None] = print,
        progress: bool = True,
        hooks: Sequence[Hook] | None = None,
    ) -> None:
        self.config = config
        self.log = log
        self.progress = progress
        self.device = resolve_device(config.device)
        self.output = Path(config.output)
        self.hooks = list(default_hooks() if hooks is None else hooks)
        c = config

        require_backbone(c.model.arch)  # before minutes of reading or generating data
        torch.manual_seed(derive_seed(c.seed, RngStream.MODEL_INIT))
        self.source: Dataset | None = self._load(c.data.source) if c.uses_source else None
        self.target: Dataset = self._load(c.data.target)
        self.train_target = c.mode in ("uda", "usl", "oracle")
        if self.train_target and not self.target.train:
            raise ValueError(f"target {self.target.name} has no training images")
        if self.source is not None and self.source.num_train_pids == 0:
            raise ValueError(f"source {self.source.name} has no labelled training images")
        self._warn_about_data()

        pretrained: bool | str = {"imagenet": True, "none": False}.get(c.model.pretrained, c.model.pretrained)
        bn_domains = 2 if c.mode == "uda" and c.model.dsbn else 1
        description = describe_model(c.model, bn_domains, c.data.height, c.data.width)
        self.model = build_model(description, pretrained, freeze_dsbn_neck_bias=c.model.freeze_dsbn_neck_bias)
        self.model.to(self.device)
        self.description = {**description, "out_features": self.model.out_features}

        self.num_source_classes = self.source.num_train_pids if self.source is not None else 0
        self.num_target = len(self.target.train) if self.train_target else 0
        self.memory = HybridMemory(
            self.model.out_features,
            self.num_source_classes + self.num_target,
            temp=c.memory.temp,
            momentum=c.memory.momentum,
            num_source_classes=self.num_source_classes,
            source_update=c.memory.source_update,
        ).to(self.device)
        self.labeler = target_labeler(c, self.target, self.device) if self.train_target else None

        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(params, lr=c.optim.lr, weight_decay=c.optim.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, c.optim.step_size, c.optim.gamma)

        self.train_transform = build_train_transform(
            c.data.height, c.data.width, flip_p=c.data.flip_p, padding=c.data.padding, erasing_p=c.data.erasing_p
        )
        self.test_transform = build_test_transform(c.data.height, c.data.width)
        self.epoch = 0
        self.iteration = 0
        """Steps done in the current epoch (0 between epochs)."""
        self.memory_ready = False
        self.best: dict[str, float] = {"mAP": -1.0, "epoch": -1}
        self.history: list[EpochLog] = []
        self._epoch = _EpochProgress()
        self._loaders: dict[str, TrainLoader] = {}
        self._resume_loaders: dict[str, dict[str, int]] = {}
        self._train_sets: dict[int, AugmentedImages] = {}
        self.saved_at: tuple[int, int] | None = None
        """(epoch, iteration) of the last ``save_progress``."""
        # hashed once: every checkpoint stores them, and a resume compares them
        self.fingerprints = {
            "source": self.source.fingerprint() if self.source is not None else "",
            "target": self.target.fingerprint(),
        }

    def _load(self, name: str | None) -> Dataset:
        assert name is not None
        options: dict[str, Any] = {"test_size": self.config.data.vehicleid_test_size} if name == "vehicleid" else {}
        if name.startswith("synth-"):
            options["seed"] = self.config.data.synth_seed
        dataset = load(name, self.config.data.root, **options)
        if self.config.data.skip_bad_images:
            dataset = without_unreadable(dataset, self.progress)
        if dataset.skipped:
            shown = "; ".join(dataset.skipped[:5]) + ("; ..." if len(dataset.skipped) > 5 else "")
            self.log(f"note: {dataset.name}: {len(dataset.skipped)} files left out: {shown}")
        return dataset

    def _warn_about_data(self) -> None:
        """Say when the training data cannot teach much, rather than train on it silently."""
        c = self.config
        if self.source is not None and self.source.num_train_pids == 1:
            self.log(f"warning: the source {self.source.name} has a single identity: its classes teach nothing")
        domains = [("source", self.source)] if self.source is not None else []
        domains += [("target", self.target)] if self.train_target else []
        for role, data in domains:
            if data is not None and len(data.train) < c.optim.batch_size:
                self.log(f"warning: the {role} {data.name} has {len(data.train)} training images, fewer than a batch "
                         f"({c.optim.batch_size}): every batch repeats images")

    @property
    def target_labels(self) -> np.ndarray:
        """The target samples' classes of the current epoch (-1: out of training), as the memory holds them."""
        return self.memory.target_labels.cpu().numpy()

    # ------------------------------------------------------------------------------------------------
    # the loop

    def fit(self) -> list[EpochLog]:
        """SPEC section 7: the memory from the initial encoder, then per epoch the target labels, an
        epoch of training, and the hooks: checkpoint, evaluation, logs. A run resumed in the middle
        of an epoch continues with the next step of that epoch."""
        try:
            self._call("before_train")
            if not self.memory_ready:
                self.init_memory()
            while self.epoch < self.config.optim.epochs:
                if self.iteration == 0:
                    self._call("before_epoch")
                    started = time.time()
                    self._epoch = _EpochProgress(labels=self.assign_labels())
                    self._epoch.seconds = time.time() - started
                entry = self.train_epoch()
                self.history.append(entry)
                self._call("after_epoch", entry)
        finally:
            self._call("after_train")
        return self.history

    def _call(self, moment: str, *args: Any) -> None:
        for hook in self.hooks:
            getattr(hook, moment)(self, *args)

    # ------------------------------------------------------------------------------------------------
    # the stages

    def init_memory(self) -> None:
        """Fill the memory with one forward pass of the initial encoder (SPEC section 4)."""
        with memory_advice("extracting the initial memory features", "lower eval.batch_size (--eval.batch_size)"):
            self._init_memory()

    def _init_memory(self) -> None:
        if self.source is not None:
            features = self._extract(self.source.train, 0, "source features")
            self.memory.init_source(features, [p for _, p, _ in self.source.train])
        fault_point("init_memory")
        if self.train_target:
            self.memory.init_target(self._extract(self.target.train, -1, "target features"))
        self.memory_ready = True

    def _extract(self, items: list[Item], domain: int, desc: str) -> torch.Tensor:
        c = self.config
        with use_domain(self.model, domain):
            return extract_features(
                self.model, items, self.test_transform, self.device, c.eval.batch_size, c.data.workers, desc,
                self.progress,
            )

    def assign_labels(self) -> TargetLabels | None:
        """The classes of the target slots for this epoch (SPEC section 6), set in the memory."""
        if self.labeler is None:
            return None
        remedy = ("lower pseudo.k1 (the neighbours kept per image), or use --pseudo.knn_backend faiss; on an "
                  "accelerator, --device cpu gives the search the machine's memory")
        with memory_advice(f"pseudo-labelling {self.num_target} target features on {self.device}", remedy):
            labels = self.labeler(self.memory.target_features)
        fault_point(f"labels:{self.epoch + 1}")
        self.memory.set_pseudo_labels(labels.labels)
        return labels

    def train_epoch(self) -> EpochLog:
        """The epoch's steps of the unified contrastive loss and momentum updates (SPEC sections 3,
        7), from the step the epoch is at; returns the epoch's record."""
        c = self.config
        if self.iteration == 0:
            torch.manual_seed(derive_seed(c.seed, self.epoch, RngStream.AUGMENTATION))  # dropout
        self._loaders = self._make_loaders()
        started = time.time()
        self.model.train()
        iters = c.iters_per_epoch
        epoch = self._epoch
        bar = progress(range(self.iteration, iters), f"epoch {self.epoch + 1}/{c.optim.epochs}", enabled=self.progress)
        for iteration in bar:
            step = self.train_step(iteration)
            epoch.totals = [t + v for t, v in zip(epoch.totals, (step.loss, step.loss_source, step.loss_target))]
            self.iteration = iteration + 1
            bar.set_postfix(loss=f"{step.loss:.3f}")
            fault_point(f"step:{self.epoch + 1}:{self.iteration}")
            self._call("after_step", step)
        epoch.seconds += time.time() - started
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        self.epoch += 1
        self.iteration = 0
        self._loaders = {}
        mean = [t / iters for t in epoch.totals]
        labels = epoch.labels
        self._epoch = _EpochProgress()
        return EpochLog(
            epoch=self.epoch, loss=float(mean[0]), loss_source=float(mean[1]), loss_target=float(mean[2]),
            num_clusters=labels.num_clusters if labels else 0, num_outliers=labels.num_outliers if labels else 0,
            alpha=float(labels.alpha) if labels and labels.alpha is not None else float("nan"), lr=lr,
            seconds=epoch.seconds, quality=dict(labels.quality) if labels else {},
        )

    def train_step(self, iteration: int) -> StepLosses:
        """Forward both domains' batches, the loss against the memory as it was before this step,
        an optimizer step, then the memory's momentum update."""
        images, slots = [], []
        for domain, loader in self._loaders.items():
            batch_images, batch_pids, batch_index = loader.next()
            images.append(batch_images)
            # a source sample's slot is its class centroid, a target sample's its own instance
            slots.append(self.memory.source_slots(batch_pids) if domain == "source" else self.memory.target_slots(batch_index))
        # one forward pass for both domains: DSBN splits the batch into its source and target halves
        features = self.model(torch.cat(images).to(self.device, non_blocking=True))
        parts = [self.memory.loss(f, s) for f, s in zip(features.split([len(s) for s in slots]), slots)]
        loss = sum(parts)
        if not torch.isfinite(loss):
            raise TrainingDiverged(
                f"loss became {loss.item()} at epoch {self.epoch + 1}; the last good checkpoint "
                f"{self.output / 'last.pth'} is kept. Lower the learning rate or check the data."
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.memory.update(features.detach(), torch.cat(slots))
        named = dict(zip(self._loaders, (p.item() for p in parts)))
        return StepLosses(iteration, loss.item(), named.get("source", float("nan")), named.get("target", float("nan")))

    def _make_loaders(self) -> dict[str, TrainLoader]:
        """The epoch's streams: source (true labels) and target (this epoch's labels), each where a
        resumed run had left it."""
        loaders = {}
        if self.source is not None:
            source_pids = np.array([p for _, p, _ in self.source.train])
            loaders["source"] = self._loader(self.source.train, source_pids, RngStream.SOURCE_SAMPLER)
        if self.train_target:
            loaders["target"] = self._loader(self.target.train, self.target_labels, RngStream.TARGET_SAMPLER)
        for domain, state in self._resume_loaders.items():
            loaders[domain].load_state_dict(state)
        self._resume_loaders = {}
        return loaders

    def _loader(self, items: list[Item], pids: np.ndarray, stream: RngStream) -> TrainLoader:
        c = self.config
        cams = [cam for _, _, cam in items]
        sampler = RandomMultipleGallerySampler(
            pids, cams, num_instances=c.data.num_instances, seed=derive_seed(c.seed, stream), epoch=self.epoch,
            min_length=c.optim.batch_size, seeded=True,
        )
        if len(sampler) == 0:
            raise ValueError("no training sample has a label: nothing to sample from")
        dataset = self._train_sets.get(stream)
        if dataset is None:
            dataset = self._train_sets[stream] = AugmentedImages(items, self.train_transform, cache=c.data.cache_images)
        return TrainLoader(
            dataset, sampler, c.optim.batch_size, workers=c.data.workers,
            generator=torch.Generator().manual_seed(derive_seed(c.seed, stream, self.epoch)),
            pin_memory=self.device.type == "cuda",
        )

    def evaluate(self, on_source: bool = False, rerank: bool | None = None) -> dict[str, Any]:
        """mAP / CMC on the target's test split (or the source's, with its BN branch)."""
        data = self.source if on_source else self.target
        if data is None:
            raise ValueError("this run has no source domain to evaluate on")
        c = self.config
        return evaluate_model(
            self.model, data, self.test_transform, self.device, domain=0 if on_source else -1,
            rerank=c.eval.rerank if rerank is None else rerank, batch_size=c.eval.batch_size,
            workers=c.data.workers, progress=self.progress,
        )

    # ------------------------------------------------------------------------------------------------
    # checkpoints

    def checkpointables(self) -> dict[str, Any]:
        """Every part a resume restores, by its key in the checkpoint (each has ``state_dict`` and
        ``load_state_dict``): saving and loading both read this one list."""
        parts: dict[str, Any] = {
            "state_dict": self.model,
            "optimizer": self.optimizer,
            "scheduler": self.scheduler,
            "memory": self.memory,
            "trainer": _Progress(self),
            "rng": _TorchRNG(),
        }
        if self.labeler is not None:
            parts["labels"] = self.labeler
        return parts

    def state(self) -> dict[str, Any]:
        """The checkpoint of the run as it is now (``spcl.training.checkpoint`` describes the format)."""
        header = {
            "format_version": FORMAT_VERSION,
            "model": self.description,
            "config": self.config.to_dict(),
            "fingerprints": self.fingerprints,
        }
        return {**header, **{name: part.state_dict() for name, part in self.checkpointables().items()}}

    def load_state(self, state: dict[str, Any]) -> None:
        """Resume from a checkpoint of this same run; another run's checkpoint is refused."""
        if state["config"]["mode"] != self.config.mode or state["model"] != self.description:
            raise CheckpointError(
                f"the checkpoint in {self.output} is a {state['config']['mode']} run of {state['model']['arch']} "
                f"({state['model']['bn_domains']} BN domains); this run is {self.config.mode} of "
                f"{self.config.model.arch}. Use another --output or --no-resume."
            )
        if state["fingerprints"] != self.fingerprints:
            raise CheckpointError(
                "the checkpoint was trained on other training lists (fingerprints differ): its memory "
                "slots would point at other images. Use another --output or --no-resume."
            )
        self._check_settings(state)
        if state["format_version"] == 1:  # the trainer's values were top-level keys
            state = {**state, "trainer": {k: state[k] for k in ("epoch", "best", "memory_ready")},
                     "labels": {"alpha": state["alpha"]}}
        parts = self.checkpointables()
        missing = [name for name in parts if name not in state]
        if missing:
            raise CheckpointError(f"the checkpoint in {self.output} has no {', '.join(missing)}: it cannot be resumed")
        for name in ("memory", *[n for n in parts if n != "memory"]):  # the memory first: it holds the labels
            parts[name].load_state_dict(state[name])

    def _check_settings(self, state: dict[str, Any]) -> None:
        """Refuse to continue a run with other training settings; say which changes are allowed."""
        saved_config = config_of(state)
        saved = {**saved_config.to_dotted(), "iterations per epoch": saved_config.iters_per_epoch}
        now = {**self.config.to_dotted(), "iterations per epoch": self.config.iters_per_epoch}
        changed = {key for key in now if saved.get(key) != now[key]}
        refused = sorted(changed - set(RESUMABLE_CHANGES))
        if refused:
            listed = "; ".join(f"{key}: {saved.get(key)!r} in the run, {now[key]!r} now" for key in refused)
            raise CheckpointError(
                f"cannot resume the run in {self.output} with other training settings ({listed}). A resume may "
                f"change only {', '.join(RESUMABLE_CHANGES)}. Use another --output, or --no-resume to start over "
                "(the earlier run is moved aside)."
            )
        for key in sorted(changed & {"optim.epochs", "eval.every", "eval.rerank", "eval.batch_size", "checkpoint_every"}):
            self.log(f"resuming with {key} = {now[key]!r} (the run had {saved.get(key)!r})")

    def save(self, name: str) -> Path:
        """Write the run's checkpoint to ``<output>/<name>``, atomically."""
        path = self.output / name
        save_checkpoint(self.state(), path)
        return path

    def save_progress(self) -> Path:
        """Write ``last.pth``, the checkpoint a re-run resumes from, keeping the one it replaces as
        ``last.previous.pth`` (used when the newest is damaged)."""
        path = self.output / "last.pth"
        save_checkpoint(self.state(), path, keep_previous=True)
        self.saved_at = (self.epoch, self.iteration)
        return path

