"""Does curation pay? Train the proxy on the curated view, on the whole pool and on random rows.

Pools are built from ../shared/data/flickr8k. The 640 photos the offline encoder's heads were
trained on make the pool; the 160 photos the heads never saw, with all 5 captions each, are the
evaluation set (disjoint by photo: no pool row derives from an evaluation photo).

``--noise`` picks the pool (several, comma-separated, run in turn):

* ``none``, ``low``, ``web``, ``high``, ``heavy``: web-like noise (``lakecurate.plant.NOISE_LEVELS``):
  mismatched captions (another photo's) 0 / 10 / 15 / 20 / 35% of the photos, junk captions (file
  names, boilerplate) 0 / 2 / 4 / 6 / 10%, and near duplicates 0 / 5 / 8 / 10 / 20% extra rows,
  drawn mostly from the largest concepts (a skewed mix): half edited copies, half the same picture
  with another of its human captions;
* ``planted``: the older pool that is 53% planted junk (25% swapped, 10% file names, 4 photos
  flooded with 60 near copies each), kept for comparison.

Each pool is ingested, embedded (offline encoder), curated with the built-in ``basic`` recipe,
clustered and rebalanced to ``--target`` of the kept rows; ``lake.evaluate`` then trains the proxy
on that view and on the baselines ``all`` (every usable row: no filtering) and ``random`` (as
many rows as the view) with the same steps x batch, over ``--seeds`` training seeds, with learning
curves and a compute sweep (``--budget``). ``--pool-seeds`` builds each pool that many times
(different noise draws), so the spread covers both.

    python scripts/eval_curation.py --noise low,web,high,heavy [--pool-seeds 3] [--seeds 3]
    python scripts/eval_curation.py --noise web --seeds 2 --budget 1 --lr 2e-3 --eval-every 10 --curves 3
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from lakecurate import Lake
from lakecurate.evaluate import METRICS
from lakecurate.plant import NOISE_LEVELS, all_captions, first_captions, plant_noisy_pool, plant_web_pool, write_eval_set

REPO = Path(__file__).resolve().parent.parent
HEADS = REPO / "lakecurate" / "weights" / "offline_heads.json"
LEVELS = ("planted", *NOISE_LEVELS)


def split(flickr: Path) -> tuple[list[Path], list[Path]]:
    """(pool photos, evaluation photos): the heads' training photos and their held-out photos."""
    held_out = set(json.loads(HEADS.read_text())["split"]["held_out_images"])
    photos = sorted((flickr / "images").glob("*.jpg"))
    pool = [p for p in photos if p.name not in held_out and p.stem not in held_out]
    evals = [p for p in photos if p.name in held_out or p.stem in held_out]
    return pool, evals


def build(flickr: Path, root: Path, target: float, seed: int = 0, noise: str = "planted") -> tuple[Lake, Path, dict[str, str]]:
    pool, evals = split(flickr)
    if noise == "planted":
        labels = plant_noisy_pool(pool, first_captions(flickr / "captions.csv"), root / "pool", seed=seed)
    else:
        labels = plant_web_pool(pool, all_captions(flickr / "captions.csv"), root / "pool", noise=noise, seed=seed)
    write_eval_set(evals, flickr / "captions.csv", root / "eval")
    lake = Lake.create(root / "lake")
    lake.ingest(root / "pool", progress=False)
    lake.embed("offline", progress=False)
    lake.curate("basic", progress=False)
    lake.cluster()
    lake.rebalance(target)
    return lake, root / "eval" / "captions.csv", labels


