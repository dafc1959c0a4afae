"""`worldclip tune`: search spaces, trial configs and result tables as pure functions; Optuna +
ASHA wiring on the real local Ray; and one real sweep (rebalance -> Ray Train proxy training
-> zero-shot, ASHA) whose driver is killed after its first trial and then restored."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import make_config
from omegaconf import OmegaConf

from worldclip.pipelines import tune as wtune
from worldclip.platform import storage
from worldclip.platform.config import ConfigError, load_config

TESTS = Path(__file__).resolve().parent


# ---------------------------------------------------------------- pure pieces

def test_search_space_per_search_algorithm():
    from ray.tune.search.sample import Categorical, Float

    cfg = load_config(["tune.p_values=[0.01,0.1,0.5]", "tune.threshold_modes=[per_language]"])
    grid = wtune.search_space(cfg.tune)
    assert grid["p"] == {"grid_search": [0.01, 0.1, 0.5]}
    assert grid["threshold_mode"] == "per_language"
    cfg = load_config(["tune.search=random", "tune.p_values=[0.5,0.01,0.1]",
                       "tune.threshold_modes=[per_language,single]"])
    rnd = wtune.search_space(cfg.tune)
    assert isinstance(rnd["p"], Float) and isinstance(rnd["threshold_mode"], Categorical)
    assert (rnd["p"].lower, rnd["p"].upper) == (0.01, 0.5)
    assert "LogUniform" in type(rnd["p"].get_sampler()).__name__
    cfg = load_config(["tune.search=optuna", "tune.param=t_en", "tune.t_en_values=[5,80]"])
    assert set(wtune.search_space(cfg.tune)) == {"t_en", "threshold_mode"}


@pytest.mark.parametrize("override, fragment", [
    ("tune.param=t", "tune.param='t'"),
    ("tune.p_values=[0.1,2.0]", "every p must be in (0, 1]"),
    ("tune.threshold_modes=[none]", "contains 'none'"),
    ("tune.eval_every=100", "tune.eval_every=100 > tune.train_steps=60"),
    ("tune.grace_period=0", "tune.grace_period=0: must be a positive integer"),
])
def test_bad_tune_config_names_key_and_fix(override, fragment):
    with pytest.raises(ConfigError) as e:
        wtune.check_config(load_config([override]))
    assert fragment in str(e.value)


def test_trial_config_sets_thresholds_folders_and_budget():
    cfg = load_config(["storage.root=/r", "tune.train_steps=30", "tune.eval_every=10",
                       "train.warmup_steps=2000", "curation.p=0.06"])
    base = OmegaConf.to_container(cfg, resolve=True)
    t = wtune.trial_config(base, {"t_en": 12.0, "threshold_mode": "single"}, "/r/tune/trials/x",
                           "/tok")
    assert (t.curation.t_en, t.curation.p, t.curation.threshold_mode) == (12.0, None, "single")
    assert t.curation.balanced_out == t.train.data == "/r/tune/trials/x/data"
    assert t.curation.out == cfg.curation.out  # the shared matches, never a trial's own
    assert (t.train.max_steps, t.train.eval_every, t.train.tokenizer) == (30, 10, "/tok")
    assert t.train.warmup_steps == 3  # a production warm-up would idle the 30-step proxy
    assert wtune.trial_config(base, {"p": 0.2}, "/x", "/tok").curation.t_en is None


def test_epochs_cover_the_pair_budget(tmp_path):
    """4 shards of 10 kept pairs, 16 pairs per step: the proxy trains max_steps steps however
    few pairs a threshold keeps (1 worker: 2 steps/epoch; 2 workers: 1 step/epoch each)."""
    for i in range(4):
        (tmp_path / "shards").mkdir(exist_ok=True)
        (tmp_path / "shards" / f"s{i}.tar").write_bytes(b"")
        storage.write_json(str(tmp_path / "stats" / f"s{i}.json"), {"kept": 10})
    common = [f"train.data={tmp_path}", "train.batch_size_per_worker=16", "train.max_steps=7"]
    assert wtune.epochs_for_budget(load_config([*common, "train.num_workers=1"])) == 4
    assert wtune.epochs_for_budget(load_config([*common, "train.num_workers=2"])) == 7


def _row(tid, p, step, metric, kept=10):
    return {"trial_id": tid, "threshold_mode": "per_language", "p": p, "t_en": None,
            "derived_t_en": 3.0, "derived_p": p, "kept": kept, "languages": {"en": kept},
            "last_step": step, "zero_shot_top1": metric, "best_zero_shot_top1": metric,
            "status": "completed" if step == 8 else "stopped_early", "error": None}


def test_best_is_the_top_completed_trial_and_its_yaml_loads(tmp_path):
    rows = [_row("a", 0.01, 8, 0.30), _row("b", 0.1, 2, 0.90), _row("c", 0.5, 8, 0.35),
            {**_row("d", 0.9, 8, 0.99), "error": "boom"}]
    best = wtune.pick_best(rows)
    assert best["trial_id"] == "c"  # b stopped early, d errored
    path = tmp_path / "best.yaml"
    path.write_text(wtune.best_curation_yaml(best, "p"))
    cfg = load_config(files=[str(path)])
    assert (cfg.curation.p, cfg.curation.t_en, cfg.curation.threshold_mode) == \
        (0.5, None, "per_language")
    md = wtune.results_markdown(rows, "p", best)
    assert "| c **best** | per_language | 0.5 |" in md and md.count("stopped_early") == 1
    assert wtune.pick_best([_row("x", 0.1, None, None)]) is None


def test_restored_asha_remembers_finished_trials(tmp_path):
    """Tune restores trials but not the scheduler: ResumableASHA replays a finished trial's
    reports, so a later trial below it at a rung is still stopped after a restore."""
    from ray.tune.experiment import Trial
    from ray.tune.schedulers import ASHAScheduler, TrialScheduler

    def make(cls, *args):
        s = cls(*args, time_attr="step", max_t=6, grace_period=2, reduction_factor=2,
                stop_last_trials=False)
        s.set_search_properties(wtune.METRIC, "max")
        return s

    done = Trial("run_trial", trial_id="a_00000", stub=True)
    done.set_status(Trial.TERMINATED)
    storage.write_json(wtune.reports_url(str(tmp_path), "a_00000"),
                       [{"step": 2, wtune.METRIC: 0.5}, {"step": 4, wtune.METRIC: 0.6}])
    new = Trial("run_trial", trial_id="a_00001", stub=True)
    restored, fresh = make(wtune.ResumableASHA, str(tmp_path)), make(ASHAScheduler)
    for sched in (restored, fresh):  # what Tune.restore does: re-add every trial
        sched.on_trial_add(None, done)
        sched.on_trial_add(None, new)
    worse = {"step": 2, wtune.METRIC: 0.4}
    assert restored.on_trial_result(None, new, worse) == TrialScheduler.STOP
    assert fresh.on_trial_result(None, new, worse) == TrialScheduler.CONTINUE  # Tune alone


# ---------------------------------------------------------------- Ray Tune wiring

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
                         wtune.METRIC: step / 4 - abs(math.log10(config["p"]) + 1)})

    grid = tune.Tuner(tune.with_resources(trainable, {"cpu": 0.25}),
                      param_space=wtune.search_space(cfg.tune),
                      tune_config=wtune.tune_config(cfg.tune),
                      run_config=tune.RunConfig(storage_path=str(tmp_path), name="optuna",
                                                verbose=0)).fit()
    assert len(grid) == 5 and not grid.errors
    ps = [r.config["p"] for r in grid]
    assert all(0.01 <= p <= 0.5 for p in ps) and len(set(ps)) == 5


def _fixed_tokenizer(out: str, captions: list[str]) -> None:
    """A tokenizer built without a trainer (unigram pieces: characters and frequent words),
    so the sweep's metrics -- and ASHA's decisions -- repeat run after run. The unigram
    trainer of `tokenizers` gives a different vocabulary on every call."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    chars = sorted({c for t in captions for c in t if not c.isspace()})
    words = Counter(w for t in captions for w in t.split())
    top = sorted(w for w, n in words.items() if n >= 3)
    vocab = [(s, 0.0) for s in ("<s>", "<pad>", "</s>", "<unk>")]
    vocab += [("\u2581", -2.0)] + [(c, -8.0) for c in chars]
    vocab += [(f"\u2581{w}", -1.0 - 0.01 * len(w)) for w in top if len(w) > 1]
    tok = Tokenizer(models.Unigram(vocab, unk_id=3))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", pad_token="<pad>",
                            eos_token="</s>", unk_token="<unk>",
                            model_max_length=77).save_pretrained(out)


