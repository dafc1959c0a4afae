"""dedup's small Parquet tables (hash columns, eval hits, removed rows: a few MB at most):
their schemas; whole-file reads and writes are pipelines/arrowio.py."""

from __future__ import annotations

import pyarrow as pa

HIT_SCHEMA = pa.schema([("key", pa.string()), ("eval_set", pa.string()),
                        ("eval_key", pa.string()), ("distance", pa.int32())])
REMOVED_SCHEMA = pa.schema([("key", pa.string()), ("reason", pa.string()),
                            ("detail", pa.string())])
