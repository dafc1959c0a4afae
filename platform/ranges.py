"""Raw shards by reference (pipelines/refs.py): a shard's identity, so a reference into it
can be checked as still valid, and coalesced byte-range reads of the members a stage wants
(docs/operations.md, "Ranged reads")."""

from __future__ import annotations

import bisect
import errno
import hashlib
import json
import os
from typing import Any

from worldclip.platform.storage import filesystem, is_s3, retry, strip_scheme


def _local_stat_tag(st: os.stat_result) -> str:
    return f"mtime_ns:{st.st_mtime_ns}"


def identity(url: str) -> dict[str, Any]:
    """{"size", "etag"} of a raw shard (file or img2dataset `files` folder), so a reference
    into it can be checked as still valid: one HEAD/stat for a file, one listing for a folder.

    S3 etag: the object's ETag; local: mtime_ns. A folder: total size and "dir:" + sha1 over
    the sorted (relative name, size, tag) of its files.
    """
    fs, path = filesystem(url), strip_scheme(url).rstrip("/")

    def _identity() -> dict[str, Any]:
        if not is_s3(url):
            if not os.path.isdir(path):
                st = os.stat(path)
                return {"size": st.st_size, "etag": _local_stat_tag(st)}
            files = []
            for dirpath, _, names in os.walk(path):
                for n in names:
                    full = os.path.join(dirpath, n)
                    rel = os.path.relpath(full, path).replace(os.sep, "/")
                    st = os.stat(full)
                    files.append((rel, st.st_size, _local_stat_tag(st)))
        else:
            info = fs.info(path, refresh=True)
            if info["type"] != "directory":
                return {"size": int(info["size"]), "etag": str(info["ETag"]).strip('"')}
            fs.invalidate_cache(path)
            found = fs.find(path, detail=True)
            files = [(name[len(path) + 1:], int(i["size"]), str(i.get("ETag", "")).strip('"'))
                     for name, i in found.items()]
        digest = hashlib.sha1(json.dumps(sorted(files)).encode()).hexdigest()
        return {"size": sum(f[1] for f in files), "etag": f"dir:{digest}"}

    return retry(_identity, what=f"identity {url}")


def read_range(url: str, start: int, length: int) -> bytes:
    """Bytes [start, start+length) of a file: one ranged GET on S3.

    A range starting past the end (S3 answers 416, which s3fs raises as OSError EINVAL) is a
    ValueError naming the url, not a transient error to retry.
    """
    fs, path = filesystem(url), strip_scheme(url)

    def _read() -> bytes:
        try:
            return fs.cat_file(path, start=start, end=start + length)
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
            raise ValueError(f"{url}: range offset={start} length={length} is not satisfiable "
                             f"({e}); the reference is stale") from e

    return retry(_read, what=f"read {url}[{start}:{start + length}]")


def plan_ranges(ranges: list[tuple[int, int]], size: int, gap: int = 1 << 20,
                whole_fraction: float = 0.5) -> list[tuple[int, int]]:
    """Spans (start, end) to GET for the wanted (offset, length) ranges of a file of size bytes.

    A GET costs a round trip whatever its length, so ranges at most `gap` bytes apart share
    one span; when the distinct wanted bytes are >= whole_fraction of the file, one sequential
    read of the whole file (0, size) beats many ranged ones. Empty ranges need no GET.
    """
    wanted = sorted((o, o + n) for o, n in ranges if n > 0)
    spans: list[tuple[int, int]] = []
    for start, end in wanted:
        if spans and start - spans[-1][1] <= gap:
            spans[-1] = (spans[-1][0], max(spans[-1][1], end))
        else:
            spans.append((start, end))
    covered, reach = 0, 0  # distinct wanted bytes (duplicates and overlaps counted once)
    for start, end in wanted:
        covered += max(0, end - max(start, reach))
        reach = max(reach, end)
    if spans and size > 0 and covered >= whole_fraction * size:
        return [(0, size)]
    return spans


def read_ranges(url: str, ranges: list[tuple[int, int]], size: int | None = None,
                gap: int = 1 << 20, whole_fraction: float = 0.5) -> list[bytes]:
    """The bytes of each (offset, length) range, in input order, with one GET per planned span.

    A range past the end of the file (or a file shorter than `size` says) raises ValueError
    naming the url: the reference that pointed there is stale.
    """
    if size is None:
        size = int(identity(url)["size"])
    for o, n in ranges:
        if o < 0 or n < 0 or o + n > size:
            raise ValueError(f"{url}: range offset={o} length={n} is outside the file "
                             f"({size} bytes); the reference is stale")
    spans = plan_ranges(ranges, size, gap, whole_fraction)
    blobs = [read_range(url, s, e - s) for s, e in spans]
    for (s, e), b in zip(spans, blobs, strict=True):
        if len(b) != e - s:
            raise ValueError(f"{url}: {len(b)} bytes at offset {s}, expected {e - s}; the "
                             f"file changed since it was referenced (stale reference)")
    starts = [s for s, _ in spans]
    out = []
    for o, n in ranges:
        if n == 0:
            out.append(b"")
            continue
        i = bisect.bisect_right(starts, o) - 1
        out.append(blobs[i][o - starts[i]:o - starts[i] + n])
    return out
