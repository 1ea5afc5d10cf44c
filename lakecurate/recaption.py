"""The recaption stage: a synthetic caption for every image, as a column beside the original.

``recaption(lake, "coca_ViT-B-32")`` adds ``caption_<name>`` (the new caption) and
``caption_<name>_error`` (why a row has none: an undecodable image). The stage runs on the stage
runner like every per-row stage: the captioner (:mod:`lakecurate.captioners`) loads once in
``setup``, the reader processes decode and preprocess the images, ``batch`` writes the captions; so
the columns are filled per fragment, ``caption`` is never modified, a re-run with the same settings
does nothing, rows appended later are the next run's only work, a killed run resumes from its last
finished batch, and ``engine="ray"`` captions on Ray actors. The provenance records the model and
weights, the decoding parameters and seed, and the source columns.

A row an endpoint failed (down for a while, 500s, timeouts) keeps its error until
``retry_errors=True`` computes again the rows whose caption is null and whose error is set,
writing over those rows only (the captions there are stay): a re-run alone finds every fragment
filled and does nothing.

    lakecurate recaption ./lake --model coca_ViT-B-32 --pretrained mscoco_finetuned_laion2b_s13b_b90k
    lakecurate sql ./lake "SELECT caption, caption_cocavitb32mscoco FROM pairs LIMIT 5"
"""

from __future__ import annotations

import inspect
import os
import zlib
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Iterable

import pyarrow as pa

from lakecurate import columns, runner
from lakecurate.captioners import (
    DEFAULT_MAX_TOKENS,
    Captioner,
    CaptionerSpec,
    EndpointClient,
    EndpointSpec,
    HFCaptioner,
    check_prompt_columns,
    image_data_url,
    load_captioner,
    resolve_captioner,
    resolve_endpoint,
)
from lakecurate.encoders import resolve_device, same_config
from lakecurate.errors import LakeError
from lakecurate.options import spell, words
from lakecurate.images import Preprocess, decode_small
from lakecurate.runner import Rows, RowStage

if TYPE_CHECKING:
    from lakecurate.store import Store


@dataclass
class RecaptionReport:
    lake: str
    model: str
    column: str
    rows: int = 0  # rows this run computed: new ones, and with retry_errors the error rows computed again
    rows_resumed: int = 0  # rows an earlier, killed run computed, committed by this one
    captioned: int = 0  # of rows + rows_resumed: those that got a caption
    errors: int = 0  # of rows + rows_resumed: those that got an error instead (captioned + errors = both)
    retried: int = 0  # of rows: error rows computed again (retry_errors)
    fragments: int = 0
    meaningless: bool = False
    model_load_seconds: float = 0.0
    seconds: float = 0.0
    retries: int = 0  # endpoint: attempts beyond the first, over the column
    fragments_elsewhere: int = 0  # left to another run captioning them now (runner.RunReport)
    elsewhere: list[str] = field(default_factory=list)
    endpoint_errors: int = 0  # endpoint: rows of the whole column without a caption because a request failed
    retry_command: str | None = None  # ...and the command that computes them again, when there are any
    warnings: list[str] = field(default_factory=list)  # options taken but not read (--top-k when greedy)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class LoadCaptioner:
    """The stage's ``setup()``: the captioner, loaded once per process or Ray actor."""

    def __init__(self, spec: CaptionerSpec, device: str):
        self.spec, self.device = spec, device

    def __call__(self) -> "Captioner | HFCaptioner":
        return load_captioner(self.spec, self.device)


class CaptionRows:
    """The stage's ``batch(captioner, rows)``: captions of the decodable images, errors for the rest.
    A sampled decoder is seeded per batch by its first row's id, so a resumed run samples as a
    clean one does."""

    def __init__(self, column: str):
        self.column = column

    def __call__(self, cap: "Captioner | HFCaptioner", rows: Rows) -> pa.Table:
        errors = rows.images["image_errors"]
        ids = rows.columns.column("id").to_pylist()
        texts = cap.caption(rows.images["pixels"], zlib.crc32(ids[0].encode()) if ids else 0) \
            if rows.images["pixels"] is not None else []
        it = iter(texts)
        out = [None if e else next(it) for e in errors]
        return pa.table({self.column: pa.array(out, pa.string()), f"{self.column}_error": pa.array(errors, pa.string())})


