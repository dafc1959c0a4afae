"""Training ingest by reference (issue 14): Ray Data stream vs torch DataLoader, local and S3;
stream worker peak RSS at 10x the pool.

    RAY_USAGE_STATS_ENABLED=0 OMP_NUM_THREADS=1 .venv/bin/python bench/bench_ingest_byref.py \
        [--pairs 20000] [--pairs-per-shard 2000] [--passes 5] [--storage local,s3]
    quick (~3 min): ... bench/bench_ingest_byref.py --pairs 5000 --pairs-per-shard 500 --passes 2

Setup (not timed): an embedded world (WebDataset shards) and a tenth of it (same pairs per
shard); online curation (curation.mode=online: the match index references the images in the
raw shards, the balancing artifact holds the entry probabilities) of the pool on local disk,
and of the same raw shards uploaded to a moto S3 server (moto_server on a free loopback port,
as tests/conftest.py starts it; curation.input and curation.out on S3); a 4,000-token unigram
tokenizer on the curated captions.

Throughput (epoch 0, batches of 64, --image-size px). Both sides stream the same match-index
files through the same functions: `ingest._load_file` with the Source (the epoch's draw from
the balancing artifact, then `refs.read_images` of the kept rows: coalesced byte ranges of the
raw shard, one ranged GET per run of nearby members on S3) and `ingest.preprocess` (decode,
random resized crop = transforms.train_transform, normalise, tokenize):

  Ray Data    `ingest.worker_stream(rank=0, world=1)` + iter_torch_batches(64), on a local Ray
              with --ray-cpus logical CPUs, each ingest task asking --ingest-cpus (defaults 2
              and 1.0: two tasks at a time, like the DataLoader's two workers).
  DataLoader  an IterableDataset over the same files split between workers,
              num_workers=--dl-workers (2), fork, in a fresh child process (no Ray in it).

Passes alternate (Ray local, DL local, Ray S3, DL S3, ...). Pass 1 is cold (Ray starts
worker processes that import torch/transformers); the ratio is the median of the warm passes.
Every pass of one storage must yield the same samples and token-id checksum. Goal:
Ray/DataLoader >= 1.0x on both.

Peak RSS: the largest resident set of any Ray worker process of this run (`ray::*`, the
stream's tasks), sampled every 20 ms with psutil while one epoch of the pool streams, vs the
same for its tenth (the pools alternate, twice; the larger of the two per pool). Goal: pool /
tenth <= 1.1x. Most of it is the imported libraries (torch, transformers, pyarrow). Beside
it, the driver's epoch plan (`ingest.file_row_counts` over every match-index file, which
`worker_stream` runs before streaming), tenth vs pool (local disk), and the pool on S3; median
of 3.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from typing import Any

BATCH = 64
BUCKET = "bench-byref"


# ============================================================== DataLoader side (child)

def dataloader_pass(data: str, tok_dir: str, image_size: int, workers: int) -> dict[str, Any]:
    """One epoch through torch's DataLoader reading by reference; samples, checksum, seconds."""
    import numpy as np
    import torch
    from torch.utils.data import DataLoader, IterableDataset, get_worker_info

    from worldclip.pipelines import ingest
    from worldclip.platform import storage

    source = ingest.Source.open(data)
    files = ingest.worker_files(source.files, 0, 0, 0, 1)

    class ByReference(IterableDataset):
        def __iter__(self):  # noqa: ANN204 - torch's protocol
            info = get_worker_info()
            mine = files[info.id::info.num_workers] if info else files
            for f in mine:
                rows = ingest._load_file({"url": f, "skip": 0, "base": 0}, source.mode, 0, 0,
                                         source.limits, source)
                for i in range(0, len(rows), BATCH):
                    chunk = rows[i: i + BATCH]
                    batch = {k: np.array([r[k] for r in chunk], dtype=object)
                             for k in ("key", "text", "drop")}
                    batch["image"] = [r["image"] for r in chunk]
                    batch["pos"] = np.array([r["pos"] for r in chunk], dtype=np.int64)
                    out = ingest.preprocess(batch, tok_dir, image_size, 0, 0)
                    yield {k: torch.from_numpy(v) for k, v in out.items()}

    def fresh_filesystems(_: int) -> None:
        storage.configure()  # a forked worker builds its own S3 client (no inherited loop)

    ingest.cached_tokenizer(tok_dir)  # loaded before the fork, as a warm Ray worker holds it
    loader = DataLoader(ByReference(), batch_size=None, num_workers=workers,
                        multiprocessing_context="fork", prefetch_factor=2,
                        worker_init_fn=fresh_filesystems)
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
    res = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if res.returncode:
        raise RuntimeError(f"DataLoader child failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


# ============================================================== Ray Data side

class PeakRSS:
    """Largest RSS of this run's Ray worker processes (`ray::...`), sampled in a thread."""

    def __init__(self, every_s: float = 0.02) -> None:
        self.every_s, self.peak, self._stop = every_s, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _workers(self) -> list[Any]:
        import psutil

        procs = []
        for p in psutil.Process().children(recursive=True):
            try:
                if (p.cmdline() or [""])[0].startswith("ray::"):
                    procs.append(p)
            except psutil.Error:
                pass
        return procs

    def _run(self) -> None:
        import psutil

        procs, last = self._workers(), time.monotonic()
        while not self._stop.is_set():
            if time.monotonic() - last > 1.0:
                procs, last = self._workers(), time.monotonic()
            for p in procs:
                try:
                    self.peak = max(self.peak, p.memory_info().rss)
                except psutil.Error:
                    pass
            time.sleep(self.every_s)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


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


def plan_seconds(data: str, repeats: int = 3) -> float:
    """Median driver time of the epoch plan worker_stream makes before it streams: the row
    count of every match-index file (`ingest.file_row_counts`, no image read)."""
    from worldclip.pipelines import ingest

    src = ingest.Source.open(data)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        ingest.file_row_counts(src, list(src.files), 0, 0)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# ============================================================== S3 server + setup

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto() -> subprocess.Popen:
    """moto_server on loopback (as tests/conftest.py); exports the AWS env to this process,
    so Ray workers and the DataLoader child started afterwards inherit it."""
    port = free_port()
    exe = shutil.which("moto_server") or os.path.join(os.path.dirname(sys.executable),
                                                      "moto_server")
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while True:
        try:
            urllib.request.urlopen(endpoint, timeout=1)
            break
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError(f"moto_server did not start on {endpoint}") from None
            time.sleep(0.1)
    os.environ.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing-secret",
                       "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1",
                       "AWS_ENDPOINT_URL": endpoint})
    import boto3

    from worldclip.platform import storage

    storage.configure()
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(
        Bucket=BUCKET)
    return proc


