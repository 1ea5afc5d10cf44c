"""Shared tables: many writers at once (features + appends, also with a kill -9), branches, diff, restore."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from lakecurate import Lake, LakeError, columns
from lakecurate.cli import main

from .conftest import SAMPLE_DATA, pair_rows
from .writers import add_features, expected, feature_specs, kill_9_when, spawn

FRAGMENTS, ROWS = 8, 25          # the starting lake: 8 fragments of 25 rows
APPENDS, APPEND_ROWS = 5, 20     # the appender: 5 commits of 20 rows while the features run


def fresh_lake(path: Path) -> Lake:
    lake = Lake.create(path)
    for f in range(FRAGMENTS):
        lake.append(pair_rows(f * ROWS, ROWS))
    return lake


def check_complete(lake: Lake, writers: range, total_rows: int) -> None:
    """Every feature column on every row with the right value; the exact rows, each once."""
    ds = lake.dataset()
    names = [n for i in writers for n, _ in feature_specs(i)]
    assert set(names) <= set(ds.schema.names)
    tbl = ds.to_table(columns=["id", "caption", *names])
    ids = tbl.column("id").to_pylist()
    assert len(ids) == total_rows == len(set(ids))
    assert set(ids) == {f"p{i:07d}" for i in range(total_rows)}
    captions = tbl.column("caption").to_pylist()
    for i in writers:
        for name, k in feature_specs(i):
            assert tbl.column(name).to_pylist() == [expected(c, k) for c in captions], name
            assert not columns.fragments_to_fill(ds, name), f"{name}: a fragment has no file"


@pytest.mark.slow
def test_four_feature_writers_and_an_appender_five_rounds(tmp_path: Path):
    """4 processes x 2 columns + 1 appending process + 1 compacting, racing from one start time, on a
    fresh lake each round: all exit cleanly; after one more incremental run every column is on every
    row, correctly."""
    compactions = retried = 0
    for rnd in range(5):
        lake = fresh_lake(tmp_path / f"round{rnd}")
        Path(lake.uri + ".start").write_text(str(time.time() + 4.0))  # every child is imported by then
        procs = [spawn("features", lake.uri, str(i), "0.01") for i in range(4)]
        procs.append(spawn("append", lake.uri, str(FRAGMENTS * ROWS), str(APPENDS), str(APPEND_ROWS)))
        procs.append(spawn("compact", lake.uri, "4"))  # and someone compacting meanwhile
        for p in procs:
            out, err = p.communicate(timeout=240)
            assert p.returncode == 0, f"round {rnd}: writer {p.args[3:]} failed:\n{err[-3000:]}"
            assert "Traceback" not in err, err[-3000:]
            retried += int(out.rsplit("conflicts retried: ", 1)[1])
        total = FRAGMENTS * ROWS + APPENDS * APPEND_ROWS
        assert lake.count() == total
        for i in range(4):  # the next incremental run fills the rows appended after each feature ran
            add_features(lake, i, 0.01)
        check_complete(lake, range(4), total)
        compactions += sum(h["operation"] == "Rewrite" for h in lake.history(None))
    assert compactions > 0  # the compactor did merge fragments while the others wrote
    assert retried > 0      # the writers did collide, and every collision was retried
    print(f"5 rounds: {retried} commits retried after a conflict, {compactions} compactions")


def test_first_writes_of_a_side_table_racing_keep_every_row(tmp_path: Path):
    """Four processes write the first rows of a side table (and record the first evaluation) at
    the same moment: each created the table with its rows, and Lance's create of version 1 is not
    a conflict, so two of them "succeeded" and one's rows were gone (or the loser got an OSError
    traceback). The same of four processes creating one new lake and adding rows to it. Three
    rounds on fresh lakes: every row and every evaluation is there."""
    from lakecurate.evaluate import evaluations

    for rnd in range(3):
        uri = str(tmp_path / f"new{rnd}")
        Path(uri + ".start").write_text(str(time.time() + 4.0))
        for p in [spawn("create", uri, str(i)) for i in range(4)]:
            out, err = p.communicate(timeout=240)
            assert p.returncode == 0 and "Traceback" not in err, f"round {rnd}: creator {p.args[3:]} failed:\n{err[-3000:]}"
        assert Lake.open(uri).count() == 40, rnd
        lake = fresh_lake(tmp_path / f"round{rnd}")
        Path(lake.uri + ".start").write_text(str(time.time() + 4.0))  # every child is imported by then
        procs = [spawn("side", lake.uri, str(i)) for i in range(4)]
        for p in procs:
            out, err = p.communicate(timeout=240)
            assert p.returncode == 0 and "Traceback" not in err, f"round {rnd}: writer {p.args[3:]} failed:\n{err[-3000:]}"
        assert sorted(lake.side_dataset("race_side").to_table().column("x").to_pylist()) == [0, 1, 2, 3], rnd
        assert sorted(evaluations(lake)["eval_id"].unique()) == ["e0", "e1", "e2", "e3"], rnd


@pytest.mark.slow
def test_kill_9_of_a_feature_writer_midway(tmp_path: Path):
    """SIGKILL lands while a writer is between fragment commits (and another process appends): the
    finished fragments stay, the rerun does the rest, nothing is duplicated or lost."""
    lake = fresh_lake(tmp_path / "lake")
    Path(lake.uri + ".start").write_text(str(time.time() + 3.0))
    victim = spawn("features", lake.uri, "0", "0.1")  # 0.1 s per 20-row batch: 0.2 s per fragment
    other = spawn("features", lake.uri, "1", "0.01")
    appender = spawn("append", lake.uri, str(FRAGMENTS * ROWS), str(APPENDS), str(APPEND_ROWS))

    def some_committed() -> bool:  # the victim has committed some fragments of f0a, not all
        ds = lake.dataset()
        return "f0a" in ds.schema.names and len(columns.fragments_to_fill(ds, "f0a")) < FRAGMENTS - 2

    kill_9_when(victim, some_committed, timeout=120)
    assert victim.returncode == -signal.SIGKILL
    for p in (other, appender):
        _, err = p.communicate(timeout=240)
        assert p.returncode == 0, err[-3000:]
    ds = lake.dataset()
    assert 0 < len([f for f in ds.get_fragments() if columns.has_data(ds, f, "f0a")]) < len(ds.get_fragments())
    total = FRAGMENTS * ROWS + APPENDS * APPEND_ROWS
    assert lake.count() == total
    add_features(lake, 0, 0.1)  # the same config as the killed run (delay is one of its parameters)
    add_features(lake, 1, 0.01)
    check_complete(lake, range(2), total)


def test_concurrent_declares_are_retried(tmp_path: Path):
    """Two declares at the same read version conflict in Lance; ours rebases and both columns land."""
    import pyarrow as pa

    lake = fresh_lake(tmp_path / "lake")
    stale = lake.dataset()
    prov = columns.provenance("test", {"x": 1}, ["caption"], stale.version)
    columns.declare(lake, [pa.field("a", pa.int32())], prov)  # lands first
    # A commit made at the stale version, as a racing process would: Lance refuses it...
    with pytest.raises(OSError, match="(?i)conflict|preempted"):
        lance_commit_merge_at(lake, stale.version, pa.field("b", pa.int32()))
    # ...and declare() (which reads the latest version on every try) adds it.
    assert columns.declare(lake, [pa.field("b", pa.int32())], prov)
    assert {"a", "b"} <= set(lake.dataset().schema.names)
    # each declare's record of its set (status lists a set dropped whole by it) survives the other's
    assert set(columns.node_records(lake.dataset())) == {columns.NODE_KEY + "a", columns.NODE_KEY + "b"}


def _cap_len(batch, k: int = 1):
    import pyarrow as pa

    return pa.array([None if c is None else len(c) * k for c in batch["caption"].to_pylist()], pa.int64())


def test_a_run_whose_column_was_declared_again_meanwhile_commits_nothing(tmp_path: Path, monkeypatch):
    """Run A computes a feature; run B (other settings, recompute) drops and declares the column again
    before A commits. A's values went into B's column under B's provenance, and status said current."""
    from lakecurate.columns import field_provenance

    lake = fresh_lake(tmp_path / "lake")
    original = columns.FragmentFiles.commit
    raced = []

    def commit_after_a_recompute(self):  # B's recompute lands between A's compute and A's commit
        if not raced:
            raced.append(1)
            lake.add_feature("f", _cap_len, inputs=["caption"], params={"k": 2}, recompute=True, progress=False)
        return original(self)

    monkeypatch.setattr(columns.FragmentFiles, "commit", commit_after_a_recompute)
    lake.add_feature("f", _cap_len, inputs=["caption"], params={"k": 2}, progress=False)  # declares f, k = 2
    raced.clear()
    with pytest.raises(LakeError, match="declared again with another config .* were not committed"):
        lake.add_feature("f", _cap_len, inputs=["caption"], params={"k": 3}, recompute=True, progress=False)
    monkeypatch.setattr(columns.FragmentFiles, "commit", original)
    got = lake.to_pandas(["caption", "f"])
    assert got["f"].notna().sum() > 0 and got["f"].equals(got["caption"].str.len() * 2)  # B's values alone
    assert field_provenance(lake.dataset().schema.field("f"))["config"]["params"] == {"k": 2}
    # B only declared (still computing) when A fails: A's clean-up must not drop B's empty column
    import pyarrow as pa

    other = columns.provenance("feature", {"other": True}, ["caption"], lake.version)

    def commit_after_a_declare(self):
        if not raced:
            raced.append(1)
            columns.declare(lake, [pa.field("g", pa.int64())], other, recompute=True)
        return original(self)

    raced.clear()
    monkeypatch.setattr(columns.FragmentFiles, "commit", commit_after_a_declare)
    with pytest.raises(LakeError, match="declared again with another config"):
        lake.add_feature("g", _cap_len, inputs=["caption"], params={"k": 3}, progress=False)
    assert field_provenance(lake.dataset().schema.field("g"))["config_hash"] == other["config_hash"]


