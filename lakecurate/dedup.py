"""The dedup stage: exact, perceptual and semantic duplicate groups, and one kept member per group.

Methods (each writes its own group column; rows are never deleted):

| method | column | two rows are linked when | default |
| --- | --- | --- | --- |
| exact | ``dup_exact_group`` | their image bytes are identical (sha256 ``content_hash``) | |
| exact | ``dup_pair_group`` | image bytes *and* caption are identical | |
| phash | ``dup_phash_group`` | 64-bit DCT perceptual hashes (of the picture inside any uniform surround: :func:`lakecurate.signals.surround_box`) differ in <= ``phash_distance`` bits, also against the mirrored image's hash (``flips``) | 8 bits |
| semantic | ``dup_semantic_group`` | image embeddings have cosine >= ``semantic_threshold`` (SemDeDup), or >= ``confirm_cosine`` with hashes within ``confirm_distance`` bits | per model, see ``SEMANTIC_THRESHOLDS`` |
| caption | ``dup_caption_group`` | caption embeddings have cosine >= ``caption_threshold`` | 0.98 |
| minhash | ``dup_minhash_group`` | the captions' character 5-gram sets have Jaccard >= ``minhash_threshold`` with the group's most connected caption (banded MinHash proposes, linear in the captions; the exact Jaccard decides; star groups, no chains): templated alt text ("Stock photo of X, royalty free") and near-identical captions; the ``caption_template`` recipe step drops large groups | 0.35 |
| copy | ``dup_copy_group`` | one of the 8 hashes of the picture inside its uniform surround turned by 0/90/180/270 degrees and mirrored (``copy_hashes``) is within ``copy_distance`` bits of one of the other's: rotated, letterboxed, pillarboxed and bordered copies | 6 bits |
| verify | ``dup_verify_group`` | one is among the other's ``verify_neighbors`` nearest image embeddings at cosine >= ``verify_cosine`` (a candidate), the pair is not linked by another method already, >= ``verify_inliers`` ORB keypoints agree on one similarity transform and the pixels agree where the images overlap under it (:mod:`lakecurate.verify`): heavy crops, photos framed in a page, overlays, turned and mirrored copies | 5 neighbours, 50 inliers |

A group column holds the ``id`` of the member that group keeps (a row alone holds its own id;
null: the row has no signal for that method, e.g. an undecodable image). Groups are the connected
components of the links, so a chain a~b~c is one group (but for verify's links of a row that holds
several pictures, a collage: only those into one region of it, :func:`one_region_links`).

Then the groups of the ``keep_from`` methods (default: exact, phash, semantic, copy and verify, those computed; caption
and minhash near-duplicates are reported but do not drop rows unless asked, because two different
photos may well share "a dog runs on the grass") are joined into ``dup_group`` (id of the kept member),
``dup_group_size``, ``dup_keep`` and ``dup_reason`` ("phash:<kept id>": the first method, in
``keep_from`` order, that puts the row with the kept member; "linked:<kept id>" when only a chain
of methods does; "verify:<kept id> (143 inliers)": the most inliers of the row's verified pairs).

**The evidence**: every link a run finds is a row of the lake's ``dup_pairs`` table (``a``, ``b``,
``method``, ``score``: differing bits, cosine or inliers, ``detail``, ``version``; ``box_a``, ``box_b``: a
verify link's inlier box in each image, which an incremental run's collage rule reads), so a person (and
the report) can see why two rows are one group; the semantic and caption links are a spanning
forest of the pairs from their threshold up (``semantic_pairs(span=)``: s copies of one picture are
s - 1 links, not s (s - 1) / 2; a new row is linked once to a stored group it joins): ``lakecurate.Lake(...).dup_pairs()``, or
``lancedb.connect(LAKE).open_table("dup_pairs")``. Methods computed from scratch (exact, phash, copy,
or a method ``recompute`` names: ``True`` names every method of the run) replace their rows; incremental runs add theirs. **The keep rule**: highest alignment score (``<embedding>_score``; within
:data:`SCORE_TIE` of the group's best counts as equal), then most
pixels, then earliest ingested, then smallest id; rows without a score rank after rows with one.

**Memory**: the semantic and caption methods never read their embedding column whole: the join
streams it once (:class:`lakecurate.columns.LanceVectors`), copying it to a local temporary file,
and gathers each group of clusters from that copy (:func:`lakecurate.neardup.semantic_pairs`), so
the vectors cost ~a group's worth of memory at any size (and the column's bytes of temporary
disk). Groups are held sparse (:class:`_Groups`: the rows in groups of two or more and the row
each one's group keeps; every other row is a group of its own), so the keep rule reads the score,
size, ingest time and id of those rows only, by position; stored groups and ids are streamed;
exact sorts a (64-bit hash, row) record a row out of core (:func:`lakecurate.stream.sorted_records`);
the group and decision columns are written a fragment at a time. What stays a row: a bool per
method (which rows have its signal, which have no stored group). Methods that compare a row with
every other still hold their inputs whole: phash's and copy's hashes (``scripts/bench_scale.py
--only dedup``, docs/scale.md); minhash streams the captions and pairs its band buckets a
partition at a time (:func:`~lakecurate.neardup.caption_pairs`: the verified pairs are held);
verify's candidates come from the out-of-core join above KNN_EXACT_MAX rows (``--only knn``).

**phash at scale**: ``phash_search="all"`` (the default) compares every hash with every other
(exact multi-index hashing, ~N^2 at 8 bits: 4.8 s at 1M hashes, 292 s at 10M); ``"clusters"``
links identical hashes anywhere and near ones only among rows whose image embeddings the semantic
join finds within ``phash_cosine`` (:func:`lakecurate.neardup.clustered_hamming_pairs`): linear
time, and what it leaves out is hash collisions between images the embedding calls different.
``copy_search="clusters"`` does the same for the copy method's 8 hashes a row (its all-pairs search
compares 8N hashes: out of reach above a few million rows), at ``copy_cosine``: what it leaves out
is copies whose hashes are near but not identical while the embedding calls the images different
(with the offline encoder, some turned copies: it is not rotation-invariant). When several of
semantic, phash and copy join every row in one call, one join at the lowest cosine serves them all.

Perceptual hashes are computed once per row into ``phash``/``phash_flip`` (uint64) with the other
image signals (:mod:`lakecurate.signals`: one reduced-size decode per image, in spawned workers);
k-means and joins come from :mod:`lakecurate.neardup`.

**Incremental**: a row is new for a method when its group value is null. A later run hashes only
the new rows, joins only new rows against the rest for semantic methods (``semantic_pairs(new=)``),
merges the result with the stored groups and rewrites group values only in fragments where they
changed (a new member can be the better keeper of an old group). Each column family is written
for all changed fragments in one commit. Verify's collage rule reads the stored links (and boxes)
of the rows a new link touches with the new ones, so it decides as a full run would: a stored link
the new ones outweigh is undone and its group made again from its other links.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lakecurate import columns
from lakecurate.columns import LanceTexts, LanceVectors, column_valid
from lakecurate.encoders import meaningless
from lakecurate.engines import check_engine
from lakecurate.errors import LakeError
from lakecurate.graph import check_has_rows, commit_decisions, embedded_rows, lakecurate_on, no_producer
from lakecurate.names import DEDUP_DEFAULT_METHODS, DEDUP_METHODS, DEDUP_TEXT_METHODS, Produce, embedding_columns
from lakecurate.neardup import (KNN_EXACT_MAX, HashFilter, Pairs, caption_pairs, clustered_hamming_pairs, components, hamming_pairs,
                               hash_distances, knn_pairs, nearest_pairs, semantic_pairs)
from lakecurate.options import cosine as check_cosine
from lakecurate.options import flag, spell, texts, whole
from lakecurate.progress import progress_bar
from lakecurate.runner import WAIT_POLL
from lakecurate.schema import EVIDENCE_KEY, EVIDENCE_TABLE, evidence_pin
from lakecurate.sqlcheck import clean_message
from lakecurate.store import retry_on_conflict
from lakecurate.verify import CONFIG as VERIFY_CONFIG
from lakecurate.verify import (AGREE_LEVELS, GAINS, MIN_AGREE, MIN_INLIERS, PERSPECTIVE, RANSAC_PX, RATIO, SCALES, STRETCH,
                               TURN_TOLERANCE)

if TYPE_CHECKING:
    import pandas as pd

    from lakecurate.store import Store

METHODS = DEDUP_METHODS  # verify last: it skips pairs the others link
TEXT_METHODS = DEDUP_TEXT_METHODS  # caption links: reported, not image duplicates
DEFAULT_METHODS = DEDUP_DEFAULT_METHODS  # verify: opt-in (an embedding, ~3x the time)
DEFAULT_KEEP_FROM = ("exact", "phash", "semantic", "copy", "verify")  # those computed
PHASH_DISTANCE = 8
# How phash looks for near hashes: "all" against all (exact multi-index hashing, ~N^2 at 8 bits:
# 292 s at 10M hashes), "clusters" among rows the embedding calls alike (linear; for 10M+ rows).
PHASH_SEARCHES = ("all", "clusters")
# phash_search="clusters": the image cosine above which two rows' hashes are compared. offline:
# its resized copies sit at 0.50-0.69 (planted Flickr8k copies, seed 1); open_clip: a guess (no
# CLIP weights on this machine; resized and re-encoded copies are usually above 0.9).
PHASH_COSINES = {"offline": 0.45, "open_clip": 0.8}
# copy_search="clusters": the same for the copy method's turned, mirrored and surround-trimmed hashes.
# offline: on planted hard copies (seeds 1-3, docs/benchmarks.md) it links 451 of the 463 copies
# the all-pairs search links (turned: 141 of 147, though only 56% of them are within 0.45 of their
# original: the encoder is not rotation-invariant, and most turned copies have a hash identical to
# one of the original's, which is matched anywhere); 0.45 shares phash's join. open_clip: a guess.
COPY_COSINES = {"offline": 0.45, "open_clip": 0.8}
MAX_UNCLUSTERED = 1000  # hashed rows without a vector that "clusters" compares with every row
# A hash search in clusters compares a row's hashes with its CLUSTERED_PER_ROW most similar
# neighbours above the cosine in each join block (neardup.semantic_pairs' per_row; the hashes are
# compared inside the join, so only the near ones are held): linear whatever the encoder's density
# (the offline encoder puts 0.31% of all pairs of Flickr8k photos above 0.45: ~1.5 billion
# candidates at 1M rows without a bound).
CLUSTERED_PER_ROW = 32
# The copy method compares 8 hashes a row with 8 of every other (64 chances against phash's 4), so
# it links at fewer differing bits to keep the same false-link rate (docs/benchmarks.md, issue 17).
COPY_DISTANCE = 6
# A pHash sets a bit where a DCT coefficient is above the median of the 64: a photo's hash has
# exactly 32 (every one of 800 Flickr8k photos, and its 6,400 copy hashes). Where most coefficients
# are equal (a solid colour, a plain gradient: all but a few are 0), they all sit at the median,
# their bits are 0 whatever the picture, and any two such pictures are a few bits apart (white,
# black, red, grey and a vertical gradient were one phash group). A hash with fewer set bits than
# this is too flat to compare: its row is in no phash or copy group, and it confirms no weaker
# semantic link (exact and semantic still see it).
FLAT_HASH_BITS = 16
FLAT_RULE = f"hashes with fewer than {FLAT_HASH_BITS} set bits are not compared"
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
# Candidate pairs verified at once: their rows' keypoints (~45 KiB a row) are held together, so
# memory is bounded by the chunk (<= 2 rows a pair: ~1.7 GiB), not by the lake.
VERIFY_PAIRS_CHUNK = 20_000
# A row whose verified matches lie in disjoint regions of it (inlier boxes overlapping by less than
# this share of the smaller one) holds several pictures: a collage of 2-4 photos is verified against
# each, and the union of those right links put the different photos in one group. Such a row keeps
# its links into one region only (CONTAINER_REGIONS), unless the other neighbours are linked to that
# region's without it; two crops of one photo both keep its middle, so their regions in it overlap.
CONTAINER_REGIONS = 1
DISJOINT = 0.1
# Cells a row joins when verify's candidates come from the join (above KNN_EXACT_MAX rows): at
# verify's loose cosines a row's nearest can sit several cells away, beyond the 4 that semantic's
# high cosines need. bench_scale-style rows at 300k, recall of 1,000 rows' exact 5 nearest: at
# cosine 0.5 0.955 / 0.983 / 0.993 / 0.998 with 4 / 6 / 8 / 12 cells, at 0.7 0.957 / 0.993 / 0.999
# with 4 / 8 / 12 (the join's time grows about linearly with them).
KNN_ASSIGN = 12
VERIFY_COSINES = {"offline": 0.4, "open_clip": 0.7}
PHASH_COLUMNS = ("phash", "phash_flip")
FINAL_COLUMNS = ("dup_group", "dup_group_size", "dup_keep", "dup_reason")
class Evidence(NamedTuple):
    """A method's links: rows ``i`` < ``j``, their scores and details; verify's also the inlier boxes
    of each (in i's images, in j's) and the stored links this run undid (rows i, rows j)."""

    i: np.ndarray
    j: np.ndarray
    score: np.ndarray
    detail: list[str]
    boxes: tuple[list, list] | None = None
    unlinked: tuple[np.ndarray, np.ndarray] | None = None


def group_columns(method: str) -> tuple[str, ...]:
    """The group columns a method writes (one column family, written together)."""
    if method not in METHODS:
        raise LakeError(f"unknown dedup method {method!r}; choose from {', '.join(METHODS)} or all")
    return ("dup_exact_group", "dup_pair_group") if method == "exact" else (f"dup_{method}_group",)


def recomputed_methods(methods: Sequence[str], recompute: bool | Sequence[str]) -> set[str]:
    """The methods whose groups this run drops and finds again from every row: all of ``methods``
    (``recompute=True``), none, or those named (a pipeline whose one threshold changed regroups that
    method alone; the others stay incremental: a semantic join again is hours at 10M rows)."""
    if isinstance(recompute, (bool, np.bool_)):  # (numpy's too: it was "not iterable", a TypeError)
        return set(methods) if recompute else set()
    if isinstance(recompute, str) or not hasattr(recompute, "__iter__") or not all(isinstance(m, str) for m in recompute):
        raise LakeError(f"recompute must be true, false or a list of method names, got {recompute!r}")
    for m in recompute:
        group_columns(m)  # an unknown name: the message lists the methods
        if m not in methods:
            raise LakeError(f"recompute names {m!r}, which is not one of this run's methods ({', '.join(methods)})")
    return set(recompute)


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


# Alignment scores this close to their group's best count as equal in the keep rule: a resized or
# re-encoded copy's score differs from its original's by resampling noise (about 0.01 of CLIP cosine),
# so the copy with the most pixels is kept rather than whichever the noise favoured.
SCORE_TIE = 0.02


def near_best(score: np.ndarray, groups: np.ndarray, tie: float = SCORE_TIE) -> np.ndarray:
    """``score`` with each score within ``tie`` of its group's best raised to that best (NaN stays).

    >>> near_best(np.array([0.30, 0.31, 0.25, 0.5]), np.array([0, 0, 0, 1])).tolist()
    [0.31, 0.31, 0.25, 0.5]
    """
    score = np.asarray(score, np.float64)
    if not len(score):
        return score
    _, g = np.unique(groups, return_inverse=True)
    best = np.full(g.max() + 1, -np.inf)
    np.maximum.at(best, g, np.where(np.isnan(score), -np.inf, score))
    near = ~np.isnan(score) & (score >= best[g] - tie)
    return np.where(near, best[g], score)


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
    keypoint_loads: int = 0  # verify: rows whose features were loaded, summed over the chunks of pairs
    keypoints_computed: int = 0  # verify: of those, computed now (the rest came from the cache)
    keypoint_seconds: float = 0.0  # verify: reading the cache and computing the missing keypoints
    match_seconds: float = 0.0  # verify: matching the candidate pairs
    container_links: int = 0  # verify: verified links not made, into a second region of a row that holds several pictures


@dataclass
class DedupReport:
    lake: str
    methods: list[MethodReport] = field(default_factory=list)
    keep_from: list[str] = field(default_factory=list)
    rows: int = 0
    kept: int = 0
    dropped: int = 0
    hashed: int = 0
    flat: int = 0  # rows whose perceptual hash is too flat to compare (FLAT_HASH_BITS): in no phash or copy group
    fragments_written: int = 0
    versions: list[int] = field(default_factory=list)
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)  # e.g. the keep rule ranks by a test model's scores

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def embedding_need(methods: Sequence[str], phash_search: str = "all", copy_search: str = "all") -> str | None:
    """Why these methods need an embedding (the end of the refusal where the lake has none), or None:
    semantic, caption and verify compare embeddings, a hash search "clusters" searches within them.
    ``lakecurate run`` asks it before the first step, dedup when it runs."""
    clustered = [m for m, search in (("phash", phash_search), ("copy", copy_search)) if search == "clusters" and m in methods]
    if {"semantic", "caption", "verify"} & set(methods):
        return "semantic, caption and verify dedup need them; or use --method exact,phash,copy"
    if clustered:
        return (f"--{clustered[0]}-search clusters compares hashes within embedding clusters; embed first, or use "
                f"--{clustered[0]}-search all")
    return None


def _pick_embedding(lake: "Store", ds: Any, embedding: str | None, need: str | None) -> tuple[str | None, dict | None]:
    from lakecurate.names import pick_embedding

    return pick_embedding(lake, ds, embedding, need=need)


@dataclass
class _Groups:
    """One method's groups, held sparse: ``eligible`` (a bool a row of the lake: the row has the
    method's signal; None: every row) and, for the rows in a group of two or more (``rows``,
    ascending), the row their group keeps (``best``). Every other eligible row is a group of its
    own, so memory grows with the duplicates, not with the lake (but for ``eligible``)."""

    eligible: np.ndarray | None
    rows: np.ndarray
    best: np.ndarray

    def at(self, r: np.ndarray) -> np.ndarray:
        """The kept row of each row of ``r``: itself when alone, -1 when it has no signal."""
        r = np.asarray(r, np.int64)
        out = r.copy() if self.eligible is None else np.where(self.eligible[r], r, -1)
        if len(self.rows) and len(r):
            k = np.minimum(np.searchsorted(self.rows, r), len(self.rows) - 1)
            hit = self.rows[k] == r
            out[hit] = self.best[k[hit]]
        return out

    def counts(self) -> tuple[int, int]:
        """(groups of two or more rows, their rows that are not kept)."""
        return len(np.unique(self.best)), int((self.rows != self.best).sum())

    def span(self, lo: int, hi: int) -> tuple[int, np.ndarray]:
        """(index in ``rows`` of the first grouped row at or after row lo, the offsets from lo of
        the grouped rows in lo..hi-1): where a fragment's grouped rows sit in ``rows`` and in it."""
        a, b = np.searchsorted(self.rows, [lo, hi])
        return int(a), self.rows[a:b] - lo


