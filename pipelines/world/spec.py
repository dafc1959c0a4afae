"""The world spec: everything a shard needs, derived once from a validated world config.

Picklable, so Ray tasks receive it as is (pipelines/world/stage.py); every shard is then a
pure function of (spec, shard index).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from worldclip.pipelines.world.concepts import (
    Concept,
    build_metadata,
    concept_probabilities,
    select_concepts,
)
from worldclip.pipelines.world.languages import check_languages, language_probabilities
from worldclip.pipelines.world.render import concept_signatures
from worldclip.platform.rules import check_section


@dataclass
class WorldSpec:
    """Everything a shard needs, computed once from the config (picklable for Ray tasks)."""

    seed: int
    pairs: int
    pairs_per_shard: int
    image_size: int
    languages: list[str]
    concepts: list[Concept]
    concept_p: np.ndarray
    language_p: np.ndarray
    signatures: np.ndarray
    metadata: dict[str, list[str]]
    junk_share: float
    corrupt_share: float
    eval_per_concept: int
    _junk_matcher: Any = field(default=None, repr=False, compare=False)

    @property
    def num_shards(self) -> int:
        return math.ceil(self.pairs / self.pairs_per_shard)

    def shard_size(self, shard: int) -> int:
        return min(self.pairs_per_shard, self.pairs - shard * self.pairs_per_shard)

    def junk_matcher(self) -> Any:
        """One automaton over every language's entries; junk must match none (lazy, cached)."""
        if self._junk_matcher is None:
            from worldclip.pipelines.matching import Matcher

            entries = sorted({e for lang in self.languages for e in self.metadata[lang]})
            self._junk_matcher = Matcher(entries)
        return self._junk_matcher

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_junk_matcher"] = None  # automata do not pickle; rebuilt on first use
        return state


def build_spec(wcfg: Any) -> WorldSpec:
    """Validate a WorldConfig and derive concepts, frequencies, signatures and metadata.

    The value ranges are the RULES table's (platform/rules.py), applied here too because a
    section built in code never went through load_config; only which languages have names is
    this package's own check."""
    check_section(wcfg, "world")
    languages = list(wcfg.languages)
    check_languages(languages)
    concepts = select_concepts(languages, int(wcfg.concepts))
    seed = int(wcfg.seed)
    return WorldSpec(
        seed=seed, pairs=int(wcfg.pairs), pairs_per_shard=int(wcfg.pairs_per_shard),
        image_size=int(wcfg.image_size), languages=languages, concepts=concepts,
        concept_p=concept_probabilities(len(concepts), float(wcfg.zipf_a), seed),
        language_p=language_probabilities(languages, float(wcfg.english_share)),
        signatures=concept_signatures(len(concepts), seed),
        metadata=build_metadata(concepts, languages, int(wcfg.distractors)),
        junk_share=float(wcfg.junk_share), corrupt_share=float(wcfg.corrupt_share),
        eval_per_concept=int(wcfg.eval_per_concept))
