"""The dedup stage: exact, perceptual and semantic duplicate groups, and one kept member per group.

Methods (each writes its own group column; rows are never deleted):

| method | column | two rows are linked when | default |
| --- | --- | --- | --- |
| exact | ``dup_exact_group`` | their image bytes are identical (sha256 ``content_hash``) | |
| exact | ``dup_pair_group`` | image bytes *and* caption are identical | |
| phash | ``dup_phash_group`` | 64-bit DCT perceptual hashes differ in <= ``phash_distance`` bits, also against the mirrored image's hash (``flips``) | 10 bits |
| semantic | ``dup_semantic_group`` | image embeddings have cosine >= ``semantic_threshold`` (SemDeDup), or >= ``confirm_cosine`` with hashes within ``confirm_distance`` bits | per model, see ``SEMANTIC_THRESHOLDS`` |
| caption | ``dup_caption_group`` | caption embeddings have cosine >= ``caption_threshold`` | 0.98 |
| minhash | ``dup_minhash_group`` | the captions' character 5-gram sets have Jaccard >= ``minhash_threshold`` with the group's most connected caption (MinHash LSH proposes, the exact Jaccard decides; star groups, no chains): templated alt text ("Stock photo of X, royalty free") and near-identical captions; the ``caption_template`` recipe step drops large groups | 0.35 |
| copy | ``dup_copy_group`` | one of the 8 hashes of the bar-trimmed image turned by 0/90/180/270 degrees and mirrored (``copy_hashes``) is within ``copy_distance`` bits of one of the other's: rotated, letterboxed, pillarboxed and bordered copies | 6 bits |
| verify | ``dup_verify_group`` | one is among the other's ``verify_neighbors`` nearest image embeddings at cosine >= ``verify_cosine`` (a candidate), the pair is not linked by another method already, >= ``verify_inliers`` ORB keypoints agree on one similarity transform and the pixels agree where the images overlap under it (:mod:`lakecurate.verify`): heavy crops, photos framed in a page, overlays, turned and mirrored copies | 5 neighbours, 50 inliers |

A group column holds the ``id`` of the member that group keeps (a row alone holds its own id;
null: the row has no signal for that method, e.g. an undecodable image). Groups are the connected
components of the links, so a chain a~b~c is one group.

Then the groups of the ``keep_from`` methods (default: exact, phash, semantic, copy and verify, those computed; caption
and minhash near-duplicates are reported but do not drop rows unless asked, because two different
photos may well share "a dog runs on the grass") are joined into ``dup_group`` (id of the kept member),
``dup_group_size``, ``dup_keep`` and ``dup_reason`` ("phash:<kept id>": the first method, in
``keep_from`` order, that puts the row with the kept member; "linked:<kept id>" when only a chain
of methods does; "verify:<kept id> (143 inliers)": the most inliers of the row's verified pairs).

**The evidence**: every link a run finds is a row of the lake's ``dup_pairs`` table (``a``, ``b``,
``method``, ``score``: differing bits, cosine or inliers, ``detail``, ``version``), so a person (and
the report) can see why two rows are one group: ``lakecurate.Lake(...).dup_pairs()``, or
``lancedb.connect(LAKE).open_table("dup_pairs")``. Methods computed from scratch (exact, phash, copy,
or any method with ``recompute``) replace their rows; incremental runs add theirs. **The keep rule**: highest alignment score (``<embedding>_score``), then most
pixels, then earliest ingested, then smallest id; rows without a score rank after rows with one.

**Memory**: the semantic and caption methods never read their embedding column whole: the join
streams it once (:class:`lakecurate.columns.LanceVectors`), copying it to a local temporary file,
and gathers each group of clusters from that copy (:func:`lakecurate.neardup.semantic_pairs`), so
the vectors cost ~a group's worth of memory at any size (and the column's bytes of temporary
disk); the per-row scalars (ids, sizes, group columns) are still read whole (~390 bytes a row at
10M pairs with exact: ids stay one Arrow array; exact streams content hashes and captions, keeping
a 64-bit hash a row),
and ``verify`` still holds the image embeddings for its nearest-neighbour candidates
(``scripts/bench_scale.py``, docs/scale.md).

**phash at scale**: ``phash_search="all"`` (the default) compares every hash with every other
(exact multi-index hashing, ~N^2 at 8 bits: 4.8 s at 1M hashes, 292 s at 10M); ``"clusters"``
links identical hashes anywhere and near ones only among rows whose image embeddings the semantic
join finds within ``phash_cosine`` (:func:`lakecurate.neardup.clustered_hamming_pairs`): linear
time, and what it leaves out is hash collisions between images the embedding calls different.
When semantic runs in the same call over every row, one join at the lower cosine serves both.

Perceptual hashes are computed once per row into ``phash``/``phash_flip`` (uint64) with the other
image signals (:mod:`lakecurate.signals`: one reduced-size decode per image, in spawned workers);
k-means and joins come from :mod:`lakecurate.neardup`.

**Incremental**: a row is new for a method when its group value is null. A later run hashes only
the new rows, joins only new rows against the rest for semantic methods (``semantic_pairs(new=)``),
merges the result with the stored groups and rewrites group values only in fragments where they
changed (a new member can be the better keeper of an old group). Each column family is written
for all changed fragments in one commit.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lakecurate import columns
from lakecurate.columns import LanceVectors, column_valid
from lakecurate.encoders import meaningless
from lakecurate.engines import check_engine
from lakecurate.errors import LakeError
from lakecurate.graph import no_producer, write_decisions
from lakecurate.names import Produce, embedding_columns
from lakecurate.neardup import (Pairs, caption_pairs, clustered_hamming_pairs, components, hamming_pairs,
                               hash_distances, knn_pairs, semantic_pairs)
from lakecurate.options import whole
from lakecurate.verify import CONFIG as VERIFY_CONFIG
from lakecurate.verify import AGREE_LEVELS, GAINS, MIN_AGREE, MIN_INLIERS, RANSAC_PX, RATIO, SCALES, TURN_TOLERANCE

if TYPE_CHECKING:
    import pandas as pd

    from lakecurate.store import Store

METHODS = ("exact", "phash", "semantic", "caption", "minhash", "copy", "verify")  # verify last: it skips pairs the others link
TEXT_METHODS = ("caption", "minhash")  # caption links: reported, not image duplicates
DEFAULT_METHODS = ("exact", "phash", "semantic", "copy")  # verify: opt-in (an embedding, ~3x the time)
DEFAULT_KEEP_FROM = ("exact", "phash", "semantic", "copy", "verify")  # those computed
PHASH_DISTANCE = 8
# How phash looks for near hashes: "all" against all (exact multi-index hashing, ~N^2 at 8 bits:
# 292 s at 10M hashes), "clusters" among rows the embedding calls alike (linear; for 10M+ rows).
PHASH_SEARCHES = ("all", "clusters")
# phash_search="clusters": the image cosine above which two rows' hashes are compared. offline:
# its resized copies sit at 0.50-0.69 (planted Flickr8k copies, seed 1); open_clip: a guess (no
# CLIP weights on this machine; resized and re-encoded copies are usually above 0.9).
PHASH_COSINES = {"offline": 0.45, "open_clip": 0.8}
MAX_UNCLUSTERED = 1000  # hashed rows without a vector that "clusters" compares with every row
# The copy method compares 8 hashes a row with 8 of every other (64 chances against phash's 4), so
# it links at fewer differing bits to keep the same false-link rate (docs/benchmarks.md, issue 17).
COPY_DISTANCE = 6
CAPTION_THRESHOLD = 0.98
# Jaccard of caption 5-gram shingles for minhash links: on templated captions planted among Flickr8k
# human captions (scripts/eval_captions.py), 0.35 puts 0.90 of templated captions and 2.0% of
# human captions in a group of >= 10 (0.40: 0.73 and 1.0%).
MINHASH_THRESHOLD = 0.35
CONFIRM_DISTANCE = 16
# Cosine of image embeddings above which two images are near duplicates, and the lower cosine at
# which a pair also counts when its perceptual hashes are within CONFIRM_DISTANCE bits, by encoder
# family. offline: measured on planted Flickr8k copies against 319,600 pairs of distinct photos
# (docs/benchmarks.md: none of them >= 0.82, nor within 16 bits at >= 0.6). open_clip: SemDeDup's
# eps 0.05 ~ cosine 0.95; the confirm cosine 0.85 is a guess here (no CLIP weights on this machine).
SEMANTIC_THRESHOLDS = {"offline": 0.85, "open_clip": 0.95}
CONFIRM_COSINES = {"offline": 0.70, "open_clip": 0.85}
# Verification candidates: each row's nearest image embeddings above a loose cosine. offline: on
# planted hard copies (docs/benchmarks.md) heavy crops, framed and turned copies sit at 0.4-0.8 and
# among the 5 nearest; open_clip: 0.7 is a guess (no CLIP weights on this machine).
VERIFY_NEIGHBORS = 5
VERIFY_COSINES = {"offline": 0.4, "open_clip": 0.7}
PHASH_COLUMNS = ("phash", "phash_flip")
EVIDENCE_TABLE = "dup_pairs"
FINAL_COLUMNS = ("dup_group", "dup_group_size", "dup_keep", "dup_reason")
Evidence = tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]  # a method's links: rows i < j, score, detail


def group_columns(method: str) -> tuple[str, ...]:
    """The group columns a method writes (one column family, written together)."""
    if method not in METHODS:
        raise ValueError(f"unknown dedup method {method!r}; choose from {', '.join(METHODS)} or all")
    return ("dup_exact_group", "dup_pair_group") if method == "exact" else (f"dup_{method}_group",)


# --------------------------------------------------------------------------- groups (pure)
def keep_rank(score: np.ndarray, pixels: np.ndarray, ingested: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Rank of each row under the keep rule (0 = kept first): highest score (NaN last), then most
    pixels, then earliest ingested, then smallest id.

    >>> keep_rank(np.array([0.2, 0.3, np.nan]), np.array([10, 5, 99]), np.array([1, 1, 1]), np.array(["a", "b", "c"])).tolist()
    [1, 0, 2]
    """
    s = np.where(np.isnan(score), -np.inf, score)
    order = np.lexsort((ids, ingested, -pixels.astype(np.float64), -s))
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    return rank


