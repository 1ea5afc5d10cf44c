"""User-defined features: per-fragment columns from a Python function, resumable, with provenance."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from click.testing import CliRunner

from lakecurate import Lake, LakeError, columns, feature
from lakecurate.cli import main
from lakecurate.features import BatchUdf, drop_feature, list_features, load_udf, source_hash

from .conftest import SAMPLE_DATA, pair_rows


@feature(inputs=["caption"], type="int32")
def caption_chars(batch: pa.RecordBatch) -> pa.Array:
    return pc.utf8_length(batch["caption"])


def word_stats(batch: pa.RecordBatch, scale: float = 1.0) -> dict:
    words = [len((c or "").split()) for c in batch["caption"].to_pylist()]
    return {"n": words, "scaled": np.asarray(words, np.float32) * scale}


def data_files(lake: Lake) -> dict[str, int]:
    root = Path(lake.table_uri) / "data"
    return {p.name: p.stat().st_size for p in root.glob("*.lance")}


@pytest.fixture
def multi(tmp_path: Path) -> Lake:
    """4 fragments of synthetic rows, one with deleted rows."""
    lake = Lake.create(tmp_path / "lake")
    for f in range(4):
        lake.append(pair_rows(f * 30, 30))
    lake.dataset().delete("id IN ('p0000031', 'p0000032')")
    return lake


def test_values_only_new_bytes_and_provenance(multi: Lake):
    before = data_files(multi)
    rep = multi.add_feature("chars", caption_chars, progress=False)
    assert (rep.fragments, rep.rows, rep.columns) == (4, 118, ["chars"])
    after = data_files(multi)
    assert {k: v for k, v in after.items() if k in before} == before  # no existing file touched
    assert len(after) - len(before) == 4                               # one small file per fragment
    tbl = multi.dataset().to_table(columns=["caption", "chars"])
    assert tbl.column("chars").to_pylist() == [None if c is None else len(c) for c in tbl.column("caption").to_pylist()]
    prov = columns.field_provenance(multi.dataset().schema.field("chars"))
    assert prov["stage"] == "feature" and prov["udf"].endswith("test_features:caption_chars")
    assert prov["config"]["inputs"] == ["caption"] and prov["config"]["source_sha256"] == source_hash(caption_chars)
    assert multi.add_feature("chars", caption_chars, progress=False).fragments == 0  # a re-run is a no-op
    assert data_files(multi) == after


def test_incremental_after_append_and_resume_after_a_failure(multi: Lake):
    multi.add_feature("chars", caption_chars, progress=False)
    multi.append(pair_rows(1000, 7))
    rep = multi.add_feature("chars", caption_chars, progress=False)
    assert (rep.fragments, rep.rows) == (1, 7)
    calls = []

    def flaky(batch):  # fails on the third fragment: the first two stay committed (call 1 tries the first rows)
        calls.append(batch.num_rows)
        if len(calls) == 4:
            raise ValueError("boom")
        return pc.utf8_length(batch["caption"])

    with pytest.raises(LakeError, match=r"feature flaky on lake .* fragment \d+ rows 0-\d+: ValueError: boom"):
        multi.add_feature("flaky", flaky, inputs=["caption"], type="int32", progress=False)
    ds = multi.dataset()
    assert len(columns.fragments_to_fill(ds, "flaky")) == 3
    rep = multi.add_feature("flaky", flaky, inputs=["caption"], type="int32", progress=False)
    assert rep.fragments == 3 and not columns.fragments_to_fill(multi.dataset(), "flaky")


def test_several_columns_params_vectors_and_inferred_types(multi: Lake):
    rep = multi.add_feature("words", word_stats, inputs=["caption"], params={"scale": 0.5}, progress=False)
    assert rep.columns == ["words_n", "words_scaled"]
    schema = multi.dataset().schema
    assert schema.field("words_n").type == pa.int64() and schema.field("words_scaled").type == pa.float32()
    df = multi.to_pandas(["caption", "words_n", "words_scaled"])
    assert (df["words_scaled"] == df["words_n"] * 0.5).all()

    def vec(batch):
        n = pc.utf8_length(batch["caption"]).to_numpy(zero_copy_only=False)
        return np.stack([np.nan_to_num(n), np.ones(len(n))], axis=1).astype(np.float32)

    multi.add_feature("vec", vec, inputs=["caption"], progress=False)
    assert multi.dataset().schema.field("vec").type == pa.list_(pa.float32(), 2)

    def size(batch):  # image arrives as bytes
        return [len(b) for b in batch["image"].to_pylist()]

    multi.add_feature("img_bytes", size, inputs=["image"], type="int64", progress=False)
    assert set(multi.to_pandas(["img_bytes"])["img_bytes"]) == {len(pair_rows(0, 1).column("image")[0].as_py())}


def test_changed_function_is_refused_until_recompute(multi: Lake):
    multi.add_feature("w", word_stats, inputs=["caption"], progress=False)
    with pytest.raises(LakeError, match="made with another config.*recompute=True to replace it$"):
        multi.add_feature("w", word_stats, inputs=["caption"], params={"scale": 2.0}, progress=False)
    rep = multi.add_feature("w", word_stats, inputs=["caption"], params={"scale": 2.0}, recompute=True, progress=False)
    assert rep.fragments == 4
    df = multi.to_pandas(["w_n", "w_scaled"])
    assert (df["w_scaled"] == df["w_n"] * 2.0).all()


def test_clear_errors(multi: Lake):
    with pytest.raises(LakeError, match="reads \\['nope'\\], which lake .* does not have"):
        multi.add_feature("x", caption_chars, inputs=["nope"], progress=False)
    with pytest.raises(LakeError, match="say which columns it reads"):
        multi.add_feature("x", lambda b: b, progress=False)
    version = multi.version
    with pytest.raises(LakeError, match="returned 1 values for the first 16 rows"):  # before declaring: no version
        multi.add_feature("short", lambda b: [1], inputs=["caption"], type="int32", progress=False)
    assert multi.version == version
    with pytest.raises(LakeError, match="part of lake .* itself"):
        multi.add_feature("caption", caption_chars, progress=False)
    with pytest.raises(LakeError, match="not a valid column name"):
        multi.add_feature("bad name", caption_chars, progress=False)
    with pytest.raises(LakeError, match="unknown type 'int33'"):
        multi.add_feature("t", caption_chars, type="int33", progress=False)
    with pytest.raises(LakeError, match="unknown engine"):
        multi.add_feature("t", caption_chars, engine="spark", progress=False)
    with pytest.raises(LakeError, match="invalid batch_size 0"):
        multi.add_feature("t", caption_chars, batch_size=0, progress=False)
    assert not {"x", "short", "t"} & set(multi.dataset().schema.names)  # nothing declared by a refused run


def test_load_udf_forms(tmp_path: Path, monkeypatch):
    (tmp_path / "team_feats.py").write_text("def f(batch):\n    return [1] * batch.num_rows\n")
    monkeypatch.chdir(tmp_path)
    assert load_udf("team_feats:f")(pa.record_batch({"a": [1, 2]})) == [1, 1]  # found in the working dir
    assert load_udf(f"{tmp_path / 'team_feats.py'}:f")(pa.record_batch({"a": [1]})) == [1]
    with pytest.raises(LakeError, match="must look like module:function"):
        load_udf("team_feats")
    with pytest.raises(LakeError, match="has no 'g'"):
        load_udf("team_feats:g")
    with pytest.raises(LakeError, match="cannot import no_such_mod"):
        load_udf("no_such_mod:f")


def test_batch_udf_pickles_and_matches():
    import pickle

    udf = BatchUdf(word_stats, "w", {"scale": 3.0}, None)
    batch = pa.record_batch({"caption": ["a b", None, "c"]})
    assert pickle.loads(pickle.dumps(udf))(batch).equals(udf(batch))
    assert udf(batch).column("w_scaled").to_pylist() == [6.0, 0.0, 3.0]


def test_cli_json_stdout_is_only_json_when_a_udf_prints(tmp_path: Path):
    """A user function that calls print() put its text on the stdout of `feature add --json` (and
    of sql --format json): with --json, other prints go to stderr and stdout holds the JSON alone."""
    lake = Lake.create(tmp_path / "lake")
    lake.append(pair_rows(0, 12))
    udf = tmp_path / "chatty.py"
    udf.write_text("def chars(batch):\n    print('processing a batch')\n"
                   "    return [len(c or '') for c in batch['caption'].to_pylist()]\n")
    out = CliRunner().invoke(main, ["feature", "add", lake.uri, "nch", "--udf", f"{udf}:chars", "--input", "caption",
                                    "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["rows"] == 12
    assert "processing a batch" in out.stderr
    out = CliRunner().invoke(main, ["feature", "add", lake.uri, "nch2", "--udf", f"{udf}:nope", "--input", "caption",
                                    "--json"])  # an error: its JSON is on stdout too
    assert out.exit_code == 1 and "error" in json.loads(out.stdout)


def test_cli_feature_add_list_drop(tmp_path: Path, monkeypatch):
    lake = Lake.create(tmp_path / "lake")
    lake.ingest(SAMPLE_DATA, progress=False)
    (tmp_path / "my_features.py").write_text(
        "import pyarrow.compute as pc\n"
        "def longer_than(batch, n=10):\n"
        "    return pc.greater(pc.utf8_length(batch['caption']), n)\n")
    monkeypatch.chdir(tmp_path)
    r = CliRunner()
    out = r.invoke(main, ["feature", "add", lake.uri, "long", "--udf", "my_features:longer_than", "--input", "caption",
                          "--param", "n=40", "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["rows"] == 28
    tbl = lake.dataset().to_table(columns=["caption", "long"])
    assert tbl.column("long").to_pylist() == [None if c is None else len(c) > 40 for c in tbl.column("caption").to_pylist()]
    out = r.invoke(main, ["feature", "list", lake.uri])
    assert "long" in out.output and "my_features:longer_than" in out.output and "bool" in out.output
    out = r.invoke(main, ["info", lake.uri])
    assert "feature: my_features:longer_than" in out.output
    out = r.invoke(main, ["feature", "add", lake.uri, "long", "--udf", "my_features:longer_than", "--input", "caption",
                          "--param", "n=5"])
    assert out.exit_code == 1 and "--recompute" in out.output and "Traceback" not in out.output
    out = r.invoke(main, ["feature", "add", lake.uri, "x", "--udf", "my_features:nope", "--input", "caption"])
    assert out.exit_code == 1 and "has no 'nope'" in out.output
    out = r.invoke(main, ["feature", "drop", lake.uri, "long"])
    assert out.exit_code == 0 and "long" not in lake.dataset().schema.names
    assert os.path.isdir(lake.table_uri)


def test_a_feature_cannot_take_a_built_in_column_s_name(multi: Lake):
    """A feature named dup_keep was taken as the dedup result (curate dropped every row as a
    duplicate); rebalance_keep became the curated view; offline_score --recompute replaced the
    embedding's score; cap_words blocked the signals stage."""
    from lakecurate import faces, signals
    from lakecurate.names import builtin_column

    fields = [*signals.CAPTION_FIELDS, *signals.IMAGE_FIELDS, *signals.COPY_FIELDS, *faces.FIELDS]
    assert all(builtin_column(f.name) for f in fields)  # the reserved names cover what the signal stages write
    multi.embed("tiny-random", workers=0, progress=False)
    v = multi.version
    score = next(n for n in multi.dataset().schema.names if n.endswith("_score"))  # the embedding's own
    for name in ("dup_keep", "rebalance_keep", "keep", "cap_words", "seq_order", "review_verdict", score):
        with pytest.raises(LakeError, match=f"column '{name}' is written by lakecurate's .* pick another name"):
            multi.add_feature(name, caption_chars, recompute=True, progress=False)
    assert multi.version == v
    multi.add_feature("cap_len", caption_chars, progress=False)  # a name of one's own is fine


