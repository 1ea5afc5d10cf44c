"""Derived columns, added safely: declare, then fill fragment by fragment.

This is the one place where stages write columns. The pattern (measured in issues 3 and 9):

1. **declare** the new fields as all-null columns (``add_columns`` with bare fields): metadata only,
   no data file is touched, and each field carries its provenance in its metadata;
2. **fill** one fragment at a time: write a data file holding only the new columns for the
   fragment's physical rows, then commit ``LanceOperation.DataReplacement``. Image bytes and every
   other column are never rewritten (a non-null column another writer added, which Lance's append
   insists on, gets a placeholder copy in the file that the manifest never reads: :func:`write_file`);
3. on a commit conflict, re-commit the *same file* at a fresh read version (appends, deletes and
   other columns' replacements do not invalidate it); if the fragment is gone (compaction), the work
   is dropped and the next run recomputes the new fragment.

A fragment that has a data file for a column is done; rows appended later land in new fragments,
which read as null until the next incremental run fills them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from contextlib import suppress as _suppress
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lance
import lance.fragment
import numpy as np
import pyarrow as pa
import pyarrow.ipc
from lance.commit import CommitConflictError

from lakecurate.engines import process_alive
from lakecurate.errors import LakeError
from lakecurate.options import given, spell
from lakecurate.schema import NODE_KEY, PROVENANCE_KEY  # noqa: F401 - re-exported: where it was
from lakecurate.store import checkpoint_root, retry_on_conflict

if TYPE_CHECKING:
    from lakecurate.store import Store

# The provenance record's format: bumped when its keys change meaning. Records written before the
# key existed read as format 1; a newer format is refused by stages (an older lakecurate cannot
# tell whether its config comparison still holds) and shown as far as it can be by info/report.
PROVENANCE_FORMAT = 1
# A fill's commit records the version its values were computed from (a transaction property): Lance's
# own read version is the one the commit was retried on (graph._computed_from reads both).
COMPUTED_FROM = "lakecurate.computed_from"
PROVENANCE_REQUIRED = ("stage", "config", "config_hash")
# The provenance key of the column set one declare made (every column of a stage run's node): a
# column of it that another writer dropped leaves the node stale (graph), not current with fewer.
DECLARED_KEY = "columns"
# A set's record while a run replaces it (:func:`drop_replaced`): its columns dropped, not declared
# again yet. Kept under a key of its own (``NODE_KEY + "replacing." + name``) until the new set's
# record is in: a run killed anywhere between its drop and its declare leaves it.
REPLACING_KEY = "replacing"


def provenance(stage: str, config: dict[str, Any], source_columns: Sequence[str], table_version: int) -> dict[str, Any]:
    """The provenance record stored on every derived field: what made it, from what, when."""
    from lakecurate._version import __version__

    config_hash = hash_config(config)
    return {
        "format": PROVENANCE_FORMAT,
        "stage": stage,
        "config": config,
        "config_hash": config_hash,
        "source_columns": list(source_columns),
        "table_version": table_version,
        "tool_version": __version__,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def hash_config(config: dict[str, Any]) -> str:
    """The ``config_hash`` a provenance record carries for ``config``."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:12]


def config_change(old: dict[str, Any], new: dict[str, Any], most: int = 4) -> str:
    """What differs between two configs, key by key ("threshold 0.85 -> -1.0"), for a message: the
    JSON of the old one, cut at 200 characters, ended mid-string and did not say what changed.

    >>> config_change({"threshold": 0.85, "method": "semantic"}, {"threshold": -1.0, "method": "semantic"})
    'threshold 0.85 -> -1.0'
    """
    def shown(v: Any) -> str:
        text = json.dumps(v, sort_keys=True, default=str)
        return text if len(text) <= 60 else text[:57] + "..."
    keys = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    parts = [f"{k} {shown(old[k]) if k in old else '(none)'} -> {shown(new[k]) if k in new else '(none)'}" for k in keys[:most]]
    return "; ".join(parts) + (f"; and {len(keys) - most} more" if len(keys) > most else "") if parts else "the same settings, another version"


def field_provenance(field: pa.Field, *, strict: bool = True) -> dict[str, Any] | None:
    """The provenance record of ``field`` (None for a column lakecurate did not derive).

    ``strict`` (for stages, which compare configs and rebuild encoders from it): a record of a newer
    format, unreadable, or without ``stage``/``config``/``config_hash`` is a :class:`LakeError`
    naming the column. ``strict=False`` (for info and the report) returns what can be read.

    >>> field_provenance(pa.field("x", pa.int32(), metadata={PROVENANCE_KEY: '{"stage": "feature"}'}), strict=False)
    {'stage': 'feature', 'format': 1}
    """
    raw = (field.metadata or {}).get(PROVENANCE_KEY.encode())
    if not raw:
        return None
    try:
        prov = json.loads(raw)
    except ValueError:
        prov = None
    if not isinstance(prov, dict):
        if strict:
            raise LakeError(f"column '{field.name}' has unreadable provenance; re-make it with the stage's "
                            f"{given('--recompute')}, or restore a version from before it")
        return {"unreadable": raw.decode(errors="replace")[:200]}
    prov.setdefault("format", 1)
    if not strict:
        return prov
    fmt = prov["format"]
    if not isinstance(fmt, int) or fmt > PROVENANCE_FORMAT:
        raise LakeError(f"column '{field.name}' was written by a newer lakecurate (provenance format {fmt}, "
                        f"this one reads {PROVENANCE_FORMAT}); upgrade lakecurate")
    missing = [k for k in PROVENANCE_REQUIRED if k not in prov]
    if missing or not isinstance(prov["config"], dict):
        raise LakeError(f"column '{field.name}' has provenance without {', '.join(missing) or 'a config'}: it was not "
                        f"written by a compatible lakecurate; re-make it with the stage's {given('--recompute')}, or "
                        "restore a version from before it")
    return prov


def describe_provenance(prov: dict[str, Any] | None) -> str:
    """One line saying what made a column, for ``lakecurate info`` and the report (whatever is known)."""
    if not prov:
        return ""
    if "unreadable" in prov:
        return "provenance unreadable"
    cfg = prov.get("config") if isinstance(prov.get("config"), dict) else {}
    recipe = cfg.get("recipe") if isinstance(cfg.get("recipe"), dict) else {}
    what = str(prov.get("udf") or cfg.get("arch") or cfg.get("name") or recipe.get("name") or "")
    if cfg.get("pretrained") and not str(cfg["pretrained"]).endswith(".pt"):
        what += f":{cfg['pretrained']}"
    parts = [f"{prov.get('stage', '?')}: {what}".rstrip()]
    if prov.get("config_hash"):
        parts.append(f"(config {prov['config_hash']})")
    if prov.get("source_columns"):
        parts.append(f"from {', '.join(map(str, prov['source_columns']))}")
    if prov.get("table_version") is not None:
        parts.append(f"declared at v{prov['table_version']},")  # (status names the version a run read)
    if prov.get("tool_version"):
        parts.append(f"lakecurate {prov['tool_version']}")
    fmt = prov.get("format", 1)
    if not isinstance(fmt, int) or fmt > PROVENANCE_FORMAT:
        parts.append(f"(provenance format {fmt}: newer than this lakecurate)")
    return " ".join(parts).rstrip(",")


