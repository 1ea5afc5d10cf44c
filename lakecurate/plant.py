"""Planted defects: labelled test sets built in code from real photos, for tests and benchmarks.

``plant_duplicates`` takes real photos (e.g. ``../shared/data/flickr8k``) and writes an image folder
with caption sidecars in which some photos have exact copies and near copies (re-encoded, resized,
cropped, brightened or darkened, flipped, overlaid with a line of text), while every other photo is a
distinct photo, often of a similar scene (the hard negatives). The truth comes back as a mapping
key -> original key, so precision and recall of a dedup method can be measured on real images.

    truth = plant_duplicates(photos, captions, "planted/", n_originals=120, seed=0)
    lake.ingest("planted/")
"""

from __future__ import annotations

import io
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageEnhance, ImageOps

# Near-copy edits and their parameter ranges (the list): each copy gets one edit, and one in
# three copies gets a second one on top (e.g. a crop that is then re-encoded at quality 40).
EDITS = ("jpeg", "resize", "crop", "brightness", "flip", "text")


@dataclass(frozen=True)
class Planted:
    key: str  # file stem in the output folder
    original: str  # key of the photo it was made from (itself for originals)
    edit: str  # "original", "exact", or the near-copy edits joined by "+"


def _jpeg(im: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    im.convert("RGB").save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue()))


def edit_image(im: Image.Image, edit: str, rng: random.Random) -> Image.Image:
    """One near-copy edit with a random strength in the planted range."""
    im = im.convert("RGB")
    w, h = im.size
    if edit == "jpeg":
        return _jpeg(im, rng.randint(30, 95))
    if edit == "resize":
        f = rng.choice([rng.uniform(0.25, 0.8), rng.uniform(1.2, 2.0)])
        return im.resize((max(8, round(w * f)), max(8, round(h * f))), Image.Resampling.LANCZOS)
    if edit == "crop":
        f = rng.uniform(0.03, 0.10)  # up to 10% of each side's length removed, split at random
        dx, dy = round(w * f), round(h * f)
        x0, y0 = rng.randint(0, dx), rng.randint(0, dy)
        return im.crop((x0, y0, w - (dx - x0), h - (dy - y0)))
    if edit == "brightness":
        return ImageEnhance.Brightness(im).enhance(rng.choice([rng.uniform(0.8, 0.92), rng.uniform(1.08, 1.2)]))
    if edit == "flip":
        return ImageOps.mirror(im)
    if edit == "text":
        out = im.copy()
        draw = ImageDraw.Draw(out)
        y = rng.randint(h // 10, h - h // 5)
        draw.text((w // 20, y), rng.choice(["SALE 50% OFF", "© example.com", "holiday 2012", "www.photos.net"]),
                  fill=rng.choice([(255, 255, 255), (0, 0, 0), (255, 220, 0)]), font_size=max(10, h // 14))
        return out
    raise ValueError(f"unknown edit {edit!r}; choose from {EDITS}")


def plant_duplicates(
    photos: Sequence[Path],
    captions: dict[str, str],
    out_dir: str | Path,
    *,
    n_originals: int = 100,
    exact_per_original: float = 0.3,
    near_per_original: tuple[int, int] = (1, 3),
    seed: int = 0,
) -> list[Planted]:
    """Write every photo plus planted copies of ``n_originals`` of them to ``out_dir`` (JPEG + .txt).

    Each chosen original gets an exact byte copy with probability ``exact_per_original`` and
    ``near_per_original`` near copies (one or two edits each, every edit in ``EDITS`` used in turn).
    Copies keep the original's caption half of the time and get another photo's caption otherwise
    (so caption-based methods cannot find them for free). Returns one ``Planted`` per written file.
    """
    rng = random.Random(seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    photos = sorted(photos)
    stems = [p.stem for p in photos]
    chosen = set(rng.sample(stems, min(n_originals, len(stems))))
    planted: list[Planted] = []
    edit_cycle = 0

    def write(key: str, data: bytes, caption: str, original: str, edit: str) -> None:
        (out / f"{key}.jpg").write_bytes(data)
        (out / f"{key}.txt").write_text(caption, encoding="utf-8")
        planted.append(Planted(key, original, edit))

    for path in photos:
        stem = path.stem
        data = path.read_bytes()
        write(stem, data, captions.get(stem, ""), stem, "original")
        if stem not in chosen:
            continue
        if rng.random() < exact_per_original:
            write(f"{stem}__exact", data, captions.get(stem, ""), stem, "exact")
        with Image.open(path) as src:
            src.load()
            for c in range(rng.randint(*near_per_original)):
                edits = [EDITS[edit_cycle % len(EDITS)]]
                edit_cycle += 1
                if rng.random() < 1 / 3:
                    edits.append(rng.choice([e for e in EDITS if e != edits[0]]))
                im = src
                for e in edits:
                    im = edit_image(im, e, rng)
                buf = io.BytesIO()
                im.convert("RGB").save(buf, "JPEG", quality=rng.randint(75, 95))
                caption = captions.get(stem, "") if rng.random() < 0.5 else captions.get(rng.choice(stems), "")
                write(f"{stem}__near{c}", buf.getvalue(), caption, stem, "+".join(edits))
    return planted


def true_pairs(planted: Sequence[Planted]) -> set[tuple[str, str]]:
    """Every pair of keys made from the same original (sorted tuples)."""
    by_original: dict[str, list[str]] = {}
    for p in planted:
        by_original.setdefault(p.original, []).append(p.key)
    return {(a, b) for keys in by_original.values() for a in keys for b in keys if a < b}
