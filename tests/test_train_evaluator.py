"""pipelines/train/evaluator.py: the in-training eval scores the model, keeps its train
mode, loads the eval set once per Evaluator, and ranks that take no part load nothing."""

from __future__ import annotations

import io
import json
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from worldclip.models.clip import ClipModel
from worldclip.models.presets import build_config
from worldclip.models.tokenizer import train_tokenizer
from worldclip.pipelines.train.evaluator import Evaluator

COLORS = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]
NAMES = ["red", "green", "blue"]


def _jpeg(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 40), color).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.fixture()
def eval_dir(tmp_path):
    d = tmp_path / "eval"
    d.mkdir()
    rows = [(f"k{i}", _jpeg(COLORS[i % 3]), i % 3) for i in range(6)]
    pq.write_table(pa.table({"key": [r[0] for r in rows], "image": [r[1] for r in rows],
                             "label": [r[2] for r in rows]}), d / "eval.parquet")
    (d / "classnames.json").write_text(json.dumps({"en": NAMES}))
    return d


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer([f"a photo of a {n}." for n in NAMES] * 20, vocab_size=60)


def _model(tokenizer) -> ClipModel:
    torch.manual_seed(0)
    return ClipModel(build_config("tiny", vocab_size=len(tokenizer)))


def test_scores_once_loaded_and_restores_train_mode(eval_dir, tokenizer):
    ev = Evaluator(str(eval_dir), lambda: tokenizer, every=4, zero_stage=2, rank=0)
    assert [s for s in range(1, 13) if ev.due(s)] == [4, 8, 12]
    model = _model(tokenizer).train()
    first = ev.score(model)
    assert model.training  # mid-training: put back in train mode
    assert first["num_images"] == 6 and first["chance_top1"] == pytest.approx(1 / 3)
    assert 0.0 <= first["overall"]["top1"] <= 1.0
    cached = ev.eval_set
    shutil.rmtree(eval_dir)  # the eval set is held by the Evaluator, not read again
    again = ev.score(model)
    assert ev.eval_set is cached
    assert again["overall"] == first["overall"]


def test_ranks_that_take_no_part_load_nothing(eval_dir, tokenizer):
    ev = Evaluator(str(eval_dir), lambda: tokenizer, every=1, zero_stage=2, rank=1)
    assert ev.score(_model(tokenizer)) is None and ev._eval_set is None
    # under ZeRO-3 every rank runs the forward passes (the parameters are sharded)
    assert Evaluator(str(eval_dir), lambda: tokenizer, every=1, zero_stage=3,
                     rank=1).participates
    assert not Evaluator(str(eval_dir), lambda: tokenizer, every=0, zero_stage=2,
                         rank=0).due(4)


def test_a_missing_eval_set_fails_at_the_first_eval(tmp_path, tokenizer):
    ev = Evaluator(str(tmp_path / "nowhere"), lambda: tokenizer, every=1, zero_stage=2, rank=0)
    with pytest.raises(FileNotFoundError):
        ev.score(_model(tokenizer))
