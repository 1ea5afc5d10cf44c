"""What a caption fixed in place costs the embedding: the stale fragments again, against every row.

In one run, on a lake of N pairs appended in F commits (F fragments) and embedded once:

1. K captions are updated with Lance itself (``LanceDataset.update``: Lance moves the rows it
   rewrites into a fragment of their own), which makes the embedding stale (``lakecurate status``);
2. the lake is copied; on one copy the plain ``embed`` runs (it computes the stale fragments
   again, ``graph.stale_fragments``), on the other ``embed --recompute`` (every row again: the
   baseline, and what status's fix was before);
3. both copies' embeddings are compared (the same values where both computed them), and both
   must read "current".

Printed: rows computed and seconds of each, and refresh / recompute as a ratio.

    python scripts/bench_refresh.py [--rows 4000] [--fragments 20] [--updated 1 100] [--model offline]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import lance
import numpy as np

from lakecurate import Lake, graph
from lakecurate.plant import synthetic_pairs

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "flickr8k" / "images"


def embed_state(lake: Lake) -> str:
    return next(s.state for s in graph.states(lake) if s.node.stage == "embed")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=4000)
    ap.add_argument("--fragments", type=int, default=20)
    ap.add_argument("--updated", type=int, nargs="+", default=[1, 100], help="captions updated in place (one run each)")
    ap.add_argument("--model", default="offline")
    ap.add_argument("--data", type=Path, default=SHARED, help="a folder of JPEGs: its first is every row's image")
    args = ap.parse_args()
    photo = next(iter(sorted(args.data.glob("*.jpg"))), None) if args.data.is_dir() else None
    image = photo.read_bytes() if photo else None
    with tempfile.TemporaryDirectory() as tmp:
        lake = Lake.create(Path(tmp) / "lake")
        per = args.rows // args.fragments
        for i in range(args.fragments):
            lake.append(synthetic_pairs(i * per, per, image))
        t = time.perf_counter()
        lake.embed(args.model, progress=False)
        first = time.perf_counter() - t
        prefix = next(n for n in lake.dataset().schema.names if n.endswith("_image"))[: -len("_image")]
        text = f"{prefix}_text"
        print(f"{lake.count()} rows in {len(lake.dataset().get_fragments())} fragments ({'one Flickr8k photo' if photo else 'an 8x8 JPEG'} "
              f"as every image), model {args.model}: first embed {first:.1f} s")
        for k in args.updated:
            a = Lake.open(shutil.copytree(lake.uri, Path(tmp) / f"a{k}"))
            ids = a.to_pandas(["id"], where="caption IS NOT NULL")["id"].to_numpy()
            chosen = ", ".join(f"'{i}'" for i in ids[:: max(1, len(ids) // k)][:k])
            lance.dataset(a.table_uri).update({"caption": "concat(caption, ' (fixed)')"}, where=f"id IN ({chosen})")
            assert embed_state(a) == "stale"
            b = Lake.open(shutil.copytree(a.uri, Path(tmp) / f"b{k}"))
            t = time.perf_counter()
            ra = a.embed(args.model, progress=False)
            refresh = time.perf_counter() - t
            t = time.perf_counter()
            rb = b.embed(args.model, recompute=True, progress=False)
            recompute = time.perf_counter() - t
            states = embed_state(a), embed_state(b)
            va, vb = (x.to_pandas(["id", text], where=f"{text} IS NOT NULL").set_index("id").sort_index() for x in (a, b))
            ea, eb = (np.stack(v[text].to_numpy()).astype(np.float32) for v in (va, vb))
            cos = (ea * eb).sum(1) / (np.linalg.norm(ea, axis=1) * np.linalg.norm(eb, axis=1))
            print(f"{k:>5} captions updated: plain embed {ra.rows_embedded:>6} rows ({ra.rows_refreshed} stale) in "
                  f"{refresh:6.2f} s | --recompute {rb.rows_embedded:>6} rows in {recompute:6.2f} s | "
                  f"ratio {refresh / recompute:.3f} | states {states[0]}/{states[1]} | lowest cosine {cos.min():.5f}")


if __name__ == "__main__":
    main()
