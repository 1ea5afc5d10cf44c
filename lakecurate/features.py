"""User-defined features: a Python function over a batch of columns becomes a column of the lake.

Example (``my_features.py``)::

    import pyarrow.compute as pc
    from lakecurate import feature

    @feature(inputs=["caption"], type="int32")
    def caption_chars(batch):
        return pc.utf8_length(batch["caption"])

then ``lakecurate feature add LAKE caption_chars --udf my_features:caption_chars`` (or
``lake.add_feature("caption_chars", caption_chars)``). The function gets an Arrow ``RecordBatch``
of its input columns (``image`` as bytes) and returns an array (one column, ``NAME``) or a dict /
table of arrays (several columns, ``NAME_<key>``). It runs as a stage on
:mod:`lakecurate.runner`, like the built-in stages: only the new column's bytes are written, one
commit per fragment, retried when another writer commits first, finished batches checkpointed; a
re-run fills only fragments that lack it (new rows, or a killed run's rest). Provenance records
the function's name, a hash of its source, its inputs and parameters, so a changed function is
refused until ``--recompute`` (or a new name) instead of mixing two versions in one column.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import json
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lakecurate import columns, graph, runner
from lakecurate.errors import LakeError, Terminated
from lakecurate.names import builtin_column
from lakecurate.options import given, speaker, spell, words
from lakecurate.sqlcheck import bare_name_problem

if TYPE_CHECKING:
    from lakecurate.store import Store

STAGE = "feature"
NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,120}$")


@dataclass
class FeatureReport:
    lake: str
    feature: str
    columns: list[str]
    inputs: list[str]
    engine: str
    fragments: int = 0
    rows: int = 0
    seconds: float = 0.0
    versions: list[int] = field(default_factory=list)
    rows_refreshed: int = 0  # of rows: rows of fragments computed again, their inputs rewritten since
    fragments_elsewhere: int = 0  # left to another run of this feature computing them now (runner.RunReport)
    elsewhere: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def feature(inputs: str | Sequence[str], type: Any = None) -> Callable[[Callable], Callable]:
    """Mark a function as a feature: its input columns (one name, or a list) and (optionally) its
    output type(s), so ``lakecurate feature add ... --udf module:function`` needs no more options."""
    def mark(fn: Callable) -> Callable:
        fn.lakecurate_inputs = _column_list(inputs)  # type: ignore[attr-defined]
        fn.lakecurate_type = type  # type: ignore[attr-defined]
        return fn

    return mark


def _column_list(inputs: str | Sequence[str]) -> list[str]:
    """One column name or several; a name alone is one column (as ``to_pandas`` takes it), not
    a sequence of one-letter names."""
    return [inputs] if isinstance(inputs, str) else list(inputs)


def _udf_file(mod_name: str) -> str | None:
    """The absolute path of a ``--udf`` spec's file (``path/file.py``); None for a module name."""
    return os.path.abspath(mod_name) if mod_name.endswith(".py") or os.sep in mod_name else None


def udf_spec(spec: str) -> str:
    """``spec`` as the provenance records it: a file by its absolute path (a fix command pasted in
    another directory found no ``myf.py``), a module name as given.

    >>> udf_spec("pkg.mod:fn"), udf_spec("/abs/myf.py:fn")
    ('pkg.mod:fn', '/abs/myf.py:fn')
    """
    mod_name, _, attr = spec.rpartition(":")
    path = _udf_file(mod_name)
    return f"{path}:{attr}" if path else spec


