"""Planted defects: labelled test sets built in code from real photos, for tests and benchmarks.

``plant_junk`` writes clean pairs plus planted junk (swapped and file-name captions, tiny and
strip-shaped crops, blurred photos, captions with e-mail addresses or phone numbers) with its truth.

``plant_duplicates`` takes real photos (e.g. ``../shared/data/flickr8k``) and writes an image folder
with caption sidecars in which some photos have exact copies and near copies (re-encoded, resized,
cropped, brightened or darkened, flipped, overlaid with a line of text), while every other photo is a
distinct photo, often of a similar scene (the hard negatives). The truth comes back as a mapping
key -> original key, so precision and recall of a dedup method can be measured on real images.
``plant_collages`` adds collages of 2-4 of the photos (a copy of none of them) and ``false_groups``
names the groups that join different originals.

    truth = plant_duplicates(photos, captions, "planted/", n_originals=120, seed=0)
    lake.ingest("planted/")
"""

from __future__ import annotations

import io
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageOps

if TYPE_CHECKING:
    import pyarrow as pa

# Near-copy edits and their parameter ranges (the list): each copy gets one edit, and one in
# three copies gets a second one on top (e.g. a crop that is then re-encoded at quality 40).
EDITS = ("jpeg", "resize", "crop", "brightness", "flip", "text")
# The copies plain hashing and embeddings miss (issue 17): a heavy crop (25-35% of each side gone),
# a quarter or half turn, bars to another aspect ratio, the photo framed inside a larger page with
# UI-like content, and an overlay covering up to 20% of it.
HARD_EDITS = ("crop_heavy", "rotate", "letterbox", "pillarbox", "frame", "overlay")
# Copies no method was tuned on (a probe of 2026-12-07): colour and tone (hue turned, gray, sepia,
# white balance, gamma, contrast), noise, blur, a few degrees' turn (with bars, or cropped to fill), a
# stretch, a keystone, a corner logo or watermark, a phone screenshot around the photo, a thumbnail.
WILD_EDITS = ("hue", "gray", "sepia", "white_balance", "gamma", "contrast", "noise", "blur", "turn_small",
              "turn_crop", "stretch", "keystone", "logo", "screenshot", "tiny")


@dataclass(frozen=True)
class Planted:
    key: str  # file stem in the output folder
    original: str  # key of the photo it was made from (itself for originals)
    edit: str  # "original", "exact", or the near-copy edits joined by "+"; "collage" (``plant_collages``)
    holds: tuple[str, ...] = ()  # a collage: the keys of the photos pasted into it (it is a copy of none)


def write_pair(out: Path, key: str, image: bytes, caption: str) -> None:
    """One pair in the folder layout ingest reads: KEY.jpg and its caption sidecar KEY.txt."""
    (out / f"{key}.jpg").write_bytes(image)
    (out / f"{key}.txt").write_text(caption, encoding="utf-8")


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
    if edit in HARD_EDITS:
        return _hard_edit(im, edit, rng)
    if edit in WILD_EDITS:
        return _wild_edit(im, edit, rng)
    raise ValueError(f"unknown edit {edit!r}; choose from {EDITS + HARD_EDITS + WILD_EDITS}")


