"""The concepts: which emoji, their names per language, how often each occurs, and the
metadata entry lists that name them.

Concepts are picked in a fixed order (oldest emoji first) among those whose CLDR names, from
the installed `emoji` package, are plain in every configured language and never contain, or
occur in, another concept's name or a caption template, so a caption matches only its own
concept. Frequencies are Zipf-like (rank^-zipf_a) with ranks assigned by a seeded shuffle: a
few head concepts dominate, many tail concepts are rare -- what balancing is for.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from worldclip.pipelines.world.languages import (
    CAPTION_TEMPLATES,
    HEAD_WORDS,
    NOSPACE_LANGUAGES,
    check_languages,
)
from worldclip.pipelines.world.seeds import STREAM_RANKS
from worldclip.platform.errors import ConfigError

# English name words of abstract emoji (UI symbols, people variants, smileys) never picked.
_ABSTRACT_WORDS = frozenset({
    "button", "sign", "symbol", "mark", "arrow", "square", "Japanese", "flag", "keycap",
    "suit", "with", "person", "man", "woman", "face", "hand", "light", "skin", "tone",
    "ideograph", "circle", "heart", "blood", "type", "medium", "small", "large",
})


@dataclass(frozen=True)
class Concept:
    index: int
    emoji: str
    names: dict[str, str]  # language -> name as written in captions and metadata


def _clean_name(raw: str) -> str:
    """':dog_face:' -> 'dog face' (underscores to spaces, colons stripped, spaces squeezed)."""
    return " ".join(raw.strip(":").replace("_", " ").split())


def _is_plain(name: str) -> bool:
    """Letters (with combining marks), single spaces, inner hyphens and ZWNJ only."""
    if not name or name[0] == "-" or name[-1] == "-" or len(name.split()) > 3:
        return False
    return all(ch.isalpha() or ch in " -\u200c" or unicodedata.category(ch).startswith("M")
               for ch in name)


def _contains(outer: str, inner: str, lang: str) -> bool:
    """Would `inner` match inside `outer` (word-padded; plain substring for no-space scripts)."""
    if lang in NOSPACE_LANGUAGES:
        return inner in outer
    return f" {inner} " in f" {outer} "


def _is_simple_emoji(ch: str) -> bool:
    for c in ch:
        cp = ord(c)
        if cp in (0x200D, 0x20E3) or 0x1F3FB <= cp <= 0x1F3FF or 0x1F1E6 <= cp <= 0x1F1FF:
            return False  # ZWJ sequence, keycap, skin tone, flag
    return True


def _fixed_texts(lang: str) -> list[str]:
    """Template words and head words of a language: no concept name may occur in them."""
    texts = [t.replace("{}", " ") for t in CAPTION_TEMPLATES[lang]]
    return texts + list(HEAD_WORDS[lang])


def select_concepts(languages: Sequence[str], n: int) -> list[Concept]:
    """The first n emoji (oldest first, then by code point) whose names suit every language.

    Independent of the seed: the same languages always give the same concepts.
    """
    import emoji
    from emoji.unicode_codes import STATUS

    check_languages(languages)
    emoji.config.load_language(list(languages))
    data = emoji.EMOJI_DATA
    fixed = {lang: _fixed_texts(lang) for lang in languages}
    chosen: list[Concept] = []
    used: dict[str, list[str]] = {lang: [] for lang in languages}
    for ch in sorted(data, key=lambda c: (data[c]["E"], c)):
        entry = data[ch]
        if entry["status"] != STATUS["fully_qualified"] or not _is_simple_emoji(ch):
            continue
        names = {lang: _clean_name(entry.get(lang) or "") for lang in languages}
        if not all(_is_plain(name) for name in names.values()):
            continue
        en = _clean_name(entry["en"])
        if set(en.split()) & _ABSTRACT_WORDS:
            continue
        if any(_contains(text, names[lang], lang) for lang in languages for text in fixed[lang]):
            continue
        if any(_contains(names[lang], u, lang) or _contains(u, names[lang], lang)
               for lang in languages for u in used[lang]):
            continue
        chosen.append(Concept(len(chosen), ch, names))
        for lang in languages:
            used[lang].append(names[lang])
        if len(chosen) == n:
            return chosen
    raise ConfigError(f"world.concepts={n}: only {len(chosen)} emoji have plain, distinct names "
                     f"in all of {list(languages)}; lower world.concepts or drop languages")


def concept_probabilities(n: int, zipf_a: float, seed: int) -> np.ndarray:
    """P(concept) proportional to rank^-zipf_a, ranks assigned to concepts by a seeded shuffle."""
    weights = np.arange(1, n + 1, dtype=np.float64) ** -float(zipf_a)
    weights /= weights.sum()
    ranks = np.random.default_rng([seed, STREAM_RANKS]).permutation(n)  # concept -> rank
    return weights[ranks]


def build_metadata(concepts: Sequence[Concept], languages: Sequence[str],
                   distractors: int) -> dict[str, list[str]]:
    """Per language: concept names (ids = concept indices), head words, then wordfreq's top
    words up to `distractors` non-concept entries, deduplicated."""
    import wordfreq

    # The "small" lists hold the same top words as the default "large" ones in ~1/8 of the
    # memory (all 14 large lists cost ~400 MB of RSS).
    small = set(wordfreq.available_languages("small"))
    best = set(wordfreq.available_languages())
    out: dict[str, list[str]] = {}
    for lang in languages:
        entries = [c.names[lang] for c in concepts]
        seen = set(entries)
        extra: list[str] = []
        n = 4 * distractors + 50
        words = (wordfreq.top_n_list(lang, n, wordlist="small") if lang in small
                 else wordfreq.top_n_list(lang, n) if lang in best else [])
        for word in [*HEAD_WORDS[lang], *words]:
            if len(extra) >= distractors:
                break
            if word and not word.isspace() and word not in seen:
                seen.add(word)
                extra.append(word)
        out[lang] = entries + extra
    return out
