"""Configuration loading: the schema's defaults + YAML files + dotlist overrides, resolved.

`load_config(overrides)` merges, in order: the dataclass defaults (platform/schema.py),
configs/default.yaml, any `--config FILE` YAMLs, then `key=value` overrides, validates the
result against the RULES table (platform/rules.py) with errors that name the key, the bad
value and what is allowed, and makes local paths absolute. `save_config` writes the resolved,
redacted config next to a stage's output; `apply_storage` makes its S3 settings effective.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from worldclip.platform.errors import ConfigError
from worldclip.platform.rules import validate
from worldclip.platform.schema import Config

__all__ = [
    "CONFIG_DIR",
    "HUB_OR_URL_KEYS",
    "URL_KEYS",
    "ConfigError",
    "absolute_url",
    "absolutize",
    "apply_storage",
    "is_local",
    "load_config",
    "local_url_keys",
    "save_config",
    "to_yaml",
]


CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def _load_file(path: Path, name: str) -> DictConfig:
    """A --config YAML file as a mapping, or a ConfigError saying what is wrong with it."""
    import yaml

    if path.is_dir():
        raise ConfigError(f"config file {name!r} is a directory; give a YAML file")
    try:
        loaded = OmegaConf.load(path)  # yaml.safe_load under the hood
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).split("\n")[0]
        raise ConfigError(f"config file {name!r}: not valid YAML ({problem}{where}); fix the "
                          "syntax") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {name!r}: not UTF-8 text; give a YAML file") from None
    except OSError as e:  # OmegaConf: "Invalid loaded object type" for a scalar document
        raise ConfigError(f"config file {name!r}: {str(e).split(chr(10))[0]}; the top level "
                          "must be a mapping of sections, e.g. `curation: {p: 0.1}`") from None
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"config file {name!r}: the top level is a "
                          f"{type(OmegaConf.to_container(loaded)).__name__}; it must be a "
                          "mapping of sections, e.g. `curation: {p: 0.1}`")
    return loaded


def _check_sections(layer: DictConfig, base: DictConfig, source: str, prefix: str = "") -> None:
    """A layer may not put a plain value where the schema has a section (`train=5`)."""
    for key in layer:
        if key not in base:
            continue  # an unknown key: the merge names it
        node = base._get_node(key)
        if not isinstance(node, DictConfig) or OmegaConf.is_missing(layer, key):
            continue
        value = layer._get_node(key)
        full = f"{prefix}{key}"
        if isinstance(value, DictConfig):
            if value._is_none():
                raise ConfigError(f"{source}: {full}=null; {full} is a section, "
                                  "set its keys instead")
            _check_sections(value, node, source, prefix=f"{full}.")
        else:
            example = next(iter(node), "NAME")
            raise ConfigError(f"{source}: {full}={layer[key]!r}; {full} is a section of keys, "
                              f"not a value: set its keys, e.g. {full}.{example}=...")


def load_config(overrides: list[str] | None = None, files: list[str] | None = None,
                use_defaults_file: bool = True) -> DictConfig:
    """Defaults <- configs/default.yaml <- files <- `key=value` overrides; validated."""
    base = OmegaConf.structured(Config)
    layers: list[Any] = [base]
    default_yaml = CONFIG_DIR / "default.yaml"
    if use_defaults_file and default_yaml.exists():
        layers.append(OmegaConf.load(default_yaml))
    for f in files or []:
        path = Path(f)
        if not path.exists() and (CONFIG_DIR / f"{f}.yaml").exists():
            path = CONFIG_DIR / f"{f}.yaml"  # a preset name, e.g. --config demo
        if not path.exists():
            presets = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
            raise ConfigError(f"config file {f!r} not found; give a YAML path or one of {presets}")
        layers.append(_load_file(path, f))
        _check_sections(layers[-1], base, f"config file {f!r}")
    try:
        for item in overrides or []:
            if "=" not in item:
                raise ConfigError(f"override {item!r}: expected key=value without spaces, e.g. "
                                  "curation.p=0.1")
        layers.append(OmegaConf.from_dotlist(list(overrides or [])))
        _check_sections(layers[-1], base, "override")
        cfg = OmegaConf.merge(*layers)
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        msg = str(getattr(e, "msg", e)).split("\n")[0]
        raise ConfigError(f"config {key}: {msg} (check the key name and type; "
                          "configs/default.yaml lists them)") from None
    validate(cfg)
    absolutize(cfg)
    return cfg


# Every config key that holds a storage URL (docs/architecture.md, "Paths"). Local paths in
# these are made absolute on the driver, once, when the config resolves: a Ray worker's
# working directory is not the driver's, so "./worldclip-data" would mean another folder there.
URL_KEYS: tuple[str, ...] = (
    "storage.root", "world.out", "curation.input", "curation.metadata", "curation.out",
    "curation.balanced_out", "train.data", "train.out", "eval.checkpoint", "eval.data",
    "eval.out", "tune.out", "metadata.out", "metadata.wordnet_dir", "metadata.wiki_dumps",
    "metadata.pageviews", "demo.out", "job.working_dir",
    "wat.input", "wat.out", "download.list_out", "download.images", "download.joined_out",
)
# Keys that may also name a Hugging Face hub id ("facebook/xlm-v-base"): absolutized only
# when they point at something on local disk.
HUB_OR_URL_KEYS: tuple[str, ...] = ("train.tokenizer",)


def is_local(url: str) -> bool:
    """A plain path or file:// URL (not s3:// or another remote scheme)."""
    return "://" not in url or url.startswith("file://")


