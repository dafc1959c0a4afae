"""Ray Jobs: run a stage on a cluster (`worldclip submit`) and watch it (`worldclip jobs`).

    worldclip submit <stage> [key=value ...] [--config FILE] [--address URL] [--wait]
    worldclip jobs status|logs|stop|list [JOB_ID] [--address URL]

The config is resolved and validated here, before anything reaches the cluster, and shipped as
a redacted YAML file beside a copy of the package source in the job's working_dir; the job
runs `python -m worldclip <stage> --config worldclip-job.yaml` on the cluster. The working_dir
holds a `worldclip/` folder rather than the repository root itself, because the repository
root IS the package (docs/architecture.md): put on sys.path, its `platform/` would shadow
the standard library's `platform`.

Secrets: job metadata carries only stage, user and config hash, and runtime_env env_vars are
visible to anyone who can read the dashboard, so AWS credentials are NOT forwarded by default:
the cluster reaches object storage through its instance role / service account. Only the S3
endpoint and region travel. `--forward-credentials` is an explicit opt-in for clusters without
roles (a local test cluster, a private MinIO) and puts the keys into the job's env_vars.

Token authentication (Ray 2.60 enables it for new clusters, RAY_AUTH_MODE): the client sends
`Authorization: Bearer <token>` with the token Ray itself finds -- $RAY_AUTH_TOKEN,
$RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token (on a cluster, `ray get-auth-token` on the head
prints it) -- unless RAY_AUTH_MODE=disabled. Ray's own SDK only adds the header when the
client process itself runs with RAY_AUTH_MODE=token, which a laptop shell seldom does.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import hashlib
import ipaddress
import logging
import os
import shlex
import shutil
import sys
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from worldclip.platform import redact
from worldclip.platform.config import (
    ConfigError,
    load_config,
    local_url_keys,
    to_yaml,
)

log = logging.getLogger(__name__)

JOB_CONFIG_NAME = "worldclip-job.yaml"
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
# Where object storage is; harmless to show in a dashboard.
FORWARDED_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION")
# Only with --forward-credentials (they become visible in the job's runtime_env).
CREDENTIAL_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
# What a job needs of the package: source, configs, docs. Never data, venvs or caches.
_SOURCE_SUFFIXES = frozenset({".py", ".yaml", ".yml", ".json", ".toml", ".txt", ".md", ".cfg"})
_SKIP_DIRS = frozenset({".venv", "venv", ".git", "__pycache__", ".pytest_cache", ".ruff_cache",
                        ".hypothesis", ".mypy_cache", "tests", "bench", "build", "dist",
                        "node_modules", "worldclip-data", ".ci", "cluster"})
MAX_PACKAGE_BYTES = 50 * 2**20


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


def package_source_dir() -> Path:
    """The directory of the installed `worldclip` package (the repository root if editable)."""
    import worldclip

    return Path(worldclip.__file__).resolve().parent


def stage_package(dest: Path, source: Path | None = None, skip: tuple[Path, ...] = ()) -> Path:
    """Copy the package source into dest/worldclip (source files only) and return that path.

    Only files with source suffixes are copied, and folders that are venvs, caches, tests or
    data are skipped, so a repository with a 2 GB .venv or a local object store inside still
    ships a few hundred KB.
    """
    source = (source or package_source_dir()).resolve()
    if not (source / "__init__.py").exists() or not (source / "cli.py").exists():
        raise ConfigError(f"job.working_dir={str(source)!r}: not the worldclip package source "
                          "(no __init__.py + cli.py there); give the repository root or leave "
                          "job.working_dir empty to ship the installed package")
    skip_resolved = {p.resolve() for p in skip}
    target = dest / "worldclip"
    total = 0
    for root, dirs, files in os.walk(source):
        here = Path(root)
        dirs[:] = sorted(
            d for d in dirs
            if d not in _SKIP_DIRS and not d.endswith(".egg-info") and not d.startswith(".")
            and not (here / d / "pyvenv.cfg").exists() and (here / d).resolve() not in
            skip_resolved)
        for name in files:
            src = here / name
            if src.suffix not in _SOURCE_SUFFIXES or src.is_symlink():
                continue
            total += src.stat().st_size
            if total > MAX_PACKAGE_BYTES:
                raise ConfigError(
                    f"package source {source}: more than {MAX_PACKAGE_BYTES >> 20} MB of source "
                    f"files (at {src}); move data out of the package folder or set "
                    "job.working_dir to a clean checkout")
            out = target / src.relative_to(source)
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, out)
    return target


# How a stage's config is resolved (cli.stage_config) and which key --out sets: the command
# layer passes them in, so this module never imports the stages (platform imports no
# pipelines).
StageResolver = Callable[[str, list[str], list[str]], DictConfig]


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


def _address(arg: str | None, config_files: list[str]) -> str:
    if arg:
        return arg
    try:
        return str(load_config([], config_files).job.address)
    except ConfigError:
        return os.environ.get("RAY_ADDRESS", "http://127.0.0.1:8265")


def _parse_submit(args: list[str], out_keys: Mapping[str, str]
                  ) -> tuple[argparse.Namespace, list[str], list[str]]:
    p = argparse.ArgumentParser(prog="worldclip submit",
                                description="Run a worldclip stage as a Ray job on a cluster.")
    p.add_argument("stage")
    p.add_argument("rest", nargs="*", help="key=value overrides (and stage arguments)")
    p.add_argument("--config", "-c", action="append", default=[])
    p.add_argument("--address", help="Ray dashboard URL (default: config job.address, "
                                     "$RAY_ADDRESS, http://127.0.0.1:8265)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--wait", dest="wait", action="store_true",
                   help="follow the logs until the job ends; exit non-zero if it failed")
    g.add_argument("--no-wait", dest="wait", action="store_false", help="(default)")
    p.add_argument("--timeout", type=float, help="with --wait: give up after this many seconds")
    p.add_argument("--forward-credentials", action="store_true",
                   help="ALSO send AWS_ACCESS_KEY_ID/SECRET/SESSION_TOKEN (or storage.*_key) "
                        "as job env vars. They are then visible in the Ray dashboard and job "
                        "API; prefer instance roles / workload identity on real clusters")
    p.add_argument("--env", action="append", default=[], metavar="NAME[=VALUE]",
                   help="extra env var for the job (credential-like names need "
                        "--forward-credentials)")
    p.add_argument("--python", default="python", help="python executable on the cluster")
    # Shortcuts of the local command (cli.py), same meaning.
    p.add_argument("--out")
    p.add_argument("--pairs", type=int)
    p.add_argument("--compare", action="store_true")
    ns = p.parse_intermixed_args(args)
    overrides = [a for a in ns.rest if "=" in a]
    extra = [a for a in ns.rest if "=" not in a]
    if ns.out:
        overrides.append(f"{out_keys.get(ns.stage, 'storage.root')}={ns.out}")
    if ns.pairs:
        overrides.append(f"world.pairs={ns.pairs}")
    if ns.compare:
        overrides.append("demo.compare=true")
    return ns, overrides, extra


def cli(command: str, args: list[str], config_files: list[str], resolve: StageResolver,
        out_keys: Mapping[str, str] | None = None) -> int:
    """`worldclip submit ...` and `worldclip jobs ...`; returns the process exit code.

    resolve(stage, overrides, files) gives the stage's validated config (cli.stage_config).
    """
    try:
        if command == "submit":
            return _cli_submit(args, config_files, resolve, out_keys or {})
        if command == "jobs":
            return _cli_jobs(args, config_files)
        print(f"worldclip: unknown job command {command!r}; use submit or jobs",
              file=sys.stderr)
        return 2
    except ConfigError as e:
        print(f"worldclip {command}: {e}", file=sys.stderr)
        return 2
    except ConnectionError as e:  # also what the SDK raises for an unreachable dashboard
        print(f"worldclip {command}: {e} Is the cluster up and its dashboard reachable "
              "(`ray dashboard cluster/aws.yaml` or `kubectl port-forward "
              "svc/worldclip-head-svc 8265:8265`)? Pass --address URL or set RAY_ADDRESS.",
              file=sys.stderr)
        return 3
    except SystemExit as e:  # argparse usage errors and --help
        return e.code if isinstance(e.code, int) else 2


def _cli_submit(args: list[str], config_files: list[str], resolve: StageResolver,
                out_keys: Mapping[str, str]) -> int:
    ns, overrides, extra = _parse_submit(args, out_keys)
    files = [*config_files, *ns.config]
    cfg = resolve(ns.stage, overrides, files)
    address = ns.address or str(cfg.job.address)
    check_paths_reach(cfg, address)
    sub = build_submission(ns.stage, cfg, extra_args=extra,
                           forward_credentials=ns.forward_credentials, extra_env=ns.env,
                           python=ns.python)
    for w in sub.warnings:
        log.warning("%s", w)
    if ns.forward_credentials:
        log.warning("--forward-credentials: AWS credentials are in this job's env_vars, "
                    "readable by anyone with access to the Ray dashboard of %s", address)
    job_id = submit(sub, address)
    print(job_id, flush=True)
    if not ns.wait:
        print(f"follow it with: worldclip jobs logs {job_id} --follow --address {address}",
              file=sys.stderr)
        return 0
    c = client(address)
    status = wait(c, job_id, follow=True, timeout=ns.timeout)
    info = c.get_job_info(job_id)
    print(f"job {job_id}: {status}" + (f" ({info.message})" if info.message else ""),
          file=sys.stderr)
    return 0 if status == "SUCCEEDED" else 1


def _cli_jobs(args: list[str], config_files: list[str]) -> int:
    p = argparse.ArgumentParser(prog="worldclip jobs", description="Inspect worldclip Ray jobs.")
    p.add_argument("action", choices=["status", "logs", "stop", "list"])
    p.add_argument("job_id", nargs="?")
    p.add_argument("--address")
    p.add_argument("--config", "-c", action="append", default=[])
    p.add_argument("--follow", "-f", action="store_true", help="logs: follow until the end")
    p.add_argument("--all", action="store_true", help="list: also jobs not from worldclip")
    ns = p.parse_args(args)
    c = client(_address(ns.address, [*config_files, *ns.config]))
    if ns.action == "list":
        jobs = sorted(c.list_jobs(), key=lambda j: j.start_time or 0)
        for j in jobs:
            meta = j.metadata or {}
            if not ns.all and "stage" not in meta:
                continue
            started = (time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(j.start_time / 1000))
                       if j.start_time else "-")
            print(f"{j.submission_id or j.job_id}\t{j.status.value}\t{meta.get('stage', '-')}"
                  f"\t{started}\t{meta.get('user', '-')}")
        return 0
    if not ns.job_id:
        print(f"worldclip jobs {ns.action}: give a JOB_ID (see `worldclip jobs list`)",
              file=sys.stderr)
        return 2
    if ns.action == "status":
        info = c.get_job_info(ns.job_id)
        print(f"{ns.job_id}\t{info.status.value}" + (f"\t{info.message}" if info.message else ""))
        return 0
    if ns.action == "logs":
        if ns.follow:
            status = wait(c, ns.job_id, follow=True)
            return 0 if status == "SUCCEEDED" else 1
        sys.stdout.write(c.get_job_logs(ns.job_id))
        return 0
    stopped = c.stop_job(ns.job_id)
    print(f"{ns.job_id}\t{'stop requested' if stopped else 'already finished'}")
    return 0
