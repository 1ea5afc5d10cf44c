"""cleanup's stale check on a lake with many tags: time of `cleanup` against `status` in the same run.

Cleanup refuses while a stage is stale at any version whose commits it would remove the record of: the
latest, the heads of the branches grown from the one cleaned, and their tags (one reading of the graph
each, sharing one listing of each branch's commits). Curate tags every recipe run, so this grows with the tags. A lake of sample_data with --tags
recipe runs (one tag each) is cleaned of every old version (three fresh copies); run it with the code
of two trees (PYTHONPATH) to compare them.

    PYTHONPATH=. python scripts/bench_cleanup.py [--tags 20] [--data sample_data]   # also --tags 100
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
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        lake = Lake.create(base / "lake")
        lake.ingest(args.data, progress=False)
        lake.embed("tiny-random", workers=0, batch_size=8, progress=False)
        for k in range(args.tags):
            lake.curate({"name": f"r{k}", "step": [{"filter": "caption_length", "min_words": k % 5 + 1}]}, progress=False)
        print("| run | tags | versions | status s | cleanup s | cleanup / status |\n| --- | --- | --- | --- | --- | --- |")
        for run in range(3):
            work = Path(tmp) / f"run{run}"
            shutil.copytree(base, work)
            lake = Lake.open(work / "lake")
            n = len(lake.dataset().versions())
            t0 = time.perf_counter()
            lake.status()
            status = time.perf_counter() - t0
            t0 = time.perf_counter()
            lake.cleanup(timedelta(0))
            cleanup = time.perf_counter() - t0
            print(f"| {run} | {len(lake.dataset().tags.list())} | {n} | {status:.3f} | {cleanup:.3f} | "
                  f"{cleanup / status:.1f}x |", flush=True)


if __name__ == "__main__":
    main()
