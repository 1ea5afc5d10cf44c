"""Every command, every class of bad input: exit code != 0, one error line, no traceback, and the
lake exactly as it was (no version, tag or branch added; a missing lake is not created).

One parametrized test (img2dataset style): a case is the command line (``{lake}``: a small curated
lake with an embedding, concepts and a tag; ``{tmp}``: a scratch folder; ``{out}``: an output
path of this case; ``{missing}``: a path with no lake) and the class of bad input it stands for.
"""

from __future__ import annotations

import errno
import io
import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import lance
import pytest
from click.testing import CliRunner
from PIL import Image

from lakecurate import Lake
from lakecurate.cli import main

from .conftest import REPO, SAMPLE_DATA

TAG = "t-tag"
NOT_IMAGE = str(SAMPLE_DATA / "notes_not_an_image.jpg")

# (class of bad input, command line)
CASES = [
    # numbers outside their range: refused by the option's click type before the lake is opened
    ("number", "embed {lake} --model tiny-random --batch-size -4"),
    ("number", "embed {lake} --model tiny-random --workers -1"),
    ("number", "search {lake} cat -k 0"),
    ("number", "dedup {lake} --phash-distance 65"),
    ("number", "dedup {lake} --semantic-threshold nan"),
    ("number", "cluster {lake} -k -3 --recompute"),
    ("number", "cluster {lake} --seed -1"),
    ("number", "rebalance {lake} --target 1.5"),
    ("number", "rebalance {lake} --target nan"),
    ("number", "rebalance {lake} --target 0"),
    ("number", "rebalance {lake} --target -3"),
    ("number", "rebalance {lake} --temperature 0"),
    ("number", "rebalance {lake} --temperature inf"),
    ("number", "rebalance {lake} --max-repeats -2"),
    ("number", "sequence {lake} --shard-size 0"),
    ("number", "export {lake} {out} --shard-size -5"),
    ("number", "log {lake} -n -1"),
    ("number", "report {lake} {out}.html --sample-rows -1"),
    ("number", "compact {lake} --target-rows 0"),
    ("number", "cleanup {lake} --older-than-days -1"),
    ("number", "cleanup {lake} --older-than-days nan"),
    ("number", "diff {lake} " + TAG + " --show -1"),
    ("number", "evaluate {lake} --eval-set {tmp} --seeds 0"),
    ("number", "evaluate {lake} --eval-set {tmp} --steps -1"),
    ("number", "feature add {lake} f --udf m:f --batch-size 0"),
    ("number", "ingest {lake} {sample} --max-pixels -1"),       # H1
    ("number", "ingest {lake} {sample} --max-caption-chars -1"),  # H1
    # numbers past a C integer: an OverflowError traceback deep in the stage, before Count
    ("number", "embed {lake} --model tiny-random --workers 99999999999999999999"),
    ("number", "signals {lake} --workers 99999999999999999999"),
    ("number", "export {lake} {out} --shard-size 99999999999999999999"),
    ("number", "compact {lake} --target-rows 99999999999999999999"),
    ("number", "cleanup {lake} --older-than-days 1e300"),
    # a version that is not one
    ("version", "restore {lake} 9999"),
    ("version", "restore {lake} 99999999999999999999"),
    ("version", "diff {lake} 1 99999999999999999999"),
    ("version", "tag {lake} new-tag --version 99999999999999999999"),
    ("version", "restore {lake} no-such-tag"),
    ("version", "diff {lake} 9999"),
    ("version", "diff {lake} 1 9999"),
    ("version", "sql {lake} 'SELECT COUNT(*) FROM pairs' --version 9999"),
    ("version", "export {lake} {out} --version 9999"),
    ("version", "report {lake} {out}.html --version 9999"),
    ("version", "tag {lake} new-tag --version 9999"),
    ("version", "branch create {lake} b1 --from 9999"),
    ("version", "--branch no-such-branch info {lake}"),
    # no lake there
    *[("missing lake", cmd) for cmd in (
        "info {missing}", "log {missing}", "sql {missing} 'SELECT 1'", "embed {missing} --model tiny-random",
        "search {missing} cat", "dedup {missing}", "curate {missing} basic", "cluster {missing}",
        "rebalance {missing}", "sequence {missing}", "export {missing} {out}", "report {missing} {out}.html",
        "tag {missing} x", "restore {missing} 1", "diff {missing} 1", "compact {missing}", "cleanup {missing}",
        "branch list {missing}", "branch create {missing} b", "feature list {missing}",
        "evaluate {missing} --eval-set {tmp}")],
    # tag names
    ("tag name", "tag {lake} 'bad name'"),
    ("tag name", "tag {lake} 123"),
    ("tag name", "tag {lake} " + TAG),
    ("tag name", "tag {lake} no-such-tag --delete"),
    # search with a file that is not an image
    ("search file", "search {lake} " + NOT_IMAGE),
    # bad --where / SQL (H2)
    ("where", "search {lake} cat --where 'no_such_column > 1'"),
    ("where", "rebalance {lake} --where 'keep; DROP TABLE pairs'"),
    ("where", "sequence {lake} --where 'width > 1 height > 1'"),
    ("where", "export {lake} {out} --where 'keep LIMIT 1'"),
    ("where", "diff {lake} " + TAG + " --where 'keep -- comment'"),
    # an empty condition: rebalance and sequence took it as every row (dropped rows exported)
    ("where", "rebalance {lake} --where ''"),
    ("where", "sequence {lake} --where '  '"),
    ("where", "export {lake} {out} --where ''"),
    ("where", "diff {lake} " + TAG + " --where ''"),
    ("where", "search {lake} cat --where ''"),
    ("where", "evaluate {lake} --eval-set {tmp} --view 'no_such_column > 1'"),
    ("sql", "sql {lake} \"COPY (SELECT 1) TO '{out}.csv'\""),
    # recipes with type errors (H3)
    ("recipe", "curate {lake} {tmp}/words.toml"),
    ("recipe", "curate {lake} {tmp}/lang.toml"),
    ("recipe", "curate {lake} {tmp}/pct.toml"),
    # ingest bad inputs (H1) and export into the lake (H6)
    ("ingest", "ingest {lake} {tmp}/no-such-source"),
    ("ingest", "ingest {lake} {tmp}/rows.csv --image-col no_such_column"),
    ("ingest", "ingest {lake} {lake}"),
    ("ingest", "ingest {lake} {lake}/pairs.lance"),
    ("export", "export {lake} {lake}/pairs.lance --format lance --overwrite"),
    # a column prefix that cannot name columns in SQL
    ("name", "embed {lake} --model tiny-random --name 'bad name'"),
    # reviews of ids the lake lacks (exit 0 with an undo hint naming an action that was never logged)
    ("review", "review {lake} no-such-id --drop junk"),
    # queries that are not one: empty, a missing image file (searched for as a caption)
    ("search", "search {lake} ''"),
    ("search", "search {lake} {tmp}/no-such-photo.jpg"),
    # outputs that cannot be made (FileExistsError / FileNotFoundError tracebacks)
    ("output", "export {lake} {tmp}/rows.csv/sub"),
    ("output", "report {lake} {tmp}/rows.csv/sub.html"),
    ("output", "export {lake} /proc/lakecurate-out"),
    ("output", "report {lake} /proc/lakecurate-out.html"),
]

