"""The recipe judged on one frame of every row: how curate decided before it worked a fragment at a
time (issue 20), kept as the reference its fragment-at-a-time results are checked against (by
tests/test_curate.py) and as the baseline of ``scripts/bench_scale.py --only curate``."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from lakecurate import curate as c
from lakecurate.names import embedding_columns


def judge_one_frame(ds: Any, rec: c.Recipe, emb: str | None, emb_prov: dict | None) -> tuple[pd.DataFrame, c.Decisions]:
    """The recipe's decisions on the rows of ``ds`` whose inputs are filled, in one frame of all
    of them (a percentile, a group's size: computed on that frame; nothing fitted), writing nothing."""
    read = c._read_columns(ds, rec, emb)
    judged = np.array([f.fragment_id for f in c._judged(ds, read)], np.int64)
    texts = c._zero_shot_texts(ds, emb, c._zero_shots(rec)) if emb is not None else []
    image = embedding_columns(emb)["image"] if texts else None
    tbl = ds.to_table(columns=sorted(read | ({image} if image else set())), with_row_address=True)
    tbl = tbl.filter(pa.array(np.isin(tbl.column("_rowaddr").to_numpy() >> 32, judged)))
    df = tbl.select(sorted(read)).to_pandas()
    df["__rowaddr"] = tbl.column("_rowaddr").to_numpy()
    df.attrs["rows_of"] = c._Shared(ds)  # the sql step runs its condition on this very version
    if emb is not None:
        df["__score"] = df[embedding_columns(emb)["score"]]
    if image:
        c._zero_shot_columns(df, tbl.column(image), texts)
    return df, c._decide(df, rec, c._params(rec, emb_prov))


def explain_one_frame(df: pd.DataFrame, rec: c.Recipe, dec: c.Decisions, *, examples: int = 3,
                      near: int = 6) -> list[c.StepView]:
    """curate's explanation of each step (drops, examples, the rows either side of each cut, the
    what-ifs) on one frame: ``df`` holds ``id`` and the columns the steps read, as ``_decide`` saw them."""
    n = len(df)
    ids = df["id"].to_numpy(dtype=object)
    ok = [~f for f in dec.fails]
    out = []
    for k, (step, fail, cut) in enumerate(zip(rec.steps, dec.fails, dec.cuts)):
        before = np.logical_and.reduce(ok[:k]) if k else np.ones(n, bool)
        others = np.logical_and.reduce(ok[:k] + ok[k + 1:]) if len(ok) > 1 else np.ones(n, bool)
        hit = fail & before
        view = c.StepView(step.reason, step.filter, dict(step.params), int(hit.sum()), float(hit.mean()) if n else 0.0)
        value = cut.values if cut is not None else None
        view.examples = [c._row(ids, value, i) for i in np.flatnonzero(hit)[:examples]]
        if cut is not None:
            view.cut = {"param": cut.param, "at": float(cut.at), "side": cut.side, "label": cut.label}
            fixed = fail & ~cut.fails(cut.at)  # dropped whatever the cut (e.g. no score at all)
            judged = before & np.isfinite(value) & ~fixed
            vals = value[judged]
            if len(vals):
                failing = judged & cut.fails(cut.at)
                passing = judged & ~cut.fails(cut.at)
                # nearest the cut first: the highest failing and lowest passing values for a "min" cut
                sign = 1 if cut.side == "min" else -1
                fi, pi = np.flatnonzero(failing), np.flatnonzero(passing)
                view.below = [c._row(ids, value, i) for i in fi[np.argsort(-sign * value[fi], kind="stable")][:near]]
                view.above = [c._row(ids, value, i) for i in pi[np.argsort(sign * value[pi], kind="stable")][:near]]
                grid = np.percentile(vals, c.WHATIF_QUANTILES[cut.side])
                if np.all(vals == np.round(vals)):
                    grid = np.round(grid)
                for at in np.unique(np.append(grid, cut.at)):
                    f = fixed | cut.fails(at)
                    view.whatif.append({"cut": float(at), "judged_below": float((vals < at).mean()),
                                        "dropped": int((f & before).sum()), "kept": int((others & ~f).sum()),
                                        "current": bool(at == cut.at)})
        out.append(view)
    return out
