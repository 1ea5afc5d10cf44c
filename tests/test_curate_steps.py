"""Generic recipe steps (column, sql) over user features, dry runs with what-ifs, --set overrides."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from click.testing import CliRunner

from lakecurate import Lake, LakeError, feature
from lakecurate.cli import main
from lakecurate.columns import field_provenance
from lakecurate.curate import load_recipe, parse_override

from .conftest import SAMPLE_DATA


@feature(inputs=["caption"], type="int32")
def cap_len(batch):
    return pc.utf8_length(batch["caption"])


RECIPE = """
name = "generic"

[[step]]
filter = "ingest_error"

[[step]]
filter = "column"
column = "cap_len"
min = 20
reason = "short"

[[step]]
filter = "sql"
where = "width >= 100 AND caption NOT LIKE '%brick%'"
reason = "by_rule"

[[step]]
filter = "alignment"
min_percentile = 20
"""


@pytest.fixture
def featured(sample_lake_embedded: Lake, tmp_path: Path) -> tuple[Lake, Path]:
    lake = Lake.open(shutil.copytree(sample_lake_embedded.uri, tmp_path / "lake"))
    lake.add_feature("cap_len", cap_len, progress=False)
    recipe = tmp_path / "generic.toml"
    recipe.write_text(RECIPE)
    return lake, recipe


def reasons_at(lake: Lake, ref) -> dict[str, str | None]:
    t = lake.dataset(ref).to_table(columns=["id", "drop_reason"])
    return dict(zip(t.column("id").to_pylist(), t.column("drop_reason").to_pylist()))


def expected_reasons(lake: Lake, version: int, min_len: int = 20, pct: float = 20) -> dict[str, str | None]:
    """The recipe's decisions computed here with pandas, independently of curate."""
    df = lake.dataset(version).to_table(columns=["id", "ingest_status", "cap_len", "width", "caption",
                                                 "clip_tinyrandom_score"]).to_pandas()
    cut = np.nanpercentile(df["clip_tinyrandom_score"].astype(float), pct)
    out = {}
    for r in df.itertuples():
        if r.ingest_status == "error":
            out[r.id] = "ingest_error"
        elif r.cap_len != r.cap_len or r.cap_len is None or r.cap_len < min_len:  # null fails min
            out[r.id] = "short"
        elif not (r.width is not None and r.width >= 100 and r.caption is not None and "brick" not in r.caption):
            out[r.id] = "by_rule"
        elif not r.clip_tinyrandom_score >= cut:
            out[r.id] = "alignment"
        else:
            out[r.id] = None
    return out


def test_column_and_sql_steps_decide_on_a_user_feature(featured):
    lake, recipe = featured
    rep = lake.curate(recipe, progress=False)
    got = reasons_at(lake, rep.tag)
    want = expected_reasons(lake, rep.version)
    assert got == want
    assert {"short", "by_rule", "alignment"} <= set(want.values())  # every generic step dropped something
    prov = field_provenance(lake.dataset().schema.field("keep"))
    # the feature and the condition's columns are inputs: the graph knows curate read them
    assert {"cap_len", "width", "caption"} <= set(prov["source_columns"])


def test_dry_run_writes_nothing_and_matches_the_real_run(featured):
    lake, recipe = featured
    before = lake.dataset().version
    dry = lake.curate(recipe, dry_run=True, progress=False)
    assert dry.dry_run and lake.dataset().version == before and "keep" not in lake.dataset().schema.names
    assert not lake.dataset().tags.list()
    real = lake.curate(recipe, progress=False)
    assert dry.dropped == real.dropped and dry.kept == real.kept and dry.rows == real.rows

    short = next(v for v in dry.steps if v.reason == "short")
    assert short.cut["at"] == 20 and short.cut["side"] == "min"
    assert all(r["value"] < 20 for r in short.below) and all(r["value"] >= 20 for r in short.above)
    # nearest the cut first, and each named row with its key and caption
    assert [r["value"] for r in short.below] == sorted((r["value"] for r in short.below), reverse=True)
    assert [r["value"] for r in short.above] == sorted(r["value"] for r in short.above)
    assert all(r["key"] and r["caption"] is not None for r in short.above)
    current = next(w for w in short.whatif if w["current"])
    assert current["kept"] == real.kept and current["dropped"] == real.dropped["short"]
    # each other cut's kept count is what a real run with that cut keeps
    other = next(w for w in short.whatif if not w["current"] and w["kept"] != real.kept)
    rerun = lake.curate(recipe, overrides={"short.min": other["cut"]}, progress=False)
    assert rerun.kept == other["kept"]
    assert sum(r is None for r in expected_reasons(lake, rerun.version, min_len=other["cut"]).values()) == other["kept"]


