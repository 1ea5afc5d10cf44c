"""The one stage runner: kill -9 during every runner stage resumes and ends equal to a clean run;
each stage's ``batch()`` is pure and runs without a lake."""

from __future__ import annotations

import os
import shutil
import signal
import time
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from lakecurate import Lake, LakeError, columns, features, runner
from lakecurate.runner import Rows, RowStage

from .conftest import REPO, SAMPLE_DATA, pair_rows, refused_and_good_copies
from .writers import kill_9_when


def caption_len(batch: pa.RecordBatch) -> pa.Array:
    """A user feature for the kill test (imported by the child process too)."""
    return pa.array([None if c is None else len(c) for c in batch["caption"].to_pylist()], pa.int32())


# stage -> (the call that runs it, in the child and here; a column it writes)
CALLS = {
    "embed": ("lake.embed('tiny-random', batch_size=BATCH, progress=False)", "clip_tinyrandom_score"),
    "image": ("signals.compute_image_signals(lake, progress=False)", "img_sharpness"),
    "caption": ("signals.compute_caption_signals(lake, progress=False)", "cap_words"),
    "feature": ("lake.add_feature('clen', caption_len, inputs=['caption'], type='int32', batch_size=BATCH, "
                "progress=False)", "clen"),
    "recaption": ("lake.recaption('tiny-random-coca', batch_size=BATCH, progress=False)", "caption_tinycoca"),
}

# The child slows every batch down (the runner's one call that starts a batch) and runs with batches of 4 rows,
# so that a SIGKILL lands after some batches are checkpointed and before the stage ends.
CHILD = """
import dataclasses, sys, time
from lakecurate import Lake, runner, signals
from tests.test_runner import caption_len
BATCH = 4
real = runner._start
def slow(*a):
    time.sleep(0.3)
    return real(*a)
runner._start = slow
signals.IMAGE_STAGE = dataclasses.replace(signals.IMAGE_STAGE, batch_size=BATCH)
signals.CAPTION_STAGE = dataclasses.replace(signals.CAPTION_STAGE, batch_size=BATCH)
lake = Lake.open(sys.argv[1])
{call}
"""


def three_fragments(root: Path) -> Lake:
    """sample_data (bad images and captions included) plus two fragments of other photos; a deleted row."""
    lake = Lake.create(root)
    lake.ingest(SAMPLE_DATA, progress=False)
    lake.append(pair_rows(0, 12, image=(SAMPLE_DATA / "coffee.jpg").read_bytes()))
    lake.append(pair_rows(100, 12, image=(SAMPLE_DATA / "rocket.jpg").read_bytes()))
    lake.dataset().delete("id = 'p0000003'")
    return lake


def derived(lake: Lake) -> pa.Table:
    """Every column a stage wrote, by id."""
    names = [f.name for f in lake.dataset().schema if columns.field_provenance(f, strict=False)]
    return lake.dataset().to_table(columns=["id", *names]).sort_by("id")


