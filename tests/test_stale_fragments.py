"""Stale values a fragment at a time: what the stage graph must see through (compactions, cleanup, a
fill committed after its input was rewritten, a lake made again at the same path), and what the
plain run of a per-row stage then computes again (found by a hostile probe of that behaviour)."""
from __future__ import annotations

import json
import os
import shlex
import shutil
from datetime import timedelta
from pathlib import Path

import lance
import numpy as np
import pyarrow as pa
import pytest
from click.testing import CliRunner
from PIL import Image

from lakecurate import Lake, LakeError, columns, graph, review
from lakecurate.cli import main
from lakecurate.plant import synthetic_pairs

from .writers import scaled_len


def lake_of(path: Path, *sizes: int) -> Lake:
    """A lake of one fragment per size, with the feature ``n`` (len(caption)) computed."""
    lake = Lake.create(path)
    start = 0
    for n in sizes:
        lake.append(synthetic_pairs(start, n))
        start += n
    add_n(lake)
    return lake


def add_n(lake: Lake, **options) -> object:
    return lake.add_feature("n", scaled_len, inputs=["caption"], type="int64", progress=False, **options)


def feature_state(lake: Lake) -> graph.NodeState:
    return next(s for s in graph.states(lake) if s.node.columns == ["n"])


def wrong_rows(lake: Lake) -> list[str]:
    """Ids whose n is not len(caption) (a value computed from an old caption)."""
    t = lake.dataset().to_table(columns=["id", "caption", "n"]).to_pylist()
    return sorted(r["id"] for r in t if r["caption"] is not None and r["n"] != len(r["caption"]))


def update(lake: Lake, where: str, caption: str) -> None:
    lance.dataset(lake.table_uri).update({"caption": f"'{caption}'"}, where=where)


def test_a_compaction_does_not_hide_a_stale_fragment(tmp_path: Path):
    """A stale fragment merged with a current one: the merged fragment kept each column's latest
    write, so caption (from the stale part) read as older than n (from the other part): status
    said current and the plain run left the old value."""
    import lancedb

    lake = lake_of(tmp_path / "lake", 8, 8)
    update(lake, "id = 'p0000001'", "a brand new caption")  # its row moves to a fragment of its own: stale
    lake.append(synthetic_pairs(100, 8))
    stale = graph.stale_fragments(lake.dataset(), ["n"], ["caption"])
    other = columns.FragmentClaims(lake, _key(lake))  # another run holds the stale fragment: this one fills the rest
    assert other.take(stale) == (stale, {})
    try:
        add_n(lake)
    finally:
        other.release()
    assert feature_state(lake).state == "stale" and wrong_rows(lake) == ["p0000001"]
    lancedb.connect(lake.uri).open_table("pairs").optimize()
    assert len(lake.dataset().get_fragments()) == 1
    st = feature_state(lake)
    assert st.state == "stale" and any("while some of their rows held stale values" in r for r in st.reasons), st
    assert add_n(lake).rows == lake.count() and wrong_rows(lake) == []
    assert feature_state(lake).state == "current"


def test_lakecurate_compact_leaves_stale_fragments_as_they_are(tmp_path: Path):
    lake = lake_of(tmp_path / "lake", 8, 8, 8)
    update(lake, "id = 'p0000001'", "a brand new caption")
    stale = graph.stale_fragments(lake.dataset(), ["n"], ["caption"])
    res = CliRunner().invoke(main, ["compact", lake.uri])
    assert res.exit_code == 0 and "1 left as they are" in res.output, res.output
    assert graph.stale_fragments(lake.dataset(), ["n"], ["caption"]) == stale  # not merged with the others
    assert add_n(lake).rows == 1 and wrong_rows(lake) == [] and feature_state(lake).state == "current"


def test_after_a_cleanup_the_first_commit_left_writes_its_own_fragments(tmp_path: Path):
    """The first version left by a cleanup was an append: its writes went to fragment 0 (its new
    fragments were counted from the start), which then read as stale and was computed again while
    the appended rows read as filled."""
    lake = lake_of(tmp_path / "lake", 6, 6)
    lake.append(synthetic_pairs(100, 3))
    assert lake.cleanup(timedelta(0))["old_versions"] > 0
    st = feature_state(lake)
    assert (st.state, st.rows_missing, st.rows_stale) == ("incomplete", 3, 0), st
    rep = add_n(lake)
    assert (rep.rows, rep.rows_refreshed) == (3, 0) and wrong_rows(lake) == []


def test_a_tagged_old_version_kept_by_cleanup_does_not_make_a_current_lake_stale(tmp_path: Path):
    """The ingest version tagged, values computed and more rows added after it, then cleanup: the
    tagged version was kept and the commits after it removed, and the kept append read as newer
    than the removed fill (status called the feature stale, its fix computed every row again), the
    rows the later append added were taken for those the removed ones added, and the log called
    the kept append "rows appended" (the version before it was gone)."""
    lake = Lake.create(tmp_path / "lake")
    lake.append(synthetic_pairs(0, 6))
    tagged = lake.tag("raw")
    add_n(lake)
    lake.append(synthetic_pairs(100, 3))
    add_n(lake)
    lake.append(synthetic_pairs(200, 2))
    before = feature_state(lake)
    assert (before.state, before.rows_missing, before.rows_stale) == ("incomplete", 2, 0), before
    assert lake.cleanup(timedelta(0))["old_versions"] > 0
    assert [v["version"] for v in lake.dataset().versions()][0] == tagged  # kept: tagged
    graph._WRITES.clear()  # the log as another process reads it (this one kept what it read before)
    graph._COMMITS.clear()
    st = feature_state(lake)
    assert (st.state, st.rows_missing, st.rows_stale) == ("incomplete", 2, 0), st
    rep = add_n(lake)
    assert (rep.rows, rep.rows_refreshed) == (2, 0) and wrong_rows(lake) == []
    assert feature_state(lake).state == "current"
    log = {v["version"]: v["change"] for v in lake.history(None)}
    assert log[tagged] == "+6 rows", log


def test_cleanup_refuses_to_remove_what_shows_a_stage_stale(tmp_path: Path):
    """A caption updated, another commit, then cleanup: the update's commit was gone, and status
    called the feature current with the old value in place."""
    lake = lake_of(tmp_path / "lake", 6, 6)
    update(lake, "id = 'p0000001'", "a brand new caption")
    lake.append(synthetic_pairs(100, 3))
    v = lake.version
    with pytest.raises(LakeError, match=r"feature \(n\) .* is stale .*cleanup would remove versions whose commits "
                                        r"show it.*lakecurate feature add .*allow_stale=True"):
        lake.cleanup(timedelta(0))
    res = CliRunner().invoke(main, ["cleanup", lake.uri, "--older-than-days", "0"])
    assert res.exit_code == 1 and "--allow-stale" in res.output and "Traceback" not in res.output
    assert lake.version == v and len(lake.dataset().versions()) == v
    add_n(lake)  # the fix: then nothing stale is forgotten
    assert lake.cleanup(timedelta(0))["old_versions"] > 0 and feature_state(lake).state == "current"
    update(lake, "id = 'p0000002'", "another caption")
    res = CliRunner().invoke(main, ["cleanup", lake.uri, "--older-than-days", "0", "--allow-stale"])
    assert res.exit_code == 0, res.output


def test_a_fill_committed_after_its_input_was_rewritten_is_stale(tmp_path: Path):
    """A run computed a fragment from the captions it read, another writer rewrote those captions in
    place meanwhile, then the run committed: the commit's read version (the latest, where its
    commit landed) made the values read as computed after the rewrite: current, and wrong."""
    lake = Lake.create(tmp_path / "lake")
    lake.append(synthetic_pairs(0, 8))
    rewritten = []

    def n_meanwhile(batch: pa.RecordBatch) -> pa.Array:
        ds = lake.dataset()
        if not rewritten and "n" in ds.schema.names:  # (declared: the run, not the trial on the first rows)
            # another writer, while this run computes: the fragment's captions rewritten in place
            frag = ds.get_fragments()[0]
            caps = frag.to_table(columns=["caption"], with_row_address=False).column("caption").to_pylist()
            new = pa.table({"caption": pa.array([None if c is None else c + " (edited)" for c in caps], pa.string())})
            rewritten.append(columns.fill_fragments(lake, {frag.fragment_id: new}))
        return scaled_len(batch)

    lake.add_feature("n", n_meanwhile, inputs=["caption"], type="int64", progress=False)
    assert rewritten[0] is not None and len(wrong_rows(lake)) > 0
    st = feature_state(lake)
    assert st.state == "stale" and st.rows_stale == 8, st
    rep = lake.add_feature("n", n_meanwhile, inputs=["caption"], type="int64", progress=False)  # the plain run again
    assert rep.rows == 8 and wrong_rows(lake) == [] and feature_state(lake).state == "current"


