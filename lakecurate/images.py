"""Image decoding shared by every stage that looks at pixels (ground floor: Pillow and numpy only).

Decode workers import this module, not torch or open_clip, so they start in about a second.
"""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

MAX_DECODE_PIXELS = 89_478_485  # Pillow's own bomb limit: larger images are not decoded here


def open_header(data: bytes) -> Any:
    """Pillow's lazy open of ``data`` (the header only: nothing decoded yet), without Pillow's
    DecompressionBombWarning, two raw lines on stderr: whoever decodes checks :func:`too_large`
    first and says it in its own words. Pillow's error past twice its limit is raised."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(io.BytesIO(data))


def too_large(im: Any) -> bool:
    """Whether an opened image has more than MAX_DECODE_PIXELS pixels: no stage decodes it (a
    decompression bomb ingest took under a raised --max-pixels, say: the report decoded one of
    144 MP for its thumbnail, 1.1 GB, and the signals took it as a sound image)."""
    return im.width * im.height > MAX_DECODE_PIXELS


def orientation_of(im: Any) -> int:
    """The EXIF orientation tag of ``im`` (1 = upright, 6 = turned 90 degrees clockwise to view,
    ...); 1 when absent or unreadable (a malformed EXIF block: the pixels are still usable as
    stored). An error decoding the pixels is raised: Pillow loads a PNG's pixels to look for its
    EXIF, and a corrupt PNG's error swallowed here left half-decoded pixels, which a later load()
    (the tile spent) took without a word, embedded as a sound image."""
    tile = getattr(im, "tile", None)
    try:
        value = im.getexif().get(0x0112, 1)
    except Exception:
        if tile and not getattr(im, "tile", None):  # it failed loading the pixels, not reading EXIF
            raise
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def exif_upright(im: Any) -> Any:
    """``im`` turned as its EXIF orientation tag says (a phone photo taken sideways stands up), as a
    viewer shows it; unchanged without a tag. Works on a ``draft()``-reduced JPEG too. A corrupt
    image's decode error is raised (:func:`orientation_of`)."""
    from PIL import ImageOps

    if orientation_of(im) == 1:
        return im
    try:
        return ImageOps.exif_transpose(im)
    except Exception:
        return im


def eight_bit(im: Any) -> Any:
    """``im`` with 8-bit samples: a 16-bit (``I;16``, or ``I`` from a 16-bit PNG) or float image as
    ``L`` on its own scale (values above 255 read as 16-bit: divided by 257). Pillow's own convert
    clips them at 255, so a 16-bit gray photo read as a white frame (brightness 0.999, contrast
    0.014, against 0.461 and 0.257 at 8 bits). Other modes unchanged."""
    from PIL import Image

    if im.mode not in ("I;16", "I;16B", "I;16L", "I", "F"):
        return im
    arr = np.asarray(im, dtype=np.float32)
    if arr.size and float(np.nanmax(arr)) > 255:
        arr = arr / 257.0
    return Image.fromarray(np.clip(np.nan_to_num(arr), 0, 255).round().astype(np.uint8), "L")


class RefusedImage(bytes):
    """What the image stages are given for a row ingest refused (``ingest_status`` 'error'), in
    place of its bytes: empty, so nothing decodes it (a decompression bomb under the user's
    --max-pixels was decoded by every image stage), and told apart so a stage can say why
    (``flag``: ingest's first flag for it)."""

    flag = "error"

    @classmethod
    def of(cls, flags: list[str] | None) -> "RefusedImage":
        out = cls()
        out.flag = (flags or ["error"])[0]
        return out


