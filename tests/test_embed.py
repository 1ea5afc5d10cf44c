"""Embeddings as zero-copy columns: types, provenance, no-op re-runs, increments, resume."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute  # noqa: F401 - pa.compute
import pytest
from click.testing import CliRunner

from lakecurate import Lake, LakeError
from lakecurate.cli import main
from lakecurate.columns import field_provenance
from lakecurate.encoders import Encoder, EncoderError, column_names, resolve

from .conftest import SAMPLE_DATA, image_bytes
from .writers import kill_9_when, spawn

COLS = column_names("clip_tinyrandom")


def data_files(lake: Lake) -> dict[str, int]:
    d = Path(lake.table_uri) / "data"
    return {p.name: p.stat().st_size for p in d.iterdir()}


def vectors(lake: Lake, col: str) -> np.ndarray:
    return np.array(lake.to_pandas(["id", col])[col].dropna().tolist(), dtype=np.float32)


def test_columns_types_norms_and_scores(sample_lake_embedded: Lake):
    lake = sample_lake_embedded
    schema = lake.dataset().schema
    assert str(schema.field(COLS["image"]).type) == "fixed_size_list<item: halffloat>[32]"
    assert str(schema.field(COLS["score"]).type) == "float"
    df = lake.to_pandas(["key", COLS["image"], COLS["text"], COLS["score"], COLS["error"]]).set_index("key")
    ok = df[df[COLS["error"]].isna()]
    assert len(ok) == 24  # (brick_empty_caption's caption is empty: no caption, no score)
    img = np.array(ok[COLS["image"]].tolist(), dtype=np.float32)
    txt = np.array(ok[COLS["text"]].tolist(), dtype=np.float32)
    assert np.allclose(np.linalg.norm(img, axis=1), 1, atol=2e-3)
    assert np.allclose((img * txt).sum(1), ok[COLS["score"]], atol=5e-3)
    # bad rows: a null embedding and a reason, never a crash
    # an image ingest refused is not decoded again: the reason is ingest's
    assert df.loc["gravel_truncated.jpg", COLS["error"]] == "image_refused_at_ingest: image_truncated"
    assert df.loc["notes_not_an_image.jpg", COLS["image"]] is None
    assert df.loc["horse_no_caption.jpg", COLS["error"]] == "caption_missing"
    assert df.loc["horse_no_caption.jpg", COLS["image"]] is not None  # the image still has its vector
    assert df.loc["brick_empty_caption.jpg", COLS["error"]] == "caption_missing"
    # an exact copy embeds identically; different photos do not
    assert np.array_equal(df.loc["chelsea.jpg", COLS["image"]], df.loc["chelsea_copy.jpg", COLS["image"]])
    assert not np.array_equal(df.loc["chelsea.jpg", COLS["image"]], df.loc["rocket.jpg", COLS["image"]])


def test_provenance_on_every_field(sample_lake_embedded: Lake):
    schema = sample_lake_embedded.dataset().schema
    for col in COLS.values():
        prov = field_provenance(schema.field(col))
        assert prov["stage"] == "embed" and prov["source_columns"] == ["image", "caption"]
        assert prov["config"]["arch"] == "lakecurate-tiny-random-MEANINGLESS"
        assert len(prov["config_hash"]) == 12 and prov["tool_version"] and prov["table_version"] >= 1
    info = sample_lake_embedded.info()
    assert next(c for c in info["columns"] if c["name"] == COLS["score"])["provenance"]["stage"] == "embed"


def test_rerun_is_noop_and_image_files_untouched(lake: Lake):
    lake.ingest(SAMPLE_DATA, progress=False)
    before = data_files(lake)
    lake.embed("tiny-random", workers=0, progress=False)
    after = data_files(lake)
    assert all(after[name] == size for name, size in before.items())  # nothing rewritten
    new = set(after) - set(before)
    assert len(new) == 1 and after[new.pop()] < sum(before.values()) / 4  # only the new columns' bytes
    v = lake.version
    rep = lake.embed("tiny-random", workers=0, progress=False)
    assert rep.rows_embedded == 0 and lake.version == v


def test_incremental_after_append(lake: Lake, tmp_path: Path):
    lake.ingest(SAMPLE_DATA, progress=False)
    first = lake.embed("tiny-random", workers=0, progress=False)
    assert first.rows_embedded == 28
    src = tmp_path / "more"
    src.mkdir()
    for i in range(5):
        (src / f"m{i}.png").write_bytes(image_bytes("PNG", color=(40 * i, 10, 10)))
        (src / f"m{i}.txt").write_text(f"more {i}")
    lake.ingest(src, progress=False)
    assert lake.count(f"{COLS['score']} IS NULL AND {COLS['error']} IS NULL") == 5
    second = lake.embed("tiny-random", workers=0, progress=False)
    assert second.rows_embedded == 5 and second.fragments_done == 1
    assert lake.count(f"{COLS['score']} IS NULL AND {COLS['error']} IS NULL") == 0


def test_spawned_workers_give_the_same_vectors(lake: Lake, sample_lake_embedded: Lake):
    lake.ingest(SAMPLE_DATA, progress=False)
    lake.embed("tiny-random", workers=1, batch_size=8, progress=False)
    a = sample_lake_embedded.to_pandas(["key", COLS["score"]]).set_index("key").sort_index()
    b = lake.to_pandas(["key", COLS["score"]]).set_index("key").sort_index()
    assert np.allclose(a[COLS["score"]].fillna(9), b[COLS["score"]].fillna(9), atol=1e-6)


def test_kill_9_mid_embed_resumes_from_checkpoint(lake: Lake, sample_lake_embedded: Lake):
    lake.ingest(SAMPLE_DATA, progress=False)
    ckpt = Path(lake.uri) / "_lakecurate" / "checkpoints"
    proc = spawn("embed-slow", lake.uri)
    kill_9_when(proc, lambda: len(list(ckpt.glob("*/*/*.arrow"))) >= 3)
    saved = len(list(ckpt.glob("*/*/*.arrow")))
    assert saved >= 3
    rep = lake.embed("tiny-random", workers=0, batch_size=4, progress=False)
    assert rep.rows_resumed >= 12 and rep.rows_embedded == 28 - rep.rows_resumed
    assert not list(ckpt.glob("*/*/*.arrow"))  # checkpoint removed once the commit landed
    a = sample_lake_embedded.to_pandas(["key", COLS["score"]]).set_index("key").sort_index()
    b = lake.to_pandas(["key", COLS["score"]]).set_index("key").sort_index()
    assert len(b) == 28 and np.allclose(a[COLS["score"]].fillna(9), b[COLS["score"]].fillna(9), atol=1e-6)


def test_config_conflicts_names_and_recompute(lake: Lake):
    lake.ingest(SAMPLE_DATA, progress=False)
    lake.embed("tiny-random", workers=0, progress=False)
    with pytest.raises(LakeError, match="another config.*; use name to write new columns beside it, or recompute=True"):
        lake.embed("tiny-random", workers=0, precision="bf16", progress=False)
    rep = lake.embed("tiny-random", workers=0, precision="bf16", name="tiny_bf16", progress=False)
    assert rep.columns["score"] == "tiny_bf16_score" and rep.rows_embedded == 28
    rep = lake.embed("tiny-random", workers=0, precision="bf16", recompute=True, progress=False)
    assert rep.rows_embedded == 28
    prov = field_provenance(lake.dataset().schema.field(COLS["score"]))
    assert prov["config"]["precision"] == "bf16"


def test_registry_errors_name_the_options(monkeypatch):
    with pytest.raises(EncoderError, match="unknown model 'ViT-Q-99'.*offline.*tiny-random"):
        resolve("ViT-Q-99")
    with pytest.raises(EncoderError, match="known tags"):
        resolve("ViT-B-32", pretrained="nope")
    spec = resolve("vitb32")
    assert spec.arch == "ViT-B-32" and spec.prefix == "clip_vitb32_laion2b"
    assert resolve("ViT-B-32:openai").prefix == "clip_vitb32_openai"
    # offline (HF_HUB_OFFLINE=1 in conftest): weights by name cannot load, and the message says what to do
    with pytest.raises(EncoderError, match="checkpoint='PATH'.*model='offline'"):
        Encoder(spec, device="cpu")
    with pytest.raises(EncoderError, match="checkpoint .* does not exist"):
        resolve("ViT-B-32", checkpoint="/nonexistent.pt")


def test_weights_by_name_fail_at_once_where_their_host_cannot_be_reached(monkeypatch):
    """Weights by name that are not in the local cache, with the hub unreachable: one clear error
    at once. open_clip's download retried for ~46 s first (two file names, five retries each)."""
    import socket

    import huggingface_hub
    import open_clip

    from lakecurate import encoders

    for v in encoders._PROXY_VARIABLES:
        monkeypatch.delenv(v, raising=False)
    asked = []
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda repo, name, **kw: asked.append((repo, name)))

    def refused(address, timeout=None):
        asked.append(address)
        raise OSError("no route to host")

    monkeypatch.setattr(socket, "create_connection", refused)
    monkeypatch.setattr(open_clip, "create_model_and_transforms", lambda *a, **kw: pytest.fail("open_clip was asked"))
    with pytest.raises(EncoderError, match=r"laion/CLIP-ViT-B-32-laion2B-s34B-b79K is not in the local cache \(HF_HOME\) "
                       r"and huggingface.co cannot be reached \(no route to host\).*checkpoint='PATH'"):
        Encoder(resolve("ViT-B-32"), device="cpu")
    assert ("huggingface.co", 443) in asked and ("laion/CLIP-ViT-B-32-laion2B-s34B-b79K", "open_clip_model.safetensors") in asked
    # cached, reachable or behind a proxy: open_clip decides (here: it is asked)
    for cached, reach, proxy in ((True, False, None), (False, True, None), (False, False, "http://proxy:3128")):
        monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda repo, name, **kw: "/cache/w.bin" if cached else None)
        monkeypatch.setattr(socket, "create_connection", (lambda *a, **kw: socket.socket()) if reach else refused)
        if proxy:
            monkeypatch.setenv("HTTPS_PROXY", proxy)
        assert encoders._weights_unreachable(open_clip, "ViT-B-32", "laion2b_s34b_b79k") is None
    assert encoders._weights_unreachable(open_clip, "ViT-B-32", "no-such-tag") is None  # open_clip's own error then


