"""Eval suites: several benchmarks x several checkpoints, per language, with bootstrap CIs.

`worldclip eval eval.suite=[...]` (docs/operations.md, "Eval suites") loads every benchmark
once (pipelines/benchmarks/loaders.py), embeds its images once per checkpoint and scores with the
same functions as the single-set eval (pipelines/evaluate/: embed_images' transform and
batches, class_embeddings, embed_texts and the tie-aware hit rule), keeping the per-query hits
so each number gets a seeded bootstrap 95% interval (percentile method over queries).
Multiple-choice benchmarks (CVQA) score each question's options against its image.

Writes to eval.out:
    suite.json                    every number, per checkpoint / benchmark / language
    suite.md                      one table per benchmark (rows = languages) per checkpoint
    comparison.md, comparison.png checkpoints side by side: mean over languages, with CIs
"""

from __future__ import annotations

import logging
import math
import os
import posixpath
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from worldclip.pipelines import benchmarks
from worldclip.pipelines.evaluate.embed import (
    class_embeddings,
    default_device,
    embed_texts,
)
from worldclip.pipelines.evaluate.metrics import expected_hits
from worldclip.pipelines.evaluate.model import checkpoint_url, load_model
from worldclip.pipelines.evaluate.templates import FALLBACK_TEMPLATES
from worldclip.pipelines.transforms import BadImage, eval_transform
from worldclip.platform import storage
from worldclip.platform.config import ConfigError

log = logging.getLogger(__name__)

ZS_METRICS = ("top1", "top5")
RET_KS = (1, 5, 10)
RET_METRICS = tuple(f"{d}_r@{k}" for d in ("i2t", "t2i") for k in RET_KS)
CHOICE_METRICS = ("acc_local", "acc_en")  # CVQA: local-language and English questions
METRICS = (*ZS_METRICS, *RET_METRICS, *CHOICE_METRICS)


# ---------------------------------------------------------------------------- statistics

