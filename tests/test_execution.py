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


class Sleeper(ItemWorker):
    def process(self, item: dict[str, Any]) -> list[float]:
        t0 = time.time()
        time.sleep(float(item["s"]))
        return [t0, time.time()]


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


def test_items_overlap_up_to_the_cap(ray_session):
    # long enough that a cold worker process (imports: ~1 s) still starts inside the first
    spans = list(map_items([{"s": 3.0} for _ in range(4)], Sleeper, (), 2))
    starts = sorted(s for s, _ in spans)
    # the first two start together (the ramp would start the second after the first ends)
    first_end = min(e for _, e in spans)
    assert starts[1] < first_end
    # never more than 2 at once
    for t in starts:
        assert sum(s <= t < e for s, e in spans) <= 2


class Fails(ItemWorker):
    def process(self, item: dict[str, Any]) -> None:
        if item["i"] == 5:
            raise ValueError("bad shard")


def test_items_per_task_keeps_tasks_per_worker_and_a_cap():
    from worldclip.platform.execution import MAX_ITEMS_PER_TASK, items_per_task

    assert items_per_task(2, 2) == 1 and items_per_task(20, 2) == 2
    assert items_per_task(10**6, 2) == MAX_ITEMS_PER_TASK
    for n in range(1, 200):
        k = items_per_task(n, 2)
        assert 1 <= k <= MAX_ITEMS_PER_TASK and (k == 1 or n // k >= 4 * 2)


def test_a_failing_item_is_named_even_when_a_task_holds_several(ray_session):
    import pytest

    with pytest.raises(Exception) as caught:
        list(map_items([{"i": i} for i in range(40)], Fails, (), 2))
    # Ray's error text carries the worker's traceback, with the note naming the item
    assert "bad shard" in str(caught.value) and '"i": 5' in str(caught.value)
