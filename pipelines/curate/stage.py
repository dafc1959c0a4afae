"""`worldclip curate` and `worldclip rebalance`: the Ray wiring of the curation steps.

    inputs -> pass 1 (match.py; only shards without a stored result under the same key)
           -> dedup (pipelines/dedup.py) -> global counts over exactly these shards (counts.py)
           -> t_lang (balancing.py) -> offline: pass 2 (sample.py) | online: balance.py
           -> data card (datacard.py) with the versions (what changed since the last run)

Incremental by construction: a re-run over a grown input set matches only the new shards,
re-matches changed ones (size/ETag), leaves out the ones gone, and derives counts, t_lang and
the balancing from exactly the shards it covers, so the result equals a clean run
(docs/curation.md, "Incremental curation and reuse"). One writer per output at a time
(platform/lease.py).
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from omegaconf import DictConfig

from worldclip.pipelines import balancing, dedup, layout
from worldclip.pipelines.curate import balance
from worldclip.pipelines.curate.counts import (
    aggregate_counts,
    counts_digest,
    load_counts,
    save_counts,
)
from worldclip.pipelines.curate.datacard import build_datacard, require_usable, summary
from worldclip.pipelines.curate.match import MatchSettings, MatchWorker, match_key
from worldclip.pipelines.curate.sample import SampleSettings, SampleWorker, entry_probs_by_lang
from worldclip.pipelines.limits import ReadLimits
from worldclip.pipelines.metadata import MERGED, MetadataStore
from worldclip.pipelines.shards import sidecar_reason
from worldclip.platform import owned, ranges, storage
from worldclip.platform.config import ConfigError, save_config
from worldclip.platform.execution import map_items
from worldclip.platform.lease import Lease
from worldclip.platform.overlap import check_stage_io

log = logging.getLogger(__name__)

_HASH_COLUMNS = ("sha256", "phash")


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
    return urls


def _identities(urls: list[str]) -> dict[str, dict[str, Any]]:
    """Raw shard identities, read before any shard is (one HEAD/stat each, in parallel)."""
    with ThreadPoolExecutor(16) as pool:
        return dict(zip(urls, pool.map(ranges.identity, urls), strict=True))


def _stored(out: str, sid: str) -> dict[str, Any] | None:
    """The shard's stored pass-1 stats, or None (one read, no separate existence check)."""
    try:
        return storage.read_json(layout.stats_file(out, sid))
    except FileNotFoundError:
        return None


def _forget(out: str, sid: str) -> None:
    """Remove what an earlier result of this shard left that a re-match might not rewrite:
    its done-marker first, then its hash columns and eval-comparison hits."""
    for url in [layout.stats_file(out, sid),
                *(storage.join(layout.matches_dir(out), f"{sid}.{c}.parquet")
                  for c in _HASH_COLUMNS),
                *storage.glob(storage.join(out, "dedup", "eval", "*", f"{sid}.parquet"))]:
        storage.remove(url)


