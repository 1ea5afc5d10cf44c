"""Human review: verdicts are columns of the lake, written like every other column.

A reviewer marks rows **keep**, **drop** (with a reason) or with a **label** from the lake's list;
each mark writes ``review_verdict``, ``review_reason``, ``review_label``, ``review_by`` and
``review_at`` of those rows, one ``DataReplacement`` commit for the fragments they live in
(:func:`lakecurate.columns.fill_fragments`). The write is a read-modify-write: the fragment's
current review values are read at one version, the marks applied, and the commit made at that
version, so two reviewers who change rows of the same fragment at once conflict, and the loser
reads again and re-applies its marks on top of the winner's: nobody's verdict is lost.

Every mark is also a row of the side table ``review_log`` (what each row held before and after,
who, when), which makes **undo** a restore of the previous values, and an audit trail. The entry is
written before the marks: a review killed between the two leaves an entry whose marks never landed,
never marks without an entry. The entry records the version the marks were read at, and their
commit names the action, so :func:`history` tells an entry that never landed apart and :func:`undo`
says there is nothing to undo. A recipe
step ``review`` reads the verdicts: a reviewer's keep or drop overrides the machine's decision.

Example::

    mark(lake, ["a1", "b7"], verdict="drop", reason="watermark", by="ana")
    undo(lake, action)                      # the rows hold what they held before
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from lakecurate import columns
from lakecurate.errors import LakeError
from lakecurate.graph import lakecurate_on
from lakecurate.options import clean_text, is_number, spell, texts, unicode, words
from lakecurate.sqlcheck import in_list
from lakecurate.store import retry_on_conflict

if TYPE_CHECKING:
    import lance

    from lakecurate.store import Store

STAGE = "review"
VERDICTS = ("keep", "drop")
FIELDS = (
    pa.field("review_verdict", pa.string()),
    pa.field("review_reason", pa.string()),
    pa.field("review_label", pa.string()),
    pa.field("review_by", pa.string()),
    pa.field("review_at", pa.timestamp("us", tz="UTC")),
)
NAMES = tuple(f.name for f in FIELDS)
LOG = "review_log"
LABELS = "review_labels"
ACTION_KEY = "lakecurate.review_action"  # the transaction property naming the action whose marks a commit wrote
NEVER_LANDED = "never landed: the marks were not written"
MAX_ROWS = 10_000  # rows one mark may touch (a selection in the browser, a list on the command line)
MAX_TEXT = 500  # characters of a reason, label or reviewer name


def _text(value: Any, what: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise LakeError(f"review {what} must be text, not {type(value).__name__}")
    value = clean_text(unicode(f"review {what}", value))  # (a NUL or a terminal's ESC was stored, and printed by --history)
    if len(value) > MAX_TEXT:
        raise LakeError(f"review {what} is {len(value)} characters; at most {MAX_TEXT}")
    return value or None


def labels(lake: "Store") -> list[str]:
    """The lake's review labels (set with :func:`set_labels`; none by default)."""
    ds = lake.side_dataset(LABELS)
    return [] if ds is None else ds.to_table(columns=["label"]).column("label").to_pylist()


def set_labels(lake: "Store", names: Sequence[str]) -> list[str]:
    """Set the labels reviewers choose from (a new version of the side table ``review_labels``)."""
    clean = []
    for n in names:
        t = _text(n, "label")
        if t and t not in clean:
            clean.append(t)
    lake.write_side(LABELS, pa.table({"label": pa.array(clean, pa.string())}), mode="overwrite")
    return clean


def declare(lake: "Store") -> None:
    """The review columns (metadata only; a no-op when they exist). Some of them alone (one dropped
    outside lakecurate) are an error naming the two ways on: a mark writes them all."""
    ds = lake.dataset()
    present = [n for n in NAMES if n in ds.schema.names]
    if present and len(present) < len(NAMES):
        raise LakeError(_partial(lake, ds, present))
    prov = columns.provenance(STAGE, {"columns": list(NAMES)}, [], ds.version)
    columns.declare(lake, FIELDS, prov)


