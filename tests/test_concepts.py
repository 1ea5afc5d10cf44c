"""Concepts, rebalancing, sequencing and export: literal checks, round trips, a skewed Flickr8k mix."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import lance
import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from lakecurate import Lake, LakeError
from lakecurate.cli import main
from lakecurate.columns import field_provenance
from lakecurate.concepts import budgets, complexity
from lakecurate.export import spread_copies
from lakecurate.plant import first_captions, plant_skew

from .conftest import SAMPLE_DATA, one_more_copy, pair_rows


def test_budgets_literal():
    sizes = np.array([100, 10, 10, 0])
    b = budgets(sizes, np.array([0.01, 0.2, 0.2, 0.0]), 60, 0.5)
    assert b.tolist() == [40, 10, 10, 0] and b.sum() == 60  # rare, complex concepts capped at their size
    even = budgets(np.array([50, 50]), np.array([0.3, 0.3]), 50, 0.5)
    assert even.tolist() == [25, 25]
    colder = budgets(np.array([50, 50]), np.array([0.1, 0.3]), 40, 0.1)
    warmer = budgets(np.array([50, 50]), np.array([0.1, 0.3]), 40, 10.0)
    assert colder[0] < warmer[0] <= 20  # lower temperature prunes the simple concept harder
    assert budgets(np.array([5, 5]), np.array([1.0, 1.0]), 100, 0.5).tolist() == [5, 5]  # target above the size
    # near zero temperature: every weight but the largest underflows; once that concept is capped
    # the rest went 0 / 0 (budgets of -2^63, 0 rows kept). The limit: most complex first, in order,
    # after the one row every concept keeps (the simplest one vanished from the view)
    for t in (1e-4, 1e-9):
        cold = budgets(np.array([100, 10, 10, 50]), np.array([0.01, 0.2, 0.3, 0.1]), 60, t)
        assert cold.tolist() == [1, 10, 10, 39] and cold.sum() == 60
    # a target below one row a concept: no floor (the target is kept exactly)
    assert budgets(np.array([10, 10, 10]), np.array([0.1, 0.2, 0.3]), 2, 1e-4).tolist() == [0, 0, 2]


def test_a_concept_of_one_candidate_is_not_the_densest():
    """A concept with one candidate has spread 0 (it is its own centroid), so complexity 0: the
    rarest concept of the view was the one certain to get budget 0."""
    from lakecurate.concepts import _complexity_table

    rng = np.random.default_rng(0)
    cent = rng.standard_normal((3, 8))
    cent /= np.linalg.norm(cent, axis=1, keepdims=True)
    table = _complexity_table(np.array([40, 30, 1]), cent, np.array([40 * 0.2, 30 * 0.3, 0.0]))
    assert table["spread"].tolist()[2] == pytest.approx(0.25)  # the others' median, not 0
    b = budgets(table["size"].to_numpy(), table["complexity"].to_numpy(), 20, 0.5)
    assert b[2] == 1 and b.sum() == 20


def test_complexity_literal():
    tight = np.array([[1, 0], [0.999, 0.045], [0.999, -0.045]], np.float32)
    loose = np.array([[0, 1], [0.6, 0.8], [-0.6, 0.8]], np.float32)
    x = np.concatenate([tight, loose])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    t = complexity(x, np.array([0, 0, 0, 1, 1, 1]), 2)
    assert t["size"].tolist() == [3, 3]
    assert t.loc[0, "spread"] < t.loc[1, "spread"] and t.loc[0, "complexity"] < t.loc[1, "complexity"]
    assert t.loc[0, "isolation"] == pytest.approx(t.loc[1, "isolation"])
    # identical float16 rows: no spread, not a rounding's -2.6e-05 (shown as "-0.0")
    rng = np.random.default_rng(0)
    for _ in range(3):
        v = rng.standard_normal((1, 512)).astype(np.float32)
        t = complexity(np.repeat(v / np.linalg.norm(v), 4, axis=0).astype(np.float16), np.zeros(4, np.int64), 1)
        assert 0 <= t.loc[0, "spread"] < 1e-4 and not np.signbit(t.loc[0, "spread"])


@pytest.fixture
def lake3(sample_lake_embedded: Lake, tmp_path: Path) -> Lake:
    lake = Lake.open(shutil.copytree(sample_lake_embedded.uri, tmp_path / "lake"))
    lake.cluster(4)
    lake.rebalance(0.6, max_repeats=3, temperature=0.2)
    lake.sequence("interleave")
    return lake


def test_columns_and_provenance(lake3: Lake):
    df = lake3.to_pandas(["concept", "concept_dist", "rebalance_keep", "sample_weight", "repeats", "seq_order",
                          "clip_tinyrandom_image"])
    has_vec = df["clip_tinyrandom_image"].notna()
    assert df.loc[has_vec, "concept"].between(0, 3).all() and df.loc[~has_vec, "concept"].isna().all()
    assert (df.loc[has_vec, "concept_dist"] >= -1e-5).all()
    kept = df["rebalance_keep"]
    assert kept.sum() == round(0.6 * has_vec.sum())
    assert df.loc[kept, "repeats"].between(1, 3).all() and df.loc[~kept, "repeats"].isna().all()
    assert sorted(df.loc[kept, "seq_order"].astype(int)) == list(range(int(kept.sum())))
    # interleave: the first rows of the order come from different concepts
    first = df[kept].sort_values("seq_order")["concept"].tolist()
    n_concepts = len(set(first))
    assert len(set(first[:n_concepts])) == n_concepts
    prov = field_provenance(lake3.dataset().schema.field("rebalance_keep"))
    assert prov["stage"] == "rebalance" and prov["config"]["target"] == 0.6
    assert lake3.count() == 28  # nothing deleted


def read_wds(folder: Path) -> list[dict]:
    import webdataset as wds

    shards = sorted(str(p) for p in folder.glob("shard-*.tar"))
    return list(wds.WebDataset(shards, shardshuffle=False))


def expected(lake: Lake) -> list[tuple[str, int, bytes]]:
    """(id, copy, image bytes) in export order: seq_order, each row's copies spread (tested in test_export)."""
    df = lake.to_pandas(["id", "seq_order", "repeats", "image"], where="rebalance_keep").sort_values("seq_order")
    rows, copies = spread_copies(df["repeats"].to_numpy())
    return [(df["id"].iloc[p], int(r), df["image"].iloc[p]) for p, r in zip(rows, copies)]


