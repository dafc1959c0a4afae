"""B/16 training throughput and MFU on ONE GPU (bf16, synthetic data, 224 px, XLM-V vocab).

Trains the MetaCLIP 2 B/16 preset (text vocabulary 901,629 = XLM-V) for --steps steps on fixed
synthetic tensors (no data loading: this measures the model + engine) and prints samples/s and
MFU = flops_per_sample(config) x 3 (forward + backward; 4 with gradient checkpointing, which
recomputes the forward) x samples/s / peak FLOP/s. Peak: --peak-tflops (default 989 = H100/H200
SXM bf16 dense).

Engines:
  deepspeed  (default) the training path's engine: DeepSpeed ZeRO-2 from
             train.deepspeed_config (bf16, torch AdamW client optimizer, clipping 1.0) on a
             single NCCL rank
  torch      plain torch: fp32 master weights, bf16 autocast, fused AdamW

    python bench/gpu_b16.py --steps 100 [--batch 256] [--engine deepspeed|torch] \
        [--grad-ckpt] [--peak-tflops 989]
    python bench/gpu_b16.py --dry-run     # no GPU: B/16 config + a tiny model, 2 steps on CPU

Fails at once, with the reason, when no CUDA GPU is visible (unless --dry-run).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from typing import Any


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=100, help="timed steps")
    ap.add_argument("--warmup", type=int, default=10, help="untimed steps first")
    ap.add_argument("--batch", type=int, default=256, help="samples per step")
    ap.add_argument("--engine", choices=["deepspeed", "torch"], default="deepspeed")
    ap.add_argument("--grad-ckpt", action="store_true", help="gradient checkpointing")
    ap.add_argument("--preset", default="B/16")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--vocab", type=int, default=None, help="default: XLM-V, 901,629")
    ap.add_argument("--peak-tflops", type=float, default=989.0,
                    help="peak dense bf16 TFLOP/s of the GPU (H100/H200 SXM: 989)")
    ap.add_argument("--dry-run", action="store_true",
                    help="no GPU: build the B/16 config, then train a tiny model 2 steps on CPU")
    args = ap.parse_args(argv)
    if args.steps < 1 or args.batch < 1 or args.warmup < 0:
        ap.error(f"--steps {args.steps} / --batch {args.batch} / --warmup {args.warmup}: steps "
                 "and batch must be >= 1, warmup >= 0")
    return args


def require_gpu() -> None:
    """Exit with a clear message unless a CUDA GPU is usable (checked before heavy imports)."""
    import torch

    if torch.version.cuda is None:
        sys.exit(f"gpu_b16: torch {torch.__version__} is a CPU-only build (torch.version.cuda is "
                 "None); install a CUDA build of torch on the GPU machine, or run with --dry-run")
    if not torch.cuda.is_available():
        sys.exit("gpu_b16: no CUDA GPU visible (torch.cuda.is_available() is False; "
                 f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}); "
                 "run on a GPU machine, or with --dry-run to exercise the code on CPU")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def single_rank_env() -> None:
    """torch.distributed env for one rank (DeepSpeed needs an initialised process group)."""
    for k, v in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "RANK": "0",
                 "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1"}.items():
        os.environ.setdefault(k, v)


def synthetic_batch(batch: int, image_size: int, vocab: int, device: Any, dtype: Any
                    ) -> tuple[Any, Any, Any]:
    """Pixels, token ids with exactly one eos (id 2) per row then padding (id 1), mask."""
    import torch

    from worldclip.models.presets import CONTEXT_LENGTH, EOS_TOKEN_ID, PAD_TOKEN_ID

    g = torch.Generator().manual_seed(0)
    pixels = torch.randn(batch, 3, image_size, image_size, generator=g).to(device, dtype)
    lengths = torch.randint(5, CONTEXT_LENGTH + 1, (batch, 1), generator=g)
    pos = torch.arange(CONTEXT_LENGTH).expand(batch, CONTEXT_LENGTH)
    ids = torch.randint(4, vocab, (batch, CONTEXT_LENGTH), generator=g)
    ids = torch.where(pos == lengths - 1, EOS_TOKEN_ID, ids)
    ids = torch.where(pos >= lengths, PAD_TOKEN_ID, ids)
    mask = (pos < lengths).long()
    return pixels, ids.to(device), mask.to(device)


def build_engine(args: argparse.Namespace, config: Any, gpu: bool) -> tuple[Any, Any]:
    """-> (step function, model) for the chosen engine."""
    import torch

    from worldclip.models.clip import ClipModel, param_groups
    from worldclip.models.loss import ClipLoss

    device = torch.device("cuda", 0) if gpu else torch.device("cpu")
    bf16 = gpu  # bf16 is the GPU recipe; the CPU dry run stays fp32 (train.py's rule)
    torch.manual_seed(0)
    model = ClipModel(config, gradient_checkpointing=args.grad_ckpt)
    loss_fn = ClipLoss(local_loss=True, gather_with_grad=True)
    decay, betas, eps = 0.1, (0.9, 0.95), 1e-6

    if args.engine == "deepspeed":
        import deepspeed

        from worldclip.pipelines.train.engine import deepspeed_config, skip_cpu_shm_op

        if not gpu:  # the shm comm op (~33 s compile) is never used by gloo
            skip_cpu_shm_op()
        single_rank_env()
        deepspeed.init_distributed(dist_backend="nccl" if gpu else "gloo")
        tc = {"zero_stage": 2, "offload": False, "use_gpu": gpu,
              "precision": "bf16" if bf16 else "fp32",
              "batch_size_per_worker": args.batch, "grad_accum": 1}
        opt = torch.optim.AdamW(param_groups(model, decay), lr=4e-4, betas=betas, eps=eps)
        engine, _, _, _ = deepspeed.initialize(model=model, optimizer=opt,
                                               config=deepspeed_config(tc, 1))
        data = synthetic_batch(args.batch, config.vision_config.image_size,
                               config.text_config.vocab_size, engine.device,
                               torch.bfloat16 if bf16 else torch.float32)

        def step() -> Any:
            loss = loss_fn(*engine(*data))
            engine.backward(loss)
            engine.step()
            engine.module.clamp_logit_scale_()
            return loss

        return step, engine.module

    model.to(device)
    opt = torch.optim.AdamW(param_groups(model, decay), lr=4e-4, betas=betas, eps=eps,
                            fused=gpu)
    data = synthetic_batch(args.batch, config.vision_config.image_size,
                           config.text_config.vocab_size, device, torch.float32)

    def step() -> Any:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(*model(*data))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        model.clamp_logit_scale_()
        return loss

    return step, model


def run(args: argparse.Namespace) -> dict[str, Any]:
    gpu = not args.dry_run
    if gpu:
        require_gpu()
    else:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # before deepspeed is imported
        os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    from worldclip.models.presets import (
        XLMV_VOCAB_SIZE,
        build_config,
        flops_per_sample,
        param_count,
    )

    vocab = args.vocab or XLMV_VOCAB_SIZE
    target = build_config(args.preset, vocab_size=vocab,
                          vision_config={"image_size": args.image_size})
    flops = flops_per_sample(target)
    params = param_count(target)
    print(f"{args.preset}: {params / 1e6:.1f}M params (vocab {vocab:,}), {flops / 1e9:.2f} GFLOP "
          f"forward per sample at {args.image_size} px")
    if gpu:
        config = target
    else:  # the dry run trains the tiny preset through the same engine code, 2 steps
        config = build_config("tiny", vocab_size=8000)
        args.steps, args.warmup, args.batch = 2, 0, min(args.batch, 4)
        print(f"dry run: tiny preset on CPU, {args.steps} steps of {args.batch}, fp32, "
              f"engine {args.engine}, gradient checkpointing {args.grad_ckpt}")
    step, model = build_engine(args, config, gpu)
    sync = torch.cuda.synchronize if gpu else (lambda: None)
    if gpu:
        torch.cuda.reset_peak_memory_stats()

    for _ in range(args.warmup):
        step()
    sync()
    # No per-step sync (it would expose kernel-launch gaps): one wall time over all steps.
    t0 = time.perf_counter()
    losses = [step().detach() for _ in range(args.steps)]
    sync()
    wall = time.perf_counter() - t0
    first_loss, loss = float(losses[0].float()), float(losses[-1].float())
    med = wall / args.steps
    sps = args.batch / med
    factor = 4 if args.grad_ckpt else 3
    cfg_flops = flops_per_sample(config)
    mfu = cfg_flops * factor * sps / (args.peak_tflops * 1e12)
    out = {"preset": args.preset if gpu else "tiny", "engine": args.engine,
           "grad_ckpt": args.grad_ckpt, "batch": args.batch, "steps": args.steps,
           "step_ms_mean": med * 1e3, "samples_per_s": sps,
           "tflops_per_s": cfg_flops * factor * sps / 1e12, "mfu": mfu,
           "first_loss": first_loss, "last_loss": loss,
           "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if gpu else None}
    if gpu:
        print(f"GPU: {torch.cuda.get_device_name(0)}; attention "
              f"{getattr(model.config, '_attn_implementation', '?')}")
    print()
    print(f"{'engine':<10}{'ckpt':>5}{'batch':>7}{'step ms':>9}{'samples/s':>11}"
          f"{'TFLOP/s':>9}{'MFU':>7}{'peak GiB':>10}  loss first->last")
    mem = f"{out['peak_mem_gib']:.1f}" if gpu else "-"
    print(f"{args.engine:<10}{'yes' if args.grad_ckpt else 'no':>5}{args.batch:>7}"
          f"{med * 1e3:>9.1f}{sps:>11,.1f}{out['tflops_per_s']:>9.2f}{mfu:>7.1%}{mem:>10}  "
          f"{first_loss:.3f}->{loss:.3f}")
    print(f"MFU = flops_per_sample x {factor} x samples/s / {args.peak_tflops:g} TFLOP/s"
          + ("" if gpu else "  (dry run on CPU: the figure means nothing)"))
    return out


def main(argv: list[str] | None = None) -> None:
    run(parse_args(argv))
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
