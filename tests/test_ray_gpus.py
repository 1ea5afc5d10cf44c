"""Model stages on a Ray cluster with GPUs: an actor per GPU, each given its own, whichever model
stage it is (embed, a caption scored, recaption). This machine has no GPU: the cluster's GPUs are
Ray's logical resources (``ray.init(num_gpus=2)``), which is all the placement reads; the models
themselves then run on the CPU (``device="auto"``: torch sees no CUDA)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from lakecurate import Lake, LakeError, engines, runner
from lakecurate.captioners import resolve_captioner
from lakecurate.embed import caption_stage, embed_stage
from lakecurate.encoders import resolve
from lakecurate.recaption import recaption_stage

from .conftest import pair_rows

if os.environ.get("LAKECURATE_REQUIRE_RAY"):
    import ray  # CI: a missing Ray is a failure, not a skip
else:
    ray = pytest.importorskip("ray", reason="install lakecurate[ray] for the Ray engine tests")
pytestmark = pytest.mark.slow


def start(cpus: int, gpus: int) -> None:
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=cpus, num_gpus=gpus, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in [os.getcwd(), *__import__("sys").path] if p)}})


@pytest.fixture(autouse=True)
def no_ray_left():
    yield
    if ray.is_initialized():
        ray.shutdown()


def where_it_ran(state: object, rows: runner.Rows) -> pa.Table:
    """Which process and which of Ray's GPUs computed each row."""
    gpus = ",".join(str(g) for g in ray.get_gpu_ids())
    n = rows.columns.num_rows
    return pa.table({"ran_pid": pa.array([os.getpid()] * n, pa.int64()), "ran_gpus": pa.array([gpus] * n, pa.string()),
                     "ran_visible": pa.array([os.environ.get("CUDA_VISIBLE_DEVICES", "")] * n, pa.string())})


def probe(device: str | None) -> runner.RowStage:
    fields = [pa.field("ran_pid", pa.int64()), pa.field("ran_gpus", pa.string()), pa.field("ran_visible", pa.string())]
    return runner.RowStage("probe", fields, {"device": device}, ["caption"], batch=where_it_ran, batch_size=8,
                           device=device)


def small_lake(path: Path, fragments: int = 6) -> Lake:
    lake = Lake.create(path)
    for f in range(fragments):
        lake.append(pair_rows(f * 8, 8))
    return lake


@pytest.mark.parametrize("device", ["cuda", "auto"])
def test_a_model_stage_gets_an_actor_per_gpu_each_with_its_own(tmp_path: Path, device: str):
    start(cpus=4, gpus=2)
    lake = small_lake(tmp_path / "lake")
    rep = runner.run(lake, probe(device), engine="ray", progress=False)
    assert (rep.fragments, rep.rows) == (6, 48)
    got = lake.sql("SELECT ran_pid, ran_gpus, ran_visible FROM pairs")
    per_actor = got.groupby("ran_pid").agg(lambda s: set(s))
    assert len(per_actor) <= 2  # one actor per GPU, not one per CPU (4)
    gpus = [next(iter(s)) for s in per_actor["ran_gpus"]]
    assert all(len(s) == 1 for s in per_actor["ran_gpus"]) and all(g in ("0", "1") for g in gpus)
    assert len(set(gpus)) == len(gpus)  # no two actors on one GPU
    assert list(per_actor["ran_visible"].map(lambda s: next(iter(s)))) == gpus  # what torch's "cuda" is in each


def test_a_stage_without_a_model_or_on_the_cpu_takes_an_actor_per_cpu(tmp_path: Path):
    start(cpus=3, gpus=2)
    lake = small_lake(tmp_path / "lake")
    runner.run(lake, probe(None), engine="ray", progress=False)
    got = lake.sql("SELECT DISTINCT ran_gpus FROM pairs")
    assert got["ran_gpus"].tolist() == [""]  # no GPU reserved
    runner.run(small_lake(tmp_path / "cpu"), probe("cpu"), engine="ray", progress=False)
    assert Lake.open(tmp_path / "cpu").sql("SELECT DISTINCT ran_gpus FROM pairs")["ran_gpus"].tolist() == [""]


