"""Curation plots (pipelines/report.py): two valid PNGs from metadata-sized counts, the
long-tail downsampling, the bar series online and offline, and the cheaper drawing pieces
(plain log labels, category ticks, downsampled curves) looking as matplotlib's own do."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from matplotlib.collections import LineCollection, PolyCollection
from matplotlib.ticker import LogFormatterSciNotation
from PIL import Image

from worldclip.pipelines import report
from worldclip.pipelines.balancing import ThresholdResult
from worldclip.pipelines.report import plt
from worldclip.platform import storage


def _inputs(languages: int = 30, big: int = 8, entries: int = 200_000, online: bool = False,
            seed: int = 0) -> tuple[dict, dict[str, np.ndarray], ThresholdResult]:
    """A data card and uint64 entry counts shaped like curate's (Zipf-like, a fifth zero)."""
    rng = np.random.default_rng(seed)
    counts = {}
    for i in range(languages):
        n = entries if i < big else 2_000
        c = rng.zipf(1.7, n).clip(max=10**7).astype(np.uint64)
        c[rng.random(n) < 0.2] = 0
        counts[f"l{i:02d}"] = c
    card = {"languages": {g: {"pairs_in": int(c.sum()) * 3, "matched": int(c.sum()),
                              "kept": None if online else int(c.sum()) // 4}
                          for g, c in counts.items()}}
    t_lang = {g: 10.0 + i for i, g in enumerate(counts)}
    t_lang["l01"], t_lang["l02"] = float("inf"), 0.0  # no line for either
    return card, counts, ThresholdResult(p=0.06, t_en=10.0, t_lang=t_lang)


def _pixels(fig) -> np.ndarray:
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba()).astype(int)
    plt.close(fig)
    return rgba


def test_plot_curation_writes_two_pngs(tmp_path) -> None:
    card, counts, thresholds = _inputs()
    urls = report.plot_curation(card, counts, thresholds, str(tmp_path / "plots"))
    assert [u.rsplit("/", 1)[-1] for u in urls] == ["languages.png", "long_tail.png"]
    sizes = []
    for url in urls:
        data = storage.read_bytes(url)
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            assert im.format == "PNG"
            pixels = np.asarray(im.convert("RGB"))
        sizes.append(pixels.shape[1::-1])
        assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 20  # drawn, not blank
    (lw, lh), (tw, th) = sizes
    assert 30 * 0.5 * report.DPI * 0.95 <= lw <= 30 * 0.5 * report.DPI * 1.05  # 0.5 in a language
    assert 300 <= lh <= 600
    assert (tw, th) == (7 * report.DPI, 4 * report.DPI)


def test_plot_curation_on_s3(s3_prefix) -> None:
    card, counts, thresholds = _inputs(languages=4, big=2, entries=5_000)
    for url in report.plot_curation(card, counts, thresholds, storage.join(s3_prefix, "plots")):
        assert url.startswith("s3://")
        assert storage.read_bytes(url)[:4] == b"\x89PNG"


@settings(max_examples=300, deadline=None)
@given(n=st.integers(0, 10**9), points=st.integers(2, 3000))
def test_tail_ranks_keep_first_and_last_and_increase(n: int, points: int) -> None:
    ranks = report.tail_ranks(n, points)
    if n == 0:
        assert ranks.size == 0
        return
    assert ranks[0] == 1 and ranks[-1] == n
    assert np.all(np.diff(ranks) > 0)
    assert ranks.size <= min(n, points)
    if n <= points:
        assert ranks.size == n  # small lists: every rank


@settings(max_examples=200, deadline=None)
@given(values=st.lists(st.integers(0, 2**40), max_size=3000), points=st.integers(2, 500))
def test_tail_curve_is_the_sorted_curve_at_those_ranks(values: list[int], points: int) -> None:
    counts = np.array(values, dtype=np.uint64)
    ranks, curve = report.tail_curve(counts, points)
    full = np.sort(counts[counts > 0])[::-1]
    assert np.array_equal(ranks, report.tail_ranks(full.size, points))
    assert np.array_equal(curve, full[ranks - 1])
    assert np.all(np.diff(curve.astype(np.float64)) <= 0)  # monotone, largest first
    if full.size:
        assert curve[0] == full[0] and curve[-1] == full[-1]


