"""pipelines/evaluate/metrics.py: zero-shot and retrieval metrics on hand-built cases
(tie-aware: a collapsed model scores chance), head/tail accuracy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from worldclip.pipelines.evaluate.metrics import head_tail_accuracy, retrieval, zero_shot


def test_zero_shot_known_embeddings_by_hand():
    # class_emb = identity, so each image feature row IS its score vector over 6 classes.
    feats = torch.tensor([
        [0.9, 0.1, 0.0, 0.0, 0.0, 0.0],  # label 0: rank 0 -> hit
        [0.0, 0.8, 0.5, 0.0, 0.0, 0.0],  # label 1: rank 0 -> hit
        [0.9, 0.8, 0.7, 0.6, 0.0, 0.0],  # label 3: 3 classes above -> miss@1, @3; hit@5
        [0.0, 0.0, 0.0, 0.0, 0.2, 0.7],  # label 5: rank 0 -> hit
    ])
    labels = np.array([0, 1, 3, 5])
    res = zero_shot(feats, labels, torch.eye(6), ks=(1, 3, 5))
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
    res = zero_shot(feats, np.arange(8), class_emb, ks=(1, 5))
    assert res["top1"] == pytest.approx(0.1)
    assert res["top5"] == pytest.approx(0.5)


def test_zero_shot_rejects_bad_labels():
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        zero_shot(torch.eye(3), np.array([0, 1, 3]), torch.eye(3))


def test_retrieval_recall_by_hand():
    # text_features = identity: similarity[i, j] = image_features[i, j].
    sim = torch.tensor([
        [0.9, 0.1, 0.0],  # image 0 -> text 0 first
        [0.5, 0.2, 0.1],  # image 1: text 0 above its own text 1 -> rank 1
        [0.3, 0.4, 0.1],  # image 2: texts 0 and 1 above its text 2 -> rank 2
    ])
    res = retrieval(sim, torch.eye(3), ks=(1, 2, 3))
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
    res = retrieval(sim, torch.eye(2), ks=(1,), positives=positives)
    assert res["i2t_r@1"] == pytest.approx(2 / 3)  # image 0 prefers text 1: miss
    # text 0 -> image 1 (a positive: hit); text 1 -> image 0 (0.9) above image 2 (0.7): miss
    assert res["t2i_r@1"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="3 images but 2 texts"):
        retrieval(sim, torch.eye(2))


def test_head_tail_accuracy_splits_by_frequency():
    acc = [1.0, 0.5, None, 0.0]
    counts = [100, 50, 1, 2]  # rarest half: classes 2 (no accuracy) and 3
    assert head_tail_accuracy(acc, counts) == {"head": 0.75, "tail": 0.0}