def test_set_is_recorded_in_provenance_and_tag(featured):
    lake, recipe = featured
    plain = lake.curate(recipe, progress=False)
    assert "-set-" not in plain.tag
    rep = lake.curate(recipe, overrides={"alignment.min_percentile": 40, "2.min": 25}, progress=False)
    assert rep.tag.startswith("generic-set-") and rep.recipe_hash != plain.recipe_hash
    cfg = field_provenance(lake.dataset().schema.field("keep"))["config"]["recipe"]
    assert cfg["set"] == {"short.min": 25, "alignment.min_percentile": 40}  # (2.min: the step's name, one way)
    assert [s["params"].get("min_percentile") for s in cfg["steps"] if s["filter"] == "alignment"] == [40]
    want = expected_reasons(lake, rep.version, min_len=25, pct=40)
    got = reasons_at(lake, rep.tag)
    assert got == want
    # a recipe without --set keeps the hash it always had
    assert load_recipe(recipe).hash == load_recipe(recipe, {}).hash == plain.recipe_hash


@pytest.mark.parametrize("text,value", [("a.b=20", 20), ("a.b=0.5", 0.5), ("a.b=true", True),
                                        ('a.b=["en", "de"]', ["en", "de"]), ("a.b=cap_len", "cap_len"),
                                        ("a.b=width > 3 AND height > 3", "width > 3 AND height > 3")])
def test_parse_override(text, value):
    assert parse_override(text) == ("a.b", value)


@pytest.mark.parametrize("overrides,step,match", [
    ({"nope.min": 3}, None, "has no step 'nope'; its steps: 1 ingest_error, 2 column"),
    ({"short.mn": 3}, None, r"unknown parameters \['mn'\]"),
    ({"short.min": "x"}, None, "min = 'x' is not allowed"),
    ({}, 'filter = "column"\ncolumn = "cap_lenn"\nmin = 3', r"no column 'cap_lenn' \(did you mean cap_len\?\)"),
    ({}, 'filter = "column"\ncolumn = "caption"\nmin = 3', "min/max need numbers"),
    ({}, 'filter = "column"\ncolumn = "width"\nequals = "wide"', "cannot equal a value of column 'width'"),
    ({}, 'filter = "column"\ncolumn = "width"\nequals = 300.5', "cannot equal a value of column 'width'"),  # none
    ({}, 'filter = "column"\ncolumn = "clip_tinyrandom_image"\nnot_null = true', "not one value per row"),
    # signals curate would compute on the way are typed before they exist (these dropped every row)
    ({}, 'filter = "column"\ncolumn = "cap_words"\nequals = "abc"', "cannot equal a value of column 'cap_words'"),
    ({}, 'filter = "column"\ncolumn = "cap_lang"\nmin = 3', "min/max need numbers, but column 'cap_lang'"),
    ({}, 'filter = "column"\ncolumn = "dup_keep"\nin = [1, 2]', "cannot equal a value of column 'dup_keep'"),
    ({}, 'filter = "column"\ncolumn = "width"', "give at least one test"),
    ({}, 'filter = "column"\ncolumn = "ingested_at"\nequals = "2020"', "holds timestamp.*use a sql step"),  # dropped all
    ({}, 'filter = "column"\ncolumn = "keep"\nnot_null = true', "what curate writes"),
    ({}, 'filter = "sql"\nwhere = "nosuch > 3"', "names nosuch, which is not a column of lake"),
    ({}, 'filter = "sql"\nwhere = "width > 3; DROP TABLE pairs"', "give exactly one"),
    ({}, 'filter = "sql"\nwhere = "width + 3"', "not true or false"),
    ({}, 'filter = "sql"\nwhere = "keep AND width > 3"', "reads keep/drop_reason"),
])
def test_bad_generic_steps_and_overrides_write_nothing(featured, overrides, step, match):
    lake, recipe = featured
    if step:
        recipe.write_text(RECIPE + f"\n[[step]]\n{step}\n")
    before = lake.dataset().version
    with pytest.raises(LakeError, match=match):
        lake.curate(recipe, overrides=overrides, progress=False)
    with pytest.raises(LakeError, match=match):
        lake.curate(recipe, overrides=overrides, dry_run=True, progress=False)
    assert lake.dataset().version == before


