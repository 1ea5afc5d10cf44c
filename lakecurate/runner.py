"""The one stage runner: a per-row stage is a spec; the runner owns everything else.

A stage (embed, image and caption signals, redaction, a user feature) is a :class:`RowStage`: the
fields it writes, its config (-> provenance), the columns it reads, a ``setup()`` run once per
process or Ray actor (load a model), an optional ``image(blobs)`` run in the reader processes
(decode, preprocess), an optional ``prepare(columns)`` run there too (tokenize captions), and a
pure ``batch(state, rows) -> pa.Table``. :func:`run` then:

1. declares the fields (metadata only; same config: no-op; ``recompute``: drop and re-declare);
2. picks the fragments that have no data file for them (new rows, a killed run's rest), and
   those whose values are stale (``graph.stale_fragments``: an input rewritten since, as a caption
   updated with Lance; merged by a compaction with rows that had none): only those are computed
   again, their files replaced (``DataReplacement`` of the stage's fields; where they share a file
   with other columns, as after a Lance ``update``, Lance marks them gone from it);
3. reads each fragment in batches of live rows, in spawned reader processes (Lance is not
   fork-safe; they die with their parent) when the stage decodes images, inline otherwise;
4. runs ``batch`` and keeps every finished batch in a checkpoint (``columns.Checkpoint``) until
   its fragment commits, so a ``kill -9`` loses at most the batches in flight;
5. commits each fragment alone (``columns.fill_fragment``: ``DataReplacement``, retried on
   conflict) and reports progress.

``engine="ray"``: a pool of Ray actors, each running ``setup()`` once, reads, computes,
checkpoints and commits whole fragments the same way.

Example::

    stage = RowStage("caption-length", [pa.field("cap_len", pa.int32())], {"v": 1}, ["caption"],
                     batch=lambda state, rows: pa.table({"cap_len": pc.utf8_length(rows.columns["caption"])}))
    run(lake, stage)
"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import multiprocessing
import os
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import lance
import numpy as np
import pyarrow as pa

from lakecurate import columns
from lakecurate.errors import LakeError, Terminated
from lakecurate.images import RefusedImage
from lakecurate.options import spell
from lakecurate.schema import PAIRS_SCHEMA

if TYPE_CHECKING:
    from lakecurate.engines import RayActors
    from lakecurate.store import Store

IMAGE = "image"
STATUS, FLAGS = "ingest_status", "ingest_flags"
# A run asked for a stage's columns by another stage (curate needs the caption signals) waits for
# the fragments another run of that stage is computing, polling this often; see :func:`waiting`.
WAIT_POLL = 0.5
_WAITING = [False]


@contextlib.contextmanager
def waiting() -> Iterator[None]:
    """Runs started inside wait for the fragments they leave to another run of their stage (its
    claims: :class:`~lakecurate.columns.FragmentClaims`) to be filled, taking over those whose run
    ends without filling them. A command run by itself leaves them and says so; a stage that
    needs the columns (the facade's producers) must not go on without them: a curate beside
    another curate found the signal columns declared and empty, judged no row and tagged an
    empty view."""
    before = _WAITING[0]
    _WAITING[0] = True
    try:
        yield
    finally:
        _WAITING[0] = before


NAME_OPTION = "with another --name"  # RowStage.own_column of a stage that takes --name (embed, recaption): own_words() words it


@dataclass
class Rows:
    """One batch of a fragment's live rows, as a stage's ``batch()`` gets it."""

    columns: pa.RecordBatch  # the input columns (``image`` as bytes, unless the stage decodes it)
    images: Any = None       # what the stage's ``image(blobs)`` made of these rows' images, if it has one
    fragment: int = -1
    start: int = 0           # live-row offset of the first row in its fragment
    offsets: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # physical offsets
    prepared: Any = None     # what the stage's ``prepare(columns)`` made of these rows, if it has one

    @property
    def num_rows(self) -> int:
        return len(self.offsets)


@dataclass
class RowStage:
    """A per-row stage: what it writes, from what, and its pure per-batch function.

    ``batch(state, rows)`` returns a table of exactly ``fields`` (names, one row per input row),
    or a :class:`Deferred` of one: either engine then hands ``batch`` the next rows before it asks
    for the table, so a device computes one batch while this process prepares the next;
    ``state`` is what ``setup()`` returned (None without one). ``image``, when given, is a picklable
    function of a batch's encoded images (``list[bytes | None]``) run in the reader processes; its
    result arrives as ``rows.images`` and ``image`` is then not among ``rows.columns``.
    ``prepare``, when given, is a picklable function of a batch's input columns run where they are
    read (the reader processes, or a Ray actor); its result arrives as ``rows.prepared``: work taken
    off the process that feeds a device (tokenizing captions for a GPU, say).
    ``device``: the torch device a model stage's ``setup()`` loads its model on, as asked (auto,
    cpu, cuda, cuda:N, mps; None: no model); on Ray it decides the actors (one a GPU, each given
    its own, with cuda, or auto on a cluster with GPUs: :func:`lakecurate.engines.gpu_actors`).
    Provenance is ``columns.provenance(name, config, sources or inputs, version)`` plus ``extra``.
    """

    name: str
    fields: list[pa.Field]
    config: dict[str, Any]
    inputs: list[str]
    batch: Callable[[Any, Rows], pa.Table]
    setup: Callable[[], Any] | None = None
    image: Callable[[list], Any] | None = None
    prepare: Callable[[pa.RecordBatch], Any] | None = None
    batch_size: int = 4096
    readers_do_all: bool = False  # the work is all in ``image()``: as many readers as cores, not half
    sources: list[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    desc: str = ""
    unit: str = "row"
    # the declare error's way out, when it is not the default; a function of none words it when refused
    # (in the words of the interface speaking: a stage built at import could not know them)
    fix: "str | Callable[[], str] | None" = None
    # (recorded config, this run's) -> whether they are one config though their hashes differ (an
    # embedding's weights file or a captioner's checkpoint recorded by its path before configs
    # recorded it by name, or found at another path)
    same_config: Callable[[dict[str, Any], dict[str, Any]], bool] | None = None
    # How a run writes a column of its own when another run re-declared this one meanwhile ("with
    # another --name"); None for a stage whose columns have fixed names (signals).
    own_column: str | None = None
    device: str | None = None

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.fields]

    @property
    def checkpoint_key(self) -> str:
        """Its checkpoint folder: by config, so another config never resumes from these batches."""
        return f"{self.name}-{self.names[0]}-{self.provenance(0)['config_hash']}"

    def provenance(self, version: int) -> dict[str, Any]:
        return {**columns.provenance(self.name, self.config, self.sources or self.inputs, version), **self.extra}


class Deferred:
    """A batch's table, still being computed (on a GPU, say): ``result()`` waits for it."""

    def __init__(self, fn: Callable[[], pa.Table]):
        self._fn = fn

    def result(self) -> pa.Table:
        return self._fn()


