"""Every Ray-version workaround of `worldclip tune`, in one place (docs/operations.md, "Tuning").

Written for and measured with ray RAY_WRITTEN_FOR; `check_ray_version` logs an error on any
other version, and tests/test_tune_ray_compat.py fails when Ray changes what these rely on:

1. Tuner.restore restores trials and the searcher but not the scheduler: ResumableASHA
   replays a finished trial's stored reports into ASHA's rungs (public scheduler methods).
2. A stopped trial leaks its Ray Train placement group: Ray removes a (non-detached) group
   only when both its creator actor and its job are dead, and the job -- the sweep's driver --
   lives on; Ray Train's own PlacementGroupCleaner needs the state API (a dashboard) that a
   local Ray without dashboard lacks. The leaked CPUs/GPUs stay reserved and later trials
   starve. PlacementGroupRecorder notes each worker group's placement group in the trial's
   folder -- the one private Ray API left (Ray Train v2's WorkerGroupCallback is the only hook
   that sees the worker group) -- and ReleaseStoppedTrials removes them on the driver with the
   public placement-group API once the trial has ended.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import ray
from ray.tune import Callback
from ray.tune.schedulers import ASHAScheduler

from worldclip.pipelines.tune.paths import pg_list_url, reports_url
from worldclip.platform import storage

log = logging.getLogger(__name__)

RAY_WRITTEN_FOR = "2.60.0"
# the private class PlacementGroupRecorder subclasses (no public hook sees the worker group)
WORKER_GROUP_CALLBACK = "ray.train.v2._internal.execution.callback.WorkerGroupCallback"


def check_ray_version(version: str | None = None) -> bool:
    """True on the Ray these workarounds were written for; otherwise log what to re-check."""
    version = version or ray.__version__
    if version == RAY_WRITTEN_FOR:
        return True
    log.error("ray %s: the Tune workarounds in worldclip/pipelines/tune/ray_compat.py were "
              "written for ray %s; run tests/test_tune_ray_compat.py to see which still "
              "hold (a stopped trial may keep its placement group, a restored sweep may forget "
              "ASHA's rungs)", version, RAY_WRITTEN_FOR)
    return False


# ---------------------------------------------------------------- 1. ASHA across restore

class ResumableASHA(ASHAScheduler):
    """ASHA that survives Tuner.restore: when a finished trial is re-added on restore, its
    stored reports (reports.json in its folder) are replayed through on_trial_result, so the
    resumed sweep stops later trials against the same rivals as an uninterrupted one."""

    def __init__(self, tune_out: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.tune_out = tune_out

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        from ray.tune.experiment import Trial

        super().on_trial_add(tune_controller, trial)
        url = reports_url(self.tune_out, trial.trial_id)
        if trial.status != Trial.TERMINATED or not storage.exists(url):
            return
        for rep in storage.read_json(url):  # the decision is ignored: the trial has ended
            self.on_trial_result(tune_controller, trial, rep)


# ---------------------------------------------------------------- 2. placement-group leak

def placement_group_recorder(url: str) -> Any:
    """A Ray Train callback that appends each worker group's placement group id to `url`, or
    None (logged) when this Ray has no such hook: the trial then runs, unguarded."""
    try:
        from ray.train.v2._internal.execution.callback import WorkerGroupCallback
    except ImportError as e:
        log.error("ray %s has no %s (%s): a trial stopped by ASHA may keep its placement "
                  "group reserved; see worldclip/pipelines/tune/ray_compat.py", ray.__version__,
                  WORKER_GROUP_CALLBACK, e)
        return None

    class PlacementGroupRecorder(WorkerGroupCallback):
        """Controller side: notes each worker group's placement group in the trial's folder."""

        def after_worker_group_start(self, worker_group: Any) -> None:
            try:
                pg = worker_group.get_worker_group_state().placement_group_handle.placement_group
                ids = storage.read_json(url) if storage.exists(url) else []
                storage.write_json(url, [*ids, pg.id.hex()])
            except Exception as e:  # noqa: BLE001 - bookkeeping must never fail training
                log.warning("could not record the train placement group: %s", e)

    return PlacementGroupRecorder()


def placement_group_state(pg_hex: str) -> str | None:
    """CREATED, PENDING, REMOVED, ... of a placement group by its hex id (None: unknown)."""
    from ray.util.placement_group import PlacementGroup

    pg = PlacementGroup(ray.PlacementGroupID(bytes.fromhex(pg_hex)))
    return (ray.util.placement_group_table(pg) or {}).get("state")


def release_placement_groups(url: str) -> int:
    """Remove the recorded placement groups (url: a trial's list) still reserved; -> count."""
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    if not storage.exists(url):
        return 0
    n = 0
    for h in storage.read_json(url):
        state = placement_group_state(h)
        if state and state != "REMOVED":
            try:
                remove_placement_group(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(h))))
                n += 1
            except Exception as e:  # noqa: BLE001 - removed meanwhile by its owner
                log.debug("placement group %s: %s", h, e)
    if n:
        log.info("released %d placement group(s) left by a stopped trial (%s)", n, url)
    return n


class ReleaseStoppedTrials(Callback):
    """Driver side: a while after a trial ended (its actor, controller and workers are gone
    by then), remove the train placement groups it left behind."""

    def __init__(self, tune_out: str, delay_s: float = 10.0) -> None:
        self.tune_out = tune_out
        self.delay_s = delay_s
        self.ended: dict[str, float] = {}

    def _ended(self, trial: Any) -> None:
        self.ended[trial.trial_id] = time.monotonic()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ended(trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ended(trial)

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        now = time.monotonic()
        for tid, t in list(self.ended.items()):
            if now - t >= self.delay_s:
                del self.ended[tid]
                release_placement_groups(pg_list_url(self.tune_out, tid))


def release_all_trials(tune_out: str) -> int:
    """After the sweep: the groups of every trial (also those ended in its last seconds)."""
    return sum(release_placement_groups(u) for u in storage.glob(pg_list_url(tune_out, "*")))