RECIPES = {
    "words.toml": 'name = "w"\n[[step]]\nfilter = "caption_length"\nmin_words = "three"\n',
    "lang.toml": 'name = "l"\n[[step]]\nfilter = "language"\nkeep = "en"\n',
    "pct.toml": 'name = "p"\n[[step]]\nfilter = "alignment"\nmin_percentile = 150\n',
}


@pytest.fixture(scope="module")
def bad_env(sample_lake_embedded: Lake, tmp_path_factory) -> dict[str, str]:
    """A curated lake (recipe tag, concepts, a tag of its own) and a scratch folder with bad recipes."""
    base = tmp_path_factory.mktemp("bad")
    lake = Lake.open(shutil.copytree(sample_lake_embedded.uri, base / "lake"))
    lake.curate({"name": "t", "step": [{"filter": "ingest_error"}, {"filter": "caption_missing"}]}, progress=False)
    lake.cluster(2)
    lake.tag(TAG)
    tmp = base / "scratch"
    tmp.mkdir()
    for name, text in RECIPES.items():
        (tmp / name).write_text(text)
    (tmp / "rows.csv").write_text("image,caption\nx.jpg,a cat\n")
    return {"lake": lake.uri, "tmp": str(tmp), "missing": str(base / "missing"), "sample": str(SAMPLE_DATA)}


def _state(uri: str) -> tuple:
    """Everything a failed command must leave as it was: versions, tags and branches."""
    ds = lance.dataset(str(Path(uri) / "pairs.lance"))
    return ([v["version"] for v in ds.versions()], sorted(ds.tags.list()), sorted(ds.branches.list()))


