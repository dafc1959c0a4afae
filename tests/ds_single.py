"""One real DeepSpeed engine in one process (gloo, world size 1), for checkpoint tests.

    python tests/ds_single.py OUT STAGE PORT STEPS [RESUME_DIR]

Builds the tiny MetaClip2 preset with pipelines/train/engine.py's DeepSpeed config, torch
AdamW and LambdaLR, optionally resumes from RESUME_DIR through
platform/checkpoints.load_engine_checkpoint (the call the Ray Train loop makes), takes STEPS
steps on fixed seeded batches, saves a worldclip checkpoint directory (ckpt/ +
model_config.json + tokenizer/) to OUT and writes OUT/result.json with the parameters' sha256
and the losses. Run as a subprocess: DeepSpeed needs its own
torch.distributed group.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys


def main() -> None:
    out, stage, port, steps = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    resume = sys.argv[5] if len(sys.argv) > 5 else ""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, RANK="0", WORLD_SIZE="1",
                      LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed
    import torch
    import torch.distributed as dist

    from worldclip.models.clip import ClipModel, param_groups
    from worldclip.models.presets import build_config
    from worldclip.models.tokenizer import train_tokenizer
    from worldclip.pipelines.checkpoint_io import CKPT_TAG
    from worldclip.pipelines.train.engine import deepspeed_config, lr_at, skip_cpu_shm_op
    from worldclip.platform import checkpoints

    skip_cpu_shm_op()
    dist.init_process_group("gloo")
    deepspeed.init_distributed(dist_backend="gloo")
    tc = {"zero_stage": stage, "offload": False, "use_gpu": False, "batch_size_per_worker": 4,
          "grad_accum": 1, "precision": "fp32"}
    cfg = deepspeed_config(tc, 1)
    torch.manual_seed(0)
    mcfg = build_config("tiny", vocab_size=64)
    if stage == 3:
        with deepspeed.zero.Init(config_dict_or_path=cfg):
            model = ClipModel(mcfg)
    else:
        model = ClipModel(mcfg)
    opt = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-3, betas=(0.9, 0.95), eps=1e-6)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_at(s, 1.0, 1, 10))
    engine, *_ = deepspeed.initialize(model=model, optimizer=opt, lr_scheduler=sched,
                                      config=cfg)
    start = 0
    if resume:
        checkpoints.load_engine_checkpoint(engine, resume, CKPT_TAG)
        start = json.load(open(os.path.join(resume, "result.json")))["steps"]
    n = mcfg.vision_config.image_size
    losses = []
    for step in range(start, start + steps):
        g = torch.Generator().manual_seed(step)
        px = torch.randn(4, 3, n, n, generator=g)
        ids = torch.randint(3, 64, (4, 8), generator=g)
        img, txt, scale = engine(px, ids, torch.ones_like(ids))
        logits = scale * img @ txt.T
        labels = torch.arange(4)
        loss = (torch.nn.functional.cross_entropy(logits, labels)
                + torch.nn.functional.cross_entropy(logits.T, labels)) / 2
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    engine.save_checkpoint(out, tag=CKPT_TAG)
    with open(os.path.join(out, "model_config.json"), "w") as f:
        json.dump(engine.module.config.to_dict(), f)
    train_tokenizer([f"a photo of thing {i}" for i in range(50)], vocab_size=64,
                    out_dir=os.path.join(out, "tokenizer"))
    h = hashlib.sha256()
    if stage == 3:
        with deepspeed.zero.GatheredParameters(list(engine.module.parameters())):
            for _, p in sorted(engine.module.named_parameters()):
                h.update(p.detach().float().numpy().tobytes())
    else:
        for _, p in sorted(engine.module.named_parameters()):
            h.update(p.detach().float().numpy().tobytes())
    with open(os.path.join(out, "state.json"), "w") as f:  # what latest_checkpoint looks for
        json.dump({"step": start + steps}, f)
    with open(os.path.join(out, "result.json"), "w") as f:
        json.dump({"steps": start + steps, "losses": losses, "params_sha256": h.hexdigest()}, f)
    print("DS_SINGLE_OK", flush=True)
    dist.destroy_process_group()
    os._exit(0)


if __name__ == "__main__":
    main()
