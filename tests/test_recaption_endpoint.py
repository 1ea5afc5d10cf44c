"""Recaption through an OpenAI-compatible endpoint: a chat-completions server started here on
127.0.0.1 answers normally, with 429 + Retry-After, 500, a hang past the timeout and malformed JSON;
every row ends with a caption or a recorded error, nothing is lost, retries are counted, and the
API key never reaches the lake or the output."""

from __future__ import annotations

import json
import shlex
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest
from click.testing import CliRunner

from lakecurate import Lake, LakeError, graph
from lakecurate.captioners import PROBE_PROMPT
from lakecurate.cli import main
from lakecurate.columns import field_provenance
from lakecurate.plant import synthetic_pairs

from .conftest import SAMPLE_DATA

KEY = "sk-test-SECRET-4711"


class Server:
    """Behaviour by the caption it is asked to rephrase: "flaky429 ..." gets a 429 first, "flaky500"
    a 500 first, "slow" hangs past the client's timeout once, "broken" always gets malformed JSON,
    "down" always a 503, "sometimes" a 500 while ``failing`` is set, "control" a reply with control
    characters, "huge" a reply of a million characters; everything else an answer. While ``status``
    is set, every request (the first run's probe too) gets that status. Counts requests (the probes
    apart) and checks the key."""

    def __init__(self, delay: float = 0.0):
        self.requests: list[dict] = []
        self.probes = 0
        self.status: int | None = None
        self.failing = False
        self.seen: dict[str, int] = {}
        self.keys: set[str | None] = set()
        self.lock = threading.Lock()
        self.delay = delay
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                content = body["messages"][0]["content"]
                text = content if isinstance(content, str) else content[0]["text"]
                with outer.lock:
                    if text == PROBE_PROMPT:
                        outer.probes += 1
                    else:
                        outer.requests.append(body)
                    outer.keys.add(self.headers.get("Authorization"))
                if outer.status is not None:
                    return self.reply(outer.status, b"{}")
                if text == PROBE_PROMPT:
                    return self.reply(200, json.dumps({"choices": [{"message": {"content": "OK"}}]}).encode())
                tag = text.split("Caption: ")[-1] if "Caption: " in text else "image"
                with outer.lock:
                    n = outer.seen[tag] = outer.seen.get(tag, 0) + 1
                if outer.delay:
                    time.sleep(outer.delay)
                if tag.startswith("flaky429") and n == 1:
                    return self.reply(429, b"{}", {"Retry-After": "0"})
                if tag.startswith("flaky500") and n == 1:
                    return self.reply(500, b"oops")
                if tag.startswith("slow") and n == 1:
                    time.sleep(1.5)
                    return self.reply(200, b"{}")
                if tag.startswith("broken"):
                    return self.reply(200, b"{not json")
                if tag.startswith("down"):
                    return self.reply(503, b"")
                if tag.startswith("sometimes") and outer.failing:
                    return self.reply(500, b"oops")
                if tag.startswith(("control", "huge")):
                    answer = "a" * 10 ** 6 if tag.startswith("huge") else \
                        "<script>x</script>\x00\x1b[31mred\r\nline\ttab"
                    return self.reply(200, json.dumps({"choices": [{"message": {"content": answer}}]}).encode())
                if tag.startswith("empty"):  # an answer of no words
                    return self.reply(200, json.dumps({"choices": [{"message": {"content": " \n "}}]}).encode())
                if tag.startswith("surrogate"):  # JSON that decodes to text no UTF-8 can hold
                    return self.reply(200, b'{"choices": [{"message": {"content": "\\ud800"}}]}')
                if tag.startswith("garbage"):  # not HTTP at all
                    self.wfile.write(b"NOT HTTP\r\n\r\n")
                    return None
                answer = "a rewritten " + tag if tag != "image" else "a described image"
                return self.reply(200, json.dumps({"choices": [{"message": {"content": answer}}]}).encode())

            def reply(self, code, data, headers=None):
                try:
                    self.send_response(code)
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (the hang): fine
                    pass

        class Httpd(ThreadingHTTPServer):
            request_queue_size = 128  # the default backlog (5) refuses a burst of 16 connections

        self.httpd = Httpd(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def caption_lake(root: Path, captions: list[str | None]) -> Lake:
    lake = Lake.create(root)
    rows = synthetic_pairs(0, len(captions))
    lake.append(rows.set_column(rows.schema.get_field_index("caption"), "caption", pa.array(captions, pa.string())))
    return lake


def test_rephrase_every_row_ends_with_a_caption_or_an_error(server, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("MY_KEY", KEY)
    caps = ["a dog on grass", "flaky429 a cat", "flaky500 a bus", "slow a boat", "broken a tree", "down a car", None,
            *[f"plain caption {i}" for i in range(20)]]
    lake = caption_lake(tmp_path / "lake", caps)
    res = CliRunner().invoke(main, ["recaption", lake.uri, "--endpoint", server.url, "--api-model", "m", "--mode",
                                    "rephrase", "--api-key-env", "MY_KEY", "--timeout", "0.5", "--retries", "2",
                                    "--name", "re", "--json"])
    assert res.exit_code == 0, res.output
    rep, _ = json.JSONDecoder().raw_decode(res.output[res.output.index("{"):])
    got = lake.to_pandas(["caption", "caption_re", "caption_re_error", "caption_re_tries"]).set_index("caption",
                                                                                                      drop=False)
    assert len(got) == len(caps)  # nothing lost
    assert (got["caption_re"].notna() ^ got["caption_re_error"].notna()).all()  # a caption or an error, never both
    ok = {c: f"a rewritten {c}" for c in caps if c and not c.startswith(("broken", "down"))}
    for c, want in ok.items():
        assert got.loc[c, "caption_re"] == want
    assert got.loc["flaky429 a cat", "caption_re_tries"] == 2 and got.loc["flaky500 a bus", "caption_re_tries"] == 2
    assert got.loc["slow a boat", "caption_re_tries"] == 2  # the hang timed out, the retry answered
    assert got.loc["broken a tree", "caption_re_error"].startswith("endpoint: malformed reply")
    assert got.loc["down a car", "caption_re_error"] == "endpoint: HTTP 503 after 3 attempts"
    assert got.loc["broken a tree", "caption_re_tries"] == 3
    null = got[got["caption"].isna()]
    assert null["caption_re_error"].str.startswith("caption_missing").all() and (null["caption_re_tries"] == 0).all()
    assert rep["retries"] == 1 + 1 + 1 + 2 + 2 and rep["errors"] == 3
    # the key went to the server, and nowhere else
    assert server.keys == {f"Bearer {KEY}"}
    assert KEY not in res.output
    for f in Path(lake.uri).rglob("*"):
        if f.is_file():
            assert KEY.encode() not in f.read_bytes(), f
    full = field_provenance(lake.dataset().schema.field("caption_re"))
    prov = full["config"]
    assert full["transport"]["api_key_env"] == "MY_KEY" and prov["mode"] == "rephrase" and "{caption}" in prov["prompt"]
    # a re-run sends nothing: every row has its caption or its error
    n = len(server.requests)
    assert lake.recaption(endpoint=server.url, api_model="m", mode="rephrase", api_key_env="MY_KEY", timeout=0.5,
                          retries=2, name="re", progress=False).rows == 0
    assert len(server.requests) == n


def test_caption_mode_sends_the_image(server, tmp_path: Path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    lake = Lake.create(tmp_path / "lake")
    lake.ingest(SAMPLE_DATA, progress=False)
    rep = lake.recaption(endpoint=server.url, api_model="vlm", name="vlm", workers=0, progress=False)
    got = lake.to_pandas(["key", "caption_vlm", "caption_vlm_error"]).set_index("key")
    bad = ["gravel_truncated.jpg", "notes_not_an_image.jpg"]
    assert got.drop(index=bad)["caption_vlm"].eq("a described image").all()
    assert got.loc[bad, "caption_vlm_error"].str.startswith("image_undecodable").all()
    sent = [m["messages"][0]["content"] for m in server.requests]
    assert all(c[1]["image_url"]["url"].startswith("data:image/jpeg;base64,") for c in sent)
    assert rep.rows == lake.count() and len(server.requests) == lake.count() - len(bad)
    assert server.keys == {None}  # no key in the environment: no Authorization header


def test_odd_replies_are_the_rows_errors_and_the_key_is_never_shown(server, tmp_path: Path, monkeypatch):
    """An empty answer, text that is not UTF-8 and a reply that is not HTTP are malformed replies,
    retried and then the row's error (they stopped the whole run, or stored ""); a key read with a
    line end is sent without it (the run failed, printing the key in the message)."""
    monkeypatch.setenv("MY_KEY", KEY + "\r\n")
    caps = ["empty one", "surrogate two", "garbage three", "a fine caption"]
    lake = caption_lake(tmp_path / "lake", caps)
    res = CliRunner().invoke(main, ["recaption", lake.uri, "--endpoint", server.url, "--api-model", "m", "--mode",
                                    "rephrase", "--api-key-env", "MY_KEY", "--retries", "1", "--name", "re"])
    assert res.exit_code == 0, res.output
    assert KEY not in res.output
    got = lake.to_pandas(["caption", "caption_re", "caption_re_error"]).set_index("caption")
    assert got.loc["a fine caption", "caption_re"] == "a rewritten a fine caption"
    for c in caps[:3]:
        assert pd.isna(got.loc[c, "caption_re"]) and got.loc[c, "caption_re_error"].startswith("endpoint: malformed reply"), \
            got.loc[c].tolist()
    assert server.keys == {f"Bearer {KEY}"}
    monkeypatch.setenv("MY_KEY", "sk-\x07bad")  # a control character inside: refused before anything is written
    v = lake.version
    with pytest.raises(LakeError, match="MY_KEY holds a control character") as err:
        lake.recaption(endpoint=server.url, api_model="m", mode="rephrase", api_key_env="MY_KEY", name="other",
                       progress=False)
    assert "bad" not in str(err.value) and lake.version == v


@pytest.mark.parametrize("kwargs,match", [
    ({"endpoint": "ftp://x"}, "give the server's base URL"),
    ({"endpoint": "http://127.0.0.1:99999/v1"}, "give the server's base URL"),
    ({"endpoint": "http://[::1/v1"}, "give the server's base URL"),
    ({"endpoint": "http://127.0.0.1:1/v1", "model": "coca_ViT-B-32"}, "^model does not apply with endpoint"),
    ({"endpoint": "http://127.0.0.1:1/v1", "checkpoint": "/nonexistent"}, "^checkpoint does not apply with endpoint"),
    ({"mode": "rephrase"}, "need endpoint"),
    ({"concurrency": 2}, "need endpoint"),
    ({"endpoint": "http://user:pw@127.0.0.1:1/v1"}, "must not carry credentials"),
    ({"endpoint": "http://127.0.0.1:1/v1", "api_model": ""}, "^api_model"),
    ({"endpoint": "http://127.0.0.1:1/v1", "mode": "rephrase", "prompt": "no slot"}, "must name the caption"),
    ({"endpoint": "http://127.0.0.1:1/v1", "prompt": "Caption: {captoin}"}, r"not a column of .*did you mean caption"),
    ({"endpoint": "http://127.0.0.1:1/v1", "prompt": "Caption: {caption:.2f}"}, "does not fit its string values"),
    ({"endpoint": "http://127.0.0.1:1/v1", "prompt": "Caption: {caption.upper}"}, "not a column placeholder"),
    ({"endpoint": "http://127.0.0.1:1/v1", "prompt": "json {\"a\": 1}"}, "not a column placeholder"),
    ({"endpoint": "http://127.0.0.1:1/v1", "prompt": "Caption: {caption"}, "literal braces"),
    ({"endpoint": "http://127.0.0.1:1/v1", "concurrency": 0}, "^concurrency"),
    ({"endpoint": "http://127.0.0.1:1/v1", "retry_errors": True, "recompute": True}, "^retry_errors .* drop one"),
    ({"endpoint": "http://127.0.0.1:1/v1", "retry_errors": "yes"}, "invalid retry_errors 'yes': expected True or False"),
    # wrong types through the Python API: ValueError, TypeError and AttributeError tracebacks
    ({"endpoint": "http://127.0.0.1:1/v1", "temperature": "hot"}, "invalid temperature .hot.: expected a number from 0 to 5"),
    ({"endpoint": "http://127.0.0.1:1/v1", "prompt": 5}, "^prompt must be text, not 5"),
    ({"endpoint": "http://127.0.0.1:1/v1", "api_key_env": 5}, "^api_key_env must be text"),
    ({"endpoint": "http://127.0.0.1:1/v1", "name": 5}, "^name must be text"),
    # a width past any prompt's need: the columns were declared, then each row's prompt took 100 MB
    ({"endpoint": "http://127.0.0.1:1/v1", "mode": "rephrase", "prompt": "{caption:>99999999}"},
     r"\{caption:>99999999\} asks for more than 1000 characters"),
    ({"endpoint": "http://127.0.0.1:1/v1", "prompt": "Caption: {caption:.5000}"}, r"\{caption:\.5000\}.* at most 1000"),
    # a name was rewritten into another column's: '../x' wrote caption_x, 'a b' caption_ab, '' the default
    ({"endpoint": "http://127.0.0.1:1/v1", "name": "../x"}, r"^name '\.\./x': use only lowercase .*name='x'\)"),
    ({"endpoint": "http://127.0.0.1:1/v1", "name": "a b"}, r"^name 'a b': use only lowercase letters and digits"),
    ({"endpoint": "http://127.0.0.1:1/v1", "name": ""}, r"^name '': use only lowercase letters and digits"),
    ({"endpoint": "http://127.0.0.1:1/v1", "name": "Llava_2"}, r"^name 'Llava_2'.*\(e\.g\. name='llava2'\)"),
])
def test_bad_endpoint_options_write_nothing(tmp_path: Path, kwargs, match):
    lake = caption_lake(tmp_path / "lake", ["a dog"])
    v = lake.version
    with pytest.raises(LakeError, match=match):
        lake.recaption(**{"api_model": "m", **kwargs}, progress=False)
    assert lake.version == v


def test_prompt_placeholders_take_each_rows_columns(server, tmp_path: Path):
    caps = ["a dog on grass", "two cats", None, "a red bus in the city"]
    lake = caption_lake(tmp_path / "lake", caps)

    def features():
        lake.add_feature("nwords", lambda b: [len((c or "").split()) for c in b.column("caption").to_pylist()],
                         inputs=["caption"], type="int32", progress=False)
        lake.add_feature("share", lambda b: [None if c is None else len(c) / 32 for c in b.column("caption").to_pylist()],
                         inputs=["caption"], type="float32", progress=False)

    features()
    prompt = "Rewrite. {{json braces}} words={nwords} share={share:.2f}. Caption: {caption}"
    rep = lake.recaption(endpoint=server.url, api_model="m", mode="rephrase", prompt=prompt, name="ph", progress=False)
    assert rep.rows == 4 and rep.errors == 1
    sent = sorted(m["messages"][0]["content"] for m in server.requests)
    assert sent == sorted(f"Rewrite. {{json braces}} words={len(c.split())} share={len(c) / 32:.2f}. Caption: {c}"
                          for c in caps if c)
    got = lake.to_pandas(["caption", "caption_ph", "caption_ph_error"])
    assert got.loc[got["caption"].isna(), "caption_ph_error"].str.startswith("caption_missing").all()
    prov = field_provenance(lake.dataset().schema.field("caption_ph"))
    assert prov["source_columns"] == ["nwords", "share", "caption"] and prov["config"]["prompt"] == prompt
    # the graph's command for the column, rebuilt from its provenance, runs the same prompt again
    more = synthetic_pairs(100, 1)
    lake.append(more.set_column(more.schema.get_field_index("caption"), "caption", pa.array(["a green tram"])))
    features()
    fix = {s.node.columns[0]: s for s in graph.states(lake)}["caption_ph"].fix
    res = CliRunner().invoke(main, shlex.split(fix)[1:])
    assert res.exit_code == 0, res.output
    assert server.requests[-1]["messages"][0]["content"] == "Rewrite. {json braces} words=3 share=0.38. Caption: a green tram"


def test_an_ipv6_endpoint_is_stored_as_it_can_be_given_again():
    """The provenance (and the status fix command) kept "http://::1:8000/v1", which is refused."""
    from lakecurate.captioners import resolve_endpoint

    cfg = resolve_endpoint("http://[::1]:8000/v1", "m").config()
    assert cfg["endpoint"] == "http://[::1]:8000/v1"
    assert resolve_endpoint(cfg["endpoint"], "m").config() == cfg
    assert resolve_endpoint("http://127.0.0.1:8000/v1", "m").config()["endpoint"] == "http://127.0.0.1:8000/v1"


def test_an_endpoint_no_request_reaches_stops_the_run_and_a_rerun_goes_on(server, tmp_path: Path, monkeypatch):
    """The server down (or refusing the key) under a column being filled: every row got the
    failure as its error, the run exited 0, and a re-run had nothing to do (each row had its
    error). Now the run stops, writing no errors. (A first run is stopped before it declares the
    column: test_a_refused_first_run_writes_no_version.)"""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    lake = caption_lake(tmp_path / "lake", [f"plain caption {i}" for i in range(6)])
    kw = dict(endpoint=server.url, api_model="m", mode="rephrase", retries=0, name="re", progress=False)
    assert lake.recaption(**kw).rows == 6
    rows = synthetic_pairs(100, 2)
    lake.append(rows.set_column(rows.schema.get_field_index("caption"), "caption", pa.array(["plain a", "plain b"])))
    server.status = 401  # a key revoked meanwhile
    res = CliRunner().invoke(main, ["recaption", lake.uri, "--endpoint", server.url, "--api-model", "m", "--mode",
                                    "rephrase", "--retries", "0", "--name", "re"])
    assert res.exit_code == 1 and "every request of a batch of 2 failed (endpoint: HTTP 401" in res.output
    assert "run the same command again" in res.output and "Traceback" not in res.output
    assert lake.count("caption_re IS NULL AND caption_re_error IS NULL") == 2  # nothing written for them
    server.status = None
    rep = lake.recaption(**kw)
    assert rep.rows == 2 and rep.errors == 0


def test_a_refused_first_run_writes_no_version(server, tmp_path: Path, monkeypatch):
    """A server down or a key refused: the run exited 1, but the columns were declared and dropped
    again (two versions of nothing in `lakecurate log`), and with --recompute the column's captions
    were gone. Now one request checks the endpoint before anything is declared."""
    import socket

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    lake = caption_lake(tmp_path / "lake", ["plain one", "plain two"])
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    server.status = 401
    for url in (dead, server.url):
        v = lake.version
        res = CliRunner().invoke(main, ["recaption", lake.uri, "--endpoint", url, "--api-model", "m", "--mode",
                                        "rephrase", "--retries", "0", "--name", "re"])
        assert res.exit_code == 1 and lake.version == v and "caption_re" not in lake.dataset().schema.names
        assert "a first request failed (endpoint: " in res.output and "nothing was written" in res.output, res.output
        assert "Traceback" not in res.output
    assert server.probes == 1 and server.requests == []  # one request, not one a row
    server.status = None
    kw = dict(endpoint=server.url, api_model="m", mode="rephrase", retries=0, name="re", progress=False)
    assert lake.recaption(**kw).rows == 2
    server.status, v = 401, lake.version
    with pytest.raises(LakeError, match="a first request failed"):  # --recompute: the captions there are stay
        lake.recaption(recompute=True, **kw)
    assert lake.version == v and lake.count("caption_re IS NOT NULL") == 2


def test_rows_the_endpoint_failed_are_computed_again_with_retry_errors(server, tmp_path: Path, monkeypatch):
    """A server answering 500 for a while: its rows kept their errors for good (a re-run did nothing,
    only --recompute, redoing every row, helped) and the summary said "N rows captioned" of rows
    that got none. Now the summary counts captions and errors apart and prints the command that
    computes the failed rows again; --retry-errors does, keeping the captions there are."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    lake = caption_lake(tmp_path / "lake", ["a dog", "sometimes a cat", "sometimes a bus", None])
    server.failing = True
    res = CliRunner().invoke(main, ["recaption", lake.uri, "--endpoint", server.url, "--api-model", "m", "--mode",
                                    "rephrase", "--retries", "1", "--name", "re"])
    assert res.exit_code == 0, res.output
    assert "caption_re: 1 rows captioned, 3 errors (of 4 rows" in res.output
    assert "2 rows of caption_re have no caption because the endpoint failed them" in res.output
    command = res.output.strip().split("\n  ", 1)[1]
    assert command.startswith(f"lakecurate recaption {lake.uri} --endpoint {server.url}")
    assert command.endswith("--retries 1 --api-key-env OPENAI_API_KEY --name re --max-tokens 30 --temperature 0.0 "
                            "--seed 0 --retry-errors")
    got = lake.to_pandas(["caption", "caption_re", "caption_re_error", "caption_re_tries"]).set_index("caption")
    assert got.loc["sometimes a cat", "caption_re_error"] == "endpoint: HTTP 500 after 2 attempts"
    server.failing = False
    v, asked = lake.version, len(server.requests)
    res = CliRunner().invoke(main, shlex.split(command)[1:] + ["--json"])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.output[res.output.index("{"):])
    assert (rep["captioned"], rep["errors"], rep["retried"], rep["rows"]) == (2, 1, 3, 3)
    assert rep["endpoint_errors"] == 0 and rep["retry_command"] is None and rep["retries"] == 0
    assert len(server.requests) == asked + 2 and lake.version == v + 1  # the two failed rows, one commit
    got = lake.to_pandas(["caption", "caption_re", "caption_re_error", "caption_re_tries"])
    good = got.set_index("caption_re")
    assert sorted(good.index.dropna()) == ["a rewritten a dog", "a rewritten sometimes a bus",
                                           "a rewritten sometimes a cat"]
    assert good.loc["a rewritten sometimes a cat", "caption_re_tries"] == 3  # 2 attempts, then 1
    assert good.loc["a rewritten a dog", "caption_re_tries"] == 1 and server.seen["a dog"] == 1  # kept, not asked again
    assert got.loc[got["caption"].isna(), "caption_re_error"].str.startswith("caption_missing").all()
    assert (got["caption_re"].notna() ^ got["caption_re_error"].notna()).all()
    # nothing failed at the endpoint any more: a retry asks nothing
    assert lake.recaption(endpoint=server.url, api_model="m", mode="rephrase", retries=1, name="re", max_tokens=30,
                          retry_errors=True, progress=False).captioned == 0
    assert len(server.requests) == asked + 2


def test_status_names_the_rows_the_endpoint_failed_and_the_retry(server, tmp_path: Path, monkeypatch):
    """Every row failed at the endpoint: status called the column current and said nothing (only
    recaption's own summary named --retry-errors). It now counts those rows and prints the retry,
    the same command recaption printed; pasted, it leaves none."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    lake = caption_lake(tmp_path / "lake", ["sometimes a dog", "sometimes a cat", None])
    server.failing = True
    res = CliRunner().invoke(main, ["recaption", lake.uri, "--endpoint", server.url, "--api-model", "m", "--mode",
                                    "rephrase", "--retries", "0", "--name", "re"])
    assert res.exit_code == 0, res.output
    printed = res.output.strip().split("\n  ", 1)[1]
    st = next(s for s in lake.status()["stages"] if s["stage"] == "recaption")
    assert (st["state"], st["rows_failed"], st["retry"]) == ("current", 2, printed)  # not the caption_missing row
    res = CliRunner().invoke(main, ["status", lake.uri])
    assert f"caption_re: 2 rows failed at the endpoint (no caption; the caption_re_error column says why); " \
           f"compute them again: {printed}" in res.output
    server.failing = False
    assert CliRunner().invoke(main, shlex.split(printed)[1:]).exit_code == 0
    st = next(s for s in lake.status()["stages"] if s["stage"] == "recaption")
    assert (st["rows_failed"], st["retry"]) == (0, "")
    assert "failed at the endpoint" not in CliRunner().invoke(main, ["status", lake.uri]).output


def test_retry_errors_in_caption_mode_sends_the_images_again(server, tmp_path: Path, monkeypatch):
    """--retry-errors decodes the images of the failed rows again (the runner's readers); images
    that do not decode keep their error."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    lake = Lake.create(tmp_path / "lake")
    lake.ingest(SAMPLE_DATA, progress=False)
    kw = dict(endpoint=server.url, api_model="vlm", name="vlm", retries=0, workers=0, progress=False)
    server.status = 503  # the probe and every row
    rep = lake.recaption(**kw)
    bad = ["gravel_truncated.jpg", "notes_not_an_image.jpg"]
    assert (rep.captioned, rep.errors, rep.endpoint_errors) == (0, lake.count(), lake.count() - len(bad))
    server.status = None
    rep = lake.recaption(retry_errors=True, **kw)
    assert (rep.captioned, rep.endpoint_errors) == (lake.count() - len(bad), 0)
    got = lake.to_pandas(["key", "caption_vlm", "caption_vlm_error"]).set_index("key")
    assert got.drop(index=bad)["caption_vlm"].eq("a described image").all()
    assert got.loc[bad, "caption_vlm_error"].str.startswith("image_undecodable").all()
    assert all(m["messages"][0]["content"][1]["image_url"]["url"].startswith("data:image/jpeg;base64,")
               for m in server.requests)


def test_replies_lose_control_characters_and_a_huge_one_is_the_rows_error(server, tmp_path: Path, monkeypatch):
    """A reply was stored as it came: NUL and terminal escapes in the column, and a reply of a
    million characters in one cell. Control characters go now (white space becomes one space), and
    a reply past MAX_REPLY_CHARS is the row's error, not retried."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    lake = caption_lake(tmp_path / "lake", ["control one", "huge two", "plain three"])
    rep = lake.recaption(endpoint=server.url, api_model="m", mode="rephrase", name="re", progress=False)
    got = lake.to_pandas(["caption", "caption_re", "caption_re_error", "caption_re_tries"]).set_index("caption")
    assert got.loc["control one", "caption_re"] == "<script>x</script>[31mred line tab"
    assert pd.isna(got.loc["huge two", "caption_re"])
    assert got.loc["huge two", "caption_re_error"] == \
        "endpoint: reply too long: 1000000 characters (at most 2000; not stored)"
    assert got.loc["huge two", "caption_re_tries"] == 1
    assert got.loc["plain three", "caption_re"] == "a rewritten plain three"
    assert (rep.captioned, rep.errors) == (2, 1)


def test_retries_are_this_runs(server, tmp_path: Path, monkeypatch):
    """The report's retries summed the whole column: a run over 2 new rows said 2 retries, the
    earlier run's."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    lake = caption_lake(tmp_path / "lake", ["flaky429 one", "flaky500 two", "plain three"])
    kw = dict(endpoint=server.url, api_model="m", mode="rephrase", retries=2, name="re", progress=False)
    assert lake.recaption(**kw).retries == 2
    rows = synthetic_pairs(100, 2)
    lake.append(rows.set_column(rows.schema.get_field_index("caption"), "caption", pa.array(["plain a", "plain b"])))
    rep = lake.recaption(**kw)
    assert (rep.rows, rep.retries) == (2, 0)


def test_fewer_requests_at_a_time_continue_the_same_column(server, tmp_path: Path, monkeypatch):
    """--concurrency, --timeout, --retries and --api-key-env were in the column's config hash: a run
    resumed with fewer requests at a time (the server said 429) was refused as another config.
    They are recorded beside the config now; a column declared with them in its hash (before
    2026-12-05) continues too. What decides the captions still must match."""
    from dataclasses import asdict

    from lakecurate.captioners import EndpointSpec

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    kw = dict(endpoint=server.url, api_model="m", mode="rephrase", name="re", progress=False)
    for old_format in (False, True):
        lake = caption_lake(tmp_path / f"lake{old_format}", ["plain one", "plain two"])
        if old_format:  # how an older lakecurate hashed an endpoint's settings
            with monkeypatch.context() as m:
                m.setattr(EndpointSpec, "config", lambda self: {**asdict(self), "endpoint": self.endpoint})
                assert lake.recaption(concurrency=8, **kw).rows == 2
            assert "concurrency" in field_provenance(lake.dataset().schema.field("caption_re"))["config"]
        else:
            assert lake.recaption(concurrency=8, **kw).rows == 2
        rows = synthetic_pairs(100, 2)
        lake.append(rows.set_column(rows.schema.get_field_index("caption"), "caption", pa.array(["plain a", "plain b"])))
        rep = lake.recaption(concurrency=2, timeout=60.0, retries=1, api_key_env="OTHER_KEY", **kw)
        assert rep.rows == 2 and lake.count("caption_re IS NULL") == 0
        with pytest.raises(LakeError, match="made with another config"):
            lake.recaption(concurrency=2, max_tokens=20, **kw)
