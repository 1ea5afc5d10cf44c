"""Build sample_data/: a few dozen redistributable image-text pairs with planted defects.

Photos come from scikit-image's bundled data (CC0 or public domain, see sample_data/README.md).
Run once; the output is committed. Needs: pip install scikit-image pillow numpy

    python scripts/make_sample_data.py sample_data
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

# name in skimage.data -> caption (written by hand for this set)
PHOTOS = {
    "astronaut": "a smiling astronaut in an orange flight suit in front of an american flag",
    "camera": "a black and white photo of a man with a camera on a tripod in a field",
    "chelsea": "a tabby cat looking to the side",
    "coffee": "a cup of coffee on a saucer with a spoon on a red table",
    "coins": "many old coins laid out on a dark background",
    "horse": "a black silhouette of a horse on a white background",
    "hubble_deep_field": "a deep field image of many galaxies in space",
    "rocket": "a rocket on a launch pad under a blue sky",
    "retina": "a medical photograph of the retina of an eye",
    "brick": "a close up of a grey brick wall",
    "grass": "a close up of green grass blades",
    "gravel": "a close up of grey gravel stones",
    "clock": "a blurry photo of a wall clock",
    "text": "a street corner sign with text",
}
MAX_SIDE = 320


def load(name: str) -> Image.Image:
    import skimage.data

    arr = getattr(skimage.data, name)()
    if arr.dtype == bool:
        arr = (~arr).astype(np.uint8) * 255
    im = Image.fromarray(arr).convert("RGB")
    im.thumbnail((MAX_SIDE, MAX_SIDE))
    return im


def jpeg(im: Image.Image, quality: int = 85) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for old in out.iterdir():
        if old.name != "README.md":
            old.unlink()

    def pair(stem: str, data: bytes, caption: str | None, ext: str = "jpg") -> None:
        (out / f"{stem}.{ext}").write_bytes(data)
        if caption is not None:
            (out / f"{stem}.txt").write_text(caption + "\n", encoding="utf-8")

    photos = {name: load(name) for name in PHOTOS}
    originals = {name: jpeg(im) for name, im in photos.items()}
    for name, data in originals.items():
        pair(name, data, PHOTOS[name])

    # Planted defects -------------------------------------------------------------------------
    # exact copy: same bytes, same caption, another name
    pair("chelsea_copy", originals["chelsea"], PHOTOS["chelsea"])
    # near-copies: re-encoded, resized, cropped, flipped, brightened
    pair("coffee_small_q40", jpeg(photos["coffee"].resize((160, 107)), 40), "coffee cup on a red table seen from above")
    pair("rocket_crop", jpeg(photos["rocket"].crop((12, 10, 308, 204))), "a rocket on the launch pad")
    pair("astronaut_flip", jpeg(ImageOps.mirror(photos["astronaut"])), "portrait of an astronaut with a flag behind her")
    pair("camera_bright", jpeg(ImageEnhance.Brightness(photos["camera"]).enhance(1.2)), PHOTOS["camera"])
    # mismatched caption: a cat photo described as a rocket launch
    pair("chelsea_mismatch", jpeg(photos["chelsea"].rotate(3)), "a rocket lifting off from the launch pad at night")
    # empty caption
    pair("brick_empty_caption", jpeg(photos["brick"].crop((0, 0, 200, 200))), "")
    # junk caption: a file name
    pair("grass_filename_caption", jpeg(photos["grass"].crop((40, 40, 300, 300))), "IMG_2041.JPG")
    # privacy: an e-mail address and a phone number in the caption
    pair("coins_privacy", jpeg(photos["coins"].crop((0, 0, 250, 200))),
         "coins for sale, write to jane.doe@example.com or call +1 555 0100 1234")
    # corrupt file: a JPEG cut in half
    pair("gravel_truncated", originals["gravel"][: len(originals["gravel"]) // 2], "grey gravel stones")
    # not an image at all, with a caption
    pair("notes_not_an_image", b"this is a text file, not an image\n", "a picture of nothing", ext="jpg")
    # image without a caption sidecar
    pair("horse_no_caption", jpeg(photos["horse"].resize((200, 164))), None)
    # a JSON sidecar (img2dataset style) instead of .txt
    (out / "retina_json.jpg").write_bytes(jpeg(photos["retina"].rotate(90)))
    (out / "retina_json.json").write_text(
        json.dumps({"caption": "a fundus photograph of an eye, rotated", "url": "https://example.org/retina.jpg"}),
        encoding="utf-8",
    )
    # a palette PNG with transparency (usable, flagged)
    logo = photos["hubble_deep_field"].resize((160, 160)).convert("P", palette=Image.ADAPTIVE, colors=32)
    buf = io.BytesIO()
    logo.save(buf, "PNG", transparency=0)
    pair("hubble_palette", buf.getvalue(), "a small palette image of galaxies in space", ext="png")

    n = len([p for p in out.iterdir() if p.suffix in (".jpg", ".png")])
    size = sum(p.stat().st_size for p in out.iterdir())
    print(f"wrote {n} images, {size / 1024:.0f} KiB in {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "sample_data"))