def lance_commit_merge_at(lake: Lake, version: int, field) -> None:
    import lance

    old = lance.dataset(lake.table_uri, version=version)
    old.add_columns([field])


def test_retry_on_conflict_covers_a_losing_compaction():
    """Compaction that loses a race raises a plain OSError saying "Retryable commit conflict"."""
    from lakecurate.lake import is_conflict, retry_on_conflict

    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise OSError("Retryable commit conflict for version 7: This Rewrite transaction was preempted")
        return "done"

    assert retry_on_conflict(flaky, base_delay=0.001) == "done" and len(calls) == 3
    assert not is_conflict(OSError("No such file"))
    with pytest.raises(OSError, match="No such file"):
        retry_on_conflict(lambda: (_ for _ in ()).throw(OSError("No such file")))


# --------------------------------------------------------------------------- branches, diff, restore
STRICT = """
name = "strict"
[[step]]
filter = "caption_length"
min_words = 8  # (6 dropped only the two ingest errors, which ingest_error drops first now)
"""


@pytest.fixture
def curated(tmp_path: Path) -> Lake:
    lake = Lake.create(tmp_path / "lake")
    lake.ingest(SAMPLE_DATA, progress=False)
    lake.curate({"name": "loose", "step": [{"filter": "caption_length", "min_words": 2}]}, progress=False)
    lake.tag("loose")
    return lake


