"""A finished sweep as results: one row per trial, the best trial, the tables, the plot and
the best thresholds as a curation config."""

from __future__ import annotations

import math
import os
import re
from typing import Any

from omegaconf import DictConfig, OmegaConf

from worldclip.pipelines.tune.paths import epoch0_url, trial_dir_for
from worldclip.pipelines.tune.search import METRIC, TIME_ATTR
from worldclip.platform import storage


def trial_status(row: dict[str, Any], train_steps: int) -> str:
    if row.get("error"):
        return "error"
    if row.get("last_step") is None:
        return "no_report"
    return "completed" if row["last_step"] >= train_steps else "stopped_early"


def pick_best(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Best final metric among the trials that trained longest (completed ones): a trial
    stopped at an early rung is not compared on its early, lower-step number."""
    ok = [r for r in rows if r.get("last_step") is not None and r.get(METRIC) is not None
          and not r.get("error")]
    if not ok:
        return None
    longest = max(r["last_step"] for r in ok)
    return max((r for r in ok if r["last_step"] == longest), key=lambda r: r[METRIC])


def best_curation_yaml(best: dict[str, Any], param: str) -> str:
    """A curation config with the best thresholds, for `worldclip curate --config FILE`."""
    value = best[param]
    cur = {"p": float(value) if param == "p" else None,
           "t_en": float(value) if param == "t_en" else None,
           "threshold_mode": best["threshold_mode"]}
    head = [f"# best thresholds of `worldclip tune` (trial {best['trial_id']}):",
            f"# {METRIC}={best[METRIC]:.4f} after {best['last_step']} proxy steps on "
            f"{best['kept']} curated pairs",
            f"# at the sweep's scale this p gives t_en={best['derived_t_en']}; p (a tail "
            "share) transfers across pool sizes, t_en does not (docs/curation.md, section 4)"]
    return "\n".join(head) + "\n" + OmegaConf.to_yaml(OmegaConf.create({"curation": cur}))


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if not v.is_integer() or abs(v) >= 1e6 else str(int(v))
    return str(v)


def results_markdown(rows: list[dict[str, Any]], param: str, best: dict[str, Any] | None
                     ) -> str:
    """Two Markdown tables: the trials, and their curated pairs per language."""
    cols = ["trial", "mode", param, "t_en (derived)" if param == "p" else "p (derived)",
            "kept", "last step", METRIC, f"best {METRIC}", "status"]
    lines = ["# worldclip tune: results", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        other = r["derived_t_en"] if param == "p" else r["derived_p"]
        mark = " **best**" if best and r["trial_id"] == best["trial_id"] else ""
        lines.append("| " + " | ".join([
            r["trial_id"] + mark, r["threshold_mode"], _fmt(r[param]), _fmt(other),
            _fmt(r["kept"]), _fmt(r["last_step"]), _fmt(r[METRIC]),
            _fmt(r[f"best_{METRIC}"]), r["status"]]) + " |")
    langs = sorted({g for r in rows for g in (r.get("languages") or {})})
    if langs:
        lines += ["", "## Curated pairs per language", "",
                  "| trial | " + " | ".join(langs) + " |", "|" + "---|" * (len(langs) + 1)]
        for r in rows:
            sizes = r.get("languages") or {}
            lines.append(f"| {r['trial_id']} | "
                         + " | ".join(_fmt(sizes.get(g)) for g in langs) + " |")
    return "\n".join(lines) + "\n"


_TRIAL_ID = re.compile(r"([0-9a-f]{5}_\d{5})")


def _trial_id(result: Any) -> str:
    tid = (result.metrics or {}).get("trial_id")
    if tid:
        return str(tid)
    m = _TRIAL_ID.search(os.path.basename(str(result.path).rstrip("/")))
    return m.group(1) if m else os.path.basename(str(result.path).rstrip("/"))


def collect_rows(cfg: DictConfig, grid: Any) -> list[dict[str, Any]]:
    """One row per trial: thresholds, curated sizes (its datacard), ASHA outcome, metric."""
    tc = cfg.tune
    rows = []
    for res in grid:
        tid = _trial_id(res)
        card_url = storage.join(trial_dir_for(tc.out, tid), "data", "datacard.json")
        card = storage.read_json(card_url) if storage.exists(card_url) else {}
        hist: list[list[float]] = []
        df = res.metrics_dataframe
        if df is not None and METRIC in df.columns and TIME_ATTR in df.columns:
            df = df.dropna(subset=[METRIC])
            # a trial restarted after a driver crash reports its steps again: keep the last
            by_step = {int(s): float(m) for s, m in zip(df[TIME_ATTR], df[METRIC], strict=True)}
            hist = [[s, by_step[s]] for s in sorted(by_step)]
        bal = card.get("balancing", {})
        # a trial is an online balancing artifact: its size is the epoch-0 draw (trial.py)
        e0_url = epoch0_url(tc.out, tid)
        drawn = storage.read_json(e0_url) if storage.exists(e0_url) else {}
        row = {
            "trial_id": tid,
            "threshold_mode": res.config.get("threshold_mode", cfg.curation.threshold_mode),
            "p": res.config.get("p"), "t_en": res.config.get("t_en"),
            "derived_t_en": bal.get("t_en"), "derived_p": bal.get("p"),
            "t_lang": bal.get("t_lang"),
            "kept": drawn.get("kept"),
            "languages": drawn.get("languages", {}),
            "last_step": hist[-1][0] if hist else None,
            METRIC: hist[-1][1] if hist else None,
            f"best_{METRIC}": max(m for _, m in hist) if hist else None,
            "history": hist,
            "error": str(res.error).splitlines()[0][:300] if res.error else None,
        }
        row["status"] = trial_status(row, int(tc.train_steps))
        rows.append(row)
    key = tc.param
    rows.sort(key=lambda r: (r["threshold_mode"], r[key] if r[key] is not None else math.inf))
    return rows


def plot_metric(rows: list[dict[str, Any]], url: str) -> None:
    """Final zero-shot top-1 against the English threshold each trial used (log x)."""
    import matplotlib.pyplot as plt

    from worldclip.pipelines.report import save_figure

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for mode in sorted({r["threshold_mode"] for r in rows}):
        pts = [r for r in rows if r["threshold_mode"] == mode and r[METRIC] is not None
               and r["derived_t_en"]]
        if not pts:
            continue
        pts.sort(key=lambda r: r["derived_t_en"])
        full_pts = [r for r in pts if r["status"] == "completed"]  # same step: comparable
        line, = ax.plot([r["derived_t_en"] for r in full_pts], [r[METRIC] for r in full_pts],
                        "-", alpha=0.5, label=f"{mode} (completed)")
        for r in pts:
            full = r["status"] == "completed"
            ax.plot(r["derived_t_en"], r[METRIC], "o", color=line.get_color(),
                    mfc=line.get_color() if full else "none")
            label = f"p={r['derived_p']:.3g}" if r["derived_p"] is not None else ""
            ax.annotate(f"{label} ({r['last_step']} st)", (r["derived_t_en"], r[METRIC]),
                        fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("t_en (English threshold of the trial)")
    ax.set_ylabel(f"{METRIC} (last report)")
    ax.set_title("Tune: zero-shot top-1 vs t_en (hollow: stopped early by ASHA)")
    ax.legend(fontsize=8)
    save_figure(fig, url)
