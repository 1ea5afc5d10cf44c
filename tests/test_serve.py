"""lakecurate serve over HTTP (Starlette's TestClient): views, filters, review writes, security."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow as pa
import pytest

pytest.importorskip("starlette")
pytest.importorskip("httpx")
from starlette.testclient import TestClient  # noqa: E402

from lakecurate import Lake  # noqa: E402
from lakecurate import review  # noqa: E402
from lakecurate.errors import LakeError  # noqa: E402
from lakecurate.plant import synthetic_pairs  # noqa: E402
from lakecurate.serve import PAGE, create_app, is_loopback  # noqa: E402
from tests.conftest import SAMPLE_DATA, image_bytes  # noqa: E402

LOCAL = "http://127.0.0.1:8765"


def client(lake: Lake, base: str = LOCAL, **options) -> TestClient:
    return TestClient(create_app(lake, **options), base_url=base)


def csrf(c: TestClient) -> str:
    return re.search(r'name="csrf-token" content="(\w+)"', c.get("/").text).group(1)


def addrs(html: str) -> list[int]:
    return [int(a) for a in re.findall(r'data-addr="(\d+)"', html)]


@pytest.fixture
def sample(tmp_path: Path) -> Lake:
    lake = Lake.create(tmp_path / "lake")
    lake.ingest(SAMPLE_DATA, progress=False)
    return lake


@pytest.fixture
def many(tmp_path: Path) -> Lake:
    """130 rows in 3 fragments: pages, sorting, takes across fragments."""
    lake = Lake.create(tmp_path / "many")
    for k in range(3):
        lake.append(synthetic_pairs(50 * k, 50 if k < 2 else 30))
    return lake


def test_grid_pages_through_every_row_once_in_sort_order(many: Lake):
    c = client(many)
    seen, page = [], 0
    while True:
        r = c.get("/", params={"sort": "id", "desc": "1", "page": page})
        assert r.status_code == 200
        got = addrs(r.text)
        if not got or (seen and got == seen[-len(got):]):
            break
        seen += got
        page += 1
    assert len(seen) == many.count() == 130 and len(set(seen)) == 130 and page == -(-130 // PAGE)
    ids = many.dataset()._take_rows(seen, columns=["id"]).column("id").to_pylist()
    assert ids == sorted(ids, reverse=True)
    # a thumbnail per shown row, served by its address, from the cache the second time
    a = seen[0]
    first = c.get(f"/thumb/{a}", params={"px": 100})  # (the pages' own size was prefetched with them)
    assert first.status_code == 200 and first.headers["content-type"] == "image/jpeg" and first.content[:2] == b"\xff\xd8"
    again = c.get(f"/thumb/{a}", params={"px": 100})
    assert again.content == first.content and (first.headers["x-cache"], again.headers["x-cache"]) == ("miss", "hit")
    assert c.get("/thumb/999999").headers.get("x-thumbnail") == "none"  # no such row: the placeholder
    prefetched = c.get(f"/thumb/{seen[-1]}")
    assert prefetched.headers["x-cache"] == "hit" and prefetched.content[:2] == b"\xff\xd8"


def test_filters_reason_flag_where_and_verdict(sample: Lake):
    sample.curate({"name": "r", "step": [{"filter": "ingest_error"}, {"filter": "caption_missing"}]}, progress=False)
    c = client(sample)
    df = sample.to_pandas(["id", "drop_reason", "ingest_status"])
    for params, expect in [({"reason": "drop_reason:caption_missing"}, (df["drop_reason"] == "caption_missing").sum()),
                           ({"flag": "error"}, (df["ingest_status"] == "error").sum()),
                           ({"where": "ingest_status = 'ok' AND caption IS NOT NULL"}, None)]:
        r = c.get("/", params=params)
        assert r.status_code == 200, r.text
        n = int(re.search(r"(\d+) rows", r.text).group(1))
        want = expect if expect is not None else sample.count("ingest_status = 'ok' AND caption IS NOT NULL")
        assert n == want and n == len(addrs(r.text)) and n > 0
    bad = c.get("/", params={"where": "no_such_column > 1"})
    assert bad.status_code == 400 and "no_such_column" in bad.text


def test_review_write_then_the_grid_and_the_lake_show_it(sample: Lake):
    c = client(sample, labels=["watermark", "nsfw"])
    ids = sorted(sample.to_pandas(["id"])["id"])[:3]
    token = csrf(c)
    r = c.post("/api/review", json={"ids": ids, "verdict": "drop", "reason": "watermark", "by": "ana"},
               headers={"X-CSRF-Token": token})
    assert r.status_code == 200 and r.json()["rows"] == 3
    page = c.get("/", params={"verdict": "drop"}).text
    assert page.count('class="card') == 3 and "reviewed: drop (watermark)" in page
    got = {row["id"]: row for row in sample.dataset().to_table(columns=["id", *review.NAMES]).to_pylist()}
    assert all(got[i]["review_verdict"] == "drop" and got[i]["review_by"] == "ana" for i in ids)
    assert c.post("/api/review", json={"ids": ids[:1], "label": "nsfw"}, headers={"X-CSRF-Token": token}).status_code == 200
    labelled = c.get("/", params={"label": "nsfw"}).text
    assert labelled.count('class="card') == 1 and 'id="label-filter"' in labelled and "label nsfw (1)" in labelled
    assert c.post("/api/review", json={"ids": ids[:1], "label": "other"}, headers={"X-CSRF-Token": token}).status_code == 400
    undo = c.post("/api/undo", json={"action": r.json()["action"]}, headers={"X-CSRF-Token": token})
    assert undo.status_code == 200 and undo.json()["changed_since"] == [ids[0]]  # relabelled since: kept
    hist = c.get("/api/history").json()
    assert hist["counts"] == {"drop": 1} and len(hist["actions"]) == 3


def test_a_review_posted_with_control_characters_is_stored_clean(sample: Lake):
    """POST /api/review stored a reviewer name and reason with NUL and ESC as sent."""
    c = client(sample)
    ids = sorted(sample.to_pandas(["id"])["id"])[:1]
    r = c.post("/api/review", json={"ids": ids, "verdict": "drop", "reason": "blur\u0000\u001b[31my", "by": "ana\u001b"},
               headers={"X-CSRF-Token": csrf(c)})
    assert r.status_code == 200, r.text
    got = sample.dataset().to_table(columns=["review_reason", "review_by"], filter="review_verdict IS NOT NULL").to_pylist()
    assert got == [{"review_reason": "blur[31my", "review_by": "ana"}]
    assert c.get("/api/history").json()["actions"][0]["by"] == "ana"


@pytest.mark.parametrize("body", [{"ids": [{"a": 1}], "verdict": "keep"}, {"ids": [["x"]], "verdict": "keep"},
                                  {"ids": ["x"], "verdict": ["keep"]}, {"ids": ["x"], "verdict": {"k": 1}},
                                  {"ids": ["x"], "label": {"k": 1}}, {"ids": [1, 2], "verdict": "keep"}])
def test_review_of_odd_json_is_a_400_naming_the_field(sample: Lake, body: dict):
    c = client(sample)
    before = sample.dataset().version
    r = c.post("/api/review", json=body, headers={"X-CSRF-Token": csrf(c)})
    assert r.status_code == 400 and "review" in r.json()["error"]
    assert sample.dataset().version == before


@pytest.mark.parametrize("field", ["ids", "by", "reason", "v"])
def test_a_lone_surrogate_in_a_review_post_is_a_400_naming_the_field(sample: Lake, field: str):
    """A JSON string holding a lone surrogate ("\\ud800") was a 500 (UnicodeEncodeError in pyarrow)."""
    c = client(sample)
    ids = sorted(sample.to_pandas(["id"])["id"])[:1]
    body = {"ids": ids, "verdict": "drop", "reason": "blur", "by": "ana", "v": "", field: "x\ud800"}
    if field == "ids":
        body["ids"] = ["x\ud800"]
    raw = json.dumps(body).encode()  # (ensure_ascii: the surrogate travels as the escape \\ud800)
    before = sample.dataset().version
    r = c.post("/api/review", content=raw, headers={"X-CSRF-Token": csrf(c)})
    assert r.status_code == 400 and "not UTF-8 text" in r.json()["error"], r.text
    assert {"ids": "review ids", "by": "reviewer", "reason": "reason", "v": "v (the page"}[field] in r.json()["error"]
    assert sample.dataset().version == before


def test_a_deeply_nested_review_body_is_a_400(sample: Lake):
    """[ nested 100,000 deep (within the size limit) was a RecursionError: a 500."""
    c = client(sample)
    r = c.post("/api/review", content="[" * 100_000 + "]" * 100_000, headers={"X-CSRF-Token": csrf(c)})
    assert r.status_code == 400 and "JSON object" in r.json()["error"]


def test_serve_labels_are_written_after_every_check_and_on_the_served_branch(sample: Lake):
    """--labels replaced the lake's labels, then --version nosuch failed the start; and with a
    branch's --version they were written as main's, so the branch's page offered none."""
    review.set_labels(sample, ["watermark", "nsfw"])
    for labels in (["oops"], []):
        with pytest.raises(LakeError, match="not a version, tag or branch"):
            create_app(sample, version="nosuch", labels=labels)
        assert review.labels(sample) == ["watermark", "nsfw"]
    exp = sample.create_branch("exp")
    c = client(sample, version="exp", labels=["blurry"])
    assert review.labels(exp) == ["blurry"] and review.labels(sample) == ["watermark", "nsfw"]
    assert re.findall(r"<option>([^<]*)</option>", c.get("/").text).count("blurry") == 1
    ids = sorted(sample.to_pandas(["id"])["id"])[:1]
    r = c.post("/api/review", json={"ids": ids, "label": "blurry"}, headers={"X-CSRF-Token": csrf(c)})
    assert r.status_code == 200, r.text


def test_views_pair_group_concept_diff_sql(sample: Lake):
    sample.curate({"name": "r", "step": [{"filter": "caption_missing"}]}, progress=False)
    first = sample.version
    sample.curate({"name": "r2", "step": [{"filter": "caption_missing"}, {"filter": "caption_length", "min_words": 5}]},
                  progress=False)
    c = client(sample)
    a = addrs(c.get("/").text)[0]
    pair = c.get(f"/pair/{a}")
    assert pair.status_code == 200 and "provenance" in pair.text and "drop_reason" in pair.text
    assert c.get(f"/image/{a}").headers["content-type"].startswith("image/")
    d = c.get("/diff", params={"a": str(first)})
    assert d.status_code == 200
    removed = sample.diff(first).removed
    assert removed > 0 and f"{removed} removed" in d.text
    s = c.get("/sql", params={"sql": "SELECT ingest_status, COUNT(*) AS n FROM pairs GROUP BY ingest_status"})
    assert s.status_code == 200 and "<th>n</th>" in s.text
    assert c.get("/group", params={"g": "x"}).status_code == 400  # no dedup yet: says what to run
    assert "lakecurate cluster" in c.get("/concept/0").text
    assert c.get("/", params={"v": "999"}).status_code == 400
    by_image = c.get("/", params={"sort": "image"})  # (Lance's message named the blob column's struct type)
    assert by_image.status_code == 400 and "cannot sort by &#39;image&#39;: not a scalar column" in by_image.text


@pytest.fixture(scope="module")
def embedded(tmp_path_factory) -> Lake:
    """sample_data embedded (tiny random encoder), deduplicated and clustered."""
    lake = Lake.create(tmp_path_factory.mktemp("serve") / "lake")
    lake.ingest(SAMPLE_DATA, progress=False)
    lake.embed("tiny-random", workers=0, batch_size=8, progress=False)
    lake.dedup(["exact", "phash"], progress=False)
    lake.cluster(k=2)
    return lake


def test_group_and_concept_views(embedded: Lake):
    lake = embedded
    c = client(lake)
    groups = lake.to_pandas(["dup_group", "dup_keep"]).dropna()
    g = groups["dup_group"].value_counts().index[0]
    page = c.get("/group", params={"g": g})
    assert page.status_code == 200
    kept_first = re.findall(r'<figure class="card[^"]*" data-id="([^"]+)"', page.text)
    members = lake.to_pandas(["id", "dup_group", "dup_keep"])
    members = members[members["dup_group"] == g]
    assert set(kept_first) == set(members["id"]) and members.set_index("id").loc[kept_first[0], "dup_keep"]
    conc = c.get("/concept/0")
    assert conc.status_code == 200 and "nearest the centre" in conc.text
    # text search through the lake's encoder (the tiny random one: meaningless order, real path)
    found = c.get("/", params={"q": "a red brick wall"})
    want = lake.search("a red brick wall", k=PAGE, columns=["id"])["id"].tolist()
    shown = re.findall(r'<figure class="card[^"]*" data-id="([^"]+)"', found.text)
    assert found.status_code == 200 and shown == want and len(want) > 20  # rows with a vector, nearest first


# ------------------------------------------------------------------ security
def test_non_local_bind_needs_the_token(sample: Lake):
    token = "s3cret-token-0123456789"
    c = client(sample, base="http://10.0.0.5:8765", token=token, host="0.0.0.0")
    for path in ["/", "/thumb/0", "/api/history", "/sql?sql=SELECT+1", "/pair/0"]:
        r = c.get(path)
        assert r.status_code == 401 and "csrf" not in r.text and sample.uri not in r.text, path
    assert c.get("/", headers={"Authorization": "Bearer wrong-token-000000"}).status_code == 401
    assert c.get("/", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    login = c.get(f"/login?token={token}", follow_redirects=False)
    assert login.status_code == 303 and login.headers["location"] == "/"
    assert c.get("/").status_code == 200  # the cookie set by /login
    # a write needs the token *and* the page's CSRF token
    ids = [sample.to_pandas(["id"])["id"][0]]
    fresh = TestClient(c.app, base_url="http://10.0.0.5:8765")
    assert fresh.post("/api/review", json={"ids": ids, "verdict": "keep"},
                      headers={"X-CSRF-Token": csrf(c)}).status_code == 401
    assert c.post("/api/review", json={"ids": ids, "verdict": "keep"}).status_code == 403
    assert c.post("/api/review", json={"ids": ids, "verdict": "keep"}, headers={"X-CSRF-Token": csrf(c)}).status_code == 200


def test_loopback_refuses_other_hosts_and_origins(sample: Lake):
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and not is_loopback("0.0.0.0")
    c = client(sample)
    assert c.get("/").status_code == 200
    rebound = TestClient(c.app, base_url="http://evil.example:8765")  # DNS rebinding: a foreign Host header
    assert rebound.get("/").status_code == 400
    ids = [sample.to_pandas(["id"])["id"][0]]
    r = c.post("/api/review", json={"ids": ids, "verdict": "keep"},
               headers={"X-CSRF-Token": csrf(c), "Origin": "http://evil.example"})
    assert r.status_code == 403 and "origin" in r.json()["error"]
    assert c.post("/api/review", json={"ids": ids, "verdict": "keep"}, headers={"X-CSRF-Token": "0" * 64}).status_code == 403
    assert "review_verdict" not in sample.dataset().schema.names  # nothing was written


@pytest.mark.parametrize("path", ["/thumb/..%2F..%2Fetc%2Fpasswd", "/thumb/%2Fetc%2Fpasswd", "/image/..%2Fpairs.lance",
                                  "/thumb/-1", "/thumb/1e3", "/image/0x10", "/pair/abc", "/thumb/99999999999999999999999",
                                  "/static/..%2F..%2Fserve.py", "/static/../serve.py"])
def test_path_like_ids_are_refused(sample: Lake, path: str):
    r = client(sample).get(path)
    assert r.status_code in (400, 404), (path, r.status_code)
    assert b"root:" not in r.content and b"import" not in r.content


def test_a_script_in_a_caption_is_text(tmp_path: Path):
    lake = Lake.create(tmp_path / "lake")
    rows = synthetic_pairs(0, 2).to_pylist()
    rows[0]["caption"] = '<script>window.pwned = 1</script><img src=x onerror="alert(1)">'
    rows[0]["image"] = image_bytes()
    lake.append(pa.Table.from_pylist(rows, schema=synthetic_pairs(0, 1).schema))
    c = client(lake)
    for page in (c.get("/").text, c.get(f"/pair/{addrs(c.get('/').text)[0]}").text):
        assert "<script>window.pwned" not in page and "&lt;script&gt;window.pwned = 1&lt;/script&gt;" in page
        assert "<img src=x" not in page
    assert "script-src 'self'" in c.get("/").headers["content-security-policy"]


def test_read_only_refuses_writes(sample: Lake):
    c = client(sample, read_only=True)
    ids = [sample.to_pandas(["id"])["id"][0]]
    r = c.post("/api/review", json={"ids": ids, "verdict": "keep"}, headers={"X-CSRF-Token": csrf(c)})
    assert r.status_code == 403 and "read-only" in r.json()["error"]
    assert c.post("/api/undo", json={"action": "abc"}, headers={"X-CSRF-Token": csrf(c)}).status_code == 403
    assert 'id="review"' not in c.get("/").text
    assert "review_verdict" not in sample.dataset().schema.names
    with pytest.raises(LakeError, match="leave it out with read_only=True"):
        create_app(sample, read_only=True, labels=["a"])
    assert sample.side_dataset(review.LABELS) is None


@pytest.mark.parametrize("query", [
    "SELECT * FROM pairs; SELECT 1",
    "COPY (SELECT * FROM pairs) TO '/tmp/x.csv'",
    "CREATE EXTERNAL TABLE t STORED AS CSV LOCATION '/etc/passwd'",
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM '/etc/passwd'",
])
def test_sql_that_writes_or_reads_files_is_refused(sample: Lake, query: str, tmp_path: Path):
    c = client(sample)
    r = c.get("/sql", params={"sql": query})
    assert r.status_code == 400 and 'class="error"' in r.text
    assert "root:" not in r.text
    w = c.get("/", params={"where": "caption IS NOT NULL; DROP TABLE pairs"})
    assert w.status_code == 400


def test_sql_rows_are_limited(many: Lake, monkeypatch):
    import lakecurate.serve as serve

    monkeypatch.setattr(serve, "SQL_ROWS", 7)
    r = client(many).get("/sql", params={"sql": "SELECT id FROM pairs"})
    assert r.status_code == 200 and r.text.count("<td>p") == 7


def test_sql_past_its_memory_is_stopped_with_a_message(sample: Lake, monkeypatch):
    """A query of a few rows from the SQL page could take the server's memory (`unnest(range(...))`
    on 28 rows took 8.7 GB in `lakecurate sql`): the page's queries have a memory bound too."""
    import threading

    import lakecurate.serve as serve

    monkeypatch.setattr(serve, "SQL_MAX_MEMORY", 50e6)
    heavy = "SELECT x FROM (SELECT unnest(range(1, 1000000)) AS x FROM pairs) ORDER BY x DESC LIMIT 2"
    try:
        r = client(sample).get("/sql", params={"sql": heavy})
    finally:
        for t in threading.enumerate():
            if t.name == "lakecurate-sql":
                t.join(60)
    assert r.status_code == 400 and "took more than 48 MiB of memory" in r.text, (r.status_code, r.text[-500:])


def test_sql_past_its_time_never_starves_the_grid(many: Lake, monkeypatch):
    """Four /sql queries past QUERY_SECONDS held the 4 threads of the grid's pool: a sort of the grid
    then answered 504 "the filter ran longer ... narrow it down" until they ended."""
    import threading

    import lakecurate.serve as serve

    monkeypatch.setattr(serve, "QUERY_SECONDS", 0.2)
    release, stops = threading.Event(), []

    def heavy(query, version=None, *, limit=None, stop=None, **kw):  # a query that runs until released
        stops.append(stop)
        release.wait(30)
        return pa.table({"n": [1]}).to_pandas()

    c = client(many)
    c.get("/")
    monkeypatch.setattr(many, "sql", heavy)
    try:
        got = [c.get("/sql", params={"sql": "SELECT COUNT(*) AS n FROM pairs"}) for _ in range(4)]
        assert [r.status_code for r in got] == [504, 504, 503, 503]
        assert "SQL is busy" in got[-1].text and "the filter" not in got[-1].text
        assert all(s is not None and s.is_set() for s in stops)  # told to stop at their next batch
        grid = c.get("/", params={"sort": "caption", "desc": "1"})
        assert grid.status_code == 200 and len(addrs(grid.text)) == PAGE
    finally:
        release.set()
    for _ in range(100):  # the slots come back once the queries end
        if c.get("/sql", params={"sql": "SELECT 1 AS n"}).status_code == 200:
            break
        threading.Event().wait(0.05)
    else:
        raise AssertionError("the SQL slots never came back")
    stop = threading.Event()
    stop.set()
    from lakecurate.errors import QueryStopped

    monkeypatch.undo()
    with pytest.raises(QueryStopped):  # the real reader stops at its next batch
        many.sql_table("SELECT id FROM pairs", stop=stop)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_thumbnails_are_upright_and_small(fmt: str):
    import io

    from PIL import Image

    from lakecurate.images import thumbnail_jpeg

    up = Image.new("RGB", (600, 300), (255, 0, 0))
    up.paste((0, 0, 255), (0, 0, 300, 300))  # left half blue, right half red
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned: the viewer turns it back
    buf = io.BytesIO()
    up.rotate(90, expand=True).save(buf, fmt, exif=exif.tobytes())
    for oversample in (1, 2):
        im = Image.open(io.BytesIO(thumbnail_jpeg(buf.getvalue(), 160, oversample=oversample)))
        assert im.size == (160, 80)
        left, right = im.getpixel((10, 40)), im.getpixel((150, 40))
        assert left[2] > 200 > left[0] and right[0] > 200 > right[2]


# ------------------------------------------------------------------ the commands
def test_serve_command_makes_a_token_off_the_loopback(sample: Lake, monkeypatch):
    import json

    import uvicorn
    from click.testing import CliRunner

    from lakecurate.cli import main

    started = {}

    def run(server, sockets):  # the socket the server would listen on, bound before the URL was printed
        host, port = sockets[0].getsockname()[:2]
        started.update(app=server.config.app, host=host, port=port)
        sockets[0].close()

    monkeypatch.setattr(uvicorn.Server, "run", run)
    res = CliRunner().invoke(main, ["serve", sample.uri, "--host", "0.0.0.0", "--port", "9001", "--json"])
    assert res.exit_code == 0, res.output
    url = json.loads(res.output)["url"]
    token = url.split("token=")[1]
    assert url.startswith("http://127.0.0.1:9001/login?token=") and len(token) >= 16
    c = TestClient(started["app"], base_url="http://10.1.2.3:9001")
    assert c.get("/").status_code == 401 and c.get(f"/?token={token}").status_code == 200
    # local bind: no token asked; a short token, a bad version or port refused before serving
    started.clear()
    assert CliRunner().invoke(main, ["serve", sample.uri]).exit_code == 0 and started["host"] == "127.0.0.1"
    for args, msg in [(["--token", "short"], "at least 16"), (["--version", "77"], "not a version"),
                      (["--port", "0"], "0")]:
        started.clear()
        bad = CliRunner().invoke(main, ["serve", sample.uri, *args])
        assert bad.exit_code != 0 and msg in bad.output and not started and "Traceback" not in bad.output
    # a port in use and a host that is no address: refused before the URL is announced (it was
    # printed, --json too, and then the server failed to bind)
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        for args, msg in [(["--port", port], f"--port {port} on 127.0.0.1: Address already in use"),
                          (["--host", "nonsense.invalid"], "--host nonsense.invalid")]:
            started.clear()
            bad = CliRunner().invoke(main, ["serve", sample.uri, *args, "--json"])
            assert bad.exit_code == 1 and not started and "url" not in bad.stdout, bad.output
            assert msg in json.loads(bad.stdout)["error"]


def test_ctrl_c_stops_serve_quietly(sample: Lake, monkeypatch):
    """Ctrl+C, as serve says to stop it: uvicorn raises it again once shut down, and click printed
    "Aborted!" and exited 1."""
    import uvicorn
    from click.testing import CliRunner

    from lakecurate.cli import main

    def run(server, sockets):
        sockets[0].close()
        raise KeyboardInterrupt

    monkeypatch.setattr(uvicorn.Server, "run", run)
    res = CliRunner().invoke(main, ["serve", sample.uri, "--read-only", "--port", "9002"])
    assert res.exit_code == 0 and "Aborted" not in res.output, res.output


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_sigterm_stops_serve_as_ctrl_c_does(sample: Lake, sig):
    """`kill`, `docker stop`, systemd: SIGTERM ended serve with "terminated (SIGTERM); what was
    committed is kept: run the same command again to go on from there" and exit 143, as if a run
    had been cut short; once the program took Ctrl-C too, Ctrl-C did the same with 130 (uvicorn
    raises the signal again under the handler it found). Either stops the server, exit 0."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time

    from tests.conftest import REPO

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = "import sys; sys.argv[0] = 'lakecurate'; from lakecurate.program import entry; sys.exit(entry())"
    proc = subprocess.Popen([sys.executable, "-c", code, "serve", sample.uri, "--port", str(port)], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.3)
        proc.send_signal(getattr(signal, sig))
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0 and "terminated" not in err and "interrupted" not in err, (proc.returncode, out, err)
    assert f"serving {sample.uri}" in out + err


def test_review_command(sample: Lake):
    import json

    from click.testing import CliRunner

    from lakecurate.cli import main

    ids = sorted(sample.to_pandas(["id"])["id"])[:2]
    run = CliRunner().invoke
    res = run(main, ["review", sample.uri, *ids, "--drop", "watermark", "--by", "ana", "--json"])
    assert res.exit_code == 0, res.output
    action = json.loads(res.output)["action"]
    assert review.counts(sample.dataset()) == {"drop": 2}
    hist = run(main, ["review", sample.uri, "--history", "--json"])
    assert json.loads(hist.output)[0]["action"] == action
    undo = run(main, ["review", sample.uri, "--undo", action])
    assert undo.exit_code == 0 and "restored 2 rows" in undo.output and review.counts(sample.dataset()) == {}
    bad = run(main, ["review", sample.uri, ids[0], "--drop", "x", "--keep"])
    assert bad.exit_code != 0 and "choose one" in bad.output
    assert "give a verdict" in run(main, ["review", sample.uri, ids[0]]).output
    # what --history and --undo take no part in was ignored without a word; an empty reason or action
    # was called "no rows" or "no verdict"
    version = sample.version
    for args, says in ((["--history", ids[0], "--keep"], "--history lists the latest actions; it takes no ids, --keep"),
                       (["--undo", action, ids[0]], "--undo ACTION restores what that action changed; it takes no ids"),
                       (["--undo", ""], "--undo: give an action id"), ([ids[0], "--drop", " "], "--drop needs a reason")):
        bad = run(main, ["review", sample.uri, *args])
        assert bad.exit_code == 2 and says in bad.output, (args, bad.output)  # a bad option (README)
    assert sample.version == version
    again = run(main, ["review", sample.uri, "--undo", action])  # restores nothing: names no action
    assert again.exit_code == 0 and again.output.startswith("nothing restored: action") and "undo action" not in again.output
    assert "already undone" in again.output and "changed since" not in again.output


def test_image_search_and_a_pinned_version(embedded: Lake, tmp_path: Path):
    c = client(embedded)
    photo = (SAMPLE_DATA / "astronaut.jpg").read_bytes()
    page_token = {"X-CSRF-Token": csrf(c)}
    # an upload costs the server: another origin's page, or none at all, cannot make it decode and
    # encode (it ran the encoder for any site, and read a 300 MB body whole before measuring it)
    assert c.post("/api/search-image", content=photo).status_code == 403
    assert c.post("/api/search-image", content=photo, headers={**page_token, "Origin": "http://evil.example"}).status_code == 403
    big = c.post("/api/search-image", content=b"\0" * (20 * 2**20 + 1), headers=page_token)
    assert big.status_code == 413 and "20 MB" in big.json()["error"]

    def chunks():  # no declared length: read until the limit, then refused
        for _ in range(21):
            yield b"\0" * 2**20
    assert c.post("/api/search-image", content=chunks(), headers=page_token).status_code == 413
    assert c.post("/api/review", content=b"{" + b" " * 2**21, headers=page_token).status_code == 413
    r = c.post("/api/search-image", content=photo, headers=page_token)
    assert r.status_code == 200, r.text
    page = c.get(r.json()["url"])
    shown = re.findall(r'<figure class="card[^"]*" data-id="([^"]+)"', page.text)
    assert page.status_code == 200 and shown == embedded.search(photo, k=PAGE, columns=["id"])["id"].tolist()
    # a search with a sort: the same rows, in the order the sort menu shows (the sort was ignored)
    by_width = c.get(r.json()["url"] + "&sort=width&desc=1")
    hits = re.findall(r'<figure class="card[^"]*" data-id="([^"]+)"', by_width.text)
    width = dict(zip(*(embedded.to_pandas(["id", "width"])[c] for c in ("id", "width"))))
    assert sorted(hits) == sorted(shown) and [width[i] for i in hits] == sorted((width[i] for i in hits), reverse=True)
    bad = c.post("/api/search-image", content=b"not an image", headers=page_token)
    assert bad.status_code == 400 and "--text" not in bad.text and "search box" in bad.json()["error"]  # the page's words
    assert "expired" in c.get("/", params={"qimg": "0123456789abcdef"}).text
    # --version: the grid shows that version unless the page asks for another
    first = embedded.dataset().versions()[0]["version"]
    old = client(embedded, version=str(first + 1))
    n_old = embedded.dataset(first + 1).count_rows()
    assert f"{n_old} rows" in old.get("/").text and f"version {first + 1}" in old.get("/").text
    assert f"version {embedded.version}" in old.get("/", params={"v": str(embedded.version)}).text
    with pytest.raises(LakeError, match="not a version"):
        create_app(embedded, version="9999")


def test_a_branch_view_searches_queries_and_reviews_that_branch(embedded: Lake, tmp_path: Path):
    """The version menu lists branches. A view of branch exp searched, queried and diffed main's
    version of the same number (or said it was not a version), and its marks were written to
    main's latest while the page went on showing exp's. A view of a fixed version has no review bar
    and a mark sent from it is refused."""
    import shutil

    lake = Lake.open(shutil.copytree(embedded.uri, tmp_path / "lake"))
    exp = lake.create_branch("exp")
    exp.append(synthetic_pairs(0, 12))  # 12 rows on the branch only
    main_ids = set(lake.to_pandas(["id"])["id"])
    while lake.version != exp.version:  # main gets a version of the number the branch's view shows
        if lake.version < exp.version:
            review.mark(lake, sorted(main_ids)[:1], verdict="keep", by="main")
        else:
            exp.append(synthetic_pairs(12 + exp.count() - lake.count(), 1))
    added = exp.count() - lake.count()
    assert added >= 12
    c = client(lake)
    token = csrf(c)
    count = c.get("/sql", params={"v": "exp", "sql": "SELECT COUNT(*) AS n FROM pairs"})
    assert count.status_code == 200 and f"<td>{exp.count()}</td>" in count.text, count.text
    found = c.get("/", params={"v": "exp", "q": "a cat"})
    shown = re.findall(r'<figure class="card[^"]*" data-id="([^"]+)"', found.text)
    assert found.status_code == 200 and shown == exp.search("a cat", k=PAGE, columns=["id"])["id"].tolist()
    d = c.get("/diff", params={"a": f"main:{lake.version}", "b": "exp"})
    assert d.status_code == 200 and f"{added} added" in d.text and d.text.count('class="card') == added

    new = exp.to_pandas(["id"])["id"].iloc[-1]
    r = c.post("/api/review", json={"ids": [new], "verdict": "drop", "reason": "blurry", "by": "ana", "v": "exp"},
               headers={"X-CSRF-Token": token})
    assert r.status_code == 200 and r.json()["rows"] == 1, r.text
    assert exp.sql(f"SELECT review_verdict FROM pairs WHERE id = '{new}'")["review_verdict"].tolist() == ["drop"]
    assert set(lake.sql("SELECT review_by FROM pairs WHERE review_by IS NOT NULL")["review_by"]) == {"main"}
    assert "reviewed: drop (blurry)" in c.get("/", params={"v": "exp", "verdict": "drop"}).text
    hist = c.get("/api/history", params={"v": "exp"}).json()
    assert hist["counts"] == {"drop": 1} and hist["actions"][0]["by"] == "ana"
    assert c.post("/api/undo", json={"action": r.json()["action"], "v": "exp"}, headers={"X-CSRF-Token": token}).json()["rows"] == 1
    assert exp.sql(f"SELECT review_verdict IS NULL AS none FROM pairs WHERE id = '{new}'")["none"].tolist() == [True]

    before = (lake.version, exp.version)
    for pinned in (str(lake.version - 1), f"exp:{exp.version - 1}"):
        page = c.get("/", params={"v": pinned}).text
        assert 'id="review-pinned"' in page and 'id="mark-keep"' not in page
        r = c.post("/api/review", json={"ids": [new], "verdict": "keep", "v": pinned}, headers={"X-CSRF-Token": token})
        assert r.status_code == 400 and "not the latest" in r.json()["error"]
    assert (lake.version, exp.version) == before
    assert 'id="mark-keep"' in c.get("/", params={"v": "exp"}).text and 'id="mark-keep"' in c.get("/").text


def test_a_thumbnail_is_of_a_row_of_the_version_asked_for(sample: Lake, monkeypatch):
    """/thumb/ADDR answered from its cache whatever ?v= said: 200 for a version without the row
    (v1, before any row), for a version that is not one, and for a fragment a restore took away.
    Now a row not in the version gets the placeholder (/image/ADDR: 404), a bad version a 400."""
    monkeypatch.setattr("lakecurate.serve.LATEST_SECONDS", 0.0)
    c = client(sample)
    a = addrs(c.get("/").text)[0]
    assert c.get(f"/thumb/{a}").status_code == 200 and c.get(f"/thumb/{a}").headers["x-cache"] == "hit"
    empty = next(v["version"] for v in sample.dataset().versions() if not sample.dataset(v["version"]).count_rows())
    assert c.get(f"/thumb/{a}", params={"v": str(empty)}).headers.get("x-thumbnail") == "none"
    assert c.get(f"/image/{a}", params={"v": str(empty)}).status_code == 404
    for path in (f"/thumb/{a}", f"/image/{a}"):
        bad = c.get(path, params={"v": "nonexist"})
        assert bad.status_code == 400 and "nonexist" in bad.text, path
        assert c.get(path, params={"v": str(sample.version)}).status_code == 200, path
    before = sample.version
    sample.append(synthetic_pairs(0, 3))  # a fragment of its own
    new = max(sample.dataset().to_table(columns=[], with_row_address=True).column("_rowaddr").to_pylist())
    assert new >> 32 == 1 and c.get(f"/thumb/{new}").status_code == 200
    sample.restore(before)
    assert c.get(f"/thumb/{new}").headers.get("x-thumbnail") == "none" and c.get(f"/image/{new}").status_code == 404
    old = c.get(f"/thumb/{new}", params={"v": str(sample.version - 1)})  # still in that version
    assert old.headers["content-type"] == "image/jpeg" and old.headers["x-cache"] == "hit"
    assert c.get(f"/thumb/{a}").headers["content-type"] == "image/jpeg"


def test_a_lake_made_again_at_its_path_shows_its_own_thumbnails(tmp_path: Path, monkeypatch):
    """Thumbnails are cached by row address, which a lake never reuses, but a lake deleted and
    ingested again at the same path counts fragments from 0 again: the grid showed the old lake's
    pictures under the new rows (a reviewer then judged a pair by the wrong image)."""
    import shutil

    monkeypatch.setattr("lakecurate.serve.LATEST_SECONDS", 0.0)
    first, second = tmp_path / "a", tmp_path / "b"
    for folder, names in ((first, ["astronaut", "coffee"]), (second, ["chelsea", "camera"])):
        folder.mkdir()
        for n in names:
            shutil.copy(SAMPLE_DATA / f"{n}.jpg", folder)
            shutil.copy(SAMPLE_DATA / f"{n}.txt", folder)
    lake = Lake.create(tmp_path / "lake")
    lake.ingest(first, progress=False)
    c = client(lake)
    a = addrs(c.get("/").text)[0]
    before = c.get(f"/thumb/{a}", params={"px": 64})
    assert before.status_code == 200 and c.get(f"/thumb/{a}", params={"px": 64}).headers["x-cache"] == "hit"
    shutil.rmtree(lake.uri)
    again = Lake.create(tmp_path / "lake")
    again.ingest(second, progress=False)
    assert a in addrs(c.get("/").text)  # the same address, another picture
    after = c.get(f"/thumb/{a}", params={"px": 64})
    assert after.headers["x-cache"] != "hit" and after.content != before.content


def test_the_browser_never_decodes_or_sends_an_image_past_the_decode_limit(sample: Lake, monkeypatch):
    """An upload to search by image was decoded up to Pillow's own error (twice the limit every stage
    keeps: a 100 MP PNG of 140 KB decoded in the server), and a pair's full view sent a refused
    decompression bomb's bytes for the reviewer's browser to decode. Checked with the limit lowered."""
    from lakecurate import images

    sample.embed("tiny-random", workers=0, progress=False)
    c = client(sample)
    a = addrs(c.get("/").text)[0]
    assert c.get(f"/image/{a}").status_code == 200
    monkeypatch.setattr(images, "MAX_DECODE_PIXELS", 1)
    full = c.get(f"/image/{a}")
    assert full.status_code == 422 and "more than lakecurate decodes" in full.text, full.text
    up = c.post("/api/search-image", content=(SAMPLE_DATA / "astronaut.jpg").read_bytes(),
                headers={"X-CSRF-Token": csrf(c)})
    assert up.status_code == 400 and "more pixels than the server decodes" in up.json()["error"], up.text
