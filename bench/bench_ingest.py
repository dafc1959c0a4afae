"""Ingest throughput: our Ray Data training stream vs a torch DataLoader(num_workers=2).

Setup (not timed): an embedded world, its curation (`curate.run` on a local Ray) and a unigram
tokenizer trained on the curated captions, as `worldclip train` prepares them.

Both sides then stream the same epoch of the same curated files through the same code:
`ingest._load_file` with the Source (online: the epoch's draw, images read by reference;
offline: read_rows; then a seeded in-file shuffle) and `ingest.preprocess`
(decode, random resized crop, normalise, tokenize) on batches of 64:

  Ray Data   `ingest.worker_stream(rank=0, world=1)` iterated with iter_torch_batches(64) on
             a local Ray with --ray-cpus logical CPUs; each ingest task asks --ingest-cpus
             (defaults 2 and 1.0: two tasks at a time, like the DataLoader's two workers).
  DataLoader an IterableDataset over the same files (split between workers), batch_size=None,
             num_workers=2, fork; run in a fresh child process so no Ray lives in its parent.

Passes alternate (Ray, DataLoader, Ray, ...). Pass 1 is "cold" (Ray starts its worker
processes, which import torch/transformers; DataLoader forks workers that inherit a loaded
tokenizer); the headline ratio is the median of the later, warm passes. Both sides must yield
the same number of samples and the same token-id checksum. Goal: Ray/DataLoader >= 1.0x.

    RAY_USAGE_STATS_ENABLED=0 OMP_NUM_THREADS=1 .venv/bin/python bench/bench_ingest.py \
        [--pairs 20000] [--mode online] [--image-size 32] [--passes 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

BATCH = 64


# ============================================================== DataLoader side (child)

def dataloader_pass(data: str, tok_dir: str, image_size: int, workers: int) -> dict[str, Any]:
    """One epoch through torch's DataLoader; returns samples, checksum, seconds."""
    import numpy as np
    import torch
    from torch.utils.data import DataLoader, IterableDataset, get_worker_info

    from worldclip.pipelines import ingest

    source = ingest.Source.open(data)
    files = ingest.worker_files(source.files, 0, 0, 0, 1)

    class CuratedFiles(IterableDataset):
        def __iter__(self):  # noqa: ANN204 - torch's protocol
            info = get_worker_info()
            mine = files[info.id::info.num_workers] if info else files
            for f in mine:
                rows = ingest._load_file({"url": f, "skip": 0, "base": 0}, source.mode, 0, 0,
                                         source.limits, source)
                for i in range(0, len(rows), BATCH):
                    chunk = rows[i: i + BATCH]
                    batch = {"key": np.array([r["key"] for r in chunk], dtype=object),
                             "image": [r["image"] for r in chunk],
                             "text": np.array([r["text"] for r in chunk], dtype=object),
                             "pos": np.array([r["pos"] for r in chunk], dtype=np.int64)}
                    out = ingest.preprocess(batch, tok_dir, image_size, 0, 0)
                    yield {k: torch.from_numpy(v) for k, v in out.items()}

    ingest.cached_tokenizer(tok_dir)  # loaded before the fork, as a warm Ray worker holds it
    loader = DataLoader(CuratedFiles(), batch_size=None, num_workers=workers,
                        multiprocessing_context="fork", prefetch_factor=2)
    t0 = time.perf_counter()
    n, checksum = 0, 0
    for batch in loader:
        n += len(batch["pos"])
        checksum += int(batch["input_ids"].sum())
    return {"samples": n, "checksum": checksum, "seconds": time.perf_counter() - t0}


def run_dataloader_child(data: str, tok_dir: str, image_size: int, workers: int
                         ) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", data, "--tok", tok_dir,
           "--image-size", str(image_size), "--dl-workers", str(workers)]
    res = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


# ============================================================== Ray Data side

def ray_pass(data: str, tok_dir: str, image_size: int, ingest_cpus: float) -> dict[str, Any]:
    from worldclip.pipelines import ingest

    t0 = time.perf_counter()
    ds = ingest.worker_stream(ingest.Source.open(data), tok_dir, image_size, 0, 0, 0, 1,
                              num_cpus=ingest_cpus)
    n, checksum = 0, 0
    for batch in ds.iter_torch_batches(batch_size=BATCH, prefetch_batches=2):
        n += len(batch["pos"])
        checksum += int(batch["input_ids"].sum())
    return {"samples": n, "checksum": checksum, "seconds": time.perf_counter() - t0}


# ============================================================== setup + table