def test_checkpoint_file_loads_like_pretrained(tmp_path: Path):
    import torch

    enc = Encoder(resolve("tiny-random"), device="cpu")
    path = tmp_path / "tiny.pt"
    torch.save(enc.model.state_dict(), path)
    spec = resolve("tiny-random")
    ck = Encoder(resolve(spec.arch, checkpoint=str(path)), device="cpu")
    assert ck.spec.prefix == "clip_lakecuratetinyrandommeaningless_ckpt"
    assert torch.allclose(enc.encode_texts(["a cat"]), ck.encode_texts(["a cat"]), atol=1e-6)


def test_cli_embed(tmp_path: Path):
    lake = str(tmp_path / "lake")
    runner = CliRunner()
    assert runner.invoke(main, ["ingest", lake, str(SAMPLE_DATA)]).exit_code == 0
    res = runner.invoke(main, ["embed", lake, "--model", "tiny-random", "--workers", "0", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output[res.output.index("{"):])
    assert out["rows_embedded"] == 28 and out["meaningless"] is True
    res = runner.invoke(main, ["embed", lake, "--model", "ViT-Q-99"])
    assert res.exit_code == 1 and "unknown model" in res.output and "Traceback" not in res.output


def test_search_by_text_and_image_and_index(sample_lake_embedded: Lake, lake: Lake):
    hits = sample_lake_embedded.search((SAMPLE_DATA / "chelsea.jpg").read_bytes(), k=3)
    assert set(hits["key"][:2]) == {"chelsea.jpg", "chelsea_copy.jpg"}  # identical bytes: similarity 1
    assert hits["similarity"].iloc[0] == pytest.approx(1.0, abs=1e-2)
    by_path = sample_lake_embedded.search(str(SAMPLE_DATA / "rocket.jpg"), k=1)
    assert by_path["key"][0] == "rocket.jpg"
    txt = sample_lake_embedded.search("a tabby cat looking to the side", k=2, target="text", where="key <> 'chelsea.jpg'")
    assert "chelsea.jpg" not in set(txt["key"]) and len(txt) == 2
    # an index is built once the lake is large enough (threshold lowered here), and search still works
    lake.ingest(SAMPLE_DATA, progress=False)
    rep = lake.embed("tiny-random", workers=0, index_min_rows=10, progress=False)
    assert rep.indexed and lake.dataset().has_index
    assert lake.search(str(SAMPLE_DATA / "coffee.jpg"), k=1)["key"][0] == "coffee.jpg"
    with pytest.raises(LakeError, match="no embedding columns; run: lakecurate embed"):
        Lake.create(lake.uri + "-empty").search("x")
    # what a Python caller can pass that was searched for as text, a raw KeyError or Lance error, or nothing
    for query, kw, match in [(None, {}, "search for a text, an image .* not NoneType"),
                             (["a cat"], {}, "not list"),
                             (np.zeros(32, np.float32), {}, "all zeros or not finite"),
                             (np.ones(10, np.float32), {}, "a query vector of 10 numbers for embeddings of 32"),
                             ("a cat", {"target": "foo"}, "target 'foo'"),
                             ("a cat", {"columns": ["nosuch"]}, "no column nosuch in lake")]:
        with pytest.raises(LakeError, match=match):
            sample_lake_embedded.search(query, k=2, **kw)
    assert len(sample_lake_embedded.search(np.ones(32, np.float32), k=2)) == 2


def test_search_names_its_embedding_as_the_other_commands_do(sample_lake_embedded: Lake, tmp_path: Path):
    """dedup, cluster and evaluate take --embedding; search took only --prefix ("No such option")."""
    import shutil

    lake = Lake.open(shutil.copytree(sample_lake_embedded.uri, tmp_path / "lake"))
    lake.embed("tiny-random", name="other", workers=0, progress=False)
    res = CliRunner().invoke(main, ["search", lake.uri, "a dog", "--text", "--json"])
    assert res.exit_code == 1 and "pass --embedding NAME" in res.output, res.output
    for flag in ("--embedding", "--prefix"):
        res = CliRunner().invoke(main, ["search", lake.uri, "a dog", "--text", flag, "other", "-k", "3", "--json"])
        assert res.exit_code == 0 and len(json.loads(res.output)) == 3, res.output


def test_worker_transform_matches_open_clip_factory():
    from PIL import Image

    enc = Encoder(resolve("tiny-random"), device="cpu")
    mine, _ = enc.spec.build_transforms()
    with Image.open(SAMPLE_DATA / "coffee.jpg") as im:
        assert np.allclose(mine(im.convert("RGB")), enc.open_clip_preprocess(im.convert("RGB")).numpy(), atol=1e-6)
        tall = im.convert("RGB").resize((50, 130))  # portrait: the other branch of shortest-side resize
        assert np.allclose(mine(tall), enc.open_clip_preprocess(tall).numpy(), atol=1e-6)
    assert enc.dim == enc.spec.embed_dim() == 32


# --------------------------------------------------------------------------- hardening (issue 16)
def _lake_with_captions(lake: Lake, captions: list[str | None]) -> Lake:
    """A lake of synthetic rows (one small real photo each) with these captions."""
    import pyarrow as pa

    from .conftest import pair_rows

    rows = pair_rows(0, len(captions), image=(SAMPLE_DATA / "coffee.jpg").read_bytes())
    rows = rows.set_column(rows.schema.get_field_index("caption"), "caption", pa.array(captions, pa.string()))
    lake.append(rows)
    return lake


def test_huge_caption_is_cut_before_the_tokenizer_and_the_report(lake: Lake, monkeypatch, tmp_path: Path):
    import open_clip

    from lakecurate import encoders

    cap = getattr(encoders, "MAX_TEXT_CHARS", 4096)
    seen: list[int] = []
    real = open_clip.get_tokenizer

    def spying(*a, **kw):  # the tokenizer the embed stage builds, recording what it is given
        tok = real(*a, **kw)

        def call(texts, *args, **kwargs):
            seen.extend(len(t) for t in ([texts] if isinstance(texts, str) else texts))
            return tok(texts, *args, **kwargs)

        return call

    monkeypatch.setattr(open_clip, "get_tokenizer", spying)
    head = "a red coffee cup on a wooden table " * 20
    huge = head + "more words " * 600_000  # ~7 MB
    _lake_with_captions(lake, [huge, huge[:cap], "a small dog"])
    lake.embed("tiny-random", workers=0, batch_size=8, progress=False)
    assert seen and max(seen) <= cap  # the tokenizer never saw the whole caption
    df = lake.to_pandas(["caption", COLS["text"]])
    assert len(df["caption"][0]) == len(huge)  # the lake keeps the caption whole
    assert np.array_equal(np.asarray(df[COLS["text"]][0]), np.asarray(df[COLS["text"]][1]))
    out = tmp_path / "r.html"
    lake.report(out, sample_rows=100)
    assert out.stat().st_size < 2_000_000 and "characters)" in out.read_text()


def test_bad_embed_options_are_refused_before_any_write(lake: Lake):
    _lake_with_captions(lake, ["a cup", "a dog"])
    version = lake.version
    for bad in [{"batch_size": -4}, {"batch_size": 0}, {"workers": -1}, {"precision": "fp8"}, {"device": "gpu"}]:
        with pytest.raises(LakeError, match="^(invalid batch_size|invalid workers|precision|device) "):
            lake.embed("tiny-random", progress=False, **{"workers": 0, **bad})
    assert lake.version == version and COLS["score"] not in lake.dataset().schema.names
    assert lake.embed("tiny-random", workers=0, progress=False).rows_embedded == 2


def test_a_model_that_will_not_load_writes_no_version(lake: Lake, tmp_path: Path):
    """A checkpoint that is no checkpoint, and fp16 on a CPU, failed in the model's setup after the
    columns were declared: two versions (the columns added, then dropped) for a run that did nothing."""
    _lake_with_captions(lake, ["a cup", "a dog"])
    version = lake.version
    bad = tmp_path / "weights.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(LakeError, match=r"cannot load checkpoint .*weights.pt' for ViT-B-32: UnpicklingError: not a "
                                        r"torch file of weights \(torch.load refused it\)\. Pass a file of ViT-B-32's"):
        lake.embed("ViT-B-32", checkpoint=str(bad), workers=0, progress=False)
    with pytest.raises(LakeError, match="fp16 needs a GPU"):
        lake.embed("tiny-random", precision="fp16", device="cpu", workers=0, progress=False)
    assert lake.version == version
    assert lake.embed("tiny-random", workers=0, progress=False).rows_embedded == 2


