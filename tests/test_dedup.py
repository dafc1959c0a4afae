"""Exact dedup and eval decontamination in curation (docs/curation.md): pure parts by hand,
then a pool with planted exact duplicates and planted transformed copies of eval images,
curated end to end on the real local Ray."""

from __future__ import annotations

import io
import json
import os
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import make_config
from eval_fixtures import photo_jpeg, write_xm3600
from PIL import Image

from worldclip.pipelines import curate, dedup, layout, world
from worldclip.platform import storage


def _sid(out: str, name: str) -> str:
    """The id (pipelines/layout.py) under which curation wrote the shard called `name`."""
    (stats,) = storage.glob(storage.join(out, "matches", f"{name}.*.stats.json"))
    return storage.read_json(stats)["id"]


def test_exact_duplicates_keep_smallest_shard_key():
    t = pa.table({"shard": ["b", "a", "a", "c", "b"], "key": ["k1", "k9", "k2", "k0", "k5"],
                  "sha256": ["x", "x", "y", "x", "z"]})
    d = dedup.exact_duplicates(t)
    got = sorted(zip(d.column("shard").to_pylist(), d.column("key").to_pylist(),
                     d.column("owner").to_pylist(), strict=True))
    assert got == [("b", "k1", "a/k9"), ("c", "k0", "a/k9")]
    # shard ids hash the raw shard's URL; copies are ordered by the shard's path below the
    # inputs' folder, so the same copy is kept wherever the pool lives -- also between two
    # crawls' 00000.tar with the same keys (img2dataset numbers every crawl from 0)
    kept = set()
    for root in ("/tmp/a", "s3://bucket/pool/deeper"):
        urls = [f"{root}/crawl{c}/{n}.tar" for c in (2, 1) for n in ("00001", "00000")]
        rel = layout.relative_names(urls)
        t = pa.table({"shard": [layout.shard_id(u) for u in urls], "key": ["k"] * 4,
                      "sha256": ["x"] * 4, "name": [rel[u] for u in urls]})
        (owner,) = set(dedup.exact_duplicates(t).column("owner").to_pylist())
        kept.add(next(rel[u] for u in urls if layout.shard_id(u) == owner.split("/")[0]))
    assert kept == {"crawl1/00000.tar"}


def test_hamming_matches_and_removed_counts():
    evals = np.array([0, 0xFFFF], dtype=np.uint64)
    pool = np.array([0b111, 0xFFFF ^ 0b1, 1 << 40 | 0xFFFFFF], dtype=np.uint64)
    rows, near, dist = dedup.hamming_matches(pool, evals, 3)
    assert rows.tolist() == [0, 1] and near.tolist() == [0, 1] and dist.tolist() == [3, 1]
    m = pa.table({"key": ["a", "b"], "langs": [["en", "de"], ["en"]],
                  "entry_ids": [[[1, 2], [5]], [[2]]]})
    c = dedup.removed_counts(m, {"a"})
    assert list(zip(*(c.column(x).to_pylist() for x in ("lang", "entry_id", "count")),
                    strict=True)) == [("de", 5, 1), ("en", 1, 1), ("en", 2, 1)]