def _group(eligible: np.ndarray | None, pairs: Sequence[tuple[np.ndarray, np.ndarray]], ranks: "_Ranks") -> _Groups:
    """The connected components of the links in ``pairs`` among the eligible rows (a row without
    the signal is in no group, but still connects the rows it links), each group's best-ranked
    row kept: :func:`linked_groups` and :func:`best_of_groups` over the linked rows only."""
    i = np.concatenate([np.asarray(p[0], np.int64) for p in pairs]) if pairs else np.empty(0, np.int64)
    j = np.concatenate([np.asarray(p[1], np.int64) for p in pairs]) if pairs else np.empty(0, np.int64)
    nodes, at = np.unique(np.concatenate([i, j]), return_inverse=True)
    label = components(len(nodes), at[: len(i)], at[len(i):])
    ok = np.ones(len(nodes), bool) if eligible is None else eligible[nodes]
    label[~ok] = -1
    size = np.bincount(label[ok], minlength=len(nodes))
    label[ok & (size[np.maximum(label, 0)] < 2)] = -1  # alone among the eligible: a group of its own
    member = label >= 0
    rank = np.zeros(len(nodes), np.int64)
    rank[member] = ranks.rank(nodes[member], label[member])
    best = best_of_groups(label, rank)
    return _Groups(eligible, nodes[member], nodes[best[member]])


class _Ranks:
    """The keep rule's order (:func:`keep_rank`) among any rows asked about: their score, pixels,
    ingest time and id are read by position (``ds.take``, a batch at a time) only for those rows
    (the rows in groups), and kept for the next question (three numbers and an id a row)."""

    def __init__(self, ds: Any, score: str | None) -> None:
        self.ds, self.score = ds, score
        self.cols = [c for c in (score, "width", "height", "ingested_at", "id") if c]
        self.rows = np.empty(0, np.int64)
        self.keys = np.empty((3, 0), np.float64)  # score (NaN: none), pixels, ingest time
        self.ids = pa.array([], pa.string())

    def _read(self, rows: np.ndarray) -> tuple[np.ndarray, pa.Array]:
        keys, ids = [], []
        for s in range(0, len(rows), _BATCH):
            t = self.ds.take(rows[s: s + _BATCH], columns=self.cols)
            score = (pc.fill_null(pc.cast(t.column(self.score), pa.float64()), float("nan")).to_numpy()
                     if self.score else np.full(t.num_rows, np.nan))  # no score: ranks after every scored row
            pixels = pc.fill_null(pc.multiply(pc.cast(t.column("width"), pa.int64()),
                                              pc.cast(t.column("height"), pa.int64())), 0).to_numpy()
            ingested = pc.fill_null(pc.cast(t.column("ingested_at"), pa.int64()), 0).to_numpy()
            keys.append(np.stack([score, pixels.astype(np.float64), ingested.astype(np.float64)]))
            ids.append(t.column("id").combine_chunks().cast(pa.string()))
        return np.concatenate(keys, axis=1), pa.concat_arrays(ids)

    def rank(self, rows: np.ndarray, groups: np.ndarray | None = None) -> np.ndarray:
        """Rank of each of ``rows`` (distinct) under the keep rule, among ``rows``; with ``groups``
        (each row's group), scores within :data:`SCORE_TIE` of their group's best count as that best
        (:func:`near_best`)."""
        rows = np.asarray(rows, np.int64)
        missing = np.setdiff1d(rows, self.rows)
        if len(missing):
            keys, ids = self._read(missing)
            self.rows = np.concatenate([self.rows, missing])
            order = np.argsort(self.rows, kind="stable")
            self.rows, self.keys = self.rows[order], np.concatenate([self.keys, keys], axis=1)[:, order]
            self.ids = pa.concat_arrays([self.ids, ids]).take(pa.array(order))
        at = np.searchsorted(self.rows, rows)
        score, pixels, ingested = self.keys[:, at]
        if groups is not None:
            score = near_best(score, groups)
        ids = pc.rank(self.ids.take(pa.array(at)), sort_keys="ascending", tiebreaker="first").to_numpy()
        return keep_rank(score, pixels, ingested, ids)


class _Ids:
    """The ids of some rows (read by position once), looked up by row."""

    def __init__(self, ds: Any, rows: np.ndarray) -> None:
        self.rows = np.unique(np.asarray(rows, np.int64))
        self.ids = (ds.take(self.rows, columns=["id"]).column(0).combine_chunks().cast(pa.string())
                    if len(self.rows) else pa.array([], pa.string()))

    def of(self, rows: np.ndarray) -> pa.Array:
        """The ids of ``rows`` (each among those read), in that order."""
        rows = np.asarray(rows, np.int64)
        at = np.minimum(np.searchsorted(self.rows, rows), max(len(self.rows) - 1, 0))
        if len(rows) and not np.array_equal(self.rows[at], rows):
            raise ValueError("an id was asked of a row not read")
        return pc.take(self.ids, pa.array(at, pa.int64()))


