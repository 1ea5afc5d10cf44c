"""Near-duplicate captions by MinHash LSH: templated alt text grouped, distinct captions not."""

from __future__ import annotations

import csv

import numpy as np
import pyarrow as pa
import pytest

from lakecurate import Lake, neardup
from lakecurate.neardup import caption_pairs, components, shingles
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
    # measured, seeds 1-3: templated 0.96-0.98; human 1.5-1.6% -- a dozen Flickr8k captions of
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
    assert rep.dropped == {"ingest_error": 0, "caption_template": len(subjects)} and lake.dataset().count_rows() == before
    ev = lake.dup_pairs()
    mh = ev[ev["method"] == "minhash"]
    tids = set(got.loc[templ, "id"])
    star = mh[mh["a"].isin(tids) & mh["b"].isin(tids)]
    assert len(star) == len(subjects) - 1 and mh["detail"].str.startswith("Jaccard").all()  # a star: n - 1 links
    # a template shared by fewer rows than max_group + 1 stays
    again = lake.curate({"name": "tpl2", "step": [{"filter": "caption_template", "max_group": 12}]}, progress=False)
    assert again.dropped == {"ingest_error": 0, "caption_template": 0}


def test_minhash_reports_progress_off_a_terminal(monkeypatch, capsys):
    """The bar counts the rows read (3 at a time here), then banded (a partition at a time: 4
    partitions here, filed in a temporary directory), a log line per update off a terminal,
    ending at twice their number; hidden when asked."""
    monkeypatch.setattr("lakecurate.progress.INTERVAL", 0.0)
    caps = DISTINCT + [f"Stock photo of {x}, royalty free" for x in ("a red car", "a blue car", "fresh fruit")] + [None, ""]
    want = caption_pairs(caps, 0.35)
    monkeypatch.setattr("lakecurate.neardup._SIGN_ROWS", 3)
    monkeypatch.setattr("lakecurate.neardup._PART_ENTRIES", 85 * 4)
    got = caption_pairs(caps, 0.35, progress=True)
    assert all(np.array_equal(a, b) for a, b in zip(got, want))  # read in ranges, banded in partitions: the same pairs
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("minhash captions")]
    total = 2 * len(caps)
    assert len(lines) > 6 and lines[-1].split(": ", 1)[1].startswith(f"{total}/{total} caption (100%)"), lines
    caption_pairs(caps, 0.35, progress=False)
    assert "minhash" not in capsys.readouterr().err


def flickr_captions(flickr8k) -> list[str]:
    with (flickr8k / "captions.csv").open(newline="", encoding="utf-8") as fh:
        return [r["caption"] for r in csv.DictReader(fh)]


def exact_jaccard(a: str, b: str) -> float:
    x, y = shingles(a), shingles(b)
    return len(x & y) / len(x | y)


def test_hashed_shingle_sets_give_the_string_jaccard():
    """The shingle sets are hashed (4 bytes a shingle, one sparse matrix): their Jaccard is the
    string sets' one -- short captions, unicode, punctuation and case included."""
    caps = DISTINCT + ["Stock photo of a red car, royalty free", "STOCK PHOTO of a red car -- royalty-free!",
                       "ab", "AB", "a", "ça va très bien, merci", "ça va bien merci", "東京の夜景 東京の夜", "東京の夜景"]
    texts = [neardup._normalised(c) for c in caps]
    size, hashed = neardup._hashed_shingles(texts, 5)
    assert size.tolist() == [len(shingles(c)) for c in caps]
    sets = neardup._shingle_matrix(size, hashed)
    p, q = np.triu_indices(len(caps), 1)
    got = neardup._jaccard(sets, size, p, q)
    want = np.array([exact_jaccard(caps[a], caps[b]) for a, b in zip(p, q)])
    np.testing.assert_allclose(got, want)
    assert (want > 0.35).sum() >= 3  # near-identical pairs are among them


def test_a_caption_is_verified_a_bounded_number_of_times(monkeypatch):
    """Linear: 6,000 fillings of one template share most band buckets; each bucket over
    _BUCKET_ALL pairs a member only with its _BUCKET_LEADS plainest captions, so the exact Jaccard
    runs at most bands x 16 times a caption (not 6,000), and the template still forms one group."""
    words = np.array("harbor violin meadow glacier lantern orchard tram canyon parrot quilt saddle bakery comet dune "
                     "falcon gazebo hammock igloo jigsaw kettle lagoon mosaic nectar oasis pagoda quarry".split())
    rng = np.random.default_rng(0)
    caps = [f"Stock photo of {' '.join(rng.choice(words, 2, replace=False))}, royalty free" for _ in range(6000)]
    verified = []
    jaccard = neardup._jaccard
    monkeypatch.setattr(neardup, "_jaccard", lambda *a: verified.append(len(a[2])) or jaccard(*a))
    i, j, _ = caption_pairs(caps, 0.35)
    from datasketch import MinHashLSH
    bands = MinHashLSH(threshold=0.2, num_perm=256).b  # caption_pairs' default bands at 0.35
    assert sum(verified) <= bands * neardup._BUCKET_LEADS * len(caps) < len(caps) ** 2 / 2
    size = np.bincount(components(len(caps), i, j))
    assert size.max() >= 0.95 * len(caps), sorted(size)[-3:]


