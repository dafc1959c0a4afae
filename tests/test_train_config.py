"""pipelines/train/config.py: the typed, frozen settings a worker reads."""

from __future__ import annotations

import dataclasses

import pytest
from omegaconf import OmegaConf

from worldclip.pipelines.train.config import LoopConfig, TrainSettings
from worldclip.platform.config import load_config


def _section(tmp_path, *overrides: str) -> dict:
    cfg = load_config([f"storage.root={tmp_path}", *overrides])
    return OmegaConf.to_container(cfg.train, resolve=True)


def test_settings_are_typed_from_the_train_section(tmp_path):
    s = TrainSettings.from_section(_section(tmp_path, "train.zero_stage=3",
                                            "train.batch_size_per_worker=12",
                                            "train.num_workers=[1,3]", "train.grad_accum=2"))
    assert s.zero_stage == 3 and isinstance(s.lr, float) and isinstance(s.offload, bool)
    assert s.num_workers == (1, 3) and s.image_size is None and s.global_batch is None
    assert s.pairs_per_step == 12 * 3 * 2  # the default global batch at the largest world
    assert TrainSettings.from_section(
        _section(tmp_path, "train.global_batch=48")).pairs_per_step == 48
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.zero_stage = 1  # type: ignore[misc]


def test_loop_config_from_the_dict_ray_passes(tmp_path):
    config = {"train": _section(tmp_path), "data": "s3://b/curated", "tokenizer": "tok",
              "vocab_size": 600, "total_steps": 12, "run_dir": "/runs/demo",
              "eval_data": "/world/eval", "kept": 5}  # extra keys (tune) are carried, unread
    run = LoopConfig.from_dict(config)
    assert (run.total_steps, run.vocab_size, run.data) == (12, 600, "s3://b/curated")
    assert run.settings.num_workers == (2, 2)
