"""metadata_build/pageviews.py: pageview lines -> views per title per wiki code."""

from __future__ import annotations

from collections import Counter

from worldclip.pipelines.metadata_build import pageviews


def test_pageview_lines():
    lines = ["en Hot_dog 12 0", "en.m Hot_dog 3 0", "en.b Hot_dog 100 0",
             "en Talk:Dog 50 0", "en Dog 0 0", "zh-yue 狗 4 0", "bad line", '"" x 3 0',
             "de.wikipedia Hund 7 desktop 7 A7", "en Paris notanumber 0"]
    assert pageviews.parse_pageview_line("en Hot_dog 12 0") == ("en", "Hot dog", 12)
    counts = pageviews.count_pageview_lines(lines)
    assert counts == {"en": Counter({"Hot dog": 15}), "zh_yue": Counter({"狗": 4}),
                      "de": Counter({"Hund": 7})}
