"""`worldclip eval`: one checkpoint on eval.data -> metrics.json, a per-language plot and the
config in eval.out (eval.suite set: the benchmark suite, pipelines/evaluate/suite.py)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from omegaconf import DictConfig

from worldclip.pipelines.evaluate.evalsets import load_eval_set
from worldclip.pipelines.evaluate.model import checkpoint_url, load_model
from worldclip.pipelines.evaluate.scoring import evaluate_model
from worldclip.pipelines.evaluate.suite import run_suite
from worldclip.pipelines.report import plt, save_figure
from worldclip.platform import storage
from worldclip.platform.config import save_config

log = logging.getLogger(__name__)


def plot_top1(metrics: dict[str, Any], url: str) -> None:
    """Bar plot of per-language zero-shot top-1 (and top-5), chance marked."""
    langs = metrics["languages"]
    top1 = [metrics["zero_shot"][lang]["top1"] for lang in langs]
    top5 = [metrics["zero_shot"][lang]["top5"] for lang in langs]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.55 * len(langs) + 1.5), 3.2))
    x = np.arange(len(langs))
    ax.bar(x - 0.2, top1, 0.4, label="top-1")
    ax.bar(x + 0.2, top5, 0.4, label="top-5", alpha=0.6)
    ax.axhline(metrics["chance_top1"], color="k", ls="--", lw=0.8, label="chance (top-1)")
    ax.set_xticks(x, langs)
    ax.set_ylim(0, 1)
    ax.set_ylabel("zero-shot accuracy")
    ax.set_title(f"zero-shot per language ({metrics['num_images']} images, "
                 f"{metrics['num_classes']} classes)")
    ax.legend(fontsize=7, loc="upper right")
    save_figure(fig, url)


def write_outputs(cfg: DictConfig, metrics: dict[str, Any]) -> dict[str, Any]:
    """metrics.json, the top-1 plot and config.yaml into eval.out; the command's summary."""
    out = str(cfg.eval.out)
    storage.write_json(storage.join(out, "metrics.json"), metrics)
    plot_top1(metrics, storage.join(out, "zero_shot_top1.png"))
    save_config(cfg, out)
    log.info("eval: overall %s -> %s", metrics["overall"], out)
    return {"out": out, "checkpoint": metrics["checkpoint"], "overall": metrics["overall"],
            "top1": {lang: round(v["top1"], 4) for lang, v in metrics["zero_shot"].items()},
            "num_images": metrics["num_images"]}


def run(cfg: DictConfig) -> dict[str, Any]:
    """`worldclip eval`: evaluate eval.checkpoint (default: the train run's export) on
    eval.data; writes metrics.json, zero_shot_top1.png and config.yaml to eval.out and returns
    a summary (overall and per-language top-1; the full metrics are in metrics.json).
    With eval.suite set, runs the benchmark suite instead (pipelines/evaluate/suite.py)."""
    if cfg.eval.get("suite"):
        return run_suite(cfg)
    if int(cfg.eval.get("ray_actors", 0)) > 0:  # big eval sets: the image tower on Ray
        from worldclip.pipelines.evaluate.ray_embed import evaluate_ray

        return evaluate_ray(cfg, concurrency=int(cfg.eval.ray_actors))
    ckpt = checkpoint_url(cfg)
    model, tokenizer = load_model(ckpt)
    eval_set = load_eval_set(str(cfg.eval.data))
    metrics = evaluate_model(model, tokenizer, eval_set, list(cfg.eval.languages) or None,
                             int(cfg.eval.batch_size))
    metrics.update(checkpoint=ckpt, data=str(cfg.eval.data))
    return write_outputs(cfg, metrics)
