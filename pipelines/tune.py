"""Ray Tune sweep of balancing thresholds: rebalance -> proxy training -> zero-shot (ASHA).

"Match once, rebalance many" (DESIGN.md): the driver makes sure the matches and global counts
exist (running `curate` once if they do not); a trial only re-samples them with its thresholds
(`curate.run_rebalance`: no LID, no matching) into <tune.out>/trials/<trial id>/data, trains
the proxy model for tune.train_steps steps with Ray Train (`trainer.fit()` inside the function
trainable; a TuneReportCallback forwards rank 0's zero-shot reports every tune.eval_every
steps) and ASHA (clock: the train step) stops trials whose zero-shot top-1 falls behind.

Every trial uses one tokenizer (train.tokenizer, or one trained here on all matched captions):
thresholds change the curated captions, and a tokenizer per trial would confound the sweep.

Resumable: an existing experiment (<tune.out>/<tune.name>, local or S3) is restored with
Tuner.restore; finished trials keep their results (ASHA's rungs are rebuilt from them, which
Tune itself does not do), unfinished ones start again.

Outputs under tune.out:
    <tune.name>/                  the Tune experiment
    tokenizer/                    the shared tokenizer (when train.tokenizer is empty)
    trials/<trial id>/data        the trial's balanced sample + datacard.json
    trials/<trial id>/proxy       the trial's Ray Train run (final checkpoint)
    trials/<trial id>/reports.json, done.json   its forwarded reports; its end
    results.json, results.md      one row per trial: thresholds, curated sizes, metric
    metric_vs_t_en.png            zero-shot top-1 against the (derived) English threshold
    best_curation.yaml            the best thresholds: `worldclip curate --config` it
"""

from __future__ import annotations

import io
import logging
import math
import os
import re
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import pyarrow.parquet as pq
from omegaconf import DictConfig, OmegaConf
from ray.train.v2._internal.execution.callback import WorkerGroupCallback
from ray.tune import Callback
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler

from worldclip.platform import owned, storage
from worldclip.platform.config import ConfigError, apply_storage, save_config, validate

log = logging.getLogger(__name__)

METRIC = "zero_shot_top1"
MODE = "max"
PARAMS = ("p", "t_en")
TIME_ATTR = "step"  # ASHA's clock: the optimizer step the Train workers report


# ============================================================== pure pieces

def check_config(cfg: DictConfig) -> None:
    """Raise ConfigError naming the tune key, the bad value and the fix."""
    tc = cfg.tune
    if tc.param not in PARAMS:
        raise ConfigError(f"config tune.param={tc.param!r}: must be one of p, t_en")
    values = list(tc.p_values if tc.param == "p" else tc.t_en_values)
    key = f"tune.{tc.param}_values"
    if not values:
        raise ConfigError(f"config {key}=[]: give at least one value, e.g. [0.02, 0.1]")
    if tc.param == "p" and not all(0 < v <= 1 for v in values):
        raise ConfigError(f"config {key}={values}: every p must be in (0, 1]")
    if tc.param == "t_en" and not all(v > 0 for v in values):
        raise ConfigError(f"config {key}={values}: every t_en must be > 0")
    for m in tc.threshold_modes:
        if m not in ("per_language", "single"):
            raise ConfigError(f"config tune.threshold_modes contains {m!r}: allowed "
                              "per_language, single")
    if not tc.threshold_modes:
        raise ConfigError("config tune.threshold_modes=[]: give e.g. [per_language]")
    for k in ("train_steps", "eval_every", "grace_period", "num_samples", "max_concurrent"):
        v = tc[k]
        if not isinstance(v, int) or v <= 0:
            raise ConfigError(f"config tune.{k}={v!r}: must be a positive integer")
    if tc.eval_every > tc.train_steps:
        raise ConfigError(f"config tune.eval_every={tc.eval_every} > tune.train_steps="
                          f"{tc.train_steps}: a trial would never report {METRIC}; lower it")
    if tc.grace_period > tc.train_steps:
        raise ConfigError(f"config tune.grace_period={tc.grace_period} > tune.train_steps="
                          f"{tc.train_steps}: must be <= train_steps")
    if not tc.reduction_factor > 1:
        raise ConfigError(f"config tune.reduction_factor={tc.reduction_factor}: must be > 1")
    if cfg.train.zero_stage == 3:
        raise ConfigError("config train.zero_stage=3 with `worldclip tune`: the in-training "
                          "zero-shot eval needs unsharded weights; use train.zero_stage 0-2")


