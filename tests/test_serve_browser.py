"""lakecurate serve in real headless Chromium (the system's `chromium`, driven by Playwright): a
reviewer's session from the grid to the review columns of the lake."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from lakecurate import Lake
from lakecurate import review
from tests.conftest import SAMPLE_DATA

REQUIRED = bool(os.environ.get("LAKECURATE_REQUIRE_BROWSER"))


def _need(what: str) -> None:
    if REQUIRED:
        pytest.fail(f"{what}, but LAKECURATE_REQUIRE_BROWSER is set (.ci/run installs it)")
    pytest.skip(what)


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    _need("chromium is not installed (apt-get install chromium)")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The app over an embedded, deduplicated, curated sample lake, served by uvicorn on a free port."""
    try:
        import uvicorn
    except ImportError:
        _need("uvicorn is not installed")
    from lakecurate.serve import create_app

    lake = Lake.create(tmp_path_factory.mktemp("browser") / "lake")
    lake.ingest(SAMPLE_DATA, progress=False)
    lake.embed("tiny-random", workers=0, batch_size=8, progress=False)
    lake.curate({"name": "b", "step": [{"filter": "ingest_error"}, {"filter": "caption_missing"},
                                      {"filter": "duplicate"}]}, progress=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(lake, port=port, labels=["watermark", "wrong caption"])
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    assert srv.started, "the server did not start"
    yield lake, f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def page(server):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _need("playwright is not installed (pip install playwright; it drives the system's chromium)")
    exe = chromium()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-gpu"])
        pg = browser.new_page(viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        pg.on("pageerror", lambda exc: errors.append(str(exc)))
        pg.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        pg.errors = errors
        yield pg
        browser.close()


def test_a_reviewers_session(server, page, tmp_path: Path):
    lake, url = server
    page.goto(url + "/")
    cards = page.locator("figure.card")
    assert cards.count() == min(lake.count(), 48)
    # every thumbnail decoded in the browser (served by row address)
    deadline = time.time() + 30  # (wait_for_function evaluates a string, which the app's CSP forbids)
    while not page.evaluate("Array.from(document.querySelectorAll('figure.card img')).every(i => i.complete)"):
        assert time.time() < deadline, "thumbnails did not load"
        time.sleep(0.1)
    broken = page.evaluate("Array.from(document.querySelectorAll('figure.card img')).filter(i => i.naturalWidth === 0).length")
    assert broken == 0  # rows whose bytes do not decode show the placeholder

    # filter by a reason
    page.select_option("#reason", "drop_reason:duplicate")
    page.click("#apply")
    page.wait_for_load_state()
    n_dup = lake.count("drop_reason = 'duplicate'")
    assert n_dup > 0 and page.locator("figure.card").count() == n_dup
    assert page.locator(".badge.drop").first.inner_text() == "duplicate"

    # open a duplicate group from a card
    page.locator("a.badge.dup").first.click()
    page.wait_for_load_state()
    assert "duplicate group" in page.locator("h1").inner_text()
    members = page.locator("figure.card")
    assert members.count() >= 2
    assert "kept in group" in members.first.inner_text()  # the kept member first

    # search by text
    page.goto(url + "/")
    page.fill("#search-text", "a photo of a dog")
    page.press("#search-text", "Enter")
    page.wait_for_load_state()
    assert "nearest to" in page.locator("h1").inner_text()
    want = lake.search("a photo of a dog", k=48, columns=["id"])["id"].tolist()
    shown = page.eval_on_selector_all("figure.card", "els => els.map(e => e.dataset.id)")
    assert shown == want

    # mark three rows dropped, with a reason and a name
    page.goto(url + "/?sort=id")
    ids = page.eval_on_selector_all("figure.card", "els => els.slice(0, 3).map(e => e.dataset.id)")
    for i in ids:
        page.check(f'figure.card[data-id="{i}"] input.sel')
    assert page.inner_text("#selected-count") == "3 selected"
    page.fill("#reviewer", "ana")
    page.fill("#drop-reason", "watermark")
    with page.expect_navigation():
        page.click("#mark-drop")
    page.reload()
    for i in ids:
        assert "reviewed: drop (watermark)" in page.locator(f'figure.card[data-id="{i}"]').inner_text()
    got = {r["id"]: r for r in lake.dataset().to_table(columns=["id", *review.NAMES]).to_pylist()}
    assert all((got[i]["review_verdict"], got[i]["review_reason"], got[i]["review_by"]) == ("drop", "watermark", "ana")
               for i in ids)
    assert sum(r["review_verdict"] is not None for r in got.values()) == 3

    # undo restores them
    with page.expect_navigation():
        page.click("#undo")
    got = {r["id"]: r for r in lake.dataset().to_table(columns=["id", *review.NAMES]).to_pylist()}
    assert all(got[i]["review_verdict"] is None for i in ids)
    assert page.errors == []
