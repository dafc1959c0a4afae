"""Interop with the ecosystem's formats: img2dataset 1.47 output in, open_clip-ready shards out.

Fixtures are written exactly in img2dataset's layouts (its writer.py / downloader.py /
logger.py, as of 1.47): keys of 9 digits (shard id * 10^4 + row), per sample `KEY.jpg`
(`.png`/`.webp` with --encode_format) + `KEY.txt` + `KEY.json` (json.dumps(meta, indent=4)
with the input's columns, then key, status, error_message, width, height, original_width,
original_height, exif, sha256); tars written by webdataset's own TarWriter (what img2dataset
uses); beside every shard `NNNNN_stats.json` and -- for the tar and files outputs -- a
metadata-only `NNNNN.parquet` holding every row, failed ones included. Its Parquet output
holds every row with the image in a column named after the encode format, null for failures.
Curated output is read back with `webdataset` the way open_clip reads it.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset
from PIL import Image

from worldclip.pipelines import curate, ingest, wds
from worldclip.pipelines.curate import MatchSettings, ShardMatcher, write_wds
from worldclip.pipelines.shards import load_shard, parse_shard
from worldclip.platform.config import ConfigError

WORDS = ["photo", "dog", "cat", "beach", "red", "car", "house", "tree"]
CAPTIONS = [  # English, each matching metadata words
    "a photo of a brown dog running on the beach",
    "a red car parked in front of a white house",
    "a small cat sleeping under a green tree",
    "photo of a tree next to an old house",
    "a black dog and a grey cat on a red sofa",
]
I2D_SCHEMA = pa.schema([
    ("caption", pa.string()), ("url", pa.string()), ("key", pa.string()),
    ("status", pa.string()), ("error_message", pa.string()), ("width", pa.int32()),
    ("height", pa.int32()), ("original_width", pa.int32()), ("original_height", pa.int32()),
    ("exif", pa.string()), ("sha256", pa.string()),
])
WORLDCLIP = str(Path(sys.executable).parent / "worldclip")


def image_bytes(i: int, fmt: str) -> bytes:
    rng = np.random.default_rng(i)
    arr = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format={"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}[fmt])
    return buf.getvalue()


def i2d_rows(shard_id: int, n_ok: int, n_failed: int, fmt: str = "jpg",
             captions: list[str] | None = None) -> list[tuple[dict[str, Any], bytes | None]]:
    """(meta, image or None) per input row, as img2dataset's downloader builds them."""
    captions = captions or CAPTIONS
    rows = []
    for i in range(n_ok + n_failed):
        ok = i < n_ok
        img = image_bytes(shard_id * 100 + i, fmt) if ok else None
        meta = {"caption": captions[i % len(captions)], "url": f"http://127.0.0.1:8000/{i}.jpg",
                "key": f"{shard_id * 10_000 + i:09d}",
                "status": "success" if ok else "failed_to_download",
                "error_message": None if ok else "HTTP Error 404: Not Found",
                "width": 16 if ok else None, "height": 16 if ok else None,
                "original_width": 16 if ok else None, "original_height": 16 if ok else None,
                "exif": "{}" if ok else None,
                "sha256": hashlib.sha256(img).hexdigest() if ok else None}
        rows.append((meta, img))
    return rows


def _stats_json(folder: Path, name: str, rows: list) -> None:
    ok = sum(img is not None for _, img in rows)
    stats = {"count": len(rows), "successes": ok, "failed_to_download": len(rows) - ok,
             "failed_to_resize": 0, "duration": 0.5, "start_time": 1.7e9, "end_time": 1.7e9 + 0.5,
             "status_dict": {"success": ok, "HTTP Error 404: Not Found": len(rows) - ok}}
    (folder / f"{name}_stats.json").write_text(json.dumps(stats, indent=4))


def _sidecar_parquet(folder: Path, name: str, rows: list) -> None:
    t = pa.Table.from_pylist([m for m, _ in rows], schema=I2D_SCHEMA)
    pq.write_table(t, folder / f"{name}.parquet")