def _type_family(t: pa.DataType) -> str:
    """What a stage relies on in a column's type: text, whole numbers, bytes (the image column reads
    back as Lance's blob extension type), a list, a time; widths and offsets may differ."""
    for family, test in (("text", lambda: pa.types.is_string(t) or pa.types.is_large_string(t)),
                         ("integer", lambda: pa.types.is_integer(t)),
                         ("bytes", lambda: pa.types.is_binary(t) or pa.types.is_large_binary(t) or "blob" in str(t)),
                         ("list", lambda: pa.types.is_list(t) or pa.types.is_large_list(t)),
                         ("time", lambda: pa.types.is_timestamp(t))):
        if test():
            return family
    return str(t)


def check_table(lake: "Store", ds: lance.LanceDataset | None = None) -> None:
    """Refuse, before anything is written, a table that is not a lakecurate ``pairs`` table (other
    columns, other types) or was written by a newer lakecurate: one :class:`LakeError` line."""
    from lakecurate.schema import PAIRS_SCHEMA

    ds = ds if ds is not None else lake.dataset()
    schema = ds.schema
    version = (schema.metadata or {}).get(b"lakecurate.schema_version", b"1").decode(errors="replace")
    if not version.isdigit() or int(version) > int(PAIRS_SCHEMA.metadata[b"lakecurate.schema_version"]):
        raise LakeError(f"lake '{lake.uri}' was written by a newer lakecurate (table schema {version}); upgrade lakecurate")
    missing = [f.name for f in PAIRS_SCHEMA if f.name not in schema.names]
    if missing and (schema.metadata or {}).get(b"lakecurate.table"):  # a lake's table another writer changed
        many = len(missing) > 1
        raise LakeError(f"lake '{lake.uri}' lacks its source column{'s' if many else ''} {', '.join(missing)} (renamed or "
                        f"dropped by another writer: lakecurate status {lake.shell} names the rename and the command "
                        f"that undoes it; or restore the version before it: lakecurate log {lake.shell})")
    if missing:
        raise LakeError(f"'{lake.table_uri}' is not a lakecurate table: missing columns {', '.join(missing)}")
    for want in PAIRS_SCHEMA:
        got = schema.field(want.name).type
        if _type_family(got) != _type_family(want.type):
            raise LakeError(f"'{lake.table_uri}' is not a lakecurate table: column '{want.name}' is {got}, "
                            f"lakecurate needs {want.type}")


def declare(lake: "Store", fields: Sequence[pa.Field], prov: dict[str, Any], *, recompute: bool = False,
            fix: str | None = None, same: Callable[[dict[str, Any], dict[str, Any]], bool] | None = None,
            rename: str | None = None) -> bool:
    """Make sure ``fields`` exist with provenance ``prov``. Metadata-only; returns True if it added them.

    The same config again is a no-op. A column that exists with another config is an error naming
    the two ways out (another name, or ``recompute``, which drops and re-declares the columns).
    ``same(recorded, this)``: configs whose hashes differ but that are one (the stage says).
    ``rename``: how this run writes columns of its own when another stage's hold these names (the
    CLI's stages take --name; a stage run from Python names its columns itself). ``fix`` and
    ``rename`` default to advice naming ``name`` and ``recompute`` as the interface speaking does.
    """
    fix = fix or f"use {spell('--name')} to write new columns beside it, or {given('--recompute')} to replace it"
    ds = lake.dataset()
    check_table(lake, ds)  # a foreign or newer table: refused before the first write of any stage
    names = [f.name for f in fields]
    present = [n for n in names if n in ds.schema.names]
    refuse_foreign(lake, ds, present)  # (before a recompute's drop: another writer's column went without a word)
    refuse_others(lake, ds, names, prov, rename)  # (...and another stage's: a recompute dropped a user's feature)
    if present and recompute:
        drop_replaced(lake, present)
        ds = lake.dataset()
        present = []
    for name in present:
        old = field_provenance(ds.schema.field(name))
        if old["config_hash"] != prov["config_hash"] and not (same and same(old.get("config") or {},
                                                                          prov.get("config") or {})):
            raise LakeError(f"column '{name}' in lake '{lake.uri}' was made with another config "
                            f"({config_change(old.get('config') or {}, prov.get('config') or {})}); {fix}")
    missing = [f for f in fields if f.name not in present]
    if present and missing and all(set(declared_columns(ds.schema.field(n)) or ()) >= {f.name for f in missing}
                                   for n in present):
        # Another writer dropped some of a set this config declared (its provenance records the set):
        # the set is made again whole (Lance replaces a fragment's file only with the same columns).
        drop_replaced(lake, present)
        present, missing = [], list(fields)
    if len(missing) not in (0, len(fields)):
        raise LakeError(f"lake '{lake.uri}' has only some of {names}; run with {given('--recompute')} to rebuild them")
    if not missing:
        return False
    # The column set is recorded beside the config (not in it: the config hash stays as it was), so
    # the stage graph can tell a column another writer dropped from one this run never wrote.
    meta = {PROVENANCE_KEY: json.dumps({**prov, DECLARED_KEY: names}, sort_keys=True)}
    declared = [f.with_nullable(True).with_metadata({**(f.metadata or {}), **meta}) for f in missing]

    def add() -> bool:
        current = lake.dataset()
        if all(f.name in current.schema.names for f in declared):
            return False  # another process declared them first
        # The set's record goes in the same commit (the schema's metadata is merged into the table's),
        # but a key the table has already is kept as it was: the record of a set of these names
        # (dropped outside lakecurate, its fix running now) is forgotten first.
        current = _forget(current, names, replacing=False)
        current.add_columns(pa.schema(declared, metadata={NODE_KEY + names[0]: meta[PROVENANCE_KEY]}))
        return True

    added = retry_on_conflict(add)
    # the record of the set this run replaced goes only now that the new one is in (drop_replaced)
    retry_on_conflict(lambda: _forget(lake.dataset(), names, replacing=True, only=True))
    return added


def refuse_foreign(lake: "Store", ds: lance.LanceDataset, names: Sequence[str]) -> None:
    """Refuse (LakeError) to write columns ``names`` where ``ds`` has one without lakecurate's
    provenance: another writer added it, and no stage drops another writer's column. A stage that
    writes several sets calls this for all of them before its first write."""
    foreign = [n for n in names if n in ds.schema.names and field_provenance(ds.schema.field(n), strict=False) is None]
    if foreign:
        one = len(foreign) == 1
        raise LakeError(f"column{'' if one else 's'} {', '.join(foreign)} in lake '{lake.uri}' {'was' if one else 'were'} "
                        f"not made by lakecurate (another writer added {'it' if one else 'them'}), and lakecurate does "
                        f"not drop another writer's columns: drop {'it' if one else 'them'} with the tool that added "
                        f"{'it' if one else 'them'} (Lance, LanceDB), or pick another {spell('--name')} where the stage takes one")


