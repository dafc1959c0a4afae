"""Train step time: Ray Train + DeepSpeed ZeRO-2 vs plain torch DDP, 2 CPU ranks (gloo).

Every variant trains the same ClipModel on the same synthetic tensors (no data loading, so the
comparison is engine + framework overhead), with the same per-rank batch, the same torch
AdamW (recipe param groups: no decay on 1-D/bias/norm/logit scale), the same ClipLoss
(local loss, gather with grad), gradient clipping at 1.0 (DeepSpeed's setting from
`train.deepspeed_config`, applied by hand for DDP) and the logit-scale clamp after each step:

  torch DDP               DistributedDataParallel, 2 processes (torch.multiprocessing), gloo
  DeepSpeed ZeRO-2        deepspeed.initialize(train.deepspeed_config(...)), 2 processes, no Ray
  Ray Train + ZeRO-2      the same engine inside a TorchTrainer with 2 workers (1 CPU each)
  Ray Train + DDP         (--ray-ddp) DDP inside a TorchTrainer: Ray Train's own overhead

Model: the `tiny` preset widened so that compute dominates a step: both towers --width wide
(default 128, 4 heads), 2 layers, --image-size 64 px with 8 px patches (64 patches), 77
tokens, 8,000-token vocabulary. Reported: median step time of rank 0 over --steps steps after
--warmup steps. DS_ACCELERATOR=cpu and DeepSpeed's shm comm op build is skipped
(`skip_cpu_shm_op`). Goal: Ray Train + ZeRO-2 / DDP <= 1.15x.

    RAY_USAGE_STATS_ENABLED=0 OMP_NUM_THREADS=1 DS_ACCELERATOR=cpu \
        .venv/bin/python bench/bench_train_step.py [--steps 20] [--batch 32] [--width 128]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import tempfile
import time
from typing import Any

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

WORLD = 2


def model_config(opts: dict[str, Any]) -> Any:
    from worldclip.models.presets import build_config

    w, heads = opts["width"], max(1, opts["width"] // 32)
    tower = {"hidden_size": w, "intermediate_size": 4 * w, "num_attention_heads": heads,
             "projection_dim": w}
    return build_config("tiny", vocab_size=8000, projection_dim=w,
                        vision_config={**tower, "image_size": opts["image_size"]},
                        text_config=tower)


def synthetic_batch(opts: dict[str, Any], rank: int) -> tuple[Any, Any, Any]:
    """Fixed per-rank tensors: pixels, token ids with one eos (id 2) per row, mask."""
    import torch

    g = torch.Generator().manual_seed(1000 + rank)
    b, s = opts["batch"], opts["image_size"]
    pixels = torch.randn(b, 3, s, s, generator=g)
    lengths = torch.randint(5, 77, (b,), generator=g)
    ids = torch.randint(4, 8000, (b, 77), generator=g)
    pos = torch.arange(77).expand(b, 77)
    ids = torch.where(pos == lengths[:, None] - 1, torch.full_like(ids, 2), ids)
    ids = torch.where(pos >= lengths[:, None], torch.ones_like(ids), ids)  # pad id 1
    mask = (pos < lengths[:, None]).long()
    return pixels, ids, mask


def skip_cpu_shm_op() -> None:
    """Skip DeepSpeed's shm comm op build on CPU (~33 s; gloo never uses it).

    `import deepspeed.comm.torch as m` binds the *torch* package (deepspeed.comm re-exports
    a name `torch`), so patch the submodule through sys.modules.
    """
    import importlib

    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None


def train_steps(engine_kind: str, opts: dict[str, Any], rank: int, world: int,
                ddp_wrap: Any = None) -> list[float]:
    """Build model + optimizer for `engine_kind` (ddp | zero2) on an initialised process group
    and time warmup + steps training steps; returns the timed steps' seconds."""
    import torch

    from worldclip.models.clip import ClipModel, param_groups
    from worldclip.models.loss import ClipLoss

    torch.manual_seed(0)
    model = ClipModel(model_config(opts))
    opt_kwargs = {"lr": 4e-4, "betas": (0.9, 0.95), "eps": 1e-6}
    loss_fn = ClipLoss(local_loss=True, gather_with_grad=True)
    pixels, ids, mask = synthetic_batch(opts, rank)

    if engine_kind == "zero2":
        import deepspeed

        from worldclip.pipelines.train import deepspeed_config

        skip_cpu_shm_op()
        tc = {"zero_stage": 2, "offload": False, "use_gpu": False, "precision": "fp32",
              "batch_size_per_worker": opts["batch"], "grad_accum": 1}
        opt = torch.optim.AdamW(param_groups(model, 0.1), **opt_kwargs)
        engine, _, _, _ = deepspeed.initialize(model=model, optimizer=opt,
                                               config=deepspeed_config(tc, world))

        def step() -> None:
            loss = loss_fn(*engine(pixels, ids, mask))
            engine.backward(loss)
            engine.step()
            engine.module.clamp_logit_scale_()
    else:
        wrapped = (ddp_wrap or torch.nn.parallel.DistributedDataParallel)(model)
        opt = torch.optim.AdamW(param_groups(model, 0.1), **opt_kwargs)

        def step() -> None:
            loss = loss_fn(*wrapped(pixels, ids, mask))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            model.clamp_logit_scale_()

    times = []
    for i in range(opts["warmup"] + opts["steps"]):
        t0 = time.perf_counter()
        step()
        if i >= opts["warmup"]:
            times.append(time.perf_counter() - t0)
    return times


