"""--engine ray: the same columns as the local engine, on a local Ray with 2 CPUs."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from lakecurate import Lake, LakeError, columns

from .conftest import SAMPLE_DATA, noisy_eval_set, pair_rows
from .test_features import caption_chars, word_stats

if os.environ.get("LAKECURATE_REQUIRE_RAY"):
    import ray  # CI: a missing Ray is a failure, not a skip
else:
    ray = pytest.importorskip("ray", reason="install lakecurate[ray] for the Ray engine tests")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    os.environ["LAKECURATE_RAY_CPUS"] = "2"
    yield
    if ray.is_initialized():
        ray.shutdown()


def test_feature_on_ray_equals_local(tmp_path: Path):
    lake = Lake.create(tmp_path / "lake")
    for f in range(5):
        lake.append(pair_rows(f * 40, 40))
    lake.dataset().delete("id = 'p0000041'")
    for engine in ("local", "ray"):
        rep = lake.add_feature(f"chars_{engine}", caption_chars, engine=engine, progress=False)
        assert (rep.fragments, rep.rows) == (5, 199)
        lake.add_feature(f"w_{engine}", word_stats, inputs=["caption"], params={"scale": 0.25}, engine=engine,
                         batch_size=16, progress=False)
    tbl = lake.dataset().to_table()
    for a, b in (("chars_local", "chars_ray"), ("w_local_n", "w_ray_n"), ("w_local_scaled", "w_ray_scaled")):
        assert tbl.column(a).equals(tbl.column(b)), a
    lake.append(pair_rows(1000, 9))  # rows added later: the next ray run fills only them
    rep = lake.add_feature("chars_ray", caption_chars, engine="ray", progress=False)
    assert (rep.fragments, rep.rows) == (1, 9)
    assert not columns.fragments_to_fill(lake.dataset(), "chars_ray")


def test_failure_in_a_ray_task_is_the_same_clear_error(tmp_path: Path):
    lake = Lake.create(tmp_path / "lake")
    lake.append(pair_rows(0, 10))
    with pytest.raises(LakeError, match="fragment 0 rows 0-9: ZeroDivisionError"):  # (typed: not tried here first)
        lake.add_feature("bad", lambda b: [1 / 0] * b.num_rows, inputs=["caption"], type="float32", engine="ray",
                         progress=False)


def test_a_worker_that_dies_is_a_clear_error(tmp_path: Path):
    lake = Lake.create(tmp_path / "lake")
    lake.append(pair_rows(0, 10))
    with pytest.raises(LakeError, match="the ray engine failed: .*run the command again"):
        lake.add_feature("dies", lambda b: os._exit(3), inputs=["caption"], type="int32", engine="ray", progress=False)


def test_ray_s_word_of_a_dead_worker_goes_to_stderr(tmp_path: Path, capfd):
    """Ray's driver printed "(raylet) A worker died or was killed ..." on stdout, before the JSON
    of `embed --engine ray --json`: what Ray's driver prints goes to stderr."""
    import time

    from ray._private import worker

    lake = Lake.create(tmp_path / "lake")
    lake.append(pair_rows(0, 10))
    for dedup in (worker.stdout_deduplicator, worker.stderr_deduplicator):
        dedup.recent.clear()  # (an earlier test's dead worker: Ray would hold this one back as a repeat)
    with pytest.raises(LakeError, match="the ray engine failed"):
        lake.add_feature("dies", lambda b: os._exit(3), inputs=["caption"], type="int32", engine="ray", progress=False)
    out = err = ""
    for _ in range(300):  # Ray's word comes from a thread of its own, when the raylet has published it
        o, e = capfd.readouterr()
        out, err = out + o, err + e
        if "worker died" in out + err:
            break
        time.sleep(0.1)
    assert "worker died" in err and "worker died" not in out, (out, err)


