"""The balancing artifact: what online curation and `rebalance` produce, and all a Tune trial
changes (docs/curation.md, "Balancing artifact").

    <balanced_out>/balance.json              t_lang, seed, versions, the shards it covers
    <balanced_out>/balance-<version>.npz     per-language entry probabilities
                                             min(1, t_lang / count_e) (size: the metadata)

No per-pair data: the training stream computes each pair's P on the fly from its match index
row (entry ids) and these arrays, and reads the image by reference. The version is a hash of
everything the draws depend on (counts, thresholds, seed, dedup removals, the shards and
their match keys), so a stream can tell which balancing it trains on.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from worldclip.pipelines import layout
from worldclip.platform import owned, storage

FORMAT = 1


@dataclass(frozen=True)
class Balance:
    url: str  # curation.balanced_out
    version: str
    curation_out: str
    seed: int
    t_lang: dict[str, float]
    # per shard: id, shard (raw url), kind, identity, image_column, matched, key
    shards: tuple[dict[str, Any], ...] = field(default_factory=tuple)
    limits: dict[str, int] = field(default_factory=dict)

    @property
    def probs_url(self) -> str:
        return layout.balance_probs(self.url, self.version)

    def probs(self) -> dict[str, np.ndarray]:
        return load_probs(self.probs_url)


def write(balanced_out: str, curation_out: str, probs: dict[str, np.ndarray],
          t_lang: dict[str, float], seed: int, match_stats: list[dict[str, Any]],
          counts_sha: str, dedup_digest: str | None, limits: dict[str, int]) -> Balance:
    """Write the probabilities under their version, then balance.json (readers follow
    balance.json, so they never see a half-written artifact); older versions are removed."""
    shards = tuple({k: s.get(k) for k in ("id", "shard", "kind", "identity", "image_column",
                                          "matched", "key")} for s in match_stats)
    version = hashlib.sha256(json.dumps(
        {"format": FORMAT, "counts": counts_sha, "t_lang": t_lang, "seed": seed,
         "dedup": dedup_digest, "shards": [(s["id"], s["key"]) for s in shards]},
        sort_keys=True, default=str).encode()).hexdigest()[:16]
    b = Balance(balanced_out, version, curation_out, int(seed), dict(t_lang), shards,
                dict(limits))
    buf = io.BytesIO()
    np.savez_compressed(buf, **probs)
    storage.write_bytes(b.probs_url, buf.getvalue())
    storage.write_json(layout.balance_file(balanced_out),
                       {"format": FORMAT, "version": version, "curation_out": curation_out,
                        "seed": b.seed, "t_lang": b.t_lang, "counts_sha": counts_sha,
                        "dedup": dedup_digest, "limits": b.limits, "shards": list(shards)})
    for u in storage.glob(storage.join(balanced_out, "balance-*.npz")):
        if u != b.probs_url:
            owned.remove_owned(u, "curation.balanced_out", owner=balanced_out)
    return b


def read(balanced_out: str) -> Balance | None:
    url = layout.balance_file(balanced_out)
    if not storage.exists(url):
        return None
    d = storage.read_json(url)
    if d.get("format") != FORMAT:
        raise ValueError(f"{url}: balancing artifact format {d.get('format')} is not "
                         f"{FORMAT}; run `worldclip rebalance` to rewrite it")
    return Balance(balanced_out, d["version"], d["curation_out"], int(d["seed"]),
                   {g: float(t) for g, t in d["t_lang"].items()}, tuple(d["shards"]),
                   dict(d.get("limits") or {}))


@functools.lru_cache(maxsize=4)
def load_probs(url: str) -> dict[str, np.ndarray]:
    """Entry probabilities (cached per process: versioned file names never change content)."""
    with np.load(io.BytesIO(storage.read_bytes(url)), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}
