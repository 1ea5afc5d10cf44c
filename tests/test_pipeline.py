"""The stage graph (current / stale / incomplete), what refuses stale decisions, and `lakecurate run`."""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path
from typing import Any

import lance
import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from lakecurate import Lake, LakeError, graph
from lakecurate.cli import main
from lakecurate.pipeline import load_pipeline
from lakecurate.names import RECIPES

from .conftest import SAMPLE_DATA, one_more_copy, pair_rows
from .writers import scaled_len

STRICT = {"name": "strict", "step": [{"filter": "ingest_error"}, {"filter": "caption_length", "min_words": 8, "max_words": 100}]}
LOOSE = {"name": "loose", "step": [{"filter": "ingest_error"}, {"filter": "caption_missing"}]}


@pytest.fixture
def rebalanced(sample_lake_embedded: Lake, tmp_path: Path) -> Lake:
    """sample_data embedded, curated with a loose recipe, clustered and rebalanced, tagged curated-v1."""
    lake = Lake.open(shutil.copytree(sample_lake_embedded.uri, tmp_path / "lake"))
    lake.curate(LOOSE, progress=False)
    lake.cluster(k=3)
    lake.rebalance(0.7)
    lake.tag("curated-v1")
    return lake


def states(lake: Lake) -> dict[str, str]:
    return {s.node.columns[0]: s.state for s in graph.states(lake)}


# ----------------------------------------------------------------------------- the graph
def test_graph_current_then_stale_after_a_new_recipe(rebalanced: Lake):
    assert set(states(rebalanced).values()) == {"current"}
    rebalanced.curate(STRICT, progress=False)
    st = {s.node.columns[0]: s for s in graph.states(rebalanced)}
    assert st["keep"].state == "current"
    assert st["rebalance_keep"].state == "stale"
    assert "keep was written at version" in st["rebalance_keep"].reasons[0]
    assert st["rebalance_keep"].fix.startswith("lakecurate rebalance ") and "--target 0.7" in st["rebalance_keep"].fix
    assert st["concept"].state == "current"  # concepts read only the embeddings


def test_new_rows_make_per_row_stages_incomplete_and_global_ones_stale(rebalanced: Lake, tmp_path: Path):
    src = tmp_path / "more"
    src.mkdir()
    for f in sorted(SAMPLE_DATA.glob("brick*"))[:2]:
        shutil.copy(f, src / f.name)
    rebalanced.ingest(src, progress=False)
    st = states(rebalanced)
    assert st["clip_tinyrandom_image"] == "incomplete"
    assert st["keep"] == "stale"  # curate saw every row (its caption signals read captions); now there are more
    assert st["concept"] == "behind"  # it reads only embeddings, and embed has not seen the new rows
    # the reason says rows came (it said "caption was written at version N", once per input column)
    keep = next(s for s in graph.states(rebalanced) if s.node.columns[0] == "keep")
    assert len(keep.reasons) == 1 and keep.reasons[0].startswith("rows were added, replaced or removed since curate "
                                                                  "read version"), keep.reasons
    assert f"(last change at version {rebalanced.version}; the fragments changed hold 1 row)" in keep.reasons[0]
    # the export of the latest version is refused, naming the first stale stage behind it
    with pytest.raises(LakeError, match=r"export would use stale decisions.*re-run it: lakecurate "):
        rebalanced.export(tmp_path / "x.parquet", "parquet")
    # the tagged version is still a consistent curated set
    rep = rebalanced.export(tmp_path / "x.parquet", "parquet", version="curated-v1")
    assert rep.rows > 0 and rep.stale == []


def test_states_survive_cleanup_of_old_versions(rebalanced: Lake):
    """Cleanup removes the commits that wrote the columns: they count as written at the start, so
    nothing turns incomplete or stale, and a new recipe still makes rebalancing stale."""
    from datetime import timedelta

    rebalanced.delete_tag("curated-v1")
    for tag in list(rebalanced.dataset().tags.list()):
        rebalanced.delete_tag(tag)
    removed = rebalanced.cleanup(older_than=timedelta(0))
    assert removed["old_versions"] > 0 and len(rebalanced.dataset().versions()) == 1
    graph._WRITES.clear()  # as a new process sees it: the log has one version
    assert set(states(rebalanced).values()) == {"current"}
    rebalanced.curate(STRICT, progress=False)
    assert states(rebalanced)["rebalance_keep"] == "stale"


def test_a_rerun_that_changes_nothing_is_recorded_once(rebalanced: Lake):
    """rebalance re-run after keep was rewritten with the same values: no data changes, so a marker
    (metadata only) records what it read; a further run commits nothing."""
    v = rebalanced.version
    rebalanced.curate(LOOSE | {"name": "loose2"}, progress=False)  # same decisions, new provenance
    assert states(rebalanced)["rebalance_keep"] == "stale"
    rebalanced.rebalance(0.7)
    assert states(rebalanced)["rebalance_keep"] == "current"
    after = rebalanced.version
    assert after > v
    rebalanced.rebalance(0.7)
    assert rebalanced.version == after


def cap_len(batch):
    return pc.utf8_length(batch["caption"])


def test_last_writes_follow_compaction_and_restore(lake: Lake):
    for i in range(3):
        lake.append(pair_rows(i * 5, 5))
    lake.add_feature("cap_len", cap_len, inputs=["caption"], type="int32")
    before = graph.last_writes(lake.dataset())
    assert len(before["cap_len"]) == 3
    filled = max(w[0] for w in before["cap_len"].values())
    lake.compact()
    after = graph.last_writes(lake.dataset())
    assert len(lake.dataset().get_fragments()) == 1 and len(after["cap_len"]) == 1
    assert max(w[0] for w in after["cap_len"].values()) == filled  # moved, not rewritten
    assert states(lake)["cap_len"] == "current"
    lake.restore(filled)
    assert len(graph.last_writes(lake.dataset())["cap_len"]) == 3


# ----------------------------------------------------------------------------- the stale export (the case)
def test_fix_commands_run_as_given(sample_lake_embedded: Lake, tmp_path: Path):
    """Each stale stage's fix command, pasted as printed, re-runs it with the options it had (they said
    `cluster --k`, which is no option, dropped --where, --score and --set, and did not quote the lake)."""
    lake = Lake.open(shutil.copytree(sample_lake_embedded.uri, tmp_path / "a lake"))  # a space to quote
    recipe = tmp_path / "loose.toml"
    recipe.write_text('name = "loose"\n[[step]]\nfilter = "ingest_error"\n[[step]]\nfilter = "caption_length"\n'
                      'min_words = 1\nmax_words = 100\n')
    runner = CliRunner()
    for args in (["curate", lake.uri, str(recipe), "--set", "caption_length.min_words=2"],
                 ["cluster", lake.uri, "-k", "3", "--seed", "4"],
                 ["rebalance", lake.uri, "--target", "0.7", "--where", "keep AND width > 10"],
                 ["sequence", lake.uri, "--mode", "curriculum", "--score", "-clip_tinyrandom_score", "--where", "keep"]):
        res = runner.invoke(main, args)
        assert res.exit_code == 0, res.output
    configs = {s.node.stage: s.node.prov["config"] for s in graph.states(lake)}
    lake.curate(STRICT, progress=False)  # everything after curate is stale now, curate itself current
    assert {s.node.stage for s in graph.states(lake) if s.state == "stale"} == {"rebalance", "sequence"}
    fixes = {s.node.stage: s.fix for s in graph.states(lake)}
    assert "--where 'keep AND width > 10'" in fixes["rebalance"] and "--score -clip_tinyrandom_score" in fixes["sequence"]
    for stage in ("rebalance", "sequence", "concepts"):
        res = runner.invoke(main, shlex.split(fixes[stage])[1:] + (["--recompute"] if stage == "concepts" else []))
        assert res.exit_code == 0, (fixes[stage], res.output)
    after = {s.node.stage: s for s in graph.states(lake)}
    assert after["rebalance"].state == after["sequence"].state == "current"
    for stage in ("rebalance", "sequence", "concepts"):  # the same options as before
        assert after[stage].node.prov["config"] == configs[stage], stage
    # a dedup method's: its settings, or the run is refused as "made with another config"
    lake.dedup(["phash", "minhash"], phash_distance=4, minhash_threshold=0.5, progress=False)
    more = one_more_copy(tmp_path / "more", "a cat once more")
    lake.ingest(more, progress=False)  # a new row: the groups are stale
    # (its score, for basic's alignment step and for the decision, which ranks by it: behind without it)
    lake.embed("tiny-random", workers=0, batch_size=8, progress=False)
    stale = [s for s in graph.states(lake) if s.node.stage == "dedup" and s.state != "current"]
    assert {c for s in stale for c in s.node.columns} >= {"dup_phash_group", "dup_minhash_group"}
    assert len({s.fix for s in stale}) == 1  # one command for them all (the decision reads both)
    fix = stale[0].fix
    assert "--method phash,minhash" in fix and "--phash-distance 4" in fix and "--minhash-threshold 0.5" in fix, fix
    res = runner.invoke(main, shlex.split(fix)[1:])
    assert res.exit_code == 0, (fix, res.output)
    assert {s.state for s in graph.states(lake) if s.node.stage == "dedup"} == {"current"}
    # curate's: the recipe file and its --set; a built-in recipe by its name
    lake.curate(recipe, overrides={"caption_length.min_words": 2}, progress=False)
    fix = {s.node.stage: s.fix for s in graph.states(lake)}["curate"]
    assert fix == f"lakecurate curate {shlex.quote(lake.uri)} {recipe} --set caption_length.min_words=2"
    lake.curate("basic", progress=False)
    assert {s.node.stage: s.fix for s in graph.states(lake)}["curate"] == f"lakecurate curate {shlex.quote(lake.uri)} basic"
    # curated with another install's built-in (another venv): the built-in's name (its path, pasted once that
    # venv was gone, was "recipe not found"); a file of the user's named as a built-in is the user's file
    for folder, named in ((tmp_path / "old-venv/lakecurate/recipes", "basic"), (tmp_path / "mine", None)):
        folder.mkdir(parents=True)
        shutil.copy(RECIPES / "basic.toml", folder / "basic.toml")
        lake.curate(recipe, progress=False)  # (another decision between: the same recipe again is a no-op)
        lake.curate(folder / "basic.toml", progress=False)
        fix = {s.node.stage: s.fix for s in graph.states(lake)}["curate"]
        assert fix == f"lakecurate curate {shlex.quote(lake.uri)} {named or folder / 'basic.toml'}", fix
    # on a branch, embed's too names the branch (it embedded main's rows instead)
    branch = lake.create_branch("exp")
    shutil.copy(SAMPLE_DATA / "coffee.jpg", more / "cup.jpg")
    (more / "cup.txt").write_text("a cup on the branch")
    branch.ingest(more, progress=False)
    st = next(s for s in graph.states(branch) if s.node.stage == "embed")
    assert st.state == "incomplete" and st.fix.startswith("lakecurate --branch exp embed "), st.fix
    res = runner.invoke(main, shlex.split(st.fix)[1:] + ["--workers", "0"])
    assert res.exit_code == 0, (st.fix, res.output)
    assert next(s for s in graph.states(branch) if s.node.stage == "embed").state == "current"


