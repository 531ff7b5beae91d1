"""The one SpCL trainer (SPEC sections 3-7): UDA with a source, USL without, plus the source-only and
oracle baselines, all through the hybrid memory.

Memory slots: one per source class (when a source is used), then one per target training image (when
the target is trained on).  Per epoch the target slots get labels (``spcl.training.labels``): pseudo
labels with the self-paced criterion (uda, usl), or the true identities (oracle).  A source-only run
has no target slots.

``fit`` is the loop of SPEC section 7; what happens after an epoch's training (evaluate,
checkpoint, log) is done by hooks (``spcl.training.hooks``), and every stage is a method a
subclass may replace. What a resume restores is one list, :meth:`Trainer.checkpointables`.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import DataLoader

from spcl.config import Config
from spcl.data import Dataset, ImageDataset, Item, load
from spcl.data.sampler import RandomMultipleGallerySampler
from spcl.data.transforms import build_test_transform, build_train_transform
from spcl.evaluation import evaluate_model, extract_features
from spcl.memory import HybridMemory
from spcl.models import use_domain
from spcl.training.checkpoint import FORMAT_VERSION, CheckpointError, build_model, describe_model, save_checkpoint
from spcl.training.hooks import EpochLog, Hook, StepLosses, default_hooks
from spcl.training.labels import TargetLabels, target_labeler
from spcl.utils import RngStream, derive_seed, progress, resolve_device

__all__ = ["Trainer", "TrainingDiverged"]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class _CyclingLoader:
    """Endless batches from a loader; each new pass of the sampler gets a fresh, reproducible order."""

    def __init__(self, loader: DataLoader) -> None:
        self.loader = loader
        self._it = iter(loader)

    def next(self):
        try:
            return next(self._it)
        except StopIteration:
            self._it = iter(self.loader)
            return next(self._it)


class _Attributes:
    """Plain attributes of an object as one checkpoint part."""

    def __init__(self, owner: object, names: Sequence[str]) -> None:
        self.owner, self.names = owner, tuple(names)

    def state_dict(self) -> dict[str, Any]:
        return {name: copy.deepcopy(getattr(self.owner, name)) for name in self.names}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in self.names:
            setattr(self.owner, name, copy.deepcopy(state[name]))


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

        torch.manual_seed(derive_seed(c.seed, RngStream.MODEL_INIT))
        self.source: Dataset | None = self._load(c.data.source) if c.uses_source else None
        self.target: Dataset = self._load(c.data.target)
        self.train_target = c.mode in ("uda", "usl", "oracle")
        if self.train_target and not self.target.train:
            raise ValueError(f"target {self.target.name} has no training images")
        if self.source is not None and self.source.num_train_pids == 0:
            raise ValueError(f"source {self.source.name} has no labelled training images")

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
        self.memory_ready = False
        self.best: dict[str, float] = {"mAP": -1.0, "epoch": -1}
        self.history: list[EpochLog] = []
        self._train_sets: dict[int, ImageDataset] = {}
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
        return load(name, self.config.data.root, **options)

    @property
    def target_labels(self) -> np.ndarray:
        """The target samples' classes of the current epoch (-1: out of training), as the memory holds them."""
        return self.memory.target_labels.cpu().numpy()

    # ------------------------------------------------------------------------------------------------
    # the loop

    def fit(self) -> list[EpochLog]:
        """SPEC section 7: the memory from the initial encoder, then per epoch the target labels, an
        epoch of training, and the hooks' evaluation, checkpoint and log lines."""
        try:
            self._call("before_train")
            if not self.memory_ready:
                self.init_memory()
            while self.epoch < self.config.optim.epochs:
                self._call("before_epoch")
                started = time.time()
                labels = self.assign_labels()
                entry = self.train_epoch(labels)
                entry.seconds = time.time() - started
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
        if self.source is not None:
            features = self._extract(self.source.train, 0, "source features")
            self.memory.init_source(features, [p for _, p, _ in self.source.train])
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
        labels = self.labeler(self.memory.target_features)
        self.memory.set_pseudo_labels(labels.labels)
        return labels

    def train_epoch(self, labels: TargetLabels | None = None) -> EpochLog:
        """One epoch of the unified contrastive loss and momentum updates (SPEC sections 3, 7)."""
        c = self.config
        torch.manual_seed(derive_seed(c.seed, self.epoch, RngStream.AUGMENTATION))  # dropout, augmentation
        loaders = []
        if self.source is not None:
            source_pids = np.array([p for _, p, _ in self.source.train])
            loaders.append((self._loader(self.source.train, source_pids, RngStream.SOURCE_SAMPLER), "source"))
        if self.train_target:
            loaders.append((self._loader(self.target.train, self.target_labels, RngStream.TARGET_SAMPLER), "target"))

        self.model.train()
        iters = c.iters_per_epoch
        totals = np.zeros(3)
        bar = progress(range(iters), f"epoch {self.epoch + 1}/{c.optim.epochs}", enabled=self.progress)
        for iteration in bar:
            step = self.train_step(loaders, iteration)
            totals += [step.loss, step.loss_source, step.loss_target]
            bar.set_postfix(loss=f"{step.loss:.3f}")
            self._call("after_step", step)
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        self.epoch += 1
        mean = totals / iters
        return EpochLog(
            epoch=self.epoch, loss=float(mean[0]), loss_source=float(mean[1]), loss_target=float(mean[2]),
            num_clusters=labels.num_clusters if labels else 0, num_outliers=labels.num_outliers if labels else 0,
            alpha=float(labels.alpha) if labels and labels.alpha is not None else float("nan"), lr=lr,
            quality=dict(labels.quality) if labels else {},
        )

    def train_step(self, loaders: list[tuple[_CyclingLoader, str]], iteration: int) -> StepLosses:
        """Forward both domains' batches, the loss against the memory as it was before this step,
        an optimizer step, then the memory's momentum update."""
        images, slots = [], []
        for loader, domain in loaders:
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
        named = dict(zip([d for _, d in loaders], (p.item() for p in parts)))
        return StepLosses(iteration, loss.item(), named.get("source", float("nan")), named.get("target", float("nan")))

    def _loader(self, items: list[Item], pids: np.ndarray, stream: RngStream) -> _CyclingLoader:
        c = self.config
        cams = [cam for _, _, cam in items]
        sampler = RandomMultipleGallerySampler(
            pids, cams, num_instances=c.data.num_instances, seed=derive_seed(c.seed, stream), epoch=self.epoch,
            min_length=c.optim.batch_size,
        )
        if len(sampler) == 0:
            raise ValueError("no training sample has a label: nothing to sample from")
        generator = torch.Generator().manual_seed(derive_seed(c.seed, stream, self.epoch))
        dataset = self._train_sets.get(stream)
        if dataset is None:
            dataset = self._train_sets[stream] = ImageDataset(items, self.train_transform, cache=c.data.cache_images)
        loader = DataLoader(
            dataset, batch_size=c.optim.batch_size, sampler=sampler,
            num_workers=c.data.workers, drop_last=True, generator=generator,
            pin_memory=self.device.type == "cuda", persistent_workers=False,
        )
        return _CyclingLoader(loader)

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
            "trainer": _Attributes(self, ("epoch", "best", "memory_ready")),
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
        if state["format_version"] == 1:  # the trainer's values were top-level keys
            state = {**state, "trainer": {k: state[k] for k in ("epoch", "best", "memory_ready")},
                     "labels": {"alpha": state["alpha"]}}
        for name, part in self.checkpointables().items():
            if name not in state:
                raise CheckpointError(f"the checkpoint in {self.output} has no {name!r} entry: it cannot be resumed")
            part.load_state_dict(state[name])

    def save(self, name: str) -> Path:
        """Write the run's checkpoint to ``<output>/<name>``, atomically."""
        path = self.output / name
        save_checkpoint(self.state(), path)
        return path
