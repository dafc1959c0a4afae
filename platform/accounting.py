"""Accounting: every input pair ends as kept or dropped with a reason.

Stages count with one-line `stats[reason] += n` (datatrove's stat_update habit); per-batch
counters are summed into one report, and `check_identity` fails loudly when pairs go missing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

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


def ingest_epoch_account(epoch: int, kept: int, consumed: int, trained: int,
                         dropped: Mapping[str, int], trimmed: int) -> dict[str, Any]:
    """One epoch of the training stream, every pair curation kept placed exactly once:

        kept = trained + dropped at ingest (by reason) + trimmed + missing + not_reached

    `consumed` are the positions the optimizer steps covered (steps x global batch);
    `not_reached` the rest (the tail short of a full global batch, or the run's end at
    max_steps); `trimmed` rows of a rank cut to the shortest rank's micro-batch; `missing`
    positions no row arrived for (0 unless a curated file holds fewer pairs than its stats
    say) -- reported, never hidden (docs/operations.md, "Every kept pair is accounted for")."""
    d = {r: int(n) for r, n in sorted(dropped.items()) if int(n)}
    unknown = set(d) - set(INGEST_DROP_REASONS)
    if unknown:
        raise AccountingError(f"unknown ingest drop reasons {sorted(unknown)}; allowed "
                              f"{INGEST_DROP_REASONS}")
    missing = consumed - trained - sum(d.values()) - trimmed
    not_reached = kept - consumed
    if missing < 0 or not_reached < 0:
        raise AccountingError(f"epoch {epoch}: {kept} kept, {consumed} consumed, {trained} "
                              f"trained + {d} dropped + {trimmed} trimmed: more pairs out "
                              "than in")
    return {"epoch": epoch, "kept": kept, "trained": trained, "dropped_at_ingest": d,
            "trimmed": trimmed, "missing": missing, "not_reached": not_reached}


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