def decode_image(data: bytes | None) -> tuple[Any, str | None]:
    """Bytes -> RGB PIL image, or (None, reason). Animated: first frame; CMYK/16-bit/palette: converted."""
    from PIL import Image

    if isinstance(data, RefusedImage):
        return None, f"image_refused_at_ingest: {data.flag}"
    if data is None:
        return None, "image_missing"
    try:
        im = open_header(data)
        if too_large(im):
            return None, f"image_too_large: {im.width}x{im.height}"
        im = exif_upright(im)  # as the photo is seen: a sideways phone picture is embedded upright
        if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            arr = np.asarray(im, dtype=np.float32)
            span = float(arr.max() - arr.min()) or 1.0
            im = Image.fromarray(((arr - arr.min()) * (255.0 / span)).astype(np.uint8))
        im.load()  # a truncated or corrupt file fails here, with this function's message
        return (im if im.mode == "RGB" else im.convert("RGB")), None  # no copy of what is RGB already
    except Exception as exc:  # Pillow raises many types on bad data
        # Pillow names the buffer's memory address; drop it so the same bytes give the same message.
        return None, re.sub(r" ?<_io\.BytesIO object at 0x[0-9a-f]+>", "", f"image_undecodable: {type(exc).__name__}: {exc}")[:300]


@dataclass(frozen=True)
class ImageTransform:
    """Eval preprocessing in PIL + numpy: resize (shortest side, or squash), centre crop, scale,
    normalise -> float32 CHW. Equal to open_clip's/torchvision's eval transform for these modes
    (tested), but picklable without importing torch, so decode workers start in about a second."""

    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"
    uint8: bool = False  # stop before scaling: uint8 CHW (a quarter of the bytes); the model normalises

    def as_uint8(self) -> "ImageTransform":
        """This transform, giving the cropped uint8 pixels: :meth:`normalize` (or the model, on
        its device) then gives exactly what this transform gives."""
        return replace(self, uint8=True)

    def normalize(self, arr: Any) -> Any:
        """uint8 CHW pixels -> the float32 values of this transform (batched or not)."""
        arr = arr.astype(np.float32)
        arr /= np.float32(255.0)
        arr -= np.asarray(self.mean, np.float32)[:, None, None]
        arr /= np.asarray(self.std, np.float32)[:, None, None]
        return arr

    def __call__(self, im: Any) -> Any:
        import numpy as np
        from PIL import Image

        resample = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}[self.interpolation]
        if im.mode != "RGB":
            im = im.convert("RGB")
        w, h = im.size
        if self.resize_mode == "squash":
            im = im.resize((self.size, self.size), resample)
        else:  # shortest side to `size`, as torchvision.transforms.Resize(int)
            if w <= h:
                nw, nh = self.size, int(self.size * h / w)
            else:
                nw, nh = int(self.size * w / h), self.size
            if (nw, nh) != (w, h):
                im = im.resize((nw, nh), resample)
            top = int(round((nh - self.size) / 2.0))
            left = int(round((nw - self.size) / 2.0))
            im = im.crop((left, top, left + self.size, top + self.size))
        # CHW first, on the bytes (a quarter of the floats' size), then the same float32 operations
        # in place: the values are bit-identical to scaling, normalising and then transposing.
        arr = np.ascontiguousarray(np.asarray(im).transpose(2, 0, 1))
        return arr if self.uint8 else self.normalize(arr)


def thumbnail_jpeg(data: bytes | None, px: int = 112, quality: int = 72, oversample: int = 2) -> bytes | None:
    """JPEG bytes of the image at most ``px`` on its long side (upright, RGB), or None where the
    bytes do not decode: a thumbnail is best effort, a broken image shows as a placeholder. A JPEG is
    decoded at a reduced scale no smaller than ``oversample`` x ``px`` (1: fastest, for a browser grid).

    >>> from PIL import Image; buf = io.BytesIO(); Image.new("RGB", (640, 320), "red").save(buf, "PNG")
    >>> Image.open(io.BytesIO(thumbnail_jpeg(buf.getvalue(), 64))).size, thumbnail_jpeg(b"not an image")
    ((64, 32), None)
    """
    if not data:
        return None
    from PIL import ImageOps

    try:
        with open_header(data) as im:  # (the header only: the size picks OpenCV's scale)
            if too_large(im):
                return None
            side = max(im.size)
    except Exception:
        return None
    if data[:3] == b"\xff\xd8\xff":
        jpeg = _thumbnail_cv2(data, side, px * oversample, px, quality)
        if jpeg is not None:
            return jpeg
    try:
        with open_header(data) as im:
            im.draft("RGB", (px * oversample, px * oversample))  # JPEG: decode at a reduced scale
            im = ImageOps.exif_transpose(im)
            if im.mode in ("I;16", "I", "F"):
                im = ImageOps.autocontrast(im.convert("F").convert("L"))
            im = im.convert("RGB")
            im.thumbnail((px, px))
            buf = io.BytesIO()
            im.save(buf, "JPEG", quality=quality)
    except Exception:
        return None
    return buf.getvalue()


