"""The one trainer (docs/method.md#hybrid-memory, #initialisation, #dsbn, #pseudo-labels,
#training-loop): UDA with a source, USL without, plus the source-only and oracle baselines, through
the method ``memory.kind`` names (a registered memory, ``spcl.memory``).

Memory slots: one per source class (when a source is used), then the target's, as the method lays
them out (SpCL: one per target training image; Cluster Contrast: one per cluster; CAP, O2CAP: one
per cluster and camera). The trainer never asks which method it runs: the memory class says what
it clusters each epoch and how, what the sampler draws, and the named terms of its loss. The
target labels come each epoch from pseudo labels (uda, usl) or the true identities (oracle). A
source-only run has no target slots.

Building is four stages a subclass may replace, in order: :meth:`Trainer.build_data`,
:meth:`~Trainer.build_model`, :meth:`~Trainer.build_memory`, :meth:`~Trainer.build_optimizer`.
``fit`` is the loop of docs/method.md#training-loop; what happens around the training (checkpoint, evaluate,
log, signals) is done by hooks (``spcl.training.hooks``), and every stage of the loop is a method a
subclass may replace. Where the run stands (epoch, step, history, the epoch in progress) has one
owner, :class:`RunProgress`. What a resume restores is one list, :meth:`Trainer.checkpointables`;
a run resumed in the middle of an epoch continues with exactly the next batch.

Several processes (``torchrun``, PyTorch DistributedDataParallel) compute what one process
computes: the one global sampler stream is cut into the config's global batches and every rank
takes its consecutive slice of each (equal source and target parts, so DSBN and images per BN see
the same sub-batches); gradients are averaged by DDP (equal slices: the global mean); the BN running
statistics are averaged after every step (the single process averages its sub-batches' statistics
the same way); the features and slots of the whole global batch are gathered before the momentum
update, so every rank holds the same memory. Pseudo labels and evaluation metrics are computed by
rank 0 and broadcast: the clustering is CPU- and memory-heavy (K copies on one node would need K
times the memory) and one computation cannot disagree with itself. Only rank 0 writes files.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from spcl.config import Config
from spcl.data import Dataset, Item, combine_sources, dataset_options, load
from spcl.data.image_dataset import AugmentedImages, without_unreadable
from spcl.data.loader import TrainLoader
from spcl.data.sampler import RandomMultipleGallerySampler
from spcl.data.transforms import build_test_transform, build_train_transform
from spcl.evaluation import evaluate_model, extract_features
from spcl.memory import MemoryData, SlotMemory, memory_class
from spcl.models import is_token_backbone, require_backbone, use_domain
from spcl.models.checkpoint import model_normalization
from spcl.models.images_per_bn import batchnorm_buffers, set_bn_groups
from spcl.neighbors.approximate import require_faiss
from spcl.training.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    build_model,
    config_of,
    describe_model,
    load_checkpoint,
    save_checkpoint,
)
from spcl.training.hooks import EpochLog, Hook, StepLosses, TrainingInterrupted, default_hooks
from spcl.training.labels import TargetLabels, target_labeler
from spcl.training.optim import build_optimizer, build_scheduler
from spcl.utils import (
    Distributed,
    RngStream,
    derive_seed,
    fault_point,
    memory_advice,
    progress,
    resolve_amp,
    resolve_channels_last,
    resolve_device,
    resolve_workers,
    set_deterministic,
)

__all__ = ["RESUMABLE_CHANGES", "EpochInProgress", "RunProgress", "Trainer", "TrainingDiverged", "TrainingInterrupted"]

RESUMABLE_CHANGES = (
    "optim.epochs", "eval.every", "eval.rerank", "eval.batch_size", "data.workers", "data.cache_images",
    "data.root", "data.source", "data.target", "data.vehicleid_test_size", "data.split", "data.cuhk03_protocol",
    "data.cuhk03_boxes", "device", "output", "resume",
    "checkpoint_every", "data.prefetch", "data.persistent_workers", "runtime.amp", "runtime.channels_last",
    "runtime.deterministic", "runtime.backend", "runtime.timeout_minutes",
)
"""Settings a resume may change: how long to train, how and when to evaluate, where things are and
how fast they are read and computed. The data itself is compared by its fingerprints; the number of
processes is not a setting (a run may resume with any)."""


# DDP's switch that stops it copying rank 0's buffers at every forward: forward_sync_buffers in the
# newest PyTorch, broadcast_buffers before it (PyTorch 2.11, the lowest supported)
_NO_BUFFER_SYNC = ({"forward_sync_buffers": False}
                   if "forward_sync_buffers" in inspect.signature(torch.nn.parallel.DistributedDataParallel).parameters
                   else {"broadcast_buffers": False})


def _silent(message: str) -> None:
    """The log of ranks other than 0."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclasses.dataclass
