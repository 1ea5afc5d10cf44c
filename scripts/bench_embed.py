"""End-to-end `embed` throughput versus the bare model, and the bytes it writes.

In one run, on N real photos from ../shared/data/flickr8k ingested into a fresh lake:

1. baseline: the bare model forward (image + text towers) on tensors decoded and tokenized
   beforehand, batch by batch as embed runs it;
2. `lake.embed(...)`: reading blobs, decoding in worker processes, the model, and the commits;
   reported as images/s and as a ratio to the baseline (goal >= 0.9);
3. bytes: what adding the columns wrote, versus the new columns' own size and versus rewriting
   the whole table with the columns (what a non-zero-copy design would write).

Timing uses ViT-B-32 with random weights (real CLIP weights cannot be downloaded here; the cost is
the same).

    python scripts/bench_embed.py [--n 512] [--model ViT-B-32 --pretrained random] [--precision fp32]

``--offline-formats``: instead, the offline encoder's end-to-end embed on the same N photos in one
run, twice each, alternating how its towers run: PyTorch with the image tower in the default
contiguous memory format (the baseline, as before issue 20), PyTorch in channels_last
(``lakecurate.offline.CHANNELS_LAST``) and ONNX Runtime (``lakecurate.offline.BACKEND = "onnx"``,
the default now). Prints rows/s of each, the ratios to the baseline, and the lowest cosine between
each one's image and text embeddings and the baseline's. The ONNX export (once per machine, cached)
is done before the timed runs and its time printed apart.

    python scripts/bench_embed.py --offline-formats --n 800
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import lance
import numpy as np
import pyarrow as pa
import torch

from lakecurate import Lake
from lakecurate.embed import decode_image, default_workers
from lakecurate.encoders import Encoder, column_names, resolve


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "flickr8k"))
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--pretrained", default="random")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=default_workers())
    ap.add_argument("--offline-formats", action="store_true",
                    help="The offline encoder in PyTorch (contiguous, channels_last) and ONNX Runtime, end to end, in one run.")
    args = ap.parse_args()
    if args.offline_formats:
        return offline_formats(args)
    data = Path(args.data)
    if not (data / "images").is_dir():
        sys.exit(f"no data at {data}: pass --data")
    with tempfile.TemporaryDirectory() as tmp:
        lake = Lake.create(Path(tmp) / "lake")
        manifest = Path(tmp) / "m.csv"
        names = sorted(p.name for p in (data / "images").glob("*.jpg"))
        names = (names * (args.n // len(names) + 1))[: args.n]
        manifest.write_text("uid,image,caption\n" + "".join(
            f"{i},{n},a photo number {i}\n" for i, n in enumerate(names)))
        lake.ingest(manifest, image_dir=str(data / "images"), key_col="uid", progress=False)
        spec = resolve(args.model, args.pretrained)
        enc = Encoder(spec, device=args.device, precision=args.precision)
        print(f"{args.n} photos, {spec.arch} ({args.pretrained}), {args.precision} on {enc.device}, "
              f"batch {args.batch_size}, {torch.get_num_threads()} torch threads, {args.workers} decode workers")

        # 1. bare model on pre-decoded tensors
        preprocess, tokenize = enc.transforms()
        df = lake.to_pandas(["image", "caption"])
        pixels = torch.from_numpy(np.stack([preprocess(decode_image(b)[0]) for b in df["image"]]))
        tokens = tokenize(df["caption"].tolist())
        enc.encode_image_tensors(pixels[:8])  # warm-up
        t0 = time.perf_counter()
        for s in range(0, args.n, args.batch_size):
            enc.encode_image_tensors(pixels[s : s + args.batch_size])
            tok = {k: v[s : s + args.batch_size] for k, v in tokens.items()} if isinstance(tokens, dict) else tokens[s : s + args.batch_size]
            enc.encode_text_tokens(tok)
        bare = time.perf_counter() - t0
        print(f"bare model forward (image+text)   {args.n / bare:7.1f} img/s")

        # 2. end to end
        table_dir = Path(lake.table_uri)
        before = dir_bytes(table_dir / "data")
        t0 = time.perf_counter()
        rep = lake.embed(args.model, pretrained=args.pretrained, precision=args.precision, device=args.device,
                         batch_size=args.batch_size, workers=args.workers, progress=False)
        e2e = time.perf_counter() - t0
        assert rep.rows_embedded == args.n
        steady = e2e - rep.model_load_seconds  # workers start while the model loads
        print(f"lakecurate embed, end to end      {args.n / e2e:7.1f} img/s   ratio to bare {bare / e2e:5.2f} "
              f"(includes {rep.model_load_seconds:.1f}s loading the model)")
        print(f"lakecurate embed, after the load  {args.n / steady:7.1f} img/s   ratio to bare {bare / steady:5.2f}")

        # 3. bytes
        written = dir_bytes(table_dir / "data") - before
        cols = list(column_names(spec.prefix).values())
        own = lake.dataset().to_table(columns=cols).nbytes
        t0 = time.perf_counter()
        full = lake.dataset().to_table()  # blob descriptors only: materialise the bytes like a rewrite must
        images = pa.array(lake.to_pandas(["image"])["image"].tolist(), pa.large_binary())
        full = full.set_column(full.schema.get_field_index("image"), pa.field("image", pa.large_binary()), images)
        lance.write_dataset(full, str(Path(tmp) / "rewrite.lance"))
        rewrite_s = time.perf_counter() - t0
        rewrite = dir_bytes(Path(tmp) / "rewrite.lance" / "data")
        print(f"bytes written by embed            {written / 1e6:7.2f} MB   ratio to the columns' own size "
              f"{written / own:5.2f} ({own / 1e6:.2f} MB)")
        print(f"full table rewrite                {rewrite / 1e6:7.2f} MB   {rewrite / written:6.0f}x the bytes, {rewrite_s:.1f}s")


# (name, offline.BACKEND, offline.CHANNELS_LAST); run in this order, then again
OFFLINE_RUNS = (("contiguous", "torch", False), ("channelslast", "torch", True), ("onnx", "onnx", True))


def offline_formats(args: argparse.Namespace) -> None:
    from lakecurate import offline

    data = Path(args.data)
    backend, channels_last = offline.BACKEND, offline.CHANNELS_LAST
    with tempfile.TemporaryDirectory() as tmp:
        lake = Lake.create(Path(tmp) / "lake")
        photos = sorted((data / "images").glob("*.jpg"))[: args.n]
        src = Path(tmp) / "src"
        src.mkdir()
        for p in photos:
            (src / p.name).write_bytes(p.read_bytes())
            (src / f"{p.stem}.txt").write_text(f"a photo named {p.stem}")
        lake.ingest(src, progress=False)
        print(f"{len(photos)} photos, offline encoder, batch {args.batch_size}, {torch.get_num_threads()} torch threads, "
              f"{args.workers} decode workers")
        why = offline.onnx_unavailable()
        if why:
            sys.exit(f"cannot measure the ONNX Runtime path: {why}")
        cached = all(p.exists() for p in offline.onnx_cache_paths().values())
        t0 = time.perf_counter()
        offline.export_onnx()
        print(f"ONNX towers {'already in the cache' if cached else f'exported in {time.perf_counter() - t0:.1f} s'} "
              f"({offline.onnx_cache_dir()}; not in the timings below)")
        rates = {}
        try:
            for run in (1, 2):
                for base, offline.BACKEND, offline.CHANNELS_LAST in OFFLINE_RUNS:
                    name = base if run == 1 else f"{base}2"
                    t0 = time.perf_counter()
                    rep = lake.embed("offline", name=name, batch_size=args.batch_size, workers=args.workers,
                                     progress=False)
                    seconds = time.perf_counter() - t0
                    assert rep.rows_embedded == len(photos)
                    rates[name] = len(photos) / seconds
                    print(f"{name:14s} {rates[name]:6.1f} rows/s end to end ({rep.model_load_seconds:.1f} s model load included)")
        finally:
            offline.BACKEND, offline.CHANNELS_LAST = backend, channels_last
        best = {base: max(rates[base], rates[f"{base}2"]) for base, _, _ in OFFLINE_RUNS}
        for base, _, _ in OFFLINE_RUNS[1:]:
            print(f"{base} / contiguous (the better of two runs each): {best[base] / best['contiguous']:.2f}x")
        ref = {kind: np.stack(lake.to_pandas([f"contiguous_{kind}"])[f"contiguous_{kind}"]).astype(np.float32)
               for kind in ("image", "text")}
        for base, _, _ in OFFLINE_RUNS[1:]:
            for kind in ("image", "text"):
                b = np.stack(lake.to_pandas([f"{base}_{kind}"])[f"{base}_{kind}"]).astype(np.float32)
                a = ref[kind]
                cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
                print(f"{kind} embeddings: lowest cosine between {base} and contiguous {cos.min():.6f}")


if __name__ == "__main__":
    main()