def absolute_url(url: str) -> str:
    """A local path made absolute against this process's cwd; other URLs unchanged."""
    if not url or "://" in url:
        return url
    return os.path.abspath(os.path.expanduser(url))


def local_url_keys(cfg: DictConfig) -> dict[str, str]:
    """{key: value} of every set URL key whose value is a local path."""
    out = {}
    for key in (*URL_KEYS, *HUB_OR_URL_KEYS):
        v = OmegaConf.select(cfg, key)
        if isinstance(v, str) and v and is_local(v):
            if key in HUB_OR_URL_KEYS and not _names_local_path(v):
                continue
            out[key] = v
    return out


def _names_local_path(v: str) -> bool:
    return v.startswith((".", "/", "~", "file://")) or os.path.exists(v)


def absolutize(cfg: DictConfig) -> None:
    """Rewrite every local path of the resolved config to its absolute form (in place)."""
    for key in URL_KEYS:
        v = OmegaConf.select(cfg, key)
        if isinstance(v, str) and v:
            OmegaConf.update(cfg, key, absolute_url(v), merge=False)
    for key in HUB_OR_URL_KEYS:
        v = OmegaConf.select(cfg, key)
        if isinstance(v, str) and v and "://" not in v and _names_local_path(v):
            OmegaConf.update(cfg, key, absolute_url(v), merge=False)


def to_yaml(cfg: DictConfig, redact: bool = True) -> str:
    """Resolved YAML; secrets redacted so it can be saved next to outputs.

    One rule for every section (platform/redact.py): credential-named keys masked, URLs with
    user:password and well-known token values masked (docs/operations.md)."""
    from worldclip.platform import redact as _redact

    c = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(c, dict)
    if redact:
        c = _redact.redact(c)
    return OmegaConf.to_yaml(OmegaConf.create(c))


def save_config(cfg: DictConfig, url: str) -> None:
    """Save the resolved (redacted) config next to a stage's output: URL/config.yaml."""
    from worldclip.platform import storage

    storage.write_text(storage.join(url, "config.yaml"), to_yaml(cfg))


def apply_storage(cfg: DictConfig) -> None:
    """Make storage settings from config effective for this process (and env for workers)."""
    from worldclip.platform import storage

    s = cfg.storage
    storage.configure(storage.S3Options.from_env(
        endpoint_url=s.endpoint_url, region=s.region, access_key=s.access_key,
        secret_key=s.secret_key))
    # Local Ray workers inherit this process's environment: configured keys reach them this
    # way (never through runtime_env, whose agent logs env vars).
    for key, var in (("endpoint_url", "AWS_ENDPOINT_URL"), ("region", "AWS_REGION"),
                     ("access_key", "AWS_ACCESS_KEY_ID"), ("secret_key", "AWS_SECRET_ACCESS_KEY")):
        if s[key]:
            os.environ[var] = s[key]
