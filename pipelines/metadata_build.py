"""Build per-language metadata (the concept vocabularies) from sources that install offline.

MetaCLIP 2 order per wiki code (RECIPE.md §1), skipping duplicates: the strings "0".."99";
the language's WordNet lemmas; unigrams by descending count until min(unigram_cap,
unigram_fraction x distinct unigrams) are added; bigrams with PMI > bigram_min_pmi (strict) by
descending PMI, up to min(bigram_cap, distinct bigrams); titles by descending summed views, up
to min(title_cap, title_fraction x distinct titles). Unigrams, bigrams and titles longer than
256 characters or made of punctuation only are skipped (and do not count toward a cap).

Sources, each optional:
- WordNet (``metadata.wordnet_dir``, an NLTK data directory; nltk itself is not needed): the
  English WordNet data files give English its MetaCLIP 1 entries, the synset names (the
  first lemma of each synset, lower-cased, "_" -> " ", as NLTK names synsets); the Open
  Multilingual WordNet tab files (``wn-data-<lang>.tab``) give every other mapped language
  all its lemmas ("_" -> " ", "+" removed), sorted, as the reference does.
- Wikipedia dumps (``metadata.wiki_dumps``, WikiExtractor JSON lines) give unigram and bigram
  counts; ``metadata.pageviews`` (Wikimedia pageview lines "wiki title views ...") give title
  views. Both are counted by a Ray Data job (read -> map_batches -> groupby-sum).
- wordfreq: when a language has no Wikipedia counts, its wordfreq list stands in for the
  unigrams, with count = frequency x WORDFREQ_NOMINAL_TOKENS (only the order matters; the
  10 % cap applies to the number of distinct words in the list, less wordfreq's "0"
  placeholders for numbers).

Tokenisation of dump text follows the reference: split on whitespace, and make each
"no-space" character (CJK, Thai, Lao, Myanmar, Khmer, Tibetan, punctuation;
``matching.is_nospace_char``) a token of its own. Punctuation-only tokens are not counted and
break bigrams. Bigram PMI is NLTK's ``BigramAssocMeasures.pmi`` that MetaCLIP 1 used::

    PMI(x y) = log2( c(x y) * N / (c(x) * c(y)) ),   N = total counted unigram tokens

i.e. log2 of p(xy) / (p(x) p(y)) with every p estimated over N. A bigram is written without its
inner space in no-space languages (zh, ja, th, ...) and whenever both characters at the join
are no-space script characters ("东 京" -> "东京"), so that it matches as the text had it.

Wiki codes with "_" fold into their prefix (zh_yue -> zh, merged after the prefix's own list,
duplicates skipped); codes that no LID label maps to fold into the group "other". Output:
``{out}/{group}.json`` (a JSON list of strings, id = position), ``{out}/groups.json`` (LID
label -> group; unknown labels go to "other") and ``{out}/manifest.json``.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import logging
import math
import re
import time
import unicodedata
import zipfile
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import pyarrow as pa
from omegaconf import DictConfig

from worldclip.pipelines.lid import OTHER, LanguageMap
from worldclip.pipelines.matching import NOSPACE_PUNCTUATION, NOSPACE_RANGES, is_nospace_char
from worldclip.platform import storage
from worldclip.platform.config import ConfigError, save_config

__all__ = [
    "FASTTEXT_LID176_LABELS",
    "LANGDETECT_LABELS",
    "MAX_ENTRY_CHARS",
    "NOSPACE_LANGUAGES",
    "SOURCE_TAGS",
    "WORDFREQ_NOMINAL_TOKENS",
    "WORDNET_TO_WIKI",
    "Caps",
    "LanguageMetadata",
    "LanguageSources",
    "NgramCounts",
    "bigram_pmi",
    "bigram_surface",
    "build_language",
    "count_dump_lines",
    "count_ngrams",
    "count_pageview_lines",
    "count_pageviews_ray",
    "count_wiki_dumps_ray",
    "english_synset_names",
    "fold_code",
    "group_map",
    "is_punctuation_only",
    "merge_lists",
    "omw_lemmas",
    "parse_pageview_line",
    "read_wordnet",
    "run",
    "tokenize",
    "wiki_code_from_path",
    "wiki_code_from_url",
    "wordfreq_languages",
    "wordfreq_unigrams",
]

log = logging.getLogger(__name__)

MAX_ENTRY_CHARS = 256
NUMBERS = tuple(str(i) for i in range(100))
# wordfreq gives frequencies, not counts: counts are frequency x this nominal corpus size.
WORDFREQ_NOMINAL_TOKENS = 1_000_000_000
# wordfreq code -> wiki code where they differ (wordfreq uses ISO 639 "fil" and "nb").
WORDFREQ_TO_WIKI = {"fil": "tl", "nb": "no"}

# Languages written without spaces between words: bigrams lose their inner space (reference).
NOSPACE_LANGUAGES = frozenset(
    {"bo", "dz", "ja", "km", "lo", "my", "ryu", "th", "zh", "zh_classical", "zh_yue"})

# Open Multilingual WordNet language (ISO 639-3, as in wn-data-<lang>.tab) -> wiki code. The
# reference's table, with Albanian fixed ("als" in OMW is Tosk Albanian, wiki "sq", not the
# Alemannic wiki "als") and the OMW 1.4 wordnets it lacks added (Persian, Taiwan Chinese).
WORDNET_TO_WIKI = {
    "als": "sq", "arb": "ar", "bul": "bg", "cat": "ca", "cmn": "zh", "dan": "da", "ell": "el",
    "eus": "eu", "fas": "fa", "fin": "fi", "fra": "fr", "glg": "gl", "heb": "he", "hrv": "hr",
    "ind": "id", "isl": "is", "ita": "it", "jpn": "ja", "lit": "lt", "nld": "nl", "nno": "nn",
    "nob": "no", "pol": "pl", "por": "pt", "qcn": "zh", "ron": "ro", "slk": "sk", "slv": "sl",
    "spa": "es", "swe": "sv", "tha": "th", "zsm": "ms",
}

# The 176 labels of fastText lid.176 (the default LID) and langdetect's 55.
FASTTEXT_LID176_LABELS = tuple("""
af als am an ar arz as ast av az azb ba bar bcl be bg bh bn bo bpy br bs bxr ca cbk ce ceb ckb
co cs cv cy da de diq dsb dty dv el eml en eo es et eu fa fi fr frr fy ga gd gl gn gom gu gv he
hi hif hr hsb ht hu hy ia id ie ilo io is it ja jbo jv ka kk km kn ko krc ku kv kw ky la lb lez
li lmo lo lrc lt lv mai mg mhr min mk ml mn mr mrj ms mt mwl my myv mzn nah nap nds ne new nl nn
no oc or os pa pam pfl pl pms pnb ps pt qu rm ro ru rue sa sah sc scn sco sd sh si sk sl so sq
sr su sv sw ta te tg th tk tl tr tt tyv ug uk ur uz vec vep vi vls vo wa war wuu xal xmf yi yo
yue zh""".split())
LANGDETECT_LABELS = tuple("""
af ar bg bn ca cs cy da de el en es et fa fi fr gu he hi hr hu id it ja kn ko lt lv mk ml mr ne
nl no pa pl pt ro ru sk sl so sq sv sw ta te th tl tr uk ur vi zh-cn zh-tw""".split())
# LID labels whose wiki code folds elsewhere: Cantonese's wiki is zh_yue, folded into zh.
LID_OVERRIDES = {"yue": "zh"}

SOURCE_TAGS = ("numbers", "wordnet", "unigram", "bigram", "title")


# ---------------------------------------------------------------- entries and codes

_PUNCTUATION = NOSPACE_PUNCTUATION | {"¿", "¡"}


@lru_cache(maxsize=1 << 16)
def is_punctuation_only(s: str) -> bool:
    """True for a non-empty string of punctuation only (ASCII/CJK marks or Unicode P*)."""
    return bool(s) and all(
        ch in _PUNCTUATION or unicodedata.category(ch).startswith("P") for ch in s)


def _clean(entry: str) -> str | None:
    """The entry as stored, or None when it is empty, too long or punctuation only."""
    entry = entry.strip()
    if not entry or len(entry) > MAX_ENTRY_CHARS or is_punctuation_only(entry):
        return None
    return entry


def fold_code(code: str) -> str:
    """Wiki code -> metadata group key: "zh_yue", "zh-yue" -> "zh"; "en" stays."""
    return code.strip().lower().replace("-", "_").split("_", 1)[0]


def _normal_code(code: str) -> str:
    return code.strip().lower().replace("-", "_")


# ---------------------------------------------------------------- tokenising and counting

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


_WIKI_HOST_RE = re.compile(r"^(?:https?://)?([a-z0-9-]+)\.(?:m\.)?wikipedia\.org", re.I)
_PATH_CODE_RE = re.compile(r"^([a-z]{2,3}(?:[_-][a-z]+)*?|simple)(?:wiki.*|_text)?$")


def wiki_code_from_url(url: str) -> str | None:
    """"https://zh-yue.wikipedia.org/wiki?curid=1" -> "zh_yue"; None for other hosts."""
    m = _WIKI_HOST_RE.match(url or "")
    return _normal_code(m.group(1)) if m else None


def wiki_code_from_path(path: str) -> str | None:
    """The wiki code a dump file sits under: the nearest folder named "<code>", "<code>wiki..."
    or "<code>_text" (WikiExtractor's AA/AB folders and wiki_00 files are skipped)."""
    for part in reversed(path.replace("\\", "/").split("/")[:-1]):
        m = _PATH_CODE_RE.match(part)
        if m:
            return _normal_code(m.group(1))
    return None


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
    if _normal_code(code) in NOSPACE_LANGUAGES or (
            x and y and is_nospace_char(x[-1]) and is_nospace_char(y[0])):
        return x + y
    return key


# ---------------------------------------------------------------- pageviews

def parse_pageview_line(line: str) -> tuple[str, str, int] | None:
    """("en", "Hot dog", 12) from "en Hot_dog 12 0"; None for non-Wikipedia projects
    (en.b, en.d, ...), namespace pages (a ":" in the title) and malformed lines.

    Accepts the pageviews dumps' domain codes "xx", "xx.m", "xx.wikipedia", "xx.m.wikipedia".
    """
    parts = line.split(" ")
    if len(parts) < 3:
        return None
    domain, title, views = parts[0], parts[1], parts[2]
    domain = domain.removesuffix(".wikipedia")
    code, _, project = domain.partition(".")
    if not code or project not in ("", "m") or code.startswith('"'):
        return None
    title = title.strip().replace("_", " ")
    if not title or title == "-" or ":" in title:
        return None
    try:
        n = int(views)
    except ValueError:
        return None
    if n <= 0:
        return None
    return _normal_code(code), title, n


def count_pageview_lines(lines: Iterable[str | bytes]) -> dict[str, Counter[str]]:
    """Summed views per title per wiki code."""
    out: dict[str, Counter[str]] = {}
    for line in lines:
        if isinstance(line, bytes):
            line = line.decode("utf-8", errors="replace")
        parsed = parse_pageview_line(line.rstrip("\r\n"))
        if parsed is not None:
            code, title, n = parsed
            out.setdefault(code, Counter())[title] += n
    return out


# ---------------------------------------------------------------- Ray Data jobs

_ROW_SCHEMA = pa.schema([("lang", pa.string()), ("kind", pa.string()), ("key", pa.string()),
                         ("count", pa.int64())])


def _rows_batch(rows: list[tuple[str, str, str, int]]) -> pa.Table:
    """(lang, kind, key, count) rows as a table with a fixed schema (empty batches too)."""
    cols = list(zip(*rows, strict=True)) if rows else [(), (), (), ()]
    return pa.table([list(c) for c in cols], schema=_ROW_SCHEMA)


def _count_dump_batch(batch: dict[str, Any]) -> pa.Table:
    rows: list[tuple[str, str, str, int]] = []
    for data, path in zip(batch["bytes"], batch["path"], strict=True):
        per_code, skipped = count_dump_lines(bytes(data).split(b"\n"), str(path))
        if skipped:
            log.warning("%s: skipped %d unreadable lines", path, skipped)
        for code, c in per_code.items():
            rows.extend((code, "u", k, v) for k, v in c.unigrams.items())
            rows.extend((code, "b", k, v) for k, v in c.bigrams.items())
    return _rows_batch(rows)


def _count_pageview_batch(batch: dict[str, Any]) -> pa.Table:
    rows: list[tuple[str, str, str, int]] = []
    for data in batch["bytes"]:
        for code, titles in count_pageview_lines(bytes(data).split(b"\n")).items():
            rows.extend((code, "t", k, v) for k, v in titles.items())
    return _rows_batch(rows)


def _ray_counts(url_glob: str, what: str, fn: Any) -> dict[tuple[str, str], Counter[str]]:
    """read_binary_files(glob) -> map_batches(fn) -> groupby(lang, kind, key).sum(count)."""
    import ray

    urls = storage.glob(url_glob)
    if not urls:
        raise FileNotFoundError(
            f"metadata.{what}={url_glob!r}: no file matches; fix the glob or set it to ''")
    paths = [storage.strip_scheme(u) for u in urls]
    fs = storage.arrow_filesystem(urls[0])
    log.info("counting %s: %d files", what, len(paths))
    ds = ray.data.read_binary_files(paths, filesystem=fs, include_paths=True)
    counted = ds.map_batches(fn, batch_size=1, batch_format="numpy")
    # a partition per file up to 2 per CPU: the default (200) costs seconds on small inputs
    cpus = int(ray.cluster_resources().get("CPU", 1))
    partitions = max(1, min(len(paths), 2 * cpus))
    summed = counted.groupby(["lang", "kind", "key"], num_partitions=partitions).sum("count")
    out: dict[tuple[str, str], Counter[str]] = {}
    for b in summed.iter_batches(batch_format="pyarrow", batch_size=65536):
        cols = b.to_pydict()
        for lang, kind, key, n in zip(cols["lang"], cols["kind"], cols["key"],
                                      cols["sum(count)"], strict=True):
            out.setdefault((lang, kind), Counter())[key] = int(n)
    return out


def count_wiki_dumps_ray(url_glob: str) -> dict[str, NgramCounts]:
    """Unigram and bigram counts per wiki code over every dump file of a glob (Ray Data)."""
    raw = _ray_counts(url_glob, "wiki_dumps", _count_dump_batch)
    out: dict[str, NgramCounts] = {}
    for (code, kind), counter in raw.items():
        c = out.setdefault(code, NgramCounts())
        (c.unigrams if kind == "u" else c.bigrams).update(counter)
    return out


def count_pageviews_ray(url_glob: str) -> dict[str, Counter[str]]:
    """Summed views per title per wiki code over every pageview file of a glob (Ray Data)."""
    return {code: counter for (code, _), counter in
            _ray_counts(url_glob, "pageviews", _count_pageview_batch).items()}


# ---------------------------------------------------------------- WordNet / OMW

def _read_lines(url: str) -> list[str]:
    data = storage.read_bytes(url)
    if url.endswith(".gz"):
        data = gzip.decompress(data)
    return data.decode("utf-8", errors="replace").splitlines()


def _zip_lines(url: str) -> Iterator[tuple[str, list[str]]]:
    with zipfile.ZipFile(io.BytesIO(storage.read_bytes(url))) as z:
        for name in sorted(z.namelist()):
            if not name.endswith("/"):
                yield name, z.read(name).decode("utf-8", errors="replace").splitlines()


_ADJ_MARKER_RE = re.compile(r"\((?:a|p|ip)\)$")
# NLTK's all_synsets() order.
_WORDNET_POS_FILES = ("data.adj", "data.adv", "data.noun", "data.verb")


def english_synset_names(data_files: Mapping[str, list[str]]) -> list[str]:
    """MetaCLIP 1's English WordNet entries: each synset's name ("dog.n.01" -> "dog"), i.e.
    its first lemma lower-cased with "_" -> " ", deduplicated in NLTK's synset order.

    ``data_files`` maps "data.noun" etc. to the lines of WordNet's data files.
    """
    names: dict[str, None] = {}
    for pos_file in _WORDNET_POS_FILES:
        for line in data_files.get(pos_file, []):
            if not line or line.startswith(" "):  # license header
                continue
            fields = line.split(" ")
            if len(fields) < 5:
                continue
            name = _ADJ_MARKER_RE.sub("", fields[4]).lower().replace("_", " ").strip()
            if name:
                names.setdefault(name, None)
    return list(names)


def omw_lemmas(lines: Iterable[str], default_lang: str = "") -> dict[str, set[str]]:
    """Lemmas per OMW language from a wn-data-<lang>.tab ("offset-pos<TAB>lang:lemma<TAB>x");
    "_" -> " ", "+" removed (as the reference does); definitions/examples are skipped."""
    out: dict[str, set[str]] = {}
    for line in lines:
        if not line or line.startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) < 3:
            continue
        lang, _, kind = parts[1].rpartition(":")
        if kind != "lemma":
            continue
        lemma = " ".join(parts[2].replace("_", " ").replace("+", "").split())
        if lemma:
            out.setdefault(lang or default_lang, set()).add(lemma)
    return out


