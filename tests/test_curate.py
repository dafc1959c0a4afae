"""Curation end to end on the real local Ray and the real S3 server: accounting, balancing,
offline shards, online index, rebalance without re-matching, ablation options."""

from __future__ import annotations

import io
import json
import tarfile
from collections import Counter

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import make_config

from worldclip.pipelines import curate, ingest, world
from worldclip.pipelines.metadata import MetadataError, MetadataStore, parse_entries
from worldclip.platform import storage


def _concepts_in_tars(urls: list[str]) -> Counter:
    c: Counter = Counter()
    for u in urls:
        with tarfile.open(fileobj=io.BytesIO(storage.read_bytes(u))) as t:
            for m in t:
                if m.name.endswith(".json"):
                    c[json.load(t.extractfile(m))["concept"]] += 1
    return c


@pytest.mark.slow
def test_curate_on_s3_end_to_end(s3_prefix, ray_session):
    cfg = make_config(s3_prefix)
    world.run(cfg)
    summary = curate.run(cfg)
    out = cfg.curation.balanced_out
    card = storage.read_json(storage.join(out, "datacard.json"))
    a = card["accounting"]
    # the identity, independently recomputed from the data card
    assert a["pairs_in"] == cfg.world.pairs == summary["pairs_in"]
    assert a["pairs_in"] == a["kept"] + sum(a["dropped"].values())
    assert a["dropped"]["no_match"] + a["dropped"]["unknown_language"] > 0  # junk captions
    assert a["dropped"]["sampled_out"] > 0
    # per-language thresholds, English keeps the t_en derived from p
    b = card["balancing"]
    assert b["p"] == 0.06 and b["t_lang"]["en"] == b["t_en"]
    assert set(b["t_lang"]) >= {"en", "ja", "zh", "ru"}
    assert card["metadata"]["sha256"]["en"] and card["lid"]["sha256"]
    for png in ("languages.png", "long_tail.png"):
        assert storage.read_bytes(storage.join(out, "plots", png))[:4] == b"\x89PNG"
    # head concepts capped, tail kept: compare per-concept counts before / after
    before = _concepts_in_tars(storage.glob(storage.join(cfg.world.out, "raw/wds/*.tar")))
    after = _concepts_in_tars(storage.glob(storage.join(out, "shards/*.tar")))
    assert sum(after.values()) == a["kept"]
    ranked = [c for c, _ in before.most_common() if c != -1]
    head, tail = ranked[:3], ranked[len(ranked) // 2:]
    head_keep = sum(after[c] for c in head) / sum(before[c] for c in head)
    tail_keep = sum(after[c] for c in tail) / sum(before[c] for c in tail)
    assert head_keep < 0.5 < 0.75 < tail_keep, (head_keep, tail_keep)
    assert after[-1] == 0  # junk never survives
    # the curated shards are WebDataset: Ray's own reader takes them
    path, fs = storage.ray_path(storage.join(out, "shards"))
    rows = ray_session.data.read_webdataset(path, filesystem=fs, decoder=None).take_all()
    assert len(rows) == a["kept"]


@pytest.mark.slow
def test_rebalance_reuses_matches_and_follows_threshold(small_world, tmp_path):
    cfg0 = small_world["cfg"]
    base = small_world["summary"]["kept"]
    match_files = storage.glob(storage.join(cfg0.curation.out, "matches", "*.parquet"))
    mtimes = [storage.filesystem(u).modified(storage.strip_scheme(u)) for u in match_files]
    kept = {}
    for p in (0.02, 0.3):
        cfg = make_config(small_world["root"], f"curation.p={p}",
                          f"curation.balanced_out={tmp_path}/p{p}")
        kept[p] = curate.run_rebalance(cfg)["kept"]
        card = storage.read_json(f"{tmp_path}/p{p}/datacard.json")
        assert card["accounting"]["pairs_in"] == 1200
    assert kept[0.02] < base < kept[0.3]
    # no re-matching: the match index was not rewritten
    assert mtimes == [storage.filesystem(u).modified(storage.strip_scheme(u))
                      for u in match_files]
    # same thresholds, same seed -> the same sample as the original run
    cfg = make_config(small_world["root"], f"curation.balanced_out={tmp_path}/same")
    assert curate.run_rebalance(cfg)["kept"] == base


@pytest.mark.slow
def test_online_index_and_ablation_modes(small_world, tmp_path):
    root = small_world["root"]
    cfg = make_config(root, "curation.mode=online", f"curation.balanced_out={tmp_path}/online")
    s = curate.run_rebalance(cfg)
    # online by reference: the balancing artifact only, nothing per pair is drawn or written
    assert s["kept"] is None and s["indexed"] == sum(
        st["matched"] for st in map(storage.read_json, storage.glob(
            f"{cfg.curation.out}/matches/*.stats.json")))
    assert not storage.glob(f"{tmp_path}/online/index/*") and not storage.glob(
        f"{tmp_path}/online/shards/*")
    src = ingest.Source.open(f"{tmp_path}/online")
    assert src.mode == "online" and src.balance is not None
    # the stream's epoch-0 draw equals the offline sample, pair for pair in number
    counts = ingest.file_row_counts(src, list(src.files), cfg.curation.seed, 0)
    assert sum(counts) == small_world["summary"]["kept"]
    probs = src.balance.probs()
    sizes = {g: len(v) for g, v in curate.load_counts(
        storage.join(cfg.curation.out, "counts.npz")).items()}
    assert {g: len(v) for g, v in probs.items()} == {g: n for g, n in sizes.items()
                                                     if g in src.balance.t_lang}
    assert all(((0.0 <= v) & (v <= 1.0)).all() for v in probs.values())
    # one t for all languages: every language uses t_en
    single = curate.run_rebalance(make_config(root, "curation.threshold_mode=single",
                                              f"curation.balanced_out={tmp_path}/single"))
    assert len(set(single["t_lang"].values())) == 1
    # unbalanced: every matched pair kept
    none = curate.run_rebalance(make_config(root, "curation.threshold_mode=none",
                                            f"curation.balanced_out={tmp_path}/none"))
    assert none["dropped"]["sampled_out"] == 0 and none["kept"] > small_world["summary"]["kept"]


@pytest.mark.slow
def test_merged_metadata_ablation(ray_session, tmp_path):
    cfg = make_config(str(tmp_path), "world.pairs=600", "curation.merged_metadata=true")
    world.run(cfg)
    s = curate.run(cfg)
    assert list(s["t_lang"]) == ["merged"]
    counts = curate.load_counts(storage.join(cfg.curation.out, "counts.npz"))
    assert list(counts) == ["merged"] and counts["merged"].dtype == np.uint64
    assert s["pairs_in"] == s["kept"] + sum(s["dropped"].values())


def test_metadata_validation_errors(tmp_path):
    with pytest.raises(MetadataError, match="must be a JSON list of strings"):
        parse_entries(b'{"dog": 1}', "m/en.json")
    with pytest.raises(MetadataError, match="are not strings"):
        parse_entries(b'["dog", 3]', "m/en.json")
    with pytest.raises(MetadataError, match="no <lang>.json"):
        MetadataStore(str(tmp_path))
    (tmp_path / "en.json").write_text('["dog", "hot dog"]')
    (tmp_path / "ja.json").write_text('["犬"]')
    (tmp_path / "manifest.json").write_text("{}")
    store = MetadataStore(str(tmp_path))
    assert store.languages == ["en", "ja"]  # manifest is not a language
    assert store.matcher("en").match("a hot dog") == {0, 1}
    merged = MetadataStore(str(tmp_path), merged=True)
    assert merged.entries("merged") == ["dog", "hot dog", "犬"]


def test_counts_are_a_sum_over_shards(tmp_path):
    import pyarrow as pa

    for i, (ids, n) in enumerate((([0, 2], [1, 5]), ([2, 3], [4, 1]))):
        t = pa.table({"lang": ["en", "en"], "entry_id": pa.array(ids, pa.int32()),
                      "count": pa.array(n, pa.uint64())})
        pq.write_table(t, tmp_path / f"{i}.counts.parquet")
    total = curate.sum_count_files([str(tmp_path / f"{i}.counts.parquet") for i in (0, 1)],
                                   {"en": 5})
    assert total["en"].tolist() == [1, 0, 9, 1, 0] and total["en"].dtype == np.uint64
