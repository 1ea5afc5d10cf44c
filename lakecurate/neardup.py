"""Near-duplicate pairs and groups: pure numpy in, numpy out (no lake, no columns).

The dedup stage reads an embedding or hash column, calls these, and writes the group ids.

| function | finds |
| --- | --- |
| `semantic_pairs` | pairs with cosine >= threshold: k-means partition + exact blocked matmuls per cluster |
| `knn_pairs` | each row's k nearest rows above a cosine floor (candidates for verification): faiss, exact or IVF |
| `hamming_pairs` | pairs of uint64 perceptual hashes within a Hamming distance: multi-index hashing |
| `clustered_hamming_pairs` | the same among pairs the semantic join finds near (linear: for 10M+ hashes) |
| `caption_pairs` | near-duplicate captions: banded MinHash on hashed character shingles (linear), exact Jaccard, star groups (no chains) |
| `components` | a group id per row from pairs (connected components) |
| `exact_pairs_bruteforce` | the exact O(N^2) cosine self-join (baseline for tests and benchmarks) |

Pairs come back as three arrays `(i, j, value)` with `i < j`, sorted by `(i, j)`, each pair once.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import TYPE_CHECKING, Callable, Iterator, Literal, Protocol

import numpy as np

Pairs = tuple[np.ndarray, np.ndarray, np.ndarray]

if TYPE_CHECKING:
    import faiss
    from scipy.sparse import csr_matrix

# Rows of one task, rows per matmul, columns gathered at once: together they bound a worker's
# memory (~(2048 + 16384) x d float32 + a 256 x 16384 score block) whatever the cluster sizes.
_TASK_ROWS = 2048
_SUB_ROWS = 256
_COL_BLOCK = 16384
_CAP_COMPACT = 1 << 23  # semantic_pairs(per_row=): piled pairs merged and cut above this, then whenever they double
_ASSIGN_CHUNK = 16384
_ASSIGN_BATCH = 65536  # rows streamed from the source at once to be assigned
_RANGE_ROWS = 1 << 20  # rows one Ray task assigns (its entries: ~64 MiB back to the driver)
# Entries (row, cluster) held by one bucket of clusters, and by one group joined at once (whose
# vectors are read together): a group of 131,072 512-d float16 rows is 128 MiB.
_BUCKET_ENTRIES = 1 << 22
_FLUSH_ENTRIES = 1 << 22  # records filed (_Filed) before they are written to their buckets' files
_GROUP_ENTRIES = 1 << 17
_CELL = np.dtype([("row", "<i8"), ("key", "<i8")])  # a (row, 2 cluster + is_copy) entry of the semantic join
# Clusters keep about this many rows above ~1M rows (below, 4 sqrt(N)): constant work per row.
_ROWS_PER_CLUSTER = 256
# Up to this many centroids a row's nearest are found among all of them; above, two-level k-means
# whose rows search the sub-centroids of their _PROBES nearest top lists.
_FLAT_CENTROIDS = 4096
_PROBES = 32
_TWO_LEVEL_ASSIGN = 6  # cells a row joins by default when the centroids have two levels
_KMEANS_SAMPLE = 1 << 20  # rows k-means holds at once, at most (projected: 256 MiB at 64 dims; beyond, streamed by top cluster)
_TRAIN_FLUSH = 1 << 16  # training rows (256 bytes each at 64 dims) held before they are filed on disk
_PCA_SAMPLE = 20_000  # rows the principal axes are computed from
# k-means on 16 rows per centroid, 6 iterations: better centroids only balance the clusters a
# little better (the pairs found do not depend on them), and training is ~k^2 work.
_KMEANS_PPC = 16
_KMEANS_ITER = 6
# Pairs generated at once when hashing: bounds memory when a bucket holds many hashes.
_PAIR_CHUNK = 1 << 22
# Band keys sorted by one task: bounds memory (~50 bytes a key) whatever the number of hashes.
_KEYS_PER_TASK = 1 << 22


_ALLOCATOR_SET = False


def _large_frees_to_the_os() -> None:
    """Have glibc give every freed block of 1 MiB or more back to the system at once. By default
    its mmap threshold grows to the largest block freed (up to 32 MiB), after which such blocks
    stay in its heaps: the centroid search's temporary arrays, made and freed by two threads a
    chunk at a time, then kept ~0.4-0.9 GB the join did not use (``python scripts/bench_scale.py
    --only semantic``, docs/benchmarks.md: peak 1,434-1,507 against 1,017-1,018 MiB at 1M rows).
    Process-wide and once (the threshold cannot be made dynamic again); nothing off glibc."""
    global _ALLOCATOR_SET
    if _ALLOCATOR_SET:
        return
    _ALLOCATOR_SET = True
    try:
        import ctypes

        ctypes.CDLL(None).mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):  # not glibc
        pass


def _empty(value_dtype: type = np.float32, ranked: bool = False) -> Pairs:
    out = np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, value_dtype)
    return (*out, np.empty(0, bool)) if ranked else out  # type: ignore[return-value]


def _sorted_pairs(i: np.ndarray, j: np.ndarray, *cols: np.ndarray) -> Pairs:
    """(min, max, *cols) sorted by (i, j): the order must not depend on thread scheduling."""
    a, b = np.minimum(i, j).astype(np.int64), np.maximum(i, j).astype(np.int64)
    if not len(a):
        return (a, b, *cols)  # type: ignore[return-value]
    order = np.argsort(a * (int(b.max()) + 1) + b, kind="stable")  # one key: ~3x faster than lexsort
    return (a[order], b[order], *(c[order] for c in cols))  # type: ignore[return-value]


def _best_per_row(p: np.ndarray, v: np.ndarray, k: int, kth: np.ndarray | None = None) -> np.ndarray:
    """Mask of each row p's k highest values v (ties: the earlier position first); ``kth`` (an
    array over rows): set to the k-th highest value of the rows that have k or more.

    >>> _best_per_row(np.array([0, 0, 0, 1]), np.array([0.5, 0.9, 0.7, 0.1]), 2).tolist()
    [False, True, True, True]
    """
    if not len(p):
        return np.zeros(0, bool)
    bits = (np.asarray(v, np.float32) + np.float32(0)).view(np.uint32)  # (+ 0: -0.0 is 0.0)
    desc = np.where(bits >> 31, bits, ~bits & np.uint32((1 << 31) - 1))  # uint32 order: the values', reversed
    order = np.argsort((np.asarray(p).astype(np.uint64) << np.uint64(32)) | desc, kind="stable")  # one key
    ps = p[order]
    start = np.flatnonzero(np.concatenate([[True], ps[1:] != ps[:-1]]))
    rank = np.arange(len(ps)) - np.repeat(start, np.diff(np.append(start, len(ps))))
    best = np.zeros(len(p), bool)
    best[order[rank < k]] = True
    if kth is not None:
        at = order[rank == k - 1]
        kth[p[at]] = v[at]
    return best


def nearest_pairs(i: np.ndarray, j: np.ndarray, v: np.ndarray, k: int, new: np.ndarray | None = None,
                  kth: np.ndarray | None = None) -> np.ndarray:
    """Mask of the pairs (i, j, value) where j is among i's k highest or i among j's (ties: the
    earlier pair first); with ``new`` (a boolean mask over rows) only new rows choose.

    >>> nearest_pairs(np.array([0, 0, 1]), np.array([1, 2, 2]), np.array([0.9, 0.5, 0.8]), 1).tolist()
    [True, False, True]
    """
    m = len(i)
    chooser, value = np.concatenate([i, j]), np.concatenate([v, v])
    best = _best_per_row(chooser, value, k, kth)
    if new is not None:
        best &= np.asarray(new, bool)[chooser]
    return best[:m] | best[m:]


def _workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@contextmanager
def _one_blas_thread_per_worker() -> Iterator[int]:
    """Yield how many worker threads to use, with BLAS limited to one thread each.

    Many small matmuls on a multi-threaded BLAS spend their time in thread handoffs (10x slower
    on a busy 2-core machine); one BLAS thread per Python worker keeps every core busy instead
    (numpy releases the GIL in matmul, comparisons and casts). Without threadpoolctl, run serially.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield 1
        return
    with threadpool_limits(1, user_api="blas"):
        yield _workers()


def _run(tasks: list, fn: Callable, progress: bool, desc: str) -> list:
    """fn over tasks on worker threads, started in the order given; results in that order."""
    with _one_blas_thread_per_worker() as workers:
        bar = None
        if progress:
            from lakecurate.progress import progress_bar

            bar = progress_bar(total=len(tasks), desc=desc, unit="task", progress=progress)
        out: list = [None] * len(tasks)
        with ThreadPoolExecutor(workers) as pool:
            futures = {pool.submit(fn, t): k for k, t in enumerate(tasks)}
            for fut, k in futures.items():
                out[k] = fut.result()
                if bar is not None:
                    bar.update()
        if bar is not None:
            bar.close()
    return out


# ---------------------------------------------------------------------------------------------
# Cosine pairs


