"""Training: MetaClip2 on Ray Train workers with DeepSpeed ZeRO 0-3, fed by the Ray Data stream.

Reads top to bottom like torchtitan's train.py: build model -> DeepSpeed engine (ZeRO stage,
offload, precision from config) -> loss -> data stream -> resume -> loop -> checkpoint.
Every piece (DeepSpeed config, lr schedule, state, stream) is a separate, tested function.

Checkpoints: every rank writes its DeepSpeed shard into one directory reported with
ray.train.report(checkpoint=...) to the run's storage (local or S3). Resume (same train.name
and train.out, or after a worker dies under FailureConfig) restores the engine and continues
at the exact step and data position. `export` consolidates the ZeRO shards into a HF
save_pretrained directory that transformers.MetaClip2Model.from_pretrained loads.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

from worldclip.platform import storage

log = logging.getLogger(__name__)

CKPT_TAG = "ckpt"


# ============================================================== pure pieces

def deepspeed_config(tc: dict[str, Any], world_size: int, micro_batch: int | None = None,
                     grad_accum: int | None = None) -> dict[str, Any]:
    """DeepSpeed JSON config from train config (ZeRO stage, offload, precision, batch).
    micro_batch/grad_accum: the elastic batch plan of this world size (pipelines/elastic.py);
    by default train.batch_size_per_worker and train.grad_accum."""
    zero: dict[str, Any] = {"stage": int(tc["zero_stage"])}
    if tc["offload"]:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": bool(tc["use_gpu"])}
        if int(tc["zero_stage"]) == 3:
            zero["offload_param"] = {"device": "cpu", "pin_memory": bool(tc["use_gpu"])}
    if int(tc["zero_stage"]) == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = False
    b = int(micro_batch or tc["batch_size_per_worker"])
    a = int(grad_accum or tc["grad_accum"])
    return {
        "train_micro_batch_size_per_gpu": b,
        "gradient_accumulation_steps": a,
        "train_batch_size": b * a * world_size,
        "zero_optimization": zero,
        "bf16": {"enabled": tc["precision"] == "bf16"},
        "fp16": {"enabled": tc["precision"] == "fp16"},
        "gradient_clipping": 1.0,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
        # a torch AdamW client optimizer (config "AdamW" compiles FusedAdam; docs/operations.md)
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
    }


def lr_at(step: int, base_lr: float, warmup: int, total: int) -> float:
    """Linear warm-up then cosine to 0 (docs/architecture.md, Training)."""
    if warmup > 0 and step < warmup:
        return base_lr * (step + 1) / warmup
    if total <= warmup:
        return base_lr
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * base_lr * (1.0 + math.cos(math.pi * progress))


@dataclass
class TrainState:
    """What a checkpoint must restore besides the engine: where training and data stand."""

    step: int = 0
    epoch: int = 0
    pos: int = 0  # global position in the epoch's pair order (a multiple of global_batch)
    seen_pairs: int = 0
    dropped_images: int = 0
    # elastic training (pipelines/elastic.py): the world this state was written by, its batch
    # plan, the pairs of finished epochs' tails (no full global batch), micro-batch rows
    # trimmed to the smallest rank's (after undecodable images), one entry per (re)start
    world_size: int = 0
    micro_batch: int = 0
    grad_accum: int = 0
    global_batch: int = 0
    epoch_tail: int = 0
    trimmed_pairs: int = 0
    saved_at: float = 0.0
    resizes: list[dict[str, Any]] = field(default_factory=list)
    keys: list[int] = field(default_factory=list)  # train.record_keys: key ids trained on
    # every kept pair accounted for (platform/accounting.py ingest_epoch_account): pairs
    # trained on, dropped at ingest by reason, positions no row came for; per finished epoch
    # one account; the counters at the current epoch's start
    trained_pairs: int = 0
    ingest_drops: dict[str, int] = field(default_factory=dict)
    missing_rows: int = 0
    epoch_accounts: list[dict[str, Any]] = field(default_factory=list)
    epoch_start: dict[str, Any] = field(default_factory=dict)
    history: list[list[float]] = field(default_factory=list)  # [step, loss, lr]
    evals: list[list[float]] = field(default_factory=list)  # [step, zero-shot top-1] (rank 0)

    def save(self, path: str) -> None:
        with open(path, "w") as f:
            json.dump(asdict(self), f)

    @classmethod
    def load(cls, path: str) -> TrainState:
        with open(path) as f:
            return cls(**json.load(f))


# ============================================================== the worker loop

def skip_cpu_shm_op() -> None:
    """DeepSpeed compiles a shared-memory comm op at every CPU distributed init (~33 s,
    needs a compiler) that gloo training never uses (docs/operations.md)."""
    import importlib

    # not `import deepspeed.comm.torch as m`: deepspeed.comm re-exports a name `torch`, which
    # that statement would bind instead of the submodule
    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None


def train_loop(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker."""
    tc = config["train"]
    if not tc["use_gpu"]:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed
    import numpy as np
    import ray.train
    import torch
    import torch.distributed as dist

    from worldclip.models.clip import ClipModel, param_groups
    from worldclip.models.loss import ClipLoss
    from worldclip.models.presets import build_config
    from worldclip.pipelines import elastic
    from worldclip.pipelines.ingest import Source, file_row_counts, split_dropped, worker_stream
    from worldclip.platform import checkpoints
    from worldclip.platform.accounting import INGEST_DROP_REASONS

    if not tc["use_gpu"]:
        skip_cpu_shm_op()
    # Ray Train already set up torch.distributed (gloo on CPU, nccl on GPU); DeepSpeed's comm
    # layer wraps that group (zero.Init needs the real world size before initialize).
    deepspeed.init_distributed(dist_backend=dist.get_backend())
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(int(tc["seed"]))
    device = ray.train.torch.get_device()

    # -- model (MetaClip2 architecture, (1,)-shaped logit scale for DeepSpeed)
    tok_dir = tokenizer_path(config["tokenizer"])
    mcfg = build_config(tc["preset"], vocab_size=config["vocab_size"],
                        **({"vision_config": {"image_size": tc["image_size"]}}
                           if tc["image_size"] else {}))
    # -- batch plan of this world size: the global batch is fixed, micro-batch x accumulation
    # adapt; a checkpoint of another world size is resharded (pipelines/elastic.py)
    started_at = time.time()
    gbs = elastic.global_batch(tc)
    micro, accum = elastic.batch_plan(gbs, world, int(tc["batch_size_per_worker"]))
    ckpt = ray.train.get_checkpoint()
    resume = contextlib.ExitStack()
    ckpt_dir, saved = None, None
    if ckpt:
        ckpt_dir = resume.enter_context(ckpt.as_directory())  # S3: downloaded here
        saved = TrainState.load(os.path.join(ckpt_dir, "state.json"))
    reshard = saved is not None and elastic.needs_reshard(saved.world_size or None, world,
                                                           int(tc["zero_stage"]))
    ds_cfg = deepspeed_config(tc, world, micro, accum)
    if reshard:
        ds_cfg["checkpoint"] = {"load_universal": True}
    if int(tc["zero_stage"]) == 3:
        with deepspeed.zero.Init(config_dict_or_path=ds_cfg):
            model = ClipModel(mcfg, gradient_checkpointing=tc["gradient_checkpointing"])
    else:
        model = ClipModel(mcfg, gradient_checkpointing=tc["gradient_checkpointing"])
    image_size = mcfg.vision_config.image_size

    # -- engine: torch AdamW client optimizer, no decay on 1-D/bias/norm/logit scale
    opt = torch.optim.AdamW(param_groups(model, tc["weight_decay"]), lr=tc["lr"],
                            betas=(tc["beta1"], tc["beta2"]), eps=tc["eps"])
    total = int(config["total_steps"])
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_at(s, 1.0, int(tc["warmup_steps"]), total))
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=opt, lr_scheduler=sched,
                                           config=ds_cfg)
    loss_fn = ClipLoss(local_loss=True, gather_with_grad=True)

    # -- resume (another world size: DeepSpeed's universal checkpoint, converted once per node)
    state = TrainState()
    convert_s = 0.0
    with resume:
        if saved is not None:
            load_dir = ckpt_dir
            if reshard:
                t0 = time.time()
                load_dir = elastic.universal_dir(ckpt_dir, saved.step)
                if ctx.get_local_rank() == 0:
                    with checkpoints.weights_only_everywhere():
                        elastic.universal_copy(ckpt_dir, CKPT_TAG, load_dir)
                dist.barrier()
                convert_s = time.time() - t0
            # every file through weights_only + DeepSpeed's allow-list (docs/operations.md)
            try:
                checkpoints.load_engine_checkpoint(engine, load_dir, CKPT_TAG)
            except BaseException:  # a refused or broken checkpoint: no converted copy left
                if reshard and ctx.get_local_rank() == 0:
                    shutil.rmtree(load_dir, ignore_errors=True)
                raise
            state = saved
            if not state.world_size:  # written before elastic training: per-rank positions
                state.pos = 0
            if reshard:
                dist.barrier()
                if ctx.get_local_rank() == 0:
                    shutil.rmtree(load_dir, ignore_errors=True)
    if rank == 0 and saved is not None:
        log.info("resumed at step %d, epoch %d on %d workers (checkpoint of %d%s)",
                 state.step, state.epoch, world, saved.world_size,
                 ", resharded" if reshard else "")
    from_world, from_saved_at = state.world_size or None, state.saved_at or None
    state.world_size, state.micro_batch, state.grad_accum = world, micro, accum
    state.global_batch = gbs
    state.resizes.append({"step": state.step, "world": world, "micro_batch": micro,
                          "grad_accum": accum, "resharded": reshard,
                          "convert_s": round(convert_s, 3), "started_at": started_at,
                          "from_world": from_world, "ckpt_saved_at": from_saved_at,
                          "first_step_at": None})

    source = Source.open(config["data"])
    tb = _tensorboard(config) if rank == 0 else None
    t0, last_step_t = time.time(), time.time()
    reported = state.step if ckpt else -1
    keys: list[int] = []  # train.record_keys: key ids since the last checkpoint (this rank)
    while state.epoch < int(tc["epochs"]) and state.step < total:
        rows = sum(file_row_counts(source, list(source.files), int(tc["seed"]), state.epoch))
        steps = elastic.steps_in_epoch(rows, gbs)
        ds = worker_stream(source, tok_dir, image_size, int(tc["seed"]), state.epoch, rank,
                           world, start_pos=state.pos, scale_min=tc["crop_scale_min"],
                           num_cpus=float(tc["ingest_cpus"]), global_batch=gbs)
        blocks = ds.iter_batches(batch_size=None, batch_format="numpy",
                                 prefetch_batches=2) if ds else iter(())
        plan = elastic.micro_ranges(state.pos // gbs, steps, gbs, world, rank, micro, accum)
        loss_sum, dropped, trimmed = 0.0, 0, 0
        if state.epoch_start.get("epoch") != state.epoch:
            state.epoch_start = _epoch_counters(state)
        trained, why = 0, np.zeros(len(INGEST_DROP_REASONS), np.int64)
        for mb in elastic.micro_batches(blocks, plan):
            if state.step >= total:
                break
            # rows of pairs dropped at ingest (undecodable, over the read limits) counted by
            # reason, not trained on (docs/operations.md)
            mb, mb_why = split_dropped(mb)
            why += mb_why
            dropped += int(mb_why.sum())
            # every rank trains on the same number of rows (the contrastive all-gather needs
            # it): a micro-batch short of an undecodable image trims the others to its size
            have = len(mb.get("pos", ()))
            n = torch.tensor([have], dtype=torch.int64)
            dist.all_reduce(n, op=dist.ReduceOp.MIN)
            n = int(n)
            if n == 0:
                raise RuntimeError(f"epoch {state.epoch} step {state.step + 1}: a micro-batch "
                                   "has no decodable image on some rank; check the curated "
                                   "shards (the dropped images are logged)")
            trimmed += have - n
            trained += n
            if tc["record_keys"]:
                keys.extend(int(k) for k in mb["key_id"][:n])
            pixels = torch.from_numpy(mb["pixel_values"][:n]).to(device)
            if tc["precision"] == "bf16":
                pixels = pixels.to(torch.bfloat16)
            img, txt, scale = engine(pixels, torch.from_numpy(mb["input_ids"][:n]).to(device),
                                     torch.from_numpy(mb["attention_mask"][:n]).to(device))
            loss = loss_fn(img, txt, scale)
            engine.backward(loss)
            boundary = engine.is_gradient_accumulation_boundary()
            engine.step()
            loss_sum += float(loss.detach().float())
            if not boundary:
                continue
            # the step's loss over the whole global batch (the mean of the ranks' local losses
            # over equal rows), and the step's accounting summed over ranks
            agg = torch.tensor([loss_sum / accum, dropped, trimmed, trained, *why.tolist()],
                               dtype=torch.float64)
            dist.all_reduce(agg)
            loss_v = float(agg[0]) / world
            state.dropped_images += int(agg[1])
            state.trimmed_pairs += int(agg[2])
            state.trained_pairs += int(agg[3])
            for r, k in zip(INGEST_DROP_REASONS, agg[4:].tolist(), strict=True):
                if k:
                    state.ingest_drops[r] = state.ingest_drops.get(r, 0) + int(k)
            gap = gbs - int(agg[1]) - int(agg[2]) - int(agg[3])
            if gap:
                state.missing_rows += gap
                if rank == 0:
                    log.error("step %d: %d positions of the global batch had no row (a curated "
                              "file holds fewer pairs than its stats say)", state.step + 1, gap)
            loss_sum, dropped, trimmed, trained = 0.0, 0, 0, 0
            why[:] = 0
            state.step += 1
            state.pos = (state.pos // gbs + 1) * gbs
            state.seen_pairs += gbs
            if int(tc["zero_stage"]) < 3:
                engine.module.clamp_logit_scale_()
            lr = sched.get_last_lr()[0]
            state.history.append([state.step, loss_v, lr])
            if state.resizes[-1]["first_step_at"] is None:
                state.resizes[-1]["first_step_at"] = time.time()
            if rank == 0 and (state.step % int(tc["log_every"]) == 0 or state.step == 1):
                sps = gbs * int(tc["log_every"]) / max(1e-9, time.time() - last_step_t)
                last_step_t = time.time()
                log.info("step %d/%d epoch %d loss %.4f lr %.2e %.1f pairs/s seen %d "
                         "world %d (%d x %d)", state.step, total, state.epoch, loss_v, lr,
                         sps, state.seen_pairs, world, micro, accum)
                if tb:
                    tb.add_scalar("train/loss", loss_v, state.step)
                    tb.add_scalar("train/lr", lr, state.step)
                    # a resize is visible: world size and the batch plan that keeps G fixed
                    tb.add_scalar("elastic/world_size", world, state.step)
                    tb.add_scalar("elastic/micro_batch", micro, state.step)
                    tb.add_scalar("elastic/grad_accum", accum, state.step)
                    tb.add_scalar("elastic/global_batch", gbs, state.step)
            if tc["fail_at_step"] and state.step == int(tc["fail_at_step"]) \
                    and rank == world - 1:
                _maybe_die(config)
            if tc["throttle_step_s"]:  # testing hook: a slower step (docs/operations.md)
                time.sleep(float(tc["throttle_step_s"]))
            if tc["eval_every"] and state.step % int(tc["eval_every"]) == 0:
                _report_eval(engine, state, rank, loss_v, config)
            every = int(tc["checkpoint_every"])
            if every and state.step % every == 0:
                _gather_keys(state, keys, rank, tc)
                _report(engine, state, rank, loss_v, config)
                reported = state.step
        state.epoch_accounts.append(_epoch_account(state, rows, gbs))
        if state.step >= total:
            break
        state.epoch_tail += rows - steps * gbs  # accounted, not trained on this epoch
        state.epoch += 1
        state.pos = 0
        if not int(tc["checkpoint_every"]):
            _gather_keys(state, keys, rank, tc)
            _report(engine, state, rank, _last_loss(state), config)
            reported = state.step
    if reported != state.step:
        _gather_keys(state, keys, rank, tc)
        _report(engine, state, rank, _last_loss(state), config)
    if rank == 0:
        log.info("done: %d steps, %d pairs seen in %.1fs", state.step, state.seen_pairs,
                 time.time() - t0)
        if tb:
            tb.close()


def _gather_keys(state: TrainState, keys: list[int], rank: int, tc: dict[str, Any]) -> None:
    """train.record_keys: rank 0's state gets every rank's key ids since the last checkpoint,
    so a checkpoint holds exactly the pairs its steps trained on (an audit of the data
    accounting across resizes; tests/test_elastic.py)."""
    if not tc["record_keys"]:
        return
    import torch.distributed as dist

    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, keys)
    if rank == 0:
        state.keys.extend(k for part in out for k in part)
    keys.clear()


def _epoch_counters(state: TrainState) -> dict[str, Any]:
    return {"epoch": state.epoch, "step": state.step, "trained": state.trained_pairs,
            "dropped": dict(state.ingest_drops), "trimmed": state.trimmed_pairs}


def _epoch_account(state: TrainState, kept: int, gbs: int) -> dict[str, Any]:
    """The current epoch's account since its start (platform/accounting.py)."""
    from worldclip.platform.accounting import ingest_epoch_account

    s = state.epoch_start or _epoch_counters(state)
    dropped = {r: n - s["dropped"].get(r, 0) for r, n in state.ingest_drops.items()}
    return ingest_epoch_account(state.epoch, kept, (state.step - s["step"]) * gbs,
                                state.trained_pairs - s["trained"], dropped,
                                state.trimmed_pairs - s["trimmed"])


def _last_loss(state: TrainState) -> float:
    return state.history[-1][1] if state.history else 0.0


def _report(engine: Any, state: TrainState, rank: int, loss: float,
            config: dict[str, Any]) -> None:
    """All ranks: save the DeepSpeed shard + state into one dir and report it."""
    import ray
    import ray.train

    with tempfile.TemporaryDirectory() as d:
        engine.save_checkpoint(d, tag=CKPT_TAG)
        with open(os.path.join(d, f"data_rank{rank}.json"), "w") as f:
            json.dump({"pos": state.pos, "epoch": state.epoch,
                       "node": ray.get_runtime_context().get_node_id()}, f)
        if rank == 0:
            state.saved_at = time.time()
            state.save(os.path.join(d, "state.json"))
            with open(os.path.join(d, "model_config.json"), "w") as f:
                json.dump(engine.module.config.to_dict(), f)
            # save_pretrained, not a copy: the tokenizer may be a hub id (XLM-V, mT5)
            _tokenizer(config["tokenizer"]).save_pretrained(os.path.join(d, "tokenizer"))
        metrics = {"step": state.step, "epoch": state.epoch, "loss": loss,
                   "seen_pairs": state.seen_pairs, "dropped_images": state.dropped_images,
                   "trained_pairs": state.trained_pairs, "missing_rows": state.missing_rows,
                   **{f"dropped_at_ingest/{r}": n for r, n in state.ingest_drops.items()},
                   "world_size": state.world_size, "micro_batch": state.micro_batch,
                   "grad_accum": state.grad_accum, "global_batch": state.global_batch}
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))