def test_branch_is_isolated_and_diff_explains_every_row(curated: Lake, tmp_path: Path):
    main_before = curated.sql("SELECT id, keep, drop_reason FROM pairs ORDER BY id")
    v_main = curated.version
    exp = curated.create_branch("strict")
    assert exp.version == v_main and exp.count() == curated.count()
    (tmp_path / "strict.toml").write_text(STRICT)
    exp.curate(str(tmp_path / "strict.toml"), progress=False)
    exp.add_feature("cap_len", lambda b: [len(c or "") for c in b["caption"].to_pylist()], inputs=["caption"],
                    type="int32", progress=False)
    exp.append(pair_rows(0, 3))
    # main: same version, same columns, same decisions
    assert curated.version == v_main and "cap_len" not in curated.dataset().schema.names
    assert curated.sql("SELECT id, keep, drop_reason FROM pairs ORDER BY id").equals(main_before)
    assert exp.count() == curated.count() + 3

    d = curated.diff("loose", "strict")
    kept_a = set(curated.sql("SELECT id FROM pairs WHERE keep")["id"])
    kept_b = set(exp.sql("SELECT id FROM pairs WHERE keep")["id"])
    assert (d.rows_a, d.rows_b) == (len(kept_a), len(kept_b))
    assert d.removed == len(kept_a - kept_b) > 0 and d.added == len(kept_b - kept_a)
    b_reasons = exp.sql("SELECT id, drop_reason FROM pairs").set_index("id")["drop_reason"]
    want = {}
    for i in kept_a - kept_b:
        r = "recipe: " + b_reasons[i]
        want[r] = want.get(r, 0) + 1
    assert d.removed_by == dict(sorted(want.items(), key=lambda kv: (-kv[1], kv[0])))
    # the 3 appended rows are kept by nothing on B (no keep value yet) and absent on A: not "added"
    assert sum(d.added_by.values()) == d.added


