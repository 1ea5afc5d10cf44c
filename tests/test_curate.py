"""Recipes: parsing, decisions with reasons, tags, no-op re-runs; planted junk on Flickr8k."""

from __future__ import annotations

import json
import re
from dataclasses import asdict
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import lance
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from click.testing import CliRunner
from PIL import Image

from lakecurate import Lake, LakeError, columns, signals
from lakecurate.cli import main
from lakecurate.columns import field_provenance
from lakecurate.curate import FILTERS, load_recipe
from lakecurate.plant import first_captions, plant_junk

from .conftest import REPO, SAMPLE_DATA, one_more_copy, pair_rows
from .curate_reference import explain_one_frame, judge_one_frame
from .writers import spawn

RECIPE = """
name = "sample"

[[step]]
filter = "ingest_error"

[[step]]
filter = "caption_missing"

[[step]]
filter = "caption_filename"
reason = "file_name_caption"

[[step]]
filter = "pii"

[[step]]
filter = "duplicate"

[[step]]
filter = "alignment"
min_percentile = 10

[privacy]
redact = true
"""


def stem(key: str) -> str:
    return Path(key).stem


@pytest.fixture
def lake_copy(sample_lake_embedded: Lake, tmp_path: Path) -> Lake:
    return Lake.open(shutil.copytree(sample_lake_embedded.uri, tmp_path / "lake"))


def test_recipe_on_sample_data(lake_copy: Lake, tmp_path: Path):
    lake = lake_copy
    path = tmp_path / "sample.toml"
    path.write_text(RECIPE)
    rep = lake.curate(path, progress=False)
    df = lake.to_pandas(["key", "caption", "keep", "drop_reason", "caption_redacted", "dup_keep", "clip_tinyrandom_score"])
    df["key"] = df["key"].map(stem)
    rows = df.set_index("key")
    assert rows.loc["gravel_truncated", "drop_reason"] == "ingest_error"
    assert rows.loc["notes_not_an_image", "drop_reason"] == "ingest_error"
    assert rows.loc["horse_no_caption", "drop_reason"] == "caption_missing"
    assert rows.loc["brick_empty_caption", "drop_reason"] == "caption_missing"
    assert rows.loc["grass_filename_caption", "drop_reason"] == "file_name_caption"  # the step's own reason
    assert rows.loc["coins_privacy", "drop_reason"] == "pii"
    assert "[email]" in rows.loc["coins_privacy", "caption_redacted"] and "@" in rows.loc["coins_privacy", "caption"]
    assert (df["keep"] == df["drop_reason"].isna()).all()
    dropped_dups = df[df["drop_reason"] == "duplicate"]
    assert len(dropped_dups) >= 1 and (dropped_dups["dup_keep"] == False).all()  # noqa: E712
    # the first failing step names the row: a duplicate that also has no caption says caption_missing
    assert rep.dropped == {r: int((df["drop_reason"] == r).sum()) for r in rep.dropped}
    assert list(rep.dropped) == ["ingest_error", "caption_missing", "file_name_caption", "pii", "duplicate", "alignment"]
    assert rep.kept == int(df["keep"].sum()) and rep.rows == len(df)
    # the alignment step drops rows under the 10th percentile of all scores in the lake
    scores = df["clip_tinyrandom_score"].dropna()
    cut = np.percentile(scores, 10)
    assert (df.loc[df["drop_reason"] == "alignment", "clip_tinyrandom_score"] < cut).all()
    # provenance and the tag: the exact set reopens at that version
    prov = field_provenance(lake.dataset().schema.field("keep"))
    assert prov["stage"] == "curate" and prov["config"]["hash"] == rep.recipe_hash
    assert rep.tag == f"sample-{rep.recipe_hash}-v{rep.version}" and rep.tag in lake.dataset().tags.list()
    kept_then = set(lake.sql("SELECT id FROM pairs WHERE keep", version=rep.tag)["id"])
    # the same recipe again: no work, the same tag
    version = lake.version
    again = lake.curate(path, progress=False)
    assert again.nothing_to_do and again.tag == rep.tag and lake.version == version
    assert again.dropped == rep.dropped and again.kept == rep.kept
    # another recipe replaces keep/drop_reason; the first result stays reachable by its tag
    other = lake.curate({"name": "lenient", "step": [{"filter": "ingest_error"}]}, progress=False)
    assert other.kept == len(df) - 2
    assert set(lake.sql("SELECT id FROM pairs WHERE keep", version=rep.tag)["id"]) == kept_then
    assert field_provenance(lake.dataset().schema.field("keep"))["config"]["recipe"]["name"] == "lenient"


def test_a_stale_curation_in_use_is_named_so(lake_copy: Lake, tmp_path: Path):
    """With no current decision, the view falls back to the stale keep: the note says it is used."""
    lake = lake_copy
    path = tmp_path / "sample.toml"
    path.write_text(RECIPE)
    lake.curate(path, progress=False)
    lake.dedup(["exact"], keep_from=["exact"], progress=False)  # dup_keep rewritten after curate read it
    st = lake.status()
    assert st["view"] == "keep"
    assert len(st["view_notes"]) == 1 and st["view_notes"][0].startswith("keep used though no decision is current: "
                                                                           "curate is stale (dup_keep was written")
    res = CliRunner().invoke(main, ["diff", lake.uri, "1"])
    assert "keep used though no decision is current" in res.output and "skipped" not in res.output, res.output


def test_a_stale_view_names_the_upstream_fix_first(lake_copy: Lake, tmp_path: Path):
    """New rows not embedded: the note named dedup's (or curate's) command, which reads the rows'
    missing vectors, not the embed that fills them first."""
    lake = lake_copy
    path = tmp_path / "sample.toml"
    path.write_text(RECIPE)
    lake.curate(path, progress=False)
    extra = tmp_path / "extra"
    extra.mkdir()
    for i, color in enumerate([(10, 200, 30), (240, 240, 10)]):
        Image.new("RGB", (64, 48), color).save(extra / f"new{i}.png")
        (extra / f"new{i}.txt").write_text(f"a new picture number {i}")
    lake.ingest(extra, progress=False)
    note = lake.status()["view_notes"][-1]
    assert "embed before it is incomplete" in note and "run first: lakecurate embed " in note, note
    assert note.index("--model tiny-random") < note.index("then: "), note
    res = CliRunner().invoke(main, ["diff", lake.uri, "1"])
    assert "run first: lakecurate embed " in res.output, res.output


