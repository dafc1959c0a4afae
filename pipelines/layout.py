"""Every file a curation writes, named in one place (docs/curation.md, "On-disk layout").

curation.out (match once; by reference, no image bytes):
    manifest.json                  the shards the last run covered: id -> url, identity, key
    counts.npz                     global uint64 counts per language over exactly those shards
    matches/<id>.parquet           matched pairs: key, texts, langs, entry_ids, image reference
    matches/<id>.counts.parquet    sparse per-language entry counts of the shard
    matches/<id>.<col>.parquet     sha256 / phash of the matched images (pipelines/dedup.py)
    matches/<id>.stats.json        accounting + the key it was made with; written last
    dedup/...                      pipelines/dedup.py
    _LEASE.json                    one writer at a time (platform/lease.py)

curation.balanced_out (rebalance many):
    balance.json                   online: the balancing artifact (t_lang, seed, versions, the
    balance-<version>.npz            shards), and its per-language entry probabilities
    shards/<id>.tar                offline: kept pairs as WebDataset (<id>-00001.tar ... when
                                     curation.pairs/bytes_per_output_shard split them)
    stats/<id>.json                offline: accounting of the shard
    kept/<id>.parquet              text-first: kept pairs to download (pipelines/join.py)
    index/<id>.parquet             text-first after `join`: pairs with downloaded images
    datacard.json, plots/*.png, config.yaml, thresholds.json

A shard's id is its file name (without extension) plus a hash of its full URL: two inputs
`a/x.tar` and `b/x.tar`, or `x.tar` and `x.counts.tar`, can never write each other's files.
"""

from __future__ import annotations

import hashlib
import posixpath
import re

from worldclip.pipelines.shards import shard_name
from worldclip.platform import storage

MANIFEST = "manifest.json"
COUNTS = "counts.npz"
BALANCE = "balance.json"


def shard_id(url: str) -> str:
    """<name>.<10 hex of sha1(url)>: ids end in the hash, so no id plus one of the suffixes
    below equals another id plus another suffix."""
    return f"{shard_name(url)}.{hashlib.sha1(url.encode('utf-8')).hexdigest()[:10]}"


_ID_HASH = re.compile(r"\.[0-9a-f]{10}(?=(-\d+)?\.[^./]+$)")


def portable_name(url: str) -> str:
    """A curated file's name without the URL hash of its shard id (<name>.<hash>[-00001].ext
    -> <name>[-00001].ext): the same wherever the pool lives, so the training order seeded by
    it does not change when the data moves or is curated again under another path."""
    return _ID_HASH.sub("", posixpath.basename(url), count=1)


def relative_names(urls: list[str]) -> dict[str, str]:
    """url -> its path below the inputs' common folder (crawl1/00000.tar): what orders shards
    that must be ordered the same wherever the pool lives (two crawls' 00000.tar apart)."""
    paths = {u: storage.strip_scheme(u) for u in urls}
    if not paths:
        return {}
    root = posixpath.commonpath([posixpath.dirname(p) for p in paths.values()])
    return {u: posixpath.relpath(p, root) for u, p in paths.items()}


def matches_dir(out: str) -> str:
    return storage.join(out, "matches")


def match_file(out: str, sid: str) -> str:
    return storage.join(out, "matches", f"{sid}.parquet")


def counts_file(out: str, sid: str) -> str:
    return storage.join(out, "matches", f"{sid}.counts.parquet")


def stats_file(out: str, sid: str) -> str:
    return storage.join(out, "matches", f"{sid}.stats.json")


def manifest_file(out: str) -> str:
    return storage.join(out, MANIFEST)


def global_counts(out: str) -> str:
    return storage.join(out, COUNTS)


def balance_file(balanced_out: str) -> str:
    return storage.join(balanced_out, BALANCE)


def balance_probs(balanced_out: str, version: str) -> str:
    return storage.join(balanced_out, f"balance-{version}.npz")


def sample_stats(balanced_out: str, sid: str) -> str:
    return storage.join(balanced_out, "stats", f"{sid}.json")


def sample_tar(balanced_out: str, sid: str) -> str:
    return storage.join(balanced_out, "shards", f"{sid}.tar")
