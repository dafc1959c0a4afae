"""The main job end to end at a tiny size: world -> curate -> train -> eval -> report."""

from __future__ import annotations

import json

import pytest

from worldclip.cli import stage_config
from worldclip.pipelines import demo
from worldclip.pipelines.checkpoint_io import (
    export_for_eval,
    latest_checkpoint,
    resolve_checkpoint,
)
from worldclip.pipelines.evaluate.model import load_model
from worldclip.pipelines.train import stage as train_stage
from worldclip.platform import storage
from worldclip.platform.config import apply_storage

TINY = ["world.pairs=900", "world.pairs_per_shard=300", "world.concepts=30",
        "world.eval_per_concept=2", "train.max_steps=6", "train.batch_size_per_worker=16",
        "train.checkpoint_every=3", "train.log_every=2", "train.tokenizer_vocab=1000",
        "train.eval_every=3"]


@pytest.mark.slow
def test_demo_writes_report(ray_session, tmp_path):
    cfg = stage_config("demo", [f"storage.root={tmp_path}", *TINY], [])
    assert cfg.train.zero_stage == 2 and cfg.train.num_workers == 2  # the demo preset
    apply_storage(cfg)
    out = demo.run(cfg)
    report = json.loads((tmp_path / "demo" / "report.json").read_text())
    a = report["curation"]
    assert a["pairs_in"] == 900 == a["kept"] + sum(a["dropped"].values())
    assert report["train"]["steps"] == 6
    assert [e[0] for e in report["train"]["zero_shot_during_training"]] == [3, 6]
    assert 0.0 <= out["top1"] <= 1.0 and out["chance"] == pytest.approx(1 / 30)
    md = (tmp_path / "demo" / "report.md").read_text()
    assert "| language |" in md and "zero-shot" in md
    assert "<table>" in (tmp_path / "demo" / "report.html").read_text()
    for png in ("loss.png", "zero_shot_top1.png", "languages.png", "long_tail.png"):
        assert (tmp_path / "demo" / "plots" / png).read_bytes()[:4] == b"\x89PNG"
    # a training run directory evaluates directly (the trainer exports on demand)
    run = train_stage.run_dir(cfg)
    assert resolve_checkpoint(run) == storage.join(run, "export")
    ckpt = latest_checkpoint(run)
    hf = export_for_eval(ckpt)
    model, tok = load_model(hf)
    assert model.config.vision_config.image_size == 32 and tok is not None
