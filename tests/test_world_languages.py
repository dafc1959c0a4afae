"""The world's languages: English share and the mild skew of the others."""

from __future__ import annotations

import pytest

from worldclip.pipelines.world.languages import language_probabilities

LANGS = ["en", "ar", "de", "es", "fa", "fr", "id", "it", "ja", "ko", "pt", "ru", "tr", "zh"]


def test_language_probabilities():
    p = language_probabilities(LANGS, 0.44)
    assert p.sum() == pytest.approx(1.0) and p[0] == pytest.approx(0.44)
    share = dict(zip(LANGS, p))
    assert share["es"] > share["fa"] > 0  # mild skew, every language present
    assert language_probabilities(["de", "fr"], 0.44).tolist() == [0.5, 0.5]

