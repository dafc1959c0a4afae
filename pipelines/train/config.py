"""The training run's settings, typed and frozen, built once from the `train` section.

Ray Train hands the worker loop a plain dict (build_trainer's train_loop_config: it must
pickle and carry `extra` keys); `LoopConfig.from_dict` turns it into typed values once, so the
loop reads `s.zero_stage`, not `int(tc["zero_stage"])`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from worldclip.pipelines import elastic

_CASTS = {"int": int, "float": float, "bool": bool, "str": str}


@dataclass(frozen=True)
class TrainSettings:
    """The `train` keys a worker reads (platform/config.py TrainConfig has them all)."""

    preset: str
    image_size: int | None  # None -> the preset's
    zero_stage: int
    offload: bool
    use_gpu: bool
    precision: str  # fp32 | bf16 | fp16
    gradient_checkpointing: bool
    num_workers: tuple[int, int]  # (min, max); equal for a fixed-size run
    global_batch: int | None  # None -> batch_size_per_worker x max workers x grad_accum
    batch_size_per_worker: int
    grad_accum: int
    epochs: int
    lr: float
    warmup_steps: int
    weight_decay: float
    beta1: float
    beta2: float
    eps: float
    crop_scale_min: float
    ingest_cpus: float
    seed: int
    log_every: int
    checkpoint_every: int  # steps; 0 -> end of every epoch
    eval_every: int  # 0 -> no in-training eval
    fail_at_step: int  # testing hook (docs/operations.md)
    throttle_step_s: float  # testing hook
    record_keys: bool  # testing hook: every trained pair's key id in the checkpoint

    @classmethod
    def from_section(cls, tc: Mapping[str, Any]) -> TrainSettings:
        """From the resolved `train` section (a dict or a DictConfig); other keys ignored."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            v = tc[f.name]
            if f.name == "num_workers":
                v = elastic.worker_range(v)
            elif f.type == "int | None":
                v = int(v) if v else None
            else:
                v = _CASTS[str(f.type)](v)
            values[f.name] = v
        return cls(**values)

    @property
    def pairs_per_step(self) -> int:
        """The global batch G: fixed at every world size (pipelines/elastic.py)."""
        return elastic.global_batch({"global_batch": self.global_batch,
                                     "batch_size_per_worker": self.batch_size_per_worker,
                                     "num_workers": list(self.num_workers),
                                     "grad_accum": self.grad_accum})


@dataclass(frozen=True)
class LoopConfig:
    """Everything train_loop needs: the settings and what the driver resolved for the run."""

    settings: TrainSettings
    data: str  # the curated data URL (pipelines/ingest.py Source)
    tokenizer: str  # tokenizer URL or hub id (tokenizer.py)
    vocab_size: int
    total_steps: int  # stage.plan_steps: the lr schedule's length and the run's end
    run_dir: str  # <train.out>/<train.name>
    eval_data: str  # eval.data, for the in-training eval

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> LoopConfig:
        return cls(settings=TrainSettings.from_section(config["train"]),
                   data=str(config["data"]), tokenizer=str(config["tokenizer"]),
                   vocab_size=int(config["vocab_size"]),
                   total_steps=int(config["total_steps"]), run_dir=str(config["run_dir"]),
                   eval_data=str(config["eval_data"]))