def _one_line_error(res) -> str:
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    # tiny-random's notice that its scores are meaningless is not part of the error
    lines = [line for line in res.stderr.strip().splitlines() if not line.startswith("note: ")]
    assert len(lines) == 1, res.stderr
    return lines[0]


def test_a_foreign_table_is_refused_before_any_write(tmp_path: Path):
    import lance
    import pyarrow as pa

    uri = tmp_path / "lake"
    lance.write_dataset(pa.table({"a": [1, 2, 3], "b": ["x", "y", "z"]}), uri / "pairs.lance")
    recipe = tmp_path / "r.toml"
    recipe.write_text('name = "r"\n[[steps]]\nfilter = "caption_length"\nmin_words = 1\n')
    runner = CliRunner()
    for args in (["embed", str(uri), "--model", "offline", "--workers", "0"], ["curate", str(uri), str(recipe)]):
        res = runner.invoke(main, args)
        assert "not a lakecurate table: missing columns id, image, caption" in _one_line_error(res)
        assert lance.dataset(uri / "pairs.lance").version == 1, args


def test_provenance_without_config_hash_or_of_a_newer_format(tmp_path: Path):
    import lance

    from lakecurate.columns import PROVENANCE_KEY

    runner = CliRunner()
    lake = Lake.create(tmp_path / "lake")
    lake.ingest(SAMPLE_DATA, progress=False)
    lake.embed("tiny-random", workers=0, progress=False)
    recipe = tmp_path / "r.toml"
    recipe.write_text('name = "r"\n[[steps]]\nfilter = "caption_length"\nmin_words = 1\n')
    assert runner.invoke(main, ["curate", lake.uri, str(recipe)]).exit_code == 0
    ds = lance.dataset(lake.table_uri)
    assert field_provenance(ds.schema.field("keep")).get("format") == 1  # new records say their format
    for col in ("keep", COLS["score"]):
        prov = json.loads(ds.schema.field(col).metadata[PROVENANCE_KEY.encode()])
        del prov["config_hash"]  # as an unknown or older writer may leave it
        prov.pop("format", None)
        ds.update_field_metadata({col: {PROVENANCE_KEY: json.dumps(prov)}}, replace=True)
    version = lake.version
    res = runner.invoke(main, ["info", lake.uri])
    assert res.exit_code == 0 and "curate:" in res.output, res.output  # what is known is shown
    # the version its provenance names is when the column was declared ("at v19" read as the version
    # a run read, which status names: "curate read version 20")
    assert re.search(r"curate: .* declared at v\d+", res.output), res.output
    assert runner.invoke(main, ["report", lake.uri, str(tmp_path / "r.html")]).exit_code == 0
    recipe.write_text(recipe.read_text().replace("min_words = 1", "min_words = 2"))
    assert "provenance without config_hash" in _one_line_error(runner.invoke(main, ["curate", lake.uri, str(recipe)]))
    assert lake.version == version
    # a newer lakecurate's record: one line saying to upgrade
    ds = lance.dataset(lake.table_uri)
    prov = {**json.loads(ds.schema.field(COLS["text"]).metadata[PROVENANCE_KEY.encode()]), "format": 2}
    ds.update_field_metadata({COLS["text"]: {PROVENANCE_KEY: json.dumps(prov)}}, replace=True)
    version = lake.version
    res = runner.invoke(main, ["embed", lake.uri, "--model", "tiny-random", "--workers", "0"])
    assert "newer lakecurate (provenance format 2" in _one_line_error(res) and lake.version == version


