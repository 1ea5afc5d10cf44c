"""The CLI: thin wrappers, readable output, no tracebacks for user errors, documented commands."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from lakecurate.cli import main

from .conftest import REPO, SAMPLE_DATA


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
    res = runner.invoke(main, ["sql", str(tmp_path / "l"), "SELEC"])
    assert res.exit_code == 1 and "SQL failed" in res.output


def test_demo_runs_on_sample_data(runner: CliRunner, tmp_path: Path, monkeypatch):
    monkeypatch.chdir(REPO)
    res = runner.invoke(main, ["demo", "--lake", str(tmp_path / "demo")])
    assert res.exit_code == 0, res.output
    assert "gravel_truncated.jpg" in res.output and "28 rows" in res.output


def test_every_command_has_an_example_and_is_in_the_readme(runner: CliRunner):
    readme = (REPO / "README.md").read_text()
    for name, cmd in main.commands.items():
        assert "Example: lakecurate " + name in (cmd.help or ""), f"'{name}' help has no example"
        assert f"lakecurate {name}" in readme, f"'{name}' is not documented in README.md"
