"""A lake on an object store (S3, served here by moto): every stage reads and writes it directly,
with the same decisions as a lake on local disk; Ray workers get the lake's storage options with
their tasks; concurrent writers still add each pair once."""
from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from lakecurate import Lake, LakeError

from .conftest import REPO, SAMPLE_DATA
from .test_ingest import assert_each_pair_once, small_folder

if os.environ.get("LAKECURATE_REQUIRE_S3"):
    import moto.server as moto_server  # CI: a missing S3 server is a failure, not a skip
else:
    moto_server = pytest.importorskip("moto.server", reason="install lakecurate[dev] (moto) for the object-store tests")

pytestmark = pytest.mark.slow
DECISIONS = ["id", "keep", "drop_reason", "concept", "rebalance_keep", "seq_order", "seq_shard"]


def _start_server() -> tuple[object, int]:
    """A local S3 server (moto) on a free port, started: (the server, its port)."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    return server, port


@pytest.fixture(scope="module")
def s3():
    """A local S3 server: (endpoint, the storage options a lake needs, a fresh bucket maker)."""
    import boto3

    server, port = _start_server()
    endpoint = f"http://127.0.0.1:{port}"
    options = {"endpoint": endpoint, "allow_http": "true", "aws_access_key_id": "testing",
               "aws_secret_access_key": "testing", "region": "us-east-1"}
    client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing",
                          aws_secret_access_key="testing", region_name="us-east-1")
    made = []

    def bucket() -> str:
        name = f"lakes{len(made)}"
        client.create_bucket(Bucket=name)
        made.append(name)
        return name

    yield endpoint, options, bucket
    server.stop()


def _pipeline(lake: Lake, out: Path, **engine) -> None:
    lake.ingest(SAMPLE_DATA, progress=False, **engine)
    lake.embed("tiny-random", batch_size=8, progress=False, **({"workers": 0} if not engine else engine))
    lake.dedup(("exact", "phash"), progress=False, **engine)
    lake.cluster(k=3, **engine)
    lake.curate("basic", progress=False, **engine)
    lake.rebalance(0.5, **engine)
    lake.sequence()
    lake.export(out, **engine)


def _decisions(lake: Lake):
    return lake.to_pandas(DECISIONS).sort_values("id").reset_index(drop=True)


def test_pipeline_on_s3_equals_the_same_pipeline_on_local_disk(s3, tmp_path: Path):
    _, options, bucket = s3
    on_disk = Lake.create(tmp_path / "lake")
    on_s3 = Lake.create(f"s3://{bucket()}/team/lake", storage_options=options)
    assert not (tmp_path / "team").exists()
    _pipeline(on_disk, tmp_path / "out-disk")
    _pipeline(on_s3, tmp_path / "out-s3")
    a, b = _decisions(on_disk), _decisions(on_s3)
    assert a.equals(b)
    assert 0 < int(a["rebalance_keep"].sum()) < int(a["keep"].sum()) < len(a)  # real decisions, not all or none
    assert sorted(os.listdir(tmp_path / "out-s3")) == sorted(os.listdir(tmp_path / "out-disk"))
    img = [c for c in on_disk.dataset().schema.names if c.endswith("_image")][0]
    va = np.stack(on_disk.to_pandas(["id", img]).sort_values("id")[img].dropna().to_numpy())
    vb = np.stack(on_s3.to_pandas(["id", img]).sort_values("id")[img].dropna().to_numpy())
    assert np.array_equal(va, vb)
    assert on_s3.status()["view"] == on_disk.status()["view"]
    rep = on_s3.report(tmp_path / "report")  # thumbnails read from the object store
    assert rep.thumbnails > 0 and Path(rep.path).stat().st_size == rep.bytes
    reopened = Lake.open(on_s3.uri, storage_options=options)  # what another user of the shared table sees
    assert _decisions(reopened).equals(b)
    with pytest.raises(LakeError, match="export writes to a local path"):
        on_s3.export(f"s3://{bucket()}/out")


@pytest.mark.skipif(sys.platform != "linux", reason="Ray's local cluster")
def test_ray_workers_read_and_write_s3_with_the_lakes_storage_options(s3, tmp_path: Path, monkeypatch):
    """No AWS_* variables anywhere: the options given to the lake travel with every Ray task."""
    if os.environ.get("LAKECURATE_REQUIRE_RAY"):
        import ray
    else:
        ray = pytest.importorskip("ray", reason="install lakecurate[ray]")
    _, options, bucket = s3
    for k in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("LAKECURATE_RAY_CPUS", "2")
    local = Lake.create(f"s3://{bucket()}/lake", storage_options=options)
    on_ray = Lake.create(f"s3://{bucket()}/lake", storage_options=options)
    try:
        _pipeline(local, tmp_path / "out-local")
        _pipeline(on_ray, tmp_path / "out-ray", engine="ray")
    finally:
        if ray.is_initialized():
            ray.shutdown()
    assert _decisions(local).equals(_decisions(on_ray))
    assert sorted(os.listdir(tmp_path / "out-ray")) == sorted(os.listdir(tmp_path / "out-local"))


_RACER = """
import sys, time
from lakecurate import Lake
from lakecurate.ingest import IngestOptions
src, start, uri = sys.argv[1], float(sys.argv[2]), sys.argv[3]
time.sleep(max(0.0, start - time.time()))
Lake(uri).ingest(src, options=IngestOptions(commit_rows=5, batch_rows=5), progress=False)
"""


def test_three_ingests_into_one_s3_lake_at_once_add_each_pair_once(s3, tmp_path: Path):
    endpoint, options, bucket = s3
    src = small_folder(tmp_path / "src", 30)
    lake = Lake.create(f"s3://{bucket()}/lake", storage_options=options)
    env = dict(os.environ, AWS_ENDPOINT=endpoint, AWS_ALLOW_HTTP="true", AWS_ACCESS_KEY_ID="testing",
               AWS_SECRET_ACCESS_KEY="testing", AWS_REGION="us-east-1")  # as a CLI user would set them
    start = time.time() + 4  # after every process has imported lakecurate
    procs = [subprocess.Popen([sys.executable, "-c", _RACER, str(src), str(start), lake.uri], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    for p in procs:
        _, err = p.communicate(timeout=180)
        assert p.returncode == 0, err[-2000:]
    assert_each_pair_once(lake, 30)


def test_a_store_that_does_not_answer_is_one_line_naming_why(s3, tmp_path: Path):
    """A missing bucket, a mistyped scheme, a doubled slash or an endpoint nothing answers on was a
    Lance traceback from ingest (nothing on stdout under --json), or "no lake at ..." from a
    command reading the lake, whose advice (ingest) then failed so."""
    import json
    import re

    from click.testing import CliRunner

    from lakecurate.cli import main

    endpoint, options, bucket = s3
    name = bucket()
    for uri, opts, why in ((f"s3://nobucket{name}/lake", options, "its bucket 'nobucket.*' does not exist"),
                           (f"s4://{name}/lake", options, "no object store has the scheme 's4://'"),
                           (f"s3://{name}//lake", options, "its path has an empty segment"),
                           (f"s3://{name}/lake", {**options, "endpoint": "http://127.0.0.1:1"}, "the store could not be reached")):
        with pytest.raises(LakeError, match=f"cannot use lake '{re.escape(uri)}': {why}"):
            Lake.create(uri, storage_options=opts)
        with pytest.raises(LakeError, match=why):
            Lake.open(uri, storage_options=opts)
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1",
           "AWS_ENDPOINT": endpoint, "AWS_ALLOW_HTTP": "true"}
    res = CliRunner().invoke(main, ["ingest", f"s3://nobucket{name}/lake", str(SAMPLE_DATA), "--json"], env=env)
    assert res.exit_code == 1 and "does not exist" in json.loads(res.stdout)["error"], res.output
    assert Lake.create(f"s3://{name}/lake", storage_options=options).count() == 0  # (a good one still is made)


def test_a_branch_of_an_s3_lake_opened_with_storage_options_only_reads_its_parents_log(s3, tmp_path: Path, monkeypatch):
    """No AWS_* variables: a branch's status and stages read the parent branch's commit log with the
    lake's storage options (the graph opened the parent without them: "Failed to resolve region")."""
    _, options, bucket = s3
    for k in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(k)
    lake = Lake.create(f"s3://{bucket()}/lake", storage_options=options)
    lake.ingest(small_folder(tmp_path / "src", 6), progress=False)
    lake.embed("tiny-random", batch_size=8, progress=False, workers=0)
    branch = lake.create_branch("exp")
    assert [s["state"] for s in branch.status()["stages"]] == ["current"]
    branch.dedup("exact", progress=False)
    assert {s["stage"]: s["state"] for s in branch.status()["stages"]} == {"embed": "current", "dedup": "current"}


