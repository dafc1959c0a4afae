"""Evaluation (the metrics alone: tests/test_evaluate_metrics.py): open_clip class embeddings,
eval set layouts, released-format checkpoints (local and S3), the `eval` stage, Ray."""

from __future__ import annotations

import io
import json
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
from worldclip.pipelines import world
from worldclip.pipelines.evaluate.embed import class_embeddings
from worldclip.pipelines.evaluate.evalsets import EvalSet, load_eval_set
from worldclip.pipelines.evaluate.model import load_model
from worldclip.pipelines.evaluate.scoring import evaluate_model
from worldclip.pipelines.evaluate.stage import run as run_eval
from worldclip.pipelines.evaluate.templates import DEFAULT_TEMPLATES
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
def eval_set(world_dir) -> EvalSet:
    return load_eval_set(str(world_dir / "eval"))


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


# ------------------------------------------------------------------------ class embeddings

def test_class_embeddings_are_the_normalised_template_mean(tokenizer):
    torch.manual_seed(0)
    model = ClipModel(build_config("tiny", vocab_size=len(tokenizer))).eval()
    names = ["sun", "cloud", "Sonne"]
    templates = ["a photo of a {}", "{} on a white background", "{}の写真"]
    emb = class_embeddings(model, tokenizer, names, templates, batch_size=4)
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
    single = class_embeddings(model, tokenizer, names, templates[:1])
    assert not torch.allclose(emb, single, atol=1e-3)
    with pytest.raises(ValueError, match="no '\\{\\}'"):
        class_embeddings(model, tokenizer, names, ["a photo"])


# ------------------------------------------------------------------------ eval sets

def test_load_eval_set_reads_the_world_layout(eval_set):
    assert len(eval_set) == 40 and eval_set.num_classes == 20
    assert eval_set.languages == LANGS
    assert sorted(np.bincount(eval_set.labels).tolist()) == [2] * 20
    assert all(isinstance(b, bytes) and b[:2] == b"\xff\xd8" for b in eval_set.images)
    assert set(eval_set.captions) == set(LANGS)
    assert all(c for caps in eval_set.captions.values() for c in caps)
    assert all("{}" in t for ts in eval_set.templates.values() for t in ts)
    meta = load_eval_set(eval_set.url, images=False)
    assert meta.images == [] and meta.keys == eval_set.keys


def test_load_eval_set_image_folder(tmp_path):
    for folder, color in (("0", (255, 0, 0)), ("Hund", (0, 0, 255)), ("2", (0, 255, 0))):
        (tmp_path / folder).mkdir()
        for i in range(2):
            (tmp_path / folder / f"im{i}.jpg").write_bytes(jpeg(color))
    (tmp_path / "notes.txt").write_text("ignored")
    names = {"en": ["cat", "dog", "tree"], "de": ["Katze", "Hund", "Baum"]}
    (tmp_path / "classnames.json").write_text(json.dumps(names))
    es = load_eval_set(str(tmp_path))
    labels = dict(zip(es.keys, es.labels.tolist()))
    assert labels == {"0/im0.jpg": 0, "0/im1.jpg": 0, "Hund/im0.jpg": 1, "Hund/im1.jpg": 1,
                      "2/im0.jpg": 2, "2/im1.jpg": 2}
    assert es.templates["de"] == DEFAULT_TEMPLATES["de"]  # no templates.json: defaults
    assert es.captions == {} and len(es.images) == 6

    (tmp_path / "Hund").rename(tmp_path / "Fuchs")
    with pytest.raises(ValueError, match="folder 'Fuchs' is neither a class index"):
        load_eval_set(str(tmp_path))

    (tmp_path / "classnames.json").unlink()  # ImageFolder: sorted folder names are classes
    es = load_eval_set(str(tmp_path))
    assert es.classnames == {"en": ["0", "2", "Fuchs"]}
    assert dict(zip(es.keys, es.labels.tolist()))["2/im0.jpg"] == 1


def test_load_eval_set_errors_name_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="no \\*.parquet and no <class>"):
        load_eval_set(str(tmp_path))


# ------------------------------------------------------------------------ checkpoints

def test_released_layout_loads_and_evaluates(released_dir, eval_set, tokenizer):
    model, tok = load_model(str(released_dir))
    assert isinstance(model, ClipModel) and len(tok) == len(tokenizer)
    reference = MetaClip2Model.from_pretrained(str(released_dir))
    assert torch.equal(model.model.visual_projection.weight,
                       reference.visual_projection.weight)
    metrics = evaluate_model(model, tok, eval_set, batch_size=16, device="cpu")
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
    model, tok = load_model(str(released_dir))
    model.train()
    metrics = evaluate_model(model, tok, eval_set, languages=["ja"], batch_size=64)
    assert model.training and metrics["languages"] == ["ja"]
    with pytest.raises(ValueError, match=r"eval languages \['xx'\]"):
        evaluate_model(model, tok, eval_set, languages=["xx"])


def test_load_model_needs_a_tokenizer(tmp_path, tokenizer):
    MetaClip2Model(build_config("tiny", vocab_size=len(tokenizer))).save_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="no tokenizer files"):
        load_model(str(tmp_path))


def test_load_model_from_s3(released_dir, s3_prefix):
    url = f"{s3_prefix}/released"
    for f in released_dir.iterdir():
        storage.write_bytes(storage.join(url, f.name), f.read_bytes())
    model, tok = load_model(url)
    local, local_tok = load_model(str(released_dir))
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
    summary = run_eval(cfg)
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
                       f"eval.out={tmp_path}/eval", "eval.batch_size=8", "eval.ray_actors=2"])
    summary = run_eval(cfg)  # `worldclip eval eval.ray_actors=2` -> evaluate_ray
    ray_metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    model, tok = load_model(str(released_dir))
    local = evaluate_model(model, tok, load_eval_set(str(data)), batch_size=8,
                              device="cpu")
    assert summary["num_images"] == 40
    for key, value in local["overall"].items():
        assert ray_metrics["overall"][key] == pytest.approx(value, abs=1e-6), key
    for lang in LANGS:
        assert ray_metrics["per_class_top1"][lang] == pytest.approx(
            local["per_class_top1"][lang], abs=1e-6)
