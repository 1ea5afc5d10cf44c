"""The embed stage: image and text embeddings and their cosine score, added as columns.

``embed(lake, "offline")`` adds ``{prefix}_image`` and ``{prefix}_text`` (L2-normalised,
fixed_size_list<float16>), ``{prefix}_score`` (cosine, float32) and ``{prefix}_error`` (why a row has
no embedding: undecodable image, missing caption). Columns are filled per fragment through
:mod:`lakecurate.columns`, so image bytes are never rewritten, a re-run with the same config does
nothing, rows appended later are the only work of the next run, and a killed run resumes from its
last finished batch.

Decoding and preprocessing run in spawned worker processes (Lance is not fork-safe) that read image
blobs straight from the lake and import only lance, Pillow and numpy, so they start while the model
loads and the model in the main process is never waiting on JPEG decoding.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import re
import time
from collections import defaultdict, deque
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from lakecurate import columns
from lakecurate.encoders import MAX_TEXT_CHARS, Encoder, EncoderSpec, column_names, resolve
from lakecurate.images import MAX_DECODE_PIXELS, decode_image  # noqa: F401 - decode_image: also imported from here
from lakecurate.progress import progress_bar

if TYPE_CHECKING:
    from lakecurate.store import Store



@dataclass
class EmbedReport:
    lake: str
    model: str
    columns: dict[str, str]
    fragments_total: int = 0
    fragments_done: int = 0
    rows_embedded: int = 0
    rows_resumed: int = 0
    errors: int = 0
    seconds: float = 0.0
    versions: list[int] = field(default_factory=list)
    meaningless: bool = False
    indexed: bool = False
    model_load_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_workers() -> int:
    """Decode processes: half the cores (the model uses the rest), at least one, at most eight."""
    return max(1, min(8, (os.cpu_count() or 2) // 2))


# --------------------------------------------------------------------------- worker side
_WORKER: dict[str, Any] = {}


def _init_reader(table_uri: str, version: int, storage_options: dict | None, transform: Any,
                 worker: bool = False) -> None:
    import lance

    if worker:  # a spawned decode process: it must not outlive an embed that was killed
        from lakecurate.engines import die_with_parent

        die_with_parent()
    _WORKER["ds"] = lance.dataset(table_uri, version=version, storage_options=storage_options)
    _WORKER["transform"] = transform


def read_batch(item: tuple[int, int, int]) -> dict[str, Any]:
    """Read one batch of a fragment (captions + image blobs) and decode/preprocess its images.

    Runs in a spawned worker process (imports only lance, Pillow and numpy), or inline.
    """
    ds, transform = _WORKER["ds"], _WORKER["transform"]
    fid, start, limit = item
    tbl = ds.get_fragment(fid).to_table(columns=["caption"], with_row_address=True, offset=start, limit=limit)
    addrs = tbl.column("_rowaddr").to_pylist()
    blobs = [b for _, b in ds.read_blobs("image", addresses=addrs, preserve_order=True)] if addrs else []
    pixels, errors = [], []
    for data in blobs:
        im, err = decode_image(data)
        if im is not None:
            try:
                pixels.append(transform(im))
            except Exception as exc:  # a transform failing on an odd image is that row's problem only
                im, err = None, f"image_undecodable: {type(exc).__name__}: {exc}"[:300]
        errors.append(err)
    return {
        "fid": fid,
        "start": start,
        "offsets": np.asarray(addrs, dtype=np.int64) & 0xFFFFFFFF,
        "pixels": np.stack(pixels) if pixels else None,
        "image_errors": errors,
        # only the head reaches the tokenizer (encoders.MAX_TEXT_CHARS); no need to ship the rest
        "captions": [c if c is None else c[:MAX_TEXT_CHARS] for c in tbl.column("caption").to_pylist()],
    }


def read_batches(items: list, init_args: tuple, workers: int) -> Iterator[dict[str, Any]]:
    """Decoded batches in order; with ``workers`` > 0, read ahead by spawned processes."""
    if workers <= 0 or not items:
        _init_reader(*init_args)
        for item in items:
            yield read_batch(item)
        return
    ctx = multiprocessing.get_context("spawn")  # Lance is not fork-safe
    pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_reader, initargs=(*init_args, True))
    try:
        pending: deque = deque()
        todo = iter(items)
        for item in itertools.islice(todo, 2 * workers + 1):
            pending.append(pool.submit(read_batch, item))
        while pending:
            result = pending.popleft().result()
            nxt = next(todo, None)
            if nxt is not None:
                pending.append(pool.submit(read_batch, nxt))
            yield result
    finally:
        # Closed early (the consumer failed): batches not started are cancelled rather than decoded
        # for nobody, so the workers exit as soon as the ones in hand are done.
        pool.shutdown(wait=True, cancel_futures=True)


# --------------------------------------------------------------------------- main side
def embed_batch(enc: Encoder, item: dict[str, Any], dim: int) -> pa.Table:
    """Run the model on one decoded batch: a table of offsets, embeddings, score and error."""
    n = len(item["offsets"])
    img = np.zeros((n, dim), dtype=np.float32)
    img_ok = np.array([e is None for e in item["image_errors"]], dtype=bool)
    if item["pixels"] is not None:
        img[img_ok] = enc.encode_image_tensors(item["pixels"]).numpy()
    captions = item["captions"]
    txt = enc.encode_texts([c or "" for c in captions]).numpy() if n else np.zeros((0, dim), np.float32)
    txt_ok = np.asarray([c is not None for c in captions], dtype=bool)
    score = (img * txt).sum(axis=1)
    errors = [e if e else (None if t else "caption_missing") for e, t in zip(item["image_errors"], txt_ok)]
    return pa.table(
        {
            "offset": pa.array(item["offsets"], pa.int64()),
            "image": _vectors(img, img_ok),
            "text": _vectors(txt, txt_ok),
            "score": pa.array(score.astype(np.float32), mask=~(img_ok & txt_ok)),
            "error": pa.array(errors, pa.string()),
        }
    )


def _vectors(arr: np.ndarray, valid: np.ndarray) -> pa.Array:
    flat = pa.array(arr.astype(np.float16).ravel(), pa.float16())
    return pa.FixedSizeListArray.from_arrays(flat, arr.shape[1], mask=pa.array(~valid))


def assemble(parts: list[pa.Table], physical_rows: int, names: dict[str, str], dim: int) -> pa.Table:
    """Batches (by live-row offset) -> one table over the fragment's physical rows; deleted rows null."""
    keys = ("image", "text", "score", "error")
    if not parts:
        return pa.table({names[k]: pa.nulls(physical_rows) for k in keys})
    t = pa.concat_tables(parts)
    values = t.select(list(keys)).rename_columns([names[k] for k in keys])
    return columns.physical(physical_rows, t.column("offset").to_numpy(), values)


