"""Counting, thresholds and balanced sampling (docs/curation.md §4), as pure numpy.

The pipeline matches once and stores entry ids per text; everything here works from those
ids and the global per-language counts, so a new threshold is only a re-sample ("match once,
rebalance many"). Randomness is a pure function of (seed, epoch, sample key, stream) so that
offline curation, online per-epoch redraws and Tune trials reproduce exactly on any worker.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "BALANCING_MODES",
    "ThresholdResult",
    "count_entries",
    "derive_thresholds",
    "entry_probabilities",
    "key_hash",
    "merge_counts",
    "pair_probability",
    "sample_pairs",
    "tail_proportion",
    "text_probabilities",
    "threshold_for_proportion",
    "uniform",
]

BALANCING_MODES = ("per_language", "single", "none")

_MASK64 = (1 << 64) - 1


# --- entry ids in columnar form ------------------------------------------------------------


def _flatten(entry_id_lists: Any) -> tuple[np.ndarray, np.ndarray]:
    """(values int64, lengths int64) of a list-of-lists, numpy object array or pyarrow list."""
    if hasattr(entry_id_lists, "combine_chunks"):  # pyarrow.ChunkedArray
        entry_id_lists = entry_id_lists.combine_chunks()
    if hasattr(entry_id_lists, "value_lengths"):  # pyarrow.ListArray
        lengths = entry_id_lists.value_lengths().fill_null(0).to_numpy(zero_copy_only=False)
        values = entry_id_lists.flatten().to_numpy(zero_copy_only=False)
        return np.asarray(values, dtype=np.int64), np.asarray(lengths, dtype=np.int64)
    rows = [() if row is None else row for row in entry_id_lists]
    lengths = np.fromiter((len(row) for row in rows), dtype=np.int64, count=len(rows))
    if lengths.sum() == 0:
        return np.zeros(0, dtype=np.int64), lengths
    values = np.concatenate([np.asarray(row, dtype=np.int64).reshape(-1) for row in rows])
    return values, lengths


def _unique_per_row(
    entry_id_lists: Any, num_entries: int | None = None
) -> tuple[np.ndarray, np.ndarray, int]:
    """Deduplicated ids and their row index (sorted by row, then id), plus the row count."""
    values, lengths = _flatten(entry_id_lists)
    n_rows = len(lengths)
    if values.size and values.min() < 0:
        raise ValueError(f"entry ids must be >= 0; got {int(values.min())}")
    if num_entries is not None and values.size and values.max() >= num_entries:
        raise ValueError(
            f"entry id {int(values.max())} is out of range for num_entries={num_entries}: "
            "counts and entry ids must come from the same metadata list"
        )
    rows = np.repeat(np.arange(n_rows, dtype=np.int64), lengths)
    if values.size == 0:
        return values, rows, n_rows
    order = np.lexsort((values, rows))
    values, rows = values[order], rows[order]
    keep = np.ones(values.size, dtype=bool)
    keep[1:] = (values[1:] != values[:-1]) | (rows[1:] != rows[:-1])
    return values[keep], rows[keep], n_rows


# --- counts --------------------------------------------------------------------------------


def count_entries(entry_id_lists: Any, num_entries: int) -> np.ndarray:
    """Per-entry count of texts that matched it (once per text), as uint64."""
    ids, _rows, _n = _unique_per_row(entry_id_lists, num_entries)
    return np.bincount(ids, minlength=num_entries).astype(np.uint64)


def merge_counts(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Sum two count vectors of the same metadata (the distributed reduction)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(
            f"cannot merge counts of shapes {a.shape} and {b.shape}: both must be counted "
            "against the same metadata list (same number of entries)"
        )
    return a.astype(np.uint64) + b.astype(np.uint64)


# --- thresholds ----------------------------------------------------------------------------


def tail_proportion(counts: np.ndarray, t: float) -> float:
    """Share of all matches held by entries with count strictly below t (0.0 if no matches)."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    if total == 0:
        return 0.0
    return float(counts[counts < t].sum() / total)


def threshold_for_proportion(counts: np.ndarray, p: float) -> float | None:
    """The count whose cumulative share (ascending, zeros included) is closest to p.

    None when the counts sum to zero: such a language has no threshold (its pairs are dropped).
    """
    sorted_counts = np.sort(np.asarray(counts, dtype=np.float64))
    if sorted_counts.size == 0:
        return None
    cumulative = np.cumsum(sorted_counts)
    total = cumulative[-1]
    if total == 0:
        return None
    return float(sorted_counts[np.argmin(np.abs(cumulative / total - p))])


