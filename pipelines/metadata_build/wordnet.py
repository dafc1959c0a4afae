"""WordNet / Open Multilingual WordNet readers (``metadata.wordnet_dir``, an NLTK data
directory; nltk itself is not needed).

The English WordNet data files give English its MetaCLIP 1 entries, the synset names (the
first lemma of each synset, lower-cased, "_" -> " ", as NLTK names synsets); the Open
Multilingual WordNet tab files (``wn-data-<lang>.tab``) give every other mapped language all
its lemmas ("_" -> " ", "+" removed), sorted, as the reference does.
"""

from __future__ import annotations

import gzip
import io
import re
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from worldclip.platform import storage

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
