"""The one SpCL trainer (SPEC sections 3-7): UDA with a source, USL without, plus the source-only and
oracle baselines, all through the hybrid memory.

Memory slots: one per source class (when a source is used), then one per target training image (when
the target is trained on).  Per epoch the target slots get labels: pseudo labels with the self-paced
criterion (uda, usl), or the true identities (oracle).  A source-only run has no target slots.
"""

from __future__ import annotations

import csv
import hashlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from spcl.config import Config
from spcl.data import Dataset, ImageDataset, load
from spcl.data.sampler import RandomMultipleGallerySampler
from spcl.data.transforms import build_test_transform, build_train_transform
from spcl.evaluation import evaluate_features, re_rank, rank_metrics
from spcl.evaluation.cluster_quality import pseudo_label_quality
from spcl.evaluation.features import extract_features
from spcl.memory import HybridMemory
from spcl.models import build_encoder, convert_dsbn, num_bn_domains, set_images_per_bn, use_domain
from spcl.pseudo_labels import generate
from spcl.training.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    load_checkpoint,
    model_description,
    save_checkpoint,
    save_per_query,
)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _derive_seed(*parts: int) -> int:
    """A 63-bit seed from a tuple of ints, so every (run seed, epoch, stream) has its own RNG stream."""
    digest = hashlib.sha256(",".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


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


def evaluate_model(
    model: nn.Module,
    data: Dataset,
    transform: Callable,
    device: torch.device,
    batch_size: int = 128,
    workers: int = 0,
    rerank: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """mAP / CMC on ``data``'s query and gallery (SPEC section 8), in the model's current BN domain."""
    if not data.query or not data.gallery:
        raise ValueError(f"{data.name} has no query/gallery split to evaluate on")
    items = data.query + data.gallery
    feats = extract_features(model, items, transform, device, batch_size, workers, "eval features", progress)
    qf, gf = feats[: len(data.query)], feats[len(data.query):]
    q_pids = np.array([p for _, p, _ in data.query])
    g_pids = np.array([p for _, p, _ in data.gallery])
    q_cams = np.array([c for _, _, c in data.query])
    g_cams = np.array([c for _, _, c in data.gallery])
    if rerank:
        dist = re_rank(qf, gf)
        return rank_metrics(dist, q_pids, g_pids, q_cams, g_cams)
    return evaluate_features(qf, gf, q_pids, g_pids, q_cams, g_cams, metric="cosine", device=device)


@dataclass
class EpochLog:
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


class Trainer:
    """Builds data, model, memory and optimizer from a ``Config`` and trains with exact resume."""

    def __init__(self, config: Config, log: Callable[[str], None] = print, progress: bool = True) -> None:
        self.config = config
        self.log = log
        self.progress = progress
        self.device = resolve_device(config.device)
        self.output = Path(config.output)
        c = config

        torch.manual_seed(_derive_seed(c.seed, -1))  # model initialisation
        self.source: Dataset | None = self._load(c.data.source) if c.uses_source else None
        self.target: Dataset = self._load(c.data.target)
        self.train_target = c.mode in ("uda", "usl", "oracle")
        if self.train_target and not self.target.train:
            raise ValueError(f"target {self.target.name} has no training images")
        if self.source is not None and self.source.num_train_pids == 0:
            raise ValueError(f"source {self.source.name} has no labelled training images")

        pretrained: bool | str = {"imagenet": True, "none": False}.get(c.model.pretrained, c.model.pretrained)
        self.model = build_encoder(
            c.model.arch, pretrained=pretrained, pooling=c.model.pooling, features=c.model.features,
            dropout=c.model.dropout,
        )
        self.use_dsbn = c.mode == "uda" and c.model.dsbn
        if self.use_dsbn:
            convert_dsbn(self.model, 2, keep_frozen_bias=c.model.freeze_dsbn_neck_bias)
        set_images_per_bn(self.model, c.model.images_per_bn or None)
        self.model.to(self.device)

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

        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(params, lr=c.optim.lr, weight_decay=c.optim.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, c.optim.step_size, c.optim.gamma)

        self.train_transform = build_train_transform(
            c.data.height, c.data.width, flip_p=c.data.flip_p, padding=c.data.padding, erasing_p=c.data.erasing_p
        )
        self.test_transform = build_test_transform(c.data.height, c.data.width)
        self.epoch = 0
        self.alpha: float | None = None
        self.memory_ready = False
        self.best: dict[str, float] = {"mAP": -1.0, "epoch": -1}
        self.history: list[EpochLog] = []
        self.target_labels = np.zeros(self.num_target, dtype=np.int64)
        self._train_sets: dict[int, ImageDataset] = {}
        # hashed once: every checkpoint stores them, and a resume compares them
        self.fingerprints = {
            "source": self.source.fingerprint() if self.source is not None else "",
            "target": self.target.fingerprint(),
        }

    # ------------------------------------------------------------------------------------------------
    # set-up

    def _load(self, name: str | None) -> Dataset:
        assert name is not None
        options = {"test_size": self.config.data.vehicleid_test_size} if name == "vehicleid" else {}
        if name.startswith("synth-"):
            options["seed"] = self.config.data.synth_seed
        return load(name, self.config.data.root, **options)


    def init_memory(self) -> None:
        """Fill the memory with one forward pass of the initial encoder (SPEC section 4)."""
        c = self.config
        if self.source is not None:
            with use_domain(self.model, 0):
                f = extract_features(
                    self.model, self.source.train, self.test_transform, self.device, c.eval.batch_size,
                    c.data.workers, "source features", self.progress,
                )
            self.memory.init_source(f, [p for _, p, _ in self.source.train])
        if self.train_target:
            with use_domain(self.model, -1):
                f = extract_features(
                    self.model, self.target.train, self.test_transform, self.device, c.eval.batch_size,
                    c.data.workers, "target features", self.progress,
                )
            self.memory.init_target(f)
        self.memory_ready = True

    # ------------------------------------------------------------------------------------------------
    # pseudo labels

    def assign_target_labels(self) -> dict[str, Any]:
        """Labels for the target slots this epoch; returns the numbers logged for them."""
        c = self.config
        stats: dict[str, Any] = {}
        if not self.train_target:
            return stats
        if c.mode == "oracle":
            labels = np.array([p for _, p, _ in self.target.train], dtype=np.int64)
            if (labels < 0).any():
                raise ValueError("oracle mode needs the target's training identities, but some are unlabelled")
            stats.update(num_clusters=int(labels.max()) + 1, num_outliers=0)
        else:
            result = generate(
                self.memory.target_features, eps=c.pseudo.eps, eps_gap=c.pseudo.eps_gap, k1=c.pseudo.k1, k2=c.pseudo.k2,
                min_samples=c.pseudo.min_samples, alpha=self.alpha, self_paced=c.pseudo.self_paced,
                device=self.device, knn_backend=c.pseudo.knn_backend,
            )
            if result.alpha_computed:
                self.alpha = float(result.alpha)  # fixed at the first epoch that has a real cluster
            labels = np.asarray(result.labels, dtype=np.int64)
            stats.update(num_clusters=result.num_clusters, num_outliers=result.num_outliers)
            truth = np.array([p for _, p, _ in self.target.train])
            if (truth >= 0).all() and self.target.num_train_pids > 1:
                stats["quality"] = pseudo_label_quality(labels, truth)
        if c.pseudo.discard_outliers and c.mode != "oracle":
            # the classic pseudo-label baseline: un-clustered samples leave the memory's classes and
            # the sampler (both skip label -1)
            labels = np.where(np.bincount(labels)[labels] == 1, -1, labels)
        self.target_labels = labels
        self.memory.set_pseudo_labels(labels)
        return stats

    # ------------------------------------------------------------------------------------------------
    # data

    def _loader(self, items, pids: np.ndarray, stream: int) -> _CyclingLoader:
        c = self.config
        cams = np.array([cam for _, _, cam in items])
        sampler = RandomMultipleGallerySampler(
            pids, cams, num_instances=c.data.num_instances, seed=_derive_seed(c.seed, stream), epoch=self.epoch,
            min_length=c.optim.batch_size,
        )
        if len(sampler) == 0:
            raise ValueError("no training sample has a label: nothing to sample from")
        generator = torch.Generator().manual_seed(_derive_seed(c.seed, stream, self.epoch))
        dataset = self._train_sets.get(stream)
        if dataset is None:
            dataset = self._train_sets[stream] = ImageDataset(items, self.train_transform, cache=c.data.cache_images)
        loader = DataLoader(
            dataset, batch_size=c.optim.batch_size, sampler=sampler,
            num_workers=c.data.workers, drop_last=True, generator=generator,
            pin_memory=self.device.type == "cuda", persistent_workers=False,
        )
        return _CyclingLoader(loader)

    # ------------------------------------------------------------------------------------------------
    # one epoch

    def train_epoch(self) -> EpochLog:
        c = self.config
        start = time.time()
        torch.manual_seed(_derive_seed(c.seed, self.epoch, 7))  # dropout and main-process augmentation
        stats = self.assign_target_labels()
        loaders = []
        if self.source is not None:
            pids = np.array([p for _, p, _ in self.source.train])
            loaders.append((self._loader(self.source.train, pids, 1), "source"))
        if self.train_target:
            loaders.append((self._loader(self.target.train, self.target_labels, 2), "target"))

        self.model.train()
        iters = c.iters_per_epoch
        totals = np.zeros(3)
        bar = tqdm(range(iters), desc=f"epoch {self.epoch + 1}/{c.optim.epochs}", leave=False, disable=not self.progress)
        for _ in bar:
            images, indexes = [], []
            for loader, domain in loaders:
                batch_images, batch_pids, _, batch_index = loader.next()
                images.append(batch_images)
                # a source sample's slot is its class centroid, a target sample's its own instance
                indexes.append(
                    self.memory.source_slots(batch_pids) if domain == "source" else self.memory.target_slots(batch_index)
                )
            # one forward pass for both domains: DSBN splits the batch into its source and target halves
            features = self.model(torch.cat(images).to(self.device, non_blocking=True))
            parts = [self.memory.loss(f, i) for f, i in zip(features.split([len(i) for i in indexes]), indexes)]
            loss = sum(parts)
            if not torch.isfinite(loss):
                raise TrainingDiverged(
                    f"loss became {loss.item()} at epoch {self.epoch + 1}; the last good checkpoint "
                    f"{self.output / 'last.pth'} is kept. Lower the learning rate or check the data."
                )
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.memory.update(features.detach(), torch.cat(indexes))
            named = dict(zip([d for _, d in loaders], (p.item() for p in parts)))
            totals += [loss.item(), named.get("source", float("nan")), named.get("target", float("nan"))]
            bar.set_postfix(loss=f"{loss.item():.3f}")
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        self.epoch += 1
        mean = totals / iters
        return EpochLog(
            epoch=self.epoch, loss=float(mean[0]), loss_source=float(mean[1]), loss_target=float(mean[2]),
            num_clusters=int(stats.get("num_clusters", 0)), num_outliers=int(stats.get("num_outliers", 0)),
            alpha=float(self.alpha) if self.alpha is not None else float("nan"), lr=lr,
            seconds=time.time() - start, quality=stats.get("quality", {}),
        )

    def evaluate(self, on_source: bool = False, rerank: bool | None = None) -> dict[str, Any]:
        data = self.source if on_source else self.target
        assert data is not None
        domain = 0 if on_source else -1
        with use_domain(self.model, domain):
            return evaluate_model(
                self.model, data, self.test_transform, self.device, self.config.eval.batch_size,
                self.config.data.workers, self.config.eval.rerank if rerank is None else rerank, self.progress,
            )

    # ------------------------------------------------------------------------------------------------
    # checkpoints

    def _describe(self) -> dict[str, Any]:
        c = self.config
        return model_description(c.model, self.model.out_features, num_bn_domains(self.model), c.data.height, c.data.width)

    def state(self) -> dict[str, Any]:
        c = self.config
        return {
            "format_version": FORMAT_VERSION,
            "model": self._describe(),
            "config": c.to_dict(),
            "fingerprints": self.fingerprints,
            "epoch": self.epoch,
            "state_dict": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "memory": self.memory.state_dict(),
            "memory_ready": self.memory_ready,
            "target_labels": torch.as_tensor(self.target_labels),
            "alpha": self.alpha,
            "best": dict(self.best),
            "rng": {"torch": torch.get_rng_state()},
        }

    def load_state(self, state: dict[str, Any]) -> None:
        if state["config"]["mode"] != self.config.mode or state["model"] != self._describe():
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
        self.model.load_state_dict(state["state_dict"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.memory.load_state_dict(state["memory"])
        self.memory_ready = bool(state["memory_ready"])
        self.target_labels = state["target_labels"].numpy()
        self.alpha = state["alpha"]
        self.best = dict(state["best"])
        self.epoch = int(state["epoch"])
        torch.set_rng_state(state["rng"]["torch"])

    def save(self, name: str) -> Path:
        path = self.output / name
        save_checkpoint(self.state(), path)
        return path

    # ------------------------------------------------------------------------------------------------
    # the run

    def _write_logs(self, entry: EpochLog, writer: Any) -> None:
        row = {
            "epoch": entry.epoch, "loss": entry.loss, "loss_source": entry.loss_source,
            "loss_target": entry.loss_target, "clusters": entry.num_clusters, "outliers": entry.num_outliers,
            "alpha": entry.alpha, "lr": entry.lr, "seconds": round(entry.seconds, 2),
            **{f"pl_{k}": v for k, v in entry.quality.items()},
            **{k: v for k, v in entry.eval.items()},
        }
        path = self.output / "metrics.csv"
        rows = []
        if path.exists():
            with open(path, newline="") as fh:
                rows = [r for r in csv.DictReader(fh) if int(r["epoch"]) < entry.epoch]
        rows.append({k: str(v) for k, v in row.items()})
        keys = list(dict.fromkeys(k for r in rows for k in r))
        tmp = path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=keys)
            w.writeheader()
            w.writerows(rows)
        tmp.replace(path)
        if writer is not None:
            for key, value in row.items():
                if key != "epoch" and isinstance(value, (int, float)) and math.isfinite(value):
                    writer.add_scalar(key, value, entry.epoch)
            writer.flush()

    def _format_epoch(self, e: EpochLog) -> str:
        parts = [f"epoch {e.epoch:>3}/{self.config.optim.epochs}", f"loss {e.loss:.3f}"]
        if self.source is not None and self.train_target:
            parts.append(f"(src {e.loss_source:.3f} tgt {e.loss_target:.3f})")
        if self.train_target and self.config.mode != "oracle":
            parts.append(f"clusters {e.num_clusters} outliers {e.num_outliers}")
            if math.isfinite(e.alpha):
                parts.append(f"alpha {e.alpha:.3f}")
        if e.quality:
            q = e.quality
            parts.append(f"pseudo-labels P {q['pair_precision']:.2f} R {q['pair_recall']:.2f} NMI {q['nmi']:.2f}")
        if e.eval:
            parts.append(f"| target mAP {100 * e.eval['mAP']:.1f} rank-1 {100 * e.eval['rank1']:.1f}")
        parts.append(f"({e.seconds:.0f}s)")
        return "  ".join(parts)

    def fit(self) -> list[EpochLog]:
        c = self.config
        self.output.mkdir(parents=True, exist_ok=True)
        c.save(self.output / "config.yaml")
        last = self.output / "last.pth"
        if c.resume and last.exists():
            self.load_state(load_checkpoint(last, self.device))
            self.log(f"resumed from {last} at epoch {self.epoch}")
        self.log(
            f"{c.mode}: source {self.source.name if self.source else '-'} "
            f"({self.num_source_classes} classes), target {self.target.name} "
            f"({len(self.target.train)} train images); {c.optim.epochs} epochs x {c.iters_per_epoch} iterations "
            f"on {self.device}; output {self.output}"
        )
        if not self.memory_ready:
            self.init_memory()
        writer = _tensorboard(self.output)
        try:
            while self.epoch < c.optim.epochs:
                entry = self.train_epoch()
                final = self.epoch == c.optim.epochs
                if (c.eval.every > 0 and self.epoch % c.eval.every == 0) or final:
                    if self.target.query:
                        result = self.evaluate()
                        entry.eval = {"mAP": float(result["mAP"]), "rank1": float(result["cmc"][0]),
                                      "rank5": float(result["cmc"][4]), "rank10": float(result["cmc"][9])}
                        save_per_query(result, self.output / f"eval-epoch{self.epoch}", self.target)
                        if entry.eval["mAP"] > self.best["mAP"]:
                            self.best = {"mAP": entry.eval["mAP"], "epoch": self.epoch}
                            self.save("best.pth")
                self.save("last.pth")
                self.history.append(entry)
                self._write_logs(entry, writer)
                self.log(self._format_epoch(entry))
        finally:
            if writer is not None:
                writer.close()
        if self.best["epoch"] > 0:
            self.log(f"best target mAP {100 * self.best['mAP']:.1f} at epoch {self.best['epoch']} (selected on the "
                     "test set, as the reference does; the last epoch's numbers are the ones to report)")
        return self.history


def _tensorboard(folder: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional at run time; metrics.csv always exists
        return None
    return SummaryWriter(str(folder / "tensorboard"))
