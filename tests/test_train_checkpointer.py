"""pipelines/train/checkpointer.py: when a checkpoint is written (pure), and a save -> load
round trip on a real single-process DeepSpeed engine (CPU, gloo) without Ray Train."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import free_port

from worldclip.pipelines.train.checkpointer import save_due

HERE = Path(__file__).resolve().parent
ENV = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1",
       "DS_ACCELERATOR": "cpu"}


def test_save_every_n_steps_and_not_at_epoch_end():
    assert [s for s in range(1, 13) if save_due("step", s, 3, -1)] == [3, 6, 9, 12]
    assert not save_due("epoch", 5, 3, 3)


def test_save_at_epoch_end_when_checkpoint_every_is_zero():
    assert not any(save_due("step", s, 0, -1) for s in range(1, 20))
    assert save_due("epoch", 7, 0, -1)


def test_save_at_the_end_unless_the_last_step_was_saved():
    assert save_due("end", 12, 5, 10)  # steps 11-12 unsaved
    assert not save_due("end", 12, 3, 12)  # step 12 was a checkpoint_every step
    assert not save_due("end", 6, 0, 6)  # resumed at the run's end: nothing new to save
    assert save_due("end", 0, 0, -1)  # never saved (no step taken): still one checkpoint


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_write_then_load_restores_engine_and_state(tmp_path, stage):
    p = subprocess.run([sys.executable, str(HERE / "ds_checkpointer.py"), str(tmp_path),
                        str(stage), str(free_port())], env=ENV, capture_output=True, text=True,
                       timeout=300)
    assert "DS_CHECKPOINTER_OK" in p.stdout, p.stderr[-3000:]
    r = json.loads((tmp_path / "result.json").read_text())
    # the directory layout of pipelines/checkpoint_io.py (beside DeepSpeed's own files)
    assert {"ckpt", "data_rank0.json", "model_config.json", "state.json",
            "tokenizer"} <= set(r["files"])
    assert json.loads((tmp_path / "ckpt_dir" / "data_rank0.json").read_text()) == {
        "pos": 8, "epoch": 1, "node": "node-a"}
    st = r["state"]
    assert (st["step"], st["epoch"], st["pos"], st["seen_pairs"]) == (2, 1, 8, 8)
    assert st["history"] == [[1, 1.0, 1e-3], [2, 0.9, 1e-3]] and st["saved_at"] > 0
    assert r["convert_s"] == 0.0
    # the fresh engine had other weights; after load it has the saved ones, the same lr
    # schedule position, and the optimizer state: the next step is identical
    assert r["sha_b_before"] != r["sha_a"] and r["sha_b"] == r["sha_a"]
    assert r["lr_b"] == r["lr_a"]
    assert r["loss_b"] == r["loss_a"] and r["sha_b_after"] == r["sha_a_after"]
