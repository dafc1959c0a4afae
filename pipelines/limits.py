"""Read limits on decompressed bytes: the one definition curation and training share.

A 1.2 MB .tar.gz can hold 20 x 60 MB members and a 17 KB zstd Parquet a 500 MB cell, so a
limit on file size bounds nothing. Readers count DECOMPRESSED bytes (tar member sizes read
from the headers before the data, Parquet row-group and column-chunk sizes from the footer
before a row group is materialised) against two budgets (docs/operations.md, "Read limits"):

- `max_record_bytes`: one pair (a tar member, a Parquet row's cells). Over it, the pair is
  dropped as `record_too_large` and its bytes are never held.
- `max_shard_bytes`: everything one shard holds in memory at once. Once the next member or
  row group would pass it, that pair and every later pair of the shard is dropped as
  `shard_too_large` (the rest is still walked, header by header, so every pair is counted).

Curation records the limits it used in its data card; the training stream reads them from
there, so a pair curation kept is never cut by a different limit at ingest.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

RECORD_TOO_LARGE = "record_too_large"
SHARD_TOO_LARGE = "shard_too_large"


@dataclass(frozen=True)
class ReadLimits:
    max_record_bytes: int = 64 << 20
    max_shard_bytes: int = 1 << 30

    @classmethod
    def from_config(cls, c: Any) -> ReadLimits:
        """From a CurationConfig (or any mapping with the two keys)."""
        return cls(max_record_bytes=int(c["max_record_bytes"]),
                   max_shard_bytes=int(c["max_shard_bytes"]))

    @classmethod
    def from_card(cls, card: dict[str, Any] | None) -> ReadLimits:
        """The limits a data card records (defaults for outputs written before it did)."""
        lim = (card or {}).get("limits") or {}
        d = cls()
        return cls(max_record_bytes=int(lim.get("max_record_bytes", d.max_record_bytes)),
                   max_shard_bytes=int(lim.get("max_shard_bytes", d.max_shard_bytes)))

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


DEFAULT_LIMITS = ReadLimits()


class ShardBudget:
    """Decompressed bytes one shard has taken so far; once over, every later pair is out."""

    def __init__(self, limits: ReadLimits) -> None:
        self.limits = limits
        self.used = 0
        self.exhausted = False

    def take(self, n: int, record: bool = True) -> str | None:
        """Reserve n bytes for one read: None if it may be read, else the drop reason.
        record=False for a read of several pairs (a Parquet row group): only the shard budget
        applies, rows are checked one by one after it."""
        if record and n > self.limits.max_record_bytes:
            return RECORD_TOO_LARGE
        if self.exhausted or self.used + n > self.limits.max_shard_bytes:
            self.exhausted = True
            return SHARD_TOO_LARGE
        self.used += n
        return None
