"""``lakecurate run LAKE pipeline.toml``: one file lists the stages and their options; the run does
only what is missing or stale, in dependency order, like ``make``.

A pipeline file has one table per step, in any order; the steps always run in this order::

    ingest -> embed -> dedup -> curate -> cluster -> rebalance -> sequence -> export -> report

Example (``pipeline.toml``; relative paths are relative to the file, ``{lake}`` is the lake's path)::

    [ingest]
    sources = ["photos/"]          # any `lakecurate ingest` option too: kind, image_dir, ...
    [embed]
    model = "offline"
    [curate]
    recipe = "basic"               # a shipped recipe name or a TOML path
    [cluster]
    k = 8
    [rebalance]
    target = 0.5
    [export]
    dest = "{lake}-shards"
    format = "webdataset"

Whether a step must run is read from the lake itself, never from side files: a stage whose columns
are missing, whose provenance holds another config than the file asks for, or that the stage graph
(:mod:`lakecurate.graph`) finds stale or incomplete runs; a current one is skipped. Ingest always
looks (it adds only pairs it has not seen). Export and report run when their output is missing or
older than the lake's latest version. So a second run of an unchanged file writes nothing, and
changing a recipe threshold re-runs curate and what depends on it (rebalance, sequence, export),
not embed. Every option of every step is checked before the first step runs.

Like make's prerequisites, a producer a step reads that is not current (an embedding, dedup's
groups, the concepts) is brought up to date first even where the file lists no step of its own,
with the settings the lake records (the graph's fix as ``lakecurate status`` prints it): a file
with [embed] and [curate] whose recipe reads dedup's groups regroups after a caption fixed in
place. The report lists it as a step, saying why.
"""

from __future__ import annotations

import inspect
import json
import numbers
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lakecurate import graph, options, runner
from lakecurate.columns import field_provenance
from lakecurate.errors import LakeError
from lakecurate.names import DECISIONS, decided, default_view, embedding_columns

# The steps run through a ``lakecurate.lake.Lake`` (its stage methods pass producers to the stages
# that ask for columns); it is typed loosely here because the facade imports this module.
Lake = Any

STEPS = ("ingest", "embed", "dedup", "curate", "cluster", "rebalance", "sequence", "export", "report")
SHIPPED = Path(__file__).parent / "pipelines"
# Options the runner or the facade owns (they pass them themselves: curate's code, what this
# lakecurate computes the stages with), so a file may not set them.
_OWN = {"lake", "progress", "produce", "version", "options", "code"}
# Options that make a step write nothing (or only part of what it must), so that every run of the
# file reports it ran (its stage found it stale) and nothing changes, or that make every run do it
# all again: refused, with what to use instead.
_NOTHING_WRITTEN = {
    "curate": {"dry_run": "a dry run decides and writes nothing, so every run of the file would run it again; "
                          "see what a recipe drops with `lakecurate curate LAKE RECIPE --dry-run`, and what a run would "
                          "do with `lakecurate run LAKE FILE --dry-run`"},
    "embed": {"max_fragments": "a run embeds every fragment (with max_fragments each run embeds only part, or "
                               "none, and the steps after it read an incomplete embedding); embed in parts with "
                               "Lake.embed(max_fragments=N), then run the file",
              "recompute": "with it every run of the file embeds every row again; embed again once with "
                           "`lakecurate embed LAKE --model MODEL --recompute`, then run the file"},
}
_PATHS = {"ingest": ("sources", "root", "image_dir"), "export": ("dest",), "report": ("out",), "curate": ("recipe",),
          "embed": ("checkpoint",)}


@dataclass
class StepResult:
    step: str
    action: str  # "ran" | "skipped"
    why: str
    seconds: float = 0.0
    # the lake's versions committed while this step ran: its own, and another writer's that landed meanwhile
    # (Lance's commit records no writer to tell them apart; `lakecurate log` says what each one changed)
    versions: list[int] = field(default_factory=list)
    result: Any = None  # the stage's own report (as a dict)


@dataclass
class RunReport:
    lake: str
    pipeline: str
    version_before: int
    version_after: int
    steps: list[StepResult] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ran(self) -> list[str]:
        return [s.step for s in self.steps if s.action == "ran"]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ran": self.ran}


@dataclass
class Pipeline:
    name: str
    source: str
    steps: dict[str, dict[str, Any]]


def _stage_functions() -> dict[str, Callable[..., Any]]:
    from lakecurate import concepts, curate, dedup, embed, export, ingest, report

    return {"ingest": ingest.ingest, "embed": embed.embed, "dedup": dedup.dedup, "curate": curate.curate,
            "cluster": concepts.cluster, "rebalance": concepts.rebalance, "sequence": concepts.sequence,
            "export": export.export, "report": report.report}


@options.speaking("pipeline")  # an option is named by its key in the file (batch_size), not by a CLI flag
def load_pipeline(spec: str | os.PathLike | Mapping[str, Any], *, lake_uri: str = "",
                  overrides: Mapping[str, Mapping[str, Any]] | None = None) -> Pipeline:
    """Read and check a pipeline: a TOML path, a shipped name (``demo``) or a dict. Paths in it are
    made absolute (relative to the file; ``{lake}`` is the lake's path). ``overrides`` replace
    options per step (how ``lakecurate demo --source`` changes the shipped file)."""
    if not isinstance(spec, (str, os.PathLike, Mapping)):
        raise LakeError(f"a pipeline is a TOML file, a shipped name (demo) or a dict, not {spec!r}")
    if isinstance(spec, Mapping):
        raw, source, base = dict(spec), "<dict>", Path.cwd()
    else:
        path = Path(spec)
        if not path.is_file() and (SHIPPED / f"{spec}.toml").is_file():
            path = SHIPPED / f"{spec}.toml"
        if not path.is_file():
            shipped = ", ".join(sorted(p.stem for p in SHIPPED.glob("*.toml")))
            raise LakeError(f"pipeline '{spec}' is not a file (shipped pipelines: {shipped})")
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            import tomli as tomllib
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise LakeError(f"pipeline {path}: not valid TOML ({exc})") from None
        except OSError as exc:
            raise LakeError(f"pipeline {path}: cannot be read ({exc.strerror or exc})") from None
        source, base = str(path), path.resolve().parent
    name = raw.pop("name", Path(source).stem)
    if not isinstance(name, str) or not name.strip():  # (a table was stringified into the report)
        raise LakeError(f"pipeline {source}: name = {name!r} must be text, such as name = \"{Path(source).stem}\"")
    unknown = sorted(set(raw) - set(STEPS))
    if unknown:
        raise LakeError(f"pipeline {source}: unknown step(s) {', '.join(unknown)}; steps are: {', '.join(STEPS)}")
    steps: dict[str, dict[str, Any]] = {}
    for step in STEPS:
        if step not in raw and step not in (overrides or {}):
            continue
        opts = raw.get(step, {})
        if not isinstance(opts, dict):
            raise LakeError(f"pipeline {source}: [{step}] must be a table of options, got {type(opts).__name__}")
        opts = {**opts, **((overrides or {}).get(step) or {})}
        steps[step] = _check_step(source, step, opts, base, lake_uri)
    if not steps:
        raise LakeError(f"pipeline {source} has no steps; add tables such as [ingest], [embed], [curate]")
    return Pipeline(name, source, steps)


