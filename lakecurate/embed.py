"""The embed stage: image and text embeddings and their cosine score, added as columns.

``embed(lake, "offline")`` adds ``{prefix}_image`` and ``{prefix}_text`` (L2-normalised,
fixed_size_list<float16>), ``{prefix}_score`` (cosine, float32) and ``{prefix}_error`` (why a row has
no embedding: undecodable image, missing caption). The stage is a :class:`lakecurate.runner.RowStage`
(:func:`embed_stage`): ``setup`` loads the model, the runner's reader processes decode and
preprocess (:class:`Preprocess`), ``batch`` runs the model (:func:`start_embed`). So columns are
filled per fragment, image bytes are never rewritten, a re-run with the same config does nothing,
rows appended later are the only work of the next run, and a killed run resumes from its last
finished batch.

Decoding and preprocessing run in spawned reader processes (Lance is not fork-safe) that read image
blobs straight from the lake and import only lance, Pillow and numpy, so they start while the model
loads and the model in the main process is never waiting on JPEG decoding.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import pyarrow as pa

from lakecurate import columns, runner
from lakecurate.options import given, spell
from lakecurate.encoders import (MAX_TEXT_CHARS, Encoder, EncoderSpec, column_names, resolve, resolve_device,
                                 same_config)
from lakecurate.images import MAX_DECODE_PIXELS, DevicePreprocess, ImageTransform, Preprocess, decode_image  # noqa: F401 - also imported from here
from lakecurate.runner import Rows, RowStage

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
    rows_refreshed: int = 0  # of rows_embedded: rows of fragments embedded again, their image or caption changed since
    errors: int = 0
    seconds: float = 0.0
    versions: list[int] = field(default_factory=list)
    meaningless: bool = False
    indexed: bool = False
    model_load_seconds: float = 0.0
    fragments_elsewhere: int = 0  # left to another run embedding them now (runner.RunReport)
    elsewhere: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


default_workers = runner.default_workers  # decode processes: half the cores, the model uses the rest


# --------------------------------------------------------------------------- the stage's parts
def start_embed(enc: Encoder, item: dict[str, Any], dim: int) -> Callable[[], pa.Table]:
    """Launch the model on one decoded batch (``pixels``, ``image_errors``, ``captions``); the
    function returned waits for it and gives a table of image and text embeddings, score and error.
    On a GPU the device works while the caller prepares the next batch."""
    n = len(item["image_errors"])
    img_run, image_errors = enc.launch_images(item)
    img_ok = np.array([e is None for e in image_errors], dtype=bool)
    captions = item["captions"]
    tokens = item.get("tokens")  # tokenized by the readers (TokenizeCaptions), or here
    if tokens is None and n:
        tokens = enc.transforms()[1]([c or "" for c in captions])
    txt_run = enc.launch_text_tokens(tokens) if n else None

    def finish() -> pa.Table:
        img = np.zeros((n, dim), dtype=np.float32)
        if img_run is not None:
            img[img_ok] = img_run.result().numpy()
        txt = txt_run.result().numpy() if txt_run is not None else np.zeros((0, dim), np.float32)
        txt_ok = np.asarray([c is not None for c in captions], dtype=bool)
        score = (img * txt).sum(axis=1)
        errors = [e if e else (None if t else "caption_missing") for e, t in zip(image_errors, txt_ok)]
        return pa.table(
            {
                "image": _vectors(img, img_ok),
                "text": _vectors(txt, txt_ok),
                "score": pa.array(score.astype(np.float32), mask=~(img_ok & txt_ok)),
                "error": pa.array(errors, pa.string()),
            }
        )

    return finish


def _renamed(table: pa.Table, names: dict[str, str]) -> pa.Table:
    return table.rename_columns([names[k] for k in table.column_names])


def _vectors(arr: np.ndarray, valid: np.ndarray) -> pa.Array:
    flat = pa.array(arr.astype(np.float16).ravel(), pa.float16())
    return pa.FixedSizeListArray.from_arrays(flat, arr.shape[1], mask=pa.array(~valid))


class LoadEncoder:
    """The stage's ``setup()``: the model, loaded once per process or Ray actor."""

    def __init__(self, spec: EncoderSpec, device: str, precision: str):
        self.spec, self.device, self.precision = spec, device, precision

    def __call__(self) -> Encoder:
        return Encoder(self.spec, device=self.device, precision=self.precision)


