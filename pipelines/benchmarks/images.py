"""Benchmark images by reference (docs/operations.md, "Eval suites"): a loader records where
each image lives and the suite reads a batch's bytes only when it embeds that batch, so the
driver holds one batch of encoded images at a time instead of the whole benchmark (CVQA's
Parquet alone is ~5 GB). The price: each checkpoint of a suite reads the images again.

A reference is one of
    a file            whole object (XM3600's images/<key>.jpg, ImageFolder files)
    a byte range      a member of an uncompressed tar (CLIP_benchmark WebDataset shards)
    a Parquet cell    (file, row group, row) of a struct {bytes, path} or binary column
                      (Hugging Face datasets' Image feature: CVQA)
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, overload

import pyarrow.parquet as pq

from worldclip.platform import ranges, storage

_THREADS = 16


@dataclass(frozen=True)
class ImageRef:
    """Where one image's encoded bytes are: url alone (the whole file), url + offset/length
    (a byte range), url + row_group/row/column (a Parquet cell), or data itself (a member of
    a compressed tar, which has no byte range to read it back by)."""

    url: str
    offset: int = 0
    length: int = -1
    row_group: int = -1
    row: int = -1
    column: str = ""
    data: bytes | None = None


def cell_bytes(cell: Any) -> bytes | None:
    """A Parquet image cell: HF's struct {bytes, path} or plain binary."""
    if isinstance(cell, dict):
        return cell.get("bytes")
    return cell


def _read_ranges(url: str, wanted: list[tuple[int, int, int]]) -> list[tuple[int, bytes]]:
    """(position, bytes) for the wanted (position, offset, length) of one file: nearby members
    share one GET (platform/ranges.py plans the spans)."""
    spans = [(o, n) for _, o, n in wanted]
    blobs = ranges.read_ranges(url, spans, size=max(o + n for o, n in spans))
    return [(pos, b) for (pos, _, _), b in zip(wanted, blobs, strict=True)]


def _read_parquet_cells(url: str, wanted: dict[int, list[tuple[int, int, str]]]
                        ) -> list[tuple[int, bytes | None]]:
    """(position in the batch, bytes) for the wanted (position, row, column) of each row
    group of one file; only those row groups and that column are read."""
    out = []
    with storage.filesystem(url).open(storage.strip_scheme(url), "rb") as f:
        pf = pq.ParquetFile(f)
        for g, cells in sorted(wanted.items()):
            columns = sorted({c for _, _, c in cells})
            table = pf.read_row_group(g, columns=columns)
            for pos, row, col in cells:
                out.append((pos, cell_bytes(table.column(col)[row].as_py())))
    return out


def fetch(refs: Sequence[ImageRef]) -> list[bytes]:
    """The bytes of refs, in order, on a few threads: whole files one read each, byte ranges
    coalesced per file, Parquet cells one read per (file, row group)."""
    out: list[bytes | None] = [r.data for r in refs]
    files = [i for i, r in enumerate(refs) if r.data is None and r.length < 0 and r.row_group < 0]
    spans: dict[str, list[tuple[int, int, int]]] = defaultdict(list)
    cells: dict[str, dict[int, list[tuple[int, int, str]]]] = defaultdict(
        lambda: defaultdict(list))
    for i, r in enumerate(refs):
        if r.data is not None:
            continue
        if r.row_group >= 0:
            cells[r.url][r.row_group].append((i, r.row, r.column))
        elif r.length >= 0:
            spans[r.url].append((i, r.offset, r.length))
    with ThreadPoolExecutor(_THREADS) as pool:
        for i, data in zip(files, pool.map(storage.read_bytes, [refs[i].url for i in files]),
                           strict=True):
            out[i] = data
        for got in [*pool.map(lambda kv: _read_ranges(*kv), spans.items()),
                    *pool.map(lambda kv: _read_parquet_cells(*kv), cells.items())]:
            for i, data in got:
                out[i] = data
    missing = [refs[i] for i, d in enumerate(out) if d is None]
    if missing:
        raise ValueError(f"benchmark image {missing[0]} has no bytes (changed since it was "
                         f"loaded?); reload the benchmark")
    return out  # type: ignore[return-value]


class ImageRefs(Sequence[bytes]):
    """A Sequence of encoded images read on access: a slice is one batched read (what
    embedding asks for), an index one read, iteration reads `chunk` images at a time."""

    def __init__(self, refs: Sequence[ImageRef], chunk: int = 256) -> None:
        self.refs = list(refs)
        self.chunk = chunk

    def __len__(self) -> int:
        return len(self.refs)

    @overload
    def __getitem__(self, i: int) -> bytes: ...

    @overload
    def __getitem__(self, i: slice) -> list[bytes]: ...

    def __getitem__(self, i: int | slice) -> bytes | list[bytes]:
        if isinstance(i, slice):
            return fetch(self.refs[i])
        return fetch([self.refs[i]])[0]

    def __iter__(self) -> Iterator[bytes]:
        for start in range(0, len(self.refs), self.chunk):
            yield from fetch(self.refs[start:start + self.chunk])