def run_match(cfg: DictConfig, metadata_hashes: dict[str, str]
              ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Pass 1 over every input shard without a stored result under the same key.
    -> (every covered shard's stats, in input order; what changed since the last run)."""
    c = cfg.curation
    urls = _list_inputs(c.input)
    settings = MatchSettings.from_config(c)
    idents = _identities(urls)
    jobs, stats, changes = [], {}, Counter()
    changed_shards: list[str] = []
    for u in urls:
        sid = layout.shard_id(u)
        key = match_key(u, idents[u], settings, metadata_hashes)
        old = _stored(c.out, sid)
        if old is not None and old.get("key") == key:
            stats[u] = old
            changes["reused"] += 1
            continue
        if old is None:
            changes["added"] += 1
        else:
            why = ("raw shard changed (size/ETag)" if old.get("identity") != idents[u]
                   else "metadata, LID or matching settings changed")
            log.warning("pass 1: re-matching %s: %s", u, why)
            changes["changed"] += 1
            changed_shards.append(u)
            _forget(c.out, sid)
        jobs.append({"url": u, "id": sid, "identity": idents[u], "key": key, "out": c.out})
    before = _manifest(c.out)
    gone = sorted(set(before.get("shards", {})) - {layout.shard_id(u) for u in urls})
    for sid in gone:
        log.warning("pass 1: %s (%s) is no longer in curation.input: its pairs and counts "
                    "leave the curation", before["shards"][sid]["url"], sid)
    log.info("pass 1 (match): %d shards: %d reused, %d new, %d changed, %d removed",
             len(urls), changes["reused"], changes["added"], changes["changed"], len(gone))
    for s in map_items(jobs, MatchWorker, (settings, metadata_hashes), c.concurrency):
        stats[s["shard"]] = s
        for e in s["errors"]:
            log.warning(e)
    delta = {"shards": len(urls), "reused": changes["reused"], "added": changes["added"],
             "changed": changes["changed"], "removed": len(gone),
             "changed_shards": changed_shards[:20],
             "removed_shards": [before["shards"][s]["url"] for s in gone][:20]}
    return [stats[u] for u in urls], delta


def _manifest(out: str) -> dict[str, Any]:
    url = layout.manifest_file(out)
    return storage.read_json(url) if storage.exists(url) else {}


def _record_version(out: str, match_stats: list[dict[str, Any]], delta: dict[str, Any],
                    counts: dict[str, np.ndarray], t_lang: dict[str, float]) -> dict[str, Any]:
    """manifest.json: the covered shards and one line of history per run; returns the
    data card's `versions` entry (before -> after)."""
    before = _manifest(out)
    history = list(before.get("history", []))
    last = history[-1] if history else {}
    entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
             **{k: delta[k] for k in ("shards", "reused", "added", "changed", "removed")},
             "counts_sha": counts_digest(counts),
             "matches": {g: int(v.sum()) for g, v in counts.items()}, "t_lang": t_lang}
    history.append(entry)
    storage.write_json(layout.manifest_file(out), {
        "shards": {s["id"]: {"url": s["shard"], "identity": s.get("identity"),
                             "key": s.get("key")} for s in match_stats},
        "history": history[-100:]})
    return {"this_run": {**delta, "counts_sha": entry["counts_sha"]},
            "before": {k: last.get(k) for k in ("counts_sha", "matches", "t_lang")} if last
            else None,
            "after": {k: entry[k] for k in ("counts_sha", "matches", "t_lang")}}


def thresholds_from_counts(cfg: DictConfig, counts: dict[str, np.ndarray]
                           ) -> balancing.ThresholdResult:
    c = cfg.curation
    english = MERGED if c.merged_metadata else "en"
    thr = balancing.derive_thresholds(counts, t_en=c.t_en, p=c.p, mode=c.threshold_mode,
                                      english=english,
                                      min_t=float(c.min_t_lang))
    if thr.zero_threshold_languages:
        log.warning("balancing: t_lang = 0 for %s -- every pair of these languages is dropped "
                    "(a small pool: p is below their smallest cumulative share). Set "
                    "curation.min_t_lang (a floor, e.g. 1) to keep their rarest entries "
                    "(docs/curation.md, 'Small languages')", thr.zero_threshold_languages)
    return thr


def _removed(out: str) -> dict[str, int]:
    st = dedup.state(out)
    return {r: int(st.get(r, 0)) for r in ("duplicate_image", "eval_duplicate")
            if st.get(r)}


def run_sample(cfg: DictConfig, match_stats: list[dict[str, Any]],
               counts: dict[str, np.ndarray], thresholds: balancing.ThresholdResult,
               metadata_hashes: dict[str, str], started: float,
               versions: dict[str, Any] | None = None) -> dict[str, Any]:
    """Offline: pass 2 per shard. Online: the balancing artifact only (text-first shards
    still get their per-shard index for `join`). Then the data card and plots."""
    import ray

    c = cfg.curation
    out = c.balanced_out
    probs = entry_probs_by_lang(counts, thresholds.t_lang)
    online = c.mode == "online"
    sample_stats: list[dict[str, Any]] | None = None
    per_shard = [s for s in match_stats if not online or s.get("kind") == "text"]
    _clear_other_mode(out, artifact=online and len(per_shard) < len(match_stats),
                      per_shard=bool(per_shard))
    if online and len(per_shard) < len(match_stats):
        balance.write(out, c.out, probs, thresholds.t_lang, c.seed,
                      [s for s in match_stats if s.get("kind") != "text"],
                      counts_digest(counts), dedup.state(c.out).get("digest"),
                      ReadLimits.from_config(c).to_dict())
    if per_shard:
        key = json.dumps({"t_lang": thresholds.t_lang, "mode": c.mode, "seed": c.seed,
                          "shard_limits": [c.pairs_per_output_shard, c.bytes_per_output_shard],
                          "dedup": dedup.state(c.out).get("digest"),
                          "shards": sorted(s["key"] or s["id"] for s in per_shard)},
                         sort_keys=True, default=str)
        marker = storage.join(out, "thresholds.json")
        if storage.exists(marker) and storage.read_text(marker) != key:
            log.info("%s holds a sample with other thresholds or shards; replacing it", out)
            for sub in ("shards", "index", "stats", "kept"):
                # only what a curate run created (docs/operations.md, "Inputs are read-only")
                owned.remove_owned(storage.join(out, sub), "curation.balanced_out", owner=out)
        storage.write_text(marker, key)
        todo = [s for s in per_shard if not storage.exists(layout.sample_stats(out, s["id"]))]
        log.info("pass 2 (sample, %s): %d shards to do", c.mode, len(todo))
        if todo:
            settings = SampleSettings(out=out, mode=c.mode, seed=c.seed,
                                      t_lang=thresholds.t_lang,
                                      pairs_per_shard=c.pairs_per_output_shard,
                                      bytes_per_shard=c.bytes_per_output_shard)
            for _ in map_items(todo, SampleWorker, (settings, c.out, ray.put(probs)),
                               c.concurrency):
                pass
        sample_stats = [storage.read_json(layout.sample_stats(out, s["id"]))
                        for s in per_shard]
    card = build_datacard(cfg, match_stats, sample_stats, counts, thresholds, metadata_hashes,
                          time.time() - started, removed=_removed(c.out))
    card["dedup"] = dedup.datacard_section(c.out, out)
    if versions is not None:
        card["versions"] = versions
    storage.write_json(storage.join(out, "datacard.json"), card)
    save_config(cfg, out)
    if c.plots:
        from worldclip.pipelines.report import plot_curation

        plot_curation(card, counts, thresholds, storage.join(out, "plots"))
    else:  # no plots of other thresholds left beside this data card
        for png in ("languages.png", "long_tail.png"):
            owned.remove_owned(storage.join(out, "plots", png), "curation.balanced_out",
                               owner=out)
    return card


def _clear_other_mode(out: str, artifact: bool, per_shard: bool) -> None:
    """A balanced_out holds one product: switching mode removes the other mode's files (only
    what a run created: docs/operations.md, "Inputs are read-only")."""
    if not artifact:
        for u in [layout.balance_file(out),
                  *storage.glob(storage.join(out, "balance-*.npz"))]:
            owned.remove_owned(u, "curation.balanced_out", owner=out)
    if not per_shard:
        for sub in ("shards", "index", "stats", "kept", "thresholds.json"):
            owned.remove_owned(storage.join(out, sub), "curation.balanced_out", owner=out)


def _counts(cfg: DictConfig, store: MetadataStore, match_stats: list[dict]
            ) -> dict[str, np.ndarray]:
    c = cfg.curation
    sizes = {g: store.size(g) for g in store.groups}
    counts = aggregate_counts([layout.counts_file(c.out, s["id"]) for s in match_stats], sizes)
    counts = dedup.subtract_removed(c.out, counts)  # counts over distinct, clean images
    save_counts(layout.global_counts(c.out), counts)
    return counts


def run(cfg: DictConfig) -> dict[str, Any]:
    """`worldclip curate`: pass 1 (incremental), counts, thresholds, balancing."""
    from worldclip.platform.runtime import init_ray

    # Before Ray starts and before anything is written: outputs never overlap inputs, and
    # a glob matching nothing is a user error (docs/operations.md).
    check_stage_io("curate", cfg)
    _list_inputs(cfg.curation.input)
    init_ray(cfg)
    started = time.time()
    c = cfg.curation
    for url in (c.out, c.balanced_out):
        owned.claim_dir(url)
    with Lease(c.out, "curation.out") as held, Lease(c.balanced_out,
                                                     "curation.balanced_out") as held_b:
        save_config(cfg, c.out)
        # Load and validate every metadata file here, on the driver: a bad file fails now
        # with its name, not later inside a worker's traceback.
        store = MetadataStore(c.metadata, merged=c.merged_metadata)
        hashes = store.hashes()
        match_stats, delta = run_match(cfg, hashes)
        require_usable(c.input, match_stats)
        dedup.run(cfg, match_stats)  # exact dedup + eval decontamination, before counting
        counts = _counts(cfg, store, match_stats)
        thr = thresholds_from_counts(cfg, counts)
        held.check()
        held_b.check()
        versions = _record_version(c.out, match_stats, delta, counts, thr.t_lang)
        card = run_sample(cfg, match_stats, counts, thr, hashes, started, versions)
    return summary(card)


def run_rebalance(cfg: DictConfig) -> dict[str, Any]:
    """`worldclip rebalance`: new thresholds from the stored counts of the shards the last
    curate run covered (manifest.json). Online: rewrites the balancing artifact only (reads
    no per-pair data); offline: pass 2 again."""
    from worldclip.platform.runtime import init_ray

    check_stage_io("rebalance", cfg)
    init_ray(cfg)
    started = time.time()
    c = cfg.curation
    owned.claim_dir(c.balanced_out)
    manifest = _manifest(c.out)
    if not manifest:
        raise FileNotFoundError(f"{layout.manifest_file(c.out)}: no curation to rebalance; "
                                "run `worldclip curate` first (rebalance reuses its matches "
                                "and counts)")
    with Lease(c.balanced_out, "curation.balanced_out") as held:
        counts = load_counts(layout.global_counts(c.out))
        store = MetadataStore(c.metadata, merged=c.merged_metadata)
        if set(counts) != set(store.groups):
            raise ValueError(f"{layout.global_counts(c.out)} has groups {sorted(counts)} but "
                             f"curation.metadata gives {store.groups}; rebalance with the "
                             "metadata settings of the curate run (curation.merged_metadata) "
                             "or run `worldclip curate`")
        match_stats = [storage.read_json(layout.stats_file(c.out, sid))
                       for sid in manifest["shards"]]
        thr = thresholds_from_counts(cfg, counts)
        held.check()
        card = run_sample(cfg, match_stats, counts, thr, store.hashes(), started)
    return summary(card)