def search_space(tc: DictConfig) -> dict[str, Any]:
    """Tune param_space: the swept threshold (log scale) and the threshold mode."""
    from ray import tune

    values = [float(v) for v in (tc.p_values if tc.param == "p" else tc.t_en_values)]
    modes = list(tc.threshold_modes)
    if tc.search == "grid":
        return {tc.param: tune.grid_search(values),
                "threshold_mode": tune.grid_search(modes) if len(modes) > 1 else modes[0]}
    lo, hi = min(values), max(values)
    return {tc.param: tune.loguniform(lo, hi) if lo < hi else lo,
            "threshold_mode": tune.choice(modes) if len(modes) > 1 else modes[0]}


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
    """Epochs so that train.max_steps is reached however few pairs the trial kept: the
    proxy budget is a fixed number of pairs, not a number of passes over the data."""
    from worldclip.pipelines.ingest import Source, file_row_counts, worker_files

    tc = cfg.train
    src = Source.open(tc.data)
    per_step = int(tc.batch_size_per_worker) * int(tc.grad_accum)
    cache: dict[str, int] = {}
    steps = 0
    for epoch in range(cap):
        rows = []
        for r in range(int(tc.num_workers)):
            files = worker_files(src.files, int(tc.seed), epoch, r, int(tc.num_workers))
            if src.mode == "offline":  # kept rows per file do not change with the epoch
                todo = [f for f in files if f not in cache]
                cache.update(zip(todo, file_row_counts(src, todo, tc.seed, epoch),
                                 strict=True))
                rows.append(sum(cache[f] for f in files))
            else:
                rows.append(sum(file_row_counts(src, files, int(tc.seed), epoch)))
        steps += min(rows) // per_step
        if steps >= int(tc.max_steps):
            return epoch + 1
        if steps == 0 and epoch >= 3:
            break  # too few pairs for one step; plan_steps raises a clear error
    return max(1, min(cap, epoch + 1))


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
            "share) transfers across pool sizes, t_en does not (RECIPE.md section 4)"]
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


# ============================================================== Ray wiring: the trial

class EvalReportCallback(TuneReportCallback):
    """Forwards rank 0's in-training eval reports to Tune, with the trial's curation facts.

    The train loop's checkpoint reports carry no zero-shot metric; Tune's strict metric
    check would fail the trial on them, so only reports with the metric are forwarded. The
    forwarded reports are also kept in the trial's folder (reports.json): a restored sweep
    replays them into ASHA's rungs (ResumableASHA)."""

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


