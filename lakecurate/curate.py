"""Recipes: signals -> keep/drop decisions with a reason, recorded as columns and a tag.

A recipe is a TOML file: a name, an ordered list of filter steps with thresholds, and optional
privacy settings. ``curate(lake, recipe)`` computes the signals the steps need and that the lake
lacks (caption and image signals, dedup groups; embeddings must exist: they need a model), then
writes ``keep`` and ``drop_reason`` (the first step a row fails, in recipe order) and tags the
version: ``<name>-<hash>-v<version>``, so the exact set can be reopened with
``lake.dataset(tag)``. The same recipe on an unchanged lake does no work.

```toml
name = "basic"
embedding = "offline"            # optional: the lake's only embedding by default

[[step]]
filter = "ingest_error"

[[step]]
filter = "caption_length"
min_words = 3

[[step]]
filter = "alignment"
min_percentile = 30              # drop the lowest-scoring 30% of the lake

[privacy]
redact = true                    # also write caption_redacted (caption itself is never modified)
```

Filters are small classes in ``FILTERS`` (datatrove style): each names the signals it reads, its
parameters with defaults, and one ``drop`` method returning a boolean mask over a pandas frame.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import sys
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd
import pyarrow as pa

from lakecurate import columns
from lakecurate.encoders import meaningless
from lakecurate.errors import LakeError
from lakecurate.graph import embed_command, no_producer, write_decisions
from lakecurate.names import Produce, embedding_columns
from lakecurate.schema import PAIRS_SCHEMA

if TYPE_CHECKING:
    import lance

    from lakecurate.store import Store

CAPTION = "caption signals"
IMAGE = "image signals"
DEDUP = "dedup"
EMBEDDING = "embedding"
# Alignment defaults by encoder family: open_clip ViT-B-32 0.28 is DataComp's CLIP-score filter;
# offline 0.05 is the 5th percentile of clean pairs on Flickr8k photos its heads never saw (on the
# photos they were trained on, scores run far higher: 5th percentile 0.49). docs/benchmarks.md.
ALIGNMENT_MIN = {"open_clip": 0.28, "offline": 0.05}
BUILTIN = Path(__file__).parent / "recipes"  # recipes shipped with the package, usable by name
ATTEMPTS = 5  # decision rounds when another curate changes keep/drop_reason meanwhile


class Filter:
    """One recipe step: ``drop(frame, params)`` -> True where the row fails."""

    name: ClassVar[str]
    doc: ClassVar[str]
    needs: ClassVar[tuple[str, ...]] = ()  # CAPTION, IMAGE, DEDUP, EMBEDDING
    columns: ClassVar[tuple[str, ...]] = ()  # lake columns read
    params: ClassVar[dict[str, Any]] = {}  # name -> default
    limits: ClassVar[dict[str, Limit]] = {}  # name -> allowed type and range, checked by load_recipe

    def drop(self, df: pd.DataFrame, p: dict[str, Any]) -> np.ndarray:
        raise NotImplementedError


@dataclass(frozen=True)
class Limit:
    """What a filter parameter may be: ``kind`` "int" (a whole number), "number" (finite) or
    "codes" (a non-empty list of strings), within [lo, hi]; ``optional``: None (unset) is allowed."""

    kind: str
    lo: float | None = None
    hi: float | None = None
    optional: bool = False

    def allowed(self) -> str:
        what = {"int": "a whole number", "number": "a number",
                "codes": 'a list of language codes, e.g. ["en", "de"]'}[self.kind]
        if self.lo is not None and self.hi is not None:
            what += f" from {self.lo:g} to {self.hi:g}"
        elif self.lo is not None:
            what += f" >= {self.lo:g}"
        return what + (" (or leave it out)" if self.optional else "")

    def ok(self, value: Any) -> bool:
        if value is None:
            return self.optional
        if self.kind == "codes":
            return isinstance(value, list) and bool(value) and all(isinstance(v, str) and v.strip() for v in value)
        if isinstance(value, bool) or not isinstance(value, int if self.kind == "int" else (int, float)):
            return False
        return math.isfinite(value) and (self.lo is None or value >= self.lo) and (self.hi is None or value <= self.hi)


def _b(s: pd.Series) -> np.ndarray:
    """A nullable column as a numpy bool array, null as False."""
    return s.fillna(False).to_numpy(dtype=bool)


class IngestError(Filter):
    name, doc = "ingest_error", "the image could not be used at ingest (ingest_status = 'error')"
    columns = ("ingest_status",)

    def drop(self, df, p):
        return (df["ingest_status"] == "error").to_numpy()


class Duplicate(Filter):
    name, doc = "duplicate", "a duplicate of a better pair (dup_keep = false; runs dedup with defaults if needed)"
    needs, columns = (DEDUP,), ("dup_keep",)

    def drop(self, df, p):
        return (df["dup_keep"] == False).to_numpy()  # noqa: E712 (null: not judged)


class CaptionMissing(Filter):
    name, doc = "caption_missing", "no caption, or only whitespace"
    columns = ("caption",)

    def drop(self, df, p):
        return df["caption"].fillna("").str.strip().eq("").to_numpy()


class CaptionLength(Filter):
    name, doc = "caption_length", "fewer than min_words or more than max_words words"
    needs, columns, params = (CAPTION,), ("cap_words",), {"min_words": 3, "max_words": 100}
    limits = {"min_words": Limit("int", 0), "max_words": Limit("int", 0)}

    def drop(self, df, p):
        w = df["cap_words"]
        return _b((w < p["min_words"]) | (w > p["max_words"]))


class CaptionFilename(Filter):
    name, doc = "caption_filename", "the caption is a file name (IMG_1234.JPG)"
    needs, columns = (CAPTION,), ("cap_filename",)

    def drop(self, df, p):
        return _b(df["cap_filename"])


class CaptionUrl(Filter):
    name, doc = "caption_url", "the caption contains a URL"
    needs, columns = (CAPTION,), ("cap_url",)

    def drop(self, df, p):
        return _b(df["cap_url"])


class CaptionBoilerplate(Filter):
    name, doc = "caption_boilerplate", "stock / alt-text boilerplate ('image may contain', 'stock photo')"
    needs, columns = (CAPTION,), ("cap_boilerplate",)

    def drop(self, df, p):
        return _b(df["cap_boilerplate"])


class CaptionRepeat(Filter):
    name, doc = "caption_repeat", "a character repeated more than max_repeat times in a row"
    needs, columns, params = (CAPTION,), ("cap_max_repeat",), {"max_repeat": 5}
    limits = {"max_repeat": Limit("int", 1)}

    def drop(self, df, p):
        return _b(df["cap_max_repeat"] > p["max_repeat"])


class CaptionNonprintable(Filter):
    name, doc = "caption_nonprintable", "more than max control/replacement characters"
    needs, columns, params = (CAPTION,), ("cap_nonprintable",), {"max": 0}
    limits = {"max": Limit("int", 0)}

    def drop(self, df, p):
        return _b(df["cap_nonprintable"] > p["max"])


class Language(Filter):
    name, doc = "language", "identified language not in keep (captions of min_words or more, prob >= min_prob)"
    needs, columns = (CAPTION,), ("cap_lang", "cap_lang_prob", "cap_words")
    params = {"keep": ["en"], "min_prob": 0.5, "min_words": 3}
    limits = {"keep": Limit("codes"), "min_prob": Limit("number", 0, 1), "min_words": Limit("int", 0)}

    def drop(self, df, p):
        judged = _b((df["cap_words"] >= p["min_words"]) & (df["cap_lang_prob"] >= p["min_prob"]))
        return judged & ~df["cap_lang"].isin(p["keep"]).to_numpy()


class ImageSize(Filter):
    name, doc = "image_size", "smallest side under min_side pixels"
    columns, params = ("width", "height"), {"min_side": 64}
    limits = {"min_side": Limit("int", 0)}

    def drop(self, df, p):
        return _b(np.minimum(df["width"], df["height"]) < p["min_side"])


class Aspect(Filter):
    name, doc = "aspect", "long side more than max_aspect times the short side"
    columns, params = ("width", "height"), {"max_aspect": 3.0}
    limits = {"max_aspect": Limit("number", 1)}

    def drop(self, df, p):
        lo, hi = np.minimum(df["width"], df["height"]), np.maximum(df["width"], df["height"])
        return _b(hi > p["max_aspect"] * lo)


class Blur(Filter):
    name, doc = "blur", "variance of the Laplacian under min_sharpness (at 128 px short side)"
    needs, columns, params = (IMAGE,), ("img_sharpness",), {"min_sharpness": 250.0}
    limits = {"min_sharpness": Limit("number", 0)}

    def drop(self, df, p):
        return _b(df["img_sharpness"] < p["min_sharpness"])


class LowInformation(Filter):
    name, doc = "low_information", "grayscale histogram entropy under min_entropy bits (near-uniform images)"
    needs, columns, params = (IMAGE,), ("img_entropy",), {"min_entropy": 3.0}
    limits = {"min_entropy": Limit("number", 0, 8)}  # bits of a 256-bin histogram

    def drop(self, df, p):
        return _b(df["img_entropy"] < p["min_entropy"])


class Grayscale(Filter):
    name, doc = "grayscale", "colourfulness under max_colorfulness (grayscale or nearly)"
    needs, columns, params = (IMAGE,), ("img_colorfulness",), {"max_colorfulness": 3.0}
    limits = {"max_colorfulness": Limit("number", 0)}

    def drop(self, df, p):
        return _b(df["img_colorfulness"] < p["max_colorfulness"])


class Pii(Filter):
    name, doc = "pii", "the caption holds an e-mail address or a phone number"
    needs, columns = (CAPTION,), ("cap_emails", "cap_phones")

    def drop(self, df, p):
        return _b((df["cap_emails"] > 0) | (df["cap_phones"] > 0))


class Alignment(Filter):
    name, doc = ("alignment", "encoder score under min, or under the min_percentile-th percentile of the lake's "
                 "scores; a pair the encoder could not score (no caption, unreadable image) fails too")
    needs = (EMBEDDING,)
    params = {"min": None, "min_percentile": None}
    limits = {"min": Limit("number", -1, 1, optional=True), "min_percentile": Limit("number", 0, 100, optional=True)}

    def drop(self, df, p):
        s = df["__score"].astype("float64")
        # curate only judges embedded rows, so a null score here is the encoder's "could not score"
        # (its _error column says why): such a pair cannot show it is aligned.
        out = s.isna().to_numpy().copy()
        if p["min"] is not None:
            out |= _b(s < p["min"])
        if p["min_percentile"] is not None and s.notna().any():
            out |= _b(s < np.nanpercentile(s.to_numpy(), p["min_percentile"]))
        return out


FILTERS: dict[str, Filter] = {f.name: f() for f in (
    IngestError, Duplicate, CaptionMissing, CaptionLength, CaptionFilename, CaptionUrl, CaptionBoilerplate,
    CaptionRepeat, CaptionNonprintable, Language, ImageSize, Aspect, Blur, LowInformation, Grayscale, Pii, Alignment)}


# --------------------------------------------------------------------------- recipes
@dataclass
class Step:
    filter: str
    reason: str
    params: dict[str, Any]


@dataclass
class Recipe:
    name: str
    steps: list[Step]
    embedding: str | None = None
    redact: bool = False
    source: str = "<dict>"

    def canonical(self) -> dict[str, Any]:
        return {"name": self.name, "embedding": self.embedding, "redact": self.redact,
                "steps": [asdict(s) for s in self.steps]}

    @property
    def hash(self) -> str:
        return hashlib.sha256(json.dumps(self.canonical(), sort_keys=True).encode()).hexdigest()[:8]


def load_recipe(recipe: str | Path | Mapping[str, Any]) -> Recipe:
    """A recipe from a TOML file or a dict, checked: unknown filters or parameters are errors
    naming the step and the valid choices."""
    if isinstance(recipe, Mapping):
        raw, source = dict(recipe), "<dict>"
    else:
        path = Path(recipe)
        if not path.is_file() and (BUILTIN / f"{recipe}.toml").is_file():
            path = BUILTIN / f"{recipe}.toml"
        if not path.is_file():
            raise LakeError(f"recipe '{path}' not found; pass a TOML file or a built-in recipe: "
                            f"{', '.join(sorted(p.stem for p in BUILTIN.glob('*.toml')))}")
        if sys.version_info >= (3, 11):
            import tomllib
        else:  # pragma: no cover
            import tomli as tomllib
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise LakeError(f"recipe '{path}' is not valid TOML: {exc}") from None
        source = str(path)
    unknown = set(raw) - {"name", "embedding", "step", "steps", "privacy"}
    if unknown:
        raise LakeError(f"recipe {source}: unknown keys {sorted(unknown)}; use name, embedding, [[step]], [privacy]")
    name = raw.get("name") or (Path(source).stem if source != "<dict>" else "recipe")
    if not isinstance(name, str) or not name.replace("-", "").replace("_", "").isalnum():
        raise LakeError(f"recipe {source}: name {name!r} may hold only letters, digits, '-' and '_' (it names a tag)")
    embedding = raw.get("embedding")
    if embedding is not None and (not isinstance(embedding, str) or not embedding):
        raise LakeError(f"recipe {source}: embedding = {embedding!r} must be the name of the lake's embedding "
                        f'columns, e.g. embedding = "offline"')
    listed = raw.get("step", raw.get("steps", []))
    if not isinstance(listed, list) or not all(isinstance(st, Mapping) for st in listed):
        raise LakeError(f'recipe {source}: steps must be [[step]] tables, each with filter = "..."')
    steps = []
    for k, st in enumerate(listed, 1):
        st = dict(st)
        fname = st.pop("filter", None)
        if not isinstance(fname, str) or fname not in FILTERS:
            raise LakeError(f"recipe {source}, step {k}: unknown filter {fname!r}; choose from {', '.join(FILTERS)}")
        f = FILTERS[fname]
        reason = st.pop("reason", fname)
        if not isinstance(reason, str) or not reason.strip():
            raise LakeError(f"recipe {source}, step {k} ({fname}): reason = {reason!r} must be a non-empty string")
        bad = set(st) - set(f.params)
        if bad:
            raise LakeError(f"recipe {source}, step {k} ({fname}): unknown parameters {sorted(bad)}; "
                            f"it takes {', '.join(f.params) or 'none'}")
        params = {**f.params, **st}
        for pname, value in st.items():
            limit = f.limits[pname]
            if not limit.ok(value):
                raise LakeError(f"recipe {source}, step {k} ({fname}): {pname} = {value!r} is not allowed; "
                                f"use {limit.allowed()}")
        if fname == "caption_length" and params["min_words"] > params["max_words"]:
            raise LakeError(f"recipe {source}, step {k} ({fname}): min_words = {params['min_words']} is more than "
                            f"max_words = {params['max_words']}; every caption would fail")
        steps.append(Step(fname, reason, params))
    if not steps:
        raise LakeError(f"recipe {source} has no [[step]]; add at least one filter")
    privacy = raw.get("privacy", {})
    if not isinstance(privacy, Mapping) or set(privacy) - {"redact"}:
        raise LakeError(f"recipe {source}: [privacy] takes only 'redact'")
    redact = privacy.get("redact", False)
    if not isinstance(redact, bool):
        raise LakeError(f"recipe {source}: [privacy] redact = {redact!r} must be true or false")
    return Recipe(name, steps, embedding, redact, source)


# --------------------------------------------------------------------------- the stage
@dataclass
class CurateReport:
    lake: str
    recipe: str
    recipe_hash: str
    tag: str = ""
    version: int = 0
    rows: int = 0
    kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> rows, in recipe order
    computed: list[str] = field(default_factory=list)  # signals computed by this run
    fragments_written: int = 0
    unjudged: int = 0  # rows that arrived while this run worked: keep stays null (not kept) until the next run
    nothing_to_do: bool = False
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _embedding(lake: "Store", recipe: Recipe) -> tuple[str, dict]:
    from lakecurate.names import pick_embedding

    return pick_embedding(lake, lake.dataset(), recipe.embedding, need="the alignment step needs them",
                          option=f'embedding = "..." in recipe {recipe.source}')


def _check_embedded(lake: "Store", prefix: str, prov: dict[str, Any]) -> None:
    """Scores need a model, so curate cannot make them: live rows without one (fragments ``embed``
    has not filled) are named, and curate stops before it writes anything."""
    todo = columns.fragments_to_fill(lake.dataset(), embedding_columns(prefix)["score"])
    missing = sum(f.count_rows() for f in todo)
    if not missing:
        return
    first: list[dict[str, Any]] = []
    for frag in todo:
        if len(first) < 3:
            first += frag.to_table(columns=["id", "key"], limit=3 - len(first)).to_pylist()
    rows = ", ".join(f"{r['id']} ({r['key']})" for r in first) + (", ..." if missing > len(first) else "")
    raise LakeError(f"{missing} rows of lake '{lake.uri}' have no {prefix} score yet ({rows}) and the alignment "
                    f"step needs one; run: {embed_command(lake, prefix, prov)}, then curate again")


def _compute_inputs(lake: "Store", rec: Recipe, needs: set[str], emb: str | None, progress: bool | None,
                    produce: Produce | None) -> list[str]:
    """Have the signals the steps read and the lake lacks computed (incremental: only unfilled fragments).

    Curate never runs another stage: it names the stage that produces what it needs, and ``produce``
    (the facade's or the pipeline's) runs it. Without ``produce``, a missing input is an error that
    names the stage to run."""
    produce = produce or no_producer(lake, "curate")
    computed = []
    if CAPTION in needs and produce("caption_signals", progress=progress):
        computed.append(CAPTION)
    if IMAGE in needs and produce("image_signals", progress=progress):
        computed.append(IMAGE)
    if DEDUP in needs:
        ds = lake.dataset()
        if "dup_keep" not in ds.schema.names or columns.fragments_to_fill(ds, "dup_keep"):
            from lakecurate.names import embedding_prefixes

            found = embedding_prefixes(ds)
            use = emb if emb is not None else (next(iter(found)) if len(found) == 1 else None)
            # Semantic dedup only with a real encoder: a random test model's similarities mean nothing.
            semantic = use is not None and not meaningless(found[use])
            produce("dedup", methods=["exact", "phash", "semantic"] if semantic else ["exact", "phash"], embedding=use,
                    progress=progress)
            computed.append(DEDUP)
    if rec.redact and produce("redact"):
        computed.append("caption_redacted")
    return computed


def _unfilled(ds: "lance.LanceDataset", names: set[str]) -> set[int]:
    """Fragments lacking a value for any of ``names`` (rows that arrived after those were computed)."""
    out: set[int] = set()
    for name in names:
        if name not in ds.schema.names:
            return {f.fragment_id for f in ds.get_fragments()}
        out |= {f.fragment_id for f in columns.fragments_to_fill(ds, name)}
    return out


def _declare(lake: "Store", fields: list[pa.Field], prov: dict[str, Any]) -> None:
    """Declare keep/drop_reason with ``prov``, replacing another recipe's (metadata only)."""
    for attempt in range(ATTEMPTS):
        try:
            columns.declare_view(lake, fields, prov)
            return
        except LakeError:
            # Another curate declared its own between our look and our add: look again.
            if attempt == ATTEMPTS - 1 or not columns.config_changed(lake, "keep", prov):
                raise


