"""One optimizer step from `accum` micro-batches: the contrastive forward/backward on rows
every rank has, and the step's totals summed over ranks (platform/accounting.py)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from worldclip.models.loss import ClipLoss
from worldclip.pipelines.ingest import split_dropped
from worldclip.pipelines.train.state import StepTotals
from worldclip.platform.accounting import INGEST_DROP_REASONS


class StepRunner:
    """Feeds micro-batches to the engine; `micro_batch` returns the step's StepTotals at a
    gradient accumulation boundary, else None."""

    def __init__(self, engine: Any, device: torch.device, bf16: bool, world: int, accum: int,
                 keys: list[int] | None = None) -> None:
        self.engine, self.device, self.bf16 = engine, device, bf16
        self.world, self.accum = world, accum
        self.keys = keys  # train.record_keys: the key ids trained on are appended here
        self.loss_fn = ClipLoss(local_loss=True, gather_with_grad=True)
        self.reset()

    def reset(self) -> None:
        """Start a step afresh (at every epoch's start, as the epoch's first step)."""
        self.loss_sum, self.dropped, self.trimmed, self.trained = 0.0, 0, 0, 0
        self.why = np.zeros(len(INGEST_DROP_REASONS), np.int64)

    def micro_batch(self, mb: dict[str, np.ndarray], epoch: int, step: int
                    ) -> StepTotals | None:
        # rows of pairs dropped at ingest (undecodable, over the read limits) counted by
        # reason, not trained on (docs/operations.md)
        mb, mb_why = split_dropped(mb)
        self.why += mb_why
        self.dropped += int(mb_why.sum())
        # every rank trains on the same number of rows (the contrastive all-gather needs
        # it): a micro-batch short of an undecodable image trims the others to its size
        have = len(mb.get("pos", ()))
        n_t = torch.tensor([have], dtype=torch.int64)
        dist.all_reduce(n_t, op=dist.ReduceOp.MIN)
        n = int(n_t)
        if n == 0:
            raise RuntimeError(f"epoch {epoch} step {step + 1}: a micro-batch has no decodable "
                               "image on some rank; check the curated shards (the dropped "
                               "images are logged)")
        self.trimmed += have - n
        self.trained += n
        if self.keys is not None:
            self.keys.extend(int(k) for k in mb["key_id"][:n])
        pixels = torch.from_numpy(mb["pixel_values"][:n]).to(self.device)
        if self.bf16:
            pixels = pixels.to(torch.bfloat16)
        img, txt, scale = self.engine(
            pixels, torch.from_numpy(mb["input_ids"][:n]).to(self.device),
            torch.from_numpy(mb["attention_mask"][:n]).to(self.device))
        loss = self.loss_fn(img, txt, scale)
        self.engine.backward(loss)
        boundary = self.engine.is_gradient_accumulation_boundary()
        self.engine.step()
        self.loss_sum += float(loss.detach().float())
        return self._finish() if boundary else None

    def _finish(self) -> StepTotals:
        """The step's loss over the whole global batch (the mean of the ranks' local losses
        over equal rows), and its accounting summed over ranks."""
        agg = torch.tensor([self.loss_sum / self.accum, self.dropped, self.trimmed,
                            self.trained, *self.why.tolist()], dtype=torch.float64)
        dist.all_reduce(agg)
        self.reset()
        return StepTotals(loss=float(agg[0]) / self.world, dropped=int(agg[1]),
                          trimmed=int(agg[2]), trained=int(agg[3]),
                          drops=[int(k) for k in agg[4:].tolist()])