class _Prefetched:
    """Runs a generator in a thread from the moment it is made (so its process pool spins up while
    the model loads), handing its items over through a short queue.

    ``close()`` (the consumer failed: a full disk, a bad commit, a model that would not load) stops
    the thread and closes the generator, which shuts its pool down: the error surfaces, no worker
    lingers.
    """

    def __init__(self, gen: Iterator[dict[str, Any]]):
        import queue
        import threading

        self._gen, self._q, self._stop = gen, queue.Queue(maxsize=2), threading.Event()
        self._done = object()
        self._thread = threading.Thread(target=self._pump, daemon=True, name="embed-prefetch")
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
                close()  # the pool's with-block exits: its workers are shut down
        self._put(self._done)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:
            x = self._q.get()
            if x is self._done:
                return
            if isinstance(x, BaseException):
                raise x
            yield x

    def close(self) -> None:
        """Stop, and wait until the pool is shut down (at most the batch a worker has in hand): the
        caller's error surfaces with no worker left, even one the pump was still starting."""
        self._stop.set()
        self._thread.join(timeout=120)


def _close(loader: Any) -> None:
    close = getattr(loader, "close", None)
    if close is not None:
        close()


PRECISIONS = ("fp32", "bf16", "fp16")
_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def check_options(*, batch_size: int, workers: int | None, precision: str, device: str,
                  max_fragments: int | None = None, index_min_rows: int | None = None) -> None:
    """Refuse bad options before anything is declared: ``batch_size=-4`` once marked fragments as
    embedded with nothing in them. One :class:`LakeError` line naming the option."""
    from lakecurate.errors import LakeError
    from lakecurate.options import whole

    whole("--batch-size", batch_size, 1)
    whole("--workers", workers, 0, none_ok=True)
    whole("max_fragments", max_fragments, 0, none_ok=True)
    whole("index_min_rows", index_min_rows, 0, none_ok=True)
    if precision not in PRECISIONS:
        raise LakeError(f"--precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if not isinstance(device, str) or not _DEVICE.fullmatch(device):
        raise LakeError(f"--device must be auto, cpu, cuda, cuda:N or mps, not {device!r}")


def embed(
    lake: "Store",
    model: "str | EncoderSpec" = "offline",
    *,
    pretrained: str | None = None,
    checkpoint: str | None = None,
    name: str | None = None,
    device: str = "auto",
    precision: str = "fp32",
    batch_size: int = 64,
    workers: int | None = None,
    recompute: bool = False,
    progress: bool | None = None,
    max_fragments: int | None = None,
    index_min_rows: int | None = None,
    engine: str = "local",
) -> EmbedReport:
    """Add image/text embedding and alignment-score columns for every row that lacks them.

    Example::

        report = lake.embed("offline")             # columns offline_image, offline_text, offline_score
        lake.sql("SELECT key, offline_score FROM pairs ORDER BY offline_score LIMIT 5")

    ``engine="ray"`` embeds the fragments on a Ray cluster instead: one actor per CPU loads the
    model once and embeds and commits whole fragments (the same per-fragment commits; a killed run
    keeps finished fragments, not batches).
    """
    from lakecurate.engines import check_engine

    check_engine(engine)
    check_options(batch_size=batch_size, workers=workers, precision=precision, device=device,
                  max_fragments=max_fragments, index_min_rows=index_min_rows)
    spec = model if isinstance(model, EncoderSpec) else resolve(model, pretrained, checkpoint, name)
    names = column_names(spec.prefix)
    dim = spec.embed_dim()
    ds = lake.dataset()
    columns.check_table(lake, ds)  # a foreign or newer table: refused before workers read it
    config = {**spec.config(), "precision": precision, "dim": dim, "storage": "float16"}
    prov = columns.provenance("embed", config, ["image", "caption"], ds.version)
    vec = pa.list_(pa.float16(), dim)
    fields = [
        pa.field(names["image"], vec),
        pa.field(names["text"], vec),
        pa.field(names["score"], pa.float32()),
        pa.field(names["error"], pa.string()),
    ]
    report = EmbedReport(lake=lake.uri, model=spec.arch, columns=names, meaningless=spec.meaningless)
    ckpt = columns.Checkpoint(lake, f"embed-{spec.prefix}-{prov['config_hash']}")
    t0 = time.perf_counter()

    # What to compute is known before any weights load (a column not yet declared is all to do),
    # so decode workers start while the model loads.
    todo = ds.get_fragments() if names["score"] not in ds.schema.names or recompute else columns.fragments_to_fill(ds, names["score"])
    report.fragments_total = len(todo)
    if max_fragments is not None:
        todo = todo[:max_fragments]
    saved: dict[int, dict[int, pa.Table]] = {}
    items: list[tuple[int, int, int]] = []
    remaining: dict[int, int] = {}
    frags = {f.fragment_id: f for f in todo}
    for frag in todo:
        saved[frag.fragment_id] = {} if recompute else ckpt.load(frag)
        live = frag.count_rows()
        starts = [s for s in range(0, live, batch_size) if s not in saved[frag.fragment_id]]
        report.rows_resumed += sum(t.num_rows for t in saved[frag.fragment_id].values())
        items += [(frag.fragment_id, s, min(batch_size, live - s)) for s in starts]
        remaining[frag.fragment_id] = len(starts)

    if workers is None:  # spawning readers pays off only when there is more than a few batches of work
        workers = default_workers() if len(items) > 4 else 0
    if not todo and names["score"] in ds.schema.names and not recompute:
        columns.declare(lake, fields, prov)  # checks the config matches; nothing to add or compute
        ckpt.drop()
        report.seconds = time.perf_counter() - t0
        return report  # no model load for a no-op
    if engine == "ray":
        columns.declare(lake, fields, prov, recompute=recompute)
        return _embed_on_ray(lake, spec, [f.fragment_id for f in todo], report, progress, t0, index_min_rows,
                             device=device, precision=precision, batch_size=batch_size, names=names, dim=dim)
    n_workers = workers
    transform, _ = spec.build_transforms()
    loader = read_batches(items, (lake.table_uri, ds.version, lake.storage_options, transform), n_workers)
    if n_workers and items:
        loader = _Prefetched(loader)  # spawn the readers now: they start while the model loads
    try:
        t_load = time.perf_counter()
        enc = Encoder(spec, device=device, precision=precision)
        report.model_load_seconds = time.perf_counter() - t_load
        columns.declare(lake, fields, prov, recompute=recompute)
    except BaseException:
        _close(loader)  # no worker outlives a model that would not load or a refused declare
        raise
    if recompute:  # the columns were just re-declared: every fragment is to do, with fresh field ids
        ckpt.drop()
    if not todo:
        ckpt.drop()
        report.seconds = time.perf_counter() - t0
        return report

    done_parts: dict[int, list[pa.Table]] = defaultdict(list)
    total_rows = sum(f.count_rows() for f in todo)
    bar = progress_bar(total=total_rows, initial=report.rows_resumed, desc=f"embed {spec.prefix}", unit="img",
                       progress=progress)

    def finish(fid: int) -> None:
        frag = frags[fid]
        parts = list(saved[fid].values()) + done_parts.pop(fid, [])
        table = assemble(parts, frag.physical_rows, names, dim)
        version = columns.fill_fragment(lake, fid, table)
        if version is not None:
            report.versions.append(version)
            report.fragments_done += 1
        ckpt.drop(frag)

    try:
        for fid in [f for f, n in remaining.items() if n == 0]:
            finish(fid)  # everything was in the checkpoint already
        for item in loader:
            part = embed_batch(enc, item, dim)
            fid = item["fid"]
            ckpt.save(frags[fid], item["start"], part)
            done_parts[fid].append(part)
            report.rows_embedded += part.num_rows
            report.errors += part.num_rows - part.column("error").null_count
            bar.update(part.num_rows)
            remaining[fid] -= 1
            if remaining[fid] == 0:
                finish(fid)
    finally:
        bar.close()
        _close(loader)  # on an error: stop the decode workers now
    report.errors += sum(t.num_rows - t.column("error").null_count for s in saved.values() for t in s.values())

    report.indexed = lake.ensure_vector_index(names["image"], *(() if index_min_rows is None else (index_min_rows,)))
    report.seconds = time.perf_counter() - t0
    return report


class FragmentEmbedder:
    """Embeds and commits whole fragments with a model loaded once (a Ray actor, or in-process)."""

    def __init__(self, spec: EncoderSpec, device: str, precision: str, batch_size: int, names: dict[str, str], dim: int):
        self.enc = Encoder(spec, device=device, precision=precision)
        self.transform, _ = spec.build_transforms()
        self.batch_size, self.names, self.dim = batch_size, names, dim

    def run(self, lake: "Store", version: int, fid: int) -> tuple[int, int, int, int | None]:
        """(fragment id, rows embedded, rows with an error, new version or None)."""
        _init_reader(lake.table_uri, version, lake.storage_options, self.transform)
        frag = _WORKER["ds"].get_fragment(fid)
        live = frag.count_rows()
        parts = [embed_batch(self.enc, read_batch((fid, s, min(self.batch_size, live - s))), self.dim)
                 for s in range(0, live, self.batch_size)]
        errors = sum(t.num_rows - t.column("error").null_count for t in parts)
        return fid, live, errors, columns.fill_fragment(lake, fid, assemble(parts, frag.physical_rows, self.names, self.dim))


def _embed_on_ray(lake: "Store", spec: EncoderSpec, fids: list[int], report: EmbedReport, progress: bool | None,
                  t0: float, index_min_rows: int | None, *, device: str, precision: str, batch_size: int,
                  names: dict[str, str], dim: int) -> EmbedReport:
    from lakecurate.engines import ray_actor_map, ray_init

    version = lake.dataset().version
    # GPU actors when asked for, or by default when the cluster has GPUs; else one actor per CPU.
    gpus = device == "cuda" or (device == "auto" and bool(ray_init().cluster_resources().get("GPU")))
    bar = progress_bar(total=len(fids), desc=f"embed {spec.prefix} (ray)", unit="fragment", progress=progress)
    try:
        for _fid, rows, errors, new in ray_actor_map(FragmentEmbedder, (spec, device, precision, batch_size, names, dim), "run",
                                                     [(lake, version, fid) for fid in fids], gpus=gpus):
            report.rows_embedded += rows
            report.errors += errors
            if new is not None:
                report.versions.append(new)
                report.fragments_done += 1
            bar.update(1)
    finally:
        bar.close()
    report.indexed = lake.ensure_vector_index(names["image"], *(() if index_min_rows is None else (index_min_rows,)))
    report.seconds = time.perf_counter() - t0
    return report
