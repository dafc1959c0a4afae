"""Ray execution for the stages: one place that wires per-item work onto the cluster.

Stages describe work as items (one JSON-able dict per shard) and a pure per-item function
or a class holding expensive state (LID model, automata); this module turns that into Ray
Data actor pools or Ray tasks with the placement rules every stage needs
(docs/operations.md, "Measured pitfalls"):

- actors are SPREAD over the nodes (packed on the first node, small shards all went there);
- one block per item, so an actor takes one shard at a time and a failure names it;
- the pool is never larger than the work.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any


def map_items(items: list[dict[str, Any]], actor: type, ctor_args: tuple[Any, ...],
              concurrency: int, num_cpus: float = 1) -> Iterator[dict[str, Any]]:
    """Run `actor(*ctor_args)(batch)` over `items` on a Ray Data actor pool; yields the
    actor's JSON results. The actor is called with {"job": [json of one item]} and returns
    {"result": [json]} (`ItemActor` does that wrapping)."""
    import ray

    if not items:
        return
    ds = ray.data.from_items([{"job": json.dumps(i)} for i in items],
                             override_num_blocks=len(items))
    ds = ds.map_batches(actor, fn_constructor_args=ctor_args, batch_size=1, num_cpus=num_cpus,
                        scheduling_strategy="SPREAD",
                        compute=ray.data.ActorPoolStrategy(size=max(1, min(int(concurrency),
                                                                           len(items)))))
    for row in ds.iter_rows():
        yield json.loads(row["result"])


class ItemActor:
    """Base for the actors of map_items: subclasses build their state in __init__ and
    implement process(item) -> JSON-able result."""

    def process(self, item: dict[str, Any]) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[str]]:
        return {"result": [json.dumps(self.process(json.loads(str(j))), default=str)
                           for j in batch["job"]]}


def run_tasks(fn: Callable[..., Any], chunks: list[Any], *args: Any,
              num_cpus: float = 1) -> list[Any]:
    """fn(chunk, *args) for every chunk as Ray tasks; results in chunk order."""
    import ray

    task = ray.remote(num_cpus=num_cpus)(fn)
    return ray.get([task.remote(c, *args) for c in chunks])


def chunked(items: list[Any], size: int) -> list[list[Any]]:
    size = max(1, int(size))
    return [items[i: i + size] for i in range(0, len(items), size)]
