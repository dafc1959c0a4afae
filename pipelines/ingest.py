"""Training stream: curated data -> per-epoch redraw -> decode/augment/tokenize (Ray Data).

Each epoch has a deterministic *plan*: the curated files in a seeded order, dealt round-robin
to the train workers. A worker's stream reads its files (Ray Data tasks), redraws text and
keep-coin for the epoch (online mode; RECIPE.md section 4), shuffles rows within the file
(seeded), then decodes, augments and tokenizes in `map_batches`. Every row carries its raw
position in the worker's sequence, so a checkpoint records exactly how far a worker got and a
resumed run streams the remaining rows of that epoch in the same order.

Why not `get_dataset_shard`'s streaming_split: it deals blocks to whichever worker asks first,
so which rows a worker saw is not reproducible and "resume at the exact data position" cannot
be honoured. The per-worker plan keeps Ray Data's parallel, streaming execution.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from worldclip.pipelines import balancing
from worldclip.pipelines.shards import parse_wds
from worldclip.pipelines.transforms import BadImage, train_transform
from worldclip.platform import storage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Source:
    """A curated dataset: offline shards (fixed sample) or an online index (redrawn)."""

    url: str
    mode: str  # offline | online
    files: tuple[str, ...]

    @classmethod
    def open(cls, url: str) -> Source:
        index = storage.glob(storage.join(url, "index", "*.parquet"))
        shards = storage.glob(storage.join(url, "shards", "*.tar"))
        if index and shards:
            raise ValueError(f"{url}: holds both index/ and shards/; point train.data at one "
                             "curated output")
        if not index and not shards:
            raise FileNotFoundError(f"train.data={url}: no curated data (index/*.parquet or "
                                    "shards/*.tar); run `worldclip curate` first")
        return cls(url, "online" if index else "offline", tuple(index or shards))

    def captions(self, limit: int = 200_000) -> Iterator[str]:
        """Curated captions (for training a tokenizer on them)."""
        n = 0
        for f in self.files:
            for row in read_rows(self.mode, f):
                for t in row["texts"]:
                    yield t
                    n += 1
                    if n >= limit:
                        return


def read_rows(mode: str, url: str) -> list[dict[str, Any]]:
    """All rows of one curated file: key, image, texts, and (online) entry_ids/text_probs."""
    data = storage.read_bytes(url)
    if mode == "online":
        t = pq.read_table(io.BytesIO(data))
        cols = ["key", "image", "texts", "entry_ids", "text_probs"]
        return t.select(cols).to_pylist()
    rows = []
    for r in parse_wds(data, url).records:
        meta = json.loads(r["meta"]) if r["meta"] else {}
        text = meta.get("text") or r["texts"][0]
        rows.append({"key": r["key"], "image": r["image"], "texts": [text]})
    return rows


def redraw(rows: list[dict[str, Any]], mode: str, seed: int, epoch: int
           ) -> list[dict[str, Any]]:
    """Rows of this epoch with the caption to train on (online: redraw text and coin)."""
    if mode == "offline" or not rows:
        return [{"key": r["key"], "image": r["image"], "text": r["texts"][0]} for r in rows]
    chosen, keep = balancing.sample_pairs([r["key"] for r in rows],
                                          [r["entry_ids"] for r in rows],
                                          [r["text_probs"] for r in rows], seed, epoch)
    return [{"key": r["key"], "image": r["image"], "text": r["texts"][int(c)]}
            for r, c, k in zip(rows, chosen, keep, strict=True) if k]


def file_order(files: tuple[str, ...], seed: int, epoch: int) -> list[str]:
    """The epoch's file order (seeded shuffle, identical on every worker)."""
    h = balancing.key_hash([posixpath.basename(f) for f in files])
    u = balancing.uniform(seed, epoch, h, 7)
    return [files[i] for i in np.argsort(u, kind="stable")]


def worker_files(files: tuple[str, ...], seed: int, epoch: int, rank: int, world: int
                 ) -> list[str]:
    return file_order(files, seed, epoch)[rank::world]


def _load_file(item: dict[str, Any], mode: str, seed: int, epoch: int) -> list[dict[str, Any]]:
    """One file -> its rows of the epoch, shuffled (seeded), after `skip`."""
    rows = redraw(read_rows(mode, item["url"]), mode, seed, epoch)
    if rows:
        u = balancing.uniform(seed, epoch, balancing.key_hash([r["key"] for r in rows]), 11)
        rows = [rows[i] for i in np.argsort(u, kind="stable")]
    base = int(item["base"])
    out = []
    for i, r in enumerate(rows):
        if i >= item["skip"]:
            r["pos"] = base + i
            out.append(r)
    return out


