"""Language id backends and the label -> metadata group map (docs/curation.md §3)."""

from __future__ import annotations

import pytest

from worldclip.pipelines import lid
from worldclip.pipelines.lid import (
    OTHER,
    LanguageMap,
    fasttext_model_path,
    identify,
    normalize_label,
)

SENTENCES = {
    "en": "A brown dog running on the beach at sunset",
    "ja": "東京の夜景とスカイツリーの写真です",
    "zh": "一只可爱的小猫在沙发上睡觉",
    "ru": "Красивый вид на горы зимой",
    "ar": "قطة جميلة تجلس على الأريكة",
}


@pytest.mark.parametrize("backend", lid.BACKENDS)
def test_identify_languages(backend: str) -> None:
    labels = identify(list(SENTENCES.values()), backend=backend)
    assert [normalize_label(label) for label in labels] == list(SENTENCES)


@pytest.mark.parametrize("backend", lid.BACKENDS)
def test_identify_empty_and_whitespace(backend: str) -> None:
    assert identify(["", "   ", "\n\t", None], backend=backend) == ["", "", "", ""]
    assert identify([], backend=backend) == []


@pytest.mark.parametrize("backend", lid.BACKENDS)
def test_identify_handles_newlines_and_bad_unicode(backend: str) -> None:
    labels = identify(["A dog\non the beach\r\nat sunset", "a cat \ud800 on a sofa"], backend)
    assert labels[0] == "en"
    assert isinstance(labels[1], str)


def test_langdetect_raw_chinese_label_and_no_features() -> None:
    assert identify([SENTENCES["zh"]], backend="langdetect") == ["zh-cn"]
    assert identify(["12345 !!!"], backend="langdetect") == [""]


@pytest.mark.parametrize("backend", lid.BACKENDS)
def test_min_confidence(backend: str) -> None:
    assert identify([SENTENCES["en"]], backend=backend, min_confidence=1.01) == [""]
    assert identify([SENTENCES["en"]], backend=backend, min_confidence=0.5) == ["en"]


def test_langdetect_deterministic() -> None:
    texts = ["ok", "la la la", "Guten Tag", "bonjour mon ami", "hola"] * 3
    assert identify(texts, backend="langdetect") == identify(texts, backend="langdetect")


def test_models_cached_per_process() -> None:
    identify(["warm"], backend="fasttext")
    model = lid._MODELS["fasttext"]
    identify(["again"], backend="fasttext")
    assert lid._MODELS["fasttext"] is model


def test_fasttext_model_is_the_packaged_lite_model() -> None:
    path = fasttext_model_path()
    assert path.name == "lid.176.ftz"
    assert path.stat().st_size < 2_000_000  # the compressed model, not the 126 MB lid.176.bin


def test_unknown_backend() -> None:
    with pytest.raises(ValueError, match="backend='cld3': must be one of fasttext, langdetect"):
        identify(["x"], backend="cld3")


@pytest.mark.parametrize(
    ("label", "expected"),
    [("en", "en"), ("zh-cn", "zh"), ("zh-TW", "zh"), ("zh_yue", "zh"), ("ZH", "zh"),
     ("__label__ja", "ja"), ("", ""), (None, "")],
)
def test_normalize_label(label: str | None, expected: str) -> None:
    assert normalize_label(label) == expected


def test_language_map_known_and_other() -> None:
    lmap = LanguageMap(known={"en", "zh", "ja"})
    assert lmap.groups(["en", "zh-cn", "zh_yue", "ja", "ru", "", None]) == [
        "en", "zh", "zh", "ja", OTHER, OTHER, OTHER,
    ]


def test_language_map_overrides() -> None:
    lmap = LanguageMap(overrides={"yue": "zh", "WUU": "zh", "zh-tw": OTHER}, known={"en", "zh"})
    assert lmap.group("yue") == "zh"
    assert lmap.group("wuu") == "zh"
    assert lmap.group("zh-TW") == OTHER  # raw label override wins over folding
    assert lmap.group("zh-cn") == "zh"


def test_language_map_without_known_is_identity() -> None:
    lmap = LanguageMap()
    assert lmap.groups(["sw", "zh-cn", ""]) == ["sw", "zh", OTHER]


def test_language_map_rejects_override_to_unknown_group() -> None:
    message = "override 'yue' -> 'yue_hant': 'yue_hant' has no metadata"
    with pytest.raises(ValueError, match=message):
        LanguageMap(overrides={"yue": "yue_hant"}, known={"zh"})