class SmallImages:
    """In the reader processes: each image decoded upright at most ``side`` pixels (uint8 RGB), for
    a Hugging Face processor to finish in the captioning process."""

    def __init__(self, side: int):
        self.side = side

    def __call__(self, blobs: list) -> dict[str, Any]:
        import numpy as np

        pixels, errors = [], []
        for data in blobs:
            small = decode_small(data, self.side)
            errors.append(None if small is not None else "image_undecodable: no decodable image to caption")
            if small is not None:
                pixels.append(np.asarray(small[0]))
        return {"pixels": pixels or None, "image_errors": errors}


class EndpointImages:
    """In the reader processes: each image as a JPEG data URL (caption mode of an endpoint)."""

    def __init__(self, side: int):
        self.side = side

    def __call__(self, blobs: list) -> dict[str, Any]:
        urls, errors = zip(*(image_data_url(b, self.side) for b in blobs)) if blobs else ((), ())
        return {"urls": list(urls), "image_errors": list(errors)}


class LoadClient:
    def __init__(self, spec: EndpointSpec):
        self.spec = spec

    def __call__(self) -> EndpointClient:
        return EndpointClient(self.spec)


class EndpointRows:
    """The batch of an endpoint captioner: every row ends with a caption or an error, and the
    attempts it took (``_tries``: retries are what it took beyond one). Each row's prompt is the
    spec's with that row's values in its placeholders; in rephrase mode a row whose caption to
    rewrite (``{caption}``, else the first ``{caption_*}``) is empty is an error, not a request."""

    def __init__(self, spec: EndpointSpec):
        self.spec, self.column, self.mode = spec, spec.column(), spec.mode

    def __call__(self, client: EndpointClient, rows: Rows) -> pa.Table:
        n = rows.num_rows
        fields = self.spec.fields()
        values = [dict(zip(fields, vals)) for vals in zip(*(rows.columns.column(f).to_pylist() for f in fields))] \
            if fields else [{} for _ in range(n)]
        if self.mode == "rephrase":
            subject = self.spec.subject()
            urls = [None] * n
            errors = [None if str(v.get(subject) or "").strip() else f"{subject}_missing: nothing to rephrase"
                      for v in values]
        else:
            urls, errors = rows.images["urls"], rows.images["image_errors"]
        todo = [k for k in range(n) if errors[k] is None]
        done = dict(zip(todo, client.batch([urls[k] for k in todo], [self.spec.render(values[k]) for k in todo])))
        text = [done[k][0] if k in done else None for k in range(n)]
        err = [done[k][1] if k in done else errors[k] for k in range(n)]
        tries = [done[k][2] if k in done else 0 for k in range(n)]
        return pa.table({self.column: pa.array(text, pa.string()), f"{self.column}_error": pa.array(err, pa.string()),
                         f"{self.column}_tries": pa.array(tries, pa.int32())})


def recaption_stage(spec: "CaptionerSpec | EndpointSpec", *, device: str = "auto", batch_size: int = 16) -> RowStage:
    col = spec.column()
    fields = [pa.field(col, pa.string()), pa.field(f"{col}_error", pa.string())]
    if isinstance(spec, EndpointSpec):
        rephrase = spec.mode == "rephrase"
        inputs = ([] if rephrase else ["image"]) + spec.fields()
        return RowStage("recaption", fields + [pa.field(f"{col}_tries", pa.int32())], spec.config(), inputs,
                        batch=EndpointRows(spec), setup=LoadClient(spec),
                        image=None if rephrase else EndpointImages(spec.image_side),
                        batch_size=batch_size, desc=f"recaption {spec.name}", unit="row",
                        extra={"transport": spec.transport()}, own_column=runner.NAME_OPTION)
    # a checkpoint file or directory by what it is, not where it lies (as embed's weights): the
    # column made with it elsewhere is this config (same_config), the path is recorded beside it
    if spec.family == "hf":
        image: Any = SmallImages(spec.image_side)
    else:
        image = Preprocess(spec.encoder_spec().build_transforms()[0])
    return RowStage("recaption", fields, spec.config(), ["image", "id"], batch=CaptionRows(col),
                    setup=LoadCaptioner(spec, device), image=image, batch_size=batch_size, sources=["image"],
                    extra=spec.weights(), same_config=same_config, desc=f"recaption {spec.name}", unit="img",
                    device=device, own_column=runner.NAME_OPTION)


