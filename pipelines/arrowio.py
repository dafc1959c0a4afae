"""Parquet to and from object storage, whole files (small tables: match indexes, counts,
stats tables). One place, so every stage writes the same way (storage.write_bytes: atomic)."""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq

from worldclip.platform import storage


def parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def write_parquet(url: str, table: pa.Table) -> None:
    storage.write_bytes(url, parquet_bytes(table))


def read_parquet(url: str, columns: list[str] | None = None) -> pa.Table:
    return pq.read_table(io.BytesIO(storage.read_bytes(url)), columns=columns)
