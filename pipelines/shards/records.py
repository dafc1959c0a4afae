"""The pair record and its accounting: ShardResult, image references, text cleaning, safe
keys, and the one place a parsed pair is either kept or counted under a drop reason
(docs/curation.md, "Input formats and text fields")."""

from __future__ import annotations

import json
import posixpath
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from worldclip.pipelines.limits import RECORD_TOO_LARGE, SHARD_TOO_LARGE
from worldclip.pipelines.wds import image_ext

# json fields / Parquet columns holding texts, after the `.txt` member (Parquet: `txt`). The
# MetaCLIP 2 attributes alt, title, data-image-title are separate texts of one pair.
TEXT_FIELDS = ("texts", "text", "caption", "alt", "title", "data-image-title")
# Reasons the parser itself decides; every other drop comes after LID and matching.
PARSE_DROPS = ("corrupt_record", "no_text", "download_failed", RECORD_TOO_LARGE,
               SHARD_TOO_LARGE)
MAX_TEXT_CHARS = 4096  # longer captions are cut for LID and matching (web alt-text is short)
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
    if not admit(res, key, texts):
        return
    meta = {k: v for k, v in meta.items() if k not in TEXT_FIELDS and k not in ("key", "txt")}
    res.records.append({"key": key, "image": image, "texts": texts, "caption": caption,
                        "meta": meta_json(meta), "ref": ref})


def admit(res: ShardResult, key: str, texts: list[str]) -> bool:
    """The last checks every pair passes, whatever its format: it has a text (else no_text)
    and its key is new in the shard (else corrupt_record, reported as a duplicate key)."""
    if not texts:
        res.drops["no_text"] += 1
        return False
    if key in res.keys:
        res.drops["corrupt_record"] += 1
        res.duplicate_keys += 1
        return False
    res.keys.add(key)
    return True


def meta_json(meta: dict[str, Any]) -> str:
    """Pass-through fields as JSON; lone surrogates (which would fail the Arrow/UTF-8
    writes) replaced."""
    text = json.dumps(meta, ensure_ascii=False, default=str)
    return text.encode("utf-8", "replace").decode("utf-8")


def _report_keys(res: ShardResult, shard: str) -> None:
    if res.replaced_keys:
        res.errors.append(f"{shard}: {res.replaced_keys} record keys unusable as output member "
                          "names (absolute, '..', '.' or control characters) were replaced by "
                          "the member/row name; write keys like '00001_000042'")
    if res.duplicate_keys:
        res.errors.append(f"{shard}: {res.duplicate_keys} pairs repeat a key already used in the "
                          "shard; counted corrupt_record (keys must be unique per shard)")


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _unsafe(name: str) -> bool:
    """Absolute, '..', backslash or control characters: unusable as an output member name
    (one regex search, not a Python loop per character: it runs on every member of every
    shard in pass 1)."""
    return (name.startswith("/") or ".." in name.split("/") or "\\" in name
            or _CONTROL.search(name) is not None)


def shard_name(url: str) -> str:
    """Stable output name for an input shard: its file name without extension."""
    base = posixpath.basename(url)
    for ext in (".tar.gz", ".tgz", ".tar", ".parquet"):
        if base.endswith(ext):
            return base[: -len(ext)]
    return base
