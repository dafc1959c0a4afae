"""The model and its DeepSpeed engine: ZeRO stage, offload and precision from the settings,
a torch AdamW client optimizer and the lr schedule (docs/architecture.md, "Training").

`deepspeed` is imported inside the worker-only functions on purpose: DeepSpeed picks its
accelerator when it is imported, so the loop sets DS_ACCELERATOR=cpu first on CPU runs.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from worldclip.models.clip import ClipModel, param_groups
from worldclip.models.presets import build_config
from worldclip.pipelines.train.config import TrainSettings


def ds_config(*, zero_stage: int, offload: bool, pin_memory: bool, precision: str,
              micro_batch: int, grad_accum: int, world_size: int) -> dict[str, Any]:
    """DeepSpeed JSON config: ZeRO stage, offload, precision and this world's batch plan."""
    zero: dict[str, Any] = {"stage": zero_stage}
    if offload:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": pin_memory}
        if zero_stage == 3:
            zero["offload_param"] = {"device": "cpu", "pin_memory": pin_memory}
    if zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = False
    return {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": grad_accum,
        "train_batch_size": micro_batch * grad_accum * world_size,
        "zero_optimization": zero,
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16"},
        "gradient_clipping": 1.0,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
        # a torch AdamW client optimizer (config "AdamW" compiles FusedAdam; docs/operations.md)
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
    }


def deepspeed_config(tc: Mapping[str, Any], world_size: int, micro_batch: int | None = None,
                     grad_accum: int | None = None) -> dict[str, Any]:
    """ds_config from a `train` section given as a plain dict (tests, bench/).
    micro_batch/grad_accum: the elastic batch plan of this world size (pipelines/elastic.py);
    by default train.batch_size_per_worker and train.grad_accum."""
    return ds_config(zero_stage=int(tc["zero_stage"]), offload=bool(tc["offload"]),
                     pin_memory=bool(tc["use_gpu"]), precision=str(tc["precision"]),
                     micro_batch=int(micro_batch or tc["batch_size_per_worker"]),
                     grad_accum=int(grad_accum or tc["grad_accum"]), world_size=world_size)


def lr_at(step: int, base_lr: float, warmup: int, total: int) -> float:
    """Linear warm-up then cosine to 0 (docs/architecture.md, Training)."""
    if warmup > 0 and step < warmup:
        return base_lr * (step + 1) / warmup
    if total <= warmup:
        return base_lr
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * base_lr * (1.0 + math.cos(math.pi * progress))


def skip_cpu_shm_op() -> None:
    """DeepSpeed compiles a shared-memory comm op at every CPU distributed init (~33 s,
    needs a compiler) that gloo training never uses (docs/operations.md)."""
    # not `import deepspeed.comm.torch as m`: deepspeed.comm re-exports a name `torch`, which
    # that statement would bind instead of the submodule
    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None


def init_distributed() -> None:
    """DeepSpeed's comm layer over the torch.distributed group Ray Train set up (gloo on CPU,
    nccl on GPU): zero.Init needs the real world size before initialize."""
    import deepspeed  # after DS_ACCELERATOR (module docstring)

    deepspeed.init_distributed(dist_backend=torch.distributed.get_backend())


@dataclass
class Engine:
    """The DeepSpeed engine with what the loop reads beside it."""

    engine: Any  # deepspeed.DeepSpeedEngine; .module is the ClipModel
    scheduler: torch.optim.lr_scheduler.LambdaLR
    image_size: int

    @property
    def lr(self) -> float:
        return float(self.scheduler.get_last_lr()[0])


def build_engine(s: TrainSettings, vocab_size: int, total_steps: int, world_size: int,
                 micro_batch: int, grad_accum: int, load_universal: bool = False) -> Engine:
    """MetaClip2 ((1,)-shaped logit scale for DeepSpeed) under ZeRO stage s.zero_stage, with a
    torch AdamW client optimizer (no decay on 1-D/bias/norm/logit scale) and warm-up + cosine.
    load_universal: the checkpoint to resume is of another world size (pipelines/elastic.py)."""
    import deepspeed  # after DS_ACCELERATOR (module docstring)

    mcfg = build_config(s.preset, vocab_size=vocab_size,
                        **({"vision_config": {"image_size": s.image_size}}
                           if s.image_size else {}))
    cfg = ds_config(zero_stage=s.zero_stage, offload=s.offload, pin_memory=s.use_gpu,
                    precision=s.precision, micro_batch=micro_batch, grad_accum=grad_accum,
                    world_size=world_size)
    if load_universal:
        cfg["checkpoint"] = {"load_universal": True}
    if s.zero_stage == 3:
        with deepspeed.zero.Init(config_dict_or_path=cfg):
            model = ClipModel(mcfg, gradient_checkpointing=s.gradient_checkpointing)
    else:
        model = ClipModel(mcfg, gradient_checkpointing=s.gradient_checkpointing)
    opt = torch.optim.AdamW(param_groups(model, s.weight_decay), lr=s.lr,
                            betas=(s.beta1, s.beta2), eps=s.eps)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: lr_at(step, 1.0, s.warmup_steps, total_steps))
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=opt, lr_scheduler=sched,
                                           config=cfg)
    return Engine(engine, sched, mcfg.vision_config.image_size)
