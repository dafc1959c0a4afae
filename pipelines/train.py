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

import json
import logging
import math
import os
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

def deepspeed_config(tc: dict[str, Any], world_size: int) -> dict[str, Any]:
    """DeepSpeed JSON config from train config (ZeRO stage, offload, precision, batch)."""
    zero: dict[str, Any] = {"stage": int(tc["zero_stage"])}
    if tc["offload"]:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": bool(tc["use_gpu"])}
        if int(tc["zero_stage"]) == 3:
            zero["offload_param"] = {"device": "cpu", "pin_memory": bool(tc["use_gpu"])}
    if int(tc["zero_stage"]) == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = False
    b, a = int(tc["batch_size_per_worker"]), int(tc["grad_accum"])
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
        # a torch AdamW client optimizer (config "AdamW" compiles FusedAdam; CONVENTIONS.md)
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
    }


def lr_at(step: int, base_lr: float, warmup: int, total: int) -> float:
    """Linear warm-up then cosine to 0 (RECIPE.md section 5)."""
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
    pos: int = 0  # this rank's raw position in the epoch's stream
    seen_pairs: int = 0
    dropped_images: int = 0
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
    needs a compiler) that gloo training never uses (CONVENTIONS.md)."""
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
    import ray.train
    import torch
    import torch.distributed as dist

    from worldclip.models.clip import ClipModel, param_groups
    from worldclip.models.loss import ClipLoss
    from worldclip.models.presets import build_config
    from worldclip.pipelines.ingest import Source, worker_stream

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
    ds_cfg = deepspeed_config(tc, world)
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

    # -- resume
    state = TrainState()
    ckpt = ray.train.get_checkpoint()
    if ckpt:
        with ckpt.as_directory() as d:
            engine.load_checkpoint(d, tag=CKPT_TAG)
            state = TrainState.load(os.path.join(d, "state.json"))
            rank_file = os.path.join(d, f"data_rank{rank}.json")
            if os.path.exists(rank_file):
                with open(rank_file) as f:
                    state.pos = json.load(f)["pos"]
            else:  # world size changed: restart the epoch's data (documented)
                state.pos = 0
        if rank == 0:
            log.info("resumed at step %d, epoch %d", state.step, state.epoch)

    source = Source.open(config["data"])
    global_batch = int(tc["batch_size_per_worker"]) * int(tc["grad_accum"]) * world
    tb = _tensorboard(config) if rank == 0 else None
    t0, last_step_t = time.time(), time.time()
    reported = state.step if ckpt else -1
    while state.epoch < int(tc["epochs"]) and state.step < total:
        ds = worker_stream(source, tok_dir, image_size, int(tc["seed"]), state.epoch, rank,
                           world, start_pos=state.pos, scale_min=tc["crop_scale_min"],
                           num_cpus=float(tc["ingest_cpus"]))
        it = iter(ds.iter_torch_batches(batch_size=int(tc["batch_size_per_worker"]),
                                        drop_last=True, prefetch_batches=2)) if ds else iter(())
        while state.step < total:
            batch = next(it, None)
            # every rank must take the same number of steps: stop the epoch for all as soon
            # as one rank runs out (a tiny all-reduce per micro-batch)
            flag = torch.tensor([0 if batch is None else 1], dtype=torch.int64)
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
            if int(flag) == 0:
                break
            pixels = batch["pixel_values"].to(device)
            if tc["precision"] == "bf16":
                pixels = pixels.to(torch.bfloat16)
            img, txt, scale = engine(pixels, batch["input_ids"].to(device),
                                     batch["attention_mask"].to(device))
            loss = loss_fn(img, txt, scale)
            engine.backward(loss)
            boundary = engine.is_gradient_accumulation_boundary()
            engine.step()
            state.pos = int(batch["pos"][-1]) + 1
            state.dropped_images += int(batch["dropped"].sum())
            if not boundary:
                continue
            state.step += 1
            state.seen_pairs += global_batch
            if int(tc["zero_stage"]) < 3:
                engine.module.clamp_logit_scale_()
            lr = sched.get_last_lr()[0]
            loss_v = float(loss.detach().float())
            state.history.append([state.step, loss_v, lr])
            if rank == 0 and (state.step % int(tc["log_every"]) == 0 or state.step == 1):
                sps = global_batch * int(tc["log_every"]) / max(1e-9, time.time() - last_step_t)
                last_step_t = time.time()
                log.info("step %d/%d epoch %d loss %.4f lr %.2e %.1f pairs/s seen %d",
                         state.step, total, state.epoch, loss_v, lr, sps, state.seen_pairs)
                if tb:
                    tb.add_scalar("train/loss", loss_v, state.step)
                    tb.add_scalar("train/lr", lr, state.step)
            if tc["fail_at_step"] and state.step == int(tc["fail_at_step"]) \
                    and rank == world - 1:
                _maybe_die(config)
            if tc["eval_every"] and state.step % int(tc["eval_every"]) == 0:
                _report_eval(engine, state, rank, loss_v, config)
            every = int(tc["checkpoint_every"])
            if every and state.step % every == 0:
                _report(engine, state, rank, loss_v, config)
                reported = state.step
        if state.step >= total:
            break
        state.epoch += 1
        state.pos = 0
        if not int(tc["checkpoint_every"]):
            _report(engine, state, rank, _last_loss(state), config)
            reported = state.step
    if reported != state.step:
        _report(engine, state, rank, _last_loss(state), config)
    if rank == 0:
        log.info("done: %d steps, %d pairs seen in %.1fs", state.step, state.seen_pairs,
                 time.time() - t0)
        if tb:
            tb.close()


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
            state.save(os.path.join(d, "state.json"))
            with open(os.path.join(d, "model_config.json"), "w") as f:
                json.dump(engine.module.config.to_dict(), f)
            # save_pretrained, not a copy: the tokenizer may be a hub id (XLM-V, mT5)
            _tokenizer(config["tokenizer"]).save_pretrained(os.path.join(d, "tokenizer"))
        metrics = {"step": state.step, "epoch": state.epoch, "loss": loss,
                   "seen_pairs": state.seen_pairs, "dropped_images": state.dropped_images}
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
    """Optimizer steps the run will take (for the lr schedule): per epoch, the smallest
    worker's rows over the per-worker batch."""
    from worldclip.pipelines.ingest import Source, file_row_counts, worker_files

    tc = cfg.train
    src = Source.open(tc.data)
    per_step = tc.batch_size_per_worker * tc.grad_accum
    total = 0
    for epoch in range(tc.epochs):
        rows = [sum(file_row_counts(src, worker_files(src.files, tc.seed, epoch, r,
                                                      tc.num_workers), tc.seed, epoch))
                for r in range(tc.num_workers)]
        total += min(rows) // per_step
    if tc.max_steps:
        total = min(total, tc.max_steps)
    if total <= 0:
        raise ValueError(f"train.data={tc.data}: too few curated pairs for one step of "
                         f"{tc.num_workers} workers x {per_step} pairs; lower "
                         "train.batch_size_per_worker or curate more data")
    return total


