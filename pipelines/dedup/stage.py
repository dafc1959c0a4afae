"""The Ray wiring of dedup: hash shards matched without hash columns (Ray Data tasks), compare
phashes with the eval sets (tasks), resolve exact duplicates globally (hash-partitioned
map/reduce), write the removed rows and their counts (tasks). Steps: the package docstring."""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
import time
from collections import Counter, defaultdict
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from omegaconf import DictConfig

from worldclip.pipelines import layout, report
from worldclip.pipelines.arrowio import parquet_bytes, read_parquet
from worldclip.pipelines.dedup.evalsets import eval_hashes, eval_specs
from worldclip.pipelines.dedup.hashing import exact_duplicates, hamming_matches, removed_counts
from worldclip.pipelines.dedup.hooks import (
    hash_columns,
    hash_url,
    matched_images,
    write_hash_columns,
)
from worldclip.pipelines.dedup.report import thumbnail_grid
from worldclip.pipelines.dedup.tables import HIT_SCHEMA, REMOVED_SCHEMA
from worldclip.platform import owned, storage
from worldclip.platform.execution import ItemWorker, chunked, map_items, submit_tasks
from worldclip.platform.ranges import identity

log = logging.getLogger(__name__)


class HashWorker(ItemWorker):
    """One item = one shard id whose hash columns are missing (a shard matched before dedup
    was on, or before eval sets were listed): reads its images by reference once and writes
    the missing <id>.<column>.parquet files (resumable: the files mark it)."""

    def __init__(self, out: str, columns: tuple[str, ...]) -> None:
        self.out = out
        self.columns = columns

    def process(self, item: dict[str, Any]) -> str:
        name = item["shard"]
        missing = tuple(c for c in self.columns
                        if not storage.exists(hash_url(self.out, name, c)))
        if missing:
            keys, images = matched_images(self.out, name)
            write_hash_columns(storage.join(layout.matches_dir(self.out), name), keys, images,
                               missing)
        return name


def _compare_task(names: list[str], out: str, evals: dict[str, Any], max_distance: int,
                  hits_dir: str) -> None:
    """Ray task: the phash column of some shards against every eval hash -> hit files."""
    for name in names:
        ph = read_parquet(hash_url(out, name, "phash"))
        valid = ph.filter(pc.is_valid(ph.column("phash")))
        rows, near, dist = hamming_matches(valid.column("phash").to_numpy(), evals["phash"],
                                           max_distance)
        hits = pa.table({"key": valid.column("key").take(pa.array(rows)),
                         "eval_set": evals["eval_set"].take(pa.array(near)),
                         "eval_key": evals["key"].take(pa.array(near)),
                         "distance": pa.array(dist, pa.int32())}, schema=HIT_SCHEMA)
        storage.write_bytes(storage.join(hits_dir, f"{name}.parquet"), parquet_bytes(hits))


_HEX_BYTES = pa.array([f"{i:02x}" for i in range(256)], pa.string())


def _partition_sha(urls: list[tuple[str, str, str]], parts: int) -> list[pa.Table] | pa.Table:
    """Map side of the global resolution: (shard, key, sha256, name) of some shards -- `name`
    the shard's path below the inputs' common folder, which orders the copies -- split by
    sha256 prefix into `parts` tables (reads the hash columns only, no image bytes)."""
    tables = []
    for sid, url, name in urls:
        t = read_parquet(url, ["key", "sha256"])
        t = t.filter(pc.is_valid(t.column("sha256")))
        t = t.append_column("shard", pa.array([sid] * t.num_rows, pa.string()))
        tables.append(t.append_column("name", pa.array([name] * t.num_rows, pa.string())))
    t = pa.concat_tables(tables) if tables else pa.table(
        {"key": pa.array([], pa.string()), "sha256": pa.array([], pa.string()),
         "shard": pa.array([], pa.string()), "name": pa.array([], pa.string())})
    if parts == 1:  # Ray: num_returns=1 is one object, not a list
        return t
    # bucket = first byte of the hex digest (0..255) mod parts, vectorized: the index of the
    # two leading hex digits among "00".."ff"
    head = pc.utf8_slice_codeunits(t.column("sha256"), 0, 2)
    bucket = pc.index_in(head, _HEX_BYTES).to_numpy(zero_copy_only=False) % parts
    return [t.filter(pa.array(bucket == p)) for p in range(parts)]


def _reduce_sha(*tables: pa.Table) -> pa.Table:
    return exact_duplicates(pa.concat_tables(tables))


