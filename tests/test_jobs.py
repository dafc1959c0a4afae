"""`worldclip submit` / `worldclip jobs`: what a submission carries (fast, no Ray) and real
jobs on a real `ray start --head` with token authentication (slow).

The head runs in its own temp dir, on its own free ports and in its own process session, so
it never meets the test session's local Ray; it is stopped by killing exactly the processes
of that session (never `ray stop`, which stops every Ray on the machine).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_multinode import free_ports, kill_session

from worldclip import cli
from worldclip.platform import jobs
from worldclip.platform.config import ConfigError, load_config


def _cli(command: str, args: list[str], files: list[str]) -> int:
    """What `worldclip submit|jobs ...` runs (the command layer passes the stage resolver)."""
    return jobs.cli(command, args, files, resolve=cli.stage_config, out_keys=cli._OUT_KEY)

SECRETS = {"AWS_ACCESS_KEY_ID": "id-not-for-dashboard",
           "AWS_SECRET_ACCESS_KEY": "secret-not-for-dashboard",
           "AWS_SESSION_TOKEN": "token-not-for-dashboard"}
PUBLIC = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_REGION": "us-east-1"}


def _cfg(tmp_path: Path, *extra: str):
    return load_config([f"storage.root={tmp_path / 'store'}", *extra])


# ---------------------------------------------------------------- fast: no Ray


def test_submission_carries_no_credentials(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, "storage.access_key=cfg-key-id", "storage.secret_key=cfg-secret")
    sub = jobs.build_submission("world", cfg, environ={**SECRETS, **PUBLIC})
    try:
        assert set(sub.metadata) == {"stage", "user", "config_sha256"}
        assert sub.metadata["stage"] == "world" and len(sub.metadata["config_sha256"]) == 16
        assert sub.runtime_env["env_vars"]["AWS_ENDPOINT_URL"] == PUBLIC["AWS_ENDPOINT_URL"]
        assert sub.runtime_env["env_vars"]["AWS_REGION"] == "us-east-1"
        shipped = json.dumps([sub.runtime_env, sub.metadata, sub.entrypoint]) + sub.config_yaml
        shipped += "".join(p.read_text() for p in sub.staging_dir.rglob("*.yaml"))
        for secret in [*SECRETS.values(), "cfg-key-id", "cfg-secret"]:
            assert secret not in shipped
        assert not set(SECRETS) & set(sub.runtime_env["env_vars"])
        assert any("--forward-credentials" in w for w in sub.warnings)
    finally:
        sub.cleanup()
    assert not sub.staging_dir.exists()


def test_forward_credentials_is_an_explicit_opt_in(tmp_path: Path) -> None:
    sub = jobs.build_submission("world", _cfg(tmp_path), forward_credentials=True,
                                environ={**SECRETS, **PUBLIC})
    sub.cleanup()
    env = sub.runtime_env["env_vars"]
    assert {k: env[k] for k in SECRETS} == SECRETS
    assert set(sub.metadata) == {"stage", "user", "config_sha256"}  # never in metadata


def test_env_flag_refuses_credential_names(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--forward-credentials"):
        jobs.build_submission("world", _cfg(tmp_path), environ={},
                              extra_env=["MY_API_TOKEN=abc"])
    with pytest.raises(ConfigError, match="not set"):
        jobs.build_submission("world", _cfg(tmp_path), environ={},
                              extra_env=["SOME_UNSET_NAME"])
    sub = jobs.build_submission("world", _cfg(tmp_path), environ={"X_Y": "7"},
                                extra_env=["OMP_NUM_THREADS=1", "X_Y"])
    sub.cleanup()
    assert sub.runtime_env["env_vars"]["OMP_NUM_THREADS"] == "1"
    assert sub.runtime_env["env_vars"]["X_Y"] == "7"


def test_staging_has_package_and_job_config(tmp_path: Path) -> None:
    sub = jobs.build_submission("world", _cfg(tmp_path, "world.pairs=123", "ray.num_cpus=3"),
                                environ={}, extra_args=["x"])
    try:
        root = sub.staging_dir
        assert sub.runtime_env["working_dir"] == str(root)
        assert shlex.split(sub.entrypoint) == ["python", "-m", "worldclip", "world", "--config",
                                               jobs.JOB_CONFIG_NAME, "x"]
        pkg = root / "worldclip"
        for rel in ("__init__.py", "__main__.py", "cli.py", "platform/config.py",
                    "platform/jobs.py", "configs/default.yaml"):
            assert (pkg / rel).is_file(), rel
        names = {p.name for p in root.rglob("*")}
        assert not names & {".venv", ".git", "__pycache__", "tests", "worldclip-data"}
        assert not any(p.suffix in {".pyc", ".tar", ".parquet"} for p in root.rglob("*"))
        assert sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) < 5 * 2**20
        # the job reads back the same config, joined to its cluster, without keys
        job_cfg = load_config([], [str(root / jobs.JOB_CONFIG_NAME)])
        assert job_cfg.world.pairs == 123
        assert job_cfg.ray.address == "auto" and job_cfg.ray.num_cpus is None
        assert job_cfg.storage.root == str(tmp_path / "store")
        # the driver may pass its own runtime_env to ray.init() without a merge conflict
        assert sub.runtime_env["env_vars"]["RAY_OVERRIDE_JOB_RUNTIME_ENV"] == "1"
    finally:
        sub.cleanup()


def test_staged_package_imports_and_keeps_stdlib_platform(tmp_path: Path) -> None:
    """From the job's working_dir, `import worldclip` finds the shipped copy and `platform`
    is still the standard library (docs/architecture.md: why the root is not put on sys.path)."""
    dest = tmp_path / "wd"
    jobs.stage_package(dest)
    code = ("import platform, worldclip, worldclip.platform.config as c; "
            "print(platform.system()); print(worldclip.__file__)")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", code], cwd=dest, env=env, capture_output=True,
                         text=True, timeout=60, check=True).stdout.split("\n")
    assert out[0] == "Linux"
    assert Path(out[1]).resolve().is_relative_to(dest.resolve())


def test_stage_package_rejects_non_package(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not the worldclip package source"):
        jobs.stage_package(tmp_path / "out", source=tmp_path)


def test_parse_submit_shortcuts() -> None:
    ns, overrides, extra = jobs._parse_submit(
        ["world", "--pairs", "200", "--out", "/x", "world.seed=3", "more", "--wait"], cli._OUT_KEY)
    assert ns.stage == "world" and ns.wait is True
    assert overrides == ["world.seed=3", "world.out=/x", "world.pairs=200"]
    assert extra == ["more"]
    ns, _, _ = jobs._parse_submit(["curate", "--no-wait"], cli._OUT_KEY)
    assert ns.wait is False


def test_auth_headers_respect_disabled_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert jobs.auth_headers() == {}


def test_invalid_config_fails_before_contacting_a_cluster(capsys) -> None:
    # port 9 (discard) on loopback: nothing listens; the config error must come first
    rc = _cli("submit", ["world", "train.zero_stage=7", "--address", "http://127.0.0.1:9"],
                  [])
    assert rc == 2
    assert "train.zero_stage=7" in capsys.readouterr().err


def test_unknown_stage_is_a_usage_error(capsys) -> None:
    assert _cli("submit", ["nosuchstage", "--address", "http://127.0.0.1:9"], []) == 2
    assert "nosuchstage" in capsys.readouterr().err


def test_unreachable_cluster_is_a_clear_error(capsys) -> None:
    assert _cli("jobs", ["list", "--address", "http://127.0.0.1:9"], []) == 3
    err = capsys.readouterr().err
    assert "http://127.0.0.1:9" in err and "--address" in err


# ---------------------------------------------------------------- slow: a real head


def _ensure_auth_token() -> None:
    """A token in Ray's default place (~/.ray/auth_token), as `ray.init()` itself creates."""
    from ray._private.authentication.authentication_token_setup import generate_and_save_token
    from ray._raylet import AuthenticationTokenLoader

    loader = AuthenticationTokenLoader.instance()
    if not loader.has_token(ignore_auth_mode=True):
        generate_and_save_token()
        loader.reset_cache()


