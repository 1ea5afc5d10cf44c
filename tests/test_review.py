"""Human review verdicts as columns: mark, undo, concurrent reviewers, the recipe's review step."""

from __future__ import annotations

import json
import multiprocessing as mp
import re
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

from lakecurate import Lake
from lakecurate import options, review
from lakecurate.errors import LakeError
from tests.conftest import SAMPLE_DATA


@pytest.fixture
def sample(tmp_path: Path) -> Lake:
    lake = Lake.create(tmp_path / "lake")
    lake.ingest(SAMPLE_DATA, progress=False)
    return lake


def _values(lake: Lake, ids=None) -> dict[str, dict]:
    rows = lake.dataset().to_table(columns=["id", *review.NAMES]).to_pylist()
    return {r["id"]: r for r in rows if ids is None or r["id"] in ids}


def test_mark_writes_the_columns_and_undo_restores_them(sample: Lake):
    ids = sorted(sample.to_pandas(["id"])["id"])[:3]
    first = review.mark(sample, ids[:2], verdict="drop", reason="watermark", by="ana")
    assert first["rows"] == 2 and first["not_found"] == []
    second = review.mark(sample, ids[1:], verdict="keep", by="bo")
    got = _values(sample, ids)
    assert (got[ids[0]]["review_verdict"], got[ids[0]]["review_reason"], got[ids[0]]["review_by"]) == ("drop", "watermark", "ana")
    assert (got[ids[1]]["review_verdict"], got[ids[1]]["review_reason"], got[ids[1]]["review_by"]) == ("keep", None, "bo")
    assert got[ids[2]]["review_verdict"] == "keep"
    untouched = [r for i, r in _values(sample).items() if i not in ids]
    assert untouched and all(r["review_verdict"] is None for r in untouched)

    # undo the second mark: ids[1] is back to ana's drop, ids[2] unreviewed
    u = review.undo(sample, second["action"], by="bo")
    assert u["rows"] == 2 and u["changed_since"] == []
    got = _values(sample, ids)
    assert (got[ids[1]]["review_verdict"], got[ids[1]]["review_by"]) == ("drop", "ana")
    assert got[ids[2]]["review_verdict"] is None and got[ids[2]]["review_by"] is None
    kinds = [h["kind"] for h in review.history(sample)]
    assert kinds[0].startswith("undo ") and kinds.count("mark") == 2


def test_undo_leaves_a_row_changed_since_alone(sample: Lake):
    ids = sorted(sample.to_pandas(["id"])["id"])[:2]
    a = review.mark(sample, ids, verdict="keep", by="ana")
    review.mark(sample, ids[:1], verdict="drop", reason="blurry", by="bo")
    u = review.undo(sample, a["action"])
    assert u["changed_since"] == [ids[0]] and u["rows"] == 1
    got = _values(sample, ids)
    assert got[ids[0]]["review_verdict"] == "drop" and got[ids[1]]["review_verdict"] is None
    # an undo that restores nothing names no action (it returned an id the log never held)
    again = review.undo(sample, a["action"])
    assert again["rows"] == 0 and again["action"] is None
    assert sorted(h["kind"] for h in review.history(sample)).count("undo " + a["action"]) == 1


def test_a_branch_without_labels_says_so_and_names_mains(sample: Lake):
    ids = sorted(sample.to_pandas(["id"])["id"])[:1]
    review.set_labels(sample, ["watermark", "nsfw"])
    exp = sample.create_branch("exp")
    with pytest.raises(LakeError, match=r"not one of branch exp's labels \(none set; main has watermark, nsfw\); "
                                        r"set them with: lake.serve\(labels=\['a', 'b', 'c'\]\)$"):
        review.mark(exp, ids, label="watermark")
    with options.speaking("cli"), pytest.raises(LakeError, match=r"set them with: lakecurate --branch exp serve"):
        review.mark(exp, ids, label="watermark")