def run_dir(cfg: DictConfig) -> str:
    return storage.join(cfg.train.out, cfg.train.name)


def build_trainer(cfg: DictConfig, extra: dict[str, Any] | None = None) -> Any:
    import ray.train
    from ray.train.torch import TorchTrainer

    tc = cfg.train
    tok_url, vocab = prepare_tokenizer(cfg)
    config = {"train": OmegaConf.to_container(tc, resolve=True), "data": tc.data,
              "tokenizer": tok_url, "vocab_size": vocab, "total_steps": plan_steps(cfg),
              "run_dir": run_dir(cfg), "eval_data": cfg.eval.data, **(extra or {})}
    resources = {"CPU": tc.cpus_per_worker}
    if tc.use_gpu:
        resources["GPU"] = tc.gpus_per_worker
    storage.makedirs(tc.out)
    path = storage.strip_scheme(tc.out)
    return TorchTrainer(
        train_loop,
        train_loop_config=config,
        scaling_config=ray.train.ScalingConfig(num_workers=tc.num_workers, use_gpu=tc.use_gpu,
                                               resources_per_worker=resources,
                                               placement_strategy=tc.placement_strategy),
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
            "checkpoint": result.checkpoint.path, "wall_s": round(time.time() - started, 1)}


# ============================================================== export

def consolidate(ckpt_dir: str) -> Any:
    """A ClipModel with the full fp32 weights of a (ZeRO-sharded) DeepSpeed checkpoint."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from transformers import MetaClip2Config

    from worldclip.models.clip import ClipModel
    from worldclip.models.export import load_state_dict_into

    with open(os.path.join(ckpt_dir, "model_config.json")) as f:
        mcfg = MetaClip2Config.from_dict(json.load(f))
    sd = get_fp32_state_dict_from_zero_checkpoint(ckpt_dir, tag=CKPT_TAG)
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
