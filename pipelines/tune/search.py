"""What a sweep searches and how: the config checks, the search space, the search algorithm
(grid, random, Optuna) and ASHA on the proxy's train step (docs/operations.md, "Tuning")."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from worldclip.platform.config import ConfigError

METRIC = "zero_shot_top1"
MODE = "max"
PARAMS = ("p", "t_en")
TIME_ATTR = "step"  # ASHA's clock: the optimizer step the Train workers report


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


def tune_config(tc: DictConfig) -> Any:
    """tune.TuneConfig: metric/mode, ASHA on the train step, the search algorithm."""
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from worldclip.pipelines.tune.ray_compat import ResumableASHA

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
