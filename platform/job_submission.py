"""What a Ray job is sent, built and checked without Ray: the redacted job config, the
env_vars (no credentials unless --forward-credentials; platform/jobs.py, "Secrets"), the
staged package, and the refusal of local paths a remote cluster cannot read."""

from __future__ import annotations

import getpass
import hashlib
import ipaddress
import os
import shlex
import shutil
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from worldclip.platform import redact
from worldclip.platform.config import ConfigError, local_url_keys, to_yaml
from worldclip.platform.job_package import stage_package

JOB_CONFIG_NAME = "worldclip-job.yaml"
# Where object storage is; harmless to show in a dashboard.
FORWARDED_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION")
# Only with --forward-credentials (they become visible in the job's runtime_env).
CREDENTIAL_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


@dataclass
class Submission:
    """Everything sent to JobSubmissionClient.submit_job, built (and testable) without Ray."""

    submission_id: str
    entrypoint: str
    runtime_env: dict[str, Any]
    metadata: dict[str, str]
    config_yaml: str
    staging_dir: Path
    warnings: list[str] = field(default_factory=list)

    def cleanup(self) -> None:
        shutil.rmtree(self.staging_dir, ignore_errors=True)


def is_secret_name(name: str) -> bool:
    """Whether an env var name looks like a credential (and so must not travel by default)."""
    return name.upper() in CREDENTIAL_ENV or redact.is_secret_name(name)


def job_config(cfg: DictConfig) -> DictConfig:
    """The config as the job sees it: joins the cluster it runs on, carries no keys."""
    c = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    c.ray.address = "auto"  # the job driver runs on the cluster (RAY_ADDRESS is set for it)
    c.ray.num_cpus = None  # cannot be given when joining a cluster
    # Blank, not "***": the job must fall back to its environment / instance role.
    c.storage.access_key = ""
    c.storage.secret_key = ""
    # One secrets rule (platform/redact.py): no credential in the job's file or env_vars.
    c.storage.endpoint_url = redact.remove_userinfo(str(c.storage.endpoint_url))
    c.ray.env_vars = redact.safe_env(dict(c.ray.env_vars))
    return c


def _env_vars(cfg: DictConfig, environ: Mapping[str, str], extra_env: list[str],
              forward_credentials: bool) -> dict[str, str]:
    # user:password in an endpoint URL never travels (docs/operations.md)
    env = {k: redact.remove_userinfo(environ[k]) for k in FORWARDED_ENV if environ.get(k)}
    # A stage's own ray.init(runtime_env=...) in the job driver repeats some of these keys;
    # Ray refuses to merge overlapping keys with the job's runtime_env unless told to.
    env["RAY_OVERRIDE_JOB_RUNTIME_ENV"] = "1"
    if cfg.storage.endpoint_url:
        env["AWS_ENDPOINT_URL"] = redact.remove_userinfo(cfg.storage.endpoint_url)
    if cfg.storage.region:
        env["AWS_REGION"] = cfg.storage.region
    if forward_credentials:
        env.update({k: environ[k] for k in CREDENTIAL_ENV if environ.get(k)})
        if cfg.storage.access_key:
            env["AWS_ACCESS_KEY_ID"] = cfg.storage.access_key
            env["AWS_SECRET_ACCESS_KEY"] = cfg.storage.secret_key
    for item in extra_env:
        name, eq, value = item.partition("=")
        if not name.isidentifier():
            raise ConfigError(f"submit --env {item!r}: expected NAME or NAME=VALUE")
        if is_secret_name(name) and not forward_credentials:
            raise ConfigError(
                f"submit --env {name}: looks like a credential and would be visible in the "
                "dashboard; give the cluster a role instead, or add --forward-credentials "
                "to send it anyway")
        if eq:
            env[name] = value
        elif environ.get(name) is not None:
            env[name] = environ[name]
        else:
            raise ConfigError(f"submit --env {name}: not set in this environment; "
                              f"use --env {name}=VALUE")
    return env


def build_submission(stage: str, cfg: DictConfig, *,
                     extra_args: list[str] | None = None, forward_credentials: bool = False,
                     extra_env: list[str] | None = None, python: str = "python",
                     environ: Mapping[str, str] | None = None) -> Submission:
    """Stage the package + the resolved config file and describe the job (no Ray here)."""
    environ = os.environ if environ is None else environ
    warnings: list[str] = []
    jcfg = job_config(cfg)
    config_yaml = to_yaml(jcfg, redact=True)
    digest = hashlib.sha256(config_yaml.encode()).hexdigest()[:16]
    if cfg.storage.access_key and not forward_credentials:
        warnings.append("storage.access_key/secret_key are not sent to the job (the cluster "
                        "uses its own role); add --forward-credentials to send them")
    root = str(cfg.storage.root)
    env = _env_vars(cfg, environ, list(extra_env or []), forward_credentials)

    staging = Path(tempfile.mkdtemp(prefix="worldclip-job-"))
    try:
        skip = (Path(root),) if "://" not in root else ()
        source = Path(cfg.job.working_dir) if cfg.job.working_dir else None
        if source is not None and "://" in str(cfg.job.working_dir):
            raise ConfigError(f"job.working_dir={cfg.job.working_dir!r}: give a local source "
                              "folder (the package is copied from it), not a URL")
        stage_package(staging, source, skip=skip)
        (staging / JOB_CONFIG_NAME).write_text(config_yaml)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    runtime_env: dict[str, Any] = {"working_dir": str(staging), "env_vars": env}
    if cfg.job.pip:
        runtime_env["pip"] = list(cfg.job.pip)
    entry = [python, "-m", "worldclip", stage, "--config", JOB_CONFIG_NAME, *(extra_args or [])]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Submission(
        submission_id=f"worldclip-{stage}-{stamp}-{uuid.uuid4().hex[:6]}",
        entrypoint=shlex.join(entry),
        runtime_env=runtime_env,
        metadata={"stage": stage, "user": _user(), "config_sha256": digest},
        config_yaml=config_yaml, staging_dir=staging, warnings=warnings)


def is_loopback(address: str) -> bool:
    """Whether a dashboard / Ray address names this machine (127.0.0.0/8, localhost, ::1)."""
    host = urllib.parse.urlsplit(address if "://" in address else f"http://{address}").hostname
    if host in (None, "", "localhost"):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_paths_reach(cfg: DictConfig, address: str) -> None:
    """Refuse, before submitting, a job for a remote cluster whose config names local paths:
    the cluster's nodes cannot see this machine's disk (docs/architecture.md, "Paths")."""
    if is_loopback(address) or cfg.job.allow_local_paths:
        return
    local = {k: v for k, v in local_url_keys(cfg).items() if k != "job.working_dir"}
    if local:
        key, value = next(iter(local.items()))
        more = f" (and {', '.join(list(local)[1:])})" if len(local) > 1 else ""
        raise ConfigError(
            f"config {key}={value!r}{more}: a local path, but the job runs on the cluster at "
            f"{address}, whose nodes cannot read this machine's disk; use object storage "
            "(storage.root=s3://bucket/prefix), or job.allow_local_paths=true for a "
            "filesystem shared by every node")


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
