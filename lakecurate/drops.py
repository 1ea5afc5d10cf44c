"""Dropping derived columns the lakecurate way: ``lakecurate drop LAKE COLUMN...``.

A drop is metadata only (older versions and tags keep the values: ``lakecurate restore`` brings
them back), and forgets the records of the dropped sets first (:func:`lakecurate.columns.drop_present`),
so ``status`` does not list them as dropped outside lakecurate. A set another writer dropped
(Lance, LanceDB; ``status`` lists it "dropped") has only its record left: naming one of its
columns forgets it. Everything is checked before anything is written:

* only derived columns (with provenance): the source columns are never deleted, a column another
  writer added is that writer's to drop;
* a set a stage declared together (an embedding's columns, ``keep``/``drop_reason``) is dropped
  whole: naming some of it is refused, naming the rest (a run makes the set again whole);
* a decision other stages read (``keep``, ``dup_keep``, ``concept``) may be dropped: the stages
  built on it are then stale in ``status`` (their input is no longer in the table), and the result
  names them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from lakecurate import columns, graph
from lakecurate.errors import LakeError
from lakecurate.options import texts
from lakecurate.schema import PAIRS_SCHEMA

if TYPE_CHECKING:
    import lance

    from lakecurate.store import Store


def derived_sets(ds: "lance.LanceDataset") -> dict[str, list[str]]:
    """Derived column -> the columns of ``ds`` declared with it (itself included), as its provenance
    records them; a column declared before the set was recorded: its graph node's columns."""
    names = set(ds.schema.names)
    by_node = {c: n.columns for n in graph.nodes(ds) for c in n.columns}
    out: dict[str, list[str]] = {}
    for f in ds.schema:
        prov = columns.field_provenance(f, strict=False)
        if not prov or not prov.get("stage"):
            continue
        declared = columns.declared_columns(f)
        out[f.name] = [c for c in declared if c in names] if declared else list(by_node.get(f.name, [f.name]))
    return out


def drop_columns(lake: "Store", names: Sequence[str]) -> dict[str, Any]:
    """Drop the derived columns ``names`` of ``lake`` (metadata only) and forget the record of a set
    another writer dropped that one of them names. Returns ``dropped`` and ``forgot`` (column names),
    ``stale`` (the stages built on a dropped column: stage, columns, inputs), ``version`` (the
    latest now) and ``kept_in`` (the version before the drop, which still has the columns; None
    when nothing was dropped). Refused, nothing written: a source column, a column lakecurate did
    not make, an unknown name, part of a set.

    Example::

        drop_columns(lake, ["caption_redacted"])  # {'dropped': ['caption_redacted'], 'forgot': [], ...}
    """
    wanted = list(dict.fromkeys(texts("column names", names)))
    if not wanted:
        raise LakeError("name the columns to drop (see: lakecurate status LAKE)")
    ds = lake.dataset()
    columns.check_table(lake, ds)
    present = set(ds.schema.names)
    sets = derived_sets(ds)
    gone = {c: n for n in graph.dropped_nodes(ds) for c in n.columns}
    listed = ", ".join(sets) or "none"

    source = [n for n in wanted if n in PAIRS_SCHEMA.names]
    if source:
        raise LakeError(f"{', '.join(source)} {'are source columns' if len(source) > 1 else 'is a source column'} of "
                        f"lake '{lake.uri}': source rows and columns are never deleted; lakecurate drops derived "
                        f"columns only (this lake's: {listed})")
    foreign = [n for n in wanted if n in present and n not in sets]
    if foreign:
        raise LakeError(f"{', '.join(foreign)} in lake '{lake.uri}' {'were' if len(foreign) > 1 else 'was'} not made "
                        f"by lakecurate (no provenance): drop {'them' if len(foreign) > 1 else 'it'} with the tool "
                        f"that added {'them' if len(foreign) > 1 else 'it'} (Lance, LanceDB); lakecurate's derived "
                        f"columns: {listed}")
    unknown = [n for n in wanted if n not in present and n not in gone]
    if unknown:
        outside = f"; listed dropped (another writer dropped them): {', '.join(gone)}" if gone else ""
        raise LakeError(f"lake '{lake.uri}' has no column {', '.join(repr(n) for n in unknown)}; its derived "
                        f"columns: {listed}{outside}")
    to_drop = [n for n in wanted if n in present]
    for name in to_drop:
        rest = [c for c in sets[name] if c not in to_drop]
        if rest:
            whole = sets[name]
            cmd = f"{graph.lakecurate_on(lake)} drop {lake.shell} {' '.join(dict.fromkeys(to_drop + whole))}"
            raise LakeError(f"{name} is one of the {len(whole)} columns {columns.field_provenance(ds.schema.field(name), strict=False).get('stage')} "
                            f"declared together ({', '.join(whole)}): a set is dropped whole (its next run makes it "
                            f"again whole); name the rest too: {cmd}")
    forgot = list(dict.fromkeys(c for n in wanted if n in gone for c in gone[n].columns))

    before = ds.version
    if forgot:
        columns.forget(lake, forgot)
    if to_drop:
        columns.drop_present(lake, to_drop)
    after = lake.dataset()
    stale = [{"stage": n.stage, "columns": n.columns, "inputs": [s for s in n.sources if s in to_drop]}
             for n in graph.nodes(after) if n.stage not in graph.MANUAL and set(n.sources) & set(to_drop)]
    return {"dropped": to_drop, "forgot": forgot, "stale": stale, "version": after.version,
            "kept_in": before if to_drop else None}


def describe(out: dict[str, Any]) -> str:
    """The one line ``lakecurate drop`` prints for :func:`drop_columns`' result."""
    parts = []
    if out["dropped"]:
        parts.append(f"dropped {', '.join(out['dropped'])} (version {out['kept_in']} still has them)")
    if out["forgot"]:
        parts.append(f"forgot {', '.join(out['forgot'])} (dropped outside lakecurate)")
    for st in out["stale"]:
        parts.append(f"{st['stage']} ({', '.join(st['columns'])}) is stale now: built on {', '.join(st['inputs'])}")
    return "; ".join(parts)
