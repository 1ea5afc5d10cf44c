"""Nearest-pair search over embedding columns (Lance vector search; IVF_PQ index on large lakes).

The encoder for a query is rebuilt from the columns' own provenance, so a lake embedded with any
model can be searched without saying which model made it.
"""

from __future__ import annotations

import numbers
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from lakecurate.columns import embedding_matrix  # noqa: F401 - re-exported for older callers
from lakecurate.encoders import Encoder, spec_from_provenance
from lakecurate.errors import LakeError
from lakecurate.images import decode_image
from lakecurate.names import embedding_columns, embedding_prefixes, pick_embedding  # noqa: F401
from lakecurate.options import flag, given, texts
from lakecurate.sqlcheck import check_where
from lakecurate.store import INDEX_MIN_ROWS  # noqa: F401 - re-exported

if TYPE_CHECKING:

    from lakecurate.store import Store

_ENCODERS: dict[str, Encoder] = {}


def encoder_for(prov: dict[str, Any], device: str = "auto") -> Encoder:
    """The encoder that made a column (cached per config)."""
    key = prov["config_hash"]
    if key not in _ENCODERS:
        _ENCODERS[key] = Encoder(spec_from_provenance(prov), device=device, precision=prov["config"].get("precision", "fp32"))
    return _ENCODERS[key]


def query_vector(enc: Encoder, query: Any, *, text: bool = False) -> Any:
    """Text, an image file path, image bytes or a PIL image -> one normalised vector (a vector
    already encoded, a numpy array, is normalised too: a cosine does not read its length). ``text``:
    a str is the text itself, even where a file of that name is in the working folder."""
    import numpy as np
    from PIL import Image

    if isinstance(query, (list, tuple)) and query and all(isinstance(x, numbers.Real) and not isinstance(x, bool)
                                                          for x in query):
        query = np.asarray(query, np.float64)  # a list of numbers is a vector, as an array is
    if isinstance(query, np.ndarray):
        # in float64, scaled by its largest entry: 1e30s overflowed float32's squares (a numpy warning,
        # then no nearest pair at all)
        wide = np.asarray(query, np.float64).reshape(-1)
        dim = getattr(enc, "dim", None)
        if dim and wide.shape[0] != dim:
            raise LakeError(f"a query vector of {wide.shape[0]} numbers for embeddings of {dim}; pass a vector of "
                            f"that embedding, or a text or an image")
        top = float(np.abs(wide).max()) if len(wide) and np.isfinite(wide).all() else float("nan")
        if not top > 0:  # zeros or NaN: no direction, so no nearest pair (it returned none without a word)
            raise LakeError("the query vector is all zeros or not finite: it points nowhere; pass another")
        scaled = wide / top
        return (scaled / np.linalg.norm(scaled)).astype(np.float32)
    if isinstance(query, Image.Image):
        return enc.encode_images([query])[0].numpy()
    is_bytes = isinstance(query, (bytes, bytearray))
    if is_bytes or isinstance(query, os.PathLike) or (isinstance(query, str) and not text and os.path.isfile(query)):
        try:
            data = bytes(query) if is_bytes else Path(query).read_bytes()
        except OSError as exc:
            raise LakeError(f"query '{os.fspath(query)}' cannot be read: {exc.strerror or exc}") from None
        # decoded as the lake's images are (upright as EXIF says, 16-bit scaled, the first frame), and its
        # failures named as theirs: a truncated photo was "not an image Pillow can read; search the words"
        rgb, reason = decode_image(data)
        if rgb is None:
            what = "the image bytes given are" if is_bytes else f"query '{os.fspath(query)}' is"
            detail = reason.split(": ", 1)[-1]
            if "DecompressionBombError" in reason or reason.startswith("image_too_large"):
                raise LakeError(f"{what} an image of more pixels than Pillow decodes ({detail}); pass a smaller copy "
                                "of it")
            if "UnidentifiedImageError" in reason:
                what = "the image bytes given are" if is_bytes else f"query '{os.fspath(query)}' is a file but"
                raise LakeError(f"{what} not an image Pillow can read; pass an image file, or search for the words "
                                f"with {given('--text')}")
            raise LakeError(f"{what} an image that cannot be decoded ({detail}); pass a whole copy of it")
        return enc.encode_images([rgb])[0].numpy()
    if not isinstance(query, str):  # None or a list were searched for as the caption "None", "['a cat']"
        raise LakeError(f"search for a text, an image (a file path, bytes, a PIL image) or a vector, not "
                        f"{type(query).__name__} {str(query)[:40]!r}")
    return enc.encode_texts([_text_query(query, words=text)])[0].numpy()


def _text_query(query: Any, words: bool = False) -> str:
    """``query`` as the text to encode, or a LakeError: empty text, text that is not Unicode (bytes
    a terminal in another encoding passed through as surrogates) and a path (with a folder) of an
    image file that is not there (a typo would otherwise be searched for as a caption) are refused.
    ``words`` (``--text``): the text is the words asked for, whatever it looks like (a path, a URL)."""
    text = str(query)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise LakeError(f"query {text!r} is not valid UTF-8 text; pass it in UTF-8 (is the terminal set to "
                        "another encoding?)") from None
    if not text.strip():
        raise LakeError("the query is empty; pass a text or the path of an image file")
    if words:
        return text
    if re.match(r"(?i)(https?|s3|gs|ftp)://\S+$", text.strip()):  # "no such file" said nothing of why
        raise LakeError(f"query '{text}' is a URL: search does not fetch images; download it and pass its path")
    from lakecurate.ingest import IMAGE_EXTS  # what ingest takes for an image file

    if ("/" in text or os.sep in text) and not any(c.isspace() for c in text) and \
            os.path.splitext(text)[1].lower() in IMAGE_EXTS:
        raise LakeError(f"query '{text}' looks like the path of an image file, but there is no such file; check "
                        "the path (a bare file name such as IMG_1234.jpg is searched for as a caption)")
    if ("/" in text or os.sep in text) and os.path.isdir(text):  # (its name was searched for as a caption)
        raise LakeError(f"query '{text}' is a folder; pass the path of one image file, or a text")
    return text


