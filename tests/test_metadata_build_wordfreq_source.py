"""metadata_build/wordfreq_source.py: wordfreq lists as unigram counts."""

from __future__ import annotations

from worldclip.pipelines.metadata_build import wordfreq_source


def test_wordfreq_unigrams_drop_digit_placeholders():
    en = wordfreq_source.wordfreq_unigrams("en")
    assert en["the"] > en["dog"] > 0
    assert not any("0" in w for w in en)
    langs = wordfreq_source.wordfreq_languages()
    assert langs["tl"] == "fil" and langs["no"] == "nb"
