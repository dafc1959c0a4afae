"""`worldclip tune`: a Ray Tune sweep of the balancing thresholds (docs/operations.md, "Tuning").

    search.py      what is searched and how: config checks, space, search algorithm, ASHA
    trial.py       one trial: rebalance -> proxy training -> in-training evals to Tune
    stage.py       the driver: match once, one tokenizer, build/restore the Tuner, results
    results.py     rows per trial, the best trial, tables, plot, best_curation.yaml
    paths.py       where a sweep writes (trial folders and their files)
    ray_compat.py  every Ray-version workaround (scheduler restore, placement-group leak)
"""

from worldclip.pipelines.tune.stage import run

__all__ = ["run"]
