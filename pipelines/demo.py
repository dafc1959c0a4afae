"""`worldclip demo`: embedded world -> curation -> training -> evaluation -> a report.

Runs on a local Ray and a local object store (storage.root) and finishes in minutes on two
CPU cores. `--compare` trains the same budget on (a) unbalanced matched data, (b) one t for
all languages and (c) per-language t_lang, for every seed in demo.seeds, and reports overall,
head- and tail-concept and per-language zero-shot accuracy side by side ("match once,
rebalance many": the comparison re-samples the stored matches, it never matches again).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
from omegaconf import DictConfig

from worldclip.pipelines import curate, world
from worldclip.pipelines.checkpoint_io import latest_checkpoint
from worldclip.pipelines.evaluate.evalsets import load_eval_set
from worldclip.pipelines.evaluate.metrics import head_tail_accuracy
from worldclip.pipelines.evaluate.model import load_model
from worldclip.pipelines.evaluate.scoring import evaluate_model
from worldclip.pipelines.evaluate.stage import plot_top1
from worldclip.pipelines.report import plt, save_figure
from worldclip.pipelines.train import stage as train_stage
from worldclip.platform import storage
from worldclip.platform.config import load_config, save_config

log = logging.getLogger(__name__)

COMPARE_MODES = (("none", "unbalanced (matched only)"), ("single", "one t for all languages"),
                 ("per_language", "per-language t_lang (MetaCLIP 2)"))


def load_stage_config(overrides: list[str], files: list[str]) -> DictConfig:
    """The demo preset (configs/demo.yaml) under the user's files and overrides."""
    return load_config(overrides, ["demo", *files])


def _with(cfg: DictConfig, *overrides: str) -> DictConfig:
    from omegaconf import OmegaConf

    c = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
    return c  # type: ignore[return-value]


def _stage(name: str, fn: Any, *args: Any) -> Any:
    t = time.time()
    log.info("demo: %s ...", name)
    out = fn(*args)
    log.info("demo: %s done in %.1fs", name, time.time() - t)
    return out, time.time() - t


def _ensure_world(cfg: DictConfig) -> dict[str, Any]:
    summary_url = storage.join(cfg.world.out, "world.json")
    if storage.exists(summary_url):
        s = storage.read_json(summary_url)
        if s.get("pairs") == cfg.world.pairs:
            log.info("demo: reusing the world at %s", cfg.world.out)
            return s
    world.run(cfg)
    return storage.read_json(summary_url)


def concept_counts(world_summary: dict[str, Any], n_classes: int) -> list[float]:
    """Training-pool frequency of each eval class (concept index order)."""
    by_index = {c["index"]: float(c["probability"]) for c in world_summary["concepts"]}
    return [by_index[i] for i in range(n_classes)]


def accuracy_summary(metrics: dict[str, Any], counts: list[float]) -> dict[str, Any]:
    """Overall, head/tail and per-language top-1 of one evaluation."""
    head, tail = [], []
    for lang in metrics["languages"]:
        ht = head_tail_accuracy(metrics["per_class_top1"][lang], counts)
        head.append(ht["head"])
        tail.append(ht["tail"])
    return {"top1": metrics["overall"]["top1"], "head_top1": float(np.mean(head)),
            "tail_top1": float(np.mean(tail)),
            "i2t_r@1": metrics["overall"].get("i2t_r@1"),
            "per_language": {g: metrics["zero_shot"][g]["top1"] for g in metrics["languages"]}}


def _train_and_eval(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any], dict]:
    result = train_stage.run(cfg)
    ckpt = latest_checkpoint(train_stage.run_dir(cfg))
    state = storage.read_json(storage.join(ckpt, "state.json"))
    model, tok = load_model(result["export"])
    metrics = evaluate_model(model, tok, load_eval_set(cfg.eval.data),
                                      batch_size=cfg.eval.batch_size)
    storage.write_json(storage.join(cfg.eval.out, "metrics.json"), metrics)
    return result, metrics, state