def test_a_lake_made_again_at_the_same_path_is_read_afresh(tmp_path: Path):
    """The graph's cache of a version's log was keyed by path and number: a lake made again at the
    same path, at the same version number, was read with the old lake's log (current while stale)."""
    path = tmp_path / "lake"
    lake = lake_of(path, 8, 8)
    lance.dataset(lake.table_uri).delete("id = 'p0000003'")
    assert feature_state(lake).state == "current"
    first = lake.version
    shutil.rmtree(path)
    lake = lake_of(path, 8, 8)
    update(lake, "id = 'p0000001'", "a brand new caption")
    assert lake.version == first
    assert feature_state(lake).state == "stale"
    assert add_n(lake).rows == 1 and wrong_rows(lake) == []


def test_status_counts_the_rows_without_values_beside_the_stale_ones(tmp_path: Path):
    lake = lake_of(tmp_path / "lake", 8, 8)
    update(lake, "id = 'p0000001'", "a brand new caption")
    lake.append(synthetic_pairs(100, 3))
    st = feature_state(lake)
    assert st.reasons[-1] == "its fix computes 1 rows in 1 fragment(s) again, and 3 rows in 1 fragment(s) that have none"
    rep = add_n(lake)
    assert (rep.rows, rep.rows_refreshed) == (4, 1)


def test_feature_add_says_which_fragments_another_run_holds(tmp_path: Path):
    """It printed "0 rows in 0 fragments" and nothing about the other run."""
    import shlex

    lake = lake_of(tmp_path / "lake", 8)
    update(lake, "id = 'p0000001'", "a brand new caption")
    stale = graph.stale_fragments(lake.dataset(), ["n"], ["caption"])
    other = columns.FragmentClaims(lake, _key(lake))
    assert other.take(stale) == (stale, {})
    try:
        res = CliRunner().invoke(main, shlex.split(feature_state(lake).fix)[1:])
    finally:
        other.release()
    assert res.exit_code == 0, res.output
    assert "0 rows in 0 fragments" in res.output and "1 fragments were left to another feature add n" in res.output


def _key(lake: Lake) -> str:
    """The feature n's checkpoint and claims key (runner.RowStage.checkpoint_key)."""
    prov = columns.field_provenance(lake.dataset().schema.field("n"))
    return f"{prov['stage']}-n-{prov['config_hash']}"


def test_batches_resumed_from_a_checkpoint_keep_the_version_they_were_computed_from(tmp_path: Path):
    """A run stopped after a fragment's first batch was checkpointed; the fragment's captions were
    then rewritten in place; the rerun resumed that batch (computed from the old captions) and its
    commit recorded the rerun's version: current, with the resumed rows wrong."""
    lake = Lake.create(tmp_path / "lake")
    lake.append(synthetic_pairs(0, 8))
    calls, fail = [], [True]

    def n_stopped(batch: pa.RecordBatch) -> pa.Array:
        if "n" in lake.dataset().schema.names:  # (the run, not the trial on the first rows)
            calls.append(batch.num_rows)
            if fail[0] and len(calls) == 2:
                raise RuntimeError("stopped")  # as a kill after the first batch was saved
        return scaled_len(batch)

    def add() -> object:
        return lake.add_feature("n", n_stopped, inputs=["caption"], type="int64", batch_size=4, progress=False)

    with pytest.raises(Exception, match="stopped"):
        add()
    frag = lake.dataset().get_fragments()[0]
    caps = frag.to_table(columns=["caption"]).column("caption").to_pylist()
    new = pa.table({"caption": pa.array([None if c is None else c + " (edited)" for c in caps], pa.string())})
    assert columns.fill_fragments(lake, {frag.fragment_id: new}) is not None  # the captions, rewritten in place
    fail[0] = False
    rep = add()
    assert rep.rows == 8 and len(wrong_rows(lake)) > 0  # the resumed batch: the old captions' values
    st = feature_state(lake)
    assert st.state == "stale" and st.rows_stale == 8, st
    assert add().rows == 8 and wrong_rows(lake) == [] and feature_state(lake).state == "current"


def test_signals_says_what_it_computed_again_and_which_fragments_another_run_holds(tmp_path: Path):
    """It printed rows per kind only: nothing about rows computed again for a rewritten input, nor
    about fragments it left to another run (and the API waited for that run, as a curate's producer)."""
    import json

    from lakecurate import signals

    lake = lake_of(tmp_path / "lake", 8, 8)
    assert lake.signals(["caption"], progress=False) == {"caption": 16}
    update(lake, "id = 'p0000001'", "a brand new caption")
    lake.append(synthetic_pairs(100, 3))
    res = CliRunner().invoke(main, ["signals", lake.uri, "--no-image"])
    assert res.exit_code == 0, res.output
    assert "1 (inputs changed since)" in res.output and " 4 " in res.output, res.output  # 1 again + 3 new
    update(lake, "id = 'p0000002'", "another caption")
    stale = graph.stale_fragments(lake.dataset(), ["cap_words"], ["caption"])
    other = columns.FragmentClaims(lake, signals.CAPTION_STAGE.checkpoint_key)
    assert other.take(stale) == (stale, {})
    try:
        res = CliRunner().invoke(main, ["signals", lake.uri, "--no-image", "--json"])
        text = CliRunner().invoke(main, ["signals", lake.uri, "--no-image"])
    finally:
        other.release()
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["caption"] == 0 and out["runs"]["caption"]["fragments_elsewhere"] == 1
    assert out["runs"]["caption"]["elsewhere"] == [f"{columns.host_name()} {os.getpid()}"]
    assert text.exit_code == 0 and "1 fragments were left to another signals --caption" in text.stderr
    done = lake.signals(["caption"], progress=False)
    assert done == {"caption": 1} and done.runs["caption"].rows_refreshed == 1


def _run_fix(st: graph.NodeState) -> None:
    """Run a status fix command as pasted."""
    import shlex

    assert st.fix.startswith("lakecurate "), st.fix
    res = CliRunner().invoke(main, shlex.split(st.fix)[1:])
    assert res.exit_code == 0, res.output


def _state(lake: Lake, stage: str) -> graph.NodeState:
    return next(s for s in graph.states(lake) if s.node.stage == stage)


def test_an_embedding_column_another_writer_dropped_is_stale_and_its_fix_restores_it(sample_lake_embedded: Lake,
                                                                                    tmp_path: Path):
    """status called embed current with 3 of its 4 columns; the column set a run declared is in its
    provenance, so the one another writer dropped is named, and the fix computes it again."""
    lake = Lake.open(shutil.copytree(sample_lake_embedded.uri, tmp_path / "lake"))
    texts = lake.count("clip_tinyrandom_text IS NOT NULL")
    assert _state(lake, "embed").state == "current"
    lance.dataset(lake.table_uri).drop_columns(["clip_tinyrandom_text"])
    st = _state(lake, "embed")
    assert st.state == "stale", st.reasons
    assert "its column clip_tinyrandom_text is no longer in the table" in " ".join(st.reasons)
    _run_fix(st)
    assert _state(lake, "embed").state == "current"
    assert lake.count("clip_tinyrandom_text IS NOT NULL") == texts > 0


def test_a_signal_column_another_writer_dropped_is_stale_and_its_fix_restores_it(tmp_path: Path):
    lake = lake_of(tmp_path / "lake", 8, 8)
    lake.signals(["caption"], progress=False)
    st = _state(lake, "signals-caption")
    assert st.state == "current" and len(st.node.columns) > 1
    gone = st.node.columns[-1]
    values = lake.dataset().to_table(columns=["id", gone]).sort_by("id")
    lance.dataset(lake.table_uri).drop_columns([gone])
    st = _state(lake, "signals-caption")
    assert st.state == "stale" and f"its column {gone} is no longer in the table" in " ".join(st.reasons)
    _run_fix(st)
    assert _state(lake, "signals-caption").state == "current"
    assert lake.dataset().to_table(columns=["id", gone]).sort_by("id").equals(values)


def test_a_concept_column_another_writer_dropped_is_stale_and_cluster_restores_it(sample_lake_embedded: Lake,
                                                                                 tmp_path: Path):
    """The same for a global stage's columns (concept, concept_dist)."""
    lake = Lake.open(shutil.copytree(sample_lake_embedded.uri, tmp_path / "lake"))
    lake.cluster(2)
    before = lake.dataset().to_table(columns=["id", "concept_dist"]).sort_by("id")
    lance.dataset(lake.table_uri).drop_columns(["concept_dist"])
    st = _state(lake, "concepts")
    assert st.state == "stale" and "its column concept_dist is no longer in the table" in " ".join(st.reasons)
    _run_fix(st)
    assert _state(lake, "concepts").state == "current"
    assert lake.dataset().to_table(columns=["id", "concept_dist"]).sort_by("id").equals(before)


