"""Per-row signals as columns: caption text checks, privacy, and image features from one decode.

Every function here that takes a batch is pure (values in, arrays out) and is tested on literals.
The stages are :class:`lakecurate.runner.RowStage` specs (``IMAGE_STAGE``, ``CAPTION_STAGE``,
``redact_stage``) that ``compute_*`` run on :mod:`lakecurate.runner`: only rows that lack the
columns, one commit per fragment, resume after a kill, a re-run is a no-op; ``engine="ray"`` too.

Caption signals (from the ``caption`` column, no decode):

| column | meaning |
| --- | --- |
| ``cap_words``, ``cap_chars`` | words (whitespace-separated; runs of Han/kana, Thai, Lao, Khmer, Myanmar by length: :func:`count_words`) and characters |
| ``cap_filename`` | the caption is a file name (``IMG_1234.JPG``, ``DSC00012``, ``IMG-20190814-WA0003``, ``photo.png``) |
| ``cap_url`` | the caption contains a URL or a bare domain |
| ``cap_boilerplate`` | stock/alt-text boilerplate ("image may contain", "stock photo", "No photo description available.", "Photo by X on Unsplash") |
| ``cap_max_repeat`` | the longest run of one repeated character ("!!!!!!!!" -> 8) |
| ``cap_nonprintable`` | control, format, private-use and replacement characters |
| ``cap_emails``, ``cap_phones`` | e-mail addresses and phone numbers found (privacy) |
| ``cap_lang``, ``cap_lang_prob`` | language (ISO 639-1) and its probability, from ``py3langid`` |

Words, characters, e-mail addresses and phone numbers count the whole caption (contacts piece by
piece, as redaction finds them, in linear time); the other caption signals read its first
``SIGNAL_CHARS`` (4096) characters, so a hostile 20 MB caption costs what a long one does.

Image signals (one reduced-size decode per image, in spawned workers):

| column | meaning |
| --- | --- |
| ``phash``, ``phash_flip`` | 64-bit DCT perceptual hash of the picture inside any uniform surround (:func:`surround_box`) and of its mirror image (dedup) |
| ``img_sharpness`` | edge sharpness at 128 px short side, 0..4, whatever the exposure (:func:`sharpness`; blur: low) |
| ``img_brightness`` | mean gray level, 0 black .. 1 white (under-exposed: low) |
| ``img_contrast`` | RMS contrast: std of the gray levels / 255 (fogged, washed out: low) |
| ``img_entropy`` | Shannon entropy of the grayscale histogram, bits (near-uniform images: low) |
| ``img_colorfulness`` | Hasler & Suesstrunk colourfulness (grayscale images: ~0) |

Width, height and aspect ratio come from the ingest columns (image header), so need no decode.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from lakecurate import runner
from lakecurate.images import eight_bit, exif_upright, open_header, too_large
from lakecurate.names import signals_fix
from lakecurate.runner import Rows, RowStage

if TYPE_CHECKING:
    from PIL import Image

    from lakecurate.store import Store

# --------------------------------------------------------------------------- caption signals
_EXT = r"(?:jpe?g|png|gif|webp|bmp|tiff?|heic|avif)"
# A file name with an image extension, or a camera's / phone's name without one: a prefix, digits,
# then tags joined by "_", "-" or "." (IMG-20190814-WA0003 from WhatsApp, PXL_20210101_123456789.MP,
# Screenshot_20200101-120000_Chrome, IMG_1234_HDR); or the names WhatsApp and macOS give
# ("WhatsApp Image 2019-08-14 at 10.30.45", "Screen Shot 2020-01-01 at 12.00.00 PM"). A tag needs
# its joiner, so "P-51 Mustang over the field" stays a caption; the digits after the prefix are a
# camera's counter or date, 4 or more (IMG_0001, P1010001), so a word and a short number ("vid 3",
# "pano 360", "p 1") stay a caption too.
_FILENAME = re.compile(
    rf"^\s*(?:[\w\-. ()\[\]]{{0,80}}\.{_EXT}"
    r"|(?:img|vid|dsc|dscn|dscf|dcim|pxl|mvimg|p|gopr|sam|wp|screenshot|pano)[\s_-]?\d{4}[\d_\- ]*(?:[_.-][a-z]+[\d_\- ]*)*"
    r"|(?:whatsapp (?:image|video)|screen ?shot) \d{4}-\d\d-\d\d at \d[\d.]*(?: ?[ap]m)?(?: \(\d+\))?)\s*$",
    re.IGNORECASE)
_URL = re.compile(r"(?:https?://|www\.)\S+|\b[a-z0-9-]+(?:\.[a-z0-9-]+)*\.(?:com|net|org|io|co|uk|de|fr|info|biz|ru|cn)\b(?:/\S*)?",
                  re.IGNORECASE)
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)*\.[a-z]{2,}", re.IGNORECASE)
# Phone numbers: Google's libphonenumber (the ``phonenumbers`` port) finds numbers that are VALID
# for a region: real numbering plans, so "runner 1234567", scores, ISBNs, dates and prices are not
# phones (docs/benchmarks.md has the table). Numbers written with +country code are found whatever
# the region; national formats ("(650) 253-0000", "020 7031 3000") need their region listed here.
PHONE_REGIONS = ("US", "GB", "DE", "FR", "IN", "ES", "IT", "BR", "JP", "AU")
# STRICT_GROUPING: valid, and the digits grouped as the region groups them; VALID alone also took
# "2021.05.12 14" and "order #20231005-77" (and STRICT misses "089 2180-0", a switchboard with "-0").
PHONE_LENIENCY = "STRICT_GROUPING"
BOILERPLATE = (
    "image may contain", "may contain:", "stock photo", "stock image", "stock picture", "royalty free", "royalty-free",
    "click here", "click to enlarge", "no description", "no caption", "untitled", "image not found",
    "image unavailable", "placeholder", "thumbnail", "default image", "alt text", "all rights reserved",
    "shutterstock", "getty images", "istock", "alamy", "dreamstime", "123rf", "depositphotos", "free download",
    "download free", "lorem ipsum", "insert image", "enter image description",
    # Facebook's alt text for a photo it could not describe; the credit lines free photo sites ask
    # for ("Photo by Anna on Unsplash"), which describe nothing
    "no photo description", "unsplash", "pexels", "pixabay",
)
# The photo sites' names are whole words ("unsplashed laundry" is a caption); the rest match inside
# text as they always did ("thumbnails", "placeholder image").
WHOLE_WORDS = ("unsplash", "pexels", "pixabay")
_BOILERPLATE = re.compile("|".join(rf"\b{re.escape(b)}\b" if b in WHOLE_WORDS else re.escape(b) for b in BOILERPLATE),
                          re.IGNORECASE)
_REPEAT = re.compile(r"(.)\1+", re.DOTALL)
# Scripts written without spaces between words: a whitespace split makes "一只狗在草地上奔跑" (a dog
# runs on the grass) one word, so caption_length dropped every such caption and language never
# judged one. Their runs count by length instead, at the mean word length of each script: Chinese
# words average 1.5-1.7 characters (segmented corpora: PKU, CTB), Japanese with its one-kana
# particles about the same, so 1 word per 1.5 characters (rounded up; "小狗" 2, "一只狗在跑" 4, the
# caption above 6, its segmentation 一只/狗/在/草地/上/奔跑 6 too); Thai, Lao, Khmer and Myanmar
# words are a few syllables of stacked letters and marks, about 4 code points per word
# ("สุนัข/วิ่ง/บน/สนาม/หญ้า": 19 code points, 5 words). Hangul is written with spaces: not here.
DENSE_SCRIPTS = {
    "han_kana": ("\u2e80-\u2fdf\u3005-\u3007\u3021-\u3029\u3031-\u3035\u3038-\u303c\u3040-\u30ff"
                 "\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff66-\uff9f\U00020000-\U0003134f", 2, 3),
    "sea": ("\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff\u19e0-\u19ff\ua9e0-\ua9ff\uaa60-\uaa7f", 1, 4),
}  # name -> (character ranges, words, per characters)
_DENSE_RATE = {k: (w, c) for k, (_, w, c) in DENSE_SCRIPTS.items()}
_DENSE_CHARS = "".join(r for r, _, _ in DENSE_SCRIPTS.values())
_DENSE = re.compile(f"[{_DENSE_CHARS}]")
_SEGMENT = re.compile("|".join([r"(?P<w>\s+)"] + [f"(?P<{k}>[{r}]+)" for k, (r, _, _) in DENSE_SCRIPTS.items()]
                               + [f"(?P<o>[^\\s{_DENSE_CHARS}]+)"]))
_ALNUM = re.compile(r"[^\W_]")
# Caption signals other than the counts of characters and words read the first SIGNAL_CHARS
# characters: some patterns (e-mail, bare domain) are quadratic on long runs without a match
# (100,000 characters of "a." took 164 s), and real captions are far shorter.
SIGNAL_CHARS = 4096
# Redaction must cover the whole text: a longer caption is redacted in pieces of about this size,
# cut only where no e-mail or phone number can span the cut (see _pieces).
REDACT_PIECE = 4096


def phone_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each phone number in ``text``: valid for one of ``PHONE_REGIONS`` (or
    written with a + country code), not an ISBN; overlapping finds merged, in text order."""
    if sum(c.isdigit() for c in text) < 7:  # no number plan has shorter numbers: skip the matcher
        return []
    from phonenumbers import Leniency, PhoneNumberMatcher

    leniency = getattr(Leniency, PHONE_LENIENCY)
    found = sorted({(m.start, m.end) for region in PHONE_REGIONS
                    for m in PhoneNumberMatcher(text, region, leniency=leniency) if not _isbn(text, m.start, m.end)})
    merged: list[tuple[int, int]] = []
    for a, b in found:
        if merged and a < merged[-1][1]:
            merged[-1] = (merged[-1][0], max(b, merged[-1][1]))
        else:
            merged.append((a, b))
    return merged


