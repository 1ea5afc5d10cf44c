"""SQL a user hands in: `lakecurate sql` runs only read-only queries over `pairs`, and every `--where`
is exactly one condition, refused in one line before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from lakecurate import Lake, LakeError
from lakecurate.cli import main

from .conftest import SAMPLE_DATA


@pytest.fixture
def small(lake: Lake) -> Lake:
    lake.ingest(SAMPLE_DATA, progress=False)
    return lake


@pytest.fixture(scope="module")
def clustered(tmp_path_factory) -> Lake:
    """sample_data embedded (tiny random encoder) and clustered: what rebalance, sequence and search need."""
    lake = Lake.create(tmp_path_factory.mktemp("sql") / "lake")
    lake.ingest(SAMPLE_DATA, progress=False)
    lake.embed("tiny-random", workers=0, batch_size=8, progress=False)
    lake.cluster(3)
    return lake


def one_line_refusal(res, *needles: str) -> str:
    """The CLI result is a refusal: exit != 0, one stderr line naming ``needles``, no traceback."""
    assert res.exit_code not in (0, None) and isinstance(res.exception, SystemExit), res.output
    assert "Traceback" not in res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# ----------------------------------------------------------------------------- lakecurate sql
def test_copy_to_refused_and_nothing_written(small: Lake, tmp_path: Path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    version, rows = small.version, small.count()
    with pytest.raises(LakeError, match="COPY"):
        small.sql(f"COPY (SELECT key FROM pairs) TO '{victim}' STORED AS CSV")
    assert victim.read_text() == "keep me"
    # aimed at the lake's own manifests (this destroyed the lake before)
    versions = Path(small.uri) / "pairs.lance" / "_versions"
    before = sorted(p.name for p in versions.iterdir())
    res = CliRunner().invoke(main, ["sql", small.uri, f"COPY (SELECT key FROM pairs) TO '{versions}/' STORED AS CSV"])
    one_line_refusal(res, "COPY", "not allowed")
    assert sorted(p.name for p in versions.iterdir()) == before
    again = Lake.open(small.uri)
    assert (again.version, again.count()) == (version, rows)


def test_external_tables_and_table_functions_refused(small: Lake, tmp_path: Path):
    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n")  # a file DataFusion reads without complaint
    for query in (f"CREATE EXTERNAL TABLE t (a INT, b INT) STORED AS CSV LOCATION '{other}'",
                  "SELECT * FROM range(3)",
                  f"SELECT * FROM read_csv('{other}')",
                  f"SELECT key FROM pairs WHERE key IN (SELECT key FROM read_parquet('{other}'))",
                  f"SELECT * FROM '{other}'",
                  "SELECT * FROM information_schema.tables",
                  "SELECT key INTO copied FROM pairs",
                  "EXPLAIN SELECT key FROM pairs",
                  "SET datafusion.execution.batch_size = 1"):
        with pytest.raises(LakeError, match="not allowed") as err:
            small.sql(query)
        assert "\n" not in str(err.value)


def test_several_statements_and_comments_refused(small: Lake):
    with pytest.raises(LakeError, match="give exactly one"):
        small.sql("SELECT count(*) AS n FROM pairs; SELECT 1")
    with pytest.raises(LakeError, match="comments"):
        small.sql("SELECT count(*) AS n FROM pairs -- a note")


def test_read_only_queries_still_run(small: Lake):
    df = small.to_pandas(["key", "width", "ingest_status"])
    got = small.sql("SELECT ingest_status, count(*) AS n FROM pairs GROUP BY ingest_status ORDER BY n DESC, ingest_status")
    assert dict(zip(got["ingest_status"], got["n"])) == df.groupby("ingest_status").size().to_dict()
    assert list(got["n"]) == sorted(got["n"], reverse=True)
    with_cte = small.sql("WITH wide AS (SELECT key, width FROM pairs WHERE width >= 300) "
                         "SELECT count(*) AS n, max(width) AS w FROM wide;")
    assert with_cte["n"][0] == int((df["width"] >= 300).sum()) and with_cte["w"][0] == df["width"].max()
    union = small.sql("SELECT `key` FROM pairs WHERE width < 100 UNION ALL SELECT \"key\" FROM pairs WHERE width >= 100")
    assert sorted(union["key"]) == sorted(df["key"][df["width"].notna()])
    nested = small.sql("SELECT count(*) AS n FROM (SELECT key FROM pairs p ORDER BY key LIMIT 5) t")
    assert nested["n"][0] == 5


def test_sql_errors_are_one_line_without_build_paths(small: Lake):
    from lakecurate.sqlcheck import clean_message

    with pytest.raises(LakeError) as err:
        small.sql("SELECT no_such_column FROM pairs")
    msg = str(err.value)
    assert "no_such_column" in msg and ".rs:" not in msg and "\n" not in msg
    assert clean_message("Invalid user input: bad, /home/runner/work/lance/lance/rust/lance/src/dataset/sql.rs:308:17") \
        == "Invalid user input: bad"


def test_python_api_mistakes_are_lake_errors(small: Lake, tmp_path: Path):
    """What a Python caller gets wrong is a LakeError saying what to give, not a Lance or numpy error."""
    assert list(small.to_pandas("key").columns) == ["key"]  # one column by name, not its letters
    assert small.dataset(np.int64(small.version)).version == small.version  # a numpy integer is a version number
    for call, msg in [(lambda: small.to_pandas(["key", "no_such"]), r"column 'no_such' is not in lake .*its columns: id"),
                      (lambda: small.to_pandas(["key"], where=5), "give it as text"),
                      (lambda: small.sql(5), "the query is int"),
                      (lambda: small.sql(None), "the query is NoneType"),
                      (lambda: small.dataset(1.5), "give a version number, a tag or a branch name"),
                      (lambda: small.sql("SELECT 1", version=[1]), "give a version number"),
                      (lambda: small.dedup("nope"), "unknown dedup method 'nope'"),
                      (lambda: small.search("a dog", k="5"), "ask for at least 1 nearest pair"),
                      (lambda: small.embed("tiny-random", workers=10**20), "^invalid workers .*expected an integer up to 65536"),
                      (lambda: small.embed("tiny-random", name="a b"), "a column prefix is letters"),
                      (lambda: small.report(tmp_path), "is a folder; give the HTML file")]:
        with pytest.raises(LakeError, match=msg):
            call()
    assert not tmp_path.with_name(tmp_path.name + ".tmp").exists()  # the report left nothing beside the folder


def test_cli_sql_shows_null_consistently(small: Lake):
    query = "SELECT key, CASE WHEN width >= 300 THEN width END AS w, CASE WHEN width >= 300 THEN key END AS k FROM pairs ORDER BY key"
    df = small.sql(query)
    narrow = int(df["w"].isna().sum())
    assert 0 < narrow < len(df)
    res = CliRunner().invoke(main, ["sql", small.uri, query])
    assert res.exit_code == 0, res.output
    assert "NaN" not in res.output and "None" not in res.output
    assert res.output.count("NULL") == 2 * narrow
    res = CliRunner().invoke(main, ["sql", small.uri, query, "--format", "json"])
    rows = json.loads(res.stdout)
    assert sum(r["w"] is None and r["k"] is None for r in rows) == narrow
    # bytes (a binary literal or column) are base64 text in JSON; they were a UnicodeDecodeError traceback
    res = CliRunner().invoke(main, ["sql", small.uri, "SELECT key, X'FF00' AS raw FROM pairs LIMIT 2", "--format", "json"])
    assert res.exit_code == 0, res.output
    assert {r["raw"] for r in json.loads(res.stdout)} == {"/wA="}


# ----------------------------------------------------------------------------- --where
BAD_WHERE = ["width > 400 height > 400", "width > 1; DROP TABLE pairs", "width > 1 LIMIT 1", "width > 1 -- note",
             "width + 1", "key = $$astronaut.jpg$$"]  # (the last: a Rust panic in Lance's filter at run time)


@pytest.mark.parametrize("where", BAD_WHERE)
def test_check_where_refuses_all_but_one_condition(where: str):
    from lakecurate.sqlcheck import check_where

    with pytest.raises(LakeError, match=r"^where .* is not one SQL condition") as err:
        check_where(where)
    assert where in str(err.value) and "\n" not in str(err.value)


def test_check_where_accepts_conditions_and_checks_columns(small: Lake):
    from lakecurate.sqlcheck import check_query, check_where

    ds = small.dataset()
    for where in ("width > 400 AND height > 400", "`width` > 1", "caption LIKE '%dog%' OR NOT (width < 3)",
                  "format IN ('JPEG', 'PNG')", "caption IS NOT NULL", "regexp_like(caption, 'a+')",
                  "caption NOT LIKE '%; --%'", None):
        assert check_where(where, "--where", ds) == where
    for blank in ("", "  \n"):  # an empty text was every row to Lance, and no --where to a caller
        with pytest.raises(LakeError, match="an empty condition"):
            check_where(blank, "--where", ds)
    with pytest.raises(LakeError, match=r"where_b 'nope > 1' cannot select rows: .*nope"):
        check_where("nope > 1", "--where-b", ds)
    with pytest.raises(LakeError, match="boolean"):
        check_where("width", "--where", ds)
    with pytest.raises(LakeError, match="subquery"):
        check_where("id IN (SELECT id FROM pairs)")
    assert check_query("SELECT 1") == "SELECT 1"


def test_deeply_nested_conditions_are_one_line_errors(small: Lake):
    """sqlglot parses and walks by recursion: 50 nested parentheses or 200 NOTs in a row were a
    RecursionError traceback (the CLI) and a 500 (the browser's where box)."""
    from lakecurate.sqlcheck import MAX_NESTING, check_query, check_where

    ds = small.dataset()
    ok = "(" * MAX_NESTING + "width > 1" + ")" * MAX_NESTING
    assert check_where(ok, "--where", ds) == ok and small.count(ok) == small.count("width > 1")
    for deep, says in (("(" * 50 + "width > 1" + ")" * 50, "nests 50 levels of parentheses"),
                       ("NOT " * 200 + "width > 1", "nests too deeply")):
        with pytest.raises(LakeError, match=says) as err:
            check_where(deep, "--where", ds)
        assert str(err.value).startswith("where ") and "\n" not in str(err.value)
        with pytest.raises(LakeError, match=says):
            check_query(f"SELECT id FROM pairs WHERE {deep}")
        res = CliRunner().invoke(main, ["sql", small.uri, f"SELECT id FROM pairs WHERE {deep}"])
        assert res.exit_code != 0 and "Traceback" not in res.output and says in res.output, res.output
    long = " AND ".join(["width > 1"] * 2000)  # long but flat: checked and run
    assert small.count(long) == small.count("width > 1")


@pytest.mark.parametrize("query, name", [("SELECT * FROM generate_series(1, 10)", "generate_series"),
                                         ("SELECT * FROM Generate_Series(1, 3) t(x)", "generate_series"),
                                         ("SELECT * FROM range(3)", "range"),
                                         ("SELECT * FROM read_parquet('x.parquet')", "read_parquet")])
def test_a_refused_table_function_is_named_as_written(query: str, name: str):
    """generate_series was refused as sqlglot's internal "exploding_generate_series(...)"."""
    from lakecurate.sqlcheck import check_query

    with pytest.raises(LakeError, match=rf"table functions such as {name}\(\.\.\.\) are not allowed"):
        check_query(query)


def test_lake_count_and_to_pandas_refuse_trailing_text(small: Lake):
    wide = small.count("width > 400 AND height > 400")
    assert wide == len(small.to_pandas(["key"], where="width > 400 AND height > 400"))
    with pytest.raises(LakeError, match="where 'width > 400 height > 400' is not one SQL condition"):
        small.count("width > 400 height > 400")
    with pytest.raises(LakeError, match="is not one SQL condition"):
        small.to_pandas(["key"], where="width > 1 LIMIT 1")


COMMANDS = {
    "export": lambda lake, tmp, where: ["export", lake, str(tmp / "out"), "--format", "parquet", "--where", where],
    "rebalance": lambda lake, tmp, where: ["rebalance", lake, "--where", where],
    "sequence": lambda lake, tmp, where: ["sequence", lake, "--mode", "random", "--where", where],
    "search": lambda lake, tmp, where: ["search", lake, "a horse", "--where", where],
    "diff": lambda lake, tmp, where: ["diff", lake, "1", "--where", where],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_cli_bad_where_is_one_line_and_writes_nothing(clustered: Lake, tmp_path: Path, command: str):
    runner = CliRunner()
    version = clustered.version
    for where in [*BAD_WHERE, "no_such_column > 1"]:
        res = runner.invoke(main, COMMANDS[command](clustered.uri, tmp_path, where))
        line = one_line_refusal(res, "--where", repr(where))
        if where in BAD_WHERE:
            assert "is not one SQL condition" in line
        assert Lake.open(clustered.uri).version == version
        assert not (tmp_path / "out").exists()


def test_cli_good_where_still_works(clustered: Lake, tmp_path: Path):
    runner = CliRunner()
    where = "width >= 300 AND ingest_status = 'ok'"
    want = clustered.count(where)
    assert 0 < want < clustered.count()
    res = runner.invoke(main, ["export", clustered.uri, str(tmp_path / "x.parquet"), "--format", "parquet", "--where", where])
    assert res.exit_code == 0, res.output
    assert f"({want} pairs)" in res.output
    res = runner.invoke(main, ["search", clustered.uri, "a horse", "-k", "50", "--where", where, "--json"])
    assert res.exit_code == 0, res.output
    assert len(json.loads(res.stdout)) == want
    res = runner.invoke(main, ["sequence", clustered.uri, "--mode", "random", "--where", where])
    assert res.exit_code == 0, res.output
    assert clustered.count("seq_order IS NOT NULL") == want


def test_messages_name_no_internals(small: Lake):
    """Lance's internal row fields in the list of valid ones, sqlglot's class names, a 100,000-character
    id echoed whole: none of them is the user's to read."""
    from lakecurate import review

    with pytest.raises(LakeError) as err:
        small.count("nocol > 1")
    assert "Valid fields are" in str(err.value) and "_rowid" not in str(err.value) and "_rowaddr" not in str(err.value)
    with pytest.raises(LakeError, match="at column") as err:
        small.count("id = ")
    assert "sqlglot" not in str(err.value) and "<class" not in str(err.value)
    with pytest.raises(LakeError, match="no pair of lake") as err:
        review.mark(small, ["x" * 100_000], verdict="keep")
    assert len(str(err.value)) < 400


def test_cli_sql_takes_json_like_every_command(small: Lake):
    """Every command takes --json; sql only took --format json, and its errors were text then."""
    res = CliRunner().invoke(main, ["sql", small.uri, "SELECT key FROM pairs ORDER BY key LIMIT 2", "--json"])
    assert res.exit_code == 0 and [r["key"] for r in json.loads(res.stdout)] == sorted(small.sql("SELECT key FROM pairs")["key"])[:2]
    res = CliRunner().invoke(main, ["sql", small.uri, "SELECT nope FROM pairs", "--json"])
    assert res.exit_code == 1 and "No field named nope" in json.loads(res.stdout)["error"]
    res = CliRunner().invoke(main, ["sql", small.uri, "SELECT key FROM pairs", "--json", "--format", "csv"])
    assert res.exit_code == 2 and "two formats" in json.loads(res.stdout)["error"]


def test_cli_sql_keeps_integers_exact_and_refuses_columns_named_alike(small: Lake):
    """A pHash (uint64) printed as 1.11771759e+19 through pandas' float64 (JSON kept 9 digits), an
    int column with a null in the result as 500.0, and a self-join's SELECT * was a traceback."""
    small.signals(["image"], progress=False)
    truth = small.sql_table("SELECT key, phash, width FROM pairs ORDER BY key").to_pylist()
    assert any(r["phash"] is None for r in truth) and max(r["phash"] or 0 for r in truth) > 2**63  # nulls, and high bits
    res = CliRunner().invoke(main, ["sql", small.uri, "SELECT key, phash, width FROM pairs ORDER BY key", "--json"])
    assert json.loads(res.stdout) == truth
    res = CliRunner().invoke(main, ["sql", small.uri, "SELECT key, phash, width FROM pairs ORDER BY key", "--format", "csv"])
    lines = res.output.splitlines()[1:]
    assert [line.split(",")[1] for line in lines] == ["" if r["phash"] is None else str(r["phash"]) for r in truth]
    res = CliRunner().invoke(main, ["sql", small.uri, "SELECT key, phash, width FROM pairs ORDER BY key"])
    assert str(max(r["phash"] or 0 for r in truth)) in res.output and ".0 " not in res.output
    for fmt in ("--json", "--format=json"):
        res = CliRunner().invoke(main, ["sql", small.uri, "SELECT * FROM pairs p1, pairs p2 LIMIT 1", fmt])
        assert res.exit_code == 1 and "more than one column named" in json.loads(res.stdout)["error"], res.output


def test_cli_sql_bounds_what_it_prints_and_writes_lists_as_json_in_csv(clustered: Lake):
    """A 3-way cross join on a 200-row lake printed 8M rows (5.7 GB held); --format csv wrote a
    vector as numpy's text with line breaks inside the field."""
    import csv
    import io

    cross = "SELECT a.key AS ka, b.key AS kb FROM pairs a, pairs b"  # 26 x 26 rows
    n = clustered.count() ** 2
    for fmt in (["--format", "table"], ["--json"], ["--format", "csv"]):
        res = CliRunner().invoke(main, ["sql", clustered.uri, cross, "--limit", "10", *fmt])
        assert res.exit_code == 0, res.output
        assert res.stderr == ("note: printed the first 10 rows; the query returns more: pass --limit N for more "
                              "(0: all), or narrow it (LIMIT, WHERE)\n")
        if fmt == ["--json"]:
            assert len(json.loads(res.stdout)) == 10
        if fmt == ["--format", "csv"]:
            assert len(res.stdout.splitlines()) == 11
    res = CliRunner().invoke(main, ["sql", clustered.uri, cross, "--limit", "0", "--json"])
    assert len(json.loads(res.stdout)) == n and res.stderr == ""
    res = CliRunner().invoke(main, ["sql", clustered.uri, cross, "--json"])  # the default bound is above 676
    assert len(json.loads(res.stdout)) == n and res.stderr == ""
    res = CliRunner().invoke(main, ["sql", clustered.uri, "SELECT key, clip_tinyrandom_image AS v, [1, 2] AS l "
                                    "FROM pairs ORDER BY key LIMIT 2", "--format", "csv"])
    assert res.exit_code == 0 and len(res.stdout.splitlines()) == 3, res.output  # a header and two lines
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    truth = clustered.sql_table("SELECT key, clip_tinyrandom_image FROM pairs ORDER BY key LIMIT 2").to_pylist()
    assert [json.loads(r["v"]) for r in rows] == [pytest.approx(t["clip_tinyrandom_image"]) for t in truth]
    assert [json.loads(r["l"]) for r in rows] == [[1, 2], [1, 2]]


# ~1 s and ~0.7 GB on the 28 sample rows (28 x 1M values sorted); `range(1, 300000000)` took 8.7 GB
HEAVY = "SELECT x FROM (SELECT unnest(range(1, 1000000)) AS x FROM pairs) ORDER BY x DESC LIMIT 2"


def _wait_for_sql_threads() -> None:
    import threading

    for t in threading.enumerate():
        if t.name == "lakecurate-sql":
            t.join(60)  # (it ends at its next batch: the sort's one)


def test_a_query_past_its_memory_or_time_is_stopped(small: Lake):
    """`lakecurate sql` had no bound: `unnest(range(1, 300000000))` on 28 rows took 8.7 GB, and
    `repeat('x', 2000000000)` ran past a minute. A query past max_memory or timeout stops, one line."""
    from lakecurate.errors import QueryStopped

    try:
        with pytest.raises(QueryStopped, match=r"took more than 48 MiB of memory; narrow it"):
            small.sql(HEAVY, max_memory=50e6)
        _wait_for_sql_threads()
        with pytest.raises(QueryStopped, match=r"ran past its time \(0.01 s\)"):
            small.sql(HEAVY, timeout=0.01)
    finally:
        _wait_for_sql_threads()
    assert small.sql(HEAVY, timeout=600, max_memory=20e9)["x"].tolist() == [999999, 999999]
    for bad in (0, -1, "1", True):
        with pytest.raises(LakeError, match="give a positive number"):
            small.sql("SELECT 1 AS one FROM pairs", timeout=bad)
    res = CliRunner().invoke(main, ["sql", small.uri, HEAVY, "--max-memory", "0.05", "--json"])
    _wait_for_sql_threads()
    assert res.exit_code == 1 and "took more than 51 MiB" in json.loads(res.stdout)["error"], res.output


def test_ctrl_c_reaches_the_caller_while_the_query_runs(small: Lake):
    """Ctrl+C waited for DataFusion to finish the query (SIGINT at 25 s ended it at 120 s): the query
    runs in a thread of its own, and the interrupt reaches the caller while it still runs."""
    import _thread
    import threading

    running = []

    def interrupt():
        while not any(t.name == "lakecurate-sql" for t in threading.enumerate()):
            if stop.wait(0.005):
                return
        running.append(True)
        _thread.interrupt_main()

    stop = threading.Event()
    timer = threading.Thread(target=interrupt)
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            small.sql(HEAVY)
            stop.set()  # (finished first: no interrupt came, the test fails above)
    finally:
        stop.set()
        timer.join()
        _wait_for_sql_threads()
    assert running


def test_sql_and_search_tables_are_bounded_and_escaped(tmp_path: Path):
    """`sql`'s table padded every line to a 100,000-character caption (1.1 MB for 10 rows: its
    60-character cap was a display option to_string does not read); `search` printed a caption's NUL
    and right-to-left override to the terminal, and a null as NaN."""
    import shutil

    folder = tmp_path / "photos"
    folder.mkdir()
    hostile = {"astronaut": "x" * 100_000, "brick": "a red car\x00\u202eevil", "camera": ""}
    for name, caption in hostile.items():
        shutil.copyfile(SAMPLE_DATA / f"{name}.jpg", folder / f"{name}.jpg")
        (folder / f"{name}.txt").write_text(caption)
    lake = Lake.create(tmp_path / "lake")
    lake.ingest(folder, progress=False)
    res = CliRunner().invoke(main, ["sql", lake.uri, "SELECT key, caption, NULL AS nothing FROM pairs ORDER BY key"])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert len(lines) == 4 and max(map(len, lines)) < 200, [len(x) for x in lines]
    assert "\\x00\\u202eevil" in res.output and "\x00" not in res.output and "NULL" in lines[1]
    lake.embed("tiny-random", workers=0, batch_size=8, progress=False)
    found = CliRunner().invoke(main, ["search", lake.uri, "a car", "-k", "3"])
    assert found.exit_code == 0, found.output
    assert "a red car\\x00\\u202eevil" in found.output and "\u202e" not in found.output, found.output
    assert max(map(len, found.output.splitlines())) < 250


def test_64_bit_hashes_are_exact_in_pandas(tmp_path: Path):
    """Lake.sql and Lake.to_pandas gave a uint64 hash column with a null as float64:
    15173274023371857856 came back as 15173274023371857920, and Hamming distances from it were wrong."""
    lake = Lake.create(tmp_path / "lake")
    lake.ingest(SAMPLE_DATA, progress=False)
    lake.signals(["image"], progress=False)
    exact = lake.dataset().to_table(columns=["key", "phash"]).to_pylist()
    assert any(r["phash"] is None for r in exact) and any((r["phash"] or 0) > 2**53 for r in exact)
    want = {r["key"]: r["phash"] for r in exact}
    for df in (lake.to_pandas(["key", "phash"]), lake.sql("SELECT key, phash FROM pairs")):
        got = {k: (None if v is pd.NA else int(v)) for k, v in zip(df["key"], df["phash"])}
        assert got == want


def test_sql_says_when_the_values_it_shows_are_not_current(sample_lake_embedded: Lake, tmp_path: Path):
    """`lakecurate sql` showed the alignment scores of a caption rewritten since it was embedded with
    no word (search says it); a note on stderr names the stale stage and its fix, the JSON stays whole."""
    import shutil

    import lance

    lake = Lake.open(shutil.copytree(sample_lake_embedded.uri, tmp_path / "lake"))
    query = "SELECT key, clip_tinyrandom_score FROM pairs ORDER BY key"
    quiet = CliRunner().invoke(main, ["sql", lake.uri, query, "--json"])
    assert quiet.exit_code == 0 and "note:" not in quiet.stderr, quiet.stderr
    lance.dataset(lake.table_uri).update({"caption": "'a brand new caption'"}, where="key = 'coffee.jpg'")
    res = CliRunner().invoke(main, ["sql", lake.uri, query, "--json"])
    assert res.exit_code == 0 and len(json.loads(res.stdout)) == lake.count()
    assert "note: embed (clip_tinyrandom_image, clip_tinyrandom_text, clip_tinyrandom_score, ...) is stale" in res.stderr
    assert "lakecurate embed" in res.stderr, res.stderr
    plain = CliRunner().invoke(main, ["sql", lake.uri, "SELECT key, width FROM pairs"])
    assert "note:" not in plain.stderr  # (no column of a stage that is not current)
