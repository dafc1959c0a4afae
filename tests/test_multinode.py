"""Multi-node behaviour on one machine: work spreads over two Ray nodes, and an autoscaler
adds GPU worker nodes on demand and removes them when idle.

Each scenario runs in its own subprocess with its own Ray (this file is also the script:
`python tests/test_multinode.py <stage>`), so it never shares state with the test session's
local Ray. The subprocess gets a private RAY_TMPDIR: ray.cluster_utils.Cluster writes its
address to <tmp>/ray/ray_current_cluster, where a plain `ray.init()` of anyone else on the
machine would otherwise find it and join it.

Stages (STAGES below; each prints one `RESULT {json}` line):
  data       2-node ray.cluster_utils.Cluster (2 CPUs + {"node_a": 1} / {"node_b": 1}):
             a Ray Data map and plain tasks report the node they ran on.
  autoscale  a fake autoscaling cluster (the in-tree autoscaler with Ray's fake multi-node
             provider, config inline) with a {"GPU": 1} worker type, min 0 / max 2.
  mission    the same 2-node Cluster: world -> curate (match actors on both nodes) ->
             train (2 Ray Train workers, placement SPREAD: one per node).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve()
RESULT = "RESULT "


# ---------------------------------------------------------------- helpers (both sides)


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def kill_session(sid: int, grace: float = 5.0) -> int:
    """SIGTERM then SIGKILL every live process of one session; never touches other Rays."""
    import psutil

    def members() -> list[psutil.Process]:
        out = []
        for p in psutil.process_iter():
            try:
                if p.pid != os.getpid() and os.getsid(p.pid) == sid and \
                        p.status() != psutil.STATUS_ZOMBIE:
                    out.append(p)
            except (ProcessLookupError, PermissionError, psutil.Error):
                pass
        return out

    procs = members()
    for p in procs:
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for p in alive + members():
        try:
            p.kill()
        except psutil.Error:
            pass
    return len(procs)


def _ensure_token_auth() -> None:
    """Token auth like a Ray 2.60 default cluster: mode token, token in ~/.ray/auth_token.
    An explicit RAY_AUTH_MODE (e.g. disabled) is respected."""
    if os.environ.setdefault("RAY_AUTH_MODE", "token") != "token":
        return
    from ray._private.authentication.authentication_token_setup import generate_and_save_token
    from ray._raylet import AuthenticationTokenLoader

    loader = AuthenticationTokenLoader.instance()
    if not loader.has_token(ignore_auth_mode=True):
        generate_and_save_token()
        loader.reset_cache()


# ---------------------------------------------------------------- stages (subprocess side)


def two_node_cluster(stage: Callable[[Any, dict[str, str]], dict[str, Any]]) -> dict[str, Any]:
    """Start a 2-node Cluster, connect, run `stage(ray, labels)`, always shut down.

    labels maps node id -> "node_a" / "node_b" (from the nodes' custom resources)."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 2, "resources": {"node_a": 1}, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=2, resources={"node_b": 1})
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, logging_level="WARNING")
        ray.data.DataContext.get_current().enable_progress_bars = False
        labels = {n["NodeID"]: next(k for k in ("node_a", "node_b") if k in n["Resources"])
                  for n in ray.nodes() if n["Alive"]}
        return {"labels": labels, **stage(ray, labels)}
    finally:
        ray.shutdown()
        cluster.shutdown()


def _data_stage(ray: Any, labels: dict[str, str]) -> dict[str, Any]:
    import numpy as np

    def tag(batch: dict[str, Any]) -> dict[str, Any]:
        time.sleep(0.05)  # long enough that one node cannot take every block alone
        node = ray.get_runtime_context().get_node_id()
        batch["node"] = np.array([node] * len(batch["id"]))
        return batch

    ds = ray.data.range(2000, override_num_blocks=20).map_batches(tag, batch_size=100)
    per_node = Counter(labels[r["node"]] for r in ds.take_all())

    @ray.remote(num_cpus=1)
    def where(i: int) -> str:
        time.sleep(0.3)
        return ray.get_runtime_context().get_node_id()

    tasks = Counter(labels[n] for n in ray.get(
        [where.options(scheduling_strategy="SPREAD").remote(i) for i in range(8)]))
    return {"data_rows_per_node": dict(per_node), "tasks_per_node": dict(tasks),
            "rows": sum(per_node.values())}


def _stage_data() -> dict[str, Any]:
    return two_node_cluster(_data_stage)


