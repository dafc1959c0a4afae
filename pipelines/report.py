"""Plots for reports (PNG through storage, so they land in S3 as well as on disk)."""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.collections import PolyCollection  # noqa: E402
from matplotlib.markers import TICKDOWN, TICKLEFT, TICKRIGHT, TICKUP  # noqa: E402
from matplotlib.ticker import FixedLocator, LogFormatterSciNotation, NullLocator  # noqa: E402
from matplotlib.transforms import ScaledTranslation  # noqa: E402

from worldclip.platform import storage  # noqa: E402

DPI = 110
PNG_COMPRESS_LEVEL = 1  # zlib level: lossless either way; 6 (PIL's default) took 1.4x as long
TAIL_POINTS = 1000  # log-spaced ranks per long-tail curve: on log-log, as all ranks look
TAIL_LANGUAGES = 8
# Glyphs rasterised without FreeType hinting: the same text, a shade softer at 110 dpi, and
# 10% of the two curation plots' time (they are all text and lines): bench/bench_plots.py.
CURATION_RC = {"text.hinting": "no_hinting"}


def save_figure(fig: Any, url: str, tight: bool = True, inputs: str = "") -> None:
    """PNG of `fig` to `url` (local or S3). `tight=False` keeps the figure's own margins:
    bbox_inches="tight" draws the whole figure twice, once only to measure it, and the
    curation plots, written on every curate and rebalance, set their margins themselves.
    `inputs` (a digest of what was drawn) is kept in the PNG's text (`is_current`)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight" if tight else None,
                pil_kwargs={"compress_level": PNG_COMPRESS_LEVEL,
                            "pnginfo": png_info(inputs)})
    plt.close(fig)
    storage.write_bytes(url, buf.getvalue())


INPUTS_KEY = "worldclip-inputs"
# Bump when a curation figure is drawn differently: every stored one is redrawn once.
FIGURES_VERSION = 1


def png_info(inputs: str) -> Any:
    """PNG text chunks holding `inputs` (the digest `is_current` compares), if any."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    if inputs:
        info.add_text(INPUTS_KEY, inputs)
    return info


