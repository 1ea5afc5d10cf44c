"""End-to-end `embed` throughput versus the bare model, and the bytes it writes.

In one run, on N real photos from ../shared/data/flickr8k ingested into a fresh lake:

1. baseline: the bare model forward (image + text towers) on tensors decoded and tokenized
   beforehand, batch by batch as embed runs it;
2. `lake.embed(...)`: reading blobs, decoding in worker processes, the model, and the commits;
   reported as images/s and as a ratio to the baseline (goal >= 0.9);
3. bytes: what adding the columns wrote, versus the new columns' own size and versus rewriting
   the whole table with the columns (what a non-zero-copy design would write).

Before the model runs, the readers alone (decode + preprocess in the decode processes, as embed
runs them) are timed: the most images/s the CPU side can feed. Both model runs keep one batch on
the device while the next is prepared, as the embed stage does; embed's steady pace (the batches
between the first and the last tenth, past the readers' start and before they run dry) is printed
beside its whole-call rate. Timing uses random weights (real
CLIP weights cannot be downloaded here; the cost is the same); each model in ``--models`` in turn,
on the same lake.

    python scripts/bench_embed.py [--n 512] [--models ViT-B-32 ...] [--pretrained random] [--precision fp32]
    python scripts/bench_embed.py --device cuda --models ViT-B-32 ViT-L-14 --precision fp16 --batch-size 256 --n 16384

The bare runs use the first ``--bare-n`` rows (8,192), held decoded (~150 KB each at 224 px).
``--decode-probe``: Pillow on one core against ``Encoder.decode_jpegs`` on ``--device`` (what
``embed --decode device`` runs: torchvision's ``decode_jpeg``, nvJPEG on a GPU, with the resize and
crop there), and how far their pixels are apart. ``--decode device``: the end-to-end run (2.) with
``embed --decode device`` (whole JPEGs decoded on the model's device, the rest by the readers);
the probe also times the model's tokenizer on a batch of the human captions (the model's process
does that unless ``--tokenize readers``). ``--tokenize model readers ...``: one end-to-end run each,
in turn (``auto``, the default: the readers only with ``--device cuda --decode device``). The
captions are the photos' human captions (``captions.csv``).

    python scripts/bench_embed.py --device cuda --models ViT-B-32 --precision fp16 --batch-size 256 --n 16384 --decode device

``--offline-formats``: instead, the offline encoder's end-to-end embed on the same N photos in one
run, twice each, alternating how its towers run: PyTorch with the image tower in the default
contiguous memory format (the baseline, as before issue 20), PyTorch in channels_last
(``lakecurate.offline.CHANNELS_LAST``) and ONNX Runtime (``lakecurate.offline.BACKEND = "onnx"``,
the default now). Prints rows/s of each, the ratios to the baseline, and the lowest cosine between
each one's image and text embeddings and the baseline's. The ONNX export (once per machine, cached)
is done before the timed runs and its time printed apart.

    python scripts/bench_embed.py --offline-formats --n 800

``--ray-gpu-actors``: ``embed --engine ray`` on a local Ray whose actors each reserve a GPU (the
machine's with ``--device cuda``; else one logical GPU, the model on the CPU): reading inline
(``--workers 0``) against reader processes of the actor's own, alternating, twice each.

    python scripts/bench_embed.py --ray-gpu-actors --models tiny-random --n 1600 --batch-size 128
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import lance
import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from lakecurate import Lake, runner
from lakecurate.embed import DECODES, TOKENIZES, default_workers, embed_stage
from lakecurate.encoders import Encoder, EncoderSpec, column_names, resolve, resolve_device


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "flickr8k"))
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--models", nargs="+", default=["ViT-B-32"], help="open_clip architectures, timed in turn")
    ap.add_argument("--pretrained", default="random")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=None, help="decode processes (default: what embed picks)")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--bare-n", type=int, default=8192, help="rows the bare model runs on (held decoded in memory)")
    ap.add_argument("--no-bytes", action="store_true", help="skip the bytes-written comparison")
    ap.add_argument("--decode", choices=DECODES, default="cpu",
                    help="embed's --decode for the end-to-end run (the readers-alone and bare runs decode on the CPU)")
    ap.add_argument("--tokenize", nargs="+", choices=TOKENIZES, default=["auto"],
                    help="where the end-to-end runs tokenize the captions; several: one run each, in turn")
    ap.add_argument("--decode-probe", action="store_true",
                    help="Decode + preprocess rates only: Pillow on one core against Encoder.decode_jpegs on --device.")
    ap.add_argument("--offline-formats", action="store_true",
                    help="The offline encoder in PyTorch (contiguous, channels_last) and ONNX Runtime, end to end, in one run.")
    ap.add_argument("--ray-gpu-actors", action="store_true",
                    help="embed --engine ray: an actor a GPU reading inline against one with readers of its own.")
    ap.add_argument("--ray-cpus", type=int, default=None,
                    help="with --ray-gpu-actors: the CPUs the local Ray counts (default: the cores)")
    args = ap.parse_args()
    if args.ray_gpu_actors:
        return ray_gpu_actors(args)
    if args.offline_formats:
        return offline_formats(args)
    if args.decode_probe:
        return decode_probe(args)
    data = Path(args.data)
    if not (data / "images").is_dir():
        sys.exit(f"no data at {data}: pass --data")
    device = resolve_device(args.device)
    bare_n = min(args.n, args.bare_n)
    workers = args.workers if args.workers is not None else default_workers(beside_gpu=device.startswith("cuda"))
    results: dict = {"n": args.n, "device": device, "precision": args.precision, "batch_size": args.batch_size,
                     "workers": workers, "cpus": os.cpu_count(), "models": {}}
    if device.startswith("cuda"):
        results["gpu"] = torch.cuda.get_device_name(0)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        lake, results["distinct_photos"] = photo_lake(data, args.n, Path(tmp))
        results["ingest_s"] = time.perf_counter() - t0
        print(f"{args.n} photos ({results['distinct_photos']} distinct) ingested in {results['ingest_s']:.1f} s; {device}"
              f"{' (' + results['gpu'] + ')' if 'gpu' in results else ''}, {args.precision}, batch {args.batch_size}, "
              f"{workers} decode workers, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, "
              f"end to end with --decode {args.decode}", flush=True)
        addrs = lake.dataset().to_table(columns=[], with_row_address=True).column("_rowaddr").to_pylist()
        captions = lake.to_pandas(["caption"])["caption"].tolist()
        decoded: dict = {}
        for i, model in enumerate(args.models):
            spec = resolve(model, args.pretrained, name=f"bench{i}")
            stage = embed_stage(spec, device=device, precision=args.precision, batch_size=args.batch_size)
            r = results["models"][model] = {}
            # 0. the readers alone: decode + preprocess in `workers` processes, as embed runs them
            key = repr(stage.image.transform)
            if key not in decoded:
                t0, first, parts = time.perf_counter(), None, []
                for rows in runner.map_images(lake, stage, addrs, workers=workers, progress=False):
                    if sum(len(p) for p in parts) < bare_n:  # the bare runs need only these
                        parts.append(rows.images["pixels"])
                    first = first or (time.perf_counter(), rows.num_rows)
                t1 = time.perf_counter()
                decoded[key] = np.concatenate(parts)[:bare_n]
                r["readers_img_s"] = (args.n - first[1]) / max(t1 - first[0], 1e-9)
                print(f"[{model}] readers alone (decode + preprocess, after the first batch) "
                      f"{r['readers_img_s']:8.1f} img/s ({first[0] - t0:.1f} s to the first batch)", flush=True)
            pixels = decoded[key]
            assert len(pixels) == bare_n, "every photo decodes"

            # 1. bare model on pre-decoded tensors, one batch ahead as embed runs it
            t0 = time.perf_counter()
            enc = Encoder(spec, device=device, precision=args.precision)
            r["model_load_s"] = time.perf_counter() - t0
            _, tokenize = enc.transforms()
            tokens = tokenize(captions[:bare_n])

            def bare(enc: Encoder, limit: int | None = None) -> list:
                out, held = [], None
                for s in range(0, limit or bare_n, args.batch_size):
                    tok = ({k: v[s : s + args.batch_size] for k, v in tokens.items()} if isinstance(tokens, dict)
                           else tokens[s : s + args.batch_size])
                    now = (enc.launch_image_tensors(pixels[s : s + args.batch_size]), enc.launch_text_tokens(tok))
                    if held is not None:
                        out.append(held[0].result())
                        held[1].result()
                    held = now
                out.append(held[0].result())
                held[1].result()
                return out

            bare(enc, 3 * args.batch_size)  # warm-up
            t0 = time.perf_counter()
            ref = bare(enc)
            r["bare_img_s"] = bare_n / (time.perf_counter() - t0)
            print(f"[{model}] bare model forward (image+text)  {r['bare_img_s']:8.1f} img/s", flush=True)
            del enc
            if device.startswith("cuda"):
                torch.cuda.empty_cache()

            # 2. end to end, once for each way of tokenizing asked for
            base = results["models"].pop(model) if len(args.tokenize) > 1 else r
            for j, tok in enumerate(args.tokenize):
                label = model if len(args.tokenize) == 1 else f"{model} tokenize={tok}"
                if args.tokenize.count(tok) > 1:  # the same way again (alternating runs): numbered
                    label += f" ({args.tokenize[: j + 1].count(tok)})"
                r = results["models"][label] = {**base}
                spec = resolve(model, args.pretrained, name=f"bench{i}t{j}") if j else spec
                before = dir_bytes(Path(lake.table_uri) / "data")
                stamps: list = []
                real_finish = runner._finish

                def timed(*a: object) -> pa.Table:  # when each batch's table is ready, in the embed's process
                    out = real_finish(*a)
                    stamps.append((time.perf_counter(), out.num_rows))
                    return out

                runner._finish = timed
                t0 = time.perf_counter()
                try:
                    rep = lake.embed(spec, precision=args.precision, device=device, batch_size=args.batch_size,
                                     workers=workers, progress=False, index_min_rows=10**9, decode=args.decode,
                                     tokenize=tok)
                finally:
                    runner._finish = real_finish
                e2e = time.perf_counter() - t0
                r["steady_img_s"] = steady_rate(stamps)
                assert rep.rows_embedded == args.n
                r["bytes_written"] = dir_bytes(Path(lake.table_uri) / "data") - before
                r["e2e_img_s"], r["e2e_model_load_s"] = args.n / e2e, rep.model_load_seconds
                r["after_load_img_s"] = args.n / (e2e - rep.model_load_seconds)
                r["ratio"], r["ratio_after_load"] = r["e2e_img_s"] / r["bare_img_s"], r["after_load_img_s"] / r["bare_img_s"]
                print(f"[{label}] lakecurate embed, end to end    {r['e2e_img_s']:8.1f} img/s   ratio to bare {r['ratio']:5.2f} "
                      f"(includes {rep.model_load_seconds:.1f} s loading the model)", flush=True)
                print(f"[{label}] lakecurate embed, after the load {r['after_load_img_s']:8.1f} img/s   ratio to bare "
                      f"{r['ratio_after_load']:5.2f}", flush=True)
                r["ratio_steady"] = r["steady_img_s"] / r["bare_img_s"]
                print(f"[{label}] lakecurate embed, steady         {r['steady_img_s']:8.1f} img/s   ratio to bare "
                      f"{r['ratio_steady']:5.2f} (batches from the first tenth's end to the last tenth's start)", flush=True)
                got = np.stack(lake.to_pandas([column_names(spec.prefix)["image"]])[column_names(spec.prefix)["image"]]
                               .iloc[: len(ref[0])]).astype(np.float32)
                want = ref[0].numpy()
                r["min_cosine_to_bare"] = float(((got * want).sum(1) / np.linalg.norm(got, axis=1)
                                                 / np.linalg.norm(want, axis=1)).min())
                print(f"[{label}] lowest cosine, stored image embedding vs the bare forward's: {r['min_cosine_to_bare']:.5f}")

        if not args.no_bytes:
            results["bytes"] = bytes_written(lake, spec, r["bytes_written"], Path(tmp))
    print()
    print(f"{'model':26s} {'readers':>9s} {'bare':>9s} {'e2e':>9s} {'ratio':>6s} {'after load':>11s} {'ratio':>6s} "
          f"{'steady':>9s} {'ratio':>6s}  img/s")
    for model, r in results["models"].items():
        print(f"{model:26s} {r.get('readers_img_s', float('nan')):9.1f} {r['bare_img_s']:9.1f} {r['e2e_img_s']:9.1f} "
              f"{r['ratio']:6.2f} {r['after_load_img_s']:11.1f} {r['ratio_after_load']:6.2f} {r['steady_img_s']:9.1f} "
              f"{r['ratio_steady']:6.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


def photo_lake(data: Path, n: int, tmp: Path) -> tuple[Lake, int]:
    """A fresh lake of ``n`` rows: the photos in turn, each with its human captions in turn (real
    text costs the tokenizer what web captions do); (the lake, distinct photos)."""
    lake = Lake.create(tmp / "lake")
    manifest = tmp / "m.csv"
    names = sorted(p.name for p in (data / "images").glob("*.jpg"))
    distinct = len(names)
    names = (names * (n // len(names) + 1))[:n]
    said: dict = {}
    if (data / "captions.csv").is_file():
        for row in pd.read_csv(data / "captions.csv").itertuples():
            said.setdefault(row.image, []).append(row.caption)
    seen: dict = {}
    texts = []
    for i, name in enumerate(names):
        k = seen[name] = seen.get(name, -1) + 1
        texts.append(said[name][k % len(said[name])] if said.get(name) else f"a photo number {i} of a dog running on the grass")
    pd.DataFrame({"uid": range(len(names)), "image": names, "caption": texts}).to_csv(manifest, index=False)
    lake.ingest(manifest, image_dir=str(data / "images"), key_col="uid", progress=False)
    return lake, distinct


def ray_gpu_actors(args: argparse.Namespace) -> None:
    """``embed --engine ray`` with an actor a GPU reading inline (``--workers 0``: as before its
    reader processes) against the same actor with readers of its own (the CPUs that go with its
    GPU, but one), alternating, twice each, on the same photos; the lowest cosine between the two
    ways' image embeddings. With ``--device cuda`` the local Ray gets the machine's GPUs; else one
    logical GPU (Ray's resource, nothing more) so that the placement is the same and the model
    runs on the CPU: there ``tiny-random`` stands for a model faster than one core decodes."""
    import ray

    from lakecurate import engines

    data = Path(args.data)
    real = args.device == "cuda"
    gpus = torch.cuda.device_count() if real else 1
    ray.init(num_cpus=args.ray_cpus or os.cpu_count(), num_gpus=gpus, include_dashboard=False, log_to_driver=False)
    cpus = engines.cpus_per_gpu()
    model = args.models[0]
    with tempfile.TemporaryDirectory() as tmp:
        lake, _ = photo_lake(data, args.n, Path(tmp))
        print(f"{args.n} photos, {model} ({args.precision}), batch {args.batch_size}, {os.cpu_count()} cores, Ray: "
              f"{args.ray_cpus or os.cpu_count()} CPUs, {gpus} "
              f"{'GPUs' if real else 'logical GPU'}: an actor a GPU with {cpus} CPUs ({cpus - 1} readers)", flush=True)
        rates: dict = {"inline": [], "readers": []}
        firsts: dict = {}
        for run in (1, 2):
            for way, workers in (("inline", 0), ("readers", None)):
                name = f"{way}{run}"
                t0 = time.perf_counter()
                rep = lake.embed(resolve(model, args.pretrained, name=name), precision=args.precision, device="auto",
                                 batch_size=args.batch_size, workers=workers, progress=False, engine="ray",
                                 index_min_rows=10**9)
                seconds = time.perf_counter() - t0
                assert rep.rows_embedded == args.n
                rates[way].append(args.n / max(seconds - rep.model_load_seconds, 1e-9))
                firsts.setdefault(way, name)
                print(f"{name:9s} {rates[way][-1]:8.1f} img/s after the model's load ({seconds:.1f} s in all, "
                      f"{rep.model_load_seconds:.1f} s loading)", flush=True)
        best = {way: max(r) for way, r in rates.items()}
        print(f"readers / inline (the better of two runs each): {best['readers'] / best['inline']:.2f}x")
        a, b = (np.stack(lake.to_pandas([f"{firsts[w]}_image"])[f"{firsts[w]}_image"]).astype(np.float32)
                for w in ("inline", "readers"))
        ok = ~np.isnan(a).any(1) & ~np.isnan(b).any(1)
        cos = (a[ok] * b[ok]).sum(1) / np.linalg.norm(a[ok], axis=1) / np.linalg.norm(b[ok], axis=1)
        print(f"image embeddings: lowest cosine between the two ways {cos.min():.6f} ({ok.sum()} rows)")
    ray.shutdown()


def steady_rate(stamps: list) -> float:
    """Rows a second between the end of the first tenth of the batches and the start of the last
    tenth: the pace once the readers have started and before the last ones run dry."""
    stamps = sorted(stamps)
    lo, hi = len(stamps) // 10, len(stamps) - 1 - len(stamps) // 10
    if hi <= lo:
        return float("nan")
    return sum(n for _, n in stamps[lo + 1 : hi + 1]) / (stamps[hi][0] - stamps[lo][0])


def bytes_written(lake: Lake, spec: EncoderSpec, written: int, tmp: Path) -> dict:
    """What embed wrote (``written``) against the new columns' own size and a rewrite of the whole table."""
    cols = list(column_names(spec.prefix).values())
    own = lake.dataset().to_table(columns=cols).nbytes
    t0 = time.perf_counter()
    full = lake.dataset().to_table()  # blob descriptors only: materialise the bytes like a rewrite must
    images = pa.array(lake.to_pandas(["image"])["image"].tolist(), pa.large_binary())
    full = full.set_column(full.schema.get_field_index("image"), pa.field("image", pa.large_binary()), images)
    lance.write_dataset(full, str(tmp / "rewrite.lance"))
    rewrite_s = time.perf_counter() - t0
    rewrite = dir_bytes(tmp / "rewrite.lance" / "data")
    print(f"bytes written by embed            {written / 1e6:7.2f} MB   ratio to the columns' own size "
          f"{written / own:5.2f} ({own / 1e6:.2f} MB)")
    print(f"full table rewrite                {rewrite / 1e6:7.2f} MB   {rewrite / written:6.0f}x the bytes, {rewrite_s:.1f}s")
    return {"written": written, "own": own, "rewrite": rewrite}


def decode_probe(args: argparse.Namespace) -> None:
    """How fast one CPU core decodes and preprocesses (what each decode process does), against
    ``Encoder.decode_jpegs`` on ``--device`` (what ``embed --decode device`` runs: nvJPEG on a GPU,
    the resize and crop there too), and how far the second's pixels are from the first's."""
    from lakecurate.images import decode_image

    device = resolve_device(args.device)
    enc = Encoder(resolve(args.models[0], args.pretrained), device=device)
    tf = enc.transforms()[0]
    blobs = [p.read_bytes() for p in sorted(Path(args.data, "images").glob("*.jpg"))]
    blobs = (blobs * (args.n // len(blobs) + 1))[: args.n]
    t0 = time.perf_counter()
    cpu = [tf.as_uint8()(decode_image(b)[0]) for b in blobs]
    cpu_rate = len(blobs) / (time.perf_counter() - t0)
    enc.decode_jpegs(blobs[: args.batch_size], tf)  # warm-up
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    got = [enc.decode_jpegs(blobs[s : s + args.batch_size], tf)[0] for s in range(0, len(blobs), args.batch_size)]
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    dev_rate = len(blobs) / (time.perf_counter() - t0)
    a = np.stack(cpu[: args.batch_size]).astype(np.int16)
    b = got[0].cpu().numpy().astype(np.int16)
    print(f"{len(blobs)} photos, {tf.size}px: Pillow on one core {cpu_rate:.1f} img/s; Encoder.decode_jpegs "
          f"(decode + resize + crop) on {device} {dev_rate:.1f} img/s ({dev_rate / cpu_rate:.1f} cores' worth); pixels "
          f"differ by {np.abs(a - b).mean():.2f} levels on average, {np.abs(a - b).max()} at most")
    # web photos come in many sizes (one resize call a size) and some are progressive JPEGs
    # (which nvJPEG may refuse: then one at a time, then Pillow): each against the same photos
    # re-encoded at their own size (baseline JPEG, quality 90)
    import io

    from PIL import Image

    rng = np.random.default_rng(0)
    some = blobs[: min(len(blobs), 4 * args.batch_size)]
    kinds, sizes = {}, set()
    photos = [decode_image(b)[0] for b in some]
    for kind in ("same", "sized", "progressive"):  # all re-encoded alike: only the size or the scan differs
        out = []
        for im in photos:
            if kind == "sized":  # every photo its own size, about its pixels: the resize calls alone differ
                f = float(rng.uniform(0.8, 1.25))
                im = im.resize((round(im.width * f), round(im.height / f)), Image.BICUBIC)
                sizes.add(im.size)
            buf = io.BytesIO()
            im.save(buf, "JPEG", quality=90, progressive=kind == "progressive")
            out.append(buf.getvalue())
        kinds[kind] = out
    try:
        import torchvision.io as tvio

        tvio.decode_jpeg([torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in kinds["progressive"][:8]],
                         device=device)
        takes = "yes"
    except RuntimeError as exc:
        takes = f"no ({str(exc).splitlines()[0][:100]})"

    def rate(jpegs: list) -> float:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for s in range(0, len(jpegs), args.batch_size):
            enc.decode_jpegs(jpegs[s : s + args.batch_size], tf)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return len(jpegs) / (time.perf_counter() - t0)

    base = rate(kinds["same"])
    for kind, label in (("sized", f"photos of {len(sizes)} sizes (the same pixels)"), ("progressive", "progressive JPEGs")):
        r = rate(kinds[kind])
        print(f"decode_jpegs on {len(some)} {label}: {r:.1f} img/s, {r / base:.2f}x the same photos "
              f"re-encoded at their size ({base:.1f} img/s){'; torchvision decodes progressive JPEGs on ' + device + ': ' + takes if kind == 'progressive' else ''}")
    # what --tokenize readers takes out of the model's process: a batch of human captions
    if (Path(args.data) / "captions.csv").is_file():
        texts = pd.read_csv(Path(args.data) / "captions.csv")["caption"].tolist()
        tokenize = enc.transforms()[1]
        times = []
        for s in range(0, min(len(texts), 8 * args.batch_size), args.batch_size):
            t0 = time.perf_counter()
            tokenize(texts[s : s + args.batch_size])
            times.append(time.perf_counter() - t0)
        print(f"{args.models[0]}'s tokenizer on {args.batch_size} human captions: {1000 * np.median(times):.1f} ms a "
              f"batch (median of {len(times)}; the model's process does this unless --tokenize readers), "
              f"decode_jpegs {1000 * args.batch_size / dev_rate:.1f} ms a batch")


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