def load_udf(spec: str) -> Callable:
    """``module:function`` (importable, or from the working directory) or ``path/file.py:function``."""
    mod_name, sep, attr = spec.rpartition(":")
    if not sep or not mod_name or not attr:
        raise LakeError(f"{spell('--udf')} {spec!r} must look like module:function or path/to/file.py:function")
    try:
        path = _udf_file(mod_name)
        if path:
            if not os.path.isfile(path):
                raise LakeError(f"{spell('--udf')} {spec!r}: no file {path}")
            name = "lakecurate_udf_" + hashlib.blake2b(path.encode(), digest_size=4).hexdigest()  # engines.FILE_UDF_PREFIX
            mod_spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(mod_spec)  # type: ignore[arg-type]
            sys.modules[name] = module
            mod_spec.loader.exec_module(module)  # type: ignore[union-attr]
        else:
            if os.getcwd() not in sys.path:  # like `python -m`: a module in the working directory
                sys.path.insert(0, os.getcwd())
            module = importlib.import_module(mod_name)
    except LakeError:
        raise
    except (Exception, SystemExit) as exc:  # sys.exit() at import was lakecurate's silent exit with its code
        raise LakeError(f"{spell('--udf')} {spec!r}: cannot import {mod_name}: {type(exc).__name__}: {exc}") from None
    fn = module
    for part in attr.split("."):
        fn = getattr(fn, part, None)
        if fn is None:
            raise LakeError(f"{spell('--udf')} {spec!r}: {mod_name} has no {attr!r}")
    if not callable(fn):
        raise LakeError(f"{spell('--udf')} {spec!r}: {attr} is not a function")
    return fn  # type: ignore[return-value]


def parse_type(t: Any) -> pa.DataType:
    """A pyarrow type, or its name: int32, float32, string, bool, ..., or list<float16>[512]."""
    if isinstance(t, pa.DataType):
        return t
    text = str(t).strip()
    if text.startswith("list<") and "]" in text:  # fixed-size list, e.g. list<float32>[8]
        inner, sep, size = text[5:].rpartition(">[")
        if not sep or not size.endswith("]") or not size[:-1].isdigit() or int(size[:-1]) < 1:
            raise LakeError(f"unknown type {t!r}; a vector is list<TYPE>[N] with N >= 1, e.g. list<float32>[512]")
        return pa.list_(parse_type(inner), int(size[:-1]))
    try:
        return pa.type_for_alias(text)
    except ValueError:
        raise LakeError(f"unknown type {t!r}; use a pyarrow type name such as int32, float32, string, bool") from None


def type_name(t: pa.DataType) -> str:
    """``t`` as :func:`parse_type` reads it: float32 (Arrow says float), list<float32>[512]."""
    if pa.types.is_fixed_size_list(t):
        return f"list<{type_name(t.value_type)}>[{t.list_size}]"
    return {pa.float16(): "float16", pa.float32(): "float32", pa.float64(): "float64"}.get(t, str(t))


def source_hash(fn: Callable) -> str:
    """A hash of the function's source (its bytecode when the source is not available)."""
    target = getattr(fn, "__wrapped__", fn)
    try:
        text = inspect.getsource(target).encode()
    except (OSError, TypeError):
        code = getattr(target, "__code__", None)
        text = code.co_code + repr(code.co_consts).encode() if code is not None else repr(target).encode()
    return hashlib.sha256(text).hexdigest()[:16]


def udf_name(fn: Callable) -> str:
    return f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', type(fn).__name__)}"


class BatchUdf:
    """The user's function made uniform: batch -> table of the declared column names and types.
    A class (not a closure) so it pickles to Ray workers."""

    def __init__(self, fn: Callable, name: str, params: dict[str, Any], types: dict[str, pa.DataType] | None):
        self.fn, self.name, self.params, self.types = fn, name, params, types

    def raw(self, batch: pa.RecordBatch) -> dict[str, Any]:
        out = self.fn(batch, **self.params)
        if isinstance(out, (str, bytes)) or np.isscalar(out):  # a str became one row per character
            raise ValueError(f"the function returned one {type(out).__name__} ({str(out)[:40]!r}), not a value per "
                             f"row; return a list or array of {batch.num_rows} values (or a dict of them)")
        if isinstance(out, (pa.Table, pa.RecordBatch)):
            return {f"{self.name}_{k}": out.column(k) for k in out.column_names}
        if isinstance(out, dict):
            if not out:
                raise ValueError("the function returned an empty dict")
            return {f"{self.name}_{k}": v for k, v in out.items()}
        return {self.name: out}

    def __call__(self, batch: pa.RecordBatch) -> pa.Table:
        arrays = {}
        for col, values in self.raw(batch).items():
            want = self.types.get(col) if self.types else None
            arrays[col] = _to_arrow(values, want, col, self.name)
        return pa.table(arrays)


