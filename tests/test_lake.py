"""The lake: open/create, SQL, info, versions, and that LanceDB and Lance open it unchanged."""

from __future__ import annotations

from pathlib import Path

import lance
import lancedb
import numpy as np
import pytest

from lakecurate import Lake, LakeError

from .conftest import SAMPLE_DATA


@pytest.fixture
def sample_lake(lake: Lake) -> Lake:
    lake.ingest(SAMPLE_DATA, progress=False)
    return lake


def test_open_missing_lake_says_how_to_create(tmp_path: Path):
    with pytest.raises(LakeError, match=r"no lake at .*lakecurate ingest"):
        Lake.open(tmp_path / "nope")
    Lake.create(tmp_path / "l")
    with pytest.raises(LakeError, match="already exists"):
        Lake.create(tmp_path / "l", exist_ok=False)
    assert Lake.open(tmp_path / "l").count() == 0


def test_a_lake_is_never_made_inside_another(tmp_path: Path):
    """`lakecurate info LAKE/pairs.lance` advised `lakecurate ingest LAKE/pairs.lance SOURCE`, which
    made a second lake inside the first one's table (LAKE/pairs.lance/pairs.lance)."""
    from click.testing import CliRunner

    from lakecurate.cli import main

    outer = Lake.create(tmp_path / "lake")
    table = tmp_path / "lake" / "pairs.lance"
    with pytest.raises(LakeError, match=r"no lake at .*pairs.lance': it is the table of the lake '.*lake'.*give the lake") as err:
        Lake.open(table)
    assert "lakecurate ingest" not in str(err.value)
    for inside in (table, table / "x"):
        with pytest.raises(LakeError, match=r"is inside the table of the lake '.*lake'; a lake is not made there"):
            Lake.create(inside)
    res = CliRunner().invoke(main, ["ingest", str(table), str(SAMPLE_DATA), "--json"])
    assert res.exit_code == 1 and "inside the table of the lake" in res.output, res.output
    assert not (table / "pairs.lance").exists() and outer.count() == 0
    assert Lake.create(tmp_path / "lake2").count() == 0  # beside it: a lake
    assert Lake.create(tmp_path / "lake" / "eval_sets" / "x").count() == 0  # in its folder (evaluate's eval sets)


def test_create_of_an_existing_lake_and_images_of_unknown_ids(sample_lake: Lake, tmp_path: Path):
    """create opens the lake there (what ingest into a new or existing lake needs), exist_ok=False
    refuses it, on a branch too (it opened the branch); read_images of an id the lake lacks read as
    None, the same as a row without an image: it is an error naming the ids."""
    import pyarrow as pa

    from .conftest import pair_rows

    lake = sample_lake
    again = Lake.create(lake.uri)
    assert (again.version, again.count()) == (lake.version, lake.count())
    lake.create_branch("exp")
    with pytest.raises(LakeError, match="already exists"):
        Lake.create(lake.uri, exist_ok=False)
    with pytest.raises(LakeError, match=r"makes a new lake, not branch 'exp' of one; .*create_branch"):
        Lake.create(lake.uri, branch="exp", exist_ok=False)
    assert Lake.create(lake.uri, branch="exp").branch == "exp"
    with pytest.raises(LakeError, match="invalid exist_ok 'no': expected True or False"):
        Lake.create(tmp_path / "new", exist_ok="no")
    assert not (tmp_path / "new").exists()

    ids = lake.to_pandas(["id"], limit=2)["id"].tolist()
    with pytest.raises(LakeError, match=r"no pair of lake .* has id 'no-such-id', 'other'; find ids with: lakecurate sql"):
        lake.read_images([ids[0], "no-such-id", "other", "no-such-id"])
    with pytest.raises(LakeError, match="has id 'p1'"):
        lake.read_images("p1")  # one id, not its letters
    assert lake.read_images(ids[0]) == lake.read_images(ids)[:1] and lake.read_images(ids)[0]
    rows = pair_rows(0, 1)
    lake.append(rows.set_column(rows.schema.get_field_index("image"), rows.schema.field("image"),
                                pa.nulls(1, rows.schema.field("image").type)))
    assert lake.read_images(["p0000000", ids[0]]) == [None, lake.read_images(ids[0])[0]]  # a row without an image