def _check_step(source: str, step: str, opts: dict[str, Any], base: Path, lake_uri: str) -> dict[str, Any]:
    """Unknown keys and the options that can be checked without the lake, refused with the file and step."""
    fn = _stage_functions()[step]
    params = options.parameters(fn, own=_OWN) or []  # (the same list Lake's methods check their options by)
    valid = (set(params) - {"source"}) | {"sources"} if step == "ingest" else set(params)
    unknown = sorted(set(opts) - valid)
    where = f"pipeline {source}, [{step}]"
    if unknown:
        raise LakeError(f"{where}: unknown option(s) {', '.join(unknown)}; valid: {', '.join(sorted(valid))}")
    _check_types(where, fn, opts)
    # numpy's scalars as Python's (np.False_ is not False: "recompute" read as set; TOML and the records are JSON)
    opts = {k: v.item() if isinstance(v, np.generic) else v for k, v in opts.items()}
    for key, why in _NOTHING_WRITTEN.get(step, {}).items():
        if opts.get(key) is not None and opts[key] is not False:  # (max_fragments = 0: nothing embedded)
            raise LakeError(f"{where}: {key} = {json.dumps(opts[key])} is not an option of a pipeline: {why}")
    opts = dict(opts)
    for key in _PATHS.get(step, ()):
        if key in opts and opts[key] is not None and not isinstance(opts[key], Mapping):  # (a recipe may be a dict)
            if step in ("export", "report") and isinstance(opts[key], str):
                unknown = sorted(set(re.findall(r"\{[^{}]*\}", opts[key])) - {"{lake}"})
                if unknown:  # "{lakes}/x" made a folder named {lakes}
                    raise LakeError(f"{where}: {key} = {opts[key]!r} names {', '.join(unknown)}; the one placeholder "
                                    "is {lake} (the lake's path)")
            opts[key] = _path(opts[key], base, lake_uri, keep_names=(step == "curate"))
    try:
        _check_values(step, opts)
    except LakeError as exc:
        raise LakeError(f"{where}: {exc}") from None
    return opts


# A TOML value's Python types for the annotations of the stage functions' options ("EncoderSpec"
# and the like: none from a file); an option whose annotation names anything else is left to its stage.
# (a pipeline given as a dict from Python takes numpy's numbers and bools, as the Lake methods do)
_TOML_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,), "Path": (str,), "os.PathLike": (str,), "None": (type(None),), "bool": (bool, np.bool_),
    "int": (numbers.Integral,), "float": (numbers.Real,), "Sequence[str]": (list, tuple), "Mapping[str, Any]": (dict,),
    "dict[str, float]": (dict,), "EncoderSpec": (),
}
_TOML_WORDS = {str: "text", numbers.Integral: "a whole number", numbers.Real: "a number", bool: "true or false",
               list: "a list", dict: "a table"}


def _check_types(where: str, fn: Callable[..., Any], opts: dict[str, Any]) -> None:
    """Each option's TOML type against its stage function's annotation (a model of 5 was a
    TypeError traceback; a dest of 5 exported to a folder named "5")."""
    params = inspect.signature(fn).parameters
    for key, value in opts.items():
        if key not in params:
            continue
        parts = [t.strip() for t in str(params[key].annotation).strip("'\"").split("|")]
        if any(t not in _TOML_TYPES for t in parts):
            continue
        ok = tuple(c for t in parts for c in _TOML_TYPES[t])
        whole_float = numbers.Integral in ok and isinstance(value, float) and value.is_integer()  # 1e4 rows, as the CLI takes it
        if (isinstance(value, (bool, np.bool_)) and bool not in ok) or not (isinstance(value, ok) or whole_float):
            words = dict.fromkeys(_TOML_WORDS[c] for c in ok if c in _TOML_WORDS)
            raise LakeError(f"{where}: {key} = {value!r} must be {' or '.join(words)}")


def _path(value: Any, base: Path, lake_uri: str, *, keep_names: bool = False) -> Any:
    if isinstance(value, list):
        return [_path(v, base, lake_uri, keep_names=keep_names) for v in value]
    text = str(value).replace("{lake}", lake_uri)
    if "://" in text or os.path.isabs(text):
        return text
    if keep_names and not text.endswith(".toml"):  # a shipped recipe by name
        return text
    return str((base / text).resolve())


