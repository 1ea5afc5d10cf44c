"""The built-in evaluation: metrics on literal inputs, the proxy learns, held-out checks, records;
on a noisy Flickr8k pool the curated view beats a random view of the same size."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from lakecurate import Lake, LakeError
from lakecurate.cli import main
from lakecurate.options import speaking
from lakecurate.evaluate import (
    METRICS,
    EvalSet,
    auroc,
    crossing,
    evaluations,
    retrieval_metrics,
    score_heads,
    speedup,
    speedup_summary,
    train_heads,
)

from .conftest import REPO, SAMPLE_DATA, noisy_eval_set


def test_auroc_and_recall_literal():
    assert auroc(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 1.0
    assert auroc(np.array([1.0]), np.array([2.0])) == 0.0
    assert auroc(np.array([1.0, 1.0]), np.array([1.0])) == 0.5
    img = np.eye(4)
    # captions 0, 1 of image 0; caption 2 of image 1 points at image 2 instead; caption 3 of image 3
    txt = np.array([[1, 0, 0, 0], [0.9, 0.1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], float)
    m = retrieval_metrics(img, txt / np.linalg.norm(txt, axis=1, keepdims=True), np.array([0, 0, 1, 3]))
    assert m["t2i_R@1"] == 0.75 and m["t2i_R@5"] == 1.0
    assert m["i2t_R@1"] == 0.5  # image 2 has no caption of its own; image 1's caption ranks second
    assert set(m) == set(METRICS)


def test_proxy_learns_from_clean_pairs_and_not_from_shuffled():
    # image and text vectors share an 8-d latent through two different random maps; the eval set
    # holds fresh latents through the same maps
    rng = np.random.default_rng(0)
    z = rng.standard_normal((600, 8))
    a, b = rng.standard_normal((8, 32)), rng.standard_normal((8, 32))
    zt = np.random.default_rng(5).standard_normal((100, 8))
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    ev = EvalSet(unit(zt @ a), unit(zt @ b), np.arange(100), [str(i) for i in range(100)])
    img, txt = z @ a, z @ b
    clean = score_heads(ev, *train_heads(img, txt, dim=16, steps=150, batch=128, lr=2e-3, seed=0))
    shuffled = score_heads(ev, *train_heads(img, txt[np.random.default_rng(1).permutation(600)], dim=16, steps=150, batch=128,
                                          lr=2e-3, seed=0))
    assert clean["t2i_R@5"] > 0.8 and shuffled["t2i_R@5"] < 0.3, (clean, shuffled)
    assert clean["swapped_auroc"] > 0.95
    again = score_heads(ev, *train_heads(img, txt, dim=16, steps=150, batch=128, lr=2e-3, seed=0))
    assert again == clean  # seeded: the same run twice gives the same numbers


@pytest.fixture
def small(sample_lake_embedded: Lake, tmp_path: Path) -> tuple[Lake, Path]:
    lake = Lake.open(shutil.copytree(sample_lake_embedded.uri, tmp_path / "lake"))
    lake.curate({"name": "t", "step": [{"filter": "ingest_error"}, {"filter": "caption_missing"}]}, progress=False)
    return lake, noisy_eval_set(tmp_path / "eval")


def test_evaluate_records_and_reports(small, tmp_path: Path):
    lake, ev = small
    res = lake.evaluate(eval_set=ev, seeds=2, steps=10, eval_every=5, budgets="0.5,1", progress=False)
    usable = lake.count("clip_tinyrandom_image IS NOT NULL AND clip_tinyrandom_text IS NOT NULL")
    assert res.view == "keep" and res.baselines == ["all", "random"]
    assert res.rows == {"view": lake.count("keep AND clip_tinyrandom_image IS NOT NULL"), "all": usable,
                        "random": res.rows["view"]} and res.pool_rows == usable
    assert res.eval_images == 6 and res.eval_captions == 6
    assert {a: len(m["t2i_R@5"]) for a, m in res.metrics.items()} == {"view": 2, "all": 2, "random": 2, "frozen encoder": 1}
    assert res.curve_steps == [0, 5, 10] and all(len(c) == 2 and len(c[0]) == 3 for c in res.curves.values())
    assert [c[-1] for c in res.curves["view"]] == res.metrics["view"]["t2i_R@5"]  # the curve ends at the final score
    assert set(res.speedups()) == {"all", "random"} and set(res.budgets) == {"0.5", "1"}
    assert res.budgets["1"]["view"] == res.metrics["view"]["t2i_R@5"]
    df = evaluations(lake)
    assert len(df) == 2 * 3 + 1 + 2 * 3 and (df["eval_id"] == res.eval_id).all()
    assert set(df["arm"]) == {"view", "all", "random", "frozen encoder"}
    main = df[df["budget"] == 1.0]
    assert np.allclose(main[main["arm"] == "view"].sort_values("seed")["t2i_R@5"], res.metrics["view"]["t2i_R@5"])
    assert list(main[main["arm"] == "all"]["curve_steps"].iloc[0]) == [0, 5, 10]
    half = df[df["budget"] == 0.5]
    assert len(half) == 6 and (half["steps"] == 5).all() and half["t2i_R@1"].isna().all()
    # a second run reuses the embedded evaluation set and appends
    lake.evaluate("keep", eval_set=ev, seeds=1, steps=5, baseline="ingest_status = 'ok'", progress=False)
    assert len(evaluations(lake)) == 13 + 3
    lake.report(tmp_path / "r.html")
    html = (tmp_path / "r.html").read_text()
    assert 'id="evaluations" data-empty="false"' in html and html.count('class="eval-run"') == 2
    assert f'data-eval="{res.eval_id}"' in html
    assert html.count('class="plot eval-curves"') == 2 and html.count('class="plot eval-budgets"') == 1
    assert 'class="eval-speedup" data-baseline="all"' in html and html.count('class="eval-speedup"') == 3


def test_baseline_all_trains_on_every_usable_row_and_seeded_runs_equal(small, monkeypatch):
    from lakecurate import evaluate as ev_mod

    lake, ev = small
    seen: list[int] = []
    real = ev_mod.train_heads

    def spy(x_img, x_txt, **kw):
        seen.append(len(x_img))
        return real(x_img, x_txt, **kw)

    monkeypatch.setattr(ev_mod, "train_heads", spy)
    a = lake.evaluate(eval_set=ev, baseline="all", seeds=2, steps=6, eval_every=3, record=False, progress=False)
    usable = lake.count("clip_tinyrandom_image IS NOT NULL AND clip_tinyrandom_text IS NOT NULL")
    assert usable < lake.count()  # undecodable images have no vectors: not usable
    assert seen == [a.rows["view"], usable] * 2  # per seed: the view, then every usable row
    b = lake.evaluate(eval_set=ev, baseline="all", seeds=2, steps=6, eval_every=3, record=False, progress=False)
    assert a.metrics == b.metrics and a.curves == b.curves and a.speedups() == b.speedups()


def test_speedup_on_literal_curves():
    steps = [0, 100, 200, 300, 400]
    base = [0.10, 0.20, 0.30, 0.35, 0.40]
    fast = [0.10, 0.30, 0.40, 0.45, 0.50]   # reaches 0.40 at step 200: twice as fast
    assert speedup(steps, fast, base) == 2.0
    assert crossing(steps, [0.10, 0.25, 0.35, 0.45, 0.5], 0.40) == pytest.approx(250.0)  # linear between points
    assert speedup(steps, [0.10, 0.25, 0.35, 0.45, 0.5], base) == pytest.approx(400 / 250)
    assert crossing(steps, [0.1, 0.2, 0.3], 0.9) is None
    slow = [0.10, 0.15, 0.20, 0.25, 0.30]   # never reaches 0.40; base reaches 0.30 at 200
    assert speedup(steps, slow, base) == 0.5
    assert speedup(steps, base, base) == 1.0
    assert speedup(steps, [0.5] * 5, base) == 4.0  # at the first checkpoint already: a floor, 400 / 100
    # Equal curves are no speed-up, however they are shaped: a flat curve (nothing learnt) and a
    # plateau reach their final score early, the baseline's as early as the view's (these were 4.0).
    assert speedup(steps, [0.3] * 5, [0.3] * 5) == 1.0
    plateau = [0.10, 0.40, 0.40, 0.40, 0.40]
    assert speedup(steps, plateau, plateau) == 1.0
    assert speedup(steps, [0.10, 0.40, 0.40, 0.40, 0.40], [0.10, 0.20, 0.40, 0.40, 0.40]) == 2.0
    # a baseline that plateaus early reaches the lower final score first, though the view ends higher
    assert speedup(steps, [0.1, 0.2, 0.3, 0.4, 0.6], [0.1, 0.5, 0.5, 0.5, 0.5]) == pytest.approx(100 / 350)
    assert np.isnan(speedup(steps, [0.1, 0.2, 0.3, 0.4, float("nan")], base))  # (an AssertionError)
    summary = speedup_summary(steps, [fast, slow], [base, base])
    assert summary["per_seed"] == [2.0, 0.5] and summary["median"] == 1.25
    assert (summary["min"], summary["max"]) == (0.5, 2.0)
    assert np.allclose(summary["gap"], [0, 0.025, 0.0, 0.0, 0.0]) and np.isclose(summary["gap_final"], 0.0)


@pytest.mark.parametrize("kwargs,match", [
    ({"baseline": []}, "name at least one"),
    ({"baseline": ["all", "all"]}, "each baseline once"),
    ({"baseline": ["no_such_col > 1"]}, "^baseline 'no_such_col > 1' is not a tag"),
    ({"budgets": "0.5,x"}, "multiples of steps separated by commas"),
    ({"budgets": "0,1"}, "above 0 and at most 16"),
    ({"eval_every": 99}, "^invalid eval_every 99"),
    ({"metric": "R@5"}, "^metric 'R@5': one of"),
    ({"lr": 0}, "^invalid lr 0: expected a number above 0 and at most 1"),
])
def test_bad_evaluation_options_write_nothing(small, kwargs, match):
    lake, ev = small
    with pytest.raises(LakeError, match=match):
        lake.evaluate(eval_set=ev, seeds=1, steps=5, progress=False, **kwargs)
    assert evaluations(lake).empty and not (Path(lake.uri) / "eval_sets").exists()


def test_an_old_evaluations_table_gains_the_new_columns(small):
    import lance
    import pyarrow as pa

    from lakecurate.evaluate import EVAL_SCHEMA

    lake, ev = small
    old = pa.schema([f for f in EVAL_SCHEMA if f.name not in ("budget", "curve_metric", "curve_steps", "curve")])
    row = {f.name: None for f in old}
    row.update(eval_id="old", arm="view", view="keep", baseline="random", lake_version=1, steps=5, eval_set="x",
               eval_images=6, eval_captions=6, **{m: 0.5 for m in METRICS})
    lance.write_dataset(pa.Table.from_pylist([row], schema=old), str(Path(lake.uri) / "evaluations.lance"))
    res = lake.evaluate(eval_set=ev, seeds=1, steps=4, progress=False)
    df = evaluations(lake)
    assert set(df["eval_id"]) == {"old", res.eval_id} and df.loc[df["eval_id"] == "old", "curve"].isna().all()
    assert lake.report(Path(lake.uri).parent / "r.html").path


def test_evaluate_refuses_overlap_and_bad_views(small, tmp_path: Path):
    lake, ev = small
    shutil.copyfile(SAMPLE_DATA / "horse.jpg", ev / "horse_again.jpg")  # an image the lake holds
    (ev / "horse_again.txt").write_text("a horse")
    cached = set((Path(lake.uri) / "eval_sets").glob("*")) if (Path(lake.uri) / "eval_sets").exists() else set()
    with pytest.raises(LakeError, match="also in lake"):
        lake.evaluate(eval_set=ev, seeds=1, steps=5, progress=False)
    # refused before the set was embedded, and no cache of it left behind (it was cached, then refused)
    assert (set((Path(lake.uri) / "eval_sets").glob("*")) if (Path(lake.uri) / "eval_sets").exists() else set()) == cached
    (ev / "horse_again.jpg").unlink()
    (ev / "horse_again.txt").unlink()
    with pytest.raises(LakeError, match="not a tag .* nor a valid SQL"):
        lake.evaluate("no_such_column > 1", eval_set=ev, seeds=1, steps=5, progress=False)
    with pytest.raises(LakeError, match="does not exist"):
        lake.evaluate(eval_set=tmp_path / "missing", seeds=1, steps=5, progress=False)
    res = CliRunner().invoke(main, ["evaluate", lake.uri, "--eval-set", str(ev), "--seeds", "1", "--steps", "5", "--no-record"])
    assert res.exit_code == 0, res.output
    assert "vs all: speed-up" in res.output and "vs random: speed-up" in res.output and "recorded" not in res.output
    # one seed has no spread: it said "larger than the spread across seeds (0.000)"
    assert "one seed: no spread to judge it by" in res.output and "spread across seeds" not in res.output


@pytest.mark.slow
@pytest.mark.shared
def test_curated_view_beats_random_on_noisy_pool(flickr8k: Path, tmp_path: Path):
    """The issue's check: dedup + alignment filter + rebalance beat random rows of the same size on
    held-out text->image R@5 by more than the spread across seeds."""
    pytest.importorskip("efficientnet_lite_pytorch")
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("eval_curation", REPO / "scripts" / "eval_curation.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["eval_curation"] = mod
    spec.loader.exec_module(mod)
    lake, eval_set, labels = mod.build(flickr8k, tmp_path, target=0.8)
    held_out = set(json.loads((REPO / "lakecurate/weights/offline_heads.json").read_text())["split"]["held_out_images"])
    assert not any(k.split("__")[0] in held_out or k.split("__")[0] + ".jpg" in held_out for k in labels)
    res = lake.evaluate(eval_set=eval_set, baseline="random", seeds=3, steps=300, progress=False)
    d = res.difference("t2i_R@5")
    assert d["difference"] > d["spread"] and d["difference"] > 0, d


def test_evaluate_trains_on_a_synthetic_caption_column(small, tmp_path: Path, monkeypatch):
    from lakecurate import evaluate as ev_mod

    lake, ev = small
    # no such column: refused as such (it said to embed it, with "--model ...", which embed then refused)
    with pytest.raises(LakeError, match="^caption_col: no column 'caption_tinycoca' in lake .*; caption columns: caption"):
        lake.evaluate(eval_set=ev, seeds=1, steps=5, caption_col="caption_tinycoca", progress=False)
    with pytest.raises(LakeError, match="^caption_col: column 'width' .* is not a caption"):
        lake.evaluate(eval_set=ev, seeds=1, steps=5, caption_col="width", progress=False)
    lake.recaption("tiny-random-coca", workers=0, progress=False)
    with pytest.raises(LakeError, match="run: lakecurate embed .* --model tiny-random --caption-col caption_tinycoca$"):
        lake.evaluate(eval_set=ev, seeds=1, steps=5, caption_col="caption_tinycoca", progress=False)
    lake.embed("tiny-random", caption_col="caption_tinycoca", progress=False)
    seen = []
    real = ev_mod.train_heads

    def spy(x_img, x_txt, **kw):  # the text vectors the proxy trains on
        seen.append(x_txt.copy())
        return real(x_img, x_txt, **kw)

    monkeypatch.setattr(ev_mod, "train_heads", spy)
    res = lake.evaluate(eval_set=ev, seeds=1, steps=5, caption_col="caption_tinycoca", record=False, progress=False)
    assert res.view.endswith("[captions: caption_tinycoca]")
    t = lake.dataset().to_table(columns=["id", "clip_tinyrandom_caption_tinycoca_text", "clip_tinyrandom_text", "keep"],
                                filter="keep AND clip_tinyrandom_image IS NOT NULL")
    syn = np.asarray(t.column("clip_tinyrandom_caption_tinycoca_text").combine_chunks().values.to_numpy(), np.float32)
    syn = syn.reshape(t.num_rows, -1)
    got = seen[0]
    # the view arm trained on the synthetic captions' vectors (normalised), not the originals'
    assert got.shape == syn.shape
    assert np.allclose(np.sort(got, axis=0), np.sort(syn, axis=0), atol=1e-3)
    orig = np.asarray(t.column("clip_tinyrandom_text").combine_chunks().values.to_numpy(), np.float32).reshape(t.num_rows, -1)
    assert not np.allclose(np.sort(got, axis=0), np.sort(orig, axis=0), atol=1e-3)


def test_a_manifest_eval_set_whose_images_changed_is_read_again(small, tmp_path: Path):
    """A CSV evaluation set's cache was keyed by the CSV alone: its images replaced by photos of the
    lake, evaluate went on with the old embeddings and no held-out check."""
    import csv

    lake, ev = small
    manifest = tmp_path / "eval.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "caption"])
        for p in sorted(ev.glob("*.png")):
            w.writerow([str(p), (ev / f"{p.stem}.txt").read_text()])
    lake.evaluate(eval_set=manifest, root=ev, seeds=1, steps=5, progress=False, record=False)
    first = next(p for p in sorted(ev.glob("*.png")))
    shutil.copyfile(SAMPLE_DATA / "horse.jpg", first)  # now an image the lake holds, under the same name
    with pytest.raises(LakeError, match="also in lake"):
        lake.evaluate(eval_set=manifest, root=ev, seeds=1, steps=5, progress=False, record=False)


def test_an_eval_set_of_one_image_or_blank_captions_is_refused_before_training(small, tmp_path: Path, monkeypatch):
    """Two captions of one image passed "2 usable pairs", trained every arm, then failed in the
    retrieval metrics with a ValueError traceback; pairs with an empty caption were embedded as ""
    and scored as if they were pairs. Both are refused (or left out) before any training."""
    from lakecurate import evaluate as ev_mod

    lake, ev = small
    trained = []
    monkeypatch.setattr(ev_mod, "train_heads", lambda *a, **kw: trained.append(1))
    pics = sorted(ev.glob("*.png"))
    one = tmp_path / "one.csv"
    one.write_text(f"image,caption\n{pics[0]},a noisy picture\n{pics[0]},the same picture again\n")
    with pytest.raises(LakeError, match=r"2 usable pairs of 1 distinct images .*needs 2 images"):
        lake.evaluate(eval_set=one, seeds=1, steps=5, progress=False, root=tmp_path)
    blank = tmp_path / "blank.csv"
    blank.write_text("image,caption\n" + "".join(f"{p},\n" for p in pics[:3]) + f"{pics[3]},a picture\n")
    with pytest.raises(LakeError, match=r"1 usable pairs of 1 distinct images .*3 rows have no caption"):
        lake.evaluate(eval_set=blank, seeds=1, steps=5, progress=False, root=tmp_path)
    assert not trained
    some = tmp_path / "some.csv"  # blank captions among good ones: left out of the set
    some.write_text("image,caption\n" + "".join(f"{p},picture {k}\n" for k, p in enumerate(pics[:4])) + f"{pics[4]},\n")
    monkeypatch.undo()
    res = lake.evaluate(eval_set=some, seeds=1, steps=5, progress=False, root=tmp_path, record=False)
    assert res.eval_images == 4 and res.eval_captions == 4


def test_an_eval_set_ingest_refuses_leaves_no_cache_and_names_evaluates_own_fix(small, tmp_path: Path):
    """A manifest whose columns ingest could not read left an empty cache in LAKE/eval_sets and
    told the user to pass --image-col (evaluate has no such option); a --root that is no folder
    was refused as "pass --root" after the ingest."""
    lake, ev = small
    cache = Path(lake.uri) / "eval_sets"
    before = set(cache.glob("*")) if cache.exists() else set()
    bad = tmp_path / "badcols.csv"
    bad.write_text("foo,bar\n1,2\n")
    with pytest.raises(LakeError, match="cannot tell which column holds the image path .*name them image and caption") as err:
        lake.evaluate(eval_set=bad, seeds=1, steps=5, progress=False)
    assert "--image-col" not in str(err.value)
    with pytest.raises(LakeError, match="^root '.*nowhere' is not a folder"):
        lake.evaluate(eval_set=bad, seeds=1, steps=5, progress=False, root=tmp_path / "nowhere")
    assert (set(cache.glob("*")) if cache.exists() else set()) == before


def _manifest(ev: Path, out: Path) -> Path:
    """A CSV evaluation set of the noisy pictures, by absolute path."""
    import csv

    with open(out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "caption"])
        for p in sorted(ev.glob("*.png")):
            w.writerow([str(p), (ev / f"{p.stem}.txt").read_text()])
    return out


def test_eval_set_rows_refused_at_ingest_are_said_and_a_restored_image_is_read_again(small, tmp_path: Path):
    """One evaluation image missing: the run scored 5 of 6 images without a word, and after the
    image was restored the cached set (keyed by the manifest alone) was used again, still 5."""
    lake, ev = small
    manifest = _manifest(ev, tmp_path / "eval.csv")
    gone = sorted(ev.glob("*.png"))[2]
    gone.rename(tmp_path / "away.png")
    res = lake.evaluate(eval_set=manifest, root=ev, seeds=1, steps=4, progress=False, record=False)
    assert res.eval_images == 5
    said = [w for w in res.warnings if "left out" in w]
    assert len(said) == 1 and "1 rows refused at ingest: file_missing 1" in said[0] and str(gone) in said[0]
    out = CliRunner().invoke(main, ["evaluate", lake.uri, "--eval-set", str(manifest), "--root", str(ev), "--seeds", "1",
                                    "--steps", "4", "--no-record", "--json"])
    assert out.exit_code == 0, out.output
    assert "warning: evaluation set" in out.stderr and str(gone) in out.stderr
    assert any(str(gone) in w for w in json.loads(out.stdout)["warnings"])
    (tmp_path / "away.png").rename(gone)  # back (with its old modification time): the set is read again
    res = lake.evaluate(eval_set=manifest, root=ev, seeds=1, steps=4, progress=False, record=False)
    assert res.eval_images == 6 and not [w for w in res.warnings if "left out" in w]


def test_evaluate_refuses_stale_embeddings_or_warns_with_allow_stale(small):
    """Captions rewritten after embed: status said embed is stale and curate refused, but evaluate
    trained on the old captions' vectors (its check covered the view's columns only)."""
    import lance

    lake, ev = small
    lance.dataset(str(Path(lake.uri) / "pairs.lance")).update({"caption": "'another caption entirely'"},
                                                              where="caption IS NOT NULL")
    with pytest.raises(LakeError, match=r"embed \(clip_tinyrandom.*is stale.*lakecurate embed .*--allow-stale"):
        lake.evaluate("width > 0", eval_set=ev, seeds=1, steps=4, progress=False, record=False)
    res = lake.evaluate("width > 0", eval_set=ev, seeds=1, steps=4, progress=False, record=False, allow_stale=True)
    assert any(w.startswith("embed (clip_tinyrandom") and "stale" in w for w in res.warnings)


@pytest.mark.parametrize("args,option", [
    (["--lr", "nan"], "--lr"),
    (["--lr", "inf"], "--lr"),
    (["--budget", "abc"], "--budget"),
    (["--budget", "0"], "--budget"),
    (["--budget", "0.5,nan"], "--budget"),
    (["--eval-every", "1000", "--steps", "5"], "--eval-every"),
    (["--baseline", "all", "--baseline", "all"], "--baseline"),
])
def test_evaluate_option_errors_exit_2_before_the_lake_is_opened(tmp_path: Path, args, option):
    ev = noisy_eval_set(tmp_path / "eval")
    res = CliRunner().invoke(main, ["evaluate", str(tmp_path / "no_such_lake"), "--eval-set", str(ev), *args])
    assert res.exit_code == 2, res.output
    assert option in res.output and "no lake" not in res.output and "Traceback" not in res.output
    assert not (tmp_path / "no_such_lake").exists()


def test_evaluate_wrong_kind_arguments_are_one_line_errors(small):
    lake, _ev = small
    for bad in (None, 123):
        with pytest.raises(LakeError, match=f"invalid eval_set {bad!r}: expected a path"):
            lake.evaluate(eval_set=bad, record=False)
    with pytest.raises(LakeError, match=r"evaluate takes view, eval_set, .*; not bogus"):
        lake.evaluate(eval_set="x", bogus=1)


def test_budgets_that_round_to_the_same_steps_are_trained_once(small, monkeypatch):
    """--steps 4 --budget 0.05,0.1,0.2 trained three identical 1-step arms, listed as three budgets."""
    from lakecurate import evaluate as ev_mod

    assert ev_mod.budget_steps([0.05, 0.1, 0.2, 1.0, 1.1], 4) == (
        [0.05, 1.0], ["budgets 0.1, 0.2 x steps 4 train 1 step, as 0.05 does: trained once, as 0.05 (raise steps "
                      "to tell them apart)",
                      "budgets 1.1 x steps 4 trains 4 steps, as 1 does: trained once, as 1 (raise steps to tell "
                      "them apart)"])
    with speaking("cli"):  # the CLI's words
        assert ev_mod.budget_steps([0.05, 0.1], 4)[1] == ["--budget 0.1 x --steps 4 trains 1 step, as 0.05 does: trained "
                                                          "once, as 0.05 (raise --steps to tell them apart)"]
    lake, ev = small
    trained: list[int] = []
    real = ev_mod.train_heads

    def spy(x_img, x_txt, **kw):
        trained.append(kw["steps"])
        return real(x_img, x_txt, **kw)

    monkeypatch.setattr(ev_mod, "train_heads", spy)
    res = lake.evaluate(eval_set=ev, baseline="all", seeds=1, steps=4, budgets="0.05,0.1,0.2", progress=False, record=False)
    assert sorted(res.budgets) == ["0.05", "1"] and sorted(trained) == [1, 1, 4, 4]  # view and all, once a step count
    assert list(res.budget_table()["steps"]) == [1, 4]
    assert len(res.notes) == 1 and "0.1, 0.2" in res.notes[0]


def test_evaluate_on_a_test_model_warns_its_scores_are_meaningless(small):
    lake, ev = small  # embedded with tiny-random
    res = lake.evaluate(eval_set=ev, seeds=1, steps=4, progress=False, record=False)
    assert any("randomly initialised test model" in w and "meaningless" in w for w in res.warnings)
    out = CliRunner().invoke(main, ["evaluate", lake.uri, "--eval-set", str(ev), "--seeds", "1", "--steps", "4", "--no-record"])
    assert out.exit_code == 0, out.output
    assert "warning: embedding 'clip_tinyrandom' comes from a randomly initialised test model" in out.stderr


@pytest.mark.shared
def test_evaluate_warns_when_the_eval_set_trained_the_offline_heads(flickr8k: Path, tmp_path: Path):
    """The offline encoder's heads were trained on 640 of the 800 Flickr8k photos: an evaluation set
    of those measures memory (its frozen-encoder recall was 1.000), and says so; held-out photos do not."""
    pytest.importorskip("efficientnet_lite_pytorch")
    from lakecurate import offline

    record = json.loads(offline.RECORD.read_text())
    held_out = record["split"]["held_out_images"]
    trained = sorted({p.name for p in (flickr8k / "images").glob("*.jpg")} - set(held_out))
    assert len(offline.trained_on()) == record["split"]["train_images"] == 640

    def folder_of(name: str, photos: list[str]) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        for i, photo in enumerate(photos):
            shutil.copy(flickr8k / "images" / photo, folder / photo)
            (folder / photo).with_suffix(".txt").write_text(f"a photograph, number {i}")
        return folder

    lake = Lake.create(tmp_path / "lake")
    lake.ingest(folder_of("pool", held_out[10:18]), progress=False)
    lake.embed("offline", workers=0, progress=False)

    mixed = folder_of("mixed", trained[:3] + held_out[:3])
    res = lake.evaluate(eval_set=mixed, view="width > 0", seeds=1, steps=4, record=False, progress=False)
    assert any(w.startswith("3 of 6 evaluation images trained the offline encoder's heads") for w in res.warnings), res.warnings
    res = lake.evaluate(eval_set=folder_of("clean", held_out[3:9]), view="width > 0", seeds=1, steps=4, record=False, progress=False)
    assert not any("trained the offline encoder" in w for w in res.warnings), res.warnings


def test_evaluate_takes_numpy_integers_and_whole_floats(small):
    """seeds=np.int64(1) was refused as "np.int64(1): a whole number of at least 1" (every other stage
    takes numpy's integers)."""
    lake, ev = small
    res = lake.evaluate(eval_set=ev, seeds=np.int64(1), steps=4.0, eval_every=np.int32(2), record=False, progress=False)
    assert res.steps == 4 and res.seeds == [0] and res.curve_steps == [0, 2, 4]


def test_blank_captions_left_out_of_an_eval_set_are_named_as_such(small, tmp_path: Path):
    """Embed gives a blank caption no text vector now: evaluate counted those rows as having "no
    offline vectors" (pointing at embedding) and "no caption" never, once they were filtered first."""
    from lakecurate.columns import field_provenance
    from lakecurate.evaluate import load_eval_set

    lake, ev = small
    pics = sorted(ev.glob("*.png"))
    mixed = tmp_path / "mixed.csv"
    mixed.write_text("image,caption\n" + "".join(f"{p},picture {k}\n" for k, p in enumerate(pics[:4]))
                     + "".join(f"{p}, \n" for p in pics[4:6]))
    image = next(f for f in lake.dataset().schema if f.name.endswith("_image"))
    got, _ = load_eval_set(lake, mixed, field_provenance(image), progress=False, root=tmp_path)
    assert "2 rows have no caption" in got.left_out and "vectors" not in got.left_out, got.left_out


def test_near_copies_of_evaluation_images_are_left_out_of_every_arm(tmp_path: Path, monkeypatch):
    """Only exact copies (the same bytes) of an evaluation image were refused: a resized, re-encoded
    copy in the pool trained every arm on an image it was then scored on, and nothing said so."""
    pytest.importorskip("efficientnet_lite_pytorch")
    from PIL import Image

    import lakecurate.evaluate as evaluate_mod

    lake = Lake.create(tmp_path / "lake")
    lake.ingest(SAMPLE_DATA, progress=False)
    lake.embed("offline", workers=0, batch_size=8, progress=False)
    lake.curate({"name": "t", "step": [{"filter": "ingest_error"}]}, progress=False)
    ev = noisy_eval_set(tmp_path / "eval")
    im = Image.open(SAMPLE_DATA / "horse.jpg").convert("RGB")
    im.resize((im.width * 3 // 5, im.height * 3 // 5)).save(ev / "horse_small.jpg", quality=70)
    (ev / "horse_small.txt").write_text("a brown horse standing in a field")
    horse = lake.sql("SELECT id FROM pairs WHERE key = 'horse.jpg'")["id"].iloc[0]
    usable = lake.count("offline_image IS NOT NULL AND offline_text IS NOT NULL")
    trained: list[int] = []
    real = evaluate_mod.train_heads

    def spy(img, txt, **kw):  # every arm's training rows, by their image vectors
        trained.append(len(img))
        return real(img, txt, **kw)

    monkeypatch.setattr(evaluate_mod, "train_heads", spy)
    res = lake.evaluate(eval_set=ev, seeds=1, steps=4, record=False, progress=False)
    assert res.near_copies == 1 and res.held_out_cosine == 0.75 and res.near_copy_ids == [horse]
    assert res.rows["all"] == usable - 1 and res.rows["view"] == lake.count("keep AND offline_text IS NOT NULL") - 1
    assert max(trained) == usable - 1
    said = [w for w in res.warnings if "near cop" in w]
    assert len(said) == 1 and f"ids {horse} (horse.jpg)" in said[0] and "left out of every arm" in said[0], res.warnings
    assert said[0].endswith("(held_out_cosine sets the bar)")
    lake.evaluate(eval_set=ev, seeds=1, steps=4, progress=False)  # recorded: what was left out, by which bar
    recorded = evaluations(lake)
    assert set(recorded["near_copies"]) == {1} and set(recorded["held_out_cosine"]) == {0.75}
    # the bar is the caller's: at 1.0 the copy (cosine ~0.97) counts as another image
    res = lake.evaluate(eval_set=ev, seeds=1, steps=4, record=False, progress=False, held_out_cosine=1.0)
    assert res.near_copies == 0 and res.rows["all"] == usable and not any("near cop" in w for w in res.warnings)
    with pytest.raises(LakeError, match="invalid held_out_cosine 85"):  # (the Python API's own name)
        lake.evaluate(eval_set=ev, seeds=1, steps=4, record=False, progress=False, held_out_cosine=85)
    out = CliRunner().invoke(main, ["evaluate", lake.uri, "--eval-set", str(ev), "--seeds", "1", "--steps", "4",
                                    "--no-record", "--held-out-cosine", "0.9"])
    assert out.exit_code == 0, out.output
    assert "1 row of the pool is a near copy of evaluation images (image cosine >= 0.9" in out.output
    assert "(--held-out-cosine sets the bar)" in out.output
