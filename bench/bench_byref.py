"""Curation by reference (issue 14): bytes kept, rebalance vs full curation, incremental.

    RAY_USAGE_STATS_ENABLED=0 OMP_NUM_THREADS=1 .venv/bin/python bench/bench_byref.py \
        [--pairs 100000] [--shards 20] [--repeats 7] [--incremental-repeats 2] [--ray-cpus 4]
    quick (~3 min): ... bench/bench_byref.py --pairs 10000 --shards 10

Two embedded worlds (WebDataset shards only, the same pairs per shard): the pool (--pairs in
--shards shards) and a tenth of it (--pairs/10, a tenth of the shards). One local Ray
(--ray-cpus logical CPUs, default 4) stays up for the whole run, so every figure is
in-process with Ray already up; a warm-up curation of the small world (worker processes,
imports) is not timed. Every curation is online (curation.mode=online), with the defaults
otherwise (fastText LID, dedup on).

  bytes        everything `curate` leaves under curation.out except config.yaml (match
               index, per-shard counts and stats, dedup hash columns, manifest.json,
               counts.npz) plus the balancing artifact under curation.balanced_out
               (balance.json + balance-<version>.npz), as a share of the raw shards' bytes
               (the world's .tar files). Goal <= 3%.
  rebalance    `curate.run_rebalance` with a new curation.p (each repeat another p, so every
               run writes a new artifact) vs the full `curate.run` of the pool: the speed-up,
               goal >= 50x. The rebalances of the pool and of its tenth alternate; the medians
               are compared: rebalance(10x pool) / rebalance(1x pool), goal <= 1.5x.
  incremental  the pool's shards minus 10% of them (moved to a side folder) are curated into
               a fresh curation.out, the shards are moved back (os.rename keeps the mtime, so
               the raw shard identity is the same), and `curate.run` again into the same
               curation.out matches only the new ones. Its time vs a clean curation of all
               the shards into a fresh curation.out (the full one above, and one more between
               --incremental-repeats runs; medians): goal <= 0.2x. Each result must equal the
               clean one: counts.npz arrays, t_lang, every shard's match index table, and the
               online draws (the keys and texts `draw.draw_by_reference(images=False)`
               keeps, epochs 0 and 1, per shard) -> IDENTICAL or DIFFERENT.
  steps        where the full and the (last) incremental curate.run and the pool's
               rebalances spend their time: pass 1 (stage.run_match), dedup (dedup.run),
               counts (stage._counts), thresholds + balancing artifact + data card + plots
               (stage.run_sample; of it the plots, report.plot_curation, and config.yaml,
               save_config), timed by wrapping those module functions in this process.

Pass 1 against the bare loop (one core, and Ray Data with 2 tasks) is bench_curation.py's
(b) and (c); not repeated here.
"""

from __future__ import annotations

import argparse
import glob
import os
import statistics
import tempfile
import time
from typing import Any

import numpy as np

RAW = ("raw", "wds")


def make_config(root: str, pairs: int, pairs_per_shard: int, *overrides: str) -> Any:
    from worldclip.platform.config import apply_storage, load_config

    cfg = load_config([f"storage.root={root}", f"world.pairs={pairs}",
                       f"world.pairs_per_shard={pairs_per_shard}", "world.formats=[wds]",
                       "world.eval_per_concept=1", "curation.concurrency=2",
                       "curation.mode=online", *overrides])
    apply_storage(cfg)
    return cfg


