"""``lakecurate serve``: browse, search and review a lake in the browser.

The app is built on **Starlette** (served by **uvicorn**): the small, well-kept ASGI toolkit
FastAPI and FiftyOne's app server stand on. It needs no database, no build step for its pages
(Jinja2 templates, already the report's) and runs the blocking Lance reads of plain ``def``
endpoints in its thread pool, so one slow query does not stall other browsers. Assets are served by
the app itself: it works offline.

What a page costs does not grow with the lake: a view (filter + sort) is turned once into the row
addresses it shows, in order (cached, keyed by the data files of the columns it reads, so a
review committed meanwhile does not invalidate a view that does not read review columns); a page
is a ``take`` of 48 of those addresses; thumbnails are decoded on demand from the row's image blob
and cached (a row address names one stored image for as long as its fragment exists).

Security: binds 127.0.0.1 by default; any other host needs a token (``--token``, or one is made and
printed in the URL); with a token every request needs it (a cookie set from ``?token=`` or an
``Authorization: Bearer`` header). Writes need the CSRF token of the page (and the token), come
from the app's own origin and are refused with ``--read-only``. On a loopback bind the Host header
must name the loopback (no DNS rebinding). Images are served by integer row address only; SQL goes
through the read-only checks of ``lakecurate sql`` with a row limit and a timeout.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import hmac
import ipaddress
import json
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lakecurate import review
from lakecurate.errors import LakeError
from lakecurate.graph import where_columns
from lakecurate.images import open_header, thumbnail_jpeg, too_large
from lakecurate.names import DECISIONS
from lakecurate.options import given, half_the_memory, is_number, spell, unicode
from lakecurate.sqlcheck import check_query, check_where, clean_message, in_list, literal

if TYPE_CHECKING:
    import socket

    import lance

    from lakecurate.store import Store as Lake  # (any Store: the facade is not needed)

PAGE = 48  # rows a grid page shows
SQL_ROWS = 1000  # rows a query from the UI may return
QUERY_SECONDS = 20.0  # a filter or query from the UI that runs longer is abandoned with a 504
SQL_WORKERS = 2  # SQL queries from the UI at once, in a pool of their own (the grid's is never theirs)
SQL_MAX_MEMORY: float | None = None  # bytes a UI query may take (None: half the machine's memory)
THUMB_PX = 160
FACET_SYNC_ROWS = 200_000  # above this, filter menus are counted in the background (a first page never scans)
LATEST_SECONDS = 1.0  # how stale "latest" may be for readers (another process's commit shows within this)
THUMBS_CACHED = 20_000  # ~5 KB each: ~100 MB at most
VIEWS_CACHED = 64
SEARCH_K = 200
FACETS = ("drop_reason", "dup_reason", "ingest_status", "review_verdict", "review_label")
STATIC = Path(__file__).parent / "static"
TEMPLATES = Path(__file__).parent / "templates"
COOKIE = "lakecurate_token"
IMAGE_TYPES = {b"\xff\xd8\xff": "image/jpeg", b"\x89PNG": "image/png", b"GIF8": "image/gif", b"RIFF": "image/webp",
               b"BM": "image/bmp"}
PLACEHOLDER = (b'<svg xmlns="http://www.w3.org/2000/svg" width="160" height="120"><rect width="160" height="120" '
               b'fill="#ddd"/><text x="80" y="64" font-size="13" text-anchor="middle" fill="#777">no image</text></svg>')
# Columns never shown in a grid cell (vectors and blobs: the pair view shows their shape)
_VECTOR = (pa.types.is_fixed_size_list, pa.types.is_list, pa.types.is_large_list, pa.types.is_binary,
           pa.types.is_large_binary, pa.types.is_struct)


def is_loopback(host: str) -> bool:
    """Whether ``host`` binds only this machine (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class _LRU:
    """A small thread-safe LRU map."""

    def __init__(self, size: int) -> None:
        self.size, self.data, self.lock = size, OrderedDict(), threading.Lock()

    def get(self, key: Any) -> Any:
        with self.lock:
            if key in self.data:
                self.data.move_to_end(key)
                return self.data[key]
        return None

    def put(self, key: Any, value: Any) -> Any:
        with self.lock:
            self.data[key] = value
            self.data.move_to_end(key)
            while len(self.data) > self.size:
                self.data.popitem(last=False)
        return value

    def clear(self) -> None:
        with self.lock:
            self.data.clear()


def _scalar(t: pa.DataType) -> bool:
    t = t.storage_type if isinstance(t, pa.ExtensionType) else t  # (the image blob: an extension of a struct)
    return not any(is_(t) for is_ in _VECTOR)


def _check_sort(ds: "lance.LanceDataset", sort: str) -> None:
    if sort not in schema(ds).names or not _scalar(schema(ds).field(sort).type):
        raise LakeError(f"cannot sort by {sort!r}: not a scalar column of this version")


def column_key(ds: "lance.LanceDataset", names: list[str]) -> tuple:
    """What the values of ``names`` at ``ds`` depend on: per fragment, the data files that hold them
    and the deletion file (from the manifest; no data read). Equal keys, equal values."""
    ids: set[int] = set()
    for n in names:
        stack = [ds.lance_schema.field(n)]
        while stack:
            f = stack.pop()
            if f is None:
                continue
            ids.add(f.id())
            stack.extend(f.children())
    out = []
    for frag in ds.get_fragments():
        md = frag.metadata
        files = tuple(sorted(df.path for df in md.files if ids & set(df.fields)))
        dele = md.deletion_file
        out.append((frag.fragment_id, files, None if dele is None else (dele.id, dele.read_version)))
    return tuple(out)


_SCHEMAS = _LRU(256)


def schema(ds: "lance.LanceDataset") -> pa.Schema:
    """``ds.schema``, once per version (Lance builds the Arrow schema anew on every access: ~0.5 ms)."""
    key = (ds.uri, ds.version)
    got = _SCHEMAS.get(key)
    return got if got is not None else _SCHEMAS.put(key, ds.schema)


def exists(ds: "lance.LanceDataset", *addrs: int) -> bool:
    """Whether row addresses name rows of ``ds`` (their fragments exist and hold those offsets)."""
    a = np.asarray(addrs, np.uint64)
    for fid in np.unique(a >> np.uint64(32)).tolist():
        frag = ds.get_fragment(int(fid))
        if frag is None or int((a[(a >> np.uint64(32)) == fid] & np.uint64(0xFFFFFFFF)).max()) >= frag.physical_rows:
            return False
    return True


class Browser:
    """The app's state over one lake: caches, the token and CSRF secret, the query pool."""

    def __init__(self, lake: "Lake", *, read_only: bool = False, token: str | None = None, version: str | None = None,
                 require_token: bool = False, host: str = "127.0.0.1", port: int = 8765,
                 labels: list[str] | None = None) -> None:
        self.lake, self.read_only, self.version = lake, read_only, version
        self.token = token
        self.require_token = require_token or token is not None
        self.host, self.port = host, port
        self.secret = secrets.token_bytes(32)
        self.csrf = hmac.new(self.secret, b"csrf", hashlib.sha256).hexdigest()
        self.views = _LRU(VIEWS_CACHED)
        self.thumbs = _LRU(THUMBS_CACHED)
        self.facets = _LRU(VIEWS_CACHED)
        self.queries: dict[str, np.ndarray] = {}  # image queries by id (vectors, not files)
        self.pool = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="lakecurate-query")
        # SQL has a pool of its own: a query past its time goes on until its next batch (DataFusion
        # cannot be interrupted inside one), and four such queries held the grid's pool, every
        # filter and sort a 504, for as long as they ran. A slot is free once its query has ended.
        self.sql_pool = concurrent.futures.ThreadPoolExecutor(SQL_WORKERS, thread_name_prefix="lakecurate-sql")
        self.sql_slots = threading.BoundedSemaphore(SQL_WORKERS)
        self.write_lock = threading.Lock()  # reviews from this server one at a time (others retry on conflict)
        self.prefetch = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="lakecurate-thumbs")
        self.pending: dict[tuple[int, int], concurrent.futures.Future] = {}
        self.pending_lock = threading.Lock()
        self.counting: dict[Any, concurrent.futures.Future] = {}
        self._latest: tuple[float, Any] | None = None
        self._image_files: dict[int, tuple] = {}  # fragment id -> its image data files, at the latest seen
        self._meta: tuple[float, dict[str, Any]] | None = None
        if labels is not None and read_only:
            raise LakeError(f"{spell('--labels')} writes the lake's review labels; leave it out with {given('--read-only')}")
        if version is not None:
            self.dataset(None)  # a --version that is not one is an error before the server starts
        if labels is not None:  # (after every check: a failed start had replaced the labels)
            review.set_labels(self.reader(None), labels)  # the served branch's own (a branch's view read its own)

    # ------------------------------------------------------------------ data
    def dataset(self, ref: str | None) -> "lance.LanceDataset":
        """The version a request asks for (``?v=``), else the pinned one, else the latest: looked up
        at most every :data:`LATEST_SECONDS` (this server's own writes refresh it at once)."""
        ref = ref or self.version
        if ref:
            return self.lake.dataset(ref)  # (a number's text too: a tag of that name is refused as ambiguous)
        return self.latest()

    def pin(self, ref: str | None, number: int) -> int | str:
        """What opens version ``number`` of the view ``ref`` (a number, tag, branch, ``branch:number``
        or None: the lake's own) again through the server's lake, for what takes a version (search,
        SQL, diff): the number on the lake's branch, or ``branch:number`` for another branch's view
        (a bare number is looked up on the lake's own branch: a branch's view searched main's
        version of that number)."""
        if isinstance(ref, str) and not is_number(ref):
            branch, _ = self.lake._ref(ref)
            return f"{branch or 'main'}:{number}"
        return number

    def branch_of(self, ref: str | None) -> tuple["Lake", bool]:
        """(the lake on the branch of view ``ref``, whether the view is that branch's latest)."""
        ref = ref or self.version
        if not ref:
            return self.lake, True
        if not isinstance(ref, str) or is_number(ref):  # a number: the lake's own branch, a fixed version
            return self.lake, False
        branch, number = self.lake._ref(ref)  # (one look at the tags and branches a request)
        return self.lake.on_branch(branch), number is None

    def reader(self, ref: str | None) -> "Lake":
        """The lake on the branch of view ``ref`` (its review log and labels are that branch's)."""
        return self.branch_of(ref)[0]

    def writer(self, ref: str | None) -> "Lake":
        """The lake a review made on view ``ref`` is written to: the server's lake for its latest, a
        branch's for that branch's latest; a view of a fixed version (a number, a tag,
        ``branch:number``) is refused, since its page would go on showing the old verdicts."""
        lake, latest = self.branch_of(ref)
        if not latest:
            raise LakeError(f"this page shows version {ref or self.version}, not the latest: marks go to a branch's latest "
                            "version; pick 'latest' (or a branch) in the version menu to review")
        return lake

    def fresh(self) -> "lance.LanceDataset | None":
        """The latest as :meth:`latest` last looked it up, while that is recent; None otherwise (what
        the event loop may ask without waiting for a read)."""
        got = self._latest
        return got[1] if got is not None and time.monotonic() - got[0] <= LATEST_SECONDS else None

    def latest(self) -> "lance.LanceDataset":
        now = time.monotonic()
        got = self._latest
        if got is None or now - got[0] > LATEST_SECONDS:
            got = self._latest = (now, self.lake.dataset())
            self._check_images(got[1])
        return got[1]

    def _check_images(self, ds: "lance.LanceDataset") -> None:
        """Empty the thumbnail cache (keyed by row address) when a fragment id now holds other image
        files: the lake was made again at its path (a fragment id names one stored image file for
        the life of a lake, never reused; a new lake counts from 0 again), and the grid showed the
        old lake's pictures under the new rows."""
        files = {fid: f for fid, f, _ in column_key(ds, ["image"])}
        if any(self._image_files.get(fid, f) != f for fid, f in files.items()):
            self.thumbs.clear()
        self._image_files = files

    def meta(self) -> dict[str, Any]:
        """Lake-wide facts a page shows (tags, branches, review labels), looked up at most every
        :data:`LATEST_SECONDS`."""
        now = time.monotonic()
        got = self._meta
        if got is None or now - got[0] > LATEST_SECONDS:
            ds = self.latest()
            got = self._meta = (now, {"tags": {n: t["version"] for n, t in ds.tags.list().items()},
                                      # the latest numbers (listing versions reads every manifest;
                                      # a number cleaned up since says so when picked)
                                      "versions": list(range(ds.version, max(0, ds.version - 30), -1)),
                                      "branches": sorted(self.lake.branches()), "labels": review.labels(self.lake)})
        return got[1]

    def wrote(self) -> None:
        self._latest = self._meta = None

    def timed(self, fn: Callable[[], Any], what: str) -> Any:
        fut = self.pool.submit(fn)
        try:
            return fut.result(timeout=QUERY_SECONDS)
        except concurrent.futures.TimeoutError:
            raise QueryTimeout(f"{what} ran longer than {QUERY_SECONDS:.0f} s; narrow it down") from None

    def run_sql(self, query: str, at: int | str) -> Any:
        """A query from the UI's SQL page, in the SQL pool, stopped past :data:`QUERY_SECONDS` (at its
        next batch); a :class:`Busy` while every SQL slot holds a query that has not ended."""
        if not self.sql_slots.acquire(blocking=False):
            raise Busy(f"SQL is busy: {SQL_WORKERS} queries are still running (one past its time ends at its "
                       "next batch of rows); try again in a moment")
        stop = threading.Event()

        def run() -> Any:
            try:
                # (bounded: a query of a few rows can take the server's memory, `unnest(range(...))`)
                memory = SQL_MAX_MEMORY if SQL_MAX_MEMORY is not None else half_the_memory()
                return self.lake.sql(query, version=at, limit=SQL_ROWS, stop=stop, max_memory=memory)
            finally:
                self.sql_slots.release()

        try:
            fut = self.sql_pool.submit(run)
        except BaseException:
            self.sql_slots.release()
            raise
        try:
            return fut.result(timeout=QUERY_SECONDS)
        except concurrent.futures.TimeoutError:
            stop.set()
            raise QueryTimeout(f"the query ran longer than {QUERY_SECONDS:.0f} s and is being stopped; "
                               "narrow it down (a WHERE, fewer joins) or add a LIMIT") from None

    def condition(self, ds: "lance.LanceDataset", params: dict[str, str]) -> str | None:
        """The SQL condition of a grid's filters (each checked as ``lakecurate sql`` checks them)."""
        names = schema(ds).names
        parts = []
        if params.get("where"):
            parts.append(check_where(params["where"], "where", ds))
        for key, column in (("reason", None), ("flag", "ingest_status"), ("concept", "concept"),
                            ("group", "dup_group"), ("verdict", "review_verdict"), ("label", "review_label")):
            value = params.get(key)
            if not value:
                continue
            if key == "reason":
                column, _, value = value.partition(":")
                if column not in [d.reason for d in DECISIONS if d.reason]:
                    raise LakeError(f"reason filter {params[key]!r}: name a reason column and a value (drop_reason:caption_length)")
            if column not in names:
                raise LakeError(f"this version of the lake has no column {column!r} to filter on")
            if key == "concept":
                if not value.lstrip("-").isdigit():
                    raise LakeError(f"concept {value!r} is not a concept number")
                parts.append(f"concept = {int(value)}")
            elif value == "(none)":
                parts.append(f"{column} IS NULL")
            else:
                parts.append(f"{column} = {literal(value)}")
        return " AND ".join(f"({p})" for p in parts) or None

    def view(self, ds: "lance.LanceDataset", cond: str | None, sort: str | None, desc: bool) -> np.ndarray:
        """Row addresses of a filtered, sorted view, in order (cached by the data they depend on)."""
        names = schema(ds).names
        if sort:
            _check_sort(ds, sort)
        read = where_columns(cond, names) + ([sort] if sort else [])
        key = (column_key(ds, read), cond, sort, desc)
        got = self.views.get(key)
        if got is not None:
            return got

        def run() -> np.ndarray:
            tbl = ds.to_table(columns=[sort] if sort else [], filter=cond, with_row_address=True)
            addr = tbl.column("_rowaddr").to_numpy()
            if sort:
                order = pc.array_sort_indices(tbl.column(sort), order="descending" if desc else "ascending",
                                              null_placement="at_end").to_numpy()
                addr = addr[order]
            return addr

        try:
            return self.views.put(key, self.timed(run, "the filter"))
        except QueryTimeout:
            raise
        except LakeError:
            raise
        except Exception as exc:  # DataFusion's planning/runtime errors, as lakecurate sql reports them
            raise LakeError(f"cannot select rows with {cond!r}: {clean_message(exc)}") from None

    def sorted_hits(self, ds: "lance.LanceDataset", addrs: np.ndarray, sort: str, desc: bool) -> np.ndarray:
        """A search's row addresses sorted by ``sort`` (ties: nearest first; nulls last)."""
        _check_sort(ds, sort)
        if not len(addrs):
            return addrs
        values = ds._take_rows(np.asarray(addrs, np.uint64).tolist(), columns=[sort]).column(sort)
        order = pc.array_sort_indices(values, order="descending" if desc else "ascending", null_placement="at_end")
        return np.asarray(addrs)[order.to_numpy()]

    def rows(self, ds: "lance.LanceDataset", addrs: np.ndarray, columns: list[str]) -> list[dict[str, Any]]:
        """The rows at ``addrs`` (in that order): ``columns`` plus ``_rowaddr``."""
        if not len(addrs):
            return []
        if not exists(ds, *addrs):
            raise _Http(404, f"no such row in version {ds.version}")
        tbl = ds._take_rows(np.asarray(addrs, np.uint64).tolist(), columns=columns)
        out = tbl.to_pylist()
        for r, a in zip(out, addrs):
            r["_rowaddr"] = int(a)
        return out

    def facet(self, ds: "lance.LanceDataset", column: str) -> list[tuple[str, int]] | None:
        """Values of a column with their counts (most common first; at most 200), for the filter
        menus. On a table above :data:`FACET_SYNC_ROWS` rows the count runs in the background and
        this returns None until it is done (the page does not wait for a scan of every row)."""
        if column not in schema(ds).names:
            return []
        key = (column_key(ds, [column]), column)
        got = self.facets.get(key)
        if got is not None:
            return got

        def count() -> list[tuple[str, int]]:
            vc = ds.to_table(columns=[column]).column(0).value_counts().to_pylist()
            out = sorted(((("(none)" if v["values"] is None else str(v["values"])), v["counts"]) for v in vc),
                         key=lambda kv: (-kv[1], kv[0]))[:200]
            return self.facets.put(key, out)

        if ds.count_rows() <= FACET_SYNC_ROWS:
            return count()
        with self.pending_lock:
            if key not in self.counting:
                self.counting[key] = fut = self.prefetch.submit(count)
                fut.add_done_callback(lambda _: self.counting.pop(key, None))
        return None

    def cached_thumb(self, addr: int, px: int) -> bytes | None:
        """A thumbnail from the cache, or from a prefetch in flight (waited for); None if neither."""
        got = self.thumbs.get((addr, px))
        if got is None:
            with self.pending_lock:
                fut = self.pending.get((addr, px))
            if fut is not None:
                fut.result()
                got = self.thumbs.get((addr, px))
        return got

    def thumb(self, ds: "lance.LanceDataset", addr: int, px: int = THUMB_PX) -> bytes | None:
        """JPEG bytes of a row's thumbnail (None where there is no decodable image), cached."""
        if not exists(ds, addr):
            return None
        self._decode(ds, [addr], px)
        return self.thumbs.get((addr, px)) or None

    def _decode(self, ds: "lance.LanceDataset", addrs: list[int], px: int) -> None:
        todo = [a for a in addrs if self.thumbs.get((a, px)) is None]
        if todo:
            for a, (_, data) in zip(todo, ds.read_blobs("image", addresses=todo, preserve_order=True)):
                self.thumbs.put((a, px), (thumbnail_jpeg(data, px, oversample=1) if data else None) or b"")

    def prefetch_thumbs(self, ds: "lance.LanceDataset", addrs: list[int], px: int = THUMB_PX) -> None:
        """Decode a page's thumbnails in the background, in one blob read: the browser asks for them
        right after the page, and finds them cached (or waits for this, not for a read of its own)."""
        with self.pending_lock:
            todo = [a for a in addrs if (a, px) not in self.pending and self.thumbs.get((a, px)) is None]
            if not todo:
                return
            fut = self.prefetch.submit(self._decode, ds, todo, px)
            for a in todo:
                self.pending[(a, px)] = fut

        def done(_: Any) -> None:
            with self.pending_lock:
                for a in todo:
                    if self.pending.get((a, px)) is fut:
                        del self.pending[(a, px)]

        fut.add_done_callback(done)

    def search_vector(self, version: int | str, query: Any, where: str | None) -> np.ndarray:
        """Row addresses of the nearest rows to ``query`` in ``version`` (:meth:`pin`)."""
        from lakecurate.search import search

        df = search(self.lake, query, SEARCH_K, version=version, where=where, columns=["id"], row_address=True)
        return df["_rowaddr"].to_numpy().astype(np.uint64)

    def warm(self) -> None:
        """Load the lake's encoder in the background, so the first search does not wait for it."""
        def load() -> None:
            try:
                from lakecurate.names import pick_embedding
                from lakecurate.search import encoder_for

                ds = self.dataset(None)
                _, prov = pick_embedding(self.lake, ds, need=None)
                if prov is not None:
                    encoder_for(prov)
            except Exception:  # a lake without (or with several) embeddings: search says so when asked
                pass

        threading.Thread(target=load, daemon=True, name="lakecurate-warm").start()
        ds = self.dataset(None)
        for column in FACETS:  # the filter menus of the first page, counted before anyone asks
            self.facet(ds, column)