@options.speaking("pipeline")
def check_against_lake(lake: "Lake", pipe: "Pipeline", exists: bool = True) -> None:
    """What only the lake can say, checked before the first step: a column a step reads that
    neither the lake (``exists``; else the columns ingest makes) nor a step before it makes (a
    curriculum's score, a where's column, export's caption were refused after the steps before had
    committed), an export into the lake, a recipe that cannot tell which of several embeddings to
    score. A step that needs what no step before it makes (an embedding, the concepts), a recipe
    step naming a column no one makes, a caption column embed cannot score and an export into a
    folder that is not an earlier export are refused as their stages refuse them, but first."""
    from lakecurate.options import overlaps
    from lakecurate.schema import PAIRS_SCHEMA

    ds = lake.dataset() if exists else None
    schema = ds.schema if ds is not None else PAIRS_SCHEMA
    have = set(schema.names)

    def refuse(step: str, what: str) -> None:
        raise LakeError(f"pipeline {pipe.source}, [{step}]: {what}")

    if not exists and "ingest" in pipe.steps:  # (`lakecurate run` creates the lake next: refused first, as
        _check_sources(lake, pipe)            # `lakecurate ingest` refuses, not after an empty lake was made)

    for step, opts in pipe.steps.items():
        lower = {c.lower(): c for c in have}
        if step == "sequence" and opts.get("mode") == "curriculum" and isinstance(opts.get("score"), str):
            col = opts["score"].lstrip("-")
            if col not in have and not col.startswith("dup_"):
                refuse(step, f"score {opts['score']!r} is not a column of lake '{lake.uri}' and no step before it makes "
                             "one; name a number column (a score, a signal)")
        if isinstance(opts.get("where"), str):
            unknown = [c for c in _where_names(opts["where"]) if c.lower() not in lower]
            if unknown:
                refuse(step, f"where {opts['where']!r} names {unknown[0]}, which is not a column of lake '{lake.uri}' "
                             "and no step before it makes it")
        if isinstance(opts.get("embedding"), str) and embedding_columns(opts["embedding"])["image"] not in have:
            refuse(step, f"embedding {opts['embedding']!r}: lake '{lake.uri}' has no such embedding and no step "
                         "before it makes it (embed it first, or name one it has)")
        if step == "export":
            mix = opts.get("caption_mix")
            wanted = [opts.get("caption", "caption")] + (list(mix) if isinstance(mix, dict) else [])
            missing = [c for c in wanted if isinstance(c, str) and c not in have]
            if missing:
                refuse(step, f"caption column {missing[0]!r} is not a column of lake '{lake.uri}' and no step before "
                             "it makes it")
            if isinstance(opts.get("dest"), str) and overlaps(opts["dest"], lake.uri):
                refuse(step, f"dest {opts['dest']!r} is inside lake '{lake.uri}' (or holds it); choose a destination "
                             "outside the lake folder")
            if isinstance(opts.get("dest"), str):  # a folder holding other files: refused as the stage refuses it
                from lakecurate.export import _check_dest

                try:  # (as the run passes it: overwrite replaces an earlier export, never anything else)
                    _check_dest(lake, opts["dest"], opts.get("format", "webdataset"), True)
                except LakeError as exc:
                    refuse(step, str(exc))
        if step == "embed" and opts.get("caption_col", "caption") != "caption":
            _check_caption_embed(lake, pipe, opts, schema, have)
        prefixes = sorted(c[: -len("_score")] for c in have if c.endswith("_score") and f"{c[: -len('_score')]}_image" in have)
        if step in ("dedup", "cluster") and len(prefixes) > 1 and not opts.get("embedding"):
            refuse(step, f"lake '{lake.uri}' will have several embeddings ({', '.join(prefixes)}); name the one "
                         f"{step} {'ranks members by' if step == 'dedup' else 'clusters'}: embedding = \"{prefixes[0]}\"")
        need = _embedding_need(step, opts) if not prefixes else None
        if need:  # (each stage refused it when it came, after the steps before it had committed)
            refuse(step, f"lake '{lake.uri}' has no embedding and no step before it makes one; add an [embed] step, "
                         f"such as model = \"offline\" ({need})")
        if step == "rebalance" and "concept" not in have:
            refuse(step, f"lake '{lake.uri}' has no concepts and no step before it makes them; add a [cluster] step, "
                         "such as k = 8 (rebalance budgets rows by concept)")
        if step == "curate":
            _check_embedding_named(lake, pipe, opts, prefixes)
            _check_recipe_steps(lake, pipe, opts, ds, have - set(schema.names))
        have |= _step_columns(step, opts)


def _embedding_need(step: str, opts: dict[str, Any]) -> str | None:
    """Why ``step`` needs an embedding, in its stage's words; None where it needs none."""
    if step == "dedup":
        from lakecurate.dedup import embedding_need

        defaults = _defaults("dedup")
        return embedding_need(_dedup_methods(opts), opts.get("phash_search", defaults["phash_search"]),
                              opts.get("copy_search", defaults["copy_search"]))
    if step == "cluster":
        return "concepts cluster the image embeddings"
    if step == "curate":
        from lakecurate.curate import EMBEDDING, _needs, embedding_need, load_recipe

        rec = load_recipe(opts["recipe"], opts.get("overrides"))
        return embedding_need(rec) if EMBEDDING in _needs(rec) else None
    return None


def _check_caption_embed(lake: "Lake", pipe: "Pipeline", opts: dict[str, Any], schema: Any, have: set[str]) -> None:
    """[embed] caption_col: a text column of the lake (no step makes one), scored against the image
    embedding the lake has of this model (this step embeds no images), as embed checks them."""
    from lakecurate.embed import check_caption_col
    from lakecurate.encoders import resolve

    try:
        check_caption_col(lake.uri, schema, opts["caption_col"])
    except LakeError as exc:
        raise LakeError(f"pipeline {pipe.source}, [embed]: {exc}") from None
    spec = resolve(opts["model"], opts.get("pretrained"), opts.get("checkpoint"), opts.get("name"))
    if embedding_columns(spec.prefix)["image"] not in have:
        raise LakeError(f"pipeline {pipe.source}, [embed]: scoring {opts['caption_col']} needs the {spec.prefix} image "
                        f"embedding of every row, and lake '{lake.uri}' has none; embed the images first (lakecurate "
                        f"embed {lake.shell} --model {opts['model']}), then run the file")


def _check_recipe_steps(lake: "Lake", pipe: "Pipeline", opts: dict[str, Any], ds: Any, later: set[str]) -> None:
    """The recipe's generic steps (``column``, ``sql``) as curate checks them, on the lake (a lake
    not made yet: an empty one with the columns ingest makes); a step reading a column a step
    before curate makes (``later``) is checked when curate runs. A column no one makes was refused
    after ingest and embed had committed."""
    import tempfile

    import lance

    from lakecurate.curate import _check_steps, load_recipe
    from lakecurate.schema import PAIRS_SCHEMA

    rec = load_recipe(opts["recipe"], opts.get("overrides"))
    if not any(s.filter in ("column", "sql") for s in rec.steps):
        return
    try:
        if ds is not None:
            _check_steps(lake, ds, rec, later)
            return
        with tempfile.TemporaryDirectory(prefix="lakecurate-plan-") as tmp:
            _check_steps(lake, lance.write_dataset(PAIRS_SCHEMA.empty_table(), f"{tmp}/plan.lance"), rec, later)
    except LakeError as exc:
        raise LakeError(f"pipeline {pipe.source}, [curate]: {exc}") from None


