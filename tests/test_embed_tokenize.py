"""embed --tokenize readers: captions tokenized by the decode processes (a stage's ``prepare``), so
the process that feeds a GPU spends its time on the device alone; the tokens and columns are the
same as when the model's process tokenizes."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from lakecurate import Lake, LakeError, encoders, runner
from lakecurate.embed import TokenizeCaptions, embed_stage
from lakecurate.encoders import MAX_TEXT_CHARS, column_names, resolve
from lakecurate.runner import RowStage

from .conftest import SAMPLE_DATA, pair_rows
from .test_embed_decode import embed_option_is_checked

COLS = column_names("clip_tinyrandom")
CAPTIONS = [None, "", "a dog on a beach", "Ünïcödé café — naïve 🐕 &amp; <b>html</b>", "word " * 5000,
            "  spaces\tand\nlines  "]


def _numpy(tokens):
    if isinstance(tokens, dict):
        return {k: np.asarray(v) for k, v in tokens.items()}
    return np.asarray(tokens)


@pytest.mark.parametrize("arch", ["tiny-random", "offline"])
def test_the_readers_tokens_are_the_model_process_tokens(arch: str):
    spec = resolve(arch)
    prepare = pickle.loads(pickle.dumps(TokenizeCaptions(spec)))  # as a spawned reader gets it
    assert prepare.ready(timeout=120)  # built in a thread of the reader
    got = prepare(pa.record_batch({"caption": pa.array(CAPTIONS, pa.string())}))
    want = _numpy(spec.build_transforms()[1]([(c or "")[:MAX_TEXT_CHARS] for c in CAPTIONS]))
    if isinstance(want, dict):  # MiniLM: input ids and attention mask
        assert set(got) == set(want) and all(np.array_equal(got[k], want[k]) for k in want)
    else:  # open_clip: one row of context_length ids per caption
        assert isinstance(got, np.ndarray) and got.shape == (len(CAPTIONS), spec.build_transforms()[1].context_length)
        assert np.array_equal(got, want)
    assert len(pickle.dumps(prepare)) < 4096  # the tokenizer is built in the reader, not pickled with the stage


def test_tokens_from_the_readers_spare_the_model_process_and_give_the_same_table(monkeypatch):
    spec = resolve("tiny-random")
    reader = embed_stage(spec, device="cpu", tokenize="readers")
    enc = reader.setup()
    blobs = [(SAMPLE_DATA / n).read_bytes() for n in ("coffee.jpg", "astronaut.jpg")] + [None]
    cols = pa.record_batch({"caption": ["a cup", "a person in a white suit " * 500, None]})
    prepare = pickle.loads(pickle.dumps(reader.prepare))
    assert prepare.ready(timeout=120)
    with_tokens = runner.Rows(cols, reader.image(blobs), prepared=prepare(cols))
    seen = []  # captions the model's process tokenized
    real = encoders.CappedTokenizer.__call__

    def counting(self, texts, *a, **k):
        seen.append(len(texts))
        return real(self, texts, *a, **k)

    monkeypatch.setattr(encoders.CappedTokenizer, "__call__", counting)
    got = runner.result(reader.batch(enc, with_tokens))
    assert seen == []
    want = runner.result(reader.batch(enc, runner.Rows(cols, reader.image(blobs))))  # tokens not ready: here
    assert seen == [3] and got.equals(want)


def test_embed_tokenize_readers_gives_the_same_columns(tmp_path: Path):
    frames = {}
    for tokenize, workers in (("model", 0), ("readers", 1)):  # one spawned reader: the prepare is pickled
        lake = Lake.create(tmp_path / tokenize)
        lake.ingest(SAMPLE_DATA, progress=False)
        rep = lake.embed("tiny-random", workers=workers, batch_size=4, progress=False, tokenize=tokenize)
        assert rep.rows_embedded == lake.dataset().count_rows()
        frames[tokenize] = lake.to_pandas(["key", *COLS.values()]).sort_values("key").reset_index(drop=True)
    a, b = frames["model"], frames["readers"]
    assert a["key"].tolist() == b["key"].tolist()
    assert a[COLS["error"]].fillna("").tolist() == b[COLS["error"]].fillna("").tolist()
    ok = a[COLS["text"]].notna()
    assert ok.sum() >= 20 and (ok == b[COLS["text"]].notna()).all()
    assert np.array_equal(np.stack(a.loc[ok, COLS["text"]]), np.stack(b.loc[ok, COLS["text"]]))
    assert np.allclose(a[COLS["score"]].fillna(9), b[COLS["score"]].fillna(9), atol=1e-6)


class _Fails:
    """A prepare that fails on one caption (picklable: spawned readers import this module)."""

    def __call__(self, cols: pa.RecordBatch) -> list:
        if "bad" in cols.column("caption").to_pylist():
            raise ValueError("no tokens for 'bad'")
        return [len(c or "") for c in cols.column("caption").to_pylist()]


def _lengths(state, rows: runner.Rows) -> pa.Table:
    return pa.table({"clen": pa.array(rows.prepared, pa.int32())})


def _blob_count(blobs: list) -> int:
    return len(blobs)


@pytest.mark.parametrize("workers", [0, 1])
def test_a_stages_prepare_runs_where_rows_are_read_and_its_failure_names_the_rows(tmp_path: Path, workers: int):
    lake = Lake.create(tmp_path / "lake")
    lake.append(pair_rows(0, 6))
    # with an image() the readers are processes when workers > 0; prepare runs there, beside it
    stage = RowStage("clen", [pa.field("clen", pa.int32())], {"v": 1}, ["image", "caption"], batch=_lengths,
                     image=_blob_count, prepare=_Fails(), batch_size=4, desc="caption lengths")
    assert runner.run(lake, stage, workers=workers, progress=False).rows == 6
    tbl = lake.dataset().to_table(columns=["caption", "clen"])
    assert tbl.column("clen").to_pylist() == [len(c or "") for c in tbl.column("caption").to_pylist()]
    bad = pair_rows(6, 1)
    lake.append(bad.set_column(bad.schema.get_field_index("caption"), "caption", pa.array(["bad"])))
    with pytest.raises(LakeError, match=r"caption lengths fragment 1 rows 0-0: ValueError: no tokens for 'bad'"):
        runner.run(lake, stage, workers=workers, progress=False)


def test_bad_tokenize_options_are_refused_before_any_write(lake: Lake):
    embed_option_is_checked(lake, "tokenize", ("auto", "model", "readers"), "readers",
                            "^tokenize readers applies to embedding images and captions", workers="1")
    assert lake.dataset().to_table(columns=[COLS["text"]]).column(0).null_count < lake.dataset().count_rows()
    # the tokens are the same either way: not part of the columns' config
    assert embed_stage(resolve("tiny-random"), tokenize="readers").config == embed_stage(resolve("tiny-random")).config


@pytest.mark.parametrize(("device", "decode", "engine", "want"), [
    ("cpu", "cpu", "local", "model"), ("cpu", "device", "local", "model"),  # on a CPU both take the same cores
    ("cuda", "cpu", "local", "model"),  # readers that decode are the bound
    ("cuda", "device", "local", "readers"),  # readers that parse headers have time; the GPU's feeder has none
    ("cuda", "device", "ray", "readers"),  # a GPU actor's readers parse headers (engines.gpu_actors: True)
    ("cuda", "cpu", "ray", "model"),
    ("cpu", "device", "ray", "model"),  # actors a CPU (engines.gpu_actors: False)
])
def test_tokenize_auto_picks_the_process_with_time_to_spare(lake: Lake, monkeypatch, device, decode, engine, want):
    from lakecurate import embed as embed_module
    from lakecurate import engines

    monkeypatch.setattr(engines, "gpu_actors", lambda d, address=None: device == "cuda")  # a cluster with GPUs or not

    lake.ingest(SAMPLE_DATA, progress=False)
    asked = []

    class Stop(Exception):
        pass

    def stage(*a, **k):
        asked.append(k["tokenize"])
        raise Stop

    monkeypatch.setattr(embed_module, "resolve_device", lambda d: device)
    monkeypatch.setattr(embed_module, "embed_stage", stage)
    with pytest.raises(Stop):
        lake.embed("tiny-random", workers=0, progress=False, decode=decode, engine=engine)
    assert asked == [want]