def test_signal_types_are_the_producers_fields(sample_lake_embedded: Lake, tmp_path: Path):
    """curate types a column step on a signal before it is computed; the stages that write them agree."""
    from lakecurate import faces, signals
    from lakecurate.curate import _NEEDS_BY_COLUMN, SIGNAL_TYPES

    declared = {f.name: f.type for f in [*signals.CAPTION_FIELDS, *signals.IMAGE_FIELDS, *faces.FIELDS]}
    lake = Lake.open(shutil.copytree(sample_lake_embedded.uri, tmp_path / "lake"))
    lake.dedup(["minhash"], progress=False)  # dedup's columns are declared inside it: read what it wrote
    schema = lake.dataset().schema
    declared.update({c: schema.field(c).type for c in ("dup_keep", "dup_minhash_group")})
    assert set(SIGNAL_TYPES) == set(_NEEDS_BY_COLUMN)
    assert {c: declared[c] for c in SIGNAL_TYPES} == SIGNAL_TYPES


def test_ambiguous_override_asks_for_a_number(tmp_path: Path):
    r = {"step": [{"filter": "column", "column": "a", "min": 1}, {"filter": "column", "column": "b", "min": 2}]}
    with pytest.raises(LakeError, match=r"steps 1, 2 .* are all 'column'; name one by its number, e.g. --set 1.min"):
        load_recipe(r, {"column.min": 3})
    assert load_recipe(r, {"2.min": 3}).numbered()[1][1].params["min"] == 3


def test_dry_run_needs_signals_it_cannot_compute(sample_lake_embedded: Lake, tmp_path: Path):
    lake = Lake.open(shutil.copytree(sample_lake_embedded.uri, tmp_path / "lake"))
    before = lake.dataset().version
    with pytest.raises(LakeError, match=r"a dry run writes nothing, and lake .* lacks img_sharpness.*lakecurate signals"):
        lake.curate({"step": [{"filter": "column", "column": "img_sharpness", "min": 10}]}, dry_run=True)
    assert lake.dataset().version == before
    # the real run computes the signal a column step names, as a named filter would
    rep = lake.curate({"step": [{"filter": "column", "column": "img_sharpness", "min": 10}]}, progress=False)
    assert "image signals" in rep.computed and rep.dropped["column"] >= 1


def test_cli_dry_run_and_set(featured):
    lake, recipe = featured
    run = CliRunner().invoke(main, ["curate", lake.uri, str(recipe), "--dry-run", "--set", "short.min=25"])
    assert run.exit_code == 0, run.output
    assert "nothing written" in run.output and "would keep" in run.output
    assert "short: drops cap_len under 25 (min)" in run.output and "just failing" in run.output
    assert "overrides: short.min=25" in run.output
    assert "keep" not in lake.dataset().schema.names
    js = CliRunner().invoke(main, ["curate", lake.uri, str(recipe), "--dry-run", "--json"])
    data = json.loads(js.output)
    assert data["dry_run"] and [s["reason"] for s in data["steps"]] == ["ingest_error", "short", "by_rule", "alignment"]
    bad = CliRunner().invoke(main, ["curate", lake.uri, str(recipe), "--set", "min_percentile"])
    assert bad.exit_code != 0 and "write STEP.PARAM=VALUE" in bad.output and "Traceback" not in bad.output