def _isbn(text: str, start: int, end: int) -> bool:
    """The span is an ISBN: 10 or 13 digits with a valid check digit, written in 4-5 hyphenated
    groups or after the word ISBN (some ISBNs are also valid phone numbers somewhere)."""
    s = text[start:end]
    digits = [int(c) for c in s if c.isdigit()] + ([10] if s[-1:] in "Xx" and s[-1:] else [])
    if len(digits) == 10:
        ok = sum((10 - i) * d for i, d in enumerate(digits)) % 11 == 0
    elif len(digits) == 13:
        ok = sum(d * (1 if i % 2 == 0 else 3) for i, d in enumerate(digits)) % 10 == 0
    else:
        return False
    return ok and (s.count("-") >= 3 or "isbn" in text[max(0, start - 12):start].lower())


def phone_numbers(text: str) -> list[str]:
    """The phone numbers in ``text`` (:func:`phone_spans`), as written.

    >>> phone_numbers("call +1 650-253-0000 or (650) 253-0000, not runner 1234567 or ISBN 0-306-40615-2")
    ['+1 650-253-0000', '(650) 253-0000']
    """
    return [text[a:b] for a, b in phone_spans(text)]


def redact(text: str | None) -> str | None:
    """The caption with e-mail addresses and phone numbers replaced by [email] and [phone].

    >>> redact("mail anna@example.com or call +44 20 7946 0000!")
    'mail [email] or call [phone]!'
    """
    if text is None:
        return None
    if len(text) > REDACT_PIECE:  # linear time on huge captions: piece by piece
        return "".join(_redact_piece(p) for p in _pieces(text, REDACT_PIECE))
    return _redact_piece(text)


