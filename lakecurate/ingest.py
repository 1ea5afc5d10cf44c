"""Ingest image-text pairs into a lake, losing nothing.

Three kinds of source, each turned into a stream of :class:`Candidate` (a pair not yet read):

* a **folder** of images with same-stem caption sidecars (``cat.jpg`` + ``cat.txt`` or ``cat.json``);
* a **manifest** (CSV/TSV, Parquet, Arrow, JSONL, or a Lance table's folder) with an image path (or
  bytes) column and a caption column; a Parquet/Arrow file named without its extension is known by its bytes;
* **WebDataset** tar shards as img2dataset writes them (``key.jpg`` + ``key.txt`` / ``key.json``).

Each candidate is read and probed in a thread pool (file reads, hashing and Pillow decoding release
the GIL) by :func:`make_row`, a pure function that never raises: every problem becomes a reason code
in ``ingest_flags`` (see :data:`lakecurate.schema.REASONS`). Rows are committed in batches, so memory
stays bounded and a killed run keeps what it committed; ids are ``blake2b(source, key)``, so running
the same ingest again skips what is already there.
"""

from __future__ import annotations

import csv
import errno
import functools
import glob
import itertools
import hashlib
import io
import json
import math
import os
import shlex
import stat
import tarfile
import time
import zlib
import warnings
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import pyarrow as pa
from PIL import Image, UnidentifiedImageError

from lakecurate.engines import check_engine
from lakecurate.errors import IngestError
from lakecurate.images import MAX_DECODE_PIXELS, orientation_of
from lakecurate.options import canonical_uri, flag, path, spell, words
from lakecurate.options import given as given_option  # ("given" names what a caller gave, below)
from lakecurate.progress import progress_bar
from lakecurate.schema import PAIRS_SCHEMA, REASONS, severity
from lakecurate.sqlcheck import in_list
from lakecurate.store import is_lake_folder, is_lance_table

if TYPE_CHECKING:
    from lakecurate.store import Store

IMAGE_EXTS = {
    ".jpg", ".jpeg", ".jfif", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff",
    ".ppm", ".pgm", ".pbm", ".avif", ".heic", ".heif", ".jp2", ".ico",
}  # fmt: skip
SIDECAR_EXTS = {".txt", ".json"}
METADATA_EXTS = {".xmp", ".aae", ".thm", ".md5", ".sha1", ".sha256"}  # beside a photo, never the photo itself
IMAGE_COLUMNS = ("image", "image_path", "path", "file", "filename", "file_name", "filepath", "url", "image_url")
CAPTION_COLUMNS = ("caption", "text", "txt", "alt", "title", "description")
JSON_CAPTION_KEYS = ("caption", "text", "txt", "alt", "title")
_ARROW_EXTS = {".arrow", ".feather", ".ipc"}  # Arrow IPC files/streams (Hugging Face datasets.save_to_disk)
MANIFEST_EXTS = {".csv", ".tsv", ".parquet", ".pq", ".jsonl", ".ndjson"} | _ARROW_EXTS

_MAGIC = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"BM", b"II*\x00", b"MM\x00*")
_HIGH_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I", "F"}
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}


@dataclass(frozen=True)
class IngestOptions:
    """Limits and parallelism of one ingest. Defaults suit web-scale image-text data."""

    max_pixels: int = MAX_DECODE_PIXELS  # Pillow's own bomb limit, and the image stages'
    max_bytes: int = 64 * 2**20
    max_caption_chars: int = 2000
    # "header": parse the header and check the end-of-image marker (cheap, catches truncation);
    # "decode": also decode (JPEG at 1/8 scale), catching corrupt data at ~5x the cost.
    verify: str = "header"
    workers: int = min(8, os.cpu_count() or 1)  # more threads than cores only add contention
    batch_rows: int = 512
    commit_rows: int = 32_768
    commit_bytes: int = 512 * 2**20


@dataclass
class Candidate:
    """One pair before it is read: where its image and caption are, and what is already known."""

    source: str
    key: str
    path: str | None = None  # image file to read in a worker
    data: bytes | None = None  # image bytes already in hand (tar members)
    image_uri: str | None = None
    caption: bytes | str | None = None  # raw caption (.txt bytes, manifest cell)
    sidecar_json: bytes | None = None  # raw JSON sidecar
    caption_path: str | None = None  # .txt / .json sidecars, read in a worker like the image
    json_path: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    sidecar_refused: bool = False  # a sidecar escaped the root and was not read: no caption_missing flag


@dataclass
class IngestReport:
    """What one ingest did. ``flags`` counts every reason code among the written rows."""

    lake: str
    source: str
    kind: str
    seen: int = 0
    written: int = 0
    skipped_existing: int = 0
    skipped_errors: int = 0  # of skipped_existing: rows whose ingest_status is 'error' (see retry_errors)
    replaced: int = 0  # error rows replaced in place by retry_errors
    markers_removed: int = 0  # rows saying where a shard broke, removed once it reads whole (of errors_removed)
    errors_removed: int = 0  # error rows the source no longer gives (fixed under another key, or gone), removed
    errors_unchanged: int = 0  # retry_errors: error rows read again that are the same error (not rewritten)
    content_present: int = 0  # new pairs whose image bytes (content_hash) were already in the lake
    changed: int = 0  # of skipped_existing: pairs whose caption or image size in the source differs from their row
    changed_keys: list[str] = field(default_factory=list)  # the first few of them
    updated: int = 0  # of written: changed pairs read again and rewritten in place (update=True)
    gone: int = 0  # rows of the source that its reading no longer gives (files deleted): kept, only counted
    gone_keys: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # what a user should know: changed pairs not taken, gone ones
    status: Counter = field(default_factory=Counter)
    flags: Counter = field(default_factory=Counter)
    ignored_files: list[str] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)
    seconds: float = 0.0

    def reason_rows(self) -> list[tuple[str, str, int]]:
        """(reason, severity, count) rows, most severe and most frequent first."""
        rows = [(r, REASONS[r][0], n) for r, n in self.flags.items()]
        return sorted(rows, key=lambda t: (t[1] != "error", -t[2], t[0]))

    def to_dict(self) -> dict[str, Any]:
        return {
            "lake": self.lake,
            "source": self.source,
            "kind": self.kind,
            "seen": self.seen,
            "written": self.written,
            "skipped_existing": self.skipped_existing,
            "skipped_errors": self.skipped_errors,
            "replaced": self.replaced,
            "markers_removed": self.markers_removed,
            "errors_removed": self.errors_removed,
            "errors_unchanged": self.errors_unchanged,
            "content_present": self.content_present,
            "changed": self.changed,
            "changed_keys": self.changed_keys,
            "updated": self.updated,
            "gone": self.gone,
            "gone_keys": self.gone_keys,
            "warnings": self.warnings,
            "status": dict(self.status),
            "flags": dict(self.flags),
            "ignored_files": [_shown_name(f) for f in self.ignored_files],
            "versions": self.versions,
            "seconds": round(self.seconds, 3),
        }


# --------------------------------------------------------------------------- pure per-pair work
def pair_id(source: str, key: str) -> str:
    """Stable id of a pair: 16 hex chars of blake2b over its source and key."""
    return hashlib.blake2b(f"{source}\x00{key}".encode("utf-8", "surrogateescape"), digest_size=8).hexdigest()


def caption_cell(raw: Any) -> tuple[bytes | str | None, list[str], list[str]]:
    """What a manifest or sidecar cell holds as the caption: (text or bytes, flags, other captions).

    A list of texts (the Flickr30k layout on Hugging Face: five captions a row) gives its first
    non-empty text; the others come back to be kept in ``meta.other_captions``. A number is kept as
    its text and flagged ``caption_not_text``; a NaN is no caption; anything else (an object, a list
    of non-texts) is flagged and left out."""
    if raw is None or isinstance(raw, (str, bytes)):
        return raw, [], []
    if isinstance(raw, float) and raw != raw:  # NaN: pandas' and JSON writers' "no value"
        return None, [], []
    if isinstance(raw, (bool, int, float)):
        return str(raw), ["caption_not_text"], []
    if isinstance(raw, (list, tuple)) and raw and all(isinstance(v, (str, bytes)) for v in raw):
        texts = [v.decode("utf-8", errors="replace") if isinstance(v, bytes) else v for v in raw]
        first = next((i for i, t in enumerate(texts) if t.strip()), 0)
        return raw[first], ["caption_list"], texts[:first] + texts[first + 1:]
    return None, ["caption_not_text"], []


def decode_caption(raw: bytes | str | None, max_chars: int) -> tuple[str | None, list[str]]:
    """Caption text and flags. Undecodable bytes are replaced (and flagged), never dropped."""
    if raw is None:
        return None, ["caption_missing"]
    if not isinstance(raw, (str, bytes)):
        raise TypeError(f"a caption is text or bytes, not {type(raw).__name__} (see caption_cell)")
    flags = []
    if isinstance(raw, bytes) and raw[:2] in (b"\xff\xfe", b"\xfe\xff"):  # a UTF-16 file (Windows' "Unicode")
        try:
            raw = raw.decode("utf-16")
        except UnicodeDecodeError:
            pass
    if isinstance(raw, bytes):
        raw = raw.removeprefix(b"\xef\xbb\xbf")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("utf-8", errors="replace")
            flags.append("caption_not_utf8")
    else:
        text = raw
    text = text.strip()
    if not text:
        flags.append("caption_empty")
    elif len(text) > max_chars:
        flags.append("caption_too_long")
    return text, flags


def truncated_trailer(data: bytes, fmt: str | None) -> bool:
    """True when a JPEG/PNG/WebP/GIF lacks its end marker: the file was cut short.

    Looks only at the last few KiB, so it costs nothing next to reading the file. (Inside JPEG
    entropy-coded data 0xFF is always stuffed, so FF D9 appears only as a real marker.)
    """
    tail = data[-4096:]
    if fmt == "JPEG":
        return b"\xff\xd9" not in tail and not _jpeg_ends_before_trailer(data)
    if fmt == "PNG":
        return b"IEND" not in tail
    if fmt == "WEBP" and data[:4] == b"RIFF":
        return int.from_bytes(data[4:8], "little") + 8 > len(data)
    if fmt == "GIF":
        return b"\x3b" not in tail[-64:]
    return False


