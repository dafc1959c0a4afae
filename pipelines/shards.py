"""Raw shards -> pair records, with every bad record counted, never silently lost.

A pair record is {"key", "image" (bytes), "texts" (list[str]), "meta" (JSON of the other
fields, passed through to the curated output)}. Shards are parsed whole (one shard = one unit
of work and of resume): WebDataset tar (key.jpg|png|webp + key.json {"texts": [...]} or
key.txt) and Parquet (key?, image, texts | text | caption). Tar members are read into memory
only -- never extracted -- and members with absolute or ".." paths are rejected.

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
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

log = logging.getLogger(__name__)

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "gif", "bmp")
TEXT_FIELDS = ("texts", "text", "caption", "alt", "title")
MAX_TEXT_CHARS = 4096  # longer captions are cut for LID and matching (web alt-text is short)
MAX_MEMBER_BYTES = 64 << 20  # a larger tar member is not read (gzip bombs); its pair is corrupt
MAX_KEY_CHARS = 256
_MAGIC = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"BM")


def looks_like_image(data: bytes | None) -> bool:
    """Cheap magic-byte check; full decoding (and bomb limits) happens at ingest."""
    if not data:
        return False
    return data.startswith(_MAGIC) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")


@dataclass
class ShardResult:
    records: list[dict[str, Any]] = field(default_factory=list)
    drops: Counter = field(default_factory=Counter)  # reason -> pairs
    errors: list[str] = field(default_factory=list)  # shard-level problems, for the report
    keys: set[str] = field(default_factory=set, repr=False)  # keys of records, for duplicates
    duplicate_keys: int = 0
    replaced_keys: int = 0

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


def _texts_from_meta(meta: dict[str, Any]) -> list[str]:
    texts: list[str] = []
    for f in TEXT_FIELDS:
        if f in meta:
            texts.extend(clean_texts(meta[f]))
    return texts


def safe_key(key: Any) -> str | None:
    """key if it can name curated WebDataset members ({key}.jpg), else None."""
    if not isinstance(key, str) or not key or len(key) > MAX_KEY_CHARS:
        return None
    if _unsafe(key) or key.endswith("/") or "." in posixpath.basename(key):
        return None
    return key if _utf8_ok(key) else None


def _finish(res: ShardResult, key: str, image: bytes | None, texts: list[str],
            meta: dict[str, Any], text_present: bool) -> None:
    if image is None or not text_present or not looks_like_image(image):
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
    meta = {k: v for k, v in meta.items() if k not in TEXT_FIELDS and k != "key"}
    # lone surrogates in pass-through fields would fail the Arrow/UTF-8 writes: replace them
    meta_json = json.dumps(meta, ensure_ascii=False, default=str)
    meta_json = meta_json.encode("utf-8", "replace").decode("utf-8")
    res.records.append({"key": key, "image": image, "texts": texts, "meta": meta_json})


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


def parse_wds(data: bytes, shard: str) -> ShardResult:
    """A WebDataset tar shard. Members are grouped by key (basename up to the first dot).

    A truncated or corrupt tar keeps the pairs read before the damage; the incomplete group is
    counted corrupt and the shard error is reported. tarfile itself stops silently at a
    damaged or missing header after the first one, so the end-of-archive marker is checked.
    """
    res = ShardResult()
    groups: list[tuple[str, dict[str, bytes]]] = []  # (key, ext -> bytes), in tar order
    latest: dict[str, int] = {}  # key -> index of its latest group

    def group_of(key: str, ext: str) -> dict[str, bytes]:
        i = latest.get(key)
        if i is None or ext in groups[i][1]:  # a repeated member starts a new (duplicate) pair
            latest[key] = i = len(groups)
            groups.append((key, {}))
        return groups[i][1]

    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
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
                if m.size > MAX_MEMBER_BYTES:
                    res.errors.append(f"{shard}: tar member {m.name!r} has {m.size} bytes, over "
                                      f"the {MAX_MEMBER_BYTES} byte limit; not read")
                    group_of(key, ext.lower())["__oversize__"] = b""
                    continue
                g = group_of(key, ext.lower())  # first: a failed read marks this group
                f = tar.extractfile(m)  # reads the member's bytes; nothing touches the disk
                g[ext.lower()] = f.read() if f else b""
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
    for key, g in groups:
        if key.startswith("unsafe:") or "__partial__" in g or "__oversize__" in g:
            res.drops["corrupt_record"] += 1
            continue
        image = next((g[e] for e in IMAGE_EXTS if e in g), None)
        meta: dict[str, Any] = {}
        text_present = False
        if "json" in g:
            try:
                meta = json.loads(g["json"].decode("utf-8"))
                if not isinstance(meta, dict):
                    raise ValueError("not an object")
                text_present = any(f in meta for f in TEXT_FIELDS)
            except (UnicodeDecodeError, ValueError, RecursionError):
                res.drops["corrupt_record"] += 1
                continue
        texts = _texts_from_meta(meta)
        if "txt" in g:
            text_present = True
            texts.extend(clean_texts(g["txt"]))
        final = safe_key(meta["key"]) if "key" in meta else None
        res.replaced_keys += "key" in meta and final is None
        final = final or safe_key(key)
        if final is None:  # e.g. a member named ".jpg": no key to write it under
            res.drops["corrupt_record"] += 1
            continue
        _finish(res, final, image, texts, meta, text_present)
    _report_keys(res, shard)
    return res


def parse_parquet(data: bytes, shard: str) -> ShardResult:
    """A Parquet shard: columns key (optional), image (binary), texts/text/caption."""
    res = ShardResult()
    try:
        table = pq.read_table(io.BytesIO(data))
    except (pa.ArrowException, OSError, ValueError) as e:
        res.errors.append(f"{shard}: unreadable Parquet ({e}); the file is skipped, rewrite it")
        return res
    cols = set(table.column_names)
    text_cols = [c for c in TEXT_FIELDS if c in cols]
    if "image" not in cols or not text_cols:
        res.errors.append(
            f"{shard}: Parquet columns {sorted(cols)} lack 'image' and/or a text column "
            f"({'/'.join(TEXT_FIELDS)}); all {table.num_rows} rows counted corrupt_record")
        res.drops["corrupt_record"] += table.num_rows
        return res
    rows = table.to_pylist()
    prefix = shard_name(shard).replace(".", "_")  # no dots: WebDataset splits keys at the first
    for i, row in enumerate(rows):
        key = safe_key(row.get("key"))
        if key is None and row.get("key") is not None:
            res.replaced_keys += 1
        key = key or f"{prefix}_{i:06d}"
        image = row.get("image")
        texts: list[str] = []
        for c in text_cols:
            texts.extend(clean_texts(row.get(c)))
        present = any(row.get(c) is not None for c in text_cols)
        meta = {k: v for k, v in row.items() if k != "image"}
        _finish(res, key, image if isinstance(image, bytes) else None, texts, meta, present)
    _report_keys(res, shard)
    return res


def parse_shard(data: bytes, shard: str) -> ShardResult:
    if shard.endswith(".parquet"):
        return parse_parquet(data, shard)
    if shard.endswith((".tar", ".tar.gz", ".tgz")):
        return parse_wds(data, shard)
    res = ShardResult()
    res.errors.append(f"{shard}: unknown shard format; use .tar (WebDataset) or .parquet")
    return res


def shard_name(url: str) -> str:
    """Stable output name for an input shard: its file name without extension."""
    base = posixpath.basename(url)
    for ext in (".tar.gz", ".tgz", ".tar", ".parquet"):
        if base.endswith(ext):
            return base[: -len(ext)]
    return base