def _one_error_line(res) -> None:
    assert res.exit_code not in (0, None), res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in res.output
    errors = [line for line in res.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, res.stderr
    # the one line is all of stderr (usage errors, exit code 2, included), but notes printed before the work began
    rest = [line for line in res.stderr.splitlines() if line.strip() and not line.startswith("note:")]
    assert rest == errors, res.stderr


@pytest.mark.parametrize("i, kind, command", [(i, k, c) for i, (k, c) in enumerate(CASES)],
                         ids=[f"{k}: {c.split(' {')[0]} {i}" for i, (k, c) in enumerate(CASES)])
def test_bad_input_is_one_line_and_changes_nothing(bad_env: dict[str, str], i: int, kind: str, command: str):
    # outputs and missing lakes are per case, so one case that writes cannot fail the others
    paths = {"out": f"{bad_env['tmp']}/out-{i}", "missing": f"{bad_env['missing']}-{i}"}
    args = shlex.split(command.format(**{**bad_env, **paths}))
    before = _state(bad_env["lake"])
    res = CliRunner().invoke(main, args)
    _one_error_line(res)
    assert _state(bad_env["lake"]) == before, f"{kind}: the lake changed"
    assert not Path(paths["missing"]).exists(), "a missing lake was created"
    assert not any(Path(paths["out"] + ext).exists() for ext in ("", ".html", ".csv")), "an output was written"


@pytest.mark.parametrize("message", [OSError(errno.ENOSPC, "No space left on device", "/lake/pairs.lance/data/x.lance"),
                                     OSError("LanceError(IO): Generic LocalFileSystem error: No space left on device (os error 28)")])
@pytest.mark.parametrize("command", ["ingest", "embed", "export"])
def test_full_disk_is_one_line(bad_env: dict[str, str], monkeypatch, command: str, message: OSError):
    """ENOSPC (raised by Python with an errno, or by Lance as text) is one line saying what to do."""
    def full(*args, **kwargs):
        raise message

    monkeypatch.setattr(Lake, command, full)  # the write fails as a full disk makes it fail
    args = {"ingest": ["ingest", bad_env["lake"], bad_env["sample"]],
            "embed": ["embed", bad_env["lake"], "--model", "tiny-random"],
            "export": ["export", bad_env["lake"], bad_env["tmp"] + "/full"]}[command]
    res = CliRunner().invoke(main, args)
    _one_error_line(res)
    assert "no space left on device while writing" in res.stderr and "committed work is kept" in res.stderr


def test_search_with_an_image_file_still_works(bad_env: dict[str, str], tmp_path: Path):
    """The non-image refusal does not catch real images."""
    img = tmp_path / "q.png"
    Image.new("RGB", (32, 32), (10, 200, 30)).save(img)
    res = CliRunner().invoke(main, ["search", bad_env["lake"], str(img), "-k", "2", "--json"])
    assert res.exit_code == 0, res.output
    assert io.StringIO(res.stdout).read().count('"similarity"') == 2


@pytest.mark.parametrize("args", [["search", "{lake}", "", "--json"], ["cluster", "{lake}", "-k", "999", "--json"],
                                  ["review", "{lake}", "no-such-id", "--keep", "--json"]])
def test_json_errors_are_json_on_stdout(bad_env: dict[str, str], args: list[str]):
    """With --json a script reads stdout: the error is a JSON object there (stdout was empty), the
    one line stays on stderr, exit code 1."""
    res = CliRunner().invoke(main, [a.format(**bad_env) for a in args])
    _one_error_line(res)
    got = json.loads(res.stdout)
    assert set(got) == {"error"} and res.stderr.strip() == f"Error: {got['error']}"


@pytest.mark.parametrize("args", [["restore", "{lake}", "9999"], ["tag", "{lake}", "bad name"]])
def test_a_real_process_prints_one_line(bad_env: dict[str, str], args: list[str]):
    """Outside CliRunner too: the installed entry point's stderr is the one line, exit code 1."""
    before = _state(bad_env["lake"])
    proc = subprocess.run([sys.executable, "-m", "lakecurate.cli", *(a.format(**bad_env) for a in args)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and proc.stderr.startswith("Error: "), proc.stderr
    assert _state(bad_env["lake"]) == before


def test_the_commands_in_hints_can_be_pasted_for_a_path_with_a_space(tmp_path: Path):
    """A hint names the lake as a shell takes it: an unquoted '/x/my lake' ran `cluster /x/my lake`."""
    uri = str(tmp_path / "my lake")
    assert CliRunner().invoke(main, ["--no-progress", "ingest", uri, str(SAMPLE_DATA)]).exit_code == 0
    res = CliRunner().invoke(main, ["rebalance", uri])
    assert res.exit_code != 0
    hint = res.output.strip().split("run: ", 1)[1]
    argv = shlex.split(hint)
    assert argv == ["lakecurate", "cluster", uri]
    res = CliRunner().invoke(main, ["log", str(tmp_path / "no lake")])
    assert shlex.split(res.output.split("create one with: ", 1)[1]) == ["lakecurate", "ingest", str(tmp_path / "no lake"), "SOURCE"]


@pytest.mark.parametrize("args", [["recaption", "{lake}", "--batch-size", "0", "--json"],
                                  ["cluster", "{lake}", "-k", "many", "--json"], ["search", "{lake}", "--json"]])
def test_json_usage_errors_are_json_on_stdout(bad_env: dict[str, str], args: list[str]):
    """A bad option or argument with --json: {"error": ...} on stdout too (stdout was empty), the
    one line on stderr, exit code 2 (click's, for usage)."""
    res = CliRunner().invoke(main, [a.format(**bad_env) for a in args])
    assert res.exit_code == 2 and res.stderr.count("\n") == 1, res.output
    got = json.loads(res.stdout)
    assert set(got) == {"error"} and got["error"] in res.stderr


@pytest.mark.parametrize("args, env", [(["info", "{lake}", "--json"], {"LAKECURATE_PROGRESS": "bogus"}),
                                       (["--bogus", "info", "{lake}", "--json"], {}),
                                       (["--branch", "a b", "info", "{lake}", "--json"], {}),
                                       (["info", "{lake}", "--json"], {"LAKECURATE_BRANCH": "a b"})])
def test_json_usage_errors_of_the_group_options_are_json_on_stdout(bad_env: dict[str, str], args: list[str],
                                                                   env: dict[str, str]):
    """The group's own options (--branch, --progress, their env variables) are parsed before any
    command: a bad one gave click's usage text on stderr and nothing on stdout, even with --json."""
    res = CliRunner().invoke(main, [a.format(**bad_env) for a in args], env=env)
    assert res.exit_code == 2 and res.stderr.count("\n") == 1 and "Usage:" not in res.stderr, res.output
    got = json.loads(res.stdout)
    assert set(got) == {"error"} and got["error"] in res.stderr
    if "LAKECURATE_PROGRESS" in env:
        assert "'bogus' in the environment variable LAKECURATE_PROGRESS is not a boolean" in got["error"]
    if "LAKECURATE_BRANCH" in env:  # (a bad branch name exited 1, as if the lake had failed)
        assert "branch name 'a b' in the environment variable LAKECURATE_BRANCH is not valid" in got["error"]
    elif "--branch" in args:
        assert "branch name 'a b' is not valid" in got["error"]


def test_paths_kinds_and_names_a_hostile_tester_tried(tmp_path: Path, monkeypatch):
    """Each was a traceback, a lake made where none was asked for, or a misleading line."""
    from lakecurate import ingest

    r = CliRunner()

    def run(*args: str):
        res = r.invoke(main, ["--no-progress", *args])
        return res.exit_code, " ".join(res.output.split())

    (tmp_path / "afile").write_text("x")
    code, out = run("ingest", str(tmp_path / "afile" / "sub"), str(SAMPLE_DATA))  # NotADirectoryError traceback
    assert code == 1 and "cannot make a lake at" in out and "Not a directory" in out and "Traceback" not in out
    code, out = run("ingest", "", str(SAMPLE_DATA))  # made a lake in the working directory
    assert code == 1 and "the lake path is empty" in out
    csv_file = tmp_path / "m.csv"
    csv_file.write_text("image,caption\na.jpg,x\n")
    code, out = run("ingest", str(tmp_path / "w"), str(csv_file), "--kind", "webdataset")  # a lake of one tar_corrupt row
    assert code == 1 and "is not a tar shard" in out and not (tmp_path / "w").exists()
    code, out = run("ingest", str(tmp_path / "m"), str(SAMPLE_DATA), "--kind", "manifest")  # "does not exist"
    assert code == 1 and "is a folder, not a manifest file" in out
    monkeypatch.setattr(ingest, "MAX_SHARDS", 100)  # {0000000..9999999} ran for minutes, 1.4 GB
    code, out = run("ingest", str(tmp_path / "b"), str(tmp_path / "g-{000..999}.tar"))
    assert code == 1 and "names more than 100 shards" in out
    empty = tmp_path / "empty.tar"
    empty.write_bytes(b"not a tar at all")
    lake = Lake.create(tmp_path / "lake")
    lake.ingest(empty, progress=False)
    assert "'None'" not in lake.to_pandas(["ingest_error"])["ingest_error"].iloc[0]
    lake.ingest(SAMPLE_DATA, progress=False)
    code, out = run("branch", "delete", lake.uri, "main")  # "has no branch 'main'"
    assert code == 1 and "cannot be deleted" in out
    code, out = run("sql", lake.uri, "INSTALL httpfs")  # "ALIAS statements are not allowed"
    assert code == 1 and "INSTALL statements are not allowed" in out


def test_tag_delete_takes_no_version(tmp_path: Path):
    """`lakecurate tag LAKE NAME --delete --version 5` ignored --version and deleted NAME wherever it
    pointed."""
    lake = Lake.create(tmp_path / "lake")
    lake.ingest(SAMPLE_DATA, progress=False)
    lake.tag("mine")
    res = CliRunner().invoke(main, ["tag", lake.uri, "mine", "--delete", "--version", "1"])
    assert res.exit_code == 2 and "it takes no --version" in res.output, res.output
    assert "mine" in lake.dataset().tags.list()


@pytest.mark.parametrize("sig,code,says", [("SIGTERM", 143, "terminated (SIGTERM) while starting"),
                                           ("SIGINT", 130, "interrupted (Ctrl-C) while starting")])
def test_sigterm_while_the_program_loads_is_exit_143_with_a_line(sig, code, says):
    """SIGTERM in the second the CLI takes to import (Lance, pyarrow, pandas) ended the process by
    the signal (exit -15, no word), Ctrl-C was a KeyboardInterrupt traceback: the program
    (pyproject's script) takes them from its first module."""
    import tomllib

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["lakecurate"] == "lakecurate.program:entry"
    child = ("import builtins, os, signal, sys\n"
             "real = builtins.__import__\n"
             "def imp(name, *a, **k):\n"
             "    if name == 'lakecurate.cli':  # a SIGTERM lands while the CLI loads\n"
             f"        os.kill(os.getpid(), signal.{sig})\n"
             "    return real(name, *a, **k)\n"
             "builtins.__import__ = imp\n"
             "sys.argv = ['lakecurate', '--help']\n"
             "from lakecurate.program import entry\n"
             "sys.exit(entry())\n")
    proc = subprocess.run([sys.executable, "-c", child], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == code and says in proc.stderr, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr


def test_the_package_face_lists_what_it_loads_on_first_use():
    """`Lake` and `feature` load on first use (the program takes SIGTERM first): dir() and tab
    completion did not list them."""
    import lakecurate

    assert {"Lake", "feature", "LakeError"} <= set(dir(lakecurate)) and lakecurate.Lake.__name__ == "Lake"
    with pytest.raises(AttributeError, match="no attribute 'Lak'"):
        lakecurate.Lak  # noqa: B018


def test_a_signal_after_the_command_is_done_is_ignored():
    """SIGTERM in the ~0.2 s the interpreter takes to exit after a command's work was committed ended
    it by the signal (-15, no word), or once with exit 0 and a Terminated traceback: once the program
    is done it ignores SIGTERM and Ctrl-C; cli.entry called in a process of its own (a wrapper, a
    test) puts back the handlers it found."""
    child = ("import signal, sys\n"
             "from lakecurate import cli, program\n"
             "mine = lambda *a: None\n"
             "signal.signal(signal.SIGTERM, mine)\n"
             "sys.argv = ['lakecurate', '--help']\n"
             "for entry in (cli.entry, program.entry):\n"
             "    try:\n"
             "        entry()\n"
             "    except SystemExit as exc:\n"
             "        print('::', exc.code, signal.getsignal(signal.SIGTERM) is mine, signal.getsignal(signal.SIGTERM) is signal.SIG_IGN,\n"
             "              signal.getsignal(signal.SIGINT) is signal.SIG_IGN)\n")
    proc = subprocess.run([sys.executable, "-c", child], cwd=REPO, capture_output=True, text=True, timeout=120)
    said = [line for line in proc.stdout.splitlines() if line.startswith(":: ")]
    assert said == [":: 0 True False False", ":: 0 False True True"], (proc.stdout[-300:], proc.stderr)