def _basename(url: str) -> str:
    return url.rsplit("/", 1)[-1]


def _tab_lang(name: str) -> str:
    return name.rsplit("wn-data-", 1)[-1].removesuffix(".tab")


def read_wordnet(wordnet_dir: str) -> tuple[dict[str, list[str]], dict[str, Any]]:
    """WordNet entries per wiki code from an NLTK data directory (corpora/wordnet and
    corpora/omw-1.4, unpacked or as the downloader's zips), plus what was read.

    English gets the synset names; each OMW language mapped by WORDNET_TO_WIKI gets its
    sorted lemmas ("eng" OMW lemmas are not used: English keeps MetaCLIP 1's synset names).
    """
    roots = [storage.join(wordnet_dir, "corpora"), wordnet_dir]
    info: dict[str, Any] = {"english_files": [], "omw_files": [], "unmapped": []}

    data_files: dict[str, list[str]] = {}
    for root in roots:
        for folder in ("wordnet", ""):
            base = storage.join(root, folder) if folder else root
            found = [u for u in storage.glob(storage.join(base, "data.*"))
                     if _basename(u) in _WORDNET_POS_FILES]
            if found:
                data_files = {_basename(u): _read_lines(u) for u in found}
                info["english_files"] = found
                break
        if data_files:
            break
        for u in storage.glob(storage.join(root, "wordnet.zip")):
            data_files = {_basename(n): lines for n, lines in _zip_lines(u)
                          if _basename(n) in _WORDNET_POS_FILES}
            info["english_files"] = [u]
        if data_files:
            break

    lemmas: dict[str, set[str]] = {}

    def add_tab(name: str, lines: list[str]) -> None:
        for k, v in omw_lemmas(lines, _tab_lang(name)).items():
            lemmas.setdefault(k, set()).update(v)

    for root in roots:
        tabs = sorted({*storage.glob(storage.join(root, "omw*", "*", "wn-data-*.tab")),
                       *storage.glob(storage.join(root, "omw*", "wn-data-*.tab"))})
        for u in tabs:
            add_tab(_basename(u), _read_lines(u))
        zips = [] if tabs else storage.glob(storage.join(root, "omw*.zip"))
        for u in zips:
            for name, lines in _zip_lines(u):
                if name.endswith(".tab") and "wn-data-" in name:
                    add_tab(name, lines)
        if tabs or zips:
            info["omw_files"] = tabs or zips
            break

    if not data_files and not lemmas:
        raise FileNotFoundError(
            f"metadata.wordnet_dir={wordnet_dir!r}: no WordNet found (expected "
            "corpora/wordnet/data.noun and/or corpora/omw-1.4/*/wn-data-*.tab, as "
            "`python -m nltk.downloader -d DIR wordnet omw-1.4` writes); fix the path or set "
            "metadata.wordnet_dir=''")
    out: dict[str, list[str]] = {}
    if data_files:
        out["en"] = english_synset_names(data_files)
    per_wiki: dict[str, set[str]] = {}
    unmapped: set[str] = set()
    for lang, words in lemmas.items():
        wiki = WORDNET_TO_WIKI.get(lang.split("_", 1)[0])
        if wiki is None:
            if lang != "eng":
                unmapped.add(lang)
            continue
        per_wiki.setdefault(wiki, set()).update(words)
    for wiki, words in per_wiki.items():
        out[wiki] = sorted(words)
    info["unmapped"] = sorted(unmapped)
    return out, info


