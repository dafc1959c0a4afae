"""Training stream: curated data -> per-epoch redraw -> decode/augment/tokenize (Ray Data).

Each epoch has a deterministic *plan*: the curated files in a seeded order, dealt round-robin
to the train workers. A worker's stream reads its files (Ray Data tasks), redraws text and
keep-coin for the epoch (online mode; docs/curation.md §4), shuffles rows within the file
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

from worldclip.models.presets import CONTEXT_LENGTH
from worldclip.pipelines import balancing, draw, layout
from worldclip.pipelines.arrowio import read_parquet
from worldclip.pipelines.curate import balance
from worldclip.pipelines.limits import DEFAULT_LIMITS, ReadLimits
from worldclip.pipelines.shards import ShardResult, bounded_row_groups, open_parquet, parse_wds
from worldclip.pipelines.transforms import BadImage, train_transform
from worldclip.platform import storage
from worldclip.platform.accounting import INGEST_DROP_REASONS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Source:
    """A curated dataset: offline shards (a fixed sample), or online -- redrawn every epoch --
    either by reference (a balancing artifact over the match index: the images are read from
    the raw shards) or a text-first index whose images `join` filled in."""

    url: str
    mode: str  # offline | online
    files: tuple[str, ...]
    # the curation's read limits, from its data card: a kept pair is re-read under the same
    # limits it passed (pipelines/limits.py)
    limits: ReadLimits = DEFAULT_LIMITS
    balance: balance.Balance | None = None  # online by reference

    @classmethod
    def open(cls, url: str) -> Source:
        b = balance.read(url)
        if b is not None:
            return cls(url, "online", tuple(layout.match_file(b.curation_out, s["id"])
                                            for s in b.shards),
                       ReadLimits.from_card({"limits": b.limits}), b)
        index = storage.glob(storage.join(url, "index", "*.parquet"))
        shards = storage.glob(storage.join(url, "shards", "*.tar"))
        if index and shards:
            raise ValueError(f"{url}: holds both index/ and shards/; point train.data at one "
                             "curated output")
        if not index and not shards:
            raise FileNotFoundError(f"train.data={url}: no curated data (balance.json, "
                                    "index/*.parquet or shards/*.tar); run `worldclip curate` "
                                    "first")
        card_url = storage.join(url, "datacard.json")
        card = storage.read_json(card_url) if storage.exists(card_url) else None
        return cls(url, "online" if index else "offline", tuple(index or shards),
                   ReadLimits.from_card(card))

    @functools.cached_property
    def _shards(self) -> dict[str, dict[str, Any]]:
        return {s["id"]: s for s in (self.balance.shards if self.balance else ())}

    def shard_of(self, file: str) -> dict[str, Any]:
        """The balancing artifact's record (raw url, kind, identity) of a match-index file."""
        return self._shards[posixpath.basename(file)[: -len(".parquet")]]

    def captions(self, limit: int = 200_000) -> Iterator[str]:
        """Curated captions (for training a tokenizer on them)."""
        n = 0
        for f in self.files:
            if self.balance is not None:  # the match index: texts only, no image read
                texts = (t for row in read_parquet(f, ["texts"]).column("texts").to_pylist()
                         for t in row)
            else:
                texts = (t for row in read_rows(self.mode, f, self.limits)
                         if not row.get("drop") for t in row["texts"])
            for t in texts:
                yield t
                n += 1
                if n >= limit:
                    return


