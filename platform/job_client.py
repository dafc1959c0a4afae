"""Talking to a cluster's Ray Jobs API: an authenticated JobSubmissionClient (token auth:
platform/jobs.py), submit, and follow a job until it ends."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from typing import Any

from worldclip.platform.config import ConfigError
from worldclip.platform.job_submission import Submission

log = logging.getLogger(__name__)

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def auth_headers() -> dict[str, str]:
    """Bearer token header for the Ray dashboard, from wherever Ray keeps its token.

    Empty when RAY_AUTH_MODE=disabled or no token exists (a cluster without token auth).
    """
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return {}
    try:
        from ray._raylet import AuthenticationTokenLoader
    except ImportError:  # a minimal Ray without the raylet: no token auth client side
        return {}
    loader = AuthenticationTokenLoader.instance()
    if not loader.has_token(ignore_auth_mode=True):
        if os.environ.get("RAY_AUTH_MODE", "").lower() == "token":
            raise ConfigError("RAY_AUTH_MODE=token but no Ray auth token was found; set "
                              "RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH (on the head: "
                              "`ray get-auth-token`)")
        return {}
    return dict(loader.get_token_for_http_header(ignore_auth_mode=True))


def client(address: str) -> Any:
    """A JobSubmissionClient for a dashboard URL, authenticated if the cluster uses tokens."""
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(address, headers=auth_headers())


def submit(sub: Submission, address: str) -> str:
    """Submit a built Submission; returns the job id. The staging copy is removed afterwards
    (Ray has uploaded it by then)."""
    try:
        c = client(address)
        return c.submit_job(entrypoint=sub.entrypoint, submission_id=sub.submission_id,
                            runtime_env=sub.runtime_env, metadata=sub.metadata)
    finally:
        sub.cleanup()


def wait(c: Any, job_id: str, follow: bool = True, timeout: float | None = None,
         out: Any = None) -> str:
    """Follow a job's logs (or just poll) until it ends; returns the terminal status name."""
    out = out or sys.stdout
    deadline = None if timeout is None else time.monotonic() + timeout
    if follow:
        try:
            asyncio.run(_tail(c, job_id, out, deadline))
        except Exception as e:  # noqa: BLE001 -- any streaming failure: fall back to polling
            log.warning("log streaming failed (%s); polling status instead", e)
    while True:
        st = c.get_job_status(job_id)
        status = str(getattr(st, "value", st))
        if status in TERMINAL:
            return status
        if deadline is not None and time.monotonic() > deadline:
            return status
        time.sleep(1.0)


async def _tail(c: Any, job_id: str, out: Any, deadline: float | None) -> None:
    async def follow() -> None:
        async for chunk in c.tail_job_logs(job_id):
            out.write(chunk)
            out.flush()

    if deadline is None:
        await follow()
    else:
        try:
            await asyncio.wait_for(follow(), max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            pass