def refuse_others(lake: "Store", ds: lance.LanceDataset, names: Sequence[str], prov: dict[str, Any],
                  rename: str | None = None) -> None:
    """Refuse (LakeError) to declare ``names`` where ``ds`` has one that another stage declared, or
    that belongs to a larger set than these names (a feature's of several columns): no run
    replaces what it did not make. A feature named ``myenc_image``, then ``embed --name myenc``:
    the refusal said "--recompute to replace it", and the recompute dropped the feature; ``embed
    --name caption`` beside ``recaption --name image`` replaced the image vectors with text.
    ``rename``: the way to a column of one's own (a RowStage run from Python has no --name)."""
    rename = rename or f"pick another {spell('--name')} for this one"
    for name in names:
        if name not in ds.schema.names:
            continue
        old = field_provenance(ds.schema.field(name), strict=False) or {}
        declared = declared_columns(ds.schema.field(name)) or [name]
        if old.get("stage") != prov.get("stage") or not set(declared) <= set(names):
            raise LakeError(f"column '{name}' of lake '{lake.uri}' belongs to {old.get('stage')} "
                            f"({', '.join(declared)}), not to this {prov.get('stage')} run: a run ({spell('--recompute')} too) "
                            f"replaces only its own columns; {rename} (or drop those first "
                            f"on purpose: lakecurate drop {lake.shell} {' '.join(declared)})")


def drop_present(lake: "Store", names: Sequence[str]) -> None:
    """Drop those of ``names`` the lake has (metadata only), retried like every commit on a shared
    table (another writer may have dropped some meanwhile); their sets' records go first (a drop
    lakecurate means is no set "dropped outside")."""
    def drop() -> None:
        current = lake.dataset()
        gone = [n for n in names if n in current.schema.names]
        if gone:
            _forget(current, gone).drop_columns(gone)

    retry_on_conflict(drop)


def drop_replaced(lake: "Store", names: Sequence[str]) -> None:
    """Drop those of ``names`` the lake has (metadata only) to declare them again (a run's
    recompute, another config of a decision): their sets' records stay, marked ``replacing``,
    until the declare that follows replaces them in its own commit. A run killed between the two
    leaves a set ``status`` lists dropped by a run that did not finish, which export refuses; it
    left a set gone with its record, every stage "current", and export shipped table order (or
    every row) without a word."""
    def drop() -> None:
        current = lake.dataset()
        gone = [n for n in names if n in current.schema.names]
        if gone:
            records: dict[str, str | None] = {}
            for k, p in node_records(current).items():
                if set(p[DECLARED_KEY]) & set(gone) and not p.get(REPLACING_KEY):
                    records[k] = None  # (moved: the declare's record goes under the set's key)
                    records[NODE_KEY + "replacing." + str(p[DECLARED_KEY][0])] = json.dumps(
                        {**p, REPLACING_KEY: True}, sort_keys=True)
            if records:
                current.update_schema_metadata(records)  # (moves ``current`` to the new version)
            current.drop_columns(gone)

    retry_on_conflict(drop)


def record_beside(lake: "Store", names: Sequence[str], values: dict[str, Any]) -> None:
    """Record ``values`` beside the config in the provenance of the set ``names`` (each field's and
    the set's record; the config and its hash unchanged): where this run found its weights, when an
    earlier run of the same config found them elsewhere (the fix command names them). Metadata
    only, retried on conflict; nothing written when the provenance holds them already."""
    def update() -> None:
        ds = lake.dataset()
        present = [n for n in names if n in ds.schema.names]
        held = [field_provenance(ds.schema.field(n), strict=False) or {} for n in present]
        if not present or all(all(p.get(k) == v for k, v in values.items()) for p in held):
            return
        ds.update_field_metadata({n: {PROVENANCE_KEY: json.dumps({**p, **values}, sort_keys=True)}
                                  for n, p in zip(present, held)})
        records = {k: json.dumps({**p, **values}, sort_keys=True) for k, p in node_records(ds).items()
                   if set(p[DECLARED_KEY]) & set(present)}
        if records:
            ds.update_schema_metadata(records)

    retry_on_conflict(update)


def node_records(ds: lance.LanceDataset) -> dict[str, dict[str, Any]]:
    """The provenance records of the sets declared on ``ds`` (:data:`NODE_KEY`), by key; a record
    that does not parse is left out (written by hand: it tells nothing)."""
    out: dict[str, dict[str, Any]] = {}
    for k, v in (ds.schema.metadata or {}).items():
        key = k.decode(errors="replace")
        if not key.startswith(NODE_KEY):
            continue
        try:
            prov = json.loads(v)
        except ValueError:
            continue
        if isinstance(prov, dict) and isinstance(prov.get(DECLARED_KEY), list) and prov.get("stage"):
            out[key] = prov
    return out


def forget(lake: "Store", names: Sequence[str]) -> None:
    """Forget the records of the sets with a column in ``names`` (dropped outside lakecurate, on
    purpose), retried on conflict."""
    retry_on_conflict(lambda: _forget(lake.dataset(), names))


def _forget(ds: lance.LanceDataset, names: Sequence[str], *, replacing: bool = True,
            only: bool = False) -> lance.LanceDataset:
    """Remove the records of the sets with a column in ``names`` (one metadata commit, before their
    drop: killed between the two, the columns stay and so does what their fields record);
    ``replacing``: also those a run replacing them left (:func:`drop_replaced`); ``only``: those alone."""
    keys = {k: None for k, prov in node_records(ds).items() if set(prov[DECLARED_KEY]) & set(names)
            and (replacing or not prov.get(REPLACING_KEY)) and (not only or prov.get(REPLACING_KEY))}
    if not keys:
        return ds
    ds.update_schema_metadata(keys)  # (moves ``ds`` to the new version)
    return ds


def declared_columns(field: pa.Field) -> list[str] | None:
    """The columns declared together with ``field`` (itself included), as its provenance records
    them; None for a column declared before the set was recorded, or not by lakecurate."""
    prov = field_provenance(field, strict=False) or {}
    got = prov.get(DECLARED_KEY)
    return [str(c) for c in got] if isinstance(got, list) else None


def config_changed(lake: "Store", column: str, prov: dict[str, Any]) -> bool:
    """Whether ``column`` exists with provenance of another config than ``prov``."""
    ds = lake.dataset()
    old = field_provenance(ds.schema.field(column)) if column in ds.schema.names else None
    return old is not None and old["config_hash"] != prov["config_hash"]


def declare_view(lake: "Store", fields: Sequence[pa.Field], prov: dict[str, Any]) -> bool:
    """Declare columns that are a *decision* recomputed on every run (dedup's keep, a recipe's
    keep, rebalancing, an order): another config replaces them (a metadata-only drop and re-add;
    tags keep earlier results). Returns True when they were replaced, so the caller rewrites all.
    Some of them alone (the others dropped outside lakecurate) are replaced too: the decision is
    made again whole (declare's "run with --recompute" named an option these stages do not have)."""
    names = lake.dataset().schema.names
    partial = 0 < sum(f.name in names for f in fields) < len(fields)
    changed = partial or config_changed(lake, fields[0].name, prov)
    declare(lake, fields, prov, recompute=changed)
    return changed


def _field_ids(ds: lance.LanceDataset, name: str) -> set[int]:
    top = ds.lance_schema.field(name)
    if top is None:  # dropped by another writer since the caller looked (a curate replacing keep)
        raise KeyError(f"column {name!r} is not in version {ds.version} of the table")
    out, stack = set(), [top]
    while stack:
        f = stack.pop()
        out.add(f.id())
        stack.extend(f.children())
    return out


_DIGESTS: dict[tuple[str, int, int], str] = {}


