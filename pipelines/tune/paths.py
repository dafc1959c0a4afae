"""Where a sweep writes (under tune.out): one folder per trial and the files in it.

    <tune.out>/<tune.name>/                  the Tune experiment (Tuner.restore reads it)
    <tune.out>/tokenizer/                    the shared tokenizer (when train.tokenizer is empty)
    <tune.out>/trials/<trial id>/data        the trial's balancing artifact + datacard.json
    <tune.out>/trials/<trial id>/epoch0.json its curated size: the epoch-0 draw, by language
    <tune.out>/trials/<trial id>/proxy       the trial's Ray Train run (final checkpoint)
    <tune.out>/trials/<trial id>/reports.json     its forwarded evals (replayed on restore)
    <tune.out>/trials/<trial id>/placement_groups.json   its train placement groups
    <tune.out>/trials/<trial id>/done.json        its end
"""

from __future__ import annotations

from worldclip.platform import storage


def trial_dir_for(tune_out: str, trial_id: str) -> str:
    return storage.join(tune_out, "trials", trial_id)


def reports_url(tune_out: str, trial_id: str) -> str:
    return storage.join(trial_dir_for(tune_out, trial_id), "reports.json")


def pg_list_url(tune_out: str, trial_id: str) -> str:
    return storage.join(trial_dir_for(tune_out, trial_id), "placement_groups.json")


def done_url(tune_out: str, trial_id: str) -> str:
    return storage.join(trial_dir_for(tune_out, trial_id), "done.json")


def epoch0_url(tune_out: str, trial_id: str) -> str:
    return storage.join(trial_dir_for(tune_out, trial_id), "epoch0.json")