def write_i2d_wds(folder: Path, shard_id: int, rows: list, fmt: str = "jpg",
                  save_caption: bool = True) -> Path:
    """img2dataset --output_format webdataset: NNNNN.tar (successes only), sidecars."""
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{shard_id:05d}"
    with open(folder / f"{name}.tar", "wb") as f:
        tw = webdataset.TarWriter(f)
        for meta, img in rows:
            if img is None:
                continue
            sample = {"__key__": meta["key"], fmt: img}
            if save_caption:
                sample["txt"] = meta["caption"]
            sample["json"] = json.dumps(meta, indent=4)
            tw.write(sample)
        tw.close()
    _sidecar_parquet(folder, name, rows)
    _stats_json(folder, name, rows)
    return folder / f"{name}.tar"


def write_i2d_parquet(folder: Path, shard_id: int, rows: list, fmt: str = "jpg") -> Path:
    """img2dataset --output_format parquet: every row, image column named after the format."""
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{shard_id:05d}"
    schema = I2D_SCHEMA.append(pa.field(fmt, pa.binary()))
    t = pa.Table.from_pylist([{**m, fmt: img} for m, img in rows], schema=schema)
    pq.write_table(t, folder / f"{name}.parquet")
    _stats_json(folder, name, rows)
    return folder / f"{name}.parquet"


def write_i2d_files(folder: Path, shard_id: int, rows: list, fmt: str = "jpg") -> Path:
    """img2dataset --output_format files: NNNNN/KEY.jpg + KEY.txt + KEY.json, sidecars."""
    name = f"{shard_id:05d}"
    sub = folder / name
    sub.mkdir(parents=True, exist_ok=True)
    for meta, img in rows:
        if img is None:
            continue
        (sub / f"{meta['key']}.{fmt}").write_bytes(img)
        (sub / f"{meta['key']}.txt").write_text(meta["caption"])
        (sub / f"{meta['key']}.json").write_text(json.dumps(meta, indent=4))
    _sidecar_parquet(folder, name, rows)
    _stats_json(folder, name, rows)
    return sub


def _metadata(tmp: Path) -> str:
    d = tmp / "metadata"
    d.mkdir(exist_ok=True)
    (d / "en.json").write_text(json.dumps(WORDS))
    return str(d)