def leave(batch):
    raise SystemExit(3)


@pytest.mark.parametrize("kwargs,match", [
    ({"type": "list<float32>[abc]"}, "a vector is list<TYPE>\\[N\\] with N >= 1"),
    ({"type": "list<float32>]"}, "a vector is list<TYPE>\\[N\\]"),
    ({"type": "list<float32>[0]"}, "a vector is list<TYPE>\\[N\\]"),
    ({"type": "binary"}, "returns int64 for column .f., which it declares binary"),  # was 2 commits, then the error
    ({"type": {"x": "int32"}}, "returns columns f, but its type names f_x"),  # "expected 30 rows ..., got 30 rows"
    ({"fn": leave}, "failed on the first rows .*SystemExit: 3"),  # the CLI ended with rc 3 and no word
    ({"fn": lambda b: {"<img src=x>": [1] * b.num_rows}}, "returns a column named 'f_<img src=x>'"),
    ({"name": "_rowid"}, "not a valid column name"),  # a Rust panic and two commits
])
def test_bad_feature_shapes_are_refused_before_anything_is_declared(multi: Lake, kwargs, match):
    v = multi.version
    args = {"name": "f", "fn": lambda b: [1] * b.num_rows, "inputs": ["caption"], **kwargs}
    with pytest.raises(LakeError, match=match):
        multi.add_feature(args.pop("name"), args.pop("fn"), progress=False, **args)
    assert multi.version == v


