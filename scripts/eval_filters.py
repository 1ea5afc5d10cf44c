"""Recall and false drops of each filter on planted junk built from real photos.

Builds ``lakecurate.plant.plant_junk`` from Flickr8k: clean pairs plus, per kind, --per-kind
pairs with a swapped caption, a file-name caption, a tiny image, a strip-shaped crop, a blurred
image, or an e-mail address / phone number in the caption. Swapped captions (and the clean pairs
they are judged against) use only the 160 photos the offline encoder's heads never saw. Ingests,
embeds (offline), computes the signals, then prints for each filter with its default parameters:
recall on its kind and the share of clean pairs it drops; the other filters' clean drops; and the
quantiles of the alignment score on unseen clean pairs (how ALIGNMENT_MIN was chosen).

    python scripts/eval_filters.py --data ../shared/data/flickr8k --seed 0
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

from lakecurate import Lake, offline
from lakecurate.curate import ALIGNMENT_MIN, FILTERS
from lakecurate.plant import first_captions, plant_junk
from lakecurate.signals import compute_caption_signals, compute_image_signals

KIND_FILTER = {"filename": "caption_filename", "tiny": "image_size", "aspect": "aspect", "blurred": "blur",
               "pii": "pii", "swapped": "alignment"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared/data/flickr8k")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--per-kind", type=int, default=40)
    args = ap.parse_args()
    held_out = {Path(n).stem for n in json.loads(offline.RECORD.read_text())["split"]["held_out_images"]}
    captions = first_captions(args.data / "captions.csv")
    tmp = Path(tempfile.mkdtemp())
    try:
        kinds = plant_junk(sorted((args.data / "images").glob("*.jpg")), captions, tmp / "src", per_kind=args.per_kind,
                           seed=args.seed, swap_pool=sorted(held_out))
        lake = Lake.create(tmp / "lake")
        lake.ingest(tmp / "src", progress=False)
        lake.embed("offline", progress=False)
        compute_caption_signals(lake, progress=False)
        compute_image_signals(lake, progress=False)
        df = lake.to_pandas().drop(columns=["image"], errors="ignore")
        df["kind"] = [kinds[Path(k).stem] for k in df["key"]]
        df["__score"] = df["offline_score"]
        clean = (df["kind"] == "clean").to_numpy()
        unseen = np.array([Path(k).stem.split("__")[0] in held_out for k in df["key"]])
        print(f"{len(df)} pairs: {clean.sum()} clean ({(clean & unseen).sum()} on unseen photos), "
              f"{args.per_kind} per junk kind; seed {args.seed}\n")
        print(f"{'filter':20s} {'kind':9s} {'recall':>6s} {'clean dropped':>13s}")
        for kind, name in KIND_FILTER.items():
            params = dict(FILTERS[name].params)
            if name == "alignment":
                params["min"] = ALIGNMENT_MIN["offline"]
            drop = FILTERS[name].drop(df, params)
            base = clean & unseen if name == "alignment" else clean
            print(f"{name:20s} {kind:9s} {drop[(df['kind'] == kind).to_numpy()].mean():6.3f} {drop[base].mean():13.3f}")
        print("\nclean pairs dropped by the other filters (defaults):")
        for name, f in FILTERS.items():
            if name in KIND_FILTER.values() or name == "duplicate":
                continue
            print(f"  {name:22s} {f.drop(df, f.params)[clean].mean():.3f}")
        q = np.quantile(df.loc[clean & unseen, "offline_score"], [0.01, 0.05, 0.1, 0.3])
        q_seen = np.quantile(df.loc[clean & ~unseen, "offline_score"], [0.05, 0.3])
        print(f"\noffline_score of clean pairs, unseen photos: 1% {q[0]:.3f}  5% {q[1]:.3f}  10% {q[2]:.3f}  30% {q[3]:.3f}; "
              f"photos the heads trained on: 5% {q_seen[0]:.3f}  30% {q_seen[1]:.3f}")
        s = df["offline_score"].to_numpy()
        sw = s[(df["kind"] == "swapped").to_numpy()]
        cl = s[clean & unseen]
        print(f"swapped vs clean (unseen photos) AUROC {np.mean(cl[:, None] > sw[None, :]):.3f}")
        sharp = df["img_sharpness"]
        print(f"img_sharpness: clean 1% {np.quantile(sharp[clean], 0.01):.2f}, blurred 95% "
              f"{np.quantile(sharp[(df['kind'] == 'blurred').to_numpy()], 0.95):.2f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
