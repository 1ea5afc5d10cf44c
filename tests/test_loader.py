"""Training from the lake (lakecurate.loader): exact sharding over ranks and DataLoader workers,
repeats as recorded, seeded orders, exact resumes, the stored bytes, stale views refused."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from lakecurate import Lake, LakeError
from lakecurate.loader import LakeDataset, loader

from .conftest import SAMPLE_DATA, with_an_undecodable_jpeg

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def seq_lake(sample_lake_embedded: Lake, tmp_path_factory) -> Lake:
    """A curated view with repeats (a rebalance that up-samples) and a sequenced order."""
    lake = Lake.open(shutil.copytree(sample_lake_embedded.uri, tmp_path_factory.mktemp("loader") / "lake"))
    lake.cluster(4)
    lake.rebalance(0.8, max_repeats=3, temperature=0.2)
    lake.sequence("interleave", shard_size=7)
    lake.tag("trained")
    return lake


def expected(lake: Lake) -> Counter:
    df = lake.to_pandas(["id", "repeats"], where="rebalance_keep")
    return Counter({i: int(r or 1) for i, r in zip(df["id"], df["repeats"])})


def ids_of(batches) -> list[str]:
    return [i for b in batches for i in b["id"]]


def test_two_ranks_by_two_workers_read_every_sample_once_per_epoch(seq_lake: Lake):
    want = expected(seq_lake)
    assert max(want.values()) > 1  # the view up-samples some rows
    got: Counter = Counter()
    per_rank = []
    for rank in (0, 1):
        ds = LakeDataset(seq_lake, seed=3, batch_size=4, rank=rank, world_size=2, decode=False, even=False)
        ds.set_epoch(1)
        ids = ids_of(loader(ds, num_workers=2))
        assert len(ids) == len(ds)
        per_rank.append(ids)
        got.update(ids)
    assert got == want  # every row as many times as its repeats, across both ranks: no gap, no duplicate
    assert abs(len(per_rank[0]) - len(per_rank[1])) <= 1
    # the workers' batches arrive in the rank's order: the same as reading it without workers
    alone = LakeDataset(seq_lake, seed=3, batch_size=4, rank=0, world_size=2, decode=False, even=False)
    alone.set_epoch(1)
    assert ids_of(loader(alone)) == per_rank[0]


@pytest.mark.parametrize("world,batch", [(3, 3), (6, 4), (5, 5)])
def test_every_rank_runs_as_many_batches_by_default(seq_lake: Lake, world: int, batch: int):
    """Ranks got the ceiling or the floor of samples/world: with 28 samples, 3 ranks and batches of
    3, rank 0 ran 4 batches and the others 3, and DDP waited forever at rank 0's last all-reduce."""
    batches, got = [], Counter()
    for rank in range(world):
        ds = LakeDataset(seq_lake, seed=3, batch_size=batch, rank=rank, world_size=world, decode=False)
        ids = ids_of(loader(ds))
        assert len(ids) == len(ds)
        batches.append(len(list(loader(ds))))
        got.update(ids)
    assert len(set(batches)) == 1, batches
    n = sum(expected(seq_lake).values())
    assert n % world and sum(got.values()) == n + (-n % world)  # topped up by the order's first samples
    assert set(got) == set(expected(seq_lake))


def test_orders_are_seeded_and_the_unshuffled_order_is_the_curated_one(seq_lake: Lake):
    def order(**kw) -> list[str]:
        ds = LakeDataset(seq_lake, decode=False, batch_size=5, **kw)
        return [s["id"] for s in ds]

    assert order(seed=7) == order(seed=7)
    assert order(seed=7) != order(seed=8) and sorted(order(seed=7)) == sorted(order(seed=8))
    ds = LakeDataset(seq_lake, decode=False, seed=7)
    first = [s["id"] for s in ds]
    ds.set_epoch(1)
    assert [s["id"] for s in ds] != first  # a new permutation each epoch
    # no shuffle: the order export writes (seq_order, repeats spread through it)
    from lakecurate.export import plan

    _, tbl, _, _, _ = plan(seq_lake)
    assert order(shuffle=False) == tbl.column("id").to_pylist()