class EmbedRows:
    """The stage's ``batch(encoder, rows)``: :func:`start_embed` with the declared column names, deferred."""

    def __init__(self, names: dict[str, str], dim: int):
        self.names, self.dim = names, dim

    def __call__(self, enc: Encoder, rows: Rows) -> runner.Deferred:
        item = {**rows.images, "captions": _captions(rows.columns), "tokens": rows.prepared}
        finish = start_embed(enc, item, self.dim)  # looked up here: tests slow it down
        # the runner hands the next batch over before it asks for this one
        return runner.Deferred(lambda: _renamed(finish(), self.names))


def _captions(cols: pa.RecordBatch, column: str = "caption") -> list[str | None]:
    """A batch's captions, only their heads (encoders.MAX_TEXT_CHARS: what the tokenizer sees); an
    empty or whitespace-only caption is no caption (None: no text vector, no score, error
    ``caption_missing``, as curate's caption_missing filter reads it): scored, an empty caption beat
    its copy's real one in dedup's keep rule, and curate then dropped both."""
    return [c[:MAX_TEXT_CHARS] if c is not None and c.strip() else None for c in cols.column(column).to_pylist()]


class TokenizeCaptions:
    """The stage's ``prepare`` with ``tokenize="readers"``: a batch's captions tokenized where they
    are read, as numpy arrays (a dict of them from a Hugging Face tokenizer), so the process that
    feeds a GPU does not spend its time on them (open_clip's tokenizer: 12-17 ms a 256-row batch
    here, where ViT-B-32 on an H200 takes 23 ms a batch).

    The tokenizer is not pickled with the stage: a reader builds it in a thread on its first batch
    (importing open_clip or transformers: seconds, which a reader that waited would add to every
    run's start), and until it is ready returns None, so the model's process tokenizes those
    batches itself (as it does if the build fails: its error is then the one the user sees)."""

    def __init__(self, spec: EncoderSpec):
        self.spec, self._tok, self._building = spec, None, None

    def _build(self) -> None:
        try:
            self._tok = self.spec.build_transforms()[1]
        except Exception:  # noqa: BLE001 - the model's process tokenizes, and fails there with the reason
            pass

    def ready(self, timeout: float | None = None) -> bool:
        """Start building the tokenizer if it is not started; wait up to ``timeout`` for it."""
        if self._building is None:
            import threading

            self._building = threading.Thread(target=self._build, daemon=True, name="tokenizer-build")
            self._building.start()
        if timeout != 0:
            self._building.join(timeout)
        return self._tok is not None

    def __call__(self, cols: pa.RecordBatch) -> Any:
        if not self.ready(timeout=0):
            return None
        tokens = self._tok([c or "" for c in _captions(cols)])
        if isinstance(tokens, dict):
            return {k: np.asarray(v) for k, v in tokens.items()}
        return np.asarray(tokens)  # torch tensors become numpy: no tensor crosses the process pipes

    def __getstate__(self) -> dict[str, Any]:
        return {"spec": self.spec, "_tok": None, "_building": None}


DECODES = ("cpu", "device")
TOKENIZES = ("auto", "model", "readers")


