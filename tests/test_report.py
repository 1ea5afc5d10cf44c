"""The HTML report: structure and counts against SQL, thumbnails, empty sections, a real browser."""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from lakecurate import Lake
from lakecurate.cli import main
from lakecurate.report import SECTIONS

from .conftest import SAMPLE_DATA


RECIPE = {"name": "report-test", "step": [
    {"filter": "ingest_error"}, {"filter": "caption_missing"}, {"filter": "caption_filename"},
    {"filter": "pii"}, {"filter": "duplicate"}, {"filter": "alignment", "min_percentile": 20}]}


class Page(HTMLParser):
    """The elements a test looks at: sections, elements with data-* attributes, images, links."""

    def __init__(self, html: str):
        super().__init__()
        self.sections: dict[str, dict[str, str]] = {}
        self.data: list[tuple[str, dict[str, str]]] = []
        self.imgs: list[str] = []
        self.refs: list[str] = []
        self.tags: set[str] = set()
        self.current: str | None = None
        self.per_section: dict[str, list[tuple[str, dict[str, str]]]] = {}
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        a = {k: v or "" for k, v in attrs}
        self.tags.add(tag)
        if tag == "section":
            self.sections[a["id"]] = a
            self.current = a["id"]
        if any(k.startswith("data-") for k in a):
            self.data.append((tag, a))
            self.per_section.setdefault(self.current or "", []).append((tag, a))
        if tag == "img":
            self.imgs.append(a["src"])
        for k in ("src", "href"):
            if k in a:
                self.refs.append(a[k])

    def attrs(self, section: str, key: str) -> list[dict[str, str]]:
        return [a for _, a in self.per_section.get(section, []) if key in a]


def decode(uri: str) -> Image.Image:
    head, b64 = uri.split(",", 1)
    im = Image.open(io.BytesIO(base64.b64decode(b64)))
    im.load()
    return im


@pytest.fixture(scope="module")
def curated(sample_lake_embedded: Lake, tmp_path_factory) -> Lake:
    """sample_data through the whole pipeline: ingest, embed, dedup, recipe, concepts, rebalance."""
    lake = Lake.open(shutil.copytree(sample_lake_embedded.uri, tmp_path_factory.mktemp("report") / "lake"))
    lake.dedup(["exact", "phash"], progress=False)
    lake.curate(RECIPE, progress=False)
    lake.cluster(4)
    lake.rebalance(0.6, max_repeats=3, temperature=0.2)
    return lake


@pytest.fixture(scope="module")
def report_page(curated: Lake, tmp_path_factory) -> tuple[Path, Page, object]:
    out = tmp_path_factory.mktemp("html") / "report.html"
    rep = curated.report(out)
    return out, Page(out.read_text()), rep