def test_an_input_named_twice_is_read_once(multi: Lake):
    rep = multi.add_feature("n", lambda b: [1] * b.num_rows, inputs=["caption", "caption"], type="int8", progress=False)
    assert rep.inputs == ["caption"] and rep.rows == multi.count()


def test_params_must_be_json_values_and_signals_options_are_checked(multi: Lake):
    """A numpy number as a parameter was a TypeError traceback (the provenance is JSON); options
    signals does not take (column=, a typo) were ignored without a word."""
    v = multi.version
    with pytest.raises(LakeError, match="params must be JSON values .*float\\(x\\)"):
        multi.add_feature("s", word_stats, inputs=["caption"], params={"scale": np.float32(1.5)}, progress=False)
    with pytest.raises(LakeError, match="signals takes progress, workers, engine and recompute; not bogus, column"):
        multi.signals(["redact"], column="caption_secret", bogus=1)
    assert multi.version == v
    assert multi.signals("caption", progress=False) == {"caption": multi.count()}  # one kind by name


def test_names_a_feature_may_not_take_and_results_that_are_not_a_value_per_row(multi: Lake):
    """Found by a hostile tester: a feature named offline_score or img_text_share was accepted,
    and the embed or signals run after it failed ("made with another config"); one named g_a
    replaced feature g's column g_a; a capitalised name needed quotes in every SQL query; a
    function returning a str stored one character per row; one returning too few values was
    refused only after two versions (columns declared, then dropped)."""
    version = multi.version
    words = lambda b: [len((c or "").split()) for c in b["caption"].to_pylist()]  # noqa: E731
    for name in ("offline_score", "clip_vitb32_laion2b_image", "img_text_share", "img_text_lines"):
        with pytest.raises(LakeError, match="written by lakecurate's built-in stage"):
            multi.add_feature(name, words, inputs=["caption"], progress=False)
    with pytest.raises(LakeError, match="has capitals, which SQL reads as 'words'"):
        multi.add_feature("Words", words, inputs=["caption"], progress=False)
    with pytest.raises(LakeError, match="returned one str \\('hello'\\), not a value per row"):
        multi.add_feature("hello", lambda b: "hello", inputs=["caption"], progress=False)
    with pytest.raises(LakeError, match="returned 3 values for the first 16 rows"):
        multi.add_feature("three", lambda b: pa.array([1, 2, 3]), inputs=["caption"], progress=False)
    assert multi.version == version  # nothing written by a refused run
    multi.add_feature("g", lambda b: {"a": words(b)}, inputs=["caption"], progress=False)
    with pytest.raises(LakeError, match="column 'g_a' belongs to feature 'g'"):
        multi.add_feature("g_a", words, inputs=["caption"], recompute=True, progress=False)
    assert [f["column"] for f in list_features(multi)] == ["g_a"]


