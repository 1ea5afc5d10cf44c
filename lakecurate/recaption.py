"""The recaption stage: a synthetic caption for every image, as a column beside the original.

``recaption(lake, "coca_ViT-B-32")`` adds ``caption_<name>`` (the new caption) and
``caption_<name>_error`` (why a row has none: an undecodable image). The stage runs on the stage
runner like every per-row stage: the captioner (:mod:`lakecurate.captioners`) loads once in
``setup``, the reader processes decode and preprocess the images, ``batch`` writes the captions; so
the columns are filled per fragment, ``caption`` is never modified, a re-run with the same settings
does nothing, rows appended later are the next run's only work, a killed run resumes from its last
finished batch, and ``engine="ray"`` captions on Ray actors. The provenance records the model and
weights, the decoding parameters and seed, and the source columns.

    lakecurate recaption ./lake --model coca_ViT-B-32 --pretrained mscoco_finetuned_laion2B-s13B-b90k
    lakecurate sql ./lake "SELECT caption, caption_cocavitb32_mscoco FROM pairs LIMIT 5"
"""

from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from lakecurate import columns, runner
from lakecurate.captioners import DEFAULT_MAX_TOKENS, Captioner, CaptionerSpec, resolve_captioner
from lakecurate.images import Preprocess
from lakecurate.runner import Rows, RowStage

if TYPE_CHECKING:
    from lakecurate.store import Store


@dataclass
class RecaptionReport:
    lake: str
    model: str
    column: str
    rows: int = 0
    rows_resumed: int = 0
    errors: int = 0
    fragments: int = 0
    meaningless: bool = False
    model_load_seconds: float = 0.0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class LoadCaptioner:
    """The stage's ``setup()``: the captioner, loaded once per process or Ray actor."""

    def __init__(self, spec: CaptionerSpec, device: str):
        self.spec, self.device = spec, device

    def __call__(self) -> Captioner:
        return Captioner(self.spec, self.device)


class CaptionRows:
    """The stage's ``batch(captioner, rows)``: captions of the decodable images, errors for the rest.
    A sampled decoder is seeded per batch by its first row's id, so a resumed run samples as a
    clean one does."""

    def __init__(self, column: str):
        self.column = column

    def __call__(self, cap: Captioner, rows: Rows) -> pa.Table:
        errors = rows.images["image_errors"]
        ids = rows.columns.column("id").to_pylist()
        texts = cap.caption(rows.images["pixels"], zlib.crc32(ids[0].encode()) if ids else 0) \
            if rows.images["pixels"] is not None else []
        it = iter(texts)
        out = [None if e else next(it) for e in errors]
        return pa.table({self.column: pa.array(out, pa.string()), f"{self.column}_error": pa.array(errors, pa.string())})


def recaption_stage(spec: CaptionerSpec, *, device: str = "auto", batch_size: int = 16) -> RowStage:
    col = spec.column()
    transform, _ = spec.encoder_spec().build_transforms()
    return RowStage("recaption", [pa.field(col, pa.string()), pa.field(f"{col}_error", pa.string())], spec.config(),
                    ["image", "id"], batch=CaptionRows(col), setup=LoadCaptioner(spec, device),
                    image=Preprocess(transform), batch_size=batch_size, sources=["image"], desc=f"recaption {spec.name}",
                    unit="img")


def recaption(lake: "Store", model: "str | CaptionerSpec" = "tiny-random-coca", *, pretrained: str | None = None,
              checkpoint: str | None = None, name: str | None = None, max_tokens: int = DEFAULT_MAX_TOKENS,
              temperature: float = 0.0, top_k: int = 5, seed: int = 0, device: str = "auto", batch_size: int = 16,
              workers: int | None = None, recompute: bool = False, progress: bool | None = None,
              engine: str = "local") -> RecaptionReport:
    """Add ``caption_<name>`` (+ ``_error``) for every row that lacks it; ``caption`` is never modified.

    Example::

        lake.recaption("coca_ViT-B-32", pretrained="mscoco_finetuned_laion2B-s13B-b90k")
        lake.recaption("tiny-random-coca")            # meaningless captions, for tests
    """
    from lakecurate.engines import check_engine
    from lakecurate.options import device as check_device
    from lakecurate.options import whole

    check_engine(engine)
    whole("--batch-size", batch_size, 1)
    whole("--workers", workers, 0, none_ok=True)
    check_device(device)
    spec = model if isinstance(model, CaptionerSpec) else resolve_captioner(
        model, pretrained, checkpoint, name, max_tokens=max_tokens, temperature=temperature, top_k=top_k, seed=seed)
    columns.check_table(lake)
    stage = recaption_stage(spec, device=device, batch_size=batch_size)
    rep = runner.run(lake, stage, engine=engine, workers=workers, recompute=recompute, progress=progress)
    return RecaptionReport(lake=lake.uri, model=spec.arch, column=spec.column(), rows=rep.rows,
                           rows_resumed=rep.rows_resumed, errors=rep.counts.get(f"{spec.column()}_error", 0),
                           fragments=rep.fragments, meaningless=spec.meaningless,
                           model_load_seconds=rep.setup_seconds, seconds=rep.seconds)