_EVAL_CACHE: dict[str, Any] = {}


def _report_eval(engine: Any, state: TrainState, rank: int, loss: float,
                 config: dict[str, Any]) -> None:
    """All ranks report; rank 0 adds zero-shot top-1 on the eval set (for Tune's ASHA and
    the run's eval history). Under ZeRO-3 every rank runs the same eval forward passes, so
    the sharded parameters are fetched collectively as in training; below stage 3 rank 0
    alone evaluates its full replica."""
    import ray.train

    metrics: dict[str, Any] = {"step": state.step, "epoch": state.epoch, "loss": loss,
                               "seen_pairs": state.seen_pairs}
    if rank == 0 or int(config["train"]["zero_stage"]) == 3:
        from worldclip.pipelines import evaluate

        if "set" not in _EVAL_CACHE:
            _EVAL_CACHE["set"] = evaluate.load_eval_set(config["eval_data"])
        model = engine.module
        was_training = model.training
        m = evaluate.evaluate_model(model, _tokenizer(config["tokenizer"]), _EVAL_CACHE["set"])
        model.train(was_training)
        if rank == 0:
            metrics["zero_shot_top1"] = m["overall"]["top1"]
            metrics["i2t_r@1"] = m["overall"].get("i2t_r@1")
            state.evals.append([state.step, metrics["zero_shot_top1"]])
            log.info("step %d eval: zero-shot top-1 %.4f", state.step,
                     metrics["zero_shot_top1"])
    ray.train.report(metrics)