def _exif_twins(fmt: str) -> tuple[bytes, bytes, bytes]:
    """(stored sideways + EXIF orientation 6, the same photo turned upright, sideways without the tag)."""
    import io

    from PIL import Image

    with Image.open(SAMPLE_DATA / "astronaut.jpg") as im:
        upright = im.convert("RGB").resize((96, 128))
    sideways = upright.rotate(90, expand=True)  # orientation 6: turn 90 degrees clockwise to view
    exif = Image.Exif()
    exif[0x0112] = 6

    def enc(img, **kw) -> bytes:
        buf = io.BytesIO()
        img.save(buf, fmt, **({"quality": 95} if fmt == "JPEG" else {}), **kw)
        return buf.getvalue()

    return enc(sideways, exif=exif), enc(upright), enc(sideways)


def test_exif_orientation_is_applied_where_pixels_are_read():
    from lakecurate.embed import decode_image
    from lakecurate.ingest import probe_image

    enc = Encoder(resolve("tiny-random"), device="cpu")
    transform, _ = enc.spec.build_transforms()
    for fmt, tol in (("PNG", 1e-6), ("JPEG", 0.15)):
        tagged, twin, untagged = _exif_twins(fmt)
        px = [transform(decode_image(b)[0]) for b in (tagged, twin, untagged)]
        assert np.abs(px[0] - px[1]).mean() < tol < np.abs(px[2] - px[1]).mean(), fmt
        e = enc.encode_image_tensors(np.stack(px)).numpy()
        assert float(e[0] @ e[1]) > 0.999
    info, flags, _ = probe_image(tagged, 10**8)
    assert info["orientation"] == 6 and info["width"] == 128  # recorded; the header size is as stored