@pytest.mark.parametrize("workers,step", [(0, 4), (2, 3), (2, 4)])
def test_resume_continues_exactly(seq_lake: Lake, workers: int, step: int):
    ds = LakeDataset(seq_lake, seed=1, batch_size=3, decode=False, columns=["key"])
    ds.set_epoch(2)
    full = [b["id"] for b in loader(ds, num_workers=workers)]
    again = LakeDataset(seq_lake, seed=1, batch_size=3, decode=False, columns=["key"])
    again.resume(epoch=2, step=step)
    rest = [b["id"] for b in loader(again, num_workers=workers)]
    assert rest == full[step:] and len(again) == sum(map(len, rest))
    again.set_epoch(3)  # the next epoch starts from its beginning
    assert len(again) == ds.samples


def test_images_are_the_lakes_bytes_and_decode_and_transform_in_the_loader(seq_lake: Lake):
    ds = LakeDataset(seq_lake, decode=False, columns=["key", "concept"], caption="caption")
    seen = 0
    for s in ds:
        assert s["image"] == (SAMPLE_DATA / s["key"]).read_bytes()
        seen += 1
    assert seen == ds.samples
    from torchvision import transforms

    tf = transforms.Compose([transforms.Resize((32, 32)), transforms.ToTensor()])
    batch = next(iter(loader(LakeDataset(seq_lake, batch_size=4, transform=tf), num_workers=0)))
    assert batch["image"].shape == (4, 3, 32, 32) and len(batch["caption"]) == 4
    # (a row without a caption is in this view: rebalanced with no recipe before it)
    assert all(isinstance(c, str) for c in batch["caption"] if c is not None) and any(batch["caption"])


def test_a_stale_view_is_refused_and_a_tagged_one_is_read(seq_lake: Lake, tmp_path: Path):
    lake = Lake.open(shutil.copytree(seq_lake.uri, tmp_path / "lake"))
    lake.cluster(3, recompute=True)  # new concepts: the rebalance decided on the old ones is stale
    with pytest.raises(LakeError, match="the loader would use stale decisions") as err:
        LakeDataset(lake)
    # the loader is Python only: its hint named the CLI's --allow-stale
    assert str(err.value).endswith("(or pass allow_stale=True)") and "--allow-stale" not in str(err.value)
    ds = LakeDataset(lake, version="trained", decode=False)
    assert Counter(s["id"] for s in ds) == expected(seq_lake)


@pytest.mark.parametrize("kwargs,match", [
    ({"batch_size": 0}, "invalid batch_size 0: expected an integer >= 1"),
    ({"rank": 2, "world_size": 2}, "0 <= rank < world_size"),
    ({"rank": 0}, "give both"),
    ({"columns": ["nope"]}, "no column nope"),
    ({"caption": "caption_nope"}, "no column 'caption_nope'"),
])
def test_bad_options_are_clear_errors(seq_lake: Lake, kwargs, match):
    with pytest.raises(LakeError, match=match):
        LakeDataset(seq_lake, **kwargs)


def test_one_column_named_as_text_is_that_column(seq_lake: Lake):
    """columns="key" was read as its letters: "no column k, e, y"."""
    one = next(iter(LakeDataset(seq_lake, columns="key", shuffle=False, decode=False)))
    assert one["key"] == next(iter(LakeDataset(seq_lake, columns=["key"], shuffle=False, decode=False)))["key"]
    assert (SAMPLE_DATA / one["key"]).is_file()
    with pytest.raises(LakeError, match="invalid columns: 5 is not text"):
        LakeDataset(seq_lake, columns=["key", 5])


def test_shards_cover_every_position_for_any_layout(seq_lake: Lake):
    ds = LakeDataset(seq_lake, seed=5, batch_size=2, decode=False, even=False)
    for world in (1, 2, 3):
        for workers in (1, 2, 4):
            got = np.concatenate([ds.indices(r, world, w, workers) for r in range(world) for w in range(workers)])
            assert sorted(got.tolist()) == list(range(ds.samples)), (world, workers)
    ds.resume(0, 2)  # after 2 batches of each rank: the rest, once
    got = np.concatenate([ds.indices(r, 2, w, 3) for r in range(2) for w in range(3)])
    done = np.concatenate([ds.order()[r::2][:4] for r in range(2)])
    assert sorted(got.tolist() + done.tolist()) == list(range(ds.samples))


