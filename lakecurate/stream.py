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


def order_keys(v: np.ndarray) -> np.ndarray:
    """float64 -> uint64 in the same order (NaN left out before; -0.0 before 0.0): negative
    values' bits inverted, positive ones' sign bit set."""
    b = np.ascontiguousarray(v, np.float64).view(np.uint64)
    return np.where(b >> np.uint64(63) != 0, ~b, b | _SIGN)


def _value(key: int) -> float:
    k = np.uint64(key)
    b = k & ~_SIGN if k & _SIGN else ~k
    return float(np.array([b], np.uint64).view(np.float64)[0])


def _finite_keys(chunk: np.ndarray) -> np.ndarray:
    v = np.asarray(chunk, np.float64).ravel()
    return order_keys(v[~np.isnan(v)])


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
    >>> bool(nanpercentile(lambda: np.array_split(x, 7), 30) == np.nanpercentile(x, 30))
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


_SPILL_KEYS = 1 << 20  # records gathered in memory before they go to their partitions' files
_PARTITIONS = 256


class Partitioned:
    """Records (a numpy array, structured or not) filed by a partition number in bounded memory:
    held in memory up to ``hold`` records, then every record goes to its partition's file under
    ``spill_dir`` (a temporary folder by default, removed by :meth:`close`). :meth:`partitions`
    gives each non-empty partition's records in turn, in the order they were added: memory, one
    partition. What a global step that works "per key" (a concept, a hash band) reads back.

    >>> with Partitioned(np.int64, 4) as p:
    ...     p.add(np.array([1, 0, 1]), np.array([10, 20, 30]))
    ...     [(k, r.tolist()) for k, r in p.partitions()]
    [(0, [20]), (1, [10, 30])]
    """

    def __init__(self, dtype: "np.dtype | type | None", partitions: int | None = None, *, spill_dir: str | None = None,
                 hold: int | None = None) -> None:
        self.dtype, self.n = None if dtype is None else np.dtype(dtype), int(partitions or _PARTITIONS)
        self.spill_dir, self.hold = spill_dir, _SPILL_KEYS if hold is None else hold
        self.pending: list[tuple[np.ndarray, np.ndarray]] = []
        self.held = 0
        self.folder: str | None = None
        self.grouped: tuple[np.ndarray, np.ndarray] | None = None

    def __enter__(self) -> "Partitioned":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add(self, part: np.ndarray, records: np.ndarray) -> None:
        """File ``records[i]`` under partition ``part[i]`` (0 <= part < partitions)."""
        self.pending.append((np.asarray(part, np.int64), np.asarray(records, self.dtype)))
        self.held += len(records)
        self.grouped = None
        if self.held >= self.hold:
            self._spill()

    def _path(self, p: int) -> str:
        import os

        return os.path.join(self.folder or "", f"{p:05d}.bin")

    def _grouped(self) -> tuple[np.ndarray, np.ndarray]:
        """The pending records ordered by partition (stable), and each partition's first index
        (kept until the next add: reading partition after partition sorts them once)."""
        if self.grouped is None:
            part = np.concatenate([p for p, _ in self.pending]) if self.pending else np.empty(0, np.int64)
            recs = np.concatenate([r for _, r in self.pending]) if self.pending else np.empty(0, self.dtype)
            order = np.argsort(part, kind="stable")
            self.grouped = recs[order], np.searchsorted(part[order], np.arange(self.n + 1))
        return self.grouped

    def _spill(self) -> None:
        import tempfile

        self.folder = self.folder or tempfile.mkdtemp(prefix="lakecurate-partitions-", dir=self.spill_dir)
        recs, cuts = self._grouped()
        for p in np.flatnonzero(np.diff(cuts)):
            with open(self._path(int(p)), "ab") as f:
                f.write(recs[cuts[p]: cuts[p + 1]].tobytes())
        self.pending, self.held, self.grouped = [], 0, None

    def partitions(self) -> "Iterable[tuple[int, np.ndarray]]":
        """(partition, its records) for every partition holding any, in partition order."""
        for p in self.filled():
            yield p, np.concatenate(list(self.read(p)))

    def filled(self) -> list[int]:
        """The partitions holding records, in order (what is held in memory stays there)."""
        import os

        if self.folder is None:
            _, cuts = self._grouped()
            return [int(p) for p in np.flatnonzero(np.diff(cuts))]
        if self.pending:
            self._spill()
        return [p for p in range(self.n) if os.path.exists(self._path(p))]

    def count(self, p: int) -> int:
        """How many records partition ``p`` holds."""
        import os

        if self.folder is None:
            _, cuts = self._grouped()
            return int(cuts[p + 1] - cuts[p])
        if self.pending:  # what was added since the last spill goes to the files too
            self._spill()
        return os.path.getsize(self._path(p)) // self.dtype.itemsize if os.path.exists(self._path(p)) else 0

    def read(self, p: int, chunk: int | None = None) -> "Iterable[np.ndarray]":
        """Partition ``p``'s records in the order added, ``chunk`` records at a time (all at once by default)."""
        if self.folder is None:
            recs, cuts = self._grouped()
            yield recs[cuts[p]: cuts[p + 1]]
            return
        if self.pending:
            self._spill()
        with open(self._path(p), "rb") as f:
            while True:
                part = np.fromfile(f, self.dtype, count=chunk or -1)
                if not len(part):
                    return
                yield part

    def close(self) -> None:
        if self.folder is not None:
            import shutil

            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None
        self.pending, self.held, self.grouped = [], 0, None


