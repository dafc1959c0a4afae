"""Inputs are read-only (issue 18, case 1): no stage writes inside one of its inputs, and
nothing deletes a folder a run did not create."""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from worldclip.platform import owned, storage
from worldclip.platform.config import ConfigError, load_config
from worldclip.platform.overlap import STAGE_IO, check_stage_io, glob_base, location, overlaps

WORLDCLIP = Path(sys.executable).parent / "worldclip"


@pytest.mark.parametrize(("a", "b", "expected"), [
    ("/d/shards/*.tar", "/d", True),  # the case: output above the input
    ("/d/shards/*.tar", "/d/shards", True),
    ("/d/shards/*.tar", "/d/shards/out", True),  # output inside the input
    ("/d/shards/*.tar", "/d/shards2", False),  # a sibling sharing a name prefix
    ("/d/shards/", "/d/shards", True),
    ("/d/x/../shards/*.tar", "/d/shards", True),
    ("file:///d/shards/*.tar", "/d", True),
    ("s3://b/raw/*.tar", "s3a://b/raw/curated", True),
    ("s3://b/raw/*.tar", "s3://b/raw2", False),
    ("s3://b/raw/*.tar", "s3://c/raw", False),
    ("s3://b/raw/*.tar", "/b/raw", False),  # different filesystems
    ("s3://b/*.tar", "s3://b", True),
    ("s3://*.tar", "s3://b/x", True),  # a glob over every bucket
    ("/d/{a,b}/*.tar", "/d/c", False),
])
def test_overlaps_cases(a: str, b: str, expected: bool) -> None:
    assert overlaps(a, b) is expected
    assert overlaps(b, a) is expected


def test_glob_base() -> None:
    assert glob_base("/d/shards/*.tar") == "/d/shards"
    assert glob_base("s3://b/raw/shard-[0-9]*.tar") == "s3://b/raw"
    assert glob_base("s3://b/raw/x.tar") == "s3://b/raw/x.tar"
    assert glob_base("/*.tar") == "/"


