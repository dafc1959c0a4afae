"""Faults during curation: object storage that stops answering for a while, and a run killed
mid-pass-1 and started again. Both must end with the same data card and the same curated
shards as an undisturbed run.

(a) The S3 server (moto on loopback, the session fixture) is frozen with SIGSTOP for 3 s while
    curation runs against it, then SIGCONT: requests hang (s3fs defaults: connect 5 s, read
    15 s, 5 retries), then complete.
(b) `worldclip curate` runs in its own process and its own Ray (private RAY_TMPDIR, no
    RAY_ADDRESS), is SIGKILLed with its whole process group once pass 1 has finished some but
    not all shards, leaves no process behind, and a second run resumes: done shards are not
    redone, and the output equals a clean run's.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from worldclip.platform import storage

pytestmark = pytest.mark.slow

COMPARED = ("accounting", "languages", "balancing", "matched_entries", "errors", "metadata")


def curated_content(balanced: str) -> dict[str, Any]:
    """Everything a consumer reads from a balanced output: per curated tar, the member names in
    order with each json's content (images by sha-free length + bytes equality via hash)."""
    import hashlib
    import tarfile

    out: dict[str, Any] = {}
    for url in storage.glob(storage.join(balanced, "shards", "*.tar")):
        members = []
        with tarfile.open(fileobj=io.BytesIO(storage.read_bytes(url))) as t:
            for m in t.getmembers():
                data = t.extractfile(m).read()
                members.append((m.name, json.loads(data) if m.name.endswith(".json")
                                else hashlib.sha256(data).hexdigest()))
        out[url.rsplit("/", 1)[1]] = members
    return out


def card_view(balanced: str) -> dict[str, Any]:
    card = storage.read_json(storage.join(balanced, "datacard.json"))
    view = {k: card[k] for k in COMPARED}
    view["metadata"] = {k: v for k, v in card["metadata"].items() if k != "url"}
    return view


def _world(root: str, pairs: int, per_shard: int) -> None:
    from worldclip.pipelines import world
    from worldclip.platform.config import load_config

    cfg = load_config([f"storage.root={root}", f"world.pairs={pairs}",
                       f"world.pairs_per_shard={per_shard}", "world.formats=[wds]"])
    world.generate_world(cfg.world)


# ---------------------------------------------------------------- (a) storage pauses

def test_s3_server_frozen_mid_curation(ray_session, s3_server, s3_prefix) -> None:
    import boto3
    from botocore.config import Config

    from worldclip.pipelines import curate
    from worldclip.platform.config import load_config

    _world(s3_prefix, pairs=240, per_shard=40)

    def cfg(name: str):
        return load_config([f"storage.root={s3_prefix}", f"curation.out={s3_prefix}/{name}",
                            "curation.concurrency=1"])

    curate.run(cfg("clean"))

    bucket, key_prefix = storage.strip_scheme(s3_prefix).split("/", 1)
    pid = int(s3_server["pid"])
    client = boto3.client("s3", endpoint_url=s3_server["endpoint"], region_name="us-east-1",
                          config=Config(connect_timeout=2, read_timeout=2,
                                        retries={"max_attempts": 1}))
    times: dict[str, float] = {}
    stop = threading.Event()

    def freeze_when_pass1_started() -> None:
        try:
            while not stop.is_set():
                r = client.list_objects_v2(Bucket=bucket, Prefix=f"{key_prefix}/paused/matches/")
                if any(o["Key"].endswith(".stats.json") for o in r.get("Contents", [])):
                    break
                time.sleep(0.05)
            else:
                return
            os.kill(pid, signal.SIGSTOP)
            times["stop"] = time.monotonic()
            time.sleep(3.0)
        finally:
            os.kill(pid, signal.SIGCONT)
            times.setdefault("cont", time.monotonic())

    t = threading.Thread(target=freeze_when_pass1_started, daemon=True)
    t.start()
    try:
        started = time.monotonic()
        curate.run(cfg("paused"))
        ended = time.monotonic()
    finally:
        stop.set()
        t.join(30)
        os.kill(pid, signal.SIGCONT)  # never leave the session's server frozen
    assert "stop" in times, "the server was never frozen: pass 1 wrote no stats"
    assert started < times["stop"] < times["cont"] < ended  # the run lived through the freeze
    assert times["cont"] - times["stop"] >= 3.0
    clean_b, paused_b = f"{s3_prefix}/clean/balanced", f"{s3_prefix}/paused/balanced"
    assert card_view(paused_b) == card_view(clean_b)
    acc = card_view(paused_b)["accounting"]
    assert acc["pairs_in"] == 240 == acc["kept"] + sum(acc["dropped"].values())
    assert curated_content(paused_b) == curated_content(clean_b)