def frequent_keys(chunks: Callable[[], Iterable[np.ndarray]], more_than: int, *, spill_dir: str | None = None,
                  counts: bool = False) -> "np.ndarray | tuple[np.ndarray, np.ndarray]":
    """The distinct uint64 keys of ``chunks`` occurring more than ``more_than`` times, sorted (and
    with ``counts``, how often each occurs), in bounded memory: keys are gathered up to
    _SPILL_KEYS, then filed into 256 partitions by their top 8 bits (:class:`Partitioned`: files
    under ``spill_dir``, a temporary folder by default) and each partition is counted alone. Fewer
    keys than that are counted in memory, no file written. Memory: the keys returned, and one partition.

    >>> frequent_keys(lambda: [np.array([3, 1, 3], np.uint64), np.array([3, 2, 1], np.uint64)], 1).tolist()
    [1, 3]
    """
    with Partitioned(np.uint64, _PARTITIONS, spill_dir=spill_dir) as files:
        for chunk in chunks():
            chunk = np.asarray(chunk, np.uint64)
            files.add((chunk >> np.uint64(64 - 8)).astype(np.int64), chunk)
        parts = [_frequent(keys, more_than) for _, keys in files.partitions()]
    keys = np.concatenate([k for k, _ in parts]) if parts else np.empty(0, np.uint64)  # partitions in key order: sorted
    return (keys, np.concatenate([c for _, c in parts]) if parts else np.empty(0, np.int64)) if counts else keys


def _frequent(keys: np.ndarray, more_than: int) -> tuple[np.ndarray, np.ndarray]:
    values, counts = np.unique(keys, return_counts=True)
    return values[counts > more_than], counts[counts > more_than].astype(np.int64)


def sorted_records(chunks: Iterable[np.ndarray], *, hold: int | None = None, spill_dir: str | None = None,
                   shift: int = 56) -> "Iterable[np.ndarray]":
    """The records of ``chunks`` (a structured array with a uint64 field ``key``) in the order of
    their keys, records of equal keys in the order they came, as a stream of arrays: an external
    radix sort in bounded memory. Up to ``hold`` records are sorted in memory; more are filed into
    256 partitions by their next 8 bits of key (:class:`Partitioned`), and each partition is sorted
    in turn, again by partitions when it holds more than ``hold`` (a partition of one key comes
    back as it was added). Memory: ``hold`` records and a chunk.

    >>> rec = np.dtype([("key", np.uint64), ("v", np.int64)])
    >>> x = np.array([(3, 0), (1, 1), (3, 2), (2, 3)], rec)
    >>> np.concatenate(list(sorted_records([x[:2], x[2:]], hold=1))).tolist()
    [(1, 1), (2, 3), (3, 0), (3, 2)]
    """
    hold = _SPILL_KEYS if hold is None else hold
    with Partitioned(None, 256, spill_dir=spill_dir, hold=hold + 1) as files:  # a partition a value of 8 bits
        for chunk in chunks:
            if files.dtype is None:
                files.dtype = chunk.dtype
            files.add(((chunk["key"] >> np.uint64(shift)) & np.uint64(255)).astype(np.int64), chunk)
        if files.dtype is None:
            return
        if files.folder is None:  # all in memory: one stable sort
            held = np.concatenate([r for _, r in files.pending])
            yield held[np.argsort(held["key"], kind="stable")]
            return
        for p in files.filled():
            if files.count(p) <= hold:
                part = next(iter(files.read(p)))
                yield part[np.argsort(part["key"], kind="stable")]
            elif shift == 0:  # every bit of these keys is the same
                yield from files.read(p, hold)
            else:
                yield from sorted_records(files.read(p, hold), hold=hold, spill_dir=spill_dir, shift=shift - 8)
