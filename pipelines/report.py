"""Plots for reports (PNG through storage, so they land in S3 as well as on disk)."""

from __future__ import annotations

import io
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from worldclip.platform import storage  # noqa: E402


def save_figure(fig: Any, url: str) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    storage.write_bytes(url, buf.getvalue())


def plot_curation(card: dict[str, Any], counts: dict[str, np.ndarray], thresholds: Any,
                  out: str) -> list[str]:
    """Language distribution before/after balancing; entry-count long tail with t marked."""
    langs = sorted(card["languages"], key=lambda g: -card["languages"][g]["pairs_in"])
    before = [card["languages"][g]["pairs_in"] for g in langs]
    matched = [card["languages"][g]["matched"] for g in langs]
    after = [card["languages"][g]["kept"] for g in langs]
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(langs)), 4))
    x = np.arange(len(langs))
    ax.bar(x - 0.27, before, 0.27, label="pairs in (with a caption)")
    ax.bar(x, matched, 0.27, label="matched pairs")
    if None not in after:  # online: drawn per epoch by the training stream, not here
        ax.bar(x + 0.27, after, 0.27, label="kept pairs (balanced)")
    ax.set_xticks(x, langs, rotation=45)
    ax.set_yscale("log")
    ax.set_ylabel("pairs, by first caption's language")
    ax.set_title("Pairs per language before and after balancing")
    ax.legend()
    urls = [storage.join(out, "languages.png")]
    save_figure(fig, urls[0])

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
    save_figure(fig, urls[1])
    return urls