def test_vectorized_resolution_and_counts_equal_their_definition():
    """exact_duplicates and removed_counts (Arrow, vectorized) against the plain loops that
    define them, on random tables with ties, empty groups and chunked columns."""
    from collections import Counter

    rng = np.random.default_rng(3)
    s = pa.string()
    for _ in range(200):
        n = int(rng.integers(0, 30))
        t = pa.table({"shard": pa.array([str(x) for x in rng.choice(list("abc"), n)], s),
                      "key": pa.array([f"k{x}" for x in rng.integers(0, 9, n)], s),
                      "sha256": pa.array([str(x) for x in rng.choice(list("wxyz"), n)], s)})
        if n > 1:
            t = pa.concat_tables([t.slice(0, n // 2), t.slice(n // 2)])
        want, owner, prev = [], "", None
        rows = sorted(zip(t.column("sha256").to_pylist(), t.column("shard").to_pylist(),
                          t.column("key").to_pylist()))
        for h, sh, k in rows:
            if h == prev:
                want.append({"shard": sh, "key": k, "owner": owner})
            else:
                owner, prev = f"{sh}/{k}", h
        assert dedup.exact_duplicates(t).to_pylist() == want

        keys = [f"r{i}" for i in range(n)]
        langs = [[str(g) for g in rng.choice(["en", "de", "fr"], int(rng.integers(0, 3)))]
                 for _ in range(n)]
        ids = [[[int(e) for e in rng.integers(0, 6, int(rng.integers(0, 3)))] for _ in row]
               for row in langs]
        m = pa.table({"key": pa.array(keys, s), "langs": pa.array(langs, pa.list_(s)),
                      "entry_ids": pa.array(ids, pa.list_(pa.list_(pa.int32())))})
        gone = {k for k in keys if rng.random() < 0.5} | {"not-in-table"}
        cnt = Counter((g, e) for k, row_l, row_i in zip(keys, langs, ids, strict=True)
                      if k in gone for g, e_list in zip(row_l, row_i, strict=True)
                      for e in e_list)
        got = dedup.removed_counts(m, gone)
        assert list(zip(*(got.column(c).to_pylist() for c in ("lang", "entry_id", "count")),
                        strict=True)) == [(g, e, c) for (g, e), c in sorted(cnt.items())]


def test_batched_phash_is_imagehash_phash():
    rng = np.random.default_rng(1)
    jpegs = [photo_jpeg(rng, size=s) for s in (32, 64, 200, 333)]
    pngs = []
    for j in jpegs:
        buf = io.BytesIO()
        Image.open(io.BytesIO(j)).save(buf, "PNG")
        pngs.append(buf.getvalue())
    # PIL path: bit for bit imagehash.phash; libjpeg-turbo's scaled decode: within 2 bits
    assert dedup.phash_batch(pngs) == [dedup.phash64(p) for p in pngs]
    for fast, ref in zip(dedup.phash_batch(jpegs), [dedup.phash64(p) for p in pngs],
                         strict=True):
        assert bin(fast ^ ref).count("1") <= 2
    assert dedup.phash_batch([b"not an image", None]) == [None, None]


def _enc(im: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def transformed_copies(data: bytes) -> dict[str, bytes]:
    """The copies a crawler finds of a test image: resized, re-encoded, slightly cropped."""
    im = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = im.size
    c = max(1, round(0.03 * w))
    return {"resize_up": _enc(im.resize((w * 2, h * 2), Image.BICUBIC)),
            "resize_down": _enc(im.resize((w * 3 // 4, h * 3 // 4), Image.LANCZOS)),
            "jpeg_q60": _enc(im, quality=60),
            "crop_3pct": _enc(im.crop((c, c, w - c, h - c)))}


def _meta(parts: dict[str, bytes], key: str) -> bytes:
    """The donor's json (texts that match) under the planted record's own key."""
    meta = json.loads(parts["json"])
    meta["key"] = key
    return json.dumps(meta).encode()


def _read_tar(path: str) -> list[tuple[str, dict[str, bytes]]]:
    out: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as t:
        for m in t:
            key, _, ext = m.name.partition(".")
            out.setdefault(key, {})[ext] = t.extractfile(m).read()
    return list(out.items())


def _write_tar(path: str, records: list[tuple[str, dict[str, bytes]]]) -> None:
    with tarfile.open(path, "w") as t:
        for key, parts in records:
            for ext, data in parts.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))


def _removed(out: str) -> dict[str, str]:
    got = {}
    for u in storage.glob(storage.join(out, "dedup", "removed", "*.parquet")):
        if u.endswith(".counts.parquet"):
            continue
        t = pq.read_table(u)
        for k, r in zip(t.column("key").to_pylist(), t.column("reason").to_pylist(),
                        strict=True):
            got[k] = r
    return got


def test_eval_hashes_in_batches_equal_one_pass_and_images_stay_lazy(tmp_path, monkeypatch):
    from worldclip.pipelines.dedup import evalsets

    rng = np.random.default_rng(3)
    xm = str(tmp_path / "xm3600")
    images = [photo_jpeg(rng) for _ in range(7)]
    write_xm3600(xm, images, {"en": [["a photo"]] * 7})
    from worldclip.pipelines.benchmarks import normalize_spec

    spec = normalize_spec(xm, "curation.decontaminate")
    whole, samples = evalsets.eval_hashes([spec], str(tmp_path / "c1"))
    monkeypatch.setattr(evalsets, "HASH_BATCH", 2)
    batched, _ = evalsets.eval_hashes([spec], str(tmp_path / "c2"))
    assert whole.num_rows == 7 and whole.to_pylist() == batched.to_pylist()
    lazy = samples[spec["name"]]
    assert isinstance(lazy, evalsets.EvalImages) and len(lazy) == 7
    assert sorted(lazy[k] for k in lazy) == sorted(images)  # read on lookup, same bytes


@pytest.mark.slow
def test_planted_duplicates_and_eval_copies_dropped_nothing_else(tmp_path, ray_session):
    rng = np.random.default_rng(7)
    xm = str(tmp_path / "xm3600")
    eval_images = [photo_jpeg(rng) for _ in range(5)]
    write_xm3600(xm, eval_images, {"en": [["a photo"]] * 5, "de": [["ein Foto"]] * 5})
    cfg = make_config(str(tmp_path / "root"), f"curation.decontaminate=[{xm}]")
    world.run(cfg)
    raw = sorted(storage.glob(storage.join(cfg.world.out, "raw", "wds", "*.tar")))
    donors = [(k, p) for k, p in _read_tar(raw[0]) if b'"concept": -1' not in p["json"]][:40]
    planted: dict[str, str] = {}
    records = []
    for i, (_key, parts) in enumerate(donors[:8]):  # exact copies of pool images
        records.append((f"planted_dup_{i:03d}", {"jpg": parts["jpg"],
                                                  "json": _meta(parts, f"planted_dup_{i:03d}")}))
        planted[f"planted_dup_{i:03d}"] = "duplicate_image"
    j = 8
    for e, img in enumerate(eval_images):  # transformed copies of eval images
        for name, data in {"exact": img, **transformed_copies(img)}.items():
            key = f"planted_eval_{e}_{name}"
            records.append((key, {"jpg": data, "json": _meta(donors[j][1], key)}))
            planted[key] = "eval_duplicate"
            j += 1
    _write_tar(os.path.join(os.path.dirname(storage.strip_scheme(raw[0])), "shard-00900.tar"),
               records)
    curate.run(cfg)
    out = cfg.curation.out
    matched = set(pq.read_table(layout.match_file(out, _sid(out, "shard-00900")))
                  .column("key").to_pylist())
    assert len(matched & set(planted)) >= 20, "planted captions should match"
    # hash columns cover exactly the matched pairs: an unmatched copy never owns an image
    sha = pq.read_table(dedup.hash_url(out, _sid(out, "shard-00900"), "sha256"))
    assert set(sha.column("key").to_pylist()) == matched
    removed = _removed(out)
    # every planted copy that reached the match index is dropped with its reason ...
    assert {k: planted[k] for k in matched & set(planted)} == \
        {k: removed.get(k) for k in matched & set(planted)}
    # ... and nothing else is (no false positive on the embedded world's pool)
    assert set(removed) <= set(planted)
    card = storage.read_json(storage.join(cfg.curation.balanced_out, "datacard.json"))
    a = card["accounting"]
    assert a["pairs_in"] == a["kept"] + sum(a["dropped"].values())
    n_eval = sum(1 for k in matched if planted.get(k) == "eval_duplicate")
    n_dup = sum(1 for k in matched if planted.get(k) == "duplicate_image")
    assert a["dropped"]["eval_duplicate"] == n_eval and a["dropped"]["duplicate_image"] == n_dup
    assert card["dedup"]["eval_duplicate_by_set"] == {"xm3600": n_eval}
    assert storage.read_bytes(card["dedup"]["examples_png"])[:4] == b"\x89PNG"
    # counts are over distinct, clean images: the planted shard adds nothing to them
    counts = curate.load_counts(storage.join(out, "counts.npz"))
    added = pq.read_table(layout.counts_file(out, _sid(out, "shard-00900")))
    removed_c = pq.read_table(storage.join(out, "dedup", "removed",
                                           f"{_sid(out, 'shard-00900')}.counts.parquet"))
    assert added.column("count").to_pylist() and sorted(
        zip(*(added.column(x).to_pylist() for x in ("lang", "entry_id", "count")))) == sorted(
        zip(*(removed_c.column(x).to_pylist() for x in ("lang", "entry_id", "count"))))
    assert all(int(v.sum()) >= 0 for v in counts.values())

    # incremental: a new shard with one more copy; old shards are not hashed again
    sha_file = dedup.hash_url(out, _sid(out, "shard-00000"), "sha256")
    before = os.path.getmtime(storage.strip_scheme(sha_file))
    grid = storage.strip_scheme(storage.join(out, "dedup", "eval_duplicates.png"))
    grid_before = os.path.getmtime(grid)
    _write_tar(os.path.join(os.path.dirname(storage.strip_scheme(raw[0])), "shard-00901.tar"),
               [("late_copy", {"jpg": donors[0][1]["jpg"],
                               "json": _meta(donors[0][1], "late_copy")})])
    curate.run(cfg)
    removed2 = _removed(out)
    if "late_copy" in set(pq.read_table(layout.match_file(out, _sid(out, "shard-00901")))
                          .column("key").to_pylist()):
        assert removed2["late_copy"] == "duplicate_image"
    assert {k: v for k, v in removed2.items() if k != "late_copy"} == removed
    assert os.path.getmtime(storage.strip_scheme(sha_file)) == before
    # the same eval hits: the thumbnail grid is not drawn again
    assert os.path.getmtime(grid) == grid_before

    # the eval set rewritten in place (same URL, other images): hashed and compared again,
    # so its old copies are no longer removed
    write_xm3600(xm, [photo_jpeg(rng) for _ in range(5)],
                 {"en": [["a photo"]] * 5, "de": [["ein Foto"]] * 5})
    curate.run(cfg)
    assert "eval_duplicate" not in set(_removed(out).values())

    # the global resolution does not depend on how many reduce tasks share it
    names = sorted(storage.read_json(layout.manifest_file(out))["shards"])
    one, three = (dedup.resolve_exact(out, names, p) for p in (1, 3))

    def rows(t):
        return sorted(zip(*(t.column(x).to_pylist() for x in ("shard", "key", "owner")),
                          strict=True))

    assert rows(one) and rows(one) == rows(three)
