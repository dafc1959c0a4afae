"""Curation: raw shards -> LID -> per-language matching -> global counts -> t_lang -> sample.

"Match once, rebalance many" (docs/architecture.md, docs/curation.md):
    match.py     pass 1, per shard: the match index (by reference, no image bytes), counts
    counts.py    the global counts over exactly the shards a run covers
    balance.py   the balancing artifact (online mode, rebalance, Tune trials)
    sample.py    pass 2, per shard: offline WebDataset shards / text-first lists
    datacard.py  accounting, thresholds and versions
    stage.py     the Ray wiring: `worldclip curate` (incremental, keyed reuse) and `rebalance`
File names: pipelines/layout.py.
"""

from worldclip.pipelines.curate.counts import load_counts, sum_count_files
from worldclip.pipelines.curate.datacard import require_usable, summary
from worldclip.pipelines.curate.match import (
    INDEX_SCHEMA,
    MATCH_SCHEMA,
    MatchSettings,
    ShardMatcher,
)
from worldclip.pipelines.curate.sample import sample_shard, write_wds
from worldclip.pipelines.curate.stage import _list_inputs, run, run_rebalance

__all__ = ["INDEX_SCHEMA", "MATCH_SCHEMA", "MatchSettings", "ShardMatcher", "_list_inputs",
           "load_counts", "require_usable", "run", "run_rebalance", "sample_shard",
           "sum_count_files", "summary", "write_wds"]
