"""The curation report: one self-contained HTML file a person can look at.

It shows what every stage decided, with pictures where a person must judge: duplicate groups with
the kept member marked, the lowest-alignment pairs, rejected pairs per reason, a gallery per concept
with its size before and after rebalancing, distributions, and flagged inputs. A stage that has not
run yet gets a line saying which command fills the section.

The cost is bounded on a large lake: counts are SQL aggregates over scalar columns, plots use a
random sample of at most ``sample_rows`` rows, and only the images shown are read (as small JPEG
thumbnails embedded in the page, so the file travels alone).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow.compute as pc

from lakecurate import graph
from lakecurate.columns import describe_provenance, field_provenance
from lakecurate.names import decided, embedding_columns
from lakecurate.options import given
from lakecurate.sqlcheck import in_list, literal

if TYPE_CHECKING:
    import lance

    from lakecurate.store import Store

TEMPLATE = "report.html.j2"
SECTIONS = {
    "summary": "Store",
    "funnel": "Kept and dropped, per stage and reason",
    "duplicates": "Duplicate groups",
    "alignment": "Lowest image-caption alignment",
    "rejected": "Rejected pairs, per reason",
    "cuts": "Thresholds: the rows either side of each cut",
    "captions": "Original and synthetic captions",
    "concepts": "Concepts before and after rebalancing",
    "distributions": "Distributions",
    "evaluations": "Evaluations: curated view versus baseline",
    "flagged": "Flagged inputs",
}


@dataclass
class ReportResult:
    path: str
    bytes: int
    version: int
    rows: int
    sampled_rows: int
    thumbnails: int
    empty_sections: list[str] = field(default_factory=list)
    seconds: float = 0.0
    stale: list[str] = field(default_factory=list)  # decisions not current at this version (shown as a warning)


class Thumbnails:
    """Small JPEG data URIs for rows, read in one blob request per batch and cached by row id."""

    def __init__(self, ds: "lance.LanceDataset", px: int = 112):
        self.ds, self.px, self.cache = ds, px, {}

    def load(self, rowids: list[int]) -> None:
        todo = [int(r) for r in dict.fromkeys(rowids) if int(r) not in self.cache]
        if not todo:
            return
        for rid, blob in self.ds.read_blobs("image", ids=todo, preserve_order=True):
            self.cache[int(rid)] = thumbnail(blob, self.px)

    def __getitem__(self, rowid: int) -> str | None:
        return self.cache.get(int(rowid))

    def __len__(self) -> int:
        return sum(v is not None for v in self.cache.values())


def thumbnail(data: bytes | None, px: int = 112) -> str | None:
    """A data URI of a JPEG at most ``px`` on its long side, or None where the bytes do not decode.

    >>> from PIL import Image; buf = io.BytesIO(); Image.new("RGB", (640, 320), "red").save(buf, "PNG")
    >>> thumbnail(buf.getvalue(), 64)[:23], thumbnail(b"not an image")
    ('data:image/jpeg;base64,', None)
    """
    from lakecurate.images import thumbnail_jpeg

    jpeg = thumbnail_jpeg(data, px)
    return None if jpeg is None else "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display: render to PNG in memory
    import matplotlib.pyplot as plt

    return plt


def _plot(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    _pyplot().close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _eval_curves(d: pd.DataFrame) -> dict[str, Any]:
    """One evaluation's learning curves (a plot), the view's speed-up over each baseline, and the
    budget sweep (a plot); empty for an evaluation recorded without curves."""
    from lakecurate.evaluate import speedup_summary

    main = d[(d["budget"] == 1.0) & d["curve"].notna()]
    if main.empty or "view" not in set(main["arm"]):
        return {}
    metric = str(main["curve_metric"].iloc[0])
    steps = [int(x) for x in main["curve_steps"].iloc[0]]
    curves = {arm: np.stack([np.asarray(c, float) for c in g.sort_values("seed")["curve"]])
              for arm, g in main.groupby("arm", sort=False)}
    fig, ax = _pyplot().subplots(figsize=(5.2, 3.0))
    for arm, c in curves.items():
        ax.plot(steps, c.mean(0), label=arm, linewidth=2 if arm == "view" else 1.3)
        if len(c) > 1:
            ax.fill_between(steps, c.min(0), c.max(0), alpha=0.15)
    ax.set_xlabel("training steps", fontsize=8)
    ax.set_ylabel(metric, fontsize=8)
    ax.set_title(f"learning curves ({metric}; band: min-max over seeds)", fontsize=10)
    ax.legend(fontsize=7, frameon=False)
    ax.tick_params(labelsize=7)
    ax.spines[["top", "right"]].set_visible(False)
    out: dict[str, Any] = {"metric": metric, "curve_plot": _plot(fig), "speedups": []}
    for arm, c in curves.items():
        if arm != "view" and len(c) == len(curves["view"]):
            sp = speedup_summary(steps, curves["view"], c)
            out["speedups"].append({"baseline": arm, "median": sp["median"], "min": sp["min"], "max": sp["max"],
                                    "gap": sp["gap_final"], "seeds": len(c)})
    swept = d[d["budget"].notna()]
    if swept["budget"].nunique() > 1:
        fig, ax = _pyplot().subplots(figsize=(5.2, 3.0))
        for arm, g in swept.groupby("arm", sort=False):
            by = g.groupby("budget")[metric]
            ax.errorbar(by.mean().index, by.mean().to_numpy(), yerr=[by.mean() - by.min(), by.max() - by.mean()],
                        marker="o", capsize=3, label=arm, linewidth=2 if arm == "view" else 1.3)
        ax.set_xscale("log", base=2)
        ax.set_xlabel(f"compute (multiples of {int(main['steps'].iloc[0])} steps)", fontsize=8)
        ax.set_ylabel(metric, fontsize=8)
        ax.set_title(f"{metric} by compute budget", fontsize=10)
        ax.legend(fontsize=7, frameon=False)
        ax.tick_params(labelsize=7)
        ax.spines[["top", "right"]].set_visible(False)
        out["budget_plot"] = _plot(fig)
    return out


def _hist(values: np.ndarray, title: str, xlabel: str, *, log: bool = False, lines: dict[str, float] | None = None) -> str:
    from matplotlib.ticker import FuncFormatter

    fig, ax = _pyplot().subplots(figsize=(4.4, 2.7))
    values = values[np.isfinite(values)]
    bins: Any = 40
    if log:
        values = values[values > 0]
        if len(values) and values.min() < values.max():
            bins = np.geomspace(values.min(), values.max() * 1.0001, 40)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:e}"[0] in "25" else ""))
    if not len(values):
        ax.text(0.5, 0.5, "no values", ha="center", va="center", transform=ax.transAxes, color="#5f6b7a")
    else:
        ax.hist(values, bins=bins, color="#4a78b5", edgecolor="white", linewidth=0.3)
    for label, x in (lines or {}).items():
        ax.axvline(x, color="#c0392b", linestyle="--", linewidth=1.2, label=label)
    if lines:
        ax.legend(fontsize=7, frameon=False)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel("rows", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.spines[["top", "right"]].set_visible(False)
    return _plot(fig)


def _whatif_plot(view: Any) -> str:
    """Rows kept by the whole recipe at each cut of one step, the recipe's cut marked."""
    fig, ax = _pyplot().subplots(figsize=(4.4, 2.5))
    xs = [w["cut"] for w in view.whatif]
    ax.plot(xs, [w["kept"] for w in view.whatif], marker="o", color="#4a78b5", linewidth=1.2, markersize=3)
    ax.axvline(view.cut["at"], color="#c0392b", linestyle="--", linewidth=1.2, label=f"{view.cut['param']} (recipe)")
    ax.set_title(f"{view.reason}: kept rows by cut", fontsize=10)
    ax.set_xlabel(f"{view.cut['label']} ({'drop under' if view.cut['side'] == 'min' else 'drop over'})", fontsize=8)
    ax.set_ylabel("rows kept", fontsize=8)
    ax.legend(fontsize=7, frameon=False)
    ax.tick_params(labelsize=7)
    ax.spines[["top", "right"]].set_visible(False)
    return _plot(fig)


