"""tune/results.py: the best trial, its curation config and the results tables."""

from __future__ import annotations

from worldclip.pipelines.tune import results
from worldclip.platform.config import load_config


def _row(tid, p, step, metric, kept=10):
    return {"trial_id": tid, "threshold_mode": "per_language", "p": p, "t_en": None,
            "derived_t_en": 3.0, "derived_p": p, "kept": kept, "languages": {"en": kept},
            "last_step": step, "zero_shot_top1": metric, "best_zero_shot_top1": metric,
            "status": "completed" if step == 8 else "stopped_early", "error": None}


def test_best_is_the_top_completed_trial_and_its_yaml_loads(tmp_path):
    rows = [_row("a", 0.01, 8, 0.30), _row("b", 0.1, 2, 0.90), _row("c", 0.5, 8, 0.35),
            {**_row("d", 0.9, 8, 0.99), "error": "boom"}]
    best = results.pick_best(rows)
    assert best["trial_id"] == "c"  # b stopped early, d errored
    path = tmp_path / "best.yaml"
    path.write_text(results.best_curation_yaml(best, "p"))
    cfg = load_config(files=[str(path)])
    assert (cfg.curation.p, cfg.curation.t_en, cfg.curation.threshold_mode) == \
        (0.5, None, "per_language")
    md = results.results_markdown(rows, "p", best)
    assert "| c **best** | per_language | 0.5 |" in md and md.count("stopped_early") == 1
    assert results.pick_best([_row("x", 0.1, None, None)]) is None
