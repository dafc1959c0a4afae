"""Benchmark loaders on fixtures written in the real distributed formats (tests/eval_fixtures.py),
bootstrap intervals, and `worldclip eval` with a suite of benchmarks and two checkpoints."""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
from collections.abc import Sequence

import numpy as np
import pytest
import torch
from cvqa_fixtures import cvqa_row, write_cvqa
from eval_fixtures import (
    photo_jpeg,
    write_babel_imagenet,
    write_clip_benchmark_wds,
    write_xm3600,
)
from transformers import MetaClip2Model

from worldclip.models.presets import build_config
from worldclip.models.tokenizer import train_tokenizer
from worldclip.pipelines import benchmarks
from worldclip.pipelines.benchmarks.images import ImageRefs
from worldclip.pipelines.evaluate import suite as eval_suite
from worldclip.pipelines.evaluate.embed import class_embeddings, embed_images, embed_texts
from worldclip.pipelines.evaluate.metrics import retrieval, zero_shot
from worldclip.pipelines.evaluate.model import load_model
from worldclip.pipelines.evaluate.stage import run as run_eval
from worldclip.pipelines.evaluate.templates import DEFAULT_TEMPLATES
from worldclip.platform import storage
from worldclip.platform.config import ConfigError, load_config

RNG = np.random.default_rng(3)
IMAGES = [photo_jpeg(RNG, size=48) for _ in range(6)]
XM_CAPS = {"en": [[f"a photo number {i}", f"another caption {i}"] for i in range(6)],
           "de": [[f"ein Foto Nummer {i}"] for i in range(6)],
           "ja": [[f"写真 {i}"] for i in range(6)]}


def spec(url: str, **kw) -> dict:
    return benchmarks.normalize_spec({"url": url, **kw}, "test")


def test_xm3600_loader_reads_captions_jsonl_and_images(tmp_path):
    root = str(tmp_path / "xm3600")
    keys = write_xm3600(root, IMAGES, XM_CAPS)
    os.remove(os.path.join(root, "images", f"{keys[5]}.jpg"))  # a missing image is skipped
    s = spec(root)
    assert s["type"] == "xm3600"
    b = benchmarks.load(s)
    assert b.keys == keys[:5] and list(b.images) == IMAGES[:5]
    assert sorted(b.captions) == ["de", "en", "ja"]
    assert b.captions["en"][2] == ["a photo number 2"]  # first caption (CLIP_benchmark)
    assert benchmarks.load(spec(root, all_captions=True)).captions["en"][2] == \
        ["a photo number 2", "another caption 2"]
    assert list(benchmarks.load(s, ["de"]).captions) == ["de"]
    with pytest.raises(ConfigError, match="not in it"):
        benchmarks.load(s, ["xx"])


def test_babel_imagenet_loader_subsets_classes_per_language(tmp_path):
    root = str(tmp_path / "imagenet_val")
    per_class = [IMAGES[i:i + 2] for i in range(0, 6, 2)]  # 3 classes x 2 images
    write_babel_imagenet(root, per_class, {"de": ([0, 2], ["Schleie", "Weißer Hai"]),
                                           "ja": ([1, 2], ["金魚", "ホオジロザメ"])},
                         prompts={"de": ["ein Foto von {}."]})
    b = benchmarks.load(spec(root, templates=os.path.join(root, "prompts.json")))
    assert b.type == "babel_imagenet" and len(b.images) == 6
    assert b.rows["de"].tolist() == [0, 1, 4, 5] and b.labels["de"].tolist() == [0, 0, 1, 1]
    assert b.rows["ja"].tolist() == [2, 3, 4, 5] and b.labels["ja"].tolist() == [0, 0, 1, 1]
    assert b.classnames["ja"] == ["金魚", "ホオジロザメ"]
    assert b.templates["de"] == ["ein Foto von {}."]
    assert b.templates["ja"] == DEFAULT_TEMPLATES["ja"]  # no translated prompts given


