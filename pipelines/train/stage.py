"""`worldclip train` and `worldclip export` on the driver: the step plan, the Ray Train
TorchTrainer (elastic worker range, failure and checkpoint policy), the fit, the HF export."""

from __future__ import annotations

import logging
import os
import posixpath
import time
from typing import Any

import ray.train
from omegaconf import DictConfig, OmegaConf
from ray.train.torch import TorchTrainer

from worldclip.pipelines import elastic
from worldclip.pipelines.checkpoint_io import (
    EXPORT_DIR,
    STATE_FILE,
    export_checkpoint,
    latest_checkpoint,
)
from worldclip.pipelines.curate import balance
from worldclip.pipelines.ingest import Source, file_row_counts
from worldclip.pipelines.join import prepare_train_data
from worldclip.pipelines.train.loop import train_loop
from worldclip.pipelines.train.state import TrainState
from worldclip.pipelines.train.tokenizer import prepare_tokenizer
from worldclip.platform import storage
from worldclip.platform.config import save_config
from worldclip.platform.overlap import check_io
from worldclip.platform.runtime import init_ray

log = logging.getLogger(__name__)


def plan_steps(cfg: DictConfig) -> int:
    """Optimizer steps the run will take (for the lr schedule): per epoch, the full global
    batches of the epoch's pairs -- the same at every world size (pipelines/elastic.py)."""
    tc = cfg.train
    src = Source.open(tc.data)
    per_step = elastic.global_batch(tc)
    total = 0
    for epoch in range(tc.epochs):
        rows = sum(file_row_counts(src, list(src.files), tc.seed, epoch))
        total += elastic.steps_in_epoch(rows, per_step)
    if tc.max_steps:
        total = min(total, tc.max_steps)
    if total <= 0:
        raise ValueError(f"train.data={tc.data}: too few curated pairs for one global batch "
                         f"of {per_step} pairs; lower train.global_batch (or "
                         "train.batch_size_per_worker) or curate more data")
    return total


def run_dir(cfg: DictConfig) -> str:
    return storage.join(cfg.train.out, cfg.train.name)


def build_trainer(cfg: DictConfig, extra: dict[str, Any] | None = None) -> TorchTrainer:
    tc = cfg.train
    tok_url, vocab = prepare_tokenizer(cfg)
    config = {"train": OmegaConf.to_container(tc, resolve=True), "data": tc.data,
              "tokenizer": tok_url, "vocab_size": vocab, "total_steps": plan_steps(cfg),
              "run_dir": run_dir(cfg), "eval_data": cfg.eval.data, **(extra or {})}
    resources = {"CPU": tc.cpus_per_worker, **tc.worker_resources}
    if tc.use_gpu:
        resources["GPU"] = tc.gpus_per_worker
    # elastic: Ray Train starts with what it gets in [min, max], shrinks when a worker or node
    # dies and grows when nodes join (docs/operations.md, "Elastic training and preemption")
    lo, hi = elastic.worker_range(tc.num_workers)
    storage.makedirs(tc.out)
    path = storage.strip_scheme(tc.out)
    return TorchTrainer(
        train_loop,
        train_loop_config=config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=lo if lo == hi else (lo, hi), use_gpu=tc.use_gpu,
            resources_per_worker=resources, placement_strategy=tc.placement_strategy,
            elastic_resize_monitor_interval_s=float(tc.resize_interval_s)),
        run_config=ray.train.RunConfig(
            name=tc.name, storage_path=path,
            storage_filesystem=storage.arrow_filesystem(tc.out),
            failure_config=ray.train.FailureConfig(max_failures=tc.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=tc.keep_checkpoints)),
    )


def check_raw_inputs(cfg: DictConfig) -> None:
    """Online data by reference reads the raw shards every epoch, so their folders are inputs
    of train too: train.out may not be inside one (docs/operations.md, "Inputs are
    read-only"). The CLI's key check (platform/overlap.py) sees only train.data."""
    b = balance.read(str(cfg.train.data))
    if b is None:
        return
    folders = sorted({posixpath.dirname(str(s["shard"]).rstrip("/")) for s in b.shards})
    check_io({f"raw shard folder of train.data [{i}]": f for i, f in enumerate(folders)},
             {"train.out": str(cfg.train.out)})


def run(cfg: DictConfig) -> dict[str, Any]:
    """`worldclip train`: fit (resuming if the run exists), then export a HF directory."""
    check_raw_inputs(cfg)
    init_ray(cfg)
    started = time.time()
    prepare_train_data(cfg)  # text-first: join img2dataset's output by key (docs/curation.md)
    save_config(cfg, run_dir(cfg))
    result = build_trainer(cfg).fit()
    if result.error:
        raise RuntimeError(f"training failed: {result.error}")
    export_url = storage.join(run_dir(cfg), EXPORT_DIR)
    with result.checkpoint.as_directory() as d:
        state = TrainState.load(os.path.join(d, STATE_FILE))
        export_checkpoint(d, export_url)
    return {"steps": state.step, "epochs": state.epoch, "seen_pairs": state.seen_pairs,
            "final_loss": state.history[-1][1] if state.history else None,
            "first_loss": state.history[0][1] if state.history else None,
            "dropped_images": state.dropped_images, "export": export_url,
            # kept by curation = trained + dropped at ingest (by reason) + trimmed + missing
            # + not reached, per epoch (platform/accounting.py ingest_epoch_account)
            "trained_pairs": state.trained_pairs, "dropped_at_ingest": dict(state.ingest_drops),
            "missing_rows": state.missing_rows, "epoch_accounts": state.epoch_accounts,
            "checkpoint": result.checkpoint.path, "wall_s": round(time.time() - started, 1)}


def run_export(cfg: DictConfig) -> dict[str, Any]:
    """`worldclip export`: latest checkpoint of the run -> <run>/export (HF format)."""
    ckpt = latest_checkpoint(run_dir(cfg))
    out = storage.join(run_dir(cfg), EXPORT_DIR)
    export_checkpoint(storage.local_dir(ckpt), out)
    return {"checkpoint": ckpt, "export": out}