def _concept_bars(table: pd.DataFrame) -> str:
    t = table.sort_values("size", ascending=False).reset_index(drop=True)
    fig, ax = _pyplot().subplots(figsize=(9, 2.8))
    x = np.arange(len(t))
    ax.bar(x, t["size"], color="#c8d3e3", width=1.0, label="rows before")
    if "kept" in t:
        ax.bar(x, t["kept"], color="#2e7d4f", width=0.6, label="kept by rebalancing")
    ax.set_xlabel("concepts, largest first", fontsize=8)
    ax.set_ylabel("rows", fontsize=8)
    ax.set_xticks([])
    if t["size"].max() > 50 * max(1, t["size"].min()):
        ax.set_yscale("log")
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7, frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    return _plot(fig)


class _Builder:
    """Reads what the report shows from one version of the lake."""

    def __init__(self, lake: "Store", version: int | str | None, *, sample_rows: int, thumb_px: int, seed: int,
                 max_groups: int, per_group: int, n_low: int, per_reason: int, n_concepts: int, per_concept: int,
                 n_flagged: int):
        # the lake on the branch of the version shown (BRANCH:N, a branch, a tag of a branch): every query
        # below runs there at that branch's number (main's number N read other rows, or another schema)
        self.lake = lake.on_branch_of(version)
        self.ds = self.lake.dataset(version)
        self.version = self.ds.version
        self.names = set(self.ds.schema.names)
        self.rows = self.ds.count_rows()
        self.thumbs = Thumbnails(self.ds, thumb_px)
        self.sample_rows, self.seed = sample_rows, seed
        self.max_groups, self.per_group, self.n_low = max_groups, per_group, n_low
        self.per_reason, self.n_concepts, self.per_concept, self.n_flagged = per_reason, n_concepts, per_concept, n_flagged
        self.embedding, self.score = self._score_column()
        self.sample = self._sample()
        self.uri = lake.uri
        # Decisions a stage upstream has rewritten since: the funnel leaves them out and the page says so.
        self.states = graph.states(self.lake, self.ds)
        self.not_current = [s for s in self.states if s.state in ("stale", "behind", "dropped")]
        self.stale_columns = {c for s in self.not_current for c in s.node.columns}
        self.stale = [f"{s.node.stage} ({', '.join(s.node.columns[:3])}) is {s.state}: {s.reasons[0]}; "
                      f"{s.fix if s.empty_view else 're-run: ' + s.fix}"
                      for s in self.not_current]

    def stale_note(self, *columns: str | None) -> str:
        """The header's line on the first decision among ``columns`` that is not current ("" when all
        are): a section built on it shows it beside its numbers (they were shown as current)."""
        return next((line for s, line in zip(self.not_current, self.stale) if set(s.node.columns) & set(columns)), "")

    # ------------------------------------------------------------------ helpers
    def sql(self, query: str, *, with_row_id: bool = False) -> pd.DataFrame:
        return self.lake.sql(query, version=self.version, with_row_id=with_row_id)

    def prov(self, name: str) -> dict[str, Any] | None:
        """What can be read of a column's provenance: the report shows a lake whatever its columns hold."""
        prov = field_provenance(self.ds.schema.field(name), strict=False) if name in self.names else None
        return {**prov, "config": {}} if prov is not None and not isinstance(prov.get("config"), dict) else prov

    def recipe(self) -> dict[str, Any]:
        """The recipe curate's ``keep`` was decided by, as its provenance records it (name, embedding,
        steps: filter, reason, params); {} before any curate or where the record is not a dict."""
        recipe = ((self.prov("keep") or {}).get("config") or {}).get("recipe")
        return recipe if isinstance(recipe, dict) else {}

    def _score_column(self) -> tuple[str | None, str | None]:
        # search.embedding_prefixes, leniently: a column with odd provenance is shown, not fatal
        found = {n[: -len("_score")]: p for n in self.names if n.endswith("_score")
                 and (p := self.prov(n)) and p.get("stage") == "embed"}
        if not found:
            return None, None
        curate = self.prov("keep") or {}
        emb = self.recipe().get("embedding")
        if emb not in found:  # the one the recipe read (its score among its sources), else the one dedup ranked by
            read = [c[: -len("_score")] for c in curate.get("source_columns") or [] if c.endswith("_score")]
            rank = str(((self.prov("dup_keep") or {}).get("config") or {}).get("rank_by") or "")
            emb = next((e for e in [*read, rank[: -len("_score")]] if e in found), sorted(found)[0])
        return emb, embedding_columns(emb)["score"]

    def _sample(self) -> pd.DataFrame:
        cols = [c for c in ("width", "height", "caption", "byte_size", self.score) if c and c in self.names]
        if self.rows <= self.sample_rows:
            tbl = self.ds.to_table(columns=cols)
        else:
            # a seeded uniform sample: the same report twice shows the same distributions
            idx = np.sort(np.random.default_rng(self.seed).choice(self.rows, self.sample_rows, replace=False))
            tbl = self.ds.take(idx, columns=cols)
        words = pc.list_value_length(pc.utf8_split_whitespace(pc.fill_null(tbl.column("caption"), "")))
        df = tbl.drop_columns(["caption"]).to_pandas()
        df["caption_words"] = words.to_numpy()
        return df

    def cards(self, df: pd.DataFrame, note: Any = None, badge: Any = None) -> list[dict[str, Any]]:
        """Thumbnail cards for rows with a ``_rowid`` column; ``note``/``badge``: row -> str."""
        if df.empty:
            return []
        self.thumbs.load(df["_rowid"].tolist())
        out = []
        for row in df.to_dict("records"):
            text = badge(row) if badge else ""
            out.append({
                "src": self.thumbs[row["_rowid"]],
                "key": shown_caption(row.get("key"), KEY_SHOWN) if row.get("key") is not None else "",
                "caption": shown_caption(row.get("caption")),
                "note": note(row) if note else "",
                "badge": text,
                "kind": text if text in ("kept", "warning") else "drop",
            })
        return out

    # ------------------------------------------------------------------ sections
    def summary(self) -> dict[str, Any]:
        ds = self.ds
        versions = {v["version"]: v for v in ds.versions()}
        cols = [{"name": f.name, "type": "blob" if f.name == "image" else str(f.type),
                 "provenance": describe_provenance(field_provenance(f, strict=False))} for f in ds.schema]
        stages: dict[str, int] = {}
        for c in cols:
            stage = c["provenance"].split(":")[0] if c["provenance"] else "ingest"
            stages[stage] = stages.get(stage, 0) + 1
        tags = sorted(((n, t["version"]) for n, t in ds.tags.list().items() if t.get("branch") == self.lake.branch),
                      key=lambda x: x[1])  # this branch's (another's version numbers mean other rows)
        status = self.sql("SELECT ingest_status AS s, count(*) AS n FROM pairs GROUP BY s ORDER BY s")
        shown = versions.get(self.version)
        return {
            "uri": self.uri, "rows": self.rows, "version": self.version, "latest": self.lake.version,
            "n_versions": len(versions), "fragments": len(ds.get_fragments()),
            # a branch lists its own versions, numbered on from where it was made ("34 of 6 versions")
            "branch": self.lake.branch, "first": min(versions, default=self.version),
            "last_commit": shown["timestamp"].isoformat(timespec="seconds") if shown else "",
            "columns": cols, "stages": stages, "tags": tags, "status": dict(zip(status["s"], map(int, status["n"]))),
        }

    def funnel(self) -> dict[str, Any]:
        """Rows left after each stage, each stage counting only what the stages above it left (so
        the reasons a stage dropped rows for add up to the difference), and what each stage dropped
        by reason. A decision that is not current is left out (the page says so), and rows a
        current one has not decided yet (added since) are counted as such, never dropped silently."""
        steps, reasons = [("rows in the lake", self.rows)], []

        def count(where: str) -> int:
            return int(self.sql(f"SELECT count(*) AS n FROM pairs WHERE {where}")["n"][0])

        def dropped(stage: str, where: str, by: str, undecided: str | None = None) -> None:
            got = self.sql(f"SELECT {by} AS reason, count(*) AS n FROM pairs WHERE {where} GROUP BY reason ORDER BY n DESC")
            for reason, n in zip(got["reason"], got["n"]):
                reasons.append({"stage": stage, "reason": reason if isinstance(reason, str) else undecided or "none given",
                                "rows": int(n)})

        left = "ingest_status <> 'error'"
        steps.append(("usable images (ingest)", count(left)))
        err = self.ds.to_table(columns=["ingest_flags"], filter="ingest_status = 'error'").column("ingest_flags")
        for flag, n in sorted(_value_counts(pc.list_flatten(err)).items(), key=lambda x: -x[1]):
            reasons.append({"stage": "ingest", "reason": flag, "rows": n})
        curated = decided(self.ds.schema, "keep") and "keep" not in self.stale_columns
        prov = (self.prov("keep") or {}) if curated else {}
        recipe_steps = (self.recipe().get("steps") or []) if curated else []
        # dedup's line only where the recipe read dup_keep (its duplicate step, or a column/sql step): a
        # recipe without one keeps duplicates, and charging dedup with them ended below the view's size
        reads_dedup = "dup_keep" in (prov.get("source_columns") or []) or any(
            st.get("filter") == "duplicate" for st in recipe_steps)
        if "dup_keep" in self.names and "dup_keep" not in self.stale_columns and (not curated or reads_dedup):
            dropped("dedup", f"({left}) AND dup_keep IS NOT TRUE",
                    "CASE WHEN dup_keep IS NULL THEN NULL ELSE concat('duplicate (', split_part(dup_reason, ':', 1), ')') END",
                    "not grouped yet (added since dedup ran)")
            left = f"({left}) AND dup_keep"
            steps.append(("one per duplicate group (dedup)", count(left)))
        recipe = None
        if curated:
            recipe = self.recipe()
            name = recipe.get("name", "?")
            order = [s.get("reason") for s in recipe.get("steps", [])]
            before = len(reasons)
            dropped(f"curate: {name}", f"({left}) AND keep IS NOT TRUE",
                    "CASE WHEN keep IS NULL THEN NULL ELSE drop_reason END", "not judged yet (added since curate ran)")
            reasons[before:] = sorted(reasons[before:], key=lambda r: order.index(r["reason"]) if r["reason"] in order
                                      else len(order))
            left = f"({left}) AND keep"
            steps.append((f"kept by recipe '{name}' (curate)", count(left)))
        if "rebalance_keep" in self.names and "rebalance_keep" not in self.stale_columns:
            where = ((self.prov("rebalance_keep") or {}).get("config") or {}).get("where")
            candidate = "concept IS NOT NULL" + (f" AND ({where})" if where else "")
            if count(f"rebalance_keep AND NOT ({left})"):
                # rebalancing chose from other rows than the ones above (--where dup_keep, say): nested under
                # them it read fewer rows than the view holds, so it starts from its own candidates
                left = candidate
                steps.append((f"rows rebalancing chose from (concept, {where or 'any row'}; not only the rows above)",
                              count(left)))
                dropped("rebalance", f"({left}) AND rebalance_keep IS NOT TRUE", "'over its concept''s budget'")
            else:
                dropped("rebalance", f"({left}) AND rebalance_keep IS NOT TRUE",
                        f"CASE WHEN {candidate} THEN 'over its concept''s budget' ELSE 'not a rebalance candidate "
                        f"(no concept{', or outside ' + where.replace(chr(39), chr(39) * 2) if where else ''})' END")
            left = f"({left}) AND rebalance_keep"
            r = self.sql(f"SELECT count(*) AS n, sum(repeats) AS shown FROM pairs WHERE {left}")
            kept, shown = int(r["n"][0]), r["shown"][0]
            steps.append(("kept by rebalancing", kept))
            if pd.notna(shown) and int(shown) != kept:
                steps.append(("training examples with repeats", int(shown)))
        for r in reasons:
            r["share"] = r["rows"] / self.rows if self.rows else 0.0
        # the view status and export name (the latest current decision): reviewers' marks it does not heed
        view, _ = graph.effective_view(self.lake, self.ds, self.states)  # (status's and export's choice, not a second rule)
        return {"steps": [{"label": lbl, "rows": n, "share": n / self.rows if self.rows else 0.0} for lbl, n in steps],
                "reasons": reasons, "recipe": recipe, "notes": graph.unheeded_reviews(self.ds, view)}

    def duplicates(self) -> dict[str, Any] | None:
        if "dup_group" not in self.names:
            return None
        stats = self.sql("SELECT count(*) AS groups, sum(n) AS rows FROM (SELECT dup_group, count(*) AS n FROM pairs "
                         "WHERE dup_group IS NOT NULL GROUP BY dup_group HAVING count(*) > 1)")
        top = self.sql("SELECT dup_group, count(*) AS n FROM pairs WHERE dup_group IS NOT NULL GROUP BY dup_group "
                       f"HAVING count(*) > 1 ORDER BY n DESC, dup_group LIMIT {self.max_groups}")
        groups, gone = [], ""
        if len(top):
            score = f", {self.score} AS score" if self.score else ""
            members = self.sql(f"SELECT _rowid, id, key, caption, dup_group, dup_keep, dup_reason, width, height{score} "
                               f"FROM pairs WHERE dup_group IN ({in_list(top['dup_group'])})", with_row_id=True)
            links, gone = self._links(members)
            for g, n in zip(top["dup_group"], top["n"]):
                m = members[members["dup_group"] == g].sort_values(["dup_keep", "id"], ascending=[False, True])
                method = next((r.split(":")[0] for r in m["dup_reason"] if isinstance(r, str)), "")
                groups.append({"group": g, "size": int(n), "method": method, "shown": min(len(m), self.per_group),
                               "cards": self.cards(m.head(self.per_group), note=self._note,
                                                   badge=lambda r: "kept" if r["dup_keep"] else "dropped"),
                               "why": links.get(g, [])[: self.per_group]})
        # sum() over no groups is null (NaN in pandas), and NaN is truthy: `or 0` would not catch it.
        rows = stats["rows"][0]
        return {"groups": int(stats["groups"][0]), "rows": 0 if pd.isna(rows) else int(rows), "top": groups,
                "stale": self.stale_note("dup_group", "dup_keep"), "links_gone": gone}

    def _links(self, members: pd.DataFrame) -> tuple[dict[str, list[str]], str]:
        """Group -> the links that made it (``dup_pairs``: method and evidence, e.g. "143 inliers"),
        strongest evidence first, as lines a person reads beside the thumbnails; and why there are
        none where the version's links were removed ("" otherwise)."""
        from lakecurate.dedup import EvidenceGone, dup_pairs

        try:
            links = dup_pairs(self.lake, members["id"].tolist(), version=self.version)
        except EvidenceGone as exc:  # (removed by a cleanup: the groups are shown without their links, saying why)
            return {}, str(exc)
        if links.empty:
            return {}, ""
        group_of = dict(zip(members["id"], members["dup_group"]))
        name = {i: Path(str(k)).name for i, k in zip(members["id"], members["key"])}
        out: dict[str, list[str]] = {}
        order = {"exact": 0, "phash": 1, "copy": 2, "verify": 3, "semantic": 4, "caption": 5}
        links = links[links["method"] != "caption"]  # reported, but they do not make groups by default
        for a, b, method, detail in sorted(zip(links["a"], links["b"], links["method"], links["detail"]),
                                           key=lambda r: order.get(r[2], 9)):
            g = group_of.get(a)
            if g is not None and g == group_of.get(b):
                out.setdefault(g, []).append(f"{name[a]} ~ {name[b]}: {method}, {detail}")
        return out, ""

    def _note(self, row: dict[str, Any]) -> str:
        parts = []
        if row.get("width") and row.get("height") and pd.notna(row["width"]):
            parts.append(f"{int(row['width'])}x{int(row['height'])}")
        if "score" in row and pd.notna(row["score"]):
            parts.append(f"score {row['score']:.3f}")
        return " · ".join(parts)

    def alignment(self) -> dict[str, Any] | None:
        if not self.score:
            return None
        low = self.sql(f"SELECT _rowid, key, caption, width, height, {self.score} AS score"
                       + (", drop_reason" if "drop_reason" in self.names else "")
                       + f" FROM pairs WHERE {self.score} IS NOT NULL ORDER BY {self.score}, id LIMIT {self.n_low}",
                       with_row_id=True)
        # each card's rank in the lake's whole column (as curate's min_percentile reads it), in one scan:
        # ranked in the plot sample, --sample-rows 1 made every card "0.0th percentile"
        xs = [float(x) for x in dict.fromkeys(low["score"]) if np.isfinite(x)] if len(low) else []
        counts = self.sql(f"SELECT count({self.score}) AS n" + "".join(
            f", sum(CASE WHEN {self.score} <= {x!r} THEN 1 ELSE 0 END) AS c{i}" for i, x in enumerate(xs))
            + " FROM pairs").iloc[0] if xs else None
        below = {x: int(counts[f"c{i}"]) for i, x in enumerate(xs)} if xs else {}

        def note(r: dict[str, Any]) -> str:
            n = below.get(float(r["score"]))
            pct = f" · {100.0 * n / max(int(counts['n']), 1):.1f}th percentile" if n is not None else ""
            return f"score {r['score']:.3f}{pct}"

        stale = self.stale_note(self.score, "keep") if "drop_reason" in self.names else self.stale_note(self.score)
        curated = "drop_reason" in self.names and "keep" not in self.stale_columns

        def badge(r: dict[str, Any]) -> str:  # curate's decision, not shown where it is not current
            reason = r.get("drop_reason")
            return "" if not curated else reason if isinstance(reason, str) else "kept"

        out = {"column": self.score, "cards": self.cards(low, note=note, badge=badge), "stale": stale}
        if low.empty:  # no row scored (an errors-only lake, say): say why, not an empty strip
            error = self.score[: -len("_score")] + "_error" if self.score.endswith("_score") else ""
            failed = int(self.sql(f"SELECT count(*) AS n FROM pairs WHERE {error} IS NOT NULL")["n"].iloc[0]) \
                if error in self.names else 0
            out["note"] = f"No row has {'an' if self.score[:1] in 'aeiou' else 'a'} {self.score}" + (
                f": none of the {self.rows:,} rows could be embedded (see {error})." if failed == self.rows else
                f" yet: {failed:,} of {self.rows:,} rows could not be embedded (see {error}); embed the rest "
                f"to see this section." if failed else " yet: embed the lake's rows to see this section.")
        return out

    def rejected(self) -> dict[str, Any] | None:
        if "drop_reason" not in self.names:
            return None
        counts = self.sql("SELECT drop_reason, count(*) AS n FROM pairs WHERE drop_reason IS NOT NULL "
                          "GROUP BY drop_reason ORDER BY n DESC, drop_reason")
        score = f", {self.score} AS score" if self.score else ""
        steps = self.recipe().get("steps") or []
        reviewed = {st.get("reason") or "review" for st in steps if st.get("filter") == "review"} \
            if {"review_reason", "review_by"} <= self.names else set()

        def note(r: dict[str, Any]) -> str:  # a review step's drops: the reviewer's reason beside the picture
            said = f"reviewer: {r['review_reason']}" + (f" ({r['review_by']})" if r.get("review_by") else "") \
                if isinstance(r.get("review_reason"), str) else ""
            return " · ".join(x for x in (said, self._note(r)) if x)

        out = []
        for reason, n in zip(counts["drop_reason"], counts["n"]):
            review = ", review_reason, review_by" if reason in reviewed else ""
            rows = self.sql(f"SELECT _rowid, key, caption, width, height{score}{review} FROM pairs WHERE "
                            f"drop_reason = {literal(reason)} ORDER BY id LIMIT {self.per_reason}", with_row_id=True)
            out.append({"reason": reason, "rows": int(n), "cards": self.cards(rows, note=note)})
        return {"reasons": out, "stale": self.stale_note("keep", "drop_reason")}

    def cuts(self) -> dict[str, Any] | None:
        """Per thresholded step of the lake's recipe: the rows just failing and just passing its cut,
        and the rows kept at other cuts (every other step unchanged), as a table and a plot."""
        from lakecurate.curate import explain_version, recipe_of
        from lakecurate.errors import LakeError

        if "keep" in self.stale_columns:  # ran, but not current: no cut is shown (it said "No data yet")
            name = self.recipe().get("name") or "?"
            stale = self.stale_note("keep")
            return {"recipe": name, "steps": [], "stale": stale}  # (the section's stale note says it)
        rec = recipe_of(self.ds)
        if rec is None:
            return None
        out = []
        try:
            views = explain_version(self.ds, rec, near=self.per_reason)
        except LakeError as exc:  # the report shows a lake whatever its columns hold
            return {"recipe": rec.name, "steps": [], "note": f"Not shown: {exc}"}
        unvalued = [v.reason for v in views if v.cut and not v.whatif]
        for v in views:
            if not v.cut or not v.whatif:
                continue
            rows = {r["id"]: r for r in v.below + v.above}
            quoted = in_list(rows)
            df = self.sql(f"SELECT _rowid, id, key, caption, keep, drop_reason FROM pairs WHERE id IN ({quoted})",
                          with_row_id=True) if rows else None

            def side(items: list[dict[str, Any]], badge: str) -> list[dict[str, Any]]:
                if df is None or not items:
                    return []
                part = df.set_index("id").loc[[r["id"] for r in items if r["id"] in set(df["id"])]].reset_index()
                # a row passing this step may be dropped by another: its own decision, not "kept"
                return self.cards(part, note=lambda r: f"{v.cut['label']} {rows[r['id']]['value']:.4g}",
                                  badge=lambda r: badge if badge != "kept" or (pd.notna(r["keep"]) and bool(r["keep"]))
                                  else f"passes; dropped: {r['drop_reason']}")

            out.append({"reason": v.reason, "filter": v.filter, "cut": v.cut, "dropped": v.dropped,
                        "whatif": v.whatif, "plot": _whatif_plot(v),
                        "below": side(v.below, "dropped"), "above": side(v.above, "kept")})
        if not out and unvalued:  # thresholded steps, but no row with a value to cut (an errors-only lake)
            return {"recipe": rec.name, "steps": [], "note": f"Recipe {rec.name}'s thresholded steps "
                    f"({', '.join(unvalued)}) had no row to judge: none reached them with a value."}
        return {"recipe": rec.name, "steps": out}

    def captions(self) -> dict[str, Any] | None:
        """Sampled rows with the original caption beside each synthetic one (``recaption``), with
        their alignment scores where an encoder scored them (``embed --caption-col``)."""
        synthetic = [n for n in sorted(self.names) if (self.prov(n) or {}).get("stage") == "recaption"
                     and not n.endswith(("_error", "_tries"))]
        if not synthetic:
            return None
        scores = {c: f"{self.embedding}_{c}_score" for c in synthetic if self.embedding
                  and f"{self.embedding}_{c}_score" in self.names}
        cols = ["_rowid", "id", "key", "caption", *synthetic, *scores.values()] + ([self.score] if self.score else [])
        seeded = self.sql(f"SELECT {', '.join(c for c in cols if c != '_rowid')} FROM pairs WHERE "
                          f"{' OR '.join(f'{c} IS NOT NULL' for c in synthetic)} ORDER BY id", with_row_id=True)
        if seeded.empty:
            return {"columns": synthetic, "cards": []}
        pick = np.sort(np.random.default_rng(self.seed).choice(len(seeded), min(self.n_low, len(seeded)), replace=False))
        rows = seeded.iloc[pick].reset_index(drop=True)

        def note(r: dict[str, Any]) -> str:
            parts = []
            if self.score and r.get(self.score) == r.get(self.score) and r.get(self.score) is not None:
                parts.append(f"original score {r[self.score]:.3f}")
            for c in synthetic:
                score = r.get(scores.get(c, ""), None)
                shown = f"{c}: {shown_caption(r.get(c))}"
                if score is not None and score == score:
                    shown += f" (score {score:.3f})"
                parts.append(shown)
            return " · ".join(parts)

        return {"columns": synthetic, "scored": list(scores), "cards": self.cards(rows, note=note)}

    def concepts(self) -> dict[str, Any] | None:
        if "concept" not in self.names:
            return None
        # rebalancing's own numbers: its candidates (its recorded where) are a concept's rows before,
        # and a stale rebalance (concepts made again since, say) shows no kept counts or badges
        stale = "rebalance_keep" in self.names and "rebalance_keep" in self.stale_columns
        rebal = "rebalance_keep" in self.names and not stale
        where = ((self.prov("rebalance_keep") or {}).get("config") or {}).get("where") if rebal else None
        among = f" AND ({where})" if where else ""
        agg = ("SELECT concept, count(*) AS size, avg(concept_dist) AS spread"
               + (", sum(CASE WHEN rebalance_keep THEN 1 ELSE 0 END) AS kept, max(repeats) AS repeats" if rebal else "")
               + f" FROM pairs WHERE concept IS NOT NULL{among} GROUP BY concept ORDER BY size DESC, concept")
        table = self.sql(agg)
        if table.empty:
            return None
        big = table.head(max(1, self.n_concepts - self.n_concepts // 3))
        small = table.iloc[len(big):].tail(self.n_concepts // 3)
        shown = pd.concat([big, small])
        gallery = []
        for row in shown.to_dict("records"):
            members = self.sql("SELECT _rowid, key, caption, concept_dist" + (", rebalance_keep" if rebal else "")
                               + f" FROM pairs WHERE concept = {int(row['concept'])}{among} ORDER BY concept_dist "
                               f"LIMIT {self.per_concept}", with_row_id=True)
            gallery.append({**row, "cards": self.cards(
                members, note=lambda r: f"distance {r['concept_dist']:.3f}",
                badge=(lambda r: "kept" if r["rebalance_keep"] else "pruned") if rebal else None)})
        prov = self.prov("concept") or {}
        return {"k": len(table), "rebalanced": rebal, "stale": stale, "where": where,
                "stale_note": self.stale_note("concept", "rebalance_keep"), "config": prov.get("config", {}),
                "plot": _concept_bars(table), "gallery": gallery,
                "rebalance": (self.prov("rebalance_keep") or {}).get("config", {})}

    def distributions(self) -> dict[str, Any]:
        s, plots = self.sample, []
        if self.score and self.score in s:
            lines = {}
            for step in self.recipe().get("steps") or []:
                p = step.get("params", {})
                if step.get("filter") == "alignment" and p.get("min") is not None:
                    lines[f"recipe minimum {p['min']}"] = float(p["min"])
                elif step.get("filter") == "alignment" and p.get("min_percentile") is not None:
                    v = s[self.score].dropna()
                    if len(v):
                        lines[f"{p['min_percentile']}th percentile"] = float(np.percentile(v, p["min_percentile"]))
            plots.append(_hist(s[self.score].to_numpy(np.float64), f"alignment ({self.score})", "cosine score", lines=lines))
        if "width" in s:
            short = np.minimum(s["width"].to_numpy(np.float64), s["height"].to_numpy(np.float64))
            if np.isfinite(short).any():
                plots.append(_hist(short, "image size", "shorter side (pixels)", log=True))
        plots.append(_hist(s["caption_words"].to_numpy(np.float64), "caption length", "words"))
        return {"plots": plots, "sampled": len(s)}

    def evaluations(self, last: int = 5) -> dict[str, Any] | None:
        """The latest recorded evaluations (``lakecurate evaluate``): mean and spread per arm, and,
        where recorded, the learning curves with the speed-up over each baseline and the budget sweep."""
        from lakecurate.evaluate import METRICS, evaluations

        df = evaluations(self.lake)  # (this branch's: self.lake is the branch of the version shown)
        if not df.empty:  # those recorded by the version shown: a later one evaluated rows (a view) not in it
            df = df[df["lake_version"] <= self.version]
        if df.empty:
            return None
        for col in ("budget", "curve", "curve_steps", "curve_metric"):  # recorded before curves existed
            if col not in df:
                df[col] = None
        runs = df.sort_values("evaluated_at")["eval_id"].unique()[-last:][::-1]
        out = []
        for rid in runs:
            d = df[df["eval_id"] == rid]
            main = d[d["budget"].isna() | (d["budget"] == 1.0)]
            first = main.iloc[0]
            arms = []
            for arm, g in main.groupby("arm", sort=False):
                arms.append({"arm": arm, "rows": None if pd.isna(g["rows"].iloc[0]) else int(g["rows"].iloc[0]),
                             "seeds": len(g), **{m: (float(g[m].mean()), float(g[m].max() - g[m].min())) for m in METRICS}})
            out.append({"id": rid, "when": first["evaluated_at"].isoformat(timespec="seconds"),
                        "version": int(first["lake_version"]), "view": first["view"], "baseline": first["baseline"],
                        "recipe": first["recipe"], "eval_set": Path(first["eval_set"]).name,
                        "eval_images": int(first["eval_images"]), "eval_captions": int(first["eval_captions"]),
                        "steps": int(first["steps"]), "arms": arms, **_eval_curves(d)})
        return {"runs": out, "metrics": METRICS}

    def flagged(self) -> dict[str, Any]:
        counts = self.sql("SELECT ingest_status, count(*) AS n FROM pairs WHERE ingest_status <> 'ok' GROUP BY ingest_status")
        rows = self.sql("SELECT _rowid, key, source, caption, ingest_status, ingest_error FROM pairs "
                        f"WHERE ingest_status <> 'ok' ORDER BY ingest_status, key LIMIT {self.n_flagged}", with_row_id=True)
        cards = self.cards(rows, note=lambda r: r["ingest_error"] or "", badge=lambda r: r["ingest_status"])
        return {"counts": dict(zip(counts["ingest_status"], map(int, counts["n"]))), "cards": cards,
                "total": int(counts["n"].sum()) if len(counts) else 0}


KEY_SHOWN = 200  # characters of a key a card shows (a 3,000,000-character key made an 8.8 MB page)
CAPTION_SHOWN = 300  # characters of a caption on a card: a 20 MB caption made a 62 MB report


def shown_caption(caption: Any, limit: int = CAPTION_SHOWN) -> str:
    r"""A caption (or a key) as a card shows it: at most ``limit`` characters, then an ellipsis and
    the full length; characters that do not show or that reorder the text (NUL and other controls,
    bidi overrides, zero-width ones) as visible escapes (a key "\u202eevil\u202cgpj.exe" showed
    as "evilexe.jpg", and NULs made the page a binary file to grep).

    >>> shown_caption("a" * 5, 3), shown_caption(None), shown_caption("x\u202ey\u200bz\x00")
    ('aaa… (5 characters)', '(no caption)', 'x\\u202ey\\u200bz\\x00')
    """
    if not isinstance(caption, str):
        return "(no caption)"
    shown = caption if len(caption) <= limit else f"{caption[:limit]}… ({len(caption):,} characters)"
    return _HIDDEN.sub(lambda m: m.group(0).encode("unicode_escape").decode("ascii"), shown)


# controls (but tab and newline), bidi embeddings/overrides/isolates, zero-width characters
_HIDDEN = re.compile("[\x00-\x08\x0b-\x1f\x7f\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]")


def _value_counts(arr: Any) -> dict[str, int]:
    return {d["values"]: int(d["counts"]) for d in pc.value_counts(arr).to_pylist() if d["values"] is not None}


# report()'s parameters that shape the page (recorded in it for `lakecurate run`; see REPORT_META).
_SETTINGS = ("title", "sample_rows", "thumb_px", "max_groups", "per_group", "n_low", "per_reason", "n_concepts",
             "per_concept", "n_flagged", "seed")
REPORT_META = re.compile(r'<meta name="lakecurate-report" content="([^"]*)">')


def report_meta(path: str | Path) -> dict[str, Any] | None:
    """What a report records of itself (lake, branch, version, settings), or None (not a report, or
    one an older lakecurate wrote)."""
    import html

    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            head = f.read(20_000)
    except OSError:
        return None
    m = REPORT_META.search(head)
    try:
        meta = json.loads(html.unescape(m.group(1))) if m else None
    except ValueError:
        return None
    return meta if isinstance(meta, dict) else None


def check_out(out: str | os.PathLike, overwrite: bool) -> Path:
    """Refuse, before any work, an ``out`` the report cannot be written to (``lakecurate run`` asks
    before its first step); the file it writes (a link followed)."""
    from lakecurate.errors import LakeError
    from lakecurate.options import writable

    writable("report", out)  # (first: a name too long for the file system was a traceback from is_dir)
    if Path(out).is_dir():  # checked before the work; replacing it failed at the end, leaving OUT.tmp beside it
        raise LakeError(f"report: '{out}' is a folder; give the HTML file to write, e.g. {Path(out) / 'report.html'}")
    target = Path(os.path.realpath(out))  # a link is followed: its target gets the report, the link stays
    if target.exists() and not target.is_file():  # a FIFO or a device would be replaced by a file
        raise LakeError(f"report: '{out}' is not a regular file (a pipe or a device); give the HTML file to write")
    if target.is_file() and not overwrite and report_meta(target) is None:  # (it replaced an 8 MB Parquet file)
        raise LakeError(f"report: '{out}' exists and is not a lakecurate report (or one an older lakecurate wrote); "
                        f"choose another file, or pass {given('--overwrite')} to replace it")
    return target


def report(
    lake: "Store",
    out: str | Path,
    *,
    version: int | str | None = None,
    title: str | None = None,
    sample_rows: int = 100_000,
    thumb_px: int = 112,
    max_groups: int = 12,
    per_group: int = 8,
    n_low: int = 12,
    per_reason: int = 6,
    n_concepts: int = 12,
    per_concept: int = 6,
    n_flagged: int = 24,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool | None = None,
) -> ReportResult:
    """Write the HTML report of ``lake`` (at ``version``: a number or a tag) to ``out``.

    An existing ``out`` is replaced when it is a lakecurate report (a re-run); any other file only
    with ``overwrite``. ``progress``: a bar over the sections (see :mod:`lakecurate.progress`).

    Example::

        lake.report("report.html")                       # then open it in a browser
        lake.report("basic.html", version="basic-1a2b3c4d-v12")   # a curated view by its tag
    """
    import jinja2

    from lakecurate.errors import LakeError
    from lakecurate.options import canonical_uri, flag, location, overlaps, path, whole
    from lakecurate.progress import progress_bar

    # every number checked before any work: "100" was a TypeError, 2.5 a numpy one, max_groups=-3 an
    # internal SQL error, thumb_px=0 a report of broken thumbnails (sample_rows < 1 failed in numpy's choice)
    sample_rows = whole("sample_rows", sample_rows)
    thumb_px = whole("thumb_px", thumb_px, high=4096)
    per_group, per_reason, per_concept = (whole(n, v) for n, v in (("per_group", per_group), ("per_reason", per_reason),
                                                                      ("per_concept", per_concept)))
    max_groups, n_low, n_concepts, n_flagged, seed = (
        whole(n, v, 0) for n, v in (("max_groups", max_groups), ("n_low", n_low), ("n_concepts", n_concepts),
                                    ("n_flagged", n_flagged), ("seed", seed)))
    path("out", out)  # (None was a TypeError traceback)
    overwrite = flag("overwrite", overwrite)
    progress = None if progress is None else flag("progress", progress)
    if "://" in str(out):  # a file:// URI is a local file (as export takes it)
        out = canonical_uri(str(out))
    if "://" in str(out):  # (it wrote a local folder named "s3:")
        raise LakeError(f"report writes a local HTML file, not '{out}'; write it here and copy it to object storage")
    target = check_out(out, overwrite)
    if overlaps(str(target), lake.uri):  # beside the table is fine (demo writes LAKE/report.html)
        folder = location(lake.uri)[1]
        top = Path(os.path.relpath(target, folder)).parts[0]
        if top == "_lakecurate" or (top.endswith(".lance") and target.name != top):  # the tool's state, a Lance table
            raise LakeError(f"report: '{out}' is inside '{top}' of lake '{lake.uri}' (a Lance table folder or "
                            f"lakecurate's own state); write it outside, e.g. {os.path.join(folder, 'report.html')}")
    t0 = time.perf_counter()
    settings = {k: v for k, v in locals().items() if k in _SETTINGS}
    b = _Builder(lake, version, sample_rows=sample_rows, thumb_px=thumb_px, seed=seed, max_groups=max_groups,
                 per_group=per_group, n_low=n_low, per_reason=per_reason, n_concepts=n_concepts,
                 per_concept=per_concept, n_flagged=n_flagged)
    data = {}
    with progress_bar(total=len(SECTIONS), desc="report", unit="section", progress=progress) as bar:
        for name in SECTIONS:
            data[name] = getattr(b, name)()
            bar.update(1)
    shown = b.lake  # the branch of the version shown (a branch's tag read through main too)
    empty = [name for name, d in data.items() if d is None or (name == "flagged" and not d["total"])]
    env = jinja2.Environment(loader=jinja2.PackageLoader("lakecurate", "templates"),
                             autoescape=jinja2.select_autoescape(["html", "j2"]), trim_blocks=True, lstrip_blocks=True)
    html = env.get_template(TEMPLATE).render(
        title=title or f"lakecurate report: {Path(str(lake.uri)).name}", sections=SECTIONS, d=data, uri=lake.uri,
        version=b.version, rows=b.rows, sampled=len(b.sample), generated=time.strftime("%Y-%m-%d %H:%M:%S"),
        cmd_lake=lake.shell, stale=b.stale, branch=shown.branch,  # (the lake quoted for a shell: JSON's \"x\" was not)
        lc=shown.command,  # the hints' commands: the branch's (quoted for a shell)
        # what a pipeline compares to tell a current report from one of another lake, branch, version or settings
        meta=json.dumps({"lake": lake.uri, "branch": shown.branch or "main", "version": b.version, "settings": settings},
                        default=str),
    )
    path = target
    path.parent.mkdir(parents=True, exist_ok=True)
    # (OUT.tmp: too long a name for OUT of 252 bytes and more)
    tmp = path.with_name(path.name + ".tmp" if len(os.fsencode(path.name)) <= 200 else
                         f".{hashlib.blake2b(os.fsencode(path.name), digest_size=8).hexdigest()}.report.tmp")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(path)  # a reader never sees half a report
    return ReportResult(path=str(Path(out)), bytes=path.stat().st_size, version=b.version, rows=b.rows,
                        sampled_rows=len(b.sample), thumbnails=len(b.thumbs), empty_sections=empty,
                        seconds=time.perf_counter() - t0, stale=b.stale)
