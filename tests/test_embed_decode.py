"""embed --decode device: whole JPEGs decoded, resized and cropped on the model's device (nvJPEG on a
GPU; the same torchvision code on the CPU here), everything else by the decode processes."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from lakecurate import Lake, LakeError
from lakecurate.cli import main
from lakecurate.columns import field_provenance
from lakecurate.encoders import Encoder, column_names, resolve
from lakecurate.images import DevicePreprocess, ImageTransform, decode_image, device_decodable

from .conftest import SAMPLE_DATA, image_bytes
from .test_embed import _exif_twins

COLS = column_names("clip_tinyrandom")


def _photo(size: tuple[int, int], mode: str = "RGB", seed: int = 0, **save) -> bytes:
    """A smooth random photo (blurred noise: JPEG keeps it) of ``size``, encoded as JPEG."""
    rng = np.random.default_rng(seed)
    w, h = size
    small = rng.integers(0, 255, (max(2, h // 8), max(2, w // 8), 3), dtype=np.uint8)
    im = Image.fromarray(small).resize((w, h), Image.BICUBIC)
    buf = io.BytesIO()
    (im.convert(mode) if mode != "RGB" else im).save(buf, "JPEG", quality=92, **save)
    return buf.getvalue()


def test_which_images_the_device_decodes():
    tagged, upright, _ = _exif_twins("JPEG")
    whole = _photo((160, 120))
    assert device_decodable(whole) and device_decodable(upright)
    assert device_decodable(_photo((120, 160), mode="L")) and device_decodable(_photo((160, 120), progressive=True))
    assert not device_decodable(tagged)  # a sideways phone photo: the readers turn it upright
    assert not device_decodable(_photo((160, 120), mode="CMYK"))
    assert not device_decodable(image_bytes("PNG"))
    assert not device_decodable(whole[: len(whole) // 2])  # truncated: no end-of-image marker
    assert not device_decodable(b"\xff\xd8\xff" + b"not a jpeg" + b"\xff\xd9")
    assert not device_decodable(None) and not device_decodable(b"")


@pytest.mark.parametrize("arch", ["tiny-random", "offline"])
def test_device_pixels_are_within_a_few_levels_of_pillows(arch: str):
    """Every size and shape (landscape, portrait, square, smaller than the crop, grey) gives the
    pixels Pillow gives, within rounding: same resize sizes, same crop offsets, same channels."""
    enc = Encoder(resolve(arch), device="cpu")
    tf = enc.transforms()[0]
    assert isinstance(tf, ImageTransform)
    blobs = [_photo(s, seed=i) for i, s in enumerate([(500, 375), (375, 500), (333, 333), (100, 60), (640, 200)])]
    blobs += [_photo((300, 400), mode="L"), (SAMPLE_DATA / "astronaut.jpg").read_bytes()]
    want = np.stack([tf.as_uint8()(decode_image(b)[0]) for b in blobs]).astype(np.int16)
    got, failed = enc.decode_jpegs(blobs, tf)
    assert failed == [] and tuple(got.shape) == want.shape and str(got.dtype) == "torch.uint8"
    diff = np.abs(got.numpy().astype(np.int16) - want)
    assert diff.mean() < 0.5 and diff.max() <= 8, (diff.mean(), diff.max())
    squash = ImageTransform(tf.size, tf.mean, tf.std, resize_mode="squash")
    want = np.stack([squash.as_uint8()(decode_image(b)[0]) for b in blobs]).astype(np.int16)
    assert np.abs(enc.decode_jpegs(blobs, squash)[0].numpy().astype(np.int16) - want).mean() < 0.5
    # photos of one size resized together (a GPU's default) give what one at a time (the CPU's) gives
    twins = blobs + [_photo((500, 375), seed=9), _photo((375, 500), seed=8), _photo((500, 375), seed=7)]
    for t in (tf, squash):
        one, grouped = (enc.decode_jpegs(twins, t, by_size=b)[0].numpy() for b in (False, True))
        assert np.array_equal(one, grouped)


def test_an_image_the_device_refuses_is_decoded_by_pillow_and_one_neither_decodes_gets_its_reason(monkeypatch):
    import torchvision.io

    from lakecurate import images

    enc = Encoder(resolve("tiny-random"), device="cpu")
    tf = enc.transforms()[0]
    blobs = [_photo((200, 150), seed=i) for i in range(4)]
    refused = {blobs[1], blobs[3]}
    real = torchvision.io.decode_jpeg

    def decode_jpeg(data, **kw):
        if any(bytes(d.numpy()) in refused for d in (data if isinstance(data, list) else [data])):
            raise RuntimeError("nvjpeg refused it")
        return real(data, **kw)

    monkeypatch.setattr(torchvision.io, "decode_jpeg", decode_jpeg)
    got, failed = enc.decode_jpegs(blobs, tf)
    assert failed == []
    for i in (1, 3):  # Pillow's pixels exactly
        assert np.array_equal(got[i].numpy(), tf.as_uint8()(decode_image(blobs[i])[0]))

    real_pillow = images.decode_image
    monkeypatch.setattr(images, "decode_image",
                        lambda b: (None, "image_undecodable: test") if b == blobs[3] else real_pillow(b))
    item = DevicePreprocess(tf.as_uint8())([blobs[0], image_bytes("PNG", (90, 70)), blobs[1], None, blobs[3], blobs[2]])
    assert item["from_jpeg"].tolist() == [True, False, True, True, True]
    assert item["image_errors"] == [None, None, None, "image_missing", None, None]
    run, errors = enc.launch_images(item)
    assert errors == [None, None, None, "image_missing", "image_undecodable: test", None]
    assert run.result().shape[0] == 4  # the rows with pixels, in row order
    ref = enc.encode_image_tensors(np.stack([tf.as_uint8()(decode_image(b)[0])
                                             for b in (blobs[0], image_bytes("PNG", (90, 70)), blobs[1], blobs[2])]))
    assert (run.result() * ref).sum(1).min() > 0.999


def test_embed_decode_device_gives_the_cpu_columns_and_its_own_provenance(tmp_path):
    lakes = {}
    for decode in ("cpu", "device"):
        lake = lakes[decode] = Lake.create(tmp_path / decode)
        lake.ingest(SAMPLE_DATA, progress=False)
        rep = lake.embed("tiny-random", workers=0, batch_size=8, progress=False, decode=decode)
        assert rep.rows_embedded == lake.dataset().count_rows()
    frames = {d: lk.to_pandas(["key", COLS["image"], COLS["error"]]).sort_values("key").reset_index(drop=True)
              for d, lk in lakes.items()}
    cpu, dev = frames["cpu"], frames["device"]
    assert cpu["key"].tolist() == dev["key"].tolist()
    assert cpu[COLS["error"]].fillna("").tolist() == dev[COLS["error"]].fillna("").tolist()
    assert dev[COLS["error"]].notna().sum() >= 2  # the truncated JPEG and the non-image among them
    both = cpu[COLS["image"]].notna() & dev[COLS["image"]].notna()
    assert both.sum() >= 20 and (both == cpu[COLS["image"]].notna()).all()
    a = np.stack(cpu.loc[both, COLS["image"]]).astype(np.float32)
    b = np.stack(dev.loc[both, COLS["image"]]).astype(np.float32)
    assert ((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min() > 0.999
    prov = field_provenance(lakes["device"].dataset().schema.field(COLS["image"]))
    assert prov["config"]["decode"] == "device"
    assert "decode" not in field_provenance(lakes["cpu"].dataset().schema.field(COLS["image"]))["config"]
    # a lake embedded one way is not extended the other way
    with pytest.raises(LakeError, match="another config"):
        lakes["device"].embed("tiny-random", workers=0, progress=False, decode="cpu")


def embed_option_is_checked(lake: Lake, option: str, choices: tuple[str, ...], good: str, clash: str,
                            workers: str = "0") -> None:
    """``--option``'s bad value, and ``good`` with --caption-col (whose error matches ``clash``), are
    refused before any write, the CLI refuses the bad value too, and embeds with ``good``."""
    lake.ingest(SAMPLE_DATA, progress=False)
    version = lake.version
    with pytest.raises(LakeError, match=f"^{option} must be one of {', '.join(choices)}, not 'gpu'"):
        lake.embed("tiny-random", workers=0, progress=False, **{option: "gpu"})
    with pytest.raises(LakeError, match=clash):
        lake.embed("tiny-random", workers=0, progress=False, caption_col="caption_x", **{option: good})
    assert lake.version == version
    res = CliRunner().invoke(main, ["embed", lake.uri, "--model", "tiny-random", f"--{option}", "gpu"])
    assert res.exit_code == 2 and f"'gpu' is not one of {', '.join(repr(c) for c in choices)}" in res.output
    res = CliRunner().invoke(main, ["embed", lake.uri, "--model", "tiny-random", "--workers", workers, f"--{option}", good,
                                    "--json"])
    assert res.exit_code == 0, res.output


def test_bad_decode_options_are_refused_before_any_write(lake: Lake):
    embed_option_is_checked(lake, "decode", ("cpu", "device"), "device", "^decode applies to embedding images")
    assert field_provenance(lake.dataset().schema.field(COLS["image"]))["config"]["decode"] == "device"


def test_the_device_decodes_a_bounded_number_of_pixels_at_once(monkeypatch):
    """256 photos of 12 megapixels would be 9 GB decoded at once: the readers send each JPEG's pixel
    count and the encoder decodes at most DECODE_PIXELS at a time (DECODE_IMAGES without counts)."""
    import torchvision.io

    from lakecurate import encoders

    enc = Encoder(resolve("tiny-random"), device="cpu")
    tf = enc.transforms()[0]
    blobs = [_photo(s, seed=i) for i, s in enumerate([(200, 150), (150, 200), (300, 100), (120, 120), (200, 150)])]
    item = pickle.loads(pickle.dumps(DevicePreprocess(tf.as_uint8())(blobs)))  # as a reader process sends it
    assert item["jpeg_pixels"] == [30000, 30000, 30000, 14400, 30000]
    assert [bytes(j) for j in item["jpegs"]] == blobs and all(j.flags.writeable for j in item["jpegs"])
    whole, _ = enc.decode_jpegs(item["jpegs"], tf, item["jpeg_pixels"])
    assert np.array_equal(whole.numpy(), enc.decode_jpegs(blobs, tf)[0].numpy())  # arrays (no copy) or bytes
    calls, real = [], torchvision.io.decode_jpeg
    monkeypatch.setattr(torchvision.io, "decode_jpeg", lambda data, **kw: calls.append(len(data)) or real(data, **kw))
    monkeypatch.setattr(encoders, "DECODE_PIXELS", 60000)
    got, failed = enc.decode_jpegs(blobs, tf, item["jpeg_pixels"])
    assert calls == [2, 2, 1] and failed == [] and np.array_equal(got.numpy(), whole.numpy())
    calls.clear()
    monkeypatch.setattr(encoders, "DECODE_IMAGES", 2)
    assert np.array_equal(enc.decode_jpegs(blobs, tf)[0].numpy(), whole.numpy()) and calls == [2, 2, 1]
