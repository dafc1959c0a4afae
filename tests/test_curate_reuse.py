"""Curation by reference, incremental curation and keyed reuse (docs/curation.md,
"Incremental curation and reuse"): a re-run equals a clean run over the new inputs, or stops
with a clear error -- never a silent mix of old and new results."""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from conftest import make_config

from worldclip.pipelines import curate, draw, ingest, layout, refs, world
from worldclip.pipelines.arrowio import read_parquet
from worldclip.platform import storage
from worldclip.platform.config import ConfigError
from worldclip.platform.lease import Lease

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pool(tmp_path_factory, ray_session) -> dict[str, Path]:
    """A 600-pair world in 4 WebDataset shards (read-only: tests copy what they change)."""
    root = tmp_path_factory.mktemp("reuse-world")
    cfg = make_config(str(root), "world.pairs=600", "world.pairs_per_shard=150",
                      "world.formats=[wds]")
    world.run(cfg)
    return {"shards": Path(cfg.world.out) / "raw" / "wds",
            "metadata": Path(cfg.world.out) / "metadata"}


def _setup(pool: dict[str, Path], tmp: Path, n: int | None = None) -> tuple[Path, Path]:
    """Copies of the pool's first n shards and of its metadata under tmp."""
    inp, meta = tmp / "in", tmp / "meta"
    inp.mkdir()
    for p in sorted(pool["shards"].glob("*.tar"))[:n]:
        shutil.copy2(p, inp / p.name)
    shutil.copytree(pool["metadata"], meta)
    return inp, meta


def _cfg(tmp: Path, inp: Path, meta: Path, out: str, *extra: str):
    return make_config(str(tmp), f"curation.input={inp}/*.tar", f"curation.metadata={meta}",
                       f"curation.out={tmp}/{out}", "curation.mode=online", *extra)


def _result(cfg) -> dict:
    """Everything a curation's consumers see: match index per shard, counts, t_lang and the
    epoch-0 and epoch-1 draws of the training stream (keys per file)."""
    c = cfg.curation
    man = storage.read_json(layout.manifest_file(c.out))
    tables = {sid: read_parquet(layout.match_file(c.out, sid)) for sid in man["shards"]}
    counts = curate.load_counts(layout.global_counts(c.out))
    src = ingest.Source.open(c.balanced_out)
    draws = {e: [[r["key"] for r in draw.draw_by_reference(src, f, 0, e, images=False)]
                 for f in src.files] for e in (0, 1)}
    return {"tables": tables, "counts": counts, "t_lang": src.balance.t_lang, "draws": draws}


def _assert_same(a: dict, b: dict) -> None:
    assert sorted(a["tables"]) == sorted(b["tables"])
    for sid, t in a["tables"].items():
        assert t.equals(b["tables"][sid]), sid
    assert sorted(a["counts"]) == sorted(b["counts"])
    for g, v in a["counts"].items():
        np.testing.assert_array_equal(v, b["counts"][g])
    assert a["t_lang"] == b["t_lang"]
    assert a["draws"] == b["draws"] and any(a["draws"][0])


def test_match_index_holds_references_not_images(pool, tmp_path):
    inp, meta = _setup(pool, tmp_path, 1)
    cfg = _cfg(tmp_path, inp, meta, "c")
    curate.run(cfg)
    (sid,) = storage.read_json(layout.manifest_file(cfg.curation.out))["shards"]
    t = read_parquet(layout.match_file(cfg.curation.out, sid))
    assert "image" not in t.column_names and t.num_rows > 0
    # every reference points at the member tarfile reads for that key
    (raw,) = inp.glob("*.tar")
    with tarfile.open(raw) as tar:
        members = {m.name: m for m in tar.getmembers()}
        st = storage.read_json(layout.stats_file(cfg.curation.out, sid))
        imgs = refs.read_images(str(raw), st["kind"], t, st["identity"])
        for key, name, img in zip(t.column("key").to_pylist(),
                                  t.column("ref_member").to_pylist(), imgs, strict=True):
            assert name.startswith(key + ".")
            assert img == tar.extractfile(members[name]).read()
    # the match index is small next to the pool: no image bytes in it (bench/bench_byref.py
    # measures the whole curation.out + the balancing artifact at 100k pairs)
    used = sum(f.stat().st_size for f in Path(cfg.curation.out, "matches").iterdir())
    assert used < 0.05 * raw.stat().st_size, used