def _partial(lake: "Store", ds: "lance.LanceDataset", present: list[str]) -> str:
    """What to do when some review columns were dropped (it said "run with --recompute", which review
    does not take): restore the latest version that had them all, or drop the rest and start again."""
    import shlex

    from lakecurate.graph import Node, last_whole

    missing = [n for n in NAMES if n not in present]
    whole = last_whole(ds, Node(STAGE, list(NAMES), [], {}))  # (the log's schema changes, not every version)
    head = lakecurate_on(lake)
    drop = f"{head} drop {lake.shell} {' '.join(shlex.quote(n) for n in present)}"
    back = (_back(lake, whole) + " (the latest version that has them all: its marks "
            "written back), or " if whole is not None else "")
    return (f"lake '{lake.uri}' has the review columns {', '.join(present)} without {', '.join(missing)} (dropped "
            f"outside lakecurate?); a mark writes all {len(NAMES)}. Go on with {back}drop the rest and mark again "
            f"(their verdicts stay in version {ds.version} and the review log): {drop}")


def _check(lake: "Store", ids: Sequence[str], verdict: str | None, reason: str | None, label: str | None,
           by: str | None) -> tuple[list[str], str | None, str | None, str | None, str]:
    allowed = labels(lake)
    ids = texts("review ids", ids)  # one id is a list of one, not of its letters; None was a TypeError
    if any(not i for i in ids):  # before the dict: a JSON list or object is unhashable
        raise LakeError("review: row ids are the lake's pair ids (non-empty text)")
    ids = list(dict.fromkeys(ids))
    if not ids:
        raise LakeError("review: no rows given; select at least one")
    if len(ids) > MAX_ROWS:
        raise LakeError(f"review: {len(ids)} rows in one mark; at most {MAX_ROWS}")
    if verdict is not None and verdict not in VERDICTS:
        raise LakeError(f"review verdict {verdict!r}: use one of {', '.join(VERDICTS)}")
    reason, label, by = _text(reason, "reason"), _text(label, "label"), _text(by, "reviewer")
    if verdict is None and label is None:
        raise LakeError("review: give a verdict (keep or drop) or a label")
    if verdict == "drop" and not reason:
        raise LakeError("review: a drop needs a reason (what is wrong with the pair)")
    if verdict == "keep" and reason:
        raise LakeError("review: a reason goes with a drop, not with a keep")
    if label is not None and label not in allowed:
        branch = getattr(lake, "branch", None)  # labels are a branch's own (side_uri per branch)
        whose = f"branch {branch}'s" if branch else "this lake's"
        main = f"; main has {', '.join(labels(lake.on_branch(None)))}" \
            if branch and not allowed else ""
        raise LakeError(f"review label {label!r} is not one of {whose} labels ({', '.join(allowed) or 'none set'}{main}); "
                        "set them with: " + words(f"lakecurate {f'--branch {branch} ' if branch else ''}serve {lake.shell} "
                                                  "--labels a,b,c", "lake.serve(labels=['a', 'b', 'c'])"))
    return ids, verdict, reason, label, by or "anonymous"