def test_clip_benchmark_wds_loader_classification_and_retrieval(tmp_path):
    cls_root = str(tmp_path / "wds_cls")
    write_clip_benchmark_wds(cls_root, IMAGES, labels=[0, 1, 2, 0, 1, 2],
                             classnames=["cat", "dog", "car"],
                             templates=["a photo of a {c}.", "a {c}."], per_shard=4)
    b = benchmarks.load(spec(cls_root))
    assert b.type == "wds" and len(b.images) == 6 and list(b.images) == IMAGES
    assert b.labels["en"].tolist() == [0, 1, 2, 0, 1, 2]
    assert b.classnames["en"] == ["cat", "dog", "car"]
    assert b.templates["en"] == ["a photo of a {}.", "a {}."]
    ret_root = str(tmp_path / "wds_ret")
    write_clip_benchmark_wds(ret_root, IMAGES, captions=XM_CAPS["en"])
    r = benchmarks.load(spec(ret_root, language="en"))
    assert not r.classnames and r.captions["en"][1] == XM_CAPS["en"][1]


def test_bootstrap_interval_is_seeded_and_covers_the_mean():
    v = (np.arange(400) % 4 == 0).astype(float)  # mean 0.25
    a = eval_suite.summarize(v, eval_suite.bootstrap_means(v, 500, seed=1))
    b = eval_suite.summarize(v, eval_suite.bootstrap_means(v, 500, seed=1))
    assert a == b and a["lo"] < 0.25 < a["hi"] and a["hi"] - a["lo"] < 0.12


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory):
    texts = [c for caps in XM_CAPS.values() for cs in caps for c in cs]
    texts += ["cat", "dog", "car", "a photo of a", "Schleie"] + \
        [t for ts in DEFAULT_TEMPLATES.values() for t in ts]
    tok = train_tokenizer(texts * 3, vocab_size=400)
    dirs = []
    for seed in (0, 1):
        out = tmp_path_factory.mktemp(f"ckpt{seed}")
        torch.manual_seed(seed)
        MetaClip2Model(build_config("tiny", vocab_size=len(tok))).save_pretrained(str(out))
        tok.save_pretrained(str(out))
        dirs.append(str(out))
    return dirs


def test_suite_scores_match_evaluate_and_write_tables(tmp_path, two_checkpoints):
    xm = str(tmp_path / "xm3600")
    write_xm3600(xm, IMAGES, XM_CAPS)
    wds = str(tmp_path / "wds_cls")
    write_clip_benchmark_wds(wds, IMAGES, labels=[0, 1, 2, 0, 1, 2],
                             classnames=["cat", "dog", "car"])
    cvqa = str(tmp_path / "cvqa")  # the Hub's afaji/cvqa Parquet layout, type detected
    write_cvqa(cvqa, [cvqa_row(IMAGES[i], f"{i}_0", *(("German", "Germany") if i % 2 else
                                                      ("Japanese", "Japan")),
                               f"question {i}", ["cat", "dog", "car"], i % 3) for i in range(6)])
    out = str(tmp_path / "eval")
    cfg = load_config([f"eval.out={out}", "eval.bootstrap=200",
                       f"eval.suite=[{{name: xm, url: {xm}}}, {{name: cls, url: {wds}}}, "
                       f"{{name: cvqa, url: {cvqa}}}]",
                       f"eval.checkpoints=[a={two_checkpoints[0]}, b={two_checkpoints[1]}]"])
    summary = run_eval(cfg)
    assert summary["checkpoints"] == ["a", "b"]
    assert summary["benchmarks"] == ["xm", "cls", "cvqa"]
    res = storage.read_json(os.path.join(out, "suite.json"))["results"]
    # same numbers as the single-set scoring functions
    model, tok = load_model(two_checkpoints[0])
    feats = embed_images(model, IMAGES)
    cls = class_embeddings(model, tok, ["cat", "dog", "car"], ["a photo of a {}."])
    top1 = zero_shot(feats, np.array([0, 1, 2, 0, 1, 2]), cls)["top1"]
    assert res["a"]["cls"]["languages"]["en"]["top1"]["value"] == pytest.approx(top1)
    text = embed_texts(model, tok, [c[0] for c in XM_CAPS["de"]])
    r = retrieval(feats, text)
    got = res["a"]["xm"]["languages"]["de"]
    assert got["i2t_r@1"]["value"] == pytest.approx(r["i2t_r@1"])
    assert got["t2i_r@5"]["value"] == pytest.approx(r["t2i_r@5"])
    for lang in ("en", "de", "ja"):
        m = res["b"]["xm"]["languages"][lang]["t2i_r@1"]
        assert m["lo"] <= m["value"] <= m["hi"] and m["n"] == 6
    md = storage.read_text(os.path.join(out, "suite.md"))
    assert md.count("| ja | 6 |") == 2 and "## cls (wds, 6 images) -- b" in md
    comp = storage.read_text(os.path.join(out, "comparison.md"))
    assert "| xm | t2i_r@1 |" in comp and "| cls | top1 |" in comp
    assert "| cvqa | acc_local |" in comp and "| cvqa | acc_en |" in comp
    assert md.count("| German (Germany) | 3 |") == 2 and "| **all questions** | 6 |" in md
    cv = res["b"]["cvqa"]
    assert cv["type"] == "cvqa" and cv["all"]["acc_en"]["n"] == 6 and cv["dropped"] == {}
    assert storage.read_bytes(os.path.join(out, "comparison.png"))[:4] == b"\x89PNG"
    again = run_eval(cfg)  # seeded: the same intervals
    assert json.dumps(again["comparison"]) == json.dumps(summary["comparison"])