def test_a_branch_that_moves_after_the_loader_is_made_is_read_as_planned(seq_lake: Lake, tmp_path: Path):
    """The workers opened a branch by name: a teammate's commit there killed the job at its next
    epoch ("moved ... while the loader was starting"). They read the version planned on."""
    lake = Lake.open(shutil.copytree(seq_lake.uri, tmp_path / "lake"))
    branch = lake.create_branch("exp")
    ds = LakeDataset(lake, version="exp", shuffle=False, decode=False)
    planned = [s["id"] for s in ds]
    branch.add_feature("n_chars", lambda b: [len(c or "") for c in b.column("caption").to_pylist()],
                       inputs=["caption"], type="int32", progress=False)  # the branch moves on
    ds.set_epoch(1)
    state = ds.__getstate__()  # what a DataLoader worker gets
    again = LakeDataset.__new__(LakeDataset)
    again.__dict__.update(state)
    assert [s["id"] for s in again] == planned


def test_ingest_error_rows_are_never_samples(seq_lake: Lake):
    ds = LakeDataset(seq_lake, where="true", shuffle=False, decode=False, columns=["ingest_status"])
    statuses = {s["ingest_status"] for s in ds}
    assert "error" not in statuses and ds.samples > 0
    assert seq_lake.count("ingest_status = 'error'") > 0  # the sample lake has error rows to leave out


def test_the_latest_named_by_its_number_is_refused_when_stale_like_the_latest(sample_lake_embedded: Lake, tmp_path: Path):
    """A changed recipe re-ran curate after rebalancing: export refused (rebalance is stale), but the
    loader, which pins the latest version by its number, and `export --version N` naming the latest,
    took the past-version path: a note, and the recipe's rows in table order instead of the
    rebalanced ones. The latest by number is the latest: refused alike. A tag is a state, read as it was."""
    lake = Lake.open(shutil.copytree(sample_lake_embedded.uri, tmp_path / "lake"))
    lake.curate({"name": "strict", "step": [{"filter": "ingest_error"}, {"filter": "caption_length", "min_words": 6}]},
                progress=False)
    lake.cluster(3)
    lake.rebalance(0.6)
    rep = lake.curate({"name": "looser", "step": [{"filter": "ingest_error"}]}, progress=False)
    with pytest.raises(LakeError, match="the loader would use stale decisions"):
        LakeDataset(lake)
    for version in (lake.version, str(lake.version), "main"):
        with pytest.raises(LakeError, match="stale"):
            lake.export(tmp_path / "x.parquet", "parquet", version=version)
    tagged = LakeDataset(lake, version=rep.tag, decode=False)  # the recipe's own rows, with a warning saying so
    assert len(tagged) == lake.dataset(rep.tag).count_rows(filter="keep AND ingest_status <> 'error'")
    assert any("rebalance_keep skipped" in w for w in tagged.warnings)
    assert len(LakeDataset(lake, allow_stale=True, decode=False)) > 0


def test_an_image_that_passed_ingest_but_cannot_be_decoded_is_left_out_not_fatal(tmp_path: Path):
    """A JPEG with a sound header and end marker but broken data passes ingest; embed records it
    (image_undecodable). Export shipped it and the loader stopped the training run on it, with
    advice that did not apply ("train on a view without ingest errors": it was the default view).
    Both leave it out now, with a warning; without an embedding the loader's error says how."""
    src = with_an_undecodable_jpeg(tmp_path / "src", ("coffee", "rocket", "chelsea"))
    lake = Lake.create(tmp_path / "lake")
    lake.ingest(src, progress=False)
    assert lake.count("ingest_status = 'error'") == 0  # the header is sound
    bad_id = lake.to_pandas(["id"], where="key = 'broken.jpg'")["id"].iloc[0]
    with pytest.raises(LakeError, match=f"the image of sample {bad_id} .* cannot be decoded.*id <> '{bad_id}'"):
        list(LakeDataset(lake, shuffle=False))
    lake.embed("tiny-random", workers=0, progress=False)
    lake.curate({"name": "ie", "step": [{"filter": "ingest_error"}]}, progress=False)
    ds = LakeDataset(lake, shuffle=False)
    assert any("1 row of the view left out: an embedding could not decode its image" in w for w in ds.warnings)
    ids = [s["id"] for s in ds]
    assert len(ids) == 3 and bad_id not in ids
    out = lake.export(tmp_path / "out.parquet", "parquet")
    assert out.rows == 3 and any("could not decode" in w for w in out.stale)


