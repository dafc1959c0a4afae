"""The stage shortcuts --out, --pairs and --compare: the same flags, turned into the same
overrides, for `worldclip <stage>` (cli.py) and `worldclip submit <stage>` (platform/jobs.py).
platform imports no pipelines: the command layer passes in which key --out sets per stage."""

from __future__ import annotations

import argparse
from collections.abc import Mapping


def add_shortcut_args(p: argparse.ArgumentParser) -> None:
    """--out, --pairs, --compare on a stage's argument parser."""
    p.add_argument("--out", help="shortcut for the stage's output URL (e.g. world.out)")
    p.add_argument("--pairs", type=int, help="shortcut for world.pairs")
    p.add_argument("--compare", action="store_true",
                   help="demo: also train on unbalanced / one-t data and compare")


def shortcut_overrides(stage: str, ns: argparse.Namespace, out_keys: Mapping[str, str]
                       ) -> list[str]:
    """The key=value overrides the shortcuts in ns stand for (--out, --pairs, --compare)."""
    overrides = []
    if ns.out:
        overrides.append(f"{out_keys.get(stage, 'storage.root')}={ns.out}")
    if ns.pairs:
        overrides.append(f"world.pairs={ns.pairs}")
    if ns.compare:
        overrides.append("demo.compare=true")
    return overrides
