"""Exact dedup and eval decontamination of the match index, between pass 1 and the counts.

Why here: the global counts decide t_lang and every entry's probability, so a duplicated image
(the same photo re-hosted under many URLs) or a copy of a test image must leave the pool
BEFORE counting: counts are over distinct images and the eval table is honest by construction
(docs/curation.md, "Deduplication and decontamination").

Steps (each distributed and resumable like pass 1):

  hash       in pass 1 (curate.MatchWorker -> write_hash_columns), from the image bytes
             already in memory: the match index's hash columns beside each match file,
             <shard>.sha256.parquet (key, sha256 of the image bytes) and, when eval sets are
             listed, <shard>.phash.parquet (key, 64-bit DCT perceptual hash, imagehash's
             phash). Once per shard, ever. Shards matched before (no such file) are hashed
             by Ray Data tasks here (HashWorker), reading their match file once.
  compare    Ray tasks over chunks of shards: phash column vs every eval hash (Hamming <=
             curation.decontaminate_hamming) -> <out>/dedup/eval/<digest>/<shard>.parquet;
             <digest> names the eval sets + distance, so a new list re-compares from the stored
             phashes without decoding the pool again; a shard with its file is skipped.
  resolve    exact duplicates, GLOBALLY: Ray tasks read the sha256 column of chunks of shards
             and hash-partition it; one reduce task per partition sorts (sha256, shard
             path below the inputs' common folder, key, shard id) and marks every row after
             the first of its group `duplicate_image` (keep = the smallest (path, key):
             deterministic, the same on every run and wherever the pool lives). Rows hit by an
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

Modules (one job each):
    hashing.py   pure: sha256/phash columns, Hamming matching, exact duplicates, removed counts
    evalsets.py  curation.decontaminate specs and the cached phashes of the eval images
    stage.py     the Ray wiring above: `run`
    hooks.py     what curate calls (pass 1 hash columns, counts, pass 2 drops, data card)
    report.py    the thumbnail grid of eval duplicates
    tables.py    schemas and Parquet reads/writes of dedup's small tables
"""

from worldclip.pipelines.dedup.evalsets import eval_hashes, eval_specs
from worldclip.pipelines.dedup.hashing import (
    exact_duplicates,
    hamming_matches,
    hash_table,
    phash64,
    phash_batch,
    removed_counts,
)
from worldclip.pipelines.dedup.hooks import (
    apply_removed,
    datacard_section,
    hash_columns,
    hash_url,
    matched_images,
    state,
    subtract_removed,
    write_hash_columns,
)
from worldclip.pipelines.dedup.report import thumbnail_grid
from worldclip.pipelines.dedup.stage import HashWorker, resolve_exact, run, settings
from worldclip.pipelines.dedup.tables import HIT_SCHEMA, REMOVED_SCHEMA

__all__ = ["HIT_SCHEMA", "REMOVED_SCHEMA", "HashWorker", "apply_removed", "datacard_section",
           "eval_hashes", "eval_specs", "exact_duplicates", "hamming_matches", "hash_columns",
           "hash_table", "hash_url", "matched_images", "phash64", "phash_batch",
           "removed_counts", "resolve_exact", "run", "settings", "state", "subtract_removed",
           "thumbnail_grid", "write_hash_columns"]
