"""Metadata builder: MetaCLIP 2 order and caps, PMI by hand, sources, folding, Ray counting."""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import re
import sys
import zipfile
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worldclip.pipelines import metadata_build as mb
from worldclip.pipelines.matching import Matcher, is_nospace_char
from worldclip.platform import storage
from worldclip.platform.config import ConfigError, load_config

NUMS = [str(i) for i in range(100)]


# ---------------------------------------------------------------- tokenising and counting

def test_tokenize_splits_nospace_characters_and_punctuation():
    assert mb.tokenize("A hot dog, in 東京.") == ["A", "hot", "dog", ",", "in", "東", "京", "."]
    assert mb.tokenize("ภาษา ไทย") == ["ภ", "า", "ษ", "า", "ไ", "ท", "ย"]
    # kana is not a no-space script in the reference: it stays one token
    assert mb.tokenize("ネコ科の動物") == ["ネコ", "科", "の", "動", "物"]
    # WikiExtractor leftovers are removed as the reference does
    assert mb.tokenize("a <br/>b &lt;ref&gt;c") == ["a", "b", "c"]


def test_token_pattern_agrees_with_is_nospace_char_everywhere():
    single = re.compile(f"[{mb._NOSPACE_CLASS}]")
    bad = [cp for cp in range(0x110000)
           if not 0xD800 <= cp <= 0xDFFF
           and bool(single.fullmatch(chr(cp))) != is_nospace_char(chr(cp))]
    assert bad == []


def test_count_ngrams_skips_punctuation_and_breaks_bigrams_there():
    c = mb.count_ngrams(mb.tokenize("the dog's toy. The dog"))
    assert c.unigrams == Counter({"dog": 2, "the": 1, "s": 1, "toy": 1, "The": 1})
    assert c.bigrams == Counter({"the dog": 1, "s toy": 1, "The dog": 1})  # no "dog s"


def test_pmi_computed_by_hand():
    c = mb.count_ngrams("a b a b c".split())
    # N = 5; c(a)=2 c(b)=2 c(c)=1; c(a b)=2 c(b a)=1 c(b c)=1
    pmi = mb.bigram_pmi(c.unigrams, c.bigrams)
    assert pmi.keys() == {"a b", "b a", "b c"}
    assert pmi["a b"] == pytest.approx(math.log2(2 * 5 / (2 * 2)))
    assert pmi["b a"] == pytest.approx(math.log2(1 * 5 / (2 * 2)))
    assert pmi["b c"] == pytest.approx(math.log2(1 * 5 / (2 * 1)))


def test_bigram_pmi_threshold_is_strict_at_default_30():
    assert mb.Caps().bigram_min_pmi == 30.0
    src = mb.LanguageSources(bigrams={"x y": 1, "p q": 1, "r s": 1},
                             bigram_pmi={"x y": 30.0, "p q": 30.5, "r s": 31.0})
    md = mb.build_language("en", src)
    assert md.entries == NUMS + ["r s", "p q"]  # 30.0 is not > 30; by descending PMI


def test_bigram_cap_is_min_of_cap_and_distinct_bigrams():
    pmi = {f"w{i} v{i}": 40.0 + i for i in range(5)}
    md = mb.build_language("en", mb.LanguageSources(bigrams=dict.fromkeys(pmi, 1),
                                                    bigram_pmi=pmi),
                           mb.Caps(bigram_cap=2))
    assert md.entries[100:] == ["w4 v4", "w3 v3"]
    assert md.stats["caps"]["bigram"] == 2


def test_bigram_surface_drops_inner_space_for_nospace_scripts():
    assert mb.bigram_surface("東 京", "zh") == "東京"
    assert mb.bigram_surface("東 京", "en") == "東京"  # CJK on both sides of the join
    assert mb.bigram_surface("ネコ 科", "ja") == "ネコ科"  # a no-space language
    assert mb.bigram_surface("hot dog", "zh_yue") == "hotdog"
    assert mb.bigram_surface("New York", "en") == "New York"
    assert mb.bigram_surface("Tokyo 東", "en") == "Tokyo 東"
    assert mb.bigram_surface("강아지 사료", "ko") == "강아지 사료"  # Hangul keeps its spaces


