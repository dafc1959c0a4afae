"""The world's concepts: plain distinct names in every language, Zipf frequencies, metadata."""

from __future__ import annotations

import numpy as np
import pytest

from worldclip.pipelines.world.concepts import (
    build_metadata,
    concept_probabilities,
    select_concepts,
)
from worldclip.pipelines.world.languages import HEAD_WORDS, NOSPACE_LANGUAGES

LANGS = ["en", "ar", "de", "es", "fa", "fr", "id", "it", "ja", "ko", "pt", "ru", "tr", "zh"]


def test_concepts_have_plain_distinct_names_in_every_language():
    concepts = select_concepts(LANGS, 120)
    assert len(concepts) == 120 and [c.index for c in concepts] == list(range(120))
    assert concepts == select_concepts(LANGS, 120)  # fixed order, no seed involved
    for lang in LANGS:
        names = [c.names[lang] for c in concepts]
        assert len(set(names)) == 120, lang
        for name in names:
            assert name == name.strip() and "_" not in name and ":" not in name
            assert not any(ch.isdigit() for ch in name) and len(name.split()) <= 3
            others = [o for o in names if o != name]
            if lang in NOSPACE_LANGUAGES:
                assert not any(name in o for o in others), (lang, name)
            else:
                assert not any(f" {name} " in f" {o} " for o in others), (lang, name)
    assert {c.names["en"] for c in concepts} >= {"sun", "cloud", "anchor"}
    assert concepts[1].names["ja"] == "太陽" and concepts[1].names["de"] == "sonne"


def test_concept_selection_errors_name_the_fix():
    with pytest.raises(ValueError, match=r"world.concepts=5000: only \d+ emoji"):
        select_concepts(LANGS, 5000)
    with pytest.raises(ValueError, match=r"world.languages contains \['xx'\]"):
        select_concepts(["en", "xx"], 10)


def test_zipf_probabilities_head_and_tail():
    p = concept_probabilities(120, 1.1, seed=0)
    assert p.sum() == pytest.approx(1.0)
    ranked = np.sort(p)[::-1]
    ranks = np.arange(1, 121)
    assert np.allclose(ranked[0] / ranked, ranks**1.1)  # exactly rank^-a
    assert ranked[:12].sum() > 0.5  # top 10% of concepts hold most pairs
    assert ranked[60:].sum() < 0.15  # the lower half is a thin tail
    q = concept_probabilities(120, 1.1, seed=1)
    assert not np.array_equal(p, q) and np.allclose(np.sort(p), np.sort(q))



def test_metadata_lists_concepts_first_then_distinct_real_words():
    concepts = select_concepts(LANGS, 40)
    meta = build_metadata(concepts, LANGS, distractors=50)
    for lang in LANGS:
        entries = meta[lang]
        assert all(isinstance(e, str) and e for e in entries)
        assert len(entries) == len(set(entries)) == 40 + 50
        assert entries[:40] == [c.names[lang] for c in concepts]
        assert set(HEAD_WORDS[lang]) <= set(entries)
    assert "the" in meta["en"] and "die" in meta["de"]  # wordfreq's top words

