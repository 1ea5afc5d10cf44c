"""The stage graph: which derived columns are current, stale or incomplete, and why (ground floor).

Every derived column carries provenance (stage, config, source columns). The columns one stage run
wrote with one config form a *node*; its inputs are its source columns, which are base columns or
other nodes' outputs. From the lake's own commit log (which commit wrote which column in which
fragment, and which version that writer had read), a node is

* **current**: none of its inputs was written after the node read them;
* **stale**: an input was rewritten after (a new recipe rewrote ``keep`` after rebalance chose
  among the old ``keep``): its values are not what running its stage now would give;
* **incomplete**: rows exist that the node has no value for (a per-row stage, e.g. embed, after
  an ingest; a global stage's new rows show up as its inputs being newer, so as stale);
* and a node whose input node is stale or incomplete is **behind** through it (named).

Per-row stages (embed, signals, features) are judged per fragment: new rows make them incomplete,
not stale. Global stages (dedup, curate, concepts, rebalance, sequence) see every row, so any newer
input makes them stale; they record the version they read in their columns' metadata
(``lakecurate.computed``), so a run that changed no value still counts as a run.

Example::

    for s in graph.states(lake, lake.dataset()):
        print(s.node.stage, s.state, s.reasons)
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lakecurate.columns import (COMPUTED_FROM, DECLARED_KEY, REPLACING_KEY, config_change, declared_columns, field_provenance, file_digest, fragments_to_fill,
                                has_data, hash_config, node_records, stage_running, vector_rows)
from lakecurate.errors import LakeError
from lakecurate.names import (DEDUP_OPTIONS, dedup_keyword, PRODUCERS, RECIPES, TINY_RANDOM, Produce, decided, decision, embedding_columns,
                              embedding_prefixes, foreign_decisions)
from lakecurate.schema import PAIRS_SCHEMA
from lakecurate.store import retry_on_conflict

if TYPE_CHECKING:
    import numpy as np
    import lance
    import pyarrow as pa

    from lakecurate.store import Store

PER_ROW = ("embed", "signals-caption", "signals-image", "signals-copy", "signals-redact", "signals-faces", "signals-text",
           "recaption", "embed-caption", "feature")
GLOBAL = ("dedup", "curate", "concepts", "rebalance", "sequence")
# Columns people write (a reviewer's verdicts): no inputs, a null is "not reviewed", never missing work.
MANUAL = ("review",)
# The version a global stage read, stored beside (not inside) the provenance: the provenance and
# its config hash stay as they were, and a recompute drops the marker with the column.
COMPUTED_KEY = "lakecurate.computed"
# Pipeline order of the stages, for display and for "run this and everything after it".
ORDER = ("embed", "feature", "signals-caption", "signals-image", "signals-copy", "signals-redact", "signals-faces",
         "signals-text", "recaption", "embed-caption", "dedup", "review", "curate", "concepts", "rebalance", "sequence")

Write = tuple[int, int]  # (version that committed the data, version its writer had read)

# What this code computes a stage with, for the stages whose result is their code's: functions giving
# stage -> {"config": the config a signal stage computes with} or {"steps": curate's step name ->
# ``Filter.version``}. The ground floor imports no stage, so the facade registers them (lake.py), and
# every reader of the graph (status, export, rebalance, sequence, evaluate, the loader) calls a column
# another lakecurate computed or decided differently stale (:func:`by_other_code`, :func:`other_steps`).
CODE: list[Callable[[], dict[str, dict[str, Any]]]] = []


def code_now() -> dict[str, dict[str, Any]]:
    """stage -> what this code computes it with (the registered :data:`CODE`)."""
    return {stage: ident for fn in CODE for stage, ident in fn().items()}


@dataclass
class Node:
    """The columns one stage run wrote with one config, and the columns it read."""

    stage: str
    columns: list[str]
    sources: list[str]
    prov: dict[str, Any]

    @property
    def per_row(self) -> bool:
        return self.stage not in GLOBAL


@dataclass
class NodeState:
    node: Node
    state: str  # current | stale | incomplete | behind | dropped (every column gone: another writer dropped or renamed
    # them; or one of a review's, which takes no mark until they are whole)
    reasons: list[str] = field(default_factory=list)
    rows_missing: int = 0
    computed_from: int | None = None  # the version the node's values were computed from (global stages)
    fix: str = ""
    rows_failed: int = 0  # rows without a value whose error may pass if computed again (an endpoint's)
    rows_stale: int = 0  # rows of the fragments whose values are stale (a per-row stage's plain run redoes them)
    retry: str = ""  # ...and the command that computes them again
    renamed: dict[str, str] = field(default_factory=dict)  # its columns another writer renamed: old -> new name
    by_code: bool = False  # stale only because this code computes it otherwise (not shown by the commit log)
    running: list[str] = field(default_factory=list)  # incomplete: the runs deciding it now ("host pid")
    empty_view: str = ""  # built on a current curate that kept no row: why no run can make it current (its fix says so)

    def to_dict(self) -> dict[str, Any]:
        return {"stage": self.node.stage, "columns": self.node.columns, "sources": self.node.sources,
                "config_hash": self.node.prov.get("config_hash"), "state": self.state, "reasons": self.reasons,
                "rows_missing": self.rows_missing, "rows_stale": self.rows_stale, "computed_from": self.computed_from,
                "fix": self.fix,
                "rows_failed": self.rows_failed, "retry": self.retry, "renamed": self.renamed,
                **({"running": self.running} if self.running else {}),
                **({"empty_view": self.empty_view} if self.empty_view else {})}


def where_columns(where: str | None, names: Iterable[str]) -> list[str]:
    """The columns of ``names`` a SQL condition mentions (words compared to the schema, so no parser
    is needed for a condition that already ran), in any case: Lance's filters and DataFusion's
    SQL find ``KEEP`` as ``keep``, so it must be checked as ``keep`` is."""
    import re

    if not where:
        return []
    words = {w.lower() for w in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", where)}
    return [n for n in names if n.lower() in words]


def nodes(ds: "lance.LanceDataset") -> list[Node]:
    """The derived-column nodes of a table version, in pipeline order."""
    groups: dict[str, Node] = {}
    names = ds.schema.names
    for f in ds.schema:
        prov = field_provenance(f, strict=False)
        if not prov or not prov.get("stage"):
            continue
        declared = prov.get(DECLARED_KEY)
        if isinstance(declared, list) and f.name not in declared:
            # another writer renamed it (Lance's alter_columns keeps a field's metadata): lakecurate
            # reads the name it declared, so this is another writer's column (see :func:`renamed`)
            continue
        key = json.dumps([prov.get("stage"), prov.get("config_hash"), prov.get("source_columns")], sort_keys=True)
        if key not in groups:
            sources = list(prov.get("source_columns") or [])
            # rebalance and sequence chose among the rows of a view ("where"); lakes made before the
            # view was recorded as a source still name it in the config.
            view = (prov.get("config") or {}).get("where")
            sources += [c for c in where_columns(view, names) if c not in sources]
            # dedup's decision ranks a group's members by an embedding's score; lakes made before
            # the score was recorded as a source name it only in the config
            rank_by = (prov.get("config") or {}).get("rank_by")
            sources += [rank_by] if rank_by in names and rank_by not in sources else []
            if prov["stage"] == "rebalance" and view is None and decided(ds.schema, "keep") and "keep" not in sources:
                # it chose among every row with a concept (no recipe had run); a recipe run since
                # narrows the candidates to `keep`: its rebalance_keep is stale (it still held the
                # rows the recipe dropped, and export shipped them)
                sources.append("keep")
            groups[key] = Node(prov["stage"], [], sources, prov)
        groups[key].columns.append(f.name)
    out = list(groups.values())
    for n in out:  # a stage that reads its own previous values (to write only changes) is not its own input
        n.sources = [s for s in n.sources if s not in n.columns]
    out.sort(key=_order)
    return out


def _order(n: Node) -> int:
    return ORDER.index(n.stage) if n.stage in ORDER else len(ORDER)


def dropped_nodes(ds: "lance.LanceDataset") -> list[Node]:
    """The column sets lakecurate declared on ``ds`` of which no column is left: another writer
    (Lance, LanceDB) dropped them whole, so their fields no longer say what made them; the table's
    record of each declare does (:data:`lakecurate.columns.NODE_KEY`). In pipeline order."""
    # (a `keep` another writer added after dropping curate's is not curate's: its decision is still dropped)
    names = set(ds.schema.names) - set(foreign_decisions(ds.schema))
    out = []
    for prov in node_records(ds).values():
        cols = [str(c) for c in prov[DECLARED_KEY]]
        if cols and not names & set(cols):
            out.append(Node(str(prov["stage"]), cols, [str(c) for c in prov.get("source_columns") or [] if c not in cols],
                            prov))
    return sorted(out, key=_order)


def at_version(ds: "lance.LanceDataset", n: int) -> tuple["lance.LanceDataset", str | None] | None:
    """Version ``n`` of ``ds``'s history: of its own branch (name None), or, for a version before a
    branch was made, of the branch it was made from (its name: ``main`` or the parent's), whose
    numbers a branch's log begins with (:func:`commit_log`); None where it is not readable (cleaned
    up)."""
    try:
        return ds.checkout_version(n), None
    except Exception:  # noqa: BLE001 - a parent's version, or cleaned up
        pass
    up = _parent(ds, ds)
    if up is None:
        return None
    try:
        return up[0].checkout_version(n), _branch_of(up[0]) or "main"
    except Exception:  # noqa: BLE001 - cleaned up since
        return None


def _schema_versions(ds: "lance.LanceDataset") -> Iterator[tuple[int, "lance.LanceDataset | None"]]:
    """Newest first: each version of ``ds``'s log whose commit may change the columns (added by a
    Merge, dropped or renamed by a Project; an overwrite, a restore, a clone), opened (None where
    that version is not readable: cleaned up)."""
    for n, tx in reversed(commit_log(ds)):
        if tx is not None and type(tx.operation).__name__ in ("Project", "Merge", "Overwrite", "Restore", "Clone"):
            then = at_version(ds, n)
            yield n, (then[0] if then is not None else None)


def _schema_changes(ds: "lance.LanceDataset") -> Iterator[tuple[int, "pa.Schema | None"]]:
    """:func:`_schema_versions`, each with its schema."""
    for n, then in _schema_versions(ds):
        yield n, (then.schema if then is not None else None)


SOURCE_COLUMNS = frozenset(PAIRS_SCHEMA.names)  # what ingest writes: no stage computes them again


def renamed(ds: "lance.LanceDataset", columns: Iterable[str]) -> dict[str, tuple[str, int | None]]:
    """Those of ``columns`` that ``ds`` lacks because another writer renamed them (Lance's
    ``alter_columns``, LanceDB's ``alter_columns``): old name -> (the name now, the version whose
    commit renamed it, None where the log cannot tell). Told by Lance's own record, not by names:
    a rename keeps a field's id, so the field the last version that had the old name gave that
    name is still in ``ds`` under another (a column dropped, then added again, has a new id)."""
    want = [c for c in columns if c not in ds.schema.names]
    if not want:
        return {}
    now = _field_names(ds)
    out: dict[str, tuple[str, int | None]] = {}
    later = None  # the schema change after the one looked at: where the name went
    for n, then in _schema_versions(ds):
        if then is None:  # (cleaned up: cannot tell)
            break
        for c in [c for c in want if c in then.schema.names]:
            new = now.get(then.lance_schema.field(c).id())
            if new is not None and new != c:
                out[c] = (new, later)
            want.remove(c)
        if not want:
            break
        later = n
    return out


def rename_back(ds: "lance.LanceDataset", names: dict[str, str]) -> str:
    """The pylance one-liner that renames columns back (``names``: old -> the name now)."""
    import shlex

    alts = ", ".join(repr({"path": new, "name": old}) for old, new in names.items())
    code = f"import lance; lance.dataset({ds.uri!r}).alter_columns({alts})"
    return f'python -c "{code}"' if not set(code) & set('"$`\\') else f"python -c {shlex.quote(code)}"


def _renamed_reason(ds: "lance.LanceDataset", node: Node, gone: Iterable[str],
                    how: str = "outside lakecurate") -> tuple[str, dict[str, str]] | None:
    """The reason a node whose columns ``gone`` another writer renamed is listed (None where none
    was renamed), and old -> new name: the rename, the two ways out (rename back; the fix, which
    computes them again and leaves the new names as another writer's columns)."""
    got = renamed(ds, gone)
    if not got:
        return None
    names = {old: new for old, (new, _) in got.items()}
    olds, news = ", ".join(names), ", ".join(names.values())
    whens = {v for _, v in got.values()}
    when = f" at version {next(iter(whens))}" if len(whens) == 1 and None not in whens else ""
    many = len(names) > 1
    dropped = [c for c in gone if c not in names]
    also = (f"; {', '.join(dropped)} {'were' if len(dropped) > 1 else 'was'} dropped" if dropped else "")
    declared = [str(c) for c in node.prov.get(DECLARED_KEY) or []] or list(names) + dropped
    # (a plain run declares its set again whole; a review's marks, which no run computes, are copied back)
    what = f"computes {', '.join(declared)} again" if node.stage not in MANUAL else \
        "writes the marks back from the last version that had them"
    return (f"its column{'s' if many else ''} {olds} {'were' if many else 'was'} renamed to {news}{when} {how}, and "
            f"lakecurate reads {olds}{also}: rename {'them' if many else 'it'} back ({rename_back(ds, names)}) or run "
            f"its fix, which {what} ({news} {'are' if many else 'is'} then another writer's "
            f"column{'s' if many else ''}, left as {'they are' if many else 'it is'})"), names


def dropped_at(ds: "lance.LanceDataset", node: Node) -> int | None:
    """The version whose commit left none of ``node``'s columns, the last such (lakecurate's own
    drop and declare may come before it: a --recompute); None where the log cannot tell."""
    since = int(node.prov.get("table_version") or 0)
    at = None
    for n, schema in _schema_changes(ds):
        if n <= since or schema is None:  # (cleaned up since: cannot tell)
            break
        if (set(schema.names) - set(foreign_decisions(schema))) & set(node.columns):
            break  # the columns were there: the drop is the commit after it
        at = n
    return at


def last_whole(ds: "lance.LanceDataset", node: Node) -> int | str | None:
    """The latest version that had all of ``node``'s columns (the version before the first drop of
    any of them, outside lakecurate or not): a number of ``ds``'s branch, or ``PARENT:N`` where it is
    a version of the branch it was made from (a branch made after the drop); None where the
    readable log cannot tell."""
    later = None  # the schema change after the one looked at
    for n, schema in _schema_changes(ds):
        if schema is None:
            return None
        if set(node.columns) <= set(schema.names):
            v = later - 1 if later is not None else n
            where = at_version(ds, v)
            return v if where is None or where[1] is None else f"{where[1]}:{v}"
        later = n
    return None


def _producers(ds: "lance.LanceDataset", node: Node, gone: list[str]) -> list[Node]:
    """The nodes that made ``node``'s inputs ``gone`` (dropped since, by ``lakecurate drop`` or
    another writer), as the version it was declared at records them."""
    then = at_version(ds, int(node.prov.get("table_version")))
    return [] if then is None else [n for n in nodes(then[0]) if set(n.columns) & set(gone)]


def _input_gone(lake: "Store", ds: "lance.LanceDataset", node: Node, readers: list[str]) -> NodeState:
    """A stage whose columns were dropped, its record forgotten (``lakecurate drop``; or another
    writer's drop, then ``lakecurate drop`` naming the set, which only forgets it), while others
    still read them: listed dropped, its fix first, so that theirs can run after it."""
    who = list(dict.fromkeys(readers))
    by = _dropped_by(ds, node)
    reads = f"{', '.join(who)} read{'s' if len(who) == 1 else ''} {'them' if len(node.columns) > 1 else 'it'}"
    return gone_whole(lake, ds, node, f"{by}, and {reads}" if by else f", and {reads}")


def _dropped_by(ds: "lance.LanceDataset", node: Node) -> str:
    """Who dropped ``node``'s columns, whose record is gone, in words ("" where the log cannot tell):
    lakecurate's drop forgets the record in the commit just before its drop; a record still there
    before the drop was forgotten after it (``lakecurate drop`` of a set another writer dropped)."""
    at = dropped_at(ds, node)
    before = at_version(ds, at - 1) if at is not None else None
    if before is None:
        return ""
    if any(set(map(str, p[DECLARED_KEY])) & set(node.columns) for p in node_records(before[0]).values()):
        return "outside lakecurate (`lakecurate drop` forgot its record since)"
    tx = dict(commit_log(ds)).get(at - 1)
    return "by lakecurate drop" if tx is not None and type(tx.operation).__name__ == "UpdateConfig" else ""


def _marks_fix(lake: "Store", back: int | None) -> str:
    """A review's fix while its marks are gone: write them back from ``back``, the latest version
    that had them all; where none is left, the review log lists what they were."""
    return f"{lakecurate_on(lake)} review {lake.shell} " + (f"--from-version {back}" if back is not None else "--history")


def gone_whole(lake: "Store", ds: "lance.LanceDataset", node: Node, how: str = "outside lakecurate") -> NodeState:
    """A node another writer dropped whole: computed again by its fix; a review's marks, which no
    run computes, are in the versions before the drop."""
    cols = ", ".join(node.columns)
    if node.prov.get(REPLACING_KEY):  # (columns.drop_replaced: its record stays until the run declares them again)
        how = ("by a lakecurate run replacing them (another config), which did not finish (killed, or still "
               "running: then wait for it)")
    moved = _renamed_reason(ds, node, node.columns) if how.startswith("outside lakecurate") else None
    if moved is not None:  # renamed, not dropped: one entry, under the names lakecurate reads
        st = NodeState(node, "dropped", [moved[0]], renamed=moved[1])
        st.rows_stale = ds.count_rows() if node.per_row else 0
        back = last_whole(ds, node) if node.stage in MANUAL else None
        st.fix = fix_command(lake, node, ds) if node.stage not in MANUAL else _marks_fix(lake, back)
        return st
    at = dropped_at(ds, node)
    when = f" at version {at}" if at is not None else ""
    how = how if how.startswith(",") else f" {how}"  # (who dropped them, where known; then who reads them)
    if node.stage in MANUAL:
        back = last_whole(ds, node)
        if back is None:  # (the versions that had them were cleaned up: the review log has what they held)
            return NodeState(node, "dropped", [f"its marks ({cols}) were dropped{when}{how}, and no "
                                               f"version left has them; the review log lists what they were"],
                             fix=_marks_fix(lake, None))
        return NodeState(node, "dropped", [f"its marks ({cols}) were dropped{when}{how}; they are still in "
                                           f"version {back}, whence its fix writes them back (one review action, "
                                           f"undone as any)"],
                         fix=_marks_fix(lake, back))
    st = NodeState(node, "dropped", [f"its column{'s' if len(node.columns) > 1 else ''} {cols} "
                                     f"{'were' if len(node.columns) > 1 else 'was'} dropped{when}{how}; "
                                     f"its fix computes {'them' if len(node.columns) > 1 else 'it'} again"])
    st.rows_stale = ds.count_rows() if node.per_row else 0
    st.fix = fix_command(lake, node, ds)
    return st


# ----------------------------------------------------------------------------- the commit log
def _field_names(ds: "lance.LanceDataset") -> dict[int, str]:
    """Field id -> top-level column name (nested ids map to their column)."""
    out: dict[int, str] = {}
    for name in ds.schema.names:
        stack = [ds.lance_schema.field(name)]
        while stack:
            f = stack.pop()
            out[f.id()] = name
            stack.extend(f.children())
    return out


def _schema_ids(schema: Any) -> set[int]:
    """The field ids of a transaction's ``LanceSchema`` (nested ones included); empty when it cannot
    be read (then nothing is taken for dropped)."""
    out: set[int] = set()
    try:
        stack = list(schema.fields())
        while stack:
            f = stack.pop()
            out.add(f.id())
            stack.extend(f.children())
    except Exception:  # noqa: BLE001 - another Lance's schema object: tell nothing
        return set()
    return out


_OP_IDS: dict[tuple[int, str], tuple[Any, frozenset[int]]] = {}


def _op_schema_ids(op: Any, attr: str) -> frozenset[int]:
    """:func:`_schema_ids` of a commit's operation's schema ``attr``, read once a process: the
    commits are read once (``_COMMITS``) and walked again for every version asked about (cleanup's
    stale check walks the log once a tag). Keyed by the operation, held so that its id stays its."""
    key = (id(op), attr)
    got = _OP_IDS.get(key)
    if got is None or got[0] is not op:
        if len(_OP_IDS) >= _COMMITS_KEPT:
            _OP_IDS.pop(next(iter(_OP_IDS)))
        got = _OP_IDS[key] = op, frozenset(_schema_ids(getattr(op, attr, None)))
    return got[1]


def _file_fields(frag: Any) -> set[int]:
    return {i for df in frag.files for i in df.fields}


_RESHAPING = {"Overwrite", "Append", "Update", "Delete", "Rewrite", "Restore", "Clone"}


_COMMITS: dict[tuple[str, int, str], tuple[Any, list[int] | None]] = {}
_COMMITS_KEPT = 50_000
# A branch's list of versions, shared by the readings of several of its versions inside
# :func:`one_listing` (cleanup's stale check reads every tag, and each reading listed every manifest
# again: most of its time). Per thread: another thread's questions list for themselves.
_LISTINGS: ContextVar[dict[str, list[dict[str, Any]]] | None] = ContextVar("lakecurate_listings", default=None)


@contextlib.contextmanager
def one_listing() -> Iterator[None]:
    """Within it, the commit log of each branch is listed once for all the versions asked about
    (listed again where a version asked about is newer than the list: a commit made meanwhile).
    Example: ``with one_listing(): [states(lake, lake.dataset(tag)) for tag in tags]``."""
    token = _LISTINGS.set({})
    try:
        yield
    finally:
        _LISTINGS.reset(token)


def _versions(uri_ds: "lance.LanceDataset", upto: int) -> list[dict[str, Any]]:
    """``uri_ds.versions()``, from :func:`one_listing`'s list where one is open and reaches ``upto``."""
    listings = _LISTINGS.get()
    if listings is None:
        return uri_ds.versions()
    listed = listings.get(uri_ds.uri)
    if not listed or listed[-1]["version"] < upto:
        listed = listings[uri_ds.uri] = uri_ds.versions()
    return listed


def _history(ds: "lance.LanceDataset", uri_ds: "lance.LanceDataset", upto: int) -> list[tuple[int, Any, list[int] | None]]:
    """(version, transaction, fragment ids or None when unchanged) of every readable version up to
    ``upto`` of the branch ``uri_ds`` is on, preceded by its parent branch's history up to where the
    branch was made."""
    out: list[tuple[int, Any, list[int] | None]] = []
    for v in _versions(uri_ds, upto):
        n = v["version"]
        if n > upto:
            continue
        if out and n > out[-1][0] + 1:
            # Versions cleanup removed between two kept ones (a tagged old version is kept): their
            # writes are unknown, which :func:`_last_writes` must see (the log is not contiguous).
            out.append((n - 1, None, None))
        # A version's commit never changes: read once per process (a stage asking the graph after
        # each of its commits read the whole log each time). Keyed by its time too: a lake made
        # again at the same path starts its numbers again.
        key = (uri_ds.uri, n, str(v.get("timestamp")))
        if key not in _COMMITS:
            try:
                at = uri_ds.checkout_version(n)
                tx = at.get_transactions(1)[0]
                # Only commits that add or remove fragments change the list (reading it costs a manifest scan).
                frags = [f.fragment_id for f in at.get_fragments()] if type(tx.operation).__name__ in _RESHAPING else None
            except Exception:  # noqa: BLE001 - cleaned up or unreadable: unknown writes (see last_writes)
                tx, frags = None, None
            if tx is None:  # (not kept: a read that failed may pass later)
                out.append((n, tx, frags))
                continue
            if len(_COMMITS) >= _COMMITS_KEPT:
                _COMMITS.pop(next(iter(_COMMITS)))
            _COMMITS[key] = (tx, frags)
        tx, frags = _COMMITS[key]
        out.append((n, tx, frags))
    if out and out[-1][0] < upto:  # a parent's versions up to where a branch was made: the last ones removed
        out.append((upto, None, None))
    if out and out[0][1] is not None and type(out[0][1].operation).__name__ == "Clone":
        # A branch starts with a Clone of its parent at some version: its history is the parent's.
        parent = _parent(ds, uri_ds)
        if parent is not None:
            pds, pversion = parent
            return _history(ds, pds, pversion) + out[1:]
    return out


def commit_log(ds: "lance.LanceDataset") -> list[tuple[int, Any]]:
    """(version, transaction or None where it cannot be read: cleaned up) of every version of
    ``ds``'s branch up to ``ds``, its parent's before a branch; each commit read once a process."""
    return [(n, tx) for n, tx, _ in _history(ds, ds, ds.version)]


def by_other_code(prov: dict[str, Any], code: dict[str, dict[str, Any]] | None) -> dict[str, Any] | None:
    """The config this code computes ``prov``'s stage with, where the column was computed with
    another (for the stages whose config is their code's: ``code``, as :func:`code_now`); else None."""
    now = ((code or {}).get(str(prov.get("stage"))) or {}).get("config")
    return now if now is not None and prov.get("config_hash") not in (None, hash_config(now)) else None


def weights_changed(prov: dict[str, Any]) -> tuple[str, str, str] | None:
    """(path, recorded digest, digest now) where the weights file a node's run found (``weights``,
    beside its config) is still there but holds other bytes than its config records
    (``checkpoint_sha256``): other weights copied over it. None otherwise (a file that is gone, or
    moved, tells nothing here: the stage's run says where it looks). The digest is cached by path,
    size and modification time, so a status reads each file once."""
    import os

    want = (prov.get("config") or {}).get("checkpoint_sha256")
    path = prov.get("weights")
    if not want or not isinstance(path, str) or not os.path.isfile(path):
        return None
    try:
        now = file_digest(path)
    except OSError:  # unreadable here: tells nothing
        return None
    return None if now == want else (path, str(want), now)


def other_steps(prov: dict[str, Any], code: dict[str, dict[str, Any]] | None) -> list[str]:
    """The steps whose code changed since ``prov``'s stage decided by them: "name (version N, now
    M)" for each step whose version the column's provenance records (``step_versions``) and this
    code's (``code``, as :func:`code_now`) differs. A column that records none (an older lakecurate
    wrote it) tells nothing: none (an upgrade does not make every decision stale)."""
    recorded = (prov.get("config") or {}).get("step_versions")
    now = ((code or {}).get(str(prov.get("stage"))) or {}).get("steps")
    if not isinstance(recorded, dict) or not recorded or now is None:
        return []
    return [f"{name} (version {was}, now {now[name]})" for name, was in recorded.items()
            if name in now and now[name] != was]


def _parent(ds: "lance.LanceDataset", branch_ds: "lance.LanceDataset") -> tuple["lance.LanceDataset", int] | None:
    import lance

    uri = branch_ds.uri.rstrip("/")
    if "/tree/" not in uri:
        return None
    main_uri, name = uri.split("/tree/", 1)
    # The lake's storage options (an object store's endpoint, keys, region), which the branch was
    # opened with: without them an s3:// parent opens only where AWS_* variables say the same.
    opts = _storage_options(branch_ds) or _storage_options(ds)
    main = lance.dataset(main_uri, storage_options=opts)
    info = main.branches.list().get(name)
    if not info:
        return None
    parent_branch, parent_version = info.get("parent_branch"), info.get("parent_version")
    pds = main if not parent_branch else lance.dataset(f"{main_uri}/tree/{parent_branch}", storage_options=opts)
    return pds, int(parent_version)


def _storage_options(ds: "lance.LanceDataset") -> dict[str, str] | None:
    """The storage options a dataset was opened with (None: none given)."""
    try:
        return ds.initial_storage_options or None
    except Exception:  # noqa: BLE001 - a Lance without the accessor: none known
        return None


# The log up to a version never changes, so its reading is kept per (table, version): status,
# export and diff each ask several questions of one version.
_WRITES: dict[tuple[str, int, str], Any] = {}  # writes, merged holes, merged stale, removed fragments


def last_writes(ds: "lance.LanceDataset") -> dict[str, dict[int, Write]]:
    """See :func:`_last_writes`; cached per table version (a few entries)."""
    return {c: dict(per) for c, per in _log(ds)[0].items()}


def _log(ds: "lance.LanceDataset") -> tuple[dict[str, dict[int, Write]], dict[str, set[int]], dict[str, set[int]],
                                            dict[int, int], bool]:
    key = _version_key(ds)
    if key not in _WRITES:
        if len(_WRITES) > 16:
            _WRITES.pop(next(iter(_WRITES)))
        _WRITES[key] = _last_writes(ds)
    return _WRITES[key]


def _version_key(ds: "lance.LanceDataset") -> tuple[str, int, str]:
    """A version of a table, for the caches: its number and its commit's time (a lake made again at
    the same path numbers its versions again: keyed by number alone, its log was the old lake's)."""
    return ds.uri, ds.version, str(ds.get_version().get("timestamp"))


def log_cut(ds: "lance.LanceDataset") -> bool:
    """Whether cleanup removed commits of ``ds``'s log (its branch's, its parent's before it): what
    they showed stale is then read from :func:`recorded_states`, not from them."""
    return _log(ds)[4]


def merged_stale(ds: "lance.LanceDataset") -> dict[str, set[int]]:
    """Column of a per-row stage -> fragments a compaction merged from fragments some of which held
    stale values of it (an input rewritten after them): the merged fragment keeps each column's
    latest write, which alone would read as current (see :func:`_last_writes`)."""
    return _log(ds)[2]


def merged_holes(ds: "lance.LanceDataset") -> dict[str, set[int]]:
    """Column -> fragments that a compaction outside lakecurate (LanceDB's ``optimize``, Lance's
    ``compact_files``) merged from fragments of which some held the column and some did not: the
    rows of the latter hold nulls that no run computed, and being filled, the fragment is never
    computed again (see :func:`_last_writes`)."""
    return _log(ds)[1]


def removed_fragments(ds: "lance.LanceDataset") -> dict[int, int]:
    """Fragment id -> the version that deleted every row of it (Lance then drops the fragment: no
    fragment of the table is written, yet rows are gone, and a stage that read the whole table
    before decided over them: a duplicate group's kept member among them leaves its group with
    none). See :func:`_last_writes`."""
    return _log(ds)[3]


@dataclass
class _Walk:
    """What :func:`_last_writes` carries through the commit log, one version at a time."""

    state: dict[int, dict[int, Write]] = field(default_factory=dict)  # field id -> fragment -> write
    holes: dict[int, set[int]] = field(default_factory=dict)  # field id -> fragments merged with rows that lacked it
    stale: dict[str, set[int]] = field(default_factory=dict)  # column -> fragments merged with rows whose values were stale
    removed: dict[int, int] = field(default_factory=dict)  # fragment -> the version that deleted all its rows

    def copy(self) -> "_Walk":
        return _Walk({f: dict(per) for f, per in self.state.items()}, {f: set(fr) for f, fr in self.holes.items()},
                     {c: set(fr) for c, fr in self.stale.items()}, dict(self.removed))


def _last_writes(ds: "lance.LanceDataset") -> tuple[dict[str, dict[int, Write]], dict[str, set[int]], dict[str, set[int]],
                                                     dict[int, int], bool]:
    """Column -> fragment id -> (version, read version) of the last commit that wrote that column's
    values in that fragment, from the commit log of ``ds``'s branch up to ``ds.version``.

    Column fills (``DataReplacement``) write the fields of their new files; appends, overwrites and
    updates write every field of their new fragments; deleting rows counts as writing the fragment's
    columns for a stage that reads the whole table, recorded with the fragment's last content write
    (:func:`content_write`: the values a per-row stage computed stay current); compaction moves values without changing them (the new fragment keeps the latest write
    of the fragments it merged); a restore goes back to the writes of the version it restores.
    Versions whose log is gone (cleanup) contribute nothing, and nor do the kept versions before
    them (a tagged old version): every column reads as written before anything that follows. Also (second): column -> fragments a compaction merged from fragments
    some of which lacked the column (:func:`merged_holes`), until a fill writes them again; and
    (third) column of a per-row stage -> fragments a compaction merged from fragments some of which
    held stale values of it (:func:`merged_stale`: the merged fragment keeps each column's latest
    write, which would read as current). A fill records the version its values were computed from
    (``COMPUTED_FROM``, beside Lance's read version: a fill committed after its input was rewritten
    read as computed from the rewrite). Fourth: fragment id -> the version that deleted all its rows
    (:func:`removed_fragments`). Fifth: whether part of the log is gone (:func:`log_cut`).
    """
    ids = _field_names(ds)
    walk = _Walk()
    snapshots: dict[int, _Walk] = {}  # version -> the walk then (for a later Restore)
    ids_of: dict[str, list[int]] = {}
    for f, name in ids.items():
        ids_of.setdefault(name, []).append(f)
    per_row = [(n.columns, n.sources) for n in nodes(ds) if n.per_row and n.sources]

    def col_write(name: str, frag: int) -> Write | None:
        got = [content_write(walk.state[f][frag]) for f in ids_of.get(name, ()) if frag in walk.state.get(f, {})]
        return max((w for w in got if w is not None), default=None)

    def was_stale(cols: list[str], srcs: list[str], frag: int, held: set[int]) -> bool:
        # (rows without values are the holes': None here)
        return bool(_newer_sources([col_write(c, frag) or ((0, 0) if held & set(ids_of.get(c, ())) else None)
                                    for c in cols], {src: col_write(src, frag) for src in srcs}))

    def put(fields: Iterable[int], frag: int, w: Write) -> None:
        for f in fields:
            walk.state.setdefault(f, {})[frag] = w

    def put_deleted(fields: Iterable[int], frag: int, w: Write) -> None:
        # rows deleted: a write of the fragment for what reads the whole table, but the values of the
        # rows left are those of the last content write, kept third (see content_write)
        for f in fields:
            per = walk.state.setdefault(f, {})
            per[frag] = (w[0], w[1], content_write(per.get(frag)))

    before: set[int] | None = None  # the fragment ids of the version before (None: not known)
    top: int | None = None  # the highest field id of the schema before (None: not known)
    history = _history(ds, ds, ds.version)
    # Only the versions a later restore goes back to need their writes remembered.
    restored = {tx.operation.version for _, tx, _ in history
                if tx is not None and type(tx.operation).__name__ == "Restore"}
    for version, tx, frag_ids in history:
        # A transaction's new fragments have no ids yet (Lance numbers them at commit, in order):
        # they are the ids this version has and the one before did not. Where the version before
        # is gone (cleanup removed it), they are this version's highest ids: Lance never reuses one.
        if frag_ids is None:
            created = iter([])
        elif before is None:
            created = iter(sorted(frag_ids)[max(0, len(frag_ids) - _new_fragments(tx)):] if tx is not None else [])
        else:
            created = iter(sorted(set(frag_ids) - before))
        if tx is None:
            # A version whose log is gone (cleanup removed it, e.g. between a kept tagged version and
            # the latest): what it and those before it wrote is unknown, so every column reads as
            # written before what follows (a kept ingest commit must not read as newer than the
            # removed embed commit after it), and the fragments the next commit adds are its
            # highest ids, not those the kept version lacked (the removed ones added some too).
            walk = _Walk()
            before = top = None
            continue
        if tx is not None:
            op, w = tx.operation, (version, _computed_from(tx))
            kind = type(op).__name__
            if kind == "Overwrite":
                walk = _Walk()
                for frag in op.fragments:
                    put(_file_fields(frag), next(created, -1), w)
                # (its schema is pyarrow's, without ids: those of its files; an empty table's: not known)
                top = max(_op_schema_ids(op, "new_schema") | {f for fr in op.fragments for f in _file_fields(fr)},
                          default=None)
            elif kind == "Append":
                for frag in op.fragments:
                    put(_file_fields(frag), next(created, -1), w)
            elif kind == "Update":
                modified = set(getattr(op, "fields_modified", None) or [])  # columns rewritten in place
                carried = _carried(op, ids, walk.state)  # (read before the fragments the rows left are changed)
                for frag in op.updated_fragments:
                    put_deleted(_file_fields(frag) - modified, frag.id, w)
                    put(_file_fields(frag) & modified, frag.id, w)
                for frag in op.new_fragments:
                    fid = next(created, -1)
                    for f in _file_fields(frag):
                        put([f], fid, carried.get(f) or w)
                for fid in op.removed_fragment_ids:
                    for per in walk.state.values():
                        per.pop(fid, None)
            elif kind == "Delete":
                for frag in op.updated_fragments:
                    put_deleted(_file_fields(frag), frag.id, w)
                for fid in op.deleted_fragment_ids:  # every row of it deleted: the fragment is gone
                    walk.removed[fid] = version
                    for per in walk.state.values():
                        per.pop(fid, None)
            elif kind == "DataReplacement":
                for r in op.replacements:
                    put(r.new_file.fields, r.fragment_id, w)
                    for f in r.new_file.fields:
                        walk.holes.get(f, set()).discard(r.fragment_id)
                        walk.stale.get(ids.get(f, ""), set()).discard(r.fragment_id)
            elif kind == "Rewrite":
                for group in op.groups:
                    old = [frag.id for frag in group.old_fragments]
                    new_ids = [next(created, -1) for _ in group.new_fragments]
                    held = [_file_fields(frag) for frag in group.old_fragments]
                    for cols, srcs in per_row:  # (before the writes of the merged fragments are combined)
                        if any(o in walk.stale.get(c, ()) for c in cols for o in old) or \
                                any(was_stale(cols, srcs, o, h) for o, h in zip(old, held)):
                            for c in cols:
                                walk.stale.setdefault(c, set()).update(new_ids)
                        for c in cols:
                            walk.stale.get(c, set()).difference_update(old)
                    for f, per in walk.state.items():
                        writes = [per.pop(o) for o in old if o in per]
                        if writes:
                            for new in new_ids:
                                per[new] = max(writes)
                    for f in set().union(*held) if held else ():
                        inherited = any(o in walk.holes.get(f, ()) for o in old)
                        if inherited or any(f not in h for h in held):  # some rows had no value: now nulls
                            walk.holes.setdefault(f, set()).update(new_ids)
                        for o in old:
                            walk.holes.get(f, set()).discard(o)
            elif kind in ("Project", "Merge"):
                # Columns dropped (a recompute's drop_replaced, Lance's drop_columns): their writes go
                # with them. Lance numbers the next columns added from the highest id left, so the
                # set declared again takes the dropped ids, which must read as never written (the
                # old writes kept them "current" over all-null columns after a killed recompute).
                kept = _op_schema_ids(op, "schema")
                if kind == "Merge" and kept and top is not None:
                    # columns added with their values (Lance's add_columns of an expression, LanceDB's):
                    # written now where their files are (a caption renamed, then a new column named
                    # caption added: every stage read the old values, and status called them current);
                    # lakecurate's declare adds columns without files (filled later, recorded then)
                    new = {f for f in kept if f > top}
                    for frag in op.fragments:
                        put(_file_fields(frag) & new, frag.id, w)
                if kept:
                    top = max(kept)
                    for f in [f for f in walk.state if f not in kept]:
                        del walk.state[f]
                    for f in [f for f in walk.holes if f not in kept]:
                        del walk.holes[f]
                    for f in set(ids) - kept:  # (an id of the table now that this version lacked)
                        walk.stale.pop(ids[f], None)
            elif kind == "Restore":
                walk = snapshots.get(op.version, _Walk()).copy()
        if version in restored:
            snapshots[version] = walk.copy()
        if frag_ids is not None:
            before = set(frag_ids)
    out: dict[str, dict[int, Write]] = {}
    for f, per in walk.state.items():
        name = ids.get(f)
        if name is not None:
            dest = out.setdefault(name, {})
            for frag, w in per.items():
                dest[frag] = max(dest.get(frag, w), w)
    merged = {}
    for f, frags in walk.holes.items():
        if frags and ids.get(f) is not None:
            merged.setdefault(ids[f], set()).update(frags)
    # (Lance numbers a table's versions from 1: a log starting later lost its first commits to cleanup)
    cut = bool(history) and (history[0][0] > 1 or any(tx is None for _, tx, _ in history))
    return out, merged, {c: frags for c, frags in walk.stale.items() if frags and c in ids_of}, walk.removed, cut


def _carried(op: Any, ids: dict[int, str], state: dict[int, dict[int, Write]]) -> dict[int, Write]:
    """Field id -> the write whose values an ``Update`` carried unchanged into its new fragments.

    Lance's ``update`` (``rewrite_rows``) moves whole rows to a new fragment but records the columns
    it set (``fields_for_preserving_frag_bitmap``): the other columns' values are those of the
    fragments the rows left, so updating ``caption_coca`` is no write of ``caption`` (it made the
    image embedding stale, "caption was rewritten"). A column is carried only where every such
    fragment has a write of it (else: written now); ``merge_insert`` lists every column, so its
    rows (inserted ones too) read as written."""
    if getattr(op, "update_mode", None) != "rewrite_rows":
        return {}
    setting = set(getattr(op, "fields_for_preserving_frag_bitmap", None) or [])
    origins = [frag.id for frag in op.updated_fragments] + list(op.removed_fragment_ids)
    if not setting or not origins:
        return {}
    set_columns = {ids[f] for f in setting if f in ids}
    out: dict[int, Write] = {}
    for f in {f for frag in op.new_fragments for f in _file_fields(frag)}:
        if f in setting or ids.get(f) in set_columns:
            continue
        got = [content_write(state.get(f, {}).get(o)) for o in origins]
        if got and all(g is not None for g in got):
            out[f] = max(got)  # type: ignore[type-var]
    return out


def _computed_from(tx: Any) -> int:
    """The version a commit's writer read: Lance's read version, or the earlier version its values
    were computed from where the writer recorded one (:data:`COMPUTED_FROM`)."""
    raw = (getattr(tx, "transaction_properties", None) or {}).get(COMPUTED_FROM)
    try:
        return min(tx.read_version, int(raw)) if raw is not None else tx.read_version
    except (TypeError, ValueError):
        return tx.read_version


def _new_fragments(tx: Any) -> int:
    """How many fragments a transaction adds (Lance numbers them at commit)."""
    op = tx.operation
    kind = type(op).__name__
    if kind in ("Overwrite", "Append"):
        return len(op.fragments)
    if kind == "Update":
        return len(op.new_fragments)
    if kind == "Rewrite":
        return sum(len(g.new_fragments) for g in op.groups)
    return 0


def content_write(w: Any) -> Write | None:
    """The last write of a fragment's values, past the deletions of its rows since (a deletion is
    recorded as ``(version, read version, the content write before it)``)."""
    while w is not None and len(w) == 3:
        w = w[2]
    return w


# ----------------------------------------------------------------------------- states
def computed_marker(ds: "lance.LanceDataset", node: Node) -> int | None:
    """The version a global node's last run read (its metadata marker), if recorded."""
    got = []
    for name in node.columns:
        meta = ds.schema.field(name).metadata or {}
        raw = meta.get(COMPUTED_KEY.encode())
        if raw:
            try:
                got.append(int(json.loads(raw)["read_version"]))
            except (ValueError, KeyError, TypeError):
                pass
    return min(got) if len(got) == len(node.columns) else None


def states(lake: "Store", ds: "lance.LanceDataset | None" = None,
           code: dict[str, dict[str, Any]] | None = None) -> list[NodeState]:
    """The state of every node of ``ds`` (default: the lake's latest version), in pipeline order.
    ``code``: what this code computes a stage with (:func:`code_now`, the default): a signal made
    with another config was made by another lakecurate, and is stale (every row), its fix the
    stage's command with ``--recompute``; a decision made by other step code is stale too."""
    ds = ds if ds is not None else lake.dataset()
    if code is None:
        code = code_now()
    writes = last_writes(ds)
    frags = {f.fragment_id: f for f in ds.get_fragments()}
    all_nodes = nodes(ds)
    producer = {c: n for n in all_nodes for c in n.columns}
    names = set(ds.schema.names)
    out: list[NodeState] = []
    by_node: dict[int, NodeState] = {}
    inputs: dict[tuple[str, ...], tuple[Node, list[str]]] = {}  # dropped inputs' producers -> the stages reading them
    recompute: set[int] = set()  # the nodes whose fix computes every row again
    for node in all_nodes:
        st = NodeState(node, "current")
        if node.stage in MANUAL:
            pass
        elif node.per_row:
            _per_row(ds, node, writes, frags, st)
        else:
            _global(lake, ds, node, writes, list(frags.values()), st)
        gone = _dropped(ds, node, names, None if node.per_row else st.computed_from)
        source_moved: dict[str, str] = {}  # a source column another writer renamed: no run makes it again
        if gone and node.stage not in MANUAL:  # an input dropped since (feature drop): the values built on it stand alone
            st.state = "stale"
            moved = {old: new for old, (new, _) in renamed(ds, gone).items()}
            source_moved = {old: new for old, new in moved.items() if old in SOURCE_COLUMNS}
            st.reasons.append(f"its input {', '.join(gone)} is no longer in the table (dropped since)" if not moved else
                              f"its input {', '.join(gone)} is no longer in the table (" +
                              ", ".join(f"{old} renamed to {new}" for old, new in moved.items()) + " outside lakecurate)")
            for up in _producers(ds, node, gone):  # (its fix fails without them: theirs is listed first)
                inputs.setdefault(tuple(up.columns), (up, []))[1].append(node.stage)
        lost = _lost(ds, node, names)
        if lost and node.stage in MANUAL:  # a mark column another writer dropped or renamed: every mark is
            st = _marks_lost(lake, ds, node, lost)  # refused until they are whole (review's _partial)
            by_node[id(node)] = st
            out.append(st)
            continue
        moved = _renamed_reason(ds, node, lost) if lost and node.stage not in MANUAL else None
        if moved is not None:  # ...or renamed: the rename named, and the ways out
            _all_stale(ds, st, moved[0])
            st.renamed = moved[1]
        elif lost and node.stage not in MANUAL:  # one of its own columns another writer dropped (Lance, LanceDB)
            _all_stale(ds, st, f"its column{'s' if len(lost) > 1 else ''} {', '.join(lost)} "
                               f"{'are' if len(lost) > 1 else 'is'} no longer in the table (another writer dropped "
                               f"{'them' if len(lost) > 1 else 'it'}); its fix computes the columns its run declared "
                               f"again ({', '.join(declared_columns(ds.schema.field(node.columns[0])) or lost)})")
        by_log = st.state != "current"  # (what made it not current so far is read from the commit log)
        now = by_other_code(node.prov, code)
        redo = now is not None
        if redo:  # (a stage run with these columns refuses them: "made with another config")
            _all_stale(ds, st, f"its code changed since it computed them "
                               f"({config_change(node.prov.get('config') or {}, now)}); its fix computes every row again")
        swapped = weights_changed(node.prov) if node.stage not in MANUAL else None
        if swapped is not None:  # (embed itself refuses them: "checkpoint_sha256 a -> b")
            redo = True
            _all_stale(ds, st, f"its checkpoint {swapped[0]} changed since it computed them (checkpoint_sha256 "
                               f"{swapped[1]} -> {swapped[2]}: other weights at the same path); its fix computes "
                               f"every row again")
        steps = other_steps(node.prov, code)
        if steps:  # (its fix, the stage's plain run, decides every row again: curate._already_done)
            _all_stale(ds, st, f"its step code changed since it decided them: {', '.join(steps)}; "
                               f"its fix decides every row again")
        st.by_code = (redo or bool(steps)) and not by_log
        for src in node.sources:  # a node built on a node that is not current is behind through it
            up = producer.get(src)
            if up is not None and up is not node and id(up) in by_node and by_node[id(up)].state != "current" \
                    and st.state == "current":
                st.state = "behind"
                st.reasons.append(f"its input {src} comes from {up.stage}, which is {by_node[id(up)].state}")
        st.fix = fix_command(lake, node, ds) + (" --recompute" if redo else "")
        if source_moved:  # (its own run is refused: "not a lakecurate table: missing columns caption")
            st.fix = rename_back(ds, source_moved)
        if redo:
            recompute.add(id(node))
        _failed(lake, ds, st)
        by_node[id(node)] = st
        out.append(st)
    recorded = dropped_nodes(ds)
    out += [gone_whole(lake, ds, n) for n in recorded]
    # (a producer some of whose columns are still here is listed above, as they are: stale where one
    # was dropped or renamed; only one whose every column went unrecorded is listed for its readers)
    out += [_input_gone(lake, ds, up, readers) for cols, (up, readers) in inputs.items()
            if not any(set(cols) & set(n.columns) for n in [*all_nodes, *recorded])]
    out.sort(key=lambda st: _order(st.node))
    if log_cut(ds):  # what the commits cleanup removed showed, as recorded before it removed them
        _apply_recorded(out, lake, ds)
    dedup = [st for st in out if st.node.stage == "dedup" and st.state != "current"]
    if dedup:  # one command for them all: a method's alone was refused when another its decision reads was stale
        final = next((st.node for st in out if st.node.stage == "dedup" and "dup_keep" in st.node.columns), None)
        fix = dedup_fix(lake, [st.node for st in dedup], final, ds)
        for st in dedup:
            st.fix = fix
    for redo in (False, True):  # one signals command for the kinds that need the same run (it printed
        # `signals LAKE --no-image --recompute`, then `signals LAKE --no-caption --recompute`)
        same = [st for st in out if st.node.stage.startswith("signals-") and st.state != "current"
                and (id(st.node) in recompute) == redo]
        if len(same) > 1:
            fix = signals_command(lake, [st.node.stage for st in same]) + (" --recompute" if redo else "")
            for st in same:
                st.fix = fix
    _mark_empty_view(lake, ds, out)
    if not ds.count_rows():  # (every stage read "current" or "stale" over no rows; their fixes refused it)
        for st in out:
            if st.node.stage not in MANUAL:
                st.state, st.reasons, st.fix = "empty", ["the lake has no rows"], ingest_command(lake)
    return out


# ----------------------------------------------------------------- states recorded at cleanup
# Cleanup removes the commits that show a stage stale, and a tag's stages can never be made current
# there (a run writes a new version): curate tags its result before cluster and rebalance re-run, so
# from a lake's second daily run on, its tags read concepts and rebalance stale. Before it removes
# versions, cleanup records the stages not current at each tag in this lake-wide side table (beside
# ``pairs``, so on an object store too), and :func:`states` reads them back where the log is cut.
RECORD_TABLE = "cleanup_states"
_RECORDED: dict[str, tuple[float, dict[tuple[str, int], dict[tuple[str, str, str], dict[str, Any]]]]] = {}
_LINEAGES: dict[tuple[str, int, str], list[tuple[str, int]]] = {}
_RECORDED_TTL = 30.0  # seconds a reading is reused (status and export ask several times a second)


def _record_schema() -> "pa.Schema":
    import pyarrow as pa

    return pa.schema([("branch", pa.string()), ("version", pa.int64()), ("timestamp", pa.string()),
                      ("recorded", pa.string()), ("stage", pa.string()), ("columns", pa.list_(pa.string())),
                      ("config_hash", pa.string()), ("state", pa.string()), ("reasons", pa.list_(pa.string())),
                      ("rows_missing", pa.int64()), ("rows_stale", pa.int64()), ("computed_from", pa.int64())])


def _record_key(ds: "lance.LanceDataset") -> tuple[str, int, str]:
    """(branch, "" for main; version; its commit's time: a lake made again at the same path
    numbers its versions again)."""
    return _branch_of(ds) or "", ds.version, str(ds.get_version().get("timestamp"))


def _node_key(stage: str, columns: Sequence[str], config_hash: Any) -> tuple[str, str, str]:
    return stage, json.dumps(list(columns)), str(config_hash or "")


def recorded_states(lake: "Store") -> dict[tuple[str, int], dict[tuple[str, str, str], dict[str, Any]]]:
    """(branch, "" for main; version) -> (stage, columns, config hash) -> the state cleanup recorded
    for that node at that version (:func:`record_states`); empty where none was recorded."""
    import time

    key = lake.side_uri(RECORD_TABLE, per_branch=False)
    hit = _RECORDED.get(key)
    if hit is not None and time.monotonic() - hit[0] < _RECORDED_TTL:
        return hit[1]
    side = lake.side_dataset(RECORD_TABLE, per_branch=False)
    got: dict[tuple[str, int], dict[tuple[str, str, str], dict[str, Any]]] = {}
    for row in side.to_table().to_pylist() if side is not None else []:
        got.setdefault((row["branch"], row["version"]), {}).setdefault(
            _node_key(row["stage"], row["columns"], row["config_hash"]), row)
    if len(_RECORDED) > 64:
        _RECORDED.pop(next(iter(_RECORDED)))
    _RECORDED[key] = (time.monotonic(), got)
    return got


def _lineage(lake: "Store", ds: "lance.LanceDataset") -> list[tuple[str, int]]:
    """(branch, "" for main; number) of the versions whose state ``ds``'s state grew from, newest
    first: its branch's log back to a restore, then the restored version's line, and so on, a
    branch's before where it began being its parent's."""
    key = _version_key(ds)  # (a version's log never changes: read once a process, not at every status)
    if key in _LINEAGES:
        return _LINEAGES[key]
    starts = {name: (meta.get("parent_branch") or "", int(meta["parent_version"]))
              for name, meta in lake.branches().items() if meta.get("parent_version") is not None}
    out: list[tuple[str, int]] = []
    limit, branch = ds.version, _branch_of(ds) or ""
    for v, tx, _ in reversed(_history(ds, ds, ds.version)):
        if v > limit:
            continue  # (undone by a restore to an earlier version)
        while branch in starts and v <= starts[branch][1]:
            branch = starts[branch][0]
        out.append((branch, v))
        if tx is not None and type(tx.operation).__name__ == "Restore":
            limit = int(tx.operation.version)
    if len(_LINEAGES) > 256:
        _LINEAGES.pop(next(iter(_LINEAGES)))
    _LINEAGES[key] = out
    return out


def _apply_recorded(out: list[NodeState], lake: "Store", ds: "lance.LanceDataset") -> None:
    """Where cleanup cut ``ds``'s log, what it recorded tells the states the removed commits showed:
    the newest version ``ds``'s state grew from that has a record (:func:`_lineage`: itself; a
    version before it on its line, the latest or a tag when cleanup ran; one a restore went back
    to; the one a branch began at) is the anchor. A node its stage has not written since the anchor
    takes the state recorded there (its reasons: those the cut log gives may name wrong versions),
    unless its data shows it (incomplete, dropped); one written since, or not recorded (current
    then), is the log's to tell.
    (Read at a tag's own version only, a restore of the tag read every stage current; read without
    an anchor, a stage that ran after a restore read stale once the run's commits were removed.)"""
    records = recorded_states(lake)
    anchor = next((key for key in _lineage(lake, ds) if key in records), None) if records else None
    if anchor is None:
        return
    writes = _log(ds)[0]
    for st in out:
        if st.state in ("incomplete", "dropped"):
            continue
        if max((w[0] for c in st.node.columns for w in writes.get(c, {}).values()), default=0) > anchor[1]:
            continue  # its stage ran since: its state is the log's
        row = records[anchor].get(_node_key(st.node.stage, st.node.columns, st.node.prov.get("config_hash")))
        if row is None:
            continue  # current at the anchor: what the log shows since is its own
        st.state = row["state"]
        st.reasons = [f"recorded at cleanup on {row['recorded']}: {r}" for r in row["reasons"] or []] or \
                     [f"recorded at cleanup on {row['recorded']}"]
        st.rows_missing, st.rows_stale = row["rows_missing"] or 0, row["rows_stale"] or 0
        if row["computed_from"] is not None:
            st.computed_from = row["computed_from"]


def record_states(lake: "Store", readings: Sequence[tuple["lance.LanceDataset", list[NodeState]]],
                  markers: bool = True) -> int:
    """Record, before cleanup removes the commits that show them, the states not current (read from
    the commit log: not those only this code's changes make stale, which it reads again) at each
    ``(version, its states)``, and with ``markers`` that a version with none had none (a row of no
    stage: the versions after it read it as their anchor, :func:`_apply_recorded`); a version
    recorded already is left as it is. Returns how many versions with stages not current were recorded now. One
    append to :data:`RECORD_TABLE` (safe beside another writer)."""
    import datetime

    import pyarrow as pa

    side = lake.side_dataset(RECORD_TABLE, per_branch=False)
    have: set[tuple[str, int, str]] = set()
    if side is not None:
        have = {(r["branch"], r["version"], r["timestamp"])
                for r in side.to_table(columns=["branch", "version", "timestamp"]).to_pylist()}
    today = datetime.date.today().isoformat()
    rows: list[dict[str, Any]] = []
    recorded = 0
    for ds, all_states in readings:
        key = _record_key(ds)
        off = [st for st in all_states if st.state != "current" and not st.by_code]
        if key in have or not (off or markers):
            continue
        have.add(key)
        recorded += bool(off)
        rows += [{"branch": key[0], "version": key[1], "timestamp": key[2], "recorded": today,
                  "stage": st.node.stage, "columns": list(st.node.columns),
                  "config_hash": str(st.node.prov.get("config_hash") or ""), "state": st.state,
                  # (read again after a cleanup, a reason recorded then is not recorded twice)
                  "reasons": [re.sub(r"^recorded at cleanup on [0-9-]+: ", "", r) for r in st.reasons],
                  "rows_missing": st.rows_missing, "rows_stale": st.rows_stale, "computed_from": st.computed_from}
                 for st in off] or [{"branch": key[0], "version": key[1], "timestamp": key[2], "recorded": today,
                                     "stage": "", "columns": [], "config_hash": "", "state": "current", "reasons": [],
                                     "rows_missing": 0, "rows_stale": 0, "computed_from": None}]
    if rows:
        lake.write_side(RECORD_TABLE, pa.Table.from_pylist(rows, schema=_record_schema()), per_branch=False)
        _RECORDED.clear()
    return recorded


def forget_records(lake: "Store", kept: dict[str, set[int] | None], branch: str | None = None) -> None:
    """Delete the records of versions cleanup removed (``kept``: branch, "" for main -> the versions
    each branch has left; None: not known, its records stay; a branch not in it is gone), or with
    ``branch`` every record of that deleted branch; then the record table's old versions: nothing
    names them."""
    from datetime import timedelta

    from lakecurate.sqlcheck import literal

    side = lake.side_dataset(RECORD_TABLE, per_branch=False)
    if side is None:
        return
    held = {(r["branch"], r["version"]) for r in side.to_table(columns=["branch", "version"]).to_pylist()}
    gone: dict[str, list[int]] = {}
    for b, v in sorted(held):
        if (b == branch) if branch is not None else (b not in kept or (kept[b] is not None and v not in kept[b])):
            gone.setdefault(b, []).append(int(v))
    if gone:
        cond = " OR ".join(f"(branch = {literal(b)} AND version IN ({', '.join(map(str, vs))}))" for b, vs in gone.items())
        retry_on_conflict(lambda: lake.side_dataset(RECORD_TABLE, per_branch=False).delete(cond))
        _RECORDED.clear()
    side = lake.side_dataset(RECORD_TABLE, per_branch=False)
    if side is not None and len(side.versions()) > 1:
        side.cleanup_old_versions(older_than=timedelta(0), error_if_tagged_old_versions=False)


def no_rows(lake: "Store") -> str:
    """What is said of a lake (or branch) without rows: that, and the command that ingests some."""
    branch = getattr(lake, "branch", None)
    return f"lake '{lake.uri}'{f' (branch {branch})' if branch else ''} has no rows; ingest some: {ingest_command(lake)}"


def ingest_command(lake: "Store") -> str:
    return f"{lakecurate_on(lake)} ingest {lake.shell} SOURCE"


def empty_view(lake: "Store", ds: "lance.LanceDataset", all_states: list[NodeState] | None = None) -> str:
    """Why the curated view is empty, when curate's current decision keeps no row of a lake that
    has rows ("curate kept 0 of 10 rows of lake 'x' (recipe basic, tag basic-1a2b3c4d-v9)"); else
    "". Nothing built on that view (rebalance, sequence, export, evaluate) can be made current until
    the recipe keeps rows: their re-run only refuses again, so this is what they say instead."""
    if "keep" not in ds.schema.names or "keep" in foreign_decisions(ds.schema):
        return ""
    if _count(ds, "keep"):  # (the usual case: one scan)
        return ""
    judged = _count(ds, "keep IS NOT NULL")
    if not judged:
        return ""
    all_states = states(lake, ds) if all_states is None else all_states
    cur = next((s for s in all_states if s.node.stage == "curate" and "keep" in s.node.columns), None)
    if cur is None or cur.state != "current":  # (a stale decision: its own fix, curate again, comes first)
        return ""
    cfg = cur.node.prov.get("config") or {}
    source = str(cfg.get("source") or "")
    recipe = Path(source).stem if source and _builtin_recipe(source) else (source or "?")
    short = str(cfg.get("hash") or "")[:8]
    tags = [(info["version"], name) for name, info in ds.tags.list().items()
            if short and f"-{short}-" in name and info["version"] <= ds.version
            and (info.get("branch") or None) == _branch_of(ds)]
    tag = f", tag {max(tags)[1]}" if tags else ""
    refused = "ingest_status" in ds.schema.names and \
        not _count(ds, "keep IS NOT NULL AND (ingest_status IS NULL OR ingest_status <> 'error')")
    return f"curate kept 0 of {judged} row{'' if judged == 1 else 's'} of lake '{lake.uri}' (recipe {recipe}{tag})" + (
        f"{INGEST_REFUSED_ALL}" if refused else "")


# what :func:`empty_view` adds when every row it judged is one ingest refused: no recipe keeps those
INGEST_REFUSED_ALL = ", every one of them refused at ingest (ingest_error says why)"


def empty_view_fix(lake: "Store", why: str, what: str | None = None) -> str:
    """What to do about an empty curated view (``why``: :func:`empty_view`): loosen the recipe, or,
    where every row is one ingest refused (no recipe keeps those), ingest pairs that read."""
    advice = (f"ingest pairs whose images read: {ingest_command(lake)}"
              if why.endswith(INGEST_REFUSED_ALL) else f"loosen the recipe, see: {lakecurate_on(lake)} report {lake.shell}")
    return (f"{why}: the curated view is empty, " + (f"so {what} has no rows to use" if what else
            "and nothing built on it can be made current") + f"; {advice}")


def check_view_not_empty(lake: "Store", ds: "lance.LanceDataset", where: str | None, what: str) -> None:
    """Refuse (LakeError) to let ``what`` choose among the rows of ``where`` when it reads the curated
    decisions and curate kept no row (:func:`empty_view`): "no candidate rows; check --where, or run
    cluster" named a way out that did not exist."""
    if not {"keep", "rebalance_keep"} & set(where_columns(where, ds.schema.names)):
        return
    why = empty_view(lake, ds)
    if why:
        raise LakeError(empty_view_fix(lake, why, what))


def _mark_empty_view(lake: "Store", ds: "lance.LanceDataset", out: list[NodeState]) -> None:
    """The nodes built on an empty curated view that are not current get that as their fix: their
    own command (rebalance again) was refused with "no candidate rows", and status said "stale: run
    rebalance" for ever."""
    built = {"keep", "drop_reason"}
    after = []
    for st in out:  # (in pipeline order: rebalance before sequence)
        # (a rebalance without --where chooses among keep once it exists, even one run before any recipe)
        plain = st.node.stage == "rebalance" and not (st.node.prov.get("config") or {}).get("where")
        if st.node.stage not in ("curate", *MANUAL) and (plain or built & set(st.node.sources)):
            built |= set(st.node.columns)
            after.append(st)
    todo = [st for st in after if st.state != "current"]
    why = empty_view(lake, ds, out) if todo else ""
    for st in todo if why else []:
        st.empty_view = why
        st.fix = empty_view_fix(lake, why)


def _marks_lost(lake: "Store", ds: "lance.LanceDataset", node: Node, lost: list[str]) -> NodeState:
    """A review whose columns ``lost`` another writer dropped or renamed (``lakecurate drop`` drops a
    set whole): listed dropped, its fix the one review's refusal of a mark names, which writes the
    marks back from the latest version that had them all."""
    whole = Node(node.stage, [*node.columns, *[c for c in lost if c not in node.columns]], node.sources, node.prov)
    back = last_whole(ds, whole)
    fix = _marks_fix(lake, back)
    moved = _renamed_reason(ds, whole, lost)
    if moved is not None:
        return NodeState(node, "dropped", [moved[0]], fix=fix, renamed=moved[1])
    at = dropped_at(ds, Node(node.stage, lost, [], node.prov))
    many = len(lost) > 1
    where = (f"they are still in version {back}, whence its fix writes them back (one review action, undone as any)"
             if back is not None else "no version left has them all; the review log lists what they were")
    return NodeState(node, "dropped", [f"its mark column{'s' if many else ''} {', '.join(lost)} "
                                       f"{'were' if many else 'was'} dropped"
                                       f"{f' at version {at}' if at is not None else ''} outside lakecurate "
                                       f"({', '.join(node.columns)} left), and every mark is refused until they "
                                       f"are whole; {where}"], fix=fix)


def _all_stale(ds: "lance.LanceDataset", st: NodeState, reason: str) -> None:
    """``st`` stale in every row (a per-row node's fix computes them all), for ``reason``."""
    st.state = "stale"
    st.rows_stale = ds.count_rows() if st.node.per_row else 0
    st.reasons.append(reason)


def _failed(lake: "Store", ds: "lance.LanceDataset", st: NodeState) -> None:
    """An endpoint's caption column: its rows a request failed (no caption, an ``endpoint:`` error),
    which only ``--retry-errors`` computes again (the column counted as current: a column whose
    every row had failed said so, and nothing said what to run)."""
    node = st.node
    if node.stage != "recaption" or not (node.prov.get("config") or {}).get("api_model"):
        return
    col = node.columns[0]
    if f"{col}_error" not in node.columns:
        return
    st.rows_failed = _count(ds, f"{col} IS NULL AND {col}_error LIKE 'endpoint:%'")
    if st.rows_failed:
        st.retry = fix_command(lake, node, ds) + " --retry-errors"


def _builtin_recipe(source: str) -> bool:
    """Whether a recorded recipe file is a built-in recipe: this install's, or another install's
    (``.../lakecurate/recipes/NAME.toml``: a lake curated with another copy of lakecurate, whose path
    may be gone) naming one this install has."""
    path = Path(source)
    return path.parent == RECIPES or (path.parent.name == RECIPES.name and path.parent.parent.name == RECIPES.parent.name
                                      and path.suffix == ".toml" and (RECIPES / path.name).is_file())


def dedup_fix(lake: "Store", stale: Sequence[Node], final: Node | None, ds: "lance.LanceDataset") -> str:
    """The one dedup command that makes every ``stale`` dedup node current (:func:`dedup_args`, as
    a command). Pasted, it runs (tests/test_pipeline.py)."""
    import shlex

    q = shlex.quote
    args = dedup_args(stale, final, ds)
    out = f"{lakecurate_on(lake)} dedup {lake.shell}"
    out += f" --method {','.join(args.pop('methods'))}" if "methods" in args else ""
    out += f" --embedding {q(args.pop('embedding'))}" if "embedding" in args else ""
    keep_from, recompute, flips = args.pop("keep_from", None), args.pop("recompute", False), args.pop("flips", True)
    out += "".join(f" --{k.replace('_', '-')} {q(str(v))}" for k, v in args.items())  # (the methods' settings)
    out += " --no-flips" if flips is False else ""
    out += f" --keep-from {','.join(keep_from)}" if keep_from else ""
    return out + (" --recompute" if recompute else "")


def dedup_args(stale: Sequence[Node], final: Node | None, ds: "lance.LanceDataset") -> dict[str, Any]:
    """The keyword arguments of the one dedup run that makes every ``stale`` dedup node current:
    the stale methods (or, only the decision stale, those it reads) with their settings, the
    embedding the decision ranks by (with several on the lake, a dedup without it was refused) and
    its keep-from; ``recompute`` where a method's embedding was made again. What a pipeline's run
    passes to ``Lake.dedup`` for a dedup step its file does not list (:mod:`lakecurate.pipeline`)."""
    fcfg = (final.prov.get("config") or {}) if final is not None else {}
    keep_from = list(fcfg.get("keep_from") or [])
    cfgs = {c["method"]: c for c in ((n.prov.get("config") or {}) for n in stale) if c.get("method")}
    if not cfgs and final is not None:  # only the decision: its methods' settings, as stored
        cfgs = {c["method"]: c for c in ((n.prov.get("config") or {}) for n in nodes(ds) if n.stage == "dedup")
                if c.get("method") in keep_from}
    names = set(ds.schema.names)
    for m, mcfg in (fcfg.get("methods") or {}).items():  # groups another writer dropped: made again, as the decision
        if m in keep_from and m not in cfgs and f"dup_{m}_group" not in names:  # stored their settings
            cfgs[m] = {**mcfg, "method": m}
    rank = str(fcfg.get("rank_by") or "")
    embedding = next((c["embedding"] for c in cfgs.values() if c.get("embedding")), None) or \
        (rank[: -len("_score")] if rank.endswith("_score") else None)
    args: dict[str, Any] = {}
    if cfgs:
        args["methods"] = [m for m in keep_from if m in cfgs] + [m for m in cfgs if m not in keep_from]
    if embedding:
        args["embedding"] = embedding
    for m, cfg in cfgs.items():
        for key, flag in DEDUP_OPTIONS.get(m, {}).items():
            if cfg.get(key) is not None:
                args[dedup_keyword(flag)] = cfg[key]
    if any(c.get("flips") is False for c in cfgs.values()):
        args["flips"] = False
    if keep_from:
        args["keep_from"] = keep_from
    if any(_embedding_redone(ds, c) for c in cfgs.values()):
        args["recompute"] = True
    return args


def _embedding_redone(ds: "lance.LanceDataset", cfg: dict[str, Any]) -> bool:
    """Whether the embedding a dedup method's groups were made from was made again since (another
    config): its groups' config changed too, so regrouping needs --recompute."""
    if not cfg.get("embedding_config"):
        return False
    score = f"{cfg.get('embedding')}_score"
    now = field_provenance(ds.schema.field(score), strict=False) if score in ds.schema.names else None
    return bool(now and now.get("config_hash") != cfg["embedding_config"])


def _lost(ds: "lance.LanceDataset", node: Node, names: set[str]) -> list[str]:
    """The columns the node's run declared with its own (recorded in their provenance) that are not
    in the table now. A column declared before the set was recorded tells nothing: none lost."""
    lost: list[str] = []
    for c in node.columns:
        lost += [d for d in declared_columns(ds.schema.field(c)) or () if d not in names and d not in lost]
    return lost


def _dropped(ds: "lance.LanceDataset", node: Node, names: set[str], computed_from: int | None = None) -> list[str]:
    """The node's inputs that were in the table when it was declared (or, for a global node, when
    its values were last computed: ``computed_from``; a run since the drop did without them) and
    are not now."""
    gone = [src for src in node.sources if src not in names]
    if not gone:
        return []
    then = at_version(ds, int(computed_from if computed_from is not None else node.prov.get("table_version")))
    if then is None:  # (only when an input is missing: one manifest read) cleaned up: cannot tell, so not stale
        return []
    return [src for src in gone if src in then[0].schema.names]


def _per_row(ds: "lance.LanceDataset", node: Node, writes: dict[str, dict[int, Write]], frags: dict[int, Any],
             st: NodeState) -> None:
    """Per fragment: rows without the node's values are missing; a value whose input was written
    after it is stale. A value whose commit is no longer in the log (``cleanup`` removed it) counts
    as written at the start."""
    stale: dict[str, int] = {}
    holes, hidden = merged_holes(ds), merged_stale(ds)  # (the cache's own sets: read, never changed)
    merged = sorted({fid for c in node.columns for fid in holes.get(c, ()) if fid in frags})
    mixed = sorted({fid for c in node.columns for fid in hidden.get(c, ()) if fid in frags} - set(merged))
    redo, missing = 0, 0
    for frag in frags.values():
        rewritten = _rewritten_sources(ds, frag, node.columns, node.sources, writes)
        if rewritten is None:
            st.rows_missing += frag.count_rows()
            missing += 1
            continue
        for src, v in rewritten.items():
            stale[src] = max(stale.get(src, 0), v)
        if rewritten or frag.fragment_id in merged or frag.fragment_id in mixed:
            st.rows_stale += frag.count_rows()
            redo += 1
    if merged:  # filled, so never computed again: only a recompute gives those rows values
        st.state = "stale"
        st.reasons.append(f"{len(merged)} fragment(s) ({', '.join(map(str, merged[:5]))}) were merged by a compaction "
                          f"outside lakecurate (LanceDB optimize, Lance compact_files) while some of their rows had no "
                          f"{node.columns[0]}: those rows hold nulls no run computed")
    if mixed:
        st.state = "stale"
        st.reasons.append(f"{len(mixed)} fragment(s) ({', '.join(map(str, mixed[:5]))}) were merged by a compaction "
                          f"while some of their rows held stale values (an input rewritten after {node.stage} computed them)")
    if stale:
        st.state = "stale"
        st.reasons += [f"{src} was rewritten at version {v} after {node.stage} computed from it" for src, v in sorted(stale.items())]
    if redo:  # what the fix (the stage's plain run: runner.run, stale_fragments) computes again
        st.reasons.append(f"its fix computes {st.rows_stale} rows in {redo} fragment(s) again"
                          + (f", and {st.rows_missing} rows in {missing} fragment(s) that have none" if missing else ""))
    elif st.rows_missing:
        st.state = "incomplete"
        st.reasons.append(f"{st.rows_missing} rows have no {node.columns[0]} yet")


def _rewritten_sources(ds: "lance.LanceDataset", frag: Any, columns: Sequence[str], sources: Sequence[str],
                       writes: dict[str, dict[int, Write]]) -> dict[str, int] | None:
    """For one fragment: None when it has no values of ``columns`` yet; else the ``sources`` written
    after the values were computed (source -> the version that wrote it; empty: current). Rows
    deleted from a fragment leave the values of the others as they were (content writes)."""
    fid = frag.fragment_id
    return _newer_sources([content_write(writes.get(c, {}).get(fid)) or ((0, 0) if has_data(ds, frag, c) else None)
                           for c in columns], {src: content_write(writes.get(src, {}).get(fid)) for src in sources})


def _newer_sources(mine: list[Write | None], sources: dict[str, Write | None]) -> dict[str, int] | None:
    """None when a column of the stage has no write (no values); else the sources written after the
    earliest version the stage's values were computed from (source -> the version that wrote it)."""
    if any(w is None for w in mine):
        return None
    read = min(w[1] for w in mine)
    return {src: w[0] for src, w in sources.items() if w is not None and w[0] > read}


def stale_fragments(ds: "lance.LanceDataset", columns: Sequence[str], sources: Sequence[str]) -> list[int]:
    """The fragments of ``ds`` whose values of a per-row stage's ``columns`` are stale: an input of
    ``sources`` was rewritten after they were computed (a caption updated with Lance), or a
    compaction merged them with rows that had none (:func:`merged_holes`) or stale ones
    (:func:`merged_stale`). What
    a plain run of the stage computes again, beside the fragments without values."""
    writes, holes, hidden = last_writes(ds), merged_holes(ds), merged_stale(ds)
    merged = {fid for c in columns for fid in (*holes.get(c, ()), *hidden.get(c, ()))}
    return [f.fragment_id for f in ds.get_fragments()
            if f.fragment_id in merged or _rewritten_sources(ds, f, columns, sources, writes)]


def _global(lake: "Store", ds: "lance.LanceDataset", node: Node, writes: dict[str, dict[int, Write]], frags: list[Any],
             st: NodeState) -> None:
    """A global node read the whole table at one version: any input written after it is newer."""
    data = [w for c in node.columns for w in writes.get(c, {}).values()]
    marker = computed_marker(ds, node)
    candidates = [r for r in ([max(w[1] for w in data)] if data else []) + ([marker] if marker is not None else [])]
    read = max(candidates) if candidates else node.prov.get("table_version")
    st.computed_from = read
    if marker is None and not any(has_data(ds, f, c) for f in frags for c in node.columns):
        # declared, never written, no marker of a run that found nothing to write: the run stopped
        # between declaring its columns and its commit (kill -9, an error); its nulls mean nothing.
        # The commit log may still hold writes of a column of that name the run dropped first (a
        # curate with another config): they are not this column's, nor are rows without a value
        # rows that "arrived while curate ran"
        rows = sum(f.count_rows() for f in frags)
        if rows:
            st.state, st.rows_missing = "incomplete", rows
            busy = stage_running(lake, node.stage)  # (a run in progress, not one that stopped)
            # (the version the declaring run read: it may have committed more before it declared)
            st.reasons.append(f"{node.columns[0]} was declared by a {node.stage} run that read version "
                              f"{node.prov.get('table_version')}, and "
                              + (f"a {node.stage} run is deciding it now ({', '.join(busy)}); wait for it" if busy else
                                 f"no run wrote its values: a {node.stage} stopped before writing its decision "
                                 f"(killed?); run the same {node.stage} command again") + _last_tagged(ds, node))
            st.running = busy
            return
    if read is None:
        return
    newer, whole, ids = {}, set(), writes.get("id", {})
    for src in node.sources:
        fresh = {fid: w for fid, w in writes.get(src, {}).items() if w[0] > read}
        if not fresh:
            continue
        if all(ids.get(fid, (None,))[0] == w[0] for fid, w in fresh.items()):
            whole |= set(fresh)  # whole fragments written: rows appended (or replaced, or some deleted)
        else:
            newer[src] = max(w[0] for w in fresh.values())
    if whole and not newer and node.stage == "curate" and "keep" in node.columns and data:
        # rows that arrived while curate ran (appended after its read, before its decision's commit,
        # none decided): named below as rows without a decision, not as a stale one
        decided = max(w[0] for w in data)
        whole -= {f.fragment_id for f in frags if f.fragment_id in whole and ids[f.fragment_id][0] < decided
                  and not f.count_rows("keep IS NOT NULL")}
    gone = sorted(v for v in removed_fragments(ds).values() if v > read)
    if newer or whole or gone:
        st.state = "stale"
        st.reasons += [f"{src} was written at version {v}, after {node.stage} read version {read}"
                       for src, v in sorted(newer.items())]
    if gone and not whole:  # (with whole fragments changed too, the reason below says "removed" already)
        st.reasons.append(f"rows were removed since {node.stage} read version {read} (whole fragments deleted; last at "
                          f"version {gone[-1]}): its decisions were made over rows that are gone")
    if whole:  # one reason, not one per input column of the new rows ("caption was written ...")
        changed = [f for f in frags if f.fragment_id in whole]
        rows = sum(f.count_rows() for f in changed)
        # (as --json counts them: rows the stage never saw, and rows it saw before they were rewritten)
        st.rows_missing = sum(f.count_rows() for f in changed if not has_data(ds, f, node.columns[0]))
        st.rows_stale = rows - st.rows_missing
        last = max(ids[fid][0] for fid in whole)
        st.reasons.append(f"rows were added, replaced or removed since {node.stage} read version {read} "
                          f"(last change at version {last}; the fragments changed hold {rows} row{'' if rows == 1 else 's'})")
    if st.state == "current" and node.stage == "curate" and "keep" in node.columns:
        # rows that arrived while curate ran, committed before its decisions: its commit reads as
        # after them, yet they have no decision (never kept); only the next run judges them
        unjudged = _unjudged(ds)
        if unjudged:
            st.state, st.rows_missing = "incomplete", unjudged
            st.reasons.append(f"{unjudged} row{'' if unjudged == 1 else 's'} have no decision (they arrived while "
                              f"curate ran); run it again to judge them")


def _branch_of(ds: "lance.LanceDataset") -> str | None:
    """The branch a dataset is opened on (Lance's ``.../tree/NAME`` URI), None for main."""
    uri = ds.uri.rstrip("/")
    return uri.split("/tree/", 1)[1] if "/tree/" in uri else None


def _last_tagged(ds: "lance.LanceDataset", node: Node) -> str:
    """Where the last decision a run of a tagging stage (curate) finished is kept: its tag, if any."""
    if node.stage != "curate":
        return ""
    branch = _branch_of(ds)  # (tags are the lake's: this branch's)
    tagged = [(info["version"], name) for name, info in ds.tags.list().items()
              # (recipe-hash[-branch]-vN, or -vN-K where that name was taken: curate._tag)
              if re.fullmatch(rf".+-[0-9a-f]+(-.+)?-v{info['version']}(-[0-9]+)?", name)
              and info["version"] < ds.version and (info.get("branch") or None) == branch]
    if not tagged:
        return ""
    version, name = max(tagged)
    return f"; the last tagged decision is '{name}' (version {version})"


_COUNTS: dict[tuple[str, int, str, str], int] = {}


def _count(ds: "lance.LanceDataset", where: str) -> int:
    """Rows of this version matching ``where`` (a scan of its columns: cached per version, as the
    commit log is; status asks the graph several times)."""
    key = (*_version_key(ds), where)
    if key not in _COUNTS:
        if len(_COUNTS) > 256:
            _COUNTS.pop(next(iter(_COUNTS)))
        _COUNTS[key] = ds.count_rows(filter=where)
    return _COUNTS[key]


def _unjudged(ds: "lance.LanceDataset") -> int:
    """Rows ingest accepted whose ``keep`` is null at this version."""
    status = "ingest_status" in ds.schema.names
    return _count(ds, "keep IS NULL" + (" AND (ingest_status IS NULL OR ingest_status <> 'error')" if status else ""))


def check_has_rows(lake: "Store", ds: "lance.LanceDataset") -> None:
    """Refuse (LakeError), before anything is written, a deciding stage on a lake without rows: a
    decision (or a tag) of nothing is never made, and "run: lakecurate embed" was no way out."""
    if not ds.count_rows():
        raise LakeError(no_rows(lake))


def mark_computed(lake: "Store", columns: Sequence[str], sources: Sequence[str], read_version: int,
                  own: Sequence[int] = ()) -> int | None:
    """Record that a global stage's run read ``read_version`` when that run changed no value but its
    columns would otherwise look stale: an input was written after what they record (their last
    data write or marker) and not after ``read_version``. ``own``: versions the same run committed
    before these columns (dedup's group columns, which its final columns are made from): their
    writes were read too, so the record is the last of them, unless another writer's commit between
    ``read_version`` and them wrote an input (then that input is newer than what the run read).
    Metadata only; a re-run of a current stage commits nothing. Returns the new version, or None
    when nothing needed recording."""

    def commit() -> int | None:
        ds = lake.dataset()
        present = [c for c in columns if c in ds.schema.names]
        if not present:
            return None
        writes = last_writes(ds)
        read = _read_with_own(writes, sources, read_version, own)
        data_read = max((w[1] for c in present for w in writes.get(c, {}).values()), default=-1)
        marker = computed_marker(ds, Node("", present, [], {}))
        recorded = max(data_read, marker if marker is not None else -1)
        newer = [w[0] for c in sources for w in writes.get(c, {}).values() if recorded < w[0] <= read]
        # (rows deleted whole-fragment since: no input was written, yet the run decided over the rows
        # left; unrecorded, its re-run, pasted from status, changed nothing and status still said stale)
        newer += [v for v in removed_fragments(ds).values() if recorded < v <= read]
        if not newer:
            return None
        ds.update_field_metadata({c: {COMPUTED_KEY: json.dumps({"read_version": int(read)})} for c in present})
        return ds.version

    return retry_on_conflict(commit)


# ----------------------------------------------------------------------------- what to run
def fix_command(lake: "Store", node: Node, ds: "lance.LanceDataset | None" = None) -> str:
    """The command that brings ``node`` up to date (a per-row stage's plain run fills its missing
    rows and computes its stale fragments again; a global stage runs again),
    rebuilt from its provenance: every option the stage was run with, quoted, so that it can be
    pasted and runs as given (tests/test_pipeline.py runs them). ``ds``: the version the node is
    of (default: the latest), where a dedup method's embedding is looked up."""
    import shlex

    q = shlex.quote
    cfg = node.prov.get("config") or {}
    uri = lake.shell
    head = lakecurate_on(lake)

    def opt(name: str, value: Any) -> str:  # an option given only when it was set
        return "" if value is None else f" {name} {q(str(value))}"

    # (a per-row stage's plain run fills the rows without values and computes the stale fragments
    # again: runner.run with graph.stale_fragments; --recompute would redo every row)
    if node.stage == "embed":
        return embed_command(lake, cfg.get("prefix") or node.columns[0].rsplit("_", 1)[0], node.prov)
    if node.stage == "curate":
        source = str(cfg.get("source") or "")
        if not source or source.startswith("<"):  # a recipe given as a dict (the Python API): no file to name
            source = "RECIPE.toml"
        elif _builtin_recipe(source):  # a built-in recipe: its name
            source = Path(source).stem
        sets = dict(((cfg.get("recipe") or {}).get("set")) or {})
        scores = [c[: -len("_score")] for c in node.sources if c.endswith("_score")]
        if not (cfg.get("recipe") or {}).get("embedding") and "embedding" not in sets and len(scores) == 1 \
                and len(embedding_prefixes(ds if ds is not None else lake.dataset())) > 1:
            sets["embedding"] = scores[0]  # the one it read: with several on the lake, the plain command was refused
        return f"{head} curate {uri} {q(source)}" + "".join(f" --set {q(f'{k}={json.dumps(v)}')}" for k, v in sets.items())
    if node.stage == "dedup":  # a method's groups: that method with its settings (the decision: the methods it reads)
        return dedup_fix(lake, [node], None if cfg.get("method") else node, ds if ds is not None else lake.dataset())
    if node.stage == "concepts":
        return f"{head} cluster {uri} -k {cfg.get('k')}{opt('--embedding', cfg.get('embedding'))} --seed {cfg.get('seed', 0)}"
    if node.stage == "rebalance":
        target = cfg.get("target")
        if isinstance(target, int) and not isinstance(target, bool):  # a count: more than the candidates now is refused
            d = ds if ds is not None else lake.dataset()
            view = cfg.get("where") or ("keep" if "keep" in d.schema.names else None)
            try:
                n = d.count_rows(filter=f"({view}) AND concept IS NOT NULL" if view else "concept IS NOT NULL")
            except Exception:  # noqa: BLE001 - a view that no longer reads (a dropped column): the command says so
                n = target
            target = min(target, n) if n else target  # (a stricter recipe since: 100 of 74 candidates failed as printed)
        return (f"{head} rebalance {uri} --target {target} --temperature {cfg.get('temperature')} "
                f"--rule {cfg.get('rule')} --max-repeats {cfg.get('max_repeats')}{opt('--where', cfg.get('where'))} "
                f"--seed {cfg.get('seed', 0)}")
    if node.stage == "sequence":
        return (f"{head} sequence {uri} --mode {cfg.get('mode')}{opt('--score', cfg.get('score'))} "
                f"--shard-size {cfg.get('shard_size')}{opt('--where', cfg.get('where'))} --seed {cfg.get('seed', 0)}")
    if node.stage == "feature":  # its inputs, parameters and type as it was added; a stale one replaced
        types = cfg.get("types") or {}
        name = cfg.get("feature") or node.columns[0]
        out = f"{head} feature add {uri} {q(name)} --udf {q(str(node.prov.get('udf', 'MODULE:FUNCTION')))}"
        out += "".join(f" --input {q(c)}" for c in cfg.get("inputs") or [])
        out += "".join(f" --param {q(f'{k}={json.dumps(v)}')}" for k, v in (cfg.get("params") or {}).items())
        if list(types) == [name]:  # one column: its type (a function of several declares its own)
            out += f" --type {q(str(types[name]))}"
        return out
    if node.stage.startswith("signals-"):
        return signals_command(lake, [node.stage])
    if node.stage == "embed-caption":
        return embed_command(lake, cfg.get("prefix") or "PREFIX", node.prov) + f" --caption-col {cfg.get('caption')}"
    if node.stage == "recaption":
        # (an endpoint's transport settings are recorded beside its config, not in it; so is where a
        # checkpoint lay)
        args = recaption_args({**(node.prov.get("transport") or {}), **cfg}, node.prov.get("weights"))
        return f"{head} recaption {uri} {args}"
    return f"{head} run {uri} PIPELINE.toml"  # a stage this function does not know


def signals_command(lake: "Store", stages: Iterable[str]) -> str:
    """The one ``lakecurate signals`` command that computes the signal ``stages`` ("signals-caption",
    "signals-faces"...): it computes caption and image unless told not to, any other kind when named."""
    chosen = set(stages)
    kinds = [stage.split("-", 1)[1] for stage in ORDER if stage.startswith("signals-") and stage in chosen]
    return (f"{lakecurate_on(lake)} signals {lake.shell}" + "".join(f" --{k}" for k in kinds if k not in ("caption", "image"))
            + "".join(f" --no-{k}" for k in ("caption", "image") if k not in kinds))


def recaption_args(cfg: dict[str, Any], weights: str | None = None) -> str:
    """The ``lakecurate recaption`` options that wrote a caption column, from its provenance config
    (a checkpoint file or directory where the run found it, ``weights``: its config names it by name)."""
    import shlex

    if cfg.get("api_model"):  # an endpoint (its key variable, never the key)
        args = ["--endpoint", cfg.get("endpoint"), "--api-model", cfg["api_model"], "--mode", cfg.get("mode", "caption"),
                "--prompt", cfg.get("prompt", "")]
        for opt in ("concurrency", "timeout", "retries", "api_key_env"):
            if cfg.get(opt) is not None:
                args += [f"--{opt.replace('_', '-')}", cfg[opt]]
    else:
        arch = str(cfg.get("arch", ""))
        pre = weights if weights and "checkpoint_bytes" in cfg else cfg.get("pretrained")
        if cfg.get("family") == "hf":
            args = ["--model", pre] + (["--prompt", cfg["prompt"]] if cfg.get("prompt") else [])
        else:  # (the tiny random CoCa by its name, and a checkpoint saved from it as any CoCa's: it was dropped)
            args = ["--model", "tiny-random-coca" if arch.endswith("MEANINGLESS") else arch]
            args += [("--checkpoint" if "checkpoint_bytes" in cfg else "--pretrained"), pre] if pre else []
        args += ["--top-k", cfg.get("top_k", 5)]
    args += ["--name", cfg.get("name"), "--max-tokens", cfg.get("max_tokens"), "--temperature", cfg.get("temperature"),
             "--seed", cfg.get("seed", 0)]
    return " ".join(shlex.quote(str(a)) for a in args)


def embed_command(lake: "Store", prefix: str, prov: dict[str, Any]) -> str:
    """The ``lakecurate embed`` command that fills the ``prefix`` columns (:func:`embed_args`)."""
    import shlex

    args = embed_args(prefix, prov)
    out = f"{lakecurate_on(lake)} embed {lake.shell} --model {shlex.quote(args['model'])}"
    out += f" --checkpoint {shlex.quote(args['checkpoint'])}" if "checkpoint" in args else ""
    out += f" --precision {args['precision']}" if "precision" in args else ""
    out += f" --decode {args['decode']}" if "decode" in args else ""
    return out + (f" --name {args['name']}" if "name" in args else "")


def embed_args(prefix: str, prov: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of the embed run that fills the ``prefix`` columns, rebuilt from their
    provenance: every recorded setting a run must repeat to be "the same config" (the model and its
    weights, a checkpoint file where the run found it (its config names it by file name), the
    precision, the decode, the column prefix). A pasted fix that dropped ``--precision bf16`` was
    refused as "made with another config"."""
    import os

    cfg = prov.get("config", {})
    arch, pretrained = cfg.get("arch"), cfg.get("pretrained")
    extra: dict[str, Any] = {}
    if cfg.get("family") == "offline":
        model, default = "offline", "offline"
    elif pretrained and ("checkpoint_bytes" in cfg or os.sep in pretrained):  # a local checkpoint file
        # (before tiny-random: a checkpoint saved from the tiny random model is that model's file)
        model = "tiny-random" if arch == TINY_RANDOM else str(arch)
        default, extra = None, {"checkpoint": str(prov.get("weights") or pretrained)}
    elif arch == TINY_RANDOM:
        model, default = "tiny-random", "clip_tinyrandom"
    elif cfg.get("family") == "open_clip" and not pretrained:  # random weights of a real architecture
        model, default = f"{arch}:random", None
    else:
        model, default = (f"{arch}:{pretrained}" if pretrained else str(arch)), None
    if cfg.get("precision") not in (None, "fp32"):  # (the default, left out)
        extra["precision"] = cfg["precision"]
    if cfg.get("decode") not in (None, "cpu"):
        extra["decode"] = cfg["decode"]
    return {"model": model, **extra, **({} if prefix == default else {"name": prefix})}


def check_embedded(lake: "Store", ds: "lance.LanceDataset", prefix: str, prov: dict[str, Any], *, kind: str,
                   need: str, then: str) -> None:
    """Refuse, before any write, a stage that reads the ``kind`` column ("image", "score"...) of
    embedding ``prefix`` (provenance ``prov``) while live rows lack it (fragments ``embed`` has not
    filled: rows ingested since): the error names a few of them and the embed command, then the
    stage (``then``) to run again. Rows whose embedding failed (an ``_error``) were filled: they
    are not named."""
    column = embedding_columns(prefix)[kind]
    todo = fragments_to_fill(ds, column)
    missing = sum(f.count_rows() for f in todo)
    if not missing:
        return
    first: list[dict[str, Any]] = []
    for frag in todo:
        if len(first) < 3:
            first += frag.to_table(columns=["id", "key"], limit=3 - len(first)).to_pylist()
    rows = ", ".join(f"{r['id']} ({r['key']})" for r in first) + (", ..." if missing > len(first) else "")
    what = {"image": "image embedding", "text": "text embedding"}.get(kind, kind)
    raise LakeError(f"{missing} rows of lake '{lake.uri}' have no {prefix} {what} yet ({rows}) and {need}; "
                    f"run: {embed_command(lake, prefix, prov)}, "
                    f"then {then} again")


def embedded_rows(lake: "Store", ds: "lance.LanceDataset", column: str, then: str) -> np.ndarray:
    """Which rows of ``ds`` have a vector in the embedding column ``column`` (one streamed pass,
    :func:`~lakecurate.columns.vector_rows`), refusing one with a NaN or infinite entry
    (:func:`broken_vectors`)."""
    import numpy as np

    valid, broken = vector_rows(ds, column)
    if broken.any():
        at = np.flatnonzero(broken)
        raise broken_vectors(lake, ds, column, len(at), ds.take(at[:3].tolist(), columns=["id", "key"]).to_pylist(), then)
    return valid


def broken_vectors(lake: "Store", ds: "lance.LanceDataset", column: str, count: int, first: list[dict[str, Any]],
                   then: str) -> LakeError:
    """The error for ``count`` rows whose ``column`` vector has a NaN or infinite entry (``first``: a
    few of them, with ``id`` and ``key``): it names them and the command that computes the column
    again, then the stage (``then``) to run again."""
    rows = ", ".join(f"{r['id']} ({r['key']})" for r in first) + (", ..." if count > len(first) else "")
    node = next((n for n in nodes(ds) if column in n.columns), None)
    redo = (fix_command(lake, node, ds) + " --recompute") if node is not None and node.stage.startswith("embed") else (
        f"the command that wrote {column}")
    return LakeError(f"{count} rows of lake '{lake.uri}' hold a {column} vector with NaN or infinite values ({rows}): "
                     f"written outside lakecurate, or by a model that overflowed; compute them again: {redo}, then {then} "
                     "again")


def lakecurate_on(lake: "Store") -> str:
    """The command a hint starts with: on a branch, ``lakecurate --branch NAME`` (``Store.command``)."""
    return str(getattr(lake, "command", "lakecurate"))


def not_current_notes(lake: "Store", ds: "lance.LanceDataset", columns: Iterable[str], effect: str,
                      named: str | None = None) -> list[str]:
    """One line for each node behind ``columns`` that is not current (:func:`not_current`): what it
    is (its columns, or ``named``), why, ``effect`` (what a reader of those columns gets meanwhile)
    and the command that fixes it. What ``search`` and ``lakecurate sql`` say beside values that may
    be missing or old."""
    out = []
    for st in not_current(lake, ds, columns):
        shown = named or ", ".join(st.node.columns[:3]) + (", ..." if len(st.node.columns) > 3 else "")
        out.append(f"{st.node.stage} ({shown}) is {st.state}: {st.reasons[0]}; {effect}" + (
            f": {st.fix}" if st.empty_view else f" until this runs: {st.fix}"))  # (an empty view: no run helps)
    return out


_QUERY_NOTES: dict[tuple[Any, ...], tuple[float, list[str]]] = {}
_STAR = re.compile(r"(?is)(?:\bselect\s+(?:distinct\s+)?|,\s*)(?:[a-z_][a-z0-9_]*\.)?\*\s*(?:,|\bfrom\b|$)")


def query_notes(lake: "Store", ds: "lance.LanceDataset", query: str, ttl: float = 10.0) -> list[str]:
    """:func:`not_current_notes` for the columns a SQL query reads (every column for a ``SELECT *``:
    it said nothing there), what ``Lake.sql`` and ``lakecurate sql`` note beside values that may be
    missing or old. Kept per table version for ``ttl`` seconds (a notebook's loop of queries read
    the stage graph each time: 3 -> 13 ms a query at 200 versions; a run that stops or starts
    meanwhile shows within ``ttl``)."""
    import time

    names = ds.schema.names
    cols = list(names) if _STAR.search(query) else where_columns(query, names)
    key = (*_version_key(ds), tuple(cols))
    now = time.monotonic()
    hit = _QUERY_NOTES.get(key)
    if hit is not None and now - hit[0] < ttl:
        return list(hit[1])
    if len(_QUERY_NOTES) > 64:
        _QUERY_NOTES.clear()
    notes = not_current_notes(lake, ds, cols, "its values may be missing or old")
    _QUERY_NOTES[key] = (now, notes)
    return list(notes)


def not_current(lake: "Store", ds: "lance.LanceDataset", columns: Iterable[str],
                all_states: list[NodeState] | None = None,
                kinds: Iterable[str] = ("stale", "incomplete", "dropped")) -> list[NodeState]:
    """The nodes behind ``columns`` (the columns themselves and, through their sources, every node
    they were computed from) that are not current (in a state of ``kinds``). ``all_states``:
    :func:`states` of ``ds``, when the caller has them already."""
    kinds = set(kinds)
    all_states = states(lake, ds) if all_states is None else all_states
    producer = {c: s for s in all_states for c in s.node.columns}
    todo, seen, bad = list(columns), set(), []
    while todo:
        c = todo.pop()
        s = producer.get(c)
        if s is None or id(s) in seen:
            continue
        seen.add(id(s))
        if s.state in kinds:
            bad.append(s)
        todo += s.node.sources
    bad.sort(key=lambda s: ORDER.index(s.node.stage) if s.node.stage in ORDER else len(ORDER))
    return bad


def blocks(s: NodeState) -> bool:
    """Whether what is built on ``s`` must not be used: it is stale or dropped, or it is a global stage's
    decision that no run finished (declared, then killed before its commit: its nulls mean
    nothing). A per-row stage's rows not computed yet only make it incomplete."""
    return s.state in ("stale", "dropped") or (s.state == "incomplete" and not s.node.per_row)


def check_current(lake: "Store", ds: "lance.LanceDataset", columns: Iterable[str], *, what: str,
                  allow_stale: bool = False, incomplete_ok: bool = True,
                  all_states: list[NodeState] | None = None, allow_hint: str = "--allow-stale",
                  view: bool = True) -> list[str]:
    """Refuse (LakeError) to let ``what`` use ``columns`` when a node behind them is stale; with
    ``allow_stale``, return the problems as warnings instead. A node that is only incomplete (new
    rows not computed yet) is a warning unless ``incomplete_ok`` is False. ``all_states``: as
    :func:`not_current`'s. ``allow_hint``: how the caller allows it (the loader, Python only:
    ``allow_stale=True``). ``view``: the caller chooses among the curated view's rows (False: a
    selection of the caller's own, an export's ``--where``)."""
    bad = not_current(lake, ds, columns, all_states)
    msgs = [f"{s.node.stage} ({', '.join(s.node.columns[:3])}{', ...' if len(s.node.columns) > 3 else ''}) is "
            f"{s.state}: {s.reasons[0]}" for s in bad]
    blocking = [s for s in bad if blocks(s) or not incomplete_ok]
    if blocking and not allow_stale:
        first = blocking[0]
        check_has_rows(lake, ds)  # (every fix named a stage that refuses a lake without rows)
        empty = next((s.empty_view for s in blocking if s.empty_view), "")
        if empty and view:  # (re-running the stale stage is refused too: nothing is kept to choose from)
            raise LakeError(empty_view_fix(lake, empty, what))
        if empty:  # a selection of its own: the stale columns may still serve it, if the caller says so
            raise LakeError(f"{what} would use stale decisions on lake '{lake.uri}': {msgs[bad.index(first)]}, and no "
                            f"run makes it current: {empty_view_fix(lake, empty)}; or pass {allow_hint} to use them")
        raise LakeError(f"{what} would use stale decisions on lake '{lake.uri}': {msgs[bad.index(first)]}; "
                        f"re-run it: {first.fix} (or pass {allow_hint})")
    return msgs


def effective_view(lake: "Store", ds: "lance.LanceDataset",
                   all_states: list[NodeState] | None = None) -> tuple[str | None, list[str]]:
    """The curated view a person means: the latest decision column (``rebalance_keep``, then
    ``keep``) that is current, with notes on the later ones skipped as stale. When none is current,
    the earliest present one, with its problem noted (the caller decides whether that is an error).
    None before any curation. ``all_states``: the graph's reading of ``ds`` where the caller has it."""
    from lakecurate.names import VIEW_DECISIONS

    present = [c for c in VIEW_DECISIONS if c in ds.schema.names and c not in foreign_decisions(ds.schema)]
    if all_states is None:
        all_states = states(lake, ds) if present else []  # one reading of the graph for every candidate
    notes = foreign_view_notes(lake, ds)
    for col in present:
        behind = not_current(lake, ds, [col], all_states)  # (in stage order: the first is furthest upstream)
        bad = [s for s in behind if blocks(s)]
        if not bad:
            return col, notes
        why = f"{bad[0].node.stage} is {bad[0].state} ({bad[0].reasons[0]}); " + (
            bad[0].fix if bad[0].empty_view else f"re-run: {bad[0].fix}")  # (no re-run helps an empty view)
        first = behind[0]
        if first.node.stage != bad[0].node.stage and first.fix and not bad[0].empty_view:
            # an upstream stage not done (new rows not embedded): its fix first, else the re-run reads its gaps
            why = (f"{bad[0].node.stage} is {bad[0].state} ({bad[0].reasons[0]}), and {first.node.stage} before it is "
                   f"{first.state} ({first.reasons[0]}); run first: {first.fix}, then: {bad[0].fix}")
        # the last candidate is used all the same: the note says so (it said "skipped" while in use)
        notes.append(f"{col} skipped: {why}" if col != present[-1] else f"{col} used though no decision is current: {why}")
    return (present[-1] if present else None), notes


def check_decided(lake: "Store", ds: "lance.LanceDataset", view: str | None, *, what: str, allow_stale: bool = False,
                  allow_hint: str = "--allow-stale") -> list[str]:
    """Refuse (LakeError) to let ``what`` choose the rows of the lake's view ``view`` (a decision
    column; None: every row ingest accepted) when another writer dropped a curated decision whole
    (curate's ``keep`` and ``drop_reason``, rebalance's): the rows would be chosen without the lake's
    decision, as a stale one's would (:func:`check_current`); a rebalance made since chose among
    every row. With ``allow_stale`` (a past version, whose drop cannot be undone there), return the
    problems as warnings instead. (A decision dropped with ``lakecurate drop`` is no longer the
    lake's: nothing refused.)"""
    from lakecurate.names import VIEW_DECISIONS

    stages = {decision(c).stage: c for c in VIEW_DECISIONS}
    whole = dropped_nodes(ds)
    gone = [gone_whole(lake, ds, n) for n in whole if n.stage in stages]
    names = set(ds.schema.names) - set(foreign_decisions(ds.schema))
    for prov in node_records(ds).values():  # the decision column alone renamed (or dropped): its rows are not chosen
        cols = [str(c) for c in prov[DECLARED_KEY]]
        col = stages.get(str(prov["stage"]))
        if col in cols and col not in names and names & set(cols):
            n = Node(str(prov["stage"]), [c for c in cols if c in names], [], prov)
            moved = _renamed_reason(ds, n, [col])
            reason = moved[0] if moved else f"its column {col} is no longer in the table (another writer dropped it)"
            gone.append(NodeState(n, "stale", [reason], fix=fix_command(lake, n, ds),
                                  renamed=moved[1] if moved else {}))
    msgs = [f"{s.node.stage} ({', '.join(s.node.columns)}) is {s.state}: {s.reasons[0]}" for s in gone]
    if gone and not allow_stale:
        raise LakeError(f"{what} would choose rows without the curated decision of lake '{lake.uri}': {msgs[0]}; "
                        f"re-run it: {gone[0].fix} (or pass {allow_hint})")
    return msgs


def check_ordered(lake: "Store", ds: "lance.LanceDataset", *, what: str, allow_stale: bool = False,
                  allow_hint: str = "--allow-stale") -> list[str]:
    """Refuse (LakeError) to let ``what`` write the rows in table order where the lake has an
    order (``sequence``'s record) whose ``seq_order`` is gone: another writer dropped or renamed
    it, or a run replacing it did not finish. Export and the loader read ``seq_order`` only where
    it is, so they shipped table order (and another shard size) without a word. With
    ``allow_stale``, the problems as warnings."""
    if "seq_order" in ds.schema.names or not any(p.get("stage") == "sequence" for p in node_records(ds).values()):
        return []
    bad = [s for s in states(lake, ds) if s.node.stage == "sequence" and s.state != "current"]
    msgs = [f"sequence ({', '.join(s.node.columns)}) is {s.state}: {s.reasons[0] if s.reasons else s.state}" for s in bad]
    if bad and not allow_stale:
        raise LakeError(f"{what} would write rows in table order on lake '{lake.uri}', which has lost its order: "
                        f"{msgs[0]}; re-run it: {bad[0].fix} (or pass {allow_hint})")
    return msgs


def foreign_view_notes(lake: "Store", ds: "lance.LanceDataset") -> list[str]:
    """A note on each decision column another writer added under a decision's name (``keep`` by
    Lance's ``add_columns``): it is not the lake's decision, so no view uses it."""
    fix = {"curate": f"{lakecurate_on(lake)} curate {lake.shell} RECIPE.toml",
           "rebalance": f"{lakecurate_on(lake)} rebalance {lake.shell}"}
    return [f"{c} was not written by lakecurate {decision(c).stage}: not used as the view; drop it with the tool that "
            f"added it (lakecurate drops no other writer's column), then run {fix[decision(c).stage]}"
            for c in foreign_decisions(ds.schema)]


def unheeded_reviews(ds: "lance.LanceDataset", view: str | None) -> list[str]:
    """A note when reviewers' verdicts are not in the curated view ``view`` because the recipe that
    decided ``keep`` has no ``review`` step: rows marked drop are still in the view, rows marked keep
    were dropped by the recipe (only a review step reads the verdicts; status called the view
    current, and export shipped the rows). Empty when nobody reviewed or the recipe reads them."""
    names = ds.schema.names
    if not view or "review_verdict" not in names or "keep" not in names:
        return []
    cfg = (field_provenance(ds.schema.field("keep"), strict=False) or {}).get("config") or {}
    recipe = cfg.get("recipe") or {}
    if any(s.get("filter") == "review" for s in recipe.get("steps") or []):
        return []
    import pyarrow.compute as pc

    # one scan of the reviewed rows (two filtered counts read the lake twice)
    t = ds.to_table(columns={"verdict": "review_verdict", "keep": "keep", "in_view": f"({view})"},
                    filter="review_verdict IN ('drop', 'keep')")
    verdict = t.column("verdict")
    drops = pc.sum(pc.and_kleene(pc.equal(verdict, "drop"), t.column("in_view")).fill_null(False)).as_py() or 0
    keeps = pc.sum(pc.and_kleene(pc.equal(verdict, "keep"), pc.invert(t.column("keep"))).fill_null(False)).as_py() or 0
    if not drops and not keeps:
        return []
    rows = [f"{n} row{'s' if n != 1 else ''} reviewers marked {v} {were if n != 1 else was} {what}" for n, v, was, were, what
            in ((drops, "drop", "is", "are", "still in the curated view"), (keeps, "keep", "was", "were", "dropped by the recipe"))
            if n]
    source = str(cfg.get("source") or "")
    fix = ("add a step `filter = \"review\"` to the recipe and curate again" if not source or source.startswith("<")
           else f"add `[[step]] filter = \"review\"` to a copy of {source} and curate with the copy"
           if Path(source).parent == RECIPES else f"add `[[step]] filter = \"review\"` to {source} and curate again")
    return [f"{' and '.join(rows)}: recipe {recipe.get('name') or '?'} has no review step, the only step that reads "
            f"reviewers' verdicts; {fix}"]


def no_producer(lake: "Store", consumer: str) -> Produce:
    """The ``produce`` a stage gets on a bare store: it runs nothing, so an input another stage
    makes must already be filled, or the error names that stage and the way to have it made."""
    def produce(stage: str, **_: Any) -> int:
        column = PRODUCERS[stage]
        ds = lake.dataset()
        if column in ds.schema.names and not fragments_to_fill(ds, column):
            return 0
        raise LakeError(f"{consumer} needs the {stage} stage's column '{column}' on lake '{lake.uri}'; run {consumer} "
                        f"through Lake.{consumer} (or lakecurate {consumer}), which computes it")
    return produce


def write_decisions(lake: "Store", tbl: Any, new: dict[str, Any], *, sources: Sequence[str],
                    read_version: int) -> tuple[int, int | None]:
    """The one write of a global stage (dedup, curate, concepts, rebalance, sequence): the fragments
    whose values changed, in one commit (:func:`lakecurate.columns.write_changed`), then the marker
    when nothing changed but the columns would look stale. Returns (fragments written, new version
    or None)."""
    from lakecurate.columns import changed_fragments

    return commit_decisions(lake, changed_fragments(lake, tbl, new), sources=sources, read_version=read_version)


def _read_with_own(writes: dict[str, dict[int, Write]], sources: Sequence[str], read_version: int,
                   own: Sequence[int]) -> int:
    """What a run that read ``read_version`` computed from, counting the versions ``own`` it committed
    itself before (their writes were read too), unless another writer's commit between them wrote
    an input (see :func:`mark_computed`)."""
    mine = {int(v) for v in own if v is not None}
    if mine and max(mine) > read_version:
        foreign = [w for c in sources for w in writes.get(c, {}).values()
                   if read_version < w[0] <= max(mine) and w[0] not in mine]
        return read_version if foreign else max(mine)
    return read_version


def commit_decisions(lake: "Store", changed: Any, *, sources: Sequence[str], read_version: int,
                     own: Sequence[int] = ()) -> tuple[int, int | None]:
    """:func:`write_decisions` of a stage that decided a fragment at a time: commit the files of
    ``changed`` (a :class:`lakecurate.columns.ChangedFragments`), then the marker (``own``: see
    :func:`mark_computed`). The commit records the version the values were computed from: Lance's
    read version of a commit retried past another writer's is after that writer's, whose input
    change the values never saw (status called the stage current)."""
    read = _read_with_own(last_writes(lake.dataset()), sources, read_version, own) if own else read_version
    written, version = changed.commit(computed_from=read)
    marked = mark_computed(lake, changed.names, sources, read_version, own)
    return written, marked if marked is not None else version
