"""wordfreq as a unigram source: when a language has no Wikipedia counts, its wordfreq list
stands in for the unigrams, with count = frequency x WORDFREQ_NOMINAL_TOKENS (only the order
matters; the 10 % cap applies to the number of distinct words in the list, less wordfreq's "0"
placeholders for numbers).
"""

from __future__ import annotations

from collections import Counter

# wordfreq gives frequencies, not counts: counts are frequency x this nominal corpus size.
WORDFREQ_NOMINAL_TOKENS = 1_000_000_000
# wordfreq code -> wiki code where they differ (wordfreq uses ISO 639 "fil" and "nb").
WORDFREQ_TO_WIKI = {"fil": "tl", "nb": "no"}


def wordfreq_languages() -> dict[str, str]:
    """wiki code -> wordfreq code for every language wordfreq ships."""
    import wordfreq

    return {WORDFREQ_TO_WIKI.get(c, c): c for c in sorted(wordfreq.available_languages())}


def wordfreq_unigrams(wordfreq_code: str) -> Counter[str]:
    """wordfreq's list as counts (frequency x WORDFREQ_NOMINAL_TOKENS, at least 1).

    Words with "0" are dropped: wordfreq writes every multi-digit number as 0s ("00", "0000"),
    so they are placeholders, not words.
    """
    import wordfreq

    freqs = wordfreq.get_frequency_dict(wordfreq_code, wordlist="best")
    return Counter({w: max(1, round(f * WORDFREQ_NOMINAL_TOKENS))
                    for w, f in freqs.items() if "0" not in w})