class TypeMismatch(LakeError):
    """A feature's function returned values of another kind than the type it declares (a number
    for a bool, a bool for a float, a number for text): storing them would convert them."""


def _kind(t: pa.DataType) -> Any:
    """What the values of type ``t`` are, for comparing a function's values with its declared type:
    "number" (any int, float or decimal: a cast between them refuses what it cannot keep), "bool",
    "text", "bytes", ..., ("list", kind of its items); None for an all-null array (fits any)."""
    if pa.types.is_null(t):
        return None
    if pa.types.is_dictionary(t):
        return _kind(t.value_type)
    if pa.types.is_boolean(t):
        return "bool"
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t):
        return "number"
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return "text"
    if (pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t)
            or pa.types.is_binary_view(t)):
        return "bytes"
    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        return "date/time"
    if pa.types.is_time(t):
        return "time of day"
    if pa.types.is_duration(t) or pa.types.is_interval(t):
        return "duration"
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t) or pa.types.is_list_view(t):
        return ("list", _kind(t.value_type))
    if pa.types.is_struct(t):
        return ("struct", tuple((f.name, _kind(f.type)) for f in t))
    return str(t)


def _fits(got: Any, want: Any) -> bool:
    if got is None:
        return True
    if isinstance(got, tuple) and isinstance(want, tuple) and got[0] == want[0] and len(got) == len(want):
        if got[0] == "list":
            return _fits(got[1], want[1])
        return len(got[1]) == len(want[1]) and all(g[0] == w[0] and _fits(g[1], w[1]) for g, w in zip(got[1], want[1]))
    return got == want


def _kind_name(kind: Any) -> str:
    if isinstance(kind, tuple):
        return f"list of {_kind_name(kind[1])}" if kind[0] == "list" else "struct"
    return {None: "null", "number": "a number", "bool": "a bool", "text": "text", "bytes": "bytes"}.get(kind, kind)


def _leaves(arr: pa.Array) -> pa.Array:
    while pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type) or pa.types.is_fixed_size_list(arr.type):
        arr = arr.flatten()
    return arr


def _to_arrow(values: Any, want: pa.DataType | None, col: str, feature: str = "") -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if isinstance(values, np.ndarray) and values.ndim == 2:  # a vector per row
        flat = pa.array(values.ravel())
        values = pa.FixedSizeListArray.from_arrays(flat, values.shape[1])
    if not isinstance(values, pa.Array):  # NaN from numpy means missing (from_pandas), not a number to store
        values = pa.array(values, from_pandas=True)
    arr = values
    if want is not None and arr.type != want:
        # A cast would convert what the function meant (lengths became True/False, bools 1.0, ints
        # "73"): only values of the declared kind are stored; between numbers the cast refuses loss.
        if not _fits(_kind(arr.type), _kind(want)):
            got, declared = type_name(arr.type), type_name(want)
            raise TypeMismatch(f"feature '{feature}' returns {got} for column '{col}', which it declares {declared} "
                               f"({_kind_name(_kind(arr.type))} is not {_kind_name(_kind(want))}); return {declared} "
                               f"values, or declare {got} (--type {got})")
        try:
            cast = arr.cast(want)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise ValueError(f"column {col}: cannot store {type_name(arr.type)} as {type_name(want)}: {exc}") from None
        before, after = _leaves(arr), _leaves(cast)
        if pa.types.is_floating(before.type) and pa.types.is_floating(after.type) \
                and pc.sum(pc.is_inf(after)).as_py() != pc.sum(pc.is_inf(before)).as_py():  # 1e300 as float32
            raise ValueError(f"column {col}: cannot store {type_name(arr.type)} as {type_name(want)}: "
                             f"a value is out of the range of {type_name(want)}")
        arr = cast
    return arr