def test_sql_matches_pandas(sample_lake: Lake):
    df = sample_lake.to_pandas(["ingest_status", "width", "format"])
    got = sample_lake.sql("SELECT ingest_status, COUNT(*) AS n FROM pairs GROUP BY ingest_status ORDER BY ingest_status")
    want = df.groupby("ingest_status").size()
    assert dict(zip(got["ingest_status"], got["n"])) == want.to_dict()
    wide = sample_lake.sql("SELECT COUNT(*) AS n FROM pairs WHERE width >= 300 AND format = 'JPEG'")["n"][0]
    assert wide == int(((df["width"] >= 300) & (df["format"] == "JPEG")).sum()) > 0
    with pytest.raises(LakeError, match="SQL failed"):
        sample_lake.sql("SELECT nope FROM pairs")


def test_lancedb_and_lance_open_the_table_unchanged(sample_lake: Lake):
    db = lancedb.connect(sample_lake.uri)
    tbl = db.open_table("pairs")
    assert tbl.count_rows() == sample_lake.count()
    got = tbl.search().where("key = 'coffee.jpg'").select(["caption"]).to_pandas()
    assert got["caption"][0] == (SAMPLE_DATA / "coffee.txt").read_text().strip()
    assert lance.dataset(str(Path(sample_lake.uri) / "pairs.lance")).count_rows() == sample_lake.count()


def test_lancedb_vector_search_names_its_columns(sample_lake_embedded: Lake):
    """What the README says of LanceDB's vector search on a lake: with .select it works, the blob
    column makes it fail without (if LanceDB lifts that, the README's note can go)."""
    tbl = lancedb.connect(sample_lake_embedded.uri).open_table("pairs")
    vec = sample_lake_embedded.to_pandas(["clip_tinyrandom_image"], where="key = 'chelsea.jpg'")["clip_tinyrandom_image"][0]
    got = (tbl.search(np.asarray(vec, np.float32), vector_column_name="clip_tinyrandom_image")
           .select(["id", "key", "caption"]).limit(3).to_pandas())
    assert "chelsea.jpg" in set(got["key"]) and len(got) == 3  # (chelsea_mismatch.jpg: the same image)
    with pytest.raises(Exception, match="blob columns"):
        tbl.search(np.asarray(vec, np.float32), vector_column_name="clip_tinyrandom_image").limit(3).to_pandas()


def test_info_versions_tags_and_time_travel(sample_lake: Lake):
    v = sample_lake.version
    sample_lake.tag("raw")
    info = sample_lake.info()
    assert info["rows"] == sample_lake.count() and info["tags"] == {"raw": v}
    assert {c["name"] for c in info["columns"]} >= {"id", "image", "caption", "content_hash", "ingest_flags"}
    assert sum(info["status_counts"].values()) == info["rows"]
    assert sample_lake.dataset("raw").count_rows() == info["rows"]
    stats = sample_lake.cleanup()
    assert stats["old_versions"] == 0  # nothing old enough: tagged and recent versions stay


