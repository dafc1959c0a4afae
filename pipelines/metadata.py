"""Per-language metadata (concept vocabularies): loading, validation, cached matchers.

Format (docs/curation.md §1): one JSON list of strings per language at <url>/<lang>.json,
id = position. Languages are loaded lazily -- only those that occur -- and each language's
Aho-Corasick automaton is built once per worker process and cached.
"""

from __future__ import annotations

import hashlib
import logging
import posixpath

from worldclip.pipelines.matching import Matcher
from worldclip.platform import storage

log = logging.getLogger(__name__)

MERGED = "merged"  # the group name of the merged-metadata ablation
_NOT_LANGUAGES = {"manifest", "groups"}


class MetadataError(ValueError):
    pass


def list_languages(url: str) -> list[str]:
    """Languages with a metadata file under url (file stems, sorted)."""
    langs = []
    for u in storage.glob(storage.join(url, "*.json")):
        stem = posixpath.basename(u)[: -len(".json")]
        if stem not in _NOT_LANGUAGES:
            langs.append(stem)
    if not langs:
        raise MetadataError(f"metadata {url}: no <lang>.json files found; run `worldclip world` "
                            "or `worldclip metadata`, or point curation.metadata at them")
    return sorted(langs)


def parse_entries(data: bytes, source: str) -> list[str]:
    """Validate one metadata file: a JSON list of strings (id = position)."""
    import json

    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise MetadataError(f"metadata {source}: not valid UTF-8 JSON ({e}); each file must be "
                            'a JSON list of strings, e.g. ["dog", "hot dog"]') from None
    if not isinstance(obj, list):
        raise MetadataError(f"metadata {source}: top level is {type(obj).__name__}, must be a "
                            'JSON list of strings (id = position), e.g. ["dog", "hot dog"]')
    bad = [i for i, e in enumerate(obj) if not isinstance(e, str)]
    if bad:
        raise MetadataError(f"metadata {source}: entries {bad[:5]} are not strings "
                            f"(e.g. {obj[bad[0]]!r}); every entry must be a string")
    return obj


class MetadataStore:
    """Lazy per-language entries and matchers from a metadata URL.

    merged=True is the paper's ablation: one list (union of all languages, first occurrence
    wins) and one automaton for every text, under the single group "merged".
    """

    def __init__(self, url: str, merged: bool = False, kana_hangul_nospace: bool = False,
                 languages: list[str] | None = None) -> None:
        self.url = url
        self.merged = merged
        self.kana_hangul_nospace = kana_hangul_nospace
        self.languages = languages if languages is not None else list_languages(url)
        self._entries: dict[str, list[str]] = {}
        self._hashes: dict[str, str] = {}
        self._matchers: dict[str, Matcher] = {}

    @property
    def groups(self) -> list[str]:
        return [MERGED] if self.merged else list(self.languages)

    def _load_file(self, lang: str) -> list[str]:
        if lang not in self._entries:
            url = storage.join(self.url, f"{lang}.json")
            data = storage.read_bytes(url)
            self._hashes[lang] = hashlib.sha256(data).hexdigest()
            self._entries[lang] = parse_entries(data, url)
            log.info("metadata %s: %d entries", lang, len(self._entries[lang]))
        return self._entries[lang]

    def entries(self, group: str) -> list[str]:
        if group == MERGED and self.merged:
            if MERGED not in self._entries:
                seen: dict[str, None] = {}
                for lang in self.languages:
                    for e in self._load_file(lang):
                        seen.setdefault(e, None)
                self._entries[MERGED] = list(seen)
            return self._entries[MERGED]
        if group not in self.languages:
            raise MetadataError(f"metadata {self.url}: no file for language {group!r}; "
                                f"have {self.languages}")
        return self._load_file(group)

    def matcher(self, group: str) -> Matcher:
        if group not in self._matchers:
            self._matchers[group] = Matcher(self.entries(group), self.kana_hangul_nospace)
        return self._matchers[group]

    def size(self, group: str) -> int:
        return len(self.entries(group))

    def hashes(self) -> dict[str, str]:
        """sha256 of every file loaded so far (for the data card)."""
        for lang in self.languages:
            self._load_file(lang)
        return dict(self._hashes)
