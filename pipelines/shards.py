"""Raw shards -> pair records, with every bad record counted, never silently lost.

A pair record is {"key", "image" (bytes), "texts" (list[str]), "caption" (the .txt / `txt`
caption or None), "meta" (JSON of the other fields, passed through to the curated output)}.
Shards are parsed whole (one shard = one unit of work and of resume): WebDataset tar
(key.jpg|png|webp + key.txt and/or key.json), img2dataset `files` folders (the same members as
files), and Parquet (image column image|jpg|jpeg|png|webp, binary or Hugging Face's
{bytes, path} struct). Which fields are texts, how they are deduplicated, and which
img2dataset sidecars are skipped: docs/curation.md, "Input formats and text fields". Tar
members are read into memory only -- never extracted -- and members with absolute or ".."
paths are rejected.

Keys become member names of the curated WebDataset shards, so a key from the data (json "key",
Parquet "key") that is not a safe member stem (absolute, "..", "." in the name, control
characters) is replaced by the member/row name, and a key seen twice in one shard makes the
second pair a counted corrupt_record (it could not be written, nor read back, as its own pair).
"""

from __future__ import annotations

import io
import json
import logging
import lzma
import posixpath
import tarfile
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
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
from worldclip.pipelines.wds import image_ext
from worldclip.platform import storage

log = logging.getLogger(__name__)

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "gif", "bmp")
# json fields / Parquet columns holding texts, after the `.txt` member (Parquet: `txt`). The
# MetaCLIP 2 attributes alt, title, data-image-title are separate texts of one pair.
TEXT_FIELDS = ("texts", "text", "caption", "alt", "title", "data-image-title")
# Reasons the parser itself decides; every other drop comes after LID and matching.
PARSE_DROPS = ("corrupt_record", "no_text", "download_failed", RECORD_TOO_LARGE,
               SHARD_TOO_LARGE)
# Parquet image columns: ours, then img2dataset's (named after --encode_format).
PARQUET_IMAGE_COLUMNS = ("image", "jpg", "jpeg", "png", "webp")
MAX_TEXT_CHARS = 4096  # longer captions are cut for LID and matching (web alt-text is short)
# a larger member is not read (gzip bombs): its pair is record_too_large (pipelines/limits.py)
MAX_MEMBER_BYTES = DEFAULT_LIMITS.max_record_bytes
MAX_KEY_CHARS = 256


def looks_like_image(data: bytes | None) -> bool:
    """Cheap magic-byte check; full decoding (and bomb limits) happens at ingest."""
    return image_ext(data) is not None


# Where a record's image lives in its raw shard: (member name, byte offset of the member's
# data, its length, parquet row group, parquet row); None where it does not apply
# (pipelines/refs.py reads it back, docs/curation.md "Match index by reference").
Ref = tuple[str | None, int | None, int | None, int | None, int | None]


@dataclass
class ShardResult:
    records: list[dict[str, Any]] = field(default_factory=list)
    drops: Counter = field(default_factory=Counter)  # reason -> pairs
    errors: list[str] = field(default_factory=list)  # shard-level problems, for the report
    keys: set[str] = field(default_factory=set, repr=False)  # keys of records, for duplicates
    duplicate_keys: int = 0
    replaced_keys: int = 0
    # how the image bytes of a record are found again in the raw shard (pipelines/refs.py):
    # tar (uncompressed: byte ranges), tar_stream (compressed tar: offsets in the decompressed
    # stream), parquet (row group + row), files (img2dataset folder: one file per member)
    kind: str = ""
    image_column: str = ""  # parquet: the column holding the images

    @property
    def pairs_in(self) -> int:
        return len(self.records) + sum(self.drops.values())