def test_api_argument_types_are_one_line_errors_naming_the_argument(sample_lake: Lake):
    """A wrong type reached a regex, a slice or Lance (TypeError, OverflowError tracebacks), or was
    taken wrongly in silence: create_branch("b3", 2.5) branched from version 2, diff(None) compared
    the latest with itself (one side labelled "None"), compact(0) ran. Unknown keywords are refused
    the way signals() refuses them, naming what the method takes."""
    from datetime import timedelta

    lake = sample_lake
    v = lake.version
    calls = [(lambda: lake.tag(None), "tag name None is not valid"),
             (lambda: lake.tag(5), "tag name 5 is not valid"),
             (lambda: lake.create_branch(None), "branch name None is not valid"),
             (lambda: lake.create_branch("b3", 2.5), "version 2.5: give a version number"),
             (lambda: lake.history("a"), "invalid limit 'a'"),
             (lambda: lake.history(1.5), "invalid limit 1.5"),
             (lambda: lake.compact(-5), "invalid target_rows -5"),
             (lambda: lake.compact("a"), "invalid target_rows 'a'"),
             (lambda: lake.compact(0), "invalid target_rows 0"),
             (lambda: lake.cleanup(5), "invalid older_than 5: expected a datetime.timedelta"),
             (lambda: lake.cleanup(timedelta(days=-1)), "invalid older_than"),
             (lambda: lake.cleanup(timedelta.max), "invalid older_than"),  # (a Lance panic)
             (lambda: lake.to_pandas(5), "invalid columns 5"),
             (lambda: lake.review(None, verdict="drop", reason="x"), "invalid review ids None"),
             (lambda: lake.dup_pairs(5), "invalid ids 5"),
             (lambda: lake.signals(None), "invalid signal kinds None"),
             (lambda: lake.embed(None), "invalid model None"),
             (lambda: lake.curate(None), "invalid recipe None"),
             (lambda: lake.dedup(None), "invalid methods None"),
             (lambda: lake.export(None), "invalid dest None"),
             (lambda: lake.ingest(None), "invalid source None"),
             (lambda: lake.report(None), "invalid out None"),
             (lambda: lake.diff(None), "diff needs version A"),
             (lambda: lake.restore(None), "restore needs a version"),
             (lambda: Lake.open(5), "the lake path is not a path"),
             (lambda: Lake.open(lake.uri, branch=5), "branch name 5 is not valid"),
             # (a TypeError traceback; Lake(uri, "raw") read the tag as storage options)
             (lambda: Lake.open(lake.uri, version="raw"), r"Lake.open takes no version; .*lake.dataset\(V\)"),
             (lambda: Lake(lake.uri, "raw"), r"invalid storage_options 'raw'.*; a lake opens at its latest version"),
             (lambda: Lake.create(lake.uri, brnch="x"), "Lake.create takes storage_options and branch; not brnch"),
             (lambda: lake.embed("tiny-random", bogus=1), r"embed takes pretrained, .* and tokenize; not bogus"),
             (lambda: lake.curate("basic", bogus=1, other=2), "curate takes progress, dry_run, overrides and engine; not bogus, other"),
             (lambda: lake.curate("basic", produce=None), "curate takes .*; not produce"),  # the facade passes its own
             (lambda: lake.add_feature("f_x", len, bogus=1), "add_feature takes inputs, .*; not bogus"),
             (lambda: lake.cluster(4, progress=False), "cluster takes .*; not progress")]
    for call, match in calls:
        with pytest.raises(LakeError, match=match) as err:
            call()
        assert "\n" not in str(err.value)
    assert lake.version == v and "b3" not in lake.branches() and not lake.dataset().tags.list()
    assert lake.dup_pairs("x").empty  # one id, not its letters (a list of one, as to_pandas("key") is one column)


def test_api_arguments_are_checked_with_one_line_errors(sample_lake: Lake):
    """Each reached Lance or Python unchecked: a raw error, or a quiet wrong answer (sql(limit=-1)
    returned no rows, diff(examples=-1) every id but the last, a repeated column came back twice)."""
    calls = [(lambda: sample_lake.to_pandas(["key"], limit=-1), "invalid limit -1: expected an integer >= 0"),
             (lambda: sample_lake.to_pandas(["key"], limit=2.5), "limit 2.5"),
             (lambda: sample_lake.to_pandas(["image", "key", "image"]), "name each column once"),
             (lambda: sample_lake.sql("SELECT key FROM pairs", limit=-1), "limit -1"),
             (lambda: sample_lake.read_images(None), "read_images takes a pair id or a list"),
             (lambda: sample_lake.read_images([1, 2]), "pair ids \\(text\\), not 1"),
             (lambda: sample_lake.run(None), "a pipeline is a TOML file, a shipped name"),
             (lambda: sample_lake.diff(1, examples=-1), "invalid examples -1")]
    for call, match in calls:
        with pytest.raises(LakeError, match=match) as err:
            call()
        assert "\n" not in str(err.value)
    assert sample_lake.to_pandas(["key"], limit=0).empty and len(sample_lake.sql("SELECT key FROM pairs", limit=3)) == 3
    # a recipe given as a dict inside a dict pipeline (curate takes one): it was "not found"
    rep = sample_lake.run({"curate": {"recipe": {"name": "r", "step": [{"filter": "ingest_error"}]}}}, dry_run=True)
    assert rep.steps[0].step == "curate"