def test_stale_signals_are_computed_again_and_stale_groups_refused(lake_copy: Lake):
    """A caption updated in place (Lance itself) after curate: curate decided again on the row's old
    word count (signals filled were never looked at again) and tagged it; dedup groups of rows
    rewritten since were used as they were. Now the signals are computed again, and stale groups
    are refused with the command that redoes them, before anything is written."""
    lake = lake_copy
    words = {"name": "w", "step": [{"filter": "caption_length", "min_words": 3, "max_words": 100}]}
    lake.curate(words, progress=False)
    key = lake.to_pandas(["key"], where="keep", limit=1)["key"][0]
    lance.dataset(lake.table_uri).update({"caption": "'one'"}, where=f"key = '{key}'")
    rep = lake.curate(words, progress=False)
    assert "caption signals" in rep.computed
    row = lake.to_pandas(["keep", "drop_reason", "cap_words"], where=f"key = '{key}'")
    assert (bool(row["keep"][0]), row["drop_reason"][0], row["cap_words"][0]) == (False, "caption_length", 1)
    assert {s["stage"]: s["state"] for s in lake.status()["stages"]}["signals-caption"] == "current"

    dup = {"name": "d", "step": [{"filter": "duplicate"}]}
    # dedup's decision ranks a group by the embedding's score, which the caption changed: the
    # embedding is stale too (its text vector and score), computed again first
    with pytest.raises(LakeError, match=r"reads .*\(embed\), which is stale: caption was rewritten"):
        lake.curate(dup, progress=False)
    lake.embed("tiny-random", progress=False)
    with pytest.raises(LakeError, match=r"\(dedup\), which is stale: clip_tinyrandom_score was written") as err:
        lake.curate(dup, progress=False)  # (the score that ranks its groups is new)
    fix = str(err.value).rsplit("re-run it first: ", 1)[1]
    assert CliRunner().invoke(main, shlex.split(fix)[1:]).exit_code == 0
    lake.curate(dup, progress=False)
    # (a merge insert, which Lance records as writing every column of the rows it moves: their image
    # signals too; an update records the columns it sets, and the others' values moved unchanged)
    lance.dataset(lake.table_uri).merge_insert("key").when_matched_update_all().execute(
        pa.table({"key": [key], "caption": ["two words"]}))
    v = lake.version
    with pytest.raises(LakeError, match=r"recipe <dict> reads .*, which is stale: .*; re-run these first: "
                                        r"lakecurate embed \S+ .*; then lakecurate signals \S+; then lakecurate dedup "):
        lake.curate(dup, progress=False)
    assert lake.version == v
    res = CliRunner().invoke(main, ["curate", lake.uri, "basic", "--dry-run"])
    assert res.exit_code == 1 and "which is stale" in res.output, res.output


def test_dedup_has_stale_hashes_computed_again(lake_copy: Lake):
    """Hashes of rows rewritten since (a caption updated in place moves the row with its old
    hashes): dedup's producer filled only missing hashes and grouped by the old ones. They are
    computed again, and only those: the moved row's fragment (Lance gave it one of its own)."""
    lake = lake_copy
    lake.dedup(["phash"], keep_from=["phash"], progress=False)
    key = lake.to_pandas(["key"], limit=1)["key"][0]
    lance.dataset(lake.table_uri).update({"caption": "'moved'"}, where=f"key = '{key}'")
    # (an update records the columns it sets: the row's hashes moved with it unchanged, and current)
    assert {s["stage"]: s["state"] for s in lake.status()["stages"]}["signals-image"] == "current"
    # a merge insert records every column of the rows it moves as written: their hashes are stale
    lance.dataset(lake.table_uri).merge_insert("key").when_matched_update_all().execute(
        pa.table({"key": [key], "caption": ["moved again"]}))
    states = {s["stage"]: s["state"] for s in lake.status()["stages"]}
    assert states["signals-image"] == "stale"
    rep = lake.dedup(["phash"], keep_from=["phash"], progress=False)
    assert rep.hashed == 1
    states = {s["stage"]: s["state"] for s in lake.status()["stages"]}
    # (the decision ranks by the embedding's score, which the caption made stale: behind until embed)
    assert states["signals-image"] == "current" and (states["embed"], states["dedup"]) == ("stale", "behind")
    lake.embed("tiny-random", progress=False)
    assert lake.dedup(["phash"], keep_from=["phash"], progress=False).hashed == 0
    assert {s["stage"]: s["state"] for s in lake.status()["stages"]}["dedup"] == "current"


def test_new_rows_are_grouped_by_the_dedup_the_lake_records(lake_copy: Lake, tmp_path: Path):
    """A lake deduplicated with more methods than a recipe's duplicate step asks for (README's
    `dedup all`): when rows arrive, curate regroups with the recorded methods and settings (what
    status's dedup fix runs); with exact and phash alone it was refused, naming --keep-from, which
    curate does not take, and the fix status printed for curate failed when pasted."""
    lake = lake_copy
    lake.dedup(["exact", "phash", "copy"], phash_distance=6, progress=False)
    dup = {"name": "dup", "step": [{"filter": "duplicate"}]}
    lake.curate(dup, progress=False)
    more = one_more_copy(tmp_path / "more", "a cat once more")
    lake.ingest(more, progress=False)
    lake.embed("tiny-random", workers=0, progress=False)
    rep = lake.curate(dup, progress=False)
    assert "dedup" in rep.computed
    states = {s["stage"]: s for s in lake.status()["stages"]}
    assert {s["state"] for s in lake.status()["stages"] if s["stage"] in ("dedup", "curate")} == {"current"}, states
    keep = lake.dataset().schema.field("dup_keep")
    from lakecurate import columns

    cfg = columns.field_provenance(keep)["config"]
    assert cfg["keep_from"] == ["exact", "phash", "copy"], cfg  # the recorded methods, not exact and phash alone
    assert columns.field_provenance(lake.dataset().schema.field("dup_phash_group"))["config"]["max_distance"] == 6
    group = lake.sql("SELECT key, dup_keep FROM pairs WHERE dup_group = "
                     "(SELECT dup_group FROM pairs WHERE key = 'cat.jpg')")  # the new row: grouped with its copies
    assert {"cat.jpg", "chelsea.jpg"} <= set(group["key"]) and group["dup_keep"].sum() == 1, group


def test_new_rows_are_judged_and_source_rows_stay(lake_copy: Lake, tmp_path: Path):
    lake = lake_copy
    recipe = {"name": "junk", "step": [{"filter": "caption_filename"}, {"filter": "caption_length", "min_words": 4}]}
    first = lake.curate(recipe, progress=False)
    extra = tmp_path / "extra"
    extra.mkdir()
    shutil.copy(SAMPLE_DATA / "grass.jpg", extra / "late.jpg")
    (extra / "late.txt").write_text("DSC01234.JPG")
    lake.ingest(extra, progress=False)
    second = lake.curate(recipe, progress=False)
    assert not second.nothing_to_do and second.rows == first.rows + 1
    assert second.dropped["caption_filename"] == first.dropped["caption_filename"] + 1
    assert second.tag != first.tag and lake.count() == first.rows + 1  # nothing deleted