def _no_embedding_then(lake: "Store", version: int | str, prefix: str | None) -> None:
    """Refuse a search at a ``version`` that has no embedding (``prefix``: none of that name),
    saying whether the latest version has it (it said "run: lakecurate embed", which the latest
    version may not need)."""
    latest = embedding_prefixes(lake.dataset())
    what = f"embedding '{prefix}'" if prefix else "embedding"
    if (prefix in latest) if prefix else latest:
        then = f"the latest version has {prefix or ', '.join(latest)}: search that one (no version)"
    elif latest:
        then = f"nor has the latest version (it has {', '.join(latest)})"
    else:
        then = f"nor has the latest version; run: lakecurate embed {lake.shell}, then search it"
    raise LakeError(f"version {version} of lake '{lake.uri}' has no {what} (search compares against one); {then}")


def search(
    lake: "Store",
    query: Any,
    k: int = 10,
    *,
    prefix: str | None = None,
    target: str = "image",
    where: str | None = None,
    columns: list[str] | None = None,
    version: int | str | None = None,
    row_address: bool = False,
    option: str = "prefix=...",
    text: bool = False,
) -> pd.DataFrame:
    """The ``k`` pairs nearest to ``query`` (text or image) by their ``target`` ("image"/"text") vectors.

    ``text=True``: a str query is the words themselves, even where a file of that name is in the
    working folder. Returns id, key, caption (or ``columns``) and ``similarity`` (cosine), best first
    (``attrs["notes"]``: the embedding's rows not computed yet or stale, with the command); at
    ``version`` (a number, tag or branch); with ``row_address``, the rows' ``_rowaddr`` too. The
    encoder is loaded once per process (:func:`encoder_for`), so a long-lived caller (the browser
    app) pays for it once.
    """
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:  # Lance would raise on k = 0 only after the encoder is loaded
        raise LakeError(f"k = {k!r}: ask for at least 1 nearest pair (a whole number)")
    if target not in ("image", "text"):
        raise LakeError(f"target {target!r}: search the image or the text vectors (target='image' or 'text')")
    columns = texts("columns", columns, none_ok=True)  # (one name is a list of one, as the README says)
    twice = sorted({c for c in columns or [] if list(columns).count(c) > 1})
    if twice:  # (Lance refused it with a Rust source path)
        raise LakeError(f"columns {list(columns)!r} name {', '.join(twice)} more than once; give each column once")
    row_address = flag("row_address", row_address)  # "yes" reached Lance: a TypeError
    text = flag("text", text)  # (1 or "no" was taken as true)
    ds = lake.dataset(version)
    where = check_where(where, "--where", ds)
    if columns is None:  # (the default columns: a caption another writer renamed was a Lance error)
        from lakecurate.columns import check_table

        check_table(lake, ds)
    missing = [c for c in columns or [] if c not in ds.schema.names]
    if missing:
        raise LakeError(f"no column {', '.join(missing)} in lake '{lake.uri}'; see its columns with lakecurate info {lake.shell}")
    there = embedding_prefixes(ds)
    if version is not None and ((prefix not in there) if prefix else not there):
        _no_embedding_then(lake, version, prefix)
    prefix, prov = pick_embedding(lake, ds, prefix, need="search compares against them", option=option)
    col = embedding_columns(prefix)[target]
    if col not in ds.schema.names:  # (its sibling columns are there: this one was dropped by another writer)
        from lakecurate.graph import embed_command

        raise LakeError(f"lake '{lake.uri}' has no {col}, the {target} vectors of embedding {prefix} (removed since it "
                        f"was computed); compute them again: {embed_command(lake, prefix, prov)} --recompute")
    k = min(int(k), max(1, ds.count_rows()))  # (no more rows than the lake has: 2**70 overflowed in Lance)
    if isinstance(query, str) and (text or not os.path.isfile(query)):
        _text_query(query, words=text)  # refused before the encoder is loaded
    vec = query_vector(encoder_for(prov), query, text=text)
    nearest = {"column": col, "q": vec, "k": k, "metric": "cosine"}
    if ds.has_index:
        nearest.update(nprobes=20, refine_factor=10)
    tbl = ds.to_table(nearest=nearest, columns=columns or ["id", "key", "caption"], filter=where, prefilter=True,
                      with_row_address=row_address)
    df = tbl.to_pandas()
    df["similarity"] = 1.0 - df.pop("_distance")
    # vectors not computed for some rows, or from inputs rewritten since: those rows are missed or
    # ranked by old vectors; said (the CLI: on stderr), never silent
    from lakecurate.graph import not_current_notes

    df.attrs["notes"] = not_current_notes(lake, ds, [col], "the search misses those rows or ranks them by old vectors",
                                          named=col)
    return df