def _redact_piece(text: str) -> str:
    if "@" in text:  # no "@", no e-mail: skips the pattern's slow scan of long words
        text = _EMAIL.sub("[email]", text)
    for a, b in reversed(phone_spans(text)):  # from the end: earlier offsets stay true
        text = text[:a] + "[phone]" + text[b:]
    return text


def _pieces(text: str, size: int) -> list[str]:
    """``text`` cut into pieces of about ``size`` characters, each cut at whitespace that follows a
    letter: e-mails hold no whitespace and phone numbers end in a digit, so none spans a cut. Text
    with no such place for ``2 * size`` characters (not prose) is cut at its last whitespace there
    (an e-mail is never cut), and text with no whitespace at all at ``2 * size``."""
    out, start, n = [], 0, len(text)
    cut, space = re.compile(r"(?<=[^\W\d_])\s"), re.compile(r"\s")
    while n - start > size:
        m = cut.search(text, start + size, min(n, start + 2 * size))
        if m is None:
            last = None
            for last in space.finditer(text, start + 1, min(n, start + 2 * size)):
                pass
            m = last
        end = m.start() if m else min(n, start + 2 * size)
        out.append(text[start:end])
        start = end
    out.append(text[start:])
    return out


def count_words(text: str, chunk: int = 1 << 20) -> int:
    """Words in ``text``: ``len(text.split())``, except in scripts written without spaces between
    words (see :data:`DENSE_SCRIPTS`), whose runs count by their length; read in chunks, so a
    huge caption's words are never all in memory at once.

    A run of Han/kana counts one word per 1.5 characters, rounded up; a run of Thai, Lao, Khmer or
    Myanmar one per 4 code points, rounded up. Other text glued to such a run counts one word if it
    holds a letter or digit ("3只狗": 1 + 2), none if it is only punctuation ("。", "「」"). Text
    without those scripts counts exactly as ``len(text.split())``.

    >>> count_words("a bc  d ", chunk=3), len("a bc  d ".split())
    (3, 3)
    >>> count_words("一只狗在草地上奔跑。"), count_words("草原を走る犬"), count_words("สุนัขวิ่งบนสนามหญ้า"), count_words("小狗")
    (6, 4, 5, 2)
    """
    n, kind, size, alnum, after_dense = 0, "w", 0, False, False  # the open segment at the end of what was read
    for i in range(0, len(text), chunk):
        part = text[i:i + chunk]
        if kind in ("w", "o") and _DENSE.search(part) is None:  # no dense script here: count by split, as before
            tokens = part.split()
            if kind == "o" and not part[0].isspace():  # the open token goes on into this chunk
                alnum = alnum or (bool(tokens) and _ALNUM.search(tokens[0]) is not None)
                if len(tokens) == 1 and not part[-1].isspace():
                    continue  # and on past it
                n, tokens = n + _segment_words("o", size, alnum, after_dense, False), tokens[1:]
            elif kind == "o":
                n += _segment_words("o", size, alnum, after_dense, False)
            if tokens and not part[-1].isspace():  # the last token may go on into the next chunk
                n += len(tokens) - 1
                kind, alnum, after_dense = "o", _ALNUM.search(tokens[-1]) is not None, False
            else:
                n, kind = n + len(tokens), "w"
            continue
        for m in _SEGMENT.finditer(part):
            k, length = m.lastgroup, m.end() - m.start()
            if k == kind:  # the segment cut by the chunk boundary goes on: one segment, counted once
                size += length
                alnum = alnum or (k == "o" and _ALNUM.search(m.group()) is not None)
                continue
            n += _segment_words(kind, size, alnum, after_dense, k in _DENSE_RATE)
            kind, size, after_dense = k, length, kind in _DENSE_RATE
            alnum = k == "o" and _ALNUM.search(m.group()) is not None
    return n + _segment_words(kind, size, alnum, after_dense, False)


