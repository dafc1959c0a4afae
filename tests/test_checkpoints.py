"""Checkpoints load no code (issue #18, case 2; docs/operations.md "Checkpoints load no code").

Real DeepSpeed checkpoints (tests/ds_single.py: one engine, gloo, world size 1) with a
`__reduce__` -> os.system payload added to the model states or the ZeRO optimizer states are
refused by eval (the CLI, exporting on demand), export (zero_to_fp32) and resume
(engine.load_checkpoint through platform/checkpoints.py); the payload's marker file never
appears. A clean checkpoint still resumes bit-exact.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import free_port

from worldclip.platform import checkpoints
from worldclip.platform.checkpoints import UnsafeCheckpointError

HERE = Path(__file__).resolve().parent
ENV = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1",
       "DS_ACCELERATOR": "cpu"}
MODEL_FILE = "mp_rank_00_model_states.pt"
OPTIM_FILE = "zero_pp_rank_0_mp_rank_00_optim_states.pt"


class Payload:
    """Runs a shell command when unpickled (the attack of the issue)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (os.system, (f"touch {self.marker}",))


def _ds(out: Path, steps: int, resume: Path | None = None, stage: int = 2
        ) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(HERE / "ds_single.py"), str(out), str(stage), str(free_port()),
           str(steps)] + ([str(resume)] if resume else [])
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)


def _ok(p: subprocess.CompletedProcess) -> None:
    assert "DS_SINGLE_OK" in p.stdout, p.stdout[-2000:] + p.stderr[-4000:]


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    """Two real ZeRO-2 checkpoints: 2 steps from scratch, and 1 step (to resume from)."""
    root = tmp_path_factory.mktemp("ckpts")
    procs = [subprocess.Popen([sys.executable, str(HERE / "ds_single.py"), str(root / name),
                               "2", str(free_port()), str(steps)], env=ENV,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name, steps in (("two", 2), ("one", 1))]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert "DS_SINGLE_OK" in out, out[-2000:] + err[-4000:]
    return {"two": root / "two", "one": root / "one"}


def _evil_copy(src: Path, dst: Path, file: str, marker: Path) -> Path:
    """A copy of checkpoint src with the payload added to ckpt/<file>."""
    shutil.copytree(src, dst)
    path = dst / "ckpt" / file
    sd = checkpoints.load_file(str(path))
    sd["note"] = Payload(marker)
    torch.save(sd, path)
    return dst


# ---------------------------------------------------------------- the loader itself

def test_allow_list_is_needed_and_enough_for_a_real_zero_checkpoint(ckpts) -> None:
    optim = ckpts["two"] / "ckpt" / OPTIM_FILE
    with pytest.raises(Exception, match="Unsupported global"):
        torch.load(optim, weights_only=True)  # plain weights_only: DeepSpeed's types refused
    sd = checkpoints.load_file(str(optim))
    assert sd["optimizer_state_dict"]["zero_stage"] == 2
    assert isinstance(checkpoints.load_file(str(ckpts["two"] / "ckpt" / MODEL_FILE))["module"],
                      dict)


def test_the_payload_is_live_and_refused_by_the_loader(ckpts, tmp_path) -> None:
    """The planted file really runs code under a plain unpickler (so the refusals below mean
    something), and load_file / weights_only_everywhere refuse it naming the file."""
    marker = tmp_path / "pwned"
    evil = _evil_copy(ckpts["one"], tmp_path / "evil", MODEL_FILE, marker)
    path = evil / "ckpt" / MODEL_FILE
    with pytest.raises(UnsafeCheckpointError, match=MODEL_FILE) as e:
        checkpoints.load_file(str(path))
    assert "system" in str(e.value)
    with checkpoints.weights_only_everywhere(), pytest.raises(Exception, match="system"):
        torch.load(path, weights_only=False)  # DeepSpeed's own call, forced to weights_only
    assert "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ
    assert not marker.exists()
    live = subprocess.run([sys.executable, "-c", "import sys, torch; torch.load(sys.argv[1], "
                           "weights_only=False)", str(path)], env=ENV, capture_output=True,
                          timeout=120)
    assert live.returncode == 0 and marker.exists(), live.stderr[-2000:]


# ---------------------------------------------------------------- eval, export, resume

@pytest.mark.slow
@pytest.mark.parametrize("file", [MODEL_FILE, OPTIM_FILE])
def test_eval_and_export_refuse_a_code_carrying_checkpoint(ckpts, tmp_path, file) -> None:
    from worldclip.pipelines.train import stage as train_stage
    from worldclip.platform.config import load_config

    marker = tmp_path / "pwned"
    evil = _evil_copy(ckpts["one"], tmp_path / "run" / "demo" / "checkpoint_000001", file,
                      marker)
    # eval (CLI, exports on demand): one line naming the file, exit 2, nothing run
    p = subprocess.run([sys.executable, "-m", "worldclip", "eval", f"eval.checkpoint={evil}",
                        f"storage.root={tmp_path / 'root'}"], env=ENV, capture_output=True,
                       text=True, timeout=300, cwd=tmp_path)
    assert p.returncode == 2, p.stderr[-3000:]
    assert "refused" in p.stderr and file in p.stderr and "Traceback" not in p.stderr
    # export (`worldclip export` = run_export): refused, no HF directory written
    cfg = load_config([f"storage.root={tmp_path / 'root'}", f"train.out={tmp_path / 'run'}",
                       "train.name=demo"])
    with pytest.raises(UnsafeCheckpointError, match=file):
        train_stage.run_export(cfg)
    assert not (evil / "export" / "model.safetensors").exists()
    assert not marker.exists()


@pytest.mark.slow
@pytest.mark.parametrize("file", [MODEL_FILE, OPTIM_FILE])
def test_resume_refuses_a_code_carrying_checkpoint(ckpts, tmp_path, file) -> None:
    marker = tmp_path / "pwned"
    evil = _evil_copy(ckpts["one"], tmp_path / "evil", file, marker)
    p = _ds(tmp_path / "resumed", 1, resume=evil)
    assert p.returncode != 0 and "DS_SINGLE_OK" not in p.stdout
    assert "UnsafeCheckpointError" in p.stderr and file in p.stderr, p.stderr[-3000:]
    assert not marker.exists()


@pytest.mark.slow
def test_clean_checkpoint_resumes_bit_exact_and_exports(ckpts, tmp_path) -> None:
    from worldclip.pipelines.checkpoint_io import export_checkpoint

    p = _ds(tmp_path / "resumed", 1, resume=ckpts["one"])
    _ok(p)
    got = json.loads((tmp_path / "resumed" / "result.json").read_text())
    want = json.loads((ckpts["two"] / "result.json").read_text())
    assert got["steps"] == 2 and got["losses"] == want["losses"][1:]
    assert got["params_sha256"] == want["params_sha256"]  # bit-exact parameters
    out = export_checkpoint(str(ckpts["two"]), str(tmp_path / "hf"))
    assert (Path(out) / "model.safetensors").exists()