def _check_vectors(vectors: np.ndarray) -> np.ndarray:
    x = np.asarray(vectors)
    if x.ndim != 2 or x.dtype not in (np.float16, np.float32, np.float64):
        raise ValueError(f"vectors must be a 2-D float array (N x d), got {x.dtype} with shape {x.shape}")
    if len(x):
        sample = np.asarray(x[:: max(1, len(x) // 1000)], dtype=np.float32)
        norms = np.linalg.norm(sample, axis=1)
        if not np.isfinite(norms).all() or np.abs(norms - 1).max() > 1e-2:
            raise ValueError(
                f"vectors are not L2-normalised (norms {norms.min():.3g}..{norms.max():.3g} in a sample); "
                "normalise them first: v / np.linalg.norm(v, axis=1, keepdims=True)")
    return x


def _join_block(x: np.ndarray, rows: np.ndarray, r0: int, r1: int, threshold: float,
                cap: tuple[int, float] | None = None, span: float | None = None) -> Pairs:
    """Pairs (p, q) of positions in `rows`, r0 <= p < r1, p < q, with dot(x[rows[p]], x[rows[q]]) >= threshold.

    The upper triangle is computed in _SUB_ROWS strips: that skips most of the lower half
    without making the matmuls small; columns are gathered _COL_BLOCK at a time.

    ``cap=(k, above)``: only the pairs where one row is among the other's k most similar (of
    this block's pairs) and those at or above ``above``, with a 4th array: whether the pair is
    among either's k (:func:`semantic_pairs`' ``per_row``). Each strip's pairs are cut to its
    rows' and columns' k best as they come (:func:`_strip_best`) and piled as the join's are
    (:class:`_Pile`), so the final ranks are those over all of the block's pairs. ``span``: the
    pairs at or above it cut to a spanning forest as they come (but for those a cap ranks).
    """
    out_p, out_q, out_v = [], [], []
    pile = _Pile(cap, len(rows), span=span) if cap is not None or span is not None else None
    # The first column block starts at r0, so it also holds the left rows (r1 - r0 <= _COL_BLOCK).
    first = np.asarray(x[rows[r0 : r0 + _COL_BLOCK]], dtype=np.float32)
    left = first[: r1 - r0]
    for c0 in range(r0, len(rows), _COL_BLOCK):
        right = first if c0 == r0 else np.asarray(x[rows[c0 : c0 + _COL_BLOCK]], dtype=np.float32)
        c1 = c0 + len(right)
        for s0 in range(r0, r1, _SUB_ROWS):
            s1 = min(s0 + _SUB_ROWS, r1)
            q0 = max(c0, s0)  # columns before the strip's first row were paired by earlier strips
            if q0 >= c1:
                continue
            scores = left[s0 - r0 : s1 - r0] @ right[q0 - c0 :].T
            hit = np.flatnonzero(scores >= threshold)  # flat: 2-D nonzero is ~8x slower
            if not len(hit):
                continue
            p, q = np.divmod(hit, c1 - q0)
            p += s0
            q += q0
            upper = q > p
            p, q, v = p[upper], q[upper], scores.ravel()[hit[upper]]
            if pile is not None and pile.cap is not None:
                keep = _strip_best(p - s0, q - q0, v, scores.shape, pile.cap[0]) | (v >= pile.cap[1])
                p, q, v = p[keep], q[keep], v[keep]
            if pile is not None:
                pile.add((p, q, v))
                continue
            out_p.append(p)
            out_q.append(q)
            out_v.append(v)
    if pile is not None:
        return pile.result()
    if not out_p:
        return _empty()
    return np.concatenate(out_p), np.concatenate(out_q), np.concatenate(out_v)


def _strip_best(r: np.ndarray, c: np.ndarray, v: np.ndarray, shape: tuple[int, int], k: int) -> np.ndarray:
    """Mask of the entries (r, c, v) of a strip's score matrix among their row's k highest or their
    column's (ties broken by np.argpartition): a partition of the dense strip, linear in its size,
    where sorting the pairs of a dense region would cost their number times its log."""
    rows_over = np.bincount(r, minlength=shape[0]) > k
    cols_over = np.bincount(c, minlength=shape[1]) > k
    if not rows_over.any() or not cols_over.any():
        return np.ones(len(r), bool)  # every entry is among its row's (or its column's) k
    best = ~(rows_over[r] & cols_over[c])  # in a row or a column of k or fewer
    for over, at, other, n_other in ((rows_over, r, c, shape[1]), (cols_over, c, r, shape[0])):
        lines = np.flatnonzero(over)  # only the rows (columns) with more than k: a dense block of them
        pos = np.full(len(over), -1, np.int64)
        pos[lines] = np.arange(len(lines))
        mine = np.flatnonzero(over[at])
        dense = np.full((len(lines), n_other), -np.inf, np.float32)
        dense[pos[at[mine]], other[mine]] = v[mine]
        top = np.zeros(dense.shape, bool)
        np.put_along_axis(top, np.argpartition(dense, n_other - k, axis=1)[:, n_other - k:], True, axis=1)
        best[mine] |= top[pos[at[mine]], other[mine]]
    return best


def _ranked(p: np.ndarray, q: np.ndarray, v: np.ndarray, cap: tuple[int, float],
            kth: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
    """(p, q, v, ranked) of the pairs among p's k best or q's k best (:func:`nearest_pairs`), or at
    or above ``above``; ``kth``: as :func:`_best_per_row`'s."""
    k, above = cap
    best = nearest_pairs(p, q, v, k, kth=kth)
    keep = best | (v >= above)
    return p[keep], q[keep], v[keep], best[keep]


def exact_pairs_bruteforce(vectors: np.ndarray, threshold: float = 0.95, *, progress: bool = False,
                           cap: tuple[int, float] | None = None, span: float | None = None) -> Pairs:
    """All pairs with cosine >= threshold by an exact blocked self-join: O(N^2 d), the baseline
    (``cap``: as :func:`_join_block`'s, each row's best among the later rows; ``span``: the pairs
    at or above it cut to a spanning forest in each task of _TASK_ROWS rows).

    >>> v = np.eye(3, dtype=np.float32); v[2] = v[1]
    >>> exact_pairs_bruteforce(v, 0.9)
    (array([1]), array([2]), array([1.], dtype=float32))
    """
    x = _check_vectors(vectors)
    n = len(x)
    rows = np.arange(n)
    tasks = [(r0, min(r0 + _TASK_ROWS, n)) for r0 in range(0, n, _TASK_ROWS)]
    parts = _run(tasks, lambda t: _join_block(x, rows, t[0], t[1], threshold, cap, span), progress, "exact pairs")
    if not parts:
        return _empty(ranked=cap is not None)
    return _sorted_pairs(*(np.concatenate([p[col] for p in parts]) for col in range(len(parts[0]))))


def default_clusters(n: int) -> int:
    """k-means clusters for n rows: 4 sqrt(n), at most n / 32 (clusters of 32 rows or more), and at
    least n / _ROWS_PER_CLUSTER, so that above ~1M rows clusters stop growing and the work per row
    stays constant (the two-level centroids keep assigning a row cheap).

    Assigning rows costs ~n k pca_dims and joining clusters ~n (n / k) assign d; with 64 of 512
    dimensions and assign=4, k ~ 4-6 sqrt(n) balances the two up to ~1M rows (measured:
    scripts/bench_dedup.py, scripts/bench_scale.py).

    >>> default_clusters(1_000_000), default_clusters(10_000_000)
    (4000, 39062)
    """
    return int(max(1, min(round(4 * np.sqrt(n)), n // 32), n // _ROWS_PER_CLUSTER))


def _pca(sample: np.ndarray, dims: int | None) -> np.ndarray | None:
    """Top principal axes (d x dims) of a sample, or None to keep all dimensions."""
    d = sample.shape[1]
    if dims is None or dims >= d:
        return None
    centered = sample - sample.mean(0)
    _, vecs = np.linalg.eigh(centered.T @ centered)  # ascending eigenvalues
    return np.ascontiguousarray(vecs[:, ::-1][:, :dims], dtype=np.float32)


# ---------------------------------------------------------------------------------------------
# Vector sources: where the rows of a semantic join come from


class VectorSource(Protocol):
    """Rows of unit vectors that a join streams in order and gathers by position, never all at once
    (an in-memory matrix, or an embedding column of a Lance dataset: ``columns.LanceVectors``)."""

    n: int  # rows
    d: int  # dimensions

    def batches(self, size: int) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, rows x d array) for every row, in order."""

    def take(self, rows: np.ndarray) -> np.ndarray:
        """The vectors of these (sorted, unique) rows, len(rows) x d."""


class ArrayVectors:
    """An in-memory matrix as a :class:`VectorSource`."""

    def __init__(self, x: np.ndarray) -> None:
        self.x = x
        self.n, self.d = x.shape

    def batches(self, size: int, lo: int = 0, hi: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        for s in range(lo, self.n if hi is None else min(hi, self.n), size):
            yield s, self.x[s : min(s + size, self.n if hi is None else hi)]

    def take(self, rows: np.ndarray) -> np.ndarray:
        return self.x[rows]


def _source(vectors: "np.ndarray | VectorSource") -> VectorSource:
    if hasattr(vectors, "take") and hasattr(vectors, "batches"):
        src = vectors
        if src.n:  # check a sample of the rows, as _check_vectors checks a matrix
            _check_vectors(np.asarray(src.take(np.unique(np.linspace(0, src.n - 1, min(src.n, 1000)).astype(np.int64)))))
        return src
    return ArrayVectors(_check_vectors(vectors))


# ---------------------------------------------------------------------------------------------
# Centroids: flat k-means up to _FLAT_CENTROIDS, two levels above (cost linear in the rows)


def _with_copies(centroids: np.ndarray, dist: np.ndarray, near: np.ndarray,
                 radius: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, cluster, is_copy) entries from each row's nearest centroids (``dist``: squared
    distances, ascending; ``near``: their numbers, -1 for none): the nearest, then the next ones
    whose bisector with the nearest lies within ``radius`` of the row (a partner within
    ``radius`` may be on their side: the copies)."""
    if near.shape[1] > 1:
        # Distance from the row to the bisector of (nearest, other): (|z-o|^2 - |z-p|^2) / 2|o-p|.
        gap = np.linalg.norm(centroids[near[:, 1:]] - centroids[near[:, :1]], axis=2)
        to_bisector = (dist[:, 1:] - dist[:, :1]) / (2 * np.maximum(gap, 1e-12))
        near[:, 1:][(to_bisector > radius) | (near[:, 1:] < 0)] = -1
    row, slot = np.nonzero(near >= 0)
    return row, near[row, slot].astype(np.int64), slot > 0


# Two-level search (:meth:`_Centroids.search`): sub-centroids nearest to their list's centre that
# bound a row's m-th distance (pass 1), and products a block of pass 2 computes at once (1M floats:
# the block stays in cache while it is compared).
_BOUND_REPS = 64
_SEARCH_BLOCK = 1 << 18


def _entries_by_list(lists: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """(list, positions in ``lists`` that name it) for each list named, in position order."""
    order = np.argsort(lists.astype(np.int16) if lists.max(initial=0) < 1 << 15 else lists, kind="stable")  # radix sort
    cuts = np.flatnonzero(np.diff(lists[order])) + 1
    return [(int(lists[at[0]]), at) for at in np.split(order, cuts) if len(at)]


def _smallest_per_row(r: np.ndarray, c: np.ndarray, d: np.ndarray, n: int, m: int,
                      packed: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(distances, c) of the m smallest ``d`` of each row in ``r`` (0..n-1), ascending; inf and -1
    where a row has fewer. One sort of (row, distance, c) packed in 64 bits when they fit."""
    d = np.maximum(d, 0).astype(np.float32) + np.float32(0)  # >= +0 (not -0): its bits sort as it does
    rbits, cbits = int(n - 1).bit_length(), int(c.max(initial=0)).bit_length()
    if packed and rbits + 31 + cbits <= 64:
        key = np.sort((r.astype(np.uint64) << np.uint64(31 + cbits))
                      | (d.view(np.uint32).astype(np.uint64) << np.uint64(cbits)) | c.astype(np.uint64))
        r = (key >> np.uint64(31 + cbits)).astype(np.int64)
        d = ((key >> np.uint64(cbits)) & np.uint64(0x7FFFFFFF)).astype(np.uint32).view(np.float32)
        c = (key & np.uint64((1 << cbits) - 1)).astype(np.int64)
    else:
        order = np.argsort((r.astype(np.int64) << 32) | d.view(np.int32))
        r, c, d = r[order], c[order].astype(np.int64), d[order]
    if not len(r):
        return np.full((n, m), np.inf, np.float32), np.full((n, m), -1, np.int64)
    start = np.searchsorted(r, np.arange(n))
    slot = start[:, None] + np.arange(m)
    ok = slot < np.append(start[1:], len(r))[:, None]
    slot = np.minimum(slot, len(r) - 1)
    return np.where(ok, d[slot], np.inf).astype(np.float32), np.where(ok, c[slot], -1)


class _Centroids:
    """k centroids on the top principal axes, and how a row finds its cells (with ClusterJoin copies).

    Flat (up to _FLAT_CENTROIDS): a row's nearest among all centroids, exactly (a BLAS scan). Two
    levels (above): the centroids are the sub-centroids of ~sqrt(k) top clusters, stored list by
    list (``bounds``); a row probes its _PROBES nearest top lists and finds its nearest among
    their sub-centroids exactly, one BLAS product per list for every row that probes it
    (:meth:`search`): ~_PROBES sqrt(k) distances a row instead of k, at the cost of missing a
    nearer centroid in an unprobed list (recall measured by scripts/bench_scale.py). This
    replaced a faiss IVF index over the sub-centroids, which scans lists query by query: at 10M
    rows (39,066 centroids in 198 lists, 65,536 rows, one thread) the IVF probing 30 lists took
    5.45 s and found the exact 4 nearest for 88% of the rows; this search probing 32 takes 3.5 s
    and finds them for 90% (16 probes: 1.7 s, 66%; semantic recall at 10M fell from 0.993 to
    0.983 with 16). Two-level ClusterJoin proper (copies at both levels) was measured too: here
    every row reached 4 top clusters and 16 cells, 4x the entries and 13x the time at 3M rows.
    """

    def __init__(self, centroids: np.ndarray, axes: np.ndarray | None, top: np.ndarray | None = None,
                 bounds: np.ndarray | None = None) -> None:
        self.centroids, self.axes = np.ascontiguousarray(centroids, np.float32), axes
        self.top = None if top is None else np.ascontiguousarray(top, np.float32)
        self.bounds = None if bounds is None else np.asarray(bounds, np.int64)  # list t: centroids[bounds[t]:bounds[t + 1]]

    def search(self, z: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
        """(squared distances, centroid numbers) of each row's ``m`` nearest centroids, ascending
        (-1 and inf where a row's probed lists hold fewer).

        Two levels: exactly the m nearest among the sub-centroids of the row's _PROBES nearest top
        lists, in two passes. Pass 1 bounds each row's m-th distance from above (u, plus a slack
        far above float32 rounding): the m-th nearest among the _BOUND_REPS sub-centroids nearest
        to the centre of each of its 2 nearest lists (one faiss.knn per list). Pass 2 scans every
        probed list, a block of rows at a time (one BLAS product, [c, -|c|^2 / 2] . [z, 1] =
        (|z|^2 - |z - c|^2) / 2, the norms folded in), and keeps the ~25 sub-centroids a row within
        u (a compare and np.flatnonzero: no top-k heap); the m smallest per row are then one sort.
        The cells are those of one faiss.knn per list on the rows probing it (what it replaced;
        ties within float32 rounding aside), the distances within ~2e-5 relative. Measured at 10M
        rows (39,062 sub-centroids in 198 lists, 65,536 rows, one thread, best of 3, old and new
        alternating: ``python scripts/bench_centroid_search.py --kernel``; docs/benchmarks.md): about
        half the time of the per-list faiss.knn, 99.995% of the rows with identical cells (the rest:
        near-ties, swapped within ~5e-6 relative).
        Tried and dropped: the exact m nearest in the 2 nearest lists as the bound (faiss: ~11 us
        a row against ~4, for ~20 kept against ~25); triangle and bisector lower bounds to skip a
        list, or partial (PCA-prefix) distances to skip cells (the 64 projected dimensions carry
        near-equal variance: they prune 1-20%); a column-max prefilter before the compare, and
        bit tricks on the mask (slower); blocks of 2^14-2^15 products (more calls: 1.3-1.7x slower scans).
        """
        import faiss

        m = min(m, len(self.centroids))
        if self.top is None:
            return faiss.knn(z, self.centroids, m)
        z = np.ascontiguousarray(z, np.float32)
        if not len(z):
            return np.full((0, m), np.inf, np.float32), np.full((0, m), -1, np.int64)
        cents, bounds, n, dim = self.centroids, self.bounds, len(z), z.shape[1]
        probes = min(len(self.top), _PROBES)
        first = min(2, probes)
        _, probe = faiss.knn(z, self.top, probes)
        zz, cc = np.einsum("ij,ij->i", z, z), np.einsum("ij,ij->i", cents, cents)
        # pass 1: u >= the m-th distance among the probed lists (m sub-centroids of them lie within u)
        own = np.repeat(self.top, np.diff(bounds), axis=0)
        to_top = np.einsum("ij,ij->i", cents - own, cents - own)
        best = np.full((n * first, m), np.inf, np.float32)
        for t, at in _entries_by_list(probe[:, :first].ravel()):
            a, b = int(bounds[t]), int(bounds[t + 1])
            if b > a:
                if b - a > _BOUND_REPS:
                    reps = np.ascontiguousarray(cents[a + np.argpartition(to_top[a:b], _BOUND_REPS - 1)[:_BOUND_REPS]])
                else:
                    reps = cents[a:b]
                d, _ = faiss.knn(np.ascontiguousarray(z[at // first]), reps, min(m, len(reps)))
                best[at, : d.shape[1]] = d
        u = np.partition(best.reshape(n, first * m), m - 1, axis=1)[:, m - 1]
        u = u + 1e-4 * (zz + cc.max()) + 1e-6  # a slack far above float32 rounding (inf: keeps all)
        za = np.empty((n, dim + 1), np.float32)
        za[:, :dim], za[:, dim] = z, 1
        ca = np.empty((len(cents), dim + 1), np.float32)
        ca[:, :dim], ca[:, dim] = cents, -0.5 * cc
        thr = (0.5 * (zz - u)).astype(np.float32)  # |z - c|^2 = |z|^2 - 2 G <= u iff G >= thr
        # pass 2: G = ca @ za.T over each probed list, a block of rows (<= _SEARCH_BLOCK products) at a time
        most = int(np.diff(bounds).max())
        gbuf = np.empty(max(_SEARCH_BLOCK, 16 * most), np.float32)
        mbuf = np.empty(len(gbuf), bool)
        zbuf = np.empty((min(_SEARCH_BLOCK, 8192), dim + 1), np.float32)
        found_r, found_c, found_g = [np.empty(0, np.int64)], [np.empty(0, np.int64)], [np.empty(0, np.float32)]
        for t, at in _entries_by_list(probe.ravel()):
            a, b = int(bounds[t]), int(bounds[t + 1])
            if b == a:
                continue
            rows, block = at // probes, min(len(zbuf), max(16, _SEARCH_BLOCK // (b - a)))
            for lo in range(0, len(rows), block):
                rb = rows[lo : lo + block]
                zb = np.take(za, rb, axis=0, out=zbuf[: len(rb)])
                g = np.matmul(ca[a:b], zb.T, out=gbuf[: (b - a) * len(rb)].reshape(b - a, len(rb)))
                hit = np.flatnonzero(np.greater_equal(g, thr[rb], out=mbuf[: g.size].reshape(g.shape)))
                cell, pos = np.divmod(hit, len(rb))
                found_r.append(rb[pos]), found_c.append(cell + a), found_g.append(g.ravel()[hit])
        r = np.concatenate(found_r)
        return _smallest_per_row(r, np.concatenate(found_c), zz[r] - 2 * np.concatenate(found_g), n, m)

    def assign(self, x: np.ndarray, m: int, radius: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(row of x, cluster, is_copy) for every cell each row joins; own rows have is_copy False."""
        dist, near = self.search(_project(x, self.axes), m)
        return _with_copies(self.centroids, dist, near, radius)


def _kmeans(points: np.ndarray, k: int, seed: int) -> np.ndarray:
    import faiss

    k = max(1, min(k, len(points)))
    km = faiss.Kmeans(points.shape[1], k, niter=_KMEANS_ITER, seed=seed, max_points_per_centroid=_KMEANS_PPC,
                      min_points_per_centroid=1, verbose=False)
    km.train(np.ascontiguousarray(points, np.float32))
    return km.centroids


def _fit_centroids(src: VectorSource, k: int, seed: int, pca_dims: int | None) -> _Centroids:
    """k-means on _KMEANS_PPC sample rows a centroid (read by position, projected on the top
    principal axes as they are read); two levels when k > _FLAT_CENTROIDS: sqrt(k) top centroids,
    then each top cluster's share of k centroids trained on its own sample rows. At most
    _KMEANS_SAMPLE rows are held at once: beyond that (k > 65,536: N > ~16.8M rows), the top
    level trains on _KMEANS_SAMPLE of them and the rest are streamed, each filed under its nearest
    top centroid on disk, and each top cluster's centroids train on its file alone, so a
    sub-centroid still has ~_KMEANS_PPC rows (with the sample held at 1M rows, 128M rows would have
    given ~2: clusters 3.7x less balanced, the join 1.5x slower, measured at 3M with the
    sample scaled down alike)."""
    rng = np.random.default_rng(seed)
    n = src.n
    two_level = k > _FLAT_CENTROIDS
    n_train = min(n, _KMEANS_PPC * k)  # the rows k-means trains on
    if not two_level:  # one level trains on what it holds (k <= 4,096: 65,536 rows at most)
        n_train = min(n_train, _KMEANS_SAMPLE)
    rows = np.sort(rng.choice(n, n_train, replace=False)) if n_train < n else np.arange(n)
    held = rows if n_train <= _KMEANS_SAMPLE else np.sort(rng.choice(rows, _KMEANS_SAMPLE, replace=False))
    axes = _pca(np.asarray(src.take(held[:: max(1, len(held) // _PCA_SAMPLE)]), np.float32), pca_dims)
    sample = in_value_order(_projected_rows(src, held, axes), seed)
    if not two_level:
        return _Centroids(_kmeans(sample, k, seed), axes)
    import faiss

    top = _kmeans(sample, int(round(np.sqrt(k))), seed)
    with contextlib.ExitStack() as stack:
        if len(held) == len(rows):
            parent = faiss.knn(sample, top, 1)[1][:, 0]
            shares = [sample[parent == t] for t in range(len(top))]
        else:  # every training row filed under its top centroid, a top cluster's read back alone
            del sample
            spill = stack.enter_context(tempfile.TemporaryDirectory(prefix="lakecurate-kmeans-"))
            filed = _Filed(len(top), spill, "train", np.dtype([("z", "<f4", (top.shape[1],))]), flush=_TRAIN_FLUSH)
            for s in range(0, len(rows), _ASSIGN_CHUNK):
                z = _project(src.take(rows[s : s + _ASSIGN_CHUNK]), axes)
                rec = np.empty(len(z), filed.dtype)
                rec["z"] = z
                filed.add(faiss.knn(z, top, 1)[1][:, 0], rec)
            shares = (in_value_order(np.ascontiguousarray(filed.load(t)["z"]), seed) for t in range(len(top)))
        tops, parts = [], []
        for t, mine in enumerate(shares):
            if len(mine):  # a top cluster with no sample rows is left out: its list would be empty
                tops.append(top[t])
                parts.append(_kmeans(mine, max(1, int(round(k * len(mine) / n_train))), seed + 1 + t))
    bounds = np.concatenate([[0], np.cumsum([len(p) for p in parts])])
    return _Centroids(np.concatenate(parts), axes, np.stack(tops), bounds)


def _projected_rows(src: VectorSource, rows: np.ndarray, axes: np.ndarray | None) -> np.ndarray:
    """Rows read by position, _ASSIGN_CHUNK at a time, projected on ``axes`` (float32)."""
    if not len(rows):
        return np.empty((0, src.d if axes is None else axes.shape[1]), np.float32)
    return np.concatenate([_project(src.take(rows[s : s + _ASSIGN_CHUNK]), axes) for s in range(0, len(rows), _ASSIGN_CHUNK)])


def in_value_order(sample: np.ndarray, seed: int) -> np.ndarray:
    """The sample sorted by its projection on a seeded random direction: faiss seeds k-means from
    the order of its points, so in value order the clusters do not depend on where rows sit in the
    lake (a lake ingested in another order, or compacted, gets the same ones)."""
    direction = np.random.default_rng(seed).standard_normal(sample.shape[1]).astype(np.float32)
    return np.ascontiguousarray(sample[np.argsort(sample @ direction, kind="stable")])


def _project(x: np.ndarray, axes: np.ndarray | None) -> np.ndarray:
    z = np.asarray(x, dtype=np.float32)
    return np.ascontiguousarray(z @ axes if axes is not None else z)


class _Filed:
    """Records filed by bucket (``buckets`` of them): held in memory, or, under ``spill_dir``,
    appended to one file a bucket whenever ``flush`` (_FLUSH_ENTRIES) records are held (so what is filed never
    sits in memory whole); :meth:`chunks` takes a bucket's records away in the order filed."""

    def __init__(self, buckets: int, spill_dir: str | None, name: str, dtype: np.dtype, flush: int | None = None) -> None:
        self.buckets, self.spill_dir, self.name, self.dtype = buckets, spill_dir, name, dtype
        self.limit = flush or _FLUSH_ENTRIES  # records held before they are written (large records: fewer)
        self.held: list[list[np.ndarray]] = [[] for _ in range(buckets)]
        self.count = 0

    def add(self, bucket: np.ndarray, records: np.ndarray) -> None:
        """File ``records`` in their ``bucket`` (one a record)."""
        order = np.argsort(bucket, kind="stable")  # a bucket's records keep their order
        cuts = np.searchsorted(np.asarray(bucket)[order], np.arange(self.buckets + 1))
        records = records[order]
        for b in np.flatnonzero(np.diff(cuts)).tolist():
            self.held[b].append(records[cuts[b]:cuts[b + 1]])
        self.count += len(records)
        if self.count >= self.limit:
            self.flush()

    def flush(self) -> None:
        if self.spill_dir is None:
            return
        for b, got in enumerate(self.held):
            if got:
                with open(self._path(b), "ab") as f:
                    for part in got:
                        part.tofile(f)
                self.held[b] = []
        self.count = 0

    def _path(self, b: int) -> str:
        return os.path.join(self.spill_dir or "", f"{self.name}-{b}.bin")

    def chunks(self, b: int, size: int = 1 << 22) -> Iterator[np.ndarray]:
        """A bucket's records taken away, at most ``size`` at a time from its file."""
        got, self.held[b] = self.held[b], []
        if self.spill_dir is not None and os.path.exists(self._path(b)):
            with open(self._path(b), "rb") as f:
                while len(part := np.fromfile(f, self.dtype, count=size)):
                    yield part
            os.remove(self._path(b))
        yield from got

    def load(self, b: int) -> np.ndarray:
        parts = list(self.chunks(b))
        return np.concatenate(parts) if parts else np.empty(0, self.dtype)


def semantic_pairs(
    vectors: "np.ndarray | VectorSource",
    threshold: float = 0.95,
    *,
    n_clusters: int | None = None,
    assign: int | None = None,
    seed: int = 0,
    pca_dims: int | None = 64,
    progress: bool = False,
    new: np.ndarray | None = None,
    spill_dir: str | None = "auto",
    engine: str = "local",
    address: str | None = None,
    per_row: int | None = None,
    all_from: float = float("inf"),
    near: "HashFilter | None" = None,
    span: float | None = None,
    joined: tuple[np.ndarray, np.ndarray] | None = None,
) -> Pairs:
    """Pairs of rows with cosine >= threshold among L2-normalised vectors (float16 or float32), from
    a matrix or a :class:`VectorSource` (an embedding column read in batches: out of core).

    SemDeDup-style (Abbas et al. 2023): faiss k-means (``n_clusters``, default
    :func:`default_clusters`, trained on a sample) splits the rows, and each cluster is joined
    exactly by blocked float32 matmuls. A row belongs to its nearest centroid's cluster and is
    copied into up to ``assign - 1`` next nearest ones, so that pairs split by a boundary are still
    found; but only when it lies within r = sqrt(2 (1 - threshold)) of the bisector between the two
    centroids, since a partner is at most r away (the ClusterJoin bound, Das Sarma et al. 2014). So
    ``assign >= n_clusters`` is exact (with flat centroids), and a smaller ``assign`` misses a pair
    only when neither row's cluster is among the other's ``assign`` nearest. Default: 4 with flat
    centroids, 6 with two levels (above _FLAT_CENTROIDS clusters the cells are small beside the
    partner radius, so more partners sit beyond a row's 4 nearest: at 10M rows the exact search
    finds 98.9% of planted pairs with 4 cells a row, 99.3% with 5, 99.5-99.6% with 6;
    ``scripts/bench_centroid_search.py``). Copies are compared
    with a cluster's own rows, not with each other; a pair met in two clusters is returned once.

    k-means and assignment run on the top ``pca_dims`` principal axes (None: all of them): a
    projection only shrinks distances, so the bound still holds, and assigning is d / pca_dims
    cheaper. Above _FLAT_CENTROIDS clusters the k-means has two levels and a row's nearest
    centroids are searched in the nearest top lists only (:class:`_Centroids`; approximate), so
    clusters keep ~_ROWS_PER_CLUSTER rows whatever N and a row costs ~sqrt(k) distances, not k.

    **Memory**: the rows are streamed once to assign them (the (row, cluster) entries go to
    buckets of clusters, in files under ``spill_dir`` when given), then each bucket's clusters are
    joined a group at a time, the group's vectors gathered by position: peak memory is bounded by
    _GROUP_ENTRIES rows of vectors, not N (apart from the pairs returned: a set of s identical
    rows yields s (s - 1) / 2 pairs). A source that is not an in-memory matrix (a Lance column) is
    copied to a raw file under ``spill_dir`` as it streams and the groups are gathered from that
    copy (:class:`_LocalCopy`: ~3 us a row against ~16 us for a Lance read by position, and the
    source is read once). ``spill_dir="auto"``: a temporary directory (for the copy, and for the entries
    when they fill more than one bucket: _BUCKET_ENTRIES, 64 MiB); None: everything in memory and
    the source read by position.

    ``engine="ray"``: the assignment pass is a Ray task per _RANGE_ROWS rows (each reads and
    assigns its rows: the centroid search, the part that grows with N, spreads over the cluster)
    and each group of clusters is joined by a Ray task of its own, which reads the group's vectors
    itself (a :class:`~lakecurate.columns.LanceVectors` travels as its spec; a matrix is put in
    the object store once); a bounded number of tasks is in flight. The pairs are the local
    engine's.

    ``new`` (a boolean mask over the rows) asks only for pairs with at least one new row: each
    cluster's new members are joined with all its members, so appending m rows to N costs about
    m / N of a full join, plus the k-means and the assignment of every row (incremental dedup).

    Returns ``(i, j, cosine)``: int64, int64, float32 arrays with i < j, sorted by (i, j).

    ``per_row=k`` bounds the pairs where many rows are within ``threshold`` of each other (a low
    cosine, or a dense region of a coarse encoder): a pair is kept where one row is among the
    other's k most similar of all the pairs found (each join block keeps its rows' k best, and the
    kept pairs are cut again whenever they double), and every pair at or above ``all_from`` is
    kept too. The pairs then number at most k a row plus those above ``all_from``, and a 4th array
    says which are ranked (they do not depend on ``all_from``, so one join serves a method that
    needs every pair above ``all_from`` and one that takes the ranked ones). The ranked pairs are
    the k-nearest pairs of :func:`knn_pairs` at ``threshold``, out of core, but for the pairs the
    join misses (its recall); with ``new``, a new row ranks all its pairs, an old row its new ones.

    ``near`` (a :class:`HashFilter`: a pair filter asked inside each join block, so that only the
    pairs it passes are ever held, a few a row where the join's pairs may be thousands): only the
    pairs it passes come back; with ``per_row``, it is asked of the pairs among either row's k best
    *of their join block* (a superset of the k best of all: not cut again across blocks, which
    would hold k pairs a row) and the pairs at or above ``all_from`` come back too, the 4th array
    saying which were ranked and passed.

    ``span`` (a cosine, at or above ``threshold`` and ``all_from``): the pairs at or above it come
    back as a spanning forest of theirs (:class:`_Forest`, the strongest pairs first within each
    join block and group), with the same connected components, for a caller that only groups by
    them: s near-identical rows (one image posted s times) give s - 1 pairs, not s (s - 1) / 2,
    which at s = 2,000 was 2M pairs held and stored. A pair ``per_row`` ranks stays whatever
    ``span`` says. ``joined``: pairs (i, j) of rows in one group already (an incremental run's
    stored groups): the forest starts from them, so a new row like s members of one group is one
    pair.

    >>> rng = np.random.default_rng(0)
    >>> v = rng.standard_normal((1000, 64)).astype(np.float32)
    >>> v[10] = v[3] + 0.05 * v[10]  # a near copy of row 3
    >>> v /= np.linalg.norm(v, axis=1, keepdims=True)
    >>> i, j, cos = semantic_pairs(v, 0.95)
    >>> i.tolist(), j.tolist(), bool(cos[0] > 0.99)
    ([3], [10], True)
    """
    src = _source(vectors)
    _large_frees_to_the_os()
    if engine != "local":
        from lakecurate.engines import check_engine

        check_engine(engine, address)
    if assign is not None and assign < 1:
        raise ValueError(f"assign must be at least 1 (clusters a row joins), got {assign}")
    if per_row is not None and per_row < 1:
        raise ValueError(f"per_row must be at least 1 (pairs a row keeps), got {per_row}")
    if span is not None and (span < threshold or (per_row is not None and span < all_from)):
        raise ValueError(f"span {span} must be at least threshold {threshold} and all_from {all_from}")
    cap = None if per_row is None else (int(per_row), float(all_from))
    n = src.n
    fresh = None if new is None else np.asarray(new, bool)
    if fresh is not None and len(fresh) != n:
        raise ValueError(f"new must be a boolean mask over the {n} rows, got {len(fresh)} values")
    if n < 2:
        return _empty(ranked=cap is not None)
    k = max(1, min(n_clusters or default_clusters(n), n))
    if k == 1:
        out = exact_pairs_bruteforce(src.take(np.arange(n)), threshold, progress=progress, cap=cap)
        out = out if cap is None else _ranked(*out[:3], cap)  # ranks over every pair, not a task's
        out = out if near is None else _passing(out, near, cap)
        if fresh is not None:
            out = tuple(a[fresh[out[0]] | fresh[out[1]]] for a in out)
        if span is not None:  # after the new rows' filter: a forest of their pairs
            keep = _Forest(n, span, joined).new_links(*out[:3])
            out = tuple(a[keep | out[3]] if cap is not None else a[keep] for a in out)
        return out
    local_copy = engine == "local" and spill_dir is not None and not isinstance(src, ArrayVectors)
    pile = _Pile(cap, n, rank=near is None, span=span, joined=joined)
    with _partition(src, threshold, n_clusters, assign, seed, pca_dims, spill_dir, progress, local_copy,
                    engine=engine, address=address) as (entries, copy):
        _join_buckets(copy or src, entries, threshold, fresh, progress, engine=engine, address=address, pile=pile,
                      near=near)
    return pile.result()


_FOREST_LOOP = 256  # strong pairs a _Forest call joins in a Python loop; above, scipy's spanning tree


class _Forest:
    """A spanning forest of the pairs at or above ``span`` as they come (:func:`semantic_pairs`'
    ``span``): a pair is kept when it joins two trees, the strongest first within each call, and
    dropped when its rows are joined already, so s near-identical rows give s - 1 pairs, not
    s (s - 1) / 2, and the connected components are those of every pair. Union-find over ``n``
    rows (allocated at the first strong pair), roots found by vectorised pointer jumping.
    ``joined``: pairs (i, j) of rows joined before (an incremental run's stored groups), so that a
    new row like s members of one group is one pair, not s."""

    def __init__(self, n: int, span: float, joined: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        self.n, self.span, self.joined, self.parent = n, float(span), joined, None

    def _roots(self, x: np.ndarray) -> np.ndarray:
        r = self.parent[x]
        while True:
            up = self.parent[r]
            if np.array_equal(up, r):
                break
            r = up
        self.parent[x] = r  # compressed: the next look is one step
        return r

    def new_links(self, i: np.ndarray, j: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Mask of the pairs (i, j, v) that are below ``span`` or join two trees (which they then
        join); a strong pair whose rows are joined already is False."""
        keep = v < self.span
        strong = np.flatnonzero(~keep)
        if not len(strong):
            return keep
        if self.parent is None:
            dtype = np.int32 if self.n < 2**31 else np.int64
            self.parent = (np.arange(self.n, dtype=dtype) if self.joined is None
                           else components(self.n, *self.joined).astype(dtype))  # each row under its component's first
        ri, rj = self._roots(i[strong]), self._roots(j[strong])
        cross = ri != rj
        strong, ri, rj = strong[cross], ri[cross], rj[cross]
        if not len(strong):
            return keep
        if len(strong) <= _FOREST_LOOP:  # a few (most calls): Kruskal by hand, without scipy's ~0.3 ms a call
            up: dict[int, int] = {}

            def root(a: int) -> int:
                while a in up:
                    a = up[a]
                return a
            for k in np.argsort(-v[strong], kind="stable").tolist():
                a, b = root(int(ri[k])), root(int(rj[k]))
                if a != b:
                    up[max(a, b)] = min(a, b)
                    keep[strong[k]] = True
            for a in list(up):
                self.parent[a] = root(a)
            return keep
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components, minimum_spanning_tree

        # The trees as nodes; between two of them the strongest pair only, then their maximum spanning forest.
        nodes, at = np.unique(np.concatenate([ri, rj]), return_inverse=True)
        a, b = np.minimum(at[: len(strong)], at[len(strong):]), np.maximum(at[: len(strong)], at[len(strong):])
        m = len(nodes)
        key = a.astype(np.int64) * m + b
        order = np.lexsort((-v[strong], key))
        first = np.ones(len(order), bool)
        first[1:] = key[order][1:] != key[order][:-1]
        pick = order[first]  # sorted by key
        graph = coo_matrix((2.0 - v[strong][pick].astype(np.float64), (a[pick], b[pick])), shape=(m, m))
        tree = minimum_spanning_tree(graph).tocoo()  # weights 2 - cosine > 0: the strongest pairs
        tree_key = np.minimum(tree.row, tree.col).astype(np.int64) * m + np.maximum(tree.row, tree.col)
        keep[strong[pick[np.searchsorted(key[pick], tree_key)]]] = True
        _, label = connected_components(tree, directed=False)
        _, lead = np.unique(label, return_index=True)
        self.parent[nodes] = nodes[lead[label]]  # each tree under its component's first node
        return keep


class _Pile:
    """The join's pairs as its groups return them, each pair once in the result. With ``cap=(k,
    above)`` they are merged and cut to the pairs where one row is among the other's k most
    similar, or at or above ``above``, whenever they have doubled since the last cut, and each
    row's k-th best value so far (``kth``, only rising) turns away the later pairs below it at both
    ends: what is held stays ~k pairs a row, and the ranks are those over every pair found (a row's
    k best of all are among its k best of each part). Without, they are only merged at the end.
    ``rank=False`` (a join with ``near``: its blocks ranked and filtered their pairs already): a
    cap's 4th array is carried as it comes (a pair met in two clusters is ranked if it was in
    either), and nothing is cut. ``span``: the pairs at or above it are cut to a spanning forest
    as they come (:class:`_Forest`), but for those a cap ranks."""

    def __init__(self, cap: tuple[int, float] | None, n: int, rank: bool = True, span: float | None = None,
                 joined: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        self.cap, self.rank, self.parts, self.held, self.limit = cap, rank, [], 0, _CAP_COMPACT
        self.kth = np.full(n, -np.inf, np.float32) if cap is not None and rank else None
        self.forest = None if span is None else _Forest(n, span, joined)

    def add(self, part: Pairs) -> None:
        linked = None if self.forest is None else self.forest.new_links(*part[:3])  # below span, or a new link
        if self.kth is None:
            part = part if self.cap is not None else part[:3]
            if linked is not None:
                keep = linked | part[3] if self.cap is not None else linked  # type: ignore[misc]
                part = tuple(a[keep] for a in part)  # type: ignore[assignment]
            self.parts.append(part)
            return
        i, j, v = part[:3]
        above = v >= self.cap[1]
        keep = (v >= self.kth[i]) | (v >= self.kth[j]) | (above if linked is None else above & linked)
        i, j, v = i[keep], j[keep], v[keep]
        self.parts.append((i, j, v))
        self.held += len(i)
        if self.held > self.limit:
            self.parts = [self.result()[:3]]
            self.held = len(self.parts[0][0])
            self.limit = max(_CAP_COMPACT, 2 * self.held)

    def result(self) -> Pairs:
        if not self.parts:
            return _empty(ranked=self.cap is not None)
        i, j, v, *flag = _sorted_pairs(*(np.concatenate([p[col] for p in self.parts]) for col in range(len(self.parts[0]))))
        first = np.ones(len(i), bool)
        first[1:] = (i[1:] != i[:-1]) | (j[1:] != j[:-1])  # a pair met in two clusters
        if flag:  # ranked where it was ranked in any of them
            return i[first], j[first], v[first], np.logical_or.reduceat(flag[0], np.flatnonzero(first))  # type: ignore[return-value]
        i, j, v = i[first], j[first], v[first]
        if self.cap is None:
            return i, j, v
        if self.forest is None:
            return _ranked(i, j, v, self.cap, self.kth)  # type: ignore[return-value]
        # the held pairs from span up: a forest's and those a row ranked when they came; a forest of them again
        best = nearest_pairs(i, j, v, self.cap[0], kth=self.kth)
        keep = best | ((v >= self.cap[1]) & _Forest(self.forest.n, self.forest.span, self.forest.joined).new_links(i, j, v))
        return i[keep], j[keep], v[keep], best[keep]  # type: ignore[return-value]


def _passing(part: Pairs, near: "HashFilter", cap: tuple[int, float] | None) -> Pairs:
    """The pairs of ``part`` (i, j, value[, ranked]) that ``near`` passes or keeps
    (:meth:`HashFilter.kept`); with ``cap=(k, above)`` only ranked ones are asked, and those at or
    above ``above`` stay whatever it says, or, with ``every`` searches, where it keeps them (the
    4th array then: ranked and passed)."""
    i, j, v = part[:3]
    if cap is None:
        ok = near(i, j, v) | near.kept(i, j, v)
        return i[ok], j[ok], v[ok]
    ok = np.zeros(len(i), bool)
    at = np.flatnonzero(part[3])
    if len(at):
        ok[at] = near(i[at], j[at], v[at])
    above = v >= cap[1]
    if near.every:
        above[above] = near.kept(i[above], j[above], v[above])
    keep = ok | above
    return i[keep], j[keep], v[keep], ok[keep]  # type: ignore[return-value]


@contextmanager
def _partition(src: VectorSource, threshold: float, n_clusters: int | None, assign: int | None, seed: int,
               pca_dims: int | None, spill_dir: str | None, progress: bool, local_copy: bool = False, *,
               engine: str = "local", address: str | None = None) -> Iterator[tuple["_Filed", "_LocalCopy | None"]]:
    """k-means on a sample, then every row streamed once into its clusters (with ClusterJoin copies
    within the partner radius of ``threshold``): the (row, cluster) entries by bucket, spilled
    under ``spill_dir`` ("auto": a temporary directory when they fill more than one bucket).
    ``local_copy``: the vectors are also copied, as they stream, to a raw file in that directory,
    which the join then gathers from (:class:`_LocalCopy`) instead of reading the source by
    position again."""
    # Train on a sample: the bound holds for any centroids, so better k-means mostly balances
    # the clusters (less work) rather than finding more pairs.
    n = src.n
    cents = _fit_centroids(src, max(1, min(n_clusters or default_clusters(n), n)), seed, pca_dims)
    k = len(cents.centroids)
    m = min(assign or (4 if cents.top is None else _TWO_LEVEL_ASSIGN), k)
    # fp16 storage and rounding: allow norms up to ~1.001 in the partner radius.
    radius = float(np.sqrt(max(2 * (1 - threshold), 0) + 4e-3))
    per_bucket = max(1, _BUCKET_ENTRIES * k // max(1, n * m))  # clusters per bucket
    buckets = -(-k // per_bucket)
    with contextlib.ExitStack() as stack:
        if spill_dir == "auto":
            need = buckets > 1 or local_copy
            spill_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="lakecurate-join-")) if need else None
        copy = stack.enter_context(_LocalCopy(os.path.join(spill_dir, "vectors.bin"), src.d)) if local_copy and spill_dir else None
        entries = _Filed(buckets, spill_dir, "cells", _CELL)
        _assign_rows(src, cents, m, radius, entries, per_bucket, progress, copy, engine=engine, address=address)
        if copy is not None:
            copy.close_writer()
        yield entries, copy


class _LocalCopy:
    """The vectors written, as the assignment pass streams them, to a raw file on local disk, then
    gathered by position with one ``preadv`` a row: ~5x faster than taking rows from a Lance column
    by position (at 1M rows x 512-d float16: 120,000 sorted rows in 0.34 s against 1.57 s for
    100,000), and the source is read once instead of once plus once per group. Disk: the
    column's bytes (1 KiB a row at 512-d float16). Reads, not a memory map: the kernel maps 64 KiB
    around every faulting row, so gathering a group through a map held nearly the whole file in
    the process's resident memory (1.1 GB at 1M rows)."""

    def __init__(self, path: str, d: int) -> None:
        self.path, self.d = path, d
        self.n = 0
        self.dtype: np.dtype | None = None
        self._out = open(path, "wb")
        self._fd: int | None = None

    def write(self, x: np.ndarray) -> None:
        x = np.ascontiguousarray(x)
        if self.dtype is None:
            self.dtype = x.dtype
        self._out.write(x.astype(self.dtype, copy=False).tobytes())
        self.n += len(x)

    def close_writer(self) -> None:
        self._out.close()
        self._fd = os.open(self.path, os.O_RDONLY)

    def take(self, rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows), self.d), self.dtype or np.float32)
        if not len(rows):
            return out
        size = self.d * out.itemsize
        view = out.view(np.uint8).reshape(len(rows), size)
        fd = self._fd
        for k, r in enumerate(np.asarray(rows, np.int64).tolist()):
            os.preadv(fd, [view[k]], r * size)  # into the output row: no intermediate bytes
        return out

    def __enter__(self) -> "_LocalCopy":
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._out.closed:
            self._out.close()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _join_buckets(src: VectorSource, entries: _Filed, threshold: float, fresh: np.ndarray | None,
                  progress: bool, *, engine: str = "local", address: str | None = None,
                  pile: "_Pile", near: "HashFilter | None" = None) -> None:
    """Every bucket's clusters joined into ``pile``, a group of clusters at a time; the next
    group's vectors are read while this one is joined (reads are ~40% of the time on a Lance
    column). On Ray, each group is a task (:func:`join_group_task`). ``near``: each block's pairs
    filtered before they are piled (:func:`_passing`)."""
    bar = None
    if progress:
        from lakecurate.progress import progress_bar

        bar = progress_bar(total=src.n, desc="semantic pairs", unit="row", progress=progress)

    def read(group: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rows = np.unique(group[:, 0])
        return group, rows, src.take(rows)

    if engine == "ray":
        from lakecurate.engines import ray_init, ray_task_map, task_window

        ray = ray_init(address)
        source = ray.put(_source_spec(src))
        new_ref, near_ref = ray.put(fresh), ray.put(near)
        span = None if pile.forest is None else pile.forest.span
        calls = ((at, source, group, threshold, new_ref, pile.cap, near_ref, span)
                 for at, group in enumerate(_entry_groups(entries)))
        window = task_window(ray)  # entries in flight stay bounded
        waiting, turn = {}, 0  # parts piled in the groups' order, as the local join piles them (a forest depends on it)
        for at, own, part in ray_task_map(join_group_task, calls, address=address, retries=2, window=window):
            waiting[at] = part
            while turn in waiting:
                pile.add(waiting.pop(turn))
                turn += 1
            if bar is not None:
                bar.update(own)
        if bar is not None:
            bar.close()
        return

    def join(pending: Future) -> None:
        group = pending.result()
        pile.add(_join_group(*group, threshold, fresh, pile.cap, near, None if pile.forest is None else pile.forest.span))
        if bar is not None:
            bar.update(int((group[0][:, 1] % 2 == 0).sum()))

    with ThreadPoolExecutor(1) as reader:
        pending = None
        for group in _entry_groups(entries):
            ahead = reader.submit(read, group)
            if pending is not None:
                join(pending)
            pending = ahead
        if pending is not None:
            join(pending)
    if bar is not None:
        bar.close()


def _entry_groups(entries: _Filed) -> Iterator[np.ndarray]:
    """Every bucket's entries as (row, key) columns sorted by cluster (own rows first, rows
    ascending), cut into groups."""
    for b in range(entries.buckets):
        got = entries.load(b).view(np.int64).reshape(-1, 2)
        yield from _groups(got[np.argsort(got[:, 1], kind="stable")])


def join_group_task(at: int, source: tuple, group: np.ndarray, threshold: float, fresh: np.ndarray | None,
                    cap: tuple[int, float] | None = None, near: "HashFilter | None" = None,
                    span: float | None = None) -> tuple[int, int, Pairs]:
    """A Ray task of ``semantic_pairs(engine="ray")``: read the ``at``-th group's vectors (by
    position, from the Lance column or the matrix) and join its clusters; (at, own rows of the
    group, its pairs)."""
    rows = np.unique(group[:, 0])
    return at, int((group[:, 1] % 2 == 0).sum()), _join_group(group, rows, _open_source(source).take(rows), threshold, fresh, cap,
                                                               near, span)


def _assign_rows(src: VectorSource, cents: _Centroids, m: int, radius: float, entries: _Filed,
                 per_bucket: int, progress: bool, copy: "_LocalCopy | None" = None, *,
                 engine: str = "local", address: str | None = None) -> None:
    """Stream every row once: its clusters as (row, key = 2 cluster + is_copy) entries, by bucket
    (and the vectors into ``copy``, when given). ``engine="ray"``: a task per _RANGE_ROWS rows
    reads and assigns them (:func:`assign_range_task`); their entries are added in row order, so
    the buckets hold what the local pass gives."""
    bar = None
    if progress:
        from lakecurate.progress import progress_bar

        bar = progress_bar(total=src.n, desc="assign clusters", unit="row", progress=progress)
    if engine == "ray":
        from lakecurate.engines import ordered_map

        spans = [(lo, min(lo + _RANGE_ROWS, src.n)) for lo in range(0, src.n, _RANGE_ROWS)]
        done = ordered_map(assign_range_task, spans, engine="ray", shared=(_source_spec(src), cents, m, radius),
                           address=address)
        for (lo, hi), (rows, key) in zip(spans, done):  # in row order: the local pass's buckets
            _add_entries(entries, rows, key, per_bucket)
            if bar is not None:
                bar.update(hi - lo)
    else:
        for start, x in src.batches(_ASSIGN_BATCH):
            if copy is not None:
                copy.write(x)
            _add_entries(entries, *_entries_of(x, start, cents, m, radius), per_bucket)
            if bar is not None:
                bar.update(len(x))
    if bar is not None:
        bar.close()


def _entries_of(x: np.ndarray, start: int, cents: _Centroids, m: int, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """(row, key) of every cell the rows of ``x`` (rows start, start + 1, ...) join, row by row."""
    import faiss

    def chunk(s: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        faiss.omp_set_num_threads(1)  # per calling thread: the pool already uses every core
        r, c, is_copy = cents.assign(x[s : s + _ASSIGN_CHUNK], m, radius)
        return r + s, c, is_copy

    found = _run(list(range(0, len(x), _ASSIGN_CHUNK)), chunk, False, "")
    rows = np.concatenate([f[0] for f in found]).astype(np.int64) + start
    return rows, np.concatenate([f[1] for f in found]) * 2 + np.concatenate([f[2] for f in found])


def _add_entries(entries: _Filed, rows: np.ndarray, key: np.ndarray, per_bucket: int) -> None:
    cells = np.empty(len(rows), _CELL)
    cells["row"], cells["key"] = rows, key
    entries.add(key // 2 // per_bucket, cells)


def _source_spec(src: VectorSource) -> tuple:
    """What a Ray task needs to read ``src`` itself: a Lance column's spec, or the matrix."""
    return ("lance", src.spec()) if hasattr(src, "spec") else ("array", src)


def _open_source(source: tuple) -> VectorSource:
    kind, what = source
    if kind == "lance":
        from lakecurate.columns import LanceVectors

        return LanceVectors.from_spec(what)
    return what


def assign_range_task(lo: int, hi: int, source: tuple, cents: _Centroids, m: int,
                      radius: float) -> tuple[np.ndarray, np.ndarray]:
    """A Ray task of ``semantic_pairs(engine="ray")``'s assignment pass: rows lo..hi-1 read (from
    the Lance column or the matrix) and assigned to their cells; (rows, keys)."""
    _large_frees_to_the_os()  # in the worker's process
    src = _open_source(source)
    parts = [_entries_of(x, start, cents, m, radius) for start, x in src.batches(_ASSIGN_BATCH, lo, hi)]
    if not parts:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _groups(entries: np.ndarray) -> Iterator[np.ndarray]:
    """Runs of whole clusters with about _GROUP_ENTRIES entries each (a cluster larger than that
    is a group alone)."""
    cluster = entries[:, 1] // 2
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(cluster)) + 1, [len(entries)]])
    lo = 0
    while lo < len(entries):
        at = int(np.searchsorted(bounds, lo + _GROUP_ENTRIES, side="right")) - 1
        hi = int(bounds[at]) if bounds[at] > lo else int(bounds[np.searchsorted(bounds, lo, side="right")])
        yield entries[lo:hi]
        lo = hi


def _join_group(group: np.ndarray, rows: np.ndarray, x: np.ndarray, threshold: float, fresh: np.ndarray | None,
                cap: tuple[int, float] | None = None, near: "HashFilter | None" = None, span: float | None = None) -> Pairs:
    """Join each cluster of a group (entries, its unique rows, their vectors): its own rows with
    every later member (own rows and copies), or, with `fresh`, its new members with every later
    member (new first); ``near``: each block's pairs filtered by it (:func:`_passing`); ``span``: each
    block's pairs at or above it cut to a spanning forest (the join's :class:`_Pile` cuts them across blocks)."""
    local = np.searchsorted(rows, group[:, 0])
    cluster = group[:, 1] // 2
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(cluster)) + 1, [len(group)]])
    tasks = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        if hi - lo < 2:
            continue
        members = local[lo:hi]
        if fresh is None:
            left = int((group[lo:hi, 1] % 2 == 0).sum())  # own rows come first
        else:
            is_new = fresh[group[lo:hi, 0]]
            members = np.concatenate([members[is_new], members[~is_new]])
            left = int(is_new.sum())
        tasks += [(members, r0, min(r0 + _TASK_ROWS, left)) for r0 in range(0, left, _TASK_ROWS)]
    tasks.sort(key=lambda t: -(t[2] - t[1]) * (len(t[0]) - t[1]))

    def join(task: tuple[np.ndarray, int, int]) -> Pairs:
        members, r0, r1 = task
        p, q, *rest = _join_block(x, members, r0, r1, threshold, cap, span)
        out = (rows[members[p]], rows[members[q]], *rest)
        return out if near is None else _passing(out, near, cap)  # type: ignore[arg-type, return-value]

    parts = _run(tasks, join, False, "")
    if not parts:
        return _empty(ranked=cap is not None)
    return tuple(np.concatenate([p[col] for p in parts]) for col in range(len(parts[0])))  # type: ignore[return-value]


# Up to this many rows the k nearest are found exactly (a flat inner-product scan); above it an IVF
# index (4 sqrt(N) lists, KNN_NPROBE searched) keeps the work ~N^1.5.
KNN_EXACT_MAX = 200_000
KNN_NPROBE = 16


def knn_pairs(
    vectors: np.ndarray,
    k: int,
    min_cosine: float = -1.0,
    *,
    new: np.ndarray | None = None,
    exact_max: int = KNN_EXACT_MAX,
    nprobe: int = KNN_NPROBE,
    seed: int = 0,
) -> Pairs:
    """Pairs of each row with its ``k`` nearest other rows whose cosine is >= ``min_cosine``
    (L2-normalised vectors): the candidate pairs of a search that then checks each pair closely
    (geometric verification), where a fixed threshold would give too many or too few per row.

    Up to ``exact_max`` rows the search is exact (faiss flat inner product); above, an IVF index
    with 4 sqrt(N) lists and ``nprobe`` of them searched (approximate: a true neighbour in an
    unsearched list is missed). ``new`` (a boolean mask) asks only for each new row's k nearest
    among all rows, so appending m rows costs ~m/N of a full search. (A full search also pairs an
    old row with a new row that is among the old row's k nearest but not the other way round;
    looking for those would mean searching every old row again.)

    Returns ``(i, j, cosine)`` with i < j, sorted, each pair once.

    >>> v = np.eye(4, dtype=np.float32); v[1] = [0.8, 0.6, 0, 0]
    >>> i, j, cos = knn_pairs(v, 1, 0.5)
    >>> i.tolist(), j.tolist()
    ([0], [1])
    """
    import faiss

    x = _check_vectors(vectors)
    if k < 1:
        raise ValueError(f"k must be at least 1 (neighbours per row), got {k}")
    n, d = x.shape
    if n < 2:
        return _empty()
    x = np.ascontiguousarray(x, dtype=np.float32)
    fresh = np.ones(n, bool) if new is None else np.asarray(new, bool)
    if len(fresh) != n:
        raise ValueError(f"new must be a boolean mask over the {n} rows, got {len(fresh)} values")

    def index_of(rows: np.ndarray) -> "faiss.Index":
        if len(rows) <= exact_max:
            index = faiss.IndexFlatIP(d)
        else:
            lists = max(1, min(int(4 * np.sqrt(len(rows))), len(rows) // 39))
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, lists, faiss.METRIC_INNER_PRODUCT)
            rng = np.random.default_rng(seed)
            train = rows[np.sort(rng.choice(len(rows), min(len(rows), 64 * lists), replace=False))]
            index.train(x[train])
            index.nprobe = nprobe
        for s in range(0, len(rows), 1 << 16):
            index.add(x[rows[s:s + (1 << 16)]])
        return index

    def search(index: "faiss.Index", base: np.ndarray, queries: np.ndarray, kk: int) -> Pairs:
        out_i, out_j, out_v = [], [], []
        for s in range(0, len(queries), 1 << 14):
            q = queries[s:s + (1 << 14)]
            cos, nb = index.search(x[q], kk)
            rows = np.repeat(q, kk)
            cos, nb = cos.ravel(), nb.ravel()
            ok = nb >= 0
            rows, cos, other = rows[ok], cos[ok], base[nb[ok]]
            ok = (other != rows) & (cos >= min_cosine)
            out_i.append(rows[ok]); out_j.append(other[ok]); out_v.append(cos[ok])
        if not out_i:
            return _empty()
        return np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_v).astype(np.float32)

    every = np.arange(n)
    i, j, v = _sorted_pairs(*search(index_of(every), every, np.flatnonzero(fresh), min(k + 1, n)))
    first = np.ones(len(i), bool)
    first[1:] = (i[1:] != i[:-1]) | (j[1:] != j[:-1])
    return i[first], j[first], v[first]


# ---------------------------------------------------------------------------------------------
# Hamming pairs


def _upper_pairs(end: np.ndarray, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """All (p, q) with lo <= p < hi and p < q < end[p]: the pairs inside groups of a sorted array."""
    pos = np.arange(lo, hi)
    count = end[lo:hi] - pos - 1
    left = np.repeat(pos, count)
    first = np.cumsum(count) - count
    right = left + 1 + np.arange(len(left)) - np.repeat(first, count)
    return left, right


def _chunks_of_pairs(end: np.ndarray) -> Iterator[tuple[int, int]]:
    """Split positions into ranges that each generate about _PAIR_CHUNK group pairs."""
    count = np.cumsum(end - np.arange(len(end)) - 1)
    lo = 0
    while lo < len(end):
        base = count[lo - 1] if lo else 0
        hi = max(lo + 1, int(np.searchsorted(count, base + _PAIR_CHUNK, side="right")))
        yield lo, min(hi, len(end))
        lo = hi


def _group_end(sorted_keys: np.ndarray) -> np.ndarray:
    """For each position of a sorted array, the end of its run of equal keys."""
    new = np.flatnonzero(np.diff(sorted_keys)) + 1
    bounds = np.concatenate([new, [len(sorted_keys)]])
    return np.repeat(bounds, np.diff(np.concatenate([[0], bounds])))


def _bands(bits: int, n_bands: int) -> list[tuple[int, int]]:
    """(shift, width) of n_bands contiguous bands covering the bits, widths as equal as possible."""
    widths = [bits // n_bands + (b < bits % n_bands) for b in range(n_bands)]
    return [(sum(widths[:b]), w) for b, w in enumerate(widths)]


def _n_bands(t: int, radius: int) -> int:
    """Fewest bands such that a pair within t differs in <= radius bits in some band (pigeonhole:
    B bands each differing in > radius bits make > B (radius + 1) bits). At least 2 bands, so
    that a band key fits in the 32 bits it is packed into."""
    return max(2, -(-(t + 1) // (radius + 1)))


def _plan(n: int, t: int) -> int | None:
    """The band radius (0 or 2) that costs least for n distinct hashes, or None for brute force.

    Radius 0 is exact band equality: one key per band and hash, t + 1 bands. Radius 2 keys each
    band by itself and its w one-bit flips (two bands within 2 bits share a key), so
    ceil((t + 1) / 3) bands suffice: wider bands, far fewer random collisions, more keys.
    """
    def cost(radius: int) -> float:
        bands = _n_bands(t, radius)
        w = 64 / bands
        keys = bands * n * (1 + w if radius else 1)
        # random pairs sharing a key, times the keys they share (1 + w if equal, 2 if 1-2 bits apart)
        share = (1 + 3 * w + w * (w - 1)) / 2**w if radius else 1 / 2**w
        return keys * 20 + bands * n * n / 2 * share * 10  # ~ns per key sorted / pair checked
    best = min((0, 2), key=cost)
    return best if cost(best) < n * n / 2 * 10 else None


def _near_unique(h: np.ndarray, t: int, band_radius: int | None | Literal["auto"] = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Pairs (u, v), u < v, of *distinct* hashes within distance t, each found once.

    band_radius: 0 or 2 (see _plan), None for brute force, "auto" to let _plan choose.
    """
    n = len(h)
    u_out, v_out = [np.empty(0, np.int64)], [np.empty(0, np.int64)]
    if n < 2 or t == 0:  # distinct hashes are never at distance 0
        return u_out[0], v_out[0]
    radius = _plan(n, t) if band_radius == "auto" else band_radius
    if radius is None or t >= 64:
        end = np.full(n, n)

        def check_all(span: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
            p, q = _upper_pairs(end, *span)
            ok = np.bitwise_count(h[p] ^ h[q]) <= t
            return p[ok], q[ok]

        for p, q in _run(list(_chunks_of_pairs(end)), check_all, False, ""):
            u_out.append(p)
            v_out.append(q)
        return np.concatenate(u_out), np.concatenate(v_out)

    bands = _bands(64, _n_bands(t, radius))
    ids = np.arange(n, dtype=np.uint64)
    n_keys = n * (1 + (64 // len(bands) if radius else 0))
    # Split each band's keys by their top bits so that one task sorts at most ~_KEYS_PER_TASK.
    part_bits = max(0, int(np.ceil(np.log2(max(1, n_keys / _KEYS_PER_TASK)))))

    def band_part(task: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        b, part = task
        shift, width = bands[b]
        mask = np.uint64((1 << width) - 1)
        value = (h >> np.uint64(shift)) & mask
        top = np.uint64(max(0, width - part_bits))
        packed = []
        for f in [0] + ([1 << f for f in range(width)] if radius else []):
            key = value ^ np.uint64(f)
            mine = slice(None) if part_bits == 0 else (key >> top) == np.uint64(part)
            # (key, hash index) packed in one uint64: np.sort is several times faster than argsort.
            packed.append((key[mine] << np.uint64(32)) | ids[mine])
        packed = np.concatenate(packed)
        packed.sort()
        keys = packed >> np.uint64(32)
        rows = (packed & np.uint64(0xFFFFFFFF)).view(np.int64)
        hs = h[rows]  # hashes in key order: the checks below read nearby memory
        end = _group_end(keys)
        found_u, found_v = [np.empty(0, np.int64)], [np.empty(0, np.int64)]
        for lo, hi in _chunks_of_pairs(end):
            p, q = _upper_pairs(end, lo, hi)  # pairs sharing a key
            diff = hs[p] ^ hs[q]
            ok = np.bitwise_count(diff) <= t
            p, q, diff = p[ok], q[ok], diff[ok]
            # Keep each pair once: in the first band where it is within the radius, and there
            # under the smallest of the keys it shares.
            first = np.ones(len(p), bool)
            for s_, w_ in bands[:b]:
                first &= np.bitwise_count((diff >> np.uint64(s_)) & np.uint64((1 << w_) - 1)) > radius
            if radius:
                ub = (hs[p] >> np.uint64(shift)) & mask
                bd = (diff >> np.uint64(shift)) & mask
                low = bd & (~bd + np.uint64(1))  # lowest differing bit, 0 if the bands are equal
                high = bd ^ low  # the other differing bit, if any
                # Equal bands share every key: the smallest is ub minus its top bit (or 0).
                top_bit = np.where(ub > 0, np.uint64(1) << (np.frexp(ub.astype(np.float64))[1] - 1).astype(np.uint64), 0)
                # 1 bit apart they share {u, v}; 2 bits apart {u ^ low, u ^ high}.
                smallest = np.where(bd == 0, ub ^ top_bit, np.where(high == 0, np.minimum(ub, ub ^ low),
                                                                     np.minimum(ub ^ low, ub ^ high)))
                first &= keys[p] == smallest
            found_u.append(rows[p[first]])
            found_v.append(rows[q[first]])
        return np.concatenate(found_u), np.concatenate(found_v)

    tasks = [(b, part) for b in range(len(bands)) for part in range(1 << part_bits)]
    for u_, v_ in _run(tasks, band_part, False, ""):
        u_out.append(u_)
        v_out.append(v_)
    u, v = np.concatenate(u_out), np.concatenate(v_out)
    return np.minimum(u, v), np.maximum(u, v)


def hamming_pairs(
    hashes: np.ndarray,
    max_distance: int = 8,
    *,
    identical: Literal["all", "first"] = "all",
    band_radius: int | None = None,
) -> Pairs:
    """Pairs of rows whose 64-bit hashes (e.g. pHash) differ in at most max_distance bits.

    Multi-index hashing (Norouzi et al. 2012): the 64 bits are cut into bands so that, by the
    pigeonhole principle, a pair within distance t agrees on one band up to ``band_radius`` bits;
    pairs that share a band key are candidates, checked with an exact popcount. ``band_radius=0``
    is the classic t + 1 bands compared exactly; 2 uses ceil((t + 1) / 3) wider bands, each also
    keyed by its one-bit flips; None picks the cheapest for this N and t (2 from a few thousand
    distinct hashes; a plain all-pairs scan when t is too large for bands to prune).

    Repeated hashes are searched once: the result is expanded to rows afterwards. With
    ``identical="all"`` every pair of rows is returned (s identical rows give s (s - 1) / 2
    pairs); ``"first"`` returns fewer pairs with the same connected components: each repeat
    linked to the first row with its hash, and one pair per pair of distinct near hashes.

    Returns ``(i, j, distance)``: int64, int64, uint8 arrays with i < j, sorted by (i, j).

    >>> h = np.array([0b1011, 0b1011, 0b0011, 1 << 40], dtype=np.uint64)
    >>> i, j, dist = hamming_pairs(h, max_distance=1)
    >>> i.tolist(), j.tolist(), dist.tolist()
    ([0, 0, 1], [1, 2, 2], [0, 1, 1])
    """
    h = np.asarray(hashes)
    if h.ndim != 1 or h.dtype not in (np.uint64, np.int64):
        raise ValueError(f"hashes must be a 1-D uint64 array, got {h.dtype} with shape {h.shape}")
    if band_radius not in (None, 0, 2):
        raise ValueError(f"band_radius must be 0, 2 or None, got {band_radius!r}")
    if identical not in ("all", "first"):
        raise ValueError(f"identical must be 'all' or 'first', got {identical!r}")
    h = h.view(np.uint64)
    t = int(max_distance)
    if t < 0:
        return _empty(np.uint8)
    values, first_row, inverse = np.unique(h, return_index=True, return_inverse=True)
    u, v = _near_unique(values, t, "auto" if band_radius is None else band_radius)
    # Rows of each distinct hash, contiguous: by_value[starts[x]:starts[x + 1]] (ascending rows).
    by_value = np.argsort(inverse, kind="stable")
    starts = np.concatenate([[0], np.cumsum(np.bincount(inverse, minlength=len(values)))])
    if identical == "first":
        repeat = np.flatnonzero(first_row[inverse] != np.arange(len(h)))
        i = np.concatenate([first_row[inverse[repeat]], first_row[u]])
        j = np.concatenate([repeat, first_row[v]])
    else:
        # Rows sharing a hash: all pairs within each run of by_value.
        run_end = starts[1:][inverse[by_value]]
        same = [_upper_pairs(run_end, lo, hi) for lo, hi in _chunks_of_pairs(run_end)]
        ii = [by_value[p] for p, _ in same]
        jj = [by_value[q] for _, q in same]
        # Distinct near hashes: every row of one with every row of the other.
        size_u, size_v = np.diff(starts)[u], np.diff(starts)[v]
        pair_of = np.repeat(np.arange(len(u)), size_u * size_v)
        offset = np.arange(len(pair_of)) - np.repeat(np.cumsum(size_u * size_v) - size_u * size_v, size_u * size_v)
        ii.append(by_value[starts[u][pair_of] + offset // size_v[pair_of]])
        jj.append(by_value[starts[v][pair_of] + offset % size_v[pair_of]])
        i, j = np.concatenate(ii), np.concatenate(jj)
    dist = np.bitwise_count(h[i] ^ h[j]).astype(np.uint8)
    return _sorted_pairs(i, j, dist)


def hash_distances(hashes: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Hamming distance of each pair of rows (i, j): the smallest over the rows' hash variants
    (``hashes`` is N or N x variants uint64, e.g. a pHash and its mirror's)."""
    h = np.asarray(hashes).view(np.uint64)
    h = h[:, None] if h.ndim == 1 else h
    hi, hj = h[i].T.copy(), h[j].T.copy()  # gathered once, a variant a row: contiguous
    dist = np.full(len(i), 64, np.uint8)
    for a in range(h.shape[1]):
        for b in range(h.shape[1]):
            np.minimum(dist, np.bitwise_count(hi[a] ^ hj[b]), out=dist)
    return dist


class HashFilter:
    """:func:`semantic_pairs`' ``near`` for hash searches among the join's pairs: a pair passes
    when, for any of ``searches`` (hashes N or N x variants uint64, which rows have one or None for
    all, max distance, min cosine), both rows have hashes, its cosine is at least that search's
    and its hash distance (:func:`hash_distances`) at most its maximum. ``rows``: the hash arrays'
    row of each of the join's positions (None: the same rows). Picklable, for Ray tasks.

    ``every`` (searches like ``searches``) and ``above`` (a cosine) say which other pairs stay
    (:meth:`kept`): semantic dedup's links, every pair from its threshold (``above``) and the
    weaker ones where the hashes are near, so that a clump of rows all weakly alike is not held
    whole before that check. Without ``per_row`` a pair comes back when it passes ``searches`` or is
    kept; with it, ``searches`` are asked of a block's ranked pairs only, and of the pairs from
    ``all_from`` up, those kept stay when there are ``every`` searches (all of them when none)."""

    def __init__(self, searches: list[tuple[np.ndarray, np.ndarray | None, int, float]],
                 rows: np.ndarray | None = None, *,
                 every: "list[tuple[np.ndarray, np.ndarray | None, int, float]] | tuple" = (),
                 above: float = float("inf")) -> None:
        def prepared(searches: "list | tuple") -> list:
            return [(np.asarray(h).view(np.uint64), None if has is None else np.asarray(has, bool), int(t), float(c))
                    for h, has, t, c in searches]
        self.searches, self.every, self.above = prepared(searches), prepared(every), float(above)
        self.rows = None if rows is None else np.asarray(rows, np.int64)

    def __call__(self, i: np.ndarray, j: np.ndarray, v: np.ndarray) -> np.ndarray:
        return self._ask(self.searches, i, j, v, np.zeros(len(i), bool))

    def kept(self, i: np.ndarray, j: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Which pairs stay whatever their rank: at or above ``above``, or passing an ``every`` search."""
        return self._ask(self.every, i, j, v, np.asarray(v >= self.above))

    def _ask(self, searches: list, i: np.ndarray, j: np.ndarray, v: np.ndarray, out: np.ndarray) -> np.ndarray:
        if not searches:
            return out
        if self.rows is not None:
            i, j = self.rows[i], self.rows[j]
        for h, has, t, cosine in searches:
            ask = ~out & (v >= cosine)
            if has is not None:
                ask &= has[i] & has[j]
            at = np.flatnonzero(ask)
            if len(at):
                out[at] = hash_distances(h, i[at], j[at]) <= t
        return out


def clustered_hamming_pairs(
    hashes: np.ndarray,
    vectors: "np.ndarray | VectorSource",
    max_distance: int = 8,
    *,
    cosine: float = 0.85,
    progress: bool = False,
    candidates: tuple[np.ndarray, np.ndarray] | None = None,
    **join: object,
) -> Pairs:
    """Pairs of rows whose hashes differ in at most ``max_distance`` bits *and* whose embeddings
    are within ``cosine``, plus every pair of identical hashes: a linear-time perceptual hash search.

    :func:`hamming_pairs` is exact but costs ~N^2 at 8 bits (random pairs share band keys: 4.8 s
    at 1M hashes, 292 s at 10M). Perceptual duplicates are also near in embedding space, so here
    the candidates are the semantic join's pairs at ``cosine`` (:func:`semantic_pairs`, linear,
    streamed; ``join`` passes its options), kept when their hashes are near (asked inside each join
    block, :class:`HashFilter`: only near pairs are ever held); identical hashes are
    found everywhere by a sort. What it leaves out is hash collisions between images the embedding
    calls different (cosine < ``cosine``): mostly pHash's false positives (flat or uniform
    images). ``hashes``: N uint64, or N x variants (the distance is the smallest over variant
    pairs, :func:`hash_distances`). ``candidates`` (rows i, j): the pairs within ``cosine``
    already found by a semantic join over the same rows (the dedup stage joins once for both
    methods); ``vectors`` is then not read.

    Returns ``(i, j, distance)`` like :func:`hamming_pairs` with ``identical="first"`` (rows
    sharing a hash are each linked to its first row; the groups are the same).

    >>> rng = np.random.default_rng(0)
    >>> v = rng.standard_normal((1000, 64)).astype(np.float32)
    >>> v[10] = v[3] + 0.05 * v[10]  # a near copy of row 3 ...
    >>> v /= np.linalg.norm(v, axis=1, keepdims=True)
    >>> h = rng.integers(0, 2**63, 1000).astype(np.uint64)
    >>> h[10] = h[3] ^ np.uint64(0b111)  # ... whose hash differs in 3 bits
    >>> h[20] = h[500] ^ np.uint64(1)  # a hash collision of two unrelated rows: left out
    >>> [a.tolist() for a in clustered_hamming_pairs(h, v, 8)]
    [[3], [10], [3]]
    """
    h = np.asarray(hashes)
    if h.ndim not in (1, 2) or h.dtype not in (np.uint64, np.int64):
        raise ValueError(f"hashes must be a uint64 array of N or N x variants, got {h.dtype} with shape {h.shape}")
    h = h.view(np.uint64)
    h = h[:, None] if h.ndim == 1 else h
    src = _source(vectors) if candidates is None else None
    if src is not None and src.n != len(h):
        raise ValueError(f"hashes and vectors must have the same rows, got {len(h)} and {src.n}")
    t = int(max_distance)
    if t < 0 or len(h) < 2:
        return _empty(np.uint8)
    v = h.shape[1]
    same_i, same_j, _ = hamming_pairs(h.ravel(), 0, identical="first")  # identical hashes anywhere: a sort
    if candidates is None:
        near = HashFilter([(h, None, t, cosine)])  # asked in each join block: only near pairs are held
        i, j, _cos, *ranked = semantic_pairs(src, cosine, progress=progress, near=near, **join)  # type: ignore[arg-type]
        if ranked:  # join={"per_row": k}: among each row's k best candidates of a join block
            i, j = i[ranked[0]], j[ranked[0]]
    else:
        i, j = (np.asarray(a, np.int64) for a in candidates)
    i = np.concatenate([same_i // v, i])
    j = np.concatenate([same_j // v, j])
    i, j = np.minimum(i, j), np.maximum(i, j)
    dist = hash_distances(h, i, j)
    keep = (i != j) & (dist <= t)
    i, j, dist = _sorted_pairs(i[keep], j[keep], dist[keep])
    first = np.ones(len(i), bool)
    first[1:] = (i[1:] != i[:-1]) | (j[1:] != j[:-1])
    return i[first], j[first], dist[first]


# ---------------------------------------------------------------------------------------------
# Groups


def components(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Group id per row: the smallest row index in its connected component.

    A row with no pair is its own group (its id is its own index), so ``group != np.arange(n)``
    marks the rows that duplicate an earlier one.

    >>> components(5, np.array([3, 1]), np.array([4, 3])).tolist()
    [0, 1, 2, 1, 1]
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    i, j = np.asarray(i, np.int64), np.asarray(j, np.int64)
    if len(i) != len(j):
        raise ValueError(f"i and j differ in length: {len(i)} != {len(j)}")
    if len(i) and (min(i.min(), j.min()) < 0 or max(i.max(), j.max()) >= n):
        raise ValueError(f"pair indices must lie in [0, {n})")
    graph = coo_matrix((np.ones(len(i), np.int8), (i, j)), shape=(n, n))
    _, label = connected_components(graph, directed=False)
    # The first row carrying each label is the smallest row of that component.
    _, first = np.unique(label, return_index=True)
    return first[label]


# --------------------------------------------------------------------------- near-duplicate captions
_NON_WORD = re.compile(r"[\W_]+")
_CAPTION_CHUNK = 4096  # captions shingled and signed at once, between two progress updates ...
_CAPTION_CHARS = 1 << 22  # ... or fewer, as long as they hold this many characters (~40 bytes each)
_BUCKET_ALL = 8  # a band bucket of up to this many captions proposes all its pairs ...
_BUCKET_LEADS = 16  # ... a larger one pairs every member with its this many captions of fewest shingles
_VERIFY_CHUNK = 1 << 17  # candidate pairs whose exact Jaccard is computed at once
_SHINGLE_BITS = 30  # hashed shingles: sparse-matrix columns fit int32 indices
_SIGN_ROWS = 1 << 16  # captions read, shingled and signed by one call (a Ray task: ~40 MiB back)
_PART_ENTRIES = 1 << 21  # band entries (a caption's key in one band, 16 bytes) a partition holds, about
_ADD_ENTRIES = 1 << 20  # band entries made and filed at once
_RANGE_CAPTIONS = 1 << 16  # the verified pairs are filed by ranges of this many captions
_SLICE_ENTRIES = 1 << 17  # a partition's sorted entries paired this many at a time (whole buckets)
_ENTRY = np.dtype([("key", "<u8"), ("size", "<u4"), ("pos", "<u4")])  # band << 32 | key; shingles; caption


def shingles(text: str, k: int = 5) -> set[str]:
    """Character ``k``-grams of the caption lower-cased with punctuation turned into spaces.

    >>> sorted(shingles("A  dog!", 3))
    [' do', 'a d', 'dog']
    """
    s = _normalised(text)
    return {s[i:i + k] for i in range(max(1, len(s) - k + 1))} if s else set()


def _normalised(text: str | None) -> str:
    return _NON_WORD.sub(" ", text.lower()).strip() if text else ""


def _mix64(h: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: every input bit moves every output bit."""
    h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


def _hashed_shingles(texts: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each text's ``k``-character windows (a text shorter than ``k`` is one window, padded) hashed
    to ``_SHINGLE_BITS`` bits: (count a text, its sorted distinct hashes, concatenated) -- the
    ``shingles`` sets, 4 bytes a shingle instead of a Python string each."""
    texts = [t.ljust(k, "\0") for t in texts]
    length = np.fromiter(map(len, texts), np.int64, len(texts))
    code = np.frombuffer("".join(texts).encode("utf-32-le"), np.uint32).astype(np.uint64)
    windows = length - k + 1
    first = np.cumsum(windows) - windows  # each text's first window among all windows
    start = np.repeat(np.cumsum(length) - length - first, windows) + np.arange(int(windows.sum()))
    h = np.zeros(len(start), np.uint64)
    for t in range(k):
        h = h * np.uint64(0x100000001B3) + code[start + t]
    text_of = np.repeat(np.arange(len(texts), dtype=np.uint64), windows)
    keys = np.unique((text_of << np.uint64(32)) | (_mix64(h) >> np.uint64(64 - _SHINGLE_BITS)))
    count = np.bincount((keys >> np.uint64(32)).astype(np.int64), minlength=len(texts))
    return count, (keys & np.uint64(0xFFFFFFFF)).astype(np.uint32)


def _band_keys(count: np.ndarray, hashed: np.ndarray, coef: np.ndarray, rows_per_band: int) -> np.ndarray:
    """MinHash band keys, one row a text: the least of each multiply-shift hash over its shingles,
    ``rows_per_band`` of them folded into a 32-bit key a band (two texts with equal values share
    the key; unequal ones share it by chance 2^-32 of the time, and the exact Jaccard drops them)."""
    start = np.cumsum(count) - count
    wide = hashed.astype(np.uint64)
    keys = np.empty((len(count), len(coef) // rows_per_band), np.uint32)
    for band in range(keys.shape[1]):
        key = np.zeros(len(count), np.uint64)
        for a, b in coef[band * rows_per_band:(band + 1) * rows_per_band]:
            low = np.minimum.reduceat(((a * wide + b) >> np.uint64(32)).astype(np.uint32), start)
            key = _mix64(key * np.uint64(0x100000001B3) + low)
        keys[:, band] = key >> np.uint64(32)
    return keys


def _band_candidates(key: np.ndarray, size: np.ndarray, pos: np.ndarray | None = None) -> np.ndarray:
    """Pairs of captions sharing a band key, packed ``lo << 32 | hi`` (caption positions ``pos``,
    default 0..n-1), sorted and distinct: all the pairs of a bucket of up to ``_BUCKET_ALL``
    captions; in a larger one each member with the bucket's ``_BUCKET_LEADS`` captions of fewest
    shingles (a template's plainest fillings, the captions most of its members are near; ties by
    position: a bucket's entries must come in position order), so a caption is proposed at most
    max(both) times a band, whatever N. ``key`` may carry the band in its high bits (a partition
    of every band's entries: a bucket is one band's key)."""
    pos = np.arange(len(key), dtype=np.int64) if pos is None else pos
    # one stable sort: band (8 bits), key (32), shingles (24, larger counted as 2^24 - 1); ties in
    # the order given (a bucket's entries come in position order)
    short = np.minimum(np.asarray(size, np.uint64), np.uint64((1 << 24) - 1))
    order = np.argsort((np.asarray(key, np.uint64) << np.uint64(24)) | short, kind="stable")
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(key[order])) + 1, [len(key)]])
    bucket = np.repeat(np.diff(bounds), np.diff(bounds))  # the size of each position's bucket
    start = np.repeat(bounds[:-1], np.diff(bounds))
    end = start + bucket
    left, right = [], []
    small = np.flatnonzero((bucket > 1) & (bucket <= _BUCKET_ALL))
    for d in range(1, _BUCKET_ALL):
        small = small[small + d < end[small]]
        left.append(order[small]), right.append(order[small + d])
    big = np.flatnonzero(bucket > _BUCKET_ALL)
    for lead in range(_BUCKET_LEADS):
        big = big[big - start[big] > lead]
        left.append(order[start[big] + lead]), right.append(order[big])
    p = pos[np.concatenate(left)].astype(np.uint64)
    q = pos[np.concatenate(right)].astype(np.uint64)
    packed = np.sort((np.minimum(p, q) << np.uint64(32)) | np.maximum(p, q))
    return packed[np.concatenate([[True], packed[1:] != packed[:-1]])] if len(packed) else packed


def _unpacked(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows (lo, hi) of pairs packed ``lo << 32 | hi``."""
    return (packed >> np.uint64(32)).astype(np.int64), (packed & np.uint64(0xFFFFFFFF)).astype(np.int64)


class _UniquePairs:
    """Packed pairs with a value, each pair once: added pairs are merged into the distinct ones
    whenever they outnumber them (a pair found again is kept once; the pile stays within ~2x the
    distinct pairs, and the merges cost O(log) sorts of them)."""

    def __init__(self) -> None:
        self.keys, self.values = np.empty(0, np.uint64), np.empty(0, np.float32)
        self.new: list[tuple[np.ndarray, np.ndarray]] = []
        self.pending = 0

    def add(self, keys: np.ndarray, values: np.ndarray) -> None:
        self.new.append((keys, values))
        self.pending += len(keys)
        if self.pending > max(len(self.keys), _VERIFY_CHUNK):
            self.merged()

    def merged(self) -> tuple[np.ndarray, np.ndarray]:
        if self.new:
            keys = np.concatenate([self.keys, *(k for k, _ in self.new)])
            values = np.concatenate([self.values, *(v for _, v in self.new)])
            self.keys, first = np.unique(keys, return_index=True)
            self.values, self.new, self.pending = values[first], [], 0
        return self.keys, self.values


def _shingle_matrix(size: np.ndarray, hashed: np.ndarray, compact: bool = False) -> "csr_matrix":
    """The hashed shingle sets (:func:`_hashed_shingles`: a count a caption, their sorted hashes)
    as one sparse matrix, a row a caption: columns the 2^_SHINGLE_BITS hash values and uint8 ones
    (what :func:`_jaccard` merges), or with ``compact`` the distinct shingles numbered and int32
    ones, so that a product of two such matrices counts the common shingles of every pair."""
    import scipy.sparse

    indptr = np.concatenate([[0], np.cumsum(size)])
    if compact:
        column, at = np.unique(hashed, return_inverse=True)
        out = scipy.sparse.csr_matrix((np.ones(len(at), np.int32), at.astype(np.int32), indptr),
                                      shape=(len(size), len(column)))
    else:
        out = scipy.sparse.csr_matrix((np.ones(len(hashed), np.uint8), hashed.astype(np.int32), indptr),
                                      shape=(len(size), 1 << _SHINGLE_BITS))
    out.has_sorted_indices = True  # sorted a caption, and numbering the distinct ones keeps their order
    return out


def _jaccard(sets: "csr_matrix", size: np.ndarray, p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Exact Jaccard of the hashed shingle sets of rows p and q (a sorted merge per pair, in C)."""
    inter = np.diff(sets[p].multiply(sets[q]).indptr)  # the product keeps the shingles both have
    return inter / (size[p] + size[q] - inter)


def _gathered(sets: tuple[np.ndarray, np.ndarray], pos: np.ndarray) -> tuple["csr_matrix", np.ndarray]:
    """The shingle sets of captions ``pos`` as a matrix, a row each (what :func:`_jaccard` takes),
    and their sizes: the hashes gathered from ``sets`` = (offsets, hashes), a memory map on disk or
    arrays (:class:`_ShingleSets`)."""
    offsets, hashed = sets
    lo = offsets[pos]
    size = offsets[pos + 1] - lo
    first = np.cumsum(size) - size
    at = np.repeat(lo - first, size) + np.arange(int(size.sum()), dtype=np.int64)
    return _shingle_matrix(size, np.asarray(hashed[at])), size


class _ShingleSets:
    """The captions' hashed shingle sets by position, added as the sign pass makes them: in memory,
    or appended to a raw file under ``spill_dir`` and read back through a memory map (the exact
    Jaccard gathers random captions); :meth:`release` lets the map's pages go from this process
    (they stay in the page cache), so what it holds is what one partition touched. ``sets()``:
    (offsets, hashes), offsets a caption's first hash (int64, n + 1)."""

    def __init__(self, spill_dir: str | None) -> None:
        self.path = None if spill_dir is None else os.path.join(spill_dir, "shingles.bin")
        self._out = None if self.path is None else open(self.path, "wb")
        self.counts: list[np.ndarray] = []
        self.parts: list[np.ndarray] = []
        self._map: np.ndarray | None = None

    def add(self, count: np.ndarray, hashed: np.ndarray) -> None:
        self.counts.append(np.asarray(count, np.int64))
        if self._out is None:
            self.parts.append(hashed)
        else:
            self._out.write(np.asarray(hashed, np.uint32).tobytes())

    def sets(self) -> tuple[np.ndarray, np.ndarray]:
        offsets = np.concatenate([[0], np.cumsum(np.concatenate(self.counts))]) if self.counts else np.zeros(1, np.int64)
        self.counts = []
        if self._out is None:
            hashed = np.concatenate(self.parts) if self.parts else np.empty(0, np.uint32)
            self.parts = []
            return offsets, hashed
        self._out.close()
        self._map = np.memmap(self.path, np.uint32, mode="r") if offsets[-1] else np.empty(0, np.uint32)
        return offsets, self._map

    def release(self) -> None:
        mm = getattr(self._map, "_mmap", None)
        if mm is not None and hasattr(mm, "madvise"):
            import mmap

            mm.madvise(mmap.MADV_DONTNEED)  # clean file pages: dropped from this process, read again on need

    def close(self) -> None:
        if self._out is not None and not self._out.closed:
            self._out.close()
        self._map = None
        if self.path is not None and os.path.exists(self.path):
            os.remove(self.path)


def _file_band_keys(entries: _Filed, keys: np.ndarray, size: np.ndarray, first: int) -> None:
    """Captions first, first + 1, ...'s band keys (a row a caption) filed as (band << 32 | key,
    shingles, position) entries by partition: a hash of the bucket, so a band bucket lies in one
    partition and each partition is paired alone; _ADD_ENTRIES made at a time (their temporary
    arrays stay small beside what is held)."""
    n, bands = keys.shape
    step = max(1, _ADD_ENTRIES // max(1, bands))
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        e = np.empty((hi - lo) * bands, _ENTRY)
        e["key"] = ((np.arange(bands, dtype=np.uint64) << np.uint64(32))[None, :] | keys[lo:hi].astype(np.uint64)).ravel()
        e["size"] = np.repeat(np.minimum(size[lo:hi], 0xFFFFFFFF).astype(np.uint32), bands)
        e["pos"] = np.repeat(np.arange(first + lo, first + hi, dtype=np.uint32), bands)
        entries.add((_mix64(e["key"]) % np.uint64(entries.buckets)).astype(np.int64), e)


class TextSource(Protocol):
    """Captions streamed in batches (a list: :class:`TextList`; a Lance column:
    :class:`lakecurate.columns.LanceTexts`, which a Ray task reopens from its ``spec()``)."""

    n: int

    def batches(self, size: int, lo: int = 0, hi: int | None = None) -> Iterator[tuple[int, list]]:
        """(first row, the rows' texts or None) for rows lo..hi-1, in order."""
        ...


class TextList:
    """Captions in a list as a :class:`TextSource`."""

    def __init__(self, texts: list) -> None:
        self.texts, self.n = texts, len(texts)

    def batches(self, size: int, lo: int = 0, hi: int | None = None) -> Iterator[tuple[int, list]]:
        hi = self.n if hi is None else min(hi, self.n)
        for s in range(lo, hi, size):
            yield s, self.texts[s:min(s + size, hi)]


def _open_texts(source: "TextSource | tuple") -> TextSource:
    if isinstance(source, tuple):  # a Lance column's spec
        from lakecurate.columns import LanceTexts

        return LanceTexts.from_spec(source)
    return source


def _signed(texts: list[str], k: int, coef: np.ndarray, rows_per_band: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(shingles a text, their hashes concatenated, band keys: a row a text) of normalised,
    non-empty texts, _CAPTION_CHUNK at a time, fewer when they are long (_CAPTION_CHARS)."""
    chars = np.cumsum([len(t) + k for t in texts])
    counts, hashed, keys = [], [], []
    s = 0
    while s < len(texts):
        before = int(chars[s - 1]) if s else 0
        e = min(s + _CAPTION_CHUNK, max(s + 1, int(np.searchsorted(chars, before + _CAPTION_CHARS, "right"))))
        count, h = _hashed_shingles(texts[s:e], k)
        counts.append(count), hashed.append(h), keys.append(_band_keys(count, h, coef, rows_per_band))
        s = e
    if not counts:
        return np.empty(0, np.int64), np.empty(0, np.uint32), np.empty((0, len(coef) // rows_per_band), np.uint32)
    return np.concatenate(counts), np.concatenate(hashed), np.concatenate(keys)


def sign_range_task(lo: int, hi: int, source: "TextSource | tuple", k: int, coef: np.ndarray,
                    rows_per_band: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Captions lo..hi-1 read from ``source`` (a text source, or a Lance column's spec), normalised,
    shingled and signed: (the rows with text, shingles a row, their hashes, band keys). A step of
    :func:`caption_pairs` (a Ray task with ``engine="ray"``)."""
    rows, texts = [], []
    for start, batch in _open_texts(source).batches(_SIGN_ROWS, lo, hi):
        for r, t in enumerate(batch):
            t = _normalised(t)
            if t:
                rows.append(start + r)
                texts.append(t)
    return (np.array(rows, np.int64), *_signed(texts, k, coef, rows_per_band))


def band_pairs_task(entries: np.ndarray, threshold: float, offsets: np.ndarray,
                    hashed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One partition's band entries, sorted by bucket and cut into slices of about _SLICE_ENTRIES
    (whole buckets; buckets of one caption dropped), each slice paired (:func:`_band_candidates`,
    each candidate once) and its candidates' exact Jaccard computed _VERIFY_CHUNK at a time, the
    sets of the slice's captions gathered once: (the pairs at or above ``threshold`` packed
    ``lo << 32 | hi``, their Jaccard as float32). A step of :func:`caption_pairs` (a Ray task with
    ``engine="ray"``)."""
    order = np.argsort(entries["key"], kind="stable")  # positions stay ascending within a bucket
    entries = entries[order]
    edges = np.flatnonzero(entries["key"][1:] != entries["key"][:-1]) + 1
    sizes = np.diff(np.concatenate([[0], edges, [len(entries)]]))
    entries = entries[np.repeat(sizes > 1, sizes)]  # a bucket of one caption pairs nothing
    key = entries["key"]
    bounds = np.concatenate([[0], np.cumsum(sizes[sizes > 1])])  # the kept buckets' edges
    packed, values = [np.empty(0, np.uint64)], [np.empty(0, np.float32)]
    lo = 0
    while lo < len(key):
        hi = int(bounds[np.searchsorted(bounds, lo + _SLICE_ENTRIES, "right") - 1])  # whole buckets ...
        if hi <= lo:  # ... but a bucket larger than a slice is a slice alone
            hi = int(bounds[np.searchsorted(bounds, lo, "right")])
        part = entries[lo:hi]
        rows = np.unique(part["pos"]).astype(np.int64)  # the slice's captions: their sets gathered once
        sets, size = _gathered((offsets, hashed), rows)
        cand = _band_candidates(part["key"], part["size"], part["pos"].astype(np.int64))
        for c in range(0, len(cand), _VERIFY_CHUNK):
            chunk = cand[c:c + _VERIFY_CHUNK]
            p, q = _unpacked(chunk)
            jac = _jaccard(sets, size, np.searchsorted(rows, p), np.searchsorted(rows, q))
            keep = jac >= threshold
            packed.append(chunk[keep]), values.append(jac[keep].astype(np.float32))
        lo = hi
    packed, first = np.unique(np.concatenate(packed), return_index=True)  # a pair met in two slices: once
    return packed, np.concatenate(values)[first]


_LINKS = np.dtype([("pair", "<u8"), ("jac", "<f4")])  # a verified pair (lo << 32 | hi positions) and its Jaccard
_ADJ = np.dtype([("other", "<u4"), ("jac", "<f4")])  # a caption's verified partner


def _by_range(n: int, spill_dir: str | None, name: str, dtype: np.dtype) -> _Filed:
    """Records filed by range of captions, _RANGE_CAPTIONS positions a bucket."""
    return _Filed(max(1, -(-n // _RANGE_CAPTIONS)), spill_dir, name, dtype)


def _star_groups(n: int, links: _Filed, spill_dir: str | None) -> Pairs:
    """Star groups over the verified pairs (``links``: (pair, Jaccard) records filed by range of
    their lower caption, a pair possibly more than once): the most connected caption leads first,
    a caption not yet grouped takes every not-yet-grouped caption it is paired with; a member is
    never linked on (no chains). Out of core: each range's records are made distinct as they are
    read and filed again under both captions, then each range's partners are sorted and appended
    to one array of partners by caption (under ``spill_dir``: a file read through a memory map), so
    what is held a caption is its degree, its first partner's offset and whether it is grouped (13
    bytes), beside a range's pairs. Returns the links of leaders and members as (lower, higher,
    Jaccard) positions, sorted."""
    degree = np.zeros(n, np.int32)
    adjacent = _by_range(n, spill_dir, "adjacent", np.dtype([("row", "<u4"), *_ADJ.descr]))
    for r in range(links.buckets):
        pile = _UniquePairs()  # a pair found in several partitions: once (merged as it is read)
        for got in links.chunks(r):
            pile.add(got["pair"], got["jac"])
        pair, jac = pile.merged()
        del pile
        i, j = _unpacked(pair)
        for side in (i, j):
            at, count = np.unique(side, return_counts=True)
            degree[at] += count.astype(np.int32)
        for a, b in ((i, j), (j, i)):
            rec = np.empty(len(a), adjacent.dtype)
            rec["row"], rec["other"], rec["jac"] = a, b, jac
            adjacent.add(a // _RANGE_CAPTIONS, rec)
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(degree, out=offsets[1:])
    path = None if spill_dir is None else os.path.join(spill_dir, "partners.bin")
    parts = []
    with contextlib.ExitStack() as stack:
        out = None if path is None else stack.enter_context(open(path, "wb"))
        adjacent.flush()
        for r in range(adjacent.buckets):
            got = adjacent.load(r)
            got = got[np.lexsort((got["other"], got["row"]))]
            rec = np.empty(len(got), _ADJ)
            rec["other"], rec["jac"] = got["other"], got["jac"]
            got = rec
            if out is None:
                parts.append(got)
            else:
                got.tofile(out)
    if path is None:
        partners = np.concatenate(parts) if parts else np.empty(0, _ADJ)
    else:
        partners = np.memmap(path, _ADJ, mode="r") if offsets[-1] else np.empty(0, _ADJ)
    grouped = np.zeros(n, bool)
    out_i, out_j, out_v = [], [], []
    linked = np.flatnonzero(degree)
    for r in linked[np.lexsort((linked, -degree[linked]))].tolist():
        if grouped[r]:
            continue
        grouped[r] = True
        near = np.asarray(partners[offsets[r]:offsets[r + 1]])
        free = ~grouped[near["other"]]
        if free.any():
            grouped[near["other"][free]] = True
            out_i.append(np.full(int(free.sum()), r)), out_j.append(near["other"][free].astype(np.int64))
            out_v.append(near["jac"][free])
    del partners
    if path is not None:
        os.remove(path)
    if not out_i:
        return _empty(np.float64)
    return _sorted_pairs(np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_v).astype(np.float64))


def caption_pairs(captions: "list[str | None] | TextSource", threshold: float, *, k: int = 5, num_perm: int = 256,
                  seed: int = 1, progress: bool | None = False, spill_dir: str | None = "auto", engine: str = "local",
                  address: str | None = None) -> Pairs:
    """Near-duplicate captions as star groups: banded MinHash proposes candidates at a lower
    Jaccard, the exact Jaccard of the (hashed) shingle sets decides, and rows are taken by how many
    captions lie within ``threshold`` of them (most first): a row not yet grouped leads a group of
    every not-yet-grouped caption within ``threshold`` of *it*. Pairs are the links of leaders and
    members (lower row, higher row, Jaccard); a member is never linked on, so there are no chains
    ("a black dog runs" ~ "a black dog swims" ~ "a brown dog swims" stays apart) and a template
    ("Stock photo of X, royalty free") gathers the captions that share it with its leader.

    The bands are datasketch's optimum for Jaccard ``threshold - 0.15`` within ``num_perm`` hash
    values (85 bands of 3 at the default 0.35: a pair at 0.35 meets in some band with probability
    0.976, and three values a key keep the buckets of common phrases smaller than two would, which
    is what the rule below needs to find a pair). **Linear**: a band bucket of more than
    ``_BUCKET_ALL`` captions (common phrases of natural captions, a template's fillings) pairs each
    member only with its ``_BUCKET_LEADS`` (16) captions of fewest shingles instead of with all, so
    a caption is verified at most bands x 16 times whatever N (1,360 at the default), and the
    shingle sets are 4-byte hashes (the exact Jaccard is a sorted merge in C). Two captions that
    meet only in large buckets may stay apart: ``scripts/bench_scale.py --only minhash`` measures
    the pairs found against the exact ones (docs/benchmarks.md).

    **Out of core**: ``captions`` is a list or a :class:`TextSource` (a Lance column,
    :class:`~lakecurate.columns.LanceTexts`), read _SIGN_ROWS rows at a time and signed; a
    caption's band keys become entries filed by a hash of their bucket into partitions of about
    _PART_ENTRIES entries, and its shingle hashes go to one array by position; under
    ``spill_dir`` ("auto": a temporary directory when there is more than one partition; None: in
    memory) both are files, the hashes read back through a memory map. Each partition is then
    paired and verified alone (a band bucket lies in one partition), so what is held is a
    partition's entries and candidates, not every caption's keys; the verified pairs (each once)
    and the star groups over them are held whole. The pairs are those of an in-memory run.

    ``engine="ray"``: each range of rows is signed by a Ray task (which reads its captions itself
    from a Lance column's spec, or gets the list from the object store) and each partition is paired
    and verified by a task, the shingle hashes shared through the object store; the pairs are the
    local engine's. ``progress``: a bar over the rows, read then banded.

    >>> i, j, jac = caption_pairs(["Stock photo of a red car, royalty free", "a dog runs",
    ...                            "Stock photo of a blue car, royalty free", None], 0.5)
    >>> i.tolist(), j.tolist(), jac.round(2).tolist()
    ([0], [2], [0.63])
    """
    from datasketch import MinHashLSH

    from lakecurate.engines import check_engine, ordered_map
    from lakecurate.progress import progress_bar

    check_engine(engine)
    lsh = MinHashLSH(threshold=max(0.05, threshold - 0.15), num_perm=num_perm)  # only its (bands, rows)
    if lsh.b > 256:  # a band's number is 8 bits of the sort key in _band_candidates
        raise ValueError(f"caption_pairs takes at most 256 bands, got {lsh.b} (num_perm={num_perm}): use fewer values")
    coef = np.random.default_rng(seed).integers(1, 1 << 63, size=(lsh.b * lsh.r, 2), dtype=np.uint64) | np.uint64(1)
    src = captions if hasattr(captions, "batches") else TextList(list(captions))
    n = src.n
    if n >= 1 << 32:
        raise ValueError(f"caption_pairs takes fewer than 2^32 captions (pairs are packed in 64 bits), got {n:,}")
    parts = max(1, -(-n * lsh.b // _PART_ENTRIES))
    source = src.spec() if hasattr(src, "spec") else src
    bar = progress_bar(total=2 * n, desc="minhash captions (read, then banded)", unit="caption", progress=progress)
    with contextlib.ExitStack() as stack:
        if spill_dir == "auto":
            spill_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="lakecurate-minhash-")) if parts > 1 else None
        store = _ShingleSets(spill_dir)
        stack.callback(store.close)
        entries = _Filed(parts, spill_dir, "band", _ENTRY)
        rows, signed = [], 0
        spans = [(lo, min(lo + _SIGN_ROWS, n)) for lo in range(0, n, _SIGN_ROWS)]
        for (lo, hi), (got, count, hashed, keys) in zip(spans, ordered_map(
                sign_range_task, spans, engine=engine, shared=(source, k, coef, lsh.r), address=address)):
            _file_band_keys(entries, keys, count, signed)
            store.add(count, hashed)
            rows.append(got)
            signed += len(got)
            bar.update(hi - lo)
        entries.flush()
        rows = np.concatenate(rows) if rows else np.empty(0, np.int64)
        if len(rows) < 2:
            bar.update(n)
            bar.close()
            return _empty(np.float64)
        offsets, hashed = store.sets()
        links = _by_range(len(rows), spill_dir, "links", _LINKS)
        calls = ((entries.load(p),) for p in range(parts))
        done = ordered_map(band_pairs_task, calls, engine=engine, shared=(threshold, offsets, hashed), address=address)
        for p, (packed, jac) in enumerate(done):
            rec = np.empty(len(packed), _LINKS)
            rec["pair"], rec["jac"] = packed, jac
            links.add((packed >> np.uint64(32)).astype(np.int64) // _RANGE_CAPTIONS, rec)
            store.release()
            bar.update(n * (p + 1) // parts - n * p // parts)
        bar.close()
        links.flush()
        del offsets, hashed
        store.close()
        i, j, jac = _star_groups(len(rows), links, spill_dir)
    return rows[i], rows[j], jac