def test_one_input_named_as_a_string_is_one_column(multi: Lake):
    """inputs="caption" was split into letters: "reads ['c', 'a', 'p', ...], which lake ... does not have"."""
    rep = multi.add_feature("chars", lambda b: pc.utf8_length(b["caption"]), inputs="caption", type="int32",
                            progress=False)
    assert rep.inputs == ["caption"] and rep.rows == multi.count()

    @feature(inputs="caption", type="int32")
    def chars2(batch):
        return pc.utf8_length(batch["caption"])

    assert chars2.lakecurate_inputs == ["caption"]
    assert multi.add_feature("chars2", chars2, progress=False).inputs == ["caption"]
    with pytest.raises(LakeError, match="reads \\['nope'\\], which lake"):  # one unknown name, not four letters
        multi.add_feature("x", chars2, inputs="nope", progress=False)


def test_a_declared_type_of_another_kind_is_refused_not_converted(multi: Lake, tmp_path: Path, monkeypatch):
    """type="bool" on lengths stored True/False, --type float32 on bools stored 1.0, type="string"
    on ints stored "73": the values were converted instead of refused."""
    lengths = lambda b: pc.utf8_length(b["caption"])  # noqa: E731 (int32)
    longer = lambda b: pc.greater(pc.utf8_length(b["caption"]), 10)  # noqa: E731 (bool)
    v = multi.version
    for name, fn, declared, got in [("b", lengths, "bool", "int32"), ("f", longer, "float32", "bool"),
                                    ("s", lengths, "string", "int32"), ("n", lambda b: b["caption"], "int64", "string"),
                                    ("d", lambda b: {"x": pc.utf8_length(b["caption"])}, {"x": "bool"}, "int32")]:
        col = "d_x" if name == "d" else name
        with pytest.raises(LakeError, match=f"^feature '{name}' returns {got} for column '{col}', which it declares "
                                            f"{declared if isinstance(declared, str) else 'bool'} \\("):
            multi.add_feature(name, fn, inputs=["caption"], type=declared, progress=False)
    assert multi.version == v and not {"b", "f", "s", "n", "d_x"} & set(multi.dataset().schema.names)
    # widening within numbers stays accepted; a value a cast cannot keep is still refused
    multi.add_feature("wide", lengths, inputs=["caption"], type="float64", progress=False)
    assert multi.dataset().schema.field("wide").type == pa.float64()
    with pytest.raises(LakeError, match="cannot store float64 as float32: a value is out of the range of float32"):
        multi.add_feature("big", lambda b: np.full(b.num_rows, 1e300), inputs=["caption"], type="float32", progress=False)
    with pytest.raises(LakeError, match="cannot store float64 as int32: .*truncated"):
        multi.add_feature("half", lambda b: np.full(b.num_rows, 1.5), inputs=["caption"], type="int32", progress=False)
    # the same on the command line: one line, no traceback
    (tmp_path / "kinds.py").write_text("import pyarrow.compute as pc\n"
                                       "def longer(batch):\n    return pc.greater(pc.utf8_length(batch['caption']), 10)\n")
    monkeypatch.chdir(tmp_path)
    out = CliRunner().invoke(main, ["feature", "add", multi.uri, "long", "--udf", "kinds:longer", "--input", "caption",
                                    "--type", "float32"])
    assert out.exit_code == 1 and "Traceback" not in out.output, out.output
    assert "feature 'long' returns bool for column 'long', which it declares float32" in out.output
    assert "long" not in multi.dataset().schema.names


