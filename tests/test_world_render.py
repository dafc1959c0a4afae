"""The world's images: each follows its concept's signature, with random variation."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from worldclip.pipelines.world.render import (
    PALETTE,
    concept_signatures,
    encode_jpeg,
    render_image,
)


def decodes(data: bytes) -> bool:
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
        return True
    except Exception:
        return False


def test_images_follow_the_concept_signature():
    sigs = concept_signatures(120, seed=0)
    assert len({tuple(s) for s in sigs}) == 120 and all(s[0] != s[2] for s in sigs)
    rng = np.random.default_rng(0)
    img = render_image(sigs[0], rng, 64)
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8
    # The background colour dominates the border; two renders differ (random variation).
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]]).astype(float)
    assert np.abs(np.median(border, 0) - PALETTE[sigs[0][0]]).max() < 60
    assert not np.array_equal(img, render_image(sigs[0], rng, 64))
    jpg = encode_jpeg(img)
    assert jpg[:2] == b"\xff\xd8" and decodes(jpg)