def test_tags_on_a_branch_and_refs(curated: Lake):
    exp = curated.create_branch("exp")
    exp.append(pair_rows(0, 2))
    exp.tag("exp-snapshot")
    assert curated.dataset("exp-snapshot").count_rows() == curated.count() + 2
    assert curated.dataset("exp").count_rows() == curated.count() + 2
    assert curated.dataset(f"main:{curated.version}").count_rows() == curated.count()
    with pytest.raises(LakeError, match="not a version, tag or branch.*branches: main, exp"):
        curated.dataset("nope")
    with pytest.raises(LakeError, match="has no branch 'typo'.*branches: main, exp"):
        Lake.open(curated.uri, branch="typo")
    with pytest.raises(LakeError, match="already has a branch"):
        curated.create_branch("exp")
    with pytest.raises(LakeError, match="referenced by tags exp-snapshot"):
        curated.delete_branch("exp")
    curated.delete_tag("exp-snapshot")
    curated.delete_branch("exp")
    assert curated.branches() == {} and curated.count() == 28


def test_restore_any_version_and_undo(curated: Lake):
    first = curated.history(None)[-1]["version"]
    n_versions = len(curated.history(None))
    rows_now = curated.count()
    latest = curated.version
    v = curated.restore(first)                  # the empty table of Lake.create
    assert v == latest + 1 and curated.count() == 0
    assert len(curated.history(None)) == n_versions + 1  # a new commit: nothing is lost
    curated.restore(latest)
    assert curated.count() == rows_now and "keep" in curated.dataset().schema.names
    assert curated.history(3)[0]["operation"] == "Restore"
    # restoring the state the latest already is makes no commit (twice made two of one state)
    again = curated.version
    assert curated.restore(latest) == again and curated.restore(again) == again and curated.version == again
    res = CliRunner().invoke(main, ["restore", curated.uri, str(latest), "--json"])
    assert json.loads(res.stdout) == {"restored": str(latest), "version": again, "previous": again, "branch": "main",
                                      "changed": False, "notes": []}


def test_cli_team_workflow(curated: Lake, tmp_path: Path):
    r = CliRunner()
    udf = tmp_path / "feats.py"
    udf.write_text("def words(batch):\n    return [len((c or '').split()) for c in batch['caption'].to_pylist()]\n")
    out = r.invoke(main, ["branch", "create", curated.uri, "mine", "--from", "loose"])
    assert out.exit_code == 0, out.output
    out = r.invoke(main, ["--branch", "mine", "feature", "add", curated.uri, "words", "--udf", f"{udf}:words",
                          "--input", "caption", "--type", "int32"])
    assert out.exit_code == 0 and "28 rows in 1 fragments" in out.output, out.output
    assert "words" not in curated.dataset().schema.names
    assert "words" in Lake.open(curated.uri, branch="mine").dataset().schema.names
    out = r.invoke(main, ["branch", "list", curated.uri])
    assert "mine" in out.output and f"main:{curated.dataset('loose').version}" in out.output
    out = r.invoke(main, ["--branch", "mine", "log", curated.uri, "-n", "3"])
    assert out.exit_code == 0 and "DataReplacement" in out.output and "Merge" in out.output
    out = r.invoke(main, ["diff", curated.uri, "loose", "mine"])
    assert out.exit_code == 0 and "only in A (removed) 0" in out.output, out.output
    out = r.invoke(main, ["--branch", "nope", "info", curated.uri])
    assert out.exit_code == 1 and "has no branch 'nope'" in out.output and "Traceback" not in out.output
    out = r.invoke(main, ["restore", curated.uri, "1"])
    assert out.exit_code == 0 and "undo: lakecurate restore" in out.output and curated.count() == 0


