"""The `worldclip` command: the only face of the platform.

    worldclip <stage> [--config FILE ...] [key=value ...]

Every stage reads one resolved config (platform/config.py), runs on a local embedded Ray or
the cluster named by ray.address, and saves the resolved config next to its output.
`worldclip submit <stage> ...` runs the same stage as a Ray job on a cluster.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import logging
import sys
from typing import Any

from worldclip.platform.shortcuts import add_shortcut_args, shortcut_overrides

# stage -> (module, function, help). Modules are imported only when their stage runs, so
# `worldclip --help` stays instant and a stage never pays for another's imports.
STAGES: dict[str, tuple[str, str, str]] = {
    "world": ("worldclip.pipelines.world", "run", "write the embedded worldwide web to storage"),
    "metadata": ("worldclip.pipelines.metadata_build", "run",
                 "build per-language metadata (concept vocabularies) from offline sources"),
    "wat": ("worldclip.pipelines.wat", "run",
            "Common Crawl WAT files -> text-only shards (image URL + alt/title texts)"),
    "curate": ("worldclip.pipelines.curate", "run",
               "LID -> per-language matching -> global counts -> t_lang -> balanced sample"),
    "rebalance": ("worldclip.pipelines.curate", "run_rebalance",
                  "re-sample with new thresholds from stored matches and counts (no matching)"),
    "download-list": ("worldclip.pipelines.join", "run_download_list",
                      "text-first curation -> img2dataset URL list (url, caption, uid)"),
    "join": ("worldclip.pipelines.join", "run_join",
             "img2dataset output + text-first curation -> trainable data, by key"),
    "train": ("worldclip.pipelines.train.stage", "run",
              "train MetaClip2 on Ray Train + DeepSpeed ZeRO from the curated stream"),
    "export": ("worldclip.pipelines.train.stage", "run_export",
               "consolidate a checkpoint into a HF save_pretrained directory"),
    "eval": ("worldclip.pipelines.evaluate.stage", "run",
             "zero-shot classification and retrieval per language"),
    "demo": ("worldclip.pipelines.demo", "run",
             "the whole mission on the embedded default: world -> curate -> train -> eval"),
    "tune": ("worldclip.pipelines.tune", "run",
             "Ray Tune sweep of balancing thresholds against zero-shot accuracy"),
}
JOB_COMMANDS = {
    "submit": "submit a stage as a Ray job: worldclip submit <stage> [key=value ...]",
    "jobs": "Ray jobs: worldclip jobs status|logs|stop|list [JOB_ID]",
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="worldclip",
        description="Ray-native MetaCLIP 2: curate worldwide image-text data and train "
                    "multilingual CLIP with DeepSpeed ZeRO.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="stages:\n" + "\n".join(f"  {k:<10} {v[2]}" for k, v in STAGES.items())
               + "\n" + "\n".join(f"  {k:<10} {v}" for k, v in JOB_COMMANDS.items())
               + "\n\noverrides: key=value in OmegaConf dotlist form, e.g. curation.p=0.1 "
                 "train.zero_stage=3",
    )
    p.add_argument("stage", choices=[*STAGES, *JOB_COMMANDS], metavar="stage",
                   help="one of: " + ", ".join([*STAGES, *JOB_COMMANDS]))
    p.add_argument("args", nargs="*", help="key=value overrides (and sub-commands for jobs)")
    p.add_argument("--config", "-c", action="append", default=[],
                   help="YAML config file or preset name in configs/ (repeatable)")
    add_shortcut_args(p)  # --out, --pairs, --compare: the same for `worldclip submit`
    p.add_argument("--verbose", "-v", action="store_true")
    return p


_OUT_KEY = {"world": "world.out", "curate": "curation.out", "rebalance": "curation.out",
            "train": "train.out", "eval": "eval.out", "demo": "storage.root",
            "tune": "tune.out", "metadata": "metadata.out", "wat": "wat.out",
            "download-list": "download.list_out", "join": "download.joined_out"}


def stage_config(stage: str, overrides: list[str], files: list[str]) -> Any:
    """The validated config of a stage (a stage may layer its own preset: demo)."""
    from worldclip.platform.config import ConfigError, load_config

    if stage not in STAGES:
        raise ConfigError(f"unknown stage {stage!r}; one of {', '.join(STAGES)}")
    module = importlib.import_module(STAGES[stage][0])
    loader = getattr(module, "load_stage_config", load_config)
    cfg = loader(overrides, files)
    # Inputs are read-only: refuse before anything is written (docs/operations.md).
    from worldclip.platform.overlap import check_stage_io

    check_stage_io(stage, cfg)
    return cfg


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    logging.basicConfig(level=logging.DEBUG if "-v" in argv or "--verbose" in argv
                        else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if argv and argv[0] in JOB_COMMANDS:  # submit/jobs parse their own flags
        from worldclip.platform import jobs

        return jobs.cli(argv[0], argv[1:], [], resolve=stage_config, out_keys=_OUT_KEY)
    args = _parser().parse_intermixed_args(argv)
    from worldclip.platform.config import ConfigError, apply_storage

    overrides = [a for a in args.args if "=" in a]
    extra = [a for a in args.args if "=" not in a]
    overrides += shortcut_overrides(args.stage, args, _OUT_KEY)
    module_name, fn_name, _ = STAGES[args.stage]
    module = importlib.import_module(module_name)
    try:
        cfg = stage_config(args.stage, overrides, args.config)
    except ConfigError as e:
        print(f"worldclip {args.stage}: {e}", file=sys.stderr)
        return 2
    fn = getattr(module, fn_name)
    if extra and len(inspect.signature(fn).parameters) < 2:
        hint = (f"; did you mean {extra[0]}={extra[1]}?" if len(extra) >= 2 and "." in extra[0]
                else "")
        print(f"worldclip {args.stage}: unexpected argument(s) {' '.join(extra)!r}: overrides "
              f"are key=value without spaces, e.g. curation.p=0.1{hint}", file=sys.stderr)
        return 2
    apply_storage(cfg)
    from worldclip.pipelines.refs import find_stale

    try:
        result: Any = fn(cfg, extra) if extra else fn(cfg)
    except ConfigError as e:
        print(f"worldclip {args.stage}: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        stale = find_stale(e)  # the raw pool changed under a curation: the user's to fix
        if stale is None:
            raise
        print(f"worldclip {args.stage}: {stale}", file=sys.stderr)
        return 2
    if result is not None:
        print(json.dumps(result, indent=2, default=str, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
