"""CLIP model wrapper around transformers' MetaClip2Model, fit for DeepSpeed ZeRO.

Why a wrapper: MetaClip2Model's logit_scale is a 0-dim parameter and deepspeed 0.19.8 crashes
in initialize on any 0-dim parameter. The wrapper owns the logit scale as a (1,)-shaped
parameter and removes the HF one; the towers and projections stay the HF modules, so weights
keep their HF names ("model.<hf name>") and `to_hf` rebuilds a complete MetaClip2Model
(0-dim logit scale) for save_pretrained. The logit scale living on the wrapper (the module
DeepSpeed calls) also lets ZeRO-3 gather it in the wrapper's own forward hook.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch import nn
from transformers import MetaClip2Config, MetaClip2Model

from worldclip.models.presets import LOGIT_SCALE_INIT

logger = logging.getLogger(__name__)

LOGIT_SCALE_MAX = math.log(100.0)


class _MetaClip2Towers(MetaClip2Model):
    """MetaClip2Model that drops its 0-dim logit_scale before its constructor returns.

    deepspeed.zero.Init partitions a module's parameters right after its outermost __init__;
    removing the parameter there (not later in the wrapper) keeps ZeRO-3 from ever seeing it.
    """

    def __init__(self, config: MetaClip2Config):
        super().__init__(config)
        del self._parameters["logit_scale"]


class ClipModel(nn.Module):
    """Two-tower CLIP: `forward` returns normalised image/text features and exp(logit scale).

    Attributes:
        model: the HF MetaClip2Model holding both towers and projections, WITHOUT its
            logit_scale (use `to_hf(clip)` for a complete, exportable MetaClip2Model).
        logit_scale: shape (1,), initialised at ln(1/0.07) (or the config's value).
    """

    def __init__(self, config: MetaClip2Config, gradient_checkpointing: bool | None = None):
        super().__init__()
        # Take the switch off the config before HF's post_init consumes it behind our back.
        flag = getattr(config, "gradient_checkpointing", False)
        if hasattr(config, "gradient_checkpointing"):
            delattr(config, "gradient_checkpointing")
        init = config.logit_scale_init_value
        init = LOGIT_SCALE_INIT if init is None else float(init)
        # The value comes from the config, not the HF parameter: under deepspeed.zero.Init
        # parameters are partitioned (empty) once built.
        self._attach(_MetaClip2Towers(config), torch.full((1,), init))
        if flag if gradient_checkpointing is None else gradient_checkpointing:
            self.gradient_checkpointing_enable()

    @classmethod
    def wrap(cls, hf_model: MetaClip2Model) -> ClipModel:
        """Adopt an existing MetaClip2Model (pretrained weights); it loses its 0-dim logit_scale."""
        obj = cls.__new__(cls)
        nn.Module.__init__(obj)
        value = hf_model.logit_scale.detach().reshape(1).clone().float()
        obj._attach(hf_model, value)
        return obj

    def _attach(self, hf_model: MetaClip2Model, logit_scale: torch.Tensor) -> None:
        if "logit_scale" in hf_model._parameters:
            del hf_model._parameters["logit_scale"]
        self.model = hf_model
        ref = next(hf_model.parameters())
        self.logit_scale = nn.Parameter(logit_scale.to(device=ref.device, dtype=ref.dtype))

    @property
    def config(self) -> MetaClip2Config:
        return self.model.config

    def gradient_checkpointing_enable(self) -> None:
        """Recompute each encoder layer in backward (non-reentrant): memory for ~33% compute."""
        self.model.activation_checkpointing_enable({"use_reentrant": False})

    def gradient_checkpointing_disable(self) -> None:
        self.model.activation_checkpointing_disable()

    @property
    def is_gradient_checkpointing(self) -> bool:
        return self.model.is_activation_checkpointing

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """L2-normalised image embeddings [N, projection_dim] (CLS token -> post-LN -> proj)."""
        out = self.model.get_image_features(pixel_values=pixel_values)
        return nn.functional.normalize(out.pooler_output, dim=-1)

    def encode_text(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """L2-normalised text embeddings [N, projection_dim], pooled at the first eos token.

        Every row must contain text_config.eos_token_id (worldclip.models.tokenizer.tokenize
        guarantees exactly one); a row without it would silently pool at position 0.
        """
        out = self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask)
        return nn.functional.normalize(out.pooler_output, dim=-1)

    def scale(self) -> torch.Tensor:
        """exp(logit_scale) with the scale clamped to [0, ln 100] (0-dim tensor)."""
        return self.logit_scale.clamp(0.0, LOGIT_SCALE_MAX).exp().squeeze(0)

    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(image_features, text_features, exp(clamped logit scale)) for ClipLoss."""
        return (
            self.encode_image(pixel_values),
            self.encode_text(input_ids, attention_mask),
            self.scale(),
        )

    @torch.no_grad()
    def clamp_logit_scale_(self) -> None:
        """Clamp the stored scale after an optimiser step (open_clip habit): the forward clamp
        alone stops its gradient but lets the raw value drift out of range."""
        self.logit_scale.clamp_(0.0, LOGIT_SCALE_MAX)


def from_hf(hf_model: MetaClip2Model) -> ClipModel:
    """Wrap a MetaClip2Model (e.g. from_pretrained); the HF model is adopted, not copied."""
    return ClipModel.wrap(hf_model)


def to_hf(model: ClipModel) -> MetaClip2Model:
    """A complete MetaClip2Model (0-dim logit_scale) sharing the wrapper's weight storage.

    Built on the meta device and filled by assignment, so exporting H/14 costs no second copy.
    The towers stay usable in the wrapper; only the logit scale is a separate 0-dim tensor.
    """
    src = model.model
    with torch.device("meta"):
        hf = MetaClip2Model(src.config)
    state = dict(src.state_dict())
    state["logit_scale"] = model.logit_scale.detach().reshape(())
    hf.load_state_dict(state, strict=True, assign=True)
    # Non-persistent buffers (position_ids) are not in state_dict: copy them across.
    src_buffers = dict(src.named_buffers())
    for name, _ in list(hf.named_buffers()):
        owner_name, _, leaf = name.rpartition(".")
        owner = hf.get_submodule(owner_name) if owner_name else hf
        owner._buffers[leaf] = src_buffers[name]
    hf.train(src.training)
    return hf


def _is_no_decay(name: str, param: nn.Parameter) -> bool:
    leaf = name.rsplit(".", 1)[-1]
    return param.ndim < 2 or leaf == "bias" or "norm" in name.lower() or "logit_scale" in name


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups per the recipe: no weight decay on 1-D params, biases, norms, logit scale.

    (The (1,)-shaped logit scale and class embedding are 1-D, LayerNorm weights are 1-D;
    names are checked too so a reshaped bias or norm never slips into the decay group.)
    Frozen parameters are left out; empty groups are dropped.
    """
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if _is_no_decay(name, param) else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": float(weight_decay)},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]