def test_one_lake_spelled_several_ways_is_one_uri_with_one_folder_of_claims_and_checkpoints(tmp_path: Path,
                                                                                            monkeypatch: pytest.MonkeyPatch):
    """`file:///x` kept its checkpoints and claims in the cache, `/x` in the lake folder: a run killed under one
    spelling recomputed everything under the other, and two runs at once both computed every fragment."""
    import os

    from lakecurate.columns import Checkpoint, FragmentClaims
    from lakecurate.store import Store, checkpoint_root

    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    Lake.create(tmp_path / "lake")
    spellings = [str(tmp_path / "lake"), f"file://{tmp_path}/lake", f"file://{tmp_path}/lake/", "../lake",
                 f"{tmp_path}/lake/", f"{tmp_path}/work/../lake"]
    lakes = [Lake.open(s) for s in spellings]
    assert {lake.uri for lake in lakes} == {str(tmp_path / "lake")}
    assert {str(Checkpoint(lake, "k").root) for lake in lakes} == {str(tmp_path / "lake/_lakecurate/checkpoints/k")}
    first = FragmentClaims(lakes[1], "feature-x")
    assert first.take([0, 1]) == ([0, 1], {})
    for lake in lakes:  # the fragments another spelling's run holds are its, not free
        assert FragmentClaims(lake, "feature-x").take([0, 1])[0] == []
    first.release()
    assert not (tmp_path / "cache").exists()
    on_s3 = [Store(u) for u in ("s3://b/lake", "s3://b/lake/", "s3://b/lake//")]
    assert {s.uri for s in on_s3} == {"s3://b/lake"} and on_s3[1].main_uri == "s3://b/lake/pairs.lance"
    assert len({checkpoint_root(u, None) for u in ("s3://b/lake", "s3://b/lake/")}) == 1
    assert os.fspath(checkpoint_root(f"file://{tmp_path}/lake/", "dev")) == str(tmp_path / "lake/_lakecurate/checkpoints/branch-dev")


def test_a_lake_or_branch_gone_after_opening_is_one_line_and_nothing_is_written(sample_lake: Lake, tmp_path: Path):
    import shutil

    exp = sample_lake.create_branch("exp")
    Lake.open(sample_lake.uri).delete_branch("exp")  # another Lake object deletes it
    for call in (exp.count, lambda: exp.sql("SELECT COUNT(*) FROM pairs"), lambda: exp.tag("t1")):
        with pytest.raises(LakeError, match=r"^branch 'exp' of lake '.*' was deleted"):
            call()
    shutil.move(sample_lake.uri, tmp_path / "moved")
    for call in (sample_lake.count, lambda: sample_lake.curate("basic", progress=False),
                 lambda: sample_lake.report(tmp_path / "r.html"), lambda: Lake(tmp_path / "never").count()):
        with pytest.raises(LakeError, match=r"^no lake at '.*': it was deleted or moved"):
            call()
    assert not Path(sample_lake.uri).exists()  # (curate made LAKE/_lakecurate/ there again)
    assert Lake.open(tmp_path / "moved").count() == 28


def _flag_options(fn) -> list[str]:
    import inspect

    from lakecurate.options import takes_flag

    return [n for n, p in inspect.signature(fn).parameters.items() if takes_flag(p)]


