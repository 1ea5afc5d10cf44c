"""Rebalancing a skewed concept mix built from real photos (the check of tests/test_concepts.py).

300 Flickr8k photos plus --copies near copies of each of --dominant photos (lakecurate.plant.plant_skew),
ingested, embedded (offline), clustered (default k) and rebalanced to half the rows. Prints the
dominant concept's share before and after and the survival of the rarest concepts (the smallest
clusters holding <= 10% of the rows), for --temperature values.

    python scripts/eval_rebalance.py --data ../shared/data/flickr8k
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np

from lakecurate import Lake
from lakecurate.plant import first_captions, plant_skew


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared/data/flickr8k")
    ap.add_argument("--photos", type=int, default=300)
    ap.add_argument("--dominant", type=int, default=2)
    ap.add_argument("--copies", type=int, default=100)
    ap.add_argument("--temperature", type=float, nargs="+", default=[0.2, 0.5, 1.0, 2.0])
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    try:
        photos = sorted((args.data / "images").glob("*.jpg"))[: args.photos]
        labels = plant_skew(photos, first_captions(args.data / "captions.csv"), tmp / "src", dominant=args.dominant,
                            copies=args.copies, seed=0)
        lake = Lake.create(tmp / "lake")
        lake.ingest(tmp / "src", progress=False)
        lake.embed("offline", progress=False)
        rep = lake.cluster()
        print(f"{len(labels)} rows, {rep.k} concepts")
        for t in args.temperature:
            rb = lake.rebalance(0.5, temperature=t)
            df = lake.to_pandas(["key", "concept", "rebalance_keep"])
            dom = np.array([labels[Path(k).stem] == "dominant" for k in df["key"]])
            keep = df["rebalance_keep"].to_numpy()
            sizes = df.groupby("concept").size().sort_values()
            rare = sizes.index[np.cumsum(sizes.to_numpy()) <= 0.1 * len(df)]
            survived = keep[df["concept"].isin(rare).to_numpy()].mean()
            print(f"temperature {t}: kept {rb.kept}; dominant share {dom.mean():.3f} -> {dom[keep].mean():.3f} "
                  f"({dom.mean() / max(dom[keep].mean(), 1e-9):.1f}x lower); rarest {len(rare)} concepts "
                  f"({sizes[rare].sum()} rows): {survived:.3f} kept; {rb.seconds:.2f} s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