def _maybe_die(config: dict[str, Any]) -> None:
    """fail_at_step hook: SIGKILL this worker once per run (marker in the run's storage)."""
    marker = storage.join(config["run_dir"], "fault_injected")
    if storage.exists(marker):
        return
    storage.write_text(marker, "1")
    log.warning("fail_at_step: killing this worker (pid %d)", os.getpid())
    os.kill(os.getpid(), signal.SIGKILL)


def _tensorboard(config: dict[str, Any]) -> Any:
    run_dir = config["run_dir"]
    if storage.is_s3(run_dir):
        return None  # TensorBoard writes local files; the metrics are in the checkpoints
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(os.path.join(storage.strip_scheme(run_dir), "tensorboard"))


# ============================================================== driver side

def tokenizer_path(url: str) -> str:
    """What load_tokenizer takes for train.tokenizer: a local copy of an s3:// directory, a
    local directory, or a hub id (XLM-V, mT5) left as it is."""
    if storage.is_s3(url):
        return storage.local_dir(url)
    local = storage.strip_scheme(url)
    return local if os.path.isdir(local) else url


def _tokenizer(url: str) -> Any:
    """The run's tokenizer, loaded once per worker process (shared with the ingest)."""
    from worldclip.pipelines.ingest import cached_tokenizer

    return cached_tokenizer(tokenizer_path(url))