def test_recipe_errors(tmp_path: Path, lake: Lake):
    def bad(text: str, match: str) -> None:
        p = tmp_path / "r.toml"
        p.write_text(text)
        with pytest.raises(LakeError, match=match):
            load_recipe(p)

    bad('name = "x"\n[[step]]\nfilter = "sharpnes"\n', "step 1: unknown filter 'sharpnes'; choose from")
    bad('name = "x"\n[[step]]\nfilter = "blur"\nmin = 3\n', r"step 1 \(blur\): unknown parameters \['min'\]; it takes min_sharpness")
    bad('name = "x"\n', "has no \\[\\[step\\]\\]")
    bad('name = "a b"\n[[step]]\nfilter = "pii"\n', "may hold only ASCII letters")
    bad('name = "x"\n[[step]\n', "not valid TOML")
    bad('nme = "x"\n[[step]]\nfilter = "pii"\n', "unknown keys")
    latin1 = tmp_path / "latin1.toml"  # a recipe saved in Latin-1: TOML is UTF-8 (this was a traceback)
    latin1.write_bytes('name = "caf\u00e9"\n[[step]]\nfilter = "pii"\n'.encode("latin-1"))
    with pytest.raises(LakeError, match="not valid TOML.*utf-8"):
        load_recipe(latin1)
    with pytest.raises(LakeError, match="built-in recipe: basic"):
        load_recipe(tmp_path / "missing.toml")
    assert load_recipe("basic").name == "basic"  # shipped with the package
    lake.ingest(SAMPLE_DATA, progress=False)
    with pytest.raises(LakeError, match="run: lakecurate embed"):
        lake.curate({"name": "a", "step": [{"filter": "alignment", "min": 0.2}]}, progress=False)


def test_every_filter_is_documented():
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    for name, f in FILTERS.items():
        assert f"`{name}`" in readme, name
        assert f.doc


def test_cli_curate(lake_copy: Lake, tmp_path: Path):
    runner = CliRunner()
    res = runner.invoke(main, ["curate", lake_copy.uri, "basic"])
    assert res.exit_code == 0, res.output
    assert "ingest_error" in res.output and "kept" in res.output and "tag basic-" in res.output
    # the kept rows are a line of their own, not a row of the "dropped" column
    assert re.search(r"^kept \d+ of \d+ rows", res.output, re.M) and not re.search(r"^kept +\d+ +\d", res.output, re.M)
    res = runner.invoke(main, ["curate", lake_copy.uri, "basic"])
    assert "nothing to do" in res.output
    res = runner.invoke(main, ["curate", lake_copy.uri, str(tmp_path / "nope.toml")])
    assert res.exit_code == 1 and "not found" in res.output and "Traceback" not in res.output


# --------------------------------------------------------------------------- recipe parameters
@pytest.mark.parametrize("step, match", [
    ('filter = "caption_length"\nmin_words = "three"', r"step 1 \(caption_length\): min_words = 'three' is not allowed; use a whole number >= 0"),
    ('filter = "caption_length"\nmin_words = 2.5', r"min_words = 2.5 is not allowed; use a whole number"),
    ('filter = "caption_length"\nmin_words = 9\nmax_words = 4', r"min_words = 9 is more than max_words = 4"),
    ('filter = "language"\nkeep = "en"', r"step 1 \(language\): keep = 'en' is not allowed; use a list of the language"),
    ('filter = "language"\nkeep = ["klingon"]', r"keep = \['klingon'\] is not allowed; use a list of the language codes"),
    # two letters that name no language the identifier knows: it kept 9 of 202 rows ("eb" for "en")
    ('filter = "language"\nkeep = ["en", "xx"]', r"keep = \['en', 'xx'\] is not allowed; use a list of the language codes"),
    ('filter = "language"\nkeep = []', r"keep = \[\] is not allowed"),
    ('filter = "language"\nmin_prob = 1.5', r"min_prob = 1.5 is not allowed; use a number from 0 to 1"),
    ('filter = "alignment"\nmin_percentile = 150', r"step 1 \(alignment\): min_percentile = 150 is not allowed; use a number from 0 to 100"),
    ('filter = "alignment"\nmin = "0.2"', r"min = '0.2' is not allowed; use a number from -1 to 1"),
    ('filter = "aspect"\nmax_aspect = 0.5', r"max_aspect = 0.5 is not allowed; use a number >= 1"),
    ('filter = "blur"\nmin_sharpness = nan', r"min_sharpness = nan is not allowed"),
    # a recipe written for the old Laplacian variance is refused, not left to drop every photo
    ('filter = "blur"\nmin_sharpness = 250', r"min_sharpness = 250 is not allowed; use a number from 0 to 4"),
    ('filter = "dark"\nmin_brightness = 2', r"step 1 \(dark\): min_brightness = 2 is not allowed; use a number from 0 to 1"),
    ('filter = "low_contrast"\nmin_contrast = -0.1', r"min_contrast = -0.1 is not allowed; use a number from 0 to 0.5"),
    ('filter = "dark"\nmin = 0.1', r"step 1 \(dark\): unknown parameters \['min'\]; it takes min_brightness"),
    ('filter = "image_size"\nmin_side = -1', r"min_side = -1 is not allowed; use a whole number >= 0"),
    ('filter = "caption_repeat"\nmax_repeat = true', r"max_repeat = True is not allowed"),
    ('filter = "low_information"\nmin_entropy = 9', r"min_entropy = 9 is not allowed; use a number from 0 to 8"),
    ('filter = "pii"\nreason = 3', r"step 1 \(pii\): reason = 3 must be a non-empty string"),
    ('filter = 3', r"step 1: unknown filter 3"),
])
def test_recipe_parameter_types_and_ranges(tmp_path: Path, step: str, match: str):
    path = tmp_path / "bad.toml"
    path.write_text(f'name = "x"\n[[step]]\n{step}\n')
    with pytest.raises(LakeError, match=match) as exc:
        load_recipe(path)
    assert str(path) in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize("text, match", [
    ('name = "x"\nembedding = 3\n[[step]]\nfilter = "pii"\n', r"embedding = 3 must be the name"),
    ('name = "x"\nstep = ["pii"]\n', r"steps must be \[\[step\]\] tables"),
    ('name = "x"\n[[step]]\nfilter = "pii"\n[privacy]\nredact = "yes"\n', r"redact = 'yes' must be true or false"),
])
def test_recipe_top_level_types(tmp_path: Path, text: str, match: str):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(LakeError, match=match):
        load_recipe(path)


def test_cli_recipe_type_error_is_one_line(lake: Lake, tmp_path: Path):
    lake.append(pair_rows(0, 5))
    path = tmp_path / "bad.toml"
    path.write_text('name = "x"\n[[step]]\nfilter = "caption_length"\nmin_words = "three"\n')
    version = lake.version
    res = CliRunner().invoke(main, ["curate", lake.uri, str(path)])
    assert res.exit_code == 1 and "Traceback" not in res.output and res.exception.__class__ is SystemExit
    assert len(res.output.strip().splitlines()) == 1 and "min_words = 'three'" in res.output
    assert lake.version == version


