"""Does evaluate keep its evaluation set held out? Near copies of evaluation photos in the pool.

The pool and evaluation set of ``scripts/eval_curation.py`` (Flickr8k: 640 pool photos with web-like
noise, 160 evaluation photos, disjoint by photo) are built; ``lake.evaluate`` must flag no pool row
as a near copy of an evaluation image there (false flags). Then ``--copies`` edited copies of
evaluation photos (one edit each, drawn from every kind ``lakecurate.plant`` makes: easy, hard and
wild) are ingested into the pool, and the rows evaluate leaves out are counted per edit (recall).

    python scripts/eval_held_out.py --data ../shared/data/flickr8k --seeds 0,1 [--copies 60] [--cosine 0.85]
"""

from __future__ import annotations

import argparse
import io
import random
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval_curation import build, split  # noqa: E402

from lakecurate.plant import EDITS, HARD_EDITS, WILD_EDITS, edit_image, first_captions  # noqa: E402


def run(data: Path, seed: int, copies: int, cosine: float | None) -> dict[str, list[int]]:
    with tempfile.TemporaryDirectory() as tmp:
        lake, eval_set, _ = build(data, Path(tmp), 0.8, seed=seed, noise="web")
        res = lake.evaluate(eval_set=eval_set, baseline=["all"], seeds=1, steps=5, progress=False, record=False,
                            held_out_cosine=cosine)
        print(f"seed {seed}: disjoint pool of {res.pool_rows} rows: {res.near_copies} flagged as near copies "
              f"(bar {res.held_out_cosine})", flush=True)
        rng = random.Random(seed)
        captions = first_captions(data / "captions.csv")
        out = Path(tmp) / "copies"
        out.mkdir()
        kinds: dict[str, str] = {}
        for i, photo in enumerate(rng.sample(list(split(data)[1]), copies)):
            edit = rng.choice(EDITS + HARD_EDITS + WILD_EDITS)
            buf = io.BytesIO()
            edit_image(Image.open(photo).convert("RGB"), edit, rng).convert("RGB").save(buf, "JPEG", quality=90)
            (out / f"copy{i:03d}.jpg").write_bytes(buf.getvalue())
            (out / f"copy{i:03d}.txt").write_text(captions.get(photo.name, "a photo"))
            kinds[f"copy{i:03d}.jpg"] = edit
        lake.ingest(out, progress=False)
        lake.embed("offline", progress=False)
        t0 = time.perf_counter()
        res = lake.evaluate("ingest_status = 'ok'", eval_set=eval_set, baseline=["all"], seeds=1, steps=5,
                            progress=False, record=False, held_out_cosine=cosine)
        took = time.perf_counter() - t0
        keys = lake.dataset().to_table(columns=["id", "key"]).to_pandas().set_index("id")["key"]
        flagged = set(keys.loc[res.near_copy_ids])
        per: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for key, edit in kinds.items():
            per[edit][0] += key in flagged
            per[edit][1] += 1
        print(f"seed {seed}: {copies} copies of evaluation photos planted: {res.near_copies} rows left out, "
              f"{sum(k in flagged for k in kinds)} of them planted, {len(flagged - set(kinds))} other rows; "
              f"evaluate {took:.1f} s", flush=True)
        return dict(per)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared/data/flickr8k")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--copies", type=int, default=60)
    ap.add_argument("--cosine", type=float, default=None, help="evaluate's held_out_cosine (default: its own)")
    args = ap.parse_args()
    total: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for seed in (int(s) for s in args.seeds.split(",")):
        for edit, (hit, n) in run(args.data, seed, args.copies, args.cosine).items():
            total[edit][0] += hit
            total[edit][1] += n
    print("| edit | left out | planted |\n| --- | --- | --- |")
    for edit in sorted(total, key=lambda e: (-total[e][0] / total[e][1], e)):
        print(f"| {edit} | {total[edit][0]} | {total[edit][1]} |")
    found, planted = sum(v[0] for v in total.values()), sum(v[1] for v in total.values())
    print(f"| all | {found} ({found / planted:.2f}) | {planted} |")


if __name__ == "__main__":
    main()
