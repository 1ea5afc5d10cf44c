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
_COLLECT = 1 << 18  # candidates kept in memory and partitioned, at most (2 MiB of keys a distinct prefix)
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


def order_statistics(chunks: Chunks, ranks: Iterable[int], *, collect: int | None = None) -> list[float]:
    """The ``ranks``-th smallest values (0-based) among the non-NaN values of ``chunks``: a radix
    select on order-preserving 64-bit keys, 16 bits a pass, until a rank's candidates number at most
    ``collect``; those are kept and partitioned.

    >>> order_statistics(lambda: [np.array([5.0, np.nan, 1.0]), np.array([3.0])], [0, 2])
    [1.0, 5.0]
    """
    multi = lambda: ((c,) for c in chunks())  # noqa: E731
    return _select(multi, [(0, r) for r in ranks], None, collect)


def _select(chunks: Callable[[], Iterable[tuple[np.ndarray, ...]]], wanted: list[tuple[int, int]],
            first: list[tuple[int, np.ndarray]] | None, collect: int | None) -> list[float]:
    """:func:`order_statistics` of several columns at once: ``chunks()`` yields a tuple of arrays
    (one a column) per chunk; ``wanted``: (column, rank) pairs; ``first``: each column's count and
    top-16-bit histogram. One pass over the chunks serves every rank still open."""
    collect = collect or _COLLECT
    first = first if first is not None else _first_passes(chunks)
    state = []  # per rank: [column, bits fixed, prefix, rank among keys with that prefix, their count]
    for col, r in wanted:
        n = first[col][0]
        if not 0 <= r < n:
            raise ValueError(f"rank {r} is outside the {n} values")
        state.append([col, 0, 0, int(r), n])
    for s in state:  # the first pass's histogram narrows every rank at once
        _narrow(s, first[s[0]][1], collect)
    out: list[float | None] = [None] * len(state)
    while any(o is None for o in out):
        todo = [i for i, o in enumerate(out) if o is None]
        for i in todo:
            if state[i][1] >= 64:  # every bit fixed: the key is the value
                out[i] = _value(state[i][2])
        todo = [i for i in todo if out[i] is None]
        if not todo:
            break
        # ranks sharing a prefix (a column's bin) share its histogram or its collected keys
        prefix_of = {i: (state[i][0], state[i][1], state[i][2]) for i in todo}
        hists = {p: np.zeros(1 << _DIGIT, np.int64) for i, p in prefix_of.items() if state[i][4] > collect}
        kept: dict[tuple, list[np.ndarray]] = {p: [] for p in prefix_of.values() if p not in hists}
        cols = {p[0] for p in prefix_of.values()}
        for chunk in chunks():
            keys = {c: _finite_keys(chunk[c]) for c in cols}
            for p in (*hists, *kept):
                col, fixed, prefix = p
                k = keys[col]
                sub = k[(k >> np.uint64(64 - fixed)) == np.uint64(prefix)] if fixed else k
                if p in hists:
                    hists[p] += np.bincount(((sub >> np.uint64(64 - fixed - _DIGIT)) & np.uint64((1 << _DIGIT) - 1))
                                            .astype(np.int64), minlength=1 << _DIGIT)
                else:
                    kept[p].append(sub)
        for i, p in prefix_of.items():
            if p in hists:
                _narrow(state[i], hists[p], collect)
        for p, parts in kept.items():
            sub = np.concatenate(parts) if parts else np.empty(0, np.uint64)
            ranks = [i for i, q in prefix_of.items() if q == p]
            sub = np.partition(sub, sorted({state[i][3] for i in ranks}))
            for i in ranks:
                out[i] = _value(int(sub[state[i][3]]))
    return [float(o) for o in out]  # type: ignore[arg-type]


def _first_passes(chunks: Callable[[], Iterable[tuple[np.ndarray, ...]]]) -> list[tuple[int, np.ndarray]]:
    hists: list[np.ndarray] = []
    for chunk in chunks():
        while len(hists) < len(chunk):
            hists.append(np.zeros(1 << _DIGIT, np.int64))
        for h, c in zip(hists, chunk):
            h += np.bincount((_finite_keys(c) >> np.uint64(64 - _DIGIT)).astype(np.int64), minlength=1 << _DIGIT)
    return [(int(h.sum()), h) for h in hists]


