"""Ray runtime: an embedded local Ray by default, or any cluster by address."""

from __future__ import annotations

import logging
import os

import ray
from omegaconf import DictConfig

from worldclip.platform import redact

log = logging.getLogger(__name__)

# Variables a worker needs to reach object storage and behave like the driver. Credentials
# are NOT among them: Ray's runtime_env agent logs env_vars in plain text. Workers of a local
# Ray inherit the driver's environment (apply_storage puts configured keys there); cluster
# nodes use their instance role / workload identity.
FORWARDED_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION",
                 "DS_ACCELERATOR", "OMP_NUM_THREADS", "RAY_USAGE_STATS_ENABLED",
                 "TORCH_EXTENSIONS_DIR")


def worker_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """runtime_env env_vars for workers, through the one secrets rule (platform/redact.py):
    no credential-named var, no user:password in a URL (config validation already refuses
    them in ray.env_vars; this also covers configs built in code)."""
    env = {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    env.update(extra or {})
    safe = redact.safe_env(env)
    for name in sorted(set(env) - set(safe)):
        log.warning("not forwarding %s to Ray workers: it looks like a credential", name)
    return safe


def init_ray(cfg: DictConfig | None = None) -> None:
    """Start (or join) Ray once per process; a no-op when Ray is already up (tests, jobs)."""
    if ray.is_initialized():
        return
    rc = cfg.ray if cfg is not None else None
    address = (rc.address if rc else "") or os.environ.get("RAY_ADDRESS", "")
    env = worker_env(dict(rc.env_vars) if rc else None)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address:
        log.info("connecting to Ray at %s", address)
        ray.init(address=address, runtime_env={"env_vars": env}, log_to_driver=True)
        return
    num_cpus = rc.num_cpus if rc and rc.num_cpus else max(4, os.cpu_count() or 1)
    # Logical CPUs > physical on small machines on purpose: Ray Data needs a CPU beside the
    # train workers or it starves (docs/operations.md).
    log.info("starting a local Ray (num_cpus=%s)", num_cpus)
    # address="local": never join some other Ray that `ray start` left on this machine
    ray.init(address="local", num_cpus=num_cpus,
             include_dashboard=bool(rc and rc.include_dashboard), runtime_env={"env_vars": env})


def shutdown() -> None:
    if ray.is_initialized():
        ray.shutdown()
