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

Modules (one job each):
    records.py  ShardResult, Ref, text cleaning, safe keys, the keep-or-count step
    tar.py      WebDataset tar shards
    parquet.py  Parquet shards: image shards and text-only shards, bounded row groups
    folders.py  img2dataset `files` folders
    here        parse_shard / load_shard (format by name) and input listing (sidecars)
"""

from __future__ import annotations

import posixpath
from typing import Any

from worldclip.pipelines.limits import DEFAULT_LIMITS, ReadLimits
from worldclip.pipelines.shards.folders import is_folder, parse_files, read_folder
from worldclip.pipelines.shards.parquet import (
    PARQUET_IMAGE_COLUMNS,
    TEXT_ONLY_TEXT_FIELDS,
    bounded_row_groups,
    image_bytes,
    is_text_only,
    open_parquet,
    parquet_image_column,
    parse_parquet,
    parse_text_only,
    row_bytes,
)
from worldclip.pipelines.shards.records import (
    MAX_KEY_CHARS,
    MAX_TEXT_CHARS,
    PARSE_DROPS,
    TEXT_FIELDS,
    Ref,
    ShardResult,
    clean_texts,
    download_failed,
    looks_like_image,
    pair_texts,
    safe_key,
    shard_name,
)
from worldclip.pipelines.shards.tar import (
    IMAGE_EXTS,
    MAX_MEMBER_BYTES,
    is_compressed,
    parse_wds,
)
from worldclip.platform import storage

__all__ = ["IMAGE_EXTS", "MAX_KEY_CHARS", "MAX_MEMBER_BYTES", "MAX_TEXT_CHARS",
           "PARQUET_IMAGE_COLUMNS", "PARSE_DROPS", "TEXT_FIELDS", "TEXT_ONLY_TEXT_FIELDS", "Ref",
           "ShardResult", "bounded_row_groups", "clean_texts", "download_failed", "image_bytes",
           "is_compressed", "is_folder", "is_text_only", "load_shard", "looks_like_image",
           "open_parquet", "pair_texts", "parquet_image_column", "parse_files", "parse_parquet",
           "parse_shard", "parse_text_only", "parse_wds", "read_folder", "row_bytes", "safe_key",
           "shard_name", "sidecar_reason"]


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
