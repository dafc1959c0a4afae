"""metadata_build/build.py: MetaCLIP 2 order and caps, dedup, skips, PMI threshold, merging."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from worldclip.pipelines.metadata_build import build, codes

NUMS = [str(i) for i in range(100)]


def test_bigram_pmi_threshold_is_strict_at_default_30():
    assert build.Caps().bigram_min_pmi == 30.0
    src = build.LanguageSources(bigrams={"x y": 1, "p q": 1, "r s": 1},
                             bigram_pmi={"x y": 30.0, "p q": 30.5, "r s": 31.0})
    md = build.build_language("en", src)
    assert md.entries == NUMS + ["r s", "p q"]  # 30.0 is not > 30; by descending PMI


def test_bigram_cap_is_min_of_cap_and_distinct_bigrams():
    pmi = {f"w{i} v{i}": 40.0 + i for i in range(5)}
    md = build.build_language("en", build.LanguageSources(bigrams=dict.fromkeys(pmi, 1),
                                                    bigram_pmi=pmi),
                           build.Caps(bigram_cap=2))
    assert md.entries[100:] == ["w4 v4", "w3 v3"]
    assert md.stats["caps"]["bigram"] == 2


def test_order_caps_and_dedup_across_sources():
    unigrams = {f"u{i:02d}": 100 - i for i in range(30)}  # 30 distinct -> cap int(3.0) = 3
    unigrams["dog"] = 1000  # duplicate of a WordNet lemma: skipped, not counted to the cap
    unigrams["7"] = 999  # duplicate of a number
    titles = {"Dog": 50, "u00": 40, "Paris": 30, "Rome": 20, "Oslo": 10}  # 5 -> int(3.8) = 3
    src = build.LanguageSources(
        wordnet=["dog", "hot dog", "5"], unigrams=unigrams, unigram_source="wiki",
        bigrams={"hot dog": 3, "New York": 2}, bigram_pmi={"hot dog": 35.0, "New York": 33.0},
        titles=titles)
    md = build.build_language("en", src)
    assert md.entries == NUMS + ["dog", "hot dog", "u00", "u01", "u02", "New York",
                                 "Dog", "Paris", "Rome"]
    assert md.tags == (["numbers"] * 100 + ["wordnet"] * 2 + ["unigram"] * 3 + ["bigram"]
                       + ["title"] * 3)
    assert md.by_source() == {"numbers": 100, "wordnet": 2, "unigram": 3, "bigram": 1,
                              "title": 3}
    assert md.stats["caps"] == {"unigram": 3, "bigram": 2, "title": 3}


def test_unigram_cap_is_ten_percent_of_distinct_unigrams_and_absolute_cap():
    unigrams = {f"w{i:03d}": 1000 - i for i in range(250)}
    md = build.build_language("en", build.LanguageSources(unigrams=unigrams))
    assert md.entries[100:] == [f"w{i:03d}" for i in range(25)]  # 10% of 250
    md = build.build_language("en", build.LanguageSources(unigrams=unigrams),
                              build.Caps(unigram_cap=4))
    assert md.entries[100:] == [f"w{i:03d}" for i in range(4)]  # min(4, 25)
    # the fraction applies to the distinct words a list has, when the caller says so
    md = build.build_language("en", build.LanguageSources(unigrams=unigrams, unigram_distinct=50))
    assert len(md.entries) == 105


def test_punctuation_only_and_overlong_entries_are_skipped_without_using_the_cap():
    long = "x" * 257
    unigrams = {"...": 9, "«»": 8, long: 7, "x" * 256: 6, "ok": 5, "¿": 4}
    unigrams.update({f"z{i}": 1 for i in range(14)})  # 20 distinct -> cap 2
    md = build.build_language("en", build.LanguageSources(unigrams=unigrams))
    assert md.entries[100:] == ["x" * 256, "ok"]
    assert codes.is_punctuation_only("，。") and codes.is_punctuation_only("--")
    assert not codes.is_punctuation_only("a.") and not codes.is_punctuation_only("")


@settings(max_examples=60, deadline=None)
@given(wordnet=st.lists(st.text(max_size=6), max_size=8),
       unigrams=st.dictionaries(st.text(min_size=1, max_size=5), st.integers(1, 50),
                                max_size=60),
       titles=st.dictionaries(st.text(min_size=1, max_size=5), st.integers(1, 50),
                              max_size=20),
       fraction=st.floats(0.0, 1.0))
def test_build_invariants(wordnet, unigrams, titles, fraction):
    md = build.build_language("en", build.LanguageSources(wordnet=wordnet, unigrams=unigrams,
                                                    titles=titles),
                           build.Caps(unigram_fraction=fraction))
    assert md.entries[:100] == NUMS and len(md.entries) == len(set(md.entries))
    assert all(codes.clean_entry(e) == e for e in md.entries[100:])
    order = [build.SOURCE_TAGS.index(t) for t in md.tags]
    assert order == sorted(order)  # numbers, wordnet, unigrams, bigrams, titles
    usable = {codes.clean_entry(w) for w in unigrams} - {None} - set(NUMS) - {
        codes.clean_entry(w) for w in wordnet}
    cap = int(len(unigrams) * fraction)
    assert md.by_source()["unigram"] == min(cap, len(usable))
    assert md.by_source()["title"] <= int(len(titles) * 0.76)


def test_unigram_ties_break_by_string_for_determinism():
    unigrams = {"b": 5, "a": 5, "c": 5, **{f"q{i}": 1 for i in range(17)}}
    assert build.build_language("en", build.LanguageSources(unigrams=unigrams)).entries[100:] == [
        "a", "b"]


def test_merge_lists_folds_in_order_with_dedup():
    zh = build.build_language("zh", build.LanguageSources(wordnet=["猫", "狗"]))
    yue = build.build_language("zh_yue", build.LanguageSources(wordnet=["狗", "貓"]))
    merged = build.merge_lists([zh, yue], "zh")
    assert merged.entries == NUMS + ["猫", "狗", "貓"]
    assert merged.stats["codes"] == ["zh", "zh_yue"]