def _types(fn: Callable, name: str, type: Any) -> dict[str, pa.DataType] | None:
    t = type if type is not None else getattr(fn, "lakecurate_type", None)
    if t is None:
        return None
    if isinstance(t, dict):
        return {f"{name}_{k}": parse_type(v) for k, v in t.items()}
    return {name: parse_type(t)}


def _param_words(key: str, value: Any) -> str:
    """A feature's parameter given ``value``, as the interface speaking writes it."""
    return words(f"--param {key}={json.dumps(value)}", f"params={{{key!r}: {value!r}}}")


def _text_params(fn: Callable, params: dict[str, Any]) -> str:
    """For a failure: the parameters given as text where the function's default is not text
    (``--param n=abc``: a --param value that is not JSON stays text), so the message names them."""
    try:
        signature = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        signature = {}
    notes, example = [], ""
    for key, value in params.items():
        p = signature.get(key)
        default = None if p is None or p.default is inspect.Parameter.empty else p.default
        if not isinstance(value, str) or isinstance(default, str):
            continue
        if default is None:
            notes.append(f"{key}={value!r} is text")
        else:
            notes.append(f"{key}={value!r} is text, not {type(default).__name__} like its default {default!r}")
            example = example or f": e.g. {_param_words(key, default)}"
    if not notes:
        return ""
    return (f"; {'parameters' if len(notes) > 1 else 'parameter'} {', '.join(notes)} "
            f"({'a --param value that is not JSON' if speaker() == 'cli' else 'a value given as text'} stays text{example})")


def _first_rows(lake: "Store", udf: BatchUdf, inputs: Sequence[str]) -> dict[str, pa.DataType] | None:
    """The function on the first rows, before anything is declared: its columns' names checked, and
    their types (as declared, each value cast to it; else as returned). None on an empty lake with
    declared types (nothing to try it on)."""
    ds = lake.dataset()
    sample = ds.to_table(columns=list(inputs), limit=16, blob_handling="all_binary") if ds.count_rows() else None
    if sample is None or sample.num_rows == 0:
        if udf.types:
            return None
        raise LakeError(f"cannot infer the type of feature '{udf.name}' on an empty lake; give its type ({given('--type', 'TYPE')})")
    try:
        out = udf(sample.combine_chunks().to_batches()[0])
    except (TypeMismatch, Terminated):
        raise
    except (Exception, SystemExit) as exc:
        raise LakeError(f"feature '{udf.name}' failed on the first rows of lake '{lake.uri}': {type(exc).__name__}: {exc}"
                        + _text_params(udf.fn, udf.params)) from exc
    if out.num_rows != sample.num_rows:  # found here, before its columns are declared (two versions, then)
        raise LakeError(f"feature '{udf.name}' returned {out.num_rows} values for the first {sample.num_rows} rows of "
                        f"lake '{lake.uri}'; return one value per row of the batch it is given")
    for col in out.column_names:
        if not NAME_RE.match(col) or col.startswith("_"):
            raise LakeError(f"feature '{udf.name}' returns a column named {col!r}, which is not a column name; "
                            "return keys of letters, digits and '_'")
    if udf.types and set(out.column_names) != set(udf.types):
        raise LakeError(f"feature '{udf.name}' returns columns {', '.join(out.column_names)}, but its type names "
                        f"{', '.join(udf.types)}; give one type for one array, a dict of types for a dict of arrays")
    if udf.types:
        return udf.types
    types = {}
    for f in out.schema:
        if pa.types.is_null(f.type):
            raise LakeError(f"feature column '{f.name}' is all null on the first rows; give its type ({given('--type', 'TYPE')})")
        types[f.name] = pa.list_(f.type.value_type, f.type.list_size) if pa.types.is_fixed_size_list(f.type) else f.type
    return types


