"""Synthetic captions: the recaption stage with the tiny random CoCa through the CLI (column and
provenance, incremental runs), greedy and seeded decoding, clear errors."""

from __future__ import annotations

import io
import json
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from lakecurate import Lake, LakeError, graph
from lakecurate.captioners import Captioner, resolve_captioner
from lakecurate.cli import main
from lakecurate.columns import field_provenance

from .conftest import SAMPLE_DATA, pair_rows


def test_cli_recaption_adds_a_column_with_provenance(sample_lake_embedded: Lake, tmp_path: Path):
    lake = Lake.open(shutil.copytree(sample_lake_embedded.uri, tmp_path / "lake"))
    before = lake.to_pandas(["id", "caption"]).set_index("id")["caption"]
    res = CliRunner().invoke(main, ["recaption", lake.uri, "--model", "tiny-random-coca", "--workers", "0", "--json"])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.output[res.output.index("{"):])
    assert rep["column"] == "caption_tinycoca" and rep["rows"] == lake.count() and rep["meaningless"]
    assert (rep["captioned"], rep["errors"]) == (lake.count() - 2, 2) and rep["retry_command"] is None
    df = lake.to_pandas(["id", "key", "caption", "caption_tinycoca", "caption_tinycoca_error"]).set_index("id")
    assert df["caption"].equals(before.loc[df.index])  # the original caption is never modified
    bad = df["key"].isin(["gravel_truncated.jpg", "notes_not_an_image.jpg"])
    assert df.loc[bad, "caption_tinycoca"].isna().all() and df.loc[bad, "caption_tinycoca_error"].notna().all()
    assert df.loc[~bad, "caption_tinycoca"].map(lambda c: isinstance(c, str) and len(c) > 0).all()
    assert df.loc[~bad, "caption_tinycoca_error"].isna().all()
    prov = field_provenance(lake.dataset().schema.field("caption_tinycoca"))
    assert prov["stage"] == "recaption" and prov["source_columns"] == ["image"]
    assert prov["config"]["arch"].endswith("MEANINGLESS") and prov["config"]["decoder"] == "greedy"
    assert prov["config"]["max_tokens"] == 30 and prov["config"]["seed"] == 0
    # a re-run does nothing; appended rows are the next run's only work
    v = lake.version
    assert lake.recaption("tiny-random-coca", workers=0, progress=False).rows == 0 and lake.version == v
    # the two errors are images ingest refused: --retry-errors leaves them, and no run says to retry them
    res = CliRunner().invoke(main, ["recaption", lake.uri, "--model", "tiny-random-coca", "--workers", "0",
                                    "--retry-errors"])
    assert res.exit_code == 0 and "0 rows captioned, 0 errors (of 0 rows: 0 resumed, 0 errors computed again)" \
        in res.output and "--retry-errors" not in res.output and lake.version == v, res.output
    lake.append(pair_rows(0, 5, image=(SAMPLE_DATA / "coffee.jpg").read_bytes()))
    again = lake.recaption("tiny-random-coca", workers=0, progress=False)
    assert again.rows == 5 and lake.dataset().count_rows(filter="caption_tinycoca IS NULL AND "
                                                                "caption_tinycoca_error IS NULL") == 0
    # other settings: refused until --recompute (or another name)
    res = CliRunner().invoke(main, ["recaption", lake.uri, "--temperature", "1", "--workers", "0"])
    assert res.exit_code != 0 and "recompute" in res.output and "Traceback" not in res.output


def test_decoding_is_deterministic_and_seeded():
    from PIL import Image

    spec = resolve_captioner("tiny-random-coca")
    tf, _ = spec.encoder_spec().build_transforms()
    px = np.stack([tf(Image.open(SAMPLE_DATA / f"{n}.jpg").convert("RGB")) for n in ("coffee", "rocket", "chelsea")])
    greedy = Captioner(spec, "cpu")
    assert greedy.caption(px) == greedy.caption(px) == Captioner(spec, "cpu").caption(px)  # same in every process
    sampled = Captioner(resolve_captioner("tiny-random-coca", temperature=1.0, seed=7), "cpu")
    a = sampled.caption(px, batch_seed=1)
    assert a == sampled.caption(px, batch_seed=1) and a != sampled.caption(px, batch_seed=2)
    assert a != Captioner(resolve_captioner("tiny-random-coca", temperature=1.0, seed=8), "cpu").caption(px, 1)
    assert all(len(t.split()) <= 30 for t in a)


