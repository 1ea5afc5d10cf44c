"""Concepts: k-means clusters of the image embeddings, per-concept rebalancing, and a training order.

``cluster(lake)`` writes ``concept`` (cluster id) and ``concept_dist`` (cosine distance to its
centroid). ``rebalance(lake, target=0.5)`` decides how much of each concept to keep, after
density-based pruning (Abbas et al. 2024): a concept's complexity is its spread (mean distance of
members to the centroid) times its isolation (distance from its centroid to the nearest other
one); budgets are a softmax of complexity / temperature over concepts, scaled to the target and
capped at each concept's size (what a capped concept cannot use goes to the others), at least one
row a concept when the target allows (a concept of one candidate counts with the others' median
spread: its own is 0). Inside a
concept the rows farthest from the centroid are kept first (the prototypical middle of a dense
concept is what repeats), or a seeded random choice. Small concepts whose budget exceeds their size
get ``sample_weight`` > 1 and ``repeats`` (at most ``max_repeats``), so the long tail is seen more
often. ``sequence(lake)`` writes ``seq_order`` and ``seq_shard``: random, curriculum by a score, or
interleaved across concepts so every batch spans many of them.

Columns are written like every other derived column (:mod:`lakecurate.columns`): provenance in the
field metadata, only changed fragments rewritten, one commit per column family.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from lakecurate import columns
from lakecurate.columns import LanceVectors, embedding_matrix
from lakecurate.engines import check_engine
from lakecurate.errors import LakeError
from lakecurate.graph import (check_current, check_decided, check_embedded, check_has_rows, check_view_not_empty,
                              commit_decisions, embedded_rows, lakecurate_on, where_columns, write_decisions)
from lakecurate.names import decided, default_view, embedding_columns
from lakecurate.neardup import ArrayVectors, in_value_order
from lakecurate.options import given, positive, spell, whole
from lakecurate.progress import progress_bar
from lakecurate.options import target as check_target
from lakecurate.sqlcheck import check_where
from lakecurate.stream import Partitioned, order_keys, sorted_records

if TYPE_CHECKING:
    import lance

    from lakecurate.neardup import VectorSource
    from lakecurate.store import Store

# k-means trains on at most this many rows per centroid (faiss's default sampling bound).
_MAX_PER_CENTROID = 256


_TASK_ROWS = 1 << 20  # rows of fragments a task of rebalance's complexity reads (its sums: k x d float64 back)


def default_k(n: int) -> int:
    """Concepts for n rows: sqrt(n), between 2 and 4096 (1M rows: 1,000 concepts).

    >>> default_k(10_000), default_k(1_000_000)
    (100, 1000)
    """
    return int(max(2, min(4096, round(np.sqrt(n)))))


def _embedded(lake: "Store", embedding: str | None) -> str:
    """The embedding cluster fits, refused while rows lack it (they got no concept, silently)."""
    from lakecurate.names import pick_embedding

    ds = lake.dataset()
    emb, prov = pick_embedding(lake, ds, embedding, need="concepts cluster the image embeddings")
    check_embedded(lake, ds, emb, prov, kind="image",
                   need="every row gets a concept (they would have none)", then="cluster")
    return emb


# --------------------------------------------------------------------------- pure parts
def kmeans(x: "np.ndarray | VectorSource", k: int, seed: int = 0, niter: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Spherical k-means (faiss) on unit vectors: (centroids k x d, unit-norm; assignment per row).
    ``x``: a matrix, or a vector source (``columns.LanceVectors``) that is sampled and streamed."""
    centroids = fit_centroids(x, k, seed, niter)
    return centroids, assign(x, centroids)[0]


def fit_centroids(x: "np.ndarray | VectorSource", k: int, seed: int = 0, niter: int = 20) -> np.ndarray:
    """The k unit centroids of spherical k-means (faiss), trained on at most _MAX_PER_CENTROID
    rows per centroid, read by position (all rows when there are no more, so small inputs train on
    every row): memory grows with k, not with the rows."""
    import faiss

    src = _as_source(x)
    k = max(1, min(k, src.n))
    rng = np.random.default_rng(seed)
    n_train = min(src.n, _MAX_PER_CENTROID * k)
    rows = np.sort(rng.choice(src.n, n_train, replace=False)) if n_train < src.n else np.arange(src.n)
    sample = in_value_order(np.asarray(src.take(rows), dtype=np.float32), seed)
    km = faiss.Kmeans(sample.shape[1], k, niter=niter, seed=seed, spherical=True, verbose=False,
                      max_points_per_centroid=_MAX_PER_CENTROID, min_points_per_centroid=1)
    km.train(sample)
    return km.centroids


def assign(x: "np.ndarray | VectorSource", centroids: np.ndarray, batch: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """(nearest centroid per row as int32, cosine distance to it as float32), streamed in batches."""
    import faiss

    src = _as_source(x)
    index = faiss.IndexFlatL2(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, np.float32))
    label = np.empty(src.n, np.int32)
    dist = np.empty(src.n, np.float32)
    for start, part in src.batches(batch):
        z = np.ascontiguousarray(part, dtype=np.float32)
        near = index.search(z, 1)[1][:, 0]
        label[start : start + len(z)] = near
        # float16 vectors have norms within ~1e-4 of 1: a row alone in its concept would read -1e-4
        dist[start : start + len(z)] = np.maximum(0.0, 1 - np.einsum("ij,ij->i", z, centroids[near]))
    return label, dist


def _as_source(x: "np.ndarray | VectorSource") -> "VectorSource":
    return x if hasattr(x, "batches") else ArrayVectors(np.asarray(x))


