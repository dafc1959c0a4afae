"""One trial (a Tune function trainable): rebalance with the trial's thresholds -> proxy
training with Ray Train -> in-training zero-shot evals reported to Tune (and ASHA).

"Match once, rebalance many" (docs/curation.md): a trial only re-samples the stored matches
and global counts (`curate.run_rebalance`: no LID, no matching) into its own folder
(tune/paths.py), then trains the proxy model for tune.train_steps steps; rank 0's evals every
tune.eval_every steps reach Tune through EvalReportCallback.
"""

from __future__ import annotations

import copy
import logging
import math
from typing import Any

from omegaconf import DictConfig, OmegaConf
from ray.tune.integration.ray_train import TuneReportCallback

from worldclip.pipelines.tune.paths import (
    done_url,
    epoch0_url,
    pg_list_url,
    reports_url,
    trial_dir_for,
)
from worldclip.pipelines.tune.search import METRIC
from worldclip.platform import owned, storage
from worldclip.platform.config import apply_storage
from worldclip.platform.rules import validate

log = logging.getLogger(__name__)


def trial_config(base: dict[str, Any], params: dict[str, Any], trial_dir: str,
                 tokenizer: str) -> DictConfig:
    """The full config of one trial: its thresholds, its own output folders, the proxy
    training budget (train.max_steps = tune.train_steps) and the in-training eval."""
    cfg = OmegaConf.create(base)
    c, t, tc = cfg.curation, cfg.train, cfg.tune
    if "p" in params:
        c.p, c.t_en = float(params["p"]), None
    if "t_en" in params:
        c.t_en, c.p = float(params["t_en"]), None
    c.threshold_mode = params.get("threshold_mode", c.threshold_mode)
    c.balanced_out = storage.join(trial_dir, "data")
    # a trial is a new balancing artifact and nothing else: the proxy training streams the
    # stored match index by reference (docs/curation.md, "Balancing artifact")
    c.mode = "online"
    c.plots = False
    t.data = c.balanced_out
    t.out, t.name = trial_dir, "proxy"
    t.tokenizer = tokenizer
    t.max_steps = int(tc.train_steps)
    t.eval_every = int(tc.eval_every)
    t.checkpoint_every = int(tc.train_steps)  # one checkpoint, at the end
    t.keep_checkpoints = 1
    # a production warm-up (thousands of steps) would keep a 60-step proxy at lr ~ 0
    t.warmup_steps = min(int(t.warmup_steps), max(1, int(tc.train_steps) // 10))
    validate(cfg)
    return cfg


def epochs_for_budget(cfg: DictConfig, cap: int = 1000) -> int:
    """The fewest epochs whose step plan (train.plan_steps, the one the train loop follows)
    reaches train.max_steps however few pairs the trial kept: the proxy budget is a fixed
    number of steps, not a number of passes over the data."""
    from worldclip.pipelines.train.stage import plan_steps

    target = int(cfg.train.max_steps)
    probe = copy.deepcopy(cfg)
    probe.train.max_steps = 0  # uncapped: the steps the epochs hold

    def steps(epochs: int) -> int:
        probe.train.epochs = epochs
        try:
            return plan_steps(probe)
        except ValueError:  # not one full global batch in these epochs
            return 0

    first = next(((e, s) for e in range(1, 5) if (s := steps(e)) > 0), None)
    if first is None:
        return 4  # too few pairs for one step: build_trainer's plan_steps raises the error
    e, s = first
    epochs = min(cap, max(e, math.ceil(target * e / s)))
    while epochs < cap and steps(epochs) < target:
        epochs += 1
    while epochs > e and steps(epochs - 1) >= target:
        epochs -= 1
    return epochs


class EvalReportCallback(TuneReportCallback):
    """Forwards rank 0's in-training eval reports to Tune, with the trial's curation facts.

    The train loop's checkpoint reports carry no zero-shot metric; Tune's strict metric
    check would fail the trial on them, so only reports with the metric are forwarded. The
    forwarded reports are also kept in the trial's folder (reports.json): a restored sweep
    replays them into ASHA's rungs (ray_compat.ResumableASHA)."""

    def __init__(self, metric: str, extra: dict[str, Any], reports_url: str) -> None:
        super().__init__()
        self.metric = metric
        self.extra = extra
        self.reports_url = reports_url
        self.reports: list[dict[str, Any]] = []

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]],
                     checkpoint: Any) -> None:
        if not metrics or self.metric not in metrics[0]:
            return
        report = {**metrics[0], **self.extra}
        self.reports.append(report)
        storage.write_json(self.reports_url, self.reports)
        super().after_report(run_context, [report], None)


def run_trial(params: dict[str, Any], base: dict[str, Any], tokenizer: str) -> None:
    """One trial (a Tune function trainable): rebalance -> proxy training with evals."""
    import ray
    from ray import tune

    from worldclip.pipelines import curate, draw, ingest
    from worldclip.pipelines.train import stage as train
    from worldclip.pipelines.tune.ray_compat import placement_group_recorder

    trial_id = tune.get_context().get_trial_id()
    out = base["tune"]["out"]
    tdir = trial_dir_for(out, trial_id)
    cfg = trial_config(base, params, tdir, tokenizer)
    apply_storage(cfg)
    done = done_url(out, trial_id)
    if storage.exists(done):
        # restarted after it had finished (the sweep's driver died before Tune recorded it):
        # report the final eval again instead of training again
        last = storage.read_json(done)["last"]
        if last:
            tune.report(last)
        return
    # an unfinished earlier attempt (driver killed): train from scratch, not from its state
    # (only a run this trial created: docs/operations.md, "Inputs are read-only")
    owned.claim_dir(tdir)
    owned.remove_owned(train.run_dir(cfg), "tune.out", owner=tdir)
    storage.write_json(storage.join(tdir, "params.json"), {"trial_id": trial_id, **params})
    ray.data.DataContext.get_current().enable_progress_bars = False  # Tune shows progress
    summary = curate.run_rebalance(cfg)  # the balancing artifact only: no matching, no images
    drawn = draw.draw_summary(ingest.Source.open(cfg.train.data), epoch=0)
    storage.write_json(epoch0_url(out, trial_id), drawn)  # the trial's curated size (results.py)
    summary["kept"] = drawn["kept"]
    cfg.train.epochs = epochs_for_budget(cfg)
    extra = {"kept": summary["kept"], "derived_t_en": summary["t_en"],
             "derived_p": summary["p"]}
    log.info("trial %s: %s kept %d pairs; proxy training %d steps (%d epochs)", trial_id,
             params, summary["kept"], cfg.train.max_steps, cfg.train.epochs)
    trainer = train.build_trainer(cfg)
    rep_url = reports_url(out, trial_id)
    recorder = placement_group_recorder(pg_list_url(out, trial_id))
    trainer.run_config.callbacks += [EvalReportCallback(METRIC, extra, rep_url),
                                     *([recorder] if recorder is not None else [])]
    trainer.fit()
    reports = storage.read_json(rep_url) if storage.exists(rep_url) else []
    storage.write_json(done, {"trial_id": trial_id, "params": params, "curation": summary,
                              "last": reports[-1] if reports else None})