@pytest.mark.parametrize("kwargs,match", [
    ({"model": "nope"}, "unknown captioner 'nope'; choose tiny-random-coca"),
    ({"model": "coca_ViT-B-32", "pretrained": "bogus"}, "no pretrained weights 'bogus' for coca_ViT-B-32; known tags"),
    ({"model": "tiny-random-coca", "checkpoint": "/no/such.pt"}, "checkpoint '/no/such.pt' does not exist"),
    ({"model": "tiny-random-coca", "max_tokens": 0}, "^max_tokens must be a whole number from 1 to 75"),
    ({"model": "tiny-random-coca", "temperature": -1}, "invalid temperature -1: expected a number from 0 to 5"),
    ({"model": "tiny-random-coca", "device": "gpu"}, "^device must be auto, cpu"),
    ({"model": "tiny-random-coca", "batch_size": 0}, "^invalid batch_size 0"),
])
def test_bad_options_write_nothing(lake: Lake, kwargs, match):
    lake.ingest(SAMPLE_DATA, progress=False)
    v = lake.version
    with pytest.raises(LakeError, match=match):
        lake.recaption(**kwargs, progress=False)
    assert lake.version == v


def test_embed_scores_a_synthetic_caption_column(sample_lake_embedded: Lake, tmp_path: Path):
    from lakecurate.columns import embedding_matrix
    from lakecurate.encoders import Encoder, resolve

    lake = Lake.open(shutil.copytree(sample_lake_embedded.uri, tmp_path / "lake"))
    with pytest.raises(LakeError, match=r"caption columns: caption \(lakecurate recaption makes another\)"):
        lake.embed("tiny-random", caption_col="caption_tinycoca", progress=False)
    lake.recaption("tiny-random-coca", workers=0, progress=False)
    res = CliRunner().invoke(main, ["embed", lake.uri, "--model", "tiny-random", "--caption-col", "caption_tinycoca",
                                    "--json"])
    assert res.exit_code == 0, res.output
    t = lake.dataset().to_table(columns=["caption_tinycoca", "clip_tinyrandom_image",
                                         "clip_tinyrandom_caption_tinycoca_score"])
    img, ok = embedding_matrix(t.column("clip_tinyrandom_image"))
    caps = t.column("caption_tinycoca").to_pylist()
    score = t.column("clip_tinyrandom_caption_tinycoca_score").to_pylist()
    enc = Encoder(resolve("tiny-random"), device="cpu")
    for k, c in enumerate(caps):
        if c is None or not ok[k]:
            assert score[k] is None
        else:  # the cosine of the stored image vector with the caption through the same text tower
            want = float(img[k] @ enc.encode_texts([c]).numpy()[0])
            assert abs(score[k] - want) < 2e-3, (k, score[k], want)
    prov = field_provenance(lake.dataset().schema.field("clip_tinyrandom_caption_tinycoca_score"))
    assert prov["stage"] == "embed-caption" and prov["config"]["caption"] == "caption_tinycoca"
    assert set(prov["source_columns"]) == {"caption_tinycoca", "clip_tinyrandom_image"}


def test_report_shows_original_and_synthetic_captions_side_by_side(sample_lake_embedded: Lake, tmp_path: Path):
    import re

    lake = Lake.open(shutil.copytree(sample_lake_embedded.uri, tmp_path / "lake"))
    lake.recaption("tiny-random-coca", workers=0, progress=False)
    lake.embed("tiny-random", caption_col="caption_tinycoca", progress=False)
    out = lake.report(tmp_path / "r.html", n_low=5)
    assert "captions" not in out.empty_sections
    html = (tmp_path / "r.html").read_text()
    section = html[html.index('<section id="captions"'):html.index("</section>", html.index('<section id="captions"'))]
    cards = section.split('<figure class="card')[1:]
    assert len(cards) == 5 and all('src="data:image/' in c for c in cards)  # a thumbnail each
    df = lake.to_pandas(["key", "caption", "caption_tinycoca", "clip_tinyrandom_score",
                         "clip_tinyrandom_caption_tinycoca_score"]).set_index("key")
    for card in cards:
        key = re.search(r'title="([^"]+)"', card).group(1)
        row = df.loc[key]
        assert row["caption_tinycoca"][:40].replace("&", "&amp;") in card.replace("&#39;", "'") or \
            row["caption_tinycoca"][:20] in card  # the synthetic caption beside the original
        assert f"(score {row['clip_tinyrandom_caption_tinycoca_score']:.3f})" in card
        # (a row without a caption has no original score: none shown; which 5 rows are drawn follows
        # their ids, made from the photos' paths, so from where the checkout lies)
        assert (f"original score {row['clip_tinyrandom_score']:.3f}" in card) if row["clip_tinyrandom_score"] == \
            row["clip_tinyrandom_score"] else "original score" not in card


