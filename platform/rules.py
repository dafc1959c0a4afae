"""What every config key accepts (the RULES table) and `validate`, run when a config resolves.

One place says what a value may be: load_config (platform/config.py) validates the merged
config here, before Ray starts, and a stage handed a section built in code checks it with
`check_section` against the same rules (the embedded world does, pipelines/world/spec.py).
Errors name the key, the bad value (secrets masked) and what is allowed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from worldclip.platform.errors import ConfigError


@dataclass(frozen=True)
class Rule:
    """What one config key accepts: `ok(value)` and the words for the error message."""

    ok: Callable[[Any], bool]
    allowed: str


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _int(lo: int | None = None, null: bool = False) -> Rule:
    def ok(v: Any) -> bool:
        if v is None:
            return null
        return isinstance(v, int) and not isinstance(v, bool) and (lo is None or v >= lo)
    what = "an integer" if lo is None else f"an integer >= {lo}"
    return Rule(ok, what + (" or null" if null else ""))


def _num(lo: float | None = None, hi: float | None = None, lo_open: bool = False,
         hi_open: bool = False, null: bool = False) -> Rule:
    """A finite number (nan and inf are never allowed) in [lo, hi] (open ends if asked)."""
    def ok(v: Any) -> bool:
        if v is None:
            return null
        if not _finite(v):
            return False
        if lo is not None and (v <= lo if lo_open else v < lo):
            return False
        return hi is None or (v < hi if hi_open else v <= hi)
    if lo is not None and hi is not None:
        what = f"a number in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    elif lo is not None:
        what = f"a finite number {'>' if lo_open else '>='} {lo:g}"
    else:
        what = "a finite number"
    return Rule(ok, what + (" or null" if null else ""))


def _choice(*opts: Any) -> Rule:
    return Rule(lambda v: v in opts and not isinstance(v, bool), "one of "
                + ", ".join(map(str, opts)))


def _each(rule: Rule, nonempty: bool = True, unique: bool = False) -> Rule:
    def ok(v: Any) -> bool:
        if not isinstance(v, (list, tuple, ListConfig)):
            return False
        items = list(v)
        return ((bool(items) or not nonempty) and all(rule.ok(x) for x in items)
                and (not unique or len(set(items)) == len(items)))
    what = (("a non-empty list" if nonempty else "a list") + (" of distinct items" if unique
                                                                else "") + f", each {rule.allowed}")
    return Rule(ok, what)


def _str(nonempty: bool = False) -> Rule:
    return Rule(lambda v: isinstance(v, str) and (bool(v) or not nonempty),
                "a non-empty string" if nonempty else "a string")


_BOOL = Rule(lambda v: isinstance(v, bool), "true or false")
_STR = _str()
_URL = _str(nonempty=True)
_STR_MAP = Rule(lambda v: isinstance(v, (dict, DictConfig))
                and all(isinstance(x, str) for x in v.values()), "a mapping of strings")
_SEED = _int(0)
_WORKERS = Rule(lambda v: _int(1).ok(v) or (
    isinstance(v, (list, tuple, ListConfig)) and len(v) == 2 and all(_int(1).ok(x) for x in v)
    and v[0] <= v[1]), "an integer >= 1 or a range [min, max] with 1 <= min <= max")
_NUM_MAP = Rule(lambda v: isinstance(v, (dict, DictConfig))
                and all(_finite(x) and x >= 0 for x in v.values()),
                "a mapping of resource names to numbers >= 0")
_SHARE = _num(0.0, 1.0)
_LANGS = _each(_str(nonempty=True), nonempty=False, unique=True)
# an eval set: a URL, or a mapping with at least its url (eval.suite, curation.decontaminate)
_SUITE_ITEM = Rule(lambda v: (isinstance(v, str) and bool(v)) or (
    isinstance(v, (dict, DictConfig)) and isinstance(v.get("url"), str) and bool(v["url"])),
                   "a URL or a mapping with a url")


def _int_in(lo: int, hi: int) -> Rule:
    return Rule(lambda v: isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi,
                f"an integer in [{lo}, {hi}]")


# Every leaf key of Config and what it accepts, checked when a config resolves (before Ray
# starts). tests/test_config_validation.py fails when a dataclass field has no rule here.
RULES: dict[str, Rule] = {
    "storage.root": _URL, "storage.endpoint_url": _STR, "storage.region": _STR,
    "storage.access_key": _STR, "storage.secret_key": _STR,
    "ray.address": _STR, "ray.num_cpus": _int(1, null=True), "ray.include_dashboard": _BOOL,
    "ray.env_vars": _STR_MAP,
    "world.out": _URL, "world.pairs": _int(1), "world.concepts": _int(1),
    "world.languages": _each(_str(nonempty=True), unique=True),
    "world.english_share": _SHARE, "world.zipf_a": _num(0.0), "world.junk_share": _SHARE,
    "world.corrupt_share": _SHARE, "world.distractors": _int(0),
    "world.pairs_per_shard": _int(1), "world.image_size": _int(16),
    "world.eval_per_concept": _int(0), "world.formats": _each(_choice("wds", "parquet"),
                                                              unique=True),
    "world.seed": _SEED, "world.workers": _int(1),
    "curation.input": _URL, "curation.metadata": _URL, "curation.out": _URL,
    "curation.balanced_out": _URL, "curation.lid_backend": _choice("fasttext", "langdetect"),
    "curation.language_map": _STR_MAP, "curation.kana_hangul_nospace": _BOOL,
    "curation.t_en": _num(0.0, lo_open=True, null=True),
    "curation.p": _num(0.0, 1.0, lo_open=True, null=True),
    "curation.threshold_mode": _choice("per_language", "single", "none"),
    "curation.min_t_lang": _num(0.0),
    "curation.plots": _BOOL,
    "curation.merged_metadata": _BOOL, "curation.mode": _choice("offline", "online"),
    "curation.seed": _SEED, "curation.batch_size": _int(1), "curation.concurrency": _int(1),
    "curation.pairs_per_output_shard": _int(1), "curation.bytes_per_output_shard": _int(0),
    "curation.max_record_bytes": _int(1), "curation.max_shard_bytes": _int(1),
    "curation.dedup": _BOOL, "curation.decontaminate": _each(_SUITE_ITEM, nonempty=False),
    "curation.decontaminate_hamming": _int_in(0, 64),
    "train.data": _URL, "train.out": _URL, "train.name": _str(nonempty=True),
    "train.preset": _str(nonempty=True), "train.tokenizer": _STR,
    "train.tokenizer_vocab": _int(1), "train.num_workers": _WORKERS, "train.use_gpu": _BOOL,
    "train.global_batch": _int(1, null=True), "train.resize_interval_s": _num(0.0),
    "train.worker_resources": _NUM_MAP, "train.throttle_step_s": _num(0.0),
    "train.record_keys": _BOOL,
    "train.cpus_per_worker": _num(0.0, lo_open=True),
    "train.gpus_per_worker": _num(0.0, lo_open=True),
    "train.placement_strategy": _choice("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"),
    "train.zero_stage": _choice(0, 1, 2, 3), "train.offload": _BOOL,
    "train.precision": _choice("fp32", "bf16", "fp16"), "train.gradient_checkpointing": _BOOL,
    "train.batch_size_per_worker": _int(1), "train.grad_accum": _int(1),
    "train.epochs": _int(1), "train.max_steps": _int(1, null=True),
    "train.lr": _num(0.0, lo_open=True), "train.warmup_steps": _int(0),
    "train.weight_decay": _num(0.0), "train.beta1": _num(0.0, 1.0, hi_open=True),
    "train.beta2": _num(0.0, 1.0, hi_open=True), "train.eps": _num(0.0, lo_open=True),
    "train.image_size": _int(16, null=True), "train.crop_scale_min": _num(0.0, 1.0,
                                                                          lo_open=True),
    "train.checkpoint_every": _int(0), "train.max_failures": _int(-1),
    "train.keep_checkpoints": _int(1), "train.seed": _SEED, "train.log_every": _int(1),
    "train.eval_every": _int(0), "train.ingest_cpus": _num(0.0, lo_open=True),
    "train.fail_at_step": _int(0),
    "eval.checkpoint": _STR, "eval.data": _URL, "eval.out": _URL, "eval.batch_size": _int(1),
    "eval.languages": _LANGS, "eval.suite": _each(_SUITE_ITEM, nonempty=False),
    "eval.checkpoints": _each(_str(nonempty=True), nonempty=False),
    "eval.bootstrap": _int(0), "eval.seed": _SEED, "eval.ray_actors": _int(0),
    "tune.out": _URL, "tune.name": _str(nonempty=True),
    "tune.search": _choice("grid", "random", "optuna"), "tune.num_samples": _int(1),
    "tune.param": _choice("p", "t_en"),
    "tune.p_values": _each(_num(0.0, 1.0, lo_open=True)),
    "tune.t_en_values": _each(_num(0.0, lo_open=True)),
    "tune.threshold_modes": _each(_choice("per_language", "single"), unique=True),
    "tune.train_steps": _int(1), "tune.eval_every": _int(1), "tune.grace_period": _int(1),
    "tune.reduction_factor": _num(1.0, lo_open=True),
    "tune.cpus_per_trial": _num(0.0, lo_open=True), "tune.gpus_per_trial": _num(0.0),
    "tune.max_concurrent": _int(1), "tune.seed": _SEED,
    "metadata.out": _URL, "metadata.languages": _LANGS, "metadata.wordnet_dir": _STR,
    "metadata.wiki_dumps": _STR, "metadata.pageviews": _STR, "metadata.use_wordfreq": _BOOL,
    "metadata.unigram_cap": _int(0), "metadata.unigram_fraction": _SHARE,
    "metadata.bigram_cap": _int(0), "metadata.bigram_min_pmi": _num(),
    "metadata.title_cap": _int(0), "metadata.title_fraction": _SHARE,
    "demo.out": _URL, "demo.compare": _BOOL, "demo.seeds": _each(_SEED),
    "job.address": _STR, "job.working_dir": _STR, "job.pip": _each(_STR, nonempty=False),
    "job.allow_local_paths": _BOOL,
    "wat.input": _STR, "wat.out": _URL, "wat.snapshot": _STR, "wat.concurrency": _int(1),
    "download.list_out": _URL, "download.images": _STR, "download.joined_out": _URL,
}


_ABSENT = object()


def _get(cfg: DictConfig, key: str) -> Any:
    return OmegaConf.select(cfg, key)


def _shown(key: str, v: Any) -> str:
    """A value as an error message may show it: secrets masked (docs/operations.md)."""
    from worldclip.platform import redact

    if isinstance(v, (ListConfig, DictConfig)):
        v = OmegaConf.to_container(v)
    if redact.is_secret_name(key.rsplit(".", 1)[-1]) and v not in (None, ""):
        return repr(redact.MASK)
    return repr(redact.redact(v))


def _check_global_batch(cfg: DictConfig) -> None:
    """Every world size in train.num_workers must split the global batch evenly (each rank
    takes G / W pairs per step; docs/operations.md, "Elastic training and preemption")."""
    nw = cfg.train.num_workers
    lo, hi = (nw, nw) if isinstance(nw, int) else (int(nw[0]), int(nw[1]))
    g = cfg.train.global_batch or cfg.train.batch_size_per_worker * hi * cfg.train.grad_accum
    bad = [w for w in range(lo, hi + 1) if g % w]
    if bad:
        lcm = math.lcm(*range(lo, hi + 1))
        shown = nw if isinstance(nw, int) else [lo, hi]
        raise ConfigError(f"config train.global_batch={g} (train.num_workers={shown}): not "
                          f"divisible by world size(s) {bad}; use a multiple of {lcm}")


def check_value(key: str, v: Any) -> None:
    """Raise ConfigError unless RULES[key] accepts v."""
    rule = RULES[key]
    if not rule.ok(v):
        raise ConfigError(f"config {key}={_shown(key, v)}: must be {rule.allowed}")


def check_section(section: Any, name: str) -> None:
    """Check every key of one section (a DictConfig or any object with the fields as
    attributes) against RULES: for callers that pass a section built in code, which
    load_config never saw. Keys the object lacks are not checked."""
    prefix = f"{name}."
    for key in RULES:
        if key.startswith(prefix):
            v = getattr(section, key[len(prefix):], _ABSENT)
            if v is not _ABSENT:
                check_value(key, v)


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError naming the key, the bad value and what is allowed (RULES, then the
    rules that tie keys together)."""
    from worldclip.platform import redact

    for key in RULES:
        v = OmegaConf.select(cfg, key, default=_ABSENT)
        if v is not _ABSENT:  # a config built in code may lack a section; nothing to check
            check_value(key, v)
    t_en, p = cfg.curation.t_en, cfg.curation.p
    if (t_en is None) == (p is None) and cfg.curation.threshold_mode != "none":
        raise ConfigError(
            f"config curation.t_en={t_en!r} and curation.p={p!r}: set exactly one "
            "(e.g. curation.t_en=170000 curation.p=null, or curation.p=0.06 curation.t_en=null)")
    _check_global_batch(cfg)
    if cfg.train.offload and cfg.train.zero_stage == 0:
        raise ConfigError("config train.offload=true needs train.zero_stage 1, 2 or 3")
    if cfg.train.precision != "fp32" and not cfg.train.use_gpu:
        raise ConfigError(f"config train.precision={cfg.train.precision!r}: bf16/fp16 need "
                          "train.use_gpu=true; use train.precision=fp32 on CPU")
    # Secrets: never in runtime_env (Ray logs it) nor in a URL that is saved and forwarded.
    for name in cfg.ray.env_vars:
        if not str(name).isidentifier():
            raise ConfigError(f"config ray.env_vars.{name}: not a valid env var name")
        if redact.is_secret_name(str(name)) or redact.is_secret_value(cfg.ray.env_vars[name]):
            raise ConfigError(
                f"config ray.env_vars.{name}: looks like a credential, and runtime_env env "
                "vars are logged by Ray and visible in the dashboard; export it in the "
                "driver's environment instead (a local Ray's workers inherit it), give the "
                f"cluster a role, or use `worldclip submit --env {name} "
                "--forward-credentials` for a job")
    for key in ("storage.endpoint_url", "job.address", "ray.address"):
        if redact.has_userinfo(str(_get(cfg, key))):
            raise ConfigError(
                f"config {key}={_shown(key, _get(cfg, key))}: user:password in the URL would "
                "be saved and forwarded as is; remove it and give credentials through "
                "storage.access_key/secret_key or the AWS_* environment variables")
