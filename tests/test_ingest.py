"""Ingest: every source format, idempotence, resume, and every kind of bad input."""

from __future__ import annotations

import hashlib
import shutil
import io
import json
import os
import struct
import tarfile
import zlib
from pathlib import Path

import lance
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from PIL import Image

from lakecurate import Lake, LakeError
from lakecurate.cli import main
from lakecurate.ingest import (
    IngestError,
    IngestOptions,
    decode_caption,
    detect_kind,
    expand_shards,
    pair_id,
    probe_image,
)
from lakecurate.schema import REASONS

from .conftest import SAMPLE_DATA, image_bytes
from .writers import kill_9_when, spawn


def noise_jpeg(w: int = 120, h: int = 90, seed: int = 0, quality: int = 90) -> bytes:
    """A JPEG whose decode needs all of its bytes (noise does not compress away)."""
    arr = np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def png_with_size(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header claims ``width`` x ``height``: a decompression bomb's signature."""
    data = bytearray(image_bytes("PNG", (1, 1)))
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


def by_key(lake: Lake) -> dict[str, dict]:
    cols = ["key", "caption", "ingest_status", "ingest_flags", "ingest_error", "width", "height", "format",
            "byte_size", "content_hash", "meta", "image_uri"]
    return {r["key"]: r for r in lake.to_pandas(cols).to_dict("records")}


# --------------------------------------------------------------------------- pure functions
def test_decode_caption_cases():
    assert decode_caption(b"\xef\xbb\xbf a dog \n", 100) == ("a dog", [])
    assert decode_caption(None, 100) == (None, ["caption_missing"])
    assert decode_caption("   ", 100) == ("", ["caption_empty"])
    text, flags = decode_caption(b"caf\xe9 au lait", 100)
    assert flags == ["caption_not_utf8"] and text.startswith("caf") and "\ufffd" in text
    text, flags = decode_caption("x" * 101, 100)
    assert flags == ["caption_too_long"] and len(text) == 101  # kept whole


def test_probe_reads_header_and_flags():
    info, flags, _ = probe_image(noise_jpeg(120, 90), 10**8)
    assert info == {"width": 120, "height": 90, "format": "JPEG", "mode": "RGB"} and flags == []
    info, flags, _ = probe_image(png_with_size(100_000, 100_000), 10**8)
    assert flags == ["decompression_bomb"]
    _, flags, why = probe_image(png_with_size(400, 300), 1000)
    assert flags == ["decompression_bomb"] and "120000 pixels" in why
    assert probe_image(b"", 10**8)[1] == ["file_empty"]
    assert probe_image(b"hello world", 10**8)[1] == ["image_unsupported"]
    assert probe_image(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, 10**8)[1] == ["image_corrupt"]
    # truncation shows in the missing end marker (header mode) and in the decode (decode mode)
    whole = noise_jpeg()
    for verify in ("header", "decode"):
        assert probe_image(whole, 10**8, verify=verify)[1] == []
        assert probe_image(whole[:1500], 10**8, verify=verify)[1] == ["image_truncated"]
    png = image_bytes("PNG", (40, 30))
    assert probe_image(png[:-20], 10**8)[1] == ["image_truncated"]
    # corrupt entropy data with an intact end marker: only a decode can tell
    broken = whole[:600] + bytes([0xFF, 0xD0 + 9 % 8]) * 40 + whole[680:]
    assert probe_image(broken, 10**8, verify="header")[1] == []


def test_pair_id_is_stable_and_distinct():
    assert pair_id("/a", "x.jpg") == pair_id("/a", "x.jpg")
    assert len({pair_id("/a", "x.jpg"), pair_id("/b", "x.jpg"), pair_id("/a", "y.jpg")}) == 3
    assert len(pair_id("/a", "x.jpg")) == 16


# --------------------------------------------------------------------------- sample data / folder
def test_sample_data_folder(lake: Lake):
    report = lake.ingest(SAMPLE_DATA, progress=False)
    n_images = len([p for p in SAMPLE_DATA.iterdir() if p.suffix in (".jpg", ".png")])
    assert report.written == n_images == lake.count()
    rows = by_key(lake)
    assert rows["gravel_truncated.jpg"]["ingest_flags"].tolist() == ["image_truncated"]
    assert rows["gravel_truncated.jpg"]["ingest_status"] == "error"
    assert rows["notes_not_an_image.jpg"]["ingest_flags"].tolist() == ["image_unsupported"]
    assert rows["brick_empty_caption.jpg"]["ingest_flags"].tolist() == ["caption_empty"]
    assert pd.isna(rows["horse_no_caption.jpg"]["caption"])
    assert rows["retina_json.jpg"]["caption"] == "a fundus photograph of an eye, rotated"
    assert json.loads(rows["retina_json.jpg"]["meta"])["url"] == "https://example.org/retina.jpg"
    assert rows["chelsea.jpg"]["ingest_status"] == "ok"
    assert rows["chelsea.jpg"]["caption"] == (SAMPLE_DATA / "chelsea.txt").read_text().strip()
    # the exact copy has the same content hash; width/height match the decoded image
    assert rows["chelsea.jpg"]["content_hash"] == rows["chelsea_copy.jpg"]["content_hash"]
    with Image.open(SAMPLE_DATA / "rocket.jpg") as im:
        assert (rows["rocket.jpg"]["width"], rows["rocket.jpg"]["height"]) == im.size
    raw = (SAMPLE_DATA / "rocket.jpg").read_bytes()
    assert rows["rocket.jpg"]["content_hash"] == hashlib.sha256(raw).hexdigest()
    assert rows["rocket.jpg"]["byte_size"] == len(raw)
    assert report.ignored_files == ["README.md"]


def test_reingest_is_idempotent_and_overwrite_replaces(lake: Lake, tmp_path: Path):
    first = lake.ingest(SAMPLE_DATA, progress=False)
    v = lake.version
    again = lake.ingest(SAMPLE_DATA, progress=False)
    assert again.written == 0 and again.skipped_existing == first.written
    assert lake.count() == first.written and lake.version == v  # nothing committed at all
    # a new file in the folder is the only thing the next run adds
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.jpg").write_bytes(noise_jpeg(seed=1))
    (src / "a.txt").write_text("a")
    lake.ingest(src, progress=False)
    (src / "b.jpg").write_bytes(noise_jpeg(seed=2))
    (src / "b.txt").write_text("b")
    rep = lake.ingest(src, progress=False)
    assert (rep.written, rep.skipped_existing) == (1, 1)
    assert lake.count() == first.written + 2
    # overwrite: a new version with only this source; the old version is still readable
    before = lake.version
    lake.ingest(src, mode="overwrite", progress=False)
    assert lake.count() == 2
    assert lake.dataset(before).count_rows() == first.written + 2
    assert len(set(lake.to_pandas(["id"])["id"])) == 2


def test_images_round_trip_and_scans_skip_image_bytes(lake: Lake):
    lake.ingest(SAMPLE_DATA, progress=False)
    df = lake.to_pandas(["id", "key"], where="key IN ('coffee.jpg', 'horse.jpg')")
    imgs = lake.read_images(df["id"].tolist())
    for key, data in zip(df["key"], imgs):
        assert data == (SAMPLE_DATA / key).read_bytes()
    with pytest.raises(LakeError, match="has id 'no-such-id'"):  # (it read as None, like a row without an image)
        lake.read_images(["no-such-id"])
    assert lake.read_images(df["id"][0]) == imgs[:1]  # one id, not its characters (16 Nones)
    full = lake.to_pandas(["key", "image"], where="key = 'rocket.jpg'")
    assert full["image"][0] == (SAMPLE_DATA / "rocket.jpg").read_bytes()
    # the image column is a Lance blob column: a caption scan reads descriptors, never the bytes
    field = lake.dataset().schema.field("image")
    assert "blob" in str(field.type)


def test_kill_9_mid_ingest_then_resume_adds_each_pair_once(lake: Lake, tmp_path: Path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(120):
        (src / f"{i:03d}.jpg").write_bytes(image_bytes(color=(i, 2 * i, 3 * i)))
        (src / f"{i:03d}.txt").write_text(f"pair {i}")
    proc = spawn("ingest-slow", lake.uri, str(src))
    kill_9_when(proc, lambda: lake.count() >= 20, timeout=60)
    committed = lake.count()
    assert 0 < committed < 120 and committed % 10 == 0  # whole commits only, nothing half-written
    rep = lake.ingest(src, options=IngestOptions(batch_rows=5, commit_rows=10), progress=False)
    assert rep.skipped_existing == committed and rep.written == 120 - committed
    df = lake.to_pandas(["id", "caption"])
    assert len(df) == 120 and df["id"].is_unique
    assert sorted(df["caption"]) == sorted(f"pair {i}" for i in range(120))


# --------------------------------------------------------------------------- manifests
@pytest.fixture
def manifest_dir(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    (d / "img").mkdir(parents=True)
    for i in range(4):
        (d / "img" / f"{i}.jpg").write_bytes(noise_jpeg(seed=i))
    (tmp_path / "outside.jpg").write_bytes(noise_jpeg(seed=9))
    return d


MANIFEST_ROWS = [
    {"file": "img/0.jpg", "text": "zero", "license": "cc0"},
    {"file": "img/1.jpg", "text": "one", "license": "cc0"},
    {"file": "img/2.jpg", "text": "two", "license": "cc-by"},
    {"file": "img/2.jpg", "text": "two again", "license": "cc-by"},  # duplicate key
    {"file": "img/nope.jpg", "text": "missing file", "license": ""},
    {"file": "../outside.jpg", "text": "escapes the root", "license": ""},
    {"file": "https://example.org/x.jpg", "text": "remote", "license": ""},
    {"file": "", "text": "no path", "license": ""},
]


def write_manifest(d: Path, fmt: str) -> Path:
    if fmt == "csv":
        import csv

        p = d / "m.csv"
        with open(p, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["file", "text", "license"])
            w.writeheader()
            w.writerows(MANIFEST_ROWS)
    elif fmt == "parquet":
        p = d / "m.parquet"
        pq.write_table(pa.Table.from_pylist(MANIFEST_ROWS), p)
    else:
        p = d / "m.jsonl"
        p.write_text("".join(json.dumps(r) + "\n" for r in MANIFEST_ROWS))
    return p


@pytest.mark.parametrize("fmt", ["csv", "parquet", "jsonl"])
def test_manifest_formats(lake: Lake, manifest_dir: Path, fmt: str):
    path = write_manifest(manifest_dir, fmt)
    rep = lake.ingest(path, image_col="file", caption_col="text", progress=False)
    assert rep.kind == "manifest" and rep.written == len(MANIFEST_ROWS) == lake.count()
    rows = by_key(lake)
    assert rows["img/0.jpg"]["caption"] == "zero" and rows["img/0.jpg"]["ingest_status"] == "ok"
    assert rows["img/0.jpg"]["image_uri"] == str((manifest_dir / "img" / "0.jpg").resolve())
    assert json.loads(rows["img/0.jpg"]["meta"]) == {"license": "cc0", "manifest_row": 1}
    assert rows["img/2.jpg#2"]["ingest_flags"].tolist() == ["duplicate_key"]
    assert rows["img/2.jpg#2"]["caption"] == "two again"
    assert rows["img/nope.jpg"]["ingest_flags"].tolist() == ["file_missing"]
    assert rows["../outside.jpg"]["ingest_flags"].tolist() == ["path_outside_root"]
    assert rows["https://example.org/x.jpg"]["ingest_flags"].tolist() == ["remote_uri"]
    assert "image_path_missing" in rows["row8"]["ingest_flags"]
    # --root widens what relative paths may reach; they still resolve against the manifest's folder
    rep2 = Lake.create(lake.uri + "2").ingest(path, image_col="file", caption_col="text",
                                               root=str(manifest_dir.parent), progress=False)
    assert rep2.flags["path_outside_root"] == 0


def test_manifest_column_detection_and_errors(lake: Lake, manifest_dir: Path):
    p = manifest_dir / "auto.csv"
    p.write_text("image_path,caption,uid\nimg/0.jpg,a thing,k0\nimg/1.jpg,another,k1\n")
    lake.ingest(p, key_col="uid", progress=False)
    assert set(by_key(lake)) == {"k0", "k1"}
    bad = manifest_dir / "bad.csv"
    bad.write_text("foo,bar\n1,2\n")
    with pytest.raises(IngestError, match=r"bad.csv: cannot tell which column holds the image path .*pass image_col NAME"):
        lake.ingest(bad, progress=False)
    with pytest.raises(IngestError, match="no column 'nope'"):
        lake.ingest(p, image_col="nope", progress=False)


def test_a_quote_never_closed_costs_its_row_not_the_rest_of_the_manifest(lake: Lake, manifest_dir: Path):
    """Arrow's CSV reader (newlines allowed in values) read a quote never closed as a caption
    running to the end of the file: "ingested 2 new pairs, status ok", the other rows gone. The
    row is flagged on its line now and the lines after it are rows again; a lone quote inside an
    unquoted value (5" tall) and a multi-line quoted caption stay as they were."""
    p = manifest_dir / "uq.csv"
    p.write_bytes(b'image,caption\nimg/0.jpg,"a ""quoted"" word"\nimg/1.jpg,"unterminated quote\n'
                  b'img/2.jpg,a caption\nimg/3.jpg,"two\nlines"\nimg/0.jpg,5" tall\nimg/1.jpg,"a","b"\n'
                  b'img/2.jpg,caf\xe9\n')
    rep = lake.ingest(p, progress=False)
    assert rep.written == 7 and rep.flags["manifest_row_invalid"] == 2, rep.flags
    rows = lake.to_pandas(["key", "caption", "ingest_error"])
    got = dict(zip(rows["key"], rows["caption"]))
    assert got["img/0.jpg"] == 'a "quoted" word' and got["img/2.jpg"] == "a caption" and got["img/3.jpg"] == "two\nlines"
    assert got["img/0.jpg#2"] == '5" tall' and got["img/2.jpg#2"] == "caf\ufffd"  # not UTF-8: replaced and flagged
    errors = rows["ingest_error"][rows["key"].str.startswith("row")].tolist()
    assert "line 3: a quote opened in this row is not closed on its line (it ran on to line 5)" in errors[0]
    assert "line 8: 3 fields where the header has 2" in errors[1]
    # one never closed at all: the rest of the file was its caption
    p.write_bytes(b'image,caption\nimg/0.jpg,zero\nimg/1.jpg,"never closed\nimg/2.jpg,two\nimg/3.jpg,three\n')
    last = Lake.create(lake.uri + "3")
    assert last.ingest(p, progress=False).written == 4
    rows = last.to_pandas(["key", "caption", "ingest_error"])
    assert dict(zip(rows["key"], rows["caption"]))["img/3.jpg"] == "three"
    assert "(it ran on to line 5, the end of the file)" in rows["ingest_error"][rows["key"] == "row2"].iloc[0]
    # a balanced file takes the fast path, with the same rows
    q = manifest_dir / "even.csv"
    q.write_bytes(b'image,caption\nimg/0.jpg,"a ""quoted"" word"\nimg/3.jpg,"two\nlines"\n')
    other = Lake.create(lake.uri + "2")
    assert other.ingest(q, progress=False).written == 2
    assert dict(zip(*other.to_pandas(["key", "caption"]).T.values)) == {"img/0.jpg": 'a "quoted" word', "img/3.jpg": "two\nlines"}


def test_csv_with_non_utf8_caption_is_flagged_not_fatal(lake: Lake, manifest_dir: Path):
    p = manifest_dir / "latin1.csv"
    p.write_bytes(b"image,caption\nimg/0.jpg,caf\xe9 cr\xe8me\nimg/1.jpg,plain\n")
    rep = lake.ingest(p, progress=False)
    assert rep.written == 2 and rep.flags["caption_not_utf8"] == 1
    assert by_key(lake)["img/0.jpg"]["caption"].startswith("caf")


# --------------------------------------------------------------------------- webdataset
def write_shard(path: Path, samples: list[dict[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for s in samples:
            for name, data in s.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_webdataset_shards(lake: Lake, tmp_path: Path):
    shards = tmp_path / "shards"
    shards.mkdir()
    for s in range(2):
        write_shard(shards / f"{s:05d}.tar", [
            {f"{s}{i:04d}.jpg": noise_jpeg(seed=10 * s + i), f"{s}{i:04d}.txt": f"caption {s}-{i}".encode(),
             f"{s}{i:04d}.json": json.dumps({"url": f"http://x/{s}{i}", "status": "success"}).encode()}
            for i in range(3)
        ] + [{f"{s}9999.json": json.dumps({"status": "failed_to_download", "caption": "lost"}).encode()}])
    assert len(expand_shards(str(shards))) == 2
    rep = lake.ingest(shards, progress=False)
    assert rep.kind == "webdataset" and rep.written == 8
    rows = by_key(lake)
    r = rows["10001"]
    assert r["caption"] == "caption 1-1" and r["ingest_status"] == "ok" and r["format"] == "JPEG"
    assert json.loads(r["meta"])["url"] == "http://x/11"
    assert r["image_uri"].endswith("00001.tar#10001.jpg")
    assert rows["09999"]["ingest_flags"].tolist() == ["image_missing"]
    assert rows["09999"]["caption"] == "lost"
    # the bytes in the lake are the member's bytes
    assert lake.read_images([pair_id(str((shards / "00001.tar").resolve()), "10001")])[0] == noise_jpeg(seed=11)
    # brace and glob notation name the same shards
    assert lake.ingest(str(shards / "0000{0..1}.tar"), progress=False).skipped_existing == 8
    assert lake.ingest(str(shards / "*.tar"), progress=False).skipped_existing == 8


def test_gzipped_shards_are_webdataset_too(lake: Lake, tmp_path: Path):
    import gzip

    shards = tmp_path / "gz"
    shards.mkdir()
    for s, suffix in enumerate((".tar.gz", ".tgz")):
        plain = tmp_path / f"{s}.tar"
        write_shard(plain, [{f"{s}{i}.jpg": noise_jpeg(seed=10 * s + i), f"{s}{i}.txt": f"cap {s}-{i}".encode()}
                            for i in range(2)])
        (shards / f"{s:05d}{suffix}").write_bytes(gzip.compress(plain.read_bytes()))
    assert detect_kind(str(shards)) == "webdataset" and detect_kind(str(shards / "00001.tgz")) == "webdataset"
    rep = lake.ingest(shards, progress=False)
    assert rep.kind == "webdataset" and rep.written == 4 and not rep.flags
    rows = by_key(lake)
    assert rows["11"]["caption"] == "cap 1-1" and rows["11"]["ingest_status"] == "ok"
    assert lake.read_images([pair_id(str((shards / "00000.tar.gz").resolve()), "01")])[0] == noise_jpeg(seed=1)
    assert lake.ingest(str(shards / "00000.tar.gz"), progress=False).skipped_existing == 2


def test_truncated_shard_keeps_what_was_read(lake: Lake, tmp_path: Path):
    shard = tmp_path / "s.tar"
    write_shard(shard, [{f"k{i}.jpg": noise_jpeg(seed=i), f"k{i}.txt": b"c"} for i in range(6)])
    data = shard.read_bytes()
    shard.write_bytes(data[: int(len(data) * 0.6)])
    rep = lake.ingest(shard, progress=False)
    rows = by_key(lake)
    assert rep.flags["tar_corrupt"] == 2  # the shard's error row, and the sample it broke in
    err = next(r for k, r in rows.items() if k.startswith("__tar_error__"))
    assert "were not read" in err["ingest_error"]
    broken = err["key"].removeprefix("__tar_error__/")
    assert rows[broken]["ingest_status"] == "error" and "may be incomplete" in rows[broken]["ingest_error"]
    assert sum(r["ingest_status"] == "ok" for r in rows.values()) >= 2


# --------------------------------------------------------------------------- bad inputs, one by one
@pytest.fixture(scope="module")
def bad_lake(tmp_path_factory) -> Lake:
    """A folder and a manifest holding one example of every kind of bad input."""
    tmp = tmp_path_factory.mktemp("bad")
    d = tmp / "folder"
    d.mkdir()
    good = noise_jpeg()

    def put(stem: str, data: bytes | None, caption: bytes | None = b"a caption", ext: str = "jpg") -> None:
        if data is not None:
            (d / f"{stem}.{ext}").write_bytes(data)
        if caption is not None:
            (d / f"{stem}.txt").write_bytes(caption)

    put("corrupt", b"\xff\xd8\xff\xe0" + bytes(range(256)) * 3)
    put("truncated", good[: len(good) // 2])
    put("empty", b"")
    put("unsupported", b"%PDF-1.4 not an image")
    put("bomb", png_with_size(30_000, 30_000), ext="png")
    put("cmyk", image_bytes("JPEG", mode="CMYK", color=(0, 50, 100, 0)))
    put("sixteen", image_bytes("PNG", mode="I;16", color=40000), ext="png")
    put("palette", image_bytes("PNG", mode="P", color=3), ext="png")
    put("alpha", image_bytes("PNG", mode="RGBA", color=(1, 2, 3, 100)), ext="png")
    frames = [Image.new("RGB", (16, 16), (60 * i, 0, 0)) for i in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    put("animated", buf.getvalue(), ext="gif")
    put("notutf8", good, b"na\xefve caf\xe9")
    put(os.fsdecode(b"caf\xe9"), good)  # a Latin-1 file name: Python lists it with a surrogate
    put("blank", good, b"  \n ")
    put("long", good, b"word " * 1000)
    put("nocaption", good, None)
    put("orphan", None, b"a caption without an image")
    (d / "badjson.jpg").write_bytes(good)
    (d / "badjson.json").write_bytes(b"{not json")
    put("big", noise_jpeg(400, 400), ext="jpg")
    (tmp / "secret.jpg").write_bytes(good)
    os.symlink(tmp / "secret.jpg", d / "escape.jpg")
    (d / "escape.txt").write_text("points outside the folder")
    lake = Lake.create(tmp / "lake")
    opts = IngestOptions(max_caption_chars=1000, max_bytes=40_000)
    lake.ingest(d, options=opts, progress=False)
    m = tmp / "m.csv"
    m.write_text("image,caption\nfolder/missing.jpg,gone\n../up.jpg,escapes\nhttps://e.org/a.jpg,remote\n,none\n"
                 "folder/cmyk.jpg,first\nfolder/cmyk.jpg,second\nfolder/alpha.png,one,field,too many\n")
    lake.ingest(m, options=opts, progress=False)
    j = tmp / "j.jsonl"
    j.write_text(json.dumps({"image": "folder/palette.png", "caption": 42, "uid": "number"}) + "\n"
                 + json.dumps({"image": "folder/palette.png", "caption": {"en": "x"}, "uid": "object"}) + "\n")
    lake.ingest(j, key_col="uid", options=opts, progress=False)
    return lake


BAD_CASES = [
    ("corrupt.jpg", "image_corrupt", "error"),
    ("truncated.jpg", "image_truncated", "error"),
    ("empty.jpg", "file_empty", "error"),
    ("unsupported.jpg", "image_unsupported", "error"),
    ("bomb.png", "decompression_bomb", "error"),
    ("cmyk.jpg", "image_cmyk", "warning"),
    ("sixteen.png", "image_16bit", "warning"),
    ("palette.png", "image_palette", "warning"),
    ("alpha.png", "image_alpha", "warning"),
    ("animated.gif", "image_animated", "warning"),
    ("notutf8.jpg", "caption_not_utf8", "warning"),
    ("caf\\xe9.jpg", "name_not_utf8", "warning"),
    ("blank.jpg", "caption_empty", "warning"),
    ("long.jpg", "caption_too_long", "warning"),
    ("nocaption.jpg", "caption_missing", "warning"),
    ("orphan", "image_missing", "error"),
    ("badjson.jpg", "sidecar_invalid", "warning"),
    ("big.jpg", "file_too_large", "error"),
    ("escape.jpg", "path_outside_root", "error"),
    ("folder/missing.jpg", "file_missing", "error"),
    ("../up.jpg", "path_outside_root", "error"),
    ("https://e.org/a.jpg", "remote_uri", "error"),
    ("row4", "image_path_missing", "error"),
    ("folder/cmyk.jpg#2", "duplicate_key", "warning"),
    ("row7", "manifest_row_invalid", "error"),
    ("number", "caption_not_text", "warning"),
    ("object", "caption_not_text", "warning"),
]


@pytest.mark.parametrize("key,flag,status", BAD_CASES, ids=[c[1] + ":" + c[0] for c in BAD_CASES])
def test_bad_input_becomes_flagged_row(bad_lake: Lake, key: str, flag: str, status: str):
    rows = by_key(bad_lake)
    assert key in rows, f"no row for {key}: nothing may be lost"
    row = rows[key]
    assert flag in row["ingest_flags"].tolist()
    assert row["ingest_status"] == status
    worst = row["ingest_error"].split(":")[0]  # the message names the most severe flag first
    assert worst in row["ingest_flags"].tolist() and REASONS[worst][0] == status


def test_bad_inputs_cover_every_reason_but_tar(bad_lake: Lake):
    seen = {f for flags in bad_lake.to_pandas(["ingest_flags"])["ingest_flags"] for f in flags}
    # tar: tested with shards; unreadable: needs non-root; "info" reasons describe good images
    facts = {r for r, (sev, _) in REASONS.items() if sev == "info"}
    assert set(REASONS) - seen - facts == {"file_unreadable", "tar_corrupt", "member_name_unsafe"}
    assert len({c[1] for c in BAD_CASES}) >= 15
    # the secret file behind the symlink was never read into the lake
    esc = bad_lake.to_pandas(["key", "byte_size"], where="key = 'escape.jpg'")
    assert esc["byte_size"].isna().all()


def test_shared_flickr_manifest_with_five_captions_per_image(lake: Lake, flickr8k: Path):
    """The real Flickr8k manifest names each photo five times: all 4000 pairs arrive, keys unique."""
    rep = lake.ingest(flickr8k / "captions.csv", image_dir=str(flickr8k / "images"), progress=False)
    assert rep.written == 4000 and rep.status["ok"] == 800 and rep.flags["duplicate_key"] == 3200
    df = lake.sql("SELECT COUNT(DISTINCT content_hash) AS photos, COUNT(DISTINCT id) AS ids, "
                  "MIN(width) AS w FROM pairs WHERE ingest_status <> 'error'")
    assert (df["photos"][0], df["ids"][0]) == (800, 4000) and df["w"][0] >= 100
    assert lance.dataset(lake.table_uri).count_rows() == 4000


# --------------------------------------------------------------------------- concurrent ingests, retry, hardening
def small_folder(path: Path, n: int, seed: int = 0) -> Path:
    path.mkdir(parents=True)
    for i in range(n):
        (path / f"{i:03d}.jpg").write_bytes(image_bytes(color=(seed, i, 2 * i)))
        (path / f"{i:03d}.txt").write_text(f"pair {i}")
    return path


def assert_each_pair_once(lake: Lake, n: int) -> None:
    df = lake.to_pandas(["id", "caption"])
    assert len(df) == n and df["id"].is_unique, f"{len(df)} rows, {df['id'].nunique()} distinct ids for {n} pairs"


def test_ingest_losing_a_race_adds_each_pair_once(lake: Lake, tmp_path: Path, monkeypatch):
    """Another ingest of the same source commits between this one's start and its first commit."""
    src = small_folder(tmp_path / "src", 30)
    real, raced = Lake.append, []

    def append(self, data, **kw):  # type: ignore[no-untyped-def]
        if not raced:
            raced.append(True)
            raced.append(Lake(self.uri).ingest(src, progress=False))  # the other writer wins the race
        return real(self, data, **kw)

    monkeypatch.setattr(Lake, "append", append)
    rep = lake.ingest(src, options=IngestOptions(commit_rows=10, batch_rows=5), progress=False)
    assert_each_pair_once(lake, 30)
    assert raced[1].written + rep.written == 30 and rep.skipped_existing == 30 - rep.written


_RACER = """
import sys, time
from lakecurate import Lake
from lakecurate.ingest import IngestOptions
src, start, lakes = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
for k, uri in enumerate(lakes):  # trial k starts at the same instant in every process
    time.sleep(max(0.0, start + 1.2 * k - time.time()))
    rows = (1000, 7, 3)[k % 3]  # one commit, then many small interleaved commits
    Lake(uri).ingest(src, options=IngestOptions(commit_rows=rows, batch_rows=3, workers=2), progress=False)
"""


def test_three_ingests_of_one_source_at_once_add_each_pair_once(tmp_path: Path):
    """Three processes ingest the same folder at one instant, three trials: exact count, unique ids."""
    import subprocess
    import sys
    import time

    from .conftest import REPO

    src = small_folder(tmp_path / "src", 40)
    lakes = [Lake.create(tmp_path / f"lake{k}") for k in range(3)]
    start = time.time() + 3  # after every process has imported lakecurate (~0.5 s)
    procs = [subprocess.Popen([sys.executable, "-c", _RACER, str(src), str(start), *(lk.uri for lk in lakes)],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-2000:]
    for lk in lakes:
        assert_each_pair_once(lk, 40)


def test_retry_errors_replaces_error_rows_in_place(tmp_path: Path):
    """A manifest resolved against the wrong folder gives file_missing rows; --retry-errors fixes them."""
    from click.testing import CliRunner

    from lakecurate.cli import main

    d = tmp_path / "data"
    small_folder(d / "images", 6)
    (d / "captions.csv").write_text("image,caption\n" + "".join(f"{i:03d}.jpg,pair {i}\n" for i in range(6)))
    (d / "000.jpg").write_bytes((d / "images" / "000.jpg").read_bytes())
    lake = Lake.create(tmp_path / "lake")
    first = lake.ingest(d / "captions.csv", progress=False)  # wrong folder: all files but one are missing
    assert first.status == {"ok": 1, "error": 5}
    from .writers import scaled_len

    lake.add_feature("cap_len", scaled_len, inputs=["caption"], type="int64", progress=False)  # a derived column
    ids = set(lake.to_pandas(["id"])["id"])
    runner = CliRunner()
    res = runner.invoke(main, ["ingest", lake.uri, str(d / "captions.csv"), "--image-dir", str(d / "images")])
    assert res.exit_code == 0, res.output
    assert "5 of them errors: re-run with --retry-errors" in res.output and lake.count() == 6
    res = runner.invoke(main, ["ingest", lake.uri, str(d / "captions.csv"), "--image-dir", str(d / "images"),
                               "--retry-errors", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["replaced"] == 5
    df = lake.to_pandas(["id", "caption", "ingest_status"])
    assert len(df) == 6 and set(df["id"]) == ids and (df["ingest_status"] == "ok").all()
    # the new rows carry no derived data: the column is null until the next run fills it
    assert lake.count("cap_len IS NULL") == 5
    lake.add_feature("cap_len", scaled_len, inputs=["caption"], type="int64", progress=False)
    assert lake.count("cap_len IS NULL") == 0  # an incremental run computes them
    imgs = lake.read_images(sorted(ids))
    assert all(imgs) and lake.dataset().count_rows() == 6
    # a second retry finds nothing to do
    assert lake.ingest(d / "captions.csv", image_dir=str(d / "images"), retry_errors=True, progress=False).written == 0


def test_same_images_under_another_source_are_counted(lake: Lake, tmp_path: Path):
    a = small_folder(tmp_path / "a", 5)
    b = tmp_path / "moved"
    a.rename(b)
    lake.ingest(b, progress=False)
    c = tmp_path / "moved-again"
    b.rename(c)
    rep = lake.ingest(c, progress=False)
    assert rep.written == 5 and rep.content_present == 5  # new pairs (source + key), same content
    assert lake.ingest(small_folder(tmp_path / "other", 3, seed=99), progress=False).content_present == 0


DEEP = b"[" * 10_000 + b"]" * 10_000


def test_json_nested_too_deep_is_a_flagged_row(lake: Lake, tmp_path: Path):
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(noise_jpeg())
    (folder / "a.json").write_bytes(b'{"caption": ' + DEEP + b"}")
    rep = lake.ingest(folder, progress=False)
    assert rep.written == 1 and "sidecar_invalid" in by_key(lake)["a.jpg"]["ingest_flags"].tolist()
    shard = tmp_path / "s.tar"
    write_shard(shard, [{"k0.jpg": noise_jpeg(), "k0.json": DEEP}, {"k1.jpg": noise_jpeg(seed=1), "k1.txt": b"fine"}])
    rep = lake.ingest(shard, progress=False)
    assert rep.written == 2 and "sidecar_invalid" in by_key(lake)["k0"]["ingest_flags"].tolist()
    (tmp_path / "img.jpg").write_bytes(noise_jpeg())
    m = tmp_path / "m.jsonl"
    m.write_bytes(b'{"image": "img.jpg", "caption": "ok"}\n{"image": ' + DEEP + b"}\n")
    rep = lake.ingest(m, progress=False)
    assert rep.written == 2 and rep.status["ok"] == 1 and rep.status["error"] == 1
    assert "nested too deeply" in by_key(lake)["row2"]["ingest_error"]


def test_renamed_duplicate_keys_never_collide(lake: Lake, manifest_dir: Path):
    p = manifest_dir / "dups.csv"
    p.write_text("image,caption,k\nimg/0.jpg,x,a\nimg/1.jpg,y,a\nimg/2.jpg,z,a#2\nimg/3.jpg,w,a\n")
    rep = lake.ingest(p, key_col="k", progress=False)
    df = lake.to_pandas(["id", "key", "caption"])
    assert rep.written == 4 and df["id"].is_unique and df["key"].is_unique
    assert dict(zip(df["caption"], df["key"])) == {"x": "a", "y": "a#2", "z": "a#2#2", "w": "a#3"}
    assert lake.ingest(p, key_col="k", progress=False).written == 0  # renamed the same way on a re-run


def test_parquet_and_arrow_with_image_bytes(lake: Lake, tmp_path: Path):
    import pyarrow.feather as feather

    imgs = [noise_jpeg(seed=i) for i in range(3)]
    raw = pa.table({"image": pa.array(imgs, pa.binary()), "text": ["a", "b", "c"]})
    pq.write_table(raw, tmp_path / "raw.parquet")
    hf = pa.table({"image": [{"bytes": b, "path": f"{i}.jpg"} for i, b in enumerate(imgs)], "caption": ["a", "b", "c"]})
    pq.write_table(hf, tmp_path / "hf.parquet")
    feather.write_feather(hf, tmp_path / "hf.arrow")
    with pa.OSFile(str(tmp_path / "stream.arrow"), "wb") as f, pa.ipc.new_stream(f, raw.schema) as w:
        w.write_table(raw)  # the IPC stream format, as datasets.save_to_disk writes it
    for name, keys in [("raw.parquet", ["row1", "row2", "row3"]), ("hf.parquet", ["0.jpg", "1.jpg", "2.jpg"]),
                       ("hf.arrow", ["0.jpg", "1.jpg", "2.jpg"]), ("stream.arrow", ["row1", "row2", "row3"])]:
        target = Lake.create(tmp_path / f"lake-{name}")
        rep = target.ingest(tmp_path / name, progress=False)
        assert rep.written == 3 and rep.status == {"ok": 3}, (name, rep.to_dict())
        df = target.to_pandas(["id", "key", "caption"]).sort_values("key")
        assert df["key"].tolist() == keys and df["caption"].tolist() == ["a", "b", "c"]
        assert target.read_images(df["id"].tolist()) == imgs


def test_parquet_export_round_trips_through_ingest(lake: Lake, tmp_path: Path):
    lake.ingest(SAMPLE_DATA, progress=False)
    out = tmp_path / "out.parquet"
    lake.export(out, "parquet")
    exported = pq.read_table(out, columns=["image", "caption"])
    again = Lake.create(tmp_path / "again")
    rep = again.ingest(out, progress=False)
    assert rep.written == exported.num_rows > 0
    tbl = again.dataset().to_table(columns=["id", "caption"])
    got = zip(tbl.column("caption").to_pylist(), again.read_images(tbl.column("id").to_pylist()))
    want = zip(exported.column("caption").to_pylist(), exported.column("image").to_pylist())
    assert sorted(got, key=str) == sorted(want, key=str)


def test_cli_refuses_unusable_source_before_creating_the_lake(tmp_path: Path):
    from click.testing import CliRunner

    from lakecurate.cli import main

    bad = tmp_path / "bad.csv"
    bad.write_text("foo,bar\n1,2\n")
    runner = CliRunner()
    for source in (str(bad), str(tmp_path / "nope.parquet"), str(tmp_path / "nothing-here")):
        res = runner.invoke(main, ["ingest", str(tmp_path / "lake"), source])
        assert res.exit_code == 1 and "Traceback" not in res.output, res.output
        assert len(res.output.strip().splitlines()) == 1 and not (tmp_path / "lake").exists()
    res = runner.invoke(main, ["ingest", str(tmp_path / "lake"), str(SAMPLE_DATA), "--max-caption-chars", "0"])
    assert res.exit_code == 2 and not (tmp_path / "lake").exists()
    (tmp_path / "m.csv").write_text("image,caption\na.jpg,x\n")
    refusals = [  # (arguments, what the one-line message says)
        ([str(tmp_path / "in"), str(tmp_path / "in" / "sub")], "is lake"),  # a source inside a lake not yet made
        ([str(tmp_path / "lake"), str(tmp_path / "m.csv"), "--image-dir", str(tmp_path / "nope")], "is not a folder"),
        ([str(tmp_path / "lake"), str(SAMPLE_DATA), "--image-col", "x", "--key-col", "k"],
         "--image-col, --key-col apply to manifests only"),
    ]
    (tmp_path / "in" / "sub").mkdir(parents=True)
    (tmp_path / "in" / "sub" / "a.txt").write_text("x")
    for args, says in refusals:
        res = runner.invoke(main, ["ingest", *args])
        assert res.exit_code == 1 and says in res.output and "Traceback" not in res.output, res.output
        assert not (tmp_path / "lake").exists() and not (tmp_path / "in" / "pairs.lance").exists()


def test_fifo_and_editor_metadata_in_a_folder(lake: Lake, tmp_path: Path):
    d = tmp_path / "photos"
    d.mkdir()
    (d / "a.jpg").write_bytes(noise_jpeg())
    (d / "a.xmp").write_text("<x:xmpmeta/>")  # a photo editor's metadata beside the photo: not a second pair
    (d / "a.txt").write_text("a photo")
    os.mkfifo(d / "pipe.jpg")  # opening it would wait for a writer forever
    (d / "pipe.txt").write_text("a pipe")
    (d / "b.jpg").write_bytes(noise_jpeg(seed=1))
    os.mkfifo(d / "b.txt")
    rep = lake.ingest(d, progress=False)
    rows = by_key(lake)
    assert sorted(rows) == ["a.jpg", "b.jpg", "pipe.jpg"] and rep.ignored_files == ["a.xmp"]
    assert rows["a.jpg"]["ingest_status"] == "ok"
    assert rows["pipe.jpg"]["ingest_flags"].tolist() == ["file_unreadable"]
    assert "not a regular file" in rows["pipe.jpg"]["ingest_error"]
    assert "sidecar_invalid" in rows["b.jpg"]["ingest_flags"].tolist()


def test_max_caption_chars_option(tmp_path: Path):
    from click.testing import CliRunner

    from lakecurate.cli import main

    src = small_folder(tmp_path / "src", 2)
    (src / "000.txt").write_text("x" * 50)
    res = CliRunner().invoke(main, ["ingest", str(tmp_path / "lake"), str(src), "--max-caption-chars", "20", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["flags"] == {"caption_too_long": 1}
    assert by_key(Lake.open(tmp_path / "lake"))["000.jpg"]["caption"] == "x" * 50  # kept whole


def test_tar_member_names_that_climb_are_flagged(lake: Lake, tmp_path: Path):
    shard = tmp_path / "s.tar"
    write_shard(shard, [{"../evil.jpg": noise_jpeg(), "../evil.txt": b"x"}, {"/abs.jpg": noise_jpeg(seed=1)},
                        {"fine.jpg": noise_jpeg(seed=2), "fine.txt": b"y"}])
    lake.ingest(shard, progress=False)
    rows = by_key(lake)
    assert "member_name_unsafe" in rows["../evil"]["ingest_flags"].tolist()
    assert rows["../evil"]["ingest_status"] == "warning"
    assert any("member_name_unsafe" in r["ingest_flags"].tolist() for k, r in rows.items() if k.startswith("/"))
    assert rows["fine"]["ingest_flags"].tolist() == []


def test_names_that_are_not_utf8_are_flagged_rows_not_a_crash(lake: Lake, tmp_path: Path):
    """A Latin-1 file name in a folder, or member name in a shard, crashed the whole ingest with a
    UnicodeEncodeError traceback (Arrow stores UTF-8; Python hands such names over with surrogates)
    and the lake kept none of the pairs. The name is stored with \\xNN escapes and flagged; the id
    comes from the name as it is, so a re-ingest adds nothing."""
    folder = tmp_path / "f"
    folder.mkdir()
    for stem, seed in (("good", 0), (os.fsdecode(b"caf\xe9"), 1)):
        (folder / f"{stem}.jpg").write_bytes(noise_jpeg(seed=seed))
        (folder / f"{stem}.txt").write_text(f"caption {seed}")
    (folder / os.fsdecode(b"n\xe9.xyz")).write_bytes(b"not a pair")
    rep = lake.ingest(folder, progress=False)
    assert rep.written == 2 and rep.flags == {"name_not_utf8": 1}
    assert rep.to_dict()["ignored_files"] == ["n\\xe9.xyz"]  # JSON without lone surrogates
    shard = tmp_path / "s.tar"
    with tarfile.open(shard, "w", format=tarfile.GNU_FORMAT, encoding="latin-1") as tar:
        for name, data in (("ok.jpg", noise_jpeg(seed=2)), ("ok.txt", b"fine"), ("\xe9t\xe9.jpg", noise_jpeg(seed=3)),
                           ("\xe9t\xe9.txt", b"summer")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    assert lake.ingest(shard, progress=False).written == 2
    rows = by_key(lake)
    for key, caption in (("caf\\xe9.jpg", "caption 1"), ("\\xe9t\\xe9", "summer")):
        assert rows[key]["caption"] == caption and rows[key]["ingest_flags"].tolist() == ["name_not_utf8"]
        assert rows[key]["ingest_status"] == "warning" and rows[key]["byte_size"] > 0
    assert rows["good.jpg"]["ingest_flags"].tolist() == [] and rows["ok"]["ingest_flags"].tolist() == []
    assert lake.ingest(folder, progress=False).written == 0 and lake.ingest(shard, progress=False).written == 0
    result = CliRunner().invoke(main, ["--no-progress", "ingest", lake.uri, str(folder)])
    assert result.exit_code == 0 and "n\\xe9.xyz" in result.output


def test_symlink_out_of_the_root_is_flagged_only_outside_root(bad_lake: Lake):
    row = by_key(bad_lake)["escape.jpg"]
    assert row["ingest_flags"].tolist() == ["path_outside_root"]
    assert row["caption"] == "points outside the folder"  # the sidecar inside the root is still this pair's


def test_disk_full_is_one_clear_error_and_the_lake_stays_whole(lake: Lake, tmp_path: Path, monkeypatch):
    import errno

    import lance.fragment

    src = small_folder(tmp_path / "src", 12)
    real, calls = lance.fragment.write_fragments, []

    def full(*a, **kw):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*a, **kw)

    monkeypatch.setattr(lance.fragment, "write_fragments", full)
    with pytest.raises(IngestError, match=r"no space left .*lake .* intact.*run the same command again"):
        lake.ingest(src, options=IngestOptions(commit_rows=5, batch_rows=5), progress=False)
    committed = lake.count()
    assert committed == 5
    monkeypatch.setattr(lance.fragment, "write_fragments", real)
    assert lake.ingest(src, progress=False).written == 12 - committed
    assert_each_pair_once(lake, 12)


def test_hugging_face_save_to_disk_folder(lake: Lake, tmp_path: Path):
    """The layout ``datasets.save_to_disk`` writes: Arrow IPC streams named by state.json."""
    d = tmp_path / "hf"
    d.mkdir()
    imgs = [noise_jpeg(seed=i) for i in range(4)]
    for part in range(2):
        tbl = pa.table({"image": [{"bytes": b, "path": f"{part}-{i}.jpg"} for i, b in enumerate(imgs[2 * part: 2 * part + 2])],
                        "text": [f"c{2 * part + i}" for i in range(2)]})
        with pa.OSFile(str(d / f"data-0000{part}-of-00002.arrow"), "wb") as f, pa.ipc.new_stream(f, tbl.schema) as w:
            w.write_table(tbl)
    (d / "dataset_info.json").write_text("{}")
    (d / "state.json").write_text(json.dumps({"_data_files": [{"filename": f"data-0000{p}-of-00002.arrow"} for p in range(2)]}))
    rep = lake.ingest(d, progress=False)
    assert rep.kind == "manifest" and rep.written == 4 and rep.status == {"ok": 4}
    df = lake.to_pandas(["id", "caption"]).sort_values("caption")
    assert df["caption"].tolist() == ["c0", "c1", "c2", "c3"] and lake.read_images(df["id"].tolist()) == imgs
    assert lake.ingest(d, progress=False).written == 0


def test_exif_orientation_is_recorded_as_info(lake: Lake, tmp_path: Path):
    src = tmp_path / "src"
    src.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6  # turned 90 degrees clockwise to view
    Image.new("RGB", (64, 32), (10, 200, 30)).save(src / "turned.jpg", exif=exif)
    Image.new("RGB", (64, 32), (10, 200, 30)).save(src / "upright.jpg")
    for stem in ("turned", "upright"):
        (src / f"{stem}.txt").write_text("a green rectangle on its side")
    lake.ingest(src, progress=False)
    rows = {r["key"]: r for r in lake.to_pandas(["key", "ingest_status", "ingest_flags", "ingest_error", "meta"]).to_dict("records")}
    turned, upright = rows["turned.jpg"], rows["upright.jpg"]
    assert list(turned["ingest_flags"]) == ["exif_rotated"] and REASONS["exif_rotated"][0] == "info"
    assert turned["ingest_status"] == "ok" and pd.isna(turned["ingest_error"])  # info is not a problem
    assert json.loads(turned["meta"])["exif_orientation"] == 6
    assert list(upright["ingest_flags"]) == [] and pd.isna(upright["meta"])


def test_a_png_with_corrupt_pixel_data_is_flagged_never_embedded_as_garbage(lake: Lake, tmp_path: Path):
    """A PNG with one byte of its compressed data flipped: Pillow loads a PNG's pixels to look for
    its EXIF orientation, the error was swallowed there, and the later load() (its tile spent) took
    the half-decoded pixels: ingest said ok, and embed wrote a vector of garbage (cosine 0.11 to
    the photo) with no error."""
    from lakecurate.images import decode_image

    src = tmp_path / "src"
    src.mkdir()
    buf = io.BytesIO()
    Image.open(SAMPLE_DATA / "astronaut.jpg").convert("RGB").save(buf, "PNG")
    data = bytearray(buf.getvalue())
    data[data.find(b"IDAT") + 10] ^= 0xFF
    (src / "broken.png").write_bytes(bytes(data))
    (src / "broken.txt").write_text("an astronaut")
    shutil.copyfile(SAMPLE_DATA / "astronaut.jpg", src / "good.jpg")
    (src / "good.txt").write_text("an astronaut")
    im, err = decode_image(bytes(data))
    assert im is None and err.startswith("image_undecodable: OSError: broken data stream"), err
    lake.ingest(src, progress=False)
    rows = {r["key"]: r for r in lake.to_pandas(["key", "ingest_status", "ingest_flags"]).to_dict("records")}
    assert list(rows["broken.png"]["ingest_flags"]) == ["image_corrupt"], rows
    assert rows["broken.png"]["ingest_status"] == "error" and rows["good.jpg"]["ingest_status"] == "ok"


# --------------------------------------------------------------------------- hostile manifests and shards
def test_csv_row_with_wrong_field_count_is_a_flagged_row_and_later_rows_arrive(lake: Lake, manifest_dir: Path):
    p = manifest_dir / "ragged.csv"
    p.write_bytes(b"\xef\xbb\xbfimage,caption\nimg/0.jpg,zero\nimg/1.jpg,one,extra field\nimg/2\n"
                  b'img/2.jpg,"two\nlines"\nimg/3.jpg,three\n')  # a UTF-8 BOM before the header, too
    rep = lake.ingest(p, progress=False)  # the columns are found although the header starts with a BOM
    rows = by_key(lake)
    assert rep.written == 5 and {"img/0.jpg", "img/2.jpg", "img/3.jpg"} <= set(rows)
    assert rows["img/3.jpg"]["caption"] == "three" and rows["img/3.jpg"]["ingest_status"] == "ok"
    bad = [r for r in rows.values() if "manifest_row_invalid" in r["ingest_flags"]]
    errors = sorted(r["ingest_error"] for r in bad)
    assert "line 3: 3 fields where the header has 2: 'img/1.jpg,one,extra field'" in errors[0]
    assert "line 4: 1 fields where the header has 2" in errors[1]
    assert all(r["ingest_status"] == "error" for r in bad)
    assert lake.ingest(p, progress=False).written == 0  # the same keys on a re-run: nothing twice
    latin = manifest_dir / "latin.csv"
    latin.write_bytes(b"image,l\xe9gende\nimg/0.jpg,x\n")
    with pytest.raises(IngestError, match=r"latin.csv: the header row is not UTF-8"):
        lake.ingest(latin, image_col="image", progress=False)


def test_caption_cells_that_are_not_text(lake: Lake, manifest_dir: Path):
    m = manifest_dir / "odd.jsonl"
    m.write_text('{"image": "img/0.jpg", "caption": NaN, "k": "nan"}\n'
                 '{"image": "img/1.jpg", "caption": 7, "k": "seven"}\n'
                 '{"image": {"bytes": "not bytes"}, "caption": "text bytes", "k": "strbytes"}\n'
                 '{"image": "img/2.jpg", "caption": ["", "first", "second"], "k": "list"}\n')
    rep = lake.ingest(m, key_col="k", progress=False)
    rows = by_key(lake)
    assert rep.written == 4
    assert pd.isna(rows["nan"]["caption"]) and rows["nan"]["ingest_flags"].tolist() == ["caption_missing"]
    assert rows["seven"]["caption"] == "7" and rows["seven"]["ingest_flags"].tolist() == ["caption_not_text"]
    assert rows["strbytes"]["ingest_flags"].tolist() == ["image_unsupported"]
    assert "holds str, not image bytes" in rows["strbytes"]["ingest_error"]
    assert rows["list"]["caption"] == "first" and rows["list"]["ingest_status"] == "ok"
    assert json.loads(rows["list"]["meta"])["other_captions"] == ["", "second"]
    # the Flickr30k layout on Hugging Face: a list of captions a row, image bytes in the cell
    imgs = [noise_jpeg(seed=i) for i in range(2)]
    pq.write_table(pa.table({"image": [{"bytes": b, "path": f"{i}.jpg"} for i, b in enumerate(imgs)],
                             "caption": [["a dog", "a brown dog"], ["a cat"]]}), manifest_dir / "f30k.parquet")
    target = Lake.create(str(manifest_dir / "f30k-lake"))
    rep = target.ingest(manifest_dir / "f30k.parquet", progress=False)
    assert rep.status == {"ok": 2} and rep.flags["caption_list"] == 2
    assert sorted(target.to_pandas(["caption"])["caption"]) == ["a cat", "a dog"]
    # --max-bytes holds for image bytes inside a cell too
    small = Lake.create(str(manifest_dir / "small-lake"))
    rep = small.ingest(manifest_dir / "f30k.parquet", options=IngestOptions(max_bytes=100), progress=False)
    assert rep.flags["file_too_large"] == 2 and small.to_pandas(["byte_size"])["byte_size"].isna().all()


def test_tar_cut_anywhere_is_flagged_and_a_repeated_key_is_a_second_sample(lake: Lake, tmp_path: Path):
    samples = [{f"k{i}.jpg": noise_jpeg(seed=i), f"k{i}.txt": f"c{i}".encode()} for i in range(4)]
    whole = tmp_path / "whole.tar"
    write_shard(whole, samples)
    data = whole.read_bytes()
    with tarfile.open(whole) as t:
        members = t.getmembers()
    third = members[4]  # k2.jpg: cut 100 bytes into its header, then exactly at its header
    for name, cut in [("in-header.tar", third.offset + 100), ("at-member.tar", third.offset)]:
        (tmp_path / name).write_bytes(data[:cut])
        rep = Lake.create(str(tmp_path / f"lake-{name}")).ingest(tmp_path / name, progress=False)
        assert rep.flags["tar_corrupt"] == 2, (name, rep.to_dict())  # the shard's row, and k1 (it may be incomplete)
        assert rep.status["ok"] == 1  # k0
    # a header overwritten mid-shard (not a cut): tarfile ended the reading there without a word
    bad = bytearray(data)
    bad[third.offset: third.offset + 512] = bytes(range(256)) * 2
    (tmp_path / "garbled.tar").write_bytes(bytes(bad))
    rep = Lake.create(str(tmp_path / "lake-garbled")).ingest(tmp_path / "garbled.tar", progress=False)
    assert rep.flags["tar_corrupt"] == 2 and rep.status["ok"] == 1, rep.to_dict()
    lk = Lake.open(str(tmp_path / "lake-garbled"))
    note = lk.sql("SELECT ingest_error FROM pairs WHERE key LIKE '__tar_error__%'")["ingest_error"][0]
    assert f"the block at byte {third.offset} is not a tar member header" in note
    cut_gz = tmp_path / "cut.tar.gz"
    import gzip as gz

    packed = gz.compress(data)
    cut_gz.write_bytes(packed[: len(packed) * 2 // 3])
    rep = Lake.create(str(tmp_path / "lake-gz")).ingest(cut_gz, progress=False)
    assert rep.flags["tar_corrupt"] == 2 and rep.status.get("warning", 0) == 0, rep.to_dict()
    # a key right after itself is a second sample, not an overwrite of the first
    again = tmp_path / "again.tar"
    write_shard(again, [{"a.jpg": noise_jpeg(seed=1), "a.txt": b"first"}, {"a.jpg": noise_jpeg(seed=2), "a.txt": b"second"}])
    rep = lake.ingest(again, progress=False)
    rows = by_key(lake)
    assert rep.written == 2 and rows["a"]["caption"] == "first" and rows["a#2"]["caption"] == "second"
    assert rows["a#2"]["ingest_flags"].tolist() == ["duplicate_key"]
    # --max-bytes holds for members: the large one is not read
    rep = Lake.create(str(tmp_path / "lake-small")).ingest(whole, options=IngestOptions(max_bytes=100), progress=False)
    assert rep.flags["file_too_large"] == 4 and rep.written == 4


def test_jpeg_with_bytes_after_its_end_is_whole_and_max_pixels_past_the_decode_limit_is_refused(lake: Lake, tmp_path: Path):
    whole = noise_jpeg()
    payload = b"Exif\x00\x00thumbnail\xff\xd8...\xff\xd9"  # an APP1 holding an end marker of its own
    with_app1 = whole[:2] + b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload + whole[2:]
    video = bytes(range(0, 255)) * 40  # ~10 KB appended, as a motion photo's video (no 0xFF in it)
    for jpeg in (whole, with_app1):
        assert probe_image(jpeg + video, 10**8)[1] == []
        cut = jpeg[: len(jpeg) - 300]  # a JPEG cut short is still caught, thumbnail or not
        assert probe_image(cut, 10**8)[1] == ["image_truncated"]
    from lakecurate.images import MAX_DECODE_PIXELS

    # (up to Pillow's own limit, twice this, was taken: such an image was ingested 'ok', then embed
    # refused it as image_too_large while the signals and the report's thumbnail decoded it)
    with pytest.raises(IngestError, match=f"above what the image stages decode \\({MAX_DECODE_PIXELS} pixels\\).*"
                                          f"pass at most {MAX_DECODE_PIXELS}"):
        lake.ingest(SAMPLE_DATA, options=IngestOptions(max_pixels=MAX_DECODE_PIXELS + 1), progress=False)
    assert lake.count() == 0


def test_ingest_into_a_table_changed_outside_lakecurate_is_a_clear_error(lake: Lake, tmp_path: Path):
    lake.ingest(SAMPLE_DATA, progress=False)
    lance.dataset(lake.main_uri).drop_columns(["meta"])  # a teammate's plain-Lance edit
    v = lake.version
    with pytest.raises(LakeError, match=r"pairs table was changed outside lakecurate \(column meta is missing\).*restore"):
        lake.ingest(small_folder(tmp_path / "more", 2), progress=False)
    assert lake.version == v


def test_an_image_column_rewritten_as_plain_binary_is_a_clear_error(lake: Lake, tmp_path: Path):
    """pairs.lance overwritten by plain Lance with ``image`` as a plain large_binary (no blob): ingest
    ended in Lance's traceback "Append with different schema: image should have type large_binary
    but type was struct", as the check let any blob column of lakecurate's schema pass."""
    lake.ingest(SAMPLE_DATA, progress=False)
    ds = lance.dataset(lake.main_uri)
    plain = ds.to_table(columns=[c for c in ds.schema.names if c != "image"])
    plain = plain.append_column(pa.field("image", pa.large_binary()), pa.array([b"x"] * plain.num_rows, pa.large_binary()))
    lance.write_dataset(plain, lake.main_uri, mode="overwrite")  # a teammate's plain-Lance rewrite
    v, more = lake.version, small_folder(tmp_path / "more", 2)
    res = CliRunner().invoke(main, ["ingest", lake.uri, str(more)])
    assert res.exit_code == 1 and "Traceback" not in res.output and len(res.output.strip().splitlines()) == 1, res.output
    assert "changed outside lakecurate (column image is large_binary, not a Lance blob column)" in res.output
    assert lake.version == v
    lake.restore(v - 1)  # the blob column back: ingest appends again
    assert lake.ingest(more, progress=False).written == 2


def test_a_repaired_shard_replaces_its_broken_sample_and_drops_its_break_row(tmp_path: Path):
    """--retry-errors after a shard is whole again: the sample it broke in is read again (it was a
    caption_missing warning in a .tar.gz, never re-read), the samples after it arrive, and the row
    saying where it broke goes (it stayed, an error forever). A missing shard is refused."""
    lake = Lake.create(tmp_path / "lake")
    samples = [{f"k{i}.jpg": noise_jpeg(seed=i), f"k{i}.txt": f"c{i}".encode()} for i in range(4)]
    whole = tmp_path / "whole.tar"
    write_shard(whole, samples)
    import gzip as gz

    packed = gz.compress(whole.read_bytes())
    shard = tmp_path / "s.tar.gz"
    shard.write_bytes(packed[: len(packed) // 2])
    lake.ingest(shard, progress=False)
    assert lake.count("ingest_status = 'error'") == 2
    shard.write_bytes(packed)
    rep = lake.ingest(shard, retry_errors=True, progress=False)
    assert rep.markers_removed == 1 and rep.replaced == 1
    df = lake.to_pandas(["key", "caption", "ingest_status"]).sort_values("key")
    assert df["key"].tolist() == ["k0", "k1", "k2", "k3"] and set(df["ingest_status"]) == {"ok"}
    assert df["caption"].tolist() == ["c0", "c1", "c2", "c3"]
    with pytest.raises(IngestError, match=r"1 of the 2 shards named by .* do not exist \(.*nope.tar\)"):
        lake.ingest(f"{tmp_path}/{{s.tar.gz,nope.tar}}", progress=False)


def test_a_manifest_named_without_its_extension_is_read_by_its_bytes(lake: Lake, tmp_path: Path):
    """`export DIR --format parquet` once wrote a file without an extension; `ingest --kind
    manifest` then read the Parquet as CSV and advised saving it as UTF-8."""
    import pyarrow.ipc as ipc

    rows = {"image": [str(SAMPLE_DATA / "chelsea.jpg"), str(SAMPLE_DATA / "coffee.jpg")], "caption": ["a cat", "a cup"]}
    pq.write_table(pa.table(rows), tmp_path / "noext")
    with ipc.new_file(tmp_path / "arrownoext", pa.table(rows).schema) as w:
        w.write_table(pa.table(rows))
    for name in ("noext", "arrownoext"):
        rep = lake.ingest(tmp_path / name, kind="manifest", root=SAMPLE_DATA, progress=False)
        assert rep.written == 2 and rep.status.get("error", 0) == 0, (name, rep)
    assert lake.count("ingest_status = 'ok'") == lake.count() == 4  # (each manifest is a source of its own)


def test_an_export_named_without_an_extension_ingests_without_kind(lake: Lake, tmp_path: Path):
    """`export LAKE o8 --format parquet` writes the name given; `ingest LAKE2 o8` then said "cannot tell
    what 'o8' is ... pass --kind": a Parquet or Arrow IPC file is known by its magic bytes at both ends."""
    import pyarrow.ipc as ipc

    lake.ingest(SAMPLE_DATA, progress=False)
    lake.export(tmp_path / "o8", "parquet")
    exported = pq.read_table(tmp_path / "o8", columns=["caption"]).num_rows
    rows = pa.table({"image": pa.array([noise_jpeg()], pa.binary()), "caption": ["noise"]})
    with ipc.new_file(tmp_path / "a1", rows.schema) as w:
        w.write_table(rows)
    runner = CliRunner()
    for name, n in (("o8", exported), ("a1", 1)):
        res = runner.invoke(main, ["ingest", str(tmp_path / f"lake-{name}"), str(tmp_path / name), "--json"])
        assert res.exit_code == 0, res.output
        got = json.loads(res.output)
        assert got["kind"] == "manifest" and got["written"] == n > 0 and got["status"].get("error", 0) == 0, got
    (tmp_path / "notes").write_bytes(b"PAR1 is how a Parquet file starts, and this is no Parquet file")
    res = runner.invoke(main, ["ingest", str(tmp_path / "lake-notes"), str(tmp_path / "notes")])
    assert res.exit_code == 1 and "cannot tell what" in res.output and "pass --kind" in res.output, res.output


def test_a_lance_export_ingests_as_a_table_not_as_a_folder_of_its_files(lake: Lake, tmp_path: Path):
    """Ingesting `export --format lance` output walked its folder: _versions/latest_version_hint.json
    (a .json "caption sidecar" without an image) became an error row, the data files "not pairs"."""
    lake.ingest(SAMPLE_DATA, progress=False)
    out = tmp_path / "out"
    lake.export(out, "lance")
    exported = lance.dataset(out).to_table(columns=["caption", "image"])
    again = Lake.create(tmp_path / "again")
    rep = again.ingest(out, progress=False)
    assert rep.kind == "manifest" and rep.written == exported.num_rows > 0 and rep.ignored_files == []
    assert again.count("ingest_status = 'error'") == 0 and again.count("key LIKE '\\_%' ESCAPE '\\'") == 0
    tbl = again.dataset().to_table(columns=["id", "caption"])
    got = zip(tbl.column("caption").to_pylist(), again.read_images(tbl.column("id").to_pylist()))
    assert sorted(got, key=str) == sorted(zip(*(exported.column(c).to_pylist() for c in ("caption", "image"))), key=str)
    runner = CliRunner()
    refusals = [  # (arguments, what the one-line message says)
        ([str(out), "--kind", "folder"], "is a Lance table, not a folder of pairs; drop --kind folder"),
        ([lake.main_uri], "blob column (a lake's own table) is not a manifest; export its rows"),
    ]
    for args, says in refusals:
        res = runner.invoke(main, ["ingest", str(tmp_path / "lake2"), *args])
        assert res.exit_code == 1 and says in res.output and len(res.output.strip().splitlines()) == 1, res.output
        assert not (tmp_path / "lake2").exists()


def test_a_retry_counts_no_new_pair_and_no_copy_of_itself(tmp_path: Path):
    """--retry-errors said "ingested 1 new pairs" for a row it replaced, and "1 new pairs hold
    images already in the lake under another source or key": the row's own old error row."""
    from click.testing import CliRunner

    from lakecurate.cli import main

    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(SAMPLE_DATA / "chelsea.jpg", src / "cat.jpg")
    (src / "cat.txt").write_text("a cat")
    (src / "broken.jpg").write_bytes(b"not an image")
    (src / "broken.txt").write_text("a broken picture")
    lake = tmp_path / "lake"
    runner = CliRunner()
    assert runner.invoke(main, ["ingest", str(lake), str(src)]).exit_code == 0
    res = runner.invoke(main, ["ingest", str(lake), str(src), "--retry-errors"])
    assert res.exit_code == 0, res.output
    assert "ingested 0 new pairs" in res.output and "1 error rows read again are the same errors" in res.output
    assert "already in the lake under another source or key" not in res.output, res.output
    (src / "broken.jpg").write_bytes(b"not an image either")  # another error: the row is replaced
    res = runner.invoke(main, ["ingest", str(lake), str(src), "--retry-errors"])
    assert "ingested 0 new pairs" in res.output and "replaced 1 error rows in place" in res.output
    assert "already in the lake under another source or key" not in res.output, res.output


def test_error_rows_the_source_no_longer_gives_are_removed(tmp_path: Path):
    """An orphan caption whose image came is the pair `orphan.jpg`; the error row `orphan` stayed
    beside it (the caption twice, the error counted for ever, even after --retry-errors), and so
    did a manifest's unparseable `row1` once the row was fixed under its path. A re-read of the
    source removes the error rows it no longer gives; a shard it cannot finish keeps its own."""
    lake = Lake.create(tmp_path / "lake")
    src = tmp_path / "src"
    src.mkdir()
    (src / "orphan.txt").write_text("a caption without an image")
    (src / "x.jpg").write_bytes(noise_jpeg(seed=1))
    (src / "bad.jpg").write_bytes(b"not an image")
    manifest = src.parent / "m.csv"
    (src.parent / "img.jpg").write_bytes(noise_jpeg(seed=2))
    manifest.write_text("image,caption\nimg.jpg,too,many\n")
    lake.ingest(src, progress=False)
    lake.ingest(manifest, progress=False)
    assert sorted(lake.to_pandas(["key"], where="ingest_status = 'error'")["key"]) == ["bad.jpg", "orphan", "row1"]
    (src / "orphan.jpg").write_bytes(noise_jpeg(seed=3))  # the causes fixed
    manifest.write_text('image,caption\nimg.jpg,"too,many"\n')
    rep = lake.ingest(src, progress=False)
    assert rep.written == 1 and rep.errors_removed == 1 and rep.to_dict()["errors_removed"] == 1
    rep = lake.ingest(manifest, retry_errors=True, progress=False)
    assert rep.written == 1 and rep.errors_removed == 1
    df = lake.to_pandas(["key", "caption", "ingest_status"])
    assert sorted(df["key"]) == ["bad.jpg", "img.jpg", "orphan.jpg", "x.jpg"]  # bad.jpg is still bad: kept
    assert df["caption"].tolist().count("a caption without an image") == 1
    (src / "bad.jpg").unlink()  # a bad file deleted: its row goes with it
    assert lake.ingest(src, progress=False).errors_removed == 1 and lake.count("ingest_status = 'error'") == 0
    # a shard read only part way keeps the error rows of what it did not reach
    shard = tmp_path / "s.tar"
    write_shard(shard, [{"a.jpg": noise_jpeg(seed=4), "a.txt": b"a"}, {"b.jpg": b"not an image", "b.txt": b"b"}])
    lake.ingest(shard, progress=False)
    data = shard.read_bytes()
    shard.write_bytes(data[:1024])  # cut inside the first member
    rep = lake.ingest(shard, progress=False)
    assert rep.errors_removed == 0 and lake.count("key = 'b' AND ingest_status = 'error'") == 1
    result = CliRunner().invoke(main, ["--no-progress", "ingest", lake.uri, str(src)])
    assert result.exit_code == 0 and "removed" not in result.output


def test_utf16_captions_numbers_in_json_sidecars_and_hidden_files(lake: Lake, tmp_path: Path):
    """A UTF-16 caption file (Windows' "Unicode") was stored as replacement characters; a JSON
    sidecar's number caption was caption_missing (a manifest's is kept as its text); hidden image
    files and folders were skipped without a word."""
    src = tmp_path / "src"
    (src / ".thumbs").mkdir(parents=True)
    for name, seed in (("u", 0), ("n", 1), (".hidden", 2)):
        (src / f"{name}.jpg").write_bytes(noise_jpeg(seed=seed))
    (src / "u.txt").write_bytes("une légende".encode("utf-16"))
    (src / "n.json").write_text('{"caption": 12345}')
    (src / ".hidden.txt").write_text("h")
    rep = lake.ingest(src, progress=False)
    rows = by_key(lake)
    assert rows["u.jpg"]["caption"] == "une légende" and rows["u.jpg"]["ingest_flags"].tolist() == []
    assert rows["n.jpg"]["caption"] == "12345" and rows["n.jpg"]["ingest_flags"].tolist() == ["caption_not_text"]
    assert sorted(rows) == ["n.jpg", "u.jpg"] and sorted(rep.ignored_files) == [".hidden.jpg (hidden)", ".thumbs/ (hidden folder)"]


def test_retry_errors_with_nothing_fixed_writes_nothing(lake: Lake, tmp_path: Path):
    """Each --retry-errors with the cause not fixed made a version rewriting the same error rows."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "bad.jpg").write_bytes(b"not an image")
    (src / "good.jpg").write_bytes(noise_jpeg())
    lake.ingest(src, progress=False)
    v = lake.version
    rep = lake.ingest(src, retry_errors=True, progress=False)
    assert rep.errors_unchanged == 1 and rep.written == 0 and rep.replaced == 0 and lake.version == v
    (src / "bad.jpg").write_bytes(noise_jpeg(seed=5))  # fixed: replaced
    rep = lake.ingest(src, retry_errors=True, progress=False)
    assert rep.replaced == 1 and rep.errors_unchanged == 0 and lake.count("ingest_status = 'error'") == 0


def test_a_lake_or_lance_table_inside_a_source_folder_is_skipped_and_a_lake_as_the_source_refused(tmp_path: Path):
    """A lake kept inside its photo folder (`ingest ./photos/lake ./photos`, run twice), or another
    lake's folder as the source, walked the lake's files: pairs.lance/_versions/*.json became
    image_missing error rows."""
    from lakecurate.cli import main

    src = tmp_path / "photos"
    src.mkdir()
    shutil.copy(SAMPLE_DATA / "chelsea.jpg", src / "cat.jpg")
    (src / "cat.txt").write_text("a cat")
    for _ in range(2):
        rep = Lake.create(src / "lake").ingest(src, progress=False)
    lake = Lake.open(src / "lake")
    lake.export(tmp_path / "out", "lance")  # a Lance table inside the folder is not pairs either
    shutil.move(tmp_path / "out", src / "out")
    rep = lake.ingest(src, progress=False)
    assert rep.written == 0 and sorted(rep.ignored_files) == ["lake/ (a lakecurate lake)", "out/ (a Lance table)"]
    assert lake.to_pandas(["key", "ingest_status"]).values.tolist() == [["cat.jpg", "ok"]]
    res = CliRunner().invoke(main, ["ingest", str(tmp_path / "other"), str(src / "lake")])
    assert res.exit_code == 1 and "is a lakecurate lake, not a folder of pairs" in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1 and not (tmp_path / "other").exists()


def test_nan_and_infinity_in_a_json_sidecar_are_stored_as_text_so_meta_is_strict_json(lake: Lake, tmp_path: Path):
    """A sidecar's NaN / Infinity went into meta as they were: not JSON (JSON.parse refuses it)."""
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(SAMPLE_DATA / "chelsea.jpg", src / "cat.jpg")
    (src / "cat.json").write_text('{"caption": "ok", "score": NaN, "x": [Infinity, -Infinity, 1e999], "y": {"z": NaN}}')
    lake.ingest(src, progress=False)
    meta = lake.to_pandas(["meta"])["meta"][0]

    def refuse(constant: str) -> None:
        raise ValueError(f"not strict JSON: {constant}")

    assert json.loads(meta, parse_constant=refuse) == {"caption": "ok", "score": "nan", "x": ["inf", "-inf", "inf"],
                                                       "y": {"z": "nan"}}


def test_a_csv_manifest_naming_a_column_twice_is_refused(tmp_path: Path):
    """`image,image,caption` kept the last image of each row and lost the first without a word."""
    from lakecurate.cli import main

    (tmp_path / "m.csv").write_text("image,image,caption\nchelsea.jpg,coffee.jpg,x\n")
    res = CliRunner().invoke(main, ["ingest", str(tmp_path / "lake"), str(tmp_path / "m.csv"),
                                    "--image-dir", str(SAMPLE_DATA)])
    assert res.exit_code == 1 and "the header names column 'image' more than once" in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1 and not (tmp_path / "lake").exists()
    (tmp_path / "ok.csv").write_text("image,caption,,\nchelsea.jpg,x,,\n")  # a spreadsheet's unnamed empty columns
    rep = Lake.create(tmp_path / "ok").ingest(tmp_path / "ok.csv", image_dir=str(SAMPLE_DATA), progress=False)
    assert rep.written == 1


def test_a_manifest_s_folders_may_be_paths_in_the_python_api(tmp_path: Path):
    """`Lake.ingest(csv, image_dir=Path(...))` was a TypeError traceback ("argument of type
    'PosixPath' is not iterable"): the CLI passes text, the Python API a Path as readily."""
    (tmp_path / "m.csv").write_text("image,caption\nchelsea.jpg,a cat on a sofa\n")
    rep = Lake.create(tmp_path / "lake").ingest(tmp_path / "m.csv", image_dir=SAMPLE_DATA, root=SAMPLE_DATA,
                                                progress=False)
    assert rep.written == 1 and Lake.open(tmp_path / "lake").count("ingest_status = 'ok'") == 1
    with pytest.raises(LakeError, match="invalid image_dir 5: expected a path"):
        Lake.open(tmp_path / "lake").ingest(tmp_path / "m.csv", image_dir=5, progress=False)


def test_an_export_inside_a_source_folder_adds_no_row(tmp_path: Path):
    """An export kept in the photo folder: a Lance table's and a Parquet file's `DEST.manifest.json`
    beside them, and a WebDataset folder's `manifest.json`, were read as caption sidecars without an
    image: an image_missing error row each. They are an export's manifests, listed as ignored."""
    src = tmp_path / "photos"
    src.mkdir()
    shutil.copy(SAMPLE_DATA / "chelsea.jpg", src / "cat.jpg")
    (src / "cat.txt").write_text("a cat")
    (src / "notes.json").write_text('{"caption": "a sidecar of its own"}')  # (still a pair without an image)
    lake = Lake.create(tmp_path / "lake")
    lake.ingest(src, progress=False)
    lake.export(src / "out", "lance")
    lake.export(src / "out.parquet", "parquet")
    lake.export(src / "shards", "webdataset")
    rep = lake.ingest(src, progress=False)
    assert rep.written == 0, rep
    assert {"out.manifest.json (an export's manifest)", "out.parquet.manifest.json (an export's manifest)",
            "shards/manifest.json (an export's manifest)"} <= set(rep.ignored_files), rep.ignored_files
    assert sorted(lake.to_pandas(["key"])["key"]) == ["cat.jpg", "notes"]


def test_a_file_uri_source_is_a_local_path_and_an_object_store_source_is_refused_before_a_lake_is_made(tmp_path: Path):
    """`ingest L file:///x/00001.tar` made a lake holding one junk file_missing row ('/cwd/file:/x/00001.tar'),
    exit 0, and a file:// folder 'did not exist'; an s3:// shard the same junk row."""
    shards = tmp_path / "shards"
    shards.mkdir()
    for s in range(2):
        write_shard(shards / f"{s:05d}.tar", [{f"{s}{i}.jpg": noise_jpeg(seed=10 * s + i), f"{s}{i}.txt": b"a cap"}
                                              for i in range(2)])
    res = CliRunner().invoke(main, ["ingest", str(tmp_path / "a"), f"file://{shards}/00001.tar", "--json"])
    assert res.exit_code == 0, res.output
    assert Lake.open(tmp_path / "a").to_pandas(["key", "ingest_status"]).values.tolist() == [["10", "ok"], ["11", "ok"]]
    rep = Lake.create(f"file://{tmp_path}/b").ingest(f"file://{shards}", progress=False)  # a folder of shards
    assert rep.written == 4 and rep.kind == "webdataset"
    for src in ("s3://bucket/src/00001.tar", "gs://bucket/src/"):
        res = CliRunner().invoke(main, ["ingest", str(tmp_path / "c"), src])
        assert res.exit_code == 1 and "sources on an object store are not read" in res.output, res.output
        assert len(res.output.strip().splitlines()) == 1 and not (tmp_path / "c").exists()
    with pytest.raises(LakeError, match="sources on an object store"):
        Lake.create(tmp_path / "d").ingest("s3://bucket/src/00001.tar", progress=False)
    assert Lake.open(tmp_path / "d").count() == 0
