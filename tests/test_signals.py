"""Caption and image signals on small literal inputs."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageFilter

from lakecurate.signals import (
    caption_signals,
    colorfulness,
    entropy,
    image_signals,
    phone_numbers,
    redact,
    sharpness,
)

from .conftest import SAMPLE_DATA


def signals_of(caption: str) -> dict:
    return {k: v[0] for k, v in caption_signals([caption]).to_pydict().items()}


@pytest.mark.parametrize("caption", ["IMG_1234.JPG", "DSC00012.jpg", "photo.png", " P1000123.JPG ", "Screenshot 2021-04-01 at 10.png",
                                     "IMG 20190603 112233", "dscn0042"])
def test_file_names(caption):
    assert signals_of(caption)["cap_filename"]


@pytest.mark.parametrize("caption", ["a dog runs on the beach", "the img of a cat", "a jpg artefact on a photo",
                                     "two people on a bench in 2012"])
def test_not_file_names(caption):
    s = signals_of(caption)
    assert not s["cap_filename"] and not s["cap_url"] and not s["cap_boilerplate"]


def test_caption_signals_literal():
    s = signals_of("Image may contain: dog!!!!!!!  see https://dogs.example.com/x\x07 \ufffd")
    assert s["cap_boilerplate"] and s["cap_url"] and s["cap_max_repeat"] == 7 and s["cap_nonprintable"] == 2
    assert signals_of("stock photo of a beach")["cap_boilerplate"]
    assert signals_of("visit www.photos.net today")["cap_url"]
    assert not signals_of("mail anna@example.com")["cap_url"]  # an e-mail address is not a URL
    words = signals_of("a  man\triding a bike")
    assert words["cap_words"] == 5 and words["cap_chars"] == 20 and words["cap_max_repeat"] == 2
    assert signals_of("a dog runs through the grass in the park")["cap_lang"] == "en"
    assert signals_of("un chien court dans l'herbe du parc")["cap_lang"] == "fr"
    empty = caption_signals([None]).to_pylist()[0]
    assert all(v is None for v in empty.values())


def test_privacy_and_redaction():
    s = signals_of("write to jo.smith+sale@mail.example.org or call +1 (555) 123-4567 / 030 1234567")
    assert s["cap_emails"] == 1 and s["cap_phones"] == 2
    for clean in ["a man with 3 dogs", "taken on 12/05/2019", "population 1,250,000", "flight 1234 to rome", "a 1990s car"]:
        assert signals_of(clean)["cap_emails"] == 0 and signals_of(clean)["cap_phones"] == 0, clean
    assert phone_numbers("ring 555-123-4567") == ["555-123-4567"]
    original = "bookings: anna@example.com / +44 20 7946 0018."
    assert redact(original) == "bookings: [email] / [phone]."
    assert redact(None) is None


def jpeg(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=92)
    return buf.getvalue()


def test_image_measures_literal():
    flat = np.full((50, 50), 100, np.uint8)
    assert sharpness(flat) == 0.0 and entropy(flat) == 0.0
    assert entropy(np.arange(256, dtype=np.uint8).reshape(16, 16)) == pytest.approx(8.0)
    gray = np.repeat(np.random.default_rng(0).integers(0, 255, (20, 20, 1)), 3, axis=2)
    assert colorfulness(gray) == pytest.approx(0.0, abs=1e-6)
    assert colorfulness(np.dstack([np.full((8, 8), 250), np.zeros((8, 8)), np.zeros((8, 8))])) > 50


def test_image_signals_on_photos():
    with Image.open(SAMPLE_DATA / "coffee.jpg") as im:
        im.load()
        sharp, blurred = jpeg(im), jpeg(im.filter(ImageFilter.GaussianBlur(4)))
        gray = jpeg(im.convert("L").convert("RGB"))
    t = image_signals([sharp, blurred, gray, b"junk", None]).to_pydict()
    assert t["img_sharpness"][0] > 4 * t["img_sharpness"][1]
    assert t["img_colorfulness"][0] > 20 and t["img_colorfulness"][2] < 3
    assert t["img_entropy"][0] > 5
    assert t["phash"][3] is None and t["img_sharpness"][4] is None
    assert bin(t["phash"][0] ^ t["phash"][1]).count("1") <= 8  # blur barely moves the hash
