"""What dedup verify's chunks cost beyond the matching itself: reloading features, and the cache index.

verify checks its candidate pairs ``dedup.VERIFY_PAIRS_CHUNK`` at a time, each chunk loading the
features (~45 KiB a row) of the rows in its pairs. In one run, for each size N:

1. **loads**: candidate pairs of a 5-nearest graph (N / 300 topics of random rows; a row's
   partners are random members of its topic, row numbers unrelated to topics, as a lake's are),
   cut into chunks: the rows loaded, summed over the chunks, per row that needs features, with the
   pairs sorted by row (before) and in ``dedup._chunk_order``'s order (now), and the seconds the
   ordering takes;
2. **index**: a keypoint cache table of N rows (``dup_keypoints``, features left null) to which
   each of 20 chunks appends a fragment of 2,000 computed rows: the seconds to bring the
   (row id, hash) -> row index up to date a chunk, read whole by a new ``verify.KeypointCache``
   each time (before) against one cache kept across the chunks that reads only new fragments (now).

    python scripts/bench_verify_chunks.py [--sizes 100000 1000000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa


def index_seconds(n: int, tmp: Path, chunks: int = 20, per_chunk: int = 2000) -> tuple[float, float]:
    from lakecurate import Lake
    from lakecurate.verify import CACHE_TABLE, FIELDS, KeypointCache

    lake = Lake.create(tmp / f"lake-{n}")
    config = KeypointCache(lake).config
    rng = np.random.default_rng(1)

    def rows(m: int) -> pa.Table:
        ids = [f"{x:016x}" for x in rng.integers(0, 2**63, m)]
        return pa.table({"id": ids, "content_hash": [s * 4 for s in ids], "config": [config] * m,
                         **{f.name: pa.nulls(m, f.type) for f in FIELDS}})

    lake.write_side(CACHE_TABLE, rows(n), per_branch=False)
    kept = KeypointCache(lake)
    kept._index(lake.side_dataset(CACHE_TABLE, per_branch=False))  # the first chunk reads it whole either way
    before = now = 0.0
    for _ in range(chunks):
        lake.write_side(CACHE_TABLE, rows(per_chunk), per_branch=False)  # the chunk's computed rows
        ds = lake.side_dataset(CACHE_TABLE, per_branch=False)
        t = time.perf_counter()
        KeypointCache(lake)._index(ds)
        before += time.perf_counter() - t
        t = time.perf_counter()
        got = kept._index(ds)
        now += time.perf_counter() - t
    assert len(got) == n + chunks * per_chunk
    return before / chunks, now / chunks


def main() -> None:
    from lakecurate.dedup import VERIFY_PAIRS_CHUNK, _chunk_order, loads_per_row
    from lakecurate.plant import topic_graph

    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            i, j = topic_graph(n)
            t = time.perf_counter()
            order = _chunk_order(i, j)
            seconds = time.perf_counter() - t
            before, now = loads_per_row(i, j, VERIFY_PAIRS_CHUNK), loads_per_row(i[order], j[order], VERIFY_PAIRS_CHUNK)
            print(f"N = {n:,}: {len(i):,} candidate pairs in {VERIFY_PAIRS_CHUNK:,}-pair chunks")
            print(f"  loads a row: sorted by row {before:.2f}, in _chunk_order {now:.3f} ({before / now:.1f}x fewer); "
                  f"ordering {seconds:.2f} s")
            b, a = index_seconds(n, Path(tmp))
            print(f"  cache index a chunk: read whole {b:.3f} s, kept and topped up {a:.4f} s ({b / max(a, 1e-9):.0f}x)")


if __name__ == "__main__":
    main()
