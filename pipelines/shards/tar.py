"""WebDataset tar shards -> counted pairs: members read into memory within the read limits
(pipelines/limits.py), never extracted; unsafe paths rejected; damage reported, pairs before
it kept."""

from __future__ import annotations

import io
import json
import lzma
import posixpath
import tarfile
import zlib
from typing import Any

from worldclip.pipelines.limits import (
    DEFAULT_LIMITS,
    RECORD_TOO_LARGE,
    SHARD_TOO_LARGE,
    ReadLimits,
    ShardBudget,
)
from worldclip.pipelines.shards.records import (
    ShardResult,
    _finish,
    _report_keys,
    _unsafe,
    clean_texts,
    pair_texts,
    safe_key,
)

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "gif", "bmp")
# a larger member is not read (gzip bombs): its pair is record_too_large (pipelines/limits.py)
MAX_MEMBER_BYTES = DEFAULT_LIMITS.max_record_bytes


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