@pytest.fixture(scope="module")
def ray_head() -> Iterator[str]:
    """A real head (`ray start --head`) with dashboard and token auth; yields its URL."""
    _ensure_auth_token()
    temp_dir = tempfile.mkdtemp(prefix="wcray", dir="/tmp")  # short: unix socket paths
    (gcs, dash, client, agent_http, agent_grpc, renv, metrics, node_mgr,
     obj_mgr) = free_ports(9)
    venv_bin = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items()
           if k != "RAY_ADDRESS" and not k.startswith("AWS_")}
    env.update(PATH=f"{venv_bin}{os.pathsep}{env.get('PATH', '')}", RAY_AUTH_MODE="token",
               RAY_USAGE_STATS_ENABLED="0", OMP_NUM_THREADS="1")
    cmd = [shutil.which("ray", path=venv_bin) or "ray", "start", "--head",
           "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
           f"--port={gcs}", f"--dashboard-port={dash}", "--num-cpus=4", "--num-gpus=0",
           f"--temp-dir={temp_dir}", f"--ray-client-server-port={client}",
           f"--dashboard-agent-listen-port={agent_http}",
           f"--dashboard-agent-grpc-port={agent_grpc}", f"--runtime-env-agent-port={renv}",
           f"--metrics-export-port={metrics}", f"--node-manager-port={node_mgr}",
           f"--object-manager-port={obj_mgr}", "--disable-usage-stats"]
    log = open(Path(temp_dir) / "ray_start.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    sid = proc.pid  # session leader: every Ray process of this head carries this session id
    url = f"http://127.0.0.1:{dash}"
    try:
        rc = proc.wait(timeout=180)
        assert rc == 0, (Path(temp_dir) / "ray_start.log").read_text()[-3000:]
        deadline = time.time() + 120
        while True:
            try:
                req = urllib.request.Request(f"{url}/api/jobs/", headers=jobs.auth_headers())
                urllib.request.urlopen(req, timeout=5)
                break
            except (urllib.error.URLError, OSError):
                if time.time() > deadline:
                    raise
                time.sleep(1)
        yield url
    finally:
        kill_session(sid)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _submit(args: list[str], capsys) -> tuple[int, str, str]:
    rc = _cli("submit", args, [])
    out, err = capsys.readouterr()
    lines = [ln for ln in out.splitlines() if ln.startswith("worldclip-")]
    return rc, (lines[0] if lines else ""), out + err


@pytest.mark.slow
def test_token_auth_is_enforced(ray_head: str) -> None:
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"{ray_head}/api/jobs/", timeout=10)
    assert e.value.code == 401
    headers = jobs.auth_headers()
    assert headers and "authorization" in {k.lower() for k in headers}
    req = urllib.request.Request(f"{ray_head}/api/jobs/", headers=headers)
    assert urllib.request.urlopen(req, timeout=10).status == 200


