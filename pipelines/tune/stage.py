"""`worldclip tune`: the sweep's driver -- match once, one tokenizer, build or restore the
Tuner, collect the results (docs/operations.md, "Tuning").

"Match once, rebalance many" (docs/curation.md): the driver makes sure the matches and global
counts exist (running `curate` once if they do not); each trial (tune/trial.py) only
re-samples them with its thresholds and trains the proxy; ASHA (clock: the train step) stops
trials whose zero-shot top-1 falls behind.

Every trial uses one tokenizer (train.tokenizer, or one trained here on all matched captions
by train.prepare_tokenizer): thresholds change the curated captions, and a tokenizer per
trial would confound the sweep.

Resumable: an existing experiment (<tune.out>/<tune.name>, local or S3) is restored with
Tuner.restore; finished trials keep their results (ASHA's rungs are rebuilt from them:
tune/ray_compat.py), unfinished ones start again.

Outputs under tune.out (the per-trial folders: tune/paths.py):
    results.json, results.md      one row per trial: thresholds, curated sizes, metric
    metric_vs_t_en.png            zero-shot top-1 against the (derived) English threshold
    best_curation.yaml            the best thresholds: `worldclip curate --config` it
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

from omegaconf import DictConfig, OmegaConf

from worldclip.pipelines import layout
from worldclip.pipelines.arrowio import read_parquet
from worldclip.pipelines.tune import ray_compat
from worldclip.pipelines.tune.results import (
    best_curation_yaml,
    collect_rows,
    pick_best,
    plot_metric,
    results_markdown,
)
from worldclip.pipelines.tune.search import METRIC, MODE, check_config, search_space, tune_config
from worldclip.pipelines.tune.trial import run_trial
from worldclip.platform import storage
from worldclip.platform.config import save_config

log = logging.getLogger(__name__)


def ensure_matches(cfg: DictConfig) -> bool:
    """Matches + global counts in curation.out, matching once if missing. True if it ran."""
    from worldclip.pipelines import curate

    c = cfg.curation
    if storage.exists(layout.global_counts(c.out)) and storage.exists(
            layout.manifest_file(c.out)):
        log.info("reusing matches and counts in %s (no matching)", c.out)
        return False
    log.info("no matches/counts in %s: running curation once before the sweep", c.out)
    curate.run(cfg)
    return True


def matched_captions(out: str, limit: int = 200_000) -> Iterator[str]:
    """Captions of every matched pair (all languages, before any threshold) of the shards
    the last curate run covered (its manifest.json; pipelines/layout.py)."""
    n = 0
    for sid in storage.read_json(layout.manifest_file(out))["shards"]:
        t = read_parquet(layout.match_file(out, sid), ["texts"])
        for texts in t.column("texts").to_pylist():
            for s in texts:
                yield s
                n += 1
                if n >= limit:
                    return


def shared_tokenizer(cfg: DictConfig) -> str:
    """One tokenizer for every trial: train.tokenizer, or one trained on the matched captions
    into <tune.out>/tokenizer (train.prepare_tokenizer, as `worldclip train` does)."""
    from worldclip.pipelines.train.tokenizer import prepare_tokenizer

    url, _ = prepare_tokenizer(
        cfg, captions=matched_captions(cfg.curation.out),
        url=storage.join(cfg.tune.out, "tokenizer"))
    return url


def experiment_path(tc: DictConfig) -> tuple[str, Any]:
    """(path inside its filesystem, pyarrow filesystem) of the Tune experiment."""
    return storage.strip_scheme(storage.join(tc.out, tc.name)), storage.arrow_filesystem(tc.out)


def build_tuner(cfg: DictConfig, tokenizer: str) -> Any:
    """A new Tuner, or the restored one when tune.out/tune.name holds an experiment."""
    from ray import tune

    tc = cfg.tune
    base = OmegaConf.to_container(cfg, resolve=True)
    resources: dict[str, float] = {"cpu": float(tc.cpus_per_trial)}
    if tc.gpus_per_trial:
        resources["gpu"] = float(tc.gpus_per_trial)
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, base=base, tokenizer=tokenizer), resources)
    path, fs = experiment_path(tc)
    if tune.Tuner.can_restore(path, storage_filesystem=fs):
        log.info("resuming the Tune experiment in %s", storage.join(tc.out, tc.name))
        return tune.Tuner.restore(path, trainable=trainable, storage_filesystem=fs)
    storage.makedirs(tc.out)
    return tune.Tuner(
        trainable, param_space=search_space(tc), tune_config=tune_config(tc),
        run_config=tune.RunConfig(name=tc.name, storage_path=storage.strip_scheme(tc.out),
                                  storage_filesystem=fs, verbose=1,
                                  callbacks=[ray_compat.ReleaseStoppedTrials(tc.out)]))


def run(cfg: DictConfig) -> dict[str, Any]:
    """`worldclip tune`: match once, then an ASHA sweep of rebalance -> proxy train -> eval."""
    from worldclip.platform.runtime import init_ray

    check_config(cfg)
    ray_compat.check_ray_version()
    init_ray(cfg)
    started = time.time()
    tc = cfg.tune
    matching_ran = ensure_matches(cfg)
    tokenizer = shared_tokenizer(cfg)
    save_config(cfg, tc.out)
    grid = build_tuner(cfg, tokenizer).fit()
    ray_compat.release_all_trials(tc.out)  # trials ended in the last seconds
    rows = collect_rows(cfg, grid)
    best = pick_best(rows)
    out = {k: storage.join(tc.out, f) for k, f in (
        ("json", "results.json"), ("md", "results.md"), ("plot", "metric_vs_t_en.png"),
        ("best_curation", "best_curation.yaml"))}
    storage.write_json(out["json"], {"metric": METRIC, "mode": MODE, "param": tc.param,
                                     "train_steps": tc.train_steps, "best": best,
                                     "trials": rows})
    storage.write_text(out["md"], results_markdown(rows, tc.param, best))
    plot_metric(rows, out["plot"])
    if best:
        storage.write_text(out["best_curation"], best_curation_yaml(best, tc.param))
    else:
        out.pop("best_curation")
        log.warning("no trial reported %s; no best_curation.yaml", METRIC)
    counts = {s: sum(r["status"] == s for r in rows)
              for s in ("completed", "stopped_early", "error", "no_report")}
    return {"experiment": storage.join(tc.out, tc.name), "trials": len(rows), **counts,
            "matching_ran": matching_ran,
            "best": {k: best[k] for k in ("trial_id", "threshold_mode", tc.param,
                                          "derived_t_en", "kept", METRIC)} if best else None,
            "outputs": out, "wall_s": round(time.time() - started, 1)}
