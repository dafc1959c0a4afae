"""pipelines/train/state.py: a step's and an epoch's accounting, a (re)start, save/load."""

from __future__ import annotations

import pytest

from worldclip.pipelines.train.state import StepTotals, TrainState
from worldclip.platform.accounting import INGEST_DROP_REASONS, AccountingError


def _drops(**by_reason: int) -> list[int]:
    return [by_reason.get(r, 0) for r in INGEST_DROP_REASONS]


def _state(gbs: int = 8) -> TrainState:
    s = TrainState()
    s.begin_run(world=2, micro=4, accum=1, global_batch=gbs, resharded=False, convert_s=0.0,
                started_at=1.0)
    s.begin_epoch()
    return s


def test_a_step_places_every_position_of_the_global_batch():
    s = _state()
    gap = s.finish_step(StepTotals(loss=2.5, dropped=1, trimmed=1, trained=6,
                                   drops=_drops(undecodable_image=1)), lr=1e-3)
    assert gap == 0 and (s.step, s.pos, s.seen_pairs) == (1, 8, 8)
    assert (s.trained_pairs, s.trimmed_pairs, s.dropped_images) == (6, 1, 1)
    assert s.ingest_drops == {"undecodable_image": 1} and s.history == [[1, 2.5, 1e-3]]
    assert s.resizes[-1]["first_step_at"] is not None
    # a short batch: positions no row came for are counted, never hidden
    gap = s.finish_step(StepTotals(loss=2.0, dropped=0, trimmed=0, trained=5, drops=_drops()),
                        lr=1e-3)
    assert gap == 3 and s.missing_rows == 3 and s.pos == 16 and s.last_loss == 2.0


def test_epoch_account_closes_the_identity_and_moves_to_the_next_epoch():
    s = _state()
    for _ in range(2):
        s.finish_step(StepTotals(loss=1.0, dropped=1, trimmed=0, trained=7,
                                 drops=_drops(record_too_large=1)), lr=1e-3)
    assert s.finish_epoch(rows=21, steps=2, total_steps=10)
    (acct,) = s.epoch_accounts
    assert acct == {"epoch": 0, "kept": 21, "trained": 14,
                    "dropped_at_ingest": {"record_too_large": 2}, "trimmed": 0, "missing": 0,
                    "not_reached": 5}
    assert (s.epoch, s.pos, s.epoch_tail) == (1, 0, 5)
    s.begin_epoch()  # the next epoch's account starts from here
    s.finish_step(StepTotals(loss=1.0, dropped=0, trimmed=0, trained=8, drops=_drops()), 1e-3)
    assert not s.finish_epoch(rows=16, steps=2, total_steps=3)  # the run ends inside it
    assert s.epoch_accounts[-1]["trained"] == 8 and s.epoch_accounts[-1]["not_reached"] == 8
    assert s.epoch == 1  # not advanced: the run ended


def test_more_pairs_out_than_in_is_an_error():
    s = _state()
    s.finish_step(StepTotals(loss=1.0, dropped=0, trimmed=0, trained=8, drops=_drops()), 1e-3)
    with pytest.raises(AccountingError):
        s.epoch_account(kept=4)


def test_a_restart_records_where_it_came_from(tmp_path):
    s = _state()
    s.finish_step(StepTotals(loss=1.0, dropped=0, trimmed=0, trained=8, drops=_drops()), 1e-3)
    s.saved_at = 5.0
    s.save(str(tmp_path / "state.json"))
    back = TrainState.load(str(tmp_path / "state.json"))
    assert back == s
    back.begin_run(world=1, micro=4, accum=2, global_batch=8, resharded=True, convert_s=0.1234,
                   started_at=9.0)
    r = back.resizes[-1]
    assert (r["step"], r["world"], r["micro_batch"], r["grad_accum"]) == (1, 1, 4, 2)
    assert (r["from_world"], r["ckpt_saved_at"], r["resharded"], r["convert_s"]) == (
        2, 5.0, True, 0.123)
    assert back.metrics(0.5)["world_size"] == 1 and back.metrics(0.5)["loss"] == 0.5