def test_labels_and_checks(sample: Lake):
    ids = sorted(sample.to_pandas(["id"])["id"])[:2]
    with pytest.raises(LakeError, match="not one of this lake's labels"):
        review.mark(sample, ids, label="cat")
    assert review.set_labels(sample, ["cat", " dog ", "cat"]) == ["cat", "dog"]
    review.mark(sample, ids, verdict="drop", reason="nsfw")
    review.mark(sample, ids[:1], label="dog")  # a label keeps the verdict
    got = _values(sample, ids)
    assert (got[ids[0]]["review_label"], got[ids[0]]["review_verdict"]) == ("dog", "drop")
    for kw, msg in [({"verdict": "drop"}, "needs a reason"), ({"verdict": "maybe"}, "use one of"),
                    ({}, "give a verdict"), ({"verdict": "keep", "reason": "x"}, "not with a keep")]:
        with pytest.raises(LakeError, match=msg):
            review.mark(sample, ids, **kw)
    with pytest.raises(LakeError, match="read-only"):
        review.mark(sample, ids, verdict="keep", read_only=True)
    assert review.mark(sample, [ids[0], "no-such-id"], verdict="keep")["not_found"] == ["no-such-id"]
    version = sample.version
    with pytest.raises(LakeError, match="no pair of lake .* has id no-such-id; nothing marked"):  # was an action
        review.mark(sample, ["no-such-id"], verdict="keep")  # with 0 rows and an undo hint that failed
    assert sample.version == version
    with pytest.raises(LakeError, match="not in lake"):
        review.undo(sample, "../../etc")


def _reviewer(uri: str, name: str, ids: list[str], q) -> None:
    lake = Lake.open(uri)
    for i in ids:  # one mark per row: many small commits racing the other reviewers'
        review.mark(lake, [i], verdict="drop", reason=f"by {name}", by=name)
    from lakecurate.store import CONFLICTS_RETRIED
    q.put(CONFLICTS_RETRIED[0])


@pytest.mark.slow
def test_concurrent_reviewers_lose_nothing(sample: Lake):
    ids = sorted(sample.to_pandas(["id"])["id"])
    assert len(sample.dataset().get_fragments()) == 1  # every reviewer writes the same fragment
    review.declare(sample)
    names = ["r0", "r1", "r2", "r3"]
    share = {n: ids[k::4][:5] for k, n in enumerate(names)}
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_reviewer, args=(sample.uri, n, share[n], q)) for n in names]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    retried = sum(q.get(timeout=5) for _ in procs)
    got = _values(sample)
    for n, mine in share.items():
        for i in mine:
            assert (got[i]["review_verdict"], got[i]["review_by"], got[i]["review_reason"]) == ("drop", n, f"by {n}")
    assert sum(r["review_verdict"] is not None for r in got.values()) == sum(len(v) for v in share.values())
    assert retried > 0  # the reviewers did collide, and the read-modify-write redid the losers' marks


def test_recipe_review_step_overrides_the_machine(sample: Lake):
    recipe = {"name": "r", "step": [{"filter": "caption_missing"}, {"filter": "review"}]}
    before = sample.curate(recipe, progress=False)  # nobody reviewed yet: the step changes nothing
    df = sample.to_pandas(["id", "keep", "drop_reason"])
    dropped = df[~df["keep"]]["id"].tolist()
    kept = df[df["keep"]]["id"].tolist()
    assert dropped and len(kept) >= 2 and before.dropped["review"] == 0
    review.mark(sample, dropped[:1], verdict="keep", by="ana")
    review.mark(sample, kept[:2], verdict="drop", reason="watermark", by="ana")
    assert [s["state"] for s in sample.status()["stages"] if s["stage"] == "curate"] == ["stale"]
    assert [s["state"] for s in sample.status()["stages"] if s["stage"] == "review"] == ["current"]
    after = sample.curate(recipe, progress=False)
    got = sample.to_pandas(["id", "keep", "drop_reason"]).set_index("id")
    assert bool(got.loc[dropped[0], "keep"]) and pd.isna(got.loc[dropped[0], "drop_reason"])
    assert not got.loc[kept[0], "keep"] and got.loc[kept[1], "drop_reason"] == "review"
    assert after.dropped["review"] == 2
    assert after.dropped["caption_missing"] == before.dropped["caption_missing"] - 1
    assert sum(after.dropped.values()) == int((~got["keep"]).sum())