# ---------------------------------------------------------------- (b) killed and resumed

def _processes_of(session_id: int, ray_tmp: str) -> list[Any]:
    """Live processes started by the killed run: its session, or its private RAY_TMPDIR."""
    import psutil

    found = []
    for p in psutil.process_iter(["pid", "status"]):
        try:
            if p.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if os.getsid(p.pid) == session_id or p.environ().get("RAY_TMPDIR") == ray_tmp:
                found.append(p)
        except (psutil.Error, ProcessLookupError, PermissionError):
            continue
    return found


def _describe(p: Any) -> str:
    import psutil

    try:
        return f"{p.pid} {p.status()} {' '.join(p.cmdline())[:120]}"
    except psutil.Error:
        return f"{p.pid} (gone)"


def test_killed_curation_resumes_to_identical_output(ray_session, tmp_path: Path) -> None:
    from worldclip.pipelines import curate
    from worldclip.platform.config import load_config

    world = str(tmp_path / "world")
    _world(str(tmp_path), pairs=480, per_shard=40)  # 12 shards
    n_shards = 12
    common = [f"world.out={world}", "curation.concurrency=1"]
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    matches = killed / "curated" / "matches"

    ray_tmp = tempfile.mkdtemp(prefix="wcf", dir="/tmp")  # short: Ray's socket paths
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_TMPDIR"] = ray_tmp  # its own Ray, never one found under /tmp/ray
    log = open(tmp_path / "killed.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "worldclip", "curate",
                             f"storage.root={killed}", *common],
                            env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            if matches.is_dir() and any(matches.glob("*.stats.json")):
                break
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
        done = sorted(matches.glob("*.stats.json"))
        assert 1 <= len(done) < n_shards, (
            f"kill landed after {len(done)} of {n_shards} shards; log: "
            + (tmp_path / "killed.log").read_text(errors="replace")[-2000:])
        # nothing of the killed run may survive it (its Ray included)
        deadline = time.monotonic() + 60  # workers and agents notice the raylet is gone
        while (left := _processes_of(proc.pid, ray_tmp)) and time.monotonic() < deadline:
            time.sleep(0.5)
        names = [_describe(p) for p in left]
        for p in left:  # ours: started by the killed run; stop them before failing
            p.kill()
        assert not left, f"processes of the killed run still alive: {names}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
        shutil.rmtree(ray_tmp, ignore_errors=True)

    before = {p.name: p.stat().st_mtime_ns for p in done}
    curate.run(load_config([f"storage.root={killed}", *common]))  # resume (session Ray)
    after = {p.name: p.stat().st_mtime_ns for p in matches.glob("*.stats.json")}
    assert len(after) == n_shards
    assert all(after[name] == t for name, t in before.items()), "done shards were redone"

    curate.run(load_config([f"storage.root={clean}", *common]))
    kb, cb = str(killed / "curated" / "balanced"), str(clean / "curated" / "balanced")
    assert card_view(kb) == card_view(cb)
    assert card_view(kb)["accounting"]["pairs_in"] == 480
    content = curated_content(kb)
    assert len(content) == n_shards and content == curated_content(cb)
