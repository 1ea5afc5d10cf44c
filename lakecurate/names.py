"""The vocabulary: column names built in one place, and the registry of decision columns.

Ground floor (imports only ``errors`` and ``columns``' provenance reader). Every module that needs a
derived column's name asks here instead of formatting it:

>>> embedding_columns("offline")["score"]
'offline_score'
>>> [d.column for d in DECISIONS]
['dup_keep', 'keep', 'rebalance_keep']
>>> decision("keep").reason
'drop_reason'
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lakecurate.columns import field_provenance
from lakecurate.errors import LakeError
from lakecurate.options import given, words

if TYPE_CHECKING:
    import lance
    import pyarrow as pa

    from lakecurate.store import Store

# Recipes shipped with the package, usable by name (curate loads them; fix commands name them so).
RECIPES = Path(__file__).parent / "recipes"

# A stage that needs another stage's columns asks for them by the producer's name; the caller (the
# Lake facade or the pipeline) runs that producer. ``produce(stage, **options) -> rows computed``.
Produce = Callable[..., int]
# Producer stage -> one column it writes (filled means the stage is done for that fragment).
PRODUCERS = {"caption_signals": "cap_words", "image_signals": "phash", "copy_signals": "copy_hashes",
             "redact": "caption_redacted", "faces": "img_faces", "text": "img_text_share", "dedup": "dup_keep"}

# The architecture name of the tiny, randomly initialised test encoder (``--model tiny-random``):
# its embeddings and scores mean nothing (lakecurate.encoders builds it; stages and the graph test
# provenance against this name, never a substring).
TINY_RANDOM = "lakecurate-tiny-random-MEANINGLESS"
# The tiny, randomly initialised CoCa captioner (``--model tiny-random-coca``): meaningless captions, for tests.
TINY_COCA = "lakecurate-tiny-random-coca-MEANINGLESS"

EMBEDDING_PARTS = ("image", "text", "score", "error")

# The evaluation's metrics (``lakecurate evaluate``): retrieval recall both ways and swapped-caption AUROC
# and the proxy's default learning rate (why this value: lakecurate/evaluate.py)
EVAL_LR = 2e-4
EVAL_METRICS = ["i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10", "swapped_auroc"]


# Columns the built-in stages write under fixed names (and prefixes): a user feature may not take
# one, or a stage or a decision would read the user's values as its own (a feature named dup_keep
# was taken as the dedup result; one named cap_words blocked signals). Columns named by a prefix
# the user picks (embeddings, synthetic captions) are refused once they exist: their provenance
# names another stage. tests/test_features.py checks the signal stages' fields are all here.
BUILTIN_COLUMNS = frozenset({
    "keep", "drop_reason", "rebalance_keep", "sample_weight", "repeats", "concept", "concept_dist",
    "caption_redacted", "copy_hashes", "phash", "phash_flip",
    "cap_words", "cap_chars", "cap_filename", "cap_url", "cap_boilerplate", "cap_max_repeat", "cap_nonprintable",
    "cap_emails", "cap_phones", "cap_lang", "cap_lang_prob",
    "img_sharpness", "img_entropy", "img_colorfulness", "img_brightness", "img_contrast", "img_faces", "img_face_boxes",
    "img_face_scores",
    "img_text_share", "img_text_lines",
})
# Also every column of the embed stage's own encoder prefixes (offline_score, clip_vitb32_laion2b_image),
# reserved before an embed made them: a feature of that name broke the embed that came later.
BUILTIN_PREFIXES = ("dup_", "seq_", "review_", "offline_", "clip_")


# The dedup methods, in the order a run computes them (verify last: it skips pairs the others link),
# and those a run computes when none is named: dedup's and the CLI's --method help read them here.
DEDUP_METHODS = ("exact", "phash", "semantic", "caption", "minhash", "copy", "verify")
DEDUP_TEXT_METHODS = ("caption", "minhash")  # caption links: reported, not image duplicates
DEDUP_DEFAULT_METHODS = ("exact", "phash", "semantic", "copy")  # verify: opt-in (an embedding, ~3x the time)
# The way out of a signal column made with another config (signals has no --name to write beside it).
# A dedup method's provenance config key -> the `lakecurate dedup` option that sets it: what the CLI
# refuses for a method a run does not compute, and what graph's fix command writes back.
DEDUP_OPTIONS = {
    "phash": {"max_distance": "--phash-distance", "search": "--phash-search", "cosine": "--phash-cosine"},
    "copy": {"max_distance": "--copy-distance", "search": "--copy-search", "cosine": "--copy-cosine"},
    "semantic": {"threshold": "--semantic-threshold", "confirm_cosine": "--confirm-cosine",
                 "confirm_distance": "--confirm-distance"},
    "caption": {"threshold": "--caption-threshold"},
    "minhash": {"threshold": "--minhash-threshold"},
    "verify": {"neighbors": "--verify-neighbors", "min_cosine": "--verify-cosine", "min_inliers": "--verify-inliers"},
}


def dedup_keyword(flag: str) -> str:
    """The keyword of dedup (``Lake.dedup``, a pipeline's [dedup]) a :data:`DEDUP_OPTIONS` CLI flag
    is: ``--phash-distance`` -> ``phash_distance``."""
    return flag[2:].replace("-", "_")


_LANGID: list[Any] = []


def language_identifier() -> Any:
    """py3langid's language identifier (normalised probabilities), loaded once a process: what the
    caption signals name languages with and what a recipe's language step checks its codes
    against; None without the library (the signal is optional)."""
    if not _LANGID:
        try:
            from py3langid.langid import MODEL_DIR, MODEL_FILE, LanguageIdentifier

            _LANGID.append(LanguageIdentifier.from_modelpath(MODEL_DIR / MODEL_FILE, norm_probs=True))
        except ImportError:
            _LANGID.append(None)
    return _LANGID[0]


def signals_fix() -> str:
    """A signal stage's way out of a column made with another config, in the words of the interface speaking."""
    redo = words("`lakecurate signals LAKE --recompute` (and the same kind options)", "lake.signals(KINDS, recompute=True)")
    return f"its code or settings changed since it was computed; redo it with {redo}"


def builtin_column(name: str) -> bool:
    """Whether a built-in stage writes a column of this name (see :data:`BUILTIN_COLUMNS`)."""
    return name in BUILTIN_COLUMNS or name.startswith(BUILTIN_PREFIXES)


def embedding_columns(prefix: str) -> dict[str, str]:
    """The embed stage's columns for an encoder prefix: image/text embeddings, score, error."""
    return {k: f"{prefix}_{k}" for k in EMBEDDING_PARTS}


@dataclass(frozen=True)
class Decision:
    """A keep/drop column: the stage that writes it, its reason column, and what it means."""

    column: str
    reason: str | None
    stage: str
    doc: str


# In pipeline order: a later decision builds on the earlier ones (curate's filters read dup_keep;
# rebalance chooses among rows with keep).
DECISIONS = (
    Decision("dup_keep", "dup_reason", "dedup", "false for every member of a duplicate group but its best one"),
    Decision("keep", "drop_reason", "curate", "the recipe's filters (and dedup) passed"),
    Decision("rebalance_keep", None, "rebalance", "kept by concept rebalancing among the curated rows"),
)
# The decisions that define a curated view, latest first (dedup alone does not: curate reads it).
VIEW_DECISIONS = tuple(d.column for d in reversed(DECISIONS) if d.stage != "dedup")


def default_view(schema: "pa.Schema") -> str | None:
    """The lake's curated view as a SQL condition: the latest decision column present that its stage
    wrote (``rebalance_keep`` after rebalancing, else a recipe's ``keep``), or None before curation.
    A column of that name another writer added (Lance's ``add_columns``, no provenance) is not the
    lake's decision (:func:`foreign_decisions`). Whether it is current is
    :func:`lakecurate.graph.effective_view`'s question.

    >>> import pyarrow as pa
    >>> from lakecurate.columns import PROVENANCE_KEY
    >>> by = lambda stage: {PROVENANCE_KEY: '{"stage": "%s"}' % stage}
    >>> default_view(pa.schema([pa.field("keep", pa.bool_(), metadata=by("curate")),
    ...                         pa.field("rebalance_keep", pa.bool_(), metadata=by("rebalance"))]))
    'rebalance_keep'
    >>> default_view(pa.schema([pa.field("id", pa.string()), pa.field("keep", pa.bool_())])) is None
    True
    """
    return next((w for w in VIEW_DECISIONS if decided(schema, w)), None)


def foreign_decisions(schema: "pa.Schema") -> list[str]:
    """The decision columns of ``schema`` (``keep``, ``rebalance_keep``) that their stage did not write:
    another writer added a column of that name. Never the curated view (:func:`default_view`)."""
    return [w for w in VIEW_DECISIONS if w in schema.names and not decided(schema, w)]


def decided(schema: "pa.Schema", column: str) -> bool:
    """Whether ``column`` is in ``schema`` with its decision's stage's provenance."""
    if column not in schema.names:
        return False
    return (field_provenance(schema.field(column), strict=False) or {}).get("stage") == decision(column).stage


def decision(column: str) -> Decision:
    """The registry entry of a decision column."""
    for d in DECISIONS:
        if d.column == column:
            return d
    raise KeyError(column)


def embedding_prefixes(ds: "lance.LanceDataset") -> dict[str, dict[str, Any]]:
    """Prefixes of the embed stage's columns in this table, with their provenance."""
    out = {}
    for field in ds.schema:
        prov = field_provenance(field)
        if prov and prov["stage"] == "embed" and field.name.endswith("_score"):
            out[field.name[: -len("_score")]] = prov
    return out


def pick_embedding(lake: "Store", ds: "lance.LanceDataset", name: str | None = None, *, need: str | None = "",
                   option: str | None = None) -> tuple[str | None, dict[str, Any] | None]:
    """The embed columns' prefix to use and its provenance: ``name`` when given, else the lake's only one.

    Several embeddings and no ``name`` is an error naming ``option`` (default: ``embedding``, as
    the interface speaking gives it). No embedding at all is an
    error saying what needs one (``need``), or (None, None) when ``need`` is None (optional).
    """
    found = embedding_prefixes(ds)
    if name is not None:
        if name not in found:
            raise LakeError(f"no embedding '{name}' in lake '{lake.uri}'; there are: {', '.join(found) or 'none'}"
                            + ("" if found else f"; run: lakecurate embed {lake.shell}"))
        return name, found[name]
    if len(found) > 1:
        raise LakeError(f"lake '{lake.uri}' has several embeddings ({', '.join(found)}); pass {option or given('--embedding', 'NAME')}")
    if found:
        name = next(iter(found))
        return name, found[name]
    if need is None:
        return None, None
    raise LakeError(f"lake '{lake.uri}' has no embedding columns; run: lakecurate embed {lake.shell}" + (f" ({need})" if need else ""))


def caption_choices(schema: "pa.Schema") -> list[str]:
    """The text columns of ``schema`` that ``--caption-col`` can score: ``caption``, a recaption
    column, another writer's text column; not the other columns ingest writes (id, key, source...),
    an ``_error`` column, nor a text column another lakecurate stage derived (a drop reason). What
    embed's and evaluate's ``--caption-col`` name when refused."""
    import pyarrow as pa

    from lakecurate.schema import PAIRS_SCHEMA

    others = set(PAIRS_SCHEMA.names) - {"caption"}
    out = []
    for f in schema:
        if not (pa.types.is_string(f.type) or pa.types.is_large_string(f.type)) or f.name in others or f.name.endswith("_error"):
            continue
        prov = field_provenance(f, strict=False)
        if prov is None or prov.get("stage") == "recaption":
            out.append(f.name)
    return out
