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
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd
import pyarrow as pa

from lakecurate import columns, signals
from lakecurate.lake import LakeError

if TYPE_CHECKING:
    from lakecurate.lake import Lake

CAPTION = "caption signals"
IMAGE = "image signals"
DEDUP = "dedup"
EMBEDDING = "embedding"
# Alignment defaults by encoder family: open_clip ViT-B-32 0.28 is DataComp's CLIP-score filter;
# offline 0.05 is the 5th percentile of clean pairs on Flickr8k photos its heads never saw (on the
# photos they were trained on, scores run far higher: 5th percentile 0.49). docs/benchmarks.md.
ALIGNMENT_MIN = {"open_clip": 0.28, "offline": 0.05}
BUILTIN = Path(__file__).parent / "recipes"  # recipes shipped with the package, usable by name


class Filter:
    """One recipe step: ``drop(frame, params)`` -> True where the row fails."""

    name: ClassVar[str]
    doc: ClassVar[str]
    needs: ClassVar[tuple[str, ...]] = ()  # CAPTION, IMAGE, DEDUP, EMBEDDING
    columns: ClassVar[tuple[str, ...]] = ()  # lake columns read
    params: ClassVar[dict[str, Any]] = {}  # name -> default

    def drop(self, df: pd.DataFrame, p: dict[str, Any]) -> np.ndarray:
        raise NotImplementedError


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

    def drop(self, df, p):
        return _b(df["cap_max_repeat"] > p["max_repeat"])


class CaptionNonprintable(Filter):
    name, doc = "caption_nonprintable", "more than max control/replacement characters"
    needs, columns, params = (CAPTION,), ("cap_nonprintable",), {"max": 0}

    def drop(self, df, p):
        return _b(df["cap_nonprintable"] > p["max"])


class Language(Filter):
    name, doc = "language", "identified language not in keep (captions of min_words or more, prob >= min_prob)"
    needs, columns = (CAPTION,), ("cap_lang", "cap_lang_prob", "cap_words")
    params = {"keep": ["en"], "min_prob": 0.5, "min_words": 3}

    def drop(self, df, p):
        judged = _b((df["cap_words"] >= p["min_words"]) & (df["cap_lang_prob"] >= p["min_prob"]))
        return judged & ~df["cap_lang"].isin(p["keep"]).to_numpy()


class ImageSize(Filter):
    name, doc = "image_size", "smallest side under min_side pixels"
    columns, params = ("width", "height"), {"min_side": 64}

    def drop(self, df, p):
        return _b(np.minimum(df["width"], df["height"]) < p["min_side"])


class Aspect(Filter):
    name, doc = "aspect", "long side more than max_aspect times the short side"
    columns, params = ("width", "height"), {"max_aspect": 3.0}

    def drop(self, df, p):
        lo, hi = np.minimum(df["width"], df["height"]), np.maximum(df["width"], df["height"])
        return _b(hi > p["max_aspect"] * lo)


class Blur(Filter):
    name, doc = "blur", "variance of the Laplacian under min_sharpness (at 128 px short side)"
    needs, columns, params = (IMAGE,), ("img_sharpness",), {"min_sharpness": 250.0}

    def drop(self, df, p):
        return _b(df["img_sharpness"] < p["min_sharpness"])


class LowInformation(Filter):
    name, doc = "low_information", "grayscale histogram entropy under min_entropy bits (near-uniform images)"
    needs, columns, params = (IMAGE,), ("img_entropy",), {"min_entropy": 3.0}

    def drop(self, df, p):
        return _b(df["img_entropy"] < p["min_entropy"])


class Grayscale(Filter):
    name, doc = "grayscale", "colourfulness under max_colorfulness (grayscale or nearly)"
    needs, columns, params = (IMAGE,), ("img_colorfulness",), {"max_colorfulness": 3.0}

    def drop(self, df, p):
        return _b(df["img_colorfulness"] < p["max_colorfulness"])


class Pii(Filter):
    name, doc = "pii", "the caption holds an e-mail address or a phone number"
    needs, columns = (CAPTION,), ("cap_emails", "cap_phones")

    def drop(self, df, p):
        return _b((df["cap_emails"] > 0) | (df["cap_phones"] > 0))


class Alignment(Filter):
    name, doc = "alignment", "encoder score under min, or under the min_percentile-th percentile of the lake's scores"
    needs = (EMBEDDING,)
    params = {"min": None, "min_percentile": None}

    def drop(self, df, p):
        s = df["__score"].astype("float64")
        out = np.zeros(len(df), bool)
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
    name = str(raw.get("name") or (Path(source).stem if source != "<dict>" else "recipe"))
    if not name.replace("-", "").replace("_", "").isalnum():
        raise LakeError(f"recipe {source}: name {name!r} may hold only letters, digits, '-' and '_' (it names a tag)")
    steps = []
    for k, st in enumerate(raw.get("step", raw.get("steps", [])), 1):
        st = dict(st)
        fname = st.pop("filter", None)
        if fname not in FILTERS:
            raise LakeError(f"recipe {source}, step {k}: unknown filter {fname!r}; choose from {', '.join(FILTERS)}")
        f = FILTERS[fname]
        reason = str(st.pop("reason", fname))
        bad = set(st) - set(f.params)
        if bad:
            raise LakeError(f"recipe {source}, step {k} ({fname}): unknown parameters {sorted(bad)}; "
                            f"it takes {', '.join(f.params) or 'none'}")
        steps.append(Step(fname, reason, {**f.params, **st}))
    if not steps:
        raise LakeError(f"recipe {source} has no [[step]]; add at least one filter")
    privacy = raw.get("privacy", {})
    if set(privacy) - {"redact"}:
        raise LakeError(f"recipe {source}: [privacy] takes only 'redact'")
    return Recipe(name, steps, raw.get("embedding"), bool(privacy.get("redact", False)), source)


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
    nothing_to_do: bool = False
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _embedding(lake: "Lake", recipe: Recipe) -> tuple[str, dict]:
    from lakecurate.search import pick_embedding

    return pick_embedding(lake, lake.dataset(), recipe.embedding, need="the alignment step needs them",
                          option=f'embedding = "..." in recipe {recipe.source}')