def test_report_shows_rows_either_side_of_each_cut(featured, tmp_path: Path):
    import re

    lake, recipe = featured
    rep = lake.curate(recipe, overrides={"short.min": 25}, progress=False)
    out = lake.report(tmp_path / "r.html")
    html = (tmp_path / "r.html").read_text()
    assert "cuts" not in out.empty_sections
    section = html[html.index('<section id="cuts"'):html.index('<section id="concepts"')]
    strips = re.findall(r'data-reason="([^"]+)" data-cut="([^"]+)"', section)
    assert ("short", "25.0") in strips and any(r == "alignment" for r, _ in strips)
    short = section[section.index('data-reason="short"'):]
    short = short[: short.find('data-reason="', 20) if 'data-reason="' in short[20:] else len(short)]
    dry = lake.curate(recipe, overrides={"short.min": 25}, dry_run=True)
    view = next(v for v in dry.steps if v.reason == "short")
    # the report's rows are the dry run's: each with its thumbnail and its value beside the cut
    for r in view.below + view.above:
        assert f"cap_len {r['value']:.4g}" in short and r["key"] in short
    assert short.count('<img src="data:image/') >= len(view.below + view.above)  # thumbnails and the plot
    assert f">{rep.kept}</td></tr>" in short.replace(",", "")  # the kept count at the recipe's own cut
    assert "data-reason=\"by_rule\"" not in section  # a yes/no step has no cut


def test_curate_help_names_every_filter():
    """curate --help listed 19 of the 23 filters (caption_template, faces, zero_shot and review
    were missing): a user reading it could not know they exist."""
    import re

    from click.testing import CliRunner

    from lakecurate.cli import main
    from lakecurate.curate import FILTERS

    out = CliRunner().invoke(main, ["curate", "--help"], terminal_width=200).output
    listed = " ".join(out.split())
    missing = [f for f in FILTERS if not re.search(rf"\b{f}\b", listed)]
    assert out and not missing, missing


def test_a_recipe_that_keeps_nothing_says_so(sample_lake_embedded: Lake, tmp_path: Path):
    """It committed "kept 0 of 28 rows (0.0%)" like any other run, exit 0, no word."""
    import shutil

    from click.testing import CliRunner

    from lakecurate.cli import main

    lake = Lake.open(shutil.copytree(sample_lake_embedded.uri, tmp_path / "lake"))
    recipe = tmp_path / "r.toml"
    recipe.write_text('name = "none"\n[[step]]\nfilter = "sql"\nwhere = "width < 0"\n')
    res = CliRunner().invoke(main, ["--no-progress", "curate", lake.uri, str(recipe)])
    assert res.exit_code == 0 and "warning: recipe none keeps no row of 28 (sql drops 2" in res.output, res.output
    recipe.write_text('name = "some"\n[[step]]\nfilter = "sql"\nwhere = "width > 0"\n')
    res = CliRunner().invoke(main, ["--no-progress", "curate", lake.uri, str(recipe)])
    assert res.exit_code == 0 and "warning" not in res.output


def test_a_recipe_named_by_a_relative_path_is_recorded_whole(sample_lake_embedded: Lake, tmp_path: Path, monkeypatch):
    """status's fix named `strict.toml` as typed, the lake by its absolute path: pasted in another
    folder, the recipe was not found."""
    import shutil

    from lakecurate import graph

    lake = Lake.open(shutil.copytree(sample_lake_embedded.uri, tmp_path / "lake"))
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "strict.toml").write_text('name = "strict"\n[[step]]\nfilter = "caption_length"\nmin_words = 4\n')
    monkeypatch.chdir(tmp_path / "r")
    lake.curate("strict.toml", progress=False)
    monkeypatch.chdir(tmp_path)
    node = next(n for n in graph.nodes(lake.dataset()) if n.stage == "curate")
    assert node.prov["config"]["source"] == str(tmp_path / "r" / "strict.toml")
    assert str(tmp_path / "r" / "strict.toml") in graph.fix_command(lake, node)