def test_every_true_or_false_option_of_the_api_refuses_other_values_before_writing(sample_lake: Lake, tmp_path: Path,
                                                                                   monkeypatch):
    """Each public Lake method's True/False options, its own and those of the stage its **options go to
    (found by the stage function it hands to options.keywords), given "no": a LakeError naming the
    option, and the lake unchanged ("no" is a true string: recompute="false" re-embedded every row)."""
    import inspect

    import pyarrow as pa

    import lakecurate.lake as lake_module

    args = {"ingest": [str(SAMPLE_DATA)], "curate": ["basic"], "export": [str(tmp_path / "x"), "parquet"],
            "report": [str(tmp_path / "r.html")], "add_feature": ["f", lambda b: b], "search": ["dog"],
            "review": [["p0"]], "undo_review": ["a"], "restore_reviews": [1], "run": ["demo"], "diff": [1],
            "sql": ["SELECT key FROM pairs"], "sql_table": ["SELECT key FROM pairs"], "append": [None], "side_uri": ["t"], "side_dataset": ["t"],
            "ensure_side": ["t", pa.schema([("a", pa.int64())])], "write_side": ["t", pa.table({"a": [1]})]}

    class Found(Exception):
        pass

    def stage_of(name: str):
        def capture(what, given, allowed, **kw):
            raise Found(allowed)
        with monkeypatch.context() as m:
            m.setattr(lake_module, "keywords", capture)
            try:
                getattr(sample_lake, name)(*args.get(name, []))
            except Found as found:
                return found.args[0] if callable(found.args[0]) else None
            except Exception:
                return None
        return None

    checked = set()
    for name, method in inspect.getmembers(Lake, inspect.isfunction):
        if name.startswith("_") or name in ("serve", "create", "open"):
            continue
        own = _flag_options(method)
        stage = stage_of(name) if any(p.kind is p.VAR_KEYWORD for p in inspect.signature(method).parameters.values()) else None
        options = own + (_flag_options(stage) if stage is not None else [])
        if name == "signals":
            options += ["progress", "recompute"]
        for option in dict.fromkeys(options):
            before = sample_lake.version
            with pytest.raises(LakeError, match=rf"\b{option}\b"):
                getattr(sample_lake, name)(*args.get(name, []), **{option: "no"})
            assert sample_lake.version == before, (name, option)
            checked.add(f"{name}({option}=)")
    with pytest.raises(LakeError, match="stop"):
        sample_lake.sql("SELECT key FROM pairs", stop=True)
    for expected in ("embed(recompute=)", "curate(dry_run=)", "history(changes=)", "signals(progress=)",
                     "sql(with_row_id=)", "cleanup(allow_stale=)", "search(row_address=)"):
        assert expected in checked, sorted(checked)