def test_sections_and_counts_match_sql(curated: Lake, report_page):
    out, page, rep = report_page
    assert list(page.sections) == list(SECTIONS)
    assert rep.empty_sections == ["captions", "evaluations"]  # test_recaption.py and test_evaluate.py fill those
    assert all(a["data-empty"] == "false" for n, a in page.sections.items() if n not in ("captions", "evaluations"))
    assert int(page.attrs("summary", "data-count")[0]["data-count"]) == curated.count() == rep.rows
    n_cols = len(curated.dataset().schema.names)
    assert any(a["data-count"] == str(n_cols) for a in page.attrs("summary", "data-count"))

    # the funnel: each stage counts what the stages above left, and its reasons add up to what it dropped
    steps = [int(a["data-count"]) for a in page.attrs("funnel", "data-count") if "data-reason" not in a][:5]
    left = ["true", "ingest_status <> 'error'", "ingest_status <> 'error' AND dup_keep",
            "ingest_status <> 'error' AND dup_keep AND keep", "ingest_status <> 'error' AND dup_keep AND keep AND rebalance_keep"]
    assert steps == [curated.count(w) for w in left]
    funnel = [(a["data-stage"].split(":")[0], a["data-reason"], int(a["data-count"])) for a in page.attrs("funnel", "data-reason")]
    for stage, (before, after) in zip(("ingest", "dedup", "curate", "rebalance"), zip(steps, steps[1:])):
        assert sum(n for s, _, n in funnel if s == stage) == before - after, stage
    sql = curated.sql("SELECT drop_reason, count(*) AS n FROM pairs WHERE ingest_status <> 'error' AND dup_keep "
                      "AND NOT keep GROUP BY drop_reason")
    assert {r: n for s, r, n in funnel if s == "curate"} == dict(zip(sql["drop_reason"], sql["n"]))
    # the rejected pairs: every reason the recipe dropped rows for, as SQL counts them
    sql = curated.sql("SELECT drop_reason, count(*) AS n FROM pairs WHERE drop_reason IS NOT NULL GROUP BY drop_reason")
    expected = dict(zip(sql["drop_reason"], sql["n"]))
    rejected = {a["data-reason"]: int(a["data-count"]) for a in page.attrs("rejected", "data-reason")}
    assert rejected == expected
    ingest = {a["data-reason"]: int(a["data-count"]) for a in page.attrs("funnel", "data-reason") if a["data-stage"] == "ingest"}
    assert sum(ingest.values()) == curated.count("ingest_status = 'error'") == 2

    # duplicate groups: how many, their sizes, one kept member each
    groups = curated.sql("SELECT dup_group, count(*) AS n FROM pairs WHERE dup_group IS NOT NULL "
                         "GROUP BY dup_group HAVING count(*) > 1")
    sizes = dict(zip(groups["dup_group"], groups["n"]))
    assert int(page.attrs("duplicates", "data-groups")[0]["data-groups"]) == len(sizes) > 0
    strips = page.attrs("duplicates", "data-group")
    assert {a["data-group"]: int(a["data-size"]) for a in strips} == sizes

    # concepts: size before (rebalancing's candidates: its where, keep here) and kept after rebalancing
    c = curated.sql("SELECT concept, count(*) AS n, sum(CASE WHEN rebalance_keep THEN 1 ELSE 0 END) AS kept "
                    "FROM pairs WHERE concept IS NOT NULL AND keep GROUP BY concept")
    want = {str(k): (int(n), int(kept)) for k, n, kept in zip(c["concept"], c["n"], c["kept"])}
    got = {a["data-concept"]: (int(a["data-size"]), int(a["data-kept"])) for a in page.attrs("concepts", "data-concept")}
    assert got == want
    assert int(page.attrs("flagged", "data-count")[0]["data-count"]) == curated.count("ingest_status <> 'ok'")


def test_kept_member_marked_and_thumbnails_real(report_page):
    out, page, rep = report_page
    html = out.read_text()
    dup_section = html.split('<section id="duplicates"')[1].split("</section>")[0]
    strips = dup_section.split('class="strip dup-group"')[1:]
    assert strips and all(s.count('class="badge kept"') == 1 for s in strips)
    thumbs = [s for s in page.imgs if s.startswith("data:image/jpeg")]
    assert len(thumbs) >= 20 and rep.thumbnails >= 20
    sizes = [decode(s).size for s in thumbs]
    assert max(max(s) for s in sizes) <= 112 and min(max(s) for s in sizes) >= 32
    plots = [s for s in page.imgs if s.startswith("data:image/png")]
    cut_steps = html.split('<section id="cuts"')[1].split("</section>")[0].count('class="strip cut-step"')
    assert cut_steps >= 1  # the recipe's alignment step has a cut: its what-if plot
    # concept sizes + alignment, image size and caption length histograms + one per thresholded step
    assert len(plots) == 4 + cut_steps
    assert all(decode(p).size[0] > 200 for p in plots)
    assert "no image" in html  # rows whose bytes do not decode get a placeholder, not a broken image
    # self-contained: every image is inline, every link stays in the page
    assert all(r.startswith(("data:", "#")) for r in page.refs), [r for r in page.refs if not r.startswith(("data:", "#"))]
    assert rep.bytes < 2_000_000


def test_empty_lake_sections_say_what_to_run(tmp_path: Path):
    src = tmp_path / "src"
    src.mkdir()
    Image.new("RGB", (64, 48), (20, 120, 200)).save(src / "a.jpg")
    (src / "a.txt").write_text("a blue square")
    (src / "b.jpg").write_bytes(b"not an image")
    (src / "b.txt").write_text("<script>alert('x')</script> & friends")  # shown with the flagged row
    lake = Lake.create(tmp_path / "lake")
    empty = lake.report(tmp_path / "zero.html")  # no rows at all
    assert empty.rows == 0
    lake.ingest(src, progress=False)
    rep = lake.report(tmp_path / "r.html")
    html = (tmp_path / "r.html").read_text()
    page = Page(html)
    assert set(rep.empty_sections) == {"duplicates", "alignment", "rejected", "cuts", "captions", "concepts", "evaluations"}
    for name in rep.empty_sections:
        assert page.sections[name]["data-empty"] == "true"
    for command in ("dedup", "embed", "cluster", "evaluate"):
        assert f"lakecurate {command}" in html
    assert "script" not in page.tags and "&lt;script&gt;" in html  # captions are escaped
    assert int(page.attrs("flagged", "data-count")[0]["data-count"]) == 1
    # a lake deduplicated with no duplicate group: the section says so (this crashed: NaN rows)
    lake.dedup("exact", progress=False)
    rep = lake.report(tmp_path / "deduped.html")
    assert "duplicates" not in rep.empty_sections  # computed, and it found none
    html = (tmp_path / "deduped.html").read_text()
    assert Page(html).sections["duplicates"]["data-empty"] == "false" and "No duplicates found." in html