# --------------------------------------------------------------------------- rows arriving during a run
WORDS = {"name": "words", "step": [{"filter": "caption_missing"}, {"filter": "caption_length", "min_words": 3}]}


def assert_judged(lake: Lake, version: int | str | None = None) -> pd.DataFrame:
    """Every kept row was screened by WORDS (its signal exists and passes); every decided row has a reason or is kept."""
    df = lake.dataset(version).to_table(columns=["id", "caption", "cap_words", "keep", "drop_reason"]).to_pandas()
    kept = df[df["keep"] == True]  # noqa: E712
    assert kept["cap_words"].notna().all() and (kept["cap_words"] >= 3).all(), kept[kept["cap_words"].isna()]
    assert (df.loc[df["keep"] == False, "drop_reason"].notna()).all()  # noqa: E712
    return df


@pytest.mark.parametrize("when", ["after_signals", "before_write", "tag_at_latest"])
def test_rows_arriving_during_curate_are_never_kept_unjudged(lake: Lake, monkeypatch, when: str):
    """Rows appended at each point of a run: never kept unscreened; the next run judges them."""
    lake.append(pair_rows(0, 60))
    lake.append(pair_rows(60, 60))
    late = pair_rows(1000, 30)
    if when == "after_signals":  # the signals are computed, then the rows arrive before the read
        real = signals.compute_caption_signals

        def hooked(lk, **kw):
            out = real(lk, **kw)
            if lk.count() == 120:
                lk.append(late)
            return out

        monkeypatch.setattr(signals, "compute_caption_signals", hooked)
        first = lake.curate(WORDS, progress=False)
    elif when == "before_write":  # the decisions are made, then the rows arrive before they are committed
        real_commit = columns.ChangedFragments.commit

        def hooked_commit(self, **kw):
            if lake.count() == 120:
                lake.append(late)
            return real_commit(self, **kw)

        monkeypatch.setattr(columns.ChangedFragments, "commit", hooked_commit)
        first = lake.curate(WORDS, progress=False)
    else:  # what an earlier run left: a tag on the latest version, which holds rows no recipe judged
        first = lake.curate(WORDS, progress=False)
        lake.append(late)
        lake.tag(f"words-{first.recipe_hash}-v{lake.version}")
    monkeypatch.undo()
    df = assert_judged(lake, first.tag)
    assert df.loc[df["id"].isin(late.column("id").to_pylist()), "keep"].isna().all()
    assert first.unjudged == (30 if when != "tag_at_latest" else 0)
    assert_judged(lake)
    # rows without a decision: curate is not current (it said "behind" only when they arrived during
    # the run, and export went on with warnings), and export refuses as after a later ingest
    st = next(s for s in lake.status()["stages"] if s["stage"] == "curate")
    assert st["state"] in ("incomplete", "stale") and st["state"] == ("stale" if when == "tag_at_latest" else "incomplete")
    with pytest.raises(LakeError, match="export would use stale decisions .* curate .* is (incomplete: 30 rows have no "
                                        "decision|stale)"):
        lake.export(lake.uri + "-out", "parquet")
    again = lake.curate(WORDS, progress=False)
    assert not again.nothing_to_do and again.rows == 150 and again.unjudged == 0
    df = assert_judged(lake, again.tag)
    assert df["keep"].notna().all() and int(df["keep"].sum()) == again.kept
    third = lake.curate(WORDS, progress=False)
    assert third.nothing_to_do and third.tag == again.tag


@pytest.mark.slow
def test_appender_process_during_curate(lake: Lake):
    """An appender process adding rows while curate runs (issue 16: kept unscreened in 4 of 6 trials)."""
    lake.append(pair_rows(0, 200))
    Path(lake.uri + ".start").write_text(str(time.time() + 1.5))
    proc = spawn("append", lake.uri, "1000", "25", "4")
    time.sleep(1.4)  # the writer waits for the start time; curate starts with it
    rep = lake.curate({"name": "busy", "step": [{"filter": "caption_length", "min_words": 3}, {"filter": "duplicate"}]},
                      progress=False)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    for version in (rep.tag, None):
        df = lake.dataset(version).to_table(columns=["caption", "cap_words", "dup_keep", "keep"]).to_pandas()
        kept = df[df["keep"] == True]  # noqa: E712
        # screened: counted words (a row without a caption has none) and a dedup decision
        assert (kept["cap_words"].notna() | kept["caption"].isna()).all() and kept["dup_keep"].notna().all()
    again = lake.curate({"name": "busy", "step": [{"filter": "caption_length", "min_words": 3}, {"filter": "duplicate"}]},
                        progress=False)
    assert not again.nothing_to_do and again.rows == lake.count() == 300
    assert lake.dataset().count_rows(filter="keep IS NULL") == 0


# --------------------------------------------------------------------------- rows without embeddings
def test_alignment_needs_every_row_embedded(lake_copy: Lake):
    lake = lake_copy
    lake.append(pair_rows(0, 12))  # after embedding: no score yet
    version = lake.version
    recipe = {"name": "aligned", "step": [{"filter": "caption_length", "min_words": 1}, {"filter": "alignment", "min": -1.0}]}
    with pytest.raises(LakeError, match=r"^12 rows of lake .* have no clip_tinyrandom score yet \(p0000000 \(p0000000\), "
                                        r"p0000001 .*run: lakecurate embed .* --model tiny-random, then curate again$"):
        lake.curate(recipe, progress=False)
    assert lake.version == version and "keep" not in lake.dataset().schema.names  # nothing written
    lake.embed("tiny-random", workers=0, batch_size=8, progress=False)
    rep = lake.curate(recipe, progress=False)
    df = lake.to_pandas(["id", "keep", "drop_reason", "clip_tinyrandom_score"])
    assert df["keep"].notna().all() and rep.rows == len(df)
    # a row the encoder could not score (no caption, unreadable image) cannot pass the alignment step
    assert (df.loc[df["keep"] == True, "clip_tinyrandom_score"].notna()).all()  # noqa: E712
    assert (df.loc[df["clip_tinyrandom_score"].isna() & df["drop_reason"].isna()]).empty


# --------------------------------------------------------------------------- two curates at once
A = {"name": "loose", "step": [{"filter": "caption_length", "min_words": 2}]}
B = {"name": "strict", "step": [{"filter": "caption_missing"}, {"filter": "caption_length", "min_words": 5, "reason": "short"}]}


def _curate_process(uri: str, recipe: str) -> None:
    start = Path(uri + ".start")
    time.sleep(max(0.0, float(start.read_text()) - time.time()))
    print(Lake.open(uri).curate(json.loads(recipe), progress=False).tag)


def check_tags(lake: Lake, clean: dict[str, dict[str, str | None]]) -> int:
    """Every recipe tag holds its own recipe's provenance and exactly a clean run's decisions."""
    tags = {n: i["version"] for n, i in lake.dataset().tags.list().items() if n.split("-")[0] in clean}
    for name, version in tags.items():
        ds = lake.dataset(version)
        recipe = field_provenance(ds.schema.field("keep"))["config"]["recipe"]["name"]
        assert recipe == name.split("-")[0], (name, recipe)
        rows = ds.to_table(columns=["id", "drop_reason"]).to_pandas()
        assert dict(zip(rows["id"], rows["drop_reason"])) == clean[recipe], name
    return len(tags)