def _thumbnail_cv2(data: bytes, side: int, least: int, px: int, quality: int) -> bytes | None:
    """A JPEG's thumbnail through OpenCV (libjpeg's DCT scaling to 1/2, 1/4, 1/8 while decoding,
    EXIF orientation applied, the GIL released throughout): ~3x Pillow on small photos. ``side``:
    its long side (from the header). None when OpenCV cannot read it (Pillow then tries)."""
    import cv2

    try:
        scale = next((f for f in (8, 4, 2) if side / f >= least), 1)
        flag = {8: cv2.IMREAD_REDUCED_COLOR_8, 4: cv2.IMREAD_REDUCED_COLOR_4, 2: cv2.IMREAD_REDUCED_COLOR_2,
                1: cv2.IMREAD_COLOR}[scale]
        a = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
        if a is None:
            return None
        h, w = a.shape[:2]
        r = px / max(h, w)
        if r < 1:
            a = cv2.resize(a, (max(1, round(w * r)), max(1, round(h * r))), interpolation=cv2.INTER_AREA)
        ok, out = cv2.imencode(".jpg", a, [cv2.IMWRITE_JPEG_QUALITY, quality])
        return out.tobytes() if ok else None
    except Exception:
        return None


def decode_small(data: bytes | None, side: int, mode: str = "RGB") -> tuple[Any, float] | None:
    """(the upright image at most ``side`` pixels on its long side, full-size pixels per pixel of
    it), or None when undecodable. JPEGs decode at a reduced scale (``draft``): a fraction of the
    work of a full decode. Boxes found on it map back to the upright full image by the factor."""

    if data is None:
        return None
    try:
        im = open_header(data)
        if too_large(im):
            return None
        try:
            turned = im.getexif().get(0x0112, 1) in (5, 6, 7, 8)
        except Exception:
            turned = False
        full_w = im.height if turned else im.width
        im.draft(mode, (side, side))
        im = exif_upright(im).convert(mode)
        im.thumbnail((side, side))
        return im, full_w / im.width
    except Exception:  # undecodable: ingest flagged it already
        return None


BLUR_MARGIN = 0.15  # each side of a box grows by this share of its size before blurring (hair, ears)


def blur_region(box: tuple[int, int, int, int], width: int, height: int, margin: float = BLUR_MARGIN) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) blurred for an (x, y, w, h) box: grown by ``margin``, clipped to the image."""
    x, y, w, h = box
    dx, dy = round(w * margin), round(h * margin)
    return max(0, x - dx), max(0, y - dy), min(width, x + w + dx), min(height, y + h + dy)


def blur_boxes(data: bytes, boxes: list[tuple[int, int, int, int]], margin: float = BLUR_MARGIN) -> tuple[bytes, str]:
    """The image (upright) with each (x, y, w, h) box blurred beyond recognition, encoded again:
    (bytes, format). JPEG stays JPEG (quality 95: outside the boxes only re-encoding noise), other
    formats become PNG (lossless). The stored image is never modified; this is for export."""
    from PIL import Image, ImageFilter

    im, reason = decode_image(data)
    if im is None:
        raise ValueError(reason)
    fmt = (Image.open(io.BytesIO(data)).format or "").upper()
    for box in boxes:
        left, top, right, bottom = blur_region(tuple(int(v) for v in box), im.width, im.height, margin)
        if right <= left or bottom <= top:
            continue
        region = im.crop((left, top, right, bottom))
        # shrink to a few pixels and back, then smooth: no feature of the face survives
        small = region.resize((max(1, (right - left) // 12), max(1, (bottom - top) // 12)), Image.BILINEAR)
        region = small.resize(region.size, Image.BILINEAR).filter(ImageFilter.GaussianBlur(max(2, (right - left) // 20)))
        im.paste(region, (left, top))
    out = io.BytesIO()
    if fmt in ("JPEG", "MPO"):
        im.save(out, "JPEG", quality=95)
        return out.getvalue(), "JPEG"
    im.save(out, "PNG")
    return out.getvalue(), "PNG"


class Preprocess:
    """Decode and preprocess a batch's images (run in the reader processes, which import only
    lance, Pillow and numpy): {"pixels": the transform's CHW arrays (float32, or uint8 from
    :meth:`ImageTransform.as_uint8`) of the good images, stacked, or None,
    "image_errors": one reason or None per row}. The image side of every model stage."""

    def __init__(self, transform: Any):
        self.transform = transform

    def __call__(self, blobs: list) -> dict[str, Any]:
        pixels, errors = [], []
        for data in blobs:
            px, err = self.pixels_of(data)
            if px is not None:
                pixels.append(px)
            errors.append(err)
        return {"pixels": np.stack(pixels) if pixels else None, "image_errors": errors}

    def pixels_of(self, data: bytes | None) -> tuple[Any, str | None]:
        """One image's transformed pixels, or (None, the reason it has none)."""
        im, err = decode_image(data)
        if im is None:
            return None, err
        try:
            return self.transform(im), None
        except Exception as exc:  # a transform failing on an odd image is that row's problem only
            return None, f"image_undecodable: {type(exc).__name__}: {exc}"[:300]