def embed_stage(spec: EncoderSpec, *, device: str = "auto", precision: str = "fp32", batch_size: int = 64,
                decode: str = "cpu", tokenize: str = "model") -> RowStage:
    """The embed stage of ``spec`` as a runner spec (fields, provenance config, setup, batch).

    ``decode="device"``: the readers pass whole, upright RGB or grey JPEGs on as bytes and the
    model's device decodes, resizes and crops them (nvJPEG on a GPU, whose decode processes
    otherwise bound a small model: docs/benchmarks.md); anything else they decode as before. The
    pixels differ from Pillow's by a few grey levels, so the choice is part of the columns'
    provenance (a lake embedded one way is not extended the other way).

    ``tokenize="readers"``: the reader processes tokenize the captions too (:class:`TokenizeCaptions`);
    the tokens are the same, so the choice is not part of the provenance."""
    names = column_names(spec.prefix)
    dim = spec.embed_dim()
    vec = pa.list_(pa.float16(), dim)
    fields = [pa.field(names["image"], vec), pa.field(names["text"], vec), pa.field(names["score"], pa.float32()),
              pa.field(names["error"], pa.string())]
    config = {**spec.config(), "precision": precision, "dim": dim, "storage": "float16"}
    if decode != "cpu":  # (the default leaves the provenance of lakes embedded before as it was)
        config["decode"] = decode
    transform, _ = spec.build_transforms()
    if isinstance(transform, ImageTransform):  # readers send uint8 pixels; the model's device normalises them
        transform = transform.as_uint8()
    elif decode == "device":
        from lakecurate.errors import LakeError

        raise LakeError(f"{spell('--decode')} device needs an image transform lakecurate can run on the device; {spec.arch}'s "
                        f"is {type(transform).__name__}: use {given('--decode', 'cpu')}")
    reader = DevicePreprocess(transform) if decode == "device" else Preprocess(transform)
    return RowStage("embed", fields, config, ["image", "caption"], batch=EmbedRows(names, dim),
                    extra=spec.weights(), same_config=same_config,
                    setup=LoadEncoder(spec, device, precision), image=reader, batch_size=batch_size,
                    prepare=TokenizeCaptions(spec) if tokenize == "readers" else None,
                    desc=f"embed {spec.prefix}", unit="img", device=device, own_column=runner.NAME_OPTION)


def caption_columns(prefix: str, caption: str) -> dict[str, str]:
    """The columns that score another caption column against an embedding's images.

    >>> caption_columns("offline", "caption_coca")
    {'text': 'offline_caption_coca_text', 'score': 'offline_caption_coca_score'}
    """
    return {"text": f"{prefix}_{caption}_text", "score": f"{prefix}_{caption}_score"}


class ScoreCaption:
    """The batch of the caption-scoring stage: the caption column through the text tower, its
    cosine with the stored image embedding (null where either is missing)."""

    def __init__(self, caption: str, image: str, names: dict[str, str], dim: int):
        self.caption, self.image, self.names, self.dim = caption, image, names, dim

    def __call__(self, enc: Encoder, rows: Rows) -> pa.Table:
        caps = _captions(rows.columns, self.caption)
        img, img_ok = columns.embedding_matrix(rows.columns.column(self.image))
        txt_ok = np.array([c is not None for c in caps], bool)
        txt = np.zeros((len(caps), self.dim), np.float32)
        if txt_ok.any():
            txt[txt_ok] = enc.encode_texts([c for c in caps if c is not None]).numpy()
        ok = img_ok & txt_ok
        return pa.table({self.names["text"]: _vectors(txt, txt_ok),
                         self.names["score"]: pa.array((img * txt).sum(axis=1).astype(np.float32), mask=~ok)})


def caption_stage(spec: EncoderSpec, caption: str, *, device: str = "auto", precision: str = "fp32",
                  batch_size: int = 256) -> RowStage:
    """Score ``caption`` (a synthetic caption, say) against the images ``spec`` embedded already."""
    names = caption_columns(spec.prefix, caption)
    dim = spec.embed_dim()
    image = column_names(spec.prefix)["image"]
    fields = [pa.field(names["text"], pa.list_(pa.float16(), dim)), pa.field(names["score"], pa.float32())]
    config = {**spec.config(), "precision": precision, "dim": dim, "storage": "float16", "caption": caption}
    return RowStage("embed-caption", fields, config, [caption, image], batch=ScoreCaption(caption, image, names, dim),
                    extra=spec.weights(), same_config=same_config,
                    setup=LoadEncoder(spec, device, precision), batch_size=batch_size, desc=f"score {caption}",
                    unit="row", device=device, own_column=runner.NAME_OPTION)