def test_a_dead_worker_stops_the_others_before_the_columns_are_undeclared(tmp_path: Path):
    """One actor died before any fragment was committed: the driver undeclared the new column while
    the other actor still computed its fragment, whose commit then failed ("... was dropped by
    another writer (a restore ...)", an unhandled error on stderr). The other actors are now
    killed, and dead, before the rollback."""
    lake = Lake.create(tmp_path / "lake")
    lake.append(pair_rows(0, 10))
    lake.append(pair_rows(10, 10))  # two fragments: one for each of the two actors
    pid_file, go = tmp_path / "survivor.pid", tmp_path / "go"

    def udf(batch):
        import os as os_
        import time as time_

        if batch["id"][0].as_py() == "p0000000":  # the dying actor: once the other is computing
            while not pid_file.exists():
                time_.sleep(0.05)
            os_._exit(3)
        pid_file.write_text(str(os_.getpid()))  # the surviving one: computing until the test says go
        while not go.exists():
            time_.sleep(0.05)
        return [0] * batch.num_rows

    try:
        with pytest.raises(LakeError, match="the ray engine failed"):
            lake.add_feature("slow", udf, inputs=["id"], type="int32", engine="ray", progress=False)
        pid = int(pid_file.read_text())
        status = Path(f"/proc/{pid}/status")
        alive = status.exists() and "State:\tZ" not in status.read_text()  # (a zombie has exited)
        assert not alive, "the surviving actor was still computing when the run gave up"
        assert "slow" not in lake.dataset().schema.names  # (a first run that committed nothing leaves no column)
    finally:
        go.touch()


def test_embed_on_ray_equals_local(tmp_path: Path):
    lake = Lake.create(tmp_path / "lake")
    lake.ingest(SAMPLE_DATA, progress=False)
    lake.embed("tiny-random", name="loc", workers=0, progress=False)
    rep = lake.embed("tiny-random", name="ray", engine="ray", progress=False)
    assert rep.fragments_done == len(lake.dataset().get_fragments()) and rep.rows_embedded == 28
    df = lake.to_pandas(["loc_image", "ray_image", "loc_text", "ray_text", "loc_score", "ray_score", "loc_error", "ray_error"])
    assert df["loc_error"].fillna("").tolist() == df["ray_error"].fillna("").tolist()
    for kind in ("image", "text"):
        ok = df[f"loc_{kind}"].notna()
        assert ok.sum() > 20 and df[f"ray_{kind}"].notna().tolist() == ok.tolist()
        a = np.stack(df.loc[ok, f"loc_{kind}"]).astype(np.float32)
        b = np.stack(df.loc[ok, f"ray_{kind}"]).astype(np.float32)
        assert np.abs(a - b).max() < 2e-3  # float16 storage; the same model on the same rows
    assert np.allclose(df["loc_score"].dropna(), df["ray_score"].dropna(), atol=2e-3)


def test_signals_on_ray_equal_local(tmp_path: Path):
    """Image signals, caption signals and redaction: the same columns from Ray actors as locally."""
    from lakecurate import signals

    lakes = {}
    for engine in ("local", "ray"):
        lake = lakes[engine] = Lake.create(tmp_path / engine)
        lake.ingest(SAMPLE_DATA, progress=False)
        lake.append(pair_rows(0, 20, image=(SAMPLE_DATA / "coffee.jpg").read_bytes()))
        assert signals.compute_image_signals(lake, engine=engine, progress=False).computed == 48
        assert signals.compute_caption_signals(lake, engine=engine, progress=False).computed == 48
        assert signals.compute_redacted(lake, engine=engine).computed == 48
    names = [f.name for f in [*signals.IMAGE_FIELDS, *signals.CAPTION_FIELDS]] + ["caption_redacted"]
    local, on_ray = (lakes[e].dataset().to_table(columns=["id", *names]).sort_by("id") for e in ("local", "ray"))
    assert local.column("phash").null_count < 10 and local.column("cap_words").null_count < 10
    for name in names:
        assert local.column(name).equals(on_ray.column(name)), name
    assert not columns.fragments_to_fill(lakes["ray"].dataset(), "phash")
    assert signals.compute_image_signals(lakes["ray"], engine="ray", progress=False).computed == 0  # a re-run: nothing to do


