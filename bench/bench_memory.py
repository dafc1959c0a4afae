"""Peak RSS of a curation worker on small files that decompress to a lot (issue #18, case 3).

    .venv/bin/python bench/bench_memory.py [--before-rev 066c074] [--small]

Cases (generated into a temp dir):
  bomb.tar.gz   20 pairs, each a 60 MB image member (+ caption): a ~1.2 MB file, 1.2 GB inside
  cell.parquet  one row whose image cell is 500 MB: a ~17 KB zstd file
  normal.tar    1000 ordinary pairs of 30 KB incompressible images (a control: no change)

Each (case, variant) runs in a fresh process doing what the pass-1 worker (MatchWorker) does:
read + parse the shard, LID + match, serialise the match table. Peak RSS (ru_maxrss) is
reported above the process's RSS after imports and model loading (the kernel's peak mark
is reset there: /proc/self/clear_refs). Variants:
  before    the parser and matcher of --before-rev (pipelines/shards.py and curate.py of that
            commit: file read whole, every member / the whole table read, one Arrow builder)
  after     this tree, default limits (max_record_bytes 64 MiB, max_shard_bytes 1 GiB)
  after256  this tree, curation.max_shard_bytes = 256 MiB
--small divides every size by 10 (a quick run).
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import resource
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MB = 1 << 20
CAPTION = b"a red apple on a wooden table"


def _blob(n: int) -> bytes:
    return b"\xff\xd8\xff" + b"\0" * (n - 3)


def make_cases(d: Path, scale: int) -> dict[str, Path]:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    (d / "md").mkdir()
    (d / "md" / "en.json").write_text(json.dumps(["apple", "table"]))
    bomb = d / "bomb.tar.gz"
    with tarfile.open(bomb, "w:gz") as t:
        for i in range(20):
            for name, data in ((f"k{i:02d}.jpg", _blob(60 * MB // scale)),
                               (f"k{i:02d}.txt", CAPTION)):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
    cell = d / "cell.parquet"
    pq.write_table(pa.table({"image": [_blob(500 * MB // scale)], "text": [CAPTION.decode()]}),
                   cell, compression="zstd")
    normal = d / "normal.tar"
    rng = np.random.default_rng(0)
    with tarfile.open(normal, "w") as t:
        for i in range(1000 // scale):
            for name, data in ((f"n{i:04d}.jpg", b"\xff\xd8\xff" + rng.bytes(30_000)),
                               (f"n{i:04d}.txt", CAPTION)):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
    return {"bomb.tar.gz": bomb, "cell.parquet": cell, "normal.tar": normal}


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak() -> float:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS; -> current RSS in MB."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_mb("VmRSS")


def _load(name: str, path: Path):  # noqa: ANN202 -- a module of the --before-rev tree
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def worker(url: str, variant: str, md: str, before_dir: str) -> dict:
    """One pass-1 worker run in this (fresh) process: what MatchWorker does per shard."""
    from worldclip.platform import storage

    if variant == "before":  # the --before-rev parser and matcher, as they were
        old_shards = _load("old_shards", Path(before_dir) / "shards.py")
        old_curate = _load("old_curate", Path(before_dir) / "curate.py")
        old_curate.parse_shard = old_shards.parse_shard  # its import named today's module
        matcher = old_curate.ShardMatcher(old_curate.MatchSettings(metadata=md))
        matcher.match_shard(_warm_tar(), "warm.tar")  # LID model and automaton loaded
        to_bytes = old_curate._parquet_bytes
    else:
        from worldclip.pipelines.arrowio import parquet_bytes
        from worldclip.pipelines.curate import MatchSettings, ShardMatcher
        from worldclip.pipelines.limits import ReadLimits
        from worldclip.pipelines.shards import load_shard, parse_shard

        matcher = ShardMatcher(MatchSettings(metadata=md))
        matcher.match_parsed(parse_shard(_warm_tar(), "warm.tar"), "warm.tar")
        to_bytes = parquet_bytes
    base = _reset_peak()
    t0 = time.time()
    if variant == "before":
        matched, counts, stats = matcher.match_shard(storage.read_bytes(url), url)
    else:
        limits = ReadLimits() if variant == "after" else ReadLimits(max_shard_bytes=256 * MB)
        matched, counts, stats = matcher.match_parsed(load_shard(url, limits), url)
    out_bytes = len(to_bytes(matched))
    return {"base_mb": base, "peak_mb": _status_mb("VmHWM"), "s": time.time() - t0,
            "kept": matched.num_rows, "drops": stats["drops"], "out_mb": out_bytes / MB}


def _warm_tar() -> bytes:
    """A one-pair tar, to load the LID model and the automaton before measuring."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for name, data in (("w.jpg", b"\xff\xd8\xff"), ("w.txt", CAPTION)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--before-rev", default="066c074")
    ap.add_argument("--small", action="store_true")
    ap.add_argument("--worker", nargs=4, metavar=("URL", "VARIANT", "MD", "BEFORE_DIR"))
    ap.add_argument("--make", nargs=2, metavar=("DIR", "SCALE"))
    a = ap.parse_args()
    if a.worker:
        print("RESULT " + json.dumps(worker(*a.worker)), flush=True)
        return
    if a.make:  # in its own process: building a 500 MB cell must not stay in our RSS
        print(json.dumps({k: str(v) for k, v in make_cases(Path(a.make[0]),
                                                           int(a.make[1])).items()}))
        return
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        d = Path(tmp)
        before_dir = d / "before"
        before_dir.mkdir()
        for mod in ("shards", "curate"):
            (before_dir / f"{mod}.py").write_text(subprocess.run(
                ["git", "-C", str(ROOT), "show", f"{a.before_rev}:pipelines/{mod}.py"],
                check=True, capture_output=True, text=True).stdout)
        made = subprocess.run([sys.executable, __file__, "--make", str(d),
                               "10" if a.small else "1"], env=env, check=True,
                              capture_output=True, text=True)
        cases = {k: Path(v) for k, v in json.loads(made.stdout.splitlines()[-1]).items()}
        rows = []
        for name, path in cases.items():
            for variant in ("before", "after", "after256"):
                p = subprocess.run([sys.executable, __file__, "--worker", str(path), variant,
                                    str(d / "md"), str(before_dir)], env=env,
                                   capture_output=True, text=True)
                line = next((x for x in p.stdout.splitlines() if x.startswith("RESULT ")), None)
                if line is None:
                    rows.append((name, path.stat().st_size, variant, None, p.stderr[-300:]))
                    continue
                rows.append((name, path.stat().st_size, variant, json.loads(line[7:]), ""))
        print(f"\n{'case':<13} {'file':>9} {'variant':<9} {'base MB':>8} {'peak MB':>8} "
              f"{'peak-base':>9} {'kept':>5} {'s':>6}  drops")
        for name, size, variant, r, err in rows:
            if r is None:
                print(f"{name:<13} {size:>9} {variant:<9} FAILED {err!r}")
                continue
            print(f"{name:<13} {size:>9} {variant:<9} {r['base_mb']:>8.0f} {r['peak_mb']:>8.0f} "
                  f"{r['peak_mb'] - r['base_mb']:>9.0f} {r['kept']:>5} {r['s']:>6.1f}  "
                  f"{r['drops']}")


if __name__ == "__main__":
    main()