def _jpeg_ends_before_trailer(data: bytes) -> bool:
    """Whether a JPEG's end marker comes after its first scan although not at the end of the file:
    bytes appended after a whole JPEG (a phone's motion photo holds its video there). The segments
    before the scan are walked, not searched, since an EXIF thumbnail has an end marker of its own."""
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return False  # not a segment: a broken header (Pillow decides what it is)
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
        elif marker == 0xDA:  # start of scan: the end marker, if any, comes after it
            return data.find(b"\xff\xd9", i) >= 0
        elif marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
        else:
            i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    return False


def probe_image(data: bytes, max_pixels: int, verify: str = "header") -> tuple[dict[str, Any], list[str], str]:
    """Read an image's header (size, format, mode) and check that it is whole.

    Returns ``(info, flags, detail)``. The header gives width and height without a decode and the
    end-of-image marker shows truncation; ``verify="decode"`` also decodes the image (JPEG at 1/8
    scale) to catch corrupt data, at about five times the cost.
    """
    if not data:
        return {}, ["file_empty"], "0 bytes"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        return {}, ["decompression_bomb"], str(exc)
    except UnidentifiedImageError:
        known = data.startswith(_MAGIC) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")
        return {}, ["image_corrupt" if known else "image_unsupported"], "Pillow cannot identify the bytes"
    except Exception as exc:  # Pillow raises many types (SyntaxError, struct.error, ...) on bad headers
        return {}, ["image_corrupt"], f"{type(exc).__name__}: {exc}"

    width, height = im.size
    info = {"width": width, "height": height, "format": im.format, "mode": im.mode}
    flags: list[str] = []
    if width * height > max_pixels:  # (before the orientation: a PNG's EXIF is looked for by decoding it)
        return info, ["decompression_bomb"], f"{width}x{height} = {width * height} pixels > {max_pixels}"
    try:
        if (turn := orientation_of(im)) != 1:  # embed and signals read the image turned upright (H5)
            info["orientation"] = turn
    except Exception as exc:  # a corrupt PNG: its pixels were decoded to find its EXIF, and failed
        msg = f"{type(exc).__name__}: {exc}"
        return info, ["image_truncated" if "truncated" in str(exc) else "image_corrupt"], msg
    if im.mode == "CMYK":
        flags.append("image_cmyk")
    if im.mode in _HIGH_BIT_MODES or (im.format == "PNG" and len(data) > 24 and data[24] == 16):
        flags.append("image_16bit")
    if im.mode in ("P", "PA"):
        flags.append("image_palette")
    if im.mode in _ALPHA_MODES or "transparency" in im.info:
        flags.append("image_alpha")
    detail = ""
    try:
        if getattr(im, "is_animated", False):
            flags.append("image_animated")
            im.seek(0)
        if truncated_trailer(data, im.format):
            flags.append("image_truncated")
            detail = "no end-of-image marker"
        elif verify == "decode":
            if im.format == "JPEG":
                im.draft(im.mode, (max(1, width // 8), max(1, height // 8)))
            im.load()
    except Exception as exc:
        msg = f"{type(exc).__name__}: {exc}"
        flags.append("image_truncated" if "truncated" in str(exc) else "image_corrupt")
        detail = msg
    return info, flags, detail


def _read_file(path: str, max_bytes: int) -> tuple[bytes | None, str | None, str]:
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):  # a FIFO or device would block or never end
            return None, "file_unreadable", f"{path} is not a regular file"
        size = st.st_size
        if size > max_bytes:
            return None, "file_too_large", f"{size} bytes > {max_bytes}"
        with open(path, "rb") as f:
            return f.read(), None, ""
    except FileNotFoundError:
        return None, "file_missing", f"{path} does not exist"
    except OSError as exc:
        return None, "file_unreadable", f"{type(exc).__name__}: {exc}"


def _parse_sidecar(raw: bytes) -> tuple[dict[str, Any] | None, str]:
    try:
        obj = json.loads(raw.decode("utf-8", errors="replace"))
    except ValueError as exc:
        return None, f"invalid JSON sidecar: {exc}"
    except RecursionError:  # json raises it past ~1000 levels of nesting: a bad sidecar, not a crash
        return None, "invalid JSON sidecar: nested too deeply"
    return (obj, "") if isinstance(obj, dict) else (None, "JSON sidecar is not an object")


def _finite(value: Any) -> Any:
    """``value`` with each NaN or infinite number (a sidecar's NaN, Infinity, 1e999) as its text, as a
    manifest's cell keeps it ("nan", "inf"): ``meta`` stays strict JSON, which JSON.parse and other
    strict readers refuse otherwise.

    >>> _finite({"score": float("nan"), "x": [1.5, float("-inf")]})
    {'score': 'nan', 'x': [1.5, '-inf']}
    """
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def read_caption(c: Candidate, opts: IngestOptions) -> tuple[str | None, list[str], list[str], dict[str, Any]]:
    """A candidate's caption as its row stores it, with the flags, notes and metadata found on the
    way: (caption, flags, notes, meta). Reads its sidecars, never its image; never raises."""
    flags: list[str] = []
    notes: list[str] = []
    meta = dict(c.meta)
    caption_raw, sidecar_json = c.caption, c.sidecar_json
    try:
        if c.caption_path:
            caption_raw = _read_small(c.caption_path)
        if c.json_path:
            sidecar_json = _read_small(c.json_path)
    except OSError as exc:
        flags.append("sidecar_invalid")
        notes.append(f"cannot read sidecar: {exc}")
    if sidecar_json is not None:
        obj, why = _parse_sidecar(sidecar_json)
        if obj is None:
            flags.append("sidecar_invalid")
            notes.append(why)
        else:
            if caption_raw is None:
                # a number is kept as its text (caption_not_text), as in a manifest; it was caption_missing
                caption_raw = next((obj[k] for k in JSON_CAPTION_KEYS if obj.get(k) is not None), None)
            meta.update(obj)
    caption_raw, cell_flags, others = caption_cell(caption_raw)
    if others:
        meta["other_captions"] = others
    caption, cap_flags = decode_caption(caption_raw, opts.max_caption_chars)
    cap_flags = cell_flags + [f for f in cap_flags if not (cell_flags and f == "caption_missing")]
    if c.sidecar_refused and caption_raw is None:  # path_outside_root already says why there is none
        cap_flags = [f for f in cap_flags if f != "caption_missing"]
    return caption, flags + cap_flags, notes, meta


def make_row(c: Candidate, opts: IngestOptions, now: datetime) -> dict[str, Any]:
    """Read, hash and probe one candidate into a row of the pairs table. Never raises."""
    caption, cap_flags, cap_notes, meta = read_caption(c, opts)
    flags = list(c.flags) + cap_flags
    notes = list(c.notes) + cap_notes

    data = c.data
    if data is not None and len(data) > opts.max_bytes:  # image bytes inside a manifest cell
        flags.append("file_too_large")
        notes.append(f"{len(data)} bytes > {opts.max_bytes}")
        data = None
    if data is None and c.path is not None and not flags_block_read(flags):
        data, flag, why = _read_file(c.path, opts.max_bytes)
        if flag:
            flags.append(flag)
            notes.append(why)
    info: dict[str, Any] = {}
    if data is not None:
        info, img_flags, why = probe_image(data, opts.max_pixels, opts.verify)
        flags += img_flags
        if why:
            notes.append(why)
        if info.get("orientation", 1) != 1:  # recorded; embed and signals read the image upright
            flags.append("exif_rotated")
            meta["exif_orientation"] = info["orientation"]

    try:
        meta_json = json.dumps(_finite(meta), ensure_ascii=False, default=str, sort_keys=True,
                               allow_nan=False) if meta else None
    except (ValueError, RecursionError) as exc:  # a circular or absurdly deep value: keep the row, drop the meta
        meta_json = None
        flags.append("sidecar_invalid")
        notes.append(f"metadata not stored: {type(exc).__name__}")
    # A name that is not UTF-8 (a Latin-1 file or tar member name) reaches Python as surrogates,
    # which Arrow cannot store: shown with \xNN escapes, flagged; the id keeps the name as it is.
    source, key, image_uri = (_shown_name(s) for s in (c.source, c.key, c.image_uri))
    if (source, key, image_uri) != (c.source, c.key, c.image_uri):
        flags.append("name_not_utf8")
        notes = [_shown_name(n) for n in notes]
    flags = list(dict.fromkeys(flags))  # unique, in order of discovery
    status = severity(flags)
    error = None
    if status != "ok":  # an "info" flag alone (exif_rotated) is not a problem to report
        worst = next((f for f in flags if REASONS[f][0] == "error"), next(f for f in flags if REASONS[f][0] != "info"))
        error = f"{worst}: {REASONS[worst][1]}" + (f" ({'; '.join(n for n in notes if n)})" if any(notes) else "")
    return {
        "id": pair_id(c.source, c.key),
        "image": data,
        "caption": caption,
        "source": source,
        "key": key,
        "image_uri": image_uri,
        "width": info.get("width"),
        "height": info.get("height"),
        "format": info.get("format"),
        "mode": info.get("mode"),
        "byte_size": len(data) if data is not None else None,
        "content_hash": hashlib.sha256(data).hexdigest() if data is not None else None,
        "meta": meta_json,
        "ingest_status": status,
        "ingest_flags": flags,
        "ingest_error": error,
        "ingested_at": now,
    }


def _shown_name(name: str | None) -> str | None:
    """``name`` as storable text: the surrogates an undecodable file name (os.fsdecode) or tar member
    name brings shown as ``\\xNN``; a valid name unchanged."""
    if name is None:
        return None
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def flags_block_read(flags: list[str]) -> bool:
    """True when a flag found before reading means the image must not be read at all."""
    return any(f in ("path_outside_root", "remote_uri", "image_path_missing", "image_missing") for f in flags)


# --------------------------------------------------------------------------- sources
@functools.lru_cache(maxsize=4096)
def _realdir(path: str) -> str:
    return os.path.realpath(path)


def _inside(path: str, root: str) -> bool:
    """Whether ``path`` (symlinks resolved) lies under the real path ``root``.

    Folder realpaths are cached (a manifest names thousands of files in a few folders); only the
    file itself is checked for being a link on each call.
    """
    head, tail = os.path.split(path)
    real = os.path.realpath(path) if os.path.islink(path) else os.path.join(_realdir(head), tail)
    return real == root or real.startswith(root.rstrip(os.sep) + os.sep)


def iter_folder(root: str, ignored: list[str]) -> Iterator[Candidate]:
    """Pairs of a folder: files grouped by (directory, stem); .txt/.json sidecars give captions."""
    root = os.path.realpath(root)
    for dirpath, dirnames, filenames in os.walk(root):
        # Hidden files and folders (.git, .DS_Store, macOS's ._x.jpg) are not pairs; those that look
        # like one are listed with the files left alone, not skipped without a word.
        ignored += [os.path.relpath(os.path.join(dirpath, d), root) + "/ (hidden folder)"
                    for d in sorted(dirnames) if d.startswith(".") and d not in (".git", ".cache")]
        ignored += [os.path.relpath(os.path.join(dirpath, n), root) + " (hidden)" for n in sorted(filenames)
                    if n.startswith(".") and os.path.splitext(n)[1].lower() in IMAGE_EXTS]
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        # A lake (this one kept inside the photo folder, or another) or a Lance table inside the folder
        # is not pairs: its _versions/*.json became caption sidecars without an image (error rows).
        tables = {d: what for d in dirnames if (what := _table_folder(os.path.join(dirpath, d)))}
        ignored += [os.path.relpath(os.path.join(dirpath, d), root) + f"/ ({what})" for d, what in tables.items()]
        dirnames[:] = [d for d in dirnames if d not in tables]
        for d in dirnames:
            if os.path.islink(os.path.join(dirpath, d)):
                ignored.append(os.path.relpath(os.path.join(dirpath, d), root) + "/ (symlinked folder)")
        groups: dict[str, dict[str, list[str]]] = {}
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            stem, ext = os.path.splitext(name)
            kind = "sidecar" if ext.lower() in SIDECAR_EXTS else "image" if ext.lower() in IMAGE_EXTS else "other"
            groups.setdefault(stem, {"sidecar": [], "image": [], "other": []})[kind].append(name)
        for stem, g in groups.items():
            sidecars = {os.path.splitext(n)[1].lower(): os.path.join(dirpath, n) for n in g["sidecar"]}
            # A file of unknown kind next to a caption is the image only when there is no image:
            # a.jpg + a.xmp + a.txt is one pair (the .xmp, an editor's metadata, is left out).
            guessed = [n for n in g["other"] if os.path.splitext(n)[1].lower() not in METADATA_EXTS]
            images = g["image"] or (guessed if sidecars else [])
            ignored += [os.path.relpath(os.path.join(dirpath, n), root) for n in g["other"] if n not in images]
            txt, js = sidecars.get(".txt"), sidecars.get(".json")
            if not images and not sidecars:
                continue
            if not images and js and not txt and _export_manifest(js, stem):  # (it became an image_missing row)
                ignored.append(os.path.relpath(js, root) + " (an export's manifest)")
                continue
            if not images:
                key = os.path.relpath(os.path.join(dirpath, stem), root)
                yield _folder_candidate(root, key, None, txt, js, ["image_missing"])
            for name in images:
                path = os.path.join(dirpath, name)
                key = os.path.relpath(path, root)
                flags = [] if _inside(path, root) else ["path_outside_root"]
                yield _folder_candidate(root, key, path, txt, js, flags)


def _export_manifest(path: str, stem: str) -> bool:
    """Whether ``path`` is the manifest lakecurate's export wrote (``manifest.json`` in a WebDataset
    or MDS folder, ``DEST.manifest.json`` beside a Parquet file or Lance table): not a caption."""
    if stem != "manifest" and not stem.endswith(".manifest"):
        return False
    try:
        return "source_lake" in json.loads(_read_small(path))
    except (OSError, ValueError, TypeError):
        return False


def _folder_candidate(root: str, key: str, path: str | None, txt: str | None, js: str | None, flags: list[str]) -> Candidate:
    c = Candidate(source=root, key=key.replace(os.sep, "/"), path=path, image_uri=path, flags=list(flags))
    if "path_outside_root" in c.flags:
        c.notes.append(f"{path} resolves outside {root}")
    # Sidecars inside the root are read even when the image escapes it (the caption is still this
    # pair's); a sidecar that escapes is never read.
    inside = []
    for side in (txt, js):
        if side and not _inside(side, root):
            c.flags.append("path_outside_root")
            c.notes.append(f"sidecar {side} escapes {root}")
            c.sidecar_refused = True
            side = None
        inside.append(side)
    c.caption_path, c.json_path = inside
    return c


def _read_small(path: str) -> bytes:
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise OSError(f"{path} is not a regular file")
    with open(path, "rb") as f:
        return f.read()


def _pick(names: list[str], wanted: str | None, choices: tuple[str, ...], what: str, path: str, opt: str) -> str | None:
    if wanted:
        if wanted not in names:
            raise IngestError(f"{path}: no column '{wanted}' (columns: {', '.join(names)}); fix {spell(opt)}")
        return wanted
    lower = {n.lower(): n for n in names}
    for c in choices:
        if c in lower:
            return lower[c]
    if what == "caption":
        return None
    raise IngestError(f"{path}: cannot tell which column holds the {what} (columns: {', '.join(names)}); pass {spell(opt)} NAME")


def _table_folder(path: str) -> str | None:
    """What a folder met while walking a source is when it holds no pairs: "a lakecurate lake", "a
    Lance table", else None."""
    return "a lakecurate lake" if is_lake_folder(path) else "a Lance table" if is_lance_table(path) else None


def _sniff(path: str) -> str | None:
    """A file's format by its bytes, for one named without a manifest extension (``export o8 --format
    parquet`` writes the name given): '.parquet' (``PAR1`` at both ends), '.arrow' (an Arrow IPC
    file: ``ARROW1`` at the start and end), else None."""
    try:
        with open(path, "rb") as f:
            head = f.read(6)
            f.seek(max(os.fstat(f.fileno()).st_size - 6, 0))
            tail = f.read(6)
    except (OSError, ValueError):
        return None
    if head[:4] == b"PAR1" and tail[-4:] == b"PAR1":
        return ".parquet"
    if head == b"ARROW1" and tail == b"ARROW1":
        return ".arrow"
    return None


def _manifest_ext(path: str) -> str:
    """A manifest's format as its extension; '.lance' for a Lance table's folder; for a file named
    without one (an export to a name without .parquet), by its bytes (:func:`_sniff`): Parquet and
    Arrow files were read as CSV, with advice about UTF-8."""
    ext = os.path.splitext(path)[1].lower()
    if ext in MANIFEST_EXTS:
        return ext
    if is_lance_table(path):
        return ".lance"
    return _sniff(path) or ext


def _arrow_batches(path: str, columns: dict[str, pa.DataType], ext: str) -> Iterator[pa.RecordBatch]:
    """Record batches of a Parquet or Arrow IPC (file or stream, as ``datasets.save_to_disk`` writes)
    manifest; small batches when a column may hold image bytes, so memory stays bounded."""
    rows = 128 if any(pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_struct(t)
                      for t in columns.values()) else 4096
    if ext in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        yield from pq.ParquetFile(path).iter_batches(batch_size=rows)
        return
    if ext == ".lance":
        import lance

        yield from lance.dataset(path).to_batches(batch_size=rows)
        return
    for batch in _open_ipc(path):
        for start in range(0, batch.num_rows, rows):
            yield batch.slice(start, rows)


def _open_ipc(path: str) -> Iterable[pa.RecordBatch]:
    import pyarrow.ipc as ipc

    try:
        f = ipc.open_file(path)
        return (f.get_batch(i) for i in range(f.num_record_batches))
    except pa.ArrowInvalid:
        return ipc.open_stream(path)


def _manifest_columns(path: str, ext: str) -> tuple[list[str], dict[str, pa.DataType]]:
    """Column names of a manifest of format ``ext`` (:func:`_manifest_ext`), and their Arrow types
    where the format has them (Parquet, Arrow). Read before anything is written, so a manifest that
    cannot be used fails at once."""
    try:
        if ext in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            schema = pq.read_schema(path)
        elif ext == ".lance":
            schema = _lance_schema(path)
        elif ext in _ARROW_EXTS:
            import pyarrow.ipc as ipc

            try:
                schema = ipc.open_file(path).schema
            except pa.ArrowInvalid:
                schema = ipc.open_stream(path).schema
        elif ext in (".jsonl", ".ndjson"):
            with open(path, "rb") as f:
                for line in f:
                    try:
                        obj = json.loads(line) if line.strip() else None
                    except (ValueError, RecursionError):
                        continue
                    if isinstance(obj, dict):
                        return list(obj), {}
            return [], {}
        else:
            header = _csv_header(path, "\t" if ext == ".tsv" else ",")
            if not header:
                raise IngestError(f"{path}: the manifest is empty (no header row)")
            _refuse_repeated(path, header)
            return header, {}
    except (pa.ArrowInvalid, OSError) as exc:
        raise IngestError(f"{path}: cannot read the manifest ({str(exc).splitlines()[0][:200]}); "
                          "check that it is a whole Parquet/Arrow/CSV/JSONL file") from None
    _refuse_repeated(path, schema.names)
    return schema.names, {f.name: f.type for f in schema}


def _refuse_repeated(path: str, names: list[str]) -> None:
    """A manifest whose header names a column twice (``image,image,caption``) is refused: a row kept
    only the last of the two values, and the first was lost without a word. (Unnamed columns, the
    empty cells a spreadsheet leaves after the last one, are not names.)"""
    repeated = [n for n, k in Counter(n for n in names if n.strip()).items() if k > 1]
    if repeated:
        one = len(repeated) == 1
        raise IngestError(f"{path}: the header names column{'' if one else 's'} "
                          f"{', '.join(repr(_shown_name(n)) for n in repeated)} more than once; give each column "
                          "a name of its own (a row would keep only the last value of a repeated column)")


def _lance_schema(path: str) -> pa.Schema:
    """The schema of a Lance table read as a manifest. A table whose images are a Lance blob column
    (a lake's own ``pairs.lance``) is refused: its rows hold blob descriptors, not the bytes."""
    import lance

    from lakecurate.schema import is_blob

    try:
        schema = lance.dataset(path).schema
    except (OSError, ValueError) as exc:
        raise IngestError(f"{path}: cannot read the Lance table ({str(exc).splitlines()[0][:200]})") from None
    if any(is_blob(f) for f in schema):
        raise IngestError(f"{path}: a Lance table whose images are a blob column (a lake's own table) is not a "
                          "manifest; export its rows (lakecurate export LAKE DEST --format lance) and ingest DEST")
    return schema


def _csv_header(path: str, delimiter: str) -> list[str]:
    """The header row of a CSV/TSV as Arrow's reader names the columns (a UTF-8 BOM is not part
    of the first name). A header that is not UTF-8 is refused: its names could not be matched."""
    with open(path, "rb") as f:
        first = f.read(1 << 20)
    try:
        text = first.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        header_end = first.find(b"\n")
        if header_end < 0 or exc.start < header_end:
            raise IngestError(f"{path}: the header row is not UTF-8 (byte {exc.start}); save the file as UTF-8 "
                              "(captions that are not UTF-8 are flagged on their rows, but column names must be)") from None
        text = first[:exc.start].decode("utf-8-sig")
    return next(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter), None) or []


def _manifest_rows(path: str, columns: dict[str, pa.DataType], ext: str) -> Iterator[dict[str, Any] | Exception]:
    """Rows of a manifest of format ``ext`` as dicts (bytes or str values); a bad JSON line yields
    its exception."""
    if ext in (".parquet", ".pq", ".lance") or ext in _ARROW_EXTS:
        for batch in _arrow_batches(path, columns, ext):
            yield from batch.to_pylist()
    elif ext in (".jsonl", ".ndjson"):
        with open(path, "rb") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                    yield obj if isinstance(obj, dict) else ValueError(f"line {lineno} is not a JSON object")
                except ValueError as exc:
                    yield ValueError(f"line {lineno}: {exc}")
                except RecursionError:  # nesting past Python's limit: one bad line, not a crash
                    yield ValueError(f"line {lineno}: JSON nested too deeply")
    else:
        delimiter = "\t" if ext == ".tsv" else ","
        yield from _csv_rows(path, delimiter, _csv_header(path, delimiter))


def _csv_rows(path: str, delimiter: str, names: list[str]) -> Iterator[dict[str, Any] | Exception]:
    """A CSV's rows as dicts of bytes (a caption that is not UTF-8 is flagged on its row, not
    fatal), read by Python's strict reader a line at a time. A row that cannot be parsed is a
    ValueError naming its line: the wrong number of fields, a quote followed by more text, or a
    quote never closed. Where such a row took in the lines after it (an unclosed quote runs on to
    the next quote, or to the end of the file), only its first line is the bad row and reading goes
    on from the line after it: Arrow's reader, with newlines allowed in values, made the rest of
    the file one caption (status ok) and every pair after it was lost without a word. A quoted
    caption over several lines, and a lone quote inside an unquoted value (5" tall), are values."""
    csv.field_size_limit(2**31 - 1)  # a long caption is a value (flagged caption_too_long), not a parse error
    offsets: dict[int, int] = {}  # line number -> byte offset, for the lines of the row being read
    held: list[str] = []  # those lines

    def lines(number: int, offset: int) -> Iterator[str]:
        with open(path, "rb") as f:
            f.seek(offset)
            for raw in f:
                offsets[number] = offset
                text = raw.decode("utf-8", "surrogateescape")
                text = text[1:] if number == 1 and text.startswith("\ufeff") else text  # a UTF-8 BOM
                held.append(text)
                yield text
                number, offset = number + 1, offset + len(raw)

    def row_text() -> str:
        text = "".join(held).rstrip("\r\n")[:200]
        return repr(_shown_name(text))

    def done() -> None:
        offsets.clear()
        held.clear()

    line, offset, header = 1, 0, True
    while True:
        reader = csv.reader(lines(line, offset), delimiter=delimiter, strict=True)
        restart = None
        while True:
            first = line + reader.line_num
            try:
                record = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                last = line + reader.line_num - 1
                if last > first or "unexpected end of data" in str(exc):  # it took in the lines after it
                    yield ValueError(f"line {first}: a quote opened in this row is not closed on its line "
                                     f"(it ran on to line {last}{', the end of the file' if 'end of data' in str(exc) else ''}): "
                                     f"{repr(_shown_name(held[0].rstrip(chr(13) + chr(10))[:200]))}; the lines after it are "
                                     "read as rows; close the quote")
                    restart = first + 1
                    break
                yield ValueError(f"line {first}: {exc}: {row_text()}")
                done()
                continue
            text = row_text() if len(record) != len(names) else ""
            done()
            if header or not record:  # the header row (read by _csv_header), a blank line
                header = False
                continue
            if len(record) != len(names):
                yield ValueError(f"line {first}: {len(record)} fields where the header has {len(names)}: {text}")
                continue
            yield {n: v.encode("utf-8", "surrogateescape") for n, v in zip(names, record)}
        if restart not in offsets:  # the bad row was the file's last line
            return
        line, offset, header = restart, offsets[restart], False
        done()


def _holds_bytes(t: pa.DataType | None) -> bool:
    """Whether a Parquet/Arrow image column holds the image itself (raw bytes, or a Hugging Face
    ``Image`` struct ``{bytes, path}``) rather than a path."""
    if t is None:
        return False
    if pa.types.is_struct(t):
        return t.get_field_index("bytes") >= 0
    return pa.types.is_binary(t) or pa.types.is_large_binary(t)


def iter_manifest(
    path: str,
    root: str | None = None,
    image_col: str | None = None,
    caption_col: str | None = None,
    key_col: str | None = None,
    image_dir: str | None = None,
) -> Iterator[Candidate]:
    """Pairs of a CSV/TSV/Parquet/Arrow/JSONL manifest, or of a Lance table (its folder).

    Relative image paths resolve against ``image_dir`` (default: the manifest's folder). Paths that
    resolve outside ``root`` (default: ``image_dir``) are flagged ``path_outside_root`` and not read.
    A Parquet/Arrow image column may hold the image bytes themselves (binary, or a Hugging Face
    ``Image`` struct ``{bytes, path}``); such a row's key is ``key_col``, else the struct's ``path``,
    else ``rowN``. The columns are checked when this is called (an unusable manifest raises
    :class:`IngestError` before anything is written); the rows stream as they are read.
    """
    path = os.path.realpath(path)
    base = os.path.realpath(image_dir or os.path.dirname(path))
    root = os.path.realpath(root or base)
    ext = _manifest_ext(path)  # decided once: a file named without an extension is sniffed by its bytes
    names, types = _manifest_columns(path, ext)
    icol = ccol = None
    if names:  # a JSONL without one valid object has no columns: every line becomes a flagged row
        icol = _pick(names, image_col, IMAGE_COLUMNS, "image path", path, "--image-col")
        ccol = _pick(names, caption_col, CAPTION_COLUMNS, "caption", path, "--caption-col")
        if key_col and key_col not in names:
            raise IngestError(f"{path}: no column '{key_col}' (columns: {', '.join(names)}); fix {spell('--key-col')}")
    return _manifest_candidates(path, ext, base, root, icol, ccol, key_col, types)


def _manifest_candidates(path: str, ext: str, base: str, root: str, icol: str | None, ccol: str | None, key_col: str | None,
                         types: dict[str, pa.DataType]) -> Iterator[Candidate]:
    in_cell = _holds_bytes(types.get(icol)) if icol else False
    # Parquet/Arrow binary or struct columns other than the image may hold bytes: left out of meta
    binary = {k for k, t in types.items() if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_struct(t)}
    for rowno, row in enumerate(_manifest_rows(path, types, ext), 1):
        if isinstance(row, Exception):
            yield Candidate(source=path, key=f"row{rowno}", flags=["manifest_row_invalid"], notes=[str(row)])
            continue
        cell = row.get(icol) if icol else None
        data = None
        if isinstance(cell, dict):  # Hugging Face Image: bytes, or a path when the bytes are absent
            data, value = cell.get("bytes"), _text(cell.get("path"))
        elif in_cell:
            data, value = cell, None
        else:
            value = _text(cell)
        key = _text(row.get(key_col)) if key_col else value
        extra = {k: m for k, v in row.items()
                 if k not in (icol, ccol, key_col) and (m := _meta_value(v) if k in binary else _text(v)) is not None}
        c = Candidate(source=path, key=key or f"row{rowno}", caption=row.get(ccol) if ccol else None, meta=extra)
        c.meta["manifest_row"] = rowno
        if data is not None and not isinstance(data, (bytes, bytearray, memoryview)):
            c.flags.append("image_unsupported")  # e.g. a JSON {"bytes": "<text>"}: not the image itself
            c.notes.append(f"row {rowno}: '{icol}' holds {type(data).__name__}, not image bytes")
            c.image_uri = f"{path}#row{rowno}"
        elif data is not None:
            c.data = bytes(data)
            c.image_uri = f"{path}#row{rowno}"
        elif not value:
            c.flags.append("image_path_missing")
            c.notes.append(f"row {rowno}: empty '{icol}'")
        elif "://" in value and not value.startswith("file://"):
            c.flags.append("remote_uri")
            c.image_uri = value
        elif "\x00" in value:  # no file can have this name (and os calls raise ValueError on it)
            c.flags.append("image_path_missing")
            c.notes.append(f"row {rowno}: '{icol}' holds a NUL byte, not a path")
        else:
            value = value.removeprefix("file://")
            full = os.path.normpath(os.path.join(base, value))
            c.image_uri = full
            if _inside(full, root):
                c.path = full
            else:
                c.flags.append("path_outside_root")
                c.notes.append(f"row {rowno}: {value} resolves outside {root}; pass {spell('--root')} to allow it")
        yield c


def _meta_value(v: Any) -> str | None:
    """A binary or struct Parquet/Arrow cell as text for ``meta``; None (left out) when empty or when
    it holds data rather than short text (another image column, say)."""
    if isinstance(v, dict):
        v = json.dumps(v, default=lambda b: None)  # bytes inside a struct are data, not metadata
    if isinstance(v, bytes) and (len(v) > 4096 or b"\x00" in v):
        return None
    return _text(v)


def _text(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, bytes):
        return v.decode("utf-8", errors="replace")
    return str(v)


TAR_ERROR_KEY = "__tar_error__/"  # the key of the row that says where a shard's reading broke
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")  # WebDataset writes both; tarfile's "r|*" reads either


def is_shard(path: str) -> bool:
    """Whether ``path`` is named like a WebDataset shard (.tar, or gzipped .tar.gz / .tgz)."""
    return path.lower().endswith(TAR_SUFFIXES)


# The most shards one source may name (DataComp xlarge: 1.28M shards of 10,000 pairs).
MAX_SHARDS = 2_000_000


def expand_shards(spec: str) -> list[str]:
    """Tar shards named by a folder, one file, a glob, or brace notation (``shard-{000..009}.tar``);
    a shard may be gzipped (``.tar.gz``, ``.tgz``)."""
    if os.path.isdir(spec):
        return sorted(p for p in glob.glob(os.path.join(spec, "**", "*"), recursive=True) if is_shard(p) and os.path.isfile(p))
    if "{" in spec:
        try:
            from braceexpand import braceexpand
        except ImportError:
            raise IngestError(f"'{spec}': brace notation needs the braceexpand package (pip install braceexpand)") from None
        names = list(itertools.islice(braceexpand(spec), MAX_SHARDS + 1))  # {0000000..9999999}: 10M names
        if len(names) > MAX_SHARDS:
            raise IngestError(f"'{spec}' names more than {MAX_SHARDS:,} shards; name fewer at a time "
                              "(ingest adds to the lake: run it once per range)")
        return [p for pat in names for p in ((sorted(glob.glob(pat)) or [pat]) if glob.has_magic(pat) else [pat])]
    if any(ch in spec for ch in "*?["):
        return sorted(glob.glob(spec))
    return [spec]


class _HeaderBlocks(tarfile.TarInfo):
    """A TarInfo that keeps the last header block tarfile parsed (``seen[0]``): when a stream ends,
    whether on the end-of-archive marker (zeros) or on a block that is no header. A subclass is
    made per shard (:func:`_header_blocks`), with a list of its own: the block goes into the list,
    since setting a class attribute on every header would reset CPython's attribute caches of the
    class (the reader ran 10% slower)."""

    seen: list[bytes] = [b""]

    @classmethod
    def frombuf(cls, buf: bytes, encoding: str, errors: str) -> tarfile.TarInfo:  # type: ignore[override]
        cls.seen[0] = buf
        return super().frombuf(buf, encoding, errors)


def _header_blocks() -> type[_HeaderBlocks]:
    return type("_ShardHeaderBlocks", (_HeaderBlocks,), {"seen": [b""]})


def _tar_end_problem(tar: tarfile.TarFile, blocks: type[_HeaderBlocks] | None = None) -> str | None:
    """Why a shard's reading stopped early, or None when it ended on tar's end-of-archive marker.

    tarfile ends a stream without a word on a header cut short, on the file's end where the marker
    should be, and on a block in the middle that is not a header (corrupt bytes); what it read of
    the last header tells (its stream's position past the offset of that header: fewer bytes than a
    block is a cut; a whole block is the marker when it is zeros, else corruption, from ``blocks``)."""
    read = getattr(tar.fileobj, "pos", None)
    if not isinstance(read, int):
        return None
    got = read - tar.offset
    if got == 0:
        return "the shard ends without tar's end-of-archive marker: it was cut short"
    if 0 < got < tarfile.BLOCKSIZE:
        return f"the shard ends inside a member header ({got} of {tarfile.BLOCKSIZE} bytes): it was cut short"
    last = blocks.seen[0] if blocks is not None else b""
    if blocks is not None and got == tarfile.BLOCKSIZE and last.count(0) != len(last):
        return f"the block at byte {tar.offset} is not a tar member header: the shard is corrupt there"
    return None


def iter_webdataset(shards: list[str], max_bytes: int | None = None) -> Iterator[Candidate]:
    """Pairs of WebDataset shards, streamed member by member (key = name up to the first dot).

    A shard that cannot be read to its end (cut short, corrupt) gives a ``tar_corrupt`` row saying
    where, and the sample it stopped in is flagged ``tar_corrupt`` too (it may be incomplete), so
    ``--retry-errors`` reads both again once the shard is whole. A member larger than ``max_bytes``
    is not read. A key that comes again right after itself (``a.jpg a.txt a.jpg a.txt``) is a second
    sample, not an overwrite of the first."""
    for shard in shards:
        shard = os.path.realpath(shard)
        sample: dict[str, bytes | None] = {}
        current: str | None = None
        problem = None
        try:
            blocks = _header_blocks()
            with tarfile.open(shard, mode="r|*", tarinfo=blocks) as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    dirname, base = os.path.split(member.name)
                    if base.startswith("."):
                        continue
                    stem, _, ext = base.partition(".")
                    key = f"{dirname}/{stem}" if dirname else stem
                    ext = ext.lower()
                    if current is not None and (key != current or ext in sample):
                        yield _tar_candidate(shard, current, sample)
                        sample = {}
                    current = key
                    if max_bytes is not None and member.size > max_bytes:
                        sample[ext] = None  # not read: too large
                        continue
                    f = tar.extractfile(member)
                    sample[ext] = f.read() if f else b""
                problem = _tar_end_problem(tar, blocks)
        except FileNotFoundError:
            yield Candidate(source=shard, key="", image_uri=shard, flags=["file_missing"], notes=[f"{shard} does not exist"])
            continue
        except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
            problem = f"{type(exc).__name__}: {exc}"
        if current is not None:
            c = _tar_candidate(shard, current, sample)
            if problem:
                c.flags.append("tar_corrupt")
                c.notes.append("the shard breaks after this sample's members: it may be incomplete")
            yield c
        if problem:
            yield Candidate(
                source=shard,
                key=f"{TAR_ERROR_KEY}{current or ''}",
                image_uri=shard,
                flags=["tar_corrupt"],
                notes=[f"{problem}; " + (f"samples after '{current}' were not read" if current is not None
                                         else "no sample could be read from it")],
            )


def _tar_candidate(shard: str, key: str, sample: dict[str, bytes | None]) -> Candidate:
    """The pair of one sample's members (a member ``None`` was too large to read)."""
    img_ext = next((e for e in sample if "." + e in IMAGE_EXTS), None)
    others = [e for e in sample if e not in ("txt", "json") and e != img_ext]
    c = Candidate(source=shard, key=key, caption=sample.get("txt"), sidecar_json=sample.get("json"))
    for ext in ("txt", "json"):
        if ext in sample and sample[ext] is None:
            c.notes.append(f"member '{key}.{ext}' is larger than {spell('--max-bytes')}; not read")
    if key.startswith("/") or ".." in key.split("/"):  # tar permits such names; they must never become paths
        c.flags.append("member_name_unsafe")
        c.notes.append(f"member name '{key}' is absolute or climbs with '..'")
    if img_ext is None and others:  # an unknown extension next to a caption is treated as the image
        img_ext = others.pop(0)
    if others:
        c.meta["other_members"] = sorted(others)
    if img_ext is None:
        c.flags.append("image_missing")
        c.notes.append(f"sample '{key}' has no image member ({', '.join(sorted(sample))})")
    else:
        c.image_uri = f"{shard}#{key}.{img_ext}"
        if sample[img_ext] is None:
            c.flags.append("file_too_large")
            c.notes.append(f"member '{key}.{img_ext}' is larger than {spell('--max-bytes')}; not read")
        else:
            c.data = sample[img_ext]
    return c


# --------------------------------------------------------------------------- driver
def local_source(source: str) -> str:
    """A source as a local path: ``file:///x/00001.tar`` is ``/x/00001.tar`` (as a ``file://`` lake is a
    local lake). A source on an object store is refused in one line, before a lake is made: it was
    joined to the working directory, and a lake was made holding one junk 'file_missing' row."""
    scheme, sep, rest = source.partition("://")
    if not sep:
        return source
    if scheme.lower() == "file":
        return rest
    raise IngestError(f"sources on an object store are not read ('{source}'); copy the source to a local folder "
                      "and ingest that (the lake itself may be on the object store)")


def detect_kind(source: str) -> str:
    """'folder', 'manifest' or 'webdataset', from the path (and a file's or folder's contents where
    the name does not say: a Parquet or Arrow file, a Lance table's folder)."""
    if _hf_arrow_files(source) or is_lance_table(source):
        return "manifest"
    if os.path.isdir(source):
        names = os.listdir(source)
        has_tar = any(is_shard(n) for n in names)
        has_img = any(os.path.splitext(n)[1].lower() in IMAGE_EXTS for n in names)
        return "webdataset" if has_tar and not has_img else "folder"
    ext = os.path.splitext(source)[1].lower()
    if is_shard(source) or "{" in source:
        return "webdataset"
    if ext in MANIFEST_EXTS:
        return "manifest"
    if not os.path.exists(source):
        raise IngestError(f"source '{source}' does not exist")
    if _sniff(source):
        return "manifest"
    raise IngestError(
        f"cannot tell what '{source}' is: expected a folder, a manifest ({', '.join(sorted(MANIFEST_EXTS))}) "
        f"or WebDataset shards ({', '.join(TAR_SUFFIXES)}); pass {spell('--kind')}"
    )


def _hf_arrow_files(path: str) -> list[str]:
    """The Arrow files of a folder written by Hugging Face ``datasets.save_to_disk`` (it holds a
    ``state.json`` naming them), else []."""
    try:
        with open(os.path.join(path, "state.json"), encoding="utf-8") as f:
            state = json.load(f)
        names = [d["filename"] for d in state["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return []
    return [os.path.join(path, n) for n in names]


def _bounded_map(fn: Callable[[Any], Any], items: Iterable[Any], workers: int, window: int) -> Iterator[Any]:
    """Ordered parallel map holding at most ``window`` items in flight (bounded memory)."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _commit_chunks(batches: Iterator[pa.RecordBatch], max_rows: int, max_bytes: int) -> Iterator[Iterator[pa.RecordBatch]]:
    """Split a stream of batches into consecutive sub-streams of about ``max_rows``/``max_bytes``,
    one per commit, without holding more than one batch at a time."""
    it = iter(batches)
    for head in it:

        def chunk(first: pa.RecordBatch = head) -> Iterator[pa.RecordBatch]:
            rows = nbytes = 0
            batch: pa.RecordBatch | None = first
            while batch is not None:
                yield batch
                rows += batch.num_rows
                nbytes += batch.nbytes
                if rows >= max_rows or nbytes >= max_bytes:
                    return
                batch = next(it, None)

        yield chunk()


def _rows_to_batch(rows: list[dict[str, Any]]) -> pa.RecordBatch:
    # column by column: several times faster than from_pylist on dicts holding image bytes
    return pa.RecordBatch.from_arrays(
        [pa.array([r[f.name] for r in rows], f.type) for f in PAIRS_SCHEMA], schema=PAIRS_SCHEMA
    )


@dataclass
class SourcePlan:
    """A checked source: its kind, the ``source`` values its rows get, and how to list its pairs."""

    kind: str
    sources: list[str]
    candidates: Callable[[list[str]], Iterator[Candidate]]  # (ignored files list) -> pairs, in a stable order
    # (path, kind) of each part that is a source of its own: a shard, an Arrow file of a dataset
    # folder, or the whole folder/manifest. What the ray engine runs as one task each.
    units: list[tuple[str, str]] = field(default_factory=list)


def open_source(
    source: str | os.PathLike,
    kind: str | None = None,
    *,
    root: str | None = None,
    image_col: str | None = None,
    caption_col: str | None = None,
    key_col: str | None = None,
    image_dir: str | None = None,
    max_bytes: int | None = None,
) -> SourcePlan:
    """Check that ``source`` can be ingested (it exists; a manifest's columns are found) before
    anything is written, and say how to list its pairs. Raises :class:`IngestError` otherwise.
    ``max_bytes``: WebDataset members larger than this are not read."""
    src = local_source(os.fspath(source))
    kind = kind or detect_kind(src)
    if kind != "manifest":
        given = [spell(opt) for opt, v in (("--image-dir", image_dir), ("--root", root), ("--image-col", image_col),
                                    ("--caption-col", caption_col), ("--key-col", key_col)) if v is not None]
        if given:
            raise IngestError(f"{', '.join(given)} appl{'ies' if len(given) == 1 else 'y'} to manifests only; "
                              f"'{src}' is a {kind}: drop {' and '.join(given)}")
    elif image_dir is not None and "://" not in image_dir and not os.path.isdir(image_dir):
        raise IngestError(f"{spell('--image-dir')} '{image_dir}' is not a folder; pass the folder the manifest's image paths are relative to")
    if kind == "folder":
        if not os.path.isdir(src):
            raise IngestError(f"'{src}' is not a folder")
        if is_lake_folder(src):  # its table's _versions/*.json became error rows
            export = words(f"lakecurate export {shlex.quote(src)} DEST --format lance",
                           f"Lake.open({src!r}).export(DEST, format='lance')")
            raise IngestError(f"'{src}' is a lakecurate lake, not a folder of pairs; to copy its rows, export them "
                              f"({export}) and ingest DEST")
        if is_lance_table(src):  # its _versions/*.json and data files became error rows and "not pairs"
            raise IngestError(f"'{src}' is a Lance table, not a folder of pairs; drop {given_option('--kind', 'folder')}: a Lance "
                              f"table (such as an export of {given_option('--format', 'lance')} writes) is read as a manifest")
        return SourcePlan(kind, [os.path.realpath(src)], lambda ignored: iter_folder(src, ignored), [(src, kind)])
    if kind == "manifest" and (files := _hf_arrow_files(src)):  # each Arrow file is a source of its own
        for f in files:
            iter_manifest(f, root, image_col, caption_col, key_col, image_dir)
        return SourcePlan(kind, [os.path.realpath(f) for f in files], lambda ignored: (
            c for f in files for c in iter_manifest(f, root, image_col, caption_col, key_col, image_dir)),
            [(f, kind) for f in files])
    if kind == "manifest":
        lance_table = is_lance_table(src)
        if os.path.isdir(src) and not lance_table:
            raise IngestError(f"'{src}' is a folder, not a manifest file: name the manifest (CSV, Parquet, JSONL), "
                              f"or use {given_option('--kind', 'folder')} for a folder of images with caption files")
        if not os.path.isfile(src) and not lance_table:
            raise IngestError(f"manifest '{src}' does not exist")
        iter_manifest(src, root, image_col, caption_col, key_col, image_dir)  # checks the columns now
        return SourcePlan(kind, [os.path.realpath(src)],
                          lambda ignored: iter_manifest(src, root, image_col, caption_col, key_col, image_dir), [(src, kind)])
    if kind == "webdataset":
        shards = expand_shards(src)
        if not shards:
            raise IngestError(f"no .tar shards match '{src}'")
        odd = [s for s in shards if "://" not in s and os.path.isfile(s) and not is_shard(s) and not tarfile.is_tarfile(s)]
        if odd:  # --kind webdataset on a CSV made a lake holding one tar_corrupt row
            raise IngestError(f"'{odd[0]}' is not a tar shard (no tar header, and not named .tar/.tar.gz/.tgz); "
                              f"drop {given_option('--kind', 'webdataset')}{'' if len(odd) == 1 else f' ({len(odd)} such files)'} "
                              f"(a manifest is {given_option('--kind', 'manifest')})")
        missing = [s for s in shards if "://" not in s and not os.path.isfile(s)]
        if missing:  # as for a missing folder or manifest: refused, not a row that stays when it appears
            raise IngestError(f"{len(missing)} of the {len(shards)} shards named by '{src}' do not exist "
                              f"({', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}); name the shards "
                              "that are there (img2dataset skips the ones it could not fill)")
        return SourcePlan(kind, [os.path.realpath(s) for s in shards], lambda ignored: iter_webdataset(shards, max_bytes),
                          [(s, kind) for s in shards])
    raise IngestError(f"unknown kind '{kind}': use folder, manifest or webdataset")


def refuse_source_in_lake(lake_uri: str, src: str) -> None:
    """A source that is the lake or inside it (its own files would be walked as pairs) is refused;
    the lake need not exist yet (checked before the CLI creates it)."""
    if not lake_uri.strip():  # "" is the working directory to realpath: said here, not "inside lake ''"
        raise IngestError("the lake path is empty (''); give a folder (or object-store URI) for the lake")
    src, lake_uri = local_source(src), canonical_uri(lake_uri)
    if "://" in lake_uri or not os.path.exists(src):
        return
    inner, outer = os.path.realpath(src), os.path.realpath(lake_uri)
    if os.path.commonpath([inner, outer]) == outer:
        raise IngestError(f"source '{src}' is lake '{lake_uri}' or inside it; ingest from the folder of your pairs")


def check_options(opts: IngestOptions) -> None:
    """Refuse limits that make no sense, before anything is written."""
    for name in ("max_pixels", "max_bytes", "max_caption_chars", "workers", "batch_rows", "commit_rows", "commit_bytes"):
        if getattr(opts, name) < 1:
            raise IngestError(f"{name.replace('_', '-')} must be at least 1, not {getattr(opts, name)}")
    if opts.verify not in ("header", "decode"):
        raise IngestError(f"verify must be 'header' or 'decode', not '{opts.verify}'")
    if opts.max_pixels > MAX_DECODE_PIXELS:  # (it pointed at Pillow's own limit, twice this: such rows were
        # ingested 'ok', then embed refused them as image_too_large and the signals decoded them)
        raise IngestError(f"max-pixels {opts.max_pixels} is above what the image stages decode ({MAX_DECODE_PIXELS} "
                          "pixels): a larger image would be ingested, then never embedded, hashed or shown; "
                          f"pass at most {MAX_DECODE_PIXELS}")


class _Claims:
    """Ids of the source's rows in the lake, kept current at every commit.

    Read once at the start, then, right before each commit, only the fragments added since (by other
    writers, e.g. a second ingest of the same source) are scanned. With :meth:`Lake.append`'s guard
    this makes "none of these ids is in the lake" and the commit one atomic step. This run's own
    commits are not scanned (its keys are unique), so memory holds only what others wrote.
    """

    def __init__(self, lake: "Store", sources: list[str], where: str | None):
        self.lake, self.sources, self.where = lake, sources, where
        ds = lake.dataset()
        self.checked = {f.fragment_id for f in ds.get_fragments()}
        self.ids = lake.existing_ids(sources, where=where, ds=ds)

    def refresh(self, ds: Any) -> None:
        new = [f.fragment_id for f in ds.get_fragments() if f.fragment_id not in self.checked]
        if new:
            self.ids |= self.lake.existing_ids(self.sources, where=self.where, ds=ds, fragment_ids=new)
            self.checked.update(new)

    def committed(self, version: int) -> None:
        """Our commit landed as ``version``: its new fragments are ours, or fragments that commits
        landing since our guard ran rewrote (compaction) or appended without a guard (no ingest
        does): none holds another ingest's pairs, which would have failed our commit."""
        self.checked.update(f.fragment_id for f in self.lake.dataset(version).get_fragments())


class _ContentIndex:
    """The content hashes already in the lake (64-bit prefixes, sorted: 8 bytes a row), to count new
    pairs whose image is already there under another source or key."""

    def __init__(self, lake: "Store", skip_errors: bool = False):
        import numpy as np

        parts = []  # (skip_errors: a retry replaces error rows, and a row is not a copy of its own old row)
        where = "content_hash IS NOT NULL" + (" AND ingest_status <> 'error'" if skip_errors else "")
        for batch in lake.dataset().to_batches(columns=["content_hash"], filter=where):
            hexes = batch.column("content_hash").to_pylist()
            parts.append(np.frombuffer(bytes.fromhex("".join(h[:16] for h in hexes)), dtype=">u8"))
        self.prefixes = np.unique(np.concatenate(parts)) if parts else np.empty(0, ">u8")

    def count(self, hashes: list[str]) -> int:
        import numpy as np

        if not hashes or not len(self.prefixes):
            return 0
        q = np.frombuffer(bytes.fromhex("".join(h[:16] for h in hashes)), dtype=">u8")
        pos = np.minimum(np.searchsorted(self.prefixes, q), len(self.prefixes) - 1)
        return int((self.prefixes[pos] == q).sum())


@dataclass
class _Chunk:
    """What one commit holds, counted as its batches stream past; merged into the report only once
    the commit has landed."""

    ids: list[str] = field(default_factory=list)
    hashes: list[str] = field(default_factory=list)
    status: Counter = field(default_factory=Counter)
    skip: set[str] = field(default_factory=set)  # ids whose content hash is not counted (rows rewritten in place)
    flags: Counter = field(default_factory=Counter)

    def track(self, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import pyarrow.compute as pc

        for b in batches:
            ids = b.column("id").to_pylist()
            self.ids += ids
            self.hashes += [h for i, h in zip(ids, b.column("content_hash").to_pylist()) if h is not None and i not in self.skip]
            self.status.update(b.column("ingest_status").to_pylist())
            self.flags.update(pc.list_flatten(b.column("ingest_flags")).to_pylist())
            yield b


def _unique_key(c: Candidate, used: set[tuple[str, str]], counts: Counter) -> None:
    """Give a key seen before in this source a new, unused ``key#N`` (flagged ``duplicate_key``).

    N skips every key already taken, renamed or not, so keys ``a, a, a#2`` give ``a, a#2, a#2#2``.
    The order of a source is stable, so a re-run renames the same way (ids stay the same).
    """
    k = (c.source, c.key)
    counts[k] += 1
    if k in used:
        n = max(counts[k], 2)
        while (c.source, f"{c.key}#{n}") in used:
            n += 1
        c.flags.append("duplicate_key")
        c.notes.append(f"key '{c.key}' seen {counts[k]} times; stored as '{c.key}#{n}'")
        c.key = f"{c.key}#{n}"
    used.add((c.source, c.key))


def _no_space(exc: BaseException) -> bool:
    """Whether ``exc`` is a full disk, as Python (errno) or Lance (the message) reports it."""
    return isinstance(exc, OSError) and (exc.errno == errno.ENOSPC or "no space left on device" in str(exc).lower()
                                         or "os error 28" in str(exc))


# A pass ends with chunks dropped only when another writer committed some of their pairs first;
# the next pass adds what is still missing. More passes than this mean something else is wrong.
MAX_PASSES = 8
# Times Ray reruns an ingest part whose worker died (a node lost, a kill).
RAY_RETRIES = 2


def ingest(
    lake: "Store",
    source: str | os.PathLike,
    *,
    kind: str | None = None,
    mode: str = "append",
    retry_errors: bool = False,
    update: bool = False,
    root: str | None = None,
    image_col: str | None = None,
    caption_col: str | None = None,
    key_col: str | None = None,
    image_dir: str | None = None,
    options: IngestOptions | None = None,
    engine: str = "local",
    progress: bool | None = None,
    started: datetime | None = None,
) -> IngestReport:
    """Ingest ``source`` into ``lake``; returns an :class:`IngestReport`.

    ``engine="ray"``: one Ray task per part of the source that is a source of its own (each
    WebDataset shard, each Arrow file of a dataset folder; a folder or a single manifest is one
    part), each an ingest of its own that commits its chunks with the same guard as concurrent
    local ingests (ids stay unique, conflicts are retried); a killed task leaves its commits, and
    the same command adds the rest. The workers read the source and write the lake themselves, so
    both must be reachable from every node (a shared file system or an object store).

    ``started``: the rows' ``ingested_at`` (default: now); the Ray parts all take the driver's.

    A pair's id is ``blake2b(source, key)``: ``mode="append"`` skips pairs whose id is already in the
    lake (idempotent re-runs, and several ingests of one source at once add each pair once);
    ``retry_errors=True`` re-reads the pairs whose row has ``ingest_status = 'error'`` and replaces
    those rows in the same commit (same id; the new row has no derived columns yet, so the next
    embed/signals/curate runs compute them).

    A pair already in the lake whose source changed since (its caption, read from the sidecar,
    manifest cell or tar member, differs from the row's, or its image file's size from the row's
    ``byte_size``: an ``os.stat``, no image is read again) is counted in ``changed`` and named in
    ``warnings``, and left as it is; ``update=True`` reads those pairs again, with the checks of a
    new pair, and rewrites their rows in place (same id; the commit that appends the new row deletes
    the old one, so no version holds both or neither; the old values stay in the earlier versions).
    Like a retried error row, a rewritten row has no derived columns: the next runs compute them for
    it alone. A pair whose file is gone from the source is counted in ``gone`` and its row kept.
    ``mode="overwrite"`` makes a new version holding only
    this source (old versions remain until ``lakecurate cleanup``). Bad pairs become rows with
    flags; only an unusable *source* raises, before anything is written.

    Example::

        report = Lake.create("lake").ingest("photos/")   # photos/cat.jpg + photos/cat.txt ...
        print(report.written, dict(report.flags))
    """
    if mode not in ("append", "overwrite"):
        raise IngestError(f"mode must be 'append' or 'overwrite', not '{mode}'")
    if retry_errors and mode != "append":
        raise IngestError(f"{spell('--retry-errors')} replaces error rows of an appended source; it cannot be used with {spell('--mode')} overwrite")
    update = flag("update", update)
    if update and mode != "append":
        raise IngestError(f"{spell('--update')} rewrites the pairs of an appended source that changed in the source; it cannot "
                          f"be used with {spell('--mode')} overwrite (which reads every pair again): drop one of them")
    opts = options or IngestOptions()
    check_options(opts)
    check_engine(engine)
    src = local_source(os.fspath(path("source", source)))  # (None was a TypeError traceback)
    # (a Path for the folders: "'://' in image_dir" was a TypeError traceback)
    root, image_dir = (None if v is None else os.fspath(path(o, v)) for o, v in (("root", root), ("image_dir", image_dir)))
    refuse_source_in_lake(lake.uri, src)
    plan = open_source(src, kind, root=root, image_col=image_col, caption_col=caption_col, key_col=key_col,
                       image_dir=image_dir, max_bytes=opts.max_bytes)
    if engine == "ray":
        return _ingest_on_ray(lake, src, plan, mode=mode, retry_errors=retry_errors, update=update, progress=progress,
                              options=opts,
                              started=started or datetime.now(timezone.utc),
                              manifest={"root": root, "image_col": image_col, "caption_col": caption_col,
                                        "key_col": key_col, "image_dir": image_dir})
    report = IngestReport(lake=lake.uri, source=src, kind=plan.kind)
    appending = mode == "append"
    # Ids to skip: every id of this source, or with retry_errors every id whose row is not an error.
    skip_where = "ingest_status <> 'error'" if retry_errors else None
    # The source's error rows (ids; with retry_errors what each says, so that one read again as the
    # same error is not written again: each retry with nothing fixed made a version of the same rows)
    was = _error_rows(lake, plan.sources) if appending and retry_errors else {}
    errors = set(was) if retry_errors else (lake.existing_ids(plan.sources, where="ingest_status = 'error'")
                                            if appending else set())
    content: _ContentIndex | None = None  # read before the first commit, only if there is one
    known = _Known(lake, plan.sources) if appending else None  # the rows' captions and sizes, to see changes
    changing: set[str] = set()  # with update: ids of changed pairs to rewrite
    done: set[str] = set()  # with retry_errors or update: ids replaced by this run (a row may be an error again)
    markers: set[str] = set()  # ids of the shard-error rows this run's reading gave
    given: set[str] = set()  # ids of `errors` this run's reading gave again
    broken: set[str] = set()  # sources (shards) this run could not read to their end
    now = started or datetime.now(timezone.utc)
    t0 = time.perf_counter()

    def one_pass(first: bool) -> int:
        """Ingest what is missing; returns how many chunks were dropped because another writer
        committed some of their pairs first."""
        nonlocal content
        used: set[tuple[str, str]] = set()
        counts: Counter = Counter()
        # Read again on a later pass (it then holds ours too). An overwrite starts without: the table it
        # replaces does not count, and its first commit is the Overwrite itself.
        claims = _Claims(lake, plan.sources, skip_where) if appending or report.versions else None
        candidates = plan.candidates(report.ignored_files if first else [])

        def fresh() -> Iterator[Candidate]:
            for c in candidates:
                if first:
                    report.seen += 1
                _unique_key(c, used, counts)
                cid = pair_id(c.source, c.key)
                if c.key.startswith(TAR_ERROR_KEY):
                    markers.add(cid)
                    broken.add(c.source)
                if cid in errors:
                    given.add(cid)
                if cid in done:
                    continue
                if claims is not None and cid in claims.ids:
                    if first and cid in errors:
                        report.skipped_errors += 1
                    if first and known is not None and (at := known.find(cid)) >= 0:
                        what = known.compare(at, c, opts)
                        if what == "changed":
                            report.changed += 1
                            if len(report.changed_keys) < NAMED:
                                report.changed_keys.append(_shown_name(c.key))
                            if update:
                                changing.add(cid)
                    if cid not in changing:
                        continue
                yield c

        def batches() -> Iterator[pa.RecordBatch]:
            rows: list[dict[str, Any]] = []
            for row in _bounded_map(lambda c: make_row(c, opts, now), fresh(), opts.workers, 4 * opts.workers):
                if row["id"] in was and was[row["id"]] == (row["ingest_error"], row["content_hash"], row["caption"]):
                    report.errors_unchanged += 1
                    done.add(row["id"])  # (a later pass skips it too)
                    bar.update(1)
                    continue
                rows.append(row)
                bar.update(1)
                if len(rows) >= opts.batch_rows:
                    yield _rows_to_batch(rows)
                    rows = []
            if rows:
                yield _rows_to_batch(rows)

        dropped = 0
        for chunk in _commit_chunks(batches(), opts.commit_rows, opts.commit_bytes):
            acc = _Chunk(skip=changing)  # (a rewritten row's image was in the lake: its own old row's)
            reader = pa.RecordBatchReader.from_batches(PAIRS_SCHEMA, acc.track(chunk))

            def guard(ds: Any, acc: _Chunk = acc) -> bool | str:
                # runs after the chunk's files are written (acc is complete), at the version committed on
                claims.refresh(ds)
                rewritten = sorted(changing.intersection(acc.ids))  # rows this commit replaces, whatever they hold
                if not claims.ids.isdisjoint(set(acc.ids).difference(rewritten)):
                    return False  # another writer committed some of these pairs first: the next pass redoes the rest
                replaced = sorted(errors.intersection(acc.ids)) if retry_errors else []
                conds = [f"ingest_status = 'error' AND id IN ({in_list(replaced)})"] if replaced else []
                conds += [f"id IN ({in_list(rewritten)})"] if rewritten else []
                return " OR ".join(f"({c})" for c in conds) if conds else True

            if appending and content is None:  # (an overwrite replaces what it would compare with)
                content = _ContentIndex(lake, skip_errors=retry_errors)
            if claims is not None:
                version = lake.append(reader, guard=guard)
            else:  # overwrite: the first commit replaces the table
                version = lake.append(reader, overwrite=True)
            if version is None:
                dropped += 1
                continue
            report.versions.append(version)
            if claims is None:  # after the Overwrite, later commits are guarded like appends
                claims = _Claims(lake, plan.sources, None)
            claims.committed(version)
            report.written += len(acc.ids)
            report.status.update(acc.status)
            report.flags.update(acc.flags)
            report.content_present += content.count(acc.hashes) if content is not None else 0
            if retry_errors:
                report.replaced += len(errors.intersection(acc.ids))
            if update:
                report.updated += len(changing.intersection(acc.ids))
            if retry_errors or update:
                done.update(acc.ids)
        return dropped

    bar = progress_bar(desc=f"ingest {plan.kind}", unit="img", progress=progress)
    try:
        for n in range(MAX_PASSES):
            if not one_pass(first=(n == 0)):
                break
        else:
            raise IngestError(f"lake '{lake.uri}': another ingest of '{src}' kept committing the same pairs first "
                              f"({MAX_PASSES} passes); run the same command again to add what is missing")
        if mode == "overwrite" and not report.versions:  # nothing to write: still replace the contents
            report.versions.append(lake.append(PAIRS_SCHEMA.empty_table(), overwrite=True))
        if appending:
            _drop_gone_errors(lake, errors - given, broken, report)
        if known is not None and not broken:  # (a shard read only in part: what it did not reach is unknown)
            gone = known.gone()
            report.gone = len(gone)
            report.gone_keys = _keys_of(lake, sorted(gone)[:NAMED]) if gone else []
    except OSError as exc:
        if not _no_space(exc):
            raise
        raise IngestError(f"no space left on the device holding lake '{lake.uri}' after {report.written} new pairs; "
                          f"the lake is intact (every commit is whole): free space, then run the same command "
                          f"again to add the rest") from None
    finally:
        bar.close()
    report.skipped_existing = report.seen - report.written
    report.warnings = _changes_said(report, update)
    report.seconds = time.perf_counter() - t0
    return report


NAMED = 5  # keys of changed or gone pairs a report names


def _keys_of(lake: "Store", ids: list[str]) -> list[str]:
    tbl = lake.dataset().to_table(columns=["key"], filter=f"id IN ({in_list(ids)})")
    return sorted(tbl.column("key").to_pylist())


def _changes_said(report: IngestReport, update: bool) -> list[str]:
    """What a user should know of the source's pairs that changed or went since they were ingested."""
    notes = []
    n, keys = report.changed - report.updated, report.changed_keys
    if n > 0 and not update:
        notes.append(f"{n} pair{'' if n == 1 else 's'} in the lake changed in the source since {'it was' if n == 1 else 'they were'} "
                     f"ingested (caption or image size differs: {', '.join(keys)}{' ...' if n > len(keys) else ''}); the lake "
                     f"keeps {'its' if n == 1 else 'their'} old values: ingest with {given_option('--update')} to read "
                     f"{'it' if n == 1 else 'them'} again and rewrite {'its row' if n == 1 else 'their rows'} in place (same ids)")
    elif n > 0:  # taken by a later pass's commit that another writer beat: said, not lost
        notes.append(f"{n} changed pairs were not rewritten (another writer committed first); run the same command again")
    if report.gone:
        g, keys = report.gone, report.gone_keys
        notes.append(f"{g} pair{'' if g == 1 else 's'} in the lake {'is' if g == 1 else 'are'} no longer in the source "
                     f"({', '.join(keys)}{' ...' if g > len(keys) else ''}): {'its row stays' if g == 1 else 'their rows stay'} "
                     "(ingest never deletes a pair; curate or drop it if it should not be used)")
    return notes


class _Known:
    """What the lake holds of the source's rows that are not errors (``retry_errors`` reads those
    again): a hash of each caption and the image's byte size, to tell which pairs the source changed
    since, and which of them this run's reading gave (the others are gone from the source). Cheap to
    compare: a sidecar or cell is read, an image file only stat'ed. Held as arrays, 25 bytes a row
    (a dict of id -> (caption hash, size) held ~190 with its id strings: measured at 1M rows); ids
    not of :func:`pair_id`'s form (another tool's) in a dict beside."""

    def __init__(self, lake: "Store", sources: list[str]):
        import numpy as np
        import pyarrow.compute as pc

        where = f"ingest_status <> 'error' AND source IN ({in_list(sources)})"
        keys, caps, sizes, self.other = [], [], [], {}
        for b in lake.dataset().to_batches(columns=["id", "caption", "byte_size"], filter=where):
            ids = b.column("id")
            ok = pc.fill_null(pc.match_substring_regex(ids, r"^[0-9a-f]{16}$"), False).to_numpy(zero_copy_only=False)
            cap = np.fromiter(map(hash, b.column("caption").to_pylist()), np.int64, b.num_rows)
            size = pc.fill_null(b.column("byte_size"), -1).to_numpy(zero_copy_only=False).astype(np.int64)
            hexes = ids.filter(pa.array(ok)).to_pylist()
            keys.append(np.frombuffer(bytes.fromhex("".join(hexes)), ">u8").astype(np.uint64))
            caps.append(cap[ok])
            sizes.append(size[ok])
            for k in np.flatnonzero(~ok):
                if ids[int(k)].is_valid:
                    self.other[ids[int(k)].as_py()] = len(self.other)
                    caps.append(cap[k:k + 1])
                    sizes.append(size[k:k + 1])
        n = sum(len(k) for k in keys)
        order = np.argsort(np.concatenate(keys)) if keys else np.empty(0, np.int64)
        self.keys = np.concatenate(keys)[order] if keys else np.empty(0, np.uint64)
        # (rows of pair_id's form, sorted by id; then the other ids', in self.other's numbering)
        take = np.concatenate([order, np.arange(n, n + len(self.other))])
        self.caps = np.concatenate(caps)[take] if caps else np.empty(0, np.int64)
        self.sizes = np.concatenate(sizes)[take] if sizes else np.empty(0, np.int64)
        self.seen = np.zeros(len(self.caps), bool)

    def find(self, cid: str) -> int:
        """Where the row of ``cid`` is held (-1: not a row of the source that is not an error)."""
        import numpy as np

        if len(cid) == 16:
            try:
                key = np.uint64(int(cid, 16))
            except ValueError:
                key = None
            if key is not None:
                at = int(np.searchsorted(self.keys, key))
                return at if at < len(self.keys) and self.keys[at] == key else -1
        k = self.other.get(cid)
        return -1 if k is None else len(self.keys) + k

    def gone(self) -> list[str]:
        """The ids of rows no reading of this run gave (their files deleted from the source)."""
        import numpy as np

        out = [f"{int(k):016x}" for k in self.keys[~self.seen[: len(self.keys)]]]
        unseen = set(np.flatnonzero(~self.seen[len(self.keys):]).tolist())
        return out + [i for i, k in self.other.items() if k in unseen]

    def compare(self, at: int, c: Candidate, opts: IngestOptions) -> str:
        """'changed', 'same', or 'gone' (the image file named is no longer there) of the row held at ``at``."""
        cap_hash, size = int(self.caps[at]), int(self.sizes[at])
        size = None if size < 0 else size
        now: int | None = None
        if c.data is not None:
            now = len(c.data)
        elif c.path is not None and not flags_block_read(c.flags):
            try:
                now = os.stat(c.path).st_size
            except FileNotFoundError:
                return "gone"
            except OSError:
                now = None  # unreadable now: said when it is read (update), not guessed here
        self.seen[at] = True
        if size is not None and now is not None and now != size:
            return "changed"
        return "changed" if hash(read_caption(c, opts)[0]) != cap_hash else "same"


def _error_rows(lake: "Store", sources: list[str]) -> dict[str, tuple[Any, Any, Any]]:
    """id -> (ingest_error, content_hash, caption) of the sources' error rows."""
    tbl = lake.dataset().to_table(columns=["id", "ingest_error", "content_hash", "caption"],
                                  filter=f"ingest_status = 'error' AND source IN ({in_list(sources)})")
    cols = [tbl.column(c).to_pylist() for c in ("ingest_error", "content_hash", "caption")]
    return {i: tuple(v) for i, *v in zip(tbl.column("id").to_pylist(), *cols)}


def _drop_gone_errors(lake: "Store", gone: set[str], broken: set[str], report: IngestReport) -> None:
    """Error rows of the source that a whole reading of it no longer gives are removed in one
    commit: the error is gone from the source. An orphan caption whose image came (now the pair
    ``cat.jpg``, the error row was ``cat``), a manifest row fixed (its row ``row7`` is now the
    image's path), a shard read to its end (the row that said where it broke), a bad file deleted.
    They were kept beside the good row: the caption twice, the error counted for ever. Such a row
    has no image and no derived value to lose. A shard this reading could not finish (``broken``)
    keeps its error rows: what it did not reach is unknown, not fixed."""
    if broken:
        gone = gone - lake.existing_ids(sorted(broken), where="ingest_status = 'error'")
    if not gone:
        return
    quoted = ", ".join(f"'{i}'" for i in sorted(gone))
    markers = lake.count(f"id IN ({quoted}) AND starts_with(key, '{TAR_ERROR_KEY}')")
    version = lake.append(PAIRS_SCHEMA.empty_table(),
                          guard=lambda ds: f"ingest_status = 'error' AND id IN ({quoted})")
    if version is not None:
        report.versions.append(version)
        report.errors_removed, report.markers_removed = len(gone), markers


def _ingest_part(uri: str, storage_options: dict[str, str] | None, branch: str | None, path: str, kind: str,
                 manifest: dict[str, Any], options: IngestOptions, retry_errors: bool, update: bool,
                 started: datetime) -> IngestReport:
    """One Ray task: an ordinary (local, guarded, appending) ingest of one part, on the worker."""
    from lakecurate.store import Store

    lake = Store(uri, storage_options, branch=branch)
    return ingest(lake, path, kind=kind, mode="append", retry_errors=retry_errors, update=update, options=options,
                  progress=False, started=started, **manifest)


def _ingest_on_ray(lake: "Store", src: str, plan: SourcePlan, *, mode: str, retry_errors: bool, update: bool,
                   progress: bool | None, options: IngestOptions, started: datetime,
                   manifest: dict[str, Any]) -> IngestReport:
    """Every part of the source as a Ray task; the reports merged (see :func:`ingest`)."""
    from lakecurate.engines import ray_task_map

    t0 = time.perf_counter()
    report = IngestReport(lake=lake.uri, source=src, kind=plan.kind)
    if mode == "overwrite":  # a version with none of the old rows; the parts then append
        report.versions.append(lake.append(PAIRS_SCHEMA.empty_table(), overwrite=True))
    # Paths as the driver sees them: a worker's working directory is not the driver's.
    local = {k: (os.path.abspath(v) if isinstance(v, str) and "://" not in v else v) for k, v in manifest.items()
             if k in ("root", "image_dir")}
    manifest = {**manifest, **local}
    calls = [(lake.uri, lake.storage_options, lake.branch, path if "://" in path else os.path.abspath(path), kind,
              manifest, options, retry_errors, update, started) for path, kind in plan.units]
    bar = progress_bar(total=len(calls), desc=f"ingest {plan.kind} (ray)", unit="part", progress=progress)
    try:
        # A part is idempotent (it skips the ids it committed): a worker that died is rerun.
        for part in ray_task_map(_ingest_part, calls, retries=RAY_RETRIES):
            for name in ("seen", "written", "skipped_existing", "skipped_errors", "replaced", "markers_removed",
                         "errors_removed", "errors_unchanged", "content_present", "changed", "updated", "gone"):
                setattr(report, name, getattr(report, name) + getattr(part, name))
            report.status.update(part.status)
            report.flags.update(part.flags)
            report.ignored_files += part.ignored_files
            report.changed_keys = (report.changed_keys + part.changed_keys)[:NAMED]
            report.gone_keys = (report.gone_keys + part.gone_keys)[:NAMED]
            report.versions += part.versions
            bar.update(1)
    finally:
        bar.close()
    report.versions.sort()
    report.warnings = _changes_said(report, update)
    report.seconds = time.perf_counter() - t0
    return report
