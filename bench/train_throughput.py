"""Throughput of training on the device this runs on: the full SpCL step against a plain ResNet-50
step, the data loader alone, one pseudo-labelling pass and one feature extraction. Not a test.

    python bench/train_throughput.py            # reference sizes (a GPU machine)
    python bench/train_throughput.py --small    # CPU sizes, a few minutes

1. Training step, ResNet-50 (last stride 1, as the encoder), batch B source + B target at H x W:
   the trainer's own ``train_step`` (forward, memory loss, backward, Adam, BN statistics, memory
   update; DSBN and 16 images per BN) with in-memory batches, in fp32, bf16, and bf16 +
   channels-last. Next to each, in the same process and alternating step by step with it, the
   baseline: a torchvision ResNet-50 with the same last stride, cross-entropy on a linear head over
   the 702 source classes (the classic supervised re-ID step), the same Adam, precision and layout. The ratio is ours /
   baseline images per second (median step time).
2. Loader: JPEG decode + training augmentation to 256 x 128 of generated 128 x 64 JPEGs (Market-1501's size),
   per worker (in this process) and with all workers through the trainer's ``TrainLoader``.
3. One pseudo-labelling pass (``spcl.pseudo_labels.generate``) and one feature extraction
   (evaluation-mode forward at H x W, batch 128, input already in memory) at N = 32,621 images
   (MSMT17's training set).

Timings on a shared machine are noisy; the ratios are measured within one run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from pseudo_labels import identity_features  # noqa: E402

from spcl.config import load_config  # noqa: E402
from spcl.data.loader import TrainLoader  # noqa: E402
from spcl.data.image_dataset import AugmentedImages  # noqa: E402
from spcl.data.sampler import RandomMultipleGallerySampler  # noqa: E402
from spcl.data.synthetic import SynthConfig, write_domain  # noqa: E402
from spcl.data.transforms import build_train_transform  # noqa: E402
from spcl.memory import HybridMemory  # noqa: E402
from spcl.pseudo_labels import generate  # noqa: E402
from spcl.training import Trainer  # noqa: E402
from spcl.utils import resolve_amp, resolve_device  # noqa: E402

SOURCE_CLASSES, TARGET_IMAGES = 702, 12_936  # DukeMTMC-reID -> Market-1501
MSMT17_TRAIN = 32_621


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Batches:
    """A domain's stream of one fixed in-memory batch (the loader is measured on its own)."""

    def __init__(self, batch: int, height: int, width: int, classes: int, seed: int, pin: bool) -> None:
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randn(batch, 3, height, width, generator=g)
        self.pids = torch.randint(0, classes, (batch,), generator=g)
        self.index = torch.randint(0, TARGET_IMAGES, (batch,), generator=g)
        if pin:
            self.images = self.images.pin_memory()

    def next(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.images, self.pids, self.index


def _tiny_domains(root: Path) -> None:
    tiny = SynthConfig(height=32, width=16, num_cameras=2, source_train_ids=4, source_test_ids=2, target_train_ids=4,
                       target_test_ids=2, cameras_per_id=(2, 2), train_images_per_camera=(2, 2),
                       test_images_per_camera=(2, 2))
    write_domain(root / "src", "source", seed=0, config=tiny)
    write_domain(root / "tgt", "target", seed=0, config=tiny)


def spcl_step(root: Path, device: torch.device, batch: int, height: int, width: int, amp: str, layout: str,
              arch: str = "resnet50") -> Callable[[], None]:
    """The trainer's step, with a memory of Duke -> Market size and clustered pseudo labels."""
    config = load_config(overrides={
        "mode": "uda", "data.source": str(root / "src"), "data.target": str(root / "tgt"), "data.height": height,
        "data.width": width, "model.arch": arch, "model.pretrained": "none", "optim.batch_size": batch,
        "device": str(device),
        "model.images_per_bn": 16 if batch % 16 == 0 else 0,
        "runtime.amp": amp, "runtime.channels_last": layout, "output": str(root / "run"),
    })
    trainer = Trainer(config, log=lambda _: None, progress=False, hooks=[])
    memory = HybridMemory(trainer.model.out_features, SOURCE_CLASSES + TARGET_IMAGES, num_source_classes=SOURCE_CLASSES)
    memory.init_features(torch.nn.functional.normalize(torch.randn(memory.num_slots, memory.features.shape[1]), dim=1))
    memory.set_pseudo_labels(np.concatenate([np.repeat(np.arange(700), 15), 700 + np.arange(TARGET_IMAGES - 10_500)]))
    trainer.memory = memory.to(device)
    pin = device.type == "cuda"
    trainer.run.loaders = {"source": _Batches(batch, height, width, SOURCE_CLASSES, 1, pin),
                           "target": _Batches(batch, height, width, SOURCE_CLASSES, 2, pin)}
    trainer.model.train()
    return lambda: trainer.train_step(0)


def baseline_step(device: torch.device, batch: int, height: int, width: int, amp: str, layout: str) -> Callable[[], None]:
    """A plain torchvision ResNet-50 classification step (same last stride, batch, optimizer, precision)."""
    model = torchvision.models.resnet50(num_classes=SOURCE_CLASSES)
    model.layer4[0].conv2.stride = (1, 1)
    model.layer4[0].downsample[0].stride = (1, 1)
    channels_last = layout == "on" or (layout == "auto" and device.type == "cuda")
    model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3.5e-4, weight_decay=5e-4)
    dtype = resolve_amp(amp, device)
    g = torch.Generator().manual_seed(3)
    images = torch.randn(2 * batch, 3, height, width, generator=g)
    labels = torch.randint(0, SOURCE_CLASSES, (2 * batch,), generator=g)
    if device.type == "cuda":
        images = images.pin_memory()

    def step() -> None:
        x = images.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits.float(), labels.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss.item()  # as the trainer reads its loss every step

    return step


