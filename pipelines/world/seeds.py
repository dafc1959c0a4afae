"""Seed streams: every random draw of the world comes from SeedSequence([seed, stream, ...]).

One stream per purpose, so that e.g. more eval images never shift the training shards, and a
shard depends only on (seed, shard index): shards can be written in any order, by any worker.
"""

from __future__ import annotations

import random

import numpy as np

STREAM_RANKS, STREAM_SIGNATURES, STREAM_SHARD, STREAM_EVAL = 1, 2, 3, 4


def seeded(seed: int, stream: int, index: int) -> tuple[np.random.Generator, random.Random]:
    """A numpy generator and a python Random, both from SeedSequence([seed, stream, index])."""
    ss = np.random.SeedSequence([seed, stream, index])
    return np.random.default_rng(ss), random.Random(int(ss.generate_state(2, np.uint64)[0]))