def prepare(root: str, pairs: int, mode: str) -> tuple[str, str, dict[str, Any]]:
    """World -> curation (on the running Ray) -> tokenizer; returns (data, tokenizer dir)."""
    from worldclip.models.tokenizer import train_tokenizer
    from worldclip.pipelines import curate, ingest, world
    from worldclip.platform.config import apply_storage, load_config

    cfg = load_config([f"storage.root={root}", f"world.pairs={pairs}",
                       f"world.pairs_per_shard={max(1, pairs // 10)}", "world.formats=[wds]",
                       "world.eval_per_concept=1", f"curation.mode={mode}"])
    apply_storage(cfg)
    world.run(cfg)
    summary = curate.run(cfg)
    data = str(cfg.curation.balanced_out)
    tok_dir = os.path.join(root, "tokenizer")
    train_tokenizer(ingest.Source.open(data).captions(), vocab_size=4000, out_dir=tok_dir)
    return data, tok_dir, summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=20_000, help="embedded world size")
    ap.add_argument("--mode", choices=["online", "offline"], default="online",
                    help="curated output read by the stream (online redraws every epoch)")
    ap.add_argument("--image-size", type=int, default=32, help="32 = the tiny preset's")
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--ray-cpus", type=int, default=2)
    ap.add_argument("--ingest-cpus", type=float, default=1.0)
    ap.add_argument("--dl-workers", type=int, default=2)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--tok", help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if args.child:
        print(json.dumps(dataloader_pass(args.child, args.tok, args.image_size,
                                         args.dl_workers)))
        return

    import ray

    from worldclip.platform.runtime import worker_env

    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as root:
        ray.init(num_cpus=max(4, args.ray_cpus), include_dashboard=False,
                 runtime_env={"env_vars": worker_env()}, logging_level="WARNING")
        ray.data.DataContext.get_current().enable_progress_bars = False
        t0 = time.perf_counter()
        try:
            data, tok_dir, summary = prepare(root, args.pairs, args.mode)
        finally:
            ray.shutdown()  # the measured Ray gets exactly --ray-cpus
        setup_s = time.perf_counter() - t0
        ray.init(num_cpus=args.ray_cpus, include_dashboard=False,
                 runtime_env={"env_vars": worker_env()}, logging_level="WARNING")
        ray.data.DataContext.get_current().enable_progress_bars = False
        results: dict[str, list[dict[str, Any]]] = {"ray": [], "dl": []}
        try:
            for _ in range(args.passes):
                results["ray"].append(ray_pass(data, tok_dir, args.image_size,
                                               args.ingest_cpus))
                results["dl"].append(run_dataloader_child(data, tok_dir, args.image_size,
                                                          args.dl_workers))
        finally:
            ray.shutdown()

    ref = results["ray"][0]
    for r in results["ray"] + results["dl"]:
        if (r["samples"], r["checksum"]) != (ref["samples"], ref["checksum"]):
            raise AssertionError(f"streams differ: {r} vs {ref}; not the same samples")
    n = ref["samples"]

    def rate(rs: list[dict[str, Any]]) -> float:
        return n / statistics.median(r["seconds"] for r in rs)

    # online: nothing is kept at curation (the stream draws per epoch); the match index size
    curated = (f"{summary['kept']:,} kept" if summary["kept"] is not None
               else f"{summary.get('indexed', 0):,} in the match index")
    print(f"curated ({args.mode}) from a {args.pairs:,}-pair world: {curated}; "
          f"epoch 0 = {n:,} samples at {args.image_size} px (setup {setup_s:.0f}s); "
          f"load average {load0:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"Ray: num_cpus={args.ray_cpus}, ingest task CPUs {args.ingest_cpus}; DataLoader: "
          f"num_workers={args.dl_workers}; same samples and token checksum on every pass")
    print()
    print(f"{'pass':<14}{'Ray s':>8}{'DL s':>8}{'Ray samp/s':>12}{'DL samp/s':>11}{'Ray/DL':>8}")
    warm = slice(1, None) if args.passes > 1 else slice(0, None)
    rows = [("1 (cold)", results["ray"][:1], results["dl"][:1]),
            ("warm median", results["ray"][warm], results["dl"][warm])]
    for name, r, d in rows:
        rr, dr = rate(r), rate(d)
        print(f"{name:<14}{n / rr:>8.2f}{n / dr:>8.2f}{rr:>12,.0f}{dr:>11,.0f}{rr / dr:>7.2f}x")
    print("goal: warm Ray/DL >= 1.0x")


if __name__ == "__main__":
    main()