def _segment_words(kind: str, size: int, alnum: bool, after_dense: bool, before_dense: bool) -> int:
    """Words in one finished segment of :func:`count_words`: whitespace (``w``), a dense-script run
    of ``size`` characters, or other text (``o``), which counts 1 unless it is bare punctuation
    glued to a dense run."""
    if kind in _DENSE_RATE:
        per, chars = _DENSE_RATE[kind]
        return -(-size * per // chars)  # ceil(size / (chars / per))
    if kind == "o":
        return 1 if alnum or not (after_dense or before_dense) else 0
    return 0


def _nonprintable(text: str) -> int:
    return sum(1 for c in text if (unicodedata.category(c) in ("Cc", "Cf", "Co", "Cs", "Cn") and c not in "\t\n\r")
               or c == "\ufffd")


def _language(texts: Sequence[str]) -> tuple[list[str | None], list[float | None]]:
    from lakecurate.names import language_identifier

    ident = language_identifier()
    if ident is None:  # the signal is optional: without the library the column stays null
        return [None] * len(texts), [None] * len(texts)
    langs, probs = [], []
    for t in texts:
        if t and t.strip():
            lang, p = ident.classify(t)
            langs.append(lang)
            probs.append(float(p))
        else:
            langs.append(None)
            probs.append(None)
    return langs, probs


CAPTION_FIELDS = [
    pa.field("cap_words", pa.int32()), pa.field("cap_chars", pa.int32()), pa.field("cap_filename", pa.bool_()),
    pa.field("cap_url", pa.bool_()), pa.field("cap_boilerplate", pa.bool_()), pa.field("cap_max_repeat", pa.int32()),
    pa.field("cap_nonprintable", pa.int32()), pa.field("cap_emails", pa.int32()), pa.field("cap_phones", pa.int32()),
    pa.field("cap_lang", pa.string()), pa.field("cap_lang_prob", pa.float32()),
]


def caption_signals(captions: Sequence[str | None]) -> pa.Table:
    """Caption signals for a batch of captions (null caption: null signals).

    >>> t = caption_signals(["IMG_1234.JPG", "a dog!!!!!!! see www.dogs.com", None])
    >>> t.column("cap_filename").to_pylist(), t.column("cap_url").to_pylist(), t.column("cap_max_repeat").to_pylist()
    ([True, False, None], [False, True, None], [1, 7, None])
    """
    cols: dict[str, list] = {f.name: [] for f in CAPTION_FIELDS}
    heads = []
    for full in captions:
        if full is None:
            for name in cols:
                if name not in ("cap_lang", "cap_lang_prob"):
                    cols[name].append(None)
            heads.append(None)
            continue
        # counts over the whole caption; the patterns read its head (SIGNAL_CHARS)
        c = full[:SIGNAL_CHARS]
        heads.append(c)
        cols["cap_words"].append(count_words(full))
        cols["cap_chars"].append(len(full))
        cols["cap_filename"].append(bool(_FILENAME.match(c)))
        no_mail = _EMAIL.sub(" ", c) if "@" in c else c  # no "@", no e-mail: skip the pattern's slow scan
        cols["cap_url"].append(bool(_URL.search(no_mail)) and not _FILENAME.match(c))  # an e-mail is not a URL
        cols["cap_boilerplate"].append(bool(_BOILERPLATE.search(c)))
        cols["cap_max_repeat"].append(max((len(m.group()) for m in _REPEAT.finditer(c)), default=1 if c else 0))
        cols["cap_nonprintable"].append(_nonprintable(c))
        # contacts are counted over the whole caption, as redact finds them (in linear time, by pieces):
        # the pii step must not keep a caption whose e-mail comes after its first SIGNAL_CHARS
        emails = phones = 0
        for piece in (_pieces(full, REDACT_PIECE) if len(full) > REDACT_PIECE else [full]):
            emails += len(_EMAIL.findall(piece)) if "@" in piece else 0
            phones += len(phone_numbers(_EMAIL.sub(" ", piece) if "@" in piece else piece))
        cols["cap_emails"].append(emails)
        cols["cap_phones"].append(phones)
    cols["cap_lang"], cols["cap_lang_prob"] = _language([c or "" for c in heads])
    return pa.table({f.name: pa.array(cols[f.name], f.type) for f in CAPTION_FIELDS})


# --------------------------------------------------------------------------- image signals
_HASH_SIZE, _DCT_SIZE, _WORK_SIDE = 8, 32, 128


def _dct_matrix(n: int) -> np.ndarray:
    k, i = np.arange(n)[:, None], np.arange(n)[None, :]
    return np.cos(np.pi * (2 * i + 1) * k / (2 * n)).astype(np.float32)


_DCT = _dct_matrix(_DCT_SIZE)
_BITS = np.uint64(1) << np.arange(63, -1, -1, dtype=np.uint64)  # first coefficient -> highest bit
# Mirroring an image left-right multiplies horizontal frequency k by (-1)^k.
_MIRROR = np.where(np.arange(_HASH_SIZE) % 2, -1.0, 1.0).astype(np.float32)


def phash_pixels(gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """pHash of B grayscale 32x32 images (B x 32 x 32) and of their mirror images: two uint64 arrays.

    The 2-D DCT's top-left 8 x 8 coefficients, each bit set when above their median (the pHash of
    imagehash/Zauner 2010). The mirror's hash comes from the same DCT with odd horizontal
    frequencies negated, so flips cost no second decode.

    >>> g = np.random.default_rng(0).random((1, 32, 32)).astype(np.float32)
    >>> h, hf = phash_pixels(g)
    >>> bool(h[0] == phash_pixels(g[:, :, ::-1].copy())[1][0])  # the mirror's hash = the hash of the mirror
    True
    """
    x = np.asarray(gray, dtype=np.float32)
    low = (_DCT[:_HASH_SIZE] @ x @ _DCT[:_HASH_SIZE].T).reshape(len(x), -1)
    # A flat picture's (or a flat direction's) coefficients are float rounding noise, ~1e-8 of the
    # mean, whose signs follow the BLAS build: a white square hashed to 1 set bit on one machine and
    # 32 on another (and was compared as a photo). Noise is 0; detail is far above 1e-6 of the mean.
    low[np.abs(low) <= 1e-6 * np.abs(low[:, :1])] = 0
    mirrored = (low.reshape(-1, _HASH_SIZE, _HASH_SIZE) * _MIRROR).reshape(len(x), -1)

    def pack(c: np.ndarray) -> np.ndarray:
        bits = c > np.median(c, axis=1, keepdims=True)
        return (bits.astype(np.uint64) * _BITS).sum(axis=1, dtype=np.uint64)

    return pack(low), pack(mirrored)


def sharpness(gray: np.ndarray) -> float:
    """How sharp the edges are, whatever the exposure: in each of 4 directions (across, down, both
    diagonals) the energy of the second differences over that of the first differences, the least of
    the 4; 0 (no edge at all) .. 4 (every neighbour alternates). Low for blurred images.

    Why this measure (``scripts/eval_image_quality.py``, docs/benchmarks.md): the variance of the
    Laplacian it replaces scales with the square of contrast, so a sharp dark or fogged photo read as
    blurred, and at a threshold that drops 2% of clean photos it caught a Gaussian blur of radius 1.5
    (at the original size) in 55% of photos. The ratio is the spectrum's mean squared frequency along one direction, so it
    does not move when the gray levels are scaled or shifted, and blur moves energy to low frequencies
    wherever the edges are. The least of 4 directions catches motion blur, which smears one direction
    only (a Laplacian sums both axes; Crete-Roffet's blur effect looks across and down only).
    Directions with no gradient at all are left out. Noise adds high frequencies: a blurred photo
    with strong grain reads sharper.

    >>> flat = np.full((20, 20), 128.0); edges = np.tile([0.0, 255.0], (20, 10))
    >>> sharpness(flat), sharpness(edges), sharpness(edges * 0.2 + 10)
    (0.0, 4.0, 4.0)
    """
    g = np.asarray(gray, dtype=np.float32)
    if g.shape[0] < 3 or g.shape[1] < 3:
        return 0.0
    ratios = []
    for d1, second in ((g[:, 1:] - g[:, :-1], lambda d: d[:, 1:] - d[:, :-1]), (g[1:] - g[:-1], lambda d: d[1:] - d[:-1]),
                       (g[1:, 1:] - g[:-1, :-1], lambda d: d[1:, 1:] - d[:-1, :-1]),
                       (g[1:, :-1] - g[:-1, 1:], lambda d: d[1:, :-1] - d[:-1, 1:])):
        e1 = float(np.einsum("ij,ij->", d1, d1)) / d1.size  # einsum: the mean square without a temporary
        if e1 > 1e-6:  # no gradient this way (a flat image, stripes along it): no evidence of blur either
            d2 = second(d1)
            ratios.append(float(np.einsum("ij,ij->", d2, d2)) / d2.size / e1)
    return min(ratios) if ratios else 0.0


def entropy(gray: np.ndarray) -> float:
    """Shannon entropy (bits) of the 256-bin histogram: 0 for a uniform image, <= 8."""
    counts = np.bincount(np.asarray(gray, dtype=np.uint8).ravel(), minlength=256)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())


def colorfulness(rgb: np.ndarray) -> float:
    """Hasler & Suesstrunk (2003) colourfulness: ~0 for grayscale, ~15 dull, >= 50 vivid."""
    r, g, b = (np.asarray(rgb[..., k], dtype=np.float32) for k in range(3))
    rg, yb = r - g, 0.5 * (r + g) - b
    return float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))