def add_feature(
    lake: "Store",
    name: str,
    fn: Callable | str,
    *,
    inputs: str | Sequence[str] | None = None,
    type: Any = None,
    params: dict[str, Any] | None = None,
    engine: str = "local",
    batch_size: int = 4096,
    recompute: bool = False,
    progress: bool | None = None,
) -> FeatureReport:
    """Add (or complete) the feature column(s) ``name`` computed by ``fn`` from ``inputs``.

    Example::

        def caption_words(batch):
            return [len((c or "").split()) for c in batch["caption"].to_pylist()]

        lake.add_feature("caption_words", caption_words, inputs=["caption"], type="int32")
        lake.sql("SELECT caption_words, count(*) FROM pairs GROUP BY caption_words")
    """
    t0 = time.perf_counter()
    spec = fn if isinstance(fn, str) else None
    func = load_udf(fn) if isinstance(fn, str) else fn
    if not isinstance(name, str) or not NAME_RE.match(name) or name.startswith("_"):  # _rowid, _rowaddr: Lance's own
        raise LakeError(f"feature name {name!r} is not a valid column name; use letters, digits and '_', "
                        "starting with a letter")
    if name != name.lower():  # SQL folds unquoted names to lower case: SELECT Words FROM pairs found no column
        raise LakeError(f"feature name {name!r} has capitals, which SQL reads as {name.lower()!r} unless quoted; "
                        f"use {name.lower()!r}")
    inputs = list(dict.fromkeys(_column_list(inputs if inputs is not None else getattr(func, "lakecurate_inputs", None) or [])))
    if not inputs:
        raise LakeError(f"feature '{name}': say which columns it reads "
                        f"({'--input COL' if speaker() == 'cli' else 'inputs=[...]'}, or @feature(inputs=...))")
    ds = lake.dataset()
    missing = [c for c in inputs if c not in ds.schema.names]
    if missing:
        raise LakeError(f"feature '{name}' reads {missing}, which lake '{lake.uri}' does not have "
                        f"(columns: {', '.join(ds.schema.names)})")
    params = dict(params or {})
    try:  # they are part of the column's provenance (JSON): a numpy scalar was a TypeError traceback
        json.dumps(params)
    except (TypeError, ValueError) as exc:
        raise LakeError(f"feature '{name}': params must be JSON values (numbers, text, lists, dicts), "
                        f"e.g. float(x) for a numpy number: {exc}") from None
    udf = BatchUdf(func, name, params, _types(func, name, type))
    # Tried here on the first rows (its columns and types checked before anything is declared), but
    # on Ray only when its types must be inferred: it may need what only the workers have.
    types = (_first_rows(lake, udf, inputs) if engine != "ray" or not udf.types else None) or udf.types
    udf.types = types
    for col in types:  # `SELECT select FROM pairs`, `lake.count("null > 3")`: only quoted, so in no recipe or --where
        if col != col.lower():
            raise LakeError(f"feature '{name}' returns column '{col}', which has capitals: SQL reads it as "
                            f"{col.lower()!r} unless quoted; return lower-case keys")
        problem = bare_name_problem(col)
        if problem:
            raise LakeError(f"feature column '{col}' is a word SQL reserves ({problem}), so no query, recipe or "
                            f"--where could name it without quotes; pick another name, e.g. '{col}_value'")
    # The config (and so its hash) is what the column's values depend on: the function's source, not
    # the name it was imported by, so `--udf mod:fn` and lake.add_feature(name, fn) agree.
    config = {"feature": name, "source_sha256": source_hash(func), "inputs": inputs, "params": params,
              "types": {k: str(v) for k, v in types.items()}}
    fields = [pa.field(col, t) for col, t in types.items()]
    for f in fields:
        if f.name in ds.schema.names and columns.field_provenance(ds.schema.field(f.name)) is None:
            raise LakeError(f"column '{f.name}' is part of lake '{lake.uri}' itself; pick another feature name")
        other = (columns.field_provenance(ds.schema.field(f.name)) or {}).get("stage") if f.name in ds.schema.names else None
        if builtin_column(f.name) or other not in (None, STAGE):
            raise LakeError(f"column '{f.name}' is written by lakecurate's {other or 'built-in'} stage; a feature of that "
                            "name would stand in for it (its decisions would read your values): pick another name")
        owner = (columns.field_provenance(ds.schema.field(f.name)) or {}).get("config", {}).get("feature") \
            if other == STAGE else name
        if owner != name:  # feature g returning {"a": ...} wrote g_a; a feature named g_a replaced it
            raise LakeError(f"column '{f.name}' belongs to feature '{owner}'; pick another name "
                            f"(or drop that feature first: lakecurate feature drop {lake.shell} {owner})")
    # The feature's columns of an earlier run that this one does not write (one array then, a dict
    # now: feat, then feat_a and feat_b): two features of one name, listed twice and dropped together.
    fix = ("the function, its inputs or its parameters changed since; use another name, or "
           f"{given('--recompute')} to replace it")
    stale = [f.name for f in ds.schema if f.name not in types and (columns.field_provenance(f) or {}).get("stage") == STAGE
             and (columns.field_provenance(f).get("config") or {}).get("feature") == name]
    if stale and not recompute:
        old = columns.field_provenance(ds.schema.field(stale[0])).get("config") or {}
        raise LakeError(f"feature '{name}' in lake '{lake.uri}' (column{'s' if len(stale) > 1 else ''} {', '.join(stale)}) "
                        f"was made with another config ({columns.config_change(old, config)}); {fix}")
    if stale:  # --recompute: the feature is replaced whole, its columns this run does not write go too
        columns.drop_present(lake, stale)
    stage = runner.RowStage(
        STAGE, fields, config, inputs, batch=runner.OnColumns(udf), batch_size=batch_size,
        extra={"udf": udf_spec(spec) if spec else udf_name(func)}, desc=f"feature {name}",
        own_column="as a feature of another name " + words("(feature add LAKE OTHER_NAME ...)",
                                                           "(lake.add_feature(OTHER_NAME, ...))"), fix=fix,
    )
    out = runner.run(lake, stage, engine=engine, recompute=recompute, progress=progress)
    return FeatureReport(lake=lake.uri, feature=name, columns=list(types), inputs=inputs, engine=engine,
                         fragments=out.fragments, rows=out.computed, seconds=time.perf_counter() - t0,
                         versions=out.versions, rows_refreshed=out.rows_refreshed,
                         fragments_elsewhere=out.fragments_elsewhere, elsewhere=out.elsewhere)