def run_level(args: argparse.Namespace, noise: str) -> dict:
    out: dict = {"noise": noise, "runs": []}
    for pool_seed in range(args.pool_seeds):
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            lake, eval_set, labels = build(args.data, Path(tmp), args.target, seed=pool_seed, noise=noise)
            built = time.perf_counter() - t0
            kept = lake.to_pandas(["key"], where="rebalance_keep")["key"]
            bad = {k for k, v in labels.items() if v not in ("clean",)}
            res = lake.evaluate(eval_set=eval_set, baseline=["all", "random"], seeds=args.seeds, steps=args.steps,
                                budgets=args.budget, lr=args.lr, eval_every=args.eval_every, progress=False,
                                record=False)
            out["runs"].append({"pool_seed": pool_seed, "pool": lake.count(), "usable": res.pool_rows,
                                "noisy_share_pool": len(bad) / len(labels),
                                "noisy_share_view": float(np.mean([k in bad for k in kept])) if len(kept) else 0.0,
                                "view": res.rows["view"], "built_s": built, "eval_s": res.seconds,
                                "metrics": {a: m[args.metric] for a, m in res.metrics.items() if a != "frozen encoder"},
                                "all_metrics": {a: {k: float(np.mean(m[k])) for k in METRICS} for a, m in res.metrics.items()},
                                "speedups": {b: sp["per_seed"] for b, sp in res.speedups().items()},
                                "budgets": res.budgets, "curve_steps": res.curve_steps,
                                "curves": {a: np.mean(c, 0).tolist() for a, c in res.curves.items()}})
            r = out["runs"][-1]
            print(f"  {noise} pool seed {pool_seed}: {r['pool']} rows ({r['noisy_share_pool']:.0%} noisy), view "
                  f"{r['view']} ({r['noisy_share_view']:.0%} noisy); built {built:.0f} s, evaluated {res.seconds:.0f} s",
                  flush=True)
            if args.curves:
                for arm, c in r["curves"].items():
                    m = np.asarray(c)
                    print(f"    {arm:7s} " + " ".join(f"{x:.2f}" for x in m[:: args.curves]) +
                          f"   (peak at step {r['curve_steps'][int(np.argmax(m))]})")
    return out


def summarise(level: dict, metric: str) -> None:
    runs = level["runs"]
    arms = ("view", "all", "random")
    score = {a: np.concatenate([r["metrics"][a] for r in runs]) for a in arms}
    sp = {b: np.concatenate([r["speedups"][b] for r in runs]) for b in ("all", "random")}
    n = len(score["view"])
    print(f"\n### noise {level['noise']}: {len(runs)} pools x {n // len(runs)} training seeds")
    print(f"pool {np.mean([r['pool'] for r in runs]):.0f} rows, {np.mean([r['noisy_share_pool'] for r in runs]):.0%} "
          f"noisy; curated view {np.mean([r['view'] for r in runs]):.0f} rows "
          f"({np.mean([r['view'] / r['usable'] for r in runs]):.0%} of the usable pool), "
          f"{np.mean([r['noisy_share_view'] for r in runs]):.0%} noisy\n")
    print(f"| arm | {metric} mean | min-max over {n} runs |\n| --- | --- | --- |")
    for a in arms:
        print(f"| {a} | {score[a].mean():.3f} | {score[a].min():.3f}-{score[a].max():.3f} |")
    for b in ("all", "random"):
        gap = score["view"] - score[b]
        print(f"\nvs {b}: at equal steps view - {b} = {gap.mean():+.3f} (min {gap.min():+.3f}, max {gap.max():+.3f}); "
              f"speed-up (steps to the lower final score, {b} / view): median {np.median(sp[b]):.2f}x (min {sp[b].min():.2f}, max {sp[b].max():.2f})")
    budgets = sorted(runs[0]["budgets"], key=float)
    if len(budgets) > 1:
        print("\n| compute | view | all | random | view - all | view - random |\n| --- | --- | --- | --- | --- | --- |")
        for bud in budgets:
            m = {a: np.mean([v for r in runs for v in r["budgets"][bud][a]]) for a in arms}
            print(f"| {float(bud):g}x | {m['view']:.3f} | {m['all']:.3f} | {m['random']:.3f} | "
                  f"{m['view'] - m['all']:+.3f} | {m['view'] - m['random']:+.3f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "flickr8k")
    ap.add_argument("--noise", default="web", help=f"comma-separated: {', '.join(LEVELS)}")
    ap.add_argument("--target", type=float, default=0.8)
    ap.add_argument("--pool-seeds", type=int, default=1)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--budget", default="0.25,0.5,1,2")
    ap.add_argument("--metric", default="t2i_R@5")
    ap.add_argument("--lr", type=float, default=2e-4, help="The proxy's learning rate.")
    ap.add_argument("--eval-every", type=int, help="Steps between curve points (default: steps / 20).")
    ap.add_argument("--curves", type=int, default=0, metavar="N",
                    help="Print each arm's mean learning curve, every Nth point (0: not).")
    ap.add_argument("--json", type=Path, help="Also write every number here.")
    args = ap.parse_args()
    levels = [x.strip() for x in args.noise.split(",") if x.strip()]
    unknown = [x for x in levels if x not in LEVELS]
    if unknown:
        ap.error(f"--noise {', '.join(unknown)}: choose from {', '.join(LEVELS)}")
    results = []
    for noise in levels:
        results.append(run_level(args, noise))
        summarise(results[-1], args.metric)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