def test_an_empty_view_and_a_version_cleaned_up_while_reading_are_one_line_errors(tmp_path: Path):
    """An empty view loaded nothing without a word (export refuses it); a compact and a cleanup in
    another process while the loader read left a raw Lance "Not found: .../data/....lance"."""
    from datetime import timedelta

    lake = Lake.create(tmp_path / "lake")
    for part in range(3):  # three fragments, for compact to merge
        src = tmp_path / f"p{part}"
        src.mkdir()
        for name in ("coffee", "rocket")[: 1 + part % 2]:
            shutil.copy(SAMPLE_DATA / f"{name}.jpg", src / f"{name}{part}.jpg")
        lake.ingest(src, progress=False)
    with pytest.raises(LakeError, match="no rows to load from lake .* with where 'width < 0'"):
        LakeDataset(lake, where="width < 0")
    ds = LakeDataset(lake, shuffle=False, read_size=1, decode=False)
    samples = iter(ds)
    next(samples)
    lake.compact()
    lake.cleanup(timedelta(0))
    with pytest.raises(LakeError, match=f"version {ds.version} was removed while the loader read it.*tag the version"):
        list(samples)


def _unguarded_loader_calls(source: str) -> list[int]:
    """Lines of a script's top level (outside functions and ``if __name__ == "__main__":``) that
    call ``loader(...)`` with workers: a spawned worker imports the script again and runs them."""
    import ast

    lines = []
    for stmt in ast.parse(source).body:
        if isinstance(stmt, (ast.FunctionDef, ast.ClassDef)) or (
                isinstance(stmt, ast.If) and "__main__" in ast.unparse(stmt.test)):
            continue
        lines += [n.lineno for n in ast.walk(stmt) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "loader"
                  and any(k.arg == "num_workers" for k in n.keywords)]
    return lines


