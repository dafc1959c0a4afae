"""The pairs of one shard: a pure function of (seed, shard index), so shards can be made in
any order, by any worker, with the same bytes.

~english_share of pairs are English, the other languages share the rest with mild web-like
skew; junk_share carry junk captions with a noise image and concept -1; corrupt_share are
corrupt on purpose (undecodable image bytes or empty texts), flagged ``corrupt: true``.
Keys are ``{shard:05d}_{index:06d}`` (no dots: WebDataset readers group tar members by the
part of the name before the first dot).
"""

from __future__ import annotations

from typing import Any

from worldclip.pipelines.world.captions import (
    SECOND_TEXT_SHARE,
    concept_caption,
    junk_caption,
    title_text,
)
from worldclip.pipelines.world.render import encode_jpeg, render_image, render_noise
from worldclip.pipelines.world.seeds import STREAM_SHARD, seeded
from worldclip.pipelines.world.spec import WorldSpec


def shard_key(shard: int, index: int) -> str:
    return f"{shard:05d}_{index:06d}"


def generate_shard(spec: WorldSpec, shard: int) -> list[dict[str, Any]]:
    """The records of one shard (a pure function of seed and shard index).

    Record: key, image (JPEG bytes), texts, lang, concept (-1 junk), corrupt.
    """
    n = spec.shard_size(shard)
    rng, r = seeded(spec.seed, STREAM_SHARD, shard)
    junk = rng.random(n) < spec.junk_share
    concepts = rng.choice(len(spec.concepts), size=n, p=spec.concept_p)
    langs = rng.choice(len(spec.languages), size=n, p=spec.language_p)
    corrupt = rng.random(n) < spec.corrupt_share
    records = []
    for i in range(n):
        lang = spec.languages[int(langs[i])]
        if junk[i]:
            concept = -1
            texts = [junk_caption(r, spec)]
            if r.random() < SECOND_TEXT_SHARE:
                texts.append(junk_caption(r, spec))
            img = render_noise(rng, spec.image_size)
        else:
            concept = int(concepts[i])
            c = spec.concepts[concept]
            texts = [concept_caption(r, c, lang)]
            if r.random() < SECOND_TEXT_SHARE:
                texts.append(title_text(r, c, lang, spec))
            img = render_image(spec.signatures[concept], rng, spec.image_size)
        image = encode_jpeg(img)
        if corrupt[i]:
            kind = r.randrange(3)
            if kind == 0:  # bytes that are no image at all
                image = b"\x00corrupt" + rng.bytes(64)
            elif kind == 1:  # a truncated JPEG
                image = image[: len(image) // 3]
            else:  # no usable text
                texts = [] if r.random() < 0.5 else ["", "   "]
        records.append({"key": shard_key(shard, i), "image": image, "texts": texts,
                        "lang": lang, "concept": concept, "corrupt": bool(corrupt[i])})
    return records


def ground_truth(rec: dict[str, Any]) -> dict[str, Any]:
    return {"key": rec["key"], "texts": rec["texts"], "lang": rec["lang"],
            "concept": rec["concept"], "corrupt": rec["corrupt"]}