def retry_error_rows(lake: "Store", stage: RowStage, *, workers: int | None = None,
                     progress: bool | None = None) -> runner.RunReport:
    """Compute ``stage``'s rows again whose caption (its first column) is null and whose error (its
    second) is set (:func:`lakecurate.runner.recompute`): the runner fills whole fragments once, so
    without this a failed row stays failed. An endpoint's ``_tries`` adds up the attempts of every
    run; the report's ``sums`` and ``nonzero`` hold this run's."""
    col, err = stage.names[:2]
    tries = stage.names[2:3]

    def add_tries(before: pa.Table, out: pa.Table) -> pa.Table:
        import pyarrow.compute as pc

        for name in tries:
            i = out.schema.get_field_index(name)
            out = out.set_column(i, name, pc.add(out.column(name), pc.fill_null(before.column(name), 0)))
        return out

    return runner.recompute(lake, stage, f"{col} IS NULL AND {err} IS NOT NULL", carry=add_tries,
                            desc=f"{stage.desc or col} (errors again)", workers=workers, progress=progress)


def _as_declared(lake: "Store", stage: RowStage) -> RowStage:
    """An endpoint column declared before its transport settings left the config (2026-12-05) holds
    them in its config hash: a run whose config differs from it only there continues that column
    under its recorded config (it was refused as another config)."""
    import dataclasses

    from lakecurate.captioners import TRANSPORT

    ds = lake.dataset()
    name = stage.names[0]
    old = columns.field_provenance(ds.schema.field(name)) if name in ds.schema.names else None
    if old is None or old["stage"] != "recaption" or not any(k in old["config"] for k in TRANSPORT):
        return stage
    if {k: v for k, v in old["config"].items() if k not in TRANSPORT} != stage.config:
        return stage  # another config: refused as before
    return dataclasses.replace(stage, config=old["config"])


