"""Export the curated set for training: WebDataset shards, Parquet, or a new Lance table.

Every writer gets the same rows in the same order (``plan``): the rows chosen by ``where``
(default ``rebalance_keep``, else ``keep``, else every row whose image is usable), ordered by
``seq_order`` when the lake has one (else table order), each row written ``repeats`` times when the
lake has that column (a row's copies evenly spaced through the export, :func:`spread_copies`).
Image bytes are exported as stored, never re-encoded (``blur_faces``: images with faces are
blurred there and re-encoded; the stored image is never modified). WebDataset shards hold ``--shard-size``
samples, by default the sequence's shard size, so without repeats shard i holds the rows whose
``seq_shard`` is i; every key of a sample's ``.json`` has one JSON type in every sample (a missing
value is written as its type's placeholder, listed in the manifest), as Hugging Face ``datasets``
needs.

Each export carries a manifest (``manifest.json`` in a WebDataset folder, ``DEST.manifest.json``
beside a Parquet file or Lance table): source lake and version, the selection, the recipe and
rebalance provenance, counts, the files written. An export is written into a hidden sibling folder
(``.DEST.PID@HOST.XXXX.partial``) and moved into place when complete; the next export to DEST removes
the ones a killed export left; ``overwrite`` replaces exactly the files an earlier export's
manifest lists (other files are left alone) and refuses a destination that holds no such export.
A destination inside the lake (its table, a branch) is refused.

    lakecurate export ./lake out/ --format webdataset --version basic-1a2b3c4d-v12
"""

from __future__ import annotations

import glob
import io
import json
import re
import os
import shlex
import shutil
import tarfile
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lakecurate import columns
from lakecurate.engines import check_engine
from lakecurate.errors import LakeError
from lakecurate.graph import (check_current, check_has_rows, check_ordered, check_view_not_empty, lakecurate_on, check_decided, effective_view, foreign_view_notes, states, unheeded_reviews,
                              where_columns)
from lakecurate.images import BLUR_MARGIN, blur_boxes
from lakecurate.names import default_view, embedding_columns, embedding_prefixes
from lakecurate.options import canonical_uri, flag, given, overlaps, path, spell, whole, writable
from lakecurate.progress import progress_bar
from lakecurate.sqlcheck import check_where

if TYPE_CHECKING:
    from lakecurate.store import Store

FORMATS = ("webdataset", "parquet", "lance", "mds")
FOLDERS = ("webdataset", "mds")  # formats written as a folder of shards with manifest.json beside them
MDS_SIZE_LIMIT = 1 << 26  # bytes per MDS shard (64 MiB, mosaicml-streaming's default)
MDS_COLUMNS = {"export_key": "str", "caption": "str", "image": "bytes", "format": "str", "json": "json"}
MDS_INSTALL = ("pip install --no-deps mosaicml-streaming==0.13.0 && pip install brotli python-snappy zstd catalogue xxhash "
               "(its metadata pins numpy < 2.2 and transformers < 5, which lakecurate's stack does not need to take)")
_EXT = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tiff", "MPO": "jpg"}
META = ["id", "source", "key", "width", "height", "format", "content_hash"]
OPTIONAL = ["concept", "sample_weight", "dup_group", "drop_reason"]
CHUNK = 512
SHARD_SIZE = 1000  # WebDataset samples per shard when the lake has no sequence
FACE_BOXES = "img_face_boxes"  # written by the faces stage (lakecurate signals --faces)


def _check_faces(lake: "Store", ds: Any, allow_stale: bool) -> None:
    """--blur-faces needs every exported row's face boxes, current: else an error naming the fix."""
    fix = f"{lakecurate_on(lake)} signals {lake.shell} --faces --no-caption --no-image"
    if FACE_BOXES not in ds.schema.names:
        raise LakeError(f"{spell('--blur-faces')} needs the face boxes of lake '{lake.uri}', which has none yet; run: {fix}")
    missing = sum(f.count_rows() for f in columns.fragments_to_fill(ds, FACE_BOXES))
    if missing:
        raise LakeError(f"{spell('--blur-faces')}: {missing} rows of lake '{lake.uri}' have no face boxes yet (added since); "
                        f"run: {fix}")
    check_current(lake, ds, [FACE_BOXES], what=f"export {spell('--blur-faces')}", allow_stale=allow_stale)