def read_rows(mode: str, url: str, limits: ReadLimits = DEFAULT_LIMITS
              ) -> list[dict[str, Any]]:
    """All rows of one curated file: key, image, texts, and (online) entry_ids/text_probs.

    Read under the curation's limits. A pair that cannot be read stays in the list as a row
    with `drop` = its reason (accounting.INGEST_DROP_REASONS) and no image: the file keeps the
    row count its stats promise (positions stay aligned) and the trainer counts the pair as
    dropped at ingest instead of losing it."""
    data = storage.read_bytes(url)
    if mode == "online":
        return _online_rows(data, url, limits)
    res = parse_wds(data, url, limits)
    rows = []
    for r in res.records:
        # the caption drawn at curation: KEY.txt (json "text" in shards written before it)
        meta = json.loads(r["meta"]) if r["meta"] else {}
        text = r.get("caption") or meta.get("text") or r["texts"][0]
        rows.append({"key": r["key"], "image": r["image"], "texts": [text], "drop": ""})
    name = posixpath.basename(url)
    for reason, n in sorted(res.drops.items()):
        why = reason if reason in INGEST_DROP_REASONS else "corrupt_record"
        rows += [{"key": f"{name}#{reason}-{j}", "image": None, "texts": [""], "drop": why}
                 for j in range(n)]
    for e in res.errors:
        log.warning("ingest: %s", e)
    return rows


def _online_rows(data: bytes, url: str, limits: ReadLimits) -> list[dict[str, Any]]:
    """An online index file: small columns whole, images row group by row group within the
    shard budget; over-limit rows keep their sampling columns (the epoch's keep-coin must see
    every row) and get a `drop` reason."""
    # the sampling columns are small (curation wrote them); only images need the budget
    rows = pq.ParquetFile(io.BytesIO(data)).read(
        columns=["key", "texts", "entry_ids", "text_probs"]).to_pylist()
    pf = open_parquet(data)
    for r in rows:
        r["image"], r["drop"] = None, ""
    refused: dict[int, str] = {}
    res = ShardResult()
    for idx, table in bounded_row_groups(pf, url, res, limits, refused):
        for i, img in zip(idx.tolist(), table.column("image").to_pylist(), strict=True):
            rows[i]["image"] = img
    for i, why in refused.items():
        rows[i]["drop"] = why if why in INGEST_DROP_REASONS else "corrupt_record"
    for e in res.errors:
        log.warning("ingest: %s", e)
    return rows


def redraw(rows: list[dict[str, Any]], mode: str, seed: int, epoch: int
           ) -> list[dict[str, Any]]:
    """Rows of this epoch with the caption to train on (online: redraw text and coin)."""
    if mode == "offline" or not rows:
        return [{"key": r["key"], "image": r["image"], "text": r["texts"][0],
                 "drop": r.get("drop", "")} for r in rows]
    chosen, keep = balancing.sample_pairs([r["key"] for r in rows],
                                          [r["entry_ids"] for r in rows],
                                          [r["text_probs"] for r in rows], seed, epoch)
    return [{"key": r["key"], "image": r["image"], "text": r["texts"][int(c)],
             "drop": r.get("drop", "")}
            for r, c, k in zip(rows, chosen, keep, strict=True) if k]


def file_order(files: tuple[str, ...], seed: int, epoch: int) -> list[str]:
    """The epoch's file order (seeded shuffle, identical on every worker), keyed by the
    files' portable names (no URL hash: the same order wherever the pool and the curation
    live), a name that repeats (x.tar in two folders) numbered in input order."""
    seen: dict[str, int] = {}
    names = []
    for f in files:
        n = layout.portable_name(f)
        k = seen[n] = seen.get(n, -1) + 1
        names.append(f"{n}#{k}" if k else n)
    h = balancing.key_hash(names)
    u = balancing.uniform(seed, epoch, h, 7)
    return [files[i] for i in np.argsort(u, kind="stable")]


def worker_files(files: tuple[str, ...], seed: int, epoch: int, rank: int, world: int
                 ) -> list[str]:
    return file_order(files, seed, epoch)[rank::world]