def test_an_sql_step_may_name_signals_curate_computes_on_the_way(tmp_path: Path):
    """The README's own `where = "width >= 256 AND cap_lang = 'en'"` was refused on a lake without
    caption signals ("No field named cap_lang"), though a column step on a signal computes it first;
    a name that is no column nor signal is still refused before anything is written."""
    from .conftest import SAMPLE_DATA

    lake = Lake.create(tmp_path / "lake")
    lake.ingest(SAMPLE_DATA, progress=False)
    assert "cap_lang" not in lake.dataset().schema.names
    version = lake.dataset().version
    with pytest.raises(LakeError, match="step 1 \\(sql\\).*names cap_langg, which is not a column of lake .* "
                                        "\\(did you mean cap_lang"):
        lake.curate({"name": "typo", "step": [{"filter": "sql", "where": "width >= 256 AND cap_langg = 'en'"}]},
                    progress=False)
    assert lake.dataset().version == version
    rep = lake.curate({"name": "readme", "step": [{"filter": "sql", "where": "width >= 256 AND cap_lang = 'en'"}]},
                      progress=False)
    df = lake.to_pandas(["width", "cap_lang", "keep", "ingest_status"])
    ok = df["ingest_status"] != "error"  # ingest_error runs first where a recipe does not list it
    assert df["keep"].tolist() == ((df["width"] >= 256) & (df["cap_lang"] == "en") & ok).tolist()
    assert rep.kept == int(df["keep"].sum()) and 0 < rep.kept < len(df)


def test_one_override_spelled_two_ways_is_one_recipe_and_the_file_s_own_value_none(featured):
    """`--set 2.min=25` and `--set short.min=25` (its reason) made two hashes and tags (the second
    redid the work), and a --set of the value the file already holds a third."""
    lake, recipe = featured
    spelled = [load_recipe(recipe, {key: 25}) for key in ("2.min", "short.min", "column.min")]
    assert len({r.hash for r in spelled}) == 1 and all(r.overrides == {"short.min": 25} for r in spelled)
    plain = load_recipe(recipe)
    same = load_recipe(recipe, {"alignment.min_percentile": 20, "4.min": None})  # the file's value; the default
    assert same.overrides == {} and same.hash == plain.hash and same.tag_prefix == plain.tag_prefix
    # the file's 20 given as 20.0, and a step's default reason given: no override either (each made a tag)
    assert load_recipe(recipe, {"alignment.min_percentile": 20.0, "ingest_error.reason": "ingest_error"}).hash == plain.hash
    first = lake.curate(str(recipe), overrides={"short.min": 25}, progress=False)
    again = lake.curate(str(recipe), overrides={"2.min": 25}, progress=False)
    assert again.tag == first.tag and again.nothing_to_do


def test_a_dry_run_names_a_dedup_command_that_runs_on_a_lake_of_two_embeddings(sample_lake_embedded: Lake,
                                                                                tmp_path: Path):
    """The hint was `lakecurate dedup LAKE`, which refuses a lake of several embeddings."""
    import shlex

    lake = Lake.open(shutil.copytree(sample_lake_embedded.uri, tmp_path / "lake"))
    lake.embed("tiny-random", name="other", workers=0, batch_size=8, progress=False)
    recipe = {"name": "d", "embedding": "other", "step": [{"filter": "duplicate"}]}
    with pytest.raises(LakeError, match="--embedding other") as e:
        lake.curate(recipe, dry_run=True, progress=False)
    hint = str(e.value).split("(")[-1].split(")")[0]
    res = CliRunner().invoke(main, shlex.split(hint)[1:] + ["--semantic-threshold", "0.999"])  # (a test model)
    assert res.exit_code == 0, res.output
    assert lake.curate(recipe, dry_run=True, progress=False).dropped["duplicate"] >= 0


def test_a_built_in_recipe_s_name_is_the_built_in_even_beside_a_file_of_that_name(tmp_path: Path, monkeypatch):
    """A file `basic` in the working folder ran instead of the built-in (status's fix command names a
    built-in by its name, so pasting it there ran the file); ./basic is the file."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "basic").write_text('name = "mine"\n[[step]]\nfilter = "caption_missing"\n')
    assert load_recipe("basic").name == "basic" and len(load_recipe("basic").steps) > 1
    assert load_recipe("./basic").name == "mine"


def test_a_recipe_that_needs_an_embedding_names_its_own_steps(tmp_path: Path):
    """A zero_shot-only recipe on a lake without an embedding was told "(the alignment step needs
    them)", a step it does not have."""
    lake = Lake.create(tmp_path / "lake")
    lake.ingest(SAMPLE_DATA, progress=False)
    recipe = {"name": "z", "step": [{"filter": "zero_shot", "prompts": ["a dog runs"], "against": ["a man smiles"],
                                     "max_prob": 0.5}]}
    with pytest.raises(LakeError, match=r"the zero_shot step needs them") as err:
        lake.curate(recipe, progress=False)
    assert "alignment" not in str(err.value)


