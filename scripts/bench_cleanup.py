"""cleanup's stale check on a lake with many tags: time of `cleanup` against `status` in the same run.

Cleanup refuses while a stage is stale at any version whose commits it would remove the record of: the
latest, the heads of the branches grown from the one cleaned, and their tags (one reading of the graph
each, sharing one listing of each branch's commits). Curate tags every recipe run, so this grows with the tags. A lake of sample_data with --tags
recipe runs (one tag each) is cleaned of every old version (three fresh copies); run it with the code
of two trees (PYTHONPATH) to compare them.

    PYTHONPATH=. python scripts/bench_cleanup.py [--tags 20] [--data sample_data]   # also --tags 100

``--daily``: each recipe run followed by a rebalance, as a daily `lakecurate run` does (curate tags its
result before rebalance re-runs): every tag but the first then reads rebalance stale, and cleanup
records those states before it removes the commits (it refused before). Also timed: status at the
last tag after the cleanup (which reads the record back).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from lakecurate import Lake


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tags", type=int, default=20)
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1] / "sample_data")
    ap.add_argument("--daily", action="store_true", help="a rebalance after each recipe run (stale tags)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        lake = Lake.create(base / "lake")
        lake.ingest(args.data, progress=False)
        lake.embed("tiny-random", workers=0, batch_size=8, progress=False)
        if args.daily:
            lake.cluster(k=3)
        last = ""
        for k in range(args.tags):
            last = lake.curate({"name": f"r{k}", "step": [{"filter": "caption_length", "min_words": k % 5 + 1}]},
                               progress=False).tag
            if args.daily:
                lake.rebalance(0.7)
        print("| run | tags | versions | status s | cleanup s | cleanup / status | tags recorded | status at a tag s |\n"
              "| --- | --- | --- | --- | --- | --- | --- | --- |")
        for run in range(3):
            work = Path(tmp) / f"run{run}"
            shutil.copytree(base, work)
            lake = Lake.open(work / "lake")
            n = len(lake.dataset().versions())
            t0 = time.perf_counter()
            lake.status()
            status = time.perf_counter() - t0
            t0 = time.perf_counter()
            done = lake.cleanup(timedelta(0))
            cleanup = time.perf_counter() - t0
            t0 = time.perf_counter()
            lake.status(version=last)
            at_tag = time.perf_counter() - t0
            print(f"| {run} | {len(lake.dataset().tags.list())} | {n} | {status:.3f} | {cleanup:.3f} | "
                  f"{cleanup / status:.1f}x | {done.get('tags_recorded', '-')} | {at_tag:.3f} |", flush=True)


if __name__ == "__main__":
    main()
