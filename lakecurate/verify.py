"""Geometric verification of candidate copies: local features, a ratio test, RANSAC (algo floor).

The classic copy-detection check (as in DISC21 baselines and fastdup's verification): two images
are copies when many local features of one map onto the other under one similarity transform
(scale, rotation, shift). A heavy crop, a photo framed inside a page, a turned or mirrored copy and
an overlay over a fifth of the picture all keep hundreds of such features; two different photos of
the same subject (a dog on grass) keep a handful that agree by chance, and two shots of one scene
seconds apart some tens at most (measured: docs/benchmarks.md, issue 17).

* :func:`extract`: ORB keypoints (OpenCV, ``FEATURES`` per image) of the image decoded at most
  ``SIDE`` pixels on its long side, and of its mirror (so a mirrored copy is verified too);
* :func:`match`: the ratio test (Lowe) on Hamming distances, then a RANSAC similarity transform;
  :func:`accepted` keeps a match with >= ``MIN_INLIERS`` inliers whose scale is within ``SCALES``,
  whose rotation is within ``TURN_TOLERANCE`` degrees of a quarter turn, and under which the
  pixels agree (:func:`agreement`: the share of the overlap two 96-pixel thumbnails match up to
  brightness and contrast, >= ``MIN_AGREE``; where a similarity's pixels do not, a mild homography
  fitted on the same matches is checked too: a copy photographed at an angle, ``Match.kind``
  "perspective"): keypoints alone are fooled by two photos that carry
  the same logo, caption banner or page template (100-200 inliers on the banner alone); a match
  records its inliers' box in each image (what dedup needs to tell a collage of photos from a copy:
  :func:`overlap` of two matches' boxes in one image);
* :class:`KeypointCache`: features are computed only for rows in a candidate pair, in the runner's
  reader processes, and kept in the lake's ``dup_keypoints`` table (by row id, image hash and
  config), so an incremental run computes them only for rows it has not seen.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from lakecurate.images import decode_small
from lakecurate.runner import RowStage, map_images

if TYPE_CHECKING:
    from lakecurate.store import Store

SIDE = 320           # long side of the decode the features are found on
FEATURES = 500       # ORB keypoints per image (and as many on its mirror)
GRID = 4             # the keypoints are spread over GRID x GRID cells
RATIO = 0.8          # Lowe's ratio test: best match clearly better than the second best
RANSAC_PX = 4.0      # reprojection error (pixels at SIDE) under which a match is an inlier
MIN_INLIERS = 50     # inliers for a verified copy (distinct photos: <= 11; two shots of one scene: up to 42)
SCALES = (0.2, 5.0)  # the copy is 1/5 to 5x the size of the other (a crop or a framed photo)
FEW_MATCHES = 20     # fewer ratio-test matches than this one way round: the other way is not tried
TURN_TOLERANCE = 20.0  # degrees from 0/90/180/270: quarter turns, and a scan or a straightened horizon's few degrees
# (copies turned 3-15 degrees: 0.57-0.80 found at 10, 1.00 at 20, no false link: docs/benchmarks.md, 2026-12-07)
THUMB = 96           # long side of the thumbnail the pixel check compares
MIN_AGREE = 0.55     # share of the overlapping pixels that must agree for a verified copy (nan fails)
GAINS = (0.6, 1.6)   # contrast change a copy may have (brightness edits, JPEG, colour to gray)
AGREE_LEVELS = 16    # gray levels (of 255) within which two thumbnail pixels agree
# A copy photographed at an angle (a print, a screen: a keystone) is a perspective transform, which a
# similarity cannot line up (agreement 0.41-0.54). Where the similarity's pixels disagree, a homography
# fitted on the matches gets the pixel check again if it is one a copy can have: each pair of opposite
# edges of the query's frame, mapped, within PERSPECTIVE of each other, the frame's orientation kept,
# and locally a plausible scale and turn, stretched at most STRETCH. (plant's keystone, 10-20% off each
# end of an edge, shrinks it 20-40%: measured edge ratios 0.58-0.80; a print shot 35 degrees off is ~0.7.)
PERSPECTIVE = 0.45   # an edge at most this share shorter than its opposite; None: similarity only (groups before 2026-12-07)
STRETCH = 1.5        # largest ratio of the homography's local axis scales (a 1.3x stretch copy, a keystone's ~1.1)
CONFIG = {"features": "orb", "score": "fast", "n": FEATURES, "side": SIDE, "mirror": True, "thumb": THUMB, "grid": GRID, "v": 2}
CACHE_TABLE = "dup_keypoints"
_DESC = 32  # bytes per ORB descriptor


@dataclass
class Features:
    """Keypoint positions (N x 2 float32, pixels of the reduced image) and ORB descriptors
    (N x 32 uint8) of an image and of its mirror; N is 0 for an image that could not be decoded.
    ``thumb``: the reduced image again at ``THUMB`` pixels (uint8 gray), for the pixel check."""

    xy: np.ndarray
    desc: np.ndarray
    xy_m: np.ndarray
    desc_m: np.ndarray
    thumb: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.uint8))
    scale: float = 0.0  # thumb pixels per keypoint pixel

    @property
    def n(self) -> int:
        return len(self.xy)

    @property
    def size(self) -> tuple[float, float]:
        """(width, height) of the reduced image the keypoints are on (0, 0: unknown)."""
        if not self.scale or not self.thumb.size:
            return 0.0, 0.0
        return self.thumb.shape[1] / self.scale, self.thumb.shape[0] / self.scale


@dataclass
class Match:
    inliers: int = 0
    scale: float = 0.0
    angle: float = 0.0  # degrees, counter-clockwise
    mirrored: bool = False
    matched: int = 0  # descriptor matches that passed the ratio test (RANSAC's input)
    agree: float = float("nan")  # correlation of the overlapping pixels under the transform (nan: not checked)
    transform: Any = None  # 2 x 3 (3 x 3: perspective), keypoint pixels of the query image -> the other's (or its mirror's)
    kind: str = "similarity"  # the transform: "similarity" or "perspective" (a homography: a copy shot at an angle)
    # The inliers' bounding box in each image, (x0, y0, x1, y1) as shares of its width and height, in
    # the image's own (not mirrored) frame: ``box_a`` in the first image :func:`match` was given,
    # ``box_b`` in the second. What a match covers of each: a crop covers most of itself and part of
    # its photo; a collage holds each of its photos in a region of its own (:func:`overlap`).
    box_a: tuple[float, float, float, float] | None = None
    box_b: tuple[float, float, float, float] | None = None
    # (inlier boxes of _match_one, in keypoint pixels: the query's, and the other's in the frame searched)
    _boxes: Any = None
    _pts: Any = None  # (the ratio test's matches, query's and other's keypoint pixels: what a homography is fitted on)

    def describe(self) -> str:
        turn = round(self.angle / 90) * 90 % 360
        return (f"{self.inliers} inliers, scale {self.scale:.2f}" + (f", turned {turn}" if turn else "")
                + (", mirrored" if self.mirrored else "") + (", perspective" if self.kind == "perspective" else "")
                + (f", pixels agree {self.agree:.2f}" if self.agree == self.agree else ""))


_EMPTY = Features(np.zeros((0, 2), np.float32), np.zeros((0, _DESC), np.uint8),
                  np.zeros((0, 2), np.float32), np.zeros((0, _DESC), np.uint8))


def _gray_small(data: bytes | None, side: int = SIDE) -> np.ndarray | None:
    from PIL import Image

    small = decode_small(data, side, "L")
    if small is None:  # undecodable: ingest flagged it already; it simply has no features
        return None
    im = small[0]
    if max(im.size) < side:  # a small copy: up to side, so its details are at the scale of the others'
        f = side / max(im.size)
        im = im.resize((max(1, round(im.width * f)), max(1, round(im.height * f))), Image.BILINEAR)
    return np.asarray(im)


_ORB: dict[int, Any] = {}


def _orb(n: int) -> Any:
    import cv2

    if n not in _ORB:
        cv2.setNumThreads(1)  # one image per call; the callers run in parallel
        # FAST corner scores: 4% quicker than Harris here, and as many copies verified (30 photos x 6 kinds)
        _ORB[n] = cv2.ORB_create(nfeatures=n, scoreType=cv2.ORB_FAST_SCORE)
    return _ORB[n]


def _detect(gray: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` ORB keypoints spread over the image: the strongest of 2n corners taken cell by cell of
    a GRID x GRID grid, best first in each (as ORB-SLAM spreads its features), so a block of text
    (a banner, a page's buttons) cannot take them all from the photo around it."""
    import cv2

    orb = _orb(2 * n)
    kp = orb.detect(gray, None)
    if not kp:
        return _EMPTY.xy, _EMPTY.desc
    if len(kp) > n:
        h, w = gray.shape
        pts = cv2.KeyPoint_convert(kp)
        cell = (np.minimum(pts[:, 1] * GRID // h, GRID - 1) * GRID + np.minimum(pts[:, 0] * GRID // w, GRID - 1)).astype(int)
        response = np.array([k.response for k in kp], np.float32)
        order = np.lexsort((-response, cell))  # by cell, strongest first
        rank = np.empty(len(kp), np.int64)
        first = np.searchsorted(cell[order], cell[order])  # each cell's first position in the order
        rank[order] = np.arange(len(kp)) - first
        chosen = np.lexsort((-response, rank))[:n]  # round robin over the cells
        kp = [kp[i] for i in chosen]
    kp, desc = orb.compute(gray, kp)
    if desc is None or not kp:
        return _EMPTY.xy, _EMPTY.desc
    return np.asarray(cv2.KeyPoint_convert(kp), np.float32).reshape(-1, 2), np.asarray(desc, np.uint8)


def extract(data: bytes | None, side: int = SIDE, n: int = FEATURES) -> Features:
    """Features (at most ``n``) of one encoded image decoded at ``side`` pixels on its long side,
    and of its mirror (none when it cannot be decoded)."""
    gray = _gray_small(data, side)
    if gray is None or min(gray.shape) < 16:
        return _EMPTY
    xy, desc = _detect(gray, n)
    xy_m, desc_m = _detect(np.ascontiguousarray(gray[:, ::-1]), n)
    return Features(xy, desc, xy_m, desc_m, *_thumb(gray))


def _thumb(gray: np.ndarray) -> tuple[np.ndarray, float]:
    import cv2

    f = THUMB / max(gray.shape)
    size = (max(1, round(gray.shape[1] * f)), max(1, round(gray.shape[0] * f)))
    return cv2.resize(gray, size, interpolation=cv2.INTER_AREA), f


FIELDS = [pa.field("n", pa.int32()), pa.field("xy", pa.binary()), pa.field("desc", pa.binary()),
          pa.field("xy_m", pa.binary()), pa.field("desc_m", pa.binary()), pa.field("thumb", pa.binary()),
          pa.field("thumb_w", pa.int32()), pa.field("scale", pa.float32())]


@dataclass(frozen=True)
class Extractor:
    """:func:`extract` over a batch of encoded images, as a table of ``FIELDS`` (what reader
    processes hand back: a few compact buffers, not Python objects); picklable with its settings."""

    side: int = SIDE
    n: int = FEATURES

    def __call__(self, blobs: Sequence[bytes | None]) -> pa.Table:
        return _table([extract(b, self.side, self.n) for b in blobs])


def _table(got: Sequence[Features]) -> pa.Table:
    return pa.table({"n": pa.array([f.n for f in got], pa.int32()),
                     "xy": [f.xy.tobytes() for f in got], "desc": [f.desc.tobytes() for f in got],
                     "xy_m": [f.xy_m.tobytes() for f in got], "desc_m": [f.desc_m.tobytes() for f in got],
                     "thumb": [f.thumb.tobytes() for f in got], "thumb_w": pa.array([f.thumb.shape[1] for f in got], pa.int32()),
                     "scale": pa.array([f.scale for f in got], pa.float32())},
                    schema=pa.schema(FIELDS))


def features_of(row: dict[str, Any]) -> Features:
    """A :class:`Features` from one row of ``FIELDS`` (as stored)."""
    def arr(key: str, dtype: type, width: int) -> np.ndarray:
        return np.frombuffer(row[key] or b"", dtype).reshape(-1, width)

    return Features(arr("xy", np.float32, 2), arr("desc", np.uint8, _DESC), arr("xy_m", np.float32, 2),
                    arr("desc_m", np.uint8, _DESC), arr("thumb", np.uint8, max(1, row.get("thumb_w") or 1)),
                    float(row.get("scale") or 0.0))


# --------------------------------------------------------------------------- matching
def _match_one(xa: np.ndarray, da: np.ndarray, xb: np.ndarray, db: np.ndarray) -> Match:
    import cv2
    import faiss

    if len(da) < 2 or len(db) < 2:
        return Match()
    index = faiss.IndexBinaryFlat(_DESC * 8)  # exact Hamming k-NN, ~10x faster than cv2's matcher from Python
    index.add(np.ascontiguousarray(db))
    dist, nearest = index.search(np.ascontiguousarray(da), 2)
    good = np.flatnonzero((nearest[:, 1] >= 0) & (dist[:, 0] < RATIO * dist[:, 1]))
    if len(good) < 4:
        return Match(matched=len(good))
    transform, mask = cv2.estimateAffinePartial2D(xa[good], xb[nearest[good, 0]], method=cv2.RANSAC,
                                                  ransacReprojThreshold=RANSAC_PX)
    if transform is None or mask is None:
        return Match(matched=len(good))
    scale = float(np.sqrt(abs(np.linalg.det(transform[:, :2]))))
    angle = float(np.degrees(np.arctan2(transform[1, 0], transform[0, 0])))
    inl = mask.ravel().astype(bool)
    pq, po = xa[good][inl], xb[nearest[good, 0]][inl]
    boxes = ((*pq.min(0), *pq.max(0)), (*po.min(0), *po.max(0))) if inl.any() else None
    return Match(int(mask.sum()), scale, angle, matched=len(good), transform=transform, _boxes=boxes,
                 _pts=(xa[good], xb[nearest[good, 0]]))


def _perspective(q: Features, m: Match, perspective: float, turn: float | None, stretch: float = STRETCH) -> Match | None:
    """A homography fitted (RANSAC, ``RANSAC_PX``) on the matches ``m`` was fitted on, as a
    :class:`Match` (scale and angle: its local similarity at the query's centre), or None where no
    copy can have it: an edge of the query's frame shrunk by more than ``perspective`` against the
    opposite one, the frame flipped or folded (a mirror is matched on its own), a local stretch over
    ``stretch``, or a scale or turn :func:`plausible` refuses."""
    import cv2

    pq, po = m._pts
    h, mask = cv2.findHomography(pq, po, cv2.RANSAC, RANSAC_PX)
    if h is None or mask is None or abs(h[2, 2]) < 1e-12:
        return None
    h = h / h[2, 2]
    w, ht = q.size
    if not w or not ht:
        return None
    corners = np.array([[0, 0, 1], [w, 0, 1], [w, ht, 1], [0, ht, 1]], np.float64) @ h.T
    if (corners[:, 2] <= 0.1).any():  # a corner at (or past) the horizon
        return None
    quad = corners[:, :2] / corners[:, 2:]
    edges = np.roll(quad, -1, axis=0) - quad
    turns = edges[:, 0] * np.roll(edges, -1, axis=0)[:, 1] - edges[:, 1] * np.roll(edges, -1, axis=0)[:, 0]
    if not (turns > 0).all():  # (image coordinates, y down: a frame keeps its corners' order, convex)
        return None
    length = np.hypot(edges[:, 0], edges[:, 1])
    if min(min(length[0], length[2]) / max(length[0], length[2]), min(length[1], length[3]) / max(length[1], length[3])) \
            < 1.0 - perspective:
        return None
    cx, cy = w / 2, ht / 2  # the homography's Jacobian at the centre: its local linear map
    d = h[2, 0] * cx + h[2, 1] * cy + 1.0
    u, v = (h[0, 0] * cx + h[0, 1] * cy + h[0, 2]) / d, (h[1, 0] * cx + h[1, 1] * cy + h[1, 2]) / d
    jac = np.array([[h[0, 0] - u * h[2, 0], h[0, 1] - u * h[2, 1]], [h[1, 0] - v * h[2, 0], h[1, 1] - v * h[2, 1]]]) / d
    sv = np.linalg.svd(jac, compute_uv=False)
    if not sv[1] > 0 or sv[0] / sv[1] > stretch:
        return None
    inl = mask.ravel().astype(bool)
    a, b = pq[inl], po[inl]
    out = Match(int(inl.sum()), float(np.sqrt(abs(np.linalg.det(jac)))),
                float(np.degrees(np.arctan2(jac[1, 0] - jac[0, 1], jac[0, 0] + jac[1, 1]))), m.mirrored, m.matched,
                transform=h, kind="perspective",
                _boxes=((*a.min(0), *a.max(0)), (*b.min(0), *b.max(0))) if inl.any() else None)
    return out if plausible(out, turn) else None


def _share(box: Any, f: Features, mirrored: bool) -> tuple[float, float, float, float] | None:
    """A box in keypoint pixels of ``f`` (of its mirror when ``mirrored``) as shares of its size, unmirrored."""
    w, h = f.size
    if box is None or not w or not h:
        return None
    x0, y0, x1, y1 = (float(v) for v in box)
    if mirrored:  # the mirror's column x is the image's w - 1 - x
        x0, x1 = w - 1 - x1, w - 1 - x0
    return (min(max(x0 / w, 0.0), 1.0), min(max(y0 / h, 0.0), 1.0), min(max(x1 / w, 0.0), 1.0), min(max(y1 / h, 0.0), 1.0))


def overlap(p: Sequence[float] | None, q: Sequence[float] | None) -> float:
    """How much two boxes (x0, y0, x1, y1) overlap: the intersection's area over the smaller box's
    (1.0: one holds the other; 0.0: disjoint; nan: a box is unknown)."""
    if p is None or q is None:
        return float("nan")
    w = min(p[2], q[2]) - max(p[0], q[0])
    h = min(p[3], q[3]) - max(p[1], q[1])
    small = min((p[2] - p[0]) * (p[3] - p[1]), (q[2] - q[0]) * (q[3] - q[1]))
    return max(w, 0.0) * max(h, 0.0) / small if small > 0 else float("nan")


def plausible(m: Match, turn: float | None = None) -> bool:
    """A transform a copy can have: scale within ``SCALES``, a quarter turn give or take ``turn``
    degrees (default ``TURN_TOLERANCE``; dedup passes the one its verify groups record)."""
    off = abs(((m.angle + 45.0) % 90.0) - 45.0)
    return SCALES[0] <= m.scale <= SCALES[1] and off <= (TURN_TOLERANCE if turn is None else turn)


def match(a: Features, b: Features, enough: int | None = None, turn: float | None = None,
          perspective: float | None = PERSPECTIVE, stretch: float = STRETCH) -> Match:
    """The best plausible match of ``a`` onto ``b`` and onto ``b``'s mirror, then of ``b`` onto
    ``a`` and its mirror (the ratio test is not symmetric: a framed or heavily cropped copy often
    matches better one way); inliers 0: none. Stops at the first with >= ``enough`` inliers.
    ``turn``: :func:`plausible`'s. Where a similarity's pixels disagree, a homography of at most
    ``perspective`` (:func:`_perspective`; None: never) is checked too: a copy shot at an angle."""
    best, most = Match(), 0
    for k, (mirrored, q, o, (xb, db)) in enumerate(((False, a, b, (b.xy, b.desc)), (True, a, b, (b.xy_m, b.desc_m)),
                                                    (False, b, a, (a.xy, a.desc)), (True, b, a, (a.xy_m, a.desc_m)))):
        if k == 2 and most < FEW_MATCHES:  # neither way round is close: no copy hides in the other direction
            break
        m = _match_one(q.xy, q.desc, xb, db)
        m.mirrored = mirrored
        most = max(most, m.matched)
        if plausible(m, turn) and m.inliers >= (enough or MIN_INLIERS) // 2:
            m.agree = agreement(q, o, m)
            if perspective is not None and m.agree < MIN_AGREE:  # (nan: too small an overlap to tell, as before)
                h = _perspective(q, m, perspective, turn, stretch)
                if h is not None and h.inliers >= (enough or MIN_INLIERS) // 2:
                    h.agree = agreement(q, o, h)
                    if h.agree >= MIN_AGREE:
                        m = h
        m._pts = None
        if m._boxes is not None:  # the boxes as shares of a's and b's own frames
            own, other = _share(m._boxes[0], q, False), _share(m._boxes[1], o, mirrored)
            m.box_a, m.box_b = (own, other) if k < 2 else (other, own)
            m._boxes = None
        if plausible(m, turn) and (m.agree >= MIN_AGREE, m.inliers) > (best.agree >= MIN_AGREE, best.inliers):
            best = m  # a match whose pixels agree first, then the most inliers
        if enough is not None and best.inliers >= enough and best.agree >= MIN_AGREE:
            break
    return best


def agreement(q: Features, o: Features, m: Match) -> float:
    """How well the pixels agree where the two images overlap under ``m``'s transform: the share
    of ``q``'s thumbnail pixels that ``o``'s (mirrored when ``m`` is), mapped onto it, matches up to
    brightness and contrast. A copy agrees almost everywhere (an overlay: except under it); two
    photos that share only a logo, a caption banner or a page template agree on that patch alone."""
    import cv2

    if m.transform is None or not q.thumb.size or not o.thumb.size or not q.scale or not o.scale:
        return float("nan")
    other = o.thumb[:, ::-1] if m.mirrored else o.thumb
    t = np.asarray(m.transform, np.float64)
    t = t if len(t) == 3 else np.vstack([t, [0.0, 0.0, 1.0]])
    t = np.diag([o.scale, o.scale, 1.0]) @ t @ np.diag([1 / q.scale, 1 / q.scale, 1.0])  # keypoint -> thumbnail pixels, both sides
    h, w = q.thumb.shape
    warp = (lambda src, flags: cv2.warpAffine(src, t[:2], (w, h), flags=flags | cv2.WARP_INVERSE_MAP)) if m.kind != "perspective" \
        else (lambda src, flags: cv2.warpPerspective(src, t, (w, h), flags=flags | cv2.WARP_INVERSE_MAP))
    warped = warp(np.ascontiguousarray(other), cv2.INTER_LINEAR)
    inside = warp(np.full(other.shape, 255, np.uint8), cv2.INTER_NEAREST) > 0
    if inside.sum() < 0.05 * h * w or inside.sum() < 64:
        return float("nan")
    x, y = q.thumb[inside].astype(np.float32), warped[inside].astype(np.float32)
    # The other's gray levels as a linear function of this one's (brightness, contrast), fitted
    # twice: the second time without the pixels the first fit explains worst (an overlay, a
    # banner), then the share of pixels it explains within AGREE_LEVELS gray levels.
    keep = np.ones(len(x), bool)
    for _ in range(2):
        xs, ys = x[keep], y[keep]
        mx, my = float(xs.mean()), float(ys.mean())
        var = float(((xs - mx) ** 2).sum())
        gain = float(((xs - mx) * (ys - my)).sum()) / var if var > 0 else 1.0  # least squares, closed form
        if not GAINS[0] <= gain <= GAINS[1]:  # no copy flattens or inverts contrast: same levels, shifted
            gain, mx = 1.0, my - float(np.median(ys - xs))
        resid = np.abs(y - my - gain * (x - mx))
        keep = resid <= max(float(np.partition(resid, int(0.7 * (len(resid) - 1)))[int(0.7 * (len(resid) - 1))]), 1.0)
    return float(np.mean(resid <= AGREE_LEVELS))


def accepted(m: Match, min_inliers: int = MIN_INLIERS, turn: float | None = None) -> bool:
    return m.inliers >= min_inliers and plausible(m, turn) and m.agree >= MIN_AGREE


def match_pairs(features: dict[int, Features], i: np.ndarray, j: np.ndarray, *, enough: int | None = None,
                turn: float | None = None, perspective: float | None = PERSPECTIVE, stretch: float = STRETCH,
                threads: int | None = None,
                progress: bool | None = None) -> list[Match]:
    """:func:`match` for every pair (i[k], j[k]) of rows in ``features``, on ``threads`` threads
    (OpenCV's matcher and RANSAC release the GIL)."""
    from lakecurate.progress import progress_bar
    from lakecurate.runner import default_workers

    threads = threads or default_workers(all_cores=True)
    bar = progress_bar(total=len(i), desc="verify pairs", unit="pair", progress=progress)
    chunk = 256

    def part(s: int) -> list[Match]:
        import faiss

        before = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)  # this thread's searches: the pool already uses every core
        try:
            out = [match(features[int(a)], features[int(b)], enough, turn, perspective, stretch)
                   for a, b in zip(i[s:s + chunk], j[s:s + chunk])]
        finally:
            faiss.omp_set_num_threads(before)
        bar.update(len(out))
        return out

    try:
        if threads <= 1 or len(i) <= chunk:
            return [m for s in range(0, len(i), chunk) for m in part(s)]
        with ThreadPoolExecutor(threads, thread_name_prefix="verify") as pool:
            return [m for ms in pool.map(part, range(0, len(i), chunk)) for m in ms]
    finally:
        bar.close()


# --------------------------------------------------------------------------- the keypoint cache
def config_hash(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]


def _decoded(state: Any, rows: Any) -> pa.Table:
    return rows.images


def keypoint_stage(side: int = SIDE, n: int = FEATURES) -> RowStage:
    config = {**CONFIG, "n": n, "side": side}
    return RowStage("verify-keypoints", FIELDS, config, ["image"], batch=_decoded, image=Extractor(side, n),
                    batch_size=128, readers_do_all=True, desc="keypoints", unit="img")


@dataclass
class CacheReport:
    needed: int = 0    # rows in a candidate pair
    cached: int = 0    # of those, found in the cache
    computed: int = 0  # of those, computed now
    seconds: float = 0.0


class KeypointCache:
    """Features by row, kept in the lake's ``dup_keypoints`` table (id, content hash, config;
    shared by branches: a row's image never changes). Appends are atomic commits, one per few
    hundred images, so a killed run keeps what it computed and the next one goes on from there.
    Its index (key -> row) is kept between loads and read again only for the table's new
    fragments (dedup loads a chunk of pairs at a time, and reading the whole index for each took
    0.82 s a chunk at 1M cached rows, against 0.0045 s: scripts/bench_verify_chunks.py)."""

    def __init__(self, lake: "Store", side: int = SIDE, n: int = FEATURES):
        self.lake = lake
        self.stage = keypoint_stage(side, n)
        self.config = config_hash(self.stage.config)
        self._keys: dict[tuple[str, str], int] = {}
        self._fragments: set[int] = set()  # the table's fragments the index has read
        self.index_reads = 0  # fragments read into the index, all loads together

    @staticmethod
    def _usable(ds: Any) -> bool:
        """False when the table was written by another version of this module (other fields): a
        cache, so it is then replaced rather than read."""
        return ds is not None and {"id", "content_hash", "config", *(f.name for f in FIELDS)} <= set(ds.schema.names)

    def _index(self, ds: Any) -> dict[tuple[str, str], int]:
        """(row id, content hash) -> the cache's row: the index so far, with the fragments added
        since the last load; read whole again when a fragment it read is gone (the table was
        replaced or compacted)."""
        frags = ds.get_fragments() if self._usable(ds) else []
        if not self._fragments <= {f.fragment_id for f in frags}:  # replaced, compacted, or not usable
            self._keys, self._fragments = {}, set()
        new = [f for f in frags if f.fragment_id not in self._fragments]
        if new:
            t = ds.scanner(columns=["id", "content_hash"], filter=f"config = '{self.config}'", with_row_id=True,
                           fragments=new).to_table()
            self._keys.update(zip(zip(t.column("id").to_pylist(), t.column("content_hash").to_pylist()),
                                  t.column("_rowid").to_pylist()))
            self._fragments |= {f.fragment_id for f in new}
            self.index_reads += len(new)
        return self._keys

    def load(self, ids: Sequence[str], hashes: Sequence[str | None], addresses: Sequence[int], *,
             workers: int | None = None, progress: bool | None = None, commit_every: int = 2048
             ) -> tuple[list[Features], CacheReport]:
        """Features of these rows (row ids, their ``content_hash`` and row addresses in the lake),
        from the cache where it has them; the rest are computed (runner reader processes) and added."""
        import time

        t0 = time.perf_counter()
        rep = CacheReport(needed=len(ids))
        ds = self.lake.side_dataset(CACHE_TABLE, per_branch=False)  # opened once: this load's view of the cache
        keys = [(i, h or "") for i, h in zip(ids, hashes)]
        out: list[Features | None] = [None] * len(ids)
        damaged = False
        try:
            index = self._index(ds)
            have = [index.get(k) for k in keys]
            hit = [k for k, r in enumerate(have) if r is not None]
            if hit:
                got = ds._take_rows([have[k] for k in hit], columns=["id", "content_hash", *(f.name for f in FIELDS)]).to_pylist()
                for k, row in zip(hit, got):
                    if (row["id"], row["content_hash"]) == keys[k]:  # the index kept between loads still points right
                        out[k] = features_of(row)
        except (OSError, ValueError, pa.ArrowException):  # damaged files: a cache, so it is made again
            self._keys, self._fragments, damaged = {}, set(), True
            out = [None] * len(ids)
        todo = [k for k, f in enumerate(out) if f is None]
        rep.cached = len(ids) - len(todo)
        if todo:
            pending: list[pa.Table] = []
            rows_seen = 0
            replace = [ds is not None and (damaged or not self._usable(ds))]

            def flush() -> None:
                if pending:
                    self.lake.write_side(CACHE_TABLE, pa.concat_tables(pending), per_branch=False,
                                         mode="overwrite" if replace[0] else "append")
                    replace[0] = False
                    pending.clear()

            for rows in map_images(self.lake, self.stage, [addresses[k] for k in todo], workers=workers,
                                   progress=progress):
                batch = todo[rows_seen:rows_seen + rows.num_rows]
                rows_seen += rows.num_rows
                tbl: pa.Table = rows.images
                for k, row in zip(batch, tbl.to_pylist()):
                    out[k] = features_of(row)
                pending.append(pa.table({"id": [ids[k] for k in batch], "content_hash": [keys[k][1] for k in batch],
                                         "config": pa.array([self.config] * len(batch), pa.string()),
                                         **{f.name: tbl.column(f.name) for f in FIELDS}}))
                if sum(t.num_rows for t in pending) >= commit_every:
                    flush()
            flush()
            rep.computed = len(todo)
        rep.seconds = time.perf_counter() - t0
        return [f if f is not None else _EMPTY for f in out], rep

