"""Cluster configs: the launcher YAMLs pass Ray's own schema and validator; the KubeRay
manifests use only fields the ray.io/v1 CRDs define; no file carries credentials."""

from __future__ import annotations

import copy
import json
import re
import shlex
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

CLUSTER = Path(__file__).resolve().parent.parent / "cluster"
LAUNCHER = [CLUSTER / "aws.yaml", CLUSTER / "gcp.yaml"]
KUBERAY = [CLUSTER / "kuberay" / "raycluster.yaml", CLUSTER / "kuberay" / "rayjob.yaml"]


def _load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def _ray_schema() -> dict[str, Any]:
    import ray.autoscaler

    path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    return json.loads(path.read_text())


# ---------------------------------------------------------------- Ray cluster launcher


@pytest.mark.parametrize("path", LAUNCHER, ids=lambda p: p.name)
def test_launcher_yaml_matches_ray_schema(path: Path) -> None:
    jsonschema.validate(_load(path), _ray_schema())


@pytest.mark.parametrize("path", LAUNCHER, ids=lambda p: p.name)
def test_launcher_yaml_passes_ray_validate_config(path: Path) -> None:
    """What `ray up` does before launching anything: merge provider defaults, validate."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(_load(path)))
    validate_config(prepared)
    types = prepared["available_node_types"]
    assert prepared["head_node_type"] in types
    assert sum(t.get("min_workers", 0) for t in types.values()) <= prepared["max_workers"]


def test_the_schema_check_can_fail() -> None:
    bad = _load(LAUNCHER[0])
    bad["available_node_types"]["ray.worker.cpu"]["min_wrokers"] = 0  # a typo must not pass
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, _ray_schema())


@pytest.mark.parametrize("path", LAUNCHER, ids=lambda p: p.name)
def test_launcher_shape(path: Path) -> None:
    c = _load(path)
    types = c["available_node_types"]
    head = types[c["head_node_type"]]
    assert head["resources"].get("CPU") == 0 and not head["resources"].get("GPU")
    workers = {k: v for k, v in types.items() if k != c["head_node_type"]}
    gpu = {k: v for k, v in workers.items() if v["resources"].get("GPU")}
    cpu = {k: v for k, v in workers.items() if not v["resources"].get("GPU")}
    assert len(gpu) >= 2 and len(cpu) >= 1
    assert all(v["resources"]["GPU"] == 8 for v in gpu.values())
    for v in workers.values():  # autoscaling from zero
        assert v["min_workers"] == 0 and v["max_workers"] >= 1
    assert 0 < c["idle_timeout_minutes"] <= 30
    head_start = " ".join(c["head_start_ray_commands"])
    # dashboard never on a public interface; reached through `ray dashboard` (ssh tunnel)
    assert "--dashboard-host=127.0.0.1" in head_start and "0.0.0.0" not in head_start
    assert "--num-cpus=0" in head_start
    for cmds in (c["head_start_ray_commands"], c["worker_start_ray_commands"]):
        assert "RAY_AUTH_MODE=token" in " ".join(cmds)
    # torch is pinned everywhere, CPU build on CPU nodes and CUDA build on GPU nodes
    assert any("torch==2.13.0" in s and "/whl/cpu" in s for s in c["setup_commands"])
    for v in gpu.values():
        cmds = " ".join(v["worker_setup_commands"])
        assert "torch==2.13.0" in cmds and "/whl/cu" in cmds
    for cmd in [*c["setup_commands"], *c.get("head_setup_commands", []),
                *(x for v in gpu.values() for x in v["worker_setup_commands"])]:
        for pkg in pip_packages(cmd):
            assert "==" in pkg, f"{path.name}: unpinned pip package {pkg!r} in {cmd!r}"


def pip_packages(cmd: str) -> list[str]:
    """Requirement arguments of `pip install` in a shell command (not options, not paths)."""
    tokens = shlex.split(cmd)
    out = []
    for i, t in enumerate(tokens[:-1]):
        if t == "pip" and tokens[i + 1] == "install":
            skip_next = False
            for a in tokens[i + 2:]:
                if a in {";", "&&", "||", "|"}:
                    break
                if skip_next:
                    skip_next = False
                elif a in {"--index-url", "-i", "--extra-index-url", "-r", "-c", "-f"}:
                    skip_next = True
                elif not a.startswith(("-", "~", "/", ".")):
                    out.append(a)
    return out


def test_pip_packages() -> None:
    assert pip_packages("pip install -U torch==2.1 --index-url https://x/y ~/w boto3") == [
        "torch==2.1", "boto3"]


def test_aws_nodes_use_instance_profiles() -> None:
    c = _load(CLUSTER / "aws.yaml")
    for name, t in c["available_node_types"].items():
        assert "IamInstanceProfile" in t["node_config"], name


def test_gcp_nodes_use_service_accounts() -> None:
    c = _load(CLUSTER / "gcp.yaml")
    for name, t in c["available_node_types"].items():
        sas = t["node_config"]["serviceAccounts"]
        assert sas and all(s["email"].endswith(".iam.gserviceaccount.com") for s in sas), name
        if t["resources"].get("GPU"):
            assert t["node_config"]["scheduling"][0]["onHostMaintenance"] == "TERMINATE"


# ---------------------------------------------------------------- KubeRay manifests
# No CRD ships with ray: this is the subset of the ray.io/v1 field names (KubeRay
# apis/ray/v1 raycluster_types.go / rayjob_types.go, + authOptions from v1.5.1) and of the
# Kubernetes core/v1 pod fields. A manifest key outside it is a typo the API server would
# silently drop (or reject), and the cluster would come up without it.
STR_MAP = "map[string]string"
ANY = "any"
QUANTITY_MAP = "quantities"

CONTAINER = {
    "name": str, "image": str, "imagePullPolicy": str, "command": ANY, "args": ANY,
    "env": [{"name": str, "value": str, "valueFrom": ANY}], "envFrom": ANY, "ports": [
        {"containerPort": int, "name": str, "protocol": str}],
    "resources": {"requests": QUANTITY_MAP, "limits": QUANTITY_MAP},
    "volumeMounts": [{"name": str, "mountPath": str, "readOnly": bool, "subPath": str}],
    "lifecycle": ANY, "securityContext": ANY, "livenessProbe": ANY, "readinessProbe": ANY,
    "workingDir": str,
}
POD_TEMPLATE = {
    "metadata": {"labels": STR_MAP, "annotations": STR_MAP},
    "spec": {
        "serviceAccountName": str, "containers": [CONTAINER], "initContainers": [CONTAINER],
        "nodeSelector": STR_MAP, "tolerations": [
            {"key": str, "operator": str, "value": str, "effect": str}],
        "affinity": ANY, "volumes": [{"name": str, "emptyDir": {"medium": str, "sizeLimit": str},
                                      "persistentVolumeClaim": ANY, "secret": ANY,
                                      "configMap": ANY}],
        "imagePullSecrets": ANY, "priorityClassName": str, "securityContext": ANY,
        "terminationGracePeriodSeconds": int, "schedulerName": str,
    },
}
AUTOSCALER_OPTIONS = {
    "resources": {"requests": QUANTITY_MAP, "limits": QUANTITY_MAP}, "image": str,
    "imagePullPolicy": str, "securityContext": ANY, "idleTimeoutSeconds": int,
    "upscalingMode": str, "env": ANY, "envFrom": ANY, "volumeMounts": ANY,
}
RAY_CLUSTER_SPEC = {
    "suspend": bool, "managedBy": str, "autoscalerOptions": AUTOSCALER_OPTIONS,
    "headServiceAnnotations": STR_MAP, "enableInTreeAutoscaling": bool,
    "gcsFaultToleranceOptions": ANY, "rayVersion": str,
    "authOptions": {"mode": str, "secretName": str},
    "headGroupSpec": {"template": POD_TEMPLATE, "headService": ANY, "enableIngress": bool,
                      "rayStartParams": STR_MAP, "serviceType": str},
    "workerGroupSpecs": [{
        "suspend": bool, "groupName": str, "replicas": int, "minReplicas": int,
        "maxReplicas": int, "idleTimeoutSeconds": int, "rayStartParams": STR_MAP,
        "template": POD_TEMPLATE, "scaleStrategy": ANY, "numOfHosts": int}],
}
RAY_JOB_SPEC = {
    "activeDeadlineSeconds": int, "backoffLimit": int, "rayClusterSpec": RAY_CLUSTER_SPEC,
    "submitterPodTemplate": POD_TEMPLATE, "metadata": STR_MAP, "clusterSelector": STR_MAP,
    "submitterConfig": {"backoffLimit": int}, "managedBy": str, "deletionPolicy": str,
    "entrypoint": str, "runtimeEnvYAML": str, "jobId": str, "submissionMode": str,
    "entrypointResources": str, "entrypointNumCpus": (int, float),
    "entrypointNumGpus": (int, float), "ttlSecondsAfterFinished": int,
    "shutdownAfterJobFinishes": bool, "suspend": bool,
}
OBJECT_META = {"name": str, "namespace": str, "labels": STR_MAP, "annotations": STR_MAP}
KINDS = {
    ("ray.io/v1", "RayCluster"): RAY_CLUSTER_SPEC,
    ("ray.io/v1", "RayJob"): RAY_JOB_SPEC,
}
QUANTITY = re.compile(r"^\d+(\.\d+)?(m|Ki|Mi|Gi|Ti|k|M|G|T)?$")


def unknown_fields(value: Any, schema: Any, path: str = "") -> list[str]:
    """Problems of `value` against the field-name schema: unknown keys and wrong types."""
    if schema is ANY:
        return []
    if schema is STR_MAP:
        if not isinstance(value, dict):
            return [f"{path}: expected a map"]
        return [f"{path}.{k}: must be a string (KubeRay maps are map[string]string), got "
                f"{v!r}" for k, v in value.items() if not isinstance(v, str)]
    if schema is QUANTITY_MAP:
        return [f"{path}.{k}: {v!r} is not a Kubernetes quantity"
                for k, v in value.items() if not QUANTITY.match(str(v))]
    if isinstance(schema, list):
        if not isinstance(value, list):
            return [f"{path}: expected a list"]
        return [p for i, v in enumerate(value) for p in unknown_fields(v, schema[0],
                                                                      f"{path}[{i}]")]
    if isinstance(schema, dict):
        if not isinstance(value, dict):
            return [f"{path}: expected an object"]
        out = []
        for k, v in value.items():
            if k not in schema:
                out.append(f"{path}.{k}: not a field here (known: {sorted(schema)})")
            else:
                out.extend(unknown_fields(v, schema[k], f"{path}.{k}"))
        return out
    if schema is int and isinstance(value, bool):
        return [f"{path}: expected int, got bool"]
    return [] if isinstance(value, schema) else [f"{path}: expected {schema}, got {value!r}"]


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _cluster_specs(doc: dict[str, Any]) -> list[dict[str, Any]]:
    if doc["kind"] == "RayCluster":
        return [doc["spec"]]
    if doc["kind"] == "RayJob":
        return [doc["spec"]["rayClusterSpec"]]
    return []


@pytest.mark.parametrize("path", KUBERAY, ids=lambda p: p.name)
def test_kuberay_manifest_uses_known_fields(path: Path) -> None:
    docs = _docs(path)
    assert any(d["apiVersion"] == "ray.io/v1" for d in docs)
    for d in docs:
        if d["apiVersion"] == "v1":
            assert d["kind"] == "ServiceAccount"
            continue
        spec_schema = KINDS[(d["apiVersion"], d["kind"])]
        assert set(d) <= {"apiVersion", "kind", "metadata", "spec"}
        problems = unknown_fields(d["metadata"], OBJECT_META, "metadata")
        problems += unknown_fields(d["spec"], spec_schema, "spec")
        assert not problems, f"{path.name} {d['kind']} {d['metadata']['name']}: {problems}"


def test_field_check_catches_typos_and_unquoted_params() -> None:
    doc = _docs(CLUSTER / "kuberay" / "raycluster.yaml")[-1]
    spec = copy.deepcopy(doc["spec"])
    spec["workerGroupSpecs"][0]["minReplica"] = 0
    spec["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0
    problems = unknown_fields(spec, RAY_CLUSTER_SPEC, "spec")
    assert any("minReplica:" in p for p in problems)
    assert any("num-cpus" in p and "string" in p for p in problems)


@pytest.mark.parametrize("path", KUBERAY, ids=lambda p: p.name)
def test_kuberay_autoscaling_gpu_groups(path: Path) -> None:
    for d in _docs(path):
        for spec in _cluster_specs(d):
            assert spec["enableInTreeAutoscaling"] is True
            assert spec["authOptions"]["mode"] == "token"
            assert spec["headGroupSpec"].get("serviceType", "ClusterIP") == "ClusterIP"
            assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
            head_pod = spec["headGroupSpec"]["template"]["spec"]
            assert head_pod["serviceAccountName"] == "worldclip-ray"
            for g in spec["workerGroupSpecs"]:
                assert g["minReplicas"] == 0 and g["maxReplicas"] >= 1, g["groupName"]
                assert g.get("replicas", 0) == 0
                pod = g["template"]["spec"]
                assert pod["serviceAccountName"] == "worldclip-ray"
                res = pod["containers"][0]["resources"]
                gpus = res["limits"].get("nvidia.com/gpu")
                if g["groupName"].startswith("gpu"):
                    assert gpus == "8" and res["requests"]["nvidia.com/gpu"] == "8"
                    assert "cu" in pod["containers"][0]["image"].rsplit(":", 1)[1]
                else:
                    assert gpus is None
            assert any(g["groupName"].startswith("gpu") for g in spec["workerGroupSpecs"]) or \
                d["kind"] == "RayJob"


def test_kuberay_service_account_has_workload_identity() -> None:
    sa = next(d for d in _docs(CLUSTER / "kuberay" / "raycluster.yaml")
              if d["kind"] == "ServiceAccount")
    ann = sa["metadata"]["annotations"]
    assert ann["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")
    assert ann["iam.gke.io/gcp-service-account"].endswith(".iam.gserviceaccount.com")


def test_rayjobs_run_worldclip_stages() -> None:
    jobs = {d["metadata"]["name"]: d["spec"] for d in _docs(CLUSTER / "kuberay" / "rayjob.yaml")}
    assert {"worldclip-curate", "worldclip-train"} <= set(jobs)
    for name, spec in jobs.items():
        stage = name.split("-", 1)[1]
        assert spec["entrypoint"].startswith(f"python -m worldclip {stage} ")
        assert spec["metadata"] == {"stage": stage}
        assert spec["shutdownAfterJobFinishes"] is True
        env = yaml.safe_load(spec["runtimeEnvYAML"])["env_vars"]
        # without it a stage's ray.init(runtime_env=...) conflicts with the job's env_vars
        assert env["RAY_OVERRIDE_JOB_RUNTIME_ENV"] == "1"
    train = jobs["worldclip-train"]
    assert "train.use_gpu=true" in train["entrypoint"]
    groups = train["rayClusterSpec"]["workerGroupSpecs"]
    assert any(g["template"]["spec"]["containers"][0]["resources"]["limits"].get(
        "nvidia.com/gpu") for g in groups)


def test_stage_entrypoints_parse_as_configs() -> None:
    """The overrides in the RayJob entrypoints are valid worldclip config keys and values."""
    from worldclip.platform.config import load_config

    for d in _docs(CLUSTER / "kuberay" / "rayjob.yaml"):
        overrides = [t for t in d["spec"]["entrypoint"].split() if "=" in t]
        cfg = load_config(overrides)
        assert str(cfg.storage.root).startswith("s3://")


# ---------------------------------------------------------------- secrets

SECRET_PATTERNS = [
    re.compile(r"AKIA[0-9A-Z]{16}"),  # AWS access key id
    re.compile(r"ASIA[0-9A-Z]{16}"),  # AWS temporary key id
    re.compile(r"(?i)aws_secret_access_key\s*[:=]"),
    re.compile(r"(?i)(secret_key|secret-key|secretkey)\s*[:=]\s*\S+"),
    re.compile(r"(?i)aws_access_key_id\s*[:=]"),
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r'"private_key"\s*:'),  # GCP service account key JSON
    re.compile(r"(?i)RAY_AUTH_TOKEN\s*[:=]\s*\S{16,}"),
]


def test_no_credentials_in_cluster_files() -> None:
    files = [p for p in CLUSTER.rglob("*") if p.is_file()]
    assert len(files) >= 5
    for p in files:
        text = p.read_text()
        for pat in SECRET_PATTERNS:
            assert not pat.search(text), f"{p.relative_to(CLUSTER)} matches {pat.pattern}"


def test_secret_patterns_detect_keys() -> None:
    key_id = "AKIA" + "IOSFODNN7EXAMPLE"
    assert any(p.search(f"access_key: {key_id}") for p in SECRET_PATTERNS)
    assert any(p.search("secret_key: abc123") for p in SECRET_PATTERNS)