def _check_sources(lake: "Lake", pipe: "Pipeline") -> None:
    """Each [ingest] source as ``lakecurate ingest`` checks it before it creates a lake: not the lake
    or inside it, and readable as its kind (a manifest's columns found)."""
    from lakecurate.ingest import open_source, refuse_source_in_lake

    opts = pipe.steps["ingest"]
    for src in opts["sources"]:
        try:
            refuse_source_in_lake(lake.uri, src)
            open_source(src, opts.get("kind"), **{k: opts.get(k) for k in ("root", "image_col", "caption_col", "key_col",
                                                                             "image_dir")})
        except LakeError as exc:
            raise LakeError(f"pipeline {pipe.source}, [ingest]: {exc}") from None


def _where_names(where: str) -> list[str]:
    """The column names a where condition reads (as the SQL parser sees them)."""
    from lakecurate.sqlcheck import condition_columns

    return condition_columns(where)  # (none for text it cannot parse: the stage's own check words that refusal)


def _check_embedding_named(lake: "Lake", pipe: "Pipeline", opts: dict[str, Any], prefixes: list[str]) -> None:
    """A recipe that scores an embedding, with several on the lake and none named: curate refuses it
    (after the steps before it had committed), so the file is refused first."""
    from lakecurate.curate import EMBEDDING, _needs, load_recipe

    if len(prefixes) < 2:
        return
    rec = load_recipe(opts["recipe"], opts.get("overrides"))
    if EMBEDDING in _needs(rec) and not rec.embedding:
        raise LakeError(f"pipeline {pipe.source}, [curate]: recipe {opts['recipe']} scores an embedding and lake "
                        f"'{lake.uri}' will have several ({', '.join(prefixes)}); name one: overrides = {{embedding = "
                        f"\"{prefixes[0]}\"}} in [curate]")


def _step_columns(step: str, opts: dict[str, Any]) -> set[str]:
    """The columns a step of a file writes (as its stage declares them)."""
    from lakecurate import concepts
    from lakecurate.curate import SIGNAL_TYPES
    from lakecurate.encoders import resolve

    decided = {c for d in DECISIONS if d.stage == step for c in (d.column, d.reason) if c}
    if step == "embed":
        spec = resolve(opts["model"], opts.get("pretrained"), opts.get("checkpoint"), opts.get("name"))
        if opts.get("caption_col", "caption") != "caption":  # another caption scored: its columns alone
            from lakecurate.embed import caption_columns

            return set(caption_columns(spec.prefix, opts["caption_col"]).values())
        return set(embedding_columns(spec.prefix).values())
    if step == "curate":  # and the signals its recipe asks for
        return decided | set(SIGNAL_TYPES)
    if step == "dedup":
        from lakecurate.dedup import group_columns

        return decided | {c for m in _dedup_methods(opts) for c in group_columns(m)}
    fields = {"cluster": concepts.CONCEPT_FIELDS, "rebalance": concepts.REBALANCE_FIELDS,
              "sequence": concepts.SEQUENCE_FIELDS}.get(step, [])
    return decided | {f.name for f in fields}


def _check_values(step: str, opts: dict[str, Any]) -> None:
    """Values a stage would only check once it runs (after earlier steps wrote): checked first."""
    from lakecurate import options

    if step == "ingest":
        sources = opts.get("sources")
        if not sources or not isinstance(sources, list) or not all(isinstance(s, str) for s in sources):
            raise LakeError("sources must be a list of folders, manifests or shard patterns")
        if opts.get("kind") not in (None, "folder", "manifest", "webdataset"):
            raise LakeError(f"unknown kind {opts['kind']!r}: use folder, manifest or webdataset")
        # a missing one was refused after the sources before it were ingested
        missing = [s for s in sources if "://" not in s and not any(c in s for c in "{*?[") and not os.path.exists(s)]
        if missing:
            raise LakeError(f"source {missing[0]} does not exist" + (f" (nor {len(missing) - 1} more)" if len(missing) > 1 else ""))
    elif step == "embed":
        from lakecurate.encoders import resolve

        if "model" not in opts:
            raise LakeError("say which model: model = \"offline\" (or an open_clip name)")
        resolve(opts["model"], opts.get("pretrained"), opts.get("checkpoint"), opts.get("name"))
        from lakecurate.embed import check_options

        check_options(batch_size=opts.get("batch_size", 1), workers=opts.get("workers"),
                      precision=opts.get("precision", "fp32"), device=opts.get("device", "auto"),
                      decode=opts.get("decode", "cpu"), tokenize=opts.get("tokenize", "auto"))
    elif step == "dedup":
        from lakecurate.dedup import DEFAULT_METHODS, METHODS, THRESHOLDS, check_thresholds, recomputed_methods

        methods = opts.get("methods", list(DEFAULT_METHODS))
        bad = [m for m in (methods if isinstance(methods, list) else [methods]) if m not in (*METHODS, "all")]
        if bad:
            raise LakeError(f"unknown dedup method(s) {', '.join(map(str, bad))}; choose from {', '.join(METHODS)}")
        if "recompute" in opts:
            recomputed_methods(_dedup_methods(opts), opts["recompute"])
        for key in ("phash_distance", "confirm_distance", "copy_distance"):  # bits of a 64-bit hash
            options.whole(key, opts.get(key, 0), 0, high=64)
        check_thresholds({k: v for k, v in opts.items() if k in THRESHOLDS})
    elif step == "curate":
        from lakecurate.curate import load_recipe

        if "recipe" not in opts:
            raise LakeError("say which recipe: recipe = \"basic\" (or a TOML path)")
        load_recipe(opts["recipe"], opts.get("overrides"))  # an override naming no step is refused here
    elif step == "cluster":
        if opts.get("k") is not None:
            options.whole("k", opts["k"], 2)
    elif step == "rebalance":
        options.target(opts.get("target", 0.5))
        options.positive("temperature", opts.get("temperature", 1.0))
        options.whole("max_repeats", opts.get("max_repeats", 1))
        if opts.get("rule", "far") not in ("far", "random"):
            raise LakeError(f"unknown keep rule {opts.get('rule')!r}; choose far or random")
    elif step == "sequence":
        options.whole("shard_size", opts.get("shard_size", 1))
        if opts.get("mode", "interleave") not in ("random", "curriculum", "interleave"):
            raise LakeError(f"unknown order {opts.get('mode')!r}; choose random, curriculum or interleave")
        if opts.get("mode") == "curriculum" and not opts.get("score"):  # (refused after curate had committed)
            raise LakeError("mode = \"curriculum\" orders by a score: add score = \"COLUMN\" (\"-COLUMN\": "
                            "highest first)")
    elif step == "export":
        from lakecurate.export import check_options

        if "dest" not in opts:
            raise LakeError("say where: dest = \"{lake}-shards\"")
        check_options(opts.get("format", "webdataset"), engine=opts.get("engine", "local"),
                      shard_size=opts.get("shard_size"), image_ext=opts.get("image_ext"), keys=True)
        if "://" not in str(opts["dest"]):
            options.writable("export destination", opts["dest"])
    elif step == "report":
        if "out" not in opts:
            raise LakeError("say where: out = \"{lake}/report.html\"")
        if "://" in str(opts["out"]):  # a file:// URI is a local file, as the step takes it
            opts["out"] = options.canonical_uri(str(opts["out"]))
        if "://" in str(opts["out"]):  # (refused by the step itself, after the steps before it had committed)
            raise LakeError(f"out = {opts['out']!r}: the report is a local HTML file; write it to a local path "
                            "and copy it to object storage")
        options.writable("report", opts["out"])  # (refused after the steps before it had committed)
        target = Path(os.path.realpath(opts["out"]))
        overwrite = options.flag("overwrite", opts.get("overwrite", False))
        if not overwrite and target.is_file():
            from lakecurate.report import report_meta

            if report_meta(target) is None:  # (the step refuses it, after the steps before it had committed)
                raise LakeError(f"out = {opts['out']!r} exists and is not a lakecurate report; choose another file, "
                                "or add overwrite = true to replace it")
        from lakecurate.report import check_out

        check_out(opts["out"], overwrite)  # the rest as the step checks it (a folder was refused only then)
        options.whole("sample_rows", opts.get("sample_rows", 1), 1)
        for key in ("thumb_px", "max_groups", "per_group", "n_low", "per_reason", "n_concepts"):
            options.whole(key, opts.get(key, 0), 0)
    if "engine" in opts:
        from lakecurate.engines import check_engine

        check_engine(opts["engine"])


