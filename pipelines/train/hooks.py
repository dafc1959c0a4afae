"""Testing hooks of the train loop (docs/operations.md): fail_at_step kills a worker once per
run to prove the run survives worker loss; throttle_step_s slows every step so an autoscaler
test can act mid-run."""

from __future__ import annotations

import logging
import os
import signal
import time

from worldclip.pipelines.train.config import TrainSettings
from worldclip.platform import storage

log = logging.getLogger(__name__)


def after_step(s: TrainSettings, step: int, rank: int, world: int, run_dir: str) -> None:
    if s.fail_at_step and step == s.fail_at_step and rank == world - 1:
        kill_once(run_dir)
    if s.throttle_step_s:
        time.sleep(s.throttle_step_s)


def kill_once(run_dir: str) -> None:
    """SIGKILL this worker once per run (the marker in the run's storage says it happened)."""
    marker = storage.join(run_dir, "fault_injected")
    if storage.exists(marker):
        return
    storage.write_text(marker, "1")
    log.warning("fail_at_step: killing this worker (pid %d)", os.getpid())
    os.kill(os.getpid(), signal.SIGKILL)
