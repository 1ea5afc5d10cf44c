"""Shared fixtures: temporary lakes, image factories, and the ../shared data (skipped when absent)."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from lakecurate import Lake
from lakecurate.plant import synthetic_pairs as pair_rows  # noqa: F401 (rows for write/feature tests)

# Tests never reach a model hub: loading weights by name must fail fast (and clearly) instead.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

REPO = Path(__file__).resolve().parent.parent
SAMPLE_DATA = REPO / "sample_data"
SHARED = Path(os.environ.get("LAKECURATE_SHARED", REPO.parent / "shared"))
FLICKR = SHARED / "data" / "flickr8k"


@pytest.fixture
def lake(tmp_path: Path) -> Lake:
    return Lake.create(tmp_path / "lake")


@pytest.fixture(scope="session")
def flickr8k() -> Path:
    """../shared/data/flickr8k (images/ + captions.csv); skips the test when it is absent."""
    if not (FLICKR / "captions.csv").is_file():
        pytest.skip(f"shared data not found at {FLICKR}")
    return FLICKR


def image_bytes(fmt: str = "JPEG", size: tuple[int, int] = (64, 48), mode: str = "RGB", color=(200, 30, 60), **save) -> bytes:
    """A small real image encoded in memory."""
    im = Image.new(mode, size, color)
    buf = io.BytesIO()
    im.save(buf, fmt, **save)
    return buf.getvalue()


@pytest.fixture(scope="session")
def sample_lake_embedded(tmp_path_factory) -> Lake:
    """sample_data ingested and embedded once with the tiny random (meaningless) encoder."""
    lake = Lake.create(tmp_path_factory.mktemp("embedded") / "lake")
    lake.ingest(SAMPLE_DATA, progress=False)
    lake.embed("tiny-random", workers=0, batch_size=8, progress=False)
    return lake


def refused_and_good_copies(tmp_path: Path, names: tuple[str, ...]) -> Lake:
    """Sample photos ingested twice: first under --max-pixels 1000 (decompression bombs to ingest:
    error rows that keep their bytes), then as they are (the good copies)."""
    import shutil

    from lakecurate.ingest import IngestOptions

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    for name in names:
        shutil.copy(SAMPLE_DATA / f"{name}.jpg", a / f"{name}.jpg")
        (a / f"{name}.txt").write_text(f"a photo of a {name}")
    shutil.copytree(a, b)
    lake = Lake.create(tmp_path / "lake")
    lake.ingest(a, options=IngestOptions(max_pixels=1000), progress=False)
    lake.ingest(b, progress=False)
    return lake


def noisy_eval_set(folder: Path, n: int = 6) -> Path:
    """A small evaluation set: ``n`` random-noise pictures with a numbered caption each."""
    import numpy as np

    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(folder / f"e{i}.png")
        (folder / f"e{i}.txt").write_text(f"a noisy test picture number {i}")
    return folder


def one_more_copy(folder: Path, caption: str, name: str = "cat") -> Path:
    """``folder`` holding one more copy of sample_data's chelsea.jpg as ``name``.jpg with ``caption``:
    a row that arrives after the lake was deduplicated or decided (ingest the folder)."""
    folder.mkdir(exist_ok=True)
    shutil.copy(SAMPLE_DATA / "chelsea.jpg", folder / f"{name}.jpg")
    (folder / f"{name}.txt").write_text(caption)
    return folder


def with_an_undecodable_jpeg(folder: Path, photos: tuple[str, ...]) -> Path:
    """``folder`` made with sample_data's ``photos`` (captioned "a photo of NAME") and ``broken.jpg``:
    a JPEG with a sound header and end marker but broken data (it passes ingest; decoding it fails:
    embed records image_undecodable), captioned "a photo"."""
    folder.mkdir()
    for name in photos:
        (folder / f"{name}.jpg").write_bytes((SAMPLE_DATA / f"{name}.jpg").read_bytes())
        (folder / f"{name}.txt").write_text(f"a photo of {name}")
    broken = bytearray((SAMPLE_DATA / "coffee.jpg").read_bytes())
    for i in range(1500, len(broken) - 2, 7):
        broken[i] = 0xFF if i % 2 else 0x00
    (folder / "broken.jpg").write_bytes(bytes(broken))
    (folder / "broken.txt").write_text("a photo")
    return folder