@pytest.fixture
def words_lake(lake: Lake) -> tuple[Lake, dict[str, dict[str, str | None]]]:
    """A lake of 3 fragments with caption signals, and each recipe's decisions from a clean run."""
    for start in (0, 40, 80):
        lake.append(pair_rows(start, 40))
    signals.compute_caption_signals(lake, progress=False)
    clean = {}
    for r in (A, B):
        lake.curate(r, progress=False)
        rows = lake.to_pandas(["id", "drop_reason"])
        clean[r["name"]] = dict(zip(rows["id"], rows["drop_reason"]))
    for name in list(lake.dataset().tags.list()):
        lake.dataset().tags.delete(name)
    lake.dataset().drop_columns(["keep", "drop_reason"])
    return lake, clean


def test_curate_interleaved_with_another_recipe(words_lake, monkeypatch):
    """Recipe B re-declares keep between A's declare and A's write: A's tag must still be A's."""
    lake, clean = words_lake
    real = columns.ChangedFragments.__init__
    state = {"raced": False}

    def hooked(self, lk, *a, **kw):
        if not state["raced"]:
            state["raced"] = True
            lake.curate(B, progress=False)  # the other recipe, start to finish
        return real(self, lk, *a, **kw)

    monkeypatch.setattr(columns.ChangedFragments, "__init__", hooked)
    rep = lake.curate(A, progress=False)
    monkeypatch.undo()
    assert state["raced"] and check_tags(lake, clean) == 2
    assert lake.dataset(rep.tag).count_rows(filter="keep IS NULL") == 0


@pytest.mark.slow
@pytest.mark.parametrize("when", ["before_write", "between_fragments"])
def test_keep_dropped_just_before_the_write_is_decided_again(words_lake, monkeypatch, when: str):
    """Another curate drops keep/drop_reason (to declare its own recipe's) between this one's declare
    and its write, or between two fragments' files: the write finds no keep column (it raised
    AttributeError in CI) and decides again."""
    lake, clean = words_lake
    state = {"dropped": 0}
    if when == "before_write":
        real = columns.ChangedFragments.__init__

        def hooked(self, lk, names, *a, **kw):
            if not state["dropped"] and "keep" in names:
                state["dropped"] += 1
                lk.dataset().drop_columns(["keep", "drop_reason"])  # what the other recipe's declare does first
            return real(self, lk, names, *a, **kw)

        monkeypatch.setattr(columns.ChangedFragments, "__init__", hooked)
    else:
        real_write, files = columns.write_file, []

        def hooked_write(ds, fid, table, *a, **kw):
            if not state["dropped"] and "keep" in table.column_names and files:  # one file written already
                state["dropped"] += 1
                lake.dataset().drop_columns(["keep", "drop_reason"])
            files.append(fid)
            return real_write(ds, fid, table, *a, **kw)

        monkeypatch.setattr(columns, "write_file", hooked_write)
    rep = lake.curate(A, progress=False)
    assert state["dropped"] == 1
    rows = lake.to_pandas(["id", "drop_reason"])
    assert dict(zip(rows["id"], rows["drop_reason"])) == clean[A["name"]]
    assert lake.dataset(rep.tag).count_rows() == lake.count()