def test_readers_send_uint8_pixels_and_the_model_normalises_them_to_the_same_values():
    """The embed stage's readers send the cropped uint8 pixels (a quarter of the float32 bytes to
    pickle and copy to a GPU); the encoder scales and normalises them with the same float32
    operations: the same pixels and the same embeddings, bit for bit."""
    from lakecurate.embed import Preprocess, embed_stage
    from lakecurate.images import ImageTransform

    spec = resolve("tiny-random")
    enc = Encoder(spec, device="cpu")
    transform, _ = spec.build_transforms()
    assert isinstance(transform, ImageTransform) and not transform.uint8
    blobs = [p.read_bytes() for p in sorted(SAMPLE_DATA.glob("*.jpg"))[:4]]
    floats = Preprocess(transform)(blobs)["pixels"]
    sent = embed_stage(spec, device="cpu").image(blobs)
    assert sent["pixels"].dtype == np.uint8 and sent["pixels"].shape == floats.shape
    assert sent["pixels"].nbytes * 4 == floats.nbytes
    assert np.array_equal(transform.normalize(sent["pixels"]), floats)
    assert np.array_equal(enc.encode_image_tensors(sent["pixels"]).numpy(), enc.encode_image_tensors(floats).numpy())
    with pytest.raises(EncoderError, match="uint8 pixels need an ImageTransform"):
        enc._tf = (lambda im: im, enc._tf[1])
        enc.encode_image_tensors(sent["pixels"])


def _children(pid: int) -> list[int]:
    """Live (not zombie) multiprocessing workers whose parent is ``pid``, from /proc."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()
            if int(fields[1]) == pid and fields[0] != "Z" and b"spawn_main" in (d / "cmdline").read_bytes():
                out.append(int(d.name))
    return out


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2:].split()[0] != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_decode_workers_die_with_a_killed_embed(lake: Lake):
    import subprocess
    import sys
    import time

    from .conftest import REPO

    lake.ingest(SAMPLE_DATA, progress=False)
    script = ("import sys, time, lakecurate.embed as e\n"
              "real = e.start_embed\n"
              "e.start_embed = lambda *a: (time.sleep(0.5), real(*a))[1]\n"
              "from lakecurate import Lake\n"
              "Lake.open(sys.argv[1]).embed('tiny-random', workers=2, batch_size=2, progress=False)\n")
    proc = subprocess.Popen([sys.executable, "-c", script, lake.uri], cwd=REPO)
    ckpt = Path(lake.uri) / "_lakecurate" / "checkpoints"
    deadline, workers = time.time() + 90, []
    while time.time() < deadline and proc.poll() is None:
        workers = _children(proc.pid)
        if len(workers) >= 2 and list(ckpt.glob("*/*/*.arrow")):
            break
        time.sleep(0.1)
    assert len(workers) >= 2, "the embed did not start its decode workers"
    proc.kill()
    proc.wait()
    deadline = time.time() + 10
    while time.time() < deadline and any(_alive(w) for w in workers):
        time.sleep(0.1)
    assert not [w for w in workers if _alive(w)]


def test_a_failed_write_stops_the_decode_workers(lake: Lake, monkeypatch):
    import errno
    import os
    import time

    from lakecurate import columns

    lake.ingest(SAMPLE_DATA, progress=False)

    def full(*a, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(columns.Checkpoint, "save", full)
    with pytest.raises(OSError, match="No space left"):
        lake.embed("tiny-random", workers=2, batch_size=2, progress=False)
    deadline = time.time() + 60  # spawned workers start slowly on a loaded machine; lingering is what fails
    while time.time() < deadline and _children(os.getpid()):
        time.sleep(0.1)
    assert not _children(os.getpid())
    assert COLS["score"] not in lake.dataset().schema.names or not lake.to_pandas([COLS["score"]])[COLS["score"]].notna().any()
    # the readers start while the model loads; a model that will not load stops them too
    with pytest.raises(EncoderError, match="fp16 needs a GPU"):
        lake.embed("tiny-random", workers=2, batch_size=2, device="cpu", precision="fp16", progress=False)
    deadline = time.time() + 60  # spawned workers start slowly on a loaded machine; lingering is what fails
    while time.time() < deadline and _children(os.getpid()):
        time.sleep(0.1)
    assert not _children(os.getpid())


def test_search_words_that_name_a_file_here_and_a_url(sample_lake_embedded: Lake, tmp_path: Path, monkeypatch):
    """A text query that is also a file name in the working folder could not be searched (no way to
    say "these are words"); a URL was called a missing file."""
    from click.testing import CliRunner

    from lakecurate.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "dog").write_text("not an image")
    with pytest.raises(LakeError, match="is a file but not an image.*search for the words with text=True$"):
        sample_lake_embedded.search("dog", 3)
    assert len(sample_lake_embedded.search("dog", 3, text=True)) == 3
    res = CliRunner().invoke(main, ["search", sample_lake_embedded.uri, "dog", "-k", "2", "--text", "--json"])
    assert res.exit_code == 0 and len(json.loads(res.stdout)) == 2
    with pytest.raises(LakeError, match="is a URL: search does not fetch images; download it"):
        sample_lake_embedded.search("https://example.com/cat.jpg", 3)


def test_search_without_its_vector_column_or_with_a_huge_k_is_one_line(sample_lake_embedded: Lake, tmp_path: Path):
    """A text vector column dropped by another writer gave Lance's "Embedding column ... is not in the
    dataset" traceback; k = 2**70 (the API; the CLI caps -k) an OverflowError."""
    import shutil

    import lance

    lake = Lake.open(shutil.copytree(sample_lake_embedded.uri, tmp_path / "lake"))
    assert len(lake.search("a dog", k=2**70)) == lake.count("clip_tinyrandom_image IS NOT NULL")
    lance.dataset(lake.table_uri).drop_columns(["clip_tinyrandom_text"])
    with pytest.raises(LakeError, match="has no clip_tinyrandom_text, the text vectors of embedding clip_tinyrandom "
                                        ".*compute them again: lakecurate embed .* --model tiny-random --recompute"):
        lake.search("a dog", target="text")
    assert len(lake.search("a dog", k=3)) == 3  # the image vectors are still there