def test_incremental_curation_equals_a_clean_run(pool, tmp_path):
    inp, meta = _setup(pool, tmp_path)
    late = sorted(inp.glob("*.tar"))[-1]
    aside = tmp_path / late.name
    late.rename(aside)
    cfg = _cfg(tmp_path, inp, meta, "inc")
    curate.run(cfg)
    aside.rename(late)  # the pool grows by one shard
    curate.run(cfg)
    card = storage.read_json(storage.join(cfg.curation.balanced_out, "datacard.json"))
    v = card["versions"]["this_run"]
    assert (v["reused"], v["added"], v["changed"], v["removed"]) == (3, 1, 0, 0)
    assert card["versions"]["before"]["counts_sha"] != card["versions"]["after"]["counts_sha"]
    clean = _cfg(tmp_path, inp, meta, "clean")
    curate.run(clean)
    _assert_same(_result(cfg), _result(clean))

    # a shard gone from the input leaves the counts; the result equals a clean run without it
    late.rename(aside)
    curate.run(cfg)
    v = storage.read_json(storage.join(cfg.curation.balanced_out,
                                       "datacard.json"))["versions"]["this_run"]
    assert (v["reused"], v["removed"]) == (3, 1) and v["removed_shards"] == [str(late)]
    clean3 = _cfg(tmp_path, inp, meta, "clean3")
    curate.run(clean3)
    _assert_same(_result(cfg), _result(clean3))


def _shuffle_metadata(meta: Path, tmp: Path) -> None:
    en = json.loads((meta / "en.json").read_text())
    (meta / "en.json").write_text(json.dumps(en[::-1]))


def _shorter_metadata(meta: Path, tmp: Path) -> None:
    en = json.loads((meta / "en.json").read_text())
    (meta / "en.json").write_text(json.dumps(en[: len(en) // 2]))


def _other_world_same_names(inp: Path, tmp: Path) -> None:
    cfg = make_config(str(tmp / "other"), "world.pairs=600", "world.pairs_per_shard=150",
                      "world.formats=[wds]", "world.seed=7")
    world.run(cfg)
    for p in (Path(cfg.world.out) / "raw" / "wds").glob("*.tar"):
        if (inp / p.name).exists():
            shutil.copy(p, inp / p.name)


def _recopied_after_truncation(inp: Path, tmp: Path) -> None:
    p = sorted(inp.glob("*.tar"))[0]
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])  # truncated copy ...
    st = p.stat()
    p.write_bytes(data)  # ... re-copied as the warning advises: same bytes, new identity
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))


@pytest.mark.parametrize("change", ["shuffled_metadata", "shorter_metadata", "langdetect",
                                    "merged_metadata", "other_world", "recopied"])
def test_a_stored_result_is_reused_only_under_the_same_key(pool, tmp_path, change):
    inp, meta = _setup(pool, tmp_path, 2)
    cfg = _cfg(tmp_path, inp, meta, "c")
    curate.run(cfg)
    extra = {"langdetect": ["curation.lid_backend=langdetect"],
             "merged_metadata": ["curation.merged_metadata=true"]}.get(change, [])
    {"shuffled_metadata": lambda: _shuffle_metadata(meta, tmp_path),
     "shorter_metadata": lambda: _shorter_metadata(meta, tmp_path),
     "other_world": lambda: _other_world_same_names(inp, tmp_path),
     "recopied": lambda: _recopied_after_truncation(inp, tmp_path)}.get(change, lambda: 0)()
    again = _cfg(tmp_path, inp, meta, "c", *extra)
    curate.run(again)
    v = storage.read_json(storage.join(again.curation.balanced_out,
                                       "datacard.json"))["versions"]["this_run"]
    assert v["changed"] == (1 if change == "recopied" else 2) and v["added"] == 0
    clean = _cfg(tmp_path, inp, meta, "clean", *extra)
    curate.run(clean)
    _assert_same(_result(again), _result(clean))
    # every entry id a pair carries is one its text matches (no stale matches)
    store_meta = {} if change == "merged_metadata" else {
        g: json.loads((meta / f"{g}.json").read_text()) for g in ("en",)}
    for t in _result(again)["tables"].values():
        for texts, langs, ids in zip(*(t.column(c).to_pylist()
                                       for c in ("texts", "langs", "entry_ids")), strict=True):
            for text, g, es in zip(texts, langs, ids, strict=True):
                for e in es if g in store_meta else ():
                    assert store_meta[g][e].lower() in text.lower(), (text, store_meta[g][e])


def test_rebalance_covers_exactly_the_last_curate_runs_shards(pool, tmp_path):
    inp, meta = _setup(pool, tmp_path)
    cfg = _cfg(tmp_path, inp, meta, "c", "curation.mode=offline")
    curate.run(cfg)
    for p in sorted(inp.glob("*.tar"))[2:]:
        p.unlink()
    sub = curate.run(cfg)  # the subset: 2 of the 4 stored shards
    again = curate.run_rebalance(_cfg(tmp_path, inp, meta, "c", "curation.mode=offline",
                                      f"curation.balanced_out={tmp_path}/rb"))
    assert again["pairs_in"] == sub["pairs_in"] == 300 and again["kept"] == sub["kept"]
    assert len(storage.glob(f"{tmp_path}/rb/stats/*.json")) == 2


