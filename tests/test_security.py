"""Security: no unsafe deserialisation in the source tree; credentials never reach outputs or
logs.

The source scan parses every module (AST, so aliases like `import numpy as np` and keyword
arguments are understood) and flags: pickle/dill/cloudpickle/marshal load(s), torch.load
without weights_only=True, yaml.load without a safe loader (and yaml.unsafe_load/full_load),
np.load with allow_pickle=True, tar extract/extractall, eval/exec, trust_remote_code=True.
A self-test proves the scanner catches each pattern.
"""

from __future__ import annotations

import ast
import logging
import uuid
from pathlib import Path

import pytest

from worldclip.platform import storage

ROOT = Path(__file__).resolve().parent.parent
SCANNED = [ROOT / "pipelines", ROOT / "platform", ROOT / "models", ROOT / "cli.py"]
PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "marshal", "joblib"}
SAFE_YAML_LOADERS = {"SafeLoader", "CSafeLoader", "BaseLoader", "CBaseLoader"}


def _aliases(tree: ast.AST) -> dict[str, str]:
    """local name -> dotted origin ("np" -> "numpy", "load" -> "pickle.load")."""
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                names[a.asname or a.name.split(".")[0]] = a.name if a.asname else \
                    a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                names[a.asname or a.name] = f"{node.module}.{a.name}"
    return names


def _dotted(func: ast.expr, aliases: dict[str, str]) -> str:
    parts = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    parts.append(aliases.get(func.id, func.id) if isinstance(func, ast.Name) else "?")
    return ".".join(reversed(parts))