def _without_txt(tar: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(tar) as src, tarfile.open(fileobj=buf, mode="w") as dst:
        for m in src:
            if not m.name.endswith(".txt"):
                dst.addfile(m, src.extractfile(m))
    return buf.getvalue()


# ---------------------------------------------------------------- input, pure (no Ray)

@pytest.mark.parametrize("fmt", ["jpg", "png", "webp"])
def test_img2dataset_three_outputs_give_the_same_pairs(tmp_path: Path, fmt: str) -> None:
    rows = i2d_rows(0, n_ok=5, n_failed=2, fmt=fmt)
    tar = load_shard(str(write_i2d_wds(tmp_path / "wds", 0, rows, fmt)))
    files = load_shard(str(write_i2d_files(tmp_path / "files", 0, rows, fmt)))
    par = load_shard(str(write_i2d_parquet(tmp_path / "pq", 0, rows, fmt)))
    expected = [(m["key"], m["caption"]) for m, img in rows if img is not None]
    for res in (tar, files, par):
        # one text per pair: the caption in .txt and in json `caption` counts once
        assert [(r["key"], r["texts"]) for r in res.records] == [(k, [c]) for k, c in expected]
        assert all(r["image"] == img for r, (_, img) in zip(res.records, rows, strict=False))
        assert not res.errors
    # tar / files hold successes only; the Parquet keeps failures under their own reason
    assert tar.pairs_in == files.pairs_in == 5 and not tar.drops and not files.drops
    assert par.pairs_in == 7 and par.drops == {"download_failed": 2}
    meta = json.loads(par.records[0]["meta"])
    assert meta["status"] == "success" and meta["url"] and "caption" not in meta


def test_counts_identical_with_and_without_txt(tmp_path: Path) -> None:
    rows = i2d_rows(0, n_ok=5, n_failed=1)
    tar = write_i2d_wds(tmp_path / "wds", 0, rows)
    m = ShardMatcher(MatchSettings(metadata=_metadata(tmp_path)))
    with_txt = m.match_shard(tar.read_bytes(), "00000.tar")
    no_txt = m.match_shard(_without_txt(tar), "00000.tar")
    assert with_txt[1].equals(no_txt[1])  # sparse per-language entry counts
    assert with_txt[2] == no_txt[2]
    assert with_txt[2]["pairs_in"] == with_txt[2]["matched"] == 5
    counts = dict(zip(with_txt[1].column("entry_id").to_pylist(),
                      with_txt[1].column("count").to_pylist(), strict=True))
    expect = Counter(WORDS.index(w) for c in CAPTIONS for w in WORDS if f" {w} " in f" {c} ")
    assert counts == dict(expect)  # each caption counted once, not twice


def test_img2dataset_without_captions_is_no_text(tmp_path: Path) -> None:
    rows = i2d_rows(0, n_ok=3, n_failed=0)
    for meta, _ in rows:
        del meta["caption"]  # img2dataset without --caption_col: no .txt, no json caption
    tar = load_shard(str(write_i2d_wds(tmp_path, 0, rows, save_caption=False)))
    assert tar.pairs_in == 3 and tar.drops == {"no_text": 3}


def test_metaclip_attributes_are_separate_texts_deduplicated() -> None:
    from badinput import jpeg, tar_bytes

    meta = {"alt": "a dog on the beach", "title": "a dog on the beach",
            "data-image-title": "Beach dog", "url": "http://x/1.jpg"}
    data = tar_bytes([("k0.jpg", jpeg(0)), ("k0.txt", b"a dog on the beach"),
                      ("k0.json", json.dumps(meta).encode())])
    (rec,) = parse_shard(data, "m.tar").records
    assert rec["texts"] == ["a dog on the beach", "Beach dog"]
    assert json.loads(rec["meta"]) == {"url": "http://x/1.jpg"}


def test_huggingface_datasets_parquet(tmp_path: Path) -> None:
    img = image_bytes(3, "png")
    t = pa.table({"image": [{"bytes": img, "path": "a.png"}, {"bytes": None, "path": "b.png"}],
                  "text": ["a photo of a dog", "a photo of a cat"]})
    pq.write_table(t, tmp_path / "train-00000-of-00001.parquet")
    res = load_shard(str(tmp_path / "train-00000-of-00001.parquet"))
    assert res.pairs_in == 2 and res.drops == {"corrupt_record": 1}
    (rec,) = res.records
    assert rec["image"] == img and rec["texts"] == ["a photo of a dog"]


def test_sidecars_are_skipped_never_counted(tmp_path: Path, caplog) -> None:
    rows = i2d_rows(0, n_ok=2, n_failed=1)
    write_i2d_wds(tmp_path / "wds", 0, rows)
    write_i2d_files(tmp_path / "files", 1, rows)
    write_i2d_parquet(tmp_path / "pq", 2, rows)
    with caplog.at_level(logging.INFO, logger="worldclip.pipelines.curate"):
        got = curate._list_inputs(f"{tmp_path}/*/*")
    assert got == [f"{tmp_path}/files/00001", f"{tmp_path}/pq/00002.parquet",
                   f"{tmp_path}/wds/00000.tar"]
    skipped = [r.getMessage() for r in caplog.records if "skipping" in r.getMessage()]
    assert len(skipped) == 5  # 3 stats json + the sidecar Parquet of the tar and the folder
    assert any("00000.parquet" in s and "sidecar of 00000.tar" in s for s in skipped)
    with pytest.raises(ConfigError, match="no shards match .2 img2dataset sidecars skipped"):
        curate._list_inputs(f"{tmp_path}/wds/*.[pj]*")


# ---------------------------------------------------------------- output, pure

def test_curated_members_real_extension_txt_json_and_split(tmp_path: Path) -> None:
    rows = [(f"k{i}", image_bytes(i, fmt), {"text": f"caption {i}", "lang": "en"})
            for i, fmt in enumerate(["jpg", "png", "webp", "jpg", "png"])]
    url = str(tmp_path / "s.tar")
    files = write_wds(rows, url, pairs_per_shard=2)
    assert files == {"s.tar": 2, "s-00001.tar": 2, "s-00002.tar": 1}
    with tarfile.open(url) as t:
        assert t.getnames() == ["k0.jpg", "k0.txt", "k0.json", "k1.png", "k1.txt", "k1.json"]
        assert t.extractfile("k1.txt").read() == b"caption 1"
        assert json.loads(t.extractfile("k1.json").read()) == {"lang": "en"}  # the rest
    big = write_wds(rows, str(tmp_path / "b.tar"), bytes_per_shard=8000)
    assert sum(big.values()) == 5 and 1 < len(big) < 5
    for name in big:  # headers + padded data within the limit (the archive end adds <= 10 KiB)
        with tarfile.open(tmp_path / name) as t:
            assert sum(512 + -(-m.size // 512) * 512 for m in t) <= 8000, name
    assert write_wds([], str(tmp_path / "empty.tar")) == {}
    assert not (tmp_path / "empty.tar").exists()  # webdataset refuses empty tars
    assert wds.image_ext(b"not an image") is None


def test_no_usable_pair_or_every_shard_failed_is_an_error() -> None:
    broken = [{"pairs_in": 0, "drops": {}, "errors": [f"s{i}.tar: corrupt or truncated tar"]}
              for i in range(2)]
    with pytest.raises(ConfigError, match="every one of the 2 shards failed; first error: s0"):
        curate.require_usable("in/*", broken)
    failed = [{"pairs_in": 3, "drops": {"download_failed": 2, "no_text": 1}, "errors": []}]
    with pytest.raises(ConfigError, match="none of the 3 pairs .*download_failed 2, no_text 1"):
        curate.require_usable("in/*", failed)
    curate.require_usable("in/*", [*failed, {"pairs_in": 1, "drops": {"no_match": 1},
                                             "errors": []}])  # one usable pair: a valid run


def test_keep_nothing_warns_loudly(caplog) -> None:
    card = {"accounting": {"pairs_in": 4, "kept": 0, "dropped": {"no_match": 4}},
            "balancing": {"t_en": 1.0, "p": 0.06, "t_lang": {}}, "wall_s": 1.0}
    with caplog.at_level(logging.ERROR):
        out = curate.summary(card)
    assert "KEPT 0 of 4 pairs" in out["warning"]
    assert any("KEPT 0" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------- end to end (Ray)

def _curate_cfg(tmp: Path, pattern: str, *extra: str):
    from worldclip.platform.config import apply_storage, load_config

    cfg = load_config([f"storage.root={tmp}/data", f"curation.input={pattern}",
                       f"curation.metadata={_metadata(tmp)}", "curation.threshold_mode=none",
                       "curation.concurrency=2", *extra])
    apply_storage(cfg)
    return cfg


@pytest.mark.slow
def test_curate_img2dataset_outputs_read_back_the_open_clip_way(tmp_path: Path,
                                                                 ray_session) -> None:
    rows_t = i2d_rows(0, 5, 2, "jpg")
    rows_f = i2d_rows(1, 4, 1, "webp")
    rows_p = i2d_rows(2, 5, 3, "png")
    write_i2d_wds(tmp_path / "i2d", 0, rows_t, "jpg")
    write_i2d_files(tmp_path / "i2d", 1, rows_f, "webp")
    write_i2d_parquet(tmp_path / "i2d", 2, rows_p, "png")
    write_i2d_wds(tmp_path / "i2d", 3, i2d_rows(3, 0, 4))  # all failed: an empty tar
    cfg = _curate_cfg(tmp_path, f"{tmp_path}/i2d/*", "curation.pairs_per_output_shard=3")
    summary = curate.run(cfg)
    card = json.loads(Path(cfg.curation.balanced_out, "datacard.json").read_text())
    a = card["accounting"]
    assert card["inputs"]["shards"] == 4  # sidecars never counted as data
    # pairs in = successful downloads (+ the Parquet's failed rows, under their own reason)
    assert a["pairs_in"] == 5 + 4 + 5 + 3 and a["dropped"].get("download_failed") == 3
    assert a["pairs_in"] - a["dropped"]["download_failed"] == 14  # successes
    assert summary["kept"] == a["kept"] == 14 and "warning" not in summary
    shards = sorted(Path(cfg.curation.balanced_out, "shards").glob("*.tar"))
    # <input shard name>.<url hash>.tar (pipelines/layout.py), then -00001 past 3 pairs
    assert [re.sub(r"\.[0-9a-f]{10}", "", p.name) for p in shards] == [
        "00000-00001.tar", "00000.tar", "00001-00001.tar", "00001.tar", "00002-00001.tar",
        "00002.tar"]
    # open_clip's reading: rename(image="jpg;png;jpeg;webp", text="txt")
    ds = webdataset.WebDataset([str(p) for p in shards], shardshuffle=False)
    got = list(ds.decode("pil").to_tuple("jpg;png;webp", "txt", "__key__"))
    expected = {m["key"]: m["caption"] for rows in (rows_t, rows_f, rows_p)
                for m, img in rows if img is not None}
    assert {k: t for _, t, k in got} == expected and len(got) == 14
    assert all(img.size == (16, 16) for img, _, _ in got)
    with tarfile.open(shards[2]) as t:  # the webp input kept its real extension
        assert {n.rsplit(".", 1)[1] for n in t.getnames()} == {"webp", "txt", "json"}
    # the training stream reads the same pairs, with per-file row counts from the stats
    src = ingest.Source.open(cfg.curation.balanced_out)
    assert src.mode == "offline" and len(src.files) == 6
    rows = [ingest.read_rows("offline", f) for f in src.files]
    assert ingest.file_row_counts(src, list(src.files), 0, 0) == [len(r) for r in rows]
    assert {r["key"]: r["texts"][0] for rs in rows for r in rs} == expected


@pytest.mark.slow
def test_cli_exit_codes(tmp_path: Path) -> None:
    """The installed console script, from a fresh cwd: one-line errors, exit 2."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_USAGE_STATS_ENABLED="0", OMP_NUM_THREADS="1")
    write_i2d_wds(tmp_path / "side", 0, i2d_rows(0, 2, 1))
    write_i2d_parquet(tmp_path / "failed", 1, i2d_rows(1, 0, 3))
    meta = _metadata(tmp_path)
    cwd = tmp_path / "cwd"
    cwd.mkdir()

    def curate_cli(pattern: str) -> subprocess.CompletedProcess:
        return subprocess.run([WORLDCLIP, "curate", f"storage.root={tmp_path}/data",
                               f"curation.input={pattern}", f"curation.metadata={meta}",
                               "curation.threshold_mode=none"],
                              cwd=cwd, env=env, capture_output=True, text=True, timeout=300)

    only_sidecars = curate_cli(f"{tmp_path}/side/*.parquet")
    assert only_sidecars.returncode == 2, only_sidecars.stderr[-2000:]
    assert "no shards match (1 img2dataset sidecars skipped)" in only_sidecars.stderr
    all_failed = curate_cli(f"{tmp_path}/failed/*")
    assert all_failed.returncode == 2, all_failed.stderr[-2000:]
    err = [ln for ln in all_failed.stderr.splitlines() if ln.startswith("worldclip curate:")]
    assert len(err) == 1 and "none of the 3 pairs" in err[0] and "download_failed 3" in err[0]
    assert "Traceback" not in all_failed.stderr
