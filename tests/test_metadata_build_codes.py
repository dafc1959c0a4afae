"""metadata_build/codes.py: wiki codes from urls and paths, folding, LID label -> group."""

from __future__ import annotations

import re

from worldclip.pipelines.metadata_build import codes


def test_fold_code_and_group_map():
    assert codes.fold_code("zh_yue") == "zh" and codes.fold_code("zh-min-nan") == "zh"
    assert codes.fold_code("be_tarask") == "be" and codes.fold_code("en") == "en"
    g = codes.group_map(["en", "zh", "de", "other"])
    assert g["en"] == "en" and g["de"] == "de"
    assert g["yue"] == "zh" and g["zh-cn"] == "zh" and g["zh-tw"] == "zh"
    assert g["fr"] == "other" and g["sw"] == "other"
    assert len(codes.FASTTEXT_LID176_LABELS) == 176
    assert set(codes.FASTTEXT_LID176_LABELS) <= set(g)


def test_lid176_labels_are_the_shipped_models():
    from worldclip.pipelines.lid import fasttext_model_path

    shipped = set(re.findall(rb"__label__([a-z_]+)", fasttext_model_path().read_bytes()))
    assert {s.decode() for s in shipped} == set(codes.FASTTEXT_LID176_LABELS)


def test_wiki_code_from_url_and_path():
    assert codes.wiki_code_from_url("https://zh-yue.wikipedia.org/wiki?curid=3") == "zh_yue"
    assert codes.wiki_code_from_url("https://en.m.wikipedia.org/wiki?curid=3") == "en"
    assert codes.wiki_code_from_url("https://example.org/x") is None
    assert codes.wiki_code_from_path("/d/zh_yue_text/AA/wiki_00") == "zh_yue"
    assert codes.wiki_code_from_path("s3://b/dumps/dewiki-20240101/AB/wiki_03.bz2") == "de"
    assert codes.wiki_code_from_path("/d/ja/AA/wiki_00") == "ja"
    assert codes.wiki_code_from_path("/d/AA/wiki_00") is None