def _subtract_task(items: list[tuple[str, pa.Table]], out: str) -> None:
    """Ray task: for some shards, the counts their removed rows had added (see module doc)."""
    for name, removed in items:
        m = read_parquet(layout.match_file(out, name),
                  ["key", "langs", "entry_ids"])
        counts = removed_counts(m, set(removed.column("key").to_pylist()))
        base = storage.join(out, "dedup", "removed", name)
        storage.write_bytes(base + ".counts.parquet", parquet_bytes(counts))
        storage.write_bytes(base + ".parquet", parquet_bytes(removed))


# sha256 rows one reduce task takes (hex strings: ~100 MB of Arrow per million rows). The
# number of reducers follows the rows, not the shards: a small pool is one map and one
# reduce task, not a round of near-empty ones (docs/curation.md, "Deduplication").
ROWS_PER_REDUCER = 1_000_000


def reduce_parts(rows: int) -> int:
    return max(1, min(64, -(-int(rows) // ROWS_PER_REDUCER)))


def submit_resolve(out: str, names: list[str], parts: int, shards_per_task: int = 32,
                   order: dict[str, str] | None = None) -> list[Any]:
    """Start the global exact dedup over the hash columns of `names` as Ray tasks
    (hash-partitioned map/reduce) -> one ObjectRef per reducer, each of a table (shard, key,
    owner) of duplicate rows. `order`: shard id -> the name that orders copies (default: the
    id). Returns at once: dedup.run compares with the eval sets
    meanwhile."""
    import ray

    order = order or {}
    urls = [(n, hash_url(out, n, "sha256"), order.get(n, n)) for n in names]
    chunks = [urls[i: i + shards_per_task] for i in range(0, len(urls), shards_per_task)]
    mapper = ray.remote(num_cpus=1, num_returns=parts)(_partition_sha)
    reducer = ray.remote(num_cpus=1)(_reduce_sha)
    mapped = [mapper.remote(ch, parts) for ch in chunks]
    if parts == 1:
        mapped = [[m] for m in mapped]
    return [reducer.remote(*[m[p] for m in mapped]) for p in range(parts)]


def resolve_exact(out: str, names: list[str], parts: int, shards_per_task: int = 32,
                  order: dict[str, str] | None = None) -> pa.Table:
    """submit_resolve, waited for: (shard, key, owner) of every duplicate row."""
    import ray

    return pa.concat_tables(ray.get(submit_resolve(out, names, parts, shards_per_task,
                                                   order)))


def settings(cfg: DictConfig) -> dict[str, Any]:
    """What the removals depend on. Each eval set carries the identity of its files (sizes and
    ETags/mtimes, one listing): an eval set rewritten in place at the same URL is hashed and
    compared again, not served from the cache (docs/curation.md, "Deduplication")."""
    c = cfg.curation
    return {"exact": bool(c.dedup),
            "eval": [{**e, "identity": _identity(e["url"])} for e in eval_specs(c)],
            "max_distance": int(c.decontaminate_hamming)}


def _identity(url: str) -> dict[str, Any] | None:
    try:
        return identity(url)
    except FileNotFoundError:  # the loader names the missing eval set and the fix
        return None


def run(cfg: DictConfig, match_stats: list[dict[str, Any]]) -> dict[str, Any]:
    """Hash, resolve and subtract for every shard of this run (see the module docstring);
    returns the summary the data card shows. A no-op (and stale removals are cleared) when
    curation.dedup is false and curation.decontaminate is empty."""
    import ray

    started = time.perf_counter()
    c = cfg.curation
    s = settings(cfg)
    out = str(c.out)
    ddir = storage.join(out, "dedup")
    names = [m["id"] for m in match_stats]
    # only under a curation.out a curate run created (docs/operations.md, "Inputs are
    # read-only")
    owned.remove_owned(storage.join(ddir, "removed"), "curation.out", owner=out)
    if not s["exact"] and not s["eval"]:
        storage.remove(storage.join(ddir, "state.json"))
        return {}
    columns = hash_columns(c)
    have = {col: {posixpath.basename(u)[: -len(f".{col}.parquet")] for u in storage.glob(
        storage.join(layout.matches_dir(out), f"*.{col}.parquet"))} for col in columns}
    to_hash = [n for n in names if any(n not in have[col] for col in columns)]
    if to_hash:  # normally none: pass 1 writes the hash columns (write_hash_columns)
        log.info("dedup: hashing %d shards matched without hash columns", len(to_hash))
        for _ in map_items([{"shard": n} for n in to_hash], HashWorker, (out, columns),
                           int(c.concurrency)):
            pass
    # the global exact resolution and the eval comparison are independent: both run at once
    rel = layout.relative_names([m["shard"] for m in match_stats])
    dup_refs = (submit_resolve(out, names, reduce_parts(
        sum(int(m.get("pairs_in", 0)) for m in match_stats)),
        order={m["id"]: rel[m["shard"]] for m in match_stats}) if s["exact"] and names else [])
    evals, samples = eval_hashes(s["eval"], storage.join(ddir, "eval_sets"))
    digest = hashlib.sha256(json.dumps({"eval": s["eval"], "d": s["max_distance"]},
                                       sort_keys=True).encode()).hexdigest()[:16]
    hits_dir = storage.join(ddir, "eval", digest) if s["eval"] else ""
    if hits_dir:
        done = {posixpath.basename(u)[: -len(".parquet")]
                for u in storage.glob(storage.join(hits_dir, "*.parquet"))}
        todo = [n for n in names if n not in done]
        log.info("decontamination: %d shards to compare with %d eval images", len(todo),
                 evals.num_rows)
        ev = ray.put({"key": evals.column("key").combine_chunks(),
                      "eval_set": evals.column("eval_set").combine_chunks(),
                      "phash": evals.column("phash").to_numpy()})
        step = max(1, -(-len(todo) // (2 * int(c.concurrency))))
        ray.get(submit_tasks(_compare_task, chunked(todo, step), out, ev, s["max_distance"],
                             hits_dir))
    removed: dict[str, dict[str, tuple[str, str]]] = defaultdict(dict)
    by_set: Counter = Counter()
    examples: list[dict[str, Any]] = []
    if hits_dir:
        for n in names:
            h = read_parquet(storage.join(hits_dir, f"{n}.parquet"))
            for k, es, ek, d in zip(*(h.column(x).to_pylist() for x in HIT_SCHEMA.names),
                                    strict=True):
                removed[n][k] = ("eval_duplicate", f"{es}/{ek} d={d}")
                by_set[es] += 1
                if len(examples) < 8:
                    examples.append({"shard": n, "key": k, "eval_set": es, "eval_key": ek,
                                     "distance": d})
    n_dup = 0
    if dup_refs:
        dups = pa.concat_tables(ray.get(dup_refs))
        for n, k, o in zip(*(dups.column(x).to_pylist() for x in ("shard", "key", "owner")),
                           strict=True):
            if k not in removed[n]:
                removed[n][k] = ("duplicate_image", o)
                n_dup += 1
    items = []
    for n, rows in removed.items():
        if rows:
            keys = sorted(rows)
            items.append((n, pa.table({"key": keys, "reason": [rows[k][0] for k in keys],
                                       "detail": [rows[k][1] for k in keys]},
                                      schema=REMOVED_SCHEMA)))
    step = max(1, -(-len(items) // (2 * int(c.concurrency))))
    subtracted = submit_tasks(_subtract_task, chunked(items, step), out)
    if examples:  # drawn here while the subtraction tasks run
        # redrawn only when what it shows changed (the examples, their shards' match keys,
        # the eval sets): an incremental run with the same hits leaves it
        grid = storage.join(ddir, "eval_duplicates.png")
        key_of = {m["id"]: m.get("key") for m in match_stats}
        inputs = report.inputs_digest(examples, s["eval"],
                                      sorted({e["shard"]: key_of.get(e["shard"])
                                              for e in examples}.items()))
        if not report.is_current(grid, inputs):
            storage.write_bytes(grid, thumbnail_grid(out, examples, samples, inputs=inputs))
    ray.get(subtracted)
    state_digest = hashlib.sha256(json.dumps(
        {n: sorted(r.items()) for n, r in sorted(removed.items())}).encode()).hexdigest()[:16]
    summary = {"exact": s["exact"], "duplicate_image": n_dup,
               "eval_sets": [e["name"] for e in s["eval"]], "max_distance": s["max_distance"],
               "eval_duplicate": sum(by_set.values()),
               "eval_duplicate_by_set": {e["name"]: by_set.get(e["name"], 0)
                                         for e in s["eval"]},
               "examples": examples, "digest": state_digest}
    storage.write_json(storage.join(ddir, "state.json"), summary)
    log.info("dedup: %d duplicate images, %d eval duplicates %s (%.1fs)", n_dup,
             summary["eval_duplicate"], dict(by_set), time.perf_counter() - started)
    return summary