def test_verdicts_a_recipe_does_not_read_are_named_by_status_and_export(sample: Lake, tmp_path: Path):
    """A recipe without a review step ignores the verdicts: status called the view current without a
    note, and export and the loader shipped the rows reviewers had dropped. Following the note's
    advice makes the view follow them."""
    recipe = tmp_path / "mine.toml"
    recipe.write_text('name = "mine"\n\n[[step]]\nfilter = "ingest_error"\n\n[[step]]\nfilter = "caption_missing"\n')
    sample.curate(str(recipe), progress=False)
    df = sample.to_pandas(["id", "keep", "drop_reason"])
    kept, dropped = df[df["keep"]]["id"].tolist(), df[df["drop_reason"] == "caption_missing"]["id"].tolist()
    review.mark(sample, kept[:2], verdict="drop", reason="watermark", by="ana")
    review.mark(sample, dropped[:1], verdict="keep", by="ana")
    says = (f"2 rows reviewers marked drop are still in the curated view and 1 row reviewers marked keep was dropped "
            f"by the recipe: recipe mine has no review step, the only step that reads reviewers' verdicts; add "
            f"`[[step]] filter = \"review\"` to {recipe} and curate again")
    status = sample.status()
    assert status["view"] == "keep" and says in status["view_notes"]
    assert [s["state"] for s in status["stages"] if s["stage"] == "curate"] == ["current"]
    rep = sample.export(tmp_path / "out", "parquet")
    assert rep.rows == len(kept) and says in rep.stale  # the rows are still shipped (nothing else changes), but said
    with recipe.open("a") as f:  # the advice
        f.write('\n[[step]]\nfilter = "review"\n')
    sample.curate(str(recipe), progress=False)
    assert sample.status()["view_notes"] == []
    assert sample.export(tmp_path / "again", "parquet").rows == len(kept) - 2 + 1


def test_a_keep_does_not_revive_a_row_without_an_image(sample: Lake, tmp_path: Path):
    """A reviewer's keep made rows of ingest_status 'error' kept: curate said "kept 58" and export
    wrote 56 without a word. ingest_error wins over a keep; a view holding such rows all the same (a
    recipe without the step, before it ran first in every recipe) is exported without them, and export
    says so."""
    errors = sample.to_pandas(["id"], where="ingest_status = 'error'")["id"].tolist()
    assert errors
    review.mark(sample, errors, verdict="keep", by="ana")
    rep = sample.curate({"name": "r", "step": [{"filter": "ingest_error"}, {"filter": "review"}]}, progress=False)
    got = sample.to_pandas(["id", "keep", "drop_reason"], where="ingest_status = 'error'")
    assert not got["keep"].any() and set(got["drop_reason"]) == {"ingest_error"}
    assert rep.dropped["ingest_error"] == len(errors) and rep.kept == sample.count("keep")
    out = sample.export(tmp_path / "out", "parquet")
    assert out.rows == rep.kept and out.stale == []
    sample.curate({"name": "bare", "step": [{"filter": "review"}]}, progress=False)  # no ingest_error step
    assert sample.count("keep AND ingest_status = 'error'") == 0  # it runs first all the same
    out = sample.export(tmp_path / "again", "parquet", where="keep OR ingest_status = 'error'")
    assert out.rows == sample.count("keep")
    assert out.stale == [f"{len(errors)} rows of the view left out: ingest_status is 'error' (no usable image; "
                         f"see ingest_error)"]