def list_features(lake: "Store") -> list[dict[str, Any]]:
    """Every feature column: what made it, from what, and how many rows still lack it."""
    ds = lake.dataset()
    rows = []
    for f in ds.schema:
        prov = columns.field_provenance(f)
        if not prov or prov.get("stage") != STAGE:
            continue
        todo = columns.fragments_to_fill(ds, f.name)
        rows.append({"column": f.name, "type": str(f.type), "udf": prov.get("udf", ""),
                     "inputs": ", ".join(prov["config"]["inputs"]), "config": prov["config_hash"],
                     "since_version": prov["table_version"], "rows_missing": sum(fr.count_rows() for fr in todo)})
    return rows


def drop_feature(lake: "Store", name: str) -> list[str]:
    """Drop a feature's column(s) (metadata only: older versions still have them), or forget one another
    writer dropped (status lists it dropped): :func:`lakecurate.drops.drop_columns` of its columns.
    Returns the names."""
    from lakecurate.drops import drop_columns

    ds = lake.dataset()
    cols = [f.name for f in ds.schema if (columns.field_provenance(f) or {}).get("stage") == STAGE
            and columns.field_provenance(f)["config"].get("feature") == name]
    if not cols:  # another writer dropped it (status lists it dropped): its record is forgotten
        cols = next((n.columns for n in graph.dropped_nodes(ds) if n.stage == STAGE
                     and (n.prov.get("config") or {}).get("feature") == name), [])
        if not cols:
            raise LakeError(f"lake '{lake.uri}' has no feature '{name}'; see: lakecurate feature list {lake.uri}")
    drop_columns(lake, cols)
    return cols