def test_compact_merges_only_complete_fragments(tmp_path: Path):
    lake = fresh_lake(tmp_path / "lake")
    add_features(lake, 0, 0.0)
    lake.append(pair_rows(FRAGMENTS * ROWS, 10))
    lake.append(pair_rows(FRAGMENTS * ROWS + 10, 10))
    images = lake.read_images(["p0000003", "p0000170"])
    r = lake.compact()
    assert (r["fragments_before"], r["fragments_after"], r["left_incomplete"]) == (FRAGMENTS + 2, 3, 2)
    ds = lake.dataset()
    assert len(columns.fragments_to_fill(ds, "f0a")) == 2   # the appended rows still read as "to do"
    add_features(lake, 0, 0.0)
    check_complete(lake, range(1), FRAGMENTS * ROWS + 20)
    assert lake.read_images(["p0000003", "p0000170"]) == images and all(images)
    out = CliRunner().invoke(main, ["compact", lake.uri])
    assert out.exit_code == 0 and "fragments 3 -> 1" in out.output, out.output
    check_complete(lake, range(1), FRAGMENTS * ROWS + 20)


def test_a_compaction_outside_lakecurate_over_missing_values_is_named_stale(tmp_path: Path):
    """LanceDB's optimize merged fragments whose feature values were still missing with filled ones:
    the merged fragment counted as filled (status current, 0 rows missing), the missing rows held
    nulls for good. Status calls it stale now, and its fix, the plain run, gives those rows values
    (the merged fragment computed again; --recompute is not needed)."""
    import lancedb

    lake = fresh_lake(tmp_path / "lake")
    add_features(lake, 0, 0.0)
    lake.append(pair_rows(FRAGMENTS * ROWS, 10))
    nulls = lake.count("f0a IS NULL")  # (10 rows not computed yet, and rows without a caption)
    lancedb.connect(lake.uri).open_table("pairs").optimize()
    assert len(lake.dataset().get_fragments()) == 1 and lake.count("f0a IS NULL") == nulls
    st = next(s for s in lake.status()["stages"] if "f0a" in s["columns"])
    assert st["state"] == "stale" and "merged by a compaction outside lakecurate" in st["reasons"][0], st
    assert "--recompute" not in st["fix"], st["fix"]
    add_features(lake, 0, 0.0)
    st = next(s for s in lake.status()["stages"] if "f0a" in s["columns"])
    assert st["state"] == "current" and lake.count("f0a IS NULL") < nulls


def test_why_excluded_follows_the_order_a_row_meets_the_stages():
    import pandas as pd

    from lakecurate.compare import why_excluded

    df = pd.DataFrame({
        "ingest_status": ["ok", "ok", "ok", "error", "ok", "error"],
        "dup_keep": [True, False, True, True, True, None],
        "dup_reason": [None, "phash", None, None, None, None],
        "rebalance_keep": [False, False, True, True, True, False],
        "drop_reason": [None, None, None, None, None, "ingest_error"],
    })
    assert why_excluded(df).tolist() == ["rebalance", "duplicate: phash", "outside the view's condition",
                                         "ingest error", "outside the view's condition", "recipe: ingest_error"]
    assert why_excluded(df.drop(columns=["dup_reason"])).tolist()[1] == "duplicate: duplicate"
    # a recipe that kept a row (it has no duplicate step): rebalancing left it out, not dedup
    df["keep"] = [True, True, True, False, True, False]
    assert why_excluded(df).tolist()[:3] == ["rebalance", "rebalance", "outside the view's condition"]


