"""Near-duplicate search (lakecurate.neardup) versus exact brute force, on synthetic data.

For each N, in one run:

1. data: N unit vectors (512-d, float16), clustered in topics of uneven sizes (same-topic cosine
   ~0.7, random pairs ~0.15); 5% of rows are planted near copies of other rows at cosine
   0.95-0.996 and 5% hard negatives at 0.85-0.949, each along a random direction;
2. `semantic_pairs` (threshold 0.95): wall time, peak extra memory (RSS sampled every 20 ms,
   minus RSS before the call), recall of the planted pairs, and recall against exact search for
   2,000 random rows (brute force over all N for each);
3. baseline: the exact blocked float32 matmul self-join (`exact_pairs_bruteforce`, same
   threads), measured in full up to --full-exact rows, and on a random subset of
   --subset-exact rows, extrapolated by (N / subset)^2 (its cost is exactly quadratic);
4. `hamming_pairs` (distance <= 8) on --hash-n random 64-bit hashes with 5% planted near copies
   (0-8 bits flipped) and a bucket of 1,000 identical hashes; checked to equal brute force on all
   pairs of 2,000 rows (half of them planted copies); the brute-force baseline is timed on a
   random --hash-subset and extrapolated by (N / subset)^2; the classic plan of t + 1 exact bands
   is timed against the default plan on the first --classic-n hashes;
   (2b. incremental: semantic_pairs(new=mask) for --new-frac of the rows, timed against the full
   run, and checked against a full run's pairs that touch a new row;)
5. perceptual hashing on real photos (--photos, default ../shared/data/flickr8k/images): img/s on
   one core for lakecurate's image signals (hash + sharpness, entropy, colourfulness from one
   reduced JPEG decode), the hash alone after a full-size decode
   (baseline) and imagehash.phash when installed; then compute_image_signals end to end on a lake.

    python scripts/bench_dedup.py --n 100000 1000000 [--assign 4] [--hash-n 1000000]
    python scripts/bench_dedup.py --n --hash-n 0          # perceptual hashing only
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import faiss
import numpy as np

from _measure import PeakRSS  # scripts/ is on sys.path when a script runs

from lakecurate.neardup import (
    default_clusters,
    exact_pairs_bruteforce,
    hamming_pairs,
    semantic_pairs,
)

THRESHOLD = 0.95


def with_cosine(x: np.ndarray, cos: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Unit vectors at exactly these cosines to the rows of x, along random orthogonal directions."""
    u = rng.standard_normal(x.shape, dtype=np.float32)
    u -= (u * x).sum(1, keepdims=True) * x
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    return cos[:, None] * x + np.sqrt(1 - cos[:, None] ** 2) * u