def device_decodable(data: bytes | None) -> bool:
    """Whether the model's device may decode ``data`` in place of :func:`decode_image` (nvJPEG
    through torchvision on a GPU): a JPEG whole to its end-of-image marker (a truncated file fails
    here as Pillow fails it), RGB or grey, upright (no EXIF turn), within the pixel limit. Anything
    else (PNG, WebP, CMYK, a sideways phone photo, a bomb, bad bytes) is decoded by the readers as
    before. Reads the header only (~0.1 ms against ~5 ms to decode and resize a 500 px photo)."""
    return _jpeg_pixels(data) > 0


def _jpeg_pixels(data: bytes | None) -> int:
    """The pixel count of a JPEG :func:`device_decodable` passes, else 0."""

    if not data or data[:3] != b"\xff\xd8\xff":
        return 0
    if not data.endswith(b"\xff\xd9") and not data.rstrip(b"\0").endswith(b"\xff\xd9"):  # (padded: rarely)
        return 0
    try:
        im = open_header(data)
        n = im.width * im.height
        if im.format != "JPEG" or im.mode not in ("RGB", "L") or not 0 < n <= MAX_DECODE_PIXELS:
            return 0
        return n if im.getexif().get(0x0112, 1) in (None, 1) else 0
    except Exception:  # a header Pillow cannot read: the readers' decode gives the reason
        return 0


class DevicePreprocess(Preprocess):
    """:class:`Preprocess` for ``decode="device"``: what :func:`device_decodable` passes travels as
    its JPEG bytes ("jpegs", uint8 arrays; the model's device decodes, resizes and crops them:
    ``Encoder.launch_images``), the rest is decoded here into uint8 "pixels" as before;
    "from_jpeg": one flag per good row, in row order (True: its pixels come from "jpegs");
    "jpeg_pixels": each JPEG's pixel count (the device decodes a bounded number at once)."""

    def __call__(self, blobs: list) -> dict[str, Any]:
        pixels, jpegs, sizes, from_jpeg, errors = [], [], [], [], []
        for data in blobs:
            err = None
            if n := _jpeg_pixels(data):
                jpegs.append(np.frombuffer(data, np.uint8))  # unpickled writable: torch takes it without a copy
                sizes.append(n)
                from_jpeg.append(True)
            else:
                px, err = self.pixels_of(data)
                if px is not None:
                    pixels.append(px)
                    from_jpeg.append(False)
            errors.append(err)
        return {"pixels": np.stack(pixels) if pixels else None, "jpegs": jpegs, "jpeg_pixels": sizes,
                "from_jpeg": np.asarray(from_jpeg, bool), "image_errors": errors}