def test_signals_fix_commands_run_as_given(sample_lake_embedded: Lake, tmp_path: Path):
    """An incomplete signal stage's fix is a `lakecurate signals` command that fills it (it was
    `lakecurate run LAKE PIPELINE.toml`, naming a file the user may not have)."""
    lake = Lake.open(shutil.copytree(sample_lake_embedded.uri, tmp_path / "a lake"))
    assert lake.signals(["caption", "image", "copy", "redact"], workers=0)["redact"] == lake.count()
    more = one_more_copy(tmp_path / "more", "a cat, mail me at cat@example.com")
    lake.ingest(more, progress=False)
    stages = ("signals-caption", "signals-image", "signals-copy", "signals-redact")
    fixes = {s.node.stage: s.fix for s in graph.states(lake) if s.node.stage in stages and s.state == "incomplete"}
    assert set(fixes) == set(stages), fixes
    assert set(fixes.values()) == {f"lakecurate signals {shlex.quote(lake.uri)} --copy --redact"}, fixes  # one for all
    runner = CliRunner()
    for stage, fix in fixes.items():
        assert fix.startswith(f"lakecurate signals {shlex.quote(lake.uri)}"), fix
        res = runner.invoke(main, shlex.split(fix)[1:] + ["--workers", "0"])
        assert res.exit_code == 0, (fix, res.output)
        assert next(s for s in graph.states(lake) if s.node.stage == stage).state == "current", fix
    assert lake.sql("SELECT caption_redacted FROM pairs WHERE caption LIKE '%cat@%'").iloc[0, 0].count("@") == 0


