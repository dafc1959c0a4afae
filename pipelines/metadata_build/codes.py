"""Entries and codes: what an entry may be, wiki code -> metadata group, LID label -> group.

Wiki codes with "_" fold into their prefix (zh_yue -> zh, merged after the prefix's own list,
duplicates skipped); codes that no LID label maps to fold into the group "other".
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from functools import lru_cache

from worldclip.pipelines.lid import OTHER, LanguageMap
from worldclip.pipelines.matching import NOSPACE_PUNCTUATION

MAX_ENTRY_CHARS = 256

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


_PUNCTUATION = NOSPACE_PUNCTUATION | {"¿", "¡"}


@lru_cache(maxsize=1 << 16)
def is_punctuation_only(s: str) -> bool:
    """True for a non-empty string of punctuation only (ASCII/CJK marks or Unicode P*)."""
    return bool(s) and all(
        ch in _PUNCTUATION or unicodedata.category(ch).startswith("P") for ch in s)


def clean_entry(entry: str) -> str | None:
    """The entry as stored, or None when it is empty, too long or punctuation only."""
    entry = entry.strip()
    if not entry or len(entry) > MAX_ENTRY_CHARS or is_punctuation_only(entry):
        return None
    return entry


def fold_code(code: str) -> str:
    """Wiki code -> metadata group key: "zh_yue", "zh-yue" -> "zh"; "en" stays."""
    return code.strip().lower().replace("-", "_").split("_", 1)[0]


def normal_code(code: str) -> str:
    return code.strip().lower().replace("-", "_")


_WIKI_HOST_RE = re.compile(r"^(?:https?://)?([a-z0-9-]+)\.(?:m\.)?wikipedia\.org", re.I)
_PATH_CODE_RE = re.compile(r"^([a-z]{2,3}(?:[_-][a-z]+)*?|simple)(?:wiki.*|_text)?$")


def wiki_code_from_url(url: str) -> str | None:
    """"https://zh-yue.wikipedia.org/wiki?curid=1" -> "zh_yue"; None for other hosts."""
    m = _WIKI_HOST_RE.match(url or "")
    return normal_code(m.group(1)) if m else None


def wiki_code_from_path(path: str) -> str | None:
    """The wiki code a dump file sits under: the nearest folder named "<code>", "<code>wiki..."
    or "<code>_text" (WikiExtractor's AA/AB folders and wiki_00 files are skipped)."""
    for part in reversed(path.replace("\\", "/").split("/")[:-1]):
        m = _PATH_CODE_RE.match(part)
        if m:
            return normal_code(m.group(1))
    return None


def group_map(known: Iterable[str]) -> dict[str, str]:
    """LID label (fastText lid.176 and langdetect) -> metadata group; labels without
    metadata map to "other"."""
    known = {k for k in known if k != OTHER}
    overrides = {k: v for k, v in LID_OVERRIDES.items() if v in known}
    lmap = LanguageMap(overrides=overrides, known=known)
    return {label: lmap.group(label)
            for label in sorted(set(FASTTEXT_LID176_LABELS) | set(LANGDETECT_LABELS))}


def lid_targets() -> set[str]:
    """Every group some LID label can map to (given metadata for it)."""
    return {fold_code(label) for label in (*FASTTEXT_LID176_LABELS, *LANGDETECT_LABELS)} | set(
        LID_OVERRIDES.values())


def group_of(code: str, targets: set[str]) -> str:
    key = fold_code(code)
    return key if key in targets else OTHER


def order_codes(group: str, codes: Iterable[str]) -> list[str]:
    """The group's own code first, then the folded ones in sorted order."""
    return sorted(set(codes), key=lambda c: (c != group, c))