def centroid_distance(x: np.ndarray, centroids: np.ndarray, label: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """Cosine distance of each row to its centroid, in chunks (never an N x d gather)."""
    return np.concatenate([1 - np.einsum("ij,ij->i", x[s : s + chunk], centroids[label[s : s + chunk]])
                           for s in range(0, len(x), chunk)]) if len(x) else np.zeros(0, np.float32)


def complexity(x: "np.ndarray | VectorSource", label: np.ndarray, k: int) -> pd.DataFrame:
    """Per concept: size, spread (mean cosine distance to the centroid), isolation (cosine distance
    from the centroid to the nearest other centroid) and complexity = spread x isolation.
    ``x``: a matrix or a vector source, read in two streamed passes (sums, then distances)."""
    src, label = _as_source(x), np.asarray(label)
    cent = _unit(concept_sums(src, label, k))
    return _complexity_table(np.bincount(label, minlength=k), cent, concept_sums(src, label, k, cent))


def complexity_by_fragment(ds: "lance.LanceDataset", column: str, k: int, where: str | None = None, *,
                           engine: str = "local", address: str | None = None,
                           storage_options: dict | None = None, bar: Any = None) -> pd.DataFrame:
    """:func:`complexity` of the rows of ``ds`` with a concept (and matching ``where``), read a
    fragment at a time: a task per ~_TASK_ROWS rows of fragments for each of the two passes, here
    one after another, or each a Ray task (``engine="ray"``) that reads its fragments itself
    (memory: one fragment's vectors and the k x d sums; no array a row). The partial sums are
    added in task order on either engine, so both give the same floats, and the same budgets.
    ``bar``: a progress bar told each task's rows as its result comes."""
    from lakecurate.engines import ordered_map

    frags = ds.get_fragments()
    rows = {f.fragment_id: f.count_rows() for f in frags}
    groups = columns.fragment_groups(frags, _TASK_ROWS, list(rows.values()))
    calls = [((ds.uri, ds.version, storage_options, fids, column, where),) for fids in groups]

    def total(centroids: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        sums, sizes = np.zeros((k, ds.schema.field(column).type.list_size) if centroids is None else k), np.zeros(k, np.int64)
        for fids, (part, count) in zip(groups, ordered_map(concept_sums_task, calls, engine=engine, shared=(k, centroids),
                                                           address=address)):
            sums += part
            sizes += count
            if bar is not None:
                bar.update(sum(rows[f] for f in fids))
        return sums, sizes

    sums, sizes = total(None)
    cent = _unit(sums)
    return _complexity_table(sizes, cent, total(cent)[0])


def candidates(frag: "lance.LanceFragment", where: str | None, dist: bool = False) -> tuple[np.ndarray, ...]:
    """(positions in the fragment, concept as int32[, cosine distance to it, 0 where null]) of its
    rows with a concept that match ``where``: rebalance's candidates, one fragment's."""
    t = frag.to_table(columns=["concept", "concept_dist"] if dist else ["concept"], with_row_address=True)
    lab = pc.fill_null(t.column("concept"), -1).to_numpy()
    at = np.flatnonzero((lab >= 0) & _passing(frag, t, where))
    if not dist:
        return at, lab[at].astype(np.int32)
    return at, lab[at].astype(np.int32), pc.fill_null(t.column("concept_dist"), 0.0).to_numpy()[at]


def _passing(frag: "lance.LanceFragment", t: pa.Table, where: str | None) -> np.ndarray:
    """Which rows of ``t`` (a read of ``frag`` with its row addresses) match ``where`` (all without one)."""
    if not where:
        return np.ones(t.num_rows, bool)
    passed = frag.to_table(columns=[], filter=where, with_row_address=True).column("_rowaddr").to_numpy()
    return np.isin(t.column("_rowaddr").to_numpy(), passed)


def concept_sums(src: "VectorSource", label: np.ndarray, k: int, centroids: np.ndarray | None = None) -> np.ndarray:
    """One streamed pass over ``src``: per concept the sum of its rows' vectors (k x d, float64),
    or, given ``centroids``, the sum of their cosine distances to their centroid (k)."""
    from scipy.sparse import csr_matrix

    out = np.zeros((k, src.d) if centroids is None else k, np.float64)
    for start, part in src.batches(65536):
        lab = label[start : start + len(part)]
        part = np.asarray(part, np.float32)
        if centroids is None:
            # One sparse (k x rows) @ (rows x d) product per batch: np.add.at is ~50x slower.
            member = csr_matrix((np.ones(len(lab), np.float32), (lab, np.arange(len(lab)))), shape=(k, len(lab)))
            out += np.asarray(member @ part, dtype=np.float64)
        else:
            out += np.bincount(lab, weights=centroid_distance(part, centroids, lab), minlength=k)
    return out


def concept_sums_task(spec: tuple, k: int, centroids: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """A task of :func:`complexity_by_fragment` (here or on Ray): :func:`concept_sums` over the
    candidates of some fragments, read a fragment at a time, and how many there are per concept."""
    import lance

    uri, version, storage_options, fids, column, where = spec
    ds = lance.dataset(uri, version=version, storage_options=storage_options)
    out = np.zeros((k, ds.schema.field(column).type.list_size) if centroids is None else k, np.float64)
    sizes = np.zeros(k, np.int64)
    for fid in fids:
        frag = ds.get_fragment(fid)
        at, lab = candidates(frag, where)
        if len(at):
            x = embedding_matrix(frag.take(at, columns=[column]).column(0), dtype=None)[0]
            out += concept_sums(ArrayVectors(x), lab, k, centroids)
            sizes += np.bincount(lab, minlength=k)
    return out, sizes


def _unit(sums: np.ndarray) -> np.ndarray:
    return (sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def _complexity_table(sizes: np.ndarray, cent: np.ndarray, dist_sums: np.ndarray) -> pd.DataFrame:
    k = len(sizes)
    spread = np.maximum(dist_sums / np.maximum(sizes, 1), 0.0) + 0.0  # rounding gave -0.0 and -1e-8
    # one candidate is its own centroid: its spread is 0, not "as dense as can be" (the rarest
    # concept got the lowest complexity, so budget 0): the median spread of the others instead
    several = sizes > 1
    if several.any():
        spread = np.where(sizes == 1, np.median(spread[several]), spread)
    sim = cent @ cent.T
    np.fill_diagonal(sim, -np.inf)
    sim[:, sizes == 0] = -np.inf
    nearest = sim.max(axis=1)
    # no other concept with candidates (a --where inside one concept): as alone as k = 1, not
    # infinitely isolated (an infinite complexity made a budget of -9e18 and kept no row)
    isolation = np.where(np.isfinite(nearest), 1 - nearest, 1.0) if k > 1 else np.ones(k)
    return pd.DataFrame({"concept": np.arange(k), "size": sizes, "spread": spread, "isolation": isolation,
                         "complexity": spread * isolation})


def budgets(sizes: np.ndarray, complexity_: np.ndarray, target: int, temperature: float) -> np.ndarray:
    """Rows per concept: softmax(complexity / temperature) shares of ``target``, each capped at the
    concept's size; what capped concepts cannot use is shared among the rest (water filling).
    Complexities are divided by their mean first, so the temperature does not depend on the encoder.
    Every non-empty concept keeps at least one row when the target allows one each (:data:`FLOOR`;
    a dense concept, or a whole scene posted many times, vanished from the view).

    >>> budgets(np.array([100, 10, 10]), np.array([0.01, 0.2, 0.2]), 60, 0.5).tolist()
    [40, 10, 10]
    >>> budgets(np.array([50, 50, 5]), np.array([0.001, 0.3, 0.3]), 20, 0.1).tolist()  # the dense one keeps 1
    [1, 14, 5]
    """
    sizes = np.asarray(sizes, np.int64)
    target = int(min(target, sizes.sum()))
    floor = np.minimum(sizes, FLOOR) if target >= np.minimum(sizes, FLOOR).sum() else np.zeros_like(sizes)
    return floor + _water_fill(sizes - floor, _logits(sizes, complexity_, temperature), target - int(floor.sum()))


# The columns each of this module's stages writes (pipeline.py checks a file's columns against them).
CONCEPT_FIELDS = [pa.field("concept", pa.int32()), pa.field("concept_dist", pa.float32())]
REBALANCE_FIELDS = [pa.field("rebalance_keep", pa.bool_()), pa.field("sample_weight", pa.float32()),
                    pa.field("repeats", pa.int32())]
SEQUENCE_FIELDS = [pa.field("seq_order", pa.int64()), pa.field("seq_shard", pa.int32())]
FLOOR = 1  # rows every non-empty concept keeps, when the target allows as many


def _not_own(where: str | None, fields: list[pa.Field], stage: str) -> None:
    """Refuse a ``--where`` that reads what the stage itself writes: each run chose among the rows
    the last one chose (`rebalance --where rebalance_keep` run three times kept 3, 2, then 1 of 6),
    and status still called it current."""
    own = where_columns(where, [f.name for f in fields]) if where else []
    if own:
        raise LakeError(f"{spell('--where')} {where!r} reads {', '.join(own)}, which {stage} writes: each run would choose among "
                        f"the rows the last one chose; select by the columns they are made from (keep, concept, ...)")


def _water_fill(sizes: np.ndarray, z: np.ndarray, target: int) -> np.ndarray:
    """``target`` rows shared by softmax weights exp(z), each capped at ``sizes`` (integers)."""
    out = np.zeros(len(sizes), np.float64)
    free = sizes > 0
    left = float(target)
    for _ in range(len(sizes) + 1):  # each round caps at least one concept, or ends
        if left <= 0 or not free.any():
            break
        # shifted by the largest free logit each round: at a low temperature every weight but the
        # largest underflows to 0, and once that concept is capped the shares were 0 / 0
        w = np.exp(np.where(free, z - z[free].max(), -np.inf))
        share = left * w / w.sum()
        capped = free & (out + share >= sizes)
        if not capped.any():
            out += share
            break
        left -= (sizes[capped] - out[capped]).sum()
        out[capped] = sizes[capped]
        free &= ~capped
    # Integer rows that add up to the target: floor, then the largest remainders.
    base = np.floor(out).astype(np.int64)
    extra = target - base.sum()
    if extra > 0:
        room = np.flatnonzero(base < sizes)
        order = room[np.argsort(-(out - base)[room], kind="stable")]
        base[order[:extra]] += 1
    return base


def concept_weights(sizes: np.ndarray, quota: np.ndarray, raw: np.ndarray) -> list[float]:
    """Each concept's ``sample_weight``: its uncapped budget over its rows where it keeps them all
    (its budget past its size: the long tail, seen more often), else 1. A concept pruned to its
    budget got 1.049: the uncapped budget ignores the floor and the caps that gave it fewer rows.

    >>> concept_weights(np.array([6, 2, 20]), np.array([5, 2, 1]), np.array([6.3, 3.0, 0.5]))
    [1.0, 1.5, 1.0]
    """
    return [max(1.0, float(raw[c]) / float(sizes[c])) if sizes[c] and quota[c] >= sizes[c] else 1.0
            for c in range(len(sizes))]


def raw_budgets(sizes: np.ndarray, complexity_: np.ndarray, target: int, temperature: float) -> np.ndarray:
    """The uncapped softmax budgets (what each concept *would* get): the up-sampling signal."""
    w = _softmax_weights(np.asarray(sizes, np.int64), complexity_, temperature)
    return target * w / w.sum()


def _logits(sizes: np.ndarray, complexity_: np.ndarray, temperature: float) -> np.ndarray:
    """complexity / mean complexity / temperature."""
    c = np.asarray(complexity_, np.float64)
    return c / (c[sizes > 0].mean() or 1.0) / max(temperature, 1e-6)


def _softmax_weights(sizes: np.ndarray, complexity_: np.ndarray, temperature: float) -> np.ndarray:
    """exp(logits), 0 for empty concepts (max-shifted: no overflow)."""
    z = _logits(sizes, complexity_, temperature)
    w = np.exp(z - z[sizes > 0].max())
    w[sizes == 0] = 0
    return w


# --------------------------------------------------------------------------- stages
@dataclass
class ClusterReport:
    """What :func:`cluster` did: ``k`` concepts over ``rows`` embedded rows, each concept's size,
    the versions it wrote (none when the concepts were there already)."""
    lake: str
    embedding: str
    k: int = 0
    rows: int = 0
    concepts: list[dict[str, Any]] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SequenceReport:
    """What :func:`sequence` did: ``rows`` ordered (``mode``, among ``where``) into ``shards`` of
    ``shard_size``; ``version``: the version that holds this order (the one written, or the one read
    when it held the order already). ``report["rows"]`` reads a field as the dict it once was did."""
    lake: str
    mode: str
    rows: int = 0
    shards: int = 0
    shard_size: int = 0
    where: str | None = None
    version: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __getitem__(self, key: str) -> Any:  # (sequence returned a dict: res["rows"] still reads)
        return self.to_dict()[key]


@dataclass
class ConceptReport:
    """What :func:`rebalance` did: ``target`` of ``rows`` candidates, ``kept`` of them (with their
    repeats: ``exported_rows``), each concept's budget."""
    lake: str
    embedding: str
    k: int = 0
    rows: int = 0
    target: int = 0
    kept: int = 0
    exported_rows: int = 0  # kept rows counted with their repeats
    concepts: list[dict[str, Any]] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)
    seconds: float = 0.0
    stale: list[str] = field(default_factory=list)  # inputs that were not current (run with allow_stale)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def assign_fragment(uri: str, version: int, storage_options: dict | None, fragment_id: int, column: str,
                    centroids: np.ndarray, batch: int = 65536) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row addresses, concept, cosine distance) of one fragment's rows that have a vector, read in
    batches: what a Ray task of ``cluster --engine ray`` does (memory: one batch and k centroids)."""
    import lance

    ds = lance.dataset(uri, version=version, storage_options=storage_options)
    frag = ds.get_fragment(fragment_id)
    addrs, labels, dists = [], [], []
    for b in frag.scanner(columns=[column], with_row_address=True, batch_size=batch).to_batches():
        x, valid = embedding_matrix(b.column(column), dtype=None)
        if valid.any():
            label, dist = assign(x[valid], centroids)
            addrs.append(b.column("_rowaddr").to_numpy()[valid])
            labels.append(label)
            dists.append(dist)
    if not addrs:
        return np.zeros(0, np.uint64), np.zeros(0, np.int32), np.zeros(0, np.float32)
    return np.concatenate(addrs), np.concatenate(labels), np.concatenate(dists)


def cluster(lake: "Store", k: int | None = None, *, embedding: str | None = None, seed: int | None = None,
            recompute: bool = False, engine: str = "local", address: str | None = None) -> ClusterReport:
    """k-means concepts of the image embeddings: ``concept`` and ``concept_dist`` columns.

    ``k``, ``seed`` and ``embedding`` not given keep those of the lake's concepts on a re-run (the
    default k grows with the rows: a plain re-run after an ingest was refused as another config);
    with ``recompute`` they take their defaults (k about sqrt of the embedded rows, 2..4096; seed 0).
    The clustering is a global fit: a run with the same settings on a lake with new rows re-fits
    (every row's concept may move); the same settings on an unchanged lake write nothing.
    ``engine="ray"``: the centroids are fitted here on a sample (read by position), and every
    fragment's rows are assigned by a Ray task of its own (:func:`assign_fragment`); the values, and
    the one commit, are the local engine's.

    Example::

        lake.cluster(k=100)
        lake.sql("SELECT concept, count(*) AS n FROM pairs GROUP BY concept ORDER BY n DESC")
    """
    t0 = time.perf_counter()
    if k is not None:
        k = whole("-k", k, 2)  # (one concept is every row: the default gives one only to a lake of one row)
    if seed is not None:
        seed = whole("--seed", seed, 0)
    check_engine(engine)
    ds = lake.dataset()
    had: dict[str, Any] = {}
    if not recompute and "concept" in ds.schema.names:
        # A plain re-run keeps the settings of the lake's concepts that it is not given (k, seed,
        # embedding): the default k grows with the rows, so a re-run after an ingest was refused as
        # "made with another config"; --recompute starts again from the defaults.
        had = (columns.field_provenance(ds.schema.field("concept"), strict=False) or {}).get("config") or {}
    if embedding is None and isinstance(had.get("embedding"), str) and \
            embedding_columns(had["embedding"])["image"] in ds.schema.names:
        embedding = had["embedding"]
    if seed is None:
        seed = had["seed"] if isinstance(had.get("seed"), int) and had["seed"] >= 0 else 0
    check_has_rows(lake, ds)  # (before "no rows with an embedding; run: lakecurate embed", which embed cannot help)
    emb = _embedded(lake, embedding)
    col = embedding_columns(emb)["image"]
    # The vectors are sampled and streamed (columns.LanceVectors), never read whole.
    tbl = ds.to_table(columns=[c for c in ("concept", "concept_dist") if c in ds.schema.names], with_row_address=True)
    valid = embedded_rows(lake, ds, col, then="cluster")
    n_valid = int(valid.sum())
    if n_valid == 0:
        error = embedding_columns(emb)["error"]
        failed = ds.count_rows(filter=f"{error} IS NOT NULL") if error in ds.schema.names else 0
        raise LakeError(f"lake '{lake.uri}' has no rows with an '{emb}_image' embedding; " + (
            f"embed ran, and every row has none ({failed} say why in {error}: images ingest refused or that do not "
            "decode); ingest images that do" if failed else f"run: lakecurate embed {lake.shell}"))
    if k is not None and k > n_valid:  # k-means fit min(k, rows) centroids, and the rest were empty concepts
        raise LakeError(f"{spell('-k')} {k} asks for more concepts than lake '{lake.uri}' has embedded rows ({n_valid}); " + (
            f"{spell('-k')} needs at least 2 embedded rows: leave {spell('-k')} out (k is then chosen from the rows: one row "
            "is one concept; in a pipeline file, a [cluster] step without k), or embed more rows" if n_valid < 2 else  # (-k 1 is refused)
            f"choose {spell('-k')} up to {n_valid}, or leave it out (default: {min(default_k(n_valid), n_valid)}, about the "
            "square root of the rows)"))
    if k is None and had.get("embedding") == emb and isinstance(had.get("k"), int) and had["k"] <= n_valid:
        k = had["k"]
    k = int(k or min(default_k(n_valid), n_valid))  # (one row: one concept, not 2 with one empty)
    report = ClusterReport(lake=lake.uri, embedding=emb, k=k, rows=n_valid)
    src = LanceVectors(ds, col, np.flatnonzero(valid))
    cent = fit_centroids(src, k, seed)
    label = np.full(len(valid), -1, np.int32)
    dist = np.full(len(valid), np.nan, np.float32)
    if engine == "ray":
        from lakecurate.engines import ray_task_map

        # (fragments are scanned in manifest order, which after a compaction is not id order)
        table_addr = tbl.column("_rowaddr").to_numpy()
        by_addr = np.argsort(table_addr)
        calls = [(lake.table_uri, ds.version, lake.storage_options, f.fragment_id, col, cent)
                 for f in ds.get_fragments()]
        for addr, part_label, part_dist in ray_task_map(assign_fragment, calls, address=address, retries=2):
            at = by_addr[np.searchsorted(table_addr, addr, sorter=by_addr)]
            label[at], dist[at] = part_label, part_dist
        assigned = label[valid]
    else:
        assigned, assigned_dist = assign(src, cent)
        label[valid] = assigned
        dist[valid] = assigned_dist
    prov = columns.provenance("concepts", {"embedding": emb, "k": k, "seed": seed, "algorithm": "faiss spherical k-means"},
                              [embedding_columns(emb)["image"]], ds.version)
    fields = CONCEPT_FIELDS
    replace = columns.config_changed(lake, "concept", prov)
    if replace and not recompute:
        old = columns.field_provenance(ds.schema.field("concept"))["config"]
        now = prov["config"]
        differ = ", ".join(f"{key} {old.get(key)} -> {now.get(key)}" for key in now if old.get(key) != now.get(key))
        raise LakeError(f"lake '{lake.uri}' has concepts made with other settings ({differ}); "
                        f"pass {given('--recompute')} to replace them")
    added = columns.declare(lake, fields, prov, recompute=replace)
    if replace or added:  # (added: made again whole, one of them dropped by another writer: the old values are gone)
        tbl = tbl.drop_columns([c for c in ("concept", "concept_dist") if c in tbl.column_names])
    _, version = write_decisions(lake, tbl, {
        "concept": pa.array(label, pa.int32(), mask=label < 0),
        "concept_dist": pa.array(dist, pa.float32(), mask=np.isnan(dist)),
    }, sources=prov["source_columns"], read_version=ds.version)
    report.versions += [version] if version is not None else []
    sizes = np.bincount(assigned, minlength=k)
    report.concepts = [{"concept": c, "size": int(s)} for c, s in enumerate(sizes)]
    report.seconds = time.perf_counter() - t0
    return report


def rebalance(
    lake: "Store",
    target: float | int = 0.5,
    *,
    temperature: float = 0.5,
    rule: str = "far",
    max_repeats: int = 1,
    where: str | None = None,
    embedding: str | None = None,
    seed: int = 0,
    allow_stale: bool = False,
    engine: str = "local",
    address: str | None = None,
    progress: bool | None = None,
) -> ConceptReport:
    """Keep ``target`` rows (a fraction of the candidates in (0, 1], or a count >= 1; see
    :func:`lakecurate.options.target`), fewer from dense simple concepts and more from complex ones:
    ``rebalance_keep``, ``sample_weight``, ``repeats``.

    Candidates are the rows matching ``where`` (default: ``keep`` when a recipe ran, else every
    row with a concept). ``rule``: "far" keeps the rows farthest from their centroid first,
    "random" a seeded random choice. ``max_repeats`` > 1 up-samples concepts whose uncapped
    budget exceeds their size: repeats = min(max_repeats, round(budget / size)).

    The candidates' vectors are read twice (per-concept sums, then distances to the recomputed
    centroids), a task per ~million rows of fragments (:func:`complexity_by_fragment`);
    ``engine="ray"`` runs those tasks on Ray, each reading its fragments itself. The keep rule
    reads the concept columns a fragment at a time here and files the candidates by concept
    (:func:`_keep_thresholds`): memory is a fragment's columns, the k x d sums and the largest
    concept's candidates (20 bytes each), never an array a row. The decisions equal the local
    engine's. ``progress``: a bar over its five passes' rows (see :mod:`lakecurate.progress`).

    Example::

        report = lake.rebalance(0.5)          # half the rows; report.concepts: per-concept table
    """
    t0 = time.perf_counter()
    if rule not in ("far", "random"):
        raise LakeError(f"unknown keep rule {rule!r}; choose far or random")
    target = check_target(target)
    temperature = positive("--temperature", temperature)
    max_repeats = whole("--max-repeats", max_repeats, 1)
    seed = whole("--seed", seed, 0)
    check_engine(engine)
    ds = lake.dataset()
    check_has_rows(lake, ds)
    where = check_where(where, "--where", ds)
    _not_own(where, REBALANCE_FIELDS, "rebalance")
    if "concept" not in ds.schema.names:
        raise LakeError(f"lake '{lake.uri}' has no concepts yet; run: {lakecurate_on(lake)} cluster {lake.shell}")
    emb = embedding or columns.field_provenance(ds.schema.field("concept"))["config"]["embedding"]
    if where is None and decided(ds.schema, "keep"):  # (a keep another writer added is not a recipe's)
        where = "keep"
    elif where is None:  # (among every row: refused where curate's decision was dropped outside lakecurate)
        check_decided(lake, ds, None, what="rebalance", allow_stale=allow_stale)
    # Choosing among stale decisions would rebalance what the curator no longer decided.
    # Concepts are read too: stale ones (rows embedded since) leave the new rows out of the candidates.
    report_stale = check_current(lake, ds, where_columns(where, ds.schema.names) + ["concept", "concept_dist"],
                                 what="rebalance", allow_stale=allow_stale)
    frags = ds.get_fragments()
    # Five passes over the rows (a first look, the complexity's two, the keep rule's two).
    bar = progress_bar(total=5 * ds.count_rows(), desc="rebalance", unit="row", progress=progress)
    # A first look: how many concepts (the largest of any row's) and candidates.
    top = (pc.max(b.column(0)).as_py() for b in ds.to_batches(columns=["concept"]))
    k = max((int(t) + 1 for t in top if t is not None), default=0)
    n = 0
    for frag in frags:
        n += len(candidates(frag, where)[0])
        bar.update(frag.count_rows())
    if n == 0:
        check_view_not_empty(lake, ds, where, "rebalance")  # (curate kept nothing: no --where or cluster helps)
        raise LakeError(f"no candidate rows to rebalance in lake '{lake.uri}' (rows with a concept where "
                        f"{where or 'true'}); check {spell('--where')}, or run: {lakecurate_on(lake)} cluster {lake.shell}")
    goal = int(round(target * n)) if isinstance(target, float) and target <= 1 else int(target)
    rows = f"{n} candidate row{'s' if n != 1 else ''}"
    if goal < 1:  # (a fraction: a count is at least 1)
        raise LakeError(f"{spell('--target')} {target} of {rows} rounds to 0 rows; pass a fraction of at least {1 / n:.3g} "
                        f"or a count of rows up to {n}")
    if goal > n:
        raise LakeError(f"{spell('--target')} {target} asks for {goal} rows, more than the {rows}; pass a count up to {n} "
                        "or a fraction in (0, 1]")
    report = ConceptReport(lake=lake.uri, embedding=emb, k=k, rows=n, target=goal, stale=report_stale)
    # The candidates' vectors are read twice (sums, distances), a fragment at a time, never whole.
    table = complexity_by_fragment(ds, embedding_columns(emb)["image"], k, where, engine=engine, address=address,
                                   storage_options=lake.storage_options, bar=bar)
    sizes = table["size"].to_numpy()
    quota = budgets(sizes, table["complexity"].to_numpy(), goal, temperature)
    raw = raw_budgets(sizes, table["complexity"].to_numpy(), goal, temperature)
    # The keep rule: per concept its budget's first candidates by the rule's key (ties: the first
    # in scan order), found per concept from the candidates filed by concept (stream.Partitioned).
    threshold = _keep_thresholds(frags, where, rule, seed, quota, bar)
    weights = concept_weights(sizes, quota, raw)
    w = np.array(weights, np.float32)
    reps = np.array([int(min(max_repeats, max(1, round(x)))) for x in weights], np.int32)
    prov = columns.provenance("rebalance", {"target": target, "temperature": temperature, "rule": rule,
                                            "max_repeats": max_repeats, "where": where, "seed": seed, "floor": FLOOR},
                              # the view it chose among is an input too: a new recipe makes this stale
                              ["concept", "concept_dist", embedding_columns(emb)["image"], *where_columns(where, ds.schema.names)],
                              ds.version)
    fields = REBALANCE_FIELDS
    names = [f.name for f in fields]
    replaced = columns.declare_view(lake, fields, prov)  # a new decision replaces the old (tags keep history)
    old = [c for c in names if c in ds.schema.names and not replaced]
    # Written a fragment at a time: each fragment's candidates and keys again, kept by the thresholds.
    changed = columns.ChangedFragments(lake, names)
    kept = np.zeros(k, np.int64)
    for frag, (at, label, keep) in zip(frags, _kept(frags, where, rule, seed, threshold, bar)):
        m = frag.count_rows()
        f_keep = np.zeros(m, bool)
        f_keep[at] = keep
        f_label = np.zeros(m, np.int32)
        f_label[at] = label
        kept += np.bincount(label[keep], minlength=k)
        t = frag.to_table(columns=old, with_row_address=True)
        changed.add(t, {"rebalance_keep": pa.array(f_keep, pa.bool_()),
                        "sample_weight": pa.array(w[f_label], pa.float32(), mask=~f_keep),
                        "repeats": pa.array(reps[f_label], pa.int32(), mask=~f_keep)})
    bar.close()
    _, version = commit_decisions(lake, changed, sources=prov["source_columns"], read_version=ds.version)
    table["budget"] = quota
    table["kept"] = kept
    table["repeats"] = np.where(kept > 0, reps, 0)
    report.versions += [version] if version is not None else []
    report.kept = int(kept.sum())
    report.exported_rows = int((reps * kept).sum())
    report.concepts = table.round(4).to_dict("records")
    report.seconds = time.perf_counter() - t0
    return report


_KEY = np.dtype([("concept", np.int32), ("key", np.float64), ("at", np.int64)])  # a candidate filed for the keep rule


def _keys(frags: list, where: str | None, rule: str, seed: int, bar: Any):
    """Per fragment (positions, concepts, keys, numbers) of its candidates: the keep rule's key
    ("far": minus the distance to the centroid; "random": a seeded uniform draw, in scan order, so
    the same on every read) and each candidate's number in scan order (the tie-breaker)."""
    rng = np.random.default_rng(seed)
    first = 0
    for frag in frags:
        at, label, dist = candidates(frag, where, dist=True)
        key = -dist.astype(np.float64) if rule == "far" else rng.random(len(at))
        bar.update(frag.count_rows())
        yield at, label, key, np.arange(first, first + len(at))
        first += len(at)


