"""Export the curated set for training: WebDataset shards, Parquet, or a new Lance table.

Every writer gets the same rows in the same order (``plan``): the rows chosen by ``where``
(default ``rebalance_keep``, else ``keep``, else every row whose image is usable), ordered by
``seq_order`` when the lake has one (else table order), each row written ``repeats`` times when the
lake has that column (copy r of every row comes after all copies r - 1, so repeats are spread over
the export rather than bunched). Image bytes are exported as stored, never re-encoded.

Each export carries a manifest (``manifest.json`` in a WebDataset folder, ``DEST.manifest.json``
beside a Parquet file or Lance table): source lake and version, the selection, the recipe and
rebalance provenance, counts.

    lakecurate export ./lake out/ --format webdataset --version basic-1a2b3c4d-v12
"""

from __future__ import annotations

import io
import json
import tarfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lakecurate import columns
from lakecurate.lake import LakeError
from lakecurate.schema import default_view

if TYPE_CHECKING:
    from lakecurate.lake import Lake

FORMATS = ("webdataset", "parquet", "lance")
_EXT = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tiff", "MPO": "jpg"}
META = ["id", "source", "key", "width", "height", "format", "content_hash"]
OPTIONAL = ["concept", "sample_weight", "dup_group", "drop_reason"]
CHUNK = 512


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan(lake: "Lake", *, where: str | None = None, version: int | str | None = None, repeats: bool = True,
         caption: str = "caption") -> tuple[Any, pa.Table, np.ndarray, str | None]:
    """(dataset, metadata table of the chosen rows in export order, copy index per sample, where).

    The table has one row per *sample* (a row with repeats 3 appears 3 times)."""
    ds = lake.dataset(version)
    names = ds.schema.names
    if where is None:
        where = default_view(names) or "ingest_status != 'error'"
    if caption not in names:
        raise LakeError(f"no column '{caption}' in lake '{lake.uri}' to export as the caption")
    cols = list(dict.fromkeys(META + [caption] + [c for c in OPTIONAL + ["seq_order", "repeats"] if c in names]))
    emb = [n[: -len("_score")] for n in names if n.endswith("_score") and columns.field_provenance(ds.schema.field(n))]
    cols += [f"{e}_score" for e in emb]
    try:
        tbl = ds.to_table(columns=cols, filter=where, with_row_id=True)
    except Exception as exc:  # a bad filter is the user's to fix
        raise LakeError(f"cannot select rows with --where {where!r} in lake '{lake.uri}': {exc}") from None
    order = np.arange(tbl.num_rows)
    if "seq_order" in tbl.column_names:
        seq = pc.fill_null(tbl.column("seq_order"), np.iinfo(np.int64).max).to_numpy()
        order = np.argsort(seq, kind="stable")
    tbl = tbl.take(pa.array(order))
    reps = (pc.fill_null(tbl.column("repeats"), 1).to_numpy() if repeats and "repeats" in tbl.column_names
            else np.ones(tbl.num_rows, np.int64))
    reps = np.maximum(reps, 1)
    take, copy = [], []
    for r in range(int(reps.max(initial=1))):  # copy r of every row after all copies r - 1
        rows = np.flatnonzero(reps > r)
        take.append(rows)
        copy.append(np.full(len(rows), r))
    idx = np.concatenate(take) if take else np.zeros(0, np.int64)
    return ds, tbl.take(pa.array(idx)), (np.concatenate(copy) if copy else np.zeros(0, np.int64)), where


def _chunks(ds: Any, tbl: pa.Table) -> Iterator[tuple[pa.Table, list[bytes | None]]]:
    rowids = tbl.column("_rowid").to_pylist()
    for s in range(0, tbl.num_rows, CHUNK):
        ids = rowids[s : s + CHUNK]
        blobs = [b for _, b in ds.read_blobs("image", ids=ids, preserve_order=True)] if ids else []
        yield tbl.slice(s, CHUNK), blobs


def _manifest(lake: "Lake", ds: Any, fmt: str, where: str | None, tbl: pa.Table, copy: np.ndarray) -> dict[str, Any]:
    def prov(col: str) -> Any:
        return columns.field_provenance(ds.schema.field(col)) if col in ds.schema.names else None

    tags = [t for t, info in ds.tags.list().items() if info["version"] == ds.version]
    return {
        "source_lake": lake.uri, "version": ds.version, "tags": tags, "format": fmt, "where": where,
        "rows": int(len(np.unique(tbl.column("id").to_numpy(zero_copy_only=False)))) if tbl.num_rows else 0,
        "samples": int(tbl.num_rows), "repeated_samples": int((copy > 0).sum()),
        "recipe": (prov("keep") or {}).get("config"), "rebalance": (prov("rebalance_keep") or {}).get("config"),
        "order": (prov("seq_order") or {}).get("config"),
        "created_at": columns.provenance("export", {}, [], ds.version)["created_at"],
    }