def _load_file(item: dict[str, Any], mode: str, seed: int, epoch: int,
               limits: ReadLimits = DEFAULT_LIMITS, source: Source | None = None
               ) -> list[dict[str, Any]]:
    """One file -> its rows of the epoch, shuffled (seeded), after `skip`."""
    if source is not None and source.balance is not None:
        rows = draw.draw_by_reference(source, item["url"], seed, epoch)
    else:
        rows = redraw(read_rows(mode, item["url"], limits), mode, seed, epoch)
    if rows:
        u = balancing.uniform(seed, epoch, balancing.key_hash([r["key"] for r in rows]), 11)
        rows = [rows[i] for i in np.argsort(u, kind="stable")]
    base = int(item["base"])
    pos = base + np.arange(len(rows), dtype=np.int64)
    # this rank's slice of the global order (pipelines/elastic.py): from the resume position
    # to the epoch's last full global batch, the positions rank_of assigns to this rank
    mine = pos >= base + int(item["skip"])
    if item.get("gb"):
        from worldclip.pipelines.elastic import rank_of

        mine &= (pos < int(item["end"])) & (rank_of(pos, int(item["gb"]), int(item["world"]))
                                            == int(item["rank"]))
    out = []
    for i in np.flatnonzero(mine):
        rows[i]["pos"] = int(pos[i])
        out.append(rows[i])
    return out


@functools.lru_cache(maxsize=2)
def cached_tokenizer(path: str) -> Any:
    """load_tokenizer once per worker process (path: local dir or hub id)."""
    from worldclip.models.tokenizer import load_tokenizer

    return load_tokenizer(path)


def preprocess(batch: dict[str, np.ndarray], tokenizer_dir: str, image_size: int, seed: int,
               epoch: int, scale_min: float = 0.9) -> dict[str, np.ndarray]:
    """decode -> random resized crop (seeded per sample) -> normalise; tokenize.

    A pair that cannot be used (undecodable image or decompression bomb, or a `drop` reason
    from the read) stays in the output as a row with `drop` = 1 + its index in
    accounting.INGEST_DROP_REASONS (0: a good row), zero pixels and its position: every
    position reaches the trainer, which counts dropped rows by reason and trains on the rest
    (`split_dropped`). `dropped` (1 for a dropped row) is kept for older readers.
    """
    from worldclip.models.tokenizer import tokenize
    from worldclip.pipelines.elastic import key_ids

    n = len(batch["key"])
    pixels = np.zeros((n, 3, image_size, image_size), np.float32)
    drop = np.zeros(n, np.int64)
    reasons = batch.get("drop")
    hashes = balancing.key_hash([str(k) for k in batch["key"]])
    seeds = (balancing.uniform(seed, epoch, hashes, 13) * 2**63).astype(np.int64)
    for i in range(n):
        why = str(reasons[i]) if reasons is not None and reasons[i] else ""
        if not why and batch["image"][i] is None:
            why = "corrupt_record"
        if not why:
            try:
                rng = np.random.default_rng(int(seeds[i]))
                pixels[i] = train_transform(bytes(batch["image"][i]), image_size, rng,
                                            scale_min)
            except BadImage as e:
                why = "undecodable_image"
                log.warning("dropped %s: %s", batch["key"][i], e)
        if why:
            drop[i] = INGEST_DROP_REASONS.index(why) + 1
    texts = [str(t) if not d else "" for t, d in zip(batch["text"], drop, strict=True)]
    if n:
        tok = tokenize(cached_tokenizer(tokenizer_dir), texts, return_tensors="np")
    else:
        tok = {"input_ids": np.zeros((0, CONTEXT_LENGTH), np.int64),
               "attention_mask": np.zeros((0, CONTEXT_LENGTH), np.int64)}
    return {"pixel_values": pixels, "input_ids": tok["input_ids"],
            "attention_mask": tok["attention_mask"],
            "pos": np.asarray(batch["pos"], np.int64), "dropped": (drop > 0).astype(np.int64),
            "drop": drop, "key_id": key_ids([str(k) for k in batch["key"]])}