def recaption(lake: "Store", model: "str | CaptionerSpec | EndpointSpec" = "tiny-random-coca", *, pretrained: str | None = None,
              checkpoint: str | None = None, name: str | None = None, max_tokens: int = DEFAULT_MAX_TOKENS,
              temperature: float = 0.0, top_k: int = 5, seed: int = 0, device: str = "auto", batch_size: int | None = None,
              workers: int | None = None, recompute: bool = False, progress: bool | None = None,
              engine: str = "local", endpoint: str | None = None, api_model: str | None = None,
              mode: str = "caption", prompt: str | None = None, concurrency: int = 32, timeout: float = 30.0,
              retries: int = 4, api_key_env: str = "OPENAI_API_KEY", retry_errors: bool = False) -> RecaptionReport:
    """Add ``caption_<name>`` (+ ``_error``) for every row that lacks it; ``caption`` is never modified.

    Example::

        lake.recaption("coca_ViT-B-32", pretrained="mscoco_finetuned_laion2b_s13b_b90k")
        lake.recaption("tiny-random-coca")            # meaningless captions, for tests
        lake.recaption("./blip-image-captioning-large", prompt="a photography of")  # a local HF checkpoint
        lake.recaption(endpoint="http://127.0.0.1:8000/v1", api_model="llava", mode="caption")
        lake.recaption(endpoint="http://127.0.0.1:8000/v1", api_model="llama3", mode="rephrase")

    With ``endpoint`` (an OpenAI-compatible server: vLLM, llama.cpp, Ollama, hosted APIs) a
    vision-language model captions each image, or with ``mode="rephrase"`` a text model rewrites the
    original caption (``prompt`` placeholders such as ``{caption}`` or ``{img_text_lines}`` take each
    row's values of those columns); ``concurrency`` requests at a time, ``timeout`` seconds each, ``retries`` with
    backoff on 429/5xx/timeouts; what still fails is the row's ``_error``; the key comes from the
    environment variable ``api_key_env`` and is never stored. A first run (or ``recompute``) against an
    endpoint sends one request before it declares the columns, so one that is down or refuses the key
    writes no version. ``retry_errors=True`` computes again the rows with an error and no caption
    (:func:`retry_error_rows`) before it fills new rows; the report counts captions and errors apart,
    and for an endpoint says how many rows of the column it failed and the command to retry them.
    """
    from lakecurate.engines import check_engine
    from lakecurate.options import device as check_device
    from lakecurate.options import MOST_WORKERS, real, whole

    check_engine(engine)
    if not isinstance(retry_errors, bool):
        raise LakeError(f"{spell('--retry-errors')} is a flag: True or False, not {retry_errors!r}")
    if retry_errors and recompute:
        raise LakeError(f"{spell('--retry-errors')} computes the failed rows again; {spell('--recompute')} computes every row again: "
                        "drop one")
    for opt, value in (("--name", name), ("--prompt", prompt), ("--api-key-env", api_key_env), ("--api-model", api_model),
                       ("--endpoint", endpoint), ("--pretrained", pretrained), ("--checkpoint", checkpoint)):
        if value is not None and not isinstance(value, (str, os.PathLike) if opt == "--checkpoint" else str):
            raise LakeError(f"{spell(opt)} must be text, not {value!r}")
    temperature = real("--temperature", temperature, 0, 5)  # 0: greedy
    # a batch is what one model call takes (CoCa), or what the request pool works through (endpoints)
    batch_size = batch_size if batch_size is not None else (256 if endpoint is not None or isinstance(model, EndpointSpec) else 16)
    whole("--batch-size", batch_size, 1)
    whole("--workers", workers, 0, none_ok=True, high=MOST_WORKERS)
    check_device(device)
    whole("--seed", seed, 0, high=2 ** 32 - 1)  # torch's generator seed is seed * 1,000,003 + the batch's: an int64
    # options of the other kind of captioner were silently ignored (--mode rephrase without --endpoint captioned
    # the images with CoCa; --checkpoint /nonexistent with --endpoint went unread)
    given = {k: v for k, v in locals().items() if k in _DEFAULTS and v != _DEFAULTS[k]}  # options set to other than the default
    if endpoint is not None or isinstance(model, EndpointSpec):
        problem = misplaced_options([k for k in given if not (k == "model" and isinstance(model, EndpointSpec))], True)
    else:
        problem = misplaced_options(given, False) if not isinstance(model, CaptionerSpec) else None
    if problem:
        raise LakeError(problem)
    notes = []
    if "top_k" in given and not temperature > 0 and endpoint is None and not isinstance(model, EndpointSpec):
        notes.append(top_k_greedy())
    if isinstance(model, (CaptionerSpec, EndpointSpec)):
        spec = model
    elif endpoint is not None:
        spec = resolve_endpoint(endpoint, api_model or "", mode=mode, prompt=prompt, name=name,
                                max_tokens=max_tokens,
                                temperature=temperature, seed=seed, concurrency=concurrency, timeout=timeout,
                                retries=retries, api_key_env=api_key_env)
    else:
        spec = resolve_captioner(model, pretrained, checkpoint, name, max_tokens=max_tokens, temperature=temperature,
                                 top_k=top_k, seed=seed, prompt=prompt)
    if spec.column() == "caption_redacted":  # signals --redact and recipes write it: a caption model's would pass for it
        raise LakeError(f"{spell('--name')} {spec.name!r}: caption_redacted is the redacted caption ("
                        + words("lakecurate signals --redact", "lake.signals(['redact'])")
                        + ", a recipe's redact = true); pick another name")
    columns.check_table(lake)
    if isinstance(spec, EndpointSpec):
        check_prompt_columns(spec, lake.dataset().schema, lake.uri)
    elif engine == "local":  # a device this machine lacks: refused before the columns are declared
        resolve_device(device)
    stage = recaption_stage(spec, device=device, batch_size=batch_size)
    col = spec.column()
    if isinstance(spec, EndpointSpec):
        stage = _as_declared(lake, stage)
        if recompute or col not in lake.dataset().schema.names:
            # declared, then dropped when no request got through: two versions of nothing (and with
            # --recompute the column's captions gone); one request first tells a server down or a bad key
            EndpointClient(spec).check()
    fixed = runner.RunReport()
    if retry_errors and col in lake.dataset().schema.names:
        # another config: refused here (as a run without the flag is), not mixed into the column; the
        # same one recorded otherwise (a checkpoint at another path): its rows written as the column's
        ds = lake.dataset()
        prov = stage.provenance(ds.version)
        columns.declare(lake, stage.fields, prov, same=stage.same_config)
        fixed = retry_error_rows(lake, runner.as_recorded(stage, ds, prov)[0], workers=workers, progress=progress)
    rep = runner.run(lake, stage, engine=engine, workers=workers, recompute=recompute, progress=progress)
    both = [rep, fixed]
    out = RecaptionReport(lake=lake.uri, model=spec.arch if isinstance(spec, CaptionerSpec) else spec.api_model,
                          column=col, rows=rep.rows + fixed.rows, rows_resumed=rep.rows_resumed,
                          captioned=sum(r.counts.get(col, 0) for r in both),
                          errors=sum(r.counts.get(f"{col}_error", 0) for r in both), retried=fixed.rows,
                          fragments=rep.fragments + fixed.fragments, meaningless=spec.meaningless,
                          model_load_seconds=rep.setup_seconds, seconds=rep.seconds + fixed.seconds,
                          fragments_elsewhere=rep.fragments_elsewhere, elsewhere=rep.elsewhere, warnings=notes)
    if isinstance(spec, EndpointSpec):  # this run's rows (and those it resumed), not the whole column's
        tries = f"{col}_tries"
        out.retries = sum(r.sums.get(tries, 0) - r.nonzero.get(tries, 0) for r in both)  # past each row's first
        out.endpoint_errors = lake.dataset().count_rows(filter=f"{col} IS NULL AND {col}_error LIKE 'endpoint:%'")
        if out.endpoint_errors:
            from lakecurate.graph import lakecurate_on, recaption_args

            out.retry_command = (f"{lakecurate_on(lake)} recaption {lake.shell} "
                                 f"{recaption_args({**stage.config, **spec.transport()})} --retry-errors")
    return out



