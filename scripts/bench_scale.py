"""Out-of-core dedup and clustering at 1M, 3M and 10M rows (issue 20): bounded memory, linear time.

For each size N, in one run:

1. data: a Lance dataset of N rows x 512-d float16 unit vectors (``DIR/vectors-N.lance``, made once
   and reused), written in 65,536-row chunks: N / 300 topics of uneven size (lognormal weights,
   same-topic cosine ~0.7), and in every chunk 5% planted near copies of other rows of the chunk at cosine
   0.95-0.996 and 5% hard negatives at 0.85-0.949;
2. each measurement runs in a fresh child process (its own peak RSS: ``VmHWM``, everything the
   process ever held, Python, Lance and faiss included):
   - ``semantic``: ``neardup.semantic_pairs`` over ``columns.LanceVectors`` (the column streamed
     once to assign clusters, entries spilled to disk, each group of clusters read by position)
     at cosine 0.95, then ``components``; recall against an exact scan for 1,000 random rows and
     1,000 planted copies (every row of the dataset compared with them, streamed);
   - ``cluster``: ``concepts.fit_centroids`` (k-means on a sample read by position) and
     ``concepts.assign`` (streamed), at a fixed k (``--k``, default 1,024) so that the sizes are
     comparable (the default k grows as sqrt(N) up to 4,096);
   - ``hash``: ``neardup.hamming_pairs`` (distance <= 8) on N random 64-bit hashes with 5% planted
     copies (0-8 bits flipped); recall against brute force for 1,000 random rows and 1,000 copies;
   - ``hash-clusters`` (``--only hash-clusters``): ``neardup.clustered_hamming_pairs`` (dedup
     ``--phash-search clusters``) on the dataset's vectors with hashes planted to match them
     (each near copy gets its source's hash, 0-8 bits flipped; 0.5% of rows collide with an
     unrelated row's hash); recall of the pairs whose vectors are within ``--hash-cosine``
     (its peak counts from the search's start: the hashes are in it, the setup's scratch is not);
   - the baseline, at the smallest size only: ``semantic-whole``, the path before this change (the
     whole column read into one matrix, then the same join);
   - ``curate`` (``--only curate``): a lake of N pairs (``DIR/pairs-N``, 256k-row fragments: captions,
     sizes, 1% ingest errors, a score column with embed provenance, caption template groups with
     dedup's) curated by a seven-step recipe (ingest_error, caption_missing, image_size, aspect,
     caption_template, sql, alignment at the 20th percentile), decided and written a fragment at a
     time; its baseline at the smallest size, ``curate-whole``: the same decisions made in one
     frame of the whole lake (the path before, without its write); and ``curate-dry``, its dry run
     (each step's drops, examples, rows either side of the cut and what-ifs), also by fragment;
   - ``rebalance`` and ``sequence`` (``--only rebalance sequence``): the same lakes with a 64-d
     float16 embedding and k = 1,024 concepts added; ``rebalance 0.5`` and a random ``sequence``
     of every row, from scratch (both a fragment at a time, their keys sorted out of core);
   - ``dedup`` (``--only dedup``): the same lakes (3% of rows repeat another's content hash):
     dedup's exact method with the stored minhash groups joined into the decision, from scratch
     (groups held sparse: memory grows with the rows in groups, ~14% of them here).
3. ratios against the smallest size, in this run: peak memory and time per row.

    python scripts/bench_scale.py                               # 1M, 3M, 10M (~45 min, 15 GB of disk + 10 GB
                                                                # of temporary copy in the 10M join)
    python scripts/bench_scale.py --sizes 100000 300000 --dir /tmp/scale   # a quick look
    python scripts/bench_scale.py --only semantic --assign 5     # the join with another number of cells a row
    python scripts/bench_scale.py --only curate                  # curate's decisions at 1M, 3M, 10M pairs
    python scripts/bench_scale.py --only rebalance sequence      # rebalance and sequence at 1M, 3M, 10M pairs
    python scripts/bench_scale.py --only dedup --sizes 1000000 3000000   # dedup's per-row work on the driver
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

D = 512
THRESHOLD = 0.95
CHUNK = 65536
SEED = 0


def vm_hwm_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


# --------------------------------------------------------------------------- data
def with_cosine(x: np.ndarray, cos: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    u = rng.standard_normal(x.shape, dtype=np.float32)
    u -= (u * x).sum(1, keepdims=True) * x
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    return cos[:, None] * x + np.sqrt(1 - cos[:, None] ** 2) * u


def chunks(n: int, seed: int = SEED):
    """(vectors, planted copy rows, their source rows) per chunk, rows counted from the dataset's
    first; a copy and its source are in the same chunk."""
    rng = np.random.default_rng(seed)
    n_topics = max(8, n // 300)  # as scripts/bench_dedup.py: the same structure per row at every size
    common = rng.standard_normal(D).astype(np.float32)
    common /= np.linalg.norm(common)
    topics = rng.standard_normal((n_topics, D), dtype=np.float32)
    topics /= np.linalg.norm(topics, axis=1, keepdims=True)
    weight = rng.lognormal(0, 1.0, n_topics)
    weight /= weight.sum()
    for s in range(0, n, CHUNK):
        m = min(CHUNK, n - s)
        v = 0.4 * common + 0.75 * topics[rng.choice(n_topics, m, p=weight)]
        v += 0.55 * rng.standard_normal((m, D), dtype=np.float32) / np.sqrt(D)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        k = m // 20
        at = rng.permutation(m)
        src, dup, neg = at[: 2 * k : 2], at[1 : 2 * k : 2], at[2 * k : 3 * k]
        v[dup] = with_cosine(v[src], rng.uniform(0.95, 0.996, len(dup)).astype(np.float32), rng)
        v[neg] = with_cosine(v[at[3 * k : 4 * k]], rng.uniform(0.85, 0.949, len(neg)).astype(np.float32), rng)
        yield v.astype(np.float16), s + dup, s + src


def make_dataset(path: Path, n: int) -> None:
    import lance
    import pyarrow as pa

    if (path / "_versions").exists():
        try:
            if lance.dataset(str(path)).count_rows() == n:
                return
        except Exception:  # noqa: BLE001 - a half-written dataset from a killed run: write it again
            pass
    schema = pa.schema([pa.field("row", pa.int64()), pa.field("image", pa.list_(pa.float16(), D))])
    copies = []

    def batches():
        start = 0
        for v, dup, _src in chunks(n):
            copies.append(dup)
            yield pa.record_batch([pa.array(np.arange(start, start + len(v))),
                                   pa.FixedSizeListArray.from_arrays(pa.array(v.ravel()), D)], schema=schema)
            start += len(v)

    t0 = time.perf_counter()
    lance.write_dataset(pa.RecordBatchReader.from_batches(schema, batches()), str(path), mode="overwrite")
    np.save(path.parent / f"{path.name}.copies.npy", np.concatenate(copies))
    print(f"  wrote {n:,} rows to {path} in {time.perf_counter() - t0:.0f} s", flush=True)


# --------------------------------------------------------------------------- children
def sample_rows(n: int, copies: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(SEED + 7)
    return np.unique(np.concatenate([rng.choice(n, min(n, 1000), replace=False),
                                     rng.choice(copies, min(len(copies), 1000), replace=False)]))


def child_semantic(path: Path, whole: bool, engine: str = "local") -> dict:
    import lance

    from lakecurate.columns import LanceVectors, embedding_matrix
    from lakecurate.neardup import components, semantic_pairs

    ds = lance.dataset(str(path))
    n = ds.count_rows()
    if engine == "ray":  # a local Ray of 2 CPUs, started before the clock
        from lakecurate.engines import ray_init

        os.environ.setdefault("LAKECURATE_RAY_CPUS", "2")
        ray_init()
    t0 = time.perf_counter()
    if whole:  # before issue 20: the whole column in one matrix
        x, _ = embedding_matrix(ds.to_table(columns=["image"]).column("image"), dtype=None)
        i, j, _cos = semantic_pairs(x, THRESHOLD)
        del x
    else:
        assign = int(os.environ.get("BENCH_SCALE_ASSIGN", "0"))  # --assign: clusters a row joins (default: the join's)
        i, j, _cos = semantic_pairs(LanceVectors(ds, "image"), THRESHOLD, engine=engine, **({"assign": assign} if assign else {}))
    label = components(n, i, j)
    seconds = time.perf_counter() - t0
    peak = vm_hwm_mb()
    # Recall: every pair with a sampled row, by an exact streamed scan.
    rows = sample_rows(n, np.load(path.parent / f"{path.name}.copies.npy"))
    q = np.asarray(LanceVectors(ds, "image").take(rows), np.float32)
    ta, tb = [], []
    for start, part in LanceVectors(ds, "image").batches(CHUNK):
        a, b = np.nonzero(q @ np.asarray(part, np.float32).T >= THRESHOLD)
        ta.append(rows[a])
        tb.append(b + start)
    ta, tb = np.concatenate(ta), np.concatenate(tb)
    keep = ta != tb
    lo, hi = np.minimum(ta, tb)[keep], np.maximum(ta, tb)[keep]
    truth = np.unique(lo * n + hi)
    found = np.isin(truth, i.astype(np.int64) * n + j)
    return {"seconds": seconds, "peak_mb": peak, "pairs": int(len(i)), "groups": int(len(np.unique(label))),
            "recall": float(found.mean()) if len(truth) else float("nan"), "true_pairs": int(len(truth)),
            "missed": int((~found).sum())}


def child_cluster(path: Path, k: int) -> dict:
    import lance

    from lakecurate.columns import LanceVectors
    from lakecurate.concepts import assign, fit_centroids

    ds = lance.dataset(str(path))
    src = LanceVectors(ds, "image")
    t0 = time.perf_counter()
    cent = fit_centroids(src, k, seed=SEED)
    t_fit = time.perf_counter() - t0
    label, _dist = assign(src, cent)
    seconds = time.perf_counter() - t0
    sizes = np.bincount(label, minlength=k)
    return {"seconds": seconds, "fit_seconds": t_fit, "peak_mb": vm_hwm_mb(), "k": k,
            "largest": int(sizes.max()), "empty": int((sizes == 0).sum())}


def _assign_on_worker(*args):
    """A Ray task: one fragment's assignment (``concepts.assign_fragment``) and the worker's peak memory."""
    from lakecurate.concepts import assign_fragment

    addr, label, dist = assign_fragment(*args)
    return len(addr), vm_hwm_mb()


def child_cluster_ray(path: Path, k: int) -> dict:
    """``cluster --engine ray``'s path: the fit here on a sample, a Ray task per fragment assigns its
    rows (a local Ray of 2 CPUs); peak memory of the driver and of the largest worker."""
    import lance

    from lakecurate.columns import LanceVectors
    from lakecurate.concepts import fit_centroids
    from lakecurate.engines import ray_init, ray_task_map

    os.environ.setdefault("LAKECURATE_RAY_CPUS", "2")
    ray_init()
    ds = lance.dataset(str(path))
    t0 = time.perf_counter()
    cent = fit_centroids(LanceVectors(ds, "image"), k, seed=SEED)
    t_fit = time.perf_counter() - t0
    calls = [(str(path), ds.version, None, f.fragment_id, "image", cent) for f in ds.get_fragments()]
    done = list(ray_task_map(_assign_on_worker, calls))
    seconds = time.perf_counter() - t0
    assert sum(n for n, _ in done) == ds.count_rows()
    return {"seconds": seconds, "fit_seconds": t_fit, "peak_mb": vm_hwm_mb(), "k": k, "tasks": len(calls),
            "worker_peak_mb": max(m for _, m in done)}


def child_hash(n: int) -> dict:
    from lakecurate.neardup import hamming_pairs

    rng = np.random.default_rng(SEED + 3)
    h = rng.integers(0, 2**63, n, dtype=np.int64).astype(np.uint64) * np.uint64(2) + rng.integers(0, 2, n).astype(np.uint64)
    copies = rng.choice(n, n // 20, replace=False)
    sources = rng.choice(n, n // 20)
    flips = rng.integers(0, 9, len(copies))
    noise = np.zeros(len(copies), np.uint64)
    for b in range(8):  # up to 8 distinct random bits flipped per copy
        bit = np.uint64(1) << rng.integers(0, 64, len(copies)).astype(np.uint64)
        noise ^= np.where(b < flips, bit, np.uint64(0))
    h[copies] = h[sources] ^ noise
    t0 = time.perf_counter()
    i, j, _d = hamming_pairs(h, 8)
    seconds = time.perf_counter() - t0
    peak = vm_hwm_mb()
    rows = np.unique(np.concatenate([rng.choice(n, 1000, replace=False), rng.choice(copies, 1000, replace=False)]))
    truth = []
    for r in rows:
        other = np.flatnonzero(np.bitwise_count(h ^ h[r]) <= 8)
        other = other[other != r]
        truth.append(np.minimum(other, r) * n + np.maximum(other, r))
    truth = np.unique(np.concatenate(truth))
    found = np.isin(truth, i.astype(np.int64) * n + j)
    return {"seconds": seconds, "peak_mb": peak, "pairs": int(len(i)), "recall": float(found.mean()),
            "true_pairs": int(len(truth)), "missed": int((~found).sum())}


def planted_sources(path: Path) -> np.ndarray:
    """The source row of each planted copy (``DIR/vectors-N.lance.sources.npy``, found once): its
    nearest row in its own chunk (copies sit at cosine 0.95-0.996 to their source, other rows far
    below)."""
    import lance

    from lakecurate.columns import embedding_matrix

    out = path.parent / f"{path.name}.sources.npy"
    if out.exists():
        return np.load(out)
    copies = np.load(path.parent / f"{path.name}.copies.npy")
    ds = lance.dataset(str(path))
    sources = np.empty(len(copies), np.int64)
    for start in range(0, ds.count_rows(), CHUNK):
        x = embedding_matrix(ds.take(np.arange(start, min(start + CHUNK, ds.count_rows())), columns=["image"]).column(0),
                             dtype=np.float32)[0]
        mine = np.flatnonzero((copies >= start) & (copies < start + len(x)))
        sim = x[copies[mine] - start] @ x.T
        sim[np.arange(len(mine)), copies[mine] - start] = -2
        sources[mine] = sim.argmax(1) + start
    np.save(out, sources)
    return sources


def child_hash_clusters(path: Path, cosine: float) -> dict:
    """``neardup.clustered_hamming_pairs`` (dedup --phash-search clusters) over the vectors of the
    semantic dataset and hashes planted to match: each planted near copy of a vector gets its
    source's hash with 0-8 bits flipped; 0.5% of rows get a hash within 8 bits of an unrelated
    row's (a pHash collision of different images). Recall against brute force for 1,000 random
    rows and 1,000 copies: of the pairs whose vectors are within ``cosine`` (what it searches), and
    how many collisions of far vectors it leaves out (by design)."""
    import lance

    from lakecurate.columns import LanceVectors
    from lakecurate.neardup import clustered_hamming_pairs

    ds = lance.dataset(str(path))
    n = ds.count_rows()
    copies, sources = np.load(path.parent / f"{path.name}.copies.npy"), planted_sources(path)
    rng = np.random.default_rng(SEED + 5)
    h = rng.integers(0, 2**63, n, dtype=np.int64).astype(np.uint64) * np.uint64(2) + rng.integers(0, 2, n).astype(np.uint64)

    def flipped(m: int) -> np.ndarray:
        flips, noise = rng.integers(0, 9, m), np.zeros(m, np.uint64)
        for b in range(8):
            noise ^= np.where(b < flips, np.uint64(1) << rng.integers(0, 64, m).astype(np.uint64), np.uint64(0))
        return noise

    h[copies] = h[sources] ^ flipped(len(copies))
    a, b = rng.choice(n, n // 200), rng.choice(n, n // 200)
    h[b] = h[a] ^ flipped(len(b))
    with open("/proc/self/clear_refs", "w") as f:  # the peak from here: not planted_sources' scratch
        f.write("5")
    t0 = time.perf_counter()
    i, j, _d = clustered_hamming_pairs(h, LanceVectors(ds, "image"), 8, cosine=cosine)
    seconds = time.perf_counter() - t0
    peak = vm_hwm_mb()
    rows = sample_rows(n, copies)
    q = np.asarray(LanceVectors(ds, "image").take(rows), np.float32)
    truth, near = [], []
    for r, qv in zip(rows, q):
        other = np.flatnonzero(np.bitwise_count(h ^ h[r]) <= 8)
        other = other[other != r]
        cos = np.asarray(LanceVectors(ds, "image").take(np.sort(other)), np.float32) @ qv if len(other) else np.zeros(0)
        truth.append(np.minimum(np.sort(other), r) * n + np.maximum(np.sort(other), r))
        near.append(cos >= cosine)
    truth, near = np.concatenate(truth), np.concatenate(near)
    found = np.isin(truth, i.astype(np.int64) * n + j)
    return {"seconds": seconds, "peak_mb": peak, "pairs": int(len(i)), "recall": float(found[near].mean()),
            "true_pairs": int(near.sum()), "missed": int((~found[near]).sum()), "far_pairs": int((~near).sum()),
            "far_found": int(found[~near].sum()), "cosine": cosine}


PAIRS_FRAGMENT = 1 << 18
CURATE_RECIPE = {"name": "bench-scale", "step": [
    {"filter": "ingest_error"}, {"filter": "caption_missing"}, {"filter": "image_size", "min_side": 96},
    {"filter": "aspect", "max_aspect": 2.5}, {"filter": "caption_template", "max_group": 9},
    {"filter": "sql", "where": "caption NOT LIKE '%watermark%'", "reason": "watermark"},
    {"filter": "alignment", "min_percentile": 20}]}


def make_pairs_lake(path: Path, n: int) -> None:
    """A lake of n pairs as curate sees them after ingest, embed and dedup (no pixels: curate reads none)."""
    import lance
    import pyarrow as pa

    from lakecurate import Lake, columns
    from lakecurate.schema import PAIRS_SCHEMA

    if (path / "pairs.lance" / "_versions").exists():
        try:
            ds = lance.dataset(str(path / "pairs.lance"))
            if ds.count_rows() == n and "dup_minhash_group" in ds.schema.names and \
                    ds.take([0], columns=["content_hash"]).column(0)[0].is_valid:  # (older lakes had no hashes)
                return
        except Exception:  # noqa: BLE001 - a half-written lake from a killed run: write it again
            pass
        import shutil
        shutil.rmtree(path)
    t0 = time.perf_counter()
    lake = Lake.create(path)
    rng = np.random.default_rng(SEED)
    words = np.array("a the red small old dog cat house tree river road boat car child woman man garden field city "
                     "beach snow night bridge tower market photo view street light watermark".split())
    now = pa.scalar(0, pa.timestamp("us", tz="UTC"))
    copies = np.random.default_rng(SEED + 2)  # content hashes: 3% of rows repeat another row's bytes
    source = np.where(copies.random(n) < 0.03, copies.integers(0, n, n), np.arange(n))
    for s in range(0, n, PAIRS_FRAGMENT):
        m = min(PAIRS_FRAGMENT, n - s)
        lens = rng.integers(0, 15, m)
        w = rng.integers(32, 2048, m).astype(np.int32)
        pick = rng.integers(0, len(words), (m, 14))
        caps = [" ".join(words[pick[i, : lens[i]]]) for i in range(m)]
        bad = rng.random(m) < 0.01
        data = {f.name: pa.nulls(m, f.type) for f in PAIRS_SCHEMA}
        data.update({"id": pa.array([f"{s + i:016x}" for i in range(m)]), "key": pa.array([f"{s + i:09d}.jpg" for i in range(m)]),
                     "source": pa.array(["synthetic"] * m), "image": pa.array([b""] * m, pa.large_binary()),
                     "content_hash": pa.array([f"{h:064x}" for h in source[s: s + m]]),
                     "caption": pa.array(caps), "width": pa.array(w),
                     "height": pa.array((w * rng.uniform(0.3, 1.7, m)).astype(np.int32)),
                     "ingest_status": pa.array(np.where(bad, "error", "ok").tolist()),
                     "ingested_at": pa.array([now.value] * m, pa.timestamp("us", tz="UTC"))})
        lake.append(pa.table(data, schema=PAIRS_SCHEMA))
    ds = lake.dataset()
    tbl = ds.to_table(columns=["id", "ingest_status"], with_row_address=True)
    ids = tbl.column("id").to_numpy(zero_copy_only=False)
    ok = tbl.column("ingest_status").to_numpy(zero_copy_only=False) != "error"
    score = np.where(ok, rng.normal(0.28, 0.05, n), np.nan).astype(np.float32)
    group = ids.copy()
    templated = np.flatnonzero(rng.random(n) < 0.05)  # 5% of captions in template groups of ~20 rows, anywhere
    group[templated] = ids[templated[rng.integers(0, max(1, len(templated) // 20), len(templated))]]
    for stage, config, new in (
            ("embed", {"family": "bench"}, {"bench_score": pa.array(score, pa.float32(), mask=np.isnan(score))}),
            ("dedup", {"method": "minhash"}, {"dup_minhash_group": pa.array(group)})):
        columns.declare(lake, [pa.field(k, a.type) for k, a in new.items()], columns.provenance(stage, config, ["synthetic"], lake.version))
        columns.write_changed(lake, tbl, new)
    print(f"  wrote a lake of {n:,} pairs ({len(lake.dataset().get_fragments())} fragments) to {path} in "
          f"{time.perf_counter() - t0:.0f} s", flush=True)


def add_concepts(path: Path) -> None:
    """A 64-d float16 embedding (embed provenance) and k = 1,024 zipf-sized concepts with distances
    (concepts provenance) on a pairs lake: what rebalance and sequence read."""
    import pyarrow as pa

    from lakecurate import Lake, columns

    lake = Lake.open(path)
    ds = lake.dataset()
    if "concept" in ds.schema.names:
        return
    tbl = ds.to_table(columns=[], with_row_address=True)
    n, d, k = tbl.num_rows, 64, 1024
    rng = np.random.default_rng(SEED + 1)
    v = rng.standard_normal((n, d)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    vec = pa.FixedSizeListArray.from_arrays(pa.array(v.astype(np.float16).ravel()), d)
    del v
    concept = np.minimum(rng.zipf(1.3, n) - 1, k - 1).astype(np.int32)
    for stage, config, new in (("embed", {"family": "bench"}, {"bench_image": vec}),
                               ("concepts", {"embedding": "bench", "k": k},
                                {"concept": pa.array(concept), "concept_dist": pa.array(rng.uniform(0.1, 0.8, n).astype(np.float32))})):
        columns.declare(lake, [pa.field(c, a.type) for c, a in new.items()], columns.provenance(stage, config, ["synthetic"], lake.version))
        columns.write_changed(lake, tbl, new)


def child_order(path: Path, what: str) -> dict:
    """rebalance 0.5 (far rule) or sequence (random order) of every row with a concept, from scratch."""
    from lakecurate import Lake, concepts

    lake = Lake.open(path)
    ds = lake.dataset()
    mine = ["rebalance_keep", "sample_weight", "repeats"] if what == "rebalance" else ["seq_order", "seq_shard"]
    if mine[0] in ds.schema.names:  # an earlier run's: forget them (metadata only)
        ds.drop_columns(mine)
    t0 = time.perf_counter()
    if what == "rebalance":
        rows = concepts.rebalance(lake, 0.5, where="concept IS NOT NULL", allow_stale=True).rows
    else:
        rows = concepts.sequence(lake, "random", where="concept IS NOT NULL")["rows"]
    return {"seconds": time.perf_counter() - t0, "peak_mb": vm_hwm_mb(), "rows": rows, "kept": rows}


def child_dedup(path: Path) -> dict:
    """dedup's exact method (content hashes: 3% repeats) with the lake's stored minhash groups
    joined into the decision (keep_from exact, minhash), from scratch: the stage's own work on
    the driver (exact's hashes, stored groups, ranks of the grouped rows, group and reason columns)."""
    from lakecurate import Lake
    from lakecurate.dedup import FINAL_COLUMNS

    lake = Lake.open(path)
    ds = lake.dataset()
    mine = [c for c in ("dup_exact_group", "dup_pair_group", *FINAL_COLUMNS) if c in ds.schema.names]
    if mine:  # an earlier run's: forget them (metadata only)
        ds.drop_columns(mine)
    t0 = time.perf_counter()
    rep = lake.dedup(["exact"], keep_from=["exact", "minhash"], progress=False)
    return {"seconds": time.perf_counter() - t0, "peak_mb": vm_hwm_mb(), "rows": rep.rows, "kept": rep.kept}


def child_curate(path: Path, whole: bool, dry: bool = False) -> dict:
    from lakecurate import Lake
    from lakecurate import curate as curate_mod

    lake = Lake.open(path)
    ds = lake.dataset()
    if "keep" in ds.schema.names:  # an earlier run's decisions: forget them (metadata only), so this run decides afresh
        ds.drop_columns(["keep", "drop_reason"])
    for tag in list(ds.tags.list()):
        lake.dataset().tags.delete(tag)
    t0 = time.perf_counter()
    if whole:  # the path before: every row's columns in one frame, then the decisions
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: tests/curate_reference.py
        from tests.curate_reference import judge_one_frame

        rec = curate_mod.load_recipe(CURATE_RECIPE)
        emb, emb_prov = curate_mod._embedding(lake, rec)
        df, dec = judge_one_frame(lake.dataset(), rec, emb, emb_prov)
        rows, kept = len(df), int(dec.alive.sum())
    elif dry:  # the dry run: every step's drops, examples, rows either side of each cut, what-ifs; nothing written
        rep = lake.curate(CURATE_RECIPE, dry_run=True, progress=False)
        rows, kept = rep.rows, rep.kept
    else:
        rep = lake.curate(CURATE_RECIPE, progress=False)
        rows, kept = rep.rows, rep.kept
    return {"seconds": time.perf_counter() - t0, "peak_mb": vm_hwm_mb(), "rows": rows, "kept": kept}


def run_child(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"child {args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 3_000_000, 10_000_000])
    ap.add_argument("--dir", type=Path, default=Path("/tmp/lakecurate-scale"), help="where the datasets are made (reused)")
    ap.add_argument("--k", type=int, default=1024, help="clusters for the clustering measurement (same at every size)")
    ap.add_argument("--only", nargs="+", default=["semantic", "cluster", "hash"],
                    choices=["semantic", "semantic-ray", "cluster", "cluster-ray", "hash", "hash-clusters", "curate",
                             "rebalance", "sequence", "dedup"])
    ap.add_argument("--hash-cosine", type=float, default=0.9, help="hash-clusters: the cosine whose neighbours' hashes are compared")
    ap.add_argument("--assign", type=int, help="semantic: clusters a row joins (default: semantic_pairs' own)")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.assign:
        os.environ["BENCH_SCALE_ASSIGN"] = str(args.assign)  # the children read it
    if args.child:
        kind, arg = args.child[0], args.child[1]
        res = {"semantic": lambda: child_semantic(Path(arg), False), "semantic-whole": lambda: child_semantic(Path(arg), True),
               "semantic-ray": lambda: child_semantic(Path(arg), False, "ray"),
               "cluster": lambda: child_cluster(Path(arg), int(args.child[2])),
               "cluster-ray": lambda: child_cluster_ray(Path(arg), int(args.child[2])),
               "hash": lambda: child_hash(int(arg)),
               "hash-clusters": lambda: child_hash_clusters(Path(arg), float(args.child[2])),
               "curate": lambda: child_curate(Path(arg), False), "curate-whole": lambda: child_curate(Path(arg), True),
               "curate-dry": lambda: child_curate(Path(arg), False, True),
               "rebalance": lambda: child_order(Path(arg), "rebalance"), "sequence": lambda: child_order(Path(arg), "sequence"),
               "dedup": lambda: child_dedup(Path(arg))}[kind]()
        print(json.dumps(res))
        return

    print(f"bench_scale: {platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} cores, "
          f"{os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / 2**30:.0f} GiB")
    args.dir.mkdir(parents=True, exist_ok=True)
    kinds = ("semantic", "semantic-ray", "cluster", "cluster-ray", "hash", "hash-clusters", "curate", "curate-dry",
             "rebalance", "sequence", "dedup")
    results: dict[str, dict[int, dict]] = {k: {} for k in ("semantic-whole", "curate-whole", *kinds)}
    for n in args.sizes:
        print(f"\nN = {n:,}", flush=True)
        path = args.dir / f"vectors-{n}.lance"
        if {"semantic", "semantic-ray", "cluster", "cluster-ray", "hash-clusters"} & set(args.only):
            make_dataset(path, n)
        if "semantic" in args.only:
            if n == args.sizes[0]:
                r = results["semantic-whole"][n] = run_child(["semantic-whole", str(path)])
                print(f"  semantic, whole column (before)  {r['seconds']:7.1f} s  peak {r['peak_mb']:6.0f} MiB  "
                      f"pairs {r['pairs']:,}  recall {r['recall']:.4f} ({r['missed']} of {r['true_pairs']} missed)", flush=True)
            r = results["semantic"][n] = run_child(["semantic", str(path)])
            print(f"  semantic, streamed               {r['seconds']:7.1f} s  peak {r['peak_mb']:6.0f} MiB  "
                  f"pairs {r['pairs']:,}  recall {r['recall']:.4f} ({r['missed']} of {r['true_pairs']} missed)", flush=True)
        if "semantic-ray" in args.only:
            r = results["semantic-ray"][n] = run_child(["semantic-ray", str(path)])
            print(f"  semantic, Ray tasks              {r['seconds']:7.1f} s  peak {r['peak_mb']:6.0f} MiB  "
                  f"pairs {r['pairs']:,}  recall {r['recall']:.4f} ({r['missed']} of {r['true_pairs']} missed)", flush=True)
        if "cluster" in args.only:
            r = results["cluster"][n] = run_child(["cluster", str(path), str(args.k)])
            print(f"  cluster k={r['k']}, streamed         {r['seconds']:7.1f} s  peak {r['peak_mb']:6.0f} MiB  "
                  f"(fit {r['fit_seconds']:.1f} s; largest concept {r['largest']:,}, empty {r['empty']})", flush=True)
        if "cluster-ray" in args.only:
            r = results["cluster-ray"][n] = run_child(["cluster-ray", str(path), str(args.k)])
            print(f"  cluster k={r['k']}, Ray tasks        {r['seconds']:7.1f} s  peak {r['peak_mb']:6.0f} MiB  "
                  f"(fit {r['fit_seconds']:.1f} s; {r['tasks']} tasks, largest worker peak {r['worker_peak_mb']:.0f} MiB)",
                  flush=True)
        if "hash" in args.only:
            r = results["hash"][n] = run_child(["hash", str(n)])
            print(f"  hash search                      {r['seconds']:7.1f} s  peak {r['peak_mb']:6.0f} MiB  "
                  f"pairs {r['pairs']:,}  recall {r['recall']:.4f} ({r['missed']} of {r['true_pairs']} missed)", flush=True)
        if "hash-clusters" in args.only:
            r = results["hash-clusters"][n] = run_child(["hash-clusters", str(path), str(args.hash_cosine)])
            print(f"  hash search in clusters          {r['seconds']:7.1f} s  peak {r['peak_mb']:6.0f} MiB  "
                  f"pairs {r['pairs']:,}  recall {r['recall']:.4f} of pairs within cosine {r['cosine']} "
                  f"({r['missed']} of {r['true_pairs']} missed); far collisions found {r['far_found']} of {r['far_pairs']}",
                  flush=True)
        if "curate" in args.only:
            make_pairs_lake(args.dir / f"pairs-{n}", n)
            runs = (["curate-whole"] if n == args.sizes[0] else []) + ["curate", "curate-dry"]
            for kind in runs:
                r = results[kind][n] = run_child([kind, str(args.dir / f"pairs-{n}")])
                what = {"curate-whole": "curate, whole frame (before)    ", "curate": "curate, a fragment at a time    ",
                        "curate-dry": "curate --dry-run, by fragment   "}[kind]
                print(f"  {what} {r['seconds']:7.1f} s  peak {r['peak_mb']:6.0f} MiB  rows {r['rows']:,}  kept {r['kept']:,}",
                      flush=True)
        for kind in ("rebalance", "sequence"):
            if kind in args.only:
                make_pairs_lake(args.dir / f"pairs-{n}", n)
                add_concepts(args.dir / f"pairs-{n}")
                r = results[kind][n] = run_child([kind, str(args.dir / f"pairs-{n}")])
                print(f"  {kind + ', every row':31s}  {r['seconds']:7.1f} s  peak {r['peak_mb']:6.0f} MiB  rows {r['rows']:,}",
                      flush=True)

        if "dedup" in args.only:
            make_pairs_lake(args.dir / f"pairs-{n}", n)
            r = results["dedup"][n] = run_child(["dedup", str(args.dir / f"pairs-{n}")])
            print(f"  dedup exact (+ stored minhash)   {r['seconds']:7.1f} s  peak {r['peak_mb']:6.0f} MiB  rows {r['rows']:,}  "
                  f"kept {r['kept']:,}", flush=True)

    base = args.sizes[0]
    print(f"\nratios against N = {base:,} (same run):")
    for kind in kinds:
        for n in args.sizes[1:]:
            if n in results[kind] and base in results[kind]:
                a, b = results[kind][base], results[kind][n]
                print(f"  {kind:9s} N = {n:>11,}: peak memory {b['peak_mb'] / a['peak_mb']:.2f}x   "
                      f"time per row {(b['seconds'] / n) / (a['seconds'] / base):.2f}x")
    if base in results["curate-whole"] and base in results["curate"]:
        a, b = results["curate-whole"][base], results["curate"][base]
        print(f"  curate a fragment at a time / whole frame at N = {base:,}: peak memory {b['peak_mb'] / a['peak_mb']:.2f}x   "
              f"time {b['seconds'] / a['seconds']:.2f}x (the whole frame does not write)")
    if base in results["semantic-whole"] and base in results["semantic"]:
        a, b = results["semantic-whole"][base], results["semantic"][base]
        print(f"  streamed / whole column at N = {base:,}: peak memory {b['peak_mb'] / a['peak_mb']:.2f}x   "
              f"time {b['seconds'] / a['seconds']:.2f}x")


if __name__ == "__main__":
    main()
