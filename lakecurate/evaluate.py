"""Prove it: train a small proxy model on a curated view and on baselines with the same compute.

The protocol is DataComp's in miniature: a fixed training budget, only the data varies. The proxy
is a pair of linear contrastive heads (image and text, ``dim`` outputs, random init) trained with
CLIP's symmetric InfoNCE loss on the lake's frozen embeddings of the chosen rows; the same
number of steps and batch size for every arm. The baselines: ``all`` (every usable row of the pool,
DataComp's "no filtering"), ``random`` (as many rows as the view, drawn anew per seed), or another
view or tag. Each arm is scored every ``eval_every`` steps: a learning curve, from which the
**speed-up** is read: how many times fewer steps the view needs to reach a baseline's final score
(or, below 1, the share of the steps the baseline needs to reach the view's). ``budgets`` repeats
every arm at other multiples of the compute, to show where curation pays and where it stops. It is scored on a clean evaluation set that is
disjoint from the lake by image content hash: image->text and text->image recall at 1/5/10 and
the AUROC of true versus swapped captions. Every arm is repeated over ``seeds`` seeds (a new
random baseline draw, initialisation and batch order each), so a difference can be told from noise.

The evaluation set is ingested and embedded (with the encoder that made the lake's embeddings) into
its own small lake under ``LAKE/eval_sets/``, kept for the next evaluation. Results are appended to
the table ``LAKE/evaluations.lance`` (one row per arm and seed) and shown in the report.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from lakecurate import offline, options
from lakecurate.columns import embedding_matrix, field_provenance
from lakecurate.encoders import meaningless
from lakecurate.engines import check_engine
from lakecurate.errors import LakeError
from lakecurate.options import given, spell
from lakecurate.graph import broken_vectors, check_current, check_decided, check_view_not_empty, effective_view, embed_command, where_columns
from lakecurate.names import EVAL_LR, EVAL_METRICS, caption_choices, default_view, embedding_columns, pick_embedding
from lakecurate.schema import EVAL_TABLE
from lakecurate.sqlcheck import check_where
from lakecurate.store import retry_on_conflict

if TYPE_CHECKING:
    from lakecurate.store import Store

METRICS = EVAL_METRICS
DEFAULT_BASELINES = ("all", "random")
CURVE_POINTS = 20  # checkpoints on a learning curve by default (eval_every = steps / 20)
# The proxy's learning rate. At 2e-3 the heads fit a pool of ~700 pairs within 30 of 300 steps and
# then decline (overfitting), so a final score measures resistance to overfitting, not how fast an
# arm learns; at 2e-4 every arm still improves at the end of the default budget (scripts/eval_curation.py).
DEFAULT_LR = EVAL_LR
MAX_BUDGET = 16.0


@dataclass
class EvalSet:
    """Unit embeddings of a clean evaluation set: unique images, captions, caption -> image."""

    image: np.ndarray
    text: np.ndarray
    text_image: np.ndarray
    hashes: list[str]
    left_out: str = ""  # the set's rows left out (refused at ingest, no caption, no vectors), or ""


@dataclass
class EvalResult:
    lake: str
    version: int
    view: str
    baseline: str  # the baselines, comma-joined (``baselines`` lists them)
    embedding: str
    eval_set: str
    eval_images: int
    eval_captions: int
    rows: dict[str, int] = field(default_factory=dict)           # arm -> training rows
    pool_rows: int = 0
    steps: int = 0
    seeds: list[int] = field(default_factory=list)
    metrics: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # arm -> metric -> per seed
    eval_id: str = ""
    seconds: float = 0.0
    baselines: list[str] = field(default_factory=list)  # arm names: "all", "random", or a view's label
    metric: str = "t2i_R@5"                              # the one the curves and speed-ups are read on
    curve_steps: list[int] = field(default_factory=list)
    curves: dict[str, list[list[float]]] = field(default_factory=dict)  # arm -> per seed -> metric at curve_steps
    budgets: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # "0.5" -> arm -> metric per seed
    warnings: list[str] = field(default_factory=list)  # what makes the numbers mean less (the CLI's stderr)
    near_copies: int = 0  # pool rows left out of every arm: near copies of evaluation images (held_out_cosine)
    near_copy_ids: list[str] = field(default_factory=list)  # their ids
    held_out_cosine: float | None = None  # the image cosine that counted as a near copy (None: not checked)
    notes: list[str] = field(default_factory=list)     # what was done other than asked (merged budgets)

    def table(self) -> pd.DataFrame:
        """Mean and spread (max - min over seeds) of each metric, one row per arm."""
        out = []
        for arm, m in self.metrics.items():
            row: dict[str, Any] = {"arm": arm, "rows": self.rows.get(arm, 0)}
            for k in METRICS:
                v = np.asarray(m[k])
                row[k] = float(v.mean())
                row[f"{k} spread"] = float(v.max() - v.min())
            out.append(row)
        return pd.DataFrame(out)

    def difference(self, metric: str = "t2i_R@5", baseline: str | None = None) -> dict[str, float]:
        """Mean difference view - baseline (default: the first) on ``metric``, and the larger spread."""
        base = baseline or self.baselines[0]
        a, b = np.asarray(self.metrics["view"][metric]), np.asarray(self.metrics[base][metric])
        return {"metric": metric, "baseline": base, "view": float(a.mean()), "baseline_score": float(b.mean()),
                "difference": float(a.mean() - b.mean()), "spread": float(max(np.ptp(a), np.ptp(b)))}

    def speedups(self) -> dict[str, dict[str, Any]]:
        """Per baseline: the view's speed-up over it (:func:`speedup_summary`) on ``metric``."""
        if not self.curve_steps:
            return {}
        return {b: speedup_summary(self.curve_steps, self.curves["view"], self.curves[b]) for b in self.baselines}

    def budget_table(self) -> pd.DataFrame:
        """Mean of ``metric`` per compute budget (a multiple of ``steps``) and arm, with the view's gaps."""
        out = []
        for budget, arms in sorted(self.budgets.items(), key=lambda kv: float(kv[0])):
            row: dict[str, Any] = {"budget": float(budget), "steps": max(1, round(float(budget) * self.steps))}
            for arm, v in arms.items():
                row[arm] = float(np.mean(v))
                row[f"{arm} spread"] = float(np.ptp(v))
            for b in self.baselines:
                row[f"view - {b}"] = row["view"] - row[b]
            out.append(row)
        return pd.DataFrame(out)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "speedups": self.speedups()}


