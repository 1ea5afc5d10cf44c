"""False duplicates among different photos that share a page layout, and reposts of such pages.

Every image is a different Flickr8k photo pasted on one identical canvas (800 x 600 white, a grey
header bar, the photo at a fixed offset) at a share of the canvas area (10, 20, 35, 55%), as
product shots on one template or screenshots in one browser frame are. No two of those are copies,
so every link between them is false and every one with ``dup_keep = false`` is good data dropped.
The first REPOSTS pages of each share are also posted again (60% of the size, LANCZOS, JPEG 60):
those pairs are true. Prints, per method set and share: false pairs, rows dropped of 30, the
largest group of different photos, the reposts linked to their page; and the links by method.
Found by a quality probe (2026-12-06): hashed whole, at 10-20% of the area 24-29 of 30 were
dropped (phash links at 4-8 bits, semantic ones through the hash-confirmed path at cosine
0.70-0.77); pHash now hashes the picture inside the page's uniform surround.

    python scripts/eval_layout.py --data ../shared/data/flickr8k --seeds 1 2 3
"""

from __future__ import annotations

import argparse
import random
import shutil
import tempfile
from collections import Counter
from pathlib import Path

from PIL import Image, ImageDraw

from lakecurate import Lake

SHARES = (0.10, 0.20, 0.35, 0.55)
PER_SHARE = 30
REPOSTS = 10
CANVAS = (800, 600)


def build(photos: list[Path], folder: Path, rng: random.Random) -> dict[str, float]:
    """The planted set in ``folder`` (image + caption sidecar); key -> the photo's share of the canvas
    (a repost's key ends in ``__again``)."""
    rng.shuffle(photos)
    share_of = {}
    for k, share in enumerate(SHARES):
        for p in photos[k * PER_SHARE:(k + 1) * PER_SHARE]:
            pw = int((share * CANVAS[0] * CANVAS[1] * 4 / 3) ** 0.5)
            canvas = Image.new("RGB", CANVAS, (255, 255, 255))
            ImageDraw.Draw(canvas).rectangle((0, 0, CANVAS[0], 40), fill=(200, 200, 200))
            with Image.open(p) as im:
                canvas.paste(im.convert("RGB").resize((pw, pw * 3 // 4)), (60, 60))
            key = f"{p.stem}__{int(share * 100)}"
            canvas.save(folder / f"{key}.jpg", quality=90)
            (folder / f"{key}.txt").write_text("product photo")
            share_of[key] = share
            if len([k for k in share_of if k.endswith("__again") and share_of[k] == share]) < REPOSTS:
                again = canvas.resize((CANVAS[0] * 3 // 5, CANVAS[1] * 3 // 5), Image.Resampling.LANCZOS)
                again.save(folder / f"{key}__again.jpg", quality=60)
                (folder / f"{key}__again.txt").write_text("product photo")
                share_of[f"{key}__again"] = share
    return share_of


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared/data/flickr8k")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1])
    ap.add_argument("--model", default="offline")
    args = ap.parse_args()
    photos = sorted((args.data / "images").glob("*.jpg"))
    for seed in args.seeds:
        tmp = Path(tempfile.mkdtemp(prefix="eval-layout-"))
        try:
            src = tmp / "src"
            src.mkdir()
            share_of = build(list(photos), src, random.Random(4242 + seed))
            lake = Lake.create(tmp / "lake")
            lake.ingest(src, progress=False)
            lake.embed(args.model, progress=False)
            for label, methods in (("default", ("exact", "phash", "semantic", "copy")), ("all", "all")):
                lake.dedup(methods, progress=False)
                df = lake.to_pandas(["key", "dup_group", "dup_keep"])
                df["share"] = df["key"].map(lambda s: share_of[Path(s).stem])
                df["photo"] = df["key"].map(lambda s: Path(s).stem.removesuffix("__again"))
                df["repost"] = df["key"].map(lambda s: Path(s).stem.endswith("__again"))
                cells = []
                for share in SHARES:
                    sub = df[df["share"] == share]
                    pages = sub[~sub["repost"]]  # one row a photo: every link among them is false
                    sizes = pages.dropna(subset=["dup_group"]).groupby("dup_group").size()
                    group_of = dict(zip(pages["photo"], pages["dup_group"]))
                    again = sub[sub["repost"]]
                    linked = sum(g is not None and g == group_of[p] for p, g in zip(again["photo"], again["dup_group"]))
                    photos_in = df.dropna(subset=["dup_group"]).groupby("dup_group")["photo"].nunique()
                    dropped = pages[~pages["dup_keep"].fillna(True).astype(bool)]
                    wrong = int(dropped["dup_group"].map(photos_in).gt(1).sum())  # for another photo
                    cells.append(f"{share:.0%}: false pairs {int((sizes * (sizes - 1) // 2).sum())}, dropped "
                                 f"{wrong}/{len(pages)} (+{len(dropped) - wrong} for its own repost), largest "
                                 f"{int(sizes.max()) if len(sizes) else 1}, reposts linked {linked}/{len(again)}")
                print(f"seed {seed} {label:<7} " + "; ".join(cells), flush=True)
            print(f"seed {seed} links by method: {dict(Counter(lake.dup_pairs()['method']))}", flush=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
