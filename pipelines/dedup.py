"""Exact dedup and eval decontamination of the match index, between pass 1 and the counts.

Why here: the global counts decide t_lang and every entry's probability, so a duplicated image
(the same photo re-hosted under many URLs) or a copy of a test image must leave the pool
BEFORE counting: counts are over distinct images and the eval table is honest by construction
(docs/curation.md, "Deduplication and decontamination").

Steps (each distributed and resumable like pass 1):

  hash       in pass 1 (curate.MatchActor -> write_hash_columns), from the image bytes
             already in memory: the match index's hash columns beside each match file,
             <shard>.sha256.parquet (key, sha256 of the image bytes) and, when eval sets are
             listed, <shard>.phash.parquet (key, 64-bit DCT perceptual hash, imagehash's
             phash). Once per shard, ever. Shards matched before (no such file) are hashed
             by a Ray Data actor pool here (HashActor), reading their match file once.
  compare    Ray tasks over chunks of shards: phash column vs every eval hash (Hamming <=
             curation.decontaminate_hamming) -> <out>/dedup/eval/<digest>/<shard>.parquet;
             <digest> names the eval sets + distance, so a new list re-compares from the stored
             phashes without decoding the pool again; a shard with its file is skipped.
  resolve    exact duplicates, GLOBALLY: Ray tasks read the sha256 column of chunks of shards
             and hash-partition it; one reduce task per partition sorts (sha256, shard, key)
             and marks every row after the first of its group `duplicate_image` (keep = the
             smallest (shard name, key): deterministic, the same on every run). Rows hit by an
             eval image are `eval_duplicate` (precedence: every copy of a test image goes).
  subtract   per shard with removals, a Ray task reads (key, langs, entry_ids) of the removed
             rows and writes the counts they had contributed:
             <out>/dedup/removed/<shard>.parquet (key, reason, detail) and
             <out>/dedup/removed/<shard>.counts.parquet (lang, entry_id, count).
             `curate._counts` subtracts them from the global sum; pass 2 drops the rows with
             their reason (`apply_removed`), so in = kept + sum(dropped) still holds.

Incremental curation: a new shard is hashed alone (old shards keep their hash files) and
the global resolution re-reads only the hash columns of every shard (32 bytes + key per
matched image, no image bytes), so new copies are checked against every hash already seen.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import posixpath
import time
from collections import Counter, defaultdict
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from omegaconf import DictConfig, OmegaConf

from worldclip.pipelines import layout, refs
from worldclip.platform import owned, storage

log = logging.getLogger(__name__)

HIT_SCHEMA = pa.schema([("key", pa.string()), ("eval_set", pa.string()),
                        ("eval_key", pa.string()), ("distance", pa.int32())])
REMOVED_SCHEMA = pa.schema([("key", pa.string()), ("reason", pa.string()),
                            ("detail", pa.string())])
_PAIRWISE_BLOCK = 4_000_000  # pool x eval comparisons held at once (uint64: 32 MB)


# ============================================================== pure functions

_N = 32  # phash: 8x8 low frequencies of the DCT of a 32x32 grey thumbnail (imagehash)
_DCT = 2.0 * np.cos(np.pi * np.outer(np.arange(_N), 2 * np.arange(_N) + 1) / (2 * _N))


def phash64(data: bytes) -> int | None:
    """imagehash.phash (64 bits) of one image as an int; None when it does not decode."""
    import imagehash
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.draft("L", (2 * _N, 2 * _N))  # JPEG: decode at reduced scale
            return int(str(imagehash.phash(im)), 16)
    except Exception:  # noqa: BLE001 -- any undecodable image: no perceptual hash
        return None


def _grey32(data: bytes) -> np.ndarray | None:
    """32x32 grey thumbnail as imagehash.phash builds it (convert L, LANCZOS resize); JPEGs
    are decoded by libjpeg-turbo at reduced scale straight to grey (simplejpeg): the hash
    only sees 32x32, and PIL's open + full decode cost ~5x pass 1's work per pair."""
    from PIL import Image

    arr = None
    if data[:3] == b"\xff\xd8\xff":
        try:
            import simplejpeg

            arr = simplejpeg.decode_jpeg(data, colorspace="GRAY", min_height=_N,
                                         min_width=_N)[:, :, 0]
        except Exception:  # noqa: BLE001 -- progressive/CMYK/odd JPEGs: PIL below
            arr = None
    try:
        if arr is None:
            with Image.open(io.BytesIO(data)) as im:
                im.draft("L", (2 * _N, 2 * _N))
                g = im.convert("L")
        else:
            if arr.shape == (_N, _N):
                return arr.astype(np.float64)
            g = Image.fromarray(np.ascontiguousarray(arr), "L")
        return np.asarray(g.resize((_N, _N), Image.Resampling.LANCZOS), dtype=np.float64)
    except Exception:  # noqa: BLE001 -- undecodable: no perceptual hash
        return None


def phash_batch(images: list[bytes | None]) -> list[int | None]:
    """imagehash.phash of many images at once: the thumbnails' 2-D DCT-II as one batched
    matrix product (the same numbers as imagehash's scipy dct on the same thumbnail, tested
    bit for bit), bits = low frequencies above their median, row-major, first bit high."""
    thumbs = [_grey32(b) if b else None for b in images]
    ok = [i for i, t in enumerate(thumbs) if t is not None]
    out: list[int | None] = [None] * len(images)
    if not ok:
        return out
    x = np.stack([thumbs[i] for i in ok])  # [n, 32 (m), 32 (j)]
    # low[k, l] = sum_mj C[k, m] x[m, j] C[l, j] for k, l < 8, as two plain 2-D BLAS
    # products (numpy's stacked matmul with a transposed operand loops in C, ~100x slower)
    c8 = np.ascontiguousarray(_DCT[:8])
    a = (x.reshape(-1, _N) @ c8.T).reshape(len(ok), _N, 8)  # [n, m, l]
    b = (np.ascontiguousarray(a.transpose(0, 2, 1)).reshape(-1, _N) @ c8.T)  # [n*l, k]
    low = b.reshape(len(ok), 8, 8).transpose(0, 2, 1).reshape(len(ok), 64)
    bits = low > np.median(low, axis=1, keepdims=True)
    for i, row in zip(ok, np.packbits(bits, axis=1), strict=True):
        out[i] = int.from_bytes(row.tobytes(), "big")
    return out


def hash_table(keys: list[str], images: list[bytes | None], column: str) -> pa.Table:
    """One hash column of a match table: key + sha256 (hex of the image bytes) or phash."""
    if column == "sha256":
        # null image (text-first match index, docs/curation.md): nothing to compare
        values = pa.array([hashlib.sha256(b).hexdigest() if b else None for b in images],
                          pa.string())
    else:
        values = pa.array(phash_batch(images), pa.uint64())
    return pa.table({"key": pa.array(keys, pa.string()), column: values})


def hamming_matches(pool: np.ndarray, evals: np.ndarray, max_distance: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pool row, nearest eval row, distance) for every pool hash within max_distance bits of
    some eval hash. Brute force in blocks (np.bitwise_count): eval sets are small (<= ~1e5),
    the pool is split over shards."""
    pool = np.asarray(pool, dtype=np.uint64)
    evals = np.asarray(evals, dtype=np.uint64)
    rows, near, dist = [], [], []
    if len(pool) == 0 or len(evals) == 0:
        e = np.zeros(0, dtype=np.int64)
        return e, e, e
    step = max(1, _PAIRWISE_BLOCK // len(evals))
    for s in range(0, len(pool), step):
        d = np.bitwise_count(pool[s:s + step, None] ^ evals[None, :])
        j = d.argmin(axis=1)
        best = d[np.arange(len(j)), j]
        hit = np.flatnonzero(best <= max_distance)
        rows.append(hit + s)
        near.append(j[hit])
        dist.append(best[hit].astype(np.int64))
    return np.concatenate(rows), np.concatenate(near), np.concatenate(dist)


def exact_duplicates(table: pa.Table) -> pa.Table:
    """Rows (shard, key, sha256) -> the duplicate rows (shard, key, owner): every row of a
    sha256 group but its smallest (shard, key)."""
    if table.num_rows == 0:
        return pa.table({"shard": pa.array([], pa.string()), "key": pa.array([], pa.string()),
                         "owner": pa.array([], pa.string())})
    t = table.sort_by([("sha256", "ascending"), ("shard", "ascending"), ("key", "ascending")])
    sha = t.column("sha256").to_pylist()
    shard = t.column("shard").to_pylist()
    key = t.column("key").to_pylist()
    out_s, out_k, out_o = [], [], []
    owner = ""
    for i, h in enumerate(sha):
        if i and h == sha[i - 1]:
            out_s.append(shard[i])
            out_k.append(key[i])
            out_o.append(owner)
        else:
            owner = f"{shard[i]}/{key[i]}"
    return pa.table({"shard": pa.array(out_s, pa.string()), "key": pa.array(out_k, pa.string()),
                     "owner": pa.array(out_o, pa.string())})


def removed_counts(match: pa.Table, keys: set[str]) -> pa.Table:
    """Sparse counts (lang, entry_id, count) the rows `keys` added in pass 1: +1 per entry id
    per text, exactly as ShardMatcher.match_shard counted them."""
    cnt: dict[str, Counter] = defaultdict(Counter)
    for k, langs, ids in zip(match.column("key").to_pylist(), match.column("langs").to_pylist(),
                             match.column("entry_ids").to_pylist(), strict=True):
        if k in keys:
            for g, e in zip(langs, ids, strict=True):
                cnt[g].update(e)
    c_lang, c_id, c_n = [], [], []
    for g, c in sorted(cnt.items()):
        for e in sorted(c):
            c_lang.append(g)
            c_id.append(e)
            c_n.append(c[e])
    return pa.table({"lang": pa.array(c_lang, pa.string()),
                     "entry_id": pa.array(c_id, pa.int32()),
                     "count": pa.array(c_n, pa.uint64())})


def _parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def _read(url: str, columns: list[str] | None = None) -> pa.Table:
    return pq.read_table(io.BytesIO(storage.read_bytes(url)), columns=columns)


# ============================================================== eval sets

def eval_specs(c: DictConfig) -> list[dict[str, Any]]:
    """curation.decontaminate entries as benchmark specs (a URL string or {name, type, url})."""
    from worldclip.pipelines.benchmarks import normalize_spec

    items = OmegaConf.to_container(c.decontaminate, resolve=True) if c.decontaminate else []
    return [normalize_spec(x, "curation.decontaminate") for x in items or []]


def eval_hashes(specs: list[dict[str, Any]], cache_dir: str
                ) -> tuple[pa.Table, dict[str, dict[str, bytes]]]:
    """(table set, key, phash of every eval image, a few eval images per set for the report).
    Cached per set under cache_dir (an eval set is read and hashed once)."""
    from worldclip.pipelines.benchmarks import load_images

    parts = []
    samples: dict[str, dict[str, bytes]] = {}
    for spec in specs:
        tag = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
        url = storage.join(cache_dir, f"{spec['name']}-{tag}.parquet")
        keys, images = load_images(spec)
        samples[spec["name"]] = dict(zip(keys, images, strict=True))
        if storage.exists(url):
            t = _read(url)
        else:
            t = hash_table(keys, images, "phash")
            storage.write_bytes(url, _parquet_bytes(t))
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


# ============================================================== Ray wiring

class HashActor:
    """Ray Data actor: one row = one shard name whose hash columns are missing (a shard
    matched before dedup was on, or before eval sets were listed): reads its match file once
    and writes the missing <shard>.<column>.parquet files (resumable: the files mark it)."""

    def __init__(self, out: str, columns: tuple[str, ...]) -> None:
        self.out = out
        self.columns = columns

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        for n in batch["shard"]:
            name = str(n)
            missing = tuple(c for c in self.columns
                            if not storage.exists(hash_url(self.out, name, c)))
            if missing:
                keys, images = matched_images(self.out, name)
                write_hash_columns(storage.join(self.out, "matches", name), keys, images,
                                   missing)
        return {"shard": list(batch["shard"])}


def _compare_task(out: str, names: list[str], evals: dict[str, Any], max_distance: int,
                  hits_dir: str) -> None:
    """Ray task: the phash column of some shards against every eval hash -> hit files."""
    for name in names:
        ph = _read(hash_url(out, name, "phash"))
        valid = ph.filter(pc.is_valid(ph.column("phash")))
        rows, near, dist = hamming_matches(valid.column("phash").to_numpy(), evals["phash"],
                                           max_distance)
        keys = valid.column("key").to_pylist()
        hits = pa.table({"key": pa.array([keys[i] for i in rows], pa.string()),
                         "eval_set": pa.array([evals["eval_set"][j] for j in near],
                                              pa.string()),
                         "eval_key": pa.array([evals["key"][j] for j in near], pa.string()),
                         "distance": pa.array(dist, pa.int32())}, schema=HIT_SCHEMA)
        storage.write_bytes(storage.join(hits_dir, f"{name}.parquet"), _parquet_bytes(hits))


def hash_columns(c: DictConfig) -> tuple[str, ...]:
    """The hash columns pass 1 writes beside each match file, from curation config."""
    return (("sha256",) if c.get("dedup") else ()) + \
        (("phash",) if c.get("decontaminate") else ())


def write_hash_columns(base: str, keys: list[str], images: list[bytes | None],
                       columns: tuple[str, ...]) -> None:
    """Pass 1 hook (curate.match_to_files): <base>.<column>.parquet for each column, from the
    image bytes already in memory -- no second read of the shard, no second actor pool."""
    for column in columns:
        storage.write_bytes(f"{base}.{column}.parquet",
                            _parquet_bytes(hash_table(keys, images, column)))


def hash_url(out: str, name: str, column: str) -> str:
    """<out>/matches/<shard>.<sha256|phash>.parquet: a hash column of the match index."""
    return storage.join(out, "matches", f"{name}.{column}.parquet")


def matched_images(out: str, sid: str) -> tuple[list[str], list[bytes | None]]:
    """(keys, image bytes) of a shard's matched pairs, read by reference from the raw shard
    (pipelines/refs.py): the match index holds no image bytes."""
    st = storage.read_json(layout.stats_file(out, sid))
    m = _read(layout.match_file(out, sid))
    return (m.column("key").to_pylist(),
            refs.read_images(st["shard"], st["kind"], m, st.get("identity"),
                             st.get("image_column", "")))


def _partition_sha(urls: list[tuple[str, str]], parts: int) -> list[pa.Table] | pa.Table:
    """Map side of the global resolution: (shard, key, sha256) of some shards, split by
    sha256 prefix into `parts` tables (reads the hash columns only, no image bytes)."""
    tables = []
    for name, url in urls:
        t = _read(url, ["key", "sha256"])
        t = t.filter(pc.is_valid(t.column("sha256")))
        tables.append(t.append_column("shard", pa.array([name] * t.num_rows, pa.string())))
    t = pa.concat_tables(tables) if tables else pa.table(
        {"key": pa.array([], pa.string()), "sha256": pa.array([], pa.string()),
         "shard": pa.array([], pa.string())})
    bucket = np.array([int(h[:8], 16) % parts for h in t.column("sha256").to_pylist()],
                      dtype=np.int64)
    out = [t.filter(pa.array(bucket == p)) for p in range(parts)]
    return out if parts > 1 else out[0]  # Ray: num_returns=1 is one object, not a list


def _reduce_sha(*tables: pa.Table) -> pa.Table:
    return exact_duplicates(pa.concat_tables(tables))


def _subtract_task(out: str, items: list[tuple[str, pa.Table]]) -> None:
    """Ray task: for some shards, the counts their removed rows had added (see module doc)."""
    for name, removed in items:
        m = _read(storage.join(out, "matches", f"{name}.parquet"),
                  ["key", "langs", "entry_ids"])
        counts = removed_counts(m, set(removed.column("key").to_pylist()))
        base = storage.join(out, "dedup", "removed", name)
        storage.write_bytes(base + ".counts.parquet", _parquet_bytes(counts))
        storage.write_bytes(base + ".parquet", _parquet_bytes(removed))


def resolve_exact(out: str, names: list[str], parts: int, shards_per_task: int = 32
                  ) -> pa.Table:
    """Global exact dedup over the hash columns of `names` with Ray tasks (hash-partitioned
    map/reduce): -> (shard, key, owner) of every duplicate row."""
    import ray

    urls = [(n, hash_url(out, n, "sha256")) for n in names]
    chunks = [urls[i: i + shards_per_task] for i in range(0, len(urls), shards_per_task)]
    mapper = ray.remote(num_cpus=1, num_returns=parts)(_partition_sha)
    reducer = ray.remote(num_cpus=1)(_reduce_sha)
    mapped = [mapper.remote(ch, parts) for ch in chunks]
    if parts == 1:
        mapped = [[m] for m in mapped]
    dups = ray.get([reducer.remote(*[m[p] for m in mapped]) for p in range(parts)])
    return pa.concat_tables(dups)


def settings(cfg: DictConfig) -> dict[str, Any]:
    c = cfg.curation
    return {"exact": bool(c.dedup), "eval": eval_specs(c),
            "max_distance": int(c.decontaminate_hamming)}


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
    evals, samples = eval_hashes(s["eval"], storage.join(ddir, "eval_sets"))
    digest = hashlib.sha256(json.dumps({"eval": s["eval"], "d": s["max_distance"]},
                                       sort_keys=True).encode()).hexdigest()[:16]
    hits_dir = storage.join(ddir, "eval", digest) if s["eval"] else ""
    columns = hash_columns(c)
    have = {col: {posixpath.basename(u)[: -len(f".{col}.parquet")] for u in storage.glob(
        storage.join(out, "matches", f"*.{col}.parquet"))} for col in columns}
    to_hash = [n for n in names if any(n not in have[col] for col in columns)]
    if to_hash:  # normally none: pass 1 writes the hash columns (write_hash_columns)
        log.info("dedup: hashing %d shards matched without hash columns", len(to_hash))
        ds = ray.data.from_items([{"shard": n} for n in to_hash],
                                 override_num_blocks=len(to_hash))
        ds = ds.map_batches(HashActor, fn_constructor_args=(out, columns), batch_size=1,
                            num_cpus=1, compute=ray.data.ActorPoolStrategy(
                                size=min(int(c.concurrency), len(to_hash))))
        for _ in ds.iter_rows():
            pass
    if hits_dir:
        done = {posixpath.basename(u)[: -len(".parquet")]
                for u in storage.glob(storage.join(hits_dir, "*.parquet"))}
        todo = [n for n in names if n not in done]
        log.info("decontamination: %d shards to compare with %d eval images", len(todo),
                 evals.num_rows)
        ev = ray.put({"key": evals.column("key").to_pylist(),
                      "eval_set": evals.column("eval_set").to_pylist(),
                      "phash": evals.column("phash").to_numpy()})
        task = ray.remote(num_cpus=1)(_compare_task)
        step = max(1, -(-len(todo) // (2 * int(c.concurrency))))
        ray.get([task.remote(out, todo[i: i + step], ev, s["max_distance"], hits_dir)
                 for i in range(0, len(todo), step)])
    removed: dict[str, dict[str, tuple[str, str]]] = defaultdict(dict)
    by_set: Counter = Counter()
    examples: list[dict[str, Any]] = []
    if hits_dir:
        for n in names:
            h = _read(storage.join(hits_dir, f"{n}.parquet"))
            for k, es, ek, d in zip(*(h.column(x).to_pylist() for x in HIT_SCHEMA.names),
                                    strict=True):
                removed[n][k] = ("eval_duplicate", f"{es}/{ek} d={d}")
                by_set[es] += 1
                if len(examples) < 8:
                    examples.append({"shard": n, "key": k, "eval_set": es, "eval_key": ek,
                                     "distance": d})
    n_dup = 0
    if s["exact"] and names:
        parts = max(1, min(16, len(names) // 4))
        dups = resolve_exact(out, names, parts)
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
    task = ray.remote(num_cpus=1)(_subtract_task)
    step = max(1, -(-len(items) // (2 * int(c.concurrency))))
    ray.get([task.remote(out, items[i: i + step]) for i in range(0, len(items), step)])
    state_digest = hashlib.sha256(json.dumps(
        {n: sorted(r.items()) for n, r in sorted(removed.items())}).encode()).hexdigest()[:16]
    summary = {"exact": s["exact"], "duplicate_image": n_dup,
               "eval_sets": [e["name"] for e in s["eval"]], "max_distance": s["max_distance"],
               "eval_duplicate": sum(by_set.values()),
               "eval_duplicate_by_set": {e["name"]: by_set.get(e["name"], 0)
                                         for e in s["eval"]},
               "examples": examples, "digest": state_digest}
    if examples:
        storage.write_bytes(storage.join(ddir, "eval_duplicates.png"),
                            thumbnail_grid(out, examples, samples))
    storage.write_json(storage.join(ddir, "state.json"), summary)
    log.info("dedup: %d duplicate images, %d eval duplicates %s (%.1fs)", n_dup,
             summary["eval_duplicate"], dict(by_set), time.perf_counter() - started)
    return summary


# ============================================================== hooks for curate

def subtract_removed(out: str, counts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """counts minus what every removed row contributed (in place; returned for chaining)."""
    from worldclip.pipelines.curate.counts import sum_count_files

    urls = storage.glob(storage.join(out, "dedup", "removed", "*.counts.parquet"))
    if not urls:
        return counts
    minus = sum_count_files(urls, {g: len(v) for g, v in counts.items()})
    for g, m in minus.items():
        if (m > counts[g]).any():
            raise RuntimeError(f"dedup: removed rows of language {g} exceed its counts; "
                               f"remove {out}/dedup and run `worldclip curate` again")
        counts[g] -= m
    return counts


def apply_removed(table: pa.Table, out: str, name: str) -> tuple[pa.Table, dict[str, int]]:
    """Pass 2 hook: the match table without its removed rows, and the drops by reason."""
    url = storage.join(out, "dedup", "removed", f"{name}.parquet")
    if not storage.exists(url):
        return table, {}
    rem = _read(url)
    reason = dict(zip(rem.column("key").to_pylist(), rem.column("reason").to_pylist(),
                      strict=True))
    keys = table.column("key").to_pylist()
    keep = np.array([k not in reason for k in keys], dtype=bool)
    drops = Counter(reason[k] for k in keys if k in reason)
    return table.filter(pa.array(keep)), dict(drops)


def state(out: str) -> dict[str, Any]:
    url = storage.join(out, "dedup", "state.json")
    return storage.read_json(url) if storage.exists(url) else {}


def datacard_section(out: str, balanced_out: str) -> dict[str, Any]:
    """The data card's "dedup" entry; copies the thumbnail grid into the balanced output."""
    st = state(out)
    if not st:
        return {"enabled": False}
    grid = storage.join(out, "dedup", "eval_duplicates.png")
    if st.get("examples") and storage.exists(grid):
        dest = storage.join(balanced_out, "plots", "eval_duplicates.png")
        storage.write_bytes(dest, storage.read_bytes(grid))
        st = {**st, "examples_png": dest}
    return {"enabled": True, **st}


def thumbnail_grid(out: str, examples: list[dict[str, Any]],
                   samples: dict[str, dict[str, bytes]], size: int = 96) -> bytes:
    """PNG: one row per example, pool image | eval image, with the distance."""
    from PIL import Image, ImageDraw

    grid = Image.new("RGB", (2 * size + 250, len(examples) * (size + 4) + 4), "white")
    draw = ImageDraw.Draw(grid)
    cache: dict[str, dict[str, bytes]] = {}
    for i, ex in enumerate(examples):
        if ex["shard"] not in cache:
            cache[ex["shard"]] = dict(zip(*matched_images(out, ex["shard"]), strict=True))
        y = 4 + i * (size + 4)
        for j, data in enumerate((cache[ex["shard"]].get(ex["key"]),
                                  samples.get(ex["eval_set"], {}).get(ex["eval_key"]))):
            try:
                with Image.open(io.BytesIO(data or b"")) as im:
                    grid.paste(im.convert("RGB").resize((size, size)), (4 + j * (size + 4), y))
            except Exception:  # noqa: BLE001 -- an undecodable example leaves its cell blank
                pass
        for line, text in enumerate((f"pool {ex['shard']}/{ex['key']}"[:40],
                                     f"eval {ex['eval_set']}/{ex['eval_key']}"[:40],
                                     f"Hamming distance {ex['distance']}")):
            draw.text((2 * size + 16, y + size // 2 - 18 + 12 * line), text, fill="black")
    buf = io.BytesIO()
    grid.save(buf, format="PNG")
    return buf.getvalue()