def prepare_tokenizer(cfg: DictConfig, captions: Iterable[str] | None = None,
                      url: str | None = None) -> tuple[str, int]:
    """The tokenizer URL and vocab size: a given HF tokenizer, or one trained on the curated
    captions and saved with the dataset (<data>/tokenizer). `worldclip tune` passes its own
    captions (every matched pair's) and url (<tune.out>/tokenizer): one for all trials."""
    from worldclip.models.tokenizer import load_tokenizer, train_tokenizer
    from worldclip.pipelines.ingest import Source

    tc = cfg.train
    url = tc.tokenizer or url or storage.join(tc.data, "tokenizer")
    if not tc.tokenizer and not storage.exists(storage.join(url, "tokenizer.json")):
        log.info("training a %d-token unigram tokenizer on the curated captions",
                 tc.tokenizer_vocab)
        with tempfile.TemporaryDirectory() as d:
            train_tokenizer(Source.open(tc.data).captions() if captions is None else captions,
                            vocab_size=tc.tokenizer_vocab, out_dir=d)
            storage.upload_dir(d, url)
    tok = load_tokenizer(tokenizer_path(url))
    return url, len(tok)


def plan_steps(cfg: DictConfig) -> int:
    """Optimizer steps the run will take (for the lr schedule): per epoch, the full global
    batches of the epoch's pairs -- the same at every world size (pipelines/elastic.py)."""
    from worldclip.pipelines import elastic
    from worldclip.pipelines.ingest import Source, file_row_counts

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