_LEVELS = np.arange(256, dtype=np.float64)
IMAGE_FIELDS = [
    pa.field("phash", pa.uint64()), pa.field("phash_flip", pa.uint64()), pa.field("img_sharpness", pa.float32()),
    pa.field("img_entropy", pa.float32()), pa.field("img_colorfulness", pa.float32()),
    pa.field("img_brightness", pa.float32()), pa.field("img_contrast", pa.float32()),
]


def image_signals_one(data: bytes | None) -> tuple[np.ndarray, float, float, float, float, float] | None:
    """(32x32 gray for the hash, sharpness, entropy, colourfulness, brightness, contrast) of one
    encoded image, or None."""
    from PIL import Image

    if not data:
        return None
    try:
        with open_header(data) as im:
            if too_large(im):
                return None
            im.draft("RGB", (_WORK_SIDE, _WORK_SIDE))  # JPEG: decode at 1/2..1/8 scale, >= 128 px
            im.seek(0)
            rgb = eight_bit(exif_upright(im)).convert("RGB")  # hashed as seen: a sideways-tagged photo equals its upright twin
            w, h = rgb.size
            scale = _WORK_SIDE / min(w, h)
            if scale < 1:  # the same working resolution for every image: sharpness depends on scale
                rgb = rgb.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BOX)
            gray = rgb.convert("L")
            # The hash is of the picture inside a uniform surround (bars, a border, a page's margins):
            # hashed whole, different photos pasted small on one page layout hashed like the page.
            small = hash_pixels(gray)
            g = np.asarray(gray)
            # colourfulness is a statistic of the whole image: every other pixel gives the same figure, 4x cheaper
            # exposure and contrast apart from sharpness: a dark photo is dropped (if at all) as dark, not as blurred
            hist = np.bincount(g.ravel(), minlength=256)  # mean and std from the histogram: cheaper than from pixels
            mean = float(hist @ _LEVELS) / g.size
            std = float(np.sqrt(max(float(hist @ _LEVELS ** 2) / g.size - mean * mean, 0.0)))
            return small, sharpness(g), entropy(g), colorfulness(np.asarray(rgb)[::2, ::2]), mean / 255, std / 255
    except Exception:  # Pillow raises many types on bad data; the row just gets no signals
        return None