def test_a_review_column_dropped_outside_says_what_works(sample: Lake):
    """With review_by dropped by Lance itself, a mark said "run with --recompute to rebuild them":
    review takes no --recompute. Both ways the message names work when followed."""
    import shlex

    from click.testing import CliRunner

    from lakecurate.cli import main

    ids = sorted(sample.to_pandas(["id"])["id"])[:2]
    review.mark(sample, ids[:1], verdict="drop", reason="watermark", by="ana")
    sample.dataset().drop_columns(["review_by"])
    version = sample.version
    with pytest.raises(LakeError) as err:
        review.mark(sample, ids[1:], verdict="keep", by="bo")
    msg = str(err.value)
    assert "--recompute" not in msg and "without review_by" in msg and sample.version == version
    back = int(re.search(r"Go on with lake\.restore_reviews\((\d+)\) ", msg).group(1))
    with options.speaking("cli"), pytest.raises(LakeError, match=fr"Go on with lakecurate review \S+ --from-version {back} "):
        review.mark(sample, ids[1:], verdict="keep", by="bo")
    sample.restore_reviews(back)
    review.mark(sample, ids[1:], verdict="keep", by="bo")  # review_by is back, with ana's mark
    assert _values(sample, ids)[ids[0]]["review_by"] == "ana" and _values(sample, ids)[ids[1]]["review_by"] == "bo"

    sample.dataset().drop_columns(["review_by"])
    with pytest.raises(LakeError) as err:
        review.mark(sample, ids[1:], verdict="drop", reason="blurry")
    drop = shlex.split(re.search(r"mark again .*?: (lakecurate drop .*)$", str(err.value)).group(1))
    res = CliRunner().invoke(main, drop[1:])
    assert res.exit_code == 0, res.output
    review.mark(sample, ids[1:], verdict="drop", reason="blurry", by="cy")
    assert review.counts(sample.dataset()) == {"drop": 1} and _values(sample, ids)[ids[1]]["review_by"] == "cy"


def test_control_characters_are_cleaned_from_review_text(sample: Lake):
    """A reviewer name, reason or label with NUL and a terminal's ESC was stored and printed raw
    (the plain --history table printed a NUL). They are removed, as recaption removes them from a
    reply; a text of nothing else is no text."""
    from click.testing import CliRunner

    from lakecurate.cli import main

    ids = sorted(sample.to_pandas(["id"])["id"])[:2]
    evil = "\u0000\u001b[31m"
    bare = "\x00\x1b\x7f"
    assert review.set_labels(sample, [f"wrong{evil} caption", bare]) == ["wrong[31m caption"]
    res = CliRunner().invoke(main, ["review", sample.uri, ids[0], "--drop", f"water{evil}mark", "--by", f"ana{evil}\x7f"])
    assert res.exit_code == 0, res.output
    review.mark(sample, ids[1:], label=f"wrong{evil} caption", by=bare)
    got = _values(sample, ids)
    assert (got[ids[0]]["review_reason"], got[ids[0]]["review_by"]) == ("water[31mmark", "ana[31m")
    assert (got[ids[1]]["review_label"], got[ids[1]]["review_by"]) == ("wrong[31m caption", "anonymous")
    hist = CliRunner().invoke(main, ["review", sample.uri, "--history"]).output
    assert "ana[31m" in hist and "\x00" not in hist and "\x1b" not in hist
    with pytest.raises(LakeError, match="a drop needs a reason"):
        review.mark(sample, ids, verdict="drop", reason=bare)


def test_bidi_controls_are_cleaned_from_review_text(sample: Lake):
    """U+202E (right-to-left override) in a reason showed the rest of a --history row, or a grid
    cell, reversed: 'ok\u202egnp.exe' read 'okexe.png'."""
    ids = sorted(sample.to_pandas(["id"])["id"])[:1]
    assert review.set_labels(sample, ["a\u2066b\u2069", "\u202e"]) == ["ab"]
    review.mark(sample, ids, verdict="drop", reason="ok\u202egnp.exe", label="ab", by="ana\u200f\u202a")
    got = _values(sample, ids)[ids[0]]
    assert (got["review_reason"], got["review_by"], got["review_label"]) == ("okgnp.exe", "ana", "ab")
    # zero-width characters made a second reviewer that looks like the first ('a\u200bna')
    review.mark(sample, ids, verdict="keep", label="\u200bab\u2060", by="a\u200bna\ufeff")
    got = _values(sample, ids)[ids[0]]
    assert (got["review_by"], got["review_label"]) == ("ana", "ab")


