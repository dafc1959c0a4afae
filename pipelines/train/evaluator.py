"""In-training zero-shot evaluation on eval.data (train.eval_every): reported to Ray Train for
Tune's ASHA and kept in the run's eval history. The eval set is loaded once per worker and
kept on the Evaluator (not in a module global)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import ray.train
import torch

from worldclip.pipelines.evaluate.evalsets import EvalSet, load_eval_set
from worldclip.pipelines.evaluate.scoring import evaluate_model
from worldclip.pipelines.train.state import TrainState

log = logging.getLogger(__name__)


class Evaluator:
    """Under ZeRO-3 every rank runs the same eval forward passes, so the sharded parameters
    are fetched collectively as in training; below stage 3 rank 0 alone evaluates its full
    replica. Only rank 0's metrics are reported."""

    def __init__(self, eval_data: str, tokenizer: Callable[[], Any], every: int,
                 zero_stage: int, rank: int) -> None:
        self.eval_data, self.tokenizer, self.every = eval_data, tokenizer, every
        self.rank = rank
        self.participates = rank == 0 or zero_stage == 3
        self._eval_set: EvalSet | None = None

    def due(self, step: int) -> bool:
        return bool(self.every) and step % self.every == 0

    @property
    def eval_set(self) -> EvalSet:
        if self._eval_set is None:
            self._eval_set = load_eval_set(self.eval_data)
        return self._eval_set

    def score(self, model: torch.nn.Module) -> dict[str, Any] | None:
        """evaluate_model's metrics on this rank (None where it takes no part); the model is
        put back in its train/eval mode."""
        if not self.participates:
            return None
        was_training = model.training
        try:
            return evaluate_model(model, self.tokenizer(), self.eval_set)
        finally:
            model.train(was_training)

    def report(self, model: torch.nn.Module, state: TrainState, loss: float) -> None:
        """All ranks: score, and report (rank 0 adds zero-shot top-1 and i2t R@1)."""
        metrics: dict[str, Any] = {"step": state.step, "epoch": state.epoch, "loss": loss,
                                   "seen_pairs": state.seen_pairs}
        m = self.score(model)
        if self.rank == 0 and m is not None:
            metrics["zero_shot_top1"] = m["overall"]["top1"]
            metrics["i2t_r@1"] = m["overall"].get("i2t_r@1")
            state.evals.append([state.step, metrics["zero_shot_top1"]])
            log.info("step %d eval: zero-shot top-1 %.4f", state.step, metrics["zero_shot_top1"])
        ray.train.report(metrics)