def result(out: "pa.Table | Deferred") -> pa.Table:
    """What a stage's ``batch`` returned, as a table (waiting for it if it is :class:`Deferred`)."""
    return out.result() if isinstance(out, Deferred) else out


def readers_output(state: Any, rows: Rows) -> pa.Table:
    """The ``batch`` of a stage whose ``image()`` computes every field in the reader processes
    (where the decode runs): it only hands the readers' table on."""
    return rows.images


@dataclass
class RunReport:
    """What :func:`run` did. ``counts``: non-null values per field over the rows computed and resumed;
    ``sums`` and ``nonzero``: per integer field of at most 32 bits (a count, not a hash), the sum
    and the count of non-zero values there."""

    fragments_total: int = 0
    fragments: int = 0
    rows: int = 0
    rows_resumed: int = 0
    versions: list[int] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    sums: dict[str, int] = field(default_factory=dict)
    nonzero: dict[str, int] = field(default_factory=dict)
    setup_seconds: float = 0.0
    seconds: float = 0.0
    fragments_elsewhere: int = 0  # left to another run of the stage computing them now (FragmentClaims)
    rows_refreshed: int = 0  # rows of the fragments taken because their values were stale (graph.stale_fragments)
    elsewhere: list[str] = field(default_factory=list)  # those runs: "host pid"

    @property
    def computed(self) -> int:
        """Rows that have this run's values now: computed, or resumed from a killed run's checkpoint."""
        return self.rows + self.rows_resumed

    def to_dict(self) -> dict[str, Any]:
        """What a command prints of a run with ``--json`` (the one serialisation of a run's report):
        rows computed (resumed ones included), of them refreshed and resumed, fragments done and
        left to another run (and whose), seconds."""
        return {"rows_computed": self.computed, "rows_refreshed": self.rows_refreshed, "rows_resumed": self.rows_resumed,
                "fragments": self.fragments, "fragments_elsewhere": self.fragments_elsewhere,
                "elsewhere": list(self.elsewhere), "seconds": round(self.seconds, 3)}