def _utf8_ok(s: str) -> bool:
    """False for strings with lone surrogates (JSON "\\udcff" escapes, broken decoders): they
    cannot be written as Arrow/UTF-8 strings and would fail the whole shard later."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def clean_texts(raw: Any) -> list[str]:
    """Strings only (valid UTF-8), stripped, non-empty, cut to MAX_TEXT_CHARS."""
    if isinstance(raw, str | bytes):
        raw = [raw]
    if not isinstance(raw, list | tuple):
        return []
    out = []
    for t in raw:
        if isinstance(t, bytes):
            try:
                t = t.decode("utf-8")
            except UnicodeDecodeError:
                continue
        if isinstance(t, str) and _utf8_ok(t):
            t = t.strip()
            if t:
                out.append(t[:MAX_TEXT_CHARS])
    return out


def pair_texts(txt: Any, fields: dict[str, Any]) -> list[str]:
    """The texts of one pair: the .txt caption, then TEXT_FIELDS in order, each cleaned, and
    identical texts kept once -- img2dataset writes its caption both as KEY.txt and as json
    `caption`, and a pair counted twice would double every entry count it matches."""
    texts = clean_texts(txt) if txt is not None else []
    for f in TEXT_FIELDS:
        if f in fields:
            texts.extend(clean_texts(fields[f]))
    return list(dict.fromkeys(texts))


def safe_key(key: Any) -> str | None:
    """key if it can name curated WebDataset members ({key}.jpg), else None."""
    if not isinstance(key, str) or not key or len(key) > MAX_KEY_CHARS:
        return None
    if _unsafe(key) or key.endswith("/") or "." in posixpath.basename(key):
        return None
    return key if _utf8_ok(key) else None


def download_failed(meta: dict[str, Any]) -> bool:
    """img2dataset keeps failed downloads as rows with their `status` (failed_to_download,
    failed_to_resize) and no image: not damage, so they get their own reason."""
    status = meta.get("status")
    return isinstance(status, str) and status != "success"


def _finish(res: ShardResult, key: str, image: bytes | None, texts: list[str],
            meta: dict[str, Any], caption: str | None = None, ref: Ref | None = None) -> None:
    if download_failed(meta):
        res.drops["download_failed"] += 1
        return
    if image is None or not looks_like_image(image):
        res.drops["corrupt_record"] += 1
        return
    if not texts:
        res.drops["no_text"] += 1
        return
    if key in res.keys:
        res.drops["corrupt_record"] += 1
        res.duplicate_keys += 1
        return
    res.keys.add(key)
    meta = {k: v for k, v in meta.items() if k not in TEXT_FIELDS and k not in ("key", "txt")}
    # lone surrogates in pass-through fields would fail the Arrow/UTF-8 writes: replace them
    meta_json = json.dumps(meta, ensure_ascii=False, default=str)
    meta_json = meta_json.encode("utf-8", "replace").decode("utf-8")
    res.records.append({"key": key, "image": image, "texts": texts, "caption": caption,
                        "meta": meta_json, "ref": ref})


def _report_keys(res: ShardResult, shard: str) -> None:
    if res.replaced_keys:
        res.errors.append(f"{shard}: {res.replaced_keys} record keys unusable as output member "
                          "names (absolute, '..', '.' or control characters) were replaced by "
                          "the member/row name; write keys like '00001_000042'")
    if res.duplicate_keys:
        res.errors.append(f"{shard}: {res.duplicate_keys} pairs repeat a key already used in the "
                          "shard; counted corrupt_record (keys must be unique per shard)")


def _unsafe(name: str) -> bool:
    return (name.startswith("/") or ".." in name.split("/") or "\\" in name
            or any(ord(c) < 32 or ord(c) == 127 for c in name))


def _check_tail(f: Any, shard: str, res: ShardResult) -> None:
    """Read past the end-of-archive marker: completes gzip/xz checksums (a damaged stream is
    reported, its pairs kept) and finds data after the marker (concatenated tars), which
    tarfile never reads."""
    left = MAX_MEMBER_BYTES
    try:
        while left > 0 and (chunk := f.read(min(left, 1 << 20))):
            left -= len(chunk)
            if chunk.strip(tarfile.NUL):
                res.errors.append(f"{shard}: data after the end-of-archive marker (concatenated "
                                  "tars?) is not read; rewrite the shard as one archive")
                return
    except (EOFError, OSError, zlib.error, lzma.LZMAError) as e:
        res.errors.append(f"{shard}: compressed stream damaged after the last member ({e}); "
                          "pair contents may be corrupt, re-copy the shard")


def parse_wds(data: bytes | Any, shard: str, limits: ReadLimits = DEFAULT_LIMITS
              ) -> ShardResult:
    """A WebDataset tar shard (bytes, or a seekable binary file: read as a stream). Members are
    grouped by key (basename up to the first dot).

    Decompressed bytes are budgeted from the member headers before any data is read
    (pipelines/limits.py): a member over limits.max_record_bytes makes its pair
    record_too_large; once the shard's members pass limits.max_shard_bytes, every later pair
    is shard_too_large. Skipped members are walked over, never held, so memory stays within
    the budget whatever the compression ratio.

    A truncated or corrupt tar keeps the pairs read before the damage; the incomplete group is
    counted corrupt and the shard error is reported. tarfile itself stops silently at a
    damaged or missing header after the first one, so the end-of-archive marker is checked.
    """
    res = ShardResult(kind="tar")
    groups: list[tuple[str, dict[str, Any]]] = []  # (key, ext -> bytes), in tar order
    latest: dict[str, int] = {}  # key -> index of its latest group

    def group_of(key: str, ext: str) -> dict[str, Any]:
        i = latest.get(key)
        if i is None or ext in groups[i][1]:  # a repeated member starts a new (duplicate) pair
            latest[key] = i = len(groups)
            groups.append((key, {}))
        return groups[i][1]

    budget = ShardBudget(limits)
    budget_noted = [False]
    src = io.BytesIO(data) if isinstance(data, bytes | bytearray | memoryview) else data
    if is_compressed(src):  # offsets are in the decompressed stream: no byte-range reads
        res.kind = "tar_stream"
    try:
        with tarfile.open(fileobj=src, mode="r:*") as tar:
            for m in tar:
                if not m.isfile():
                    continue
                base = posixpath.basename(m.name)
                stem, _, ext = base.partition(".")
                key = posixpath.join(posixpath.dirname(m.name), stem)
                if _unsafe(m.name):
                    res.errors.append(f"{shard}: rejected tar member with unsafe path {m.name!r} "
                                      "(absolute or '..'; never extracted); rewrite the shard "
                                      "with relative member names")
                    group_of("unsafe:" + key, ext.lower())[ext.lower()] = b""
                    continue
                over = budget.take(m.size)
                if over:
                    if over == RECORD_TOO_LARGE:
                        res.errors.append(f"{shard}: tar member {m.name!r} has {m.size} bytes, "
                                          f"over curation.max_record_bytes="
                                          f"{limits.max_record_bytes}; not read")
                    elif not budget_noted[0]:
                        budget_noted[0] = True
                        res.errors.append(f"{shard}: more than curation.max_shard_bytes="
                                          f"{limits.max_shard_bytes} decompressed bytes; pairs "
                                          f"from member {m.name!r} on are not read")
                    group_of(key, ext.lower())[f"__{over}__"] = b""
                    continue
                g = group_of(key, ext.lower())  # first: a failed read marks this group
                f = tar.extractfile(m)  # reads the member's bytes; nothing touches the disk
                g[ext.lower()] = f.read() if f else b""
                g[f"__ref__.{ext.lower()}"] = (m.name, m.offset_data, m.size, None, None)
            tar.fileobj.seek(tar.offset)
            if tar.fileobj.read(tarfile.BLOCKSIZE) != tarfile.NUL * tarfile.BLOCKSIZE:
                raise tarfile.ReadError(f"no valid tar header or end-of-archive marker at byte "
                                        f"{tar.offset}")
            _check_tail(tar.fileobj, shard, res)
    except (tarfile.TarError, EOFError, OSError, ValueError, zlib.error, lzma.LZMAError) as e:
        why = " ".join(str(e).split())
        res.errors.append(f"{shard}: corrupt or truncated tar after {len(groups)} keys ({why}); "
                          + ("pairs after the damage are lost" if groups else "file skipped")
                          + ", re-copy or rewrite the shard")
        if groups:  # the group being read when the damage hit may be incomplete
            groups[-1][1]["__partial__"] = b""
    _pairs_from_groups(res, groups)
    _report_keys(res, shard)
    return res


def is_compressed(f: Any) -> bool:
    """gzip/bzip2/xz magic at the start of a seekable binary file (position restored)."""
    pos = f.tell()
    head = f.read(6)
    f.seek(pos)
    return head.startswith((b"\x1f\x8b", b"BZh", b"\xfd7zXZ"))


def _pairs_from_groups(res: ShardResult, groups: list[tuple[str, dict[str, Any]]]) -> None:
    """(key, {extension: bytes}) groups of a tar or a files folder -> counted pairs."""
    for key, g in groups:
        if key.startswith("unsafe:") or "__partial__" in g:
            res.drops["corrupt_record"] += 1
            continue
        over = next((r for r in (RECORD_TOO_LARGE, SHARD_TOO_LARGE) if f"__{r}__" in g), None)
        if over or "__oversize__" in g:  # __oversize__: a files-folder file over the limit
            res.drops[over or RECORD_TOO_LARGE] += 1
            continue
        ext = next((e for e in IMAGE_EXTS if e in g), None)
        image = g[ext] if ext else None
        meta: dict[str, Any] = {}
        if "json" in g:
            try:
                meta = json.loads(g["json"].decode("utf-8"))
                if not isinstance(meta, dict):
                    raise ValueError("not an object")
            except (UnicodeDecodeError, ValueError, RecursionError):
                res.drops["corrupt_record"] += 1
                continue
        txt = clean_texts(g["txt"]) if "txt" in g else []
        texts = pair_texts(txt, meta)
        final = safe_key(meta["key"]) if "key" in meta else None
        res.replaced_keys += "key" in meta and final is None
        final = final or safe_key(key)
        if final is None:  # e.g. a member named ".jpg": no key to write it under
            res.drops["corrupt_record"] += 1
            continue
        _finish(res, final, image, texts, meta, txt[0] if txt else None,
                g.get(f"__ref__.{ext}"))


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
        if not texts:
            res.drops["no_text"] += 1
            continue
        if key in res.keys:
            res.drops["corrupt_record"] += 1
            res.duplicate_keys += 1
            continue
        res.keys.add(key)
        meta = {k: v for k, v in row.items() if k not in TEXT_ONLY_TEXT_FIELDS and k != "key"}
        meta_json = json.dumps(meta, ensure_ascii=False, default=str)
        res.records.append({"key": key, "image": None, "url": url, "texts": texts,
                            "meta": meta_json.encode("utf-8", "replace").decode("utf-8")})
    if not text_cols and table.num_rows:
        res.errors.append(f"{shard}: text-only Parquet (url, no image column) without a text "
                          f"column ({'/'.join(TEXT_ONLY_TEXT_FIELDS)}); all {table.num_rows} "
                          "rows counted corrupt_record")
    _report_keys(res, shard)
    return res


def parse_shard(data: bytes | Any, shard: str, limits: ReadLimits = DEFAULT_LIMITS
                ) -> ShardResult:
    """A shard's bytes (or a seekable binary file) -> counted pairs, within `limits`."""
    if shard.endswith(".parquet"):
        return parse_parquet(data, shard, limits)
    if shard.endswith((".tar", ".tar.gz", ".tgz")):
        return parse_wds(data, shard, limits)
    res = ShardResult()
    res.errors.append(f"{shard}: unknown shard format; use .tar (WebDataset) or .parquet, or "
                      "a folder of KEY.jpg + KEY.txt/KEY.json (img2dataset `files` output)")
    return res


