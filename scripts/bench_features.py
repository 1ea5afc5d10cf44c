"""User-defined features on a shared lake: what the lake machinery costs, what Ray and parallel
writers buy. All ratios are against baselines measured in the same run on the same lake.

- ``bare``: the feature function over every caption already in memory (no lake, no commits);
- ``local``: ``lake.add_feature(..., engine="local")``: read per fragment, compute, commit each
  fragment (DataReplacement) -> local/bare is the machinery's overhead;
- ``ray``: the same with ``engine="ray"`` on a local Ray (``--ray-cpus``; Ray's start-up timed
  apart) -> local/ray is the speed-up;
- ``sequential``: ``--writers`` features added one after another in one process, vs
  ``concurrent``: ``--writers`` processes each adding one of them at the same time, racing on the
  same table (conflicts retried) -> sequential/concurrent.

    python scripts/bench_features.py --n 20000 --fragments 16 --work 200
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa

from lakecurate import Lake
from lakecurate.plant import synthetic_pairs


def digest(batch: pa.RecordBatch, work: int = 200) -> pa.Array:
    """A CPU-bound feature: the first 8 bytes of sha256 iterated ``work`` times over the caption."""
    out = []
    for c in batch["caption"].to_pylist():
        h = (c or "").encode()
        for _ in range(work):
            h = hashlib.sha256(h).digest()
        out.append(int.from_bytes(h[:8], "little", signed=True))
    return pa.array(out, pa.int64())


CHILD = """
import sys, time
sys.path.insert(0, {scripts!r})
from bench_features import digest
from lakecurate import Lake
lake = Lake.open(sys.argv[1]); time.sleep(max(0, float(sys.argv[3]) - time.time()))
lake.add_feature(sys.argv[2], digest, inputs=["caption"], type="int64", params={{"work": int(sys.argv[4])}}, progress=False)
"""


def build(root: Path, n: int, fragments: int) -> Lake:
    lake = Lake.create(root)
    per = n // fragments
    for f in range(fragments):
        lake.append(synthetic_pairs(f * per, per))
    return lake


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--fragments", type=int, default=16)
    ap.add_argument("--work", type=int, default=200, help="sha256 rounds per caption (the feature's cost)")
    ap.add_argument("--writers", type=int, default=4)
    ap.add_argument("--ray-cpus", type=int, default=2)
    ap.add_argument("--local-only", action="store_true", help="only bare vs local, --repeat times (the overhead alone)")
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    params = {"work": args.work}
    with tempfile.TemporaryDirectory() as tmp:
        lake = build(Path(tmp) / "lake", args.n, args.fragments)
        n = lake.count()
        captions = lake.dataset().to_table(columns=["caption"]).to_batches()
        if args.local_only:
            for i in range(args.repeat):
                t = time.perf_counter()
                for b in captions:
                    digest(b, args.work)
                bare = time.perf_counter() - t
                local = lake.add_feature(f"f{i}", digest, inputs=["caption"], type="int64", params=params,
                                         progress=False).seconds
                print(f"bare {bare:.2f} s, local engine {local:.2f} s, local/bare {local / bare:.3f} (time ratio)")
            return
        t = time.perf_counter()
        for b in captions:
            digest(b, args.work)
        bare = time.perf_counter() - t

        local = lake.add_feature("f_local", digest, inputs=["caption"], type="int64", params=params, progress=False).seconds

        os.environ["LAKECURATE_RAY_CPUS"] = str(args.ray_cpus)
        from lakecurate.engines import ray_init

        t = time.perf_counter()
        ray_init()
        ray_start = time.perf_counter() - t
        rep = lake.add_feature("f_ray", digest, inputs=["caption"], type="int64", params=params, engine="ray", progress=False)
        same = lake.dataset().to_table(columns=["f_local", "f_ray"])
        assert same.column("f_local").equals(same.column("f_ray")), "ray and local values differ"
        ray_s = rep.seconds

        names = [f"w{i}" for i in range(args.writers)]
        seq_lake = build(Path(tmp) / "seq", args.n, args.fragments)
        t = time.perf_counter()
        for name in names:
            seq_lake.add_feature(name, digest, inputs=["caption"], type="int64", params=params, progress=False)
        sequential = time.perf_counter() - t

        con_lake = build(Path(tmp) / "con", args.n, args.fragments)
        code = CHILD.format(scripts=str(Path(__file__).parent))
        go = time.time() + 5.0  # all children imported by then
        procs = [subprocess.Popen([sys.executable, "-c", code, con_lake.uri, name, str(go), str(args.work)]) for name in names]
        assert all(p.wait() == 0 for p in procs), "a concurrent writer failed"
        concurrent = time.time() - go
        ds = con_lake.dataset()
        filled = all(ds.count_rows(filter=f"{name} IS NULL AND caption IS NOT NULL") == 0 for name in names)

    print(f"rows {n}, fragments {args.fragments}, work {args.work} sha256 rounds/caption, cpus {os.cpu_count()}")
    print(f"{'step':<34}{'seconds':>9}{'rows/s':>10}{'ratio':>10}")
    print(f"{'bare function (baseline)':<34}{bare:9.2f}{n / bare:10.0f}{1.0:10.2f}")
    print(f"{'local engine':<34}{local:9.2f}{n / local:10.0f}{local / bare:10.2f}   (local/bare: machinery overhead)")
    print(f"{'ray engine, ' + str(args.ray_cpus) + ' cpus':<34}{ray_s:9.2f}{n / ray_s:10.0f}{local / ray_s:10.2f}   (local/ray: speed-up; ray start {ray_start:.1f} s apart)")
    print(f"{str(args.writers) + ' features, one after another':<34}{sequential:9.2f}{'':>10}{1.0:10.2f}")
    print(f"{str(args.writers) + ' writer processes at once':<34}{concurrent:9.2f}{'':>10}{sequential / concurrent:10.2f}   (sequential/concurrent; every column complete: {filled})")


if __name__ == "__main__":
    main()
