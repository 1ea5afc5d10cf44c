"""The pairs table: its schema and the ingest reason codes.

One row is one image-text pair as it arrived. Rows are never deleted by curation; later stages add
columns (scores, groups, keep flags) next to these.

Image bytes live in a Lance *blob* column: scans of captions and metadata never touch them, and
``Lake.read_images`` fetches the bytes of chosen rows directly. ``scripts/bench_storage.py`` measures
the choice against a plain binary column (see ``docs/benchmarks.md``).
"""

from __future__ import annotations

import pyarrow as pa

# The field metadata key of a derived column's provenance record (lakecurate.columns.provenance).
PROVENANCE_KEY = "lakecurate.provenance"
# The table's schema metadata keeps each declared set's provenance under this prefix + its first
# column, written in the commit that declares it: a set another writer dropped whole (Lance,
# LanceDB) would otherwise leave no trace in the schema, and its stage would vanish from status.
# lakecurate's own drops forget the record first (lakecurate.graph.dropped_nodes reads what is left).
NODE_KEY = "lakecurate.node."

TABLE = "pairs"
# The side table of dedup's evidence (the linked pairs), one a branch (Store.side_uri); the store
# removes a deleted branch's.
EVIDENCE_TABLE = "dup_pairs"
# dup_group's field metadata key naming the version of the evidence table (and whose table: main's or
# a branch's) that its run wrote: the links that explain the decision a lake version holds.
EVIDENCE_KEY = "lakecurate:evidence"


def evidence_pin(schema: pa.Schema) -> tuple[str | None, int] | None:
    """(branch, version) of the evidence table that ``dup_group``'s run wrote, read from its field
    metadata (:data:`EVIDENCE_KEY`); None without a dedup, or a pin an older lakecurate did not write."""
    import json

    if "dup_group" not in schema.names:
        return None
    raw = (schema.field("dup_group").metadata or {}).get(EVIDENCE_KEY.encode())
    try:
        pin = json.loads(raw) if raw else None
    except ValueError:
        return None
    if isinstance(pin, dict) and isinstance(pin.get("version"), int) and isinstance(pin.get("branch"), (str, type(None))):
        return pin["branch"], pin["version"]
    return None

# The side table of recorded evaluations (lakecurate evaluate), one a branch as well.
EVAL_TABLE = "evaluations"

# ``lance-encoding:blob`` on a large_binary field makes Lance store the values out of line (blob v2);
# the arrow field stays a plain large_binary for writers, so batches are built with pa.array(bytes).
BLOB_META = {"lance-encoding:blob": "true"}


def is_blob(field: pa.Field) -> bool:
    """Whether ``field`` is a Lance blob column: a large_binary marked ``lance-encoding:blob`` (how
    lakecurate writes one), or Lance's blob extension type (how a dataset's schema reads one back)."""
    meta = field.metadata or {}
    ext = getattr(field.type, "extension_name", None) or meta.get(b"ARROW:extension:name", b"").decode()
    return meta.get(b"lance-encoding:blob") == b"true" or ext == "lance.blob.v2"


PAIRS_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string()),
        pa.field("image", pa.large_binary(), metadata=BLOB_META),
        pa.field("caption", pa.string()),
        pa.field("source", pa.string()),
        pa.field("key", pa.string()),
        pa.field("image_uri", pa.string()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("format", pa.string()),
        pa.field("mode", pa.string()),
        pa.field("byte_size", pa.int64()),
        pa.field("content_hash", pa.string()),
        pa.field("meta", pa.string()),
        pa.field("ingest_status", pa.string()),
        pa.field("ingest_flags", pa.list_(pa.string())),
        pa.field("ingest_error", pa.string()),
        pa.field("ingested_at", pa.timestamp("us", tz="UTC")),
    ],
    metadata={"lakecurate.table": TABLE, "lakecurate.schema_version": "1"},
)

