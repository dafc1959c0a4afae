"""Parquet shards -> counted pairs, read row group by row group within the read limits
(pipelines/limits.py): image shards (ours, img2dataset's, Hugging Face datasets') and
text-only shards (url + texts, curated before download)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from worldclip.pipelines.limits import (
    DEFAULT_LIMITS,
    RECORD_TOO_LARGE,
    SHARD_TOO_LARGE,
    ReadLimits,
    ShardBudget,
)
from worldclip.pipelines.shards.records import (
    TEXT_FIELDS,
    Ref,
    ShardResult,
    _finish,
    _report_keys,
    _utf8_ok,
    admit,
    clean_texts,
    meta_json,
    pair_texts,
    safe_key,
    shard_name,
)

# Parquet image columns: ours, then img2dataset's (named after --encode_format).
PARQUET_IMAGE_COLUMNS = ("image", "jpg", "jpeg", "png", "webp")


def parquet_image_column(columns: set[str] | list[str]) -> str | None:
    """The column holding image bytes: `image` (binary, or Hugging Face datasets' struct
    {bytes, path}) or img2dataset's column named after its encode format (jpg, png, webp)."""
    return next((c for c in PARQUET_IMAGE_COLUMNS if c in set(columns)), None)


def image_bytes(value: Any) -> bytes | None:
    """Binary cell, or the `bytes` of a Hugging Face datasets Image struct {bytes, path}."""
    if isinstance(value, dict):
        value = value.get("bytes")
    return value if isinstance(value, bytes) else None


def _binary_lengths(arr: pa.Array, rows: int, parents: np.ndarray | None = None
                    ) -> np.ndarray:
    """Decoded bytes per row of binary/string data in arr (structs, lists and dictionary
    arrays walked: a dictionary value counts once per row that references it, as it would
    once expanded); fixed-width values are ignored (they cannot be large)."""
    out = np.zeros(rows, np.int64)
    t = arr.type
    at = parents if parents is not None else np.arange(len(arr))
    if pa.types.is_dictionary(t):
        # one spare slot: an all-null column has an empty dictionary, and null indices read
        # slot 0 (then zeroed by is_valid) -- img2dataset Parquet whose downloads all failed
        dict_lens = np.append(_binary_lengths(arr.dictionary, len(arr.dictionary)), 0)
        idx = arr.indices.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
        lens = dict_lens[idx] * arr.is_valid().to_numpy(zero_copy_only=False)
        np.add.at(out, at, lens)
    elif pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_string(t) \
            or pa.types.is_large_string(t):
        np.add.at(out, at, pc.binary_length(arr).fill_null(0).to_numpy(zero_copy_only=False))
    elif pa.types.is_struct(t):
        for i in range(t.num_fields):
            out += _binary_lengths(pc.struct_field(arr, [i]), rows, parents)
    elif pa.types.is_list(t) or pa.types.is_large_list(t):
        idx = pc.list_parent_indices(arr).to_numpy(zero_copy_only=False)
        out += _binary_lengths(pc.list_flatten(arr), rows, at[idx])
    return out


def row_bytes(table: pa.Table) -> np.ndarray:
    """Decoded bytes of each row's cells (pipelines/limits.py, per-record limit)."""
    out = np.zeros(table.num_rows, np.int64)
    for col in table.columns:
        out += _binary_lengths(col.combine_chunks(), table.num_rows)
    return out


def open_parquet(data: bytes | Any) -> pq.ParquetFile:
    """A Parquet file (bytes or a seekable binary file) whose binary/string columns read as
    dictionary arrays: repeated values (a 1 MB value in every row of a dictionary-encoded
    column) stay one copy until a row is materialised, so a row group's decoded size can be
    measured before anything is expanded."""
    src = io.BytesIO(data) if isinstance(data, bytes | bytearray | memoryview) else data
    pf = pq.ParquetFile(src)
    paths = [c.path for c in pf.schema if c.physical_type == "BYTE_ARRAY"]
    if not paths:
        return pf
    src.seek(0)
    return pq.ParquetFile(src, read_dictionary=paths)


