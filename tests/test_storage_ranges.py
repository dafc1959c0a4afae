"""Raw shards by reference: byte-range planning and reads, shard identity, temp-file glob."""

from __future__ import annotations

import io
import os
import tarfile
import time

import pytest

from worldclip.platform import ranges, storage
from worldclip.platform.ranges import plan_ranges

# ---------------------------------------------------------------- plan_ranges (pure)

def test_plan_empty():
    assert plan_ranges([], 1000) == []
    assert plan_ranges([(5, 0)], 1000) == []


def test_plan_coalesces_ranges_within_gap():
    # gaps: 10..20 is 10 bytes (<= gap 10: merge), 30..100 is 70 bytes (> gap: split)
    assert plan_ranges([(0, 10), (20, 10), (100, 5)], 10_000, gap=10) == [(0, 30), (100, 105)]
    assert plan_ranges([(0, 10), (21, 10)], 10_000, gap=10) == [(0, 10), (21, 31)]
    assert plan_ranges([(0, 10), (21, 10)], 10_000, gap=11) == [(0, 31)]


def test_plan_sorts_and_handles_duplicates_and_overlaps():
    ranges = [(500, 10), (0, 10), (500, 10), (505, 20)]
    assert plan_ranges(ranges, 10_000, gap=0) == [(0, 10), (500, 525)]


def test_plan_switches_to_whole_file():
    # 50 of 100 bytes wanted -> one sequential read of the whole file
    assert plan_ranges([(0, 25), (75, 25)], 100, gap=0) == [(0, 100)]
    assert plan_ranges([(0, 24), (75, 25)], 100, gap=0) == [(0, 24), (75, 100)]
    assert plan_ranges([(0, 24), (75, 25)], 100, gap=0, whole_fraction=0.4) == [(0, 100)]
    # duplicates are counted once: 2 x 30 bytes of the same member is 30% of the file
    assert plan_ranges([(10, 30), (10, 30)], 100, gap=0) == [(10, 40)]


# ---------------------------------------------------------------- read_ranges on a real tar

def _write_tar(n: int = 12) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for i in range(n):
            for ext, data in ((".jpg", os.urandom(3000 + 997 * i)),
                              (".txt", f"caption {i}".encode())):
                info = tarfile.TarInfo(f"{i:09d}{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _check_members(url: str, raw: bytes) -> None:
    with tarfile.open(fileobj=io.BytesIO(raw)) as tf:
        members = tf.getmembers()
        want = {m.name: tf.extractfile(m).read() for m in members}
    spans = [(m.offset_data, m.size) for m in members]
    size = ranges.identity(url)["size"]
    assert size == len(raw)
    # sparse pick (every 4th member, tiny gap): several ranged GETs, input order kept
    pick = list(reversed(spans[::4])) + [spans[0]]
    plan = plan_ranges(pick, size, gap=16)
    assert 1 < len(plan) <= len(pick) and plan != [(0, size)]
    got = ranges.read_ranges(url, pick, gap=16)
    names = [members[i].name for i in range(0, len(members), 4)][::-1] + [members[0].name]
    assert got == [want[n] for n in names]
    # all members: one whole-file read, still every member's exact bytes
    assert plan_ranges(spans, size) == [(0, size)]
    assert ranges.read_ranges(url, spans, size=size) == [want[m.name] for m in members]
    # a range past the end is a stale reference naming the url
    with pytest.raises(ValueError, match="stale") as e:
        ranges.read_ranges(url, [(size - 10, 20)])
    assert url in str(e.value)
    # a size that claims more than the file has (the file shrank): also stale
    with pytest.raises(ValueError, match="stale"):
        ranges.read_ranges(url, [(size, 100)], size=size + 100, whole_fraction=2.0)
    assert ranges.read_range(url, spans[1][0], spans[1][1]) == want[members[1].name]


def test_read_ranges_tar_local(tmp_path):
    raw = _write_tar()
    url = str(tmp_path / "00000.tar")
    storage.write_bytes(url, raw)
    _check_members(url, raw)


def test_read_ranges_tar_s3(s3_prefix):
    raw = _write_tar()
    url = f"{s3_prefix}/00000.tar"
    storage.write_bytes(url, raw)
    _check_members(url, raw)


# ---------------------------------------------------------------- identity

def test_identity_local_file_changes_on_rewrite_and_truncate(tmp_path):
    p = tmp_path / "a.tar"
    p.write_bytes(b"x" * 100)
    first = ranges.identity(str(p))
    assert first["size"] == 100 and first["etag"].startswith("mtime_ns:")
    assert ranges.identity(str(p)) == first  # stable while untouched
    time.sleep(0.01)
    p.write_bytes(b"y" * 100)  # same size, new content
    second = ranges.identity(str(p))
    assert second["size"] == 100 and second != first
    with open(p, "r+b") as f:
        f.truncate(40)
    assert ranges.identity(str(p))["size"] == 40


def test_identity_s3_changes_on_reput(s3_prefix):
    url = f"{s3_prefix}/a.tar"
    storage.write_bytes(url, b"x" * 100)
    first = ranges.identity(url)
    assert first["size"] == 100 and first["etag"] and '"' not in first["etag"]
    assert ranges.identity(url) == first
    storage.write_bytes(url, b"y" * 100)
    second = ranges.identity(url)
    assert second["size"] == 100 and second["etag"] != first["etag"]


def _check_dir_identity(root: str, touch) -> None:
    storage.write_bytes(storage.join(root, "000000000.jpg"), b"a" * 10)
    storage.write_bytes(storage.join(root, "sub", "000000001.jpg"), b"b" * 20)
    first = ranges.identity(root)
    assert first["size"] == 30 and first["etag"].startswith("dir:")
    assert ranges.identity(root) == first
    touch(storage.join(root, "sub", "000000001.jpg"))
    second = ranges.identity(root)
    assert second["size"] == 30 and second["etag"] != first["etag"]


def test_identity_dir_local(tmp_path):
    def touch(url: str) -> None:
        time.sleep(0.01)
        storage.write_bytes(url, b"c" * 20)

    _check_dir_identity(str(tmp_path / "files"), touch)


def test_identity_dir_s3(s3_prefix):
    _check_dir_identity(f"{s3_prefix}/files",
                        lambda url: storage.write_bytes(url, b"c" * 20))


# ---------------------------------------------------------------- glob and temp names

def test_glob_skips_only_real_temp_files(tmp_path, s3_prefix):
    for root in (str(tmp_path), s3_prefix):
        for name in ("a.tmp-1.tar", "b.tar", "b.tar.tmp-0123abcd", "c.tmp-0123abcd.tar"):
            storage.write_bytes(storage.join(root, name), b"x")
        got = [os.path.basename(u) for u in storage.glob(storage.join(root, "*"))]
        assert got == ["a.tmp-1.tar", "b.tar", "c.tmp-0123abcd.tar"]
    assert storage.is_temp(storage.temp_name("/x/b.tar"))