class EpochInProgress:
    """What an epoch in progress has done so far (restored by a mid-epoch resume)."""

    labels: TargetLabels | None = None
    totals: dict[str, float] = dataclasses.field(default_factory=dict)
    """The sums of the steps' losses so far: ``loss`` (the total) and each named term."""
    seconds: float = 0.0

    def add(self, step: StepLosses) -> None:
        for name, value in {"loss": step.loss, **step.terms}.items():
            self.totals[name] = self.totals.get(name, 0.0) + value

    def state_dict(self) -> dict[str, Any]:
        labels = None
        if self.labels is not None:
            labels = {f.name: getattr(self.labels, f.name) for f in dataclasses.fields(self.labels) if f.name != "labels"}
        return {"labels": labels, "totals": dict(self.totals), "seconds": self.seconds}

    @classmethod
    def from_state(cls, state: dict[str, Any], labels: np.ndarray | None) -> EpochInProgress:
        stats = state["labels"]
        restored = TargetLabels(labels=labels, **stats) if stats is not None and labels is not None else None
        totals = state["totals"]
        if isinstance(totals, list):  # earlier checkpoints: [total, source, target]
            totals = dict(zip(("loss", "source", "target"), totals))
        return cls(restored, {k: float(v) for k, v in totals.items()}, float(state["seconds"]))