def test_suite_config_errors_name_the_key(tmp_path):
    cfg = load_config([f"eval.out={tmp_path}", "eval.suite=[{name: x, url: /x, type: coco}]"])
    with pytest.raises(ConfigError, match="eval.suite.*type='coco'"):
        run_eval(cfg)


def test_loaders_read_from_s3(tmp_path, s3_prefix):
    xm, wds = str(tmp_path / "xm3600"), str(tmp_path / "wds_cls")
    write_xm3600(xm, IMAGES, XM_CAPS)
    write_clip_benchmark_wds(wds, IMAGES, labels=[0, 1, 2, 0, 1, 2],
                             classnames=["cat", "dog", "car"])
    storage.upload_dir(xm, f"{s3_prefix}/xm3600")
    storage.upload_dir(wds, f"{s3_prefix}/wds_cls")
    b = benchmarks.load(spec(f"{s3_prefix}/xm3600"))
    assert b.type == "xm3600" and list(b.images) == IMAGES and b.captions["ja"][0] == ["写真 0"]
    w = benchmarks.load(spec(f"{s3_prefix}/wds_cls"))
    assert w.type == "wds" and w.labels["en"].tolist() == [0, 1, 2, 0, 1, 2]
    assert w.images[2:5] == IMAGES[2:5]  # byte ranges of the tar members, from S3


class _Watched(Sequence):
    """The benchmark's lazy images, recording every read the suite asks for."""

    def __init__(self, inner: Sequence[bytes]) -> None:
        self.inner, self.reads = inner, []

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, i):
        got = self.inner[i]
        self.reads.append(len(got) if isinstance(i, slice) else 1)
        return got


def test_images_stream_per_batch_with_unchanged_scores(tmp_path, two_checkpoints):
    xm, wds, babel = (str(tmp_path / n) for n in ("xm", "wds", "babel"))
    write_xm3600(xm, IMAGES, XM_CAPS)
    write_clip_benchmark_wds(wds, IMAGES, labels=[0, 1, 2, 0, 1, 2],
                             classnames=["cat", "dog", "car"], per_shard=4)
    with open(os.path.join(wds, "test", "1.tar"), "rb") as f:  # a compressed shard: no ranges
        raw = f.read()
    with gzip.open(os.path.join(wds, "test", "1.tar"), "wb") as f:
        f.write(raw)
    write_babel_imagenet(babel, [IMAGES[:3], IMAGES[3:]], {"de": ([0, 1], ["Katze", "Hund"])})
    model, tok = load_model(two_checkpoints[0])
    for url in (xm, wds, babel):
        b = benchmarks.load(spec(url))
        assert isinstance(b.images, ImageRefs) and len(b.images) == 6
        assert all(r.data is None for r in b.images.refs[:4])  # nothing held but references
        in_memory = dataclasses.replace(b, images=list(b.images))
        assert sorted(in_memory.images) == sorted(IMAGES)
        b.images = watched = _Watched(b.images)
        lazy = eval_suite.score_benchmark(model, tok, b, 4, 50, 0)
        assert watched.reads == [4, 2]  # one read per batch of 4, never the whole set
        assert lazy == eval_suite.score_benchmark(model, tok, in_memory, 4, 50, 0)
    wds_refs = benchmarks.load(spec(wds)).images.refs
    assert [r.length > 0 for r in wds_refs] == [True] * 4 + [False] * 2  # byte ranges, inline
