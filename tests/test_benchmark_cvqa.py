"""CVQA on a fixture in the Hub's afaji/cvqa Parquet layout (tests/cvqa_fixtures.py): loading,
drops by reason, and accuracy per language scored with a real tiny MetaCLIP 2 model."""

from __future__ import annotations

import dataclasses
import io
import os

import numpy as np
import pytest
import torch
from cvqa_fixtures import cvqa_row, write_cvqa
from eval_fixtures import photo_jpeg
from PIL import Image
from transformers import MetaClip2Model

from worldclip.models.presets import build_config
from worldclip.models.tokenizer import train_tokenizer
from worldclip.pipelines import benchmarks
from worldclip.pipelines.benchmarks.cvqa import parquet_files
from worldclip.pipelines.evaluate import suite as eval_suite
from worldclip.pipelines.evaluate.embed import embed_images, embed_texts
from worldclip.pipelines.evaluate.model import load_model
from worldclip.platform.config import ConfigError

RNG = np.random.default_rng(7)
JPEGS = [photo_jpeg(RNG, size=40) for _ in range(5)]


def _png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (36, 44, 3), np.uint8)).save(
        buf, "PNG")
    return buf.getvalue()


PNG = _png(1)
JA_OPTS = ["寿司", "ラーメン", "天ぷら", "うどん"]
ES_OPTS = ["tacos", "mole", "pozole", "tamales"]
EN_JA = ["sushi", "ramen", "tempura", "udon"]
ROWS = [
    cvqa_row(JPEGS[0], "1_0", "Japanese", "Japan", "これは何?", JA_OPTS, 0,
             "What is this?", EN_JA),
    cvqa_row(JPEGS[0], "1_1", "Japanese", "Japan", "何の料理?", JA_OPTS, 2,
             "Which dish?", EN_JA),  # the same photo asked twice: embedded once
    cvqa_row(PNG, "2_0", "Japanese", "Japan", "これは何?", JA_OPTS, 1, "What is this?", EN_JA),
    cvqa_row(JPEGS[1], "3_0", "Japanese", "Japan", "何?", JA_OPTS, -1),  # withheld label
    cvqa_row(JPEGS[2], "4_0", "Spanish", "Mexico", "¿Qué es?", ES_OPTS, 3, "What is it?"),
    cvqa_row(JPEGS[3], "5_0", "Spanish", "Mexico", "¿Qué plato?", ES_OPTS, 1, "Which dish?"),
    cvqa_row(b"\xff\xd8 not a jpeg", "6_0", "Spanish", "Mexico", "¿Qué?", ES_OPTS, 0),
    cvqa_row(JPEGS[4], "7_0", "Spanish", "Spain", "¿Qué es?", ES_OPTS, 2, "What is it?"),
]
JA, MX, ES = "Japanese (Japan)", "Spanish (Mexico)", "Spanish (Spain)"


def spec(url: str, **kw) -> dict:
    return benchmarks.normalize_spec({"url": url, **kw}, "test")


@pytest.fixture
def cvqa_dir(tmp_path) -> str:
    root = str(tmp_path / "cvqa")
    write_cvqa(root, ROWS, files=2)
    return root


def test_loader_reads_the_hub_layout(cvqa_dir):
    s = spec(cvqa_dir)
    assert s["type"] == "cvqa"  # detected from the Parquet schema
    b = benchmarks.load(s)
    assert b.dropped == {"no_label": 1}
    assert len(b.images) == 6 and b.images[0] == JPEGS[0] and b.images[1] == PNG
    local, en = b.choices["local"], b.choices["en"]
    assert local.groups == [JA, JA, JA, MX, MX, MX, ES]
    assert local.rows.tolist() == [0, 0, 1, 2, 3, 4, 5]
    assert local.labels.tolist() == [0, 2, 1, 3, 1, 0, 2]
    assert local.texts[1] == [f"何の料理? {o}" for o in JA_OPTS]  # question + option (paper)
    assert en.texts[1] == [f"Which dish? {o}" for o in EN_JA]
    assert benchmarks.load(spec(cvqa_dir, prompt="option")).choices["en"].texts[0] == EN_JA
    by_lang = benchmarks.load(spec(cvqa_dir, group_by="language")).choices["local"].groups
    assert sorted(set(by_lang)) == ["Japanese", "Spanish"]
    only = benchmarks.load(s, ["spanish"])  # a language keeps all its countries
    assert sorted(set(only.choices["en"].groups)) == [MX, ES] and len(only.images) == 4
    assert benchmarks.load(s, [MX]).choices["en"].groups == [MX] * 3
    with pytest.raises(ConfigError, match="not in it"):
        benchmarks.load(s, ["Korean"])
    with pytest.raises(ConfigError, match="prompt='q'"):
        benchmarks.load(spec(cvqa_dir, prompt="q"))


