"""platform/execution.py on a real local Ray: warm per-process state, the concurrency cap, and
that the first items of a run do run side by side (Ray Data's resource-budget ramp is off)."""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from ray import cloudpickle

from worldclip.platform.execution import ItemWorker, map_items, warm_instance

# the worker classes below travel by value: Ray's workers cannot import this test module
cloudpickle.register_pickle_by_value(sys.modules[__name__])


class Stamp(ItemWorker):
    """Reusable state: (pid, when built) tells which process built it, and when."""

    REUSABLE = True

    def __init__(self, tag: str) -> None:
        self.state = [os.getpid(), time.time(), tag]

    def process(self, item: dict[str, Any]) -> list[Any]:
        return self.state


class PerRun(Stamp):
    REUSABLE = False


def _states(worker: type, tag: str, n: int = 2) -> set[tuple[Any, ...]]:
    return {tuple(r) for r in map_items([{"i": i} for i in range(n)], worker, (tag,), 1)}


def test_state_is_built_once_per_process_and_key(ray_session):
    first = _states(Stamp, "a")
    assert len(first) == 1  # concurrency 1: one process, one state for both items
    assert _states(Stamp, "a") == first  # the next run with equal arguments reuses it
    other = _states(Stamp, "b")
    assert {s[2] for s in other} == {"b"} and not other & first  # new arguments: rebuilt
    once, again = _states(PerRun, "a"), _states(PerRun, "a")
    assert len(once) == 1 and not once & again  # not reusable: built once per run


def test_warm_instance_holds_one_state_per_class():
    a = warm_instance(Stamp, ("x",), "k1")
    assert warm_instance(Stamp, ("x",), "k1") is a
    b = warm_instance(Stamp, ("y",), "k2")
    assert b is not a and b.state[2] == "y"
    assert warm_instance(Stamp, ("x",), "k1") is not a  # k1 was dropped when k2 came


class Rendezvous(ItemWorker):
    """Arrives in a shared folder, then waits (up to a minute) for `parties` items to have
    arrived: it only succeeds if that many run at the same time, however loaded the machine.
    Also records how many items were running at once (files present while it runs)."""

    def process(self, item: dict[str, Any]) -> list[Any]:
        d, i = item["dir"], item["i"]
        open(os.path.join(d, f"arrived-{i}"), "w").close()
        running = os.path.join(d, f"running-{i}")
        open(running, "w").close()
        peak = 0
        deadline = time.time() + 60
        while time.time() < deadline:
            names = os.listdir(d)
            peak = max(peak, sum(n.startswith("running-") for n in names))
            if sum(n.startswith("arrived-") for n in names) >= item["parties"]:
                break
            time.sleep(0.05)
        time.sleep(0.3)
        peak = max(peak, sum(n.startswith("running-") for n in os.listdir(d)))
        os.remove(running)
        arrived = sum(n.startswith("arrived-") for n in os.listdir(d))
        return [arrived >= item["parties"], peak]


def test_the_budget_ramp_is_off_and_the_cap_policy_on(ray_session):
    # Ray Data's resource-budget policy started the second task only once the first had
    # finished (a delay, measured 1 s for 1 s items, that a loaded machine hides from any
    # timing test): the datasets map_items builds run without it, capped by TaskPoolStrategy
    from ray.data._internal.execution.backpressure_policy import (
        ENABLED_BACKPRESSURE_POLICIES_CONFIG_KEY,
    )

    from worldclip.platform.execution import items_dataset

    ds = items_dataset([{"i": i} for i in range(4)], 2)
    names = {p.__name__ for p in ds.context.get_config(ENABLED_BACKPRESSURE_POLICIES_CONFIG_KEY)}
    assert "ResourceBudgetBackpressurePolicy" not in names
    assert "ConcurrencyCapBackpressurePolicy" in names
    assert ds.count() == 4 and ds.num_blocks() == 2


def test_items_overlap_up_to_the_cap(ray_session, tmp_path):
    # the first two items run together (a rendezvous: neither finishes until both started) ...
    first = tmp_path / "first"
    first.mkdir()
    out = list(map_items([{"dir": str(first), "i": i, "parties": 2} for i in range(2)],
                         Rendezvous, (), 2))
    assert all(ok for ok, _ in out)
    # ... and never more than the cap at once
    capped = tmp_path / "capped"
    capped.mkdir()
    out = list(map_items([{"dir": str(capped), "i": i, "parties": 0} for i in range(6)],
                         Rendezvous, (), 2))
    assert max(peak for _, peak in out) <= 2


class Fails(ItemWorker):
    def process(self, item: dict[str, Any]) -> None:
        if item["i"] == 5:
            raise ValueError("bad shard")


def test_items_per_task_keeps_tasks_per_worker_and_a_cap():
    from worldclip.platform.execution import (
        MAX_ITEMS_PER_TASK,
        TASKS_PER_WORKER,
        items_per_task,
    )

    assert items_per_task(2, 2) == 1 and items_per_task(20, 2) == 5
    assert items_per_task(10**6, 2) == MAX_ITEMS_PER_TASK
    for n in range(1, 200):
        k = items_per_task(n, 2)
        assert 1 <= k <= MAX_ITEMS_PER_TASK and (k == 1 or n // k >= TASKS_PER_WORKER * 2)


def test_a_failing_item_is_named_even_when_a_task_holds_several(ray_session):
    import pytest

    with pytest.raises(Exception) as caught:
        list(map_items([{"i": i} for i in range(40)], Fails, (), 2))
    # Ray's error text carries the worker's traceback, with the note naming the item
    assert "bad shard" in str(caught.value) and '"i": 5' in str(caught.value)