PRECISIONS = ("fp32", "bf16", "fp16")


def check_options(*, batch_size: int, workers: int | None, precision: str, device: str,
                  max_fragments: int | None = None, index_min_rows: int | None = None, decode: str = "cpu",
                  tokenize: str = "auto") -> None:
    """Refuse bad options before anything is declared: ``batch_size=-4`` once marked fragments as
    embedded with nothing in them. One :class:`LakeError` line naming the option."""
    from lakecurate.errors import LakeError
    from lakecurate.options import MOST_WORKERS, whole

    whole("--batch-size", batch_size, 1)
    whole("--workers", workers, 0, none_ok=True, high=MOST_WORKERS)
    whole("max_fragments", max_fragments, 0, none_ok=True)
    whole("index_min_rows", index_min_rows, 0, none_ok=True)
    if precision not in PRECISIONS:
        raise LakeError(f"{spell('--precision')} must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if decode not in DECODES:
        raise LakeError(f"{spell('--decode')} must be one of {', '.join(DECODES)}, not {decode!r}")
    if tokenize not in TOKENIZES:
        raise LakeError(f"{spell('--tokenize')} must be one of {', '.join(TOKENIZES)}, not {tokenize!r}")
    from lakecurate.options import device as check_device

    check_device(device)


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
    caption_col: str = "caption",
    decode: str = "cpu",
    tokenize: str = "auto",
) -> EmbedReport:
    """Add image/text embedding and alignment-score columns for every row that lacks them (and the
    fragments whose image or caption was rewritten since: ``runner.run``).

    Example::

        report = lake.embed("offline")             # columns offline_image, offline_text, offline_score
        lake.sql("SELECT key, offline_score FROM pairs ORDER BY offline_score LIMIT 5")

    ``caption_col``: score another caption column (``caption_coca`` from ``recaption``, say) against
    the images this encoder embedded already: ``{prefix}_{caption_col}_text`` and ``_score``, no
    image decoded again.

    ``decode="device"``: whole JPEGs are decoded, resized and cropped on the model's device
    (nvJPEG with ``device="cuda"``), the rest by the decode processes (:func:`embed_stage`).

    ``tokenize``: where captions are tokenized: ``model`` (the model's process), ``readers`` (the
    decode processes, which then import the tokenizer's library: a few seconds of each one's CPU),
    ``auto`` (readers where they have time to spare and the model's process has none: on a GPU
    with ``decode="device"``, where the readers only parse headers, the local engine's or a Ray
    GPU actor's own; the model's process otherwise: readers that decode are the bound, and on a
    CPU both take the same cores). The tokens are the same either way.

    ``engine="ray"`` embeds the fragments on a Ray cluster instead: one actor per CPU (per GPU
    with ``device="cuda"``, or ``auto`` on a cluster with GPUs, each with reader processes of its
    own) loads the model once and embeds, checkpoints and commits whole fragments, as the local
    engine does.
    """
    from lakecurate.engines import check_engine, gpu_actors

    check_engine(engine)
    check_options(batch_size=batch_size, workers=workers, precision=precision, device=device,
                  max_fragments=max_fragments, index_min_rows=index_min_rows, decode=decode, tokenize=tokenize)
    if engine == "local":  # a device this machine lacks: refused before anything is declared
        resolve_device(device)
    spec = model if isinstance(model, EncoderSpec) else resolve(model, pretrained, checkpoint, name)
    columns.check_table(lake)  # a foreign or newer table: refused before workers read it
    if caption_col != "caption":
        if decode != "cpu" or tokenize == "readers":
            from lakecurate.errors import LakeError

            if tokenize == "readers":
                raise LakeError(f"{spell('--tokenize')} readers applies to embedding images and captions together; "
                                f"{spell('--caption-col')} scores a caption in the model's process: leave {spell('--tokenize')} out")
            raise LakeError(f"{spell('--decode')} applies to embedding images; {spell('--caption-col')} scores a caption against "
                            f"the stored image embeddings and decodes none: leave {spell('--decode')} out")
        return _embed_caption(lake, spec, caption_col, device=device, precision=precision, batch_size=batch_size,
                              workers=workers, recompute=recompute, progress=progress, engine=engine)
    on_gpu = engine == "local" and resolve_device(device).startswith("cuda")
    if tokenize == "auto":
        gpu = on_gpu or (engine == "ray" and gpu_actors(device))
        tokenize = "readers" if gpu and decode == "device" else "model"
    stage = embed_stage(spec, device=device, precision=precision, batch_size=batch_size, decode=decode,
                        tokenize=tokenize)
    names = column_names(spec.prefix)
    report = EmbedReport(lake=lake.uri, model=spec.arch, columns=names, meaningless=spec.meaningless)
    if workers is None and on_gpu:
        workers = default_workers(beside_gpu=True)  # a GPU embeds faster than half the cores decode
    rep = runner.run(lake, stage, engine=engine, workers=workers, recompute=recompute, progress=progress,
                     max_fragments=max_fragments)
    report.fragments_total, report.fragments_done, report.versions = rep.fragments_total, rep.fragments, rep.versions
    report.rows_embedded, report.rows_resumed, report.model_load_seconds = rep.rows, rep.rows_resumed, rep.setup_seconds
    report.fragments_elsewhere, report.elsewhere = rep.fragments_elsewhere, rep.elsewhere
    report.rows_refreshed = rep.rows_refreshed
    report.errors = rep.counts.get(names["error"], 0)
    if rep.rows or rep.rows_resumed:
        report.indexed = lake.ensure_vector_index(names["image"], *(() if index_min_rows is None else (index_min_rows,)))
    report.seconds = rep.seconds
    return report