def test_text_that_is_not_utf8_is_one_line_naming_the_field(sample: Lake):
    """A reviewer name from a Latin-1 terminal ('Jos\\xe9': a lone surrogate once decoded) or a lone
    surrogate in an id ended review in a UnicodeEncodeError traceback, --json included."""
    from click.testing import CliRunner

    from lakecurate.cli import main

    ids = sorted(sample.to_pandas(["id"])["id"])[:1]
    before = sample.version
    res = CliRunner().invoke(main, ["review", sample.uri, ids[0], "--keep", "--by", "Jos\udce9", "--json"])
    assert res.exit_code == 1 and "Traceback" not in res.output and isinstance(res.exception, SystemExit), res.output
    err = json.loads(res.stdout)["error"]
    assert "reviewer" in err and "not UTF-8 text" in err
    for kw in ({"ids": ["x\ud800"]}, {"ids": ids, "reason": "b\ud800lur"}):
        with pytest.raises(LakeError, match="not UTF-8 text"):
            review.mark(sample, **{"verdict": "drop", "reason": "blur", **kw})
    with pytest.raises(LakeError, match="review label .* not UTF-8"):
        review.set_labels(sample, ["ok", "\udce9"])
    assert sample.version == before and review.labels(sample) == []


def test_undoing_an_action_twice_says_it_is_undone_already(sample: Lake):
    """The second undo said "restored 0 rows; changed since, left alone: <id>", as if someone had."""
    from click.testing import CliRunner

    from lakecurate.cli import main

    ids = sorted(sample.to_pandas(["id"])["id"])[:2]
    a = review.mark(sample, ids, verdict="drop", reason="blur", by="ana")
    assert review.undo(sample, a["action"])["rows"] == 2
    version = sample.version
    again = review.undo(sample, a["action"])
    assert again["already_undone"] and again["changed_since"] == [] and again["action"] is None
    res = CliRunner().invoke(main, ["review", sample.uri, "--undo", a["action"]])
    assert res.exit_code == 0 and "already undone" in res.output and "changed since" not in res.output, res.output
    assert sample.version == version


def test_marks_are_not_brought_back_from_another_branch(sample: Lake):
    """--from-version BRANCH copied another branch's marks into main, logged "from version N" (N a
    number of that branch)."""
    from click.testing import CliRunner

    from lakecurate.cli import main

    ids = sorted(sample.to_pandas(["id"])["id"])[:1]
    exp = sample.create_branch("exp")
    review.mark(exp, ids, verdict="keep", by="bob")
    before = sample.version
    res = CliRunner().invoke(main, ["review", sample.uri, "--from-version", "exp", "--json"])
    assert res.exit_code == 1 and "branch exp, not of main" in json.loads(res.stdout)["error"], res.output
    assert sample.version == before and review.history(sample) == []


def test_compact_merges_fragments_nobody_reviewed(tmp_path: Path):
    lake = Lake.create(tmp_path / "lake")
    from lakecurate.plant import synthetic_pairs
    for k in range(3):
        lake.append(synthetic_pairs(4 * k, 4))
    review.mark(lake, [lake.to_pandas(["id"])["id"][0]], verdict="keep")
    out = lake.compact()
    assert out["fragments_after"] == 1 and out["left_incomplete"] == 0
    assert review.counts(lake.dataset()) == {"keep": 1}


class _Killed(BaseException):
    """A stand-in for a kill -9 (no handler runs, nothing after it is written)."""


def test_a_review_killed_between_its_two_writes_leaves_no_mark_that_cannot_be_undone(sample: Lake, monkeypatch):
    """mark() committed the verdicts first and its review_log entry after: killed in between, the
    rows held marks that history did not show and no undo could reach."""
    ids = sorted(sample.to_pandas(["id"])["id"])[:3]
    writes: list[str] = []
    fill, side = review.columns.fill_fragments, type(sample).write_side

    def second_is_killed(what: str, real, *a, **k):
        writes.append(what)
        if len(writes) == 2:
            raise _Killed(what)
        return real(*a, **k)

    monkeypatch.setattr(review.columns, "fill_fragments", lambda *a, **k: second_is_killed("marks", fill, *a, **k))
    monkeypatch.setattr(type(sample), "write_side", lambda *a, **k: second_is_killed("log", side, *a, **k))
    with pytest.raises(_Killed):
        review.mark(sample, ids, verdict="drop", reason="spam", by="A")
    monkeypatch.undo()
    marked = {i for i, r in _values(sample).items() if r["review_verdict"] is not None}
    logged = review.history(sample)
    assert not marked or logged, "marks in the lake that review --history does not show"
    for entry in logged:  # undoing what the log holds leaves no mark of the killed review behind
        if entry["landed"] is False:  # (its marks never landed: nothing to undo, and undo says so)
            with pytest.raises(LakeError, match="never landed"):
                review.undo(sample, entry["action"], by="A")
        else:
            review.undo(sample, entry["action"], by="A")
    assert all(r["review_verdict"] is None for r in _values(sample).values())
    # and the next review works as usual
    again = review.mark(sample, ids[:1], verdict="keep", by="B")
    assert _values(sample, ids[:1])[ids[0]]["review_verdict"] == "keep"
    assert review.undo(sample, again["action"])["rows"] == 1


