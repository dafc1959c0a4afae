"""Accounting: every input pair ends as kept or dropped with a reason.

Stages count with one-line `stats[reason] += n` (datatrove's stat_update habit); per-batch
counters are summed into one report, and `check_identity` fails loudly when pairs go missing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

DROP_REASONS = (
    "corrupt_record",    # undecodable record or image, missing image
    "download_failed",   # img2dataset row with a non-success `status` (failed_to_download, ...)
    "no_text",           # no text field, or every text empty / whitespace / not text
    "record_too_large",  # one pair over curation.max_record_bytes decompressed (not read)
    "shard_too_large",   # pair past curation.max_shard_bytes decompressed in its shard
    "unknown_language",  # no text in a language that has metadata
    "no_match",          # texts in known languages, but no metadata entry matched
    "duplicate_image",   # same image bytes as a kept pair (sha256), docs/curation.md
    "eval_duplicate",    # perceptual copy of an evaluation image (decontamination)
    "no_threshold",      # language whose counts sum to zero (cannot be balanced)
    "sampled_out",       # balancing coin said no
)

# Pairs curation kept that the training stream could not use, by reason (pipelines/ingest.py);
# per epoch: kept = trained + dropped at ingest + trimmed + not reached (docs/operations.md).
INGEST_DROP_REASONS = (
    "undecodable_image",  # Pillow cannot decode it, or a decompression bomb
    "record_too_large",   # over the curation's max_record_bytes at re-read
    "shard_too_large",    # past the curation's max_shard_bytes at re-read
    "corrupt_record",     # the curated record itself is damaged (missing image, bad json)
)


def merge(counters: Iterable[Mapping[str, int]]) -> Counter:
    total: Counter = Counter()
    for c in counters:
        total.update({k: int(v) for k, v in c.items()})
    return total


class AccountingError(RuntimeError):
    pass


def check_identity(pairs_in: int, kept: int, dropped: Mapping[str, int]) -> None:
    """in = kept + sum(dropped); raise naming the gap otherwise."""
    out = kept + sum(int(v) for v in dropped.values())
    if out != pairs_in:
        raise AccountingError(
            f"accounting broken: {pairs_in} pairs in, {kept} kept + {out - kept} dropped "
            f"({dict(dropped)}) = {out}; {pairs_in - out:+d} pairs unaccounted for")
    unknown = set(dropped) - set(DROP_REASONS)
    if unknown:
        raise AccountingError(f"unknown drop reasons {sorted(unknown)}; allowed {DROP_REASONS}")
