"""The per-epoch draw of an online dataset by reference (docs/curation.md, "Balancing
artifact"): P per text on the fly from the balancing artifact, the same sampling function as
offline pass 2 (epoch 0 equals the offline sample), then the kept pairs' images read by
reference from the raw shards."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from worldclip.pipelines import dedup, refs
from worldclip.pipelines.arrowio import read_parquet
from worldclip.pipelines.curate.sample import sample_shard

if TYPE_CHECKING:
    from worldclip.pipelines.ingest import Source


def draw_summary(source: Source, epoch: int = 0) -> dict[str, Any]:
    """An online-by-reference dataset's draw of one epoch, counted without reading an image:
    kept pairs, in total and by the language of their first caption (as the data card's
    `languages`). What a Tune trial reports as its curated size."""
    b = source.balance
    langs: Counter = Counter()
    for f in source.files:
        shard = source.shard_of(f)
        table, _ = dedup.apply_removed(read_parquet(f), b.curation_out, shard["id"])
        _, keep, _ = sample_shard(table, b.probs(), b.seed, epoch)
        firsts = table.column("langs").to_pylist()
        langs.update(firsts[i][0] for i in np.flatnonzero(keep))
    return {"epoch": epoch, "kept": sum(langs.values()), "languages": dict(langs)}


def draw_by_reference(source: Source, file: str, seed: int, epoch: int,
                      images: bool = True) -> list[dict[str, Any]]:
    """The epoch's draw of one match-index file: P per text on the fly from the balancing
    artifact's entry probabilities, one text and a keep-coin per pair (the same function and
    randomness as offline pass 2, so epoch 0 equals the offline sample), then the kept pairs'
    images read by reference from the raw shard (pipelines/refs.py; a changed shard stops
    the stream with StaleReference). images=False: keys and texts only (row counts)."""
    b = source.balance
    shard = source.shard_of(file)
    table = read_parquet(file)
    table, _ = dedup.apply_removed(table, b.curation_out, shard["id"])
    chosen, keep, _ = sample_shard(table, b.probs(), b.seed, epoch)
    idx = np.flatnonzero(keep)
    kept = table.take(pa.array(idx, pa.int64()))
    lengths = kept.column("ref_length").to_numpy(zero_copy_only=False)
    too_big = np.nan_to_num(lengths.astype(np.float64)) > source.limits.max_record_bytes
    imgs: list[bytes | None] = [None] * len(idx)
    if images and len(idx):
        readable = kept.filter(pa.array(~too_big))
        it = iter(refs.read_images(shard["shard"], shard["kind"], readable,
                                   shard.get("identity"), shard.get("image_column", "")))
        imgs = [None if big else next(it) for big in too_big]
    texts = kept.column("texts").to_pylist()
    return [{"key": k, "image": img, "text": texts[r][int(chosen[j])],
             "drop": "record_too_large" if too_big[r] else ""}
            for r, (j, k, img) in enumerate(zip(idx.tolist(), kept.column("key").to_pylist(),
                                                imgs, strict=True))]
