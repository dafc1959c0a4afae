"""Eval sets to decontaminate against: curation.decontaminate as benchmark specs, and the
phash of every eval image, cached per set."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from omegaconf import DictConfig, OmegaConf

from worldclip.pipelines.arrowio import parquet_bytes, read_parquet
from worldclip.pipelines.dedup.hashing import hash_table
from worldclip.platform import storage

log = logging.getLogger(__name__)


def eval_specs(c: DictConfig) -> list[dict[str, Any]]:
    """curation.decontaminate entries as benchmark specs (a URL string or {name, type, url})."""
    from worldclip.pipelines.benchmarks import normalize_spec

    items = OmegaConf.to_container(c.decontaminate, resolve=True) if c.decontaminate else []
    return [normalize_spec(x, "curation.decontaminate") for x in items or []]


HASH_BATCH = 1024  # eval images read and hashed at once


class EvalImages(Mapping[str, bytes]):
    """key -> image bytes of an eval set, read on lookup (the report shows a few of them):
    the driver never holds a whole eval set (ImageNet val is 6 GB)."""

    def __init__(self, keys: Sequence[str], images: Sequence[bytes]) -> None:
        self._index = {k: i for i, k in enumerate(keys)}
        self._images = images

    def __getitem__(self, key: str) -> bytes:
        return self._images[self._index[key]]

    def __iter__(self) -> Iterator[str]:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)


def eval_hashes(specs: list[dict[str, Any]], cache_dir: str
                ) -> tuple[pa.Table, dict[str, EvalImages]]:
    """(table set, key, phash of every eval image, a few eval images per set for the report).
    Cached per set under cache_dir (an eval set is read and hashed once)."""
    from worldclip.pipelines.benchmarks import load_images

    parts = []
    samples: dict[str, EvalImages] = {}
    for spec in specs:
        tag = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
        url = storage.join(cache_dir, f"{spec['name']}-{tag}.parquet")
        keys, images = load_images(spec)
        samples[spec["name"]] = EvalImages(keys, images)
        if storage.exists(url):
            t = read_parquet(url)
        else:  # a batch of images in memory at a time (benchmark images are references)
            t = pa.concat_tables([hash_table(keys[i: i + HASH_BATCH],
                                             list(images[i: i + HASH_BATCH]), "phash")
                                  for i in range(0, len(keys), HASH_BATCH)]
                                 or [hash_table([], [], "phash")])
            storage.write_bytes(url, parquet_bytes(t))
        bad = t.column("phash").null_count
        if bad:
            log.warning("eval set %s: %d images do not decode; they cannot be matched",
                        spec["name"], bad)
        parts.append(t.append_column("eval_set", pa.array([spec["name"]] * t.num_rows,
                                                          pa.string())))
    if not parts:
        return pa.table({"key": pa.array([], pa.string()), "phash": pa.array([], pa.uint64()),
                         "eval_set": pa.array([], pa.string())}), samples
    t = pa.concat_tables(parts)
    return t.filter(pc.is_valid(t.column("phash"))), samples
