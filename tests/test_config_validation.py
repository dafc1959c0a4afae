"""Config validated at load (issue 18, case 6): every value range-checked before Ray starts,
user errors as one stderr line and exit status 2, internal errors with their traceback."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from worldclip.platform.config import ConfigError, load_config
from worldclip.platform.rules import RULES
from worldclip.platform.schema import Config

WORLDCLIP = Path(sys.executable).parent / "worldclip"  # the installed console script


def _leaf_keys(cls: type, prefix: str = "") -> list[str]:
    keys = []
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(default):
            keys += _leaf_keys(type(default), f"{prefix}{f.name}.")
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def test_every_config_field_has_a_rule() -> None:
    keys = _leaf_keys(Config)
    assert len(keys) > 100
    assert sorted(set(keys) - set(RULES)) == []  # a new field needs its range in RULES
    assert sorted(set(RULES) - set(keys)) == []  # no rule for a field that is gone


@pytest.mark.parametrize("files", [[], ["demo"]])
def test_shipped_configs_validate(files: list[str]) -> None:
    load_config([], files)


# The list 6, and a bad value for a sample of the other fields (key, value).
BAD = [
    ("curation.t_en=nan", "curation.t_en"), ("curation.t_en=inf", "curation.t_en"),
    ("curation.t_en=-inf", "curation.t_en"), ("train.log_every=0", "train.log_every"),
    ("train.max_steps=0", "train.max_steps"), ("train.max_steps=-3", "train.max_steps"),
    ("train.checkpoint_every=-1", "train.checkpoint_every"), ("train.lr=-1", "train.lr"),
    ("train.lr=nan", "train.lr"), ("train.keep_checkpoints=0", "train.keep_checkpoints"),
    ("train.cpus_per_worker=0", "train.cpus_per_worker"),
    ("tune.p_values=[2.0]", "tune.p_values"), ("tune.param=x", "tune.param"),
    ("ray.num_cpus=-1", "ray.num_cpus"), ("world.languages=[]", "world.languages"),
    ("train.beta2=1.0", "train.beta2"), ("train.eps=0", "train.eps"),
    ("train.warmup_steps=-1", "train.warmup_steps"), ("train.ingest_cpus=inf",
                                                       "train.ingest_cpus"),
    ("train.crop_scale_min=0", "train.crop_scale_min"), ("eval.batch_size=0", "eval.batch_size"),
    ("tune.t_en_values=[]", "tune.t_en_values"),
    ("tune.reduction_factor=1", "tune.reduction_factor"),
    ("tune.threshold_modes=[none]", "tune.threshold_modes"),
    ("metadata.unigram_fraction=1.5", "metadata.unigram_fraction"),
    ("metadata.bigram_min_pmi=nan", "metadata.bigram_min_pmi"),
    ("demo.seeds=[]", "demo.seeds"), ("world.formats=[wds,wds]", "world.formats"),
    ("world.zipf_a=-1", "world.zipf_a"), ("world.seed=-1", "world.seed"),
    ("curation.pairs_per_output_shard=0", "curation.pairs_per_output_shard"),
    ("curation.p=0", "curation.p"), ("storage.root=''", "storage.root"),
    ("train.name=''", "train.name"), ("world.workers=0", "world.workers"),
]


@pytest.mark.parametrize(("override", "key"), BAD, ids=[b[0] for b in BAD])
def test_bad_value_is_a_config_error_naming_key_and_allowed(override: str, key: str) -> None:
    extra = ["curation.p=null"] if override.startswith("curation.t_en") else []
    with pytest.raises(ConfigError) as e:
        load_config([override, *extra])
    msg = str(e.value)
    assert f"config {key}=" in msg and "must be" in msg, msg
    assert "\n" not in msg


def test_limits_still_accepted() -> None:
    cfg = load_config(["train.max_steps=1", "train.checkpoint_every=0", "train.lr=1e-9",
                       "train.keep_checkpoints=1", "train.cpus_per_worker=0.25",
                       "tune.p_values=[1.0, 0.001]", "tune.param=t_en", "ray.num_cpus=1",
                       "world.languages=[en]", "curation.t_en=5", "curation.p=null",
                       "train.max_failures=-1", "train.image_size=null"])
    assert cfg.train.max_steps == 1 and cfg.curation.t_en == 5.0


def test_rules_reject_nan_and_inf_for_every_float_field() -> None:
    base = OmegaConf.structured(Config)
    floats = [k for k in RULES if isinstance(OmegaConf.select(base, k), float)]
    assert "curation.p" in floats and "train.lr" in floats and len(floats) > 15
    for key in floats:
        for bad in (float("nan"), float("inf"), float("-inf")):
            assert not RULES[key].ok(bad), (key, bad)


# ---------------------------------------------------------------- the installed command

def _run(tmp_path: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_ADDRESS": ""}
    return subprocess.run([str(WORLDCLIP), *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _assert_user_error(p: subprocess.CompletedProcess, *needles: str) -> str:
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert p.returncode == 2, (p.returncode, p.stderr[-2000:])
    assert "Traceback" not in p.stderr and "Traceback" not in p.stdout
    assert len(lines) == 1, p.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


CONFIG_FILES = {
    "list.yaml": ("- curation\n- train\n", "top level is a list"),
    "syntax.yaml": ("curation: {p: [0.1\n", "not valid YAML"),
    "scalar.yaml": ("5\n", "must be a mapping"),
}


@pytest.mark.parametrize("name", sorted(CONFIG_FILES))
def test_cli_bad_config_file_one_line_exit_2(tmp_path: Path, name: str) -> None:
    text, needle = CONFIG_FILES[name]
    (tmp_path / name).write_text(text)
    _assert_user_error(_run(tmp_path, "curate", "--config", name), name, needle)


def test_cli_config_directory_one_line_exit_2(tmp_path: Path) -> None:
    (tmp_path / "confdir").mkdir()
    _assert_user_error(_run(tmp_path, "train", "--config", "confdir"), "confdir",
                       "is a directory")


@pytest.mark.parametrize(("args", "needles"), [
    (["curate", "train=5"], ["train=5", "section", "train."]),
    (["curate", "curation.p", "0.1"], ["curation.p", "key=value", "curation.p=0.1"]),
    (["curate", "curation.t_en=nan", "curation.p=null"], ["curation.t_en=nan", "finite"]),
    (["train", "train.log_every=0"], ["train.log_every=0", ">= 1"]),
    (["train", "train.max_steps=-3"], ["train.max_steps=-3", "or null"]),
    (["tune", "tune.p_values=[2.0]"], ["tune.p_values", "(0, 1]"]),
    (["world", "world.languages=[]"], ["world.languages=[]", "non-empty"]),
    (["curate", "ray.num_cpus=-1"], ["ray.num_cpus=-1"]),
    (["curate", "curation.nope=1"], ["curation.nope"]),
])
def test_cli_user_errors_one_line_exit_2(tmp_path: Path, args: list[str],
                                         needles: list[str]) -> None:
    _assert_user_error(_run(tmp_path, *args), *needles)
    assert list(tmp_path.iterdir()) == []  # nothing written (no ./worldclip-data)


def test_cli_input_glob_matching_nothing_before_ray(tmp_path: Path) -> None:
    p = _run(tmp_path, "curate", f"curation.input={tmp_path}/none/*.tar",
             f"storage.root={tmp_path}/data")
    _assert_user_error(p, "curation.input=", "no shards match")
    assert "starting a local Ray" not in p.stderr  # refused before Ray started
    assert not (tmp_path / "data").exists()


def _boom(cfg) -> None:  # an internal error: a bug, not a user's value
    raise RuntimeError("internal failure for the traceback test")


def test_internal_errors_keep_their_traceback(monkeypatch) -> None:
    from worldclip import cli

    monkeypatch.setitem(cli.STAGES, "boom", (__name__, "_boom", "test stage"))
    monkeypatch.setattr(cli, "_parser", _parser_with_boom(cli._parser))
    with pytest.raises(RuntimeError, match="internal failure"):
        cli.main(["boom"])


def _parser_with_boom(make):
    def parser():
        p = make()
        for action in p._actions:
            if action.dest == "stage":
                action.choices = [*action.choices, "boom"]
        return p
    return parser
