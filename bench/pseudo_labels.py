"""Benchmark of the pseudo-labelling engine (SPEC section 6). Not a test.

For each size N (Market-1501 train 12,936; MSMT17 train 32,621 by default) it builds 2048-d
features with identity structure, then, in a fresh process:
  - runs the stages one by one (exact kNN, sparse Jaccard, DBSCAN x3 + reliability), with the
    time and peak resident memory of each; the kNN stage alone is the floor;
  - runs ``spcl.pseudo_labels.generate`` end to end and checks it gives the same labels.
At --dense-size (4,000 by default) it also runs the slow dense implementation of
tests/test_pseudo_labels.py and ours on the same features: the time ratio and label equality.

    python bench/pseudo_labels.py                       # full run (minutes)
    python bench/pseudo_labels.py --sizes 2000 --dense-size 800 --dim 256   # smoke run

Timings on a shared machine are noisy: the kNN floor is measured in the same process.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def identity_features(n: int, dim: int = 2048, mean_size: float = 17.0, singletons: float = 0.15, seed: int = 0):
    """Unit features with identity structure: identities of log-normal size (2..200), each with its
    own spread and 2-6 camera modes, grouped into look-alike families, plus singletons; shuffled."""
    rng = np.random.default_rng(seed)
    num_single = int(round(singletons * n))
    sizes, left = [], n - num_single
    while left > 0:
        size = int(np.clip(round(rng.lognormal(np.log(mean_size) - 0.32, 0.8)), 2, 200))
        size = left if left - size < 2 else size
        sizes.append(size)
        left -= size
    num_groups = max(1, len(sizes) // 8)

    def unit(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape, dtype=np.float32) / np.float32(np.sqrt(dim))

    groups = unit(num_groups, dim)
    out = np.empty((n, dim), dtype=np.float32)
    ids = np.empty(n, dtype=np.int64)
    pos = 0
    for identity, size in enumerate(sizes):
        center = groups[rng.integers(num_groups)] + unit(dim)
        cameras = unit(int(rng.integers(2, 7)), dim) * 0.7
        spread = rng.uniform(0.8, 1.6)
        out[pos : pos + size] = center + cameras[rng.integers(len(cameras), size=size)] + spread * unit(size, dim)
        ids[pos : pos + size] = identity
        pos += size
    out[pos:] = groups[rng.integers(num_groups, size=n - pos)] + 1.5 * unit(n - pos, dim)
    ids[pos:] = len(sizes) + np.arange(n - pos)
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    perm = rng.permutation(n)
    return out[perm], ids[perm]


class PeakMemory:
    """Peak resident memory (bytes) while the block runs, sampled every millisecond."""

    def __init__(self) -> None:
        self.peak = 0
        self.start = 0
        self._stop = threading.Event()

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(0.001)

    def __enter__(self) -> PeakMemory:
        self.start = self.peak = self.rss()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        self._clock = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self._clock
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())


def set_threads(threads: int) -> None:
    import torch

    if threads:
        torch.set_num_threads(threads)  # this benchmark process only


def worker_size(n: int, dim: int, mean_size: float, seed: int) -> dict:
    import torch  # noqa: F401  (loaded before the baseline is read)

    from spcl.pseudo_labels import generate, labels_from_jaccard
    from spcl.pseudo_labels.jaccard import jaccard_from_neighbors
    from spcl.neighbors import as_unit_features, search_unit

    features, truth = identity_features(n, dim, mean_size, seed=seed)
    baseline = PeakMemory.rss()
    stages = {}
    with PeakMemory() as m:
        unit = as_unit_features(features)
        ranks, _ = search_unit(unit, 30)
    stages["exact kNN (k1 = 30), alone"] = m
    with PeakMemory() as m:
        distances = jaccard_from_neighbors(unit, ranks)
    stages["sparse Jaccard (k-reciprocal, k2 = 6)"] = m
    nnz = distances.nnz
    with PeakMemory() as m:
        staged = labels_from_jaccard(distances)
    stages["DBSCAN x3 + reliability"] = m
    del distances, ranks, unit
    with PeakMemory() as m:
        result = generate(features)
    total = m
    from sklearn.metrics import adjusted_rand_score

    return {
        "n": n,
        "dim": dim,
        "baseline_rss": baseline,
        "stages": {name: [s.seconds, s.peak - baseline, s.peak] for name, s in stages.items()},
        "generate_timings": result.timings,
        "generate": [total.seconds, total.peak - total.start, total.peak],
        "identical": bool(np.array_equal(result.labels, staged.labels)),
        "max_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "nnz_per_row": nnz / n,
        "summary": result.summary(),
        "ari": adjusted_rand_score(truth, result.labels),
    }


def worker_dense(n: int, dim: int, mean_size: float, seed: int) -> dict:
    sys.path.insert(0, str(ROOT / "tests"))
    from test_pseudo_labels import dense_generate  # the slow dense implementation of the tests

    from spcl.pseudo_labels import generate

    features, _ = identity_features(n, dim, mean_size, seed=seed)
    with PeakMemory() as ours:
        result = generate(features)
    with PeakMemory() as dense:
        _, _, labels, alpha = dense_generate(features)
    return {
        "n": n,
        "ours": [ours.seconds, ours.peak - ours.start],
        "dense": [dense.seconds, dense.peak - dense.start],
        "identical": bool(np.array_equal(result.labels, labels)),
        "same_alpha": bool(result.alpha == alpha),
    }


def run_worker(kind: str, n: int, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--worker", kind, "--n", str(n), "--dim", str(args.dim), "--seed", str(args.seed),
               "--threads", str(args.threads)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"worker {kind} N={n} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def mean_size_for(n: int) -> float:
    """Market-1501 train: 12,936 images of 751 ids (17 each); MSMT17: 32,621 of 1,041 (31 each)."""
    return 31.0 if n >= 20000 else 17.0


def gib(value: float) -> str:
    return f"{value / 2**30:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[12936, 32621])
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--dense-size", type=int, default=4000, help="N for the dense comparison (0 skips it)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--worker", choices=["size", "dense"], help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        set_threads(args.threads)
        fn = worker_size if args.worker == "size" else worker_dense
        print(json.dumps(fn(args.n, args.dim, mean_size_for(args.n), args.seed)))
        return

    threads = args.threads or "default"
    print(f"# Pseudo-labelling benchmark ({os.cpu_count()} CPUs, torch threads: {threads}, "
          f"load average {os.getloadavg()[0]:.1f} at start)\n")
    for n in args.sizes:
        r = run_worker("size", n, args)
        floor = r["stages"]["exact kNN (k1 = 30), alone"][0]
        print(f"## N = {n:,}, {r['dim']}-d features ({r['summary']}; ARI vs true ids {r['ari']:.3f}; "
              f"{r['nnz_per_row']:.1f} stored Jaccard pairs per row)\n")
        print("| stage | time (s) | peak above features + libraries (GiB) | process peak (GiB) |")
        print("| --- | ---: | ---: | ---: |")
        for name, (seconds, extra, peak) in r["stages"].items():
            print(f"| {name} | {seconds:.2f} | {gib(extra)} | {gib(peak)} |")
        seconds, extra, peak = r["generate"]
        parts = ", ".join(f"{k} {v:.2f}" for k, v in r["generate_timings"].items())
        print(f"| `generate` end to end, after the stages ({parts}) | {seconds:.2f} | {gib(extra)}* | {gib(peak)} |")
        after = sum(v for k, v in r["generate_timings"].items() if k != "knn")
        print(f"\nTotal / exact kNN alone: **{seconds / floor:.2f}x** (goal < 1.5x); after-kNN stages / kNN inside "
              f"`generate`: {after / r['generate_timings']['knn']:.2f} (goal < 0.5). Process peak "
              f"{gib(r['max_rss'])} GiB (features {gib(n * r['dim'] * 4)} GiB, Python + torch baseline "
              f"{gib(r['baseline_rss'])} GiB). Staged labels == `generate` labels: {r['identical']}. (*above its own start: the allocator keeps "
              "memory freed by the stages.)\n")
    if args.dense_size:
        r = run_worker("dense", args.dense_size, args)
        print(f"## Dense implementation of the tests vs ours, N = {r['n']:,}, {args.dim}-d\n")
        print("| implementation | time (s) | peak memory above start (GiB) |")
        print("| --- | ---: | ---: |")
        print(f"| dense (N x N, loops; tests/test_pseudo_labels.py) | {r['dense'][0]:.2f} | {gib(r['dense'][1])} |")
        print(f"| `spcl.pseudo_labels.generate` | {r['ours'][0]:.2f} | {gib(r['ours'][1])} |")
        print(f"\nSpeed-up {r['dense'][0] / r['ours'][0]:.1f}x; labels identical: {r['identical']}; "
              f"same alpha: {r['same_alpha']}.")


if __name__ == "__main__":
    main()
