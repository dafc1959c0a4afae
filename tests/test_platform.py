"""Foundation: layout guard, config validation, storage round-trips on local and real S3."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from worldclip.platform import storage
from worldclip.platform.config import ConfigError, load_config, save_config, to_yaml

ROOT = Path(__file__).resolve().parent.parent


def test_stdlib_platform_not_shadowed_from_repo_root():
    out = subprocess.run([sys.executable, "-c", "import platform; print(platform.system())"],
                         cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() in {"Linux", "Darwin", "Windows"}
    for sub in ("platform", "pipelines", "models"):
        assert not (ROOT / sub / "__init__.py").exists(), f"{sub}/__init__.py shadows stdlib"


def test_cli_help_lists_stages():
    out = subprocess.run([sys.executable, "-m", "worldclip", "--help"], capture_output=True,
                         text=True, check=True)
    for stage in ("world", "curate", "rebalance", "train", "eval", "demo", "tune", "submit"):
        assert stage in out.stdout


@pytest.mark.parametrize("override, key, allowed", [
    ("train.zero_stage=4", "train.zero_stage=4", "0, 1, 2, 3"),
    ("curation.mode=batch", "curation.mode='batch'", "offline, online"),
    ("curation.lid_backend=cld3", "curation.lid_backend='cld3'", "fasttext, langdetect"),
])
def test_config_choice_errors_name_key_value_and_allowed(override, key, allowed):
    with pytest.raises(ConfigError) as e:
        load_config([override])
    assert key in str(e.value) and allowed in str(e.value)


def test_config_threshold_exactly_one_and_types():
    with pytest.raises(ConfigError, match="set exactly one"):
        load_config(["curation.t_en=20000"])  # p defaults to 0.06: both set
    cfg = load_config(["curation.t_en=20000", "curation.p=null"])
    assert cfg.curation.t_en == 20000
    with pytest.raises(ConfigError, match="curation.p"):
        load_config(["curation.p=1.5"])
    with pytest.raises(ConfigError, match="world.pairs"):
        load_config(["world.pairs=notanumber"])
    with pytest.raises(ConfigError, match="bf16"):
        load_config(["train.precision=bf16"])  # needs a GPU


def test_config_interpolation_and_saved_redacted(tmp_path):
    cfg = load_config([f"storage.root={tmp_path}", "storage.secret_key=s3cr3t"])
    assert cfg.world.out == f"{tmp_path}/world"
    assert cfg.curation.input == f"{tmp_path}/world/raw/wds/*.tar"
    save_config(cfg, str(tmp_path / "out"))
    text = (tmp_path / "out" / "config.yaml").read_text()
    assert "s3cr3t" not in text and "***" in text and "zero_stage: 2" in text
    assert "s3cr3t" not in to_yaml(cfg)


def _roundtrip(root: str) -> None:
    url = storage.join(root, "a", "b.json")
    storage.write_json(url, {"x": [1, 2, "ü"]})
    assert storage.read_json(url) == {"x": [1, 2, "ü"]}
    with storage.atomic_writer(storage.join(root, "a", "big.bin")) as f:
        for _ in range(4):
            f.write(b"\0" * (1 << 20))
    assert len(storage.read_bytes(storage.join(root, "a", "big.bin"))) == 4 << 20
    listed = storage.glob(storage.join(root, "a", "*"))
    assert [u.rsplit("/", 1)[1] for u in listed] == ["b.json", "big.bin"]
    assert all(u.startswith(root.split("://")[0]) for u in listed)
    # the same filesystem handed to pyarrow / Ray Data
    path, fs = storage.ray_path(storage.join(root, "t.parquet"))
    pq.write_table(pa.table({"k": ["a", "b"]}), path, filesystem=fs)
    assert pq.read_table(path, filesystem=fs).column("k").to_pylist() == ["a", "b"]
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(storage.join(root, "missing"))


def test_storage_roundtrip_local(tmp_path):
    _roundtrip(str(tmp_path))
    _roundtrip(f"file://{tmp_path}/f")


def test_storage_roundtrip_s3(s3_prefix):
    _roundtrip(s3_prefix)


def test_atomic_write_leaves_nothing_on_crash(tmp_path, s3_prefix):
    for root in (str(tmp_path), s3_prefix):
        url = storage.join(root, "half.bin")
        with pytest.raises(RuntimeError), storage.atomic_writer(url) as f:
            f.write(b"x" * 1000)
            raise RuntimeError("crash mid-write")
        assert not storage.exists(url)
        assert storage.glob(storage.join(root, "*")) == []


def test_bad_json_names_the_file(tmp_path):
    (tmp_path / "m.json").write_text("{not json")
    with pytest.raises(ValueError, match="m.json: not valid JSON"):
        storage.read_json(str(tmp_path / "m.json"))


def test_retry_backs_off_on_transient_then_succeeds():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("connection reset")
        return "ok"

    assert storage.retry(flaky, what="flaky", base_delay=0.01) == "ok"
    assert len(calls) == 3
    with pytest.raises(FileNotFoundError):
        storage.retry(lambda: (_ for _ in ()).throw(FileNotFoundError("x")), what="nf")


def test_s3_options_repr_hides_secrets():
    o = storage.S3Options(endpoint_url="http://h", access_key="AKIAXXXX", secret_key="zzz")
    assert "AKIA" not in repr(o) and "zzz" not in repr(o)


def test_every_subpackage_is_in_the_wheel() -> None:
    """A package missing from pyproject's list works in the editable install the tests use
    and is absent from `pip install .` (a cluster image): list every folder with code."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
                 ["packages"])
    dirs = {p.parent for top in ("pipelines", "platform", "models")
            for p in (ROOT / top).rglob("*.py") if "__pycache__" not in p.parts}
    want = {".".join(("worldclip", *d.relative_to(ROOT).parts)) for d in dirs}
    assert want <= listed, sorted(want - listed)