def inputs_digest(*parts: Any) -> str:
    """sha256 of what a figure is drawn from (arrays by their bytes, the rest as JSON)."""
    h = hashlib.sha256(str(FIGURES_VERSION).encode())
    for part in parts:
        h.update(part.tobytes() if isinstance(part, np.ndarray)
                 else json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()


def is_current(url: str, inputs: str) -> bool:
    """Whether `url` holds a figure drawn from `inputs` (the digest in its PNG text): a
    rebalance then leaves it, e.g. the language bars of an online curation, which do not
    depend on the thresholds (docs/curation.md, "Rebalance")."""
    from PIL import Image

    if not storage.exists(url):
        return False
    try:
        with Image.open(io.BytesIO(storage.read_bytes(url))) as im:
            return im.text.get(INPUTS_KEY) == inputs
    except Exception:  # noqa: BLE001 -- unreadable: draw it again
        return False


def tail_ranks(n: int, points: int = TAIL_POINTS) -> np.ndarray:
    """1-based ranks 1..n, log-spaced, at most about `points` of them, always 1 and n.

    On a log-log axis a sorted curve drawn through these ranks looks the same as through all
    n of them, and drawing stays cheap when an entry list has hundreds of thousands of
    entries (the plots are redrawn on every rebalance: docs/curation.md, "Rebalance")."""
    if n <= 0:
        return np.zeros(0, dtype=np.int64)
    if n <= points:
        return np.arange(1, n + 1, dtype=np.int64)
    ranks = np.unique(np.geomspace(1, n, points).round().astype(np.int64))
    ranks[0], ranks[-1] = 1, n  # round-off never drops the ends
    return ranks


def tail_curve(counts: np.ndarray, points: int = TAIL_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """(ranks, counts) of the entries with a match, largest first, at `tail_ranks`."""
    ascending = np.sort(counts)  # zeros first: no masked copy, no reversed copy
    n = ascending.size - int(np.searchsorted(ascending, 0, side="right"))
    ranks = tail_ranks(n, points)
    return ranks, ascending[ascending.size - ranks]


def _margins(fig: Any, left: float, right: float, bottom: float, top: float) -> None:
    """Fixed margins in inches, so no layout pass is needed at save time."""
    w, h = fig.get_size_inches()
    fig.subplots_adjust(left=left / w, right=1 - right / w, bottom=bottom / h, top=1 - top / h)


_SUPERSCRIPT = str.maketrans("-0123456789", "\u207b\u2070\u00b9\u00b2\u00b3\u2074\u2075\u2076"
                             "\u2077\u2078\u2079")


class PlainLogFormatter(LogFormatterSciNotation):
    """matplotlib's log-axis labels (the same ticks labelled, "10\u00b3", "2\u00d710\u00b3"),
    written as plain text with superscript digits instead of mathtext: each figure gets a new
    renderer and so a new mathtext parser (its cache is per parser), and parsing the labels
    again was a quarter of plot_curation's time (bench/bench_plots.py)."""

    def __call__(self, x: float, pos: int | None = None) -> str:
        label = super().__call__(x, pos)
        if not label.startswith("$"):
            return label
        body = label.removeprefix("$\\mathdefault{").removesuffix("}$")
        body = body.replace("\\times", "\u00d7")
        return re.sub(r"\^\{(-?\d+)\}", lambda m: m.group(1).translate(_SUPERSCRIPT), body)


def _plain_log_axis(axis: Any) -> None:
    """Log scale labelled without mathtext (PlainLogFormatter), majors and minors as
    matplotlib's defaults choose them (minors labelled when the axis spans few decades)."""
    axis.set_major_formatter(PlainLogFormatter(10))
    axis.set_minor_formatter(PlainLogFormatter(10, labelOnlyBase=False))


_MINOR_MARKERS = {("x", "out"): TICKDOWN, ("x", "in"): TICKUP,
                  ("y", "out"): TICKLEFT, ("y", "in"): TICKRIGHT}


def freeze_log_axis(ax: Any, which: str) -> None:
    """Fix a log axis's limits and ticks once its data is in, so drawing builds fewer Ticks.

    matplotlib builds each tick from five artists, for every location its locator returns,
    in view or not: a log axis over six decades had 9 major and 60 minor Ticks, a third of a
    plot's time. Here the major ticks are the decades in view, and the unlabelled minor ticks
    are one marker line (rcParams' minor size, width, colour, direction: the same marks). An
    axis over so few decades that matplotlib labels its minor ticks keeps real ones."""
    get_lim, set_lim = (ax.get_xlim, ax.set_xlim) if which == "x" else (ax.get_ylim, ax.set_ylim)
    axis = ax.xaxis if which == "x" else ax.yaxis
    lo, hi = sorted(get_lim())
    set_lim(get_lim())
    axis.set_major_locator(FixedLocator([v for v in axis.get_majorticklocs() if lo <= v <= hi]))
    direction = matplotlib.rcParams[f"{which}tick.direction"]
    decades = math.floor(math.log10(hi)) - math.floor(math.nextafter(math.log10(lo), -math.inf))
    if decades <= 1 or (which, direction) not in _MINOR_MARKERS:  # minor labels: ticker.py
        return
    locs = [v for v in axis.get_minorticklocs() if lo <= v <= hi]
    axis.set_minor_locator(NullLocator())
    rc = matplotlib.rcParams
    at = [0.0] * len(locs)
    xy = (locs, at) if which == "x" else (at, locs)
    ax.plot(*xy, ls="none", marker=_MINOR_MARKERS[which, direction],
            ms=rc[f"{which}tick.minor.size"], mew=rc[f"{which}tick.minor.width"],
            color=rc[f"{which}tick.color"], clip_on=False,
            transform=ax.get_xaxis_transform() if which == "x" else ax.get_yaxis_transform())


def category_ticks(ax: Any, x: np.ndarray, labels: list[str], rotation: float = 0) -> None:
    """x tick marks and labels at `x`, drawn as ax.set_xticks(x, labels) draws them (same
    rcParams size, pad, font, colour; the same pixels), from one marker line and one Text per
    label instead of one Tick (five artists) per label: at 30 languages the ticks were almost
    half of the languages plot's time."""
    rc = matplotlib.rcParams
    ax.set_xticks([])
    direction = rc["xtick.direction"]
    ax.plot(x, np.zeros(len(x)), ls="none", marker=TICKDOWN if direction == "out" else TICKUP,
            ms=rc["xtick.major.size"], mew=rc["xtick.major.width"], color=rc["xtick.color"],
            transform=ax.get_xaxis_transform(), clip_on=False)
    below = (rc["xtick.major.pad"] + (rc["xtick.major.size"] if direction == "out" else 0)) / 72
    at = ax.get_xaxis_transform() + ScaledTranslation(0, -below, ax.figure.dpi_scale_trans)
    color = rc["xtick.labelcolor"]
    for xi, label in zip(x, labels):
        ax.text(xi, 0, label, transform=at, rotation=rotation, ha="center", va="top",
                fontsize=rc["xtick.labelsize"],
                color=rc["xtick.color"] if color == "inherit" else color, clip_on=False)


def log_bars(ax: Any, x: np.ndarray, heights: np.ndarray, width: float, color: str,
             label: str) -> None:
    """Bars from 0 to `heights` centred on `x`, on a log y axis, as one PolyCollection: the
    pixels and y range of ax.bar (the positive bar tops, with matplotlib's margins; a log
    axis ignores the 0 ends) without ax.bar's one patch per bar (a fifth of the languages
    plot's time at 30 languages). Call autoscale_view (or draw) afterwards."""
    heights = np.asarray(heights, dtype=float)
    left, right, zero = x - width / 2, x + width / 2, np.zeros_like(heights)
    corners = np.stack([np.column_stack(c) for c in
                        ((left, zero), (left, heights), (right, heights), (right, zero))], axis=1)
    ax.add_collection(PolyCollection(corners, facecolors=color, edgecolors="none", linewidths=0,
                                     label=label), autolim=False)
    top = heights > 0
    if top.any():
        ax.update_datalim(np.column_stack([x[top], heights[top]]), updatex=False)


def languages_figure(card: dict[str, Any]) -> Any:
    """Pairs per language in, matched and (offline) kept, largest language first."""
    stats = card["languages"]
    langs = sorted(stats, key=lambda g: -stats[g]["pairs_in"])
    series = [("pairs_in", "pairs in (with a caption)"), ("matched", "matched pairs")]
    if None not in [stats[g]["kept"] for g in langs]:
        series.append(("kept", "kept pairs (balanced)"))  # online: drawn per epoch, not here
    width = max(6.0, 0.5 * len(langs))
    longest = max((len(g) for g in langs), default=2)
    bottom = 0.35 + 0.07 * longest  # rotated 45 degrees: about 0.1 in a character, x sin 45
    fig, ax = plt.subplots(figsize=(width, 4 + bottom - 0.6))
    _margins(fig, left=0.8, right=0.2, bottom=bottom, top=0.6)
    ax.set_yscale("log")
    x = np.arange(len(langs), dtype=float)
    bar = 0.8 / len(series)
    for i, (key, label) in enumerate(series):
        log_bars(ax, x + (i - (len(series) - 1) / 2) * bar, [stats[g][key] for g in langs],
                 bar, f"C{i}", label)
    category_ticks(ax, x, langs, rotation=45)
    ax.set_xlim(-0.6, len(langs) - 0.4)
    _plain_log_axis(ax.yaxis)
    ax.set_ylabel("pairs, by first caption's language")
    # above the legend; y given: no search for overlapping tick labels at draw time
    ax.set_title("Pairs per language before and after balancing", y=1.0, pad=20)
    # above the bars, not over them: no search for a free spot ("best")
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(series), fontsize=8,
              frameon=False, borderaxespad=0.1)
    ax.autoscale_view(scalex=False)
    freeze_log_axis(ax, "y")
    return fig


def long_tail_figure(counts: dict[str, np.ndarray], thresholds: Any) -> Any:
    """Entry-count long tail of the largest languages, each with its t_lang dashed.

    Each curve is drawn through `tail_ranks` (about TAIL_POINTS ranks), not every entry."""
    totals = {g: int(c.sum()) for g, c in counts.items()}
    top = sorted(counts, key=lambda g: -totals[g])[:TAIL_LANGUAGES]
    fig, ax = plt.subplots(figsize=(7, 4))
    legend_width = 0.45 + 0.06 * max((len(g) for g in top), default=2)  # fontsize 7
    _margins(fig, left=0.8, right=0.15 + legend_width, bottom=0.55, top=0.35)
    ax.set_xscale("log")
    ax.set_yscale("log")
    t_lines, t_colors, drawn = [], [], 0
    for g in top:
        ranks, c = tail_curve(counts[g])
        if c.size:
            line, = ax.plot(ranks, c, label=g)
            drawn += 1
            t = thresholds.t_lang.get(g)
            if t is not None and np.isfinite(t) and t > 0:
                t_lines.append(t)
                t_colors.append(line.get_color())
    if t_lines:  # as axhline: across the axes, and inside the y range
        ax.hlines(t_lines, 0, 1, colors=t_colors, linestyles="--", lw=0.8,
                  transform=ax.get_yaxis_transform())
    _plain_log_axis(ax.xaxis)
    _plain_log_axis(ax.yaxis)
    ax.set_xlabel("entry rank")
    ax.set_ylabel("matches (count)")
    ax.set_title("Entry-count long tail; dashed: t_lang", y=1.0)  # y given: no overlap search
    if drawn:  # beside the axes, not over the curves: no search for a free spot ("best")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    freeze_log_axis(ax, "x")
    freeze_log_axis(ax, "y")
    return fig


def plot_curation(card: dict[str, Any], counts: dict[str, np.ndarray], thresholds: Any,
                  out: str) -> list[str]:
    """Language distribution before/after balancing; entry-count long tail with t marked.

    Written on every curate and rebalance, so it is kept cheap (bench/bench_plots.py): fixed
    margins instead of bbox_inches="tight", the long tail at log-spaced ranks, legends at
    fixed places, plain-text log labels, fewer matplotlib Ticks (freeze_log_axis,
    category_ticks), bars as one collection per series, unhinted glyphs (CURATION_RC)."""
    urls = [storage.join(out, "languages.png"), storage.join(out, "long_tail.png")]
    langs = {g: [v.get("pairs_in"), v.get("matched"), v.get("kept")]
             for g, v in card["languages"].items()}
    inputs = [inputs_digest("languages", langs),
              inputs_digest("long_tail", *(counts[g] for g in sorted(counts)), sorted(counts),
                            dict(sorted(thresholds.t_lang.items())))]
    draw = (lambda: languages_figure(card), lambda: long_tail_figure(counts, thresholds))
    with matplotlib.rc_context(CURATION_RC):
        for url, digest, figure in zip(urls, inputs, draw, strict=True):
            if not is_current(url, digest):  # the same inputs draw the same figure
                save_figure(figure(), url, tight=False, inputs=digest)
    return urls