def test_a_feature_column_may_not_be_a_word_sql_reserves(multi: Lake):
    """A feature named select was accepted; then `SELECT select FROM pairs` and lake.count("select > 10")
    failed. DataFusion reads null and current_date as values, and struct/interval as keywords."""
    lengths = lambda b: pc.utf8_length(b["caption"])  # noqa: E731
    v = multi.version
    for name in ("select", "from", "end", "null", "true", "current_date", "struct", "interval"):
        with pytest.raises(LakeError, match=f"feature column '{name}' is a word SQL reserves .* pick another name"):
            multi.add_feature(name, lengths, inputs="caption", type="int32", progress=False)
    with pytest.raises(LakeError, match="feature column 'current_date' is a word SQL reserves"):  # a dict's key too
        multi.add_feature("current", lambda b: {"date": lengths(b)}, inputs="caption", progress=False)
    with pytest.raises(LakeError, match="returns column 'g_A', which has capitals"):
        multi.add_feature("g", lambda b: {"A": lengths(b)}, inputs="caption", progress=False)
    assert multi.version == v
    for name in ("count", "value", "date"):  # keywords both parsers take as column names
        multi.add_feature(name, lengths, inputs="caption", type="int32", progress=False)
        assert multi.count(f"{name} > 10") == multi.sql(f"SELECT {name} FROM pairs WHERE {name} > 10").shape[0] > 0