def bounded_row_groups(pf: pq.ParquetFile, shard: str, res: ShardResult, limits: ReadLimits,
                       refused: dict[int, str] | None = None
                       ) -> Iterator[tuple[np.ndarray, pa.Table]]:
    """(row indices in the file, table of those rows) per row group, within the limits.

    A row group is skipped unread when the footer already says it cannot fit: a single row
    over max_record_bytes (record_too_large), or an encoded size past what is left of
    max_shard_bytes (shard_too_large). A row group that is read (dictionary-preserving, see
    open_parquet) is then measured row by row on decoded bytes: rows over max_record_bytes
    are record_too_large, rows past the shard budget shard_too_large. Every refused row is
    counted in res.drops (and, with `refused`, recorded as row index -> reason); the rows
    yielded together stay within the budget."""
    refused = {} if refused is None else refused
    budget = ShardBudget(limits)
    md = pf.metadata
    start = 0
    for i in range(md.num_row_groups):
        rg = md.row_group(i)
        n, size = rg.num_rows, rg.total_byte_size
        rows = np.arange(start, start + n)
        start += n
        if n == 1 and size > limits.max_record_bytes:
            _refuse(res, shard, RECORD_TOO_LARGE, n, limits, f"row group {i} (1 row)", size)
            refused.update(dict.fromkeys(rows.tolist(), RECORD_TOO_LARGE))
            continue
        if budget.exhausted or budget.used + size > limits.max_shard_bytes:
            budget.exhausted = True
            _refuse(res, shard, SHARD_TOO_LARGE, n, limits, f"row group {i} ({n} rows)", size)
            refused.update(dict.fromkeys(rows.tolist(), SHARD_TOO_LARGE))
            continue
        try:
            table = pf.read_row_group(i)
        except (pa.ArrowException, OSError, ValueError) as e:
            res.errors.append(f"{shard}: row group {i} unreadable ({e}); its {n} rows "
                              "counted corrupt_record, rewrite the file")
            res.drops["corrupt_record"] += n
            refused.update(dict.fromkeys(rows.tolist(), "corrupt_record"))
            continue
        ok = []
        for j, b in enumerate(row_bytes(table).tolist()):
            over = budget.take(b)
            if over:
                _refuse(res, shard, over, 1, limits, f"row {start - n + j}", b, read=True)
                refused[start - n + j] = over
            else:
                ok.append(j)
        if len(ok) < n:
            table = table.take(pa.array(ok, pa.int64()))
        yield rows[ok], table


def _refuse(res: ShardResult, shard: str, why: str, n: int, limits: ReadLimits, what: str,
            size: int, read: bool = False) -> None:
    """Count n pairs under why; the first refusal of each reason is reported."""
    if not res.drops.get(why):
        key = "max_record_bytes" if why == RECORD_TOO_LARGE else "max_shard_bytes"
        res.errors.append(f"{shard}: {what} holds {size} bytes (uncompressed), over "
                          f"curation.{key}={getattr(limits, key)}; counted {why}, "
                          + ("dropped after the row group was read" if read else "not read"))
    res.drops[why] += n


def parse_parquet(data: bytes | Any, shard: str, limits: ReadLimits = DEFAULT_LIMITS
                  ) -> ShardResult:
    """A Parquet shard (bytes or a seekable binary file): columns key (optional), an image
    column (parquet_image_column), text columns txt and TEXT_FIELDS; img2dataset's failed rows
    (status) count download_failed. Read row group by row group within the limits
    (bounded_row_groups)."""
    res = ShardResult()
    try:
        pf = open_parquet(data)
        cols = set(pf.schema_arrow.names)
        num_rows = pf.metadata.num_rows
    except (pa.ArrowException, OSError, ValueError) as e:
        res.errors.append(f"{shard}: unreadable Parquet ({e}); the file is skipped, rewrite it")
        return res
    if is_text_only(cols):  # text-first curation: `worldclip wat` shards (docs/curation.md)
        parts = [t for _, t in bounded_row_groups(pf, shard, res, limits)]
        out = parse_text_only(pa.concat_tables(parts) if parts else
                              pf.schema_arrow.empty_table(), shard)
        out.drops.update(res.drops)
        out.errors[:0] = res.errors
        return out
    image_col = parquet_image_column(cols)
    if image_col is None:
        res.errors.append(
            f"{shard}: Parquet columns {sorted(cols)} lack 'image' (or img2dataset's "
            f"{'/'.join(PARQUET_IMAGE_COLUMNS[1:])}); all {num_rows} rows counted "
            "corrupt_record")
        res.drops["corrupt_record"] += num_rows
        return res
    text_cols = [c for c in TEXT_FIELDS if c in cols]
    if not text_cols and "txt" not in cols and num_rows:
        res.errors.append(
            f"{shard}: Parquet columns {sorted(cols)} have no text column "
            f"(txt/{'/'.join(TEXT_FIELDS)}); its pairs count no_text (img2dataset without "
            "--caption_col?)")
    prefix = shard_name(shard).replace(".", "_")  # no dots: WebDataset splits keys at the first
    res.kind, res.image_column = "parquet", image_col
    starts = np.cumsum([0] + [pf.metadata.row_group(g).num_rows
                              for g in range(pf.metadata.num_row_groups)])
    for rows, table in bounded_row_groups(pf, shard, res, limits):
        for i, row in zip(rows.tolist(), table.to_pylist(), strict=True):
            rg = int(np.searchsorted(starts, i, side="right") - 1)
            _parquet_pair(res, row, i, prefix, image_col, (None, None, None, rg, i))
        del table
    _report_keys(res, shard)
    return res


