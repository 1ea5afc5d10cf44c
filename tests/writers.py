"""Writer processes for the shared-table tests: ``python -m tests.writers MODE LAKE ...`` from the repo root.

Each waits until the shared start time in ``LAKE.start`` (so all of them race), then:
- ``features LAKE I``: adds the two features ``f{I}a`` and ``f{I}b`` (``scaled_len`` with k = 10*I+1, 10*I+2);
- ``append LAKE START ROUNDS N``: appends ROUNDS batches of N synthetic rows, ids from START;
- ``compact LAKE ROUNDS``: compacts the lake ROUNDS times, 0.4 s apart;
- ``create LAKE I``: creates the lake (it has none yet) and appends 10 rows, ids from 10 * I;
- ``side LAKE I``: appends the row ``x = I`` to the side table ``race_side``, and records an
  evaluation ``e{I}`` (both first writes of their tables when the lake has neither);
- ``ingest-slow LAKE SRC`` / ``embed-slow LAKE``: ingest or embed with a sleep per row / batch, so a
  SIGKILL lands mid-run (the kill -9 tests of test_ingest and test_embed).

``spawn`` starts one; ``kill_9_when`` kills it once a condition on the lake holds.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa

from lakecurate import Lake

from .conftest import REPO, pair_rows


def scaled_len(batch: pa.RecordBatch, k: int = 1, delay: float = 0.0) -> pa.Array:
    """len(caption) * k (null caption: null); ``delay`` seconds per batch stands in for real work."""
    time.sleep(delay)
    return pa.array([None if c is None else len(c) * k for c in batch["caption"].to_pylist()], pa.int64())


def expected(caption: str | None, k: int) -> int | None:
    return None if caption is None else len(caption) * k


def feature_specs(i: int) -> list[tuple[str, int]]:
    return [(f"f{i}a", 10 * i + 1), (f"f{i}b", 10 * i + 2)]


def add_features(lake: Lake, i: int, delay: float, batch_size: int = 20, recompute: bool = False) -> None:
    for name, k in feature_specs(i):
        lake.add_feature(name, scaled_len, inputs=["caption"], type="int64", params={"k": k, "delay": delay},
                         batch_size=batch_size, recompute=recompute, progress=False)


def spawn(*args: str) -> subprocess.Popen:
    """``python -m tests.writers ARGS`` from the repo root, its output captured."""
    return subprocess.Popen([sys.executable, "-m", "tests.writers", *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def kill_9_when(proc: subprocess.Popen, ready: Callable[[], bool], timeout: float = 90) -> None:
    """SIGKILL ``proc`` as soon as ``ready()`` (polled every 50 ms), or at ``timeout``."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not ready():
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()


def _slow_ingest(uri: str, src: str) -> None:
    import lakecurate.ingest as ing

    real = ing.make_row

    def slow(c, o, now):  # type: ignore[no-untyped-def]
        time.sleep(0.02)
        return real(c, o, now)

    ing.make_row = slow
    Lake.create(uri).ingest(src, options=ing.IngestOptions(batch_rows=5, commit_rows=10, workers=2), progress=False)


def _slow_embed(uri: str) -> None:
    import lakecurate.embed as emb

    real = emb.start_embed

    def slow(enc, item, dim):  # type: ignore[no-untyped-def]
        time.sleep(0.3)
        return real(enc, item, dim)

    emb.start_embed = slow
    Lake.open(uri).embed("tiny-random", workers=0, batch_size=4, progress=False)


def record_evaluation(lake: Lake, eval_id: str) -> None:
    """One evaluation's rows (2 arms, 1 seed), as evaluate records them."""
    from lakecurate.evaluate import METRICS, EvalResult, record_result

    res = EvalResult(lake=lake.uri, version=1, view="keep", baseline="all", embedding="e", eval_set="s", eval_images=2,
                     eval_captions=2, rows={"view": 2, "all": 3}, pool_rows=3, steps=3, seeds=[0], eval_id=eval_id,
                     metrics={"view": {k: [0.5] for k in METRICS}, "all": {k: [0.4] for k in METRICS}}, baselines=["all"])
    record_result(lake, res, None)


def _wait(uri: str) -> None:
    start = Path(uri + ".start")
    if start.exists():
        time.sleep(max(0.0, float(start.read_text()) - time.time()))


def main(argv: list[str]) -> None:
    mode, uri = argv[0], argv[1]
    if mode == "ingest-slow":
        return _slow_ingest(uri, argv[2])
    if mode == "create":  # two first ingests into one new lake
        _wait(uri)
        Lake.create(uri).append(pair_rows(10 * int(argv[2]), 10))
        return
    lake = Lake.open(uri)
    if mode == "embed-slow":
        return _slow_embed(uri)
    _wait(uri)
    if mode == "features":
        add_features(lake, int(argv[2]), float(argv[3]) if len(argv) > 3 else 0.01)
    elif mode == "append":
        start, rounds, n = (int(a) for a in argv[2:5])
        for r in range(rounds):
            lake.append(pair_rows(start + r * n, n))
            time.sleep(0.05)
    elif mode == "side":
        i = int(argv[2])
        lake.write_side("race_side", pa.table({"x": [i]}))
        record_evaluation(lake, f"e{i}")
    elif mode == "compact":
        for _ in range(int(argv[2])):
            time.sleep(0.4)
            lake.compact()
    else:
        raise SystemExit(f"unknown mode {mode}")
    from lakecurate.lake import CONFLICTS_RETRIED

    print(f"conflicts retried: {CONFLICTS_RETRIED[0]}")


if __name__ == "__main__":  # run as `python -m tests.writers`: use the importable module's functions
    from tests.writers import main as entry

    entry(sys.argv[1:])