@dataclass
class ExportReport:
    lake: str
    dest: str
    format: str
    version: int
    where: str | None
    rows: int = 0  # distinct pairs
    samples: int = 0  # written, repeats included
    shards: int = 0
    bytes: int = 0
    files: list[str] = field(default_factory=list)
    seconds: float = 0.0
    stale: list[str] = field(default_factory=list)  # what was not current (exported with allow_stale)
    blurred: int = 0  # images written with faces blurred (blur_faces)
    removed_partial: int = 0  # staging folders of interrupted exports to this destination, removed
    notes: list[str] = field(default_factory=list)  # said, not warned: the version exported is untagged

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan(lake: "Store", *, where: str | None = None, version: int | str | None = None, repeats: bool = True,
         caption: str = "caption", allow_stale: bool = False, extra: list[str] | None = None,
         caption_mix: dict[str, float] | None = None, what: str = "export",
         allow_hint: str = "--allow-stale") -> tuple[Any, pa.Table, np.ndarray, str | None, list[str]]:
    """(dataset, metadata table of the chosen rows in export order, copy index per sample, where,
    stale warnings).

    The table has one row per *sample* (a row with repeats 3 appears 3 times). Rows whose
    ``ingest_status`` is ``'error'`` (no usable image) are never chosen, whatever ``where`` says. The decisions the
    selection and order read must be current (:func:`lakecurate.graph.check_current`): a stale one
    is an error naming the stage to re-run, unless ``allow_stale`` (then it is a warning; the error
    names it as ``allow_hint``).

    A ``version`` given (a recipe's tag, a past number; not the latest's number, which is the
    latest as without a version) is exported as it was: what is not current there can
    never be made current, so its view is the latest decision current at that version (``keep``
    where rebalancing had not re-run after the recipe: it used the older recipe's rebalance_keep
    or refused), and an order or repeats not current there are left out, with a warning."""
    ds = lake.dataset(version)
    if version is not None and lake.names_latest(version, ds):
        version = None  # the latest by its number (the loader pins it so): its stale decisions can be made
        # current by re-running their stage, so they are refused as without --version, not worked around
    if version is None:
        check_has_rows(lake, ds)  # (it said "no rows to export with --where 'keep'": see what the view holds)
    names = ds.schema.names
    where = check_where(where, "--where", ds)
    notes: list[str] = []
    views = where is None  # the lake's curated view (now, or at a past version): refused when empty
    lakes_view = views and version is None  # (now: its stale decisions are refused as such)
    if where is None:
        view, notes = effective_view(lake, ds) if version is not None else (default_view(ds.schema),
                                                                             foreign_view_notes(lake, ds))
        # (a decision another writer dropped: every row was exported without a word)
        notes += check_decided(lake, ds, view, what=what, allow_stale=allow_stale or version is not None,
                               allow_hint=allow_hint)
        notes += unheeded_reviews(ds, view)  # (reviewers' drops shipped without a word)
        where = view or "ingest_status != 'error'"
    order = [c for c in ("seq_order", "repeats" if repeats else "") if c in names]
    # (an order lost: dropped by another writer, or a sequence run replacing it killed)
    notes += check_ordered(lake, ds, what=what, allow_stale=allow_stale or version is not None, allow_hint=allow_hint)
    left_out: list[str] = []
    past = states(lake, ds) if version is not None else None  # (read once for every column asked about)
    if past is not None:  # a past version: its order only where current there
        for c in order:
            gone = check_current(lake, ds, [c], what=what, allow_stale=True, all_states=past)
            if gone and not allow_stale:
                left_out.append(c)
                notes.append(f"{c} not used ({'rows in table order' if c == 'seq_order' else 'each row once'}): {gone[0]}")
        order = [c for c in order if c not in left_out]
    warnings = notes + check_current(lake, ds, where_columns(where, names) + order, what=what, allow_stale=allow_stale,
                                     all_states=past, allow_hint=allow_hint, view=lakes_view)
    if views:  # (curate kept nothing: an export of no rows, or a loop of "re-run rebalance")
        check_view_not_empty(lake if version is None else lake.on_branch_of(version), ds, where, what)
    for c in (caption_mix or {caption: 1.0}):
        if c in META:
            raise LakeError(f"column '{c}' is the export's own metadata, not a caption; mix caption columns")
        if c not in names:
            raise LakeError(f"no column '{c}' in lake '{lake.uri}' to export as a caption; caption columns: "
                            f"{', '.join(n for n in names if n == 'caption' or (n.startswith('caption_') and not n.endswith(('_error', '_tries'))))}")
        if not pa.types.is_string(ds.schema.field(c).type) and not pa.types.is_large_string(ds.schema.field(c).type):
            raise LakeError(f"column '{c}' holds {ds.schema.field(c).type}, not text; export a caption column")
    cols = list(dict.fromkeys(META + [caption, *(caption_mix or {})]
                              + [c for c in OPTIONAL + ["seq_order", "repeats"] if c in names and c not in left_out]))
    cols = list(dict.fromkeys(cols + [embedding_columns(e)["score"] for e in embedding_prefixes(ds)] + list(extra or [])))
    # An ingest error has no usable image: never a sample, whatever the view says; nor an image an
    # embedding could not decode (its header passed ingest, its data is broken): the loader stopped
    # on it, and a trainer reading the export would.
    errors = [embedding_columns(e)["error"] for e in embedding_prefixes(ds) if embedding_columns(e)["error"] in names]
    try:  # (the error columns read in the same scan, then dropped: a second scan only counted them)
        tbl = ds.to_table(columns=list(dict.fromkeys(cols + errors + ["ingest_status"])), filter=f"({where})",
                          with_row_id=True)
    except Exception as exc:  # a bad filter is the user's to fix
        raise LakeError(f"cannot select rows with {spell('--where')} {where!r} in lake '{lake.uri}': {exc}") from None
    unusable = pc.fill_null(pc.equal(tbl.column("ingest_status"), "error"), False).to_numpy(zero_copy_only=False)
    undecodable = np.zeros(tbl.num_rows, bool)
    for c in errors:
        for why in UNDECODABLE:
            undecodable |= pc.fill_null(pc.starts_with(tbl.column(c), why), False).to_numpy(zero_copy_only=False)
    undecodable &= ~unusable
    failed, bad = int(unusable.sum()), int(undecodable.sum())
    tbl = tbl.filter(pa.array(~(unusable | undecodable))).select([c for c in tbl.column_names if c in cols or c == "_rowid"])
    if failed:  # (the view's count and the export's differed without a word)
        warnings.append(f"{failed} row{'s' if failed != 1 else ''} of the view left out: ingest_status is 'error' "
                        f"(no usable image; see ingest_error)")
    if bad:
        warnings.append(f"{bad} row{'s' if bad != 1 else ''} of the view left out: an embedding could not decode "
                        f"{'their images' if bad != 1 else 'its image'} (see {', '.join(errors)})")
    order = np.arange(tbl.num_rows)
    if "seq_order" in tbl.column_names:
        unordered = tbl.column("seq_order").null_count
        if unordered:  # the sequence ordered other rows: these go last, in table order (it was without a word)
            seq_where = (columns.field_provenance(ds.schema.field("seq_order"), strict=False) or {}).get("config", {}).get("where")
            why = (f"the sequence ordered the rows of {seq_where or 'its default view'!r}, not {where!r}"
                   if seq_where != where else f"{where} changed since the sequence ordered its rows")
            warnings.append(f"{unordered} of the {tbl.num_rows} rows it writes have no seq_order (they go last, in "
                            f"table order): {why}; to order them: lakecurate sequence {lake.shell} --where "
                            f"{shlex.quote(where)}")
        seq = pc.fill_null(tbl.column("seq_order"), np.iinfo(np.int64).max).to_numpy()
        order = np.argsort(seq, kind="stable")
    tbl = tbl.take(pa.array(order))
    reps = (pc.fill_null(tbl.column("repeats"), 1).to_numpy() if repeats and "repeats" in tbl.column_names
            else np.ones(tbl.num_rows, np.int64))
    idx, copy = spread_copies(reps)
    return ds, tbl.take(pa.array(idx)), copy, where, warnings


# The embed errors that say a row's image cannot be decoded at all (not a caption's problem).
UNDECODABLE = ("image_undecodable", "image_too_large")
MIX_CAPTION = "__caption"  # the caption a mixed export writes: one of the mix's columns per sample