class QueryTimeout(LakeError):
    """A query from the UI that ran past :data:`QUERY_SECONDS`."""


class Busy(LakeError):
    """Every slot for this kind of query is taken: try again (a 503)."""


# ---------------------------------------------------------------------- the app
def create_app(lake: "Lake", **options: Any) -> Any:
    """The Starlette app over ``lake`` (see :class:`Browser` for ``options``)."""
    from jinja2 import Environment, FileSystemLoader, select_autoescape
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    b = Browser(lake, **options)
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html", "j2"]))
    env.filters["short"] = _short
    page_t = env.get_template("serve.html.j2")

    def guard(request: Request, *, write: bool = False, same_page: bool = False) -> None:
        """Refuse a request from another host name, without the token (when one is needed), or
        (``write``: it changes the lake; ``same_page``: it costs the server, an upload) without the
        page's CSRF token or from another origin."""
        if b.host and is_loopback(b.host):
            host = (request.headers.get("host") or "").rsplit(":", 1)[0].strip("[]")
            if host and not is_loopback(host):
                raise _Http(400, f"Host {host!r} is not this machine; open http://127.0.0.1:{b.port}/")
        if b.require_token:
            given = request.cookies.get(COOKIE) or request.query_params.get("token") or ""
            auth = request.headers.get("authorization", "")
            if auth.lower().startswith("bearer "):
                given = auth[7:].strip()
            if not hmac.compare_digest(given.encode(), (b.token or "").encode()):
                raise _Http(401, "this lake needs its token: open the URL lakecurate serve printed (?token=...)")
        if write and b.read_only:
            raise _Http(403, "this server is read-only (--read-only): nothing is written")
        if write or same_page:
            sent = request.headers.get("x-csrf-token", "")
            if not hmac.compare_digest(sent.encode(), b.csrf.encode()):
                raise _Http(403, "missing or wrong CSRF token: reload the page")
            origin = request.headers.get("origin")
            if origin and origin.split("://", 1)[-1] != request.headers.get("host"):
                raise _Http(403, f"a write from another origin ({origin}) is refused")

    def html(request: Request, template_vars: dict[str, Any], status: int = 200) -> Any:
        ctx = {"csrf": b.csrf, "read_only": b.read_only, "lake": lake.uri, "labels": b.meta()["labels"],
               "q": dict(request.query_params), "urlencode": urlencode, **template_vars}
        ctx["q"].pop("token", None)
        resp = HTMLResponse(page_t.render(**ctx), status_code=status)
        resp.headers["Content-Security-Policy"] = ("default-src 'self'; img-src 'self' data:; style-src 'self'; "
                                                   "script-src 'self'; object-src 'none'; frame-ancestors 'none'")
        resp.headers["X-Content-Type-Options"] = "nosniff"
        token = request.query_params.get("token")
        if token and b.token and hmac.compare_digest(token.encode(), b.token.encode()):
            resp.set_cookie(COOKIE, token, httponly=True, samesite="strict")
        return resp

    def endpoint(fn: Callable[..., Any], *, write: bool = False, kind: str = "html") -> Callable[..., Any]:
        def run(request: Request) -> Any:
            try:
                guard(request, write=write)
                return fn(request)
            except _Http as exc:
                return _error(request, exc.status, exc.message, kind)
            except QueryTimeout as exc:
                return _error(request, 504, str(exc), kind)
            except Busy as exc:
                return _error(request, 503, str(exc), kind)
            except LakeError as exc:
                return _error(request, 400, str(exc), kind)

        return run

    def _error(request: Request, status: int, message: str, kind: str) -> Any:
        if status == 401:  # nothing of the lake (not even the page's CSRF token) before the token
            return Response(message, status_code=401, media_type="text/plain")
        if kind == "json":
            return JSONResponse({"error": message}, status_code=status)
        if kind == "bytes":
            return Response(message, status_code=status, media_type="text/plain")
        return html(request, {"view": "error", "title": "error", "message": message}, status)

    def common(request: Request) -> tuple[Any, dict[str, Any]]:
        v = request.query_params.get("v") or None
        ds = b.dataset(v)
        names = schema(ds).names
        meta = b.meta()
        scalars = [f.name for f in schema(ds) if _scalar(f.type) and f.name != "image"]
        lake, latest = b.branch_of(v)  # marks go to this branch's latest: only offered on its latest
        labels = meta["labels"] if lake is b.lake else review.labels(lake)
        return ds, {"version": ds.version, "latest": b.latest().version, "tags": meta["tags"], "branches": meta["branches"],
                    "versions": meta["versions"], "writable": latest, "labels": labels,
                    "facets": {}, "scalars": scalars, "has": set(names)}

    def grid(request: Request) -> Any:
        p = dict(request.query_params)
        ds, ctx = common(request)
        ctx["facets"] = {c: b.facet(ds, c) for c in FACETS if c in ctx["has"]}  # the filter menus: the grid's alone
        cond = b.condition(ds, p)
        shown = [c for c in (p.get("cols") or "").split(",") if c in ctx["scalars"]]
        title = "rows"
        if p.get("q") or p.get("qimg"):
            if p.get("qimg"):
                vec = b.queries.get(p["qimg"])
                if vec is None:
                    raise LakeError("that image query has expired: search again")
                query: Any = vec
                title = "nearest to your image"
            else:
                query = p["q"][:500]
                title = f"nearest to “{query}”"
            at = b.pin(p.get("v") or b.version, ds.version)
            addrs = b.timed(lambda: b.search_vector(at, query, cond), "the search")
            if p.get("sort"):  # the nearest rows, in the order the sort menu shows (it was ignored)
                addrs = b.sorted_hits(ds, addrs, p["sort"], p.get("desc") == "1")
        elif cond is None and not p.get("sort"):
            addrs = None  # the whole table in storage order: a page is a scan with offset and limit
        else:
            addrs = b.view(ds, cond, p.get("sort") or None, p.get("desc") == "1")
        total = len(addrs) if addrs is not None else ds.count_rows()
        pages = max(1, -(-total // PAGE))
        page = min(max(0, _int(p.get("page"), 0)), pages - 1)
        cols = _grid_columns(ds, shown)
        if addrs is None:
            rows = ds.to_table(columns=cols, offset=page * PAGE, limit=PAGE, with_row_address=True).to_pylist()
            for r in rows:
                r["_rowaddr"] = int(r["_rowaddr"])
        else:
            rows = b.rows(ds, addrs[page * PAGE:(page + 1) * PAGE], cols)
        b.prefetch_thumbs(ds, [r["_rowaddr"] for r in rows])
        return html(request, {**ctx, "view": "grid", "title": title, "rows": rows, "total": total, "page": page,
                              "pages": pages, "shown": shown, "where": cond})

    def pair(request: Request) -> Any:
        ds, ctx = common(request)
        addr = _addr(request.path_params["addr"])
        cols = [n for n in schema(ds).names if n != "image"]
        rows = b.rows(ds, np.array([addr]), cols)
        if not rows:
            raise _Http(404, f"row {addr} is not in version {ds.version}")
        row = rows[0]
        from lakecurate.columns import describe_provenance, field_provenance

        fields = []
        for f in schema(ds):
            if f.name == "image":
                continue
            v = row.get(f.name)
            if v is not None and not _scalar(f.type):
                v = f"[{len(v)} values]" if hasattr(v, "__len__") else str(v)
            prov = field_provenance(f, strict=False)
            fields.append({"name": f.name, "value": v, "prov": describe_provenance(prov) if prov else ""})
        return html(request, {**ctx, "view": "pair", "title": row.get("key") or row.get("id"), "row": row,
                              "fields": fields})

    def group(request: Request) -> Any:
        ds, ctx = common(request)
        value = request.query_params.get("g", "")
        if "dup_group" not in ctx["has"] or not value:
            raise LakeError("this version has no duplicate groups (run: lakecurate dedup LAKE)")
        addrs = b.view(ds, f"dup_group = {literal(value)}", "dup_keep", True)
        rows = b.rows(ds, addrs[:PAGE * 4], _grid_columns(ds, ["dup_keep", "dup_reason", "dup_group_size"]))
        return html(request, {**ctx, "view": "group", "title": f"duplicate group {value}", "rows": rows,
                              "total": len(addrs), "shown": ["dup_keep", "dup_reason"]})

    def concept(request: Request) -> Any:
        ds, ctx = common(request)
        k = _int(request.path_params["k"], None)
        if "concept" not in ctx["has"] or k is None:
            raise LakeError("this version has no concepts (run: lakecurate cluster LAKE)")
        cond = f"concept = {k}"
        near = b.view(ds, cond, "concept_dist", False)
        far = near[::-1]
        cols = _grid_columns(ds, ["concept_dist"])
        return html(request, {**ctx, "view": "concept", "title": f"concept {k}", "total": len(near),
                              "nearest": b.rows(ds, near[:24], cols), "farthest": b.rows(ds, far[:24], cols),
                              "shown": ["concept_dist"], "concepts": b.facet(ds, "concept")})

    def cut(request: Request) -> Any:
        ds, ctx = common(request)
        steps = b.timed(lambda: _cuts(b, ds), "the recipe's dry run")
        return html(request, {**ctx, "view": "cut", "title": "either side of the recipe's cuts", "steps": steps,
                              "shown": ["drop_reason"]})

    def diff(request: Request) -> Any:
        from lakecurate.compare import diff as view_diff

        a = request.query_params.get("a") or ""
        bb = request.query_params.get("b") or None
        ds, ctx = common(request)
        if not a:
            return html(request, {**ctx, "view": "diff", "title": "compare two views", "d": None})
        d = b.timed(lambda: view_diff(b.lake, int(a) if is_number(a) else a,
                                      int(bb) if bb and is_number(bb) else bb, examples=PAGE), "the diff")
        ds_a, ds_b = b.lake.dataset(b.pin(a, d.version_a)), b.lake.dataset(b.pin(bb, d.version_b))
        return html(request, {**ctx, "view": "diff", "title": f"{d.a} → {d.b}", "d": d,
                              "added": _by_ids(b, ds_b, d.added_ids), "removed": _by_ids(b, ds_a, d.removed_ids),
                              "shown": []})

    def sql(request: Request) -> Any:
        ds, ctx = common(request)
        query = request.query_params.get("sql", "")
        result = None
        if query:
            check_query(query)
            at = b.pin(request.query_params.get("v") or b.version, ds.version)
            df = b.run_sql(query, at)
            result = {"columns": list(df.columns), "rows": df.astype(object).where(df.notna(), None).values.tolist()[:SQL_ROWS],
                      "limit": SQL_ROWS}
        return html(request, {**ctx, "view": "sql", "title": "SQL", "sql": query, "result": result})

    async def thumb(request: Request) -> Any:
        # On the event loop: a cached thumbnail is answered without a hop to the thread pool.
        try:
            guard(request)
            px = min(max(_int(request.query_params.get("px"), THUMB_PX), 32), 1024)
            addr = _addr(request.path_params["addr"])
        except _Http as exc:
            return Response(exc.message, status_code=exc.status, media_type="text/plain")
        # A row address names one stored image for as long as its fragment exists (Lance never reuses
        # fragment ids and lakecurate never rewrites images), so the cached picture needs no version;
        # whether the row is in the version asked for does, and is checked on every request (a hit
        # served rows of no version: ?v=1 before any row, ?v=nonsense, a fragment gone by a restore).
        ref = request.query_params.get("v")
        ds = None if ref or b.version else b.fresh()  # the latest as last looked up: no I/O on the loop
        jpeg = (b.thumbs.get((addr, px)) if exists(ds, addr) else b"") if ds is not None else None
        state = "hit"
        if jpeg is None:
            from starlette.concurrency import run_in_threadpool

            def load() -> tuple[bytes | None, str]:
                at = ds if ds is not None else b.dataset(ref)
                if not exists(at, addr):
                    return b"", "absent"
                if (got := b.thumbs.get((addr, px))) is not None:
                    return got, "hit"
                got = b.cached_thumb(addr, px)  # a prefetch of the page in flight: wait for it
                if got is not None:
                    return got, "prefetch"
                return b.thumb(at, addr, px) or b"", "miss"

            try:
                jpeg, state = await run_in_threadpool(load)
            except LakeError as exc:
                return Response(str(exc), status_code=400, media_type="text/plain")
        cache = {"X-Cache": state}
        if not jpeg:  # no bytes, bytes that do not decode (an ingest error), no such row there: a placeholder
            return Response(PLACEHOLDER, media_type="image/svg+xml", headers={"X-Thumbnail": "none", **cache})
        return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600", **cache})

    def image(request: Request) -> Any:
        ds = b.dataset(request.query_params.get("v"))
        addr = _addr(request.path_params["addr"])
        if not exists(ds, addr):
            return Response(status_code=404)
        blobs = list(ds.read_blobs("image", addresses=[addr], preserve_order=True))
        data = blobs[0][1] if blobs else None
        if not data:
            return Response(status_code=404)
        try:
            with open_header(data) as im:
                size = (im.width, im.height) if too_large(im) else None
        except Exception:  # (not an image Pillow reads: sent as it is, the browser's to show or not)
            size = None
        if size is not None:  # a decompression bomb ingest refused: the reviewer's browser decoded it
            return Response(f"image of {size[0]}x{size[1]} pixels: more than lakecurate decodes or shows",
                            status_code=422, media_type="text/plain")
        kind = next((t for magic, t in IMAGE_TYPES.items() if data.startswith(magic)), "application/octet-stream")
        return Response(data, media_type=kind, headers={"Content-Disposition": "inline", "X-Content-Type-Options": "nosniff"})

    async def search_image(request: Request) -> Any:
        try:
            guard(request, same_page=True)  # any page could post an upload to a loopback server
            body = await _body(request, UPLOAD_BYTES)
        except _Http as exc:
            return JSONResponse({"error": exc.message}, status_code=exc.status)
        if not body:
            return JSONResponse({"error": "send one image (at most 20 MB) as the request body"}, status_code=400)
        from starlette.concurrency import run_in_threadpool

        try:
            vec = await run_in_threadpool(_image_vector, b, body, request.query_params.get("v"))
        except LakeError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        qid = secrets.token_hex(8)
        b.queries[qid] = vec
        while len(b.queries) > 100:
            b.queries.pop(next(iter(b.queries)))
        return JSONResponse({"url": "/?" + urlencode({"qimg": qid, **({"v": request.query_params["v"]} if request.query_params.get("v") else {})})})

    async def api_review(request: Request) -> Any:
        return await _json_write(request, lambda body: _mark(b, body))

    async def api_undo(request: Request) -> Any:
        return await _json_write(request, lambda body: _undo(b, body))

    async def _json_write(request: Request, fn: Callable[[dict[str, Any]], Any]) -> Any:
        try:
            guard(request, write=True)
            raw = await _body(request, JSON_BYTES)
        except _Http as exc:
            return JSONResponse({"error": exc.message}, status_code=exc.status)
        try:
            body = json.loads(raw or b"{}")
            if not isinstance(body, dict):
                raise ValueError
        except ValueError:
            return JSONResponse({"error": "send a JSON object"}, status_code=400)
        except RecursionError:  # ([ nested 100,000 deep: within the size limit, past Python's stack)
            return JSONResponse({"error": "send a JSON object (this one is nested too deep)"}, status_code=400)
        from starlette.concurrency import run_in_threadpool

        try:
            return JSONResponse(await run_in_threadpool(fn, body))
        except LakeError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)

    def api_history(request: Request) -> Any:
        v = request.query_params.get("v") or None
        return JSONResponse({"actions": review.history(b.reader(v)), "counts": review.counts(b.dataset(v))})

    def login(request: Request) -> Any:  # ?token= sets the cookie, then the grid without the token in the URL
        resp = RedirectResponse("/", status_code=303)
        token = request.query_params.get("token", "")
        if b.token and hmac.compare_digest(token.encode(), b.token.encode()):
            resp.set_cookie(COOKIE, token, httponly=True, samesite="strict")
        return resp

    routes = [
        Route("/", endpoint(grid)),
        Route("/login", endpoint(login)),
        Route("/pair/{addr}", endpoint(pair)),
        Route("/group", endpoint(group)),
        Route("/concept/{k}", endpoint(concept)),
        Route("/cut", endpoint(cut)),
        Route("/diff", endpoint(diff)),
        Route("/sql", endpoint(sql)),
        Route("/thumb/{addr}", thumb),
        Route("/image/{addr}", endpoint(image, kind="bytes")),
        Route("/api/search-image", search_image, methods=["POST"]),
        Route("/api/review", api_review, methods=["POST"]),
        Route("/api/undo", api_undo, methods=["POST"]),
        Route("/api/history", endpoint(api_history, kind="json")),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(routes=routes)
    app.state.browser = b
    return _timed(app)


def _timed(app: Any) -> Any:
    """The app with a ``Server-Timing: app;dur=MS`` header on every response: the time the server
    spent from the request to the response's start (what a load test compares with what clients see)."""
    async def wrapped(scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await app(scope, receive, send)
        t0 = time.perf_counter()

        async def timed_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                dur = f"app;dur={(time.perf_counter() - t0) * 1000:.1f}".encode()
                message = {**message, "headers": [*message.get("headers", []), (b"server-timing", dur)]}
            await send(message)

        await app(scope, receive, timed_send)

    wrapped.state = app.state  # (tests and the CLI reach the Browser through app.state)
    wrapped.app = app
    return wrapped


UPLOAD_BYTES = 20 * 2**20  # an image search's upload
JSON_BYTES = 2**20  # a review's or an undo's JSON


async def _body(request: Any, limit: int) -> bytes:
    """The request's body, read until ``limit`` bytes: a 413 beyond (a declared length is refused
    before anything is read; the whole body was read into memory, then measured)."""
    declared = request.headers.get("content-length", "")
    what = "an image of at most 20 MB" if limit == UPLOAD_BYTES else f"at most {limit // 1024} KB of JSON"
    if declared.isdigit() and int(declared) > limit:
        raise _Http(413, f"the request is {int(declared):,} bytes; send {what}")
    parts, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _Http(413, f"the request is over {limit:,} bytes; send {what}")
        parts.append(chunk)
    return b"".join(parts)


class _Http(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def _image_vector(b: Browser, body: bytes, view: str | None) -> np.ndarray:
    from PIL import Image

    from lakecurate.images import MAX_DECODE_PIXELS
    from lakecurate.names import pick_embedding
    from lakecurate.search import encoder_for, query_vector

    _, prov = pick_embedding(b.lake, b.dataset(view), need="image search compares against them")
    enc = encoder_for(prov)
    too_many = "that image has more pixels than the server decodes; upload a smaller copy of it"
    try:  # decoded here, in the page's words (the library's named --text (text=True), the command line's)
        with open_header(body) as im:
            if too_large(im):  # (decoded up to Pillow's own error, twice the limit the stages keep)
                raise LakeError(f"{too_many} ({im.width}x{im.height}; at most {MAX_DECODE_PIXELS} pixels)")
            rgb = im.convert("RGB")
    except Image.DecompressionBombError:
        raise LakeError(too_many) from None
    except (OSError, ValueError) as exc:  # UnidentifiedImageError is an OSError
        raise LakeError(f"that file is not an image the server can read ({type(exc).__name__}); upload a JPEG, "
                        "PNG, GIF, WebP or BMP file, or type words in the search box") from None
    return np.asarray(query_vector(enc, rgb))


def _mark(b: Browser, body: dict[str, Any]) -> dict[str, Any]:
    ids = body.get("ids")
    if not isinstance(ids, list):
        raise LakeError("send ids: a list of pair ids")
    lake = b.writer(_view(body))
    with b.write_lock:
        try:
            return review.mark(lake, ids, verdict=body.get("verdict"), reason=body.get("reason"),
                               label=body.get("label"), by=body.get("by"), read_only=b.read_only)
        finally:
            b.wrote()


def _undo(b: Browser, body: dict[str, Any]) -> dict[str, Any]:
    lake = b.writer(_view(body))
    with b.write_lock:
        try:
            return review.undo(lake, str(body.get("action", "")), by=body.get("by"), read_only=b.read_only)
        finally:
            b.wrote()


def _view(body: dict[str, Any]) -> str | None:
    """The view a review was made on (the page's ``?v=``, sent as ``v``)."""
    v = body.get("v")
    if v is not None and not isinstance(v, str):
        raise LakeError("send v: the page's version (text), or leave it out")
    return unicode("v (the page's version)", v) if v else None


def _int(value: Any, default: Any) -> Any:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _addr(text: str) -> int:
    """A row address from a URL: digits only (no path, no name, nothing else reaches Lance)."""
    if not text.isdigit() or len(text) > 20:
        raise _Http(404, "rows are addressed by number")
    value = int(text)
    if value >= 2**64:
        raise _Http(404, "rows are addressed by number")
    return value


def _short(value: Any, n: int = 120) -> str:
    s = "" if value is None else (f"{value:.4g}" if isinstance(value, float) else str(value))
    return s if len(s) <= n else s[: n - 1] + "…"


def _grid_columns(ds: "lance.LanceDataset", shown: list[str]) -> list[str]:
    names = schema(ds).names
    base = ["id", "key", "caption", "ingest_status", "keep", "drop_reason", "dup_group", "dup_keep", "concept",
            "review_verdict", "review_reason", "review_label", "review_by"]
    return list(dict.fromkeys([c for c in base + shown if c in names]))


def _by_ids(b: Browser, ds: "lance.LanceDataset", ids: list[str]) -> list[dict[str, Any]]:
    if not ids:
        return []
    tbl = ds.to_table(columns=["id"], filter=f"id IN ({in_list(ids)})", with_row_address=True)
    at = dict(zip(tbl.column("id").to_pylist(), tbl.column("_rowaddr").to_pylist()))
    addrs = np.array([at[i] for i in ids if i in at], np.uint64)
    return b.rows(ds, addrs, _grid_columns(ds, []))


def _cuts(b: Browser, ds: "lance.LanceDataset") -> list[dict[str, Any]]:
    """The current recipe's thresholded steps with the rows just below and above each cut (what the
    report shows: :func:`lakecurate.curate.explain_version` of the recipe that wrote ``keep``, on this
    version; nothing computed, nothing written; cached per version)."""
    from lakecurate.curate import explain_version, recipe_of

    rec = recipe_of(ds)
    if rec is None:
        raise LakeError("this version has no recipe decisions (run: lakecurate curate LAKE basic)")
    key = ("cuts", ds.uri, ds.version)
    got = b.facets.get(key)
    if got is not None:
        return got
    out = []
    for s in explain_version(ds, rec, near=12):
        if not s.cut:
            continue
        sides = {}
        for side in ("below", "above"):
            value = {r["id"]: r["value"] for r in getattr(s, side)}
            sides[side] = _by_ids(b, ds, list(value))
            for row in sides[side]:
                v = value.get(row["id"])
                row["_note"] = f"{s.cut['label']} {v:.4g}" if v is not None else None
        out.append({"reason": s.reason, "cut": s.cut, "dropped": s.dropped, **sides})
    return b.facets.put(key, out)


def serve(lake: "Lake", *, host: str = "127.0.0.1", port: int = 8765, read_only: bool = False,
          token: str | None = None, version: str | None = None, labels: list[str] | None = None,
          echo: Callable[[str], None] = print) -> None:
    """Run the app until interrupted. A host other than the loopback needs a token: ``token``, or
    one is generated and printed in the URL."""
    import uvicorn

    if not (0 < port < 65536):
        raise LakeError(f"{spell('--port')} {port}: choose 1-65535")
    if not is_loopback(host) and not token:
        token = secrets.token_urlsafe(24)
    if token is not None and len(token) < 16:
        raise LakeError(f"{spell('--token')}: use at least 16 characters (or leave it out: one is generated)")
    sock = _bind(host, port)  # before the URL is announced: a port in use was announced, then failed
    try:
        app = create_app(lake, read_only=read_only, token=token, version=version, host=host, port=port, labels=labels)
    except BaseException:
        sock.close()
        raise
    app.state.browser.warm()
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    url = f"http://{shown}:{port}/" + (f"login?token={token}" if token else "")
    echo(f"lakecurate: serving {lake.uri} at {url}" + (" (read-only)" if read_only else "") + " — Ctrl+C stops")
    with _stop_on_signal():
        try:
            uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False)).run(sockets=[sock])
        except (KeyboardInterrupt, _Stopped):  # uvicorn shuts down, then raises the signal again: the stop asked
            pass                               # for (Ctrl+C: click said "Aborted!", exit 1)


class _Stopped(Exception):
    """SIGTERM while serving (``kill``, ``docker stop``, systemd): a stop like Ctrl+C, not a run cut short."""


class _stop_on_signal:
    """SIGTERM and Ctrl+C stop the server quietly, exit 0 (the program's own handlers said "what was
    committed is kept: run the same command again", exit 143 or 130: uvicorn puts back the handler it
    found and raises the signal again). Only in the main thread, where signal handlers live (a test
    serving from a thread keeps its own)."""

    def __enter__(self) -> None:
        import signal

        self.before: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            self.before = {sig: signal.signal(sig, self._stop) for sig in (signal.SIGTERM, signal.SIGINT)}

    @staticmethod
    def _stop(signum: int, frame: Any) -> None:
        raise _Stopped()

    def __exit__(self, *exc: Any) -> None:
        import signal

        for sig, handler in self.before.items():
            signal.signal(sig, handler)


def _bind(host: str, port: int) -> "socket.socket":
    """A socket bound to (host, port) for the server to listen on, or a one-line LakeError."""
    import socket

    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise LakeError(f"{spell('--host')} {host}: {exc.strerror}; give a name or address of this machine "
                        "(127.0.0.1 for this machine only, 0.0.0.0 for every network)") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise LakeError(f"{spell('--port')} {port} on {host}: {exc.strerror}; pick another {spell('--port')}, or stop what uses it") from None
    return sock