# --------------------------------------------------------------------------- pure parts
def auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """Probability that a random positive scores above a random negative (ties count half).

    >>> auroc(np.array([0.9, 0.8]), np.array([0.1, 0.8]))
    0.875
    """
    scores = np.concatenate([pos, neg])
    _, inv, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2.0)[inv]  # average rank of each tie
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def retrieval_metrics(image: np.ndarray, text: np.ndarray, text_image: np.ndarray, seed: int = 0) -> dict[str, float]:
    """Recall@1/5/10 both ways and swapped-caption AUROC for unit embeddings.

    ``text_image[j]`` is the image of caption ``j``. Image->text counts a hit when any of the
    image's captions is in the top k.

    >>> e = np.eye(3)
    >>> retrieval_metrics(e, e, np.arange(3))["t2i_R@1"]
    1.0
    """
    sim = text @ image.T  # captions x images
    own = sim[np.arange(len(text_image)), text_image]
    t2i_rank = (sim > own[:, None]).sum(1)
    # rank of each caption among all captions for its own image; an image's rank is its best caption's
    col = sim.T  # images x captions
    cap_rank = (col[text_image] > own[:, None]).sum(1)
    i2t_rank = np.full(image.shape[0], np.iinfo(np.int64).max)
    np.minimum.at(i2t_rank, text_image, cap_rank)
    rng = np.random.default_rng(seed)
    other = (text_image + rng.integers(1, image.shape[0], len(text_image))) % image.shape[0]
    out = {}
    for k in (1, 5, 10):
        out[f"i2t_R@{k}"] = float((i2t_rank < k).mean())
    for k in (1, 5, 10):
        out[f"t2i_R@{k}"] = float((t2i_rank < k).mean())
    out["swapped_auroc"] = auroc(own, sim[np.arange(len(text_image)), other])
    return out


def crossing(steps: Sequence[float], curve: Sequence[float], target: float) -> float | None:
    """The first step at which ``curve`` (scores at ``steps``) reaches ``target``, linear between
    checkpoints; None when it never does.

    >>> crossing([0, 100, 200], [0.1, 0.3, 0.5], 0.4)
    150.0
    """
    for i, c in enumerate(curve):
        if c >= target:
            if i == 0:
                return float(steps[0])
            c0 = curve[i - 1]  # below target, so c > c0
            return float(steps[i - 1] + (target - c0) / (c - c0) * (steps[i] - steps[i - 1]))
    return None


def speedup(steps: Sequence[float], view: Sequence[float], base: Sequence[float]) -> float:
    """How many times fewer steps the view needs than the baseline to reach the lower of the two
    final scores: > 1, the view gets there sooner (curation saves compute); < 1, the baseline does
    (curation costs compute, for that score: read it beside the final gap, since a baseline that
    plateaus early can get there sooner and still end lower). Both curves are measured the same
    way, so equal curves give 1.0 even when they plateau or stay flat. A curve there before the
    first checkpoint counts as reaching it there (the ratio is then a bound); a curve without a
    final score (NaN) gives NaN.

    >>> speedup([0, 100, 200], [0.1, 0.5, 0.6], [0.1, 0.3, 0.5])
    2.0
    >>> speedup([0, 100, 200], [0.1, 0.3, 0.5], [0.1, 0.5, 0.6])
    0.5
    >>> speedup([0, 100, 200], [0.4, 0.4, 0.4], [0.4, 0.4, 0.4])
    1.0
    """
    first = float(steps[1]) if len(steps) > 1 else float(steps[-1])
    target = min(float(view[-1]), float(base[-1]))  # both curves reach it: each ends at or above it
    at_view, at_base = crossing(steps, view, target), crossing(steps, base, target)
    if at_view is None or at_base is None:  # only when a final score is NaN
        return float("nan")
    return max(at_base, first) / max(at_view, first)


def speedup_summary(steps: Sequence[float], view: Sequence[Sequence[float]], base: Sequence[Sequence[float]]) -> dict[str, Any]:
    """The speed-up per seed (curves paired by seed) with its median and range, and the score gap
    view - baseline at equal steps (mean over seeds) at every checkpoint and at the end."""
    per = [speedup(steps, v, b) for v, b in zip(view, base)]
    gap = (np.asarray(view, float) - np.asarray(base, float)).mean(0)
    return {"per_seed": per, "median": float(np.median(per)), "min": float(min(per)), "max": float(max(per)),
            "gap": [float(g) for g in gap], "gap_final": float(gap[-1])}