def test_version_tag_and_sampling(curated: Lake, tmp_path: Path):
    tag = next(t for t in curated.dataset().tags.list() if t.startswith("report-test-"))
    at_tag = curated.report(tmp_path / "tag.html", version=tag)
    assert at_tag.version == curated.dataset(tag).version < curated.version
    page = Page((tmp_path / "tag.html").read_text())
    assert page.sections["concepts"]["data-empty"] == "true"  # clustering came after the tag
    a = curated.report(tmp_path / "a.html", sample_rows=10, seed=3)
    curated.report(tmp_path / "b.html", sample_rows=10, seed=3)
    assert a.sampled_rows == 10 and "random sample of 10 of" in (tmp_path / "a.html").read_text()
    strip = lambda p: re.sub(r"generated [0-9: -]+", "", p.read_text())  # noqa: E731
    assert strip(tmp_path / "a.html") == strip(tmp_path / "b.html")  # a seeded sample: the same page


def test_cli_report(curated: Lake, tmp_path: Path):
    out = tmp_path / "cli.html"
    res = CliRunner().invoke(main, ["report", curated.uri, str(out)])
    assert res.exit_code == 0, res.output
    assert f"wrote {out}" in res.output and out.stat().st_size > 10_000
    res = CliRunner().invoke(main, ["report", curated.uri, str(out), "--version", "no-such-tag"])
    assert res.exit_code != 0 and "Traceback" not in res.output


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return None


