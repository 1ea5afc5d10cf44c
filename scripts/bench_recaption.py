"""Recaption throughput against baselines measured in the same run.

1. tiny-random-coca: ``lakecurate recaption`` on a lake (runner, reader processes, commits) against
   the bare decoder (``Captioner.caption``) on the same images in the same batches, preprocessed
   beforehand (so the bare figure is the model alone).
2. An OpenAI-compatible endpoint: a local chat-completions server that answers every request after
   ``--latency`` seconds; rows/s of ``recaption --mode rephrase`` at the default concurrency, against
   the ceiling concurrency / latency.

    python scripts/bench_recaption.py [--n 256] [--rows 3000] [--latency 0.05]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pyarrow as pa


def serve(latency: float) -> tuple[ThreadingHTTPServer, str]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def log_message(self, *a):
            pass

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            time.sleep(latency)
            data = json.dumps({"choices": [{"message": {"content": "a rewritten caption"}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    class Httpd(ThreadingHTTPServer):
        request_queue_size = 256

    httpd = Httpd(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}/v1"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[1].parent / "shared/data/flickr8k"))
    ap.add_argument("--n", type=int, default=256, help="images for the CoCa part")
    ap.add_argument("--rows", type=int, default=3000, help="rows for the endpoint part")
    ap.add_argument("--latency", type=float, default=0.05)
    args = ap.parse_args()

    from PIL import Image

    from lakecurate import Lake
    from lakecurate.captioners import Captioner, EndpointSpec, resolve_captioner
    from lakecurate.plant import synthetic_pairs

    photos = sorted((Path(args.data) / "images").glob("*.jpg"))[: args.n]
    if not photos:
        sys.exit(f"no photos under {args.data}")
    spec = resolve_captioner("tiny-random-coca")
    batch = 16
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "photos"
        folder.mkdir()
        for p in photos:
            (folder / p.name).write_bytes(p.read_bytes())
        lake = Lake.create(Path(tmp) / "lake")
        lake.ingest(folder, progress=False)
        tf, _ = spec.encoder_spec().build_transforms()
        px = np.stack([tf(Image.open(p).convert("RGB")) for p in photos])
        cap = Captioner(spec, "cpu")
        cap.caption(px[:2])
        t0 = time.perf_counter()
        for s in range(0, len(px), batch):
            cap.caption(px[s:s + batch])
        bare = len(px) / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        rep = lake.recaption(spec, batch_size=batch, progress=False)
        stage = rep.rows / (time.perf_counter() - t0)
        print(f"tiny-random-coca, {len(px)} Flickr8k images, batches of {batch} (2 cores):")
        print(f"  bare Captioner.caption (model only)     {bare:7.1f} rows/s")
        print(f"  lakecurate recaption (end to end)       {stage:7.1f} rows/s   ratio {stage / bare:.2f} "
              f"(model load {rep.model_load_seconds:.1f} s included)")

        httpd, url = serve(args.latency)
        try:
            lake2 = Lake.create(Path(tmp) / "lake2")
            rows = synthetic_pairs(0, args.rows)
            caps = [f"caption number {i} of a photo" for i in range(args.rows)]
            lake2.append(rows.set_column(rows.schema.get_field_index("caption"), "caption", pa.array(caps)))
            default = EndpointSpec.__dataclass_fields__["concurrency"].default
            t0 = time.perf_counter()
            rep2 = lake2.recaption(endpoint=url, api_model="bench", mode="rephrase", progress=False)
            dt = time.perf_counter() - t0
            print(f"\nendpoint (local server answering after {args.latency * 1000:.0f} ms), rephrase, {rep2.rows} rows:")
            print(f"  {rep2.rows / dt:7.1f} rows/s at the default concurrency {default} (ceiling "
                  f"{default / args.latency:.0f} rows/s); {rep2.errors} errors, {rep2.retries} retries")
        finally:
            httpd.shutdown()


if __name__ == "__main__":
    main()
