"""metadata_build/stage.py: Ray Data counting equals the pure counts, the stage with every
source, wordfreq-only builds, object storage and the CLI."""

from __future__ import annotations

import gzip
import hashlib
import json
import sys
from collections import Counter
from pathlib import Path

import pytest
from test_metadata_build_wordnet import _write_wordnet

from worldclip.pipelines.metadata_build import stage, wiki, wordfreq_source
from worldclip.platform import storage
from worldclip.platform.config import ConfigError, load_config

NUMS = [str(i) for i in range(100)]


def test_wordfreq_only_build_for_three_languages(tmp_path):
    out = tmp_path / "md"
    cfg = load_config([f"metadata.out={out}", "metadata.languages=[en,ja,fil]"])
    summary = stage.run(cfg)
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
    assert manifest["sources"]["wordfreq"]["nominal_tokens"] == \
        wordfreq_source.WORDFREQ_NOMINAL_TOKENS


def test_unknown_language_without_source_is_a_config_error(tmp_path):
    cfg = load_config([f"metadata.out={tmp_path}", "metadata.languages=[en,xx]"])
    with pytest.raises(ConfigError, match=r"metadata.languages.*\['xx'\]"):
        stage.run(cfg)


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
    counts = stage.count_wiki_dumps_ray(paths["dumps"])
    expected: dict[str, wiki.NgramCounts] = {}
    for f in storage.glob(paths["dumps"]):
        per_code, _ = wiki.count_dump_lines(Path(f).read_bytes().split(b"\n"), f)
        for code, c in per_code.items():
            expected.setdefault(code, wiki.NgramCounts()).update(c)
    assert set(counts) == {"en", "zh", "zh_yue"}
    for code in counts:
        assert counts[code].unigrams == expected[code].unigrams
        assert counts[code].bigrams == expected[code].bigrams
    assert counts["en"].unigrams["York"] == 2 and counts["en"].bigrams["New York"] == 2
    # U+2028 inside a JSON string must not split the line (files are read whole)
    assert counts["en"].unigrams["hot"] == 1
    views = stage.count_pageviews_ray(paths["pageviews"])
    assert views == {"en": Counter({"New York": 30, "Hot dog": 20, "Cat": 9}),
                     "ace": Counter({"Banda Aceh": 3, "Aceh": 2}),
                     "zh_yue": Counter({"香港": 7, "九龍": 2})}


def test_ray_counts_from_s3(ray_session, s3_prefix):
    storage.write_text(f"{s3_prefix}/dumps/de/AA/wiki_00",
                       _article("de", 1, "der Hund und der Hund") + "\n")
    counts = stage.count_wiki_dumps_ray(f"{s3_prefix}/dumps/*/AA/wiki_*")
    assert counts["de"].unigrams == Counter({"der": 2, "Hund": 2, "und": 1})
    assert counts["de"].bigrams["der Hund"] == 2
    # and the metadata itself written to object storage
    cfg = load_config([f"metadata.out={s3_prefix}/md", "metadata.languages=[ko]"])
    stage.run(cfg)
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
    summary = stage.run(cfg)
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