def export(lake: "Lake", dest: str | Path, format: str = "webdataset", *, where: str | None = None,
           version: int | str | None = None, repeats: bool = True, caption: str = "caption",
           shard_size: int = 1000, overwrite: bool = False) -> ExportReport:
    """Write the chosen rows, in order and with repeats, as WebDataset shards, Parquet or Lance.

    Example::

        lake.export("shards/", "webdataset")             # shards/shard-000000.tar ...
        lake.export("curated.parquet", "parquet", version="basic-1a2b3c4d-v12")
    """
    t0 = time.perf_counter()
    if format not in FORMATS:
        raise LakeError(f"unknown export format {format!r}; choose from {', '.join(FORMATS)}")
    dest = Path(dest)
    if dest.exists() and not overwrite and (dest.is_file() or any(dest.iterdir())):
        raise LakeError(f"'{dest}' exists and is not empty; choose another destination or pass --overwrite")
    ds, tbl, copy, where = plan(lake, where=where, version=version, repeats=repeats, caption=caption)
    report = ExportReport(lake=lake.uri, dest=str(dest), format=format, version=ds.version, where=where,
                          samples=tbl.num_rows)
    manifest = _manifest(lake, ds, format, where, tbl, copy)
    report.rows = manifest["rows"]
    keys = [f"{k:09d}" for k in range(tbl.num_rows)]  # order in the export: webdataset sorts by key within a shard
    meta_cols = [c for c in tbl.column_names if c not in ("_rowid", "seq_order", caption)]
    if format == "webdataset":
        dest.mkdir(parents=True, exist_ok=True)
        writer, shard, pos = None, -1, 0
        try:
            for part, blobs in _chunks(ds, tbl):
                meta = part.select(meta_cols).to_pylist()
                caps = part.column(caption).to_pylist()
                for m, cap, img in zip(meta, caps, blobs):
                    if pos % shard_size == 0:
                        if writer is not None:
                            writer.close()
                        shard += 1
                        name = dest / f"shard-{shard:06d}.tar"
                        report.files.append(name.name)
                        writer = tarfile.open(name, "w")
                    key = keys[pos]
                    m["copy"] = int(copy[pos])
                    ext = _EXT.get(m.get("format") or "", "bin")
                    for suffix, data in ((ext, img or b""), ("txt", (cap or "").encode()),
                                         ("json", json.dumps(m, default=str, sort_keys=True).encode())):
                        info = tarfile.TarInfo(f"{key}.{suffix}")
                        info.size, info.mtime, info.mode = len(data), 0, 0o644
                        writer.addfile(info, io.BytesIO(data))
                    pos += 1
        finally:
            if writer is not None:
                writer.close()
        report.shards = shard + 1
        (dest / "manifest.json").write_text(json.dumps({**manifest, "shards": report.files}, indent=2, default=str))
    else:
        def batches() -> Iterator[pa.RecordBatch]:
            pos = 0
            for part, blobs in _chunks(ds, tbl):
                out = part.select(meta_cols).append_column("caption", part.column(caption).cast(pa.string()))
                out = out.append_column("image", pa.array(blobs, pa.large_binary()))
                out = out.append_column("copy", pa.array(copy[pos : pos + part.num_rows], pa.int32()))
                out = out.append_column("export_key", pa.array(keys[pos : pos + part.num_rows], pa.string()))
                pos += part.num_rows
                yield from out.to_batches()

        gen = batches()
        head = next(gen, None)
        if head is None:
            raise LakeError(f"no rows to export from lake '{lake.uri}' with --where {where!r}")
        schema = head.schema.with_metadata({"lakecurate.manifest": json.dumps(manifest, default=str)})

        def all_batches() -> Iterator[pa.RecordBatch]:
            yield head
            yield from gen

        reader = pa.RecordBatchReader.from_batches(schema, (b.replace_schema_metadata(schema.metadata) for b in all_batches()))
        if format == "parquet":
            import pyarrow.parquet as pq

            dest.parent.mkdir(parents=True, exist_ok=True)
            with pq.ParquetWriter(dest, schema) as w:
                for b in reader:
                    w.write_batch(b)
        else:
            import lance

            lance.write_dataset(reader, str(dest), mode="overwrite" if overwrite else "create")
        report.files.append(dest.name)
        Path(f"{dest}.manifest.json").write_text(json.dumps(manifest, indent=2, default=str))
    report.bytes = sum(p.stat().st_size for p in ([dest] if dest.is_file() else dest.rglob("*")) if p.is_file())
    report.seconds = time.perf_counter() - t0
    return report