@dataclass
class _Stored:
    """A method's groups as an earlier run stored them: which rows have none (``missing``: null,
    or the row it names is gone), and the rows whose group another row keeps (``rows``, ``kept``)."""

    missing: np.ndarray
    rows: np.ndarray
    kept: np.ndarray

    def links(self, eligible: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        on = eligible[self.rows]
        return self.rows[on], self.kept[on]


def _rows_of(ds: Any, wanted: pa.Array) -> np.ndarray:
    """The row holding each id of ``wanted`` (the first, as ``pc.index_in`` would; -1: none), the id
    column read a batch at a time."""
    row_of = np.full(len(wanted), -1, np.int64)
    if not len(wanted):
        return row_of
    lo = 0
    for batch in ds.to_batches(columns=["id"], batch_size=_BATCH):
        at = pc.fill_null(pc.index_in(batch.column(0).cast(pa.string()), value_set=wanted), -1).to_numpy()
        found = np.flatnonzero(at >= 0)
        fresh = row_of[at[found]] < 0
        row_of[at[found][fresh][::-1]] = lo + found[fresh][::-1]
        lo += batch.num_rows
    return row_of


def _stored_groups(ds: Any, methods: Sequence[str], n: int) -> dict[str, _Stored]:
    """Each method's stored groups, read a batch at a time (two passes: the group columns with the
    ids, then the ids again to find the rows that the stored values name); what is held is a bool
    a row and the rows whose group another row keeps."""
    cols = [group_columns(m)[0] for m in methods]
    missing = {m: np.zeros(n, bool) for m in methods}
    rows: dict[str, list[np.ndarray]] = {m: [] for m in methods}
    names: dict[str, list[pa.Array]] = {m: [] for m in methods}
    lo = 0
    for batch in (ds.to_batches(columns=["id", *cols], batch_size=_BATCH) if cols else ()):
        ids = batch.column(0).cast(pa.string())
        for m, c in zip(methods, cols):
            v = batch.column(c).cast(pa.string())
            missing[m][lo: lo + len(v)] = np.asarray(v.is_null().to_numpy(zero_copy_only=False), bool)
            other = np.flatnonzero(pc.fill_null(pc.not_equal(v, ids), False).to_numpy(zero_copy_only=False))
            rows[m].append(other + lo)
            names[m].append(v.take(pa.array(other, pa.int64())))
        lo += batch.num_rows
    named = {m: pa.chunked_array(names[m], pa.string()).combine_chunks() for m in methods}
    wanted = pc.unique(pa.chunked_array(list(named.values()), pa.string())) if methods else pa.array([], pa.string())
    row_of = _rows_of(ds, wanted)
    out = {}
    for m in methods:
        r = np.concatenate(rows[m]) if rows[m] else np.empty(0, np.int64)
        kept = row_of[pc.fill_null(pc.index_in(named[m], value_set=wanted), -1).to_numpy()] if len(r) else r
        # its kept row was deleted, or rewritten (ingest --update, a retried error row: no group of its
        # own now, another image maybe): grouped again as a new row (it stayed joined to the old image's)
        gone = (kept < 0) | missing[m][np.maximum(kept, 0)]
        missing[m][r[gone]] = True
        out[m] = _Stored(missing[m], r[~gone], kept[~gone])
    return out


_BATCH = 1 << 16  # rows of a column read at once when dedup streams one
_KEYED = np.dtype([("key", np.uint64), ("row", np.int64)])


class _Values:
    """A column dedup reads, row for row with the lake's scan: held in ``tbl``, or else streamed
    from ``ds`` a batch at a time, with single rows taken by position."""

    def __init__(self, ds: Any, tbl: pa.Table, name: str) -> None:
        self.ds, self.tbl, self.name = ds, tbl, name

    def chunks(self) -> "Iterable[pa.Array]":
        if self.name in self.tbl.column_names:
            return self.tbl.column(self.name).chunks
        return (b.column(0) for b in self.ds.to_batches(columns=[self.name], batch_size=_BATCH))

    def at(self, rows: np.ndarray) -> pa.Array:
        """The values of ``rows`` (positions in the scan), in that order."""
        if self.name in self.tbl.column_names:
            return pc.take(self.tbl.column(self.name), pa.array(rows, pa.int64())).combine_chunks()
        unique, back = np.unique(rows, return_inverse=True)
        got = self.ds.take(unique, columns=[self.name]).column(0) if len(unique) else pa.chunked_array([], pa.string())
        return pc.take(got, pa.array(back, pa.int64())).combine_chunks()


def _same_value_pairs(col: _Values, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows with a value, and :func:`equal_value_pairs` of them): each row linked to the first
    row of the same value, in bounded memory: each value hashed to 64 bits a chunk at a time
    (``pd.util.hash_array``), the (hash, row) records sorted out of core
    (:func:`lakecurate.stream.sorted_records`) and runs of one hash linked. The pairs found are
    then checked on the values themselves; in the unlikely case two values shared a hash, the
    column is dictionary-encoded (exact, but the whole column and its dictionary) and paired again."""
    import pandas as pd

    from lakecurate.stream import sorted_records

    valid = np.zeros(n, bool)

    def records() -> "Iterable[np.ndarray]":
        at = 0
        for chunk in col.chunks():
            ok = np.asarray(chunk.is_valid().to_numpy(zero_copy_only=False), bool)
            valid[at: at + len(chunk)] = ok
            rec = np.empty(int(ok.sum()), _KEYED)
            rec["key"] = pd.util.hash_array(chunk.filter(pa.array(ok)).to_numpy(zero_copy_only=False), categorize=False)
            rec["row"] = np.flatnonzero(ok) + at
            at += len(chunk)
            yield rec

    i, j = _runs(sorted_records(records()))
    if _equal_at(col, i, j):
        return valid, i, j
    enc = pc.dictionary_encode(pa.chunked_array(list(col.chunks())).combine_chunks())  # a hash shared by two values
    return (valid, *equal_value_pairs(pc.fill_null(enc.indices, -1).to_numpy().astype(np.int64), valid))


def _runs(stream: "Iterable[np.ndarray]") -> tuple[np.ndarray, np.ndarray]:
    """Records sorted by key (rows ascending within a key) -> pairs linking each row to the first
    row of its key (runs may go on from one array of the stream to the next)."""
    out_i, out_j = [], []
    carry: tuple[int, int] | None = None  # (key, first row) of the run the last array ended in
    for rec in stream:
        if not len(rec):
            continue
        k, r = rec["key"], rec["row"]
        start = np.ones(len(k), bool)
        start[1:] = k[1:] != k[:-1]
        goes_on = carry is not None and int(k[0]) == carry[0]
        start[0] = not goes_on
        firsts = r[start]
        run = np.cumsum(start) - 1
        if goes_on:
            firsts = np.concatenate([[carry[1]], firsts])
            run += 1
        rep = firsts[run]
        out_i.append(rep[~start])
        out_j.append(r[~start])
        carry = (int(k[-1]), int(rep[-1]))
    cat = lambda parts: np.concatenate(parts) if parts else np.empty(0, np.int64)  # noqa: E731
    return cat(out_i), cat(out_j)


def _equal_at(col: _Values, i: np.ndarray, j: np.ndarray) -> bool:
    """Whether the values of rows ``i`` and ``j`` are equal, pair by pair (null equal to null
    only); read a batch of pairs at a time."""
    for s in range(0, len(i), _BATCH):
        a, b = col.at(i[s: s + _BATCH]), col.at(j[s: s + _BATCH])
        both_null = pc.and_(pc.is_null(a), pc.is_null(b))
        if pc.all(pc.or_(pc.fill_null(pc.equal(a, b), False), both_null)).as_py() is False:
            return False
    return True


def _value_keys(cols: Sequence[_Values], rows: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each row's values in ``cols`` combined (null a value of its own), the
    values read by position a batch of rows at a time."""
    import pandas as pd

    key = np.zeros(len(rows), np.uint64)
    for s in range(0, len(rows), _BATCH):
        for col in cols:
            v = col.at(rows[s: s + _BATCH])
            h = pd.util.hash_array(v.to_numpy(zero_copy_only=False), categorize=False)
            h[np.asarray(v.is_null().to_numpy(zero_copy_only=False), bool)] = np.uint64(0x9E3779B97F4A7C15)
            with np.errstate(over="ignore"):
                key[s: s + _BATCH] = key[s: s + _BATCH] * np.uint64(0x100000001B3) ^ h
    return key


def _pair_groups(ds: Any, tbl: pa.Table, exact: _Groups, ranks: "_Ranks") -> _Groups:
    """``dup_pair_group``: identical image bytes *and* caption, a finer split of exact's groups,
    so only the rows of those groups are read (their hash and caption, by position, a batch at a
    time): paired by a 64-bit hash of both, the pairs checked on the values (redone by dictionary
    codes of those rows' values if two ever shared a hash)."""
    rows = exact.rows
    cols = [_Values(ds, tbl, "content_hash"), _Values(ds, tbl, "caption")]
    everyone = np.ones(len(rows), bool)
    i, j = equal_value_pairs(_value_keys(cols, rows), everyone)
    if not all(_equal_at(col, rows[i], rows[j]) for col in cols):
        codes = np.zeros(len(rows), np.int64)
        for col in cols:
            enc = pc.dictionary_encode(col.at(rows))
            width = len(enc.dictionary) + 1  # the last code: null (equal to null only)
            codes = codes * width + pc.fill_null(enc.indices, width - 1).to_numpy().astype(np.int64)
        i, j = equal_value_pairs(codes, everyone)
    return _group(exact.eligible, [(rows[i], rows[j])], ranks)


def _reasons(ids: _Ids, dropped: np.ndarray, kept_by: np.ndarray, use: list[str], groups: dict[str, _Groups],
             inliers: dict[str, int]) -> pa.Array:
    """``dup_reason`` of the ``dropped`` rows: "METHOD:ID" of the row that keeps them (``kept_by``;
    the first of ``use`` whose group holds both, else "linked"), verify's with its inliers."""
    how = np.full(len(dropped), len(use), np.int64)  # len(use): "linked" (joined through another method)
    for at, m in reversed(list(enumerate(use))):  # the first method that links them wins
        mine = groups[m].at(dropped)
        how[(mine >= 0) & (mine == groups[m].at(kept_by))] = at
    text = pc.binary_join_element_wise(pc.take(pa.array([*use, "linked"], pa.string()), pa.array(how)),
                                       ids.of(kept_by), ":")
    if inliers and "verify" in use:
        verified = np.flatnonzero(how == use.index("verify"))
        mine = ids.of(dropped[verified]).to_pylist()
        texts = text.to_pylist()
        for at, r in zip(verified, mine):
            texts[at] += f" ({inliers[r]} inliers)" if r in inliers else ""
        text = pa.array(texts, pa.string())
    return text.cast(pa.string())


def _placed(own: pa.Array, valid: np.ndarray | None, at: np.ndarray, values: pa.Array) -> pa.Array:
    """``own`` (a fragment's values), null where not ``valid``, with ``values`` at offsets ``at``."""
    idx = np.arange(len(own), dtype=np.int64)
    idx[at] = len(own) + np.arange(len(at))
    mask = None if valid is None else ~valid
    if mask is not None:
        mask[at] = False
    both = pa.concat_arrays([own.cast(values.type), values]) if len(values) else own.cast(values.type)
    return pc.take(both, pa.array(idx, pa.int64(), mask=mask))


# The decision's columns (the best member of each group kept), declared together.
DECISION_COLUMNS = {"dup_group": pa.string(), "dup_group_size": pa.int32(), "dup_keep": pa.bool_(), "dup_reason": pa.string()}


def method_configs(methods: Sequence[str], emb: str | None, emb_prov: dict[str, Any] | None, *,
                   phash_distance: int = PHASH_DISTANCE, flips: bool = True, phash_search: str = "all",
                   phash_cosine: float | None = None, copy_distance: int = COPY_DISTANCE, copy_search: str = "all",
                   copy_cosine: float | None = None, semantic_threshold: float | None = None,
                   caption_threshold: float = CAPTION_THRESHOLD, minhash_threshold: float = MINHASH_THRESHOLD,
                   confirm_cosine: float | None = None, confirm_distance: int = CONFIRM_DISTANCE,
                   verify_inliers: int = MIN_INLIERS, verify_neighbors: int = VERIFY_NEIGHBORS,
                   verify_cosine: float | None = None) -> dict[str, dict[str, Any]]:
    """The config each method's group columns record (their provenance) for a run of ``methods``
    with these settings over embedding ``emb`` (``emb_prov``: its provenance; None: no embedding,
    and no method that reads one): a setting left None takes the default of the embedding's
    encoder family. What :func:`dedup` records, and what a pipeline compares a [dedup] step's
    options with (one derivation of the defaults for both)."""
    configs: dict[str, dict[str, Any]] = {
        "exact": {"on": ["content_hash", "caption"]},
        "phash": {"max_distance": int(phash_distance), "flips": bool(flips), "hash": "phash", "flat": FLAT_RULE},  # search="all"
        "copy": {"max_distance": int(copy_distance), "hash": "copy_hashes", "flat": FLAT_RULE},
        "minhash": {"threshold": float(minhash_threshold), "shingles": "5 characters, lower case, punctuation as space",
                    "num_perm": 256, "candidates": "band buckets over 8 captions: each with its 16 of fewest shingles",
                    "groups": "star: most connected caption first"},
    }
    if emb is None or emb_prov is None:
        return configs
    family = emb_prov["config"].get("family", "open_clip")
    thr = semantic_threshold if semantic_threshold is not None else SEMANTIC_THRESHOLDS.get(family, 0.95)
    confirm = confirm_cosine if confirm_cosine is not None else CONFIRM_COSINES.get(family, 0.85)
    configs["semantic"] = {"embedding": emb, "embedding_config": emb_prov["config_hash"], "threshold": float(thr),
                           "confirm_cosine": float(min(confirm, thr)), "confirm_distance": int(confirm_distance),
                           "flips": bool(flips), "flat": FLAT_RULE}
    # hash methods searched among the semantic join's neighbours (linear) instead of all pairs
    for m, search in (("phash", phash_search), ("copy", copy_search)):
        if search == "clusters" and m in methods:
            cosine = phash_cosine if m == "phash" else copy_cosine
            default = (PHASH_COSINES if m == "phash" else COPY_COSINES).get(family, 0.8)
            configs[m].update(search="clusters", embedding=emb, embedding_config=emb_prov["config_hash"],
                              cosine=float(cosine if cosine is not None else default), per_row=CLUSTERED_PER_ROW)
    configs["caption"] = {"embedding": emb, "embedding_config": emb_prov["config_hash"],
                          "threshold": float(caption_threshold)}
    vcos = verify_cosine if verify_cosine is not None else VERIFY_COSINES.get(family, 0.7)
    configs["verify"] = {"embedding": emb, "embedding_config": emb_prov["config_hash"],
                         "neighbors": verify_neighbors, "min_cosine": float(vcos), "min_inliers": verify_inliers,
                         "features": VERIFY_CONFIG, "ratio": RATIO, "ransac_px": RANSAC_PX,
                         "scales": list(SCALES), "turn_tolerance": TURN_TOLERANCE, "min_agree": MIN_AGREE,
                         "agree_levels": AGREE_LEVELS, "gains": list(GAINS), "container_regions": CONTAINER_REGIONS,
                         "disjoint": DISJOINT, "perspective": PERSPECTIVE, "stretch": STRETCH}
    return configs


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
    copy_search: str = "all",
    copy_cosine: float | None = None,
    semantic_threshold: float | None = None,
    caption_threshold: float = CAPTION_THRESHOLD,
    minhash_threshold: float = MINHASH_THRESHOLD,
    confirm_cosine: float | None = None,
    confirm_distance: int = CONFIRM_DISTANCE,
    keep_from: Sequence[str] | None = None,
    verify_inliers: int = MIN_INLIERS,
    verify_neighbors: int = VERIFY_NEIGHBORS,
    verify_cosine: float | None = None,
    recompute: bool | Sequence[str] = False,
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
    # bits of a 64-bit hash: a pipeline's phash_distance = 100 linked every row (the CLI's range said 0..64)
    phash_distance = whole("phash_distance", phash_distance, 0, high=64)
    flips = flag("flips", flips)  # flips="no" is a true string: mirrors were linked
    confirm_distance = whole("confirm_distance", confirm_distance, 0, high=64)
    copy_distance = whole("copy_distance", copy_distance, 0, high=64)
    verify_inliers = whole("verify_inliers", verify_inliers, 4)  # RANSAC needs a few points to mean anything
    verify_neighbors = whole("verify_neighbors", verify_neighbors, 1)
    for name, search in (("phash", phash_search), ("copy", copy_search)):
        if search not in PHASH_SEARCHES:
            raise LakeError(f"{name}_search must be one of {', '.join(PHASH_SEARCHES)}, got {search!r}")
    (phash_cosine, copy_cosine, semantic_threshold, confirm_cosine, caption_threshold, verify_cosine,
     minhash_threshold) = check_thresholds({
        "phash_cosine": phash_cosine, "copy_cosine": copy_cosine, "semantic_threshold": semantic_threshold,
        "confirm_cosine": confirm_cosine, "caption_threshold": caption_threshold, "verify_cosine": verify_cosine,
        "minhash_threshold": minhash_threshold}).values()
    methods = texts("methods", methods)  # dedup("exact"): one method, not its letters
    methods = list(dict.fromkeys(METHODS if "all" in methods else methods))
    for m in methods:
        group_columns(m)  # validates
    redo = recomputed_methods(methods, recompute)
    # another writer's column under a name this run writes: refused before the first set is written
    columns.refuse_foreign(lake, lake.dataset(), [c for m in methods for c in group_columns(m)] + list(DECISION_COLUMNS))
    keep_from_given = keep_from
    # keep_from="phash": one method, not its letters; 5: an error naming the option, not a TypeError
    keep_from = texts("keep_from", keep_from) if keep_from is not None else list(DEFAULT_KEEP_FROM)
    if not keep_from:
        raise LakeError(f"keep_from is empty: name the methods whose groups decide, e.g. keep_from={['exact', 'phash']!r}")
    for m in keep_from:
        group_columns(m)
    report = DedupReport(lake=lake.uri, keep_from=keep_from)
    ds = lake.dataset()
    chosen = keep_from_given is not None and tuple(keep_from) != DEFAULT_KEEP_FROM
    if chosen and not any(m in methods or group_columns(m)[0] in ds.schema.names for m in keep_from):
        # "among those computed" would leave none: dup_keep from no groups, every duplicate kept, silently
        raise LakeError(f"{spell('--keep-from')} {','.join(keep_from)}: lake '{lake.uri}' has none of these groups and this run "
                        f"computes none; add them: lakecurate dedup {lake.shell} --method {','.join(keep_from)} "
                        f"--keep-from {','.join(keep_from)}")
    check_has_rows(lake, ds)  # (groups of nothing were declared and recorded as current)
    # hash methods searched among the semantic join's neighbours (linear) instead of all pairs
    clustered = [m for m, search in (("phash", phash_search), ("copy", copy_search)) if search == "clusters" and m in methods]
    emb, emb_prov = _pick_embedding(lake, ds, embedding, embedding_need(methods, phash_search, copy_search))

    if emb is not None and meaningless(emb_prov):
        if semantic_threshold is None and {"semantic", "caption"} & set(methods):
            raise LakeError(f"embedding '{emb}' comes from a randomly initialised test model: its similarities are "
                            "meaningless, so semantic dedup would link unrelated pairs; embed with a real model, "
                            f"or pass {spell('--semantic-threshold')} to do it anyway (tests)")
        for m in clustered:
            raise LakeError(f"embedding '{emb}' comes from a randomly initialised test model: it cannot say which "
                            f"hashes to compare; embed with a real model, or use --{m}-search all")
        # the keep rule still ranks, but which member it keeps means nothing
        report.warnings.append(f"the keep rule ranks duplicates by '{embedding_columns(emb)['score']}', the score "
                               f"of a randomly initialised test model: which member is kept is arbitrary; embed "
                               f"with a real model and pass --embedding")
    configs = method_configs(
        methods, emb, emb_prov, phash_distance=phash_distance, flips=flips, phash_search=phash_search,
        phash_cosine=phash_cosine, copy_distance=copy_distance, copy_search=copy_search, copy_cosine=copy_cosine,
        semantic_threshold=semantic_threshold, caption_threshold=caption_threshold,
        minhash_threshold=minhash_threshold, confirm_cosine=confirm_cosine, confirm_distance=confirm_distance,
        verify_inliers=verify_inliers, verify_neighbors=verify_neighbors, verify_cosine=verify_cosine)

    ds = _check_stored_current(lake, ds, methods, keep_from, progress)  # (before the signals it asks for are written)
    if "verify" in configs and "verify" not in redo:
        report.warnings += _kept_older(lake, ds, configs["verify"])
    # the vectors the joins read, checked before anything is written (a NaN is refused, naming rows)
    before = ds
    vectors = ([embedding_columns(emb)["image"]] if {"semantic", "verify"} & set(methods) or clustered else []) + (
        [embedding_columns(emb)["text"]] if "caption" in methods else [])
    valid = {col: embedded_rows(lake, before, col, then="dedup") for col in vectors}
    if vectors:  # rows not embedded yet are in no semantic/caption/clustered group: said, with the way to embed them
        report.warnings += _not_embedded(lake, before, valid, methods, clustered, emb, emb_prov)
    for m in methods:  # a changed config without recompute: refused now, not after the new rows were hashed
        if m not in redo and group_columns(m)[0] in ds.schema.names:
            columns.declare(lake, [pa.field(c, pa.string()) for c in group_columns(m)],
                            columns.provenance("dedup", {"method": m, **configs[m]}, _sources(m, emb), ds.version),
                            fix=f"run with the same settings, or with --recompute to regroup every row by {m}")
    produce = produce or no_producer(lake, "dedup")  # dedup runs no stage itself: it asks for their columns
    if {"phash", "semantic"} & set(methods):  # semantic links at a lower cosine are confirmed by hashes
        report.hashed = produce("image_signals", workers=workers, progress=progress, engine=engine)
    if "copy" in methods:  # the same new rows again, for their copy hashes: counted once
        report.hashed = max(report.hashed, produce("copy_signals", workers=workers, progress=progress, engine=engine))
    for m in clustered:
        _check_clustered(lake.dataset(), embedding_columns(emb)["image"], m)

    # Declare each method's columns (metadata only; a changed config is an error unless recompute):
    # those already there and kept first, which only check, so a refusal comes before any drop or add.
    names = set(lake.dataset().schema.names)
    for m in sorted(methods, key=lambda m: m in redo or group_columns(m)[0] not in names):
        prov = columns.provenance("dedup", {"method": m, **configs[m]}, _sources(m, emb), lake.version)
        columns.declare(lake, [pa.field(c, pa.string()) for c in group_columns(m)], prov, recompute=m in redo,
                        fix=f"run with the same settings, or with --recompute to regroup every row by {m}")

    ds = lake.dataset()
    n = ds.count_rows()
    report.rows = n
    present = [m for m in METHODS if all(c in ds.schema.names for c in group_columns(m))]
    # What a method computed now needs whole is read whole (hashes it compares with every other;
    # minhash streams its captions); the rest is streamed or read by position for the rows in groups (ids,
    # scores and stored groups hold nothing a row; verify takes the keys of its candidates' rows).
    read = list(PHASH_COLUMNS) if {"phash", "semantic"} & set(methods) else []
    read += ["copy_hashes"] if "copy" in methods else []
    tbl = (ds.to_table(columns=list(dict.fromkeys(read)), with_row_address=True) if read
           else pa.table({"_rowaddr": pa.array([], pa.uint64())}))
    stored = _stored_groups(ds, present, n)
    ranks = _Ranks(ds, embedding_columns(emb)["score"] if emb is not None else None)
    usable = ~_equals(ds, "ingest_status", "error")  # ingest errors are in no group (verify's rule, for all)
    if "phash" in tbl.column_names:
        report.flat = int((~_hashes(tbl)[2] & ~np.asarray(tbl.column("phash").is_null().to_numpy(zero_copy_only=False), bool)
                           & usable).sum())

    same_rows = [(f.fragment_id, f.count_rows()) for f in ds.get_fragments()] == [
        (f.fragment_id, f.count_rows()) for f in before.get_fragments()]  # (the declares added no row)
    joins = _Joins(ds, lake.storage_options, progress, engine, lake, valid=valid if same_rows else None)
    for m in {"semantic", "caption"} & set(methods):  # they group by every pair from their threshold up
        joins.span[embedding_columns(emb)["image" if m == "semantic" else "text"]] = configs[m]["threshold"]
    full_joins = [configs[m]["cosine"] for m in clustered] + ([configs["semantic"]["confirm_cosine"]] if "semantic" in methods else [])
    if len(full_joins) > 1:  # one image join at the lowest cosine serves them all
        joins.floor[embedding_columns(emb)["image"]] = min(full_joins)
    image = embedding_columns(emb)["image"] if emb is not None else None
    sem = configs.get("semantic", {}) if "semantic" in methods else {}
    if sem and sem["confirm_cosine"] < sem["threshold"]:  # weaker links: the join holds only those with near hashes
        h, h_flip, hashed = _hashes(tbl)
        variants = np.stack([h, h_flip], 1) if sem["flips"] else h[:, None]  # a superset of _method_links' check
        joins.every[image] = ([(variants, hashed, sem["confirm_distance"], sem["confirm_cosine"])], sem["threshold"])
    if clustered:  # their candidates: each row's best few with near hashes; semantic's (confirm cosine up, `every`)
        joins.per_row[image] = CLUSTERED_PER_ROW
        joins.all_from[image] = sem["confirm_cosine"] if sem else float("inf")
        for m in clustered:  # asked inside the join: only the pairs with near hashes are held
            joins.near.setdefault(image, []).append((*joins.hash_variants(m, tbl, configs[m]),
                                                     configs[m]["max_distance"], configs[m]["cosine"]))
    groups: dict[str, _Groups] = {}  # method -> its groups (stored ones merged with this run's links)
    written: dict[str, dict[str, _Groups]] = {}  # method computed now -> its group columns' groups
    evidence: dict[str, Evidence] = {}  # method -> the links this run found
    replaced: set[str] = set()  # methods whose evidence this run replaces (computed from scratch)
    for m in present:
        if m not in methods:  # its settings are those its stored groups were made with, not this run's arguments
            configs[m] = _stored_config(ds, m)
        mr = MethodReport(method=m, config=configs.get(m, {}))
        t0 = time.perf_counter()
        if m not in methods:  # computed by an earlier run: take its groups as they are
            g = _group(~stored[m].missing, [(stored[m].rows, stored[m].kept)], ranks)
        elif m == "verify":
            g, evidence[m] = _verify_groups(lake, joins, emb, configs[m], stored[m], groups, mr, workers, progress, ranks)
        else:
            g, evidence[m] = _method_groups(m, ds, tbl, n, emb, configs[m], stored[m], mr, progress, ranks,
                                            engine=engine, storage_options=lake.storage_options, joins=joins,
                                            usable=usable)
        groups[m] = g
        if m in methods:
            written[m] = {group_columns(m)[0]: g}
            if m == "exact":  # identical (image, caption): a finer split of the same groups
                written[m]["dup_pair_group"] = _pair_groups(ds, tbl, g, ranks)
        mr.rows = int(g.eligible.sum())
        if m in methods and (m in redo or m in ("exact", "phash", "copy", "minhash") or mr.new_rows == mr.rows):
            replaced.add(m)  # every link of the method was found in this run
        mr.groups, mr.duplicates = g.counts()
        mr.seconds = time.perf_counter() - t0
        report.methods.append(mr)

    # The final decision: groups of the keep_from methods joined, best member kept.
    use = [m for m in keep_from if m in groups]
    report.keep_from = use  # the methods whose groups the decision joined (it named the defaults not run too)
    final = _group(None, [(groups[m].rows, groups[m].best) for m in use], ranks)
    dropped = final.rows != final.best
    heads, size = np.unique(final.best, return_counts=True)
    final_size = size[np.searchsorted(heads, final.best)].astype(np.int32)
    ids = _Ids(ds, np.concatenate([final.rows, *(g.best for w in written.values() for g in w.values()),
                                   *(r for e in evidence.values() for r in (e.i, e.j, *(e.unlinked or ())))]))
    linked_pairs, same_links, undoing = (_merged_evidence(lake, ds, ids, evidence, replaced, ds.version)
                                         if evidence or replaced else (None, True, None))
    inliers = _most_inliers(linked_pairs) if "verify" in use else {}
    reason = _reasons(ids, final.rows[dropped], final.best[dropped], use, groups, inliers)
    rank_by = embedding_columns(emb)["score"] if emb else None
    final_prov = columns.provenance(
        "dedup", {"keep_from": use, "rule": "score desc, pixels desc, ingested_at, id", "rank_by": rank_by,
                  "methods": {m: configs.get(m) for m in use}},
        # (the score it ranks members by is read too: an embedding computed again makes it stale)
        [c for m in use for c in group_columns(m)[:1]] + ([rank_by] if rank_by in ds.schema.names else []), lake.version)
    final_fields = [pa.field(c, t) for c, t in DECISION_COLUMNS.items()]
    columns.declare_view(lake, final_fields, final_prov)  # derived from the group columns: recomputed each run
    # The evidence is written, as a new version of its table, and dup_group's metadata names that
    # version (_pin_evidence) before the decision it explains is committed: what reads the evidence
    # of a lake version reads that one's (after a restore too). A run killed after the pin and
    # before its decisions leaves links of rows not grouped yet; the re-run finds them again, since
    # those rows are still new to it (pinned after the decisions, a kill lost them for good).
    # Links that equal the pinned ones (a re-run that changes nothing) write nothing, unless the decision
    # names no evidence yet (a first run finding no links): a version's decision always names its own.
    # Stored links this run undoes stay in the evidence until the groups without them are committed:
    # a re-run after a kill in between still sees them (and undoes them again).
    if linked_pairs is not None and not same_links:
        written_pairs, undo = undoing if undoing is not None else (linked_pairs, None)
        report.versions.append(_pin_evidence(lake, lake.write_side(EVIDENCE_TABLE, written_pairs, mode="overwrite"), undo))
    elif evidence_pin(ds.schema) is None:
        none_yet = linked_pairs if linked_pairs is not None else EVIDENCE_SCHEMA.empty_table()
        report.versions.append(_pin_evidence(lake, lake.write_side(EVIDENCE_TABLE, none_yet, mode="overwrite")))
    best_ids = {c: ids.of(g.best) for w in written.values() for c, g in w.items()}
    final_ids, reason_at = ids.of(final.best), np.cumsum(dropped) - 1

    def method_columns(m: str) -> "Callable[[int, pa.Array], dict[str, pa.Array]]":
        def make(lo: int, own: pa.Array) -> dict[str, pa.Array]:
            out = {}
            for c, g in written[m].items():
                a, at = g.span(lo, lo + len(own))
                out[c] = _placed(own, g.eligible[lo: lo + len(own)], at, best_ids[c].slice(a, len(at)))
            return out
        return make

    def final_columns(lo: int, own: pa.Array) -> dict[str, pa.Array]:
        a, at = final.span(lo, lo + len(own))
        m = len(own)
        gone = dropped[a: a + len(at)]
        keep = np.ones(m, bool)
        keep[at[gone]] = False
        reasons = reason.take(pa.array(reason_at[a: a + len(at)][gone], pa.int64()))
        return {"dup_group": _placed(pa.nulls(m, pa.string()), None, at, final_ids.slice(a, len(at))),
                "dup_group_size": _placed(pa.array(np.ones(m, np.int32)), None, at, pa.array(final_size[a: a + len(at)])),
                "dup_keep": pa.array(keep),
                "dup_reason": _placed(pa.nulls(m, pa.string()), None, at[gone], reasons)}

    families = [_Family(list(group_columns(m)), method_columns(m), _sources(m, emb)) for m in written]
    families.append(_Family(list(FINAL_COLUMNS), final_columns, final_prov["source_columns"]))
    final_old = all(c in ds.schema.names for c in FINAL_COLUMNS)  # else: every fragment's final columns are new
    for family, (fw, version) in zip(families, _write(lake, ds, families, final_old)):
        report.fragments_written += fw
        report.versions += [version] if version is not None else []
        for mr in report.methods:
            if family.names[0] == group_columns(mr.method)[0]:
                mr.fragments_written = fw
    if undoing is not None and not same_links:  # the groups without the undone links committed: they go
        # (a kill before this pin: the next run drops them, :func:`_settled_undo`)
        report.versions.append(_pin_evidence(lake, lake.write_side(EVIDENCE_TABLE, linked_pairs, mode="overwrite")))
    report.dropped = int(dropped.sum())
    report.kept = n - report.dropped
    report.seconds = time.perf_counter() - t_start
    return report


def _not_embedded(lake: "Store", ds: Any, valid: dict[str, np.ndarray], methods: Sequence[str], clustered: Sequence[str],
                  emb: str, emb_prov: dict[str, Any]) -> list[str]:
    """A warning per embedding column the run reads with rows (not ingest errors) that have no vector
    yet: the searches that read it could not see them (they were left out of those groups without a
    word, and dup_keep was decided all the same). Names the embed command that fills them."""
    from lakecurate.graph import embed_command

    usable = ~_equals(ds, "ingest_status", "error")
    error = embedding_columns(emb).get("error")
    if error in ds.schema.names:  # rows the embed tried and could not embed (its error says why): not "yet"
        usable &= _is_null(ds, error)  # (embed, pasted, computed nothing, and the warning came back)
    out = []
    for col, ok in valid.items():
        missing = int((~ok & usable).sum())
        if not missing:
            continue
        image = col == embedding_columns(emb)["image"]
        readers = ([m for m in ("semantic", "verify") if m in methods] + [f"{m} (--{m}-search clusters)" for m in clustered]
                   if image else ["caption"])
        out.append(f"{missing} rows have no {col} vector (not embedded yet): {', '.join(readers)} could not see them; "
                   f"embed them: {embed_command(lake, emb, emb_prov)}, then run this dedup again")
    return out


# Verify settings no option gives, whose default changed: stored groups made with an older one keep
# theirs until --recompute. Each: its keys, how groups were made with the stored values (absent keys:
# before the setting existed), and what this lakecurate does (``now``: this run's config).
_OLDER: tuple[tuple[tuple[str, ...], Callable[[dict[str, Any]], str], Callable[[dict[str, Any]], str]], ...] = (
    (("turn_tolerance",),
     lambda s: f"accepting copies turned up to {s['turn_tolerance']:g} degrees off a quarter turn",
     lambda now: f"its default is {now['turn_tolerance']:g} degrees: copies turned a few degrees, as a scan or a "
                 "straightened photo is"),
    (("container_regions", "disjoint"),
     lambda s: "before a row holding several pictures (a collage) was kept from joining them"
     if "container_regions" not in s else "with another rule for rows holding several pictures",
     lambda now: "a collage does not put the different photos in it in one group"),
    (("perspective", "stretch"),
     lambda s: "checking a similarity transform only" if "perspective" not in s
     else f"accepting perspective up to {s['perspective']:g}",
     lambda now: "a copy photographed at an angle, a keystone, is checked under a homography too"),
)
_OLDER_KEYS = {k for keys, _, _ in _OLDER for k in keys}


def _kept_older(lake: "Store", ds: Any, config: dict[str, Any]) -> list[str]:
    """Verify groups made with older settings no option gives (:data:`_OLDER`: an older
    lakecurate's 10-degree turn tolerance, before the collage rule, before the homography check)
    and otherwise this run's config: this run keeps theirs (``config`` updated), so new rows are
    verified as the stored ones were and a plain dedup goes on as before (refused "made with another
    config" it named no setting to give); each warning says how they were made, what this
    lakecurate does, and the command that regroups every row by it."""
    col = group_columns("verify")[0]
    if col not in ds.schema.names:
        return []
    stored = _stored_config(ds, "verify")
    if not isinstance(stored.get("turn_tolerance"), (int, float)) or \
            {k: v for k, v in stored.items() if k not in _OLDER_KEYS} != {k: v for k, v in config.items() if k not in _OLDER_KEYS}:
        return []
    fix = f"{lakecurate_on(lake)} dedup {lake.shell} --method verify --recompute"
    now, notes = dict(config), []
    for keys, made, does in _OLDER:
        if all(stored.get(k) == config.get(k) for k in keys):
            continue
        for k in keys:  # (absent: made before the setting, which is then not applied)
            config.pop(k, None)
            if k in stored:
                config[k] = stored[k]
        notes.append(f"verify groups of lake '{lake.uri}' were made {made(stored)}: new rows are verified as the rest "
                     f"were; to verify every row as this lakecurate does ({does(now)}): {fix}")
    return notes


def _stored_config(ds: Any, method: str) -> dict[str, Any]:
    """The config a method's stored groups were made with (their provenance, less the method's name):
    what the decision records for a method this run does not compute (this run's arguments, e.g.
    ``flips``, were never applied to those groups)."""
    prov = columns.field_provenance(ds.schema.field(group_columns(method)[0]), strict=False) or {}
    return {k: v for k, v in (prov.get("config") or {}).items() if k != "method"}


@dataclass
class _Family:
    """Columns dedup writes in one commit: their names, ``make(first row, the fragment's ids)``
    giving a fragment's new values, and the source columns their provenance names."""

    names: list[str]
    make: Callable[[int, pa.Array], dict[str, pa.Array]]
    sources: list[str]


def _write(lake: "Store", ds: Any, families: list[_Family], final_old: bool) -> list[tuple[int, int | None]]:
    """Write each family of columns for the fragments where a value changed, a fragment at a time
    in one pass over the ids; each family in its own commit, in order. Returns (fragments
    written, version) a family."""
    changed = [columns.ChangedFragments(lake, f.names) for f in families]
    old = [c for f in families for c in f.names if c in ds.schema.names and (final_old or c not in FINAL_COLUMNS)]
    lo = 0
    for frag in ds.get_fragments():
        t = frag.to_table(columns=["id", *old], with_row_address=True)
        if not t.num_rows:
            continue
        own = t.column("id").combine_chunks().cast(pa.string())
        for f, ch in zip(families, changed):
            ch.add(t.select(["_rowaddr", *(c for c in f.names if c in old)]), f.make(lo, own))
        lo += t.num_rows
    done: list[tuple[int, int | None]] = []
    for f, ch in zip(families, changed):  # the final family last: it read the groups committed before it
        done.append(commit_decisions(lake, ch, sources=f.sources, read_version=ds.version, own=[v for _, v in done]))
    return done


# box_a/box_b: a verify link's inlier box in a's and b's image (x0, y0, x1, y1 in fractions of it,
# lakecurate.verify.Match.box_a), so that a later incremental run sees which region of a collage a
# stored link holds (one_region_links); null for other methods, and in tables written before them
# (read back as null: unknown, never split).
BOX = pa.list_(pa.float32(), 4)
EVIDENCE_SCHEMA = pa.schema([pa.field("a", pa.string()), pa.field("b", pa.string()), pa.field("method", pa.string()),
                             pa.field("score", pa.float64()), pa.field("detail", pa.string()),
                             pa.field("version", pa.int64()), pa.field("box_a", BOX), pa.field("box_b", BOX)])


def _pin_evidence(lake: "Store", version: int, undo: list[list[str]] | None = None) -> int:
    """Name evidence ``version`` in ``dup_group``'s metadata. ``undo``: the links [a, b, method] it
    still holds that the run writing it undoes once its groups are committed."""
    pin = {EVIDENCE_KEY: json.dumps({"branch": lake.branch, "version": int(version), **({"undo": undo} if undo else {})})}

    def commit() -> int:
        ds = lake.dataset()
        ds.update_field_metadata({"dup_group": pin})
        return ds.version

    return retry_on_conflict(commit)


class EvidenceGone(LakeError):
    """The evidence a lake version's decision names was removed (by a cleanup that did not keep it:
    an older lakecurate's, or another tool's; lakecurate's keeps what every version left names)."""


def evidence_dataset(lake: "Store", ds: Any, *, gone_ok: bool = True) -> Any:
    """The ``dup_pairs`` table that explains the decision of ``ds`` (a version of the lake), or
    None: the version its dedup run wrote, pinned in ``dup_group``'s metadata, so that after a
    restore (or on a branch made from main) the links are those of the decision held, not of a later
    run. Before any dedup there is none. A lake whose decision has no pin (an older lakecurate made
    it): the latest of this branch's table. Where the pinned version is gone (a cleanup of an older
    lakecurate removed it; cleanup keeps it now): with ``gone_ok`` the latest (what a dedup run
    merges into), else an :class:`EvidenceGone` saying so (another run's links are not its)."""
    if "dup_group" not in ds.schema.names:
        return None
    pin = evidence_pin(ds.schema)
    if pin is not None:
        branch, version = pin
        pinned = lake.side_dataset(EVIDENCE_TABLE, branch=branch, version=version)
        if pinned is not None:
            return pinned
        if not gone_ok:
            table = lake.side_uri(EVIDENCE_TABLE, branch=branch).rstrip("/").rsplit("/", 1)[-1].removesuffix(".lance")
            raise EvidenceGone(f"the duplicate links that explain the decision of lake '{lake.uri}' version {ds.version} "
                               f"({table} version {version}) were removed by a cleanup that did not keep them (an older "
                               "lakecurate's, or another tool's); another run's links are not its. The latest version's "
                               f"links: dup_pairs() without a version (to rebuild them: {lakecurate_on(lake)} dedup "
                               f"{lake.shell} --method ... --recompute)")
    return lake.side_dataset(EVIDENCE_TABLE)


def _read_evidence(lake: "Store", ds: Any) -> pa.Table:
    """The evidence table's rows, or a LakeError naming it and the way to rebuild it (its files
    damaged: every later dedup was a pyarrow traceback)."""
    try:
        return _evidence_columns(ds.to_table())
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise LakeError(f"dedup's evidence table {ds.uri} (version {ds.version}) cannot be read ({clean_message(exc)}); "
                        f"it holds only the links that explain the groups: delete that folder, then rebuild it with "
                        f"{lakecurate_on(lake)} dedup {lake.shell} --method ... --recompute (every method of the lake)") from None


def _held_links(ds: Any, tbl: pa.Table) -> pa.Table:
    """``tbl`` (links) less those naming a row that ``ds`` (a lake version) does not hold, where its
    decision pins no evidence (an older lakecurate's: :func:`evidence_dataset` reads the latest links,
    which may be a later run's, after a restore too). A pinned decision's links are its own: as read."""
    if evidence_pin(ds.schema) is not None or not tbl.num_rows:
        return tbl
    named = pc.unique(pa.concat_arrays([tbl.column(c).combine_chunks() for c in ("a", "b")]))
    held = _rows_of(ds, named) >= 0
    return tbl.filter(pc.and_(pc.is_in(tbl.column("a"), named.filter(held)), pc.is_in(tbl.column("b"), named.filter(held))))


def _evidence_columns(tbl: pa.Table) -> pa.Table:
    """``tbl`` (rows of an evidence table) with :data:`EVIDENCE_SCHEMA`'s columns: those a table
    written before them lacks (the boxes) are null."""
    for f in EVIDENCE_SCHEMA:
        if f.name not in tbl.column_names:
            tbl = tbl.append_column(f.name, pa.nulls(tbl.num_rows, f.type))
    return tbl.select(EVIDENCE_SCHEMA.names).cast(EVIDENCE_SCHEMA)


def _same_links(new: pa.Table, old: pa.Table) -> bool:
    """Whether two evidence tables hold the same links (the version a link was found at aside)."""
    if old.num_rows != new.num_rows:
        return False
    cols, order = ["a", "b", "method", "score", "detail", "box_a", "box_b"], [("a", "ascending"), ("b", "ascending"),
                                                                             ("method", "ascending")]
    return old.select(cols).sort_by(order).equals(new.select(cols).sort_by(order))


def restore_evidence(lake: "Store") -> int | None:
    """After a restore: make the latest version of this branch's ``dup_pairs`` the one the restored
    decision names, for what opens the table itself (LanceDB). Returns its new version, or None
    when it already was (or the decision has no evidence)."""
    ds = lake.dataset()
    held, latest = evidence_dataset(lake, ds), lake.side_dataset(EVIDENCE_TABLE)
    if "dup_group" not in ds.schema.names and latest is not None and latest.count_rows():
        return lake.write_side(EVIDENCE_TABLE, EVIDENCE_SCHEMA.empty_table(), mode="overwrite")  # before any dedup
    if held is None or (latest is not None and held.uri == latest.uri and held.version == latest.version):
        return None
    return lake.write_side(EVIDENCE_TABLE, _evidence_columns(held.to_table()), mode="overwrite")


def _merged_evidence(lake: "Store", ds: Any, ids: _Ids, evidence: dict[str, Evidence], replaced: set[str],
                     version: int) -> tuple[pa.Table, bool, pa.Table | None]:
    """The ``dup_pairs`` table after this run: the stored links of methods this run did not
    recompute (those that explain the decision it read: :func:`evidence_dataset`), plus this run's
    (a pair found again keeps this run's row); whether those are the stored links (the version
    a link was found at aside): then there is nothing to write; and, where this run undoes stored
    links, the table that still holds them (written before the groups without them: None if none)."""
    parts, unlinked = [], []
    for m, (i, j, score, detail, boxes, undid) in evidence.items():
        if undid is not None and len(undid[0]):  # stored links this run undid (verify: a collage's other region)
            ui, uj = ids.of(undid[0]).cast(pa.string()), ids.of(undid[1]).cast(pa.string())
            unlinked.append(pc.binary_join_element_wise(pc.min_element_wise(ui, uj), pc.max_element_wise(ui, uj),
                                                        pa.array([m] * len(ui), pa.string()), "\x00"))
        a, b = ids.of(i), ids.of(j)
        swap = pc.greater(a, b)
        lo, hi = pc.if_else(swap, b, a), pc.if_else(swap, a, b)
        box_i, box_j = (pa.array(list(k), BOX) for k in boxes) if boxes else (pa.nulls(len(lo), BOX),) * 2
        parts.append(pa.table({"a": lo.cast(pa.string()), "b": hi.cast(pa.string()),
                               "method": pa.array([m] * len(lo), pa.string()),
                               "score": pa.array(score, pa.float64(), mask=np.isnan(score)),
                               "detail": pa.array(detail, pa.string()),
                               "version": pa.array(np.full(len(lo), version), pa.int64()),
                               # (each box stays with its row's id when the ids are put in order)
                               "box_a": pc.if_else(swap, box_j, box_i), "box_b": pc.if_else(swap, box_i, box_j)},
                              schema=EVIDENCE_SCHEMA))
    new = pa.concat_tables(parts) if parts else EVIDENCE_SCHEMA.empty_table()
    old_ds = evidence_dataset(lake, ds)
    if old_ds is None:
        return new, new.num_rows == 0, None
    old = _held_links(ds, _read_evidence(lake, old_ds))
    # (a method whose groups were dropped since, lakecurate drop or another writer: its links explain nothing)
    gone = {m for m in METHODS if m not in evidence and group_columns(m)[0] not in ds.schema.names}
    drop = pc.is_in(old.column("method"), pa.array(sorted(replaced | gone), pa.string()))
    fresh = pc.binary_join_element_wise(new.column("a"), new.column("b"), new.column("method"), "\x00")
    key = pc.binary_join_element_wise(old.column("a"), old.column("b"), old.column("method"), "\x00")
    # (again: links found again, of a method replaced, or undone by a killed run whose groups committed)
    again = pc.or_(drop, pc.is_in(key, pa.chunked_array([*fresh.chunks, *_settled_undo(ds)], pa.string())))
    drop = pc.or_(again, pc.is_in(key, pa.chunked_array(unlinked, pa.string())))
    merged = pa.concat_tables([old.filter(pc.invert(drop)), new])
    undone = [k for u in unlinked for k in u.to_pylist()]
    undoing = None if not undone else (pa.concat_tables([old.filter(pc.invert(again)), new]),
                                       [k.split("\x00") for k in undone])
    return merged, _same_links(merged, old), undoing


def _settled_undo(ds: Any) -> list[pa.Array]:
    """The links (keys a, b, method) that the evidence ``ds`` pins still holds for a run that undid
    them and was killed after committing the groups without them (the rows' groups are apart
    now): they go. Where the groups were not committed, they stay for the re-run to undo again."""
    import json

    raw = (ds.schema.field("dup_group").metadata or {}).get(EVIDENCE_KEY.encode()) if "dup_group" in ds.schema.names else None
    undo = (json.loads(raw) or {}).get("undo") if raw else None
    if not undo:
        return []
    settled = []
    for method in sorted({m for _, _, m in undo}):
        links = [(a, b) for a, b, m in undo if m == method]
        col = group_columns(method)[0]
        group: dict[str, Any] = {}
        if col in ds.schema.names:
            tbl = ds.to_table(columns=["id", col], filter=pc.field("id").isin(sorted({x for k in links for x in k})))
            for i, g in zip(tbl.column("id").to_pylist()[::-1], tbl.column(col).to_pylist()[::-1]):
                group[i] = g  # (the first row holding an id)
        settled += ["\x00".join((a, b, method)) for a, b in links
                    if group.get(a) is None or group.get(a) != group.get(b)]
    return [pa.array(settled, pa.string())] if settled else []


def dup_pairs(lake: "Store", ids: Sequence[str] | None = None, version: int | str | None = None) -> "pd.DataFrame":
    """Why rows are one group: every link the dedup runs found (``a`` < ``b`` ids, ``method``,
    ``score``: differing bits for phash/copy, cosine for semantic/caption, inliers for verify, null
    for exact; ``detail`` in words; ``version``: the lake version the run read; ``box_a``, ``box_b``:
    a verify link's inlier box in a's and b's image, else null), or only the links
    touching ``ids``; those that explain the decision of the lake's ``version`` (default: the
    latest). Empty (same columns) before the first dedup."""
    ids = texts("ids", ids, none_ok=True)  # one id, not its letters; 5 was a TypeError or no links at all
    decision = lake.dataset(version)
    ds = evidence_dataset(lake, decision, gone_ok=False)
    if ds is None:
        return EVIDENCE_SCHEMA.empty_table().to_pandas()
    tbl = _held_links(decision, _read_evidence(lake, ds))
    if ids is not None:
        want = pa.array(ids, pa.string())
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
    each method (phash and copy in clusters, and semantic); joins of new rows only are not kept.
    ``per_row`` (by column): the full join keeps each row's best few pairs of a join block whose
    hashes are near by one of the ``near`` searches (``ranked``, what the hash searches in
    clusters take: :class:`~lakecurate.neardup.HashFilter`, asked inside the join so that only
    those pairs are held) and every pair from ``all_from`` up (what semantic takes). ``span`` (by
    column): the cosine from which a method groups every pair (semantic's threshold, caption's): the
    joins return the pairs from there up as a spanning forest (``semantic_pairs(span=)``), so a
    clique of s copies is s - 1 links, not s (s - 1) / 2. ``every`` (by column: hash searches,
    and the cosine from which every pair is kept): semantic's weaker links, from its confirm
    cosine to its threshold, count only where the hashes are near; a join of every pair from the
    confirm cosine asks that inside each block (:meth:`HashFilter.kept`), so a clump of rows all
    weakly alike (a coarse encoder's dense region) is not held whole before the check."""

    def __init__(self, ds: Any, storage_options: dict | None, progress: bool | None, engine: str,
                 lake: "Store | None" = None, valid: dict[str, np.ndarray] | None = None) -> None:
        self.ds, self.storage_options, self.progress, self.engine = ds, storage_options, progress, engine
        self.lake = lake  # (given: a vector with NaN or infinite values is refused, naming its rows)
        self.floor: dict[str, float] = {}
        self.per_row: dict[str, int] = {}
        self.all_from: dict[str, float] = {}
        self.span: dict[str, float] = {}
        self.near: dict[str, list[tuple[np.ndarray, np.ndarray, int, float]]] = {}
        self.every: dict[str, tuple[list[tuple[np.ndarray, np.ndarray, int, float]], float]] = {}
        self.hashes: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.done: dict[str, tuple[np.ndarray, float, Pairs]] = {}
        self._valid: dict[str, np.ndarray] = dict(valid or {})  # (``valid``: found by the caller's pass already)

    def valid(self, col: str) -> np.ndarray:
        """Which rows have a vector in ``col`` (a streamed pass over the column, once per run)."""
        if col not in self._valid:
            self._valid[col] = (column_valid(self.ds, col) if self.lake is None
                                else embedded_rows(self.lake, self.ds, col, then="dedup"))
        return self._valid[col]

    def hash_variants(self, method: str, tbl: pa.Table, config: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """(a row's hashes, N x variants uint64; which rows have them, and not too flat to compare:
        :data:`FLAT_HASH_BITS`) for phash (with its mirror's when ``flips``) or copy (8 a row), read
        from ``tbl`` once a run."""
        if method not in self.hashes:
            if method == "phash":
                h, h_flip, eligible = _hashes(tbl)
                self.hashes[method] = (np.stack([h, h_flip], 1) if config["flips"] else h[:, None]), eligible
            else:
                col = tbl.column("copy_hashes")
                eligible = ~np.asarray(col.is_null().to_numpy(zero_copy_only=False), bool)
                flat = col.combine_chunks()  # a fixed-size list stores 8 values per slot, null slots too
                values = np.asarray(flat.values.fill_null(0).to_numpy(), np.uint64)
                values = values[flat.offset * 8:(flat.offset + len(flat)) * 8].reshape(-1, 8)
                self.hashes[method] = values, eligible & _detailed(values[:, 0])
        return self.hashes[method]

    def pairs(self, col: str, rows: np.ndarray, cosine: float, new: np.ndarray | None = None, *,
              ranked: bool = False, joined: tuple[np.ndarray, np.ndarray] | None = None) -> Pairs:
        """(i, j, cosine) as dataset rows: pairs of ``rows`` with cosine >= ``cosine`` (with ``new``,
        those touching a new row; ``ranked``: only each row's ``per_row`` best, in a full join;
        ``joined``: dataset rows in one stored group already, the start of a ``span``'s forest)."""
        if new is None and col in self.done and np.array_equal(self.done[col][0], rows) and self.done[col][1] <= cosine:
            i, j, cos, best = self.done[col][2]
        else:
            low = min(cosine, self.floor.get(col, cosine)) if new is None else cosine
            src = LanceVectors(self.ds, col, rows, storage_options=self.storage_options)
            cap = {"per_row": self.per_row[col], "all_from": self.all_from[col]} if new is None and col in self.per_row else {}
            every, above = self.every.get(col, ([], float("inf")))
            if (cap and self.near.get(col)) or every:
                cap["near"] = HashFilter(self.near.get(col, []) if cap else [], rows, every=every, above=above)
            if joined is not None and new is not None and col in self.span:  # as positions in rows
                a, b = (np.searchsorted(rows, np.asarray(r, np.int64)) for r in joined)
                inside = (a < len(rows)) & (b < len(rows))
                inside[inside] &= (rows[a[inside]] == joined[0][inside]) & (rows[b[inside]] == joined[1][inside])
                cap["joined"] = (a[inside], b[inside])
            i, j, cos, *best = semantic_pairs(src, low, new=new, progress=bool(self.progress), engine=self.engine,
                                              span=self.span.get(col), **cap)
            i, j, best = rows[i], rows[j], best[0] if best else np.ones(len(i), bool)
            if new is None:
                self.done[col] = (rows, low, (i, j, cos, best))
        if not ranked and new is None and self.near.get(col) and cosine < self.all_from[col]:
            raise RuntimeError(f"the join over {col} kept only pairs with near hashes below {self.all_from[col]}; "
                               f"every pair from {cosine} was asked")  # a bug of this module, not of the input
        keep = (cos >= cosine) & (best if ranked else True)
        return i[keep], j[keep], cos[keep]


def _method_groups(method: str, ds: Any, tbl: pa.Table, n: int, emb: str | None, config: dict[str, Any], stored: _Stored,
                   mr: MethodReport, progress: bool | None, ranks: _Ranks, *, engine: str = "local",
                   storage_options: dict | None = None, joins: "_Joins | None" = None,
                   usable: np.ndarray | None = None) -> tuple[_Groups, Evidence]:
    """One method's groups (stored groups merged with this run's links), and the links, among the
    ``usable`` rows (not ingest errors: a row whose image ingest refused, a decompression bomb say,
    neither joins a group nor links two others, though its bytes may hash like a good copy's)."""
    eligible, pairs, found = _method_links(method, ds, tbl, n, emb, config, stored, mr, progress,
                                           engine=engine, storage_options=storage_options, joins=joins, usable=usable)
    if usable is not None:
        eligible = eligible & usable
        kept = []
        for i, j in pairs:
            i, j = np.asarray(i, np.int64), np.asarray(j, np.int64)
            both = usable[i] & usable[j]
            kept.append((i[both], j[both]))
        pairs = kept
        a, b, score, detail = found[:4]
        both = usable[a] & usable[b]
        found = Evidence(a[both], b[both], score[both], [d for d, k in zip(detail, both) if k])
    mr.pairs = len(found[0])  # row pairs this run linked (not hash variants' matches)
    return _group(eligible, pairs, ranks), found


def _method_links(method: str, ds: Any, tbl: pa.Table, n: int, emb: str | None, config: dict[str, Any], stored: _Stored,
                  mr: MethodReport, progress: bool | None, *, engine: str = "local",
                  storage_options: dict | None = None, joins: "_Joins | None" = None, usable: np.ndarray | None = None
                  ) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]], Evidence]:
    """One method's eligible rows (those with its signal, among the ``usable``), its pairs (stored
    groups' and this run's links) and this run's links as evidence."""
    def among(eligible: np.ndarray) -> np.ndarray:
        return eligible if usable is None else eligible & usable
    joins = joins or _Joins(ds, storage_options, progress, engine)
    if method == "exact":
        eligible, i, j = _same_value_pairs(_Values(ds, tbl, "content_hash"), n)  # always from scratch: nothing to merge
        eligible = among(eligible)
        mr.new_rows = int((eligible & stored.missing).sum())
        mr.pairs = len(i)
        return eligible, [(i, j)], _links(i, j, np.full(len(i), np.nan), "same image bytes")
    if method == "phash":
        variants, eligible = joins.hash_variants(method, tbl, config)  # the hash, and its mirror's with flips
        eligible = among(eligible)
        mr.new_rows = int((eligible & stored.missing).sum())
        rows = np.flatnonzero(eligible)
        if config.get("search") == "clusters":
            i, j, d = _clustered_hashes(config, variants, eligible, joins)
        else:
            values = variants[rows].T.ravel()  # the rows' hashes, then (with flips) their mirrors'
            # Mirror hashes against every hash find mirrored copies; i % n maps them back to rows.
            i, j, d = hamming_pairs(values, config["max_distance"], identical="first")
            i, j = rows[i % len(rows)], rows[j % len(rows)]
        mr.pairs = int((i != j).sum())
        return eligible, [(i, j)], _links(i, j, d, "{:.0f} of 64 bits differ")
    if method == "minhash":  # from scratch each run: a new caption can lead a better-centred group
        texts = LanceTexts(ds, "caption", storage_options=joins.storage_options)  # streamed, never whole
        eligible = among(np.array([bool(c and c.strip()) for _, batch in texts.batches(_BATCH) for c in batch], bool))
        mr.new_rows = int((eligible & stored.missing).sum())
        i, j, jac = caption_pairs(texts, config["threshold"], progress=progress, engine=joins.engine)
        mr.pairs = len(i)
        return eligible, [(i, j)], _links(i, j, jac, "Jaccard {:.2f} of caption 5-grams", smaller_is_closer=False)
    if method == "copy":
        hashes, eligible = joins.hash_variants(method, tbl, config)
        eligible = among(eligible)
        mr.new_rows = int((eligible & stored.missing).sum())
        rows = np.flatnonzero(eligible)
        if config.get("search") == "clusters":
            i, j, d = _clustered_hashes(config, hashes, eligible, joins)
        else:  # every variant of every row in one Hamming search; v // 8 maps a variant back to its row
            i, j, d = hamming_pairs(hashes[rows].reshape(-1), config["max_distance"], identical="first")
            i, j = rows[i // 8], rows[j // 8]
        keep = i != j
        mr.pairs = int(keep.sum())
        return eligible, [(i[keep], j[keep])], _links(i, j, d, "{:.0f} of 64 bits differ (turned/mirrored/surround-trimmed hashes)")
    col = embedding_columns(emb)["image"] if method == "semantic" else embedding_columns(emb)["text"]
    eligible = among(joins.valid(col))  # the vectors themselves are streamed, never read whole
    new, rows, pairs = _stored(eligible, stored, mr)
    found = _no_links()
    if mr.new_rows:
        only_new = None if mr.new_rows == len(rows) else new[rows]
        low = config.get("confirm_cosine", config["threshold"])
        i, j, cos = joins.pairs(col, rows, low, only_new, joined=pairs[0])
        strong = cos >= config["threshold"]
        if low < config["threshold"]:  # weaker links count only when the images also look alike
            h, h_flip, hashed = _hashes(tbl)
            dist = np.bitwise_count(h[i] ^ h[j])
            if config.get("flips"):
                dist = np.minimum(dist, np.bitwise_count(h[i] ^ h_flip[j]))
            strong |= hashed[i] & hashed[j] & (dist <= config["confirm_distance"])
        pairs.append((i[strong], j[strong]))
        mr.pairs = int(strong.sum())
        # (a float16 dot product of two unit vectors can come out a little above 1: "cosine 1.000034")
        found = _links(i[strong], j[strong], np.minimum(cos[strong], 1.0), "cosine {:.3f}", smaller_is_closer=False)
    return eligible, pairs, found


# dedup's similarity options: (lowest value, None allowed: a default per model then applies). Cosines
# from -1, minhash's Jaccard from 0.01; all up to 1 (the CLI's ranges: a Python caller's or a
# pipeline's 85, a percent, linked nothing).
THRESHOLDS = {"phash_cosine": (-1.0, True), "copy_cosine": (-1.0, True), "semantic_threshold": (-1.0, True),
              "confirm_cosine": (-1.0, True), "caption_threshold": (-1.0, False), "verify_cosine": (-1.0, True),
              "minhash_threshold": (0.01, False)}


def check_thresholds(values: dict[str, Any]) -> dict[str, float | None]:
    """The similarity options among ``values`` (:data:`THRESHOLDS`), checked, in their order there;
    a ``confirm_cosine`` above the ``semantic_threshold`` is refused. dedup and a pipeline's
    [dedup] step (before its first step) check them here."""
    out = {k: check_cosine(k, values[k], low=low, none_ok=none_ok)
           for k, (low, none_ok) in THRESHOLDS.items() if k in values}
    semantic, confirm = out.get("semantic_threshold"), out.get("confirm_cosine")
    if semantic is not None and confirm is not None and confirm > semantic:
        raise LakeError(f"confirm_cosine {confirm} is above semantic_threshold {semantic}: the confirmed links are "
                        "the weaker ones (cosine >= confirm_cosine with near hashes); lower it")
    return out


def _check_stored_current(lake: "Store", ds: Any, methods: Sequence[str], keep_from: Sequence[str],
                          progress: bool | None = None) -> Any:
    """The decision joins the stored groups of the ``keep_from`` methods this run does not compute:
    refused, before any write, when they are stale (rows added since, their embedding made again),
    since dup_keep would be decided from groups that never saw the rows it decides. While another
    dedup is deciding them now (:func:`lakecurate.columns.stage_running`), waited for (a bar says
    so): it refused, "stopped before writing its decision (killed?)". Returns the version to go on
    from (the latest, after a wait)."""
    from lakecurate.graph import states

    others = [m for m in keep_from if m not in methods and group_columns(m)[0] in ds.schema.names]
    if not others:
        return ds
    # (their own state: "behind" too, as when new rows have no hashes yet, so no group of theirs)
    wanted = {group_columns(m)[0] for m in others}
    bad = [s for s in states(lake, ds) if wanted & set(s.node.columns) and s.state != "current"]
    if bad and (busy := columns.stage_running(lake, "dedup")):
        with progress_bar(desc=f"waiting for the dedup of another run ({', '.join(busy)})", unit="check",
                          progress=progress) as bar:
            while bad and columns.stage_running(lake, "dedup"):
                time.sleep(WAIT_POLL)
                bar.update(1)
                ds = lake.dataset()
                bad = [s for s in states(lake, ds) if wanted & set(s.node.columns) and s.state != "current"]
    if not bad:
        return ds
    first = bad[0]
    stale = [m for m in others if any(group_columns(m)[0] in s.node.columns for s in bad)] or others
    now = [m for m in keep_from if m in methods]
    raise LakeError(f"dedup --method {','.join(methods)} would decide dup_keep from the stored {', '.join(stale)} groups "
                    f"too, and {first.node.stage} ({first.node.columns[0]}) is {first.state}: {first.reasons[0]}; "
                    f"regroup them in this run: lakecurate dedup {lake.shell} --method {','.join([*methods, *stale])}, "
                    f"or decide without them: --keep-from {','.join(now) or ','.join(methods)}")


def _check_clustered(ds: Any, col: str, method: str) -> None:
    """Before anything is written: a hash search in clusters (``phash_search`` or ``copy_search``)
    compares a hashed row without a vector with every row, so there may be only a few of them."""
    hashed = "phash" if method == "phash" else "copy_hashes"
    lacking = ds.count_rows(filter=f"{hashed} IS NOT NULL AND {col} IS NULL")  # a count: no per-row arrays
    if lacking > MAX_UNCLUSTERED:
        raise LakeError(f"{lacking} rows have a {hashed} but no {col} vector, and --{method}-search clusters compares each "
                        f"of them with every row (at most {MAX_UNCLUSTERED}); run embed first, or use --{method}-search all")


def _clustered_hashes(config: dict[str, Any], variants: np.ndarray, eligible: np.ndarray,
                      joins: _Joins) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """phash or copy links in linear time (``phash_search`` / ``copy_search="clusters"``):
    identical hashes anywhere, near ones among rows whose embeddings the semantic join finds
    within ``cosine``, each among the other's CLUSTERED_PER_ROW best of a join block (the join
    compared their hashes already: :attr:`_Joins.near`, registered before it runs;
    ``neardup.clustered_hamming_pairs`` then takes the ones near by this method's hashes;
    ``variants``: a row's hashes, N x v,
    the distance the smallest over variant pairs; the join is shared with the other methods that
    join every row). A hashed row without a vector is compared with every hashed row (there are
    few: images that hashed but did not embed; :func:`_check_clustered`)."""
    col = embedding_columns(config["embedding"])["image"]
    valid = joins.valid(col)
    a, b, _ = joins.pairs(col, np.flatnonzero(valid), config["cosine"], ranked=True)
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


def _stored(eligible: np.ndarray, stored: _Stored, mr: MethodReport) -> tuple[np.ndarray, np.ndarray, list]:
    """(new rows: eligible without a stored group, eligible row numbers, the stored groups as links)."""
    new = eligible & stored.missing
    mr.new_rows = int(new.sum())
    return new, np.flatnonzero(eligible), [stored.links(eligible)]


def _no_links() -> Evidence:
    return Evidence(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0), [])


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
    return Evidence(a, b, score, [detail.format(v) if "{" in detail else detail for v in score])