def test_cli_signals_takes_the_engine(tmp_path: Path):
    """`lakecurate signals --engine ray` (the command had no --engine, though the API took it): the
    same values as local."""
    import json

    from click.testing import CliRunner

    from lakecurate.cli import main

    tables = {}
    for engine in ("local", "ray"):
        lake = Lake.create(tmp_path / engine)
        lake.append(pair_rows(0, 20))
        out = CliRunner().invoke(main, ["signals", lake.uri, "--no-image", "--redact", "--engine", engine, "--json"])
        assert out.exit_code == 0, out.output
        assert json.loads(out.stdout)["caption"] == 20
        names = [n for n in lake.dataset().schema.names if n.startswith("cap_") or n == "caption_redacted"]
        tables[engine] = lake.dataset().to_table(columns=["id", *names]).sort_by("id")
    assert tables["local"].num_columns > 3 and tables["local"].equals(tables["ray"])


def test_cli_udf_from_a_file_runs_on_ray(tmp_path: Path):
    """A function loaded from a file path is not importable by workers: it is shipped by value."""
    from click.testing import CliRunner

    from lakecurate.cli import main

    lake = Lake.create(tmp_path / "lake")
    lake.append(pair_rows(0, 30))
    udf = tmp_path / "elsewhere" / "feats.py"
    udf.parent.mkdir()
    udf.write_text("def words(batch):\n    return [len((c or '').split()) for c in batch['caption'].to_pylist()]\n")
    out = CliRunner().invoke(main, ["feature", "add", lake.uri, "words", "--udf", f"{udf}:words", "--input", "caption",
                                    "--type", "int32", "--engine", "ray"])
    assert out.exit_code == 0, out.output
    tbl = lake.dataset().to_table(columns=["caption", "words"])
    assert tbl.column("words").to_pylist() == [len((c or "").split()) for c in tbl.column("caption").to_pylist()]


def test_recaption_on_ray_equals_local(tmp_path: Path):
    lake = Lake.create(tmp_path / "lake")
    lake.ingest(SAMPLE_DATA, progress=False)
    lake.recaption("tiny-random-coca", name="loc", workers=0, progress=False)
    rep = lake.recaption("tiny-random-coca", name="ray", engine="ray", progress=False)
    assert rep.rows == lake.count() and rep.errors == 2
    df = lake.to_pandas(["caption_loc", "caption_ray", "caption_loc_error", "caption_ray_error"])
    assert df["caption_loc"].notna().sum() == lake.count() - 2
    assert df["caption_loc"].fillna("").tolist() == df["caption_ray"].fillna("").tolist()
    assert df["caption_loc_error"].fillna("").tolist() == df["caption_ray_error"].fillna("").tolist()
    lake.append(pair_rows(0, 3, image=(SAMPLE_DATA / "coffee.jpg").read_bytes()))
    assert lake.recaption("tiny-random-coca", name="ray", engine="ray", progress=False).rows == 3


def _two_fragments_embedded(path: Path, extra: int) -> Lake:
    """The sample data and ``extra`` synthetic rows (a second fragment), embedded by tiny-random."""
    lake = Lake.create(path)
    lake.ingest(SAMPLE_DATA, progress=False)
    lake.append(pair_rows(0, extra))
    lake.embed("tiny-random", workers=0, batch_size=8, progress=False)
    return lake


def test_cluster_assignment_on_ray_equals_local(tmp_path: Path):
    """The fit runs on the driver; each fragment's rows are assigned by a Ray task: the same
    concepts and distances as the local engine, rows without a vector left without a concept."""
    got = {}
    for engine in ("local", "ray"):
        lake = _two_fragments_embedded(tmp_path / engine, 30)
        lake.append(pair_rows(100, 5, image=b"not an image"))  # a third, whose images give no vector: no concept
        lake.embed("tiny-random", workers=0, batch_size=8, progress=False)
        rep = lake.cluster(k=3, engine=engine)
        assert rep.rows == lake.count() - 5 - lake.count("ingest_status = 'error'")
        got[engine] = lake.dataset().to_table(columns=["id", "concept", "concept_dist"]).sort_by("id").to_pydict()
    assert got["local"]["concept"] == got["ray"]["concept"]
    assert np.allclose(np.array(got["local"]["concept_dist"], float), np.array(got["ray"]["concept_dist"], float),
                       equal_nan=True)
    assert sum(c is None for c in got["ray"]["concept"]) >= 5
    with pytest.raises(LakeError, match="engine"):
        Lake.open(tmp_path / "ray").cluster(k=3, engine="dask")


