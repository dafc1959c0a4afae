"""Raw shards -> pair records, with every bad record counted, never silently lost.

A pair record is {"key", "image" (bytes), "texts" (list[str]), "meta" (JSON of the other
fields, passed through to the curated output)}. Shards are parsed whole (one shard = one unit
of work and of resume): WebDataset tar (key.jpg|png|webp + key.json {"texts": [...]} or
key.txt) and Parquet (key?, image, texts | text | caption). Tar members are read into memory
only -- never extracted -- and members with absolute or ".." paths are rejected.
"""

from __future__ import annotations

import io
import json
import logging
import posixpath
import tarfile
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

log = logging.getLogger(__name__)

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "gif", "bmp")
TEXT_FIELDS = ("texts", "text", "caption", "alt", "title")
MAX_TEXT_CHARS = 4096  # longer captions are cut for LID and matching (web alt-text is short)
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

    @property
    def pairs_in(self) -> int:
        return len(self.records) + sum(self.drops.values())


def clean_texts(raw: Any) -> list[str]:
    """Strings only, stripped, non-empty, cut to MAX_TEXT_CHARS."""
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
        if isinstance(t, str):
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


def _finish(res: ShardResult, key: str, image: bytes | None, texts: list[str],
            meta: dict[str, Any], text_present: bool) -> None:
    if image is None or not text_present or not looks_like_image(image):
        res.drops["corrupt_record"] += 1
        return
    if not texts:
        res.drops["no_text"] += 1
        return
    meta = {k: v for k, v in meta.items() if k not in TEXT_FIELDS and k != "key"}
    res.records.append({"key": key, "image": image, "texts": texts,
                        "meta": json.dumps(meta, ensure_ascii=False, default=str)})


def _unsafe(name: str) -> bool:
    return name.startswith("/") or ".." in name.split("/") or "\\" in name


def parse_wds(data: bytes, shard: str) -> ShardResult:
    """A WebDataset tar shard. Members are grouped by key (basename up to the first dot).

    A truncated or corrupt tar keeps the pairs read before the damage; the incomplete group is
    counted corrupt and the shard error is reported.
    """
    res = ShardResult()
    groups: dict[str, dict[str, bytes]] = {}
    order: list[str] = []
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
            for m in tar:
                if not m.isfile():
                    continue
                if _unsafe(m.name):
                    res.errors.append(f"{shard}: rejected tar member with unsafe path {m.name!r}")
                    key = "unsafe:" + m.name
                    if key not in groups:
                        order.append(key)
                        groups[key] = {}
                    continue
                base = posixpath.basename(m.name)
                stem, _, ext = base.partition(".")
                key = posixpath.join(posixpath.dirname(m.name), stem)
                f = tar.extractfile(m)  # reads the member's bytes; nothing touches the disk
                if key not in groups:
                    order.append(key)
                    groups[key] = {}
                groups[key][ext.lower()] = f.read() if f else b""
    except (tarfile.TarError, EOFError, OSError, ValueError) as e:
        res.errors.append(f"{shard}: corrupt or truncated tar after {len(order)} keys: {e}")
        if order:  # the group being read when the damage hit may be incomplete
            groups[order[-1]]["__partial__"] = b""
    for key in order:
        g = groups[key]
        if key.startswith("unsafe:") or "__partial__" in g:
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
            except (UnicodeDecodeError, ValueError):
                res.drops["corrupt_record"] += 1
                continue
        texts = _texts_from_meta(meta)
        if "txt" in g:
            text_present = True
            texts.extend(clean_texts(g["txt"]))
        _finish(res, meta.get("key", key) if isinstance(meta.get("key"), str) else key,
                image, texts, meta, text_present)
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
    for i, row in enumerate(rows):
        key = row.get("key") if isinstance(row.get("key"), str) and row.get("key") else None
        key = key or f"{posixpath.basename(shard)}:{i}"
        image = row.get("image")
        texts: list[str] = []
        for c in text_cols:
            texts.extend(clean_texts(row.get(c)))
        present = any(row.get(c) is not None for c in text_cols)
        meta = {k: v for k, v in row.items() if k != "image"}
        _finish(res, key, image if isinstance(image, bytes) else None, texts, meta, present)
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