def default_workers(all_cores: bool = False, beside_gpu: bool = False) -> int:
    """Reader processes: half the cores (the stage's own work uses the rest), one to eight; every
    core for a stage whose work the readers do; ``beside_gpu``: all cores but two (this process
    feeds the GPU and commits), since one core decodes ~200-350 photos/s and a GPU embeds
    thousands (docs/scale.md)."""
    if beside_gpu:
        return max(1, (os.cpu_count() or 2) - 2)
    return max(1, min(8, (os.cpu_count() or 2) // (1 if all_cores else 2)))


# --------------------------------------------------------------------------- reading (any process)
_READER: dict[str, Any] = {}


def _init_reader(table_uri: str, version: int, storage_options: dict | None, stage: RowStage,
                 parent: int = 0) -> None:
    if parent:  # a spawned reader (``parent``: the run's pid): it must not outlive a run that was killed
        import signal

        from lakecurate.engines import die_with_parent

        die_with_parent(parent)
        # Ctrl-C in a terminal reaches the whole process group: the run stops its readers itself (each
        # printed a KeyboardInterrupt traceback before the run's one line)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        # One native thread per reader: the readers already take the cores, and detectors that
        # spread over every core (OpenMP in yuface, OpenCV's pool) fight each other, which made
        # 2 readers run faces at 33 img/s where one thread each gives ~90.
        for var in ("OMP_NUM_THREADS", "OPENCV_FOR_THREADS_NUM"):
            os.environ.setdefault(var, "1")
    _READER["ds"] = lance.dataset(table_uri, version=version, storage_options=storage_options)
    _READER["stage"] = stage


def _read(item: tuple[int, int, int]) -> Rows:
    """Read one batch ``(fragment, start, limit)`` of live rows; decode its images if the stage does."""
    ds, stage = _READER["ds"], _READER["stage"]
    fid, start, limit = item
    decode = stage.image is not None and IMAGE in stage.inputs
    cols = [c for c in stage.inputs if not (decode and c == IMAGE)]
    status = [c for c in (STATUS, FLAGS) if decode and c not in cols and c in ds.schema.names]  # for the decode only
    tbl = ds.get_fragment(fid).to_table(columns=cols + status, with_row_address=True,
                                        offset=start, limit=limit, blob_handling="all_binary")
    addrs = tbl.column("_rowaddr").to_numpy()
    images = None
    if decode:
        blobs = [b for _, b in ds.read_blobs(IMAGE, addresses=addrs.tolist(), preserve_order=True)] if len(addrs) else []
        # An image ingest refused is not decoded: a decompression bomb under the user's --max-pixels
        # was decoded by every image stage all the same (up to Pillow's own limit).
        if STATUS in tbl.column_names:
            flags = tbl.column(FLAGS).to_pylist() if FLAGS in tbl.column_names else [None] * len(blobs)
            blobs = [RefusedImage.of(f) if s == "error" else b
                     for s, f, b in zip(tbl.column(STATUS).to_pylist(), flags, blobs)]
        images = stage.image(blobs)
    data = tbl.drop_columns(["_rowaddr", *status])
    batch = pa.RecordBatch.from_arrays([data.column(c).combine_chunks() for c in data.column_names], schema=data.schema)
    rows = Rows(batch, images, fid, start, addrs.astype(np.int64) & 0xFFFFFFFF)
    if stage.prepare is not None:
        with _naming(rows, f"{stage.desc} " if stage.desc else ""):  # a failure here names its rows too
            rows.prepared = stage.prepare(batch)
    return rows


def _read_rows(addresses: tuple[int, ...]) -> Rows:
    """The images of the rows at these row addresses (any fragments), through the stage's ``image()``."""
    ds, stage = _READER["ds"], _READER["stage"]
    blobs = [b for _, b in ds.read_blobs(IMAGE, addresses=list(addresses), preserve_order=True)] if addresses else []
    return Rows(pa.RecordBatch.from_pydict({}), stage.image(blobs), -1, 0, np.asarray(addresses, np.int64))


def _at(rows: Rows, where: str) -> str:
    return f"{where}fragment {rows.fragment} rows {rows.start}-{rows.start + rows.num_rows - 1}"


@contextlib.contextmanager
def _naming(rows: Rows, where: str) -> Iterator[None]:
    """A stage's failure on a batch as a LakeError naming the rows (a LakeError passes as it is)."""
    try:
        yield
    except (LakeError, Terminated):
        raise
    except (Exception, SystemExit) as exc:  # (a user's function calling sys.exit() ended the CLI without a word)
        raise LakeError(f"{_at(rows, where)}: {type(exc).__name__}: {exc}") from exc


def _start(stage: RowStage, state: Any, rows: Rows, where: str) -> "pa.Table | Deferred":
    """``stage.batch`` on one batch; a failure is a LakeError naming the rows."""
    with _naming(rows, where):
        return stage.batch(state, rows)


def _finish(stage: RowStage, rows: Rows, out: "pa.Table | Deferred", where: str) -> pa.Table:
    """A started batch's table, checked: a failure or a wrong shape is a LakeError naming the rows."""
    with _naming(rows, where):
        out = result(out)
    if out.num_rows != rows.num_rows or list(out.column_names) != stage.names:
        raise LakeError(f"{_at(rows, where)}: expected {rows.num_rows} rows of {stage.names}, "
                        f"got {out.num_rows} rows of {list(out.column_names)}")
    return out.append_column("_offset", pa.array(rows.offsets, pa.int64()))


def _computed(stage: RowStage, state: Any, batches: Iterable[Rows], where: str) -> Iterator[tuple[Rows, pa.Table]]:
    """``(rows, table)`` of each batch, in order, checked. A :class:`Deferred` batch is waited for
    only once the next batch is started (and read: ``batches`` may read lazily), so a GPU computes
    one batch while the next is handed over."""
    held: tuple[Rows, Deferred] | None = None
    for rows in batches:
        started = _start(stage, state, rows, where)
        if held is not None:
            yield held[0], _finish(stage, held[0], held[1], where)
            held = None
        if isinstance(started, Deferred):
            held = (rows, started)
        else:
            yield rows, _finish(stage, rows, started, where)
    if held is not None:
        yield held[0], _finish(stage, held[0], held[1], where)


def _assemble(ds: lance.LanceDataset, frag: lance.LanceFragment, stage: RowStage, parts: Sequence[pa.Table]) -> pa.Table:
    """Batches (by live-row offset) -> one table of the fields over the fragment's physical rows."""
    schema = pa.schema([ds.schema.field(n) for n in stage.names])
    if not parts:  # every row deleted: the fragment still gets a file (all null) so it counts as done
        return pa.table({f.name: pa.nulls(frag.physical_rows, f.type) for f in schema})
    t = pa.concat_tables([p.cast(pa.schema([*schema, pa.field("_offset", pa.int64())])) for p in parts])
    return columns.physical(frag.physical_rows, t.column("_offset").to_numpy(), t.drop_columns(["_offset"]))


def count(report: RunReport, part: pa.Table) -> None:
    """Add a computed batch's values to ``report``: per column, its non-null values; for its small
    integer columns (counts, not hashes), their sum and how many are not zero."""
    import pyarrow.compute as pc

    for name in part.column_names:
        if name != "_offset":
            col = part.column(name)
            report.counts[name] = report.counts.get(name, 0) + part.num_rows - col.null_count
            if pa.types.is_integer(col.type) and col.type.bit_width <= 32:  # counts (not hashes): sums fit an int64
                report.sums[name] = report.sums.get(name, 0) + int(pc.sum(col.cast(pa.int64())).as_py() or 0)
                report.nonzero[name] = report.nonzero.get(name, 0) + int(pc.sum(pc.not_equal(col, 0)).as_py() or 0)


def _batches(frag: lance.LanceFragment, size: int, saved: dict[int, pa.Table]) -> list[tuple[int, int, int]]:
    """The batches ``(fragment, start, rows)`` of live rows that no saved batch covers. The gaps
    are cut anew, so a run resumed with another batch size neither repeats nor skips a row."""
    live, pos, out = frag.count_rows(), 0, []
    for start, end in [*sorted((s, s + t.num_rows) for s, t in saved.items()), (live, live)]:
        out += [(frag.fragment_id, b, min(size, start - b)) for b in range(pos, start, size)]
        pos = max(pos, end)
    return out


# --------------------------------------------------------------------------- the local engine
def _readers(init: tuple, workers: int) -> ProcessPoolExecutor:
    """``workers`` spawned reader processes (Lance is not fork-safe), each with the table open."""
    ctx = multiprocessing.get_context("spawn")
    return ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_reader, initargs=(*init, os.getpid()))


def _read_ahead(pool: ProcessPoolExecutor, items: list, workers: int, read: Callable[[Any], Rows] = _read) -> Iterator[Rows]:
    """``read(item)`` of every item, in order, by the pool's processes, 2 ``workers`` + 1 ahead.
    Closed early (the consumer failed): the batches not started are cancelled, not read for nobody."""
    pending: deque = deque()
    todo = iter(items)
    try:
        for item in itertools.islice(todo, 2 * workers + 1):
            pending.append(pool.submit(read, item))
        while pending:
            result = pending.popleft().result()
            nxt = next(todo, None)
            if nxt is not None:
                pending.append(pool.submit(read, nxt))
            yield result
    finally:
        for f in pending:
            f.cancel()


def _reader_pool(items: list, init: tuple, workers: int, read: Callable[[Any], Rows] = _read) -> Iterator[Rows]:
    """Batches in order; with ``workers`` > 0 read ahead by spawned processes."""
    if workers <= 0 or not items:
        _init_reader(*init)
        for item in items:
            yield read(item)
        return
    pool = _readers(init, workers)
    try:
        yield from _read_ahead(pool, items, workers, read)
    finally:
        # the readers exit as soon as the batches in hand are done
        pool.shutdown(wait=True, cancel_futures=True)


class _Prefetched:
    """Runs a generator in a thread from the moment it is made (so its reader pool spins up while
    ``setup()`` loads a model), handing items over through a short queue. ``close()`` stops the
    thread and closes the generator, which shuts its pool down: no reader outlives a failure."""

    def __init__(self, gen: Iterator[Any]):
        import queue
        import threading

        self._gen, self._q, self._stop = gen, queue.Queue(maxsize=2), threading.Event()
        self._done = object()
        self._thread = threading.Thread(target=self._pump, daemon=True, name="runner-prefetch")
        self._thread.start()

    def _put(self, x: Any) -> bool:
        import queue

        while not self._stop.is_set():
            try:
                self._q.put(x, timeout=0.2)
                return True
            except queue.Full:
                pass
        return False

    def _pump(self) -> None:
        try:
            for x in self._gen:
                if not self._put(x):
                    break
        except BaseException as exc:  # re-raised in the consumer
            self._put(exc)
        finally:
            close = getattr(self._gen, "close", None)
            if close is not None:
                close()  # the pool's finally runs: its readers are shut down
        self._put(self._done)

    def __iter__(self) -> Iterator[Any]:
        while True:
            x = self._q.get()
            if x is self._done:
                return
            if isinstance(x, BaseException):
                raise x
            yield x

    def close(self) -> None:
        """Stop, and wait until the pool is shut down (at most the batch a reader has in hand)."""
        self._stop.set()
        self._thread.join(timeout=120)


def _close(loader: Any) -> None:
    close = getattr(loader, "close", None)
    if close is not None:
        close()


def _commit(lake: "Store", ds: lance.LanceDataset, frag: lance.LanceFragment, stage: RowStage,
            parts: Sequence[pa.Table], ckpt: columns.Checkpoint, report: RunReport) -> None:
    # the version its inputs were read at (a batch resumed from a killed run's checkpoint: earlier)
    read = min(ds.version, ckpt.computed_from.get(frag.fragment_id, ds.version))
    version = columns.fill_fragment(lake, frag.fragment_id, _assemble(ds, frag, stage, parts),
                                    config_hash=stage.provenance(0)["config_hash"], own_column=own_words(stage.own_column),
                                    computed_from=read)
    if version is not None:
        report.versions.append(version)
        report.fragments += 1
    ckpt.drop(frag)


@dataclass
class _Started:
    """The readers of some fragments started, and the stage's setup done (:func:`_begin`)."""

    fragments: list[int]
    saved: dict[int, dict[int, pa.Table]]
    items: list[tuple[int, int, int]]
    loader: Any
    state: Any
    setup_seconds: float


def _begin(lake: "Store", stage: RowStage, ds: lance.LanceDataset, todo: list[lance.LanceFragment],
           ckpt: columns.Checkpoint, workers: int | None) -> _Started:
    """Start the readers of ``todo`` (at ``ds``'s version), then run the stage's ``setup`` (a model
    loads while the readers spawn and read ahead); a setup that fails stops the readers."""
    saved = {f.fragment_id: ckpt.load(f) for f in todo}
    items = [it for f in todo for it in _batches(f, stage.batch_size, saved[f.fragment_id])]
    if workers is None:  # spawning readers pays off only for stages that decode, with a few batches of work
        workers = default_workers(stage.readers_do_all) if stage.image is not None and len(items) > 4 else 0
    loader: Any = _reader_pool(items, (lake.table_uri, ds.version, lake.storage_options, stage), workers)
    if workers and items:
        loader = _Prefetched(loader)  # the readers start now, while setup() loads a model
    try:
        t = time.perf_counter()
        state = stage.setup() if stage.setup is not None and items else None
    except BaseException:
        _close(loader)  # no reader outlives a model that would not load
        raise
    return _Started([f.fragment_id for f in todo], saved, items, loader, state, time.perf_counter() - t)


def _run_local(lake: "Store", stage: RowStage, ds: lance.LanceDataset, todo: list[lance.LanceFragment],
               ckpt: columns.Checkpoint, report: RunReport, workers: int | None, progress: bool | None,
               where: str, started: _Started | None = None) -> None:
    """Compute and commit ``todo`` here; ``started``: what the caller started (:func:`_begin`), used
    when it is of these fragments."""
    from lakecurate.progress import progress_bar

    if started is not None and started.fragments != [f.fragment_id for f in todo]:
        _close(started.loader)  # (another run took some of them meanwhile)
        started = None
    if started is None:
        started = _begin(lake, stage, ds, todo, ckpt, workers)
    saved, items, loader, state = started.saved, started.items, started.loader, started.state
    report.setup_seconds += started.setup_seconds
    remaining = defaultdict(int)
    for fid, _, _ in items:
        remaining[fid] += 1
    frags = {f.fragment_id: f for f in todo}
    parts: dict[int, list[pa.Table]] = {fid: list(s.values()) for fid, s in saved.items()}
    for s in saved.values():
        for t in s.values():
            report.rows_resumed += t.num_rows
            count(report, t)
    bar = progress_bar(total=sum(f.count_rows() for f in todo), initial=report.rows_resumed,
                       desc=stage.desc or stage.names[0], unit=stage.unit, progress=progress)
    writer = _Writer()
    try:
        for fid in [f for f in frags if remaining[f] == 0]:  # all in the checkpoint already
            writer.submit(_commit, lake, ds, frags[fid], stage, parts.pop(fid), ckpt, report)
        for rows, part in _computed(stage, state, loader, where):
            fid = rows.fragment
            remaining[fid] -= 1
            if remaining[fid]:  # the last batch of a fragment is committed at once: no need to keep it
                writer.submit(ckpt.save, frags[fid], rows.start, part, ds.version)
            parts[fid].append(part)
            report.rows += part.num_rows
            count(report, part)
            bar.update(part.num_rows)
            if remaining[fid] == 0:
                writer.submit(_commit, lake, ds, frags[fid], stage, parts.pop(fid), ckpt, report)
        writer.wait()
    finally:
        writer.close()  # a failure: what was handed over is still saved and committed
        bar.close()
        _close(loader)  # on an error: stop the readers now


class _Writer:
    """Checkpoint saves and fragment commits, in order, in one background thread: the next batch is
    computed while the last one is written (a commit takes as long as computing a small fragment).
    A failed write surfaces at the next ``submit`` or at ``wait``; at most ``depth`` writes wait."""

    def __init__(self, depth: int = 4):
        from concurrent.futures import ThreadPoolExecutor

        self.pool, self.pending, self.depth = ThreadPoolExecutor(1, thread_name_prefix="runner-writer"), deque(), depth

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        while self.pending and (self.pending[0].done() or len(self.pending) >= self.depth):
            self.pending.popleft().result()  # raises the write's error here
        # (in the caller's context: a refusal the write raises names options as the interface speaking does)
        self.pending.append(self.pool.submit(contextvars.copy_context().run, fn, *args))

    def wait(self) -> None:
        while self.pending:
            self.pending.popleft().result()

    def close(self) -> None:
        self.pool.shutdown(wait=True)


# --------------------------------------------------------------------------- the ray engine
class FragmentWorker:
    """Reads, computes, checkpoints and commits whole fragments with ``setup()`` run once (a Ray
    actor); ``run(fragment)`` returns what it did as a :class:`RunReport` of that fragment.
    ``readers``: spawned reader processes of its own that read (and decode) ahead, kept for the
    actor's life (an actor a GPU: one process decodes ~200 photos/s, a GPU embeds thousands);
    0: it reads inline."""

    def __init__(self, stage: RowStage, lake: "Store", version: int, where: str, readers: int = 0):
        self.stage, self.lake, self.where = stage, lake, where
        self.init = init = (lake.table_uri, version, lake.storage_options, stage)
        self.readers, self.pool = readers, None
        if readers > 0:
            self.pool = _readers(init, readers)
            for _ in range(readers):  # they start (spawn, open the table) while setup() loads a model
                self.pool.submit(int)
        t = time.perf_counter()
        self.state = stage.setup() if stage.setup is not None else None
        self.setup_seconds = time.perf_counter() - t
        _init_reader(*init)
        self.ckpt = columns.Checkpoint(lake, stage.checkpoint_key)

    def run(self, fid: int, version: int | None = None, tally: Any = None) -> RunReport:
        """``version``: the table's version to commit on, when the actor was built before it (a first
        run builds its actors, loading the model, before it declares its columns); its readers read
        the inputs at the version they opened, which the declare (metadata only) left as they were.
        ``tally``: a :class:`_Tally` actor told the rows of every batch as it is computed (the
        driver's progress bar; a fragment's report arrives only once it is committed)."""
        if version is not None and version != _READER["ds"].version:
            _init_reader(self.init[0], version, *self.init[2:])
        ds, stage = _READER["ds"], self.stage
        frag = ds.get_fragment(fid)
        out = RunReport(setup_seconds=self.setup_seconds)
        saved = self.ckpt.load(frag)
        parts = list(saved.values())
        for t in parts:
            out.rows_resumed += t.num_rows
            count(out, t)
        if tally is not None and out.rows_resumed:
            tally.add.remote(out.rows_resumed)
        items = _batches(frag, stage.batch_size, saved)
        # read (and decode) lazily, or ahead in the readers: a GPU computes a batch while the next is decoded
        batches = map(_read, items) if self.pool is None else _read_ahead(self.pool, items, self.readers)
        for i, (rows, part) in enumerate(_computed(stage, self.state, batches, self.where)):
            if i < len(items) - 1:
                self.ckpt.save(frag, rows.start, part, ds.version)
            parts.append(part)
            out.rows += part.num_rows
            count(out, part)
            if tally is not None:
                tally.add.remote(part.num_rows)  # (not waited for)
        _commit(self.lake, ds, frag, stage, parts, self.ckpt, out)
        return out


RAY_POLL = 2.0  # seconds between the driver's looks at a Ray run's tally (its progress line comes every 10 s)


class _Tally:
    """Rows the actors of a Ray run have computed so far (a Ray actor of no CPU): what the
    driver's progress bar shows between fragments, every few seconds as on the local engine."""

    def __init__(self) -> None:
        self.rows = 0

    def add(self, rows: int) -> None:
        self.rows += rows

    def total(self) -> int:
        return self.rows


def _ray_actors(lake: "Store", stage: RowStage, ds: lance.LanceDataset, most: int, where: str, gpus: bool,
                workers: int | None) -> "RayActors":
    """The actors of a Ray run at ``ds``'s version, for at most ``most`` fragments. ``gpus``: an
    actor a GPU, each reserving its own (``gpu_actors``, decided before anything was declared) and,
    for a stage that decodes images, the CPUs that go with a GPU on its node (``cpus_per_gpu``),
    all but one of them reader processes of its own (``workers``: that many)."""
    from lakecurate.engines import RayActors, cpus_per_gpu

    cpus, readers = 1, 0
    if gpus and stage.image is not None:
        cpus = cpus_per_gpu()
        readers = cpus - 1 if workers is None else workers
    return RayActors(FragmentWorker, (stage, lake, ds.version, where, readers), most, gpus=gpus, num_cpus=cpus)


def _run_ray(lake: "Store", stage: RowStage, ds: lance.LanceDataset, todo: list[lance.LanceFragment],
             report: RunReport, progress: bool | None, where: str, gpus: bool, workers: int | None,
             actors: "RayActors | None" = None) -> None:
    """``actors``: built before ``ds``'s version (a first run's, built before it declared); None:
    built here (:func:`_ray_actors`)."""
    from lakecurate.progress import progress_bar

    if not todo:
        return
    if actors is None:
        actors = _ray_actors(lake, stage, ds, len(todo), where, gpus, workers)
    bar = progress_bar(total=sum(f.count_rows() for f in todo), desc=f"{stage.desc or stage.names[0]} (ray)",
                       unit=stage.unit, progress=progress)
    ray = actors.ray
    tally = ray.remote(num_cpus=0)(_Tally).remote()
    shown, done = [0], 0

    def show(rows: int) -> None:  # the bar is at the most rows either count has seen (each only grows)
        bar.update(max(0, rows - shown[0]))
        shown[0] = max(shown[0], rows)

    try:
        for part in actors.map("run", [(f.fragment_id, ds.version, tally) for f in todo],
                               tick=lambda: show(ray.get(tally.total.remote())), every=RAY_POLL):
            report.fragments += part.fragments
            report.versions += part.versions
            report.rows += part.rows
            report.rows_resumed += part.rows_resumed
            report.setup_seconds = max(report.setup_seconds, part.setup_seconds)
            for total, add in ((report.counts, part.counts), (report.sums, part.sums), (report.nonzero, part.nonzero)):
                for k, v in add.items():
                    total[k] = total.get(k, 0) + v
            done += part.computed
            show(done)
    finally:
        bar.close()
        ray.kill(tally)


def _refuse_source_columns(lake: "Store", ds: Any, stage: RowStage) -> None:
    """Refuse a stage whose columns are the table's own (what ingest wrote: ``embed --name ingest``
    writes ingest_error), named as such: declare's "another writer added it" sent people hunting
    for a writer that never was."""
    own = [n for n in stage.names if n in PAIRS_SCHEMA.names and n in ds.schema.names
           and columns.field_provenance(ds.schema.field(n), strict=False) is None]
    if own:
        one = len(own) == 1
        raise LakeError(f"column{'' if one else 's'} {', '.join(own)} {'is a source column' if one else 'are source columns'} "
                        f"of lake '{lake.uri}' (ingest wrote {'it' if one else 'them'}; lakecurate info --schema lists "
                        f"them), which no stage writes: {stage.desc or stage.name} needs columns of its own"
                        + (f"; run it {own_words(stage.own_column)}" if stage.own_column else ""))


def own_words(own_column: str | None) -> str | None:
    """A stage's ``own_column`` advice as the interface speaking words it: :data:`NAME_OPTION` names
    ``--name`` on the CLI, ``name`` for Python and a pipeline."""
    return f"with another {spell('--name')}" if own_column == NAME_OPTION else own_column


def _rename(stage: RowStage) -> str:
    """How ``stage`` writes columns of its own where another stage's hold its names: --name for the
    CLI's stages that take it (embed, recaption); a user's feature by another feature name; any
    other stage (a RowStage run from Python, a fixed-name stage) by another column name."""
    if stage.own_column == NAME_OPTION:
        return f"pick another {spell('--name')} for this one"
    if stage.own_column:
        return f"write this one {stage.own_column}"
    return f"pick another column name for this one (in {stage.name}'s fields)"


# --------------------------------------------------------------------------- the entry point
def _whole_sizes(stage: RowStage, workers: Any) -> tuple[RowStage, int | None]:
    """``stage`` with its batch size, and ``workers``, as the whole numbers the checks took them for
    (a whole float, 16.0 from a pipeline file or a notebook, is 16; anything else one LakeError)."""
    import dataclasses

    from lakecurate.options import MOST_WORKERS, whole

    size = whole("--batch-size", stage.batch_size, 1)
    workers = whole("--workers", workers, 0, none_ok=True, high=MOST_WORKERS)
    if type(stage.batch_size) is not int:
        stage = dataclasses.replace(stage, batch_size=size)
    return stage, workers


def run(lake: "Store", stage: RowStage, *, engine: str = "local", workers: int | None = None,
        recompute: bool = False, progress: bool | None = None, max_fragments: int | None = None) -> RunReport:
    """Declare ``stage``'s fields and fill every fragment that lacks them, or whose values are stale;
    see the module doc.

    ``workers``: reader processes for the local engine (None: some when the stage decodes images
    and there are a few batches; 0: read inline). On Ray, a model stage's ``device`` decides its
    actors (:func:`lakecurate.engines.gpu_actors`), and ``workers`` is the readers each GPU actor
    keeps (None: the CPUs that go with its GPU, but one).
    A first run that fails before any fragment is committed leaves no declared column behind.
    """
    from lakecurate.engines import check_engine, gpu_actors

    check_engine(engine)  # before declaring anything
    # the checked values are the ones used: 16.0 passed the checks, then range() failed after a
    # recompute had dropped the stage's columns
    stage, workers = _whole_sizes(stage, workers)
    gpus = engine == "ray" and gpu_actors(stage.device)
    t0 = time.perf_counter()
    report = RunReport()
    ds = lake.dataset()
    _refuse_source_columns(lake, ds, stage)
    ckpt = columns.Checkpoint(lake, stage.checkpoint_key)
    started: _Started | None = None
    if engine == "local" and stage.setup is not None and stage.names[0] not in ds.schema.names and not recompute:
        # a first run loads its model (and starts its readers) before it declares: one that will not
        # load (no weights, a bad checkpoint, fp16 on a CPU) left two versions, the columns declared
        # and dropped again
        started = _begin(lake, stage, ds, ds.get_fragments()[:max_fragments], ckpt, workers)
    actors: RayActors | None = None
    if engine == "ray" and stage.setup is not None and stage.names[0] not in ds.schema.names and not recompute:
        # the same on Ray: the actors are built (each loads the model) before the columns are declared
        actors = _ray_actors(lake, stage, ds, len(ds.get_fragments()[:max_fragments]), _where(stage, lake), gpus,
                             workers)
        actors.ready()
    prov = stage.provenance(ds.version)
    try:
        added = columns.declare(lake, stage.fields, prov, recompute=recompute, same=stage.same_config,
                                rename=_rename(stage), **({"fix": stage.fix() if callable(stage.fix) else stage.fix}
                                                            if stage.fix else {}))
    except BaseException:
        if started is not None:
            _close(started.loader)
        if actors is not None:
            actors.stop()
        raise
    if not added and stage.extra.get("weights"):  # the same config's weights found elsewhere this time
        columns.record_beside(lake, stage.names, {"weights": stage.extra["weights"]})
    ds = lake.dataset()
    recorded, prov = as_recorded(stage, ds, prov)
    if recorded is not stage:
        stage, ckpt = recorded, columns.Checkpoint(lake, recorded.checkpoint_key)
    # Fragments another run of this stage is computing right now are left to it (see FragmentClaims);
    # their saved batches are its own, never dropped here (Checkpoint.prune).
    claims = columns.FragmentClaims(lake, stage.checkpoint_key)  # (by config: a run of another is not waited for)
    if recompute:  # recomputing: batches saved by an earlier run are not to be reused
        ckpt.prune(set(), claims)
    sources = None if recompute else prov["source_columns"]  # (recomputing: every fragment lacks values)
    todo, stale = _to_compute(ds, stage, sources)
    report.fragments_total = len(todo)
    unfilled = {f.fragment_id for f in todo}  # (saved batches of these are kept: max_fragments leaves some for later)
    if max_fragments is not None:
        todo = todo[:max_fragments]
    with contextlib.suppress(OSError):  # a killed run's claims on fragments it had committed: never taken
        claims.sweep(keep={f.fragment_id for f in todo})  # again (those to compute: take() takes them over)
    mine, elsewhere = claims.take([f.fragment_id for f in todo])
    if elsewhere:
        todo = [f for f in todo if f.fragment_id in set(mine)]
        report.fragments_elsewhere = len(elsewhere)
        report.elsewhere = sorted({" ".join(o.split(" ")[:2]) for o in elsewhere.values()})
    report.rows_refreshed = sum(f.count_rows() for f in todo if f.fragment_id in stale)
    if not recompute:  # (a recompute pruned them all above; its own claims keep its fragments' now)
        ckpt.prune(unfilled, claims)  # (a kill between a fragment's commit and the drop of its batches left them)
    where = _where(stage, lake)
    claims.hold()
    try:
        while True:
            if not todo:
                ckpt.prune(set(), claims)  # (another run's saved batches are its own)
            elif engine == "ray":
                first_actors, actors = actors, None  # (a run taking over another's builds its own)
                _run_ray(lake, stage, ds, todo, report, progress, where, gpus, workers, first_actors)
            else:
                first, started = started, None  # (_run_local closes it; a run taking over another's starts its own)
                _run_local(lake, stage, ds, todo, ckpt, report, workers, progress, where, first)
            if not (elsewhere and _WAITING[0]):
                break
            ds, todo, elsewhere = _wait_for_others(lake, stage, claims, elsewhere, progress, sources)
    except BaseException:
        if added and not elsewhere:
            # a first run that failed before any fill leaves no column (but not another run's, declared meanwhile);
            # a cleanup that fails too (the store gone) never hides the error that made it
            with contextlib.suppress(Exception):
                columns._undeclare_if_empty(lake, stage.names, prov["config_hash"])
        raise
    finally:
        claims.release()
        if started is not None:  # (started, then not run: every fragment was another run's)
            _close(started.loader)
        if actors is not None:
            actors.stop()
    report.seconds = time.perf_counter() - t0
    return report


def _where(stage: RowStage, lake: "Store") -> str:
    """What a run's errors name it by: "embed on lake 'x' " (empty for a stage without a desc)."""
    return f"{stage.desc} on lake '{lake.uri}' " if stage.desc else ""


def as_recorded(stage: RowStage, ds: lance.LanceDataset, prov: dict[str, Any]) -> tuple[RowStage, dict[str, Any]]:
    """``stage`` under the config its columns recorded, where the stage calls the two one config
    though their hashes differ (``same_config``: an embedding's weights file recorded by its path
    on another install): its values are committed, claimed and checkpointed as that config's."""
    if stage.same_config is None or stage.names[0] not in ds.schema.names:
        return stage, prov
    held = columns.field_provenance(ds.schema.field(stage.names[0]), strict=False) or {}
    if held.get("config_hash") in (None, prov["config_hash"]) or not isinstance(held.get("config"), dict):
        return stage, prov
    stage = dataclasses.replace(stage, config=held["config"])
    return stage, stage.provenance(prov["table_version"])


def _to_compute(ds: lance.LanceDataset, stage: RowStage,
                sources: Sequence[str] | None) -> tuple[list[lance.LanceFragment], set[int]]:
    """The fragments a run computes: those without values, then those whose values are stale
    (``graph.stale_fragments``: ``sources``, the stage's inputs, rewritten since; None: none asked
    for); and the ids of the stale ones."""
    from lakecurate.graph import stale_fragments

    todo = columns.fragments_to_fill(ds, stage.names[0])
    if sources is None:
        return todo, set()
    stale = set(stale_fragments(ds, stage.names, sources)) - {f.fragment_id for f in todo}
    return todo + [f for f in ds.get_fragments() if f.fragment_id in stale], stale


def _wait_for_others(lake: "Store", stage: RowStage, claims: columns.FragmentClaims,
                     elsewhere: dict[int, str], progress: bool | None,
                     sources: Sequence[str] | None) -> tuple[Any, list, dict[int, str]]:
    """Poll until a fragment left to another run is filled (its values current, as
    :func:`_to_compute` sees them) or free: (the dataset, fragments now this run's to compute:
    their run ended without filling them, those still held elsewhere). A progress bar says what it
    waits for (another run that hangs holds its claims)."""
    from lakecurate.progress import progress_bar

    runs = ", ".join(sorted({" ".join(o.split(" ")[:2]) for o in elsewhere.values()}))
    bar = progress_bar(total=len(elsewhere), desc=f"waiting for {stage.desc or stage.name} of another run ({runs})",
                       unit="fragment", progress=progress)
    done = 0
    try:
        while True:
            time.sleep(WAIT_POLL)
            ds = lake.dataset()
            unfilled = {f.fragment_id: f for f in _to_compute(ds, stage, sources)[0]}
            left = sorted(set(elsewhere) & set(unfilled))
            mine, busy = claims.take(left) if left else ([], {})
            bar.update(len(elsewhere) - len(busy) - done)  # filled (or this run's now)
            done = len(elsewhere) - len(busy)
            if mine or not busy:
                return ds, [unfilled[f] for f in mine], busy
    finally:
        bar.close()


def map_images(lake: "Store", stage: RowStage, addresses: Sequence[int], *, workers: int | None = None,
               progress: bool | None = None) -> Iterator[Rows]:
    """``stage.image`` over the images of some rows (row addresses, any fragments), computed in the
    runner's spawned reader processes, in batches of ``stage.batch_size``; yields each batch as
    :class:`Rows` (``offsets``: the batch's row addresses; ``images``: what ``image()`` made) in
    order. Nothing is written: the caller keeps what it needs (a cache of keypoints for some rows).
    """
    from lakecurate.progress import progress_bar

    stage, workers = _whole_sizes(stage, workers)
    addrs = [int(a) for a in addresses]
    items = [tuple(addrs[s:s + stage.batch_size]) for s in range(0, len(addrs), stage.batch_size)]
    if workers is None:
        workers = default_workers(stage.readers_do_all) if len(items) > 1 else 0
    ds = lake.dataset()
    loader = _reader_pool(items, (lake.table_uri, ds.version, lake.storage_options, stage), workers, _read_rows)
    bar = progress_bar(total=len(addrs), desc=stage.desc or stage.name, unit=stage.unit, progress=progress)
    try:
        for rows in loader:
            bar.update(rows.num_rows)
            yield rows
    finally:
        bar.close()
        _close(loader)


RECOMPUTE_COMMIT_ROWS = 4096  # recompute commits what it computed every this many rows (a killed run keeps it)


def recompute(lake: "Store", stage: RowStage, where: str, *, carry: Callable[[pa.Table, pa.Table], pa.Table] | None = None,
              desc: str = "", workers: int | None = None, progress: bool | None = None) -> RunReport:
    """Compute ``stage`` again for the rows matching ``where`` and write their new values over the old
    ones, keeping every other row's (:func:`run` fills a whole fragment once: this is how a row that
    failed for a passing reason, an endpoint's error, is computed again). Rows an ingest refused are
    left when the stage decodes images (their image is not decoded, their error the same).
    ``carry(before, out)``: the stage's new values from their old ones and the new (an attempt count
    added up). What is computed is committed every :data:`RECOMPUTE_COMMIT_ROWS` rows and when the
    run stops (an endpoint no request reaches: a LakeError), so the same call goes on from there;
    a row given a value meanwhile (its first column not null) keeps it."""
    from lakecurate.progress import progress_bar

    t0 = time.perf_counter()
    report = RunReport()
    ds = lake.dataset()
    if stage.names[0] not in ds.schema.names:
        return report
    decode = stage.image is not None and IMAGE in stage.inputs
    if decode and STATUS in ds.schema.names:
        where = f"({where}) AND ({STATUS} IS NULL OR {STATUS} <> 'error')"
    inputs = [c for c in stage.inputs if c != IMAGE]
    todo = ds.to_table(columns=list(dict.fromkeys([*inputs, *stage.names])), filter=where, with_row_address=True)
    addrs = todo.column("_rowaddr").to_numpy().astype(np.int64)
    if not len(addrs):
        return report
    images = map_images(lake, stage, addrs, workers=workers, progress=False) if decode else None
    state = stage.setup() if stage.setup is not None else None
    bar = progress_bar(total=len(addrs), desc=desc or stage.desc or stage.name, unit=stage.unit, progress=progress)
    done: list[tuple[np.ndarray, pa.Table]] = []
    try:
        for lo in range(0, len(addrs), stage.batch_size):
            part = todo.slice(lo, stage.batch_size)
            rows = next(images) if images is not None else Rows(pa.RecordBatch.from_pydict({}))
            rows.columns = pa.RecordBatch.from_arrays([part.column(c).combine_chunks() for c in inputs], names=inputs)
            rows.offsets = addrs[lo:lo + part.num_rows]
            out = result(stage.batch(state, rows))
            count(report, out)  # (this run's values, before carry adds the earlier runs')
            out = carry(part, out) if carry is not None else out
            done.append((rows.offsets, out))
            report.rows += out.num_rows
            bar.update(out.num_rows)
            if sum(len(a) for a, _ in done) >= RECOMPUTE_COMMIT_ROWS:
                _write_over(lake, stage, done, report)
                done = []
    finally:
        bar.close()
        if images is not None:
            images.close()
        _write_over(lake, stage, done, report)  # what was computed stays, also when a later batch stops the run
    report.seconds = time.perf_counter() - t0
    return report


def _write_over(lake: "Store", stage: RowStage, done: list, report: RunReport) -> None:
    """The recomputed rows' values over their fragments' current ones, in one commit (read, modify,
    write; again at a fresh version after a conflict); a row given a value meanwhile keeps it, and
    a fragment compacted meanwhile is left (its rows keep their old values for the next run)."""
    from lakecurate.store import retry_on_conflict

    if not done:
        return
    names = stage.names
    addrs = np.concatenate([a for a, _ in done])
    new = pa.concat_tables([t for _, t in done])
    values_new = {n: new.column(n).to_pylist() for n in names}
    by_frag: dict[int, list[int]] = {}
    for i, a in enumerate(addrs.tolist()):
        by_frag.setdefault(a >> 32, []).append(i)
    config_hash = stage.provenance(0)["config_hash"]

    def attempt() -> int | None:
        ds = lake.dataset()
        tables = {}
        for fid, idx in by_frag.items():
            frag = ds.get_fragment(fid)
            if frag is None:
                continue
            cur = frag.to_table(columns=names, with_row_address=True)
            offsets = (cur.column("_rowaddr").to_numpy() & 0xFFFFFFFF).astype(np.int64)
            values = {n: c.to_pylist() for n, c in zip(names, columns.physical(frag.physical_rows, offsets,
                                                                                cur.select(names)).columns)}
            for i in idx:
                off = int(addrs[i]) & 0xFFFFFFFF
                if off < frag.physical_rows and values[names[0]][off] is None:
                    for n in names:
                        values[n][off] = values_new[n][i]
            tables[fid] = pa.table({n: pa.array(values[n], ds.schema.field(n).type) for n in names})
        return columns.fill_fragments(lake, tables, based_on=ds, config_hash=config_hash, own_column=stage.own_column)

    version = retry_on_conflict(attempt)
    if version is not None:
        report.versions.append(version)
        report.fragments += len(by_frag)


def fill_by_fragment(lake: "Store", fields: Sequence[pa.Field], prov: dict[str, Any], fn: Callable[[pa.RecordBatch], pa.Table],
                     inputs: Sequence[str], *, engine: str = "local", batch_size: int = 4096,
                     recompute: bool = False, progress: bool | None = None, desc: str = "",
                     fix: str | None = None) -> dict[str, Any]:
    """``fn`` (a batch of ``inputs`` -> a table of ``fields``) as a stage with provenance ``prov``
    (the former ``columns.fill_by_fragment``). Returns {"fragments", "rows", "versions"}."""
    extra = {k: v for k, v in prov.items() if k not in ("stage", "config", "config_hash", "source_columns",
                                                        "table_version", "tool_version", "created_at", "format")}
    stage = RowStage(prov["stage"], list(fields), prov["config"], list(inputs), batch=OnColumns(fn),
                     batch_size=batch_size, sources=list(prov.get("source_columns") or inputs), extra=extra,
                     desc=desc, fix=fix)
    rep = run(lake, stage, engine=engine, recompute=recompute, progress=progress)
    return {"fragments": rep.fragments, "rows": rep.computed, "versions": rep.versions}


class OnColumns:
    """A function of the input columns alone (``fn(record_batch) -> table``) as a stage's ``batch``
    (a class, not a closure: it pickles to Ray actors)."""

    def __init__(self, fn: Callable[[pa.RecordBatch], pa.Table]):
        self.fn = fn

    def __call__(self, state: Any, rows: Rows) -> pa.Table:
        return self.fn(rows.columns)