def test_cjk_bigram_entry_has_no_inner_space_and_matches():
    c = mb.count_ngrams(mb.tokenize("东京的猫。东京很大。"))
    md = mb.build_language("zh", mb.LanguageSources(unigrams=c.unigrams, bigrams=c.bigrams),
                           mb.Caps(bigram_min_pmi=0.0, unigram_fraction=0.0))
    bigrams = [e for e, t in zip(md.entries, md.tags, strict=True) if t == "bigram"]
    # N = 8: PMI(很 大) = PMI(的 猫) = log2(8) = 3 > PMI(东 京) = log2(2 * 8 / (2 * 2)) = 2
    assert bigrams == ["很大", "的猫", "东京", "京很", "京的"]  # ties by string
    assert Matcher(md.entries).match("我爱东京") >= {md.entries.index("东京")}


# ---------------------------------------------------------------- order, caps, dedup, skips

def test_order_caps_and_dedup_across_sources():
    unigrams = {f"u{i:02d}": 100 - i for i in range(30)}  # 30 distinct -> cap int(3.0) = 3
    unigrams["dog"] = 1000  # duplicate of a WordNet lemma: skipped, not counted to the cap
    unigrams["7"] = 999  # duplicate of a number
    titles = {"Dog": 50, "u00": 40, "Paris": 30, "Rome": 20, "Oslo": 10}  # 5 -> int(3.8) = 3
    src = mb.LanguageSources(
        wordnet=["dog", "hot dog", "5"], unigrams=unigrams, unigram_source="wiki",
        bigrams={"hot dog": 3, "New York": 2}, bigram_pmi={"hot dog": 35.0, "New York": 33.0},
        titles=titles)
    md = mb.build_language("en", src)
    assert md.entries == NUMS + ["dog", "hot dog", "u00", "u01", "u02", "New York",
                                 "Dog", "Paris", "Rome"]
    assert md.tags == (["numbers"] * 100 + ["wordnet"] * 2 + ["unigram"] * 3 + ["bigram"]
                       + ["title"] * 3)
    assert md.by_source() == {"numbers": 100, "wordnet": 2, "unigram": 3, "bigram": 1,
                              "title": 3}
    assert md.stats["caps"] == {"unigram": 3, "bigram": 2, "title": 3}


def test_unigram_cap_is_ten_percent_of_distinct_unigrams_and_absolute_cap():
    unigrams = {f"w{i:03d}": 1000 - i for i in range(250)}
    md = mb.build_language("en", mb.LanguageSources(unigrams=unigrams))
    assert md.entries[100:] == [f"w{i:03d}" for i in range(25)]  # 10% of 250
    md = mb.build_language("en", mb.LanguageSources(unigrams=unigrams), mb.Caps(unigram_cap=4))
    assert md.entries[100:] == [f"w{i:03d}" for i in range(4)]  # min(4, 25)
    # the fraction applies to the distinct words a list has, when the caller says so
    md = mb.build_language("en", mb.LanguageSources(unigrams=unigrams, unigram_distinct=50))
    assert len(md.entries) == 105


def test_punctuation_only_and_overlong_entries_are_skipped_without_using_the_cap():
    long = "x" * 257
    unigrams = {"...": 9, "«»": 8, long: 7, "x" * 256: 6, "ok": 5, "¿": 4}
    unigrams.update({f"z{i}": 1 for i in range(14)})  # 20 distinct -> cap 2
    md = mb.build_language("en", mb.LanguageSources(unigrams=unigrams))
    assert md.entries[100:] == ["x" * 256, "ok"]
    assert mb.is_punctuation_only("，。") and mb.is_punctuation_only("--")
    assert not mb.is_punctuation_only("a.") and not mb.is_punctuation_only("")


@settings(max_examples=60, deadline=None)
@given(wordnet=st.lists(st.text(max_size=6), max_size=8),
       unigrams=st.dictionaries(st.text(min_size=1, max_size=5), st.integers(1, 50),
                                max_size=60),
       titles=st.dictionaries(st.text(min_size=1, max_size=5), st.integers(1, 50),
                              max_size=20),
       fraction=st.floats(0.0, 1.0))
def test_build_invariants(wordnet, unigrams, titles, fraction):
    md = mb.build_language("en", mb.LanguageSources(wordnet=wordnet, unigrams=unigrams,
                                                    titles=titles),
                           mb.Caps(unigram_fraction=fraction))
    assert md.entries[:100] == NUMS and len(md.entries) == len(set(md.entries))
    assert all(mb._clean(e) == e for e in md.entries[100:])
    order = [mb.SOURCE_TAGS.index(t) for t in md.tags]
    assert order == sorted(order)  # numbers, wordnet, unigrams, bigrams, titles
    usable = {mb._clean(w) for w in unigrams} - {None} - set(NUMS) - {
        mb._clean(w) for w in wordnet}
    cap = int(len(unigrams) * fraction)
    assert md.by_source()["unigram"] == min(cap, len(usable))
    assert md.by_source()["title"] <= int(len(titles) * 0.76)


