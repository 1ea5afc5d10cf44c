"""Whole-column statistics of a column read a chunk at a time (a fragment, a batch), in bounded
memory: what a stage that decides a fragment at a time needs from every row first.

``chunks`` is a callable returning a fresh iterable of numpy arrays each time: a statistic may
read the column more than once (a pass per 16 bits of the values' order, at most 5 passes).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

Chunks = Callable[[], Iterable[np.ndarray]]

_DIGIT = 16  # bits of the order key one pass resolves
_COLLECT = 1 << 22  # candidates kept in memory and sorted, at most (32 MiB of keys)
_SIGN = np.uint64(1 << 63)


def _keys(v: np.ndarray) -> np.ndarray:
    """float64 -> uint64 in the same order (NaN left out before): negative values' bits inverted,
    positive ones' sign bit set."""
    b = np.ascontiguousarray(v, np.float64).view(np.uint64)
    return np.where(b >> np.uint64(63) != 0, ~b, b | _SIGN)


def _value(key: int) -> float:
    k = np.uint64(key)
    b = k & ~_SIGN if k & _SIGN else ~k
    return float(np.array([b], np.uint64).view(np.float64)[0])


def _finite_keys(chunk: np.ndarray) -> np.ndarray:
    v = np.asarray(chunk, np.float64).ravel()
    return _keys(v[~np.isnan(v)])


def order_statistics(chunks: Chunks, ranks: Iterable[int], *, first: tuple[int, np.ndarray] | None = None,
                     collect: int | None = None) -> list[float]:
    """The ``ranks``-th smallest values (0-based) among the non-NaN values of ``chunks``: a radix
    select on order-preserving 64-bit keys, 16 bits a pass, until a rank's candidates number at most
    ``collect``; those are kept and partitioned. ``first``: (count, histogram of the top 16 bits),
    when a pass has made it already (:func:`nanpercentile`).

    >>> order_statistics(lambda: [np.array([5.0, np.nan, 1.0]), np.array([3.0])], [0, 2])
    [1.0, 5.0]
    """
    collect = collect or _COLLECT
    n, hist = first if first is not None else _first_pass(chunks)
    state = []  # per rank: [bits fixed, prefix, rank among keys with that prefix, their count]
    for r in ranks:
        if not 0 <= r < n:
            raise ValueError(f"rank {r} is outside the {n} values")
        state.append([0, 0, int(r), n])
    for s in state:  # the first pass's histogram narrows every rank at once
        _narrow(s, hist, collect)
    out: list[float | None] = [None] * len(state)
    while any(o is None for o in out):
        todo = [i for i, o in enumerate(out) if o is None]
        hists = {i: np.zeros(1 << _DIGIT, np.int64) for i in todo if state[i][3] > collect and state[i][0] < 64}
        kept: dict[int, list[np.ndarray]] = {i: [] for i in todo if i not in hists}
        for i in list(kept):
            if state[i][0] >= 64:  # every bit fixed: the key is the value
                out[i] = _value(state[i][1])
                del kept[i]
        if not hists and not kept:
            continue
        for chunk in chunks():
            k = _finite_keys(chunk)
            for i in (*hists, *kept):
                fixed, prefix = state[i][0], state[i][1]
                sub = k[(k >> np.uint64(64 - fixed)) == np.uint64(prefix)] if fixed else k
                if i in hists:
                    hists[i] += np.bincount(((sub >> np.uint64(64 - fixed - _DIGIT)) & np.uint64((1 << _DIGIT) - 1))
                                            .astype(np.int64), minlength=1 << _DIGIT)
                else:
                    kept[i].append(sub)
        for i, h in hists.items():
            _narrow(state[i], h, collect)
        for i, parts in kept.items():
            sub = np.concatenate(parts) if parts else np.empty(0, np.uint64)
            r = state[i][2]
            out[i] = _value(int(np.partition(sub, r)[r]))
    return [float(o) for o in out]  # type: ignore[arg-type]


def _first_pass(chunks: Chunks) -> tuple[int, np.ndarray]:
    hist = np.zeros(1 << _DIGIT, np.int64)
    for chunk in chunks():
        hist += np.bincount((_finite_keys(chunk) >> np.uint64(64 - _DIGIT)).astype(np.int64), minlength=1 << _DIGIT)
    return int(hist.sum()), hist


