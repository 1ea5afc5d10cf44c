"""The CLI: thin wrappers, readable output, no tracebacks for user errors, documented commands."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import click
import lance
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from lakecurate import Lake, graph
from lakecurate.cli import TargetType, main

from .conftest import REPO, SAMPLE_DATA, one_more_copy


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def test_ingest_info_sql(runner: CliRunner, tmp_path: Path):
    lake = str(tmp_path / "lake")
    res = runner.invoke(main, ["ingest", lake, str(SAMPLE_DATA)])
    assert res.exit_code == 0, res.output
    assert "ingested 28 new pairs" in res.output
    assert re.search(r"image_truncated\s+error\s+1", res.output)
    res = runner.invoke(main, ["ingest", lake, str(SAMPLE_DATA), "--json"])
    assert json.loads(res.output)["skipped_existing"] == 28
    res = runner.invoke(main, ["info", lake])
    assert res.exit_code == 0 and "28 rows" in res.output and "content_hash" in res.output
    res = runner.invoke(main, ["sql", lake, "SELECT COUNT(*) AS n FROM pairs WHERE ingest_status = 'error'",
                               "--format", "json"])
    assert json.loads(res.output) == [{"n": 2}]
    res = runner.invoke(main, ["tag", lake, "raw"])
    assert res.exit_code == 0 and "as 'raw'" in res.output
    res = runner.invoke(main, ["sql", lake, "SELECT COUNT(*) AS n FROM pairs", "--version", "raw", "--format", "csv"])
    assert res.output.splitlines() == ["n", "28"]


def test_user_errors_are_one_line_messages(runner: CliRunner, tmp_path: Path):
    res = runner.invoke(main, ["info", str(tmp_path / "missing")])
    assert res.exit_code == 1 and "no lake at" in res.output and "Traceback" not in res.output
    res = runner.invoke(main, ["ingest", str(tmp_path / "l"), str(tmp_path / "nothing.xyz")])
    assert res.exit_code == 1 and "does not exist" in res.output
    Lake.create(tmp_path / "l")  # a failed ingest leaves no lake behind, so make one for the SQL error
    res = runner.invoke(main, ["sql", str(tmp_path / "l"), "SELEC"])
    assert res.exit_code == 1 and res.output.startswith("Error: SQL") and res.output.count("\n") == 1


def test_demo_runs_on_sample_data(runner: CliRunner, tmp_path: Path, monkeypatch):
    monkeypatch.chdir(REPO)
    res = runner.invoke(main, ["demo", "--lake", str(tmp_path / "demo")])
    assert res.exit_code == 0, res.output
    assert "gravel_truncated.jpg" in res.output and "28 rows" in res.output
    # the README's claim: the demo says where the planted mismatched caption ranks, truthfully
    m = re.search(r"planted mismatched caption \((\S+), see .*\) ranks (\d+) of (\d+) from the lowest", res.output)
    assert m and m.group(1) == "chelsea_mismatch.jpg", res.output
    lake = Lake.open(tmp_path / "demo")
    score = next(c for c in lake.dataset().schema.names if c.endswith("_score") and c != "keep")
    keys = lake.sql(f"SELECT key FROM pairs WHERE {score} IS NOT NULL ORDER BY {score}")["key"].tolist()
    assert int(m.group(2)) == keys.index("chelsea_mismatch.jpg") + 1 and int(m.group(3)) == len(keys)
    assert re.search(r"^chelsea_mismatch\.jpg: (kept|dropped \(\w+\))$", res.output, re.M), res.output
    assert f"lakecurate run {tmp_path / 'demo'} demo (again: nothing to do)" in res.output
    # a caption fixed in place: `run LAKE demo` brings every stage up to date (it stopped at curate:
    # "reads dup_group ... (dedup), which is stale", with no dedup step to run)
    lance.dataset(lake.table_uri).update({"caption": "'a red brick wall'"}, where="key = 'brick.jpg'")
    res = runner.invoke(main, ["run", str(tmp_path / "demo"), "demo"])
    assert res.exit_code == 0, res.output
    assert re.search(r"^dedup +ran +stale", res.output, re.M) and re.search(r"^curate +ran", res.output, re.M), res.output
    assert all(s.state == "current" for s in graph.states(Lake.open(tmp_path / "demo"))), res.output
    # another --source: the hint repeats the demo (run LAKE demo would ingest the bundled sample_data into it)
    own = shutil.copytree(REPO / "sample_data", tmp_path / "mine")
    res = runner.invoke(main, ["demo", "--lake", str(tmp_path / "own"), "--source", str(own)])
    assert res.exit_code == 0, res.output
    assert f"lakecurate demo --lake {tmp_path / 'own'} --source {own} (again" in res.output
    # --json: the same facts as one object (the README says every command has it; demo had none)
    res = runner.invoke(main, ["demo", "--lake", str(tmp_path / "own"), "--source", str(own), "--json"])
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout)
    assert got["rows"] == 28 and {r["key"] for r in got["flagged"]} >= {"gravel_truncated.jpg"}
    assert got["curate"]["kept"] + sum(got["curate"]["dropped"].values()) == 28 and got["report"].endswith("report.html")
    # an unknown model is refused before the lake is made (it made one, version 1, then refused)
    res = runner.invoke(main, ["demo", "--lake", str(tmp_path / "typo"), "--model", "nope", "--json"])
    assert res.exit_code == 1 and "unknown model 'nope'" in json.loads(res.stdout)["error"]
    assert not (tmp_path / "typo").exists()
    bad = runner.invoke(main, ["demo", "--lake", str(tmp_path / "x"), "--source", str(tmp_path / "nowhere"), "--json"])
    assert bad.exit_code == 1 and "is not a folder" in json.loads(bad.stdout)["error"]


def test_every_command_has_an_example_and_is_in_the_readme(runner: CliRunner):
    readme = (REPO / "README.md").read_text()
    for name, cmd in main.commands.items():
        assert "Example: lakecurate " + name in (cmd.help or ""), f"'{name}' help has no example"
        assert f"lakecurate {name}" in readme, f"'{name}' is not documented in README.md"


# --------------------------------------------------------------------------- issue 16: --json, numbers, demo
def _leaf_commands(group: click.Group, prefix: str = "") -> dict[str, click.Command]:
    out = {}
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            out.update(_leaf_commands(cmd, f"{prefix}{name} "))
        else:
            out[prefix + name] = cmd
    return out


def test_every_command_has_json():
    lacking = [name for name, cmd in _leaf_commands(main).items()
               if name != "sql" and "--json" not in {o for p in cmd.params for o in p.opts}]  # (demo has one now)
    assert not lacking, f"no --json on: {', '.join(lacking)}"


@pytest.fixture
def curated(sample_lake_embedded, tmp_path: Path) -> str:
    lake = Lake.open(shutil.copytree(sample_lake_embedded.uri, tmp_path / "lake"))
    lake.curate({"name": "t", "step": [{"filter": "ingest_error"}, {"filter": "caption_missing"}]}, progress=False)
    return lake.uri


def test_json_outputs_parse_and_carry_the_text_outputs_facts(runner: CliRunner, curated: str, tmp_path: Path):
    def run(*args: str):
        res = runner.invoke(main, [*args, "--json"])
        assert res.exit_code == 0, (args, res.output)
        return json.loads(res.stdout)

    clu = run("cluster", curated, "-k", "2")
    assert clu["k"] == 2 and clu["lake"] == curated and sum(c["size"] for c in clu["concepts"]) == clu["rows"]
    assert not {"target", "kept", "exported_rows"} & set(clu)  # rebalance's fields (always 0 in cluster's report)
    reb = run("rebalance", curated, "--target", "0.5")
    assert reb["kept"] == Lake.open(curated).count("rebalance_keep") and len(reb["concepts"]) == 2
    seq = run("sequence", curated, "--shard-size", "3")
    assert seq["rows"] == reb["kept"] and seq["shards"] == -(-seq["rows"] // 3)
    # like the other commands: the lake, the version written (the order is in it), the time taken
    assert seq["lake"] == curated and seq["version"] == Lake.open(curated).version and seq["seconds"] > 0
    assert Lake.open(curated).dataset(seq["version"]).count_rows(filter="seq_order IS NOT NULL") == seq["rows"]
    exp = run("export", curated, str(tmp_path / "out"), "--format", "parquet")
    assert exp["rows"] == reb["kept"] and exp["format"] == "parquet"
    rep = run("report", curated, str(tmp_path / "r.html"), "--sample-rows", "10")
    assert Path(rep["path"]).is_file() and rep["rows"] == 28
    tag = run("tag", curated, "mine")
    assert tag == {"tag": "mine", "version": Lake.open(curated).version, "branch": "main", "lake": curated}
    log = run("log", curated, "-n", "3")
    assert len(log) == 3 and log[0]["version"] == tag["version"] and "mine" in log[0]["tags"] and log[0]["operation"]
    assert run("branch", "create", curated, "exp")["branch"] == "exp"
    assert [b["branch"] for b in run("branch", "list", curated)] == ["main", "exp"]
    assert run("feature", "list", curated) == []
    before = Lake.open(curated).version
    res = run("restore", curated, "mine")  # the latest's state already: no commit
    assert res["previous"] == before and res["version"] == before and res["restored"] == "mine" and not res["changed"]
    res = run("restore", curated, str(before - 1))
    assert res["previous"] == before and res["version"] == before + 1 and res["changed"]
    assert set(run("compact", curated)) >= {"fragments_before", "fragments_after"}
    assert run("cleanup", curated)["old_versions"] == 0  # nothing older than 7 days
    assert run("diff", curated, "mine")["rows_a"] >= 0
    assert run("info", curated)["rows"] == 28
    assert len(run("search", curated, "cat", "-k", "2")) == 2
    assert run("embed", curated, "--model", "tiny-random", "--workers", "0")["rows_embedded"] == 0  # nothing new
    assert run("dedup", curated, "--method", "exact", "--workers", "0")["rows"] == 28


def test_search_reads_a_past_version_as_every_other_read_command(runner: CliRunner, curated: str, tmp_path: Path):
    """`Lake.search(version=)` worked, but the command had no --version (sql, export, report,
    status, serve and tag have one)."""
    lake = Lake.open(curated)
    lake.tag("before")
    lake.ingest(one_more_copy(tmp_path / "more", "a cat once more", name="newcat"), progress=False)
    lake.embed("tiny-random", workers=0, progress=False)

    def found(*args: str) -> list:
        res = runner.invoke(main, ["search", curated, "cat", "--where", "key = 'newcat.jpg'", *args, "--json"])
        assert res.exit_code == 0, res.output
        return json.loads(res.stdout)

    assert len(found()) == 1 and found("--version", "before") == []
    assert found("--version", str(lake.dataset("before").version)) == []
    res = runner.invoke(main, ["search", curated, "cat", "--version", "nosuch"])
    assert res.exit_code == 1 and "nosuch" in res.output and "Traceback" not in res.output


def test_target_is_a_fraction_or_a_whole_count():
    t = TargetType()
    assert t.convert("0.5", None, None) == 0.5 and isinstance(t.convert("1", None, None), float)
    assert t.convert("200", None, None) == 200 and isinstance(t.convert("200", None, None), int)
    for bad in ("1.5", "0", "-3", "nan", "inf", "half"):
        with pytest.raises(click.BadParameter):
            t.convert(bad, None, None)


def test_tables_round_floats(runner: CliRunner, curated: str):
    runner.invoke(main, ["cluster", curated, "-k", "2"])
    res = runner.invoke(main, ["rebalance", curated, "--target", "0.5"])
    assert res.exit_code == 0, res.output
    assert "isolation" in res.output and not re.search(r"\d\.\d{5,}", res.output), res.output


def test_evaluate_names_refused_paths_and_takes_root(runner: CliRunner, curated: str, tmp_path: Path):
    images, manifest = tmp_path / "images", tmp_path / "manifest"
    images.mkdir()
    manifest.mkdir()
    rng = np.random.default_rng(0)
    lines = ["image,caption"]
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(images / f"e{i}.png")
        lines.append(f"{images / f'e{i}.png'},a noisy test picture number {i}")
    (manifest / "captions.csv").write_text("\n".join(lines) + "\n")  # absolute paths outside its folder
    args = ["evaluate", curated, "--eval-set", str(manifest / "captions.csv"), "--seeds", "1", "--steps", "3", "--no-record"]
    res = runner.invoke(main, args)
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "path_outside_root 4" in res.stderr and str(images / "e0.png") in res.stderr and "--root" in res.stderr
    res = runner.invoke(main, [*args, "--root", str(images), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["eval_images"] == 4 and {r["arm"] for r in out["table"]} == {"view", "all", "random", "frozen encoder"}


def test_library_refuses_the_same_numbers(curated: str, tmp_path: Path):
    """The CLI's ranges hold for library callers too, as LakeErrors raised before any work."""
    from lakecurate import LakeError

    lake = Lake.open(curated)
    with pytest.raises(LakeError, match="invalid sample_rows -1: expected an integer >= 1"):
        lake.report(tmp_path / "r.html", sample_rows=-1)
    assert not (tmp_path / "r.html").exists()
    with pytest.raises(LakeError, match="at least 1 nearest pair"):
        lake.search("cat", k=0)
    with pytest.raises(LakeError, match="invalid seeds 0: expected an integer >= 1"):
        lake.evaluate(eval_set=tmp_path, seeds=0)
    with pytest.raises(LakeError, match="not an image Pillow can read"):
        lake.search(SAMPLE_DATA / "notes_not_an_image.jpg", k=1)
    # queries that were searched for as captions (or a tokenizer's TypeError traceback)
    with pytest.raises(LakeError, match="the query is empty"):
        lake.search("  ", k=1)
    with pytest.raises(LakeError, match="looks like the path of an image file, but there is no such file"):
        lake.search(str(tmp_path / "typo.jpg"), k=1)
    with pytest.raises(LakeError, match="not valid UTF-8 text"):
        lake.search(b"\xff\xfe".decode("utf-8", "surrogateescape"), k=1)  # what argv holds for such bytes
    with pytest.raises(LakeError, match="is a folder; pass the path of one image file"):
        lake.search(str(tmp_path), k=1)
    assert len(lake.search("a photo of cat.jpg", k=1)) == 1  # words around a file name: a caption search
    assert len(lake.search("IMG_1234.jpg", k=1)) == 1  # a bare file name: the captions caption_filename catches