def _disagreement(lake: "Store", version: int, prov: dict[str, Any], addr: np.ndarray, keep: np.ndarray,
                  reason: np.ndarray) -> str | None:
    """None when ``version`` holds this run's provenance on ``keep`` and exactly its decisions (rows
    at ``addr``; every other row undecided), else what differs: another writer interleaved."""
    ds = lake.dataset(version)
    got = columns.field_provenance(ds.schema.field("keep")) if "keep" in ds.schema.names else None
    if not got or got.get("config_hash") != prov["config_hash"]:
        other = (((got or {}).get("config") or {}).get("recipe") or {}).get("name", "another stage")
        return f"at version {version} its keep column was declared by recipe '{other}'"
    now = ds.to_table(columns=["keep", "drop_reason"], with_row_address=True)
    at = now.column("_rowaddr").to_numpy()
    differ = now.column("keep").is_valid().to_numpy(zero_copy_only=False)  # rows we did not judge: undecided
    if len(addr):
        order = np.argsort(addr)
        pos = np.minimum(np.searchsorted(addr[order], at), len(addr) - 1)
        ours, idx = addr[order][pos] == at, order[pos]
        keep_now = now.column("keep").to_numpy(zero_copy_only=False)
        reason_now = now.column("drop_reason").to_numpy(zero_copy_only=False)
        differ = np.where(ours, (keep_now != keep[idx]) | (reason_now != reason[idx]), differ)
    return f"at version {version}, {int(differ.sum())} rows hold other decisions" if differ.any() else None


