"""The collage rule's cost: dedup.one_region_links over verified links, against the grouping it precedes.

Random verified links (each row in a few, as verify's candidates give) with random inlier boxes; the
rule (``one_region_links``: which links a row holding several pictures keeps) and the connected
components of the same links (``neardup.components``: what dedup does with them next) are timed in
the same run, and their ratio printed.

    python scripts/bench_regions.py [--rows 100000,1000000] [--links-per-row 2]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from lakecurate.dedup import one_region_links
from lakecurate.neardup import components


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", default="100000,1000000")
    ap.add_argument("--links-per-row", type=float, default=2.0)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    print("| rows | verified links | one_region_links s | components s | ratio | links not made |")
    print("| --- | --- | --- | --- | --- | --- |")
    for n in (int(r) for r in args.rows.split(",")):
        m = int(n * args.links_per_row)
        i, j = rng.integers(0, n, m), rng.integers(0, n, m)
        corner = rng.random((2, m, 2)) * 0.5
        side = 0.3 + rng.random((2, m, 2)) * 0.2
        boxes = [list(map(tuple, np.concatenate([corner[k], corner[k] + side[k]], axis=1))) for k in range(2)]
        inliers = rng.integers(20, 200, m)
        t0 = time.perf_counter()
        keep = one_region_links(i, j, boxes[0], boxes[1], inliers)
        rule = time.perf_counter() - t0
        t0 = time.perf_counter()
        components(n, i, j)
        group = time.perf_counter() - t0
        print(f"| {n:,} | {m:,} | {rule:.2f} | {group:.2f} | {rule / group:.0f}x | {int((~keep).sum()):,} |", flush=True)


if __name__ == "__main__":
    main()