def file_digest(path: str) -> str:
    """The sha256 of a weights file (its first 16 hex digits), read once per path, size and
    modification time in a process (the stage graph asks on every status: a checkpoint replaced at
    the same path is another config)."""
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _DIGESTS[key] = h.hexdigest()[:16]
    return _DIGESTS[key]


def has_data(ds: lance.LanceDataset, frag: lance.LanceFragment, column: str) -> bool:
    """Whether ``frag`` has a data file backing ``column`` (manifest only; no data is read)."""
    ids = _field_ids(ds, column)
    return any(ids & set(df.fields) for df in frag.metadata.files)


def fragments_to_fill(ds: lance.LanceDataset, column: str) -> list[lance.LanceFragment]:
    """Fragments whose rows have no value for ``column`` yet: what an incremental run computes."""
    return [f for f in ds.get_fragments() if not has_data(ds, f, column)]


def fill_fragment(lake: "Store", fragment_id: int, table: pa.Table, *, config_hash: str | None = None,
                  own_column: str | None = None, computed_from: int | None = None) -> int | None:
    """Write ``table`` (declared columns, one row per *physical* row of the fragment) as the
    fragment's data for those columns and commit it. Returns the new version, or None when the
    fragment no longer exists (compacted away) or another writer already filled these columns.
    ``config_hash``: the config the values were computed with; when the columns hold another at
    commit time (another run re-declared them with ``recompute`` meanwhile), a LakeError, nothing
    committed (the values would land under the other run's provenance); ``own_column`` ends its
    advice: how this stage writes a column of its own ("with another --name"), None when it cannot.
    ``computed_from``: the version the values were computed from, recorded with the commit (the
    stage graph reads it: a fill committed after its input was rewritten is not current).
    """
    return fill_fragments(lake, {fragment_id: table}, first_fill_only=True, config_hash=config_hash,
                          own_column=own_column, computed_from=computed_from)


def fill_fragments(lake: "Store", tables: dict[int, pa.Table], *, first_fill_only: bool = False,
                   based_on: lance.LanceDataset | None = None, config_hash: str | None = None,
                   own_column: str | None = None, computed_from: int | None = None,
                   properties: dict[str, str] | None = None) -> int | None:
    """Write each fragment's ``table`` (the same declared columns for every fragment, one row per
    physical row) and commit them all in **one** ``DataReplacement``: one new version, atomic.

    Fragments that already hold data for these columns get it replaced (Lance requires the new file
    to have exactly the columns of the old one, so a stage always writes the same column set
    together). Fragments gone or rewritten meanwhile are left out (the next run recomputes them);
    with ``first_fill_only`` a fragment that another writer filled first is left out too.
    Returns the new version, or None when nothing was committed.

    ``based_on``: the tables were computed from the values at this version (a read-modify-write, as
    a review changing a few rows of a fragment); the commit is made once, at that version, so a
    concurrent rewrite of the same fragments raises the conflict to the caller, who reads again and
    recomputes (re-committing the same files would lose the other writer's values).
    ``properties``: recorded with the commit (transaction properties: a review names its action, so
    its log can tell whether its marks landed).
    """
    if not tables:
        return None
    files = FragmentFiles(lake, next(iter(tables.values())).column_names,
                          first_fill_only=first_fill_only, based_on=based_on, config_hash=config_hash,
                          own_column=own_column, computed_from=computed_from, properties=properties)
    for fid, table in tables.items():
        files.write(fid, table)
    return files.commit()


_REMOVED_BY = {  # the operation of the commit that removed a column -> what a user did
    "Project": "a drop of columns (lakecurate drop or feature drop, Lance or LanceDB drop_columns, or a run with --recompute that declares it anew)",
    "Overwrite": "an overwrite of the table (lakecurate ingest --mode overwrite)",
    "Restore": "a restore of a version without it (lakecurate restore)",
}


def dropped_message(lake: "Store", name: str) -> str:
    """The error of a run whose column ``name`` another writer removed while it ran: which commit
    removed it, as far as the commit log tells (the first version without it after the last with
    it, and that commit's operation), and advice that does not undo a drop made on purpose."""
    ds = lake.dataset()
    when = ""
    try:
        for v in range(ds.version, max(1, ds.version - 500), -1):
            if name in ds.checkout_version(v - 1).schema.names:
                op = type(ds.checkout_version(v).get_transactions(1)[0].operation).__name__
                when = f" at version {v} by {_REMOVED_BY.get(op, f'a {op} commit')}"
                break
    except Exception:  # noqa: BLE001 - versions cleaned up or unreadable: say what is known
        when = ""
    return (f"column '{name}' of lake '{lake.uri}' was removed by another writer{when} while this run computed it; "
            f"what this run committed before stays in the versions before that. If it was not removed on purpose, "
            f"run this command again to fill the column")


class ColumnsDropped(LakeError):
    """The columns a write fills were dropped by another writer since they were declared (a
    caller that can declare them again, curate, catches it and decides again)."""


class FragmentFiles:
    """New data files for fragments, written one fragment at a time and committed together in one
    ``DataReplacement`` (:func:`fill_fragments`, which takes every table at once, is this fed at
    once): a stage that judges a fragment at a time holds one fragment's values, not the lake's.
    Files written elsewhere (a Ray task: :func:`write_file`) are added with ``add``.

    >>> files = FragmentFiles(lake, ["keep", "drop_reason"])    # doctest: +SKIP
    >>> files.write(fid, table)                                 # doctest: +SKIP
    >>> files.commit()  # one new version, or None               # doctest: +SKIP
    """

    def __init__(self, lake: "Store", names: Sequence[str], *, first_fill_only: bool = False,
                 based_on: lance.LanceDataset | None = None, config_hash: str | None = None,
                 own_column: str | None = None, computed_from: int | None = None,
                 properties: dict[str, str] | None = None) -> None:
        self.lake, self.names, self.config_hash, self.own_column = lake, list(names), config_hash, own_column
        self.computed_from = computed_from  # recorded with the commit (COMPUTED_FROM)
        self.properties = dict(properties or {})  # recorded with the commit too
        self.first_fill_only, self.based_on = first_fill_only, based_on
        self.ds = based_on if based_on is not None else lake.dataset()
        gone = [n for n in self.names if n not in self.ds.schema.names]
        if gone:  # declared when the run began: another writer dropped them meanwhile
            raise ColumnsDropped(dropped_message(lake, gone[0]))
        self.schema = pa.schema([self.ds.schema.field(n) for n in self.names])
        self.files: dict[int, Any] = {}
        self.rows: dict[int, int] = {}
        self.before: dict[int, bool] = {}

    def write(self, fid: int, table: pa.Table) -> bool:
        """Write fragment ``fid``'s file (not committed yet); False when the fragment is gone."""
        if table.column_names != self.names:
            raise ValueError(f"every fragment must get the same columns: {table.column_names} != {self.names}")
        written = write_file(self.ds, fid, table, self.lake.storage_options)
        if written is not None:
            self.add(fid, written)
        return written is not None

    def add(self, fid: int, written: "WrittenFile") -> None:
        """A file :func:`write_file` wrote for fragment ``fid``, to commit with the others."""
        self.files[fid], self.rows[fid], self.before[fid] = written

    def commit(self) -> int | None:
        """One commit of every file written; the new version, or None when nothing was committed."""
        if not self.files:
            return None
        lake, names, based_on = self.lake, self.names, self.based_on

        def commit() -> int | None:
            current = based_on if based_on is not None else lake.dataset()
            if self.config_hash is not None:
                held = field_provenance(current.schema.field(names[0])) if names[0] in current.schema.names else None
                if held is None or held["config_hash"] != self.config_hash:
                    raise LakeError(f"column '{names[0]}' of lake '{lake.uri}' was "
                                    + ("dropped" if names[0] not in current.schema.names else
                                       f"declared again with another config ({held and held['config_hash']})")
                                    + f" by another run while this one computed it ({self.config_hash}); this run's "
                                    "values were not committed (they would have gone under that config). Run it "
                                    "again once the other run is done"
                                    + (f", or {self.own_column} for a column of its own" if self.own_column else ""))
            groups = []
            for fid, data_file in self.files.items():
                frag_now = current.get_fragment(fid)
                if frag_now is None or frag_now.physical_rows != self.rows[fid]:
                    continue  # compacted or rewritten meanwhile: recompute on the next run
                if self.first_fill_only and has_data(current, frag_now, names[0]) and not self.before[fid]:
                    continue  # a concurrent run filled it first; ours is an identical recomputation
                groups.append(lance.LanceOperation.DataReplacementGroup(fid, data_file))
            if not groups:
                return None
            op: Any = lance.LanceOperation.DataReplacement(groups)
            props = dict(self.properties)
            if self.computed_from is not None:  # (read by the stage graph: what the values were computed from)
                props[COMPUTED_FROM] = str(self.computed_from)
            if props:
                from lance.dataset import Transaction

                op = Transaction(read_version=current.version, operation=op, transaction_properties=props)
            try:
                return lance.LanceDataset.commit(
                    lake.table_uri, op, read_version=current.version, storage_options=lake.storage_options,
                ).version
            except OSError as exc:
                if "not found" in str(exc).lower() and not isinstance(exc, CommitConflictError):
                    return None
                raise

        return commit() if based_on is not None else retry_on_conflict(commit)


