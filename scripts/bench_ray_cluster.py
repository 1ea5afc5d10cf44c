"""The pipeline, stage by stage, on a simulated multi-node Ray cluster against the local engine.

Real photos (``../shared/data/flickr8k``: 800 JPEGs and their captions; ``--repeat R`` writes each
photo R times under new keys, with another of its captions, so dedup has exact copies to group;
one run a value of R) are written as WebDataset shards, then each engine runs the same pipeline
into a lake of its own:
ingest, signals (image and caption), embed (the offline encoder), dedup (the default methods),
curate (``basic``), cluster, rebalance, sequence and export (WebDataset). The cluster is
``ray.cluster_utils.Cluster`` on this machine: a head and ``--nodes - 1`` workers of
``--cpus`` CPUs each, separate raylets and object stores, as the multi-node tests use
(``tests/test_ray_cluster.py``).

What it measures is the **cost of distributing** each stage (task and actor start-up, a model
loaded per actor, reads and commits per task, objects moved between raylets), not a speed-up:
every node here shares the same 2 cores. Each line prints rows/s on both engines and the time on
Ray against the local engine's, measured in the same run, and checks that both engines kept the
same number of rows at each decision. With two or more sizes, each stage's time is then split
into a fixed part and a part a row (from the smallest and the largest run): what a capacity plan
needs, since the fixed part is paid once a stage, not once a row.

    python scripts/bench_ray_cluster.py [--repeat 1 8] [--nodes 3] [--cpus 1] [--shards 8]
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import tarfile
import tempfile
import time
from collections import defaultdict
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "flickr8k"
_NOISE_S = 1.0  # a stage whose time grows less than this from the smallest run to the largest is not split


def write_shards(data: Path, out: Path, repeat: int, shards: int) -> int:
    """The photos as ``shards`` WebDataset tars (each photo ``repeat`` times); the rows written."""
    captions: dict[str, list[str]] = defaultdict(list)
    with open(data / "captions.csv", newline="") as f:
        for row in csv.DictReader(f):
            captions[row["image"]].append(row["caption"])
    photos = sorted((data / "images").glob("*.jpg"))
    if not photos:
        raise SystemExit(f"no photos under {data / 'images'}: pass --data")
    samples = [(f"{p.stem}-{r}", p.read_bytes(), (captions[p.name] or [""])[r % max(1, len(captions[p.name]))])
               for r in range(repeat) for p in photos]
    out.mkdir(parents=True, exist_ok=True)
    for s in range(shards):
        with tarfile.open(out / f"shard-{s:03d}.tar", "w") as tar:
            for key, image, caption in samples[s::shards]:
                for name, blob in ((f"{key}.jpg", image), (f"{key}.txt", caption.encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(blob)
                    tar.addfile(info, io.BytesIO(blob))
    return len(samples)


def run_pipeline(root: Path, shards: Path, engine: str, k: int) -> tuple[dict[str, float], dict[str, int]]:
    """Each stage's seconds on ``engine``, and the rows kept at each decision."""
    from lakecurate import Lake

    lake = Lake.create(root / engine)
    stages = [
        ("ingest", lambda: lake.ingest(shards, engine=engine, progress=False)),
        ("signals", lambda: lake.signals(["image", "caption"], engine=engine, progress=False)),
        ("embed", lambda: lake.embed("offline", engine=engine, progress=False)),
        ("dedup", lambda: lake.dedup(engine=engine, progress=False)),
        ("curate", lambda: lake.curate("basic", engine=engine)),
        ("cluster", lambda: lake.cluster(k=k, engine=engine)),
        ("rebalance", lambda: lake.rebalance(0.6, engine=engine)),
        ("sequence", lambda: lake.sequence()),
        ("export", lambda: lake.export(root / f"{engine}-shards", shard_size=200, engine=engine)),
    ]
    seconds = {}
    for name, call in stages:
        t = time.perf_counter()
        call()
        seconds[name] = time.perf_counter() - t
    kept = lake.sql("SELECT count(*) AS rows, sum(CAST(dup_keep AS INT)) AS dup_keep, sum(CAST(keep AS INT)) AS keep, "
                    "sum(CAST(rebalance_keep AS INT)) AS rebalance_keep FROM pairs")
    return seconds, {c: int(kept[c][0]) for c in kept.columns}


def table(n: int, local: dict[str, float], on_ray: dict[str, float]) -> None:
    print(f"{'stage':<10} {'local':>8} {'rows/s':>8} {'ray':>8} {'rows/s':>8}  ray/local")
    for name in local:
        a, b = local[name], on_ray[name]
        print(f"{name:<10} {a:7.1f}s {n / a:8.0f} {b:7.1f}s {n / b:8.0f}  {b / a:6.2f}x")
    a, b = sum(local.values()), sum(on_ray.values())
    print(f"{'total':<10} {a:7.1f}s {n / a:8.0f} {b:7.1f}s {n / b:8.0f}  {b / a:6.2f}x")