@pytest.fixture(scope="module")
def world_job(ray_head: str, tmp_path_factory) -> dict[str, str]:
    """`worldclip submit world --pairs 200 --out DIR --wait` against the head, once."""
    root = tmp_path_factory.mktemp("jobroot")
    out = root / "world"
    rc = _cli("submit", ["world", "--pairs", "200", "--out", str(out), f"storage.root={root}",
                             "--address", ray_head, "--wait", "--timeout", "300"], [])
    return {"rc": str(rc), "root": str(root), "out": str(out)}


# Stages that run as jobs on the embedded world; each entry: (stage, extra args, output
# relative to the job root). curate joins once its module is installed.
STAGE_JOBS = [("world", [], "world")]
if importlib.util.find_spec("worldclip.pipelines.curate") is not None:
    STAGE_JOBS.append(("curate", [], "curated"))


@pytest.mark.slow
@pytest.mark.parametrize("stage,extra,out_rel", STAGE_JOBS, ids=[s[0] for s in STAGE_JOBS])
def test_stage_runs_as_job(stage: str, extra: list[str], out_rel: str, ray_head: str,
                           world_job: dict[str, str], capsys) -> None:
    assert world_job["rc"] == "0", "the world job failed (see its logs above)"
    root = Path(world_job["root"])
    if stage != "world":
        rc, job_id, text = _submit(
            [stage, f"storage.root={root}", f"world.out={world_job['out']}", *extra,
             "--address", ray_head, "--wait", "--timeout", "400"], capsys)
        assert rc == 0, text[-4000:]
        assert job_id.startswith(f"worldclip-{stage}-")
    out = root / out_rel
    assert (out / "config.yaml").is_file()
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) >= 3
    if stage == "world":
        assert list(out.glob("raw/wds/*.tar")) and list(out.glob("raw/parquet/*.parquet"))
        saved = (out / "config.yaml").read_text()
        assert "pairs: 200" in saved and "address: auto" in saved