def test_documented_coca_tag_resolves_without_weights():
    # the README's and --help's example: a real open_clip tag, and the column it names
    spec = resolve_captioner("coca_ViT-B-32", "mscoco_finetuned_laion2b_s13b_b90k")
    assert spec.column() == "caption_cocavitb32mscoco" and spec.pretrained == "mscoco_finetuned_laion2b_s13b_b90k"
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert "--pretrained mscoco_finetuned_laion2b_s13b_b90k" in readme and "caption_cocavitb32mscoco" in readme


@pytest.fixture(scope="module")
def tiny_git_dir(tmp_path_factory) -> Path:
    pytest.importorskip("transformers")
    from .tiny_hf import tiny_git

    return tiny_git(tmp_path_factory.mktemp("hf") / "tinygit")


def test_a_hugging_face_checkpoint_directory_captions_through_the_cli(tiny_git_dir: Path, tmp_path: Path):
    from PIL import Image

    from lakecurate.captioners import HFCaptioner

    lake = Lake.create(tmp_path / "lake")
    lake.ingest(SAMPLE_DATA, progress=False)
    res = CliRunner().invoke(main, ["recaption", lake.uri, "--model", str(tiny_git_dir), "--workers", "0",
                                    "--max-tokens", "8", "--json"])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.output[res.output.index("{"):])
    assert rep["column"] == "caption_tinygit" and rep["rows"] == lake.count() and rep["errors"] == 2
    df = lake.to_pandas(["key", "image", "caption_tinygit", "caption_tinygit_error"]).set_index("key")
    bad = ["gravel_truncated.jpg", "notes_not_an_image.jpg"]
    assert df.loc[bad, "caption_tinygit_error"].str.startswith("image_undecodable").all()
    good = df.drop(index=bad)
    assert good["caption_tinygit_error"].isna().all()
    from .tiny_hf import WORDS

    words = [w for c in good["caption_tinygit"] for w in c.split()]
    assert len(words) > len(good) and set(words) <= set(WORDS)  # the checkpoint's own vocabulary, decoded
    assert good["caption_tinygit"].nunique() > 3  # a random model, but its words depend on the image
    # the stage's captions are the model's on the same images, in the same rows
    keys = list(good.index[:4])
    arrays = []
    for k in keys:
        im = Image.open(io.BytesIO(good.loc[k, "image"])).convert("RGB")
        im.thumbnail((64, 64))  # image_side: twice the processor's shortest edge
        arrays.append(np.asarray(im))
    assert HFCaptioner(resolve_captioner(str(tiny_git_dir), max_tokens=8), "cpu").caption(arrays) == \
        good.loc[keys, "caption_tinygit"].tolist()
    full = field_provenance(lake.dataset().schema.field("caption_tinygit"))
    prov = full["config"]  # the directory by its name and fingerprint; where it lay beside (as embed's weights)
    assert prov["family"] == "hf" and prov["arch"] == "git" and prov["pretrained"] == tiny_git_dir.name
    assert full["weights"] == str(tiny_git_dir)
    assert prov["image_side"] == 64 and len(prov["config_sha256"]) == 16 and prov["checkpoint_bytes"] > 10_000
    # a prompt is the decoder's prefix: it conditions the words, and the column holds only what follows it
    lake.recaption(str(tiny_git_dir), name="pref", prompt="a photo of", max_tokens=8, workers=0, progress=False)
    pref = lake.to_pandas(["key", "caption_pref"]).set_index("key")["caption_pref"]
    direct = HFCaptioner(resolve_captioner(str(tiny_git_dir), max_tokens=8, prompt="a photo of"), "cpu")
    assert direct.caption(arrays) == pref.loc[keys].tolist()
    assert (pref.loc[good.index] != good["caption_tinygit"]).any()
    assert field_provenance(lake.dataset().schema.field("caption_pref"))["config"]["prompt"] == "a photo of"
    # rows added later: the graph says the column is incomplete, and its command (rebuilt from the
    # provenance) fills only them
    lake.append(pair_rows(0, 3, image=(SAMPLE_DATA / "coffee.jpg").read_bytes()))
    st = {s.node.columns[0]: s for s in graph.states(lake)}["caption_pref"]
    assert st.state == "incomplete" and "--prompt 'a photo of'" in st.fix and str(tiny_git_dir) in st.fix
    res = CliRunner().invoke(main, shlex.split(st.fix)[1:] + ["--workers", "0", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output[res.output.index("{"):])["rows"] == 3
    assert {s.node.columns[0]: s for s in graph.states(lake)}["caption_pref"].state == "current"


@pytest.mark.parametrize("kwargs,match", [
    ({"pretrained": "x"}, "^pretrained and checkpoint are for open_clip CoCa"),
    ({"max_tokens": 513}, "^max_tokens must be a whole number from 1 to 512"),
    # more tokens than positions: a caption that runs that long fails in generate(), mid-run
    ({"max_tokens": 64}, "^max_tokens 64 does not fit git.s 64 text positions"),
])
def test_bad_hugging_face_options_write_nothing(tiny_git_dir: Path, lake: Lake, kwargs, match):
    lake.ingest(SAMPLE_DATA, progress=False)
    v = lake.version
    with pytest.raises(LakeError, match=match):
        lake.recaption(str(tiny_git_dir), **kwargs, progress=False)
    assert lake.version == v


def test_a_directory_that_is_not_a_checkpoint_is_a_clear_error(lake: Lake, tmp_path: Path):
    lake.ingest(SAMPLE_DATA, progress=False)
    res = CliRunner().invoke(main, ["recaption", lake.uri, "--model", str(tmp_path)])
    assert res.exit_code != 0 and "without config.json" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(main, ["recaption", lake.uri, "--prompt", "a photo of"])
    assert res.exit_code != 0 and "captions from the image alone" in res.output


@pytest.mark.parametrize("device", ["cuda:63", "mps"])
def test_a_device_this_machine_lacks_is_refused_before_a_write(tmp_path: Path, device: str):
    """torch's own error came at the first batch, as a traceback, after the columns were declared
    (and undeclared again): two commits for nothing. Embed the same."""
    lake = Lake.create(tmp_path / "lake")
    lake.ingest(SAMPLE_DATA, progress=False)
    v = lake.version
    with pytest.raises(LakeError, match=f"^device {device} asked for, but torch"):
        lake.recaption("tiny-random-coca", device=device, workers=0, progress=False)
    with pytest.raises(LakeError, match=f"^device {device} asked for, but torch"):
        lake.embed("tiny-random", device=device, workers=0, progress=False)
    assert lake.version == v


def test_a_pipeline_embed_step_with_caption_col_scores_it(sample_lake_embedded: Lake, tmp_path: Path):
    """[embed] caption_col = ... was skipped as "current" (the image embedding's score was checked),
    so the synthetic caption was never scored."""
    lake = Lake.open(shutil.copytree(sample_lake_embedded.uri, tmp_path / "lake"))
    lake.recaption("tiny-random-coca", workers=0, progress=False)
    pipe = tmp_path / "p.toml"
    pipe.write_text('[embed]\nmodel = "tiny-random"\ncaption_col = "caption_tinycoca"\n')
    rep = lake.run(pipe, progress=False)
    assert rep.ran == ["embed"], [s.why for s in rep.steps]
    assert "clip_tinyrandom_caption_tinycoca_score" in lake.dataset().schema.names
    assert lake.run(pipe, progress=False).ran == []


@pytest.mark.parametrize("kwargs,match", [({"seed": 2 ** 63 - 1}, "invalid seed"), ({"seed": "x"}, "invalid seed"),
                                          ({"name": "redacted"}, "caption_redacted is the redacted caption"),
                                          # '../x' was written as caption_x, '' as the default name
                                          ({"name": "../x"}, r"^name '\.\./x': use only lowercase .*name='x'\)"),
                                          ({"name": ""}, "^name '': use only lowercase letters and digits")])
def test_recaption_seed_and_reserved_names_refused_before_a_write(tmp_path: Path, kwargs, match):
    lake = Lake.create(tmp_path / "lake")
    lake.ingest(SAMPLE_DATA, progress=False)
    v = lake.version
    with pytest.raises(LakeError, match=match):
        lake.recaption("tiny-random-coca", workers=0, progress=False, **kwargs)
    with pytest.raises(LakeError, match=match):
        lake.recaption(endpoint="http://127.0.0.1:1/v1", api_model="m", progress=False, **kwargs)
    assert lake.version == v


def _coca_checkpoint(path: Path, sign: float = 1.0) -> Path:
    """A tiny CoCa saved as a checkpoint file (``sign`` -1: other weights, the same name and size)."""
    import torch

    model = Captioner(resolve_captioner("tiny-random-coca"), "cpu").model
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v * sign if k.endswith("text_projection") else v for k, v in model.state_dict().items()}, path)
    return path


