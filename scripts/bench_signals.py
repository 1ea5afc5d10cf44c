"""Throughput of the per-row signals (issue 18) against the image-signals pass measured in the
same run, and the text-in-image accuracy on planted text.

In this process, bytes in memory (best of ``--repeat``): image signals (the baseline: one reduced decode,
pHash + 3 measures), faces (YuNet at 640 px), text in image (PP-OCRv5 detection at 640 px), and
caption signals (phonenumbers + the rest) on the photos' captions. Then each stage on a lake on the
runner (2 reader processes, spawn and commits included). Then ``--text-seeds``: planted text on 10
photos per seed, |measured - true share|, and photos without text.

    python scripts/bench_signals.py [--n 200] [--data ../shared/data/flickr8k]
"""

from __future__ import annotations

import argparse
import csv
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def best(fn, repeat: int) -> float:
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return min(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[1].parent / "shared/data/flickr8k"))
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--text-seeds", type=int, nargs="*", default=[1, 2, 3, 4, 5])
    args = ap.parse_args()

    from lakecurate import Lake
    from lakecurate.faces import find_faces
    from lakecurate.imagetext import find_text
    from lakecurate.plant import plant_text
    from lakecurate.signals import caption_signals, image_signals

    data = Path(args.data)
    photos = sorted((data / "images").glob("*.jpg"))[: args.n]
    blobs = [p.read_bytes() for p in photos]
    with (data / "captions.csv").open(newline="", encoding="utf-8") as fh:
        caps = [r["caption"] for r in csv.DictReader(fh)]
    find_faces(blobs[:2]), find_text(blobs[:2])  # load the models once, outside the timing
    base = len(blobs) / best(lambda: image_signals(blobs), args.repeat)
    print(f"{len(blobs)} Flickr8k JPEGs in this process (YuNet and OpenCV use their own threads), best of {args.repeat}:")
    print(f"  image signals (baseline)          {base:8.1f} img/s")
    for name, fn in (("faces (YuNet, 640 px)", find_faces), ("text in image (PP-OCRv5 det)", find_text)):
        rate = len(blobs) / best(lambda: fn(blobs), args.repeat)
        print(f"  {name:32s}  {rate:8.1f} img/s   ratio to image signals {rate / base:.3f}")
    rate = len(caps) / best(lambda: caption_signals(caps), args.repeat)
    print(f"  caption signals (phonenumbers)    {rate:8.0f} captions/s ({len(caps)} captions)")

    print("\non a lake, the runner with 2 reader processes (spawn and commits included):")
    with tempfile.TemporaryDirectory() as tmp:
        lake = Lake.create(Path(tmp) / "lake")
        folder = Path(tmp) / "photos"
        folder.mkdir()
        for p in photos:
            shutil.copyfile(p, folder / p.name)  # not a link: ingest refuses paths that leave the folder
        lake.ingest(folder, progress=False)
        for kind in ("image", "faces", "text"):
            t0 = time.perf_counter()
            n = lake.signals([kind], workers=2, progress=False)[kind]
            dt = time.perf_counter() - t0
            col = {"image": "phash", "faces": "img_faces", "text": "img_text_share"}[kind]
            assert lake.dataset().count_rows(filter=f"{col} IS NOT NULL") == len(photos), f"{kind}: values missing"
            print(f"  signals --{kind:6s} {n} rows in {dt:6.1f} s = {n / dt:6.1f} img/s")

    if args.text_seeds:
        errs, clean = [], []
        for seed in args.text_seeds:
            rng = np.random.default_rng(seed)
            pick = [photos[k] for k in rng.choice(len(photos), 10, replace=False)]
            planted = [plant_text(p.read_bytes(), seed=seed * 100 + k) for k, p in enumerate(pick)]
            got = find_text([b for b, _ in planted]).column("img_text_share").to_numpy()
            errs += list(got - np.array([t for _, t in planted]))
            clean += list(find_text([p.read_bytes() for p in pick]).column("img_text_share").to_numpy())
        e = np.abs(np.array(errs))
        print(f"\ntext share on planted text, seeds {args.text_seeds} ({len(e)} photos): |error| mean {e.mean():.3f}, "
              f"p90 {np.percentile(e, 90):.3f}, max {e.max():.3f}; signed mean {np.mean(errs):+.3f}; "
              f"within 0.1: {(e <= 0.1).mean():.2f}")
        c = np.array(clean)
        print(f"the same photos before the text: median {np.median(c):.4f}, p90 {np.percentile(c, 90):.4f}, "
              f"max {c.max():.4f} (some Flickr8k photos hold real text: signs, shirts)")


if __name__ == "__main__":
    main()