def _pad(im: Image.Image, size: tuple[int, int], rng: random.Random) -> Image.Image:
    """``im`` centred on a canvas of ``size`` filled with one uniform colour (black, white or gray)."""
    canvas = Image.new("RGB", size, rng.choice([(0, 0, 0), (255, 255, 255), (128, 128, 128)]))
    canvas.paste(im, ((size[0] - im.width) // 2, (size[1] - im.height) // 2))
    return canvas


def _hard_edit(im: Image.Image, edit: str, rng: random.Random) -> Image.Image:
    w, h = im.size
    if edit == "crop_heavy":
        keep = rng.uniform(0.65, 0.75)  # 25-35% of each side's length removed
        cw, ch = round(w * keep), round(h * keep)
        x0, y0 = rng.randint(0, w - cw), rng.randint(0, h - ch)
        return im.crop((x0, y0, x0 + cw, y0 + ch))
    if edit == "rotate":
        return im.transpose(rng.choice([Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180, Image.Transpose.ROTATE_270]))
    if edit == "letterbox":  # bars above and below: a taller frame (square or 4:5 portrait)
        tall = max(h + 2, round(w * rng.choice([1.0, 1.25])))
        return _pad(im, (w, tall), rng)
    if edit == "pillarbox":  # bars left and right: a wider frame (16:9 or 2:1)
        wide = max(w + 2, round(h * rng.choice([16 / 9, 2.0])))
        return _pad(im, (wide, h), rng)
    if edit == "frame":  # a page 1.3-1.8x the photo's size: header bar, text lines, buttons, the photo
        f = rng.uniform(1.3, 1.8)
        cw, ch = round(w * f), round(h * f)
        page = Image.new("RGB", (cw, ch), rng.choice([(250, 250, 250), (238, 240, 244), (30, 32, 36)]))
        draw = ImageDraw.Draw(page)
        bar = max(12, ch // 12)
        draw.rectangle((0, 0, cw, bar), fill=rng.choice([(24, 119, 242), (200, 30, 40), (60, 60, 60)]))
        draw.text((bar // 2, bar // 4), rng.choice(["Home  Shop  About", "photos.example.com", "My album"]),
                  fill=(255, 255, 255), font_size=max(8, bar // 2))
        x0, y0 = rng.randint(0, cw - w), rng.randint(bar, max(bar, ch - h))
        page.paste(im, (x0, y0))
        ink = (90, 90, 90) if page.getpixel((0, ch - 1))[0] > 128 else (200, 200, 200)
        for _ in range(rng.randint(3, 6)):  # text lines and a button beside or under the photo
            tx, ty = rng.randint(0, cw - 20), rng.randint(bar, ch - 10)
            if not (x0 <= tx <= x0 + w and y0 <= ty <= y0 + h):
                draw.text((tx, ty), rng.choice(["Add to cart", "$24.99", "Share", "12 comments", "Buy now"]),
                          fill=ink, font_size=max(8, ch // 30))
        return page
    if edit == "overlay":  # a banner or logo block over 8-20% of the photo, with text on it
        area = rng.uniform(0.08, 0.20) * w * h
        bw = min(w, round((area * rng.uniform(1.5, 4.0)) ** 0.5))
        bh = min(h, max(1, round(area / max(1, bw))))
        x0, y0 = rng.randint(0, w - bw), rng.randint(0, h - bh)
        out = im.copy()
        draw = ImageDraw.Draw(out)
        draw.rectangle((x0, y0, x0 + bw, y0 + bh), fill=rng.choice([(255, 255, 255), (0, 0, 0), (230, 40, 40)]))
        draw.text((x0 + 4, y0 + 2), rng.choice(["LIMITED OFFER", "© stock", "NEW"]), fill=(128, 128, 128),
                  font_size=max(8, bh // 3))
        return out
    raise ValueError(edit)


def _wild_edit(im: Image.Image, edit: str, rng: random.Random) -> Image.Image:
    w, h = im.size
    a = np.asarray(im, np.float64)
    if edit == "hue":  # the hue wheel turned 30-90 or 150-210 degrees
        hsv = np.asarray(im.convert("HSV")).astype(np.int32)
        hsv[..., 0] = (hsv[..., 0] + round(rng.choice([rng.uniform(30, 90), rng.uniform(150, 210)]) * 256 / 360)) % 256
        return Image.fromarray(hsv.astype(np.uint8), "HSV").convert("RGB")
    if edit == "gray":
        return ImageOps.grayscale(im).convert("RGB")
    if edit == "sepia":
        g = np.asarray(ImageOps.grayscale(im), np.float64)[..., None]
        return Image.fromarray(np.clip(g * (1.07, 0.74, 0.43) + (30, 20, 10), 0, 255).astype(np.uint8))
    if edit == "white_balance":
        gains = rng.choice([(1.35, 1.0, 0.65), (0.7, 0.95, 1.4), (1.1, 1.3, 0.8)])
        return Image.fromarray(np.clip(a * gains, 0, 255).astype(np.uint8))
    if edit == "gamma":
        g = rng.choice([0.5, 2.0])
        return im.point([round(255 * (i / 255) ** g) for i in range(256)] * 3)
    if edit == "contrast":
        return ImageEnhance.Contrast(im).enhance(rng.choice([rng.uniform(0.4, 0.6), rng.uniform(1.6, 2.0)]))
    if edit == "noise":
        noise = np.random.default_rng(rng.randrange(2**32)).normal(0, rng.uniform(10, 25), a.shape)
        return Image.fromarray(np.clip(a + noise, 0, 255).astype(np.uint8))
    if edit == "blur":
        from PIL import ImageFilter

        return im.filter(ImageFilter.GaussianBlur(rng.uniform(2, 4)))
    if edit in ("turn_small", "turn_crop"):  # 3-15 degrees either way
        deg = rng.choice([-1, 1]) * rng.uniform(3, 15)
        if edit == "turn_small":  # bars around the turned photo
            return im.rotate(deg, Image.Resampling.BICUBIC, expand=True, fillcolor=rng.choice([(0, 0, 0), (255, 255, 255)]))
        t = math.radians(abs(deg))  # the largest centred box inside the turned photo
        f = min(w / (w * math.cos(t) + h * math.sin(t)), h / (w * math.sin(t) + h * math.cos(t)))
        cw, ch = int(w * f), int(h * f)
        x0, y0 = (w - cw) // 2, (h - ch) // 2
        return im.rotate(deg, Image.Resampling.BICUBIC).crop((x0, y0, x0 + cw, y0 + ch))
    if edit == "stretch":  # 1.3x along one axis
        return im.resize((round(w * 1.3), h) if rng.random() < 0.5 else (w, round(h * 1.3)), Image.Resampling.BICUBIC)
    if edit == "keystone":  # one edge shrunk by 10-20%: a photo of a print or a screen taken at an angle
        k = rng.uniform(0.10, 0.20)
        corners = [(k * w, 0), (w - k * w, 0), (w, h), (0, h)] if rng.random() < 0.5 else \
            [(0, 0), (w, k * h), (w, h - k * h), (0, h)]
        rows = []
        for (x, y), (u, v) in zip(corners, [(0, 0), (w, 0), (w, h), (0, h)]):
            rows += [[x, y, 1, 0, 0, 0, -u * x, -u * y, u], [0, 0, 0, x, y, 1, -v * x, -v * y, v]]
        m = np.asarray(rows, np.float64)
        coeffs = np.linalg.solve(m[:, :8], m[:, 8]).tolist()
        return im.transform((w, h), Image.Transform.PERSPECTIVE, coeffs, Image.Resampling.BICUBIC, fillcolor=(0, 0, 0))
    if edit == "logo":  # a block or a translucent watermark in a corner, 18-28% x 8-12% of the photo
        bw, bh = round(w * rng.uniform(0.18, 0.28)), round(h * rng.uniform(0.08, 0.12))
        corner = rng.choice(["tl", "tr", "bl", "br"])
        x0, y0 = (8 if corner[1] == "l" else w - bw - 8), (8 if corner[0] == "t" else h - bh - 8)
        layer = Image.new("RGBA", im.size, (0, 0, 0, 0))
        draw = ImageDraw.Draw(layer)
        if rng.random() < 0.5:
            draw.rounded_rectangle((x0, y0, x0 + bw, y0 + bh), radius=6, fill=rng.choice([(200, 30, 40, 255), (20, 90, 200, 255)]))
            draw.text((x0 + 6, y0 + 3), rng.choice(["LOGO", "stock.io", "NEWS 24"]), fill=(0, 0, 0, 255), font_size=max(8, bh // 2))
        else:
            draw.text((x0, y0), rng.choice(["\u00a9 getpix", "shutterfoto", "@myblog"]), fill=(255, 255, 255, 150), font_size=max(10, bh))
        return Image.alpha_composite(im.convert("RGBA"), layer).convert("RGB")
    if edit == "screenshot":  # a phone's page around the photo: status bar, app name, likes, tab bar
        top, bottom = round(w * 0.12), round(w * 0.22)
        ph = max(h + top + bottom, round(w * rng.choice([1.6, 2.0])))
        bg = rng.choice([(255, 255, 255), (18, 18, 18)])
        ink = (0, 0, 0) if bg[0] > 128 else (230, 230, 230)
        page = Image.new("RGB", (w, ph), bg)
        draw = ImageDraw.Draw(page)
        size = max(10, top // 3)
        draw.text((10, 6), "12:41", fill=ink, font_size=size)
        draw.text((10, top // 2), rng.choice(["instaphoto", "< Back   Photo", "Gallery"]), fill=ink, font_size=size)
        y0 = top + rng.randint(0, max(0, ph - h - top - bottom))
        page.paste(im, (0, y0))
        draw.text((10, y0 + h + 8), rng.choice(["1,204 likes", "Liked by friends", "View all 32 comments"]), fill=ink, font_size=size)
        draw.rectangle((0, ph - top, w, ph), fill=(235, 235, 235) if bg[0] > 128 else (40, 40, 40))
        return page
    if edit == "tiny":  # 64-128 px on the long side
        f = rng.randint(64, 128) / max(w, h)
        return im.resize((max(8, round(w * f)), max(8, round(h * f))), Image.Resampling.LANCZOS)
    raise ValueError(edit)


def plant_duplicates(
    photos: Sequence[Path],
    captions: dict[str, str],
    out_dir: str | Path,
    *,
    n_originals: int = 100,
    exact_per_original: float = 0.3,
    near_per_original: tuple[int, int] = (1, 3),
    seed: int = 0,
    edits: Sequence[str] = EDITS,
) -> list[Planted]:
    """Write every photo plus planted copies of ``n_originals`` of them to ``out_dir`` (JPEG + .txt).

    Each chosen original gets an exact byte copy with probability ``exact_per_original`` and
    ``near_per_original`` near copies (one or two edits each, every edit in ``EDITS`` used in turn).
    Copies keep the original's caption half of the time and get another photo's caption otherwise
    (so caption-based methods cannot find them for free). ``edits``: the kinds used in turn
    (``EDITS``, ``HARD_EDITS`` or both). Returns one ``Planted`` per written file.
    """
    unknown = [e for e in edits if e not in EDITS + HARD_EDITS + WILD_EDITS]
    if unknown or not edits:
        raise ValueError(f"unknown edits {unknown}; choose from {EDITS + HARD_EDITS + WILD_EDITS}")
    rng = random.Random(seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    photos = sorted(photos)
    stems = [p.stem for p in photos]
    chosen = set(rng.sample(stems, min(n_originals, len(stems))))
    planted: list[Planted] = []
    edit_cycle = 0

    def write(key: str, data: bytes, caption: str, original: str, edit: str) -> None:
        write_pair(out, key, data, caption)
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
                done = [edits[edit_cycle % len(edits)]]
                edit_cycle += 1
                if rng.random() < 1 / 3:  # a second edit on top: one of the easy kinds
                    done.append(rng.choice([e for e in EDITS if e != done[0]]))
                im = src
                for e in done:
                    im = edit_image(im, e, rng)
                buf = io.BytesIO()
                im.convert("RGB").save(buf, "JPEG", quality=rng.randint(75, 95))
                caption = captions.get(stem, "") if rng.random() < 0.5 else captions.get(rng.choice(stems), "")
                write(f"{stem}__near{c}", buf.getvalue(), caption, stem, "+".join(done))
    return planted


COLLAGE_CELL = (320, 240)  # each photo of a collage, fitted (cropped to fill) to this size


def plant_collages(photos: Sequence[Path], captions: dict[str, str], out_dir: str | Path, *, n: int = 20,
                   seed: int = 0, per_collage: tuple[int, int] = (2, 4)) -> list[Planted]:
    """Write ``n`` collages of 2-4 different ``photos`` each (every photo fitted to ``COLLAGE_CELL``,
    side by side, or 2 x 2 for four, on white with 4-pixel gaps) to ``out_dir``: a collage is a copy of
    none of the photos in it (its ``original`` is itself; ``holds`` names them), so dedup must not put
    two of them in one group through it. Its own random stream (``seed``), so the photos and copies
    ``plant_duplicates`` writes with the same seed are unchanged; the caption is one of its photos'.

        planted += plant_collages(photos, captions, "planted/", n=20, seed=1)
    """
    rng = random.Random(f"collages {seed}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    photos = sorted(photos)
    cw, ch = COLLAGE_CELL
    planted = []
    for c in range(n):
        k = rng.randint(*per_collage)
        chosen = rng.sample(photos, k)
        if k == 4:
            canvas = Image.new("RGB", (2 * cw + 12, 2 * ch + 12), (255, 255, 255))
            cells = [(4, 4), (cw + 8, 4), (4, ch + 8), (cw + 8, ch + 8)]
        else:
            canvas = Image.new("RGB", (k * cw + 4 * (k + 1), ch + 8), (255, 255, 255))
            cells = [(4 + s * (cw + 4), 4) for s in range(k)]
        for cell, path in zip(cells, chosen):
            with Image.open(path) as im:
                canvas.paste(ImageOps.fit(im.convert("RGB"), (cw, ch)), cell)
        buf = io.BytesIO()
        canvas.save(buf, "JPEG", quality=rng.randint(75, 95))
        key = f"collage{c:03d}"
        write_pair(out, key, buf.getvalue(), captions.get(rng.choice(chosen).stem, ""))
        planted.append(Planted(key, key, "collage", tuple(p.stem for p in chosen)))
    return planted


def false_groups(planted: Sequence[Planted], groups: dict[str, str]) -> list[list[str]]:
    """The groups (``groups``: key -> group label, e.g. ``dup_group``) that hold rows of two or more
    different originals, each as the sorted keys of its non-collage members (a collage is counted
    apart: it holds other photos, so any group of it is a wrong one only through the photos it joins)."""
    original = {p.key: p.original for p in planted}
    collage = {p.key for p in planted if p.edit == "collage"}
    members: dict[str, list[str]] = {}
    for key, g in groups.items():
        if key not in collage and isinstance(g, str):  # (no group: None, or NaN from pandas)
            members.setdefault(g, []).append(key)
    return [sorted(m) for m in members.values() if len({original[k] for k in m}) > 1]


def split_in_halves(planted: Sequence[Planted], src: str | Path, root: str | Path) -> list[Path]:
    """Move the planted files from ``src`` into ``root/a`` and ``root/b``, every other file in each
    (copies and originals alike): a lake that gets its rows in two arrivals. Returns the two folders."""
    import shutil

    halves = [Path(root) / "a", Path(root) / "b"]
    for h in halves:
        h.mkdir(parents=True, exist_ok=True)
    for k, p in enumerate(planted):
        for ext in (".jpg", ".txt"):
            shutil.move(Path(src) / f"{p.key}{ext}", halves[k % 2] / f"{p.key}{ext}")
    return halves


def true_pairs(planted: Sequence[Planted]) -> set[tuple[str, str]]:
    """Every pair of keys made from the same original (sorted tuples)."""
    by_original: dict[str, list[str]] = {}
    for p in planted:
        by_original.setdefault(p.original, []).append(p.key)
    return {(a, b) for keys in by_original.values() for a in keys for b in keys if a < b}


JUNK_KINDS = ("swapped", "filename", "tiny", "aspect", "blurred", "pii")
_FILENAMES = ("IMG_{n:04d}.JPG", "DSC{n:05d}.jpg", "photo_{n}.png", "P{n:07d}.JPG", "image-{n}.jpeg", "Screenshot {n}.png")
_PII = ("contact me at {user}@example.com", "call {phone} for prints", "{user}.smith@mail.example.org took this",
        "whatsapp {phone}", "bookings: {user}@photos.example.net / {phone}")


# Number-like strings that are not phone numbers (scores, sizes, ISBNs, dates, prices, ...): a PII
# detector must flag none (tests/test_signals.py, scripts/eval_pii.py).
NOT_PHONES = (
    "runner number 1234567", "scores 3-2-1 then 10-20-30-40", "ISBN 978-3-16-148410-0", "ISBN 0-306-40615-2",
    "isbn 0306406152", "978-0-596-52068-7", "taken on 2023-10-05", "shot 12/05/2021 at dusk", "2021.05.12 14:32:10",
    "price $1,299.99", "only 1.234.567 EUR", "population 1,250,000", "1920x1080 wallpaper", "30 x 40 x 50 cm",
    "10:30-11:45", "open 9-17 mon-fri", "zip 90210", "1999-2004 tour", "version 3.14.159", "flight 1234 to rome",
    "serial no. 4711-0815", "GPS 48.8584, 2.2945", "lot 12 34 56", "order #20231005-77", "bib 4412 finished 2:03:45",
    "room 1204, floor 12", "ph 7.4 water", "iso 3200 f/2.8 1/250s", "model DSC-RX100 VII", "1080p60 4k30",
)
# Real-format phone numbers from several regions (numbering plans as libphonenumber knows them),
# written as people write them: with a country code, or in the national format of their region.
REAL_PHONES = {
    "US": ("+1 650-253-0000", "(212) 736-3100", "415.723.4000", "+1 (312) 567-3000"),
    "GB": ("+44 20 7946 0018", "020 7031 3000", "+44 161 306 6000", "0131 496 0000"),
    "DE": ("+49 30 303986300", "030 1234567", "+49 89 21040", "030/1234567", "+49 (0)30 1234567"),
    "FR": ("+33 1 42 68 53 00", "01 42 68 53 00", "+33 4 91 14 25 00"),
    "IN": ("+91 80 6721 8000", "+91 98450 12345", "080 2293 2000"),
    "JP": ("+81 3-6384-9000", "03-3224-5000"),
    "BR": ("+55 11 2395-8400", "(11) 3095-5000"),
    "AU": ("+61 2 9374 4000", "(02) 9374 4000"),
}


# Templated alt text: a constant frame around a varying subject, as stock sites and CMSs write it.
CAPTION_TEMPLATES = (
    "Stock photo of {x}, royalty free", "{x} - free stock image download", "Buy {x} online at the best price",
    "Image may contain: {x}", "{x} | Wallpaper HD 1920x1080", "Close-up of {x} in high resolution, vector illustration",
    "Photo of {x}. All rights reserved.", "{x} stock photos and images (1,234 results)",
)


def plant_templates(captions: Sequence[str], *, per_template: int = 20, templates: Sequence[str] = CAPTION_TEMPLATES,
                    seed: int = 0) -> list[tuple[str, int]]:
    """Templated captions with known truth: each template filled with ``per_template`` subjects
    (the first 2-6 words of random ``captions``); returns (caption, template index) pairs."""
    rng = random.Random(seed)
    out = []
    for t, template in enumerate(templates):
        for c in rng.sample(list(captions), per_template):
            x = " ".join(c.lower().rstrip(" .").split()[: rng.randint(2, 6)])
            out.append((template.format(x=x), t))
    return out


_TEXT_WORDS = ("summer sale free shipping best price new arrival limited offer call now open daily fresh coffee "
               "hotel parking exit museum tickets gallery").split()


def plant_text(photo: bytes, *, seed: int = 0, lines: tuple[int, int] = (1, 4)) -> tuple[bytes, float]:
    """A photo with legible text rendered on it (1-4 lines, 1-4 words each, sizes from 1/25 to 1/6
    of the height, white or black with a contrasting outline, inside the frame, not overlapping),
    as JPEG, and the
    truth: the share of the image covered by the union of the lines' bounding boxes."""
    from PIL import ImageFont

    rng = random.Random(seed)
    im = Image.open(io.BytesIO(photo)).convert("RGB")
    draw = ImageDraw.Draw(im)
    covered = np.zeros((im.height, im.width), bool)
    for _ in range(rng.randint(*lines)):
        size = rng.randint(max(12, im.height // 25), max(13, im.height // 6))
        font = ImageFont.load_default(size=size)
        words = " ".join(rng.sample(_TEXT_WORDS, rng.randint(1, 4)))
        text = words.upper() if rng.random() < 0.5 else words
        fill, outline = rng.choice([((255, 255, 255), (0, 0, 0)), ((0, 0, 0), (255, 255, 255)), ((255, 220, 0), (0, 0, 0))])
        stroke = rng.choice([1, 2])
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font, stroke_width=stroke)
        if right - left >= im.width or bottom - top >= im.height:
            continue
        for _ in range(20):  # lines do not overlap (an overlay's lines never do)
            x = rng.randint(-left, im.width - right)
            y = rng.randint(-top, im.height - bottom)
            if not covered[max(0, y + top - 2):y + bottom + 2, max(0, x + left - 2):x + right + 2].any():
                break
        else:
            continue
        draw.text((x, y), text, font=font, fill=fill, stroke_width=stroke, stroke_fill=outline)
        covered[y + top:y + bottom, x + left:x + right] = True
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=90)
    return buf.getvalue(), float(covered.mean())


def _fake_phone(rng: random.Random) -> str:
    """A phone number in a real format (valid in its numbering plan), random subscriber digits."""
    return rng.choice(["+1 (212) {a}-{b}", "(650) {a}-{b}", "+44 20 7946 {b}", "+49 30 {a}{b}", "+33 1 42 {c} {d} {e}"]).format(
        a=rng.randint(200, 999), b=rng.randint(1000, 9999), c=rng.randint(10, 99), d=rng.randint(10, 99),
        e=rng.randint(10, 99))


def plant_junk(
    photos: Sequence[Path],
    captions: dict[str, str],
    out_dir: str | Path,
    *,
    per_kind: int = 40,
    seed: int = 0,
    swap_pool: Sequence[str] | None = None,
) -> dict[str, str]:
    """Write clean pairs and planted junk to ``out_dir`` (JPEG + .txt); returns key -> kind
    ("clean" or one of ``JUNK_KINDS``). Every photo is used once, so junk and clean rows never share
    an image: ``per_kind`` photos per junk kind, the rest clean with their own caption.

    swapped: another photo's caption; filename: a camera file name as caption; tiny: a crop of
    16-48 px; aspect: a strip 5-10 times as wide as high (or high as wide); blurred: Gaussian blur
    of radius 2.5-5 px; pii: the true caption plus an e-mail address or phone number (fictional).

    ``swap_pool`` (photo stems) puts the swapped pairs and, after them, the clean pairs first on
    those photos: e.g. photos an encoder was not trained on, so that its alignment score is judged
    on unseen photos only (swapped captions also come from the pool).
    """
    from PIL import ImageFilter

    rng = random.Random(seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    photos = sorted(photos)
    order = photos[:]
    rng.shuffle(order)
    stems = [p.stem for p in photos]
    plan: list[tuple[Path, str]] = []
    if swap_pool is not None:
        pool = set(swap_pool)
        stems = [s for s in stems if s in pool]
        inside = [p for p in order if p.stem in pool]
        plan = [(p, "swapped") for p in inside[:per_kind]] + [(p, "clean") for p in inside[per_kind:]]
        order = [p for p in order if p.stem not in pool]
    kinds_left = [k for k in JUNK_KINDS if swap_pool is None or k != "swapped"]
    plan += [(p, kinds_left[k // per_kind] if k < per_kind * len(kinds_left) else "clean") for k, p in enumerate(order)]
    kinds: dict[str, str] = {}
    for path, kind in plan:
        caption = captions.get(path.stem, "")
        data = path.read_bytes()
        if kind == "swapped":
            caption = captions[rng.choice([s for s in stems if s != path.stem and captions.get(s)])]
        elif kind == "filename":
            caption = rng.choice(_FILENAMES).format(n=rng.randint(1, 99999))
        elif kind == "pii":
            caption = f"{caption} {rng.choice(_PII).format(user=rng.choice(['anna', 'li.wei', 'jdoe']), phone=_fake_phone(rng))}"
        elif kind in ("tiny", "aspect", "blurred"):
            with Image.open(path) as im:
                im = im.convert("RGB")
                w, h = im.size
                if kind == "tiny":
                    s = rng.randint(16, 48)
                    im = im.resize((s, max(8, round(s * h / w))))
                elif kind == "aspect":
                    ratio = rng.uniform(5, 10)
                    if rng.random() < 0.5:
                        sh = max(8, round(w / ratio))
                        y0 = rng.randint(0, h - sh)
                        im = im.crop((0, y0, w, y0 + sh))
                    else:
                        sw = max(8, round(h / ratio))
                        x0 = rng.randint(0, w - sw)
                        im = im.crop((x0, 0, x0 + sw, h))
                else:
                    im = im.filter(ImageFilter.GaussianBlur(rng.uniform(2.5, 5)))
                buf = io.BytesIO()
                im.save(buf, "JPEG", quality=90)
                data = buf.getvalue()
        key = f"{path.stem}__{kind}"
        write_pair(out, key, data, caption)
        kinds[key] = kind
    return kinds


def first_captions(captions_csv: str | Path) -> dict[str, str]:
    """photo stem -> its first caption, from a Flickr8k-style ``image,caption`` CSV."""
    import csv

    out: dict[str, str] = {}
    with open(captions_csv, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            out.setdefault(Path(row["image"]).stem, row["caption"])
    return out


def plant_skew(
    photos: Sequence[Path],
    captions: dict[str, str],
    out_dir: str | Path,
    *,
    dominant: int = 2,
    copies: int = 100,
    seed: int = 0,
) -> dict[str, str]:
    """A skewed concept mix: every photo once, plus ``copies`` near copies (one or two ``EDITS``
    each) of each of ``dominant`` photos, so that one concept dominates. Returns key -> "dominant"
    (the chosen photos and their copies) or "other"."""
    rng = random.Random(seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    photos = sorted(photos)
    chosen = set(rng.sample([p.stem for p in photos], dominant))
    labels: dict[str, str] = {}
    for path in photos:
        kind = "dominant" if path.stem in chosen else "other"
        write_pair(out, path.stem, path.read_bytes(), captions.get(path.stem, ""))
        labels[path.stem] = kind
        if kind != "dominant":
            continue
        for key in write_near_copies(out, path, captions.get(path.stem, ""), copies, rng, "copy"):
            labels[key] = "dominant"
    return labels


def write_near_copies(out: Path, path: Path, caption: str, copies: int, rng: random.Random, name: str) -> list[str]:
    """``copies`` near copies of the photo at ``path`` (one or two ``EDITS`` each, re-encoded as
    JPEG), written as ``<stem>__<name>NNN`` with ``caption``; returns their keys."""
    keys = []
    with Image.open(path) as src:
        src.load()
        for c in range(copies):
            im = src
            for e in rng.sample(EDITS, rng.randint(1, 2)):
                im = edit_image(im, e, rng)
            buf = io.BytesIO()
            im.convert("RGB").save(buf, "JPEG", quality=rng.randint(75, 95))
            key = f"{path.stem}__{name}{c:03d}"
            write_pair(out, key, buf.getvalue(), caption)
            keys.append(key)
    return keys


def plant_noisy_pool(
    photos: Sequence[Path],
    captions: dict[str, str],
    out_dir: str | Path,
    *,
    swapped: float = 0.25,
    filename: float = 0.1,
    floods: int = 4,
    copies: int = 60,
    seed: int = 0,
) -> dict[str, str]:
    """A noisy training pool: every photo once with its caption, except a share with another
    photo's caption (``swapped``) or a camera file name (``filename``), plus ``copies`` near copies
    of each of ``floods`` photos (captioned like their original). Returns key -> "clean",
    "swapped", "filename" or "flood" (the flooded originals are "clean")."""
    rng = random.Random(seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    photos = sorted(photos)
    order = photos[:]
    rng.shuffle(order)
    n_swap, n_file = round(swapped * len(photos)), round(filename * len(photos))
    kind_of = {p.stem: "swapped" for p in order[:n_swap]}
    kind_of.update({p.stem: "filename" for p in order[n_swap : n_swap + n_file]})
    flooded = {p.stem for p in order[n_swap + n_file : n_swap + n_file + floods]}
    stems = [p.stem for p in photos if captions.get(p.stem)]
    labels: dict[str, str] = {}
    for path in photos:
        kind = kind_of.get(path.stem, "clean")
        caption = captions.get(path.stem, "")
        if kind == "swapped":
            caption = captions[rng.choice([s for s in stems if s != path.stem])]
        elif kind == "filename":
            caption = rng.choice(_FILENAMES).format(n=rng.randint(1, 99999))
        write_pair(out, path.stem, path.read_bytes(), caption)
        labels[path.stem] = kind
        if path.stem not in flooded:
            continue
        for key in write_near_copies(out, path, caption, copies, rng, "flood"):
            labels[key] = "flood"
    return labels


# Web-like noise (issue 22), per level: the share of the pool's photos whose caption is another
# photo's (mismatched: DataComp's commonest noise), whose caption is junk (a camera file name or
# boilerplate alt text), and the near duplicates added on top, as a share of the photos. Duplicates
# are drawn mostly from the largest concepts (a Zipf weight by concept rank), so the concept mix
# skews the way popular subjects are copied on the web.
NOISE_LEVELS = {
    "none": {"mismatched": 0.0, "junk": 0.0, "duplicates": 0.0},
    "low": {"mismatched": 0.10, "junk": 0.02, "duplicates": 0.05},
    "web": {"mismatched": 0.15, "junk": 0.04, "duplicates": 0.08},
    "high": {"mismatched": 0.20, "junk": 0.06, "duplicates": 0.10},
    "heavy": {"mismatched": 0.35, "junk": 0.10, "duplicates": 0.20},
}
# Rough concepts from a caption's words, in this order (the first that matches): enough to skew a mix.
CONCEPT_WORDS = (
    ("dog", ("dog", "dogs", "puppy")),
    ("children", ("boy", "girl", "child", "children", "kid", "kids", "baby", "toddler")),
    ("water and snow", ("water", "beach", "ocean", "lake", "river", "pool", "surf", "surfer", "wave", "snow", "swim")),
    ("sport", ("bike", "bicycle", "ball", "football", "soccer", "skateboard", "player", "race", "climb", "climbing")),
    ("people", ("man", "woman", "men", "women", "person", "people", "crowd", "couple", "group")),
)
_BOILERPLATE = ("click here to enlarge", "image", "untitled", "photo", "no description available", "thumbnail",
                "stock photo", "view full size", "default image", "picture 1 of 12")


def concept_of(caption: str) -> str:
    """A rough concept from a caption's words (:data:`CONCEPT_WORDS`), "other" when none matches.

    >>> concept_of("A black dog runs on the beach"), concept_of("A girl in the snow"), concept_of("A red car")
    ('dog', 'children', 'other')
    >>> concept_of("Two girls in the snow")  # whole words only: "girls" is not "girl"
    'water and snow'
    """
    words = set("".join(c if c.isalnum() else " " for c in caption.lower()).split())
    return next((name for name, keys in CONCEPT_WORDS if words & set(keys)), "other")


def all_captions(captions_csv: str | Path) -> dict[str, list[str]]:
    """photo stem -> every caption it has, from a Flickr8k-style ``image,caption`` CSV."""
    import csv

    out: dict[str, list[str]] = {}
    with open(captions_csv, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            out.setdefault(Path(row["image"]).stem, []).append(row["caption"])
    return out


def plant_web_pool(
    photos: Sequence[Path],
    captions: dict[str, list[str]],
    out_dir: str | Path,
    *,
    noise: str = "web",
    seed: int = 0,
) -> dict[str, str]:
    """A training pool with noise at web-like rates (:data:`NOISE_LEVELS`): every photo once with
    its first caption, except a ``mismatched`` share with another photo's caption and a ``junk``
    share with a file name or boilerplate; plus ``duplicates`` x photos extra rows, each a copy of
    a photo drawn with a Zipf weight by its concept's rank (the largest concept most): half near
    copies (one or two :data:`EDITS`, same caption), half the same picture re-encoded with another
    of its human captions (a re-hosted image with other alt text). Returns key -> "clean",
    "mismatched", "junk", "near_copy" or "recaptioned_copy"."""
    if noise not in NOISE_LEVELS:
        raise ValueError(f"noise {noise!r}: one of {', '.join(NOISE_LEVELS)}")
    rates = NOISE_LEVELS[noise]
    rng = random.Random(seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    photos = sorted(p for p in photos if captions.get(p.stem))
    order = photos[:]
    rng.shuffle(order)
    n_mis, n_junk = round(rates["mismatched"] * len(photos)), round(rates["junk"] * len(photos))
    kind_of = {p.stem: "mismatched" for p in order[:n_mis]}
    kind_of.update({p.stem: "junk" for p in order[n_mis: n_mis + n_junk]})
    labels: dict[str, str] = {}
    first = {p.stem: captions[p.stem][0] for p in photos}
    for path in photos:
        kind = kind_of.get(path.stem, "clean")
        caption = first[path.stem]
        if kind == "mismatched":
            caption = first[rng.choice([q.stem for q in photos if q.stem != path.stem])]
        elif kind == "junk":
            caption = rng.choice(_FILENAMES).format(n=rng.randint(1, 99999)) if rng.random() < 0.5 \
                else rng.choice(_BOILERPLATE)
        write_pair(out, path.stem, path.read_bytes(), caption)
        labels[path.stem] = kind
    concept = {p.stem: concept_of(first[p.stem]) for p in photos}
    sizes: dict[str, int] = {}
    for c in concept.values():
        sizes[c] = sizes.get(c, 0) + 1
    rank = {c: r for r, c in enumerate(sorted(sizes, key=lambda c: (-sizes[c], c)))}
    weights = [1.0 / (rank[concept[p.stem]] + 1) ** 1.5 / sizes[concept[p.stem]] for p in photos]
    n_dup = round(rates["duplicates"] * len(photos))
    for i, path in enumerate(rng.choices(photos, weights=weights, k=n_dup)):
        if i % 2 == 0:
            key = write_near_copies(out, path, first[path.stem], 1, rng, f"near{i:04d}_")[0]
            labels[key] = "near_copy"
        else:
            with Image.open(path) as im:
                buf = io.BytesIO()
                im.convert("RGB").save(buf, "JPEG", quality=rng.randint(70, 92))
            others = captions[path.stem][1:] or captions[path.stem]
            key = f"{path.stem}__rehost{i:04d}"
            write_pair(out, key, buf.getvalue(), rng.choice(others))
            labels[key] = "recaptioned_copy"
    return labels


def write_eval_set(photos: Sequence[Path], captions_csv: str | Path, out_dir: str | Path) -> int:
    """A clean evaluation set: ``photos`` copied to ``out_dir/images`` and a ``captions.csv``
    manifest (image, caption) with every caption of each photo. Returns the number of captions."""
    import csv
    import shutil

    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    wanted = {p.name: p for p in photos}
    n = 0
    with open(captions_csv, newline="", encoding="utf-8") as f, open(out / "captions.csv", "w", newline="", encoding="utf-8") as g:
        w = csv.writer(g)
        w.writerow(["image", "caption"])
        for row in csv.DictReader(f):
            if row["image"] in wanted:
                w.writerow([f"images/{row['image']}", row["caption"]])
                n += 1
    for name, path in wanted.items():
        shutil.copyfile(path, out / "images" / name)
    return n


def synthetic_pairs(start: int, n: int, image: bytes | None = None) -> "pa.Table":
    """``n`` rows of the pairs schema (ids ``p{start:07d}``...) with captions of varying length (every
    17th null) and one tiny JPEG as every image: for tests and benchmarks of writes and features that
    need no real photos."""
    import pyarrow as pa

    from lakecurate.schema import PAIRS_SCHEMA

    if image is None:
        buf = io.BytesIO()
        Image.new("RGB", (8, 8), (200, 30, 60)).save(buf, "JPEG")
        image = buf.getvalue()
    ids = [f"p{i:07d}" for i in range(start, start + n)]
    data = {f.name: pa.nulls(n, f.type) for f in PAIRS_SCHEMA}
    data.update({
        "id": pa.array(ids), "key": pa.array(ids), "source": pa.array(["synthetic"] * n),
        "image": pa.array([image] * n, pa.large_binary()),
        "caption": pa.array([None if i % 17 == 5 else "word " * (i % 11) + f"pair {i}" for i in range(start, start + n)]),
        "ingest_status": pa.array(["ok"] * n),
    })
    return pa.table(data, schema=PAIRS_SCHEMA)


def topic_graph(n: int, k: int = 5, seed: int = 0, topic_rows: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """A k-nearest candidate graph as a lake's would look: ``n`` rows in ``n // topic_rows`` topics
    (row numbers unrelated to topics), each row paired with ``k`` random members of its topic.
    Returns its distinct pairs (i, j), i < j, sorted: for tests and benchmarks of the order in
    which pairs are verified."""
    rng = np.random.default_rng(seed)
    topics = max(1, n // topic_rows)
    topic = rng.integers(0, topics, n)
    order = np.argsort(topic, kind="stable")
    start = np.searchsorted(topic[order], np.arange(topics + 1))
    size = np.diff(start)[topic]
    j = order[start[topic][:, None] + rng.integers(0, 2**31, (n, k)) % size[:, None]].ravel()
    i = np.repeat(np.arange(n), k)
    key = np.unique(np.minimum(i, j) * n + np.maximum(i, j))
    key = key[key // n != key % n]
    return key // n, key % n