def train_heads(img: np.ndarray, txt: np.ndarray, *, dim: int = 128, steps: int = 300, batch: int = 256,
                lr: float = DEFAULT_LR, weight_decay: float = 0.05, seed: int = 0, every: int = 0,
                on_checkpoint: Callable[[int, np.ndarray, np.ndarray], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Linear image and text heads trained with symmetric InfoNCE on paired rows; returns (W_img, W_txt).

    The budget is fixed by ``steps`` x ``batch``, whatever the number of rows, as in DataComp.
    ``on_checkpoint(step, W_img, W_txt)`` is called before the first step and every ``every`` steps
    (and after the last): a learning curve from one run.
    """
    import torch

    if len(img) < 2:
        raise LakeError("a proxy model needs at least 2 training rows")
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    d = img.shape[1]
    w_i = torch.nn.Parameter(torch.randn(d, dim, generator=g) / np.sqrt(d))
    w_t = torch.nn.Parameter(torch.randn(d, dim, generator=g) / np.sqrt(d))
    scale = torch.nn.Parameter(torch.tensor(np.log(1 / 0.07), dtype=torch.float32))
    opt = torch.optim.AdamW([w_i, w_t, scale], lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    xi, xt = torch.from_numpy(img.astype(np.float32)), torch.from_numpy(txt.astype(np.float32))
    b = min(batch, len(img))

    def checkpoint(step: int) -> None:
        if on_checkpoint is not None:
            on_checkpoint(step, w_i.detach().numpy().copy(), w_t.detach().numpy().copy())

    checkpoint(0)
    for step in range(1, steps + 1):
        rows = torch.from_numpy(rng.choice(len(img), b, replace=False))
        a = torch.nn.functional.normalize(xi[rows] @ w_i, dim=-1)
        t = torch.nn.functional.normalize(xt[rows] @ w_t, dim=-1)
        logits = scale.exp().clamp(max=100) * a @ t.T
        labels = torch.arange(b)
        loss = (torch.nn.functional.cross_entropy(logits, labels) + torch.nn.functional.cross_entropy(logits.T, labels)) / 2
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if every and (step % every == 0 or step == steps):
            checkpoint(step)
    return w_i.detach().numpy(), w_t.detach().numpy()


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def score_heads(ev: EvalSet, w_img: np.ndarray | None, w_txt: np.ndarray | None) -> dict[str, float]:
    """Metrics of the heads on the evaluation set (no heads: the frozen embeddings themselves)."""
    image = ev.image if w_img is None else _unit(ev.image @ w_img)
    text = ev.text if w_txt is None else _unit(ev.text @ w_txt)
    return retrieval_metrics(image, text, ev.text_image)


# --------------------------------------------------------------------------- the lake side
def _vectors(tbl: pa.Table, name: str) -> np.ndarray:
    return embedding_matrix(tbl.column(name))[0]


def _selection(lake: "Store", view: str | None, option: str = "--view", *, allow_stale: bool = False,
               warnings: list[str] | None = None) -> tuple[int | str | None, str, str]:
    """(version, where, label) of a view: a tag (its curated rows), a SQL condition, or the default.
    Its decision columns must be current (or ``allow_stale``: then what is not is appended to
    ``warnings``): a proxy trained on stale decisions proves nothing about the curator's."""
    warnings = [] if warnings is None else warnings
    ds = lake.dataset()
    version: int | str | None = None
    label = view or ""
    if view and view in ds.tags.list():
        version, ds = view, lake.dataset(view)
        view = None
    if view:
        lead = f"{spell(option)} '{view}' is not a tag of lake '{lake.uri}' nor a valid SQL condition"
        where = check_where(view, option, ds, lead=lead)
        warnings += check_current(lake, ds, where_columns(where, ds.schema.names), what="evaluate",
                                  allow_stale=allow_stale)
        return version, where, label
    names = ds.schema.names
    # a tag is its recipe's result as it was: the latest decision current there (what is stale at a
    # past version can never be made current; rebalance_keep of an older recipe was used, or refused)
    where = effective_view(lake, ds)[0] if version is not None else default_view(ds.schema)
    warnings += check_decided(lake, ds, where, what="evaluate", allow_stale=allow_stale or version is not None)
    if where is None:
        raise LakeError(f"lake '{lake.uri}' has no curated view yet (no keep or rebalance_keep column); "
                        f"run: lakecurate curate {lake.shell} basic, or pass {given('--view', 'SQL condition')}")
    warnings += check_current(lake, ds, where_columns(where, names), what="evaluate", allow_stale=allow_stale)
    if version is None:  # (curate kept nothing: a proxy trained on no rows proves nothing)
        check_view_not_empty(lake, ds, where, "evaluate")
    return version, where, label or where


def fingerprint(path: str) -> str:
    """A hash of a path and what is there now (names, sizes, modification times): the cache key of
    an embedded evaluation set, so an edited set is embedded afresh."""
    h = hashlib.blake2b(path.encode(), digest_size=6)
    files = [Path(path)] if os.path.isfile(path) else sorted(p for p in Path(path).rglob("*") if p.is_file())
    for p in files:
        st = p.stat()
        h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def load_eval_set(lake: "Store", path: str | os.PathLike, prov: dict[str, Any], *, progress: bool | None = None,
                  root: str | os.PathLike | None = None, engine: str = "local",
                  held_out: Callable[[list[str]], None] | None = None) -> tuple[EvalSet, "Store"]:
    """Ingest and embed the evaluation set into ``LAKE/eval_sets/<name>-<fingerprint>`` (kept for next time).

    ``root``: the folder a manifest's image paths must stay inside (default: the manifest's folder).
    ``engine="ray"``: the ingest (a task per shard) and the embedding (Ray actors) run on Ray.
    ``held_out(content hashes)``: raises when the set is not held out; it is called after the
    ingest and before the embedding, and a set this call began caching is then removed."""
    from lakecurate.encoders import spec_from_provenance

    src = os.path.abspath(os.fspath(path))
    if not os.path.exists(src):
        raise LakeError(f"evaluation set '{path}' does not exist; pass a folder, manifest or WebDataset shards")
    tag = fingerprint(src)
    if root is not None:  # another root admits other images: its own cached set
        if not os.path.isdir(os.fspath(root)):
            raise LakeError(f"{spell('--root')} '{root}' is not a folder; give the folder that holds the evaluation set's images")
        root = os.path.realpath(os.fspath(root))
        tag += "-" + hashlib.blake2b(root.encode(), digest_size=3).hexdigest()
    # The lake's own class (the facade) makes the side lake, so this view imports no stage.
    where = os.path.join(str(lake.uri), "eval_sets", f"{Path(src).stem}-{tag}")
    if "://" not in where and os.path.exists(where) and os.path.isfile(src) and _images_changed(type(lake).open(where)):
        shutil.rmtree(where)  # a manifest's images changed under it (its fingerprint is the manifest's alone)
    new = "://" not in where and not os.path.exists(where)
    side = type(lake).create(where)
    try:
        side.ingest(src, progress=False, engine=engine, **({"root": root} if root is not None else {}))
    except LakeError as exc:
        if new:  # (a cache of a set that could not be read)
            shutil.rmtree(where, ignore_errors=True)
        raise LakeError(str(exc).replace(f"pass {spell('--image-col')} NAME", "name them image and caption")
                        .replace(f"pass {spell('--caption-col')} NAME", "name them image and caption")) from None
    if held_out is not None:
        try:
            held_out(side.dataset().to_table(columns=["content_hash"], filter="content_hash IS NOT NULL")
                     .column("content_hash").to_pylist())
        except LakeError:
            if new:  # refused: no cache of a set that cannot be used with this lake is left behind
                shutil.rmtree(where, ignore_errors=True)
            raise
    spec = spec_from_provenance(prov)
    side.embed(spec, precision=prov["config"].get("precision", "fp32"), progress=progress, engine=engine)
    names = embedding_columns(spec.prefix)
    tbl = side.dataset().to_table(columns=["content_hash", "caption", names["image"], names["text"]],
                                  filter=f"{names['image']} IS NOT NULL AND ingest_status != 'error'")
    captioned = np.array([bool(c and c.strip()) for c in tbl.column("caption").to_pylist()], bool)
    blank = int((~captioned).sum())  # (embed gives a blank caption no text vector: counted here, not as unembedded)
    refused = _refused(side)
    unembedded = side.dataset().count_rows(filter="ingest_status != 'error'") - tbl.num_rows
    tbl = tbl.filter(pa.array(captioned))
    texted = np.asarray(tbl.column(names["text"]).is_valid(), bool)
    unembedded += int((~texted).sum())  # (a caption whose text vector failed)
    tbl = tbl.filter(pa.array(texted))
    images = len(set(tbl.column("content_hash").to_pylist()))
    if images < 2:  # retrieval and the swapped-caption AUROC pair each caption with another image
        why = refused + (f"; {blank} rows have no caption" if blank else "")
        if new:  # (a cache of a set that cannot be used)
            shutil.rmtree(where, ignore_errors=True)
        raise LakeError(f"evaluation set '{path}' has {tbl.num_rows} usable pairs of {images} distinct images after "
                        f"ingest and embedding (retrieval needs 2 images or more; 10 or more say something){why}")
    hashes = tbl.column("content_hash").to_pylist()
    uniq, first, text_image = np.unique(np.array(hashes), return_index=True, return_inverse=True)
    img = _vectors(tbl, names["image"])[first]
    # rows left out are a smaller, other evaluation than the one asked for: said, never silent
    why = [*([refused.lstrip("; ")] if refused else []), *([f"{blank} rows have no caption"] if blank else []),
           *([f"{unembedded} rows have no {spec.prefix} vectors"] if unembedded else [])]
    left_out = (f"evaluation set '{path}': rows left out, so it scores {tbl.num_rows} pairs of {len(uniq)} images: "
                f"{'; '.join(why)}; fix or remove them in the set (it is read again when its files change)") if why else ""
    return EvalSet(_unit(img), _unit(_vectors(tbl, names["text"])), text_image.astype(np.int64), uniq.tolist(),
                   left_out), side


def _images_changed(side: "Store") -> bool:
    """Whether an image file a cached evaluation set read is gone or holds other bytes now, or one
    it refused has appeared or been written since (a manifest names its images: replaced or
    restored, they leave the manifest as it was)."""
    ds = side.dataset()
    refused = ds.to_table(columns=["image_uri", "ingest_flags"], filter="ingest_status = 'error'")
    if refused.num_rows:
        cached_at = min(v["timestamp"] for v in ds.versions()).timestamp()
        for uri, flags in zip(refused.column("image_uri").to_pylist(), refused.column("ingest_flags").to_pylist()):
            if not uri or "://" in uri or "#" in uri or not os.path.isfile(uri):
                continue
            if "file_missing" in (flags or []) or os.path.getmtime(uri) >= cached_at:
                return True
    tbl = ds.to_table(columns=["image_uri", "content_hash"], filter="content_hash IS NOT NULL")
    for uri, digest in zip(tbl.column("image_uri").to_pylist(), tbl.column("content_hash").to_pylist()):
        if not uri or "://" in uri or "#" in uri:
            continue
        try:
            with open(uri, "rb") as f:
                now = hashlib.sha256(f.read()).hexdigest()
        except OSError:
            now = None
        if now != digest:
            return True
    return False


def _refused(side: "Store") -> str:
    """What ingest refused in an evaluation set, per reason with example paths, and the fix."""
    tbl = side.dataset().to_table(columns=["key", "image_uri", "ingest_flags"], filter="ingest_status = 'error'")
    if not tbl.num_rows:
        return ""
    by: dict[str, list[str]] = {}
    for key, uri, flags in zip(*(tbl.column(c).to_pylist() for c in ("key", "image_uri", "ingest_flags"))):
        by.setdefault((flags or ["error"])[0], []).append(uri or key)
    parts = [f"{reason} {len(items)} (e.g. {', '.join(items[:2])})" for reason, items in sorted(by.items())]
    hint = f"; pass {spell('--root')} with the folder that holds the images" if "path_outside_root" in by else ""
    return f"; {tbl.num_rows} rows refused at ingest: {'; '.join(parts)}{hint}"


def _trained_on(prov: dict[str, Any], ev: EvalSet) -> list[str]:
    """A warning when evaluation images are photos the offline encoder's heads were trained on:
    every arm's scores (the frozen encoder's first) are then measured on memorised pairs."""
    if (prov.get("config") or {}).get("arch") != offline.ARCH:
        return []
    seen = offline.trained_on()
    n = sum(h[:16] in seen for h in ev.hashes)
    if not n:
        return []
    return [f"{n} of {len(ev.hashes)} evaluation images trained the offline encoder's heads (Flickr8k photos outside "
            f"its held-out split): every score is optimistic on them; evaluate on its held-out photos "
            f"(split.held_out_images in {offline.RECORD.name}) or embed with a real model"]


def parse_baselines(baseline: "str | Sequence[str]") -> list[str]:
    names = [baseline] if isinstance(baseline, str) else list(baseline)
    if not names or any(not isinstance(b, str) or not b.strip() for b in names):
        raise LakeError(f"{spell('--baseline')}: name at least one: all (every usable row), random (as many rows as the view), "
                        "or a tag / SQL condition")
    if len(set(names)) < len(names) or "view" in names:
        raise LakeError(f"{spell('--baseline')} {', '.join(names)}: each baseline once, and none called 'view'")
    return names


def parse_budgets(budgets: "str | Sequence[float] | None") -> list[float]:
    """Compute multiples of ``steps`` to sweep (``"0.25,0.5,1,2"`` or a list); 1 is always among them.

    >>> parse_budgets("2, 0.5")
    [0.5, 1.0, 2.0]
    """
    if budgets is None:
        return [1.0]
    items = budgets.split(",") if isinstance(budgets, str) else list(budgets)
    out = set()
    for item in items:
        try:
            value = float(item)
        except (TypeError, ValueError):
            raise LakeError(f"{spell('--budget')} {budgets!r}: give multiples of {spell('--steps')} separated by commas, e.g. 0.25,0.5,1,2") from None
        if not 0 < value <= MAX_BUDGET or not np.isfinite(value):
            raise LakeError(f"{spell('--budget')} {item}: each multiple of {spell('--steps')} must be above 0 and at most {MAX_BUDGET:g}")
        out.add(value)
    return sorted(out | {1.0})


def budget_steps(multiples: Sequence[float], steps: int) -> tuple[list[float], list[str]]:
    """The multiples of ``steps`` that train distinct step counts, and a note per merge: multiples
    that round to one step count would train the same arm again and list it as another budget.
    Of those, 1 (the main run) is kept, else the smallest.

    >>> budget_steps([0.05, 0.1, 0.2, 1.0], 4)[0]
    [0.05, 1.0]
    """
    by: dict[int, list[float]] = {}
    for m in sorted(multiples):
        by.setdefault(max(1, round(m * steps)), []).append(m)
    kept, notes = [], []
    for n, group in sorted(by.items()):
        keep = 1.0 if 1.0 in group else group[0]
        kept.append(keep)
        others = [m for m in group if m != keep]
        if others:
            notes.append(f"{spell('--budget')} {', '.join(f'{m:g}' for m in others)} x {spell('--steps')} {steps} train{'s' if len(others) == 1 else ''} "
                         f"{n} step{'s' if n != 1 else ''}, as {keep:g} does: trained once, as {keep:g} (raise {spell('--steps')} "
                         "to tell them apart)")
    return kept, notes


def evaluate(
    lake: "Store",
    view: str | None = None,
    *,
    eval_set: str | os.PathLike,
    baseline: "str | Sequence[str]" = DEFAULT_BASELINES,
    seeds: int = 3,
    steps: int = 300,
    batch: int = 256,
    dim: int = 128,
    embedding: str | None = None,
    record: bool = True,
    progress: bool | None = None,
    root: str | os.PathLike | None = None,
    allow_stale: bool = False,
    caption_col: str = "caption",
    eval_every: int | None = None,
    budgets: "str | Sequence[float] | None" = None,
    metric: str = "t2i_R@5",
    lr: float = DEFAULT_LR,
    engine: str = "local",
    held_out_cosine: float | None = None,
) -> EvalResult:
    """Train the proxy on ``view`` and on each baseline (same steps x batch) and score them.

    ``view``: a tag (its ``rebalance_keep``/``keep`` rows), a SQL condition, or None for the lake's
    current curated view. ``baseline``: one or several of "all" (every usable row of the pool: the
    "no filtering" baseline), "random" (as many rows as the view drawn from the pool, a new draw per
    seed) or another view. ``eval_every``: steps between the learning curve's checkpoints (default
    ``steps / 10``); the speed-up over each baseline is read on ``metric``. ``budgets``: multiples of
    ``steps`` to repeat every arm at (e.g. "0.25,0.5,1,2"). ``lr``: the proxy's learning rate (the
    same for every arm). ``root``: the folder the evaluation
    manifest's image paths must stay inside (default: the manifest's folder). ``caption_col``: train
    every arm on another caption column (a synthetic one, scored with ``embed --caption-col``).
    ``held_out_cosine``: pool rows whose image embedding is this close (cosine) to an evaluation
    image's are near copies of it (resized, re-encoded, lightly cropped) and are left out of every
    arm's training, with a warning: else the proxy is scored on images it trained on (default: 0.75
    for the offline encoder, measured; else the encoder's semantic-dedup threshold, 0.95 for CLIP;
    not checked for a test model).
    The evaluation set's exact copies (same bytes) in the lake are refused before it is embedded.
    ``engine="ray"``: the evaluation set is ingested and embedded on Ray (the first time: it is
    cached); the proxies train here, on the frozen embeddings.

    Example::

        res = lake.evaluate(eval_set="clean_eval/")         # curated view vs all and random, 3 seeds
        res.table()                                           # mean and spread per arm
        res.speedups()["all"]                                 # {'median': ..., 'min': ..., 'max': ...}
        res.difference("t2i_R@5", "random")                   # {'difference': ..., 'spread': ...}
    """
    from lakecurate.progress import progress_bar

    t0 = time.perf_counter()
    check_engine(engine)
    eval_set = options.path("--eval-set", eval_set)
    # (options.whole: numpy's integers and whole floats too, as every other stage takes them)
    seeds, steps, batch, dim = (options.whole(opt, value, 1) for opt, value in
                                (("--seeds", seeds), ("--steps", steps), ("--batch", batch), ("--dim", dim)))
    lr = options.real("--lr", lr, 0, 1, above=True)  # a learning rate
    held_out_cosine = options.cosine("--held-out-cosine", held_out_cosine, none_ok=True)
    every = options.whole("--eval-every", eval_every, 1, high=steps) if eval_every is not None else \
        max(1, steps // CURVE_POINTS)
    if metric not in METRICS:
        raise LakeError(f"{spell('--metric')} {metric!r}: one of {', '.join(METRICS)}")
    names = parse_baselines(baseline)
    multiples, merged = budget_steps(parse_budgets(budgets), steps)
    warnings: list[str] = []
    version, where, label = _selection(lake, view, allow_stale=allow_stale, warnings=warnings)
    # other views as baselines: checked (and a bad condition refused) before the eval set is cached
    views = {b: _selection(lake, b, "--baseline", allow_stale=allow_stale, warnings=warnings)[:2]
             for b in names if b not in ("all", "random")}
    ds = lake.dataset(version)
    emb, prov = pick_embedding(lake, ds, embedding, need="the proxy trains on them")
    text_col = embedding_columns(emb)["text"] if caption_col == "caption" else f"{emb}_{caption_col}_text"
    if text_col not in ds.schema.names:
        texts = caption_choices(ds.schema)
        if caption_col not in texts:  # a typo: refused as such, not "embed it" (which embed refuses in turn)
            what = (f"no column {caption_col!r} in lake '{lake.uri}'" if caption_col not in ds.schema.names else
                    f"column {caption_col!r} of lake '{lake.uri}' is not a caption (text) column")
            raise LakeError(f"{spell('--caption-col')}: {what}; caption columns: {', '.join(texts)}")
        raise LakeError(f"the proxy needs {caption_col} through the {emb} text tower ({text_col}), which lake "
                        f"'{lake.uri}' lacks; run: {embed_command(lake, emb, prov)} --caption-col {caption_col}")
    # The vectors it trains on must be current too: captions rewritten after embed leave the text
    # vectors of the old ones (what curate and export refuse). At a tag they can never be made
    # current there: a warning.
    latest = version is None or lake.names_latest(version, ds)
    warnings += check_current(lake, ds, [embedding_columns(emb)["image"], text_col], what="evaluate",
                              allow_stale=allow_stale or not latest)
    if meaningless(prov):
        warnings.append(f"embedding '{emb}' comes from a randomly initialised test model: the proxy's scores and "
                        f"speed-ups are meaningless; embed with a real model and pass {spell('--embedding')}")
    def held_out(hashes: list[str]) -> None:  # before the set is embedded (and cached)
        overlap = set(hashes) & set(ds.to_table(columns=["content_hash"]).column("content_hash").to_pylist())
        if overlap:
            raise LakeError(f"{len(overlap)} evaluation images are also in lake '{lake.uri}' (same content hash), "
                            "so the evaluation would not be held out; remove them from the evaluation set or the lake")

    ev, _side = load_eval_set(lake, eval_set, prov, progress=progress, root=root, engine=engine, held_out=held_out)
    if ev.left_out:
        warnings.append(ev.left_out)
    warnings += _trained_on(prov, ev)
    pool = ds.to_table(columns=["id", embedding_columns(emb)["image"], text_col],
                       filter=f"{emb}_image IS NOT NULL AND {text_col} IS NOT NULL")
    ids = pool.column("id")
    x_img, x_txt = _vectors(pool, embedding_columns(emb)["image"]), _vectors(pool, text_col)
    for column, x in ((embedding_columns(emb)["image"], x_img), (text_col, x_txt)):
        broken = np.flatnonzero(~np.isfinite(x).all(axis=1))  # (NaN similarities ranked every caption first: R@1 1.0)
        if len(broken):
            rows = ds.to_table(columns=["id", "key"], filter=pc.field("id").isin(ids.take(broken[:3]))).to_pylist()
            raise broken_vectors(lake, ds, column, len(broken), rows, "evaluate")

    near, said = _near_copies(ds, ids, x_img, ev, prov, held_out_cosine)
    held = None if near is None else ~near  # the rows every arm may train on (None: every row)
    if said:
        warnings.append(said)

    def rows_of(at: int | str | None, condition: str) -> np.ndarray:
        try:
            sel = lake.dataset(at).to_table(columns=["id"], filter=condition).column("id")
        except Exception as exc:  # a bad SQL condition is a user error
            raise LakeError(f"view '{condition}' is not a tag of lake '{lake.uri}' nor a valid SQL condition: {exc}") from None
        got = pc.is_in(ids, value_set=sel).to_numpy(zero_copy_only=False)
        return np.flatnonzero(got if held is None else got & held)

    chosen = rows_of(version, where)
    if len(chosen) < 2:
        raise LakeError(f"view '{label}' selects {len(chosen)} embedded rows"
                        + (f" once the {int(near.sum())} near copies of evaluation images are left out" if near is not None
                           else "") + "; a proxy needs at least 2")
    fixed = {b: rows_of(*sel) for b, sel in views.items()}
    fixed["all"] = np.arange(len(ids)) if held is None else np.flatnonzero(held)
    for b, rows in fixed.items():
        if b in names and len(rows) < 2:
            raise LakeError(f"baseline '{b}' selects {len(rows)} embedded rows; a proxy needs at least 2")
    if caption_col != "caption":  # recorded with the view: the evaluations table keeps its columns
        label = f"{label} [captions: {caption_col}]"
    res = EvalResult(lake=str(lake.uri), version=ds.version, view=label, baseline=", ".join(names), embedding=emb,
                     eval_set=os.path.abspath(os.fspath(eval_set)), eval_images=len(ev.hashes),
                     eval_captions=len(ev.text_image), pool_rows=len(ids), steps=steps,
                     seeds=list(range(seeds)), eval_id=uuid.uuid4().hex[:12], baselines=names, metric=metric,
                     warnings=list(dict.fromkeys(warnings)), notes=merged,
                     near_copies=0 if near is None else int(near.sum()),
                     near_copy_ids=[] if near is None else ids.filter(pa.array(near)).to_pylist(),
                     held_out_cosine=None if meaningless(prov) else _near_bar(prov, held_out_cosine))
    arms = ["view", *names]
    res.rows = {"view": len(chosen), **{b: len(chosen) if b == "random" else len(fixed[b]) for b in names}}
    res.metrics = {arm: {k: [] for k in METRICS} for arm in arms}
    res.curves = {arm: [] for arm in arms}
    res.budgets = {f"{m:g}": {arm: [] for arm in arms} for m in multiples}
    runs = seeds * len(arms) * len(multiples)
    with progress_bar(runs, desc="evaluate", unit="run", progress=progress) as bar:
        for seed in range(seeds):
            rng = np.random.default_rng(10_000 + seed)
            # the random arm's rows, one draw per seed (among the rows every arm may train on)
            draw = rng.choice(len(ids), len(chosen), replace=False) if held is None else \
                fixed["all"][rng.choice(len(fixed["all"]), len(chosen), replace=False)]
            for arm in arms:
                rows = chosen if arm == "view" else draw if arm == "random" else fixed[arm]
                for m in multiples:
                    curve: list[float] = []
                    main_run = m == 1.0

                    def keep_point(step: int, w_i: np.ndarray, w_t: np.ndarray) -> None:
                        curve.append(score_heads(ev, w_i, w_t)[metric])
                        if seed == 0 and arm == "view":
                            res.curve_steps.append(step)

                    w_i, w_t = train_heads(x_img[rows], x_txt[rows], dim=dim, steps=max(1, round(m * steps)),
                                           batch=batch, lr=lr, seed=seed, every=every if main_run else 0,
                                           on_checkpoint=keep_point if main_run else None)
                    scores = score_heads(ev, w_i, w_t)
                    res.budgets[f"{m:g}"][arm].append(scores[metric])
                    if main_run:
                        for k, v in scores.items():
                            res.metrics[arm][k].append(v)
                        res.curves[arm].append(curve)
                    bar.update(1)
    frozen = score_heads(ev, None, None)
    res.metrics["frozen encoder"] = {k: [v] for k, v in frozen.items()}
    res.seconds = time.perf_counter() - t0
    if record:
        record_result(lake, res, recipe=_recipe_of(ds))
    return res


# The image cosine at which a pool row is a near copy of an evaluation image, by encoder family; lower
# than dedup's (a row left out of the proxy's training costs little, a copy trained on inflates every
# score). offline: scripts/eval_held_out.py, seeds 0-2 (docs/benchmarks.md): 0.75 left out 114 of 180
# planted copies and none of 2,073 pool rows of other photos; 0.85 (dedup's) 77 and none; 0.65 flagged
# other photos. Other encoders: dedup's semantic threshold (not measured here: no CLIP weights).
HELD_OUT_COSINES = {"offline": 0.75}


def _near_bar(prov: dict[str, Any], cosine: float | None) -> float:
    """The image cosine at which a pool row is a near copy of an evaluation image: ``cosine``, else
    the encoder family's :data:`HELD_OUT_COSINES`, else its semantic-dedup threshold."""
    from lakecurate.dedup import SEMANTIC_THRESHOLDS

    if cosine is not None:
        return cosine
    family = prov["config"].get("family", "open_clip")
    return HELD_OUT_COSINES.get(family, SEMANTIC_THRESHOLDS.get(family, 0.95))


# pool rows x evaluation images compared at once (float32: 64 MiB), whatever the sizes
NEAR_BLOCK = 1 << 24


def _near_copies(ds: Any, ids: pa.ChunkedArray, x_img: np.ndarray, ev: EvalSet, prov: dict[str, Any],
                 cosine: float | None) -> tuple[np.ndarray | None, str]:
    """Which pool rows are near copies of an evaluation image (image cosine >= the bar), and the
    warning that says they were left out; (None, "") when none is, or for a randomly initialised
    test model (whose cosines say nothing: the sample photos are all >= 0.95 to each other there)."""
    if meaningless(prov) or not len(x_img) or not len(ev.image):
        return None, ""
    bar = _near_bar(prov, cosine)
    ref = np.asarray(ev.image, np.float32)
    ref = ref / np.maximum(np.linalg.norm(ref, axis=1, keepdims=True), 1e-12)
    step = max(1, NEAR_BLOCK // len(ref))
    near = np.zeros(len(x_img), bool)
    for lo in range(0, len(x_img), step):
        blk = np.asarray(x_img[lo:lo + step], np.float32)
        blk = blk / np.maximum(np.linalg.norm(blk, axis=1, keepdims=True), 1e-12)
        near[lo:lo + step] = (blk @ ref.T).max(axis=1) >= bar
    n = int(near.sum())
    if not n:
        return None, ""
    shown = ids.take(np.flatnonzero(near)[:5]).to_pylist()
    keys = ds.to_table(columns=["id", "key"], filter=pc.field("id").isin(shown)).to_pylist()
    named = ", ".join(f"{r['id']} ({r['key']})" for r in keys) + (", ..." if n > len(keys) else "")
    return near, (f"{n} row{'s' if n != 1 else ''} of the pool {'are near copies' if n != 1 else 'is a near copy'} "
                  f"of evaluation images (image cosine >= {bar:g}; ids {named}): left out of every arm's "
                  f"training, so the evaluation stays held out ({options.spell('--held-out-cosine')} sets the bar)")


def _recipe_of(ds: Any) -> str | None:
    if "keep" not in ds.schema.names:
        return None
    prov = field_provenance(ds.schema.field("keep")) or {}
    cfg = prov.get("config", {})
    return f"{cfg.get('recipe', {}).get('name')}-{cfg.get('hash')}" if cfg else None


def record_result(lake: "Store", res: EvalResult, recipe: str | None) -> None:
    """Append one row per arm, seed and budget to ``LAKE/evaluations.lance``: at budget 1 every
    metric and the learning curve, at other budgets the curve metric only."""
    import lance

    now = datetime.now(timezone.utc)
    rows = []
    common = {"eval_id": res.eval_id, "evaluated_at": now, "lake_version": res.version, "view": res.view,
              "baseline": res.baseline, "pool_rows": res.pool_rows, "recipe": recipe, "embedding": res.embedding,
              "eval_set": res.eval_set, "eval_images": res.eval_images, "eval_captions": res.eval_captions,
              "curve_metric": res.metric, "near_copies": res.near_copies, "held_out_cosine": res.held_out_cosine}
    for arm, m in res.metrics.items():
        for i in range(len(m[METRICS[0]])):
            frozen = arm == "frozen encoder"
            curve = res.curves.get(arm, [])
            rows.append({**common, "arm": arm, "seed": None if frozen else i, "rows": res.rows.get(arm),
                         "steps": res.steps, "budget": None if frozen else 1.0, **{k: m[k][i] for k in METRICS},
                         "curve_steps": res.curve_steps if i < len(curve) else None,
                         "curve": curve[i] if i < len(curve) else None})
    for budget, arms in res.budgets.items():
        if float(budget) == 1.0:
            continue
        for arm, values in arms.items():
            for i, v in enumerate(values):
                rows.append({**common, "arm": arm, "seed": i, "rows": res.rows.get(arm), "budget": float(budget),
                             "steps": max(1, round(float(budget) * res.steps)), res.metric: v})
    tbl = pa.Table.from_pylist(rows, schema=EVAL_SCHEMA)
    uri = lake.ensure_side(EVAL_TABLE, EVAL_SCHEMA)  # a branch's evaluations are its own (main's report listed them)

    def write() -> None:
        ds = _open_table(lake)
        missing = [f for f in EVAL_SCHEMA if f.name not in ds.schema.names]
        if missing:  # a table recorded before a column existed gains it, empty in its old rows
            ds.add_columns(missing)
        lance.write_dataset(tbl, uri, mode="append", storage_options=lake.storage_options)

    retry_on_conflict(write)


def evaluations(lake: "Store") -> pd.DataFrame:
    """Every recorded evaluation of the lake (empty when there is none)."""
    ds = _open_table(lake)
    return pd.DataFrame(columns=EVAL_SCHEMA.names) if ds is None else ds.to_table().to_pandas()


def _open_table(lake: "Store") -> Any:
    """``LAKE/evaluations.lance`` (on a branch ``evaluations-BRANCH.lance``) as a dataset, or None
    before the first evaluation."""
    return lake.side_dataset(EVAL_TABLE)


EVAL_SCHEMA = pa.schema([
    pa.field("eval_id", pa.string()),
    pa.field("evaluated_at", pa.timestamp("us", tz="UTC")),
    pa.field("lake_version", pa.int64()),
    pa.field("view", pa.string()),
    pa.field("baseline", pa.string()),
    pa.field("arm", pa.string()),
    pa.field("seed", pa.int32()),
    pa.field("rows", pa.int64()),
    pa.field("pool_rows", pa.int64()),
    pa.field("recipe", pa.string()),
    pa.field("embedding", pa.string()),
    pa.field("eval_set", pa.string()),
    pa.field("eval_images", pa.int64()),
    pa.field("eval_captions", pa.int64()),
    pa.field("steps", pa.int64()),
    *[pa.field(k, pa.float64()) for k in METRICS],
    pa.field("budget", pa.float64()),            # a multiple of steps: 1 is the main run
    pa.field("curve_metric", pa.string()),
    pa.field("curve_steps", pa.list_(pa.int64())),
    pa.field("curve", pa.list_(pa.float64())),   # curve_metric at curve_steps (budget 1)
    pa.field("near_copies", pa.int64()),         # pool rows left out of every arm: near copies of evaluation images
    pa.field("held_out_cosine", pa.float64()),   # the image cosine that counted as one (null: not checked)
], metadata={"lakecurate.table": EVAL_TABLE, "doc": json.dumps("one row per evaluation arm, seed and budget")})