def test_demo_on_a_branch_leaves_main_alone(runner: CliRunner, tmp_path: Path, monkeypatch):
    """`--branch exp demo` wrote main, ignoring --branch."""
    monkeypatch.chdir(REPO)
    lake = Lake.create(tmp_path / "demo")
    lake.ingest(REPO / "sample_data", progress=False)
    lake.create_branch("exp")
    v = lake.version
    res = runner.invoke(main, ["--branch", "exp", "demo", "--lake", lake.uri])
    assert res.exit_code == 0, res.output
    assert lake.version == v and Lake.open(lake.uri, branch="exp").version > v  # the branch got the work


def test_demo_on_a_small_folder_of_its_own_runs_through(runner: CliRunner, tmp_path: Path):
    """--source with 2 pairs stopped at the cluster step ("-k 3 asks for more concepts than lake ... has
    embedded rows (2)"), advice demo cannot take (it has no -k), the lake left half built."""
    own = tmp_path / "two"
    own.mkdir()
    for name in ("coffee", "rocket"):
        shutil.copy(REPO / "sample_data" / f"{name}.jpg", own / f"{name}.jpg")
        (own / f"{name}.txt").write_text(f"a photo of a {name}")
    res = runner.invoke(main, ["demo", "--lake", str(tmp_path / "lake"), "--source", str(own)])
    assert res.exit_code == 0, res.output
    assert Lake.open(tmp_path / "lake").count("concept IS NOT NULL") == 2


