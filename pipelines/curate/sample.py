"""Pass 2 (sample, per shard): the balanced draw of a shard's matched pairs, and what it
becomes: offline WebDataset shards (images read by reference from the raw shard, once), or,
for text-first shards, the kept list / online index that `join` completes
(docs/curation.md §4). The online mode of image shards has no per-shard pass 2: its product
is the balancing artifact (balance.py) the training stream redraws from every epoch.
"""

from __future__ import annotations

import json
import math
import posixpath
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from worldclip.pipelines import balancing, dedup, layout, refs, wds
from worldclip.pipelines.arrowio import read_parquet, write_parquet
from worldclip.pipelines.curate.match import INDEX_SCHEMA
from worldclip.platform import storage
from worldclip.platform.execution import ItemWorker


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


class SampleWorker(ItemWorker):
    """Pass-2 worker (platform/execution.py): one item = one shard's pass-1 stats."""

    def __init__(self, settings: SampleSettings, curation_out: str, probs_ref: Any) -> None:
        import ray

        self.s = settings
        self.curation_out = curation_out
        self.probs = ray.get(probs_ref) if isinstance(probs_ref, ray.ObjectRef) else probs_ref

    def process(self, shard: dict[str, Any]) -> dict[str, Any]:
        """Sample one shard (`shard`: its pass-1 stats) and write what the mode asks for."""
        sid = shard["id"]
        table = read_parquet(layout.match_file(self.curation_out, sid))
        # duplicates and eval copies leave before sampling, with their reason (dedup.py)
        table, removed = dedup.apply_removed(table, self.curation_out, sid)
        chosen, keep, text_probs = sample_shard(table, self.probs, self.s.seed)
        stats = sample_stats(sid, table, chosen, keep, self.probs)
        stats["drops"].update(removed)
        if shard.get("kind") == "text":  # text-first: no images yet (pipelines/join.py)
            if self.s.mode == "offline":
                from worldclip.pipelines.join import write_kept

                write_kept(table, keep, chosen, text_probs,
                           storage.join(self.s.out, "kept", f"{sid}.parquet"))
            else:
                write_parquet(storage.join(self.s.out, "index", f"{sid}.parquet"),
                              text_index(table, text_probs))
        else:
            stats["files"] = write_wds(kept_rows(table, keep, chosen, text_probs, shard),
                                       layout.sample_tar(self.s.out, sid),
                                       self.s.pairs_per_shard, self.s.bytes_per_shard)
        storage.write_json(layout.sample_stats(self.s.out, sid), stats)
        return stats


def sample_stats(sid: str, table: pa.Table, chosen: np.ndarray, keep: np.ndarray,
                 probs: dict[str, np.ndarray]) -> dict[str, Any]:
    """Accounting of one shard's draw. Per-language tallies are in PAIRS, attributed to the
    pair's first caption's language (as lang_pairs_in of pass 1), so each data-card row adds
    up; plus kept pairs by the language of the caption drawn (docs/curation.md, "Data card")."""
    langs = table.column("langs").to_pylist()
    ids = table.column("entry_ids").to_pylist()
    no_threshold = np.array([not any(g in probs for g, e in zip(ls, es, strict=True) if e)
                             for ls, es in zip(langs, ids, strict=True)], dtype=bool)
    lang_matched: Counter = Counter()
    lang_kept: Counter = Counter()
    lang_kept_caption: Counter = Counter()
    for j in range(table.num_rows):
        lang_matched[langs[j][0]] += 1
        if keep[j]:
            lang_kept[langs[j][0]] += 1
            lang_kept_caption[langs[j][chosen[j]]] += 1
    return {"shard": sid, "pairs": table.num_rows, "kept": int(keep.sum()),
            "drops": {"no_threshold": int(no_threshold.sum()),
                      "sampled_out": int((~keep & ~no_threshold).sum())},
            "lang_matched": dict(lang_matched), "lang_kept": dict(lang_kept),
            "lang_kept_caption": dict(lang_kept_caption)}


def kept_rows(table: pa.Table, keep: np.ndarray, chosen: np.ndarray,
              text_probs: list[list[float]], shard: dict[str, Any]
              ) -> list[tuple[str, bytes | None, dict[str, Any]]]:
    """(key, image, meta with the drawn caption) of the kept pairs, the images read by
    reference from the raw shard (one coalesced read; pipelines/refs.py)."""
    idx = np.flatnonzero(keep)
    kept = table.take(pa.array(idx, pa.int64()))
    images = refs.read_images(shard["shard"], shard["kind"], kept, shard.get("identity"),
                              shard.get("image_column", ""))
    texts = kept.column("texts").to_pylist()
    langs = kept.column("langs").to_pylist()
    ids = kept.column("entry_ids").to_pylist()
    keys = kept.column("key").to_pylist()
    metas = kept.column("meta").to_pylist()
    rows = []
    for r, j in enumerate(idx.tolist()):
        c = int(chosen[j])
        meta = json.loads(metas[r]) if metas[r] else {}
        meta.update(key=keys[r], text=texts[r][c], texts=texts[r], lang=langs[r][c],
                    entry_ids=ids[r][c], prob=text_probs[j][c])
        rows.append((keys[r], images[r], meta))
    return rows


def text_index(table: pa.Table, text_probs: list[list[float]]) -> pa.Table:
    """Text-first online output: every pair with P > 0, its per-text P, no image yet."""
    any_p = np.array([max(p, default=0.0) > 0 for p in text_probs], dtype=bool)
    idx = table.filter(pa.array(any_p))
    idx = idx.append_column("text_probs", pa.array(
        [p for p, a in zip(text_probs, any_p, strict=True) if a], pa.list_(pa.float64())))
    idx = idx.append_column("image", pa.nulls(idx.num_rows, pa.binary()))
    return idx.select(INDEX_SCHEMA.names).cast(INDEX_SCHEMA)