def _write(lake: "Store", new_by_id: dict[str, dict[str, Any]], expect: dict[str, dict[str, Any]] | None = None,
           *, none_found: str | None = None,
           log: Callable[[dict[str, dict[str, Any]], int], None] | None = None,
           action: str | None = None) -> tuple[int | None, dict[str, dict[str, Any]], list[str]]:
    """Set the review values of rows (``id -> {column: value}``) in one commit, read-modify-write;
    with ``expect`` only rows still holding those values (an undo). Returns (version, the values
    the rows held before, ids skipped because they are not in the lake or changed since). With
    ``none_found``, ids of which none is in the lake raise that message, before anything is written.
    ``log(before, version)`` is called right before the commit, with the values the commit replaces
    and the version they were read at (again when a conflict makes it read and apply the marks
    anew): the log entry is written first, so a run killed between the two leaves a logged action
    whose marks never landed (:func:`history` says so: no commit after that version names
    ``action``), never marks that no log entry can undo."""

    def attempt() -> tuple[int | None, dict[str, dict[str, Any]], list[str]]:
        ds = lake.dataset()
        found = ds.to_table(columns=["id"], filter=f"id IN ({in_list(new_by_id)})", with_row_address=True)
        addr = dict(zip(found.column("id").to_pylist(), found.column("_rowaddr").to_pylist()))
        if none_found is not None and not addr:
            raise LakeError(none_found)
        if not set(NAMES) <= set(ds.schema.names):  # the first review: its columns (addresses stay)
            declare(lake)
            ds = lake.dataset()
        by_frag: dict[int, list[str]] = {}
        for i in new_by_id:
            if i in addr:
                by_frag.setdefault(addr[i] >> 32, []).append(i)
        before: dict[str, dict[str, Any]] = {}
        skipped = [i for i in new_by_id if i not in addr]
        tables = {}
        for fid, ids in by_frag.items():
            frag = ds.get_fragment(fid)
            cur = frag.to_table(columns=list(NAMES), with_row_address=True)
            offsets = (cur.column("_rowaddr").to_numpy() & 0xFFFFFFFF).astype(np.int64)
            phys = columns.physical(frag.physical_rows, offsets, cur.select(list(NAMES)))
            values = {n: phys.column(n).to_pylist() for n in NAMES}
            changed = False
            for i in ids:
                off = addr[i] & 0xFFFFFFFF
                old = {n: values[n][off] for n in NAMES}
                if expect is not None and any(old[n] != expect[i][n] for n in NAMES):
                    skipped.append(i)  # someone changed it after the mark being undone: theirs stays
                    continue
                before[i] = old
                for n, v in new_by_id[i].items():
                    values[n][off] = v
                changed = True
            if changed:
                tables[fid] = pa.table({f.name: pa.array(values[f.name], f.type) for f in FIELDS})
        if tables and log is not None:
            log(before, ds.version)
        props = {ACTION_KEY: action} if action is not None else None
        version = columns.fill_fragments(lake, tables, based_on=ds, properties=props) if tables else None
        return version, before, skipped

    return retry_on_conflict(attempt, attempts=20)


def _refuse_if_dropped(lake: "Store") -> None:
    """Refuse to write marks while the review columns are recorded as dropped outside lakecurate
    (status lists them "dropped"): a mark declared them anew, empty, and the old marks were left in
    no current row for good, with only the new mark's rows in the log's latest state."""
    from lakecurate.graph import dropped_nodes, gone_whole

    ds = lake.dataset()
    gone = next((n for n in dropped_nodes(ds) if n.stage == STAGE), None)
    if gone is None:
        return
    st = gone_whole(lake, ds, gone)  # what status says of them, and its fix
    raise LakeError(f"lake '{lake.uri}' takes no review marks now: {st.reasons[0]}; nothing marked. Status's fix: "
                    f"{st.fix}; to start afresh without them: {lakecurate_on(lake)} drop {lake.shell} {NAMES[0]}")


def _grew_from(lake: "Store", branch: str | None, number: int) -> bool:
    """Whether version ``number`` of ``branch`` (None: main) is in this branch's history: a version
    of a branch it was made from (or that one's parent), at or before where it was made."""
    return any(b == branch and number <= at for b, at in _ancestry(lake))


