"""One epoch of this rank's micro-batches from the curated data (pipelines/ingest.py streams,
pipelines/elastic.py cuts them by the batch plan): a fixed global order, resumed at the
state's data position."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from worldclip.pipelines import elastic
from worldclip.pipelines.ingest import Source, file_row_counts, worker_stream
from worldclip.pipelines.train.config import TrainSettings
from worldclip.pipelines.train.state import TrainState


class EpochStream:
    """The epoch's pairs (`rows`), its optimizer steps (full global batches only) and this
    rank's micro-batches from the state's position on."""

    def __init__(self, source: Source, tokenizer_dir: str, image_size: int, s: TrainSettings,
                 state: TrainState, rank: int, world: int, micro: int, accum: int) -> None:
        gbs = state.global_batch
        self.rows = sum(file_row_counts(source, list(source.files), s.seed, state.epoch))
        self.steps = elastic.steps_in_epoch(self.rows, gbs)
        self._ds = worker_stream(source, tokenizer_dir, image_size, s.seed, state.epoch, rank,
                                 world, start_pos=state.pos, scale_min=s.crop_scale_min,
                                 num_cpus=s.ingest_cpus, global_batch=gbs)
        self._plan = elastic.micro_ranges(state.pos // gbs, self.steps, gbs, world, rank,
                                          micro, accum)

    def micro_batches(self) -> Iterator[dict[str, np.ndarray]]:
        blocks = (self._ds.iter_batches(batch_size=None, batch_format="numpy",
                                        prefetch_batches=2) if self._ds else iter(()))
        return elastic.micro_batches(blocks, self._plan)