def check_caption_col(uri: str, schema: pa.Schema, caption: str) -> None:
    """Refuse a ``caption_col`` that is not a text column of ``schema`` (the lake's: ``lakecurate
    run`` asks before its first step), naming the caption columns there are (``caption`` among
    them: the list named only ``caption_*`` and said "none yet" beside the default)."""
    from lakecurate.errors import LakeError

    if caption not in schema.names or not pa.types.is_string(schema.field(caption).type):
        from lakecurate.names import caption_choices

        have = caption_choices(schema)
        raise LakeError(f"{spell('--caption-col')} {caption!r} is not a text column of lake '{uri}'; caption columns: "
                        f"{', '.join(have) or 'none'}"
                        f"{'' if any(n != 'caption' for n in have) else ' (lakecurate recaption makes another)'}")


def _embed_caption(lake: "Store", spec: EncoderSpec, caption: str, *, device: str, precision: str, batch_size: int,
                   workers: int | None, recompute: bool, progress: bool | None, engine: str) -> EmbedReport:
    from lakecurate.errors import LakeError
    from lakecurate.graph import embed_command

    ds = lake.dataset()
    image = column_names(spec.prefix)["image"]
    check_caption_col(lake.uri, ds.schema, caption)
    if image not in ds.schema.names or columns.fragments_to_fill(ds, image):
        raise LakeError(f"scoring {caption} needs the {spec.prefix} image embedding of every row; run: "
                        f"{embed_command(lake, spec.prefix, {'config': spec.config(), **spec.weights()})}, then this again")
    names = caption_columns(spec.prefix, caption)
    report = EmbedReport(lake=lake.uri, model=spec.arch, columns=names, meaningless=spec.meaningless)
    rep = runner.run(lake, caption_stage(spec, caption, device=device, precision=precision, batch_size=batch_size),
                     engine=engine, workers=0 if workers is None else workers, recompute=recompute, progress=progress)
    report.fragments_total, report.fragments_done, report.versions = rep.fragments_total, rep.fragments, rep.versions
    report.rows_embedded, report.rows_resumed, report.model_load_seconds = rep.rows, rep.rows_resumed, rep.setup_seconds
    report.fragments_elsewhere, report.elsewhere = rep.fragments_elsewhere, rep.elsewhere
    report.rows_refreshed = rep.rows_refreshed
    report.seconds = rep.seconds
    return report
