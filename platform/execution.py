"""Ray execution for the stages: one place that wires per-item work onto the cluster.

Stages describe work as items (one JSON-able dict per shard) and a class holding expensive
state (LID model, automata) with a pure per-item method; this module runs that as Ray Data
tasks with the placement rules every stage needs (docs/operations.md, "Measured pitfalls"):

- tasks are SPREAD over the nodes (Ray Data's default for tasks; packed on the first node,
  small shards all went there);
- a task takes one item, or a few when there are many per worker (`items_per_task`), and a
  failure names its item;
- never more tasks at once than `concurrency`, nor than the work.

Warm state instead of an actor pool: a Ray Data actor pool costs ~2 s per run to start and
stop on a 2-core node (process spawn, imports, the state build), whatever the size of the
run, and the actors take over Ray's warm pooled workers, so the tasks after them start cold.
A task builds the worker's state once per worker process and keeps it for later tasks of
the same state key (`ItemWorker.state_key`): an incremental re-run, a rebalance or a Tune
trial in the same driver reuses the LID model and automata. A process holds one state per
worker class (a new key drops the old one first), and Ray retires idle workers.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import uuid
from collections.abc import Callable, Iterator
from typing import Any

# worker class -> (state key, instance), per worker process (see the module docstring)
_STATE: dict[str, tuple[str, ItemWorker]] = {}


class ItemWorker:
    """Base for the workers of map_items: subclasses build their state in __init__ and
    implement process(item) -> JSON-able result.

    REUSABLE: the state depends only on the constructor arguments (plain data), so a worker
    process keeps it between runs with equal arguments. Otherwise it is built once per run
    (e.g. arguments holding an ObjectRef)."""

    REUSABLE = False

    @classmethod
    def state_key(cls, ctor_args: tuple[Any, ...]) -> str:
        if not cls.REUSABLE:
            return uuid.uuid4().hex  # this run only
        return hashlib.sha256(pickle.dumps(ctor_args)).hexdigest()

    def process(self, item: dict[str, Any]) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[str]]:
        out = []
        for j in batch["job"]:
            try:
                out.append(json.dumps(self.process(json.loads(str(j))), default=str))
            except Exception as e:  # a task may hold several items: say which one failed
                e.add_note(f"{type(self).__name__} item: {str(j)[:300]}")
                raise
        return {"result": out}


def warm_instance(worker: type[ItemWorker], ctor_args: tuple[Any, ...], key: str
                  ) -> ItemWorker:
    """This process's instance of `worker` for `key`, built on first use."""
    name = f"{worker.__module__}.{worker.__qualname__}"
    held = _STATE.get(name)
    if held is None or held[0] != key:
        _STATE.pop(name, None)  # release the old state before building the new one
        _STATE[name] = (key, worker(*ctor_args))
    return _STATE[name][1]


def _run_batch(batch: dict[str, Any], worker: type[ItemWorker], ctor_args: tuple[Any, ...],
               key: str) -> dict[str, list[str]]:
    return warm_instance(worker, ctor_args, key)(batch)


def _no_budget_ramp(ds: Any) -> None:
    """Drop Ray Data's resource-budget backpressure for this dataset (Ray 2.60): it sizes an
    operator's concurrency from its observed output bytes, so an operator starts at ONE task
    until the first one finishes -- with shard-sized tasks, pass 1 ran its first shards one
    at a time (4 one-second items at concurrency 2: 3.2 s instead of 2.2 s). Our blocks are a
    few hundred bytes of JSON; TaskPoolStrategy(size) still caps the tasks (the concurrency
    cap policy). Another Ray without these names keeps its defaults, and tests/test_execution.py
    (which checks the policy list) fails."""
    try:
        from ray.data._internal.execution.backpressure_policy import (
            ENABLED_BACKPRESSURE_POLICIES,
            ENABLED_BACKPRESSURE_POLICIES_CONFIG_KEY,
        )
    except ImportError:  # pragma: no cover - another Ray version
        return
    ds.context.set_config(ENABLED_BACKPRESSURE_POLICIES_CONFIG_KEY,
                          [p for p in ENABLED_BACKPRESSURE_POLICIES
                           if p.__name__ != "ResourceBudgetBackpressurePolicy"])


# Ray Data's executor looks at its running tasks every 100 ms (Ray 2.60,
# WAIT_FOR_TASK_COMPLETION_TIMEOUT_S), so a worker idles ~0.1 s between two tasks (measured
# 112-144 ms on 2 cores): a quarter of pass 1 when a shard takes 0.4 s. With many items per
# worker a task takes several, keeping >= TASKS_PER_WORKER tasks per worker (a slow shard
# is not left alone at the end) and at most MAX_ITEMS_PER_TASK (a progress step stays small;
# pass 1 marks each finished shard, so a failed task redoes only its unfinished items).
MAX_ITEMS_PER_TASK = 8
TASKS_PER_WORKER = 2


def items_per_task(n: int, concurrency: int) -> int:
    return max(1, min(MAX_ITEMS_PER_TASK, n // (TASKS_PER_WORKER * max(1, int(concurrency)))))


def items_dataset(items: list[dict[str, Any]], per_task: int) -> Any:
    """The items as a Ray Data dataset of JSON rows, `per_task` per block, without the
    resource-budget ramp (_no_budget_ramp)."""
    import ray

    ds = ray.data.from_items([{"job": json.dumps(i)} for i in items],
                             override_num_blocks=-(-len(items) // per_task))
    _no_budget_ramp(ds)
    return ds


def map_items(items: list[dict[str, Any]], worker: type[ItemWorker],
              ctor_args: tuple[Any, ...], concurrency: int, num_cpus: float = 1
              ) -> Iterator[dict[str, Any]]:
    """Run `worker(*ctor_args).process(item)` over `items` as Ray Data tasks (at most
    `concurrency` at once, the state kept warm per worker process); yields the JSON
    results."""
    import ray

    if not items:
        return
    per_task = items_per_task(len(items), concurrency)
    ds = items_dataset(items, per_task).map_batches(
        _run_batch, fn_args=(worker, ctor_args, worker.state_key(ctor_args)),
        batch_size=per_task, num_cpus=num_cpus,
        compute=ray.data.TaskPoolStrategy(size=max(1, min(int(concurrency), len(items)))))
    for row in ds.iter_rows():
        yield json.loads(row["result"])


def submit_tasks(fn: Callable[..., Any], chunks: list[Any], *args: Any,
                 num_cpus: float = 1) -> list[Any]:
    """fn(chunk, *args) for every chunk as Ray tasks, started: their ObjectRefs in chunk
    order (the caller does other work meanwhile, then ray.get)."""
    import ray

    task = ray.remote(num_cpus=num_cpus)(fn)
    return [task.remote(c, *args) for c in chunks]


def run_tasks(fn: Callable[..., Any], chunks: list[Any], *args: Any,
              num_cpus: float = 1) -> list[Any]:
    """fn(chunk, *args) for every chunk as Ray tasks; results in chunk order."""
    import ray

    return ray.get(submit_tasks(fn, chunks, *args, num_cpus=num_cpus))


def chunked(items: list[Any], size: int) -> list[list[Any]]:
    size = max(1, int(size))
    return [items[i: i + size] for i in range(0, len(items), size)]
