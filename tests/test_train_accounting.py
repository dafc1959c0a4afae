"""Every pair curation keeps is trained on or counted (issue #18, case 4; docs/operations.md
"Every kept pair is accounted for").

End to end on the session's Ray: a Parquet pair over the record limit is rejected by curation
under its own reason (not kept, then silently lost at ingest), and undecodable images planted
in curated shards show up in the training run's drop counts, metrics and per-epoch account.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from badinput import jpeg
from conftest import make_config

from worldclip.platform import storage

pytestmark = pytest.mark.slow


def test_parquet_pair_over_the_record_limit_is_rejected_by_curation(small_world, tmp_path):
    from worldclip.pipelines import curate

    md = Path(small_world["root"]) / "world" / "metadata"
    entries = json.loads((md / "en.json").read_text())[:6]
    big = b"\xff\xd8\xff" + bytes(300_000)  # "70 MB" scaled to the lowered limit below
    raw = tmp_path / "raw"
    raw.mkdir()
    pq.write_table(pa.table({"key": [f"k{i}" for i in range(6)],
                             "image": [big] + [jpeg(i) for i in range(1, 6)],
                             "text": [f"a photo of {e}" for e in entries]}),
                   raw / "p.parquet", compression="zstd")
    cfg = make_config(str(tmp_path / "root"), f"curation.input={raw}/*.parquet",
                      f"curation.metadata={md}", "curation.max_record_bytes=200000",
                      "curation.p=1.0", "curation.dedup=false")
    card = curate.run(cfg)
    assert card["pairs_in"] == 6
    assert card["dropped"].get("record_too_large") == 1
    assert card["kept"] + sum(card["dropped"].values()) == 6
    dc = storage.read_json(storage.join(cfg.curation.balanced_out, "datacard.json"))
    assert dc["limits"] == {"max_record_bytes": 200000, "max_shard_bytes": 1 << 30}
    assert any("record_too_large" in e for e in dc["errors"])


def _plant_undecodable(tar_path: Path) -> int:
    """Replace the first image member of a curated shard by bytes that are no image."""
    with tarfile.open(tar_path) as t:
        members = [(m, t.extractfile(m).read()) for m in t.getmembers()]
    buf = io.BytesIO()
    planted = 0
    with tarfile.open(fileobj=buf, mode="w") as t:
        for m, data in members:
            if not planted and m.name.endswith((".jpg", ".png", ".webp")):
                data, planted = b"\xff\xd8\xff" + b"not a jpeg" * 10, 1
            m.size = len(data)
            t.addfile(m, io.BytesIO(data))
    tar_path.write_bytes(buf.getvalue())
    return planted


def test_undecodable_images_in_curated_shards_are_counted_by_training(small_world, tmp_path):
    from worldclip.pipelines.train import stage as train_stage

    src = Path(small_world["cfg"].curation.balanced_out)
    data = tmp_path / "curated"
    shutil.copytree(src, data, ignore=shutil.ignore_patterns("tokenizer"))
    planted = sum(_plant_undecodable(p) for p in sorted((data / "shards").glob("*.tar")))
    kept = storage.read_json(str(data / "datacard.json"))["accounting"]["kept"]
    cfg = make_config(small_world["root"], f"train.data={data}", f"train.out={tmp_path}/runs",
                      "train.name=acct", "train.batch_size_per_worker=16", "train.epochs=1",
                      "train.warmup_steps=1", "train.log_every=100", "train.cpus_per_worker=1",
                      "train.ingest_cpus=0.25")
    result = train_stage.run(cfg)
    (acct,) = result["epoch_accounts"]
    print(f"planted {planted}, kept {kept}, epoch account {acct}")  # shown with pytest -s
    got = acct["dropped_at_ingest"].get("undecodable_image", 0)
    assert 1 <= got <= planted  # a planted row in the epoch's tail is not reached
    assert result["dropped_at_ingest"] == acct["dropped_at_ingest"]
    assert acct["missing"] == 0 and result["missing_rows"] == 0
    assert acct["kept"] == kept == (acct["trained"] + sum(acct["dropped_at_ingest"].values())
                                    + acct["trimmed"] + acct["not_reached"])
    assert acct["trained"] == result["trained_pairs"] > 0
    assert acct["not_reached"] < result["seen_pairs"] // max(1, result["steps"])  # the tail