def bring_back(lake: "Store", version: int | str, *, by: str | None = None, read_only: bool = False) -> dict[str, Any]:
    """Write back the marks the lake held at ``version`` (a number or tag): every row of that
    version with a review value gets its values again (rows no longer in the lake are listed in
    ``not_found``), as one logged action that :func:`undo` takes back. What status names when
    another writer dropped the review columns: the marks are in the versions before the drop.
    Rows marked otherwise since that version get its marks too; they are listed (``replaced``)."""
    if read_only:
        raise LakeError("this lake is open read-only: reviews are not written")
    whose = None  # the branch whose version it is, where not this one's (a parent's before the branch)
    if isinstance(version, str) and not is_number(version):
        branch, _ = lake._ref(version)  # (another branch's marks were copied and logged "from version N")
        if branch != lake.branch and not _grew_from(lake, branch, lake.dataset(version).version):
            whose, here = branch or "main", lake.branch or "main"
            raise LakeError(f"{spell('--from-version')} {version} is a version of branch {whose}, not of {here}: marks are brought "
                            f"back from {here}'s own versions and those it grew from (a number or tag of it, or "
                            f"BRANCH:N of a branch it was made from, before it was made; see: {lakecurate_on(lake)} "
                            f"log {lake.shell}); nothing written")
        if branch != lake.branch:
            whose = branch or "main"
    then = lake.dataset(version)
    if not set(NAMES) <= set(then.schema.names):
        raise LakeError(f"version {version} of lake '{lake.uri}' has no review columns (or not all {len(NAMES)}); "
                        f"see: {lakecurate_on(lake)} log {lake.shell}")
    marks = _marks(then)
    if not marks:
        return {"action": None, "rows": 0, "not_found": [], "version": None, "replaced": []}
    present = [n for n in NAMES if n in lake.dataset().schema.names]
    if 0 < len(present) < len(NAMES):  # some dropped outside: the rest go (lakecurate's drop), all come back
        columns.drop_present(lake, present)
    by = _text(by, "reviewer") or "anonymous"
    at = datetime.now(timezone.utc)
    action = uuid.uuid4().hex
    version_now, before, skipped = _write(lake, marks, log=_logger(lake, action, f"from version {f'{whose}:' if whose else ''}{then.version}",
                                                                     marks.__getitem__, by, at), action=action)
    # rows marked since that version, whose newer marks the old ones replaced (undo takes them back)
    replaced = sorted(i for i, old in before.items() if any(v is not None for v in old.values())
                      and any(old[n] != marks[i][n] for n in NAMES))
    return {"action": action if before else None, "rows": len(before), "not_found": skipped, "version": version_now,
            "replaced": replaced}


def mark(lake: "Store", ids: Sequence[str], *, verdict: str | None = None, reason: str | None = None,
         label: str | None = None, by: str | None = None, read_only: bool = False) -> dict[str, Any]:
    """Mark rows (pair ids): ``verdict`` "keep" or "drop" (a drop needs a ``reason``) and/or a
    ``label`` from :func:`labels`. A mark with a label only keeps the rows' verdicts. Returns the
    action (its id for :func:`undo`, rows written, ids not found, the new version). Ids of which
    none is in the lake are refused: nothing is written."""
    if read_only:
        raise LakeError("this lake is open read-only: reviews are not written")
    ids, verdict, reason, label, by = _check(lake, ids, verdict, reason, label, by)
    _refuse_if_dropped(lake)
    shown = ", ".join(i if len(i) <= 40 else i[:40] + "..." for i in ids[:5]) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")
    none_found = (f"no pair of lake '{lake.uri}' has id {shown}; nothing marked. Find ids with: "  # nothing to undo
                  f"{lakecurate_on(lake)} sql {lake.shell} \"SELECT id, key, caption FROM pairs LIMIT 10\"")
    at = datetime.now(timezone.utc)
    new: dict[str, Any] = {"review_by": by, "review_at": at}
    if verdict is not None:
        new.update(review_verdict=verdict, review_reason=reason)
    if label is not None:
        new["review_label"] = label
    action = uuid.uuid4().hex
    version, before, skipped = _write(lake, {i: new for i in ids}, none_found=none_found,
                                      log=_logger(lake, action, "mark", lambda i: new, by, at), action=action)
    return {"action": action, "rows": len(before), "not_found": skipped, "version": version}


