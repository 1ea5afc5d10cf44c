"""How a row finds its nearest centroids at 10M-row scale (issue 20): what the semantic join's
recall and time per row are made of, and the alternatives tried.

At N = 10M the join keeps ~256 rows a cluster (``neardup.default_clusters``: k = 39,062), so each
row must find its ``assign`` = 4 nearest of ~39K centroids on 64 principal axes. This script fits
the join's own centroids (``neardup._fit_centroids``, two levels: ~198 top lists) on the first
655,360 rows of ``bench_scale``'s 10M generator, takes the next 65,536 rows (a chunk with 5% planted
near copies at cosine 0.95-0.996 of rows of the same chunk) as queries, and measures, on one thread
in one run:

- time per query row, against the exact search (one BLAS scan of every centroid) in the same run;
- ``top-4 exact``: rows whose 4 nearest centroids are found exactly;
- ``pairs found``: planted pairs (cosine >= 0.95 after float16) the join would find, i.e. one row's
  own cluster is among the cells the other joins (ClusterJoin copies within the partner radius);
  this is what bounds the semantic join's recall.

Variants: the two-level search with 16/32/48 probed lists (the join's own, ``_Centroids.search``),
the exact search with ``assign`` 4..8, copies chosen by bisector distance instead of centroid
distance, sub-centroids filed in their r nearest top lists (spill), and HNSW (faiss) over the centroids.

    python scripts/bench_centroid_search.py            # ~5 min here
    python scripts/bench_centroid_search.py --kernel   # the two-level search against the one it replaced
    python scripts/bench_centroid_search.py --more     # ~1.3 min here: one-direction copies, a multi-index, cells by bisector, a cell graph

``--more``: what was measured against the growth at 10M after the kernel (each kept out):
copies into one direction only (a row copied only into its cells numbered below its own), an inverted
multi-index (two k-means of half the axes, the cells their products), the copies chosen by
bisector among a row's 8 nearest cells (how many cells the same recall then takes), and a coarser
two-level search refined on a graph of the cells (each cell's 24 nearest: one batched step of a
graph walk from the row's 2 nearest found).

``--kernel``: ``_Centroids.search`` (pass 1 bounds each row's m-th distance, pass 2 keeps what is
within it from one BLAS product a block) against the search before it (one ``faiss.knn`` a top
list: its top-k heap cost as much as the product), on the same centroids and rows, old and new
alternating, 3 times each, m = 5 and 6, then in calls of ``_ASSIGN_CHUNK`` rows as the join makes them.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one thread: time per row, as each join worker has
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from bench_scale import chunks  # noqa: E402

N = 10_000_000
TRAIN_CHUNKS = 10
THRESHOLD = 0.95


def data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(training rows, query rows, planted pairs (a, b) as query positions)."""
    parts = []
    for i, (v, dup, src) in enumerate(chunks(N)):
        parts.append((v.astype(np.float32), dup, src))
        if i == TRAIN_CHUNKS:
            break
    x = np.concatenate([p[0] for p in parts[:TRAIN_CHUNKS]])
    q, dup, src = parts[TRAIN_CHUNKS]
    first = TRAIN_CHUNKS * len(parts[0][0])
    a, b = src - first, dup - first
    ok = (q[a] * q[b]).sum(1) >= THRESHOLD
    return x, q, a[ok], b[ok]


def pairs_found(cents, d: np.ndarray, nn: np.ndarray, a: np.ndarray, b: np.ndarray, radius: float,
                lower_only: bool = False, centroids: np.ndarray | None = None) -> float:
    """Planted pairs (a, b) the join would find from these cells. ``lower_only``: a row copied only
    into its cells numbered below its own (one direction). ``centroids``: the cells' own (default
    the join's)."""
    from lakecurate.neardup import _with_copies

    r, c, is_copy = _with_copies(cents.centroids if centroids is None else centroids, d.copy(), nn.copy(), radius)
    own = nn[:, 0]
    if lower_only:
        keep = ~is_copy | (c < own[r])
        r, c = r[keep], c[keep]
    joined = set(zip(r.tolist(), c.tolist()))
    return float(np.mean([(x, own[y]) in joined or (y, own[x]) in joined for x, y in zip(a.tolist(), b.tolist())]))


