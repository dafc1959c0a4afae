"""Session fixtures: a real S3-compatible server (moto) on 127.0.0.1 and one local Ray."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")

BUCKET = "worldclip-test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server() -> dict[str, str]:
    """Start `moto_server` on a free loopback port; export the AWS env to this process (and so
    to Ray workers started afterwards); stop it by PID at the end."""
    port = free_port()
    exe = shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while True:
        try:
            urllib.request.urlopen(endpoint, timeout=1)
            break
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError(f"moto_server did not start on {endpoint}") from None
            time.sleep(0.1)
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing-secret",
           "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": endpoint}
    os.environ.update(env)
    import boto3  # moto[server] depends on it; a real client against the real server

    from worldclip.platform import storage

    storage.configure()
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(
        Bucket=BUCKET)
    yield {"endpoint": endpoint, "port": str(port), "pid": str(proc.pid), **env}
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="session")
def s3_bucket(s3_server) -> str:
    return f"s3://{BUCKET}"


@pytest.fixture
def s3_prefix(s3_bucket, request) -> str:
    """A fresh prefix per test inside the session bucket."""
    name = request.node.name.replace("[", "_").replace("]", "_").replace("/", "_")
    return f"{s3_bucket}/{name}-{time.time_ns()}"


@pytest.fixture(scope="session")
def ray_session(s3_server):
    """One local Ray per test session (num_cpus=4 on 2 cores on purpose: docs/operations.md)."""
    import ray

    from worldclip.platform.runtime import worker_env

    if not ray.is_initialized():
        ray.init(num_cpus=4, include_dashboard=False,
                 runtime_env={"env_vars": worker_env()})
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    yield ray
    ray.shutdown()


def make_config(root: str, *overrides: str):
    """A resolved config for a small embedded world under root (local path or s3:// URL)."""
    from worldclip.platform.config import apply_storage, load_config

    cfg = load_config([f"storage.root={root}", "world.pairs=1200", "world.pairs_per_shard=300",
                       "world.concepts=40", "world.eval_per_concept=2",
                       "curation.concurrency=2", *overrides])
    apply_storage(cfg)
    return cfg


@pytest.fixture(scope="session")
def small_world(tmp_path_factory, ray_session):
    """A 1200-pair embedded world + its offline curation, on local disk (shared, read-only)."""
    from worldclip.pipelines import curate, world

    root = str(tmp_path_factory.mktemp("world"))
    cfg = make_config(root)
    world.run(cfg)
    card = curate.run(cfg)
    return {"root": root, "cfg": cfg, "summary": card}
