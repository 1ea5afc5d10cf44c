"""Export: destinations (never in the lake; --overwrite replaces exactly the earlier export), option
checks, repeats spread through the order, shards as the sequence cut them, json types stable."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
from collections import Counter, defaultdict
from pathlib import Path

import lance
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from lakecurate import Lake, LakeError
from lakecurate.cli import main
from lakecurate.export import FORMATS, spread_copies
from lakecurate.options import overlaps
from lakecurate.plant import synthetic_pairs

from .conftest import SAMPLE_DATA


@pytest.fixture(scope="module")
def seq_lake(sample_lake_embedded: Lake, tmp_path_factory) -> Lake:
    """Concepts, a rebalance with repeats and an interleaved order cut into shards of 7 rows.
    Shared by the tests of this module, which only read it."""
    lake = Lake.open(shutil.copytree(sample_lake_embedded.uri, tmp_path_factory.mktemp("export") / "lake"))
    lake.cluster(4)
    lake.rebalance(0.8, max_repeats=3, temperature=0.2)  # 21 rows, 33 samples with repeats
    lake.sequence("interleave", shard_size=7)
    return lake


def dest_for(tmp_path: Path, fmt: str, name: str = "out") -> Path:
    return tmp_path / (f"{name}.parquet" if fmt == "parquet" else name)


def needs(fmt: str) -> None:
    if fmt == "mds":
        pytest.importorskip("streaming", reason="mosaicml-streaming is installed by .ci/run (see the README)")


def read_json(folder: Path, shards: list[str] | None = None) -> list[list[dict]]:
    """The .json of every sample, per shard (shards in name order, members in tar order)."""
    out = []
    for tar in sorted(folder.glob("shard-*.tar")) if shards is None else [folder / s for s in shards]:
        with tarfile.open(tar) as t:
            out.append([json.loads(t.extractfile(m).read()) for m in t.getmembers() if m.name.endswith(".json")])
    return out


def exported_rows(dest: Path, fmt: str) -> list[tuple[str, int]]:
    """(id, copy) of every sample in export order."""
    if fmt == "webdataset":
        return [(m["id"], m["copy"]) for shard in read_json(dest) for m in shard]
    tbl = pq.read_table(dest) if fmt == "parquet" else lance.dataset(str(dest)).to_table()
    return list(zip(tbl.column("id").to_pylist(), tbl.column("copy").to_pylist()))


# --------------------------------------------------------------------------- destinations
@pytest.mark.parametrize("fmt", FORMATS)
def test_refuses_destinations_inside_the_lake(seq_lake: Lake, tmp_path: Path, fmt: str):
    needs(fmt)
    root = Path(seq_lake.uri)
    (tmp_path / "link").symlink_to(root)  # the same folder reached through a symlink
    version, rows = seq_lake.version, seq_lake.count()
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    for dest in (root / "pairs.lance", root, root / "pairs.lance" / "tree" / "b1", root / "sub" / "out",
                 tmp_path / "link" / "pairs.lance", root.parent):
        with pytest.raises(LakeError, match="inside lake") as err:
            seq_lake.export(dest, fmt, overwrite=True)
        assert "\n" not in str(err.value)
    assert seq_lake.version == version and seq_lake.count() == rows
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before  # nothing written in the lake


@pytest.mark.parametrize("fmt", ["webdataset", "parquet"])
def test_refuses_destinations_that_cannot_be_made(seq_lake: Lake, tmp_path: Path, fmt: str):
    """A file where a parent folder should be, or a folder nobody may write into: one line naming the
    path, before any work (these were FileExistsError / FileNotFoundError tracebacks)."""
    (tmp_path / "afile").write_text("x")
    with pytest.raises(LakeError, match=r"cannot be written: '.*afile' is a file, not a folder"):
        seq_lake.export(tmp_path / "afile" / "sub" / "out", fmt)
    with pytest.raises(LakeError, match=r"cannot be written: folder '/proc' is not writable"):
        seq_lake.export("/proc/lakecurate-export", fmt)
    for name in ("afile/sub", "/proc/x.html"):
        out = name if name.startswith("/") else str(tmp_path / name)
        res = CliRunner().invoke(main, ["report", seq_lake.uri, out])
        assert res.exit_code != 0 and "cannot be written" in res.output and "Traceback" not in res.output


def test_overlaps_local_paths_and_uris(tmp_path: Path):
    assert overlaps("s3://bucket/lake//pairs.lance/", "s3://bucket/lake")
    assert overlaps("s3://bucket/other/../lake/pairs.lance/tree/b1", "s3://bucket/lake/")
    assert overlaps("S3://bucket/lake", "s3://bucket/lake") and overlaps("s3://bucket", "s3://bucket/lake")
    assert not overlaps("s3://bucket/lake2", "s3://bucket/lake") and not overlaps("gs://bucket/lake/x", "s3://bucket/lake")
    assert overlaps(f"file://{tmp_path}/lake/x", str(tmp_path / "lake"))
    assert overlaps(str(tmp_path / "lake" / ".." / "lake" / "x"), str(tmp_path / "lake"))
    assert not overlaps(str(tmp_path / "lake-out"), str(tmp_path / "lake"))


@pytest.mark.parametrize("fmt", [f for f in FORMATS if f != "mds"])  # mds: test_mds_round_trip_equals_the_lake
def test_overwrite_replaces_exactly_the_earlier_export(seq_lake: Lake, tmp_path: Path, fmt: str):
    dest = dest_for(tmp_path, fmt)
    shards = (lambda n: {"shard_size": n}) if fmt == "webdataset" else (lambda n: {})
    first = seq_lake.export(dest, fmt, **shards(2))
    if fmt == "webdataset":
        (dest / "README.txt").write_text("mine")  # not written by the export: overwrite keeps it
        assert len(first.files) > 3
    second = seq_lake.export(dest, fmt, **shards(5), repeats=False, overwrite=True)
    assert second.samples < first.samples
    got = exported_rows(dest, fmt)
    assert len(got) == second.samples and all(copy == 0 for _, copy in got)
    if fmt == "webdataset":
        manifest = json.loads((dest / "manifest.json").read_text())
        on_disk = sorted(p.name for p in dest.iterdir())
        assert on_disk == sorted(manifest["shards"] + ["README.txt", "manifest.json"])  # no stale shard
        assert manifest["samples"] == second.samples and len(manifest["shards"]) == -(-second.samples // 5)
        # each file with its sha256: a copied export can be checked (the manifest had counts, no digests)
        assert manifest["sha256"] == {n: hashlib.sha256((dest / n).read_bytes()).hexdigest() for n in manifest["shards"]}
    else:
        manifest = json.loads(Path(f"{dest}.manifest.json").read_text())
        assert manifest["samples"] == second.samples
        if fmt == "parquet":
            assert manifest["sha256"] == {dest.name: hashlib.sha256(dest.read_bytes()).hexdigest()}
        else:
            assert "sha256" not in manifest  # (a Lance table: its own files and versions)
    if fmt == "lance":
        assert len(lance.dataset(str(dest)).versions()) == 1  # a fresh table, not the old one's next version
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [dest.name] + ([f"{dest.name}.manifest.json"] if fmt != "webdataset" else []))  # no staging folder left


@pytest.mark.parametrize("fmt", FORMATS)
def test_overwrite_refuses_what_no_export_wrote(seq_lake: Lake, tmp_path: Path, fmt: str):
    needs(fmt)
    dest = dest_for(tmp_path, fmt)
    if fmt == "parquet":
        pq.write_table(pa.table({"x": [1, 2]}), dest)
    else:
        dest.mkdir()
        (dest / "precious.txt").write_text("keep me")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(LakeError, match="not an earlier lakecurate") as err:
        seq_lake.export(dest, fmt, overwrite=True)
    assert str(dest) in str(err.value)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_overwrite_of_another_format_s_export_names_that_format(seq_lake: Lake, tmp_path: Path):
    """A WebDataset export overwritten as MDS was refused as "not an earlier mds export (no
    manifest.json naming its files)", though its manifest.json was there: it names the format."""
    dest = tmp_path / "wds"
    seq_lake.export(dest, "webdataset", progress=False)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(LakeError, match="holds an earlier lakecurate webdataset export, not a mds one; overwrite "
                                        "replaces an export of the same format: give format='webdataset'"):
        seq_lake.export(dest, "mds", overwrite=True)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("bad", [0, -5, 2.5, True])