@pytest.mark.shared
def test_pairs_found_against_the_exact_pairs_of_flickr_captions(flickr8k):
    """The verified pairs (before the star groups choose among them) hold most exact pairs of
    Flickr8k's human captions within Jaccard 0.35 (measured on the 4,000 captions here: 0.994 of all
    1,199 pairs, 0.993 of the 830 between captions with at most 8 near ones; the banding alone
    finds a pair at Jaccard 0.35 with probability 0.976)."""
    import scipy.sparse
    caps = flickr_captions(flickr8k)
    kept = set()
    task = neardup.band_pairs_task
    def grab(*args):
        packed, jac = task(*args)
        kept.update(zip(*(p.tolist() for p in neardup._unpacked(packed))))
        return packed, jac
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(neardup, "band_pairs_task", grab)
        caption_pairs(caps, 0.35)
    size, hashed = neardup._hashed_shingles([neardup._normalised(c) for c in caps], 5)
    sets = neardup._shingle_matrix(size, hashed, compact=True)  # distinct shingles numbered: a small matrix
    inter = scipy.sparse.triu(sets @ sets.T, k=1).tocoo()
    near = inter.data / (size[inter.row] + size[inter.col] - inter.data) >= 0.35
    a, b = inter.row[near], inter.col[near]
    degree = np.bincount(np.concatenate([a, b]), minlength=len(caps))
    few = (degree[a] <= 8) & (degree[b] <= 8)
    hit = np.array([pair in kept for pair in zip(a.tolist(), b.tolist())])
    print(f"exact pairs {len(a)}, found {hit.mean():.4f}; among captions with <= 8 near ones {few.sum()}, "
          f"found {hit[few].mean():.4f}")
    assert hit[few].mean() >= 0.96 and hit.mean() >= 0.96


def test_long_captions_are_hashed_a_few_at_a_time(monkeypatch):
    """A caption of 200,000 characters (hostile alt text) is shingled with fewer others at once:
    the pairs are those of hashing them all together."""
    long = ("stock photo " * 20_000).strip()
    caps = [long, long + " royalty free", *DISTINCT, "Stock photo of a red car, royalty free",
            "Stock photo of a blue car, royalty free"]
    want = caption_pairs(caps, 0.35)
    chunks = []
    hashed = neardup._hashed_shingles
    monkeypatch.setattr(neardup, "_hashed_shingles", lambda texts, k: chunks.append(len(texts)) or hashed(texts, k))
    monkeypatch.setattr(neardup, "_CAPTION_CHARS", 1000)
    got = caption_pairs(caps, 0.35)
    assert all(np.array_equal(a, b) for a, b in zip(got, want)) and (0, 1) in set(zip(*got[:2]))
    assert chunks[:2] == [1, 1] and sum(chunks) == len(caps)


def star_groups_in_memory(n, i, j, v):
    """The star groups' rule written plainly over pairs held whole (distinct pairs): the reference;
    its links as (lower, higher, Jaccard), sorted."""
    degree = np.bincount(i, minlength=n) + np.bincount(j, minlength=n)
    partners = [[] for _ in range(n)]
    for a, b, w in zip(i.tolist(), j.tolist(), v.tolist()):
        partners[a].append((b, w)), partners[b].append((a, w))
    grouped, out = np.zeros(n, bool), []
    for r in sorted(np.flatnonzero(degree).tolist(), key=lambda r: (-degree[r], r)):
        if not grouped[r]:
            grouped[r] = True
            for b, w in sorted(partners[r]):
                if not grouped[b]:
                    grouped[b] = True
                    out.append((min(r, b), max(r, b), w))
    return sorted(out)


@pytest.mark.parametrize("spill", [False, True])
def test_star_groups_out_of_core_equal_the_rule_over_pairs_held_whole(monkeypatch, tmp_path, spill):
    """The verified pairs, filed by range of captions (5 ranges here) with pairs found again in
    another partition, made distinct and filed under both captions, their partners read back by
    caption (from a memory-mapped file when spilled): the star groups of the plain rule."""
    monkeypatch.setattr(neardup, "_RANGE_CAPTIONS", 40)
    rng = np.random.default_rng(7)
    n = 200
    i, j = rng.integers(0, n, 900), rng.integers(0, n, 900)
    i, j = np.minimum(i, j), np.maximum(i, j)
    packed = np.unique((i[i != j].astype(np.uint64) << np.uint64(32)) | j[i != j].astype(np.uint64))
    jac = rng.random(len(packed)).astype(np.float32)
    links = neardup._by_range(n, str(tmp_path) if spill else None, "links", neardup._LINKS)
    for part in np.array_split(np.arange(len(packed)), 4) + [np.arange(0, len(packed), 3)]:  # a third twice
        rec = np.empty(len(part), neardup._LINKS)
        rec["pair"], rec["jac"] = packed[part], jac[part]
        links.add((packed[part] >> np.uint64(32)).astype(np.int64) // 40, rec)
    links.flush()
    assert links.buckets == 5 and (not spill or len(list(tmp_path.glob("links-*.bin"))) == 5)
    a, b, w = neardup._star_groups(n, links, str(tmp_path) if spill else None)
    p, q = neardup._unpacked(packed)
    want = star_groups_in_memory(n, p, q, jac)
    assert [(x, y) for x, y, _ in want] == list(zip(a.tolist(), b.tolist()))
    np.testing.assert_allclose(w, [x for _, _, x in want], rtol=1e-6)
    assert len(want) > 50 and not list(tmp_path.glob("*.bin"))  # every range file read and removed


def test_more_bands_than_the_sort_key_holds_are_refused():
    """A band's number takes 8 bits of the buckets' sort key: 512 bands (num_perm 2048) would
    merge the buckets of bands b and b + 256, so they are refused before anything is read."""
    with pytest.raises(ValueError, match="at most 256 bands"):
        caption_pairs(["a red car", "a red cat"], 0.35, num_perm=2048)