class RunProgress:
    """Where the run stands, one checkpoint part with one owner: epochs and steps done, the best
    evaluation, whether the memory is initialised, the history of epochs, the epoch in progress,
    and the positions of the epoch's sample streams (``loaders``: the live ones, while an epoch runs;
    ``resume_loaders``: positions a resume restores into the next ones)."""

    def __init__(self, target_labels: Callable[[], np.ndarray]) -> None:
        self._target_labels = target_labels  # the memory's labels, read when an epoch in progress is restored
        self.epoch = 0
        self.iteration = 0
        """Steps done in the current epoch (0 between epochs)."""
        self.best: dict[str, float] = {"mAP": -1.0, "epoch": -1}
        self.memory_ready = False
        self.history: list[EpochLog] = []
        self.current = EpochInProgress()
        self.loaders: dict[str, TrainLoader] = {}
        self.resume_loaders: dict[str, dict[str, int]] = {}

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "iteration": self.iteration,
            "best": dict(self.best),
            "memory_ready": self.memory_ready,
            "history": [entry.to_dict() for entry in self.history],
            "epoch_progress": self.current.state_dict(),
            "loaders": {domain: loader.state_dict() for domain, loader in self.loaders.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.iteration = int(state["epoch"]), int(state.get("iteration", 0))
        self.best, self.memory_ready = dict(state["best"]), bool(state["memory_ready"])
        self.history = [EpochLog.from_dict(entry) for entry in state.get("history", [])]
        current = state.get("epoch_progress")
        self.current = EpochInProgress.from_state(current, self._target_labels()) if current else EpochInProgress()
        self.resume_loaders = dict(state.get("loaders", {}))


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
    ``dist`` is this process's rank among the run's processes (default: the process group it has
    joined, or a single process); only rank 0 logs and writes.
    """

    def __init__(
        self,
        config: Config,
        log: Callable[[str], None] = print,
        progress: bool = True,
        hooks: Sequence[Hook] | None = None,
        dist: Distributed | None = None,
    ) -> None:
        self.dist = dist if dist is not None else Distributed.current()
        self.log = log if self.dist.is_main else _silent
        self.progress = progress and self.dist.is_main
        self.method: type[SlotMemory] = memory_class(config.memory.kind)  # an unknown kind fails before anything
        # the method's defaults filled in: the saved config says what the run used
        self.config = dataclasses.replace(config, memory=self.method.resolve(config.memory))
        self.device = resolve_device(config.device)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", torch.cuda.current_device())  # this rank's GPU (init_distributed)
        self.output = Path(config.output)
        self.hooks = list(default_hooks() if hooks is None else hooks)
        c = self.config
        self._check_processes()
        self.amp_dtype = resolve_amp(c.runtime.amp, self.device)
        self.channels_last = resolve_channels_last(c.runtime.channels_last, self.device, is_token_backbone(c.model.arch))
        self.workers = resolve_workers(c.data.workers, self.device, self.dist.world_size)
        set_deterministic(c.runtime.deterministic, self.device)
        require_backbone(c.model.arch)  # before minutes of reading or generating data
        if c.mode in ("uda", "usl") and c.pseudo.neighbors == "approximate" and c.pseudo.knn_backend == "torch":
            require_faiss()  # the approximate search is needed at the first epoch's labels
        for unread in self.method.unread_settings(config.memory):
            self.log(f"note: {unread} is not a setting of memory.kind {c.memory.kind}: it is ignored")

        self.run = RunProgress(lambda: self.target_labels)
        self.build_data()
        self.build_model()
        self.build_memory()
        self.build_optimizer()
        self._kept_loaders: dict[str, TrainLoader] = {}
        self.saved_at: tuple[int, int] | None = None
        """(epoch, iteration) of the last ``save_progress``."""

    # ------------------------------------------------------------------------------------------------
    # the build stages (each a method a subclass may replace; run in this order)

    def build_data(self) -> None:
        """The source and target datasets, their transforms and fingerprints (``source``, ``target``,
        ``train_target``, ``train_transform``, ``test_transform``, ``fingerprints``)."""
        c = self.config
        torch.manual_seed(derive_seed(c.seed, RngStream.MODEL_INIT))
        with self.dist.main_first():  # rank 0 generates a missing synthetic domain, the others read it
            self.sources: list[Dataset] = [self._load(name) for name in c.source_names] if c.uses_source else []
            self.target: Dataset = self._load(c.data.target)
        # several sources are one source with more classes (each source's identities kept apart)
        self.source: Dataset | None = combine_sources(self.sources) if self.sources else None
        self.train_target = c.mode in ("uda", "usl", "oracle")
        if self.train_target and not self.target.train:
            raise ValueError(f"target {self.target.name} has no training images")
        for source in self.sources:
            if source.num_train_pids == 0:
                raise ValueError(f"source {source.name} has no labelled training images")
        self._warn_about_data()
        self.num_source_classes = self.source.num_train_pids if self.source is not None else 0
        self.num_target = len(self.target.train) if self.train_target else 0
        mean, std = model_normalization(c.model)  # the architecture's, unless the config says otherwise
        self.train_transform = build_train_transform(
            c.data.height, c.data.width, flip_p=c.data.flip_p, padding=c.data.padding, erasing_p=c.data.erasing_p,
            padding_mode=c.data.padding_mode, padding_fill=c.data.padding_fill, mean=mean, std=std,
        )
        self.test_transform = build_test_transform(c.data.height, c.data.width, mean, std)
        # hashed once: every checkpoint stores them, and a resume compares them
        self.fingerprints = {
            "source": self.source.fingerprint() if self.source is not None else "",
            "target": self.target.fingerprint(),
        }

    def build_model(self) -> None:
        """The encoder (``model``, described by ``description``) and what a step runs (``network``:
        the encoder, wrapped in DistributedDataParallel with several processes)."""
        c = self.config
        pretrained: bool | str = {"imagenet": True, "none": False}.get(c.model.pretrained, c.model.pretrained)
        description = describe_model(c.model, c.bn_domains, c.data.height, c.data.width)
        start = self._starting_encoder(description) if c.model.init_from else None
        self.model = build_model(description, pretrained if start is None else False,
                                 freeze_dsbn_neck_bias=c.model.freeze_dsbn_neck_bias)
        if start is not None:
            self.model.load_state_dict(start)
        self.model.to(self.device, memory_format=torch.channels_last if self.channels_last else torch.preserve_format)
        self.description = {**description, "out_features": self.model.out_features}
        self._bn_buffers = batchnorm_buffers(self.model)
        self.network: torch.nn.Module = self.model
        if self.dist.enabled:
            if c.model.sync_bn:
                set_bn_groups(self.model, self._bn_group_size(), self.dist)
            self.network = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                **_NO_BUFFER_SYNC,  # BN statistics are averaged after each step instead
            )

    def _starting_encoder(self, description: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The weights of ``model.init_from``'s encoder, refused unless it is built as this run's."""
        path = self.config.model.init_from
        state = load_checkpoint(path)
        saved = state["model"]
        differ = [key for key in ("arch", "features", "pooling", "dropout", "bn_domains") if saved.get(key) != description[key]]
        if differ:
            listed = "; ".join(f"{key}: {saved.get(key)!r} there, {description[key]!r} here" for key in differ)
            raise CheckpointError(
                f"model.init_from {path}: its encoder is not built as this run's ({listed}); BN domains differ "
                "between a UDA run with DSBN (2) and the others (1)"
            )
        return state["state_dict"]

    def build_memory(self) -> None:
        """The method's memory (``memory``) and the stage that labels the target each epoch
        (``labeler``, with the clustering settings the method asks for)."""
        c = self.config
        cameras = [cam for _, _, cam in self.target.train] if self.train_target else []
        data = MemoryData(self.model.out_features, self.num_source_classes, self.num_target, cameras)
        self.memory: SlotMemory = self.method.from_config(c.memory, data).to(self.device)
        settings = self.method.pseudo_settings(c.pseudo)
        self.labeler = target_labeler(c, self.target, self.device, self.progress, settings) if self.train_target else None

    def build_optimizer(self) -> None:
        """The optimiser, its per-epoch learning-rate schedule and the fp16 gradient scaler."""
        c = self.config
        self.optimizer = build_optimizer([p for p in self.model.parameters() if p.requires_grad], c.optim)
        self.scheduler = build_scheduler(self.optimizer, c.optim)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)

    # ------------------------------------------------------------------------------------------------
    # where the run stands (owned by ``run``)

    @property
    def epoch(self) -> int:
        """Epochs done."""
        return self.run.epoch

    @property
    def iteration(self) -> int:
        """Steps done in the current epoch (0 between epochs)."""
        return self.run.iteration

    @property
    def history(self) -> list[EpochLog]:
        return self.run.history

    @property
    def memory_ready(self) -> bool:
        return self.run.memory_ready

    @property
    def best(self) -> dict[str, float]:
        """The best evaluation so far: ``mAP`` and its ``epoch``."""
        return self.run.best

    @best.setter
    def best(self, value: dict[str, float]) -> None:
        self.run.best = dict(value)

    def _check_processes(self) -> None:
        """Refuse a split over the processes that would change what a step computes."""
        c, k = self.config, self.dist.world_size
        if k == 1:
            return
        batch, n = c.optim.batch_size, c.model.images_per_bn
        if batch % k:
            raise ValueError(
                f"optim.batch_size {batch} (images per domain in a global batch) does not split evenly over {k} "
                f"processes: use a multiple of {k}, or another number of processes"
            )
        if c.model.sync_bn:
            self._bn_group_size()
            return
        per = batch // k
        if n == 0:
            raise ValueError(
                f"model.images_per_bn 0 normalises the whole batch of {batch} in every BatchNorm, but each of the {k} "
                "processes holds only its part: set --model.sync_bn true, or a model.images_per_bn that divides "
                f"{per}"
            )
        if per % n:
            raise ValueError(
                f"each of the {k} processes holds {per} images of a domain, which is not a multiple of "
                f"model.images_per_bn ({n}): set --model.sync_bn true to share BatchNorm groups across processes, "
                f"or use another number of processes"
            )

    def _bn_group_size(self) -> int:
        """How many consecutive ranks form one BatchNorm group with ``model.sync_bn``."""
        c, k = self.config, self.dist.world_size
        per, n = c.optim.batch_size // k, c.model.images_per_bn or c.optim.batch_size
        if n <= per:
            if per % n:
                raise ValueError(f"model.images_per_bn {n} must divide the {per} images of a domain each process holds")
            return 1
        if n % per or k % (n // per):
            raise ValueError(
                f"a BatchNorm group of {n} images cannot be made of whole processes holding {per} images each "
                f"({k} processes): choose a number of processes that divides the batch into groups"
            )
        return n // per

    def _load(self, name: str | None) -> Dataset:
        assert name is not None
        d = self.config.data
        settings = {"test_size": d.vehicleid_test_size, "seed": d.synth_seed, "split": d.split,
                    "protocol": d.cuhk03_protocol, "boxes": d.cuhk03_boxes}
        accepted = dataset_options(name)  # a registered reader takes the settings that apply to it
        dataset = load(name, d.root, **{key: value for key, value in settings.items() if key in accepted})
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
        """docs/method.md#training-loop: the memory from the initial encoder, then per epoch the target labels, an
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
                    self.run.current = EpochInProgress(labels=self.assign_labels())
                    self.run.current.seconds = time.time() - started
                entry = self.train_epoch()
                self.history.append(entry)
                self._call("after_epoch", entry)
        finally:
            try:
                self._call("after_train")
            finally:
                self._kept_loaders.clear()  # ends the loaders' worker processes
        return self.history

    def _call(self, moment: str, *args: Any) -> None:
        for hook in self.hooks:
            getattr(hook, moment)(self, *args)

    # ------------------------------------------------------------------------------------------------
    # the stages

    def init_memory(self) -> None:
        """Fill the memory with one forward pass of the initial encoder (docs/method.md#initialisation)."""
        with memory_advice("extracting the initial memory features", "lower eval.batch_size (--eval.batch_size)"):
            self._init_memory()

    def _init_memory(self) -> None:
        if self.source is not None:
            # each source through its own BN branch when it has one, else all through branch 0
            features = torch.cat([
                self._extract(items, domain, "source features") for domain, items in self._source_parts()
            ])
            self.memory.init_source(features, [p for _, p, _ in self.source.train])
        fault_point("init_memory")
        if self.train_target:
            self.memory.initial_target(self._extract_target)  # SpCL's instances; others fill theirs each epoch
        self.run.memory_ready = True

    def _source_parts(self) -> list[tuple[int, list[Item]]]:
        """(BN branch, training items) of each source stream: one per source with ``dsbn_per_source``
        (branches 0..S-1), else the combined source in branch 0."""
        assert self.source is not None
        if self.config.bn_domains <= 2 or not self.source.parts:
            return [(0, self.source.train)]
        parts, start = [], 0
        for domain, (_, count) in enumerate(self.source.parts):
            parts.append((domain, self.source.train[start:start + count]))
            start += count
        return parts

    def _extract_target(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The target training features under the current encoder (evaluation mode, target BNs)."""
        return self._extract(self.target.train, -1, "target features", dtype)

    def _extract(self, items: list[Item], domain: int, desc: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        c = self.config
        with use_domain(self.model, domain):
            return extract_features(
                self.model, items, self.test_transform, self.device, c.eval.batch_size, self.workers, desc,
                self.progress, self.dist, dtype=dtype,
            )

    def assign_labels(self) -> TargetLabels | None:
        """The classes of the target slots for this epoch (docs/method.md#pseudo-labels), set in the memory."""
        if self.labeler is None:
            return None
        remedy = ("lower pseudo.k1 (the neighbours kept per image), or use --pseudo.neighbors approximate; on an "
                  "accelerator, --device cpu gives the search the machine's memory")
        labeler = self.labeler
        # SpCL clusters its memory's instances, the other methods fresh features of the current encoder
        features = self.memory.clustering_features(self._extract_target)

        def compute() -> tuple[TargetLabels, dict[str, Any]]:
            with memory_advice(f"pseudo-labelling {self.num_target} target features on {self.device}", remedy):
                return labeler(features), labeler.state_dict()

        labels, state = self.dist.run_on_main(compute, "pseudo-labelling")
        if not self.dist.is_main:
            labeler.load_state_dict(state)  # e.g. the alpha fixed at the first epoch
        if labels.search_note:
            self.log(f"epoch {self.epoch + 1}: {labels.search_note}")
        fault_point(f"labels:{self.epoch + 1}")
        try:
            self.memory.set_epoch_labels(self.epoch, features, labels.labels)
        except ValueError as error:
            raise ValueError(f"epoch {self.epoch + 1}: {error}") from None
        return labels

    def train_epoch(self) -> EpochLog:
        """The epoch's steps of the method's loss and momentum updates (docs/method.md#hybrid-memory,
        #training-loop), from the step the epoch is at; returns the epoch's record."""
        c, run = self.config, self.run
        if run.iteration == 0:
            torch.manual_seed(derive_seed(c.seed, run.epoch, RngStream.AUGMENTATION))  # dropout
        run.loaders = self._make_loaders()
        started = time.time()
        self.model.train()
        iters = c.iters_per_epoch
        current = run.current
        bar = progress(range(run.iteration, iters), f"epoch {run.epoch + 1}/{c.optim.epochs}", enabled=self.progress)
        for iteration in bar:
            step = self.train_step(iteration)
            current.add(step)
            run.iteration = iteration + 1
            bar.set_postfix(loss=f"{step.loss:.3f}")
            fault_point(f"step:{run.epoch + 1}:{run.iteration}")
            self._call("after_step", step)
        current.seconds += time.time() - started
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        run.epoch += 1
        run.iteration = 0
        run.loaders = {}
        mean = {name: total / iters for name, total in current.totals.items()}
        labels = current.labels
        run.current = EpochInProgress()
        return EpochLog(
            epoch=run.epoch, loss=float(mean.pop("loss", float("nan"))), losses={k: float(v) for k, v in mean.items()},
            num_clusters=labels.num_clusters if labels else 0, num_outliers=labels.num_outliers if labels else 0,
            alpha=float(labels.alpha) if labels and labels.alpha is not None else float("nan"), lr=lr,
            seconds=current.seconds, quality=dict(labels.quality) if labels else {},
            search=dict(labels.search) if labels else {},
        )

    def train_step(self, iteration: int) -> StepLosses:
        """Forward both domains' batches, the method's loss against the memory as it was before this
        step, an optimizer step, then the memory's momentum update with the whole global batch."""
        images, slots = [], []
        for domain, loader in self.run.loaders.items():
            batch_images, batch_pids, batch_index = loader.next()
            images.append(batch_images)
            # a source sample's slot is its class centroid, a target sample's what the method gives it
            slots.append(self.memory.source_slots(batch_pids) if domain.startswith("source")
                         else self.memory.target_slots(batch_index))
        batch = torch.cat(images).to(self.device, non_blocking=True)
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        # one forward pass for both domains: DSBN splits the batch into its source and target halves
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None):
            features = self.network(batch)
        features = features.float()  # the memory, its update and the loss stay float32
        sizes = [len(s) for s in slots]
        local_slots = torch.cat(slots).to(features.device)
        # the global batch's slots in the order one process would see them: losses that depend on the
        # batch's composition (per-camera means) and the momentum update need them
        batch_slots = self._global_order(self.dist.gather_equal(local_slots), sizes) if self.dist.enabled else local_slots
        # one pass over the memory for both domains
        terms = self.memory.loss_terms(features, local_slots, batch_slots)
        loss = sum(terms.values())
        # the global batch's losses (equal slices: the mean of the ranks' means), the same on every rank
        values = self.dist.mean(torch.stack([loss.detach(), *(t.detach() for t in terms.values())]))
        if not math.isfinite(values[0]):
            raise TrainingDiverged(
                f"loss became {values[0]} at epoch {self.epoch + 1}; the last good checkpoint "
                f"{self.output / 'last.pth'} is kept. Lower the learning rate or check the data"
                + (" (mixed precision is on: --amp off trains in float32)." if self.amp_dtype is not None else ".")
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.dist.average_(self._bn_buffers)
        features = features.detach()
        if self.dist.enabled:
            features = self._global_order(self.dist.gather_equal(features), sizes)
        self.memory.update(features, batch_slots)
        return StepLosses(iteration, float(values[0]), dict(zip(terms, (float(v) for v in values[1:]))))

    @staticmethod
    def _global_order(gathered: list[torch.Tensor], sizes: list[int]) -> torch.Tensor:
        """The ranks' slices of a global batch in the order one process would see them: each
        domain's slices of all ranks in rank order, source before target."""
        return torch.cat([part for domain in zip(*(g.split(sizes) for g in gathered)) for part in domain])

    def _make_loaders(self) -> dict[str, TrainLoader]:
        """The epoch's streams: source (true labels) and target (this epoch's labels), each where a
        resumed run had left it."""
        loaders = {}
        if self.source is not None:
            parts = self._source_parts()
            for domain, items in parts:  # "source", or "source0", "source1", ... with a BN branch each
                name = "source" if len(parts) == 1 else f"source{domain}"
                pids = np.array([p for _, p, _ in items])
                loaders[name] = self._loader(name, items, pids, RngStream.SOURCE_SAMPLER, domain if len(parts) > 1 else None)
        if self.train_target:
            sampled = self.memory.sampling_labels.cpu().numpy()  # what the method draws: clusters, proxies, ...
            loaders["target"] = self._loader("target", self.target.train, sampled, RngStream.TARGET_SAMPLER)
        for domain, state in self.run.resume_loaders.items():
            loaders[domain].load_state_dict(state)
        self.run.resume_loaders = {}
        return loaders

    def _loader(
        self, domain: str, items: list[Item], pids: np.ndarray, stream: RngStream, part: int | None = None
    ) -> TrainLoader:
        """The domain's stream for this epoch; the loader (and its worker processes) is kept from one
        epoch to the next, only its sampler changes. ``part``: which source of several, each with its
        own stream."""
        c = self.config
        cams = [cam for _, _, cam in items]
        seed = derive_seed(c.seed, stream) if part is None else derive_seed(c.seed, stream, part)
        sampler = RandomMultipleGallerySampler(
            pids, cams, num_instances=c.data.num_instances, seed=seed, epoch=self.epoch,
            min_length=c.optim.batch_size, seeded=True,
        )
        if len(sampler) == 0:
            raise ValueError("no training sample has a label: nothing to sample from")
        loader = self._kept_loaders.get(domain)
        if loader is not None:
            loader.set_sampler(sampler)
            return loader
        dataset = AugmentedImages(items, self.train_transform, cache=c.data.cache_images)
        # per-sample augmentation seeds travel with the indexes: the generator only seeds the workers
        loader = self._kept_loaders[domain] = TrainLoader(
            dataset, sampler, c.optim.batch_size, workers=self.workers,
            generator=torch.Generator().manual_seed(seed),
            pin_memory=self.device.type == "cuda", rank=self.dist.rank, world_size=self.dist.world_size,
            prefetch=c.data.prefetch, persistent=c.data.persistent_workers,
        )
        return loader

    def evaluate(self, on_source: bool = False, rerank: bool | None = None) -> dict[str, Any]:
        """mAP / CMC on the target's test split (or the source's, with its BN branch)."""
        data = self.source if on_source else self.target
        if data is None:
            raise ValueError("this run has no source domain to evaluate on")
        if on_source and len(self._source_parts()) > 1:
            raise ValueError("with one BN branch per source, evaluate each source on its own (spcl eval --test-source "
                             "uses branch 0, the first source)")
        c = self.config
        return evaluate_model(
            self.model, data, self.test_transform, self.device, domain=0 if on_source else -1,
            rerank=c.eval.rerank if rerank is None else rerank, batch_size=c.eval.batch_size,
            workers=self.workers, progress=self.progress, dist=self.dist,
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
            "trainer": self.run,
            "rng": _TorchRNG(),
        }
        if self.labeler is not None:
            parts["labels"] = self.labeler
        if self.scaler.is_enabled():
            parts["scaler"] = self.scaler  # fp16: the loss scale it has found
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
        if "scaler" not in state:
            parts.pop("scaler", None)  # a run that did not use fp16 before: the scaler starts afresh
        missing = [name for name in parts if name not in state]
        if missing:
            raise CheckpointError(f"the checkpoint in {self.output} has no {', '.join(missing)}: it cannot be resumed")
        for name in ("memory", *[n for n in parts if n != "memory"]):  # the memory first: it holds the labels
            parts[name].load_state_dict(state[name])

    def _check_settings(self, state: dict[str, Any]) -> None:
        """Refuse to continue a run with other training settings; say which changes are allowed."""
        saved_config = config_of(state)
        if saved_config.memory.kind == self.config.memory.kind:  # a run of an earlier version: as this one reads it
            saved_config = dataclasses.replace(saved_config, memory=self.method.resolve(saved_config.memory))
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
        """Write the run's checkpoint to ``<output>/<name>``, atomically (rank 0 only: every rank
        holds the same state)."""
        path = self.output / name
        if self.dist.is_main:
            save_checkpoint(self.state(), path)
        return path

    def save_progress(self) -> Path:
        """Write ``last.pth``, the checkpoint a re-run resumes from, keeping the one it replaces as
        ``last.previous.pth`` (used when the newest is damaged); rank 0 only."""
        path = self.output / "last.pth"
        if self.dist.is_main:
            save_checkpoint(self.state(), path, keep_previous=True)
        self.saved_at = (self.epoch, self.iteration)
        return path

