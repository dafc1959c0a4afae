"""Benchmark the embedded-world generator: throughput and peak memory at N and N/10 pairs.

    .venv/bin/python bench/bench_world.py [--pairs 100000] [--formats wds,parquet]

Each size runs in a fresh subprocess (ru_maxrss is a per-process high-water mark), writing to a
temporary local folder. The generator streams shard by shard, so peak RSS at N should match
peak RSS at N/10 (ratio ~1.0) while the time per pair stays flat.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time


def child(pairs: int, formats: str, out: str) -> dict:
    from worldclip.pipelines import world
    from worldclip.platform.config import load_config

    cfg = load_config([f"world.pairs={pairs}", f"world.formats=[{formats}]",
                       "world.eval_per_concept=1"])
    t0 = time.perf_counter()
    summary = world.generate_world(cfg.world, out)
    wall = time.perf_counter() - t0
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(out) for f in fs)
    return {"pairs": summary["pairs"], "wall_s": wall, "pairs_per_s": summary["pairs"] / wall,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "bytes_written_mb": size / 2**20}


def measure(pairs: int, formats: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-world-") as out:
        cmd = [sys.executable, __file__, "--child", str(pairs), "--formats", formats,
               "--out", out]
        res = subprocess.run(cmd, check=True, capture_output=True, text=True)
        return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=100_000)
    ap.add_argument("--formats", default="wds,parquet")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.formats, args.out)))
        return
    small = measure(max(1, args.pairs // 10), args.formats)
    big = measure(args.pairs, args.formats)
    print(f"embedded world, formats={args.formats}, one process, {os.cpu_count()} cores")
    print(f"{'pairs':>9} {'wall s':>8} {'pairs/s':>9} {'peak RSS MB':>12} {'written MB':>11}")
    for r in (small, big):
        print(f"{r['pairs']:>9} {r['wall_s']:>8.1f} {r['pairs_per_s']:>9.0f} "
              f"{r['peak_rss_mb']:>12.1f} {r['bytes_written_mb']:>11.1f}")
    print(f"peak RSS ratio (N / N/10): {big['peak_rss_mb'] / small['peak_rss_mb']:.2f}  "
          f"(1.0 = memory independent of N)")
    print(f"throughput ratio (N / N/10): {big['pairs_per_s'] / small['pairs_per_s']:.2f}")


if __name__ == "__main__":
    main()