def _keep_thresholds(frags: list, where: str | None, rule: str, seed: int, quota: np.ndarray, bar: Any) -> np.ndarray:
    """Per concept the (key, number) of its last kept candidate (its quota-th by key, then
    number), or key -inf where it keeps none: one pass filing (concept, key, number) by concept,
    then one partition of concepts at a time (memory: the largest partition's candidates)."""
    out = np.zeros(len(quota), _KEY)
    out["key"], out["at"], out["concept"] = -np.inf, -1, np.arange(len(quota))
    with Partitioned(_KEY) as files:
        for _, label, key, number in _keys(frags, where, rule, seed, bar):
            rec = np.empty(len(label), _KEY)
            rec["concept"], rec["key"], rec["at"] = label, key, number
            files.add(label % files.n, rec)
        for _, rec in files.partitions():
            rec = rec[np.lexsort((rec["at"], rec["key"], rec["concept"]))]  # by concept, key, number
            cs, first = np.unique(rec["concept"], return_index=True)
            q = quota[cs]
            last = first[q > 0] + q[q > 0] - 1
            out[cs[q > 0]] = rec[last]
    return out


def _kept(frags: list, where: str | None, rule: str, seed: int, threshold: np.ndarray, bar: Any):
    """Per fragment (candidate positions, concepts, kept): a candidate is kept when its (key,
    number) is at most its concept's threshold."""
    for at, label, key, number in _keys(frags, where, rule, seed, bar):
        t = threshold[label]
        yield at, label, (key < t["key"]) | ((key == t["key"]) & (number <= t["at"]))


