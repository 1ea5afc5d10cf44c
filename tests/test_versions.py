"""Versions of a lake: cleanup keeps what is tagged, version refs that are not versions, tag names,
and a log that shows what it can read."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import lance
import pyarrow as pa
import pytest
from click.testing import CliRunner

from lakecurate import Lake, LakeError
from lakecurate.cli import main
from lakecurate.options import speaking
from lakecurate.plant import synthetic_pairs


@pytest.fixture
def versioned(tmp_path: Path) -> Lake:
    """Versions 1 (empty), 2 (10 rows, tagged 'raw'), 3 (overwrite: 4 rows), 4 (append: 7 rows)."""
    lake = Lake.create(tmp_path / "lake")
    lake.append(synthetic_pairs(0, 10))
    lake.tag("raw")
    lake.append(synthetic_pairs(100, 4), overwrite=True)
    lake.append(synthetic_pairs(200, 3))
    return lake


def test_cleanup_keeps_tagged_versions_and_the_latest(versioned: Lake):
    lake = versioned
    lake.create_branch("exp", 3)  # a branch starting at an untagged old version
    res = CliRunner().invoke(main, ["cleanup", lake.uri, "--older-than-days", "0"])  # the help's own example
    assert res.exit_code == 0, res.output
    assert "removed 1 old versions" in res.output  # only version 1: 2 is tagged, 3 starts a branch
    assert [v["version"] for v in lake.dataset().versions()] == [2, 3, 4]
    assert lake.dataset("raw").count_rows() == 10  # the tagged version still opens, with its rows
    assert lake.dataset().count_rows() == 7
    assert Lake.open(lake.uri, branch="exp").dataset().count_rows() == 4
    lake.delete_tag("raw")  # untagged now: the next cleanup may take it
    assert lake.cleanup(timedelta(0))["old_versions"] == 1
    assert [v["version"] for v in lake.dataset().versions()] == [3, 4]


def test_a_branch_s_start_after_the_branch_s_cleanup_is_named_as_its_parent_s_version(versioned: Lake):
    """`exp:3`, the version a branch started from, opened until the branch's own cleanup took its
    copy of that manifest; then "version 3 is not a version of lake ... (branch exp has versions 4-5)",
    as if the state were gone, though it is the parent's version 3, still there. It names that
    version (a branch of a branch: its parent's), and restore says how to have that state."""
    lake = versioned
    exp = lake.create_branch("exp", 3)  # exp: 3 (main's), 4, 5
    exp.append(synthetic_pairs(300, 2))
    exp.append(synthetic_pairs(310, 2))
    sub = exp.create_branch("sub", 4)  # sub: 4 (exp's), 5
    sub.append(synthetic_pairs(400, 1))
    assert {ref: lake.dataset(ref).count_rows() for ref in ("exp:3", "sub:4")} == {"exp:3": 4, "sub:4": 6}
    sub.cleanup(timedelta(0))
    exp.cleanup(timedelta(0))
    assert [v["version"] for v in exp.dataset().versions()] == [4, 5] and [v["version"] for v in sub.dataset().versions()] == [5]
    for ref, parent in (("exp:3", "main:3"), ("sub:4", "exp:4")):
        with pytest.raises(LakeError, match=rf"not on branch .* the branch began at version \d of \w+, whose version it is; open it as {parent}$"):
            lake.dataset(ref)
        assert lake.dataset(parent).count_rows() == {"main:3": 4, "exp:4": 6}[parent]
    with pytest.raises(LakeError, match=r"version 6 is not a version of lake .*branch sub has versions 5\)"):
        lake.dataset("sub:6")  # (past the end: as before)
    with pytest.raises(LakeError, match=r"is not on branch exp .* began at version 3 of its parent.*create_branch\(NAME, 'main:3'\)"):
        exp.restore(3)
    assert lake.version == 4 and exp.version == 5  # nothing restored, main least of all


def test_a_number_that_is_not_a_version_is_a_lake_error(versioned: Lake):
    lake = versioned
    for ref in (9999, "9999", 0, -1, "main:77", 2**64, "99999999999999999999", "main:99999999999999999999"):
        with pytest.raises(LakeError, match=r"is not a version of lake .* has versions 1-4"):
            lake.dataset(ref)
    with pytest.raises(LakeError, match="has versions 1-4"):
        lake.restore(9999)
    with pytest.raises(LakeError, match="has versions 1-4"):
        lake.tag("later", 9999)
    with pytest.raises(LakeError, match="has versions 1-4"):
        lake.create_branch("b", 9999)
    assert lake.version == 4 and sorted(lake.dataset().tags.list()) == ["raw"] and not lake.branches()
    lake.cleanup(timedelta(0))  # gaps are listed as they are
    with pytest.raises(LakeError, match=r"has versions 2, 4\)"):
        lake.dataset(3)


def test_tag_names_are_checked_before_lance_sees_them(versioned: Lake):
    lake = versioned
    for bad in ("bad name", "a/b", "", "123", "x" * 300):
        with pytest.raises(LakeError, match="not valid"):
            lake.tag(bad)
    # names Lance refuses as refs (git's rules): a traceback "OSError: Ref is invalid" after the check passed
    for bad in ("v..2", "x.lock", "x.", "a..b.c"):
        with pytest.raises(LakeError, match=r"not valid; use .*no '\.\.', not ending in '\.' or '\.lock'"):
            lake.tag(bad)
        with pytest.raises(LakeError, match="not valid"):
            lake.create_branch(bad)
    assert sorted(lake.dataset().tags.list()) == ["raw"] and not lake.branches()
    lake.tag("x.lock.1", 3)  # (only the endings are Lance's: a dot inside is a name)
    lake.delete_tag("x.lock.1")
    with pytest.raises(LakeError, match=r"already has a tag 'raw' \(version 2\); .* delete it first: lake.delete_tag\('raw'\)$"):
        lake.tag("raw")
    with speaking("cli"), pytest.raises(LakeError, match=r"delete it first: lakecurate tag \S+ raw --delete$"):
        lake.tag("raw")
    assert lake.dataset().tags.list()["raw"]["version"] == 2  # the existing tag is untouched
    lake.tag("v3.ok_name-1", 3)
    assert lake.dataset("v3.ok_name-1").count_rows() == 4
    # a tag named like a branch hid it wherever a version is named (main's latest read as version 2)
    lake.create_branch("exp", 3)
    for shadow in ("main", "exp"):
        with pytest.raises(LakeError, match=f"'{shadow}' is a branch of lake .*pick another name"):
            lake.tag(shadow, 2)
    with pytest.raises(LakeError, match="'raw' is a tag of lake .*pick another name"):
        lake.create_branch("raw")
    assert lake.dataset("main").count_rows() == 7 and lake.dataset("exp").count_rows() == 4
    assert sorted(lake.dataset().tags.list()) == ["raw", "v3.ok_name-1"] and list(lake.branches()) == ["exp"]


def test_log_survives_gaps_and_an_unreadable_transaction(versioned: Lake, monkeypatch):
    lake = versioned
    lake.create_branch("exp", 3)
    lake.cleanup(timedelta(0))  # version 1 gone: Lance's batch read of transactions stops at the gap
    assert [(h["version"], h["operation"]) for h in lake.history()] == [(4, "Append"), (3, "Overwrite"), (2, "Append")]
    # a transaction pylance cannot parse (seen after another tool's index commit) costs that version
    # its operation name, not every version's
    real = lance.LanceDataset.get_transactions

    def fussy(self, recent_transactions: int = 10):
        if self.version - recent_transactions < 3 <= self.version:
            raise ValueError("unsupported transaction in version 3")
        return real(self, recent_transactions)

    monkeypatch.setattr(lance.LanceDataset, "get_transactions", fussy)
    assert [(h["version"], h["operation"]) for h in lake.history()] == [(4, "Append"), (3, ""), (2, "Append")]
    with pytest.raises(LakeError, match="invalid limit -1: expected an integer >= 0"):
        lake.history(-1)


def test_log_after_a_lancedb_full_text_index(versioned: Lake):
    """The issue's report: operation names vanished after a LanceDB FTS index. (Not reproduced
    with the pinned pylance/lancedb; kept as a guard.)"""
    lancedb = pytest.importorskip("lancedb")
    from lancedb.index import FTS

    lancedb.connect(versioned.uri).open_table("pairs").create_index("caption", config=FTS())
    ops = [h["operation"] for h in versioned.history()]
    assert ops[0] == "CreateIndex" and all(ops), ops


def test_a_branch_made_again_starts_without_the_old_one_s_checkpoints_and_evidence(versioned: Lake):
    """A branch deleted and made again numbers its fragments as the old one did: a killed embed's
    checkpoints of the old branch were resumed into the new rows (16 rows got another image's
    vectors, silently), and dedup's evidence of the old branch came back."""
    from lakecurate.store import checkpoint_root

    lake = versioned
    exp = lake.create_branch("exp")
    old = checkpoint_root(lake.uri, "exp") / "embed-x" / "f1-r7-d0"
    old.mkdir(parents=True)
    (old / "0.arrow").write_bytes(b"a batch of the old branch")
    evidence = Path(lake.uri) / "dup_pairs-exp.lance"
    evidence.mkdir()
    assert exp.dataset().count_rows() == 7
    lake.delete_branch("exp")
    assert not checkpoint_root(lake.uri, "exp").exists() and not evidence.exists()
    old.mkdir(parents=True)  # left by a branch deleted with plain Lance: made again, it starts clean too
    lake.create_branch("exp")
    assert not checkpoint_root(lake.uri, "exp").exists()
    assert checkpoint_root(lake.uri, None).parent == Path(lake.uri) / "_lakecurate"  # main's are not touched


def test_branch_refusals_are_one_line(versioned: Lake):
    lake = versioned
    lake.create_branch("exp")
    Lake.open(lake.uri, branch="exp").create_branch("sub")
    with pytest.raises(LakeError, match="branch 'exp' .* has branches made from it: sub"):  # a Ref conflict traceback
        lake.delete_branch("exp")
    with pytest.raises(LakeError, match="version 999 is not a version of lake"):  # a manifest-not-found traceback
        lake.create_branch("x", "main:999")
    with pytest.raises(LakeError, match="not only digits"):  # "12" named main's version 12 wherever used
        lake.create_branch("12")
    assert sorted(lake.branches()) == ["exp", "sub"]


def test_info_lists_this_branch_s_tags_and_version_hints_name_the_branch(versioned: Lake):
    """info on main listed exp's tag as main's version; a version error on a branch said
    `lakecurate log LAKE`, which shows main's versions."""
    lake = versioned
    exp = lake.create_branch("exp")
    exp.append(synthetic_pairs(500, 2))
    exp.tag("exp-t1")
    assert "exp-t1" not in lake.info()["tags"] and "raw" in lake.info()["tags"]
    assert exp.info()["tags"] == {"exp-t1": exp.version}
    with pytest.raises(LakeError, match="see: lakecurate --branch exp log "):
        exp.dataset(9999)
    with pytest.raises(LakeError, match="see: lakecurate log "):
        lake.dataset(9999)


def test_a_branch_s_tags_and_evaluations_stay_out_of_main_s_report(versioned: Lake, tmp_path: Path):
    """main's report listed a branch's tag (its version number means other rows there) and the
    branch's evaluations (LAKE/evaluations.lance had no branch); info was fixed, the report not."""
    from lakecurate import evaluate

    lake = versioned
    exp = lake.create_branch("exp")
    exp.tag("only-on-exp")
    lake.tag("on-main")
    row = {f.name: None for f in evaluate.EVAL_SCHEMA}
    exp.write_side(evaluate.EVAL_TABLE, pa.Table.from_pylist([{**row, "eval_id": "exp-run"}], schema=evaluate.EVAL_SCHEMA))
    assert evaluate.evaluations(lake).empty and evaluate.evaluations(exp)["eval_id"].tolist() == ["exp-run"]
    lake.report(tmp_path / "main.html")
    html = (tmp_path / "main.html").read_text()
    assert "on-main" in html and "only-on-exp" not in html
    lake.delete_tag("only-on-exp")
    lake.delete_branch("exp")
    assert not (Path(lake.uri) / "evaluations-exp.lance").exists()


def test_a_branchs_version_read_from_main_names_its_branch(sample_lake_embedded, tmp_path: Path):
    """`status --version strict` showed the branch's stages as "(branch main)" with fix commands
    for main, and diff's note on a stale side named main's command: pasted, they ran on main."""
    import shutil

    from lakecurate import Lake

    lake = Lake.open(shutil.copytree(sample_lake_embedded.uri, tmp_path / "lake"))
    lake.curate({"name": "a", "step": [{"filter": "ingest_error"}]}, progress=False)
    lake.cluster(3)
    lake.rebalance(0.6)
    exp = lake.create_branch("strict")
    exp.curate({"name": "b", "step": [{"filter": "ingest_error"}, {"filter": "caption_missing"}]}, progress=False)
    st = lake.status("strict")
    assert st["branch"] == "strict"
    fixes = [s["fix"] for s in st["stages"] if s["state"] != "current"]
    assert fixes and all(f.startswith("lakecurate --branch strict ") for f in fixes), fixes
    res = CliRunner().invoke(main, ["diff", lake.uri, "1", "strict"])
    assert res.exit_code == 0, res.output
    notes = [line for line in res.output.splitlines() if "re-run:" in line]
    assert notes and all("lakecurate --branch strict rebalance" in n for n in notes), notes


def test_tag_takes_what_version_takes_elsewhere(tmp_path: Path):
    """`tag --version` took a number only ('raw' and 'strict:74' were click errors), where every
    other --version takes a tag, a branch or branch:number."""
    lake = Lake.create(tmp_path / "lake")
    lake.append(synthetic_pairs(0, 5))
    first = lake.version
    lake.tag("raw")
    lake.append(synthetic_pairs(5, 5))
    exp = lake.create_branch("exp")
    exp.append(synthetic_pairs(10, 5))
    runner = CliRunner()
    res = runner.invoke(main, ["tag", lake.uri, "again", "--version", "raw", "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["version"] == first, res.output
    res = runner.invoke(main, ["tag", lake.uri, "on-exp", "--version", f"exp:{exp.version}"])
    assert res.exit_code == 0, res.output
    assert lake.dataset("on-exp").count_rows() == 15 and lake.dataset("again").count_rows() == 5
    res = runner.invoke(main, ["tag", lake.uri, "x", "--version", "nope"])
    assert res.exit_code == 1 and "is not a version, tag or branch" in res.output


def test_log_says_what_each_version_changed(versioned: Lake):
    """`log` showed Lance's operation names only (Merge, DataReplacement, Project): which stage
    wrote what could not be told. Each version now says what it changed against the one before:
    rows, columns added / rewritten / removed, led by the stage in those columns' provenance."""
    lake = versioned
    lake.embed("tiny-random", workers=0, batch_size=8, progress=False)
    lake.signals(["caption"], progress=False)
    lake.dataset().drop_columns(["cap_words"])  # as a stage that failed takes back its columns
    lake.restore(2)
    history = lake.history(None)[::-1]
    changes = [h["change"] for h in history]
    assert changes[:4] == ["lake created", "+10 rows", "overwritten: 4 rows", "+3 rows"]
    embed = [c for c in changes if c.startswith("embed: ")]
    assert embed[0] == "embed: +4 columns clip_tinyrandom_image, clip_tinyrandom_text, clip_tinyrandom_score and 1 more"
    assert any(c.startswith("embed: wrote 4 columns clip_tinyrandom_image") for c in embed)
    assert any(c.startswith("signals-caption: +11 columns cap_words") for c in changes)
    assert changes[-2] == "-column cap_words"
    assert changes[-1] == "restored version 2" and [h["operation"] for h in history][-1] == "Restore"
    out = CliRunner().invoke(main, ["log", lake.uri, "-n", "2"])
    assert out.exit_code == 0 and "restored version 2" in out.output and "change" in out.output.splitlines()[0]
    lake.cleanup(timedelta(0))  # only 2 (tagged) and the latest are left: 2's own commit says what it added
    assert [h["change"] for h in lake.history(None)] == ["restored version 2", "+10 rows"]
    assert "change" not in lake.history(1, changes=False)[0]


def test_a_damaged_latest_version_is_not_called_no_lake(versioned: Lake):
    """info said "no lake at ...; create one with: lakecurate ingest", and that ingest failed with a
    Lance OSError traceback."""
    folder = Path(versioned.table_uri) / "_versions"
    newest = min(folder.glob("*.manifest"), key=lambda p: int(p.stem))  # Lance numbers them down
    newest.write_bytes(b"garbage\n")
    with pytest.raises(LakeError, match="is there but its latest version cannot be read.*may be damaged"):
        Lake.open(versioned.uri)
    res = CliRunner().invoke(main, ["--no-progress", "ingest", versioned.uri, str(Path(__file__).parent.parent / "sample_data")])
    assert res.exit_code == 1 and "cannot be read" in res.output and "Traceback" not in res.output


def test_report_version_of_another_branch_reads_that_branch(versioned: Lake, tmp_path: Path):
    """`report --version exp:N` took exp's schema but ran its queries on main's N (`No field named
    dup_keep`), and exp:N past main's latest, `exp` and a tag made on exp were refused with main's
    versions; from exp, main:N was refused with exp's. sql and export took all of them."""
    from lakecurate.report import report_meta

    lake = versioned  # main: versions 1-4 (7 rows at 4)
    exp = lake.create_branch("exp")
    exp.dedup(["exact"], progress=False)  # exp: 5.. with dup_keep and the like
    assert "dup_keep" in exp.dataset().schema.names
    exp.tag("exp-t")
    lake.append(synthetic_pairs(300, 2))  # main: 5 (9 rows), no dup_keep
    assert exp.version > lake.version
    runner = CliRunner()
    for ref in [f"exp:{n}" for n in range(5, exp.version + 1)] + ["exp", "exp-t"]:
        out = tmp_path / f"{ref.replace(':', '_')}.html"
        res = runner.invoke(main, ["report", lake.uri, str(out), "--version", ref, "--json"])
        assert res.exit_code == 0, (ref, res.output)
        got = json.loads(res.stdout)
        assert got["rows"] == 7 and got["version"] == int(ref.partition(":")[2] or exp.version), (ref, got)
        assert report_meta(out)["branch"] == "exp"
    out = tmp_path / "main3.html"
    res = runner.invoke(main, ["--branch", "exp", "report", lake.uri, str(out), "--version", "main:5", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["rows"] == 9 and report_meta(out)["branch"] == "main"


def test_tag_of_another_branch_s_version_points_there_and_says_so(tmp_path: Path):
    """On exp, `tag --version main:3` was a raw `ValueError: version exp:3 does not exist` (the number
    was read on exp); from main, `tag --version exp:N --json` said "branch": "main"."""
    lake = Lake.create(tmp_path / "lake")
    lake.append(synthetic_pairs(0, 5))
    lake.append(synthetic_pairs(5, 5))
    main_v = lake.version  # 10 rows
    exp = lake.create_branch("exp")
    exp.append(synthetic_pairs(10, 5))
    exp.append(synthetic_pairs(15, 5))  # exp's latest is past main's: not a version of main
    runner = CliRunner()
    res = runner.invoke(main, ["--branch", "exp", "tag", lake.uri, "m", "--version", f"main:{main_v - 1}", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout) == {"tag": "m", "version": main_v - 1, "branch": "main", "lake": lake.uri}
    assert lake.dataset("m").count_rows() == 5 and "m" in lake.info()["tags"]
    res = runner.invoke(main, ["tag", lake.uri, "e", "--version", f"exp:{exp.version}", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["branch"] == "exp" and lake.dataset("e").count_rows() == 20
    res = runner.invoke(main, ["tag", lake.uri, "e2", "--version", "exp"])
    assert res.exit_code == 0 and f"tagged version {exp.version} of branch exp of " in res.output, res.output
    assert "e" in exp.info()["tags"] and "e" not in lake.info()["tags"]


def test_diff_show_0_branch_create_json_and_log_json_tags(versioned: Lake):
    """`diff --show 0` printed a bare "e.g. " line; `branch create --json` said "from": null where
    `branch list` says main:N; `log --json` gave a version's tags as one comma-joined string."""
    lake = versioned  # 2 is 'raw' (10 rows), 4 has 7 other rows
    lake.tag("second", "raw")
    runner = CliRunner()
    res = runner.invoke(main, ["diff", lake.uri, "raw", "--show", "0"])
    assert res.exit_code == 0 and "removed" in res.output, res.output
    assert not [line for line in res.output.splitlines() if line.startswith("e.g.")], res.output
    res = runner.invoke(main, ["diff", lake.uri, "raw", "--show", "2"])
    assert res.exit_code == 0 and [line for line in res.output.splitlines() if line.startswith("e.g. ")], res.output
    res = runner.invoke(main, ["branch", "create", lake.uri, "exp", "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["from"] == "main:4", res.output
    listed = json.loads(runner.invoke(main, ["branch", "list", lake.uri, "--json"]).stdout)
    assert [r["from"] for r in listed if r["branch"] == "exp"] == ["main:4"]
    res = runner.invoke(main, ["log", lake.uri, "--json"])
    assert res.exit_code == 0, res.output
    assert {e["version"]: e["tags"] for e in json.loads(res.stdout)} == {4: [], 3: [], 2: ["raw", "second"], 1: []}
    res = runner.invoke(main, ["log", lake.uri])
    assert "raw, second" in res.output


def test_hints_printed_on_a_branch_name_the_branch(versioned: Lake):
    """Hints printed on a branch left out --branch: restore's undo line, pasted, restored main (a
    reviewer's mark there undone); the "run: lakecurate cluster" of sequence/rebalance and a lookup
    by id named main too."""
    lake = versioned
    exp = lake.create_branch("exp")
    exp.append(synthetic_pairs(500, 2))
    main_before = lake.version
    res = CliRunner().invoke(main, ["--branch", "exp", "restore", lake.uri, str(exp.version - 1)])
    assert res.exit_code == 0, res.output
    undo = res.output[res.output.index("(undo: ") + len("(undo: "):].split(")")[0]
    assert undo.startswith("lakecurate --branch exp restore "), res.output
    res = CliRunner().invoke(main, undo.split()[1:])  # the hint as printed: it restores the branch
    assert res.exit_code == 0 and lake.dataset().version == main_before, res.output
    with pytest.raises(LakeError, match="run: lakecurate --branch exp cluster "):
        exp.sequence(mode="interleave")
    with pytest.raises(LakeError, match="find ids with: lakecurate --branch exp sql "):
        exp.read_images(["no-such-id"])


def test_a_branch_that_is_not_there_lists_main_among_the_branches(versioned: Lake):
    """`--branch nob` on a lake with only main said "branches: none"."""
    res = CliRunner().invoke(main, ["--branch", "nob", "info", versioned.uri])
    assert res.exit_code == 1 and "has no branch 'nob' (branches: main); create it with: lakecurate branch create " \
        in " ".join(res.output.split()), res.output


def test_status_json_counts_the_rows_a_stale_decision_has_not_seen(tmp_path: Path):
    """status --json said rows_missing 0 for a curate stale after 20 new rows (only the text said
    "the fragments changed hold 20 rows"): a script reading it saw nothing to do."""
    lake = Lake.create(tmp_path / "lake")
    lake.append(synthetic_pairs(0, 30))
    lake.curate({"name": "r", "step": [{"filter": "caption_missing"}]}, progress=False)
    lake.append(synthetic_pairs(30, 20))
    res = CliRunner().invoke(main, ["status", lake.uri, "--json"])
    assert res.exit_code == 0, res.output
    st = next(s for s in json.loads(res.stdout)["stages"] if s["stage"] == "curate")
    assert (st["state"], st["rows_missing"], st["rows_stale"]) == ("stale", 20, 0), st


def test_a_branch_going_back_past_its_start_is_told_how_to_have_that_state(versioned: Lake):
    """On branch exp, `restore raw` (main's tag from before the fork) said "open the lake with
    --branch to restore there", which the person had done; `restore 2` said "branch exp has versions
    4-5". Both name the branch's start and the command that makes a branch of that state, which works."""
    lake = versioned
    exp = lake.create_branch("exp")
    exp.append(synthetic_pairs(500, 2))
    for ref, start_from in (("raw", "raw"), (2, "main:2")):
        with pytest.raises(LakeError, match=r"is not on branch exp .* began at version 4 of its parent") as err:
            exp.restore(ref)
        assert f"lake.create_branch(NAME, {start_from!r}) " in str(err.value), err.value  # (Python's words)
        assert "lake.delete_branch('exp')" in str(err.value)
        with speaking("cli"), pytest.raises(LakeError) as err:  # the CLI's: its commands
            exp.restore(ref)
        assert f"branch create {lake.uri} NAME --from {start_from} " in str(err.value), err.value
        assert f"branch delete {lake.uri} exp" in str(err.value)
    assert exp.dataset().count_rows() == 9 and lake.create_branch("back", "main:2").dataset().count_rows() == 10
    with pytest.raises(LakeError, match=r"not a version .*branch exp has versions"):
        exp.restore(99)  # (past the end: the versions it has)
    exp.tag("on-exp")
    with pytest.raises(LakeError, match=r"'on-exp' belongs to branch exp, not main; .*Lake.open\(.*, branch='exp'\).restore\('on-exp'\)"):
        lake.restore("on-exp")
    with speaking("cli"), pytest.raises(LakeError, match="'on-exp' belongs to branch exp, not main; .*lakecurate --branch exp restore"):
        lake.restore("on-exp")


def test_cleanup_after_daily_runs_records_the_stale_stages_of_curate_s_tags(sample_lake_embedded: Lake, tmp_path: Path):
    """Curate tags its result mid-run (cluster and rebalance re-run after it), so from the second day
    on, the tag reads concepts and rebalance stale: cleanup refused until each such tag was deleted by
    hand. It records the stages not current at each tag before it removes the commits that show them:
    the tag's status, export and view read as before the cleanup, and a tag that was current stays so."""
    import shutil

    import pyarrow.parquet as pq

    from lakecurate import graph

    from .conftest import SAMPLE_DATA

    lake = Lake.open(shutil.copytree(sample_lake_embedded.uri, tmp_path / "lake"))
    recipe = {"name": "loose", "step": [{"filter": "ingest_error"}, {"filter": "caption_missing"}]}
    first = lake.curate(recipe, progress=False).tag  # day 1: curate (tagged), then cluster and rebalance
    lake.cluster(k=3)
    lake.rebalance(0.7)
    more = tmp_path / "more"
    more.mkdir()
    for f in sorted(SAMPLE_DATA.glob("brick*"))[:2]:
        shutil.copy(f, more / f.name)
    lake.ingest(more, progress=False)  # day 2: new photos, the same run again
    lake.embed("tiny-random", workers=0, batch_size=8, progress=False)
    second = lake.curate(recipe, progress=False).tag
    lake.cluster(k=3)
    lake.rebalance(0.7)
    assert {s["state"] for s in lake.status()["stages"]} == {"current"}

    def not_current(ref: str) -> dict[str, tuple[str, str]]:
        return {s["stage"]: (s["state"], s["fix"]) for s in lake.status(version=ref)["stages"] if s["state"] != "current"}

    stale = not_current(second)
    assert set(stale) >= {"concepts", "rebalance"} and not_current(first) == {}, stale
    before = {ref: lake.export(tmp_path / f"{ref}-before.parquet", "parquet", version=ref) for ref in (first, second)}
    view = lake.status(version=second)
    assert view["view"] == "keep" and any("rebalance_keep skipped" in n for n in view["view_notes"]), view
    res = CliRunner().invoke(main, ["cleanup", lake.uri, "--older-than-days", "0"])
    assert res.exit_code == 0, res.output
    assert "recorded the stages not current at 1 tag" in res.output, res.output
    graph._WRITES.clear()  # as another process reads it
    graph._COMMITS.clear()
    assert not_current(second) == stale and not_current(first) == {}
    # (concepts read embeddings that day 2's removed embed commit rewrote: only the record shows it)
    reasons = [r for s in lake.status(version=second)["stages"] if s["stage"] == "concepts" for r in s["reasons"]]
    assert reasons and reasons[0].startswith("recorded at cleanup on "), reasons
    assert {s["state"] for s in lake.status()["stages"]} == {"current"}, [(s["stage"], s["reasons"]) for s in lake.status()["stages"] if s["state"] != "current"]
    for ref in (first, second):
        after = lake.export(tmp_path / f"{ref}-after.parquet", "parquet", version=ref)
        assert after.rows == before[ref].rows, (ref, after.rows, before[ref].rows)
        assert pq.read_table(tmp_path / f"{ref}-after.parquet").column("id").to_pylist() == \
            pq.read_table(tmp_path / f"{ref}-before.parquet").column("id").to_pylist()
    after = lake.status(version=second)
    assert after["view"] == "keep" and any("rebalance_keep skipped" in n for n in after["view_notes"]), after
    assert lake.cleanup(timedelta(0))["tags_recorded"] == 0  # a second cleanup: recorded already, nothing removed
    assert not_current(second) == stale
    # A restore of the tag carries its state, the record's part too (it read every stage current: the
    # restore's version has no record and its log is cut), and so do the versions after it, until the
    # stage runs again; a version restored from before the tag (day 1's) carries none of it.
    lake.restore(second)
    assert {st: state for st, (state, _) in not_current(lake.version).items()} == \
        {st: state for st, (state, _) in stale.items()}, lake.status()
    one = lake.sql("SELECT id FROM pairs LIMIT 1")["id"][0]
    lake.review([one], verdict="keep", by="ana")  # a commit after the restore that runs no stage
    assert "concepts" in not_current(lake.version), lake.status()
    branch = lake.create_branch("from-tag", second)  # a branch begins at the tag's state: the same
    branch.review([one], verdict="drop", reason="blurry", by="ana")
    assert "concepts" in {s["stage"] for s in branch.status()["stages"] if s["state"] != "current"}, branch.status()
    lake.delete_branch("from-tag")  # (its stale head would refuse the cleanup below)
    lake.tag("restored")  # (a tag on the restored state: the second cleanup records it)
    lake.cluster(k=3)
    now = not_current(lake.version)
    assert "concepts" not in now and "rebalance" in now, now  # concepts ran again; rebalance is built on them
    lake.rebalance(0.7)
    assert not_current(lake.version) == {}
    # A second cleanup removes the commits of that run: the latest read concepts stale by the restored
    # tag's record (carried past the run it no longer saw); the latest's own reading is its anchor.
    assert lake.cleanup(timedelta(0))["old_versions"] > 0
    graph._WRITES.clear()
    graph._COMMITS.clear()
    assert not_current(lake.version) == {} and lake.status()["view"] == "rebalance_keep", lake.status()
    assert "concepts" in not_current("restored")
    lake.restore(first)
    assert not_current(lake.version) == {}, lake.status()  # day 1's state: current then, current now


def test_cleanup_s_records_go_with_their_branch_and_stay_where_a_listing_failed(versioned: Lake, monkeypatch):
    """The states cleanup records at a branch's tags stayed when the branch was deleted, and a branch
    made again under the name read them at its own version numbers; and cleanup forgot every record
    of a branch whose versions it could not list (a store's request failed), though they cannot be
    made again once the commits are gone."""
    from lakecurate import graph

    lake = versioned
    exp = lake.create_branch("exp")
    exp.append(synthetic_pairs(700, 2))
    node = graph.Node("concepts", ["concept"], ["clip_image"], {"config_hash": "abc"})
    stale = [graph.NodeState(node, "stale", ["clip_image was written after concepts read it"])]
    for on in (lake, exp):
        assert graph.record_states(lake, [(on.dataset(), stale)]) == 1
    assert set(graph.recorded_states(lake)) == {("", lake.version), ("exp", exp.version)}
    real = Lake._versions_left

    def flaky(self):
        return {**real(self), "exp": None}  # (its listing failed)

    monkeypatch.setattr(Lake, "_versions_left", flaky)
    lake.append(synthetic_pairs(800, 1))
    lake.cleanup(timedelta(0))
    assert ("exp", exp.version) in graph.recorded_states(lake)  # not forgotten for want of a listing
    monkeypatch.setattr(Lake, "_versions_left", real)
    lake.delete_branch("exp")
    assert not any(b == "exp" for b, _ in graph.recorded_states(lake))
    again = lake.create_branch("exp")
    assert all(s.state == "current" for s in graph.states(again))
