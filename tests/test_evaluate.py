"""Evaluation: zero-shot and retrieval metrics on hand-built cases, open_clip class embeddings,
eval set layouts, released-format checkpoints (local and S3), the `eval` stage, Ray."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from transformers import MetaClip2Model

from worldclip.models.clip import ClipModel
from worldclip.models.presets import build_config
from worldclip.models.tokenizer import tokenize, train_tokenizer
from worldclip.pipelines import evaluate as ev
from worldclip.pipelines import world
from worldclip.platform import storage
from worldclip.platform.config import load_config

LANGS = ["en", "de", "ja", "ar"]


# ------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def world_dir(tmp_path_factory) -> Path:
    """A small embedded world: 20 concepts x 2 eval images, 4 languages."""
    out = tmp_path_factory.mktemp("world")
    cfg = load_config(["world.pairs=200", "world.concepts=20", "world.eval_per_concept=2",
                       "world.distractors=10", f"world.languages={json.dumps(LANGS)}",
                       'world.formats=["parquet"]'])
    world.generate_world(cfg.world, str(out))
    return out


@pytest.fixture(scope="module")
def eval_set(world_dir) -> ev.EvalSet:
    return ev.load_eval_set(str(world_dir / "eval"))


@pytest.fixture(scope="module")
def tokenizer(eval_set):
    texts = [n for names in eval_set.classnames.values() for n in names]
    texts += [c for caps in eval_set.captions.values() for c in caps if c]
    texts += [t for ts in eval_set.templates.values() for t in ts]
    return train_tokenizer(texts * 3, vocab_size=600)


@pytest.fixture(scope="module")
def released_dir(tmp_path_factory, tokenizer) -> Path:
    """A randomly initialised MetaClip2Model in exactly the released layout."""
    out = tmp_path_factory.mktemp("released")
    torch.manual_seed(0)
    model = MetaClip2Model(build_config("tiny", vocab_size=len(tokenizer)))
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out


def jpeg(color: tuple[int, int, int], size: int = 40) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="JPEG")
    return buf.getvalue()


# ------------------------------------------------------------------------ pure metrics

def test_zero_shot_known_embeddings_by_hand():
    # class_emb = identity, so each image feature row IS its score vector over 6 classes.
    feats = torch.tensor([
        [0.9, 0.1, 0.0, 0.0, 0.0, 0.0],  # label 0: rank 0 -> hit
        [0.0, 0.8, 0.5, 0.0, 0.0, 0.0],  # label 1: rank 0 -> hit
        [0.9, 0.8, 0.7, 0.6, 0.0, 0.0],  # label 3: 3 classes above -> miss@1, @3; hit@5
        [0.0, 0.0, 0.0, 0.0, 0.2, 0.7],  # label 5: rank 0 -> hit
    ])
    labels = np.array([0, 1, 3, 5])
    res = ev.zero_shot(feats, labels, torch.eye(6), ks=(1, 3, 5))
    assert res["top1"] == pytest.approx(0.75)
    assert res["top3"] == pytest.approx(0.75)
    assert res["top5"] == pytest.approx(1.0)
    per_class = res["per_class"]
    assert per_class.shape == (6,)
    assert per_class[[0, 1, 3, 5]].tolist() == [1.0, 1.0, 0.0, 1.0]
    assert math.isnan(per_class[2]) and math.isnan(per_class[4])  # no images of these


def test_zero_shot_collapsed_model_scores_chance_not_perfect():
    feats = torch.ones(8, 4) / 2
    class_emb = torch.ones(10, 4) / 2  # every class scores the same for every image
    res = ev.zero_shot(feats, np.arange(8), class_emb, ks=(1, 5))
    assert res["top1"] == pytest.approx(0.1)
    assert res["top5"] == pytest.approx(0.5)


def test_zero_shot_rejects_bad_labels():
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        ev.zero_shot(torch.eye(3), np.array([0, 1, 3]), torch.eye(3))


def test_retrieval_recall_by_hand():
    # text_features = identity: similarity[i, j] = image_features[i, j].
    sim = torch.tensor([
        [0.9, 0.1, 0.0],  # image 0 -> text 0 first
        [0.5, 0.2, 0.1],  # image 1: text 0 above its own text 1 -> rank 1
        [0.3, 0.4, 0.1],  # image 2: texts 0 and 1 above its text 2 -> rank 2
    ])
    res = ev.retrieval(sim, torch.eye(3), ks=(1, 2, 3))
    assert res["i2t_r@1"] == pytest.approx(1 / 3)
    assert res["i2t_r@2"] == pytest.approx(2 / 3)
    assert res["i2t_r@3"] == pytest.approx(1.0)
    # columns: text 0 -> image 0 first; text 1: image 2 (0.4) above image 1 (0.2);
    # text 2: image 2 ties image 1 at 0.1 -> half a hit at 1, a full hit at 2.
    assert res["t2i_r@1"] == pytest.approx((1 + 0 + 0.5) / 3)
    assert res["t2i_r@2"] == pytest.approx(1.0)
    assert res["t2i_r@3"] == pytest.approx(1.0)


def test_retrieval_with_shared_caption_positives():
    # Two images share one caption string (text 0); image 2 has text 1.
    sim = torch.tensor([[0.2, 0.9], [0.8, 0.1], [0.3, 0.7]])
    positives = torch.tensor([[True, False], [True, False], [False, True]])
    res = ev.retrieval(sim, torch.eye(2), ks=(1,), positives=positives)
    assert res["i2t_r@1"] == pytest.approx(2 / 3)  # image 0 prefers text 1: miss
    # text 0 -> image 1 (a positive: hit); text 1 -> image 0 (0.9) above image 2 (0.7): miss
    assert res["t2i_r@1"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="3 images but 2 texts"):
        ev.retrieval(sim, torch.eye(2))


def test_head_tail_accuracy_splits_by_frequency():
    acc = [1.0, 0.5, None, 0.0]
    counts = [100, 50, 1, 2]  # rarest half: classes 2 (no accuracy) and 3
    assert ev.head_tail_accuracy(acc, counts) == {"head": 0.75, "tail": 0.0}


# ------------------------------------------------------------------------ class embeddings

def test_class_embeddings_are_the_normalised_template_mean(tokenizer):
    torch.manual_seed(0)
    model = ClipModel(build_config("tiny", vocab_size=len(tokenizer))).eval()
    names = ["sun", "cloud", "Sonne"]
    templates = ["a photo of a {}", "{} on a white background", "{}の写真"]
    emb = ev.class_embeddings(model, tokenizer, names, templates, batch_size=4)
    assert emb.shape == (3, model.config.projection_dim)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(3), atol=1e-5)
    with torch.no_grad():  # by hand, at the full 77-token context, one class at a time
        expected = []
        for name in names:
            tok = tokenize(tokenizer, [t.replace("{}", name) for t in templates])
            per_prompt = model.encode_text(tok["input_ids"], tok["attention_mask"])
            expected.append(torch.nn.functional.normalize(per_prompt.mean(0), dim=-1))
    assert torch.allclose(emb, torch.stack(expected), atol=1e-5)
    # the mean differs from any single template's embedding (it really averages)
    single = ev.class_embeddings(model, tokenizer, names, templates[:1])
    assert not torch.allclose(emb, single, atol=1e-3)
    with pytest.raises(ValueError, match="no '\\{\\}'"):
        ev.class_embeddings(model, tokenizer, names, ["a photo"])


# ------------------------------------------------------------------------ eval sets

def test_load_eval_set_reads_the_world_layout(eval_set):
    assert len(eval_set) == 40 and eval_set.num_classes == 20
    assert eval_set.languages == LANGS
    assert sorted(np.bincount(eval_set.labels).tolist()) == [2] * 20
    assert all(isinstance(b, bytes) and b[:2] == b"\xff\xd8" for b in eval_set.images)
    assert set(eval_set.captions) == set(LANGS)
    assert all(c for caps in eval_set.captions.values() for c in caps)
    assert all("{}" in t for ts in eval_set.templates.values() for t in ts)
    meta = ev.load_eval_set(eval_set.url, images=False)
    assert meta.images == [] and meta.keys == eval_set.keys


def test_load_eval_set_image_folder(tmp_path):
    for folder, color in (("0", (255, 0, 0)), ("Hund", (0, 0, 255)), ("2", (0, 255, 0))):
        (tmp_path / folder).mkdir()
        for i in range(2):
            (tmp_path / folder / f"im{i}.jpg").write_bytes(jpeg(color))
    (tmp_path / "notes.txt").write_text("ignored")
    names = {"en": ["cat", "dog", "tree"], "de": ["Katze", "Hund", "Baum"]}
    (tmp_path / "classnames.json").write_text(json.dumps(names))
    es = ev.load_eval_set(str(tmp_path))
    labels = dict(zip(es.keys, es.labels.tolist()))
    assert labels == {"0/im0.jpg": 0, "0/im1.jpg": 0, "Hund/im0.jpg": 1, "Hund/im1.jpg": 1,
                      "2/im0.jpg": 2, "2/im1.jpg": 2}
    assert es.templates["de"] == ev.DEFAULT_TEMPLATES["de"]  # no templates.json: defaults
    assert es.captions == {} and len(es.images) == 6

    (tmp_path / "Hund").rename(tmp_path / "Fuchs")
    with pytest.raises(ValueError, match="folder 'Fuchs' is neither a class index"):
        ev.load_eval_set(str(tmp_path))

    (tmp_path / "classnames.json").unlink()  # ImageFolder: sorted folder names are classes
    es = ev.load_eval_set(str(tmp_path))
    assert es.classnames == {"en": ["0", "2", "Fuchs"]}
    assert dict(zip(es.keys, es.labels.tolist()))["2/im0.jpg"] == 1


def test_load_eval_set_errors_name_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="no \\*.parquet and no <class>"):
        ev.load_eval_set(str(tmp_path))


# ------------------------------------------------------------------------ checkpoints

def test_released_layout_loads_and_evaluates(released_dir, eval_set, tokenizer):
    model, tok = ev.load_model(str(released_dir))
    assert isinstance(model, ClipModel) and len(tok) == len(tokenizer)
    reference = MetaClip2Model.from_pretrained(str(released_dir))
    assert torch.equal(model.model.visual_projection.weight,
                       reference.visual_projection.weight)
    metrics = ev.evaluate_model(model, tok, eval_set, batch_size=16, device="cpu")
    assert metrics["languages"] == LANGS and metrics["num_classes"] == 20
    assert set(metrics["zero_shot"]) == set(LANGS) == set(metrics["retrieval"])
    for lang in LANGS:
        zs = metrics["zero_shot"][lang]
        assert 0.0 <= zs["top1"] <= zs["top5"] <= 1.0
        assert zs["top1"] < 0.5  # random weights: near chance (0.05)
        assert len(metrics["per_class_top1"][lang]) == 20
        r = metrics["retrieval"][lang]
        assert all(0.0 <= r[f"{d}_r@{k}"] <= 1.0 for d in ("i2t", "t2i") for k in (1, 5, 10))
        assert r["i2t_r@1"] <= r["i2t_r@5"] <= r["i2t_r@10"]
    mean_top1 = np.mean([metrics["zero_shot"][lang]["top1"] for lang in LANGS])
    assert metrics["overall"]["top1"] == pytest.approx(mean_top1)
    json.dumps(metrics, allow_nan=False)  # metrics.json stays strict JSON
    assert not model.training


def test_evaluate_model_restores_training_mode_and_checks_languages(released_dir, eval_set):
    model, tok = ev.load_model(str(released_dir))
    model.train()
    metrics = ev.evaluate_model(model, tok, eval_set, languages=["ja"], batch_size=64)
    assert model.training and metrics["languages"] == ["ja"]
    with pytest.raises(ValueError, match=r"eval languages \['xx'\]"):
        ev.evaluate_model(model, tok, eval_set, languages=["xx"])


def test_load_model_needs_a_tokenizer(tmp_path, tokenizer):
    MetaClip2Model(build_config("tiny", vocab_size=len(tokenizer))).save_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="no tokenizer files"):
        ev.load_model(str(tmp_path))


def test_load_model_from_s3(released_dir, s3_prefix):
    url = f"{s3_prefix}/released"
    for f in released_dir.iterdir():
        storage.write_bytes(storage.join(url, f.name), f.read_bytes())
    model, tok = ev.load_model(url)
    local, local_tok = ev.load_model(str(released_dir))
    local_state = local.state_dict()
    assert model.state_dict().keys() == local_state.keys()
    for name, value in model.state_dict().items():
        assert torch.equal(value, local_state[name]), name
    assert tok("sun")["input_ids"] == local_tok("sun")["input_ids"]


# ------------------------------------------------------------------------ the stage

def test_run_writes_metrics_plot_and_config(released_dir, world_dir, tmp_path):
    cfg = load_config([f"eval.checkpoint={released_dir}", f"eval.data={world_dir}/eval",
                       f"eval.out={tmp_path}/eval", "eval.languages=[en,ja]",
                       "eval.batch_size=32"])
    summary = ev.run(cfg)
    assert set(summary["top1"]) == {"en", "ja"}
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["checkpoint"] == str(released_dir)
    assert set(metrics["zero_shot"]) == {"en", "ja"}
    assert summary["overall"]["top1"] == pytest.approx(metrics["overall"]["top1"])
    assert (tmp_path / "eval" / "zero_shot_top1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "checkpoint:" in (tmp_path / "eval" / "config.yaml").read_text()


@pytest.mark.slow
def test_evaluate_ray_matches_evaluate_model(ray_session, released_dir, world_dir, tmp_path):
    # The eval set split over two Parquet files: two actors, batches joined back by key.
    data = tmp_path / "data"
    data.mkdir()
    table = pq.read_table(world_dir / "eval" / "eval.parquet")
    pq.write_table(table.slice(0, 25), data / "part-0.parquet")
    pq.write_table(table.slice(25), data / "part-1.parquet")
    for name in ("classnames.json", "templates.json"):
        (data / name).write_bytes((world_dir / "eval" / name).read_bytes())
    cfg = load_config([f"eval.checkpoint={released_dir}", f"eval.data={data}",
                       f"eval.out={tmp_path}/eval", "eval.batch_size=8"])
    summary = ev.evaluate_ray(cfg, concurrency=2)
    ray_metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    model, tok = ev.load_model(str(released_dir))
    local = ev.evaluate_model(model, tok, ev.load_eval_set(str(data)), batch_size=8,
                              device="cpu")
    assert summary["num_images"] == 40
    for key, value in local["overall"].items():
        assert ray_metrics["overall"][key] == pytest.approx(value, abs=1e-6), key
    for lang in LANGS:
        assert ray_metrics["per_class_top1"][lang] == pytest.approx(
            local["per_class_top1"][lang], abs=1e-6)