def test_an_image_only_embedding_and_a_lake_declared_before_the_column_set_was_recorded_read_current(
        sample_lake_embedded: Lake, tmp_path: Path):
    """What a node declared is what it is judged by: the tests' synthetic embedding of an image column
    alone is current; and a lake whose provenance records no column set behaves as before."""
    from .test_concepts import _concept_lake

    syn = _concept_lake(tmp_path / "syn", [5, 5])
    assert [s.state for s in graph.states(syn) if s.node.stage == "embed"] == ["current"]

    lake = Lake.open(shutil.copytree(sample_lake_embedded.uri, tmp_path / "lake"))
    ds = lance.dataset(lake.table_uri)
    old = {}
    for f in ds.schema:
        prov = columns.field_provenance(f, strict=False)
        if prov and prov.get("stage") == "embed":
            prov.pop(columns.DECLARED_KEY, None)
            old[f.name] = {columns.PROVENANCE_KEY: json.dumps(prov, sort_keys=True)}
    ds.update_field_metadata(old)
    lance.dataset(lake.table_uri).drop_columns(["clip_tinyrandom_text"])
    assert _state(lake, "embed").state == "current"


def test_a_stage_whose_every_column_another_writer_dropped_is_listed_dropped_and_its_fix_restores_it(tmp_path: Path):
    """A stage of one column (redact: caption_redacted; a feature) dropped whole outside lakecurate
    vanished from status: its record was on the column. The table's record of each declare keeps
    it: status lists it dropped, at the version that dropped it, and its fix computes it again."""
    import lancedb

    lake = lake_of(tmp_path / "lake", 8, 8)
    lake.signals(["redact"], progress=False)
    st = _state(lake, "signals-redact")
    assert st.state == "current" and st.node.columns == ["caption_redacted"]
    values = lake.dataset().to_table(columns=["id", "caption_redacted"]).sort_by("id")
    lance.dataset(lake.table_uri).drop_columns(["caption_redacted"])
    dropped_at = lake.dataset().version
    lancedb.connect(str(tmp_path / "lake")).open_table("pairs").drop_columns(["n"])  # the feature, by LanceDB
    by_stage = {s.node.stage: s for s in graph.states(lake)}
    st, feat = by_stage["signals-redact"], by_stage["feature"]
    assert st.state == feat.state == "dropped", (st.reasons, feat.reasons)
    assert f"its column caption_redacted was dropped at version {dropped_at} outside lakecurate" in st.reasons[0]
    assert st.rows_stale == 16 and feat.node.columns == ["n"]
    status = json.loads(CliRunner().invoke(main, ["status", str(tmp_path / "lake"), "--json"]).output)
    assert {s["stage"]: s["state"] for s in status["stages"]}["signals-redact"] == "dropped"
    _run_fix(st)
    _run_fix(feat)
    assert {s.node.stage: s.state for s in graph.states(lake)} == {"signals-redact": "current", "feature": "current"}
    assert lake.dataset().to_table(columns=["id", "caption_redacted"]).sort_by("id").equals(values)


def test_the_drops_lakecurate_means_leave_nothing_listed(tmp_path: Path):
    """feature drop, a --recompute (drop and declare again) and a run that wrote nothing (undeclared)
    forget the set's record: only a drop outside lakecurate lists a stage dropped; and `feature drop`
    forgets a feature another writer dropped (listed dropped until then)."""
    from lakecurate import features

    lake = lake_of(tmp_path / "lake", 8)
    add_n(lake, recompute=True)
    assert [s.node.stage for s in graph.states(lake)] == ["feature"]
    features.drop_feature(lake, "n")
    assert graph.states(lake) == [] and not columns.node_records(lake.dataset())
    assert [h["change"] for h in lake.history(2)] == ["-column n", "forgot the record of n (to drop it)"]
    add_n(lake)
    lance.dataset(lake.table_uri).drop_columns(["n"])
    assert [s.state for s in graph.states(lake)] == ["dropped"]
    assert features.drop_feature(lake, "n") == ["n"]
    assert graph.states(lake) == []
    with pytest.raises(LakeError, match="no feature 'n'"):
        features.drop_feature(lake, "n")


def test_review_marks_another_writer_dropped_are_written_back_from_the_version_that_has_them(tmp_path: Path):
    """The marks are no run's to compute: status names the version that has them, and its fix
    writes them back into the lake as it is now (rows added since stay; it said `restore N`, which
    undid them); a mark or an undo meanwhile is refused (it declared the columns anew, empty, and
    the old marks were in no current row for good)."""
    lake = lake_of(tmp_path / "lake", 8)
    ids = lake.dataset().to_table(columns=["id"]).column("id").to_pylist()[:3]
    first = lake.review(ids[:2], verdict="drop", reason="watermark", by="ana")
    lake.review(ids[2:], verdict="keep", by="bob")
    marked = lake.dataset().version
    before = lake.dataset().to_table(columns=["id", "review_verdict", "review_reason", "review_by", "review_at"],
                                     filter="review_verdict IS NOT NULL").sort_by("id")
    ds = lance.dataset(lake.table_uri)
    ds.drop_columns([c for c in ds.schema.names if c.startswith("review_")])
    lake.append(synthetic_pairs(100, 4))
    st = _state(lake, "review")
    assert st.state == "dropped" and f"they are still in version {marked}" in st.reasons[0], st.reasons
    for write in (lambda: lake.review(ids[:1], verdict="keep"), lambda: lake.undo_review(first["action"])):
        with pytest.raises(LakeError, match=f"were dropped at version {marked + 1} outside lakecurate; they are still in "
                                            f"version {marked}.*nothing marked.* review .* --from-version {marked}"):
            write()
    _run_fix(st)
    assert lake.count() == 12 and _state(lake, "review").state == "current"
    after = lake.dataset().to_table(columns=before.column_names, filter="review_verdict IS NOT NULL").sort_by("id")
    assert after.equals(before)
    back = next(h for h in review.history(lake) if h["kind"] == f"from version {marked}")
    assert back["rows"] == 3
    lake.undo_review(back["action"])
    assert lake.count("review_verdict IS NOT NULL") == 0


def test_global_stages_another_writer_dropped_whole_are_listed_dropped_and_their_fixes_restore_them(
        sample_lake_embedded: Lake, tmp_path: Path):
    """dedup's methods and decision and the concepts, every column dropped: each listed dropped (one
    dedup command for the three), the fixes run as pasted, and the values come back."""
    lake = Lake.open(shutil.copytree(sample_lake_embedded.uri, tmp_path / "lake"))
    lake.dedup(["phash", "semantic"], semantic_threshold=0.99, progress=False)
    lake.cluster(2)
    cols = [c for c in lake.dataset().schema.names if c.startswith(("dup_", "concept"))]
    before = lake.dataset().to_table(columns=["id", *cols]).sort_by("id")
    lance.dataset(lake.table_uri).drop_columns(cols)
    gone = [s for s in graph.states(lake) if s.state == "dropped"]
    assert sorted(c for s in gone for c in s.node.columns) == sorted(cols)
    assert [s.node.stage for s in gone] == ["dedup"] * 3 + ["concepts"] and len({s.fix for s in gone}) == 2
    for fix in dict.fromkeys(s.fix for s in gone):
        _run_fix(next(s for s in gone if s.fix == fix))
    assert {s.state for s in graph.states(lake)} == {"current"}
    assert lake.dataset().to_table(columns=["id", *cols]).sort_by("id").equals(before)


def test_a_set_declared_again_with_another_config_is_recorded_as_the_new_one(tmp_path: Path):
    """Lance's add_columns keeps a schema metadata key the table has: a --recompute with other
    parameters left the first config's record, so the set dropped outside was listed as dropped by
    lakecurate's own drop and its fix computed the first parameters."""
    lake = lake_of(tmp_path / "lake", 8)
    add_n(lake, params={"k": 3}, recompute=True)
    lance.dataset(lake.table_uri).drop_columns(["n"])
    dropped_at = lake.dataset().version
    st = _state(lake, "feature")
    assert st.state == "dropped" and f"dropped at version {dropped_at} " in st.reasons[0], st.reasons
    assert "k=3" in st.fix, st.fix
    _run_fix(st)
    assert _state(lake, "feature").state == "current"
    got = lake.to_pandas(["caption", "n"])
    assert got["n"].equals(got["caption"].str.len() * 3)
    assert [p["config"]["params"] for p in columns.node_records(lake.dataset()).values()] == [{"k": 3}]


# ------------------------------------------------------------------ lakecurate drop: derived columns on purpose
def _drop(lake: Lake, *names: str, as_json: bool = True):
    res = CliRunner().invoke(main, ["drop", lake.uri, *names, *(["--json"] if as_json else [])])
    return res, (json.loads(res.stdout) if as_json and res.stdout.strip() else None)