def test_unigram_ties_break_by_string_for_determinism():
    unigrams = {"b": 5, "a": 5, "c": 5, **{f"q{i}": 1 for i in range(17)}}
    assert mb.build_language("en", mb.LanguageSources(unigrams=unigrams)).entries[100:] == [
        "a", "b"]


def test_merge_lists_folds_in_order_with_dedup():
    zh = mb.build_language("zh", mb.LanguageSources(wordnet=["猫", "狗"]))
    yue = mb.build_language("zh_yue", mb.LanguageSources(wordnet=["狗", "貓"]))
    merged = mb.merge_lists([zh, yue], "zh")
    assert merged.entries == NUMS + ["猫", "狗", "貓"]
    assert merged.stats["codes"] == ["zh", "zh_yue"]


def test_fold_code_and_group_map():
    assert mb.fold_code("zh_yue") == "zh" and mb.fold_code("zh-min-nan") == "zh"
    assert mb.fold_code("be_tarask") == "be" and mb.fold_code("en") == "en"
    g = mb.group_map(["en", "zh", "de", "other"])
    assert g["en"] == "en" and g["de"] == "de"
    assert g["yue"] == "zh" and g["zh-cn"] == "zh" and g["zh-tw"] == "zh"
    assert g["fr"] == "other" and g["sw"] == "other"
    assert len(mb.FASTTEXT_LID176_LABELS) == 176
    assert set(mb.FASTTEXT_LID176_LABELS) <= set(g)


def test_lid176_labels_are_the_shipped_models():
    from worldclip.pipelines.lid import fasttext_model_path

    shipped = set(re.findall(rb"__label__([a-z_]+)", fasttext_model_path().read_bytes()))
    assert {s.decode() for s in shipped} == set(mb.FASTTEXT_LID176_LABELS)


# ---------------------------------------------------------------- dumps and pageviews

def test_wiki_code_from_url_and_path():
    assert mb.wiki_code_from_url("https://zh-yue.wikipedia.org/wiki?curid=3") == "zh_yue"
    assert mb.wiki_code_from_url("https://en.m.wikipedia.org/wiki?curid=3") == "en"
    assert mb.wiki_code_from_url("https://example.org/x") is None
    assert mb.wiki_code_from_path("/d/zh_yue_text/AA/wiki_00") == "zh_yue"
    assert mb.wiki_code_from_path("s3://b/dumps/dewiki-20240101/AB/wiki_03.bz2") == "de"
    assert mb.wiki_code_from_path("/d/ja/AA/wiki_00") == "ja"
    assert mb.wiki_code_from_path("/d/AA/wiki_00") is None


def test_count_dump_lines_per_code_with_bad_lines_skipped():
    lines = [
        json.dumps({"id": "1", "url": "https://en.wikipedia.org/wiki?curid=1",
                    "title": "Dog", "text": "Dog dog. Hot dog"}),
        "{not json",
        json.dumps({"id": "2", "url": "", "title": "x", "text": "猫猫"}),  # code from path
        "",
    ]
    per_code, skipped = mb.count_dump_lines(lines, "/dumps/zh/AA/wiki_00")
    assert skipped == 1
    assert per_code["en"].unigrams == Counter({"dog": 2, "Dog": 1, "Hot": 1})
    assert per_code["en"].bigrams == Counter({"Dog dog": 1, "Hot dog": 1})
    assert per_code["zh"].unigrams == Counter({"猫": 2})


def test_pageview_lines():
    lines = ["en Hot_dog 12 0", "en.m Hot_dog 3 0", "en.b Hot_dog 100 0",
             "en Talk:Dog 50 0", "en Dog 0 0", "zh-yue 狗 4 0", "bad line", '"" x 3 0',
             "de.wikipedia Hund 7 desktop 7 A7", "en Paris notanumber 0"]
    assert mb.parse_pageview_line("en Hot_dog 12 0") == ("en", "Hot dog", 12)
    counts = mb.count_pageview_lines(lines)
    assert counts == {"en": Counter({"Hot dog": 15}), "zh_yue": Counter({"狗": 4}),
                      "de": Counter({"Hund": 7})}


# ---------------------------------------------------------------- WordNet