@dataclass
class ThresholdResult:
    """Thresholds per language and how they were derived (goes into the curation report)."""

    p: float | None
    t_en: float | None
    t_lang: dict[str, float] = field(default_factory=dict)
    zero_count_languages: list[str] = field(default_factory=list)
    mode: str = "per_language"
    # Languages with matches whose t came out 0 (p below their smallest cumulative share, e.g.
    # a tiny language on a small pool): every pair of theirs has probability 0.
    zero_threshold_languages: list[str] = field(default_factory=list)


def _total(counts: np.ndarray) -> float:
    return float(np.asarray(counts, dtype=np.float64).sum())


def derive_thresholds(
    counts_by_lang: Mapping[str, np.ndarray],
    t_en: float | None = None,
    p: float | None = None,
    mode: str = "per_language",
    english: str = "en",
    min_t: float = 0.0,
) -> ThresholdResult:
    """Per-language thresholds from exactly one of t_en (English threshold) or p (tail share).

    mode="per_language": t_lang from p per language, English keeps t_en exactly (the paper).
    mode="single": every language uses t_en (ablation "one t for all").
    mode="none": no balancing, every matched pair has probability 1 (t = inf); t_en/p optional.
    Languages whose counts sum to zero get no threshold and are listed.
    min_t: a floor for the derived per-language thresholds (0 = none, the reference): on a
    small pool p can fall below a language's smallest cumulative share and give t = 0, which
    drops the whole language (docs/curation.md, "Small languages").
    """
    if mode not in BALANCING_MODES:
        raise ValueError(f"balancing mode={mode!r}: must be one of {', '.join(BALANCING_MODES)}")
    if t_en is not None and p is not None:
        raise ValueError(
            f"balancing: got both t_en={t_en} and p={p}; give exactly one (t_en, the English "
            "threshold, e.g. 170000, or p, the tail proportion, e.g. 0.06)"
        )
    if t_en is None and p is None and mode != "none":
        raise ValueError(
            f"balancing mode={mode!r} needs a threshold: give t_en (the English threshold, "
            "e.g. 170000) or p (the tail proportion, e.g. 0.06)"
        )
    if t_en is not None and not (t_en > 0 and math.isfinite(t_en)):
        raise ValueError(f"balancing t_en={t_en}: must be a positive finite number")
    if p is not None and not (0 < p <= 1):
        raise ValueError(f"balancing p={p}: must be in (0, 1], e.g. 0.06")

    zero = sorted(lang for lang, counts in counts_by_lang.items() if _total(counts) == 0)
    live = [lang for lang in counts_by_lang if lang not in zero]
    en_counts = counts_by_lang.get(english)
    en_live = english in live

    if t_en is not None:
        if en_live:
            p = tail_proportion(en_counts, t_en)
        elif mode == "per_language":
            raise ValueError(
                f"balancing t_en={t_en}: no {english!r} matches to turn it into a tail "
                f"proportion (languages with matches: {sorted(live)}); give p instead"
            )
    elif p is not None:
        if en_live:
            t_en = threshold_for_proportion(en_counts, p)
        elif mode == "single":
            raise ValueError(
                f"balancing mode='single' with p={p}: no {english!r} matches to derive t_en "
                "from; give t_en instead"
            )

    t_lang: dict[str, float] = {}
    for lang in live:
        if mode == "none":
            t_lang[lang] = math.inf
        elif mode == "single" or lang == english:
            t_lang[lang] = float(t_en)
        else:
            t_lang[lang] = max(threshold_for_proportion(counts_by_lang[lang], p), min_t)
    return ThresholdResult(
        p=p,
        t_en=t_en,
        t_lang=t_lang,
        zero_count_languages=zero,
        mode=mode,
        zero_threshold_languages=sorted(lang for lang, t in t_lang.items() if t == 0),
    )


# --- probabilities -------------------------------------------------------------------------


def entry_probabilities(counts: np.ndarray, t: float) -> np.ndarray:
    """prob_e = min(1, t / count_e); entries never matched get 1.0 (never used)."""
    counts = np.asarray(counts, dtype=np.float64)
    probs = np.ones(counts.shape, dtype=np.float64)
    seen = counts > 0
    probs[seen] = np.minimum(1.0, t / counts[seen])
    return probs


def pair_probability(entry_ids: Iterable[int], entry_probs: np.ndarray) -> float:
    """P = 1 - prod(1 - prob_e) over the unique matched entries; 0 when nothing matched."""
    ids = np.unique(np.asarray(list(entry_ids), dtype=np.int64))
    if ids.size == 0:
        return 0.0
    return float(1.0 - np.multiply.reduce(1.0 - np.asarray(entry_probs)[ids]))