WrittenFile = tuple  # (lance DataFile, the fragment's physical rows, whether it held data for the columns before)


def write_file(ds: lance.LanceDataset, fid: int, table: pa.Table, storage_options: dict | None = None) -> "WrittenFile | None":
    """Write ``table`` (declared columns of ``ds``, one row per physical row of fragment ``fid``)
    as a data file for that fragment, uncommitted (:class:`FragmentFiles` commits it); picklable,
    so a Ray task can write it. None when the fragment is gone."""
    frag = ds.get_fragment(fid)
    if frag is None:
        return None
    if table.num_rows != frag.physical_rows:  # Lance does not check this at commit: a mismatch breaks reads
        raise ValueError(f"fragment {fid} has {frag.physical_rows} rows, got {table.num_rows}")
    schema = pa.schema([ds.schema.field(n) for n in table.column_names])
    table = table.cast(schema)
    # Lance's append refuses a file that lacks a non-null column of the table ("Append with different
    # schema ... missing=[foo]"): another writer's add_columns of an SQL expression makes one. The file
    # then carries a placeholder copy of it (one of its values, repeated: it must be non-null), left out
    # of the file's fields below, so the manifest reads that column from its own file, untouched.
    placeholders = [f for f in ds.schema if f.name not in schema.names and not f.nullable]
    for f in placeholders:
        table = table.append_column(f, _placeholder(ds, frag, f, table.num_rows))
        schema = schema.append(f)
    written = lance.fragment.write_fragments(
        table,
        ds,
        schema=schema,
        mode="append",
        data_storage_version=ds.data_storage_version,
        max_rows_per_file=table.num_rows + 1,
        storage_options=storage_options,
    )
    if len(written) != 1 or len(written[0].files) != 1:
        raise RuntimeError(f"expected one data file for fragment {fid}, got {written}")
    data_file = written[0].files[0]
    if placeholders:
        other = set().union(*(_field_ids(ds, f.name) for f in placeholders))
        kept = [(i, c) for i, c in zip(data_file.fields, data_file.column_indices) if i not in other]
        data_file.fields, data_file.column_indices = [i for i, _ in kept], [c for _, c in kept]
    return data_file, table.num_rows, has_data(ds, frag, schema.names[0])


def _placeholder(ds: lance.LanceDataset, frag: lance.LanceFragment, field: pa.Field, rows: int) -> pa.Array:
    """``rows`` copies of one stored value of ``field`` (a non-null column this write leaves alone)."""
    one = frag.to_table(columns=[field.name], limit=1).column(0)
    if len(one) == 0:  # (no live row in the fragment: any row of the table)
        one = ds.to_table(columns=[field.name], limit=1).column(0)
    if len(one) == 0:
        raise LakeError(f"column '{field.name}' of table '{ds.uri}' is not null, and no row holds a value to "
                        f"copy for it (a write to fragment {frag.fragment_id} needs one)")
    return one.take(pa.array(np.zeros(rows, np.int64))).combine_chunks()


def write_changed(lake: "Store", tbl: pa.Table, new: dict[str, pa.Array]) -> tuple[int, int | None]:
    """Write the columns ``new`` (arrays aligned with ``tbl``'s live rows, which carry ``_rowaddr``
    and, where stored already, the old values) for every fragment where a value differs from the
    stored one or nothing is stored yet; all in one commit. Returns (fragments written, version).

    This is how a stage with a global fit step (dedup groups, recipe decisions) rewrites only what
    changed: unchanged fragments keep their files, and a re-run that changes nothing commits nothing.
    :class:`ChangedFragments` does the same a fragment at a time.
    """
    return changed_fragments(lake, tbl, new).commit()


def changed_fragments(lake: "Store", tbl: pa.Table, new: dict[str, pa.Array]) -> "ChangedFragments":
    """:func:`write_changed` up to its commit: the changed fragments' files written."""
    fid_of = (tbl.column("_rowaddr").to_numpy() >> 32).astype(np.int64)
    if np.any(np.diff(fid_of) < 0):  # each fragment's rows together
        order = pa.array(np.argsort(fid_of, kind="stable"))
        tbl, new, fid_of = tbl.take(order), {n: a.take(order) for n, a in new.items()}, np.sort(fid_of, kind="stable")
    cuts = np.flatnonzero(np.diff(fid_of)) + 1
    changed = ChangedFragments(lake, list(new))
    for lo, hi in zip(np.concatenate([[0], cuts]), np.concatenate([cuts, [len(fid_of)]])):
        if hi > lo:  # the rows of one fragment (a scan reads them in fragment order)
            changed.add(tbl.slice(lo, hi - lo), {n: a.slice(lo, hi - lo) for n, a in new.items()})
    return changed


