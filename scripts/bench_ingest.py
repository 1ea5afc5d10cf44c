"""Ingest throughput on real photos, and the storage choice for the image column.

Replicates ../shared/data/flickr8k (800 JPEGs) to >= 10k images and measures, in one run:

1. a floor: reading every file and hashing it in the same thread pool (no probing, no Lance);
2. `lakecurate ingest` of a folder (hard-linked copies + .txt sidecars) and of a CSV manifest,
   in images/s and as a ratio to the floor (default header verify, then --verify decode);
3. WebDataset shards: the shard reader against bare tarfile streaming, and a whole ingest;
4. the image column as a Lance blob column versus a plain large_binary column: write time,
   a caption-only scan, and reading every image back;
5. CSV manifests (--manifest-rows, 0: skip): the reader ingest uses (Python's strict csv a line at
   a time, which reports a quote not closed on its line and reads on) against Arrow's streaming
   CSV reader (the one before it, which made the rest of the file one caption), rows parsed per
   second on the same file, best of 3 alternating.

    python scripts/bench_ingest.py [--data ../shared/data/flickr8k] [--copies 16] [--manifest-rows 1000000]
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import lance
import pyarrow as pa

from lakecurate import Lake
from lakecurate.ingest import IngestOptions


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def build_sources(data: Path, work: Path, copies: int) -> tuple[Path, Path, list[Path]]:
    images = sorted((data / "images").glob("*.jpg"))
    captions: dict[str, str] = {}
    with open(data / "captions.csv", newline="") as f:
        for row in csv.DictReader(f):
            captions.setdefault(row["image"], row["caption"])
    folder = work / "folder"
    files = []
    for c in range(copies):
        d = folder / f"copy{c:02d}"
        d.mkdir(parents=True)
        for img in images:
            dst = d / img.name
            try:
                os.link(img, dst)
            except OSError:
                shutil.copyfile(img, dst)
            (d / (img.stem + ".txt")).write_text(captions.get(img.name, ""))
            files.append(dst)
    manifest = work / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["uid", "image", "caption"])
        for c in range(copies):
            for img in images:
                w.writerow([f"{c}/{img.name}", f"folder/copy{c:02d}/{img.name}", captions.get(img.name, "")])
    return folder, manifest, files


def floor(files: list[Path], workers: int) -> float:
    def read_hash(p: Path) -> int:
        with open(p, "rb") as f:
            data = f.read()
        hashlib.sha256(data).digest()
        return len(data)

    with ThreadPoolExecutor(workers) as pool:
        sec, _ = timed(lambda: sum(pool.map(read_hash, files, chunksize=64)))
    return sec


def storage(files: list[Path], work: Path) -> list[tuple[str, float, float, float]]:
    blobs = [p.read_bytes() for p in files]
    caps = pa.array([f"caption {i}" for i in range(len(blobs))])
    out = []
    for name, field in [
        ("blob", pa.field("image", pa.large_binary(), metadata={"lance-encoding:blob": "true"})),
        ("binary", pa.field("image", pa.large_binary())),
    ]:
        schema = pa.schema([pa.field("caption", pa.string()), field])
        table = pa.Table.from_arrays([caps, pa.array(blobs, pa.large_binary())], schema=schema)
        uri = str(work / f"{name}.lance")
        w, _ = timed(lambda: lance.write_dataset(table, uri, schema=schema, max_rows_per_file=32768))
        ds = lance.dataset(uri)
        scan = min(timed(lambda: ds.to_table(columns=["caption"]))[0] for _ in range(5))
        if name == "blob":
            read, _ = timed(lambda: ds.read_blobs("image", indices=list(range(len(blobs)))))
        else:
            read, _ = timed(lambda: sum(b.num_rows for b in ds.to_batches(columns=["image"])))
        out.append((name, w, scan, read))
    return out


def webdataset(files: list[Path], work: Path, opts: IngestOptions, shards: int = 4) -> None:
    """WebDataset shards (plain and gzipped) of the first 3,200 photos: the shard reader
    (``iter_webdataset``: it keeps the bytes it served last, to tell where a cut shard stopped)
    against bare ``tarfile`` streaming of the same members, then a whole ingest of the shards."""
    import gzip
    import io
    import tarfile

    from lakecurate.ingest import iter_webdataset

    files = files[:3200]
    per = -(-len(files) // shards)
    paths = []
    for k in range(shards):
        path = work / f"shard-{k:05d}.tar"
        with tarfile.open(path, "w") as t:
            for i, f in enumerate(files[k * per:(k + 1) * per]):
                t.add(f, arcname=f"{k}{i:06d}.jpg")
                info = tarfile.TarInfo(f"{k}{i:06d}.txt")
                info.size = 9
                t.addfile(info, io.BytesIO(b"a caption"))
        with open(path, "rb") as src, gzip.open(str(path) + ".gz", "wb", compresslevel=1) as dst:
            shutil.copyfileobj(src, dst)
        paths.append(path)

    def bare(shard: Path) -> int:
        with tarfile.open(shard, "r|*") as t:
            return sum(len(t.extractfile(m).read()) for m in t if m.isfile())

    n = len(files)
    print(f"\nwebdataset: {shards} shards, {n} samples (best of 3)")
    for suffix in ("", ".gz"):
        shard_paths = [Path(str(p) + suffix) for p in paths]
        base = min(timed(lambda: [bare(p) for p in shard_paths])[0] for _ in range(3))
        ours = min(timed(lambda: sum(1 for _ in iter_webdataset([str(p) for p in shard_paths])))[0] for _ in range(3))
        print(f"read .tar{suffix:<3}  tarfile {n / base:7.0f} samples/s   iter_webdataset {n / ours:7.0f} samples/s"
              f"   ratio {ours / base:4.2f}")
    lake = Lake.create(work / "lake-wds")
    sec, rep = timed(lambda: lake.ingest(str(work / "shard-*.tar"), options=opts, progress=False))
    assert rep.written == n, rep.to_dict()
    print(f"ingest webdataset (default)     {n / sec:8.0f} img/s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "flickr8k"))
    ap.add_argument("--copies", type=int, default=16)
    ap.add_argument("--workers", type=int, default=IngestOptions().workers)
    ap.add_argument("--manifest-rows", type=int, default=1_000_000, help="rows of the CSV parse section (0: skip)")
    ap.add_argument("--only-manifest", action="store_true", help="run the CSV parse section alone")
    args = ap.parse_args()
    if args.only_manifest:
        csv_parse(args.manifest_rows)
        return
    data = Path(args.data)
    if not (data / "images").is_dir():
        sys.exit(f"no data at {data}: pass --data PATH to a flickr8k folder (images/ + captions.csv)")
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        work = Path(tmp)
        folder, manifest, files = build_sources(data, work, args.copies)
        n = len(files)
        mb = sum(p.stat().st_size for p in files) / 2**20
        print(f"{n} images, {mb:.0f} MiB, {os.cpu_count()} cores, {args.workers} reader threads")
        floor(files[:2000], args.workers)  # warm the page cache the same way for every contender
        base = floor(files, args.workers)
        print(f"floor  read+sha256 only      {n / base:8.0f} img/s")
        opts = IngestOptions(workers=args.workers)
        for label, src, kw in [("folder", folder, {}), ("manifest", manifest, {"key_col": "uid"})]:
            lake = Lake.create(work / f"lake-{label}")
            sec, rep = timed(lambda: lake.ingest(src, options=opts, progress=False, **kw))
            assert rep.written == n and lake.count() == n, rep.to_dict()
            print(f"ingest {label:<8} (default)       {n / sec:8.0f} img/s   ratio to floor {base / sec:5.2f}")
            sec2, rep2 = timed(lambda: lake.ingest(src, options=opts, progress=False, **kw))
            assert rep2.written == 0
            print(f"re-ingest {label:<8} (no-op)   {n / sec2:8.0f} img/s")
        lake = Lake.create(work / "lake-decode")
        sec, _ = timed(lambda: lake.ingest(manifest, key_col="uid", progress=False,
                                           options=IngestOptions(workers=args.workers, verify="decode")))
        print(f"ingest manifest (--verify decode) {n / sec:5.0f} img/s   ratio to floor {base / sec:5.2f}")
        webdataset(files, work, opts)
        print("\nimage column storage   write s   caption scan ms   read all images s")
        for name, w, scan, read in storage(files, work):
            print(f"{name:<22} {w:7.2f}   {scan * 1000:15.1f}   {read:17.2f}")
    if args.manifest_rows:
        csv_parse(args.manifest_rows)


def csv_parse(n: int) -> None:
    """Rows/s of ingest's CSV reader against Arrow's streaming reader, one file, best of 3 alternating."""
    import pyarrow.csv as pcsv

    from lakecurate.ingest import _manifest_rows

    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        path = Path(tmp) / "m.csv"
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["image", "caption", "uid"])
            for i in range(n):
                w.writerow([f"img/{i}.jpg", f'a "quoted" caption number {i}, with a comma' if i % 10 == 0
                            else f"a caption number {i} with some words in it", f"u{i}"])

        def arrow() -> int:
            reader = pcsv.open_csv(path, read_options=pcsv.ReadOptions(block_size=1 << 22, use_threads=False),
                                   parse_options=pcsv.ParseOptions(newlines_in_values=True),
                                   convert_options=pcsv.ConvertOptions(column_types={c: pa.binary() for c in ("image", "caption", "uid")}))
            return sum(len(b.to_pylist()) for b in reader)

        best = {"arrow": float("inf"), "ingest": float("inf")}
        for _ in range(3):
            for name, fn in (("arrow", arrow), ("ingest", lambda: sum(1 for _ in _manifest_rows(str(path), {})))):
                sec, rows = timed(fn)
                assert rows == n, (name, rows)
                best[name] = min(best[name], sec)
        print(f"\nCSV manifest of {n:,} rows, rows parsed per second (best of 3): Arrow's reader "
              f"{n / best['arrow']:,.0f}, ingest's reader {n / best['ingest']:,.0f}; time ratio {best['ingest'] / best['arrow']:.2f} "
              f"({(best['ingest'] - best['arrow']) / n * 1e6:.2f} us a row more)")


if __name__ == "__main__":
    main()