# --------------------------------------------------------------------------- conflicts, seen from the CLI
def _two_fragments(tmp_path: Path) -> Lake:
    from .test_ingest import small_folder

    lake = Lake.create(tmp_path / "lake")
    lake.ingest(small_folder(tmp_path / "a", 3), progress=False)
    lake.ingest(small_folder(tmp_path / "b", 3, seed=9), progress=False)
    assert len(lake.dataset().get_fragments()) > 1
    return lake


def _conflicting_commits(monkeypatch, fails: int | None, meanwhile=None) -> None:
    """Compaction.commit loses its race ``fails`` times (None: every time), after ``meanwhile``."""
    from lance.optimize import Compaction

    commit, calls = Compaction.commit, []

    def losing(ds, results, *args, **kwargs):
        calls.append(1)
        if fails is None or len(calls) <= fails:
            if meanwhile is not None and len(calls) == 1:
                monkeypatch.setattr(Compaction, "commit", commit)  # (the other writer commits for real)
                meanwhile()
                monkeypatch.setattr(Compaction, "commit", staticmethod(losing))
            raise OSError("Retryable commit conflict for version 7: This Rewrite transaction was preempted")
        return commit(ds, results, *args, **kwargs)

    monkeypatch.setattr(Compaction, "commit", staticmethod(losing))


def test_commits_retried_after_a_conflict_are_counted_in_json_and_on_stderr(tmp_path: Path, monkeypatch):
    """A commit retried after a conflict was only store.CONFLICTS_RETRIED and a debug log line."""
    lake = _two_fragments(tmp_path)
    _conflicting_commits(monkeypatch, fails=2)
    res = CliRunner().invoke(main, ["compact", lake.uri, "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["conflicts_retried"] == 2
    assert "2 commits conflicted with another writer's and were made again" in res.stderr
    res = CliRunner().invoke(main, ["compact", lake.uri, "--json"])  # (nothing to retry: no key, no line)
    assert "conflicts_retried" not in json.loads(res.stdout) and "conflicted" not in res.stderr


def test_a_commit_that_conflicts_every_try_is_one_line(tmp_path: Path, monkeypatch):
    """12 conflicted tries were re-raised as the last OSError: a traceback."""
    lake = _two_fragments(tmp_path)
    _conflicting_commits(monkeypatch, fails=None)
    monkeypatch.setattr("lakecurate.store.time.sleep", lambda s: None)
    res = CliRunner().invoke(main, ["compact", lake.uri, "--json"])
    assert res.exit_code == 1 and not isinstance(res.exception, OSError), res.output
    error = json.loads(res.stdout)["error"]
    assert error.startswith(f"12 commits conflicted; another writer kept committing to '{lake.uri}'") and error.endswith("run again")
    assert "Traceback" not in res.output and len(res.stderr.strip().splitlines()) == 2  # (the note, the error)


def test_racing_compacts_report_what_each_did_and_the_log_names_their_versions(tmp_path: Path, monkeypatch):
    """Two compacts at once both said "fragments 4 -> 1" though the second, retried after the first
    committed, did nothing; the log showed each compact's first version as "BaseOperation"."""
    lake = _two_fragments(tmp_path)
    n = len(lake.dataset().get_fragments())
    _conflicting_commits(monkeypatch, fails=1, meanwhile=lambda: Lake.open(lake.uri).compact())
    out = lake.compact()
    assert (out["fragments_before"], out["fragments_after"]) == (1, 1), (n, out)
    log = lake.history(None)
    assert "BaseOperation" not in {h["operation"] for h in log}
    reserved = [h for h in log if h["operation"] == "ReserveFragments"]
    assert reserved and all(h["change"] == "fragment ids reserved (a compaction's first commit)" for h in reserved)
    res = CliRunner().invoke(main, ["log", lake.uri])
    assert "BaseOperation" not in res.output and "fragment ids reserved" in res.output, res.output
