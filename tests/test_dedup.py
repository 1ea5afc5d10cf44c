"""The dedup stage: hashes, group rules, columns, incremental runs; planted Flickr8k duplicates."""

from __future__ import annotations

import io
import itertools
import random
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from click.testing import CliRunner
from PIL import Image, ImageDraw, ImageEnhance, ImageOps

from lakecurate import Lake, LakeError, graph
from lakecurate import dedup as dedup_module
from lakecurate.cli import main
from lakecurate.columns import field_provenance
from lakecurate.dedup import COPY_DISTANCE, best_of_groups, equal_value_pairs, keep_rank
from lakecurate.neardup import components
from lakecurate.plant import first_captions, plant_duplicates, split_in_halves, true_pairs
from lakecurate.signals import phash_bytes, phash_pixels

from .conftest import SAMPLE_DATA, one_more_copy, refused_and_good_copies, with_an_undecodable_jpeg

COPIES = {"chelsea_copy": "chelsea", "coffee_small_q40": "coffee", "astronaut_flip": "astronaut", "camera_bright": "camera"}


def jpeg(im: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    im.convert("RGB").save(buf, "JPEG", **kw)
    return buf.getvalue()


def hamming(a: int, b: int) -> int:
    return bin(int(a) ^ int(b)).count("1")


def stem(key: str) -> str:
    return Path(key).stem


# --------------------------------------------------------------------------- pure parts
def test_phash_survives_edits_and_separates_photos():
    photos = {p.stem: p.read_bytes() for p in SAMPLE_DATA.glob("*.jpg") if "_" not in p.stem}
    with Image.open(SAMPLE_DATA / "coffee.jpg") as im:
        im.load()
        w, h = im.size
        edits = {
            "q30": jpeg(im, quality=30),
            "quarter": jpeg(im.resize((w // 4, h // 4))),
            "double": jpeg(im.resize((w * 2, h * 2))),
            "darker": jpeg(ImageEnhance.Brightness(im).enhance(0.8)),
            "brighter": jpeg(ImageEnhance.Brightness(im).enhance(1.2)),
            "png": (lambda b: (im.save(b, "PNG"), b.getvalue())[1])(io.BytesIO()),
        }
        mirror = jpeg(ImageOps.mirror(im))
    h0, hf0, _ = phash_bytes([photos["coffee"]])
    hs, _, valid = phash_bytes(list(edits.values()))
    assert valid.all()
    distances = {name: hamming(h0[0], x) for name, x in zip(edits, hs)}
    assert max(distances.values()) <= 8, distances
    hm, _, _ = phash_bytes([mirror])
    assert hamming(hf0[0], hm[0]) <= 4  # the mirror hash predicts the mirrored image's hash
    assert hamming(h0[0], hm[0]) > 8  # ... which the plain hash does not match
    others, _, _ = phash_bytes([v for k, v in photos.items() if k != "coffee"])
    assert min(hamming(h0[0], x) for x in others) > 12


def test_phash_bad_inputs_and_modes():
    rgba = Image.new("RGBA", (40, 30), (10, 200, 30, 128))
    buf = io.BytesIO()
    rgba.save(buf, "PNG")
    h, hf, valid = phash_bytes([None, b"", b"not an image", buf.getvalue(), jpeg(Image.new("L", (3, 2)))])
    assert valid.tolist() == [False, False, False, True, True]
    assert h.dtype == np.uint64 and hf.dtype == np.uint64
    g = np.random.default_rng(1).random((3, 32, 32)).astype(np.float32)
    a, _ = phash_pixels(g)
    b, _ = phash_pixels(g * 1.3 + 10)  # brightness and contrast: same bits
    assert (a == b).all()


def test_keep_rank_rule():
    score = np.array([0.30, 0.30, np.nan, 0.31, 0.30])
    pixels = np.array([100, 400, 10_000, 1, 400])
    ingested = np.array([5, 5, 1, 9, 2])
    ids = np.array(["e", "d", "c", "b", "a"])
    # score first (NaN last), then pixels, then earliest ingested, then id
    assert np.argsort(keep_rank(score, pixels, ingested, ids)).tolist() == [3, 4, 1, 0, 2]
    assert np.argsort(keep_rank(score, pixels, np.array([5, 5, 1, 9, 5]), ids)).tolist() == [3, 4, 1, 0, 2]
    assert np.argsort(keep_rank(np.full(5, np.nan), np.ones(5), np.zeros(5), ids)).tolist() == [4, 3, 2, 1, 0]


def test_groups_literal():
    i, j = equal_value_pairs(np.array(["x", None, "y", "x", "x"], dtype=object), np.array([True, False, True, True, True]))
    assert sorted(zip(i.tolist(), j.tolist())) == [(0, 3), (0, 4)]
    assert best_of_groups(np.array([-1, -1]), np.array([0, 1])).tolist() == [-1, -1]


# --------------------------------------------------------------------------- on a lake
def sample_lake(tmp_path: Path, exclude: tuple[str, ...] = ()) -> Lake:
    src = tmp_path / "src"
    src.mkdir()
    for p in SAMPLE_DATA.iterdir():
        if p.suffix != ".md" and p.stem not in exclude:
            shutil.copy(p, src / p.name)
    lake = Lake.create(tmp_path / "lake")
    lake.ingest(src, progress=False)
    return lake


def ingest_copies(lake: Lake, tmp_path: Path) -> None:
    """The sample data's COPIES, ingested as new rows (the lake was made without them)."""
    extra = tmp_path / "extra"
    extra.mkdir()
    for name in COPIES:
        shutil.copy(SAMPLE_DATA / f"{name}.jpg", extra / f"{name}.jpg")
        shutil.copy(SAMPLE_DATA / f"{name}.txt", extra / f"{name}.txt")
    lake.ingest(extra, progress=False)


def by_key(lake: Lake, cols: list[str]) -> dict:
    df = lake.to_pandas(["key", *cols])
    df["key"] = df["key"].map(stem)
    df = df.astype(object).where(df.notna(), None)  # nulls as None, whatever the dtype
    return df.set_index("key").to_dict("index")


def data_files(lake: Lake) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in (Path(lake.table_uri) / "data").iterdir()}


def test_sample_data_groups_keep_and_reasons(sample_lake_embedded: Lake, tmp_path: Path):
    lake = Lake.open(shutil.copytree(sample_lake_embedded.uri, tmp_path / "lake"))
    before = data_files(lake)
    rep = lake.dedup(["exact", "phash"], workers=0, progress=False)
    rows = by_key(lake, ["id", "dup_exact_group", "dup_pair_group", "dup_phash_group", "dup_group", "dup_group_size",
                         "dup_keep", "dup_reason", "clip_tinyrandom_score", "phash", "width", "height"])
    assert rows["chelsea_copy"]["dup_exact_group"] == rows["chelsea"]["dup_exact_group"]
    assert rows["chelsea_copy"]["dup_pair_group"] == rows["chelsea"]["dup_pair_group"]  # same caption too
    # sample_data's planted copies, plus three files that are re-encodes of a photo (README)
    expected = [{"chelsea", "chelsea_copy", "chelsea_mismatch"}, {"coffee", "coffee_small_q40"},
                {"astronaut", "astronaut_flip"}, {"camera", "camera_bright"}, {"horse", "horse_no_caption"},
                {"hubble_deep_field", "hubble_palette"}]
    found = {}
    for key, r in rows.items():
        if r["dup_group"] is not None:
            found.setdefault(r["dup_group"], set()).add(key)
    assert sorted(map(sorted, found.values())) == sorted(map(sorted, expected))
    for group in expected:
        members = [rows[k] for k in group]
        kept = [r for r in members if r["dup_keep"]]
        assert len(kept) == 1 and kept[0]["id"] == members[0]["dup_group"]
        assert all(r["dup_group_size"] == len(group) for r in members)
        score = {r["id"]: -9 if r["clip_tinyrandom_score"] is None else r["clip_tinyrandom_score"] for r in members}
        best = max(score.values())
        near = [r for r in members if score[r["id"]] >= best - dedup_module.SCORE_TIE]  # equal to the keep rule
        assert score[kept[0]["id"]] >= best - dedup_module.SCORE_TIE  # the keep rule: highest alignment score,
        assert kept[0]["width"] * kept[0]["height"] == max(r["width"] * r["height"] for r in near)  # then pixels
        for r in members:
            if not r["dup_keep"]:
                method = "exact" if r["dup_exact_group"] == kept[0]["dup_exact_group"] else "phash"
                assert r["dup_reason"] == f"{method}:{kept[0]['id']}"
    assert all(r["dup_keep"] and r["dup_reason"] is None and r["dup_group_size"] == 1
               for k, r in rows.items() if not any(k in g for g in expected))
    assert rows["notes_not_an_image"]["phash"] is None and rows["notes_not_an_image"]["dup_phash_group"] is None
    assert rep.dropped == sum(not r["dup_keep"] for r in rows.values()) == 7
    # only new files: no existing data file was rewritten
    after = data_files(lake)
    assert all(after[name] == size for name, size in before.items())
    prov = field_provenance(lake.dataset().schema.field("dup_phash_group"))
    assert prov["stage"] == "dedup" and prov["config"]["max_distance"] == 8
    # the same run again: nothing written, no new version
    version = lake.version
    again = lake.dedup(["exact", "phash"], workers=0, progress=False)
    assert lake.version == version and again.fragments_written == 0 and again.hashed == 0
    assert again.dropped == rep.dropped
    # SQL sees the columns
    df = lake.sql("SELECT dup_reason FROM pairs WHERE NOT dup_keep")
    assert len(df) == rep.dropped


def test_keep_rule_warns_when_it_ranks_by_a_test_models_score(sample_lake_embedded: Lake, tmp_path: Path):
    """Semantic dedup refuses tiny-random's similarities; the keep rule ranked members by its
    clip_tinyrandom_score without a word."""
    lake = Lake.open(shutil.copytree(sample_lake_embedded.uri, tmp_path / "lake"))
    result = CliRunner().invoke(main, ["--no-progress", "dedup", str(lake.uri), "--embedding", "clip_tinyrandom",
                                       "--method", "exact,phash,copy"])
    assert result.exit_code == 0, result.output
    assert "warning: the keep rule ranks duplicates by 'clip_tinyrandom_score', the score of a randomly " \
           "initialised test model" in result.stderr
    plain = Lake.create(tmp_path / "plain")
    plain.ingest(SAMPLE_DATA, progress=False)
    assert plain.dedup(["exact"], progress=False).warnings == []  # no embedding: ranked by pixels, no warning


def test_config_change_needs_recompute(sample_lake_embedded: Lake, tmp_path: Path):
    lake = Lake.open(shutil.copytree(sample_lake_embedded.uri, tmp_path / "lake"))
    lake.dedup(["phash"], workers=0, progress=False)
    more = Lake.open(shutil.copytree(lake.uri, tmp_path / "more"))
    more.ingest(shutil.copytree(SAMPLE_DATA, tmp_path / "again"), progress=False)  # new rows to hash
    version = more.version
    with pytest.raises(LakeError, match="--recompute"):
        more.dedup(["phash"], phash_distance=3, workers=0, progress=False)
    assert more.version == version  # refused before the new rows were hashed (2 versions were committed)
    with pytest.raises(LakeError, match="--recompute"):
        lake.dedup(["phash"], phash_distance=3, workers=0, progress=False)
    loose = lake.dedup(["phash"], phash_distance=30, recompute=True, workers=0, progress=False)
    assert field_provenance(lake.dataset().schema.field("dup_phash_group"))["config"]["max_distance"] == 30
    assert loose.dropped > 4  # at 30 bits distinct photos link too
    # keep_from changes the final columns (a derived view), not the groups
    only_exact = lake.dedup(["exact"], keep_from=["exact"], workers=0, progress=False)
    assert only_exact.dropped == 1
    assert field_provenance(lake.dataset().schema.field("dup_keep"))["config"]["keep_from"] == ["exact"]


def test_exact_pairs_and_no_embeddings(lake: Lake, tmp_path: Path):
    lake.ingest(SAMPLE_DATA, progress=False)
    other = one_more_copy(tmp_path / "other", "my cat on the sofa")
    lake.ingest(other, progress=False)
    with pytest.raises(LakeError, match="lakecurate embed"):
        lake.dedup(["semantic"], progress=False)
    with pytest.raises(LakeError, match="--phash-search all"):  # clusters need an embedding, said before writing
        lake.dedup(["phash"], phash_search="clusters", progress=False)
    with pytest.raises(LakeError, match="phash_search must be one of"):
        lake.dedup(["phash"], phash_search="nearby", progress=False)
    with pytest.raises(LakeError, match="phash_distance 100: expected an integer up to 64"):  # a Python caller's too
        lake.dedup(["phash"], phash_distance=100, progress=False)
    assert "dup_phash_group" not in lake.dataset().schema.names
    rep = lake.dedup(["exact"], progress=False)  # exact needs no embedding; no score: kept by pixels, then time
    rows = by_key(lake, ["id", "dup_exact_group", "dup_pair_group", "dup_keep", "dup_reason"])
    trio = [rows[k] for k in ("chelsea", "chelsea_copy", "cat")]
    assert len({r["dup_exact_group"] for r in trio}) == 1
    assert rows["chelsea"]["dup_pair_group"] == rows["chelsea_copy"]["dup_pair_group"] != rows["cat"]["dup_pair_group"]
    assert rep.dropped == 2 and rows["cat"]["dup_keep"] is False  # ingested last
    assert rows["cat"]["dup_reason"] == f"exact:{trio[0]['dup_exact_group']}"
    # keep_from naming only groups that neither exist nor are computed wiped every decision (all kept)
    before = lake.version
    with pytest.raises(LakeError, match="^keep_from minhash: .* has none of these groups"):
        lake.dedup(["exact"], keep_from=["minhash"], progress=False)
    assert lake.version == before and not by_key(lake, ["dup_keep"])["cat"]["dup_keep"]
    assert lake.dedup(["exact"], keep_from=["exact", "minhash"], progress=False).dropped == 2  # among those computed


def test_keep_from_takes_one_text_and_refuses_others_by_name(lake: Lake):
    """keep_from="phash" is a list of one (it was split into letters: "unknown dedup method 'p'");
    5 was a raw TypeError; [] suggested a command with empty values."""
    lake.ingest(SAMPLE_DATA, progress=False)
    before = lake.version
    with pytest.raises(LakeError, match=r"invalid keep_from 5: expected text or a list of texts"):
        lake.dedup(["exact"], keep_from=5, progress=False)
    with pytest.raises(LakeError, match=r"^keep_from is empty: name the methods") as err:
        lake.dedup(["exact"], keep_from=[], progress=False)
    assert "--method  " not in str(err.value)
    assert lake.version == before
    assert lake.dedup(["phash"], keep_from="phash", progress=False).keep_from == ["phash"]


def test_a_run_stopped_before_its_commit_is_incomplete_not_current(lake: Lake, tmp_path: Path, monkeypatch):
    """Columns declared by a run killed before its commit hold nulls that mean nothing: status said
    current. A finished run that found nothing to write is current."""
    from lakecurate import graph

    src = tmp_path / "src"
    src.mkdir()
    for i in range(2):  # undecodable: no image hash, so phash groups stay null
        (src / f"p{i}.jpg").write_bytes(b"not a jpeg" * (i + 1))
        (src / f"p{i}.txt").write_text(f"caption {i}")
    lake.ingest(src, progress=False)

    def state(column: str):
        return next(s for s in graph.states(lake) if column in s.node.columns)

    lake.dedup(["phash"], progress=False)  # a finished run with every value null: current
    assert lake.count("dup_phash_group IS NOT NULL") == 0 and state("dup_phash_group").state == "current"

    def killed(*a, **k):
        raise KeyboardInterrupt("kill -9")
    monkeypatch.setattr(dedup_module, "commit_decisions", killed)
    with pytest.raises(KeyboardInterrupt):
        lake.dedup(["exact"], progress=False)
    st = state("dup_exact_group")
    assert st.state == "incomplete" and st.rows_missing == 2 and "a dedup stopped before writing its decision" in st.reasons[0]
    assert f"dedup {lake.uri} --method exact " in st.fix and st.fix.endswith("--keep-from exact,phash")
    assert state("dup_phash_group").fix.endswith(f"dedup {lake.uri} --method phash --phash-distance 8")
    monkeypatch.undo()
    lake.dedup(["exact"], progress=False)
    assert state("dup_exact_group").state == "current"


def test_incremental_run_checks_only_new_rows(sample_lake_embedded: Lake, tmp_path: Path):
    lake = sample_lake(tmp_path, exclude=tuple(COPIES))
    lake.embed("tiny-random", workers=0, batch_size=8, progress=False)
    first = lake.dedup("all", semantic_threshold=0.995, workers=0, progress=False)  # tiny-random: all alike
    assert first.rows == 24
    old_files = data_files(lake)
    ingest_copies(lake, tmp_path)
    lake.embed("tiny-random", workers=0, batch_size=8, progress=False)
    second = lake.dedup("all", semantic_threshold=0.995, workers=0, progress=False)
    assert second.hashed == len(COPIES)
    assert all(m.new_rows == len(COPIES) for m in second.methods), [(m.method, m.new_rows) for m in second.methods]
    assert all(old_files[name] == size for name, size in data_files(lake).items() if name in old_files)
    incremental = by_key(lake, ["dup_group", "dup_keep", "dup_semantic_group", "dup_caption_group"])
    for copy, original in COPIES.items():
        assert incremental[copy]["dup_group"] == incremental[original]["dup_group"] is not None
    # the same answer as grouping everything from scratch
    fresh = Lake.open(shutil.copytree(lake.uri, tmp_path / "fresh"))
    fresh.dedup("all", semantic_threshold=0.995, recompute=True, workers=0, progress=False)
    assert by_key(fresh, ["dup_group", "dup_keep", "dup_semantic_group", "dup_caption_group"]) == incremental


def test_deleted_rows_and_new_fragments(tmp_path: Path):
    lake = sample_lake(tmp_path)
    lake.dataset().delete("key LIKE '%coffee.jpg'")
    rep = lake.dedup(["exact", "phash"], workers=0, progress=False)
    rows = by_key(lake, ["dup_keep", "dup_group"])
    assert "coffee" not in rows and rows["coffee_small_q40"]["dup_group"] is None
    assert rep.rows == len(rows)


def test_cli_dedup(sample_lake_embedded: Lake, tmp_path: Path):
    uri = str(shutil.copytree(sample_lake_embedded.uri, tmp_path / "lake"))
    runner = CliRunner()
    res = runner.invoke(main, ["dedup", uri, "--method", "exact,phash", "--workers", "0"])
    assert res.exit_code == 0, res.output
    assert "keep: " in res.output and "phash" in res.output and "dup_keep = false" in res.output
    res = runner.invoke(main, ["dedup", uri, "--method", "exact,bogus"])
    assert res.exit_code == 2 and "choose from exact, phash, semantic, caption" in res.output
    res = runner.invoke(main, ["dedup", uri, "--method", "phash", "--phash-distance", "2"])
    assert res.exit_code == 1 and "--recompute" in res.output and "Traceback" not in res.output
    # an option of a method this run does not compute, or a search's cosine without that search: taken and ignored
    version = Lake.open(uri).version
    for args, msg in ((["--copy-distance", "3"], "--copy-distance is read by the copy method, which --method exact,phash"),
                      (["--phash-cosine", "0.5"], "--phash-cosine is read by --phash-search clusters only"),
                      (["--verify-inliers", "9"], "--verify-inliers is read by the verify method")):
        res = runner.invoke(main, ["dedup", uri, "--method", "exact,phash", *args])
        assert res.exit_code == 2 and msg in res.output, (args, res.output)
    assert Lake.open(uri).version == version


def test_cli_dedup_caption_links_alone_say_what_decides(lake: Lake):
    """--method minhash on a lake without image groups: the summary printed "(groups from )"; it says
    none decide and how one would. The --method help lists every method, minhash too."""
    lake.ingest(SAMPLE_DATA, progress=False)
    res = CliRunner().invoke(main, ["--no-progress", "dedup", str(lake.uri), "--method", "minhash"])
    assert res.exit_code == 0, res.output
    assert "groups from )" not in res.output and "no groups decide: caption and minhash links are reported" in res.output
    help_text = " ".join(CliRunner().invoke(main, ["dedup", "--help"]).output.split())
    assert "Comma-separated: exact, phash, semantic, caption, minhash, copy, verify, or all" in help_text


# --------------------------------------------------------------------------- planted Flickr8k duplicates
@pytest.fixture(scope="module")
def planted_lake(flickr8k: Path, tmp_path_factory) -> tuple[Lake, list, list]:
    """All 800 photos plus planted copies of 120 (seed 1; the thresholds were chosen on seed 0),
    ingested, embedded (offline) and deduplicated in two steps: the second half arrives later."""
    pytest.importorskip("efficientnet_lite_pytorch")
    captions = first_captions(flickr8k / "captions.csv")
    root = tmp_path_factory.mktemp("planted")
    planted = plant_duplicates(sorted((flickr8k / "images").glob("*.jpg")), captions, root / "all", n_originals=120, seed=1)
    halves = split_in_halves(planted, root / "all", root)  # every other file arrives later
    lake = Lake.create(root / "lake")
    reports = []
    for h in halves:
        lake.ingest(h, progress=False)
        lake.embed("offline", progress=False)
        reports.append(lake.dedup("all", progress=False))
    return lake, planted, reports


def pair_scores(lake: Lake, planted: list, column: str) -> tuple[float, float]:
    df = lake.to_pandas(["key", column]).dropna()
    groups = df.groupby(column)["key"].apply(lambda keys: sorted(stem(k) for k in keys))
    found = {p for g in groups if len(g) > 1 for p in itertools.combinations(g, 2)}
    truth = true_pairs(planted)
    return len(truth & found) / len(truth), len(truth & found) / max(1, len(found))


@pytest.mark.slow
@pytest.mark.shared
def test_planted_duplicates_recall_and_precision(planted_lake):
    lake, planted, reports = planted_lake
    recall, precision = pair_scores(lake, planted, "dup_group")  # exact + phash + semantic
    assert recall >= 0.97 and precision >= 0.99, (recall, precision)
    rows = by_key(lake, ["dup_exact_group"])
    exact = [p for p in planted if p.edit == "exact"]
    assert len(exact) >= 20
    assert all(rows[p.key]["dup_exact_group"] == rows[p.original]["dup_exact_group"] for p in exact)  # exact recall 1.0
    exact_recall, exact_precision = pair_scores(lake, [p for p in planted if p.edit in ("exact", "original")], "dup_exact_group")
    assert exact_recall == 1.0 and exact_precision == 1.0
    # each method alone is precise, and the combination finds more than either
    for column in ("dup_phash_group", "dup_semantic_group"):
        r, p = pair_scores(lake, planted, column)
        assert p >= 0.99 and r < recall, (column, r, p)
    assert reports[1].methods[2].new_rows == len(planted) // 2  # semantic: only the second half was new


def linked(rows: dict, column: str) -> set[tuple[str, str]]:
    groups: dict[str, list[str]] = {}
    for key, r in rows.items():
        if r[column] is not None:
            groups.setdefault(r[column], []).append(key)
    return {p for g in groups.values() for p in itertools.combinations(sorted(g), 2)}


@pytest.mark.slow
@pytest.mark.shared
def test_planted_incremental_equals_from_scratch(planted_lake, tmp_path: Path):
    """Exact methods give the same groups; semantic ones differ only by the approximation of
    k-means partitions (the two runs cluster different row sets): <= 1% of linked pairs."""
    lake, _, _ = planted_lake
    cols = ["dup_exact_group", "dup_pair_group", "dup_phash_group", "dup_semantic_group", "dup_caption_group", "dup_group"]
    incremental = by_key(lake, cols)
    fresh = Lake.open(shutil.copytree(lake.uri, tmp_path / "fresh"))
    fresh.dedup("all", recompute=True, progress=False)
    scratch = by_key(fresh, cols)
    for column in ("dup_exact_group", "dup_pair_group", "dup_phash_group"):
        assert {k: r[column] for k, r in scratch.items()} == {k: r[column] for k, r in incremental.items()}, column
    for column in ("dup_semantic_group", "dup_caption_group", "dup_group"):
        a, b = linked(incremental, column), linked(scratch, column)
        assert len(a ^ b) <= 0.01 * len(a | b), (column, len(a ^ b), len(a | b))


def check_clustered_search(lake: Lake, other: Lake, planted: list, column: str, slack: float, cosine: float) -> set:
    """A hash search in clusters (``other``) links a subset of the all-pairs search's links
    (``lake``), with planted-pair recall within ``slack`` of it and no false pair; its provenance
    records the search and the cosine."""
    everywhere = linked(by_key(lake, [column]), column)
    clustered = linked(by_key(other, [column]), column)
    assert len(clustered) > 50 and clustered <= everywhere
    r_all, _ = pair_scores(lake, planted, column)
    r_c, p_c = pair_scores(other, planted, column)
    assert r_c >= r_all - slack and p_c >= 0.99, (r_all, r_c, p_c)
    prov = field_provenance(other.dataset().schema.field(column))
    assert prov["config"]["search"] == "clusters" and prov["config"]["cosine"] == cosine
    assert prov["config"]["per_row"] == dedup_module.CLUSTERED_PER_ROW
    return clustered


@pytest.mark.slow
@pytest.mark.shared
def test_phash_search_in_clusters_finds_the_planted_copies(planted_lake, tmp_path: Path, monkeypatch):
    """phash_search="clusters" (linear: near hashes among the semantic join's neighbours, identical
    hashes anywhere) links a subset of what the all-pairs search links, and on planted copies
    (edits, crops, mirrors of 120 photos) finds as many; the choice is recorded, and changing it
    needs --recompute."""
    lake, planted, _ = planted_lake
    other = Lake.open(shutil.copytree(lake.uri, tmp_path / "clusters"))
    with pytest.raises(LakeError, match="--recompute"):
        other.dedup(["exact", "phash"], phash_search="clusters", progress=False)
    other.dedup(["exact", "phash"], phash_search="clusters", recompute=True, progress=False)
    clustered = check_clustered_search(lake, other, planted, "dup_phash_group", 0.01, 0.45)
    # A row that hashed but has no vector yet is compared with every row (a few are allowed).
    new = tmp_path / "new"
    new.mkdir()
    original = next(p for p in planted if p.edit == "original")
    folder = Path(lake.uri).parent / ("a" if planted.index(original) % 2 == 0 else "b")  # split_in_halves
    im = Image.open(folder / f"{original.key}.jpg")
    im.resize((im.width // 2, im.height // 2)).save(new / "half.jpg", quality=85)
    (new / "half.txt").write_text("a smaller copy")
    other.ingest(new, progress=False)
    monkeypatch.setattr(dedup_module, "MAX_UNCLUSTERED", 0)
    with pytest.raises(LakeError, match="would decide dup_keep from the stored .*verify groups too"):
        other.dedup(["exact", "phash"], phash_search="clusters", progress=False)  # they never saw the new row
    with pytest.raises(LakeError, match="run embed first"):
        other.dedup(["exact", "phash"], phash_search="clusters", keep_from=["exact", "phash"], progress=False)
    monkeypatch.undo()
    other.dedup(["exact", "phash"], phash_search="clusters", keep_from=["exact", "phash"], progress=False)
    rows = by_key(other, ["dup_phash_group"])
    assert rows["half"]["dup_phash_group"] is not None
    assert rows["half"]["dup_phash_group"] == rows[stem(original.key)]["dup_phash_group"]

    # With semantic in the same run, one image join at the lower cosine serves both methods.
    shared = Lake.open(shutil.copytree(lake.uri, tmp_path / "shared"))
    cosines = []
    real = dedup_module.semantic_pairs
    monkeypatch.setattr(dedup_module, "semantic_pairs", lambda src, cos, **kw: cosines.append(cos) or real(src, cos, **kw))
    shared.dedup(["exact", "phash", "semantic"], phash_search="clusters", recompute=True, progress=False)
    monkeypatch.undo()
    assert cosines == [0.45]  # phash's 0.45, below semantic's 0.70
    assert linked(by_key(shared, ["dup_phash_group"]), "dup_phash_group") == clustered
    alone = Lake.open(shutil.copytree(lake.uri, tmp_path / "alone"))
    alone.dedup(["semantic"], recompute=True, progress=False)
    a, b = linked(by_key(alone, ["dup_semantic_group"]), "dup_semantic_group"), \
        linked(by_key(shared, ["dup_semantic_group"]), "dup_semantic_group")
    assert len(a) > 50 and len(a ^ b) <= 0.01 * len(a | b), (len(a ^ b), len(a | b))


def test_phash_clusters_refuse_a_meaningless_embedding(sample_lake_embedded: Lake):
    with pytest.raises(LakeError, match="--phash-search all"):
        sample_lake_embedded.dedup(["phash"], phash_search="clusters", progress=False)
    with pytest.raises(LakeError, match="--copy-search all"):
        sample_lake_embedded.dedup(["copy"], copy_search="clusters", progress=False)
    with pytest.raises(LakeError, match="copy_search must be one of"):
        sample_lake_embedded.dedup(["copy"], copy_search="near", progress=False)


@pytest.mark.slow
@pytest.mark.shared
def test_copy_search_in_clusters_links_a_subset_and_shares_the_join(planted_lake, tmp_path: Path, monkeypatch):
    """copy_search="clusters" compares the 8 copy hashes of rows the semantic join calls alike
    (identical ones anywhere): a subset of the all-pairs links that finds about as many planted
    copies; with phash in clusters and semantic in the same run, one join at the lowest cosine
    serves all three (each row's best few pairs for the hash searches, every pair from its confirm
    cosine up for semantic); the choice is recorded and changing it needs --recompute. With the
    bound binding (2 a row), the links are the same whether semantic shares the join or not, and
    semantic's groups are those of semantic alone."""
    lake, planted, _ = planted_lake
    other = Lake.open(shutil.copytree(lake.uri, tmp_path / "copy"))
    with pytest.raises(LakeError, match="--recompute"):
        other.dedup(["copy"], copy_search="clusters", progress=False)
    calls = []
    real = dedup_module.semantic_pairs

    def spy(src, cos, **kw):
        out = real(src, cos, **kw)
        calls.append((cos, kw, int(out[3].sum()) if len(out) > 3 else None))  # the ranked pairs
        return out

    monkeypatch.setattr(dedup_module, "semantic_pairs", spy)
    other.dedup(["phash", "semantic", "copy"], phash_search="clusters", copy_search="clusters", copy_cosine=0.4,
                recompute=True, progress=False)
    assert [c for c, _, _ in calls] == [0.4]  # copy's 0.4, below phash's 0.45 and semantic's 0.70
    # every pair from semantic's threshold 0.85; from its confirm cosine 0.70 those with near hashes
    assert calls[0][1]["per_row"] == dedup_module.CLUSTERED_PER_ROW and calls[0][1]["all_from"] == 0.70
    assert calls[0][1]["near"].every[0][2:] == (16, 0.70) and calls[0][1]["near"].above == 0.85
    bounded_32 = check_clustered_search(lake, other, planted, "dup_copy_group", 0.03, 0.4)

    monkeypatch.setattr(dedup_module, "CLUSTERED_PER_ROW", 2)
    runs = {}
    for name, methods in (("shared", ["phash", "semantic", "copy"]), ("alone", ["copy"]), ("semantic", ["semantic"])):
        mine = Lake.open(shutil.copytree(lake.uri, tmp_path / name))
        mine.dedup(methods, phash_search="clusters", copy_search="clusters", copy_cosine=0.4, recompute=True, progress=False)
        runs[name] = by_key(mine, ["dup_copy_group", "dup_semantic_group"])
    assert calls[1][2] < calls[0][2]  # 2 a row: fewer candidates than 32 a row
    shared, alone = linked(runs["shared"], "dup_copy_group"), linked(runs["alone"], "dup_copy_group")
    assert shared == alone and len(alone) > 20  # the same whether semantic shares the join or not
    assert alone <= bounded_32  # fewer candidates a row: a subset (here all 475: copies are a row's nearest)
    assert linked(runs["shared"], "dup_semantic_group") == linked(runs["semantic"], "dup_semantic_group")


# --------------------------------------------------------------------------- issue 17: copy hashes
def _jpeg_bytes(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.convert("RGB").save(buf, "JPEG", quality=90)
    return buf.getvalue()


def test_copy_hashes_survive_turns_mirrors_and_bars():
    from lakecurate.plant import edit_image
    from lakecurate.signals import copy_hashes

    # Photos; a repeating texture (brick.jpg) or a page of text is where a 64-bit DCT hash is unstable
    # under resampling, and is left to the semantic method.
    photos = ["coffee.jpg", "rocket.jpg", "astronaut.jpg", "hubble_deep_field.jpg", "chelsea.jpg", "clock.jpg"]
    rows, owner = [], []
    for k, name in enumerate(photos):
        with Image.open(SAMPLE_DATA / name) as im:
            im = im.convert("RGB")
            for v in [im, im.transpose(Image.Transpose.ROTATE_90), im.transpose(Image.Transpose.ROTATE_270),
                      ImageOps.mirror(im.transpose(Image.Transpose.ROTATE_180)),
                      edit_image(im, "letterbox", random.Random(k)), edit_image(im, "pillarbox", random.Random(k))]:
                rows.append(_jpeg_bytes(v))
                owner.append(k)
    h = np.array(copy_hashes(rows).column("copy_hashes").to_pylist(), dtype=np.uint64)
    dist = np.array([[min(int(np.bitwise_count(a ^ b)) for b in h[j]) for j in range(len(h))] for a in h[:, 0]])
    owner = np.array(owner)
    first = np.array([np.flatnonzero(owner == o)[0] for o in owner])
    to_original = dist[first, np.arange(len(owner))]
    assert to_original.max() <= COPY_DISTANCE, to_original  # every copy within the method's distance of its photo
    assert dist[~np.equal.outer(owner, owner)].min() > COPY_DISTANCE  # and no two different photos


def test_dedup_copy_method_groups_turned_and_barred_copies(lake: Lake, tmp_path: Path):
    from lakecurate.plant import edit_image

    src = tmp_path / "src"
    src.mkdir()
    photos = ["coffee.jpg", "rocket.jpg", "astronaut.jpg", "chelsea.jpg"]
    for k, name in enumerate(photos):
        with Image.open(SAMPLE_DATA / name) as im:
            im = im.convert("RGB")
            (src / f"p{k}.jpg").write_bytes(_jpeg_bytes(im))
            (src / f"p{k}_rot.jpg").write_bytes(_jpeg_bytes(im.transpose(Image.Transpose.ROTATE_90)))
            (src / f"p{k}_box.jpg").write_bytes(_jpeg_bytes(edit_image(im, "letterbox", random.Random(k))))
    lake.ingest(src, progress=False)
    before = lake.dedup(["exact", "phash"], progress=False)
    assert before.kept > len(photos)  # plain hashes miss the turned copies
    rep = lake.dedup(["copy"], progress=False)
    df = lake.to_pandas(["key", "dup_copy_group", "dup_group", "dup_reason"])
    df["photo"] = df["key"].str.extract(r"^(p\d)")[0]
    assert df.groupby("photo")["dup_group"].nunique().eq(1).all()  # each photo's copies: one group
    assert df["dup_group"].nunique() == len(photos)  # and different photos apart
    assert rep.kept == len(photos)
    assert df["dup_reason"].dropna().str.startswith("copy:").any()
    prov = lake.info()["columns"]
    assert any(c["name"] == "copy_hashes" and c["provenance"]["stage"] == "signals-copy" for c in prov)


def _on_one_page(im: Image.Image, share: float) -> Image.Image:
    """``im`` pasted on a product page template (white, a grey header bar, the photo at one place) at
    ``share`` of its area: different photos on one such page are different pictures."""
    page = Image.new("RGB", (800, 600), (255, 255, 255))
    ImageDraw.Draw(page).rectangle((0, 0, 800, 40), fill=(200, 200, 200))
    side = int((share * 800 * 600 * 4 / 3) ** 0.5)
    page.paste(im.convert("RGB").resize((side, side * 3 // 4)), (60, 60))
    return page


PAGE_PHOTOS = ["coffee.jpg", "rocket.jpg", "astronaut.jpg", "chelsea.jpg", "camera.jpg", "coins.jpg"]


def _reposted(page: Image.Image) -> bytes:
    """The page saved again smaller and at a lower JPEG quality: the same picture."""
    return jpeg(page.resize((page.width * 3 // 5, page.height * 3 // 5), Image.Resampling.LANCZOS), quality=60)


def test_phash_and_copy_hashes_are_of_the_picture_not_its_page_or_bars():
    from lakecurate.plant import edit_image
    from lakecurate.signals import copy_hashes

    blobs, owner = [], []
    for k, name in enumerate(PAGE_PHOTOS):
        with Image.open(SAMPLE_DATA / name) as im:
            im.load()
            page = _on_one_page(im, 0.20)
            blobs += [_jpeg_bytes(_on_one_page(im, 0.10)), _jpeg_bytes(page), _reposted(page),
                      _jpeg_bytes(im), _jpeg_bytes(edit_image(im, "letterbox", random.Random(k)))]
            # A photo at 10% of the page is ~40 pixels at the hash's working size: a repost of that
            # page is within 8 bits for 53 of 56 photos (docs/benchmarks.md), so it is no pair here.
            owner += [(k, 10), (k, 20), (k, 20), (k, 0), (k, 0)]
    same = np.array([[a == b for b in owner] for a in owner])
    other_photo = np.array([[a[0] != b[0] for b in owner] for a in owner])
    h, _, valid = phash_bytes(blobs)
    assert valid.all()
    dist = np.array([[hamming(a, b) for b in h] for a in h])
    # Different photos on one page were 4-8 bits apart (the page's hash): now as far apart as the
    # photos, beyond even the semantic method's confirm distance (16 bits at a lower cosine).
    assert dist[other_photo].min() > dedup_module.CONFIRM_DISTANCE, dist[other_photo].min()
    # A page posted again, smaller, and a photo letterboxed are the same picture to pHash.
    assert dist[same].max() <= dedup_module.PHASH_DISTANCE, dist[same].max()
    c = np.array(copy_hashes(blobs).column("copy_hashes").to_pylist(), dtype=np.uint64)
    cdist = np.array([[min(hamming(a, x) for x in c[j]) for j in range(len(c))] for a in c[:, 0]])
    assert cdist[other_photo].min() > COPY_DISTANCE, cdist[other_photo].min()
    barred = np.array([[a == b and a[1] == 0 for b in owner] for a in owner])  # a photo and its letterboxed copy
    assert cdist[barred].max() <= COPY_DISTANCE, cdist[barred].max()


def test_a_photo_on_plain_side_bands_matches_its_small_copy_and_its_letterboxed_one():
    # (helper-55) A photo between plain near-white bands: its copy at 0.3x and JPEG 70 is hashed at
    # its own size (under the 128 px working size), where the JPEG's ringing around the photo's edge
    # reaches 4-8 pixels into the bands: the box came out wider and the hash 10-16 bits away; and
    # letterboxed, the bands' columns stopped at the photo's edge resampled with the black bars
    # (20-24 bits). Hashed whole both were near, but so were different photos on one page.
    def banded(im: Image.Image) -> Image.Image:
        a = np.asarray(im.convert("RGB")).copy()
        a[:, :a.shape[1] // 4] = 245
        a[:, -(a.shape[1] // 4):] = 245
        return Image.fromarray(a)

    far = []
    for name in PAGE_PHOTOS:
        with Image.open(SAMPLE_DATA / name) as im:
            photo = banded(im)
        small = photo.resize((round(photo.width * 0.3), round(photo.height * 0.3)), Image.Resampling.BILINEAR)
        boxed = ImageOps.pad(photo, (photo.width, photo.width), color=(0, 0, 0))
        h, _, _ = phash_bytes([_jpeg_bytes(photo), jpeg(small, quality=70), _jpeg_bytes(boxed)])
        far += [hamming(h[0], h[1]), hamming(h[0], h[2])]
    assert max(far) <= dedup_module.PHASH_DISTANCE, far


def test_different_photos_on_one_page_layout_are_not_duplicates(lake: Lake, tmp_path: Path):
    src = tmp_path / "src"
    src.mkdir()
    for k, name in enumerate(PAGE_PHOTOS):
        with Image.open(SAMPLE_DATA / name) as im:
            page = _on_one_page(im, 0.20)
            (src / f"p{k}.jpg").write_bytes(_jpeg_bytes(page))
            (src / f"p{k}_again.jpg").write_bytes(_reposted(page))
            (src / f"s{k}.jpg").write_bytes(_jpeg_bytes(_on_one_page(im, 0.10)))  # and small, alone
    for f in src.glob("*.jpg"):
        f.with_suffix(".txt").write_text("product photo")
    lake.ingest(src, progress=False)
    rep = lake.dedup(["exact", "phash", "copy"], progress=False)
    df = lake.to_pandas(["key", "dup_group", "dup_keep"])
    df["photo"] = df["key"].map(lambda k: stem(k).split("_")[0][1:])  # p3, p3_again, s3: photo 3
    pages = df[df["key"].map(stem).str.startswith("p")]
    assert pages.groupby("photo")["dup_group"].nunique().eq(1).all()  # a page and its repost: one group
    assert df.groupby("dup_group")["photo"].nunique().eq(1).all()  # no two photos in one
    assert len(PAGE_PHOTOS) <= rep.kept <= 2 * len(PAGE_PHOTOS)  # the smaller page of a photo may join it


def test_lance_vectors_stream_and_take_by_position(tmp_path):
    """The dedup join reads an embedding column through LanceVectors: positions of the rows that
    have a vector, deletions and null rows skipped, in order or by position."""
    import lance
    import pyarrow as pa

    from lakecurate.columns import LanceVectors, column_valid
    from lakecurate.neardup import semantic_pairs

    rng = np.random.default_rng(0)
    n, d = 3000, 64
    x = rng.standard_normal((n, d)).astype(np.float32)
    x[1::50] = x[0::50] + 0.01 * rng.standard_normal((60, d)).astype(np.float32)  # 60 near copies
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)
    null = np.zeros(n, bool)
    null[7::13] = True
    col = pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), d, mask=pa.array(null))
    ds = lance.write_dataset(pa.table({"id": np.arange(n), "v": col}), str(tmp_path / "t.lance"), max_rows_per_file=700)
    ds.delete("id = 5 OR id = 2000")
    ds = lance.dataset(str(tmp_path / "t.lance"))
    ids = ds.to_table(columns=["id"]).column("id").to_numpy()
    valid = column_valid(ds, "v")
    assert len(valid) == n - 2 and np.array_equal(valid, ~null[ids])
    rows = np.flatnonzero(valid)
    src = LanceVectors(ds, "v", rows)
    streamed = list(src.batches(256))
    assert [s for s, _ in streamed] == list(np.cumsum([0] + [len(b) for _, b in streamed[:-1]]))
    np.testing.assert_array_equal(np.concatenate([b for _, b in streamed]), x[ids[rows]])
    parts = [b for lo in range(0, len(rows), 500) for _, b in src.batches(128, lo, lo + 500)]  # ranges, as Ray tasks read
    np.testing.assert_array_equal(np.concatenate(parts), x[ids[rows]])
    assert [s for s, _ in src.batches(128, 1000, 1100)] == [1000] and not list(src.batches(128, 5, 5))
    pick = np.array([0, 3, 400, len(rows) - 1])
    np.testing.assert_array_equal(src.take(pick), x[ids[rows[pick]]])
    i, j, cos = semantic_pairs(src, 0.9)
    ei, ej, ecos = semantic_pairs(x[ids[rows]], 0.9)
    assert len(i) >= 50
    np.testing.assert_array_equal(i, ei)
    np.testing.assert_array_equal(j, ej)
    a, b = ids[rows[i]], ids[rows[j]]
    assert ((a % 50 == 0) & (b == a + 1)).all()  # only the planted copies (row 0 of 50 and its copy)


def dense_best(n: int, pairs: list, eligible: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """The per-row reference of dedup's sparse groups: components over all rows, non-eligible rows
    in none, each group's best-ranked row."""
    from lakecurate.neardup import components

    i = np.concatenate([p[0] for p in pairs]).astype(np.int64)
    j = np.concatenate([p[1] for p in pairs]).astype(np.int64)
    label = components(n, i, j)
    label[~eligible] = -1
    return best_of_groups(label, rank)


def test_sparse_groups_and_streamed_columns_equal_the_per_row_arrays(monkeypatch, tmp_path):
    """dedup holds groups sparse (the rows in groups of two or more) and streams what it reads a
    row: equal-value pairs from 64-bit hashes sorted out of core (in memory and spilled; a hash
    shared by two values found and redone exactly), groups and their kept rows, stored groups
    (a deleted kept row: the row is new again) and reasons equal the per-row arrays they replace."""
    import lance
    import pandas as pd
    import pyarrow as pa

    from lakecurate import stream

    rng = np.random.default_rng(0)
    n = 300
    vals = rng.integers(0, 40, n).astype(str).astype(object)
    vals[rng.random(n) < 0.1] = None
    valid = np.array([v is not None for v in vals])
    ds = lance.write_dataset(pa.table({"h": pa.array(vals.tolist(), pa.string())}), str(tmp_path / "v.lance"),
                             max_rows_per_file=64)
    held = pa.table({"h": pa.array(vals.tolist(), pa.string())})
    wi, wj = equal_value_pairs(np.where(valid, vals, ""), valid)
    want = sorted(zip(wj.tolist(), wi.tolist()))
    assert len(want) > 200
    for hold in (None, 7):  # in memory, then filed into partitions on disk
        if hold:
            monkeypatch.setattr(stream, "_SPILL_KEYS", hold)
        for tbl in (held, pa.table({"x": np.arange(n)})):  # the column in the table, or streamed from the dataset
            ok, i, j = dedup_module._same_value_pairs(dedup_module._Values(ds, tbl, "h"), n)
            assert ok.tolist() == valid.tolist() and sorted(zip(j.tolist(), i.tolist())) == want
            real = pd.util.hash_array
            monkeypatch.setattr(pd.util, "hash_array", lambda v, **kw: np.zeros(len(v), np.uint64))  # every value collides
            ok, i, j = dedup_module._same_value_pairs(dedup_module._Values(ds, tbl, "h"), n)
            monkeypatch.setattr(pd.util, "hash_array", real)
            assert sorted(zip(j.tolist(), i.tolist())) == want

    class Ranks:  # the keep rule's order, given
        def rank(self, rows, groups=None):
            return order[rows]

    for seed in range(5):
        rng = np.random.default_rng(seed)
        order = rng.permutation(n)
        eligible = rng.random(n) < 0.8
        pairs = [(rng.integers(0, n, 40), rng.integers(0, n, 40)), (np.arange(0, 60, 2), np.arange(1, 61, 2))]
        g = dedup_module._group(eligible, pairs, Ranks())
        assert g.at(np.arange(n)).tolist() == dense_best(n, pairs, eligible, order).tolist()
        assert (np.diff(g.rows) > 0).all() and g.counts()[0] == len(np.unique(g.best)) >= 10

    # The keep rule's ranks read by position for some rows order them as the ranks of every row do.
    m = 200
    lake_cols = {"id": [f"{v:04x}" for v in rng.permutation(m)], "width": rng.integers(1, 4, m).astype(np.int32),
                 "height": np.full(m, 2, np.int32), "ingested_at": pa.array(rng.integers(0, 3, m), pa.timestamp("us")),
                 "content_hash": pa.array(rng.integers(0, 30, m).astype(str)),
                 "caption": pa.array(np.where(rng.random(m) < 0.2, None, rng.integers(0, 2, m).astype(str)).tolist(), pa.string()),
                 "score": pa.array(np.round(rng.random(m), 1), mask=rng.random(m) < 0.2)}
    kds = lance.write_dataset(pa.table(lake_cols), str(tmp_path / "k.lance"), max_rows_per_file=50)
    full = kds.to_table()
    score = full.column("score").to_numpy(zero_copy_only=False).astype(np.float64)
    every = keep_rank(np.where(np.isnan(score), np.nan, score), (full.column("width").to_numpy() * 2).astype(np.int64),
                      full.column("ingested_at").cast(pa.int64()).to_numpy(), np.array(lake_cols["id"]))
    ranks = dedup_module._Ranks(kds, "score")
    for seed in range(3):
        some = np.sort(np.random.default_rng(seed).choice(m, 60, replace=False))
        assert np.argsort(ranks.rank(some)).tolist() == np.argsort(every[some]).tolist()
    # Pair groups (same bytes and caption) inside exact's groups, also when every hash collides.
    none = pa.table({"x": np.arange(m)})
    ok, i, j = dedup_module._same_value_pairs(dedup_module._Values(kds, none, "content_hash"), m)
    exact = dedup_module._group(ok, [(i, j)], ranks)
    both = np.array([f"{h}|{c}" for h, c in zip(lake_cols["content_hash"].to_pylist(), lake_cols["caption"].to_pylist())], object)
    want = dense_best(m, [equal_value_pairs(both, np.ones(m, bool))], ok, every)
    got = dedup_module._pair_groups(kds, none, exact, ranks)
    assert got.at(np.arange(m)).tolist() == want.tolist() and len(got.rows) > 20
    monkeypatch.setattr(pd.util, "hash_array", lambda v, **kw: np.zeros(len(v), np.uint64))
    assert dedup_module._pair_groups(kds, none, exact, ranks).at(np.arange(m)).tolist() == want.tolist()
    monkeypatch.undo()

    ids = [f"r{k}" for k in range(6)]
    stored = ["r1", "r1", None, "r1", "r5", "r4"]  # r4 and r5 name each other; r1 keeps r0, r1 and r3
    lk = lance.write_dataset(pa.table({"id": ids, "dup_exact_group": pa.array(stored, pa.string())}),
                             str(tmp_path / "s.lance"), max_rows_per_file=2)
    lk.delete("id = 'r5'")  # r4 names a row that is gone
    got = dedup_module._stored_groups(lance.dataset(str(tmp_path / "s.lance")), ["exact"], 5)["exact"]
    assert got.missing.tolist() == [False, False, True, False, True]
    assert sorted(zip(got.rows.tolist(), got.kept.tolist())) == [(0, 1), (3, 1)]

    ids_ds = lance.write_dataset(pa.table({"id": ["r0", "r1", "r2", "r3", "r4"]}), str(tmp_path / "i.lance"))
    ids_of = dedup_module._Ids(ids_ds, np.array([4, 0, 2, 2, 1, 3]))
    assert ids_of.of(np.array([2, 0, 4])).to_pylist() == ["r2", "r0", "r4"]
    with pytest.raises(ValueError):
        dedup_module._Ids(ids_ds, np.array([4, 0])).of(np.array([3]))
    groups = {"exact": dedup_module._Groups(np.array([1, 1, 0, 0, 1], bool), np.array([0, 1]), np.array([0, 0])),
              "verify": dedup_module._Groups(np.array([1, 1, 1, 1, 0], bool), np.array([0, 1, 2, 3]), np.array([0, 0, 2, 2]))}
    dropped, kept_by = np.array([1, 3, 4]), np.array([0, 2, 2])
    got = dedup_module._reasons(ids_of, dropped, kept_by, ["exact", "verify"], groups, {"r3": 41})
    assert got.to_pylist() == ["exact:r0", "verify:r2 (41 inliers)", "linked:r2"]
    assert dedup_module._reasons(ids_of, dropped, kept_by, ["verify", "exact"], groups, {}).to_pylist()[0] == "verify:r0"


def test_a_join_filtered_by_hashes_is_not_served_as_every_pair(tmp_path: Path):
    """dedup's one image join keeps, below semantic's all_from, only the pairs with near hashes:
    asking it for every pair there is refused (a bug), the ranked near pairs and the pairs from
    all_from up are served."""
    import lance
    import pyarrow as pa

    from lakecurate import neardup
    from lakecurate.dedup import _Joins

    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 16)).astype(np.float32)
    x[150:200] = x[:50] + 0.1 * rng.standard_normal((50, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ds = lance.write_dataset(pa.table({"v": pa.FixedSizeListArray.from_arrays(pa.array(x.astype(np.float16).ravel()), 16)}),
                             str(tmp_path / "v.lance"))
    h = rng.integers(0, 2**63, (300, 1), dtype=np.int64).astype(np.uint64)
    h[150:175] = h[:25]  # half the near copies have near hashes
    joins = _Joins(ds, None, False, "local")
    joins.per_row["v"], joins.all_from["v"] = 32, 0.9
    joins.near["v"] = [(h, np.ones(300, bool), 4, 0.5)]
    rows = np.arange(300)
    a, b, _ = joins.pairs("v", rows, 0.5, ranked=True)
    assert {(r, r + 150) for r in range(25)} <= set(zip(a.tolist(), b.tolist()))
    assert (neardup.hash_distances(h, a, b) <= 4).all()
    a, b, cos = joins.pairs("v", rows, 0.9)  # every pair from all_from up: served from the same join
    assert len(a) >= 40 and (cos >= 0.9).all()
    with pytest.raises(RuntimeError, match="near hashes"):
        joins.pairs("v", rows, 0.6)


def test_a_run_that_changes_no_decision_leaves_dedup_current(sample_lake_embedded: Lake, tmp_path: Path):
    """New rows deduplicated before they were embedded, then embedded: the next run groups them by
    semantic (its column is written) and changes no decision (the final columns keep their values,
    nothing to write). The final columns must still say they read that run's groups: they stayed
    stale, and evaluate, export and the curated view refused them (only a second run fixed it)."""
    from lakecurate import graph

    lake = Lake.open(shutil.copytree(sample_lake_embedded.uri, tmp_path / "lake"))
    lake.dedup(["exact", "semantic"], semantic_threshold=0.99, progress=False)
    more = tmp_path / "more"
    more.mkdir()
    for i, shade in enumerate((40, 200)):  # two flat pictures unlike every sample photo and each other
        Image.new("RGB", (64, 48), (shade, 255 - shade, i * 90)).save(more / f"flat{i}.png")
        (more / f"flat{i}.txt").write_text(f"a flat colour number {i}")
    lake.ingest(more, progress=False)
    lake.dedup(["exact", "semantic"], semantic_threshold=0.99, progress=False)  # the new rows: no embedding yet
    lake.embed("tiny-random", workers=0, batch_size=8, progress=False)
    final = lake.dataset().to_table(columns=list(dedup_module.FINAL_COLUMNS))
    rep = lake.dedup(["exact", "semantic"], semantic_threshold=0.99, progress=False)
    semantic = next(m for m in rep.methods if m.method == "semantic")
    assert semantic.new_rows == 2 and semantic.fragments_written == 1
    assert lake.dataset().to_table(columns=list(dedup_module.FINAL_COLUMNS)).equals(final)  # no decision changed
    st = {c: s for s in graph.states(lake) for c in s.node.columns}
    assert st["dup_semantic_group"].state == "current"
    assert st["dup_keep"].state == "current", st["dup_keep"].reasons
    v = lake.version
    lake.dedup(["exact", "semantic"], semantic_threshold=0.99, progress=False)  # and a re-run commits nothing
    assert lake.version == v


def test_a_restore_brings_back_the_evidence_of_the_decision_it_restores(lake: Lake, tmp_path: Path):
    """dup_pairs is a side table rewritten by every dedup: after a restore it still held the later
    run's links (rows the lake no longer has), and the next dedup merged them in for the methods
    it did not recompute. The decision names the evidence version its run wrote."""
    import lancedb

    lake.ingest(SAMPLE_DATA, progress=False)
    lake.dedup(["exact"], progress=False)
    first = lake.dup_pairs()
    assert len(first) and set(first["method"]) == {"exact"}
    before = lake.version
    other = one_more_copy(tmp_path / "other", SAMPLE_DATA.joinpath("chelsea.txt").read_text())  # an exact copy
    lake.ingest(other, progress=False)
    lake.dedup(["exact"], progress=False)
    cat = lake.sql("SELECT id FROM pairs WHERE key LIKE '%cat%'")["id"].tolist()
    assert len(lake.dup_pairs(cat)) == 1 and len(lake.dup_pairs()) == len(first) + 1
    assert len(lake.dup_pairs(version=before)) == len(first)  # an older version: its own evidence

    lake.restore(before)
    assert lake.count() == lake.dataset(before).count_rows()
    assert lake.dup_pairs().sort_values(["a", "b"]).reset_index(drop=True).equals(
        first.sort_values(["a", "b"]).reset_index(drop=True))
    assert len(lancedb.connect(lake.uri).open_table("dup_pairs").to_pandas()) == len(first)  # LanceDB's view too
    lake.dedup(["exact", "phash"], progress=False)  # exact is incremental here: its stored links are merged
    assert lake.dup_pairs(cat).empty
    assert set(lake.dup_pairs()["method"]) <= {"exact", "phash"}


def test_cleanup_keeps_the_evidence_that_kept_versions_name(lake: Lake, tmp_path: Path):
    """Cleanup cleaned dup_pairs without regard to the versions that kept lake versions name: the
    tag's decision then answered with a later run's links (silently), and a restore of the tag left
    LanceDB's dup_pairs holding them. What a kept version names stays; where it is gone already (a
    lake cleaned by an older lakecurate), dup_pairs says so instead of answering with other links."""
    import lancedb
    from datetime import timedelta

    lake.ingest(SAMPLE_DATA, progress=False)
    lake.dedup(["exact"], progress=False)
    first = lake.dup_pairs()
    lake.tag("first")
    other = one_more_copy(tmp_path / "other", SAMPLE_DATA.joinpath("chelsea.txt").read_text())
    lake.ingest(other, progress=False)
    lake.dedup(["exact"], progress=False)
    assert len(lake.dup_pairs()) == len(first) + 1
    lake.cleanup(timedelta(0))
    assert len(lake.dup_pairs(version="first")) == len(first)  # its own links, not the later run's
    assert len(lake.dup_pairs()) == len(first) + 1
    assert lake.cleanup(timedelta(0))["old_versions"] == 0  # (nothing more to remove: it is stable)
    lake.restore("first")
    assert len(lancedb.connect(lake.uri).open_table("dup_pairs").to_pandas()) == len(first)
    # an older lakecurate's cleanup removed the version the tag names: said, not answered with others
    lake.tag("second")
    lake.delete_tag("first")
    lake.dedup(["exact", "phash"], progress=False)  # a new version of dup_pairs
    side = lake.side_dataset("dup_pairs")
    side.cleanup_old_versions(versions=[v["version"] for v in side.versions()][:-1])
    with pytest.raises(LakeError, match=r"dup_pairs version \d+\) were removed by a cleanup.*--recompute"):
        lake.dup_pairs(version="second")
    assert {"exact", "phash"} <= set(lake.dup_pairs()["method"])
    # the report at that version shows its groups without links, and says why (it said nothing)
    page = Path(lake.report(tmp_path / "r.html", version="second", progress=False).path).read_text()
    assert 'class="stale-warning links-gone">Shown without the links that made them: ' in page
    assert "were removed by a cleanup" in page and 'class="strip dup-group"' in page


def test_cleanup_keeps_the_evidence_of_every_version_left_not_of_a_prediction(lake: Lake, tmp_path: Path):
    """Cleanup predicted the lake versions it would leave (those from now - older_than on, the
    latest, the tags) and kept only their evidence: a version Lance kept though older than the cut
    (the one a branch starts from) and main's old versions, which a cleanup of a branch leaves, lost
    their links. The versions left are listed after the lake's cleanup, and what they name stays."""
    from datetime import timedelta

    lake.ingest(SAMPLE_DATA, progress=False)
    lake.dedup(["exact"], progress=False)
    start, links = lake.version, len(lake.dup_pairs())
    exp = lake.create_branch("exp")  # at start: Lance keeps that version of main for it
    exp.ingest(one_more_copy(tmp_path / "exp", "a cat on the branch"), progress=False)
    exp.dedup(["exact"], progress=False)  # the branch's decision names its own dup_pairs-exp
    lake.ingest(one_more_copy(tmp_path / "main", "a cat on main"), progress=False)
    lake.dedup(["exact"], progress=False)
    middle = lake.version
    lake.ingest(one_more_copy(tmp_path / "more", "one more cat", name="more"), progress=False)
    lake.dedup(["exact"], progress=False)
    # a cleanup of the branch leaves main's versions, older than the cut: their links stay
    exp.cleanup(timedelta(0))
    assert middle in [v["version"] for v in lake.dataset().versions()]
    assert len(lake.dup_pairs(version=start)) == links
    assert len(lake.dup_pairs(version=middle)) == links + 1
    # a cleanup of main keeps the version the branch starts from, older than the cut: its links stay
    lake.cleanup(timedelta(0))
    assert start in [v["version"] for v in lake.dataset().versions()]
    assert middle not in [v["version"] for v in lake.dataset().versions()]
    assert len(lake.dup_pairs(version=start)) == links
    assert len(exp.dup_pairs()) == links + 1


def test_an_ingest_error_row_is_in_no_group_and_never_beats_its_good_copy(tmp_path: Path):
    """Rows ingest refused (a decompression bomb under --max-pixels: "not decoded") were hashed and
    embedded anyway, joined their good copies' groups and won the keep rule on ingest time: the
    good copies were dropped as duplicates, and curate then kept no copy at all."""
    lake = refused_and_good_copies(tmp_path, ("chelsea", "horse", "rocket"))
    assert lake.count("ingest_status = 'error'") == 3
    lake.embed("tiny-random", workers=0, batch_size=8, progress=False)
    rep = lake.dedup(["exact", "phash"], progress=False)  # (tiny-random's vectors would link at random)
    rows = lake.sql("SELECT ingest_status, dup_keep, dup_group, dup_exact_group, dup_phash_group FROM pairs")
    ok, bad = rows[rows["ingest_status"] != "error"], rows[rows["ingest_status"] == "error"]
    assert ok["dup_keep"].all() and rep.dropped == 0
    assert bad[["dup_group", "dup_exact_group", "dup_phash_group"]].isna().all().all()
    assert lake.dup_pairs().empty and all(m.pairs == 0 for m in rep.methods)


@pytest.mark.parametrize("options, match", [
    ({"semantic_threshold": 85.0}, "invalid semantic_threshold 85.0"),  # a percent: linked nothing, exit 0
    ({"semantic_threshold": float("nan")}, "invalid semantic_threshold nan"),
    ({"confirm_cosine": 70}, "invalid confirm_cosine 70"),
    ({"caption_threshold": 5.0}, "invalid caption_threshold 5.0"),
    ({"minhash_threshold": 0.0}, "invalid minhash_threshold 0.0"),
    ({"semantic_threshold": 0.8, "confirm_cosine": 0.9}, "confirm_cosine 0.9 is above semantic_threshold 0.8"),
])
def test_dedup_thresholds_are_checked_for_a_python_caller(sample_lake_embedded: Lake, options: dict, match: str):
    version = sample_lake_embedded.version
    with pytest.raises(LakeError, match=match):
        sample_lake_embedded.dedup(["exact"], progress=False, **options)
    assert sample_lake_embedded.version == version


@pytest.mark.parametrize("kill_at", ["pin", "decisions", "final"])
def test_a_killed_incremental_run_leaves_no_link_lost(sample_lake_embedded: Lake, tmp_path: Path, monkeypatch,
                                                       kill_at: str):
    """The evidence was pinned after the decisions: a kill between them left the new rows grouped
    and their links out of dup_pairs for good (the re-run committed nothing and pinned nothing, and
    semantic links are searched for new rows only). It is pinned first now."""
    lake = sample_lake(tmp_path, exclude=tuple(COPIES))
    lake.embed("tiny-random", workers=0, batch_size=8, progress=False)
    kw = dict(methods=["exact", "phash", "semantic"], semantic_threshold=0.995, workers=0, progress=False)
    lake.dedup(**kw)
    ingest_copies(lake, tmp_path)
    lake.embed("tiny-random", workers=0, batch_size=8, progress=False)
    ref = Lake.open(shutil.copytree(lake.uri, tmp_path / "ref"))
    ref.dedup(**kw)

    real, calls = dedup_module.commit_decisions, []

    def killed(*a, **k):  # the first decision, or the final one after the three methods' groups
        calls.append(1)
        if kill_at == "decisions" or len(calls) == 4:
            raise KeyboardInterrupt("kill -9")
        return real(*a, **k)

    def pin_killed(*a, **k):
        raise KeyboardInterrupt("kill -9")
    if kill_at == "pin":
        monkeypatch.setattr(dedup_module, "_pin_evidence", pin_killed)
    else:
        monkeypatch.setattr(dedup_module, "commit_decisions", killed)
    with pytest.raises(KeyboardInterrupt):
        lake.dedup(**kw)
    monkeypatch.undo()
    lake.dedup(**kw)
    lake.dedup(**kw)

    def links(lk: Lake) -> set:
        p = lk.dup_pairs()
        return set(zip(p["a"], p["b"], p["method"]))
    assert links(lake) == links(ref) and links(ref)
    assert by_key(lake, ["dup_group", "dup_keep"]) == by_key(ref, ["dup_group", "dup_keep"])


def test_a_partial_run_does_not_decide_from_stale_stored_groups(sample_lake_embedded: Lake, tmp_path: Path):
    """`dedup --method exact` after new rows re-decided dup_keep from the stored phash groups, which
    never saw them: their copies stayed kept, without a word. Refused before any write, with both ways out."""
    lake = sample_lake(tmp_path, exclude=tuple(COPIES))
    lake.dedup(["exact", "phash"], progress=False)
    ingest_copies(lake, tmp_path)
    version = lake.version
    with pytest.raises(LakeError, match=r"would decide dup_keep from the stored phash groups too, and dedup "
                                        r"\(dup_phash_group\) is behind: its input phash .* incomplete.*--method "
                                        r"exact,phash, or decide without them: --keep-from exact"):
        lake.dedup(["exact"], progress=False)
    assert lake.version == version  # (not even the image signals)
    assert lake.dedup(["exact"], keep_from=["exact"], progress=False).keep_from == ["exact"]
    assert lake.dedup(["exact", "phash"], progress=False).keep_from == ["exact", "phash"]  # not the defaults not run
    rows = by_key(lake, ["dup_group"])
    assert rows["coffee_small_q40"]["dup_group"] == rows["coffee"]["dup_group"] is not None


def test_a_damaged_evidence_table_is_named_with_its_fix(lake: Lake):
    """Files of dup_pairs damaged: every later dedup (and dup_pairs()) was a pyarrow traceback
    that named neither the table nor what to do."""
    lake.ingest(SAMPLE_DATA, progress=False)
    lake.dedup(["exact"], progress=False)
    for f in (Path(lake.uri) / "dup_pairs.lance" / "data").glob("*.lance"):
        f.write_bytes(f.read_bytes()[:100])
    for call in (lambda: lake.dup_pairs(), lambda: lake.dedup(["exact"], recompute=True, progress=False)):
        with pytest.raises(LakeError, match=r"evidence table .*dup_pairs.lance .* cannot be read .* delete that folder"):
            call()
    shutil.rmtree(Path(lake.uri) / "dup_pairs.lance")
    lake.dedup(["exact"], recompute=True, progress=False)
    assert len(lake.dup_pairs()) > 0


def test_the_keep_rule_keeps_the_larger_copy_when_scores_differ_by_noise(tmp_path: Path):
    """Alignment came first, and a 3/4-size re-encode scores about +-0.01 off its original: the
    smaller copy was kept in half the groups. Scores within SCORE_TIE of the group's best tie."""
    import lance
    import pyarrow as pa

    t = pa.table({"id": ["orig", "copy", "far", "other"], "s": [0.300, 0.309, 0.25, 0.4],
                  "width": [400, 300, 800, 10], "height": [400, 300, 800, 10],
                  "ingested_at": pa.array([1, 2, 3, 4], pa.timestamp("us"))})
    ds = lance.write_dataset(t, tmp_path / "t.lance")
    g = dedup_module._group(None, [(np.array([0, 0]), np.array([1, 2]))], dedup_module._Ranks(ds, "s"))
    assert g.best.tolist() == [0, 0, 0]  # not "copy" (0.009 better), nor "far" (more pixels, 0.059 worse)
    g = dedup_module._group(None, [(np.array([2]), np.array([3]))], dedup_module._Ranks(ds, "s"))
    assert g.best.tolist() == [3, 3]  # a clearly better score still wins over pixels


def test_one_image_posted_many_times_is_a_forest_of_links_not_every_pair(tmp_path: Path):
    """One picture with one caption posted 70 times: the semantic and caption joins linked every
    pair (70 * 69 / 2 = 2,415 links each; helper-20 measured 1,999,000 semantic links and 815 MB
    for 2,000 copies). The links are a spanning forest now: 69 a method, the same one group, its
    kept member the same, and an added copy is linked once."""
    lake = Lake.create(tmp_path / "lake")
    src = tmp_path / "posts"
    src.mkdir()
    for k in range(70):
        shutil.copy(SAMPLE_DATA / "chelsea.jpg", src / f"post{k:02d}.jpg")
        (src / f"post{k:02d}.txt").write_text("the same cat, posted again")
    for name in ("coffee", "astronaut", "camera"):
        shutil.copy(SAMPLE_DATA / f"{name}.jpg", src / f"{name}.jpg")
        shutil.copy(SAMPLE_DATA / f"{name}.txt", src / f"{name}.txt")
    lake.ingest(src, progress=False)
    lake.embed("tiny-random", workers=0, batch_size=16, progress=False)
    rep = lake.dedup(["exact", "semantic", "caption"], semantic_threshold=0.99, keep_from=["exact", "semantic"],
                     progress=False)
    links = lake.dup_pairs()
    per = links.groupby("method").size().to_dict()
    assert per["exact"] == 69  # exact keeps stars
    assert per["semantic"] == 69 and per["caption"] == 69, per
    assert {m.method: m.pairs for m in rep.methods}["semantic"] == 69
    df = lake.to_pandas(["id", "key", "dup_semantic_group", "dup_caption_group", "dup_group", "dup_keep"])
    posts = df[df["key"].str.contains("post")]
    assert posts["dup_semantic_group"].nunique() == 1 and posts["dup_caption_group"].nunique() == 1
    assert posts["dup_keep"].sum() == 1 and (posts["dup_group"] == posts["dup_semantic_group"]).all()
    semantic = links[links["method"] == "semantic"]
    assert set(semantic["a"]) | set(semantic["b"]) == set(posts["id"])  # a tree over the 70 posts

    more = one_more_copy(tmp_path / "more", "the same cat, posted again", name="post70")
    lake.ingest(more, progress=False)
    lake.embed("tiny-random", workers=0, batch_size=16, progress=False)
    lake.dedup(["exact", "semantic", "caption"], semantic_threshold=0.99, keep_from=["exact", "semantic"],
               progress=False)
    per = lake.dup_pairs().groupby("method").size().to_dict()
    assert per["semantic"] == 70 and per["caption"] == 70, per  # the new copy: one link, to the group
    df = lake.to_pandas(["key", "dup_semantic_group", "dup_keep"])
    assert df[df["key"].str.contains("post")]["dup_semantic_group"].nunique() == 1


def test_pictures_without_detail_are_not_perceptual_duplicates_of_each_other(tmp_path: Path):
    """A solid colour's pHash has most of its 64 coefficients at the median, so its bits are 0
    whatever the colour: white, black, red, grey and a plain vertical gradient were one phash group
    (and one copy group), and a weak semantic link between two of them was "confirmed" by their
    hashes. Such hashes are not compared now; a photo's re-encoded copy is still linked, and an exact
    copy of a flat picture is still an exact duplicate."""
    src = tmp_path / "src"
    src.mkdir()
    for name, colour in {"white": (255, 255, 255), "black": (0, 0, 0), "red": (200, 30, 30), "grey": (128, 128, 128)}.items():
        Image.new("RGB", (320, 240), colour).save(src / f"{name}.png")
        (src / f"{name}.txt").write_text(f"a plain {name} square")
    shutil.copy(src / "white.png", src / "white_again.png")
    (src / "white_again.txt").write_text("a plain white square, again")
    ramp = np.tile(np.linspace(0, 255, 240, dtype=np.float32)[:, None], (1, 320)).astype(np.uint8)
    Image.fromarray(ramp).convert("RGB").save(src / "ramp.png")
    (src / "ramp.txt").write_text("a grey ramp")
    shutil.copy(SAMPLE_DATA / "chelsea.jpg", src / "chelsea.jpg")
    (src / "chelsea.txt").write_text("a cat")
    Image.open(SAMPLE_DATA / "chelsea.jpg").save(src / "chelsea_q30.jpg", quality=30)
    (src / "chelsea_q30.txt").write_text("the cat again")
    lake = Lake.create(tmp_path / "lake")
    lake.ingest(src, progress=False)
    lake.embed("tiny-random", workers=0, batch_size=8, progress=False)
    # semantic_threshold 0.9999 with confirm_cosine -1: a link only where the hashes are near
    rep = lake.dedup(["exact", "phash", "copy", "semantic"], semantic_threshold=0.9999, confirm_cosine=-1.0,
                     confirm_distance=12, workers=0, progress=False)
    assert rep.flat == 6  # four colours, the white copy, the ramp
    rows = by_key(lake, ["id", "dup_phash_group", "dup_copy_group", "dup_semantic_group", "dup_exact_group", "dup_group"])
    flat = ["white", "black", "red", "grey", "white_again", "ramp"]
    for name in flat:
        assert rows[name]["dup_phash_group"] is None and rows[name]["dup_copy_group"] is None, (name, rows[name])
    # only the two white files are one group, by exact (a row in no group has no dup_group)
    assert {name: rows[name]["dup_group"] for name in flat} == {
        "white": rows["white_again"]["id"], "white_again": rows["white_again"]["id"], "black": None, "red": None,
        "grey": None, "ramp": None}
    assert rows["white"]["dup_exact_group"] == rows["white_again"]["dup_exact_group"]
    for method in ("dup_phash_group", "dup_copy_group", "dup_semantic_group"):
        assert rows["chelsea"][method] == rows["chelsea_q30"][method] is not None, method
    links = lake.dup_pairs()
    white, cat = {rows["white"]["id"], rows["white_again"]["id"]}, {rows["chelsea"]["id"], rows["chelsea_q30"]["id"]}
    # the white pair by exact (and semantic: one image, cosine 1), the cat pair by phash, copy and semantic
    assert sorted((m, frozenset((a, b)) == frozenset(white)) for m, a, b in zip(links["method"], links["a"], links["b"])) == \
        [("copy", False), ("exact", True), ("phash", False), ("semantic", False), ("semantic", True)]
    assert all({a, b} in (white, cat) for a, b in zip(links["a"], links["b"]))
    result = CliRunner().invoke(main, ["--no-progress", "dedup", str(lake.uri), "--method", "phash"])
    assert result.exit_code == 0 and "6 images have too little detail for a perceptual hash" in result.output


def test_weak_semantic_links_are_checked_by_hash_inside_the_join(sample_lake_embedded, tmp_path: Path, monkeypatch):
    """Semantic links from confirm_cosine up to the threshold count only where the hashes are
    near. The join held every pair from confirm_cosine before that check: a clump of rows all
    weakly alike (a coarse encoder's dense region) was held whole, s (s - 1) / 2 pairs. The check
    is asked inside each join block now: with confirm_cosine -1 the join over the sample's ~40
    rows returns only the pairs with near hashes and the strong ones, not all ~800, and the groups
    are those of the rule applied to every pair (with a hash search sharing the join:
    test_copy_search_in_clusters_links_a_subset_and_shares_the_join)."""
    lake = Lake.open(shutil.copytree(sample_lake_embedded.uri, tmp_path / "lake"))
    returned = []
    real = dedup_module.semantic_pairs

    def spy(src, cos, **kw):
        out = real(src, cos, **kw)
        returned.append(len(out[0]))
        return out

    monkeypatch.setattr(dedup_module, "semantic_pairs", spy)
    lake.dedup(["phash", "semantic"], semantic_threshold=0.999, confirm_cosine=-1.0, confirm_distance=22,
               progress=False)
    df = lake.to_pandas(["key", "phash", "clip_tinyrandom_image", "ingest_status", "dup_semantic_group"])
    ok = df["clip_tinyrandom_image"].notna() & (df["ingest_status"] != "error")
    x = np.stack(df.loc[ok, "clip_tinyrandom_image"].to_list()).astype(np.float32)
    rows = np.flatnonzero(ok)
    cos = x @ x.T
    hashes = lake.dataset().to_table(columns=["phash", "phash_flip"])  # uint64 (pandas: float64 with nulls)
    h, hf = (hashes.column(c).fill_null(0).to_numpy() for c in ("phash", "phash_flip"))
    hashed = df["phash"].notna().to_numpy() & (np.bitwise_count(h) >= dedup_module.FLAT_HASH_BITS)
    expected, every = set(), 0
    for a, b in itertools.combinations(range(len(rows)), 2):
        i, j = rows[a], rows[b]
        every += 1
        dist = min(int(np.bitwise_count(h[i] ^ h[j])), int(np.bitwise_count(h[i] ^ hf[j])))
        if cos[a, b] >= 0.999 or (hashed[i] and hashed[j] and dist <= 22):
            expected.add((df["key"][i], df["key"][j]))
    assert 3 <= len(expected) < every / 4, (len(expected), every)  # the hashes turn most weak pairs away
    assert returned and max(returned) <= 3 * len(expected), (returned, len(expected), every)  # was `every`
    groups = {k: g for k, g in zip(df["key"], df["dup_semantic_group"])}
    got = {(a, b) for a, b in itertools.combinations(df["key"], 2) if groups[a] is not None and groups[a] == groups[b]}
    keys = list(df["key"])
    at = {k: n for n, k in enumerate(keys)}
    label = components(len(keys), np.array([at[a] for a, _ in expected]), np.array([at[b] for _, b in expected]))
    closure = {(a, b) for a, b in itertools.combinations(keys, 2) if label[at[a]] == label[at[b]]}
    assert got == closure and len(closure) >= len(expected)


def test_a_changed_setting_is_named_in_the_refusal(sample_lake_embedded, tmp_path: Path):
    """The refusal quoted the old config's JSON cut at 200 characters, mid-string, without saying
    which setting differed."""
    lake = Lake.open(shutil.copytree(sample_lake_embedded.uri, tmp_path / "lake"))
    lake.dedup(["phash"], keep_from=["phash"], progress=False)
    with pytest.raises(LakeError, match=r"made with another config \(max_distance 8 -> 3\); run with the same settings"):
        lake.dedup(["phash"], keep_from=["phash"], phash_distance=3, progress=False)


def test_vectors_with_nan_are_refused_naming_rows_and_the_command_that_recomputes_them(sample_lake_embedded: Lake,
                                                                                        tmp_path: Path):
    """NaN written into three rows' image vectors (by another writer): dedup failed with a traceback
    ("vectors are not L2-normalised (norms nan..nan)"), cluster with faiss's, and evaluate reported
    every retrieval metric as a perfect 1.0 (NaN similarities ranked every caption first)."""
    import shlex

    import lance
    import pyarrow as pa

    from .conftest import noisy_eval_set

    lake = Lake.open(shutil.copytree(sample_lake_embedded.uri, tmp_path / "lake"))
    ds = lance.dataset(lake.table_uri)
    ids = ds.to_table(columns=["id"], filter="clip_tinyrandom_image IS NOT NULL", limit=3).column("id")
    d = ds.schema.field("clip_tinyrandom_image").type.list_size
    nan = pa.FixedSizeListArray.from_arrays(pa.array(np.full(3 * d, np.nan, np.float16)), d)
    ds.merge_insert("id").when_matched_update_all().execute(pa.table({"id": ids, "clip_tinyrandom_image": nan}))
    version = lake.dataset().version
    for run in (lambda: lake.dedup("semantic", semantic_threshold=0.995, progress=False),
                lambda: lake.cluster(2),
                lambda: lake.evaluate(eval_set=noisy_eval_set(tmp_path / "eval"), view="width > 0", steps=2,
                                      seeds=1, progress=False, record=False, allow_stale=True)):  # (the merge rewrote caption too)
        with pytest.raises(LakeError, match=r"3 rows of lake .* hold a clip_tinyrandom_image vector with NaN or infinite "
                                            r"values \(p?\w+ \(.*\), .*\): .* compute them again: lakecurate embed") as e:
            run()
        assert ids[0].as_py() in str(e.value)
    assert lake.dataset().version == version  # refused before anything was written
    fix = str(e.value).split("compute them again: ")[1].split(", then")[0]
    assert fix.endswith(" --recompute")
    res = CliRunner().invoke(main, shlex.split(fix)[1:])
    assert res.exit_code == 0, res.output
    assert lake.dedup("semantic", semantic_threshold=0.995, progress=False).rows  # the command mends it


@pytest.mark.parametrize("dropped", [["dup_phash_group"], ["dup_phash_group", "dup_copy_group"]])
def test_a_method_whose_groups_another_writer_dropped_is_in_the_fix_that_makes_them_again(
        sample_lake_embedded: Lake, tmp_path: Path, dropped: list[str]):
    """(helper-55) Groups dropped with plain Lance: the method's node was gone from status, the
    decision's fix ran the other methods, status then read current, and the duplicates only that
    method found were kept again. The decision stores each method's settings: the fix runs it."""
    import shlex

    import lance

    lake = Lake.open(shutil.copytree(sample_lake_embedded.uri, tmp_path / "lake"))
    lake.dedup(["exact", "phash", "semantic", "copy"], semantic_threshold=0.995, progress=False)  # (tiny-random)
    before = by_key(lake, ["dup_keep", *dropped])
    lance.dataset(lake.table_uri).drop_columns(dropped)
    st = [s for s in lake.status()["stages"] if s["stage"] == "dedup" and s["state"] != "current"]
    assert st, lake.status()["stages"]
    fix = st[0]["fix"]
    method = shlex.split(fix)[shlex.split(fix).index("--method") + 1].split(",")
    assert {c.split("_")[1] for c in dropped} <= set(method), fix
    res = CliRunner().invoke(main, shlex.split(fix)[1:])
    assert res.exit_code == 0, res.output
    assert all(s["state"] == "current" for s in lake.status()["stages"]), lake.status()["stages"]
    assert by_key(lake, ["dup_keep", *dropped]) == before


def test_the_decision_reads_the_score_it_ranks_by(sample_lake_embedded: Lake, tmp_path: Path):
    """dup_keep ranks a group's members by the embedding's score (rank_by), but its sources left the
    score out: an embedding computed again never made the decision stale; a lake whose provenance
    was recorded before names it only in the config (rank_by), which the graph reads."""
    import json

    import lance

    from lakecurate import columns, graph

    lake = Lake.open(shutil.copytree(sample_lake_embedded.uri, tmp_path / "lake"))
    lake.dedup(["exact"], embedding="clip_tinyrandom", workers=0, progress=False)
    prov = field_provenance(lake.dataset().schema.field("dup_keep"))
    assert prov["config"]["rank_by"] == "clip_tinyrandom_score" and "clip_tinyrandom_score" in prov["source_columns"]
    assert {s.node.stage: s.state for s in graph.states(lake)}["dedup"] == "current"
    old = Lake.open(shutil.copytree(lake.uri, tmp_path / "old"))  # provenance recorded before the score was a source
    ds = lance.dataset(old.table_uri)
    recorded = {}
    for f in ds.schema:
        p = field_provenance(f, strict=False)
        if p and "dup_keep" in (p.get(columns.DECLARED_KEY) or []):
            p["source_columns"] = [c for c in p["source_columns"] if c != "clip_tinyrandom_score"]
            recorded[f.name] = {columns.PROVENANCE_KEY: json.dumps(p, sort_keys=True)}
    ds.update_field_metadata(recorded)
    for lk in (lake, old):
        lk.embed("tiny-random", recompute=True, workers=0, batch_size=8, progress=False)
        final = next(s for s in graph.states(lk) if "dup_keep" in s.node.columns)
        assert final.state in ("stale", "behind"), final.reasons


def test_dropped_groups_take_their_links_out_of_the_evidence(lake: Lake, tmp_path: Path):
    """dup_pairs after `lakecurate drop`: the phash groups dropped, the next dedup merged phash's
    stored links into the evidence of a decision that no longer has phash groups; the whole dedup
    set dropped, LanceDB's dup_pairs still listed every link (the API's view was empty)."""
    import lancedb

    other = tmp_path / "other"
    other.mkdir()
    for name in ("chelsea", "rocket"):  # exact copies: exact and phash both link them
        shutil.copy(SAMPLE_DATA / f"{name}.jpg", other / f"{name}_copy.jpg")
        (other / f"{name}_copy.txt").write_text(SAMPLE_DATA.joinpath(f"{name}.txt").read_text())
    lake.ingest(SAMPLE_DATA, progress=False)
    lake.ingest(other, progress=False)
    lake.dedup(["exact", "phash"], progress=False)
    assert {"exact", "phash"} <= set(lake.dup_pairs()["method"])
    lake.drop_columns(["dup_phash_group"])
    lake.dedup(["exact"], progress=False)
    assert set(lake.dup_pairs()["method"]) == {"exact"}
    final = [c for c in lake.dataset().schema.names if c in ("dup_keep", "dup_reason", "dup_group")]
    dedup_sets = {c for n in graph.nodes(lake.dataset()) if n.stage == "dedup" for c in n.columns}
    lake.drop_columns(sorted(dedup_sets))
    assert final and lake.dup_pairs().empty
    assert lancedb.connect(lake.uri).open_table("dup_pairs").count_rows() == 0


def test_a_dedup_waits_for_groups_another_dedup_is_deciding_now(lake: Lake, tmp_path: Path):
    """Two dedups at once with other methods (a pipeline's and a teammate's `--method copy`): the
    later found the other's groups declared and not written yet, and refused: "stopped before
    writing its decision (killed?)". A run in progress holds a claim (columns.StageRun): status says
    it is deciding them now, and a dedup that reads them waits for it, then goes on."""
    import subprocess
    import threading

    from lakecurate import columns

    lake.ingest(SAMPLE_DATA, progress=False)
    lake.dedup(["exact", "phash"], progress=False)
    field = lake.dataset().schema.field("dup_phash_group")
    prov = field_provenance(field)
    prov = {k: v for k, v in prov.items() if k != columns.DECLARED_KEY}
    # another process (a sleeper stands for it) regroups phash: declared again, its values not written yet
    other = subprocess.Popen(["sleep", "60"])
    try:
        claims = columns.FragmentClaims(lake, "run-dedup")
        claims.root.mkdir(parents=True, exist_ok=True)
        (claims.root / "f1").write_text(f"{columns.host_name()} {other.pid} abcd")
        columns.declare(lake, [pa.field("dup_phash_group", pa.string())], prov, recompute=True)
        st = next(s for s in lake.status()["stages"] if "dup_phash_group" in s["columns"])
        assert st["state"] == "incomplete" and "is deciding it now" in st["reasons"][0], st
        assert st["running"] == [f"{columns.host_name()} {other.pid}"] and "killed" not in st["reasons"][0], st

        def finish():  # the other run commits its groups, then ends
            lake.dedup(["exact", "phash"], progress=False)
            other.kill()
            other.wait()

        done = threading.Timer(1.0, finish)
        done.start()
        rep = lake.dedup(["exact"], progress=False)  # reads the stored phash groups: waits, then decides
        done.join()
        assert rep.rows == lake.count()
        assert all(s["state"] == "current" for s in lake.status()["stages"] if s["stage"] == "dedup"), lake.status()
    finally:
        if other.poll() is None:
            other.kill()
            other.wait()
    assert not columns.stage_running(lake, "dedup")


def test_no_flips_is_refused_for_a_run_without_phash_or_semantic(sample_lake_embedded: Lake, tmp_path: Path):
    """``--method copy --no-flips`` was taken and ignored (no method it ran reads flips), and the
    decision then recorded phash's groups as made without flips."""
    uri = str(shutil.copytree(sample_lake_embedded.uri, tmp_path / "lake"))
    version = Lake.open(uri).version
    for method in ("copy", "exact", "exact,copy"):
        res = CliRunner().invoke(main, ["dedup", uri, "--method", method, "--no-flips"])
        assert res.exit_code == 2, res.output
        assert f"--no-flips is read by the phash/semantic method, which --method {method} does not run" in res.output
    assert Lake.open(uri).version == version
    with pytest.raises(LakeError, match="invalid flips 'no': expected True or False"):
        Lake.open(uri).dedup("exact", flips="no", progress=False)  # a true string: mirrors were linked


def test_the_decision_records_stored_settings_for_a_method_not_run(sample_lake_embedded: Lake, tmp_path: Path):
    """dup_keep's provenance took a method's settings from this run's arguments even where that
    method was not run: phash "flips: false" while its groups were made with flips."""
    lake = Lake.open(shutil.copytree(sample_lake_embedded.uri, tmp_path / "lake"))
    lake.dedup(["exact", "phash"], workers=0, progress=False)
    rep = lake.dedup(["exact"], flips=False, phash_distance=3, workers=0, progress=False)
    ds = lake.dataset()
    stored = field_provenance(ds.schema.field("dup_phash_group"))["config"]
    recorded = field_provenance(ds.schema.field("dup_keep"))["config"]["methods"]["phash"]
    assert stored["flips"] is True and recorded["flips"] is True and recorded["max_distance"] == stored["max_distance"] == 8
    assert {m.method: m.config for m in rep.methods}["phash"]["flips"] is True


def test_rows_without_a_vector_are_named_with_the_embed_command(tmp_path: Path):
    """Rows ingested after the embed were left out of the semantic groups without a word (dup_keep
    rewritten for every row all the same; only status said semantic was behind)."""
    lake = sample_lake(tmp_path, exclude=tuple(COPIES))
    lake.embed("tiny-random", workers=0, batch_size=8, progress=False)
    ingest_copies(lake, tmp_path)
    rep = lake.dedup(["semantic", "exact"], semantic_threshold=0.995, workers=0, progress=False)
    assert any(w.startswith(f"{len(COPIES)} rows have no clip_tinyrandom_image vector (not embedded yet): semantic "
                            "could not see them; embed them: lakecurate embed ") and "--model tiny-random" in w
               for w in rep.warnings), rep.warnings
    res = CliRunner().invoke(main, ["dedup", lake.uri, "--method", "semantic,exact", "--semantic-threshold", "0.995"])
    assert res.exit_code == 0 and "rows have no clip_tinyrandom_image vector" in res.output, res.output
    lake.embed("tiny-random", workers=0, batch_size=8, progress=False)
    assert not [w for w in lake.dedup(["semantic"], semantic_threshold=0.995, progress=False).warnings if "vector" in w]


def test_rows_the_embed_could_not_embed_are_not_named_as_not_embedded_yet(tmp_path: Path):
    """A JPEG that passes ingest but cannot be decoded gets embed's error, never a vector: dedup said
    "not embedded yet ... embed them", the pasted embed computed nothing, and the warning came back."""
    src = with_an_undecodable_jpeg(tmp_path / "src", ("coffee", "rocket"))
    lake = Lake.create(tmp_path / "lake")
    lake.ingest(src, progress=False)
    lake.embed("tiny-random", workers=0, progress=False)
    assert lake.count("clip_tinyrandom_image IS NULL AND clip_tinyrandom_error IS NOT NULL") == 1
    assert lake.count("ingest_status = 'error'") == 0
    rep = lake.dedup(["semantic", "exact"], semantic_threshold=0.995, workers=0, progress=False)
    assert not [w for w in rep.warnings if "not embedded yet" in w], rep.warnings


def test_recompute_takes_numpy_bools_and_refuses_numbers_in_one_line():
    from lakecurate.dedup import recomputed_methods

    assert recomputed_methods(["exact", "phash"], np.True_) == {"exact", "phash"}
    assert recomputed_methods(["exact", "phash"], np.False_) == set()
    for bad in (1, 2.5, None):  # (1 was "'int' object is not iterable", a TypeError)
        with pytest.raises(LakeError, match="recompute must be true, false or a list of method names"):
            recomputed_methods(["exact"], bad)