def _verify_groups(lake: "Store", joins: _Joins, emb: str | None, config: dict[str, Any], stored: _Stored,
                   groups: dict[str, _Groups], mr: MethodReport, workers: int | None,
                   progress: bool | None, ranks: _Ranks) -> tuple[_Groups, Evidence]:
    """Verified copies: candidate pairs (each new row's nearest image embeddings) that no other
    method links already, checked with local features (:mod:`lakecurate.verify`). Nothing is read
    whole: the vectors of up to KNN_EXACT_MAX rows are taken for an exact search, above that the
    join ranks each row's nearest out of core (:func:`_nearest_candidates`)."""
    from lakecurate.verify import KeypointCache, accepted, match_pairs

    ds, col = joins.ds, embedding_columns(emb)["image"]
    eligible = joins.valid(col) & ~_equals(ds, "ingest_status", "error")  # an error row has no image to look at
    new, rows, pairs = _stored(eligible, stored, mr)
    none = _no_links()
    if not mr.new_rows or len(rows) < 2:
        return _group(eligible, pairs, ranks), none
    only_new = None if mr.new_rows == len(rows) else new[rows]
    i, j = _nearest_candidates(joins, col, rows, config["neighbors"], config["min_cosine"], only_new)
    i, j = rows[i], rows[j]
    # Pairs another image method links already need no second look.
    linked = np.zeros(len(i), bool)
    for m, g in groups.items():
        if m not in TEXT_METHODS:
            gi = g.at(i)
            linked |= (gi >= 0) & (gi == g.at(j))
    i, j = i[~linked], j[~linked]
    mr.candidates = len(i)
    if not len(i):
        return _group(eligible, pairs, ranks), none
    mr.keypoint_rows = len(np.unique(np.concatenate([i, j])))
    order = _chunk_order(i, j)  # a row's pairs in as few chunks as may be: its features loaded ~once
    i, j = i[order], j[order]
    turn = float(config["turn_tolerance"])  # the groups' own (a lake's older default: _kept_older)
    cache = KeypointCache(lake)
    chunks = range(0, len(i), VERIFY_PAIRS_CHUNK)
    bar = progress_bar(total=len(i), desc="verify candidate pairs", unit="pair", progress=progress if len(chunks) > 1 else False)
    inner = progress if len(chunks) == 1 else False  # one chunk: the keypoint and matching bars themselves
    ok, good = np.zeros(len(i), bool), []  # a chunk's accepted matches kept, the rest let go
    regions = config.get("container_regions")  # None: groups made before the rule (_kept_older)
    perspective = config.get("perspective")  # None: groups made before homographies were checked (_kept_older)
    for lo in chunks:  # a chunk's keypoints held at once (computed ones are committed to the cache)
        ci, cj = i[lo:lo + VERIFY_PAIRS_CHUNK], j[lo:lo + VERIFY_PAIRS_CHUNK]
        need = np.unique(np.concatenate([ci, cj]))
        mr.keypoint_loads += len(need)
        keys = ds.take(need, columns=["id", "content_hash", "_rowaddr"])
        feats, rep = cache.load(*(keys.column(c).to_pylist() for c in ("id", "content_hash", "_rowaddr")),
                                workers=workers, progress=inner)
        mr.keypoints_computed += rep.computed
        mr.keypoint_seconds += rep.seconds
        t0 = time.perf_counter()
        matches = match_pairs(dict(zip(need.tolist(), feats)), ci, cj, enough=config["min_inliers"], turn=turn,
                              perspective=perspective, stretch=float(config.get("stretch", STRETCH)), progress=inner)
        mr.match_seconds += time.perf_counter() - t0
        ok[lo:lo + len(ci)] = [accepted(m, config["min_inliers"], turn) for m in matches]
        good += [m for m, k in zip(matches, ok[lo:lo + len(ci)]) if k]
        del feats, matches
        bar.update(len(ci))
    bar.close()
    unlinked = (np.empty(0, np.int64), np.empty(0, np.int64))  # stored links this run undoes
    if regions is not None and ok.any():
        # (the links other image methods and stored groups make: neighbours joined without the container)
        base = [*pairs, *((g.rows, g.best) for m, g in groups.items() if m not in TEXT_METHODS)]
        # An incremental run: the stored verify links of the rows these touch count too, as in a full
        # run (a collage's second photo arriving later was joined to the first it held already).
        si, sj, sbi, sbj, sn = (_stored_verify_links(lake, ds, np.unique(np.concatenate([i[ok], j[ok]])), stored, eligible)
                                if only_new is not None else _no_boxes())
        args = (np.concatenate([i[ok], si]), np.concatenate([j[ok], sj]), [m.box_a for m in good] + sbi,
                [m.box_b for m in good] + sbj, np.concatenate([np.array([m.inliers for m in good], np.float64), sn]), base)
        rule = {"regions": int(regions), "disjoint": float(config.get("disjoint", DISJOINT))}

        def without_held(held: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
            # The stored groups join rows through a stored link at a row of several regions too; a full
            # run joins neighbours without those (even one this call undoes): regroup them without.
            at = held[len(good):]
            if not at.any():
                return base
            regrouped = _regrouped(lake, ds, stored, pairs[0], si[at], sj[at])
            return base if regrouped is None else [*regrouped, *base[1:]]

        made = one_region_links(*args[:-1], without_held, **rule)
        if not made[len(good):].all():  # a stored link the new ones outweigh: its group regrouped without it
            regrouped = _regrouped(lake, ds, stored, pairs[0], si[~made[len(good):]], sj[~made[len(good):]])
            if regrouped is None:  # its group's links are not all known: they stay, their regions first
                made = one_region_links(*args, **rule, made=np.r_[np.zeros(len(good), bool), np.ones(len(si), bool)])
            else:
                pairs[:1] = regrouped
                unlinked = (si[~made[len(good):]], sj[~made[len(good):]])
        mr.container_links = int((~made).sum())
        made = made[: len(good)]
        where = np.flatnonzero(ok)
        ok[where[~made]] = False
        good = [m for m, k in zip(good, made) if k]
    mr.pairs = int(ok.sum())
    pairs.append((i[ok], j[ok]))
    a, b = np.minimum(i[ok], j[ok]), np.maximum(i[ok], j[ok])
    flip = i[ok] > j[ok]  # each box stays with its row
    boxes = ([m.box_b if f else m.box_a for m, f in zip(good, flip)], [m.box_a if f else m.box_b for m, f in zip(good, flip)])
    found = Evidence(a, b, np.array([m.inliers for m in good], np.float64), [m.describe() for m in good], boxes, unlinked)
    return _group(eligible, pairs, ranks), found


def _no_boxes() -> tuple[np.ndarray, np.ndarray, list, list, np.ndarray]:
    return np.empty(0, np.int64), np.empty(0, np.int64), [], [], np.empty(0)


def _stored_keeper(stored: _Stored, r: np.ndarray) -> np.ndarray:
    """The row that keeps each stored group of rows ``r`` (a row in none: itself)."""
    r = np.asarray(r, np.int64)
    if not len(stored.rows):
        return r
    k = np.minimum(np.searchsorted(stored.rows, r), len(stored.rows) - 1)  # (rows are in scan order)
    return np.where(stored.rows[k] == r, stored.kept[k], r)


def _verify_evidence(lake: "Store", ds: Any, rows: np.ndarray, *, both: bool = False) -> tuple[pa.Table, np.ndarray, np.ndarray]:
    """The stored verify links (the evidence of the decision ``ds`` holds) with an end among ``rows``
    (``both``: both ends), and the rows of their ends a and b (-1: gone). Their boxes are null where
    not known (a table written before them)."""
    ev = evidence_dataset(lake, ds)
    none = EVIDENCE_SCHEMA.empty_table(), np.empty(0, np.int64), np.empty(0, np.int64)
    if ev is None or not len(rows):
        return none
    tbl = _evidence_columns(ev.to_table(filter="method = 'verify'"))
    want = ds.take(np.asarray(rows, np.int64), columns=["id"]).column("id").cast(pa.string())
    tbl = tbl.filter((pc.and_ if both else pc.or_)(pc.is_in(tbl.column("a"), want), pc.is_in(tbl.column("b"), want)))
    if not tbl.num_rows:
        return none
    named = pc.unique(pa.concat_arrays([tbl.column("a").combine_chunks(), tbl.column("b").combine_chunks()]))
    row_of = _rows_of(ds, named)
    ri, rj = (row_of[pc.index_in(tbl.column(c), value_set=named).to_numpy()] for c in ("a", "b"))
    return tbl, ri, rj


def _stored_verify_links(lake: "Store", ds: Any, touched: np.ndarray, stored: _Stored,
                         eligible: np.ndarray) -> tuple[np.ndarray, np.ndarray, list, list, np.ndarray]:
    """The stored verify links of the rows ``touched`` that the stored groups hold (both rows
    eligible, grouped, in one group): rows i, rows j, boxes in i's images, in j's (None: not known,
    a table written before them; such a row is never split), inliers."""
    tbl, ri, rj = _verify_evidence(lake, ds, touched)
    on = (ri >= 0) & (rj >= 0)
    on[on] = (eligible[ri[on]] & eligible[rj[on]] & ~stored.missing[ri[on]] & ~stored.missing[rj[on]]
              & (_stored_keeper(stored, ri[on]) == _stored_keeper(stored, rj[on])))
    where = np.flatnonzero(on)
    box_a, box_b = tbl.column("box_a").to_pylist(), tbl.column("box_b").to_pylist()
    def box(v: list | None) -> tuple | None:
        return None if v is None else tuple(v)

    return (ri[on], rj[on], [box(box_a[k]) for k in where], [box(box_b[k]) for k in where],
            pc.fill_null(tbl.column("score"), 0.0).to_numpy()[on].astype(np.float64))


def _regrouped(lake: "Store", ds: Any, stored: _Stored, links: tuple[np.ndarray, np.ndarray], ui: np.ndarray,
               uj: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]] | None:
    """The stored groups as links (``links``: each grouped row to its kept row) with those of the
    groups that the stored links (ui, uj) join made again from their verify links but those: the
    groups a full run makes. None when a group's stored links do not join it whole (links lost, a
    table another writer changed): what it is made of is not known."""
    held = np.unique(_stored_keeper(stored, ui))
    members = np.union1d(held, stored.rows[np.isin(stored.kept, held)])
    _, ri, rj = _verify_evidence(lake, ds, members, both=True)
    on = np.isin(ri, members) & np.isin(rj, members)
    ri, rj = ri[on], rj[on]
    at_i, at_j = np.searchsorted(members, ri), np.searchsorted(members, rj)
    label = components(len(members), at_i, at_j)
    if len(np.unique(label)) != len(held) or np.any(_stored_keeper(stored, ri) != _stored_keeper(stored, rj)):
        return None
    lo, hi = np.minimum(ri, rj), np.maximum(ri, rj)
    cut = np.isin(lo * (members.max() + 1) + hi, np.minimum(ui, uj) * (members.max() + 1) + np.maximum(ui, uj))
    rows, kept = links
    other = ~np.isin(rows, members)
    return [(rows[other], kept[other]), (ri[~cut], rj[~cut])]


