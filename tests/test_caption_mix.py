"""Export with a caption mix: the chosen caption per row follows the recorded seed, both-as-samples
doubles the rows, and WebDataset and Parquet readers load what was written."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from lakecurate import Lake, LakeError
from lakecurate.cli import main
from lakecurate.export import mix_choice
from lakecurate.plant import synthetic_pairs


@pytest.fixture
def two_captions(tmp_path: Path) -> Lake:
    lake = Lake.create(tmp_path / "lake")
    rows = synthetic_pairs(0, 40)
    caps = [f"original {i}" for i in range(40)]
    lake.append(rows.set_column(rows.schema.get_field_index("caption"), "caption", pa.array(caps)))
    lake.add_feature("caption_syn", synthetic, inputs=["caption"], type="string", progress=False)
    return lake


def synthetic(batch: pa.RecordBatch) -> pa.Array:
    """A stand-in synthetic caption column; some rows have none (as a recaption error leaves them)."""
    out = []
    for c in batch["caption"].to_pylist():
        n = int(c.split()[-1])
        out.append(None if n % 10 == 3 else f"synthetic {n}")
    return pa.array(out, pa.string())


def test_choice_follows_the_seed_and_falls_back(two_captions: Lake, tmp_path: Path):
    rep = two_captions.export(tmp_path / "mix.parquet", "parquet", caption_mix={"caption": 0.5, "caption_syn": 0.5},
                              mix_seed=7)
    t = pq.read_table(tmp_path / "mix.parquet").to_pandas()
    assert len(t) == rep.samples == 40 and set(t["caption_source"]) == {"caption", "caption_syn"}
    want = mix_choice(t["id"].tolist(), {"caption": 0.5, "caption_syn": 0.5}, 7)
    for r, k in zip(t.itertuples(), want):
        n = int(r.id[1:])
        if k == 1 and n % 10 != 3:
            assert r.caption == f"synthetic {n}" and r.caption_source == "caption_syn"
        else:  # chosen the original, or the synthetic one is missing: the original
            assert r.caption == f"original {n}" and r.caption_source == "caption"
    manifest = json.loads((tmp_path / "mix.parquet.manifest.json").read_text())["caption_mix"]
    assert manifest["seed"] == 7 and manifest["mode"] == "choose"
    assert manifest["samples_per_column"] == t["caption_source"].value_counts().to_dict()
    assert manifest["fallbacks"] == sum(1 for r, k in zip(t.itertuples(), want) if k == 1 and int(r.id[1:]) % 10 == 3)
    other = two_captions.export(tmp_path / "seed8.parquet", "parquet", caption_mix="caption=0.5,caption_syn=0.5",
                                mix_seed=8)
    assert other.samples == 40
    assert pq.read_table(tmp_path / "seed8.parquet")["caption"].to_pylist() != t["caption"].tolist()


def test_both_doubles_rows_and_webdataset_loads(two_captions: Lake, tmp_path: Path):
    import webdataset as wds

    res = CliRunner().invoke(main, ["export", two_captions.uri, str(tmp_path / "wds"), "--caption-mix",
                                    "caption=1,caption_syn=1", "--caption-mix-both", "--json"])
    assert res.exit_code == 0, res.output
    samples = list(wds.WebDataset(str(tmp_path / "wds" / "shard-000000.tar"), shardshuffle=False).decode())
    assert len(samples) == 40 + 36  # every row twice, but for the 4 rows without a synthetic caption
    sources = [json.loads(s["json"]) if isinstance(s["json"], (bytes, str)) else s["json"] for s in samples]
    by_id = {}
    for meta, s in zip(sources, samples):
        by_id.setdefault(meta["id"], []).append((meta["caption_source"], s["txt"]))
    assert sorted(by_id["p0000001"]) == [("caption", "original 1"), ("caption_syn", "synthetic 1")]
    assert by_id["p0000003"] == [("caption", "original 3")]
    manifest = json.loads((tmp_path / "wds" / "manifest.json").read_text())
    assert manifest["caption_mix"]["mode"] == "both" and manifest["samples"] == 76 and manifest["rows"] == 40


@pytest.mark.parametrize("kwargs,match", [
    ({"caption_mix": "caption=0.5,caption_nope=0.5"}, "no column 'caption_nope'"),
    ({"caption_mix": "caption=-1"}, "weights >= 0"),
    ({"caption_mix": "caption=0"}, "above 0"),
    ({"caption_mix": "caption=1", "caption": "caption_syn"}, "either caption or caption_mix"),
    ({"mix_both": True}, "^mix_both needs caption_mix$"),
    ({"caption_mix": "caption=1,id=1"}, "metadata, not a caption"),
    ({"caption_mix": "caption=1,byte_size=1"}, "not text"),
    # the seed was not checked: "a" was recorded in the manifest, -3 and 2**70 taken, one without a mix ignored
    *(({"caption_mix": "caption=1", "mix_seed": bad}, r"^invalid mix_seed .*: expected an integer")
      for bad in ("a", 1.5, None, -3, 2**70)),
    ({"mix_seed": 3}, "^mix_seed 3 needs caption_mix "),
])
def test_bad_mixes_are_refused_before_writing(two_captions: Lake, tmp_path: Path, kwargs, match):
    with pytest.raises(LakeError, match=match):
        two_captions.export(tmp_path / "x", "webdataset", **kwargs)
    assert not (tmp_path / "x").exists()


def test_both_warns_of_the_rows_whose_mixed_captions_are_all_null(two_captions: Lake, tmp_path: Path):
    """--caption-mix-both left out the rows with no non-null caption in the mix without a word."""
    res = CliRunner().invoke(main, ["export", two_captions.uri, str(tmp_path / "wds"), "--caption-mix",
                                    "caption=0,caption_syn=1", "--caption-mix-both"])
    assert res.exit_code == 0, res.output
    assert "4 rows of the view left out: every caption of the --caption-mix (caption, caption_syn) is null" in res.output
    manifest = json.loads((tmp_path / "wds" / "manifest.json").read_text())
    assert manifest["samples"] == 36 and manifest["caption_mix"]["rows_without_caption"] == 4
    rep = two_captions.export(tmp_path / "all", "webdataset", caption_mix="caption=1,caption_syn=1", mix_both=True)
    assert rep.samples == 76 and rep.stale == []  # every row has a caption: no warning