def test_the_documented_training_scripts_run_the_loader_under_a_main_guard():
    """README's example called loader(ds, num_workers=4) at the top level: as a script, every
    spawned worker ran it again and the DataLoader stopped ("worker ... exited unexpectedly")."""
    import re
    import textwrap

    import lakecurate.loader

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("## Train from the lake", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    # the module doc's example: its indented lines, from the import on
    example = textwrap.dedent(re.search(r"\n(    from lakecurate\.loader import.*?)\n(?=\S)", lakecurate.loader.__doc__,
                                        re.S).group(1))
    assert blocks and "num_workers" in blocks[0] and "num_workers" in example
    for source in blocks + [example]:
        assert _unguarded_loader_calls(source) == [], source
    assert _unguarded_loader_calls("for b in loader(ds, num_workers=4):\n    pass\n") == [1]


def test_a_saved_state_resumes_on_its_version_after_the_lake_moved_on(seq_lake: Lake, tmp_path: Path):
    """resume(epoch, step) on a new dataset after an ingest and a re-curation trained samples twice
    and never saw others: the state's version and seed were recorded but nothing read them.
    load_state_dict reads the saved version, and refuses an order that is not the saved one."""
    lake = Lake.open(shutil.copytree(seq_lake.uri, tmp_path / "lake"))
    ds = LakeDataset(lake, seed=1, batch_size=3, decode=False)
    ds.set_epoch(2)
    full = [b["id"] for b in loader(ds)]
    state = ds.state_dict(4)
    assert state["version"] == ds.version and state["world_size"] == 1 and state["batch_size"] == 3
    lake.rebalance(0.6, max_repeats=2, temperature=0.5)  # the lake moves on: another view
    lake.sequence("interleave", shard_size=5)
    assert LakeDataset(lake, seed=1, batch_size=3, decode=False).selection() != ds.selection()
    again = LakeDataset(lake, seed=1, batch_size=3, decode=False)
    again.load_state_dict(state)
    assert again.version == ds.version and (again.epoch, again.start_step) == (2, 4)
    assert [b["id"] for b in loader(again)] == full[4:]  # the rest of the epoch, exactly
    for kwargs, match in [({"seed": 2}, "saved with seed 1 .this dataset: 2."),
                          ({"batch_size": 4}, "saved with batch_size 3"),
                          ({"shuffle": False}, "saved with shuffle True"),
                          ({"where": "true"}, "saved with where None"),
                          ({"rank": 0, "world_size": 2}, "saved with world_size 1, this run has 2"),
                          ({"version": "main"}, f"saved at version main:{ds.version} .* pass version='main:{ds.version}'")]:
        with pytest.raises(LakeError, match=match):
            LakeDataset(lake, decode=False, **{"seed": 1, "batch_size": 3, **kwargs}).load_state_dict(state)
    pinned = LakeDataset(lake, seed=1, batch_size=3, decode=False, version=f"main:{ds.version}")
    pinned.load_state_dict(state)
    assert [b["id"] for b in loader(pinned)] == full[4:]
    with pytest.raises(LakeError, match="samples of version .* are not those the state was saved with"):
        LakeDataset(lake, seed=1, batch_size=3, decode=False).load_state_dict({**state, "selection": "0" * 16})


@pytest.mark.parametrize("world", [62, 64, 100, 130, 200])
def test_even_fills_every_rank_of_a_world_larger_than_the_samples(seq_lake: Lake, world: int):
    """With more than twice as many ranks as samples, rank 0 got one sample and the last none: a
    DDP job hung. The order is repeated until every rank has as many."""
    ds = LakeDataset(seq_lake, seed=2, decode=False)
    n = ds.samples
    got = [ds.indices(r, world) for r in range(world)]
    assert {len(g) for g in got} == {-(-n // world)}
    assert set(np.concatenate(got).tolist()) == set(range(n))


def test_the_plans_warnings_are_python_warnings_once(sample_lake_embedded: Lake, tmp_path: Path):
    """Rows left out or placed last were noted only in ds.warnings, which a trainer never reads."""
    lake = Lake.open(shutil.copytree(sample_lake_embedded.uri, tmp_path / "lake"))
    lake.curate({"name": "all", "step": [{"filter": "ingest_error"}]}, progress=False)
    lake.cluster(3)
    lake.rebalance(0.6)
    lake.curate({"name": "looser", "step": [{"filter": "ingest_error"}]}, progress=False)  # rebalance now stale
    with pytest.warns(UserWarning, match="stale") as caught:
        ds = LakeDataset(lake, allow_stale=True, decode=False)
    assert ds.warnings and [str(w.message).split(": ", 1)[1] for w in caught] == ds.warnings
    assert len(ds) > 0


@pytest.mark.parametrize("kwargs,match", [
    ({"shuffle": "no"}, "invalid shuffle 'no': expected True or False"),
    ({"even": "no"}, "invalid even 'no'"),
    ({"repeats": "no"}, "invalid repeats 'no'"),
    ({"decode": "no"}, "invalid decode 'no'"),
    ({"allow_stale": 1}, "invalid allow_stale 1"),
    ({"rank": 0.5, "world_size": 2}, "invalid rank 0.5"),
    ({"rank": True, "world_size": 2}, "invalid rank True"),
    ({"rank": 0, "world_size": 0}, "invalid world_size 0"),
    ({"rank": -1, "world_size": 2}, "invalid rank -1"),
    ({"transform": "x"}, "invalid transform 'x'"),
    ({"caption": 5}, "invalid caption 5"),
    ({"where": 5}, "invalid where 5"),
    ({"seed": -1}, "invalid seed -1"),
    ({"read_size": 0}, "invalid read_size 0"),
])
def test_every_option_is_checked_when_the_dataset_is_made(seq_lake: Lake, kwargs, match):
    with pytest.raises(LakeError, match=match):
        LakeDataset(seq_lake, **kwargs)


@pytest.mark.parametrize("epoch", [-1, 1.5, None, "1", True])
def test_set_epoch_takes_a_whole_number(seq_lake: Lake, epoch):
    """set_epoch("1") shuffled unlike 1 and was saved as text; -1, 1.5 and None were numpy errors."""
    ds = LakeDataset(seq_lake, decode=False)
    with pytest.raises(LakeError, match=f"set_epoch: epoch {epoch!r} must be a whole number >= 0"):
        ds.set_epoch(epoch)
    ds.set_epoch(np.int64(1))
    assert ds.epoch == 1 and type(ds.epoch) is int


def test_dataloader_workers_read_for_their_main_process_s_rank(seq_lake: Lake, monkeypatch):
    """Under torch.distributed (init_process_group, no rank=), a DataLoader worker has no process
    group of its own: it read as rank 0 of 1, so every rank read the whole epoch (each sample once per
    rank). Here the main process's group is faked; the spawned workers run without it, as they do."""
    import torch.distributed as dist

    import copy

    want = expected(seq_lake)
    got: Counter = Counter()
    early = copy.deepcopy(LakeDataset(seq_lake, seed=3, batch_size=4, decode=False, even=False))
    for rank in (0, 1):
        monkeypatch.setattr(dist, "is_available", lambda: True)
        monkeypatch.setattr(dist, "is_initialized", lambda: True)
        monkeypatch.setattr(dist, "get_rank", lambda rank=rank: rank)
        monkeypatch.setattr(dist, "get_world_size", lambda: 2)
        # a copy made before init_process_group (a wrapper's deepcopy) read as rank 0 of 1 for good
        ds = early if rank else LakeDataset(seq_lake, seed=3, batch_size=4, decode=False, even=False)
        assert ds.rank_world() == (rank, 2)
        ids = ids_of(loader(ds, num_workers=2))
        assert len(ids) == len(ds) < sum(want.values())
        got.update(ids)
    assert got == want


def test_torchrun_s_environment_names_the_rank_without_a_process_group(seq_lake: Lake, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    ds = LakeDataset(seq_lake, batch_size=4, decode=False)
    assert ds.rank_world() == (1, 2)
    assert len(ds) == len(LakeDataset(seq_lake, batch_size=4, decode=False, rank=1, world_size=2))
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(LakeError, match="RANK='2' and WORLD_SIZE='2' in the environment"):
        ds.rank_world()
    monkeypatch.delenv("WORLD_SIZE")  # (RANK alone read every sample on each rank)
    with pytest.raises(LakeError, match="RANK='2' and WORLD_SIZE=None in the environment"):
        ds.rank_world()


def test_persistent_workers_are_refused_and_a_worker_s_second_epoch_is_warned(seq_lake: Lake, monkeypatch):
    """Persistent workers keep the dataset copy of the first epoch: set_epoch never reached them and
    every epoch repeated the first one's order, silently."""
    import pickle

    from torch.utils.data import _utils

    from lakecurate.loader import LoaderWarning

    ds = LakeDataset(seq_lake, batch_size=4, decode=False)
    with pytest.raises(LakeError, match="persistent_workers=True keeps the workers' copy"):
        loader(ds, num_workers=2, persistent_workers=True)
    copy = pickle.loads(pickle.dumps(ds))  # what a worker holds (a DataLoader made by hand keeps it)

    class Info:
        id, num_workers = 0, 1

    monkeypatch.setattr(_utils.worker, "_worker_info", Info())
    first = [s["id"] for s in copy]
    ds.set_epoch(1)  # in the main process: the worker's copy does not see it
    with pytest.warns(LoaderWarning, match="reads its copy of the dataset for a second epoch"):
        assert [s["id"] for s in copy] == first


def test_a_state_whose_step_is_past_the_epoch_is_refused(seq_lake: Lake):
    ds = LakeDataset(seq_lake, batch_size=4, decode=False)
    state = ds.state_dict(step=2)
    batches = -(-len(ds) // 4)
    ds.load_state_dict({**state, "step": batches})  # (an epoch saved at its end: nothing left, and fine)
    assert len(ds) == 0
    with pytest.raises(LakeError, match=f"step {batches + 1} is past the end of epoch 0: each rank has {batches} batches"):
        LakeDataset(seq_lake, batch_size=4, decode=False).load_state_dict({**state, "step": batches + 1})