P_GRID = [0.01, 0.1, 0.5]
TUNE = ["tune.p_values=[0.01,0.1,0.5]", "tune.train_steps=6", "tune.eval_every=2",
        "tune.grace_period=2", "tune.reduction_factor=2", "tune.max_concurrent=1",
        "tune.cpus_per_trial=0.25", "train.num_workers=1", "train.cpus_per_worker=0.5",
        "train.ingest_cpus=0.25", "train.batch_size_per_worker=16", "train.lr=1e-3",
        "train.log_every=2"]

DRIVER = """
import sys
sys.path.insert(0, {tests!r})
from conftest import make_config
from worldclip.pipelines import tune
tune.run(make_config({root!r}, *{overrides!r}))
"""


def _experiment_states(tune_out: Path) -> dict[str, str]:
    """trial id -> status in the newest saved experiment state."""
    files = sorted((tune_out / "sweep").glob("experiment_state-*.json"))
    if not files:
        return {}
    try:
        data = json.loads(files[-1].read_text())
    except (json.JSONDecodeError, OSError):  # caught mid-write
        return {}
    out = {}
    for entry in data["trial_data"]:
        t = json.loads(entry[0])
        out[t["trial_id"]] = t["status"]
    return out


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_sweep_killed_after_first_trial_then_restored(small_world, ray_session, tmp_path):
    import ray

    root = small_world["root"]
    curated = Path(root) / "curated"
    match_files = sorted(curated.glob("matches/*")) + [curated / "counts.npz"]
    mtimes = {f: f.stat().st_mtime_ns for f in match_files}
    tok = str(tmp_path / "tokenizer")
    _fixed_tokenizer(tok, list(wtune.matched_captions(str(curated / "matches"))))
    tune_out = tmp_path / "tune"
    overrides = [*TUNE, f"tune.out={tune_out}", f"train.tokenizer={tok}"]

    # 1. the sweep's driver in its own process on the session's Ray; SIGKILL it as soon as
    #    the first trial is finished and recorded in the saved experiment state
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address,
           "TUNE_GLOBAL_CHECKPOINT_S": "1"}
    log_path = tmp_path / "driver.log"
    started = time.time()
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-c", DRIVER.format(tests=str(TESTS), root=root,
                                                 overrides=overrides)],
            env=env, stdout=log_file, stderr=subprocess.STDOUT)
        try:
            first = None
            while first is None:
                assert proc.poll() is None, "driver ended early:\n" + \
                    log_path.read_text()[-3000:]
                assert time.time() - started < 300, "no trial finished in 300 s"
                done = sorted(tune_out.glob("trials/*/done.json"))
                states = _experiment_states(tune_out)
                if done and states.get(done[0].parent.name) == "TERMINATED":
                    first = done[0].parent.name
                time.sleep(0.5)
        finally:
            proc.kill()
            proc.wait(30)
    first_done = (tune_out / "trials" / first / "done.json").stat().st_mtime_ns
    states = _experiment_states(tune_out)
    assert list(states.values()).count("TERMINATED") == 1 and states[first] == "TERMINATED"

    # 2. restore in this process: the same experiment continues to the end
    cfg = make_config(root, *overrides)
    summary = wtune.run(cfg)
    wall = time.time() - started
    print(f"sweep wall time (killed + restored): {wall:.0f}s")
    assert summary["trials"] == 3 and summary["error"] == summary["no_report"] == 0
    final = _experiment_states(tune_out)
    assert set(states) <= set(final) and len(final) == 3  # restored, not a new sweep
    assert (tune_out / "trials" / first / "done.json").stat().st_mtime_ns == first_done

    # matching ran in neither driver: no match file rewritten, no matching in the summary
    assert not summary["matching_ran"]
    assert {f: f.stat().st_mtime_ns for f in match_files} == mtimes

    result = json.loads((tune_out / "results.json").read_text())
    rows = sorted(result["trials"], key=lambda r: r["p"])
    assert [r["p"] for r in rows] == P_GRID
    # each trial curated its own sample: fewer pairs (and a lower t_en) for a smaller p
    kept = [r["kept"] for r in rows]
    assert kept[0] < kept[1] < kept[2], kept
    assert rows[0]["derived_t_en"] < rows[1]["derived_t_en"] < rows[2]["derived_t_en"]
    for r in rows:
        assert sum(r["languages"].values()) == r["kept"] and len(r["languages"]) >= 10
        card = json.loads((tune_out / "trials" / r["trial_id"] / "data" /
                           "datacard.json").read_text())
        assert card["balancing"]["config"]["p"] == r["p"]

    # ASHA, replayed by hand: trials ran one at a time in grid order; at each rung (steps 2
    # and 4: grace 2 x reduction factor 2^k below max_t 6) a trial stops iff its metric is
    # below the median of the earlier trials' metrics there. The first trial's rungs were
    # recorded by the killed driver: the restored sweep must still compare against them.
    by_order = sorted(result["trials"], key=lambda r: r["trial_id"])
    assert [r["p"] for r in by_order] == P_GRID
    hists = [dict(map(tuple, r["history"])) for r in by_order]
    for i, (r, h) in enumerate(zip(by_order, hists, strict=True)):
        assert sorted(h) == list(range(2, r["last_step"] + 1, 2))
        stop_at = None
        for rung in (2, 4):
            prev = [e[rung] for e in hists[:i] if rung in e]
            if prev and h[rung] < np.nanpercentile(prev, 50):
                stop_at = rung
                break
        assert (r["status"], r["last_step"]) == (("stopped_early", stop_at) if stop_at
                                                 else ("completed", 6)), (i, hists)
    statuses = Counter(r["status"] for r in rows)
    assert statuses["stopped_early"] >= 1 and statuses["completed"] >= 1, hists

    # outputs: tables, plot, and the best thresholds as a loadable curation config
    md = (tune_out / "results.md").read_text()
    assert all(r["trial_id"] in md for r in rows) and "## Curated pairs per language" in md
    assert (tune_out / "metric_vs_t_en.png").read_bytes()[:4] == b"\x89PNG"
    best = result["best"]
    assert best["status"] == "completed"
    best_cfg = load_config(files=[str(tune_out / "best_curation.yaml")])
    assert best_cfg.curation.p == best["p"] and best_cfg.curation.t_en is None

    # no train placement group of a stopped trial stays reserved
    from ray._raylet import PlacementGroupID
    from ray.util.placement_group import PlacementGroup

    for url in tune_out.glob("trials/*/placement_groups.json"):
        for h in json.loads(url.read_text()):
            pg = PlacementGroup(PlacementGroupID(bytes.fromhex(h)))
            assert ray.util.placement_group_table(pg)["state"] == "REMOVED"