# ---------------------------------------------------------------- wordfreq

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


# ---------------------------------------------------------------- per-language build

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
    """One wiki code's metadata in MetaCLIP 2 order with its caps (RECIPE.md §1)."""
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
            m = _clean(c)
            if m is not None and add(m, tag):
                added += 1
                if added >= cap:
                    return

    for n in NUMBERS:
        add(n, "numbers")
    for lemma in src.wordnet:
        m = _clean(lemma)
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


def group_map(known: Iterable[str]) -> dict[str, str]:
    """LID label (fastText lid.176 and langdetect) -> metadata group; labels without
    metadata map to "other"."""
    known = {k for k in known if k != OTHER}
    overrides = {k: v for k, v in LID_OVERRIDES.items() if v in known}
    lmap = LanguageMap(overrides=overrides, known=known)
    return {label: lmap.group(label)
            for label in sorted(set(FASTTEXT_LID176_LABELS) | set(LANGDETECT_LABELS))}


def _lid_targets() -> set[str]:
    """Every group some LID label can map to (given metadata for it)."""
    return {fold_code(label) for label in (*FASTTEXT_LID176_LABELS, *LANGDETECT_LABELS)} | set(
        LID_OVERRIDES.values())


def _group_of(code: str, targets: set[str]) -> str:
    key = fold_code(code)
    return key if key in targets else OTHER