def _kw(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_true(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def find_unsafe_calls(source: str, filename: str = "<src>") -> list[str]:
    """Every unsafe call in source, as 'file:line: what'."""
    tree = ast.parse(source, filename)
    aliases = _aliases(tree)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func, aliases)
        head, _, last = name.rpartition(".")
        bad = ""
        if head.split(".")[0] in PICKLE_MODULES and last in ("load", "loads", "Unpickler"):
            bad = f"{name}: unpickling"
        elif name == "torch.load" and not _is_true(_kw(node, "weights_only")):
            bad = "torch.load without weights_only=True"
        elif name in ("yaml.unsafe_load", "yaml.full_load", "yaml.unsafe_load_all"):
            bad = f"{name}"
        elif name in ("yaml.load", "yaml.load_all"):
            loader = _kw(node, "Loader") or (node.args[1] if len(node.args) > 1 else None)
            if loader is None or _dotted(loader, aliases).rpartition(".")[2] not in \
                    SAFE_YAML_LOADERS:
                bad = f"{name} without a safe Loader"
        elif name in ("numpy.load", "np.load") and not (
                _kw(node, "allow_pickle") is None or (
                    isinstance(_kw(node, "allow_pickle"), ast.Constant)
                    and _kw(node, "allow_pickle").value is False)):
            bad = "numpy.load with allow_pickle not False"
        elif last in ("extractall", "extract") and isinstance(node.func, ast.Attribute):
            bad = f"{name}: extracting archive members to disk"
        elif name in ("eval", "exec"):
            bad = f"{name}()"
        if _is_true(_kw(node, "trust_remote_code")):
            bad = f"{name}(trust_remote_code=True)"
        if bad:
            found.append(f"{filename}:{node.lineno}: {bad}")
    return found


def _sources() -> list[Path]:
    files = []
    for p in SCANNED:
        files += sorted(p.rglob("*.py")) if p.is_dir() else [p]
    return files


def test_scanner_catches_every_pattern() -> None:
    bad = """
import pickle, yaml, tarfile
import numpy as np
import torch as T
from pickle import loads as L
from yaml import FullLoader
import cloudpickle
pickle.load(f)
L(b"")
cloudpickle.loads(b"")
T.load("x.pt")
T.load("x.pt", weights_only=False)
yaml.load(s)
yaml.load(s, Loader=FullLoader)
yaml.unsafe_load(s)
np.load("x.npy", allow_pickle=True)
tarfile.open("x").extractall("/tmp")
tar.extract(m)
eval("1")
AutoModel.from_pretrained("x", trust_remote_code=True)
"""
    found = find_unsafe_calls(bad)
    assert [int(f.split(":")[1]) for f in found] == list(range(8, 21)), found
    good = """
import yaml, json
import numpy as np
import torch
from yaml import SafeLoader
torch.load("x.pt", weights_only=True)
yaml.load(s, Loader=yaml.SafeLoader)
yaml.load(s, SafeLoader)
yaml.safe_load(s)
np.load("x.npz", allow_pickle=False)
np.load("x.npy")
json.loads(s)
tar.extractfile(m)
model.eval()
"""
    assert find_unsafe_calls(good) == []


def test_source_tree_has_no_unsafe_deserialisation() -> None:
    files = _sources()
    assert len(files) > 10 and (ROOT / "pipelines" / "curate" / "stage.py") in files
    found = [f for p in files for f in find_unsafe_calls(p.read_text(), str(p.relative_to(ROOT)))]
    assert found == []


# ---------------------------------------------------------------- credentials

def _all_objects(prefix: str) -> dict[str, bytes]:
    fs = storage.filesystem(prefix)
    return {p: fs.cat_file(p) for p in fs.find(storage.strip_scheme(prefix))}


def _ray_session_logs() -> list[Path]:
    import ray

    session = Path(ray._private.worker._global_node.get_session_dir_path())
    return [p for p in (session / "logs").rglob("*") if p.is_file()]


@pytest.mark.slow
def test_credentials_never_in_outputs_or_logs(ray_session, s3_server, s3_prefix, caplog,
                                               capfd) -> None:
    from worldclip.pipelines import curate, world
    from worldclip.platform.config import apply_storage, load_config, to_yaml

    key = f"AKIAWC{uuid.uuid4().hex[:14].upper()}"
    secret = f"wc-secret-{uuid.uuid4().hex}"
    env_secret = s3_server["AWS_SECRET_ACCESS_KEY"]
    caplog.set_level(logging.INFO)
    wcfg = load_config([f"storage.root={s3_prefix}", "world.pairs=60",
                        "world.pairs_per_shard=30", "world.formats=[wds]"])
    world.generate_world(wcfg.world)
    cfg = load_config([f"storage.root={s3_prefix}", f"storage.endpoint_url={s3_server['endpoint']}",
                       "storage.region=us-east-1", f"storage.access_key={key}",
                       f"storage.secret_key={secret}"])
    apply_storage(cfg)  # what the CLI does: the driver's S3 client uses the config credentials
    try:
        assert storage.s3_options().secret_key == secret
        assert secret not in repr(storage.s3_options()) and key not in repr(storage.s3_options())
        summary = curate.run(cfg)
    finally:
        storage.configure()  # back to the session's environment credentials
    assert summary["pairs_in"] == 60
    assert key not in to_yaml(cfg) and secret not in to_yaml(cfg)

    objects = _all_objects(s3_prefix)
    names = {p.rsplit("/", 1)[-1] for p in objects}
    assert {"datacard.json", "config.yaml", "counts.npz"} <= names
    for path, data in objects.items():
        for s in (key, secret, env_secret):
            assert s.encode() not in data, f"{s[:6]}... found in {path}"
    captured = capfd.readouterr()
    for text, where in ((caplog.text, "logs"), (captured.out, "stdout"), (captured.err, "stderr"),
                        (str(summary), "summary")):
        for s in (key, secret, env_secret):
            assert s not in text, f"{s[:6]}... found in {where}"
    for p in _ray_session_logs():  # the config credentials never travel to Ray at all
        data = p.read_bytes()
        assert key.encode() not in data and secret.encode() not in data, p


@pytest.mark.slow
def test_worker_credentials_not_in_ray_session_logs(ray_session, s3_server) -> None:
    ray = ray_session
    assert ray.get(ray.remote(lambda: 1).remote()) == 1  # a worker with the runtime_env
    secret = s3_server["AWS_SECRET_ACCESS_KEY"].encode()
    leaked = [str(p) for p in _ray_session_logs() if secret in p.read_bytes()]
    assert leaked == []


def _debug_log_of_s3_io(s3_server, s3_prefix: str, caplog, key: str, secret: str) -> str:
    """Log text (DEBUG, all loggers) of one write + read through storage with these keys."""
    caplog.set_level(logging.DEBUG)
    storage.configure(storage.S3Options(endpoint_url=s3_server["endpoint"], region="us-east-1",
                                        access_key=key, secret_key=secret))
    try:
        storage.write_bytes(f"{s3_prefix}/x.bin", b"x")
        assert storage.read_bytes(f"{s3_prefix}/x.bin") == b"x"
    finally:
        storage.configure()
    assert "DEBUG" in caplog.text or caplog.handler.level <= logging.DEBUG  # -v really on
    # storage pins botocore at INFO: its DEBUG request dumps carry the Authorization header
    assert logging.getLogger("botocore").getEffectiveLevel() >= logging.INFO
    return caplog.text


def test_secret_key_not_in_debug_logs(s3_server, s3_prefix, caplog) -> None:
    secret = f"wc-debug-secret-{uuid.uuid4().hex}"
    assert secret not in _debug_log_of_s3_io(s3_server, s3_prefix, caplog, "AKIAWCDEBUG", secret)


def test_access_key_id_not_in_debug_logs(s3_server, s3_prefix, caplog) -> None:
    key = f"AKIAWC{uuid.uuid4().hex[:14].upper()}"
    assert key not in _debug_log_of_s3_io(s3_server, s3_prefix, caplog, key, "wc-debug-secret")