# ----------------------------------------------------------------------------- is a step current?
def _prov_config(ds: Any, column: str) -> dict[str, Any] | None:
    from lakecurate.columns import field_provenance

    if column not in ds.schema.names:
        return None
    return (field_provenance(ds.schema.field(column), strict=False) or {}).get("config") or {}


def _stale_why(st: graph.NodeState | None) -> str | None:
    if st is None:
        return "its columns are missing"
    if st.state != "current":
        return f"{st.state}: {st.reasons[0]}" if st.reasons else st.state
    return None


def _dedup_methods(opts: Mapping[str, Any]) -> list[str]:
    from lakecurate.dedup import DEFAULT_METHODS, METHODS

    methods = opts.get("methods", list(DEFAULT_METHODS))
    return list(METHODS) if "all" in methods else list(methods)


def _dedup_changed(ds: Any, methods: Sequence[str], opts: Mapping[str, Any]) -> dict[str, str]:
    """{method: the first of its [dedup] options that asks otherwise than its group column's
    provenance records}: each option the method's config holds (``names.DEDUP_OPTIONS``, its flips
    and the embedding it was made from), compared with the config dedup would record for the
    file's options (``dedup.method_configs``: an option the file leaves out asks its default, the
    cosines and the semantic threshold the default of the embedding's encoder family)."""
    from lakecurate.columns import field_provenance
    from lakecurate.dedup import group_columns, method_configs
    from lakecurate.names import DEDUP_OPTIONS, dedup_keyword

    takes = set(inspect.signature(method_configs).parameters) - {"methods", "emb", "emb_prov"}
    settings = {k: v for k, v in {**_defaults("dedup"), **opts}.items() if k in takes}
    node_of = {n.columns[0]: n for n in graph.nodes(ds) if n.stage == "dedup" and n.columns}
    changed: dict[str, str] = {}
    for m in methods:
        node = node_of.get(group_columns(m)[0])
        if node is None:
            continue
        cfg = node.prov.get("config") or {}
        emb = opts.get("embedding") or cfg.get("embedding")
        score = embedding_columns(emb)["score"] if emb else None
        emb_prov = field_provenance(ds.schema.field(score), strict=False) if score in ds.schema.names else None
        configs = method_configs(methods, emb if emb_prov else None, emb_prov or None, **settings)
        if m not in configs:  # (its embedding is not on the lake: the run says so)
            continue
        want = configs[m]
        names = {key: dedup_keyword(flag) for key, flag in DEDUP_OPTIONS.get(m, {}).items()}
        for key in [*names, "flips", "embedding"]:
            if (key in cfg or key in want) and cfg.get(key) != want.get(key):
                changed.setdefault(m, names.get(key, key))
    return changed


def _dedup_decision_changed(ds: Any, methods: Sequence[str], opts: Mapping[str, Any]) -> str | None:
    """The [dedup] option that asks another decision than ``dup_keep``'s provenance records: the
    methods it joins (keep_from, among the groups the lake will have) or the score it ranks by."""
    from lakecurate.dedup import DEFAULT_KEEP_FROM, METHODS, group_columns

    cfg = _prov_config(ds, "dup_keep")
    if cfg is None:
        return None
    present = set(methods) | {m for m in METHODS if group_columns(m)[0] in ds.schema.names}
    keep_from = opts.get("keep_from")
    keep_from = list(DEFAULT_KEEP_FROM) if keep_from is None else ([keep_from] if isinstance(keep_from, str) else list(keep_from))
    want = [m for m in keep_from if m in present]  # (as the stage joins them)
    if list(cfg.get("keep_from") or []) != want:
        return "keep_from"
    if opts.get("embedding") and cfg.get("rank_by") != embedding_columns(opts["embedding"])["score"]:
        return "embedding"
    return None


