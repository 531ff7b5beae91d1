"""Feature extraction speed and gallery-search latency, in one table (not a test).

    python bench/extract_search.py            # ResNet-50 at 256x128; galleries of 10^4, 10^5, 10^6 features
    python bench/extract_search.py --small    # the CPU machine: ResNet-18 at 128x64, 512-d features

Extraction: images per second of ``FeatureExtractor`` (decode + preprocess + forward) on generated
JPEGs of Market-1501 size (128 x 64 px), with 0 and with the machine's loader workers, against a
plain torchvision forward pass on ready tensors measured in the same run (the ratio shows what
decoding and preprocessing cost). Search: milliseconds per query for a batch of queries against
galleries of 10^4, 10^5 and 10^6 features (d = the model's width: 2048, or 512 with ``--small``),
exact blocked search against faiss's flat and IVF indexes (when installed; the IVF build time is
reported apart, and its recall@10 against exact search). ``--features clustered`` (default) draws
features the way a re-ID model spreads them: identities of 16 images around their own direction
(cosine about 0.6 within an identity), the queries being new images of gallery identities;
``--features random`` draws unit Gaussian vectors, the worst case for an inverted file.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from spcl.inference import FeatureExtractor, GalleryIndex  # noqa: E402
from spcl.training.checkpoint import build_model, describe_model, save_checkpoint  # noqa: E402
from spcl.config import load_config  # noqa: E402


def _checkpoint(folder: Path, arch: str, height: int, width: int) -> Path:
    config = load_config(overrides={"model.arch": arch, "model.pretrained": "none", "mode": "usl"})
    description = describe_model(config.model, 1, height, width)
    model = build_model(description)
    path = folder / "bench.pth"
    save_checkpoint({"format_version": 2, "model": description, "state_dict": model.state_dict(),
                     "config": config.to_dict()}, path)
    return path


def _images(folder: Path, n: int) -> list[str]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        array = rng.integers(0, 255, (128, 64, 3), dtype=np.uint8)
        path = folder / f"{i:05d}.jpg"
        Image.fromarray(array).save(path, quality=90)
        paths.append(str(path))
    return paths


def _features(n: int, dim: int, queries: int, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """A gallery of ``n`` features and ``queries`` query features (see the module docstring)."""
    rng = np.random.default_rng(0)
    if kind == "random":
        return (rng.standard_normal((n, dim), dtype=np.float32), rng.standard_normal((queries, dim), dtype=np.float32))
    per_identity = 16
    centres = rng.standard_normal((max(1, n // per_identity), dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    sigma = np.float32(np.sqrt(0.67 / dim))  # |noise|^2 = 0.67: cosine 1 / (1 + 0.67) = 0.6 to the centre
    gallery = centres[np.arange(n) % len(centres)]
    gallery += sigma * rng.standard_normal((n, dim), dtype=np.float32)
    picked = rng.integers(0, len(centres), queries)
    query = centres[picked] + sigma * rng.standard_normal((queries, dim), dtype=np.float32)
    return gallery, query


def _rate(fn, count: int) -> float:
    start = time.perf_counter()
    fn()
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dim", type=int, default=0, help="feature size (default: 512 with --small, else 2048)")
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--sizes", default="10000,100000,1000000", help="gallery sizes, comma-separated")
    parser.add_argument("--features", choices=("clustered", "random"), default="clustered")
    args = parser.parse_args()
    arch, (height, width), n_images = ("resnet18", (128, 64), 256) if args.small else ("resnet50", (256, 128), 2048)
    args.dim = args.dim or (512 if args.small else 2048)
    sizes = [int(size) for size in args.sizes.split(",")]
    workers = min(8, max(1, (os.cpu_count() or 2) - 1))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        checkpoint = _checkpoint(folder, arch, height, width)
        paths = _images(folder, n_images)
        for w in (0, workers):
            extractor = FeatureExtractor(checkpoint, args.device, batch_size=64, workers=w)
            extractor(paths[:64])  # warm-up
            rows.append((f"extract {arch} {height}x{width}, {w} workers", f"{_rate(lambda: extractor(paths), n_images):,.0f} img/s"))
        batch = torch.randn(64, 3, height, width, device=extractor.device)
        with torch.no_grad():
            extractor.model(batch)
            rate = _rate(lambda: [extractor.model(batch) for _ in range(max(1, n_images // 64))], 64 * max(1, n_images // 64))
        rows.append((f"baseline: forward only on ready tensors", f"{rate:,.0f} img/s"))
    for n in sizes:
        gallery, queries = _features(n, args.dim, args.queries, args.features)
        exact = GalleryIndex(gallery, "exact", device=args.device)
        start = time.perf_counter()
        truth, _ = exact.search(queries, 10)
        exact_ms = 1000 * (time.perf_counter() - start) / len(queries)
        rows.append((f"search N={n:,} d={args.dim} ({args.features}): exact blocked", f"{exact_ms:.2f} ms/query"))
        try:
            import faiss  # noqa: F401
        except ImportError:
            rows.append((f"search N={n:,}: faiss", "not installed"))
            continue
        for kind in ("flat", "ivf"):
            start = time.perf_counter()
            index = GalleryIndex(gallery, kind)
            built = time.perf_counter() - start
            start = time.perf_counter()
            found, _ = index.search(queries, 10)
            ms = 1000 * (time.perf_counter() - start) / len(queries)
            recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth)])
            extra = f", built in {built:.1f} s, recall@10 {recall:.3f}" if kind == "ivf" else ""
            rows.append((f"search N={n:,}: faiss {kind}", f"{ms:.2f} ms/query ({exact_ms / ms:.1f}x exact){extra}"))
        del gallery, exact
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU ({os.cpu_count()} cores)"
    print(f"| measurement on {device} | result |\n| --- | --- |")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