class ChangedFragments:
    """:func:`write_changed` a fragment at a time: ``add`` one fragment's live rows (a table with
    ``_rowaddr`` and, where stored already, the old values) and their new values; its file is
    written when a value differs or the fragment holds none yet; ``commit`` commits them all.
    ``add_written`` takes what :func:`changed_file` returned in a Ray task."""

    def __init__(self, lake: "Store", names: Sequence[str]) -> None:
        self.files = FragmentFiles(lake, names)
        self.names = list(names)
        self.seen: set[int] = set()

    def add(self, tbl: pa.Table, new: dict[str, pa.Array]) -> bool:
        """Queue fragment's new values; True when its file was written (it changed or was unfilled)."""
        fid, written = changed_file(self.files.ds, tbl, new, self.files.lake.storage_options)
        return self.add_written(fid, written)

    def add_written(self, fid: int | None, written: "WrittenFile | None") -> bool:
        if fid is None:
            return False
        if fid in self.seen:
            raise ValueError(f"fragment {fid} was added already: add each fragment's rows at once")
        self.seen.add(fid)
        if written is not None:
            self.files.add(fid, written)
        return written is not None

    def commit(self, computed_from: int | None = None) -> tuple[int, int | None]:
        """(fragments written, new version or None). ``computed_from``: the version the values were
        computed from, recorded with the commit (a retried commit's own read version is later)."""
        self.files.computed_from = computed_from
        version = self.files.commit()
        return (len(self.files.files) if version is not None else 0), version


def changed_file(ds: lance.LanceDataset, tbl: pa.Table, new: dict[str, pa.Array],
                 storage_options: dict | None = None) -> "tuple[int | None, WrittenFile | None]":
    """One fragment's new values (``tbl``: its live rows with ``_rowaddr`` and the old values where
    stored) written as its file (:func:`write_file`) when a value differs or ``ds`` holds none for
    the fragment yet: (fragment id, the file or None). (None, None) for no rows."""
    import pyarrow.compute as pc

    if tbl.num_rows == 0:
        return None, None
    names = list(new)
    addr = tbl.column("_rowaddr").to_numpy()
    fid = int(addr[0] >> 32)
    if np.any((addr >> 32) != fid):
        raise ValueError("changed_file takes the rows of one fragment")
    frag = ds.get_fragment(fid)
    if frag is None:
        return fid, None
    changed = not has_data(ds, frag, names[0])  # never written: write it, so has_data tells the next run
    for name in names:
        if changed:
            break
        old = tbl.column(name) if name in tbl.column_names else pa.nulls(len(addr), new[name].type)
        same = pc.fill_null(pc.equal(old, new[name]), False).to_numpy(zero_copy_only=False)
        both_null = pc.is_null(old).to_numpy(zero_copy_only=False) & pc.is_null(new[name]).to_numpy(zero_copy_only=False)
        changed = not bool((same | both_null).all())
    if not changed:
        return fid, None
    order = np.full(frag.physical_rows, -1, np.int64)
    order[addr & 0xFFFFFFFF] = np.arange(len(addr))
    idx = pa.array(order, mask=order < 0)
    return fid, write_file(ds, fid, pa.table({n: new[n].take(idx) for n in names}), storage_options)


def physical(frag_rows: int, offsets: Any, table: pa.Table) -> pa.Table:
    """Rows at live-row offsets -> a table over all physical rows of the fragment (deleted rows null)."""
    order = np.full(frag_rows, -1, np.int64)
    order[np.asarray(offsets, np.int64)] = np.arange(len(offsets))
    return table.take(pa.array(order, mask=order < 0))


def _undeclare_if_empty(lake: "Store", names: Sequence[str], config_hash: str | None = None) -> None:
    """Drop ``names`` if no fragment holds data for them (metadata only; retried on conflict); with
    ``config_hash``, only while they hold that config (not another run's, declared meanwhile)."""
    def drop() -> None:
        ds = lake.dataset()
        present = [n for n in names if n in ds.schema.names]
        if present and config_hash is not None and \
                (field_provenance(ds.schema.field(present[0]), strict=False) or {}).get("config_hash") != config_hash:
            return
        if present and not any(has_data(ds, f, present[0]) for f in ds.get_fragments()):
            _forget(ds, present).drop_columns(present)

    try:
        retry_on_conflict(drop)
    except (OSError, ValueError):  # (ValueError: Lance's, where the store went away meanwhile)
        pass  # best effort: the error being raised is the one to report


class Checkpoint:
    """Finished batches of one fragment, kept on local disk until the fragment's commit lands.

    A killed run resumes from here, so it recomputes at most the batches in flight. The folder
    name includes the fragment's live row count, deletion file and first data file, so a fragment
    that changed meanwhile starts afresh, and so does a table made again at the same place (an
    object-store lake keeps its checkpoints in a local cache by URI: a lake emptied and ingested
    anew from other photos resumed the old photos' vectors).
    """

    def __init__(self, lake: "Store", key: str):
        # A branch has fragments of its own under the same numbers: keep its checkpoints apart.
        self.root = checkpoint_root(lake.uri, getattr(lake, "branch", None)) / key
        # fragment -> the earliest version a loaded batch was computed from (its commit records it:
        # an input rewritten in place between a kill and the resume leaves those rows stale)
        self.computed_from: dict[int, int] = {}

    def _dir(self, frag: lance.LanceFragment) -> Path:
        d = frag.metadata.deletion_file
        tag = f"d{d.id}-{d.read_version}" if d is not None else "d0"
        files = frag.metadata.files
        made = hashlib.sha256(files[0].path.encode()).hexdigest()[:12] if files else "none"  # (new for every write)
        return self.root / f"f{frag.fragment_id}-r{frag.count_rows()}-{tag}-{made}"

    def load(self, frag: lance.LanceFragment) -> dict[int, pa.Table]:
        """Saved batches of ``frag`` by logical start offset."""
        d = self._dir(frag)
        out = {}
        for p in sorted(d.glob("*.arrow")) if d.is_dir() else []:
            with pa.ipc.open_file(p) as reader:
                table = reader.read_all()
            meta = dict(table.schema.metadata or {})
            read = meta.pop(COMPUTED_FROM.encode(), None)
            if read is not None:
                self.computed_from[frag.fragment_id] = min(int(read), self.computed_from.get(frag.fragment_id, int(read)))
            out[int(p.stem)] = table.replace_schema_metadata(meta or None)
        return out

    def save(self, frag: lance.LanceFragment, start: int, table: pa.Table, computed_from: int | None = None) -> None:
        """Keep a finished batch of ``frag`` (computed from version ``computed_from``)."""
        d = self._dir(frag)
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / f"{start:010d}.tmp"
        if computed_from is not None:
            table = table.replace_schema_metadata({**(table.schema.metadata or {}), COMPUTED_FROM: str(computed_from)})
        with pa.ipc.new_file(tmp, table.schema) as writer:
            writer.write_table(table)
        os.replace(tmp, d / f"{start:010d}.arrow")  # atomic: a kill never leaves half a batch

    def prune(self, keep: set[int], claims: "FragmentClaims") -> None:
        """Drop the saved batches of every fragment but ``keep``'s (this run's) and those a live run
        holds a claim on (``claims``: a ``--recompute`` of fragments this run finds filled): a run
        killed between a fragment's commit and the drop of its batches left them behind for good,
        once a later run had other fragments to compute."""
        for d in self.root.iterdir() if self.root.is_dir() else ():
            fid = _fragment_of(d)
            if d.is_dir() and fid is not None and fid not in keep and claims.holder(fid) is None:
                self.computed_from.pop(fid, None)
                shutil.rmtree(d, ignore_errors=True)

    def drop(self, frag: lance.LanceFragment) -> None:
        """Drop the saved batches of ``frag`` (its values are committed)."""
        self.computed_from.pop(frag.fragment_id, None)
        shutil.rmtree(self._dir(frag), ignore_errors=True)