def undo(lake: "Store", action: str, *, by: str | None = None, read_only: bool = False) -> dict[str, Any]:
    """Restore what the rows of a mark held before it. A row changed again since the mark keeps
    its newer value (listed in ``changed_since``). The undo is itself logged (and can be undone).
    Undone again, it restores nothing and says so (``already_undone``): its rows hold what they held
    before it."""
    if read_only:
        raise LakeError("this lake is open read-only: reviews are not written")
    if not isinstance(action, str) or not action.isalnum():
        raise LakeError(f"review action {action!r} is not in lake '{lake.uri}''s review log")
    rows, whose, upto = [], lake.branch or "main", None
    for whose, log, upto in _logs(lake):  # (a branch's rows hold the marks made before it on what it grew from)
        rows = log.to_table(filter=f"action = '{action}'").to_pylist()
        if rows:
            break
    if not rows:
        raise LakeError(f"review action {action!r} is not in lake '{lake.uri}''s review log")
    read_at = rows[0].get("read_version")
    if upto is not None and read_at is not None and read_at == read_at and read_at >= upto:
        raise LakeError(f"review action {action} was made on {whose} after branch {lake.branch} was made from it "
                        f"(at version {upto}): its marks are not in branch {lake.branch}'s rows; nothing to undo")
    _refuse_if_dropped(lake)
    if not set(NAMES) & set(lake.dataset().schema.names):  # (it said "restored 0 rows; changed since")
        raise LakeError(f"lake '{lake.uri}' has no review columns now (dropped since: lakecurate log says when): the "
                        f"marks of action {action} are in no row; nothing to undo (the versions before the drop "
                        f"still have them: {_back(lake, 'N')})")
    if _landed(lake, {action: rows[0].get("read_version")}).get(action) is False:
        raise LakeError(f"review action {action!r} of lake '{lake.uri}' {NEVER_LANDED} (the review stopped between "
                        f"its log entry and its commit): nothing to undo")
    restore = {r["id"]: json.loads(r["before"]) for r in rows}
    expect = {r["id"]: json.loads(r["after"]) for r in rows}
    for d in list(restore.values()) + list(expect.values()):
        if d.get("review_at"):
            d["review_at"] = datetime.fromisoformat(d["review_at"])
    by = _text(by, "reviewer") or "anonymous"
    at = datetime.now(timezone.utc)
    new_action = uuid.uuid4().hex
    version, before, skipped = _write(lake, restore, expect=expect,
                                      log=_logger(lake, new_action, f"undo {action}", restore.__getitem__, by, at),
                                      action=new_action)
    if not before:  # nothing restored: nothing logged, no action to name
        new_action = None
    # rows that hold what they held before the mark: undone already (a second undo called them "changed since")
    undone: set[str] = set()
    if skipped:
        now = lake.dataset().to_table(columns=["id", *NAMES], filter=f"id IN ({in_list(skipped)})").to_pylist()
        undone = {r["id"] for r in now if all(r[n] == restore[r["id"]][n] for n in NAMES)}
        skipped = [i for i in skipped if i not in undone]
    return {"action": new_action, "rows": len(before), "changed_since": skipped, "version": version,
            "already_undone": bool(undone) and not before and not skipped}


def _jsonable(d: dict[str, Any]) -> str:
    return json.dumps({k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in d.items()}, sort_keys=True)


def _logger(lake: "Store", action: str, kind: str, after: Callable[[str], dict[str, Any]], by: str,
            at: datetime) -> Callable[[dict[str, dict[str, Any]], int], None]:
    """The ``log`` of :func:`_write` for one action: its entry in ``review_log`` with the values the
    rows hold before it (``after(id)``: what it sets). A second attempt (the first one's commit
    conflicted) replaces the first one's rows: they describe marks that were never committed."""
    attempts = []

    def log(before: dict[str, dict[str, Any]], read_version: int) -> None:
        if attempts and lake.side_dataset(LOG) is not None:
            retry_on_conflict(lambda: lake.side_dataset(LOG).delete(f"action = '{action}'"))
        attempts.append(1)
        _log(lake, action, kind, before, {i: after(i) for i in before}, by, at, read_version)

    return log


