"""tune/search.py: the search space per search algorithm, the config checks, and Optuna +
ASHA wiring (this module's space and tune_config) on the real local Ray."""

from __future__ import annotations

import math

import pytest
from omegaconf import OmegaConf

from worldclip.pipelines.tune import search
from worldclip.platform.config import ConfigError, load_config


def test_search_space_per_search_algorithm():
    from ray.tune.search.sample import Categorical, Float

    cfg = load_config(["tune.p_values=[0.01,0.1,0.5]", "tune.threshold_modes=[per_language]"])
    grid = search.search_space(cfg.tune)
    assert grid["p"] == {"grid_search": [0.01, 0.1, 0.5]}
    assert grid["threshold_mode"] == "per_language"
    cfg = load_config(["tune.search=random", "tune.p_values=[0.5,0.01,0.1]",
                       "tune.threshold_modes=[per_language,single]"])
    rnd = search.search_space(cfg.tune)
    assert isinstance(rnd["p"], Float) and isinstance(rnd["threshold_mode"], Categorical)
    assert (rnd["p"].lower, rnd["p"].upper) == (0.01, 0.5)
    assert "LogUniform" in type(rnd["p"].get_sampler()).__name__
    cfg = load_config(["tune.search=optuna", "tune.param=t_en", "tune.t_en_values=[5,80]"])
    assert set(search.search_space(cfg.tune)) == {"t_en", "threshold_mode"}


@pytest.mark.parametrize("override, fragment", [
    ("tune.param=t", "tune.param='t'"),
    ("tune.p_values=[0.1,2.0]", "every p must be in (0, 1]"),
    ("tune.threshold_modes=[none]", "contains 'none'"),
    ("tune.eval_every=100", "tune.eval_every=100 > tune.train_steps=60"),
    ("tune.grace_period=0", "tune.grace_period=0: must be a positive integer"),
])
def test_bad_tune_config_names_key_and_fix(override, fragment):
    # merged after load_config: its own checks (tests/test_config_validation.py) would raise
    # first; this is check_config's message, the stage's guard for configs built in code
    cfg = OmegaConf.merge(load_config(), OmegaConf.from_dotlist([override]))
    with pytest.raises(ConfigError) as e:
        search.check_config(cfg)
    assert fragment in str(e.value)


@pytest.mark.slow
def test_optuna_with_asha_on_ray(ray_session, tmp_path):
    """optuna 5.0.0 through ray 2.60's OptunaSearch with this module's space and ASHA."""
    from ray import tune

    cfg = load_config(["tune.search=optuna", "tune.num_samples=5", "tune.p_values=[0.01,0.5]",
                       "tune.train_steps=4", "tune.eval_every=1", "tune.grace_period=1",
                       "tune.max_concurrent=2"])

    def trainable(config):
        for step in range(1, 5):  # peaks at p = 0.1
            tune.report({"step": step,
                         search.METRIC: step / 4 - abs(math.log10(config["p"]) + 1)})

    grid = tune.Tuner(tune.with_resources(trainable, {"cpu": 0.25}),
                      param_space=search.search_space(cfg.tune),
                      tune_config=search.tune_config(cfg.tune),
                      run_config=tune.RunConfig(storage_path=str(tmp_path), name="optuna",
                                                verbose=0)).fit()
    assert len(grid) == 5 and not grid.errors
    ps = [r.config["p"] for r in grid]
    assert all(0.01 <= p <= 0.5 for p in ps) and len(set(ps)) == 5
