"""pipelines/train/metrics.py: rank 0's step log and TensorBoard scalars."""

from __future__ import annotations

import logging

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from worldclip.pipelines.train.metrics import MetricsLogger, tensorboard_writer
from worldclip.pipelines.train.state import TrainState


def _state(step: int) -> TrainState:
    return TrainState(step=step, epoch=0, seen_pairs=8 * step, global_batch=8)


def test_rank0_writes_tensorboard_scalars_every_log_every_steps(tmp_path, caplog):
    m = MetricsLogger(str(tmp_path), rank=0, log_every=2, total_steps=4, world=2, micro=4,
                      accum=1)
    with caplog.at_level(logging.INFO, logger="worldclip.pipelines.train.metrics"):
        for step in range(1, 5):
            m.step(_state(step), loss=5.0 - step, lr=1e-3 * step)
        m.close(_state(4))
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    assert [msg.split()[1] for msg in logged] == ["1/4", "2/4", "4/4"]  # step 1, then every 2
    ev = EventAccumulator(str(tmp_path / "tensorboard"))
    ev.Reload()
    loss = [(e.step, e.value) for e in ev.Scalars("train/loss")]
    assert loss == [(1, 4.0), (2, 3.0), (4, 1.0)]
    assert [e.value for e in ev.Scalars("elastic/world_size")] == [2.0, 2.0, 2.0]
    assert [e.value for e in ev.Scalars("elastic/global_batch")] == [8.0, 8.0, 8.0]


def test_other_ranks_and_s3_runs_write_no_files(tmp_path):
    m = MetricsLogger(str(tmp_path), rank=1, log_every=1, total_steps=2, world=2, micro=4,
                      accum=1)
    m.step(_state(1), loss=1.0, lr=1e-3)
    m.close(_state(1))
    assert not (tmp_path / "tensorboard").exists()
    assert tensorboard_writer("s3://bucket/runs/demo") is None