def _defaults(step: str) -> dict[str, Any]:
    """The step's stage function's option defaults (what a file that leaves an option out asks)."""
    return {p.name: p.default for p in inspect.signature(_stage_functions()[step]).parameters.values()
            if p.default is not inspect.Parameter.empty}


def _setting_changed(step: str, recorded: Mapping[str, Any], opts: Mapping[str, Any]) -> str | None:
    """The first setting an export or report recorded that the step's options (or their defaults)
    ask otherwise now, as a reason; None when all agree."""
    defaults = _defaults(step)
    for key, was in recorded.items():
        want = json.loads(json.dumps(opts.get(key, defaults.get(key)), default=str))
        if want != was:
            return f"{key} changed ({was} -> {want})"
    return None


def why_run(lake: "Lake", step: str, opts: dict[str, Any]) -> str | None:
    """Why ``step`` must run with ``opts`` on the lake as it is now; None when it is current."""
    if step == "ingest":
        return "ingest adds the pairs it has not seen"
    ds = lake.dataset()
    by_column = {c: s for s in graph.states(lake, ds) for c in s.node.columns}
    if step == "embed":
        from lakecurate.encoders import resolve

        spec = resolve(opts["model"], opts.get("pretrained"), opts.get("checkpoint"), opts.get("name"))
        score = embedding_columns(spec.prefix)["score"]
        if opts.get("caption_col", "caption") != "caption":  # another caption scored: its own score column
            from lakecurate.embed import caption_columns

            score = caption_columns(spec.prefix, opts["caption_col"])["score"]
        cfg = _prov_config(ds, score)
        if cfg is not None:  # the same columns asked with another config (precision, weights...): embed refuses it
            from lakecurate.encoders import comparable_config

            want = comparable_config({**spec.config(), "precision": opts.get("precision", "fp32")}, cfg)
            cfg = comparable_config(cfg, want)  # (a weights file by its name: installs differ in where it lies)
            changed = [k for k, v in want.items() if k in cfg and v != cfg[k]]
            if changed:
                return f"{', '.join(changed)} changed ({', '.join(f'{cfg[k]} -> {want[k]}' for k in changed)})"
        return _stale_why(by_column.get(score))
    if step == "dedup":
        from lakecurate.dedup import group_columns

        methods = _dedup_methods(opts)
        missing = [m for m in methods if group_columns(m)[0] not in ds.schema.names]
        if missing:
            return f"no {', '.join(missing)} groups yet"
        changed = list(dict.fromkeys(_dedup_changed(ds, methods, opts).values()))
        decision = _dedup_decision_changed(ds, methods, opts)
        if decision and decision not in changed:
            changed.append(decision)
        if changed:  # (a method's setting: that method regrouped; keep_from alone: decided again)
            return f"{', '.join(changed)} changed"
        why = [_stale_why(by_column.get(c)) for c in ["dup_keep", *(group_columns(m)[0] for m in methods)]]
        return next((w for w in why if w), None)
    if step == "curate":
        from lakecurate.curate import load_recipe

        rec = load_recipe(opts["recipe"], opts.get("overrides"))  # the run applies them: so must the comparison
        cfg = _prov_config(ds, "keep")
        if cfg is None:
            return "no keep column yet"
        if cfg.get("hash") != rec.hash:
            return f"the recipe changed (lake has {cfg.get('hash')}, file gives {rec.hash})"
        return _stale_why(by_column.get("keep")) or (
            f"{n} rows have no decision" if (n := ds.count_rows(filter="keep IS NULL")) else None)
    if step == "cluster":
        cfg = _prov_config(ds, "concept")
        if cfg is None:
            return "no concepts yet"
        for key in ("k", "seed", "embedding"):
            if key in opts and opts[key] is not None and cfg.get(key) != opts[key]:
                return f"{key} changed ({cfg.get(key)} -> {opts[key]})"
        return _stale_why(by_column.get("concept"))
    if step in ("rebalance", "sequence"):
        col = "rebalance_keep" if step == "rebalance" else "seq_order"
        cfg = _prov_config(ds, col)
        if cfg is None:
            return f"no {col} yet"
        defaults = _defaults(step)
        for key in ("target", "temperature", "rule", "max_repeats", "seed", "mode", "score", "shard_size"):
            if key in cfg:
                want = opts.get(key, defaults.get(key))
                if want != cfg[key]:
                    return f"{key} changed ({cfg[key]} -> {want})"
        # (a where the file leaves out is the stage's default view, which the lake's may not be)
        want = opts.get("where") if opts.get("where") is not None else (
            ("keep" if decided(ds.schema, "keep") else None) if step == "rebalance" else default_view(ds.schema))
        if want != cfg.get("where"):
            return f"where changed ({cfg.get('where')} -> {want})"
        return _stale_why(by_column.get(col))
    if step == "export":
        from lakecurate.export import manifest_path

        fmt = opts.get("format", "webdataset")
        manifest = manifest_path(Path(opts["dest"]), fmt)
        if not manifest.is_file():
            return "not exported yet"
        try:
            old = json.loads(manifest.read_text())
        except (OSError, ValueError):
            return "its manifest cannot be read"
        branch = lake.branch or "main"
        if old.get("source_lake") != lake.uri or old.get("branch", "main") != branch:
            return f"the export is of lake {old.get('source_lake')} ({old.get('branch', 'main')}), not of this one ({branch})"
        if old.get("version") != ds.version:
            return f"the lake is at version {ds.version}, the export is of version {old.get('version')}"
        if old.get("format") != fmt:
            return "format changed"
        if not isinstance(settings := old.get("settings"), dict):
            return "its manifest does not record the export's settings (an older lakecurate wrote it)"
        return _setting_changed(step, settings, opts)
    if step == "report":
        from lakecurate.report import report_meta

        out = Path(opts["out"])
        if not out.is_file():
            return "no report yet"
        meta = report_meta(out)
        if meta is None:
            return "it does not record what it shows (an older lakecurate wrote it)"
        branch = lake.branch or "main"
        if meta.get("lake") != lake.uri or meta.get("branch") != branch:
            return f"it reports lake {meta.get('lake')} ({meta.get('branch')}), not this one ({branch})"
        if meta.get("version") != ds.version:
            return f"the report is of version {meta.get('version')}, the lake is at {ds.version}"
        return _setting_changed(step, meta.get("settings") or {}, opts)
    raise ValueError(step)


