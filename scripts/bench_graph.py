"""What knowing staleness costs: reading the stage graph from the commit log, versus the work it guards.

In one run, on a lake of N synthetic rows appended in F commits (F fragments), with a user feature
filled per fragment (F more commits), then curated R times with alternating recipes (each a new
decision: about 2 R more commits):

1. `graph.states` on a cold cache (every version's transaction and fragment list read once);
2. the same on a warm cache (what the second question about one version costs);
3. the same one commit later (a stage asking after each of its commits: the commits read before
   are kept per process, only the new one is read);
4. baseline: `export` of the curated rows to Parquet (images included), which calls the check once.

Printed: versions, fragments, the seconds of each, and cold graph / export as a ratio.

    python scripts/bench_graph.py [--rows 20000] [--fragments 100] [--rewrites 20]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pyarrow.compute as pc

from lakecurate import Lake, graph
from lakecurate.plant import synthetic_pairs


def cap_len(batch):
    return pc.utf8_length(batch["caption"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--fragments", type=int, default=100)
    ap.add_argument("--rewrites", type=int, default=20)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        lake = Lake.create(Path(tmp) / "lake")
        per = args.rows // args.fragments
        for i in range(args.fragments):
            lake.append(synthetic_pairs(i * per, per))
        lake.add_feature("cap_len", cap_len, inputs=["caption"], type="int32", progress=False)
        for r in range(args.rewrites):
            lake.curate({"name": f"r{r}", "step": [{"filter": "ingest_error"},
                                                   {"filter": "caption_length", "min_words": 1 + r % 3, "max_words": 100}]},
                        progress=False)
        ds = lake.dataset()
        graph._WRITES.clear()
        graph._COMMITS.clear()
        t = time.perf_counter()
        states = graph.states(lake, ds)
        cold = time.perf_counter() - t
        t = time.perf_counter()
        graph.states(lake, ds)
        warm = time.perf_counter() - t
        graph._WRITES.clear()
        graph._COMMITS.clear()
        t = time.perf_counter()
        rep = lake.export(Path(tmp) / "out.parquet", "parquet")
        export = time.perf_counter() - t
        lake.append(synthetic_pairs(args.rows, 1))
        t = time.perf_counter()
        graph.states(lake)
        later = time.perf_counter() - t
        print(f"lake: {ds.count_rows()} rows, {len(ds.get_fragments())} fragments, {len(ds.versions())} versions, "
              f"{len(states)} stage nodes ({', '.join(sorted({s.state for s in states}))})")
        print(f"graph.states cold: {cold:.3f} s; warm: {warm:.3f} s; one commit later: {later:.3f} s")
        print(f"export of {rep.rows} rows to Parquet (check included): {export:.3f} s")
        print(f"cold graph / export: {cold / export:.3f}")


if __name__ == "__main__":
    main()
