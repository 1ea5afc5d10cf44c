"""Whole-column statistics over a column read a chunk at a time (lakecurate.stream)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from lakecurate import stream


def _columns():
    rng = np.random.default_rng(7)
    yield "normal", rng.standard_normal(5000)
    yield "scores: float32 in a narrow range", (0.25 + 0.1 * rng.random(20000)).astype(np.float32).astype(np.float64)
    yield "few distinct values", rng.integers(0, 4, 3000).astype(np.float64)
    yield "a third NaN", np.where(rng.random(4000) < 0.3, np.nan, rng.standard_normal(4000))
    yield "signed zeros and ties", np.array([0.3] * 50 + [-0.0, 0.0, -1e-300, 1e-300, -2.5])
    yield "one value", np.array([0.42])
    yield "two values", np.array([1.0, -1.0])
    yield "infinities", np.array([-np.inf, 0.1, 0.2, np.inf, 0.3])


@pytest.mark.parametrize("collect", [3, 1 << 22])  # 3: every rank narrowed pass after pass, to all 64 bits
@pytest.mark.parametrize("name,x", list(_columns()), ids=[n for n, _ in _columns()])
def test_nanpercentile_equals_numpy_bit_for_bit(name, x, collect, monkeypatch):
    monkeypatch.setattr(stream, "_COLLECT", collect)
    reads = []

    def chunks():
        reads.append(1)
        return np.array_split(x, 7)

    for q in (0, 0.1, 10, 30, 33.3, 50, 66.7, 90, 99.99, 100):
        reads.clear()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            want = np.nanpercentile(x, q)
        got = stream.nanpercentile(chunks, q)
        assert np.float64(got).tobytes() == np.float64(want).tobytes() or (np.isnan(got) and np.isnan(want)), (q, got, want)
        assert len(reads) <= 2 + 64 // 16  # a histogram pass, then a pass per 16 bits or a collecting one


def test_order_statistics_and_empty_columns():
    x = np.array([5.0, np.nan, 1.0, 3.0, 3.0])
    assert stream.order_statistics(lambda: [x[:2], x[2:]], [0, 1, 2, 3]) == [1.0, 3.0, 3.0, 5.0]
    with pytest.raises(ValueError, match="rank 4 is outside the 4 values"):
        stream.order_statistics(lambda: [x], [4])
    assert np.isnan(stream.nanpercentile(lambda: [np.array([np.nan]), np.empty(0)], 50))
    assert np.isnan(stream.nanpercentile(lambda: [], 50))


def test_memory_is_bounded_by_the_collect_limit(monkeypatch):
    """Candidates kept in memory never exceed the limit, however many values share a bin."""
    x = (0.3 + 1e-9 * np.random.default_rng(0).random(200_000))  # every value in one top-16-bit bin
    kept = []
    real = np.partition

    def watching(a, k, *args, **kw):
        kept.append(len(a))
        return real(a, k, *args, **kw)

    monkeypatch.setattr(stream.np, "partition", watching)
    got = stream.order_statistics(lambda: np.array_split(x, 5), [123_456], collect=1000)
    assert got == [float(np.sort(x)[123_456])] and max(kept) <= 1000


@pytest.mark.parametrize("spill", [False, True])
def test_frequent_keys_count_exactly_in_memory_or_in_partitions(spill, monkeypatch, tmp_path):
    rng = np.random.default_rng(3)
    keys = rng.integers(0, 2**64, 3000, dtype=np.uint64)
    counts = rng.integers(1, 8, len(keys))
    stream_of = np.repeat(keys, counts)
    rng.shuffle(stream_of)
    if spill:  # every 500 keys go to their partition files
        monkeypatch.setattr(stream, "_SPILL_KEYS", 500)
    spilled, real_spill = [], stream.Partitioned._spill
    monkeypatch.setattr(stream.Partitioned, "_spill", lambda self: spilled.append(self.held) or real_spill(self))
    for more_than in (0, 3, 6, 7):
        got = stream.frequent_keys(lambda: np.array_split(stream_of, 13), more_than, spill_dir=str(tmp_path))
        assert got.tolist() == sorted(keys[counts > more_than].tolist())
        assert list(tmp_path.iterdir()) == []  # the partition files are removed
    assert (sum(spilled) == 4 * len(stream_of)) if spill else not spilled
    assert stream.frequent_keys(lambda: [], 0).tolist() == []


@pytest.mark.parametrize("hold", [None, 50, 7, 1])
def test_partitioned_records_come_back_per_partition_in_the_order_added(hold, tmp_path):
    rng = np.random.default_rng(5)
    rec = np.dtype([("c", np.int32), ("key", np.float64), ("i", np.int64)])
    parts, added = [], []
    with stream.Partitioned(rec, 5, spill_dir=str(tmp_path), hold=hold) as files:
        for lo in range(0, 100, 9):  # chunks of 9 records
            r = np.zeros(min(9, 100 - lo), rec)
            r["c"], r["key"], r["i"] = rng.integers(0, 12, len(r)), rng.random(len(r)), np.arange(lo, lo + len(r))
            files.add(r["c"] % 5, r)
            added.append(r)
        if hold is not None:
            assert len(list(tmp_path.iterdir())) == 1  # spilled to files in one folder
        every = np.concatenate(added)
        assert [files.count(p) for p in range(5)] == np.bincount(every["c"] % 5, minlength=5).tolist()  # pending too
        for p, got in files.partitions():
            parts.append(p)
            every = np.concatenate(added)
            assert got.tolist() == every[every["c"] % 5 == p].tolist()  # in the order added
    assert parts == sorted({int(c) % 5 for c in np.concatenate(added)["c"]})
    assert list(tmp_path.iterdir()) == []  # removed on close


def test_nanpercentiles_of_several_columns_in_the_same_passes(monkeypatch):
    rng = np.random.default_rng(11)
    cols = [rng.standard_normal(3000), np.where(rng.random(3000) < 0.5, np.nan, rng.random(3000)), np.full(3000, np.nan)]
    qs = [[1, 50, 99], [0, 30, 100], [50]]
    monkeypatch.setattr(stream, "_COLLECT", 100)  # several passes
    passes = []

    def chunks():
        passes.append(1)
        return (tuple(c[i: i + 700] for c in cols) for i in range(0, 3000, 700))

    got = stream.nanpercentiles(chunks, qs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        want = [[float(np.nanpercentile(c, q)) for q in q_col] for c, q_col in zip(cols, qs)]
    assert np.array_equal(np.array(got[0] + got[1]), np.array(want[0] + want[1])) and np.isnan(got[2][0])
    assert len(passes) <= 2 + 64 // 16  # not a pass per column or per percentile


@pytest.mark.parametrize("kind", ["uniform", "ties", "one key", "floats"])
@pytest.mark.parametrize("hold", [10_000, 300, 40])
def test_sorted_records_equal_one_stable_sort(kind, hold, tmp_path):
    """The external radix sort gives every record once, by key, equal keys in arrival order: in
    memory, by partitions, by partitions of partitions (a heavy key: one partition of one key)."""
    rng = np.random.default_rng(len(kind) + hold)
    n = 5000
    keys = {"uniform": rng.integers(0, 2**64, n, dtype=np.uint64),
            "ties": rng.integers(0, 30, n).astype(np.uint64) << np.uint64(rng.integers(0, 60)),
            "one key": np.where(rng.random(n) < 0.9, np.uint64(7 << 40), rng.integers(0, 2**64, n, dtype=np.uint64)),
            "floats": stream.order_keys(np.round(rng.normal(0.3, 0.05, n), 3))}[kind]
    rec = np.dtype([("key", np.uint64), ("at", np.int64)])
    x = np.zeros(n, rec)
    x["key"], x["at"] = keys, np.arange(n)
    out = list(stream.sorted_records((x[s: s + 777] for s in range(0, n, 777)), hold=hold, spill_dir=str(tmp_path)))
    got = np.concatenate(out)
    assert got.tolist() == x[np.argsort(keys, kind="stable")].tolist()
    assert max(len(o) for o in out) <= max(hold, n if hold >= n else 0)  # a partition at a time
    assert list(tmp_path.iterdir()) == []
    assert list(stream.sorted_records(iter([]))) == []