def parse_mix(text: str) -> dict[str, float]:
    """``"caption=0.5,caption_coca=0.5"`` -> ``{"caption": 0.5, "caption_coca": 0.5}``.

    >>> parse_mix("caption=1, caption_x=3")
    {'caption': 1.0, 'caption_x': 3.0}
    """
    out: dict[str, float] = {}
    for part in text.split(","):
        name, eq, weight = part.strip().partition("=")
        try:
            value = float(weight)
        except ValueError:
            value = float("nan")
        if not eq or not name.strip() or not np.isfinite(value) or value < 0:
            raise LakeError(f"{spell('--caption-mix')} {text!r}: write COLUMN=WEIGHT,... with weights >= 0, "
                            f"e.g. caption=0.5,caption_coca=0.5")
        if name.strip() in out:  # caption=1,caption=1 became {caption: 1} without a word
            raise LakeError(f"{spell('--caption-mix')} {text!r} names {name.strip()} twice; give each column one weight")
        out[name.strip()] = value
    if not out or sum(out.values()) <= 0:
        raise LakeError(f"{spell('--caption-mix')} {text!r}: give at least one column a weight above 0")
    return out


def mix_choice(ids: list[str], weights: dict[str, float], seed: int) -> np.ndarray:
    """Index into ``weights`` of the caption column each row trains on: a uniform number per row
    from (seed, id) -- so a row's choice does not depend on the rest of the export -- against the
    cumulative normalised weights.

    >>> mix_choice(["a", "b", "c"], {"caption": 1.0, "caption_x": 0.0}, 0).tolist()
    [0, 0, 0]
    """
    import hashlib

    w = np.asarray(list(weights.values()), np.float64)
    cum = np.cumsum(w / w.sum())
    u = np.array([int.from_bytes(hashlib.blake2b(f"{seed}\x00{i}".encode(), digest_size=8).digest(), "big") / 2.0**64
                  for i in ids])
    return np.minimum(np.searchsorted(cum, u, side="right"), len(w) - 1)


def _mix(tbl: pa.Table, copy: np.ndarray, weights: dict[str, float], seed: int, both: bool) -> tuple[pa.Table, np.ndarray, dict[str, Any]]:
    """The samples with their caption chosen from the mix (``choose``: one per sample, a null choice
    falling back to the mix's next non-null column) or one sample per non-null mix column (``both``),
    as ``__caption`` + ``caption_source``; and what the manifest records (``both``: the rows left
    out because every caption of the mix is null)."""
    names = list(weights)
    caps = [tbl.column(c).to_pylist() for c in names]
    n = tbl.num_rows
    if both:
        idx = [(r, k) for r in range(n) for k in range(len(names)) if weights[names[k]] > 0 and caps[k][r] is not None]
        rows = np.array([r for r, _ in idx], np.int64)
        src = [names[k] for _, k in idx]
        text = [caps[k][r] for r, k in idx]
        fallbacks = 0
        ids = tbl.column("id").to_pylist()  # (a row repeated is several samples: count rows)
        left_out = len(set(ids) - {ids[r] for r in rows.tolist()})
    else:
        pick = mix_choice(tbl.column("id").to_pylist(), weights, seed)
        rows, src, text, fallbacks, left_out = np.arange(n), [], [], 0, 0
        for r, k in enumerate(pick):
            order = [k] + [j for j in range(len(names)) if j != k and weights[names[j]] > 0]
            j = next((j for j in order if caps[j][r] is not None), k)
            fallbacks += j != k
            src.append(names[j]), text.append(caps[j][r])
    out = tbl.take(pa.array(rows)).append_column(MIX_CAPTION, pa.array(text, pa.string()))
    out = out.append_column("caption_source", pa.array(src, pa.string())).drop_columns(
        [c for c in {*names, "caption"} if c in out.column_names])  # the chosen text is the caption
    chosen = {c: src.count(c) for c in names}
    record = {"weights": weights, "seed": seed, "mode": "both" if both else "choose", "samples_per_column": chosen,
              "fallbacks": int(fallbacks)}
    if both:
        record["rows_without_caption"] = left_out  # every caption of the mix null: no sample
    return out, copy[rows], record