@pytest.mark.slow
def test_jobs_list_status_logs(ray_head: str, world_job: dict[str, str], capsys) -> None:
    assert world_job["rc"] == "0"
    capsys.readouterr()
    assert _cli("jobs", ["list", "--address", ray_head], []) == 0
    listing = capsys.readouterr().out.splitlines()
    world_rows = [r.split("\t") for r in listing if "\tworld\t" in r]
    assert world_rows and world_rows[0][1] == "SUCCEEDED"
    job_id = world_rows[0][0]
    assert _cli("jobs", ["status", job_id, "--address", ray_head], []) == 0
    assert capsys.readouterr().out.split("\t")[1].strip() == "SUCCEEDED"
    assert _cli("jobs", ["logs", job_id, "--address", ray_head], []) == 0
    assert "Running entrypoint" in capsys.readouterr().out
    c = jobs.client(ray_head)
    meta = c.get_job_info(job_id).metadata
    assert {"stage", "user", "config_sha256"} <= set(meta)
    assert not any("SECRET" in k or "KEY" in k for k in meta)


@pytest.mark.slow
def test_failed_job_returns_nonzero(ray_head: str, tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    rc, job_id, text = _submit(["world", "--pairs", "50", "--out", str(blocker / "sub"),
                                "--address", ray_head, "--wait", "--timeout", "300"], capsys)
    assert job_id and rc == 1, text[-3000:]
    assert jobs.client(ray_head).get_job_status(job_id).value == "FAILED"


@pytest.mark.slow
def test_job_writes_to_s3_with_forwarded_endpoint(ray_head: str, s3_prefix: str,
                                                  capsys) -> None:
    """The head has no AWS_* of its own: the job reaches the test S3 only through what
    submit forwards (endpoint/region always, keys with --forward-credentials). world.workers=2
    makes the stage call ray.init(runtime_env={"env_vars": <the same AWS_* keys>}) inside
    the job, which Ray refuses to merge unless RAY_OVERRIDE_JOB_RUNTIME_ENV=1 travels too."""
    out = f"{s3_prefix}/world"
    rc, _, text = _submit(["world", "--pairs", "100", "--out", out, "world.workers=2",
                           "--address", ray_head, "--forward-credentials", "--wait",
                           "--timeout", "300"], capsys)
    assert rc == 0, text[-3000:]
    from worldclip.platform import storage

    storage.configure()
    assert storage.exists(storage.join(out, "config.yaml"))
    assert storage.glob(storage.join(out, "raw/wds/*.tar"))


def test_remote_job_refuses_local_paths_before_submitting(tmp_path: Path) -> None:
    """A cluster's nodes cannot read this machine's disk: fail before submitting, naming the
    key and pointing at object storage (docs/architecture.md, "Paths")."""
    cfg = _cfg(tmp_path)
    with pytest.raises(ConfigError, match=r"storage.root=.*object storage"):
        jobs.check_paths_reach(cfg, "http://10.0.0.5:8265")
    with pytest.raises(ConfigError, match="cluster.example.com"):
        jobs.check_paths_reach(cfg, "ray://cluster.example.com:10001")
    for local in ("http://127.0.0.1:8265", "http://localhost:8265", "127.0.0.2:8265"):
        jobs.check_paths_reach(cfg, local)  # the same machine: local paths work
    jobs.check_paths_reach(load_config([f"storage.root={tmp_path}",
                                        "job.allow_local_paths=true"]), "http://10.0.0.5:8265")
    jobs.check_paths_reach(load_config(["storage.root=s3://bucket/prefix"]),
                           "http://10.0.0.5:8265")
    # through the command: exit 2 with one line, nothing submitted (the address is not up)
    assert _cli("submit", ["world", f"storage.root={tmp_path}", "--address",
                           "http://10.0.0.5:9"], []) == 2


def test_relative_paths_resolve_against_the_driver_cwd(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = load_config(["train.tokenizer=facebook/xlm-v-base"])
    root = str(tmp_path / "worldclip-data")
    assert cfg.storage.root == root
    assert cfg.curation.input == f"{root}/world/raw/wds/*.tar"
    assert cfg.train.data == f"{root}/curated/balanced" and cfg.eval.out == f"{root}/eval"
    assert cfg.train.tokenizer == "facebook/xlm-v-base"  # a hub id stays a hub id
    (tmp_path / "tok").mkdir()
    assert load_config(["train.tokenizer=tok"]).train.tokenizer == str(tmp_path / "tok")
    assert load_config(["storage.root=s3://b/p"]).train.out == "s3://b/p/runs"