def test_demo_with_the_test_model_runs_through(runner: CliRunner, tmp_path: Path, monkeypatch):
    """`demo --model tiny-random` stopped at its dedup step: semantic dedup refuses a randomly
    initialised model's embeddings, and demo has no option to leave the method out."""
    monkeypatch.chdir(REPO)
    res = runner.invoke(main, ["demo", "--lake", str(tmp_path / "demo"), "--model", "tiny-random"])
    assert res.exit_code == 0, res.output
    assert "semantic dedup needs a real model" in res.output and "== curate" in res.output, res.output
    lake = Lake.open(tmp_path / "demo")
    assert all(s.state == "current" for s in graph.states(lake)), res.output
    names = lake.dataset().schema.names
    assert "dup_phash_group" in names and "dup_semantic_group" not in names and lake.count("seq_order IS NOT NULL") > 0


def test_a_caption_s_escape_codes_are_shown_not_sent_to_the_terminal(runner: CliRunner, tmp_path: Path):
    """Captions are scraped text: one holding "\\x1b]0;pwned\\x07\\x1b[2J" set the terminal's title
    and cleared it when `lakecurate sql` printed it (a bidi override reversed the rest of the row).
    A table shows them escaped; --json escapes them as JSON does; the stored caption is unchanged."""
    lake = Lake.create(tmp_path / "lake")
    lake.ingest(REPO / "sample_data", progress=False)
    hostile = "a red car\x1b]0;pwned\x07\x1b[2J\u202eevil"
    lance.dataset(lake.table_uri).update({"caption": "'" + hostile + "'"}, where="key = 'brick.jpg'")
    res = runner.invoke(main, ["sql", lake.uri, "SELECT key, caption FROM pairs WHERE key = 'brick.jpg'"])
    assert res.exit_code == 0, res.output
    assert "\x1b" not in res.output and "\x07" not in res.output and "\u202e" not in res.output, repr(res.output)
    assert "a red car\\x1b]0;pwned\\x07\\x1b[2J\\u202eevil" in res.output, res.output
    res = runner.invoke(main, ["sql", lake.uri, "SELECT caption FROM pairs WHERE key = 'brick.jpg'", "--json"])
    assert json.loads(res.stdout) == [{"caption": hostile}]
