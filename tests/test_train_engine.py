"""pipelines/train/engine.py: the DeepSpeed config per ZeRO stage and the lr schedule (the
engine itself is built in tests/test_train_checkpointer.py and the Ray Train runs)."""

from __future__ import annotations

import math

import pytest

from worldclip.pipelines.train.engine import deepspeed_config, lr_at


def test_deepspeed_config_per_stage():
    tc = {"zero_stage": 3, "offload": True, "use_gpu": False, "batch_size_per_worker": 8,
          "grad_accum": 4, "precision": "fp32"}
    c = deepspeed_config(tc, world_size=2)
    assert c["train_batch_size"] == 64 and c["gradient_accumulation_steps"] == 4
    assert c["zero_optimization"]["stage"] == 3
    assert c["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert c["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert not c["bf16"]["enabled"]
    c = deepspeed_config({**tc, "zero_stage": 1, "offload": False, "precision": "bf16",
                          "use_gpu": True}, 8)
    assert c["zero_optimization"] == {"stage": 1} and c["bf16"]["enabled"]


def test_lr_warmup_then_cosine_to_zero():
    lrs = [lr_at(s, 4e-4, 2000, 10000) for s in range(10001)]
    assert lrs[0] == pytest.approx(4e-4 / 2000) and lrs[1999] == pytest.approx(4e-4)
    assert lrs[6000] == pytest.approx(0.5 * 4e-4 * (1 + math.cos(math.pi * 0.5)))
    assert lrs[10000] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(lrs[2000:], lrs[2001:], strict=False))
