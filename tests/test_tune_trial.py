"""tune/trial.py: a trial's config (thresholds, folders, proxy budget) and the epochs that
cover its step budget (train.plan_steps)."""

from __future__ import annotations

from omegaconf import OmegaConf

from worldclip.pipelines.tune import trial
from worldclip.platform import storage
from worldclip.platform.config import load_config


def test_trial_config_sets_thresholds_folders_and_budget():
    cfg = load_config(["storage.root=/r", "tune.train_steps=30", "tune.eval_every=10",
                       "train.warmup_steps=2000", "curation.p=0.06"])
    base = OmegaConf.to_container(cfg, resolve=True)
    t = trial.trial_config(base, {"t_en": 12.0, "threshold_mode": "single"}, "/r/tune/trials/x",
                           "/tok")
    assert (t.curation.t_en, t.curation.p, t.curation.threshold_mode) == (12.0, None, "single")
    assert t.curation.balanced_out == t.train.data == "/r/tune/trials/x/data"
    assert t.curation.out == cfg.curation.out  # the shared matches, never a trial's own
    assert (t.train.max_steps, t.train.eval_every, t.train.tokenizer) == (30, 10, "/tok")
    assert t.train.warmup_steps == 3  # a production warm-up would idle the 30-step proxy
    assert trial.trial_config(base, {"p": 0.2}, "/x", "/tok").curation.t_en is None


def test_epochs_cover_the_pair_budget(tmp_path):
    """4 shards of 10 kept pairs, 16 pairs per step: the proxy trains max_steps steps however
    few pairs a threshold keeps (1 worker: 2 steps/epoch; 2 workers: 1 step/epoch each)."""
    for i in range(4):
        (tmp_path / "shards").mkdir(exist_ok=True)
        (tmp_path / "shards" / f"s{i}.tar").write_bytes(b"")
        storage.write_json(str(tmp_path / "stats" / f"s{i}.json"), {"kept": 10})
    common = [f"train.data={tmp_path}", "train.batch_size_per_worker=16", "train.max_steps=7"]
    assert trial.epochs_for_budget(load_config([*common, "train.num_workers=1"])) == 4
    assert trial.epochs_for_budget(load_config([*common, "train.num_workers=2"])) == 7