def fitted(runs: list[tuple[int, dict[str, float], dict[str, float]]]) -> None:
    """Each stage's time as fixed + per row, from the smallest and the largest run, both engines."""
    (n1, l1, r1), (n2, l2, r2) = runs[0], runs[-1]
    print(f"\ntime = fixed + per row, from the runs of {n1:,} and {n2:,} pairs:")
    print(f"{'stage':<10} {'local fixed':>12} {'us/row':>8} {'ray fixed':>10} {'us/row':>8}  ray/local a row")
    for name in l1:
        if min(l2[name] - l1[name], r2[name] - r1[name]) < _NOISE_S:
            print(f"{name:<10} {'':>12} {'':>8} {'':>10} {'':>8}  (grew by less than {_NOISE_S:.0f} s on an engine: "
                  f"fixed cost and noise; {l2[name]:.1f} s / {r2[name]:.1f} s at {n2:,})")
            continue
        per_l, per_r = (l2[name] - l1[name]) / (n2 - n1), (r2[name] - r1[name]) / (n2 - n1)
        fix_l, fix_r = l1[name] - per_l * n1, r1[name] - per_r * n1
        print(f"{name:<10} {fix_l:11.1f}s {per_l * 1e6:8.0f} {fix_r:9.1f}s {per_r * 1e6:8.0f}  {per_r / per_l:6.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DATA, help="a folder with images/ and captions.csv (Flickr8k's layout)")
    ap.add_argument("--repeat", type=int, nargs="+", default=[1, 8],
                    help="times each photo is written (exact copies for dedup); one run a value")
    ap.add_argument("--nodes", type=int, default=3, help="raylets of the simulated cluster, the head included")
    ap.add_argument("--cpus", type=int, default=1, help="CPUs each node declares")
    ap.add_argument("--shards", type=int, default=8, help="WebDataset shards written (ingest: a task each)")
    ap.add_argument("--k", type=int, default=16, help="concepts for cluster and rebalance")
    args = ap.parse_args()
    for name in ("nodes", "cpus", "shards", "k"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name} must be at least 1")
    if min(args.repeat) < 1:
        raise SystemExit("--repeat must be at least 1")
    if not (args.data / "captions.csv").exists():
        raise SystemExit(f"no captions.csv under {args.data}: pass --data (a folder with images/ and captions.csv)")

    import warnings

    import ray
    from ray.cluster_utils import Cluster

    warnings.filterwarnings("ignore", message="lance is not fork-safe")  # Ray starts its processes by fork+exec

    from lakecurate.engines import ray_init

    print(f"bench_ray_cluster: {os.uname().machine}, {os.cpu_count()} cores; simulated cluster of "
          f"{args.nodes} nodes x {args.cpus} CPU(s)")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": args.cpus, "include_dashboard": False})
    for _ in range(args.nodes - 1):
        cluster.add_node(num_cpus=args.cpus)
    cluster.wait_for_nodes()
    runs, same = [], True
    try:
        for repeat in sorted(set(args.repeat)):
            with tempfile.TemporaryDirectory(prefix="bench-ray-cluster-") as tmp:
                root = Path(tmp)
                n = write_shards(args.data, root / "in", repeat, args.shards)
                print(f"\n{n:,} pairs in {args.shards} WebDataset shards (each photo {repeat} time(s))")
                os.environ.pop("RAY_ADDRESS", None)
                local, kept_local = run_pipeline(root, root / "in", "local", args.k)
                os.environ["RAY_ADDRESS"] = cluster.address  # what lakecurate's engines connect to
                if not ray.is_initialized():
                    t = time.perf_counter()
                    ray_init()
                    print(f"(connecting the driver to the cluster: {time.perf_counter() - t:.1f} s, not counted)")
                on_ray, kept_ray = run_pipeline(root, root / "in", "ray", args.k)
                table(n, local, on_ray)
                print(f"rows kept (local / ray): {kept_local} / {kept_ray}: "
                      f"{'the same' if kept_local == kept_ray else 'DIFFERENT'}")
                same &= kept_local == kept_ray
                runs.append((n, local, on_ray))
    finally:
        ray.shutdown()
        cluster.shutdown()
    if len(runs) > 1:
        fitted(runs)
    if not same:
        raise SystemExit("the engines kept different rows: see above")


if __name__ == "__main__":
    main()