def test_one_s3_lake_is_one_lake_whatever_its_spelling_and_none_is_made_inside_its_table(s3, tmp_path: Path):
    """s3://b/x/. was another lake than s3://b/x (its own claims and checkpoints: two runs both
    computed everything); and a lake could be made inside another's table on S3 (refused on disk)."""
    _, options, bucket = s3
    b = bucket()
    lake = Lake.create(f"s3://{b}/team/lake", storage_options=options)
    lake.ingest(SAMPLE_DATA, progress=False)
    for spelling in (f"s3://{b}/team/lake/.", f"s3://{b}/team/./lake/", f"s3://{b}/team/x/../lake"):
        assert Lake.open(spelling, storage_options=options).uri == lake.uri == f"s3://{b}/team/lake"
    with pytest.raises(LakeError, match="'..' goes above the bucket"):
        Lake.open(f"s3://{b}/..", storage_options=options)
    with pytest.raises(LakeError, match="'.' is not a bucket"):  # (s3://./x was the lake x/ of bucket x)
        Lake.open(f"s3://./{b}/team/lake", storage_options=options)
    assert Lake.open(f"S3://{b}/team/lake", storage_options=options).uri == lake.uri  # (the scheme in one case)
    with pytest.raises(LakeError, match=f"is inside the table of the lake 's3://{b}/team/lake'"):
        Lake.create(f"s3://{b}/team/lake/pairs.lance", storage_options=options)
    with pytest.raises(LakeError, match=f"it is the table of the lake 's3://{b}/team/lake'"):
        Lake.open(f"s3://{b}/team/lake/pairs.lance/data", storage_options=options)
    other = Lake.create(f"s3://{b}/team/pairs.lance.old", storage_options=options)  # (a name like it: a lake)
    assert other.count() == 0


