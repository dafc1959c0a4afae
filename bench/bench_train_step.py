"""Train step time: Ray Train + DeepSpeed ZeRO-2 vs plain torch DDP, 2 CPU ranks (gloo).

Every engine trains the same ClipModel on the same synthetic tensors (no data loading, so the
comparison is engine + framework overhead), with the same per-rank batch, the same torch
AdamW (recipe param groups: no decay on 1-D/bias/norm/logit scale), the same ClipLoss
(local loss, gather with grad), gradient clipping at 1.0 (DeepSpeed's setting from
`train.deepspeed_config`, applied by hand for DDP) and the logit-scale clamp after each step.

Two launches of 2 ranks each; each launch builds BOTH engines in the same processes and times
them in alternating blocks of steps (DDP, ZeRO-2, ZeRO-2, DDP, ...), so a shared machine's
load hits both alike:

  plain       2 processes (torch.multiprocessing.spawn), gloo: torch DDP and
              deepspeed.initialize(train.deepspeed_config(zero_stage=2)) -- no Ray
  Ray Train   a TorchTrainer with 2 workers (1 CPU each, local Ray num_cpus=4): DDP through
              ray.train.torch.prepare_model and the same DeepSpeed ZeRO-2 engine

The required ratio is Ray Train + ZeRO-2 over plain torch DDP (goal <= 1.15x); the table also
gives each engine against the DDP of its own launch (measured side by side).

Model: the `tiny` preset widened so that compute dominates a step: both towers --width wide
(default 128, 4 heads), 2 layers, --image-size 64 px with 8 px patches (64 patches), 77
tokens, 8,000-token vocabulary. Reported: median step time of rank 0. DS_ACCELERATOR=cpu, and
DeepSpeed's shm comm op build is skipped (`skip_cpu_shm_op`).

    RAY_USAGE_STATS_ENABLED=0 OMP_NUM_THREADS=1 DS_ACCELERATOR=cpu \
        .venv/bin/python bench/bench_train_step.py [--blocks 4] [--block-steps 4] [--width 128]
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


def build_step(engine_kind: str, opts: dict[str, Any], rank: int, world: int,
               ddp_wrap: Any = None) -> Any:
    """Model + optimizer + engine of `engine_kind` (ddp | zero2) on the initialised process
    group; returns a function doing one full training step."""
    import torch

    from worldclip.models.clip import ClipModel, param_groups
    from worldclip.models.loss import ClipLoss

    torch.manual_seed(0)
    model = ClipModel(model_config(opts))
    opt_kwargs = {"lr": 4e-4, "betas": (0.9, 0.95), "eps": 1e-6}
    loss_fn = ClipLoss(local_loss=True, gather_with_grad=True)
    pixels, ids, mask = synthetic_batch(opts, rank)
    opt = torch.optim.AdamW(param_groups(model, 0.1), **opt_kwargs)

    if engine_kind == "zero2":
        import deepspeed

        from worldclip.pipelines.train.engine import deepspeed_config, skip_cpu_shm_op

        skip_cpu_shm_op()
        tc = {"zero_stage": 2, "offload": False, "use_gpu": False, "precision": "fp32",
              "batch_size_per_worker": opts["batch"], "grad_accum": 1}
        engine, _, _, _ = deepspeed.initialize(model=model, optimizer=opt,
                                               config=deepspeed_config(tc, world))

        def step() -> None:
            loss = loss_fn(*engine(pixels, ids, mask))
            engine.backward(loss)
            engine.step()
            engine.module.clamp_logit_scale_()

        return step

    wrapped = (ddp_wrap or torch.nn.parallel.DistributedDataParallel)(model)

    def step() -> None:
        loss = loss_fn(*wrapped(pixels, ids, mask))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        model.clamp_logit_scale_()

    return step


def compare_engines(opts: dict[str, Any], rank: int, world: int, ddp_wrap: Any = None
                    ) -> dict[str, Any]:
    """Both engines in the same processes, timed in alternating blocks of steps (ddp, zero2,
    zero2, ddp, ...) so that a shared machine's load drifts over both alike."""
    import torch

    steps = {k: build_step(k, opts, rank, world, ddp_wrap) for k in ("ddp", "zero2")}
    times: dict[str, list[float]] = {k: [] for k in steps}
    for step in steps.values():
        for _ in range(opts["warmup"]):
            step()
    for block in range(opts["blocks"]):
        for k in (("ddp", "zero2") if block % 2 == 0 else ("zero2", "ddp")):
            for _ in range(opts["block_steps"]):
                t0 = time.perf_counter()
                steps[k]()
                times[k].append(time.perf_counter() - t0)
    return {"times": times, "threads": torch.get_num_threads()}