# ============================================================== without Ray: 2 processes

def _spawned(rank: int, engine_kind: str, opts: dict[str, Any], port: int, out: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(WORLD))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    times = train_steps(engine_kind, opts, rank, WORLD)
    if rank == 0:
        with open(out, "w") as f:
            json.dump(times, f)
    dist.barrier()
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_plain(engine_kind: str, opts: dict[str, Any]) -> list[float]:
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "times.json")
        mp.spawn(_spawned, args=(engine_kind, opts, free_port(), out), nprocs=WORLD, join=True)
        with open(out) as f:
            return json.load(f)


# ============================================================== under Ray Train

def _ray_loop(config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    wrap = ray.train.torch.prepare_model if config["engine"] == "ddp" else None
    times = train_steps(config["engine"], config["opts"], ctx.get_world_rank(),
                        ctx.get_world_size(), ddp_wrap=wrap)
    if ctx.get_world_rank() == 0:  # Train V2's Result.metrics is None without a checkpoint
        with open(config["out"], "w") as f:
            json.dump(times, f)
    ray.train.report({"steps": len(times)})


def run_ray_train(engine_kind: str, opts: dict[str, Any], storage: str) -> list[float]:
    import ray.train
    from ray.train.torch import TorchTrainer

    out = os.path.join(storage, f"times-{engine_kind}.json")
    trainer = TorchTrainer(
        _ray_loop, train_loop_config={"engine": engine_kind, "opts": opts, "out": out},
        scaling_config=ray.train.ScalingConfig(num_workers=WORLD, use_gpu=False,
                                               resources_per_worker={"CPU": 1}),
        run_config=ray.train.RunConfig(name=f"bench-{engine_kind}-{time.time_ns()}",
                                       storage_path=storage))
    result = trainer.fit()
    if result.error:
        raise RuntimeError(f"Ray Train {engine_kind} failed: {result.error}")
    with open(out) as f:
        return json.load(f)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32, help="per rank")
    ap.add_argument("--width", type=int, default=128, help="width of both towers")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--ray-ddp", action=argparse.BooleanOptionalAction, default=True,
                    help="also time DDP under Ray Train")
    args = ap.parse_args()
    opts = {"steps": args.steps, "warmup": args.warmup, "batch": args.batch,
            "width": args.width, "image_size": args.image_size}
    load0 = os.getloadavg()[0]

    from worldclip.models.presets import flops_per_sample, param_count

    cfg = model_config(opts)
    results: dict[str, list[float]] = {}
    results["torch DDP"] = run_plain("ddp", opts)
    results["DeepSpeed ZeRO-2"] = run_plain("zero2", opts)

    import ray

    from worldclip.platform.runtime import worker_env

    ray.init(num_cpus=4, include_dashboard=False, runtime_env={"env_vars": worker_env()},
             logging_level="WARNING")
    try:
        with tempfile.TemporaryDirectory(prefix="bench-train-") as storage:
            results["Ray Train + ZeRO-2"] = run_ray_train("zero2", opts, storage)
            if args.ray_ddp:
                results["Ray Train + DDP"] = run_ray_train("ddp", opts, storage)
    finally:
        ray.shutdown()

    base = statistics.median(results["torch DDP"])
    print(f"model: tiny widened to {args.width} (2+2 layers, {args.image_size} px, patch 8), "
          f"{param_count(cfg) / 1e6:.2f}M params, {flops_per_sample(cfg) / 1e9:.3f} GFLOP "
          f"fwd/sample; batch {args.batch}/rank x {WORLD} ranks (gloo, OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS')}); median of {args.steps} steps after "
          f"{args.warmup} warm-up")
    print(f"load average {load0:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print()
    print(f"{'engine':<22}{'median ms':>11}{'p10 ms':>9}{'p90 ms':>9}{'samples/s':>11}"
          f"{'vs DDP':>8}")
    for name, ts in results.items():
        med = statistics.median(ts)
        q = statistics.quantiles(ts, n=10) if len(ts) > 1 else [med] * 9
        print(f"{name:<22}{med * 1e3:>11.1f}{q[0] * 1e3:>9.1f}{q[-1] * 1e3:>9.1f}"
              f"{WORLD * args.batch / med:>11,.0f}{med / base:>7.2f}x")
    print("goal: Ray Train + ZeRO-2 / torch DDP <= 1.15x")


if __name__ == "__main__":
    main()
