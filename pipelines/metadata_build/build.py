"""One language's metadata in MetaCLIP 2 order with its caps, and the merge of folded codes.

MetaCLIP 2 order per wiki code (docs/curation.md, section 1), skipping duplicates: the strings
"0".."99"; the language's WordNet lemmas; unigrams by descending count until min(unigram_cap,
unigram_fraction x distinct unigrams) are added; bigrams with PMI > bigram_min_pmi (strict) by
descending PMI, up to min(bigram_cap, distinct bigrams); titles by descending summed views, up
to min(title_cap, title_fraction x distinct titles). Unigrams, bigrams and titles longer than
256 characters or made of punctuation only are skipped (and do not count toward a cap).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from worldclip.pipelines.metadata_build.codes import clean_entry
from worldclip.pipelines.metadata_build.wiki import bigram_pmi, bigram_surface

NUMBERS = tuple(str(i) for i in range(100))
SOURCE_TAGS = ("numbers", "wordnet", "unigram", "bigram", "title")


@dataclass(frozen=True)
class Caps:
    """Caps and thresholds (MetaCLIP 2 defaults; see MetadataConfig)."""

    unigram_cap: int = 251_465
    unigram_fraction: float = 0.10
    bigram_cap: int = 100_646
    bigram_min_pmi: float = 30.0
    title_cap: int = 61_235
    title_fraction: float = 0.76

    @classmethod
    def from_config(cls, m: Any) -> Caps:
        """The same-named fields of MetadataConfig, with this dataclass's types."""
        return cls(**{f.name: type(getattr(cls, f.name))(getattr(m, f.name))
                      for f in dataclasses.fields(cls)})


@dataclass
class LanguageSources:
    """Everything one wiki code has; any part may be empty.

    ``unigram_distinct`` is the number the 10 % cap is taken of (default: len(unigrams));
    ``bigram_distinct`` the number the bigram cap is taken of (default: len(bigrams)).
    """

    wordnet: Sequence[str] = ()
    unigrams: Mapping[str, int] = field(default_factory=dict)
    unigram_source: str = ""  # "wiki" | "wordfreq" | ""
    unigram_distinct: int | None = None
    bigrams: Mapping[str, int] = field(default_factory=dict)
    bigram_pmi: Mapping[str, float] | None = None  # None -> computed from the counts
    titles: Mapping[str, int] = field(default_factory=dict)


@dataclass
class LanguageMetadata:
    code: str
    entries: list[str]
    tags: list[str]  # the source each entry came from (SOURCE_TAGS)
    stats: dict[str, Any]

    def by_source(self) -> dict[str, int]:
        c = Counter(self.tags)
        return {t: c.get(t, 0) for t in SOURCE_TAGS}


def _ranked(scores: Mapping[str, float]) -> list[str]:
    """Keys by descending score, ties by the key itself (deterministic across runs)."""
    return [k for k, _ in sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))]


def build_language(code: str, src: LanguageSources, caps: Caps = Caps()) -> LanguageMetadata:
    """One wiki code's metadata in MetaCLIP 2 order with its caps (docs/curation.md, section 1)."""
    seen: dict[str, str] = {}

    def add(entry: str, tag: str) -> bool:
        if entry in seen:
            return False
        seen[entry] = tag
        return True

    def add_ranked(candidates: Iterable[str], cap: int, tag: str) -> None:
        """Add candidates in rank order until `cap` new entries (skipped ones don't count)."""
        added = 0
        for c in candidates if cap > 0 else ():
            m = clean_entry(c)
            if m is not None and add(m, tag):
                added += 1
                if added >= cap:
                    return

    for n in NUMBERS:
        add(n, "numbers")
    for lemma in src.wordnet:
        m = clean_entry(lemma)
        if m is not None:
            add(m, "wordnet")

    distinct_u = src.unigram_distinct if src.unigram_distinct is not None else len(src.unigrams)
    cap_u = min(caps.unigram_cap, int(distinct_u * caps.unigram_fraction))
    add_ranked(_ranked(src.unigrams), cap_u, "unigram")

    pmi = src.bigram_pmi if src.bigram_pmi is not None else bigram_pmi(src.unigrams,
                                                                       src.bigrams)
    passing = {k: v for k, v in pmi.items() if v > caps.bigram_min_pmi}
    cap_b = min(caps.bigram_cap, len(src.bigrams) if src.bigrams else len(pmi))
    add_ranked((bigram_surface(k, code) for k in _ranked(passing)), cap_b, "bigram")

    cap_t = min(caps.title_cap, int(len(src.titles) * caps.title_fraction))
    add_ranked(_ranked(src.titles), cap_t, "title")

    stats = {
        "unigram_source": src.unigram_source or None,
        "candidates": {"wordnet": len(src.wordnet), "unigram": distinct_u,
                       "bigram": len(src.bigrams) or len(pmi), "bigram_pmi_pass": len(passing),
                       "title": len(src.titles)},
        "caps": {"unigram": cap_u, "bigram": cap_b, "title": cap_t},
    }
    return LanguageMetadata(code, list(seen), list(seen.values()), stats)


def merge_lists(parts: Sequence[LanguageMetadata], group: str) -> LanguageMetadata:
    """Fold several codes' lists into one group: in the given order, duplicates skipped."""
    seen: dict[str, str] = {}
    for p in parts:
        for e, t in zip(p.entries, p.tags, strict=True):
            seen.setdefault(e, t)
    stats = {"codes": [p.code for p in parts], "per_code": {p.code: p.stats for p in parts}}
    return LanguageMetadata(group, list(seen), list(seen.values()), stats)