def fake_autoscaling_config(gcs_address: str, head_cpus: int = 1) -> dict[str, Any]:
    """The fake multi-node config of ray.cluster_utils.AutoscalingCluster, inline (its
    example.yaml is missing from the wheel), with one GPU worker type, min 0 / max 2."""
    return {
        "cluster_name": "worldclip-fake",
        "max_workers": 2,
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": 0.1,  # 6 s
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True,
                     "disable_node_updaters": True, "disable_launch_config_check": True,
                     "gcs_address": gcs_address},
        "auth": {},
        "docker": {},
        "head_node_type": "ray.head.default",
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": head_cpus}, "node_config": {},
                                 "max_workers": 0},
            "ray.worker.gpu": {"resources": {"CPU": 1, "GPU": 1,
                                             "object_store_memory": 100 * 2**20},
                               "node_config": {}, "min_workers": 0, "max_workers": 2},
        },
        "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
        "worker_setup_commands": [], "head_start_ray_commands": [],
        "worker_start_ray_commands": [], "file_mounts": {}, "cluster_synced_files": [],
        "file_mounts_sync_continuously": False, "rsync_exclude": [], "rsync_filter": [],
    }


def _stage_autoscale() -> dict[str, Any]:
    """What AutoscalingCluster.start() does, minus its `ray stop --force` (which would kill
    every Ray on the machine): a head with --autoscaling-config and RAY_FAKE_CLUSTER=1 in
    its own session and temp dir, stopped by killing that session."""
    import ray

    workdir = Path(os.environ["RAY_TMPDIR"])
    gcs, client, agent_http, agent_grpc, renv, metrics, node_mgr, obj_mgr = free_ports(8)
    cfg_path = workdir / "autoscaling.json"
    cfg_path.write_text(json.dumps(fake_autoscaling_config(f"127.0.0.1:{gcs}")))
    env = {**os.environ, "AUTOSCALER_UPDATE_INTERVAL_S": "1", "RAY_FAKE_CLUSTER": "1",
           "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    ray_exe = str(Path(sys.executable).parent / "ray")
    cmd = [ray_exe, "start", "--head", f"--autoscaling-config={cfg_path}",
           "--node-ip-address=127.0.0.1", f"--port={gcs}", "--num-cpus=1", "--num-gpus=0",
           "--include-dashboard=false", f"--temp-dir={workdir / 'ray'}",
           f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent_http}",
           f"--dashboard-agent-grpc-port={agent_grpc}", f"--runtime-env-agent-port={renv}",
           f"--metrics-export-port={metrics}", f"--node-manager-port={node_mgr}",
           f"--object-manager-port={obj_mgr}", "--disable-usage-stats"]
    head = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, start_new_session=True,
                            stdout=open(workdir / "head.log", "w"), stderr=subprocess.STDOUT)
    timeline: list[tuple[float, int]] = []
    try:
        assert head.wait(timeout=180) == 0, (workdir / "head.log").read_text()[-3000:]
        ray.init(address=f"127.0.0.1:{gcs}", logging_level="WARNING")
        t0 = time.time()

        def workers() -> int:
            n = sum(1 for x in ray.nodes() if x["Alive"] and x["Resources"].get("GPU"))
            timeline.append((round(time.time() - t0, 1), n))
            return n

        assert workers() == 0
        assert ray.cluster_resources().get("GPU", 0) == 0

        @ray.remote(num_gpus=1, num_cpus=0)
        def on_gpu() -> str:
            time.sleep(4)  # overlap, so both GPU tasks need a node at once
            return ray.get_runtime_context().get_node_id()

        refs = [on_gpu.remote() for _ in range(2)]
        ran_on = ray.get(refs, timeout=240)
        scale_up_s = time.time() - t0
        peak = max(workers(), max(n for _, n in timeline))
        t1 = time.time()
        while workers() > 0 and time.time() - t1 < 180:
            time.sleep(1)
        scale_down_s = time.time() - t1
        return {"gpu_nodes_peak": peak, "gpu_task_nodes": len(set(ran_on)),
                "gpu_nodes_after_idle": workers(), "scale_up_s": round(scale_up_s, 1),
                "scale_down_s": round(scale_down_s, 1), "timeline": timeline[-40:]}
    finally:
        ray.shutdown()
        kill_session(head.pid)


