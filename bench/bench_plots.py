"""The curation plots (report.plot_curation) vs the simple way they were drawn before.

    .venv/bin/python bench/bench_plots.py [--languages 30] [--big 8] [--entries 200000]
                                          [--repeats 15]

plot_curation runs on every `curate` and `rebalance` (docs/curation.md, "Rebalance"), so its
two PNGs (languages.png, long_tail.png) are part of the cost of a rebalance. The input is a
synthetic data card of --languages languages and per-language entry counts as large as the
metadata: --big languages with --entries Zipf-distributed counts each (a fifth of them zero,
as entries that matched nothing), the rest with 2,000 entries.

  before  the previous plot_curation, kept inline here: bbox_inches="tight" (the figure is
          drawn twice), every rank of the long-tail curves (hundreds of thousands of points),
          legend placement "best", mathtext log labels.
  after   report.plot_curation: fixed margins, long tail at log-spaced ranks
          (report.tail_ranks), legends at fixed places, plain-text log labels, fewer
          matplotlib Ticks, one bar collection per series, unhinted glyphs.

Both write into one temporary folder; matplotlib is imported and both are warmed up first
(steady state, as inside a running `curate`). They alternate --repeats times; the table gives
the median and the minimum of wall time and of this process's CPU time (the CPU time is less
sensitive to other processes on a shared machine) and the ratios before/after.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import numpy as np

from worldclip.pipelines import report
from worldclip.pipelines.report import plt
from worldclip.platform import storage


def make_inputs(languages: int, big: int, entries: int, seed: int = 0
                ) -> tuple[dict[str, Any], dict[str, np.ndarray], Any]:
    """(card, counts, thresholds) shaped like the real ones (curate/datacard.py,
    balancing.py's Thresholds: only .t_lang is read)."""
    rng = np.random.default_rng(seed)
    names = [f"l{i:02d}" for i in range(languages)]
    counts: dict[str, np.ndarray] = {}
    for i, g in enumerate(names):
        n = entries if i < big else 2_000
        c = rng.zipf(1.7, n).clip(max=10**7).astype(np.int64)
        c[rng.random(n) < 0.2] = 0
        counts[g] = c
    card = {"languages": {g: {"pairs_in": int(c.sum()) * 3, "matched": int(c.sum()),
                              "kept": int(c.sum()) // 4} for g, c in counts.items()}}
    thresholds = SimpleNamespace(t_lang={g: 10.0 + 2 * i for i, g in enumerate(names)})
    return card, counts, thresholds


def _save_before(fig: Any, url: str) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    storage.write_bytes(url, buf.getvalue())


def plot_curation_before(card: dict[str, Any], counts: dict[str, np.ndarray], thresholds: Any,
                         out: str) -> list[str]:
    """The previous report.plot_curation, verbatim but for the save helper's name."""
    langs = sorted(card["languages"], key=lambda g: -card["languages"][g]["pairs_in"])
    before = [card["languages"][g]["pairs_in"] for g in langs]
    matched = [card["languages"][g]["matched"] for g in langs]
    after = [card["languages"][g]["kept"] for g in langs]
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(langs)), 4))
    x = np.arange(len(langs))
    ax.bar(x - 0.27, before, 0.27, label="pairs in (with a caption)")
    ax.bar(x, matched, 0.27, label="matched pairs")
    if None not in after:
        ax.bar(x + 0.27, after, 0.27, label="kept pairs (balanced)")
    ax.set_xticks(x, langs, rotation=45)
    ax.set_yscale("log")
    ax.set_ylabel("pairs, by first caption's language")
    ax.set_title("Pairs per language before and after balancing")
    ax.legend()
    urls = [storage.join(out, "languages.png")]
    _save_before(fig, urls[0])

    fig, ax = plt.subplots(figsize=(7, 4))
    for g in sorted(counts, key=lambda g: -int(counts[g].sum()))[:8]:
        c = np.sort(counts[g][counts[g] > 0])[::-1]
        if c.size:
            line, = ax.loglog(np.arange(1, c.size + 1), c, label=g)
            t = thresholds.t_lang.get(g)
            if t is not None and np.isfinite(t) and t > 0:
                ax.axhline(t, color=line.get_color(), ls="--", lw=0.8)
    ax.set_xlabel("entry rank")
    ax.set_ylabel("matches (count)")
    ax.set_title("Entry-count long tail; dashed: t_lang")
    ax.legend(fontsize=7)
    urls.append(storage.join(out, "long_tail.png"))
    _save_before(fig, urls[1])
    return urls


def timed(fn: Callable[[], Any]) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call."""
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--languages", type=int, default=30)
    ap.add_argument("--big", type=int, default=8)
    ap.add_argument("--entries", type=int, default=200_000)
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args()
    card, counts, thresholds = make_inputs(args.languages, args.big, args.entries)
    with tempfile.TemporaryDirectory() as tmp:
        runs = {"before": lambda: plot_curation_before(card, counts, thresholds,
                                                       os.path.join(tmp, "before")),
                "after": lambda: report.plot_curation(card, counts, thresholds,
                                                      os.path.join(tmp, "after"))}
        for fn in runs.values():  # warm-up: imports, font cache, first renderer
            fn()
        times: dict[str, list[tuple[float, float]]] = {k: [] for k in runs}
        for _ in range(args.repeats):
            for name, fn in runs.items():
                times[name].append(timed(fn))
        sizes = {k: [os.path.getsize(os.path.join(tmp, k, f))
                     for f in ("languages.png", "long_tail.png")] for k in runs}
    print(f"plot_curation: {args.languages} languages, {args.big} x {args.entries:,} entries; "
          f"{args.repeats} alternating repeats; load average {os.getloadavg()[0]:.2f} "
          f"on {os.cpu_count()} CPUs")
    print(f"{'':8} {'wall median':>12} {'wall min':>10} {'cpu median':>11} {'cpu min':>9}"
          f"   PNG bytes (languages, long_tail)")
    stats = {}
    for name, ts in times.items():
        wall, cpu = [t[0] for t in ts], [t[1] for t in ts]
        stats[name] = (statistics.median(wall), min(wall), statistics.median(cpu), min(cpu))
        print(f"{name:8} " + " ".join(f"{v:>{w}.3f}s" for v, w in
                                      zip(stats[name], (11, 9, 10, 8))) + f"   {sizes[name]}")
    ratio = [b / a for b, a in zip(stats["before"], stats["after"])]
    print(f"{'ratio':8} " + " ".join(f"{v:>{w}.1f}x" for v, w in zip(ratio, (11, 9, 10, 8)))
          + "   (before / after)")


if __name__ == "__main__":
    main()