def test_downsampled_long_tail_looks_like_every_rank() -> None:
    """Drawn on the same axes, the curve through tail_ranks and the curve through all 200k
    ranks differ in a few antialiased edge pixels only."""
    counts = _inputs(languages=1, big=1)[1]["l00"]

    def draw(ranks: np.ndarray, values: np.ndarray) -> np.ndarray:
        fig, ax = plt.subplots(figsize=(7, 4), dpi=report.DPI)
        ax.loglog(ranks, values)
        ax.set_xlim(0.5, 3e5)
        ax.set_ylim(0.5, 2e7)
        return _pixels(fig)

    full = np.sort(counts[counts > 0])[::-1]
    every = draw(np.arange(1, full.size + 1), full)
    sampled = draw(*report.tail_curve(counts))
    differ = np.abs(every - sampled).sum(axis=-1) > 60
    assert differ.mean() < 0.002, differ.sum()


@pytest.mark.parametrize("online", [True, False])
def test_languages_bars_online_two_series_offline_three(online: bool) -> None:
    card, _, _ = _inputs(languages=5, big=2, entries=1_000, online=online)
    fig = report.languages_figure(card)
    ax = fig.axes[0]
    bars = [c for c in ax.collections if isinstance(c, PolyCollection)]
    expected = ["pairs in (with a caption)", "matched pairs"] + ([] if online else
                                                                 ["kept pairs (balanced)"])
    assert [b.get_label() for b in bars] == expected
    assert [t.get_text() for t in ax.get_legend().get_texts()] == expected
    langs = sorted(card["languages"], key=lambda g: -card["languages"][g]["pairs_in"])
    for bar, key in zip(bars, ["pairs_in", "matched", "kept"]):
        tops = [p.vertices[:, 1].max() for p in bar.get_paths()]
        assert tops == [card["languages"][g][key] for g in langs]
    lo, hi = ax.get_ylim()
    values = [card["languages"][g][k] for g in langs for k in ("pairs_in", "matched")]
    assert lo < min(values) and max(values) < hi  # every bar top in view
    assert [t.get_text() for t in ax.texts] == langs  # the x labels, largest first
    plt.close(fig)


def test_long_tail_top_languages_and_their_thresholds() -> None:
    card, counts, thresholds = _inputs(languages=12, big=10, entries=3_000)
    thresholds.t_lang["l03"] = 1e9  # above every count: still in view, as axhline was
    fig = report.long_tail_figure(counts, thresholds)
    ax = fig.axes[0]
    top = sorted(counts, key=lambda g: -int(counts[g].sum()))[:report.TAIL_LANGUAGES]
    curves = [line for line in ax.lines if not line.get_label().startswith("_")]
    assert [line.get_label() for line in curves] == top
    assert all(line.get_xdata().size <= report.TAIL_POINTS for line in curves)
    dashed = [c for c in ax.collections if isinstance(c, LineCollection)]
    assert len(dashed) == 1
    with_t = [g for g in top if g not in ("l01", "l02")]  # inf and 0 get no line
    assert sorted(s[0, 1] for s in dashed[0].get_segments()) == sorted(
        thresholds.t_lang[g] for g in with_t)
    assert ax.get_ylim()[1] > 1e9
    plt.close(fig)


def test_plot_curation_with_nothing_matched(tmp_path) -> None:
    card = {"languages": {"en": {"pairs_in": 3, "matched": 0, "kept": 0}}}
    counts = {"en": np.zeros(10, dtype=np.uint64)}
    thresholds = ThresholdResult(p=0.06, t_en=None, t_lang={"en": float("inf")})
    for url in report.plot_curation(card, counts, thresholds, str(tmp_path)):
        assert storage.read_bytes(url)[:4] == b"\x89PNG"


@pytest.mark.parametrize("view", [(1, 5), (1, 50), (0.5, 2e5), (1e-3, 10), (3e4, 4e8)])
def test_plain_log_labels_are_matplotlibs_without_mathtext(view: tuple[float, float]) -> None:
    fig, ax = plt.subplots()
    ax.set_yscale("log")
    ax.set_ylim(*view)
    for minor in (False, True):
        ours = report.PlainLogFormatter(10, labelOnlyBase=not minor)
        stock = LogFormatterSciNotation(10, labelOnlyBase=not minor)
        for f in (ours, stock):
            f.set_axis(ax.yaxis)
            f.set_locs([])
        for v in np.geomspace(view[0], view[1], 40):
            a, b = ours(v), stock(v)
            assert (a == "") == (b == ""), (v, a, b)
            assert "$" not in a and "\\" not in a
    expected = {1: "10⁰", 1e3: "10³", 1e-3: "10⁻³", 2e3: "2×10³"}
    f = report.PlainLogFormatter(10, labelOnlyBase=False)
    f.set_axis(ax.yaxis)
    f._sublabels = None  # label every value
    assert {v: f(v) for v in expected} == expected
    plt.close(fig)