def _legacy_config(self) -> dict:
    """A captioner's config as recorded before it named a checkpoint by its digest: its absolute path
    (and a file's size, a directory's fingerprint)."""
    import dataclasses
    import os

    from lakecurate import captioners

    local = {"checkpoint_bytes": os.path.getsize(self.pretrained)} if os.path.isfile(self.pretrained) else \
        {k: v for k, v in captioners._hf_fingerprint(self.pretrained).items() if k not in ("pretrained", "checkpoint_sha256")}
    return {**dataclasses.asdict(self), **local, "decoder": "greedy"}


@pytest.mark.parametrize("recorded", ["by name", "by path (before)"])
@pytest.mark.parametrize("kind", ["coca file", "hf directory"])
def test_a_caption_column_made_with_a_checkpoint_elsewhere_is_the_same_config_here(tmp_path: Path, monkeypatch,
                                                                                     request, kind, recorded):
    """A lake captioned with a checkpoint at one path, then moved (or the checkpoint moved: another
    machine) and captioned with the same checkpoint at another path: the config recorded the path,
    so the second run was "made with another config" (refused; --recompute would redo every row).
    Lakes captioned before recorded the path: the same config too, their rows written under it."""
    from lakecurate.captioners import CaptionerSpec

    alice, bob = tmp_path / "alice", tmp_path / "bob"
    if kind == "coca file":
        a, b = _coca_checkpoint(alice / "coca.pt"), bob / "coca.pt"
        model, opts = "tiny-random-coca", {"checkpoint": str(a)}
    else:
        a, b = Path(shutil.copytree(request.getfixturevalue("tiny_git_dir"), alice / "tinygit")), bob / "tinygit"
        model, opts = str(a), {"max_tokens": 8}
    if recorded != "by name":
        monkeypatch.setattr(CaptionerSpec, "config", _legacy_config)
        monkeypatch.setattr(CaptionerSpec, "weights", lambda self: {}, raising=False)
    lake = Lake.create(tmp_path / "lake")
    lake.ingest(SAMPLE_DATA, progress=False)
    lake.recaption(model, name="mine", workers=0, progress=False, **opts)
    before = field_provenance(lake.dataset().schema.field("caption_mine"))
    assert before["config"]["pretrained"] == (a.name if recorded == "by name" else str(a))
    assert before.get("weights") == (str(a) if recorded == "by name" else None)  # where it lay: beside the config
    assert (len(before["config"].get("checkpoint_sha256", "")) == 16) == (recorded == "by name")  # a file's or a directory's weights
    monkeypatch.undo()
    coffee = (SAMPLE_DATA / "coffee.jpg").read_bytes()
    # rows added: the command the graph rebuilds names the checkpoint where the run found it, and fills them
    lake.append(pair_rows(0, 2, image=coffee))
    st = {s.node.columns[0]: s for s in graph.states(lake)}["caption_mine"]
    assert st.state == "incomplete" and str(a) in st.fix, st.fix
    res = CliRunner().invoke(main, shlex.split(st.fix)[1:] + ["--workers", "0", "--json"])
    assert res.exit_code == 0 and json.loads(res.output[res.output.index("{"):])["rows"] == 2, res.output
    # the checkpoint moved (another machine: the same file at another path), more rows added
    b.parent.mkdir()
    shutil.move(str(a), str(b))
    lake.append(pair_rows(2, 2, image=coffee))
    model, opts = ("tiny-random-coca", {"checkpoint": str(b)}) if kind == "coca file" else (str(b), {"max_tokens": 8})
    rep = lake.recaption(model, name="mine", workers=0, progress=False, **opts)
    assert rep.rows == 2
    after = field_provenance(lake.dataset().schema.field("caption_mine"))
    assert after["config_hash"] == before["config_hash"]  # the column's rows all under the config it holds
    assert {s.node.columns[0]: s for s in graph.states(lake)}["caption_mine"].state == "current"
    caps = lake.to_pandas(["key", "caption_mine"]).set_index("key")["caption_mine"]
    added = caps[caps.index.str.startswith("p0")]
    assert len(added) == 4 and set(added) == {caps["coffee.jpg"]}  # the checkpoint's captions, as at the first path
    assert lake.recaption(model, name="mine", workers=0, progress=False, **opts).rows == 0
    assert lake.recaption(model, name="mine", retry_errors=True, workers=0, progress=False, **opts).rows == 0
    # the fix names the checkpoint where the latest run found it (it named the first path, gone here)
    lake.append(pair_rows(4, 1, image=coffee))
    st = {s.node.columns[0]: s for s in graph.states(lake)}["caption_mine"]
    assert str(b) in st.fix and str(a) not in st.fix, st.fix
    res = CliRunner().invoke(main, shlex.split(st.fix)[1:] + ["--workers", "0", "--json"])
    assert res.exit_code == 0 and json.loads(res.output[res.output.index("{"):])["rows"] == 1, res.output


