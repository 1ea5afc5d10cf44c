"""How well the image-quality steps (blur, dark, low_contrast) catch blur and leave sharp photos
alone, on Flickr8k photos blurred, darkened and fogged with known truth.

For each seed, --n photos drawn at random; each is scored as it is (its own file: "clean") and
degraded at its original size, then saved as JPEG (quality 90): Gaussian blur of radius 1, 1.5, 2
and 3 px; motion blur (a line kernel of 7-15 px at a random angle); darkened (brightness times
0.3-0.5, or gamma 2-3); fogged (contrast 0.4-0.6, blended to mid grey). Prints, per kind, the
share each step drops at its default: ``before`` is the old blur signal (variance of the
4-neighbour Laplacian at 128 px short side, under 250), ``after`` the signals of
``lakecurate.signals.image_signals`` with the defaults in ``lakecurate.curate.FILTERS``; then the
clean photos' quantiles of each signal (how the defaults were chosen) and a sweep of min_sharpness.

    python scripts/eval_image_quality.py --n 300 --seeds 0 1 2 [--data ../shared/data/flickr8k]

``--timing 500``: only time ``image_signals`` on 500 photos' bytes in memory (best of 3), the
throughput of the pass that runs on every image; run it from two checkouts to compare.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from lakecurate.curate import FILTERS
from lakecurate.images import exif_upright
from lakecurate.signals import image_signals

KINDS = ("clean", "gauss1", "gauss1.5", "gauss2", "gauss3", "motion", "dark", "dark_gamma", "fog")
OLD_MIN_SHARPNESS = 250.0


def motion_blur(im: Image.Image, length: int, angle: float) -> Image.Image:
    """A line kernel ``length`` px long at ``angle`` degrees (camera shake / a moving subject)."""
    import cv2

    k = np.zeros((length, length), np.float32)
    k[length // 2] = 1
    rot = cv2.getRotationMatrix2D(((length - 1) / 2, (length - 1) / 2), angle, 1)
    k = cv2.warpAffine(k, rot, (length, length))
    return Image.fromarray(cv2.filter2D(np.asarray(im), -1, k / k.sum(), borderType=cv2.BORDER_REFLECT))


def degrade(im: Image.Image, kind: str, rng: np.random.Generator) -> Image.Image:
    if kind.startswith("gauss"):
        return im.filter(ImageFilter.GaussianBlur(float(kind[5:])))
    if kind == "motion":
        return motion_blur(im, int(rng.integers(7, 16)), float(rng.uniform(0, 180)))
    if kind == "dark":
        return ImageEnhance.Brightness(im).enhance(rng.uniform(0.3, 0.5))
    if kind == "dark_gamma":
        gamma = rng.uniform(2, 3)
        return im.point([round(255 * (i / 255) ** gamma) for i in range(256)] * 3)
    if kind == "fog":
        return Image.blend(im, Image.new("RGB", im.size, (128, 128, 128)), 1 - rng.uniform(0.4, 0.6))
    raise ValueError(kind)


def old_sharpness(data: bytes) -> float:
    """The blur signal before: variance of the 4-neighbour Laplacian at 128 px short side."""
    with Image.open(io.BytesIO(data)) as im:
        im.draft("RGB", (128, 128))
        rgb = exif_upright(im).convert("RGB")
        w, h = rgb.size
        scale = 128 / min(w, h)
        if scale < 1:
            rgb = rgb.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BOX)
        g = np.asarray(rgb.convert("L"), np.float32)
    lap = g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:] - 4 * g[1:-1, 1:-1]
    return float(lap.var())


def jpeg(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def score(paths: list[Path], seed: int, n: int) -> dict[str, dict[str, np.ndarray]]:
    """kind -> signal -> values, for ``n`` photos drawn with ``seed``."""
    rng = np.random.default_rng(seed)
    blobs: dict[str, list[bytes]] = {k: [] for k in KINDS}
    for p in rng.choice(np.array(paths, object), n, replace=False):
        with Image.open(p) as im:
            rgb = exif_upright(im).convert("RGB")
        for kind in KINDS:
            blobs[kind].append(p.read_bytes() if kind == "clean" else jpeg(degrade(rgb, kind, rng)))
    out = {}
    for kind, bs in blobs.items():
        t = image_signals(bs)
        out[kind] = {c: t.column(c).to_numpy(zero_copy_only=False) for c in ("img_sharpness", "img_brightness", "img_contrast")}
        out[kind]["old"] = np.array([old_sharpness(b) for b in bs])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared/data/flickr8k")
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--timing", type=int, default=0, help="only time image_signals on this many photos")
    args = ap.parse_args()
    paths = sorted((args.data / "images").glob("*.jpg"))
    if args.timing:
        import time

        picked = np.random.default_rng(0).choice(np.array(paths, object), args.timing, replace=False)
        blobs = [p.read_bytes() for p in picked]
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            image_signals(blobs)
            best = min(best, time.perf_counter() - t0)
        print(f"image_signals: {len(blobs)} photos in {best:.2f} s, {len(blobs) / best:.0f} images/s (best of 3)")
        return
    runs = {s: score(paths, s, args.n) for s in args.seeds}
    sig = {k: {c: np.concatenate([runs[s][k][c] for s in args.seeds]) for c in runs[args.seeds[0]][k]} for k in KINDS}
    p = {name: FILTERS[name].params for name in ("blur", "dark", "low_contrast")}
    print(f"{args.n} Flickr8k photos per seed, seeds {args.seeds}; share dropped at the defaults "
          f"(before: blur min_sharpness {OLD_MIN_SHARPNESS:g} on the Laplacian variance; after: blur min_sharpness "
          f"{p['blur']['min_sharpness']:g}, dark min_brightness {p['dark']['min_brightness']:g}, low_contrast "
          f"min_contrast {p['low_contrast']['min_contrast']:g})\n")
    print(f"{'kind':11s} {'before blur':>11s} {'after blur':>10s} {'dark':>6s} {'low_contrast':>12s}   after blur per seed")
    for k in KINDS:
        v = sig[k]
        per_seed = " ".join(f"{(runs[s][k]['img_sharpness'] < p['blur']['min_sharpness']).mean():.3f}" for s in args.seeds)
        print(f"{k:11s} {(v['old'] < OLD_MIN_SHARPNESS).mean():11.3f} {(v['img_sharpness'] < p['blur']['min_sharpness']).mean():10.3f} "
              f"{(v['img_brightness'] < p['dark']['min_brightness']).mean():6.3f} "
              f"{(v['img_contrast'] < p['low_contrast']['min_contrast']).mean():12.3f}   {per_seed}")
    c = sig["clean"]
    q = [0.005, 0.01, 0.02, 0.05, 0.5]
    print("\nclean photos, quantiles " + " ".join(f"{x:g}" for x in q))
    for col in ("old", "img_sharpness", "img_brightness", "img_contrast"):
        print(f"  {col:15s} " + " ".join(f"{v:.3g}" for v in np.quantile(c[col], q)))
    print("\nmin_sharpness sweep (after): clean dropped / caught")
    for t in (1.0, 1.1, 1.2, 1.3, 1.4, 1.5):
        print(f"  {t:.1f}: " + " ".join(f"{k} {(sig[k]['img_sharpness'] < t).mean():.3f}" for k in KINDS))


if __name__ == "__main__":
    main()