@functools.lru_cache(maxsize=2)
def cached_tokenizer(path: str) -> Any:
    """load_tokenizer once per worker process (path: local dir or hub id)."""
    from worldclip.models.tokenizer import load_tokenizer

    return load_tokenizer(path)


def preprocess(batch: dict[str, np.ndarray], tokenizer_dir: str, image_size: int, seed: int,
               epoch: int, scale_min: float = 0.9) -> dict[str, np.ndarray]:
    """decode -> random resized crop (seeded per sample) -> normalise; tokenize.

    Undecodable images and decompression bombs are dropped; the count rides on the next good
    row's `dropped` column so it reaches the trainer's accounting.
    """
    from worldclip.models.tokenizer import tokenize

    pixels, texts, pos, dropped = [], [], [], []
    pending = 0
    hashes = balancing.key_hash([str(k) for k in batch["key"]])
    seeds = (balancing.uniform(seed, epoch, hashes, 13) * 2**63).astype(np.int64)
    for i in range(len(batch["key"])):
        try:
            rng = np.random.default_rng(int(seeds[i]))
            pixels.append(train_transform(bytes(batch["image"][i]), image_size, rng, scale_min))
        except BadImage as e:
            log.warning("dropped %s: %s", batch["key"][i], e)
            pending += 1
            continue
        texts.append(str(batch["text"][i]))
        pos.append(int(batch["pos"][i]))
        dropped.append(pending)
        pending = 0
    if texts:
        tok = tokenize(cached_tokenizer(tokenizer_dir), texts, return_tensors="np")
    else:
        tok = {"input_ids": np.zeros((0, 77), np.int64),
               "attention_mask": np.zeros((0, 77), np.int64)}
    return {"pixel_values": np.stack(pixels) if texts else
            np.zeros((0, 3, image_size, image_size), np.float32),
            "input_ids": tok["input_ids"], "attention_mask": tok["attention_mask"],
            "pos": np.asarray(pos, np.int64), "dropped": np.asarray(dropped, np.int64)}


def file_row_counts(source: Source, files: list[str], seed: int, epoch: int) -> list[int]:
    """Rows each file yields this epoch (cheap: no image decoding; online reads no images)."""
    counts = []
    for f in files:
        if source.mode == "offline":  # the curation's per-shard stats hold the kept count
            name = posixpath.basename(f)[: -len(".tar")]
            counts.append(int(storage.read_json(storage.join(source.url, "stats",
                                                             f"{name}.json"))["kept"]))
        else:
            t = pq.read_table(io.BytesIO(storage.read_bytes(f)),
                              columns=["key", "entry_ids", "text_probs"])
            _, keep = balancing.sample_pairs(t.column("key").to_pylist(),
                                             t.column("entry_ids").to_pylist(),
                                             t.column("text_probs").to_pylist(), seed, epoch)
            counts.append(int(keep.sum()))
    return counts


def worker_stream(source: Source, tokenizer_dir: str, image_size: int, seed: int, epoch: int,
                  rank: int, world: int, start_pos: int = 0, scale_min: float = 0.9,
                  num_cpus: float = 0.5) -> Any:
    """This worker's Ray Data stream for the epoch, starting at raw position start_pos."""
    import ray

    files = worker_files(source.files, seed, epoch, rank, world)
    counts = file_row_counts(source, files, seed, epoch)
    items, base = [], 0
    for f, n in zip(files, counts, strict=True):
        if start_pos < base + n:
            items.append({"url": f, "skip": max(0, start_pos - base), "base": base})
        base += n
    if not items:
        return None
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    # One task per file does everything (read, redraw, shuffle, decode, augment, tokenize):
    # no intermediate blocks of raw image bytes. Fractional CPUs so every train worker's
    # stream runs beside the workers on a small node.
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    return ds.map_batches(_file_batch, batch_size=1, batch_format="numpy", num_cpus=num_cpus,
                          fn_kwargs={"mode": source.mode, "seed": seed, "epoch": epoch,
                                     "tokenizer_dir": tokenizer_dir, "image_size": image_size,
                                     "scale_min": scale_min})


def _file_batch(items: Any, mode: str, seed: int, epoch: int, tokenizer_dir: str,
                image_size: int, scale_min: float) -> dict[str, np.ndarray]:
    """One file item -> its preprocessed rows of the epoch (in order)."""
    item = {k: v[0] for k, v in items.items()}
    rows = _load_file(item, mode, seed, epoch)
    batch = {k: np.asarray([r[k] for r in rows], dtype=object)
             for k in ("key", "image", "text")}
    batch["pos"] = np.asarray([r["pos"] for r in rows], dtype=np.int64)
    return preprocess(batch, tokenizer_dir, image_size, seed, epoch, scale_min)