def test_drop_forgets_a_built_in_stage_dropped_outside_and_drops_one_the_lakecurate_way(tmp_path: Path):
    """caption_redacted dropped by Lance was listed dropped forever (feature drop knows features
    only): `lakecurate drop` forgets it. Made again and dropped through lakecurate: nothing listed,
    no record left, and the version before the drop still has the values."""
    lake = lake_of(tmp_path / "lake", 8, 8)
    lake.signals(["redact"], progress=False)
    lance.dataset(lake.table_uri).drop_columns(["caption_redacted"])
    assert _state(lake, "signals-redact").state == "dropped"
    res, out = _drop(lake, "caption_redacted")
    assert res.exit_code == 0, res.output
    assert out["dropped"] == [] and out["forgot"] == ["caption_redacted"] and out["kept_in"] is None
    assert [s.node.stage for s in graph.states(lake)] == ["feature"]
    assert not [p for p in columns.node_records(lake.dataset()).values() if p["stage"] == "signals-redact"]

    lake.signals(["redact"], progress=False)
    before = lake.version
    res, _ = _drop(lake, "caption_redacted", as_json=False)
    assert res.exit_code == 0 and res.output.strip() == f"dropped caption_redacted (version {before} still has them)"
    assert "caption_redacted" not in lake.dataset().schema.names
    assert [s.node.stage for s in graph.states(lake)] == ["feature"]
    assert "caption_redacted" in lake.dataset(before).schema.names
    assert [p["stage"] for p in columns.node_records(lake.dataset()).values()] == ["feature"]


def test_drop_of_an_embedding_drops_its_set_whole_and_leaves_what_was_built_on_it_stale(sample_lake_embedded: Lake,
                                                                                       tmp_path: Path):
    """One of an embedding's columns alone is refused (nothing written), naming the rest; the whole
    set dropped leaves the concepts computed from it stale, as the command says, and embed listed
    dropped while they read it (its fix first); once they are dropped too, nothing is listed."""
    lake = Lake.open(shutil.copytree(sample_lake_embedded.uri, tmp_path / "lake"))
    lake.cluster(2)
    emb = next(s.node.columns for s in graph.states(lake) if s.node.stage == "embed")
    assert len(emb) > 1
    version = lake.version
    res, out = _drop(lake, emb[0])
    assert res.exit_code == 1 and "name the rest too" in out["error"] and all(c in out["error"] for c in emb)
    assert lake.version == version
    res, out = _drop(lake, *emb)
    assert res.exit_code == 0, res.output
    assert out["dropped"] == emb and out["kept_in"] == version and out["version"] > version
    assert [s["stage"] for s in out["stale"]] == ["concepts"] and set(out["stale"][0]["inputs"]) <= set(emb)
    by_stage = {s.node.stage: s for s in graph.states(lake)}
    assert by_stage["embed"].state == "dropped" and "by lakecurate drop, and concepts reads them" in \
        by_stage["embed"].reasons[0]
    assert by_stage["concepts"].state == "stale" and "dropped since" in " ".join(by_stage["concepts"].reasons)
    text = CliRunner().invoke(main, ["drop", lake.uri, "concept", "concept_dist"])
    assert text.exit_code == 0 and text.output.startswith("dropped concept, concept_dist"), text.output
    assert graph.states(lake) == [] and not columns.node_records(lake.dataset())


def test_drop_refuses_source_foreign_and_unknown_columns_before_writing(tmp_path: Path):
    lake = lake_of(tmp_path / "lake", 8)
    ds = lance.dataset(lake.table_uri)
    ds.add_columns({"mine": "1"})
    version = lake.version
    res, out = _drop(lake, "n", "caption")
    assert res.exit_code == 1 and "source rows and columns are never deleted" in out["error"]
    assert "caption is a source column" in out["error"]
    res, out = _drop(lake, "mine")
    assert res.exit_code == 1 and "not made by lakecurate" in out["error"]
    res, out = _drop(lake, "n", "nope")
    assert res.exit_code == 1 and "no column 'nope'" in out["error"] and "its derived columns: n" in out["error"]
    plain = CliRunner().invoke(main, ["drop", lake.uri, "id"])
    assert plain.exit_code == 1 and "Traceback" not in plain.output and "never deleted" in plain.output
    assert lake.version == version and "n" in lake.dataset().schema.names
    with pytest.raises(LakeError, match="never deleted"):
        lake.drop_columns("image")
    assert lake.drop_columns("n")["dropped"] == ["n"]


SHORT = {"name": "strict", "step": [{"filter": "caption_length", "min_words": 5, "reason": "short"}]}


def _curated_then_dropped(tmp_path: Path) -> tuple[Lake, int]:
    """A lake curated, then curate's keep and drop_reason dropped with Lance (outside lakecurate)."""
    from lakecurate import signals

    lake = Lake.create(tmp_path / "lake")
    lake.append(synthetic_pairs(0, 40))
    signals.compute_caption_signals(lake, progress=False)
    lake.curate(SHORT, progress=False)
    lance.dataset(lake.table_uri).drop_columns(["keep", "drop_reason"])
    return lake, lake.dataset().version


def test_a_keep_column_another_writer_added_is_not_the_curated_view(tmp_path: Path):
    """A `keep` added with Lance after curate's was dropped (no provenance) became the curated view:
    status called it so, and export shipped every row `where keep`. It is not the lake's decision:
    status notes it and still lists curate dropped; export does not use it."""
    lake, dropped = _curated_then_dropped(tmp_path)
    lance.dataset(lake.table_uri).add_columns({"keep": "true"})
    status = CliRunner().invoke(main, ["status", lake.uri])
    assert "curated view: none yet" in status.output, status.output
    assert "note: keep was not written by lakecurate curate: not used as the view; drop it with the tool that added it" \
        in " ".join(status.output.split()), status.output
    st = _state(lake, "curate")
    assert st.state == "dropped" and f"dropped at version {dropped} outside" in st.reasons[0], st.reasons
    res = CliRunner().invoke(main, ["export", lake.uri, str(tmp_path / "out"), "--format", "parquet", "--allow-stale"])
    assert res.exit_code == 0, res.output
    assert "where keep" not in res.output and "keep was not written by lakecurate curate" in res.output, res.output
    recipe = tmp_path / "strict.toml"
    recipe.write_text('name = "strict"\n[[step]]\nfilter = "caption_length"\nmin_words = 5\nreason = "short"\n')
    fix = graph.NodeState(st.node, st.state, fix=st.fix.replace("RECIPE.toml", str(recipe)))
    v = lake.version
    with pytest.raises(AssertionError, match="keep in lake .* was not made by lakecurate .* does not drop another "
                                             "writer's columns"):  # (curate dropped it without a word)
        _run_fix(fix)
    assert lake.version == v and lake.dataset().to_table(columns=["keep"]).column(0).to_pylist() == [True] * 40
    lance.dataset(lake.table_uri).drop_columns(["keep"])
    _run_fix(fix)
    assert _state(lake, "curate").state == "current" and lake.status()["view"] == "keep"


def test_export_refuses_when_the_curated_decision_was_dropped(tmp_path: Path):
    """curate's keep and drop_reason dropped outside lakecurate (status lists curate dropped): export
    shipped every row ingest accepted without a word. It refuses, as a stale decision is refused,
    naming the drop and status's fix; --allow-stale exports with a warning."""
    lake, dropped = _curated_then_dropped(tmp_path)
    fix = _state(lake, "curate").fix
    res = CliRunner().invoke(main, ["export", lake.uri, str(tmp_path / "out"), "--format", "parquet"])
    assert res.exit_code != 0 and not (tmp_path / "out").exists(), res.output
    assert f"were dropped at version {dropped} outside lakecurate" in res.output, res.output
    assert f"re-run it: {fix} (or pass --allow-stale)" in " ".join(res.output.split()), res.output
    res = CliRunner().invoke(main, ["export", lake.uri, str(tmp_path / "out"), "--format", "parquet", "--allow-stale"])
    assert res.exit_code == 0, res.output
    assert "warning: exported with --allow-stale although curate (keep, drop_reason) is dropped" in res.output


def test_rebalance_does_not_choose_among_a_keep_another_writer_added(tmp_path: Path):
    """rebalance (and a pipeline's plan of it) took any column named keep as its candidates."""
    from lakecurate.pipeline import why_run

    from .test_concepts import _concept_lake

    lake = _concept_lake(tmp_path / "syn", [6, 6])  # (its concepts written directly)
    lance.dataset(lake.table_uri).add_columns({"keep": "id < 'r'"})  # (no provenance: not a recipe's)
    lake.rebalance(0.5)
    prov = columns.field_provenance(lake.dataset().schema.field("rebalance_keep"))
    assert prov["config"].get("where") is None and "keep" not in prov["source_columns"], prov
    assert why_run(lake, "rebalance", {"target": 0.5}) is None
    assert [s.state for s in graph.states(lake) if s.node.stage == "rebalance"] == ["current"]


