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
   (baseline) and imagehash.phash when installed; then compute_image_signals end to end on a lake;
6. copy verification (--verify-n rows, 0: skip; issue 17): a lake of real photos with planted
   copies (the 800 Flickr8k photos, or with --verify-set quarters each photo's 4 quarters as
   distinct pictures, plus copies of them made with every easy and hard edit until there are
   --verify-n rows), embedded with the offline encoder; then, side by side on copies of that lake, `dedup --method all` without
   verify (baseline), with verify, and the baseline again (noise). Prints the ratio, keypoint
   rows/s, candidate pairs/s, the share of rows that needed keypoints, recall/precision of both,
   the incremental cost of 10% new rows, and the projected verify cost at 1M rows (keypoints and
   pairs scale with the rows; the candidate search is timed with --knn-n random vectors);
7. spanning forest (--span-n rows, 0: skip): ``semantic_pairs(span=threshold)``, what dedup's
   semantic and caption methods ask, against the same join returning every pair, in one run and
   alternating (--repeat times, best of each): on the planted set of section 2, and with one
   vector posted --clique times among them (near-identical copies); time, peak extra memory,
   pairs, and that the groups (connected components) are the same.
8. weak clump (--weak-n rows, 0: skip): --weak-clump rows all weakly alike (pairwise cosine
   ~0.86, between semantic dedup's confirm cosine --threshold - 0.15 and its threshold) with
   unrelated hashes among the planted set: the join from the confirm cosine returning every pair
   (what dedup held before the hash check) against the same join checking the hashes inside each
   block (``HashFilter(every=)``): time, peak extra memory, pairs, and that the links after the
   check are the same.

    python scripts/bench_dedup.py --n 100000 1000000 [--assign 4] [--hash-n 1000000]
    python scripts/bench_dedup.py --n --hash-n 0          # perceptual hashing only
    python scripts/bench_dedup.py --n --hash-n 0 --no-phash --verify-n 10000 --knn-n 1000000   # verification only
    python scripts/bench_dedup.py --n --hash-n 0 --no-phash --verify-n 0 --span-n 200000 --clique 2000 10000   # forest only
    python scripts/bench_dedup.py --n --hash-n 0 --no-phash --verify-n 0 --span-n 0 --weak-n 200000 --weak-clump 5000 10000
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
    HashFilter,
    components,
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
        n = compute_image_signals(lake, progress=False).computed
        sec = time.perf_counter() - t0
        print(f"  compute_image_signals on a lake ({len(os.sched_getaffinity(0))} worker processes, incl. spawn and commit): "
              f"{n} rows in {sec:.1f} s = {n / sec:.0f} img/s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def plant_pictures(photos: Path, out: Path, n_rows: int, seed: int, kind: str = "photos") -> dict[str, str]:
    """Distinct pictures, then copies of random ones (one edit of EDITS + HARD_EDITS in turn, a
    third with a second easy edit) until there are ``n_rows`` images. ``kind`` "photos": every
    Flickr8k photo once (800: at 10,000 rows 92% of the rows are copies); "quarters": each photo's
    4 quarters as distinct pictures (about a third of the rows, as many photos as that takes).
    Returns key -> the picture it shows."""
    import io
    import random

    from PIL import Image

    from lakecurate.plant import EDITS, HARD_EDITS, edit_image, first_captions, write_pair

    rng = random.Random(seed)
    captions = first_captions(photos.parent / "captions.csv") if (photos.parent / "captions.csv").exists() else {}
    out.mkdir(parents=True, exist_ok=True)
    owner, tiles = {}, []
    files = sorted(photos.glob("*.jpg"))
    if kind == "quarters":
        files = files[: max(1, round(n_rows * 0.32 / 4))]  # about a third of the rows distinct
    for path in files:
        with Image.open(path) as im:
            im = im.convert("RGB")
            w, h = im.size
            cuts = [(0, 0, w // 2, h // 2), (w // 2, 0, w, h // 2), (0, h // 2, w // 2, h), (w // 2, h // 2, w, h)] \
                if kind == "quarters" else [(0, 0, w, h)]
            for q, box in enumerate(cuts):
                tile = im.crop(box)
                key = f"{path.stem}_q{q}" if kind == "quarters" else path.stem
                buf = io.BytesIO()
                tile.save(buf, "JPEG", quality=90)
                write_pair(out, key, buf.getvalue(), captions.get(path.stem, ""))
                owner[key] = key
                tiles.append((key, tile, captions.get(path.stem, "")))
    edits = EDITS + HARD_EDITS
    for c in range(max(0, n_rows - len(owner))):
        key, tile, caption = tiles[rng.randrange(len(tiles))]
        im = edit_image(tile, edits[c % len(edits)], rng)
        if rng.random() < 1 / 3:
            im = edit_image(im, rng.choice(EDITS), rng)
        buf = io.BytesIO()
        im.convert("RGB").save(buf, "JPEG", quality=rng.randint(75, 95))
        write_pair(out, f"{key}__c{c}", buf.getvalue(), caption)
        owner[f"{key}__c{c}"] = key
    return owner


def _pair_scores(lake, owner: dict[str, str]) -> tuple[float, float]:
    import itertools

    df = lake.to_pandas(["key", "dup_group"]).dropna(subset=["dup_group"])
    df["key"] = df["key"].map(lambda k: Path(k).stem)
    found = {p for g in df.groupby("dup_group")["key"].apply(sorted) if len(g) > 1 for p in itertools.combinations(g, 2)}
    by: dict[str, list[str]] = {}
    for k, o in owner.items():
        by.setdefault(o, []).append(k)
    truth = {tuple(sorted(p)) for ks in by.values() for p in itertools.combinations(ks, 2)}
    hit = len(truth & found)
    return hit / max(1, len(truth)), hit / max(1, len(found))


def bench_verify(photos: Path, n_rows: int, knn_n: int, seed: int, kind: str) -> None:
    """Issue 17's cost: dedup with and without verification, side by side, on one planted lake;
    then the same lake built in two parts (90% + 10%) to time an incremental run."""
    import random
    import shutil
    import tempfile

    from lakecurate import Lake
    from lakecurate.dedup import METHODS
    from lakecurate.neardup import knn_pairs

    tmp = Path(tempfile.mkdtemp())
    try:
        t0 = time.perf_counter()
        owner = plant_pictures(photos, tmp / "src", n_rows, seed, kind)
        later = set(random.Random(seed).sample(sorted(owner), len(owner) // 10))  # the 10% that arrive later
        (tmp / "a").mkdir()
        (tmp / "b").mkdir()
        for key in owner:
            for ext in (".jpg", ".txt"):
                shutil.move(tmp / "src" / f"{key}{ext}", tmp / ("b" if key in later else "a") / f"{key}{ext}")
        first = Lake.create(tmp / "first")
        first.ingest(tmp / "a", progress=False)
        first.embed("offline", progress=False)
        full = Lake.open(shutil.copytree(first.uri, tmp / "full"))
        full.ingest(tmp / "b", progress=False)
        full.embed("offline", progress=False)
        what = "quarters of Flickr8k photos" if kind == "quarters" else "Flickr8k photos"
        print(f"\ncopy verification: {len(owner):,} images ({len(set(owner.values())):,} distinct {what} + planted "
              f"copies of them), ingested and embedded in {time.perf_counter() - t0:.0f} s")
        without = [m for m in METHODS if m != "verify"]
        runs = {}
        for name, methods in (("without verify", without), ("with verify", list(METHODS)), ("without verify, again", without)):
            lake = Lake.open(shutil.copytree(full.uri, tmp / name.replace(" ", "_").replace(",", "")))
            t = time.perf_counter()
            rep = lake.dedup(methods, progress=False)
            sec = time.perf_counter() - t
            recall, precision = _pair_scores(lake, owner)
            runs[name] = (sec, rep, lake)
            print(f"  dedup {name:24s} {sec:7.1f} s   pair recall {recall:.3f} precision {precision:.4f}")
        sec, rep, lake = runs["with verify"]
        baseline = (runs["without verify"][0] + runs["without verify, again"][0]) / 2
        v = next(m for m in rep.methods if m.method == "verify")
        print(f"  ratio with / without verify: {sec / baseline:.2f} (baseline: mean of the two runs, "
              f"{runs['without verify'][0]:.1f} and {runs['without verify, again'][0]:.1f} s)")
        print(f"  verify: {v.candidates:,} candidate pairs ({v.candidates / rep.rows:.2f} per row), {v.keypoint_rows:,} rows "
              f"needed keypoints ({v.keypoint_rows / rep.rows:.0%} of rows; loaded {v.keypoint_loads:,} times over the chunks), "
              f"{v.pairs:,} verified; {v.seconds:.1f} s in all "
              f"(keypoints {v.keypoint_seconds:.1f} s, matching {v.match_seconds:.1f} s)")
        kp_rate = v.keypoints_computed / v.keypoint_seconds if v.keypoint_seconds else float("nan")
        pair_rate = v.candidates / v.match_seconds if v.match_seconds else float("nan")
        print(f"  keypoints {kp_rate:,.0f} rows/s (decode + ORB on the image and its mirror, {len(os.sched_getaffinity(0))} "
              f"reader processes, incl. spawn and cache commits); matching {pair_rate:,.0f} candidate pairs/s")
        cache = lake.side_dataset("dup_keypoints", per_branch=False)
        cache_bytes = sum(f.stat().st_size for f in Path(cache.uri).rglob("*") if f.is_file())
        print(f"  keypoint cache: {cache_bytes / 2**20:.0f} MiB for {cache.count_rows():,} rows "
              f"({cache_bytes / max(1, cache.count_rows()) / 1024:.1f} KiB a row)")

        # Incremental: the first 90% deduplicated with verify, then the last 10% arrive.
        inc = first
        inc.dedup(list(METHODS), progress=False)
        inc.ingest(tmp / "b", progress=False)
        inc.embed("offline", progress=False)
        t = time.perf_counter()
        rep2 = inc.dedup(list(METHODS), progress=False)
        v2 = next(m for m in rep2.methods if m.method == "verify")
        recall, precision = _pair_scores(inc, owner)
        print(f"  incremental, {v2.new_rows:,} new rows of {rep2.rows:,}: dedup {time.perf_counter() - t:.1f} s "
              f"(pair recall {recall:.3f} precision {precision:.4f}); verify {v2.candidates:,} candidate pairs, keypoints "
              f"for {v2.keypoint_rows:,} rows of which {v2.keypoints_computed:,} computed; {v2.seconds:.1f} s")

        # The projection to 1M rows: keypoints and pairs grow with the rows; the candidate search is timed.
        share, per_row = v.keypoint_rows / rep.rows, v.candidates / rep.rows
        kp_1m, pairs_1m = 1e6 * share / kp_rate, 1e6 * per_row / pair_rate
        knn_s = float("nan")
        if knn_n:
            rng = np.random.default_rng(seed)
            x = np.empty((knn_n, 256), np.float32)
            for s0 in range(0, knn_n, 1 << 16):
                x[s0:s0 + (1 << 16)] = rng.standard_normal((min(1 << 16, knn_n - s0), 256), dtype=np.float32)
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            t = time.perf_counter()
            knn_pairs(x, 5, 0.4)
            took = time.perf_counter() - t
            knn_s = took * (1e6 / knn_n) ** 1.5
            print(f"  knn_pairs (k=5, cosine >= 0.4) on {knn_n:,} random 256-d vectors: {took:.1f} s")
        print(f"  projected verify cost at 1M rows on this machine: keypoints {kp_1m / 60:.0f} min "
              f"({share:.0%} of rows), matching {pairs_1m / 60:.0f} min ({per_row:.2f} pairs a row), "
              f"candidate search {knn_s / 60:.1f} min; keypoint cache "
              f"{cache_bytes / max(1, cache.count_rows()) * 1e6 * share / 2**30:.0f} GiB")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def bench_span(n: int, cliques: list[int], args: argparse.Namespace) -> None:
    x, _ = make_vectors(n, seed=args.seed)
    print(f"\nspanning forest (span = threshold {args.threshold}), N = {n:,}, best of {args.repeat} alternating:")
    for s in [0, *cliques]:
        if s:  # one vector posted s times, re-encoded (cosine > 0.999 among the copies)
            rng = np.random.default_rng(args.seed + s)
            at = rng.choice(n, s, replace=False)
            v = x[at[0]].astype(np.float32) + 0.01 * rng.standard_normal((s, x.shape[1]), dtype=np.float32) / np.sqrt(x.shape[1])
            x[at] = v / np.linalg.norm(v, axis=1, keepdims=True)
        best: dict[str, tuple[float, float, tuple]] = {}
        for _ in range(args.repeat):
            for name, kw in (("every pair", {}), ("forest", {"span": args.threshold})):
                with PeakRSS() as mem:
                    t0 = time.perf_counter()
                    got = semantic_pairs(x, args.threshold, seed=args.seed, **kw)
                    sec = time.perf_counter() - t0
                if name not in best or sec < best[name][0]:
                    best[name] = (sec, mem.extra_mb, got)
                del got
        (ta, ma, every), (tb, mb, forest) = best["every pair"], best["forest"]
        same = np.array_equal(components(n, *every[:2]), components(n, *forest[:2]))
        label = f"one vector posted {s:,} times" if s else "planted set"
        print(f"  {label:<32} every pair {ta:6.1f} s  +{ma:6.0f} MiB  {len(every[0]):>11,} pairs | "
              f"forest {tb:6.1f} s  +{mb:6.0f} MiB  {len(forest[0]):>9,} pairs | time ratio {tb / ta:.2f}, "
              f"same groups: {same}")
        del every, forest, best


def bench_weak(n: int, clumps: list[int], args: argparse.Namespace) -> None:
    x, _ = make_vectors(n, seed=args.seed)
    thr = args.threshold
    confirm = thr - 0.15
    rng = np.random.default_rng(args.seed + 7)
    h = rng.integers(0, 2**63, n, dtype=np.int64).astype(np.uint64)
    print(f"\nweak clump (confirm cosine {confirm:.2f}, threshold {thr}, hashes within 16 bits), N = {n:,}, "
          f"best of {args.repeat} alternating:")
    for s in clumps:
        y = x.copy()
        at = rng.choice(n, s, replace=False)
        centre = rng.standard_normal(y.shape[1]).astype(np.float32)
        centre /= np.linalg.norm(centre)
        v = centre + 0.4 * rng.standard_normal((s, y.shape[1]), dtype=np.float32) / np.sqrt(y.shape[1])
        y[at] = v / np.linalg.norm(v, axis=1, keepdims=True)  # pairwise cosine ~ 1 / 1.16 = 0.86
        near = HashFilter([], every=[(h, None, 16, confirm)], above=thr)
        best: dict[str, tuple[float, float, tuple]] = {}
        for _ in range(args.repeat):
            for name, kw in (("every pair", {}), ("checked in the join", {"near": near})):
                with PeakRSS() as mem:
                    t0 = time.perf_counter()
                    got = semantic_pairs(y, confirm, seed=args.seed, span=thr, **kw)
                    if name == "every pair":  # what dedup then kept
                        ok = near(*got) | near.kept(*got)
                        got = tuple(a[ok] for a in got[:3]) + (len(got[0]),)
                    sec = time.perf_counter() - t0
                if name not in best or sec < best[name][0]:
                    best[name] = (sec, mem.extra_mb, got)
                del got
        (ta, ma, every), (tb, mb, checked) = best["every pair"], best["checked in the join"]
        same = np.array_equal(np.stack(every[:2]), np.stack(checked[:2]))
        print(f"  clump of {s:>7,}: every pair {ta:6.1f} s  +{ma:6.0f} MiB  {every[3]:>12,} pairs held | "
              f"checked in the join {tb:6.1f} s  +{mb:6.0f} MiB  {len(checked[0]):>9,} pairs | time ratio "
              f"{tb / ta:.2f}, same links: {same}")
        del every, checked, best


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
    ap.add_argument("--no-phash", action="store_true", help="skip the perceptual-hash throughput (section 5)")
    ap.add_argument("--verify-n", type=int, default=10_000, help="rows of the copy-verification lake (0: skip)")
    ap.add_argument("--verify-set", choices=["photos", "quarters"], default="photos",
                    help="distinct pictures of the verification lake: the 800 photos, or their 3,200 quarters")
    ap.add_argument("--knn-n", type=int, default=1_000_000, help="random vectors to time the verify candidate search on (0: skip)")
    ap.add_argument("--span-n", type=int, default=200_000, help="rows of the spanning-forest section (0: skip)")
    ap.add_argument("--clique", type=int, nargs="*", default=[2000, 10000], help="copies of one vector in that section")
    ap.add_argument("--weak-n", type=int, default=200_000, help="rows of the weak-clump section (0: skip)")
    ap.add_argument("--weak-clump", type=int, nargs="*", default=[5000, 10000], help="rows of the clump in that section")
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
    if args.span_n:
        bench_span(args.span_n, args.clique, args)
    if args.weak_n:
        bench_weak(args.weak_n, args.weak_clump, args)
    if not args.photos.is_dir():
        print(f"\nperceptual hash and copy verification: skipped, no photos at {args.photos}")
        return
    if not args.no_phash:
        bench_phash(args.photos, args.repeat)
    if args.verify_n:
        bench_verify(args.photos, args.verify_n, args.knn_n, args.seed, args.verify_set)


if __name__ == "__main__":
    main()
