"""Ingest again after the source changed: a caption or image fixed in the source is noticed (and
said), taken only with ``update``; a file deleted from the source is counted, never an error."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from lakecurate import Lake, LakeError
from lakecurate.cli import main
from lakecurate.ingest import IngestError, pair_id

from .conftest import SAMPLE_DATA as SAMPLE
from .test_ingest import noise_jpeg, small_folder, write_shard


def rows(lake: Lake, version: int | None = None) -> dict[str, dict]:
    tbl = lake.dataset(version).to_table(columns=["id", "key", "caption", "byte_size", "ingest_status", "ingest_flags"])
    return {r["key"]: r for r in tbl.to_pylist()}


def embed_state(lake: Lake) -> dict:
    return next(s for s in lake.status()["stages"] if s["stage"] == "embed")


def test_an_edited_sidecar_is_noticed_then_taken_with_update(tmp_path: Path):
    src = small_folder(tmp_path / "src", 4)
    lake = Lake.create(tmp_path / "lake")
    lake.ingest(src, progress=False)
    lake.embed("tiny-random", workers=0, progress=False)
    before, v = rows(lake), lake.version
    (src / "001.txt").write_text("a fixed caption")
    rep = lake.ingest(src, progress=False)  # noticed, said, nothing written
    assert (rep.written, rep.changed, rep.changed_keys, rep.gone) == (0, 1, ["001.jpg"], 0)
    assert lake.version == v and rows(lake)["001.jpg"]["caption"] == "pair 1"
    assert "1 pair" in rep.warnings[0] and "update=True" in rep.warnings[0]
    assert rep.to_dict()["changed"] == 1
    rep = lake.ingest(src, update=True, progress=False)
    assert (rep.updated, rep.written, len(rep.versions)) == (1, 1, 1) and not rep.warnings
    after = rows(lake)
    assert after["001.jpg"]["caption"] == "a fixed caption" and after["001.jpg"]["id"] == before["001.jpg"]["id"]
    assert {k: r["id"] for k, r in after.items()} == {k: r["id"] for k, r in before.items()} and lake.count() == 4
    assert rows(lake, v)["001.jpg"]["caption"] == "pair 1"  # the old value stays in the earlier version
    st = embed_state(lake)
    assert (st["state"], st["rows_missing"]) == ("incomplete", 1), st
    assert lake.embed("tiny-random", workers=0, progress=False).rows_embedded == 1  # only that row
    assert embed_state(lake)["state"] == "current"
    again = lake.ingest(src, progress=False)
    assert (again.changed, again.written) == (0, 0)


def test_a_replaced_image_is_noticed_by_its_size_and_taken_as_a_new_row_would_be(tmp_path: Path):
    src = small_folder(tmp_path / "src", 4)
    lake = Lake.create(tmp_path / "lake")
    lake.ingest(src, progress=False)
    before = rows(lake)
    (src / "002.jpg").write_bytes(noise_jpeg(seed=3))  # a better photo
    (src / "003.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg at all")  # a broken one
    rep = lake.ingest(src, progress=False)
    assert (rep.changed, sorted(rep.changed_keys), rep.written) == (2, ["002.jpg", "003.jpg"], 0)
    rep = lake.ingest(src, update=True, progress=False)
    assert rep.updated == 2 and rep.status == {"ok": 1, "error": 1}
    after = rows(lake)
    assert after["002.jpg"]["byte_size"] == len(noise_jpeg(seed=3)) != before["002.jpg"]["byte_size"]
    assert after["003.jpg"]["ingest_status"] == "error" and after["003.jpg"]["id"] == before["003.jpg"]["id"]
    assert lake.count() == 4 and lake.ingest(src, progress=False).changed == 0


def test_a_manifest_caption_changed_is_noticed_and_taken(tmp_path: Path):
    d = tmp_path / "data"
    small_folder(d, 3)
    csv = d / "captions.csv"
    csv.write_text("image,caption\n" + "".join(f"{i:03d}.jpg,pair {i}\n" for i in range(3)))
    lake = Lake.create(tmp_path / "lake")
    lake.ingest(csv, progress=False)
    csv.write_text("image,caption\n" + "".join(f"{i:03d}.jpg,{'Dog.' if i == 2 else f'pair {i}'}\n" for i in range(3)))
    rep = lake.ingest(csv, progress=False)
    assert (rep.changed, rep.changed_keys) == (1, ["002.jpg"])
    runner = CliRunner()
    res = runner.invoke(main, ["ingest", lake.uri, str(csv)])
    assert res.exit_code == 0 and "1 pair in the lake changed in the source" in res.output and "--update" in res.output, res.output
    res = runner.invoke(main, ["ingest", lake.uri, str(csv), "--update", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert (out["updated"], out["changed"]) == (1, 1)
    assert rows(lake)["002.jpg"]["caption"] == "Dog." and lake.count() == 3


def test_a_tar_member_caption_changed_is_noticed_and_taken(tmp_path: Path):
    shard = tmp_path / "00000.tar"
    samples = [{f"{i:04d}.jpg": noise_jpeg(seed=i), f"{i:04d}.txt": f"caption {i}".encode()} for i in range(3)]
    write_shard(shard, samples)
    lake = Lake.create(tmp_path / "lake")
    lake.ingest(shard, progress=False)
    samples[1]["0001.txt"] = b"a better caption"
    write_shard(shard, samples)
    rep = lake.ingest(shard, progress=False)
    assert (rep.changed, rep.changed_keys, rep.gone) == (1, ["0001"], 0)
    assert lake.ingest(shard, update=True, progress=False).updated == 1
    assert rows(lake)["0001"]["caption"] == "a better caption" and lake.count() == 3


def test_a_file_deleted_from_the_source_is_counted_and_its_row_stays(tmp_path: Path):
    src = small_folder(tmp_path / "src", 4)
    lake = Lake.create(tmp_path / "lake")
    lake.ingest(src, progress=False)
    v = lake.version
    (src / "000.jpg").unlink()
    (src / "000.txt").unlink()
    for update in (False, True):
        rep = lake.ingest(src, update=update, progress=False)
        assert (rep.gone, rep.gone_keys, rep.changed, rep.written) == (1, ["000.jpg"], 0, 0)
        assert "no longer in the source" in rep.warnings[0]
        assert lake.version == v and lake.count() == 4


def test_update_is_refused_where_it_does_not_apply(tmp_path: Path):
    src = small_folder(tmp_path / "src", 2)
    lake = Lake.create(tmp_path / "lake")
    with pytest.raises(IngestError, match="update.*overwrite"):
        lake.ingest(src, mode="overwrite", update=True, progress=False)
    with pytest.raises(LakeError, match="invalid update .yes.: expected True or False"):
        lake.ingest(src, update="yes", progress=False)
    assert lake.count() == 0
    res = CliRunner().invoke(main, ["ingest", str(tmp_path / "new"), str(src), "--mode", "overwrite", "--update"])
    assert res.exit_code != 0 and "--update" in res.output and "--mode overwrite" in res.output, res.output
    assert not (tmp_path / "new").exists()  # refused before the lake was made


def _run_then_edit(tmp_path: Path, sources: dict[str, int], edited: str) -> tuple[Lake, Path, Path, Result]:
    """Folders (name -> pairs) ingested by a pipeline's run; then ``edited``'s first caption changed
    and the same run made on the CLI: (lake, the pipeline file, the folder edited, the CLI's result)."""
    for name, n in sources.items():
        small_folder(tmp_path / name, n)
    pipe = tmp_path / "pipe.toml"
    pipe.write_text(f"[ingest]\nsources = {json.dumps([f'{name}/' for name in sources])}\n")
    lake = Lake.create(tmp_path / "lake")
    lake.run(pipe, progress=False)
    (tmp_path / edited / "001.txt").write_text("Dog.")
    return lake, pipe, tmp_path / edited, CliRunner().invoke(main, ["run", lake.uri, str(pipe)])


def test_the_pipeline_ingest_step_takes_update(tmp_path: Path):
    lake, pipe, src, res = _run_then_edit(tmp_path, {"photos": 3}, "photos")
    assert res.exit_code == 0 and "changed in the source" in res.output and "update = true" in res.output, res.output
    assert rows(lake)["001.jpg"]["caption"] == "pair 1"
    pipe.write_text('[ingest]\nsources = ["photos/"]\nupdate = true\n')
    step = lake.run(pipe, progress=False).steps[0]
    assert (step.action, step.why) == ("ran", "0 new pairs, 1 changed in the source rewritten"), step  # what it did
    assert rows(lake)["001.jpg"]["caption"] == "Dog." and lake.count() == 3
    assert rows(lake)["001.jpg"]["id"] == pair_id(str(src.resolve()), "001.jpg")


def test_a_pipeline_of_two_sources_says_each_one_s_changed_pairs(tmp_path: Path):
    """With two [ingest] sources, the step's result held each source's report and the run's line
    said nothing of a changed pair (one source: its note was shown)."""
    _, _, two, res = _run_then_edit(tmp_path, {"one": 2, "two": 2}, "two")
    assert res.exit_code == 0, res.output
    notes = [line for line in res.output.splitlines() if "changed in the source" in line]
    assert len(notes) == 1 and str(two.resolve()) in notes[0] and "update = true" in notes[0], res.output


def test_an_update_says_which_review_marks_it_cleared_and_how_to_bring_them_back(tmp_path: Path):
    """A rewritten row has no derived columns, a reviewer's verdict among them: the update cleared
    it from the latest view without a word. It says how many and names the way back, which works."""
    src = small_folder(tmp_path / "src", 3)
    lake = Lake.create(tmp_path / "lake")
    lake.ingest(src, progress=False)
    marked = rows(lake)["001.jpg"]["id"]
    lake.review([marked], verdict="keep", by="ana")
    v = lake.version
    (src / "001.txt").write_text("a fixed caption")
    (src / "002.txt").write_text("another fixed caption")  # (not marked: not counted)
    rep = lake.ingest(src, update=True, progress=False)
    assert rep.updated == 2 and lake.count("review_verdict IS NOT NULL") == 0
    note = next(w for w in rep.warnings if "review marks" in w)
    assert note.startswith("1 of the rewritten pairs had review marks") and f"lake.restore_reviews({v})" in note, note
    lake.restore_reviews(v)
    got = lake.sql("SELECT caption, review_verdict FROM pairs WHERE review_verdict IS NOT NULL")
    assert got.to_dict("records") == [{"caption": "a fixed caption", "review_verdict": "keep"}]
    plain = lake.ingest(src, update=True, progress=False)  # nothing changed: nothing said
    assert plain.updated == 0 and not any("review marks" in w for w in plain.warnings)


def test_what_ingest_holds_of_the_rows_it_has_finds_each_and_names_the_ones_not_read(tmp_path: Path):
    """The rows' captions and sizes are held as arrays sorted by id (a dict of them held ~190 bytes a
    row): each row is found by its id, another id is not, and the rows no reading gave are named."""
    from lakecurate.ingest import _Known

    src = small_folder(tmp_path / "src", 5)
    lake = Lake.create(tmp_path / "lake")
    lake.ingest(src, progress=False)
    known = _Known(lake, [str(src.resolve())])
    ids = sorted(r["id"] for r in rows(lake).values())
    assert all(known.find(i) >= 0 for i in ids) and known.find("0" * 16) == -1 and known.find("not-an-id") == -1
    assert sorted(known.gone()) == ids and len(known.keys) == 5
    (src / "001.txt").write_text("changed")
    (src / "002.jpg").unlink()
    rep = lake.ingest(src, progress=False)
    assert (rep.changed, rep.changed_keys, rep.gone, rep.gone_keys) == (1, ["001.jpg"], 1, ["002.jpg"])


def test_a_group_s_kept_row_rewritten_by_update_is_grouped_again(tmp_path: Path):
    """A copy grouped with the photo its group is named after: the photo replaced in the source and
    taken with update, the next (incremental) semantic dedup kept the two in one group, one dropped
    as a duplicate of a picture it no longer is (a recompute parted them)."""
    src = tmp_path / "src"
    src.mkdir()
    photos = sorted(p for p in SAMPLE.glob("*.jpg") if p.stem in ("coffee", "rocket", "horse"))
    for p in photos:
        shutil.copy(p, src / p.name)
        (src / f"{p.stem}.txt").write_text(f"a photo of a {p.stem}")
    shutil.copy(src / "coffee.jpg", src / "zz_copy.jpg")
    (src / "zz_copy.txt").write_text("a photo of a coffee, again")
    lake = Lake.create(tmp_path / "lake")
    lake.ingest(src, progress=False)
    lake.embed("tiny-random", workers=0, progress=False)
    lake.dedup(["semantic"], semantic_threshold=0.99, progress=False)

    def group_of(key: str) -> str | None:
        return lake.sql(f"SELECT dup_group FROM pairs WHERE key = '{key}'")["dup_group"][0]

    keeper = next(k for k in ("coffee.jpg", "zz_copy.jpg") if lake.sql(
        f"SELECT dup_keep FROM pairs WHERE key = '{k}'")["dup_keep"][0])
    assert group_of("coffee.jpg") == group_of("zz_copy.jpg") is not None
    shutil.copy(SAMPLE / "brick.jpg", src / keeper)  # the kept one replaced by another photo
    assert lake.ingest(src, update=True, progress=False).updated == 1
    lake.embed("tiny-random", workers=0, progress=False)
    lake.dedup(["semantic"], semantic_threshold=0.99, progress=False)
    apart = lake.sql("SELECT key, dup_group, dup_keep FROM pairs WHERE key IN ('coffee.jpg', 'zz_copy.jpg')")
    groups = apart["dup_group"].tolist()
    assert apart["dup_keep"].all() and not (isinstance(groups[0], str) and groups[0] == groups[1]), apart