# ----------------------------------------------------------------------------- run
@options.speaking("pipeline")
def run(lake: "Lake", spec: str | os.PathLike | Mapping[str, Any] | Pipeline, *, dry_run: bool = False,
        progress: bool | None = None, overrides: Mapping[str, Mapping[str, Any]] | None = None,
        on_step: Callable[[StepResult], None] | None = None) -> RunReport:
    """Run the steps of a pipeline that are missing or stale, in order; see the module doc.
    ``dry_run`` only says what would run (and why)."""
    t0 = time.perf_counter()
    pipe = spec if isinstance(spec, Pipeline) else load_pipeline(spec, lake_uri=lake.uri, overrides=overrides)
    exists = lake.exists()
    if not exists and not dry_run:
        raise LakeError(f"no lake at '{lake.uri}'; create it with Lake.create (lakecurate run creates it when the "
                        f"pipeline has an [ingest] step)")
    check_against_lake(lake, pipe, exists)
    before = lake.version if exists else 0
    rep = RunReport(lake=lake.uri, pipeline=pipe.source, version_before=before, version_after=before)
    fns = {name: getattr(lake, name) for name in STEPS}
    implied: set[str] = set()  # the steps the file does not list that this run has run (or would)
    mine: dict[str, tuple[str, dict[str, Any]]] = {}  # decision column -> (step of this run, its provenance)
    for step, opts in pipe.steps.items():
        for up, up_opts, up_why in _unlisted(lake, pipe, step, implied, dry_run) if exists else []:
            implied.add(up)
            _still_mine(lake, pipe, mine, up)
            up_res = _execute(lake, pipe, fns, up, up_opts, up_why, dry_run, progress)
            _wrote(lake, up_res, mine)  # (read at once: the decision as the step left it)
            _record(rep, up_res, on_step)
        why = why_run(lake, step, opts) if exists else "no lake yet"
        _still_mine(lake, pipe, mine, step)
        res = _execute(lake, pipe, fns, step, opts, why, dry_run, progress)
        if dry_run and why is None and any(r.action == "would run" for r in rep.steps):
            # what an earlier step changes (the rows an ingest adds, say) may make this one stale: a dry
            # run cannot know without doing that step, so it says so (it said "current", then all ran)
            res.why = "current now; may run after the steps before it"
        _wrote(lake, res, mine)
        _record(rep, res, on_step)
    _still_mine(lake, pipe, mine, None)
    rep.version_after = lake.version if exists else 0
    rep.seconds = time.perf_counter() - t0
    return rep


# The decisions a step may write through the producers it runs (curate regroups dedup's dup_keep
# where its groups are stale: Lake._produce): this run's, not another writer's.
_PRODUCES = {"curate": ("dedup",)}


def _wrote(lake: "Lake", res: StepResult, mine: dict[str, tuple[str, dict[str, Any]]]) -> None:
    """Note the decisions (keep/drop columns: dup_keep, keep, rebalance_keep) a step of this run
    wrote, with their provenance as the lake holds them right after it."""
    if res.action != "ran":
        return
    schema = lake.dataset().schema
    for d in DECISIONS:
        if d.stage in (res.step, *_PRODUCES.get(res.step, ())) and decided(schema, d.column):
            mine[d.column] = (res.step, field_provenance(schema.field(d.column), strict=False) or {})


def _still_mine(lake: "Lake", pipe: Pipeline, mine: dict[str, tuple[str, dict[str, Any]]], step: str | None) -> None:
    """Stop before ``step`` (None: at the end of the run) where another writer replaced a decision
    an earlier step of this run wrote: a curate of another recipe that landed between this run's
    curate and its cluster, rebalance and sequence had them built on that recipe's keep, and the run
    reported its own. It stops rather than decides again: deciding again would silently replace
    the other person's decision (and theirs, run again, this one's); on a shared lake that is a
    choice for the people, so the run says what happened and how to go on."""
    if not mine:
        return
    schema = lake.dataset().schema
    for column, (by, prov) in mine.items():
        now = (field_provenance(schema.field(column), strict=False) or {}) if column in schema.names else {}
        if now.get("config_hash") == prov.get("config_hash"):
            continue
        theirs = (f"with {_what(now)}" if now else "dropped it")
        where = (f"before [{step}], which would build on it" if step is not None
                 else "as its last steps ran: what they wrote may be built on the other decision")
        raise LakeError(f"pipeline {pipe.source}: another writer replaced {column} after this run's [{by}] wrote it "
                        f"({_what(prov)}; now {theirs}); stopped {where}. What this run committed is kept (version "
                        f"{lake.version}); run it again to decide again, or leave the lake at the other decision")


def _what(prov: dict[str, Any]) -> str:
    """A decision's provenance in a few words: its stage, recipe name (curate) and config hash."""
    recipe = ((prov.get("config") or {}).get("recipe") or {})
    name = recipe.get("name") if isinstance(recipe, dict) else None
    return f"{prov.get('stage', '?')}{' ' + repr(name) if name else ''}, config {str(prov.get('config_hash', '?'))[:8]}"


def _record(rep: RunReport, res: StepResult, on_step: Callable[[StepResult], None] | None) -> None:
    rep.steps.append(res)
    if on_step is not None:
        on_step(res)


# The producers a run brings up to date where a step of the file reads them and the file lists no
# step of theirs (graph stage -> pipeline step), and the columns each step reads them through.
_IMPLIED = {"embed": "embed", "dedup": "dedup", "concepts": "cluster"}
_READS = {"curate": ("keep",), "cluster": ("concept",), "rebalance": ("rebalance_keep",), "sequence": ("seq_order",)}