def image_signals(blobs: Sequence[bytes | None]) -> pa.Table:
    """Image signals for a batch of encoded images (undecodable: null)."""
    got = [image_signals_one(b) for b in blobs]
    valid = np.array([g is not None for g in got], dtype=bool)
    h = np.zeros(len(blobs), np.uint64)
    hf = np.zeros(len(blobs), np.uint64)
    if valid.any():
        h[valid], hf[valid] = phash_pixels(np.stack([g[0] for g in got if g is not None]))
    mask = ~valid

    def floats(k: int) -> pa.Array:
        return pa.array(np.array([g[k] if g is not None else 0.0 for g in got], np.float32), pa.float32(), mask=mask)

    return pa.table({"phash": pa.array(h, pa.uint64(), mask=mask), "phash_flip": pa.array(hf, pa.uint64(), mask=mask),
                     "img_sharpness": floats(1), "img_entropy": floats(2), "img_colorfulness": floats(3),
                     "img_brightness": floats(4), "img_contrast": floats(5)})


def surround_box(gray: np.ndarray, tol: float = 2.0, min_side: int = 8) -> tuple[float, float, float, float] | None:
    """The picture inside ``gray``'s uniform surround (letterbox or pillarbox bars, a plain border, a
    page's margins and header) as a (left, top, right, bottom) box in pixels, or None where there is
    no surround (or the picture is blank). Each side's leading lines (rows or columns) that are each
    one colour (std <= ``tol``) and the colour of that side's first line (within 2 * ``tol``) are
    the surround, trimmed in turns until nothing changes: a photo pasted on a white page under a grey
    header bar is found once the header is gone (the white columns beside it are uniform only then).
    A line across a trimmed side is judged without its pixel next to that side (the picture's edge
    resampled with the surround: the columns of a letterboxed photo whose sides are a plain
    background stopped there). ``tol`` is tight: a photo's smooth background (a wall, a sky) has
    lines of std 3-4 at the hash's working size, and trimming into it depended on how a copy was
    resampled.

    Then each side of a surround at least 2 lines thick goes on through up to 6 lines (at most 15%
    of the picture) that differ from the surround's colour by less than a tenth of what the
    picture's lines typically do: the ringing a JPEG leaves around the picture's edge, which in a
    copy under the working size (hashed at its own size) spread 4-8 pixels into the bars. Last, the
    edge moves by a fraction of a pixel: the first line inside is the picture's edge resampled with
    the surround, its share found by least squares against the next line. Without that, a page
    posted again smaller found its photo a pixel larger or smaller than the original did, which at
    40 pixels moved the photo's hash 10-18 bits.

    >>> g = np.full((60, 80), 255.0); g[:6] = 200.0  # a white page with a grey header bar
    >>> g[20:40, 10:34] = np.arange(480).reshape(20, 24) % 7 * 30  # the photo
    >>> [round(v) for v in surround_box(g)]  # (the edges of this pattern move by 0.1-0.2 pixel)
    [10, 20, 34, 40]
    >>> surround_box(np.full((30, 30), 9.0)) is None  # blank: hashed whole
    True
    """
    g = np.asarray(gray, np.float32)

    def lead(mean: np.ndarray, flat: np.ndarray) -> int:
        ok = flat & (np.abs(mean - mean[0]) <= 2 * tol)
        return len(ok) if ok.all() else int(np.argmin(ok))

    h, w = g.shape
    top, bottom, left, right = 0, h, 0, w
    while True:
        box = g[top:bottom, left:right]
        across = box[:, (1 if left else 0):box.shape[1] - (1 if right < w else 0)]  # rows, without their ends
        down = box[(1 if top else 0):box.shape[0] - (1 if bottom < h else 0)]  # columns, likewise
        rows, cols = across.mean(axis=1), down.mean(axis=0)
        rflat = ((across - rows[:, None]) ** 2).mean(axis=1) <= tol * tol  # std <= tol, one pass a direction
        cflat = ((down - cols) ** 2).mean(axis=0) <= tol * tol
        t, b, lf, r = lead(rows, rflat), lead(rows[::-1], rflat[::-1]), lead(cols, cflat), lead(cols[::-1], cflat[::-1])
        if t + b + lf + r == 0:
            break
        if box.shape[0] - t - b < min_side or box.shape[1] - lf - r < min_side:  # blank or nearly
            return None
        top, bottom, left, right = top + t, bottom - b, left + lf, right - r
    if (top, bottom, left, right) == (0, h, 0, w):
        return None

    def inward(lines: np.ndarray, outside: np.ndarray, thick: int) -> float:
        """How far in from the box's side the picture starts: ``lines`` from that side in,
        ``outside`` the last line of the surround, ``thick`` lines of it."""
        colour = outside.mean()
        off = np.abs(lines - colour).mean(axis=1)
        k, most = 0, min(int(0.15 * len(lines)), 6) if thick >= 2 else 0
        while k < most and off[k] < 0.1 * float(np.median(off)):  # ringing, not picture
            k += 1
        e, i = lines[k] - colour, lines[k + 1] - colour
        full = float((i * i).sum())
        # A line inside that hardly differs from the surround (stars on a black sky) says nothing of it
        return k + (float(1 - np.clip((e * i).sum() / full, 0, 1)) if full > (4 * tol) ** 2 * len(i) else 0.0)

    inside = g[top:bottom, left:right]
    return (left + (inward(inside.T, g[top:bottom, left - 1], left) if left else 0),
            top + (inward(inside, g[top - 1, left:right], top) if top else 0),
            right - (inward(inside.T[::-1], g[top:bottom, right], w - right) if right < w else 0),
            bottom - (inward(inside[::-1], g[bottom, left:right], h - bottom) if bottom < h else 0))