def _fragment_of(folder: Path) -> int | None:
    """The fragment id of a :class:`Checkpoint` folder (``f<id>-r<rows>-...``, as ``_dir`` names it)."""
    fid = folder.name.split("-")[0][1:]
    return int(fid) if fid.isdigit() else None


CLAIM_WRITE_GRACE = 5.0  # seconds an empty claim file is its taker's (between its create and its write)


class FragmentClaims:
    """Which run is computing which fragments of a column, so that two runs of one stage at once
    (the same ``recaption`` started twice, two people embedding one shared lake) do not both
    compute a fragment: the second commit replaced the first, and the endpoint calls or GPU time
    of one were wasted. A claim is a file per fragment beside the checkpoints, made exclusively
    (``O_EXCL``), naming its run (host, pid) and kept fresh by a thread while the run lives
    (:meth:`hold`). Another run skips a fragment whose claim is fresh; a claim goes stale when its
    process has died (same host) or it was not refreshed for ``ttl`` seconds (another host), and is
    then taken over. Claims coordinate runs that share the checkpoint folder: the lake folder, or
    for an object store this machine's cache (runs on other machines are told apart by Lance's
    commits alone, as before)."""

    def __init__(self, lake: "Store", key: str, *, ttl: float = 120.0, refresh: float = 20.0):
        self.lake = lake
        self.root = checkpoint_root(lake.uri, getattr(lake, "branch", None)) / "claims" / key
        self.ttl, self.every = ttl, refresh
        self.me = f"{host_name()} {os.getpid()} {os.urandom(4).hex()}"
        self.mine: list[Path] = []
        self._stop: Any = None

    def _path(self, fid: int) -> Path:
        return self.root / f"f{fid}"

    def _owner(self, path: Path) -> str | None:
        """Who holds ``path`` while the claim is fresh, else None (free or stale)."""
        try:
            owner, age = path.read_text(), time.time() - path.stat().st_mtime
        except (OSError, UnicodeDecodeError):  # (gone meanwhile: free)
            return None
        if not owner:  # made and not written yet (the taker writes at once), or its taker was killed
            # (host and process not known yet: "? starting"; it held a fragment for the whole ttl, naming no one)
            return "? starting" if age < CLAIM_WRITE_GRACE else None
        host, _, rest = owner.partition(" ")
        pid = rest.split(" ")[0]
        if host == host_name() and pid.isdigit() and not process_alive(int(pid)):
            return None  # its process is gone (kill -9): free at once
        return owner if age < self.ttl else None

    def sweep(self, keep: Iterable[int] = ()) -> None:
        """Remove the claims whose run is gone (its process dead, or not refreshed for ``ttl``):
        a killed run's claims on fragments it had committed, and its :class:`StageRun` slot, were
        never taken again, so never removed (files piled up under the checkpoints). ``keep``: the
        fragments the caller will :meth:`take` (it takes a stale claim over itself: a sweep beside a
        taker could remove the claim the taker had just made in its place)."""
        kept = {f"f{fid}" for fid in keep}
        for path in self.root.glob("f*") if self.root.is_dir() else ():
            if path.name not in kept and self._owner(path) is None:
                with _suppress(OSError):
                    path.unlink()

    def holder(self, fid: int) -> str | None:
        """Who holds fragment ``fid``'s claim while it is fresh (this run included), else None."""
        return self._owner(self._path(fid))

    def take(self, fids: Sequence[int]) -> tuple[list[int], dict[int, str]]:
        """Claim what is free of ``fids``: (the ids claimed, {id: owner} of those another run holds)."""
        if not self.root.is_dir():  # claims are made only beside a lake that is there (a LakeError if it is gone):
            self.lake.dataset()     # a curate of a deleted lake made LAKE/_lakecurate/ again in its place
        self.root.mkdir(parents=True, exist_ok=True)
        got, elsewhere = [], {}
        for fid in fids:
            path = self._path(fid)
            for _ in range(2):  # free: create; stale: remove, then create (one of two racing takers wins)
                try:
                    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                except FileExistsError:
                    owner = self._owner(path)
                    if owner is not None:
                        elsewhere[fid] = owner
                        break
                    with _suppress(FileNotFoundError):
                        path.unlink()
                    continue
                with os.fdopen(fd, "w") as f:
                    f.write(self.me)
                got.append(fid)
                self.mine.append(path)
                break
        return got, elsewhere

    def hold(self) -> None:
        """Keep this run's claims fresh (a daemon thread) until :meth:`release`."""
        import threading

        self._stop = threading.Event()

        def beat() -> None:
            while not self._stop.wait(self.every):
                for path in self.mine:
                    with _suppress(OSError):
                        os.utime(path)
        threading.Thread(target=beat, name="fragment-claims", daemon=True).start()

    def release(self) -> None:
        if self._stop is not None:
            self._stop.set()
        for path in self.mine:
            with _suppress(OSError):
                if path.read_text() == self.me:  # (taken over meanwhile: not ours to remove)
                    path.unlink()
        self.mine = []


class StageRun:
    """A run of a stage that decides over the whole table (dedup, curate, cluster, rebalance,
    sequence) holds a claim while it lives (:class:`FragmentClaims`' folder ``run-<stage>``, a slot
    a run), so that what finds its columns declared and not written yet tells a run in progress
    from one that was killed: a dedup beside another's said "stopped before writing its decision
    (killed?)" and refused, while the other was about to commit. The facade holds it around each
    such stage (``with StageRun(lake, "dedup"):``)."""

    def __init__(self, lake: "Store", stage: str):
        self.claims = FragmentClaims(lake, f"run-{stage}")

    def __enter__(self) -> "StageRun":
        with _suppress(OSError):  # (a lake this process cannot write claims beside: the run goes on unclaimed)
            self.claims.sweep()  # (a killed run's slot)
            self.claims.take([int.from_bytes(os.urandom(6), "big")])
            self.claims.hold()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.claims.release()


def stage_running(lake: "Store", stage: str) -> list[str]:
    """Other processes' runs of ``stage`` in progress on this lake ("host pid"), as their
    :class:`StageRun` claims say (a claim whose process died is not one)."""
    claims = FragmentClaims(lake, f"run-{stage}")
    me = f"{host_name()} {os.getpid()}"
    try:
        paths = sorted(claims.root.glob("f*"))
    except OSError:
        return []
    owners = (claims._owner(p) for p in paths)
    return sorted({" ".join(o.split(" ")[:2]) for o in owners if o is not None} - {me})


def host_name() -> str:
    """This host's name as claims and staging folders record it (no spaces)."""
    import socket

    return socket.gethostname().replace(" ", "_") or "host"


def fragment_groups(frags: Sequence[lance.LanceFragment], rows: int, counts: Sequence[int] | None = None) -> list[list[int]]:
    """The ids of ``frags`` in order, cut into groups of at least ``rows`` rows (the last may hold
    fewer): a task's share of a stage that reads or writes a fragment at a time. ``counts``: the
    fragments' rows, when known."""
    groups: list[list[int]] = [[]]
    held = 0
    for i, frag in enumerate(frags):
        if held >= rows:
            groups.append([])
            held = 0
        groups[-1].append(frag.fragment_id)
        held += counts[i] if counts is not None else frag.count_rows()
    return [g for g in groups if g]