def test_history_tells_a_review_whose_marks_never_landed_apart(sample: Lake, monkeypatch):
    """A review killed between its log entry and its marks: --history listed the entry like any
    other mark, and undoing it "restored 0 rows" with every row "changed since"."""
    from click.testing import CliRunner

    from lakecurate.cli import main

    ids = sorted(sample.to_pandas(["id"])["id"])[:3]
    landed = review.mark(sample, ids[:1], verdict="keep", by="A")

    def killed(*a, **k):
        raise _Killed("marks")

    monkeypatch.setattr(review.columns, "fill_fragments", killed)
    with pytest.raises(_Killed):
        review.mark(sample, ids[1:], verdict="drop", reason="spam", by="B")
    monkeypatch.undo()
    hist = {h["by"]: h for h in review.history(sample)}
    assert hist["A"]["landed"] is True and "note" not in hist["A"]
    assert hist["B"]["landed"] is False and hist["B"]["note"] == review.NEVER_LANDED
    lost = hist["B"]["action"]
    with pytest.raises(LakeError, match="never landed.*nothing to undo"):
        review.undo(sample, lost)
    out = CliRunner().invoke(main, ["review", sample.uri, "--history"]).output
    assert [line for line in out.splitlines() if lost in line][0].endswith(review.NEVER_LANDED)
    assert review.NEVER_LANDED not in [line for line in out.splitlines() if landed["action"] in line][0]
    res = CliRunner().invoke(main, ["review", sample.uri, "--undo", lost])
    assert res.exit_code == 1 and "nothing to undo" in res.output
    res = CliRunner().invoke(main, ["review", sample.uri, "--undo", lost, "--json"])
    assert res.exit_code == 1 and "nothing to undo" in json.loads(res.stdout)["error"]
    assert review.undo(sample, landed["action"])["rows"] == 1  # a landed mark undoes as before


def test_a_review_log_written_before_it_recorded_versions_reads_and_grows(sample: Lake):
    """An older log (no read_version): its entries cannot be checked (landed None); new ones can."""
    ids = sorted(sample.to_pandas(["id"])["id"])[:2]
    sample.write_side(review.LOG, pa.table({
        "action": ["old1"], "kind": ["mark"], "id": [ids[0]], "before": ["{}"], "after": ["{}"], "by": ["Z"],
        "at": pa.array([pd.Timestamp("2026-01-01", tz="UTC")], pa.timestamp("us", tz="UTC"))}))
    a = review.mark(sample, ids[1:], verdict="keep", by="A")
    hist = {h["action"]: h for h in review.history(sample)}
    assert hist["old1"]["landed"] is None and hist[a["action"]]["landed"] is True


def test_the_undo_a_mark_prints_on_a_branch_runs_as_pasted(sample: Lake):
    """On a branch, the undo line said `lakecurate review LAKE --undo A`: pasted, it looked on main."""
    import shlex

    from click.testing import CliRunner

    from lakecurate.cli import main

    ids = sorted(sample.to_pandas(["id"])["id"])[:1]
    assert CliRunner().invoke(main, ["branch", "create", sample.uri, "side"]).exit_code == 0
    res = CliRunner().invoke(main, ["--branch", "side", "review", sample.uri, *ids, "--keep", "--by", "ana"])
    assert res.exit_code == 0, res.output
    undo = re.search(r"undo: (lakecurate .*?)\)", res.output).group(1)
    assert undo.startswith("lakecurate --branch side review "), undo
    res = CliRunner().invoke(main, shlex.split(undo)[1:])
    assert res.exit_code == 0 and "restored 1 rows" in res.output, res.output
    assert review.counts(sample.on_branch("side").dataset()) == {} and review.counts(sample.dataset()) == {}