def test_sequence_rebalance_and_a_later_export_refuse_rows_chosen_without_the_dropped_decision(tmp_path: Path):
    """curate's decision dropped outside lakecurate: sequence ordered, rebalance chose among, every
    row, and export then shipped rebalance_keep (made after the drop: "current") without a word."""
    from .test_concepts import _concept_lake

    lake, dropped = _curated_then_dropped(tmp_path)
    with pytest.raises(LakeError, match=f"sequence would choose rows without the curated decision .* dropped at "
                                        f"version {dropped} .* --allow-stale"):
        lake.sequence(mode="random")
    assert lake.sequence(mode="random", allow_stale=True).rows == 40  # (every row, as asked)

    syn = _concept_lake(tmp_path / "syn", [6, 6])  # concepts written directly
    syn.curate(SHORT, progress=False)
    lance.dataset(syn.table_uri).drop_columns(["keep", "drop_reason"])
    with pytest.raises(LakeError, match="rebalance would choose rows without the curated decision"):
        syn.rebalance(0.5)
    syn.rebalance(0.5, allow_stale=True)
    res = CliRunner().invoke(main, ["export", syn.uri, str(tmp_path / "out"), "--format", "parquet"])
    assert res.exit_code != 0 and "export would choose rows without the curated decision" in " ".join(res.output.split())


def test_after_lakecurate_drop_of_an_input_every_fix_status_prints_runs_in_order(sample_lake_embedded: Lake,
                                                                               tmp_path: Path):
    """`lakecurate drop` of the embedding (or of keep, of the concepts) forgot its record, so status
    listed only the stages built on it, whose fixes all failed ("no embedding", "--where keep": no
    field). The dropped input's stage is listed first, with its fix; pasted in order, all run."""
    lake = Lake.open(shutil.copytree(sample_lake_embedded.uri, tmp_path / "lake"))
    lake.dedup(["phash", "semantic"], semantic_threshold=0.99, progress=False)
    lake.curate("basic", progress=False)
    lake.cluster(2)
    lake.rebalance(0.5)
    emb = [c for c in lake.dataset().schema.names if c.startswith("clip_tinyrandom_")]
    out = lake.drop_columns(emb)
    assert out["dropped"] == emb
    st = graph.states(lake)
    first = st[0]
    assert (first.node.stage, first.state) == ("embed", "dropped") and "by lakecurate drop, and " in first.reasons[0]
    # a refusal names the dropped stage's fix, which runs, not its first reader's (dedup: "no embedding")
    res = CliRunner().invoke(main, ["export", lake.uri, str(tmp_path / "out")])
    assert res.exit_code != 0 and f"re-run it: {first.fix} " in " ".join(res.output.split()), res.output
    for drop in (None, ["keep", "drop_reason"], ["concept", "concept_dist"]):
        if drop:
            lake.drop_columns(drop)
            st = graph.states(lake)
        for fix in dict.fromkeys(s.fix for s in st if s.state != "current"):
            res = CliRunner().invoke(main, shlex.split(fix)[1:])
            assert res.exit_code == 0, (drop, fix, res.output)
        assert {s.state for s in graph.states(lake)} == {"current"}, [(s.node.stage, s.state) for s in graph.states(lake)]


def test_review_marks_dropped_before_a_branch_was_made_are_written_back_from_its_parent(tmp_path: Path):
    """A branch made after the review columns were dropped: status said no version left had the
    marks (the branch's own versions do not); they are in its parent's, named PARENT:N."""
    lake = lake_of(tmp_path / "lake", 8)
    ids = lake.dataset().to_table(columns=["id"]).column("id").to_pylist()[:2]
    lake.review(ids, verdict="drop", reason="watermark")
    marked = lake.dataset().version
    ds = lance.dataset(lake.table_uri)
    ds.drop_columns([c for c in ds.schema.names if c.startswith("review_")])
    assert CliRunner().invoke(main, ["branch", "create", lake.uri, "side"]).exit_code == 0
    side = lake.on_branch("side")
    st = _state(side, "review")
    assert st.state == "dropped" and f"they are still in version main:{marked}" in st.reasons[0], st.reasons
    assert st.fix.startswith("lakecurate --branch side review ") and st.fix.endswith(f"--from-version main:{marked}")
    _run_fix(st)
    assert side.count("review_verdict = 'drop'") == 2 and _state(side, "review").state == "current"
    assert _state(lake, "review").state == "dropped"  # (main's marks are main's to write back)


def test_on_a_branch_a_dropped_input_makes_its_readers_stale(tmp_path: Path):
    """The version a node was declared at is its parent's on a branch made after: it could not be
    read on the branch, so "cannot tell" left every reader current (export shipped them)."""
    from .test_concepts import _concept_lake

    lake = _concept_lake(tmp_path / "syn", [6, 6])
    lake.curate(SHORT, progress=False)
    lake.rebalance(0.5)
    assert CliRunner().invoke(main, ["branch", "create", lake.uri, "side"]).exit_code == 0
    side = lake.on_branch("side")
    side.drop_columns(["keep", "drop_reason"])
    by_stage = {s.node.stage: s for s in graph.states(side)}
    assert by_stage["rebalance"].state == "stale" and by_stage["curate"].state == "dropped", by_stage
    assert [s.node.stage for s in graph.states(side)].index("curate") < [s.node.stage for s in graph.states(side)].index("rebalance")
    assert {s.state for s in graph.states(lake)} == {"current"}  # main untouched


def test_a_curate_run_after_its_input_was_dropped_is_current(tmp_path: Path):
    """The review columns dropped (lakecurate drop, to start afresh): curate read review_verdict, so
    it was stale; run again (the step finds no marks), it stayed stale for good: the input was
    judged against the version curate was first declared at, not the one it last computed from."""
    lake = lake_of(tmp_path / "lake", 8)
    ids = lake.dataset().to_table(columns=["id"]).column("id").to_pylist()[:1]
    lake.review(ids, verdict="drop", reason="watermark")
    recipe = {"name": "r", "step": [{"filter": "review"}]}
    lake.curate(recipe, progress=False)
    assert lake.count("keep") == 7
    lake.drop_columns(list(review.NAMES))
    assert _state(lake, "curate").state == "stale"
    lake.curate(recipe, progress=False)
    assert _state(lake, "curate").state == "current" and lake.count("keep") == 8


def test_dedup_refuses_another_writers_decision_column_before_writing_anything(sample_lake_embedded: Lake,
                                                                              tmp_path: Path):
    """A dup_keep another writer added: dedup refused it only after writing its methods' groups."""
    lake = Lake.open(shutil.copytree(sample_lake_embedded.uri, tmp_path / "lake"))
    lance.dataset(lake.table_uri).add_columns({"dup_keep": "true"})
    v = lake.version
    with pytest.raises(LakeError, match="dup_keep in lake .* was not made by lakecurate"):
        lake.dedup(["exact", "phash"], progress=False)
    assert lake.version == v


def _rename(lake: Lake, **names: str) -> int:
    """Rename columns with Lance (outside lakecurate): old=new; returns the version it made."""
    ds = lance.dataset(lake.table_uri)
    ds.alter_columns(*[{"path": old, "name": new} for old, new in names.items()])
    return lake.dataset().version


def _status(lake: Lake) -> tuple[str, dict]:
    text = CliRunner().invoke(main, ["status", lake.uri]).output
    return " ".join(text.split()), json.loads(CliRunner().invoke(main, ["status", lake.uri, "--json"]).output)


def test_a_per_row_column_another_writer_renamed_is_one_entry_and_its_fix_leaves_the_new_name_alone(tmp_path: Path):
    """A stage's column renamed with Lance was listed twice: stale under the new name (its field
    still carries the provenance) and dropped under the old. One entry says the rename (found by
    field id), the one-liner that renames it back, and the fix; the new name is another writer's
    column: the fix computes the old one again and leaves it as it was."""
    lake = lake_of(tmp_path / "lake", 8, 8)
    lake.signals(["redact"], progress=False)
    values = lake.dataset().to_table(columns=["id", "caption_redacted"]).sort_by("id").column(1)
    at = _rename(lake, caption_redacted="redacted_v1")
    got = [s for s in graph.states(lake) if s.node.stage == "signals-redact"]
    assert len(got) == 1, [(s.node.columns, s.state, s.reasons) for s in got]
    st = got[0]
    assert st.node.columns == ["caption_redacted"] and st.state == "dropped"
    why = " ".join(st.reasons)
    assert f"caption_redacted was renamed to redacted_v1 at version {at} outside lakecurate" in why, why
    assert "lakecurate reads caption_redacted" in why
    assert "alter_columns({'path': 'redacted_v1', 'name': 'caption_redacted'})" in why, why
    assert "or run its fix, which computes caption_redacted again" in why, why
    text, js = _status(lake)
    assert text.count("redacted_v1") >= 1 and "dropped outside" not in text, text
    entries = [s for s in js["stages"] if s["stage"] == "signals-redact"]
    assert len(entries) == 1 and entries[0]["renamed"] == {"caption_redacted": "redacted_v1"}, entries
    assert entries[0]["reasons"] == st.reasons
    _run_fix(st)
    assert {s.node.stage: s.state for s in graph.states(lake)} == {"feature": "current", "signals-redact": "current"}
    t = lake.dataset().to_table(columns=["id", "caption_redacted", "redacted_v1"]).sort_by("id")
    assert t.column(1).equals(values) and t.column(2).equals(values)


