"""Substring matching of alt-texts against a language's metadata entries (docs/curation.md §2).

The semantics are MetaCLIP 2's: the text is padded with spaces (around the whole text and
around ``, . ; : ? ! ```), each entry gets a space on a side unless its character on that side
is a "no-space" character (CJK, Thai, Lao, Myanmar, Khmer, Tibetan, punctuation), and a text
matches an entry when the padded entry is a substring of the padded text. No lower-casing and
no Unicode normalisation: matching is case-sensitive and byte-exact on code points.

``Matcher`` does this with one Aho-Corasick automaton (pyahocorasick) so that a text costs one
pass regardless of the vocabulary size; ``brute_force_match`` is the literal definition, kept
as the reference for tests and the benchmark.
"""

from __future__ import annotations

import bisect
import string
from collections.abc import Iterable, Sequence

import ahocorasick

__all__ = [
    "KANA_HANGUL_RANGES",
    "NOSPACE_PUNCTUATION",
    "NOSPACE_RANGES",
    "Matcher",
    "brute_force_match",
    "brute_force_match_padded",
    "is_nospace_char",
    "pad_entries",
    "pad_entry",
    "pad_text",
]

# Inclusive code-point ranges of scripts written without spaces between words.
NOSPACE_RANGES: tuple[tuple[int, int], ...] = (
    (0x0E00, 0x0E7F),  # Thai
    (0x0E80, 0x0EFF),  # Lao
    (0x0F00, 0x0FFF),  # Tibetan
    (0x1000, 0x109F),  # Myanmar
    (0x1780, 0x17FF),  # Khmer
    (0x2E80, 0x2FFF),  # CJK radicals, Kangxi radicals, ideographic description
    (0x3400, 0x4DBF),  # CJK Unified Ideographs Extension A
    (0x4E00, 0x9FFF),  # CJK Unified Ideographs
    (0xF900, 0xFAFF),  # CJK Compatibility Ideographs
    (0x20000, 0x2EBEF),  # CJK Unified Ideographs Extensions B-F
)

# Kana and Hangul are NOT no-space in the reference (Japanese/Korean entries keep their
# spaces, so they only match at spaces/punctuation); ``kana_hangul_nospace=True`` adds these.
KANA_HANGUL_RANGES: tuple[tuple[int, int], ...] = (
    (0x1100, 0x11FF),  # Hangul Jamo
    (0x3040, 0x309F),  # Hiragana
    (0x30A0, 0x30FF),  # Katakana
    (0x3130, 0x318F),  # Hangul Compatibility Jamo
    (0x31F0, 0x31FF),  # Katakana Phonetic Extensions
    (0xAC00, 0xD7AF),  # Hangul Syllables
)

NOSPACE_PUNCTUATION: frozenset[str] = frozenset(
    string.punctuation + "，。、；：？！“”‘’（）【】《》〈〉「」『』～—"
)

# Characters the text padding surrounds with spaces, and whitespace turned into a space.
_TEXT_TRANSLATION = str.maketrans(
    {
        **{ch: f" {ch} " for ch in ",.;:?!`"},
        "\t": " ",
        "\n": " ",
        "\r": " ",
    }
)


def _flatten_ranges(ranges: Iterable[tuple[int, int]]) -> tuple[list[int], list[int]]:
    ordered = sorted(ranges)
    return [lo for lo, _ in ordered], [hi for _, hi in ordered]


_BASE_STARTS, _BASE_ENDS = _flatten_ranges(NOSPACE_RANGES)
_EXT_STARTS, _EXT_ENDS = _flatten_ranges(NOSPACE_RANGES + KANA_HANGUL_RANGES)


def is_nospace_char(ch: str, kana_hangul_nospace: bool = False) -> bool:
    """True if an entry needs no space next to this character to match (docs/curation.md §2)."""
    if ch in NOSPACE_PUNCTUATION:
        return True
    starts, ends = (_EXT_STARTS, _EXT_ENDS) if kana_hangul_nospace else (_BASE_STARTS, _BASE_ENDS)
    cp = ord(ch)
    i = bisect.bisect_right(starts, cp) - 1
    return i >= 0 and cp <= ends[i]


def pad_text(text: str) -> str:
    """Pad a text the reference's way so that word boundaries become spaces.

    One space each side; a space before and after each of , . ; : ? ! ` ; tab, newline and
    carriage return become spaces. Neighbouring matches may share a space.
    """
    return f" {text} ".translate(_TEXT_TRANSLATION)


def pad_entry(entry: str, kana_hangul_nospace: bool = False) -> str:
    """Add a space on each side of an entry unless that side's character is no-space."""
    if not entry:
        return entry
    head = "" if is_nospace_char(entry[0], kana_hangul_nospace) else " "
    tail = "" if is_nospace_char(entry[-1], kana_hangul_nospace) else " "
    return f"{head}{entry}{tail}"


class Matcher:
    """One language's entries compiled into an Aho-Corasick automaton.

    Entry ids are positions in ``entries``. Entries that pad to the same string (duplicates)
    all match together, so the automaton stores a tuple of ids per padded string. Empty entries
    never match. Build once per worker and reuse: building costs seconds for 500k entries,
    matching a text costs one pass over it.
    """

    def __init__(self, entries: Sequence[str], kana_hangul_nospace: bool = False) -> None:
        self.num_entries = len(entries)
        self.kana_hangul_nospace = kana_hangul_nospace
        ids_by_key: dict[str, list[int]] = {}
        for entry_id, entry in enumerate(entries):
            if not entry:
                continue
            ids_by_key.setdefault(pad_entry(entry, kana_hangul_nospace), []).append(entry_id)
        self._automaton = ahocorasick.Automaton()
        for key, ids in ids_by_key.items():
            self._automaton.add_word(key, tuple(ids))
        self._empty = not ids_by_key
        if not self._empty:
            self._automaton.make_automaton()

    def __len__(self) -> int:
        return self.num_entries

    def match(self, text: str | None) -> set[int]:
        """The set of entry ids whose padded form occurs in the padded text."""
        if not text or self._empty:
            return set()
        found: set[int] = set()
        for _end, ids in self._automaton.iter(pad_text(text)):
            found.update(ids)
        return found

    def match_many(self, texts: Iterable[str | None]) -> list[list[int]]:
        """Sorted entry ids per text: the columnar form the pipelines store."""
        return [sorted(self.match(text)) for text in texts]


def pad_entries(entries: Sequence[str], kana_hangul_nospace: bool = False) -> list[str]:
    """Padded form of every entry, position-aligned with ``entries`` ("" stays "")."""
    return [pad_entry(entry, kana_hangul_nospace) for entry in entries]


def brute_force_match_padded(text: str | None, padded_entries: Sequence[str]) -> set[int]:
    """``brute_force_match`` over entries padded once in advance (fair timing baseline)."""
    if not text:
        return set()
    padded = pad_text(text)
    return {entry_id for entry_id, key in enumerate(padded_entries) if key and key in padded}


def brute_force_match(
    text: str | None, entries: Sequence[str], kana_hangul_nospace: bool = False
) -> set[int]:
    """The definition itself (padded entry ``in`` padded text) over every entry: the reference."""
    return brute_force_match_padded(text, pad_entries(entries, kana_hangul_nospace))
