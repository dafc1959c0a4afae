"""MetaCLIP 2 model presets as data (open_clip habit): one dict of MetaClip2Config kwargs each.

Sizes follow the published MetaCLIP 2 configs (facebookresearch/MetaCLIP
src/mini_clip/model_configs/*-worldwide.json): width/layers/heads of both towers, embed dim,
224 px, 77 tokens, XLM-V vocabulary (901,629). `tiny` is ours: it trains on a CPU in minutes.
All presets use QuickGELU (the recipe's activation; the published non-H/14 jsons leave it at
open_clip's GELU default -- override hidden_act to match those checkpoints exactly).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any

import torch
from transformers import MetaClip2Config, MetaClip2Model, MetaClip2TextConfig, MetaClip2VisionConfig

XLMV_VOCAB_SIZE = 901_629
# XLM-V / XLM-R special ids; the text tower pools at the first eos_token_id in each row.
BOS_TOKEN_ID = 0
PAD_TOKEN_ID = 1
EOS_TOKEN_ID = 2
CONTEXT_LENGTH = 77
LOGIT_SCALE_INIT = math.log(1 / 0.07)
# Image normalisation of every preset (OpenAI CLIP's mean/std, as MetaCLIP 2 trains with).
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def _preset(
    *,
    embed: int,
    image_size: int = 224,
    patch: int,
    v_width: int,
    v_layers: int,
    v_heads: int,
    v_mlp: int | None = None,
    t_width: int,
    t_layers: int,
    t_heads: int,
    vocab: int = XLMV_VOCAB_SIZE,
) -> dict[str, Any]:
    """Spell one preset out as the exact MetaClip2Config kwargs (so PRESETS stays plain data)."""
    return {
        "projection_dim": embed,
        "logit_scale_init_value": LOGIT_SCALE_INIT,
        "vision_config": {
            "image_size": image_size,
            "patch_size": patch,
            "hidden_size": v_width,
            "intermediate_size": v_mlp or 4 * v_width,
            "num_hidden_layers": v_layers,
            "num_attention_heads": v_heads,
            "projection_dim": embed,
            "hidden_act": "quick_gelu",
        },
        "text_config": {
            "vocab_size": vocab,
            "hidden_size": t_width,
            "intermediate_size": 4 * t_width,
            "num_hidden_layers": t_layers,
            "num_attention_heads": t_heads,
            "max_position_embeddings": CONTEXT_LENGTH,
            "projection_dim": embed,
            "hidden_act": "quick_gelu",
            "bos_token_id": BOS_TOKEN_ID,
            "pad_token_id": PAD_TOKEN_ID,
            "eos_token_id": EOS_TOKEN_ID,
        },
    }


# Head counts: open_clip's vision tower uses head_width 64 unless the json says otherwise
# (H/14: 80 -> 16 heads; bigG/14: 104 -> 16 heads, mlp_ratio 4.9231 -> 8192).
# fmt: off
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": _preset(
        embed=64, image_size=32, patch=8, v_width=64, v_layers=2, v_heads=2,
        t_width=64, t_layers=2, t_heads=2, vocab=8000,
    ),
    "S/16": _preset(
        embed=384, patch=16, v_width=384, v_layers=12, v_heads=6,
        t_width=384, t_layers=12, t_heads=6,
    ),
    "M/16": _preset(
        embed=512, patch=16, v_width=512, v_layers=12, v_heads=8,
        t_width=512, t_layers=12, t_heads=8,
    ),
    "B/32": _preset(
        embed=512, patch=32, v_width=768, v_layers=12, v_heads=12,
        t_width=512, t_layers=12, t_heads=8,
    ),
    "B/16": _preset(
        embed=512, patch=16, v_width=768, v_layers=12, v_heads=12,
        t_width=512, t_layers=12, t_heads=8,
    ),
    "L/14": _preset(
        embed=768, patch=14, v_width=1024, v_layers=24, v_heads=16,
        t_width=768, t_layers=12, t_heads=12,
    ),
    "H/14": _preset(
        embed=1024, patch=14, v_width=1280, v_layers=32, v_heads=16,
        t_width=1024, t_layers=24, t_heads=16,
    ),
    "bigG/14": _preset(
        embed=1280, patch=14, v_width=1664, v_layers=48, v_heads=16, v_mlp=8192,
        t_width=1280, t_layers=32, t_heads=20,
    ),
}
# fmt: on


def _canonical_name(preset: str) -> str:
    """Accept "H/14", "ViT-H-14", "h14", "vit_h_14" alike (YAML and CLI users type all of these)."""

    def squash(name: str) -> str:
        s = name.lower().replace("_", "").replace("-", "").replace("/", "")
        return s[3:] if s.startswith("vit") else s

    table = {squash(name): name for name in PRESETS}
    key = squash(str(preset))
    if key not in table:
        raise ValueError(f"model preset {preset!r} is unknown: choose one of {', '.join(PRESETS)}")
    return table[key]


def _field_names(config_cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(config_cls)}


def _merge_checked(
    base: dict[str, Any], extra: dict[str, Any], config_cls: type, where: str
) -> None:
    """Merge overrides, refusing unknown keys: MetaClip2Config would silently keep a typo."""
    allowed = _field_names(config_cls)
    for key, value in extra.items():
        if key not in allowed:
            raise ValueError(
                f"model override {where}{key}={value!r}: unknown field; valid fields are "
                f"{', '.join(sorted(k for k in allowed if not k.startswith('_')))}"
            )
        base[key] = value


def preset_kwargs(preset: str, vocab_size: int | None = None, **overrides: Any) -> dict[str, Any]:
    """The MetaClip2Config kwargs of a preset with vocab_size and overrides applied.

    Overrides are top-level config fields (projection_dim, logit_scale_init_value, ...) or
    `vision_config={...}` / `text_config={...}` dicts merged into the preset's sub-configs.
    """
    kwargs = copy.deepcopy(PRESETS[_canonical_name(preset)])
    if vocab_size is not None:
        if int(vocab_size) <= EOS_TOKEN_ID:
            raise ValueError(
                f"model vocab_size={vocab_size}: must exceed the eos id {EOS_TOKEN_ID}"
            )
        kwargs["text_config"]["vocab_size"] = int(vocab_size)
    for sub, cls in (
        ("vision_config", MetaClip2VisionConfig),
        ("text_config", MetaClip2TextConfig),
    ):
        extra = overrides.pop(sub, None) or {}
        _merge_checked(kwargs[sub], dict(extra), cls, f"{sub}.")
    _merge_checked(kwargs, overrides, MetaClip2Config, "")
    return kwargs


def build_config(
    preset: str,
    vocab_size: int | None = None,
    gradient_checkpointing: bool = False,
    **overrides: Any,
) -> MetaClip2Config:
    """Build the MetaClip2Config of a preset; vocab_size comes from the tokenizer in use.

    gradient_checkpointing is recorded on the config and applied by ClipModel (it is a
    training switch, not an architecture field, and is not saved with exported models).
    """
    config = MetaClip2Config(**preset_kwargs(preset, vocab_size, **overrides))
    config.gradient_checkpointing = bool(gradient_checkpointing)
    return config


def check_tokenizer(config: MetaClip2Config, tokenizer: Any) -> None:
    """Fail early when a tokenizer cannot drive this config's text tower.

    The text tower pools at the first `eos_token_id`; a tokenizer with another eos id, or more
    ids than embedding rows, trains silently wrong or crashes deep inside an embedding lookup.
    """
    text = config.text_config
    if tokenizer.eos_token_id != text.eos_token_id:
        raise ValueError(
            f"tokenizer eos_token_id={tokenizer.eos_token_id} but model text_config.eos_token_id="
            f"{text.eos_token_id}: build the config with "
            f"text_config={{'eos_token_id': {tokenizer.eos_token_id}}} or use a tokenizer whose "
            f"</s> id is {text.eos_token_id}"
        )
    if len(tokenizer) > text.vocab_size:
        raise ValueError(
            f"tokenizer has {len(tokenizer)} tokens but model text_config.vocab_size="
            f"{text.vocab_size}: build the config with vocab_size={len(tokenizer)}"
        )


def param_count(preset: str | MetaClip2Config, vocab_size: int | None = None) -> int:
    """Exact parameter count, by building the model on the meta device (no memory, ~0.2 s)."""
    config = preset if isinstance(preset, MetaClip2Config) else build_config(preset, vocab_size)
    with torch.device("meta"):
        model = MetaClip2Model(config)
    return sum(p.numel() for p in model.parameters())


def _tower_flops(width: int, mlp: int, layers: int, tokens: int) -> float:
    """Forward FLOPs of a pre-LN transformer tower: 2 per multiply-add of every matmul."""
    dense = 2.0 * tokens * (4 * width * width + 2 * width * mlp)  # qkv + out proj, fc1 + fc2
    attention = 2.0 * 2 * tokens * tokens * width  # scores QK^T and weighted sum AV
    return layers * (dense + attention)


def flops_per_sample(config: MetaClip2Config) -> float:
    """Approximate forward FLOPs for one image-text pair (training step ~3x this; ~4x with
    gradient checkpointing, which recomputes the forward). Embedding lookups, norms, softmax
    and the loss are left out (<1% at these sizes). Used by the GPU bench for MFU."""
    v, t = config.vision_config, config.text_config
    patches = (v.image_size // v.patch_size) ** 2
    vision = _tower_flops(v.hidden_size, v.intermediate_size, v.num_hidden_layers, patches + 1)
    vision += 2.0 * patches * v.num_channels * v.patch_size**2 * v.hidden_size  # patch conv
    text = _tower_flops(
        t.hidden_size, t.intermediate_size, t.num_hidden_layers, t.max_position_embeddings
    )
    projections = 2.0 * config.projection_dim * (v.hidden_size + t.hidden_size)
    return vision + text + projections