def test_stale_export_is_refused_and_diff_compares_the_effective_view(rebalanced: Lake, tmp_path: Path):
    uri = rebalanced.uri
    runner = CliRunner()
    strict = tmp_path / "strict.toml"
    strict.write_text('name = "strict"\n[[step]]\nfilter = "ingest_error"\n'
                      '[[step]]\nfilter = "caption_length"\nmin_words = 8\nmax_words = 100\n')
    assert runner.invoke(main, ["branch", "create", uri, "strict"]).exit_code == 0
    res = runner.invoke(main, ["--branch", "strict", "curate", uri, str(strict)])
    assert res.exit_code == 0, res.output
    branch = Lake.open(uri, branch="strict")
    removed = branch.count("rebalance_keep AND NOT keep")
    assert removed > 0  # the new recipe drops rows the old rebalancing kept

    # export of the branch is refused, with the stage to re-run...
    res = runner.invoke(main, ["--branch", "strict", "export", uri, str(tmp_path / "out.parquet"), "--format", "parquet"])
    assert res.exit_code == 1 and res.output.count("\n") == 1, res.output
    assert "rebalance" in res.output and "is stale" in res.output and "--allow-stale" in res.output
    assert not (tmp_path / "out.parquet").exists()
    # ...and diff compares the effective views: main's rebalance_keep, the branch's keep
    res = runner.invoke(main, ["diff", uri, "curated-v1", "strict", "--json"])
    d = json.loads(res.output)
    assert d["where_a"] == "rebalance_keep" and d["where_b"] == "keep"
    old = set(rebalanced.to_pandas(["id"], where="rebalance_keep")["id"])
    new = set(branch.to_pandas(["id"], where="keep")["id"])
    assert d["removed"] == len(old - new) > 0 and d["added"] == len(new - old)
    assert set(d["removed_by"]) <= {"recipe: caption_length", "recipe: ingest_error"}, d["removed_by"]
    assert sum(d["removed_by"].values()) == d["removed"]
    assert any("rebalance_keep skipped" in n for n in d["notes"])

    # with --allow-stale it exports and the manifest says so
    res = runner.invoke(main, ["--branch", "strict", "export", uri, str(tmp_path / "stale.parquet"), "--format",
                               "parquet", "--allow-stale"])
    assert res.exit_code == 0 and "warning" in res.output
    manifest = json.loads((tmp_path / "stale.parquet.manifest.json").read_text())
    assert manifest["allow_stale"] is True and "rebalance" in manifest["stale"][0]

    # `lakecurate run` with the new recipe re-runs rebalance; then every exported row has keep
    pipe = tmp_path / "p.toml"
    pipe.write_text(f'[curate]\nrecipe = "{strict}"\n[cluster]\nk = 3\n[rebalance]\ntarget = 0.7\n'
                    f'[export]\ndest = "{tmp_path / "out.parquet"}"\nformat = "parquet"\n')
    res = runner.invoke(main, ["--branch", "strict", "run", uri, str(pipe), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["ran"] == ["rebalance", "export"]
    ids = pq.read_table(tmp_path / "out.parquet").column("id").to_pylist()
    kept = set(branch.to_pandas(["id"], where="keep")["id"])
    assert ids and set(ids) <= kept
    assert Lake.open(uri).dataset().version == rebalanced.version  # main untouched


def test_report_and_rebalance_name_stale_decisions(rebalanced: Lake, tmp_path: Path):
    rebalanced.sequence("random")
    rebalanced.curate(STRICT, progress=False)
    rep = rebalanced.report(tmp_path / "r.html")
    html = (tmp_path / "r.html").read_text()
    assert rep.stale and 'id="stale"' in html and "kept by rebalancing" not in html
    assert any(s.startswith("rebalance") for s in rep.stale) and any(s.startswith("sequence") for s in rep.stale)
    with pytest.raises(LakeError, match="sequence would use stale decisions"):
        rebalanced.sequence("random", where="rebalance_keep")
    assert rebalanced.sequence("random", where="rebalance_keep", allow_stale=True)["rows"] > 0


def test_status_command(rebalanced: Lake):
    rebalanced.curate(STRICT, progress=False)
    runner = CliRunner()
    res = runner.invoke(main, ["status", rebalanced.uri])
    assert res.exit_code == 0, res.output
    line = next(ln for ln in res.output.splitlines() if ln.startswith("rebalance "))
    assert "stale" in line and "keep was written" in line
    assert "rebalance: lakecurate rebalance" in res.output and "curated view: keep" in res.output
    d = json.loads(runner.invoke(main, ["status", rebalanced.uri, "--json"]).output)
    by = {s["stage"]: s for s in d["stages"]}
    assert by["rebalance"]["state"] == "stale" and by["curate"]["state"] == "current" and d["view"] == "keep"
    d = json.loads(runner.invoke(main, ["status", rebalanced.uri, "--version", "curated-v1", "--json"]).output)
    assert {s["state"] for s in d["stages"]} == {"current"} and d["view"] == "rebalance_keep"


def test_status_notes_a_recipe_file_edited_since_curate(sample_lake_embedded: Lake, tmp_path: Path):
    """A threshold tightened in the recipe file after curate: status said current and nothing more
    (the file's path is recorded). It notes the change and the command that applies it; with the
    `--set` the run had, the file unchanged is no change; run, the note is gone."""
    lake = Lake.open(shutil.copytree(sample_lake_embedded.uri, tmp_path / "lake"))
    recipe = tmp_path / "r.toml"
    recipe.write_text('name = "r"\n[[step]]\nfilter = "caption_length"\nmin_words = 2\nmax_words = 100\n')
    lake.curate(str(recipe), overrides={"caption_length.max_words": 90}, progress=False)
    assert lake.status()["view_notes"] == []
    recipe.write_text('name = "r"\n[[step]]\nfilter = "caption_length"\nmin_words = 5\nmax_words = 100\n')
    notes = lake.status()["view_notes"]
    assert len(notes) == 1 and notes[0].startswith(f"recipe {recipe.resolve()} changed since keep was decided by it")
    command = notes[0].split("to decide by it as it is now: ")[1]
    assert command.endswith(" --set caption_length.max_words=90")
    res = CliRunner().invoke(main, ["status", lake.uri])
    assert f"note: {notes[0]}" in res.output
    assert CliRunner().invoke(main, shlex.split(command)[1:]).exit_code == 0
    assert lake.status()["view_notes"] == [] and lake.count("keep") < lake.count("ingest_status != 'error'")
    recipe.write_text('name = "r"\n[[step]]\nfilter = "no_such_filter"\n')
    assert "which keep was decided by, no longer loads: " in lake.status()["view_notes"][0]


def test_a_keep_decided_by_other_step_code_is_stale_naming_the_step(tmp_path: Path, monkeypatch):
    """A newer lakecurate changes what a step does (its `version`): status called the old keep
    current and export shipped it. It is stale, naming the step; export refuses it as any stale
    decision; the fix (curate with the recipe) decides again, and keep is current."""
    from datetime import timedelta

    from lakecurate import curate

    lake = Lake.create(tmp_path / "lake")
    lake.ingest(SAMPLE_DATA, progress=False)
    recipe = tmp_path / "r.toml"
    recipe.write_text('name = "r"\n[[step]]\nfilter = "ingest_error"\n[[step]]\nfilter = "caption_length"\n'
                      'min_words = 2\nmax_words = 100\n')
    lake.curate(str(recipe), progress=False)
    assert {s["stage"]: s["state"] for s in lake.status()["stages"]}["curate"] == "current"
    tags = set(lake.dataset().tags.list())
    bumped = getattr(curate.CaptionLength, "version", 1) + 1  # (before the fix steps had no version)
    monkeypatch.setattr(curate.CaptionLength, "version", bumped, raising=False)
    st = next(s for s in lake.status()["stages"] if s["stage"] == "curate")
    assert st["state"] == "stale", st
    assert "caption_length" in st["reasons"][0] and "ingest_error" not in st["reasons"][0], st
    assert st["fix"] == f"lakecurate curate {lake.uri} {shlex.quote(str(recipe.resolve()))}", st
    # cleanup removes commits, not the code: it no longer refuses for what only the code shows ("the
    # commits it would remove show it stale"), and the keep is as stale after it as before
    assert lake.cleanup(timedelta(0))["old_versions"] > 0
    assert {s["stage"]: s["state"] for s in lake.status()["stages"]}["curate"] == "stale"
    with pytest.raises(LakeError, match=r"export would use stale decisions.*curate.*caption_length.*re-run it: "
                                        r"lakecurate curate"):
        lake.export(tmp_path / "x.parquet", "parquet")
    rep = lake.export(tmp_path / "x.parquet", "parquet", allow_stale=True)
    assert any("caption_length" in w for w in rep.stale), rep.stale
    res = CliRunner().invoke(main, ["status", lake.uri])
    assert "caption_length" in res.output and "stale" in res.output, res.output
    # the fix decides again (it found "nothing to do" at the same recipe's tag), and keep is current
    assert CliRunner().invoke(main, shlex.split(st["fix"])[1:]).exit_code == 0
    assert {s["stage"]: s["state"] for s in lake.status()["stages"]}["curate"] == "current"
    now = set(lake.dataset().tags.list())
    assert len(now - tags) == 1 and len({t.rsplit("-v", 1)[0] for t in now}) == 1  # the same recipe hash names it
    lake.export(tmp_path / "y.parquet", "parquet")


def test_a_keep_an_older_lakecurate_decided_without_step_versions_stays_current(tmp_path: Path, monkeypatch):
    """keep written before step versions were recorded: an upgrade must not make every lake's
    decision stale (nothing tells which step code decided it)."""
    from lakecurate import columns, curate

    lake = Lake.create(tmp_path / "lake")
    lake.ingest(SAMPLE_DATA, progress=False)
    real = columns.provenance

    def older(stage, config, *args, **kwargs):  # what an older lakecurate recorded: no versions
        return real(stage, {k: v for k, v in config.items() if k != "step_versions"}, *args, **kwargs)

    monkeypatch.setattr(columns, "provenance", older)
    lake.curate(STRICT, progress=False)
    monkeypatch.setattr(columns, "provenance", real)
    assert "step_versions" not in (columns.field_provenance(lake.dataset().schema.field("keep"))["config"])
    bumped = getattr(curate.CaptionLength, "version", 1) + 1  # (before the fix steps had no version)
    monkeypatch.setattr(curate.CaptionLength, "version", bumped, raising=False)
    assert {s["stage"]: s["state"] for s in lake.status()["stages"]}["curate"] == "current"
    lake.export(tmp_path / "x.parquet", "parquet")


def test_a_caption_updated_in_place_makes_embed_stale_and_its_fix_and_run_recompute(sample_lake_embedded: Lake,
                                                                                     tmp_path: Path):
    """A caption updated with Lance itself: embed is stale, and the fix status printed was the plain
    embed command, which fills only rows without values: "embedded 0 rows", still stale, and a
    pipeline's [embed] step "ran" and wrote nothing, every time. Then --recompute was the fix: every
    row of the lake embedded again for one caption. The plain run now computes the stale
    fragments again, and only those (the updated row's: Lance moved it to a fragment of its own)."""
    lake = Lake.open(shutil.copytree(sample_lake_embedded.uri, tmp_path / "lake"))
    names = [n for n in lake.dataset().schema.names if n.startswith("clip_tinyrandom_")]
    files = {f.fragment_id: [d.path for d in f.metadata.files] for f in lake.dataset().get_fragments()}
    key = lake.to_pandas(["key"], limit=1)["key"][0]
    before = lake.to_pandas(["key", *names]).set_index("key")
    lance.dataset(lake.table_uri).update({"caption": "'a new text'"}, where=f"key = '{key}'")
    st = next(s for s in lake.status()["stages"] if s["stage"] == "embed")
    assert st["state"] == "stale" and st["fix"].endswith(" --model tiny-random"), st
    assert st["rows_stale"] == 1 and st["reasons"][-1] == "its fix computes 1 rows in 1 fragment(s) again", st
    pipe = tmp_path / "p.toml"
    pipe.write_text('[embed]\nmodel = "tiny-random"\nworkers = 0\n')
    v = lake.version
    rep = lake.run(pipe, progress=False)
    assert rep.steps[0].action == "ran" and rep.steps[0].versions and lake.version > v
    assert next(s for s in lake.status()["stages"] if s["stage"] == "embed")["state"] == "current"
    assert lake.run(pipe, progress=False).steps[0].action == "skipped"
    after = lake.to_pandas(["key", *names]).set_index("key").loc[before.index]
    image, text = (next(n for n in names if n.endswith(end)) for end in ("_image", "_text"))

    def vec(df, k, col):
        return np.asarray(df.loc[k, col], dtype=np.float32)

    changed = [k for k in before.index if not np.array_equal(vec(before, k, text), vec(after, k, text), equal_nan=True)]
    assert changed == [key]  # the text embedding of the new caption, and no other
    assert np.array_equal(vec(before, key, image), vec(after, key, image))  # (the same image)
    frags = lake.dataset().get_fragments()
    assert [d.path for d in frags[0].metadata.files] == files[0]  # the other rows' values were not rewritten
    lance.dataset(lake.table_uri).update({"caption": "'another text'"}, where=f"key = '{key}'")
    fix = next(s for s in lake.status()["stages"] if s["stage"] == "embed")["fix"]
    res = CliRunner().invoke(main, ["--no-progress", *shlex.split(fix)[1:], "--workers", "0"])
    assert res.exit_code == 0, res.output
    assert "embedded 1 rows (1 of them again: their fragments' inputs changed since)" in res.output, res.output
    assert next(s for s in lake.status()["stages"] if s["stage"] == "embed")["state"] == "current"
    # the same values as embedding every row again
    redo = Lake.open(shutil.copytree(lake.uri, tmp_path / "redo"))
    redo.embed("tiny-random", workers=0, recompute=True, progress=False)
    a, b = (x.to_pandas(["key", image, text]).set_index("key").sort_index() for x in (lake, redo))
    for n in (image, text):
        assert np.allclose(np.stack(a[n].dropna().to_numpy()), np.stack(b[n].dropna().to_numpy()), atol=1e-3)


# ----------------------------------------------------------------------------- lakecurate run
def _pipeline(tmp_path: Path, min_words: int) -> Path:
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(f'name = "r"\n[[step]]\nfilter = "ingest_error"\n[[step]]\nfilter = "caption_length"\n'
                      f'min_words = {min_words}\nmax_words = 100\n')
    pipe = tmp_path / "pipeline.toml"
    pipe.write_text(f'[ingest]\nsources = ["{SAMPLE_DATA}"]\n[embed]\nmodel = "tiny-random"\nworkers = 0\n'
                    f'[curate]\nrecipe = "recipe.toml"\n[cluster]\nk = 3\n[rebalance]\ntarget = 0.6\n'
                    f'[sequence]\nmode = "random"\n[export]\ndest = "{{lake}}-export"\nformat = "parquet"\n')
    return pipe


def test_run_twice_does_nothing_and_a_threshold_reruns_only_what_follows(tmp_path: Path):
    pipe = _pipeline(tmp_path, 3)
    lake = Lake.create(tmp_path / "lake")
    first = lake.run(pipe, progress=False)
    assert first.ran == ["ingest", "embed", "curate", "cluster", "rebalance", "sequence", "export"]
    v = lake.version
    again = lake.run(pipe, progress=False)
    assert again.ran == [] and lake.version == v  # no new version
    assert {s.why.split(";")[0] for s in again.steps} == {"current", "no new pairs"}

    kept = lake.count("keep")
    _pipeline(tmp_path, 9)  # one threshold of the recipe changes
    third = lake.run(pipe, progress=False)
    assert lake.count("keep") < kept
    assert third.ran == ["curate", "rebalance", "sequence", "export"]
    ds = lake.dataset()
    new_versions = range(v + 1, ds.version + 1)
    touched = set()
    for n in new_versions:
        tx = ds.checkout_version(n).get_transactions(1)[0]
        assert type(tx.operation).__name__ in ("DataReplacement", "Merge", "Project", "UpdateConfig"), tx.operation
        if type(tx.operation).__name__ == "DataReplacement":
            names = graph._field_names(ds)
            touched |= {names[f] for r in tx.operation.replacements for f in r.new_file.fields}
    assert touched <= {"keep", "drop_reason", "rebalance_keep", "sample_weight", "repeats", "seq_order", "seq_shard"}
    assert "keep" in touched
    writes = graph.last_writes(ds)
    assert max(w[0] for w in writes["clip_tinyrandom_image"].values()) <= v  # embed did not run
    assert max(w[0] for w in writes["concept"].values()) <= v  # nor cluster
    assert lake.run(pipe, progress=False).ran == []
    # the file's k changes: cluster re-runs with the new k (it stopped on "pass --recompute")
    pipe.write_text(pipe.read_text().replace("k = 3", "k = 4"))
    fourth = lake.run(pipe, progress=False)
    assert fourth.ran[:2] == ["cluster", "rebalance"] and fourth.steps[3].why == "k changed (3 -> 4)"
    concepts = {s.node.stage: s for s in graph.states(lake)}["concepts"]
    assert concepts.node.prov["config"]["k"] == 4 and concepts.state == "current"
    # [curate] overrides: the comparison applies them as the run does (ignored: added ones never ran,
    # and a file with them re-ran curate every time)
    pipe.write_text(pipe.read_text().replace('recipe = "recipe.toml"\n', 'recipe = "recipe.toml"\n'
                                             'overrides = {"caption_length.min_words" = 12}\n'))
    fifth = lake.run(pipe, progress=False)
    assert fifth.ran[0] == "curate" and lake.count("keep AND cap_words < 12") == 0
    assert lake.run(pipe, progress=False).ran == []
    # [embed] with another config is not current (it said so, and embed refused the columns' config)
    pipe.write_text(pipe.read_text().replace("workers = 0\n", 'workers = 0\nprecision = "bf16"\n'))
    with pytest.raises(LakeError, match="made with another config"):
        lake.run(pipe, progress=False)
    assert lake.run(pipe, dry_run=True, progress=False).steps[1].why == "precision changed (fp32 -> bf16)"


def test_pipeline_options_are_checked_before_anything_runs(tmp_path: Path):
    runner = CliRunner()
    cases = {
        '[ingest]\nsources = ["x"]\n[embedd]\nmodel = "offline"\n': "unknown step(s) embedd",
        '[embed]\nmodel = "offline"\nbatchsize = 3\n': "unknown option(s) batchsize",
        '[embed]\nmodel = "no-such-model"\n': "[embed]",
        '[curate]\nrecipe = "no-such-recipe"\n': "[curate]",
        '[rebalance]\ntarget = -2\n': "[rebalance]",
        '[ingest]\nsources = "sample_data"\n': "sources must be a list",
        '[export]\ndest = "x"\nformat = "csv"\n': "unknown export format",
        '[embed\n': "not valid TOML",
        '[embed]\nmodel = 5\n': "[embed]: model = 5 must be text",  # a TypeError traceback before
        '[export]\ndest = 5\n': "[export]: dest = 5 must be text",  # exported to a folder named "5" before
        '[cluster]\nk = true\n': "k = True must be a whole number",
        '[sequence]\nwhere = ["keep"]\n': "where = ['keep'] must be text",
        '[dedup]\nphash_distance = 100\n': "invalid phash_distance 100: expected an integer up to 64",  # linked every row
        '[rebalance]\ntemperature = -1\n': "invalid temperature -1",  # refused only after the earlier steps ran
        '[rebalance]\nmax_repeats = 0\n': "invalid max_repeats 0",
        '[sequence]\nshard_size = 0\n': "invalid shard_size 0",
        '[dedup]\nmethods = ["phash"]\nrecompute = ["semantic"]\n': "recompute names 'semantic'",
        '[dedup]\nrecompute = "phash"\n': "recompute = 'phash' must be true or false or a list",
        # each refused only once the earlier steps had written (or not at all: a threshold of 85 linked nothing)
        f'[ingest]\nsources = ["{SAMPLE_DATA}", "/nonexistent"]\n': "source /nonexistent does not exist",
        f'[ingest]\nsources = ["{SAMPLE_DATA}"]\nkind = "bogus"\n': "unknown kind 'bogus'",
        '[dedup]\nsemantic_threshold = 85.0\n': "invalid semantic_threshold 85.0: expected a number from -1 to 1",
        '[dedup]\ncaption_threshold = -3.0\n': "invalid caption_threshold -3.0",
        '[embed]\nmodel = "offline"\nbatch_size = 0\n': "[embed]: invalid batch_size 0",
        '[embed]\nmodel = "offline"\nprecision = "fp8"\n': "[embed]: precision must be one of",
        '[rebalance]\nrule = "bogus"\n': "unknown keep rule 'bogus'",
        '[report]\nout = "r.html"\nsample_rows = -5\n': "invalid sample_rows -5",
        '[export]\ndest = "x"\nshard_size = -1\n': "invalid shard_size -1",
        '[export]\ndest = "x.parquet"\nformat = "parquet"\nshard_size = 5\n': "shard_size counts WebDataset samples",
        '[export]\ndest = "x"\nimage_ext = "txt"\n': "image_ext txt: that member is the sample's caption",
        '[curate]\nrecipe = "basic"\nengine = "spark"\n': "unknown engine 'spark'",
        '[curate]\nrecipe = "basic"\noverrides = {"nosuch.step" = 3}\n': "[curate]",
        # a hostile tester's: refused only after curate had committed, or a folder named {lakes} made
        '[report]\nout = "/proc/forbidden/r.html"\n': "report '/proc/forbidden/r.html' cannot be written",
        '[export]\ndest = "{lakes}/x"\n': "names {lakes}; the one placeholder is {lake}",
    }
    for text, msg in cases.items():
        pipe = tmp_path / "p.toml"
        pipe.write_text(text)
        res = runner.invoke(main, ["run", str(tmp_path / "lake"), str(pipe)])
        assert res.exit_code == 1 and msg in res.output and res.output.count("\n") == 1, (text, res.output)
        assert not (tmp_path / "lake").exists()  # nothing written, not even an empty lake
    assert not (tmp_path / "5").exists()
    with pytest.raises(LakeError, match="shipped pipelines: demo"):
        load_pipeline("nope")
    res = runner.invoke(main, ["status", str(tmp_path / "nolake")])
    assert res.exit_code == 1 and "no lake at" in res.output and res.output.count("\n") == 1
    res = runner.invoke(main, ["run", str(tmp_path / "nolake"), "demo", "--dry-run"])
    assert res.exit_code == 0 and "would run" in res.output and "no lake yet" in res.output
    assert not (tmp_path / "nolake").exists()  # a dry run creates nothing


def test_dry_run_says_what_would_run(tmp_path: Path):
    pipe = _pipeline(tmp_path, 3)
    lake = Lake.create(tmp_path / "lake")
    rep = lake.run(pipe, dry_run=True)
    assert lake.version == 1 and {s.action for s in rep.steps} == {"would run"}
    assert lance.dataset(lake.table_uri).count_rows() == 0
    # after a run: ingest would run (it cannot tell new pairs without reading them), and the steps
    # after it said "current" though the rows it adds would make each of them run
    lake.run(pipe, progress=False)
    rep = lake.run(pipe, dry_run=True)
    assert [s.action for s in rep.steps] == ["would run"] + ["skipped"] * 6
    assert {s.why for s in rep.steps[1:]} == {"current now; may run after the steps before it"}
    res = CliRunner().invoke(main, ["run", lake.uri, str(pipe), "--dry-run"])
    assert res.exit_code == 0 and "would run 1 of 7 steps (6 more may follow from what those change)" in res.output


def test_a_changed_dedup_threshold_regroups_that_method_alone(sample_lake_embedded: Lake, tmp_path: Path):
    """A pipeline whose [dedup] phash_distance changes re-runs dedup with that method recomputed (it
    stopped on "pass --recompute", and recompute = true would redo the semantic join too: hours at scale)."""
    lake = Lake.open(shutil.copytree(sample_lake_embedded.uri, tmp_path / "lake"))
    pipe = tmp_path / "pipeline.toml"

    def write(distance: int, caption: float = 0.99) -> None:
        pipe.write_text(f'[dedup]\nmethods = ["exact", "phash", "semantic", "caption"]\nphash_distance = {distance}\n'
                        f'semantic_threshold = 0.99\ncaption_threshold = {caption}\n')

    write(4)
    assert lake.run(pipe, progress=False).ran == ["dedup"]
    assert lake.run(pipe, progress=False).ran == []
    write(10)
    rep = lake.run(pipe, progress=False)
    assert rep.ran == ["dedup"] and rep.steps[0].why == "phash_distance changed"
    by_method = {m["method"]: m for m in rep.steps[0].result["methods"]}
    assert by_method["phash"]["new_rows"] == by_method["phash"]["rows"] > 0  # regrouped from scratch
    assert by_method["semantic"]["new_rows"] == 0 and by_method["caption"]["new_rows"] == 0  # not joined again
    cfg = {c: s for s in graph.states(lake) for c in s.node.columns}
    assert cfg["dup_phash_group"].node.prov["config"]["max_distance"] == 10
    assert {cfg[c].state for c in ("dup_phash_group", "dup_semantic_group", "dup_keep")} == {"current"}
    assert lake.run(pipe, progress=False).ran == []
    # two thresholds at once: both methods regrouped, the others not
    write(6, 0.98)
    rep = lake.run(pipe, progress=False)
    assert rep.steps[0].why == "phash_distance, caption_threshold changed"
    by_method = {m["method"]: m for m in rep.steps[0].result["methods"]}
    assert by_method["phash"]["new_rows"] == by_method["phash"]["rows"]
    assert by_method["caption"]["new_rows"] == by_method["caption"]["rows"] > 0
    assert by_method["semantic"]["new_rows"] == 0
    assert lake.run(pipe, progress=False).ran == []


def test_dedup_recompute_names_methods(sample_lake_embedded: Lake, tmp_path: Path):
    lake = Lake.open(shutil.copytree(sample_lake_embedded.uri, tmp_path / "lake"))
    lake.dedup(["phash", "semantic"], semantic_threshold=0.99, progress=False)
    v = lake.version
    with pytest.raises(LakeError, match="dup_phash_group.*another config"):  # not named for recompute
        lake.dedup(["semantic", "phash"], semantic_threshold=0.99, phash_distance=9, recompute=["semantic"], progress=False)
    assert lake.version == v  # refused before semantic's columns were dropped
    with pytest.raises(LakeError, match="recompute names 'copy'.*not one of this run's methods"):
        lake.dedup(["phash", "semantic"], semantic_threshold=0.99, recompute=["copy"], progress=False)
    with pytest.raises(LakeError, match="unknown dedup method 'nope'"):
        lake.dedup(["phash"], recompute=["nope"], progress=False)
    with pytest.raises(LakeError, match="recompute must be"):
        lake.dedup(["phash"], recompute="phash", progress=False)
    assert lake.version == v
    rep = lake.dedup(["phash", "semantic"], semantic_threshold=0.99, phash_distance=9, recompute=["phash"], progress=False)
    by_method = {m.method: m for m in rep.methods}
    assert by_method["phash"].new_rows == by_method["phash"].rows and by_method["semantic"].new_rows == 0
    assert lake.version > v


def test_run_export_to_a_folder_is_current_once_and_a_changed_setting_exports_again(tmp_path: Path):
    """A WebDataset export keeps its manifest in DEST/manifest.json (run looked for DEST.manifest.json:
    it exported on every run), and a changed where, caption or repeats is a new export (it was
    taken as current)."""
    lake = Lake.create(tmp_path / "lake")
    lake.ingest(SAMPLE_DATA, progress=False)
    pipe = tmp_path / "p.toml"

    def write(extra: str) -> None:
        pipe.write_text('[export]\ndest = "{lake}-shards"\nformat = "webdataset"\nwhere = "ingest_status = \'ok\'"\n'
                        + extra)

    write("")
    assert lake.run(pipe, progress=False).ran == ["export"]
    again = lake.run(pipe, progress=False)
    assert again.ran == [] and again.steps[-1].why == "current"
    write("repeats = false\n")
    assert [s.why for s in lake.run(pipe, dry_run=True, progress=False).steps] == ["repeats changed (True -> False)"]
    assert lake.run(pipe, progress=False).ran == ["export"]
    pipe.write_text('[export]\ndest = "{lake}-shards"\nformat = "webdataset"\nwhere = "ingest_status <> \'ok\'"\n'
                    'repeats = false\n')
    why = lake.run(pipe, dry_run=True, progress=False).steps[-1].why
    assert why.startswith("where changed (ingest_status = 'ok' -> ingest_status <> 'ok')"), why


def test_rows_replaced_by_retry_errors_leave_per_row_stages_current_once_filled(lake: Lake, tmp_path: Path):
    """--retry-errors deletes the error rows from their fragment in the commit that adds their new
    rows: that deletion counted as a new write of every column there, so the signal stages stayed
    stale for good (nothing refills a filled fragment) and evaluate refused. A global stage still
    sees rows change."""
    shutil.copy(SAMPLE_DATA / "astronaut.jpg", tmp_path / "a.jpg")
    (tmp_path / "m.csv").write_text("image,caption\na.jpg,a woman\nb.jpg,call +1 415 555 2671 a horse\n")
    lake.ingest(tmp_path / "m.csv", progress=False)
    lake.signals(["caption", "redact"], progress=False)
    lake.curate(LOOSE, progress=False)
    shutil.copy(SAMPLE_DATA / "camera.jpg", tmp_path / "b.jpg")
    assert lake.ingest(tmp_path / "m.csv", retry_errors=True, progress=False).replaced == 1
    lake.signals(["caption", "redact"], progress=False)  # fills the replaced row's new fragment
    st = states(lake)
    assert st["cap_words"] == st["caption_redacted"] == "current", st
    assert st["keep"] == "stale"  # curate judged the table before a row was replaced


def test_a_stale_feature_s_fix_command_runs_as_printed(sample_lake_embedded: Lake, tmp_path: Path):
    """The fix was 'feature add LAKE dbl --udf M:F' (no inputs: refused; and a stale column was not
    refilled without --recompute); it names its inputs, parameters and type now, and the plain
    command computes the stale fragments again."""
    lake = Lake.open(shutil.copytree(sample_lake_embedded.uri, tmp_path / "lake"))
    score = next(n for n in lake.dataset().schema.names if n.endswith("_score"))
    udf = tmp_path / "my udfs.py"
    udf.write_text("import pyarrow.compute as pc\n\ndef scaled(b, k=2.0):\n"
                   f"    return pc.multiply(b[{score!r}], k)\n")
    res = CliRunner().invoke(main, ["feature", "add", lake.uri, "dbl", "--udf", f"{udf}:scaled", "--input", score,
                                    "--type", "float32", "--param", "k=3"])
    assert res.exit_code == 0, res.output
    lake.embed("tiny-random", workers=0, recompute=True, progress=False)
    st = {s.node.columns[0]: s for s in graph.states(lake)}["dbl"]
    assert st.state == "stale" and st.fix.endswith(f"--input {score} --param k=3 --type float"), st.fix
    res = CliRunner().invoke(main, shlex.split(st.fix)[1:])
    assert res.exit_code == 0, res.output
    assert states(lake)["dbl"] == "current"
    got = lake.to_pandas(["dbl", score])
    assert np.allclose(got["dbl"], got[score] * 3, equal_nan=True)


def test_curate_refuses_a_stale_feature_and_a_dropped_input_makes_it_stale(sample_lake_embedded: Lake, tmp_path: Path):
    """curate decided from a stale feature without a word (and tagged it); dropping the feature then
    showed the decision built on it as current, so evaluate and export took it."""
    lake = Lake.open(shutil.copytree(sample_lake_embedded.uri, tmp_path / "lake"))
    score = next(n for n in lake.dataset().schema.names if n.endswith("_score"))
    lake.add_feature("dbl", lambda b: pc.multiply(b[score], 2.0), inputs=[score], type="float32", progress=False)
    rec = {"name": "c", "step": [{"filter": "column", "column": "dbl", "min": 0.0}]}
    lake.curate(rec, progress=False)
    lake.embed("tiny-random", workers=0, recompute=True, progress=False)
    v = lake.version
    with pytest.raises(LakeError, match=r"reads dbl \(feature\), which is stale: .*re-run it first: lakecurate feature add"):
        lake.curate(rec, progress=False)
    assert lake.version == v
    assert CliRunner().invoke(main, ["feature", "drop", lake.uri, "dbl"]).exit_code == 0
    keep = next(s for s in graph.states(lake) if s.node.columns[0] == "keep")
    assert keep.state == "stale" and "its input dbl is no longer in the table" in " ".join(keep.reasons)


def test_rebalance_and_sequence_refuse_stale_concepts(rebalanced: Lake, tmp_path: Path):
    """New rows embedded and curated after clustering: rebalance kept among the old rows only ("kept
    20 of 40 candidates" with 84 kept) and sequence interleaved the new ones as "no concept", both
    without a word; only export refused, after the decisions were written."""
    src = tmp_path / "more"
    src.mkdir()
    for f in sorted(SAMPLE_DATA.glob("brick*"))[:2]:
        shutil.copy(f, src / f.name)
    rebalanced.ingest(src, progress=False)
    rebalanced.embed("tiny-random", workers=0, progress=False)
    rebalanced.curate(LOOSE, progress=False)
    v = rebalanced.version
    with pytest.raises(LakeError, match=r"rebalance would use stale decisions .*concepts .*lakecurate cluster"):
        rebalanced.rebalance(0.7)
    with pytest.raises(LakeError, match=r"sequence would use stale decisions .*concepts"):
        rebalanced.sequence("interleave", where="keep")
    with pytest.raises(LakeError, match="^score orders a curriculum; mode random does not read it"):
        rebalanced.sequence("random", score="nosuchcolumn")
    assert rebalanced.version == v
    assert rebalanced.rebalance(0.7, allow_stale=True).rows > 0  # as asked, with the warning


def test_run_tells_export_and_report_of_another_branch_or_settings_and_a_default_where(tmp_path: Path):
    """export and report were current when their version number matched: another branch at the same
    version (other rows), another lake's report at the same path, and a changed report title all
    ran nothing. A where left out of [sequence] was not compared with the one the lake's order used."""
    lake = Lake.create(tmp_path / "lake")
    lake.ingest(SAMPLE_DATA, progress=False)
    exp = lake.create_branch("exp")
    pipe = tmp_path / "p.toml"
    pipe.write_text(f'[export]\ndest = "{tmp_path / "shards"}"\nformat = "parquet"\n'
                    f'[report]\nout = "{tmp_path / "r.html"}"\nsample_rows = 50\n')
    assert lake.run(pipe, progress=False).ran == ["export", "report"]
    assert lake.run(pipe, progress=False).ran == []
    assert exp.version == lake.version
    whys = [s.why for s in exp.run(pipe, dry_run=True, progress=False).steps]
    assert whys[0].startswith("the export is of lake") and "(main), not of this one (exp)" in whys[0], whys
    assert "(main), not this one (exp)" in whys[1], whys
    pipe.write_text(pipe.read_text() + 'title = "Ours"\n')
    assert [s.why for s in lake.run(pipe, dry_run=True, progress=False).steps][1] == "title changed (None -> Ours)"
    other = Lake.create(tmp_path / "other")
    other.ingest(SAMPLE_DATA, progress=False)
    assert "not this one" in other.run(pipe, dry_run=True, progress=False).steps[1].why
    # [sequence] without where: the default view (keep), compared with what the lake's order used
    lake.curate({"name": "r", "step": [{"filter": "ingest_error"}]})
    lake.sequence("random", where="width > 0")
    seq = tmp_path / "s.toml"
    seq.write_text('[sequence]\nmode = "random"\n')
    assert lake.run(seq, dry_run=True, progress=False).steps[0].why == "where changed (width > 0 -> keep)"
    assert lake.run(seq, progress=False).ran == ["sequence"] and lake.run(seq, progress=False).ran == []


def test_a_dedup_fix_after_the_embedding_was_made_again_recomputes(sample_lake_embedded: Lake, tmp_path: Path):
    """After `embed --recompute --precision bf16` the semantic groups' fix command was refused as
    "made with another config" (the groups' config names the embedding's), without --recompute."""
    lake = Lake.open(shutil.copytree(sample_lake_embedded.uri, tmp_path / "lake"))
    lake.dedup(["semantic"], semantic_threshold=0.995, progress=False)
    lake.embed("tiny-random", workers=0, batch_size=8, precision="bf16", recompute=True, progress=False)
    st = next(s for s in graph.states(lake) if "dup_semantic_group" in s.node.columns)
    assert st.state == "stale" and st.fix.endswith(" --recompute"), st.fix
    res = CliRunner().invoke(main, shlex.split(st.fix)[1:])
    assert res.exit_code == 0, (st.fix, res.output)
    assert next(s for s in graph.states(lake) if "dup_semantic_group" in s.node.columns).state == "current"


def test_status_fix_lines_pasted_in_order_make_every_stage_current(sample_lake_embedded: Lake, tmp_path: Path):
    """After new rows, status printed one fix a dedup method (`dedup LAKE --method exact`), and dedup
    refused it: its decision reads the other methods' groups, stale too. With a second embedding on
    the lake, the decision's and curate's fixes (`dedup LAKE`, `curate LAKE basic`) were refused as
    "several embeddings". Each printed line, pasted in order, now runs, and every stage is current."""
    lake = Lake.open(shutil.copytree(sample_lake_embedded.uri, tmp_path / "lake"))
    lake.dedup(["exact", "phash", "semantic"], semantic_threshold=0.99, progress=False)
    lake.curate("basic", progress=False)
    lake.embed("tiny-random", name="second", workers=0, batch_size=8, progress=False)  # a second embedding
    more = one_more_copy(tmp_path / "more", "a cat once more on the sofa")
    lake.ingest(more, progress=False)
    runner, ran = CliRunner(), []
    for _ in range(3):  # (a fix can make a later stage stale in turn: status again)
        lines = list(dict.fromkeys(s.fix for s in graph.states(lake) if s.state != "current"))
        if not lines:
            break
        for fix in lines:
            res = runner.invoke(main, ["--no-progress", *shlex.split(fix)[1:]] + (["--workers", "0"] if " embed " in fix else []))
            assert res.exit_code == 0, (fix, res.output)
            ran.append(fix)
    assert {s.node.stage: s.state for s in graph.states(lake) if s.state != "current"} == {}
    dedup = [f for f in ran if " dedup " in f]
    assert len(dedup) == 1 and "--method exact,phash,semantic" in dedup[0] and "--embedding clip_tinyrandom" in dedup[0]
    assert any(" curate " in f and "--set 'embedding=\"clip_tinyrandom\"'" in f for f in ran), ran


def test_a_curriculum_score_no_step_makes_is_refused_before_the_first_step(rebalanced: Lake, tmp_path: Path):
    """sequence refused `score = "no_such_col"` after curate and rebalance had committed."""
    pipe = tmp_path / "p.toml"
    pipe.write_text('[curate]\nrecipe = "basic"\noverrides = {"alignment.min_percentile" = 25}\n'
                    '[sequence]\nmode = "curriculum"\nscore = "no_such_col"\n')
    v = rebalanced.version
    res = CliRunner().invoke(main, ["run", rebalanced.uri, str(pipe)])
    assert res.exit_code == 1 and "score 'no_such_col' is not a column of lake" in res.output
    assert rebalanced.version == v
    pipe.write_text('[sequence]\nmode = "curriculum"\nscore = "-clip_tinyrandom_score"\n')  # the lake has it
    res = CliRunner().invoke(main, ["run", rebalanced.uri, str(pipe)])
    assert res.exit_code == 0, res.output  # the lake has it


def test_a_curriculum_score_an_earlier_step_makes_is_taken(sample_lake_embedded: Lake):
    """The columns a step makes are the ones its stage declares: a curriculum by concept_dist, which
    a cluster step before it makes, passes the check on a lake without concepts; a column no step
    makes does not."""
    from lakecurate.pipeline import check_against_lake

    assert "concept_dist" not in sample_lake_embedded.dataset().schema.names
    for before, score in (({"cluster": {"k": 3}}, "concept_dist"),
                          ({"cluster": {"k": 3}, "rebalance": {"target": 0.5}}, "sample_weight"),
                          ({"curate": {"recipe": "basic"}}, "cap_words")):
        check_against_lake(sample_lake_embedded, load_pipeline(
            {**before, "sequence": {"mode": "curriculum", "score": score}}))
    with pytest.raises(LakeError, match="score 'repeats' is not a column"):
        check_against_lake(sample_lake_embedded, load_pipeline(
            {"cluster": {"k": 3}, "sequence": {"mode": "curriculum", "score": "repeats"}}))


@pytest.mark.parametrize("steps, match", [
    ('[export]\ndest = "{lake}-out"\ncaption = "nope"\n', r"\[export\]: caption column 'nope' is not a column"),
    ('[export]\ndest = "{lake}/inside"\n', r"\[export\]: dest '.*/lake/inside' is inside lake"),
    ('[cluster]\nk = 2\n[rebalance]\nwhere = "nope = 1"\n', r"\[rebalance\]: where 'nope = 1' names nope, which is not"),
    ('[export]\ndest = "{lake}-out"\nwhere = "keep AND nope > 1"\n', r"\[export\]: where .* names nope"),
    ('[sequence]\nmode = "curriculum"\n', r"\[sequence\]: mode = \"curriculum\" orders by a score: add score"),
    ('[cluster]\nk = 2\nembedding = "nope"\n', r"\[cluster\]: embedding 'nope': lake .* has no such embedding"),
])
def test_a_step_the_lake_cannot_serve_is_refused_before_the_first(tmp_path: Path, steps: str, match: str):
    """Each of these failed only when its step came, after ingest (and embed, curate...) had
    committed: a caption column no step makes, an export into the lake, a where naming no column,
    a curriculum without a score, an embedding the lake lacks. Checked on a lake that does not exist
    yet: nothing is made."""
    pipe = tmp_path / "p.toml"
    pipe.write_text(f'[ingest]\nsources = ["{SAMPLE_DATA}"]\n[embed]\nmodel = "tiny-random"\nworkers = 0\n'
                    f'[curate]\nrecipe = "basic"\n' * ("[curate]" not in steps) + steps)
    res = CliRunner().invoke(main, ["run", str(tmp_path / "lake"), str(pipe)])
    assert res.exit_code == 1 and re.search(match, " ".join(res.output.split())), res.output
    assert not (tmp_path / "lake").exists()


def test_a_recipe_that_cannot_tell_two_embeddings_apart_is_refused_first(sample_lake_embedded: Lake, tmp_path: Path):
    """With two embeddings on the lake, [curate] recipe = "basic" was refused by curate, after the
    dedup step before it had committed; the message said to edit the shipped recipe file."""
    lake = Lake.open(shutil.copytree(sample_lake_embedded.uri, tmp_path / "lake"))
    lake.embed("tiny-random", name="other", workers=0, progress=False)
    pipe = tmp_path / "p.toml"
    pipe.write_text('[dedup]\nmethods = ["exact"]\n[curate]\nrecipe = "basic"\n')
    v = lake.version
    with pytest.raises(LakeError, match=r"\[dedup\]: lake .* will have several embeddings \(clip_tinyrandom, other\); "
                                        r"name the one dedup ranks members by: embedding = \"clip_tinyrandom\""):
        lake.run(pipe, progress=False)
    pipe.write_text('[dedup]\nmethods = ["exact"]\nembedding = "other"\n[curate]\nrecipe = "basic"\n')
    with pytest.raises(LakeError, match=r"\[curate\]: recipe basic scores an embedding and lake .* will have several "
                                        r"\(clip_tinyrandom, other\); name one: overrides = \{embedding = "
                                        r"\"clip_tinyrandom\"\} in \[curate\]"):
        lake.run(pipe, progress=False)
    assert lake.version == v
    pipe.write_text('[dedup]\nmethods = ["exact"]\nembedding = "other"\n[curate]\nrecipe = "basic"\n'
                    'overrides = {embedding = "other"}\n')
    assert [s.action for s in lake.run(pipe, progress=False).steps] == ["ran", "ran"]


def test_a_late_error_names_the_file_and_step(sample_lake_embedded: Lake, tmp_path: Path):
    """An error only the stage finds (here: rebalance's target past its candidates) said nothing of
    the file or step that failed."""
    lake = Lake.open(shutil.copytree(sample_lake_embedded.uri, tmp_path / "lake"))
    pipe = tmp_path / "p.toml"
    pipe.write_text('[cluster]\nk = 2\n[rebalance]\ntarget = 100000\n')
    with pytest.raises(LakeError, match=rf"^pipeline {re.escape(str(pipe))}, \[rebalance\]: target 100000 asks for 100000 rows"):
        lake.run(pipe, progress=False)


def test_a_rebalance_count_past_the_candidates_left_is_capped_in_its_fix(sample_lake_embedded: Lake, tmp_path: Path):
    """rebalance --target 100 of 103 candidates, then a stricter recipe left 74: the fix status
    printed replayed --target 100, which rebalance refuses ("outside 1..74"), so pasting it failed."""
    lake = Lake.open(shutil.copytree(sample_lake_embedded.uri, tmp_path / "lake"))
    lake.curate({"name": "loose", "step": [{"filter": "ingest_error"}]}, progress=False)
    lake.cluster(3)
    n = lake.count("keep AND concept IS NOT NULL")
    lake.rebalance(n - 1, progress=False)  # a count
    lake.curate({"name": "strict", "step": [{"filter": "ingest_error"}, {"filter": "caption_length", "min_words": 8}]},
                progress=False)
    left = lake.count("keep AND concept IS NOT NULL")
    assert 0 < left < n - 1
    fix = {s.node.stage: s.fix for s in graph.states(lake)}["rebalance"]
    assert f"--target {left} " in fix, fix
    res = CliRunner().invoke(main, shlex.split(fix)[1:])
    assert res.exit_code == 0, (fix, res.output)
    assert {s.node.stage: s.state for s in graph.states(lake)}["rebalance"] == "current"


def test_diff_where_names_the_side_that_lacks_a_column(rebalanced: Lake):
    """`diff 2 LATEST --where keep` said only "No field named keep", not that version 2 lacks it."""
    with pytest.raises(LakeError, match=r"^where 'keep' cannot select rows of A \(2\)"):
        rebalanced.diff(2, where="keep")
    with pytest.raises(LakeError, match=r"^where_b 'nope' cannot select rows of B"):
        rebalanced.diff(rebalanced.version, where="keep", where_b="nope")


def test_diff_explains_a_custom_condition_by_what_it_reads(rebalanced: Lake):
    """`diff 4 --where-b "width > 320"` (no row that wide) counted the removed rows as "duplicate",
    "rebalance", "recipe: ...": reasons the condition never read; every one is outside it."""
    d = rebalanced.diff(rebalanced.version, where="width >= 0", where_b="width < 0")  # every row, then none
    assert d.rows_b == 0 and d.removed == d.rows_a > 20
    assert d.removed_by == {"outside the view's condition": d.rows_a}
    d = rebalanced.diff(rebalanced.version, where="width >= 0", where_b="keep")  # a decision read still explains
    assert d.removed > 0 and any(k.startswith("recipe: ") for k in d.removed_by), d.removed_by
    d = rebalanced.diff(rebalanced.version, where="keep", where_b="rebalance_keep")
    assert d.removed_by == {"rebalance": d.removed} and d.removed > 0


def test_a_run_waits_for_the_fragments_another_run_computes_now(tmp_path: Path):
    """Two `lakecurate run` of one pipeline at once: the second's embed left the fragments the first
    was computing ("embed ran"), and its curate then failed telling the user to run embed. A step's
    columns are the next steps' inputs, so a run waits for them (and takes over what the other run
    leaves unfilled)."""
    import threading

    from lakecurate import columns
    from lakecurate.embed import embed_stage
    from lakecurate.encoders import resolve

    lake = Lake.create(tmp_path / "lake")
    lake.ingest(SAMPLE_DATA, progress=False)
    key = embed_stage(resolve("tiny-random")).checkpoint_key
    other = columns.FragmentClaims(lake, key)  # another run, computing the lake's one fragment now
    held = [f.fragment_id for f in lake.dataset().get_fragments()]
    assert other.take(held) == (held, {})
    threading.Timer(2.0, other.release).start()  # it ends without filling them
    pipe = {"embed": {"model": "tiny-random", "workers": 0, "batch_size": 8},
            "curate": {"recipe": {"name": "c", "step": [{"filter": "alignment", "min": -1.0}]}}}
    rep = lake.run(pipe, progress=False)
    assert [s.action for s in rep.steps] == ["ran", "ran"]
    assert not columns.fragments_to_fill(lake.dataset(), "clip_tinyrandom_image")
    assert lake.count("keep IS NULL") == 0


def test_a_report_into_an_object_store_is_refused_before_the_first_step(tmp_path: Path):
    """It was refused by the report step itself, after ingest, embed and curate had committed."""
    lake = Lake.create(tmp_path / "lake")
    pipe = {"ingest": {"sources": [str(SAMPLE_DATA)]}, "report": {"out": "s3://bucket/report.html"}}
    with pytest.raises(LakeError, match=r"\[report\]: out = 's3://bucket/report.html': the report is a local HTML file"):
        lake.run(pipe, progress=False)
    assert lake.count() == 0


def test_a_run_brings_a_stale_producer_the_file_does_not_list_up_to_date(sample_lake_embedded: Lake, tmp_path: Path):
    """A file with [embed] and [curate] but no [dedup], whose recipe reads dedup's groups: after a
    caption fixed in place, embed ran again, then curate stopped ("reads dup_keep ... (dedup), which
    is stale"), every run: the file had no step to run the fix. Like make, the run brings a stale
    producer that a listed step reads up to date itself (a step of its own in the report, saying
    why), with the settings the lake records; a dry run says it would."""
    lake = Lake.open(shutil.copytree(sample_lake_embedded.uri, tmp_path / "lake"))
    recipe = tmp_path / "r.toml"
    recipe.write_text('name = "r"\n[[step]]\nfilter = "ingest_error"\n[[step]]\nfilter = "duplicate"\n')
    pipe = tmp_path / "p.toml"
    pipe.write_text(f'[embed]\nmodel = "tiny-random"\nworkers = 0\n[curate]\nrecipe = "{recipe}"\n')
    assert lake.run(pipe, progress=False).ran == ["curate"]  # (curate has dedup group the rows first)
    dedup_cfg = {s.node.columns[0]: s.node.prov["config"] for s in graph.states(lake) if s.node.stage == "dedup"}
    lance.dataset(lake.table_uri).update({"caption": "'a red brick wall'"}, where="key = 'brick.jpg'")
    dry = lake.run(pipe, dry_run=True, progress=False)
    assert [(s.step, s.action) for s in dry.steps] == [("embed", "would run"), ("dedup", "would run"),
                                                       ("curate", "would run")], dry.steps
    assert "not in the file" in dry.steps[1].why and "curate reads" in dry.steps[1].why, dry.steps[1].why
    rep = lake.run(pipe, progress=False)
    assert rep.ran == ["embed", "dedup", "curate"], rep.steps
    assert "not in the file" in rep.steps[1].why and rep.steps[1].versions, rep.steps[1]
    assert all(s.state == "current" for s in graph.states(lake)), lake.status()
    again = {s.node.columns[0]: s.node.prov["config"] for s in graph.states(lake) if s.node.stage == "dedup"}
    assert again.keys() == dedup_cfg.keys()  # the same methods, with the settings they had
    for col, cfg in dedup_cfg.items():
        assert {k: v for k, v in again[col].items() if k != "version"} == \
            {k: v for k, v in cfg.items() if k != "version"}, col
    assert lake.run(pipe, progress=False).ran == []
    res = CliRunner().invoke(main, ["run", lake.uri, str(pipe), "--json"])
    assert res.exit_code == 0 and [s["step"] for s in json.loads(res.stdout)["steps"]] == ["embed", "curate"]


def test_a_run_brings_dedup_up_to_date_when_new_rows_have_no_hashes_yet(sample_lake_embedded: Lake, tmp_path: Path):
    """The same file the day new photos arrive: the run's dedup (not in the file) regrouped only the
    stale methods (exact), then refused: "would decide dup_keep from the stored phash groups too,
    and dedup (dup_phash_group) is behind: its input phash ... is incomplete", every run from then
    on (a probe's day 2). The methods only behind run too: dedup computes the hashes they read."""
    lake = Lake.open(shutil.copytree(sample_lake_embedded.uri, tmp_path / "lake"))
    recipe = tmp_path / "r.toml"
    recipe.write_text('name = "r"\n[[step]]\nfilter = "ingest_error"\n[[step]]\nfilter = "duplicate"\n')
    pipe = tmp_path / "p.toml"
    pipe.write_text(f'[embed]\nmodel = "tiny-random"\nworkers = 0\n[curate]\nrecipe = "{recipe}"\n')
    assert lake.run(pipe, progress=False).ran == ["curate"]
    methods = {s.node.columns[0] for s in graph.states(lake) if s.node.stage == "dedup"}
    assert "dup_phash_group" in methods, methods
    day2 = tmp_path / "day2"
    day2.mkdir()
    for name in ("coffee", "rocket"):  # a copy of a photo the lake has, under another name
        shutil.copy(SAMPLE_DATA / f"{name}.jpg", day2 / f"{name}_again.jpg")
        (day2 / f"{name}_again.txt").write_text(f"a photo of a {name}, again")
    lake.ingest(day2, progress=False)
    rep = lake.run(pipe, progress=False)
    assert rep.ran == ["embed", "dedup", "curate"], rep.steps
    assert all(s.state == "current" for s in graph.states(lake)), lake.status()
    assert {s.node.columns[0] for s in graph.states(lake) if s.node.stage == "dedup"} == methods
    got = lake.sql("SELECT key, dup_keep, dup_group FROM pairs WHERE key IN ('coffee.jpg', 'coffee_again.jpg') ORDER BY key")
    assert got["dup_keep"].tolist() == [True, False] and got["dup_group"].nunique() == 1, got  # the copy joined its photo
    assert lake.run(pipe, progress=False).ran == []


def test_a_run_that_ingests_nothing_new_names_the_error_rows_it_skipped(tmp_path: Path):
    """Plain ingest says "2 of them errors: re-run with --retry-errors"; the run said only "no new
    pairs", the two broken files of sample_data out of sight, every day."""
    lake = Lake.create(tmp_path / "lake")
    pipe = {"ingest": {"sources": [str(SAMPLE_DATA)]}}
    assert lake.run(pipe, progress=False).ran == ["ingest"]
    step = lake.run(pipe, progress=False).steps[0]
    assert (step.action, step.why) == ("skipped", "no new pairs; 2 of those seen are error rows: set retry_errors = true "
                                                  "in [ingest] to read them again (after fixing the cause)"), step
    fixed = lake.run({"ingest": {"sources": [str(SAMPLE_DATA)], "retry_errors": True}}, progress=False).steps[0]
    assert fixed.why.startswith("no new pairs") and "error rows" not in fixed.why, fixed  # (read again: still broken)


def test_a_run_killed_while_replacing_its_columns_leaves_them_listed_and_export_refuses(rebalanced: Lake, tmp_path: Path,
                                                                                        monkeypatch):
    """A decision made again with another config drops its columns, then declares them again, then
    writes them. Killed between the drop and the declare, the set was gone with its record (the
    drop forgot it first): status listed every stage current, and export shipped table order
    (seq_order gone) or every row (keep gone) without a word. The record stays until the columns are
    declared again: status lists the set dropped by a run that did not finish, and export refuses."""
    lake = rebalanced
    lake.sequence("random", seed=0, shard_size=4)
    real = lance.LanceDataset.add_columns

    def killed(self, *args, **kwargs):
        raise KeyboardInterrupt  # (kill -9 between the drop and the declare)

    monkeypatch.setattr(lance.LanceDataset, "add_columns", killed)
    with pytest.raises(KeyboardInterrupt):
        lake.sequence("random", seed=3, shard_size=4)
    monkeypatch.setattr(lance.LanceDataset, "add_columns", real)
    assert "seq_order" not in lake.dataset().schema.names
    st = next(s for s in lake.status()["stages"] if s["stage"] == "sequence")
    assert st["state"] == "dropped" and "did not finish" in st["reasons"][0], st
    assert st["fix"].startswith(f"lakecurate sequence {lake.uri} --mode random"), st
    with pytest.raises(LakeError, match=r"export would write rows in table order.*sequence .*dropped.*re-run it: "
                                        r"lakecurate sequence"):
        lake.export(tmp_path / "x.parquet", "parquet")
    rep = lake.export(tmp_path / "y.parquet", "parquet", allow_stale=True)
    assert any("sequence" in w for w in rep.stale), rep.stale
    lake.sequence("random", seed=3, shard_size=4)
    assert {s["stage"]: s["state"] for s in lake.status()["stages"]}["sequence"] == "current"
    from lakecurate.columns import REPLACING_KEY, node_records

    assert not [p for p in node_records(lake.dataset()).values() if p.get(REPLACING_KEY)]  # (the run's record replaced it)
    lake.export(tmp_path / "z.parquet", "parquet")
    # the same for curate's keep: another recipe (no signal to compute first) killed at the same point
    monkeypatch.setattr(lance.LanceDataset, "add_columns", killed)
    with pytest.raises(KeyboardInterrupt):
        lake.curate({"name": "other", "step": [{"filter": "ingest_error"}]}, progress=False)
    monkeypatch.setattr(lance.LanceDataset, "add_columns", real)
    st = next(s for s in lake.status()["stages"] if s["stage"] == "curate")
    assert st["state"] == "dropped" and "did not finish" in st["reasons"][0], st
    with pytest.raises(LakeError, match="would choose rows without the curated decision"):
        lake.export(tmp_path / "w.parquet", "parquet")


def test_every_edited_dedup_option_reruns_dedup(sample_lake_embedded: Lake, tmp_path: Path):
    """A hostile tester's: after a run, an edited [dedup] keep_from, flips, confirm_* or embedding
    said "dedup current" (only the thresholds and searches were compared): dup_keep stayed decided
    by the other methods, semantic groups stayed built from another embedding. Each now re-runs
    dedup: a method's setting regroups that method, keep_from alone decides again."""
    lake = Lake.open(shutil.copytree(sample_lake_embedded.uri, tmp_path / "lake"))
    pipe = tmp_path / "p.toml"

    def run(extra: str) -> Any:
        pipe.write_text(f'[dedup]\nsemantic_threshold = 0.99\n{extra}')
        rep = lake.run(pipe, progress=False)
        assert lake.run(pipe, progress=False).ran == []  # and then current
        return rep

    def config(column: str) -> dict[str, Any]:
        return {c: s for s in graph.states(lake) for c in s.node.columns}[column].node.prov["config"]

    def not_kept() -> int:
        return int(lake.sql("SELECT COUNT(*) AS n FROM pairs WHERE NOT dup_keep")["n"][0])

    run('methods = ["exact", "phash", "semantic"]\n')
    assert config("dup_keep")["keep_from"] == ["exact", "phash", "semantic"]
    alone = Lake.open(shutil.copytree(lake.uri, tmp_path / "alone"))
    alone.dedup(["exact"], keep_from=["exact"], progress=False)
    rep = run('methods = ["exact"]\nkeep_from = ["exact"]\n')
    assert rep.ran == ["dedup"] and rep.steps[0].why == "keep_from changed"
    assert config("dup_keep")["keep_from"] == ["exact"]
    assert not_kept() == int(alone.sql("SELECT COUNT(*) AS n FROM pairs WHERE NOT dup_keep")["n"][0])
    for extra, why in [("flips = false\n", "flips, keep_from changed"), ("flips = false\nconfirm_distance = 4\n", "confirm_distance changed"),
                       ("flips = false\nconfirm_distance = 4\nconfirm_cosine = 0.5\n", "confirm_cosine changed")]:
        rep = run(f'methods = ["exact", "phash", "semantic"]\n{extra}')
        assert rep.ran == ["dedup"] and rep.steps[0].why == why, rep.steps
    assert config("dup_phash_group")["flips"] is False and config("dup_semantic_group")["flips"] is False
    assert config("dup_semantic_group")["confirm_distance"] == 4
    assert config("dup_semantic_group")["confirm_cosine"] == 0.5
    lake.embed("tiny-random", name="other", workers=0, progress=False)
    rep = run('methods = ["exact", "phash", "semantic"]\nflips = false\nconfirm_distance = 4\nconfirm_cosine = 0.5\n'
              'embedding = "other"\n')
    assert rep.ran == ["dedup"] and rep.steps[0].why == "embedding changed", rep.steps
    assert config("dup_semantic_group")["embedding"] == "other"
    assert config("dup_keep")["rank_by"] == "other_score"
    assert {s.state for s in graph.states(lake) if s.node.stage == "dedup"} == {"current"}


def _refused_at_load(tmp_path: Path, cases: dict[str, str]) -> Path:
    """Each file text (-> its message) refused when the file is loaded and by `lakecurate run`, in one
    line; returns the file's path."""
    pipe = tmp_path / "p.toml"
    for text, msg in cases.items():
        pipe.write_text(text)
        with pytest.raises(LakeError, match=re.escape(msg)):
            load_pipeline(pipe)
        res = CliRunner().invoke(main, ["run", str(tmp_path / "lake"), str(pipe)])
        assert res.exit_code == 1 and msg in res.output and res.output.count("\n") == 1, res.output
    return pipe


def test_options_that_make_a_step_write_nothing_are_refused(tmp_path: Path):
    """[curate] dry_run = true was taken: every run then said "curate ran" (the recipe changed) and
    wrote nothing, forever; [embed] max_fragments = 0 likewise. A name that is not text (a table)
    was stringified."""
    pipe = _refused_at_load(tmp_path, {
        '[curate]\nrecipe = "basic"\ndry_run = true\n': "[curate]: dry_run = true is not an option of a pipeline",
        '[embed]\nmodel = "offline"\nmax_fragments = 0\n': "[embed]: max_fragments = 0 is not an option of a pipeline",
        'name = {a = 1}\n[embed]\nmodel = "offline"\n': "name = {'a': 1} must be text",
    })
    pipe.write_text('name = "mine"\n[curate]\nrecipe = "basic"\ndry_run = false\n')
    assert load_pipeline(pipe).name == "mine"


def test_a_refused_ingest_source_creates_no_lake(tmp_path: Path):
    """`lakecurate run NEWLAKE` whose [ingest] source is refused (a folder as a manifest, a CSV
    without an image column) created an empty lake before the error; `lakecurate ingest` with the
    same arguments creates nothing, and so does the run now."""
    csv = tmp_path / "m.csv"
    csv.write_text("secret\nx\n")
    pipe = tmp_path / "p.toml"
    for text, msg in {f'sources = ["{SAMPLE_DATA}"]\nkind = "manifest"\n': "is a folder, not a manifest file",
                      f'sources = ["{csv}"]\n': "cannot tell which column holds the image path"}.items():
        pipe.write_text(f'[ingest]\n{text}[embed]\nmodel = "offline"\n')
        res = CliRunner().invoke(main, ["run", str(tmp_path / "lake"), str(pipe)])
        assert res.exit_code == 1 and "[ingest]: " in res.output and msg in res.output, res.output
        assert not (tmp_path / "lake").exists()


@pytest.mark.parametrize("steps, match", [
    ('[cluster]\nk = 3\n', r"\[cluster\]: lake .* has no embedding and no step before it makes one; add an \[embed\] "
                           r"step, such as model = \"offline\" \(concepts cluster the image embeddings\)"),
    ('[dedup]\nmethods = ["semantic"]\n', r"\[dedup\]: lake .* has no embedding and no step before it makes one.*"
                                          r"semantic, caption and verify dedup need them"),
    ('[dedup]\nmethods = ["phash"]\nphash_search = "clusters"\n', r"\[dedup\]: .* has no embedding .*--phash-search clusters"),
    ('[rebalance]\ntarget = 0.5\n', r"\[rebalance\]: lake .* has no concepts and no step before it makes them; add a "
                                    r"\[cluster\] step"),
    ('[curate]\nrecipe = "basic"\n', r"\[curate\]: lake .* has no embedding .*\(the alignment step needs them\)"),
    ('[embed]\nmodel = "tiny-random"\nworkers = 0\n[curate]\nrecipe = "r.toml"\n#sql\n',
     r"\[curate\]: recipe .*r.toml, step 1 \(sql\): where = 'nosuchcol > 3' names nosuchcol, which is not a column of lake"),
    ('[embed]\nmodel = "tiny-random"\nworkers = 0\n[curate]\nrecipe = "r.toml"\n#column\n',
     r"\[curate\]: recipe .*r.toml, step 1 \(column\): lake .* has no column 'nosuchcol'"),
    ('[embed]\nmodel = "tiny-random"\nworkers = 0\ncaption_col = "caption_nosuch"\n',
     r"\[embed\]: caption_col 'caption_nosuch' is not a text column of lake"),
    ('[embed]\nmodel = "tiny-random"\nworkers = 0\n[export]\ndest = "precious"\n',
     r"\[export\]: '.*precious' is not an earlier lakecurate webdataset export"),
    ('[report]\nout = "precious"\n', r"\[report\]: report: '.*precious' is a folder; give the HTML file to write"),
])
def test_a_step_its_stage_would_refuse_is_refused_before_anything_is_written(tmp_path: Path, steps: str, match: str):
    """Each was refused by its stage only when its step came, after the lake was created and ingest
    (and embed) had committed: clustering, semantic dedup or an aligning recipe with no embedding,
    rebalance with no concepts, a recipe step naming no column (the sql one as a raw 'Schema error:
    No field named ...'), a caption column the lake lacks, an export or report into a folder of
    other files (the dry run said "would run, not exported yet")."""
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "thesis.txt").write_text("mine")
    kind = "sql" if "#sql" in steps else "column"
    (tmp_path / "r.toml").write_text('name = "r"\n[[step]]\n' + ('filter = "sql"\nwhere = "nosuchcol > 3"\n' if kind == "sql"
                                                                 else 'filter = "column"\ncolumn = "nosuchcol"\nmin = 3\n'))
    pipe = tmp_path / "p.toml"
    pipe.write_text(f'[ingest]\nsources = ["{SAMPLE_DATA}"]\n' + steps)
    for dry in ([], ["--dry-run"]):
        res = CliRunner().invoke(main, ["run", str(tmp_path / "lake"), str(pipe), *dry])
        assert res.exit_code == 1 and re.search(match, " ".join(res.output.split())), res.output
        assert "Schema error" not in res.output and "Traceback" not in res.output
        assert not (tmp_path / "lake").exists()
    assert (tmp_path / "precious" / "thesis.txt").read_text() == "mine"


def test_steps_the_lake_or_an_earlier_step_serves_pass_the_checks(sample_lake_embedded: Lake, tmp_path: Path):
    """What the lake has, or a step before makes, is no refusal: a recipe step on the embedding an
    [embed] step makes (checked when curate runs) or on a signal curate computes, rebalance after
    [cluster], semantic dedup on the lake's embedding; on a lake, the refusals hold and nothing is
    written."""
    from lakecurate.pipeline import check_against_lake

    recipe = {"name": "r", "step": [{"filter": "column", "column": "clip_tinyrandom_score", "min": 0},
                                    {"filter": "sql", "where": "cap_words > 0 AND clip_tinyrandom_score > -1"}]}
    new = Lake(str(tmp_path / "new"))
    check_against_lake(new, load_pipeline({"ingest": {"sources": [str(SAMPLE_DATA)]},
                                           "embed": {"model": "tiny-random"}, "curate": {"recipe": recipe},
                                           "cluster": {"k": 2}, "rebalance": {"target": 0.5}}), exists=False)
    assert not new.exists()
    lake = Lake.open(shutil.copytree(sample_lake_embedded.uri, tmp_path / "lake"))
    check_against_lake(lake, load_pipeline({"curate": {"recipe": recipe}, "cluster": {"k": 2},
                                            "dedup": {"methods": ["semantic"]}}))
    v = lake.version
    for pipe, match in (({"rebalance": {"target": 0.5}}, r"\[rebalance\]: lake .* has no concepts"),
                        ({"curate": {"recipe": {"name": "r", "step": [{"filter": "sql", "where": "nosuchcol > 3"}]}}},
                         r"step 1 \(sql\): where = 'nosuchcol > 3' names nosuchcol"),
                        ({"embed": {"model": "tiny-random", "caption_col": "width"}}, r"\[embed\]: caption_col 'width' is not a text")):
        with pytest.raises(LakeError, match=match):
            lake.run(pipe, progress=False)
    assert lake.version == v


def test_embed_recompute_and_curate_code_are_not_options_of_a_file(tmp_path: Path):
    """[embed] recompute = true embedded every row again on every run of the file; [curate] code
    (what the facade passes curate: the code this lakecurate computes with) was taken from a file."""
    pipe = _refused_at_load(tmp_path, {
        '[embed]\nmodel = "offline"\nrecompute = true\n':
            "[embed]: recompute = true is not an option of a pipeline: with it every run of the file embeds every "
            "row again; embed again once with `lakecurate embed LAKE --model MODEL --recompute`, then run the file",
        '[curate]\nrecipe = "basic"\ncode = {x = {y = 1}}\n': "[curate]: unknown option(s) code; valid:",
    })
    pipe.write_text('[embed]\nmodel = "offline"\nrecompute = false\n')
    assert load_pipeline(pipe).steps["embed"]["recompute"] is False


def test_info_documents_every_column_the_stages_write(rebalanced: Lake):
    """Whoever opens the shared table (lakecurate info, LanceDB users reading it) learns what each
    decision and signal column holds: they had no doc, only the source columns did."""
    lake = rebalanced
    lake.sequence(progress=False)
    lake.dedup(["exact", "phash", "copy"], progress=False)  # (the signals it needs, the groups, the decision)
    lake.signals(["caption", "redact"], workers=0)
    lake.add_feature("n_chars", scaled_len, inputs=["caption"], type="int64", progress=False)
    lake.recaption("tiny-random-coca", workers=0, progress=False)
    docs = {c["name"]: c["doc"] for c in lake.info()["columns"]}
    assert {"keep", "rebalance_keep", "seq_order", "dup_keep", "dup_phash_group", "copy_hashes", "cap_emails",
            "caption_redacted", "n_chars", "caption_tinycoca"} <= set(docs)
    assert not [n for n, d in docs.items() if not d], docs
    assert docs["clip_tinyrandom_score"].startswith("embed: alignment") and "caption" in docs["n_chars"]
    res = CliRunner().invoke(main, ["info", lake.uri, "--json"])
    assert res.exit_code == 0 and json.loads(res.output)["columns"][-1]["doc"], res.output


def test_a_run_stops_where_another_writer_replaced_the_keep_its_curate_wrote(sample_lake_embedded: Lake, tmp_path: Path):
    """Another person's curate (another recipe) landed between this run's curate and its cluster:
    the run built cluster, rebalance and sequence on their keep, exited 0 and reported its own
    curate's tag. Now it stops before the next step, naming what happened (and keeps what it wrote)."""
    lake = Lake.open(shutil.copytree(sample_lake_embedded.uri, tmp_path / "lake"))
    (tmp_path / "loose.toml").write_text('name = "loose"\n[[step]]\nfilter = "ingest_error"\n[[step]]\n'
                                         'filter = "caption_missing"\n')
    pipe = tmp_path / "p.toml"
    pipe.write_text('[curate]\nrecipe = "loose.toml"\n[cluster]\nk = 3\n[rebalance]\ntarget = 0.7\n[sequence]\nmode = "random"\n')
    done: list[str] = []

    def another_curate_meanwhile(step) -> None:
        done.append(step.step)
        if step.step == "curate":
            Lake.open(lake.uri).curate(STRICT, progress=False)  # (another process, another recipe)

    with pytest.raises(LakeError, match=r"another writer replaced keep after this run's \[curate\] wrote it "
                                        r"\(curate 'loose', .*now with curate 'strict'.*stopped before \[cluster\]"):
        lake.run(pipe, progress=False, on_step=another_curate_meanwhile)
    assert done == ["curate"]
    assert "rebalance_keep" not in lake.dataset().schema.names
    # run again: it decides again (the keep is not the file's recipe's) and goes on
    again = lake.run(pipe, progress=False)
    assert again.ran == ["curate", "cluster", "rebalance", "sequence"]


def test_a_pipeline_given_as_a_dict_takes_numpy_values(sample_lake_embedded: Lake, tmp_path: Path):
    """lake.run({...}) refused np.False_ ("must be true or false") and np.int64(3) ("must be a whole
    number"), which the Lake methods take."""
    import numpy as np

    lake = Lake.open(shutil.copytree(sample_lake_embedded.uri, tmp_path / "lake"))
    rep = lake.run({"embed": {"model": "tiny-random", "recompute": np.False_, "batch_size": np.int64(8)},
                    "cluster": {"k": np.int64(3)}})
    assert [s.action for s in rep.steps] == ["skipped", "ran"], rep.steps
    assert lake.sql("SELECT count(DISTINCT concept) AS n FROM pairs WHERE concept IS NOT NULL")["n"][0] == 3
    with pytest.raises(LakeError, match="k = 'x' must be a whole number"):
        lake.run({"cluster": {"k": "x"}})


def _demo_of(folder: Path, tmp_path: Path, cluster: str) -> Path:
    """The demo's steps over ``folder``, its [cluster] step ``cluster`` (TOML lines)."""
    pipe = tmp_path / f"{folder.name}.toml"
    pipe.write_text(f'[ingest]\nsources = ["{folder}"]\n[embed]\nmodel = "offline"\n'
                    f'[dedup]\nmethods = ["exact", "phash", "semantic"]\n[curate]\nrecipe = "basic"\n'
                    f'[cluster]\n{cluster}\n[rebalance]\ntarget = 0.6\n')
    return pipe


def test_the_demo_on_no_rows_or_one_row_stops_with_advice_that_can_be_followed(tmp_path: Path):
    """An empty folder: the demo stopped at [cluster] with "no rows with an embedding; run:
    lakecurate embed" (its own embed step had run). One row: "[cluster]: choose -k up to 1",
    and k = 1 is refused (k >= 2)."""
    (tmp_path / "empty").mkdir()
    lake = Lake.create(tmp_path / "lake_empty")
    with pytest.raises(LakeError, match=r"\[dedup\]: lake '.*' has no rows; ingest some: lakecurate ingest .* SOURCE$"):
        lake.run(_demo_of(tmp_path / "empty", tmp_path, "k = 3"), progress=False)
    (tmp_path / "one").mkdir()
    for ext in (".jpg", ".txt"):
        shutil.copy(SAMPLE_DATA / f"astronaut{ext}", tmp_path / "one")
    lake = Lake.create(tmp_path / "lake_one")
    with pytest.raises(LakeError, match=r"\[cluster\]: k 3 asks .* \(1\); k needs at least 2 embedded rows: leave k "
                                        r"out .* a \[cluster\] step without k") as err:
        lake.run(_demo_of(tmp_path / "one", tmp_path, "k = 3"), progress=False)
    assert "up to 1" not in str(err.value)
    rep = lake.run(_demo_of(tmp_path / "one", tmp_path, "seed = 0"), progress=False)  # (the advice, followed)
    assert [s.step for s in rep.steps][-2:] == ["cluster", "rebalance"] and lake.count("concept = 0") == 1
