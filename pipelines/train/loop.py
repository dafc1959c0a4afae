"""The Ray Train worker loop, top to bottom: settings -> engine -> resume -> epochs of steps,
each followed by metrics, the testing hooks, evaluation and checkpointing. Every piece is a
component of this package with its own tests (docs/architecture.md, "Training")."""

from __future__ import annotations

import functools
import logging
import os
import time
from typing import Any

import ray.train
import ray.train.torch
import torch

from worldclip.pipelines import elastic
from worldclip.pipelines.ingest import Source
from worldclip.pipelines.train import hooks
from worldclip.pipelines.train.checkpointer import Checkpointer
from worldclip.pipelines.train.config import LoopConfig
from worldclip.pipelines.train.engine import build_engine, init_distributed, skip_cpu_shm_op
from worldclip.pipelines.train.evaluator import Evaluator
from worldclip.pipelines.train.metrics import MetricsLogger
from worldclip.pipelines.train.step import StepRunner
from worldclip.pipelines.train.stream import EpochStream
from worldclip.pipelines.train.tokenizer import run_tokenizer, tokenizer_path

log = logging.getLogger(__name__)


def train_loop(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker; config is build_trainer's train_loop_config."""
    run = LoopConfig.from_dict(config)
    s, total = run.settings, run.total_steps
    if not s.use_gpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # before DeepSpeed is imported
        skip_cpu_shm_op()
    init_distributed()
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(s.seed)
    started_at = time.time()
    # the batch plan of this world size: the global batch is fixed, micro-batch x
    # accumulation adapt; a checkpoint of another world size is resharded (elastic.py)
    gbs = s.pairs_per_step
    micro, accum = elastic.batch_plan(gbs, world, s.batch_size_per_worker)
    tokenizer = functools.partial(run_tokenizer, run.tokenizer)
    checkpointer = Checkpointer(rank, ctx.get_local_rank(), s.zero_stage, s.checkpoint_every,
                                tokenizer, record_keys=s.record_keys)
    saved = checkpointer.saved_state()
    reshard = checkpointer.needs_reshard(saved, world)
    parts = build_engine(s, run.vocab_size, total, world, micro, accum, load_universal=reshard)
    engine = parts.engine
    state, convert_s = checkpointer.restore(engine, saved, reshard)
    if rank == 0 and saved is not None:
        log.info("resumed at step %d, epoch %d on %d workers (checkpoint of %d%s)",
                 state.step, state.epoch, world, saved.world_size,
                 ", resharded" if reshard else "")
    state.begin_run(world, micro, accum, gbs, reshard, convert_s, started_at)

    source, tok_dir = Source.open(run.data), tokenizer_path(run.tokenizer)
    metrics = MetricsLogger(run.run_dir, rank, s.log_every, total, world, micro, accum)
    evaluator = Evaluator(run.eval_data, tokenizer, s.eval_every, s.zero_stage, rank)
    runner = StepRunner(engine, ray.train.torch.get_device(), s.precision == "bf16", world,
                        accum, keys=checkpointer.keys)
    while state.epoch < s.epochs and state.step < total:
        epoch = EpochStream(source, tok_dir, parts.image_size, s, state, rank, world, micro,
                            accum)
        state.begin_epoch()
        runner.reset()
        for mb in epoch.micro_batches():
            if state.step >= total:
                break
            totals = runner.micro_batch(mb, state.epoch, state.step)
            if totals is None:
                continue
            gap = state.finish_step(totals, parts.lr)
            if gap and rank == 0:
                log.error("step %d: %d positions of the global batch had no row (a curated "
                          "file holds fewer pairs than its stats say)", state.step, gap)
            if s.zero_stage < 3:
                engine.module.clamp_logit_scale_()
            metrics.step(state, totals.loss, parts.lr)
            hooks.after_step(s, state.step, rank, world, run.run_dir)
            if evaluator.due(state.step):
                evaluator.report(engine.module, state, totals.loss)
            checkpointer.maybe_save("step", engine, state, totals.loss)
        if not state.finish_epoch(epoch.rows, epoch.steps, total):
            break
        checkpointer.maybe_save("epoch", engine, state, state.last_loss)
    checkpointer.maybe_save("end", engine, state, state.last_loss)
    metrics.close(state)
