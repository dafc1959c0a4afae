"""The config schema: one dataclass per section, their defaults and what each key means.

OmegaConf builds the structured base config from `Config` (platform/config.py loads and
merges layers onto it); what values each key accepts is in platform/rules.py, whose RULES
table has one entry per leaf field here (tests/test_config_validation.py checks both ways).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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
    # A floor for the derived per-language thresholds (0 = none, the reference behaviour).
    # On a small pool p can give a language t = 0, dropping all of it; a floor of 1 keeps
    # its rarest entries (docs/curation.md, "Small languages").
    min_t_lang: float = 0.0
    # Curation plots (plots/*.png beside the data card). Drawing them is most of what a
    # rebalance costs; Tune trials turn them off (docs/curation.md, "Balancing artifact").
    plots: bool = True
    merged_metadata: bool = False  # ablation: one metadata list for all languages
    mode: str = "offline"  # offline (write curated shards) | online (balancing artifact)
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
    # with type xm3600 | babel_imagenet | wds | embedded | cvqa; [] -> eval.data only.
    suite: list[Any] = field(default_factory=list)
    # Several checkpoints side by side ([] -> eval.checkpoint); "label=url" names a column.
    checkpoints: list[str] = field(default_factory=list)
    bootstrap: int = 1000  # resamples for the 95% confidence intervals (seeded)
    seed: int = 0
    # eval.data's image tower on a Ray Data actor pool of this many actors (a GPU each when
    # the cluster has GPUs), for eval sets too big for the driver; 0 -> on the driver.
    ray_actors: int = 0


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