def bootstrap_means(values: np.ndarray, n: int, seed: int) -> np.ndarray:
    """n bootstrap resample means of per-query values (seeded, so a rerun gives the same CI)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0 or n <= 0:
        return np.zeros(0)
    rng = np.random.default_rng(seed)
    out = np.empty(n)
    for s in range(0, n, 64):  # bounded memory: 64 resamples at a time
        idx = rng.integers(0, len(values), (min(64, n - s), len(values)))
        out[s:s + len(idx)] = values[idx].mean(axis=1)
    return out


def summarize(values: np.ndarray, boot: np.ndarray) -> dict[str, float]:
    v = float(np.mean(values)) if len(values) else math.nan
    lo, hi = (np.percentile(boot, [2.5, 97.5]).tolist() if len(boot) else [math.nan] * 2)
    return {"value": v, "lo": float(lo), "hi": float(hi), "n": int(len(values))}


# ---------------------------------------------------------------------------- scoring

def _seed(base: int, *parts: str) -> int:
    import hashlib

    h = hashlib.sha256("/".join(parts).encode()).digest()
    return (base * 1_000_003 + int.from_bytes(h[:4], "little")) % (2**32)


def embed_benchmark_images(model: Any, images: Sequence[bytes], batch_size: int
                           ) -> tuple[torch.Tensor, np.ndarray]:
    """embed_images' embeddings (same transform, same batches), but an image that does not
    decode is a zero row and False in the returned mask instead of an exception: a benchmark
    decides whether that is a counted drop (CVQA) or an error (the others). images is read
    one slice per batch (benchmark images are references: pipelines/benchmarks/images.py), the
    next batch's read overlapping this one's encoding: at most two batches of bytes held."""
    dev = next(model.parameters())
    size = int(model.config.vision_config.image_size)
    out = torch.zeros(len(images), model.config.projection_dim, device=dev.device)
    ok = np.ones(len(images), dtype=bool)

    def pixels(data: bytes) -> np.ndarray | None:
        try:
            return eval_transform(data, size)
        except BadImage:
            return None

    def read(start: int) -> Sequence[bytes]:
        return images[start:start + batch_size]

    starts = list(range(0, len(images), batch_size))
    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool, \
            ThreadPoolExecutor(1) as reader, torch.no_grad():
        pending = reader.submit(read, starts[0]) if starts else None
        for n, start in enumerate(starts):
            data = pending.result()
            pending = reader.submit(read, starts[n + 1]) if n + 1 < len(starts) else None
            arrays = list(pool.map(pixels, data))
            good = [i for i, a in enumerate(arrays) if a is not None]
            ok[[start + i for i, a in enumerate(arrays) if a is None]] = False
            if good:
                batch = torch.from_numpy(np.stack([arrays[i] for i in good]))
                out[torch.as_tensor([start + i for i in good], device=dev.device)] = \
                    model.encode_image(batch.to(device=dev.device, dtype=dev.dtype)).float()
    return out, ok


def _record(langs: dict, draws: dict, bench: str, lang: str, metric: str, v: np.ndarray,
            n_boot: int, seed: int) -> None:
    b = bootstrap_means(v, n_boot, _seed(seed, bench, lang, metric))
    langs.setdefault(lang, {})[metric] = summarize(v, b)
    draws.setdefault(lang, {})[metric] = b


def score_choices(model: Any, tokenizer: Any, bench: benchmarks.Benchmark, feats: torch.Tensor,
                  ok: np.ndarray, batch_size: int, n_boot: int, seed: int, langs: dict,
                  draws: dict) -> tuple[dict[str, Any], int]:
    """Multiple-choice accuracy (CVQA) per language and variant, metric acc_<variant>: the
    option whose text is nearest the image wins (ties shared, evaluate's hit rule). Returns
    the accuracy over all questions per metric (the paper's headline number) and how many
    questions were dropped for an image that does not decode."""
    overall: dict[str, Any] = {}
    undecodable = 0
    for variant, mc in bench.choices.items():
        qs = [q for q in range(len(mc.rows)) if ok[mc.rows[q]]]
        undecodable = len(mc.rows) - len(qs)
        if not qs:
            continue
        width = max(len(mc.texts[q]) for q in qs)
        text = embed_texts(model, tokenizer, [t for q in qs for t in mc.texts[q]], batch_size)
        counts = torch.tensor([len(mc.texts[q]) for q in qs])
        owner = torch.repeat_interleave(torch.arange(len(qs)), counts)  # question of each text
        col = torch.arange(len(owner)) - (torch.cumsum(counts, 0) - counts)[owner]
        image = torch.as_tensor(mc.rows[qs], device=feats.device)[owner.to(feats.device)]
        sims = (text.float() * feats[image].float()).sum(dim=1).cpu()
        scores = torch.full((len(qs), width), -math.inf)  # padding never wins nor ties
        scores[owner, col] = sims
        positive = torch.zeros(len(qs), width, dtype=torch.bool)
        positive[torch.arange(len(qs)), torch.as_tensor(mc.labels[qs])] = True
        hits = expected_hits(scores, positive, [1])[1].double().numpy()
        metric = f"acc_{variant}"
        groups = np.array([mc.groups[q] for q in qs])
        for g in sorted(set(groups.tolist())):
            _record(langs, draws, bench.name, g, metric, hits[groups == g], n_boot, seed)
        b = bootstrap_means(hits, n_boot, _seed(seed, bench.name, "*all*", metric))
        overall[metric] = summarize(hits, b)
    return overall, undecodable


def score_benchmark(model: Any, tokenizer: Any, bench: benchmarks.Benchmark, batch_size: int,
                    n_boot: int, seed: int) -> dict[str, Any]:
    """{lang: {metric: {value, lo, hi, n}}} plus the bootstrap draws (for means over
    languages); per-query hits come from evaluate's tie-aware rule."""
    feats, ok = embed_benchmark_images(model, bench.images, batch_size)
    if not bench.choices and not ok.all():
        bad = [bench.keys[i] for i in np.flatnonzero(~ok)[:5]]
        raise ValueError(f"benchmark {bench.name!r}: {int((~ok).sum())} images do not decode "
                         f"(e.g. {bad}); remove or re-encode them")
    langs: dict[str, dict[str, Any]] = {}
    draws: dict[str, dict[str, np.ndarray]] = {}
    for lang, names in bench.classnames.items():
        rows = torch.as_tensor(bench.rows[lang], device=feats.device)
        labels = torch.as_tensor(bench.labels[lang], dtype=torch.long)
        cls = class_embeddings(model, tokenizer, names,
                               bench.templates.get(lang) or FALLBACK_TEMPLATES, batch_size)
        scores = feats[rows].float() @ cls.float().T
        positive = torch.nn.functional.one_hot(labels, len(names)).bool()
        hits = expected_hits(scores, positive, sorted({min(k, len(names)) for k in (1, 5)}))
        for metric, k in zip(ZS_METRICS, (1, 5), strict=True):
            _record(langs, draws, bench.name, lang, metric,
                    hits[min(k, len(names))].double().numpy(), n_boot, seed)
    for lang, caps in bench.captions.items():
        idx = [i for i, c in enumerate(caps) if c]
        if len(idx) < 2:
            continue
        unique: dict[str, int] = {}
        pairs = [(r, unique.setdefault(c, len(unique))) for r, i in enumerate(idx)
                 for c in caps[i]]
        positives = torch.zeros(len(idx), len(unique), dtype=torch.bool)
        for r, t in pairs:
            positives[r, t] = True
        text = embed_texts(model, tokenizer, list(unique), batch_size)
        scores = feats[torch.as_tensor(idx, device=feats.device)].float() @ text.float().T
        i2t = expected_hits(scores, positives, [min(k, len(unique)) for k in RET_KS])
        t2i = expected_hits(scores.T, positives.T, [min(k, len(idx)) for k in RET_KS])
        for d, hits, n in (("i2t", i2t, len(unique)), ("t2i", t2i, len(idx))):
            for k in RET_KS:
                _record(langs, draws, bench.name, lang, f"{d}_r@{k}",
                        hits[min(k, n)].double().numpy(), n_boot, seed)
    overall, undecodable = score_choices(model, tokenizer, bench, feats, ok, batch_size, n_boot,
                                         seed, langs, draws)
    dropped = dict(bench.dropped) | ({"undecodable_image": undecodable} if undecodable else {})
    mean: dict[str, Any] = {}
    for metric in METRICS:
        have = [g for g in langs if metric in langs[g]]
        if have:
            vals = np.array([langs[g][metric]["value"] for g in have])
            b = np.mean([draws[g][metric] for g in have], axis=0) if n_boot > 0 else np.zeros(0)
            lo, hi = (np.percentile(b, [2.5, 97.5]).tolist() if len(b) else [math.nan] * 2)
            mean[metric] = {"value": float(vals.mean()), "lo": float(lo), "hi": float(hi),
                            "languages": len(have)}
    return {"name": bench.name, "type": bench.type, "num_images": len(bench.images),
            "languages": langs, "mean": mean, "all": overall, "dropped": dropped}


# ---------------------------------------------------------------------------- tables

def _cell(m: dict[str, float]) -> str:
    return f"{100 * m['value']:.1f} [{100 * m['lo']:.1f}, {100 * m['hi']:.1f}]"


def benchmark_table(res: dict[str, Any]) -> str:
    """Markdown: one row per language (and the mean), metric columns as % [95% CI]."""
    metrics = [m for m in METRICS if any(m in v for v in res["languages"].values())]
    lines = ["| language | n | " + " | ".join(metrics) + " |",
             "|---|---:|" + "---:|" * len(metrics)]
    for lang in sorted(res["languages"]):
        row = res["languages"][lang]
        n = next(iter(row.values()))["n"]
        lines.append(f"| {lang} | {n} | " + " | ".join(_cell(row[m]) if m in row else ""
                                                       for m in metrics) + " |")
    lines.append(f"| **mean** | {len(res['languages'])} langs | " + " | ".join(
        _cell(res["mean"][m]) if m in res["mean"] else "" for m in metrics) + " |")
    overall = res.get("all") or {}
    if overall:  # multiple choice: accuracy over all questions, as the CVQA paper reports it
        n = next(iter(overall.values()))["n"]
        lines.append(f"| **all questions** | {n} | " + " | ".join(
            _cell(overall[m]) if m in overall else "" for m in metrics) + " |")
    return "\n".join(lines)


def comparison_rows(results: dict[str, dict[str, Any]]) -> list[tuple[str, str]]:
    """(benchmark, metric) pairs shown side by side: top-1 and R@1 both ways."""
    keys: list[tuple[str, str]] = []
    for per_bench in results.values():
        for b, res in per_bench.items():
            for m in ("top1", "i2t_r@1", "t2i_r@1", *CHOICE_METRICS):
                if m in res["mean"] and (b, m) not in keys:
                    keys.append((b, m))
    return keys


def comparison_table(results: dict[str, dict[str, Any]]) -> str:
    labels = list(results)
    lines = ["| benchmark | metric (mean over languages) | " + " | ".join(labels) + " |",
             "|---|---|" + "---:|" * len(labels)]
    for b, m in comparison_rows(results):
        cells = [_cell(results[c][b]["mean"][m]) if b in results[c] and
                 m in results[c][b]["mean"] else "" for c in labels]
        lines.append(f"| {b} | {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_comparison(results: dict[str, dict[str, Any]], url: str) -> None:
    """Grouped bars (benchmark x metric), one colour per checkpoint, 95% CI error bars."""
    from worldclip.pipelines.report import plt, save_figure

    rows = comparison_rows(results)
    labels = list(results)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(rows) + 1.5), 3.4))
    width = 0.8 / max(1, len(labels))
    x = np.arange(len(rows))
    for i, c in enumerate(labels):
        vals, err = [], [[], []]
        for b, m in rows:
            s = results[c].get(b, {}).get("mean", {}).get(m)
            v = s["value"] if s else math.nan
            vals.append(v)
            err[0].append(max(0.0, v - s["lo"]) if s else 0.0)
            err[1].append(max(0.0, s["hi"] - v) if s else 0.0)
        ax.bar(x + (i - (len(labels) - 1) / 2) * width, vals, width, yerr=err, capsize=3,
               label=c)
    ax.set_xticks(x, [f"{b}\n{m}" for b, m in rows], fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("mean over languages (95% CI)")
    ax.set_title("eval suite: checkpoints side by side")
    ax.legend(fontsize=7)
    save_figure(fig, url)


# ---------------------------------------------------------------------------- stage

def checkpoints(cfg: DictConfig) -> list[tuple[str, str]]:
    """(label, url) per checkpoint: eval.checkpoints ("label=url" or url), else the one."""
    items = list(cfg.eval.checkpoints) or [checkpoint_url(cfg)]
    out = []
    for item in items:
        label, sep, url = str(item).partition("=")
        if not sep:
            url = label
            parts = [p for p in url.rstrip("/").split("/") if p]
            label = "/".join(parts[-2:]) if parts and parts[-1] == "export" else parts[-1]
        out.append((label, url))
    if len({label for label, _ in out}) != len(out):
        raise ConfigError(f"config eval.checkpoints={items}: labels repeat; name them "
                          f"'label=url'")
    return out


def run_suite(cfg: DictConfig) -> dict[str, Any]:
    e = cfg.eval
    items = OmegaConf.to_container(e.suite, resolve=True) or []
    specs = [benchmarks.normalize_spec(x, "eval.suite") for x in items]
    if len({s["name"] for s in specs}) != len(specs):
        raise ConfigError(f"config eval.suite: benchmark names {[s['name'] for s in specs]} "
                          f"repeat; give each entry its own name")
    langs = list(e.languages) or None
    loaded = [benchmarks.load(s, s.get("languages") or langs) for s in specs]
    results: dict[str, dict[str, Any]] = {}
    for label, url in checkpoints(cfg):
        model, tokenizer = load_model(url)
        model.to(default_device()).eval()
        results[label] = {}
        for b in loaded:
            log.info("eval suite: %s on %s (%d images)", label, b.name, len(b.images))
            results[label][b.name] = score_benchmark(model, tokenizer, b, int(e.batch_size),
                                                     int(e.bootstrap), int(e.seed))
        del model
    out = str(e.out)
    md = []
    for label, per_bench in results.items():
        for b, res in per_bench.items():
            drops = "".join(f", {n} dropped: {r}" for r, n in sorted(res["dropped"].items()))
            md.append(f"## {b} ({res['type']}, {res['num_images']} images{drops}) -- {label}\n\n"
                      f"{benchmark_table(res)}\n")
    comp = comparison_table(results)
    storage.write_text(storage.join(out, "suite.md"),
                       "# Eval suite (% with bootstrap 95% CI, "
                       f"{int(e.bootstrap)} resamples, seed {int(e.seed)})\n\n" + "\n".join(md))
    storage.write_text(storage.join(out, "comparison.md"), comp + "\n")
    storage.write_json(storage.join(out, "suite.json"), {
        "checkpoints": dict(checkpoints(cfg)), "benchmarks": specs,
        "bootstrap": int(e.bootstrap), "seed": int(e.seed), "results": results})
    plot_comparison(results, storage.join(out, "comparison.png"))
    from worldclip.platform.config import save_config

    save_config(cfg, out)
    return {"out": out, "comparison": comp.splitlines(),
            "files": [posixpath.basename(f) for f in ("suite.json", "suite.md", "comparison.md",
                                                      "comparison.png")],
            "checkpoints": list(results), "benchmarks": [s["name"] for s in specs]}
