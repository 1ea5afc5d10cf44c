"""Writer processes for the shared-table tests: ``python -m tests.writers MODE LAKE ...`` from the repo root.

Each waits until the shared start time in ``LAKE.start`` (so all of them race), then:
- ``features LAKE I``: adds the two features ``f{I}a`` and ``f{I}b`` (``scaled_len`` with k = 10*I+1, 10*I+2);
- ``append LAKE START ROUNDS N``: appends ROUNDS batches of N synthetic rows, ids from START.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pyarrow as pa

from lakecurate import Lake

from .conftest import pair_rows


def scaled_len(batch: pa.RecordBatch, k: int = 1, delay: float = 0.0) -> pa.Array:
    """len(caption) * k (null caption: null); ``delay`` seconds per batch stands in for real work."""
    time.sleep(delay)
    return pa.array([None if c is None else len(c) * k for c in batch["caption"].to_pylist()], pa.int64())


def expected(caption: str | None, k: int) -> int | None:
    return None if caption is None else len(caption) * k


def feature_specs(i: int) -> list[tuple[str, int]]:
    return [(f"f{i}a", 10 * i + 1), (f"f{i}b", 10 * i + 2)]


def add_features(lake: Lake, i: int, delay: float, batch_size: int = 20) -> None:
    for name, k in feature_specs(i):
        lake.add_feature(name, scaled_len, inputs=["caption"], type="int64", params={"k": k, "delay": delay},
                         batch_size=batch_size, progress=False)


def _wait(uri: str) -> None:
    start = Path(uri + ".start")
    if start.exists():
        time.sleep(max(0.0, float(start.read_text()) - time.time()))


def main(argv: list[str]) -> None:
    mode, uri = argv[0], argv[1]
    lake = Lake.open(uri)
    _wait(uri)
    if mode == "features":
        add_features(lake, int(argv[2]), float(argv[3]) if len(argv) > 3 else 0.01)
    elif mode == "append":
        start, rounds, n = (int(a) for a in argv[2:5])
        for r in range(rounds):
            lake.append(pair_rows(start + r * n, n))
            time.sleep(0.05)
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":  # run as `python -m tests.writers`: use the importable module's functions
    from tests.writers import main as entry

    entry(sys.argv[1:])