def alternate(steps: dict[str, Callable[[], None]], device: torch.device, warmup: int, repeats: int) -> dict[str, float]:
    """Median seconds per step of each, run in turn step by step (both see the same machine state)."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for i in range(warmup + repeats):
        for name, step in steps.items():
            _sync(device)
            tic = time.perf_counter()
            step()
            _sync(device)
            if i >= warmup:
                times[name].append(time.perf_counter() - tic)
    return {name: statistics.median(t) for name, t in times.items()}


def training_table(root: Path, device: torch.device, batch: int, height: int, width: int, warmup: int, repeats: int,
                   archs: tuple[str, ...] = ("resnet50",)) -> list[str]:
    rows = ["| backbone | precision | SpCL step (img/s) | plain ResNet-50 step (img/s) | ratio |",
            "|---|---|---:|---:|---:|"]
    print("\n".join(rows), flush=True)
    variants = [("fp32", "off", "off"), ("bf16", "bf16", "off"), ("bf16 + channels_last", "bf16", "on")]
    for arch in archs:
        for name, amp, layout in variants:
            if layout == "on" and arch.startswith("vit"):
                continue  # a transformer has no feature maps to lay out: channels_last changes nothing
            ours = spcl_step(root, device, batch, height, width, amp, layout, arch)
            base = baseline_step(device, batch, height, width, amp, layout)
            median = alternate({"ours": ours, "base": base}, device, warmup, repeats)
            ips = {k: 2 * batch / v for k, v in median.items()}
            rows.append(f"| {arch} | {name} | {ips['ours']:.1f} | {ips['base']:.1f} | {ips['ours'] / ips['base']:.2f}x |")
            print(rows[-1], flush=True)
            del ours, base
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


def write_jpegs(folder: Path, count: int) -> list[tuple[str, int, int]]:
    """``count`` 128 x 64 JPEGs (noise over smooth shapes, the size of Market-1501's crops)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    items = []
    for i in range(count):
        base = rng.integers(0, 255, (8, 4, 3), dtype=np.uint8)
        img = Image.fromarray(base).resize((64, 128), Image.BILINEAR)
        noise = rng.integers(-20, 20, (128, 64, 3))
        pixels = np.clip(np.asarray(img, dtype=np.int64) + noise, 0, 255).astype(np.uint8)
        path = folder / f"{i // 8:04d}_c{i % 6 + 1}s1_{i:06d}_00.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        items.append((str(path), i // 8, i % 6))
    return items


def loader_table(root: Path, count: int, workers: int, batch: int, height: int, width: int) -> list[str]:
    items = write_jpegs(root / "jpegs", count)
    transform = build_train_transform(height, width)
    dataset = AugmentedImages(items, transform)
    seeds = np.random.default_rng(1).integers(0, 2**62, count)
    tic = time.perf_counter()
    for i in range(count):
        dataset[(i, int(seeds[i]))]
    one = count / (time.perf_counter() - tic)
    pids = np.array([p for _, p, _ in items])
    cams = [c for _, _, c in items]
    sampler = RandomMultipleGallerySampler(pids, cams, seed=0, min_length=batch, seeded=True)
    loader = TrainLoader(dataset, sampler, batch, workers=workers, prefetch=4, persistent=True)
    loader.next()  # workers started
    batches = max(4, 4 * count // batch)
    tic = time.perf_counter()
    for _ in range(batches):
        loader.next()
    everyone = batches * batch / (time.perf_counter() - tic)
    return [
        "| loader | images/s |", "|---|---:|",
        f"| decode + augment, one worker | {one:.0f} |",
        f"| TrainLoader, {workers} workers, batch {batch} | {everyone:.0f} |",
    ]


def extraction_rate(model: torch.nn.Module, device: torch.device, extract: int, height: int, width: int,
                    channels_last: bool) -> tuple[int, float]:
    """(images, seconds) of extracting ``extract`` images of random pixels in batches of 128."""
    model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format).eval()
    batch = 128
    images = torch.randn(batch, 3, height, width)
    if device.type == "cuda":
        images = images.pin_memory()
    done = 0
    dtype = resolve_amp("auto", device)
    with torch.no_grad(), torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        model(images.to(device))  # warm-up
        _sync(device)
        tic = time.perf_counter()
        while done < extract:
            x = images.to(device, non_blocking=True)
            model(x.contiguous(memory_format=torch.channels_last) if channels_last else x).float().cpu()
            done += batch
        _sync(device)
    return done, time.perf_counter() - tic


def labels_and_features_table(device: torch.device, count: int, dim: int, extract: int, height: int, width: int,
                              archs: tuple[str, ...] = ()) -> list[str]:
    features, _ = identity_features(count, dim)
    features_t = torch.from_numpy(features)
    _sync(device)
    tic = time.perf_counter()
    result = generate(features_t, device=device)
    _sync(device)
    labelling = time.perf_counter() - tic

    model = torchvision.models.resnet50()
    model.fc = torch.nn.Identity()
    model.layer4[0].conv2.stride = (1, 1)
    model.layer4[0].downsample[0].stride = (1, 1)
    done, extraction = extraction_rate(model, device, extract, height, width, device.type == "cuda")
    encoders = []
    for arch in archs:  # spcl's encoders (neck and normalisation included), beside the plain ResNet-50
        from spcl.models import build_encoder

        encoder = build_encoder(arch, pretrained=False, img_size=(height, width))
        n, seconds = extraction_rate(encoder, device, extract, height, width, device.type == "cuda" and "vit" not in arch)
        encoders.append(f"| feature extraction, spcl {arch} ({height}x{width}, batch 128) | {n:,} | {seconds:.1f} | "
                        f"{n / seconds:.0f} |")
    return [
        "| stage | images | seconds | images/s |", "|---|---:|---:|---:|",
        f"| pseudo labels ({result.num_clusters} clusters, {dim}-d features) | {count:,} | {labelling:.1f} | "
        f"{count / labelling:.0f} |",
        f"| feature extraction, plain ResNet-50 ({height}x{width}, batch 128) | {done:,} | {extraction:.1f} | "
        f"{done / extraction:.0f} |",
        *encoders,
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="CPU sizes (a few minutes)")
    parser.add_argument("--tiny", action="store_true", help="smoke-test sizes (seconds: proves the script runs)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--batch", type=int, help="images per domain in the training step")
    parser.add_argument("--height", type=int, help="training and extraction image height")
    parser.add_argument("--width", type=int, help="training and extraction image width")
    parser.add_argument("--arch", nargs="+", default=["resnet50"],
                        help="backbones of the SpCL step and of extraction (e.g. resnet50 vit_small_ics)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["train", "loader", "labels"],
                        help="parts to leave out")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    if args.tiny:
        sizes: dict[str, Any] = dict(batch=4, height=64, width=32, warmup=1, repeats=2, jpegs=32, count=600,
                                     dim=64, extract=64)
    elif args.small:
        sizes = dict(batch=16, height=128, width=64, warmup=1, repeats=5, jpegs=512, count=8000,
                                     dim=256, extract=512)
    else:
        sizes = dict(batch=64, height=256, width=128, warmup=5, repeats=20, jpegs=8192, count=MSMT17_TRAIN, dim=2048,
                     extract=MSMT17_TRAIN)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    print(f"# {name}, torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    b, h, w = args.batch or sizes["batch"], args.height or sizes["height"], args.width or sizes["width"]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _tiny_domains(root)
        if "train" not in args.skip:
            print(f"## training step, {' / '.join(args.arch)} at {h}x{w}, batch {b} + {b}\n")
            training_table(root, device, b, h, w, sizes["warmup"], sizes["repeats"], tuple(args.arch))
        if "loader" not in args.skip:
            print(f"\n## loader ({sizes['jpegs']} JPEGs of 128x64, augmented to 256x128)\n")
            print("\n".join(loader_table(root, sizes["jpegs"], args.workers, 128, 256, 128)))
        if "labels" not in args.skip:
            print("\n## pseudo labels and feature extraction\n")
            print("\n".join(labels_and_features_table(device, sizes["count"], sizes["dim"], sizes["extract"], h, w,
                                                       tuple(args.arch))))


if __name__ == "__main__":
    main()