def test_undo_after_the_review_columns_were_dropped_says_so(sample: Lake):
    """After `lakecurate drop` of the review columns, an undo said "restored 0 rows; changed since"."""
    ids = sorted(sample.to_pandas(["id"])["id"])[:1]
    action = review.mark(sample, ids, verdict="keep", by="ana")["action"]
    sample.drop_columns(list(review.NAMES))
    v = sample.version
    with pytest.raises(LakeError, match="has no review columns now .* nothing to undo"):
        review.undo(sample, action)
    assert sample.version == v


def test_marks_written_back_from_a_version_say_which_newer_marks_they_replaced(sample: Lake):
    """review --from-version N replaced marks made since N without a word (a reviewer's newer keep
    became the old drop). It still writes the version's marks (what status's fix needs), and lists
    the rows whose newer marks it replaced; its undo brings them back."""
    from click.testing import CliRunner

    from lakecurate.cli import main

    ids = sorted(sample.to_pandas(["id"])["id"])[:3]
    review.mark(sample, ids[:2], verdict="drop", reason="watermark", by="ana")
    then = sample.version
    review.mark(sample, ids[:1], verdict="keep", by="carol")  # newer than `then`
    review.mark(sample, ids[2:], verdict="keep", by="bob")  # unmarked at `then`: stays
    res = CliRunner().invoke(main, ["review", sample.uri, "--from-version", str(then), "--json"])
    assert res.exit_code == 0, res.output
    back = json.loads(res.output)
    assert back["rows"] == 2 and back["replaced"] == [ids[0]]
    now = _values(sample, ids)
    assert now[ids[0]]["review_verdict"] == "drop" and now[ids[2]]["review_by"] == "bob"
    review.undo(sample, back["action"])
    assert _values(sample, ids)[ids[0]]["review_by"] == "carol"
    res = CliRunner().invoke(main, ["review", sample.uri, "--from-version", str(then)])
    assert res.exit_code == 0 and f"1 of them had been marked otherwise since version {then} ({ids[0]})" in res.output, res.output


def test_a_branch_undoes_a_mark_made_before_it_and_only_in_its_own_rows(sample: Lake):
    """A mark made on main before the branch is in the branch's rows, but the branch's review log
    started empty: `--branch exp review --undo A` said "not in the review log", so a person could
    not take back on an experiment a verdict it inherited. The branch reads the entries of the
    logs it grew from (up to where it was made); the undo is the branch's own (main keeps the
    mark), listed in the branch's history, and a mark made on main after the branch is refused,
    saying so (it never reached the branch's rows)."""
    ids = sorted(sample.to_pandas(["id"])["id"])[:3]
    before = review.mark(sample, ids[:2], verdict="drop", reason="watermark", by="ana")
    exp = sample.create_branch("exp")
    after = review.mark(sample, ids[2:], verdict="keep", by="bo")
    inherited = [h for h in review.history(exp) if h["action"] == before["action"]]
    assert len(inherited) == 1 and inherited[0]["branch"] == "main" and inherited[0]["landed"] is True, inherited
    assert after["action"] not in {h["action"] for h in review.history(exp)}
    u = review.undo(exp, before["action"], by="cy")
    assert u["rows"] == 2 and u["changed_since"] == [] and u["action"], u
    assert all(r["review_verdict"] is None for r in _values(exp, ids).values())
    main_now = _values(sample, ids)
    assert [main_now[i]["review_verdict"] for i in ids] == ["drop", "drop", "keep"]  # main untouched
    assert review.history(exp)[0]["kind"] == f"undo {before['action']}" and review.history(exp)[0]["branch"] == "exp"
    with pytest.raises(LakeError, match=r"made on main after branch exp was made from it \(at version \d+\): its marks "
                                        r"are not in branch exp's rows; nothing to undo"):
        review.undo(exp, after["action"])
    again = review.undo(exp, u["action"])  # the branch's own undo, undone on the branch
    exp_now = _values(exp, ids)
    assert again["rows"] == 2 and [exp_now[i]["review_verdict"] for i in ids] == ["drop", "drop", None]


