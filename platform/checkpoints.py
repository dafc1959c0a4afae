"""Checkpoint files are data, never code (docs/operations.md, "Checkpoints load no code").

A `.pt` file is a pickle, and unpickling can call any function the file names (a
`__reduce__` -> `os.system` payload runs on load). Checkpoints live in shared object storage,
so every load of one -- ours or DeepSpeed's -- goes through this module:

- `load_file`: `torch.load(weights_only=True)` with `ALLOWED_GLOBALS`, the few non-tensor
  types DeepSpeed 0.19.8 stores (found by saving real ZeRO-1/2/3 checkpoints, fp32/bf16/fp16,
  with and without CPU offload, and listing what weights_only rejects). Anything else is
  refused with `UnsafeCheckpointError` naming the file and the globals it asks for; nothing
  from it runs.
- `SafeCheckpointEngine`: DeepSpeed's torch checkpoint engine with `load` = `load_file`;
  `load_engine_checkpoint` installs it on an engine and resumes (engine.load_checkpoint).
- `consolidate_zero`: DeepSpeed's zero_to_fp32 (export, eval on demand), which calls
  `torch.load(weights_only=False)` itself, run under `weights_only_everywhere`.

`weights_only_everywhere` is torch's own switch, TORCH_FORCE_WEIGHTS_ONLY_LOAD=1 (it overrides
an explicit weights_only=False at every torch.load call), plus the allow-list: a DeepSpeed
code path that bypasses the checkpoint engine is still held to the same rule.
"""

from __future__ import annotations

import functools
import glob
import importlib
import os
import pickle
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from worldclip.platform.config import ConfigError

# module.qualname of every non-tensor type a DeepSpeed 0.19.8 checkpoint holds (model states
# hold none; ZeRO optimizer states hold these). Tensors, dicts, lists, tuples, str, numbers,
# torch.Size and OrderedDict are allowed by weights_only itself.
ALLOWED_GLOBALS: tuple[str, ...] = (
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.utils.tensor_fragment.fragment_address",
)
_FORCE_VAR = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"
_env_lock = threading.Lock()
_env_state: dict[str, Any] = {"depth": 0, "saved": None}  # nesting / threads share one switch


class UnsafeCheckpointError(ConfigError):
    """A checkpoint file needs more than tensors and the allow-list to load: refused. A user
    error (the CLI prints it as one line, exit 2): point at a checkpoint you trust."""


@functools.lru_cache(maxsize=1)
def allowed_globals() -> list[Any]:
    out = []
    for name in ALLOWED_GLOBALS:
        mod, _, attr = name.rpartition(".")
        try:
            out.append(getattr(importlib.import_module(mod), attr))
        except (ImportError, AttributeError):  # another DeepSpeed: that type cannot be allowed
            continue
    return out


def _refusal(path: str, err: BaseException) -> UnsafeCheckpointError:
    import torch

    try:
        wanted = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # noqa: BLE001 -- a damaged file: the unpickler's own message says why
        wanted = []
    extra = sorted(set(wanted) - set(ALLOWED_GLOBALS))
    why = (f"it asks for {extra[:5]}" if extra else
           f"weights_only unpickling failed ({' '.join(str(err).split())[:300]})")
    return UnsafeCheckpointError(
        f"checkpoint file {path} refused: {why}, which is not a tensor or one of the DeepSpeed "
        f"types allowed ({', '.join(ALLOWED_GLOBALS)}); nothing in it was run. Only load "
        "checkpoints written by worldclip/DeepSpeed from storage you trust, or re-save the "
        "weights as safetensors")


def _allow() -> None:
    """Add ALLOWED_GLOBALS to torch's weights_only allow-list, process-wide and for good.
    Not torch.serialization.safe_globals: that context is not re-entrant (its exit removes
    the globals even when an outer context added them too), so a load_file inside
    weights_only_everywhere emptied the list for every later direct torch.load (DeepSpeed's
    universal-checkpoint loader reads zero/optimizer_state.pt that way)."""
    import torch

    torch.serialization.add_safe_globals(allowed_globals())


def load_file(path: str, map_location: Any = "cpu", mmap: bool | None = None) -> Any:
    """The one way a checkpoint file is loaded: weights_only=True + ALLOWED_GLOBALS."""
    import torch

    _allow()
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        raise _refusal(str(path), e) from None


@contextmanager
def weights_only_everywhere() -> Iterator[None]:
    """Every torch.load in this process becomes weights_only=True with the allow-list, even
    where the caller (DeepSpeed's zero_to_fp32, its checkpoint engines) passes False."""

    with _env_lock:
        if _env_state["depth"] == 0:
            _env_state["saved"] = os.environ.get(_FORCE_VAR)
            os.environ[_FORCE_VAR] = "1"
        _env_state["depth"] += 1
    try:
        _allow()
        yield
    finally:
        with _env_lock:
            _env_state["depth"] -= 1
            if _env_state["depth"] == 0:
                if _env_state["saved"] is None:
                    os.environ.pop(_FORCE_VAR, None)
                else:
                    os.environ[_FORCE_VAR] = _env_state["saved"]


def _name_refused_file(folder: str, err: BaseException) -> UnsafeCheckpointError:
    """Which file of a checkpoint folder was refused (scanned only after a refusal)."""
    for f in sorted(glob.glob(os.path.join(folder, "**", "*.pt"), recursive=True)):
        try:
            load_file(f, mmap=True)
        except UnsafeCheckpointError as e:
            return e
        except Exception:  # noqa: BLE001, S112 -- damaged, not unsafe: keep looking
            continue
    return _refusal(folder, err)


@functools.lru_cache(maxsize=1)
def _engine_class() -> type:
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import (
        TorchCheckpointEngine,
    )

    class SafeCheckpointEngine(TorchCheckpointEngine):
        """DeepSpeed's torch checkpoint engine; loads only through `load_file`."""

        def load(self, path: str, map_location: Any = None) -> Any:
            return load_file(path, map_location=map_location)

    return SafeCheckpointEngine


def safe_checkpoint_engine(config_params: Any = None) -> Any:
    """A SafeCheckpointEngine (a TorchCheckpointEngine subclass) for a DeepSpeed engine."""
    return _engine_class()(config_params)


def load_engine_checkpoint(engine: Any, load_dir: str, tag: str) -> Any:
    """Resume a DeepSpeed engine from load_dir/tag with every file loaded by `load_file`.

    The engine's checkpoint engine (the one place DeepSpeed's resume reads model, optimizer
    and ZeRO files through) is replaced by a SafeCheckpointEngine, and the call runs under
    `weights_only_everywhere` for any path that reads files directly."""
    engine.checkpoint_engine = safe_checkpoint_engine(engine._config)
    try:
        with weights_only_everywhere():
            return engine.load_checkpoint(load_dir, tag=tag)
    except pickle.UnpicklingError as e:
        raise _name_refused_file(os.path.join(load_dir, tag), e) from None


def consolidate_zero(ckpt_dir: str, tag: str) -> dict[str, Any]:
    """fp32 state dict of a (ZeRO-sharded) DeepSpeed checkpoint, loaded without pickle code."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    try:
        with weights_only_everywhere():
            return get_fp32_state_dict_from_zero_checkpoint(ckpt_dir, tag=tag)
    except pickle.UnpicklingError as e:
        raise _name_refused_file(os.path.join(ckpt_dir, tag), e) from None
