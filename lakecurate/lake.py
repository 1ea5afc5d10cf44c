"""The lake: a directory (or object-store URI) holding Lance tables, the main one being ``pairs``.

The layout is LanceDB's: ``LAKE/pairs.lance``. So ``lancedb.connect(LAKE).open_table("pairs")`` and
``lance.dataset(LAKE + "/pairs.lance")`` open the same table this class writes, unchanged.

Example::

    lake = Lake.create("./my-lake")
    lake.ingest("sample_data/")
    lake.sql("SELECT ingest_status, COUNT(*) AS n FROM pairs GROUP BY ingest_status")
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import lance
import lance.fragment
import pandas as pd
import pyarrow as pa
from lance.commit import CommitConflictError

from lakecurate.schema import COLUMN_DOCS, PAIRS_SCHEMA, TABLE

if TYPE_CHECKING:
    from lakecurate.ingest import IngestReport

T = TypeVar("T")

# Rows per data file. Fragments of 20-50k rows keep per-fragment work (embedding, features) in
# useful units without creating thousands of small files.
ROWS_PER_FILE = 32_768


class LakeError(Exception):
    """A problem the user can fix; the message says what and how."""


def _join(uri: str, name: str) -> str:
    if "://" in uri:
        return uri.rstrip("/") + "/" + name
    return os.path.join(uri, name)


def retry_on_conflict(fn: Callable[[], T], *, attempts: int = 8, base_delay: float = 0.05) -> T:
    """Run ``fn`` (one Lance commit) again after a commit conflict, with jittered exponential backoff.

    ``fn`` must be safe to repeat: it should re-open the dataset at its latest version and commit
    work that is already computed, so a retry costs a manifest read, not a recomputation.
    """
    for attempt in range(attempts):
        try:
            return fn()
        except CommitConflictError:
            if attempt == attempts - 1:
                raise
            time.sleep(base_delay * (2**attempt) * (0.5 + random.random()))
    raise AssertionError("unreachable")


class Lake:
    """A Lance data lake of image-text pairs. Use :meth:`create` or :meth:`open`."""

    def __init__(self, uri: str | os.PathLike, storage_options: dict[str, str] | None = None):
        uri = os.fspath(uri)
        self.uri = uri if "://" in uri else os.path.abspath(uri)
        self.storage_options = storage_options
        self.table_uri = _join(self.uri, f"{TABLE}.lance")

    # ----------------------------------------------------------------- open / create
    @classmethod
    def create(cls, uri: str | os.PathLike, *, exist_ok: bool = True, **kw: Any) -> "Lake":
        """Create an empty lake (or open it if it exists and ``exist_ok``)."""
        lake = cls(uri, **kw)
        if lake.exists():
            if not exist_ok:
                raise LakeError(f"lake '{lake.uri}' already exists; open it with Lake.open")
            return lake
        if "://" not in lake.uri:
            os.makedirs(lake.uri, exist_ok=True)
        lance.write_dataset(
            PAIRS_SCHEMA.empty_table(),
            lake.table_uri,
            schema=PAIRS_SCHEMA,
            mode="create",
            storage_options=lake.storage_options,
        )
        return lake

    @classmethod
    def open(cls, uri: str | os.PathLike, **kw: Any) -> "Lake":
        """Open an existing lake; fails with a hint if there is none at ``uri``."""
        lake = cls(uri, **kw)
        if not lake.exists():
            raise LakeError(
                f"no lake at '{lake.uri}' (expected a Lance table at '{lake.table_uri}'); "
                f"create one with: lakecurate ingest {uri} SOURCE"
            )
        return lake

    def exists(self) -> bool:
        try:
            lance.dataset(self.table_uri, storage_options=self.storage_options)
            return True
        except (ValueError, OSError, FileNotFoundError):
            return False

    # ----------------------------------------------------------------- access
    def dataset(self, version: int | str | None = None) -> lance.LanceDataset:
        """The pairs table at its latest version (or at ``version``: a number or a tag)."""
        return lance.dataset(self.table_uri, version=version, storage_options=self.storage_options)

    @property
    def version(self) -> int:
        return self.dataset().version

    def count(self, where: str | None = None) -> int:
        return self.dataset().count_rows(filter=where)

    def to_pandas(
        self, columns: Sequence[str] | None = None, where: str | None = None, limit: int | None = None
    ) -> pd.DataFrame:
        """Rows as pandas. Image bytes are not read unless ``image`` is asked for by name."""
        ds = self.dataset()
        if columns is None:
            columns = [n for n in ds.schema.names if n != "image"]
        if "image" in columns:
            rest = [c for c in columns if c != "image"]
            tbl = ds.to_table(columns=rest, filter=where, limit=limit, with_row_id=True)
            df = tbl.to_pandas()
            df["image"] = self._read_blobs(ds, df.pop("_rowid").tolist())
            return df[list(columns)]
        return ds.to_table(columns=list(columns), filter=where, limit=limit).to_pandas()

    def read_images(self, ids: Sequence[str]) -> list[bytes | None]:
        """Image bytes for the given pair ids, in the same order (None where absent)."""
        ds = self.dataset()
        id_list = list(ids)
        if not id_list:
            return []
        quoted = ", ".join("'" + i.replace("'", "''") + "'" for i in id_list)
        tbl = ds.to_table(columns=["id"], filter=f"id IN ({quoted})", with_row_id=True)
        rowids = dict(zip(tbl.column("id").to_pylist(), tbl.column("_rowid").to_pylist()))
        wanted = [rowids[i] for i in id_list if i in rowids]
        blobs = dict(zip(wanted, self._read_blobs(ds, wanted)))
        return [blobs.get(rowids.get(i)) for i in id_list]

    @staticmethod
    def _read_blobs(ds: lance.LanceDataset, rowids: list[int]) -> list[bytes | None]:
        if not rowids:
            return []
        got = ds.read_blobs("image", ids=rowids, preserve_order=True)
        return [b for _, b in got]

    # ----------------------------------------------------------------- queries
    def sql(self, query: str, version: int | str | None = None, *, with_row_id: bool = False) -> pd.DataFrame:
        """Run SQL (DataFusion, through Lance) against the ``pairs`` table and return pandas.

        Example: ``lake.sql("SELECT format, COUNT(*) AS n FROM pairs GROUP BY format")``.
        The ``image`` column holds blob descriptors in SQL results; use :meth:`read_images` for bytes.
        ``with_row_id`` makes the ``_rowid`` column selectable (what ``dataset().read_blobs`` takes).
        """
        ds = self.dataset(version)
        try:
            table = ds.sql(query).table_name(TABLE).with_row_id(with_row_id).build().to_stream_reader().read_all()
        except Exception as exc:  # DataFusion reports planning errors as plain exceptions
            raise LakeError(f"SQL failed on lake '{self.uri}': {exc}".strip()) from None
        return table.to_pandas()  # no rows: an empty frame that still has the query's columns

    # ----------------------------------------------------------------- writes
    def append(self, data: pa.Table | pa.RecordBatchReader, *, overwrite: bool = False) -> int:
        """Append rows in one atomic commit and return the new version.

        ``data`` may be a stream (``pa.RecordBatchReader``): data files are written while it is
        consumed, so producing and writing overlap. The commit retries on conflicts without
        rewriting the files. ``overwrite`` makes a new version holding only ``data``; older versions
        stay readable (and their files on disk) until :meth:`cleanup`.
        """
        frags = lance.fragment.write_fragments(
            data,
            self.table_uri,
            schema=PAIRS_SCHEMA,
            mode="overwrite" if overwrite else "append",
            max_rows_per_file=ROWS_PER_FILE,
            storage_options=self.storage_options,
        )

        def commit() -> int:
            read_version = self.dataset().version
            op = (
                lance.LanceOperation.Overwrite(PAIRS_SCHEMA, frags)
                if overwrite
                else lance.LanceOperation.Append(frags)
            )
            ds = lance.LanceDataset.commit(
                self.table_uri, op, read_version=read_version, storage_options=self.storage_options
            )
            return ds.version

        return retry_on_conflict(commit)

    def existing_ids(self, sources: Sequence[str] | None = None) -> set[str]:
        """Ids already in the lake (only those from ``sources`` when given): what re-ingest skips."""
        ds = self.dataset()
        where = None
        if sources is not None:
            if not sources:
                return set()
            where = "source IN (" + ", ".join("'" + s.replace("'", "''") + "'" for s in sources) + ")"
        return set(ds.to_table(columns=["id"], filter=where).column("id").to_pylist())

    def ingest(self, source: str | os.PathLike, **options: Any) -> "IngestReport":
        """Ingest a folder, manifest or WebDataset shards; see :func:`lakecurate.ingest.ingest`."""
        from lakecurate.ingest import ingest

        return ingest(self, source, **options)

    def embed(self, model: str = "offline", **options: Any) -> Any:
        """Add embedding and score columns; see :func:`lakecurate.embed.embed`."""
        from lakecurate.embed import embed

        return embed(self, model, **options)

    def dedup(self, methods: Any = ("exact", "phash", "semantic"), **options: Any) -> Any:
        """Duplicate groups and ``dup_keep``/``dup_reason`` columns; see :func:`lakecurate.dedup.dedup`."""
        from lakecurate.dedup import dedup

        return dedup(self, [methods] if isinstance(methods, str) else list(methods), **options)

    def curate(self, recipe: Any, **options: Any) -> Any:
        """Apply a filter recipe (TOML path or dict): ``keep``/``drop_reason`` + a tag; see :func:`lakecurate.curate.curate`."""
        from lakecurate.curate import curate

        return curate(self, recipe, **options)

    def cluster(self, k: int | None = None, **options: Any) -> Any:
        """k-means concepts: ``concept``/``concept_dist`` columns; see :func:`lakecurate.concepts.cluster`."""
        from lakecurate.concepts import cluster

        return cluster(self, k, **options)

    def rebalance(self, target: float | int = 0.5, **options: Any) -> Any:
        """Per-concept budgets: ``rebalance_keep``/``sample_weight``/``repeats``; see :func:`lakecurate.concepts.rebalance`."""
        from lakecurate.concepts import rebalance

        return rebalance(self, target, **options)

    def sequence(self, mode: str = "interleave", **options: Any) -> Any:
        """A training order: ``seq_order``/``seq_shard``; see :func:`lakecurate.concepts.sequence`."""
        from lakecurate.concepts import sequence

        return sequence(self, mode, **options)

    def export(self, dest: str | os.PathLike, format: str = "webdataset", **options: Any) -> Any:
        """WebDataset / Parquet / Lance export of the chosen rows; see :func:`lakecurate.export.export`."""
        from lakecurate.export import export

        return export(self, dest, format, **options)

    def evaluate(self, view: str | None = None, **options: Any) -> Any:
        """Train a proxy on a curated view and on a random view of the same size; see :func:`lakecurate.evaluate.evaluate`."""
        from lakecurate.evaluate import evaluate

        return evaluate(self, view, **options)

    def report(self, out: str | os.PathLike, **options: Any) -> Any:
        """Write the HTML curation report (thumbnails, counts, plots); see :func:`lakecurate.report.report`."""
        from lakecurate.report import report

        return report(self, out, **options)

    def search(self, query: Any, k: int = 10, **options: Any) -> pd.DataFrame:
        """Nearest pairs to a text or an image; see :func:`lakecurate.search.search`.

        Example: ``lake.search("a dog on a beach", k=5)``
        """
        from lakecurate.search import search

        return search(self, query, k, **options)

    # ----------------------------------------------------------------- versions
    def tag(self, name: str, version: int | None = None) -> None:
        """Name a version (default: the latest) so it can be reopened later; ~1 ms, metadata only."""
        ds = self.dataset()
        ds.tags.create(name, version if version is not None else ds.version)

    def cleanup(self, older_than: timedelta = timedelta(days=7)) -> dict[str, int]:
        """Delete files only referenced by untagged versions older than ``older_than``.

        Overwrites and compactions keep the old files (time travel) until this runs.
        """
        stats = self.dataset().cleanup_old_versions(older_than=older_than)
        return {"bytes_removed": stats.bytes_removed, "old_versions": stats.old_versions}

    def info(self) -> dict[str, Any]:
        """Rows, columns (with provenance of derived columns), versions and tags."""
        ds = self.dataset()
        columns = []
        for field in ds.schema:
            meta = {k.decode(): v.decode() for k, v in (field.metadata or {}).items()}
            prov = meta.get("lakecurate.provenance")
            columns.append(
                {
                    "name": field.name,
                    "type": "blob" if field.name == "image" else str(field.type),
                    "doc": COLUMN_DOCS.get(field.name, ""),
                    "provenance": json.loads(prov) if prov else None,
                }
            )
        status = ds.to_table(columns=["ingest_status"]).column("ingest_status").value_counts()
        tags = {name: t["version"] for name, t in ds.tags.list().items()}
        versions = ds.versions()
        return {
            "uri": self.uri,
            "table": TABLE,
            "rows": ds.count_rows(),
            "version": ds.version,
            "n_versions": len(versions),
            "last_commit": _iso(versions[-1]["timestamp"]) if versions else None,
            "fragments": len(ds.get_fragments()),
            "status_counts": {s["values"]: s["counts"] for s in status.to_pylist()},
            "columns": columns,
            "tags": tags,
        }


def _iso(ts: datetime) -> str:
    return ts.isoformat(timespec="seconds")
