"""An option is named as the interface a person used spells it: the CLI's flag, a Lake method's
parameter, a pipeline file's key (a notebook user never typed "--batch-size")."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from lakecurate import Lake, LakeError, options
from lakecurate.cli import main


def test_spell_follows_the_interface_speaking():
    assert options.speaker() == "python"  # (the library's default: a notebook, the loader, a stage function)
    assert [options.spell(o) for o in ("--batch-size", "-k", "--set", "--caption-mix-both", "ids", "column names")] \
        == ["batch_size", "k", "overrides", "mix_both", "ids", "column names"]
    with options.speaking("cli"):  # (the CLI calls Lake methods: its wording stays)
        assert (options.spell("--batch-size"), options.spell("-k")) == ("--batch-size", "-k")
        with pytest.raises(LakeError, match=r"^invalid --batch-size 0: expected an integer >= 1$"):
            options.whole("--batch-size", 0)
    assert options.speaker() == "python"


@pytest.mark.parametrize("call, message", [
    (lambda lake: lake.cluster(0), r"^invalid k 0: expected an integer >= 2$"),
    (lambda lake: lake.embed(batch_size=0), r"^invalid batch_size 0: expected an integer >= 1$"),
    (lambda lake: lake.embed(precision="fp8"), r"^precision must be one of "),
    (lambda lake: lake.rebalance(target=1.5), r"^invalid target 1.5: a fraction must be in \(0, 1\]"),
    (lambda lake: lake.rebalance(target=0), r"^invalid target 0: expected a fraction"),
    (lambda lake: lake.sequence("random", score="x"), r"^score orders a curriculum; mode random does not read it"),
])
def test_the_python_api_names_its_parameters(lake: Lake, call, message):
    with pytest.raises(LakeError, match=message) as err:
        call(lake)
    assert "--" not in str(err.value).split(":")[0], err.value


def test_a_pipeline_step_names_its_key(lake: Lake, tmp_path: Path):
    pipe = tmp_path / "p.toml"
    pipe.write_text('[embed]\nmodel = "offline"\nbatch_size = 0\n')
    with pytest.raises(LakeError, match=rf"^pipeline {re.escape(str(pipe))}, \[embed\]: invalid batch_size 0: "):
        lake.run(pipe, progress=False)


def test_the_cli_still_names_its_flags(lake: Lake):
    out = CliRunner().invoke(main, ["sequence", lake.uri, "--mode", "random", "--score", "x"])
    assert out.exit_code == 1, out.output
    assert "--score orders a curriculum; --mode random does not read it: drop it or use --mode curriculum" in out.output
    # and the Python API used after it in the same process speaks Python again
    with pytest.raises(LakeError, match=r"^invalid k 0"):
        lake.cluster(0)


def test_advice_that_gives_an_option_a_value_is_worded_for_the_interface(tmp_path):
    """A Python caller was told to "pass --overwrite" or "open it with --branch bx" (a probe of the
    rewording: the advice lines that give an option its value were left in the CLI's words)."""
    from .conftest import SAMPLE_DATA

    lake = Lake.create(tmp_path / "lake")
    lake.ingest(SAMPLE_DATA, progress=False)
    (tmp_path / "out.parquet").write_bytes(b"x")
    with pytest.raises(LakeError, match=r"choose another destination or pass overwrite=True$"):
        lake.export(tmp_path / "out.parquet", "parquet")
    with pytest.raises(LakeError, match=r"no rows to export .* with where 'false'"):
        lake.export(tmp_path / "none.parquet", "parquet", where="false")
    with pytest.raises(LakeError, match=r"invalid caption_mix 0.5: expected text"):  # (an AttributeError)
        lake.export(tmp_path / "mix.parquet", "parquet", caption_mix=0.5)
    lake.create_branch("bx")
    with pytest.raises(LakeError, match=r"open it with Lake.open\('.*lake', branch='bx'\)"):
        lake.create_branch("bx")
    res = CliRunner().invoke(main, ["branch", "create", lake.uri, "bx"])
    assert res.exit_code == 1 and "open it with --branch bx" in res.output, res.output
    res = CliRunner().invoke(main, ["export", lake.uri, str(tmp_path / "out.parquet"), "--format", "parquet"])
    assert res.exit_code == 1 and "or pass --overwrite" in res.output, res.output


def test_every_lake_method_pickles_by_reference_as_before_the_wrapping(tmp_path):
    """The Python wording wraps every Lake method: a wrapper of a Store method carried Store's name,
    pickle found the unwrapped original under it and refused (a spawned pool's map(Lake.history, ...),
    Ray); cloudpickle then pickled the wrapper by value and failed on its ContextVar."""
    import pickle

    cloudpickle = pytest.importorskip("cloudpickle")
    for name in ("history", "tag", "sql", "embed", "restore", "__init__"):
        method = getattr(Lake, name)
        assert pickle.loads(pickle.dumps(method)) is method, name
        assert cloudpickle.loads(cloudpickle.dumps(method)) is method, name
    lake = Lake.create(tmp_path / "lake")
    assert pickle.loads(pickle.dumps(Lake.history))(lake, 1)[0]["version"] == lake.version


def test_common_re_run_advice_names_the_option_as_the_interface_does(tmp_path):
    """A probe of the wording: re-run advice still spelled flags for Python and pipelines ("pass
    --recompute", "pass --overwrite", "pass --semantic-threshold", "give --format X")."""
    from .conftest import SAMPLE_DATA

    lake = Lake.create(tmp_path / "lake")
    lake.ingest(SAMPLE_DATA, progress=False)
    lake.embed("tiny-random", workers=0, batch_size=8, progress=False)
    lake.cluster(3)
    with pytest.raises(LakeError, match=r"pass recompute=True to replace them$"):
        lake.cluster(4)
    with pytest.raises(LakeError, match=r"or pass semantic_threshold to do it anyway"):
        lake.dedup(["semantic"], progress=False)
    (tmp_path / "r.html").write_text("not a report")
    with pytest.raises(LakeError, match=r"pass overwrite=True to replace it$"):
        lake.report(tmp_path / "r.html", sample_rows=10)
    res = CliRunner().invoke(main, ["cluster", lake.uri, "-k", "4"])
    assert res.exit_code == 1 and "pass --recompute to replace them" in res.output, res.output
    res = CliRunner().invoke(main, ["report", lake.uri, str(tmp_path / "r.html"), "--sample-rows", "10"])
    assert res.exit_code == 1 and "pass --overwrite to replace it" in res.output, res.output


def test_rarer_advice_names_options_and_commands_as_the_interface_does(tmp_path):
    """The rarer library messages still spelled flags for every caller ("use --name ... or --recompute",
    "drop --kind folder", "try --set STEP.PARAM=VALUE", "pass --embedding NAME", "--top-k is read
    only when sampling"), or a command a Python caller cannot run ("lakecurate feature add ...")."""
    import pyarrow as pa

    from lakecurate import columns
    from lakecurate.errors import IngestError
    from lakecurate.names import signals_fix
    from lakecurate.recaption import top_k_greedy

    from .conftest import SAMPLE_DATA

    lake = Lake.create(tmp_path / "lake")
    lake.ingest(SAMPLE_DATA, progress=False)
    # a column made with another config: declare's default way out
    field = [pa.field("probe_value", pa.int32())]
    columns.declare(lake, field, columns.provenance("probe", {"a": 1}, ["caption"], lake.version))
    other = columns.provenance("probe", {"a": 2}, ["caption"], lake.version)
    with pytest.raises(LakeError, match=r"; use name to write new columns beside it, or recompute=True to replace it$"):
        columns.declare(lake, field, other)
    with options.speaking("cli"), pytest.raises(LakeError, match=r"; use --name to write new columns beside it, or "
                                                                 r"--recompute to replace it$"):
        columns.declare(lake, field, other)
    assert signals_fix().endswith("redo it with lake.signals(KINDS, recompute=True)")
    assert top_k_greedy().startswith("top_k is read only when sampling: temperature > 0; at temperature 0 (greedy)")
    with options.speaking("cli"):
        assert signals_fix().endswith("redo it with `lakecurate signals LAKE --recompute` (and the same kind options)")
        assert top_k_greedy().startswith("--top-k is read only when sampling: --temperature > 0")
    # ingest's kind advice
    lake.export(tmp_path / "out", "lance")  # a Lance table, not a folder of pairs
    with pytest.raises(IngestError, match=r"not a folder of pairs; drop kind='folder': a Lance table \(such as an "
                                          r"export of format='lance' writes\)"):
        Lake.create(tmp_path / "lake2").ingest(tmp_path / "out", kind="folder", progress=False)
    (tmp_path / "notes").write_bytes(b"no manifest, no folder, no shard")
    with pytest.raises(IngestError, match=r"cannot tell what .*; pass kind$"):
        Lake.create(tmp_path / "lake3").ingest(tmp_path / "notes", progress=False)
    res = CliRunner().invoke(main, ["ingest", str(tmp_path / "lake4"), str(tmp_path / "out"), "--kind", "folder"])
    assert res.exit_code == 1 and "drop --kind folder: a Lance table (such as an export of --format lance writes)" \
        in res.output, res.output
    # curate's advice: a recipe that keeps nothing, a condition naming no column
    recipe = tmp_path / "none.toml"
    recipe.write_text('name = "none"\n[[step]]\nfilter = "sql"\nwhere = "width < 0"\n')
    rep = lake.curate(str(recipe), progress=False)
    assert any(w.endswith("see what each step would drop with dry_run=True, and try overrides={'STEP.PARAM': VALUE}")
               for w in rep.warnings), rep.warnings
    res = CliRunner().invoke(main, ["--no-progress", "curate", lake.uri, str(recipe)])
    assert res.exit_code == 0 and "with --dry-run, and try --set STEP.PARAM=VALUE" in res.output, res.output
    recipe.write_text('name = "nocol"\n[[step]]\nfilter = "sql"\nwhere = "nosuch > 1"\n')
    with pytest.raises(LakeError, match=r"add a feature of your own with: lake.add_feature\('nosuch', FUNCTION\)$"):
        lake.curate(str(recipe), progress=False)
    res = CliRunner().invoke(main, ["curate", lake.uri, str(recipe)])
    assert res.exit_code == 1 and "add a feature of your own with: lakecurate feature add" in res.output, res.output
    # several embeddings and none named
    lake.embed("tiny-random", workers=0, batch_size=8, progress=False)
    lake.embed("tiny-random", name="other", workers=0, batch_size=8, progress=False)
    with pytest.raises(LakeError, match=r"has several embeddings \(clip_tinyrandom, other\); pass embedding='NAME'$"):
        lake.cluster(3)
    res = CliRunner().invoke(main, ["cluster", lake.uri, "-k", "3"])
    assert res.exit_code == 1 and "pass --embedding NAME" in res.output, res.output