def test_a_checkpoint_of_the_same_name_and_size_but_other_weights_is_another_config(tmp_path: Path):
    """The config recorded the checkpoint's path and size: another checkpoint saved over it (a
    later fine-tune of the same shapes) was the same config, its captions mixed into the column."""
    ck = _coca_checkpoint(tmp_path / "coca.pt")
    lake = Lake.create(tmp_path / "lake")
    lake.ingest(SAMPLE_DATA, progress=False)
    lake.recaption("tiny-random-coca", checkpoint=str(ck), name="mine", workers=0, progress=False)
    size = ck.stat().st_size
    _coca_checkpoint(ck, sign=-1.0)
    assert ck.stat().st_size == size
    lake.append(pair_rows(0, 2, image=(SAMPLE_DATA / "coffee.jpg").read_bytes()))
    v = lake.version
    with pytest.raises(LakeError, match="caption_mine.*made with another config.*checkpoint_sha256"):
        lake.recaption("tiny-random-coca", checkpoint=str(ck), name="mine", workers=0, progress=False)
    assert lake.version == v
    rep = lake.recaption("tiny-random-coca", checkpoint=str(ck), name="mine", recompute=True, workers=0,
                         progress=False)
    assert rep.rows == lake.count()


def test_the_same_checkpoint_bytes_under_another_name_or_through_a_symlink_are_the_same_config(tmp_path: Path):
    """A weights file was compared by its name, size and digest: the same bytes copied under another
    name, or reached through a symlink (named by the link), were "another config". Where both
    configs record a digest, equal digests are the same file; a symlink is named by its target."""
    from lakecurate.encoders import same_config, weights_file

    a = tmp_path / "coca.pt"
    a.write_bytes(b"weights" * 10)
    copy, other, link = tmp_path / "coca-v1.pt", tmp_path / "other.pt", tmp_path / "link.pt"
    copy.write_bytes(a.read_bytes())
    other.write_bytes(b"Weights" * 10)
    link.symlink_to(a)
    assert weights_file(str(link))["pretrained"] == "coca.pt"
    assert same_config(weights_file(str(a)), weights_file(str(copy)))
    assert not same_config(weights_file(str(a)), weights_file(str(other)))  # the same size, other bytes
    # end to end: a column captioned with the checkpoint takes the rows of its copy under another name
    ck = _coca_checkpoint(tmp_path / "ck" / "coca.pt")
    lake = Lake.create(tmp_path / "lake")
    lake.ingest(SAMPLE_DATA, progress=False)
    lake.recaption("tiny-random-coca", checkpoint=str(ck), name="mine", workers=0, progress=False)
    before = field_provenance(lake.dataset().schema.field("caption_mine"))
    renamed = shutil.copy(ck, tmp_path / "ck" / "coca-final.pt")
    lake.append(pair_rows(0, 2, image=(SAMPLE_DATA / "coffee.jpg").read_bytes()))
    assert lake.recaption("tiny-random-coca", checkpoint=renamed, name="mine", workers=0, progress=False).rows == 2
    assert field_provenance(lake.dataset().schema.field("caption_mine"))["config_hash"] == before["config_hash"]
    assert {s.node.columns[0]: s for s in graph.states(lake)}["caption_mine"].state == "current"


