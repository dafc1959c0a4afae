"""img2dataset `files` output: a shard folder of KEY.jpg + KEY.txt/KEY.json side by side,
parsed into the same pairs, with the same accounting, as the tar holding those members."""

from __future__ import annotations

import posixpath
from typing import Any

from worldclip.pipelines.limits import DEFAULT_LIMITS, ReadLimits, ShardBudget
from worldclip.pipelines.shards.records import ShardResult, _report_keys
from worldclip.pipelines.shards.tar import _pairs_from_groups
from worldclip.platform import storage


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