def test_a_renamed_signal_column_of_a_set_is_named_renamed_and_renaming_it_back_makes_it_current(tmp_path: Path):
    lake = lake_of(tmp_path / "lake", 8, 8)
    lake.signals(["caption"], progress=False)
    at = _rename(lake, cap_lang_prob="lang_p")
    got = [s for s in graph.states(lake) if s.node.stage == "signals-caption"]
    assert len(got) == 1 and got[0].state == "stale", [(s.node.columns, s.reasons) for s in got]
    assert "lang_p" not in got[0].node.columns
    why = " ".join(got[0].reasons)
    assert f"cap_lang_prob was renamed to lang_p at version {at} outside lakecurate" in why, why
    assert "another writer dropped" not in why
    import re
    import subprocess
    import sys

    back = re.search(r'rename it back \((python -c ".*?")\) or run', why).group(1)  # the first way out, as printed
    subprocess.run([sys.executable, *shlex.split(back)[1:]], check=True)
    assert [s.state for s in graph.states(lake) if s.node.stage == "signals-caption"] == ["current"]


def test_a_renamed_keep_is_named_by_status_export_and_sequence_and_curate_computes_keep_again(tmp_path: Path):
    """curate's keep renamed with Lance: status says so once, export and sequence refuse naming the
    rename (they shipped every row), and curate's fix computes keep again beside keep_v1, untouched."""
    from lakecurate import signals

    lake = Lake.create(tmp_path / "lake")
    lake.append(synthetic_pairs(0, 40))
    signals.compute_caption_signals(lake, progress=False)
    lake.curate(SHORT, progress=False)
    kept = lake.dataset().to_table(columns=["id", "keep"]).sort_by("id").column(1)
    at = _rename(lake, keep="keep_v1")
    got = [s for s in graph.states(lake) if s.node.stage == "curate"]
    assert len(got) == 1, [(s.node.columns, s.state, s.reasons) for s in got]
    st = got[0]
    assert "keep_v1" not in st.node.columns and st.state == "stale"
    why = " ".join(st.reasons)
    assert f"keep was renamed to keep_v1 at version {at} outside lakecurate" in why, why
    assert "or run its fix, which computes keep, drop_reason again (keep_v1 is then another writer's column" in why, why
    _text, js = _status(lake)
    entries = [s for s in js["stages"] if s["stage"] == "curate"]
    assert len(entries) == 1 and entries[0]["renamed"] == {"keep": "keep_v1"}, entries
    for args in (["export", lake.uri, str(tmp_path / "out"), "--format", "parquet"], ["sequence", lake.uri, "--mode", "random"]):
        res = CliRunner().invoke(main, args)
        assert res.exit_code != 0, res.output
        assert "keep was renamed to keep_v1" in " ".join(res.output.split()), res.output
    assert not (tmp_path / "out").exists()
    recipe = tmp_path / "strict.toml"
    recipe.write_text('name = "strict"\n[[step]]\nfilter = "caption_length"\nmin_words = 5\nreason = "short"\n')
    _run_fix(graph.NodeState(st.node, st.state, fix=st.fix.replace("RECIPE.toml", str(recipe))))
    assert [s.state for s in graph.states(lake)] == ["current", "current"]
    t = lake.dataset().to_table(columns=["id", "keep", "keep_v1"]).sort_by("id")
    assert t.column(1).equals(kept) and t.column(2).equals(kept)
    assert lake.status()["view"] == "keep"


@pytest.mark.parametrize("how", ["dropped", "renamed"])
def test_curate_with_a_review_step_refuses_while_the_marks_are_gone(tmp_path: Path, how: str):
    """Another writer dropped (or renamed) the review columns; curate with a review step read every
    row as unreviewed: a person's drop became keep under a new tag, and status called it current.
    It refuses, naming status's fix; once the marks are back it decides by them again."""
    lake = lake_of(tmp_path / "lake", 8)
    ids = lake.dataset().to_table(columns=["id"]).column("id").to_pylist()[:2]
    lake.review(ids[:1], verdict="drop", reason="watermark", by="ana")
    recipe = {"name": "r", "step": [{"filter": "review"}]}
    lake.curate(recipe, progress=False)
    marked = lake.dataset().version
    ds = lance.dataset(lake.table_uri)
    names = [c for c in ds.schema.names if c.startswith("review_")]
    if how == "dropped":
        ds.drop_columns(names)
    else:
        ds.alter_columns(*({"path": c, "name": c + "_old"} for c in names))
    before = lake.dataset().version
    with pytest.raises(LakeError, match=f"has a review step.*nothing decided. Bring them back first: .*review .*"
                                        f"--from-version {marked}"):
        lake.curate(recipe, progress=False)
    assert lake.dataset().version == before  # nothing written
    if how == "dropped":
        review.bring_back(lake, marked)
        lake.curate(recipe, progress=False)
        keep = dict(zip(*lake.dataset().to_table(columns=["id", "keep"]).to_pydict().values()))
        assert keep[ids[0]] is False and keep[ids[1]] is True


# ------------------------------------------------------- one column of a set dropped or renamed by another writer
def test_one_column_of_a_set_another_writer_dropped_or_renamed_is_one_entry_not_a_lakecurate_drop(
        sample_lake_embedded: Lake, tmp_path: Path):
    """The embedding's score dropped (or renamed) with Lance while dedup reads it: status listed embed
    twice, stale (right) and "dropped ... by lakecurate drop" with all four columns, three of them
    still there and no `lakecurate drop` run. One entry; nothing says lakecurate dropped it."""
    base = Lake.open(shutil.copytree(sample_lake_embedded.uri, tmp_path / "base"))
    base.dedup(["phash", "semantic"], semantic_threshold=0.99, progress=False)
    score = next(c for c in base.dataset().schema.names if c.startswith("clip_") and c.endswith("_score"))
    for how in ("drop", "rename"):
        lake = Lake.open(shutil.copytree(base.uri, tmp_path / how))
        if how == "drop":
            lance.dataset(lake.table_uri).drop_columns([score])
        else:
            _rename(lake, **{score: "score_v1"})
        got = [s for s in graph.states(lake) if s.node.stage == "embed"]
        assert len(got) == 1 and got[0].state == "stale", [(s.state, s.reasons) for s in got]
        text, js = _status(lake)
        assert "lakecurate drop" not in text, text
        assert [s["state"] for s in js["stages"] if s["stage"] == "embed"] == ["stale"], js["stages"]
        plan = CliRunner().invoke(main, ["run", lake.uri, "--dry-run"]).output
        assert "lakecurate drop" not in plan, plan
        _run_fix(got[0])
        assert [s.state for s in graph.states(lake) if s.node.stage == "embed"] == ["current"]


def test_a_decision_dropped_by_another_writer_then_forgotten_is_not_said_dropped_by_lakecurate(tmp_path: Path):
    """keep and drop_reason dropped with Lance, then `lakecurate drop LAKE keep` (which only forgets
    the record): status said "dropped at version N by lakecurate drop", N being Lance's drop."""
    from .test_concepts import _concept_lake

    lake = _concept_lake(tmp_path / "syn", [6, 6])
    lake.curate(SHORT, progress=False)
    lake.rebalance(0.5)
    lance.dataset(lake.table_uri).drop_columns(["keep", "drop_reason"])
    at = lake.dataset().version
    res, out = _drop(lake, "keep")
    assert res.exit_code == 0 and out["forgot"] == ["keep", "drop_reason"], res.output
    st = _state(lake, "curate")
    why = " ".join(st.reasons)
    assert st.state == "dropped" and "by lakecurate drop" not in why, why
    assert f"dropped at version {at} outside lakecurate (`lakecurate drop` forgot its record since)" in why, why


def test_one_review_column_another_writer_dropped_or_renamed_is_not_current_and_its_fix_writes_them_back(
        tmp_path: Path):
    """review_by dropped (or renamed) with Lance: status called review current with no fix while every
    mark was refused ("without review_by ... --from-version N"). It is listed not current with the
    refusal's fix, which writes the marks back; a rename is named."""
    base = lake_of(tmp_path / "base", 8)
    ids = base.dataset().to_table(columns=["id"]).column("id").to_pylist()[:3]
    base.review(ids[:2], verdict="drop", reason="watermark", by="ana")
    marked = base.dataset().version
    for how in ("drop", "rename"):
        lake = Lake.open(shutil.copytree(base.uri, tmp_path / how))
        if how == "drop":
            lance.dataset(lake.table_uri).drop_columns(["review_by"])
        else:
            at = _rename(lake, review_by="reviewer")
        st = _state(lake, "review")
        assert st.state != "current", (how, st.reasons)
        assert st.fix == f"lakecurate review {shlex.quote(lake.uri)} --from-version {marked}", st.fix
        with pytest.raises(LakeError, match=fr"lake\.restore_reviews\({marked}\)"):  # (the Python caller's way)
            lake.review(ids[2:], verdict="keep")
        if how == "rename":
            why = " ".join(st.reasons)
            assert f"review_by was renamed to reviewer at version {at} outside lakecurate" in why, why
            assert st.renamed == {"review_by": "reviewer"}
        _run_fix(st)
        assert _state(lake, "review").state == "current"
        assert lake.count("review_by = 'ana'") == 2


