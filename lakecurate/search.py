"""Nearest-pair search over embedding columns (Lance vector search; IVF_PQ index on large lakes).

The encoder for a query is rebuilt from the columns' own provenance, so a lake embedded with any
model can be searched without saying which model made it.
"""

from __future__ import annotations

import io
import os
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa

from lakecurate.columns import field_provenance
from lakecurate.encoders import Encoder, column_names, spec_from_provenance
from lakecurate.lake import LakeError
from lakecurate.sqlcheck import check_where

if TYPE_CHECKING:
    import lance

    from lakecurate.lake import Lake

# Below this many rows a flat scan is fast (a few ms per query); above it, embed builds an index.
INDEX_MIN_ROWS = 100_000
_ENCODERS: dict[str, Encoder] = {}


def embedding_prefixes(ds: "lance.LanceDataset") -> dict[str, dict[str, Any]]:
    """Prefixes of the embed stage's columns in this table, with their provenance."""
    out = {}
    for field in ds.schema:
        prov = field_provenance(field)
        if prov and prov["stage"] == "embed" and field.name.endswith("_score"):
            out[field.name[: -len("_score")]] = prov
    return out


def encoder_for(prov: dict[str, Any], device: str = "auto") -> Encoder:
    """The encoder that made a column (cached per config)."""
    key = prov["config_hash"]
    if key not in _ENCODERS:
        _ENCODERS[key] = Encoder(spec_from_provenance(prov), device=device, precision=prov["config"].get("precision", "fp32"))
    return _ENCODERS[key]


def pick_embedding(lake: "Lake", ds: "lance.LanceDataset", name: str | None = None, *, need: str | None = "",
                   option: str = "--embedding NAME") -> tuple[str | None, dict[str, Any] | None]:
    """The embed columns' prefix to use and its provenance: ``name`` when given, else the lake's only one.

    Several embeddings and no ``name`` is an error naming ``option``. No embedding at all is an
    error saying what needs one (``need``), or (None, None) when ``need`` is None (optional).
    """
    found = embedding_prefixes(ds)
    if name is not None:
        if name not in found:
            raise LakeError(f"no embedding '{name}' in lake '{lake.uri}'; there are: {', '.join(found) or 'none'}"
                            + ("" if found else f"; run: lakecurate embed {lake.uri}"))
        return name, found[name]
    if len(found) > 1:
        raise LakeError(f"lake '{lake.uri}' has several embeddings ({', '.join(found)}); pass {option}")
    if found:
        name = next(iter(found))
        return name, found[name]
    if need is None:
        return None, None
    raise LakeError(f"lake '{lake.uri}' has no embedding columns; run: lakecurate embed {lake.uri}" + (f" ({need})" if need else ""))


def embedding_matrix(col: "pa.ChunkedArray | pa.Array", dtype: Any = np.float32) -> tuple[np.ndarray, np.ndarray]:
    """(rows x d matrix, valid mask) of a fixed-size-list embedding column; null rows read as zeros.
    ``dtype=None`` keeps the stored type (float16 halves the memory of a large lake)."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    valid = ~np.asarray(arr.is_null().to_numpy(zero_copy_only=False), bool)
    x = np.asarray(arr.values.to_numpy(zero_copy_only=False), dtype=dtype).reshape(-1, arr.type.list_size)
    return x, valid


def query_vector(enc: Encoder, query: Any) -> Any:
    """Text, an image file path, image bytes or a PIL image -> one normalised vector."""
    from PIL import Image

    if isinstance(query, Image.Image):
        return enc.encode_images([query])[0].numpy()
    if isinstance(query, (bytes, bytearray)):
        return enc.encode_images([Image.open(io.BytesIO(query))])[0].numpy()
    if isinstance(query, os.PathLike) or (isinstance(query, str) and os.path.isfile(query)):
        try:
            with Image.open(query) as im:
                rgb = im.convert("RGB")
        except (OSError, ValueError, Image.DecompressionBombError) as exc:  # UnidentifiedImageError is an OSError
            raise LakeError(f"query '{os.fspath(query)}' is a file but not an image Pillow can read "
                            f"({type(exc).__name__}); pass an image file, or a text query that is not a file name") from None
        return enc.encode_images([rgb])[0].numpy()
    return enc.encode_texts([str(query)])[0].numpy()


def search(
    lake: "Lake",
    query: Any,
    k: int = 10,
    *,
    prefix: str | None = None,
    target: str = "image",
    where: str | None = None,
    columns: list[str] | None = None,
) -> pd.DataFrame:
    """The ``k`` pairs nearest to ``query`` (text or image) by their ``target`` ("image"/"text") vectors.

    Returns id, key, caption (or ``columns``) and ``similarity`` (cosine), best first.
    """
    if k < 1:  # Lance would raise on k = 0 only after the encoder is loaded
        raise LakeError(f"k = {k}: ask for at least 1 nearest pair")
    ds = lake.dataset()
    where = check_where(where, "--where", ds)
    prefix, prov = pick_embedding(lake, ds, prefix, need="search compares against them", option="prefix=...")
    col = column_names(prefix)[target]
    vec = query_vector(encoder_for(prov), query)
    nearest = {"column": col, "q": vec, "k": k, "metric": "cosine"}
    if ds.has_index:
        nearest.update(nprobes=20, refine_factor=10)
    tbl = ds.to_table(nearest=nearest, columns=columns or ["id", "key", "caption"], filter=where, prefilter=True)
    df = tbl.to_pandas()
    df["similarity"] = 1.0 - df.pop("_distance")
    return df


def ensure_index(lake: "Lake", prefix: str, min_rows: int = INDEX_MIN_ROWS) -> bool:
    """Build an IVF_PQ index on ``{prefix}_image`` once the lake is large; returns True if it built one."""
    ds = lake.dataset()
    col = column_names(prefix)["image"]
    n = ds.count_rows(filter=f"{col} IS NOT NULL")
    if n < min_rows or any(col in idx.field_names for idx in ds.describe_indices()):
        return False
    dim = ds.schema.field(col).type.list_size
    ds.create_index(col, index_type="IVF_PQ", metric="cosine", num_partitions=max(1, int(n**0.5) // 4),
                    num_sub_vectors=max(1, dim // 16))
    return True
