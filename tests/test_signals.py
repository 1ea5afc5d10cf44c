"""Caption and image signals on small literal inputs."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image, ImageEnhance, ImageFilter

from lakecurate.curate import FILTERS

from lakecurate.plant import NOT_PHONES, REAL_PHONES
from lakecurate.signals import (
    caption_signals,
    colorfulness,
    entropy,
    image_signals,
    phone_numbers,
    redact,
    sharpness,
)

from .conftest import SAMPLE_DATA


def signals_of(caption: str) -> dict:
    return {k: v[0] for k, v in caption_signals([caption]).to_pydict().items()}


@pytest.mark.parametrize("caption", ["IMG_1234.JPG", "DSC00012.jpg", "photo.png", " P1000123.JPG ", "Screenshot 2021-04-01 at 10.png",
                                     "IMG 20190603 112233", "dscn0042", "IMG 1234", "DSC01234", "PXL_20230101_123456",
                                     "VID_20200101", "PANO_20200101_1234.jpg", "GOPR0123", "P1010001", "pano 360.jpg"])
def test_file_names(caption):
    assert signals_of(caption)["cap_filename"]


@pytest.mark.parametrize("caption", ["a dog runs on the beach", "the img of a cat", "a jpg artefact on a photo",
                                     "two people on a bench in 2012",
                                     # a word and a number shorter than a camera's counter (4 digits and more)
                                     "vid 3", "pano 360", "p 1", "img 2", "Dsc 12", "wp 7", "sam 3 - 5"])
def test_not_file_names(caption):
    s = signals_of(caption)
    assert not s["cap_filename"] and not s["cap_url"] and not s["cap_boilerplate"]


def test_caption_signals_literal():
    s = signals_of("Image may contain: dog!!!!!!!  see https://dogs.example.com/x\x07 \ufffd")
    assert s["cap_boilerplate"] and s["cap_url"] and s["cap_max_repeat"] == 7 and s["cap_nonprintable"] == 2
    assert signals_of("stock photo of a beach")["cap_boilerplate"]
    assert signals_of("visit www.photos.net today")["cap_url"]
    assert not signals_of("mail anna@example.com")["cap_url"]  # an e-mail address is not a URL
    words = signals_of("a  man\triding a bike")
    assert words["cap_words"] == 5 and words["cap_chars"] == 20 and words["cap_max_repeat"] == 2
    assert signals_of("a dog runs through the grass in the park")["cap_lang"] == "en"
    assert signals_of("un chien court dans l'herbe du parc")["cap_lang"] == "fr"
    empty = caption_signals([None]).to_pylist()[0]
    assert all(v is None for v in empty.values())


def test_privacy_and_redaction():
    s = signals_of("write to jo.smith+sale@mail.example.org or call +1 (212) 736-3100 / 030 1234567")
    assert s["cap_emails"] == 1 and s["cap_phones"] == 2
    for clean in ["a man with 3 dogs", "taken on 12/05/2019", "population 1,250,000", "flight 1234 to rome", "a 1990s car"]:
        assert signals_of(clean)["cap_emails"] == 0 and signals_of(clean)["cap_phones"] == 0, clean
    assert phone_numbers("ring (650) 253-0000") == ["(650) 253-0000"]
    original = "bookings: anna@example.com / +44 20 7946 0018."
    assert redact(original) == "bookings: [email] / [phone]."
    assert redact(None) is None


def test_phone_numbers_are_real_numbers_not_number_like_strings():
    # the regex this replaced flagged "runner number 1234567", scores and ISBNs (issue 18)
    flagged = {t: phone_numbers(t) for t in NOT_PHONES if phone_numbers(t)}
    assert flagged == {}
    assert sum(signals_of(t)["cap_phones"] for t in NOT_PHONES) == 0
    for region, numbers in REAL_PHONES.items():
        for n in numbers:
            for text in (f"call {n} today", f"{n}", f"tel.: {n}, fax none"):
                assert phone_numbers(text) == [n], (region, text)
    assert len(REAL_PHONES) >= 6 and sum(map(len, REAL_PHONES.values())) >= 20
    # two numbers, an e-mail between them: each its own span, replaced in place
    assert redact("a: +33 1 42 68 53 00 / b@c.org / (02) 9374 4000 end") == "a: [phone] / [email] / [phone] end"


def jpeg(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=92)
    return buf.getvalue()


def test_image_measures_literal():
    flat = np.full((50, 50), 100, np.uint8)
    assert sharpness(flat) == 0.0 and entropy(flat) == 0.0
    assert entropy(np.arange(256, dtype=np.uint8).reshape(16, 16)) == pytest.approx(8.0)
    gray = np.repeat(np.random.default_rng(0).integers(0, 255, (20, 20, 1)), 3, axis=2)
    assert colorfulness(gray) == pytest.approx(0.0, abs=1e-6)
    assert colorfulness(np.dstack([np.full((8, 8), 250), np.zeros((8, 8)), np.zeros((8, 8))])) > 50


def test_image_signals_on_photos():
    with Image.open(SAMPLE_DATA / "coffee.jpg") as im:
        im.load()
        sharp, blurred = jpeg(im), jpeg(im.filter(ImageFilter.GaussianBlur(4)))
        gray = jpeg(im.convert("L").convert("RGB"))
    t = image_signals([sharp, blurred, gray, b"junk", None]).to_pydict()
    assert t["img_sharpness"][0] > 4 * t["img_sharpness"][1]
    assert t["img_colorfulness"][0] > 20 and t["img_colorfulness"][2] < 3
    assert t["img_entropy"][0] > 5
    assert t["phash"][3] is None and t["img_sharpness"][4] is None
    assert bin(t["phash"][0] ^ t["phash"][1]).count("1") <= 8  # blur barely moves the hash


# --------------------------------------------------------------------------- blur, whatever the exposure
def motion(im: Image.Image, length: int) -> Image.Image:
    """Motion blur: a horizontal line kernel ``length`` px long (a camera panned)."""
    a = np.asarray(im, np.float32)
    pad = np.pad(a, ((0, 0), (length // 2, length // 2), (0, 0)), mode="edge")
    out = sum(pad[:, i:i + a.shape[1]] for i in range(length)) / length
    return Image.fromarray(out.round().astype(np.uint8))


def blur_drops(blobs: list[bytes]) -> np.ndarray:
    """The blur step at its default, on the image signals of ``blobs``."""
    df = image_signals(blobs).to_pandas()
    return FILTERS["blur"].drop(df, FILTERS["blur"].params)


@pytest.mark.parametrize("name", ["chelsea", "coffee", "horse"])
def test_dark_or_fogged_sharp_photo_is_not_blur(name):
    """The Laplacian's variance scales with the square of contrast: chelsea darkened (x0.35) or fogged
    (contrast 0.5) read as blurred. Sharpness is now a ratio of edge energies, and exposure has its own
    signals and steps."""
    with Image.open(SAMPLE_DATA / f"{name}.jpg") as im:
        rgb = im.convert("RGB")
    dark = ImageEnhance.Brightness(rgb).enhance(0.35)
    fog = Image.blend(rgb, Image.new("RGB", rgb.size, (128, 128, 128)), 0.5)
    t = image_signals([jpeg(rgb), jpeg(dark), jpeg(fog)]).to_pydict()
    assert not blur_drops([jpeg(rgb), jpeg(dark), jpeg(fog)]).any()
    assert t["img_sharpness"][1] == pytest.approx(t["img_sharpness"][0], rel=0.15)
    assert t["img_sharpness"][2] == pytest.approx(t["img_sharpness"][0], rel=0.15)
    assert t["img_brightness"][1] < 0.45 * t["img_brightness"][0]
    assert t["img_contrast"][2] < 0.6 * t["img_contrast"][0]


def test_motion_blur_is_blur():
    """A horizontal smear of 5 px on a 320 px photo (12 px on a 800 px one) was kept by the Laplacian
    variance, which the sharp vertical direction keeps high."""
    blobs = []
    for name in ("chelsea", "coffee", "horse", "astronaut", "camera", "coins"):
        with Image.open(SAMPLE_DATA / f"{name}.jpg") as im:
            blobs.append(jpeg(motion(im.convert("RGB"), 5)))
    assert blur_drops(blobs).all()


def test_mild_blur_on_real_photos(flickr8k):
    """Flickr8k photos (500 px): Gaussian blur of radius 1.5 and motion blur of 9 px are caught, sharp
    ones and the same darkened or fogged are not (the Laplacian caught ~20% of either blur, and
    dropped ~30% of the darkened photos)."""
    paths = sorted((flickr8k / "images").glob("*.jpg"))[:30]
    sharp, gauss, smear, dark, fog = [], [], [], [], []
    for p in paths:
        with Image.open(p) as im:
            rgb = im.convert("RGB")
        sharp.append(p.read_bytes())
        gauss.append(jpeg(rgb.filter(ImageFilter.GaussianBlur(1.5))))
        smear.append(jpeg(motion(rgb, 9)))
        dark.append(jpeg(ImageEnhance.Brightness(rgb).enhance(0.35)))
        fog.append(jpeg(Image.blend(rgb, Image.new("RGB", rgb.size, (128, 128, 128)), 0.5)))
    assert blur_drops(gauss).mean() >= 0.85 and blur_drops(smear).mean() >= 0.85
    assert blur_drops(sharp).mean() <= 0.05
    assert blur_drops(dark).mean() <= 0.05 and blur_drops(fog).mean() <= 0.05


def test_dark_and_low_contrast_steps_catch_what_blur_leaves():
    """A nearly black frame is the dark step's, a nearly flat one the low_contrast step's; blur keeps
    both (in a recipe, the first of the steps a row fails names the reason)."""
    with Image.open(SAMPLE_DATA / "chelsea.jpg") as im:
        rgb = im.convert("RGB")
    black = ImageEnhance.Brightness(rgb).enhance(0.12)
    flat = Image.blend(rgb, Image.new("RGB", rgb.size, (128, 128, 128)), 0.85)
    df = image_signals([jpeg(rgb), jpeg(black), jpeg(flat)]).to_pandas()
    drops = {name: FILTERS[name].drop(df, FILTERS[name].params).tolist() for name in ("blur", "dark", "low_contrast")}
    assert drops["blur"] == [False, False, False] and drops["dark"] == [False, True, False]
    assert drops["low_contrast"][0] is False and drops["low_contrast"][2] is True  # (RMS contrast: the black frame's is low too)


# --------------------------------------------------------------------------- hardening (issue 16)
class _Bounded:
    """A compiled pattern that refuses inputs longer than ``limit`` (some patterns are quadratic)."""

    def __init__(self, pattern, limit: int):
        self.pattern_obj, self.limit, self.longest = pattern, limit, 0

    def _check(self, text: str) -> None:
        self.longest = max(self.longest, len(text))
        assert len(text) <= self.limit, f"{self.pattern_obj.pattern[:30]} given {len(text)} characters"

    def search(self, text, *a):
        self._check(text)
        return self.pattern_obj.search(text, *a)

    def finditer(self, text, *a):
        self._check(text)
        return self.pattern_obj.finditer(text, *a)

    def findall(self, text, *a):
        self._check(text)
        return self.pattern_obj.findall(text, *a)

    def sub(self, repl, text, *a):
        self._check(text)
        return self.pattern_obj.sub(repl, text, *a)

    def __getattr__(self, name):
        return getattr(self.pattern_obj, name)


def _bound_patterns(monkeypatch, limit: int) -> None:
    import lakecurate.signals as sig

    for name in ("_EMAIL", "_URL", "_REPEAT", "_BOILERPLATE"):
        monkeypatch.setattr(sig, name, _Bounded(getattr(sig, name), limit))
    spans = sig.phone_spans

    def bounded_spans(text):  # the phone matcher, too, only ever sees a bounded piece
        assert len(text) <= limit, f"phone_spans given {len(text)} characters"
        return spans(text)

    monkeypatch.setattr(sig, "phone_spans", bounded_spans)


def test_huge_captions_cost_what_long_ones_do(monkeypatch):
    # 100,000 characters of "a." took 164 s in caption_signals and 15 s in redact (quadratic patterns)
    _bound_patterns(monkeypatch, 10_000)
    prose = "Call +44 20 7946 0000 or mail anna@example.com about the red bike at bikes.com. " * 3000  # ~200 kB
    huge = prose + "a." * 500_000 + " x"
    t = caption_signals([huge, "a dog"]).to_pydict()
    assert t["cap_chars"] == [len(huge), 5] and t["cap_words"] == [len(huge.split()), 2]  # counts: whole caption
    assert t["cap_emails"][0] >= 1 and t["cap_phones"][0] >= 1 and t["cap_url"][0] is True
    red = redact(huge)  # redaction covers the whole text, piece by piece
    assert red.count("[email]") == 3000 and red.count("[phone]") == 3000 and "anna@" not in red
    assert red.endswith("a." * 10 + " x") and len(red) == len(huge) - 3000 * (len("anna@example.com") - 7 + len("+44 20 7946 0000") - 7)


def test_redact_in_pieces_equals_redact_whole():
    from lakecurate.signals import _EMAIL

    text = "".join(f"row {i}: mail u{i}@ex.org, call (650) {200 + i}-0101 (x{i}) today. " for i in range(600))

    def whole(t: str) -> str:  # the one-pass definition, fine on prose
        t = _EMAIL.sub("[email]", t)
        for p in sorted(phone_numbers(t), key=len, reverse=True):
            t = t.replace(p, "[phone]")
        return t

    assert len(text) > 20_000 and redact(text) == whole(text)
    assert redact(text).count("[phone]") == 600 and redact(text).count("[email]") == 600


def _oriented(fmt: str) -> tuple[bytes, bytes, bytes]:
    """(stored sideways + EXIF orientation 6, the same photo upright, sideways without the tag)."""
    with Image.open(SAMPLE_DATA / "astronaut.jpg") as im:
        upright = im.convert("RGB").resize((192, 256))
    sideways = upright.rotate(90, expand=True)
    exif = Image.Exif()
    exif[0x0112] = 6

    def enc(img: Image.Image, **kw) -> bytes:
        buf = io.BytesIO()
        img.save(buf, fmt, **({"quality": 95} if fmt == "JPEG" else {}), **kw)
        return buf.getvalue()

    return enc(sideways, exif=exif), enc(upright), enc(sideways)


@pytest.mark.parametrize("fmt, bits", [("PNG", 0), ("JPEG", 4)])
def test_exif_orientation_is_applied_before_hashing(fmt, bits):
    tagged, twin, untagged = _oriented(fmt)
    h = image_signals([tagged, twin, untagged]).column("phash").to_numpy()
    dist = [bin(int(h[0]) ^ int(h[1])).count("1"), bin(int(h[2]) ^ int(h[1])).count("1")]
    assert dist[0] <= bits < 12 <= dist[1], dist  # the tagged photo hashes as its upright twin


def test_image_signal_options_are_checked_before_any_write(lake):
    from lakecurate import LakeError
    from lakecurate.signals import compute_image_signals

    from .conftest import pair_rows

    lake.append(pair_rows(0, 3))
    version = lake.version
    with pytest.raises(LakeError, match="invalid workers"):
        compute_image_signals(lake, workers=-2)
    assert lake.version == version


def test_contacts_past_the_signal_head_are_counted_and_redacted():
    """cap_emails / cap_phones read the first 4096 characters: a 4549-character caption with an
    e-mail at its end was kept by the pii step while caption_redacted showed [email]. And text with
    no letter before a space for 8192 characters was cut inside an e-mail, which then stayed."""
    late = "a dog runs on the grass. " * 180 + "mail john.doe@example.com or call +1 415 555 2671"
    t = caption_signals([late]).to_pydict()
    assert (t["cap_emails"], t["cap_phones"]) == ([1], [1])
    assert redact(late).endswith("mail [email] or call [phone]")
    numbers = "1 " * 4090 + "john.doe@example.com a dog"
    assert "john.doe" not in redact(numbers) and redact(numbers).endswith("[email] a dog")
    assert caption_signals([numbers]).to_pydict()["cap_emails"] == [1]


def test_signals_recompute_replaces_values_an_older_run_made(tmp_path, monkeypatch):
    """cap_emails and cap_phones made before 34d9d24 undercount long captions, and signals had no
    way to redo them: a re-run computes only new rows. --recompute redoes every row of the kinds
    chosen (and only those), before which bad options are refused."""
    import json

    from click.testing import CliRunner

    import lakecurate.signals as sig
    from lakecurate import Lake, LakeError
    from lakecurate.cli import main

    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        Image.new("RGB", (40, 30), (60 * i, 90, 30)).save(src / f"p{i}.jpg")
        (src / f"p{i}.txt").write_text("a dog runs on the grass. " * 180 + f"mail u{i}@example.com")
    lake = Lake.create(tmp_path / "lake")
    lake.ingest(src, progress=False)
    right = sig.caption_signals

    def older(captions):  # what an older lakecurate wrote: the e-mail past 4096 characters unseen
        t = right(captions)
        return t.set_column(t.schema.get_field_index("cap_emails"), "cap_emails",
                            pa.array([0] * t.num_rows, t.schema.field("cap_emails").type))
    monkeypatch.setattr(sig, "caption_signals", older)
    assert lake.signals(["caption", "image"], progress=False) == {"caption": 3, "image": 3}
    monkeypatch.undo()
    assert lake.signals(["caption"], progress=False) == {"caption": 0}  # a re-run: new rows only
    assert lake.count("cap_emails = 1") == 0
    with pytest.raises(LakeError, match="invalid recompute .*: expected True or False"):
        lake.signals(["caption"], recompute="yes")
    image_version = lake.dataset().schema.field("img_sharpness").metadata
    out = CliRunner().invoke(main, ["signals", lake.uri, "--no-image", "--recompute", "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["caption"] == 3
    assert lake.count("cap_emails = 1") == 3
    assert lake.dataset().schema.field("img_sharpness").metadata == image_version  # a kind not chosen is left alone
    # a stale signal's fix command computes its stale fragments again (it filled new rows only: still stale)
    import shlex

    import lance

    from lakecurate import graph

    lance.dataset(lake.table_uri).update({"caption": "'no address in this one'"}, where="cap_emails = 1")
    st = next(s for s in graph.states(lake) if "cap_emails" in s.node.columns)
    # (the rows rewritten moved, their images carried as they were: the image signals stay current)
    assert next(s for s in graph.states(lake) if "img_sharpness" in s.node.columns).state == "current"
    assert st.state == "stale" and st.fix == f"lakecurate signals {lake.uri} --no-image", st.fix
    assert CliRunner().invoke(main, shlex.split(st.fix)[1:]).exit_code == 0
    assert next(s for s in graph.states(lake) if "cap_emails" in s.node.columns).state == "current"
    assert lake.count("cap_emails = 1") == 0 and lake.count("cap_emails = 0") == lake.count("caption IS NOT NULL")


def test_a_signal_made_with_another_config_says_to_recompute(tmp_path, monkeypatch):
    """The refusal said "use --name to write new columns beside it", an option signals does not have."""
    import lakecurate.signals as sig
    from lakecurate import Lake, LakeError

    lake = Lake.create(tmp_path / "lake")
    lake.ingest(SAMPLE_DATA, progress=False)
    lake.signals(["caption"], progress=False)
    monkeypatch.setattr(sig.CAPTION_STAGE, "config", {**sig.CAPTION_STAGE.config, "changed": 1})
    with pytest.raises(LakeError, match="made with another config") as err:
        lake.signals(["caption"], progress=False)
    assert str(err.value).endswith("redo it with lake.signals(KINDS, recompute=True)") and "use name" not in str(err.value)
    from lakecurate.options import speaking

    with speaking("cli"), pytest.raises(LakeError, match="made with another config") as err:  # the CLI's words
        lake.signals(["caption"], progress=False)
    assert "lakecurate signals LAKE --recompute" in str(err.value) and "--name" not in str(err.value)


# Captions in scripts written without spaces: a whitespace split made each one word, so
# caption_length dropped them all and language never judged one.
DENSE_CAPTIONS = {
    "zh": ["一只狗在草地上奔跑", "两个孩子在海滩上玩沙子", "一位老人坐在公园的长椅上看报纸", "一个穿红衣服的女孩在骑自行车",
           "城市街道上有很多行人和汽车", "一隻黑色的貓躺在窗台上睡覺"],
    "ja": ["草原を走る犬", "犬が公園でボールを追いかけている", "海辺で遊んでいる二人の子供", "赤い服を着た女の子が自転車に乗っている",
           "雪の中を歩く人々"],
    "th": ["สุนัขวิ่งบนสนามหญ้า", "เด็กสองคนกำลังเล่นทรายที่ชายหาด", "ผู้หญิงคนหนึ่งกำลังขี่จักรยานบนถนน", "แมวนอนหลับอยู่บนโซฟา"],
}


def test_dense_script_captions_count_words_and_are_judged_by_language():
    from lakecurate.curate import FILTERS

    captions = [c for lang in DENSE_CAPTIONS for c in DENSE_CAPTIONS[lang]]
    t = caption_signals(captions).to_pandas()
    assert (t["cap_words"] >= 3).all(), t[["cap_words"]].assign(caption=captions)
    assert (t["cap_words"] <= 20).all()  # a sentence, not a word per character
    assert not FILTERS["caption_length"].drop(t, {"min_words": 3, "max_words": 100}).any()
    expected = [lang for lang in DENSE_CAPTIONS for _ in DENSE_CAPTIONS[lang]]
    assert list(t["cap_lang"]) == expected
    language = FILTERS["language"]
    params = {"min_prob": 0.5, "min_words": 3}
    judged = (t["cap_words"] >= 3) & (t["cap_lang_prob"] >= 0.5)
    assert judged.sum() >= len(captions) - 2, t  # py3langid's probability on short Chinese is ~0.55-0.6
    assert (language.drop(t, {**params, "keep": ["en"]}) == judged).all()  # judged and not English: dropped
    zh_ja = t["cap_lang"].isin(["zh", "ja"]).to_numpy()
    assert language.drop(t[zh_ja], {**params, "keep": ["en"]}).sum() == judged[zh_ja].sum() > 0
    assert not language.drop(t, {**params, "keep": ["zh", "ja", "th"]}).any()
    assert not language.drop(t[t["cap_lang"] == "zh"], {**params, "keep": ["zh"]}).any()


@pytest.mark.parametrize("caption", ["狗", "小狗", "貓咪", "犬", "สุนัข", "。", "「犬」"])
def test_one_or_two_dense_characters_are_not_a_sentence(caption):
    assert signals_of(caption)["cap_words"] < 3


def test_dense_word_counts_by_the_documented_rule():
    from lakecurate.signals import count_words

    assert count_words("一只狗在草地上奔跑") == 6  # 9 characters, 1 word per 1.5: its segmentation 一只/狗/在/草地/上/奔跑
    assert count_words("一只狗在草地上奔跑。") == 6  # punctuation glued to the run is no word
    assert count_words("3只狗") == 3  # "3" a word, 只狗 ceil(2 / 1.5)
    assert count_words("สุนัขวิ่งบนสนามหญ้า") == 5  # 19 code points, 1 word per 4
    assert count_words("东京 Tower at night") == 5  # 2 + the three space-separated words
    assert count_words("a dog . . runs") == len("a dog . . runs".split())  # no dense script: punctuation counts, as before


@pytest.mark.parametrize("chunk", [1, 2, 3, 4, 5, 7, 11])
def test_dense_runs_cut_by_a_chunk_boundary_count_once(chunk):
    from lakecurate.signals import count_words

    for text in ["一只狗在草地上奔跑", "一只狗在草地上奔跑。两个孩子在海滩上玩沙子", "สุนัขวิ่งบนสนามหญ้า แมวนอนหลับ",
                 "a 东京タワー。「夜」 b! 3只狗 ok", "。「」 一 a", "a dog runs\tin  the park "]:
        assert count_words(text, chunk=chunk) == count_words(text, chunk=1 << 20), (text, chunk)
    huge = "一只狗在草地上奔跑。" * 1000 + " a dog " + "สุนัข" * 500
    assert count_words(huge, chunk=97) == count_words(huge) == 6000 + 2 + (len("สุนัข") * 500 + 3) // 4


def _flickr_captions(flickr8k) -> list[str]:
    import csv

    with open(flickr8k / "captions.csv", newline="") as f:
        return [row["caption"] for row in csv.DictReader(f)]


def test_latin_word_counts_are_unchanged_on_real_captions(flickr8k):
    from lakecurate.signals import count_words

    captions = _flickr_captions(flickr8k)
    assert len(captions) > 1000
    assert [count_words(c) for c in captions] == [len(c.split()) for c in captions]
    assert [count_words(c, chunk=5) for c in captions[:300]] == [len(c.split()) for c in captions[:300]]


@pytest.mark.parametrize("caption", ["IMG-20190814-WA0003", "VID-20190814-WA0012", "IMG_20190814_123456", "PXL_20210101_123456789",
                                     "PXL_20210101_123456789.MP", "Screenshot_20200101-120000", "Screenshot_20200101-120000_Chrome",
                                     "DSC_0001", "IMG_1234_HDR", "WhatsApp Image 2019-08-14 at 10.30.45",
                                     "Screen Shot 2020-01-01 at 12.00.00 PM"])
def test_camera_and_messaging_file_names(caption):
    assert signals_of(caption)["cap_filename"]


@pytest.mark.parametrize("caption", ["No photo description available.", "no photo description available",
                                     "Photo by Anna Smith on Unsplash", "Photo by Jan Kowalski on Pexels",
                                     "Image by Pete from Pixabay"])
def test_alt_text_gaps(caption):
    assert signals_of(caption)["cap_boilerplate"]


def test_human_captions_are_no_file_name_nor_boilerplate(flickr8k):
    captions = _flickr_captions(flickr8k)
    picked = captions[::133][:30] + ["P-51 Mustang flying over the field", "IMG 2 dogs playing", "a photo by the lake at dusk",
                                    "a man takes a photo on his phone"]
    t = caption_signals(picked).to_pydict()
    assert not any(t["cap_filename"]) and not any(t["cap_boilerplate"]), [c for c, a, b in zip(picked, t["cap_filename"],
                                                                                              t["cap_boilerplate"]) if a or b]
    every = caption_signals(captions).to_pydict()  # all of them, not just the sample
    assert not any(every["cap_filename"]) and not any(every["cap_boilerplate"])


def test_status_calls_signals_an_older_lakecurate_made_stale_and_its_fix_makes_them_current(tmp_path, monkeypatch):
    # A signal stage's config is its code's: after an upgrade that changes how pHash is computed,
    # status said "current" while dedup refused the hashes ("made with another config").
    import shlex

    from click.testing import CliRunner

    from lakecurate import Lake, signals
    from lakecurate.cli import main

    lake = Lake.create(tmp_path / "lake")
    lake.ingest(SAMPLE_DATA, progress=False)
    lake.signals(["caption", "image"], progress=False, workers=0)
    assert {s["stage"]: s["state"] for s in lake.status()["stages"]} == {"signals-caption": "current",
                                                                         "signals-image": "current"}
    monkeypatch.setitem(signals.IMAGE_CONFIG, "hash", "dct-phash 32->8x8 of another kind")
    st = {s["stage"]: s for s in lake.status()["stages"]}
    assert st["signals-caption"]["state"] == "current"
    image = st["signals-image"]
    assert image["state"] == "stale"
    assert "its code changed" in image["reasons"][0] and "another kind" in image["reasons"][0]
    assert image["rows_stale"] == lake.dataset().count_rows()
    assert image["fix"].endswith(" --recompute")
    res = CliRunner().invoke(main, shlex.split(image["fix"])[1:] + ["--workers", "0"])
    assert res.exit_code == 0, res.output
    assert {s["stage"]: s["state"] for s in lake.status()["stages"]}["signals-image"] == "current"


def test_caption_and_image_signals_both_stale_have_one_fix(tmp_path, monkeypatch):
    # Both halves made by another lakecurate: status and curate's dry run printed
    # `signals LAKE --no-image --recompute`, then `signals LAKE --no-caption --recompute`, where
    # `signals LAKE --recompute` does both. One half stale keeps its half-command.
    import shlex

    from click.testing import CliRunner

    from lakecurate import Lake, LakeError, signals
    from lakecurate.cli import main

    lake = Lake.create(tmp_path / "lake")
    lake.ingest(SAMPLE_DATA, progress=False)
    lake.signals(["caption", "image", "faces"], progress=False, workers=0)
    recipe = {"name": "both", "step": [{"filter": "blur"}, {"filter": "caption_length"}]}
    monkeypatch.setitem(signals.IMAGE_CONFIG, "sharpness", "another scale")
    monkeypatch.setitem(signals.CAPTION_CONFIG, "words", "counted otherwise")
    fixes = {s["stage"]: s["fix"] for s in lake.status()["stages"] if s["state"] != "current"}
    one = f"lakecurate signals {lake.uri} --recompute"
    assert fixes == {"signals-caption": one, "signals-image": one}, fixes
    res = CliRunner().invoke(main, ["status", lake.uri])
    assert res.output.count("lakecurate signals") == 1 and f"signals-caption, signals-image: {one}" in res.output, \
        res.output
    with pytest.raises(LakeError) as err:
        lake.curate(recipe, dry_run=True, progress=False)
    assert str(err.value).count("lakecurate signals") == 1 and f"re-run it first: {one}" in str(err.value), err.value
    # a kind stale otherwise (a row rewritten since: a plain run) keeps its own command (by a merge
    # insert, which Lance records as writing every column: an update records those it sets)
    import pyarrow as pa

    ids = lake.dataset().to_table(columns=["id"], filter="key LIKE '%coffee%'")["id"]
    lake.dataset().merge_insert("id").when_matched_update_all().execute(
        pa.table({"id": ids, "caption": pa.array(["a rewritten caption"] * len(ids))}))
    fixes = {s["stage"]: s["fix"] for s in lake.status()["stages"] if s["state"] != "current"}
    assert fixes == {"signals-caption": one, "signals-image": one,
                     "signals-faces": f"lakecurate signals {lake.uri} --faces --no-caption --no-image"}, fixes
    monkeypatch.undo()  # every kind needs a plain run: one, which makes them all current
    fixes = {s["stage"]: s["fix"] for s in lake.status()["stages"] if s["state"] != "current"}
    assert set(fixes.values()) == {f"lakecurate signals {lake.uri} --faces"}, fixes
    res = CliRunner().invoke(main, shlex.split(fixes["signals-faces"])[1:] + ["--workers", "0"])
    assert res.exit_code == 0, res.output
    assert all(s["state"] == "current" for s in lake.status()["stages"]), lake.status()["stages"]
    monkeypatch.setitem(signals.CAPTION_CONFIG, "words", "counted otherwise")  # one half stale: its half
    fixes = {s["stage"]: s["fix"] for s in lake.status()["stages"] if s["state"] != "current"}
    assert fixes == {"signals-caption": f"lakecurate signals {lake.uri} --no-image --recompute"}, fixes


def test_a_dry_run_refuses_signals_it_would_read_stale(tmp_path, monkeypatch):
    # A dry run computes nothing: it judged by signals an older lakecurate computed (img_sharpness on
    # another scale against the new threshold: nothing dropped) and by signals whose input was
    # rewritten since, where a run would have computed them first.
    from lakecurate import Lake, LakeError, signals

    lake = Lake.create(tmp_path / "lake")
    lake.ingest(SAMPLE_DATA, progress=False)
    lake.signals(["caption", "image"], progress=False, workers=0)
    recipe = {"name": "sharp", "step": [{"filter": "blur"}, {"filter": "caption_length"}]}
    assert lake.curate(recipe, dry_run=True, progress=False).rows == lake.dataset().count_rows()
    monkeypatch.setitem(signals.IMAGE_CONFIG, "sharpness", "another scale")
    with pytest.raises(LakeError, match=r"img_sharpness.*signals-image.*its code changed.*--recompute"):
        lake.curate(recipe, dry_run=True, progress=False)
    monkeypatch.undo()
    ds = lake.dataset()
    ds.update({"caption": "'a rewritten caption of several words'"}, where="key LIKE '%coffee%'")
    with pytest.raises(LakeError, match=r"cap_words.*signals-caption.*stale"):
        lake.curate(recipe, dry_run=True, progress=False)
    lake.curate(recipe, progress=False)  # a run computes the stale fragment first
    assert lake.curate(recipe, dry_run=True, progress=False).rows == lake.dataset().count_rows()


def test_a_16_bit_gray_photo_has_the_signals_of_its_8_bit_self():
    # (helper-55) Pillow's convert clips 16-bit samples at 255: a 16-bit gray photo read as a white
    # frame (brightness 0.999, contrast 0.014), which low_contrast and low_information would drop.
    from lakecurate.signals import copy_hashes, image_signals

    with Image.open(SAMPLE_DATA / "coffee.jpg") as im:
        gray = np.asarray(im.convert("L"), np.uint16)
    eight, sixteen = io.BytesIO(), io.BytesIO()
    Image.fromarray(gray.astype(np.uint8)).save(eight, "PNG")
    Image.fromarray(gray * 257).save(sixteen, "PNG")  # (Pillow writes it as a 16-bit PNG)
    assert Image.open(io.BytesIO(sixteen.getvalue())).mode.startswith("I")
    t = image_signals([eight.getvalue(), sixteen.getvalue()]).to_pydict()
    for col in ("img_brightness", "img_contrast", "img_sharpness", "img_entropy"):
        assert t[col][1] == pytest.approx(t[col][0], rel=0.02, abs=0.01), (col, t[col])
    assert bin(t["phash"][0] ^ t["phash"][1]).count("1") <= 2
    c = copy_hashes([eight.getvalue(), sixteen.getvalue()]).column("copy_hashes").to_pylist()
    assert bin(c[0][0] ^ c[1][0]).count("1") <= 2


def test_photo_site_names_are_boilerplate_as_words_only():
    # (helper-55) "unsplash" matched inside "unsplashed"
    from lakecurate.signals import caption_signals

    caps = ["Photo by Anna Smith on Unsplash", "free photo from pexels.com", "Pixabay", "unsplashed laundry on a line",
            "a pexelsian pattern"]
    assert caption_signals(caps).column("cap_boilerplate").to_pylist() == [True, True, True, False, False]


def test_curate_computes_again_the_signals_another_lakecurate_computed(tmp_path, monkeypatch):
    # After an upgrade that changes how a signal is computed, curate (and a pipeline through it)
    # failed: "made with another config; redo it with lakecurate signals LAKE --recompute". The
    # signals it computes on the way are this code's: computed again, as stale fragments are.
    from lakecurate import Lake, LakeError, signals
    from lakecurate.columns import field_provenance, hash_config

    lake = Lake.create(tmp_path / "lake")
    lake.ingest(SAMPLE_DATA, progress=False)
    monkeypatch.setitem(signals.IMAGE_CONFIG, "sharpness", "an older measure")
    lake.signals(["caption", "image"], progress=False, workers=0)
    monkeypatch.undo()
    rep = lake.curate({"name": "sharp", "step": [{"filter": "blur"}]}, progress=False)
    assert rep.rows == lake.dataset().count_rows()
    prov = field_provenance(lake.dataset().schema.field("img_sharpness"))
    assert prov["config_hash"] == hash_config(signals.IMAGE_CONFIG)
    assert lake.count("img_sharpness IS NULL AND ingest_status = 'ok'") == 0
    with pytest.raises(LakeError, match="made with another config"):  # asked by hand: refused, naming --recompute
        monkeypatch.setitem(signals.IMAGE_CONFIG, "sharpness", "a newer measure")
        lake.signals(["image"], progress=False, workers=0)


def test_export_refuses_a_keep_decided_on_signals_an_older_lakecurate_computed(tmp_path, monkeypatch):
    # Only status and curate judged signal columns by this code's config (they passed `code`):
    # export, rebalance and sequence called a keep decided on signals another lakecurate computed
    # differently current, and exported it. The facade registers the configs with the graph.
    from lakecurate import Lake, LakeError, graph, signals

    lake = Lake.create(tmp_path / "lake")
    lake.ingest(SAMPLE_DATA, progress=False)
    recipe = {"name": "short", "step": [{"filter": "caption_length"}]}
    lake.curate(recipe, progress=False)
    lake.export(tmp_path / "ok", format="parquet")
    monkeypatch.setitem(signals.CAPTION_CONFIG, "words", "counted otherwise")
    st = {s.node.stage: s for s in graph.states(lake)}  # no `code` passed: the registered configs
    assert st["signals-caption"].state == "stale" and st["curate"].state == "behind", st
    with pytest.raises(LakeError, match=r"signals-caption.*its code changed"):
        lake.export(tmp_path / "out", format="parquet")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_no_stage_decodes_an_image_past_the_decode_limit(monkeypatch, fmt):
    """An image over images.MAX_DECODE_PIXELS (a decompression bomb ingest took under a raised
    --max-pixels, or one of an old lake) was refused by embed but decoded by the signals, the copy
    hashes and the report's and the browser's thumbnails (144 MP: 1.1 GB for one thumbnail), each
    printing Pillow's raw DecompressionBombWarning. Checked with the limits lowered to a small image."""
    import warnings

    from lakecurate import images
    from lakecurate.report import thumbnail
    from lakecurate.signals import copy_gray, image_signals_one

    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 60)).save(buf, fmt)
    data = buf.getvalue()
    assert image_signals_one(data) is not None and images.thumbnail_jpeg(data) is not None  # under the limit: decoded
    monkeypatch.setattr(images, "MAX_DECODE_PIXELS", 64 * 48 - 1)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 64 * 48 - 1)  # Pillow warns on open past its own
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no raw DecompressionBombWarning either
        assert images.thumbnail_jpeg(data) is None and thumbnail(data) is None
        assert images.thumbnail_jpeg(data, oversample=1) is None  # (the browser's)
        assert image_signals_one(data) is None and copy_gray(data) is None
        assert images.decode_small(data, 32) is None
        assert images.decode_image(data) == (None, "image_too_large: 64x48")
