"""The lake: the facade over :class:`lakecurate.store.Store` with one method per stage.

The layout is LanceDB's: ``LAKE/pairs.lance``. So ``lancedb.connect(LAKE).open_table("pairs")`` and
``lance.dataset(LAKE + "/pairs.lance")`` open the same table this class writes, unchanged.

Stages import the ground floor (``store``, ``columns``, ``names``, ...), never this module; this
module imports them (lazily, so ``import lakecurate`` stays fast).

Example::

    lake = Lake.create("./my-lake")
    lake.ingest("sample_data/")
    lake.sql("SELECT ingest_status, COUNT(*) AS n FROM pairs GROUP BY ingest_status")
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import pandas as pd

from lakecurate.columns import StageRun
from lakecurate.errors import LakeError, LakeWarning
from lakecurate.options import flag, flags, given, keywords, texts, whole

# lakecurate signals --KIND: the producer stage of each kind of per-row signal
SIGNAL_KINDS = {"caption": "caption_signals", "image": "image_signals", "copy": "copy_signals", "faces": "faces",
                "text": "text", "redact": "redact"}
from lakecurate.schema import TABLE, column_doc
from lakecurate.store import (  # noqa: F401 - re-exported: the names users and older code import from here
    CONFLICTS_RETRIED,
    GUARD_FRAGMENT_ID,
    ROWS_PER_FILE,
    Store,
    _iso,
    is_conflict,
    retry_on_conflict,
)

if TYPE_CHECKING:
    from lakecurate.ingest import IngestReport
    from lakecurate.runner import RunReport

__all__ = ["Lake", "LakeError", "retry_on_conflict", "is_conflict", "CONFLICTS_RETRIED", "ROWS_PER_FILE"]


class SignalCounts(dict):
    """:meth:`Lake.signals`' result: rows computed per kind; ``runs``: each kind's run report."""

    def __init__(self, counts: dict[str, int], runs: dict[str, "RunReport"]):
        super().__init__(counts)
        self.runs = runs


class Lake(Store):
    """A Lance data lake of image-text pairs. Use :meth:`create` or :meth:`open`."""

    def ingest(self, source: str | os.PathLike, **options: Any) -> "IngestReport":
        """Ingest a folder, manifest or WebDataset shards; see :func:`lakecurate.ingest.ingest`."""
        from lakecurate.ingest import ingest
        from lakecurate.review import cleared

        keywords("ingest", options, ingest, skip=2)
        try:  # (an update rewrites rows: the review marks it clears are said, with the way back)
            before = self.dataset() if options.get("update") is True else None
        except LakeError:  # (no lake yet: nothing to clear)
            before = None
        report = ingest(self, source, **options)
        if before is not None and report.updated:
            note = cleared(self, before, self.dataset())
            report.warnings += [note] if note else []
        return report

    def embed(self, model: str = "offline", **options: Any) -> Any:
        """Add embedding and score columns; see :func:`lakecurate.embed.embed`."""
        from lakecurate.embed import embed

        keywords("embed", options, embed, skip=2)
        return embed(self, model, **options)

    def dedup(self, methods: Any = ("exact", "phash", "semantic", "copy"), **options: Any) -> Any:
        """Duplicate groups and ``dup_keep``/``dup_reason`` columns; see :func:`lakecurate.dedup.dedup`."""
        from lakecurate.dedup import dedup

        keywords("dedup", options, dedup, skip=2, own=["produce"])
        with StageRun(self, "dedup"):  # (a run in progress, told from one killed: columns.stage_running)
            return dedup(self, methods, produce=self._produce, **options)

    def dup_pairs(self, ids: Any = None, version: int | str | None = None) -> Any:
        """The links dedup found (``dup_pairs``: a, b, method, score, detail, version) as pandas, all
        of them or those touching ``ids``, that explain the decision of ``version`` (default: the
        latest); see :func:`lakecurate.dedup.dup_pairs`."""
        from lakecurate.dedup import dup_pairs

        return dup_pairs(self, ids, version)

    def restore(self, version: int | str) -> int:
        """Go back (see :meth:`lakecurate.store.Store.restore`); the ``dup_pairs`` table's latest
        version becomes the evidence of the decision restored, for those who open it with LanceDB.
        Review marks made after ``version`` leave the latest view: a :class:`LakeWarning` says how
        many and the ``review --from-version`` command that brings them back."""
        import warnings

        from lakecurate.dedup import restore_evidence
        from lakecurate.review import taken_out

        before = self.dataset() if version is not None else None
        new = super().restore(version)
        restore_evidence(self)
        note = taken_out(self, before, self.dataset()) if before is not None and new != before.version else ""
        if note:
            warnings.warn(note, LakeWarning, stacklevel=2)
        return new

    def curate(self, recipe: Any, **options: Any) -> Any:
        """Apply a filter recipe (TOML path or dict): ``keep``/``drop_reason`` + a tag; see :func:`lakecurate.curate.curate`."""
        from lakecurate.curate import curate

        keywords("curate", options, curate, skip=2, own=["produce", "code"])
        warned: list[str] = []  # (what the producers it runs say: a dedup's warnings reached no one)
        with StageRun(self, "curate"):
            rep = curate(self, recipe, produce=functools.partial(self._produce, warned=warned), code=_code(), **options)
        rep.warnings += warned
        return rep

    def _produce(self, stage: str, *, progress: bool | None = None, workers: int | None = None,
                 engine: str = "local", recompute: bool = False, warned: list[str] | None = None,
                 **options: Any) -> int:
        """Run the producer ``stage`` a consuming stage asked for (stages never call stages); returns
        the rows it computed (0: its columns were already filled). ``engine``: where per-row
        producers run ("local" or "ray"); ``recompute`` (per-row producers): every row again (without
        it, a run computes the rows without values and the fragments whose values are stale: an
        input rewritten since, as a caption updated in place). A per-row producer waits for
        fragments another run of it is computing (:func:`lakecurate.runner.waiting`): the consumer
        needs every row's value. Columns another lakecurate computed differently (a signal's config
        is its code's) are computed again, every row, as stale fragments are: the consumer needs this
        code's values (``lakecurate signals`` asked by hand refuses them, naming ``--recompute``)."""
        from lakecurate import runner

        with runner.waiting():
            if stage == "dedup":
                rep = self.dedup(progress=progress, workers=workers, engine=engine, recompute=recompute, **options)
                if warned is not None:  # (``warned``: where the consumer collects what its producers say)
                    warned += rep.warnings
                return 1
            return self._run_producer(stage, progress=progress, workers=workers, engine=engine,
                                      recompute=recompute or self._by_other_code(stage)).computed

    def _run_producer(self, stage: str, *, progress: bool | None = None, workers: int | None = None,
                      engine: str = "local", recompute: bool = False) -> "RunReport":
        """Run the per-row producer ``stage``; its :class:`~lakecurate.runner.RunReport`."""
        from lakecurate import signals

        if stage == "caption_signals":
            return signals.compute_caption_signals(self, progress=progress, engine=engine, recompute=recompute)
        if stage == "image_signals":
            return signals.compute_image_signals(self, workers=workers, progress=progress, engine=engine, recompute=recompute)
        if stage == "copy_signals":
            return signals.compute_copy_hashes(self, workers=workers, progress=progress, engine=engine, recompute=recompute)
        if stage == "redact":
            return signals.compute_redacted(self, engine=engine, recompute=recompute)
        if stage == "text":
            from lakecurate.imagetext import compute_text

            return compute_text(self, workers=workers, progress=progress, engine=engine, recompute=recompute)
        if stage == "faces":
            from lakecurate.faces import compute_faces

            return compute_faces(self, workers=workers, progress=progress, engine=engine, recompute=recompute)
        raise ValueError(f"no producer stage {stage!r}")

    def _by_other_code(self, stage: str) -> bool:
        """Whether the producer ``stage``'s columns were computed with another config than this
        code's (for the stages whose config is their code's: :func:`_code`)."""
        from lakecurate.columns import field_provenance
        from lakecurate.graph import by_other_code
        from lakecurate.names import PRODUCERS

        ds = self.dataset()
        col = PRODUCERS.get(stage)
        if col is None or col not in ds.schema.names:
            return False
        return by_other_code(field_provenance(ds.schema.field(col), strict=False) or {}, _code()) is not None

    def recaption(self, model: Any = "tiny-random-coca", **options: Any) -> Any:
        """Add a synthetic caption column ``caption_<name>``; see :func:`lakecurate.recaption.recaption`."""
        from lakecurate.recaption import recaption

        keywords("recaption", options, recaption, skip=2)
        return recaption(self, model, **options)

    def signals(self, kinds: Sequence[str] = ("caption", "image"), **options: Any) -> "SignalCounts":
        """Compute per-row signals where missing: ``caption``, ``image``, ``copy``, ``faces``, ``text``,
        ``redact`` (``caption_redacted``); on a re-run also the fragments whose values are stale (an
        input rewritten since); with ``recompute=True`` every row again (the kinds' columns dropped
        and declared anew: what an older lakecurate computed differently).
        Returns rows computed per kind (0: already there), a dict whose ``runs`` holds each kind's
        :class:`~lakecurate.runner.RunReport` (rows computed again as stale, resumed, fragments left
        to another run of the kind computing them now: run this again once it ends). See
        :data:`SIGNAL_KINDS`."""
        kinds = texts("signal kinds", kinds)  # signals("caption"): one kind, not its letters
        unknown = [k for k in kinds if k not in SIGNAL_KINDS]
        if unknown:
            raise LakeError(f"unknown signal kind(s) {', '.join(unknown)}; choose from {', '.join(SIGNAL_KINDS)}")
        keywords("signals", options, ["progress", "workers", "engine", "recompute"])  # (they were silently ignored)
        flags(options, self._run_producer)  # progress="x", recompute="no": refused, not taken as true
        # a command by itself, like embed: fragments another run computes now are left to it, and said
        runs = {k: self._run_producer(SIGNAL_KINDS[k], **options) for k in kinds}
        return SignalCounts({k: rep.computed for k, rep in runs.items()}, runs)

    def cluster(self, k: int | None = None, **options: Any) -> Any:
        """k-means concepts: ``concept``/``concept_dist`` columns; see :func:`lakecurate.concepts.cluster`."""
        from lakecurate.concepts import cluster

        keywords("cluster", options, cluster, skip=2)
        with StageRun(self, "concepts"):
            return cluster(self, k, **options)

    def rebalance(self, target: float | int = 0.5, **options: Any) -> Any:
        """Per-concept budgets: ``rebalance_keep``/``sample_weight``/``repeats``; see :func:`lakecurate.concepts.rebalance`."""
        from lakecurate.concepts import rebalance

        keywords("rebalance", options, rebalance, skip=2)
        with StageRun(self, "rebalance"):
            return rebalance(self, target, **options)

    def sequence(self, mode: str = "interleave", **options: Any) -> Any:
        """A training order: ``seq_order``/``seq_shard``; see :func:`lakecurate.concepts.sequence`."""
        from lakecurate.concepts import sequence

        keywords("sequence", options, sequence, skip=2)
        with StageRun(self, "sequence"):
            return sequence(self, mode, **options)

    def export(self, dest: str | os.PathLike, format: str = "webdataset", **options: Any) -> Any:
        """WebDataset / Parquet / Lance export of the chosen rows; see :func:`lakecurate.export.export`."""
        from lakecurate.export import export

        keywords("export", options, export, skip=3)
        return export(self, dest, format, **options)

    def evaluate(self, view: str | None = None, **options: Any) -> Any:
        """Train a proxy on a curated view and on baselines (all rows, random rows) with the same compute: scores,
        learning curves and speed-ups; see :func:`lakecurate.evaluate.evaluate`."""
        from lakecurate.evaluate import evaluate

        keywords("evaluate", options, evaluate)  # (view listed too: it may be passed by name)
        return evaluate(self, view, **options)

    def report(self, out: str | os.PathLike, **options: Any) -> Any:
        """Write the HTML curation report (thumbnails, counts, plots); see :func:`lakecurate.report.report`."""
        from lakecurate.report import report

        keywords("report", options, report, skip=2)
        return report(self, out, **options)

    def add_feature(self, name: str, fn: Any, **options: Any) -> Any:
        """Add a user-defined feature column computed per fragment; see :func:`lakecurate.features.add_feature`."""
        from lakecurate.features import add_feature

        keywords("add_feature", options, add_feature, skip=3)
        return add_feature(self, name, fn, **options)

    def search(self, query: Any, k: int = 10, **options: Any) -> pd.DataFrame:
        """Nearest pairs to a text or an image; see :func:`lakecurate.search.search`.

        Example: ``lake.search("a dog on a beach", k=5)``
        """
        from lakecurate.search import search

        keywords("search", options, search, skip=3)
        return search(self, query, k, **options)

    def review(self, ids: Sequence[str], **options: Any) -> dict[str, Any]:
        """Mark pairs keep/drop (with a reason) or with a label; see :func:`lakecurate.review.mark`.

        Example: ``lake.review(["1655f610fee3ee5d"], verdict="drop", reason="watermark", by="ana")``
        """
        from lakecurate.review import mark

        keywords("review", options, mark, skip=2)
        return mark(self, ids, **options)

    def undo_review(self, action: str, **options: Any) -> dict[str, Any]:
        """Restore what a review action's rows held before it; see :func:`lakecurate.review.undo`."""
        from lakecurate.review import undo

        keywords("undo_review", options, undo, skip=2)
        return undo(self, action, **options)

    def restore_reviews(self, version: int | str, **options: Any) -> dict[str, Any]:
        """Write back the review marks the lake held at ``version`` (marks another writer dropped);
        see :func:`lakecurate.review.bring_back`."""
        from lakecurate.review import bring_back

        keywords("restore_reviews", options, bring_back, skip=2)
        return bring_back(self, version, **options)

    def serve(self, **options: Any) -> None:
        """Browse, search and review this lake in a browser; see :func:`lakecurate.serve.serve`."""
        from lakecurate.serve import serve

        keywords("serve", options, serve)
        serve(self, **options)

    def run(self, pipeline: Any, **options: Any) -> Any:
        """Run a pipeline file (or shipped name, or dict): only the steps that are missing or stale, in
        order; see :func:`lakecurate.pipeline.run`.

        Example::

            lake.run("pipeline.toml").ran        # ['ingest', 'embed', 'curate', ...]; again: []
        """
        from lakecurate.pipeline import run

        keywords("run", options, run, skip=2)
        return run(self, pipeline, **options)

    def status(self, version: int | str | None = None) -> dict[str, Any]:
        """The stage graph at ``version`` (default: the latest): every stage's columns, whether they are
        current, stale (an input was rewritten after them), incomplete (rows without values) or
        behind (built on a stage that is not current), why, and the command that brings them up to
        date; plus the effective curated view. A lake without rows: every stage ``empty``, and
        ``empty`` says so (what to ingest); a curated view curate kept no row of: ``empty_view`` says
        why ("" otherwise), a note says what to do, and what is built on it has that, not a command, as
        its fix. See :mod:`lakecurate.graph`.

        Example::

            lake.status()["stages"][-1]      # {'stage': 'rebalance', 'state': 'stale', 'reasons': [...], ...}
        """
        from lakecurate import graph

        ds = self.dataset(version)
        lake = self.on_branch_of(version)  # a branch's version: that branch's name and fix commands
        view, notes = graph.effective_view(lake, ds)
        states = graph.states(lake, ds, code=_code())
        curated = next((s for s in states if s.node.stage == "curate" and "keep" in s.node.columns), None)
        edited = _recipe_edited(curated) if curated is not None else None
        empty_view = graph.empty_view(lake, ds, states)
        if empty_view and not any(empty_view in n for n in notes):  # (said once: rebalance_keep's note may say it)
            notes.append(graph.empty_view_fix(lake, empty_view))
        stages = [s.to_dict() for s in states]
        rows = ds.count_rows()
        empty = "" if rows else graph.no_rows(lake)  # (each stage's state is "empty" then: graph.states)
        return {"uri": self.uri, "branch": lake.branch or "main", "version": ds.version, "rows": rows,
                "empty": empty, "empty_view": empty_view, "stages": stages, "view": view,
                "view_notes": notes + ([edited] if edited else []) + graph.unheeded_reviews(ds, view)}

    def drop_columns(self, names: str | Sequence[str]) -> dict[str, Any]:
        """Drop derived columns (metadata only: older versions keep them), a set declared together
        whole, and forget a set another writer dropped (status lists it "dropped"); source columns
        are never dropped. Checked before anything is written; see :func:`lakecurate.drops.drop_columns`.

        Example: ``lake.drop_columns("caption_redacted")``  # {'dropped': ['caption_redacted'], 'stale': [], ...}
        """
        from lakecurate.dedup import restore_evidence
        from lakecurate.drops import drop_columns

        out = drop_columns(self, names)
        if "dup_group" in out["dropped"]:  # dedup's decision dropped: the dup_pairs LanceDB opens holds no link of it
            restore_evidence(self)
        return out

    def compact(self, target_rows: int = ROWS_PER_FILE) -> dict[str, int]:
        """Merge small fragments (many appends leave many) into fragments of about ``target_rows``.

        Only fragments that hold every derived column, all current, are merged. A fragment that
        still lacks a column reads it as null; merging it would store those nulls, and the rows
        would then look computed and never be filled. A fragment whose values of a per-row stage are
        stale (an input rewritten since) would make the merged fragment's values all be computed
        again. (So do not run Lance's or LanceDB's own compaction on a lake whose columns are still
        being filled.) Retried on conflict, like every commit; rows and values are unchanged.
        Returns fragments before/after (of the version it compacted, and what its own commit made of
        them: a compaction that found another's done meanwhile reports no change) and how many were
        left for later.
        """
        from lance.optimize import Compaction

        from lakecurate.columns import field_provenance, has_data
        from lakecurate.graph import MANUAL, nodes, stale_fragments

        target_rows = whole("target_rows", target_rows, 1)  # (-5 was an OverflowError, 0 accepted)

        def run() -> int:
            ds = self.dataset()
            # (a reviewer's columns are null until someone reviews: merging stores what they mean)
            derived = [f.name for f in ds.schema if (field_provenance(f) or {}).get("stage") not in (None, *MANUAL)]
            excluded = [f.fragment_id for f in ds.get_fragments() if not all(has_data(ds, f, c) for c in derived)]
            excluded += sorted({fid for n in nodes(ds) if n.per_row and n.sources
                                for fid in stale_fragments(ds, n.columns, n.sources)} - set(excluded))
            plan = Compaction.plan(ds, {"target_rows_per_fragment": target_rows, "excluded_fragment_ids": excluded})
            counts["before"] = counts["after"] = len(ds.get_fragments())  # (a retry: of the version it retried on)
            if plan.num_tasks():
                done = Compaction.commit(ds, [task.execute(ds) for task in plan.tasks])
                counts["after"] += done.fragments_added - done.fragments_removed
            return len(excluded)

        counts: dict[str, int] = {}
        incomplete = retry_on_conflict(run)
        return {"fragments_before": counts["before"], "fragments_after": counts["after"],
                "left_incomplete": incomplete, "version": self.version}

    def sql(self, query: str, version: int | str | None = None, **options: Any) -> pd.DataFrame:
        """:meth:`Store.sql`; on the latest version the frame's ``attrs["notes"]`` says, as
        :meth:`search`'s does (and ``lakecurate sql`` on stderr), each stage behind the columns the
        query names that is not current (a caption rewritten since its embedding: the scores are of
        the old caption), with its fix; a frame of values that may be missing or old said nothing."""
        keywords("sql", options, Store.sql, skip=3)
        df = super().sql(query, version, **options)
        if version is None:
            from lakecurate.graph import query_notes

            df.attrs["notes"] = query_notes(self, self.dataset(), query)
        return df

    def cleanup(self, older_than: timedelta = timedelta(days=7), *, allow_stale: bool = False) -> dict[str, int]:
        """Delete untagged versions older than ``older_than`` (see :meth:`Store.cleanup`). Refused
        while a stage is stale at the latest version or at a branch's head, and versions would go:
        their commits are what shows it stale (a caption rewritten after embed read it; without that
        commit, status calls embed current and its plain run computes nothing). ``allow_stale``: clean
        up anyway. A tag's stages can never be made current there (a run writes a new version; curate
        tags its result before cluster and rebalance re-run), so the stages not current at each tag
        are recorded first (:func:`lakecurate.graph.record_states`): the tag's status, view and export
        read as before. Returns also ``tags_recorded``: how many tags' states were recorded now.

        Example::

            lake.cleanup(timedelta(days=7))   # {'bytes_removed': ..., 'old_versions': 12, 'tags_recorded': 1}
        """
        from lakecurate import graph
        from lakecurate.store import check_older_than

        allow_stale = flag("allow_stale", allow_stale)
        check_older_than(older_than)  # (before Lance reads it: timedelta.max overflowed there)
        recorded = 0
        if self.dataset().explain_cleanup_old_versions(older_than=older_than,
                                                       error_if_tagged_old_versions=False).stats.old_versions:
            with graph.one_listing():  # each branch's commits listed once for all its versions read
                heads: list[tuple[Any, list[Any]]] = []
                stale = self._stale_kept(heads)
                if stale and not allow_stale:
                    what, todo = "; ".join(w for w, _ in stale), ". ".join(t for _, t in stale)
                    raise LakeError(f"{what}, and cleanup would remove versions whose commits show it: status would "
                                    f"then call it current. {todo}; or pass {given('--allow-stale')} to forget it")
                # (the heads' states too: the anchor the versions after them read, :func:`graph._apply_recorded`)
                tags = self._tag_states()
                # (where any stage is recorded not current, every version kept is an anchor: a restore of
                # a tag current then, or the latest, must not read an older tag's record; else no table)
                anchors = bool(graph.recorded_states(self)) or any(
                    st.state != "current" and not st.by_code for _, states in [*tags, *heads] for st in states)
                recorded = graph.record_states(self, tags, markers=anchors)
                graph.record_states(self, heads, markers=anchors)
        out = super().cleanup(older_than)
        if out["old_versions"]:  # (nothing removed: every record still names a version)
            graph.forget_records(self, self._versions_left())
        return {**out, "tags_recorded": recorded}

    def _grown(self) -> list[str | None]:
        """This branch and those made from it (or from those), whose logs hold its versions."""
        parents = {name: info.get("parent_branch") for name, info in self.branches().items()}
        grown: list[str | None] = [self.branch]
        for b in grown:
            grown += sorted(name for name, parent in parents.items() if parent == b and name not in grown)
        return grown

    def _stale_kept(self, readings: list[tuple[Any, list[Any]]] | None = None) -> list[tuple[str, str]]:
        """What cleanup would make read "current" and no record keeps: each branch head whose commit
        log runs through this branch's (this branch's latest, the heads of the branches grown from
        it) where a stage is stale by its commits, as (what, what to do). A cleanup of a branch
        removes its own versions only: main's or a sibling's staleness does not refuse it. (Staleness
        that only the code shows, not the commits cleanup removes, stays as it is; a tag's is
        recorded: :meth:`_tag_states`.)"""
        from lakecurate import graph

        out = []
        for branch in self._grown():
            lake = self.on_branch(branch)
            head = lake.dataset()
            states = graph.states(lake, head)
            if readings is not None:  # (each head's reading, for cleanup's record)
                readings.append((head, states))
            stale = [s for s in states if s.state == "stale" and not s.by_code]
            if stale:
                fixes = list(dict.fromkeys(s.fix for s in stale))
                run = f"{'its fix' if len(fixes) == 1 else 'the fixes'} first ({'; then '.join(fixes)})"
                if branch == self.branch:
                    out.append((f"{_what(stale, f' of lake {self.uri!r}')} at its latest version", f"Run {run}"))
                else:
                    out.append((f"at branch '{branch or 'main'}' {_what(stale)}",
                                f"For branch '{branch or 'main'}': run {run}"))
        return out

    def _tag_states(self) -> list[tuple[Any, list[Any]]]:
        """(the version, its stage states) of each tag of this branch and of those grown from it:
        one reading each, a version named twice read once."""
        from lakecurate import graph

        grown = self._grown()
        recorded = graph.recorded_states(self)  # (a tag recorded by an earlier cleanup: not read again)
        heads: dict[str | None, tuple[Any, Any]] = {}  # branch -> (the lake on it, its latest version)
        seen: dict[tuple[str | None, int], tuple[Any, list[Any]]] = {}
        for _name, meta in sorted(self.dataset().tags.list().items()):
            branch = meta.get("branch")
            if branch not in grown or (branch or "", meta["version"]) in recorded:
                continue
            if branch not in heads:
                lake = self.on_branch(branch)
                heads[branch] = lake, lake.dataset()
            lake, head = heads[branch]
            key = (branch, meta["version"])
            if key not in seen:
                # (a tag opened from its branch's head: Lance's cache is shared, no tag list read again)
                at = head if key[1] == head.version else head.checkout_version(key[1])
                seen[key] = at, graph.states(lake, at)
        return list(seen.values())

    def _forget_branch(self, name: str) -> None:
        """The store's leftovers of a branch that is gone, and the states cleanup recorded at its
        tags (a branch made again under the name would read them at its own version numbers)."""
        from lakecurate import graph

        super()._forget_branch(name)
        graph.forget_records(self, {}, branch=name)

    def _versions_left(self) -> dict[str, set[int] | None]:
        """Branch ("" for main) -> its versions there now (after a cleanup: what it left); None where
        they could not be listed (a store's request failed: its records are kept, not forgotten)."""
        out: dict[str, set[int] | None] = {}
        for branch in [None, *sorted(self.branches())]:
            try:
                out[branch or ""] = {v["version"] for v in self.on_branch(branch).dataset().versions()}
            except (ValueError, OSError, LakeError):  # (deleted meanwhile by another writer: its rows go with it)
                out[branch or ""] = None
        return out

    def diff(self, a: int | str, b: int | str | None = None, **options: Any) -> Any:
        """Rows added/removed between two curated views, per reason; see :func:`lakecurate.compare.diff`."""
        from lakecurate.compare import diff

        keywords("diff", options, diff, skip=3)
        return diff(self, a, b, **options)

    def info(self) -> dict[str, Any]:
        """Rows, columns (with provenance of derived columns), versions and tags."""
        ds = self.dataset()
        from lakecurate.columns import field_provenance

        columns = [{"name": field.name, "type": "blob" if field.name == "image" else str(field.type),
                    "doc": column_doc(field.name, prov),
                    "provenance": prov}  # what can be read, never a KeyError
                   for field in ds.schema for prov in [field_provenance(field, strict=False)]]
        status = ds.to_table(columns=["ingest_status"]).column("ingest_status").value_counts()
        # this branch's tags: another branch's tag names a version of that branch (main has no v35 of exp's)
        tags = {name: t["version"] for name, t in ds.tags.list().items() if t.get("branch") == self.branch}
        versions = ds.versions()
        return {
            "uri": self.uri,
            "table": TABLE,
            "rows": ds.count_rows(),
            "version": ds.version,
            "n_versions": len(versions),
            "last_commit": _iso(versions[-1]["timestamp"]) if versions else None,
            "fragments": len(ds.get_fragments()),
            "status_counts": {s["values"]: s["counts"] for s in status.to_pylist()},
            "columns": columns,
            "tags": tags,
            "branch": self.branch or "main",
            "branches": sorted(self.branches()),
        }


