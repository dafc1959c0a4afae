"""Checkpoints of a run: when to save, what a checkpoint directory holds, and resume.

The only place that reports a checkpoint to Ray Train. Every rank writes its DeepSpeed shard
into one directory reported with ray.train.report(checkpoint=...) to the run's storage (local
or S3); rank 0 adds the TrainState, the model config and the tokenizer (the layout is
pipelines/checkpoint_io.py's). Resume (same train.name and train.out, or after a worker dies
under FailureConfig) restores the engine and continues at the exact step and data position; a
checkpoint of another world size goes through DeepSpeed's universal checkpoint
(pipelines/elastic.py, docs/operations.md "Elastic training and preemption").
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
from typing import Any, Literal

import ray
import ray.train
import torch.distributed as dist

from worldclip.pipelines import elastic
from worldclip.pipelines.checkpoint_io import (
    CKPT_TAG,
    MODEL_CONFIG_FILE,
    STATE_FILE,
    TOKENIZER_DIR,
    data_position_file,
)
from worldclip.pipelines.train.state import TrainState
from worldclip.platform import checkpoints

log = logging.getLogger(__name__)

SaveEvent = Literal["step", "epoch", "end"]


def save_due(event: SaveEvent, step: int, every: int, last_saved: int) -> bool:
    """When a checkpoint is written: every `every` steps (train.checkpoint_every), or with
    every=0 at the end of each epoch; and at the end of the run unless its last step was
    just saved (or the run resumed at its end). last_saved: -1 before any save."""
    if event == "step":
        return bool(every) and step % every == 0
    if event == "epoch":
        return not every
    return last_saved != step


def write_checkpoint(d: str, engine: Any, state: TrainState, rank: int, node: str,
                     tokenizer: Any | None) -> None:
    """This rank's part of a checkpoint directory: its DeepSpeed shard and data position;
    rank 0 also the state, the model config and the tokenizer (save_pretrained, not a copy:
    the tokenizer may be a hub id such as XLM-V or mT5)."""
    engine.save_checkpoint(d, tag=CKPT_TAG)
    with open(os.path.join(d, data_position_file(rank)), "w") as f:
        json.dump({"pos": state.pos, "epoch": state.epoch, "node": node}, f)
    if rank == 0:
        state.saved_at = time.time()
        state.save(os.path.join(d, STATE_FILE))
        with open(os.path.join(d, MODEL_CONFIG_FILE), "w") as f:
            json.dump(engine.module.config.to_dict(), f)
        if tokenizer is not None:
            tokenizer.save_pretrained(os.path.join(d, TOKENIZER_DIR))


class Checkpointer:
    """Save / resume for one rank of a Ray Train run; owns the last saved step and, with
    train.record_keys, the key ids trained on since then (`keys`)."""

    def __init__(self, rank: int, local_rank: int, zero_stage: int, every: int,
                 tokenizer: Any, record_keys: bool = False) -> None:
        self.rank, self.local_rank, self.zero_stage, self.every = (rank, local_rank,
                                                                   zero_stage, every)
        self.tokenizer = tokenizer  # a callable: the run's tokenizer, loaded on first save
        self.keys: list[int] | None = [] if record_keys else None
        self.last_saved = -1
        self._resume = contextlib.ExitStack()
        self._dir: str | None = None

    # ------------------------------------------------------------------ resume

    def saved_state(self) -> TrainState | None:
        """The state of the checkpoint Ray Train resumes from (S3: downloaded here), if any;
        read before the engine is built (its world size decides a reshard)."""
        ckpt = ray.train.get_checkpoint()
        if not ckpt:
            return None
        self._dir = self._resume.enter_context(ckpt.as_directory())
        saved = TrainState.load(os.path.join(self._dir, STATE_FILE))
        self.last_saved = saved.step
        return saved

    def needs_reshard(self, saved: TrainState | None, world: int) -> bool:
        return saved is not None and elastic.needs_reshard(saved.world_size or None, world,
                                                           self.zero_stage)

    def restore(self, engine: Any, saved: TrainState | None, reshard: bool
                ) -> tuple[TrainState, float]:
        """(the state to continue from, seconds spent converting to a universal checkpoint);
        a fresh TrainState when there is nothing to resume."""
        with self._resume:
            if saved is None or self._dir is None:
                return TrainState(), 0.0
            return self.load(engine, self._dir, saved, reshard)

    def load(self, engine: Any, ckpt_dir: str, saved: TrainState, reshard: bool
             ) -> tuple[TrainState, float]:
        """Restore the engine from ckpt_dir, every file through weights_only + DeepSpeed's
        allow-list (docs/operations.md, "Checkpoints load no code"). Another world size:
        converted once per node, the copy removed after loading (also when the load fails:
        a refused or broken checkpoint leaves no converted copy)."""
        convert_s = 0.0
        load_dir = ckpt_dir
        if reshard:
            t0 = time.time()
            load_dir = elastic.universal_dir(ckpt_dir, saved.step)
            if self.local_rank == 0:
                with checkpoints.weights_only_everywhere():
                    elastic.universal_copy(ckpt_dir, CKPT_TAG, load_dir)
            dist.barrier()
            convert_s = time.time() - t0
        try:
            checkpoints.load_engine_checkpoint(engine, load_dir, CKPT_TAG)
        except BaseException:
            if reshard and self.local_rank == 0:
                shutil.rmtree(load_dir, ignore_errors=True)
            raise
        if not saved.world_size:  # written before elastic training: per-rank positions
            saved.pos = 0
        if reshard:
            dist.barrier()
            if self.local_rank == 0:
                shutil.rmtree(load_dir, ignore_errors=True)
        return saved, convert_s

    # ------------------------------------------------------------------ save

    def maybe_save(self, event: SaveEvent, engine: Any, state: TrainState, loss: float
                   ) -> None:
        """All ranks: save when `save_due` says so."""
        if save_due(event, state.step, self.every, self.last_saved):
            self.save(engine, state, loss)

    def save(self, engine: Any, state: TrainState, loss: float) -> None:
        """All ranks: write the checkpoint directory and report it with the step's metrics."""
        self._gather_keys(state)
        with tempfile.TemporaryDirectory() as d:
            write_checkpoint(d, engine, state, self.rank,
                             ray.get_runtime_context().get_node_id(),
                             self.tokenizer() if self.rank == 0 else None)
            ray.train.report(state.metrics(loss),
                             checkpoint=ray.train.Checkpoint.from_directory(d))
        self.last_saved = state.step

    def _gather_keys(self, state: TrainState) -> None:
        """train.record_keys: rank 0's state gets every rank's key ids since the last
        checkpoint, so a checkpoint holds exactly the pairs its steps trained on (an audit of
        the data accounting across resizes; tests/test_elastic.py)."""
        if self.keys is None:
            return
        out: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(out, self.keys)
        if self.rank == 0:
            state.keys.extend(k for part in out for k in part)
        self.keys.clear()
