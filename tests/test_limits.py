"""Read limits on decompressed bytes and the training stream's accounting (issue #18, cases 3
and 4; docs/operations.md "Read limits", "Every kept pair is accounted for").

Pure: the parsers on real tar.gz / tar.xz / zstd Parquet bytes with lowered limits, the
ingest's read and preprocess on a real curated tar, and the per-epoch account. The peak-RSS
figures of the issue's cases are measured by bench/bench_memory.py.
"""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from badinput import jpeg, pair, tar_bytes

from worldclip.pipelines import ingest, wds
from worldclip.pipelines.limits import DEFAULT_LIMITS, ReadLimits
from worldclip.pipelines.shards import load_shard, parse_shard
from worldclip.platform import accounting
from worldclip.platform.config import ConfigError, load_config

MB = 1 << 20


def _blob(n: int) -> bytes:
    """n bytes that pass the image magic check and compress ~1000:1 (the issue's bombs)."""
    return b"\xff\xd8\xff" + b"\0" * (n - 3)


def _tar(pairs: list[tuple[str, bytes]], mode: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as t:
        for key, image in pairs:
            for name, data in ((f"{key}.jpg", image), (f"{key}.txt", b"a red apple")):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _accounted(res, n: int) -> None:
    assert len(res.records) + sum(res.drops.values()) == n == res.pairs_in


# ---------------------------------------------------------------- tar members

@pytest.mark.parametrize("mode,name", [("w:gz", "s.tar.gz"), ("w:xz", "s.tar")])
def test_compressed_tar_is_bounded_by_the_shard_budget(mode, name) -> None:
    data = _tar([(f"k{i}", _blob(3 * MB)) for i in range(6)], mode)
    assert len(data) < 200_000  # 18 MB of members in a small file
    res = parse_shard(data, name, ReadLimits(max_record_bytes=4 * MB, max_shard_bytes=10 * MB))
    assert [r["key"] for r in res.records] == ["k0", "k1", "k2"]  # 3 x 3 MB + captions
    assert res.drops == {"shard_too_large": 3}
    assert any("curation.max_shard_bytes" in e for e in res.errors)
    _accounted(res, 6)


def test_tar_member_over_the_record_limit_is_not_read() -> None:
    data = _tar([("small", jpeg(1)), ("big", _blob(2 * MB)), ("small2", jpeg(2))], "w:gz")
    res = parse_shard(data, "s.tar.gz", ReadLimits(max_record_bytes=1 * MB,
                                                   max_shard_bytes=100 * MB))
    assert [r["key"] for r in res.records] == ["small", "small2"]
    assert res.drops == {"record_too_large": 1}
    assert any("'big.jpg'" in e and "curation.max_record_bytes" in e for e in res.errors)
    _accounted(res, 3)


def test_default_limits_keep_ordinary_shards() -> None:
    data = tar_bytes([m for i in range(5) for m in pair(f"p{i}", seed=i)])
    res = parse_shard(data, "s.tar")
    assert len(res.records) == 5 and not res.drops
    assert DEFAULT_LIMITS == ReadLimits(64 * MB, 1 << 30)


def test_a_file_larger_than_the_budget_is_streamed_not_read_whole(tmp_path) -> None:
    path = tmp_path / "big.tar"
    path.write_bytes(_tar([(f"k{i}", _blob(2 * MB)) for i in range(3)], "w"))
    res = load_shard(str(path), ReadLimits(max_record_bytes=4 * MB, max_shard_bytes=3 * MB))
    assert [r["key"] for r in res.records] == ["k0"] and res.drops == {"shard_too_large": 2}


# ---------------------------------------------------------------- Parquet cells and row groups

def _parquet(table: pa.Table, row_group_size: int | None = None) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd", row_group_size=row_group_size)
    return buf.getvalue()


def test_parquet_single_huge_cell_is_refused_from_the_footer() -> None:
    data = _parquet(pa.table({"image": [_blob(20 * MB)], "text": ["a red apple"]}))
    assert len(data) < 50_000  # the "17 KB zstd Parquet", scaled down
    res = parse_shard(data, "p.parquet", ReadLimits(max_record_bytes=1 * MB,
                                                    max_shard_bytes=100 * MB))
    assert res.drops == {"record_too_large": 1} and not res.records
    assert any("not read" in e for e in res.errors)


def test_parquet_rows_over_the_record_limit_are_counted_and_the_rest_kept() -> None:
    images = [jpeg(0), _blob(2 * MB), jpeg(2), {"bytes": _blob(2 * MB), "path": "x.jpg"}]
    table = pa.table({"image": [i if isinstance(i, bytes) else i["bytes"] for i in images],
                      "text": ["a", "b", "c", "d"]})
    res = parse_shard(_parquet(table), "p.parquet", ReadLimits(1 * MB, 100 * MB))
    assert [r["key"] for r in res.records] == ["p_000000", "p_000002"]  # row indices kept
    assert res.drops == {"record_too_large": 2}
    # a Hugging Face datasets image struct {bytes, path} is measured through its fields
    hf = pa.table({"image": [{"bytes": jpeg(0), "path": "a"}, {"bytes": _blob(2 * MB),
                                                                 "path": "b"}],
                   "text": ["a", "b"]})
    res = parse_shard(_parquet(hf), "h.parquet", ReadLimits(1 * MB, 100 * MB))
    assert len(res.records) == 1 and res.drops == {"record_too_large": 1}


def test_parquet_row_groups_past_the_shard_budget_are_not_read() -> None:
    table = pa.table({"image": [_blob(1 * MB) for _ in range(8)],
                      "text": [f"t{i}" for i in range(8)]})
    res = parse_shard(_parquet(table, row_group_size=2), "p.parquet",
                      ReadLimits(max_record_bytes=2 * MB, max_shard_bytes=5 * MB))
    assert [r["key"] for r in res.records] == ["p_000000", "p_000001", "p_000002", "p_000003"]
    assert res.drops == {"shard_too_large": 4}
    _accounted(res, 8)


# ---------------------------------------------------------------- config

def test_limits_are_configurable_and_validated() -> None:
    from worldclip.pipelines.curate import MatchSettings

    cfg = load_config(["curation.max_record_bytes=1000", "curation.max_shard_bytes=5000"])
    assert MatchSettings.from_config(cfg.curation).limits == ReadLimits(1000, 5000)
    with pytest.raises(ConfigError, match="curation.max_shard_bytes"):
        load_config(["curation.max_shard_bytes=0"])
    card = {"limits": {"max_record_bytes": 1000, "max_shard_bytes": 5000}}
    assert ReadLimits.from_card(card) == ReadLimits(1000, 5000)
    assert ReadLimits.from_card(None) == DEFAULT_LIMITS


# ---------------------------------------------------------------- the training stream

@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> str:
    from worldclip.models.tokenizer import train_tokenizer

    d = tmp_path_factory.mktemp("tok")
    train_tokenizer([f"a photo of a red apple {i}" for i in range(40)], vocab_size=64,
                    out_dir=d)
    return str(d)


def _curated_tar(path, images: dict[str, bytes]) -> str:
    samples = [(k, (("jpg", img), ("txt", f"caption {k}".encode()),
                    ("json", json.dumps({"key": k}).encode()))) for k, img in images.items()]
    wds.write_tar(str(path), samples)
    return str(path)


def test_ingest_keeps_every_position_and_counts_drops_by_reason(tmp_path, tok_dir) -> None:
    """An undecodable image and a record over the curation's limit reach the trainer as
    counted drops, not as silently missing rows."""
    url = _curated_tar(tmp_path / "s.tar", {"a": jpeg(0), "bad": b"\xff\xd8\xffnot a jpeg",
                                            "big": _blob(300_000), "b": jpeg(1)})
    limits = ReadLimits(max_record_bytes=200_000, max_shard_bytes=100 * MB)
    rows = ingest.read_rows("offline", url, limits)
    assert len(rows) == 4  # the file keeps the row count its stats promise
    assert sorted(r["drop"] for r in rows) == ["", "", "", "record_too_large"]
    item = {"url": url, "skip": 0, "base": 0, "gb": 0, "world": 1, "rank": 0, "end": 0}
    out = ingest._file_batch({k: np.asarray([v]) for k, v in item.items()}, "offline", 0, 0,
                             tok_dir, 32, 0.9, limits)
    assert sorted(out["pos"].tolist()) == [0, 1, 2, 3]  # every position reaches the trainer
    kept, why = ingest.split_dropped(out)
    got = dict(zip(accounting.INGEST_DROP_REASONS, why.tolist(), strict=True))
    assert got["undecodable_image"] == 1 and got["record_too_large"] == 1
    assert len(kept["pos"]) == 2 and kept["pixel_values"].shape == (2, 3, 32, 32)
    assert np.abs(kept["pixel_values"]).sum() > 0


def test_online_index_rows_over_the_limit_keep_their_sampling_columns(tmp_path) -> None:
    t = pa.table({"key": ["a", "b"], "image": [jpeg(0), _blob(300_000)],
                  "texts": [["x"], ["y"]], "entry_ids": [[[1]], [[2]]],
                  "text_probs": [[1.0], [1.0]]})
    path = tmp_path / "i.parquet"
    path.write_bytes(_parquet(t, row_group_size=1))
    rows = ingest.read_rows("online", str(path), ReadLimits(200_000, 100 * MB))
    assert [r["drop"] for r in rows] == ["", "record_too_large"]
    assert rows[1]["image"] is None and rows[1]["entry_ids"] == [[2]]
    assert len(ingest.redraw(rows, "online", 0, 0)) == 2  # P = 1: both drawn, one to drop


def test_epoch_account_places_every_kept_pair_once() -> None:
    a = accounting.ingest_epoch_account(0, kept=100, consumed=96, trained=90,
                                        dropped={"undecodable_image": 2}, trimmed=4)
    assert a == {"epoch": 0, "kept": 100, "trained": 90,
                 "dropped_at_ingest": {"undecodable_image": 2}, "trimmed": 4, "missing": 0,
                 "not_reached": 4}
    assert accounting.ingest_epoch_account(0, 10, 8, 5, {}, 0)["missing"] == 3
    with pytest.raises(accounting.AccountingError, match="more pairs out"):
        accounting.ingest_epoch_account(0, 10, 8, 9, {}, 0)
    with pytest.raises(accounting.AccountingError, match="unknown ingest drop"):
        accounting.ingest_epoch_account(0, 10, 8, 7, {"gone": 1}, 0)