def _what(stale: list[Any], of: str = "") -> str:
    """The stale stages of a version in words: "feature (n) is stale (its input ...)"; ``of``: after
    the columns (" of lake 'x'")."""
    first = stale[0]
    more = f" (and {', '.join(dict.fromkeys(s.node.stage for s in stale[1:]))})" if len(stale) > 1 else ""
    return f"{first.node.stage} ({', '.join(first.node.columns[:3])}){of} is stale ({first.reasons[0]}){more}"


def _code() -> dict[str, dict[str, Any]]:
    """What this code computes a stage with, for the stages whose result is their code's
    (registered with the graph below, so that export, rebalance and sequence, which read the graph
    without the stages, call a column another lakecurate made differently stale as status does):
    the signals' configs (a column made with another was made by another lakecurate: the stage
    refuses it) and curate's step code versions."""
    from lakecurate import faces, imagetext, signals
    from lakecurate.curate import code_versions

    stages = (signals.IMAGE_STAGE, signals.COPY_STAGE, signals.CAPTION_STAGE, signals.redact_stage(), faces.STAGE,
              imagetext.STAGE)
    return {**{s.name: {"config": s.config} for s in stages}, "curate": {"steps": code_versions()}}


def _recipe_edited(st: Any) -> str | None:
    """A note when the recipe file ``keep`` was decided by now says something else (edited since, or
    a built-in one changed with lakecurate): status called the decision current, and a person who
    had tightened a threshold exported the old one. The decision stays what it is (its tag names
    it); the note names the command that applies the file."""
    from pathlib import Path

    from lakecurate.curate import load_recipe

    cfg = st.node.prov.get("config") or {}
    source = str(cfg.get("source") or "")
    if not source or source.startswith("<") or not Path(source).is_file():
        return None
    try:
        now = load_recipe(source, dict(((cfg.get("recipe") or {}).get("set")) or {}))
    except LakeError as e:
        return f"recipe {source}, which keep was decided by, no longer loads: {e}"
    if now.hash == cfg.get("hash"):
        return None
    return (f"recipe {source} changed since keep was decided by it (recipe hash {cfg.get('hash')}, now {now.hash}); "
            f"to decide by it as it is now: {st.fix}")


def _register() -> None:
    from lakecurate import graph

    if _code not in graph.CODE:
        graph.CODE.append(_code)


_register()