def test_export_shards_on_ray_are_the_local_bytes(tmp_path: Path):
    import hashlib

    lake = Lake.create(tmp_path / "lake")
    lake.ingest(SAMPLE_DATA, progress=False)
    lake.append(pair_rows(0, 20))
    digests = {}
    for engine in ("local", "ray"):
        rep = lake.export(tmp_path / engine, "webdataset", shard_size=7, engine=engine)
        assert rep.shards == -(-rep.samples // 7) > 3
        digests[engine] = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (tmp_path / engine).glob("*.tar")}
    assert digests["local"] == digests["ray"] and len(digests["ray"]) == rep.shards
    with pytest.raises(LakeError, match="^engine ray writes WebDataset"):
        lake.export(tmp_path / "p.parquet", "parquet", engine="ray")


def test_semantic_join_on_ray_equals_local(tmp_path: Path, monkeypatch):
    """Rows assigned to their clusters by a Ray task per range of rows, and each group of clusters
    joined by a Ray task (vectors from a matrix, and from a Lance column read by the task itself,
    a subset of its rows): the local engine's pairs, exactly."""
    import lance
    import pyarrow as pa

    from lakecurate import neardup
    from lakecurate.columns import LanceVectors
    from lakecurate.neardup import semantic_pairs

    from lakecurate import engines

    monkeypatch.setattr(neardup, "_RANGE_ROWS", 700)  # 5 assignment tasks, finishing in any order
    tasks = []
    real = engines.ray_task_map

    def spy(fn, calls, **kw):
        calls = list(calls)
        ordered = fn is engines._numbered  # engines.ordered_map's tasks: (number, function, *args)
        tasks.append(((calls[0][1] if ordered else fn).__name__, len(calls)))
        return real(fn, calls, **kw)

    monkeypatch.setattr(engines, "ray_task_map", spy)

    rng = np.random.default_rng(1)
    x = rng.standard_normal((3000, 32)).astype(np.float32)
    x[1500:1600] = x[:100] + 0.05 * rng.standard_normal((100, 32)).astype(np.float32)  # near copies
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    local = semantic_pairs(x, 0.9, n_clusters=12, spill_dir=str(tmp_path))
    assert len(local[0]) >= 100
    on_ray = semantic_pairs(x, 0.9, n_clusters=12, spill_dir=str(tmp_path), engine="ray")
    assert all(np.array_equal(a, b) for a, b in zip(local, on_ray))
    assert tasks[0] == ("assign_range_task", 5) and tasks[1][0] == "join_group_task"
    h = rng.integers(0, 2**63, 3000, dtype=np.int64).astype(np.uint64)
    h[1500:1550] = h[:50] ^ np.uint64(1)  # half the copies with near hashes: a filter in the join tasks
    near = neardup.HashFilter([(h, None, 4, 0.9)])
    local = semantic_pairs(x, 0.9, n_clusters=12, per_row=3, near=near)
    on_ray = semantic_pairs(x, 0.9, n_clusters=12, per_row=3, near=near, engine="ray")
    assert set(zip(local[0].tolist(), local[1].tolist())) == {(r, r + 1500) for r in range(50)}
    assert all(np.array_equal(a, b) for a, b in zip(local, on_ray))
    ds = lance.write_dataset(pa.table({"v": pa.FixedSizeListArray.from_arrays(pa.array(x.astype(np.float16).ravel()), 32)}),
                             str(tmp_path / "v.lance"), max_rows_per_file=1000)
    rows = np.flatnonzero(np.arange(3000) % 7 != 3)  # a subset: positions map to dataset rows
    src = LanceVectors(ds, "v", rows)
    fresh = np.zeros(len(rows), bool)
    fresh[len(rows) // 2:] = True  # incremental: pairs with a new row only
    local = semantic_pairs(src, 0.9, n_clusters=12, new=fresh)
    on_ray = semantic_pairs(LanceVectors(ds, "v", rows), 0.9, n_clusters=12, new=fresh, engine="ray")
    assert len(local[0]) >= 60 and all(np.array_equal(a, b) for a, b in zip(local, on_ray))
    x[2000:2300] = x[7] + 0.01 * rng.standard_normal((300, 32)).astype(np.float32)  # one image posted 300 times
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    local = semantic_pairs(x, 0.9, n_clusters=12, span=0.9)  # a spanning forest: it depends on the groups' order
    on_ray = semantic_pairs(x, 0.9, n_clusters=12, span=0.9, engine="ray")
    assert 300 <= len(local[0]) < 600 and all(np.array_equal(a, b) for a, b in zip(local, on_ray))


def test_dedup_on_ray_equals_local(tmp_path: Path):
    got = {}
    for engine in ("local", "ray"):
        lake = Lake.create(tmp_path / engine)
        lake.ingest(SAMPLE_DATA, progress=False)
        lake.embed("tiny-random", workers=0, batch_size=8, progress=False)
        lake.dedup(["exact", "phash", "semantic"], semantic_threshold=0.9, engine=engine, progress=False)
        got[engine] = lake.dataset().to_table(columns=["id", "dup_semantic_group", "dup_phash_group", "dup_keep",
                                                       "dup_reason"]).sort_by("id").to_pydict()
    assert got["local"] == got["ray"]
    assert any(g is not None for g in got["ray"]["dup_semantic_group"])


def _actors_started(monkeypatch) -> list[str]:
    """The names of the stages whose Ray actors start from here on (appended as they start)."""
    from lakecurate import engines

    names: list[str] = []

    class Spy(engines.RayActors):
        def __init__(self, cls, init, *a, **kw):
            names.append(init[0].name)
            super().__init__(cls, init, *a, **kw)

    monkeypatch.setattr(engines, "RayActors", Spy)
    return names


def test_curate_and_rebalance_on_ray_equal_local(tmp_path: Path, monkeypatch):
    """curate --engine ray has the signals and dedup its recipe needs computed on Ray (the stages'
    own Ray engines) and decides a fragment a task (here: each task's rows capped at 10, so one
    fragment a task); rebalance --engine ray reads and sums the candidates' vectors per concept in
    a Ray task per group of fragments (one fragment each here). Both decide exactly as the local
    engine does."""
    from lakecurate import concepts, curate, engines

    monkeypatch.setattr(concepts, "_TASK_ROWS", 7)
    monkeypatch.setattr(curate, "_TASK_ROWS", 10)
    actors, tasks = _actors_started(monkeypatch), []
    real_tasks = engines.ray_task_map

    def task_spy(fn, calls, **kw):
        calls = list(calls)
        tasks.extend(c[1].__name__ for c in calls if fn is engines._numbered)
        tasks.extend(fn.__name__ for c in calls if fn is curate.judge_fragments_task)
        return real_tasks(fn, calls, **kw)

    monkeypatch.setattr(engines, "ray_task_map", task_spy)
    got = {}
    for engine in ("local", "ray"):
        lake = _two_fragments_embedded(tmp_path / engine, 12)
        rep = lake.curate("basic", engine=engine)
        assert {"caption signals", "image signals", "dedup"} <= set(rep.computed)
        lake.cluster(k=3)
        reb = lake.rebalance(0.6, engine=engine)
        got[engine] = (lake.dataset().to_table(columns=["id", "keep", "drop_reason", "dup_keep", "phash", "cap_words",
                                                        "rebalance_keep", "sample_weight", "repeats"]).sort_by("id").to_pydict(),
                       reb.concepts, reb.kept)
        if engine == "local":
            assert not actors and not tasks
    assert got["local"] == got["ray"]
    assert sum(filter(None, got["ray"][0]["keep"])) > 5 and got["ray"][2] > 0
    assert {"signals-caption", "signals-image"} <= set(actors)
    assert tasks.count("concept_sums_task") == 2 * 2  # two passes, a task per fragment (of 12 rows: over 7)
    assert tasks.count("judge_fragments_task") == len(Lake.open(tmp_path / "ray").dataset().get_fragments()) == 2
    with pytest.raises(LakeError, match="engine"):
        Lake.open(tmp_path / "ray").rebalance(0.5, engine="dask")
    with pytest.raises(LakeError, match="engine"):
        Lake.open(tmp_path / "ray").curate("basic", engine="dask")


def test_curate_fitted_steps_on_ray_equal_local(tmp_path: Path, monkeypatch):
    """A recipe whose steps compare rows with all others (alignment's percentile, caption template
    groups across fragments) and runs a sql condition decides the same in Ray tasks, one fragment a
    task, as in one process."""
    from lakecurate import curate, engines

    from .test_curate import BY_FRAGMENT, reasons_of, varied_pairs

    monkeypatch.setattr(curate, "_TASK_ROWS", 1)
    tasks, real = [], engines.ray_task_map
    monkeypatch.setattr(engines, "ray_task_map", lambda fn, calls, **kw: real(fn, [c for c in calls if tasks.append(fn.__name__) or True], **kw))
    got = {}
    for engine in ("local", "ray"):
        lake = Lake.create(tmp_path / engine)
        for start, n in ((0, 30), (30, 45), (75, 20), (95, 30)):
            lake.append(varied_pairs(start, n))
        lake.embed("tiny-random", workers=0, batch_size=16, progress=False)
        rep = lake.curate(BY_FRAGMENT, progress=False, engine=engine)
        got[engine] = (reasons_of(lake, rep.tag), rep.dropped, rep.kept, rep.rows)
    assert got["local"] == got["ray"] and got["ray"][3] == 125
    dropped = dict(got["ray"][1])
    assert dropped.pop("ingest_error") == 0  # (run first: the recipe does not list it; these pairs have images)
    assert tasks.count("judge_fragments_task") == 4 and all(v > 0 for v in dropped.values())


def test_evaluate_embeds_its_eval_set_on_ray(sample_lake_embedded: Lake, tmp_path: Path, monkeypatch):
    """evaluate --engine ray ingests (a Ray task) and embeds (Ray actors) the evaluation set; the
    cached set holds the local engine's rows and vectors (to float noise), and the proxies train here."""
    import shutil

    from lakecurate import engines

    ran = _actors_started(monkeypatch)
    real_tasks = engines.ray_task_map
    monkeypatch.setattr(engines, "ray_task_map", lambda fn, calls, **kw: ran.append(fn.__name__) or real_tasks(fn, calls, **kw))
    ev = noisy_eval_set(tmp_path / "eval")
    got = {}
    for engine in ("local", "ray"):
        lake = Lake.open(shutil.copytree(sample_lake_embedded.uri, tmp_path / engine))
        res = lake.evaluate("ingest_status = 'ok'", eval_set=ev, baseline="all", seeds=1, steps=4, record=False,
                            progress=False, engine=engine)
        assert (res.eval_images, res.eval_captions) == (6, 6) and bool(ran) == (engine == "ray")
        (side,) = (tmp_path / engine / "eval_sets").iterdir()
        got[engine] = Lake.open(side).dataset().to_table(columns=["id", "clip_tinyrandom_image"]).sort_by("id").to_pydict()
    assert got["local"]["id"] == got["ray"]["id"]
    a, b = (np.array(got[e]["clip_tinyrandom_image"], np.float32) for e in ("local", "ray"))
    assert np.abs(a - b).max() < 2e-3
    assert "embed" in ran and "_ingest_part" in ran


def test_minhash_on_ray_equals_local(tmp_path: Path, monkeypatch):
    """dedup's minhash with engine="ray": each range of captions is read (by the task, from the
    Lance column) and signed by a task, each partition of band buckets paired and verified by a
    task: the pairs of the local engine on the caption list, exactly."""
    import lance
    import pyarrow as pa

    from lakecurate import engines, neardup
    from lakecurate.columns import LanceTexts
    from lakecurate.neardup import caption_pairs

    rng = np.random.default_rng(3)
    words = "harbor violin meadow glacier lantern orchard tram canyon parrot quilt saddle bakery comet dune".split()
    caps = [" ".join(rng.choice(words, 6)) for _ in range(1500)]
    caps += [f"Stock photo of {' '.join(rng.choice(words, 2))}, royalty free" for _ in range(400)]
    caps += [c + " today" for c in caps[:200]] + [None, "", "!!"] * 10
    ds = lance.write_dataset(pa.table({"caption": caps}), str(tmp_path / "c.lance"), max_rows_per_file=700)
    want = caption_pairs(caps, 0.35)
    assert len(want[0]) > 300
    monkeypatch.setattr(neardup, "_SIGN_ROWS", 500)
    monkeypatch.setattr(neardup, "_PART_ENTRIES", 40_000)  # 5 partitions, spilled to files
    tasks = []
    real = engines.ray_task_map

    def spy(fn, calls, **kw):
        calls = list(calls)
        tasks.append((calls[0][1].__name__, len(calls)))  # engines.ordered_map's tasks: (number, function, *args)
        return real(fn, calls, **kw)

    monkeypatch.setattr(engines, "ray_task_map", spy)
    got = caption_pairs(LanceTexts(ds, "caption"), 0.35, engine="ray")
    assert all(np.array_equal(a, b) for a, b in zip(got, want))
    assert tasks == [("sign_range_task", 5), ("band_pairs_task", 5)]


def test_ingest_on_ray_of_a_relative_source_reads_the_driver_s_folder(tmp_path: Path, monkeypatch):
    """A worker's working directory is not the driver's: a relative SOURCE and --image-dir are the
    driver's paths (they were resolved in each worker's folder: every pair file_missing, or none)."""
    import shutil

    shutil.copytree(SAMPLE_DATA, tmp_path / "pairs")
    (tmp_path / "m.csv").write_text("image,caption\ncamera.jpg,a camera\n")
    warm = Lake.create(tmp_path / "warm")
    warm.append(pair_rows(0, 4))
    warm.add_feature("c", caption_chars, engine="ray", progress=False)  # workers started in another folder
    monkeypatch.chdir(tmp_path)
    local = Lake.create(tmp_path / "local")
    want = local.ingest("pairs", progress=False)
    lake = Lake.create(tmp_path / "lake")
    rep = lake.ingest("pairs", engine="ray", progress=False)
    assert (rep.written, dict(rep.status)) == (want.written, dict(want.status))
    rep = lake.ingest("m.csv", image_dir="pairs", engine="ray", progress=False)
    assert rep.status == {"ok": 1}, rep.to_dict()


def test_bad_ray_settings_are_refused_before_anything_is_written(tmp_path: Path, monkeypatch):
    """LAKECURATE_RAY_CPUS=abc or -1 and RAY_ADDRESS=nonsense were tracebacks (from int(), from
    Ray); LAKECURATE_RAY_CPUS=0 and an address nothing listens on hung for ever."""
    from lakecurate import engines

    lake = Lake.create(tmp_path / "lake")
    lake.append(pair_rows(0, 10))
    version = lake.version
    for var, value, says in (("LAKECURATE_RAY_CPUS", "abc", "whole number"), ("LAKECURATE_RAY_CPUS", "0", "1 or more"),
                             ("LAKECURATE_RAY_CPUS", "-1", "whole number"), ("RAY_ADDRESS", "nonsense", "host:port"),
                             ("RAY_ADDRESS", "10.0.0.5:http", "host:port")):
        monkeypatch.setenv(var, value)
        with pytest.raises(LakeError, match=f"{var}='{value}': .*{says}"):
            lake.add_feature("chars", caption_chars, engine="ray", progress=False)
        monkeypatch.delenv(var)
        assert lake.version == version and "chars" not in lake.dataset().schema.names
    monkeypatch.setenv("LAKECURATE_RAY_CPUS", "2")
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    assert engines.ray_settings() == ("10.0.0.5:6379", 2)
    with pytest.raises(LakeError, match=r"cannot reach the Ray cluster at RAY_ADDRESS=127.0.0.1:1 .*unset it"):
        engines._reachable("127.0.0.1:1", timeout=2)


def test_an_unreachable_cluster_is_refused_before_curate_or_dedup_write(tmp_path: Path, monkeypatch):
    """RAY_ADDRESS nothing listens on: curate and dedup declared their columns first, then undid
    them (two empty versions a command) before the error; now Ray is reached before any write."""
    lake = Lake.create(tmp_path / "lake")
    lake.ingest(SAMPLE_DATA, progress=False)
    version = lake.version
    if ray.is_initialized():  # (connected already: a cluster is reached once per process)
        ray.shutdown()
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    for name, stage in (("curate", lambda: lake.curate({"name": "t", "step": [{"filter": "caption_missing"}]}, engine="ray")),
                        ("dedup", lambda: lake.dedup(["exact"], engine="ray"))):
        with pytest.raises(LakeError, match="cannot reach the Ray cluster at RAY_ADDRESS=127.0.0.1:1"):
            stage()
        assert lake.version == version, name



def test_a_model_that_will_not_load_in_the_actors_writes_no_version(tmp_path: Path):
    """A first Ray run whose setup failed in every actor (no weights, a bad checkpoint) declared its
    columns and dropped them again: two versions for a run that did nothing. The actors are built
    before the columns are declared, as the local engine loads its model before declaring."""
    import pyarrow as pa

    from lakecurate import runner
    from lakecurate.runner import RowStage

    lake = Lake.create(tmp_path / "lake")
    lake.append(pair_rows(0, 10))
    before = lake.dataset().version

    def setup():
        raise OSError("no weights at /nowhere/model.pt")

    stage = RowStage("loads", [pa.field("loaded", pa.int32())], {"v": 1}, ["caption"], setup=setup,
                     batch=lambda s, r: pa.table({"loaded": pa.array([1] * r.columns.num_rows, pa.int32())}))
    with pytest.raises(LakeError, match="could not start.*OSError: no weights at"):
        runner.run(lake, stage, engine="ray", progress=False)
    assert lake.dataset().version == before and "loaded" not in lake.dataset().schema.names
    # a model that loads runs as before: declared once, then filled
    ok = RowStage("loads", [pa.field("loaded", pa.int32())], {"v": 1}, ["caption"], setup=lambda: None,
                  batch=lambda s, r: pa.table({"loaded": pa.array([1] * r.columns.num_rows, pa.int32())}))
    report = runner.run(lake, ok, engine="ray", progress=False)
    assert report.fragments == 1
    assert lake.to_pandas(["loaded"])["loaded"].tolist() == [1] * 10


def test_a_ray_run_shows_progress_before_a_fragment_is_done(tmp_path: Path, monkeypatch, capfd):
    """The bar moved only when an actor returned a whole fragment: a 1-fragment lake showed no line
    for the whole run (the local engine shows one every 10 s)."""
    import time

    from lakecurate import progress, runner

    monkeypatch.setattr(progress, "INTERVAL", 0.3)
    monkeypatch.setattr(runner, "RAY_POLL", 0.1, raising=False)
    lake = Lake.create(tmp_path / "lake")
    lake.append(pair_rows(0, 24))

    def slow(batch):
        time.sleep(0.4)
        return [len(c or "") for c in batch["caption"].to_pylist()]

    rep = lake.add_feature("slow", slow, inputs=["caption"], type="int32", batch_size=2, engine="ray", progress=True)
    assert (rep.fragments, rep.rows) == (1, 24)
    lines = [ln for ln in capfd.readouterr().err.splitlines() if ln.startswith("feature slow (ray): ")]
    counts = [int(ln.split("(ray): ")[1].split("/")[0]) for ln in lines]
    assert any(0 < n < 24 for n in counts), lines
    assert counts == sorted(counts) and counts[-1] == 24, lines
