"""Embedding with a ClipModel: texts, encoded images and zero-shot class embeddings
(open_clip's classifier: per class, the mean of its normalised prompt embeddings)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from worldclip.models.clip import ClipModel
from worldclip.models.tokenizer import tokenize
from worldclip.pipelines.evaluate.templates import FALLBACK_TEMPLATES
from worldclip.pipelines.transforms import eval_transform


def _device_of(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _dtype_of(model: torch.nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@torch.no_grad()
def embed_texts(model: ClipModel, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str],
                batch_size: int = 256) -> torch.Tensor:
    """Normalised text embeddings [N, D] (float32, on the model's device).

    Texts are batched by token length and each batch is cut after its longest row: the text
    tower is causal and pools at eos, so padding beyond it cannot change the result, and
    prompts of ~10 tokens then cost ~10/77 of a full-context pass.
    """
    device = _device_of(model)
    context = int(model.config.text_config.max_position_embeddings)
    out = torch.zeros(len(texts), model.config.projection_dim, device=device)
    if not texts:
        return out
    tok = tokenize(tokenizer, list(texts), context_length=context)
    lengths = tok["attention_mask"].sum(dim=1)
    order = torch.argsort(lengths, stable=True)
    for start in range(0, len(texts), batch_size):
        rows = order[start:start + batch_size]
        width = int(lengths[rows].max())
        ids = tok["input_ids"][rows, :width].to(device)
        mask = tok["attention_mask"][rows, :width].to(device)
        out[rows.to(device)] = model.encode_text(ids, mask).float()
    return out


def _decode_batch(images: Sequence[bytes], size: int, pool: ThreadPoolExecutor | None
                  ) -> np.ndarray:
    fn = lambda data: eval_transform(data, size)  # noqa: E731
    arrays = list(pool.map(fn, images)) if pool is not None else [fn(d) for d in images]
    return np.stack(arrays)


@torch.no_grad()
def embed_images(model: ClipModel, images: Sequence[bytes], batch_size: int = 256,
                 image_size: int | None = None, workers: int | None = None) -> torch.Tensor:
    """Normalised image embeddings [N, D] (float32, on the model's device) from encoded bytes,
    centre-cropped at the vision tower's image_size; decoding runs on a few threads."""
    device, dtype = _device_of(model), _dtype_of(model)
    size = int(image_size or model.config.vision_config.image_size)
    workers = workers if workers is not None else min(8, os.cpu_count() or 1)
    parts = []
    with ThreadPoolExecutor(workers) if workers > 1 else contextlib.nullcontext() as pool:
        for start in range(0, len(images), batch_size):
            pixels = _decode_batch(images[start:start + batch_size], size, pool)
            pixels_t = torch.from_numpy(pixels).to(device=device, dtype=dtype)
            parts.append(model.encode_image(pixels_t).float())
    if not parts:
        return torch.zeros(0, model.config.projection_dim, device=device)
    return torch.cat(parts)


def _fill(template: str, name: str) -> str:
    return template.replace("{}", name)


@torch.no_grad()
def class_embeddings(model: ClipModel, tokenizer: PreTrainedTokenizerBase,
                     classnames: Sequence[str], templates: Sequence[str],
                     batch_size: int = 256) -> torch.Tensor:
    """[C, D]: per class, the mean of its normalised prompt embeddings, re-normalised
    (open_clip's zero-shot classifier). Every template must contain "{}"."""
    templates = list(templates) or FALLBACK_TEMPLATES
    bad = [t for t in templates if "{}" not in t]
    if bad:
        raise ValueError(f"class_embeddings: templates {bad} have no '{{}}' for the class name; "
                         f"write them like 'a photo of a {{}}.'")
    texts = [_fill(t, name) for name in classnames for t in templates]
    emb = embed_texts(model, tokenizer, texts, batch_size)
    emb = emb.reshape(len(classnames), len(templates), -1).mean(dim=1)
    return torch.nn.functional.normalize(emb, dim=-1)