def split_dropped(mb: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """(the rows to train on, pairs dropped at ingest per accounting.INGEST_DROP_REASONS)."""
    if "drop" not in mb or not len(mb["drop"]):
        return mb, np.zeros(len(INGEST_DROP_REASONS), np.int64)
    code = np.asarray(mb["drop"], np.int64)
    counts = np.bincount(code, minlength=len(INGEST_DROP_REASONS) + 1)[1:]
    keep = code == 0
    return ({k: v[keep] for k, v in mb.items()} if not keep.all() else mb), counts


def file_row_counts(source: Source, files: list[str], seed: int, epoch: int) -> list[int]:
    """Rows each file yields this epoch (cheap: no image decoding; online reads no images)."""
    counts = []
    offline = offline_file_counts(source) if source.mode == "offline" else {}
    for f in files:
        if source.mode == "offline":  # the curation's per-shard stats hold the kept count
            counts.append(offline[posixpath.basename(f)])
        elif source.balance is not None:
            counts.append(len(draw.draw_by_reference(source, f, seed, epoch, images=False)))
        else:
            t = pq.read_table(io.BytesIO(storage.read_bytes(f)),
                              columns=["key", "entry_ids", "text_probs"])
            _, keep = balancing.sample_pairs(t.column("key").to_pylist(),
                                             t.column("entry_ids").to_pylist(),
                                             t.column("text_probs").to_pylist(), seed, epoch)
            counts.append(int(keep.sum()))
    return counts


def offline_file_counts(source: Source) -> dict[str, int]:
    """Curated tar name -> pairs, from the per-input-shard stats: `files` lists the tars an
    input shard became (several past curation.pairs/bytes_per_output_shard); stats written
    before that name one tar, <shard>.tar, holding `kept` pairs."""
    out: dict[str, int] = {}
    for u in storage.glob(storage.join(source.url, "stats", "*.json")):
        s = storage.read_json(u)
        files = s.get("files")
        out.update({str(k): int(v) for k, v in files.items()} if files is not None
                   else {f"{posixpath.basename(u)[: -len('.json')]}.tar": int(s["kept"])})
    return out


def worker_stream(source: Source, tokenizer_dir: str, image_size: int, seed: int, epoch: int,
                  rank: int, world: int, start_pos: int = 0, scale_min: float = 0.9,
                  num_cpus: float = 0.5, global_batch: int | None = None) -> Any:
    """This worker's Ray Data stream for the epoch, starting at position start_pos.

    global_batch=None: the worker's own files (dealt round-robin), positions counted in the
    worker's sequence. global_batch=G: the epoch's global order (every file in file_order),
    of which this rank takes its slice of each full global batch (pipelines/elastic.py);
    positions are global, so a checkpoint's position means the same at any world size."""
    import ray

    items, base = [], 0
    if global_batch:
        from worldclip.pipelines.elastic import rank_of

        files = file_order(source.files, seed, epoch)
        counts = file_row_counts(source, files, seed, epoch)
        end = sum(counts) // global_batch * global_batch  # the tail is no full step
        for f, n in zip(files, counts, strict=True):
            lo, hi = max(start_pos, base), min(base + n, end)
            if lo < hi and (hi - lo >= global_batch or np.any(
                    rank_of(np.arange(lo, hi), global_batch, world) == rank)):
                items.append({"url": f, "skip": lo - base, "base": base, "gb": global_batch,
                              "world": world, "rank": rank, "end": end})
            base += n
    else:
        files = worker_files(source.files, seed, epoch, rank, world)
        counts = file_row_counts(source, files, seed, epoch)
        for f, n in zip(files, counts, strict=True):
            if start_pos < base + n:
                items.append({"url": f, "skip": max(0, start_pos - base), "base": base,
                              "gb": 0, "world": world, "rank": rank, "end": 0})
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
                                     "scale_min": scale_min, "limits": source.limits,
                                     "source": source})


def _file_batch(items: Any, mode: str, seed: int, epoch: int, tokenizer_dir: str,
                image_size: int, scale_min: float, limits: ReadLimits = DEFAULT_LIMITS,
                source: Source | None = None) -> dict[str, np.ndarray]:
    """One file item -> its preprocessed rows of the epoch (in order)."""
    item = {k: v[0] for k, v in items.items()}
    rows = _load_file(item, mode, seed, epoch, limits, source)
    batch = {k: np.asarray([r[k] for r in rows], dtype=object)
             for k in ("key", "image", "text", "drop")}
    batch["pos"] = np.asarray([r["pos"] for r in rows], dtype=np.int64)
    return preprocess(batch, tokenizer_dir, image_size, seed, epoch, scale_min)