def hash_pixels(gray: Image.Image) -> np.ndarray:
    """The 32 x 32 float gray a pHash is taken from: the picture inside ``gray``'s uniform surround
    (:func:`surround_box`; all of it where there is none), box-filtered."""
    from PIL import Image

    box = surround_box(np.asarray(gray, np.float32))
    return np.asarray(gray.resize((_DCT_SIZE, _DCT_SIZE), Image.Resampling.BOX, box=box), dtype=np.float32)


def copy_gray(data: bytes | None) -> np.ndarray | None:
    """The 32x32 gray the copy hashes are taken from: reduced decode, EXIF upright, surround trimmed."""
    from PIL import Image

    if not data:
        return None
    try:
        with open_header(data) as im:
            if too_large(im):
                return None
            im.draft("RGB", (_WORK_SIDE, _WORK_SIDE))
            im.seek(0)
            gray = eight_bit(exif_upright(im)).convert("L")
            w, h = gray.size
            scale = _WORK_SIDE / min(w, h)
            if scale < 1:
                gray = gray.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BOX)
            return hash_pixels(gray)
    except Exception:  # undecodable: no hashes
        return None


def copy_hashes(blobs: Sequence[bytes | None]) -> pa.Table:
    """``copy_hashes``: 8 pHashes per image, of the image without its
    uniform surround (:func:`surround_box`) turned by 0, 90, 180 and 270
    degrees, each with its mirror; a turned, mirrored or letterboxed copy shares one with its original."""
    got = [copy_gray(b) for b in blobs]
    valid = np.array([g is not None for g in got], bool)
    out = np.zeros((len(blobs), 8), np.uint64)
    if valid.any():
        small = np.stack([g for g in got if g is not None])
        for k in range(4):
            h, hf = phash_pixels(np.ascontiguousarray(np.rot90(small, k, axes=(1, 2))))
            out[valid, 2 * k], out[valid, 2 * k + 1] = h, hf
    values = pa.array(out.reshape(-1), pa.uint64())
    arr = pa.FixedSizeListArray.from_arrays(values, 8)
    if not valid.all():
        arr = pa.array(arr.to_pylist(), COPY_FIELDS[0].type, mask=~valid)
    return pa.table({"copy_hashes": arr})


COPY_FIELDS = [pa.field("copy_hashes", pa.list_(pa.uint64(), 8))]