# ---------------------------------------------------------------- img2dataset `files` folders

def is_folder(url: str) -> bool:
    return bool(storage.filesystem(url).isdir(storage.strip_scheme(url)))


def read_folder(url: str, limits: ReadLimits = DEFAULT_LIMITS) -> dict[str, bytes | None]:
    """The files directly in a folder: name -> bytes (None: over the record limit or past the
    shard budget of pipelines/limits.py, not read)."""
    fs = storage.filesystem(url)
    out: dict[str, bytes | None] = {}
    budget = ShardBudget(limits)
    for info in sorted(fs.ls(storage.strip_scheme(url), detail=True), key=lambda i: i["name"]):
        if info.get("type") != "file":
            continue
        name = posixpath.basename(info["name"].rstrip("/"))
        too_big = budget.take(int(info.get("size") or 0))
        out[name] = None if too_big else storage.read_bytes(storage.join(url, name))
    return out


def parse_files(files: dict[str, bytes | None], shard: str) -> ShardResult:
    """An img2dataset `files` shard folder (KEY.jpg, KEY.txt, KEY.json side by side): the same
    pairs, and the same accounting, as the tar holding those members."""
    res = ShardResult(kind="files")
    groups: dict[str, dict[str, Any]] = {}
    for name, data in files.items():
        stem, _, ext = name.partition(".")
        g = groups.setdefault(stem, {})
        if data is None:
            res.errors.append(f"{shard}: file {name!r} is over curation.max_record_bytes "
                              "or past curation.max_shard_bytes; not read")
            g["__oversize__"] = b""
        else:
            g[ext.lower()] = data
            g[f"__ref__.{ext.lower()}"] = (name, 0, len(data), None, None)
    _pairs_from_groups(res, list(groups.items()))
    _report_keys(res, shard)
    return res


