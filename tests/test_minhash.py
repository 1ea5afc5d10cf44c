"""Near-duplicate captions by MinHash LSH: templated alt text grouped, distinct captions not."""

from __future__ import annotations

import csv

import numpy as np
import pyarrow as pa
import pytest

from lakecurate import Lake
from lakecurate.neardup import caption_pairs, components
from lakecurate.plant import CAPTION_TEMPLATES, plant_templates, synthetic_pairs

DISTINCT = [
    "a dog runs on the grass", "two children play in a fountain", "a red bus parked by the station",
    "an old man reading a newspaper on a bench", "surfer riding a large wave at sunset",
    "a plate of pasta with tomato sauce", "snow covered mountains above a lake", "a cat asleep on a windowsill",
]


def groups(caps, threshold=0.35):
    i, j, _ = caption_pairs(caps, threshold)
    label = components(len(caps), i, j)
    return label, np.bincount(label, minlength=len(caps))[label]


def test_templates_grouped_distinct_not_and_no_chains():
    subjects = ["a red car", "mountain lake", "happy family at the beach", "business meeting", "fresh fruit",
                "vintage camera", "city skyline at night", "a golden retriever puppy", "coffee cup", "old bridge"]
    templated = [f"Stock photo of {x}, royalty free" for x in subjects]
    caps = DISTINCT + templated + [None, "", "   "]
    label, size = groups(caps)
    n = len(DISTINCT)
    t = label[n:n + len(subjects)]
    big = np.bincount(t).argmax()
    # the template gathers its fillings (the two longest subjects dilute their frame below 0.35)
    assert (t == big).sum() == 8 and set(np.flatnonzero(label == big)) <= set(range(n, n + len(subjects)))
    assert (size[:n] == 1).all()  # the distinct captions stay alone
    # a chain: each caption is close to the next, the ends are not -- star groups do not chain them
    chain = ["a black dog runs in the park", "a black dog swims in the park", "a brown dog swims in the lake",
             "a brown cat swims in the lake"]
    i, j, jac = caption_pairs(chain, 0.35)
    label = components(len(chain), i, j)
    assert len(set(label)) > 1 and (jac >= 0.35).all()
    # empty captions are not linked
    i, j, _ = caption_pairs(["", None, "", "x y"], 0.1)
    assert len(i) == 0


@pytest.mark.shared
@pytest.mark.parametrize("seed", [1, 2])
def test_planted_templates_among_flickr_captions(flickr8k, seed):
    with (flickr8k / "captions.csv").open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    first = list({r["image"]: r["caption"] for r in reversed(rows)}.values())  # one human caption per photo
    planted = plant_templates(first, seed=seed)
    caps = first + [c for c, _ in planted]
    order = np.random.default_rng(seed).permutation(len(caps))
    _, size = groups([caps[k] for k in order])
    size_of = np.empty(len(caps), np.int64)
    size_of[order] = size
    templated = (size_of[len(first):] >= 10).mean()
    human = (size_of[:len(first)] >= 10).mean()
    # measured, seeds 1-3: templated 0.96-0.98; human 1.4-1.5% -- eleven Flickr8k captions of
    # black-and-white dogs running in grass or water, near-duplicates in fact (docs/benchmarks.md)
    assert templated >= 0.9, templated
    assert human <= 0.02, human
    assert len(CAPTION_TEMPLATES) * 20 == len(planted)


def test_dedup_minhash_and_the_caption_template_step(lake: Lake):
    base = synthetic_pairs(0, 60)
    words = ("harbor violin meadow glacier lantern orchard tram canyon parrot quilt saddle bakery comet dune "
             "falcon gazebo hammock igloo jigsaw kettle lagoon mosaic nectar oasis pagoda quarry raft scooter "
             "tundra umbrella volcano walrus yacht zipper anchor bison cactus dolphin easel fjord geyser hedge").split()
    rng = np.random.default_rng(0)
    caps = [" ".join(rng.choice(words, 5, replace=False)) for _ in range(60)]  # distinct captions
    subjects = ["a red car", "mountain lake", "family at the beach", "business meeting", "fresh fruit", "old camera",
                "city skyline", "golden puppy", "coffee cup", "old bridge", "green field", "blue door"]
    for k, x in enumerate(subjects):
        caps[k * 5] = f"Stock photo of {x}, royalty free"
    lake.append(base.set_column(base.schema.get_field_index("caption"), "caption", pa.array(caps)))
    before = lake.dataset().count_rows()
    rep = lake.curate({"name": "tpl", "step": [{"filter": "caption_template", "max_group": 9}]}, progress=False)
    assert "caption templates" in rep.computed
    got = lake.to_pandas(["id", "caption", "drop_reason", "dup_minhash_group"])
    templ = got["caption"].str.startswith("Stock photo")
    assert (got.loc[templ, "drop_reason"] == "caption_template").all()
    assert got.loc[~templ, "drop_reason"].isna().all()
    assert rep.dropped == {"caption_template": len(subjects)} and lake.dataset().count_rows() == before
    ev = lake.dup_pairs()
    mh = ev[ev["method"] == "minhash"]
    tids = set(got.loc[templ, "id"])
    star = mh[mh["a"].isin(tids) & mh["b"].isin(tids)]
    assert len(star) == len(subjects) - 1 and mh["detail"].str.startswith("Jaccard").all()  # a star: n - 1 links
    # a template shared by fewer rows than max_group + 1 stays
    again = lake.curate({"name": "tpl2", "step": [{"filter": "caption_template", "max_group": 12}]}, progress=False)
    assert again.dropped == {"caption_template": 0}


def test_minhash_reports_progress_off_a_terminal(monkeypatch, capsys):
    """The minhash search is quadratic in the captions: its bar counts them hashed, then queried
    (a log line per update off a terminal here), ending at twice their number; hidden when asked."""
    monkeypatch.setattr("lakecurate.progress.INTERVAL", 0.0)
    monkeypatch.setattr("lakecurate.neardup._CAPTION_CHUNK", 3)
    caps = DISTINCT + [f"Stock photo of {x}, royalty free" for x in ("a red car", "a blue car", "fresh fruit")] + [None, ""]
    want = caption_pairs(caps, 0.35)
    got = caption_pairs(caps, 0.35, progress=True)
    assert all(np.array_equal(a, b) for a, b in zip(got, want))  # hashed in chunks: the same pairs
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("minhash captions")]
    total = 2 * 11  # the 11 captions with text
    assert len(lines) > 4 and lines[-1].split(": ", 1)[1].startswith(f"{total}/{total} caption (100%)"), lines
    caption_pairs(caps, 0.35, progress=False)
    assert "minhash" not in capsys.readouterr().err
