"""Typed experiment configuration (docs/method.md#training-loop defaults) with YAML presets and dotted overrides.

A config is a value: the code that reads it never mutates it.  Every field can be set from YAML, from the
command line (``--optim.lr 0.00035`` or a short alias such as ``--lr``), or from Python with
``replace``-style overrides; the effective config is written next to every run.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import types
import typing
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

MODES = ("uda", "usl", "source-only", "oracle")


class ConfigError(ValueError):
    """A config value, key or file is not what a config allows; the message names the field or file."""

Mode = Literal["uda", "usl", "source-only", "oracle"]

PRESET_DIR = Path(__file__).parent / "configs"
_LARGE_TARGETS = ("msmt17", "veri", "vehicleid", "vehiclex")


@dataclass(frozen=True)
class DataConfig:
    source: str | None = None
    """Labelled source dataset (name or path); required for uda and source-only. Several sources are
    separated by commas (``market1501,cuhk03,msmt17``; a list in YAML): their classes are
    concatenated, each source's identities kept apart, and the method sees one source with more
    classes."""
    target: str = "synth-target"
    """Unlabelled target dataset (name or path): trained on without labels, and evaluated on."""
    root: str = "data"
    """Folder that holds the datasets (and where the synthetic domains are generated)."""
    height: int = 256
    """Image height the encoder sees (256 for persons, 224 for vehicles)."""
    width: int = 128
    """Image width the encoder sees (128 for persons, 224 for vehicles)."""
    workers: int = -1
    """Loader worker processes per training process; -1: as many as the machine's cores allow (one
    per core left for each process on CUDA, at most 16; half the cores, at most 4, on the CPU,
    where the workers compete with the computation)."""
    cache_images: bool = False
    """Keep decoded training images in memory (small datasets; use with workers 0)."""
    num_instances: int = 4
    """Images per identity in a batch (the anchor plus three from other cameras)."""
    padding: int = 10
    """Pixels of padding before the random crop (10 at 256x128; scale it down for small images)."""
    padding_mode: Literal["constant", "edge", "reflect"] = "constant"
    """How the padding is filled (``spcl.data.transforms.PADDING_MODES``): constant (the reference's
    black, ``padding_fill``), edge pixels repeated, or mirrored; edge / reflect suit light or uniform
    backgrounds, where a black frame is an artefact."""
    padding_fill: int = 0
    """Grey level (0-255) of constant padding."""
    flip_p: float = 0.5
    """Probability of a horizontal flip."""
    erasing_p: float = 0.5
    """Probability of random erasing (docs/method.md#training-loop)."""
    vehicleid_test_size: int = 800
    """VehicleID's test set: 800, 1600 or 2400 identities."""
    split: int = 0
    """Which split of a dataset with several (CUHK03's classic protocol 0..19; CUHK01, VIPeR, GRID,
    PRID, iLIDS 0..9) the run's datasets use."""
    cuhk03_protocol: Literal["new", "classic"] = "new"
    """CUHK03: the new protocol (767 / 700 persons) or the classic one (20 splits of 100 test persons)."""
    cuhk03_boxes: Literal["detected", "labeled"] = "detected"
    """CUHK03: the detector's boxes or the hand-drawn ones."""
    synth_seed: int = 0
    """Seed of the built-in synthetic domains (generated into the data root on first use)."""
    skip_bad_images: bool = False
    """Decode every image before training and leave out (and list) those that fail; by default the
    first image that cannot be read stops the run, naming the file."""
    prefetch: int = 4
    """Batches each loader worker prepares ahead (``DataLoader(prefetch_factor=...)``)."""
    persistent_workers: bool = True
    """Keep the loader workers alive for the whole run instead of starting them at every pass."""


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "resnet50"
    """Backbone (``spcl.models.available_backbones()``): resnet10/18/34/50/101, resnet50_ibn_a, vit_small(_ics), vit_base_ics, vit_tiny, or timm:<name>."""
    pretrained: str = "imagenet"
    """'imagenet' (torchvision cache, no download), 'none', or a path to a state dict."""
    init_from: str = ""
    """An spcl checkpoint whose encoder starts this run (instead of ``pretrained``): e.g. a few epochs of
    one method before another, or a source-trained model before adaptation. Its architecture, feature
    size, pooling and BN domains must be this run's; the memory and optimiser start afresh."""
    features: int = 0
    """Optional linear embedding size; 0 keeps the backbone width (2048 for ResNet-50)."""
    pooling: Literal["avg", "gem"] = "avg"
    """Global pooling of the last feature map: average, or GeM (learnable exponent, 3 at the start)."""
    dropout: float = 0.0
    """Dropout before the embedding (0: none, as in every published recipe)."""
    dsbn: bool = True
    """Domain-specific BatchNorm in UDA (docs/method.md#dsbn); ignored without a source."""
    images_per_bn: int = 16
    """Every BatchNorm normalises sub-batches of this many images (16 = the reference's 4 GPUs)."""
    dsbn_per_source: bool = False
    """With several sources and DSBN: one BatchNorm branch per source (each source then brings a full
    batch of ``optim.batch_size`` images to every step), instead of one branch that all sources share."""
    freeze_dsbn_neck_bias: bool = False
    """The reference un-freezes the neck bias when converting to DSBN; True keeps it frozen."""
    sync_bn: bool = False
    """With several processes, a BatchNorm group of images_per_bn images may span ranks (their
    statistics are shared across them); off, as in the reference: each rank normalises its own."""
    input_mean: tuple[float, ...] = ()
    """Per-channel mean images are normalised with; empty: the architecture's (ImageNet's, or 0.5 for
    the LUPerson ViTs). Recorded in checkpoints, so extraction and export never repeat it."""
    input_std: tuple[float, ...] = ()
    """Per-channel standard deviation, as ``input_mean``."""
    drop_path: float | None = None
    """Token backbones (ViTs): stochastic depth of the last block, linear from 0 at the first (None:
    0.1; the USL recipe of TransReID-SSL uses 0.3)."""
    grad_checkpointing: bool = False
    """Token backbones: recompute each block in the backward pass instead of keeping its activations
    (less memory, about a third more time)."""


@dataclass(frozen=True)
class MemoryConfig:
    """The method: ``kind`` names a registered memory class (``spcl.memory.registered_memories()``),
    and the other fields are its hyper-parameters. A field left empty (None) takes the method's own
    default, written once in the memory class (its constructor); a field the method does not read
    stays empty in the run's saved config."""

    kind: str = "hybrid"
    """The method: 'hybrid' (SpCL: source centroids, target instances, self-paced clusters),
    'cluster' (Cluster Contrast: one slot per cluster, set each epoch from fresh features; outliers
    leave training), 'cap' (camera-aware proxies: one per cluster and camera, CAP's intra- and
    inter-camera terms), 'o2cap' (the same proxies, O2CAP's offline and online association terms), or
    any kind registered with ``spcl.memory.register_memory``."""
    temp: float | None = None
    """Softmax temperature (hybrid, cluster: 0.05; cap, o2cap: 0.07)."""
    momentum: float | None = None
    """The update's momentum (hybrid 0.2, cluster 0.1 as in Cluster Contrast's scripts, cap and o2cap 0.2)."""
    source_update: Literal["sample", "mean"] | None = None
    """hybrid: 'sample' = each sample pulls its class centroid in turn (reference, default); 'mean' =
    once per class (paper)."""
    cluster_update: Literal["sample", "hard"] | None = None
    """cluster: 'sample' (default) = every batch sample pulls its slot in batch order; 'hard' = each
    slot of the batch is pulled once, by its batch sample least similar to it (Cluster Contrast's use_hard)."""
    negatives: int | None = None
    """cap: the hardest other-cluster proxies of the inter-camera term (50); o2cap: the hard negatives
    of each association term (50)."""
    positives: int | None = None
    """o2cap: online positives, the best proxies of this many cameras (3)."""
    balance: float | None = None
    """o2cap: weight of the instance-to-proxy similarity in the online association (0.15; the rest is
    proxy-to-proxy similarity)."""
    inter_camera_weight: float | None = None
    """cap: weight of the inter-camera term (0.5)."""
    inter_camera_from: int | None = None
    """cap: first epoch (counted from 0) with the inter-camera term (5)."""
    precision: Literal["float32", "float16", "bfloat16"] | None = None
    """hybrid: how the slots are stored (float32 by default). float16 halves a memory of 10^6 target
    instances (8 -> 4 GiB at d = 2048); the loss and the update still compute in float32."""


@dataclass(frozen=True)
class PseudoLabelConfig:
    eps: float = 0.6
    """DBSCAN's radius on the Jaccard distance."""
    eps_gap: float = 0.02
    """The reliability criterion's tighter and looser radii are eps -/+ eps_gap."""
    k1: int = 30
    """Neighbours of the k-reciprocal encoding."""
    k2: int = 6
    """Neighbours of its local query expansion."""
    min_samples: int = 4
    """DBSCAN's core-point count (the point itself included)."""
    self_paced: bool = True
    """The cluster reliability criterion; False keeps every DBSCAN cluster as it is (ablation)."""
    discard_outliers: bool = False
    """Drop un-clustered samples from training, as classic pseudo-label methods do (ablation)."""
    neighbors: Literal["auto", "exact", "approximate"] = "auto"
    """Neighbour search: exact (tiled products, float32), approximate (inverted file searched cell
    against cells, float16 features; needs faiss), or auto: exact up to ``exact_up_to`` features."""
    exact_up_to: int = 100_000
    """The largest target that ``neighbors: auto`` searches exactly (N^2 work: about 5 minutes at
    100,000 x 2048 on a 2-core CPU); above it the search is approximate."""
    approx_cells: int = 0
    """Cells of the approximate search (0: about 2 sqrt(N))."""
    approx_probe: int = 8
    """Cells each cell is compared with in the approximate search (its own included): the least it
    uses; raised until ``approx_recall`` is reached."""
    approx_recall: float = 0.99
    """The recall of the k1 nearest neighbours the approximate search must reach, measured each epoch
    on ``approx_sample`` random points against the exact search; the probe is raised until it does,
    and the search is exact when that probe makes it no faster. 0 skips the measurement (the probe
    is used as given, and nothing says what it misses)."""
    approx_sample: int = 1000
    """Points whose exact neighbours measure the approximate search's recall (sample x N x d work)."""
    knn_backend: Literal["torch", "faiss"] = "torch"
    """Exact search: tiled torch products, or a faiss index of ``faiss_index`` (which then decides
    exactness whatever ``neighbors`` says: "Flat" is exact, e.g. "IVF1024,Flat" is not)."""
    faiss_index: str = "Flat"
    """faiss index factory string when knn_backend is faiss ("Flat" is exact)."""


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 3.5e-4
    """Learning rate of the encoder."""
    weight_decay: float = 5e-4
    """L2 weight decay on every parameter."""
    epochs: int = 50
    """Training epochs."""
    iters: int = 0
    """Iterations an epoch; 0 = the reference rule (800 when the target is MSMT17 or a vehicle set, else 400)."""
    step_size: int = 20
    """The learning rate is multiplied by ``gamma`` every this many epochs (unless ``milestones`` is set)."""
    gamma: float = 0.1
    """Factor the learning rate is multiplied by at each step."""
    milestones: tuple[int, ...] = ()
    """Epochs (counted from 0) at which the learning rate is multiplied by ``gamma`` (CAP, O2CAP: 20, 40);
    empty: every ``step_size`` epochs. On the command line: ``--optim.milestones 20,40``."""
    warmup_epochs: int = 0
    """Epochs of linear learning-rate warm-up (CAP, O2CAP: 10): epoch e < warmup_epochs trains at
    lr x (warmup_factor (1 - e / warmup_epochs) + e / warmup_epochs)."""
    warmup_factor: float = 0.01
    """The warm-up's starting fraction of the learning rate (CAP, O2CAP: 0.01)."""
    optimizer: Literal["adam", "sgd"] = "adam"
    """Adam (the reference's; L2 weight decay added to the gradient) or SGD with momentum."""
    sgd_momentum: float = 0.9
    """optimizer sgd: its momentum."""
    batch_size: int = 64
    """Images per domain in a batch (64 source + 64 target in UDA)."""


@dataclass(frozen=True)
class EvalConfig:
    every: int = 10
    """Evaluate the target every this many epochs (0: after the last epoch only)."""
    rerank: bool = False
    """k-reciprocal re-ranking of the evaluations (k1 20, k2 6, lambda 0.3)."""
    batch_size: int = 128
    """Images a forward pass when extracting features (memory, clustering, evaluation)."""


@dataclass(frozen=True)
class RuntimeConfig:
    """How the run uses the machine; none of it changes what is computed beyond float rounding."""

    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"
    """Mixed precision of the encoder (``torch.autocast``): auto = bf16 on CUDA (fp16 with a gradient
    scaler where bf16 is missing), off on the CPU. The memory, its update and the loss stay float32."""
    channels_last: Literal["auto", "on", "off"] = "auto"
    """Channels-last memory layout for the convolutions: auto = on with CUDA."""
    deterministic: bool = False
    """Bit-reproducible CUDA kernels (``torch.use_deterministic_algorithms``, no cuDNN autotuning)."""
    backend: Literal["auto", "nccl", "gloo"] = "auto"
    """torch.distributed backend under torchrun: auto = NCCL on CUDA, gloo on the CPU."""
    timeout_minutes: float = 60.0
    """How long a process waits for the others (rank 0 alone computes pseudo labels and evaluations)."""


@dataclass(frozen=True)
class Config:
    mode: Mode = "uda"
    """uda (labelled source + unlabelled target), usl (target only), source-only (the source's labels alone: the lower bound, and domain generalisation) or oracle (the target's true labels: the upper bound)."""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    pseudo: PseudoLabelConfig = field(default_factory=PseudoLabelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    seed: int = 1
    """Seed of every random stream of the run (weights, samplers, augmentation)."""
    device: str = "auto"
    """auto (CUDA when present, else the CPU), cpu, cuda, or a device such as cuda:1."""
    output: str = "runs/spcl"
    """Folder of the run: config.yaml, metrics.csv, checkpoints, evaluations, TensorBoard logs."""
    resume: bool = True
    """Continue from <output>/last.pth when it exists and holds this same run."""
    checkpoint_every: int = 1000
    """Also write last.pth every this many iterations within an epoch (0: at epoch ends only);
    1000 is a few minutes of GPU work for ResNet-50."""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.mode in ("uda", "source-only") and not self.data.source:
            raise ConfigError(f"mode {self.mode!r} needs a labelled source dataset (data.source / --source)")
        names = self.source_names
        if self.data.source and (not names or len(set(names)) < len(names)):
            raise ConfigError(f"data.source must name each source once, separated by commas, got {self.data.source!r}")
        for key, value, valid, expected in self._ranges():
            if not valid:
                raise ConfigError(f"{key} must be {expected}, got {value!r}")
        if self.optim.batch_size % self.data.num_instances:
            raise ConfigError(
                f"optim.batch_size ({self.optim.batch_size}) must be a multiple of "
                f"data.num_instances ({self.data.num_instances})"
            )
        ipb = self.model.images_per_bn
        if ipb and (ipb > self.optim.batch_size or self.optim.batch_size % ipb):
            raise ConfigError(
                f"model.images_per_bn ({ipb}) must divide optim.batch_size ({self.optim.batch_size}) so that "
                "every BatchNorm sees as many images as the reference's GPUs did (0: the whole batch)"
            )

    def _ranges(self) -> list[tuple[str, Any, bool, str]]:
        """(field, value, whether it is valid, what is expected) of every bounded setting."""
        d, m, mem, p, o, e = self.data, self.model, self.memory, self.pseudo, self.optim, self.eval
        probability = "a probability in [0, 1]"
        return [
            ("data.height", d.height, d.height >= 16, "at least 16 pixels"),
            ("data.width", d.width, d.width >= 16, "at least 16 pixels"),
            ("data.workers", d.workers, d.workers >= -1, ">= 0, or -1 (as many as the cores allow)"),
            ("data.prefetch", d.prefetch, d.prefetch >= 1, ">= 1"),
            ("data.num_instances", d.num_instances, d.num_instances >= 1, ">= 1"),
            ("data.padding", d.padding, d.padding >= 0, ">= 0"),
            ("data.padding_fill", d.padding_fill, 0 <= d.padding_fill <= 255, "a grey level in [0, 255]"),
            ("data.flip_p", d.flip_p, 0.0 <= d.flip_p <= 1.0, probability),
            ("data.erasing_p", d.erasing_p, 0.0 <= d.erasing_p <= 1.0, probability),
            ("data.vehicleid_test_size", d.vehicleid_test_size, d.vehicleid_test_size in (800, 1600, 2400),
             "800, 1600 or 2400"),
            ("data.split", d.split, d.split >= 0, ">= 0 (a dataset's split index)"),
            ("model.features", m.features, m.features >= 0, ">= 0 (0: the backbone's width)"),
            ("model.dropout", m.dropout, 0.0 <= m.dropout < 1.0, "in [0, 1)"),
            ("model.images_per_bn", m.images_per_bn, m.images_per_bn == 0 or m.images_per_bn >= 2,
             "0 (the whole batch) or at least 2 (BatchNorm needs two images)"),
            ("model.input_mean", list(m.input_mean), len(m.input_mean) in (0, 3), "3 values (R,G,B), or empty"),
            ("model.input_std", list(m.input_std), len(m.input_std) in (0, 3) and all(v > 0 for v in m.input_std),
             "3 positive values (R,G,B), or empty"),
            ("model.drop_path", m.drop_path, m.drop_path is None or 0.0 <= m.drop_path < 1.0, "in [0, 1)"),
            ("memory.kind", mem.kind, bool(mem.kind), "the name of a registered memory (hybrid, cluster, cap, ...)"),
            ("memory.temp", mem.temp, mem.temp is None or mem.temp > 0, "> 0"),
            ("memory.momentum", mem.momentum, mem.momentum is None or 0.0 <= mem.momentum < 1.0, "in [0, 1)"),
            ("memory.negatives", mem.negatives, mem.negatives is None or mem.negatives >= 1, ">= 1"),
            ("memory.positives", mem.positives, mem.positives is None or mem.positives >= 1, ">= 1"),
            ("memory.balance", mem.balance, mem.balance is None or 0.0 <= mem.balance <= 1.0, "in [0, 1]"),
            ("memory.inter_camera_weight", mem.inter_camera_weight,
             mem.inter_camera_weight is None or mem.inter_camera_weight >= 0, ">= 0"),
            ("memory.inter_camera_from", mem.inter_camera_from,
             mem.inter_camera_from is None or mem.inter_camera_from >= 0, ">= 0 (an epoch)"),
            ("pseudo.eps", p.eps, 0.0 < p.eps < 1.0, "in (0, 1): a Jaccard distance"),
            ("pseudo.eps_gap", p.eps_gap, p.eps_gap >= 0, ">= 0"),
            ("pseudo.eps +- pseudo.eps_gap", f"{p.eps} +- {p.eps_gap}", 0.0 < p.eps - p.eps_gap and p.eps + p.eps_gap < 1.0,
             "inside (0, 1): DBSCAN runs at eps - eps_gap, eps and eps + eps_gap on a distance in [0, 1]"),
            ("pseudo.k1", p.k1, p.k1 >= 1, ">= 1"),
            ("pseudo.k2", p.k2, p.k2 >= 1, ">= 1"),
            ("pseudo.min_samples", p.min_samples, p.min_samples >= 1, ">= 1"),
            ("pseudo.exact_up_to", p.exact_up_to, p.exact_up_to >= 0, ">= 0 features"),
            ("pseudo.approx_cells", p.approx_cells, p.approx_cells >= 0, ">= 0 (0: about 2 sqrt(N))"),
            ("pseudo.approx_probe", p.approx_probe, p.approx_probe >= 1, ">= 1 cell"),
            ("pseudo.approx_recall", p.approx_recall, 0.0 <= p.approx_recall <= 1.0, "a share in [0, 1] (0: not measured)"),
            ("pseudo.approx_sample", p.approx_sample, p.approx_sample >= 1, ">= 1 point"),
            ("optim.lr", o.lr, o.lr > 0, "> 0"),
            ("optim.weight_decay", o.weight_decay, o.weight_decay >= 0, ">= 0"),
            ("optim.epochs", o.epochs, o.epochs >= 1, ">= 1"),
            ("optim.iters", o.iters, o.iters >= 0, ">= 0 (0: the reference's rule)"),
            ("optim.step_size", o.step_size, o.step_size >= 1, ">= 1 epoch"),
            ("optim.gamma", o.gamma, 0.0 < o.gamma <= 1.0, "in (0, 1]"),
            ("optim.milestones", list(o.milestones),
             all(m >= 1 for m in o.milestones) and list(o.milestones) == sorted(set(o.milestones)),
             "increasing epochs >= 1 (e.g. 20,40)"),
            ("optim.warmup_epochs", o.warmup_epochs, o.warmup_epochs >= 0, ">= 0 (0: no warm-up)"),
            ("optim.warmup_factor", o.warmup_factor, 0.0 < o.warmup_factor <= 1.0, "in (0, 1]"),
            ("optim.sgd_momentum", o.sgd_momentum, 0.0 <= o.sgd_momentum < 1.0, "in [0, 1)"),
            ("optim.batch_size", o.batch_size, o.batch_size >= 1, ">= 1"),
            ("eval.every", e.every, e.every >= 0, ">= 0 (0: after the last epoch only)"),
            ("eval.batch_size", e.batch_size, e.batch_size >= 1, ">= 1"),
            ("runtime.timeout_minutes", self.runtime.timeout_minutes, self.runtime.timeout_minutes > 0, "> 0"),
            ("checkpoint_every", self.checkpoint_every, self.checkpoint_every >= 0, ">= 0 (0: at epoch ends only)"),
        ]

    @property
    def source_names(self) -> tuple[str, ...]:
        """The labelled sources ``data.source`` names, in order (empty without a source)."""
        if not self.data.source:
            return ()
        return tuple(name.strip() for name in self.data.source.split(",") if name.strip())

    @property
    def bn_domains(self) -> int:
        """BatchNorm branches of the encoder: sources (one shared or one each) and the target in UDA
        with DSBN, else one."""
        if self.mode != "uda" or not self.model.dsbn:
            return 1
        return len(self.source_names) + 1 if self.model.dsbn_per_source else 2

    @property
    def uses_source(self) -> bool:
        return self.mode in ("uda", "source-only")

    @property
    def iters_per_epoch(self) -> int:
        if self.optim.iters > 0:
            return self.optim.iters
        target = Path(self.data.target).name.lower()
        return 800 if any(target.startswith(t) for t in _LARGE_TARGETS) else 400

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_dotted(self) -> dict[str, Any]:
        """Every field by its dotted name (``optim.lr``), as the command line names them."""
        return dotted(self.to_dict())

    def to_yaml(self) -> str:
        return yaml.safe_dump(_plain(self.to_dict()), sort_keys=False)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_yaml())


def _plain(value: Any) -> Any:
    """Tuples as lists, which YAML writes plainly."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def upgrade_settings(values: dict[str, Any]) -> dict[str, Any]:
    """Settings of earlier versions, as this version spells them (configs and checkpoints of older runs
    keep loading): ``memory.camera_aware: true`` is ``memory.kind: cap``."""
    memory = values.get("memory")
    if isinstance(memory, dict) and "camera_aware" in memory:
        memory = dict(memory)
        if _coerce(memory.pop("camera_aware"), bool, "memory.camera_aware"):
            logging.getLogger(__name__).warning(
                "note: memory.camera_aware: true is now written memory.kind: cap (read as such)")
            memory["kind"] = "cap"
        values = {**values, "memory": memory}
    return values


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


_LIST_FIELDS = {"data.source"}
"""Text fields that may be given as a YAML list (stored comma-separated, as the command line writes them)."""


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Turn a YAML or command-line value into the field's type, with an error that names the key."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            if type(None) in args:
                return None
        non_none = [a for a in args if a is not type(None)]
        return _coerce(value, non_none[0], key)
    if origin is tuple:
        if isinstance(value, str):  # "20,40", "20 40", "[20, 40]"; "", "()", "none": empty
            text = value.strip().strip("()[]")
            items = [] if text.lower() in ("", "none") else text.replace(",", " ").split()
        else:
            items = value
        if not isinstance(items, (list, tuple)):
            raise ConfigError(f"{key} must be a list, e.g. 20,40 or [20, 40], got {value!r}")
        return tuple(_coerce(item, args[0], key) for item in items)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key} must be one of {', '.join(map(str, args))}, got {value!r}")
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if key in _LIST_FIELDS and isinstance(value, (list, tuple)):
        if not value or not all(isinstance(v, str) and v.strip() and "," not in v for v in value):
            raise ConfigError(f"{key} must be a dataset name or path, or a list of them, got {value!r}")
        return ",".join(v.strip() for v in value)
    if annotation in (int, float, str):
        try:
            if isinstance(value, (dict, list, tuple, set)) or value is None:
                raise ValueError
            if annotation is not str and isinstance(value, bool):
                raise ValueError
            if annotation is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            converted = annotation(value)
            if annotation is float and not math.isfinite(converted):
                raise ValueError
            return converted
        except (TypeError, ValueError, OverflowError):
            kind = {"int": "int", "float": "float (a finite number)", "str": "str"}[annotation.__name__]
            raise ConfigError(f"{key} must be {kind}, got {value!r}") from None
    return value


def _build(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    hints = _field_types(cls)
    names = {f.name for f in fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {', '.join(prefix + str(k) for k in sorted(map(str, unknown)))}; "
            f"known: {', '.join(prefix + n for n in sorted(names))}"
        )
    kwargs = {}
    for name, value in values.items():
        hint = hints[name]
        if is_dataclass(hint):
            if not isinstance(value, dict):
                raise ConfigError(f"{prefix}{name} must be a mapping")
            kwargs[name] = _build(hint, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, hint, prefix + name)
    return cls(**kwargs)


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def dotted(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested mapping of config values flattened to dotted names (the inverse of nesting them)."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(dotted(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        node = nested
        *parents, leaf = str(key).split(".")
        for depth, p in enumerate(parents):
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{'.'.join(parents[: depth + 1])} is a value, not a section: {key!r} cannot be set")
        node[leaf] = value
    return nested


def load_config(
    preset: str | Path | None = None, overrides: dict[str, Any] | None = None, base: Config | None = None
) -> Config:
    """Defaults <- preset YAML (a path or a preset name from ``spcl/configs``) <- dotted overrides.

    Anything wrong is a ``ConfigError`` naming the field (and the file, when there is one).
    """
    values = base.to_dict() if base is not None else {}
    if preset is not None:
        values = _merge(values, read_preset(preset))
    if overrides:
        values = _merge(values, _nest(overrides))
    try:
        return _build(Config, upgrade_settings(values))
    except ConfigError as exc:
        if preset is None:
            raise
        raise ConfigError(f"{exc} (config {preset_path(preset)}, with the settings given on top of it)") from None


def preset_path(name: str | Path) -> Path:
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    candidate = PRESET_DIR / f"{name}.yaml"
    if candidate.is_file():
        return candidate
    raise ConfigError(f"no config file {str(name)!r} and no preset of that name; presets: {', '.join(list_presets())}")


def read_preset(name: str | Path) -> dict[str, Any]:
    path = preset_path(name)
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8-sig")) or {}
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read it as a UTF-8 text file ({exc})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of config fields at the top level")
    return values


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def leaf_fields(cls: type = Config, prefix: str = "") -> list[tuple[str, Any, Any, str]]:
    """(dotted name, type, default, doc) of every settable field, for building the command line."""
    out = []
    hints = _field_types(cls)
    docs = _field_docs(cls)
    for f in fields(cls):
        hint = hints[f.name]
        if is_dataclass(hint):
            out.extend(leaf_fields(hint, f"{prefix}{f.name}."))
        else:
            default = f.default if f.default is not dataclasses.MISSING else None
            out.append((prefix + f.name, hint, default, docs.get(f.name, "")))
    return out


def _field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings (the string literal under a field) become the command line's help text."""
    import ast
    import inspect

    try:
        tree = ast.parse(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    docs: dict[str, str] = {}
    body = tree.body[0].body  # type: ignore[attr-defined]
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if isinstance(nxt, ast.Expr) and isinstance(getattr(nxt, "value", None), ast.Constant):
                docs[node.target.id] = " ".join(str(nxt.value.value).split())
    return docs