def test_a_run_whose_columns_were_declared_again_meanwhile_gives_advice_its_command_takes(multi: Lake, monkeypatch):
    """The message ended "...or with --name for a column of its own" for every stage, but feature add
    has no --name (its name is the NAME argument) and signals writes columns of fixed names."""
    original = columns.FragmentFiles.commit
    raced = []

    def commit_after_another_declare(self):  # another run declares the columns again before this one commits
        if not raced:
            raced.append(1)
            ds = self.lake.dataset()
            stage = columns.field_provenance(ds.schema.field(self.names[0]))["stage"]  # (its own stage, another config)
            other = columns.provenance(stage, {"other": len(raced)}, ["caption"], ds.version)
            columns.declare(self.lake, [pa.field(n, ds.schema.field(n).type) for n in self.names], other, recompute=True)
        return original(self)

    monkeypatch.setattr(columns.FragmentFiles, "commit", commit_after_another_declare)
    ends = {"feature": "once the other run is done, or as a feature of another name (lake.add_feature(OTHER_NAME, ...)) "
                       "for a column of its own",
            "signals": "once the other run is done",
            "embed": "once the other run is done, or with another name for a column of its own"}
    for stage, run in [("feature", lambda: multi.add_feature("chars", caption_chars, progress=False)),
                       ("signals", lambda: multi.signals("caption", progress=False)),
                       ("embed", lambda: multi.embed("tiny-random", workers=0, progress=False))]:
        raced.clear()
        with pytest.raises(LakeError, match="declared again with another config") as err:
            run()
        assert str(err.value).endswith(ends[stage]), (stage, str(err.value))


def test_a_param_that_is_not_json_is_named_when_the_function_fails(multi: Lake, tmp_path: Path, monkeypatch):
    """--param n=abc reached the function as the text 'abc' and the run failed with "Function 'greater'
    has no kernel matching input types (int32, string)", naming no parameter."""
    (tmp_path / "params.py").write_text(
        "import pyarrow.compute as pc\n"
        "def longer_than(batch, n=10):\n"
        "    return pc.greater(pc.utf8_length(batch['caption']), n)\n"
        "def longer(batch, n):\n"
        "    return [len(c or '') > n for c in batch['caption'].to_pylist()]\n")
    monkeypatch.chdir(tmp_path)
    r = CliRunner()
    v = multi.version
    for udf, named in [("params:longer_than", "parameter n='abc' is text, not int like its default 10 "
                                              "(a --param value that is not JSON stays text: e.g. --param n=10)"),
                       ("params:longer", "parameter n='abc' is text (a --param value that is not JSON stays text)")]:
        out = r.invoke(main, ["feature", "add", multi.uri, "long", "--udf", udf, "--input", "caption", "--param", "n=abc"])
        assert out.exit_code == 1 and "Traceback" not in out.output and len(out.output.strip().splitlines()) == 1
        assert out.output.strip().endswith(named), out.output
    with pytest.raises(LakeError, match=r"parameter n='abc' is text, not int like its default 10 \(a value given as "
                                        r"text stays text: e.g. params=\{'n': 10\}\)$"):  # a Python caller's words
        multi.add_feature("long", "params:longer_than", inputs="caption", params={"n": "abc"}, progress=False)
    with pytest.raises(LakeError, match=r"^fn 'nocolon' must look like module:function"):
        multi.add_feature("long", "nocolon", inputs="caption", progress=False)
    out = r.invoke(main, ["feature", "add", multi.uri, "long", "--udf", "nocolon", "--input", "caption"])
    assert out.exit_code == 1 and "--udf 'nocolon' must look like module:function" in out.output, out.output
    assert multi.version == v
    out = r.invoke(main, ["feature", "add", multi.uri, "long", "--udf", "params:longer_than", "--input", "caption",
                          "--param", "n=20", "--json"])
    assert out.exit_code == 0 and json.loads(out.output)["rows"] == multi.count(), out.output


