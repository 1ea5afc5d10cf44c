"""k-means concepts + rebalancing on synthetic embeddings: wall time and memory, against a baseline.

N unit vectors (512-d, float16 storage like the lake) in topics of uneven (lognormal) sizes; one
topic is made dense (many near copies) so rebalancing has something to prune. Times, in one run:
``kmeans`` (faiss spherical k-means, k = default_k(N), 20 iterations, as ``lakecurate cluster``
runs it), ``complexity`` + ``budgets`` + the keep selection (as ``lakecurate rebalance``), and the
baseline: one pass of exact nearest-centroid assignment (a matmul of N x d by d x k), the least
any k-means must do per iteration. Peak memory: resident memory above the level before each step.

    python scripts/bench_cluster.py --n 100000 1000000
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from _measure import PeakRSS  # scripts/ is on sys.path when a script runs

from lakecurate.concepts import budgets, centroid_distance, complexity, default_k, kmeans


def make(n: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    topics = max(10, int(np.sqrt(n) / 2))
    centers = rng.standard_normal((topics, d)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    p = rng.lognormal(0, 1, topics)
    p /= p.sum()
    topic = rng.choice(topics, n, p=p)
    dense = rng.random(n) < 0.2  # a fifth of all rows: near copies of one topic centre
    topic[dense] = 0
    noise = np.where(dense, 0.15, 0.9)[:, None] / np.sqrt(d)
    x = np.empty((n, d), np.float16)
    for s in range(0, n, 65536):
        t = topic[s : s + 65536]
        v = centers[t] + noise[s : s + 65536] * rng.standard_normal((len(t), d)).astype(np.float32)
        x[s : s + 65536] = v / np.linalg.norm(v, axis=1, keepdims=True)
    return x, dense


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print(f"{len(os.sched_getaffinity(0))} cores; load average at start {os.getloadavg()[0]:.2f}")
    for n in args.n:
        x16, dense = make(n, args.d, args.seed)
        k = default_k(n)
        x = x16.astype(np.float32)  # what cluster() hands to faiss
        print(f"\nN = {n:,} x {args.d} (float16 {x16.nbytes / 2**30:.2f} GiB), k = {k:,}")
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            cent, label = kmeans(x, k, args.seed)
            t_km = time.perf_counter() - t0
        print(f"  kmeans (20 iterations)           {t_km:7.1f} s   peak +{mem.extra_mb:6.0f} MiB")
        t0 = time.perf_counter()
        _ = np.argmax(x @ cent.T, axis=1) if n <= 200_000 else np.concatenate(
            [np.argmax(x[s : s + 65536] @ cent.T, axis=1) for s in range(0, n, 65536)])
        t_pass = time.perf_counter() - t0
        print(f"  baseline: one assignment pass    {t_pass:7.1f} s   ratio kmeans / one pass {t_km / t_pass:.1f}")
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            table = complexity(x, label, k)
            quota = budgets(table["size"].to_numpy(), table["complexity"].to_numpy(), n // 2, 0.5)
            dist = centroid_distance(x, cent, label)
            order = np.lexsort((-dist, label))
            starts = np.searchsorted(label[order], np.arange(k))
            keep = np.zeros(n, bool)
            for c in range(k):
                keep[order[starts[c] : starts[c] + quota[c]]] = True
            t_rb = time.perf_counter() - t0
        print(f"  rebalance (complexity, budgets, selection)   {t_rb:7.1f} s   peak +{mem.extra_mb:6.0f} MiB   "
              f"ratio to kmeans {t_rb / t_km:.3f}")
        print(f"  dense topic share: {dense.mean():.3f} of all rows -> {dense[keep].mean():.3f} of the kept half")


if __name__ == "__main__":
    main()
