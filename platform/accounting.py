"""Accounting: every input pair ends as kept or dropped with a reason.

Stages count with one-line `stats[reason] += n` (datatrove's stat_update habit); per-batch
counters are summed into one report, and `check_identity` fails loudly when pairs go missing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

DROP_REASONS = (
    "corrupt_record",    # undecodable record, missing image or texts field
    "no_text",           # every text empty / whitespace / not text
    "unknown_language",  # no text in a language that has metadata
    "no_match",          # texts in known languages, but no metadata entry matched
    "no_threshold",      # language whose counts sum to zero (cannot be balanced)
    "sampled_out",       # balancing coin said no
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
