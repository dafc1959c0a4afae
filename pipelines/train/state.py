"""TrainState: what a checkpoint restores besides the engine -- where training and the data
stand, and every kept pair accounted for (platform/accounting.py)."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from worldclip.platform.accounting import INGEST_DROP_REASONS, ingest_epoch_account


@dataclass
class StepTotals:
    """One optimizer step summed over ranks: its loss (mean of the ranks' local losses) and
    where the global batch's positions went."""

    loss: float
    dropped: int  # dropped at ingest, all reasons
    trimmed: int  # cut to the shortest rank's micro-batch
    trained: int
    drops: Sequence[int]  # dropped at ingest per accounting.INGEST_DROP_REASONS


@dataclass
class TrainState:
    """What a checkpoint must restore besides the engine: where training and data stand."""

    step: int = 0
    epoch: int = 0
    pos: int = 0  # global position in the epoch's pair order (a multiple of global_batch)
    seen_pairs: int = 0
    dropped_images: int = 0
    # elastic training (pipelines/elastic.py): the world this state was written by, its batch
    # plan, the pairs of finished epochs' tails (no full global batch), micro-batch rows
    # trimmed to the smallest rank's (after undecodable images), one entry per (re)start
    world_size: int = 0
    micro_batch: int = 0
    grad_accum: int = 0
    global_batch: int = 0
    epoch_tail: int = 0
    trimmed_pairs: int = 0
    saved_at: float = 0.0
    resizes: list[dict[str, Any]] = field(default_factory=list)
    keys: list[int] = field(default_factory=list)  # train.record_keys: key ids trained on
    # every kept pair accounted for (platform/accounting.py ingest_epoch_account): pairs
    # trained on, dropped at ingest by reason, positions no row came for; per finished epoch
    # one account; the counters at the current epoch's start
    trained_pairs: int = 0
    ingest_drops: dict[str, int] = field(default_factory=dict)
    missing_rows: int = 0
    epoch_accounts: list[dict[str, Any]] = field(default_factory=list)
    epoch_start: dict[str, Any] = field(default_factory=dict)
    history: list[list[float]] = field(default_factory=list)  # [step, loss, lr]
    evals: list[list[float]] = field(default_factory=list)  # [step, zero-shot top-1] (rank 0)

    def save(self, path: str) -> None:
        with open(path, "w") as f:
            json.dump(asdict(self), f)

    @classmethod
    def load(cls, path: str) -> TrainState:
        with open(path) as f:
            return cls(**json.load(f))

    @property
    def last_loss(self) -> float:
        return self.history[-1][1] if self.history else 0.0

    def begin_run(self, world: int, micro: int, accum: int, global_batch: int,
                  resharded: bool, convert_s: float, started_at: float) -> None:
        """A (re)start on `world` workers: its batch plan, and one `resizes` entry (from which
        world and checkpoint it came; first_step_at is set by the first step)."""
        from_world, from_saved_at = self.world_size or None, self.saved_at or None
        self.world_size, self.micro_batch, self.grad_accum = world, micro, accum
        self.global_batch = global_batch
        self.resizes.append({"step": self.step, "world": world, "micro_batch": micro,
                             "grad_accum": accum, "resharded": resharded,
                             "convert_s": round(convert_s, 3), "started_at": started_at,
                             "from_world": from_world, "ckpt_saved_at": from_saved_at,
                             "first_step_at": None})

    def begin_epoch(self) -> None:
        """Counters at the epoch's start (kept when resuming mid-epoch)."""
        if self.epoch_start.get("epoch") != self.epoch:
            self.epoch_start = self._counters()

    def finish_step(self, t: StepTotals, lr: float) -> int:
        """Account one optimizer step of the global batch; the positions no row came for."""
        gbs = self.global_batch
        self.dropped_images += t.dropped
        self.trimmed_pairs += t.trimmed
        self.trained_pairs += t.trained
        for r, k in zip(INGEST_DROP_REASONS, t.drops, strict=True):
            if k:
                self.ingest_drops[r] = self.ingest_drops.get(r, 0) + int(k)
        gap = gbs - t.dropped - t.trimmed - t.trained
        self.missing_rows += gap
        self.step += 1
        self.pos = (self.pos // gbs + 1) * gbs
        self.seen_pairs += gbs
        self.history.append([self.step, t.loss, lr])
        if self.resizes and self.resizes[-1]["first_step_at"] is None:
            self.resizes[-1]["first_step_at"] = time.time()
        return gap

    def finish_epoch(self, rows: int, steps: int, total_steps: int) -> bool:
        """Close the epoch's account; False when the run ends inside it (at total_steps)."""
        self.epoch_accounts.append(self.epoch_account(rows))
        if self.step >= total_steps:
            return False
        self.epoch_tail += rows - steps * self.global_batch  # accounted, not trained on
        self.epoch += 1
        self.pos = 0
        return True

    def epoch_account(self, kept: int) -> dict[str, Any]:
        """The current epoch's account since its start (platform/accounting.py)."""
        s = self.epoch_start or self._counters()
        dropped = {r: n - s["dropped"].get(r, 0) for r, n in self.ingest_drops.items()}
        return ingest_epoch_account(self.epoch, kept, (self.step - s["step"]) * self.global_batch,
                                    self.trained_pairs - s["trained"], dropped,
                                    self.trimmed_pairs - s["trimmed"])

    def _counters(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "step": self.step, "trained": self.trained_pairs,
                "dropped": dict(self.ingest_drops), "trimmed": self.trimmed_pairs}

    def metrics(self, loss: float) -> dict[str, Any]:
        """What a checkpoint report carries to Ray Train (and Tune)."""
        return {"step": self.step, "epoch": self.epoch, "loss": loss,
                "seen_pairs": self.seen_pairs, "dropped_images": self.dropped_images,
                "trained_pairs": self.trained_pairs, "missing_rows": self.missing_rows,
                **{f"dropped_at_ingest/{r}": n for r, n in self.ingest_drops.items()},
                "world_size": self.world_size, "micro_batch": self.micro_batch,
                "grad_accum": self.grad_accum, "global_batch": self.global_batch}