def text_probabilities(entry_id_lists: Any, entry_probs: np.ndarray) -> np.ndarray:
    """``pair_probability`` for a batch of texts (float64, 0 for texts without matches).

    A product of (1 - prob_e) per text rather than exp(sum(log1p)): P is exactly 1 when an
    entry has prob 1, and P stays monotone in t bit for bit.
    """
    entry_probs = np.asarray(entry_probs, dtype=np.float64)
    ids, rows, n_rows = _unique_per_row(entry_id_lists, len(entry_probs))
    out = np.zeros(n_rows, dtype=np.float64)
    if ids.size == 0:
        return out
    complement = 1.0 - entry_probs[ids]
    lengths = np.bincount(rows, minlength=n_rows)
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    matched = lengths > 0
    out[matched] = 1.0 - np.multiply.reduceat(complement, starts[matched])
    return out


# --- deterministic randomness --------------------------------------------------------------


def key_hash(keys: Iterable[str | bytes]) -> np.ndarray:
    """Stable 64-bit hash per sample key (blake2b, not Python's salted hash())."""
    out = [
        int.from_bytes(
            hashlib.blake2b(key if isinstance(key, bytes) else key.encode("utf-8"),
                            digest_size=8).digest(),
            "little",
        )
        for key in keys
    ]
    return np.array(out, dtype=np.uint64)


def _splitmix64_scalar(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def uniform(seed: int, epoch: int, key_hashes: np.ndarray, stream: int) -> np.ndarray:
    """Uniform [0, 1) per key, a pure function of (seed, epoch, key hash, stream)."""
    salt = _splitmix64_scalar(int(seed) & _MASK64)
    salt = _splitmix64_scalar(salt ^ (int(epoch) & _MASK64))
    salt = _splitmix64_scalar(salt ^ (int(stream) & _MASK64))
    hashes = np.asarray(key_hashes, dtype=np.uint64)
    with np.errstate(over="ignore"):
        mixed = _splitmix64(_splitmix64(hashes ^ np.uint64(salt)) ^ np.uint64(salt))
    return (mixed >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def sample_pairs(
    keys: Sequence[str] | np.ndarray,
    text_entry_ids: Sequence[Sequence[Sequence[int]]],
    text_probs: Sequence[Sequence[float]],
    seed: int,
    epoch: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Per pair (image): draw one matched text uniformly, keep it with that text's P.

    ``keys`` are sample keys (str) or their ``key_hash`` values. Returns the chosen text index
    per pair (-1 when no text matched) and the keep flag (False when no text matched).
    Stream 0 draws the text, stream 1 the coin, so changing P never changes which text is drawn.
    """
    if isinstance(keys, np.ndarray) and keys.dtype == np.uint64:
        hashes = keys
    else:
        hashes = key_hash(str(key) if not isinstance(key, bytes) else key for key in keys)
    n_pairs = len(hashes)
    if len(text_entry_ids) != n_pairs or len(text_probs) != n_pairs:
        raise ValueError(
            f"sample_pairs: {n_pairs} keys but {len(text_entry_ids)} entry-id rows and "
            f"{len(text_probs)} probability rows; give one row per pair"
        )
    n_texts = np.fromiter((len(texts) for texts in text_entry_ids), np.int64, count=n_pairs)
    n_probs = np.fromiter((len(ps) for ps in text_probs), np.int64, count=n_pairs)
    if not np.array_equal(n_texts, n_probs):
        bad = int(np.flatnonzero(n_texts != n_probs)[0])
        raise ValueError(
            f"sample_pairs: pair {bad} has {n_texts[bad]} texts but {n_probs[bad]} "
            "probabilities; give one probability per text"
        )
    matched = np.fromiter(
        (texts is not None and len(texts) > 0 for row in text_entry_ids for texts in row),
        dtype=bool,
        count=int(n_texts.sum()),
    )
    probs = np.fromiter(
        (prob for row in text_probs for prob in row), dtype=np.float64, count=int(n_texts.sum())
    )
    pair_of_text = np.repeat(np.arange(n_pairs, dtype=np.int64), n_texts)
    n_matched = np.bincount(pair_of_text[matched], minlength=n_pairs)
    text_offset = np.concatenate(([0], np.cumsum(n_texts)[:-1])).astype(np.int64)
    matched_offset = np.concatenate(([0], np.cumsum(n_matched)[:-1])).astype(np.int64)
    matched_flat = np.flatnonzero(matched)

    chosen = np.full(n_pairs, -1, dtype=np.int64)
    keep = np.zeros(n_pairs, dtype=bool)
    has = n_matched > 0
    if not has.any():
        return chosen, keep
    draw = np.floor(uniform(seed, epoch, hashes[has], 0) * n_matched[has]).astype(np.int64)
    draw = np.minimum(draw, n_matched[has] - 1)
    flat = matched_flat[matched_offset[has] + draw]
    chosen[has] = flat - text_offset[has]
    keep[has] = uniform(seed, epoch, hashes[has], 1) < probs[flat]
    return chosen, keep