@pytest.mark.slow
def test_renders_in_headless_chromium(report_page, tmp_path: Path):
    browser = chromium()
    if browser is None:
        if os.environ.get("LAKECURATE_REQUIRE_BROWSER"):
            pytest.fail("chromium is not installed but LAKECURATE_REQUIRE_BROWSER is set (.ci/run installs it)")
        pytest.skip("chromium not installed (apt-get install chromium)")
    out, page, rep = report_page
    shot = tmp_path / "shot.png"
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
           f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,2400", f"--screenshot={shot}",
           out.resolve().as_uri()]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    im = np.asarray(Image.open(shot).convert("RGB"))
    assert im.shape[:2] == (2400, 1280)
    assert im.std() > 20  # not a blank page
    # photos were decoded and painted: a text-only page has a few hundred colours, photos thousands
    colours = len(np.unique(im.reshape(-1, 3) // 4, axis=0))
    assert colours > 3000, colours


def test_a_link_gets_the_report_in_its_target_and_a_pipe_is_refused(tmp_path: Path):
    """OUT was replaced: a link by a file (its target never written), a FIFO by a file (and, as
    root, /dev/full by a regular file)."""
    from lakecurate import LakeError

    lake = Lake.create(tmp_path / "lake")
    lake.ingest(SAMPLE_DATA, progress=False)
    target, link = tmp_path / "target.html", tmp_path / "link.html"
    link.symlink_to(target)
    lake.report(link, sample_rows=50)
    assert link.is_symlink() and target.is_file() and "<html" in target.read_text()[:200].lower()
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(LakeError, match="is not a regular file"):
        lake.report(fifo, sample_rows=50)
    assert not fifo.is_file() and fifo.exists()


def test_a_report_inside_the_lakes_table_or_state_is_refused_beside_them_written(tmp_path: Path):
    """report wrote LAKE/pairs.lance/r.html and LAKE/_lakecurate/x.html without a word (export
    refuses a destination inside the lake); the lake folder's top level is where demo writes it."""
    from lakecurate import LakeError

    lake = Lake.create(tmp_path / "lake")
    lake.ingest(SAMPLE_DATA, progress=False)
    v, before = lake.version, sorted(p for p in (tmp_path / "lake").rglob("*"))
    link = tmp_path / "link.html"
    link.symlink_to(tmp_path / "lake" / "pairs.lance" / "r.html")
    for out, top in ((tmp_path / "lake" / "pairs.lance" / "r.html", "pairs.lance"),
                     (tmp_path / "lake" / "_lakecurate" / "x.html", "_lakecurate"),
                     (tmp_path / "lake" / "pairs.lance" / "tree" / "new" / "r.html", "pairs.lance"),
                     (link, "pairs.lance")):
        with pytest.raises(LakeError, match=f"is inside '{top}' of lake .* write it outside, e.g. .*lake/report.html"):
            lake.report(out, sample_rows=50)
    res = CliRunner().invoke(main, ["report", lake.uri, str(tmp_path / "lake" / "_lakecurate" / "x.html")])
    assert res.exit_code == 1 and res.output.count("\n") == 1 and "is inside '_lakecurate'" in res.output
    assert sorted(p for p in (tmp_path / "lake").rglob("*")) == before and lake.version == v
    assert lake.report(tmp_path / "lake" / "report.html", sample_rows=50).bytes > 0


def test_the_funnel_leaves_out_what_is_not_current_and_loses_no_row(curated: Lake, tmp_path: Path):
    """After rows were added, the banner said dedup and curate were left out of the funnel, and the
    funnel counted them anyway: the new rows were on no line (their dup_keep is null). Then, with
    the lake made current again, rows rebalancing never considered (no concept) were counted as
    "over its concept's budget"."""
    lake = Lake.open(shutil.copytree(curated.uri, tmp_path / "lake"))
    more = tmp_path / "more"
    more.mkdir()
    for name in ("chelsea", "coffee"):
        shutil.copy(SAMPLE_DATA / f"{name}.jpg", more / f"{name}_again.jpg")
        (more / f"{name}_again.txt").write_text(f"the {name} once more, added later")
    lake.ingest(more, progress=False)
    lake.report(tmp_path / "r.html")
    page = Page((tmp_path / "r.html").read_text())
    stages = {a["data-stage"].split(":")[0] for a in page.attrs("funnel", "data-reason")}
    labels = [a["data-step"] for a in page.attrs("funnel", "data-step")]
    assert "dedup" not in stages and "curate" not in stages and not any("dedup" in s or "curate" in s for s in labels)
    strips = page.attrs("concepts", "data-concept")  # a rebalance not current: no kept counts (they were shown)
    assert strips and all("data-kept" not in a for a in strips)
    html = (tmp_path / "r.html").read_text()
    assert "left out of the funnel" in html and "dedup (dup_exact_group" in html and "curate (keep" in html
    # made current again: every row is counted once, and rebalancing's reasons name what it never considered
    lake.embed("tiny-random", workers=0, batch_size=8, progress=False)
    lake.dedup(["exact", "phash"], progress=False)
    lake.curate(RECIPE, progress=False)
    lake.cluster(4, recompute=True)
    lake.rebalance(0.6, max_repeats=3, temperature=0.2, where="ingest_status <> 'error'")
    lake.report(tmp_path / "r2.html")
    page = Page((tmp_path / "r2.html").read_text())
    funnel = {(a["data-stage"].split(":")[0], a["data-reason"]): int(a["data-count"]) for a in page.attrs("funnel", "data-reason")}
    # (rebalancing chose among every usable row, not only the recipe's: its line starts from them)
    over = lake.count("ingest_status <> 'error' AND concept IS NOT NULL AND NOT rebalance_keep")
    assert funnel[("rebalance", "over its concept's budget")] == over
    steps = [int(a["data-count"]) for a in page.attrs("funnel", "data-count") if "data-reason" not in a]
    assert steps[4:6] == [lake.count("ingest_status <> 'error' AND concept IS NOT NULL"), lake.count("rebalance_keep")]


def test_thresholds_badge_each_row_by_its_own_decision_and_plots_the_recipes_embedding(sample_lake_embedded: Lake,
                                                                                     tmp_path: Path):
    """A row just passing one step but dropped by another was badged "kept" (with the kept green
    border); with a second embedding on the lake, the alignment plots and cards used the
    alphabetically first one, not the one the recipe read."""
    from lakecurate import report as report_mod

    lake = Lake.open(shutil.copytree(sample_lake_embedded.uri, tmp_path / "lake"))
    lake.curate({"name": "two", "step": [{"filter": "caption_length", "min_words": 4},
                                         {"filter": "alignment", "min_percentile": 70}]}, progress=False)
    lake.embed("tiny-random", name="aaa", workers=0, batch_size=8, progress=False)  # later, and sorts first
    b = report_mod._Builder(lake, None, sample_rows=1000, thumb_px=32, seed=0, max_groups=5, per_group=4, n_low=5,
                            per_reason=4, n_concepts=4, per_concept=4, n_flagged=4)
    assert b.score == "clip_tinyrandom_score"
    decision = dict(zip(*(lake.to_pandas(["key", "keep"])[c] for c in ("key", "keep"))))
    reason = dict(zip(*(lake.to_pandas(["key", "drop_reason"])[c] for c in ("key", "drop_reason"))))
    step = next(s for s in b.cuts()["steps"] if s["reason"] == "caption_length")
    assert step["above"]
    for card in step["above"]:  # just passing caption_length: kept only when the recipe kept the row
        assert (card["badge"] == "kept") == bool(decision[card["key"]]), card
        assert card["kind"] == ("kept" if decision[card["key"]] else "drop")
    dropped = [c for c in step["above"] if c["badge"].startswith("passes; dropped: ")]
    assert dropped and all(c["badge"].startswith(f"passes; dropped: {reason[c['key']]}") for c in dropped), dropped
    assert {reason[c["key"]] for c in dropped} == {"alignment"}  # (such rows here, at the 70th percentile)


def test_a_branchs_report_says_so_and_its_hints_name_the_branch(sample_lake_embedded: Lake, tmp_path: Path):
    """A branch's report named no branch (only a hidden <meta>), and its hint commands had no
    --branch: pasted, they worked on main."""
    lake = Lake.open(shutil.copytree(sample_lake_embedded.uri, tmp_path / "lake"))
    exp = lake.create_branch("exp")
    for who, out in ((exp, "exp.html"), (lake, "main.html")):
        who.report(tmp_path / out)
    html = (tmp_path / "exp.html").read_text()
    assert 'branch <b id="branch">exp</b>' in html and "lakecurate --branch exp dedup" in html
    # its own versions, numbered on from main's: "version shown 34 of 6 versions"
    assert re.search(r"of branch exp \(its versions \d+ to \d+: \d+\); committed", html) and " versions; committed" not in html
    assert "<code>lakecurate dedup" not in html and "lakecurate curate" not in html.replace("--branch exp curate", "")
    lake.report(tmp_path / "via-main.html", version="exp")  # the branch's version read through main
    assert 'branch <b id="branch">exp</b>' in (tmp_path / "via-main.html").read_text()
    main_html = (tmp_path / "main.html").read_text()
    assert 'id="branch"' not in main_html and "lakecurate dedup" in main_html


def test_keys_are_cut_and_hidden_characters_shown(tmp_path: Path):
    """A 3,000,000-character key made an 8.8 MB report of a 2-row lake; NUL bytes went into the
    page as they were (grep called it binary), and a bidi override showed "evil\\u202egpj.exe" as
    "evilexe.jpg"."""
    import pyarrow as pa

    from lakecurate.plant import synthetic_pairs

    lake = Lake.create(tmp_path / "lake")
    rows = synthetic_pairs(0, 3)
    keys = ["k" * 3_000_000, "evil\u202egpj.exe", "a\x00nul"]
    rows = rows.set_column(rows.schema.get_field_index("key"), "key", pa.array(keys, pa.string()))
    rows = rows.set_column(rows.schema.get_field_index("caption"), "caption", pa.array(["zero\u200bwidth", "ok", "b\x00c"]))
    lake.append(rows)
    lake.curate({"name": "r", "step": [{"filter": "caption_length", "min_words": 50}]}, progress=False)  # cards
    rep = lake.report(tmp_path / "r.html")
    raw = (tmp_path / "r.html").read_bytes()
    assert len(raw) < 1_000_000 and b"\x00" not in raw and "\u202e".encode() not in raw and "\u200b".encode() not in raw
    html = raw.decode()
    assert "evil\\u202egpj.exe" in html and "zero\\u200bwidth" in html and "k" * 200 + "…" in html
    assert rep.rows == 3


def test_an_errors_only_lake_says_why_its_sections_are_empty(tmp_path: Path):
    """A lake whose every row is an ingest error, embedded and curated: the alignment section was an
    empty strip under "the pairs whose caption fits their image worst", and the thresholds section
    said the recipe "has no thresholded step" (it has six; no row reached them)."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("notes_not_an_image", "gravel_truncated"):
        shutil.copy(SAMPLE_DATA / f"{name}.jpg", src)
        shutil.copy(SAMPLE_DATA / f"{name}.txt", src)
    lake = Lake.create(tmp_path / "lake")
    lake.ingest(src, progress=False)
    lake.embed("tiny-random", workers=0, progress=False)
    lake.curate("basic", progress=False)
    lake.report(tmp_path / "r.html")
    import html

    raw = re.sub(r"<(style|script)\b.*?</\1>", "", (tmp_path / "r.html").read_text(), flags=re.S)
    text = " ".join(html.unescape(re.sub(r"<[^>]+>", " ", raw)).split())
    assert "No row has a clip_tinyrandom_score: none of the 2 rows could be embedded (see clip_tinyrandom_error)." in text
    assert "has no thresholded step" not in text
    assert ("Recipe basic's thresholded steps (caption_length, caption_repeat, image_size, aspect, blur, "
            "low_information) had no row to judge") in text


def test_report_replaces_only_a_report_unless_told_and_says_long_names_and_progress(tmp_path: Path, capsys):
    """report replaced an 8 MB Parquet file with HTML without a word; a 300-byte name was an OSError
    traceback (and OUT.tmp did not fit past 251 bytes); --progress showed nothing."""
    import json

    from lakecurate import LakeError

    lake = Lake.create(tmp_path / "lake")
    lake.ingest(SAMPLE_DATA, progress=False)
    victim = tmp_path / "victim.parquet"
    victim.write_bytes(b"PAR1 not a report PAR1")
    with pytest.raises(LakeError, match="exists and is not a lakecurate report .* pass overwrite=True to replace it"):
        lake.report(victim, sample_rows=50)
    res = CliRunner().invoke(main, ["report", lake.uri, str(victim), "--sample-rows", "50", "--json"])
    assert res.exit_code == 1 and "not a lakecurate report" in json.loads(res.stdout)["error"]
    assert victim.read_bytes() == b"PAR1 not a report PAR1" and not list(tmp_path.glob("*.tmp"))
    with pytest.raises(LakeError, match="invalid overwrite 'yes': expected True or False"):
        lake.report(victim, sample_rows=50, overwrite="yes")
    res = CliRunner().invoke(main, ["report", lake.uri, str(victim), "--sample-rows", "50", "--overwrite"])
    assert res.exit_code == 0 and "<html" in victim.read_text()[:200].lower()
    again = lake.report(victim, sample_rows=50, progress=True)  # a report: replaced as before, a bar over the sections
    assert again.bytes > 0 and f"report: {len(SECTIONS)}/{len(SECTIONS)} section (100%)" in capsys.readouterr().err
    longest = tmp_path / ("r" * 250 + ".html")  # 255 bytes: OUT.tmp would not fit
    assert lake.report(longest, sample_rows=50).bytes > 0 and longest.is_file()
    with pytest.raises(LakeError, match="its name is 305 bytes long, and the file system holds names of at most 255"):
        lake.report(tmp_path / ("r" * 300 + ".html"), sample_rows=50)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["lake", "victim.parquet", longest.name])


def test_a_file_uri_out_is_a_local_file_and_an_object_store_out_is_refused(tmp_path: Path):
    """`report LAKE file:///tmp/r.html` was refused as object storage (export took the same spelling)."""
    lake = Lake.create(tmp_path / "lake")
    lake.ingest(SAMPLE_DATA, progress=False)
    res = CliRunner().invoke(main, ["report", f"file://{tmp_path}/lake", f"file://{tmp_path}/r.html",
                                    "--sample-rows", "50"])
    assert res.exit_code == 0 and "<html" in (tmp_path / "r.html").read_text()[:200].lower(), res.output
    res = CliRunner().invoke(main, ["report", str(tmp_path / "lake"), "s3://b/r.html"])
    assert res.exit_code == 1 and "report writes a local HTML file" in res.output, res.output


def test_report_numbers_are_checked_before_any_work(tmp_path: Path):
    from lakecurate import Lake, LakeError

    lake = Lake.create(tmp_path / "lake")
    for kw, option in (({"sample_rows": "100"}, "sample_rows"), ({"sample_rows": 2.5}, "sample_rows"),
                       ({"thumb_px": 0}, "thumb_px"), ({"thumb_px": -1}, "thumb_px"),
                       ({"max_groups": -3}, "max_groups"), ({"per_group": "8"}, "per_group")):
        with pytest.raises(LakeError, match=rf"^invalid {option} "):
            lake.report(tmp_path / "r.html", **kw)
        assert not (tmp_path / "r.html").exists()


def _builder(lake: Lake, version=None, sample_rows: int = 1000):
    from lakecurate import report as report_mod

    return report_mod._Builder(lake, version, sample_rows=sample_rows, thumb_px=32, seed=0, max_groups=5, per_group=4,
                               n_low=5, per_reason=4, n_concepts=4, per_concept=4, n_flagged=4)


def _text(path: Path, section: str | None = None) -> str:
    import html as html_mod

    raw = re.sub(r"<(style|script)\b.*?</\1>", "", path.read_text(), flags=re.S)
    if section:
        raw = re.search(rf'<section id="{section}".*?</section>', raw, re.S).group(0)
    return " ".join(html_mod.unescape(re.sub(r"<[^>]+>", " ", raw)).split())


def test_the_funnel_of_a_recipe_without_a_duplicate_step_ends_at_the_views_size(curated: Lake, tmp_path: Path):
    """A recipe without a duplicate step kept duplicates dedup marked, and the funnel charged dedup
    with them all the same ("one per duplicate group" before "kept by recipe"): it ended below the
    curated view's size (118 where keep held 173)."""
    lake = Lake.open(shutil.copytree(curated.uri, tmp_path / "lake"))
    lake.curate({"name": "nodup", "step": [{"filter": "caption_length", "min_words": 3}]}, progress=False)
    assert lake.count("keep AND NOT dup_keep") > 0  # duplicates the recipe kept
    f = _builder(lake).funnel()
    labels = [s["label"] for s in f["steps"]]
    assert not any("dedup" in lbl for lbl in labels) and not any(r["stage"] == "dedup" for r in f["reasons"])
    kept = next(s["rows"] for s in f["steps"] if s["label"].startswith("kept by recipe"))
    assert kept == lake.count("keep")
    # a recipe that reads dup_keep still has dedup's line
    lake.curate(RECIPE, progress=False)
    labels = [s["label"] for s in _builder(lake).funnel()["steps"]]
    assert "one per duplicate group (dedup)" in labels


def test_the_funnel_counts_a_rebalance_of_other_rows_than_the_recipes(curated: Lake, tmp_path: Path):
    """rebalance --where dup_keep (not a subset of keep): the funnel nested rebalance_keep under keep
    and said "kept by rebalancing 70" while the view held 100."""
    lake = Lake.open(shutil.copytree(curated.uri, tmp_path / "lake"))
    lake.rebalance(0.6, max_repeats=3, temperature=0.2, where="dup_keep")
    assert lake.count("rebalance_keep AND NOT keep") > 0
    f = _builder(lake).funnel()
    steps = {s["label"]: s["rows"] for s in f["steps"]}
    kept = next(n for lbl, n in steps.items() if lbl.startswith("kept by rebalancing"))
    assert kept == lake.count("rebalance_keep")
    chose = [lbl for lbl in steps if "dup_keep" in lbl and "rebalanc" in lbl]
    assert chose and steps[chose[0]] == lake.count("concept IS NOT NULL AND dup_keep")
    # its reasons add up to what it did not keep of what it chose from
    assert sum(r["rows"] for r in f["reasons"] if r["stage"] == "rebalance") == steps[chose[0]] - kept


def test_sections_built_on_a_decision_not_current_say_so(curated: Lake, tmp_path: Path):
    """After rows were added (dedup and curate stale), the funnel left them out, but Duplicates,
    Rejected, Alignment and the concept galleries showed their counts and badges as current with no
    note, and Thresholds said "No data yet: run lakecurate curate" though curate had run."""
    lake = Lake.open(shutil.copytree(curated.uri, tmp_path / "lake"))
    more = tmp_path / "more"
    more.mkdir()
    shutil.copy(SAMPLE_DATA / "chelsea.jpg", more / "chelsea_again.jpg")
    (more / "chelsea_again.txt").write_text("the cat once more, added later")
    lake.ingest(more, progress=False)
    lake.report(tmp_path / "r.html")
    page = Page((tmp_path / "r.html").read_text())
    for section, stage in (("duplicates", "dedup"), ("rejected", "curate"), ("cuts", "curate"),
                           ("alignment", "curate"), ("concepts", "concepts|rebalance")):
        text = _text(tmp_path / "r.html", section)
        assert re.search(rf"({stage}) \([^)]*\) is (stale|behind)", text), (section, text[:300])
        assert page.sections[section].get("data-stale") == "true", section
    cuts = _text(tmp_path / "r.html", "cuts")
    assert "No data yet" not in cuts and "lakecurate curate" in cuts
    # dropped decision columns (curate stale by dedup's columns gone): the same
    lake2 = Lake.open(shutil.copytree(curated.uri, tmp_path / "lake2"))
    lake2.drop_columns(["dup_keep", "dup_group", "dup_group_size", "dup_reason"])
    lake2.report(tmp_path / "r2.html")
    assert re.search(r"curate \([^)]*\) is (stale|behind)", _text(tmp_path / "r2.html", "rejected"))


def test_reviewers_marks_the_view_ignores_are_said_and_a_review_steps_reasons_shown(curated: Lake, tmp_path: Path):
    """status warned "3 rows reviewers marked drop are still in the curated view"; the report said
    nothing of reviews at all."""
    lake = Lake.open(shutil.copytree(curated.uri, tmp_path / "lake"))
    ids = lake.sql("SELECT id FROM pairs WHERE rebalance_keep ORDER BY id LIMIT 3")["id"].tolist()
    lake.review(ids, verdict="drop", reason="watermark", by="probe")
    lake.report(tmp_path / "r.html")
    assert "3 rows reviewers marked drop are still in the curated view" in _text(tmp_path / "r.html", "funnel")
    lake.curate({"name": "reviewed", "step": [{"filter": "review"}, {"filter": "caption_length", "min_words": 3}]},
                progress=False)
    b = _builder(lake)
    strip = next(r for r in b.rejected()["reasons"] if r["reason"] == "review")
    assert strip["cards"] and all("watermark" in c["note"] for c in strip["cards"])
    assert not any("reviewers marked" in n for n in b.funnel().get("notes", []))


def test_alignment_percentiles_are_of_the_lakes_column_not_the_plot_sample(curated: Lake):
    """With --sample-rows 1 every alignment card read "0.0th percentile" (ranked in the plot sample)."""
    b = _builder(curated, sample_rows=1)
    cards = b.alignment()["cards"]
    scores = curated.sql(f"SELECT {b.score} AS s FROM pairs WHERE {b.score} IS NOT NULL")["s"].to_numpy()
    for c in cards:
        score = float(re.search(r"score (-?[0-9.]+)", c["note"]).group(1))
        pct = float(re.search(r"([0-9.]+)th percentile", c["note"]).group(1))
        assert abs(pct - 100 * np.mean(scores <= score + 5e-4)) < 100 * 2 / len(scores), c["note"]
    assert any(not c["note"].endswith("0.0th percentile") for c in cards)


def test_a_reports_version_lists_only_evaluations_recorded_by_then(curated: Lake, monkeypatch):
    """report --version V listed an evaluation recorded at a later version (of a view absent at V)."""
    import pandas as pd

    from lakecurate import evaluate as evaluate_mod

    v = curated.version
    rows = [{"eval_id": f"e{n}", "evaluated_at": pd.Timestamp(f"2026-01-0{n}", tz="UTC"), "lake_version": lv,
             "view": "keep", "baseline": "all", "arm": arm, "seed": 0, "rows": 10, "pool_rows": 10, "recipe": "r",
             "embedding": "x", "eval_set": "/e", "eval_images": 5, "eval_captions": 5, "steps": 10,
             **{m: 0.5 for m in evaluate_mod.METRICS}, "budget": 1.0, "curve_metric": None, "curve": None,
             "curve_steps": None}
            for n, lv in ((1, v - 2), (2, v)) for arm in ("view", "all")]
    monkeypatch.setattr(evaluate_mod, "evaluations", lambda lake: pd.DataFrame(rows))
    assert [r["id"] for r in _builder(curated).evaluations()["runs"]] == ["e2", "e1"]
    assert [r["id"] for r in _builder(curated, v - 1).evaluations()["runs"]] == ["e1"]
    assert _builder(curated, v - 3).evaluations() is None


def test_hints_quote_the_lake_for_a_shell_and_counts_read_right(tmp_path: Path):
    """A lake path with a quote gave hints JSON-escaped (\\"x\\"), not shell-quoted; a one-row lake
    read "From all 1 rows."; an offline_score read "No row has a offline_score"."""
    import shlex

    import pandas as pd

    d = tmp_path / "data"
    d.mkdir()
    shutil.copy(SAMPLE_DATA / "chelsea.jpg", d / "chelsea.jpg")
    (d / "chelsea.txt").write_text("a cat")
    lake = Lake.create(tmp_path / "my lake's \"x\"")
    lake.ingest(d, progress=False)
    lake.report(tmp_path / "r.html")
    text = _text(tmp_path / "r.html")
    assert f"lakecurate dedup {shlex.quote(lake.uri)}" in text and '\\"x\\"' not in text
    assert "From the 1 row." in text and "1 rows" not in text
    b = _builder(lake)
    b.score, b.names = "offline_score", b.names | {"offline_score"}
    none = {c: [] for c in ("_rowid", "key", "caption", "width", "height", "score")}
    b.sql = lambda q, **k: pd.DataFrame(none if "LIMIT" in q else {"n": [0]})  # no row scored
    assert b.alignment()["note"].startswith("No row has an offline_score")