def test_search_text_is_the_words_even_as_a_path_and_a_huge_query_image_says_so(sample_lake_embedded: Lake,
                                                                                  monkeypatch):
    """--text with words that name an image file here was refused ("looks like the path of an
    image file, but there is no such file"); a query image over Pillow's pixel limit was "a file
    but not an image Pillow can read"."""
    from PIL import Image

    path = str(SAMPLE_DATA / "coffee.jpg")
    words = sample_lake_embedded.search(path, k=2, text=True)
    image = sample_lake_embedded.search(path, k=2)
    assert len(words) == 2 and not words["similarity"].equals(image["similarity"])
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(LakeError, match="is an image of more pixels than Pillow decodes .* pass a smaller copy"):
        sample_lake_embedded.search(path, k=2)


def test_search_says_which_rows_it_cannot_see(sample_lake_embedded: Lake, tmp_path: Path):
    """Rows ingested after embed, or whose caption was rewritten since, were silently missed (or
    ranked by their old vectors)."""
    import shutil

    import lance
    from click.testing import CliRunner

    from lakecurate.cli import main

    from .conftest import pair_rows

    lake = Lake.open(shutil.copytree(sample_lake_embedded.uri, tmp_path / "lake"))
    assert lake.search("a dog", k=2).attrs["notes"] == []
    lake.append(pair_rows(0, 3))
    notes = lake.search("a dog", k=2).attrs["notes"]
    assert len(notes) == 1 and "embed (clip_tinyrandom_image) is incomplete" in notes[0]
    assert notes[0].endswith(f"lakecurate embed {lake.uri} --model tiny-random")
    lance.dataset(lake.table_uri).update({"caption": "'a brand new caption'"}, where="key = 'coffee.jpg'")
    res = CliRunner().invoke(main, ["search", lake.uri, "a dog", "-k", "2", "--target", "text", "--json"])
    assert res.exit_code == 0 and len(json.loads(res.stdout)) == 2, res.output
    assert "note: embed (clip_tinyrandom_text) is stale" in res.stderr


def _another_install(tmp_path: Path, monkeypatch) -> Path:
    """The offline heads where another person's install keeps them (its own site-packages)."""
    import shutil

    from lakecurate import offline

    other = tmp_path / "alice-venv" / "offline_heads.pt"
    other.parent.mkdir()
    shutil.copy(offline.HEADS, other)
    monkeypatch.setattr(offline, "HEADS", other)
    return other


def _new_photos(tmp_path: Path) -> Path:
    from PIL import Image, ImageOps

    src = tmp_path / "more"
    src.mkdir()
    for name in ("coffee", "rocket", "chelsea"):
        with Image.open(SAMPLE_DATA / f"{name}.jpg") as im:
            ImageOps.mirror(im.convert("RGB")).save(src / f"{name}_mirrored.jpg", quality=90)
        (src / f"{name}_mirrored.txt").write_text(f"a mirrored {name}")
    return src


@pytest.mark.parametrize("recorded", ["by name", "by path (before)"])
def test_a_shared_lake_embedded_by_another_install_is_the_same_config_here(tmp_path: Path, monkeypatch, recorded):
    """One shared lake, two people whose installs keep the same offline heads at different paths:
    the config recorded the path, so the second person's embed was "made with another config"
    (their --recompute would redo every row, and the first person's then), and search on their
    machine looked for the heads at the first person's path. Older lakes recorded the path: they
    are the same config too, and their values committed under the config they hold."""
    import dataclasses
    import os

    from lakecurate import encoders

    other = _another_install(tmp_path, monkeypatch)
    if recorded != "by name":
        monkeypatch.setattr(encoders.EncoderSpec, "config", lambda self: {
            **dataclasses.asdict(self), "checkpoint_bytes": os.path.getsize(self.pretrained)})
    lake = Lake.create(tmp_path / "lake")
    lake.ingest(SAMPLE_DATA, progress=False)
    lake.embed("offline", progress=False, workers=0)
    before = field_provenance(lake.dataset().schema.field("offline_image"))
    assert (before["config"]["pretrained"] == "offline_heads.pt") == (recorded == "by name")
    monkeypatch.undo()
    other.unlink()  # here: this install's heads, and the other install's are not on this machine
    lake.ingest(_new_photos(tmp_path), progress=False)
    rep = lake.embed("offline", progress=False, workers=0)
    assert rep.rows_embedded == 3
    assert field_provenance(lake.dataset().schema.field("offline_image"))["config_hash"] == before["config_hash"]
    assert all(s["state"] == "current" for s in lake.status()["stages"]), lake.status()["stages"]
    assert lake.dataset().count_rows(filter="offline_image IS NULL AND ingest_status = 'ok'") == 0
    hits = lake.search("a cup of coffee", k=3)
    assert len(hits) == 3
    res = CliRunner().invoke(main, ["run", str(lake.uri), "demo"])  # (the pipeline: no "pretrained changed")
    assert "pretrained changed" not in res.output, res.output