def build_trainer(cfg: DictConfig, extra: dict[str, Any] | None = None) -> Any:
    import ray.train
    from ray.train.torch import TorchTrainer

    from worldclip.pipelines import elastic

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


def run(cfg: DictConfig) -> dict[str, Any]:
    """`worldclip train`: fit (resuming if the run exists), then export a HF directory."""
    from worldclip.platform.config import save_config
    from worldclip.platform.runtime import init_ray

    init_ray(cfg)
    started = time.time()
    from worldclip.pipelines.join import prepare_train_data

    prepare_train_data(cfg)  # text-first: join img2dataset's output by key (docs/curation.md)
    save_config(cfg, run_dir(cfg))
    result = build_trainer(cfg).fit()
    if result.error:
        raise RuntimeError(f"training failed: {result.error}")
    export_url = storage.join(run_dir(cfg), "export")
    with result.checkpoint.as_directory() as d:
        state = TrainState.load(os.path.join(d, "state.json"))
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


# ============================================================== export

def consolidate(ckpt_dir: str) -> Any:
    """A ClipModel with the full fp32 weights of a (ZeRO-sharded) DeepSpeed checkpoint."""
    from transformers import MetaClip2Config

    from worldclip.models.clip import ClipModel
    from worldclip.models.export import load_state_dict_into
    from worldclip.platform.checkpoints import consolidate_zero

    with open(os.path.join(ckpt_dir, "model_config.json")) as f:
        mcfg = MetaClip2Config.from_dict(json.load(f))
    # zero_to_fp32 under weights_only + the allow-list: no code from the files runs
    sd = consolidate_zero(ckpt_dir, CKPT_TAG)
    model = ClipModel(mcfg)
    load_state_dict_into(model, sd)
    return model.eval()