def test_symlinked_output_into_an_input_is_caught(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    (tmp_path / "link").symlink_to(raw)
    assert overlaps(f"{raw}/*.tar", str(tmp_path / "link" / "curated"))
    assert not overlaps(f"{raw}/*.tar", str(tmp_path / "elsewhere"))


# ------------------------------------------------------------------ property test

_PARTS = st.sampled_from(["a", "b", "ab", "a.b", "..", ".", ""])
_SCHEMES = st.sampled_from(["s3://", "s3a://", "file://", ""])


@st.composite
def _urls(draw, base: str):
    scheme = draw(_SCHEMES)
    parts = draw(st.lists(_PARTS, min_size=0, max_size=4))
    tail = "/" if draw(st.booleans()) else ""
    if scheme.startswith("s3"):
        bucket = draw(st.sampled_from(["bk", "bk2"]))
        return f"{scheme}{bucket}/" + "/".join(parts) + tail
    return scheme + base + "/" + "/".join(parts) + tail


def _oracle_key(url: str) -> str:
    """Brute force: the location as one normalised string ending in '/'."""
    if "*" in url.rsplit("/", 1)[-1]:
        url = url.rsplit("/", 1)[0]
    if url.startswith(("s3://", "s3a://")):  # repeated slashes count as one (conservative)
        bucket, _, key = url.split("://", 1)[1].partition("/")
        return "s3:/" + bucket + posixpath.normpath(re.sub("/+", "/", "/" + key)).rstrip("/") + "/"
    path = os.path.normpath(re.sub("/+", "/", url.removeprefix("file://")))
    return "file:" + path.rstrip("/") + "/"


def _oracle(a: str, b: str) -> bool:
    ka, kb = _oracle_key(a), _oracle_key(b)
    return ka.startswith(kb) or kb.startswith(ka)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_property_no_stage_writes_inside_an_input(data) -> None:
    base = os.path.realpath("/tmp") + "/wc-prop"  # no symlinks below: the oracle is textual
    inp = data.draw(_urls(base)).rstrip("/") + "/*.tar"
    out = data.draw(_urls(base))
    expected = _oracle(inp, out)
    assert overlaps(inp, out) is expected
    assert overlaps(out, inp) is expected
    # the curate stage refuses exactly those pairs (before anything is written)
    cfg = OmegaConf.create({"curation": {
        "input": inp, "balanced_out": out, "out": "s3://unrelated-bucket/curated",
        "metadata": "s3://meta-bucket/metadata", "decontaminate": []}})
    if expected:
        with pytest.raises(ConfigError, match="curation.balanced_out.*curation.input"):
            check_stage_io("curate", cfg)
    else:
        check_stage_io("curate", cfg)


def test_every_stage_has_io_keys_that_exist() -> None:
    from worldclip.cli import STAGES

    cfg = load_config([])
    assert set(STAGES) <= set(STAGE_IO)
    for stage, (ins, outs) in STAGE_IO.items():
        for key in (*ins, *outs):
            assert OmegaConf.select(cfg, key, default="MISSING") != "MISSING", (stage, key)
        check_stage_io(stage, cfg)  # the defaults never overlap


def test_location_normalises() -> None:
    assert location("s3://b/x/../y/") == ("s3", ("b", "y"))
    assert location("s3a://b//y") == ("s3", ("b", "y"))
    assert location("s3://b/../..") == ("s3", ("b",))  # never climbs out of its bucket
    assert location("file:///x/./y") == location("/x/y")


# ------------------------------------------------------------------ the case, end to end

def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _refused(cwd: Path, *argv: str) -> str:
    """The installed `worldclip` from cwd: exit 2 and one line on stderr, which it returns."""
    p = subprocess.run([str(WORLDCLIP), *argv], cwd=cwd, capture_output=True, text=True,
                       timeout=120,
                       env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_ADDRESS": ""})
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert p.returncode == 2, p.stderr[-2000:]
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    return lines[0]


def test_cli_balanced_out_over_raw_shards_refused(tmp_path: Path) -> None:
    """curation.input='DIR/shards/*.tar' curation.balanced_out=DIR: exit 2, nothing written,
    raw shards intact (it used to write curated shards over them and later delete them)."""
    from worldclip.pipelines import world

    wcfg = load_config([f"storage.root={tmp_path / 'w'}", "world.pairs=200",
                        "world.pairs_per_shard=100", "world.formats=[wds]",
                        "world.concepts=20"])
    world.generate_world(wcfg.world)
    data = tmp_path / "DIR"
    (data / "shards").mkdir(parents=True)
    for tar in (tmp_path / "w" / "world" / "raw" / "wds").glob("*.tar"):
        shutil.copy(tar, data / "shards" / tar.name)
    shutil.copytree(tmp_path / "w" / "world" / "metadata", data / "metadata")
    before = _digests(data)
    assert len([k for k in before if k.endswith(".tar")]) == 2
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    for out_key in ("curation.balanced_out", "curation.out"):
        line = _refused(cwd, "curate", f"curation.input={data}/shards/*.tar",
                        f"curation.metadata={data}/metadata", f"{out_key}={data}",
                        f"storage.root={tmp_path / 'root'}")
        assert out_key in line and "curation.input" in line
        assert _digests(data) == before  # raw shards and metadata untouched, nothing added
        assert not (tmp_path / "root").exists() and list(cwd.iterdir()) == []


# ------------------------------------------------------------------ ownership of deletes

def test_remove_owned_refuses_a_folder_the_run_did_not_create(tmp_path: Path) -> None:
    foreign = tmp_path / "balanced"
    (foreign / "shards").mkdir(parents=True)
    (foreign / "shards" / "raw-00000.tar").write_bytes(b"precious")
    assert not owned.claim_dir(str(foreign))  # has content, no marker: not ours
    with pytest.raises(ConfigError, match="not created by worldclip"):
        owned.remove_owned(str(foreign / "shards"), "curation.balanced_out", owner=str(foreign))
    assert (foreign / "shards" / "raw-00000.tar").read_bytes() == b"precious"
    # a folder a run created (claimed while empty) is removable, and only inside its owner
    mine = tmp_path / "mine"
    assert owned.claim_dir(str(mine)) and owned.claim_dir(str(mine))
    (mine / "shards").mkdir()
    (mine / "shards" / "x.tar").write_bytes(b"x")
    with pytest.raises(ConfigError):
        owned.remove_owned(str(foreign / "shards"), "curation.balanced_out", owner=str(mine))
    owned.remove_owned(str(mine / "shards"), "curation.balanced_out", owner=str(mine))
    assert not (mine / "shards").exists() and (mine / owned.MARKER).exists()
    owned.remove_owned(str(mine / "absent"), "curation.balanced_out", owner=str(mine))


def test_remove_owned_on_s3(s3_prefix: str) -> None:
    foreign = storage.join(s3_prefix, "foreign")
    storage.write_text(storage.join(foreign, "shards", "a.tar"), "raw")
    assert not owned.claim_dir(foreign)
    with pytest.raises(ConfigError):
        owned.remove_owned(storage.join(foreign, "shards"), "curation.balanced_out",
                           owner=foreign)
    assert storage.read_text(storage.join(foreign, "shards", "a.tar")) == "raw"
    mine = storage.join(s3_prefix, "mine")
    assert owned.claim_dir(mine)
    storage.write_text(storage.join(mine, "shards", "a.tar"), "curated")
    owned.remove_owned(storage.join(mine, "shards"), "curation.balanced_out", owner=mine)
    assert not storage.exists(storage.join(mine, "shards", "a.tar"))


def test_world_never_deletes_tars_from_a_folder_it_did_not_create(tmp_path: Path) -> None:
    from worldclip.pipelines import world

    out = tmp_path / "mixed"
    (out / "raw" / "wds").mkdir(parents=True)
    (out / "raw" / "wds" / "user-data.tar").write_bytes(b"user's own shard")
    wcfg = load_config([f"world.out={out}", "world.pairs=100", "world.pairs_per_shard=100",
                        "world.formats=[wds]", "world.concepts=20"])
    world.generate_world(wcfg.world)
    assert (out / "raw" / "wds" / "user-data.tar").read_bytes() == b"user's own shard"
    # in a folder a world run created, stale shards of a larger earlier world still go
    own = tmp_path / "own"
    big = load_config([f"world.out={own}", "world.pairs=200", "world.pairs_per_shard=100",
                       "world.formats=[wds]", "world.concepts=20"])
    world.generate_world(big.world)
    assert len(list((own / "raw" / "wds").glob("*.tar"))) == 2
    small = load_config([f"world.out={own}", "world.pairs=100", "world.pairs_per_shard=100",
                         "world.formats=[wds]", "world.concepts=20"])
    world.generate_world(small.world)
    assert [p.name for p in (own / "raw" / "wds").glob("*.tar")] == ["shard-00000.tar"]


@pytest.mark.slow
def test_rebalance_replaces_only_a_sample_it_created(small_world, tmp_path: Path) -> None:
    """New thresholds into the same balanced_out: a folder a run created is replaced; one
    with someone else's files (and a stale thresholds.json) is refused, untouched."""
    from conftest import make_config

    from worldclip.pipelines import curate

    mine = tmp_path / "mine"
    first = curate.run_rebalance(make_config(small_world["root"], "curation.p=0.3",
                                             f"curation.balanced_out={mine}"))
    assert (mine / owned.MARKER).exists()
    second = curate.run_rebalance(make_config(small_world["root"], "curation.p=0.02",
                                              f"curation.balanced_out={mine}"))
    assert second["kept"] < first["kept"]
    assert len(list((mine / "stats").glob("*.json"))) == 4  # replaced, not mixed

    foreign = tmp_path / "foreign"
    (foreign / "shards").mkdir(parents=True)
    (foreign / "shards" / "precious.tar").write_bytes(b"raw data")
    (foreign / "thresholds.json").write_text('{"t_lang": {}}')
    with pytest.raises(ConfigError, match="curation.balanced_out.*not created by worldclip"):
        curate.run_rebalance(make_config(small_world["root"], "curation.p=0.3",
                                         f"curation.balanced_out={foreign}"))
    assert (foreign / "shards" / "precious.tar").read_bytes() == b"raw data"


def test_text_first_stages_guard_what_they_read(tmp_path: Path) -> None:
    """download-list reads the balanced output and join reads the match index: an output
    inside either is refused (not only one inside curation.input)."""
    cur = tmp_path / "curated"
    cfg = load_config([f"storage.root={tmp_path}", f"curation.out={cur}",
                       f"download.list_out={cur}/balanced/urls"])
    with pytest.raises(ConfigError, match="download.list_out=.*curation.balanced_out"):
        check_stage_io("download-list", cfg)
    cfg = load_config([f"storage.root={tmp_path}", f"curation.out={cur}",
                       f"download.images={tmp_path}/images",
                       f"download.joined_out={cur}/matches/joined"])
    with pytest.raises(ConfigError, match="download.joined_out=.*curation.out"):
        check_stage_io("join", cfg)
    check_stage_io("join", load_config([f"storage.root={tmp_path}",
                                        f"download.images={tmp_path}/images"]))


def test_cli_train_out_inside_the_raw_pool_refused(tmp_path: Path, ray_session) -> None:
    """Online data reads the raw shards by reference, so train.out inside their folder is an
    output inside an input: one line, exit 2, nothing written there."""
    from conftest import make_config

    from worldclip.pipelines import curate, world

    cfg = make_config(str(tmp_path / "w"), "world.pairs=300", "world.pairs_per_shard=150",
                      "world.formats=[wds]", "curation.mode=online", "curation.plots=false")
    world.run(cfg)
    curate.run(cfg)
    data = str(cfg.curation.balanced_out)
    raw_dir = storage.strip_scheme(storage.join(cfg.world.out, "raw", "wds"))
    before = _digests(Path(raw_dir))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    line = _refused(cwd, "train", f"train.data={data}", f"train.out={raw_dir}/run",
                    f"storage.root={tmp_path / 'root'}")
    assert "train.out" in line and "raw shard folder of train.data" in line
    assert _digests(Path(raw_dir)) == before and not (Path(raw_dir) / "run").exists()