def test_two_curate_processes_never_mislabel(words_lake, tmp_path: Path):
    """Two processes with different recipes at once, over several trials (issue 16: 4 of 18 mislabelled):
    every tag holds its own recipe's provenance and a clean run's decisions."""
    base, clean = words_lake
    for trial in range(3):
        uri = shutil.copytree(base.uri, tmp_path / f"t{trial}")
        Path(f"{uri}.start").write_text(str(time.time() + 1.5))  # both import, then race
        procs = [subprocess.Popen([sys.executable, "-m", __name__, "curate", str(uri), json.dumps(r)],
                                  cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (A, B)]
        for p in procs:
            out, err = p.communicate(timeout=60)
            assert p.returncode == 0, err[-2000:]
        lake = Lake.open(uri)
        assert check_tags(lake, clean) == 2
        current = field_provenance(lake.dataset().schema.field("keep"))["config"]["recipe"]["name"]
        rows = lake.to_pandas(["id", "drop_reason"])
        assert dict(zip(rows["id"], rows["drop_reason"])) == clean[current]  # the latest version is consistent too


# --------------------------------------------------------------------------- planted junk on Flickr8k
KIND_FILTER = {"filename": "caption_filename", "tiny": "image_size", "aspect": "aspect", "blurred": "blur",
               "pii": "pii", "swapped": "alignment"}


@pytest.fixture(scope="module")
def junk_lake(flickr8k: Path, tmp_path_factory):
    """Clean pairs and planted junk (seed 1; thresholds were chosen on seed 0). Swapped captions and
    the clean pairs they are judged against use only photos the offline heads never saw in training."""
    pytest.importorskip("efficientnet_lite_pytorch")
    from lakecurate import offline

    held_out = {Path(n).stem for n in json.loads(offline.RECORD.read_text())["split"]["held_out_images"]}
    captions = first_captions(flickr8k / "captions.csv")
    photos = sorted((flickr8k / "images").glob("*.jpg"))
    seen = [p for p in photos if p.stem not in held_out][:300]  # enough for 5 kinds x 40 + 100 clean
    root = tmp_path_factory.mktemp("junk")
    kinds = plant_junk([p for p in photos if p.stem in held_out] + seen, captions, root / "src", per_kind=40,
                       seed=1, swap_pool=sorted(held_out))
    lake = Lake.create(root / "lake")
    lake.ingest(root / "src", progress=False)
    lake.embed("offline", progress=False)
    return lake, kinds, held_out


@pytest.mark.slow
@pytest.mark.shared
def test_planted_junk_each_filter(junk_lake):
    lake, kinds, held_out = junk_lake
    rep = lake.curate("basic", progress=False)
    df = lake.to_pandas()
    df = df.drop(columns=["image"], errors="ignore")
    df["kind"] = [kinds[stem(k)] for k in df["key"]]
    df["__score"] = df["offline_score"]
    clean = (df["kind"] == "clean").to_numpy()
    unseen = np.array([stem(k).split("__")[0] in held_out for k in df["key"]])
    for kind, name in KIND_FILTER.items():
        f = FILTERS[name]
        params = dict(f.params)
        if name == "alignment":
            params["min"] = 0.05  # the offline default (ALIGNMENT_MIN)
        drop = f.drop(df, params)
        base = clean & unseen if name == "alignment" else clean
        recall, false_drop = drop[(df["kind"] == kind).to_numpy()].mean(), drop[base].mean()
        if name == "alignment":
            # The offline encoder (held-out AUROC ~0.94) cannot reach 0.95 recall at 5% false drops
            # on unseen photos; measured 0.675 at 0.067 on seed 0 (docs/benchmarks.md).
            assert recall >= 0.55 and false_drop <= 0.10, (name, recall, false_drop)
        else:
            assert recall >= 0.95 and false_drop <= 0.05, (name, recall, false_drop)
    # the recipe as a whole: the planted kinds are dropped, clean pairs mostly kept
    for kind in ("filename", "tiny", "aspect", "blurred", "pii", "swapped"):
        dropped = (df.loc[df["kind"] == kind, "keep"] == False).mean()  # noqa: E712
        assert dropped >= (0.95 if kind != "swapped" else 0.55), (kind, dropped)
    # basic ends with alignment min_percentile = 30 of the whole lake: most clean pairs survive
    assert 0.5 * clean.sum() < rep.kept <= clean.sum()


if __name__ == "__main__":  # `python -m tests.test_curate curate LAKE RECIPE_JSON`: one racing curate process
    _curate_process(*sys.argv[2:])


def test_keep_replaced_by_another_curate_mid_write_is_decided_again(sample_lake_embedded: Lake, tmp_path: Path,
                                                                   monkeypatch):
    """Another curate process declaring its own recipe drops keep/drop_reason (then adds them back):
    a write that lands in that gap decides again instead of failing with a KeyError."""
    from lakecurate import columns as columns_mod

    lake = Lake.open(shutil.copytree(sample_lake_embedded.uri, tmp_path / "lake"))
    lake.curate({"name": "a", "step": [{"filter": "ingest_error"}]}, progress=False)
    real, calls = columns_mod.ChangedFragments.__init__, []

    def racing(self, lake_, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1:  # the other process's drop lands after this run checked, before it writes
            lake_.dataset().drop_columns(["keep", "drop_reason"])
        return real(self, lake_, *args, **kwargs)

    monkeypatch.setattr(columns_mod.ChangedFragments, "__init__", racing)
    rep = lake.curate({"name": "b", "step": [{"filter": "caption_missing"}]}, progress=False)
    assert len(calls) == 2 and rep.kept == lake.count("keep") and lake.count("keep IS NULL") == 0


# --------------------------------------------------------------------------- a fragment at a time
BY_FRAGMENT = {"name": "by-fragment", "step": [
    {"filter": "caption_missing"},
    {"filter": "caption_template", "max_group": 3},
    {"filter": "sql", "where": "caption NOT LIKE '%red%'", "reason": "by_rule"},
    {"filter": "column", "column": "cap_words", "max": 9, "reason": "long"},
    {"filter": "alignment", "min_percentile": 35},
]}


def test_decisions_are_made_a_fragment_at_a_time_and_equal_the_whole_frame(lake: Lake, monkeypatch):
    """Curate holds one fragment's columns at a time (issue 20): the steps that compare a row with
    every other (alignment's percentile, caption_template's group sizes) are fitted on every judged
    row first, so the decisions equal a judgement of the whole lake in one frame."""
    from lakecurate import curate as curate_mod

    for start, n in ((0, 30), (30, 45), (75, 20), (95, 40), (135, 25)):
        lake.append(varied_pairs(start, n))
    lake.embed("tiny-random", workers=0, batch_size=16, progress=False)
    frames, real = [], curate_mod._decide

    def recording(df, *a, **kw):
        frames.append(len(df))
        return real(df, *a, **kw)

    monkeypatch.setattr(curate_mod, "_decide", recording)
    rep = lake.curate(BY_FRAGMENT, progress=False)
    monkeypatch.undo()
    ds = lake.dataset(rep.tag)
    sizes = sorted(f.count_rows() for f in ds.get_fragments())
    assert len(sizes) == 5 and sorted(frames) == sizes  # one frame a fragment, never the lake

    # the oracle: the whole lake judged in one frame (what a dry run and the report do)
    rec = load_recipe(BY_FRAGMENT)
    emb, emb_prov = curate_mod._embedding(lake, rec)
    df, dec = judge_one_frame(ds, rec, emb, emb_prov)
    want = dict(zip(df["id"], dec.reason))
    got = reasons_of(lake, rep.tag)
    assert got == want and rep.kept == sum(r is None for r in got.values())
    # every step dropped something here, and the fitted steps cut across fragments
    assert all(rep.dropped[s.get("reason", s["filter"])] > 0 for s in BY_FRAGMENT["step"]), rep.dropped
    # the dry run and the report's cut views are made a fragment at a time too, equal to one frame's
    frames.clear()
    monkeypatch.setattr(curate_mod, "_decide", recording)
    dry = lake.curate(BY_FRAGMENT, dry_run=True, progress=False)
    shown = curate_mod.explain_version(lake.dataset(), rec)
    monkeypatch.undo()
    assert max(frames) == max(sizes)
    views = explain_one_frame(df, rec, dec)
    curate_mod._attach(ds, views)
    assert [asdict(v) for v in dry.steps] == [asdict(v) for v in views] == [asdict(v) for v in shown]
    assert (dry.dropped, dry.rows, dry.kept) == (dec.dropped, len(df), int(dec.alive.sum()))
    # (views[0]: ingest_error, which a recipe that does not list it runs first)
    assert [v.filter for v in views][:2] == ["ingest_error", "caption_missing"]
    assert [bool(v.whatif) for v in views[1:]] == [False, True, False, True, True]  # the three cuts
    assert all(v.examples for v in views[1:])
    score = dict(zip(df["id"], df["__score"].astype(float)))
    cut = np.nanpercentile(df["__score"].astype(float), 35)
    assert all(score[i] < cut for i, r in got.items() if r == "alignment")
    per_fragment_cuts = {round(float(np.nanpercentile(f.to_table(columns=["clip_tinyrandom_score"]).column(0)
                                                       .to_numpy(zero_copy_only=False).astype(float), 35)), 6)
                         for f in ds.get_fragments()}
    assert len(per_fragment_cuts) > 1  # a fragment's own percentile would have decided differently
    groups = df["dup_minhash_group"].value_counts()
    assert (groups > 3).any() and any(  # some large template group spans fragments
        len({int(a) >> 32 for a in df.loc[df["dup_minhash_group"] == g, "__rowaddr"]}) > 1 for g in groups[groups > 3].index)


VOCAB = ("red green blue small large old new wooden stone metal dog cat horse bird tree house river road "
         "boat car child woman man garden field city beach snow night morning bridge tower market").split()


def varied_pairs(start: int, n: int) -> pa.Table:
    """pair_rows with captions of 3-13 random words, every 6th a stock-photo template (one caption
    group across fragments), every 17th null."""
    t = pair_rows(start, n)
    rng = np.random.default_rng(start)
    caps = [None if i % 17 == 5 else f"Stock photo of a {VOCAB[i % 9]} royalty free image {i}" if i % 6 == 0
            else " ".join(rng.choice(VOCAB, int(rng.integers(3, 14)))) for i in range(start, start + n)]
    return t.set_column(t.schema.get_field_index("caption"), "caption", pa.array(caps))


def reasons_of(lake: Lake, ref) -> dict[str, str | None]:
    t = lake.dataset(ref).to_table(columns=["id", "drop_reason"])
    return dict(zip(t.column("id").to_pylist(), t.column("drop_reason").to_pylist()))


@pytest.mark.parametrize("where", ["width / 0 > 1", "CAST(caption AS INT) > 0"])
def test_a_condition_that_fails_on_values_leaves_the_curation_as_it_was(lake: Lake, where: str):
    """Planning the condition passed; running it failed on the values after keep/drop_reason were
    declared again: a traceback, every row's keep null under the failed recipe, status 'current'."""
    lake.ingest(SAMPLE_DATA, progress=False)
    lake.curate({"name": "ok", "step": [{"filter": "caption_missing"}]}, progress=False)
    before, v = lake.to_pandas(["id", "keep", "drop_reason"]).sort_values("id"), lake.version
    bad = {"name": "bad", "step": [{"filter": "sql", "where": where}]}
    for dry_run in (True, False):
        with pytest.raises(LakeError, match=r"step 1 \(sql\): where = .* fails on the rows of lake .*nothing was written"):
            lake.curate(bad, dry_run=dry_run, progress=False)
    assert lake.version == v
    pd.testing.assert_frame_equal(lake.to_pandas(["id", "keep", "drop_reason"]).sort_values("id"), before)


def test_rows_without_a_feature_stay_unjudged_and_a_rerun_does_not_fail(lake: Lake, tmp_path: Path):
    """Rows appended after a feature was computed are not judged; the second run (nothing new to
    decide, the same version) failed on its own tag: "already has a tag"."""
    lake.ingest(SAMPLE_DATA, progress=False)
    lake.add_feature("one", lambda b: [1] * b.num_rows, inputs=["caption"], type="int32", progress=False)
    more = tmp_path / "more"
    more.mkdir()
    shutil.copy(SAMPLE_DATA / "astronaut.jpg", more / "n.jpg")
    (more / "n.txt").write_text("hi")
    lake.ingest(more, progress=False)
    rec = {"name": "one", "step": [{"filter": "column", "column": "one", "min": 1}]}
    first = lake.curate(rec, progress=False)
    again = lake.curate(rec, progress=False)
    assert first.unjudged == again.unjudged == 1 and again.tag == first.tag
    res = CliRunner().invoke(main, ["curate", lake.uri, str(_recipe_file(tmp_path, rec))])
    assert res.exit_code == 0 and "1 rows were not judged: they lack a column this recipe reads" in res.output, res.output


def _recipe_file(tmp_path: Path, rec: dict) -> Path:
    lines = [f'name = "{rec["name"]}"']
    for st in rec["step"]:
        lines.append("[[step]]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in st.items()]
    path = tmp_path / f"{rec['name']}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("text,match", [
    ('name = "caf\\u00e9"\n[[step]]\nfilter = "caption_missing"\n', "only ASCII letters"),
    (f'name = "{"x" * 61}"\n[[step]]\nfilter = "caption_missing"\n', "at most 60 long"),
    ('name = "s"\n[[step]]\nfilter = "caption_missing"\n[[steps]]\nfilter = "sql"\nwhere = "width > 1"\n',
     "both \\[\\[step\\]\\] and \\[\\[steps\\]\\]"),
])
def test_recipe_names_and_step_tables_are_checked_before_a_write(lake: Lake, tmp_path: Path, text: str, match: str):
    """A name the tag cannot hold was refused only after two versions were written; [[steps]] beside
    [[step]] was ignored without a word."""
    lake.ingest(SAMPLE_DATA, progress=False)
    v = lake.version
    path = tmp_path / "r.toml"
    path.write_text(text)
    with pytest.raises(LakeError, match=match):
        lake.curate(path, progress=False)
    assert lake.version == v


def test_a_decision_column_dropped_outside_is_made_again_whole(lake_copy: Lake):
    """drop_reason dropped with Lance itself: the next curate said "run with --recompute to rebuild
    them", an option curate (and rebalance, sequence) does not have. The decision is made again."""
    lake = lake_copy
    words = {"name": "w", "step": [{"filter": "caption_length", "min_words": 3, "max_words": 100}]}
    lake.curate(words, progress=False)
    before = lake.to_pandas(["id", "keep", "drop_reason"]).sort_values("id").reset_index(drop=True)
    lance.dataset(lake.table_uri).drop_columns(["drop_reason"])
    rep = lake.curate(words, progress=False)
    after = lake.to_pandas(["id", "keep", "drop_reason"]).sort_values("id").reset_index(drop=True)
    assert rep.kept == int(before["keep"].sum()) and after.equals(before)
    lake.cluster(2)
    lake.rebalance(0.5)
    chosen = lake.to_pandas(["id", "rebalance_keep", "repeats"]).sort_values("id").reset_index(drop=True)
    lance.dataset(lake.table_uri).drop_columns(["repeats"])
    res = CliRunner().invoke(main, ["rebalance", lake.uri, "--target", "0.5"])
    assert res.exit_code == 0, res.output
    assert lake.to_pandas(["id", "rebalance_keep", "repeats"]).sort_values("id").reset_index(drop=True).equals(chosen)


class _Killed(BaseException):
    """A stand-in for a kill -9 (no handler runs, nothing after it is written)."""


def test_a_curate_killed_before_it_filled_keep_is_named_as_such_by_status(lake: Lake, monkeypatch):
    """A curate with another config, killed after it declared keep (its Merge) and before it filled it,
    read in status as "300 rows have no decision (they arrived while curate ran)" though no row came."""
    lake.append(pair_rows(0, 40))
    first = lake.curate(WORDS, progress=False)
    monkeypatch.setattr(columns.ChangedFragments, "commit", lambda self, **kw: (_ for _ in ()).throw(_Killed()))
    with pytest.raises(_Killed):
        lake.curate(WORDS, overrides={"caption_length.min_words": 5}, progress=False)
    monkeypatch.undo()
    assert lake.count() == 40
    st = next(s for s in lake.status()["stages"] if s["stage"] == "curate")
    why = " ".join(st["reasons"])
    assert st["state"] == "incomplete" and "arrived" not in why, st
    assert "stopped before" in why and "lakecurate curate" in st["fix"] and first.tag in why, st


def test_a_branch_and_main_at_the_same_version_get_their_own_recipe_tags(tmp_path: Path):
    """Tags are the lake's, not a branch's: main and a branch that reached the same version number
    named their decisions alike (recipe-hash-vN); main's curate found the branch's tag, took it
    for its own and printed it, and reopening it gave the branch's rows (main's decision had no
    tag). A branch's recipe tags name the branch; each reopens its own rows; and a re-run on each
    finds its own tag (nothing to do)."""
    lake = Lake.create(tmp_path / "lake")
    lake.ingest(SAMPLE_DATA, progress=False)
    exp = lake.create_branch("b")
    for target, names in ((exp, ("chelsea", "rocket")), (lake, ("horse", "brick"))):
        extra = tmp_path / f"extra-{names[0]}"
        extra.mkdir()
        for n in names:
            shutil.copy(SAMPLE_DATA / f"{n}.jpg", extra / f"new_{n}.jpg")
            (extra / f"new_{n}.txt").write_text(f"another photo of a {n} on a new day")
        target.ingest(extra, progress=False)
    recipe = {"name": "r", "step": [{"filter": "ingest_error"}]}
    on_branch, on_main = exp.curate(recipe, progress=False), lake.curate(recipe, progress=False)
    assert on_branch.version == on_main.version  # (the same number on each)
    assert on_main.tag != on_branch.tag and "-b-v" in on_branch.tag and "-b-" not in on_main.tag, (on_main.tag, on_branch.tag)
    keys = set(lake.dataset(on_main.tag).to_table(columns=["key"], filter="key LIKE 'new_%'").column(0).to_pylist())
    assert keys == {"new_horse.jpg", "new_brick.jpg"}, keys
    keys = set(exp.dataset(on_branch.tag).to_table(columns=["key"], filter="key LIKE 'new_%'").column(0).to_pylist())
    assert keys == {"new_chelsea.jpg", "new_rocket.jpg"}, keys
    again = lake.curate(recipe, progress=False), exp.curate(recipe, progress=False)
    assert [r.nothing_to_do for r in again] == [True, True] and [r.tag for r in again] == [on_main.tag, on_branch.tag]


def test_a_recipe_tag_whose_name_is_taken_gets_a_suffix_not_a_failure_after_the_write(tmp_path: Path):
    """A branch (or a person's tag) named like curate's next tag: keep was written, then curate failed
    with "'...' is a branch: pick another name" (a name the person never chose), on every re-run,
    and the decision never got its tag."""
    recipe = {"name": "r", "step": [{"filter": "ingest_error"}]}
    first = Lake.create(tmp_path / "a")
    first.ingest(SAMPLE_DATA, progress=False)
    second = Lake.open(shutil.copytree(first.uri, tmp_path / "b"))
    name = first.curate(recipe, progress=False).tag  # what the same run on the copy will want
    second.create_branch(name)
    rep = second.curate(recipe, progress=False)
    assert rep.tag == f"{name}-2" and second.dataset(rep.tag).version == rep.version
    assert name in second.branches() and name not in second.dataset().tags.list()
    again = second.curate(recipe, progress=False)
    assert again.nothing_to_do and again.tag == rep.tag


def test_a_lake_without_rows_is_refused_by_curate_and_dedup_and_status_says_it_is_empty(tmp_path: Path):
    """An empty folder ingested: curate tagged a curated set of 0 of 0 rows without a warning (0 of
    2 warns), dedup recorded groups of nothing, and status called every stage current. Curate and
    dedup refuse before any write, in one line; status says the lake has no rows."""
    (tmp_path / "empty").mkdir()
    lake = Lake.create(tmp_path / "lake")
    lake.ingest(tmp_path / "empty", progress=False)
    lake.embed("tiny-random", workers=0, batch_size=8, progress=False)
    before, tags = lake.version, dict(lake.dataset().tags.list())
    empty = r"^lake '.*' has no rows; ingest some: lakecurate ingest .* SOURCE$"
    for call in (lambda: lake.curate("basic", progress=False), lambda: lake.curate("basic", dry_run=True),
                 lambda: lake.dedup(["exact"], progress=False)):
        with pytest.raises(LakeError, match=empty):
            call()
    ds = lake.dataset()
    assert lake.version == before and dict(ds.tags.list()) == tags and "keep" not in ds.schema.names
    status = lake.status()
    assert status["empty"] and status["stages"] and all(s["state"] == "empty" for s in status["stages"])
    res = CliRunner().invoke(main, ["status", str(tmp_path / "lake")])
    assert res.exit_code == 0 and "current" not in res.output and "has no rows; ingest some" in res.output


def test_no_rows_left_and_a_recipe_that_keeps_nothing_say_so_everywhere(lake_copy: Lake, tmp_path: Path):
    """Every row deleted (Lance's delete): sequence and export said "dedup is stale; re-run it", which
    refused a lake without rows; a branch without rows was called the lake; and a recipe keeping no
    row warned on the command line only (not Lake.curate's report, not `lakecurate run`'s step)."""
    lake = lake_copy
    rep = lake.curate({"name": "none", "step": [{"filter": "sql", "where": "false"}]}, progress=False)
    assert rep.kept == 0 and any(w.startswith("recipe none keeps no row of") for w in rep.warnings), rep.warnings
    from lakecurate.curate import curate as curate_stage  # (the stage itself, not only the facade: its report)

    again = curate_stage(lake, {"name": "none", "step": [{"filter": "sql", "where": "false"}]}, progress=False)
    assert again.nothing_to_do and [w for w in again.warnings if w.startswith("recipe none keeps no row")], again
    exp = lake.create_branch("exp")
    exp.dataset().delete("true")
    with pytest.raises(LakeError, match=r"lake '.*' \(branch exp\) has no rows; ingest some"):
        exp.curate("basic", progress=False)
    lake.dataset().delete("true")
    for call in (lambda: lake.sequence("random", progress=False), lambda: lake.export(tmp_path / "o", "parquet")):
        with pytest.raises(LakeError, match=r"has no rows; ingest some"):
            call()
    # the graph itself calls every stage empty (the report's box and sql's notes read it: they named
    # fixes such as "lakecurate cluster", which refuse a lake without rows)
    from lakecurate import graph

    states = [s for s in graph.states(lake) if s.node.stage not in graph.MANUAL]
    assert states and {s.state for s in states} == {"empty"} and all(" ingest " in s.fix for s in states)
    notes = lake.sql("SELECT COUNT(*) AS n FROM pairs WHERE keep").attrs.get("notes") or []
    assert not [n for n in notes if "lakecurate cluster" in n or "lakecurate curate" in n], notes


def test_a_view_empty_because_ingest_refused_every_row_says_to_ingest_images_that_read(lake: Lake, tmp_path: Path):
    """Every row refused at ingest (no image reads): curate keeps none whatever the recipe, and the
    empty view's advice was "loosen the recipe"."""
    src = tmp_path / "bad"
    src.mkdir()
    for k in range(3):
        (src / f"p{k}.jpg").write_bytes(b"not an image")
        (src / f"p{k}.txt").write_text(f"a caption number {k}")
    lake.ingest(src, progress=False)
    assert lake.curate({"name": "c", "step": [{"filter": "caption_missing"}]}, progress=False).kept == 0
    notes = " ".join(lake.status()["view_notes"])
    assert "every one of them refused at ingest" in notes and "ingest pairs whose images read" in notes, notes
    assert "loosen the recipe" not in notes
