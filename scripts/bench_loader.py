"""Training reads: the lake loader (random access, shuffled globally) against the exported copies of
the same view, measured in one run.

The view: ``--n`` pairs (default 10,400) built from the Flickr8k photos, each photo re-encoded once
at ``--side`` px (a typical training resolution) and repeated under new names with one of its five
captions, ingested into a lake; the view is every ingested row. The same view is exported as
WebDataset shards, Parquet and MDS. Then, per reader, samples/s over one epoch (``--limit`` samples),
without decoding (bytes only) and with decoding (``images.decode_image``: PIL decode to RGB):

* ``lake loader, shuffled``: ``LakeDataset(shuffle=True)`` (Lance ``read_blobs`` by row id, 64 at a time);
* ``lake loader, curated order``: ``LakeDataset(shuffle=False)`` (the same reads in stored order);
* ``webdataset``: ``webdataset.WebDataset`` over the shards, sequential;
* ``parquet, map-style``: a ``torch`` map-style dataset over the Parquet file read with pyarrow,
  in order (``sequential``) and in a shuffled order;
* ``mds``: ``streaming.StreamingDataset`` over the MDS export, in order (when mosaicml-streaming
  is installed; see the README).

All in one process (DataLoader workers multiply every reader alike); each reader's setup (planning
the view, opening the lake or the shards, reading the Parquet file) is timed with its epoch, except
StreamingDataset's (one instance serves every epoch: it refuses a second one on the same folder);
the better of two epochs is kept.

    python scripts/bench_loader.py [--n 10400] [--side 384] [--limit 0]
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def make_pairs(flickr: Path, out: Path, n: int, side: int) -> None:
    """``n`` image/caption pairs: each photo re-encoded at ``side`` px, then repeated under new names."""
    import csv

    from PIL import Image

    caps: dict[str, list[str]] = {}
    with open(flickr / "captions.csv", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            caps.setdefault(Path(row["image"]).stem, []).append(row["caption"])
    photos = sorted((flickr / "images").glob("*.jpg"))
    small = {}
    for p in photos:
        with Image.open(p) as im:
            im = im.convert("RGB")
            im.thumbnail((side, side))
            buf = io.BytesIO()
            im.save(buf, "JPEG", quality=90)
            small[p.stem] = buf.getvalue()
    out.mkdir(parents=True)
    for i in range(n):
        stem = photos[i % len(photos)].stem
        (out / f"{stem}_{i:05d}.jpg").write_bytes(small[stem])
        (out / f"{stem}_{i:05d}.txt").write_text(caps[stem][(i // len(photos)) % len(caps[stem])])


def timed(samples, limit: int, decode: bool) -> tuple[float, int]:
    from lakecurate.images import decode_image

    t0 = time.perf_counter()
    n = 0
    for data, caption in samples:
        if decode:
            im, _ = decode_image(data)
            assert im is not None
        assert isinstance(caption, str)
        n += 1
        if limit and n >= limit:
            break
    return n / (time.perf_counter() - t0), n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "flickr8k")
    ap.add_argument("--n", type=int, default=10_400)
    ap.add_argument("--side", type=int, default=384)
    ap.add_argument("--limit", type=int, default=0, help="Samples per measurement (0: the whole epoch).")
    args = ap.parse_args()

    import pyarrow.parquet as pq
    import torch
    import webdataset as wds

    from lakecurate import Lake
    from lakecurate.loader import LakeDataset

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        make_pairs(args.data, root / "src", args.n, args.side)
        lake = Lake.create(root / "lake")
        lake.ingest(root / "src", progress=False)
        wds_rep = lake.export(root / "wds", "webdataset")
        lake.export(root / "view.parquet", "parquet")
        mds = None
        try:
            from streaming import StreamingDataset

            lake.export(root / "mds", "mds")
            # one instance for every epoch: streaming refuses a second dataset on the same local folder
            mds = StreamingDataset(local=str(root / "mds"), shuffle=False, batch_size=1)
        except ImportError:
            print("mosaicml-streaming is not installed: MDS not measured (see the README)")
        built = time.perf_counter() - t0
        mb = sum(f.stat().st_size for f in (root / "src").glob("*.jpg")) / 2**20
        print(f"{lake.count()} pairs ({mb:.0f} MiB of JPEG at {args.side} px), webdataset {wds_rep.shards} shards; "
              f"built in {built:.0f} s\n")

        # every reader is a generator: its setup (planning, opening, reading the file) is timed with it
        def lake_reader(shuffle: bool):
            ds = LakeDataset(lake, shuffle=shuffle, seed=0, decode=False)
            for s in ds:
                yield s["image"], s["caption"]

        def wds_reader():
            shards = sorted(str(p) for p in (root / "wds").glob("*.tar"))
            for s in wds.WebDataset(shards, shardshuffle=False):
                yield s["jpg"], s["txt"].decode()

        class ParquetMap(torch.utils.data.Dataset):
            def __init__(self, path: Path):
                self.table = pq.read_table(path, columns=["image", "caption"])

            def __len__(self) -> int:
                return self.table.num_rows

            def __getitem__(self, i: int):
                return self.table.column("image")[i].as_py(), self.table.column("caption")[i].as_py()

        def parquet_reader(shuffle: bool):
            pm = ParquetMap(root / "view.parquet")
            order = np.random.default_rng(0).permutation(len(pm)) if shuffle else range(len(pm))
            for i in order:
                yield pm[int(i)]

        def mds_reader():
            for s in mds:
                yield s["image"], s["caption"]

        readers = [
            ("lake loader, shuffled", lambda: lake_reader(True)),
            ("lake loader, curated order", lambda: lake_reader(False)),
            ("webdataset, sequential", wds_reader),
            ("parquet map-style, sequential", lambda: parquet_reader(False)),
            ("parquet map-style, shuffled", lambda: parquet_reader(True)),
        ] + ([("mds, StreamingDataset sequential", mds_reader)] if mds is not None else [])
        results: dict[str, dict[bool, float]] = {}
        for name, make in readers:
            results[name] = {}
            for decode in (False, True):  # the better of two epochs (a noisy machine)
                results[name][decode] = max(timed(make(), args.limit, decode)[0] for _ in range(2))
        seq = [n for n in results if "sequential" in n]
        print("| reader | samples/s, bytes only | samples/s, decoded | vs the fastest sequential (bytes / decoded) |")
        print("| --- | --- | --- | --- |")
        best = {d: max(results[s][d] for s in seq) for d in (False, True)}
        for name, r in results.items():
            print(f"| {name} | {r[False]:,.0f} | {r[True]:,.0f} | {r[False] / best[False]:.2f} / {r[True] / best[True]:.2f} |")
        shuffled, ordered = results["lake loader, shuffled"][False], results["lake loader, curated order"][False]
        print(f"\nlake loader, bytes only: {1e6 / shuffled:.0f} us per sample shuffled, {1e6 / ordered:.0f} us in "
              f"stored order: random access costs {1e6 / shuffled - 1e6 / ordered:+.0f} us per sample")


if __name__ == "__main__":
    main()
