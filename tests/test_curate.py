"""Recipes: parsing, decisions with reasons, tags, no-op re-runs; planted junk on Flickr8k."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from lakecurate import Lake, LakeError
from lakecurate.cli import main
from lakecurate.columns import field_provenance
from lakecurate.curate import FILTERS, load_recipe
from lakecurate.plant import first_captions, plant_junk

from .conftest import SAMPLE_DATA

RECIPE = """
name = "sample"

[[step]]
filter = "ingest_error"

[[step]]
filter = "caption_missing"

[[step]]
filter = "caption_filename"
reason = "file_name_caption"

[[step]]
filter = "pii"

[[step]]
filter = "duplicate"

[[step]]
filter = "alignment"
min_percentile = 10

[privacy]
redact = true
"""


def stem(key: str) -> str:
    return Path(key).stem


@pytest.fixture
def lake_copy(sample_lake_embedded: Lake, tmp_path: Path) -> Lake:
    return Lake.open(shutil.copytree(sample_lake_embedded.uri, tmp_path / "lake"))


def test_recipe_on_sample_data(lake_copy: Lake, tmp_path: Path):
    lake = lake_copy
    path = tmp_path / "sample.toml"
    path.write_text(RECIPE)
    rep = lake.curate(path, progress=False)
    df = lake.to_pandas(["key", "caption", "keep", "drop_reason", "caption_redacted", "dup_keep", "clip_tinyrandom_score"])
    df["key"] = df["key"].map(stem)
    rows = df.set_index("key")
    assert rows.loc["gravel_truncated", "drop_reason"] == "ingest_error"
    assert rows.loc["notes_not_an_image", "drop_reason"] == "ingest_error"
    assert rows.loc["horse_no_caption", "drop_reason"] == "caption_missing"
    assert rows.loc["brick_empty_caption", "drop_reason"] == "caption_missing"
    assert rows.loc["grass_filename_caption", "drop_reason"] == "file_name_caption"  # the step's own reason
    assert rows.loc["coins_privacy", "drop_reason"] == "pii"
    assert "[email]" in rows.loc["coins_privacy", "caption_redacted"] and "@" in rows.loc["coins_privacy", "caption"]
    assert (df["keep"] == df["drop_reason"].isna()).all()
    dropped_dups = df[df["drop_reason"] == "duplicate"]
    assert len(dropped_dups) >= 1 and (dropped_dups["dup_keep"] == False).all()  # noqa: E712
    # the first failing step names the row: a duplicate that also has no caption says caption_missing
    assert rep.dropped == {r: int((df["drop_reason"] == r).sum()) for r in rep.dropped}
    assert list(rep.dropped) == ["ingest_error", "caption_missing", "file_name_caption", "pii", "duplicate", "alignment"]
    assert rep.kept == int(df["keep"].sum()) and rep.rows == len(df)
    # the alignment step drops rows under the 10th percentile of all scores in the lake
    scores = df["clip_tinyrandom_score"].dropna()
    cut = np.percentile(scores, 10)
    assert (df.loc[df["drop_reason"] == "alignment", "clip_tinyrandom_score"] < cut).all()
    # provenance and the tag: the exact set reopens at that version
    prov = field_provenance(lake.dataset().schema.field("keep"))
    assert prov["stage"] == "curate" and prov["config"]["hash"] == rep.recipe_hash
    assert rep.tag == f"sample-{rep.recipe_hash}-v{rep.version}" and rep.tag in lake.dataset().tags.list()
    kept_then = set(lake.sql("SELECT id FROM pairs WHERE keep", version=rep.tag)["id"])
    # the same recipe again: no work, the same tag
    version = lake.version
    again = lake.curate(path, progress=False)
    assert again.nothing_to_do and again.tag == rep.tag and lake.version == version
    assert again.dropped == rep.dropped and again.kept == rep.kept
    # another recipe replaces keep/drop_reason; the first result stays reachable by its tag
    other = lake.curate({"name": "lenient", "step": [{"filter": "ingest_error"}]}, progress=False)
    assert other.kept == len(df) - 2
    assert set(lake.sql("SELECT id FROM pairs WHERE keep", version=rep.tag)["id"]) == kept_then
    assert field_provenance(lake.dataset().schema.field("keep"))["config"]["recipe"]["name"] == "lenient"


def test_new_rows_are_judged_and_source_rows_stay(lake_copy: Lake, tmp_path: Path):
    lake = lake_copy
    recipe = {"name": "junk", "step": [{"filter": "caption_filename"}, {"filter": "caption_length", "min_words": 4}]}
    first = lake.curate(recipe, progress=False)
    extra = tmp_path / "extra"
    extra.mkdir()
    shutil.copy(SAMPLE_DATA / "grass.jpg", extra / "late.jpg")
    (extra / "late.txt").write_text("DSC01234.JPG")
    lake.ingest(extra, progress=False)
    second = lake.curate(recipe, progress=False)
    assert not second.nothing_to_do and second.rows == first.rows + 1
    assert second.dropped["caption_filename"] == first.dropped["caption_filename"] + 1
    assert second.tag != first.tag and lake.count() == first.rows + 1  # nothing deleted


def test_recipe_errors(tmp_path: Path, lake: Lake):
    def bad(text: str, match: str) -> None:
        p = tmp_path / "r.toml"
        p.write_text(text)
        with pytest.raises(LakeError, match=match):
            load_recipe(p)

    bad('name = "x"\n[[step]]\nfilter = "sharpnes"\n', "step 1: unknown filter 'sharpnes'; choose from")
    bad('name = "x"\n[[step]]\nfilter = "blur"\nmin = 3\n', r"step 1 \(blur\): unknown parameters \['min'\]; it takes min_sharpness")
    bad('name = "x"\n', "has no \\[\\[step\\]\\]")
    bad('name = "a b"\n[[step]]\nfilter = "pii"\n', "may hold only letters")
    bad('name = "x"\n[[step]\n', "not valid TOML")
    bad('nme = "x"\n[[step]]\nfilter = "pii"\n', "unknown keys")
    with pytest.raises(LakeError, match="built-in recipe: basic"):
        load_recipe(tmp_path / "missing.toml")
    assert load_recipe("basic").name == "basic"  # shipped with the package
    lake.ingest(SAMPLE_DATA, progress=False)
    with pytest.raises(LakeError, match="run: lakecurate embed"):
        lake.curate({"name": "a", "step": [{"filter": "alignment", "min": 0.2}]}, progress=False)


def test_every_filter_is_documented():
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    for name, f in FILTERS.items():
        assert f"`{name}`" in readme, name
        assert f.doc


def test_cli_curate(lake_copy: Lake, tmp_path: Path):
    runner = CliRunner()
    res = runner.invoke(main, ["curate", lake_copy.uri, "basic"])
    assert res.exit_code == 0, res.output
    assert "ingest_error" in res.output and "kept" in res.output and "tag basic-" in res.output
    res = runner.invoke(main, ["curate", lake_copy.uri, "basic"])
    assert "nothing to do" in res.output
    res = runner.invoke(main, ["curate", lake_copy.uri, str(tmp_path / "nope.toml")])
    assert res.exit_code == 1 and "not found" in res.output and "Traceback" not in res.output


# --------------------------------------------------------------------------- planted junk on Flickr8k
KIND_FILTER = {"filename": "caption_filename", "tiny": "image_size", "aspect": "aspect", "blurred": "blur",
               "pii": "pii", "swapped": "alignment"}


@pytest.fixture(scope="module")
def junk_lake(flickr8k: Path, tmp_path_factory):
    """Clean pairs and planted junk (seed 1; thresholds were chosen on seed 0). Swapped captions and
    the clean pairs they are judged against use only photos the offline heads never saw in training."""
    pytest.importorskip("efficientnet_lite_pytorch")
    from lakecurate import offline

    held_out = {Path(n).stem for n in json.loads(offline.RECORD.read_text())["split"]["held_out_images"]}
    captions = first_captions(flickr8k / "captions.csv")
    photos = sorted((flickr8k / "images").glob("*.jpg"))
    seen = [p for p in photos if p.stem not in held_out][:300]  # enough for 5 kinds x 40 + 100 clean
    root = tmp_path_factory.mktemp("junk")
    kinds = plant_junk([p for p in photos if p.stem in held_out] + seen, captions, root / "src", per_kind=40,
                       seed=1, swap_pool=sorted(held_out))
    lake = Lake.create(root / "lake")
    lake.ingest(root / "src", progress=False)
    lake.embed("offline", progress=False)
    return lake, kinds, held_out


@pytest.mark.slow
@pytest.mark.shared
def test_planted_junk_each_filter(junk_lake):
    lake, kinds, held_out = junk_lake
    rep = lake.curate("basic", progress=False)
    df = lake.to_pandas()
    df = df.drop(columns=["image"], errors="ignore")
    df["kind"] = [kinds[stem(k)] for k in df["key"]]
    df["__score"] = df["offline_score"]
    clean = (df["kind"] == "clean").to_numpy()
    unseen = np.array([stem(k).split("__")[0] in held_out for k in df["key"]])
    for kind, name in KIND_FILTER.items():
        f = FILTERS[name]
        params = dict(f.params)
        if name == "alignment":
            params["min"] = 0.05  # the offline default (ALIGNMENT_MIN)
        drop = f.drop(df, params)
        base = clean & unseen if name == "alignment" else clean
        recall, false_drop = drop[(df["kind"] == kind).to_numpy()].mean(), drop[base].mean()
        if name == "alignment":
            # The offline encoder (held-out AUROC ~0.94) cannot reach 0.95 recall at 5% false drops
            # on unseen photos; measured 0.675 at 0.067 on seed 0 (docs/benchmarks.md).
            assert recall >= 0.55 and false_drop <= 0.10, (name, recall, false_drop)
        else:
            assert recall >= 0.95 and false_drop <= 0.05, (name, recall, false_drop)
    # the recipe as a whole: the planted kinds are dropped, clean pairs mostly kept
    for kind in ("filename", "tiny", "aspect", "blurred", "pii", "swapped"):
        dropped = (df.loc[df["kind"] == kind, "keep"] == False).mean()  # noqa: E712
        assert dropped >= (0.95 if kind != "swapped" else 0.55), (kind, dropped)
    # basic ends with alignment min_percentile = 30 of the whole lake: most clean pairs survive
    assert 0.5 * clean.sum() < rep.kept <= clean.sum()