def sequence(lake: "Store", mode: str = "interleave", *, seed: int = 0, score: str | None = None,
             where: str | None = None, shard_size: int = 10_000, allow_stale: bool = False,
             progress: bool | None = None) -> SequenceReport:
    """Write ``seq_order`` (0.. over the selected rows, null elsewhere) and ``seq_shard``.

    ``mode``: "random" (seeded shuffle), "curriculum" (ascending ``score`` column: easy first when
    the score is an alignment score, pass e.g. ``-offline_score`` for descending), "interleave"
    (round-robin over concepts, random inside each, so consecutive rows span many concepts).
    ``where`` defaults to ``rebalance_keep``, else ``keep``, else every row ingest accepted. ``seq_shard`` is
    ``seq_order // shard_size``; ``export`` cuts WebDataset shards of this size unless told otherwise.

    Memory does not grow with the lake: each chosen row gets a 64-bit order key (a seeded random
    draw, its score's bits, or its concept and a random rank) as its fragment is read, the keys are
    sorted out of core (:func:`lakecurate.stream.sorted_records`; interleave sorts twice: by
    concept, then by rank inside it), and each row's place is filed by fragment and written a
    fragment at a time. (Since 2026-12 a seed gives another random order than before: the draw is
    a key a row, not one whole-lake permutation.) ``progress``: a bar over the rows keyed and written.

    Returns a :class:`SequenceReport` (``report["rows"]`` as well as ``report.rows``).
    """
    t0 = time.perf_counter()
    if mode not in ("random", "curriculum", "interleave"):
        raise LakeError(f"unknown order {mode!r}; choose random, curriculum or interleave")
    shard_size = whole("--shard-size", shard_size, 1)
    seed = whole("--seed", seed, 0)
    ds = lake.dataset()
    names = ds.schema.names
    where = check_where(where, "--where", ds)
    _not_own(where, SEQUENCE_FIELDS, "sequence")
    if where is None:  # (no decision yet: the rows ingest accepted; it ordered rows without an image too)
        where = default_view(ds.schema)
        check_decided(lake, ds, where, what="sequence", allow_stale=allow_stale)
        where = where or "ingest_status != 'error'"
    if score is not None and mode != "curriculum":  # (ignored, yet recorded in the order's provenance)
        raise LakeError(f"{spell('--score')} orders a curriculum; {spell('--mode')} {mode} does not read it: drop it or use "
                        f"{spell('--mode')} curriculum")
    if mode == "interleave" and "concept" not in names:
        raise LakeError(f"interleaving needs concepts; run: {lakecurate_on(lake)} cluster {lake.shell}")
    read = where_columns(where, names) + (["concept"] if mode == "interleave" else [])
    read += [score.lstrip("-")] if mode == "curriculum" and score and score.lstrip("-") in names else []
    check_current(lake, ds, read, what="sequence", allow_stale=allow_stale)
    desc = bool(score and score.startswith("-"))
    score_col = score.lstrip("-") if score else None
    if score is not None and (score.startswith("--") or score.lstrip("-") in ("seq_order", "seq_shard", "phash", "phash_flip")):
        raise LakeError(f"{spell('--score')} {score!r} is not a score to order by: " + (
            "one '-' orders descending" if score.startswith("--") else
            "it is the order sequence writes" if "seq_" in score else "a perceptual hash, not a measure")
            + "; name a number column such as a *_score, cap_words or img_sharpness")
    if mode == "curriculum":
        numeric = [f.name for f in ds.schema if (pa.types.is_integer(f.type) or pa.types.is_floating(f.type)
                   or pa.types.is_boolean(f.type)) and f.name not in ("seq_order", "seq_shard", "phash", "phash_flip")]
        if not score_col or score_col not in numeric:  # a text or vector column failed in Arrow's cast, a traceback
            msg = f"curriculum needs {given('--score', 'COLUMN')}, one of the lake's number columns ({', '.join(numeric)})"
            if score_col:
                msg += f"; {score!r} {'is not a number column' if score_col in names else 'is not in the lake'}"
            raise LakeError(msg)
    if not (ds.count_rows(filter=where) if where else ds.count_rows()):  # it wiped the order there was, exit 0
        check_has_rows(lake, ds)
        check_view_not_empty(lake, ds, where, "sequence")
        raise LakeError(f"no rows to order in lake '{lake.uri}'" + (f" where {where}" if where else "")
                        + f"; check {spell('--where')} (nothing was written)")
    if mode == "interleave" and not ds.count_rows(filter=f"({where}) AND concept IS NOT NULL" if where else "concept IS NOT NULL"):
        raise LakeError(f"interleave takes turns among concepts, and no row to order in lake '{lake.uri}'"
                        + (f" (where {where})" if where else "") + " has one (rows without an image embedding get "
                        f"none); run: {lakecurate_on(lake)} cluster {lake.shell}, or use {given('--mode', 'random')} (nothing was written)")
    cols = (["concept"] if mode == "interleave" else []) + ([score_col] if mode == "curriculum" else [])  # no ids: addresses
    frags = ds.get_fragments()
    bar = progress_bar(total=2 * ds.count_rows(), desc="sequence", unit="row", progress=progress)  # keyed, written
    rng = np.random.default_rng(seed)
    counts = np.zeros(0, np.int64)  # interleave: chosen rows per concept + 1 (0: no concept)

    def keyed():  # per fragment: its chosen rows' (order key, row address)
        nonlocal counts
        for frag in frags:
            t = frag.to_table(columns=cols, with_row_address=True)
            if where:
                t = t.filter(_passing(frag, t, where))
            rec = np.empty(t.num_rows, _ORDER)
            rec["addr"] = t.column("_rowaddr").to_numpy()
            if mode == "random":
                rec["key"] = rng.integers(0, 2**64, t.num_rows, dtype=np.uint64)
            elif mode == "curriculum":  # ascending (or descending) score, no score last; ties in scan order
                s = pc.fill_null(pc.cast(t.column(score_col), pa.float64()), np.nan).to_numpy()
                rec["key"] = order_keys(np.where(np.isnan(s), np.inf, -s if desc else s) + 0.0)  # (+0.0: no -0.0)
            else:  # by concept, a random rank inside it
                c1 = pc.fill_null(t.column("concept"), -1).to_numpy().astype(np.int64) + 1
                if c1.max(initial=0) >= 1 << 23:  # the key holds a concept in 24 bits (default k: at most 4,096)
                    raise LakeError(f"interleave orders at most {(1 << 23) - 1:,} concepts; cluster with a smaller -k")
                counts = np.bincount(c1, minlength=len(counts)) + np.pad(counts, (0, max(0, int(c1.max(initial=0)) + 1 - len(counts))))
                rec["key"] = (c1.astype(np.uint64) << np.uint64(40)) | (rng.integers(0, 2**64, len(c1), dtype=np.uint64) >> np.uint64(24))
            bar.update(frag.count_rows())
            yield rec

    ranked = sorted_records(keyed())
    if mode == "interleave":
        ranked = sorted_records(_round_robin(ranked, lambda: counts, rng))
    # Each row's place, filed by fragment (a partition a range of fragments) for the write below.
    ids = np.array([f.fragment_id for f in frags], np.int64)
    by_id = np.argsort(ids)
    n = 0
    with Partitioned(_PLACE) as places:
        for part in ranked:
            rec = np.empty(len(part), _PLACE)
            rec["addr"], rec["place"] = part["addr"], np.arange(n, n + len(part))
            n += len(part)
            index = by_id[np.searchsorted(ids, (part["addr"] >> np.uint64(32)).astype(np.int64), sorter=by_id)]
            places.add(index * places.n // len(frags), rec)
        prov = columns.provenance("sequence", {"mode": mode, "seed": seed, "score": score, "where": where,
                                               "shard_size": shard_size},
                                  [c for c in cols if c not in ("seq_order", "seq_shard")] + where_columns(where, names),
                                  ds.version)
        fields = SEQUENCE_FIELDS
        replaced = columns.declare_view(lake, fields, prov)
        old = [c for c in ("seq_order", "seq_shard") if c in names and not replaced]
        changed = columns.ChangedFragments(lake, ["seq_order", "seq_shard"])
        held, loaded = np.empty(0, _PLACE), -1
        for i, frag in enumerate(frags):
            p = i * places.n // len(frags)
            if p != loaded:  # this range of fragments' places, by address
                held = np.concatenate([np.empty(0, _PLACE), *places.read(p)]) if places.count(p) else np.empty(0, _PLACE)
                held, loaded = held[np.argsort(held["addr"])], p
            lo, hi = np.searchsorted(held["addr"] >> np.uint64(32), [frag.fragment_id, frag.fragment_id + 1])
            t = frag.to_table(columns=old, with_row_address=True)
            order = np.full(t.num_rows, -1, np.int64)
            order[np.searchsorted(t.column("_rowaddr").to_numpy(), held["addr"][lo:hi])] = held["place"][lo:hi]
            mask = order < 0
            changed.add(t, {"seq_order": pa.array(order, pa.int64(), mask=mask),
                            "seq_shard": pa.array((order // shard_size).astype(np.int32), pa.int32(), mask=mask)})
            bar.update(t.num_rows)
    bar.close()
    _, version = commit_decisions(lake, changed, sources=prov["source_columns"], read_version=ds.version)
    return SequenceReport(lake=lake.uri, mode=mode, rows=n, shards=int(-(-n // shard_size)), shard_size=shard_size,
                          where=where, version=version if version is not None else ds.version,
                          seconds=time.perf_counter() - t0)


_ORDER = np.dtype([("key", np.uint64), ("addr", np.uint64)])  # a chosen row by its order key
_PLACE = np.dtype([("addr", np.uint64), ("place", np.int64)])  # a chosen row's place in the order


def _round_robin(by_concept: Any, counts: Any, rng: np.random.Generator):
    """The interleave's second key for rows sorted by (concept, random rank): (rank inside the
    concept, the concept's place in a seeded shuffle), so the order takes one row of every concept
    (in that shuffled order) before the next of any."""
    tie = start = None
    at = 0
    for part in by_concept:
        if tie is None:  # every row is keyed (the sort has read them all): the counts are known
            sizes = counts()
            tie = rng.permutation(len(sizes)).astype(np.uint64)
            start = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        c1 = (part["key"] >> np.uint64(40)).astype(np.int64)
        rank_in = at + np.arange(len(part)) - start[c1]
        at += len(part)
        out = np.empty(len(part), _ORDER)
        out["key"], out["addr"] = (rank_in.astype(np.uint64) << np.uint64(24)) | tie[c1], part["addr"]
        yield out
