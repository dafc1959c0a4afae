"""The train package's checkpointer on one real DeepSpeed engine (gloo, world size 1, CPU).

    python tests/ds_checkpointer.py OUT STAGE PORT

Builds the engine with pipelines/train/engine.py build_engine from the default `train`
settings, takes 2 steps, writes a checkpoint with checkpointer.write_checkpoint, builds a fresh
engine from another seed, restores it with Checkpointer.load, and takes one more step on both:
OUT/result.json holds both engines' parameter hashes and third-step losses, and the state read
back. Run as a subprocess: DeepSpeed needs its own torch.distributed group.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys


def main() -> None:
    out, stage, port = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, RANK="0", WORLD_SIZE="1",
                      LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed
    import torch
    import torch.distributed as dist
    from omegaconf import OmegaConf

    from worldclip.models.tokenizer import train_tokenizer
    from worldclip.pipelines.train.checkpointer import Checkpointer, write_checkpoint
    from worldclip.pipelines.train.config import TrainSettings
    from worldclip.pipelines.train.engine import build_engine, skip_cpu_shm_op
    from worldclip.pipelines.train.state import TrainState
    from worldclip.platform.config import load_config

    skip_cpu_shm_op()
    dist.init_process_group("gloo")
    deepspeed.init_distributed(dist_backend="gloo")
    cfg = load_config([f"storage.root={out}", f"train.zero_stage={stage}",
                       "train.warmup_steps=1", "train.lr=1e-3"])
    s = TrainSettings.from_section(OmegaConf.to_container(cfg.train, resolve=True))

    def engine(seed: int):  # noqa: ANN202
        torch.manual_seed(seed)
        return build_engine(s, vocab_size=64, total_steps=10, world_size=1, micro_batch=4,
                            grad_accum=1)

    def step(parts, i: int) -> float:  # noqa: ANN001
        n = parts.image_size
        g = torch.Generator().manual_seed(i)
        px = torch.randn(4, 3, n, n, generator=g)
        ids = torch.randint(3, 64, (4, 8), generator=g)
        img, txt, scale = parts.engine(px, ids, torch.ones_like(ids))
        logits = scale * img @ txt.T
        labels = torch.arange(4)
        loss = (torch.nn.functional.cross_entropy(logits, labels)
                + torch.nn.functional.cross_entropy(logits.T, labels)) / 2
        parts.engine.backward(loss)
        parts.engine.step()
        return loss.item()

    def params_sha(parts) -> str:  # noqa: ANN001
        h = hashlib.sha256()
        params = list(parts.engine.module.parameters())
        with deepspeed.zero.GatheredParameters(params, enabled=stage == 3):
            for _, p in sorted(parts.engine.module.named_parameters()):
                h.update(p.detach().float().numpy().tobytes())
        return h.hexdigest()

    a = engine(0)
    for i in range(2):
        step(a, i)
    state = TrainState(step=2, epoch=1, pos=8, seen_pairs=8, world_size=1, global_batch=4,
                       history=[[1, 1.0, 1e-3], [2, 0.9, 1e-3]])
    tok = train_tokenizer([f"a photo of thing {i}" for i in range(50)], vocab_size=64)
    ckpt = os.path.join(out, "ckpt_dir")
    os.makedirs(ckpt)
    write_checkpoint(ckpt, a.engine, state, rank=0, node="node-a", tokenizer=tok)
    b = engine(1)
    before = params_sha(b)
    restored, convert_s = Checkpointer(0, 0, stage, 0, lambda: tok).load(
        b.engine, ckpt, TrainState.load(os.path.join(ckpt, "state.json")), reshard=False)
    result = {"files": sorted(os.listdir(ckpt)), "state": restored.__dict__,
              "convert_s": convert_s, "sha_a": params_sha(a), "sha_b_before": before,
              "sha_b": params_sha(b), "lr_a": a.lr, "lr_b": b.lr,
              "loss_a": step(a, 2), "loss_b": step(b, 2)}
    result["sha_a_after"], result["sha_b_after"] = params_sha(a), params_sha(b)
    with open(os.path.join(out, "result.json"), "w") as f:
        json.dump(result, f)
    print("DS_CHECKPOINTER_OK", flush=True)
    dist.destroy_process_group()
    os._exit(0)


if __name__ == "__main__":
    main()