def run(cfg: DictConfig) -> dict[str, Any]:
    from worldclip.platform.runtime import init_ray

    init_ray(cfg)
    t0 = time.time()
    out = cfg.demo.out
    save_config(cfg, out)
    times: dict[str, float] = {}
    wsum, times["world"] = _stage("world", _ensure_world, cfg)
    card, times["curate"] = _stage("curate", curate.run, cfg)
    card = storage.read_json(storage.join(cfg.curation.balanced_out, "datacard.json"))
    (result, metrics, state), times["train+eval"] = _stage(
        "train + eval", _train_and_eval, _with(cfg, f"eval.out={out}/eval"))
    counts = concept_counts(wsum, metrics["num_classes"])
    acc = accuracy_summary(metrics, counts)
    plots = _plots(out, state, metrics, cfg.curation.balanced_out)
    compare = run_compare(cfg, counts) if cfg.demo.compare else None
    times["total"] = time.time() - t0
    langs = wsum.get("by_language", {})
    report = {"world": {"pairs": wsum["pairs"], "concepts": len(wsum["concepts"]),
                        "english_share": langs.get("en", 0) / max(1, sum(langs.values()))},
              "curation": card["accounting"], "t_lang": card["balancing"]["t_lang"],
              "train": {**{k: result[k] for k in ("steps", "seen_pairs", "first_loss",
                                                   "final_loss", "dropped_images")},
                        "zero_shot_during_training": state.get("evals", [])},
              "eval": acc, "chance_top1": metrics["chance_top1"], "compare": compare,
              "seconds": {k: round(v, 1) for k, v in times.items()}, "plots": plots}
    storage.write_json(storage.join(out, "report.json"), report)
    md = render_markdown(report, card)
    storage.write_text(storage.join(out, "report.md"), md)
    storage.write_text(storage.join(out, "report.html"), render_html(md))
    log.info("demo: report at %s (%.0fs)", storage.join(out, "report.md"), times["total"])
    return {"report": storage.join(out, "report.md"), "top1": acc["top1"],
            "tail_top1": acc["tail_top1"], "chance": metrics["chance_top1"],
            "seconds": report["seconds"], "compare": compare and compare["table"]}


def run_compare(cfg: DictConfig, counts: list[float]) -> dict[str, Any]:
    """Same training budget on three curations of the same matches, for every seed."""
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m, _ in COMPARE_MODES}
    for mode, _ in COMPARE_MODES:
        for seed in cfg.demo.seeds:
            tag = f"{mode}-s{seed}"
            data = f"{cfg.demo.out}/compare/{tag}/data"
            # the config is resolved: derived keys (train.data) are set explicitly
            c = _with(cfg, f"curation.threshold_mode={mode}", f"curation.seed={seed}",
                      f"curation.balanced_out={data}", f"train.data={data}",
                      f"train.seed={seed}", f"train.name=compare-{tag}",
                      f"eval.out={cfg.demo.out}/compare/{tag}/eval")
            card = curate.run_rebalance(c)
            _, metrics, _ = _train_and_eval(c)
            a = accuracy_summary(metrics, counts)
            a["kept"] = card["kept"]
            runs[mode].append(a)
            log.info("compare %s: top1 %.3f tail %.3f", tag, a["top1"], a["tail_top1"])
    table = {}
    for mode, label in COMPARE_MODES:
        rs = runs[mode]
        row: dict[str, Any] = {"label": label, "kept": [r["kept"] for r in rs]}
        for k in ("top1", "head_top1", "tail_top1", "i2t_r@1"):
            v = np.array([r[k] for r in rs], dtype=float)
            row[k] = [round(float(v.mean()), 4), round(float(v.std()), 4)]
        langs = rs[0]["per_language"]
        row["per_language"] = {g: round(float(np.mean([r["per_language"][g] for r in rs])), 4)
                               for g in langs}
        table[mode] = row
    return {"seeds": list(cfg.demo.seeds), "table": table, "runs": runs}