class ResumableASHA(ASHAScheduler):
    """ASHA that survives Tuner.restore.

    Tune restores the trials and the search algorithm of an experiment but not its scheduler
    (ray 2.60): the rungs of the trials finished before the restore would be forgotten and
    the resumed sweep would stop trials against fewer (or no) rivals. When a finished trial
    is re-added on restore, its reports (reports.json in its folder) are replayed here."""

    def __init__(self, tune_out: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.tune_out = tune_out

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        from ray.tune.experiment import Trial

        super().on_trial_add(tune_controller, trial)
        url = reports_url(self.tune_out, trial.trial_id)
        if trial.status != Trial.TERMINATED or not storage.exists(url):
            return
        bracket = self._trial_info[trial.trial_id]
        for rep in storage.read_json(url):
            if self._time_attr in rep and self._metric in rep:
                bracket.on_result(trial, rep[self._time_attr],
                                  self._metric_op * rep[self._metric])


class PlacementGroupRecorder(WorkerGroupCallback):
    """Controller side: notes each worker group's placement group in the trial's folder.

    When ASHA stops a trial, Tune ends the trial's actor; the Train controller and workers it
    owns die with it, but the workers' placement group belongs to the job and outlives them.
    Ray Train's own PlacementGroupCleaner needs the state API (a dashboard), which a local
    Ray without dashboard lacks (measured with ray 2.60: the leaked CPUs/GPUs stay reserved
    and later trials starve). The driver removes the recorded groups of ended trials."""

    def __init__(self, url: str) -> None:
        self.url = url

    def after_worker_group_start(self, worker_group: Any) -> None:
        try:
            pg = worker_group.get_worker_group_state().placement_group_handle.placement_group
            ids = storage.read_json(self.url) if storage.exists(self.url) else []
            storage.write_json(self.url, [*ids, pg.id.hex()])
        except Exception as e:  # noqa: BLE001 - bookkeeping must never fail training
            log.warning("could not record the train placement group: %s", e)


def release_placement_groups(url: str) -> int:
    """Remove the recorded placement groups (url: a trial's list) still reserved; -> count."""
    import ray
    from ray._raylet import PlacementGroupID
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    if not storage.exists(url):
        return 0
    n = 0
    for h in storage.read_json(url):
        pg = PlacementGroup(PlacementGroupID(bytes.fromhex(h)))
        state = (ray.util.placement_group_table(pg) or {}).get("state")
        if state and state != "REMOVED":
            try:
                remove_placement_group(pg)
                n += 1
            except Exception as e:  # noqa: BLE001 - removed meanwhile by its owner
                log.debug("placement group %s: %s", h, e)
    if n:
        log.info("released %d placement group(s) left by a stopped trial (%s)", n, url)
    return n


class ReleaseStoppedTrials(Callback):
    """Driver side: a while after a trial ended (its actor, controller and workers are gone
    by then), remove the train placement groups it left behind."""

    def __init__(self, tune_out: str, delay_s: float = 10.0) -> None:
        self.tune_out = tune_out
        self.delay_s = delay_s
        self.ended: dict[str, float] = {}

    def _ended(self, trial: Any) -> None:
        self.ended[trial.trial_id] = time.monotonic()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ended(trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ended(trial)

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        now = time.monotonic()
        for tid, t in list(self.ended.items()):
            if now - t >= self.delay_s:
                del self.ended[tid]
                release_placement_groups(pg_list_url(self.tune_out, tid))


def pg_list_url(tune_out: str, trial_id: str) -> str:
    return storage.join(trial_dir_for(tune_out, trial_id), "placement_groups.json")


def reports_url(tune_out: str, trial_id: str) -> str:
    return storage.join(trial_dir_for(tune_out, trial_id), "reports.json")


def trial_dir_for(tune_out: str, trial_id: str) -> str:
    return storage.join(tune_out, "trials", trial_id)


def run_trial(params: dict[str, Any], base: dict[str, Any], tokenizer: str) -> None:
    """One trial (a Tune function trainable): rebalance -> proxy training with evals."""
    import ray
    from ray import tune

    from worldclip.pipelines import curate, train

    trial_id = tune.get_context().get_trial_id()
    tdir = trial_dir_for(base["tune"]["out"], trial_id)
    cfg = trial_config(base, params, tdir, tokenizer)
    apply_storage(cfg)
    done_url = storage.join(tdir, "done.json")
    if storage.exists(done_url):
        # restarted after it had finished (the sweep's driver died before Tune recorded it):
        # report the final eval again instead of training again
        last = storage.read_json(done_url)["last"]
        if last:
            tune.report(last)
        return
    # an unfinished earlier attempt (driver killed): train from scratch, not from its state
    # (only a run this trial created: docs/operations.md, "Inputs are read-only")
    owned.claim_dir(tdir)
    owned.remove_owned(train.run_dir(cfg), "tune.out", owner=tdir)
    storage.write_json(storage.join(tdir, "params.json"), {"trial_id": trial_id, **params})
    ray.data.DataContext.get_current().enable_progress_bars = False  # Tune shows progress
    summary = curate.run_rebalance(cfg)  # re-sample only: matching never runs in a trial
    cfg.train.epochs = epochs_for_budget(cfg)
    extra = {"kept": summary["kept"], "derived_t_en": summary["t_en"],
             "derived_p": summary["p"]}
    log.info("trial %s: %s kept %d pairs; proxy training %d steps (%d epochs)", trial_id,
             params, summary["kept"], cfg.train.max_steps, cfg.train.epochs)
    trainer = train.build_trainer(cfg)
    rep_url = reports_url(base["tune"]["out"], trial_id)
    trainer.run_config.callbacks += [
        EvalReportCallback(METRIC, extra, rep_url),
        PlacementGroupRecorder(pg_list_url(base["tune"]["out"], trial_id))]
    trainer.fit()
    reports = storage.read_json(rep_url) if storage.exists(rep_url) else []
    storage.write_json(done_url, {"trial_id": trial_id, "params": params, "curation": summary,
                                  "last": reports[-1] if reports else None})


# ============================================================== Ray wiring: the driver

def ensure_matches(cfg: DictConfig) -> bool:
    """Matches + global counts in curation.out, matching once if missing. True if it ran."""
    from worldclip.pipelines import curate

    c = cfg.curation
    if storage.exists(storage.join(c.out, "counts.npz")) and storage.glob(
            storage.join(c.out, "matches", "*.stats.json")):
        log.info("reusing matches and counts in %s (no matching)", c.out)
        return False
    log.info("no matches/counts in %s: running curation once before the sweep", c.out)
    curate.run(cfg)
    return True


def matched_captions(match_dir: str, limit: int = 200_000) -> Iterator[str]:
    """Captions of every matched pair (all languages, before any threshold)."""
    n = 0
    for u in storage.glob(storage.join(match_dir, "*.parquet")):
        if u.endswith(".counts.parquet"):
            continue
        t = pq.read_table(io.BytesIO(storage.read_bytes(u)), columns=["texts"])
        for texts in t.column("texts").to_pylist():
            for s in texts:
                yield s
                n += 1
                if n >= limit:
                    return


def ensure_tokenizer(cfg: DictConfig) -> str:
    """One tokenizer for every trial: train.tokenizer, or one trained on matched captions."""
    from worldclip.models.tokenizer import train_tokenizer

    if cfg.train.tokenizer:
        return str(cfg.train.tokenizer)
    url = storage.join(cfg.tune.out, "tokenizer")
    if not storage.exists(storage.join(url, "tokenizer.json")):
        with tempfile.TemporaryDirectory() as d:
            train_tokenizer(matched_captions(storage.join(cfg.curation.out, "matches")),
                            vocab_size=int(cfg.train.tokenizer_vocab), out_dir=d)
            storage.upload_dir(d, url)
    return url


def tune_config(tc: DictConfig) -> Any:
    """tune.TuneConfig: metric/mode, ASHA on the train step, the search algorithm."""
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    max_concurrent: int | None = int(tc.max_concurrent)
    if tc.search == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        search_alg: Any = OptunaSearch(seed=int(tc.seed))
    else:  # grid and random: the generator limits concurrency itself (Tune ignores
        search_alg = BasicVariantGenerator(  # max_concurrent_trials beside a generator)
            random_state=int(tc.seed), max_concurrent=int(tc.max_concurrent))
        max_concurrent = None
    scheduler = ResumableASHA(str(tc.out), time_attr=TIME_ATTR, max_t=int(tc.train_steps),
                              grace_period=int(tc.grace_period),
                              reduction_factor=float(tc.reduction_factor),
                              stop_last_trials=False)  # a trial at max_t ends by itself
    return tune.TuneConfig(metric=METRIC, mode=MODE, scheduler=scheduler,
                           search_alg=search_alg,
                           num_samples=1 if tc.search == "grid" else int(tc.num_samples),
                           max_concurrent_trials=max_concurrent)


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
                                  callbacks=[ReleaseStoppedTrials(tc.out)]))


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
        row = {
            "trial_id": tid,
            "threshold_mode": res.config.get("threshold_mode", cfg.curation.threshold_mode),
            "p": res.config.get("p"), "t_en": res.config.get("t_en"),
            "derived_t_en": bal.get("t_en"), "derived_p": bal.get("p"),
            "t_lang": bal.get("t_lang"),
            "kept": card.get("accounting", {}).get("kept"),
            "languages": {g: v["kept"] for g, v in card.get("languages", {}).items()},
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


def run(cfg: DictConfig) -> dict[str, Any]:
    """`worldclip tune`: match once, then an ASHA sweep of rebalance -> proxy train -> eval."""
    from worldclip.platform.runtime import init_ray

    check_config(cfg)
    init_ray(cfg)
    started = time.time()
    tc = cfg.tune
    matching_ran = ensure_matches(cfg)
    tokenizer = ensure_tokenizer(cfg)
    save_config(cfg, tc.out)
    grid = build_tuner(cfg, tokenizer).fit()
    for url in storage.glob(pg_list_url(tc.out, "*")):  # trials ended in the last seconds
        release_placement_groups(url)
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
