"""Wikipedia dumps -> unigram and bigram counts, PMI, bigram surface forms.

Dumps (``metadata.wiki_dumps``, WikiExtractor JSON lines) give unigram and bigram counts.
Tokenisation of dump text follows the reference: split on whitespace, and make each
"no-space" character (CJK, Thai, Lao, Myanmar, Khmer, Tibetan, punctuation;
``matching.is_nospace_char``) a token of its own. Punctuation-only tokens are not counted and
break bigrams. Bigram PMI is NLTK's ``BigramAssocMeasures.pmi`` that MetaCLIP 1 used::

    PMI(x y) = log2( c(x y) * N / (c(x) * c(y)) ),   N = total counted unigram tokens

i.e. log2 of p(xy) / (p(x) p(y)) with every p estimated over N. A bigram is written without its
inner space in no-space languages (zh, ja, th, ...) and whenever both characters at the join
are no-space script characters ("东 京" -> "东京"), so that it matches as the text had it.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from worldclip.pipelines.matching import NOSPACE_PUNCTUATION, NOSPACE_RANGES, is_nospace_char
from worldclip.pipelines.metadata_build.codes import (
    is_punctuation_only,
    normal_code,
    wiki_code_from_path,
    wiki_code_from_url,
)

# Languages written without spaces between words: bigrams lose their inner space (reference).
NOSPACE_LANGUAGES = frozenset(
    {"bo", "dz", "ja", "km", "lo", "my", "ryu", "th", "zh", "zh_classical", "zh_yue"})


def _char_class(ranges: Iterable[tuple[int, int]], chars: Iterable[str]) -> str:
    parts = [f"{re.escape(chr(lo))}-{re.escape(chr(hi))}" for lo, hi in ranges]
    parts += [re.escape(ch) for ch in sorted(chars)]
    return "".join(parts)


# One token = one no-space character, or a run of other non-whitespace characters. Built from
# matching's own tables; tests check it against is_nospace_char for every code point.
_NOSPACE_CLASS = _char_class(NOSPACE_RANGES, NOSPACE_PUNCTUATION)
_TOKEN_RE = re.compile(f"[{_NOSPACE_CLASS}]|[^\\s{_NOSPACE_CLASS}]+")
_HTML_TAG_RE = re.compile(r"&lt;.*?&gt;|<.*?>")


def tokenize(text: str) -> list[str]:
    """Whitespace tokens, with every no-space character (CJK, Thai, ..., punctuation) its own
    token; HTML tags left over by WikiExtractor are removed first (as the reference does)."""
    return _TOKEN_RE.findall(_HTML_TAG_RE.sub("", text))


@dataclass
class NgramCounts:
    """Unigram and bigram counts of one wiki; bigram keys are "x y" (tokens have no spaces)."""

    unigrams: Counter[str] = field(default_factory=Counter)
    bigrams: Counter[str] = field(default_factory=Counter)

    def update(self, other: NgramCounts) -> None:
        self.unigrams.update(other.unigrams)
        self.bigrams.update(other.bigrams)


def count_ngrams(tokens: Sequence[str], counts: NgramCounts | None = None) -> NgramCounts:
    """Count unigrams and adjacent-token bigrams; punctuation-only tokens are not counted and
    break bigrams (no bigram spans "dog . The")."""
    counts = counts if counts is not None else NgramCounts()
    keep = [None if is_punctuation_only(t) else t for t in tokens]
    counts.unigrams.update(t for t in keep if t is not None)
    counts.bigrams.update(
        f"{a} {b}" for a, b in zip(keep, keep[1:], strict=False)
        if a is not None and b is not None)
    return counts


def count_dump_lines(lines: Iterable[str | bytes], path: str = "") -> tuple[
        dict[str, NgramCounts], int]:
    """Count n-grams of WikiExtractor JSON lines ({"id","url","title","text"}) per wiki code.

    The code comes from each article's url (xx.wikipedia.org), else from the file's path.
    Returns (counts per code, number of lines skipped as unreadable or of unknown wiki).
    """
    per_code: dict[str, NgramCounts] = {}
    path_code = wiki_code_from_path(path) if path else None
    skipped = 0
    for line in lines:
        if isinstance(line, bytes):
            line = line.decode("utf-8", errors="replace")
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
            text = doc.get("text") or ""
        except (json.JSONDecodeError, AttributeError):
            skipped += 1
            continue
        code = wiki_code_from_url(str(doc.get("url", ""))) or path_code
        if code is None:
            skipped += 1
            continue
        count_ngrams(tokenize(text), per_code.setdefault(code, NgramCounts()))
    return per_code, skipped


def bigram_pmi(unigrams: Mapping[str, int], bigrams: Mapping[str, int],
               total: int | None = None) -> dict[str, float]:
    """PMI(x y) = log2(c(xy) * N / (c(x) c(y))), N = total unigram tokens (NLTK's pmi).

    Bigrams whose parts have no unigram count (cannot happen for counts from one pass) are
    left out, as the reference does.
    """
    n = total if total is not None else sum(unigrams.values())
    out: dict[str, float] = {}
    if n <= 0:
        return out
    log_n = math.log2(n)
    for key, c in bigrams.items():
        x, _, y = key.partition(" ")
        cx, cy = unigrams.get(x, 0), unigrams.get(y, 0)
        if c > 0 and cx > 0 and cy > 0:
            out[key] = math.log2(c) + log_n - math.log2(cx) - math.log2(cy)
    return out


def bigram_surface(key: str, code: str) -> str:
    """"x y" as an entry: no inner space in no-space languages, or when both characters at
    the join are no-space characters (a CJK bigram in any wiki)."""
    x, _, y = key.partition(" ")
    if normal_code(code) in NOSPACE_LANGUAGES or (
            x and y and is_nospace_char(x[-1]) and is_nospace_char(y[0])):
        return x + y
    return key