def _unlisted(lake: "Lake", pipe: Pipeline, step: str, done: set[str], dry_run: bool) -> list[tuple[str, dict[str, Any], str]]:
    """The producers ``step`` reads that are not current and that the file lists no step of, in
    pipeline order, as (step, options, why): run as the lake records them (the graph's fix, as
    keyword arguments), like make's prerequisites. Without them a file with [embed] and [curate]
    but no [dedup] stopped at curate, every run, once a caption was fixed in place. A dry run also
    names the producers only behind (their inputs would run first)."""
    ds = lake.dataset()
    reads = [c for c in _READS.get(step, ()) if c in ds.schema.names]
    if not reads:
        return []
    # (a dedup method only behind is run too: it computes the hashes it reads where new rows have none,
    # and a dedup of the stale methods alone refused to decide from its groups, every run)
    bad = [s for s in graph.not_current(lake, ds, reads, kinds=("stale", "dropped", "incomplete", "behind"))
           if (up := _IMPLIED.get(s.node.stage)) is not None and up not in pipe.steps and up not in done
           and STEPS.index(up) < STEPS.index(step) and (s.state != "behind" or dry_run or up == "dedup")]
    out: list[tuple[str, dict[str, Any], str]] = []
    for up in sorted({_IMPLIED[s.node.stage] for s in bad}, key=STEPS.index):
        mine = [s for s in bad if _IMPLIED[s.node.stage] == up]
        s = mine[0]
        why = (f"not in the file, and {step} reads its {s.state} {', '.join(s.node.columns[:2])}"
               f"{', ...' if len(s.node.columns) > 2 else ''} ({s.reasons[0] if s.reasons else s.state}); "
               f"run as the lake records it")
        cfg = s.node.prov.get("config") or {}
        if up == "embed":
            opts = graph.embed_args(cfg.get("prefix") or s.node.columns[0].rsplit("_", 1)[0], s.node.prov)
        elif up == "dedup":
            final = next((n for n in graph.nodes(ds) if n.stage == "dedup" and "dup_keep" in n.columns), None)
            opts = graph.dedup_args([m.node for m in mine], final, ds)
        else:  # the concepts: their k, embedding and seed
            opts = {"k": cfg.get("k"), "seed": cfg.get("seed", 0), **({"embedding": cfg["embedding"]} if cfg.get("embedding") else {})}
        out.append((up, opts, why))
    return out


def _execute(lake: "Lake", pipe: Pipeline, fns: dict[str, Callable[..., Any]], step: str, opts: dict[str, Any],
             why: str | None, dry_run: bool, progress: bool | None) -> StepResult:
    """Run ``step`` with ``opts`` where ``why`` (a dry run: only say so); its result."""
    res = StepResult(step, "skipped" if why is None else ("would run" if dry_run else "ran"), why or "current")
    if why is not None and not dry_run:
        t = time.perf_counter()
        v = lake.version
        if step == "cluster" and why.split(" (")[0].endswith(" changed") and "recompute" not in opts:
            # the file now says another k, seed or embedding: replace the earlier concepts (the stage
            # alone refuses that without --recompute); they stay in the lake's versions
            opts = {**opts, "recompute": True}
        if step == "dedup" and why.endswith(" changed") and "recompute" not in opts:
            # a method's setting changed: regroup that method alone (recompute = true would join
            # every named method again, the semantic one hours at scale); keep_from alone: none
            opts = {**opts, "recompute": list(_dedup_changed(lake.dataset(), _dedup_methods(opts), opts))}
        try:
            with runner.waiting():  # a step's columns are the next steps' inputs: fragments another run
                out = _call(fns[step], step, opts, progress)  # computes now are waited for, not left
        except LakeError as exc:  # which step of which file failed (the steps before it stay committed)
            if not str(exc).startswith("pipeline "):
                where = f"[{step}]" if step in pipe.steps else f"{step} (not in the file: run as the lake records it)"
                exc.args = (f"pipeline {pipe.source}, {where}: {exc}", *exc.args[1:])
            raise
        res.seconds = time.perf_counter() - t
        res.result = out.to_dict() if hasattr(out, "to_dict") else out
        res.versions = sorted(h["version"] for h in lake.history(None, changes=False) if h["version"] > v)
        seen = ([r for r in res.result.get("sources", [res.result]) if isinstance(r, dict)]
                if step == "ingest" and isinstance(res.result, dict) else [])
        if step == "ingest" and res.versions and seen:  # what it did, not what it may do
            total = {k: sum(int(r.get(k) or 0) for r in seen) for k in ("written", "replaced", "updated")}
            new = total["written"] - total["replaced"] - total["updated"]
            res.why = ", ".join([f"{new} new pair{'' if new == 1 else 's'}"]
                                + ([f"{total['updated']} changed in the source rewritten"] if total["updated"] else [])
                                + ([f"{total['replaced']} error rows read again"] if total["replaced"] else []))
        if step == "ingest" and not res.versions:
            errors = sum(int(r.get("skipped_errors") or 0) for r in seen)
            # (plain ingest says so; the run said only "no new pairs", the broken files out of sight)
            res.action, res.why = "skipped", "no new pairs" + (
                f"; {errors} of those seen are error rows: set {options.given('--retry-errors')} in [ingest] to read them "
                "again (after fixing the cause)" if errors else "")
    return res


def _call(fn: Callable[..., Any], step: str, opts: dict[str, Any], progress: bool | None) -> Any:
    opts = dict(opts)
    if step in ("ingest", "embed", "dedup", "curate", "rebalance", "sequence"):
        opts.setdefault("progress", progress)
    if step == "ingest":
        reports = [fn(src, **{k: v for k, v in opts.items() if k != "sources"}) for src in opts["sources"]]
        if len(reports) == 1:
            return reports[0]
        each = [r.to_dict() if hasattr(r, "to_dict") else r for r in reports]
        # (each source's notes, for the run's line: a changed pair of the second source went unsaid)
        return {"sources": each, "warnings": [f"{d.get('source', '?')}: {w}" for d in each for w in d.get("warnings") or []]}
    if step == "export":
        return fn(opts.pop("dest"), opts.pop("format", "webdataset"), overwrite=opts.pop("overwrite", True), **opts)
    if step == "report":
        return fn(opts.pop("out"), **opts)
    first = {"embed": "model", "dedup": "methods", "curate": "recipe", "cluster": "k", "rebalance": "target",
             "sequence": "mode"}[step]
    if first in opts:
        return fn(opts.pop(first), **opts)
    return fn(**opts)