def _plots(out: str, state: dict[str, Any], metrics: dict[str, Any], curated: str
           ) -> list[str]:
    urls = []
    fig, ax = plt.subplots(figsize=(6, 3.2))
    history = state["history"]
    ax.plot([h[0] for h in history], [h[1] for h in history], lw=0.8)
    ax.set_xlabel("step")
    ax.set_ylabel("InfoNCE loss (rank 0)")
    ax.set_title("training loss; zero-shot top-1 during training (right)")
    if state.get("evals"):
        ax2 = ax.twinx()
        ax2.plot([e[0] for e in state["evals"]], [e[1] for e in state["evals"]], "o-",
                 color="tab:orange")
        ax2.set_ylabel("zero-shot top-1")
        ax2.set_ylim(0, 1)
    urls.append(storage.join(out, "plots", "loss.png"))
    save_figure(fig, urls[-1])
    urls.append(storage.join(out, "plots", "zero_shot_top1.png"))
    plot_top1(metrics, urls[-1])
    for name in ("languages.png", "long_tail.png"):
        src = storage.join(curated, "plots", name)
        if storage.exists(src):
            urls.append(storage.join(out, "plots", name))
            storage.write_bytes(urls[-1], storage.read_bytes(src))
    return urls


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def render_markdown(r: dict[str, Any], card: dict[str, Any]) -> str:
    a = r["curation"]
    lines = [
        "# worldclip demo report", "",
        f"Embedded world: {r['world']['pairs']} pairs, {r['world']['concepts']} concepts, "
        f"{_pct(r['world']['english_share'])} English.", "",
        "## Curation (MetaCLIP 2: LID -> per-language matching -> t_lang -> sampling)", "",
        f"- accounting: {a['identity']} (in = kept + dropped)",
        "- dropped: " + ", ".join(f"{k} {v}" for k, v in sorted(a["dropped"].items())),
        f"- p = {card['balancing']['p']:.4f}, t_en = {card['balancing']['t_en']}", "",
        "Rows are pairs that have a caption, by the language of their first caption "
        "(fastText lid.176): pairs in = not matched + matched, matched = kept + sampled out. "
        "The last column counts kept pairs by the language of the caption drawn for "
        "training (a pair may carry captions in several languages).", "",
        "| language | pairs in | not matched (pairs) | matched (pairs) | kept (pairs) "
        "| kept (pairs, by drawn caption) | t_lang (matches per entry) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for g, v in card["languages"].items():
        t = card["balancing"]["t_lang"].get(g, "-")
        lines.append(f"| {g} | {v['pairs_in']} | {v['pairs_in'] - v['matched']} | "
                     f"{v['matched']} | {v['kept']} | {v.get('kept_by_caption', '-')} | {t} |")
    tr = r["train"]
    lines += ["", "![languages](plots/languages.png) ![long tail](plots/long_tail.png)", "",
              "## Training (Ray Train, 2 workers, DeepSpeed ZeRO-2, tiny MetaClip2)", "",
              f"- {tr['steps']} steps, {tr['seen_pairs']} pairs seen, loss "
              f"{tr['first_loss']:.3f} -> {tr['final_loss']:.3f}, "
              f"{tr['dropped_images']} undecodable images dropped", "",
              "![loss](plots/loss.png)", "",
              "## Zero-shot evaluation (per language)", "",
              f"- mean top-1 {_pct(r['eval']['top1'])} (chance {_pct(r['chance_top1'])}); "
              f"head concepts {_pct(r['eval']['head_top1'])}, tail concepts "
              f"{_pct(r['eval']['tail_top1'])}; image->text R@1 {_pct(r['eval']['i2t_r@1'])}",
              "", "| language | top-1 |", "|---|---:|"]
    lines += [f"| {g} | {_pct(v)} |" for g, v in r["eval"]["per_language"].items()]
    lines += ["", "![zero-shot](plots/zero_shot_top1.png)", ""]
    if r.get("compare"):
        c = r["compare"]
        lines += ["## The recipe in miniature (same budget, seeds "
                  f"{c['seeds']}, mean ± std)", "",
                  "| curation | kept pairs | top-1 | head top-1 | tail top-1 | I->T R@1 |",
                  "|---|---:|---:|---:|---:|---:|"]
        for row in c["table"].values():
            cell = lambda k, row=row: f"{_pct(row[k][0])} ± {_pct(row[k][1])}"  # noqa: E731
            lines.append(f"| {row['label']} | {row['kept']} | {cell('top1')} | "
                         f"{cell('head_top1')} | {cell('tail_top1')} | {cell('i2t_r@1')} |")
        lines.append("")
    lines += ["## Wall time (s)", "", ", ".join(f"{k} {v}" for k, v in r["seconds"].items()),
              ""]
    return "\n".join(lines)


def render_html(md: str) -> str:
    """A self-contained HTML page of the Markdown report, rendered by python-markdown
    (tables extension); image links stay relative to the report's folder."""
    import markdown

    body = markdown.markdown(md, extensions=["tables"], output_format="html")
    return ("<!doctype html><meta charset='utf-8'><title>worldclip demo</title><style>"
            "body{font-family:sans-serif;max-width:1000px;margin:auto}td,th{padding:2px 8px;"
            "border-bottom:1px solid #ddd}img{max-width:48%}</style>\n" + body)