def test_bad_labels_and_withheld_labels(tmp_path):
    bad = str(tmp_path / "bad")
    write_cvqa(bad, [*ROWS[:2], cvqa_row(PNG, "9_9", "Japanese", "Japan", "?", JA_OPTS, 4)])
    with pytest.raises(ValueError, match="'9_9' has Label=4 but 4 Options"):
        benchmarks.load(spec(bad))
    hidden = str(tmp_path / "hidden")  # the public test split: every Label is -1
    write_cvqa(hidden, [{**r, "Label": -1} for r in ROWS])
    with pytest.raises(ValueError, match="withholds them"):
        benchmarks.load(spec(hidden, type="cvqa"))
    keys, images = benchmarks.load_images(spec(hidden))  # decontamination: every image
    assert len(images) == 7 and keys[:2] == ["1_0", "2_0"] and images[1] == PNG


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> str:
    texts = [t for r in ROWS for t in (r["Question"], r["Translated Question"], *r["Options"],
                                       *r["Translated Options"])]
    tok = train_tokenizer(texts * 4, vocab_size=300)
    out = tmp_path_factory.mktemp("cvqa_ckpt")
    torch.manual_seed(0)
    MetaClip2Model(build_config("tiny", vocab_size=len(tok))).save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return str(out)


def _expected(model, tok, b, variant: str) -> dict[str, list[float]]:
    """Per group, the plain argmax hits over the questions whose image decodes."""
    mc = b.choices[variant]
    ok = [i for i, img in enumerate(b.images) if not img.startswith(b"\xff\xd8 not")]
    feats = dict(zip(ok, embed_images(model, [b.images[i] for i in ok]), strict=True))
    out: dict[str, list[float]] = {}
    for q, img in enumerate(mc.rows.tolist()):
        if img in feats:
            sims = embed_texts(model, tok, mc.texts[q]) @ feats[img]
            out.setdefault(mc.groups[q], []).append(float(int(sims.argmax()) == mc.labels[q]))
    return out


def test_accuracy_per_language_with_undecodable_image_counted(cvqa_dir, tiny_checkpoint):
    model, tok = load_model(tiny_checkpoint)
    b = benchmarks.load(spec(cvqa_dir))
    res = eval_suite.score_benchmark(model, tok, b, batch_size=4, n_boot=100, seed=0)
    assert res["dropped"] == {"no_label": 1, "undecodable_image": 1}
    assert res["num_images"] == 6
    for variant in ("local", "en"):
        metric = f"acc_{variant}"
        expected = _expected(model, tok, b, variant)
        assert sorted(expected) == sorted(res["languages"]) == [JA, MX, ES]
        for group, hits in expected.items():
            got = res["languages"][group][metric]
            assert got["n"] == len(hits) and got["value"] == pytest.approx(np.mean(hits))
            assert got["lo"] <= got["value"] <= got["hi"]
        everything = [h for hs in expected.values() for h in hs]
        assert res["all"][metric]["n"] == 6
        assert res["all"][metric]["value"] == pytest.approx(np.mean(everything))
        assert res["mean"][metric]["value"] == pytest.approx(
            np.mean([np.mean(h) for h in expected.values()]))
    assert {r.column for r in b.images.refs} == {"image"}  # Parquet cells, read per batch
    assert res == eval_suite.score_benchmark(model, tok, dataclasses.replace(
        b, images=list(b.images)), batch_size=4, n_boot=100, seed=0)  # the same as in memory
    table = eval_suite.benchmark_table(res)
    assert "| Spanish (Mexico) | 2 |" in table and "| **all questions** | 6 |" in table
    assert "acc_local | acc_en" in table


def test_other_benchmarks_still_fail_loudly_on_a_bad_image(tiny_checkpoint):
    model, tok = load_model(tiny_checkpoint)
    b = benchmarks.Benchmark("w", "wds", ["a", "b"], [JPEGS[0], b"broken"],
                             classnames={"en": ["x", "y"]}, labels={"en": np.array([0, 1])},
                             rows={"en": np.arange(2)})
    with pytest.raises(ValueError, match=r"1 images do not decode \(e.g. \['b'\]\)"):
        eval_suite.score_benchmark(model, tok, b, batch_size=4, n_boot=10, seed=0)


def test_cvqa_loader_reads_from_s3(cvqa_dir, s3_prefix):
    from worldclip.platform import storage

    storage.upload_dir(cvqa_dir, f"{s3_prefix}/cvqa")
    b = benchmarks.load(spec(f"{s3_prefix}/cvqa"))
    assert b.type == "cvqa" and b.images[1] == PNG and len(b.choices["en"].rows) == 7
    files = parquet_files(f"{s3_prefix}/cvqa")
    assert [os.path.basename(f) for f in files] == [f"test-0000{i}-of-00002.parquet"
                                                    for i in range(2)]
