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

Modules: job_submission.py (what is sent, checked without Ray), job_package.py (the staged
source), job_client.py (the Jobs API: submit, follow); this one is the command line.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping

from omegaconf import DictConfig

from worldclip.platform.config import ConfigError, load_config
from worldclip.platform.job_client import TERMINAL, auth_headers, client, submit, wait
from worldclip.platform.job_package import MAX_PACKAGE_BYTES, package_source_dir, stage_package
from worldclip.platform.job_submission import (
    CREDENTIAL_ENV,
    FORWARDED_ENV,
    JOB_CONFIG_NAME,
    Submission,
    build_submission,
    check_paths_reach,
    is_loopback,
    is_secret_name,
    job_config,
)
from worldclip.platform.shortcuts import add_shortcut_args, shortcut_overrides

__all__ = ["CREDENTIAL_ENV", "FORWARDED_ENV", "JOB_CONFIG_NAME", "MAX_PACKAGE_BYTES", "TERMINAL",
           "StageResolver", "Submission", "auth_headers", "build_submission", "check_paths_reach",
           "cli", "client", "is_loopback", "is_secret_name", "job_config", "package_source_dir",
           "stage_package", "submit", "wait"]

log = logging.getLogger(__name__)

# How a stage's config is resolved (cli.stage_config) and which key --out sets: the command
# layer passes them in, so this module never imports the stages (platform imports no
# pipelines).
StageResolver = Callable[[str, list[str], list[str]], DictConfig]


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
    # Shortcuts of the local command (cli.py), same meaning (platform/shortcuts.py).
    add_shortcut_args(p)
    ns = p.parse_intermixed_args(args)
    overrides = [a for a in ns.rest if "=" in a]
    extra = [a for a in ns.rest if "=" not in a]
    overrides += shortcut_overrides(ns.stage, ns, out_keys)
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
