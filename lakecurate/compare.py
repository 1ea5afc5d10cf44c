"""Compare two curated views: which rows one keeps that the other does not, and why.

A view is a version of the lake (a number, a tag, a branch or ``branch:number``) and a SQL condition
(default: its *effective* curated view, the latest decision column that is current: ``rebalance_keep``,
or ``keep`` when rebalancing is stale because a recipe re-ran after it; see
:func:`lakecurate.graph.effective_view`). Rows are matched by ``id``. Each row
that one view has and the other lacks is explained by the other version's own columns: the first
stage that dropped it there (see :func:`why_excluded`; a condition given that reads no curated
decision is explained only by the columns it reads), or the row does not exist in that version
(appended later, or the version was restored).

Example::

    d = lake.diff("strict-v1", "exp-strict")          # a tag vs a branch's latest version
    d.removed_by                                       # {"recipe: low_alignment": 41, "rebalance": 7}
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import pandas as pd

from lakecurate.errors import LakeError
from lakecurate.graph import effective_view, where_columns
from lakecurate.names import DECISIONS, VIEW_DECISIONS
from lakecurate.options import spell
from lakecurate.sqlcheck import check_where

if TYPE_CHECKING:
    from lakecurate.store import Store

# What explains a row's absence: ingest status, then every decision and its reason column.
REASON_COLUMNS = ("ingest_status", *(c for d in DECISIONS for c in (d.column, d.reason) if c))


@dataclass
class ViewDiff:
    a: str
    b: str
    version_a: int
    version_b: int
    where_a: str | None
    where_b: str | None
    rows_a: int = 0
    rows_b: int = 0
    in_both: int = 0
    added: int = 0
    removed: int = 0
    added_by: dict[str, int] = field(default_factory=dict)
    removed_by: dict[str, int] = field(default_factory=dict)
    added_ids: list[str] = field(default_factory=list)
    removed_ids: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # decision columns skipped as stale, per side

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def why_excluded(df: pd.DataFrame) -> pd.Series:
    """Why each row of ``df`` (a version's reason columns) is outside that version's view: the
    first stage that dropped it. A recipe's ``drop_reason`` already names its first failed step
    (ingest errors and duplicates included when the recipe checks them); without one, an ingest
    error comes first, then deduplication, then rebalancing."""
    reason = pd.Series("outside the view's condition", index=df.index, dtype=object)
    if "rebalance_keep" in df:  # assigned from the last stage to the first: the first one wins
        reason[df["rebalance_keep"].eq(False)] = "rebalance"
    if "dup_keep" in df:
        dup = df["dup_keep"].eq(False)
        what = df["dup_reason"].fillna("duplicate") if "dup_reason" in df else pd.Series("duplicate", index=df.index)
        reason[dup] = "duplicate: " + what[dup]
    if "ingest_status" in df:
        reason[df["ingest_status"] == "error"] = "ingest error"
    if "drop_reason" in df:
        dropped = df["drop_reason"].notna()
        reason[dropped] = "recipe: " + df.loc[dropped, "drop_reason"].astype(str)
    if "keep" in df:  # a row the recipe kept passed what it checks (duplicates, say, when it has no such step):
        kept = df["keep"].eq(True)  # only what came after it left the row out
        after = df["rebalance_keep"].eq(False) if "rebalance_keep" in df else pd.Series(False, index=df.index)
        reason[kept] = "outside the view's condition"
        reason[kept & after] = "rebalance"
    return reason


def _side(lake: "Store", ref: str | int, where: str | None) -> tuple[Any, pd.DataFrame, str | None, list[str]]:
    ds = lake.dataset(ref)
    names = ds.schema.names
    notes: list[str] = []
    # A condition given that reads no curated decision (keep, rebalance_keep) left rows out for what it
    # reads alone: the decisions it never read do not explain them (width > 320 was "duplicate", "rebalance").
    read = set(where_columns(where, names)) if where else set(REASON_COLUMNS)
    if read & set(VIEW_DECISIONS):  # a curated decision: its reasons and what it came after
        read = set(REASON_COLUMNS)
    read |= {d.reason for d in DECISIONS if d.column in read and d.reason}  # dup_keep: dup_reason says why
    if not where:
        where, notes = effective_view(lake.on_branch_of(ref), ds)  # (its fix commands name the branch)
        notes = [f"{ref}: {n}" for n in notes]
    # One scan: the view's condition is computed as a column beside the reason columns. A stale
    # rebalance_keep outside the view explains nothing.
    skip = {"rebalance_keep"} if where == "keep" else set()
    skip |= set(REASON_COLUMNS) - read
    cols = {c: c for c in ["id", *REASON_COLUMNS] if c in names and c not in skip}
    inside = where or ("ingest_status != 'error'" if "ingest_status" in names else "true")
    try:
        tbl = ds.to_table(columns={**cols, "_in": inside}).to_pandas()
    except Exception as exc:
        from lakecurate.sqlcheck import clean_message

        raise LakeError(f"cannot select rows with {where!r} at '{ref}' of lake '{lake.uri}': {clean_message(exc)}"
                        " (a column only one of the two versions has: give the other its own condition with "
                        f"{spell('--where-b')})") from None
    tbl["_in"] = tbl["_in"].fillna(False).astype(bool)  # a null condition leaves the row out, as a filter does
    return ds, tbl.set_index("id"), where, notes


def diff(lake: "Store", a: str | int, b: str | int | None = None, *, where: str | None = None,
         where_b: str | None = None, examples: int = 20) -> ViewDiff:
    """Rows in ``b``'s view but not ``a``'s (added) and in ``a``'s but not ``b``'s (removed), with
    counts per reason. ``b`` defaults to the lake's latest version; ``where`` applies to both sides
    unless ``where_b`` is given."""
    from lakecurate.options import whole

    examples = whole("examples", examples, 0)  # (-1 listed every id but the last)
    if a is None:  # (it compared the latest version with itself, one side labelled "None")
        raise LakeError("diff needs version A: a version number, tag or branch (B defaults to the latest)")
    b = lake.version if b is None else b
    # one condition each, on the columns of its side; the message says which side lacks a column
    for cond, option, side, ref in ((where, "--where", "A", a), (where_b or where, "--where-b" if where_b else "--where", "B",
                                                                 b if b is not None else "the latest")):
        try:
            check_where(cond, option, lake.dataset(ref if ref != "the latest" else None))
        except LakeError as exc:  # a column one side lacks: say which side
            raise LakeError(str(exc).replace("cannot select rows", f"cannot select rows of {side} ({ref})", 1)) from None
    ds_a, ta, wa, notes_a = _side(lake, a, where)
    ds_b, tb, wb, notes_b = _side(lake, b, where_b or where)
    in_a, in_b = set(ta.index[ta["_in"]]), set(tb.index[tb["_in"]])
    added = sorted(in_b - in_a)
    removed = sorted(in_a - in_b)
    out = ViewDiff(a=str(a), b=str(b), version_a=ds_a.version, version_b=ds_b.version, where_a=wa, where_b=wb,
                   rows_a=len(in_a), rows_b=len(in_b), in_both=len(in_a & in_b), added=len(added),
                   removed=len(removed), added_ids=added[:examples], removed_ids=removed[:examples],
                   notes=notes_a + notes_b)
    out.added_by = _reasons(ta, added, f"not in {a} (added later)")
    out.removed_by = _reasons(tb, removed, f"not in {b}")
    return out


def _reasons(other: pd.DataFrame, ids: list[str], absent: str) -> dict[str, int]:
    """Counts of why ``other`` (the side that lacks them) does not have ``ids`` in its view."""
    present = [i for i in ids if i in other.index]
    counts = why_excluded(other.loc[present]).value_counts() if present else pd.Series(dtype=int)
    res = {str(k): int(v) for k, v in counts.items()}
    if len(present) < len(ids):
        res[absent] = len(ids) - len(present)
    return dict(sorted(res.items(), key=lambda kv: (-kv[1], kv[0])))