def test_a_keep_does_not_revive_a_row_without_an_image_an_earlier_step_dropped(sample: Lake):
    """ingest_error after another step that drops the same rows first (caption_length, say): its
    "no verdict undoes this" marked only the rows it dropped itself, so a reviewer's keep made a row
    without an image kept, every step reading "dropped 0"."""
    errors = sample.to_pandas(["id"], where="ingest_status = 'error'")["id"].tolist()
    assert errors
    review.mark(sample, errors, verdict="keep", by="ana")
    recipe = {"name": "r", "step": [{"filter": "caption_length", "min_words": 1000, "max_words": 2000},
                                    {"filter": "ingest_error"}, {"filter": "review"}]}
    rep = sample.curate(recipe, progress=False)  # (it computes the caption signals the dry run reads)
    assert rep.kept == sample.count("keep AND ingest_status != 'error'") == sample.count("keep"), rep
    assert sample.curate(recipe, progress=False, dry_run=True).kept == rep.kept
    got = sample.to_pandas(["id", "keep", "drop_reason"], where="ingest_status = 'error'")
    assert not got["keep"].any() and set(got["drop_reason"]) == {"caption_length"}, got


def test_a_dry_run_s_examples_are_rows_the_step_drops_in_the_end(sample: Lake):
    """A reviewer's keep rescues rows a step fails: the dry run listed them among the step's "first
    dropped" examples (beside a count of 0)."""
    recipe = {"name": "r", "step": [{"filter": "ingest_error"},
                                    {"filter": "caption_length", "min_words": 1000, "max_words": 2000},
                                    {"filter": "review"}]}
    sample.curate(recipe, progress=False)  # (computes the caption signals the dry run reads)
    rescued = sorted(sample.to_pandas(["id"], where="drop_reason = 'caption_length'")["id"])[:5]
    review.mark(sample, rescued, verdict="keep", by="ana")
    dry = sample.curate(recipe, progress=False, dry_run=True)
    step = next(s for s in dry.steps if s.reason == "caption_length")
    shown = {e["id"] for e in step.examples}
    assert shown and not shown & set(rescued), (shown, rescued)


def test_a_restore_past_a_review_says_which_marks_left_the_view_and_how_to_bring_them_back(sample: Lake):
    """restore to a version before the marks printed nothing about them, status never named them,
    and `review --undo` then called the columns "dropped since" (a restore, not a drop)."""
    import warnings

    from click.testing import CliRunner

    from lakecurate import LakeWarning
    from lakecurate.cli import main

    ids = sorted(sample.to_pandas(["id"])["id"])[:3]
    review.mark(sample, ids[:1], verdict="keep", by="ana")
    sample.tag("one-mark")
    review.mark(sample, ids[1:], verdict="drop", reason="watermark", by="ana")
    review.mark(sample, ids[:1], verdict="drop", reason="blurry", by="bo")  # (changed since the tag, too)
    marked = sample.version
    with pytest.warns(LakeWarning, match=rf"3 review marks of version {marked} are not in the restored state .*"
                                         rf"back with: lake.restore_reviews\({marked}\)$"):  # (Python's words)
        sample.restore("one-mark")
    assert _values(sample, ids)[ids[1]]["review_verdict"] is None
    res = CliRunner().invoke(main, ["restore", sample.uri, str(marked), "--json"])  # forward: ana's keep replaced
    assert res.exit_code == 0, res.output
    assert [n.split(" (")[0] for n in json.loads(res.stdout)["notes"]] == [
        f"1 review mark of version {sample.version - 1} is not in the restored state"], res.output
    res = CliRunner().invoke(main, ["restore", sample.uri, "one-mark"])
    assert res.exit_code == 0, res.output
    note = next(line for line in res.output.splitlines() if line.startswith("note: "))
    assert "3 review marks" in note and "the latest view no longer has them" in note
    res = CliRunner().invoke(main, note.split("bring them back with: ")[1].split()[1:])  # the command as printed
    assert res.exit_code == 0, res.output
    got = _values(sample, ids)
    assert [got[i]["review_verdict"] for i in ids] == ["drop", "drop", "drop"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sample.restore(sample.version)  # (the latest already: no restore, no note)

