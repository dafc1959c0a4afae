"""Configuration: OmegaConf structured configs (dataclasses) + YAML files + dotlist overrides.

`load_config(overrides)` merges, in order: the dataclass defaults, configs/default.yaml, any
`--config FILE` YAMLs, then `key=value` overrides, and validates the result with errors that
name the key, the bad value and what is allowed.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


@dataclass
class StorageConfig:
    # Root of everything a run writes; a plain path, file:// or s3://bucket/prefix.
    root: str = "./worldclip-data"
    # S3 settings; empty -> AWS_ENDPOINT_URL / AWS_REGION / AWS_ACCESS_KEY_ID / ... env vars.
    endpoint_url: str = ""
    region: str = ""
    access_key: str = ""
    secret_key: str = ""


@dataclass
class RayConfig:
    # "" -> start an embedded local Ray; "auto" or "ray://host:10001" -> connect.
    address: str = ""
    num_cpus: int | None = None
    include_dashboard: bool = False
    # Extra env vars for every worker (S3 vars are forwarded automatically).
    env_vars: dict[str, str] = field(default_factory=dict)


@dataclass
class WorldConfig:
    out: str = "${storage.root}/world"
    pairs: int = 20000
    concepts: int = 120
    languages: list[str] = field(
        default_factory=lambda: ["en", "ar", "de", "es", "fa", "fr", "id", "it", "ja", "ko",
                                 "pt", "ru", "tr", "zh"])
    english_share: float = 0.44
    zipf_a: float = 1.1
    junk_share: float = 0.08
    corrupt_share: float = 0.0
    distractors: int = 300
    pairs_per_shard: int = 1000
    image_size: int = 64
    eval_per_concept: int = 4
    formats: list[str] = field(default_factory=lambda: ["wds", "parquet"])
    seed: int = 0
    # 1: write shards in this process; N > 1: N Ray tasks (same bytes, shards are independent).
    workers: int = 1


@dataclass
class CurationConfig:
    # Raw shards: a glob of .tar (WebDataset) or .parquet files.
    input: str = "${world.out}/raw/wds/*.tar"
    metadata: str = "${world.out}/metadata"
    # Matching output (match index + global counts), shared by every rebalance.
    out: str = "${storage.root}/curated"
    # Balanced output of this run (offline shards or online index + data card + plots).
    balanced_out: str = "${curation.out}/balanced"
    lid_backend: str = "fasttext"  # fasttext | langdetect
    # LID label -> metadata group overrides, e.g. {"zh-tw": "zh"}.
    language_map: dict[str, str] = field(default_factory=dict)
    kana_hangul_nospace: bool = False
    # Exactly one of t_en / p: t_en is the English threshold (170k at 10B-pair scale);
    # p the tail proportion (use p on small pools, see docs/curation.md §4).
    t_en: float | None = None
    p: float | None = 0.06
    # per_language (MetaCLIP 2) | single (one t for all, ablation) | none (unbalanced)
    threshold_mode: str = "per_language"
    merged_metadata: bool = False  # ablation: one metadata list for all languages
    mode: str = "offline"  # offline (write curated shards) | online (write index)
    seed: int = 0
    batch_size: int = 512
    concurrency: int = 2
    # Offline curated shards: at most this many pairs / bytes per tar (bytes 0 = no limit);
    # one input shard's kept pairs become <shard>.tar, <shard>-00001.tar, ...
    pairs_per_output_shard: int = 2000
    bytes_per_output_shard: int = 0
    # Read limits on DECOMPRESSED bytes (pipelines/limits.py, docs/operations.md "Read
    # limits"): one pair (tar member, Parquet row) and one shard in memory. Over them pairs
    # are dropped as record_too_large / shard_too_large; training re-reads with the same.
    max_record_bytes: int = 64 << 20
    max_shard_bytes: int = 1 << 30
    # Exact dedup before counting: one copy per distinct image (sha256 of its bytes), the
    # smallest (shard, key) kept, the others dropped as duplicate_image (docs/curation.md).
    dedup: bool = True
    # Eval sets whose images must not be in the pool: URLs (type detected) or {name, type,
    # url} as in eval.suite, e.g. ["${world.out}/eval"]; pool images within
    # decontaminate_hamming bits (64-bit phash) of one are dropped as eval_duplicate.
    decontaminate: list[Any] = field(default_factory=list)
    decontaminate_hamming: int = 10


@dataclass
class TrainConfig:
    data: str = "${curation.balanced_out}"
    out: str = "${storage.root}/runs"
    name: str = "worldclip"
    preset: str = "tiny"
    tokenizer: str = ""  # HF tokenizer dir or id; "" -> train one on the curated captions
    tokenizer_vocab: int = 4000
    # An int, or [min, max] for elastic training: Ray Train runs on what it gets in the range,
    # shrinks on preemption, grows when nodes join (docs/operations.md, "Elastic training").
    num_workers: Any = 2
    # Pairs per optimizer step at every world size; null -> batch_size_per_worker x max
    # workers x grad_accum. batch_size_per_worker is then the largest micro-batch per worker.
    global_batch: int | None = None
    resize_interval_s: float = 60.0  # elastic: how often Ray Train considers growing
    worker_resources: dict[str, float] = field(default_factory=dict)  # custom, per worker
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 1.0
    placement_strategy: str = "PACK"  # PACK | SPREAD (Ray Train worker placement)
    zero_stage: int = 2
    offload: bool = False
    precision: str = "fp32"  # fp32 | bf16 | fp16
    gradient_checkpointing: bool = False
    batch_size_per_worker: int = 64
    grad_accum: int = 1
    epochs: int = 2
    max_steps: int | None = None
    lr: float = 4.0e-4
    warmup_steps: int = 2000
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1.0e-6
    image_size: int | None = None  # None -> the preset's
    crop_scale_min: float = 0.9
    checkpoint_every: int = 0  # steps; 0 -> end of every epoch
    max_failures: int = 2
    keep_checkpoints: int = 2
    seed: int = 0
    log_every: int = 10
    eval_every: int = 0  # steps between in-training zero-shot evals on eval.data (0 = off)
    ingest_cpus: float = 0.5  # CPUs per Ray Data ingest task (read+decode+augment+tokenize)
    # Testing hook: SIGKILL the last train worker once at this step (0 = off), to prove that
    # a run survives worker loss.
    fail_at_step: int = 0
    # Testing hooks: sleep this long after every step (a slower, GPU-like step, so an
    # autoscaler test can act mid-run); keep every trained pair's key id in the checkpoint
    # state (an audit of the data accounting across resizes).
    throttle_step_s: float = 0.0
    record_keys: bool = False


@dataclass
class EvalConfig:
    checkpoint: str = ""  # run dir, checkpoint dir or HF dir; "" -> the train run's latest
    data: str = "${world.out}/eval"
    out: str = "${storage.root}/eval"
    batch_size: int = 256
    languages: list[str] = field(default_factory=list)  # [] -> all in the eval set
    # Benchmark suite (docs/operations.md, "Eval suites"): URLs or {name, type, url, ...}
    # with type xm3600 | babel_imagenet | wds | embedded; [] -> eval.data only.
    suite: list[Any] = field(default_factory=list)
    # Several checkpoints side by side ([] -> eval.checkpoint); "label=url" names a column.
    checkpoints: list[str] = field(default_factory=list)
    bootstrap: int = 1000  # resamples for the 95% confidence intervals (seeded)
    seed: int = 0


@dataclass
class TuneConfig:
    out: str = "${storage.root}/tune"
    name: str = "sweep"  # experiment dir <out>/<name>; an existing one is resumed
    search: str = "grid"  # grid | random | optuna
    num_samples: int = 4  # random/optuna: number of trials (grid runs each point once)
    param: str = "p"  # threshold swept: p (tail proportion) | t_en (English threshold)
    # grid: the values; random/optuna: log-uniform between their min and max
    p_values: list[float] = field(default_factory=lambda: [0.02, 0.06, 0.15, 0.4])
    t_en_values: list[float] = field(default_factory=lambda: [5.0, 20.0, 80.0, 320.0])
    threshold_modes: list[str] = field(default_factory=lambda: ["per_language"])
    train_steps: int = 60  # proxy training: train.max_steps of every trial
    eval_every: int = 20  # steps between zero-shot reports (what ASHA sees)
    grace_period: int = 20  # ASHA: steps before a trial may be stopped
    reduction_factor: float = 2.0  # ASHA
    # Resources of a trial's driver function; the Ray Train workers inside it request their
    # own (train.num_workers x train.cpus_per_worker / gpus_per_worker).
    cpus_per_trial: float = 0.25
    gpus_per_trial: float = 0.0
    max_concurrent: int = 2
    seed: int = 0  # random/optuna sampler seed


@dataclass
class MetadataConfig:
    out: str = "${storage.root}/metadata"
    languages: list[str] = field(default_factory=list)  # [] -> every language a source has
    wordnet_dir: str = ""  # NLTK-format data dir with corpora/wordnet (+ omw-1.4)
    wiki_dumps: str = ""  # glob of WikiExtractor JSON lines, one folder/prefix per wiki code
    pageviews: str = ""  # glob of pageview files
    use_wordfreq: bool = True  # unigram stand-in when no Wikipedia counts are given
    unigram_cap: int = 251465
    unigram_fraction: float = 0.10
    bigram_cap: int = 100646
    bigram_min_pmi: float = 30.0
    title_cap: int = 61235
    title_fraction: float = 0.76


@dataclass
class DemoConfig:
    out: str = "${storage.root}/demo"
    compare: bool = False  # also train unbalanced / one-t-for-all and compare
    seeds: list[int] = field(default_factory=lambda: [0, 1])


@dataclass
class JobConfig:
    address: str = "${oc.env:RAY_ADDRESS,http://127.0.0.1:8265}"
    working_dir: str = ""  # "" -> ship the installed package source
    pip: list[str] = field(default_factory=list)
    # A job for a remote cluster may name local paths only when every node shares that
    # filesystem (NFS, a gcsfuse mount); otherwise use object storage.
    allow_local_paths: bool = False


@dataclass
class WatConfig:
    # Common Crawl WAT files (.warc.wat.gz), a glob, local or s3:// (docs/curation.md,
    # "Text-first curation from Common Crawl"); one Ray Data task per file.
    input: str = ""
    out: str = "${storage.root}/wat"  # text-only Parquet shards: curation.input=<out>/shards/*
    snapshot: str = ""  # "" -> the CC-MAIN-YYYY-WW found in each file's path
    concurrency: int = 2


@dataclass
class DownloadConfig:
    # Text-first curation: the img2dataset URL list of a text-only curation (offline: the
    # kept pairs; online: every pair with P > 0), one Parquet per curated shard.
    list_out: str = "${storage.root}/download_list"
    # img2dataset's output folder for that list (webdataset or parquet output format); when
    # set, `worldclip join` and `worldclip train` join it to the match index by key.
    images: str = ""
    # the joined, trainable dataset (shards/*.tar offline, index/*.parquet online)
    joined_out: str = "${storage.root}/joined"


@dataclass
class Config:
    storage: StorageConfig = field(default_factory=StorageConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    world: WorldConfig = field(default_factory=WorldConfig)
    curation: CurationConfig = field(default_factory=CurationConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    metadata: MetadataConfig = field(default_factory=MetadataConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)
    job: JobConfig = field(default_factory=JobConfig)
    wat: WatConfig = field(default_factory=WatConfig)
    download: DownloadConfig = field(default_factory=DownloadConfig)


class ConfigError(ValueError):
    """A config value a user must change; the message names key, value and fix."""


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
    "eval.bootstrap": _int(0), "eval.seed": _SEED,
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


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError naming the key, the bad value and what is allowed (RULES, then the
    rules that tie keys together)."""
    from worldclip.platform import redact

    for key, rule in RULES.items():
        v = OmegaConf.select(cfg, key, default=_ABSENT)
        if v is _ABSENT:  # a config built in code may lack a section; nothing to check
            continue
        if not rule.ok(v):
            raise ConfigError(f"config {key}={_shown(key, v)}: must be {rule.allowed}")
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