def make_config(root: str, pairs: int, per_shard: int, *overrides: str) -> Any:
    from worldclip.platform.config import apply_storage, load_config

    cfg = load_config([f"storage.root={root}", f"world.pairs={pairs}",
                       f"world.pairs_per_shard={per_shard}", "world.formats=[wds]",
                       "world.eval_per_concept=1", "curation.mode=online", *overrides])
    apply_storage(cfg)
    return cfg


def prepare(root: str, pairs: int, per_shard: int, storages: list[str]
            ) -> tuple[dict[str, str], str, dict[str, Any]]:
    """Worlds -> online curations (local, S3, the tenth) -> tokenizer.
    -> ({name: balanced_out}, tokenizer dir, setup facts)."""
    from worldclip.models.tokenizer import train_tokenizer
    from worldclip.pipelines import curate, ingest, world
    from worldclip.platform import storage

    big = make_config(os.path.join(root, "big"), pairs, per_shard)
    small = make_config(os.path.join(root, "small"), pairs // 10, per_shard)
    world.run(big)
    world.run(small)
    raw = sorted(glob.glob(os.path.join(big.world.out, "raw", "wds", "*.tar")))
    data, facts = {}, {"raw_mb": sum(os.path.getsize(p) for p in raw) / 1e6,
                       "shards": len(raw)}
    facts["kept"] = curate.run(big).get("indexed")
    data["local"] = str(big.curation.balanced_out)
    curate.run(small)
    data["tenth"] = str(small.curation.balanced_out)
    if "s3" in storages:
        s3 = f"s3://{BUCKET}/pool"
        for p in raw:
            with open(p, "rb") as f:
                storage.write_bytes(f"{s3}/raw/{os.path.basename(p)}", f.read())
        cfg = make_config(os.path.join(root, "big"), pairs, per_shard,
                          f"curation.input={s3}/raw/*.tar",
                          f"curation.metadata={big.curation.metadata}",
                          f"curation.out={s3}/curated",
                          f"curation.balanced_out={s3}/curated/balanced")
        curate.run(cfg)
        data["s3"] = str(cfg.curation.balanced_out)
    tok_dir = os.path.join(root, "tokenizer")
    train_tokenizer(ingest.Source.open(data["local"]).captions(), vocab_size=4000,
                    out_dir=tok_dir)
    return data, tok_dir, facts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=20_000, help="embedded world size (the pool)")
    ap.add_argument("--pairs-per-shard", type=int, default=2000)
    ap.add_argument("--image-size", type=int, default=32, help="32 = the tiny preset's")
    ap.add_argument("--passes", type=int, default=5)
    ap.add_argument("--storage", default="local,s3", help="local, s3 or local,s3")
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
    storages = [s for s in args.storage.split(",") if s]

    import ray

    from worldclip.platform.runtime import worker_env

    load0 = os.getloadavg()[0]
    moto = start_moto() if "s3" in storages else None
    try:
        with tempfile.TemporaryDirectory(prefix="bench-ingest-byref-") as root:
            ray.init(num_cpus=max(4, args.ray_cpus), include_dashboard=False,
                     runtime_env={"env_vars": worker_env()}, logging_level="WARNING")
            ray.data.DataContext.get_current().enable_progress_bars = False
            t0 = time.perf_counter()
            try:
                data, tok_dir, facts = prepare(root, args.pairs, args.pairs_per_shard,
                                               storages)
            finally:
                ray.shutdown()  # the measured Ray gets exactly --ray-cpus
            setup_s = time.perf_counter() - t0
            print(f"setup done in {setup_s:.0f}s", flush=True)
            ray.init(num_cpus=args.ray_cpus, include_dashboard=False,
                     runtime_env={"env_vars": worker_env()}, logging_level="WARNING")
            ray.data.DataContext.get_current().enable_progress_bars = False
            res: dict[str, list[dict[str, Any]]] = {f"{side} {s}": [] for s in storages
                                                    for side in ("ray", "dl")}
            rss: dict[str, list[int]] = {"local": [], "tenth": []}
            try:
                for _ in range(args.passes):
                    for s in storages:
                        res[f"ray {s}"].append(ray_pass(data[s], tok_dir, args.image_size,
                                                        args.ingest_cpus))
                        res[f"dl {s}"].append(run_dataloader_child(
                            data[s], tok_dir, args.image_size, args.dl_workers))
                        print(f"{s}: ray {res[f'ray {s}'][-1]}, dl {res[f'dl {s}'][-1]}",
                              flush=True)
                for _ in range(2):
                    for pool in ("tenth", "local"):
                        with PeakRSS() as peak:
                            r = ray_pass(data[pool], tok_dir, args.image_size,
                                         args.ingest_cpus)
                        rss[pool].append(peak.peak)
                        if pool == "local" and "ray local" in res:
                            res["ray local"].append(r)  # same epoch: must agree
            finally:
                ray.shutdown()
            plan_s = {pool: plan_seconds(data[pool]) for pool in ("tenth", *storages)}
    finally:
        if moto is not None:
            moto.terminate()
            moto.wait(10)

    for s in storages:
        ref = res[f"ray {s}"][0]
        for r in res[f"ray {s}"] + res[f"dl {s}"]:
            if (r["samples"], r["checksum"]) != (ref["samples"], ref["checksum"]):
                raise AssertionError(f"{s}: streams differ: {r} vs {ref}")
    n = res[f"ray {storages[0]}"][0]["samples"]
    print(f"pool: {args.pairs:,} pairs in {facts['shards']} raw shards ({facts['raw_mb']:.0f} MB), "
          f"{facts['kept']:,} in the match index; epoch 0 = {n:,} samples at {args.image_size} "
          f"px (setup {setup_s:.0f}s); load average {load0:.1f} -> {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} cores")
    print(f"Ray: num_cpus={args.ray_cpus}, ingest task CPUs {args.ingest_cpus}; DataLoader: "
          f"num_workers={args.dl_workers}, fork; same samples and token checksum on every pass")
    print()
    print(f"{'storage':<9}{'pass':<13}{'Ray s':>8}{'DL s':>8}{'Ray samp/s':>12}"
          f"{'DL samp/s':>11}{'Ray/DL':>8}")
    warm = slice(1, args.passes) if args.passes > 1 else slice(0, 1)
    for s in storages:
        for name, sl in (("1 (cold)", slice(0, 1)), ("warm median", warm)):
            rs = statistics.median(r["seconds"] for r in res[f"ray {s}"][sl])
            ds = statistics.median(r["seconds"] for r in res[f"dl {s}"][sl])
            print(f"{s:<9}{name:<13}{rs:>8.2f}{ds:>8.2f}{n / rs:>12,.0f}{n / ds:>11,.0f}"
                  f"{ds / rs:>7.2f}x")
    print("goal: warm Ray/DL >= 1.0x on local and S3")
    print()
    big, tenth = max(rss["local"]), max(rss["tenth"])
    print(f"{'stream worker peak RSS':<30}{'MB':>8}{'ratio':>8}")
    print(f"{'tenth of the pool':<30}{tenth / 2**20:>8.0f}{'1.00x':>8}")
    print(f"{'pool (10x)':<30}{big / 2**20:>8.0f}{big / tenth:>7.2f}x  goal <= 1.1x")
    print(f"{'driver: epoch plan (s)':<30}{plan_s['tenth']:>8.3f}{'':>8}  tenth of the pool")
    if "local" in plan_s:
        print(f"{'':<30}{plan_s['local']:>8.3f}{plan_s['local'] / plan_s['tenth']:>7.2f}x  "
              "pool (file_row_counts over every match-index file, before the stream starts)")
    if "s3" in plan_s:
        print(f"{'':<30}{plan_s['s3']:>8.3f}{'':>8}  pool on S3 (inside the Ray pass's time; "
              "the DataLoader side makes no plan)")
    print(f"(samples: tenth {[round(x / 2**20) for x in rss['tenth']]} MB, "
          f"pool {[round(x / 2**20) for x in rss['local']]} MB)")


if __name__ == "__main__":
    main()