def make_vectors(n: int, d: int = 512, seed: int = 0, chunk: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """(float16 vectors, planted pairs i < j), generated in chunks to bound memory."""
    rng = np.random.default_rng(seed)
    n_topics = max(8, n // 300)
    common = rng.standard_normal(d).astype(np.float32)
    common /= np.linalg.norm(common)
    topics = rng.standard_normal((n_topics, d), dtype=np.float32)
    topics /= np.linalg.norm(topics, axis=1, keepdims=True)
    weight = rng.lognormal(0, 1.0, n_topics)
    weight /= weight.sum()
    n_dup = n_neg = n // 20
    n_base = n - n_dup - n_neg
    x = np.empty((n, d), np.float16)
    for s in range(0, n_base, chunk):
        e = min(s + chunk, n_base)
        v = 0.4 * common + 0.75 * topics[rng.choice(n_topics, e - s, p=weight)]
        v += 0.55 * rng.standard_normal((e - s, d), dtype=np.float32) / np.sqrt(d)
        x[s:e] = v / np.linalg.norm(v, axis=1, keepdims=True)
    src = rng.integers(0, n_base, n_dup + n_neg)
    cos = np.concatenate([rng.uniform(0.95, 0.996, n_dup), rng.uniform(0.85, 0.949, n_neg)]).astype(np.float32)
    for s in range(0, n_dup + n_neg, chunk):
        e = min(s + chunk, n_dup + n_neg)
        x[n_base + s : n_base + e] = with_cosine(x[src[s:e]].astype(np.float32), cos[s:e], rng)
    order = rng.permutation(n)
    x = x[order]
    where = np.argsort(order)
    planted = np.sort(np.stack([where[src[:n_dup]], where[n_base + np.arange(n_dup)]], 1), axis=1)
    return x, planted


def parallel_map(fn, items: list) -> list:
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(len(os.sched_getaffinity(0))) as pool:
        return list(pool.map(fn, items))


def exact_partners(x: np.ndarray, rows: np.ndarray, threshold: float, chunk: int = 32768) -> tuple[np.ndarray, np.ndarray]:
    """All (row, other) with cosine >= threshold, rows against every row of x (brute force)."""
    q = x[rows].astype(np.float32)

    def part(s: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = np.nonzero(q @ x[s : s + chunk].astype(np.float32).T >= threshold)
        return rows[a], b + s

    found = parallel_map(part, list(range(0, len(x), chunk)))
    i, j = np.concatenate([f[0] for f in found]), np.concatenate([f[1] for f in found])
    keep = i != j
    return np.minimum(i, j)[keep], np.maximum(i, j)[keep]


def share(found: np.ndarray, wanted: np.ndarray) -> float:
    return float(np.isin(wanted, found).mean()) if len(wanted) else float("nan")


def bench_semantic(n: int, args: argparse.Namespace, rng: np.random.Generator) -> dict:
    t0 = time.perf_counter()
    x, planted = make_vectors(n, seed=args.seed)
    gen_s = time.perf_counter() - t0
    # fp16 storage moves a few planted pairs just below the threshold: they are not duplicates.
    cos = (x[planted[:, 0]].astype(np.float32) * x[planted[:, 1]].astype(np.float32)).sum(1)
    planted = planted[cos >= args.threshold]
    sample = np.sort(rng.choice(n, min(n, args.queries), replace=False))
    qi, qj = exact_partners(x, sample, args.threshold)
    print(f"\nN = {n:,}: {x.shape[1]}-d float16 ({x.nbytes / 2**30:.2f} GiB, made in {gen_s:.0f}s), "
          f"{len(planted):,} planted pairs >= {args.threshold}, {len(qi):,} exact pairs of {len(sample):,} sampled rows")
    print(f"  clusters (default 4 sqrt N): {default_clusters(n):,}")
    out = {}
    for assign in args.assign:
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            i, j, _ = semantic_pairs(x, args.threshold, assign=assign, seed=args.seed)
            sec = time.perf_counter() - t0
        found = i * n + j
        out[assign] = sec
        print(f"  semantic_pairs assign={assign}   {sec:7.1f} s   peak +{mem.extra_mb:5.0f} MiB   "
              f"{len(i):,} pairs   recall planted {share(found, planted[:, 0] * n + planted[:, 1]):.5f}   "
              f"recall vs exact (sampled rows) {share(found, qi * n + qj):.5f}")
    if args.new_frac:
        # Incremental dedup: only pairs touching the newest rows, against the full run's pairs.
        assign = max(args.assign)
        new = np.zeros(n, bool)
        new[rng.choice(n, max(1, round(n * args.new_frac)), replace=False)] = True
        t0 = time.perf_counter()
        ni, nj, _ = semantic_pairs(x, args.threshold, assign=assign, seed=args.seed, new=new)
        sec_new = time.perf_counter() - t0
        fi, fj, _ = semantic_pairs(x, args.threshold, assign=assign, seed=args.seed + 1)
        touching = new[fi] | new[fj]
        print(f"  semantic_pairs new= ({new.sum():,} new rows, {args.new_frac:.0%})   {sec_new:7.1f} s   "
              f"ratio to the full run {sec_new / out[assign]:.3f}   {len(ni):,} pairs; pairs of a full run "
              f"touching new rows found: {share(ni * n + nj, fi[touching] * n + fj[touching]):.5f}")
    exact = {}
    sub = min(n, args.subset_exact)
    rows = np.sort(rng.choice(n, sub, replace=False))
    t0 = time.perf_counter()
    exact_pairs_bruteforce(x[rows], args.threshold)
    sub_s = time.perf_counter() - t0
    exact["extrapolated"] = sub_s * (n / sub) ** 2
    print(f"  exact self-join, {sub:,}-row random subset   {sub_s:7.1f} s   "
          f"-> {exact['extrapolated']:,.0f} s extrapolated to N (x{(n / sub) ** 2:,.0f}, cost ~ N^2)")
    if n <= args.full_exact:
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            exact_pairs_bruteforce(x, args.threshold)
            exact["measured"] = time.perf_counter() - t0
        print(f"  exact self-join, all {n:,} rows (measured)   {exact['measured']:7.1f} s   peak +{mem.extra_mb:5.0f} MiB")
    base = exact.get("measured", exact["extrapolated"])
    kind = "measured" if "measured" in exact else "extrapolated"
    for assign, sec in out.items():
        print(f"  ratio semantic_pairs assign={assign} / exact ({kind})   {sec / base:.4f}   ({base / sec:,.0f}x faster)")
    return out


def bench_hamming(n: int, args: argparse.Namespace, rng: np.random.Generator) -> None:
    h = rng.integers(0, 2**64 - 1, n, dtype=np.uint64, endpoint=True)
    m = n // 20
    src, dst = rng.integers(0, n, m), rng.integers(0, n, m)
    flips = rng.integers(0, 9, m)
    mask = np.zeros(m, np.uint64)
    for f in range(8):
        mask ^= np.where(f < flips, np.uint64(1) << rng.integers(0, 64, m).astype(np.uint64), np.uint64(0))
    h[dst] = h[src] ^ mask
    h[rng.choice(n, 1000, replace=False)] = h[0]
    print(f"\nhamming_pairs, max_distance 8: {n:,} random 64-bit hashes, {m:,} planted near copies (0-8 bits), "
          f"1,000 identical")
    times = {}
    for identical in ("all", "first"):
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            i, j, _ = hamming_pairs(h, 8, identical=identical)
            times[identical] = time.perf_counter() - t0
        print(f"  hamming_pairs identical={identical:5s}  {times[identical]:7.1f} s   {n / times[identical]:,.0f} hashes/s   "
              f"peak +{mem.extra_mb:5.0f} MiB   {len(i):,} pairs")
        if identical == "all":
            all_i, all_j = i, j
    # Exactness: every partner of 2,000 rows (half of them planted copies) by brute force over all N.
    rows = np.unique(np.concatenate([rng.choice(n, 1000, replace=False), rng.choice(dst, 1000, replace=False)]))
    bi, bj = [], []
    for s in range(0, n, 1 << 16):
        a, b = np.nonzero(np.bitwise_count(h[rows, None] ^ h[None, s : s + (1 << 16)]) <= 8)
        bi.append(rows[a])
        bj.append(b + s)
    bi, bj = np.concatenate(bi), np.concatenate(bj)
    keep = bi != bj
    truth = np.unique(np.minimum(bi, bj)[keep] * n + np.maximum(bi, bj)[keep])
    touch = np.isin(all_i, rows) | np.isin(all_j, rows)
    same = np.array_equal(np.sort(all_i[touch] * n + all_j[touch]), truth)
    print(f"  same pairs as brute force for {len(rows):,} rows (half planted copies) against all N: "
          f"{'yes' if same else 'NO'} ({len(truth):,} pairs)")
    sub = min(n, args.hash_subset)
    rows = np.sort(rng.choice(n, sub, replace=False))
    t0 = time.perf_counter()
    for s in range(0, sub, 1024):
        np.nonzero(np.bitwise_count(h[rows[s : s + 1024], None] ^ h[None, rows]) <= 8)
    brute_s = time.perf_counter() - t0
    full = brute_s * (n / sub) ** 2
    print(f"  brute force XOR+popcount, {sub:,}-row subset   {brute_s:7.1f} s   -> {full:,.0f} s extrapolated to N "
          f"(x{(n / sub) ** 2:,.0f})")
    print(f"  ratio hamming_pairs / brute force (extrapolated)   {times['all'] / full:.4f}   "
          f"({full / times['all']:,.0f}x faster)")
    # The classic multi-index plan (t + 1 = 9 exact bands of 7 bits) on a subset: its candidates
    # grow as N^2 / 128, so it is only run where it finishes.
    sub = h[: min(n, args.classic_n)]
    took = {}
    for radius in (None, 0):
        t0 = time.perf_counter()
        hamming_pairs(sub, 8, band_radius=radius)
        took[radius] = time.perf_counter() - t0
    print(f"  first {len(sub):,} hashes: default plan {took[None]:.1f} s, classic 9 exact bands {took[0]:.1f} s   "
          f"ratio default / classic {took[None] / took[0]:.3f}")


def full_decode_phash(blobs: list[bytes]) -> np.ndarray:
    """Baseline: the same DCT hash after a full-size decode (no JPEG draft mode)."""
    import io

    from PIL import Image

    from lakecurate.signals import phash_pixels

    grays = []
    for b in blobs:
        with Image.open(io.BytesIO(b)) as im:
            grays.append(np.asarray(im.convert("L").resize((32, 32), Image.Resampling.BOX), dtype=np.float32))
    return phash_pixels(np.stack(grays))[0]


def bench_phash(photos: Path, repeat: int) -> None:
    """Perceptual hashing throughput on real photos, one core, bytes already in memory; plus the
    stage end to end (compute_image_signals on a lake: blob reads, spawned workers, commits)."""
    import shutil
    import tempfile

    from lakecurate import Lake
    from lakecurate.signals import compute_image_signals, phash_bytes

    files = sorted(photos.glob("*.jpg"))
    blobs = [f.read_bytes() for f in files]
    print(f"\nperceptual hash: {len(blobs)} photos from {photos} (mostly 500x375 JPEG), one core, best of {repeat}")
    rates = {}
    ours = phash_bytes(blobs)[0]
    runs = {"lakecurate image signals (hash+3 measures)": lambda: phash_bytes(blobs),
            "hash only, after a full-size decode": lambda: full_decode_phash(blobs)}
    try:
        import io

        import imagehash
        from PIL import Image

        runs["imagehash.phash (full decode, scipy DCT)"] = lambda: [imagehash.phash(Image.open(io.BytesIO(b))) for b in blobs]
    except ImportError:
        print("  (imagehash not installed: pip install imagehash to compare with it)")
    for name, fn in runs.items():
        best = min(_timed(fn) for _ in range(repeat))
        rates[name] = len(blobs) / best
        print(f"  {name:45s} {rates[name]:7.0f} img/s")
    base = rates["hash only, after a full-size decode"]
    for name, rate in rates.items():
        print(f"  ratio {name} / full-size decode   {rate / base:.2f}")
    full = full_decode_phash(blobs)
    same = np.bitwise_count(ours ^ full)
    print(f"  draft vs full decode hashes: median {np.median(same):.0f} bits apart, max {same.max()}")
    tmp = Path(tempfile.mkdtemp())
    try:
        lake = Lake.create(tmp / "lake")
        lake.ingest(photos, progress=False)
        t0 = time.perf_counter()
        n = compute_image_signals(lake, progress=False)
        sec = time.perf_counter() - t0
        print(f"  compute_image_signals on a lake ({len(os.sched_getaffinity(0))} worker processes, incl. spawn and commit): "
              f"{n} rows in {sec:.1f} s = {n / sec:.0f} img/s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, nargs="*", default=[100_000, 1_000_000], help="sizes for semantic_pairs (none: skip)")
    ap.add_argument("--assign", type=int, nargs="+", default=[4], help="semantic_pairs assign values to time")
    ap.add_argument("--queries", type=int, default=2000, help="rows whose exact partners are searched")
    ap.add_argument("--full-exact", type=int, default=100_000, help="run the exact self-join in full up to this N")
    ap.add_argument("--subset-exact", type=int, default=50_000, help="rows of the subset the exact join is timed on")
    ap.add_argument("--hash-n", type=int, default=1_000_000, help="hashes for hamming_pairs (0: skip)")
    ap.add_argument("--hash-subset", type=int, default=20_000)
    ap.add_argument("--classic-n", type=int, default=200_000, help="hashes for the classic 9-band plan")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threshold", type=float, default=THRESHOLD, help="cosine threshold for semantic_pairs")
    ap.add_argument("--new-frac", type=float, default=0.01, help="share of rows that are new in the incremental run (0: skip)")
    ap.add_argument("--photos", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared/data/flickr8k/images",
                    help="folder of JPEGs for the perceptual-hash throughput (skipped when absent)")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed + 1)
    print(f"{platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} cores, numpy {np.__version__}, "
          f"faiss {faiss.__version__}; load average at start {os.getloadavg()[0]:.2f}")
    times = {n: bench_semantic(n, args, rng) for n in args.n}
    if len(args.n) > 1:
        print("\nscaling (semantic_pairs):")
        n0 = args.n[0]
        for assign in args.assign:
            for n in args.n:
                sec = times[n][assign]
                print(f"  assign={assign} N={n:>9,}   {sec:7.1f} s   {sec / n * 1e6:6.1f} us/row   "
                      f"time x{sec / times[n0][assign]:5.1f} for N x{n / n0:g}")
    if args.hash_n:
        bench_hamming(args.hash_n, args, rng)
    if args.photos.is_dir():
        bench_phash(args.photos, args.repeat)
    else:
        print(f"\nperceptual hash: skipped, no photos at {args.photos}")


if __name__ == "__main__":
    main()