def spread_copies(reps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The samples for rows in order 0..n-1 where row p is written ``reps[p]`` times: (row, copy) per sample.

    Copy r of the row at position p goes to position (p / n + r) / k of the export (k = its repeats):
    a row's copies are evenly spaced, one in each k-th of the export at the row's place in the order,
    so up-sampled rows are seen throughout an epoch (appending all second copies after all first
    ones put every repeat in the last batches, from the few concepts that were up-sampled).

    >>> [r.tolist() for r in spread_copies(np.array([1, 2, 1, 1]))]
    [[0, 1, 2, 1, 3], [0, 0, 0, 1, 0]]
    """
    reps = np.maximum(np.asarray(reps, np.int64), 1)
    n = len(reps)
    row = np.repeat(np.arange(n), reps)
    copy = np.arange(len(row)) - np.repeat(np.cumsum(reps) - reps, reps)
    key = (row + copy * n) / reps[row]
    order = np.lexsort((row, copy, key))  # by position; on a tie first copies first, then by row
    return row[order], copy[order]


def _chunks(ds: Any, tbl: pa.Table, blur: dict[str, int] | None = None) -> Iterator[tuple[pa.Table, list[bytes | None]]]:
    """Parts of ``tbl`` with their image bytes. With ``blur`` (counts updated), images with face
    boxes are blurred there and re-encoded, and the part's ``format`` says what they became."""
    rowids = tbl.column("_rowid").to_pylist()
    for s in range(0, tbl.num_rows, CHUNK):
        ids = rowids[s : s + CHUNK]
        blobs = [b for _, b in ds.read_blobs("image", ids=ids, preserve_order=True)] if ids else []
        part = tbl.slice(s, CHUNK)
        if blur is not None:
            part, blobs = _blurred(part, blobs, blur)
        yield part, blobs


def _blurred(part: pa.Table, blobs: list[bytes | None], counts: dict[str, int]) -> tuple[pa.Table, list[bytes | None]]:
    fmts = part.column("format").to_pylist()
    for k, boxes in enumerate(part.column(FACE_BOXES).to_pylist()):
        if boxes and blobs[k]:
            blobs[k], fmts[k] = blur_boxes(blobs[k], boxes)
            counts["images"] += 1
            counts["faces"] += len(boxes)
    return part.set_column(part.schema.get_field_index("format"), "format", pa.array(fmts, pa.string())), blobs


def _manifest(lake: "Store", ds: Any, fmt: str, where: str | None, tbl: pa.Table, copy: np.ndarray,
              branch: str | None = None) -> dict[str, Any]:
    """What an export records of itself; ``branch``: the branch ``ds`` is a version of (None: main),
    the one its version reference named (``--version exp`` was recorded as main's)."""
    def prov(col: str) -> Any:
        return columns.field_provenance(ds.schema.field(col)) if col in ds.schema.names else None

    # (a version number names other rows on another branch)
    tags = sorted(t for t, info in ds.tags.list().items() if info["version"] == ds.version and info.get("branch") == branch)
    return {
        "source_lake": lake.uri, "branch": branch or "main", "version": ds.version, "tags": tags, "format": fmt, "where": where,
        "rows": int(len(np.unique(tbl.column("id").to_numpy(zero_copy_only=False)))) if tbl.num_rows else 0,
        "samples": int(tbl.num_rows), "repeated_samples": int((copy > 0).sum()),
        "recipe": (prov("keep") or {}).get("config"), "rebalance": (prov("rebalance_keep") or {}).get("config"),
        "order": (prov("seq_order") or {}).get("config"),
        "created_at": columns.provenance("export", {}, [], ds.version)["created_at"],
    }


def manifest_path(dest: Path, fmt: str) -> Path:
    """Where the export of ``fmt`` at ``dest`` keeps its manifest."""
    return dest / "manifest.json" if fmt in FOLDERS else Path(f"{dest}.manifest.json")


def _previous_export(dest: Path, fmt: str) -> list[Path] | None:
    """The files an earlier lakecurate export in ``fmt`` wrote at ``dest`` (from its manifest, or
    from the note of a swap killed before its manifest was in place: see :func:`_swap`), or None."""
    key = "shards"
    path = manifest_path(dest, fmt)
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        key, path = "files", _swap_note(dest, fmt)
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
    if not isinstance(old, dict) or old.get("format") != fmt or ("source_lake" not in old and key == "shards"):
        return None
    if fmt not in FOLDERS:
        return [path, dest]
    # Plain file names only: a manifest naming '../x' never makes overwrite delete outside DEST.
    names = [n for n in old.get(key) or [] if isinstance(n, str) and n not in ("", ".", "..") and n == Path(n).name]
    return [path] + [dest / n for n in names]


def _check_dest(lake: "Store", dest: str | os.PathLike, fmt: str, overwrite: bool) -> tuple[Path, list[Path] | None]:
    """(local destination, files of the earlier export that ``overwrite`` replaces): every refusal
    happens here, before the lake is read or anything is written."""
    uri = os.fspath(dest)
    if overlaps(uri, lake.uri):
        raise LakeError(f"export destination '{uri}' is inside lake '{lake.uri}' (or holds it); "
                        "choose a destination outside the lake folder")
    if "://" in uri and not uri.lower().startswith("file://"):
        raise LakeError(f"export writes to a local path, not '{uri}'; export to a folder and copy it to object storage")
    # absolute, with '.' and '..' folded: the export is staged beside it, under its parent's name for it
    path = Path(canonical_uri(uri))
    # (a name past the file system's limit was an OSError traceback; a file export's manifest and
    # swap note beside it take its name and '.manifest.json.swap')
    writable("export destination", path, beside="" if fmt in FOLDERS else _swap_note(Path("x"), fmt).name[1:])
    if fmt in FOLDERS and path.is_file():
        raise LakeError(f"'{path}' is a file; a {'WebDataset' if fmt == 'webdataset' else 'MDS'} export needs a folder")
    if fmt == "parquet" and (path.is_dir() or uri.endswith(("/", os.sep))):  # ("DIR/" made a file named DIR)
        raise LakeError(f"'{uri}' names a folder; a Parquet export is one file: give its name, e.g. {path / 'curated.parquet'}")
    return path, _existing(path, fmt, overwrite)


def _existing(path: Path, fmt: str, overwrite: bool) -> list[Path] | None:
    """The files of the earlier export at ``path`` that ``overwrite`` replaces (None: nothing is
    there, or an empty folder); a LakeError for anything else there."""
    if not path.exists() or (path.is_dir() and not any(path.iterdir())):
        return None
    if not overwrite:
        raise LakeError(f"'{path}' exists{' and is not empty' if path.is_dir() else ''}; choose another destination or pass {given('--overwrite')}")
    previous = _previous_export(path, fmt)
    other = next((f for f in FORMATS if f != fmt and previous is None and _previous_export(path, f)), None)
    if other is not None:  # ("not an earlier mds export (no manifest.json ...)" of a folder whose manifest.json names one)
        raise LakeError(f"'{path}' holds an earlier lakecurate {other} export, not a {fmt} one; {spell('--overwrite')} replaces an "
                        f"export of the same format: give {given('--format', other)}, or choose another destination")
    if previous is None:
        raise LakeError(f"'{path}' is not an earlier lakecurate {fmt} export (no {manifest_path(path, fmt).name} "
                        f"naming its files); {spell('--overwrite')} replaces only such an export: choose a new or empty destination")
    return previous


def _recheck_dest(dest: Path, fmt: str, overwrite: bool, previous: list[Path] | None) -> list[Path] | None:
    """The destination checked again just before the swap (under :func:`_dest_lock`): an export to
    the same DEST that finished while this one wrote is refused (with ``overwrite``, the one that
    is there now is replaced), never mixed with (both moved their shards in: the manifest named
    one's, the other's stayed beside them)."""
    try:
        return _existing(dest, fmt, overwrite)
    except LakeError as exc:
        raise LakeError(f"another export wrote '{dest}' while this one ran; nothing of this one was moved there: {exc}") from None


@contextmanager
def _dest_lock(dest: Path) -> Iterator[None]:
    """Held while an export checks DEST again and swaps into it: one swap at a time in DEST's
    folder (an exclusive ``flock`` of the folder; a swap only renames, so a wait is short). Where
    the file system has no such lock, the check just before the swap stands alone."""
    try:
        import fcntl

        fd = os.open(dest.parent, os.O_RDONLY)
    except (ImportError, OSError):
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:  # (NFS refuses a lock on a read-only descriptor)
            pass
        yield
    finally:
        os.close(fd)  # releases the lock


def _stage_name(dest: Path) -> str:
    """DEST's name as its staging folder's starts with: a long one cut, with a hash of the whole, so
    that ``.NAME.PID@HOST.XXXXXXXX.partial`` fits where DEST's name (up to 255 bytes) fits."""
    name = dest.name
    if len(os.fsencode(name)) <= 64:
        return name
    import hashlib

    short = os.fsencode(name)[:40].decode("utf-8", errors="ignore")
    return f"{short}~{hashlib.blake2b(os.fsencode(name), digest_size=8).hexdigest()}"


def sequence_shard_size(ds: Any) -> int | None:
    """The shard size ``sequence`` recorded with ``seq_order`` (what ``seq_shard`` counts), if any."""
    prov = columns.field_provenance(ds.schema.field("seq_order")) if "seq_order" in ds.schema.names else None
    size = ((prov or {}).get("config") or {}).get("shard_size")
    return int(size) if isinstance(size, int) and size >= 1 else None


def json_ready(part: pa.Table) -> tuple[pa.Table, dict[str, Any]]:
    """``part`` with each null replaced by one placeholder per column type, and the placeholders used.

    Every key of a sample's ``.json`` then has one JSON type in every sample: Hugging Face
    ``datasets`` infers the types from the first samples and fails on a string where it saw null.
    Placeholders: '' for text, -1 for integers (no concept, unknown size), false for flags,
    ``sample_weight`` 1.0 (no up-weighting) and -1.0 for other floats (the lowest cosine score).
    """
    out, used = [], {}
    for name, col in zip(part.column_names, part.columns):
        t = col.type
        fill: Any = None
        if pa.types.is_string(t) or pa.types.is_large_string(t):
            fill = ""
        elif pa.types.is_signed_integer(t):
            fill = -1
        elif pa.types.is_boolean(t):
            fill = False
        elif pa.types.is_floating(t):
            fill = 1.0 if name == "sample_weight" else -1.0
        if fill is not None and col.null_count:
            col = pc.fill_null(col, pa.scalar(fill, t))
            used[name] = fill
        out.append(col)
    return pa.table(out, names=part.column_names), used


# export()'s parameters that are not settings of its contents: where the rows come from and go,
# and how the work is spread (the manifest records the version and format on their own).
_NOT_SETTINGS = frozenset({"lake", "dest", "format", "version", "overwrite", "engine", "address", "progress"})


def check_options(format: str, *, engine: str = "local", shard_size: int | None = None,
                  image_ext: str | None = None, keys: bool = False) -> int | None:
    """export's options that need no lake, checked (by export before the destination is touched,
    and by a pipeline's [export] step before its first step: ``keys``, the messages name its TOML
    keys, not the CLI's options); the shard size as a whole number."""
    def opt(name: str) -> str:
        return name if keys else spell("--" + name.replace("_", "-"))
    check_engine(engine)
    if engine == "ray" and format != "webdataset":
        raise LakeError(f"{opt('engine')} ray writes WebDataset shards (one task a shard); {opt('format')} {format} is "
                        f"written by one writer: use {opt('engine')} local")
    if format not in FORMATS:
        raise LakeError(f"unknown export format {format!r}; choose from {', '.join(FORMATS)}")
    shard_size = whole(opt("shard_size"), shard_size, 1, none_ok=True)
    if format in ("parquet", "lance") and shard_size is not None:  # (accepted, and ignored)
        raise LakeError(f"{opt('shard_size')} counts WebDataset samples per shard; {opt('format')} {format} writes one "
                        f"{'file' if format == 'parquet' else 'table'}: leave it out")
    if format == "mds":
        if shard_size is not None:
            raise LakeError(f"{opt('shard_size')} is for WebDataset; MDS shards are cut by size (64 MiB each)")
        try:
            import streaming  # noqa: F401 - mosaicml-streaming's MDSWriter writes the shards
        except ImportError as exc:
            raise LakeError(f"{opt('format')} mds needs mosaicml-streaming: {MDS_INSTALL}") from exc
    if image_ext is not None:
        if format != "webdataset":
            raise LakeError(f"{opt('image_ext')} names WebDataset members; {opt('format')} {format} has none")
        if not isinstance(image_ext, str) or not re.fullmatch(r"[a-z0-9]{1,10}", image_ext):
            raise LakeError(f"{opt('image_ext')} {image_ext!r}: give an extension of lower-case letters and digits, e.g. jpg")
        if image_ext in ("txt", "json"):
            raise LakeError(f"{opt('image_ext')} {image_ext}: that member is the sample's caption or metadata; e.g. jpg")
    return shard_size


def export(lake: "Store", dest: str | Path, format: str = "webdataset", *, where: str | None = None,
           version: int | str | None = None, repeats: bool = True, caption: str = "caption",
           shard_size: int | None = None, overwrite: bool = False, allow_stale: bool = False,
           blur_faces: bool = False, caption_mix: dict[str, float] | str | None = None, mix_seed: int = 0,
           mix_both: bool = False, engine: str = "local", address: str | None = None,
           image_ext: str | None = None, progress: bool | None = None) -> ExportReport:
    """Write the chosen rows, in order and with repeats, as WebDataset shards, Parquet, Lance or
    MosaicML Streaming (MDS) shards (``format="mds"``, needs ``mosaicml-streaming``).

    ``shard_size``: WebDataset samples per shard; default the shard size of the lake's sequence
    (``lakecurate sequence --shard-size``), else 1000. Decisions that are stale (a stage re-ran
    upstream of them) are refused; ``allow_stale`` exports anyway and records the warnings in the
    manifest (``stale``). ``blur_faces``: images with faces (``img_face_boxes``, from ``lakecurate
    signals --faces``, which must be current) are written with the faces blurred, re-encoded
    (JPEG at quality 95, other formats as PNG); the others as stored. The manifest records it.
    ``caption_mix`` (``{"caption": 0.5, "caption_coca": 0.5}`` or that as text): each sample's
    caption is one of these columns, chosen per row from ``mix_seed`` and its id (:func:`mix_choice`;
    a null choice falls back to the next column), or with ``mix_both`` every non-null one as its own
    sample; ``caption_source`` says which. The manifest records the mix and the counts.
    ``image_ext`` (WebDataset): every sample's image member is ``KEY.<image_ext>`` whatever its
    format (default: by format, ``.jpg``, ``.png``...; the JSON's ``format`` always says which).
    Hugging Face ``datasets`` refuses shards whose samples differ in their members' extensions, and
    PIL-based decoders read an image by its bytes, not its name.
    ``progress``: a bar over the samples written (see :mod:`lakecurate.progress`; None: the default).
    ``engine="ray"`` (WebDataset): one Ray task writes each shard, reading the version's images
    itself (DEST must be a folder every worker can write: a shared file system); the same bytes as
    the local engine.

    Example::

        lake.export("shards/", "webdataset")             # shards/shard-000000.tar ...
        lake.export("curated.parquet", "parquet", version="basic-1a2b3c4d-v12")
        lake.export("mds/", "mds")                       # mds/index.json, mds/shard.00000.mds ...
    """
    # What decides the export's contents, as asked: its manifest records them, so a pipeline can
    # tell a changed setting from an export that is current. Read from the signature, so that a new
    # parameter is recorded unless it is listed in _NOT_SETTINGS (engine and address change no byte).
    settings = {name: value for name, value in locals().items() if name not in _NOT_SETTINGS}
    t0 = time.perf_counter()
    path("dest", dest)  # (None was a TypeError traceback)
    # (repeats="no" is true to Python: every repeat was written without a word)
    repeats, overwrite, allow_stale, blur_faces, mix_both = (
        flag(name, value) for name, value in (("repeats", repeats), ("overwrite", overwrite), ("allow_stale", allow_stale),
                                              ("blur_faces", blur_faces), ("mix_both", mix_both)))
    progress = None if progress is None else flag("progress", progress)
    check_where(where, "--where", lake.dataset(version))  # before the destination is touched
    shard_size = check_options(format, engine=engine, shard_size=shard_size, image_ext=image_ext)
    if isinstance(caption_mix, str):  # every option before the destination: one error after another, else
        caption_mix = parse_mix(caption_mix)
    elif isinstance(caption_mix, Mapping):
        caption_mix = parse_mix(",".join(f"{k}={v}" for k, v in caption_mix.items()))
    elif caption_mix is not None:  # (a float: AttributeError 'float' object has no attribute 'items')
        raise LakeError(f"invalid {spell('--caption-mix')} {caption_mix!r}: expected text such as "
                        "'caption=0.7,caption_coca=0.3' or a mapping of caption column to share")
    if caption_mix is not None and caption != "caption":
        raise LakeError(f"give either {spell('--caption')} or {spell('--caption-mix')}, not both")
    if mix_both and caption_mix is None:
        raise LakeError(f"{spell('--caption-mix-both')} needs {spell('--caption-mix')}")
    mix_seed = whole("--mix-seed", mix_seed, 0)  # ("a" was recorded in the manifest as the seed)
    if mix_seed and caption_mix is None:  # (it was ignored without a word)
        raise LakeError(f"{spell('--mix-seed')} {mix_seed} needs {spell('--caption-mix')} (it seeds the choice of caption per row)")
    if not str(dest).strip():  # "" was the working directory
        raise LakeError("the export destination is empty (''); give a folder (or a .parquet file)")
    dest, previous = _check_dest(lake, dest, format, overwrite)
    busy = _running_here(dest)  # (the later of two was refused only at its swap, after writing every sample)
    if busy:
        raise LakeError(f"another export to '{dest}' is running now ({', '.join(busy)}); nothing was written: wait for "
                        f"it to finish (then export again with {given('--overwrite')} to replace it), or export elsewhere")
    if blur_faces:
        _check_faces(lake, lake.dataset(version), allow_stale)
    ds, tbl, copy, where, stale = plan(lake, where=where, version=version, repeats=repeats, caption=caption,
                                       allow_stale=allow_stale, extra=[FACE_BOXES] if blur_faces else [],
                                       caption_mix=caption_mix)
    mixed = None
    if caption_mix is not None:
        tbl, copy, mixed = _mix(tbl, copy, caption_mix, mix_seed, mix_both)
        if mixed.get("rows_without_caption"):  # (they were left out without a word)
            k = mixed["rows_without_caption"]
            stale.append(f"{k} row{'s' if k != 1 else ''} of the view left out: every caption of the {spell('--caption-mix')} "
                         f"({', '.join(caption_mix)}) is null")
        caption = MIX_CAPTION
    if tbl.num_rows == 0:  # in every format, before a folder is made (WebDataset and MDS wrote an empty export)
        raise LakeError(f"no rows to export from lake '{lake.uri}' (version {ds.version}) with {spell('--where')} {where!r}; "
                        f"nothing was written: see what the view holds with lakecurate sql {lake.shell} "
                        "\"SELECT COUNT(*) FROM pairs WHERE ...\"")
    shard_size = shard_size or sequence_shard_size(ds) or SHARD_SIZE
    report = ExportReport(lake=lake.uri, dest=str(dest), format=format, version=ds.version, where=where,
                          samples=tbl.num_rows)
    manifest = _manifest(lake, ds, format, where, tbl, copy, branch=lake.on_branch_of(version).branch)
    manifest["allow_stale"], manifest["stale"] = allow_stale, stale
    manifest["settings"] = json.loads(json.dumps(settings, default=str))
    if mixed is not None:
        manifest["caption_mix"] = mixed
    blur = {"images": 0, "faces": 0} if blur_faces else None
    report.stale = stale
    report.rows = manifest["rows"]
    if not manifest["tags"]:  # the manifest's number is all that names it, and cleanup removes untagged versions
        on = lake.on_branch(branch := lake.on_branch_of(version).branch)
        report.notes.append(f"version {ds.version}{f' of branch {branch!r}' if branch else ''} is untagged: a later "
                            f"cleanup may remove it (the manifest names it by number only); to keep it: "
                            f"{on.command} tag {lake.shell} NAME --version {ds.version}")
    keys = [f"{k:09d}" for k in range(tbl.num_rows)]  # order in the export: webdataset sorts by key within a shard
    meta_cols = [c for c in tbl.column_names if c not in ("_rowid", "seq_order", caption, FACE_BOXES)]
    # Written into a hidden sibling folder (same file system) and moved into place when complete:
    # a failed or killed export never leaves a half-written one at DEST.
    dest.parent.mkdir(parents=True, exist_ok=True)
    report.removed_partial = _remove_partials(dest)
    # Named by its owner (pid@host), so that the next export here removes it if this one is killed.
    stage = Path(tempfile.mkdtemp(prefix=f".{_stage_name(dest)}.{os.getpid()}@{columns.host_name()}.", suffix=".partial",
                                  dir=dest.parent))
    out = stage / dest.name
    # (export read every image blob without a word, even with --progress)
    bar = progress_bar(total=tbl.num_rows, desc=f"export {format}", unit="sample", progress=progress)
    try:
        if format == "webdataset":
            out.mkdir()
            manifest["shard_size"] = shard_size
            manifest["image_ext"] = image_ext or "by format"
            manifest["json_placeholders"] = _write_shards(ds, tbl, copy, out, keys, meta_cols, caption, shard_size, report,
                                                          blur, engine=engine, lake=lake, address=address,
                                                          image_ext=image_ext, bar=bar)
            report.shards = len(report.files)
            manifest["shards"] = report.files
        elif format == "mds":
            manifest["mds"] = {"size_limit": MDS_SIZE_LIMIT, "columns": MDS_COLUMNS}
            manifest["json_placeholders"] = _write_mds(ds, tbl, copy, out, keys, meta_cols, caption, blur, bar=bar)
            report.files = sorted(p.name for p in out.iterdir())
            report.shards = sum(name.endswith(".mds") for name in report.files)
            manifest["shards"] = report.files
        else:
            _write_table(ds, tbl, copy, out, keys, meta_cols, caption, format, manifest, lake, where, blur, bar=bar)
            report.files.append(dest.name)
        if blur is not None:
            manifest["blur_faces"] = {"images_blurred": blur["images"], "faces_blurred": blur["faces"],
                                      "margin": BLUR_MARGIN, "encoding": "JPEG quality 95, other formats PNG",
                                      "faces": (columns.field_provenance(ds.schema.field(FACE_BOXES)) or {}).get("config")}
            report.blurred = blur["images"]
        if format != "lance":  # (a copied export can be checked file by file: `sha256sum -c`, or in Python)
            manifest["sha256"] = _digests(out)
        # never the name of the export itself, nor longer than it may be (DEST's name may take 255 bytes)
        staged_manifest = stage / ("manifest.json" if dest.name != "manifest.json" else "manifest.staged.json")
        staged_manifest.write_text(json.dumps(manifest, indent=2, default=str))
        report.bytes = sum(p.stat().st_size for p in ([out] if out.is_file() else out.rglob("*")) if p.is_file())
        bar.close()
        with _dest_lock(dest):  # another export to DEST ran meanwhile: refused, never mixed into DEST
            previous = _recheck_dest(dest, format, overwrite, previous)
            _swap(out, staged_manifest, dest, format, previous, stage)
    finally:
        bar.close()
        shutil.rmtree(stage, ignore_errors=True)
    report.seconds = time.perf_counter() - t0
    return report


def _digests(out: Path) -> dict[str, str]:
    """File name -> sha256 (hex) of each file an export wrote: the shards of a folder (its own
    manifest aside), or the one Parquet file."""
    import hashlib

    files = [out] if out.is_file() else sorted(p for p in out.iterdir() if p.is_file())
    got = {}
    for f in files:
        h = hashlib.sha256()
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        got[f.name] = h.hexdigest()
    return got


def _write_shards(ds: Any, tbl: pa.Table, copy: np.ndarray, out: Path, keys: list[str], meta_cols: list[str],
                  caption: str, shard_size: int, report: ExportReport, blur: dict[str, int] | None = None, *,
                  engine: str = "local", lake: "Store | None" = None, address: str | None = None,
                  image_ext: str | None = None, bar: Any = None) -> dict[str, Any]:
    """WebDataset shards of ``shard_size`` samples into ``out``; returns the json placeholders used.
    Each shard is written by :func:`write_shard` on its own rows, here or (``engine="ray"``) by a
    Ray task of its own that reads the version's images itself: the same bytes either way."""
    starts = list(range(0, tbl.num_rows, shard_size))
    names = [f"shard-{k:06d}.tar" for k in range(len(starts))]
    report.files += names
    calls = [(tbl.slice(s, shard_size), copy[s : s + shard_size], str(out / name), keys[s : s + shard_size], meta_cols,
              caption, blur is not None, image_ext) for s, name in zip(starts, names)]
    if engine == "ray":
        from lakecurate.engines import ray_task_map

        results: Any = ray_task_map(write_shard, [(lake.table_uri, ds.version, lake.storage_options, *c) for c in calls],
                                    address=address, retries=2)  # a shard is rewritten whole: safe to rerun
    else:
        results = (_write_shard(ds, *c) for c in calls)
    placeholders: dict[str, Any] = {}
    for (used, counts), call in zip(results, calls):  # (lazy: a shard is counted when it is written)
        placeholders.update(used)
        if bar is not None:
            bar.update(call[0].num_rows)
        if blur is not None:
            blur["images"] += counts["images"]
            blur["faces"] += counts["faces"]
    return placeholders


def write_shard(uri: str, version: int, storage_options: dict | None, *args: Any) -> tuple[dict[str, Any], dict[str, int]]:
    """One WebDataset shard from the rows of a lake version (what a Ray task of ``export --engine
    ray`` runs): see :func:`_write_shard`."""
    import lance

    return _write_shard(lance.dataset(uri, version=version, storage_options=storage_options), *args)


def _write_shard(ds: Any, part_tbl: pa.Table, copy: np.ndarray, path: str, keys: list[str], meta_cols: list[str],
                 caption: str, blur: bool, image_ext: str | None = None) -> tuple[dict[str, Any], dict[str, int]]:
    """The shard at ``path`` (a tar: per sample the image, the caption as .txt and the other columns
    as .json, mtime 0, so the same rows give the same bytes); (json placeholders used, blur counts)."""
    counts = {"images": 0, "faces": 0}
    placeholders: dict[str, Any] = {}
    pos = 0
    with tarfile.open(path, "w") as writer:
        for part, blobs in _chunks(ds, part_tbl, counts if blur else None):
            fmts = part.column("format").to_pylist()
            filled, used = json_ready(part.select(meta_cols))
            placeholders.update(used)
            for m, fmt, cap, img in zip(filled.to_pylist(), fmts, part.column(caption).to_pylist(), blobs):
                m["copy"] = int(copy[pos])
                ext = image_ext or _EXT.get(fmt or "", "bin")
                for suffix, data in ((ext, img or b""), ("txt", (cap or "").encode()),
                                     ("json", json.dumps(m, default=str, sort_keys=True).encode())):
                    info = tarfile.TarInfo(f"{keys[pos]}.{suffix}")
                    info.size, info.mtime, info.mode = len(data), 0, 0o644
                    writer.addfile(info, io.BytesIO(data))
                pos += 1
    return placeholders, counts


def _write_mds(ds: Any, tbl: pa.Table, copy: np.ndarray, out: Path, keys: list[str], meta_cols: list[str],
               caption: str, blur: dict[str, int] | None = None, bar: Any = None) -> dict[str, Any]:
    """MosaicML Streaming (MDS) shards into ``out`` (``index.json`` + ``shard.NNNNN.mds``), one
    sample per export sample: ``export_key``, ``caption``, ``image`` (the stored bytes), ``format``
    and ``json`` (the metadata WebDataset's .json holds). Readable by ``streaming.StreamingDataset``."""
    from streaming import MDSWriter

    placeholders: dict[str, Any] = {}
    pos = 0
    with MDSWriter(out=str(out), columns=MDS_COLUMNS, size_limit=MDS_SIZE_LIMIT, progress_bar=False) as writer:
        for part, blobs in _chunks(ds, tbl, blur):
            filled, used = json_ready(part.select(meta_cols))
            placeholders.update(used)
            fmts = part.column("format").to_pylist()
            caps = part.column(caption).to_pylist()
            for m, fmt, cap, img in zip(filled.to_pylist(), fmts, caps, blobs):
                m["copy"] = int(copy[pos])
                writer.write({"export_key": keys[pos], "caption": cap or "", "image": img or b"", "format": fmt or "",
                              "json": json.loads(json.dumps(m, default=str))})
                pos += 1
            if bar is not None:
                bar.update(part.num_rows)
    return placeholders


def _write_table(ds: Any, tbl: pa.Table, copy: np.ndarray, out: Path, keys: list[str], meta_cols: list[str],
                 caption: str, fmt: str, manifest: dict[str, Any], lake: "Store", where: str | None,
                 blur: dict[str, int] | None = None, bar: Any = None) -> None:
    """One Parquet file or Lance table at ``out``, the manifest also in its schema metadata."""
    def batches() -> Iterator[pa.RecordBatch]:
        pos = 0
        for part, blobs in _chunks(ds, tbl, blur):
            rows = part.select(meta_cols).append_column("caption", part.column(caption).cast(pa.string()))
            rows = rows.append_column("image", pa.array(blobs, pa.large_binary()))
            rows = rows.append_column("copy", pa.array(copy[pos : pos + part.num_rows], pa.int32()))
            rows = rows.append_column("export_key", pa.array(keys[pos : pos + part.num_rows], pa.string()))
            pos += part.num_rows
            if bar is not None:
                bar.update(part.num_rows)
            yield from rows.to_batches()

    gen = batches()
    head = next(gen, None)
    if head is None:
        raise LakeError(f"no rows to export from lake '{lake.uri}' with {spell('--where')} {where!r}")
    schema = head.schema.with_metadata({"lakecurate.manifest": json.dumps(manifest, default=str)})

    def all_batches() -> Iterator[pa.RecordBatch]:
        yield head
        yield from gen

    reader = pa.RecordBatchReader.from_batches(schema, (b.replace_schema_metadata(schema.metadata) for b in all_batches()))
    if fmt == "parquet":
        import pyarrow.parquet as pq

        with pq.ParquetWriter(out, schema) as w:
            for b in reader:
                w.write_batch(b)
    else:
        import lance

        lance.write_dataset(reader, str(out), mode="create")


def _stages(dest: Path) -> Iterator[tuple[Path, int, bool]]:
    """The staging folders of exports to ``dest`` made on this host (``.DEST.PID@HOST.XXXX.partial``):
    (folder, its export's pid, whether that process lives)."""
    from lakecurate.columns import host_name
    from lakecurate.engines import process_alive

    head = f".{_stage_name(dest)}."
    for stage in dest.parent.glob(f"{glob.escape(head)}*.partial"):
        owner = stage.name[len(head) : -len(".partial")].rpartition(".")[0]  # pid@host (mkdtemp's letters after)
        pid, _, on = owner.partition("@")
        if stage.is_dir() and pid.isdigit() and on == host_name() and int(pid) != os.getpid():
            yield stage, int(pid), process_alive(int(pid))


def _running_here(dest: Path) -> list[str]:
    """The other exports to ``dest`` running now on this host ("pid@host"), as their staging
    folders name them (:func:`_remove_partials` leaves those)."""
    from lakecurate.columns import host_name

    return sorted(f"{pid}@{host_name()}" for _, pid, alive in _stages(dest) if alive)


def _remove_partials(dest: Path) -> int:
    """Remove the staging folders (``.DEST.PID@HOST.XXXX.partial``) that exports to ``dest`` killed
    on this host left (a SIGKILL runs no ``finally``: up to a full copy of the data set stayed hidden
    beside DEST); one whose export is still running, or of another host, is left. Returns how many."""
    removed = 0
    for stage, _, alive in list(_stages(dest)):
        if not alive:
            shutil.rmtree(stage, ignore_errors=True)
            removed += not stage.exists()
    return removed


def _swap(out: Path, manifest: Path, dest: Path, fmt: str, previous: list[Path] | None, stage: Path) -> None:
    """Move a complete export from ``stage`` to ``dest``, replacing only what the earlier export's
    manifest lists. Its manifest goes first and the new one last, so DEST never holds a manifest
    naming files that are not there. Until the new manifest is in place a swap note beside it names
    every file the swap may leave (the earlier export's and the new one's), so a swap killed half way
    is replaced by the next ``overwrite``, not refused as someone else's files."""
    marker = _swap_note(dest, fmt)
    if fmt in FOLDERS:
        dest.mkdir(exist_ok=True)
    names = ({p.name for p in previous or [] if p.parent == dest} | {p.name for p in out.iterdir()}
             if fmt in FOLDERS else set())
    marker.write_text(json.dumps({"format": fmt, "files": sorted(names - {marker.name})}))
    for old in previous or []:  # the manifest first, then the earlier shards
        if old not in (dest, marker) and old.is_file():  # an earlier Parquet file is replaced below in one rename
            old.unlink()
    if fmt in FOLDERS:
        for shard in sorted(out.iterdir()):
            os.replace(shard, dest / shard.name)
    elif fmt == "lance" and dest.is_dir() and any(dest.iterdir()):
        os.replace(dest, stage / "previous")  # the earlier export's table, removed with the stage
        os.replace(out, dest)
    elif fmt == "lance" and dest.is_dir():  # an empty folder (maybe a shell's working one): kept, filled
        for part in sorted(out.iterdir()):
            os.replace(part, dest / part.name)
    else:
        os.replace(out, dest)  # a file: one atomic rename
    os.replace(manifest, manifest_path(dest, fmt))
    marker.unlink()


def _swap_note(dest: Path, fmt: str) -> Path:
    """Where a swap in progress names the files it may leave (see :func:`_swap`)."""
    return manifest_path(dest, fmt).with_name(manifest_path(dest, fmt).name + ".swap")