def test_webdataset_round_trip(lake3: Lake, tmp_path: Path):
    rep = lake3.export(tmp_path / "wds", "webdataset", shard_size=5)
    want = expected(lake3)
    got = read_wds(tmp_path / "wds")
    assert rep.samples == len(want) == len(got) and rep.shards == -(-len(want) // 5)
    for (i, r, img), sample in zip(want, got):
        meta = json.loads(sample["json"])
        assert (meta["id"], meta["copy"]) == (i, r)
        image = next(v for k, v in sample.items() if k in ("jpg", "png", "gif", "webp", "bmp", "tiff"))
        assert image == img
        assert isinstance(sample["txt"], bytes)
    manifest = json.loads((tmp_path / "wds" / "manifest.json").read_text())
    assert manifest["samples"] == len(want) and manifest["version"] == lake3.version
    assert manifest["rebalance"]["target"] == 0.6 and manifest["source_lake"] == lake3.uri
    with pytest.raises(LakeError, match="not empty"):
        lake3.export(tmp_path / "wds", "webdataset")


@pytest.mark.parametrize("fmt", ["parquet", "lance"])
def test_table_round_trips(lake3: Lake, tmp_path: Path, fmt: str):
    dest = tmp_path / f"out.{fmt}"
    rep = lake3.export(dest, fmt)
    tbl = pq.read_table(dest) if fmt == "parquet" else lance.dataset(str(dest)).to_table()
    want = expected(lake3)
    assert tbl.num_rows == rep.samples == len(want)
    assert list(zip(tbl.column("id").to_pylist(), tbl.column("copy").to_pylist())) == [(i, r) for i, r, _ in want]
    assert tbl.column("image").to_pylist() == [img for _, _, img in want]
    manifest = json.loads(Path(f"{dest}.manifest.json").read_text())
    assert manifest["format"] == fmt and manifest["samples"] == len(want)


def test_export_version_where_and_errors(lake3: Lake, tmp_path: Path):
    lake3.tag("balanced")
    version = lake3.version
    lake3.rebalance(0.3, temperature=0.2)  # a later decision; the tag still exports the first one
    rep = lake3.export(tmp_path / "a.parquet", "parquet", version="balanced", repeats=False)
    assert rep.version == version and rep.samples == rep.rows
    # The latest order was made for the first rebalancing: exporting in it is refused, naming the fix...
    with pytest.raises(LakeError, match=r"sequence \(seq_order, seq_shard\) is stale: rebalance_keep .*lakecurate sequence"):
        lake3.export(tmp_path / "b.parquet", "parquet", where="ingest_status = 'ok'")
    assert not (tmp_path / "b.parquet").exists()
    # ...unless asked for, and then the manifest says so.
    rep = lake3.export(tmp_path / "b.parquet", "parquet", where="ingest_status = 'ok'", allow_stale=True)
    assert rep.rows == lake3.count("ingest_status = 'ok'")
    manifest = json.loads((tmp_path / "b.parquet.manifest.json").read_text())
    assert manifest["allow_stale"] is True and "sequence" in manifest["stale"][0]
    with pytest.raises(LakeError, match="^where 'no_such_column > 1' cannot select rows"):
        lake3.export(tmp_path / "c.parquet", "parquet", where="no_such_column > 1")
    with pytest.raises(LakeError, match="unknown export format"):
        lake3.export(tmp_path / "d", "csv")


def test_cli_concepts(sample_lake_embedded: Lake, tmp_path: Path):
    uri = str(shutil.copytree(sample_lake_embedded.uri, tmp_path / "lake"))
    runner = CliRunner()
    for args in (["cluster", uri, "-k", "3"], ["rebalance", uri, "--target", "0.5"], ["sequence", uri, "--mode", "random"],
                 ["export", uri, str(tmp_path / "wds")]):
        res = runner.invoke(main, args)
        assert res.exit_code == 0, (args, res.output)
    assert "concept" in runner.invoke(main, ["rebalance", uri, "--target", "0.5"]).output
    assert len(list((tmp_path / "wds").glob("shard-*.tar"))) == 1
    with tarfile.open(next((tmp_path / "wds").glob("shard-*.tar"))) as tar:
        names = tar.getnames()
    assert names[0].endswith((".jpg", ".png")) and names[1].endswith(".txt") and names[2].endswith(".json")
    res = runner.invoke(main, ["sequence", uri, "--mode", "curriculum"])
    assert res.exit_code == 1 and "--score" in res.output
    for score, why in [("caption", "'caption' is not a number column"), ("-no_such", "'-no_such' is not in the lake")]:
        res = runner.invoke(main, ["sequence", uri, "--mode", "curriculum", "--score", score])  # caption: an Arrow cast traceback
        assert res.exit_code == 1 and why in res.output and "Traceback" not in res.output and "width" in res.output, res.output


@pytest.mark.slow
@pytest.mark.shared
def test_skewed_mix_rebalances(flickr8k: Path, tmp_path: Path):
    """One concept made dominant by 2 x 100 near copies among 300 photos: after rebalancing to half
    the rows its share falls at least 2x, and >= 90% of the rarest concepts' rows survive."""
    pytest.importorskip("efficientnet_lite_pytorch")
    photos = sorted((flickr8k / "images").glob("*.jpg"))[:300]
    labels = plant_skew(photos, first_captions(flickr8k / "captions.csv"), tmp_path / "src", dominant=2, copies=100, seed=0)
    lake = Lake.create(tmp_path / "lake")
    lake.ingest(tmp_path / "src", progress=False)
    lake.embed("offline", progress=False)
    lake.cluster()
    rep = lake.rebalance(0.5)
    df = lake.to_pandas(["key", "concept", "rebalance_keep"])
    df["dominant"] = [labels[Path(k).stem] == "dominant" for k in df["key"]]
    before = df["dominant"].mean()
    after = df.loc[df["rebalance_keep"], "dominant"].mean()
    assert rep.kept == round(0.5 * len(df))
    assert after <= before / 2, (before, after)
    sizes = df.groupby("concept").size().sort_values()
    rare = sizes.index[np.cumsum(sizes.to_numpy()) <= 0.1 * len(df)]
    assert len(rare) >= 3
    survived = df.loc[df["concept"].isin(rare), "rebalance_keep"].mean()
    assert survived >= 0.9, (survived, sizes.head(10).to_dict())


@pytest.fixture(scope="module")
def clustered(sample_lake_embedded: Lake, tmp_path_factory) -> Lake:
    """A lake with concepts and a rebalance, for checks that must leave it unchanged."""
    lake = Lake.open(shutil.copytree(sample_lake_embedded.uri, tmp_path_factory.mktemp("checks") / "lake"))
    lake.cluster(4)
    lake.rebalance(0.6)
    return lake


@pytest.mark.parametrize("stage, options, option", [
    ("cluster", {"k": -3, "recompute": True}, "invalid k "),
    ("cluster", {"k": 0}, "invalid k "),
    ("cluster", {"k": 1, "recompute": True}, r"^invalid k 1: expected an integer >= 2$"),  # help said 2..4096
    ("cluster", {"k": 2.5}, "invalid k "),
    ("cluster", {"k": 4, "seed": -1}, "^invalid seed "),
    ("rebalance", {"target": 0}, "^invalid target "),
    ("rebalance", {"target": -0.5}, "^invalid target "),
    ("rebalance", {"target": 1.5}, "^invalid target "),
    ("rebalance", {"target": float("nan")}, "^invalid target "),
    ("rebalance", {"target": float("inf")}, "^invalid target "),
    ("rebalance", {"target": True}, "^invalid target "),
    # it said "keeps 0 rows, outside 1..26 candidate rows; pass a fraction in (0, 1]": a fraction was passed
    ("rebalance", {"target": 0.001}, r"^target 0.001 of 26 candidate rows rounds to 0 rows; pass a fraction of at "
                                     r"least 0.0385 or a count of rows up to 26$"),
    ("rebalance", {"target": 0.4, "where": "key = 'chelsea.jpg'"}, r"^target 0.4 of 1 candidate row rounds to 0 "
                                                                   r"rows; pass a fraction of at least 1 "),
    ("rebalance", {"target": 27}, r"^target 27 asks for 27 rows, more than the 26 candidate rows; pass a count "
                                  r"up to 26 or a fraction in \(0, 1\]$"),
    ("rebalance", {"temperature": 0}, "^invalid temperature "),
    ("rebalance", {"temperature": float("nan")}, "^invalid temperature "),
    ("rebalance", {"max_repeats": -2}, "^invalid max_repeats "),
    ("rebalance", {"max_repeats": 0}, "^invalid max_repeats "),
    ("rebalance", {"seed": -1}, "^invalid seed "),
    ("rebalance", {"where": "id = 'none'"}, "no candidate rows"),
    ("sequence", {"shard_size": 0}, "^invalid shard_size "),
    ("sequence", {"shard_size": -5}, "^invalid shard_size "),
    ("sequence", {"shard_size": 2.5}, "^invalid shard_size "),
    ("sequence", {"seed": -1}, "^invalid seed "),
    ("sequence", {"where": "id = 'none'"}, "no rows to order"),  # wrote every seq_order null, exit 0
    ("sequence", {"mode": "interleave", "where": "concept IS NULL"}, "interleave takes turns among concepts, and no row"),  # a random order
    ("cluster", {"k": 27, "recompute": True}, "^k 27 asks for more concepts than"),  # 26 rows: empty concepts
])
def test_bad_numbers_are_refused_before_any_write(clustered: Lake, stage: str, options: dict, option: str):
    version = clustered.version
    with pytest.raises(LakeError, match=option) as err:
        getattr(clustered, stage)(**options)
    assert "\n" not in str(err.value)
    assert clustered.version == version  # nothing declared or written


def test_target_fraction_or_count(clustered: Lake, tmp_path: Path):
    lake = Lake.open(shutil.copytree(clustered.uri, tmp_path / "lake"))
    n = lake.rebalance(1.0).rows
    assert lake.rebalance(1.0).kept == n and lake.rebalance(1).kept == 1  # a float 1.0 is all, an int 1 one row
    assert lake.rebalance(5.0).kept == 5 and lake.rebalance(np.int64(6)).kept == 6  # whole floats count rows


def test_kmeans_and_complexity_stream_a_vector_source(tmp_path, monkeypatch):
    """Concepts read the embedding column through a source: k-means on a sample read by position,
    the assignment and the complexity streamed in batches: equal to the in-memory results."""
    import pyarrow as pa

    from lakecurate import concepts
    from lakecurate.columns import LanceVectors
    from lakecurate.neardup import ArrayVectors

    rng = np.random.default_rng(3)
    centers = rng.standard_normal((6, 32)).astype(np.float32)
    x = centers[rng.integers(0, 6, 4000)] + 0.3 * rng.standard_normal((4000, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    col = pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), 32)
    ds = lance.write_dataset(pa.table({"v": col}), str(tmp_path / "v.lance"), max_rows_per_file=900)
    src = LanceVectors(ds, "v")
    taken: list[int] = []
    real_take = LanceVectors.take
    monkeypatch.setattr(LanceVectors, "take", lambda self, rows: taken.append(len(rows)) or real_take(self, rows))
    monkeypatch.setattr(concepts, "_MAX_PER_CENTROID", 100)  # k-means trains on 600 sampled rows
    cent, label = concepts.kmeans(src, 6, seed=1)
    assert taken == [600]  # the sample; the assignment streams
    mem_cent, mem_label = concepts.kmeans(x, 6, seed=1)
    np.testing.assert_allclose(cent, mem_cent, atol=1e-5)
    assert np.array_equal(label, mem_label)
    assert len(np.unique(label)) == 6
    lab, dist = concepts.assign(ArrayVectors(x), cent)
    np.testing.assert_allclose(dist, 1 - (x * cent[lab]).sum(1), atol=1e-5)
    streamed = complexity(src, label, 6)
    whole = complexity(x, label, 6)
    np.testing.assert_allclose(streamed[["size", "spread", "isolation"]].to_numpy(),
                               whole[["size", "spread", "isolation"]].to_numpy(), rtol=1e-5)
    # rebalance's path: a task per group of fragments (5 here: one fragment each), the candidates
    # (a concept, the where filter) read by each task, the partial sums added in task order
    has = np.arange(4000) % 7 != 0
    ds = lance.write_dataset(pa.table({"v": col, "n": np.arange(4000), "concept": pa.array(label, pa.int32(), mask=~has)}),
                             str(tmp_path / "c.lance"), max_rows_per_file=900)
    monkeypatch.setattr(concepts, "_TASK_ROWS", 500)
    tasks = []
    real_task = concepts.concept_sums_task
    monkeypatch.setattr(concepts, "concept_sums_task", lambda spec, *a: tasks.append(spec[3]) or real_task(spec, *a))
    ranged = concepts.complexity_by_fragment(ds, "v", 6, "n % 5 != 2")
    assert tasks == [[f.fragment_id] for f in ds.get_fragments()] * 2  # two passes
    rows = np.flatnonzero((np.arange(4000) % 5 != 2) & has)
    subset = complexity(x[rows], label[rows], 6)
    assert ranged["size"].tolist() == subset["size"].tolist() == np.bincount(label[rows], minlength=6).tolist()
    np.testing.assert_allclose(ranged[["spread", "isolation", "complexity"]].to_numpy(),
                               subset[["spread", "isolation", "complexity"]].to_numpy(), rtol=1e-5)
    assert not np.allclose(ranged["spread"], whole["spread"], rtol=1e-7, atol=0)  # another set of rows, other values


def _concept_lake(path: Path, sizes: list[int], seed: int = 0) -> Lake:
    """A lake of synthetic pairs in fragments of 40 rows with a 16-d embedding and concepts of the
    given sizes written directly (distances tie in steps of 0.05; rows past the sizes have none),
    and a ``sel`` column for a where filter."""
    import pyarrow as pa

    from lakecurate import columns

    n = sum(sizes) + 9
    lake = Lake.create(path)
    rows = pair_rows(0, n)
    for s in range(0, n, 40):
        lake.append(rows.slice(s, 40))
    tbl = lake.dataset().to_table(columns=[], with_row_address=True)
    rng = np.random.default_rng(seed)
    concept = rng.permutation(np.concatenate([np.repeat(np.arange(len(sizes)), sizes), np.full(9, -1)])).astype(np.int32)
    v = rng.standard_normal((n, 16)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    dist = rng.integers(1, 8, n) * np.float32(0.05)
    for stage, config, new in (
            ("embed", {"family": "syn"}, {"syn_image": pa.FixedSizeListArray.from_arrays(pa.array(v.astype(np.float16).ravel()), 16)}),
            ("concepts", {"embedding": "syn", "k": len(sizes)},
             {"concept": pa.array(concept, mask=concept < 0), "concept_dist": pa.array(dist.astype(np.float32), mask=concept < 0)}),
            ("features", {"f": 1}, {"sel": pa.array(rng.random(n) < 0.8)})):
        columns.declare(lake, [pa.field(c, a.type) for c, a in new.items()], columns.provenance(stage, config, ["synthetic"], lake.version))
        columns.write_changed(lake, tbl, new)
    return lake


@pytest.mark.parametrize("rule", ["far", "random"])
def test_keep_rule_files_candidates_by_concept_and_equals_one_sort_of_them_all(rule: str, tmp_path: Path, monkeypatch):
    """rebalance keeps, per concept, its budget's first candidates by the rule's key, ties to the
    first in scan order: found from the candidates filed by concept (several concepts a partition,
    spilled to files here), equal to one sort of every candidate (the whole-array keep rule)."""
    from lakecurate import stream

    lake = _concept_lake(tmp_path / "lake", [60, 25, 9, 3, 1, 40, 0, 17])
    assert len(lake.dataset().get_fragments()) == 5
    monkeypatch.setattr(stream, "_PARTITIONS", 3)
    monkeypatch.setattr(stream, "_SPILL_KEYS", 11)
    spilled, real_spill = [], stream.Partitioned._spill
    monkeypatch.setattr(stream.Partitioned, "_spill", lambda self: spilled.append(self.held) or real_spill(self))
    rep = lake.rebalance(0.4, rule=rule, where="sel", seed=3, allow_stale=True)
    df = lake.to_pandas(["concept", "concept_dist", "sel", "rebalance_keep"])  # in scan order
    cand = df["concept"].notna() & df["sel"].fillna(False).astype(bool)
    assert rep.rows == cand.sum() and sum(spilled) == rep.rows  # every candidate filed, through files
    c = df.loc[cand, "concept"].to_numpy().astype(int)
    key = -df.loc[cand, "concept_dist"].to_numpy() if rule == "far" else np.random.default_rng(3).random(len(c))
    budget = {r["concept"]: r["budget"] for r in rep.concepts}
    order = np.lexsort((key, c))  # stable: ties stay in scan order
    starts = np.searchsorted(c[order], np.arange(len(budget)))
    want = np.zeros(len(c), bool)
    for concept, b in budget.items():
        want[order[starts[concept]: starts[concept] + b]] = True
    assert df.loc[cand, "rebalance_keep"].tolist() == want.tolist()
    assert not df.loc[~cand, "rebalance_keep"].any() and rep.kept == want.sum() == round(0.4 * rep.rows)
    if rule == "far":  # ties are real: some concept's last kept distance is also a dropped one's
        assert any(set(key[(c == q) & want]) & set(key[(c == q) & ~want]) for q in budget)


@pytest.mark.parametrize("mode", ["random", "curriculum", "interleave"])
def test_sequence_sorts_out_of_core_as_in_memory(mode: str, tmp_path: Path, monkeypatch):
    """sequence keys each chosen row as its fragment is read and sorts the keys out of core: with
    every few records spilled to partition files (and a partition of fragments a few fragments),
    the order equals the in-memory one; curriculum equals one stable sort by score (no score
    last), interleave takes one row of every concept before the next of any, in one concept order."""
    from lakecurate import stream

    base = _concept_lake(tmp_path / "base", [60, 25, 9, 3, 1, 40, 0, 17])
    got = {}
    for spill in (False, True):
        lake = Lake.open(shutil.copytree(base.uri, tmp_path / f"spill{spill}"))
        if spill:
            monkeypatch.setattr(stream, "_SPILL_KEYS", 13)
            monkeypatch.setattr(stream, "_PARTITIONS", 3)
        score = "-concept_dist" if mode == "curriculum" else None
        res = lake.sequence(mode, score=score, where="sel", seed=2, shard_size=10, allow_stale=True)
        got[spill] = lake.to_pandas(["concept", "concept_dist", "sel", "seq_order", "seq_shard"])
        assert res["rows"] == got[spill]["sel"].sum() and res["shards"] == -(-res["rows"] // 10)
    assert got[True]["seq_order"].fillna(-1).tolist() == got[False]["seq_order"].fillna(-1).tolist()
    df = got[True]
    chosen = df["sel"].astype(bool)
    assert sorted(df.loc[chosen, "seq_order"].astype(int)) == list(range(chosen.sum()))
    assert df.loc[~chosen, "seq_order"].isna().all()
    assert (df.loc[chosen, "seq_shard"] == df.loc[chosen, "seq_order"] // 10).all()
    ordered = df[chosen].sort_values("seq_order")
    if mode == "curriculum":  # descending distance, ties in scan order, rows without one last
        d = df.loc[chosen, "concept_dist"].to_numpy()
        want = np.argsort(np.where(np.isnan(d), np.inf, -d), kind="stable")
        assert ordered.index.tolist() == df.index[chosen][want].tolist()
        assert ordered["concept_dist"].isna().sum() > 0
    elif mode == "interleave":
        c = ordered["concept"].fillna(-1).astype(int).to_numpy()
        rank_in = np.array([(c[:i] == c[i]).sum() for i in range(len(c))])
        assert (np.diff(rank_in) >= 0).all()  # round robin: every concept's i-th row before any (i+1)-th
        first_round = c[rank_in == 0].tolist()
        assert len(first_round) == len(set(c)) and all(c[rank_in == r].tolist() == [x for x in first_round if x in set(c[rank_in == r])]
                                                       for r in range(rank_in.max() + 1))
    else:
        again = Lake.open(shutil.copytree(base.uri, tmp_path / "seed3"))
        again.sequence("random", where="sel", seed=3, allow_stale=True)
        assert again.to_pandas(["seq_order"])["seq_order"].fillna(-1).tolist() != df["seq_order"].fillna(-1).tolist()


def test_rebalance_of_a_single_concept(tmp_path: Path):
    """Every row in concept 0 (k = 1): the concepts counted from the largest label are 1, not 0."""
    lake = _concept_lake(tmp_path / "lake", [50])
    rep = lake.rebalance(0.5, allow_stale=True)
    assert rep.k == 1 and rep.rows == 50 and rep.kept == 25
    assert lake.to_pandas(["rebalance_keep"])["rebalance_keep"].sum() == 25


def test_cluster_refuses_rows_not_embedded_yet(sample_lake_embedded: Lake, tmp_path: Path):
    """Rows ingested after the embed got no concept from a cluster run (null, no warning), and
    what was built on it left them out. It is refused before a write, naming them and the embed."""
    lake = Lake.open(shutil.copytree(sample_lake_embedded.uri, tmp_path / "lake"))
    more = one_more_copy(tmp_path / "more", "a photo ingested after the embed", name="late")
    lake.ingest(more, progress=False)
    before = lake.version
    with pytest.raises(LakeError, match=r"1 rows of lake .* have no clip_tinyrandom image embedding yet \(.*late.*\) and every row "
                                        r"gets a concept .*run: lakecurate embed .* --model tiny-random, then cluster again"):
        lake.cluster(2)
    assert lake.version == before and "concept" not in lake.dataset().schema.names
    lake.embed("tiny-random", workers=0, batch_size=8, progress=False)
    lake.cluster(2)
    assert lake.sql("SELECT COUNT(*) AS n FROM pairs WHERE concept IS NULL AND clip_tinyrandom_error IS NULL")["n"][0] == 0

def test_concepts_declared_by_a_killed_run_are_not_used(clustered: Lake, tmp_path: Path, monkeypatch):
    """A `cluster --recompute` killed between declaring its columns and its commit leaves every
    concept null: that was only "incomplete", so rebalance, sequence and export warned and went on
    (interleaving zero concepts). A decision no run finished is refused like a stale one."""
    from lakecurate import concepts as concepts_module

    lake = Lake.open(shutil.copytree(clustered.uri, tmp_path / "lake"))

    def killed(*a, **k):
        raise KeyboardInterrupt("kill -9")
    monkeypatch.setattr(concepts_module, "write_decisions", killed)
    with pytest.raises(KeyboardInterrupt):
        lake.cluster(3, recompute=True)
    monkeypatch.undo()
    assert lake.count("concept IS NOT NULL") == 0
    for call in (lambda: lake.rebalance(0.5), lambda: lake.sequence("interleave"),
                 lambda: lake.export(tmp_path / "out", "parquet")):
        with pytest.raises(LakeError, match=r"concepts \(concept, concept_dist\) is incomplete: concept was declared by a concepts run that read version \d+, .* "
                                            r"no run wrote its values.*re-run it: lakecurate cluster .* -k 3"):
            call()
    assert not (tmp_path / "out").exists()
    lake.cluster(3)  # the same settings again finish it
    lake.rebalance(0.5)
    assert lake.count("concept IS NULL") == lake.count("clip_tinyrandom_image IS NULL")


def test_an_upper_case_column_name_is_checked_like_its_lower_case(clustered: Lake, tmp_path: Path):
    """Lance finds REBALANCE_KEEP as rebalance_keep, but the staleness check compared the words of
    a condition with the schema as written: a stale view got through in upper case, and a
    rebalance over --where KEEP recorded no source, so a new recipe never made it stale."""
    from lakecurate.graph import where_columns

    assert where_columns("REBALANCE_KEEP AND Concept > 1", ["concept", "rebalance_keep", "id"]) == ["concept", "rebalance_keep"]
    lake = Lake.open(shutil.copytree(clustered.uri, tmp_path / "lake"))
    lake.cluster(3, recompute=True)  # rebalance_keep is stale now
    for where in ("rebalance_keep", "REBALANCE_KEEP"):
        with pytest.raises(LakeError, match="stale"):
            lake.sequence("random", where=where)


def test_a_plain_re_run_of_cluster_after_new_rows_keeps_its_k(sample_lake_embedded, tmp_path):
    """The default k grows with the rows: `lakecurate cluster LAKE` again after an ingest was
    refused as "made with another config" (a Python dict in the message, not saying k differs)."""
    import shutil

    from lakecurate import Lake, LakeError

    lake = Lake.open(shutil.copytree(sample_lake_embedded.uri, tmp_path / "lake"))
    first = lake.cluster()
    assert set(first.to_dict()) == {"lake", "embedding", "k", "rows", "concepts", "versions", "seconds"}  # no rebalance fields
    _more_rows(lake, tmp_path)
    again = lake.cluster()
    assert again.k == first.k and lake.count("concept IS NULL AND clip_tinyrandom_image IS NOT NULL") == 0
    with pytest.raises(LakeError, match=rf"other settings \(k {first.k} -> {first.k + 1}\); pass recompute=True"):
        lake.cluster(first.k + 1)


def test_sequence_with_no_decision_orders_only_what_ingest_accepted(tmp_path):
    """With no keep or rebalance_keep yet, sequence ordered every row, ingest errors (no image)
    included, and said "where None"."""
    from lakecurate import Lake
    from tests.conftest import SAMPLE_DATA

    lake = Lake.create(tmp_path / "lake")
    lake.ingest(SAMPLE_DATA, progress=False)
    out = lake.sequence("random", shard_size=5)
    assert out["where"] == out.where == "ingest_status != 'error'"  # a report, read as the dict it was too
    assert out.to_dict() == {"lake": lake.uri, "mode": "random", "rows": out.rows, "shards": -(-out.rows // 5),
                             "shard_size": 5, "where": out.where, "version": lake.version, "seconds": out.seconds}
    assert lake.count("seq_order IS NOT NULL") == out["rows"] == lake.count("ingest_status != 'error'") < lake.count()


def test_rebalance_and_diff_print_only_what_means_something(sample_lake_embedded, tmp_path):
    """rebalance printed concepts with no candidate row (isolation 1.0, a number of nothing); diff
    called a side with no decision "all rows" while it counts only the rows ingest accepted."""
    import re
    import shutil

    from click.testing import CliRunner

    from lakecurate import Lake
    from lakecurate.cli import main

    lake = Lake.open(shutil.copytree(sample_lake_embedded.uri, tmp_path / "lake"))
    first = lake.version
    lake.cluster(4)
    res = CliRunner().invoke(main, ["rebalance", lake.uri, "--where", "key LIKE 'astronaut%'", "--target", "1"])
    assert res.exit_code == 0, res.output
    sizes = [int(m) for m in re.findall(r"^\s*\d+\s+(\d+)\s", res.output, re.M)]
    assert sizes and 0 not in sizes
    m = re.search(r"; (\d+) concepts have no candidate row", res.output)
    assert m and int(m.group(1)) + len(sizes) == 4, res.output
    res = CliRunner().invoke(main, ["diff", lake.uri, str(first), str(first)])
    assert "every row ingest accepted" in res.output and "all rows" not in res.output
    usable = lake.dataset(first).count_rows(filter="ingest_status != 'error'")
    assert f"every row ingest accepted): {usable} rows" in res.output


def test_candidates_inside_one_concept_are_rebalanced_not_all_dropped(lake3: Lake):
    """--where inside one concept of k = 4: the others have no candidate, so the one left had no
    neighbour: isolation and complexity inf, a budget of -9e18, "kept 0 of N", exit 0."""
    counts = lake3.sql("SELECT concept, count(*) AS n FROM pairs WHERE concept IS NOT NULL GROUP BY concept ORDER BY n DESC")
    c, n = int(counts["concept"].iloc[0]), int(counts["n"].iloc[0])
    rep = lake3.rebalance(0.5, where=f"concept = {c}", progress=False)
    assert rep.rows == n and rep.kept == round(0.5 * n) > 0
    row = next(x for x in rep.concepts if x["concept"] == c)
    assert np.isfinite(row["isolation"]) and np.isfinite(row["complexity"])


def test_rebalance_before_the_first_recipe_is_stale_once_one_runs(lake3: Lake, tmp_path: Path):
    """rebalance ran before any recipe (its candidates: every row with a concept); a first curate
    then wrote keep, and status still called rebalance current: the view stayed rebalance_keep,
    export shipped rows the recipe dropped, without a word."""
    from lakecurate import graph

    lake = Lake.open(shutil.copytree(lake3.uri, tmp_path / "fresh"))
    assert "keep" not in lake.dataset().schema.names
    lake.rebalance(0.6, progress=False)
    lake.curate({"name": "strict", "step": [{"filter": "caption_length", "min_words": 6}]}, progress=False)
    dropped = lake.count("rebalance_keep AND NOT keep")
    assert dropped > 0  # rows rebalance kept that the recipe dropped
    st = {s.node.stage: s for s in graph.states(lake, lake.dataset())}
    assert st["rebalance"].state == "stale" and "keep was written at version" in st["rebalance"].reasons[0]
    with pytest.raises(LakeError, match="rebalance .* is stale: keep was written"):
        lake.export(tmp_path / "out", "webdataset")


@pytest.mark.parametrize("score,why", [("seq_order", "the order sequence writes"), ("-phash", "a perceptual hash"),
                                       ("--clip_tinyrandom_score", "one '-' orders descending")])
def test_a_curriculum_refuses_scores_that_are_no_measure(lake3: Lake, score: str, why: str):
    """--score seq_order (the previous order), --score phash (a hash) and --score=--x (read as
    descending) were taken."""
    if score.lstrip("-") == "phash":
        lake3.signals(["image"], progress=False)
    v = lake3.version
    with pytest.raises(LakeError, match=why):
        lake3.sequence("curriculum", score=score, progress=False)
    assert lake3.version == v


def test_cluster_says_when_concepts_got_no_row(tmp_path: Path):
    """k = 5 on 5 identical rows printed sizes [5, 0, 0, 0, 0] without a word."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(5):
        shutil.copy(SAMPLE_DATA / "coffee.jpg", src / f"c{i}.jpg")
        (src / f"c{i}.txt").write_text("a cup of coffee")
    lake = Lake.create(tmp_path / "lake")
    lake.ingest(src, progress=False)
    lake.embed("tiny-random", workers=0, progress=False)
    res = CliRunner().invoke(main, ["--no-progress", "cluster", lake.uri, "-k", "5"])
    assert res.exit_code == 0 and "warning: 4 of the 5 concepts got no row" in res.output, res.output


def test_cluster_carries_k_seed_and_embedding_over_and_recompute_takes_the_defaults(sample_lake_embedded, tmp_path):
    """-k 1 was accepted though the help says 2..4096; after -k 2, --recompute kept k = 2, not the
    default; after --seed 7 and an ingest, a plain re-run was refused "(seed 7 -> 0)" though k is
    carried over so that such a re-run is not."""
    from lakecurate.concepts import default_k

    lake = Lake.open(shutil.copytree(sample_lake_embedded.uri, tmp_path / "lake"))
    res = CliRunner().invoke(main, ["cluster", lake.uri, "-k", "1"])
    assert res.exit_code == 2 and "'-k': 1 is not in the range 2<=x" in res.output, res.output
    lake.cluster(2, seed=7)
    _more_rows(lake, tmp_path)
    res = CliRunner().invoke(main, ["cluster", lake.uri])
    assert res.exit_code == 0, res.output
    config = field_provenance(lake.dataset().schema.field("concept"))["config"]
    assert (config["k"], config["seed"], config["embedding"]) == (2, 7, "clip_tinyrandom")
    again = lake.cluster(recompute=True)  # the defaults, not the lake's settings
    config = field_provenance(lake.dataset().schema.field("concept"))["config"]
    assert again.k == config["k"] == default_k(again.rows) > 2 and config["seed"] == 0


def _more_rows(lake, tmp_path: Path) -> None:
    """The sample pairs ingested again under other captions (new rows), and embedded."""
    more = tmp_path / "more"
    shutil.copytree(SAMPLE_DATA, more)
    for p in more.glob("*.txt"):  # other captions: new rows
        p.write_text(p.read_text() + " (again)")
    lake.ingest(more, progress=False)
    lake.embed("tiny-random", workers=0, batch_size=8, progress=False)


def test_a_where_that_reads_the_stage_s_own_output_is_refused(lake3: Lake):
    """`rebalance --where rebalance_keep --target 0.5` run three times kept 3, 2, then 1 of 6 rows
    (each run chose among the last one's), status calling it current; `sequence --where "seq_order <
    3"` read its own order likewise. Refused before anything is written, as curate refuses a recipe
    reading keep."""
    v = lake3.version
    for call, where in ((lambda w: lake3.rebalance(0.5, where=w), "rebalance_keep"),
                        (lambda w: lake3.rebalance(0.5, where=w), "repeats > 1 AND concept = 1"),
                        (lambda w: lake3.sequence("random", where=w), "seq_order < 3")):
        with pytest.raises(LakeError, match=r"^where .* reads .*, which (rebalance|sequence) writes: each run would "
                                            r"choose among the rows the last one chose"):
            call(where)
    assert lake3.version == v
    lake3.sequence("random", where="rebalance_keep")  # (another stage's decision: its input)



def test_a_pruned_concept_is_not_up_weighted():
    """`--target 8 --temperature 0.2` on the demo lake: a concept of 6 candidates kept 5 and got
    sample_weight 1.049 (its uncapped budget, 6.3, ignoring the floor and caps that gave it 5). Only
    a concept that keeps every candidate (its budget past its size) is seen more often."""
    from lakecurate.concepts import concept_weights

    assert concept_weights(np.array([6, 2, 20, 0]), np.array([5, 2, 1, 0]), np.array([6.3, 3.0, 0.5, 0.0])) == \
        [1.0, 1.5, 1.0, 1.0]


NOTHING = {"name": "nothing", "step": [{"filter": "caption_missing"},
                               {"filter": "caption_length", "min_words": 1000, "max_words": 2000}]}
EMPTY_VIEW = (r"curate kept 0 of \d+ rows of lake .* \(recipe .*, tag nothing-[0-9a-f]+-v\d+\): the curated view is "
              r"empty, so {} has no rows to use; loosen the recipe, see: lakecurate report ")


def test_a_recipe_that_keeps_no_row_is_named_downstream_not_a_rebalance_loop(lake3: Lake, sample_lake_embedded: Lake,
                                                                            tmp_path: Path):
    """After a curate that kept nothing, sequence and export said "rebalance is stale; re-run it:
    lakecurate rebalance ...", which said "no candidate rows; check --where, or run cluster", and
    status listed rebalance stale (its fix that command) for ever. Each names the empty view."""
    lake = lake3  # clustered, rebalanced, sequenced
    assert lake.status()["empty_view"] == ""
    lake.curate(NOTHING, progress=False)
    with pytest.raises(LakeError, match=EMPTY_VIEW.format("sequence")):
        lake.sequence("interleave", progress=False)
    with pytest.raises(LakeError, match=EMPTY_VIEW.format("export")):
        lake.export(tmp_path / "out", "webdataset")
    with pytest.raises(LakeError, match=EMPTY_VIEW.format("rebalance")):  # (the fix status gave)
        lake.rebalance(0.6, max_repeats=3, temperature=0.2, progress=False)
    status = lake.status()
    after = [s for s in status["stages"] if s["stage"] in ("rebalance", "sequence")]
    assert [s["state"] for s in after] == ["stale", "behind"]
    assert all("the curated view is empty" in s["fix"] and " rebalance " not in s["fix"] for s in after)
    assert any("the curated view is empty" in n for n in status["view_notes"])
    # one field a program reads (it had to find the words in a stage's fix or a note)
    assert status["empty_view"].startswith("curate kept 0 of ") and status["empty"] == ""  # (the lake has rows)
    # an export of a selection of its own (not the view): told why the stale order cannot be made
    # current, with --allow-stale to use it (it was told the empty view left "export no rows to use")
    with pytest.raises(LakeError, match=r"no run makes it current: curate kept 0 of .*; or pass --allow-stale"):
        lake.export(tmp_path / "mine", "parquet", where="NOT keep")
    assert lake.export(tmp_path / "mine", "parquet", where="NOT keep", allow_stale=True).rows > 0
    page = Path(lake.report(tmp_path / "r.html", progress=False).path).read_text()
    assert "the curated view is empty" in page and "re-run: curate kept" not in page  # (no re-run helps)
    # a lake never rebalanced: rebalance names the empty view rather than --where or cluster
    fresh = Lake.open(shutil.copytree(sample_lake_embedded.uri, tmp_path / "fresh"))
    fresh.cluster(4)
    fresh.curate(NOTHING, progress=False)
    with pytest.raises(LakeError, match=EMPTY_VIEW.format("rebalance")):
        fresh.rebalance(0.5, progress=False)
    with pytest.raises(LakeError, match=EMPTY_VIEW.format("sequence")):
        fresh.sequence("random", progress=False)


def _lake_of(folder: Path, photos: tuple[str, ...], tmp_path: Path) -> Lake:
    """A lake of ``photos`` from sample_data (none: an empty folder ingested), embedded."""
    folder.mkdir(parents=True)
    for name in photos:
        for ext in (".jpg", ".txt"):
            shutil.copy(SAMPLE_DATA / f"{name}{ext}", folder)
    lake = Lake.create(tmp_path / f"lake_{folder.name}")
    lake.ingest(folder, progress=False)
    lake.embed("tiny-random", workers=0, batch_size=8, progress=False)
    return lake


def test_cluster_and_rebalance_refuse_a_lake_without_rows(tmp_path: Path):
    """An empty folder ingested: cluster said "no rows with an embedding; run: lakecurate embed"
    (embed had run: the advice looped). Both say the lake has no rows, before any write."""
    lake = _lake_of(tmp_path / "empty", (), tmp_path)
    before = lake.version
    for call in (lambda: lake.cluster(), lambda: lake.cluster(3), lambda: lake.rebalance(0.5, progress=False)):
        with pytest.raises(LakeError, match=r"lake '.*' has no rows; ingest some: lakecurate ingest .* SOURCE$"):
            call()
    assert lake.version == before and "concept" not in lake.dataset().schema.names


def test_cluster_of_one_row_never_advises_k_up_to_1(tmp_path: Path):
    """On a 1-row lake -k 50 said "choose -k up to 1", and -k 1 is refused (2 <= k)."""
    lake = _lake_of(tmp_path / "one", ("astronaut",), tmp_path)
    with pytest.raises(LakeError, match=r"^k 50 asks .* embedded rows \(1\); k needs at least 2 embedded rows: leave "
                                        r"k out") as err:
        lake.cluster(50)
    assert "up to 1" not in str(err.value)
    assert lake.cluster().k == 1  # (the advice works)


def test_an_export_of_a_past_version_whose_recipe_kept_nothing_names_it(sample_lake_embedded: Lake, tmp_path: Path):
    """At the latest version an empty view is named ("curate kept 0 of N rows ... (recipe, tag)");
    through the recipe's tag the same export said only "no rows to export ... with --where 'keep'"."""
    lake = Lake.open(shutil.copytree(sample_lake_embedded.uri, tmp_path / "lake"))
    tag = lake.curate(NOTHING, progress=False).tag
    lake.curate({"name": "loose", "step": [{"filter": "ingest_error"}]}, progress=False)
    with pytest.raises(LakeError, match=EMPTY_VIEW.format("export")) as err:
        lake.export(tmp_path / "out", "parquet", version=tag)
    assert f"tag {tag}" in str(err.value) and not (tmp_path / "out").exists()
    with pytest.raises(LakeError, match="no rows to export .* with where"):  # a selection of the caller's own
        lake.export(tmp_path / "out", "parquet", version=tag, where="keep AND id = 'none'")
    assert lake.export(tmp_path / "out", "parquet").rows > 0