# Column documentation, printed by `lakecurate info --schema` and kept in the README.
COLUMN_DOCS = {
    "id": "stable row id: 16 hex chars of blake2b(source, key); re-ingesting the same source adds nothing",
    "image": "encoded image bytes as found (Lance blob column; null when the file could not be read)",
    "caption": "caption text (UTF-8, stripped; null when missing)",
    "source": "where the pair came from: folder, manifest file or tar shard (absolute path or URI)",
    "key": "the pair's key inside its source (relative path, manifest key, or WebDataset sample key)",
    "image_uri": "the image's own location (file path, or shard.tar#member)",
    "width": "pixel width read from the image header (no full decode)",
    "height": "pixel height read from the image header",
    "format": "image format as detected from the bytes (JPEG, PNG, WEBP, GIF, ...)",
    "mode": "PIL mode of the stored image (RGB, L, CMYK, P, RGBA, I;16, ...)",
    "byte_size": "size of the image bytes",
    "content_hash": "sha256 of the image bytes (hex)",
    "meta": "JSON of extra fields: JSON sidecar keys, extra manifest columns",
    "ingest_status": "ok | warning (usable, but see flags) | error (image unusable)",
    "ingest_flags": "machine-readable reason codes, see REASONS",
    "ingest_error": "human-readable message for the most severe flag",
    "ingested_at": "when the row was written (UTC)",
}

# What the stages write (decisions and signals), for `lakecurate info` and whoever opens the table
# with LanceDB or Lance (the same words: README's sections of each stage say more).
DERIVED_DOCS = {
    "keep": "curate's decision: true = in the curated view (recipe in this column's provenance; null: not judged yet)",
    "drop_reason": "the first recipe step a dropped row failed (null when kept)",
    "dup_group": "dedup: the duplicate group's kept member's id (null for a row alone)",
    "dup_group_size": "dedup: rows in this row's duplicate group",
    "dup_keep": "dedup's decision: false = a duplicate of a better pair of its group",
    "dup_reason": "dedup: the first method that puts the row with its group's kept member ('phash:<kept id>'; "
                  "'linked:' for a chain of methods)",
    "concept": "cluster: the concept (k-means cluster of the embedding) the row belongs to",
    "concept_dist": "cluster: distance of the row's embedding to its concept's centre",
    "rebalance_keep": "rebalance's decision: true = in the rebalanced set (each concept pruned or kept to its budget)",
    "sample_weight": "rebalance: the row's weight when a trainer samples by weight",
    "repeats": "rebalance: how many times the row is shown per epoch (rare concepts up-sampled)",
    "seq_order": "sequence: the row's position in the training order (export writes rows in it)",
    "seq_shard": "sequence: the shard the row is written to",
    "caption_redacted": "signals --redact: the caption with e-mail addresses and phone numbers masked",
    "copy_hashes": "signals --copy: 8 pHashes of the picture inside its uniform surround, turned and mirrored",
    "phash": "signals: 64-bit DCT perceptual hash of the picture inside any uniform surround",
    "phash_flip": "signals: the pHash of the picture mirrored",
    "cap_words": "signals: words in the caption", "cap_chars": "signals: characters in the caption",
    "cap_filename": "signals: the caption is a file name (IMG_1234.JPG)",
    "cap_url": "signals: the caption contains a URL or a bare domain",
    "cap_boilerplate": "signals: stock/alt-text boilerplate ('image may contain', 'stock photo', ...)",
    "cap_max_repeat": "signals: the longest run of one repeated character ('!!!!!!!!' -> 8)",
    "cap_nonprintable": "signals: control, format, private-use and replacement characters in the caption",
    "cap_emails": "signals: e-mail addresses in the caption (privacy)",
    "cap_phones": "signals: phone numbers in the caption (privacy)",
    "cap_lang": "signals: the caption's language (ISO 639-1, py3langid)", "cap_lang_prob": "signals: its probability",
    "img_sharpness": "signals: how sharp the edges are, 0..4 whatever the exposure (low: blurry)",
    "img_entropy": "signals: grey-level histogram entropy in bits (low: near-uniform)",
    "img_colorfulness": "signals: Hasler & Suesstrunk colourfulness (grayscale: ~0)",
    "img_brightness": "signals: mean gray level, 0 black .. 1 white",
    "img_contrast": "signals: RMS contrast, std of the gray levels / 255 (fogged, washed out: low)",
    "img_faces": "faces: faces found in the image", "img_face_boxes": "faces: their boxes (x0, y0, x1, y1)",
    "img_face_scores": "faces: the detector's confidence per box",
    "img_text_share": "signals --text: share of the image covered by text", "img_text_lines": "signals --text: lines of text found",
    "review_verdict": "review: a person's verdict (keep | drop), read by a recipe's review step",
    "review_reason": "review: the reviewer's reason", "review_label": "review: a label the reviewer gave",
    "review_by": "review: who reviewed", "review_at": "review: when (UTC)",
}


