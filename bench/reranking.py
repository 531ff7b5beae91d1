"""Benchmark of k-reciprocal re-ranking (docs/method.md#evaluation). Not a test.

Market-1501 size by default: 3,368 queries x 15,913 gallery, 2048-d features with identity
structure. Prints the time and peak resident memory of ``spcl.evaluation.reranking.re_rank``
(goal on the 2-core machine: under 10 s and 2 GiB), and checks it against the dense
implementation of tests/test_reranking.py on a small problem.

    python bench/reranking.py                                   # Market size
    python bench/reranking.py --query 300 --gallery 1200 --dim 256   # smoke run

The widely used dense implementation holds several (q + g)^2 float32 matrices (joint distance,
V, its query expansion, the Jaccard rows): at Market size each is 1.4 GiB.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def query_gallery_features(num_query: int, num_gallery: int, dim: int, num_ids: int, seed: int = 0):
    """Unit features of identities (own spread, 2-6 camera modes, look-alike families) split into
    a query set (a few images per identity) and a gallery (the rest plus distractors)."""
    rng = np.random.default_rng(seed)

    def unit(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape, dtype=np.float32) / np.float32(np.sqrt(dim))

    groups = unit(max(1, num_ids // 8), dim)
    query_ids = rng.integers(num_ids, size=num_query)
    gallery_ids = np.concatenate([np.arange(num_ids), rng.integers(num_ids, size=num_gallery - num_ids)])
    ids = np.concatenate([query_ids, gallery_ids])
    centers = groups[rng.integers(len(groups), size=num_ids)] + unit(num_ids, dim)
    cameras = unit(num_ids, 6, dim) * 0.7
    spread = rng.uniform(0.8, 1.6, size=num_ids).astype(np.float32)
    features = centers[ids] + cameras[ids, rng.integers(6, size=len(ids))] + spread[ids, None] * unit(len(ids), dim)
    distractors = rng.random(num_gallery) < 0.1  # 10% of the gallery: random people
    features[num_query:][distractors] = groups[rng.integers(len(groups), size=int(distractors.sum()))] + 1.5 * unit(
        int(distractors.sum()), dim
    )
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    return features[:num_query], features[num_query:]


def peak_rss_during(fn):
    """(result, seconds, peak resident bytes during the call, resident bytes before)."""
    def rss() -> int:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    start = rss()
    peak = [start]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss())
            time.sleep(0.001)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    clock = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - clock
    stop.set()
    thread.join()
    return result, seconds, max(peak[0], rss()), start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--query", type=int, default=3368)
    parser.add_argument("--gallery", type=int, default=15913)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--ids", type=int, default=751)
    parser.add_argument("--check-size", type=int, nargs=2, default=[150, 600], metavar=("Q", "G"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()

    import torch  # loaded before the baseline is read

    if args.threads:
        torch.set_num_threads(args.threads)  # this benchmark process only

    from spcl.evaluation.reranking import re_rank

    sys.path.insert(0, str(ROOT / "tests"))
    from test_reranking import dense_re_rank

    q_small, g_small = query_gallery_features(*args.check_size, 64, max(10, args.check_size[0] // 4), args.seed)
    small_error = float(np.abs(re_rank(q_small, g_small) - dense_re_rank(q_small, g_small)).max())

    query, gallery = query_gallery_features(args.query, args.gallery, args.dim, args.ids, args.seed)
    features_bytes = query.nbytes + gallery.nbytes
    cpu = time.process_time()
    result, seconds, peak, start = peak_rss_during(lambda: re_rank(query, gallery))
    cpu = time.process_time() - cpu
    n = args.query + args.gallery
    print(
        f"# Re-ranking benchmark ({os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads, "
        f"load average {os.getloadavg()[0]:.1f})\n"
    )
    print("| problem | wall time (s) | CPU time (s) | peak above start (GiB) | process peak (GiB) | output (GiB) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    print(
        f"| `re_rank`, {args.query:,} x {args.gallery:,}, {args.dim}-d, k1 = 20, k2 = 6, lambda = 0.3 | "
        f"{seconds:.2f} | {cpu:.2f} | {(peak - start) / 2**30:.2f} | "
        f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30:.2f} | {result.nbytes / 2**30:.2f} |"
    )
    print(
        f"\nGoal: under 10 s and 2 GiB. Features {features_bytes / 2**30:.2f} GiB; one (q + g)^2 float32 matrix "
        f"of the dense formulation would be {n * n * 4 / 2**30:.2f} GiB. Against the dense implementation of the "
        f"tests at {args.check_size[0]} x {args.check_size[1]}: max |difference| {small_error:.1e}."
    )


if __name__ == "__main__":
    main()
