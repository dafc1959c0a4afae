"""tune/ray_compat.py: each Ray workaround does its job, and each test here FAILS when
Ray changes what the workaround relies on or fixes what it works around (then revisit
ray_compat.py and RAY_WRITTEN_FOR)."""

from __future__ import annotations

from worldclip.pipelines.tune import paths, ray_compat
from worldclip.pipelines.tune.search import METRIC
from worldclip.platform import storage


def test_restored_asha_remembers_finished_trials(tmp_path):
    """Tune restores trials but not the scheduler: ResumableASHA replays a finished trial's
    reports, so a later trial below it at a rung is still stopped after a restore."""
    from ray.tune.experiment import Trial
    from ray.tune.schedulers import ASHAScheduler, TrialScheduler

    def make(cls, *args):
        s = cls(*args, time_attr="step", max_t=6, grace_period=2, reduction_factor=2,
                stop_last_trials=False)
        s.set_search_properties(METRIC, "max")
        return s

    done = Trial("run_trial", trial_id="a_00000", stub=True)
    done.set_status(Trial.TERMINATED)
    storage.write_json(paths.reports_url(str(tmp_path), "a_00000"),
                       [{"step": 2, METRIC: 0.5}, {"step": 4, METRIC: 0.6}])
    new = Trial("run_trial", trial_id="a_00001", stub=True)
    restored, fresh = make(ray_compat.ResumableASHA, str(tmp_path)), make(ASHAScheduler)
    for sched in (restored, fresh):  # what Tune.restore does: re-add every trial
        sched.on_trial_add(None, done)
        sched.on_trial_add(None, new)
    worse = {"step": 2, METRIC: 0.4}
    assert restored.on_trial_result(None, new, worse) == TrialScheduler.STOP
    assert fresh.on_trial_result(None, new, worse) == TrialScheduler.CONTINUE  # Tune alone


def test_written_for_this_ray(caplog):
    """On a Ray upgrade this fails first: re-run this file, then update RAY_WRITTEN_FOR."""
    import ray

    assert ray.__version__ == ray_compat.RAY_WRITTEN_FOR
    assert ray_compat.check_ray_version()
    with caplog.at_level("ERROR", logger=ray_compat.__name__):
        assert not ray_compat.check_ray_version("2.61.0")
    assert "written for ray 2.60.0" in caplog.text and "ray_compat.py" in caplog.text


def test_tune_still_does_not_restore_the_scheduler():
    """ResumableASHA exists because Tuner.restore brings back trials, searcher and callbacks
    but not the scheduler. When Ray saves or restores it, this fails: drop the replay."""
    import inspect

    from ray.tune.execution.tune_controller import TuneController

    saved = inspect.getsource(TuneController.__getstate__)
    assert '"_scheduler_alg"' in saved  # left out of the saved experiment state
    for method in (TuneController.save_to_dir, TuneController.resume):
        assert "scheduler" not in inspect.getsource(method), method.__name__
    # the public methods the replay uses
    from ray.tune.schedulers import ASHAScheduler

    params = list(inspect.signature(ASHAScheduler.on_trial_result).parameters)
    assert params == ["self", "tune_controller", "trial", "result"]


def test_private_worker_group_hook_has_the_shape_we_use(tmp_path):
    """PlacementGroupRecorder relies on Ray Train v2's private WorkerGroupCallback and on
    worker_group.get_worker_group_state().placement_group_handle.placement_group."""
    import dataclasses

    from ray.train.v2._internal.execution.callback import WorkerGroupCallback
    from ray.train.v2._internal.execution.worker_group.placement_group_handle import (
        PlacementGroupHandle,
    )
    from ray.train.v2._internal.execution.worker_group.state import WorkerGroupState
    from ray.train.v2._internal.execution.worker_group.worker_group import WorkerGroup

    assert ray_compat.WORKER_GROUP_CALLBACK.endswith(WorkerGroupCallback.__qualname__)
    assert callable(WorkerGroupCallback.after_worker_group_start)
    assert callable(WorkerGroup.get_worker_group_state)
    assert "placement_group_handle" in {f.name for f in dataclasses.fields(WorkerGroupState)}
    assert isinstance(inspect_attr(PlacementGroupHandle, "placement_group"), property)
    recorder = ray_compat.placement_group_recorder(str(tmp_path / "pgs.json"))
    assert isinstance(recorder, WorkerGroupCallback)


def inspect_attr(cls: type, name: str) -> object:
    return next(vars(c)[name] for c in cls.__mro__ if name in vars(c))


def test_a_dead_actors_placement_group_stays_reserved_until_released(ray_session, tmp_path):
    """The leak: a group created by an actor (as Ray Train's controller creates its workers')
    outlives the actor while the job lives. When Ray removes it with its creator, this fails:
    drop the recorder and ReleaseStoppedTrials. release_placement_groups frees it."""
    import time

    import pytest
    import ray
    from ray.util.placement_group import placement_group

    @ray.remote(num_cpus=0)
    class Owner:
        def reserve(self) -> str:
            pg = placement_group([{"CPU": 0.5}])
            ray.get(pg.ready(), timeout=60)
            return pg.id.hex()

    owner = Owner.remote()
    h = ray.get(owner.reserve.remote(), timeout=120)
    ray.kill(owner)
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(owner.reserve.remote(), timeout=60)
    time.sleep(3)  # GCS removes a creator's groups within about a second when it does
    assert ray_compat.placement_group_state(h) == "CREATED"  # still reserved: the leak
    url = str(tmp_path / "placement_groups.json")
    storage.write_json(url, [h])
    assert ray_compat.release_placement_groups(url) == 1
    deadline = time.time() + 30
    while ray_compat.placement_group_state(h) != "REMOVED" and time.time() < deadline:
        time.sleep(0.2)
    assert ray_compat.placement_group_state(h) == "REMOVED"
    assert ray_compat.release_placement_groups(url) == 0  # idempotent