def test_a_store_that_goes_away_mid_run_is_one_line_and_json(tmp_path: Path, monkeypatch):
    """The S3 server stopped during `embed --json`: an 84-line traceback and nothing on stdout (the
    read failed with ArrowInvalid, then the run's cleanup, which opens the lake again, raised a
    ValueError that hid it). Now one line naming the store problem, and {"error": ...} on stdout."""
    import json

    from click.testing import CliRunner

    import lance.fragment

    from lakecurate.cli import main

    server, port = _start_server()
    stopped = []
    try:
        import boto3

        endpoint = f"http://127.0.0.1:{port}"
        boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing", aws_secret_access_key="testing",
                     region_name="us-east-1").create_bucket(Bucket="flaky")
        env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1",
               "AWS_ENDPOINT": endpoint, "AWS_ALLOW_HTTP": "true"}
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        Lake.create("s3://flaky/lake").ingest(small_folder(tmp_path / "src", 6), progress=False)
        read = lance.fragment.LanceFragment.to_table

        def read_when_store_gone(self, *args, **kwargs):  # (the runner's first read of a batch)
            if not stopped:
                server.stop()
                stopped.append(1)
            return read(self, *args, **kwargs)

        monkeypatch.setattr(lance.fragment.LanceFragment, "to_table", read_when_store_gone)
        res = CliRunner().invoke(main, ["embed", "s3://flaky/lake", "--model", "tiny-random", "--workers", "0",
                                        "--batch-size", "2", "--json"], env=env)
    finally:
        if not stopped:
            server.stop()
    assert stopped and res.exit_code == 1, res.output
    error = json.loads(res.stdout)["error"]
    assert error.startswith("cannot use lake 's3://flaky/lake': the store could not be reached; check the endpoint"), error
    assert "Traceback" not in res.output and res.exception is None or isinstance(res.exception, SystemExit)


def test_cleanup_records_a_stale_tag_s_states_on_s3(s3):
    """Cleanup records the stages not current at a tag before it removes the commits that show
    them: in a side table of the lake, so on an object store too (read back there after it)."""
    from datetime import timedelta

    import lance

    from lakecurate import graph
    from lakecurate.plant import synthetic_pairs

    from .writers import scaled_len

    _, options, bucket = s3
    lake = Lake.create(f"s3://{bucket()}/lake", storage_options=options)
    lake.append(synthetic_pairs(0, 6))
    lake.add_feature("n", scaled_len, inputs=["caption"], type="int64", progress=False)
    lance.dataset(lake.table_uri, storage_options=options).update({"caption": "'a brand new caption'"},
                                                                  where="id = 'p0000001'")
    def id_len(batch):
        import pyarrow as pa

        return pa.array([len(i) for i in batch["id"].to_pylist()], pa.int64())

    lake.add_feature("m", id_len, inputs=["id"], type="int64", progress=False)  # (the update is not the tag's commit)
    lake.tag("t")
    lake.add_feature("n", scaled_len, inputs=["caption"], type="int64", progress=False)  # current again

    def n_at_t() -> tuple[str, int]:
        st = next(s for s in graph.states(lake, lake.dataset("t")) if s.node.columns == ["n"])
        return st.state, st.rows_stale

    before = n_at_t()
    assert before[0] == "stale"
    done = lake.cleanup(timedelta(0))
    assert done["old_versions"] > 0 and done["tags_recorded"] == 1
    graph._WRITES.clear()  # as another process reads it
    graph._COMMITS.clear()
    graph._RECORDED.clear()
    assert n_at_t() == before
    assert next(s for s in lake.status("t")["stages"] if s["columns"] == ["n"])["reasons"][0].startswith("recorded at")
