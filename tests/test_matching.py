"""Pins the substring-matching semantics of docs/curation.md §2."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worldclip.pipelines.matching import (
    Matcher,
    brute_force_match,
    is_nospace_char,
    pad_entry,
    pad_text,
)


def _match(entries: list[str], text: str, **kwargs: bool) -> set[str]:
    """Matched entry strings, checked against the brute-force definition on the way."""
    ids = Matcher(entries, **kwargs).match(text)
    assert ids == brute_force_match(text, entries, **kwargs)
    return {entries[i] for i in ids}


# --- padding -------------------------------------------------------------------------------


def test_pad_text_spaces_punctuation_and_whitespace() -> None:
    assert pad_text("A dog.") == " A dog .  "
    assert pad_text("a,b;c:d?e!f`g") == " a , b ; c : d ? e ! f ` g "
    assert pad_text("x\ty\nz\rw") == " x y z w "
    # Only the listed punctuation is spaced; no lower-casing, no normalisation.
    assert pad_text("Dog's (big)-Ｃat") == " Dog's (big)-Ｃat "
    assert pad_text("") == "  "


def test_pad_entry_sides() -> None:
    assert pad_entry("dog") == " dog "
    assert pad_entry("hot dog") == " hot dog "
    assert pad_entry("东京") == "东京"
    assert pad_entry("U.S.") == " U.S."  # '.' is no-space: no space after
    assert pad_entry("(dog") == "(dog "
    assert pad_entry("猫cat") == "猫cat "
    assert pad_entry("catแมว") == " catแมว"
    assert pad_entry("カメラ") == " カメラ "  # reference: kana keeps its spaces
    assert pad_entry("カメラ", kana_hangul_nospace=True) == "カメラ"
    assert pad_entry("") == ""


@pytest.mark.parametrize(
    "ch",
    ["一", "龥", "㐀", "\U00020000", "\U0002ebef", "豈", "⺀", "⿿", "ก", "ລ", "ཀ", "က", "ក",
     ",", ".", "'", "-", "~", "，", "。", "、", "“", "”", "（", "】", "《", "〉", "「", "』",
     "～", "—"],
)
def test_nospace_chars(ch: str) -> None:
    assert is_nospace_char(ch)
    assert is_nospace_char(ch, kana_hangul_nospace=True)


@pytest.mark.parametrize(
    "ch", ["a", "Z", "0", "é", "я", "ا", " ", "\u0dff", "\u10a0", "\U0002ebf0"]
)
def test_space_chars(ch: str) -> None:
    assert not is_nospace_char(ch)
    assert not is_nospace_char(ch, kana_hangul_nospace=True)


@pytest.mark.parametrize("ch", ["あ", "ゟ", "ア", "ヿ", "ㇰ", "ᄀ", "ㄱ", "가", "힣"])
def test_kana_hangul_only_with_option(ch: str) -> None:
    assert not is_nospace_char(ch)
    assert is_nospace_char(ch, kana_hangul_nospace=True)


# --- consequences of §2 ---------------------------------------------------------------------


def test_case_sensitive() -> None:
    assert _match(["dog", "a"], "A dog.") == {"dog"}
    assert _match(["Dog", "A"], "A dog.") == {"A"}


def test_possessive_does_not_match() -> None:
    assert _match(["dog"], "dog's bowl") == set()
    assert _match(["dog"], "the dog, the bowl") == {"dog"}


def test_entry_ending_in_spaced_punctuation_never_matches() -> None:
    entries = ["U.S.", "U", "S"]
    for text in ["U.S.", "the U.S. army", "U.S.A.", " U.S. ", "U.S.\n"]:
        assert "U.S." not in _match(entries, text)
    assert _match(entries, "the U.S. army") == {"U", "S"}


def test_neighbours_share_spaces() -> None:
    entries = ["a", "dog", "hot dog", "New York", "in", "York", "new"]
    assert _match(entries, "a hot dog,in New York") == {
        "a", "dog", "hot dog", "New York", "in", "York",
    }


def test_cjk_without_spaces() -> None:
    entries = ["东京", "猫", "可爱的", "狗", "京都"]
    assert _match(entries, "东京的猫很可爱") == {"东京", "猫"}


def test_thai_without_spaces() -> None:
    assert _match(["แมว", "หมา"], "แมวน่ารัก") == {"แมว"}


def test_kana_reference_quirk_and_option() -> None:
    entries = ["カメラ", "猫"]
    sentence = "私はカメラが好きです"
    assert _match(entries, sentence) == set()
    assert _match(entries, sentence, kana_hangul_nospace=True) == {"カメラ"}
    # Surrounded by spaces or punctuation it matches either way.
    assert _match(entries, "新しい カメラ 。") == {"カメラ"}
    assert _match(entries, "猫のカメラ") == {"猫"}


def test_hangul_reference_quirk_and_option() -> None:
    entries = ["고양이"]
    assert _match(entries, "고양이가 귀엽다") == set()
    assert _match(entries, "고양이가 귀엽다", kana_hangul_nospace=True) == {"고양이"}
    assert _match(entries, "귀여운 고양이") == {"고양이"}


def test_tab_newline_are_spaces() -> None:
    assert _match(["dog", "cat"], "dog\tcat\n") == {"dog", "cat"}


# --- Matcher API ---------------------------------------------------------------------------


def test_duplicates_keep_all_ids_and_match_many_sorted() -> None:
    entries = ["cat", "dog", "cat", "", "big dog"]
    matcher = Matcher(entries)
    assert len(matcher) == 5
    assert matcher.match("a big dog and a cat") == {0, 1, 2, 4}
    assert matcher.match_many(["a big dog and a cat", "", None, "nothing"]) == [
        [0, 1, 2, 4], [], [], [],
    ]


def test_empty_inputs() -> None:
    assert Matcher([]).match("anything") == set()
    assert Matcher([""]).match("anything") == set()
    assert Matcher(["x"]).match(None) == set()
    assert brute_force_match(None, ["x"]) == set()


# --- property: Aho-Corasick == brute force -------------------------------------------------

_ALPHABET = (
    "abcAB"  # ascii letters
    + "    "  # spaces (weighted)
    + ",.;:?!`'-()\t\n"  # punctuation and whitespace
    + "东京猫"  # CJK
    + "แมว"  # Thai
    + "カメあ"  # kana
    + "고양"  # Hangul
    + "，。「」"  # CJK punctuation
)


@st.composite
def _texts_and_entries(draw: st.DrawFn) -> tuple[list[str], list[str]]:
    texts = draw(st.lists(st.text(alphabet=_ALPHABET, max_size=30), min_size=1, max_size=5))
    entries: list[str] = []
    for _ in range(draw(st.integers(0, 12))):
        source = draw(st.sampled_from(texts))
        if draw(st.booleans()) and source:
            start = draw(st.integers(0, len(source) - 1))
            stop = draw(st.integers(start + 1, min(len(source), start + 8)))
            entries.append(source[start:stop])
        else:
            entries.append(draw(st.text(alphabet=_ALPHABET, max_size=4)))
    return texts, entries


@settings(max_examples=300, deadline=None)
@given(_texts_and_entries(), st.booleans())
def test_matcher_equals_brute_force(
    data: tuple[list[str], list[str]], kana_hangul_nospace: bool
) -> None:
    texts, entries = data
    matcher = Matcher(entries, kana_hangul_nospace=kana_hangul_nospace)
    rows = matcher.match_many(texts)
    for text, row in zip(texts, rows, strict=True):
        expected = brute_force_match(text, entries, kana_hangul_nospace=kana_hangul_nospace)
        assert matcher.match(text) == expected
        assert row == sorted(expected)