def _order_codes(group: str, codes: Iterable[str]) -> list[str]:
    """The group's own code first, then the folded ones in sorted order."""
    return sorted(set(codes), key=lambda c: (c != group, c))


# ---------------------------------------------------------------- the stage

def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def run(cfg: DictConfig) -> dict[str, Any]:
    """`worldclip metadata`: build every configured language's metadata and the manifest."""
    t0 = time.perf_counter()
    m = cfg.metadata
    caps = Caps.from_config(m)
    wanted = {fold_code(WORDFREQ_TO_WIKI.get(c, c)) for c in (m.languages or [])}
    targets = _lid_targets()

    def selected(code: str) -> bool:
        return not wanted or _group_of(code, targets) in wanted

    wordnet: dict[str, list[str]] = {}
    sources: dict[str, Any] = {}
    if m.wordnet_dir:
        wordnet, info = read_wordnet(m.wordnet_dir)
        sources["wordnet"] = {"dir": m.wordnet_dir, **info,
                              "languages": {k: len(v) for k, v in sorted(wordnet.items())}}
    dumps: dict[str, NgramCounts] = {}
    pageviews: dict[str, Counter[str]] = {}
    if m.wiki_dumps or m.pageviews:
        from worldclip.platform.runtime import init_ray

        init_ray(cfg)
    if m.wiki_dumps:
        dumps = count_wiki_dumps_ray(m.wiki_dumps)
        sources["wiki_dumps"] = {"glob": m.wiki_dumps, "languages": sorted(dumps)}
    if m.pageviews:
        pageviews = count_pageviews_ray(m.pageviews)
        sources["pageviews"] = {"glob": m.pageviews, "languages": sorted(pageviews)}
    wf_langs: dict[str, str] = {}
    if m.use_wordfreq:
        from importlib.metadata import version

        wf_langs = {k: v for k, v in wordfreq_languages().items() if selected(k)}
        sources["wordfreq"] = {"version": version("wordfreq"),
                               "nominal_tokens": WORDFREQ_NOMINAL_TOKENS,
                               "languages": sorted(wf_langs)}

    codes = sorted(c for c in {*wordnet, *dumps, *pageviews, *wf_langs} if selected(c))
    if wanted:
        missing = wanted - {_group_of(c, targets) for c in codes}
        if missing:
            raise ConfigError(
                f"metadata.languages={list(m.languages)}: no source provides "
                f"{sorted(missing)}; remove them, or point metadata.wiki_dumps / pageviews / "
                "wordnet_dir at data for them (wordfreq has: "
                f"{', '.join(sorted(wordfreq_languages()))})")
    if not codes:
        raise ConfigError(
            "metadata: no source configured; set metadata.use_wordfreq=true or one of "
            "metadata.wordnet_dir / metadata.wiki_dumps / metadata.pageviews")

    built: dict[str, LanguageMetadata] = {}
    for code in codes:
        counts = dumps.get(code)
        if counts is not None and counts.unigrams:
            src = LanguageSources(unigrams=counts.unigrams, unigram_source="wiki",
                                  bigrams=counts.bigrams)
        elif code in wf_langs:
            uni = wordfreq_unigrams(wf_langs[code])
            src = LanguageSources(unigrams=uni, unigram_source="wordfreq")
        else:
            src = LanguageSources()
        src.wordnet = wordnet.get(code, [])
        src.titles = pageviews.get(code, {})
        built[code] = build_language(code, src, caps)
        log.info("%s: %d entries %s", code, len(built[code].entries), built[code].by_source())

    members: dict[str, list[str]] = {}
    for code in codes:
        members.setdefault(_group_of(code, targets), []).append(code)
    out = m.out
    storage.makedirs(out)
    languages: dict[str, Any] = {}
    for group in sorted(members):
        order = _order_codes(group, members[group])
        md = merge_lists([built[c] for c in order], group)
        data = json.dumps(md.entries, ensure_ascii=False).encode("utf-8")
        storage.write_bytes(storage.join(out, f"{group}.json"), data)
        languages[group] = {"file": f"{group}.json", "entries": len(md.entries),
                            "sha256": _sha256(data), "by_source": md.by_source(),
                            "codes": order, "per_code": md.stats["per_code"]}
    groups = group_map(languages)
    storage.write_json(storage.join(out, "groups.json"), groups)
    seconds = time.perf_counter() - t0
    manifest = {
        "format": "worldclip-metadata/1",
        "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "build_seconds": round(seconds, 3),
        "order": ["numbers", "wordnet", "unigram", "bigram", "title"],
        "pmi": "log2(c(xy) * N / (c(x) * c(y))), N = total unigram tokens; kept if > "
               "bigram_min_pmi",
        "caps": {**caps.__dict__, "max_entry_chars": MAX_ENTRY_CHARS},
        "sources": sources,
        "languages": languages,
        "groups": groups,
        "groups_file": "groups.json",
    }
    storage.write_json(storage.join(out, "manifest.json"), manifest)
    save_config(cfg, out)
    log.info("metadata: %d groups, %d entries in %.1fs -> %s", len(languages),
             sum(v["entries"] for v in languages.values()), seconds, out)
    return {"out": out, "groups": len(languages), "build_seconds": round(seconds, 2),
            "entries": {g: v["entries"] for g, v in languages.items()}}