DATA_NOUN = """\
  1 This software and database is being provided to you, the LICENSEE, by
  2 Princeton University under the following license.
00001740 03 n 01 entity 0 003 ~ 00001930 n 0000 | that which is perceived
02084071 05 n 03 dog 0 domestic_dog 0 Canis_familiaris 0 000 | a member of the genus Canis
02085374 05 n 02 Paris 0 City_of_Light 0 000 | the capital of France
02086000 05 n 01 hot_dog 0 000 | a frankfurter
02087000 05 n 01 dog 1 000 | a second sense of dog (same synset name)
"""
DATA_ADJ = """\
  1 license header
00001740 00 a 01 able 0 005 | having the necessary means
00002000 00 s 02 big(a) 0 large 0 000 | above average in size
"""


def _write_wordnet(root: Path) -> None:
    wn = root / "corpora" / "wordnet"
    wn.mkdir(parents=True)
    (wn / "data.noun").write_text(DATA_NOUN)
    (wn / "data.adj").write_text(DATA_ADJ)
    (wn / "index.noun").write_text("dog n 1 ...\n")  # not read
    omw = root / "corpora" / "omw-1.4"
    for proj, lang, rows in [
        ("fin", "fin", [("02084071-n", "lemma", "koira"), ("02084071-n", "def", "eläin"),
                        ("02086000-n", "lemma", "nakki_makkara"), ("00001740-n", "lemma", "olio")]),
        ("cow", "cmn", [("02084071-n", "lemma", "狗"), ("02084071-n", "lemma", "犬+"),
                        ("02084071-n", "lemma", "!!")]),
        ("als", "als", [("02084071-n", "lemma", "qen")]),
        ("eng", "eng", [("02084071-n", "lemma", "domestic_dog")]),
        ("xyz", "xyz", [("02084071-n", "lemma", "zz")]),
    ]:
        (omw / proj).mkdir(parents=True)
        body = f"# {proj}\t{lang}\thttp://example\tlicense\n" + "".join(
            f"{o}\t{lang}:{k}\t{v}\n" for o, k, v in rows)
        (omw / proj / f"wn-data-{lang}.tab").write_text(body, encoding="utf-8")


def test_read_wordnet_synset_names_and_omw_lemmas(tmp_path):
    _write_wordnet(tmp_path)
    out, info = mb.read_wordnet(str(tmp_path))
    # NLTK order (adj, adv, noun, verb), first lemma lower-cased, markers and "_" removed
    assert out["en"] == ["able", "big", "entity", "dog", "paris", "hot dog"]
    assert out["fi"] == ["koira", "nakki makkara", "olio"]  # sorted, definitions skipped
    assert out["zh"] == ["!!", "犬", "狗"]  # "+" removed; punctuation dropped later
    assert out["sq"] == ["qen"]  # OMW "als" is Albanian (wiki sq), not Alemannic
    assert "als" not in out and "xyz" not in out
    assert info["unmapped"] == ["xyz"]


def test_read_wordnet_from_the_downloaders_zips(tmp_path):
    unpacked = tmp_path / "u"
    _write_wordnet(unpacked)
    zipped = tmp_path / "z" / "corpora"
    zipped.mkdir(parents=True)
    for name in ("wordnet", "omw-1.4"):
        with zipfile.ZipFile(zipped / f"{name}.zip", "w") as z:
            for f in sorted((unpacked / "corpora" / name).rglob("*")):
                if f.is_file():
                    z.write(f, str(f.relative_to(unpacked / "corpora")))
    assert mb.read_wordnet(str(tmp_path / "z"))[0] == mb.read_wordnet(str(unpacked))[0]


def test_read_wordnet_missing_names_the_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="metadata.wordnet_dir"):
        mb.read_wordnet(str(tmp_path))


# ---------------------------------------------------------------- wordfreq

def test_wordfreq_unigrams_drop_digit_placeholders():
    en = mb.wordfreq_unigrams("en")
    assert en["the"] > en["dog"] > 0
    assert not any("0" in w for w in en)
    assert mb.wordfreq_languages()["tl"] == "fil" and mb.wordfreq_languages()["no"] == "nb"


