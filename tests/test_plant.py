"""The planted copy kinds (lakecurate.plant): each hard edit does what its name says, on a real photo."""

from __future__ import annotations

import random

import numpy as np
import pytest
from PIL import Image

from lakecurate.plant import EDITS, HARD_EDITS, edit_image, plant_duplicates

from .conftest import SAMPLE_DATA


@pytest.fixture
def photo() -> Image.Image:
    with Image.open(SAMPLE_DATA / "coffee.jpg") as im:
        return im.convert("RGB")


def test_heavy_crop_keeps_65_to_75_percent_of_each_side(photo):
    for seed in range(5):
        out = edit_image(photo, "crop_heavy", random.Random(seed))
        assert 0.64 <= out.width / photo.width <= 0.76 and 0.64 <= out.height / photo.height <= 0.76


def test_rotate_is_a_quarter_or_half_turn(photo):
    arr = np.asarray(photo)
    turns = set()
    for seed in range(12):
        out = np.asarray(edit_image(photo, "rotate", random.Random(seed)))
        k = next(k for k in (1, 2, 3) if np.rot90(arr, k).shape == out.shape and np.array_equal(np.rot90(arr, k), out))
        turns.add(k)
    assert turns == {1, 2, 3}


@pytest.mark.parametrize("edit, axis", [("letterbox", 0), ("pillarbox", 1)])
def test_bars_are_uniform_and_the_photo_is_whole_inside(photo, edit, axis):
    out = np.asarray(edit_image(photo, edit, random.Random(3)))
    src = np.asarray(photo)
    assert out.shape[1 - axis] == src.shape[1 - axis] and out.shape[axis] > src.shape[axis]
    pad = (out.shape[axis] - src.shape[axis]) // 2
    inner = out[pad:pad + src.shape[0]] if axis == 0 else out[:, pad:pad + src.shape[1]]
    assert np.array_equal(inner, src)
    bar = out[:pad] if axis == 0 else out[:, :pad]
    assert bar.size and (bar == bar.reshape(-1, 3)[0]).all()  # one colour


def test_frame_puts_the_photo_on_a_larger_page(photo):
    out = edit_image(photo, "frame", random.Random(1))
    f = out.width / photo.width
    assert 1.29 <= f <= 1.81 and abs(out.height / photo.height - f) < 0.02
    # the photo is somewhere on the page, unchanged
    src = np.asarray(photo).astype(int)
    page = np.asarray(out).astype(int)
    best = min(np.abs(page[y:y + src.shape[0], x:x + src.shape[1]] - src).mean()
               for y in range(0, page.shape[0] - src.shape[0] + 1)
               for x in range(0, page.shape[1] - src.shape[1] + 1) if (page[y, x] == src[0, 0]).all())
    assert best == 0


def test_overlay_covers_at_most_a_fifth(photo):
    for seed in range(5):
        out = np.asarray(edit_image(photo, "overlay", random.Random(seed)))
        changed = (np.abs(out.astype(int) - np.asarray(photo).astype(int)).sum(axis=2) > 0).mean()
        assert 0.02 < changed <= 0.21


def test_plant_duplicates_uses_the_edits_asked_for(tmp_path):
    photos = sorted(SAMPLE_DATA.glob("*.jpg"))[:6]
    planted = plant_duplicates(photos, {}, tmp_path / "out", n_originals=6, exact_per_original=0, seed=0,
                               edits=HARD_EDITS)
    kinds = {p.edit.split("+")[0] for p in planted if p.edit != "original"}
    assert kinds and kinds <= set(HARD_EDITS)
    with pytest.raises(ValueError, match="unknown edits"):
        plant_duplicates(photos, {}, tmp_path / "x", edits=["rotate", "melt"])
    assert set(EDITS).isdisjoint(HARD_EDITS)


def test_web_pool_plants_the_documented_rates_and_skews_copies_to_the_largest_concept(tmp_path):
    from collections import Counter

    from lakecurate.plant import NOISE_LEVELS, concept_of, plant_web_pool

    rng = np.random.default_rng(0)
    photos, captions = [], {}
    subjects = ["a dog runs"] * 24 + ["a girl smiles"] * 10 + ["a red car"] * 6  # dog is the largest concept
    for i, subject in enumerate(subjects):
        p = tmp_path / "src" / f"p{i:02d}.jpg"
        p.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(p)
        photos.append(p)
        captions[p.stem] = [f"{subject} {i} first", f"{subject} {i} second", f"{subject} {i} third"]
    rates = NOISE_LEVELS["high"]
    labels = plant_web_pool(photos, captions, tmp_path / "pool", noise="high", seed=3)
    kinds = Counter(labels.values())
    assert kinds["mismatched"] == round(rates["mismatched"] * 40) and kinds["junk"] == round(rates["junk"] * 40)
    assert kinds["near_copy"] + kinds["recaptioned_copy"] == round(rates["duplicates"] * 40)
    assert sum(kinds[k] for k in ("clean", "mismatched", "junk")) == 40  # every photo once
    written = {p.stem for p in (tmp_path / "pool").glob("*.jpg")}
    assert written == set(labels) and {p.stem for p in (tmp_path / "pool").glob("*.txt")} == written
    for key, kind in labels.items():
        text = (tmp_path / "pool" / f"{key}.txt").read_text()
        src = key.split("__")[0]
        if kind == "clean" or kind == "near_copy":
            assert text == captions[src][0]
        elif kind == "recaptioned_copy":
            assert text in captions[src][1:]
        elif kind == "mismatched":
            assert text != captions[src][0] and text.endswith("first")
        else:
            assert not text.endswith("first")
    copies = Counter(concept_of(captions[k.split("__")[0]][0]) for k in labels if "__" in k)
    assert copies["dog"] > copies["children"] + copies["other"]  # 60% of photos, most of the copies
    assert plant_web_pool(photos, captions, tmp_path / "again", noise="high", seed=3) == labels  # seeded
    with pytest.raises(ValueError, match="noise 'web-ish'"):
        plant_web_pool(photos, captions, tmp_path / "x", noise="web-ish")