def _log(lake: "Store", action: str, kind: str, before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]],
         by: str, at: datetime, read_version: int) -> None:
    if not before:
        return
    old = lake.side_dataset(LOG)
    if old is not None and "read_version" not in old.schema.names:  # a log written before entries recorded it
        def add() -> None:
            ds = lake.side_dataset(LOG)
            if "read_version" not in ds.schema.names:
                ds.add_columns({"read_version": "CAST(NULL AS BIGINT)"})
        retry_on_conflict(add)
    full_after = {i: {**before[i], **after[i]} for i in before}
    lake.write_side(LOG, pa.table({
        "action": pa.array([action] * len(before), pa.string()),
        "kind": pa.array([kind] * len(before), pa.string()),
        "id": pa.array(list(before), pa.string()),
        "before": pa.array([_jsonable(before[i]) for i in before], pa.string()),
        "after": pa.array([_jsonable(full_after[i]) for i in before], pa.string()),
        "by": pa.array([by] * len(before), pa.string()),
        "at": pa.array([at] * len(before), pa.timestamp("us", tz="UTC")),
        "read_version": pa.array([read_version] * len(before), pa.int64()),
    }))


def _landed(lake: "Store", read_at: dict[str, int | None]) -> dict[str, bool | None]:
    """Per action (-> the version its marks were read at): whether a commit after that version names
    it (True), none does (False: its marks never landed), or the commit log cannot tell (None: an
    entry older than the read version's record, or versions cleanup removed)."""
    from lakecurate.graph import commit_log

    pending = {a: v for a, v in read_at.items() if v is not None and v == v}  # (NaN: an older entry)
    out: dict[str, bool | None] = {a: None for a in read_at}
    if not pending:
        return out
    named: set[str] = set()
    unreadable: list[int] = []
    for version, tx in commit_log(lake.dataset()):
        if version <= min(pending.values()):
            continue
        if tx is None:  # cleaned up or unparsable: this version cannot tell
            unreadable.append(version)
        elif ACTION_KEY in (tx.transaction_properties or {}):
            named.add(tx.transaction_properties[ACTION_KEY])
    for a, v in pending.items():
        out[a] = True if a in named else (None if any(u > v for u in unreadable) else False)
    return out


def _ancestry(lake: "Store") -> list[tuple[str | None, int]]:
    """The branches ``lake``'s branch grew from, nearest first, each with the version of it the
    branch (or the one between) was made from: (branch, None for main; version). Empty on main."""
    out, here, info = [], lake.branch, (lake.branches() if lake.branch else {})
    while here:
        meta = info.get(here) or {}
        parent, at = meta.get("parent_branch") or None, meta.get("parent_version")
        if at is None:
            break
        out.append((parent, int(at)))
        here = parent
    return out


def _logs(lake: "Store") -> list[tuple[str, "lance.LanceDataset", int | None]]:
    """The review logs whose marks ``lake``'s rows may hold, as (branch, log, the last version of
    it those rows grew from: None for the lake's own): a branch's own log starts empty, and its
    rows hold the marks made on its parent (and the parent's parent) before it was made from it."""
    out = []
    for whose, log, upto in [(lake.branch, lake.side_dataset(LOG), None),
                             *((b, lake.side_dataset(LOG, branch=b), at) for b, at in _ancestry(lake))]:
        if log is not None:
            out.append((whose or "main", log, upto))
    return out


