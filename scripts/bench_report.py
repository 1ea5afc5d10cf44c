"""The report on large lakes: wall time and memory grow far slower than the lake.

Builds synthetic lakes of N rows (small real JPEGs, captions, 1% bad inputs) and gives them the
decision columns every stage writes (an alignment score, duplicate groups, a recipe's keep and
drop_reason, concepts and rebalancing), each declared with provenance as the stages do. Then, in
the same run and on the same lake, it times:

- ``report``: ``lake.report(...)`` with its defaults (plots from a 100k-row sample, ~100 thumbnails);
- ``naive``: the baseline a report that loads everything would start from, reading every
  non-image column of the lake into pandas (``lake.to_pandas()``), before any plotting.

and prints report/naive and how each grows with N, plus peak memory above the start of each step.

    python scripts/bench_report.py --n 10000 100000 1000000
"""

from __future__ import annotations

import argparse
import hashlib
import io
import shutil
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image

from _measure import PeakRSS  # scripts/ is on sys.path when a script runs

from lakecurate import Lake, columns
from lakecurate.schema import PAIRS_SCHEMA

WORDS = "a the dog cat man woman child ball grass street red blue running sitting beach snow water bike".split()


def jpegs(n: int, seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        base = rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)
        im = Image.fromarray(base).resize((96, 64), Image.BILINEAR)
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=80)
        out.append(buf.getvalue())
    return out


def build(path: Path, n: int, seed: int = 0, chunk: int = 100_000) -> Lake:
    lake = Lake.create(path)
    rng = np.random.default_rng(seed)
    pool = jpegs(500, seed)
    now = datetime.now(timezone.utc)
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        pick = rng.integers(0, len(pool), m)
        imgs = [pool[i] for i in pick]
        bad = rng.random(m) < 0.01
        words = rng.integers(0, len(WORDS), (m, 12))
        lens = rng.integers(2, 13, m)
        caps = [" ".join(WORDS[w] for w in words[i, : lens[i]]) for i in range(m)]
        w = rng.integers(64, 2048, m).astype(np.int32)
        lake.append(pa.table({
            "id": [f"{s + i:016x}" for i in range(m)],
            "image": pa.array([None if b else im for b, im in zip(bad, imgs)], pa.large_binary()),
            "caption": caps,
            "source": ["synthetic"] * m,
            "key": [f"{s + i:08d}.jpg" for i in range(m)],
            "image_uri": [f"synthetic/{s + i:08d}.jpg" for i in range(m)],
            "width": w, "height": (w * rng.uniform(0.5, 1.5, m)).astype(np.int32),
            "format": ["JPEG"] * m, "mode": ["RGB"] * m,
            "byte_size": np.array([len(x) for x in imgs], np.int64),
            "content_hash": [hashlib.sha256(pool[i]).hexdigest() for i in pick],
            "meta": [None] * m,
            "ingest_status": np.where(bad, "error", "ok").tolist(),
            "ingest_flags": [["image_corrupt"] if b else [] for b in bad],
            "ingest_error": [("the image header or data is corrupt" if b else None) for b in bad],
            "ingested_at": pa.array([now] * m, pa.timestamp("us", tz="UTC")),
        }, schema=PAIRS_SCHEMA))
    decide(lake, rng)
    return lake


