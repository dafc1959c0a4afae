"""dedup's small Parquet tables: their schemas, and whole-file reads and writes through
platform/storage.py (hash columns, eval hits, removed rows are a few MB at most)."""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq

from worldclip.platform import storage

HIT_SCHEMA = pa.schema([("key", pa.string()), ("eval_set", pa.string()),
                        ("eval_key", pa.string()), ("distance", pa.int32())])
REMOVED_SCHEMA = pa.schema([("key", pa.string()), ("reason", pa.string()),
                            ("detail", pa.string())])


def _parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def _read(url: str, columns: list[str] | None = None) -> pa.Table:
    return pq.read_table(io.BytesIO(storage.read_bytes(url)), columns=columns)