def test_a_device_ray_cannot_give_is_refused_before_anything_is_written(tmp_path: Path):
    start(cpus=2, gpus=2)
    lake = small_lake(tmp_path / "lake", fragments=2)
    before = lake.dataset().version
    with pytest.raises(LakeError, match="device cuda:1.*use device='cuda'"):
        runner.run(lake, probe("cuda:1"), engine="ray", progress=False)
    start(cpus=2, gpus=0)
    with pytest.raises(LakeError, match="no GPUs.*device='cpu'"):
        runner.run(lake, probe("cuda"), engine="ray", progress=False)
    assert lake.dataset().version == before and "ran_pid" not in lake.dataset().schema.names
    runner.run(lake, probe("auto"), engine="ray", progress=False)  # auto on a cluster without GPUs: the CPUs
    assert lake.sql("SELECT DISTINCT ran_gpus FROM pairs")["ran_gpus"].tolist() == [""]


def test_every_model_stage_says_its_device_for_the_runner_to_place():
    spec = resolve("tiny-random")
    assert embed_stage(spec, device="cuda").device == "cuda"
    assert caption_stage(spec, "caption_x", device="auto").device == "auto"
    assert recaption_stage(resolve_captioner("tiny-random-coca"), device="cuda").device == "cuda"


def test_embed_on_a_cluster_with_gpus_runs_an_actor_per_gpu(tmp_path: Path):
    """``embed(engine="ray", device="auto")`` on a cluster with a GPU: its actor reserves it (and, on
    this machine, embeds on the CPU), the values those of the local engine."""
    start(cpus=3, gpus=1)
    lake = small_lake(tmp_path / "lake", fragments=3)
    rep = lake.embed("tiny-random", engine="ray", device="auto", progress=False)
    assert rep.fragments_done == 3 and rep.rows_embedded == 24
    ray.shutdown()
    local = small_lake(tmp_path / "local", fragments=3)
    local.embed("tiny-random", progress=False, workers=0)
    a = lake.sql("SELECT id, clip_tinyrandom_score FROM pairs ORDER BY id")
    b = local.sql("SELECT id, clip_tinyrandom_score FROM pairs ORDER BY id")
    assert a["clip_tinyrandom_score"].notna().sum() > 0
    np.testing.assert_allclose(a["clip_tinyrandom_score"], b["clip_tinyrandom_score"], atol=1e-4)  # nulls alike


def reader_pid(blobs: list) -> list[int]:
    """The ``image()`` of a probe: which process read (and would decode) each image."""
    return [os.getpid()] * len(blobs)


def where_it_was_read(state: object, rows: runner.Rows) -> pa.Table:
    n = rows.columns.num_rows
    return pa.table({"ran_pid": pa.array([os.getpid()] * n, pa.int64()), "read_pid": pa.array(rows.images, pa.int64())})


def decoding_probe() -> runner.RowStage:
    fields = [pa.field("ran_pid", pa.int64()), pa.field("read_pid", pa.int64())]
    return runner.RowStage("probe-read", fields, {}, ["image", "caption"], batch=where_it_was_read, image=reader_pid,
                           batch_size=4, device="cuda")


def test_a_gpu_actor_decodes_in_reader_processes_of_its_own_with_the_cpus_of_its_gpu(tmp_path: Path):
    """Two CPUs a GPU: each GPU actor reserves both and keeps one reader process for its life, across
    fragments; with one CPU a GPU it reads inline. (One process decodes ~200 photos/s; a GPU embeds
    thousands: an actor reading alone would starve it.)"""
    start(cpus=4, gpus=2)
    assert engines.cpus_per_gpu() == 2
    lake = small_lake(tmp_path / "lake")
    runner.run(lake, decoding_probe(), engine="ray", progress=False)
    got = lake.sql("SELECT ran_pid, read_pid FROM pairs")
    assert len(got) == 48 and (got["ran_pid"] != got["read_pid"]).all()
    # one reader an actor, the same for every fragment it takes (6 fragments, 2 actors: one took 3 or more)
    assert (got.groupby("ran_pid")["read_pid"].nunique() == 1).all()
    start(cpus=2, gpus=2)
    assert engines.cpus_per_gpu() == 1
    lake = small_lake(tmp_path / "inline", fragments=2)
    runner.run(lake, decoding_probe(), engine="ray", progress=False)
    got = lake.sql("SELECT ran_pid, read_pid FROM pairs")
    assert (got["ran_pid"] == got["read_pid"]).all()
