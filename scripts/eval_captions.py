"""Templated captions vs human captions: how the dedup ``minhash`` method groups them.

Plants ``plant.CAPTION_TEMPLATES`` (a constant frame, a varying subject) among the Flickr8k human
captions (5 per photo), runs ``neardup.caption_pairs`` (banded MinHash + exact Jaccard, star groups)
at several thresholds, and prints, averaged over seeds: the share of templated captions in a group
of at least ``min_group`` rows (recall of the ``caption_template`` filter), the share of human
captions in such a group (what it would wrongly drop), and the throughput. Prints markdown.

    python scripts/eval_captions.py [--data ../shared/data/flickr8k] [--seeds 1 2 3]
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np

from lakecurate.neardup import caption_pairs, components
from lakecurate.plant import CAPTION_TEMPLATES, plant_templates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[1].parent / "shared/data/flickr8k"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--thresholds", type=float, nargs="+", default=[0.3, 0.4, 0.5])
    ap.add_argument("--min-groups", type=int, nargs="+", default=[3, 5, 8])
    ap.add_argument("--first-only", action="store_true", help="One human caption per photo (not all five).")
    args = ap.parse_args()
    with (Path(args.data) / "captions.csv").open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    human = (list({r["image"]: r["caption"] for r in reversed(rows)}.values()) if args.first_only
             else [r["caption"] for r in rows])
    print(f"{len(human)} human captions ({'one' if args.first_only else 'five'} per photo); {len(CAPTION_TEMPLATES)} "
          f"templates x 20 subjects per seed; seeds {args.seeds}\n")
    print("| Jaccard >= | min_group | templated captions grouped | human captions grouped | rows/s |")
    print("| --- | --- | --- | --- | --- |")
    for th in args.thresholds:
        res = {g: ([], []) for g in args.min_groups}
        speed = []
        for seed in args.seeds:
            planted = plant_templates(human, seed=seed)
            caps = human + [c for c, _ in planted]
            order = np.random.default_rng(seed).permutation(len(caps))  # ids are hashes: rows arrive shuffled
            t0 = time.perf_counter()
            i, j, _ = caption_pairs([caps[k] for k in order], th)
            speed.append(len(caps) / (time.perf_counter() - t0))
            label = components(len(caps), i, j)
            size = np.bincount(label, minlength=len(caps))[label]
            size_of = np.empty(len(caps), np.int64)
            size_of[order] = size
            for g in args.min_groups:
                res[g][0].append((size_of[len(human):] >= g).mean())
                res[g][1].append((size_of[: len(human)] >= g).mean())
        for g in args.min_groups:
            t, h = np.array(res[g][0]), np.array(res[g][1])
            print(f"| {th} | {g} | {t.mean():.3f} ({t.min():.3f}-{t.max():.3f}) | {h.mean():.4f} ({h.min():.4f}-{h.max():.4f}) "
                  f"| {np.mean(speed):,.0f} |")


if __name__ == "__main__":
    main()
