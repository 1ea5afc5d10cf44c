"""Screenshots of ``lakecurate serve`` for the README (docs/serve-*.jpg), taken in headless Chromium.

The lake: ``sample_data/`` embedded with the offline encoder, deduplicated, curated with the
``basic`` recipe and clustered.

    python scripts/serve_screenshots.py              # writes docs/serve-grid.jpg, serve-group.jpg, ...
"""

from __future__ import annotations

import argparse
import shutil
import socket
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def build(work: Path) -> Path:
    """sample_data/ (the repository's own photos: the Flickr8k photos of ../shared may not be copied
    into the repository, screenshots included) through the demo pipeline, then clustered."""
    from lakecurate import Lake

    uri = work / "lake"
    if (uri / "pairs.lance").exists() and "concept" in Lake.open(uri).dataset().schema.names:
        return uri
    shutil.rmtree(work, ignore_errors=True)
    lake = Lake.create(uri)
    lake.ingest(ROOT / "sample_data", progress=False)
    lake.embed("offline", progress=False)
    lake.dedup(progress=False)
    lake.curate("basic", progress=False)
    lake.cluster(k=4)
    return uri


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs")
    ap.add_argument("--work", type=Path, default=Path("/tmp/lakecurate-serve-shots"))
    a = ap.parse_args()
    import uvicorn
    from playwright.sync_api import sync_playwright

    from lakecurate import Lake
    from lakecurate.serve import create_app

    lake = Lake.open(build(a.work))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(lake, port=port, labels=["watermark", "wrong caption", "nsfw"])
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=srv.run, daemon=True).start()
    while not srv.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{port}"
    group = lake.sql("SELECT dup_group, COUNT(*) AS n FROM pairs WHERE dup_group IS NOT NULL GROUP BY dup_group "
                     "ORDER BY n DESC, dup_group LIMIT 1")["dup_group"][0]
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    a.out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1280, "height": 860})

        def shot(path: str, name: str) -> None:
            page.goto(url + path)
            page.wait_for_load_state("networkidle")
            page.screenshot(path=str(a.out / f"serve-{name}.jpg"), type="jpeg", quality=80)
            print("wrote", a.out / f"serve-{name}.jpg")

        shot("/?sort=dup_group&desc=1", "grid")
        shot(f"/group?g={group}", "group")
        shot("/concept/0", "concept")
        shot("/cut#step-alignment", "cut")
        # the weakest-aligned distinct photos: the recipe's alignment cut dropped these well-captioned
        # photos; a reviewer selects three to keep them (a recipe's review step then overrides the cut)
        page.goto(url + "/?sort=offline_score&where=dup_keep")
        page.wait_for_load_state("networkidle")
        for card in page.locator("figure.card input.sel").all()[:3]:
            card.check()
        page.fill("#reviewer", "ana")
        page.screenshot(path=str(a.out / "serve-review.jpg"), type="jpeg", quality=80)
        print("wrote", a.out / "serve-review.jpg")
        browser.close()
    srv.should_exit = True


if __name__ == "__main__":
    main()
