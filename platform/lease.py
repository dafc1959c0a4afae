"""One writer per output directory: a lease file `<url>/_LEASE.json` with a heartbeat.

Two runs writing the same curated output would interleave shards and references. The lease
names its holder (owner, host, pid, since) so the error tells the user which run to wait for,
and it expires (ttl_s, renewed every ttl_s/3) so a crashed run's lease is taken over without
anyone deleting files by hand; a holder on this host whose pid is gone (a killed run) is
taken over at once. Local and S3 go through platform/storage.py.

Race between two acquirers: locally a fresh lease is created exclusively (hard link of a
complete temp file: exactly one creator wins). S3 (s3fs) has no create-exclusive, so there,
and for taking over an expired lease, we write, wait a settle time and re-read: the last
writer wins and every earlier writer sees another owner and gives up. Expiry compares epoch
seconds across hosts, so hosts sharing an output need clocks within a fraction of ttl_s.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from worldclip.platform import storage
from worldclip.platform.config import ConfigError

log = logging.getLogger(__name__)

LEASE_NAME = "_LEASE.json"
SETTLE_S = 0.3  # S3 write-then-re-read window; S3 is read-after-write consistent


def _holder_dead(rec: dict[str, Any]) -> bool:
    """A lease whose holder ran on this host under a pid that no longer exists (a killed
    run): taken over at once rather than after ttl_s. Another host's holder is never
    judged dead here: only expiry tells."""
    if rec.get("host") != socket.gethostname() or not isinstance(rec.get("pid"), int):
        return False
    try:
        os.kill(rec["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


class Lease:
    """Context manager holding `<url>/_LEASE.json` for the lifetime of one run."""

    def __init__(self, url: str, key: str = "curation.out", ttl_s: float = 120.0) -> None:
        if ttl_s <= 0:
            raise ValueError(f"Lease ttl_s={ttl_s}: must be > 0")
        self.url = url
        self.key = key
        self.ttl_s = ttl_s
        self.path = storage.join(url, LEASE_NAME)
        self.owner = uuid.uuid4().hex
        self.started = time.time()
        self.lost = False  # set when the heartbeat finds another owner in the file
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ record

    def _record(self) -> dict[str, Any]:
        return {"owner": self.owner, "host": socket.gethostname(), "pid": os.getpid(),
                "started": self.started, "expires": time.time() + self.ttl_s}

    def _read(self) -> dict[str, Any] | None:
        try:
            rec = storage.read_json(self.path)
        except FileNotFoundError:
            return None
        except ValueError as e:
            raise ConfigError(f"config {self.key}={self.url!r}: lease file {self.path} is "
                              f"unreadable ({e}); remove it if no run writes here") from e
        if not isinstance(rec, dict):
            raise ConfigError(f"config {self.key}={self.url!r}: lease file {self.path} is "
                              f"not a lease; remove it if no run writes here")
        return rec

    def _held_error(self, rec: dict[str, Any]) -> ConfigError:
        since = datetime.fromtimestamp(float(rec.get("started", 0)), UTC)
        return ConfigError(
            f"config {self.key}={self.url!r}: another run holds it (pid {rec.get('pid')} on "
            f"host {rec.get('host')} since {since:%Y-%m-%d %H:%M:%S} UTC); wait for it to "
            f"finish, or if it died, remove {self.path}")

    # ------------------------------------------------------------ acquire / release

    def _create_local(self) -> bool:
        """Exclusive create of a complete file: False when a lease file already exists."""
        path = storage.strip_scheme(self.path)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = storage.temp_name(path)
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self._record(), f)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # atomic, fails if path exists
            return True
        except FileExistsError:
            return False
        finally:
            os.remove(tmp)

    def _write_and_confirm(self) -> None:
        """Last writer wins: write, let racing writers land, re-read; lose if not ours."""
        storage.write_json(self.path, self._record())
        time.sleep(SETTLE_S)
        rec = self._read()
        if rec is None or rec.get("owner") != self.owner:
            raise self._held_error(rec or {})

    def acquire(self) -> Lease:
        local = not storage.is_s3(self.url)
        if local and self._create_local():
            return self._start_heartbeat()
        rec = self._read()
        if rec is None and local:  # released between our create and read: create again
            if self._create_local():
                return self._start_heartbeat()
            rec = self._read()
        if rec is not None and rec.get("owner") != self.owner:
            if float(rec.get("expires", 0)) > time.time() and not _holder_dead(rec):
                raise self._held_error(rec)
            log.warning("%s: taking over an expired lease (pid %s on host %s, expired %.0f s "
                        "ago; that run likely crashed)", self.path, rec.get("pid"),
                        rec.get("host"), time.time() - float(rec.get("expires", 0)))
        self._write_and_confirm()
        return self._start_heartbeat()

    def _start_heartbeat(self) -> Lease:
        self._stop.clear()
        self._thread = threading.Thread(target=self._heartbeat, name=f"lease {self.url}",
                                        daemon=True)
        self._thread.start()
        return self

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                rec = self._read()
                if rec is None or rec.get("owner") != self.owner:
                    self.lost = True
                    log.error("%s: lease lost (now %s); another run may write here",
                              self.path, "removed" if rec is None else f"pid {rec.get('pid')}")
                    return
                storage.write_json(self.path, self._record())
            except Exception as e:  # keep renewing through transient trouble
                log.warning("%s: lease renewal failed (%s: %s)", self.path,
                            type(e).__name__, e)

    def check(self) -> None:
        """Raise if another run took the lease over (this run stalled past ttl_s): call it
        before writing what readers trust (manifests, data cards, artifacts)."""
        if self.lost:
            raise RuntimeError(f"{self.path}: the lease was taken over by another run while "
                               "this one held it; this run's results are not written. Run "
                               "again once the other run is done")

    def release(self) -> None:
        """Stop renewing and delete the lease file if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with contextlib.suppress(ConfigError):
            rec = self._read()
            if rec is not None and rec.get("owner") == self.owner:
                storage.remove(self.path)

    def __enter__(self) -> Lease:
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