def test_a_udf_file_is_recorded_by_its_absolute_path_and_its_fix_runs_from_anywhere(tmp_path: Path, monkeypatch):
    """`--udf myf.py:fn` run in directory D recorded `myf.py:fn`: status's fix, pasted in another
    directory, failed ("no file /other/myf.py"). The file is recorded by its absolute path (beside
    the config, so the config's hash is unchanged); a module name stays as given."""
    import shlex

    from lakecurate import graph

    lake = Lake.create(tmp_path / "lake")
    lake.append(pair_rows(0, 8))
    here = tmp_path / "d"
    here.mkdir()
    (here / "myf.py").write_text("import pyarrow.compute as pc\ndef fn(batch):\n    return pc.utf8_length(batch['caption'])\n")
    monkeypatch.chdir(here)
    out = CliRunner().invoke(main, ["feature", "add", lake.uri, "f", "--udf", "myf.py:fn", "--input", "caption"])
    assert out.exit_code == 0, out.output
    prov = columns.field_provenance(lake.dataset().schema.field("f"))
    assert prov["udf"] == f"{here / 'myf.py'}:fn"
    lake.append(pair_rows(8, 4))  # new rows: the feature is incomplete, its fix computes them
    monkeypatch.chdir(tmp_path)
    st = next(s for s in graph.states(lake) if s.node.stage == "feature")
    assert st.state == "incomplete" and f"--udf {here / 'myf.py'}:fn" in st.fix, st.fix
    out = CliRunner().invoke(main, shlex.split(st.fix)[1:])
    assert out.exit_code == 0, out.output
    assert [s.state for s in graph.states(lake) if s.node.stage == "feature"] == ["current"]


def test_a_stage_s_recompute_never_drops_another_stage_s_column(tmp_path: Path):
    """A feature named myenc_image, then `embed --name myenc`: "made with another config ...
    --recompute to replace it", and --recompute dropped the user's feature without a word (embed
    --name caption beside recaption --name image replaced the image vectors with text the same
    way). A column another stage declared is refused with and without recompute, naming its
    stage and the way out (another name); the feature stays."""
    lake = Lake.create(tmp_path / "lake")
    lake.ingest(SAMPLE_DATA, progress=False)
    lake.add_feature("myenc_image", caption_chars, progress=False)
    before = lake.to_pandas(["id", "myenc_image"]).set_index("id")["myenc_image"]
    for recompute in (False, True):
        with pytest.raises(LakeError, match=r"column 'myenc_image' .* belongs to feature \(myenc_image\), not to this "
                                            r"embed run: .*pick another name for this one"):
            lake.embed("tiny-random", name="myenc", workers=0, recompute=recompute, progress=False)
    after = lake.to_pandas(["id", "myenc_image"]).set_index("id")["myenc_image"]
    assert after.equals(before) and "myenc_text" not in lake.dataset().schema.names
    from lakecurate.features import list_features

    assert [f["column"] for f in list_features(lake)] == ["myenc_image"]


def test_a_feature_name_is_one_feature_whether_it_writes_one_column_or_several(multi: Lake):
    """A dict-returning feature (feat_n, feat_scaled) and another function under its name (feat)
    were both accepted without --recompute: list showed two features of one name, drop dropped both."""
    multi.add_feature("feat", word_stats, inputs=["caption"], progress=False)
    multi.add_feature("solo", caption_chars, progress=False)
    v = multi.version
    for name, fn, old in (("feat", caption_chars, "columns feat_n, feat_scaled"), ("solo", word_stats, "column solo")):
        with pytest.raises(LakeError, match=f"feature '{name}' .*\\({old}\\) was made with another config .*recompute=True"):
            multi.add_feature(name, fn, inputs=["caption"], progress=False)
    assert multi.version == v and len(list_features(multi)) == 3
    multi.add_feature("feat", caption_chars, recompute=True, progress=False)  # replaced whole
    assert sorted(r["column"] for r in list_features(multi)) == ["feat", "solo"]
    assert drop_feature(multi, "feat") == ["feat"] and [r["column"] for r in list_features(multi)] == ["solo"]


def test_a_udf_module_that_exits_at_import_is_an_error_not_a_silent_exit(multi: Lake, tmp_path: Path):
    """sys.exit(4) at the module's import ended lakecurate with code 4 and no word (no JSON with --json)."""
    (tmp_path / "quits.py").write_text("import sys\nsys.exit(4)\n\ndef f(b):\n    return b\n")
    with pytest.raises(LakeError, match="cannot import .*quits.py: SystemExit: 4"):
        load_udf(f"{tmp_path / 'quits.py'}:f")
    res = CliRunner().invoke(main, ["feature", "add", multi.uri, "q", "--udf", f"{tmp_path / 'quits.py'}:f",
                                    "--input", "caption", "--json"])
    assert res.exit_code == 1 and "SystemExit: 4" in json.loads(res.stdout)["error"], res.output