def best_of_groups(label: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """For rows with a group label (>= 0), the row index of the best-ranked member of their
    group; -1 for rows without one.

    >>> best_of_groups(np.array([0, 0, -1, 3, 0]), np.array([4, 1, 0, 2, 3])).tolist()
    [1, 1, -1, 3, 1]
    """
    out = np.full(len(label), -1, np.int64)
    has = np.flatnonzero(label >= 0)
    if not len(has):
        return out
    order = has[np.lexsort((rank[has], label[has]))]
    lab = label[order]
    first = np.ones(len(order), bool)
    first[1:] = lab[1:] != lab[:-1]
    best = order[first]
    out[order] = best[np.cumsum(first) - 1]
    return out


def linked_groups(n: int, pairs: Sequence[tuple[np.ndarray, np.ndarray]], eligible: np.ndarray) -> np.ndarray:
    """Connected components over all pair lists; -1 for rows that are not eligible."""
    i = np.concatenate([np.asarray(p[0], np.int64) for p in pairs]) if pairs else np.empty(0, np.int64)
    j = np.concatenate([np.asarray(p[1], np.int64) for p in pairs]) if pairs else np.empty(0, np.int64)
    label = components(n, i, j)
    label[~eligible] = -1
    return label


def equal_value_pairs(values: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairs linking every row to the first row with the same value (rows where valid)."""
    rows = np.flatnonzero(valid)
    _, first, inverse = np.unique(values[rows], return_index=True, return_inverse=True)
    rep = rows[first][inverse]
    linked = rep != rows
    return rep[linked], rows[linked]


# --------------------------------------------------------------------------- the stage
@dataclass
class MethodReport:
    method: str
    config: dict[str, Any]
    rows: int = 0  # rows with this method's signal
    new_rows: int = 0  # rows not yet grouped before this run
    pairs: int = 0  # links found this run
    groups: int = 0  # groups of two or more rows
    duplicates: int = 0  # rows in such groups that are not their group's kept member
    fragments_written: int = 0
    seconds: float = 0.0
    candidates: int = 0  # verify: candidate pairs checked (not linked by another method already)
    keypoint_rows: int = 0  # verify: rows in a candidate pair (their features were needed)
    keypoints_computed: int = 0  # verify: of those, computed now (the rest came from the cache)
    keypoint_seconds: float = 0.0  # verify: reading the cache and computing the missing keypoints
    match_seconds: float = 0.0  # verify: matching the candidate pairs


@dataclass
class DedupReport:
    lake: str
    methods: list[MethodReport] = field(default_factory=list)
    keep_from: list[str] = field(default_factory=list)
    rows: int = 0
    kept: int = 0
    dropped: int = 0
    hashed: int = 0
    fragments_written: int = 0
    versions: list[int] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _pick_embedding(lake: "Store", ds: Any, embedding: str | None, needed: bool,
                    clustered: bool = False) -> tuple[str | None, dict | None]:
    from lakecurate.names import pick_embedding

    need = ("--phash-search clusters compares hashes within embedding clusters; embed first, or use --phash-search all"
            if clustered else "semantic, caption and verify dedup need them; or use --method exact,phash,copy") if needed else None
    return pick_embedding(lake, ds, embedding, need=need)


def _vectors(col: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    from lakecurate.columns import embedding_matrix

    x, valid = embedding_matrix(col, dtype=None)  # stored float16: half the memory of float32
    if not valid.all():
        x = x.copy()
        x[~valid] = 0
        x[~valid, 0] = 1  # unit placeholders: never joined (not eligible), but pass the norm check
    return x, valid


def _ids_at(ids: pa.Array, rows: np.ndarray) -> pa.Array:
    """``ids[rows]`` as a string array, null where ``rows`` < 0 (taken by Arrow)."""
    return pc.take(ids, pa.array(rows, pa.int64(), mask=rows < 0)).cast(pa.string())


class _Values:
    """A column dedup reads, row for row with its table: held in ``tbl``, or else streamed from
    ``ds`` (the same scan order) a batch at a time, with single rows taken by position."""

    def __init__(self, ds: Any, tbl: pa.Table, name: str) -> None:
        self.ds, self.tbl, self.name = ds, tbl, name

    def chunks(self) -> "Iterable[pa.Array]":
        if self.name in self.tbl.column_names:
            return self.tbl.column(self.name).chunks
        return (b.column(0) for b in self.ds.to_batches(columns=[self.name], batch_size=65536))

    def at(self, rows: np.ndarray) -> pa.Array:
        """The values of ``rows`` (positions in the scan), in that order."""
        if self.name in self.tbl.column_names:
            return pc.take(self.tbl.column(self.name), pa.array(rows, pa.int64())).combine_chunks()
        unique, back = np.unique(rows, return_inverse=True)
        got = self.ds.take(unique, columns=[self.name]).column(0) if len(unique) else pa.chunked_array([], pa.string())
        return pc.take(got, pa.array(back, pa.int64())).combine_chunks()


def _same_value_pairs(cols: Sequence[_Values], valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`equal_value_pairs` of rows whose values in every one of ``cols`` are equal (null a
    value of its own), in ~8 bytes a row: each value hashed to 64 bits a chunk at a time
    (``pd.util.hash_array``), the columns' hashes combined; the pairs found are then checked on
    the values themselves, and in the unlikely case two values shared a hash, the values are
    dictionary-encoded (exact, but the whole column and its dictionary) and paired again."""
    import pandas as pd

    key = np.zeros(len(valid), np.uint64)
    for col in cols:
        at = 0
        for chunk in col.chunks():
            h = pd.util.hash_array(chunk.to_numpy(zero_copy_only=False), categorize=False)
            h[np.asarray(chunk.is_null().to_numpy(zero_copy_only=False), bool)] = np.uint64(0x9E3779B97F4A7C15)  # null
            with np.errstate(over="ignore"):
                key[at: at + len(chunk)] = key[at: at + len(chunk)] * np.uint64(0x100000001B3) ^ h
            at += len(chunk)
    i, j = equal_value_pairs(key, valid)
    if all(_equal_at(col, i, j) for col in cols):
        return i, j
    exact = np.zeros(len(valid), np.int64)  # a hash shared by two values: the exact (larger) way
    for col in cols:
        enc = pc.dictionary_encode(pa.chunked_array(list(col.chunks())).combine_chunks())
        width = len(enc.dictionary) + 1  # the last code: null
        exact = exact * width + pc.fill_null(enc.indices, width - 1).to_numpy().astype(np.int64)
    return equal_value_pairs(exact, valid)


def _equal_at(col: _Values, i: np.ndarray, j: np.ndarray) -> bool:
    """Whether the values of rows ``i`` and ``j`` are equal, pair by pair (null equal to null only)."""
    if not len(i):
        return True
    a, b = col.at(i), col.at(j)
    both_null = pc.and_(pc.is_null(a), pc.is_null(b))
    return bool(pc.all(pc.or_(pc.fill_null(pc.equal(a, b), False), both_null)).as_py() in (True, None))


def _reasons(ids: pa.Array, keep: np.ndarray, final: np.ndarray, use: list[str], labels: dict[str, np.ndarray],
             inliers: dict[str, int]) -> pa.Array:
    """``dup_reason``: for each dropped row "METHOD:ID" of the kept row (the first of ``use`` whose
    group holds both, else "linked"), verify's with its inliers; null for kept rows."""
    dropped = np.flatnonzero(~keep)
    kept_by = final[dropped]
    how = np.full(len(dropped), len(use), np.int64)  # len(use): "linked" (joined through another method)
    for at, m in reversed(list(enumerate(use))):  # the first method that links them wins
        lab = labels[m]
        how[(lab[dropped] >= 0) & (lab[dropped] == lab[kept_by])] = at
    text = pc.binary_join_element_wise(pc.take(pa.array([*use, "linked"], pa.string()), pa.array(how)),
                                       _ids_at(ids, kept_by), ":")
    if inliers and "verify" in use:
        verified = np.flatnonzero(how == use.index("verify"))
        mine = pc.take(ids, pa.array(dropped[verified], pa.int64())).to_pylist()
        extra = [f" ({inliers[r]} inliers)" if r in inliers else "" for r in mine]
        texts = text.to_pylist()
        for at, e in zip(verified, extra):
            texts[at] += e
        text = pa.array(texts, pa.string())
    place = np.full(len(keep), -1, np.int64)
    place[dropped] = np.arange(len(dropped))
    return pc.take(text, pa.array(place, pa.int64(), mask=place < 0)).cast(pa.string())


def _write_changed(lake: "Store", tbl: pa.Table, new: dict[str, pa.Array], report: DedupReport,
                   sources: list[str], read_version: int) -> int:
    written, version = write_decisions(lake, tbl, new, sources=sources, read_version=read_version)
    if version is not None:
        report.versions.append(version)
    return written


def dedup(
    lake: "Store",
    methods: Sequence[str] = DEFAULT_METHODS,
    *,
    embedding: str | None = None,
    phash_distance: int = PHASH_DISTANCE,
    flips: bool = True,
    phash_search: str = "all",
    phash_cosine: float | None = None,
    copy_distance: int = COPY_DISTANCE,
    semantic_threshold: float | None = None,
    caption_threshold: float = CAPTION_THRESHOLD,
    minhash_threshold: float = MINHASH_THRESHOLD,
    confirm_cosine: float | None = None,
    confirm_distance: int = CONFIRM_DISTANCE,
    keep_from: Sequence[str] | None = None,
    verify_inliers: int = MIN_INLIERS,
    verify_neighbors: int = VERIFY_NEIGHBORS,
    verify_cosine: float | None = None,
    recompute: bool = False,
    workers: int | None = None,
    progress: bool | None = None,
    produce: Produce | None = None,
    engine: str = "local",
) -> DedupReport:
    """Find duplicate groups with ``methods`` and write group columns plus ``dup_keep``/``dup_reason``.

    Example::

        report = lake.dedup(["exact", "phash", "semantic"])
        lake.sql("SELECT dup_reason, count(*) AS n FROM pairs WHERE NOT dup_keep GROUP BY dup_reason")

    ``engine="ray"``: the image hashes it needs are computed on Ray (the runner's actors) and the
    semantic and caption joins run a Ray task per group of clusters
    (``neardup.semantic_pairs(engine="ray")``); the rest of the stage runs here. Same groups.
    """
    t_start = time.perf_counter()
    check_engine(engine)
    copy_distance = whole("copy_distance", copy_distance, 0)
    verify_inliers = whole("verify_inliers", verify_inliers, 4)  # RANSAC needs a few points to mean anything
    verify_neighbors = whole("verify_neighbors", verify_neighbors, 1)
    if phash_cosine is not None and not -1.0 <= float(phash_cosine) <= 1.0:
        raise LakeError(f"phash_cosine must be a cosine between -1 and 1, got {phash_cosine}")
    if phash_search not in PHASH_SEARCHES:
        raise LakeError(f"phash_search must be one of {', '.join(PHASH_SEARCHES)}, got {phash_search!r}")
    if not 0.0 < float(minhash_threshold) <= 1.0:
        raise LakeError(f"minhash_threshold must be a Jaccard similarity in (0, 1], got {minhash_threshold}")
    if verify_cosine is not None and not -1.0 <= float(verify_cosine) <= 1.0:
        raise LakeError(f"verify_cosine must be a cosine between -1 and 1, got {verify_cosine}")
    methods = list(dict.fromkeys(METHODS if "all" in methods else methods))
    for m in methods:
        group_columns(m)  # validates
    keep_from = [m for m in (keep_from if keep_from is not None else DEFAULT_KEEP_FROM)]
    for m in keep_from:
        group_columns(m)
    report = DedupReport(lake=lake.uri, keep_from=keep_from)
    ds = lake.dataset()
    if ds.count_rows() == 0:
        report.seconds = time.perf_counter() - t_start
        return report
    clustered = phash_search == "clusters" and "phash" in methods
    emb, emb_prov = _pick_embedding(lake, ds, embedding, needed=bool({"semantic", "caption", "verify"} & set(methods))
                                    or clustered, clustered=clustered and not {"semantic", "caption", "verify"} & set(methods))

    configs: dict[str, dict[str, Any]] = {
        "exact": {"on": ["content_hash", "caption"]},
        "phash": {"max_distance": int(phash_distance), "flips": bool(flips), "hash": "phash"},  # search="all"
        "copy": {"max_distance": int(copy_distance), "hash": "copy_hashes"},
        "minhash": {"threshold": float(minhash_threshold), "shingles": "5 characters, lower case, punctuation as space",
                    "num_perm": 128, "groups": "star: most connected caption first"},
    }
    if emb is not None:
        family = emb_prov["config"].get("family", "open_clip")
        if meaningless(emb_prov) and semantic_threshold is None and \
                {"semantic", "caption"} & set(methods):
            raise LakeError(f"embedding '{emb}' comes from a randomly initialised test model: its similarities are "
                            "meaningless, so semantic dedup would link unrelated pairs; embed with a real model, "
                            "or pass --semantic-threshold to do it anyway (tests)")
        thr = semantic_threshold if semantic_threshold is not None else SEMANTIC_THRESHOLDS.get(family, 0.95)
        confirm = confirm_cosine if confirm_cosine is not None else CONFIRM_COSINES.get(family, 0.85)
        configs["semantic"] = {"embedding": emb, "embedding_config": emb_prov["config_hash"], "threshold": float(thr),
                               "confirm_cosine": float(min(confirm, thr)), "confirm_distance": int(confirm_distance),
                               "flips": bool(flips)}
        if clustered:
            if meaningless(emb_prov):
                raise LakeError(f"embedding '{emb}' comes from a randomly initialised test model: it cannot say which "
                                "hashes to compare; embed with a real model, or use --phash-search all")
            configs["phash"].update(search="clusters", embedding=emb, embedding_config=emb_prov["config_hash"],
                                    cosine=float(phash_cosine if phash_cosine is not None else PHASH_COSINES.get(family, 0.8)))
        configs["caption"] = {"embedding": emb, "embedding_config": emb_prov["config_hash"],
                              "threshold": float(caption_threshold)}
        vcos = verify_cosine if verify_cosine is not None else VERIFY_COSINES.get(family, 0.7)
        configs["verify"] = {"embedding": emb, "embedding_config": emb_prov["config_hash"],
                             "neighbors": verify_neighbors, "min_cosine": float(vcos), "min_inliers": verify_inliers,
                             "features": VERIFY_CONFIG, "ratio": RATIO, "ransac_px": RANSAC_PX,
                             "scales": list(SCALES), "turn_tolerance": TURN_TOLERANCE, "min_agree": MIN_AGREE,
                             "agree_levels": AGREE_LEVELS, "gains": list(GAINS)}

    produce = produce or no_producer(lake, "dedup")  # dedup runs no stage itself: it asks for their columns
    if {"phash", "semantic"} & set(methods):  # semantic links at a lower cosine are confirmed by hashes
        report.hashed = produce("image_signals", workers=workers, progress=progress, engine=engine)
    if "copy" in methods:  # the same new rows again, for their copy hashes: counted once
        report.hashed = max(report.hashed, produce("copy_signals", workers=workers, progress=progress, engine=engine))
    if clustered:
        _check_clustered(lake.dataset(), embedding_columns(emb)["image"])

    # Declare each method's columns (metadata only; a changed config is an error unless recompute).
    for m in methods:
        prov = columns.provenance("dedup", {"method": m, **configs[m]}, _sources(m, emb), lake.version)
        columns.declare(lake, [pa.field(c, pa.string()) for c in group_columns(m)], prov, recompute=recompute,
                        fix=f"run with the same settings, or with --recompute to regroup every row by {m}")

    ds = lake.dataset()
    present = [m for m in METHODS if all(c in ds.schema.names for c in group_columns(m))]
    # content_hash and caption are read whole only for the methods that need every value (verify's
    # cache keys, minhash's shingles); exact streams them, keeping a 64-bit hash a row (_Values).
    held = (["content_hash"] if "verify" in methods else []) + (["caption"] if "minhash" in methods else [])
    read = ["id", *held, "width", "height", "ingested_at", "ingest_status"]
    read += [c for m in present for c in group_columns(m)]
    read += [c for c in FINAL_COLUMNS if c in ds.schema.names]
    if {"phash", "semantic"} & set(methods):
        read += list(PHASH_COLUMNS)
    if "copy" in methods:
        read.append("copy_hashes")
    if emb is not None:
        # semantic and caption stream their vectors from the dataset; verify still reads them whole
        read += [embedding_columns(emb)["score"]] + ([embedding_columns(emb)["image"]] if "verify" in methods else [])
    tbl = ds.to_table(columns=list(dict.fromkeys(read)), with_row_address=True)
    n = tbl.num_rows
    report.rows = n
    # The ids stay one Arrow array (no Python string a row): looked up, ranked and taken by Arrow.
    ids = tbl.column("id").combine_chunks()
    score = (pc.fill_null(pc.cast(tbl.column(embedding_columns(emb)["score"]), pa.float64()), float("nan")).to_numpy()
             if emb is not None else np.full(n, np.nan))  # no score: ranks after every scored row
    pixels = (pc.fill_null(pc.multiply(pc.cast(tbl.column("width"), pa.int64()), pc.cast(tbl.column("height"), pa.int64())), 0)
              .to_numpy())
    ingested = pc.fill_null(pc.cast(tbl.column("ingested_at"), pa.int64()), 0).to_numpy()
    rank = keep_rank(score, pixels, ingested, pc.rank(ids, sort_keys="ascending", tiebreaker="first").to_numpy())

    joins = _Joins(ds, lake.storage_options, progress, engine)
    if clustered and "semantic" in methods:  # one image join at the lower cosine serves both methods
        joins.floor[embedding_columns(emb)["image"]] = min(configs["phash"]["cosine"], configs["semantic"]["confirm_cosine"])
    labels: dict[str, np.ndarray] = {}  # method -> row of its group's best member (-1: no signal)
    evidence: dict[str, Evidence] = {}  # method -> the links this run found
    replaced: set[str] = set()  # methods whose evidence this run replaces (computed from scratch)
    for m in present:
        mr = MethodReport(method=m, config=configs.get(m, {}))
        t0 = time.perf_counter()
        stored = tbl.column(group_columns(m)[0])
        stored_rows = pc.fill_null(pc.index_in(stored, value_set=ids), -1).to_numpy().astype(np.int64)
        if m not in methods:  # computed by an earlier run: take its groups as they are
            eligible = stored_rows >= 0
            label = linked_groups(n, [(np.arange(n)[eligible], stored_rows[eligible])], eligible)
        elif m == "verify":
            label, evidence[m] = _verify_groups(lake, tbl, emb, configs[m], stored_rows, labels, mr, workers, progress)
        else:
            label, evidence[m] = _method_groups(m, ds, tbl, emb, configs[m], stored_rows, mr, progress,
                                                engine=engine, storage_options=lake.storage_options, joins=joins)
        best = best_of_groups(label, rank)
        labels[m] = best
        if m in methods:
            new_cols = {c: _ids_at(ids, best) for c in group_columns(m)[:1]}
            if m == "exact":  # identical (image, caption): a finer split of the same groups
                valid = best >= 0
                pairs = _same_value_pairs([_Values(ds, tbl, "content_hash"), _Values(ds, tbl, "caption")], valid)
                pair_best = best_of_groups(linked_groups(n, [pairs], valid), rank)
                new_cols["dup_pair_group"] = _ids_at(ids, pair_best)
            mr.fragments_written = _write_changed(lake, tbl, new_cols, report, _sources(m, emb), ds.version)
            report.fragments_written += mr.fragments_written
        mr.rows = int((best >= 0).sum())
        if m in methods and (recompute or m in ("exact", "phash", "copy", "minhash") or mr.new_rows == mr.rows):
            replaced.add(m)  # every link of the method was found in this run
        sizes = np.bincount(best[best >= 0], minlength=n)
        mr.groups = int((sizes > 1).sum())
        mr.duplicates = int(((best >= 0) & (best != np.arange(n))).sum())
        mr.seconds = time.perf_counter() - t0
        report.methods.append(mr)

    # The final decision: groups of the keep_from methods joined, best member kept.
    use = [m for m in keep_from if m in labels]
    links = [(np.flatnonzero(labels[m] >= 0), labels[m][labels[m] >= 0]) for m in use]
    final = best_of_groups(linked_groups(n, links, np.ones(n, bool)), rank)
    keep = final == np.arange(n)
    size = np.bincount(final, minlength=n)[final]
    linked_pairs = _merged_evidence(lake, ids, evidence, replaced, ds.version) if evidence or replaced else None
    inliers = _most_inliers(linked_pairs) if "verify" in use else {}
    reason = _reasons(ids, keep, final, use, labels, inliers)
    final_prov = columns.provenance(
        "dedup", {"keep_from": use, "rule": "score desc, pixels desc, ingested_at, id", "rank_by": embedding_columns(emb)["score"] if emb else None,
                  "methods": {m: configs.get(m) for m in use}},
        [c for m in use for c in group_columns(m)[:1]], lake.version)
    final_fields = [pa.field("dup_group", pa.string()), pa.field("dup_group_size", pa.int32()),
                    pa.field("dup_keep", pa.bool_()), pa.field("dup_reason", pa.string())]
    columns.declare_view(lake, final_fields, final_prov)  # derived from the group columns: recomputed each run
    grouped = size > 1
    new_final = {
        "dup_group": _ids_at(ids, np.where(grouped, final, -1)),
        "dup_group_size": pa.array(size.astype(np.int32), pa.int32()),
        "dup_keep": pa.array(keep, pa.bool_()),
        "dup_reason": reason,
    }
    if any(c not in tbl.column_names for c in FINAL_COLUMNS):
        tbl = tbl.drop_columns([c for c in FINAL_COLUMNS if c in tbl.column_names])
    report.fragments_written += _write_changed(lake, tbl, new_final, report, final_prov["source_columns"], ds.version)
    if linked_pairs is not None:  # after the decision it explains has landed
        lake.write_side(EVIDENCE_TABLE, linked_pairs, mode="overwrite")
    report.kept = int(keep.sum())
    report.dropped = int(n - keep.sum())
    report.seconds = time.perf_counter() - t_start
    return report


EVIDENCE_SCHEMA = pa.schema([pa.field("a", pa.string()), pa.field("b", pa.string()), pa.field("method", pa.string()),
                             pa.field("score", pa.float64()), pa.field("detail", pa.string()),
                             pa.field("version", pa.int64())])


def _merged_evidence(lake: "Store", ids: pa.Array, evidence: dict[str, Evidence], replaced: set[str],
                     version: int) -> pa.Table:
    """The ``dup_pairs`` table after this run: the stored links of methods this run did not
    recompute, plus this run's (a pair found again keeps this run's row)."""
    parts = []
    for m, (i, j, score, detail) in evidence.items():
        a, b = pc.take(ids, pa.array(i, pa.int64())), pc.take(ids, pa.array(j, pa.int64()))
        swap = pc.greater(a, b)
        lo, hi = pc.if_else(swap, b, a), pc.if_else(swap, a, b)
        parts.append(pa.table({"a": lo.cast(pa.string()), "b": hi.cast(pa.string()),
                               "method": pa.array([m] * len(lo), pa.string()),
                               "score": pa.array(score, pa.float64(), mask=np.isnan(score)),
                               "detail": pa.array(detail, pa.string()),
                               "version": pa.array(np.full(len(lo), version), pa.int64())}, schema=EVIDENCE_SCHEMA))
    new = pa.concat_tables(parts) if parts else EVIDENCE_SCHEMA.empty_table()
    old_ds = lake.side_dataset(EVIDENCE_TABLE)
    if old_ds is None:
        return new
    old = old_ds.to_table().cast(EVIDENCE_SCHEMA)
    drop = pc.is_in(old.column("method"), pa.array(sorted(replaced), pa.string()))
    fresh = pc.binary_join_element_wise(new.column("a"), new.column("b"), new.column("method"), "\x00")
    key = pc.binary_join_element_wise(old.column("a"), old.column("b"), old.column("method"), "\x00")
    drop = pc.or_(drop, pc.is_in(key, fresh))
    return pa.concat_tables([old.filter(pc.invert(drop)), new])


def dup_pairs(lake: "Store", ids: Sequence[str] | None = None) -> "pd.DataFrame":
    """Why rows are one group: every link the dedup runs found (``a`` < ``b`` ids, ``method``,
    ``score``: differing bits for phash/copy, cosine for semantic/caption, inliers for verify, null
    for exact; ``detail`` in words; ``version``: the lake version the run read), or only the links
    touching ``ids``. Empty (same columns) before the first dedup."""
    ds = lake.side_dataset(EVIDENCE_TABLE)
    if ds is None:
        return EVIDENCE_SCHEMA.empty_table().to_pandas()
    tbl = ds.to_table().cast(EVIDENCE_SCHEMA)
    if ids is not None:
        want = pa.array(list(ids), pa.string())
        tbl = tbl.filter(pc.or_(pc.is_in(tbl.column("a"), want), pc.is_in(tbl.column("b"), want)))
    return tbl.to_pandas()


def _most_inliers(links: pa.Table | None) -> dict[str, int]:
    """Row id -> the most inliers of its verified pairs."""
    if links is None or not links.num_rows:
        return {}
    v = links.filter(pc.equal(links.column("method"), "verify"))
    out: dict[str, int] = {}
    for a, b, s in zip(v.column("a").to_pylist(), v.column("b").to_pylist(), v.column("score").to_pylist()):
        for r in (a, b):
            out[r] = max(out.get(r, 0), int(s))
    return out


def _sources(method: str, emb: str | None) -> list[str]:
    return {"exact": ["content_hash", "caption"], "phash": list(PHASH_COLUMNS), "copy": ["copy_hashes"],
            "verify": [embedding_columns(emb)["image"], "content_hash"],
            "semantic": [embedding_columns(emb)["image"], *PHASH_COLUMNS], "caption": [embedding_columns(emb)["text"]],
            "minhash": ["caption"]}[method]



class _Joins:
    """The semantic joins of one dedup run: a full join (every row with a vector) over an image
    column is done once, at the lowest cosine any method asked for in ``floor``, and filtered for
    each method (phash in clusters and semantic); joins of new rows only are not kept."""

    def __init__(self, ds: Any, storage_options: dict | None, progress: bool | None, engine: str) -> None:
        self.ds, self.storage_options, self.progress, self.engine = ds, storage_options, progress, engine
        self.floor: dict[str, float] = {}
        self.done: dict[str, tuple[np.ndarray, float, Pairs]] = {}
        self._valid: dict[str, np.ndarray] = {}

    def valid(self, col: str) -> np.ndarray:
        """Which rows have a vector in ``col`` (a streamed pass over the column, once per run)."""
        if col not in self._valid:
            self._valid[col] = column_valid(self.ds, col)
        return self._valid[col]

    def pairs(self, col: str, rows: np.ndarray, cosine: float, new: np.ndarray | None = None) -> Pairs:
        """(i, j, cosine) as dataset rows: pairs of ``rows`` with cosine >= ``cosine`` (with ``new``,
        those touching a new row)."""
        if new is None and col in self.done and np.array_equal(self.done[col][0], rows) and self.done[col][1] <= cosine:
            i, j, cos = self.done[col][2]
        else:
            low = min(cosine, self.floor.get(col, cosine)) if new is None else cosine
            src = LanceVectors(self.ds, col, rows, storage_options=self.storage_options)
            i, j, cos = semantic_pairs(src, low, new=new, progress=bool(self.progress), engine=self.engine)
            i, j = rows[i], rows[j]
            if new is None:
                self.done[col] = (rows, low, (i, j, cos))
        keep = cos >= cosine
        return i[keep], j[keep], cos[keep]


def _method_groups(method: str, ds: Any, tbl: pa.Table, emb: str | None, config: dict[str, Any], stored_rows: np.ndarray,
                   mr: MethodReport, progress: bool | None, *, engine: str = "local",
                   storage_options: dict | None = None, joins: "_Joins | None" = None) -> tuple[np.ndarray, Evidence]:
    """Group label per row for one method (stored groups merged with this run's links), and the links."""
    n = tbl.num_rows
    joins = joins or _Joins(ds, storage_options, progress, engine)
    if method == "exact":
        values = _Values(ds, tbl, "content_hash")
        eligible = np.concatenate([np.asarray(c.is_valid().to_numpy(zero_copy_only=False), bool) for c in values.chunks()]
                                  or [np.zeros(0, bool)])
        mr.new_rows = int((eligible & (stored_rows < 0)).sum())
        pairs = _same_value_pairs([values], eligible)  # O(N): always from scratch, nothing to merge
        mr.pairs = len(pairs[0])
        return linked_groups(n, [pairs], eligible), _links(*pairs, np.full(len(pairs[0]), np.nan), "same image bytes")
    if method == "phash":
        h, h_flip, eligible = _hashes(tbl)
        mr.new_rows = int((eligible & (stored_rows < 0)).sum())
        rows = np.flatnonzero(eligible)
        if config.get("search") == "clusters":
            i, j, d = _clustered_phash(config, h, h_flip, eligible, joins)
        else:
            values = np.concatenate([h[rows], h_flip[rows]]) if config["flips"] else h[rows]
            # Mirror hashes against every hash find mirrored copies; i % n maps them back to rows.
            i, j, d = hamming_pairs(values, config["max_distance"], identical="first")
            i, j = rows[i % len(rows)], rows[j % len(rows)]
        mr.pairs = int((i != j).sum())
        return linked_groups(n, [(i, j)], eligible), _links(i, j, d, "{:.0f} of 64 bits differ")
    if method == "minhash":  # from scratch each run: a new caption can lead a better-centred group
        caps = tbl.column("caption").to_pylist()
        eligible = np.array([bool(c and c.strip()) for c in caps], bool)
        mr.new_rows = int((eligible & (stored_rows < 0)).sum())
        i, j, jac = caption_pairs(caps, config["threshold"])
        mr.pairs = len(i)
        return linked_groups(n, [(i, j)], eligible), _links(i, j, jac, "Jaccard {:.2f} of caption 5-grams",
                                                             smaller_is_closer=False)
    if method == "copy":
        col = tbl.column("copy_hashes")
        eligible = ~np.asarray(col.is_null().to_numpy(zero_copy_only=False), bool)
        mr.new_rows = int((eligible & (stored_rows < 0)).sum())
        rows = np.flatnonzero(eligible)
        flat = col.combine_chunks()  # a fixed-size list stores 8 values per slot, null slots too
        values = np.asarray(flat.values.fill_null(0).to_numpy(), np.uint64)
        hashes = values[flat.offset * 8:(flat.offset + len(flat)) * 8].reshape(-1, 8)
        # Every variant of every row in one Hamming search; v // 8 maps a variant back to its row.
        i, j, d = hamming_pairs(hashes[rows].reshape(-1), config["max_distance"], identical="first")
        i, j = rows[i // 8], rows[j // 8]
        keep = i != j
        mr.pairs = int(keep.sum())
        return (linked_groups(n, [(i[keep], j[keep])], eligible),
                _links(i, j, d, "{:.0f} of 64 bits differ (turned/mirrored/bar-trimmed hashes)"))
    col = embedding_columns(emb)["image"] if method == "semantic" else embedding_columns(emb)["text"]
    eligible = joins.valid(col)  # the vectors themselves are streamed, never read whole
    new, rows, pairs = _stored(eligible, stored_rows, mr)
    found = _no_links()
    if mr.new_rows:
        only_new = None if mr.new_rows == len(rows) else new[rows]
        low = config.get("confirm_cosine", config["threshold"])
        i, j, cos = joins.pairs(col, rows, low, only_new)
        strong = cos >= config["threshold"]
        if low < config["threshold"]:  # weaker links count only when the images also look alike
            h, h_flip, hashed = _hashes(tbl)
            dist = np.bitwise_count(h[i] ^ h[j])
            if config.get("flips"):
                dist = np.minimum(dist, np.bitwise_count(h[i] ^ h_flip[j]))
            strong |= hashed[i] & hashed[j] & (dist <= config["confirm_distance"])
        pairs.append((i[strong], j[strong]))
        mr.pairs = int(strong.sum())
        found = _links(i[strong], j[strong], cos[strong], "cosine {:.3f}", smaller_is_closer=False)
    return linked_groups(n, pairs, eligible), found


def _check_clustered(ds: Any, col: str) -> None:
    """Before anything is written: phash_search="clusters" compares a hashed row without a vector
    with every row, so there may be only a few of them."""
    lacking = ds.count_rows(filter=f"phash IS NOT NULL AND {col} IS NULL")  # a count: no per-row arrays
    if lacking > MAX_UNCLUSTERED:
        raise LakeError(f"{lacking} rows have a phash but no {col} vector, and --phash-search clusters compares each of "
                        f"them with every row (at most {MAX_UNCLUSTERED}); run embed first, or use --phash-search all")


def _clustered_phash(config: dict[str, Any], h: np.ndarray, h_flip: np.ndarray, eligible: np.ndarray,
                     joins: _Joins) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """phash links in linear time (``phash_search="clusters"``): identical hashes anywhere, near
    ones among rows whose embeddings the semantic join finds within ``cosine``
    (``neardup.clustered_hamming_pairs``; the join is shared with the semantic method when both
    run from scratch). A hashed row without a vector is compared with every hashed row (there are
    few: images that hashed but did not embed; :func:`_check_clustered`)."""
    variants = np.stack([h, h_flip], 1) if config["flips"] else h[:, None]
    col = embedding_columns(config["embedding"])["image"]
    valid = joins.valid(col)
    a, b, _ = joins.pairs(col, np.flatnonzero(valid), config["cosine"])
    both = eligible[a] & eligible[b]
    everyone = np.flatnonzero(eligible)  # the search runs over hashed rows only (a null phash reads 0)
    at = np.full(len(eligible), -1, np.int64)
    at[everyone] = np.arange(len(everyone))
    i, j, d = clustered_hamming_pairs(variants[everyone], None, config["max_distance"], cosine=config["cosine"],
                                      candidates=(at[a[both]], at[b[both]]))
    parts = [(everyone[i], everyone[j], d)]
    for r in np.flatnonzero(eligible & ~valid):
        dist = hash_distances(variants, np.full(len(everyone), r), everyone)
        near = (dist <= config["max_distance"]) & (everyone != r)
        parts.append((np.full(int(near.sum()), r), everyone[near], dist[near]))
    i, j, d = (np.concatenate([p[c] for p in parts]) for c in range(3))
    keep = i != j
    return np.minimum(i, j)[keep], np.maximum(i, j)[keep], d[keep]


def _stored(eligible: np.ndarray, stored_rows: np.ndarray, mr: MethodReport) -> tuple[np.ndarray, np.ndarray, list]:
    """(new rows: eligible without a stored group, eligible row numbers, the stored groups as links)."""
    new = eligible & (stored_rows < 0)
    mr.new_rows = int(new.sum())
    old = np.flatnonzero(eligible & (stored_rows >= 0))
    return new, np.flatnonzero(eligible), [(old, stored_rows[old])]


def _no_links() -> Evidence:
    return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0), []


def _links(i: np.ndarray, j: np.ndarray, score: np.ndarray, detail: str, *, smaller_is_closer: bool = True) -> Evidence:
    """Each linked pair once (i < j, i != j) with its closest score, and a detail made from it."""
    i, j, score = np.asarray(i, np.int64), np.asarray(j, np.int64), np.asarray(score, np.float64)
    a, b = np.minimum(i, j), np.maximum(i, j)
    keep = a != b
    a, b, score = a[keep], b[keep], score[keep]
    order = np.lexsort((score if smaller_is_closer else -score, b, a))
    a, b, score = a[order], b[order], score[order]
    first = np.ones(len(a), bool)
    first[1:] = (a[1:] != a[:-1]) | (b[1:] != b[:-1])
    a, b, score = a[first], b[first], score[first]
    return a, b, score, [detail.format(v) if "{" in detail else detail for v in score]


def _verify_groups(lake: "Store", tbl: pa.Table, emb: str | None, config: dict[str, Any], stored_rows: np.ndarray,
                   labels: dict[str, np.ndarray], mr: MethodReport, workers: int | None,
                   progress: bool | None) -> tuple[np.ndarray, Evidence]:
    """Verified copies: candidate pairs (each new row's nearest image embeddings) that no other
    method links already, checked with local features (:mod:`lakecurate.verify`)."""
    from lakecurate.verify import KeypointCache, accepted, match_pairs

    n = tbl.num_rows
    x, eligible = _vectors(tbl.column(embedding_columns(emb)["image"]))
    status = np.asarray(tbl.column("ingest_status").to_numpy(zero_copy_only=False), dtype=object)
    eligible &= status != "error"  # no image to look at
    new, rows, pairs = _stored(eligible, stored_rows, mr)
    none = _no_links()
    if not mr.new_rows or len(rows) < 2:
        return linked_groups(n, pairs, eligible), none
    only_new = None if mr.new_rows == len(rows) else new[rows]
    i, j, _ = knn_pairs(x[rows], config["neighbors"], config["min_cosine"], new=only_new)
    i, j = rows[i], rows[j]
    # Pairs another image method links already need no second look.
    linked = np.zeros(len(i), bool)
    for m, best in labels.items():
        if m not in TEXT_METHODS:
            linked |= (best[i] >= 0) & (best[i] == best[j])
    i, j = i[~linked], j[~linked]
    mr.candidates = len(i)
    if not len(i):
        return linked_groups(n, pairs, eligible), none
    need = np.unique(np.concatenate([i, j]))
    at = pa.array(need, pa.int64())
    feats, cache = KeypointCache(lake).load(*(pc.take(tbl.column(c), at).to_pylist() for c in ("id", "content_hash", "_rowaddr")),
                                            workers=workers, progress=progress)
    mr.keypoint_rows, mr.keypoints_computed, mr.keypoint_seconds = cache.needed, cache.computed, cache.seconds
    t0 = time.perf_counter()
    matches = match_pairs(dict(zip(need.tolist(), feats)), i, j, enough=config["min_inliers"], progress=progress)
    mr.match_seconds = time.perf_counter() - t0
    ok = np.array([accepted(m, config["min_inliers"]) for m in matches], bool)
    mr.pairs = int(ok.sum())
    pairs.append((i[ok], j[ok]))
    good = [m for m, k in zip(matches, ok) if k]
    a, b = np.minimum(i[ok], j[ok]), np.maximum(i[ok], j[ok])
    found = (a, b, np.array([m.inliers for m in good], np.float64), [m.describe() for m in good])
    return linked_groups(n, pairs, eligible), found


def _hashes(tbl: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    h = tbl.column("phash")
    valid = ~np.asarray(h.is_null().to_numpy(zero_copy_only=False), bool)
    return pc.fill_null(h, 0).to_numpy(), pc.fill_null(tbl.column("phash_flip"), 0).to_numpy(), valid
