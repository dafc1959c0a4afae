"""Elastic training: the same optimisation and exact data accounting at any world size.

A run may lose and gain Ray Train workers (spot preemption, autoscaling; docs/operations.md,
"Elastic training and preemption"). Three things make a resize invisible to the optimiser:

- the global batch G (`train.global_batch`) is fixed; a world of W workers gives each rank
  G / W pairs per optimizer step, cut into `grad_accum` micro-batches of at most
  `train.batch_size_per_worker` (`batch_plan`);
- the epoch's pair sequence is one global order (files in a seeded order, rows shuffled within
  each file; pipelines/ingest.py), independent of W. Optimizer step s of the epoch consumes
  positions [s*G, (s+1)*G); rank r of W takes the slice [s*G + r*G/W, s*G + (r+1)*G/W)
  (`rank_of`, `micro_ranges`). A checkpoint stores the global position, so after W -> W' the
  pairs of the epoch are exactly those of an uninterrupted run: none twice, none skipped;
- a ZeRO checkpoint written by W ranks is converted with DeepSpeed's own universal-checkpoint
  converter (deepspeed.checkpoint.ds_to_universal) and loaded with `checkpoint.load_universal`
  when the world size changed (`universal_copy`).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import logging
import math
import os
import time
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


# ============================================================== worker range and batch plan

def worker_range(num_workers: Any) -> tuple[int, int]:
    """`train.num_workers` (an int, or [min, max] for elastic training) as (min, max)."""
    if isinstance(num_workers, int) and not isinstance(num_workers, bool):
        return num_workers, num_workers
    lo, hi = (int(x) for x in list(num_workers))
    return lo, hi


def global_batch(tc: Any) -> int:
    """`train.global_batch`, or by default the pairs per step of the current settings at the
    largest world size: batch_size_per_worker x max workers x grad_accum."""
    if tc["global_batch"]:
        return int(tc["global_batch"])
    return (int(tc["batch_size_per_worker"]) * worker_range(tc["num_workers"])[1]
            * int(tc["grad_accum"]))


def batch_plan(global_bs: int, world: int, max_micro: int, min_accum: int = 1
               ) -> tuple[int, int]:
    """(micro-batch, gradient accumulation) per rank for a world of `world` ranks: the fewest
    accumulation steps (at least min_accum) whose micro-batch fits max_micro and divides the
    rank's share G / W exactly."""
    if global_bs % world:
        raise ValueError(f"train.global_batch={global_bs} is not divisible by a world of "
                         f"{world} workers; choose a multiple of every world size in "
                         "train.num_workers")
    share = global_bs // world
    for accum in range(max(1, min_accum), share + 1):
        if share % accum == 0 and share // accum <= max_micro:
            return share // accum, accum
    return 1, share


def check_divisible(global_bs: int, lo: int, hi: int) -> list[int]:
    """World sizes in [lo, hi] that do not divide the global batch (must be none)."""
    return [w for w in range(lo, hi + 1) if global_bs % w]


def rank_of(pos: np.ndarray, global_bs: int, world: int) -> np.ndarray:
    """Which rank of `world` takes each global position of the epoch."""
    return (np.asarray(pos, np.int64) % global_bs) // (global_bs // world)


def micro_ranges(start_step: int, steps: int, global_bs: int, world: int, rank: int,
                 micro: int, accum: int) -> Iterator[tuple[int, int]]:
    """[lo, hi) position ranges of this rank's micro-batches, step by step, from start_step
    to the epoch's last full step."""
    share = global_bs // world
    for s in range(start_step, steps):
        base = s * global_bs + rank * share
        for a in range(accum):
            yield base + a * micro, base + (a + 1) * micro


def micro_batches(blocks: Iterable[dict[str, np.ndarray]], ranges: Iterable[tuple[int, int]]
                  ) -> Iterator[dict[str, np.ndarray]]:
    """Cut this rank's stream (blocks of rows in increasing `pos`) into the planned
    micro-batches by position. Rows of a dropped (undecodable) image are missing, so a
    micro-batch can be short; it never borrows rows of the next one, which keeps the
    checkpoint position exact."""
    it = iter(blocks)
    buf: dict[str, np.ndarray] | None = None
    done = False
    for lo, hi in ranges:
        while not done and (buf is None or len(buf["pos"]) == 0 or buf["pos"][-1] < hi - 1):
            nxt = next(it, None)
            if nxt is None:
                done = True
            elif len(nxt["pos"]):
                buf = nxt if buf is None or not len(buf["pos"]) else \
                    {k: np.concatenate([buf[k], nxt[k]]) for k in buf}
        if buf is None:
            yield {}
            continue
        n = int(np.searchsorted(buf["pos"], hi, side="left"))
        first = int(np.searchsorted(buf["pos"], lo, side="left"))
        yield {k: v[first:n] for k, v in buf.items()}
        buf = {k: v[n:] for k, v in buf.items()}


def key_ids(keys: Iterable[str]) -> np.ndarray:
    """A stable int64 id per pair key (tensors cannot carry strings; docs/operations.md)."""
    return np.asarray([int.from_bytes(hashlib.blake2b(str(k).encode(), digest_size=8)
                                      .digest(), "little", signed=True) for k in keys],
                      np.int64)


# ============================================================== resharding ZeRO checkpoints

def universal_copy(ckpt_dir: str, tag: str, out_root: str) -> str:
    """Convert <ckpt_dir>/<tag> (a ZeRO 1/2/3 checkpoint of any world size) into DeepSpeed's
    universal format under <out_root>/<tag> with DeepSpeed's own converter; returns out_root
    (what engine.load_checkpoint(out_root, tag) reads with checkpoint.load_universal)."""
    from deepspeed.checkpoint import ds_to_universal

    out = os.path.join(out_root, tag)
    if os.path.exists(os.path.join(out_root, "latest_universal")):
        return out_root  # converted already (another rank of this node, or a retry)
    args = argparse.Namespace(input_folder=os.path.join(ckpt_dir, tag), output_folder=out,
                              num_extract_workers=1, num_merge_workers=1,
                              keep_temp_folder=False, strict=True, inject_missing_state=True)
    t0 = time.time()
    with contextlib.redirect_stdout(io.StringIO()):  # the converter prints progress bars
        ds_to_universal.main(args)
    log.info("converted %s to a universal checkpoint in %.1fs", ckpt_dir, time.time() - t0)
    return out_root


def universal_dir(ckpt_dir: str, step: int) -> str:
    """A node-local folder for the universal copy of one checkpoint, the same for every rank
    of the node (they convert once and share it)."""
    h = hashlib.sha1(f"{os.path.realpath(ckpt_dir)}:{step}".encode()).hexdigest()[:16]
    return os.path.join(os.environ.get("TMPDIR", "/tmp"), "worldclip-universal", h)


def needs_reshard(saved_world: int | None, world: int, zero_stage: int) -> bool:
    """ZeRO 1-3 shard optimizer state (and, at 3, weights) by world size: a checkpoint of
    another world size must be converted. Stage 0 checkpoints hold the full state."""
    return zero_stage > 0 and saved_world is not None and int(saved_world) != int(world)


def steps_in_epoch(rows: int, global_bs: int) -> int:
    """Full global batches of an epoch; the rest of the epoch (its tail) is not trained on
    and is accounted as `epoch_tail` in the run's state."""
    return rows // global_bs if global_bs > 0 else 0


def lcm_range(lo: int, hi: int) -> int:
    """The smallest global batch every world size in [lo, hi] divides (for error hints)."""
    out = 1
    for w in range(lo, hi + 1):
        out = out * w // math.gcd(out, w)
    return out