def _tag(lake: "Store", name: str, version: int) -> None:
    try:
        lake.tag(name, version)
    except (OSError, ValueError):
        info = lake.dataset().tags.list().get(name)
        if not info or info["version"] != version:  # not a same-recipe run tagging the same version
            raise


def _already_done(lake: "Store", rec: Recipe, prefix: str) -> tuple[str, "lance.LanceDataset"] | None:
    """This recipe's tag when the lake has not changed since: the tag is at the latest version, whose
    keep column is this recipe's, and every live row there has a decision."""
    ds = lake.dataset()
    prov = columns.field_provenance(ds.schema.field("keep")) if "keep" in ds.schema.names else None
    if not prov or (prov.get("config") or {}).get("hash") != rec.hash:
        return None
    tag = next((n for n, info in ds.tags.list().items() if n.startswith(prefix) and info["version"] == ds.version), None)
    if tag is None or columns.fragments_to_fill(ds, "keep") or ds.count_rows(filter="keep IS NULL"):
        return None
    return tag, ds


def curate(lake: "Store", recipe: str | Path | Mapping[str, Any], *, progress: bool | None = None,
           produce: Produce | None = None) -> CurateReport:
    """Apply a recipe: compute missing signals, write ``keep``/``drop_reason``, tag the version.

    Every decision is made on one version of the lake; rows appended meanwhile keep a null ``keep``
    (not kept) and are the next run's work. The tag names exactly the version this run committed,
    checked to hold this recipe's provenance and decisions (a concurrent curate makes it redo).

    Example::

        report = lake.curate("recipes/basic.toml")
        report.dropped                      # {'ingest_error': 3, 'caption_length': 12, ...}
        lake.to_pandas(["key"], where="keep", version=report.tag)
    """
    t0 = time.perf_counter()
    rec = load_recipe(recipe)
    report = CurateReport(lake=lake.uri, recipe=rec.name, recipe_hash=rec.hash)
    prefix = f"{rec.name}-{rec.hash}-v"
    done = _already_done(lake, rec, prefix)
    if done is not None:  # same recipe, nothing changed since
        tag, ds = done
        by = Counter(ds.to_table(columns=["drop_reason"]).column(0).to_pylist())
        report.kept = by.pop(None, 0)
        report.rows = report.kept + sum(by.values())
        report.dropped = {s.reason: by.get(s.reason, 0) for s in rec.steps}
        report.tag, report.version, report.nothing_to_do = tag, ds.version, True
        report.seconds = time.perf_counter() - t0
        return report

    needs = {n for s in rec.steps for n in FILTERS[s.filter].needs}
    emb, emb_prov = _embedding(lake, rec) if EMBEDDING in needs or (DEDUP in needs and rec.embedding) else (None, None)
    if EMBEDDING in needs:
        _check_embedded(lake, emb, emb_prov)  # before anything is written
    report.computed = _compute_inputs(lake, rec, needs, emb, progress, produce)
    inputs = {c for s in rec.steps for c in FILTERS[s.filter].columns if c not in PAIRS_SCHEMA.names}
    if emb is not None and EMBEDDING in needs:
        inputs.add(embedding_columns(emb)["score"])
    fields = [pa.field("keep", pa.bool_()), pa.field("drop_reason", pa.string())]
    problem = None
    for attempt in range(ATTEMPTS):
        if attempt:  # another curate interleaved: let it finish, then decide again on a fresh version
            time.sleep(random.uniform(0.1, 0.5) * attempt)
            report.computed += [c for c in _compute_inputs(lake, rec, needs, emb, progress, produce) if c not in report.computed]
        ds = lake.dataset()  # this round's decisions are all made on this one version
        read = {"id"} | {c for s in rec.steps for c in FILTERS[s.filter].columns} | ({embedding_columns(emb)["score"]} if emb else set())
        read |= {c for c in ("keep", "drop_reason") if c in ds.schema.names}
        tbl = ds.to_table(columns=sorted(read), with_row_address=True)
        # Rows that arrived after the signals were computed are left undecided (null keep: not kept).
        late = _unfilled(ds, inputs)
        if late:
            tbl = tbl.filter(pa.array(~np.isin(tbl.column("_rowaddr").to_numpy() >> 32, np.fromiter(late, np.int64))))
        df = tbl.drop_columns(["_rowaddr"]).to_pandas()
        if emb is not None:
            df["__score"] = df[embedding_columns(emb)["score"]]
        n = len(df)
        reason = np.full(n, None, dtype=object)
        alive = np.ones(n, bool)
        report.dropped = {}
        for step in rec.steps:
            params = dict(step.params)
            if step.filter == "alignment" and params["min"] is None and params["min_percentile"] is None:
                params["min"] = ALIGNMENT_MIN.get(emb_prov["config"].get("family", "open_clip"), 0.28)
            hit = FILTERS[step.filter].drop(df, params) & alive
            reason[hit] = step.reason
            alive &= ~hit
            report.dropped[step.reason] = report.dropped.get(step.reason, 0) + int(hit.sum())

        prov = columns.provenance("curate", {"recipe": rec.canonical(), "hash": rec.hash, "source": rec.source},
                                  sorted(read - {"keep", "drop_reason", "id"}), ds.version)
        # keep/drop_reason are the lake's *current* curation: another recipe replaces them (metadata
        # only), while each recipe's result stays reachable through its tag.
        pinned = columns.field_provenance(ds.schema.field("keep")) if "keep" in ds.schema.names else None
        _declare(lake, fields, prov)
        if not pinned or pinned.get("config_hash") != prov["config_hash"]:  # not ours: rewrite every fragment
            tbl = tbl.drop_columns([c for c in ("keep", "drop_reason") if c in tbl.column_names])
        try:
            written, version = write_decisions(lake, tbl, {"keep": pa.array(alive, pa.bool_()),
                                                            "drop_reason": pa.array(reason, pa.string())},
                                               sources=prov["source_columns"], read_version=ds.version)
        except KeyError:  # another curate dropped keep/drop_reason to declare its own recipe's: decide again
            problem = "another curate replaced keep/drop_reason while this one wrote"
            continue
        report.fragments_written += written
        version = version if version is not None else ds.version  # nothing changed: the read version is ours
        problem = _disagreement(lake, version, prov, tbl.column("_rowaddr").to_numpy(), alive, reason)
        if problem is None:
            break
    else:
        raise LakeError(f"another curate kept changing keep/drop_reason of lake '{lake.uri}' while recipe "
                        f"{rec.name} ran ({problem}); run curate again when it is done")
    report.version, report.tag = version, f"{prefix}{version}"
    _tag(lake, report.tag, version)
    report.unjudged = lake.dataset(version).count_rows(filter="keep IS NULL")  # arrived during the run
    report.rows, report.kept = n, int(alive.sum())
    report.seconds = time.perf_counter() - t0
    return report