def embedding_matrix(col: "pa.ChunkedArray | pa.Array", dtype: Any = np.float32) -> tuple[np.ndarray, np.ndarray]:
    """(rows x d matrix, valid mask) of a fixed-size-list embedding column; null rows read as zeros.
    ``dtype=None`` keeps the stored type (float16 halves the memory of a large lake)."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    valid = ~np.asarray(arr.is_null().to_numpy(zero_copy_only=False), bool)
    size = arr.type.list_size
    values = arr.values.slice(arr.offset * size, len(arr) * size)  # a sliced array's own slots only
    x = np.asarray(values.to_numpy(zero_copy_only=False), dtype=dtype).reshape(-1, size)
    return x, valid


def column_valid(ds: "lance.LanceDataset", column: str, batch_rows: int = 65536) -> np.ndarray:
    """One bool per row of ``ds``: the column is not null there (read in batches, never whole)."""
    parts = [~np.asarray(b.column(0).is_null().to_numpy(zero_copy_only=False), bool)
             for b in ds.to_batches(columns=[column], batch_size=batch_rows)]
    return np.concatenate(parts) if parts else np.zeros(0, bool)


def vector_rows(ds: "lance.LanceDataset", column: str, batch_rows: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """(valid, broken): one bool per row of ``ds`` each, in one streamed pass over the vector
    column ``column``: it holds a vector there; that vector has a NaN or infinite entry (written
    outside lakecurate, or by a model that overflowed: dedup's check and faiss refused it with a
    traceback, and evaluate's similarities, NaN, ranked every caption first)."""
    valid, broken = [], []
    for b in ds.to_batches(columns=[column], batch_size=batch_rows):
        col = b.column(0)
        ok = ~np.asarray(col.is_null().to_numpy(zero_copy_only=False), bool)
        bad = np.zeros(len(col), bool)
        if ok.any():
            flat = col.flatten() if col.null_count == 0 else col.filter(pa.array(ok)).flatten()
            values = np.asarray(flat.to_numpy(zero_copy_only=False)).reshape(int(ok.sum()), -1)
            if values.dtype == np.float16:  # all exponent bits set: inf or NaN (3x faster than isfinite)
                bad[ok] = ((values.view(np.uint16) & 0x7C00) == 0x7C00).any(axis=1)
            else:
                bad[ok] = ~np.isfinite(values).all(axis=1)
        valid.append(ok)
        broken.append(bad)
    return (np.concatenate(valid), np.concatenate(broken)) if valid else (np.zeros(0, bool), np.zeros(0, bool))


class LanceVectors:
    """An embedding column of one dataset version as a vector source for :mod:`lakecurate.neardup`
    (``semantic_pairs``): streamed in batches or taken by position, never read whole, so a join's
    memory does not grow with the lake. ``rows``: the (sorted) dataset positions it covers, e.g.
    the rows that have a vector; default every row.

    Example::

        src = LanceVectors(lake.dataset(), "offline_image", rows=np.flatnonzero(valid))
        i, j, cos = semantic_pairs(src, 0.9)  # i, j: positions in rows
    """

    def __init__(self, ds: "lance.LanceDataset", column: str, rows: np.ndarray | None = None, *,
                 storage_options: dict[str, str] | None = None) -> None:
        self.ds, self.column, self.storage_options = ds, column, storage_options
        self.rows = None if rows is None else np.asarray(rows, np.int64)
        self.n = ds.count_rows() if rows is None else len(self.rows)
        self.d = ds.schema.field(column).type.list_size

    def spec(self) -> tuple:
        """What another process needs to read the same vectors (:meth:`from_spec`): the dataset's
        URI and version, its storage options, the column and the covered rows."""
        return (self.ds.uri, self.ds.version, self.storage_options, self.column, self.rows)

    def part(self, lo: int, hi: int) -> "LanceVectors":
        """The covered positions lo..hi-1 as a source of their own (a task's share: its spec holds
        only its rows)."""
        rows = np.arange(lo, min(hi, self.n), dtype=np.int64) if self.rows is None else self.rows[lo:hi]
        return LanceVectors(self.ds, self.column, rows, storage_options=self.storage_options)

    @classmethod
    def from_spec(cls, spec: tuple) -> "LanceVectors":
        uri, version, storage_options, column, rows = spec
        ds = lance.dataset(uri, version=version, storage_options=storage_options)
        return cls(ds, column, rows, storage_options=storage_options)

    def take(self, rows: np.ndarray) -> np.ndarray:
        at = np.asarray(rows, np.int64) if self.rows is None else self.rows[rows]
        if not len(at):
            return np.zeros((0, self.d), np.float32)
        return embedding_matrix(self.ds.take(at, columns=[self.column]).column(0), dtype=None)[0]

    def batches(self, size: int, lo: int = 0, hi: int | None = None):
        """(first position, vectors) for every covered row, in order; ``lo``/``hi``: only the
        covered positions lo..hi-1 (a part of the column for one task)."""
        hi = self.n if hi is None else min(hi, self.n)
        if hi <= lo:
            return
        first = lo if self.rows is None else int(self.rows[lo])  # dataset rows scanned: first..last
        last = hi - 1 if self.rows is None else int(self.rows[hi - 1])
        seen, done = first, lo  # dataset rows scanned, covered positions yielded
        whole = first == 0 and last == self.ds.count_rows() - 1  # a plain scan, as measured
        span = {} if whole else {"offset": first, "limit": last - first + 1}
        for b in self.ds.to_batches(columns=[self.column], batch_size=size, **span):
            x = embedding_matrix(b.column(0), dtype=None)[0]
            if self.rows is None:
                yield done, x
                done += len(x)
            else:
                upto = int(np.searchsorted(self.rows, seen + len(x)))
                if upto > done:
                    yield done, x[self.rows[done:upto] - seen]
                done = upto
            seen += b.num_rows


class LanceTexts:
    """A string column of one dataset version as a text source for :mod:`lakecurate.neardup`
    (``caption_pairs``, dedup's minhash): streamed in batches, a range of rows at a time, never
    read whole; another process (a Ray task) opens the same version from :meth:`spec`.

    Example::

        i, j, jac = caption_pairs(LanceTexts(lake.dataset(), "caption"), 0.35)
    """

    def __init__(self, ds: "lance.LanceDataset", column: str, *,
                 storage_options: dict[str, str] | None = None) -> None:
        self.ds, self.column, self.storage_options = ds, column, storage_options
        self.n = ds.count_rows()

    def spec(self) -> tuple:
        """The dataset's URI and version, its storage options and the column (:meth:`from_spec`)."""
        return (self.ds.uri, self.ds.version, self.storage_options, self.column)

    @classmethod
    def from_spec(cls, spec: tuple) -> "LanceTexts":
        uri, version, storage_options, column = spec
        return cls(lance.dataset(uri, version=version, storage_options=storage_options), column,
                   storage_options=storage_options)

    def batches(self, size: int, lo: int = 0, hi: int | None = None) -> Iterator[tuple[int, list]]:
        """(first row, the rows' values as Python strings or None) for rows lo..hi-1, in order."""
        hi = self.n if hi is None else min(hi, self.n)
        if hi <= lo:
            return
        span = {} if lo == 0 and hi == self.n else {"offset": lo, "limit": hi - lo}
        done = lo
        for b in self.ds.to_batches(columns=[self.column], batch_size=size, **span):
            yield done, b.column(0).to_pylist()
            done += b.num_rows
