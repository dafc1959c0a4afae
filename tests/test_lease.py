"""One writer per output directory: platform/lease.py on local disk and the real S3 server."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import socket
import threading
import time

import pytest

from worldclip.platform import storage
from worldclip.platform.config import ConfigError
from worldclip.platform.lease import LEASE_NAME, Lease


def _roots(tmp_path, s3_prefix) -> list[str]:
    return [str(tmp_path / "out"), f"{s3_prefix}/out"]


def test_second_lease_refused_while_held_then_free(tmp_path, s3_prefix):
    for url in _roots(tmp_path, s3_prefix):
        with Lease(url) as first:
            rec = storage.read_json(storage.join(url, LEASE_NAME))
            assert rec["owner"] == first.owner and rec["pid"] == os.getpid()
            with pytest.raises(ConfigError) as e:
                Lease(url).acquire()
            msg = str(e.value)
            assert "\n" not in msg and repr(url) in msg and "curation.out" in msg
            assert f"pid {os.getpid()}" in msg and LEASE_NAME in msg
            # the refused attempt left the holder's lease alone
            assert storage.read_json(storage.join(url, LEASE_NAME))["owner"] == first.owner
        assert not storage.exists(storage.join(url, LEASE_NAME))
        with Lease(url, key="ingest.out") as again:
            assert storage.read_json(storage.join(url, LEASE_NAME))["owner"] == again.owner


def test_lease_released_on_exception(tmp_path):
    url = str(tmp_path / "out")
    with pytest.raises(RuntimeError), Lease(url):
        raise RuntimeError("stage failed")
    assert not storage.exists(storage.join(url, LEASE_NAME))


def test_expired_lease_is_taken_over(tmp_path, s3_prefix, caplog):
    for url in _roots(tmp_path, s3_prefix):
        stale = {"owner": "dead" * 8, "host": "gone", "pid": 1, "started": time.time() - 900,
                 "expires": time.time() - 60}
        storage.write_json(storage.join(url, LEASE_NAME), stale)
        with caplog.at_level("WARNING"), Lease(url) as lease:
            assert storage.read_json(storage.join(url, LEASE_NAME))["owner"] == lease.owner
        assert "expired lease" in caplog.text
        assert not storage.exists(storage.join(url, LEASE_NAME))


def test_release_keeps_a_lease_that_is_no_longer_ours(tmp_path):
    url = str(tmp_path / "out")
    lease = Lease(url).acquire()
    other = {"owner": "other", "host": "h", "pid": 2, "started": time.time(),
             "expires": time.time() + 600}
    storage.write_json(storage.join(url, LEASE_NAME), other)
    lease.release()
    assert storage.read_json(storage.join(url, LEASE_NAME))["owner"] == "other"


def test_heartbeat_extends_expiry(tmp_path):
    url = str(tmp_path / "out")
    with Lease(url, ttl_s=1.0) as lease:
        first = storage.read_json(storage.join(url, LEASE_NAME))["expires"]
        time.sleep(1.5)
        rec = storage.read_json(storage.join(url, LEASE_NAME))
        assert rec["owner"] == lease.owner and not lease.lost
        assert rec["expires"] > time.time() and rec["expires"] > first


def _race(url: str, barrier, results) -> None:
    barrier.wait()
    try:
        with Lease(url):
            results.put("won")
            time.sleep(2.0)  # hold it while the other tries
    except ConfigError:
        results.put("lost")


def test_two_processes_racing_exactly_one_wins(tmp_path):
    url = str(tmp_path / "out")
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(3), ctx.Queue()
    procs = [ctx.Process(target=_race, args=(url, barrier, results)) for _ in range(2)]
    for p in procs:
        p.start()
    barrier.wait(timeout=120)
    outcome = sorted(results.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert outcome == ["lost", "won"]
    assert not storage.exists(storage.join(url, LEASE_NAME))


def test_two_acquirers_racing_on_s3_exactly_one_wins(s3_prefix):
    """S3 has no create-exclusive: write, settle, re-read; the last writer keeps it."""
    url = f"{s3_prefix}/out"
    leases = [Lease(url) for _ in range(3)]
    barrier, outcome = threading.Barrier(len(leases)), {}

    def go(lease: Lease) -> None:
        barrier.wait()
        try:
            lease.acquire()
            outcome[lease.owner] = "won"
        except ConfigError:
            outcome[lease.owner] = "lost"

    threads = [threading.Thread(target=go, args=(lease,)) for lease in leases]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(outcome.values()) == ["lost", "lost", "won"]
    winner = next(x for x in leases if outcome[x.owner] == "won")
    assert storage.read_json(storage.join(url, LEASE_NAME))["owner"] == winner.owner
    winner.release()
    assert not storage.exists(storage.join(url, LEASE_NAME))


def test_check_raises_once_the_lease_is_lost(tmp_path):
    with Lease(str(tmp_path), ttl_s=0.3) as held:
        held.check()
        (tmp_path / LEASE_NAME).unlink()  # another run took over (or removed it)
        deadline = time.time() + 5
        while not held.lost and time.time() < deadline:
            time.sleep(0.05)
        with pytest.raises(RuntimeError, match="taken over"):
            held.check()


def test_a_killed_holder_on_this_host_is_taken_over_at_once(tmp_path):
    proc = mp.get_context("spawn").Process(target=time.sleep, args=(0,))
    proc.start()
    proc.join()  # a pid that existed and is gone
    (tmp_path / LEASE_NAME).write_text(json.dumps(
        {"owner": "dead", "host": socket.gethostname(), "pid": proc.pid,
         "started": time.time(), "expires": time.time() + 3600}))
    with Lease(str(tmp_path)) as held:
        assert json.loads((tmp_path / LEASE_NAME).read_text())["owner"] == held.owner
