"""Does curation pay? Train the proxy on the curated view and on random views of the same size.

Builds a noisy pool from ../shared/data/flickr8k: the 640 photos the offline encoder's heads were
trained on, each once with its first caption, except 25% with another photo's caption and 10% with
a camera file name, plus 60 near copies of each of 4 photos (a flood). The evaluation set is the 160
photos the heads never saw, with all 5 captions each (disjoint by content hash). The pool is
ingested, embedded (offline encoder), curated with the built-in ``basic`` recipe (dedup, caption and
image filters, alignment above the 30th percentile), clustered and rebalanced to ``--target`` of
the kept rows; then ``lake.evaluate`` trains the proxy on that view and on random rows of the lake
of the same size, over ``--seeds`` seeds.

    python scripts/eval_curation.py [--target 0.8] [--seeds 3] [--steps 300]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from lakecurate import Lake
from lakecurate.evaluate import METRICS
from lakecurate.plant import first_captions, plant_noisy_pool, write_eval_set

REPO = Path(__file__).resolve().parent.parent
HEADS = REPO / "lakecurate" / "weights" / "offline_heads.json"


def build(flickr: Path, root: Path, target: float, seed: int = 0) -> tuple[Lake, Path, dict[str, str]]:
    held_out = set(json.loads(HEADS.read_text())["split"]["held_out_images"])
    photos = sorted((flickr / "images").glob("*.jpg"))
    pool = [p for p in photos if p.name not in held_out and p.stem not in held_out]
    evals = [p for p in photos if p.name in held_out or p.stem in held_out]
    labels = plant_noisy_pool(pool, first_captions(flickr / "captions.csv"), root / "pool", seed=seed)
    write_eval_set(evals, flickr / "captions.csv", root / "eval")
    lake = Lake.create(root / "lake")
    lake.ingest(root / "pool", progress=False)
    lake.embed("offline", progress=False)
    lake.curate("basic", progress=False)
    lake.cluster()
    lake.rebalance(target)
    return lake, root / "eval" / "captions.csv", labels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "flickr8k")
    ap.add_argument("--target", type=float, default=0.8)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=300)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        lake, eval_set, labels = build(args.data, Path(tmp), args.target)
        built = time.perf_counter() - t0
        kept = lake.to_pandas(["key"], where="rebalance_keep")["key"]
        kinds = {k: sum(labels.get(Path(x).stem) == k for x in kept) for k in ("clean", "swapped", "filename", "flood")}
        res = lake.evaluate(eval_set=eval_set, seeds=args.seeds, steps=args.steps, progress=False)
        print(f"pool {lake.count()} rows ({sum(v != 'clean' for v in labels.values())} planted junk); "
              f"curated view {res.rows['view']} rows = {res.rows['view'] / lake.count():.3f} of the pool "
              f"({kinds}); eval set {res.eval_images} photos / {res.eval_captions} captions; "
              f"built in {built:.0f} s, evaluated in {res.seconds:.0f} s")
        t = res.table()
        cols = ["arm", "rows"] + [f"{m}" for m in METRICS]
        print("\n| " + " | ".join(cols) + " |\n|" + " --- |" * len(cols))
        for row in t.to_dict("records"):
            cells = [row["arm"], str(row["rows"])] + [f"{row[m]:.3f} ± {row[m + ' spread'] / 2:.3f}" for m in METRICS]
            print("| " + " | ".join(cells) + " |")
        print("\n(± half the spread, max - min over seeds)")
        for m in ("t2i_R@5", "i2t_R@5", "swapped_auroc"):
            d = res.difference(m)
            print(f"{m}: curated {d['view']:.3f} vs random {d['baseline']:.3f}: difference {d['difference']:+.3f}, "
                  f"largest spread {d['spread']:.3f}")


if __name__ == "__main__":
    main()
