"""Images by reference: read a matched pair's image back from its raw shard.

Pass 1 records where each matched image lives (pipelines/shards.py `Ref`) and the raw shard's
identity (size + ETag or mtime); nothing downstream copies image bytes until offline curation
materialises the kept pairs or the training stream decodes them (docs/curation.md, "Match
index by reference").

- tar: byte ranges of the member data, coalesced into one ranged GET per run of nearby
  members, or one sequential read when most of the shard is wanted (ranges.read_ranges);
- tar_stream (a compressed tar): offsets are in the decompressed stream, so the shard is
  read and decompressed once;
- parquet: only the row groups holding wanted rows, only the image column;
- files (an img2dataset folder): one read per image file.

A shard whose identity differs from the one recorded at matching is never read: the bytes at
the recorded offsets are not the image that was matched (StaleReference).
"""

from __future__ import annotations

import io
import re
import tarfile
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from worldclip.pipelines.shards import image_bytes
from worldclip.platform import ranges, storage

REF_FIELDS = [pa.field("ref_member", pa.string()), pa.field("ref_offset", pa.int64()),
              pa.field("ref_length", pa.int64()), pa.field("ref_row_group", pa.int32()),
              pa.field("ref_row", pa.int64())]


class StaleReference(RuntimeError):
    """A raw shard changed (or vanished) after it was matched."""


def find_stale(error: BaseException | None) -> StaleReference | None:
    """The StaleReference behind an error from Ray (a task's RayTaskError, Ray Data's
    wrapping, Ray Train's worker failures), so the command can stop with its one line
    instead of a stack of tracebacks. Falls back to the message in the error's text (Ray
    Train reports worker errors as text)."""
    seen: set[int] = set()
    stack: list[Any] = [error]
    while stack:
        e = stack.pop()
        if not isinstance(e, BaseException) or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, StaleReference):
            return StaleReference(str(e.args[0]) if e.args else str(e))
        stack += [e.__cause__, e.__context__, getattr(e, "cause", None)]
        failures = getattr(e, "worker_failures", None)
        if isinstance(failures, dict):
            stack += list(failures.values())
    found = re.search(r"StaleReference: (.+)", str(error)) if error is not None else None
    return StaleReference(found.group(1).strip()) if found else None


def fix_hint(url: str) -> str:
    return (f"re-run `worldclip curate` with the same curation.out: it re-matches {url} "
            "(and any other changed shard) and rebuilds the balancing")


def check_fresh(url: str, recorded: dict[str, Any] | None) -> None:
    """Raise StaleReference unless the shard's identity equals the one recorded."""
    if not recorded:
        raise StaleReference(f"{url}: the match index records no identity for this shard "
                             f"(written by an older worldclip); {fix_hint(url)}")
    try:
        now = ranges.identity(url)
    except FileNotFoundError:
        raise StaleReference(f"{url}: raw shard is gone since it was matched; "
                             f"{fix_hint(url)}") from None
    if dict(now) != dict(recorded):
        raise StaleReference(f"{url}: raw shard changed since it was matched (recorded "
                             f"{recorded}, now {now}); training on it would read the wrong "
                             f"bytes; {fix_hint(url)}")


def ref_columns(refs: Sequence[tuple | None]) -> dict[str, pa.Array]:
    """Ref tuples (pipelines/shards.py) -> the match index's reference columns."""
    cols = list(zip(*[r or (None,) * 5 for r in refs], strict=True)) if refs else [()] * 5
    return {f.name: pa.array(list(c), f.type) for f, c in zip(REF_FIELDS, cols, strict=True)}


def _stream_slices(data: bytes, spans: list[tuple[int, int]]) -> list[bytes]:
    """Byte ranges of a compressed tar's decompressed stream, read the way pass 1 read it
    (tarfile's own decompressing file object, forward only): damage after the last wanted
    member -- which pass 1 reported but did not count against these pairs -- is never
    decoded."""
    out: dict[int, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
        f = tar.fileobj
        for i in sorted(range(len(spans)), key=lambda i: spans[i][0]):
            off, length = spans[i]
            f.seek(off)
            out[i] = f.read(length)
    return [out[i] for i in range(len(spans))]


def read_images(url: str, kind: str, table: pa.Table, identity: dict[str, Any] | None,
                image_column: str = "") -> list[bytes | None]:
    """The image bytes of every row of `table` (a slice of a match index carrying the
    reference columns), in row order, read from the raw shard `url`."""
    n = table.num_rows
    if n == 0:
        return []
    check_fresh(url, identity)
    member = table.column("ref_member").to_pylist()
    off = table.column("ref_offset").to_numpy(zero_copy_only=False)
    length = table.column("ref_length").to_numpy(zero_copy_only=False)
    if kind == "tar":
        spans = [(int(o), int(sz)) for o, sz in zip(off, length, strict=True)]
        return list(ranges.read_ranges(url, spans, size=int(identity["size"])))
    if kind == "tar_stream":
        return _stream_slices(storage.read_bytes(url), [(int(o), int(sz)) for o, sz in
                                                        zip(off, length, strict=True)])
    if kind == "files":
        return [storage.read_bytes(storage.join(url, m)) for m in member]
    if kind == "parquet":
        return _parquet_images(url, table, image_column)
    raise ValueError(f"{url}: unknown shard kind {kind!r} in the match index")


def _parquet_images(url: str, table: pa.Table, column: str) -> list[bytes | None]:
    groups = table.column("ref_row_group").to_numpy(zero_copy_only=False).astype(np.int64)
    rows = table.column("ref_row").to_numpy(zero_copy_only=False).astype(np.int64)
    by_group: dict[int, list[int]] = defaultdict(list)
    for i, g in enumerate(groups.tolist()):
        by_group[g].append(i)
    out: list[bytes | None] = [None] * table.num_rows
    fs = storage.filesystem(url)
    with fs.open(storage.strip_scheme(url), "rb") as f:
        pf = pq.ParquetFile(f)
        md = pf.metadata
        starts = np.cumsum([0] + [md.row_group(g).num_rows for g in range(md.num_row_groups)])
        for g, idx in sorted(by_group.items()):
            cells = pf.read_row_group(g, columns=[column]).column(0)
            for i in idx:
                out[i] = image_bytes(cells[int(rows[i] - starts[g])].as_py())
    return out