# ============================================================== without Ray: 2 processes

def _spawned(rank: int, opts: dict[str, Any], port: int, out: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(WORLD))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    times = compare_engines(opts, rank, WORLD)
    if rank == 0:
        with open(out, "w") as f:
            json.dump(times, f)
    dist.barrier()
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_plain(opts: dict[str, Any]) -> dict[str, Any]:
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "times.json")
        mp.spawn(_spawned, args=(opts, free_port(), out), nprocs=WORLD, join=True)
        with open(out) as f:
            return json.load(f)


# ============================================================== under Ray Train

def _ray_loop(config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    times = compare_engines(config["opts"], ctx.get_world_rank(), ctx.get_world_size(),
                            ddp_wrap=ray.train.torch.prepare_model)
    if ctx.get_world_rank() == 0:  # Train V2's Result.metrics is None without a checkpoint
        with open(config["out"], "w") as f:
            json.dump(times, f)
    ray.train.report({"done": 1})


def run_ray_train(opts: dict[str, Any], storage: str) -> dict[str, Any]:
    import ray.train
    from ray.train.torch import TorchTrainer

    out = os.path.join(storage, "times.json")
    trainer = TorchTrainer(
        _ray_loop, train_loop_config={"opts": opts, "out": out},
        scaling_config=ray.train.ScalingConfig(num_workers=WORLD, use_gpu=False,
                                               resources_per_worker={"CPU": 1}),
        run_config=ray.train.RunConfig(name=f"bench-train-step-{time.time_ns()}",
                                       storage_path=storage))
    result = trainer.fit()
    if result.error:
        raise RuntimeError(f"Ray Train run failed: {result.error}")
    with open(out) as f:
        return json.load(f)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", type=int, default=4, help="alternating blocks per engine")
    ap.add_argument("--block-steps", type=int, default=4, help="timed steps per block")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per engine")
    ap.add_argument("--batch", type=int, default=32, help="per rank")
    ap.add_argument("--width", type=int, default=128, help="width of both towers")
    ap.add_argument("--image-size", type=int, default=64)
    args = ap.parse_args()
    opts = {"blocks": args.blocks, "block_steps": args.block_steps, "warmup": args.warmup,
            "batch": args.batch, "width": args.width, "image_size": args.image_size}
    load0 = os.getloadavg()[0]

    import ray

    from worldclip.models.presets import flops_per_sample, param_count
    from worldclip.platform.runtime import worker_env

    cfg = model_config(opts)
    # One Ray for the whole run (started first): its idle daemons load both launches alike.
    ray.init(num_cpus=4, include_dashboard=False, runtime_env={"env_vars": worker_env()},
             logging_level="WARNING")
    try:
        plain = run_plain(opts)
        with tempfile.TemporaryDirectory(prefix="bench-train-") as storage:
            under_ray = run_ray_train(opts, storage)
    finally:
        ray.shutdown()

    rows = [("torch DDP", plain, "ddp"), ("DeepSpeed ZeRO-2", plain, "zero2"),
            ("Ray Train + DDP", under_ray, "ddp"), ("Ray Train + ZeRO-2", under_ray, "zero2")]
    base = statistics.median(plain["times"]["ddp"])
    n = args.blocks * args.block_steps
    print(f"model: tiny widened to {args.width} (2+2 layers, {args.image_size} px, patch 8), "
          f"{param_count(cfg) / 1e6:.2f}M params, {flops_per_sample(cfg) / 1e9:.3f} GFLOP "
          f"fwd/sample; batch {args.batch}/rank x {WORLD} ranks (gloo, {plain['threads']}/"
          f"{under_ray['threads']} intra-op threads plain/Ray); median of {n} steps per "
          f"engine in {args.blocks} alternating blocks after {args.warmup} warm-up")
    print(f"load average {load0:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print()
    print(f"{'engine':<22}{'median ms':>11}{'p10 ms':>9}{'p90 ms':>9}{'samples/s':>11}"
          f"{'vs DDP':>8}{'vs same launch DDP':>20}")
    for name, res, kind in rows:
        ts = res["times"][kind]
        med = statistics.median(ts)
        q = statistics.quantiles(ts, n=10)
        local = med / statistics.median(res["times"]["ddp"])
        print(f"{name:<22}{med * 1e3:>11.1f}{q[0] * 1e3:>9.1f}{q[-1] * 1e3:>9.1f}"
              f"{WORLD * args.batch / med:>11,.0f}{med / base:>7.2f}x{local:>19.2f}x")
    print("goal: Ray Train + ZeRO-2 / torch DDP <= 1.15x ('vs DDP' column; the last column "
          "compares engines timed side by side in the same processes)")


if __name__ == "__main__":
    main()
