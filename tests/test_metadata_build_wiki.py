"""metadata_build/wiki.py: tokenising, n-gram counting, PMI by hand, bigram surfaces, dump lines."""

from __future__ import annotations

import json
import math
import re
from collections import Counter

import pytest

from worldclip.pipelines.matching import Matcher, is_nospace_char
from worldclip.pipelines.metadata_build import build, wiki


def test_tokenize_splits_nospace_characters_and_punctuation():
    assert wiki.tokenize("A hot dog, in 東京.") == ["A", "hot", "dog", ",", "in", "東", "京", "."]
    assert wiki.tokenize("ภาษา ไทย") == ["ภ", "า", "ษ", "า", "ไ", "ท", "ย"]
    # kana is not a no-space script in the reference: it stays one token
    assert wiki.tokenize("ネコ科の動物") == ["ネコ", "科", "の", "動", "物"]
    # WikiExtractor leftovers are removed as the reference does
    assert wiki.tokenize("a <br/>b &lt;ref&gt;c") == ["a", "b", "c"]


def test_token_pattern_agrees_with_is_nospace_char_everywhere():
    single = re.compile(f"[{wiki._NOSPACE_CLASS}]")
    bad = [cp for cp in range(0x110000)
           if not 0xD800 <= cp <= 0xDFFF
           and bool(single.fullmatch(chr(cp))) != is_nospace_char(chr(cp))]
    assert bad == []


def test_count_ngrams_skips_punctuation_and_breaks_bigrams_there():
    c = wiki.count_ngrams(wiki.tokenize("the dog's toy. The dog"))
    assert c.unigrams == Counter({"dog": 2, "the": 1, "s": 1, "toy": 1, "The": 1})
    assert c.bigrams == Counter({"the dog": 1, "s toy": 1, "The dog": 1})  # no "dog s"


def test_pmi_computed_by_hand():
    c = wiki.count_ngrams("a b a b c".split())
    # N = 5; c(a)=2 c(b)=2 c(c)=1; c(a b)=2 c(b a)=1 c(b c)=1
    pmi = wiki.bigram_pmi(c.unigrams, c.bigrams)
    assert pmi.keys() == {"a b", "b a", "b c"}
    assert pmi["a b"] == pytest.approx(math.log2(2 * 5 / (2 * 2)))
    assert pmi["b a"] == pytest.approx(math.log2(1 * 5 / (2 * 2)))
    assert pmi["b c"] == pytest.approx(math.log2(1 * 5 / (2 * 1)))


def test_bigram_surface_drops_inner_space_for_nospace_scripts():
    assert wiki.bigram_surface("東 京", "zh") == "東京"
    assert wiki.bigram_surface("東 京", "en") == "東京"  # CJK on both sides of the join
    assert wiki.bigram_surface("ネコ 科", "ja") == "ネコ科"  # a no-space language
    assert wiki.bigram_surface("hot dog", "zh_yue") == "hotdog"
    assert wiki.bigram_surface("New York", "en") == "New York"
    assert wiki.bigram_surface("Tokyo 東", "en") == "Tokyo 東"
    assert wiki.bigram_surface("강아지 사료", "ko") == "강아지 사료"  # Hangul keeps its spaces


def test_cjk_bigram_entry_has_no_inner_space_and_matches():
    c = wiki.count_ngrams(wiki.tokenize("东京的猫。东京很大。"))
    md = build.build_language("zh", build.LanguageSources(unigrams=c.unigrams, bigrams=c.bigrams),
                           build.Caps(bigram_min_pmi=0.0, unigram_fraction=0.0))
    bigrams = [e for e, t in zip(md.entries, md.tags, strict=True) if t == "bigram"]
    # N = 8: PMI(很 大) = PMI(的 猫) = log2(8) = 3 > PMI(东 京) = log2(2 * 8 / (2 * 2)) = 2
    assert bigrams == ["很大", "的猫", "东京", "京很", "京的"]  # ties by string
    assert Matcher(md.entries).match("我爱东京") >= {md.entries.index("东京")}


def test_count_dump_lines_per_code_with_bad_lines_skipped():
    lines = [
        json.dumps({"id": "1", "url": "https://en.wikipedia.org/wiki?curid=1",
                    "title": "Dog", "text": "Dog dog. Hot dog"}),
        "{not json",
        json.dumps({"id": "2", "url": "", "title": "x", "text": "猫猫"}),  # code from path
        "",
    ]
    per_code, skipped = wiki.count_dump_lines(lines, "/dumps/zh/AA/wiki_00")
    assert skipped == 1
    assert per_code["en"].unigrams == Counter({"dog": 2, "Dog": 1, "Hot": 1})
    assert per_code["en"].bigrams == Counter({"Dog dog": 1, "Hot dog": 1})
    assert per_code["zh"].unigrams == Counter({"猫": 2})