def test_a_tilde_in_a_lake_path_is_the_home_folder(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    lake = Lake.create("~/tl")
    assert lake.uri == str(tmp_path / "home" / "tl") and not (tmp_path / "~").exists()
    assert Lake("file://~/tl").uri == lake.uri


def test_a_list_of_uint64_stays_exact_with_a_null_row(sample_lake: Lake):
    """copy_hashes came back float64 (rounded) from to_pandas and sql as soon as one row was null."""
    import lance
    import pyarrow as pa

    big = 2**64 - 3
    ds = lance.dataset(sample_lake.table_uri)
    ids = sorted(ds.to_table(columns=["id"]).column("id").to_pylist())
    values = pa.array([[big, 1] if i == ids[0] else None for i in ids], pa.list_(pa.uint64(), 2))
    ds.merge(pa.table({"id": ids, "h": values}), "id")
    for df in (sample_lake.to_pandas(["id", "h"]), sample_lake.sql("SELECT id, h FROM pairs")):
        got = dict(zip(df["id"], df["h"]))
        assert [int(x) for x in got[ids[0]]] == [big, 1] and got[ids[0]].dtype == np.uint64
        assert got[ids[1]] is None


def test_a_tag_named_like_a_branch_or_a_version_is_refused_as_ambiguous(sample_lake: Lake):
    """Lance and LanceDB make tags of any name: 'main' read as the tag, '1' as the tag too."""
    sample_lake.tag("t0")
    first = sample_lake.version
    sample_lake.ingest(SAMPLE_DATA, progress=False)  # (a second version, nothing new)
    ds = lance.dataset(sample_lake.table_uri)
    ds.tags.create("main", first)
    ds.tags.create("1", first)
    for ref, other in (("main", "branch 'main'"), ("1", "version 1")):
        with pytest.raises(LakeError, match=rf"^'{ref}' is both a tag .* and {other}"):
            sample_lake.dataset(ref)
        with pytest.raises(LakeError, match="both a tag"):
            sample_lake.sql("SELECT COUNT(*) FROM pairs", version=ref)
    assert sample_lake.dataset(1).version == 1 and sample_lake.dataset(f"main:{first}").version == first
    from click.testing import CliRunner

    from lakecurate.cli import main

    for args in (["sql", sample_lake.uri, "SELECT COUNT(*) AS n FROM pairs"], ["status", sample_lake.uri],
                 ["export", sample_lake.uri, str(sample_lake.uri) + "-out.parquet", "--format", "parquet"]):
        res = CliRunner().invoke(main, [*args, "--version", "1"])  # (the CLI read '1' as the number, silently)
        assert res.exit_code == 1 and "'1' is both a tag" in res.output, (args, res.output)
    res = CliRunner().invoke(main, ["review", sample_lake.uri, "--from-version", "1", "--by", "ana"])  # (read as 1)
    assert res.exit_code == 1 and "'1' is both a tag" in res.output, res.output
    for odd in ("\u00b2", "\u0663"):  # '²' was a ValueError traceback, '٣' read as version 3
        with pytest.raises(LakeError, match="is not a version, tag or branch"):
            sample_lake.dataset(odd)
    ds.tags.create("007", first)
    with pytest.raises(LakeError, match=r"give the number 7 \(an int\) or 'main:7'"):
        sample_lake.dataset("007")


def test_sql_notes_stale_columns_and_search_takes_a_column_name_and_a_list_vector(sample_lake_embedded: Lake,
                                                                                  tmp_path: Path):
    import shutil

    lake = Lake.open(shutil.copytree(sample_lake_embedded.uri, tmp_path / "l"))
    assert lake.sql("SELECT key, clip_tinyrandom_score FROM pairs").attrs["notes"] == []
    got = lake.search("a dog", k=1, columns="width")  # README: one name is a list of one
    assert list(got.columns) == ["width", "similarity"]
    dim = lance.dataset(lake.table_uri).schema.field("clip_tinyrandom_image").type.list_size
    assert len(lake.search([0.1] * dim, k=1)) == 1  # a list of numbers is a vector
    rid = lake.sql("SELECT id FROM pairs LIMIT 1").id[0]
    lancedb.connect(lake.uri).open_table("pairs").update(where=f"id = '{rid}'", values={"caption": "a red bus"})
    notes = lake.sql("SELECT key, clip_tinyrandom_score FROM pairs").attrs["notes"]
    assert any(n.startswith("embed (") and "stale" in n for n in notes), notes  # as search's attrs and the CLI say
    for star in ("SELECT * FROM pairs", "SELECT p.* FROM pairs p"):  # (every column read: it said nothing)
        assert lake.sql(star).attrs["notes"] == notes, star
    assert lake.sql("SELECT count(*) AS n FROM pairs").attrs["notes"] == []
    with pytest.raises(LakeError, match=r"^evaluate needs eval_set="):
        lake.evaluate("x")
    with pytest.raises(LakeError, match=r"^invalid storage_options 'x'"):
        Lake.open(lake.uri, storage_options="x")


def test_an_id_another_writer_repeated_is_named_not_read_as_no_image(tmp_path: Path):
    """A row appended with LanceDB under an id the lake had (and no image): read_images gave None for
    it, the last row of the id winning, as for a row without an image."""
    lake = Lake.create(tmp_path / "lake")
    lake.ingest(SAMPLE_DATA, progress=False)
    row = lake.dataset().to_table(columns=["id", "caption", "source", "key", "ingest_status"], limit=1,
                                  filter="ingest_status = 'ok'")
    the_id = row.column("id")[0].as_py()
    assert lake.read_images(the_id)[0]
    lancedb.connect(str(tmp_path / "lake")).open_table("pairs").add(row.to_pylist())
    with pytest.raises(LakeError, match=f"id '{the_id}' of lake .* is the id of more than one row"):
        lake.read_images([the_id])


def test_an_empty_claim_left_by_a_killed_run_is_free(lake: Lake):
    """A run killed between making a fragment's claim file and writing its name in it left an empty
    claim: another run skipped that fragment for two minutes ("left to another run ... (: host and
    process)"). An empty claim is its taker's for a few seconds, then free."""
    import os
    import time

    from lakecurate.columns import CLAIM_WRITE_GRACE, FragmentClaims

    claims = FragmentClaims(lake, "feature-x")
    claims.root.mkdir(parents=True)
    path = claims.root / "f0"
    path.write_text("")
    assert claims.take([0]) == ([], {0: "? starting"})  # (being written this instant)
    old = time.time() - CLAIM_WRITE_GRACE - 1
    os.utime(path, (old, old))
    assert claims.take([0]) == ([0], {})
    claims.release()