def _narrow(s: list[int], hist: np.ndarray, collect: int) -> None:
    """Fix the next 16 bits of a rank's key from the histogram of its prefix's keys."""
    if s[3] <= collect or s[0] >= 64:
        return
    cum = np.cumsum(hist)
    digit = int(np.searchsorted(cum, s[2], side="right"))
    s[2] -= int(cum[digit - 1]) if digit else 0
    s[0], s[1], s[3] = s[0] + _DIGIT, (s[1] << _DIGIT) | digit, int(hist[digit])


def nanpercentile(chunks: Chunks, q: float) -> float:
    """``np.nanpercentile`` (linear interpolation) of the values of ``chunks``, equal to it bit for
    bit, without holding the column: NaN when every value is NaN.

    >>> x = np.random.default_rng(0).standard_normal(1000)
    >>> nanpercentile(lambda: np.array_split(x, 7), 30) == np.nanpercentile(x, 30)
    True
    """
    n, hist = _first_pass(chunks)
    if n == 0:
        return float("nan")
    # numpy's "linear" method: virtual index (n - 1) q, its floor and the next, gamma, its _lerp
    virtual = (n - 1) * np.true_divide(q, 100)
    if virtual >= n - 1:
        lo = hi = n - 1
    elif virtual < 0:
        lo = hi = 0
    else:
        lo = int(np.floor(virtual))
        hi = lo + 1
    gamma = np.float64(virtual - np.floor(virtual)) if lo != hi else np.float64(0.0)
    a, b = (np.float64(v) for v in order_statistics(chunks, sorted({lo, hi}), first=(n, hist)) * (2 if lo == hi else 1))
    with np.errstate(invalid="ignore"):  # -inf and inf: NaN, as numpy's
        diff = b - a
        return float(b - diff * (1 - gamma) if gamma >= 0.5 else a + diff * gamma)


_SPILL_KEYS = 1 << 20  # keys gathered in memory before they go to their partitions' files
_PARTITIONS = 256


def frequent_keys(chunks: Callable[[], Iterable[np.ndarray]], more_than: int, *, spill_dir: str | None = None) -> np.ndarray:
    """The distinct uint64 keys of ``chunks`` occurring more than ``more_than`` times, sorted, in
    bounded memory: keys are gathered up to _SPILL_KEYS, then appended to one of 256 files by their
    top 8 bits (a hash partition under ``spill_dir``, a temporary folder by default) and each
    partition is counted alone. Fewer keys than that are counted in memory, no file written.

    >>> frequent_keys(lambda: [np.array([3, 1, 3], np.uint64), np.array([3, 2, 1], np.uint64)], 1).tolist()
    [1, 3]
    """
    import os
    import tempfile

    pending: list[np.ndarray] = []
    held = 0
    folder = None
    try:
        for chunk in chunks():
            pending.append(np.asarray(chunk, np.uint64))
            held += len(chunk)
            if held >= _SPILL_KEYS:
                folder = folder or tempfile.mkdtemp(prefix="lakecurate-counts-", dir=spill_dir)
                _spill(np.concatenate(pending), folder)
                pending, held = [], 0
        if folder is None:  # all in memory
            return _frequent(np.concatenate(pending) if pending else np.empty(0, np.uint64), more_than)
        if pending:
            _spill(np.concatenate(pending), folder)
        out = []
        for p in range(_PARTITIONS):
            path = os.path.join(folder, f"{p:03d}.u64")
            if os.path.exists(path):
                out.append(_frequent(np.fromfile(path, np.uint64), more_than))
        return np.concatenate(out) if out else np.empty(0, np.uint64)  # partitions in key order: sorted
    finally:
        if folder is not None:
            import shutil

            shutil.rmtree(folder, ignore_errors=True)


def _spill(keys: np.ndarray, folder: str) -> None:
    import os

    part = (keys >> np.uint64(64 - 8)).astype(np.int64)
    order = np.argsort(part, kind="stable")
    keys, part = keys[order], part[order]
    cuts = np.searchsorted(part, np.arange(_PARTITIONS + 1))
    for p in range(_PARTITIONS):
        if cuts[p + 1] > cuts[p]:
            with open(os.path.join(folder, f"{p:03d}.u64"), "ab") as f:
                f.write(keys[cuts[p]: cuts[p + 1]].tobytes())


def _frequent(keys: np.ndarray, more_than: int) -> np.ndarray:
    values, counts = np.unique(keys, return_counts=True)
    return values[counts > more_than]
