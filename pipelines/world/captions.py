"""The captions: natural per-language alt-texts, title-like second texts, and junk.

Main captions come from per-language templates (CJK without spaces around the name, plus a
space-separated keyword template, as stock-photo alt-texts are), sometimes decorated with a
common head word that is also a metadata entry ("photo", "写真"). Junk captions
("IMG_4821.JPG") are checked to match no metadata entry in any language.
"""

from __future__ import annotations

import random

from worldclip.pipelines.world.concepts import Concept
from worldclip.pipelines.world.languages import CAPTION_TEMPLATES, HEAD_WORDS
from worldclip.pipelines.world.spec import WorldSpec

SECOND_TEXT_SHARE = 0.3  # pairs with a second (title-like) text
DECORATION_SHARE = 0.25  # main captions decorated with a head word

_JUNK_WORDS = ("untitled", "image", "photo", "img", "pic", "file", "scan", "thumb")


def _junk_candidate(r: random.Random) -> str:
    kind = r.randrange(6)
    n = r.randrange(10000)
    if kind == 0:
        return f"IMG_{n:04d}.JPG"
    if kind == 1:
        return f"DSC {n:04d}"
    if kind == 2:
        return f"{r.choice(_JUNK_WORDS)}-{n}"
    if kind == 3:
        return f"{r.getrandbits(48):012x}.jpg"
    if kind == 4:
        return f"P{r.randrange(10**7):07d}"
    letters = "bcdfghjklmnpqrstvwxz"
    return "".join(r.choice(letters) for _ in range(r.randrange(5, 11)))


def junk_caption(r: random.Random, spec: WorldSpec) -> str:
    """A filename-like or random caption guaranteed to match no metadata entry."""
    matcher = spec.junk_matcher()
    for _ in range(100):
        text = _junk_candidate(r)
        if not matcher.match(text):
            return text
    raise RuntimeError("could not draw a junk caption that matches no metadata entry")


def concept_caption(r: random.Random, concept: Concept, lang: str) -> str:
    text = r.choice(CAPTION_TEMPLATES[lang]).format(concept.names[lang])
    if r.random() < DECORATION_SHARE:
        text = f"{text} {r.choice(HEAD_WORDS[lang])}"
    return text


def title_text(r: random.Random, concept: Concept, lang: str, spec: WorldSpec) -> str:
    """A second, title-like text: half filename junk, half "name head-word"."""
    if r.random() < 0.5:
        return junk_caption(r, spec)
    return f"{concept.names[lang]} {r.choice(HEAD_WORDS[lang])}"