def _with_foreign_values(tmp_path: Path) -> tuple[Lake, Path]:
    """A lake of two fragments, caption signals computed and curated, then a column another writer
    added WITH values (an SQL expression: a data file in every fragment, a field Lance makes non-null)."""
    from lakecurate import signals

    lake = Lake.create(tmp_path / "lake")
    lake.append(synthetic_pairs(0, 20))
    lake.append(synthetic_pairs(20, 20))
    signals.compute_caption_signals(lake, progress=False)
    recipe = tmp_path / "short.toml"
    recipe.write_text('name = "short"\n[[step]]\nfilter = "caption_length"\nmin_words = 5\nreason = "short"\n')
    assert CliRunner().invoke(main, ["curate", lake.uri, str(recipe)]).exit_code == 0
    lance.dataset(lake.table_uri).add_columns({"foo": "true", "bar": "concat(id, '!')"})
    assert not lake.dataset().schema.field("foo").nullable  # (why Lance's append refused a file without it)
    return lake, recipe


def _foreign(lake: Lake) -> dict[str, tuple]:
    t = lake.dataset().to_table(columns=["id", "foo", "bar"]).to_pylist()
    return {r["id"]: (r["foo"], r["bar"]) for r in t}


def test_a_review_mark_with_another_writers_column_of_values(tmp_path: Path):
    """review --keep gave a traceback (Lance: "Append with different schema ... missing=[foo]")."""
    lake, _ = _with_foreign_values(tmp_path)
    before = _foreign(lake)
    res = CliRunner().invoke(main, ["review", lake.uri, "p0000003", "--keep", "--json"])
    assert res.exit_code == 0 and "Traceback" not in res.output, res.output
    assert json.loads(res.stdout)["rows"] == 1
    got = {r["id"]: r["review_verdict"] for r in lake.dataset().to_table(columns=["id", "review_verdict"]).to_pylist()}
    assert got["p0000003"] == "keep" and sum(v is not None for v in got.values()) == 1
    assert _foreign(lake) == before and all(v == (True, f"{i}!") for i, v in before.items())


def test_curate_with_a_changed_setting_and_another_writers_column_of_values(tmp_path: Path):
    """curate with a changed setting declared keep anew, then failed to write it: keep ended all NULL."""
    lake, recipe = _with_foreign_values(tmp_path)
    before = _foreign(lake)
    res = CliRunner().invoke(main, ["curate", lake.uri, str(recipe), "--set", "short.min_words=7"])
    assert res.exit_code == 0 and "Traceback" not in res.output, res.output
    t = lake.dataset().to_table(columns=["keep", "drop_reason", "cap_words"]).to_pylist()
    assert all(r["keep"] is not None for r in t)
    assert any(r["keep"] for r in t) and not all(r["keep"] for r in t)
    assert all(r["keep"] == (r["cap_words"] >= 7) for r in t if r["cap_words"] is not None), t
    assert all((r["drop_reason"] == "short") == (not r["keep"]) for r in t), t
    assert columns.field_provenance(lake.dataset().schema.field("keep"))["config"]["recipe"]["steps"][-1]["params"]["min_words"] == 7
    assert _foreign(lake) == before
    assert _state(lake, "curate").state == "current"


def test_signals_recompute_with_another_writers_column_of_values(tmp_path: Path):
    """signals --recompute declared the cap_* columns anew, then failed to write them: they were gone
    (status blamed "lakecurate drop"); --redact gave a traceback."""
    lake, _ = _with_foreign_values(tmp_path)
    before = _foreign(lake)
    words = lake.dataset().to_table(columns=["id", "cap_words"]).to_pydict()
    res = CliRunner().invoke(main, ["signals", lake.uri, "--no-image", "--recompute", "--json"])
    assert res.exit_code == 0 and "Traceback" not in res.output, res.output
    assert json.loads(res.stdout)["caption"] == 40
    assert lake.dataset().to_table(columns=["id", "cap_words"]).to_pydict() == words
    res = CliRunner().invoke(main, ["signals", lake.uri, "--redact", "--recompute"])
    assert res.exit_code == 0 and "Traceback" not in res.output, res.output
    t = lake.dataset().to_table(columns=["caption", "caption_redacted"]).to_pylist()
    assert all(r["caption_redacted"] is not None for r in t if r["caption"] is not None)
    assert _foreign(lake) == before
    assert {s.state for s in graph.states(lake) if s.node.columns[0] in ("cap_words", "caption_redacted")} == {"current"}


def test_pairs_added_beside_another_writers_column_of_values_are_refused_with_the_way_out(tmp_path: Path):
    """New rows have no value for a non-null column another writer added (an SQL expression): the
    append failed with Lance's "Append with different schema ... missing=[foo]". Refused before
    anything is written, naming the column and the one-liner that makes it nullable; that done,
    the pairs are added (null there)."""
    import subprocess
    import sys

    lake, _ = _with_foreign_values(tmp_path)
    version = lake.dataset().version
    with pytest.raises(LakeError, match="column foo, which another writer added, is not nullable") as err:
        lake.append(synthetic_pairs(40, 2))
    assert lake.dataset().version == version
    code = str(err.value).split('python -c "')[1].split('")')[0]
    subprocess.run([sys.executable, "-c", code], check=True)
    lake.append(synthetic_pairs(40, 2))
    assert lake.count() == 42 and lake.count("foo IS NULL") == 2


def test_a_recompute_killed_after_its_declare_leaves_the_stage_incomplete(tmp_path: Path):
    """A per-row stage's ``--recompute`` killed between the declare and its first fill: Lance gave
    the set declared again the ids of the dropped columns, whose old writes the graph kept, so
    status said current over all-null columns (no fix); a plain run then filled every row."""
    lake = lake_of(tmp_path / "lake", 8, 8)
    ds = lake.dataset()
    before = ds.to_table(columns=["n"])["n"].null_count  # (a row without a caption has none)
    prov = {k: v for k, v in columns.field_provenance(ds.schema.field("n")).items() if k != columns.DECLARED_KEY}
    columns.declare(lake, [pa.field("n", pa.int64())], prov, recompute=True)  # ...and killed here
    assert lake.dataset().to_table(columns=["n"])["n"].null_count == 16
    st = feature_state(lake)
    assert (st.state, st.rows_missing) == ("incomplete", 16), st.reasons
    assert graph.stale_fragments(lake.dataset(), ["n"], ["caption"]) == []  # (the fill finds them: no data)
    add_n(lake)
    assert feature_state(lake).state == "current" and wrong_rows(lake) == []
    assert lake.dataset().to_table(columns=["n"])["n"].null_count == before


def test_updating_another_column_is_no_write_of_the_inputs_its_rows_carried(tmp_path: Path):
    """Lance's ``update`` of one column moves whole rows to a new fragment, but records the columns
    it set: a stage that read only the others stays current (an update of ``caption_coca`` made the
    image embedding stale, "caption was rewritten"); an update of its input still makes it stale."""
    lake = lake_of(tmp_path / "lake", 8, 8)
    ds = lance.dataset(lake.table_uri)
    ds.add_columns({"note": "concat('n: ', key)"})
    lance.dataset(lake.table_uri).update({"note": "'zzz'"}, where="id = '" + ds.to_table(columns=["id"])["id"][3].as_py() + "'")
    st = feature_state(lake)
    assert st.state == "current", st.reasons
    assert graph.stale_fragments(lake.dataset(), ["n"], ["caption"]) == []
    update(lake, "note = 'zzz'", "a new caption")
    st = feature_state(lake)
    assert st.state == "stale" and any("caption was rewritten" in r for r in st.reasons), st.reasons
    add_n(lake)
    assert feature_state(lake).state == "current" and wrong_rows(lake) == []


