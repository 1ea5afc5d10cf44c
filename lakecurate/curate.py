"""Recipes: signals -> keep/drop decisions with a reason, recorded as columns and a tag.

A recipe is a TOML file: a name, an ordered list of filter steps with thresholds, and optional
privacy settings. ``curate(lake, recipe)`` computes the signals the steps need and that the lake
lacks (caption and image signals, dedup groups; embeddings must exist: they need a model), then
writes ``keep`` and ``drop_reason`` (the first step a row fails, in recipe order) and tags the
version: ``<name>-<hash>-v<version>`` (``<name>-<hash>-<branch>-v<version>`` on a branch), so the exact set can be reopened with
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

import difflib
import hashlib
import json
import math
import os
import random
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd
import pyarrow as pa

from lakecurate import columns, stream
from lakecurate.encoders import meaningless
from lakecurate.engines import check_engine
from lakecurate.errors import LakeError
from lakecurate.options import given, speaker, spell, words
from lakecurate.graph import (Node, blocks, check_embedded, check_has_rows, dedup_args, gone_whole, lakecurate_on,
                              no_producer, not_current, states, where_columns)
from lakecurate.names import RECIPES, Produce, embedding_columns
from lakecurate.schema import PAIRS_SCHEMA
from lakecurate.sqlcheck import check_where, condition_columns, in_list

if TYPE_CHECKING:
    import lance

    from lakecurate.store import Store

CAPTION = "caption signals"
IMAGE = "image signals"
DEDUP = "dedup"
TEMPLATES = "caption templates"  # dedup's minhash groups
FACES = "faces"
EMBEDDING = "embedding"
# Alignment defaults by encoder family: open_clip ViT-B-32 0.28 is DataComp's CLIP-score filter;
# offline 0.05 is the 5th percentile of clean pairs on Flickr8k photos its heads never saw (on the
# photos they were trained on, scores run far higher: 5th percentile 0.49). docs/benchmarks.md.
ALIGNMENT_MIN = {"open_clip": 0.28, "offline": 0.05}
# Image-quality defaults, measured on Flickr8k photos blurred, darkened and fogged
# (scripts/eval_image_quality.py, docs/benchmarks.md): blur 1.3 is the clean photos' 1st percentile
# and catches 94% of radius-1.5 Gaussian blur and 97% of motion blur; dark and low_contrast catch only
# nearly black or nearly flat frames (0.7% and 0% of clean photos), so a photo that is merely dim
# is kept, and neither is in the basic recipe.
BLUR_MIN, DARK_MIN, LOW_CONTRAST_MIN = 1.3, 0.1, 0.05
BUILTIN = RECIPES  # recipes shipped with the package, usable by name
ATTEMPTS = 5  # decision rounds when another curate changes keep/drop_reason meanwhile


class Filter:
    """One recipe step: ``drop(frame, params)`` -> True where the row fails.

    ``version`` is the step's code version: **bump it whenever a change to the step's logic can
    change which rows it drops** (not for a reworded ``doc`` or a faster equivalent). ``keep``
    records the versions of the steps its recipe used (``step_versions`` in its provenance), so
    ``lakecurate status`` calls a decision made by other step code stale, naming the step, and
    export, rebalance and sequence refuse it until curate decides again (the recipe's hash and
    tags are not affected: they name the recipe, not the code)."""

    name: ClassVar[str]
    doc: ClassVar[str]
    version: ClassVar[int] = 1  # the step's code version: bump it when the logic changes (above)
    needs: ClassVar[tuple[str, ...]] = ()  # CAPTION, IMAGE, DEDUP, EMBEDDING
    columns: ClassVar[tuple[str, ...]] = ()  # lake columns read
    params: ClassVar[dict[str, Any]] = {}  # name -> default
    limits: ClassVar[dict[str, Limit]] = {}  # name -> allowed type and range, checked by load_recipe

    def drop(self, df: pd.DataFrame, p: dict[str, Any]) -> np.ndarray:
        raise NotImplementedError

    def reads(self, p: dict[str, Any]) -> tuple[str, ...]:
        """The lake columns this step reads with parameters ``p`` (generic steps name their own)."""
        return self.columns

    def cut(self, df: pd.DataFrame, p: dict[str, Any]) -> Cut | None:
        """The one threshold of this step, when it has one: the values it compares and where it
        cuts them (for what-ifs and the rows either side of the cut); None for yes/no steps."""
        return None

    def fit(self, scan: Callable[[str], Iterator[pa.Array]], p: dict[str, Any]) -> dict[str, Any]:
        """The fit step of a filter that compares a row with every other judged row (a percentile,
        a group's size): ``p`` with what it needs from all of them resolved, read through ``scan``
        (a column's values, a fragment at a time), so that ``drop`` can then judge a fragment
        alone and agree with a judgement of the whole frame. Most filters judge a row by itself."""
        return p


@dataclass(frozen=True)
class Cut:
    """A step's threshold: ``values`` (one per row, NaN where the step does not judge by value)
    fail when below ``at`` (``side`` "min") or above it ("max"); ``param`` and ``label`` name it."""

    values: np.ndarray
    at: float
    side: str
    param: str
    label: str

    def fails(self, at: float) -> np.ndarray:
        v = self.values
        with np.errstate(invalid="ignore"):
            return (v < at) if self.side == "min" else (v > at)


@dataclass(frozen=True)
class Limit:
    """What a filter parameter may be: ``kind`` "int" (a whole number), "number" (finite),
    "codes" (a non-empty list of strings), "name" (a column name), "value" (a string, number or
    true/false), "values" (a non-empty list of those), "bool" or "sql" (one SQL condition), within
    [lo, hi]; ``optional``: None (unset) is allowed."""

    kind: str
    lo: float | None = None
    hi: float | None = None
    optional: bool = False

    def allowed(self) -> str:
        what = {"int": "a whole number", "number": "a number",
                "codes": 'a list of the language codes the identifier names (ISO 639-1, some 639-3), e.g. ["en", "de"]', "name": 'a column name, e.g. "aesthetic"',
                "value": "a string, a number or true/false", "values": 'a list of values, e.g. ["cat", "dog"]',
                "bool": "true or false", "texts": 'a list of texts, e.g. ["a watermark", "a logo"]', "sql": 'one SQL condition, e.g. "aesthetic > 4.5 AND cap_words >= 3"'}[self.kind]
        if self.lo is not None and self.hi is not None:
            what += f" from {self.lo:g} to {self.hi:g}"
        elif self.lo is not None:
            what += f" >= {self.lo:g}"
        return what + (" (or leave it out)" if self.optional else "")

    def ok(self, value: Any) -> bool:
        if value is None:
            return self.optional
        if self.kind == "codes":  # as py3langid names languages ("klingon", then "xx", matched no row, silently)
            known = _languages()
            return isinstance(value, list) and bool(value) and all(
                isinstance(v, str) and (v in known if known else re.fullmatch(r"[a-z]{2,3}", v)) for v in value)
        if self.kind == "texts":
            return isinstance(value, list) and bool(value) and all(isinstance(v, str) and v.strip() for v in value)
        if self.kind in ("name", "sql"):
            return isinstance(value, str) and bool(value.strip())
        if self.kind == "bool":
            return isinstance(value, bool)
        if self.kind == "value":
            return isinstance(value, (str, bool, int, float)) and not (isinstance(value, float) and not math.isfinite(value))
        if self.kind == "values":
            return isinstance(value, list) and bool(value) and all(Limit("value").ok(v) for v in value)
        if isinstance(value, bool) or not isinstance(value, int if self.kind == "int" else (int, float)):
            return False
        return math.isfinite(value) and (self.lo is None or value >= self.lo) and (self.hi is None or value <= self.hi)


def _b(s: pd.Series) -> np.ndarray:
    """A nullable column as a numpy bool array, null as False."""
    return s.fillna(False).to_numpy(dtype=bool)


def _f(s: pd.Series) -> np.ndarray:
    """A nullable numeric column as float64, null as NaN."""
    return pd.to_numeric(s, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)


class IngestError(Filter):
    name, doc = ("ingest_error", "the image could not be used at ingest (ingest_status = 'error'); a recipe that "
                 "does not list it runs it first")
    columns = ("ingest_status",)
    final = True  # no image to train on: a reviewer's keep does not bring the row back (export never ships it)
    # 2: final for every row it fails, also those an earlier step dropped (a reviewer's keep revived them)
    version = 2

    def drop(self, df, p):
        return (df["ingest_status"] == "error").to_numpy()


class Duplicate(Filter):
    name, doc = "duplicate", ("a duplicate of a better pair (dup_keep = false; runs dedup if needed: exact, phash, and "
                       "semantic with a real encoder; copy groups when `lakecurate dedup` made them)")
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

    def cut(self, df, p):
        return Cut(_f(df["cap_words"]), p["min_words"], "min", "min_words", "words")


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

    def cut(self, df, p):
        return Cut(_f(df["cap_max_repeat"]), p["max_repeat"], "max", "max_repeat", "longest run of one character")


class CaptionNonprintable(Filter):
    name, doc = "caption_nonprintable", "more than max control/replacement characters"
    needs, columns, params = (CAPTION,), ("cap_nonprintable",), {"max": 0}
    limits = {"max": Limit("int", 0)}

    def drop(self, df, p):
        return _b(df["cap_nonprintable"] > p["max"])


def _languages() -> frozenset[str]:
    """The language codes the caption signals' identifier names; empty without it."""
    from lakecurate.names import language_identifier

    ident = language_identifier()
    return frozenset(ident.nb_classes) if ident is not None else frozenset()


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

    def cut(self, df, p):
        return Cut(np.minimum(_f(df["width"]), _f(df["height"])), p["min_side"], "min", "min_side", "short side (px)")


class Aspect(Filter):
    name, doc = "aspect", "long side more than max_aspect times the short side"
    columns, params = ("width", "height"), {"max_aspect": 3.0}
    limits = {"max_aspect": Limit("number", 1)}

    def drop(self, df, p):
        lo, hi = np.minimum(df["width"], df["height"]), np.maximum(df["width"], df["height"])
        return _b(hi > p["max_aspect"] * lo)

    def cut(self, df, p):
        w, h = _f(df["width"]), _f(df["height"])
        with np.errstate(invalid="ignore", divide="ignore"):
            return Cut(np.maximum(w, h) / np.minimum(w, h), p["max_aspect"], "max", "max_aspect", "long / short side")


class _Under(Filter):
    """A step that drops rows whose ``columns[0]`` is under its one parameter ``under``; ``label``
    names the value in cut views."""

    under: ClassVar[str]
    label: ClassVar[str]

    def drop(self, df, p):
        return _b(df[self.columns[0]] < p[self.under])

    def cut(self, df, p):
        return Cut(_f(df[self.columns[0]]), p[self.under], "min", self.under, self.label)


class Blur(_Under):
    name, doc = "blur", "edge sharpness (0..4, whatever the exposure; at 128 px short side) under min_sharpness"
    needs, columns, params = (IMAGE,), ("img_sharpness",), {"min_sharpness": BLUR_MIN}
    under, label = "min_sharpness", "sharpness"
    # 0..4 (signals.sharpness): a recipe written for the old Laplacian variance (250) is refused, not
    # left to drop every photo
    limits = {"min_sharpness": Limit("number", 0, 4)}


class Dark(_Under):
    name, doc = "dark", "mean gray level (0 black .. 1 white) under min_brightness (under-exposed)"
    needs, columns, params = (IMAGE,), ("img_brightness",), {"min_brightness": DARK_MIN}
    under, label = "min_brightness", "brightness"
    limits = {"min_brightness": Limit("number", 0, 1)}


class LowContrast(_Under):
    name, doc = "low_contrast", "RMS contrast (std of the gray levels / 255) under min_contrast (fogged, washed out)"
    needs, columns, params = (IMAGE,), ("img_contrast",), {"min_contrast": LOW_CONTRAST_MIN}
    under, label = "min_contrast", "contrast"
    limits = {"min_contrast": Limit("number", 0, 0.5)}  # the std of values in 0..1 is at most 0.5


class LowInformation(_Under):
    name, doc = "low_information", "grayscale histogram entropy under min_entropy bits (near-uniform images)"
    needs, columns, params = (IMAGE,), ("img_entropy",), {"min_entropy": 3.0}
    under, label = "min_entropy", "entropy (bits)"
    limits = {"min_entropy": Limit("number", 0, 8)}  # bits of a 256-bin histogram


class Grayscale(_Under):
    name, doc = "grayscale", "colourfulness under max_colorfulness (grayscale or nearly)"
    needs, columns, params = (IMAGE,), ("img_colorfulness",), {"max_colorfulness": 3.0}
    under, label = "max_colorfulness", "colourfulness"
    limits = {"max_colorfulness": Limit("number", 0)}


class CaptionTemplate(Filter):
    name, doc = ("caption_template", "the caption is in a near-duplicate caption group (dedup's minhash: templated alt "
                 "text such as 'Stock photo of X, royalty free') of more than max_group rows; runs it if needed")
    needs, columns, params = (TEMPLATES,), ("dup_minhash_group",), {"max_group": 9}
    limits = {"max_group": Limit("int", 1)}

    def drop(self, df, p):
        return _b(pd.Series(self._sizes(df, p)) > p["max_group"])

    def fit(self, scan, p):
        # The group values are ids (a row's own when alone): counted as 8-byte hashes, out of core;
        # kept: the groups of two rows or more (their hash and size).
        hashes = lambda: (_hashes(g[g.notna()]) for g in (a.to_pandas() for a in scan("dup_minhash_group")))  # noqa: E731
        return {**p, "__groups": stream.frequent_keys(hashes, 1, counts=True)}

    def cut(self, df, p):
        return Cut(self._sizes(df, p), p["max_group"], "max", "max_group", "captions sharing its template")

    @staticmethod
    def _sizes(df: pd.DataFrame, p: dict[str, Any]) -> np.ndarray:
        """Rows sharing each row's group among the judged rows (NaN: no group): fitted on every
        judged row, or counted in this frame."""
        g = df["dup_minhash_group"]
        if "__groups" not in p:
            return _f(g.map(g.value_counts()))
        keys, counts = p["__groups"]
        h = _hashes(g)
        at = np.minimum(np.searchsorted(keys, h), max(len(keys) - 1, 0))
        found = (keys[at] == h) if len(keys) else np.zeros(len(h), bool)
        return np.where(g.isna().to_numpy(), np.nan, np.where(found, counts[at] if len(keys) else 1, 1)).astype(np.float64)


def _hashes(values: pd.Series) -> np.ndarray:
    return pd.util.hash_array(np.asarray(values.to_numpy(), dtype=object), categorize=False)  # 8x faster on ids


class Faces(Filter):
    name, doc = "faces", "more than max_faces human faces found in the image (YuNet; computes img_faces if needed)"
    needs, columns, params = (FACES,), ("img_faces",), {"max_faces": 0}
    limits = {"max_faces": Limit("int", 0)}

    def drop(self, df, p):
        return _b(df["img_faces"] > p["max_faces"])

    def cut(self, df, p):
        return Cut(_f(df["img_faces"]), p["max_faces"], "max", "max_faces", "faces")


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
        at = self._percentile(s.to_numpy(), p)
        if at is not None:
            out |= _b(s < at)
        return out

    def fit(self, scan, p):
        if p["min_percentile"] is None:
            return p
        floats = lambda: (_f(a.to_pandas()) for a in scan("__score"))  # noqa: E731
        return {**p, "__at": stream.nanpercentile(floats, p["min_percentile"])}

    @staticmethod
    def _percentile(s: np.ndarray, p: dict[str, Any]) -> float | None:
        """The score at the lake's min_percentile-th percentile (fitted on every judged row, or on this frame)."""
        if p["min_percentile"] is None:
            return None
        at = p["__at"] if "__at" in p else (np.nanpercentile(s, p["min_percentile"]) if (~np.isnan(s)).any() else np.nan)
        return None if np.isnan(at) else float(at)

    def cut(self, df, p):
        s = _f(df["__score"])
        at = [p["min"]] if p["min"] is not None else []
        if (pct := self._percentile(s, p)) is not None:
            at.append(pct)
        if not at:
            return None
        param = "min" if p["min"] is not None and at[0] == max(at) else "min_percentile"
        return Cut(s, max(at), "min", param, "alignment score")


class ZeroShot(Filter):
    name = "zero_shot"
    doc = ("CLIP-style prompt scoring of the image embedding: the probability that the image matches `prompts` "
           "rather than `against` (softmax of cosines times the model's logit scale, CLIP's zero-shot classifier) "
           "over max_prob; an image the encoder could not embed fails too (nothing shows it does not match); only "
           "as good as the encoder (the offline one knows little of watermarks or NSFW)")
    needs = (EMBEDDING,)
    params = {"prompts": None, "against": ["a photo"], "max_prob": 0.5}
    limits = {"prompts": Limit("texts"), "against": Limit("texts"), "max_prob": Limit("number", 0, 1)}

    def drop(self, df, p):
        prob = pd.Series(df[_zero_shot_key(p)])
        return prob.isna().to_numpy() | _b(prob > p["max_prob"])  # null: no image vector to judge

    def cut(self, df, p):
        return Cut(_f(df[_zero_shot_key(p)]), p["max_prob"], "max", "max_prob", f"P({p['prompts'][0]!r}, ...)")


def _zero_shot_key(p: dict[str, Any]) -> str:
    return "__zs " + json.dumps([p["prompts"], p["against"]])


def zero_shot(image: np.ndarray, prompts: np.ndarray, against: np.ndarray, scale: float = 100.0) -> np.ndarray:
    """P(prompts) per row: softmax over the cosines of each image vector with every prompt and
    every contrast text (all unit vectors), times ``scale``, summed over ``prompts``.

    >>> e = np.eye(3, dtype=np.float32)
    >>> zero_shot(e[:2], e[:1], e[1:2]).round(3).tolist()
    [1.0, 0.0]
    """
    logits = scale * image @ np.concatenate([prompts, against]).T
    logits -= logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return (e[:, : len(prompts)].sum(axis=1) / e.sum(axis=1)).astype(np.float64)


class Column(Filter):
    name = "column"
    doc = ("any scalar column, user features too: drop rows under min, over max, not equal to equals or "
           "not in `in`; a null value fails these tests; not_null = true drops null values alone")
    params = {"column": None, "min": None, "max": None, "equals": None, "in": None, "not_null": False}
    limits = {"column": Limit("name"), "min": Limit("number", optional=True), "max": Limit("number", optional=True),
              "equals": Limit("value", optional=True), "in": Limit("values", optional=True), "not_null": Limit("bool")}
    tests = ("min", "max", "equals", "in")

    def reads(self, p):
        return (p["column"],)

    def drop(self, df, p):
        s = df[p["column"]]
        null = s.isna().to_numpy()
        out = null.copy() if p["not_null"] or any(p[t] is not None for t in self.tests) else np.zeros(len(s), bool)
        if p["min"] is not None:
            out |= _b(s < p["min"])
        if p["max"] is not None:
            out |= _b(s > p["max"])
        if p["equals"] is not None:
            out |= ~_b(s == p["equals"])
        if p["in"] is not None:
            out |= ~s.isin(p["in"]).to_numpy()
        return out

    def cut(self, df, p):
        if (p["min"] is None) == (p["max"] is None):  # none, or both: no single threshold
            return None
        side = "min" if p["min"] is not None else "max"
        return Cut(_f(df[p["column"]]), p[side], side, side, p["column"])


class Sql(Filter):
    name = "sql"
    doc = ("rows kept where the SQL condition `where` is true (DataFusion, as Lance filters read it: "
           "any column, functions, AND/OR); false or null drops the row")
    params = {"where": None}
    limits = {"where": Limit("sql")}

    def reads(self, p):
        return ()  # the condition's columns are found on the lake (graph.where_columns), see _reads

    def drop(self, df, p):
        # The condition runs on the very version (or fragment of it) the frame was read from, as a Lance filter.
        on = df.attrs["rows_of"].value
        passed = on.to_table(columns=[], filter=p["where"], with_row_address=True).column("_rowaddr").to_numpy()
        return ~np.isin(df["__rowaddr"].to_numpy(), passed)


class Review(Filter):
    name = "review"
    doc = ("a person's verdict (lakecurate serve): review_verdict 'drop' drops the row, 'keep' keeps it, "
           "whatever any other step decided (the human overrides the machine) but ingest_error (a row without "
           "a usable image is never kept); unreviewed rows are left "
           "to the other steps; a lake nobody reviewed yet changes nothing")
    override = True  # applied after every step, wherever it stands in the recipe

    def drop(self, df, p):
        return (df["review_verdict"] == "drop").to_numpy() if "review_verdict" in df else np.zeros(len(df), bool)

    def keeps(self, df, p):
        return (df["review_verdict"] == "keep").to_numpy() if "review_verdict" in df else np.zeros(len(df), bool)


FILTERS: dict[str, Filter] = {f.name: f() for f in (
    IngestError, Duplicate, CaptionMissing, CaptionLength, CaptionFilename, CaptionUrl, CaptionBoilerplate,
    CaptionRepeat, CaptionNonprintable, CaptionTemplate, Language, ImageSize, Aspect, Blur, Dark, LowContrast, LowInformation, Grayscale,
    Faces, Pii, Alignment, ZeroShot, Column, Sql, Review)}
# Signal columns a generic step may name, and the producers that make them.
_NEEDS_BY_COLUMN = {c: f.needs for f in FILTERS.values() for c in f.columns if f.needs}


# The Arrow types of those signals, so that a ``column`` step on one is type-checked before it is
# computed (a stage imports no other stage: tests/test_curate_steps.py checks these against the
# fields the signal stages and dedup declare).
SIGNAL_TYPES: dict[str, pa.DataType] = {
    **dict.fromkeys(("dup_keep", "cap_filename", "cap_url", "cap_boilerplate"), pa.bool_()),
    **dict.fromkeys(("cap_words", "cap_max_repeat", "cap_nonprintable", "cap_emails", "cap_phones", "img_faces"),
                    pa.int32()),
    **dict.fromkeys(("cap_lang_prob", "img_sharpness", "img_entropy", "img_colorfulness", "img_brightness", "img_contrast"),
                    pa.float32()),
    **dict.fromkeys(("cap_lang", "dup_minhash_group"), pa.string()),
}


# --------------------------------------------------------------------------- recipes
@dataclass
class Step:
    filter: str
    reason: str
    params: dict[str, Any]
    implicit: bool = False  # run though the file does not list it (ingest_error); not one of its numbered steps


@dataclass
class Recipe:
    name: str
    steps: list[Step]
    embedding: str | None = None
    redact: bool = False
    source: str = "<dict>"
    overrides: dict[str, Any] = field(default_factory=dict)  # --set for this run: in the hash and the tag

    def canonical(self) -> dict[str, Any]:
        out = {"name": self.name, "embedding": self.embedding, "redact": self.redact,
               "steps": [{k: v for k, v in asdict(s).items() if k != "implicit"} for s in self.steps]}
        if self.overrides:  # absent otherwise, so a recipe's hash is what it was before --set existed
            out["set"] = self.overrides
        return out

    def numbered(self) -> list[tuple[int, Step]]:
        """The steps the file lists, each with its number there (as ``--set N.param`` and errors name it)."""
        return list(enumerate((s for s in self.steps if not s.implicit), 1))

    @property
    def tag_prefix(self) -> str:
        return f"{self.name}-{'set-' if self.overrides else ''}{self.hash}-v"

    @property
    def hash(self) -> str:
        return hashlib.sha256(json.dumps(self.canonical(), sort_keys=True).encode()).hexdigest()[:8]


def _toml() -> Any:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    return tomllib


def load_recipe(recipe: str | Path | Mapping[str, Any], overrides: Mapping[str, Any] | None = None) -> Recipe:
    """A recipe from a TOML file or a dict, checked: unknown filters or parameters are errors
    naming the step and the valid choices.

    ``overrides`` change parameters for one run, ``{"alignment.min_percentile": 20}``: the key is
    a step (its filter name, its reason, or its number from 1) and a parameter, or ``embedding``.
    They are checked like the file's own values and recorded in the recipe (its hash, provenance
    and tag name), so an overridden run never passes for the recipe as written.
    """
    if isinstance(recipe, Mapping):
        raw, source = dict(recipe), "<dict>"
    elif not isinstance(recipe, (str, os.PathLike)) or not os.fspath(recipe):  # (None was a TypeError traceback)
        raise LakeError(f"invalid recipe {recipe!r}: expected a TOML file, a built-in recipe "
                        f"({', '.join(sorted(p.stem for p in BUILTIN.glob('*.toml')))}) or a dict")
    else:
        path = Path(recipe)
        bare = isinstance(recipe, str) and "/" not in recipe and os.sep not in recipe
        if bare and (BUILTIN / f"{recipe}.toml").is_file():  # a built-in's name is the built-in (./NAME: a file
            path = BUILTIN / f"{recipe}.toml"  # of that name; a file `basic` here ran instead of the built-in)
        if not path.is_file():
            raise LakeError(f"recipe '{path}' not found; pass a TOML file or a built-in recipe: "
                            f"{', '.join(sorted(p.stem for p in BUILTIN.glob('*.toml')))}")
        tomllib = _toml()
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:  # TOML is UTF-8 text
            raise LakeError(f"recipe '{path}' is not valid TOML: {exc}") from None
        except OSError as exc:
            raise LakeError(f"recipe '{path}' cannot be read: {exc.strerror or exc}") from None
        source = str(path.resolve())  # as status's fix command names it: pasted in another folder, it is found
    if isinstance(raw, Mapping) and "step" in raw and "steps" in raw:  # one was read, the other ignored
        raise LakeError(f"recipe {source}: it has both [[step]] and [[steps]] tables; write every step as [[step]]")
    sets = _apply_overrides(raw, dict(overrides or {}), source)
    unknown = set(raw) - {"name", "embedding", "step", "steps", "privacy"}
    if unknown:
        raise LakeError(f"recipe {source}: unknown keys {sorted(unknown)}; use name, embedding, [[step]], [privacy]")
    name = raw.get("name") or (Path(source).stem if source != "<dict>" else "recipe")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,59}", name):
        raise LakeError(f"recipe {source}: name {name!r} may hold only ASCII letters, digits, '-' and '_', start "
                        "with a letter or digit and be at most 60 long (it names a tag)")
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
        _check_generic(f, params, f"recipe {source}, step {k} ({fname})")
        steps.append(Step(fname, reason, params))
    if not steps:
        raise LakeError(f"recipe {source} has no [[step]]; add at least one filter")
    if not any(s.filter == IngestError.name for s in steps):
        # A row without a usable image is never kept, whatever the recipe lists (it was kept by a recipe
        # that did not name this step: rebalance, sequence and the loader took it as a training pair).
        steps.insert(0, Step(IngestError.name, IngestError.name, {}, implicit=True))
    privacy = raw.get("privacy", {})
    if not isinstance(privacy, Mapping) or set(privacy) - {"redact"}:
        raise LakeError(f"recipe {source}: [privacy] takes only 'redact'")
    redact = privacy.get("redact", False)
    if not isinstance(redact, bool):
        raise LakeError(f"recipe {source}: [privacy] redact = {redact!r} must be true or false")
    return Recipe(name, steps, embedding, redact, source, sets)


def _check_generic(f: Filter, params: dict[str, Any], where: str) -> None:
    """The parameters of the generic steps that cannot be checked one by one."""
    if f.name == "column":
        if params["column"] is None:
            raise LakeError(f'{where}: name the column to test, e.g. column = "aesthetic"')
        if not params["not_null"] and all(params[t] is None for t in Column.tests):
            raise LakeError(f"{where}: give at least one test: min, max, equals, in or not_null = true")
        if params["min"] is not None and params["max"] is not None and params["min"] > params["max"]:
            raise LakeError(f"{where}: min = {params['min']} is more than max = {params['max']}; every row would fail")
    if f.name == "zero_shot" and params["prompts"] is None:
        raise LakeError(f'{where}: give the prompts to score, e.g. prompts = ["a photo with a watermark"]')
    if f.name == "sql":
        if params["where"] is None:
            raise LakeError(f'{where}: give the condition rows must meet to be kept, e.g. where = "aesthetic > 4.5"')
        from lakecurate.sqlcheck import check_where

        check_where(params["where"], lead=f"{where}: where = {params['where']!r} is not one SQL condition")


def parse_override(text: str) -> tuple[str, Any]:
    """``"alignment.min_percentile=20"`` -> ``("alignment.min_percentile", 20)``: the value is read
    as TOML (numbers, true/false, ``["en", "de"]``, quoted strings), else taken as a plain string."""
    tomllib = _toml()
    key, eq, value = text.partition("=")
    if not eq or not key.strip():
        raise LakeError(f"{spell('--set')} {text!r}: write STEP.PARAM=VALUE, e.g. --set alignment.min_percentile=20")
    try:
        parsed = tomllib.loads(f"v = {value.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value.strip()
    return key.strip(), parsed


def _step_name(steps: list[Any], k: int) -> str:
    """How an override names step ``k`` (1-based) of the raw ``steps``: its reason, else its filter,
    where that names it alone; else its number."""
    step = steps[k - 1]
    for name in (step.get("reason"), step.get("filter")):
        if isinstance(name, str) and sum(name in (st.get("filter"), st.get("reason"))
                                         for st in steps if isinstance(st, Mapping)) == 1:
            return name
    return str(k)


def _apply_overrides(raw: dict[str, Any], overrides: dict[str, Any], source: str) -> dict[str, Any]:
    """Apply ``overrides`` to the raw recipe in place; the ones that change it, each keyed one way
    whatever way it was given (:func:`_step_name`), so that one decision has one hash and tag:
    ``15.min_percentile`` and ``alignment.min_percentile`` were two recipes, and a value the file
    already holds a third."""
    steps = raw.get("step", raw.get("steps", []))
    applied: dict[str, Any] = {}

    def plain(v: Any) -> Any:  # a number as a float (30.0 is the file's 30: it made another tag)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v)
        if isinstance(v, Mapping):
            return {k: plain(x) for k, x in v.items()}
        return [plain(x) for x in v] if isinstance(v, (list, tuple)) else v

    def same(a: Any, b: Any) -> bool:
        return json.dumps(plain(a), sort_keys=True, default=str) == json.dumps(plain(b), sort_keys=True, default=str)

    for key, value in overrides.items():
        if key == "embedding":
            if not same(raw.get("embedding"), value):
                raw["embedding"] = applied["embedding"] = value
            continue
        target, dot, param = key.rpartition(".")
        if not dot or not target or not param:
            raise LakeError(f"{spell('--set')} {key}={value!r}: name a step and a parameter, e.g. alignment.min_percentile "
                            f"(or embedding)")
        if not isinstance(steps, list):
            break  # load_recipe names the malformed steps
        hits = [k for k, st in enumerate(steps, 1) if isinstance(st, Mapping)
                and (target == str(k) or target in (st.get("filter"), st.get("reason")))]
        if not hits:
            have = ", ".join(f"{k} {st.get('filter')}" + (f" ({st['reason']})" if st.get("reason") else "")
                             for k, st in enumerate(steps, 1) if isinstance(st, Mapping))
            raise LakeError(f"{spell('--set')} {key}: recipe {source} has no step {target!r}; its steps: {have}")
        if len(hits) > 1:
            raise LakeError(f"{spell('--set')} {key}: steps {', '.join(map(str, hits))} of recipe {source} are all {target!r}; "
                            f"name one by its number, e.g. --set {hits[0]}.{param}=...")
        step = steps[hits[0] - 1]
        name = step.get("filter")
        now = {**(FILTERS[name].params if isinstance(name, str) and name in FILTERS else {}), "reason": name, **step}
        if param in now and same(now[param], value):
            continue  # what the file (or the filter's default) says already
        steps[hits[0] - 1] = {**step, param: value}
        name_of = f"{_step_name(steps, hits[0])}.{param}"
        if name_of in applied and not same(applied[name_of], value):  # (one step named two ways: the last won)
            raise LakeError(f"{spell('--set')} {key}={value!r}: {name_of} is set twice, to {applied[name_of]!r} and {value!r}; "
                            f"give it once")
        applied[name_of] = value
    return dict(sorted(applied.items()))


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
    dry_run: bool = False  # decided, nothing written (no signals computed, no columns, no tag)
    overrides: dict[str, Any] = field(default_factory=dict)  # --set for this run
    steps: list[StepView] = field(default_factory=list)  # a dry run's per-step detail (explain)
    warnings: list[str] = field(default_factory=list)  # what the producers it ran said (a dedup's)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def finished(self, t0: float) -> "CurateReport":
        """This report with its time since ``t0`` and, when the recipe keeps no row of a lake that
        has some (a threshold the wrong way round looked like any other run), that warning."""
        self.seconds = time.perf_counter() - t0
        if self.rows and not self.kept:
            worst = max(self.dropped.items(), key=lambda kv: kv[1], default=(None, 0))
            self.warnings.append(f"recipe {self.recipe} keeps no row of {self.rows}" + (
                f" ({worst[0]} drops {worst[1]})" if worst[0] else "") +
                f"; see what each step would drop with {given('--dry-run')}, and try {set_words('STEP.PARAM', 'VALUE')}")
        return self


def set_words(key: str, value: str) -> str:
    """A one-run override of a recipe's parameter as the interface speaking writes it (``value`` as
    TOML, or a placeholder).

    >>> set_words("alignment.min_percentile", "20")
    "overrides={'alignment.min_percentile': 20}"
    """
    if speaker() == "cli":
        return f"--set {key}={value}"
    if speaker() == "pipeline":
        return f'overrides = {{"{key}" = {value}}}'
    return f"overrides={{{key!r}: {value}}}"


def embedding_need(rec: Recipe, what: str = "them") -> str:
    """Which steps of ``rec`` need an embedding, in words ("the zero_shot step needs them"): a
    zero_shot-only recipe was told "the alignment step needs them"."""
    steps = list(dict.fromkeys(s.filter for s in rec.steps if EMBEDDING in FILTERS[s.filter].needs)) or ["alignment"]
    return f"the {' and '.join(steps)} step{'s' if len(steps) > 1 else ''} need{'' if len(steps) > 1 else 's'} {what}"


def _embedding(lake: "Store", recipe: Recipe) -> tuple[str, dict]:
    from lakecurate.names import pick_embedding

    source = recipe.source if recipe.source.startswith("<") or Path(recipe.source).parent != RECIPES else Path(recipe.source).stem
    return pick_embedding(lake, lake.dataset(), recipe.embedding, need=embedding_need(recipe),
                          option=f"{_embedding_words()}, or embedding = \"NAME\" in a copy of recipe {source}"
                          if source != recipe.source else f"{_embedding_words()}, or embedding = \"NAME\" in recipe {recipe.source}")


def _embedding_words() -> str:
    """A run's choice of embedding as the interface speaking writes it (the shell quotes --set's TOML text)."""
    if speaker() == "cli":
        return "--set 'embedding=\"NAME\"'"
    return set_words("embedding", '"NAME"' if speaker() == "pipeline" else "'NAME'")


def _check_embedded(lake: "Store", prefix: str, prov: dict[str, Any], rec: Recipe) -> None:
    """Scores need a model, so curate cannot make them: live rows without one (fragments ``embed``
    has not filled) are named, and curate stops before it writes anything."""
    check_embedded(lake, lake.dataset(), prefix, prov, kind="score", need=embedding_need(rec, "one"), then="curate")


def _compute_inputs(lake: "Store", rec: Recipe, needs: set[str], emb: str | None, progress: bool | None,
                    produce: Produce | None, engine: str = "local") -> list[str]:
    """Have the signals the steps read and the lake lacks computed (incremental: only unfilled fragments).

    Curate never runs another stage: it names the stage that produces what it needs, and ``produce``
    (the facade's or the pipeline's) runs it. Without ``produce``, a missing input is an error that
    names the stage to run. ``engine``: where the producers run (their per-row work on Ray actors,
    dedup's joins as Ray tasks)."""
    produce = produce or no_producer(lake, "curate")
    computed = []
    if CAPTION in needs and produce("caption_signals", progress=progress, engine=engine):
        computed.append(CAPTION)
    if IMAGE in needs and produce("image_signals", progress=progress, engine=engine):
        computed.append(IMAGE)
    if DEDUP in needs:
        ds = lake.dataset()
        if "dup_keep" not in ds.schema.names or columns.fragments_to_fill(ds, "dup_keep"):
            from lakecurate.names import embedding_prefixes

            found = embedding_prefixes(ds)
            use = emb if emb is not None else (next(iter(found)) if len(found) == 1 else None)
            # Semantic dedup only with a real encoder: a random test model's similarities mean nothing.
            semantic = use is not None and not meaningless(found[use])
            # Not copy: its all-pairs search is hours at 10M rows (docs/scale.md); `lakecurate dedup` adds it.
            args: dict[str, Any] = {"methods": ["exact", "phash", "semantic"] if semantic else ["exact", "phash"],
                                    "embedding": use}
            if "dup_keep" in ds.schema.names:  # a dedup decided before (rows arrived since): the same one again
                # (its methods and settings, what status's fix runs: exact, phash, semantic alone were
                # refused when the stored decision also reads copy or verify groups)
                all_states = states(lake, ds)
                final = next((st.node for st in all_states if st.node.stage == "dedup" and "dup_keep" in st.node.columns), None)
                args = dedup_args([st.node for st in all_states if st.node.stage == "dedup" and st.state != "current"],
                                  final, ds) or args
            produce("dedup", progress=progress, engine=engine, **args)
            computed.append(DEDUP)
    if TEMPLATES in needs:
        ds = lake.dataset()
        if "dup_minhash_group" not in ds.schema.names or columns.fragments_to_fill(ds, "dup_minhash_group"):
            produce("dedup", methods=["minhash"], progress=progress, engine=engine)
            computed.append(TEMPLATES)
    if FACES in needs and produce("faces", progress=progress, engine=engine):
        computed.append(FACES)
    if rec.redact and produce("redact", engine=engine):
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


def _declare(lake: "Store", fields: list[pa.Field], prov: dict[str, Any]) -> bool:
    """Declare keep/drop_reason with ``prov``, replacing another recipe's (metadata only); True when
    they were replaced (every fragment is then written again)."""
    for attempt in range(ATTEMPTS):
        try:
            return columns.declare_view(lake, fields, prov)
        except LakeError:
            # Another curate declared its own between our look and our add: look again.
            if attempt == ATTEMPTS - 1 or not columns.config_changed(lake, "keep", prov):
                raise


def _disagreement(lake: "Store", version: int, prov: dict[str, Any], digests: dict[int, str]) -> str | None:
    """None when ``version`` holds this run's provenance on ``keep`` and exactly its decisions (the
    fragments of ``digests``, :func:`_digest` of what this run decided; every other row undecided),
    else what differs: another writer interleaved. Read a fragment at a time."""
    ds = lake.dataset(version)
    got = columns.field_provenance(ds.schema.field("keep")) if "keep" in ds.schema.names else None
    if not got or got.get("config_hash") != prov["config_hash"]:
        other = (((got or {}).get("config") or {}).get("recipe") or {}).get("name", "another stage")
        return f"at version {version} its keep column was declared by recipe '{other}'"
    differ = []
    for frag in ds.get_fragments():
        fid = frag.fragment_id
        if fid in digests:
            now = frag.to_table(columns=["keep", "drop_reason"])
            if _digest(now.column("keep"), now.column("drop_reason")) != digests.pop(fid):
                differ.append(fid)
        elif frag.count_rows(filter="keep IS NOT NULL"):  # rows this run did not judge: undecided
            differ.append(fid)
    gone = sorted(digests)  # judged here, rewritten or compacted away since
    if differ or gone:
        return (f"at version {version}, fragments {sorted(differ + gone)[:5]}"
                f"{' ...' if len(differ) + len(gone) > 5 else ''} hold other decisions")
    return None


def tag_prefix(lake: "Store", rec: Recipe) -> str:
    """The start of the names of ``rec``'s tags on this lake's branch (the version number ends
    them): tags are the lake's, not a branch's, so a branch's name the branch; main and a branch at
    the same version number named theirs alike, and main's curate took the branch's tag for its
    own. (A name past the tag's 100 characters names the branch by a hash of it.)"""
    if not lake.branch:
        return rec.tag_prefix
    branch = lake.branch if len(rec.tag_prefix) + len(lake.branch) + 12 <= 100 else \
        "b" + hashlib.sha256(lake.branch.encode()).hexdigest()[:8]
    return f"{rec.tag_prefix[:-2]}-{branch}-v"


def _tag(lake: "Store", name: str, version: int) -> str:
    """Tag ``version`` with the recipe's ``name`` (its prefix and the version), or find the tag a
    same-recipe run gave it; returns the name used. A name already taken otherwise (a branch, or a
    person's tag at another version) gets a suffix: the decision was written, and every run refused
    to tag it after ("'...' is a branch: pick another name", a name the person never chose)."""
    here = lake.branch or None
    for n in range(1, 100):
        cand = name if n == 1 else f"{name}-{n}"
        for _ in range(2):  # (read again once: another run may have made it meanwhile)
            info = lake.dataset().tags.list().get(cand)
            if info is not None:
                if info["version"] == version and (info.get("branch") or None) == here:
                    return cand  # a same-recipe run tagged this version of this branch
                break
            if cand == "main" or cand in lake.branches():
                break
            try:
                lake.tag(cand, version)
                return cand
            except (OSError, ValueError, LakeError):
                if cand not in lake.dataset().tags.list() and cand not in lake.branches():
                    raise  # (not a name taken meanwhile: a store's error, said as it is)
    raise LakeError(f"curate decided version {version} of lake '{lake.uri}' but found no free tag name from "
                    f"'{name}'; tag it yourself: " + words(f"{lakecurate_on(lake)} tag {lake.shell} NAME --version {version}",
                                                             f"lake.tag('NAME', {version})"))


def _already_done(lake: "Store", rec: Recipe, prefix: str) -> tuple[str, "lance.LanceDataset"] | None:
    """This recipe's tag when the lake has not changed since: the tag is at the latest version, whose
    keep column is this recipe's, and every live row there has a decision."""
    ds = lake.dataset()
    prov = columns.field_provenance(ds.schema.field("keep")) if "keep" in ds.schema.names else None
    if not prov or (prov.get("config") or {}).get("hash") != rec.hash:
        return None
    recorded = (prov.get("config") or {}).get("step_versions")
    if recorded is not None and recorded != step_versions(rec):  # decided by other step code: decide again
        return None
    tag = next((n for n, info in ds.tags.list().items() if n.startswith(prefix) and info["version"] == ds.version
                and (info.get("branch") or None) == (lake.branch or None)), None)
    if tag is None or columns.fragments_to_fill(ds, "keep") or ds.count_rows(filter="keep IS NULL"):
        return None
    return tag, ds


def step_versions(rec: Recipe) -> dict[str, int]:
    """The code version of each step ``rec`` uses (step name -> :attr:`Filter.version`): what
    ``keep``'s provenance records, and what status compares with this code's."""
    now = code_versions()
    return {s.filter: now[s.filter] for s in rec.steps}


def code_versions() -> dict[str, int]:
    """The code version of every step this lakecurate has (what the facade registers with the
    graph: :data:`lakecurate.graph.CODE`)."""
    return {name: int(f.version) for name, f in FILTERS.items()}


def _needs(rec: Recipe) -> set[str]:
    """The producers the steps need: their own, and for generic steps, those of the signal
    columns they name (a ``column`` step on ``img_sharpness`` needs the image signals)."""
    out: set[str] = set()
    for s in rec.steps:
        f = FILTERS[s.filter]
        out |= set(f.needs)
        named = list(f.reads(s.params)) + (where_columns(s.params["where"], list(_NEEDS_BY_COLUMN)) if s.filter == "sql" else [])
        for c in named:
            out |= set(_NEEDS_BY_COLUMN.get(c, ()))
    return out


def _zero_shots(rec: Recipe) -> list[dict[str, Any]]:
    return [s.params for s in rec.steps if s.filter == "zero_shot"]


def _reads(rec: Recipe, names: list[str]) -> set[str]:
    """Lake columns the steps read (an SQL condition's: the lake's column names it mentions)."""
    out: set[str] = set()
    for s in rec.steps:
        out |= set(FILTERS[s.filter].reads(s.params))
        if s.filter == "review" and "review_verdict" in names:  # read once someone has reviewed
            out.add("review_verdict")
        if s.filter == "sql":
            out |= set(where_columns(s.params["where"], names))
    return out


_SCALAR = (pa.types.is_integer, pa.types.is_floating, pa.types.is_boolean, pa.types.is_string,
           pa.types.is_large_string, pa.types.is_decimal, pa.types.is_temporal)


def _plan_where(ds: "lance.LanceDataset", where: str, lead: str) -> None:
    """Plan the sql step's ``where`` on ``ds`` (:func:`check_where`); where it names signals curate
    computes on the way (not in the lake yet), on an empty stand-in holding the lake's columns it
    names and those signals (planning on the lake refused the README's own ``cap_lang = 'en'`` on a
    lake without caption signals)."""
    to_come = [c for c in where_columns(where, list(SIGNAL_TYPES)) if c not in ds.schema.names]
    if not to_come:
        check_where(where, ds=ds, lead=lead)
        return
    import tempfile

    import lance

    schema = pa.schema([ds.schema.field(c) for c in where_columns(where, ds.schema.names)]
                       + [pa.field(c, SIGNAL_TYPES[c]) for c in to_come])
    with tempfile.TemporaryDirectory(prefix="lakecurate-plan-") as tmp:
        check_where(where, ds=lance.write_dataset(schema.empty_table(), f"{tmp}/plan.lance"), lead=lead)


def _check_steps(lake: "Store", ds: "lance.LanceDataset", rec: Recipe, later: Collection[str] = ()) -> None:
    """The generic steps against the lake, before anything is written: their columns exist and
    hold values their tests can compare; an SQL condition plans on the table. A step reading one of
    ``later`` (columns steps before curate make: ``lakecurate run`` checks a file before its first
    step) is left to the check curate makes when it runs."""
    schema = ds.schema
    for k, step in rec.numbered():
        where = f"recipe {rec.source}, step {k} ({step.filter})"
        p = step.params
        if (step.filter == "column" and p["column"] in later) or (
                step.filter == "sql" and where_columns(p["where"], later)):
            continue
        if step.filter == "sql":
            if {"keep", "drop_reason"} & set(where_columns(p["where"], ["keep", "drop_reason"])):
                raise LakeError(f"{where}: where = {p['where']!r} reads keep/drop_reason, which curate writes; "
                                f"test the columns they are made from")
            known = {n.lower() for n in [*schema.names, *SIGNAL_TYPES]}  # (the signals: computed on the way)
            unknown = [c for c in condition_columns(p["where"]) if c.lower() not in known]
            if unknown:  # (planning said "Schema error: No field named ...", listing every field)
                near = difflib.get_close_matches(unknown[0], [*schema.names, *SIGNAL_TYPES], n=3)
                raise LakeError(f"{where}: where = {p['where']!r} names {unknown[0]}, which is not a column of lake "
                                f"'{lake.uri}'" + (f" (did you mean {', '.join(near)}?)" if near else "")
                                + f"; add a feature of your own with: {_feature_words(lake, unknown[0])}")
            _plan_where(ds, p["where"], lead=f"{where}: where = {p['where']!r} cannot select rows of lake '{lake.uri}'")
        if step.filter != "column":
            continue
        name = p["column"]
        if name in ("keep", "drop_reason"):
            raise LakeError(f"{where}: column = {name!r} is what curate writes; test the columns it is made from")
        if name in schema.names:
            typ = schema.field(name).type
        elif name in _NEEDS_BY_COLUMN:  # a signal curate computes on the way: its type is known now
            typ = SIGNAL_TYPES[name]
        else:
            near = difflib.get_close_matches(name, schema.names, n=3)
            raise LakeError(f"{where}: lake '{lake.uri}' has no column {name!r}"
                            + (f" (did you mean {', '.join(near)}?)" if near else "")
                            + f"; add a feature of your own with: {_feature_words(lake, name)}")
        if not any(is_(typ) for is_ in _SCALAR):
            raise LakeError(f"{where}: column {name!r} holds {typ}, not one value per row; test a scalar column")
        numeric = pa.types.is_integer(typ) or pa.types.is_floating(typ) or pa.types.is_decimal(typ)
        if (p["min"] is not None or p["max"] is not None) and not numeric:
            raise LakeError(f"{where}: min/max need numbers, but column {name!r} holds {typ}; use equals or in")
        temporal = pa.types.is_temporal(typ)
        if temporal and (p["equals"] is not None or p["in"] is not None):  # "2020" equalled no time: every row dropped
            raise LakeError(f"{where}: column {name!r} holds {typ}; equals/in compare no text or number with it: "
                            f"use a sql step, e.g. where = \"{name} >= TIMESTAMP '2020-01-01 00:00:00'\"")
        for t in ("equals", "in"):
            values = p[t] if isinstance(p[t], list) else ([] if p[t] is None else [p[t]])
            for v in values:
                fits = (isinstance(v, bool) if pa.types.is_boolean(typ) else
                        (isinstance(v, (int, float)) and not isinstance(v, bool)) if numeric else
                        isinstance(v, str) if (pa.types.is_string(typ) or pa.types.is_large_string(typ)) else True)
                if fits and pa.types.is_integer(typ) and isinstance(v, float) and not v.is_integer():
                    fits = False  # (300.5 equals no width: every row dropped, the step said nothing but "keeps no row")
                if not fits:
                    raise LakeError(f"{where}: {t} = {p[t]!r} cannot equal a value of column {name!r} ({typ})")


@dataclass
class StepView:
    """What one step does on a lake version (a dry run, the report): its drops, examples, and for
    a step with one threshold, the rows either side of the cut and the kept rows at other cuts."""

    reason: str
    filter: str
    params: dict[str, Any]
    dropped: int
    share: float
    examples: list[dict[str, Any]] = field(default_factory=list)  # first dropped rows: id, key, caption, value
    cut: dict[str, Any] | None = None  # param, at, side, label
    below: list[dict[str, Any]] = field(default_factory=list)  # failing rows nearest the cut
    above: list[dict[str, Any]] = field(default_factory=list)  # passing rows nearest the cut
    whatif: list[dict[str, Any]] = field(default_factory=list)  # cut -> share judged below, dropped here, kept in all


@dataclass
class Decisions:
    alive: np.ndarray
    reason: np.ndarray
    fails: list[np.ndarray]  # per step, on every row (not only those earlier steps left)
    cuts: list[Cut | None]
    dropped: dict[str, int]


def _decide(df: pd.DataFrame, rec: Recipe, params: list[dict[str, Any]], *, cuts: bool = True) -> Decisions:
    """The recipe's steps on a frame of the columns they read, with each step's parameters
    (:func:`_params`, or :func:`_fit` for a frame that is one fragment): keep, the first failing
    step's reason. ``cuts``: also each step's threshold and values (what :func:`explain` shows)."""
    n = len(df)
    reason = np.full(n, None, dtype=object)
    alive = np.ones(n, bool)
    fails, found, dropped = [], [], {}
    overrides = []
    final = np.zeros(n, bool)  # dropped by a step no verdict overrides (ingest_error: no image)
    for step, p in zip(rec.steps, params):
        f = FILTERS[step.filter]
        fail = np.asarray(f.drop(df, p), dtype=bool)
        fails.append(fail)
        found.append(f.cut(df, p) if cuts else None)
        if getattr(f, "override", False):
            overrides.append((step, fail, np.asarray(f.keeps(df, p), dtype=bool)))
            continue
        hit = fail & alive
        reason[hit] = step.reason
        alive &= ~hit
        # (every row it fails, not only those it dropped first: a row an earlier step dropped came back
        # kept by a reviewer's keep, without an image)
        final |= fail if getattr(f, "final", False) else False
        dropped[step.reason] = dropped.get(step.reason, 0) + int(hit.sum())
    for step, fail, keep in overrides:  # a person's verdict, over every machine step
        keep = keep & ~final
        dropped[step.reason] = dropped.get(step.reason, 0)
        for r in np.unique(reason[keep & ~alive]).tolist():
            dropped[r] -= int((keep & ~alive & (reason == r)).sum())
        for r in np.unique(reason[fail & ~alive]).tolist():
            dropped[r] -= int((fail & ~alive & (reason == r)).sum())
        alive[keep] = True
        reason[keep] = None
        alive[fail] = False
        reason[fail] = step.reason
        dropped[step.reason] += int(fail.sum())
    return Decisions(alive, reason, fails, found, dropped)


def _effective(step: Step, emb_prov: dict | None) -> dict[str, Any]:
    params = dict(step.params)
    if step.filter == "alignment" and params["min"] is None and params["min_percentile"] is None:
        params["min"] = ALIGNMENT_MIN.get(((emb_prov or {}).get("config") or {}).get("family", "open_clip"), 0.28)
    return params


def _params(rec: Recipe, emb_prov: dict | None) -> list[dict[str, Any]]:
    """Each step's parameters, to judge one frame holding every row judged."""
    return [_effective(step, emb_prov) for step in rec.steps]


def _fit(rec: Recipe, emb_prov: dict | None, scan: Callable[[str], Iterator[pa.Array]]) -> list[dict[str, Any]]:
    """Each step's parameters fitted on every judged row (:meth:`Filter.fit`), to judge a fragment at a time."""
    return [FILTERS[step.filter].fit(scan, p) for step, p in zip(rec.steps, _params(rec, emb_prov))]


WHATIF_QUANTILES = {"min": (1, 2, 5, 10, 20, 30, 40, 50), "max": (50, 60, 70, 80, 90, 95, 98, 99)}


def explain_by_fragment(judge: Callable[[], Iterator[tuple[pd.DataFrame, Decisions]]], rec: Recipe, *,
                        examples: int = 3, near: int = 6) -> tuple[list[StepView], int, int, dict[str, int]]:
    """Per step: rows dropped (those earlier steps left), the first examples, and for a thresholded
    step the rows just below and just above the cut and the kept rows at other cuts (every other
    step unchanged). Over frames judged a fragment at a time (``judge()``: a fresh iterator of
    (frame, decisions with cuts) in row order, decided with fitted parameters), equal to the same
    on one frame of every row (``tests/curate_reference.py``): the drops, examples and nearest rows kept as the frames pass, the what-if
    grid's percentiles of each cut's judged values by :func:`lakecurate.stream.nanpercentiles`
    (a few more passes), then one pass counting each cut of the grid. Returns (views, rows, kept,
    drops by reason as the decisions made them)."""
    k_steps = len(rec.steps)
    views = [StepView(s.reason, s.filter, dict(s.params), 0, 0.0) for s in rec.steps]
    near_rows: list[dict[str, list]] = [{"below": [], "above": []} for _ in rec.steps]
    has_cut, integral = [False] * k_steps, [True] * k_steps
    n = kept = 0
    dropped: dict[str, int] = {s.reason: 0 for s in rec.steps}

    def masks(dec: Decisions) -> list[tuple[np.ndarray, np.ndarray]]:
        ok = [~f for f in dec.fails]
        m = len(dec.alive)
        return [(np.logical_and.reduce(ok[:k]) if k else np.ones(m, bool),
                 np.logical_and.reduce(ok[:k] + ok[k + 1:]) if len(ok) > 1 else np.ones(m, bool)) for k in range(k_steps)]

    def judged_of(dec: Decisions, k: int, before: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        cut = dec.cuts[k]
        fixed = dec.fails[k] & ~cut.fails(cut.at)  # dropped whatever the cut (e.g. no score at all)
        return fixed, before & np.isfinite(cut.values) & ~fixed

    for df, dec in judge():
        ids = df["id"].to_numpy(dtype=object)
        for r, c in dec.dropped.items():
            dropped[r] = dropped.get(r, 0) + c
        for k, (before, _) in enumerate(masks(dec)):
            view, cut = views[k], dec.cuts[k]
            hit = dec.fails[k] & before
            view.dropped += int(hit.sum())
            value = cut.values if cut is not None else None
            if len(view.examples) < examples:  # (rows it dropped in the end: not one a reviewer's keep rescued)
                shown = hit & (dec.reason == view.reason)
                view.examples += [_row(ids, value, i) for i in np.flatnonzero(shown)[: examples - len(view.examples)]]
            if cut is None:
                continue
            has_cut[k] = True
            view.cut = {"param": cut.param, "at": float(cut.at), "side": cut.side, "label": cut.label}
            _, judged = judged_of(dec, k, before)
            vals = value[judged]
            integral[k] &= bool(np.all(vals == np.round(vals)))
            sign = 1 if cut.side == "min" else -1
            for side, rows, key in (("below", np.flatnonzero(judged & cut.fails(cut.at)), -sign),
                                    ("above", np.flatnonzero(judged & ~cut.fails(cut.at)), sign)):
                best = rows[np.argsort(key * value[rows], kind="stable")][:near]
                # nearest the cut first, ties in row order: earlier frames' rows before this one's
                pool = near_rows[k][side] + [(key * value[i], n + int(i), _row(ids, value, i)) for i in best]
                near_rows[k][side] = sorted(pool, key=lambda t: (t[0], t[1]))[:near]
        n += len(df)
        kept += int(dec.alive.sum())
    for k, view in enumerate(views):
        view.share = view.dropped / n if n else 0.0
        view.below = [t[2] for t in near_rows[k]["below"]]
        view.above = [t[2] for t in near_rows[k]["above"]]
    cut_steps = [k for k in range(k_steps) if has_cut[k]]
    if not cut_steps:
        return views, n, kept, dropped

    def judged_values() -> Iterator[tuple[np.ndarray, ...]]:
        for _, dec in judge():
            m = masks(dec)
            yield tuple(dec.cuts[k].values[judged_of(dec, k, m[k][0])[1]] for k in cut_steps)

    side = {k: views[k].cut["side"] for k in cut_steps}
    grids = stream.nanpercentiles(judged_values, [WHATIF_QUANTILES[side[k]] for k in cut_steps])
    ats = {}
    for k, grid in zip(cut_steps, grids):
        if np.isnan(grid).all():  # no judged value: no what-ifs
            continue
        grid = np.asarray(grid)
        ats[k] = np.unique(np.append(np.round(grid) if integral[k] else grid, views[k].cut["at"]))
    counts = {k: np.zeros((len(a), 3), np.int64) for k, a in ats.items()}  # below, dropped, kept
    judged_total = dict.fromkeys(ats, 0)
    for _, dec in judge():
        m = masks(dec)
        for k, at_list in ats.items():
            cut = dec.cuts[k]
            before, others = m[k]
            fixed, judged = judged_of(dec, k, before)
            vals = cut.values[judged]
            judged_total[k] += len(vals)
            for j, at in enumerate(at_list):
                f = fixed | cut.fails(at)
                counts[k][j] += ((vals < at).sum(), (f & before).sum(), (others & ~f).sum())
    for k, at_list in ats.items():
        views[k].whatif = [{"cut": float(at), "judged_below": float(counts[k][j, 0] / judged_total[k]),
                            "dropped": int(counts[k][j, 1]), "kept": int(counts[k][j, 2]),
                            "current": bool(at == views[k].cut["at"])} for j, at in enumerate(at_list)]
    return views, n, kept, dropped


def _row(ids: np.ndarray, value: np.ndarray | None, i: int) -> dict[str, Any]:
    v = None if value is None or not np.isfinite(value[i]) else float(value[i])
    return {"id": ids[i], "value": v}


def _attach(ds: "lance.LanceDataset", views: list[StepView], cols: tuple[str, ...] = ("key", "caption")) -> None:
    """Fill ``key`` and ``caption`` of the rows the views name (one read of those rows only)."""
    want = {r["id"] for v in views for r in v.examples + v.below + v.above}
    if not want:
        return
    got = {r["id"]: r for r in ds.to_table(columns=["id", *cols], filter=f"id IN ({in_list(sorted(want))})").to_pylist()}
    for v in views:
        for r in v.examples + v.below + v.above:
            r.update({c: got.get(r["id"], {}).get(c) for c in cols})


ZeroShotTexts = list[tuple[str, np.ndarray, np.ndarray, float]]  # (frame column, prompts, against, scale)


def _zero_shot_texts(ds: "lance.LanceDataset", emb: str, steps: list[dict[str, Any]]) -> ZeroShotTexts:
    """Each zero_shot step's prompt and contrast vectors, through the encoder's text tower (rebuilt
    from the embedding's provenance), and the model's logit scale: computed once a run."""
    from lakecurate.encoders import Encoder, spec_from_provenance

    if not steps:
        return []
    enc = Encoder(spec_from_provenance(columns.field_provenance(ds.schema.field(embedding_columns(emb)["image"]))))
    learnt = getattr(getattr(enc, "model", None), "logit_scale", None)  # CLIP's own: exp(4.6) = 100
    scale = float(learnt.detach().exp()) if learnt is not None else 100.0
    out = []
    for p in steps:
        t = np.asarray(enc.encode_texts(list(p["prompts"]) + list(p["against"])), np.float32)
        t /= np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-12)
        out.append((_zero_shot_key(p), t[: len(p["prompts"])], t[len(p["prompts"]):], scale))
    return out


def _zero_shot_columns(df: pd.DataFrame, image: pa.ChunkedArray | pa.Array, texts: ZeroShotTexts) -> None:
    """The zero-shot probabilities of the rows' stored image vectors (``image``, aligned with ``df``)."""
    if not texts:
        return
    x, valid = columns.embedding_matrix(image)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    for key, prompts, against, scale in texts:
        df[key] = np.where(valid, zero_shot(x, prompts, against, scale), np.nan)


class _Shared:
    """A frame's ``attrs`` entry that pandas passes on as is: it deep-copies ``attrs`` into every
    frame an operation makes, and a copy of a Lance dataset serialises its manifest (~1.5 ms at
    300 fragments: 26 s of a 10M-row curate before this)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __deepcopy__(self, memo: dict) -> "_Shared":
        return self


def _fragment_frame(ds: "lance.LanceDataset", frag: "lance.LanceFragment", read: set[str], emb: str | None,
                    texts: ZeroShotTexts) -> tuple[pa.Table, pd.DataFrame]:
    """One fragment's live rows: the columns the steps read (with ``_rowaddr``) as an Arrow table,
    and as the frame the steps judge (``__rowaddr``, ``__score``, each zero-shot step's column)."""
    image = embedding_columns(emb)["image"] if emb is not None and texts else None
    tbl = frag.to_table(columns=sorted(read | ({image} if image else set())), with_row_address=True)
    df = tbl.drop_columns(["_rowaddr"] + ([image] if image and image not in read else [])).to_pandas()
    df["__rowaddr"] = tbl.column("_rowaddr").to_numpy()
    df.attrs["rows_of"] = _Shared(frag)  # the sql step runs its condition on this fragment
    if emb is not None:
        df["__score"] = df[embedding_columns(emb)["score"]]
    if image:
        _zero_shot_columns(df, tbl.column(image), texts)
    if image and image not in read:
        tbl = tbl.drop_columns([image])
    return tbl, df


def _scan(frags: list["lance.LanceFragment"], emb: str | None) -> Callable[[str], Iterator[pa.Array]]:
    """A column's values a fragment at a time over ``frags`` (``__score``: the embedding's score)."""
    def scan(name: str) -> Iterator[pa.Array]:
        col = embedding_columns(emb)["score"] if name == "__score" and emb is not None else name
        for frag in frags:
            yield frag.to_table(columns=[col]).column(0).combine_chunks()
    return scan


def _digest(keep: pa.Array, reason: pa.Array) -> str:
    """A fingerprint of one fragment's decisions (keep, drop_reason in row order; nulls included)."""
    import pyarrow.compute as pc

    keep = pc.fill_null(pc.cast(keep, pa.int8()), -1).to_numpy(zero_copy_only=False)
    codes = pc.dictionary_encode(reason).combine_chunks() if isinstance(reason, pa.ChunkedArray) else pc.dictionary_encode(reason)
    h = hashlib.sha1(np.ascontiguousarray(keep, np.int8).tobytes())
    h.update(pc.fill_null(codes.indices, -1).to_numpy(zero_copy_only=False).astype(np.int32).tobytes())
    h.update("\x1f".join(codes.dictionary.to_pylist()).encode())
    return h.hexdigest()


def recipe_of(ds: "lance.LanceDataset") -> Recipe | None:
    """The recipe whose decisions ``keep`` holds at this version (from its provenance), or None."""
    prov = columns.field_provenance(ds.schema.field("keep"), strict=False) if "keep" in ds.schema.names else None
    raw = ((prov or {}).get("config") or {}).get("recipe")
    if not isinstance(raw, dict) or raw.get("steps") is None:
        return None
    try:
        steps = [Step(s["filter"], s["reason"], dict(s["params"])) for s in raw["steps"] if s["filter"] in FILTERS]
    except (KeyError, TypeError):
        return None
    return Recipe(raw.get("name", "recipe"), steps, raw.get("embedding"), bool(raw.get("redact")),
                  (prov.get("config") or {}).get("source", "<lake>"), dict(raw.get("set") or {}))


def explain_version(ds: "lance.LanceDataset", rec: Recipe, *, near: int = 6) -> list[StepView]:
    """:func:`explain` of ``rec`` on the rows of one lake version it can judge (nothing computed,
    nothing written): for the report's "rows either side of the cut". Steps whose columns the
    version lacks are left out (a lake curated before a signal existed)."""
    from lakecurate.names import embedding_prefixes

    names = ds.schema.names
    # embeddings only when a step scores them (a lake with odd embedding provenance still shows the rest)
    found = embedding_prefixes(ds) if any(EMBEDDING in FILTERS[s.filter].needs for s in rec.steps) else {}
    emb = rec.embedding if rec.embedding in found else (next(iter(found)) if len(found) == 1 else None)
    steps = [s for s in rec.steps if all(c in names for c in FILTERS[s.filter].reads(s.params))
             and (s.filter != "alignment" or emb is not None)]
    rec = Recipe(rec.name, steps, rec.embedding, rec.redact, rec.source, rec.overrides)
    views, _, _, _ = explain_by_fragment(_judge_by_fragment(ds, rec, emb, found.get(emb) if emb else None), rec, near=near)
    _attach(ds, views)
    return views


def _decide_by_fragment(lake: "Store", ds: "lance.LanceDataset", frags: list["lance.LanceFragment"], rec: Recipe,
                        params: list[dict[str, Any]], read: set[str], emb: str | None, texts: ZeroShotTexts,
                        prov: dict[str, Any], progress: bool | None, engine: str = "local"
                        ) -> tuple[int, int | None, int, int, dict[int, str], dict[str, int]]:
    """Decide and write ``keep``/``drop_reason`` a fragment at a time (memory: one fragment's
    columns), the changed fragments in one commit: (fragments written, new version or None, rows
    judged, kept, each fragment's :func:`_digest`, drops by reason). ``engine="ray"``: a task per
    ~_TASK_ROWS rows of fragments decides them and writes their files (:func:`judge_fragments_task`);
    the commit is made here."""
    from lakecurate.graph import commit_decisions
    from lakecurate.progress import progress_bar

    changed = columns.ChangedFragments(lake, ["keep", "drop_reason"])
    digests: dict[int, str] = {}
    dropped = {s.reason: 0 for s in rec.steps}
    n = kept = 0
    counts = [f.count_rows() for f in frags]
    bar = progress_bar(total=sum(counts), desc="curate", unit="row", progress=progress)
    if engine == "ray":
        from lakecurate.engines import ray_init, ray_task_map, task_window

        tasks = columns.fragment_groups(frags, _TASK_ROWS, counts)
        ray = ray_init(None)
        shared = ray.put((rec, params, read, emb, texts))
        calls = [(lake.table_uri, ds.version, changed.files.ds.version, lake.storage_options, fids, shared) for fids in tasks]
        judged = (j for part in ray_task_map(judge_fragments_task, calls, retries=2, window=task_window(ray)) for j in part)
    else:
        judged = (_judge_fragment(ds, changed.files.ds, frag, rec, params, read, emb, texts, lake.storage_options)
                  for frag in frags)
    for fid, written, digest, rows_judged, rows_kept, by_reason in judged:
        changed.add_written(fid, written)
        digests[fid] = digest
        for r, c in by_reason.items():
            dropped[r] = dropped.get(r, 0) + c
        n, kept = n + rows_judged, kept + rows_kept
        bar.update(rows_judged)
    bar.close()
    written_count, version = commit_decisions(lake, changed, sources=prov["source_columns"], read_version=ds.version)
    return written_count, version, n, kept, digests, dropped


_TASK_ROWS = 1 << 20  # rows of fragments one Ray task of curate decides


def _judge_fragment(ds: "lance.LanceDataset", out: "lance.LanceDataset", frag: "lance.LanceFragment", rec: Recipe,
                    params: list[dict[str, Any]], read: set[str], emb: str | None, texts: ZeroShotTexts,
                    storage_options: dict | None) -> tuple[int, Any, str, int, int, dict[str, int]]:
    """One fragment of ``ds`` decided, its file written to ``out`` (the version with keep declared)
    when its decisions changed: (fragment id, the file or None, digest, rows, kept, drops by reason)."""
    tbl, df = _fragment_frame(ds, frag, read, emb, texts)
    dec = _decide(df, rec, params, cuts=False)
    new = {"keep": pa.array(dec.alive, pa.bool_()), "drop_reason": pa.array(dec.reason, pa.string())}
    _, written = columns.changed_file(out, tbl, new, storage_options)
    return frag.fragment_id, written, _digest(new["keep"], new["drop_reason"]), len(df), int(dec.alive.sum()), dec.dropped


def judge_fragments_task(uri: str, read_version: int, write_version: int, storage_options: dict | None,
                         fids: list[int], shared: tuple) -> list[tuple]:
    """A Ray task of ``curate(engine="ray")``: :func:`_judge_fragment` for each of ``fids``."""
    import lance

    ds = lance.dataset(uri, version=read_version, storage_options=storage_options)
    out = lance.dataset(uri, version=write_version, storage_options=storage_options)
    rec, params, read, emb, texts = shared
    return [_judge_fragment(ds, out, ds.get_fragment(fid), rec, params, read, emb, texts, storage_options) for fid in fids]


def _read_columns(ds: "lance.LanceDataset", rec: Recipe, emb: str | None) -> set[str]:
    """The columns the steps read (and ``id``, and the embedding's score)."""
    return {"id"} | _reads(rec, ds.schema.names) | ({embedding_columns(emb)["score"]} if emb else set())


def _judged(ds: "lance.LanceDataset", read: set[str]) -> list["lance.LanceFragment"]:
    """The fragments whose inputs are all filled: the rows a run judges (the others, appended since
    their signals were computed, stay undecided)."""
    late = _unfilled(ds, read - set(PAIRS_SCHEMA.names) - {"id", "review_verdict"})  # unreviewed is not unfilled
    return [f for f in ds.get_fragments() if f.fragment_id not in late]


def _judge_by_fragment(ds: "lance.LanceDataset", rec: Recipe, emb: str | None, emb_prov: dict | None,
                       check: Callable[[set[str]], None] | None = None
                       ) -> Callable[[], Iterator[tuple[pd.DataFrame, Decisions]]]:
    """The recipe on the rows of ``ds`` it can judge, a fragment at a time, writing nothing: the
    steps fitted on every judged row, then a function returning a fresh iterator of (fragment
    frame, its decisions with cuts). ``check`` sees the columns to read first."""
    read = _read_columns(ds, rec, emb)
    if check is not None:
        check(read)
    frags = _judged(ds, read)
    params = _fit(rec, emb_prov, _scan(frags, emb))
    texts = _zero_shot_texts(ds, emb, _zero_shots(rec)) if emb is not None else []

    def judge() -> Iterator[tuple[pd.DataFrame, Decisions]]:
        for frag in frags:
            _, df = _fragment_frame(ds, frag, read, emb, texts)
            yield df, _decide(df, rec, params)

    return judge


def _feature_words(lake: "Store", name: str) -> str:
    """How to add feature ``name``: the command on the CLI, the Lake method for Python and a pipeline."""
    if speaker() == "cli":
        return f"lakecurate feature add {lake.shell} {name} --udf ..."
    return f"lake.add_feature({name!r}, FUNCTION)"


def _missing_for_dry_run(lake: "Store", ds: "lance.LanceDataset", needs: set[str], read: set[str],
                         emb: str | None) -> None:
    """A dry run computes nothing: inputs the lake lacks are named with the command that makes them
    (dedup's with the recipe's embedding where the lake has several: without, it was refused)."""
    from lakecurate.names import embedding_prefixes

    which = f" --embedding {emb}" if emb is not None and len(embedding_prefixes(ds)) > 1 else ""
    on = lakecurate_on(lake)
    commands = {CAPTION: f"{on} signals {lake.shell}", IMAGE: f"{on} signals {lake.shell}",
                DEDUP: f"{on} dedup {lake.shell}{which}", TEMPLATES: f"{on} dedup {lake.shell} --method minhash",
                FACES: f"{on} signals {lake.shell} --faces"}
    missing = sorted(c for c in read if c not in ds.schema.names)
    if missing:
        run = sorted({commands[n] for n in needs if n in commands})
        raise LakeError(f"a dry run writes nothing, and lake '{lake.uri}' lacks {', '.join(missing)}; "
                        f"compute {'them' if len(missing) > 1 else 'it'} first"
                        + (f" ({'; '.join(run)})" if run else "") + f", or run curate without {given('--dry-run')}")


# The signal stages curate has computed (a stale one again: see ``Lake._produce``).
_PRODUCED = ("signals-caption", "signals-image", "signals-copy", "signals-redact", "signals-faces", "signals-text")


def _check_reviews_there(lake: "Store", ds: "lance.LanceDataset", rec: Recipe) -> None:
    """A recipe with a review step reads the reviewers' verdicts: where another writer dropped
    (or renamed) review_verdict while the lake still records the review columns, the step read
    every row as unreviewed, and a person's drop became keep under a new tag that status called
    current. Refused before anything is written, with what status says of the marks and its fix
    (``lakecurate drop LAKE review_verdict`` forgets them on purpose: then nothing is refused)."""
    if not any(s.filter == "review" for s in rec.steps) or "review_verdict" in ds.schema.names:
        return
    recorded = next((p for p in columns.node_records(ds).values() if p.get("stage") == "review"), None)
    if recorded is None:  # nobody has reviewed (or the marks were dropped with lakecurate drop)
        return
    st = gone_whole(lake, ds, Node("review", [str(c) for c in recorded[columns.DECLARED_KEY]], [], recorded))
    raise LakeError(f"recipe {rec.source} has a review step, and lake '{lake.uri}' has lost the marks it reads: "
                    f"{st.reasons[0]}; nothing decided. Bring them back first: {st.fix}")


def _check_inputs_current(lake: "Store", rec: Recipe, read: set[str], needs: set[str] = frozenset(), *,
                          dry_run: bool = False, code: Mapping[str, dict[str, Any]] | None = None) -> None:
    """What the recipe reads must be current: a decision made from stale values would pass for
    current (curate decided on the old groups of a re-made embedding and tagged it). The signals
    it has computed are computed again where stale (their producer does); a stale embedding,
    dedup group or user feature is refused with the commands that redo it, in order, before
    anything is written. ``needs``: dedup is not refused where curate has it run again (rows without
    groups: rows added since, also while curate runs). A dry run computes nothing, so a stale
    signal is refused too; ``code`` (:func:`lakecurate.graph.states`): signals another lakecurate
    computed differently are stale (a dry run read them as they were, against new thresholds)."""
    ds = lake.dataset()
    again = set(_PRODUCED)
    if any(need in needs and (col not in ds.schema.names or columns.fragments_to_fill(ds, col))
           for need, col in ((DEDUP, "dup_keep"), (TEMPLATES, "dup_minhash_group"))):
        again.add("dedup")
    stale = [s for s in not_current(lake, ds, read, states(lake, ds, code=code)) if blocks(s)]
    left = [s for s in stale if s.node.stage not in again or (dry_run and s.state == "stale")]
    if left:
        st = left[0]
        cols = ", ".join(st.node.columns[:3]) + (", ..." if len(st.node.columns) > 3 else "")
        fixes = list(dict.fromkeys(s.fix for s in stale))  # (pipeline order: a stale signal's first)
        raise LakeError(f"recipe {rec.source} reads {cols} ({st.node.stage}), which is {st.state}: {st.reasons[0]}; "
                        f"re-run {'it' if len(fixes) == 1 else 'these'} first: {'; then '.join(fixes)}")


def _run_conditions(lake: "Store", ds: "lance.LanceDataset", rec: Recipe) -> None:
    """Run each sql step's condition over every row of ``ds`` (a count: its columns are read, no
    row is kept). Planning it (:func:`_check_steps`) does not find what fails on values: a division
    by zero, a cast of text that is no number."""
    for k, step in rec.numbered():
        names = ds.schema.names
        if step.filter != "sql" or set(where_columns(step.params["where"], _NEEDS_BY_COLUMN)) - set(names):
            continue  # (a column still to be computed: the dry run says so, a run computes it first)
        try:
            ds.count_rows(filter=step.params["where"])
        except (OSError, ValueError) as exc:
            raise LakeError(f"recipe {rec.source}, step {k} (sql): where = {step.params['where']!r} fails on the rows "
                            f"of lake '{lake.uri}' ({str(exc).splitlines()[0][:200]}); nothing was written") from None


def curate(lake: "Store", recipe: str | Path | Mapping[str, Any], *, progress: bool | None = None,
           produce: Produce | None = None, dry_run: bool = False,
           overrides: Mapping[str, Any] | None = None, engine: str = "local",
           code: Mapping[str, dict[str, Any]] | None = None) -> CurateReport:
    """Apply a recipe: compute missing signals, write ``keep``/``drop_reason``, tag the version.

    Every decision is made on one version of the lake; rows appended meanwhile keep a null ``keep``
    (not kept) and are the next run's work. The tag names exactly the version this run committed,
    checked to hold this recipe's provenance and decisions (a concurrent curate makes it redo).

    **Memory**: decided and written a fragment at a time (one fragment's columns in memory), all
    changed fragments in one commit. Steps that compare a row with every other are fitted first
    by streaming their column: alignment's ``min_percentile`` (exactly numpy's percentile, in a few
    passes over the score column: :func:`lakecurate.stream.nanpercentile`) and caption_template's
    group sizes (an 8-byte hash a distinct group). The dry run and the report's cut views still
    judge the whole lake in one frame (they show rows from anywhere).

    ``dry_run``: decide on the latest version and report each step's drops, examples, the rows
    either side of each cut and kept rows at other cuts (``report.steps``), writing nothing (no
    signal is computed: a missing one is an error naming its command). ``overrides``: parameters
    for this run, ``{"alignment.min_percentile": 20}`` (see :func:`load_recipe`). ``code``: what
    this lakecurate computes the stages with (:func:`lakecurate.graph.code_now`; the ``Lake``
    facade passes it): a dry run refuses signals computed by another, as a run's signals stage does.

    ``engine="ray"``: the signals and dedup the recipe needs are computed on Ray (each stage's
    own Ray engine), and the decisions are made by Ray tasks (fragments of ~1M rows a task), each
    writing its fragments' files; the fit and the one commit are made here. They equal the local
    engine's.

    Example::

        report = lake.curate("recipes/basic.toml")
        report.dropped                      # {'ingest_error': 3, 'caption_length': 12, ...}
        lake.dataset(report.tag).to_table(columns=["key"], filter="keep").to_pandas()
        lake.curate("basic", dry_run=True, overrides={"alignment.min_percentile": 20}).steps
    """
    t0 = time.perf_counter()
    check_engine(engine)
    rec = load_recipe(recipe, overrides)
    report = CurateReport(lake=lake.uri, recipe=rec.name, recipe_hash=rec.hash, overrides=rec.overrides, dry_run=dry_run)
    prefix = tag_prefix(lake, rec)
    needs = _needs(rec)
    ds = lake.dataset()
    check_has_rows(lake, ds)  # (a tag of a curated set of 0 of 0 rows, without a warning, was made)
    _check_steps(lake, ds, rec)
    _check_reviews_there(lake, ds, rec)
    done = None if dry_run else _already_done(lake, rec, prefix)
    if done is not None:  # same recipe, nothing changed since
        tag, ds = done
        by = Counter(ds.to_table(columns=["drop_reason"]).column(0).to_pylist())
        report.kept = by.pop(None, 0)
        report.rows = report.kept + sum(by.values())
        report.dropped = {s.reason: by.get(s.reason, 0) for s in rec.steps}
        report.tag, report.version, report.nothing_to_do = tag, ds.version, True
        return report.finished(t0)

    emb, emb_prov = _embedding(lake, rec) if EMBEDDING in needs or (DEDUP in needs and rec.embedding) else (None, None)
    if EMBEDDING in needs:
        _check_embedded(lake, emb, emb_prov, rec)  # before anything is written
    _check_inputs_current(lake, rec, _read_columns(ds, rec, emb), needs, dry_run=dry_run, code=code)
    if dry_run:
        _run_conditions(lake, ds, rec)
        judge = _judge_by_fragment(ds, rec, emb, emb_prov, check=lambda read: _missing_for_dry_run(lake, ds, needs, read, emb))
        report.steps, report.rows, report.kept, report.dropped = explain_by_fragment(judge, rec)
        _attach(ds, report.steps)
        report.version = ds.version
        report.unjudged = ds.count_rows() - report.rows
        return report.finished(t0)
    report.computed = _compute_inputs(lake, rec, needs, emb, progress, produce, engine)
    _check_inputs_current(lake, rec, _read_columns(lake.dataset(), rec, emb), needs)  # (what dedup grouped from)
    fields = [pa.field("keep", pa.bool_()), pa.field("drop_reason", pa.string())]
    problem = None
    for attempt in range(ATTEMPTS):
        if attempt:  # another curate interleaved: let it finish, then decide again on a fresh version
            time.sleep(random.uniform(0.1, 0.5) * attempt)
            report.computed += [c for c in _compute_inputs(lake, rec, needs, emb, progress, produce, engine)
                                if c not in report.computed]
        ds = lake.dataset()  # this round's decisions are all made on this one version
        read = _read_columns(ds, rec, emb)
        sources = read | ({embedding_columns(emb)["image"]} if emb and _zero_shots(rec) else set())
        # a review step depends on the verdicts even before the first one exists: one makes it stale
        sources |= {"review_verdict"} if any(st.filter == "review" for st in rec.steps) else set()
        frags = _judged(ds, read)
        params = _fit(rec, emb_prov, _scan(frags, emb))  # what a row is compared with: every judged row
        texts = _zero_shot_texts(ds, emb, _zero_shots(rec)) if emb is not None else []

        prov = columns.provenance("curate", {"recipe": rec.canonical(), "hash": rec.hash, "source": rec.source,
                                             "step_versions": step_versions(rec)},
                                  sorted(sources - {"id"}), ds.version)
        # keep/drop_reason are the lake's *current* curation: another recipe replaces them (metadata
        # only), while each recipe's result stays reachable through its tag.
        pinned = columns.field_provenance(ds.schema.field("keep")) if "keep" in ds.schema.names else None
        _run_conditions(lake, ds, rec)  # a condition that fails on some row fails here, before keep is replaced
        replaced = _declare(lake, fields, prov)  # (also when one of them was dropped outside lakecurate)
        ours = bool(pinned) and pinned.get("config_hash") == prov["config_hash"] and not replaced  # else: rewrite all
        try:
            written, version, n, kept, digests, report.dropped = _decide_by_fragment(
                lake, ds, frags, rec, params, read | ({"keep", "drop_reason"} if ours else set()), emb, texts,
                prov, progress, engine)
        except (KeyError, OSError, ValueError, columns.ColumnsDropped) as exc:
            if not columns.config_changed(lake, "keep", prov) and "keep" in lake.dataset().schema.names:
                raise LakeError(f"recipe {rec.source} could not decide the rows of lake '{lake.uri}': "
                                f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}") from exc
            # another curate dropped keep/drop_reason to declare its own recipe's: decide again
            problem = "another curate replaced keep/drop_reason while this one wrote"
            continue
        report.fragments_written += written
        version = version if version is not None else ds.version  # nothing changed: the read version is ours
        problem = _disagreement(lake, version, prov, digests)
        if problem is None:
            break
    else:
        raise LakeError(f"another curate kept changing keep/drop_reason of lake '{lake.uri}' while recipe "
                        f"{rec.name} ran ({problem}); run curate again when it is done")
    report.version, report.tag = version, _tag(lake, f"{prefix}{version}", version)
    report.unjudged = lake.dataset(version).count_rows(filter="keep IS NULL")  # arrived during the run
    report.rows, report.kept = n, kept
    return report.finished(t0)