def more(cents, z: np.ndarray, x: np.ndarray, a: np.ndarray, b: np.ndarray, radius: float) -> None:
    """``--more``: one-direction copies, an inverted multi-index, cells by bisector (``x``: the
    training rows, projected, whose nearest cell sizes stand for the clusters' at N)."""
    import faiss

    from lakecurate import neardup

    scale = N / len(x)

    def work(cells: np.ndarray, own_of_train: np.ndarray, k: int) -> tuple[float, float, float]:
        """(rows compared a row: the own-cluster sizes of a row's cells; empty cells; size imbalance)."""
        size = np.bincount(own_of_train, minlength=k) * scale
        return float(size[cells].sum() / len(z)), float(np.mean(size == 0)), float((size ** 2).sum() / N / (N / (size > 0).sum()))

    _, own_x = cents.search(x, 1)
    print("copies into one direction only (two-level search, 32 probes):", flush=True)
    for m in (6, 8, 12):
        d, nn = cents.search(z, m)
        r, c, is_copy = neardup._with_copies(cents.centroids, d.copy(), nn.copy(), radius)
        low = ~is_copy | (c < nn[r, 0])
        both_w, one_w = work(c, own_x[:, 0], len(cents.centroids))[0], work(c[low], own_x[:, 0], len(cents.centroids))[0]
        print(f"  m={m:2d}  both directions: {len(r) / len(z):5.2f} entries a row, rows compared {both_w:6.0f}, pairs found "
              f"{pairs_found(cents, d, nn, a, b, radius):.4f}  |  one direction: {low.sum() / len(z):5.2f} entries, rows compared "
              f"{one_w:6.0f}, pairs found {pairs_found(cents, d, nn, a, b, radius, lower_only=True):.4f}", flush=True)
    print("inverted multi-index (two k-means of 32 axes each; a cell is a pair of their centroids):", flush=True)
    h = z.shape[1] // 2
    for side in (int(round(np.sqrt(len(cents.centroids)))), int(round(np.sqrt(2 * len(cents.centroids))))):
        halves = [neardup._kmeans(np.ascontiguousarray(x[:, s]), side, 7 + i) for i, s in enumerate((slice(0, h), slice(h, None)))]
        cells = np.concatenate([np.repeat(halves[0], side, 0), np.tile(halves[1], (side, 1))], 1)

        def imi(q: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
            t = min(m, side)
            da, ia = faiss.knn(np.ascontiguousarray(q[:, :h]), halves[0], t)
            db, ib = faiss.knn(np.ascontiguousarray(q[:, h:]), halves[1], t)
            s = (da[:, :, None] + db[:, None, :]).reshape(len(q), t * t)  # distances add over the halves
            c = (ia[:, :, None] * side + ib[:, None, :]).reshape(len(q), t * t)
            o = np.argsort(s, axis=1)[:, :m]
            return np.take_along_axis(s, o, 1), np.take_along_axis(c, o, 1)

        _, own_imi = imi(x, 1)
        for m in (6, 8):
            t0 = time.perf_counter()
            d, nn = imi(z, m)
            us = (time.perf_counter() - t0) / len(z) * 1e6
            _, joined, _ = neardup._with_copies(cells, d.copy(), nn.copy(), radius)
            w, empty, imbalance = work(joined, own_imi[:, 0], side * side)
            print(f"  {side} x {side} cells, m={m}: search {us:4.1f} us/row, rows compared {w:6.0f}, empty cells {empty:.0%}, "
                  f"imbalance {imbalance:.2f}, pairs found {pairs_found(cents, d, nn, a, b, radius, centroids=cells):.4f}", flush=True)
    _, _, imbalance = work(np.zeros(0, np.int64), own_x[:, 0], len(cents.centroids))
    print(f"  (the join's two-level centroids: imbalance {imbalance:.2f})", flush=True)
    print("cells chosen by bisector among the 8 nearest (the join: by distance):", flush=True)
    d, nn = cents.search(z, 8)
    print("  " + "  ".join(f"{m} by distance {pairs_found(cents, d[:, :m], nn[:, :m], a, b, radius):.4f}, by bisector "
                           f"{pairs_found(cents, *by_bisector(cents, d, nn, m), a, b, radius):.4f}" for m in (5, 6)), flush=True)
    print("a coarse search refined on a graph of the cells (each cell's 24 nearest cells; m = 6):", flush=True)
    exact_d, exact_n = faiss.knn(z, cents.centroids, 6)
    print(f"  exact: pairs found {pairs_found(cents, exact_d, exact_n, a, b, radius):.4f}", flush=True)
    _, graph = faiss.knn(cents.centroids, cents.centroids, 25)
    for probes in (8, 16, 32):
        neardup._PROBES = probes
        t0 = time.perf_counter()
        d, nn = refined(cents, z, graph[:, 1:], 6)
        us = (time.perf_counter() - t0) / len(z) * 1e6
        same = float(np.mean((np.sort(nn, 1) == np.sort(exact_n, 1)).all(1)))
        print(f"  {probes:2d} probes + the neighbours of the 2 nearest: {us:5.1f} us/row, top-6 exact {same:.3f}, "
              f"pairs found {pairs_found(cents, d, nn, a, b, radius):.4f}", flush=True)
    neardup._PROBES = 32


def refined(cents, z: np.ndarray, graph: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """The two-level search's m nearest, then the m nearest among them and the graph neighbours of
    the 2 nearest (a graph walk's one step, batched)."""
    d0, n0 = cents.search(z, m)
    cand = np.sort(np.concatenate([n0, graph[n0[:, :2]].reshape(len(z), -1)], 1), 1)
    dup = np.zeros(cand.shape, bool)
    dup[:, 1:] = cand[:, 1:] == cand[:, :-1]
    out_d, out_n = np.empty((len(z), m), np.float32), np.empty((len(z), m), np.int64)
    for s in range(0, len(z), 1024):
        cc, zs = cand[s : s + 1024], z[s : s + 1024]
        g = cents.centroids[cc]
        dd = np.einsum("bd,bd->b", zs, zs)[:, None] - 2 * np.einsum("bwd,bd->bw", g, zs) + np.einsum("bwd,bwd->bw", g, g)
        dd[dup[s : s + 1024]] = np.inf
        o = np.argsort(dd, 1)[:, :m]
        out_d[s : s + 1024], out_n[s : s + 1024] = np.take_along_axis(dd, o, 1), np.take_along_axis(cc, o, 1)
    return out_d, out_n


def by_bisector(cents, d: np.ndarray, nn: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """The nearest centroid, then the m - 1 others whose bisector with it is nearest the row."""
    c = cents.centroids
    gap = np.linalg.norm(c[nn[:, 1:]] - c[nn[:, :1]], axis=2)
    h = (d[:, 1:] - d[:, :1]) / (2 * np.maximum(gap, 1e-12))
    pick = np.argsort(h, axis=1)[:, : m - 1] + 1
    return (np.concatenate([d[:, :1], np.take_along_axis(d, pick, 1)], 1),
            np.concatenate([nn[:, :1], np.take_along_axis(nn, pick, 1)], 1))


def spill_search(cents, z: np.ndarray, r: int, probes: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Two levels with every sub-centroid filed in its r nearest top lists, ``probes`` lists a row:
    the join's own search over the lists with copies, then a centroid met in two lists counted once."""
    import faiss

    from lakecurate import neardup

    c, top = cents.centroids, cents.top
    _, near = faiss.knn(c, top, r)
    lst, cid = near.ravel(), np.repeat(np.arange(len(c)), r)
    o = np.argsort(lst, kind="stable")
    lst, cid = lst[o], cid[o]
    spilled = neardup._Centroids(c[cid], cents.axes, top, np.searchsorted(lst, np.arange(len(top) + 1)))
    saved, neardup._PROBES = neardup._PROBES, probes
    try:
        d, k = spilled.search(z, r * m)  # room for one centroid met in all its r lists
    finally:
        neardup._PROBES = saved
    k = np.where(k >= 0, cid[np.maximum(k, 0)], -1)
    o = np.argsort(k, axis=1, kind="stable")
    sk, sd = np.take_along_axis(k, o, 1), np.take_along_axis(d, o, 1)
    sd[:, 1:][(sk[:, 1:] == sk[:, :-1]) & (sk[:, 1:] >= 0)] = np.inf
    best = np.argsort(sd, axis=1, kind="stable")[:, :m]
    return np.take_along_axis(sd, best, 1), np.take_along_axis(sk, best, 1)


def per_list_search(cents, z: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """The two-level search before ``--kernel``'s: one faiss.knn per top list, on the rows probing it."""
    import faiss

    from lakecurate import neardup

    probes = min(len(cents.top), neardup._PROBES)
    _, probe = faiss.knn(z, cents.top, probes)
    flat = probe.ravel()  # entry e: row e // probes
    order = np.argsort(flat, kind="stable")
    lists = flat[order]
    cuts = np.concatenate([[0], np.flatnonzero(np.diff(lists)) + 1, [len(lists)]])
    cand_d = np.full((len(flat), m), np.inf, np.float32)
    cand_c = np.full((len(flat), m), -1, np.int64)
    for lo, hi in zip(cuts[:-1], cuts[1:]):
        a, b = cents.bounds[lists[lo]], cents.bounds[lists[lo] + 1]
        at = order[lo:hi]
        d, c = faiss.knn(np.ascontiguousarray(z[at // probes]), cents.centroids[a:b], int(min(m, b - a)))
        cand_d[at, : d.shape[1]] = d
        cand_c[at, : d.shape[1]] = c + a
    cand_d, cand_c = cand_d.reshape(len(z), probes * m), cand_c.reshape(len(z), probes * m)
    best = np.argpartition(cand_d, m - 1, axis=1)[:, :m]
    dist, near = np.take_along_axis(cand_d, best, 1), np.take_along_axis(cand_c, best, 1)
    order = np.argsort(dist, axis=1)
    return np.take_along_axis(dist, order, 1), np.take_along_axis(near, order, 1)


def kernel(cents, z: np.ndarray) -> None:
    """Old (per_list_search) against new (_Centroids.search), alternating, on one thread."""
    from lakecurate import neardup

    n = len(z)
    for m in (5, 6):
        times: dict[str, list[float]] = {"before": [], "now": []}
        for _ in range(3):
            for name, fn in (("before", per_list_search), ("now", type(cents).search)):
                t = time.perf_counter()
                out = fn(cents, z, m)
                times[name].append((time.perf_counter() - t) / n * 1e6)
                if name == "before":
                    d0, n0 = out
                else:
                    d1, n1 = out
        o, w = np.array(times["before"]), np.array(times["now"])
        print(f"  m={m}: before {o.min():6.1f} us/row, now {w.min():6.1f} us/row (best of 3): now/before "
              f"{w.min() / o.min():.2f}x (medians {np.median(w) / np.median(o):.2f}x); rows with identical cells "
              f"{np.mean((n0 == n1).all(1)):.5f}, max relative distance difference "
              f"{np.max(np.abs(d1 - d0) / np.maximum(d0, 1e-30)):.1e}", flush=True)
    chunk = neardup._ASSIGN_CHUNK
    times = {"before": [], "now": []}
    for _ in range(3):
        for name, fn in (("before", per_list_search), ("now", type(cents).search)):
            t = time.perf_counter()
            for lo in range(0, n, chunk):
                fn(cents, z[lo : lo + chunk], 5)
            times[name].append((time.perf_counter() - t) / n * 1e6)
    o, w = np.array(times["before"]), np.array(times["now"])
    print(f"  m=5 in calls of {chunk:,} rows: before {o.min():6.1f} us/row, now {w.min():6.1f} us/row: "
          f"now/before {w.min() / o.min():.2f}x (medians {np.median(w) / np.median(o):.2f}x)", flush=True)


def main() -> None:
    import faiss

    from lakecurate import neardup

    only_kernel = "--kernel" in sys.argv[1:]
    t0 = time.perf_counter()
    x, q, a, b = data()
    k = neardup.default_clusters(N)
    faiss.omp_set_num_threads(2)
    cents = neardup._fit_centroids(neardup.ArrayVectors(x), k, 0, 64)
    faiss.omp_set_num_threads(1)
    z = neardup._project(q, cents.axes)
    radius = float(np.sqrt(2 * (1 - THRESHOLD) + 4e-3))  # as neardup._partition
    print(f"bench_centroid_search: k = {len(cents.centroids):,} centroids in {len(cents.top)} top lists "
          f"(N = {N:,}), {len(z):,} query rows, {len(a):,} planted pairs at cosine >= {THRESHOLD}; "
          f"setup {time.perf_counter() - t0:.0f} s, 1 thread from here\n", flush=True)
    if only_kernel:
        kernel(cents, z)
        return
    if "--more" in sys.argv[1:]:
        more(cents, z, neardup._project(x, cents.axes), a, b, radius)
        return

    def timed(fn):
        t = time.perf_counter()
        d, nn = fn()
        return d, nn, (time.perf_counter() - t) / len(z) * 1e6

    td, tn, t_exact = timed(lambda: faiss.knn(z, cents.centroids, 8))
    truth4 = np.sort(tn[:, :4], 1)

    def show(label: str, d: np.ndarray, nn: np.ndarray, us: float, m: int = 4) -> None:
        exact = float(np.mean((np.sort(nn[:, :4], 1) == truth4).all(1))) if nn.shape[1] >= 4 else float("nan")
        found = pairs_found(cents, d[:, :m], nn[:, :m], a, b, radius)
        print(f"  {label:40s} {us:7.1f} us/row ({us / t_exact:5.2f}x exact)  top-4 exact {exact:.3f}  "
              f"pairs found {found:.4f} ({round((1 - found) * len(a))} missed)", flush=True)

    for m in (4, 5, 6, 8):
        show(f"exact, assign {m}", td, tn, t_exact, m)
    show("exact, assign 4, copies by bisector", *by_bisector(cents, td, tn, 4), t_exact)
    for probes in (16, 32, 48):
        neardup._PROBES = probes
        d, nn, us = timed(lambda: cents.search(z, 4))
        show(f"two-level, {probes} probes{' (the join)' if probes == 32 else ''}", d, nn, us)
        if probes >= 32:
            d, nn, us = timed(lambda: cents.search(z, 6))
            show(f"two-level, {probes} probes, assign 5", d, nn, us, 5)
            show(f"two-level, {probes} probes, assign 6", d, nn, us, 6)
    neardup._PROBES = 32
    for r, probes in ((2, 24), (3, 16), (4, 12), (4, 16)):
        d, nn, us = timed(lambda: spill_search(cents, z, r, probes, 4))
        show(f"spill r={r}, {probes} probes", d, nn, us)
    for M, ef in ((16, 64), (32, 64), (32, 128)):
        idx = faiss.IndexHNSWFlat(z.shape[1], M)
        idx.hnsw.efConstruction = 80
        idx.add(cents.centroids)
        idx.hnsw.efSearch = ef
        d, nn, us = timed(lambda: idx.search(z, 4))
        show(f"HNSW M={M} efSearch={ef}", d, nn, us)


if __name__ == "__main__":
    main()
