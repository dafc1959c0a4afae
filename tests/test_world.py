"""The embedded world stage: layout, frequencies, captions, eval set, determinism, S3 + Ray.

The pure pieces are tested beside their modules: tests/test_world_concepts.py,
tests/test_world_languages.py, tests/test_world_render.py.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from worldclip.pipelines.matching import Matcher
from worldclip.pipelines.world.stage import generate_world
from worldclip.platform import storage
from worldclip.platform.config import load_config
from worldclip.platform.schema import WorldConfig

LANGS = ["en", "ar", "de", "es", "fa", "fr", "id", "it", "ja", "ko", "pt", "ru", "tr", "zh"]
KEY_RE = re.compile(r"^\d{5}_\d{6}$")


def wcfg(**over):
    """A WorldConfig (as the CLI builds it) with overrides."""
    return load_config([f"world.{k}={json.dumps(v)}" for k, v in over.items()]).world


def read_tar(path: str | Path) -> list[tuple[str, bytes]]:
    with tarfile.open(path) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar]


def tar_records(path: str | Path) -> list[dict]:
    members = read_tar(path)
    images = {n[: -len(".jpg")]: b for n, b in members if n.endswith(".jpg")}
    recs = [json.loads(b) for n, b in members if n.endswith(".json")]
    for r in recs:
        r["image"] = images[r["key"]]
    return recs


def decodes(data: bytes) -> bool:
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
        return True
    except Exception:
        return False


# ------------------------------------------------------------------------ a small world

@pytest.fixture(scope="module")
def small_world(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("world")
    cfg = wcfg(pairs=2000, pairs_per_shard=500, corrupt_share=0.03, distractors=80,
               eval_per_concept=3)
    return out, generate_world(cfg, str(out))


@pytest.fixture(scope="module")
def records(small_world) -> list[dict]:
    out, _ = small_world
    return [r for p in sorted((out / "raw" / "wds").glob("*.tar")) for r in tar_records(p)]


@pytest.fixture(scope="module")
def metadata(small_world) -> dict[str, list[str]]:
    out, _ = small_world
    return {lang: json.loads((out / "metadata" / f"{lang}.json").read_text()) for lang in LANGS}


def test_layout_and_summary(small_world):
    out, summary = small_world
    assert sorted(p.name for p in (out / "raw" / "wds").iterdir()) == [
        f"shard-0000{i}.tar" for i in range(4)]
    assert len(list((out / "raw" / "parquet").glob("*.parquet"))) == 4
    on_disk = json.loads((out / "world.json").read_text())
    assert on_disk["pairs"] == summary["pairs"] == 2000
    assert sum(on_disk["by_language"].values()) == 2000
    assert on_disk["junk"] + sum(c["pairs"] for c in on_disk["concepts"]) == 2000
    assert on_disk["shards"]["wds"][0] == "raw/wds/shard-00000.tar"
    assert set(on_disk["concepts"][0]["names"]) == set(LANGS)


def test_keys_unique_and_tar_equals_parquet(small_world, records):
    out, _ = small_world
    keys = [r["key"] for r in records]
    assert len(keys) == len(set(keys)) == 2000 and all(KEY_RE.match(k) for k in keys)
    table = pq.read_table(out / "raw" / "parquet").to_pylist()
    assert [f.name for f in pq.read_schema(next((out / "raw" / "parquet").glob("*")))] == [
        "key", "image", "texts", "lang", "concept", "corrupt"]
    by_key = {r["key"]: r for r in table}
    assert set(by_key) == set(keys)
    for r in records:
        p = by_key[r["key"]]
        assert (p["image"], p["texts"], p["lang"], p["concept"], p["corrupt"]) == (
            r["image"], r["texts"], r["lang"], r["concept"], r["corrupt"])


def test_english_share_and_junk_share(records):
    n = len(records)
    langs = Counter(r["lang"] for r in records)
    assert abs(langs["en"] / n - 0.44) < 0.04  # binomial sd ~0.011 at n=2000
    assert set(langs) == set(LANGS)
    junk = sum(r["concept"] < 0 for r in records)
    assert abs(junk / n - 0.08) < 0.025


def test_pairs_follow_zipf_head_and_tail(small_world):
    _, summary = small_world
    counts = np.array([c["pairs"] for c in summary["concepts"]])
    probs = np.array([c["probability"] for c in summary["concepts"]])
    head = int(np.argmax(probs))
    expected = counts.sum() * probs[head]
    assert abs(counts[head] - expected) < 4 * np.sqrt(expected)
    order = np.argsort(-probs)
    assert counts[order[:12]].sum() > 0.45 * counts.sum()  # a few head concepts dominate
    assert (counts[order[60:]] < 15).mean() > 0.8  # many tail concepts are rare


def test_captions_match_their_concept_and_junk_matches_nothing(records, metadata):
    matchers = {lang: Matcher(metadata[lang]) for lang in LANGS}
    kana = {lang: Matcher(metadata[lang], kana_hangul_nospace=True) for lang in LANGS}
    hits: Counter = Counter()
    total: Counter = Counter()
    for r in records:
        texts = [t for t in r["texts"] if t.strip()]
        if r["concept"] < 0:  # junk: no entry of any language matches any of its texts
            assert all(not matchers[lang].match(t) for lang in LANGS for t in texts), r
            continue
        if not texts:
            assert r["corrupt"]
            continue
        lang = r["lang"]
        total[lang] += 1
        hits[lang] += r["concept"] in matchers[lang].match(texts[0])
        # with kana/hangul as no-space characters every main caption matches its concept
        assert r["concept"] in kana[lang].match(texts[0]), r
        # ... and no OTHER concept's name (ids < 120 are the concepts)
        assert {c for c in kana[lang].match(texts[0]) if c < 120} == {r["concept"]}, r
    for lang in LANGS:
        if lang != "ja":
            assert hits[lang] == total[lang], lang
    # reference semantics: kana-edged names in unspaced Japanese captions do not match
    assert 0.3 < hits["ja"] / total["ja"] < 1.0


def test_captions_are_identified_as_their_language(records):
    from worldclip.pipelines.lid import identify

    main = [(r["texts"][0], r["lang"]) for r in records if r["concept"] >= 0 and r["texts"]
            and r["texts"][0].strip()]
    labels = identify([t for t, _ in main])
    agree = sum(label == lang for label, (_, lang) in zip(labels, main)) / len(main)
    assert agree > 0.9


def test_corrupt_records_are_flagged_and_the_rest_decode(records):
    corrupt = [r for r in records if r["corrupt"]]
    assert 20 < len(corrupt) < 110  # corrupt_share 0.03 of 2000
    for r in corrupt:
        assert not decodes(r["image"]) or not any(t.strip() for t in r["texts"])
    for r in records[:300]:
        if not r["corrupt"]:
            with Image.open(io.BytesIO(r["image"])) as im:
                assert im.size == (64, 64) and im.mode == "RGB"
            assert r["texts"] and all(t.strip() for t in r["texts"])


def test_eval_set_is_balanced_with_names_in_every_language(small_world):
    out, _ = small_world
    rows = pq.read_table(out / "eval" / "eval.parquet").to_pylist()
    assert Counter(r["label"] for r in rows) == Counter({c: 3 for c in range(120)})
    classnames = json.loads((out / "eval" / "classnames.json").read_text())
    templates = json.loads((out / "eval" / "templates.json").read_text())
    assert set(classnames) == set(templates) == set(LANGS)
    for lang in LANGS:
        assert len(classnames[lang]) == 120 and all(t.count("{}") == 1 for t in templates[lang])
    train_images = {r["image"] for r in pq.read_table(out / "raw" / "parquet").to_pylist()}
    for r in rows[:30]:
        captions = json.loads(r["captions"])
        assert set(captions) == set(LANGS)
        for lang, caption in captions.items():
            assert classnames[lang][r["label"]] in caption
        assert decodes(r["image"]) and r["image"] not in train_images
    assert len({r["key"] for r in rows}) == len(rows)


def test_metadata_files_and_manifest(small_world, metadata):
    out, _ = small_world
    manifest = json.loads((out / "metadata" / "manifest.json").read_text())
    assert manifest["languages"] == LANGS
    for lang in LANGS:
        data = (out / "metadata" / f"{lang}.json").read_bytes()
        assert manifest["sha256"][f"{lang}.json"] == hashlib.sha256(data).hexdigest()
        assert manifest["entries"][lang] == len(metadata[lang]) == 200
        assert len(set(metadata[lang])) == len(metadata[lang])


# ------------------------------------------------------------------------ determinism

def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != "world.json"}


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    cfg = dict(pairs=300, pairs_per_shard=120, concepts=30, distractors=20,
               eval_per_concept=1, corrupt_share=0.05)
    generate_world(wcfg(**cfg), str(tmp_path / "a"))
    generate_world(wcfg(**cfg), str(tmp_path / "b"))
    generate_world(wcfg(**cfg, seed=1), str(tmp_path / "c"))
    a, b, c = (_files(tmp_path / x) for x in "abc")
    assert len([k for k in a if k.startswith("raw/")]) == 6
    assert a == b
    for name in a:
        if name.startswith("raw/") or name.startswith("eval/eval"):
            assert a[name] != c[name], name
    # a rerun with fewer pairs leaves no stale shards behind
    generate_world(wcfg(**{**cfg, "pairs": 100}), str(tmp_path / "a"))
    assert sorted(os.listdir(tmp_path / "a" / "raw" / "wds")) == ["shard-00000.tar"]


def test_bad_config_values_are_named(tmp_path):
    with pytest.raises(ValueError, match="world.formats"):
        generate_world(wcfg(formats=["csv"]), str(tmp_path))
    with pytest.raises(ValueError, match="world.image_size=8"):
        generate_world(wcfg(image_size=8), str(tmp_path))
    with pytest.raises(ValueError, match="world.workers=0"):
        generate_world(wcfg(workers=0), str(tmp_path))
    assert not (tmp_path / "raw").exists()  # validation happens before anything is written


def test_a_section_built_in_code_is_checked_by_the_same_rules(tmp_path):
    # generate_world called without load_config: the RULES table still applies, once.
    with pytest.raises(ValueError, match=r"config world.formats=\['csv'\]"):
        generate_world(WorldConfig(formats=["csv"]), str(tmp_path))
    with pytest.raises(ValueError, match="config world.image_size=8"):
        generate_world(WorldConfig(image_size=8), str(tmp_path))
    with pytest.raises(ValueError, match="config world.workers=0"):
        generate_world(WorldConfig(), str(tmp_path), workers=0)
    with pytest.raises(ValueError, match=r"world.languages contains \['xx'\]"):
        generate_world(WorldConfig(languages=["en", "xx"]), str(tmp_path))
    assert not (tmp_path / "raw").exists()


# ------------------------------------------------------------------------ S3 + Ray

@pytest.mark.slow
def test_cli_world_on_s3_reads_back_with_ray(s3_prefix, ray_session, capsys):
    from worldclip.cli import main

    # workers=2: shards written by Ray tasks, which must reach the S3 server too
    rc = main(["world", "world.pairs_per_shard=100", "world.eval_per_concept=1",
               "world.distractors=30", "world.concepts=40", "world.workers=2",
               "--out", s3_prefix, "--pairs", "300"])
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    assert result["pairs"] == 300 and result["shards"] == {"wds": 3, "parquet": 3}
    assert storage.exists(storage.join(s3_prefix, "world.json"))
    assert storage.exists(storage.join(s3_prefix, "config.yaml"))
    assert storage.read_json(storage.join(s3_prefix, "metadata", "en.json"))[0] == "watch"

    ray = ray_session
    path, fs = storage.ray_path(storage.join(s3_prefix, "raw", "wds"))
    wds = ray.data.read_webdataset(path, filesystem=fs).take_all()
    from_tar = {(r["__key__"], tuple(r["json"]["texts"])) for r in wds}
    assert all(r["jpg"].shape == (64, 64, 3) for r in wds)
    path, fs = storage.ray_path(storage.join(s3_prefix, "raw", "parquet"))
    rows = ray.data.read_parquet(path, filesystem=fs).take_all()
    from_parquet = {(r["key"], tuple(r["texts"])) for r in rows}
    assert len(from_tar) == 300 and from_tar == from_parquet


def test_ray_workers_write_the_same_bytes(tmp_path, ray_session):
    cfg = dict(pairs=240, pairs_per_shard=60, concepts=20, distractors=10, eval_per_concept=1)
    generate_world(wcfg(**cfg), str(tmp_path / "one"), workers=1)
    generate_world(wcfg(**cfg), str(tmp_path / "two"), workers=2)
    one, two = _files(tmp_path / "one"), _files(tmp_path / "two")
    assert len([k for k in one if k.endswith(".tar")]) == 4 and one == two
