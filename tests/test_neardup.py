"""Near-duplicate pairs and groups (lakecurate.neardup): checked against brute force."""

from __future__ import annotations


import faiss
import numpy as np
import pytest

from lakecurate import neardup
from lakecurate.neardup import (
    components,
    exact_pairs_bruteforce,
    hamming_pairs,
    knn_pairs,
    nearest_pairs,
    semantic_pairs,
)


def _with_cosine(x: np.ndarray, cos: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Unit vectors at exactly these cosines to the rows of x (along random orthogonal directions)."""
    u = rng.standard_normal(x.shape).astype(np.float32)
    u -= (u * x).sum(1, keepdims=True) * x
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    return cos[:, None] * x + np.sqrt(1 - cos[:, None] ** 2) * u


def clustered(n: int = 12_000, d: int = 96, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Topic clusters (same-topic cosine ~0.7) with planted near duplicates at cosine 0.95-0.996
    and hard negatives at 0.90-0.949; returns (vectors, planted pairs)."""
    rng = np.random.default_rng(seed)
    n_dup, n_neg = n // 10, n // 10
    n_base = n - n_dup - n_neg
    centers = rng.standard_normal((n // 200, d)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    base = 0.85 * centers[rng.integers(0, len(centers), n_base)]
    base += 0.55 * rng.standard_normal((n_base, d)).astype(np.float32) / np.sqrt(d)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    src, neg = rng.integers(0, n_base, n_dup), rng.integers(0, n_base, n_neg)
    dups = _with_cosine(base[src], rng.uniform(0.95, 0.996, n_dup).astype(np.float32), rng)
    negs = _with_cosine(base[neg], rng.uniform(0.90, 0.949, n_neg).astype(np.float32), rng)
    order = rng.permutation(n)  # planted rows spread over the array, not at its end
    x = np.concatenate([base, dups, negs]).astype(np.float32)[order]
    where = np.argsort(order)
    planted = np.sort(where[np.stack([src, n_base + np.arange(n_dup)], 1)], axis=1)
    return x, planted


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    return clustered()


@pytest.fixture(scope="module")
def truth(data) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return exact_pairs_bruteforce(data[0], 0.95)


def keys(i: np.ndarray, j: np.ndarray, n: int) -> np.ndarray:
    return i * n + j


def recall(found: tuple, truth: tuple, n: int) -> float:
    return float(np.isin(keys(truth[0], truth[1], n), keys(found[0], found[1], n)).mean())


def test_exact_bruteforce_matches_the_full_matrix(monkeypatch):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((700, 16)).astype(np.float32)
    x[rng.integers(0, 700, 300)] = x[rng.integers(0, 700, 300)] + 0.1 * rng.standard_normal((300, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    full = x @ x.T
    ei, ej = np.nonzero(np.triu(full >= 0.9, k=1))
    # Tiny blocks: strips, column blocks and tasks all cross each other.
    monkeypatch.setattr(neardup, "_TASK_ROWS", 64)
    monkeypatch.setattr(neardup, "_SUB_ROWS", 16)
    monkeypatch.setattr(neardup, "_COL_BLOCK", 100)
    i, j, cos = exact_pairs_bruteforce(x, 0.9)
    assert len(ei) > 100
    assert np.array_equal(i, ei) and np.array_equal(j, ej)
    np.testing.assert_allclose(cos, full[i, j], atol=1e-5)


def test_semantic_recall_against_brute_force(data, truth):
    x, planted = data
    i, j, cos = semantic_pairs(x, 0.95)
    n = len(x)
    assert len(truth[0]) >= len(planted)  # every planted pair, plus a few the topics made
    assert recall((i, j), truth, n) >= 0.99
    assert recall((i, j), (planted[:, 0], planted[:, 1]), n) >= 0.99
    # no pair below the threshold (hard negatives at 0.90-0.949 stay out), each pair once, sorted
    exact = (x[i] * x[j]).sum(1)
    assert exact.min() >= 0.95 - 1e-5
    np.testing.assert_allclose(cos, exact, atol=1e-5)
    assert (i < j).all()
    k = keys(i, j, n)
    assert (np.diff(k) > 0).all()


def test_copies_find_pairs_split_by_clusters(data, truth):
    x = data[0]
    one = recall(semantic_pairs(x, 0.95, assign=1), truth, len(x))
    four = recall(semantic_pairs(x, 0.95, assign=4), truth, len(x))
    assert one < 0.97 < 0.99 <= four


def bridges(per: int = 300, n_pairs: int = 40, d: int = 8, seed: int = 0) -> np.ndarray:
    """8 clusters around a circle, then n_pairs near pairs (cosine 0.955-0.99) straddling the
    boundary between neighbouring clusters, apart along the line between the centres: the worst
    case for copies (each row ~0.1-0.15 from the bisector). The pairs are the last 2 n_pairs rows."""
    rng = np.random.default_rng(seed)

    def at(theta: np.ndarray, noise: float) -> np.ndarray:
        v = np.zeros((len(theta), d), np.float32)
        v[:, 0], v[:, 1] = np.cos(theta), np.sin(theta)
        v[:, 2:] = noise * rng.standard_normal((len(theta), d - 2))
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    rows = [at(2 * np.pi * c / 8 + 0.12 * rng.standard_normal(per), 0.3) for c in range(8)]
    mid = 2 * np.pi * (rng.integers(0, 8, n_pairs) + 0.5) / 8
    half = np.arccos(rng.uniform(0.955, 0.99, n_pairs)) / 2
    return np.concatenate(rows + [at(mid - half, 0.0), at(mid + half, 0.0)])


@pytest.mark.parametrize("pca_dims", [2, None])
def test_assigning_every_cluster_is_exact(pca_dims):
    """The bisector bound only drops clusters that cannot hold a partner (a radius 3x too
    small misses 3-8% of the boundary pairs here)."""
    x = bridges()
    n = len(x)
    across = (np.arange(n - 80, n - 40), np.arange(n - 40, n))
    ti, tj, tcos = exact_pairs_bruteforce(x, 0.95)
    assert recall(semantic_pairs(x, 0.95, n_clusters=8, assign=1, pca_dims=pca_dims), across, n) < 0.9
    i, j, cos = semantic_pairs(x, 0.95, n_clusters=8, assign=8, pca_dims=pca_dims)
    assert np.array_equal(i, ti) and np.array_equal(j, tj)
    np.testing.assert_allclose(cos, tcos, atol=1e-6)


def test_semantic_float16_and_blocked_big_clusters(data, monkeypatch):
    x = data[0][:5000]
    truth16 = exact_pairs_bruteforce(x.astype(np.float16), 0.95)
    assert len(truth16[0]) > 50
    monkeypatch.setattr(neardup, "_TASK_ROWS", 64)
    monkeypatch.setattr(neardup, "_SUB_ROWS", 32)
    monkeypatch.setattr(neardup, "_COL_BLOCK", 200)
    i, j, _ = semantic_pairs(x.astype(np.float16), 0.95, n_clusters=8)  # ~600 rows a cluster
    assert recall((i, j), truth16, len(x)) >= 0.99
    assert len(set(zip(i.tolist(), j.tolist()))) == len(i)


def test_semantic_small_and_invalid_inputs():
    for n in (0, 1):
        i, j, cos = semantic_pairs(np.ones((n, 4), np.float32) / 2)
        assert len(i) == len(j) == len(cos) == 0
    two = np.array([[1, 0], [1, 0]], np.float32)
    assert [a.tolist() for a in semantic_pairs(two)] == [[0], [1], [1.0]]
    with pytest.raises(ValueError, match="not L2-normalised"):
        semantic_pairs(np.full((10, 4), 3.0, np.float32))
    with pytest.raises(ValueError, match="2-D float array"):
        semantic_pairs(np.zeros(10, np.float32))


def brute_hamming(h: np.ndarray, t: int) -> tuple[np.ndarray, np.ndarray]:
    d = np.bitwise_count(h[:, None] ^ h[None, :])
    return np.nonzero(np.triu(d <= t, k=1))


@pytest.fixture(scope="module")
def hashes() -> np.ndarray:
    """Random hashes, near copies at 0-10 flipped bits, and a bucket of 300 identical hashes."""
    rng = np.random.default_rng(2)
    n = 2500
    h = rng.integers(0, 2**64 - 1, n, dtype=np.uint64, endpoint=True)
    src, dst = rng.integers(0, n, 600), rng.integers(0, n, 600)
    for s, d, f in zip(src, dst, rng.integers(0, 11, 600)):
        h[d] = h[s] ^ np.uint64(sum(1 << int(b) for b in rng.choice(64, f, replace=False)))
    h[1000:1300] = h[7]
    h[1300:1310] = h[7] ^ np.uint64(1 << 63)  # next to the big bucket
    return h


@pytest.mark.parametrize("t", [0, 1, 3, 8, 13, 24])  # 24: too wide for bands, a plain scan
@pytest.mark.parametrize("band_radius", [None, 0, 2])
def test_hamming_equals_brute_force(hashes, t, band_radius):
    bi, bj = brute_hamming(hashes, t)
    i, j, dist = hamming_pairs(hashes, t, band_radius=band_radius)
    assert len(bi) > 300 * 299 // 2
    assert np.array_equal(i, bi) and np.array_equal(j, bj)
    assert np.array_equal(dist, np.bitwise_count(hashes[i] ^ hashes[j]))


def test_hamming_in_small_chunks_and_partitions(hashes, monkeypatch):
    monkeypatch.setattr(neardup, "_KEYS_PER_TASK", 3000)  # several key partitions per band
    monkeypatch.setattr(neardup, "_PAIR_CHUNK", 500)  # the big bucket spans many chunks
    bi, bj = brute_hamming(hashes, 8)
    i, j, _ = hamming_pairs(hashes, 8)
    assert np.array_equal(i, bi) and np.array_equal(j, bj)


def test_hamming_first_links_repeats_with_the_same_groups(hashes):
    i, j, _ = hamming_pairs(hashes, 8, identical="first")
    bi, bj = brute_hamming(hashes, 8)
    assert len(i) < len(hashes)  # the 300-row bucket alone has 44,850 pairs
    assert np.array_equal(components(len(hashes), i, j), components(len(hashes), bi, bj))
    repeats = j[(j >= 1000) & (j < 1300)]
    assert np.array_equal(np.unique(repeats), np.arange(1000, 1300))
    assert (i[np.isin(j, repeats)] == 7).all()  # each repeat linked to the first row of its hash


def test_hamming_inputs():
    signed = np.array([-1, -1, 5], np.int64)  # int64 columns are read as their bits
    assert [a.tolist() for a in hamming_pairs(signed, 0)] == [[0], [1], [0]]
    assert len(hamming_pairs(np.empty(0, np.uint64))[0]) == 0
    with pytest.raises(ValueError, match="uint64"):
        hamming_pairs(np.zeros(3, np.float64))
    with pytest.raises(ValueError, match="band_radius"):
        hamming_pairs(np.zeros(3, np.uint64), band_radius=1)


def test_components_literal():
    i, j = np.array([1, 4, 6, 2]), np.array([4, 6, 9, 3])
    assert components(10, i, j).tolist() == [0, 1, 2, 2, 1, 5, 1, 7, 8, 1]
    assert components(3, np.array([], np.int64), np.array([], np.int64)).tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        components(3, np.array([0]), np.array([3]))



@pytest.mark.parametrize("n_clusters", [1, 8])
def test_semantic_new_rows_only(data, n_clusters):
    """With a mask of new rows, exactly the pairs touching a new row come back (incremental dedup)."""
    x = data[0]
    rng = np.random.default_rng(1)
    new = rng.random(len(x)) < 0.2
    i, j, v = semantic_pairs(x[:3000], 0.95, n_clusters=n_clusters, assign=8, new=new[:3000])  # assign >= k: exact
    ti, tj, _ = exact_pairs_bruteforce(x[:3000], 0.95)
    new = new[:3000]
    touching = new[ti] | new[tj]
    assert 10 < touching.sum() < len(ti)  # some pairs touch new rows, some do not
    assert set(zip(i.tolist(), j.tolist())) == set(zip(ti[touching].tolist(), tj[touching].tolist()))
    assert len(set(zip(i.tolist(), j.tolist()))) == len(i)  # each pair once
    assert (i < j).all() and (v >= 0.95).all()


class CountingVectors(neardup.ArrayVectors):
    """A vector source that records how many rows each read asked for (and never hands out all)."""

    def __init__(self, x: np.ndarray) -> None:
        super().__init__(x)
        self.takes: list[int] = []
        self.streamed = 0

    def batches(self, size: int):
        for start, x in super().batches(size):
            self.streamed += len(x)
            yield start, x

    def take(self, rows: np.ndarray) -> np.ndarray:
        self.takes.append(len(rows))
        return super().take(rows)


@pytest.mark.parametrize("spill", ["auto", None])
def test_semantic_out_of_core_reads_bounded_groups(data, truth, spill, monkeypatch, tmp_path):
    """Streamed once to assign, spilled to bucket files, joined a group of clusters at a time: the
    same pairs as the in-memory join, and no read larger than a group (plus the sample)."""
    x = data[0]
    expected = semantic_pairs(x, 0.95)
    monkeypatch.setattr(neardup, "_BUCKET_ENTRIES", 3000)  # ~11 buckets: spilled when spill="auto"
    monkeypatch.setattr(neardup, "_FLUSH_ENTRIES", 2000)  # written to the bucket files as the rows stream
    monkeypatch.setattr(neardup, "_GROUP_ENTRIES", 1000)
    monkeypatch.setattr(neardup, "_ASSIGN_BATCH", 2500)
    monkeypatch.setattr(neardup, "_PCA_SAMPLE", 500)
    monkeypatch.setattr(neardup, "_KMEANS_SAMPLE", 2000)
    made = []
    real = neardup._Filed.__init__

    def spy(self, buckets, spill_dir, name, dtype):
        made.append((buckets, spill_dir))
        real(self, buckets, spill_dir, name, dtype)

    monkeypatch.setattr(neardup._Filed, "__init__", spy)
    src = CountingVectors(x)
    i, j, cos = semantic_pairs(src, 0.95, spill_dir=spill)
    assert made[0][0] > 5 and (made[0][1] is not None) == (spill == "auto")
    assert src.streamed == len(x)  # every row streamed exactly once
    reads = src.takes[2:]  # after the PCA and k-means samples: the groups' reads
    assert len(reads) > 10 and max(reads) < 2500  # never more than a few groups' worth of rows
    assert recall((i, j), truth, len(x)) >= 0.99
    np.testing.assert_array_equal(i, expected[0])
    np.testing.assert_array_equal(j, expected[1])
    np.testing.assert_allclose(cos, expected[2], atol=1e-6)


def test_semantic_two_level_centroids(data, truth, monkeypatch):
    """Above _FLAT_CENTROIDS the k-means has two levels and rows search only the nearest top
    lists: still every pair found, and each cluster much smaller."""
    x = data[0]
    cells = []  # cells a row may join, as each join's assignment pass was told
    real = neardup._assign_rows
    monkeypatch.setattr(neardup, "_assign_rows", lambda src, cents, m, *a, **kw: cells.append(m) or real(src, cents, m, *a, **kw))
    flat = semantic_pairs(x, 0.95, n_clusters=120)
    monkeypatch.setattr(neardup, "_FLAT_CENTROIDS", 16)
    src = CountingVectors(x)
    i, j, cos = semantic_pairs(src, 0.95, n_clusters=120)
    assert recall((i, j), truth, len(x)) >= 0.99
    assert (cos >= 0.95 - 1e-5).all()
    assert cells == [4, 6]  # by default: 4 cells a row with flat centroids, 6 with two levels (smaller cells)
    assert len(semantic_pairs(x, 0.95, n_clusters=120, assign=4)[0]) <= len(i) and cells[-1] == 4
    assert recall(flat[:2], truth, len(x)) >= 0.99
    cents = neardup._fit_centroids(neardup.ArrayVectors(x), 120, 0, 64)
    assert cents.top is not None and len(cents.top) == 11  # round(sqrt(120)) top clusters
    assert 90 <= len(cents.centroids) <= 150  # each top cluster's share of k
    assert cents.bounds[0] == 0 and cents.bounds[-1] == len(cents.centroids) and (np.diff(cents.bounds) > 0).all()
    z = neardup._project(x[:2000], cents.axes)
    exact_d, exact_c = faiss.knn(z, cents.centroids, 4)
    d, c = cents.search(z, 4)  # every list probed (32 >= 11): the exact 4 nearest, in order
    # (float32 near-ties aside: a pair of cells whose distances differ by ~1e-7 relative may come in
    # either order, and faiss's order is not always the float64 one)
    z64, c64 = z.astype(np.float64), cents.centroids.astype(np.float64)
    exact64 = lambda cells: ((z64[:, None] - c64[cells]) ** 2).sum(2)  # noqa: E731
    np.testing.assert_allclose(exact64(c), exact64(exact_c), rtol=1e-6)
    assert (c == exact_c).all(1).mean() > 0.99
    np.testing.assert_allclose(d, exact_d, rtol=1e-4, atol=1e-5)
    monkeypatch.setattr(neardup, "_PROBES", 2)  # the 2 nearest lists only: the nearest within them
    d, c = cents.search(z, 4)
    owner = np.searchsorted(cents.bounds, c, side="right") - 1
    probed = faiss.knn(z, cents.top, 2)[1]
    assert ((owner == probed[:, :1]) | (owner == probed[:, 1:2])).all()
    assert (np.diff(d, axis=1) >= 0).all() and 0.5 < (c[:, 0] == exact_c[:, 0]).mean() < 1
    row, cluster, copy = cents.assign(x[:500], 4, 0.32)
    own = row[~copy]
    assert np.array_equal(np.sort(own), np.arange(500))  # every row is own in exactly one cell
    assert (np.bincount(row, minlength=500) >= 1).all() and cluster.max() < len(cents.centroids)


def test_two_level_centroids_train_on_every_sample_row_beyond_what_is_held(data, truth, monkeypatch):
    """When the training rows (16 a centroid) outnumber what k-means may hold (_KMEANS_SAMPLE, as
    beyond ~16.8M rows), the top level trains on the held rows and every training row is filed on
    disk under its top cluster, each cluster's centroids trained on its own file: the sub-centroids
    see all the rows (not the held few), reads stay chunked, and the join still finds the pairs."""
    x = data[0]
    monkeypatch.setattr(neardup, "_FLAT_CENTROIDS", 16)
    monkeypatch.setattr(neardup, "_KMEANS_SAMPLE", 600)  # 1,920 training rows for 120 centroids
    monkeypatch.setattr(neardup, "_TRAIN_FLUSH", 100)  # written to the files as they stream
    monkeypatch.setattr(neardup, "_ASSIGN_CHUNK", 500)
    fits, filed = [], []
    real_kmeans, real_filed = neardup._kmeans, neardup._Filed.__init__
    monkeypatch.setattr(neardup, "_kmeans", lambda points, k, seed: fits.append((len(points), k)) or real_kmeans(points, k, seed))

    def spy(self, buckets, spill_dir, name, dtype, flush=None):
        filed.append((name, spill_dir))
        real_filed(self, buckets, spill_dir, name, dtype, flush)

    monkeypatch.setattr(neardup._Filed, "__init__", spy)
    src = CountingVectors(x)
    cents = neardup._fit_centroids(src, 120, 0, 64)
    assert fits[0] == (600, 11)  # the top level: the held rows
    assert sum(p for p, _ in fits[1:]) == 1920  # the sub-levels: every training row, each in one top cluster
    assert 90 <= sum(k for _, k in fits[1:]) == len(cents.centroids) <= 150
    assert filed == [("train", filed[0][1])] and filed[0][1] is not None
    assert max(src.takes[1:]) <= 500  # after the principal axes' rows: read by position a chunk at a time
    fits.clear()
    i, j, cos = semantic_pairs(x, 0.95, n_clusters=120)
    assert sum(p for p, _ in fits[1:]) == 1920
    assert recall((i, j), truth, len(x)) >= 0.99 and (cos >= 0.95 - 1e-5).all()


def test_default_clusters_grow_linearly_above_a_million():
    assert neardup.default_clusters(1_000_000) == 4000
    assert neardup.default_clusters(10_000_000) == 10_000_000 // neardup._ROWS_PER_CLUSTER
    assert neardup.default_clusters(100_000_000) / neardup.default_clusters(10_000_000) == pytest.approx(10, rel=1e-3)


class RemoteVectors:
    """A vector source that is not in memory (like a Lance column): the join copies it to local disk
    as it streams, then gathers the groups from that copy instead of reading it by position."""

    def __init__(self, x: np.ndarray) -> None:
        self.x, (self.n, self.d) = x, x.shape
        self.takes: list[int] = []
        self.streamed = 0

    def batches(self, size: int):
        for s in range(0, self.n, size):
            self.streamed += len(self.x[s : s + size])
            yield s, self.x[s : s + size]

    def take(self, rows: np.ndarray) -> np.ndarray:
        self.takes.append(len(rows))
        return self.x[rows]


def test_semantic_join_gathers_from_a_local_copy(data, monkeypatch):
    """A source that is not an in-memory matrix is streamed once, copied to the spill directory as
    it streams, and never read by position after the k-means sample: the same pairs as the matrix."""
    x = data[0].astype(np.float16)
    expected = semantic_pairs(x, 0.95)
    monkeypatch.setattr(neardup, "_GROUP_ENTRIES", 1000)
    monkeypatch.setattr(neardup, "_ASSIGN_BATCH", 2500)
    gathered = []
    real = neardup._LocalCopy.take

    def spy(self, rows):
        gathered.append(len(rows))
        return real(self, rows)

    monkeypatch.setattr(neardup._LocalCopy, "take", spy)
    src = RemoteVectors(x)
    got = semantic_pairs(src, 0.95)
    assert src.streamed == len(x) and len(src.takes) <= 3  # the validity check, the PCA and k-means samples
    assert len(gathered) > 5 and sum(gathered) >= len(x)  # every group came from the copy
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert semantic_pairs(RemoteVectors(x), 0.95, spill_dir=None)[0].tolist() == expected[0].tolist()  # no copy


@pytest.mark.parametrize("n_clusters", [1, 6])
@pytest.mark.parametrize("compact", [None, 500])
def test_per_row_bounds_the_pairs_of_a_dense_region(n_clusters, compact, monkeypatch):
    """A clump of 400 rows all within a low cosine of each other gives ~80,000 pairs; with
    per_row=5 a pair is kept where one row is among the other's 5 most similar: at most 5 a row,
    a subset of the uncapped join's pairs, exactly knn_pairs' (the pairs above all_from all come
    back too, and the ranked ones do not depend on all_from). ``compact``: the piled pairs are
    merged and cut every few hundred (in a join block and across them): the same pairs."""
    if compact is not None:
        monkeypatch.setattr("lakecurate.neardup._CAP_COMPACT", compact)
    rng = np.random.default_rng(4)
    d = 32
    centre = rng.standard_normal(d)
    clump = centre + 0.35 * rng.standard_normal((400, d)) * np.linalg.norm(centre) / np.sqrt(d)
    x = np.concatenate([clump, rng.standard_normal((600, d))]).astype(np.float32)
    x[401] = x[3] + 0.01 * rng.standard_normal(d).astype(np.float32)  # one far pair, near-identical
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ui, uj, ucos = semantic_pairs(x, 0.6, n_clusters=n_clusters, assign=n_clusters)  # assign >= k: exact
    assert len(ui) > 30_000
    i, j, cos, ranked = semantic_pairs(x, 0.6, n_clusters=n_clusters, assign=n_clusters, per_row=5, all_from=0.95)
    got = dict(zip(zip(i.tolist(), j.tolist()), cos.tolist()))
    assert set(got) <= set(zip(ui.tolist(), uj.tolist()))
    assert ranked.sum() <= 5 * len(x)  # each ranked pair is some row's choice
    strong = ucos >= 0.95
    assert set(zip(ui[strong].tolist(), uj[strong].tolist())) <= set(got) and (3, 401) in got
    with_all = set(zip(i[ranked].tolist(), j[ranked].tolist()))
    i2, j2, c2, r2 = semantic_pairs(x, 0.6, n_clusters=n_clusters, assign=n_clusters, per_row=5)
    assert r2.all() and set(zip(i2.tolist(), j2.tolist())) == with_all  # ranked: the same without all_from
    # every row with uncapped pairs keeps at least one
    assert set(np.unique(np.concatenate([ui, uj])).tolist()) == set(np.unique(np.concatenate([i2, j2])).tolist())
    # every row's 5 nearest: among the ranked pairs, and what nearest_pairs picks from them
    knn = set(zip(ui[nearest_pairs(ui, uj, ucos, 5)].tolist(), uj[nearest_pairs(ui, uj, ucos, 5)].tolist()))
    kept = nearest_pairs(i2, j2, c2, 5)
    assert knn <= with_all and set(zip(i2[kept].tolist(), j2[kept].tolist())) == knn
    ki, kj, _ = knn_pairs(x, 5, 0.6)
    assert set(zip(ki.tolist(), kj.tolist())) == knn
    for a in (0, 3, 150, 399):  # by hand: a's 5 best partners are in the pairs
        mine = np.flatnonzero((ui == a) | (uj == a))
        best = mine[np.argsort(-ucos[mine], kind="stable")[:5]]
        assert {(int(ui[b]), int(uj[b])) for b in best} <= knn
    assert with_all == knn  # the join finds every pair here (assign = clusters): exactly knn_pairs'
    # per_row large enough: the uncapped pairs, all ranked
    i3, j3, _, r3 = semantic_pairs(x, 0.6, n_clusters=n_clusters, assign=n_clusters, per_row=len(x))
    assert r3.all() and i3.tolist() == ui.tolist() and j3.tolist() == uj.tolist()
    with pytest.raises(ValueError, match="per_row"):
        semantic_pairs(x, 0.6, per_row=0)


@pytest.mark.parametrize("n_clusters", [1, 6])
def test_a_hash_filter_in_the_join_holds_only_the_pairs_it_passes(n_clusters, monkeypatch):
    """``near`` (a HashFilter) is asked inside each join block: the pile only ever receives the
    pairs it passes (and those above all_from), where the clump's join makes ~80,000. Without
    per_row: exactly the uncapped pairs it passes. With per_row: at least the pairs among a row's
    k best of all that it passes, at most those of the uncapped pairs, every pair above all_from."""
    rng = np.random.default_rng(4)
    d = 32
    centre = rng.standard_normal(d)
    clump = centre + 0.35 * rng.standard_normal((400, d)) * np.linalg.norm(centre) / np.sqrt(d)
    x = np.concatenate([clump, rng.standard_normal((600, d))]).astype(np.float32)
    h = rng.integers(0, 2**63, (len(x), 2), dtype=np.int64).astype(np.uint64)  # a hash and a variant
    partner = rng.permutation(400)
    h[partner[:200], 1] = h[partner[200:], 0] ^ np.uint64(0b101)  # 200 clump pairs within 2 bits
    has = np.ones(len(x), bool)
    has[partner[:10]] = False  # rows without a hash never pass
    src, dup = partner[300:350], partner[350:400]  # 50 near copies in the clump, hashes 1 bit apart
    x[dup] = x[src] + 0.01 * rng.standard_normal((50, d)).astype(np.float32)
    h[dup, 0] = h[src, 0] ^ np.uint64(1 << 40)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    near = neardup.HashFilter([(h, has, 4, 0.65)])
    kw = {"n_clusters": n_clusters, "assign": n_clusters}
    ui, uj, ucos = semantic_pairs(x, 0.6, **kw)
    assert len(ui) > 30_000
    ok = near(ui, uj, ucos)
    expected = set(zip(ui[ok].tolist(), uj[ok].tolist()))
    assert 150 < len(expected) < 250  # has, the cosine and the distance each turn some away
    assert ok.tolist() == ((neardup.hash_distances(h, ui, uj) <= 4) & has[ui] & has[uj] & (ucos >= 0.65)).tolist()

    added = []
    real_add = neardup._Pile.add
    monkeypatch.setattr(neardup._Pile, "add", lambda self, part: added.append((self.kth is None, len(part[0])))
                        or real_add(self, part))
    i, j, cos = semantic_pairs(x, 0.6, near=near, **kw)
    assert set(zip(i.tolist(), j.tolist())) == expected
    np.testing.assert_allclose(cos, ucos[ok], atol=1e-6)
    outer = sum(m for unranked, m in added if unranked)  # the join's pile, not a block's
    assert outer <= 2 * len(expected), outer  # a pair met in two clusters is piled twice

    i, j, cos, ranked = semantic_pairs(x, 0.6, per_row=5, all_from=0.95, near=near, **kw)
    got = set(zip(i[ranked].tolist(), j[ranked].tolist()))
    best = nearest_pairs(ui, uj, ucos, 5) & ok
    assert set(zip(ui[best].tolist(), uj[best].tolist())) <= got <= expected
    if n_clusters == 1:  # one exact join: the k best of all
        assert got == set(zip(ui[best].tolist(), uj[best].tolist()))
    copies = {(int(min(a, b)), int(max(a, b))) for a, b in zip(partner[300:350], partner[350:400])}
    assert copies <= got  # near copies are each other's nearest: ranked, and their hashes pass
    strong = ucos >= 0.95
    assert set(zip(ui[strong].tolist(), uj[strong].tolist())) <= set(zip(i.tolist(), j.tolist()))
    assert (cos[~ranked] >= 0.95).all()

    # `every` searches are asked of every pair, ranked or not (semantic dedup's weaker links), and
    # the pairs from `above` stay: all that it keeps comes back, without per_row or with every
    # pair held from all_from (dedup: semantic's confirm cosine), the ranked ones passing `near`
    keep = neardup.HashFilter([], every=[(h, has, 4, 0.65)], above=0.95)
    wanted = expected | set(zip(ui[strong].tolist(), uj[strong].tolist()))
    i, j, _ = semantic_pairs(x, 0.6, near=keep, **kw)
    assert set(zip(i.tolist(), j.tolist())) == wanted
    i, j, _, ranked = semantic_pairs(x, 0.6, per_row=5, all_from=0.6, near=keep, **kw)
    assert set(zip(i.tolist(), j.tolist())) == wanted
    assert not ranked.any()  # no ranked search: nothing passed one
    both = neardup.HashFilter([(h, has, 1, 0.6)], every=[(h, has, 4, 0.65)], above=0.95)
    i, j, _, ranked = semantic_pairs(x, 0.6, per_row=5, all_from=0.6, near=both, **kw)
    assert set(zip(i.tolist(), j.tolist())) == wanted  # the ranked ones within 1 bit are among them
    assert set(zip(i[ranked].tolist(), j[ranked].tolist())) >= copies


def test_clustered_hamming_pairs_is_the_exact_search_among_semantic_neighbours():
    """Planted perceptual copies (near vectors and near hashes) are all found, with their mirror
    variants; identical hashes are linked wherever they are; hash collisions between rows whose
    vectors are far apart are left out (what the exact all-pairs search would add)."""
    rng = np.random.default_rng(3)
    n, d = 6000, 48
    x = rng.standard_normal((n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    h = rng.integers(0, 2**63, (n, 2), dtype=np.int64).astype(np.uint64)  # a hash and its mirror's
    src, dup = np.arange(0, 600, 2), np.arange(1, 600, 2)
    x[dup] = x[src] + 0.2 * rng.standard_normal((len(dup), d)).astype(np.float32) / np.sqrt(d)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    flips = rng.integers(0, 9, len(dup))
    noise = np.array([np.bitwise_or.reduce(np.uint64(1) << rng.choice(64, f, replace=False).astype(np.uint64))
                      if f else np.uint64(0) for f in flips], np.uint64)
    h[dup, 0] = h[src, 0] ^ noise
    h[dup[::10], 0] = h[src[::10], 1]  # mirrored copies: hash = the original's mirror hash
    h[1000:1010, 0] = h[2000, 0]  # identical hashes, unrelated vectors
    h[3000:3020, 0] = h[4000:4020, 0] ^ np.uint64(3)  # hash collisions, unrelated vectors
    i, j, dist = neardup.clustered_hamming_pairs(h, x, 8, cosine=0.85)
    found = set(zip(i.tolist(), j.tolist()))
    exact = neardup.hamming_pairs(h.ravel(), 8)
    all_pairs = {(a // 2, b // 2) for a, b in zip(*exact[:2]) if a // 2 != b // 2}
    cos = np.array([x[a] @ x[b] for a, b in all_pairs])
    near = {p for p, c in zip(all_pairs, cos) if c >= 0.85}
    assert {(a, b) for a, b in zip(src.tolist(), dup.tolist())} <= found  # every planted copy
    assert near <= found  # every exact pair whose vectors are near
    label = neardup.components(n, i, j)
    assert len(set(label[[*range(1000, 1010), 2000]].tolist())) == 1  # identical hashes linked, vectors apart
    assert not {(3000 + t, 4000 + t) for t in range(20)} & found  # far collisions left out
    assert found <= all_pairs | {(min(a, b), max(a, b)) for a in range(1000, 1010) for b in [*range(1000, 1010), 2000]}
    np.testing.assert_array_equal(dist, neardup.hash_distances(h, i, j))
    assert (dist <= 8).all() and (i < j).all()
    with pytest.raises(ValueError, match="same rows"):
        neardup.clustered_hamming_pairs(h[:10], x, 8)


def _two_level(rng: np.random.Generator, sizes: list[int], dim: int = 8) -> neardup._Centroids:
    """Random two-level centroids: list t holds sizes[t] sub-centroids scattered around top[t]."""
    top = 3 * rng.standard_normal((len(sizes), dim)).astype(np.float32)
    cents = np.concatenate([t + rng.standard_normal((s, dim)).astype(np.float32) for t, s in zip(top, sizes)])
    return neardup._Centroids(cents, None, top, np.concatenate([[0], np.cumsum(sizes)]))


def _probed_nearest(cents: neardup._Centroids, z: np.ndarray, m: int, probes: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute force in float64: each row's m nearest among the sub-centroids of its `probes` nearest lists."""
    z64, c64 = z.astype(np.float64), cents.centroids.astype(np.float64)
    to_top = ((z64[:, None] - cents.top.astype(np.float64)[None]) ** 2).sum(2)
    to_cell = ((z64[:, None] - c64[None]) ** 2).sum(2)
    owner = np.repeat(np.arange(len(cents.top)), np.diff(cents.bounds))
    dist, near = np.full((len(z), m), np.inf), np.full((len(z), m), -1)
    for i in range(len(z)):
        cells = np.flatnonzero(np.isin(owner, np.argsort(to_top[i])[:probes]))
        cells = cells[np.argsort(to_cell[i, cells])][:m]
        dist[i, : len(cells)], near[i, : len(cells)] = to_cell[i, cells], cells
    return dist, near


@pytest.mark.parametrize("m", [1, 4, 6])
@pytest.mark.parametrize("probes,reps,block", [(2, 64, 1 << 18), (5, 3, 64), (40, 5, 300)])
def test_two_level_search_is_the_exact_nearest_among_probed_lists(m, probes, reps, block, monkeypatch):
    """The two-level search returns exactly the m nearest sub-centroids of the probed lists,
    ascending, with -1/inf where they hold fewer: lists smaller than m (so some rows' 2 nearest
    lists cannot bound the m-th distance, and with 2 probes some rows get fewer than m), several
    blocks of rows per list, and the bound taken from a few sub-centroids of big lists."""
    monkeypatch.setattr(neardup, "_PROBES", probes)
    monkeypatch.setattr(neardup, "_BOUND_REPS", reps)
    monkeypatch.setattr(neardup, "_SEARCH_BLOCK", block)
    rng = np.random.default_rng(m * 100 + probes)
    cents = _two_level(rng, [1, 2, 3, 1, 40, 7, 25, 2, 60, 5, 1, 33, 12, 4, 50, 9, 2, 18, 1, 30])
    z = (3 * rng.standard_normal((700, 8))).astype(np.float32)
    want_d, want_n = _probed_nearest(cents, z, m, min(probes, len(cents.top)))
    dist, near = cents.search(z, m)
    assert dist.shape == near.shape == (len(z), m) and dist.dtype == np.float32
    if m > 1:  # some rows' 2 nearest lists hold fewer than m: no bound from them (with 2 probes: -1s)
        nearest2 = np.argsort(((z[:, None] - cents.top[None]) ** 2).sum(2), axis=1)[:, :2]
        assert (np.diff(cents.bounds)[nearest2].sum(1) < m).any()
        assert (want_n < 0).any() == (probes == 2)
    np.testing.assert_array_equal(near, want_n)
    np.testing.assert_allclose(dist, want_d, rtol=1e-4, atol=1e-5)


def test_smallest_per_row_packed_and_argsort_agree():
    rng = np.random.default_rng(1)
    n, m = 50, 4
    r = rng.integers(0, n - 5, 600)  # the last rows have no candidate
    c = rng.permutation(10_000)[:600]
    d = rng.random(600).astype(np.float32)
    d[:3] = [0.0, -0.0, -1e-7]  # rounding can make a squared distance -0 or slightly negative
    want = np.full((n, m), np.inf, np.float32), np.full((n, m), -1)
    for i in range(n):
        mine = np.flatnonzero(r == i)
        mine = mine[np.argsort(d[mine], kind="stable")][:m]
        want[0][i, : len(mine)], want[1][i, : len(mine)] = np.maximum(d[mine], 0), c[mine]
    for packed in (True, False):
        dist, near = neardup._smallest_per_row(r, c, d, n, m, packed=packed)
        np.testing.assert_array_equal(dist, want[0])
        np.testing.assert_array_equal(near, want[1])


def _forest_set(n: int) -> tuple[np.ndarray, np.ndarray]:
    """600 rows: one image posted 300 times (re-encoded: cosine > 0.99 among them), 40 near copies
    of other rows at 0.95-0.99, and 40 weaker pairs at 0.90-0.949."""
    rng = np.random.default_rng(5)
    d = 32
    x = rng.standard_normal((n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    order = rng.permutation(n)
    clique, near, weak = order[:300], order[300:380], order[380:460]
    x[clique] = x[clique[0]] + 0.01 * rng.standard_normal((300, d)).astype(np.float32)
    x[clique] /= np.linalg.norm(x[clique], axis=1, keepdims=True)
    x[near[40:]] = _with_cosine(x[near[:40]], rng.uniform(0.95, 0.99, 40).astype(np.float32), rng)
    x[weak[40:]] = _with_cosine(x[weak[:40]], rng.uniform(0.90, 0.949, 40).astype(np.float32), rng)
    return x, rng.random(n) < 0.3


def _pair_set(i: np.ndarray, j: np.ndarray) -> set:
    return set(zip(i.tolist(), j.tolist()))


@pytest.mark.parametrize("n_clusters", [1, 6])
@pytest.mark.parametrize("incremental", [False, True])
@pytest.mark.parametrize("loop", [0, 10**9])
def test_span_returns_a_spanning_forest_of_the_strong_pairs(n_clusters, incremental, loop, monkeypatch):
    """One image posted 300 times is 44,850 pairs; with ``span`` the pairs from there up come back
    as a spanning forest: the same groups (components), no cycle (rows - groups pairs), every one a
    pair the full join finds; every pair below span comes back as it was. With ``new``, the same
    of the pairs touching a new row. ``loop``: the forest is joined by scipy (0) or by hand."""
    monkeypatch.setattr("lakecurate.neardup._FOREST_LOOP", loop)
    n = 600
    x, new = _forest_set(n)
    kw = {"n_clusters": n_clusters, "assign": n_clusters, "new": new if incremental else None}
    ui, uj, uc = semantic_pairs(x, 0.9, **kw)
    i, j, c = semantic_pairs(x, 0.9, span=0.95, **kw)
    strong, got = uc >= 0.95, c >= 0.95
    assert strong.sum() > (10_000 if incremental else 44_000)
    assert _pair_set(i[~got], j[~got]) == _pair_set(ui[~strong], uj[~strong]) != set()
    assert _pair_set(i[got], j[got]) <= _pair_set(ui[strong], uj[strong])
    assert (components(n, i[got], j[got]) == components(n, ui[strong], uj[strong])).all()
    linked = np.unique(np.concatenate([ui[strong], uj[strong]]))
    groups = len(np.unique(components(n, ui[strong], uj[strong])[linked]))
    assert got.sum() == len(linked) - groups  # a forest: no pair joins rows joined already
    assert (i < j).all() and len(_pair_set(i, j)) == len(i)
    with pytest.raises(ValueError, match="span"):
        semantic_pairs(x, 0.9, span=0.8)


@pytest.mark.parametrize("n_clusters", [1, 6])
def test_span_keeps_the_ranked_pairs(n_clusters, monkeypatch):
    """With per_row (the candidates of the clustered hash searches), every pair a row ranks among
    its k best comes back whatever span cuts, and the strong ones are still a forest but for those;
    the piled pairs are cut the same when compacted every few hundred."""
    n = 600
    x, _ = _forest_set(n)
    kw = {"n_clusters": n_clusters, "assign": n_clusters, "per_row": 4, "all_from": 0.92}
    ui, uj, uc, ur = semantic_pairs(x, 0.9, **kw)
    for compact in (None, 300):
        if compact is not None:
            monkeypatch.setattr("lakecurate.neardup._CAP_COMPACT", compact)
        i, j, c, r = semantic_pairs(x, 0.9, span=0.95, **kw)
        assert _pair_set(i[r], j[r]) == _pair_set(ui[ur], uj[ur])
        strong = uc >= 0.95
        assert (components(n, i[c >= 0.95], j[c >= 0.95]) == components(n, ui[strong], uj[strong])).all()
        assert len(i) < len(ui) // 10  # the clique's pairs: ~4 a row ranked, not 44,850
        band = (uc >= 0.92) & (uc < 0.95)  # all_from up to span: every pair
        assert _pair_set(ui[band], uj[band]) <= _pair_set(i, j)
