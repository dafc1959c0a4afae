"""Configuration: OmegaConf structured configs (dataclasses) + YAML files + dotlist overrides.

`load_config(overrides)` merges, in order: the dataclass defaults, configs/default.yaml, any
`--config FILE` YAMLs, then `key=value` overrides, and validates the result with errors that
name the key, the bad value and what is allowed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
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
    # p the tail proportion (use p on small pools, see RECIPE.md section 4).
    t_en: float | None = None
    p: float | None = 0.06
    # per_language (MetaCLIP 2) | single (one t for all, ablation) | none (unbalanced)
    threshold_mode: str = "per_language"
    merged_metadata: bool = False  # ablation: one metadata list for all languages
    mode: str = "offline"  # offline (write curated shards) | online (write index)
    seed: int = 0
    batch_size: int = 512
    concurrency: int = 2
    pairs_per_output_shard: int = 2000


@dataclass
class TrainConfig:
    data: str = "${curation.balanced_out}"
    out: str = "${storage.root}/runs"
    name: str = "worldclip"
    preset: str = "tiny"
    tokenizer: str = ""  # HF tokenizer dir or id; "" -> train one on the curated captions
    tokenizer_vocab: int = 4000
    num_workers: int = 2
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


@dataclass
class EvalConfig:
    checkpoint: str = ""  # run dir, checkpoint dir or HF dir; "" -> the train run's latest
    data: str = "${world.out}/eval"
    out: str = "${storage.root}/eval"
    batch_size: int = 256
    languages: list[str] = field(default_factory=list)  # [] -> all in the eval set


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


class ConfigError(ValueError):
    """A config value a user must change; the message names key, value and fix."""


_CHOICES: dict[str, tuple[Any, ...]] = {
    "curation.lid_backend": ("fasttext", "langdetect"),
    "curation.threshold_mode": ("per_language", "single", "none"),
    "curation.mode": ("offline", "online"),
    "train.zero_stage": (0, 1, 2, 3),
    "train.precision": ("fp32", "bf16", "fp16"),
    "train.placement_strategy": ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"),
    "tune.search": ("grid", "random", "optuna"),
}


def _get(cfg: DictConfig, key: str) -> Any:
    return OmegaConf.select(cfg, key)


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError naming the key, the bad value and what is allowed."""
    for key, allowed in _CHOICES.items():
        v = _get(cfg, key)
        if v not in allowed:
            opts = ", ".join(map(str, allowed))
            raise ConfigError(f"config {key}={v!r}: must be one of {opts}")
    t_en, p = cfg.curation.t_en, cfg.curation.p
    if (t_en is None) == (p is None) and cfg.curation.threshold_mode != "none":
        raise ConfigError(
            f"config curation.t_en={t_en!r} and curation.p={p!r}: set exactly one "
            "(e.g. curation.t_en=170000 curation.p=null, or curation.p=0.06 curation.t_en=null)")
    if p is not None and not 0.0 < p <= 1.0:
        raise ConfigError(f"config curation.p={p!r}: must be in (0, 1], e.g. 0.06")
    if t_en is not None and t_en <= 0:
        raise ConfigError(f"config curation.t_en={t_en!r}: must be > 0, e.g. 170000")
    positive = ["world.pairs", "world.concepts", "world.pairs_per_shard", "world.image_size",
                "train.num_workers", "train.batch_size_per_worker", "train.grad_accum",
                "train.epochs", "curation.batch_size", "curation.concurrency"]
    for key in positive:
        v = _get(cfg, key)
        if not isinstance(v, int) or v <= 0:
            raise ConfigError(f"config {key}={v!r}: must be a positive integer")
    for key in ("world.english_share", "world.junk_share", "world.corrupt_share"):
        v = _get(cfg, key)
        if not 0.0 <= v <= 1.0:
            raise ConfigError(f"config {key}={v!r}: must be in [0, 1]")
    if cfg.train.offload and cfg.train.zero_stage == 0:
        raise ConfigError("config train.offload=true needs train.zero_stage 1, 2 or 3")
    if cfg.train.precision != "fp32" and not cfg.train.use_gpu:
        raise ConfigError(f"config train.precision={cfg.train.precision!r}: bf16/fp16 need "
                          "train.use_gpu=true; use train.precision=fp32 on CPU")
    for fmt in cfg.world.formats:
        if fmt not in ("wds", "parquet"):
            raise ConfigError(f"config world.formats contains {fmt!r}: allowed wds, parquet")


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
        layers.append(OmegaConf.load(path))  # yaml.safe_load under the hood
    try:
        layers.append(OmegaConf.from_dotlist(list(overrides or [])))
        cfg = OmegaConf.merge(*layers)
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        msg = str(getattr(e, "msg", e)).split("\n")[0]
        raise ConfigError(f"config {key}: {msg} (check the key name and type; "
                          "configs/default.yaml lists them)") from None
    validate(cfg)
    return cfg


def to_yaml(cfg: DictConfig, redact: bool = True) -> str:
    """Resolved YAML; secrets redacted so it can be saved next to outputs."""
    c = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(c, dict)
    if redact:
        for key in ("access_key", "secret_key"):
            if c.get("storage", {}).get(key):
                c["storage"][key] = "***"
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