def one_region_links(i: np.ndarray, j: np.ndarray, box_i: Sequence[Any], box_j: Sequence[Any], inliers: np.ndarray,
                     base: "Sequence[tuple[np.ndarray, np.ndarray]] | Callable[[np.ndarray], Sequence]" = (), *, regions: int = CONTAINER_REGIONS,
                     disjoint: float = DISJOINT, made: np.ndarray | None = None) -> np.ndarray:
    """Which verified links (i[k], j[k]) to make: all but those that let a row holding several
    pictures join different ones. ``box_i``/``box_j``: each link's inlier box in row i's and row j's
    image (:attr:`lakecurate.verify.Match.box_a`, ``box_b``; None: unknown, never split). A row's
    links whose boxes in it overlap (:func:`lakecurate.verify.overlap` >= ``disjoint``, transitively)
    are one region of it; a row with more than ``regions`` regions keeps the links of the
    ``regions`` whose largest box covers most of it (then the most inliers), and of the others only
    those to a row that ``base`` (links: stored groups, other methods) and the links of rows with one
    region join to a kept neighbour without it. A collage of photos A and B: its link to B is not
    made, A and B stay apart; a photo and two heavy crops of it: both keep its middle, one region.
    ``made``: the links made already (an incremental run's stored ones, :func:`_stored_verify_links`):
    the regions holding one come first, so a row's stored group is not left for another region.
    ``base`` may be a function of which links touch a row with several regions (a mask), returning
    the links: an incremental run's stored groups without the stored links among those, which a
    full run does not count either.

    >>> one_region_links(np.array([0, 0]), np.array([1, 2]), [(0, 0, .4, 1), (.6, 0, 1, 1)],
    ...                  [(0, 0, 1, 1), (0, 0, 1, 1)], np.array([90, 80])).tolist()
    [True, False]
    """
    from lakecurate.verify import overlap

    i, j = np.asarray(i, np.int64), np.asarray(j, np.int64)
    keep = np.ones(len(i), bool)
    ends = np.concatenate([i, j])
    boxes = list(box_i) + list(box_j)
    link = np.concatenate([np.arange(len(i)), np.arange(len(i))])
    order = np.argsort(ends, kind="stable")
    starts = np.flatnonzero(np.r_[True, ends[order][1:] != ends[order][:-1]])
    split: dict[int, list[list[int]]] = {}  # row -> its regions (ends of its links, largest first)
    for lo, hi in zip(starts, np.r_[starts[1:], len(order)]):
        if hi - lo < 2:
            continue
        mine = order[lo:hi]
        if any(boxes[e] is None for e in mine):
            continue
        parent = list(range(len(mine)))

        def root(a: int) -> int:
            while parent[a] != a:
                parent[a] = parent[parent[a]]
                a = parent[a]
            return a

        for a in range(len(mine)):
            for b in range(a + 1, len(mine)):
                if not overlap(boxes[mine[a]], boxes[mine[b]]) < disjoint:  # (nan, a degenerate box: one region)
                    parent[root(a)] = root(b)
        found: dict[int, list[int]] = {}
        for a in range(len(mine)):
            found.setdefault(root(a), []).append(int(mine[a]))
        if len(found) > regions:
            def size(e: int) -> float:
                b = boxes[e]
                return (b[2] - b[0]) * (b[3] - b[1])
            split[int(ends[mine[0]])] = sorted(found.values(), key=lambda r: (
                made is None or not any(made[link[e]] for e in r), -max(size(e) for e in r), -int(inliers[link[r]].sum())))
    if not split:
        return keep
    # Neighbours joined without the rows that hold several regions
    held = np.isin(i, list(split)) | np.isin(j, list(split))
    if callable(base):
        base = base(held)
    bi = np.concatenate([np.asarray(b[0], np.int64) for b in base] + [i[~held]]) if base else i[~held]
    bj = np.concatenate([np.asarray(b[1], np.int64) for b in base] + [j[~held]]) if base else j[~held]
    nodes, at = np.unique(np.concatenate([bi, bj, i, j]), return_inverse=True)
    label = components(len(nodes), at[: len(bi)], at[len(bi): 2 * len(bi)])
    comp = dict(zip(nodes.tolist(), label.tolist()))
    for row, found_regions in split.items():
        def other(e: int) -> int:  # the row at a link's other end
            return int(i[link[e]] + j[link[e]] - row)
        kept = {comp[other(e)] for r in found_regions[:regions] for e in r}
        for r in found_regions[regions:]:
            for e in r:
                if comp[other(e)] not in kept:
                    keep[link[e]] = False
    return keep