def load_shard(url: str, limits: ReadLimits = DEFAULT_LIMITS) -> ShardResult:
    """Read and parse one input shard (a file, or an img2dataset `files` folder) by URL.

    A file within the shard budget is read whole (storage.read_bytes retries transient
    errors); a larger one is parsed from an open stream, so the raw file is never held either
    (pipelines/limits.py)."""
    if not url.endswith((".tar", ".tar.gz", ".tgz", ".parquet")) and is_folder(url):
        return parse_files(read_folder(url, limits), url)
    fs, path = storage.filesystem(url), storage.strip_scheme(url)
    if storage.retry(lambda: fs.size(path), what=f"size {url}") > limits.max_shard_bytes:
        with fs.open(path, "rb") as f:
            return parse_shard(f, url, limits)
    return parse_shard(storage.read_bytes(url), url, limits)


# ---------------------------------------------------------------- input listing

def sidecar_reason(url: str, listed: set[str]) -> str | None:
    """Why an input URL is an img2dataset sidecar, not data (None: it is data).

    img2dataset writes NNNNN_stats.json beside every shard, and beside each NNNNN.tar (or
    NNNNN/ `files` folder) a metadata-only NNNNN.parquet of the same rows without images. Its
    Parquet output has no sibling tar or folder: that file is data."""
    base = posixpath.basename(url.rstrip("/"))
    if base.endswith("_stats.json"):
        return "img2dataset stats sidecar"
    if base.endswith(".parquet"):
        stem = url[: -len(".parquet")]
        name = posixpath.basename(stem)
        if stem + ".tar" in listed or storage.exists(stem + ".tar"):
            return f"img2dataset metadata-only sidecar of {name}.tar (no images)"
        if storage.exists(stem) and is_folder(stem):
            return f"img2dataset metadata-only sidecar of the folder {name}/ (no images)"
    return None


def shard_name(url: str) -> str:
    """Stable output name for an input shard: its file name without extension."""
    base = posixpath.basename(url)
    for ext in (".tar.gz", ".tgz", ".tar", ".parquet"):
        if base.endswith(ext):
            return base[: -len(ext)]
    return base