def test_wordfreq_only_build_for_three_languages(tmp_path):
    out = tmp_path / "md"
    cfg = load_config([f"metadata.out={out}", "metadata.languages=[en,ja,fil]"])
    summary = mb.run(cfg)
    assert set(summary["entries"]) == {"en", "ja", "tl"}
    manifest = json.loads((out / "manifest.json").read_text())
    for lang in ("en", "ja", "tl"):
        entries = json.loads((out / f"{lang}.json").read_text())
        info = manifest["languages"][lang]
        assert entries[:100] == NUMS
        assert len(entries) == len(set(entries)) == info["entries"]
        per = info["per_code"][lang]
        assert per["unigram_source"] == "wordfreq"
        assert per["caps"]["unigram"] == min(251465, int(per["candidates"]["unigram"] * 0.1))
        assert info["by_source"]["unigram"] == per["caps"]["unigram"]
        assert info["sha256"] == hashlib.sha256((out / f"{lang}.json").read_bytes()).hexdigest()
    en = json.loads((out / "en.json").read_text())
    assert en[100:103] == ["the", "to", "and"]  # descending frequency
    groups = json.loads((out / "groups.json").read_text())
    assert groups["en"] == "en" and groups["tl"] == "tl" and groups["de"] == "other"
    assert manifest["sources"]["wordfreq"]["nominal_tokens"] == mb.WORDFREQ_NOMINAL_TOKENS


def test_unknown_language_without_source_is_a_config_error(tmp_path):
    cfg = load_config([f"metadata.out={tmp_path}", "metadata.languages=[en,xx]"])
    with pytest.raises(ConfigError, match=r"metadata.languages.*\['xx'\]"):
        mb.run(cfg)


# ---------------------------------------------------------------- Ray Data path, end to end

def _article(code: str, i: int, text: str) -> str:
    host = code.replace("_", "-")
    return json.dumps({"id": str(i), "url": f"https://{host}.wikipedia.org/wiki?curid={i}",
                       "title": f"t{i}", "text": text}, ensure_ascii=False)


def _write_world(root: Path) -> dict[str, str]:
    en_text = ["New York is big. I love New York", "the hot dog\u2028and the cat", "a cat"]
    for i, name in enumerate(["wiki_00", "wiki_01"]):
        d = root / "dumps" / "en" / "AA"
        d.mkdir(parents=True, exist_ok=True)
        (d / name).write_text("\n".join(_article("en", 10 * i + j, t)
                                        for j, t in enumerate(en_text[i::2])) + "\n")
    d = root / "dumps" / "zh" / "AA"
    d.mkdir(parents=True)
    (d / "wiki_00").write_text(_article("zh", 1, "东京的猫。东京很大。") + "\n")
    d = root / "dumps" / "zh_yue" / "AA"
    d.mkdir(parents=True)
    (d / "wiki_00").write_text(_article("zh_yue", 2, "香港嘅猫。香港好大。") + "\n")
    pv = root / "pageviews"
    pv.mkdir()
    (pv / "pageviews-20240101-000000.txt").write_text(
        "en New_York 30 0\nen.m Cat 5 0\nen Talk:Cat 99 0\nace Banda_Aceh 3 0\nace Aceh 2 0\n"
        "zh-yue 九龍 2 0\n")
    with gzip.open(pv / "pageviews-20240101-010000.gz", "wt", encoding="utf-8") as f:
        f.write("en Hot_dog 20 0\nen Cat 4 0\nzh-yue 香港 7 0\nen.d dog 100 0\n")
    return {"dumps": str(root / "dumps" / "*" / "AA" / "wiki_*"),
            "pageviews": str(root / "pageviews" / "pageviews-*")}


def test_ray_counts_equal_the_pure_counts(ray_session, tmp_path):
    paths = _write_world(tmp_path)
    counts = mb.count_wiki_dumps_ray(paths["dumps"])
    expected: dict[str, mb.NgramCounts] = {}
    for f in storage.glob(paths["dumps"]):
        per_code, _ = mb.count_dump_lines(Path(f).read_bytes().split(b"\n"), f)
        for code, c in per_code.items():
            expected.setdefault(code, mb.NgramCounts()).update(c)
    assert set(counts) == {"en", "zh", "zh_yue"}
    for code in counts:
        assert counts[code].unigrams == expected[code].unigrams
        assert counts[code].bigrams == expected[code].bigrams
    assert counts["en"].unigrams["York"] == 2 and counts["en"].bigrams["New York"] == 2
    # U+2028 inside a JSON string must not split the line (files are read whole)
    assert counts["en"].unigrams["hot"] == 1
    views = mb.count_pageviews_ray(paths["pageviews"])
    assert views == {"en": Counter({"New York": 30, "Hot dog": 20, "Cat": 9}),
                     "ace": Counter({"Banda Aceh": 3, "Aceh": 2}),
                     "zh_yue": Counter({"香港": 7, "九龍": 2})}