def _chunk_order(i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """An order of the pairs (i, j) in which a row's pairs sit close together, so that cut into
    chunks, a row is in few of them: the pairs by their rows' reverse Cuthill-McKee numbers (an
    ordering of the candidate graph that keeps linked rows near each other; scipy: 5.6 s for 4.9M
    pairs, with the numbering and the sort), smaller end first. Sorted by row instead, a row's partners are spread over the table:
    on a 5-nearest graph of 1M rows in 20,000-pair chunks a row was loaded 5.7 times, in this order
    1.03 (docs/benchmarks.md)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import reverse_cuthill_mckee

    if len(i) < 2:
        return np.arange(len(i))
    rows, at = np.unique(np.concatenate([i, j]), return_inverse=True)
    a, b = at[: len(i)], at[len(i):]
    m = len(rows)
    g = coo_matrix((np.ones(len(a), np.int8), (a, b)), shape=(m, m)).tocsr()
    rank = np.empty(m, np.int64)
    rank[reverse_cuthill_mckee((g + g.T).tocsr(), symmetric_mode=True)] = np.arange(m)
    lo, hi = np.minimum(rank[a], rank[b]), np.maximum(rank[a], rank[b])
    return np.argsort(lo * m + hi, kind="stable")


def loads_per_row(i: np.ndarray, j: np.ndarray, chunk: int) -> float:
    """How many times, on average, a row's features are loaded when the pairs (i, j) are verified
    ``chunk`` pairs at a time in this order (each chunk loads its rows once)."""
    if not len(i):
        return 0.0
    total = sum(len(np.unique(np.concatenate([i[lo:lo + chunk], j[lo:lo + chunk]]))) for lo in range(0, len(i), chunk))
    return total / len(np.unique(np.concatenate([i, j])))


def _nearest_candidates(joins: _Joins, col: str, rows: np.ndarray, k: int, cosine: float,
                        new: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (positions in ``rows``) where one row is among the other's k nearest at ``cosine`` or
    more (with ``new``: a new row's k nearest among all): :func:`knn_pairs` on the taken vectors
    up to KNN_EXACT_MAX rows; above, the join's ranked pairs (each row's k nearest are among them,
    :func:`semantic_pairs`' ``per_row``, each row in KNN_ASSIGN cells) cut to each row's k nearest,
    so the memory is bounded."""
    src = LanceVectors(joins.ds, col, rows, storage_options=joins.storage_options)
    if len(rows) <= KNN_EXACT_MAX:
        i, j, _ = knn_pairs(src.take(np.arange(len(rows))), k, cosine, new=new)
        return i, j
    i, j, cos, ranked = semantic_pairs(src, cosine, new=new, per_row=k, assign=KNN_ASSIGN, progress=bool(joins.progress),
                                     engine=joins.engine)
    i, j, cos = i[ranked], j[ranked], cos[ranked]
    keep = nearest_pairs(i, j, cos, k, new)
    return i[keep], j[keep]


def _equals(ds: Any, column: str, value: str, batch_rows: int = 65536) -> np.ndarray:
    """One bool per row: the column holds ``value`` there (read in batches, never whole)."""
    parts = [np.asarray(pc.fill_null(pc.equal(b.column(0), value), False).to_numpy(zero_copy_only=False), bool)
             for b in ds.to_batches(columns=[column], batch_size=batch_rows)]
    return np.concatenate(parts) if parts else np.zeros(0, bool)


def _is_null(ds: Any, column: str, batch_rows: int = 65536) -> np.ndarray:
    """One bool per row: the column is null there (read in batches, never whole)."""
    parts = [np.asarray(b.column(0).is_null().to_numpy(zero_copy_only=False), bool)
             for b in ds.to_batches(columns=[column], batch_size=batch_rows)]
    return np.concatenate(parts) if parts else np.zeros(0, bool)


def _hashes(tbl: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(phash, phash_flip, which rows have a hash that is not too flat to compare)."""
    h = tbl.column("phash")
    valid = ~np.asarray(h.is_null().to_numpy(zero_copy_only=False), bool)
    h = pc.fill_null(h, 0).to_numpy()
    return h, pc.fill_null(tbl.column("phash_flip"), 0).to_numpy(), valid & _detailed(h)


def _detailed(h: np.ndarray) -> np.ndarray:
    """Which hashes have at least FLAT_HASH_BITS set bits (the rest: pictures with next to no detail)."""
    return np.bitwise_count(np.asarray(h, np.uint64)) >= FLAT_HASH_BITS