# (a warning, not a refusal: a column made so holds top_k in its config, and its fix command passes it)
def top_k_greedy() -> str:
    """The warning for a top-k given to greedy decoding, naming the options as the interface speaking does."""
    k, t = spell("--top-k"), spell("--temperature")
    return (f"{k} is read only when sampling: {t} > 0; at {t} 0 (greedy) the most likely token is always taken, "
            f"whatever {k} says")


def misplaced_options(given: Iterable[str], endpoint: bool) -> str | None:
    """What is wrong with the options ``given`` (keyword names) for the kind of captioner a run uses
    (``endpoint``: a server's model; else a local one), or None: those of the other kind were
    silently ignored (--mode rephrase without --endpoint captioned the images with CoCa)."""
    given = set(given)
    if endpoint:
        bad = [spell(f"--{k.replace('_', '-')}") for k in ("model", "pretrained", "checkpoint", "top_k") if k in given]
        return (f"{', '.join(bad)} {'does' if len(bad) == 1 else 'do'} not apply with {spell('--endpoint')} (the server's model "
                f"captions); drop {'it' if len(bad) == 1 else 'them'}") if bad else None
    bad = [spell(f"--{k.replace('_', '-')}") for k in ("mode", "api_model", "concurrency", "timeout", "retries", "api_key_env")
           if k in given]
    return (f"{', '.join(bad)} {'needs' if len(bad) == 1 else 'need'} {spell('--endpoint')} (an OpenAI-compatible server); a "
            "local model captions the images") if bad else None


_DEFAULTS = {p.name: p.default for p in inspect.signature(recaption).parameters.values()
             if p.default is not inspect.Parameter.empty}  # what "given" is measured against
