"""Embeddings as zero-copy columns: types, provenance, no-op re-runs, increments, resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
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
    assert len(ok) == 25
    img = np.array(ok[COLS["image"]].tolist(), dtype=np.float32)
    txt = np.array(ok[COLS["text"]].tolist(), dtype=np.float32)
    assert np.allclose(np.linalg.norm(img, axis=1), 1, atol=2e-3)
    assert np.allclose((img * txt).sum(1), ok[COLS["score"]], atol=5e-3)
    # bad rows: a null embedding and a reason, never a crash
    assert df.loc["gravel_truncated.jpg", COLS["error"]].startswith("image_undecodable")
    assert df.loc["notes_not_an_image.jpg", COLS["image"]] is None
    assert df.loc["horse_no_caption.jpg", COLS["error"]] == "caption_missing"
    assert df.loc["horse_no_caption.jpg", COLS["image"]] is not None  # the image still has its vector
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
    with pytest.raises(LakeError, match="another config.*--name.*--recompute"):
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
    with pytest.raises(EncoderError, match="--checkpoint PATH.*--model offline"):
        Encoder(spec, device="cpu")
    with pytest.raises(EncoderError, match="checkpoint .* does not exist"):
        resolve("ViT-B-32", checkpoint="/nonexistent.pt")


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


def test_worker_transform_matches_open_clip_factory():
    from PIL import Image

    enc = Encoder(resolve("tiny-random"), device="cpu")
    mine, _ = enc.spec.build_transforms()
    with Image.open(SAMPLE_DATA / "coffee.jpg") as im:
        assert np.allclose(mine(im.convert("RGB")), enc.open_clip_preprocess(im.convert("RGB")).numpy(), atol=1e-6)
        tall = im.convert("RGB").resize((50, 130))  # portrait: the other branch of shortest-side resize
        assert np.allclose(mine(tall), enc.open_clip_preprocess(tall).numpy(), atol=1e-6)
    assert enc.dim == enc.spec.embed_dim() == 32