def test_ray_counts_from_s3(ray_session, s3_prefix):
    storage.write_text(f"{s3_prefix}/dumps/de/AA/wiki_00",
                       _article("de", 1, "der Hund und der Hund") + "\n")
    counts = mb.count_wiki_dumps_ray(f"{s3_prefix}/dumps/*/AA/wiki_*")
    assert counts["de"].unigrams == Counter({"der": 2, "Hund": 2, "und": 1})
    assert counts["de"].bigrams["der Hund"] == 2
    # and the metadata itself written to object storage
    cfg = load_config([f"metadata.out={s3_prefix}/md", "metadata.languages=[ko]"])
    mb.run(cfg)
    manifest = storage.read_json(f"{s3_prefix}/md/manifest.json")
    ko = storage.read_bytes(f"{s3_prefix}/md/ko.json")
    assert manifest["languages"]["ko"]["sha256"] == hashlib.sha256(ko).hexdigest()
    assert json.loads(ko)[:100] == NUMS


def test_run_with_every_source(ray_session, tmp_path):
    paths = _write_world(tmp_path)
    _write_wordnet(tmp_path / "nltk")
    out = tmp_path / "md"
    cfg = load_config([f"metadata.out={out}", f"metadata.wiki_dumps={paths['dumps']}",
                       f"metadata.pageviews={paths['pageviews']}",
                       f"metadata.wordnet_dir={tmp_path / 'nltk'}", "metadata.use_wordfreq=false",
                       "metadata.bigram_min_pmi=1.5", "metadata.unigram_fraction=0.5"])
    summary = mb.run(cfg)
    assert set(summary["entries"]) == {"en", "zh", "fi", "sq", "other"}
    en = json.loads((out / "en.json").read_text())
    # en: N = 16 tokens, 12 distinct -> int(12 * 0.5) = 6 unigrams by (-count, string);
    # bigram PMI = log2(c(xy) * 16 / (c(x) c(y))): "I love" 4 ... "the cat" 2, all > 1.5;
    # "hot dog" is already a WordNet entry; titles: 3 -> int(3 * .76) = 2 added after the
    # duplicate "New York" is skipped; "Talk:Cat" (namespace) and en.d (Wiktionary) are not.
    assert en == NUMS + ["able", "big", "entity", "dog", "paris", "hot dog",
                         "New", "York", "cat", "the", "I", "a",
                         "I love", "dog and", "is big", "New York", "York is", "a cat",
                         "and the", "love New", "the hot", "the cat",
                         "Hot dog", "Cat"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["languages"]["en"]["by_source"] == {
        "numbers": 100, "wordnet": 6, "unigram": 6, "bigram": 10, "title": 2}
    assert manifest["languages"]["en"]["per_code"]["en"]["unigram_source"] == "wiki"
    zh = json.loads((out / "zh.json").read_text())
    # zh's own list, then zh_yue's new entries (no-space bigrams, no duplicates); zh_yue's
    # title "香港" repeats its bigram, so the next title "九龍" fills the one title slot
    assert zh == NUMS + ["犬", "狗", "东", "京", "大", "很大", "的猫", "东京", "京很", "京的",
                         "港", "香", "嘅", "嘅猫", "好大", "港嘅", "港好", "香港", "九龍"]
    assert manifest["languages"]["zh"]["codes"] == ["zh", "zh_yue"]
    assert json.loads((out / "fi.json").read_text()) == NUMS + ["koira", "nakki makkara",
                                                                 "olio"]
    assert json.loads((out / "other.json").read_text()) == NUMS + ["Banda Aceh"]
    groups = json.loads((out / "groups.json").read_text())
    assert groups["yue"] == "zh" and groups["sq"] == "sq" and groups["de"] == "other"
    assert manifest["groups"] == groups
    for gi in manifest["languages"].values():
        data = (out / gi["file"]).read_bytes()
        assert gi["sha256"] == hashlib.sha256(data).hexdigest()
        assert gi["entries"] == len(json.loads(data)) == sum(gi["by_source"].values())


def test_cli_metadata_wordfreq_two_languages(tmp_path):
    import subprocess

    out = tmp_path / "md"
    r = subprocess.run([sys.executable, "-m", "worldclip", "metadata", f"metadata.out={out}",
                        "metadata.languages=[de,ko]"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout)["entries"].keys() == {"de", "ko"}
    assert (out / "de.json").exists() and (out / "manifest.json").exists()