def decide(lake: Lake, rng: np.random.Generator) -> None:
    """The columns the stages write, with plausible values and the stages' provenance."""
    ds = lake.dataset()
    tbl = ds.to_table(columns=["id", "ingest_status"], with_row_address=True)
    n = tbl.num_rows
    ids = np.array(tbl.column("id").to_pylist())
    ok = np.array(tbl.column("ingest_status").to_pylist()) != "error"
    score = np.where(ok, rng.normal(0.28, 0.05, n), np.nan).astype(np.float32)
    group = ids.copy()
    dup = rng.random(n) < 0.1  # a tenth are copies of an earlier row
    group[dup] = ids[rng.integers(0, n, dup.sum())]
    kept_of_group = ids == group
    size = np.unique(group, return_inverse=True, return_counts=True)
    gsize = size[2][size[1]].astype(np.int32)
    reason = np.full(n, None, object)
    reason[~ok] = "ingest_error"
    reason[ok & ~kept_of_group] = "duplicate"
    reason[ok & kept_of_group & (score < 0.22)] = "alignment"
    keep = np.array([r is None for r in reason])
    k = int(max(2, min(4096, round(np.sqrt(n)))))
    concept = np.where(ok, np.minimum(rng.zipf(1.6, n) - 1, k - 1), -1).astype(np.int32)
    rebal = keep & (rng.random(n) < 0.6)
    specs = [
        ("embed", {"family": "bench"}, {"bench_score": pa.array(score, pa.float32(), mask=np.isnan(score))}),
        ("dedup", {"keep_from": ["exact"]}, {
            "dup_group": pa.array(group.tolist()), "dup_group_size": pa.array(gsize),
            "dup_keep": pa.array(kept_of_group), "dup_reason": pa.array([None if kg else f"exact:{g}" for kg, g in zip(kept_of_group, group)], pa.string())}),
        ("curate", {"recipe": {"name": "bench", "steps": [
            {"filter": "ingest_error", "reason": "ingest_error", "params": {}},
            {"filter": "duplicate", "reason": "duplicate", "params": {}},
            {"filter": "alignment", "reason": "alignment", "params": {"min": 0.22, "min_percentile": None}}]}, "hash": "bench"},
         {"keep": pa.array(keep), "drop_reason": pa.array(reason.tolist(), pa.string())}),
        ("concepts", {"embedding": "bench", "k": k}, {
            "concept": pa.array(concept, pa.int32(), mask=concept < 0),
            "concept_dist": pa.array(rng.uniform(0.1, 0.8, n).astype(np.float32), mask=concept < 0)}),
        ("rebalance", {"target": 0.6, "temperature": 0.5, "rule": "far", "where": "keep"}, {
            "rebalance_keep": pa.array(rebal), "repeats": pa.array(np.where(rebal, 1, 0).astype(np.int32), mask=~rebal)}),
    ]
    for stage, config, new in specs:
        prov = columns.provenance(stage, config, ["synthetic"], lake.version)
        columns.declare(lake, [pa.field(name, arr.type) for name, arr in new.items()], prov)
        columns.write_changed(lake, tbl, new)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--dir", type=Path, default=None, help="where to build the lakes (default: a temp dir)")
    args = ap.parse_args()
    root = Path(args.dir or tempfile.mkdtemp(prefix="bench_report_"))
    rows = []
    for n in args.n:
        t0 = time.perf_counter()
        lake = build(root / f"lake{n}", n)
        built = time.perf_counter() - t0
        with PeakRSS() as mem_rep:  # the report first: the baseline's freed memory would hide its peak
            rep = lake.report(root / f"report{n}.html")
        with PeakRSS() as mem_naive:
            t0 = time.perf_counter()
            df = lake.to_pandas()
            naive = time.perf_counter() - t0
        del df
        rows.append((n, built, naive, rep.seconds, mem_naive.extra_mb, mem_rep.extra_mb, rep.bytes, rep.thumbnails, rep.sampled_rows))
        print(f"N={n:>9,}: built in {built:.1f} s; naive load {naive:.2f} s (+{mem_naive.extra_mb:.0f} MB); "
              f"report {rep.seconds:.2f} s (+{mem_rep.extra_mb:.0f} MB), {rep.bytes / 2**10:.0f} KiB, "
              f"{rep.thumbnails} thumbnails, {rep.sampled_rows:,} rows sampled; report/naive {rep.seconds / naive:.2f}",
              flush=True)
        shutil.rmtree(root / f"lake{n}", ignore_errors=True)
    print("\n| rows | naive load (s) | report (s) | report / naive | naive peak MB | report peak MB | file KiB | thumbnails |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for n, _, naive, rep_s, mn, mr, size, th, _ in rows:
        print(f"| {n:,} | {naive:.2f} | {rep_s:.2f} | {rep_s / naive:.2f} | {mn:.0f} | {mr:.0f} | {size / 2**10:.0f} | {th} |")
    if len(rows) > 1:
        (n0, _, nv0, r0, *_), (n1, _, nv1, r1, *_) = rows[0], rows[-1]
        print(f"\nfrom {n0:,} to {n1:,} rows ({n1 / n0:.0f}x): naive load x{nv1 / nv0:.1f}, report x{r1 / r0:.1f}")
    if args.dir is None:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
