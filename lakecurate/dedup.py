"""The dedup stage: exact, perceptual and semantic duplicate groups, and one kept member per group.

Methods (each writes its own group column; rows are never deleted):

| method | column | two rows are linked when | default |
| --- | --- | --- | --- |
| exact | ``dup_exact_group`` | their image bytes are identical (sha256 ``content_hash``) | |
| exact | ``dup_pair_group`` | image bytes *and* caption are identical | |
| phash | ``dup_phash_group`` | 64-bit DCT perceptual hashes differ in <= ``phash_distance`` bits, also against the mirrored image's hash (``flips``) | 10 bits |
| semantic | ``dup_semantic_group`` | image embeddings have cosine >= ``semantic_threshold`` (SemDeDup), or >= ``confirm_cosine`` with hashes within ``confirm_distance`` bits | per model, see ``SEMANTIC_THRESHOLDS`` |
| caption | ``dup_caption_group`` | caption embeddings have cosine >= ``caption_threshold`` | 0.98 |
| copy | ``dup_copy_group`` | one of the 8 hashes of the bar-trimmed image turned by 0/90/180/270 degrees and mirrored (``copy_hashes``) is within ``copy_distance`` bits of one of the other's: rotated, letterboxed, pillarboxed and bordered copies | 6 bits |

A group column holds the ``id`` of the member that group keeps (a row alone holds its own id;
null: the row has no signal for that method, e.g. an undecodable image). Groups are the connected
components of the links, so a chain a~b~c is one group.

Then the groups of the ``keep_from`` methods (default: exact, phash, semantic and copy, those computed; caption
near-duplicates are reported but do not drop rows unless asked, because two different photos
may well share "a dog runs on the grass") are joined into ``dup_group`` (id of the kept member),
``dup_group_size``, ``dup_keep`` and ``dup_reason`` ("phash:<kept id>": the first method, in
``keep_from`` order, that puts the row with the kept member; "linked:<kept id>" when only a chain
of methods does). **The keep rule**: highest alignment score (``<embedding>_score``), then most
pixels, then earliest ingested, then smallest id; rows without a score rank after rows with one.

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
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lakecurate import columns
from lakecurate.encoders import meaningless
from lakecurate.errors import LakeError
from lakecurate.graph import no_producer, write_decisions
from lakecurate.names import Produce, embedding_columns
from lakecurate.neardup import components, hamming_pairs, semantic_pairs
from lakecurate.options import whole

if TYPE_CHECKING:
    from lakecurate.store import Store

METHODS = ("exact", "phash", "semantic", "caption", "copy")
DEFAULT_METHODS = ("exact", "phash", "semantic")
DEFAULT_KEEP_FROM = ("exact", "phash", "semantic", "copy")  # those computed
PHASH_DISTANCE = 8
# The copy method compares 8 hashes a row with 8 of every other (64 chances against phash's 4), so
# it links at fewer differing bits to keep the same false-link rate (docs/benchmarks.md, issue 17).
COPY_DISTANCE = 6
CAPTION_THRESHOLD = 0.98
CONFIRM_DISTANCE = 16
# Cosine of image embeddings above which two images are near duplicates, and the lower cosine at
# which a pair also counts when its perceptual hashes are within CONFIRM_DISTANCE bits, by encoder
# family. offline: measured on planted Flickr8k copies against 319,600 pairs of distinct photos
# (docs/benchmarks.md: none of them >= 0.82, nor within 16 bits at >= 0.6). open_clip: SemDeDup's
# eps 0.05 ~ cosine 0.95; the confirm cosine 0.85 is a guess here (no CLIP weights on this machine).
SEMANTIC_THRESHOLDS = {"offline": 0.85, "open_clip": 0.95}
CONFIRM_COSINES = {"offline": 0.70, "open_clip": 0.85}
PHASH_COLUMNS = ("phash", "phash_flip")
FINAL_COLUMNS = ("dup_group", "dup_group_size", "dup_keep", "dup_reason")


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


def _pick_embedding(lake: "Store", ds: Any, embedding: str | None, needed: bool) -> tuple[str | None, dict | None]:
    from lakecurate.names import pick_embedding

    need = "semantic and caption dedup need them; or use --method exact,phash" if needed else None
    return pick_embedding(lake, ds, embedding, need=need)


def _vectors(col: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    from lakecurate.columns import embedding_matrix

    x, valid = embedding_matrix(col, dtype=None)  # stored float16: half the memory of float32
    if not valid.all():
        x = x.copy()
        x[~valid] = 0
        x[~valid, 0] = 1  # unit placeholders: never joined (not eligible), but pass the norm check
    return x, valid


def _str_array(values: np.ndarray, valid: np.ndarray) -> pa.Array:
    return pa.array(values, pa.string(), mask=~valid)


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
    copy_distance: int = COPY_DISTANCE,
    semantic_threshold: float | None = None,
    caption_threshold: float = CAPTION_THRESHOLD,
    confirm_cosine: float | None = None,
    confirm_distance: int = CONFIRM_DISTANCE,
    keep_from: Sequence[str] | None = None,
    recompute: bool = False,
    workers: int | None = None,
    progress: bool | None = None,
    produce: Produce | None = None,
) -> DedupReport:
    """Find duplicate groups with ``methods`` and write group columns plus ``dup_keep``/``dup_reason``.

    Example::

        report = lake.dedup(["exact", "phash", "semantic"])
        lake.sql("SELECT dup_reason, count(*) AS n FROM pairs WHERE NOT dup_keep GROUP BY dup_reason")
    """
    t_start = time.perf_counter()
    copy_distance = whole("copy_distance", copy_distance, 0)
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
    emb, emb_prov = _pick_embedding(lake, ds, embedding, needed=bool({"semantic", "caption"} & set(methods)))

    configs: dict[str, dict[str, Any]] = {
        "exact": {"on": ["content_hash", "caption"]},
        "phash": {"max_distance": int(phash_distance), "flips": bool(flips), "hash": "phash"},
        "copy": {"max_distance": int(copy_distance), "hash": "copy_hashes"},
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
        configs["caption"] = {"embedding": emb, "embedding_config": emb_prov["config_hash"],
                              "threshold": float(caption_threshold)}

    produce = produce or no_producer(lake, "dedup")  # dedup runs no stage itself: it asks for their columns
    if {"phash", "semantic"} & set(methods):  # semantic links at a lower cosine are confirmed by hashes
        report.hashed = produce("image_signals", workers=workers, progress=progress)
    if "copy" in methods:  # the same new rows again, for their copy hashes: counted once
        report.hashed = max(report.hashed, produce("copy_signals", workers=workers, progress=progress))

    # Declare each method's columns (metadata only; a changed config is an error unless recompute).
    for m in methods:
        prov = columns.provenance("dedup", {"method": m, **configs[m]}, _sources(m, emb), lake.version)
        columns.declare(lake, [pa.field(c, pa.string()) for c in group_columns(m)], prov, recompute=recompute,
                        fix=f"run with the same settings, or with --recompute to regroup every row by {m}")

    ds = lake.dataset()
    present = [m for m in METHODS if all(c in ds.schema.names for c in group_columns(m))]
    read = ["id", "content_hash", "caption", "width", "height", "ingested_at"]
    read += [c for m in present for c in group_columns(m)]
    read += [c for c in FINAL_COLUMNS if c in ds.schema.names]
    if {"phash", "semantic"} & set(methods):
        read += list(PHASH_COLUMNS)
    if "copy" in methods:
        read.append("copy_hashes")
    if emb is not None:
        read += [embedding_columns(emb)["score"]] + ([embedding_columns(emb)["image"]] if "semantic" in methods else []) \
            + ([embedding_columns(emb)["text"]] if "caption" in methods else [])
    tbl = ds.to_table(columns=list(dict.fromkeys(read)), with_row_address=True)
    n = tbl.num_rows
    report.rows = n
    ids = np.asarray(tbl.column("id").to_numpy(zero_copy_only=False), dtype=object)
    id_index = {v: k for k, v in enumerate(ids)}
    score = (pc.fill_null(pc.cast(tbl.column(embedding_columns(emb)["score"]), pa.float64()), float("nan")).to_numpy()
             if emb is not None else np.full(n, np.nan))  # no score: ranks after every scored row
    pixels = (pc.fill_null(pc.multiply(pc.cast(tbl.column("width"), pa.int64()), pc.cast(tbl.column("height"), pa.int64())), 0)
              .to_numpy())
    ingested = pc.fill_null(pc.cast(tbl.column("ingested_at"), pa.int64()), 0).to_numpy()
    rank = keep_rank(score, pixels, ingested, ids.astype(str))

    labels: dict[str, np.ndarray] = {}  # method -> row of its group's best member (-1: no signal)
    for m in present:
        mr = MethodReport(method=m, config=configs.get(m, {}))
        t0 = time.perf_counter()
        stored = tbl.column(group_columns(m)[0])
        stored_rows = np.array([id_index.get(v, -1) if v is not None else -1 for v in stored.to_pylist()], np.int64)
        if m not in methods:  # computed by an earlier run: take its groups as they are
            eligible = stored_rows >= 0
            label = linked_groups(n, [(np.arange(n)[eligible], stored_rows[eligible])], eligible)
        else:
            label = _method_groups(m, tbl, emb, configs[m], stored_rows, mr, progress)
        best = best_of_groups(label, rank)
        labels[m] = best
        if m in methods:
            new_cols = {c: _str_array(ids[np.maximum(best, 0)], best >= 0) for c in group_columns(m)[:1]}
            if m == "exact":  # identical (image, caption): a finer split of the same groups
                cap = np.asarray(tbl.column("caption").to_numpy(zero_copy_only=False), dtype=object)
                key = np.array([f"{h}\x00{c}" for h, c in zip(tbl.column("content_hash").to_pylist(), cap)], dtype=object)
                valid = best >= 0
                pairs = equal_value_pairs(key, valid)
                pair_best = best_of_groups(linked_groups(n, [pairs], valid), rank)
                new_cols["dup_pair_group"] = _str_array(ids[np.maximum(pair_best, 0)], pair_best >= 0)
            mr.fragments_written = _write_changed(lake, tbl, new_cols, report, _sources(m, emb), ds.version)
            report.fragments_written += mr.fragments_written
        mr.rows = int((best >= 0).sum())
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
    reason = np.full(n, None, dtype=object)
    for r in np.flatnonzero(~keep):
        k = final[r]
        how = next((m for m in use if labels[m][r] >= 0 and labels[m][r] == labels[m][k]), "linked")
        reason[r] = f"{how}:{ids[k]}"
    final_prov = columns.provenance(
        "dedup", {"keep_from": use, "rule": "score desc, pixels desc, ingested_at, id", "rank_by": embedding_columns(emb)["score"] if emb else None,
                  "methods": {m: configs.get(m) for m in use}},
        [c for m in use for c in group_columns(m)[:1]], lake.version)
    final_fields = [pa.field("dup_group", pa.string()), pa.field("dup_group_size", pa.int32()),
                    pa.field("dup_keep", pa.bool_()), pa.field("dup_reason", pa.string())]
    columns.declare_view(lake, final_fields, final_prov)  # derived from the group columns: recomputed each run
    grouped = size > 1
    new_final = {
        "dup_group": _str_array(ids[final], grouped),
        "dup_group_size": pa.array(size.astype(np.int32), pa.int32()),
        "dup_keep": pa.array(keep, pa.bool_()),
        "dup_reason": pa.array(reason, pa.string()),
    }
    if any(c not in tbl.column_names for c in FINAL_COLUMNS):
        tbl = tbl.drop_columns([c for c in FINAL_COLUMNS if c in tbl.column_names])
    report.fragments_written += _write_changed(lake, tbl, new_final, report, final_prov["source_columns"], ds.version)
    report.kept = int(keep.sum())
    report.dropped = int(n - keep.sum())
    report.seconds = time.perf_counter() - t_start
    return report


def _sources(method: str, emb: str | None) -> list[str]:
    return {"exact": ["content_hash", "caption"], "phash": list(PHASH_COLUMNS), "copy": ["copy_hashes"],
            "semantic": [embedding_columns(emb)["image"], *PHASH_COLUMNS], "caption": [embedding_columns(emb)["text"]]}[method]



def _method_groups(method: str, tbl: pa.Table, emb: str | None, config: dict[str, Any], stored_rows: np.ndarray,
                   mr: MethodReport, progress: bool | None) -> np.ndarray:
    """Group label per row for one method: stored groups merged with this run's links."""
    n = tbl.num_rows
    if method == "exact":
        hashes = np.asarray(tbl.column("content_hash").to_numpy(zero_copy_only=False), dtype=object)
        eligible = np.array([h is not None for h in hashes], bool)
        mr.new_rows = int((eligible & (stored_rows < 0)).sum())
        pairs = equal_value_pairs(hashes, eligible)  # O(N): always from scratch, nothing to merge
        mr.pairs = len(pairs[0])
        return linked_groups(n, [pairs], eligible)
    if method == "phash":
        h, h_flip, eligible = _hashes(tbl)
        mr.new_rows = int((eligible & (stored_rows < 0)).sum())
        rows = np.flatnonzero(eligible)
        values = np.concatenate([h[rows], h_flip[rows]]) if config["flips"] else h[rows]
        # Mirror hashes against every hash find mirrored copies; i % n maps them back to rows.
        i, j, _ = hamming_pairs(values, config["max_distance"], identical="first")
        i, j = rows[i % len(rows)], rows[j % len(rows)]
        mr.pairs = int((i != j).sum())
        return linked_groups(n, [(i, j)], eligible)
    if method == "copy":
        col = tbl.column("copy_hashes")
        eligible = ~np.asarray(col.is_null().to_numpy(zero_copy_only=False), bool)
        mr.new_rows = int((eligible & (stored_rows < 0)).sum())
        rows = np.flatnonzero(eligible)
        flat = col.combine_chunks()  # a fixed-size list stores 8 values per slot, null slots too
        values = np.asarray(flat.values.fill_null(0).to_numpy(), np.uint64)
        hashes = values[flat.offset * 8:(flat.offset + len(flat)) * 8].reshape(-1, 8)
        # Every variant of every row in one Hamming search; v // 8 maps a variant back to its row.
        i, j, _ = hamming_pairs(hashes[rows].reshape(-1), config["max_distance"], identical="first")
        i, j = rows[i // 8], rows[j // 8]
        keep = i != j
        mr.pairs = int(keep.sum())
        return linked_groups(n, [(i[keep], j[keep])], eligible)
    col = embedding_columns(emb)["image"] if method == "semantic" else embedding_columns(emb)["text"]
    x, eligible = _vectors(tbl.column(col))
    new = eligible & (stored_rows < 0)
    mr.new_rows = int(new.sum())
    rows = np.flatnonzero(eligible)
    old = np.flatnonzero(eligible & (stored_rows >= 0))
    pairs = [(old, stored_rows[old])]
    if mr.new_rows:
        only_new = None if mr.new_rows == len(rows) else new[rows]
        low = config.get("confirm_cosine", config["threshold"])
        i, j, cos = semantic_pairs(x[rows], low, new=only_new, progress=bool(progress))
        i, j = rows[i], rows[j]
        strong = cos >= config["threshold"]
        if low < config["threshold"]:  # weaker links count only when the images also look alike
            h, h_flip, hashed = _hashes(tbl)
            dist = np.bitwise_count(h[i] ^ h[j])
            if config.get("flips"):
                dist = np.minimum(dist, np.bitwise_count(h[i] ^ h_flip[j]))
            strong |= hashed[i] & hashed[j] & (dist <= config["confirm_distance"])
        pairs.append((i[strong], j[strong]))
        mr.pairs = int(strong.sum())
    return linked_groups(n, pairs, eligible)


def _hashes(tbl: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    h = tbl.column("phash")
    valid = ~np.asarray(h.is_null().to_numpy(zero_copy_only=False), bool)
    return pc.fill_null(h, 0).to_numpy(), pc.fill_null(tbl.column("phash_flip"), 0).to_numpy(), valid
