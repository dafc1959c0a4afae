"""What a run owns: nothing deletes a folder it did not create.

A stage that writes into a folder claims it first: a new or empty folder gets a marker file
(`_WORLDCLIP_OWNED`, no extension, so no `*.tar`/`*.parquet`/`*.json` glob of ours picks it
up), a folder with the marker is ours already, and a folder with other content and no marker
is someone else's. Recursive deletes (replacing a sample, an unfinished trial's run) go
through remove_owned, which refuses the last kind (docs/operations.md, "Inputs are
read-only").
"""

from __future__ import annotations

import logging

from worldclip.platform import storage
from worldclip.platform.config import ConfigError

log = logging.getLogger(__name__)

MARKER = "_WORLDCLIP_OWNED"


def marker_url(url: str) -> str:
    return storage.join(url, MARKER)


def is_owned(url: str) -> bool:
    return storage.exists(marker_url(url))


def _is_empty_or_absent(url: str) -> bool:
    fs = storage.filesystem(url)
    path = storage.strip_scheme(url)
    if storage.is_s3(url):  # a prefix: absent when nothing is listed under it
        return not storage.retry(lambda: fs.ls(path, detail=False) if fs.exists(path) else [],
                                 what=f"list {url}")
    if not fs.exists(path):
        return True
    return fs.isdir(path) and not fs.ls(path, detail=False)


def claim_dir(url: str) -> bool:
    """Mark url as this run's when it is new or empty; True when it is (now) ours."""
    if is_owned(url):
        return True
    if _is_empty_or_absent(url):
        storage.write_text(marker_url(url), "created by worldclip; a run may delete what it "
                                            "created here\n")
        return True
    return False


def remove_owned(url: str, what: str, owner: str | None = None) -> None:
    """Delete url recursively if a run created it; absent is a no-op.

    Created by a run means: the marker is in `owner` (default url itself), a claimed folder
    that url is, or sits inside. Anything else is refused with a ConfigError naming `what`
    (the config key it came from).
    """
    owner = owner or url
    if _is_empty_or_absent(url):
        return
    inside = url.rstrip("/") == owner.rstrip("/") or url.startswith(owner.rstrip("/") + "/")
    if not inside or not is_owned(owner):
        raise ConfigError(f"config {what}={owner!r}: {url} exists and was not created by "
                          f"worldclip (no {MARKER} in {owner}); refusing to delete it. Move it "
                          f"away or point {what} at a new folder")
    log.info("removing %s (created by an earlier run)", url)
    storage.remove(url, recursive=True)