def phash_bytes(blobs: Sequence[bytes | None]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(phash, phash_flip, valid) for a list of encoded images."""
    t = image_signals(blobs)
    valid = ~np.asarray(t.column("phash").is_null().to_numpy(zero_copy_only=False), bool)
    return (t.column("phash").fill_null(0).to_numpy(), t.column("phash_flip").fill_null(0).to_numpy(), valid)


# --------------------------------------------------------------------------- the stages (on lakecurate.runner)
IMAGE_BATCH = 256
_PHONE_CONFIG = {"library": "phonenumbers", "regions": list(PHONE_REGIONS), "leniency": PHONE_LENIENCY, "isbn": "excluded"}
_TRIM = ("uniform surround: edge lines of std <= 2 (without the pixel by a trimmed side) and the side's first colour "
         "(+-4), in turns until none; then up to 6 lines off the colour by < 0.1 of the picture's median; sub-pixel edge")
IMAGE_CONFIG = {"decode": f"draft RGB >= {_WORK_SIDE}px, box to {_WORK_SIDE}px short side, 16-bit / 257", "hash": "dct-phash 32->8x8",
                "trim": _TRIM, "sharpness": "min over 4 directions of mean(d2^2) / mean(d1^2)", "entropy": "gray histogram",
                "colorfulness": "hasler-suesstrunk", "brightness": "mean gray / 255", "contrast": "std gray / 255"}
CAPTION_CONFIG = {"words": "whitespace-separated; runs of Han/kana 1 per 1.5 chars, of Thai/Lao/Khmer/Myanmar 1 per 4, "
                           "rounded up; punctuation glued to such a run 0",
                  "dense_scripts": {k: [r.encode("unicode_escape").decode(), w, c] for k, (r, w, c) in DENSE_SCRIPTS.items()},
                  "boilerplate": list(BOILERPLATE), "boilerplate_whole_words": list(WHOLE_WORDS), "filename": _FILENAME.pattern, "url": _URL.pattern,
                  "email": _EMAIL.pattern, "phone": _PHONE_CONFIG, "language": "py3langid norm_probs"}
REDACT_CONFIG = {"email": _EMAIL.pattern, "phone": _PHONE_CONFIG}
COPY_CONFIG = {"decode": f"draft gray >= {_WORK_SIDE}px, box to {_WORK_SIDE}px short side, 16-bit / 257",
               "trim": _TRIM, "hash": "dct-phash 32->8x8 of 4 turns x mirror"}


def caption_batch(state: Any, rows: Rows) -> pa.Table:
    """The caption signals stage's batch: :func:`caption_signals` of the ``caption`` column."""
    return caption_signals(rows.columns.column("caption").to_pylist())


class RedactBatch:
    """The redaction stage's batch: ``caption`` with e-mails and phone numbers replaced, as ``column``."""

    def __init__(self, column: str):
        self.column = column

    def __call__(self, state: Any, rows: Rows) -> pa.Table:
        caps = rows.columns.column("caption").to_pylist()
        return pa.table({self.column: pa.array([redact(c) for c in caps], pa.string())})


IMAGE_STAGE = RowStage("signals-image", IMAGE_FIELDS, IMAGE_CONFIG, ["image"], batch=runner.readers_output, image=image_signals,
                       batch_size=IMAGE_BATCH, readers_do_all=True, desc="image signals", unit="img", fix=signals_fix)
COPY_STAGE = RowStage("signals-copy", COPY_FIELDS, COPY_CONFIG, ["image"], batch=runner.readers_output, image=copy_hashes,
                      batch_size=IMAGE_BATCH, readers_do_all=True, desc="copy hashes", unit="img", fix=signals_fix)
CAPTION_STAGE = RowStage("signals-caption", CAPTION_FIELDS, CAPTION_CONFIG, ["caption"], batch=caption_batch,
                         desc="caption signals", fix=signals_fix)


def redact_stage(column: str = "caption_redacted") -> RowStage:
    return RowStage("signals-redact", [pa.field(column, pa.string())], REDACT_CONFIG, ["caption"],
                    batch=RedactBatch(column), desc="redact", fix=signals_fix)


def compute_image_signals(lake: "Store", *, workers: int | None = None, progress: bool | None = None,
                          engine: str = "local", recompute: bool = False) -> runner.RunReport:
    """Fill the image signal columns for every fragment that lacks them (or holds stale ones);
    returns the run's report.

    The reduced decode runs in spawned reader processes (``workers``; None: one per core, up to 8,
    when there are more than a few batches). A killed run resumes from its last finished batch.
    """
    return runner.run(lake, IMAGE_STAGE, engine=engine, workers=workers, progress=progress, recompute=recompute)


def compute_copy_hashes(lake: "Store", *, workers: int | None = None, progress: bool | None = None,
                        engine: str = "local", recompute: bool = False) -> runner.RunReport:
    """Fill ``copy_hashes`` (dedup's ``copy`` method) for every fragment that lacks it; returns the run's report."""
    return runner.run(lake, COPY_STAGE, engine=engine, workers=workers, progress=progress, recompute=recompute)


def compute_caption_signals(lake: "Store", *, progress: bool | None = None, engine: str = "local",
                            recompute: bool = False) -> runner.RunReport:
    """Fill the caption signal columns for every fragment that lacks them or holds stale ones
    (``recompute``: every fragment, the columns dropped and declared again); returns the run's report."""
    return runner.run(lake, CAPTION_STAGE, engine=engine, progress=progress, recompute=recompute)


def compute_redacted(lake: "Store", column: str = "caption_redacted", *, engine: str = "local",
                     recompute: bool = False) -> runner.RunReport:
    """Add ``caption_redacted`` (e-mails and phone numbers replaced); ``caption`` is never modified."""
    return runner.run(lake, redact_stage(column), engine=engine, progress=False, recompute=recompute)
