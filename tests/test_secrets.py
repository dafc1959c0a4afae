"""Secrets never written or forwarded (issue 18, case 5): one redaction rule for every config
section and for job metadata; ray.env_vars obey the same refusal as `submit --env`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from worldclip.platform import jobs, redact, runtime
from worldclip.platform.config import ConfigError, load_config, save_config, to_yaml

WORLDCLIP = Path(sys.executable).parent / "worldclip"


def _token() -> str:
    return "hf_" + uuid.uuid4().hex + uuid.uuid4().hex[:6]


@pytest.mark.parametrize(("name", "secret"), [
    ("HF_TOKEN", True), ("hf_token", True), ("HUGGING_FACE_HUB_TOKEN", True),
    ("AWS_ACCESS_KEY_ID", True), ("AWS_SECRET_ACCESS_KEY", True), ("AWS_SESSION_TOKEN", True),
    ("api_key", True), ("apiKey", True), ("OPENAI_APIKEY", True), ("DB_PASSWORD", True),
    ("GOOGLE_APPLICATION_CREDENTIALS", True), ("access_key", True), ("secret_key", True),
    ("HFTOKEN", True), ("PGPASSWD", True),
    ("tokenizer", False), ("tokenizer_vocab", False), ("TOKENIZERS_PARALLELISM", False),
    ("OMP_NUM_THREADS", False), ("AWS_ENDPOINT_URL", False), ("endpoint_url", False),
    ("RAY_OVERRIDE_JOB_RUNTIME_ENV", False), ("language_map", False),
])
def test_one_rule_for_secret_names(name: str, secret: bool) -> None:
    assert redact.is_secret_name(name) is secret
    assert jobs.is_secret_name(name) is secret  # `submit --env` uses the same rule


def test_userinfo_urls_and_token_values() -> None:
    assert redact.strip_userinfo("https://user:pa%40ss@minio.local:9000/x?y=1") == \
        "https://***@minio.local:9000/x?y=1"
    assert redact.remove_userinfo("https://user:pass@host") == "https://host"
    assert redact.remove_userinfo("http://127.0.0.1:9000") == "http://127.0.0.1:9000"
    assert redact.is_secret_value(_token()) and redact.is_secret_value("AKIAABCDEFGHIJKLMNOP")
    assert not redact.is_secret_value("s3://bucket/key") and not redact.is_secret_value("fp32")


def test_to_yaml_masks_credentials_in_every_section() -> None:
    cfg = load_config([])
    tok = _token()
    # built in code, past validation: the saving rule must hold on its own
    OmegaConf.update(cfg, "ray.env_vars", {"HF_TOKEN": tok, "OMP_NUM_THREADS": "1"},
                     merge=False)
    OmegaConf.update(cfg, "curation.language_map", {"db_password": "pw-1234", "zh-tw": "zh"},
                     merge=False)
    cfg.storage.endpoint_url = "https://alice:pw-5678@minio.local:9000"
    cfg.job.address = "http://bob:pw-9012@head:8265"
    cfg.metadata.wiki_dumps = tok  # a token value under an innocent key
    text = to_yaml(cfg)
    for s in (tok, "pw-1234", "pw-5678", "pw-9012", "alice", "bob"):
        assert s not in text, s
    back = OmegaConf.create(text)
    assert back.ray.env_vars.OMP_NUM_THREADS == "1" and back.curation.language_map["zh-tw"] == "zh"
    assert back.storage.endpoint_url == "https://***@minio.local:9000"
    assert back.train.tokenizer == ""  # "tokenizer" is not a secret word


def test_ray_env_vars_secret_is_refused_like_submit_env() -> None:
    tok = _token()
    with pytest.raises(ConfigError) as e:
        load_config([f"ray.env_vars.HF_TOKEN={tok}"])
    assert "ray.env_vars.HF_TOKEN" in str(e.value) and tok not in str(e.value)
    with pytest.raises(ConfigError):  # a token value under an innocent name
        load_config([f"ray.env_vars.MY_SETTING={tok}"])
    with pytest.raises(ConfigError, match="--forward-credentials"):
        jobs.build_submission("world", load_config([]), environ={}, extra_env=[f"HF_TOKEN={tok}"])
    assert load_config(["ray.env_vars.TOKENIZERS_PARALLELISM=false"]).ray.env_vars


def test_endpoint_with_user_password_refused_and_never_forwarded(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(["storage.endpoint_url=https://alice:pw-5678@minio.local:9000"])
    assert "storage.endpoint_url" in str(e.value) and "pw-5678" not in str(e.value)
    # past validation (built in code, or from the environment): stripped when forwarded
    cfg = load_config([f"storage.root={tmp_path / 'store'}"])
    cfg.storage.endpoint_url = "https://alice:pw-5678@minio.local:9000"
    sub = jobs.build_submission("world", cfg, environ={
        "AWS_ENDPOINT_URL_S3": "https://carol:pw-3456@other:9000"})
    try:
        env = sub.runtime_env["env_vars"]
        assert env["AWS_ENDPOINT_URL"] == "https://minio.local:9000"
        assert env["AWS_ENDPOINT_URL_S3"] == "https://other:9000"
        shipped = json.dumps([sub.runtime_env, sub.metadata]) + sub.config_yaml + \
            (sub.staging_dir / jobs.JOB_CONFIG_NAME).read_text()
        for s in ("pw-5678", "pw-3456", "alice", "carol"):
            assert s not in shipped
    finally:
        sub.cleanup()


def test_hf_token_in_no_saved_config_job_yaml_or_env(tmp_path: Path) -> None:
    tok = _token()
    cfg = load_config([f"storage.root={tmp_path / 'store'}"])
    OmegaConf.update(cfg, "ray.env_vars", {"HF_TOKEN": tok, "KEEP_ME": "1"}, merge=False)
    save_config(cfg, str(tmp_path / "out"))
    assert tok not in (tmp_path / "out" / "config.yaml").read_text()
    sub = jobs.build_submission("curate", cfg, environ={})
    try:
        job_yaml = (sub.staging_dir / jobs.JOB_CONFIG_NAME).read_text()
        assert tok not in job_yaml and tok not in sub.config_yaml
        assert tok not in json.dumps([sub.runtime_env, sub.metadata, sub.entrypoint])
        assert OmegaConf.create(job_yaml).ray.env_vars == {"KEEP_ME": "1"}
    finally:
        sub.cleanup()
    env = runtime.worker_env({"HF_TOKEN": tok, "KEEP_ME": "1"})
    assert "HF_TOKEN" not in env and env["KEEP_ME"] == "1"


def _run(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_ADDRESS": ""}
    return subprocess.run([str(WORLDCLIP), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("command", [["curate"], ["submit", "curate"], ["world"]])
def test_cli_hf_token_via_ray_env_vars_refused_and_never_echoed(tmp_path: Path,
                                                                command: list[str]) -> None:
    tok = _token()
    p = _run(tmp_path, *command, f"ray.env_vars.HF_TOKEN={tok}",
             f"storage.root={tmp_path / 'store'}")
    assert p.returncode == 2, p.stderr[-2000:]
    assert "Traceback" not in p.stderr and "ray.env_vars.HF_TOKEN" in p.stderr
    assert tok not in p.stderr and tok not in p.stdout  # not in the log either
    assert list(tmp_path.iterdir()) == []  # no config.yaml, no worldclip-job.yaml anywhere


@pytest.mark.slow
def test_hf_token_never_reaches_ray_logs(ray_session) -> None:
    """A task started with the runtime_env a stage would build: the token is not in it, so
    not in any Ray session log (Ray's agent logs runtime_env env_vars)."""
    from test_security import _ray_session_logs

    ray = ray_session
    tok = _token()
    env = runtime.worker_env({"HF_TOKEN": tok, "WC_MARK": "wc-mark-" + uuid.uuid4().hex})

    @ray.remote(runtime_env={"env_vars": env})
    def read() -> tuple[str | None, str | None]:
        return os.environ.get("HF_TOKEN"), os.environ.get("WC_MARK")

    token_seen, mark = ray.get(read.remote())
    assert token_seen != tok and mark == env["WC_MARK"]
    leaked = [str(p) for p in _ray_session_logs() if tok.encode() in p.read_bytes()]
    assert leaked == []
