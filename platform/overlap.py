"""Inputs are read-only: no output location of a stage may overlap one of its inputs.

With `curation.input='DIR/shards/*.tar'` and `curation.balanced_out=DIR`, pass 2 once wrote
curated shards over the raw ones, and a second run deleted them. So every stage, when its
config resolves and before anything is written, checks each of its output keys against each
of its input keys: the same location, or one inside the other, is a ConfigError naming both
keys (docs/operations.md, "Inputs are read-only").

Locations are compared as (filesystem, path components): plain paths and file:// URLs are
made absolute, `..` and `.` folded and symlinks resolved; s3:// and s3a:// are one
filesystem, compared as bucket + key components (s3://b/data and s3://b/data2 do not
overlap). A glob input counts from its base, the folder before the first wildcard.
"""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Mapping

from omegaconf import DictConfig, ListConfig, OmegaConf

from worldclip.platform.config import ConfigError

_GLOB = re.compile(r"[*?\[]")

# stage -> (input keys, output keys). An input key that is empty in the config is skipped.
# `train.data` is an input of train; `curation.out` holds rebalance's stored matches, so
# rebalance only checks its balanced output. `eval.checkpoint` "" means train.out's latest.
STAGE_IO: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "world": ((), ("world.out",)),
    "metadata": (("metadata.wordnet_dir", "metadata.wiki_dumps", "metadata.pageviews"),
                 ("metadata.out",)),
    "wat": (("wat.input",), ("wat.out",)),
    "curate": (("curation.input", "curation.metadata", "curation.decontaminate"),
               ("curation.out", "curation.balanced_out")),
    # download-list reads the balanced output; join reads the match index and the images
    "download-list": (("curation.balanced_out",), ("download.list_out",)),
    "join": (("curation.out", "download.images"), ("download.joined_out",)),
    "rebalance": (("curation.input", "curation.metadata"), ("curation.balanced_out",)),
    "train": (("train.data", "eval.data"), ("train.out",)),
    "export": ((), ()),
    "eval": (("eval.data", "eval.checkpoint", "eval.suite"), ("eval.out",)),
    "tune": (("curation.input", "curation.metadata", "eval.data"),
             ("curation.out", "tune.out")),
    # the demo writes its own world and reads only what it wrote
    "demo": ((), ()),
}


def glob_base(url: str) -> str:
    """The folder a glob reads from: everything before the first component with a wildcard."""
    m = _GLOB.search(url)
    if not m:
        return url
    head = url[: m.start()]
    cut = head.rfind("/")
    if cut < 0:
        return "." if "://" not in url else url.split("://", 1)[0] + "://"
    base = head[:cut]
    if base.endswith(":/"):  # "s3://*.tar" -> the whole filesystem
        return base + "/"
    return base or "/"


def location(url: str) -> tuple[str, tuple[str, ...]]:
    """(filesystem, normalised path components) of a local path or URL."""
    url = glob_base(str(url))
    if url.startswith(("s3://", "s3a://")):
        bucket, _, key = url.split("://", 1)[1].partition("/")
        if not bucket or _GLOB.search(bucket):
            return "s3", ()  # every bucket
        # `..` folds inside the bucket and never climbs out of it
        parts = posixpath.normpath("/" + key).split("/")
        return "s3", (bucket, *(p for p in parts if p))
    if "://" in url and not url.startswith("file://"):
        scheme, rest = url.split("://", 1)
        parts = posixpath.normpath("/" + rest).split("/")
        return scheme.lower(), tuple(p for p in parts if p)
    if url.startswith("file://"):
        url = url[len("file://"):] or "/"
    path = os.path.realpath(os.path.abspath(os.path.expanduser(url)))
    return "file", tuple(p for p in path.split(os.sep) if p)


def overlaps(a: str, b: str) -> bool:
    """Whether two locations are the same or one is inside the other."""
    fa, pa = location(a)
    fb, pb = location(b)
    if fa != fb:
        return False
    n = min(len(pa), len(pb))
    return pa[:n] == pb[:n]


def check_io(inputs: Mapping[str, str], outputs: Mapping[str, str]) -> None:
    """ConfigError for the first output location that overlaps an input location."""
    for okey, out in outputs.items():
        if not out:
            continue
        for ikey, inp in inputs.items():
            if inp and overlaps(inp, out):
                raise ConfigError(
                    f"config {okey}={out!r} overlaps input {ikey}={inp!r}: inputs are "
                    f"read-only, and a stage's output may not be, contain or sit inside one "
                    f"of its inputs; point {okey} at a separate folder")


def check_stage_io(stage: str, cfg: DictConfig) -> None:
    """check_io with the stage's own input and output keys (STAGE_IO)."""
    in_keys, out_keys = STAGE_IO.get(stage, ((), ()))

    def values(keys: tuple[str, ...]) -> dict[str, str]:
        out: dict[str, str] = {}
        for k in keys:
            v = OmegaConf.select(cfg, k)
            if isinstance(v, str) and v:
                out[k] = v
            elif isinstance(v, ListConfig):  # eval sets: URLs or {name, type, url}
                for i, item in enumerate(v):
                    url = item.get("url") if isinstance(item, DictConfig) else item
                    if isinstance(url, str) and url:
                        out[f"{k}[{i}]"] = url
        return out

    inputs = values(in_keys)
    if stage == "eval" and not inputs.get("eval.checkpoint"):
        inputs["eval.checkpoint (train.out)"] = str(cfg.train.out)
    check_io(inputs, values(out_keys))