def test_bad_shard_size_is_refused_before_writing(seq_lake: Lake, tmp_path: Path, bad):
    with pytest.raises(LakeError, match="^invalid shard_size "):
        seq_lake.export(tmp_path / "wds", "webdataset", shard_size=bad)
    assert not (tmp_path / "wds").exists() and list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- order and shards
def check_spread(reps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rows, copies = spread_copies(reps)
    m = len(rows)
    assert m == reps.sum() and sorted(rows.tolist()) == sorted(np.repeat(np.arange(len(reps)), reps).tolist())
    positions = defaultdict(list)
    for pos, (row, copy) in enumerate(zip(rows, copies)):
        positions[row].append((pos, copy))
    for row, seen in positions.items():
        assert [c for _, c in seen] == list(range(reps[row]))  # copy 0 first, then 1, ...
        gaps = np.diff([p for p, _ in seen])
        assert (gaps >= m / (2 * reps[row])).all(), (row, seen)  # a row's copies are far apart
    return rows, copies


def test_repeats_are_spread_through_the_order():
    # The export: 386 rows, 30 of them (two small concepts, spread over the order) up-sampled 2x.
    reps = np.ones(386, np.int64)
    reps[np.arange(30) * 12] = 2
    rows, copies = check_spread(reps)
    repeat_at = np.flatnonzero(copies > 0)
    assert not (copies[-len(repeat_at):] > 0).all()  # the last positions are not all repeats
    assert repeat_at.max() - repeat_at.min() > len(rows) / 3
    tail = copies[-len(rows) // 10 :]
    assert (tail > 0).mean() < 0.5
    # Random repeats 1..3: every row's copies evenly apart, first copies keep the sequence's order.
    reps = np.random.default_rng(0).integers(1, 4, 500)
    rows, copies = check_spread(reps)
    first = rows[copies == 0]
    assert (first[reps[first] == 1] == np.sort(first[reps[first] == 1])).all()


def test_export_spreads_repeats_and_follows_the_sequence(seq_lake: Lake, tmp_path: Path):
    df = seq_lake.to_pandas(["id", "seq_order", "repeats"], where="rebalance_keep").sort_values("seq_order")
    assert (df["repeats"] > 1).any()
    seq_lake.export(tmp_path / "out.parquet", "parquet")
    got = exported_rows(tmp_path / "out.parquet", "parquet")
    assert len(got) == df["repeats"].sum()
    pos = defaultdict(list)
    for p, (i, _) in enumerate(got):
        pos[i].append(p)
    reps = dict(zip(df["id"], df["repeats"]))
    for i, ps in pos.items():
        assert len(ps) == reps[i] and (np.diff(ps) >= len(got) / (2 * reps[i])).all()
    assert [i for i, c in got if c == 0 and reps[i] == 1] == [i for i in df["id"] if reps[i] == 1]
    n_repeats = sum(c > 0 for _, c in got)
    assert not all(c > 0 for _, c in got[-n_repeats:])  # the repeats are not the last samples


def test_shards_follow_the_sequence_shard_size(seq_lake: Lake, tmp_path: Path):
    rep = seq_lake.export(tmp_path / "wds", "webdataset", repeats=False)
    df = seq_lake.to_pandas(["id", "seq_shard"], where="rebalance_keep")
    want = [sorted(g["id"]) for _, g in sorted(df.groupby("seq_shard"))]
    got = [sorted(m["id"] for m in shard) for shard in read_json(tmp_path / "wds", rep.files)]
    assert len(want) > 1 and got == want  # shard i holds the rows the sequence put in shard i
    assert json.loads((tmp_path / "wds" / "manifest.json").read_text())["shard_size"] == 7
    rep = seq_lake.export(tmp_path / "wds5", "webdataset", repeats=False, shard_size=5)  # an explicit size wins
    assert [len(s) for s in read_json(tmp_path / "wds5", rep.files)][:-1] == [5] * (rep.shards - 1)


# --------------------------------------------------------------------------- json types
@pytest.fixture
def gappy_lake(lake: Lake) -> Lake:
    """40 rows whose content_hash, width and height are null in the first 25 and set later."""
    tbl = synthetic_pairs(0, 40)
    for name, later in (("content_hash", [f"h{i}" for i in range(15)]), ("width", list(range(15))), ("height", [8] * 15)):
        values = pa.array([None] * 25 + later, tbl.schema.field(name).type)
        tbl = tbl.set_column(tbl.schema.get_field_index(name), name, values)
    lake.append(tbl)
    return lake


def test_json_keys_keep_one_type(gappy_lake: Lake, tmp_path: Path):
    rep = gappy_lake.export(tmp_path / "wds", "webdataset", shard_size=8)
    samples = [m for shard in read_json(tmp_path / "wds", rep.files) for m in shard]
    assert len(samples) == 40 and rep.shards == 5
    keys = set(samples[0])
    assert {"content_hash", "width", "height", "copy"} <= keys
    for key in keys:
        types = {type(m[key]).__name__ for m in samples if key in m}
        assert len(types) == 1 and "NoneType" not in types, (key, types)
    assert all(set(m) == keys for m in samples)
    manifest = json.loads((tmp_path / "wds" / "manifest.json").read_text())
    assert manifest["json_placeholders"]["content_hash"] == "" and manifest["json_placeholders"]["width"] == -1


def test_json_loads_in_hf_datasets(gappy_lake: Lake, tmp_path: Path):
    datasets = pytest.importorskip("datasets")
    rep = gappy_lake.export(tmp_path / "wds", "webdataset", shard_size=8)
    ds = datasets.load_dataset("webdataset", data_files=[str(tmp_path / "wds" / f) for f in rep.files], split="train",
                               cache_dir=str(tmp_path / "hf"))
    assert ds.num_rows == 40 and ds[39]["json"]["content_hash"] == "h14"


def test_export_leaves_no_staging_folder_on_failure(seq_lake: Lake, tmp_path: Path):
    with pytest.raises(LakeError, match="no rows"):
        seq_lake.export(tmp_path / "x.parquet", "parquet", where="id = 'none'")
    assert list(tmp_path.iterdir()) == []


def test_mds_round_trip_equals_the_lake(seq_lake: Lake, tmp_path: Path):
    """MosaicML Streaming shards: StreamingDataset reads every sample in the export's order, each
    image byte-identical to the lake's and each caption the lake's; the manifest sits beside them."""
    pytest.importorskip("streaming", reason="mosaicml-streaming is installed by .ci/run (see the README)")
    from streaming import StreamingDataset

    dest = tmp_path / "mds"
    rep = seq_lake.export(dest, "mds")
    manifest = json.loads((dest / "manifest.json").read_text())
    assert manifest["format"] == "mds" and "index.json" in manifest["shards"] and rep.shards >= 1
    ds = StreamingDataset(local=str(dest), shuffle=False, batch_size=1)
    samples = [ds[i] for i in range(len(ds))]
    assert len(samples) == rep.samples == manifest["samples"] > manifest["rows"]  # repeats are samples
    assert [s["export_key"] for s in samples] == sorted(s["export_key"] for s in samples)
    lake = seq_lake.dataset()
    by_id = {r["id"]: r for r in lake.to_table(columns=["id", "caption", "key"]).to_pylist()}
    for s in samples:
        meta = s["json"]
        row = by_id[meta["id"]]
        assert s["caption"] == (row["caption"] or "")  # a missing caption is empty text, as in WebDataset
        assert s["image"] == (SAMPLE_DATA / row["key"]).read_bytes()
    want = Counter(lake.to_table(columns=["id"], filter="rebalance_keep").column("id").to_pylist())
    got = Counter(s["json"]["id"] for s in samples)
    assert set(got) == set(want) and sum(got.values()) == rep.samples
    # an MDS export is replaced only with --overwrite, and only its own files
    with pytest.raises(LakeError, match="exists and is not empty"):
        seq_lake.export(dest, "mds")
    (dest / "mine.txt").write_text("keep me")
    seq_lake.export(dest, "mds", overwrite=True)
    assert (dest / "mine.txt").read_text() == "keep me"
    with pytest.raises(LakeError, match="^shard_size is for WebDataset"):
        seq_lake.export(tmp_path / "other", "mds", shard_size=5)
    # a Parquet destination that names a folder: it wrote a file named like the folder, which
    # ingest then could not tell from anything
    for dest in (f"{tmp_path / 'pq'}/", str(tmp_path)):
        with pytest.raises(LakeError, match="names a folder; a Parquet export is one file: give its name"):
            seq_lake.export(dest, "parquet")
    assert not (tmp_path / "pq").exists()
    for fmt, one in (("parquet", "file"), ("lance", "table")):  # accepted and ignored before
        with pytest.raises(LakeError, match=f"format {fmt} writes one {one}: leave it out"):
            seq_lake.export(tmp_path / f"other.{fmt}", fmt, shard_size=5)
        assert not (tmp_path / f"other.{fmt}").exists()
    from click.testing import CliRunner

    from lakecurate.cli import main

    res = CliRunner().invoke(main, ["export", seq_lake.uri, str(tmp_path / "cli"), "--format", "mds", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output[res.output.index("{"):])
    assert out["format"] == "mds" and out["samples"] == rep.samples and (tmp_path / "cli" / "index.json").is_file()


def test_an_existing_file_is_refused_in_plain_words(seq_lake: Lake, tmp_path: Path):
    dest = tmp_path / "out.parquet"
    dest.write_bytes(b"")  # an empty file is still a file of the user's: refused, and not called "not empty"
    with pytest.raises(LakeError, match=r"out.parquet' exists; choose another destination or pass overwrite=True"):
        seq_lake.export(dest, "parquet")
    assert dest.read_bytes() == b""


@pytest.mark.parametrize("fmt", ["webdataset", "lance"])
def test_export_to_the_current_folder_and_error_rows_are_never_samples(seq_lake: Lake, tmp_path: Path, fmt: str,
                                                                       monkeypatch):
    """`export LAKE .` was a traceback in every format (the staging folder was named '..x.partial'
    inside '.'); a view with ingest errors in it (--where true) exported rows without an image."""
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    res = CliRunner().invoke(main, ["export", seq_lake.uri, ".", "--format", fmt, "--where", "true", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["rows"] == seq_lake.count("ingest_status <> 'error'")
    # the sequence ordered the rebalanced rows only: the others go last, and it says so (it was silent)
    unordered = seq_lake.count("ingest_status <> 'error' AND seq_order IS NULL")
    assert f"warning: exported although {unordered} of the" in res.stderr and "have no seq_order" in res.stderr
    ids = {i for i, _ in exported_rows(here, fmt)}
    errors = set(seq_lake.to_pandas(["id"], where="ingest_status = 'error'")["id"])
    assert errors and not ids & errors
    assert sorted(p.name for p in tmp_path.iterdir()) == ["here"] + (["here.manifest.json"] if fmt == "lance" else [])
    assert os.path.samefile(os.getcwd(), here)  # the folder the shell is in was filled, not replaced


@pytest.mark.parametrize("fmt", FORMATS)
def test_an_empty_selection_is_refused_in_every_format_before_a_folder_is_made(seq_lake: Lake, tmp_path: Path, fmt: str):
    """WebDataset and MDS wrote an empty export (MDS after 3 s), Parquet and Lance refused: and the
    Parquet refusal came after DEST's parent folders were made."""
    needs(fmt)
    dest = dest_for(tmp_path / "a" / "b", fmt)
    with pytest.raises(LakeError, match=r"no rows to export from lake .* with where 'false'; nothing was written"):
        seq_lake.export(dest, fmt, where="false")
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("fmt", ["webdataset", "parquet"])
def test_an_overwrite_killed_in_its_swap_is_replaced_by_the_next(seq_lake: Lake, tmp_path: Path, fmt: str, monkeypatch):
    """Killed after the earlier manifest went and before the new one came, DEST held shards and no
    manifest, and every later --overwrite refused it as not an export."""
    import lakecurate.export as export_mod

    dest = dest_for(tmp_path, fmt)
    seq_lake.export(dest, fmt, shard_size=5 if fmt == "webdataset" else None)
    real, moves = os.replace, []

    def dies(a, b):
        moves.append(b)
        if len(moves) == 2:
            raise SystemExit("killed")  # stands for kill -9: no clean-up of DEST runs
        return real(a, b)

    monkeypatch.setattr(export_mod.os, "replace", dies)
    with pytest.raises(SystemExit):
        seq_lake.export(dest, fmt, shard_size=4 if fmt == "webdataset" else None, overwrite=True)
    monkeypatch.setattr(export_mod.os, "replace", real)
    assert not export_mod.manifest_path(dest, fmt).exists()  # the half-swapped state
    rep = seq_lake.export(dest, fmt, shard_size=4 if fmt == "webdataset" else None, overwrite=True)
    clean = dest_for(tmp_path / "clean", fmt)
    seq_lake.export(clean, fmt, shard_size=4 if fmt == "webdataset" else None)
    assert exported_rows(dest, fmt) == exported_rows(clean, fmt)
    if fmt == "webdataset":
        assert sorted(p.name for p in dest.iterdir()) == sorted(p.name for p in clean.iterdir()) == sorted(
            rep.files + ["manifest.json"])
    assert not list(tmp_path.glob("*.swap")) and not list(dest.parent.glob("**/*.swap"))


def test_a_mixed_format_export_loads_in_hf_datasets_with_one_image_ext(tmp_path: Path):
    """JPEG and PNG samples as KEY.jpg and KEY.png: Hugging Face datasets refused the shards ("don't
    share the same prefix or the same types") or dropped the PNG one. --image-ext names them alike."""
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    pairs = tmp_path / "pairs"
    pairs.mkdir()
    for i in range(6):
        fmt, ext = ("PNG", "png") if i == 3 else ("JPEG", "jpg")
        Image.new("RGB", (20, 20), (40 * i, 0, 0)).save(pairs / f"p{i}.{ext}", fmt)
        (pairs / f"p{i}.txt").write_text(f"pair {i}")
    lake = Lake.create(tmp_path / "lake")
    lake.ingest(pairs, progress=False)
    rep = lake.export(tmp_path / "wds", "webdataset", where="true", image_ext="jpg")
    ds = datasets.load_dataset("webdataset", data_files=[str(tmp_path / "wds" / f) for f in rep.files], split="train",
                               cache_dir=str(tmp_path / "hf"))
    assert ds.num_rows == 6 and sorted(r["json"]["format"] for r in ds) == ["JPEG"] * 5 + ["PNG"]
    png = next(r for r in ds if r["json"]["format"] == "PNG")
    assert png["jpg"].format == "PNG" and png["jpg"].size == (20, 20)  # PIL read it by its bytes
    assert json.loads((tmp_path / "wds" / "manifest.json").read_text())["image_ext"] == "jpg"
    for bad, says in (("JPG!", "lower-case letters"), ("txt", "caption or metadata")):
        with pytest.raises(LakeError, match=says):
            lake.export(tmp_path / "bad", "webdataset", where="true", image_ext=bad)
    with pytest.raises(LakeError, match="format parquet has none"):
        lake.export(tmp_path / "bad.parquet", "parquet", where="true", image_ext="jpg")
    assert not (tmp_path / "bad").exists()


def test_a_version_cleaned_up_while_export_reads_it_is_a_one_line_error(tmp_path: Path, monkeypatch):
    """compact + cleanup --older-than-days 0 in another process while an export read the lake: the
    export died with a Lance "Not found" traceback. Now one line that says what happened."""
    from datetime import timedelta

    from lakecurate import export as export_mod

    lake = Lake.create(tmp_path / "lake")
    for k in range(3):
        lake.append(synthetic_pairs(10 * k, 10))
    real = export_mod._chunks
    cleaned = []

    def chunks(ds, tbl, *a, **kw):
        if not cleaned:  # another process compacts and cleans up just as the images are read
            other = Lake.open(lake.uri)
            other.compact()
            cleaned.append(other.cleanup(older_than=timedelta(0)))
        yield from real(ds, tbl, *a, **kw)

    monkeypatch.setattr(export_mod, "_chunks", chunks)
    res = CliRunner().invoke(main, ["export", lake.uri, str(tmp_path / "out"), "--where", "true", "--json"])
    assert res.exit_code == 1 and cleaned, res.output
    error = json.loads(res.stdout)["error"]
    assert "pairs.lance/" in error and "was removed while this command read it" in error and "run it again" in error
    assert "Traceback" not in res.output and not (tmp_path / "out").exists()


def test_a_recipes_tag_exports_its_own_rows_after_rebalancing_went_stale(sample_lake_embedded: Lake, tmp_path: Path):
    """The pipeline flow: rebalance and sequence ran, then a changed recipe re-ran curate (a new
    tag). Exporting that tag was refused (rebalance is stale there, and its fix runs on the latest,
    so the tag could never be exported), and with --allow-stale it exported the older recipe's
    rebalanced rows. A tag is exported as it was: its recipe's rows, in table order, each once,
    with warnings saying so; evaluate's view of it is the same rows."""
    from lakecurate import evaluate

    lake = Lake.open(shutil.copytree(sample_lake_embedded.uri, tmp_path / "lake"))
    lake.curate({"name": "strict", "step": [{"filter": "ingest_error"}, {"filter": "caption_missing"},
                                            {"filter": "caption_length", "min_words": 6}]}, progress=False)
    lake.cluster(3)
    lake.rebalance(0.6)
    lake.sequence("interleave", shard_size=5)
    rep = lake.curate({"name": "looser", "step": [{"filter": "ingest_error"}]}, progress=False)
    keep = lake.dataset(rep.tag).count_rows(filter="keep AND ingest_status <> 'error'")
    assert keep != lake.dataset(rep.tag).count_rows(filter="rebalance_keep")
    out = lake.export(tmp_path / "tag.parquet", "parquet", version=rep.tag)
    assert out.rows == out.samples == keep
    assert any("rebalance_keep skipped" in w for w in out.stale) and any("seq_order not used" in w for w in out.stale)
    got = pq.read_table(tmp_path / "tag.parquet", columns=["id"]).column("id").to_pylist()
    tagged = lake.dataset(rep.tag).to_table(columns=["id"], filter="keep AND ingest_status <> 'error'")
    assert sorted(got) == sorted(tagged.column("id").to_pylist())
    assert lake.export(tmp_path / "k.parquet", "parquet", version=rep.tag, where="keep", repeats=False).rows == keep
    assert evaluate._selection(lake, rep.tag)[1] == "keep"
    with pytest.raises(LakeError, match="stale"):  # the latest is not a past version: its fix runs, so it is refused
        lake.export(tmp_path / "latest.parquet", "parquet")


def test_export_options_are_checked_before_the_destination(sample_lake_embedded: Lake, tmp_path: Path):
    """An empty destination was the working directory; caption=1,caption=1 merged to one weight
    without a word; and a full destination was reported before a bad --caption-mix, so fixing
    one error only showed the next."""
    full = tmp_path / "full"
    full.mkdir()
    (full / "mine.txt").write_text("x")
    with pytest.raises(LakeError, match="the export destination is empty"):
        sample_lake_embedded.export("", "webdataset")
    with pytest.raises(LakeError, match="names caption twice"):
        sample_lake_embedded.export(full, "webdataset", caption_mix="caption=1,caption=1")
    with pytest.raises(LakeError, match="exists and is not empty"):
        sample_lake_embedded.export(full, "webdataset", caption_mix="caption=1")


def test_an_export_removes_the_partial_folders_killed_exports_left(seq_lake: Lake, tmp_path: Path):
    """A SIGKILLed export left its hidden staging folder (up to a full copy) beside DEST for good;
    the next export removes those of exports no longer running, and only those."""
    import subprocess
    import sys

    from lakecurate.columns import host_name

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = host_name()
    dead = tmp_path / f".out.{int(gone.stdout)}@{host}.abcd1234.partial"
    live = tmp_path / f".out.{os.getpid()}@{host}.efgh5678.partial"  # an export of this process, still running
    other = tmp_path / f".out.{int(gone.stdout)}@not-{host}.ijkl9012.partial"  # another host's: cannot tell
    for stage in (dead, live, other):
        (stage / "out").mkdir(parents=True)
        (stage / "out" / "shard-000000.tar").write_bytes(b"x" * 100)
    result = CliRunner().invoke(main, ["export", seq_lake.uri, str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "removed 1 partial folder left by an interrupted export" in result.output
    assert not dead.exists() and live.exists() and other.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other.name, "out"])


def test_rows_a_newer_rebalance_chose_are_said_to_be_unordered_because_it_changed(seq_lake: Lake, tmp_path: Path):
    """The order was made of rebalance_keep; a rebalance since chose other rows: the warning said
    "the sequence ordered the rows of 'rebalance_keep', not 'rebalance_keep'"."""
    lake = Lake.open(shutil.copytree(seq_lake.uri, tmp_path / "lake"))
    lake.rebalance(1.0, max_repeats=1)  # every candidate: more rows than the order holds
    assert lake.count("rebalance_keep AND seq_order IS NULL") > 0
    res = CliRunner().invoke(main, ["export", lake.uri, str(tmp_path / "out.parquet"), "--format", "parquet",
                                    "--allow-stale"])
    assert res.exit_code == 0, res.output
    said = " ".join(res.stderr.split())
    assert "have no seq_order" in said and "rebalance_keep changed since the sequence ordered its rows" in said, said
    assert "not 'rebalance_keep'" not in said


# --------------------------------------------------------------------------- hardening
def test_an_export_that_reached_dest_first_is_never_mixed_with_another(seq_lake: Lake, tmp_path: Path, monkeypatch):
    """Two exports to one new DEST at once both exited 0: the manifest listed one's shards, the
    other's stayed beside them (ids twice). The later is refused; with overwrite it replaces
    exactly the export that is there when it swaps, not the one it saw when it started."""
    import lakecurate.export as ex

    dest, real = tmp_path / "out", ex._write_shards

    def racing(other: dict):
        def write(*args, **kwargs):
            monkeypatch.setattr(ex, "_write_shards", real)  # the other export writes plainly, and first
            seq_lake.export(dest, **other)
            return real(*args, **kwargs)
        return write

    def consistent(size: int) -> None:
        m = json.loads((dest / "manifest.json").read_text())
        assert m["shard_size"] == size and sorted(p.name for p in dest.glob("shard-*.tar")) == sorted(m["shards"])
        assert len(exported_rows(dest, "webdataset")) == m["samples"] > 0
        assert not list(tmp_path.glob(".out.*.partial"))

    monkeypatch.setattr(ex, "_write_shards", racing({"shard_size": 5}))
    with pytest.raises(LakeError, match="another export wrote .*out' while this one ran; nothing of this one was moved "
                                        "there: .* exists and is not empty"):
        seq_lake.export(dest, shard_size=20)
    consistent(5)
    monkeypatch.setattr(ex, "_write_shards", racing({"shard_size": 3, "overwrite": True}))  # 8 shards, 5 before
    seq_lake.export(dest, shard_size=20, overwrite=True)
    consistent(20)


def test_a_branch_given_as_the_version_is_the_manifests_branch(seq_lake: Lake, tmp_path: Path):
    """--version exp recorded "branch": "main" (and main's tags) with the branch's version number."""
    lake = Lake.open(shutil.copytree(seq_lake.uri, tmp_path / "lake"))
    branch = lake.create_branch("exp")
    branch.sequence("random", shard_size=8)
    branch.tag("exp-ordered")
    lake.tag("main-latest")
    rep = lake.export(tmp_path / "out", version="exp")
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert (m["branch"], m["version"], m["tags"], m["order"]["mode"]) == ("exp", rep.version, ["exp-ordered"], "random")
    m = json.loads(Path(f"{lake.export(tmp_path / 'main.parquet', 'parquet').dest}.manifest.json").read_text())
    assert (m["branch"], m["tags"]) == ("main", ["main-latest"])


@pytest.mark.parametrize("fmt", ["webdataset", "parquet"])
def test_long_destination_names_are_staged_or_refused_in_one_line(seq_lake: Lake, tmp_path: Path, fmt: str):
    """A 240-byte name (the file system holds 255) failed making its staging folder
    (.NAME.PID@HOST.XXXX.partial) and a 300-byte one in a stat: OSError tracebacks, --json printed nothing."""
    fits = "x" * (236 - len(".parquet")) + ".parquet" if fmt == "parquet" else "x" * 255
    rep = seq_lake.export(tmp_path / fits, fmt)
    assert rep.samples > 0 and (tmp_path / fits).exists() and not list(tmp_path.glob(".*.partial"))
    too_long = "y" * 300 if fmt == "webdataset" else "y" * 237 + ".parquet"  # (its manifest needs 19 bytes more)
    with pytest.raises(LakeError, match="cannot be written: its name is .* bytes long.* at most 255; choose a shorter name"):
        seq_lake.export(tmp_path / too_long, fmt)
    res = CliRunner().invoke(main, ["export", seq_lake.uri, str(tmp_path / too_long), "--format", fmt, "--json"])
    assert res.exit_code == 1 and "choose a shorter name" in json.loads(res.stdout)["error"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("y")) == []


@pytest.mark.parametrize("fmt", FORMATS)
def test_export_shows_its_progress(seq_lake: Lake, tmp_path: Path, fmt: str, capsys):
    """export read every image blob without a word, even with --progress."""
    needs(fmt)
    n = seq_lake.export(dest_for(tmp_path, fmt), fmt, progress=True).samples
    assert f"export {fmt}: {n}/{n} sample (100%)" in capsys.readouterr().err
    seq_lake.export(dest_for(tmp_path, fmt, "quiet"), fmt, progress=False)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("option", ["repeats", "overwrite", "allow_stale", "blur_faces", "mix_both", "progress"])
def test_switches_take_only_true_or_false(seq_lake: Lake, tmp_path: Path, option: str):
    """repeats="no" and overwrite="yes" were true to Python: the repeats written, DEST replaced."""
    for value in ("no", "yes", 1, None if option != "progress" else 0):
        with pytest.raises(LakeError, match=f"invalid {option} .*: expected True or False"):
            seq_lake.export(tmp_path / "out", **{option: value})
    assert not (tmp_path / "out").exists()


def test_an_export_to_a_dest_another_export_is_writing_now_is_refused_at_once(seq_lake: Lake, tmp_path: Path):
    """The later of two exports to one DEST was refused only at its swap, after it had read and
    written every sample. Another export's staging folder whose process lives says it runs now:
    refused before anything is written; once that process is gone, its folder is removed and the
    export runs."""
    import subprocess

    from lakecurate.columns import host_name
    from lakecurate.export import _stage_name

    dest = tmp_path / "out"
    other = subprocess.Popen(["sleep", "60"])
    try:
        stage = tmp_path / f".{_stage_name(dest)}.{other.pid}@{host_name()}.abcd1234.partial"
        (stage / "out").mkdir(parents=True)
        with pytest.raises(LakeError, match=rf"another export to '.*out' is running now \({other.pid}@"):
            seq_lake.export(dest)
        assert not dest.exists() and [p.name for p in tmp_path.iterdir()] == [stage.name]
    finally:
        other.kill()
        other.wait()
    rep = seq_lake.export(dest)
    assert rep.removed_partial == 1 and not stage.exists() and (dest / "manifest.json").is_file()


def test_an_untagged_version_s_export_says_cleanup_may_remove_it_and_lists_tags_in_order(tmp_path: Path):
    """An export of an untagged version recorded only its number, and a later cleanup removed that
    version without a word; the manifest's tags came in another order on every export."""
    lake = Lake.create(tmp_path / "lake")
    lake.append(synthetic_pairs(0, 6))
    rep = lake.export(tmp_path / "a.parquet", "parquet", where="true")
    assert any(f"version {rep.version} is untagged" in n and "cleanup" in n and f"lakecurate tag {lake.shell} NAME "
               f"--version {rep.version}" in n for n in rep.notes), rep.notes
    res = CliRunner().invoke(main, ["export", lake.uri, str(tmp_path / "b.parquet"), "--format", "parquet",
                                    "--where", "true"])
    assert res.exit_code == 0 and "untagged" in res.output, res.output
    for name in ("d4", "b2", "c3", "a1"):
        lake.tag(name)
    rep = lake.export(tmp_path / "c.parquet", "parquet", where="true", version="c3")
    assert rep.notes == []
    manifest = json.loads((tmp_path / "c.parquet.manifest.json").read_text())
    assert manifest["tags"] == ["a1", "b2", "c3", "d4"]
