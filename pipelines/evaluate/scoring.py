"""All metrics of a model on an eval set, per language: zero-shot top-1/top-5 over the class
names and templates of each language, caption retrieval where the set has captions."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from worldclip.models.clip import ClipModel
from worldclip.pipelines.evaluate.embed import (
    class_embeddings,
    default_device,
    embed_images,
    embed_texts,
)
from worldclip.pipelines.evaluate.evalsets import EvalSet
from worldclip.pipelines.evaluate.metrics import retrieval, zero_shot
from worldclip.pipelines.evaluate.templates import FALLBACK_TEMPLATES


def _check_languages(eval_set: EvalSet, languages: Sequence[str] | None) -> list[str]:
    langs = list(languages) if languages else eval_set.languages
    bad = [lang for lang in langs if lang not in eval_set.classnames]
    if bad:
        raise ValueError(f"eval languages {bad}: the eval set has class names for "
                         f"{eval_set.languages} only; drop them or leave eval.languages empty")
    return langs


def _caption_retrieval(image_features: torch.Tensor, captions: Sequence[str | None],
                       model: ClipModel, tokenizer: PreTrainedTokenizerBase,
                       batch_size: int) -> dict[str, float] | None:
    """Retrieval over the images that have a caption; identical caption strings are one text
    whose positives are all their images (no tie between copies of the same string)."""
    idx = [i for i, c in enumerate(captions) if c]
    if len(idx) < 2:
        return None
    unique: dict[str, int] = {}
    text_of = [unique.setdefault(captions[i], len(unique)) for i in idx]
    positives = torch.zeros(len(idx), len(unique), dtype=torch.bool)
    positives[torch.arange(len(idx)), torch.tensor(text_of)] = True
    text_features = embed_texts(model, tokenizer, list(unique), batch_size)
    sel = torch.tensor(idx, device=image_features.device)
    out = retrieval(image_features[sel], text_features, positives=positives)
    out["images"] = len(idx)
    out["texts"] = len(unique)
    return out


def score_languages(model: ClipModel, tokenizer: PreTrainedTokenizerBase,
                    image_features: torch.Tensor, eval_set: EvalSet,
                    languages: Sequence[str] | None = None, batch_size: int = 256
                    ) -> dict[str, Any]:
    """All metrics from precomputed image features (rows in eval_set order); the text tower
    runs here. Shared by `evaluate_model` and `evaluate_ray`."""
    langs = _check_languages(eval_set, languages)
    labels = eval_set.labels
    zs: dict[str, dict[str, float]] = {}
    per_class: dict[str, list[float | None]] = {}
    ret: dict[str, dict[str, float]] = {}
    for lang in langs:
        cls = class_embeddings(model, tokenizer, eval_set.classnames[lang],
                               eval_set.templates.get(lang) or FALLBACK_TEMPLATES, batch_size)
        res = zero_shot(image_features, labels, cls)
        zs[lang] = {"top1": res["top1"], "top5": res["top5"]}
        per_class[lang] = [None if math.isnan(a) else float(a) for a in res["per_class"]]
        if lang in eval_set.captions:
            r = _caption_retrieval(image_features, eval_set.captions[lang], model, tokenizer,
                                   batch_size)
            if r is not None:
                ret[lang] = r
    overall: dict[str, float] = {}
    for key in ("top1", "top5"):
        overall[key] = float(np.mean([zs[lang][key] for lang in langs])) if langs else math.nan
    if ret:
        for key in next(iter(ret.values())):
            if "@" in key:
                overall[key] = float(np.mean([r[key] for r in ret.values()]))
    num_classes = eval_set.num_classes
    return {
        "num_images": int(len(labels)),
        "num_classes": num_classes,
        "chance_top1": 1.0 / num_classes,
        "languages": langs,
        "overall": overall,
        "zero_shot": zs,
        "per_class_top1": per_class,
        "retrieval": ret,
    }


def evaluate_model(model: ClipModel, tokenizer: PreTrainedTokenizerBase, eval_set: EvalSet,
                   languages: Sequence[str] | None = None, batch_size: int = 256,
                   device: str | torch.device | None = None) -> dict[str, Any]:
    """Zero-shot top-1/top-5 and retrieval recall@1/5/10 per language, their means over
    languages ("overall") and per-class top-1 per language (for head/tail splits).

    Images are embedded once; the model is moved to `device` (default: cuda when available;
    it stays there), runs under no_grad and is put back in its original train/eval mode
    afterwards (it may be mid-training).
    """
    if not eval_set.images:
        raise ValueError(f"eval set {eval_set.url!r} was loaded without images; use "
                         f"load_eval_set(url, images=True)")
    device = torch.device(device or default_device())
    was_training = model.training
    model.to(device).eval()
    try:
        image_features = embed_images(model, eval_set.images, batch_size)
        return score_languages(model, tokenizer, image_features, eval_set, languages,
                               batch_size)
    finally:
        model.train(was_training)