def _mission_stage(ray: Any, labels: dict[str, str]) -> dict[str, Any]:
    """world -> curate -> train (2 workers, ZeRO-2, SPREAD) on the 2-node cluster."""
    from omegaconf import OmegaConf

    from worldclip.pipelines import curate, world
    from worldclip.pipelines.checkpoint_io import latest_checkpoint
    from worldclip.pipelines.train import stage as train_stage
    from worldclip.platform import storage
    from worldclip.platform.config import apply_storage, load_config

    root = os.path.join(os.environ["RAY_TMPDIR"], "data")
    cfg = load_config([f"storage.root={root}", "world.pairs=800", "world.pairs_per_shard=100",
                       "world.concepts=30", "world.eval_per_concept=1",
                       "curation.concurrency=2", "train.max_steps=4",
                       "train.batch_size_per_worker=8", "train.cpus_per_worker=1",
                       "train.placement_strategy=SPREAD", "train.ingest_cpus=0.25"])
    apply_storage(cfg)
    world.run(cfg)
    # The shards here are tiny (100 pairs): without this, the actor on the driver's node can
    # finish all of them before the other node's actor has started, and the assertion below
    # would measure start-up latency rather than placement (the match actors are SPREAD).
    ray.data.DataContext.get_current().wait_for_min_actors_s = 120
    card = curate.run(cfg)
    stats = [storage.read_json(u) for u in
             storage.glob(storage.join(cfg.curation.out, "matches", "*.stats.json"))]
    result = train_stage.run(cfg)
    ckpt = latest_checkpoint(train_stage.run_dir(cfg))
    ranks = [storage.read_json(u) for u in storage.glob(storage.join(ckpt, "data_rank*.json"))]
    return {"curation_shards_per_node": dict(Counter(labels[s["node"]] for s in stats)),
            "train_ranks_per_node": dict(Counter(labels[r["node"]] for r in ranks)),
            "kept": card["kept"], "steps": result["steps"],
            "config": OmegaConf.to_container(cfg.train)["placement_strategy"]}


def _stage_mission() -> dict[str, Any]:
    return two_node_cluster(_mission_stage)


STAGES: dict[str, Callable[[], dict[str, Any]]] = {
    "data": _stage_data,
    "mission": _stage_mission,
    "autoscale": _stage_autoscale,
}


def main(stage: str) -> int:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    _ensure_token_auth()
    result = STAGES[stage]()
    print(RESULT + json.dumps(result), flush=True)
    return 0


# ---------------------------------------------------------------- tests (pytest side)


def run_stage(stage: str, timeout: float = 600) -> dict[str, Any]:
    """Run one stage in a fresh interpreter and session; clean up whatever it left."""
    tmp = tempfile.mkdtemp(prefix="wcmn", dir="/tmp")  # short: unix socket paths
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_TMPDIR=tmp, RAY_USAGE_STATS_ENABLED="0", OMP_NUM_THREADS="1",
               PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, str(HERE), stage], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        kill_session(proc.pid)
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    lines = [ln for ln in out.splitlines() if ln.startswith(RESULT)]
    assert proc.returncode == 0 and lines, f"stage {stage} failed:\n{out[-6000:]}"
    return json.loads(lines[-1][len(RESULT):])


@pytest.mark.slow
def test_work_spreads_over_two_nodes() -> None:
    r = run_stage("data", timeout=300)
    assert sorted(r["labels"].values()) == ["node_a", "node_b"]
    assert r["rows"] == 2000
    assert set(r["data_rows_per_node"]) == {"node_a", "node_b"}, r
    assert all(v > 0 for v in r["data_rows_per_node"].values())
    assert set(r["tasks_per_node"]) == {"node_a", "node_b"}, r


@pytest.mark.slow
def test_curation_and_training_spread_over_two_nodes() -> None:
    r = run_stage("mission", timeout=600)
    assert set(r["curation_shards_per_node"]) == {"node_a", "node_b"}, r
    assert sorted(r["train_ranks_per_node"].items()) == [("node_a", 1), ("node_b", 1)], r
    assert r["steps"] == 4 and r["kept"] > 0


def test_fake_autoscaling_config_is_valid() -> None:
    """The inline config passes Ray's own cluster-config schema (fast, no Ray started)."""
    import jsonschema
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    cfg = fake_autoscaling_config("127.0.0.1:1")
    jsonschema.validate(cfg, schema)
    gpu = cfg["available_node_types"]["ray.worker.gpu"]
    assert gpu["min_workers"] == 0 and gpu["max_workers"] == 2 and gpu["resources"]["GPU"] == 1


@pytest.mark.slow
def test_autoscaler_adds_gpu_nodes_and_removes_idle_ones() -> None:
    r = run_stage("autoscale", timeout=600)
    assert r["gpu_nodes_peak"] == 2, r  # two concurrent GPU:1 tasks -> two GPU workers
    assert r["gpu_task_nodes"] == 2, r
    assert r["gpu_nodes_after_idle"] == 0, r  # idle_timeout -> back to zero


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