def history(lake: "Store", limit: int = 50) -> list[dict[str, Any]]:
    """The latest review actions, newest first: action, kind, rows, by, at, ``branch`` (whose log
    holds it: on a branch, also the marks made on what it grew from before it, which its rows hold
    and it can undo), and ``landed`` (False with a ``note`` for an entry whose marks never landed,
    None where the commit log cannot tell)."""
    import pandas as pd

    frames = []
    for whose, log, upto in _logs(lake):
        names = ["action", "kind", "by", "at"] + (["read_version"] if "read_version" in log.schema.names else [])
        t = log.to_table(columns=names).to_pandas()
        if "read_version" not in t:
            t["read_version"] = None
        if upto is not None:  # (made there after this branch: not in its rows)
            t = t[~(pd.to_numeric(t["read_version"]) >= upto)]
        frames.append(t.assign(branch=whose))
    if not frames or all(t.empty for t in frames):
        return []
    t = pd.concat([t for t in frames if not t.empty], ignore_index=True)
    g = t.groupby(["action", "kind", "by", "branch"], as_index=False).agg(
        rows=("at", "size"), at=("at", "max"), read_version=("read_version", "max"))
    g = g.sort_values("at", ascending=False)
    records = g.to_dict("records")
    landed = _landed(lake, {r["action"]: r["read_version"] for r in records})
    own = lake.branch or "main"  # (another branch's entry whose marks this one's history lacks: not in its rows)
    records = [r for r in records if r["branch"] == own or landed[r["action"]] is not False][:limit]
    return [{**{k: v for k, v in r.items() if k != "read_version"}, "at": r["at"].isoformat(),
             "landed": landed[r["action"]], **({"note": NEVER_LANDED} if landed[r["action"]] is False else {})}
            for r in records]


def _marks(ds: "lance.LanceDataset") -> dict[Any, dict[str, Any]]:
    """Row id -> its review values, for every row of ``ds`` with any (what ``review --from-version``
    writes back); {} where ``ds`` has no review columns."""
    if not set(NAMES) <= set(ds.schema.names):
        return {}
    cond = " OR ".join(f"{n} IS NOT NULL" for n in NAMES)
    rows = ds.to_table(columns=["id", *NAMES], filter=cond).to_pylist()
    return {r["id"]: {n: r[n] for n in NAMES} for r in rows if r["id"] is not None}


def taken_out(lake: "Store", before: "lance.LanceDataset", after: "lance.LanceDataset") -> str:
    """What a restore from ``before`` to ``after`` did to the human marks: the rows marked at
    ``before`` whose marks ``after`` lacks or holds otherwise (made or changed after it), and
    the command that brings them back; "" when none. A restore past a review took them out of the
    latest view without a word (``review --undo`` then called the columns "dropped since")."""
    marked = _marks(before)
    if not marked:
        return ""
    now = _marks(after)
    gone = sum(now.get(i) != values for i, values in marked.items())
    if not gone:
        return ""
    back = _back(lake, before.version)
    return (f"{gone} review mark{'s' if gone != 1 else ''} of version {before.version} {'are' if gone != 1 else 'is'} not "
            f"in the restored state (made or changed after it): the latest view no longer has {'them' if gone != 1 else 'it'}; "
            f"bring {'them' if gone != 1 else 'it'} back with: {back}")


def _back(lake: "Store", version: int | str) -> str:
    """The way to write back the marks of ``version``, in the words of the interface speaking."""
    return words(f"{lakecurate_on(lake)} review {lake.shell} --from-version {version}", f"lake.restore_reviews({version})")


def cleared(lake: "Store", before: "lance.LanceDataset", after: "lance.LanceDataset") -> str:
    """What rewriting rows in place (ingest's update: pairs changed in their source, read again)
    from ``before`` to ``after`` did to their review marks: a rewritten row has none (a person's
    verdict was gone from the latest view without a word); "" when none had any."""
    marked = _marks(before)
    now = _marks(after) if marked else {}
    n = sum(i not in now for i in marked)
    if not n:
        return ""
    return (f"{n} of the rewritten pairs had review marks, which a row read again does not keep (version "
            f"{before.version} holds them); where the change leaves the verdict true, bring them back with: "
            f"{_back(lake, before.version)}")


def counts(ds: "lance.LanceDataset") -> dict[str, int]:
    """Reviewed rows per verdict at a version (empty before any review)."""
    if "review_verdict" not in ds.schema.names:
        return {}
    vc = ds.to_table(columns=["review_verdict"], filter="review_verdict IS NOT NULL").column(0).value_counts()
    return {v["values"]: v["counts"] for v in vc.to_pylist()}