def test_options_a_model_does_not_take_are_refused(lake: Lake):
    """--model offline --checkpoint /nonexist.pt ran with the bundled weights and ignored the file."""
    for opts, says in (({"checkpoint": "/nonexist.pt"}, "takes no checkpoint"),
                       ({"pretrained": "openai"}, "takes no pretrained")):
        with pytest.raises(EncoderError, match=f"model 'offline' {says} .*bundled weights"):
            resolve("offline", **opts)
    lake.ingest(SAMPLE_DATA, progress=False)
    v = lake.version
    res = CliRunner().invoke(main, ["embed", lake.uri, "--model", "offline", "--checkpoint", "/nonexist.pt"])
    assert res.exit_code == 1 and "takes no --checkpoint" in res.output and lake.version == v, res.output
    # tiny-random took --pretrained openai without a word (its weights are random by name)
    with pytest.raises(EncoderError, match="model 'tiny-random' takes no pretrained 'openai' .*model='ViT-B-32:openai'"):
        resolve("tiny-random", pretrained="openai")
    assert resolve("tiny-random").prefix == resolve("tiny-random", pretrained="random").prefix == "clip_tinyrandom"


def test_a_name_with_capitals_is_refused():
    """--name Bad made Bad_score, which SQL reads as bad_score (features refuse capitals)."""
    with pytest.raises(EncoderError, match="^name 'Bad' has capitals, .* use 'bad'"):
        resolve("tiny-random", name="Bad")
    assert resolve("tiny-random", name="bad_1").prefix == "bad_1"


def test_a_name_that_makes_a_source_column_says_so(lake: Lake):
    """--name ingest writes ingest_error: it was "not made by lakecurate (another writer added
    it)", when it is the table's own."""
    lake.ingest(SAMPLE_DATA, progress=False)
    v = lake.version
    with pytest.raises(LakeError, match="column ingest_error is a source column of lake .* run it with another name$"):
        lake.embed("tiny-random", name="ingest", workers=0, progress=False)
    assert lake.version == v