def test_a_checkpoint_directory_tuned_in_place_is_another_config(tiny_git_dir: Path, tmp_path: Path):
    """A Hugging Face checkpoint directory was fingerprinted by its config and its files' sizes: a
    fine-tune saved over the model it was tuned from (the same config, the same sizes) was "the same
    config", and a recaption run added the new model's captions to the old one's column. Its
    weights' digest tells them apart; a copy under another name is still the same, and a column
    recorded before the digest compares without it."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from lakecurate import captioners
    from lakecurate.encoders import same_config

    here = shutil.copytree(tiny_git_dir, tmp_path / "ck" / "tinygit")
    before = captioners._hf_fingerprint(str(here))
    assert same_config(before, captioners._hf_fingerprint(str(shutil.copytree(here, tmp_path / "elsewhere"))))
    lake = Lake.create(tmp_path / "lake")
    lake.ingest(SAMPLE_DATA, progress=False)
    lake.recaption(str(here), name="git", max_tokens=4, workers=0, progress=False)
    weights = here / "model.safetensors"
    with safe_open(str(weights), "pt") as f:
        meta = f.metadata()
    save_file({k: v + 0.01 if v.is_floating_point() else v for k, v in load_file(weights).items()}, weights,
              metadata=meta)  # tuned in place: the same tensors, other values
    after = captioners._hf_fingerprint(str(here))
    assert (after["config_sha256"], after["checkpoint_bytes"]) == (before["config_sha256"], before["checkpoint_bytes"])
    assert not same_config(before, after)
    legacy = {k: v for k, v in before.items() if k != "checkpoint_sha256"}  # recorded before the digest
    assert same_config(legacy, after) and same_config(legacy, before)
    lake.append(pair_rows(0, 2, image=(SAMPLE_DATA / "coffee.jpg").read_bytes()))
    with pytest.raises(LakeError, match="config"):
        lake.recaption(str(here), name="git", max_tokens=4, workers=0, progress=False)


def test_recaption_usage_errors_exit_2_and_top_k_when_greedy_is_said(tmp_path: Path):
    """--name BAD-Name and --api-model/--concurrency without --endpoint exited 1 (README: usage errors
    exit 2) and said "--api-model need --endpoint"; --top-k at temperature 0 (greedy) was taken
    and never read, without a word."""
    lake = Lake.create(tmp_path / "lake")
    src = tmp_path / "src"
    src.mkdir()
    for name in ("coffee", "rocket"):
        shutil.copy(SAMPLE_DATA / f"{name}.jpg", src / f"{name}.jpg")
    lake.ingest(src, progress=False)
    v = lake.version
    for args, says in ((["--name", "BAD-Name"], "'BAD-Name': use only lowercase letters and digits"),
                       (["--api-model", "llava"], "--api-model needs --endpoint (an OpenAI-compatible server)"),
                       (["--concurrency", "4", "--timeout", "5"], "--concurrency, --timeout need --endpoint"),
                       (["--endpoint", "http://127.0.0.1:1/v1", "--api-model", "m", "--top-k", "3"],
                        "--top-k does not apply with --endpoint")):
        res = CliRunner().invoke(main, ["recaption", lake.uri, *args])
        assert res.exit_code == 2 and says in res.output and "Traceback" not in res.output, (args, res.output)
    assert lake.version == v
    greedy = "--top-k is read only when sampling: --temperature > 0"
    res = CliRunner().invoke(main, ["recaption", lake.uri, "--top-k", "3", "--workers", "0", "--name", "k3"])
    assert res.exit_code == 0 and f"warning: {greedy}" in res.output, res.output
    rep = lake.recaption("tiny-random-coca", top_k=3, temperature=0.5, name="k3t", workers=0, progress=False)
    assert rep.warnings == [] and rep.captioned == 2