def column_doc(name: str, prov: "dict | None" = None) -> str:
    """What a column holds: the source columns' docs, the stages' fixed names, and the columns named
    by a prefix (embeddings, dedup methods' groups, synthetic captions, features) from their stage."""
    if name in COLUMN_DOCS or name in DERIVED_DOCS:
        return COLUMN_DOCS.get(name) or DERIVED_DOCS[name]
    stage = str((prov or {}).get("stage") or "")
    cfg = (prov or {}).get("config") or {}
    if name.startswith("dup_") and name.endswith("_group"):
        how = "exact (image bytes and caption identical)" if name == "dup_pair_group" else name[4:-6]
        return f"dedup --method {how}: the id of the first member of the row's group (its own id when alone)"
    if stage == "embed":
        model = cfg.get("arch") or "the encoder"
        for end, what in (("_image", f"image embedding ({model}), unit length"),
                          ("_text", f"caption embedding ({model}), unit length"),
                          ("_score", f"alignment: cosine of the image and caption embeddings ({model})"),
                          ("_error", "why the row has no embedding (null: embedded)")):
            if name.endswith(end):
                return f"embed: {what}"
    if stage == "recaption":
        if name.endswith("_error"):
            return "recaption: why the row has no synthetic caption"
        if name.endswith("_tries"):
            return "recaption: calls made for the row"
        return f"recaption: a synthetic caption ({cfg.get('model') or cfg.get('arch') or 'a captioner'})"
    if stage == "feature":
        return f"feature {cfg.get('feature') or name}: a user's function of {', '.join(cfg.get('inputs') or []) or 'the row'}"
    return ""


# Reason code -> (severity, meaning). "error" means the image cannot be used for training;
# "warning" means the row is usable but a person or a later stage may want to look; "info" is a
# fact worth keeping that leaves the row ok.
REASONS: dict[str, tuple[str, str]] = {
    "file_missing": ("error", "the image file does not exist"),
    "file_unreadable": ("error", "the image file exists but could not be read (permissions, I/O error)"),
    "file_empty": ("error", "the image file is zero bytes"),
    "file_too_large": ("error", "the image file is larger than --max-bytes; bytes not stored"),
    "path_outside_root": ("error", "the image path escapes the source root; not read"),
    "remote_uri": ("error", "the image is a remote URL; download it first (e.g. with img2dataset)"),
    "image_path_missing": ("error", "the manifest row has no image path"),
    "image_missing": ("error", "a caption sidecar has no image next to it"),
    "image_unsupported": ("error", "the bytes are not an image format Pillow can read"),
    "image_corrupt": ("error", "the image header or data is corrupt"),
    "image_truncated": ("error", "the image data ends early"),
    "decompression_bomb": ("error", "the image declares more pixels than --max-pixels; not decoded"),
    "tar_corrupt": ("error", "the WebDataset shard could not be read past this point"),
    "manifest_row_invalid": ("error", "the manifest row could not be parsed (wrong number of fields, a bad JSON line)"),
    "image_cmyk": ("warning", "CMYK image; convert to RGB before use"),
    "image_16bit": ("warning", "16-bit or float image; values need rescaling before use"),
    "image_palette": ("warning", "palette (P-mode) image"),
    "image_alpha": ("warning", "image has an alpha channel / transparency"),
    "image_animated": ("warning", "animated image with several frames; the first frame is used"),
    "caption_missing": ("warning", "no caption (no sidecar, or no caption field)"),
    "caption_empty": ("warning", "the caption is empty or only whitespace"),
    "caption_not_utf8": ("warning", "the caption is not valid UTF-8; undecodable bytes were replaced"),
    "caption_too_long": ("warning", "the caption is longer than --max-caption-chars (kept whole)"),
    "name_not_utf8": ("warning", "the file or member name is not valid UTF-8; its undecodable bytes are shown as \\xNN"),
    "caption_not_text": ("warning", "the caption cell is not text: a number is kept as its text, anything else is left out"),
    "sidecar_invalid": ("warning", "the JSON sidecar could not be parsed"),
    "duplicate_key": ("warning", "the same key appeared earlier in this source; stored under key#N"),
    "caption_list": ("info", "the caption cell held a list of texts: the first is the caption, the others are in meta.other_captions"),
    "exif_rotated": ("info", "the EXIF orientation tag turns the image; embed and signals read it upright"),
    "member_name_unsafe": ("warning", "the tar member name is absolute or climbs with '..'; kept as the key, never used as a path"),
}


def severity(flags: list[str]) -> str:
    """The row status for a list of reason codes: error > warning > ok."""
    levels = {REASONS[f][0] for f in flags} - {"info"}
    if "error" in levels:
        return "error"
    return "warning" if levels else "ok"