def test_a_whole_fragment_deleted_outside_makes_the_global_stages_stale(tmp_path: Path):
    """LanceDB/Lance deleting every row of a fragment drops the fragment: nothing left in the table
    reads as written, yet the kept members of duplicate groups may be gone (their groups then keep
    none). Dedup and curate read stale, and export refuses, as for rows deleted inside a fragment."""
    from .conftest import SAMPLE_DATA

    copies = tmp_path / "copies"
    copies.mkdir()
    for name in ("astronaut", "brick"):
        shutil.copy(SAMPLE_DATA / f"{name}.jpg", copies / f"{name}_copy.jpg")
        shutil.copy(SAMPLE_DATA / f"{name}.txt", copies / f"{name}_copy.txt")
    lake = Lake.create(tmp_path / "lake")
    lake.ingest(copies, progress=False)
    lake.ingest(SAMPLE_DATA, progress=False)
    assert len(lake.dataset().get_fragments()) == 2
    lake.dedup("exact", progress=False)
    lake.curate({"name": "d", "step": [{"filter": "duplicate"}]}, progress=False)
    kept = set(lake.sql("SELECT key FROM pairs WHERE dup_group IS NOT NULL AND dup_keep")["key"])
    assert {"astronaut_copy.jpg", "brick_copy.jpg"} <= kept, kept  # (the first ingested member is kept)
    assert {s["stage"]: s["state"] for s in lake.status()["stages"]}["dedup"] == "current"
    orphans = orphans_of(lake)
    assert not orphans()
    lance.dataset(lake.table_uri).delete(f"source = '{copies}'")
    assert len(lake.dataset().get_fragments()) == 1
    assert len(orphans()) == 2  # astronaut's and brick's groups: their kept members were deleted
    states = {s["stage"]: s for s in lake.status()["stages"]}
    for stage in ("dedup", "curate"):
        assert states[stage]["state"] == "stale", states[stage]
        assert any("rows were removed since" in r for r in states[stage]["reasons"]), states[stage]
    with pytest.raises(LakeError, match="export would use stale decisions"):
        lake.export(tmp_path / "out", "parquet", progress=False)
    lake.dedup("exact", progress=False)  # the fix: groups decided again over the rows there are
    lake.curate({"name": "d", "step": [{"filter": "duplicate"}]}, progress=False)
    assert {s["stage"]: s["state"] for s in lake.status()["stages"]}["dedup"] == "current"
    assert not orphans(), orphans()
    # rows deleted that no decision changes for (a photo of its own): the fixes status prints, pasted,
    # change no value; they record what they read, and the stages are current (they stayed stale)
    alone = tmp_path / "alone"
    alone.mkdir()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(alone / "noise.png")
    (alone / "noise.txt").write_text("a picture of noise")
    lake.ingest(alone, progress=False)
    lake.dedup("exact", progress=False)
    lake.curate({"name": "d", "step": [{"filter": "duplicate"}]}, progress=False)
    lance.dataset(lake.table_uri).delete(f"source = '{alone}'")
    fixes = {s["stage"]: s["fix"] for s in lake.status()["stages"] if s["state"] != "current"}
    assert set(fixes) == {"dedup", "curate"}, fixes
    res = CliRunner().invoke(main, shlex.split(fixes["dedup"])[1:])
    assert res.exit_code == 0, res.output
    lake.curate({"name": "d", "step": [{"filter": "duplicate"}]}, progress=False)  # (its fix names RECIPE.toml: a dict)
    assert {s["stage"]: s["state"] for s in lake.status()["stages"]} == {"dedup": "current", "curate": "current"}


def orphans_of(lake: Lake):
    """Duplicate groups none of whose members is kept."""
    def orphans() -> list[str]:
        g = lake.sql("SELECT dup_group, count(*) AS n, sum(CASE WHEN dup_keep THEN 1 ELSE 0 END) AS kept FROM pairs "
                     "WHERE dup_group IS NOT NULL GROUP BY dup_group")
        return sorted(g[g["kept"] == 0]["dup_group"])
    return orphans


def test_a_source_column_renamed_outside_is_undone_by_the_fix_status_prints(sample_lake_embedded: Lake, tmp_path: Path):
    """LanceDB renamed caption: the fix status printed for embed was the embed command, which was
    refused ("not a lakecurate table: missing columns caption"); search was a Lance error. No run
    makes a source column again: the fix renames it back, and the refusals say so."""
    import subprocess
    import sys

    lake = Lake.open(shutil.copytree(sample_lake_embedded.uri, tmp_path / "lake"))
    lance.dataset(lake.table_uri).alter_columns({"path": "caption", "name": "text"})
    embed = next(s for s in lake.status()["stages"] if s["stage"] == "embed")
    assert embed["state"] == "stale" and any("caption renamed to text" in r for r in embed["reasons"]), embed
    with pytest.raises(LakeError, match="lacks its source column caption \\(renamed or dropped by another writer: "
                                        "lakecurate status .* names the rename and the command that undoes it"):
        lake.search("a cat", k=1)
    with pytest.raises(LakeError, match="lacks its source column caption"):
        lake.embed("tiny-random", progress=False)
    code = shlex.split(embed["fix"])
    assert code[:2] == ["python", "-c"], embed["fix"]
    subprocess.run([sys.executable, "-c", code[2]], check=True)
    assert {s["state"] for s in lake.status()["stages"]} == {"current"}
    assert len(lake.search("a cat", k=1)) == 1


def test_a_column_added_with_values_outside_is_a_write(sample_lake_embedded: Lake, tmp_path: Path):
    """caption renamed, then a new column named caption added with Lance's add_columns: every stage
    read the old captions, and status called them current (export shipped the new captions with
    them). Columns lakecurate declares (no values yet) are no write."""
    lake = Lake.open(shutil.copytree(sample_lake_embedded.uri, tmp_path / "lake"))
    assert {s["state"] for s in lake.status()["stages"]} == {"current"}
    lance.dataset(lake.table_uri).alter_columns({"path": "caption", "name": "alt_text"})
    lance.dataset(lake.table_uri).add_columns({"caption": "'a new caption'"})
    embed = next(s for s in lake.status()["stages"] if s["stage"] == "embed")
    assert embed["state"] == "stale" and any("caption was written at version" in r or "caption" in r
                                             for r in embed["reasons"]), embed
    lake.embed("tiny-random", workers=0, progress=False)  # its fix: the new captions embedded
    assert next(s for s in lake.status()["stages"] if s["stage"] == "embed")["state"] == "current"
    add_n(lake)  # a declare, then fills: current, and the embedding stays current
    assert {s["state"] for s in lake.status()["stages"]} == {"current"}


def test_cleanup_refuses_while_a_branch_head_is_stale_and_records_a_stale_tag(tmp_path: Path):
    """Cleanup looked only at main's latest version: a tagged version (or a branch's head) whose
    stage was stale lost the commits that show it, and then read "current" and exported without a
    word. Every branch head is checked, and the refusal names it and what to do; a tag, whose
    stages can never be made current there, refused every cleanup until it was deleted: its states
    are recorded instead, and read back after the cleanup."""
    lake = lake_of(tmp_path / "lake", 6, 6)
    update(lake, "id = 'p0000001'", "a brand new caption")
    lake.tag("stale1")
    lake.create_branch("work")
    add_n(lake)  # main's latest is current again
    lake.append(synthetic_pairs(100, 3))
    add_n(lake)
    assert feature_state(lake).state == "current"
    tagged = next(s for s in graph.states(lake, lake.dataset("stale1")) if s.node.stage == "feature")
    assert tagged.state == "stale"
    with pytest.raises(LakeError, match=r"branch 'work'.*lakecurate --branch work feature add") as err:
        lake.cleanup(timedelta(0))
    assert "stale1" not in str(err.value)
    add_n(lake.on_branch("work"))  # the branch's fix, run on it
    done = lake.cleanup(timedelta(0))
    assert done["old_versions"] > 0 and done["tags_recorded"] == 1
    assert feature_state(lake.on_branch("work")).state == "current"
    graph._WRITES.clear()  # as another process reads it
    graph._COMMITS.clear()
    after = next(s for s in graph.states(lake, lake.dataset("stale1")) if s.node.stage == "feature")
    assert (after.state, after.rows_stale, after.fix) == ("stale", tagged.rows_stale, tagged.fix)
    assert after.reasons[0].endswith(tagged.reasons[0])  # (its own commit, the tag's, still shows it)
    lake.delete_tag("stale1")  # kept still: branch work starts there, and the record with it
    lake.cleanup(timedelta(0))
    assert lake.side_dataset(graph.RECORD_TABLE, per_branch=False).count_rows("stage <> ''") == 1  # (and anchors)
    # a cleanup of a branch removes its own versions only: main's staleness does not refuse it
    work = lake.on_branch("work")
    work.append(synthetic_pairs(200, 2))
    add_n(work)
    update(lake, "id = 'p0000002'", "another new caption")
    assert feature_state(lake).state == "stale" and feature_state(work).state == "current"
    assert work.cleanup(timedelta(0))["old_versions"] > 0
    with pytest.raises(LakeError, match=r"feature \(n\) of lake .* is stale"):
        lake.cleanup(timedelta(0))
    lake.delete_branch("work")  # its start goes at the next cleanup, and the record of it with it
    lake.cleanup(timedelta(0), allow_stale=True)
    side = lake.side_dataset(graph.RECORD_TABLE, per_branch=False)
    # (the tag's record gone with its version; the stale latest's recorded by --allow-stale: still said)
    assert set(side.to_table(columns=["version"]).column(0).to_pylist()) == {lake.version} and len(side.versions()) == 1
    graph._WRITES.clear()
    graph._COMMITS.clear()
    assert feature_state(lake).state == "stale"