def timed(fn: Any, *args: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


class StepTimes:
    """Wall time of curate.run's steps, by wrapping the module attributes stage.run calls
    (pass 1, dedup, counts, thresholds + balancing + data card): where an incremental run
    spends its time. Timing only; the wrapped functions run unchanged."""

    STEPS = (("stage", "run_match", "pass 1"), ("dedup", "run", "dedup"),
             ("stage", "_counts", "counts"), ("stage", "run_sample", "balance + card"),
             ("report", "plot_curation", "(plots)"), ("stage", "save_config", "(config)"))

    def __init__(self) -> None:
        from worldclip.pipelines import dedup, report
        from worldclip.pipelines.curate import stage

        self.seconds: dict[str, float] = {label: 0.0 for *_, label in self.STEPS}
        mods = {"stage": stage, "dedup": dedup, "report": report}
        for mod, name, label in self.STEPS:
            orig = getattr(mods[mod], name)

            def wrap(*a: Any, _orig: Any = orig, _label: str = label, **kw: Any) -> Any:
                t0 = time.perf_counter()
                try:
                    return _orig(*a, **kw)
                finally:
                    self.seconds[_label] += time.perf_counter() - t0

            setattr(mods[mod], name, wrap)

    def run(self, fn: Any, *args: Any) -> tuple[float, dict[str, float]]:
        """-> (wall seconds of fn(*args), seconds per step)."""
        before = dict(self.seconds)
        _, s = timed(fn, *args)
        return s, {k: self.seconds[k] - before[k] for k in self.seconds}


def tree_bytes(folder: str, skip: tuple[str, ...] = ()) -> dict[str, int]:
    """Bytes per top-level kind of file under folder (relative path's first part or name)."""
    out: dict[str, int] = {}
    for dirpath, _, names in os.walk(folder):
        for n in names:
            full = os.path.join(dirpath, n)
            rel = os.path.relpath(full, folder)
            if rel in skip:
                continue
            out[rel] = os.path.getsize(full)
    return out


def kind_of(rel: str) -> str:
    """matches/<id>.parquet -> 'match index', ... (the rows of the bytes table)."""
    name = os.path.basename(rel)
    if rel.startswith("matches" + os.sep):
        for suffix, kind in ((".counts.parquet", "per-shard counts"),
                             (".stats.json", "per-shard stats"),
                             (".sha256.parquet", "dedup hash columns"),
                             (".phash.parquet", "dedup hash columns")):
            if name.endswith(suffix):
                return kind
        return "match index (refs)"
    if rel.startswith("dedup" + os.sep):
        return "dedup state"
    return name


# ============================================================== incremental: identical?

def compare_curations(clean: Any, incr: Any) -> list[str]:
    """What differs between two curations of the same inputs ([] = identical)."""
    from worldclip.pipelines import draw, ingest, layout
    from worldclip.pipelines.arrowio import read_parquet
    from worldclip.pipelines.curate import balance, load_counts

    diffs = []
    a = load_counts(layout.global_counts(clean.curation.out))
    b = load_counts(layout.global_counts(incr.curation.out))
    if set(a) != set(b) or any(not np.array_equal(a[g], b[g]) for g in a):
        diffs.append("counts.npz")
    ba, bb = balance.read(clean.curation.balanced_out), balance.read(incr.curation.balanced_out)
    if ba.t_lang != bb.t_lang:
        diffs.append("t_lang")
    ids_a = [s["id"] for s in ba.shards]
    if ids_a != [s["id"] for s in bb.shards]:
        diffs.append("shards of the balancing artifact")
        return diffs
    for sid in ids_a:
        ta = read_parquet(layout.match_file(clean.curation.out, sid))
        tb = read_parquet(layout.match_file(incr.curation.out, sid))
        if not ta.equals(tb):
            diffs.append(f"match index {sid}")
    sa, sb = ingest.Source.open(clean.curation.balanced_out), \
        ingest.Source.open(incr.curation.balanced_out)
    for epoch in (0, 1):
        for fa, fb in zip(sa.files, sb.files, strict=True):
            ka = [(r["key"], r["text"]) for r in draw.draw_by_reference(
                sa, fa, sa.balance.seed, epoch, images=False)]
            kb = [(r["key"], r["text"]) for r in draw.draw_by_reference(
                sb, fb, sb.balance.seed, epoch, images=False)]
            if ka != kb:
                diffs.append(f"online draws of {os.path.basename(fa)} epoch {epoch}")
    return diffs


# ============================================================== main

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=100_000, help="the pool (10x the small one)")
    ap.add_argument("--shards", type=int, default=20,
                    help="shards of the pool (a multiple of 10: the small world has a tenth)")
    ap.add_argument("--repeats", type=int, default=7, help="alternating rebalances per size")
    ap.add_argument("--incremental-repeats", type=int, default=2,
                    help="incremental runs, each with a clean curation beside it")
    ap.add_argument("--ray-cpus", type=int, default=4,
                    help="logical CPUs of the local Ray (2 starves Ray Data's reads)")
    ap.add_argument("--keep", help="write into this folder and keep it (default: a temp dir)")
    args = ap.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if args.shards % 10:
        ap.error("--shards must be a multiple of 10")
    per_shard = -(-args.pairs // args.shards)
    load0 = os.getloadavg()[0]

    import ray

    from worldclip.pipelines import curate, world
    from worldclip.platform import storage
    from worldclip.platform.runtime import worker_env

    with tempfile.TemporaryDirectory(prefix="bench-byref-") as tmp:
        root = args.keep or tmp
        big = make_config(os.path.join(root, "big"), args.pairs, per_shard)
        small = make_config(os.path.join(root, "small"), args.pairs // 10, per_shard)
        t0 = time.perf_counter()
        world.run(big)
        world.run(small)
        gen_s = time.perf_counter() - t0
        raw = sorted(glob.glob(os.path.join(big.world.out, *RAW, "*.tar")))
        raw_bytes = sum(os.path.getsize(p) for p in raw)
        print(f"embedded worlds: {args.pairs:,} pairs in {len(raw)} shards "
              f"({raw_bytes / 1e6:.1f} MB) and {args.pairs // 10:,} pairs in "
              f"{len(glob.glob(os.path.join(small.world.out, *RAW, '*.tar')))} shards "
              f"(generated in {gen_s:.0f}s); load average {load0:.1f} on {os.cpu_count()} cores",
              flush=True)

        ray.init(num_cpus=args.ray_cpus, include_dashboard=False,
                 runtime_env={"env_vars": worker_env()}, logging_level="WARNING")
        ray.data.DataContext.get_current().enable_progress_bars = False
        steps = StepTimes()
        try:
            # warm-up (not timed): worker processes, imports; also the small pool's curation
            curate.run(small)
            full_s, full_steps = steps.run(curate.run, big)
            print(f"full curation of the pool: {full_s:.1f}s", flush=True)

            # ---- bytes
            files = tree_bytes(big.curation.out, skip=("config.yaml",))
            files = {k: v for k, v in files.items()
                     if not k.startswith("balanced" + os.sep)}  # balanced_out is inside out
            bal = big.curation.balanced_out
            artifact = {os.path.basename(p): os.path.getsize(p)
                        for p in [os.path.join(bal, "balance.json"),
                                  *glob.glob(os.path.join(bal, "balance-*.npz"))]}
            other_bal = sum(tree_bytes(bal).values()) - sum(artifact.values())
            by_kind: dict[str, int] = {}
            for rel, n in files.items():
                by_kind[kind_of(rel)] = by_kind.get(kind_of(rel), 0) + n
            by_kind["balancing artifact (balance.json + .npz)"] = sum(artifact.values())

            # ---- rebalance: pool vs its tenth, alternating, a new p each time
            reb: dict[str, list[float]] = {"big": [], "small": [], "big_noplots": []}
            reb_steps: dict[str, float] = {}
            for i in range(args.repeats):
                p = f"curation.p={0.05 + 0.001 * i:.3f}"
                for name, cfg0 in (("big", big), ("small", small)):
                    # into another balanced_out: the pool's own stays the clean p=0.06 one
                    rcfg = make_config(cfg0.storage.root, cfg0.world.pairs, per_shard, p,
                                       f"curation.balanced_out={cfg0.storage.root}/rebalanced")
                    s, st = steps.run(curate.run_rebalance, rcfg)
                    reb[name].append(s)
                    if name == "big":
                        reb_steps = {k: reb_steps.get(k, 0.0) + v / args.repeats
                                     for k, v in st.items()}
                        # as a Tune trial runs it: the artifact and data card, no plots
                        ncfg = make_config(cfg0.storage.root, cfg0.world.pairs, per_shard, p,
                                           f"curation.balanced_out={cfg0.storage.root}/rb-np",
                                           "curation.plots=false")
                        reb["big_noplots"].append(steps.run(curate.run_rebalance, ncfg)[0])
            print(f"rebalances: pool {reb['big']}, tenth {reb['small']}", flush=True)

            # ---- incremental: 90% of the shards, then all of them, into one curation.out;
            # alternating with clean curations of all of them into a fresh curation.out
            side = os.path.join(root, "side")
            os.makedirs(side)
            held = raw[-max(1, len(raw) // 10):]
            clean_s, inc_s, first_s, diffs = [full_s], [], [], []
            inc_steps: dict[str, float] = {}
            for r in range(args.incremental_repeats):
                inc = make_config(big.storage.root, args.pairs, per_shard,
                                  f"curation.out={root}/incremental-{r}",
                                  f"curation.balanced_out={root}/incremental-{r}/balanced")
                for p in held:
                    os.rename(p, os.path.join(side, os.path.basename(p)))
                try:
                    first_s.append(timed(curate.run, inc)[1])
                finally:
                    for p in held:
                        os.rename(os.path.join(side, os.path.basename(p)), p)
                s, inc_steps = steps.run(curate.run, inc)
                inc_s.append(s)
                diffs += compare_curations(big, inc)
                if r + 1 < args.incremental_repeats:  # the next clean baseline
                    clean = make_config(big.storage.root, args.pairs, per_shard,
                                        f"curation.out={root}/clean-{r}",
                                        f"curation.balanced_out={root}/clean-{r}/balanced")
                    clean_s.append(timed(curate.run, clean)[1])
                print(f"incremental {inc_s}, clean {clean_s}", flush=True)
            versions = storage.read_json(os.path.join(inc.curation.balanced_out,
                                                      "datacard.json")).get("versions", {})
        finally:
            ray.shutdown()

    total = sum(by_kind.values())
    print()
    print(f"{'bytes (pool of ' + format(args.pairs, ',') + ' pairs)':<46}{'MB':>9}"
          f"{'% of raw':>10}")
    for kind, n in sorted(by_kind.items(), key=lambda kv: -kv[1]):
        print(f"{kind:<46}{n / 1e6:>9.2f}{100 * n / raw_bytes:>9.2f}%")
    print(f"{'total: curation.out + balancing artifact':<46}{total / 1e6:>9.2f}"
          f"{100 * total / raw_bytes:>9.2f}%  goal <= 3%")
    no_dedup = total - sum(n for k, n in by_kind.items() if k.startswith("dedup"))
    print(f"{'  of which without the dedup hash columns':<46}{no_dedup / 1e6:>9.2f}"
          f"{100 * no_dedup / raw_bytes:>9.2f}%  (absent with curation.dedup=false)")
    print(f"{'raw shards (the pool)':<46}{raw_bytes / 1e6:>9.2f}{100:>9.2f}%")
    print(f"(not counted: data card, plots and config under balanced_out, "
          f"{other_bal / 1e3:.0f} KB)")
    print()
    reb_big, reb_small = statistics.median(reb["big"]), statistics.median(reb["small"])
    print(f"{'time (in-process, Ray up)':<46}{'seconds':>9}{'ratio':>10}  note")
    rows = [
        ("curate.run, pool (full, clean)", full_s, "1.00x", "baseline"),
        ("curate.run_rebalance, pool", reb_big, f"{full_s / reb_big:.1f}x",
         f"full/rebalance, goal >= 50x (median of {args.repeats})"),
        ("curate.run_rebalance, pool, plots=false", statistics.median(reb["big_noplots"]),
         f"{full_s / statistics.median(reb['big_noplots']):.1f}x",
         "full/rebalance as a Tune trial runs it (no plots)"),
        ("curate.run_rebalance, tenth of the pool", reb_small, "1.00x", "baseline"),
        ("curate.run_rebalance, pool (10x)", reb_big, f"{reb_big / reb_small:.2f}x",
         "10x/1x, goal <= 1.5x"),
        ("curate.run, all shards, clean (median)", statistics.median(clean_s), "1.00x",
         f"baseline, {len(clean_s)} runs"),
        (f"curate.run, {len(raw) - len(held)} of {len(raw)} shards", statistics.median(first_s),
         "", "setup of the incremental run"),
        (f"curate.run, +{len(held)} shards (incremental)", statistics.median(inc_s),
         f"{statistics.median(inc_s) / statistics.median(clean_s):.2f}x",
         f"incremental/clean, goal <= 0.2x ({len(inc_s)} runs)"),
    ]
    for name, s, ratio, note in rows:
        print(f"{name:<46}{s:>9.2f}{ratio:>10}  {note}")
    print()
    print(f"{'steps (s)':<26}{'wall':>8}" + "".join(f"{k:>15}" for k in full_steps))
    for name, wall, st in (("curate.run, full, clean", full_s, full_steps),
                           ("curate.run, incremental", inc_s[-1], inc_steps),
                           ("run_rebalance, pool (mean)", statistics.mean(reb["big"]),
                            reb_steps)):
        print(f"{name:<26}{wall:>8.2f}" + "".join(f"{v:>15.2f}" for v in st.values()))
    print("(plots): report.plot_curation, part of balance + card; (config): every "
          "save_config (config.yaml)")
    print()
    print(f"incremental vs clean: {'IDENTICAL' if not diffs else 'DIFFERENT'} (counts.npz, "
          "t_lang, match index of every shard, online draws of epochs 0 and 1)"
          + ("" if not diffs else f": {diffs[:5]}"))
    this_run = versions.get("this_run", {})
    print("data card versions of the incremental run: " + ", ".join(
        f"{k} {this_run.get(k)}" for k in ("shards", "reused", "added", "changed", "removed")))
    print(f"load average {load0:.1f} -> {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