def test_one_step_set_twice_two_ways_is_refused(featured):
    """`--set alignment.min_percentile=20 --set 4.min_percentile=40` (one step named two ways): the
    last won without a word."""
    _, recipe = featured
    with pytest.raises(LakeError, match=r"alignment.min_percentile is set twice, to 15 and 40; give it once"):
        load_recipe(recipe, {"alignment.min_percentile": 15, "4.min_percentile": 40})
    assert load_recipe(recipe, {"alignment.min_percentile": 15, "4.min_percentile": 15}).overrides == \
        {"alignment.min_percentile": 15}


def test_a_recipe_without_ingest_error_never_keeps_an_error_row(featured):
    """A recipe that did not list ingest_error kept the rows whose image could not be used (keep =
    true, no reason): rebalance, sequence and the loader took them for training pairs. It runs first."""
    lake, _ = featured
    rep = lake.curate({"name": "len", "step": [{"filter": "column", "column": "cap_len", "min": 0}]}, progress=False)
    got = lake.to_pandas(["key", "ingest_status", "keep", "drop_reason"])
    errors = got[got["ingest_status"] == "error"]
    assert len(errors) == 2 and not errors["keep"].any()
    assert set(errors["drop_reason"]) == {"ingest_error"}
    assert rep.dropped["ingest_error"] == 2
    assert [s.filter for s in load_recipe({"name": "x", "step": [{"filter": "caption_missing"}]}).steps] == \
        ["ingest_error", "caption_missing"]
    listed = load_recipe({"name": "x", "step": [{"filter": "caption_missing"}, {"filter": "ingest_error"}]})
    assert [s.filter for s in listed.steps] == ["caption_missing", "ingest_error"]  # where the file lists it


def test_zero_shot_fails_a_row_without_an_image_vector():
    """A row the encoder could not embed (no image vector: no probability) passed a zero_shot step
    while alignment fails it; nothing shows it does not match the prompts."""
    import pandas as pd

    from lakecurate.curate import FILTERS, _zero_shot_key

    p = {"prompts": ["a watermark"], "against": ["a photo"], "max_prob": 0.5}
    df = pd.DataFrame({_zero_shot_key(p): [0.1, np.nan, 0.9]})
    assert FILTERS["zero_shot"].drop(df, p).tolist() == [False, True, True]


def test_an_input_rewritten_while_curate_decides_leaves_it_stale(featured, monkeypatch):
    """A teammate's rewrite of an input committed after curate read the lake and before its decision
    landed: curate's commit (made at a read version after the rewrite) read as made from it, and
    status called the decision current though it judged the old values. The commit records the
    version curate read."""
    from lakecurate import columns, graph

    lake, recipe = featured
    commit = columns.ChangedFragments.commit
    rewritten = []

    def rewrite_then_commit(self, *args, **kwargs):
        if not rewritten:  # another writer's values for cap_len (as a feature run after a caption change)
            frag = lake.dataset().get_fragments()[0]
            rewritten.append(columns.fill_fragments(lake, {frag.fragment_id: pa.table(
                {"cap_len": pa.array([999] * frag.count_rows(), pa.int32())})}))
        return commit(self, *args, **kwargs)

    monkeypatch.setattr(columns.ChangedFragments, "commit", rewrite_then_commit)
    lake.curate(recipe, progress=False)
    assert rewritten and rewritten[0] is not None
    st = next(s for s in graph.states(lake) if s.node.stage == "curate")
    assert st.state == "stale" and any("cap_len was written at version" in r for r in st.reasons), st.reasons