@pytest.mark.slow
@pytest.mark.parametrize("stage", list(CALLS))
def test_kill_9_mid_stage_resumes_and_equals_a_clean_run(tmp_path: Path, stage: str, monkeypatch):
    from lakecurate import signals  # noqa: F401 - the calls name it

    call, column = CALLS[stage]
    lake = three_fragments(tmp_path / "lake")
    shutil.copytree(lake.uri, tmp_path / "clean")
    clean = Lake.open(tmp_path / "clean")
    rows = lake.count()

    ckpt = Path(lake.uri) / "_lakecurate" / "checkpoints"
    proc = subprocess.Popen([sys.executable, "-c", CHILD.format(call=call), lake.uri], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    kill_9_when(proc, lambda: len(list(ckpt.glob("*/*/*.arrow"))) >= 2, timeout=120)
    assert proc.returncode == -9, "the stage ended before it was killed"
    saved = sum(pa.ipc.open_file(p).read_all().num_rows for p in ckpt.glob("*/*/*.arrow"))
    ds = lake.dataset()
    unfilled = columns.fragments_to_fill(ds, column)
    assert saved >= 8 and unfilled, "killed after at least two batches, before the end"

    computed = []
    real = runner._start

    def counting(stage_, state, rows_, where):  # what the re-run computes (not what it resumes)
        computed.append(rows_.num_rows)
        return real(stage_, state, rows_, where)

    monkeypatch.setattr(runner, "_start", counting)
    env = {"lake": lake, "signals": signals, "caption_len": caption_len, "BATCH": 64}  # resumed with another batch size
    eval(call, env)
    assert sum(computed) == sum(f.count_rows() for f in unfilled) - saved  # finished batches were not recomputed
    assert not list(ckpt.glob("*/*/*.arrow")) and not columns.fragments_to_fill(lake.dataset(), column)
    monkeypatch.setattr(runner, "_start", real)

    eval(call, {**env, "lake": clean})
    got, want = derived(lake), derived(clean)
    assert got.num_rows == rows and len(set(got.column("id").to_pylist())) == rows  # no row lost or duplicated
    assert got.column_names == want.column_names and column in got.column_names
    for name in got.column_names:
        assert got.column(name).equals(want.column(name)), name


# --------------------------------------------------------------------------- batch() without a lake
def test_embed_batch_is_pure():
    from lakecurate.embed import Preprocess, embed_stage
    from lakecurate.encoders import resolve

    stage = embed_stage(resolve("tiny-random"), device="cpu")
    enc = stage.setup()
    images = Preprocess(resolve("tiny-random").build_transforms()[0])(
        [(SAMPLE_DATA / "coffee.jpg").read_bytes(), b"junk", None])
    rows = Rows(pa.record_batch({"caption": ["a cup", "x", None]}), images)
    out = runner.result(stage.batch(enc, rows))  # embed's batch is deferred: the device works meanwhile
    assert out.column_names == stage.names and out.num_rows == 3
    err = out.column("clip_tinyrandom_error").to_pylist()
    assert err[0] is None and err[1].startswith("image_undecodable") and err[2] == "image_missing"
    assert out.column("clip_tinyrandom_score").null_count == 2
    assert runner.result(stage.batch(enc, rows)).equals(out)  # the same rows, the same values


def test_signal_and_feature_batches_are_pure():
    from lakecurate import signals
    from lakecurate.features import BatchUdf

    caps = pa.record_batch({"caption": ["IMG_1234.JPG", "mail anna@example.com", None]})
    out = signals.CAPTION_STAGE.batch(None, Rows(caps))
    assert out.column_names == signals.CAPTION_STAGE.names
    assert out.column("cap_filename").to_pylist() == [True, False, None]
    red = signals.redact_stage("r").batch(None, Rows(caps))
    assert red.column("r").to_pylist() == ["IMG_1234.JPG", "mail [email]", None]
    blobs = [(SAMPLE_DATA / "coffee.jpg").read_bytes(), None]
    img = signals.IMAGE_STAGE.batch(None, Rows(pa.record_batch({}), signals.IMAGE_STAGE.image(blobs)))
    assert img.column_names == signals.IMAGE_STAGE.names and img.column("phash").null_count == 1
    feat = runner.OnColumns(BatchUdf(caption_len, "clen", {}, {"clen": pa.int32()}))
    assert feat(None, Rows(caps)).column("clen").to_pylist() == [12, 21, None]


def test_a_new_stage_on_the_runner(tmp_path: Path):
    """A stage is a spec: declared with provenance, filled per fragment, a re-run does nothing,
    a wrong batch is a LakeError naming the rows, and a failed first run leaves no column."""
    lake = Lake.create(tmp_path / "lake")
    for f in range(3):
        lake.append(pair_rows(f * 10, 10))

    def words(state, rows):
        return pa.table({"nwords": pa.array([len((c or "").split()) * state for c in rows.columns["caption"].to_pylist()],
                                            pa.int32())})

    stage = RowStage("words", [pa.field("nwords", pa.int32())], {"v": 1}, ["caption"], batch=words,
                     setup=lambda: 2, batch_size=4)
    rep = runner.run(lake, stage, progress=False)
    assert (rep.fragments_total, rep.fragments, rep.rows, rep.counts["nwords"]) == (3, 3, 30, 30)
    tbl = lake.dataset().to_table(columns=["caption", "nwords"])
    assert tbl.column("nwords").to_pylist() == [2 * len((c or "").split()) for c in tbl.column("caption").to_pylist()]
    assert columns.field_provenance(lake.dataset().schema.field("nwords"))["stage"] == "words"
    v = lake.version
    assert runner.run(lake, stage, progress=False).rows == 0 and lake.version == v
    bad = RowStage("bad", [pa.field("b", pa.int32())], {}, ["caption"], batch=lambda s, r: pa.table({"b": [1]}))
    with pytest.raises(LakeError, match=r"fragment 0 rows 0-9: expected 10 rows of \['b'\], got 1"):
        runner.run(lake, bad, progress=False)
    assert "b" not in lake.dataset().schema.names


def test_a_deferred_batch_is_waited_for_after_the_next_one_starts(tmp_path: Path):
    """A stage whose batch returns a Deferred (a GPU computing): the runner starts batch i+1 before
    it asks for batch i's table, so the device is never idle while this process prepares a batch;
    every row is filled once and right, and a failure while waiting names the rows."""
    lake = Lake.create(tmp_path / "lake")
    for f in range(2):
        lake.append(pair_rows(f * 10, 10))
    log = []

    def words(state, rows):
        log.append(("start", rows.fragment, rows.start))
        caps = rows.columns["caption"].to_pylist()

        def done():
            log.append(("result", rows.fragment, rows.start))
            return pa.table({"nwords": pa.array([len((c or "").split()) for c in caps], pa.int32())})

        return runner.Deferred(done)

    stage = RowStage("words", [pa.field("nwords", pa.int32())], {"v": 1}, ["caption"], batch=words, batch_size=4)
    rep = runner.run(lake, stage, workers=0, progress=False)
    assert (rep.fragments, rep.rows) == (2, 20)
    tbl = lake.dataset().to_table(columns=["caption", "nwords"])
    assert tbl.column("nwords").to_pylist() == [len((c or "").split()) for c in tbl.column("caption").to_pylist()]
    batches = [(f, s) for f in (0, 1) for s in (0, 4, 8)]
    assert [e for e in log if e[0] == "start"] == [("start", *b) for b in batches]
    for i, b in enumerate(batches[:-1]):  # batch i's table is asked for only once batch i+1 started
        assert log.index(("start", *batches[i + 1])) < log.index(("result", *b))
    assert log[-1] == ("result", *batches[-1])

    # a Ray actor's worker (here in this process) reads, decodes and starts the next batch likewise
    log.clear()
    other = Lake.create(tmp_path / "ray")
    for f in range(2):
        other.append(pair_rows(f * 10, 10))
    columns.declare(other, stage.fields, stage.provenance(other.version))  # as runner.run does first
    worker = runner.FragmentWorker(stage, other, other.version, "")
    for fid in (0, 1):
        assert worker.run(fid).rows == 10
    assert [e for e in log if e[0] == "start"] == [("start", *b) for b in batches]
    for i, b in enumerate(batches[:-1]):
        if b[0] == batches[i + 1][0]:  # within a fragment
            assert log.index(("start", *batches[i + 1])) < log.index(("result", *b))
    tbl = other.dataset().to_table(columns=["caption", "nwords"])
    assert tbl.column("nwords").to_pylist() == [len((c or "").split()) for c in tbl.column("caption").to_pylist()]

    def broken(state, rows):
        return runner.Deferred(lambda: 1 / 0)

    bad = RowStage("bad", [pa.field("b", pa.int32())], {}, ["caption"], batch=broken, batch_size=4)
    with pytest.raises(LakeError, match=r"fragment 0 rows 0-3: ZeroDivisionError"):
        runner.run(lake, bad, workers=0, progress=False)
    assert "b" not in lake.dataset().schema.names


def test_resume_with_another_batch_size_covers_every_row_once():
    """Saved batches of 4 rows, resumed with batches of 64: only the gaps are computed."""
    class Frag:
        fragment_id = 7

        def count_rows(self):
            return 30

    saved = {0: pa.table({"x": [0] * 4}), 4: pa.table({"x": [0] * 4}), 12: pa.table({"x": [0] * 4})}
    todo = runner._batches(Frag(), 64, saved)
    assert todo == [(7, 8, 4), (7, 16, 14)]
    covered = sorted([r for s, t in saved.items() for r in range(s, s + t.num_rows)]
                     + [r for _, s, n in todo for r in range(s, s + n)])
    assert covered == list(range(30))
    assert runner._batches(Frag(), 8, {}) == [(7, 0, 8), (7, 8, 8), (7, 16, 8), (7, 24, 6)]
    assert np.array_equal(Rows(pa.record_batch({}), offsets=np.arange(3)).num_rows, 3)


@pytest.mark.slow
def test_a_second_run_of_a_stage_leaves_the_fragments_the_first_is_computing_to_it(tmp_path: Path, monkeypatch):
    """Two runs of one stage at once (recaption started twice) both computed every fragment, and
    the second commit replaced the first: the endpoint calls (or GPU time) of one were wasted.
    The second run now skips the fragments the first has claimed and says so; nothing is lost."""
    call, column = CALLS["recaption"]
    lake = three_fragments(tmp_path / "lake")
    claims = Path(lake.uri) / "_lakecurate" / "checkpoints" / "claims"
    ckpt = Path(lake.uri) / "_lakecurate" / "checkpoints"
    proc = subprocess.Popen([sys.executable, "-c", CHILD.format(call=call), lake.uri], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None and not list(ckpt.glob("recaption*/*/*.arrow")):
            time.sleep(0.05)
        assert proc.poll() is None and len(list(claims.glob("*/f*"))) == 3, "the first run holds its fragments"
        computed = []
        real = runner._start

        def counting(stage_, state, rows_, where):
            computed.append(rows_.num_rows)
            return real(stage_, state, rows_, where)

        monkeypatch.setattr(runner, "_start", counting)
        rep = lake.recaption("tiny-random-coca", batch_size=4, progress=False)
        assert rep.fragments_elsewhere == 3 and rep.rows == 0 and computed == []
        assert rep.elsewhere == [f"{columns.host_name()} {proc.pid}"]
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    finally:
        proc.kill()
    assert not columns.fragments_to_fill(lake.dataset(), column) and not list(claims.glob("*/f*"))  # released
    assert lake.recaption("tiny-random-coca", batch_size=4, progress=False).fragments_elsewhere == 0


def test_fragment_claims_go_stale_with_their_process_or_their_beat(tmp_path: Path):
    lake = Lake.create(tmp_path / "lake")
    a = columns.FragmentClaims(lake, "x", ttl=60)
    assert a.take([1, 2]) == ([1, 2], {})
    b = columns.FragmentClaims(lake, "x", ttl=60)
    got, elsewhere = b.take([1, 2, 3])
    assert got == [3] and set(elsewhere) == {1, 2} and elsewhere[1] == a.me
    a.release()  # released: free
    b.release()
    c = columns.FragmentClaims(lake, "x", ttl=60)
    assert c.take([1]) == ([1], {})
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (c.root / "f5").write_text(f"{columns.host_name()} {gone.pid} dead")  # its process died (kill -9): free at once
    (c.root / "f6").write_text("another-host 1 beat")  # another machine's, refreshed: held
    (c.root / "f7").write_text("another-host 2 old")  # another machine's, not refreshed for the ttl: stale
    old = time.time() - 61
    import os

    os.utime(c.root / "f7", (old, old))
    got, elsewhere = c.take([5, 6, 7])
    assert got == [5, 7] and elsewhere == {6: "another-host 1 beat"}
    assert (c.root / "f5").read_text() == c.me
    c.release()
    assert sorted(p.name for p in c.root.iterdir()) == ["f6"]  # ours removed, the other machine's left


def test_a_stage_another_stage_needs_waits_for_the_fragments_another_run_holds(tmp_path: Path, capsys):
    """Another run holds the caption signals' fragments (it is computing them). A run by itself
    leaves them to it and says so; a run a consuming stage asked for (``runner.waiting``: curate's
    producers) waits, and computes those whose run ends without filling them. Two curates at once:
    the second found the signal columns declared and empty, judged no row, exited 0 and tagged an
    empty view."""
    import threading

    from lakecurate import signals

    lake = Lake.create(tmp_path / "lake")
    for k in range(3):
        lake.append(pair_rows(20 * k, 20))
    frags = [f.fragment_id for f in lake.dataset().get_fragments()]
    other = columns.FragmentClaims(lake, signals.CAPTION_STAGE.checkpoint_key)
    assert other.take(frags) == (frags, {})

    alone = runner.run(lake, signals.CAPTION_STAGE, progress=False)
    assert alone.fragments_elsewhere == 3 and alone.rows == 0
    assert len(columns.fragments_to_fill(lake.dataset(), "cap_words")) == 3

    threading.Timer(1.0, other.release).start()  # the other run ends without filling them
    t0 = time.perf_counter()
    rep = lake.curate({"name": "words", "step": [{"filter": "caption_length", "min_words": 3}]}, progress=True)
    assert time.perf_counter() - t0 >= 1.0  # it waited for them, and said so
    assert f"waiting for caption signals of another run ({columns.host_name()} {os.getpid()})" in capsys.readouterr().err
    assert rep.unjudged == 0 and rep.rows == 60, rep
    assert not columns.fragments_to_fill(lake.dataset(), "cap_words")
    assert lake.count("keep IS NULL") == 0


def test_a_column_dropped_while_a_stage_fills_it_is_a_one_line_error(tmp_path: Path):
    """A restore (or a --recompute) by another writer drops the column a running stage fills: the
    stage's next commit was a KeyError traceback. Now a LakeError that says what happened; the
    fragments committed before stay in the versions before the restore."""
    lake = Lake.create(tmp_path / "lake")
    for k in range(3):
        lake.append(pair_rows(20 * k, 20))
    before = lake.version
    calls = []

    def restoring_len(batch: pa.RecordBatch) -> pa.Array:
        calls.append(1)
        if len(calls) == 2:  # another writer restores the lake mid-run: the column is gone
            Lake.open(lake.uri).restore(before)
        return caption_len(batch)

    with pytest.raises(LakeError, match="column 'clen' of lake .* was removed by another writer at version "
                                        r"\d+ by a restore of a version without it \(lakecurate restore\)") as err:
        lake.add_feature("clen", restoring_len, inputs=["caption"], type="int32", batch_size=20, progress=False)
    assert "\n" not in str(err.value)
    assert "clen" not in lake.dataset().schema.names


@pytest.mark.parametrize("how", ["feature drop", "ingest --mode overwrite"])
def test_a_column_removed_mid_run_is_named_by_what_removed_it(tmp_path: Path, how: str):
    """A feature add whose column a `feature drop` or an overwrite removed mid-run blamed "a restore,
    or a run with --recompute" and said "Run it again", which brings back a column dropped on purpose."""
    lake = Lake.create(tmp_path / "lake")
    for k in range(3):
        lake.append(pair_rows(20 * k, 20))
    calls = []

    def removing_len(batch: pa.RecordBatch) -> pa.Array:
        calls.append(1)
        if len(calls) == 2:  # a colleague removes the column mid-run
            other = Lake.open(lake.uri)
            if how == "feature drop":
                features.drop_feature(other, "clen")
            else:
                other.ingest(SAMPLE_DATA, mode="overwrite", progress=False)
        return caption_len(batch)

    with pytest.raises(LakeError) as err:
        lake.add_feature("clen", removing_len, inputs=["caption"], type="int32", batch_size=20, progress=False)
    msg = str(err.value)
    what = "a drop of columns (lakecurate drop or feature drop" if how == "feature drop" else "an overwrite of the table"
    assert what in msg and "restore" not in msg and "\n" not in msg, msg
    assert "If it was not removed on purpose, run this command again" in msg, msg


def test_image_stages_do_not_decode_what_ingest_refused(tmp_path: Path):
    """A decompression bomb under the user's --max-pixels is an ingest error with its bytes kept;
    embed and the image signals decoded it all the same (up to Pillow's own limit). They leave it
    as they leave an image that does not decode; the good copies of the same files are done."""
    lake = refused_and_good_copies(tmp_path, ("chelsea", "horse"))
    lake.embed("tiny-random", workers=0, batch_size=8, progress=False)
    lake.signals(["image", "copy"], workers=0, progress=False)
    rows = lake.sql("SELECT ingest_status, clip_tinyrandom_image IS NULL AS no_vector, clip_tinyrandom_error, "
                    "phash IS NULL AS no_hash, copy_hashes IS NULL AS no_copy FROM pairs")
    bad, ok = rows[rows["ingest_status"] == "error"], rows[rows["ingest_status"] != "error"]
    assert len(bad) == 2 and bad[["no_vector", "no_hash", "no_copy"]].all().all()
    assert (bad["clip_tinyrandom_error"] == "image_refused_at_ingest: decompression_bomb").all()  # says why
    assert len(ok) == 2 and not ok[["no_vector", "no_hash", "no_copy"]].any().any()


def test_a_waiting_run_takes_a_stale_fragment_another_run_left(tmp_path: Path):
    """A consumer's producer (runner.waiting) left a stale fragment to another run of its stage, then
    found nothing to wait for: it waited only for fragments without values, so it went on while the
    other run still held the stale one (and, had that run died, left it stale). It waits for the
    stale one now, and takes it over when its run ends without computing it."""
    import threading

    import lance

    from lakecurate import graph
    from lakecurate.signals import CAPTION_STAGE

    lake = Lake.create(tmp_path / "lake")
    lake.ingest(SAMPLE_DATA, progress=False)
    lake.signals(["caption"], progress=False)
    key = lake.to_pandas(["key"], where="cap_words > 3", limit=1)["key"][0]
    lance.dataset(lake.table_uri).update({"caption": "'two words'"}, where=f"key = '{key}'")
    stale = graph.stale_fragments(lake.dataset(), CAPTION_STAGE.names, ["caption"])
    assert len(stale) == 1
    other = columns.FragmentClaims(lake, CAPTION_STAGE.checkpoint_key)  # another run of the stage holds it
    assert other.take(stale) == (stale, {})
    threading.Timer(1.5, other.release).start()  # ...and ends without computing it
    t = time.perf_counter()
    with runner.waiting():
        rep = lake.signals(["caption"], progress=False)
    assert time.perf_counter() - t >= 1.4 and rep == {"caption": 1}
    assert lake.to_pandas(["cap_words"], where=f"key = '{key}'")["cap_words"][0] == 2
    assert not graph.stale_fragments(lake.dataset(), CAPTION_STAGE.names, ["caption"])


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (Linux /proc)."""
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
@pytest.mark.parametrize("sigs,code,says", [([signal.SIGTERM], 143, "terminated (SIGTERM)"),
                                            ([signal.SIGINT], 130, "interrupted (Ctrl-C)"),
                                            ([signal.SIGINT, signal.SIGTERM], 130, "interrupted (Ctrl-C)")])
def test_sigterm_mid_stage_releases_its_claims_and_readers_and_says_so(tmp_path: Path, sigs, code, says):
    """SIGTERM (kill, timeout, a scheduler) ended the program at once: its claims held the fragments
    from other hosts' runs for two minutes, and the message was nothing, or the stage's "Error: ...
    fragment 0 rows 896-959: Terminated" once a handler raised. Ctrl-C was click's "Aborted!", exit 1,
    as any failure; sent to the process group (as a terminal does), each reader process printed a
    KeyboardInterrupt traceback; a SIGTERM after it (a supervisor) raised again inside its cleanup."""
    lake = three_fragments(tmp_path / "lake")
    ckpt = Path(lake.uri) / "_lakecurate" / "checkpoints"
    program = CHILD.format(call="from lakecurate.cli import entry; sys.argv = ['lakecurate', 'signals', sys.argv[1], "
                                "'--no-caption', '--workers', '2']; entry()")
    proc = subprocess.Popen([sys.executable, "-c", program, lake.uri], cwd=REPO, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None and len(list(ckpt.glob("signals*/*/*.arrow"))) < 2:
            time.sleep(0.05)
        assert proc.poll() is None and list(ckpt.glob("claims/signals*/f*")), "the run holds its fragments"
        readers = [p for p in _children(proc.pid) if "spawn_main" in Path(f"/proc/{p}/cmdline").read_text()]
        for k, sig in enumerate(sigs):
            time.sleep(0.05 * k)
            if sig == signal.SIGINT:
                os.killpg(proc.pid, sig)  # (a terminal's Ctrl-C: the whole process group)
            else:
                proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == code, err
    assert says in err and "Error" not in err and "Traceback" not in err and "Aborted" not in err, err
    assert err.count("lakecurate:") == 1, err  # (one line: no second signal raised in the cleanup)
    assert not list(ckpt.glob("claims/signals*/f*"))  # released: another run takes them at once
    time.sleep(1)
    assert readers and not [p for p in readers if Path(f"/proc/{p}").exists()]  # (none left behind)
    rep = lake.signals(["image"], progress=False).runs["image"]
    assert rep.rows_resumed >= 8 and not columns.fragments_to_fill(lake.dataset(), "img_sharpness")


POOL_PARENT = """
import os, signal, sys, time
import lance, pyarrow as pa
from lakecurate import runner, signals
from tests.test_runner import _children
uri = sys.argv[1]
lance.write_dataset(pa.table({{"id": ["a"]}}), uri)
pool = runner._readers((uri, 1, None, signals.CAPTION_STAGE), 2)
seen = set()
while {armed} and len(seen) < 2:  # both readers have run their initializer
    seen |= {{f.result() for f in [pool.submit(os.getpid) for _ in range(4)]}}
jobs = [pool.submit(time.sleep, 60) for _ in range(2)]
print(" ".join(map(str, _children(os.getpid()))), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
@pytest.mark.parametrize("armed", [False, True], ids=["while-they-start", "while-they-work"])
def test_reader_processes_exit_when_their_run_is_killed(tmp_path: Path, armed: bool):
    """A ``dedup --method all`` killed while its spawned workers were still importing left them (and
    multiprocessing's resource tracker) alive for good: a worker armed its parent watch only after its
    imports, by when its parent was already init, which it took for the run."""
    out, err = tmp_path / "out", tmp_path / "err"  # files, not pipes: a process left behind holds a pipe open
    with out.open("w") as o, err.open("w") as e:
        rc = subprocess.call([sys.executable, "-c", POOL_PARENT.format(armed=armed), str(tmp_path / "t.lance")],
                             cwd=REPO, stdout=o, stderr=e, timeout=120)
    assert rc == -signal.SIGKILL, err.read_text()
    kids = [int(p) for p in out.read_text().split()]
    assert len(kids) >= 2, out.read_text()
    deadline = time.time() + 20  # a worker still importing lance exits when its initializer runs
    while time.time() < deadline and [p for p in kids if Path(f"/proc/{p}").exists()]:
        time.sleep(0.2)
    left = [p for p in kids if Path(f"/proc/{p}").exists()]
    for p in left:
        os.kill(p, signal.SIGKILL)
    assert not left, "processes of a killed run left behind"


def test_checkpoints_belong_to_the_table_that_made_them(tmp_path: Path, monkeypatch):
    """An object-store lake keeps its checkpoints in a local cache by URI: a lake emptied and ingested
    anew at that URI (as many rows, other photos) resumed the old lake's saved batches, and its new
    rows held the old photos' vectors."""
    cache = tmp_path / "cache"
    monkeypatch.setattr(columns, "checkpoint_root", lambda uri, branch: cache)  # one URI's cache, two tables
    old, new = Lake.create(tmp_path / "old"), Lake.create(tmp_path / "new")
    old.append(pair_rows(0, 12))
    new.append(pair_rows(500, 12))
    frag_old, frag_new = old.dataset().get_fragments()[0], new.dataset().get_fragments()[0]
    assert (frag_old.fragment_id, frag_old.count_rows()) == (frag_new.fragment_id, frag_new.count_rows())
    batch = pa.table({"v": pa.array(range(4), pa.int32())})
    columns.Checkpoint(old, "stage").save(frag_old, 0, batch)
    assert columns.Checkpoint(old, "stage").load(frag_old)[0].equals(batch)  # its own table resumes
    assert columns.Checkpoint(new, "stage").load(frag_new) == {}


def words_in_fragments(root: Path, n: int) -> tuple[Lake, RowStage]:
    """A lake of ``n`` fragments of 10 rows and a stage counting their captions' words, 4 rows a batch;
    a saved batch of it: ``batch_of(value)``."""
    lake = Lake.create(root / "lake")
    for f in range(n):
        lake.append(pair_rows(f * 10, 10))

    def words(setup, rows):
        return pa.table({"nwords": pa.array([len((c or "").split()) for c in rows.columns["caption"].to_pylist()],
                                            pa.int32())})

    return lake, RowStage("words", [pa.field("nwords", pa.int32())], {"v": 1}, ["caption"], batch=words, batch_size=4)


def batch_of(value: int) -> pa.Table:
    """A saved batch of :func:`words_in_fragments`' stage: its first 4 rows, each ``value``."""
    return pa.table({"nwords": pa.array([value] * 4, pa.int32()), "_offset": pa.array(range(4), pa.int64())})


def test_saved_batches_of_a_committed_fragment_do_not_outlive_the_next_run(tmp_path: Path):
    """A run killed after a fragment's commit and before it dropped that fragment's saved batches
    left them for good (a probe found 68 KB under _lakecurate/checkpoints after every stage read
    current): a later run with other fragments to compute drops them; the saved batches of a
    fragment still to fill past --max-fragments are kept, and resumed."""
    lake, stage = words_in_fragments(tmp_path, 3)
    assert runner.run(lake, stage, workers=0, progress=False, max_fragments=1).fragments == 1
    ckpt = columns.Checkpoint(lake, stage.checkpoint_key)
    f0, _, f2 = lake.dataset().get_fragments()
    ckpt.save(f0, 0, batch_of(1))  # (the killed run's leftover; below: f2's first batch, saved by a killed run)
    planted = batch_of(7)
    ckpt.save(f2, 0, planted)
    assert runner.run(lake, stage, workers=0, progress=False, max_fragments=1).fragments == 1  # f1 only
    assert not ckpt._dir(f0).exists()  # f0's leftover is gone
    assert ckpt.load(lake.dataset().get_fragments()[2])[0].equals(planted)  # f2's, still to fill, is kept
    runner.run(lake, stage, workers=0, progress=False)
    assert lake.dataset().get_fragments()[2].to_table(columns=["nwords"]).column(0).to_pylist()[:4] == [7] * 4  # resumed
    assert not ckpt.root.exists() or not any(ckpt.root.iterdir())


def test_a_run_never_drops_the_saved_batches_of_a_fragment_another_live_run_holds(tmp_path: Path):
    """A plain run pruned the saved batches of every fragment it found filled, but a `--recompute`
    running beside it claims and recomputes exactly those (same checkpoint key): the live run lost
    what it would resume from. A fragment whose claim a live run holds keeps its batches."""
    lake, stage = words_in_fragments(tmp_path, 2)
    runner.run(lake, stage, workers=0, progress=False)
    other = columns.FragmentClaims(lake, stage.checkpoint_key)  # the live run (this process): f0 claimed,
    assert other.take([0]) == ([0], {})                          # its first batch saved
    ckpt = columns.Checkpoint(lake, stage.checkpoint_key)
    f0 = lake.dataset().get_fragments()[0]
    saved = batch_of(3)
    ckpt.save(f0, 0, saved)
    lake.append(pair_rows(100, 10))  # a new fragment: the plain run has work to do
    assert runner.run(lake, stage, workers=0, progress=False).fragments == 1
    assert runner.run(lake, stage, workers=0, progress=False).fragments == 0  # (and with nothing to do)
    assert ckpt.load(f0)[0].equals(saved)  # the live run's batch is still there
    other.release()
    runner.run(lake, stage, workers=0, progress=False)  # its claim gone: a later run drops what is left
    assert not ckpt._dir(f0).exists()


def test_a_killed_runs_claims_are_swept_by_the_next_run(tmp_path: Path):
    """A run killed with SIGKILL left its claims on the fragments it had committed and its StageRun
    slot: no later run takes those again, so the files piled up for good. The next run removes the
    claims of runs that are gone (a dead process), never a live run's."""
    from lakecurate.columns import FragmentClaims, StageRun, host_name

    lake, stage = words_in_fragments(tmp_path, 2)
    runner.run(lake, stage, workers=0, progress=False, max_fragments=1)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    claims, slots = FragmentClaims(lake, stage.checkpoint_key), FragmentClaims(lake, "run-dedup")
    for c, name in ((claims, "f0"), (slots, "f123456")):
        c.root.mkdir(parents=True, exist_ok=True)
        (c.root / name).write_text(f"{host_name()} {dead} 0badc0de")  # (the killed run's)
    live = FragmentClaims(lake, "run-dedup")
    live.take([7])  # a live run's slot (this process)
    runner.run(lake, stage, workers=0, progress=False)
    assert not (claims.root / "f0").exists()
    with StageRun(lake, "dedup"):
        assert not (slots.root / "f123456").exists() and (slots.root / "f7").exists()
    live.release()