def export_checkpoint(ckpt_dir: str, out_url: str) -> str:
    """Consolidate ZeRO shards -> HF save_pretrained dir (safetensors + tokenizer)."""
    from worldclip.models.export import save_hf
    from worldclip.models.tokenizer import load_tokenizer

    model = consolidate(ckpt_dir)
    tok = load_tokenizer(os.path.join(ckpt_dir, "tokenizer"))
    if storage.is_s3(out_url):
        with tempfile.TemporaryDirectory() as d:
            save_hf(model, d, tok)
            storage.upload_dir(d, out_url)
    else:
        save_hf(model, storage.strip_scheme(out_url), tok)
    log.info("exported HF MetaClip2 directory to %s", out_url)
    return out_url


def latest_checkpoint(url: str) -> str:
    """The newest checkpoint dir of a run dir (or url itself if it is a checkpoint)."""
    if storage.exists(storage.join(url, "state.json")):
        return url
    cands = [u.rsplit("/", 1)[0] for u in storage.glob(storage.join(url, "checkpoint_*",
                                                                     "state.json"))]
    if not cands:
        raise FileNotFoundError(f"{url}: no checkpoint (checkpoint_*/state.json); give a run "
                                "directory <train.out>/<train.name> or a checkpoint directory")
    return max(cands, key=lambda u: storage.read_json(storage.join(u, "state.json"))["step"])


def export_for_eval(path: str) -> str:
    """HF directory for a run dir or checkpoint (exported on first use)."""
    if storage.exists(storage.join(path, "config.json")):
        return path
    if storage.exists(storage.join(path, "export", "config.json")):
        return storage.join(path, "export")
    ckpt = latest_checkpoint(path)
    out = storage.join(ckpt, "export")
    if not storage.exists(storage.join(out, "config.json")):
        export_checkpoint(storage.local_dir(ckpt), out)
    return out


def run_export(cfg: DictConfig) -> dict[str, Any]:
    """`worldclip export`: latest checkpoint of the run -> <run>/export (HF format)."""
    ckpt = latest_checkpoint(run_dir(cfg))
    out = storage.join(run_dir(cfg), "export")
    export_checkpoint(storage.local_dir(ckpt), out)
    return {"checkpoint": ckpt, "export": out}