@pytest.mark.parametrize("top", [40.0, 4e6])  # minor ticks labelled / unlabelled
def test_freeze_log_axis_draws_the_pixels_of_matplotlibs_ticks(top: float) -> None:
    images = []
    for frozen in (False, True):
        fig, ax = plt.subplots(figsize=(5, 3.5), dpi=report.DPI)
        ax.loglog([1, 2e5], [3, top])
        if frozen:
            report.freeze_log_axis(ax, "x")
            report.freeze_log_axis(ax, "y")
        images.append(_pixels(fig))
    assert np.array_equal(images[0], images[1])


def test_category_ticks_draw_the_pixels_of_set_xticks() -> None:
    labels = ["en", "de", "zh-Hant", "ja", "sw"]
    x = np.arange(len(labels), dtype=float)
    images = []
    for ours in (False, True):
        fig, ax = plt.subplots(figsize=(4, 3), dpi=report.DPI)
        ax.bar(x, [5, 4, 3, 2, 1])
        if ours:
            report.category_ticks(ax, x, labels, rotation=45)
        else:
            ax.set_xticks(x, labels, rotation=45)
        ax.set_xlim(-0.6, len(labels) - 0.4)
        images.append(_pixels(fig))
    assert np.array_equal(images[0], images[1])


def test_log_bars_draw_the_pixels_of_ax_bar() -> None:
    rng = np.random.default_rng(1)
    series = [rng.integers(0, 10**6, 12).astype(float) for _ in range(3)]
    series[1][3] = 0  # a language with nothing matched: no bar, no effect on the range
    images, limits = [], []
    for ours in (False, True):
        fig, ax = plt.subplots(figsize=(6, 4), dpi=report.DPI)
        ax.set_yscale("log")
        for i, heights in enumerate(series):
            at = np.arange(12.0) + (i - 1) * 0.8 / 3
            if ours:
                report.log_bars(ax, at, heights, 0.8 / 3, f"C{i}", f"s{i}")
            else:
                ax.bar(at, heights, 0.8 / 3)
        ax.set_xlim(-0.6, 11.6)
        ax.autoscale_view(scalex=False)
        limits.append(ax.get_ylim())
        images.append(_pixels(fig))
    assert limits[0] == limits[1]
    assert np.array_equal(images[0], images[1])


def test_save_figure_tight_by_default(tmp_path) -> None:
    """Other reports (eval, tune, demo) keep bbox_inches="tight"."""
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.set_xlabel("a label wider than the figure " * 6)
    url = str(tmp_path / "p.png")
    report.save_figure(fig, url)
    with Image.open(url) as im:
        assert im.format == "PNG" and im.size[0] > 4 * report.DPI  # grew to fit the label


@pytest.mark.parametrize("online", [True, False])
def test_a_figure_drawn_from_the_same_inputs_is_not_drawn_again(tmp_path, online) -> None:
    import dataclasses

    card, counts, thresholds = _inputs(languages=6, big=2, entries=5_000, online=online)
    langs_png, tail_png = (tmp_path / "languages.png", tmp_path / "long_tail.png")
    report.plot_curation(card, counts, thresholds, str(tmp_path))
    first = {p: p.stat().st_mtime_ns for p in (langs_png, tail_png)}
    report.plot_curation(card, counts, thresholds, str(tmp_path))  # the same inputs
    assert {p: p.stat().st_mtime_ns for p in first} == first
    # a rebalance: other thresholds (and, offline, other kept counts)
    t_lang = {g: t * 2 for g, t in thresholds.t_lang.items()}
    other = dataclasses.replace(thresholds, t_lang=t_lang)
    if not online:
        card = {**card, "languages": {g: {**v, "kept": (v["kept"] or 0) + 1}
                                      for g, v in card["languages"].items()}}
    report.plot_curation(card, counts, other, str(tmp_path))
    assert tail_png.stat().st_mtime_ns != first[tail_png]  # redrawn
    # online, the bars do not depend on the thresholds: the stored figure stays
    assert (langs_png.stat().st_mtime_ns == first[langs_png]) is online
    assert Image.open(tail_png).text[report.INPUTS_KEY] == report.inputs_digest(
        "long_tail", *(counts[g] for g in sorted(counts)), sorted(counts),
        dict(sorted(t_lang.items())))