def _parquet_pair(res: ShardResult, row: dict[str, Any], i: int, prefix: str,
                  image_col: str, ref: Ref | None = None) -> None:
    """One Parquet row -> a counted pair."""
    key = safe_key(row.get("key"))
    if key is None and row.get("key") is not None:
        res.replaced_keys += 1
    key = key or f"{prefix}_{i:06d}"
    txt = clean_texts(row.get("txt"))
    meta = {k: v for k, v in row.items() if k != image_col}
    _finish(res, key, image_bytes(row.get(image_col)), pair_texts(txt, meta), meta,
            txt[0] if txt else None, ref)


# Text-only shards (docs/curation.md, "Text-first curation from Common Crawl"): an image URL
# and its texts, no image yet. Any column that can hold image bytes (ours, img2dataset's
# encode-format column, a Hugging Face `image` struct) makes a shard an image shard instead.
TEXT_ONLY_TEXT_FIELDS = TEXT_FIELDS  # alt, title, data-image-title among them


def is_text_only(columns: set[str] | list[str]) -> bool:
    """A Parquet shard with a `url` column and no image column: curated before download."""
    cols = set(columns)
    return "url" in cols and parquet_image_column(cols) is None


def _http_url(v: Any) -> str | None:
    if isinstance(v, str) and v.startswith(("http://", "https://")) and _utf8_ok(v):
        return v
    return None


def parse_text_only(table: pa.Table, shard: str) -> ShardResult:
    """Rows of a text-only shard -> records with `url` and image None.

    Texts are the text columns in order (alt, title, data-image-title for `wat` shards), exact
    duplicates removed: alt == title is common and must not count twice in matching. A row
    without an http(s) URL is a corrupt_record (nothing could ever be downloaded for it)."""
    res = ShardResult(kind="text")
    cols = set(table.column_names)
    text_cols = [c for c in TEXT_ONLY_TEXT_FIELDS if c in cols]
    prefix = shard_name(shard).replace(".", "_")
    for i, row in enumerate(table.to_pylist()):
        key = safe_key(row.get("key"))
        if key is None and row.get("key") is not None:
            res.replaced_keys += 1
        key = key or f"{prefix}_{i:06d}"
        url = _http_url(row.get("url"))
        if url is None or not text_cols:
            res.drops["corrupt_record"] += 1
            continue
        texts: list[str] = []
        for c in text_cols:
            texts.extend(t for t in clean_texts(row.get(c)) if t not in texts)
        if not admit(res, key, texts):
            continue
        meta = {k: v for k, v in row.items() if k not in TEXT_ONLY_TEXT_FIELDS and k != "key"}
        res.records.append({"key": key, "image": None, "url": url, "texts": texts,
                            "meta": meta_json(meta)})
    if not text_cols and table.num_rows:
        res.errors.append(f"{shard}: text-only Parquet (url, no image column) without a text "
                          f"column ({'/'.join(TEXT_ONLY_TEXT_FIELDS)}); all {table.num_rows} "
                          "rows counted corrupt_record")
    _report_keys(res, shard)
    return res
