"""Training metrics on rank 0: the step log line and TensorBoard scalars (loss, lr, and the
elastic batch plan, so a resize is visible)."""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from worldclip.pipelines.train.state import TrainState
from worldclip.platform import storage

log = logging.getLogger(__name__)


def tensorboard_writer(run_dir: str) -> Any:
    """A SummaryWriter into <run_dir>/tensorboard, or None: TensorBoard writes local files (on
    S3 the metrics are in the checkpoints), and the tensorboard package is optional."""
    if storage.is_s3(run_dir):
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter  # optional: needs `tensorboard`
    except ImportError:
        return None
    return SummaryWriter(os.path.join(storage.strip_scheme(run_dir), "tensorboard"))


class MetricsLogger:
    """Every log_every steps (and step 1) on rank 0: a log line with the throughput since the
    last one, and the same values as TensorBoard scalars. Other ranks log nothing."""

    def __init__(self, run_dir: str, rank: int, log_every: int, total_steps: int,
                 world: int, micro: int, accum: int) -> None:
        self.active = rank == 0
        self.log_every, self.total_steps = log_every, total_steps
        self.world, self.micro, self.accum = world, micro, accum
        self.writer = tensorboard_writer(run_dir) if self.active else None
        self.started = self.last_t = time.time()

    def step(self, state: TrainState, loss: float, lr: float) -> None:
        if not self.active or not (state.step % self.log_every == 0 or state.step == 1):
            return
        now = time.time()
        pairs_per_s = state.global_batch * self.log_every / max(1e-9, now - self.last_t)
        self.last_t = now
        log.info("step %d/%d epoch %d loss %.4f lr %.2e %.1f pairs/s seen %d world %d "
                 "(%d x %d)", state.step, self.total_steps, state.epoch, loss, lr, pairs_per_s,
                 state.seen_pairs, self.world, self.micro, self.accum)
        if self.writer is not None:
            scalars = {"train/loss": loss, "train/lr": lr,
                       # a resize is visible: world size and the batch plan that keeps G fixed
                       "elastic/world_size": self.world, "elastic/micro_batch": self.micro,
                       "elastic/grad_accum": self.accum,
                       "elastic/global_batch": state.global_batch}
            for tag, value in scalars.items():
                self.writer.add_scalar(tag, value, state.step)

    def close(self, state: TrainState) -> None:
        if not self.active:
            return
        log.info("done: %d steps, %d pairs seen in %.1fs", state.step, state.seen_pairs,
                 time.time() - self.started)
        if self.writer is not None:
            self.writer.close()