def test_search_refuses_odd_python_arguments_in_one_line(sample_lake_embedded: Lake, tmp_path: Path):
    """columns naming one twice gave Lance's ValueError with a Rust source path; row_address="yes" a
    raw TypeError; a vector of 1e30s overflowed float32 (a numpy warning) and found nothing; a
    version before the embed said to run embed, which the latest version had."""
    import shutil
    import warnings

    lake = sample_lake_embedded
    with pytest.raises(LakeError, match=r"columns \['key', 'key'\] name key more than once"):
        lake.search("a dog", k=2, columns=["key", "key"])
    with pytest.raises(LakeError, match="invalid row_address 'yes': expected True or False"):
        lake.search("a dog", k=2, row_address="yes")
    with pytest.raises(LakeError, match="invalid text 1: expected True or False"):  # (1 was taken as true)
        lake.search("a dog", k=2, text=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        huge = lake.search(np.full(32, 1e30), k=2)
    plain = lake.search(np.ones(32, np.float32), k=2)
    assert list(huge["id"]) == list(plain["id"]) and huge["similarity"].tolist() == pytest.approx(plain["similarity"].tolist())
    copy = Lake.open(shutil.copytree(lake.uri, tmp_path / "lake"))
    first = min(v["version"] for v in copy.dataset().versions())
    with pytest.raises(LakeError, match=f"version {first} of lake .* has no embedding .*; the latest version has "
                                        "clip_tinyrandom: search that one"):
        copy.search("a dog", k=2, version=first)


def test_a_truncated_query_image_is_named_as_such(sample_lake_embedded: Lake, tmp_path: Path):
    """A truncated photo as a search query was "not an image Pillow can read ... search for the
    words with --text": it is an image, cut short."""
    data = (SAMPLE_DATA / "chelsea.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(LakeError, match=r"cut.jpg' is an image that cannot be decoded \(.*truncated.*\); pass a whole"):
        sample_lake_embedded.search(str(tmp_path / "cut.jpg"), k=1)
    with pytest.raises(LakeError, match=r"bytes given are an image that cannot be decoded"):
        sample_lake_embedded.search(data[: len(data) // 2], k=1)


def test_every_embed_fix_status_prints_is_accepted_when_pasted(tmp_path: Path):
    """The fix of a stale embedding repeats every recorded setting a run must repeat: it dropped
    --precision and --decode (pasted: "made with another config (precision bf16 -> fp32)"), and,
    for a checkpoint of the tiny random model, --checkpoint (the tiny-random branch came first)."""
    import shlex

    import lance
    import torch

    from lakecurate import graph

    path = tmp_path / "tiny.pt"
    torch.save(Encoder(resolve("tiny-random"), device="cpu").model.state_dict(), path)
    lake = Lake.create(tmp_path / "lake")
    lake.ingest(SAMPLE_DATA, progress=False)
    runs = [["--precision", "bf16", "--name", "bf"], ["--decode", "device", "--name", "dev"],
            ["--checkpoint", str(path)]]
    runner = CliRunner()
    for opts in runs:
        res = runner.invoke(main, ["embed", str(lake.uri), "--model", "tiny-random", "--workers", "0", *opts])
        assert res.exit_code == 0, res.output
    lance.dataset(lake.table_uri).update({"caption": "'a brick'"}, where="key = 'camera.jpg'")
    stale = [s for s in graph.states(lake) if s.node.stage == "embed"]
    assert len(stale) == 3 and all(s.state == "stale" for s in stale), [(s.state, s.reasons) for s in stale]
    fixes = sorted(s.fix for s in stale)
    assert any("--precision bf16" in f for f in fixes) and any("--decode device" in f for f in fixes)
    assert any(f"--checkpoint {shlex.quote(str(path))}" in f for f in fixes), fixes
    for fix in fixes:
        res = runner.invoke(main, shlex.split(fix)[1:] + ["--workers", "0"])
        assert res.exit_code == 0 and "another config" not in res.output, (fix, res.output)
    assert [s.state for s in graph.states(lake) if s.node.stage == "embed"] == ["current"] * 3


def test_a_checkpoint_replaced_at_the_same_path_makes_its_embedding_stale(tmp_path: Path):
    """Other weights copied over the --checkpoint file: embed refused "another config (checkpoint_sha256
    a -> b)" while status said current; the graph compares the recorded digest with the file's."""
    import shlex

    import torch

    from lakecurate import graph

    path = tmp_path / "ck.pt"
    state = Encoder(resolve("tiny-random"), device="cpu").model.state_dict()
    torch.save(state, path)
    lake = Lake.create(tmp_path / "lake")
    lake.ingest(SAMPLE_DATA, progress=False)
    lake.embed("tiny-random", checkpoint=str(path), workers=0, progress=False)
    assert [s.state for s in graph.states(lake)] == ["current"]
    torch.save({k: v + 1 if v.is_floating_point() else v for k, v in state.items()}, path)
    st = graph.states(lake)[0]
    assert st.state == "stale" and "checkpoint" in st.reasons[0] and str(path) in st.reasons[0], st.reasons
    assert st.fix.endswith(" --recompute") and st.rows_stale == 28
    res = CliRunner().invoke(main, shlex.split(st.fix)[1:] + ["--workers", "0"])
    assert res.exit_code == 0, res.output
    assert [s.state for s in graph.states(lake)] == ["current"]


def test_a_caption_col_not_there_names_every_caption_column(sample_lake_embedded: Lake, tmp_path: Path):
    """``--caption-col nope`` said "caption columns: none yet" beside ``caption`` (the default):
    every text column that can be a caption is named, none of the others."""
    import shutil

    import lance

    lake = Lake.open(shutil.copytree(sample_lake_embedded.uri, tmp_path / "lake"))
    lance.dataset(lake.table_uri).add_columns({"alt_text": "concat('alt: ', caption)"})
    with pytest.raises(LakeError, match=r"caption columns: caption, alt_text$"):
        lake.embed("tiny-random", caption_col="nope", progress=False)


def test_a_whole_float_batch_size_is_that_number(sample_lake_embedded: Lake, tmp_path: Path):
    """batch_size=16.0 (a pipeline file, a notebook) passed the checks, then failed in range() with a
    TypeError, after a recompute had dropped the embedding's columns."""
    lake = Lake.open(shutil.copytree(sample_lake_embedded.uri, tmp_path / "lake"))
    before = lake.count("clip_tinyrandom_image IS NOT NULL")
    rep = lake.embed("tiny-random", batch_size=8.0, workers=0.0, recompute=True, progress=False)
    assert rep.rows_embedded == lake.count() and lake.count("clip_tinyrandom_image IS NOT NULL") == before > 0
    assert lake.add_feature("n", lambda b: pa.compute.utf8_length(b["caption"]), inputs=["caption"], type="int32",
                            batch_size=8.0, progress=False).rows == lake.count()
    with pytest.raises(LakeError, match="^invalid batch_size 8.5"):
        lake.embed("tiny-random", batch_size=8.5, recompute=True, progress=False)
    assert lake.count("clip_tinyrandom_image IS NOT NULL") == before  # (refused before the drop)


def test_an_empty_or_blank_caption_is_no_caption(lake: Lake, tmp_path: Path):
    """An empty or whitespace-only caption was embedded and scored like text: the empty copy of a
    photo out-scored its captioned original, dedup kept it, and curate dropped it (caption_missing)
    and the original (duplicate): the photo was gone from the curated set. It is no caption now:
    no text vector, no score, error caption_missing."""
    src = tmp_path / "src"
    src.mkdir()
    for name, caption in (("astronaut", "an astronaut in a white suit beside a flag"), ("empty", ""),
                          ("blank", " \t\u3000\n")):
        shutil.copy(SAMPLE_DATA / "astronaut.jpg", src / f"{name}.jpg")
        (src / f"{name}.txt").write_text(caption)
    lake.ingest(src, progress=False)
    lake.embed("tiny-random", workers=0, progress=False)
    rows = lake.sql("SELECT key, clip_tinyrandom_text IS NULL AS no_text, clip_tinyrandom_score AS score, "
                    "clip_tinyrandom_error AS error FROM pairs ORDER BY key").set_index("key")
    for key in ("empty.jpg", "blank.jpg"):
        assert rows.loc[key, "no_text"] and np.isnan(rows.loc[key, "score"]), rows
        assert rows.loc[key, "error"] == "caption_missing", rows
    assert not rows.loc["astronaut.jpg", "no_text"] and pd.isna(rows.loc["astronaut.jpg", "error"])
    lake.dedup(["exact"], progress=False)  # one picture three times: the captioned row is the one kept
    kept = lake.sql("SELECT key FROM pairs WHERE dup_keep")["key"].tolist()
    assert kept == ["astronaut.jpg"], kept
