"""ARCHITECTURE.md's "Write a new stage": its stage file, extracted from the markdown, runs on a lake
ingested from sample_data that has image signals too (the example once wrote img_brightness, which
signals writes: refused on any lake with signals) and fills its column."""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from lakecurate import Lake, columns, runner
from lakecurate.errors import LakeError
from lakecurate.runner import Rows, RowStage

from .conftest import REPO, SAMPLE_DATA


def stage_file() -> str:
    doc = (REPO / "lakecurate" / "ARCHITECTURE.md").read_text()
    section = doc[doc.index("## Write a new stage"):]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


def test_the_documented_stage_runs_on_sample_data(tmp_path: Path, monkeypatch):
    (tmp_path / "doc_brightness.py").write_text(stage_file())
    monkeypatch.syspath_prepend(str(tmp_path))  # the readers (spawned) import it by this name too
    mod = importlib.import_module("doc_brightness")
    try:
        assert mod.batch(None, Rows(pa.record_batch({}), images=[0.5, None])).column(0).to_pylist() == [0.5, None]
        lake = Lake.create(tmp_path / "lake")
        lake.ingest(SAMPLE_DATA, progress=False)
        lake.signals(["image"], progress=False)
        assert not set(mod.STAGE.names) & set(lake.dataset().schema.names)  # no column another stage writes
        assert mod.compute_brightness(lake, progress=False) == 28
        df = lake.to_pandas(["key", "img_mean_gray"]).set_index("key")["img_mean_gray"]
        assert df.notna().sum() >= 25 and df.isna().sum() >= 1  # a truncated or non-image file: no value
        assert df[["gravel_truncated.jpg", "notes_not_an_image.jpg"]].isna().all()
        with Image.open(SAMPLE_DATA / "coffee.jpg") as im:
            want = np.asarray(im.convert("RGB").convert("L").reduce(4)).mean() / 255
        assert abs(df["coffee.jpg"] - want) < 1e-3 and df["camera_bright.jpg"] > df["camera.jpg"]
        prov = columns.field_provenance(lake.dataset().schema.field("img_mean_gray"))
        assert prov["stage"] == "brightness" and prov["source_columns"] == ["image"]
        v = lake.version
        assert mod.compute_brightness(lake, progress=False) == 0 and lake.version == v  # a re-run does nothing
        # a stage run from Python that names a signals column is refused, and told to pick another
        # column name: it has no --name (embed's and recaption's CLI do)
        clash = RowStage(name="mine", fields=[pa.field("img_brightness", pa.float32())], config={}, inputs=["image"],
                         image=mod.brightness, batch=mod.batch)
        with pytest.raises(LakeError, match="belongs to signals-image") as err:
            runner.run(lake, clash, progress=False)
        assert "pick another column name" in str(err.value) and "--name" not in str(err.value)
    finally:
        sys.modules.pop("doc_brightness", None)
