"""Load test of ``lakecurate serve`` on a 100k-row lake, against the local server only (127.0.0.1).

20 browsing clients and 4 reviewers for 60 s. A browsing client opens a grid page (unsorted, sorted,
filtered by a reason or by an SQL condition, at a random page of the first 200), fetches its 48
thumbnails six at a time as a browser does, sometimes opens a pair, then reads for 1-3 s. A reviewer
opens a page of its own (reviewers never share rows, so the final state of every row is known),
marks 1-3 of its rows keep or drop with a reason, and pauses 0.5-1.5 s. The server is the CLI
(``lakecurate serve``, one uvicorn process) started here.

Reported: page latency (grid and pair HTML) p50/p95, thumbnail latency p95 split by the server's
``X-Cache`` header: ``hit`` (in the server's cache when asked), ``prefetch`` (the page's thumbnails
were being decoded, in one blob read, when the browser asked: it waited for that), ``miss``. Like a
browser, a client does not ask again for a thumbnail it already has (they are sent cacheable). review write latency, errors, and whether every review
write is in the lake afterwards. The baseline measured in the same run is one client alone (the
same loop with no other load): the ratios say what the other 23 clients cost.

The lake (100k rows: the 800 Flickr8k photos of ../shared at 320 px, cycled, with their captions,
curated by caption length so there are reasons to filter by) is built once into --work.

    python scripts/bench_serve.py                      # 100k rows, 20 + 4 clients, 60 s
    python scripts/bench_serve.py --rows 20000 --seconds 20
    python scripts/bench_serve.py --open 1000 1000000  # what opening a lake costs at 1k and 1M rows
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
import random
import re
import socket
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data" / "flickr8k"
PAGES = 200


def build(work: Path, rows: int) -> Path:
    import pyarrow as pa
    from PIL import Image

    from lakecurate import Lake
    from lakecurate.plant import synthetic_pairs

    uri = work / f"lake-{rows}"
    if (uri / "pairs.lance").exists():
        lake = Lake.open(uri)
        if lake.count() == rows and "keep" in lake.dataset().schema.names:
            return uri
    import shutil

    shutil.rmtree(uri, ignore_errors=True)
    caps: dict[str, list[str]] = defaultdict(list)
    with open(DATA / "captions.csv", newline="") as f:
        for r in csv.DictReader(f):
            caps[r["image"]].append(r["caption"])
    photos = []
    for name in sorted(caps):
        with Image.open(DATA / "images" / name) as im:
            im.draft("RGB", (640, 640))
            im = im.convert("RGB")
            im.thumbnail((320, 320))
            buf = io.BytesIO()
            im.save(buf, "JPEG", quality=85)
        photos.append((buf.getvalue(), caps[name]))
    lake = Lake.create(uri)
    t0 = time.perf_counter()
    chunk = 10_000
    for start in range(0, rows, chunk):
        n = min(chunk, rows - start)
        t = synthetic_pairs(start, n)
        imgs = [photos[(start + i) % len(photos)][0] for i in range(n)]
        texts = [photos[(start + i) % len(photos)][1][((start + i) // len(photos)) % 5] for i in range(n)]
        t = t.set_column(t.schema.get_field_index("image"), t.schema.field("image"), pa.array(imgs, t.schema.field("image").type))
        t = t.set_column(t.schema.get_field_index("caption"), t.schema.field("caption"), pa.array(texts, pa.string()))
        lake.append(t)
    lake.curate({"name": "load", "step": [{"filter": "caption_missing"},
                                          {"filter": "caption_length", "min_words": 8, "max_words": 100}]},
                progress=False)
    print(f"built {rows} rows in {time.perf_counter() - t0:.0f} s at {uri}", flush=True)
    return uri


class Recorder:
    def __init__(self) -> None:
        self.times: dict[str, list[float]] = defaultdict(list)
        self.server: dict[str, list[float]] = defaultdict(list)
        self.errors: list[str] = []

    def add(self, kind: str, seconds: float, headers: Any = None) -> None:
        self.times[kind].append(seconds)
        timing = (headers or {}).get("server-timing", "")
        if "dur=" in timing:
            self.server[kind].append(float(timing.split("dur=")[1]) / 1000)

    def error(self, what: str) -> None:
        self.errors.append(what)

    def summary(self) -> dict[str, dict[str, float]]:
        out = {}
        for k, v in sorted(self.times.items()):
            a = np.array(v) * 1000
            srv = np.array(self.server.get(k) or [np.nan]) * 1000
            out[k] = {"n": len(a), "p50_ms": round(float(np.percentile(a, 50)), 1),
                      "p95_ms": round(float(np.percentile(a, 95)), 1), "max_ms": round(float(a.max()), 1),
                      "server_p95_ms": round(float(np.nanpercentile(srv, 95)), 1) if np.isfinite(srv).any() else None}
        return out


VIEWS = [{}, {"sort": "caption"}, {"sort": "id", "desc": "1"}, {"reason": "drop_reason:caption_length"},
         {"where": "caption LIKE '%dog%'"}, {"flag": "ok"}]
CARD = re.compile(r'<figure class="card[^"]*" data-id="([^"]+)" data-addr="(\d+)"')


async def get(session: Any, rec: Recorder, kind: str, url: str, params: dict | None = None,
              slots: asyncio.Semaphore | None = None) -> str | None:
    if slots is not None:  # a browser's six connections: the time waiting for one is not the request's
        async with slots:
            return await get(session, rec, kind, url, params)
    t0 = time.perf_counter()
    try:
        async with session.get(url, params=params) as r:
            body = await r.read()
            rec.add(kind if kind != "thumb" else "thumb_" + r.headers.get("x-cache", "?"), time.perf_counter() - t0, r.headers)
            if r.status != 200:
                rec.error(f"{url} {params}: {r.status}")
                return None
            return body.decode("utf-8", "replace") if kind != "thumb" else ""
    except Exception as exc:  # noqa: BLE001 - every failure counts as an error
        rec.error(f"{url}: {exc!r}")
        return None


async def browse(base: str, rec: Recorder, stop: float, seed: int, think: tuple[float, float]) -> None:
    import aiohttp

    rnd = random.Random(seed)
    have: set[str] = set()  # the browser's cache: thumbnails are sent with Cache-Control max-age=3600
    conn = aiohttp.TCPConnector(limit=6)  # a browser's six connections to one host
    slots = asyncio.Semaphore(6)
    async with aiohttp.ClientSession(base, connector=conn) as s:
        while time.time() < stop:
            params = {**rnd.choice(VIEWS), "page": str(rnd.randrange(PAGES))}
            html = await get(s, rec, "page", "/", params)
            if html is None:
                continue
            addrs = [a for _, a in CARD.findall(html)]
            await asyncio.gather(*(get(s, rec, "thumb", f"/thumb/{a}", slots=slots) for a in addrs if a not in have))
            have.update(addrs)
            if addrs and rnd.random() < 0.3:
                await get(s, rec, "pair", f"/pair/{rnd.choice(addrs)}")
            await asyncio.sleep(rnd.uniform(*think))


async def reviewer(base: str, rec: Recorder, stop: float, k: int, n: int, marks: dict[str, tuple]) -> None:
    import aiohttp

    rnd = random.Random(1000 + k)
    name = f"reviewer{k}"
    async with aiohttp.ClientSession(base) as s:
        token = re.search(r'name="csrf-token" content="(\w+)"', await get(s, rec, "page", "/")).group(1)
        while time.time() < stop:
            page = rnd.randrange(PAGES // n) * n + k  # reviewer k's pages only: the final state is known
            html = await get(s, rec, "page", "/", {"page": str(page)})
            if html is None:
                continue
            pick = rnd.sample([i for i, _ in CARD.findall(html)], rnd.randint(1, 3))
            body = {"ids": pick, "by": name, "verdict": rnd.choice(["keep", "drop"])}
            if body["verdict"] == "drop":
                body["reason"] = rnd.choice(["watermark", "wrong caption", "blurry"])
            t0 = time.perf_counter()
            try:
                async with s.post("/api/review", json=body, headers={"X-CSRF-Token": token}) as w:
                    got = await w.json()
                    rec.add("review", time.perf_counter() - t0, w.headers)
                    if w.status != 200 or got.get("rows") != len(pick):
                        rec.error(f"review: {w.status} {got}")
                        continue
            except Exception as exc:  # noqa: BLE001
                rec.error(f"review: {exc!r}")
                continue
            for i in pick:
                marks[i] = (body["verdict"], body.get("reason"), name)
            await asyncio.sleep(rnd.uniform(0.5, 1.5))


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    import os

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_load(built: Path, browsers: int, reviewers: int, seconds: float, think: tuple[float, float] = (1, 3)) -> dict:
    import shutil

    uri = built.with_name(built.name + "-run")  # every run starts from the lake as built (no earlier reviews)
    shutil.rmtree(uri, ignore_errors=True)
    shutil.copytree(built, uri)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "lakecurate.cli", "serve", str(uri), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        import httpx

        deadline = time.time() + 60
        while True:
            try:
                if httpx.get(base + "/", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline or proc.poll() is not None:
                raise SystemExit(f"the server did not start: {proc.stdout.read() if proc.poll() is not None else ''}")
            time.sleep(0.2)
        rec = Recorder()
        cpu0, mine0 = cpu_seconds(proc.pid), time.process_time()
        marks: dict[str, tuple] = {}
        stop = time.time() + seconds

        async def everyone() -> None:
            await asyncio.gather(*(browse(base, rec, stop, k, think) for k in range(browsers)),
                                 *(reviewer(base, rec, stop, k, reviewers, marks) for k in range(reviewers)))

        asyncio.run(everyone())
        cpu = {"server": round(cpu_seconds(proc.pid) - cpu0, 1), "clients": round(time.process_time() - mine0, 1)}
    finally:
        proc.terminate()
        proc.wait(10)
    missing = 0
    if marks:
        from lakecurate import Lake

        got = {r["id"]: r for r in Lake.open(uri).dataset().to_table(
            columns=["id", "review_verdict", "review_reason", "review_by"],
            filter="review_verdict IS NOT NULL").to_pylist()}
        for i, (verdict, reason, by) in marks.items():
            r = got.get(i)
            if r is None or (r["review_verdict"], r["review_reason"], r["review_by"]) != (verdict, reason, by):
                missing += 1
    return {"clients": browsers, "reviewers": reviewers, "seconds": seconds, "latency": rec.summary(),
            "errors": len(rec.errors), "first_errors": rec.errors[:5], "rows_reviewed": len(marks), "cpu_seconds": cpu,
            "reviews_missing": missing}


def synthetic_lake(work: Path, rows: int) -> Path:
    """``rows`` synthetic pairs (one tiny JPEG each, every 17th caption null), curated by one SQL step
    (no signals to compute), so views by reason exist at any size."""
    from lakecurate import Lake
    from lakecurate.plant import synthetic_pairs

    uri = work / f"synthetic-{rows}"
    if (uri / "pairs.lance").exists() and Lake.open(uri).count() == rows and "keep" in Lake.open(uri).dataset().schema.names:
        return uri
    import shutil

    shutil.rmtree(uri, ignore_errors=True)
    lake = Lake.create(uri)
    for start in range(0, rows, 100_000):
        lake.append(synthetic_pairs(start, min(100_000, rows - start)))
    lake.curate({"name": "open", "step": [{"filter": "sql", "where": "caption IS NOT NULL", "reason": "no_caption"}]},
                progress=False)
    return uri


def open_times(uri: Path, repeats: int = 5) -> dict[str, float]:
    """Milliseconds (median of ``repeats``, each on a fresh app: nothing cached) for what opening a
    lake in the browser costs: the first grid page, the next page, a view by reason, a sorted view,
    a pair, a thumbnail. In process (Starlette's TestClient), the same way at every size."""
    from starlette.testclient import TestClient

    from lakecurate import Lake
    from lakecurate.serve import create_app

    lake = Lake.open(uri)
    steps = [("first page", "/"), ("next page", "/?page=1"), ("by reason", "/?reason=drop_reason:no_caption"),
             ("sorted, first", "/?sort=caption"), ("sorted, next", "/?sort=caption&page=3"), ("pair", "/pair/5"),
             ("thumbnail", "/thumb/7?px=90")]
    out: dict[str, list[float]] = defaultdict(list)
    for _ in range(repeats):
        c = TestClient(create_app(lake), base_url="http://127.0.0.1:8765")
        for name, path in steps:
            t0 = time.perf_counter()
            r = c.get(path)
            out[name].append((time.perf_counter() - t0) * 1000)
            assert r.status_code == 200, (path, r.status_code, r.text[:300])
    return {k: round(float(np.median(v)), 1) for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--reviewers", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--think", type=float, nargs=2, default=(1.0, 3.0), metavar=("MIN", "MAX"),
                    help="seconds a browsing client looks at a page before the next (uniform)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/lakecurate-serve-bench"))
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--open", type=int, nargs=2, metavar=("SMALL", "LARGE"),
                    help="instead of the load test: what opening a lake costs at two sizes (e.g. 1000 1000000)")
    a = ap.parse_args()
    if a.open:
        a.work.mkdir(parents=True, exist_ok=True)
        small, large = (open_times(synthetic_lake(a.work, n)) for n in a.open)
        if a.json:
            print(json.dumps({"small": small, "large": large}, indent=1))
            return
        print(f"{'ms (median of 5, fresh app)':<28}{a.open[0]:>10}{a.open[1]:>10}{'ratio':>7}")
        for k in small:
            print(f"{k:<28}{small[k]:>10}{large[k]:>10}{large[k] / small[k]:>7.2f}")
        return
    if not (DATA / "captions.csv").is_file():
        raise SystemExit(f"needs ../shared/data/flickr8k (not found at {DATA})")
    a.work.mkdir(parents=True, exist_ok=True)
    uri = build(a.work, a.rows)
    think = tuple(a.think)
    base = run_load(uri, 1, 0, min(a.seconds, 20), think)
    load = run_load(uri, a.clients, a.reviewers, a.seconds, think)
    out = {"rows": a.rows, "baseline_one_client": base, "load": load}
    ratio = {k: round(load["latency"][k]["p95_ms"] / base["latency"][k]["p95_ms"], 2)
             for k in load["latency"] if k in base["latency"]}
    out["p95_ratio_load_vs_one_client"] = ratio
    if a.json:
        print(json.dumps(out, indent=1))
        return
    print(f"{a.rows} rows; baseline: 1 client; load: {a.clients} browsing + {a.reviewers} reviewers, {a.seconds:.0f} s, "
          f"think {think[0]:g}-{think[1]:g} s")
    print(f"{'request':<15}{'n':>7}{'p50 ms':>9}{'p95 ms':>9}{'max ms':>9}{'server p95':>12}{'1-client p95':>14}{'ratio':>7}")
    for k, v in load["latency"].items():
        b = base["latency"].get(k, {})
        print(f"{k:<15}{v['n']:>7}{v['p50_ms']:>9}{v['p95_ms']:>9}{v['max_ms']:>9}{str(v['server_p95_ms']):>12}"
              f"{b.get('p95_ms', '-'):>14}{ratio.get(k, '-'):>7}")
    print(f"errors: {load['errors']} {load['first_errors']}; rows reviewed: {load['rows_reviewed']}, "
          f"review writes missing afterwards: {load['reviews_missing']}")
    print(f"CPU seconds in {a.seconds:.0f} s on {__import__('os').cpu_count()} cores: server {load['cpu_seconds']['server']}, "
          f"load generator {load['cpu_seconds']['clients']}")


if __name__ == "__main__":
    main()
