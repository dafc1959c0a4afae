"""Pass 1 (match, expensive; per input shard, resumable and keyed): raw shard -> LID ->
per-language Aho-Corasick matching -> the shard's match index, sparse counts and accounting.

Pure per shard (`ShardMatcher` knows nothing of Ray); `MatchWorker` is the Ray Data task's
state: the LID model and the automata, kept warm per worker process (platform/execution.py).
The match index references the images in the raw shard and holds no image bytes
(pipelines/refs.py, docs/curation.md "Match index by reference"); a stored result is reused
only under the same `match_key`.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from omegaconf import DictConfig

from worldclip.pipelines import dedup, layout, lid, refs
from worldclip.pipelines.arrowio import write_parquet
from worldclip.pipelines.limits import DEFAULT_LIMITS, ReadLimits
from worldclip.pipelines.metadata import MERGED, MetadataStore
from worldclip.pipelines.shards import ShardResult, load_shard, parse_shard
from worldclip.platform import storage
from worldclip.platform.execution import ItemWorker

# Pass 1's match index holds no image bytes: `ref_*` point at the image in the raw shard
# (pipelines/refs.py). `url`: the image reference of a text-only (text-first) pair, whose
# image does not exist until downloaded (docs/curation.md, "Text-first curation").
MATCH_SCHEMA = pa.schema([
    ("key", pa.string()), ("url", pa.string()), ("texts", pa.list_(pa.string())),
    ("langs", pa.list_(pa.string())), ("entry_ids", pa.list_(pa.list_(pa.int32()))),
    ("meta", pa.string()), *refs.REF_FIELDS,
])
# text-first online output (pipelines/join.py fills `image` after the download)
INDEX_SCHEMA = pa.schema([
    ("key", pa.string()), ("image", pa.binary()), ("url", pa.string()),
    ("texts", pa.list_(pa.string())),
    ("langs", pa.list_(pa.string())), ("entry_ids", pa.list_(pa.list_(pa.int32()))),
    ("text_probs", pa.list_(pa.float64())), ("meta", pa.string()),
])
# Bump when a change to parsing, LID or matching changes what pass 1 writes for the same
# inputs: every stored per-shard result made under another version is redone.
MATCH_RULES_VERSION = 3  # 3: hash columns hold the matched pairs only


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
        """match_shard on an already parsed shard (files folders are read, not bytes). The
        table references the images (ref_* columns); their bytes stay in parsed.records for
        the caller (hash columns, pipelines/dedup.py) and are never written."""
        drops = Counter(parsed.drops)
        pairs_in = parsed.pairs_in
        texts_flat = [t for r in parsed.records for t in r["texts"]]
        groups_flat = self.lmap.groups(lid.identify(texts_flat, self.s.lid_backend))
        lang_pairs_in: Counter = Counter()
        lang_texts: Counter = Counter(groups_flat)
        lang_matched: Counter = Counter()  # matched pairs by their first caption's language
        counts: dict[str, Counter] = defaultdict(Counter)
        rows: dict[str, list] = {f: [] for f in ("key", "url", "texts", "langs", "entry_ids",
                                                 "meta", "ref")}
        kept_records = []
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
                kept_records.append(rec)
                rows["key"].append(rec["key"])
                rows["url"].append(rec.get("url"))
                rows["texts"].append(rec["texts"])
                rows["langs"].append([MERGED if self.s.merged else g for g in groups])
                rows["entry_ids"].append(ids_per_text)
                rows["meta"].append(rec["meta"])
                rows["ref"].append(rec.get("ref"))
                lang_matched[rows["langs"][-1][0]] += 1
        ref_cols = refs.ref_columns(rows.pop("ref"))
        matched = pa.Table.from_pydict({**rows, **ref_cols}, schema=MATCH_SCHEMA)
        parsed.records[:] = kept_records  # the matched pairs' images, for hash columns
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
                 "lang_pairs_in": dict(lang_pairs_in), "lang_texts": dict(lang_texts),
                 "lang_matched": dict(lang_matched), "kind": parsed.kind,
                 "image_column": parsed.image_column}
        assert stats["pairs_in"] == matched.num_rows + sum(drops.values())
        return matched, count_table, stats


class MatchWorker(ItemWorker):
    """Pass-1 worker (platform/execution.py): one item = one input shard's job, which names
    the curation.out it writes to. The state is what the settings and the metadata files'
    sha256 (read on the driver) make, so a worker process reuses it in a later run only if
    both are the same: a metadata file rewritten in place changes the key."""

    REUSABLE = True

    def __init__(self, settings: MatchSettings, metadata_hashes: dict[str, str]) -> None:
        import ray

        self.matcher = ShardMatcher(settings)
        loaded = self.matcher.store.hashes()
        if loaded != metadata_hashes:  # rewritten between the driver's read and ours
            changed = sorted(g for g in set(loaded) | set(metadata_hashes)
                             if loaded.get(g) != metadata_hashes.get(g))
            raise RuntimeError(f"pass 1: metadata of {changed} changed while curating; run "
                               "`worldclip curate` again once the metadata is final")
        self.node = ray.get_runtime_context().get_node_id()  # for the report: who did what

    def process(self, job: dict[str, Any]) -> dict[str, Any]:
        return match_to_files(self.matcher, job["out"], job, self.node)


def match_to_files(matcher: ShardMatcher, out: str, job: dict[str, Any], node: str = ""
                   ) -> dict[str, Any]:
    """Pass 1 of one shard: match it and write its files under its id (pipelines/layout.py).

    `job` carries the raw shard's url, the identity read BEFORE the shard is (a shard that
    changes while being read is re-matched next run, never trusted) and the reuse key."""
    url, sid = job["url"], job["id"]
    parsed = load_shard(url, matcher.s.limits)
    matched, counts, stats = matcher.match_parsed(parsed, url)
    stats.update(id=sid, identity=job["identity"], key=job["key"], node=node)
    write_parquet(layout.match_file(out, sid), matched)
    write_parquet(layout.counts_file(out, sid), counts)
    # the matched pairs only: a pair without a match never enters the curation, so it may
    # neither own an image (its matched copy would be dropped as the duplicate) nor cost a
    # hash (docs/curation.md, "Deduplication and decontamination")
    keys = set(matched.column("key").to_pylist())
    rows = [r for r in parsed.records if r["key"] in keys]
    dedup.write_hash_columns(storage.join(layout.matches_dir(out), sid),
                             [r["key"] for r in rows], [r["image"] for r in rows],
                             matcher.s.hash_columns)
    parsed.records.clear()
    storage.write_json(layout.stats_file(out, sid), stats)  # last: marks the shard done
    return stats


def match_key(url: str, identity: dict[str, Any], s: MatchSettings,
              metadata_hashes: dict[str, str]) -> str:
    """What a stored per-shard result was made from: the raw shard (url, size, ETag/mtime),
    every metadata file's sha256, the LID and matching settings, the read limits and the
    version of the rules. Reused only on an exact match (docs/curation.md, "Reuse")."""
    made_of = {"url": url, "identity": identity, "metadata": metadata_hashes,
               "lid_backend": s.lid_backend, "language_map": s.language_map or {},
               "kana_hangul_nospace": s.kana_hangul_nospace, "merged": s.merged,
               "limits": s.limits.to_dict(), "rules": MATCH_RULES_VERSION}
    return hashlib.sha256(json.dumps(made_of, sort_keys=True, default=str).encode()
                          ).hexdigest()[:24]