def test_second_writer_is_refused(pool, tmp_path):
    inp, meta = _setup(pool, tmp_path, 1)
    cfg = _cfg(tmp_path, inp, meta, "c")
    storage.makedirs(cfg.curation.out)
    with Lease(cfg.curation.out, "curation.out"), pytest.raises(
            ConfigError, match=r"curation\.out=.*another run holds it"):
        curate.run(cfg)
    curate.run(cfg)  # released: the next run goes ahead


def test_inputs_whose_names_look_alike_never_share_files(pool, tmp_path):
    inp, meta = _setup(pool, tmp_path, 0)
    first, second = sorted(pool["shards"].glob("*.tar"))[:2]
    shutil.copy(first, inp / "x.tar")
    shutil.copy(second, inp / "x.counts.tar")  # once wrote over x.tar's counts file
    shutil.copy(second, inp / "y.tmp-1.tar")  # once silently skipped by the glob
    cfg = _cfg(tmp_path, inp, meta, "c")
    s = curate.run(cfg)
    assert s["pairs_in"] == 450
    man = storage.read_json(layout.manifest_file(cfg.curation.out))
    assert sorted(Path(v["url"]).name for v in man["shards"].values()) == [
        "x.counts.tar", "x.tar", "y.tmp-1.tar"]


def test_a_changed_raw_shard_stops_the_stream(pool, tmp_path):
    inp, meta = _setup(pool, tmp_path, 1)
    cfg = _cfg(tmp_path, inp, meta, "c")
    curate.run(cfg)
    src = ingest.Source.open(cfg.curation.balanced_out)
    assert draw.draw_by_reference(src, src.files[0], 0, 0)[0]["image"]
    (raw,) = inp.glob("*.tar")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:  # other bytes under the same name
        info = tarfile.TarInfo("a.txt")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"a"))
    raw.write_bytes(buf.getvalue())
    with pytest.raises(refs.StaleReference, match=rf"{raw}.*changed.*worldclip curate"):
        draw.draw_by_reference(src, src.files[0], 0, 0)
    # as the stream meets it: inside a Ray Data task, wrapped by Ray; and as Ray Train reports
    # a worker's error (text). The CLI prints find_stale's one line and exits 2 (cli.py).
    import ray

    def read(batch):
        draw.draw_by_reference(src, src.files[0], 0, 0)
        return batch

    with pytest.raises(Exception) as caught:
        ray.data.from_items([{"a": 1}]).map_batches(read, batch_size=1).take_all()
    assert not isinstance(caught.value, refs.StaleReference) or caught.value.__cause__
    for err in (caught.value, RuntimeError(f"training failed: {caught.value}")):
        stale = refs.find_stale(err)
        assert stale is not None and str(raw) in str(stale) and "worldclip curate" in str(stale)
        assert "\n" not in str(stale) and "Traceback" not in str(stale)
    assert refs.find_stale(RuntimeError("something else")) is None


@pytest.mark.parametrize("fmt", ["wds", "parquet"])
def test_online_stream_reads_images_by_reference_on_s3(s3_prefix, fmt):
    """The kept pairs' images come from the raw shards on S3 (ranged GETs for tars, row
    groups for Parquet), byte for byte the images the world wrote under those keys."""
    import pyarrow.parquet as pq

    cfg = make_config(s3_prefix, "world.pairs=300", "world.pairs_per_shard=150",
                      f"world.formats=[{fmt}]", "curation.mode=online",
                      f"curation.input=${{world.out}}/raw/{fmt}/*.{'tar' if fmt == 'wds' else fmt}")
    world.run(cfg)
    curate.run(cfg)
    truth = {}
    for u in storage.glob(storage.join(cfg.world.out, "raw", fmt, "*")):
        data = storage.read_bytes(u)
        if fmt == "wds":
            with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                truth.update({m.name.split(".")[0]: tar.extractfile(m).read()
                              for m in tar.getmembers() if m.name.endswith(".jpg")})
        else:
            t = pq.read_table(io.BytesIO(data))
            truth.update(zip(t.column("key").to_pylist(), t.column("image").to_pylist(),
                             strict=True))
    src = ingest.Source.open(cfg.curation.balanced_out)
    rows = [r for f in src.files for r in draw.draw_by_reference(src, f, 0, 0)]
    assert rows and all(r["image"] == truth[r["key"]] for r in rows)