def _narrow(s: list[int], hist: np.ndarray, collect: int) -> None:
    """Fix the next 16 bits of a rank's key from the histogram of its prefix's keys."""
    if s[4] <= collect or s[1] >= 64:
        return
    cum = np.cumsum(hist)
    digit = int(np.searchsorted(cum, s[3], side="right"))
    s[3] -= int(cum[digit - 1]) if digit else 0
    s[1], s[2], s[4] = s[1] + _DIGIT, (s[2] << _DIGIT) | digit, int(hist[digit])


def nanpercentile(chunks: Chunks, q: float) -> float:
    """``np.nanpercentile`` (linear interpolation) of the values of ``chunks``, equal to it bit for
    bit, without holding the column: NaN when every value is NaN.

    >>> x = np.random.default_rng(0).standard_normal(1000)
    >>> nanpercentile(lambda: np.array_split(x, 7), 30) == np.nanpercentile(x, 30)
    True
    """
    return nanpercentiles(lambda: ((c,) for c in chunks()), [[q]])[0][0]


def nanpercentiles(chunks: Callable[[], Iterable[tuple[np.ndarray, ...]]], qs: list[Iterable[float]]) -> list[list[float]]:
    """:func:`nanpercentile` of several columns at once, several percentiles each: ``chunks()``
    yields a tuple of arrays (one a column, as many as ``qs``) per chunk; ``qs[c]``: the
    percentiles of column c. Every rank is found in the same passes."""
    qs = [list(q) for q in qs]
    first = _first_passes(chunks)
    first += [(0, np.zeros(1 << _DIGIT, np.int64))] * (len(qs) - len(first))  # columns that never came
    plans, wanted = [], []
    for col, q_col in enumerate(qs):
        n = first[col][0]
        for q in q_col:
            if n == 0:
                plans.append(None)
                continue
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
            plans.append((len(wanted), len(wanted) + (lo != hi), gamma))
            wanted += [(col, lo)] + ([(col, hi)] if lo != hi else [])
    values = _select(chunks, wanted, first, None) if wanted else []
    out: list[list[float]] = []
    it = iter(plans)
    for q_col in qs:
        row = []
        for _ in q_col:
            plan = next(it)
            if plan is None:
                row.append(float("nan"))
                continue
            a, b = np.float64(values[plan[0]]), np.float64(values[plan[1]])
            with np.errstate(invalid="ignore"):  # -inf and inf: NaN, as numpy's
                diff = b - a
                row.append(float(b - diff * (1 - plan[2]) if plan[2] >= 0.5 else a + diff * plan[2]))
        out.append(row)
    return out


_SPILL_KEYS = 1 << 20  # keys gathered in memory before they go to their partitions' files
_PARTITIONS = 256


def frequent_keys(chunks: Callable[[], Iterable[np.ndarray]], more_than: int, *, spill_dir: str | None = None,
                  counts: bool = False) -> "np.ndarray | tuple[np.ndarray, np.ndarray]":
    """The distinct uint64 keys of ``chunks`` occurring more than ``more_than`` times, sorted (and
    with ``counts``, how often each occurs), in bounded memory: keys are gathered up to
    _SPILL_KEYS, then appended to one of 256 files by their top 8 bits (a hash partition under
    ``spill_dir``, a temporary folder by default) and each partition is counted alone. Fewer keys
    than that are counted in memory, no file written. Memory: the keys returned, and one partition.

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
            parts = [_frequent(np.concatenate(pending) if pending else np.empty(0, np.uint64), more_than)]
        else:
            if pending:
                _spill(np.concatenate(pending), folder)
            parts = [_frequent(np.fromfile(path, np.uint64), more_than)
                     for path in (os.path.join(folder, f"{p:03d}.u64") for p in range(_PARTITIONS)) if os.path.exists(path)]
        keys = np.concatenate([k for k, _ in parts]) if parts else np.empty(0, np.uint64)  # partitions in key order: sorted
        return (keys, np.concatenate([c for _, c in parts]) if parts else np.empty(0, np.int64)) if counts else keys
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


def _frequent(keys: np.ndarray, more_than: int) -> tuple[np.ndarray, np.ndarray]:
    values, counts = np.unique(keys, return_counts=True)
    return values[counts > more_than], counts[counts > more_than].astype(np.int64)