def _existing_tag(lake: "Lake", prefix: str) -> str | None:
    ds = lake.dataset()
    for name, info in ds.tags.list().items():
        if name.startswith(prefix) and info["version"] == ds.version:
            return name
    return None


def curate(lake: "Lake", recipe: str | Path | Mapping[str, Any], *, progress: bool | None = None) -> CurateReport:
    """Apply a recipe: compute missing signals, write ``keep``/``drop_reason``, tag the version.

    Example::

        report = lake.curate("recipes/basic.toml")
        report.dropped                      # {'ingest_error': 3, 'caption_length': 12, ...}
        lake.to_pandas(["key"], where="keep", version=report.tag)
    """
    t0 = time.perf_counter()
    rec = load_recipe(recipe)
    report = CurateReport(lake=lake.uri, recipe=rec.name, recipe_hash=rec.hash)
    prefix = f"{rec.name}-{rec.hash}-v"
    ds = lake.dataset()
    old = columns.field_provenance(ds.schema.field("keep")) if "keep" in ds.schema.names else None
    tag = _existing_tag(lake, prefix)
    if tag and old and old["config"].get("hash") == rec.hash:  # same recipe, nothing changed since
        counts = lake.sql("SELECT drop_reason, count(*) AS n FROM pairs GROUP BY drop_reason")
        by = {(None if pd.isna(r) else r): int(k) for r, k in zip(counts["drop_reason"], counts["n"])}
        report.kept = by.pop(None, 0)
        report.rows = report.kept + sum(by.values())
        report.dropped = {s.reason: by.get(s.reason, 0) for s in rec.steps}
        report.tag, report.version, report.nothing_to_do = tag, ds.version, True
        report.seconds = time.perf_counter() - t0
        return report

    needs = {n for s in rec.steps for n in FILTERS[s.filter].needs}
    emb = _embedding(lake, rec)[0] if EMBEDDING in needs or (DEDUP in needs and rec.embedding) else None
    if CAPTION in needs and signals.compute_caption_signals(lake, progress=progress):
        report.computed.append(CAPTION)
    if IMAGE in needs and signals.compute_image_signals(lake, progress=progress):
        report.computed.append(IMAGE)
    if DEDUP in needs:
        ds = lake.dataset()
        if "dup_keep" not in ds.schema.names or columns.fragments_to_fill(ds, "dup_keep"):
            from lakecurate.search import embedding_prefixes

            found = embedding_prefixes(ds)
            use = emb if emb is not None else (next(iter(found)) if len(found) == 1 else None)
            # Semantic dedup only with a real encoder: a random test model's similarities mean nothing.
            semantic = use is not None and "MEANINGLESS" not in str(found[use]["config"].get("arch"))
            lake.dedup(["exact", "phash", "semantic"] if semantic else ["exact", "phash"], embedding=use, progress=progress)
            report.computed.append(DEDUP)
    if rec.redact and signals.compute_redacted(lake):
        report.computed.append("caption_redacted")

    ds = lake.dataset()
    read = {"id"} | {c for s in rec.steps for c in FILTERS[s.filter].columns} | {c for c in ("keep", "drop_reason") if c in ds.schema.names}
    if emb is not None:
        read.add(f"{emb}_score")
    tbl = ds.to_table(columns=sorted(read), with_row_address=True)
    df = tbl.drop_columns(["_rowaddr"]).to_pandas()
    if emb is not None:
        df["__score"] = df[f"{emb}_score"]
    n = len(df)
    reason = np.full(n, None, dtype=object)
    alive = np.ones(n, bool)
    for step in rec.steps:
        params = dict(step.params)
        if step.filter == "alignment" and params["min"] is None and params["min_percentile"] is None:
            family = _embedding(lake, rec)[1]["config"].get("family", "open_clip")
            params["min"] = ALIGNMENT_MIN.get(family, 0.28)
        hit = FILTERS[step.filter].drop(df, params) & alive
        reason[hit] = step.reason
        alive &= ~hit
        report.dropped[step.reason] = report.dropped.get(step.reason, 0) + int(hit.sum())

    prov = columns.provenance("curate", {"recipe": rec.canonical(), "hash": rec.hash, "source": rec.source},
                              sorted(read - {"keep", "drop_reason", "id"}), ds.version)
    fields = [pa.field("keep", pa.bool_()), pa.field("drop_reason", pa.string())]
    # keep/drop_reason are the lake's *current* curation: another recipe replaces them (metadata
    # only), while each recipe's result stays reachable through its tag.
    columns.declare(lake, fields, prov, recompute=old is not None and old["config"].get("hash") != rec.hash)
    if old is not None and old["config"].get("hash") != rec.hash:
        tbl = tbl.drop_columns([c for c in ("keep", "drop_reason") if c in tbl.column_names])
    written, version = columns.write_changed(lake, tbl, {"keep": pa.array(alive, pa.bool_()),
                                                         "drop_reason": pa.array(reason, pa.string())})
    report.fragments_written = written
    ds = lake.dataset()
    report.version = ds.version
    report.tag = _existing_tag(lake, prefix) or f"{prefix}{ds.version}"
    if report.tag not in ds.tags.list():
        lake.tag(report.tag, ds.version)
    report.rows, report.kept = n, int(alive.sum())
    report.seconds = time.perf_counter() - t0
    return report
