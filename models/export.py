"""HF-format export/import: a save_pretrained directory (safetensors) that plain transformers
loads with MetaClip2Model.from_pretrained, plus the tokenizer files beside it.

ZeRO shard consolidation is the trainer's job; `load_state_dict_into` takes its output.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from transformers import CLIPProcessor, MetaClip2Model, PreTrainedTokenizerBase

from worldclip.models.clip import ClipModel, from_hf, to_hf
from worldclip.models.presets import OPENAI_MEAN, OPENAI_STD
from worldclip.models.tokenizer import load_tokenizer

logger = logging.getLogger(__name__)

_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "sentencepiece.bpe.model",
    "spiece.model",
)


def save_hf(
    clip_model: ClipModel,
    out_dir: str | os.PathLike[str],
    tokenizer: PreTrainedTokenizerBase | None = None,
) -> Path:
    """Write config.json + model.safetensors (+ tokenizer files) to out_dir; returns the path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    to_hf(clip_model).save_pretrained(str(out), safe_serialization=True)
    image_processor = eval_image_processor(int(clip_model.config.vision_config.image_size))
    if tokenizer is not None:
        # The processor (image processor + tokenizer) makes the directory complete for
        # AutoProcessor and transformers pipelines ("zero-shot-image-classification").
        CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(
            str(out))
    else:
        image_processor.save_pretrained(str(out))
    logger.info("saved MetaClip2Model%s to %s", " and tokenizer" if tokenizer else "", out)
    return out


def eval_image_processor(size: int) -> Any:
    """The HF image processor that reproduces the project's eval transform
    (models' `eval_transform`: short side resized to `size` with bicubic, centre crop
    size x size, RGB, scaled to [0, 1], OpenAI mean/std)."""
    from transformers import CLIPImageProcessorPil

    return CLIPImageProcessorPil(
        do_resize=True, size={"shortest_edge": size}, resample=3,  # PIL.Image.BICUBIC
        do_center_crop=True, crop_size={"height": size, "width": size},
        do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
        image_mean=list(OPENAI_MEAN), image_std=list(OPENAI_STD), do_convert_rgb=True)


def load_hf(
    path: str | os.PathLike[str], dtype: torch.dtype | None = None
) -> tuple[ClipModel, PreTrainedTokenizerBase | None]:
    """Load a save_pretrained directory from safetensors only (never pickle) as a ClipModel,
    with its tokenizer when the directory has one."""
    src = Path(path)
    if (
        not (src / "model.safetensors").exists()
        and not (src / "model.safetensors.index.json").exists()
    ):
        raise FileNotFoundError(
            f"load_hf {str(path)!r}: no model.safetensors(.index.json) there; pass a directory "
            f"written by save_hf or MetaClip2Model.save_pretrained"
        )
    kwargs: dict[str, Any] = {"use_safetensors": True, "local_files_only": True}
    if dtype is not None:
        kwargs["dtype"] = dtype
    hf = MetaClip2Model.from_pretrained(str(src), **kwargs)
    tokenizer = None
    if any((src / name).exists() for name in _TOKENIZER_FILES):
        tokenizer = load_tokenizer(src)
    return from_hf(hf), tokenizer


def load_state_dict_into(
    clip_model: ClipModel, state_dict: Mapping[str, torch.Tensor], strict: bool = True
) -> Any:
    """Load weights saved from either the wrapper (keys "model.*", logit_scale shape (1,)) or
    a plain MetaClip2Model (bare HF keys, 0-dim logit_scale) into clip_model."""
    fixed: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key == "logit_scale" or key == "model.logit_scale":
            fixed["logit_scale"] = value.reshape(1)
        elif key.startswith("model."):
            fixed[key] = value
        else:
            fixed[f"model.{key}"] = value
    return clip_model.load_state_dict(fixed, strict=strict)
