"""Benchmark loaders in the formats users already have (docs/operations.md, "Eval suites").

Each reads the layout the benchmark is distributed in, from any storage URL:

  xm3600          Crossmodal-3600: <url>/captions.jsonl, one JSON object per line with
                  "image/key" and, per language code, {"caption": [...], ...};
                  images as <url>/images/<image/key>.jpg (lines whose image is missing are
                  skipped with a warning, as CLIP_benchmark does). -> retrieval per language.
  babel_imagenet  Babel-ImageNet: ImageNet val in ImageFolder layout (<url>/<wnid>/*.JPEG;
                  the class index is the position of the folder in sorted order, as
                  torchvision's ImageFolder/ImageNet number them) plus the per-language class
                  file babel_imagenet.json {"DE": [[class indices], [names]], ...} (spec key
                  `classnames`, default <url>/babel_imagenet.json) and optional translated
                  prompts {"DE": [templates with "{}"], ...} (spec key `templates`).
                  -> zero-shot per language over that language's classes.
  wds             CLIP_benchmark WebDataset (how the DataComp suite is distributed):
                  <url>/classnames.txt, <url>/zeroshot_classification_templates.txt (one per
                  line, "{c}" for the class), optional <url>/dataset_type.txt ("retrieval"),
                  <url>/<split>/nshards.txt and <url>/<split>/{0..n-1}.tar with KEY.<jpg|png|
                  webp|jpeg> + KEY.cls (class index) or KEY.txt (captions, one per line).
                  -> zero-shot (or retrieval) in one language (spec key `language`, "en").
  embedded        the embedded world's eval set (evaluate.load_eval_set): zero-shot and
                  caption retrieval per language.
  cvqa            CVQA as the Hugging Face Hub ships it (afaji/cvqa: <url>/data/test-*.parquet;
                  pipelines/benchmarks/cvqa.py). -> multiple-choice accuracy per language,
                  local-language (acc_local) and English (acc_en) questions.

A spec is {name, type, url, ...}; a bare URL string is a spec whose type is detected from the
files present.
"""

from __future__ import annotations

import io
import json
import logging
import posixpath
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from worldclip.pipelines.benchmarks.cvqa import MultipleChoice, looks_like_cvqa, read_cvqa
from worldclip.pipelines.benchmarks.images import ImageRef, ImageRefs
from worldclip.pipelines.evaluate.evalsets import load_eval_set
from worldclip.pipelines.evaluate.templates import DEFAULT_TEMPLATES, FALLBACK_TEMPLATES
from worldclip.platform import storage
from worldclip.platform.config import ConfigError

log = logging.getLogger(__name__)

TYPES = ("xm3600", "babel_imagenet", "wds", "embedded", "cvqa")
_IMAGE_EXTS = ("webp", "png", "jpg", "jpeg")


@dataclass
class Benchmark:
    """A loaded benchmark: images once (by reference: pipelines/benchmarks/images.py reads a
    batch's bytes when it is embedded), tasks per language.

    zero-shot: classnames/templates/labels/rows per language (rows = image indices that
    language is scored on: Babel-ImageNet covers a different class subset per language).
    retrieval: captions per language, a list of captions per image (empty: not captioned).
    multiple choice (CVQA): per text variant ("local", "en"), questions on images grouped by
    language; dropped counts what the loader left out, by reason.
    """

    name: str
    type: str
    keys: list[str]
    images: Sequence[bytes]
    classnames: dict[str, list[str]] = field(default_factory=dict)
    templates: dict[str, list[str]] = field(default_factory=dict)
    labels: dict[str, np.ndarray] = field(default_factory=dict)
    rows: dict[str, np.ndarray] = field(default_factory=dict)
    captions: dict[str, list[list[str]]] = field(default_factory=dict)
    choices: dict[str, MultipleChoice] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)


# ---------------------------------------------------------------------------- specs

def detect_type(url: str) -> str:
    if storage.exists(storage.join(url, "captions.jsonl")):
        return "xm3600"
    if storage.exists(storage.join(url, "babel_imagenet.json")):
        return "babel_imagenet"
    if any(storage.exists(storage.join(url, f)) for f in
           ("classnames.txt", "dataset_type.txt", "test/nshards.txt")):
        return "wds"
    if looks_like_cvqa(url):
        return "cvqa"
    return "embedded"


def normalize_spec(item: Any, where: str) -> dict[str, Any]:
    """A URL string or {name, type, url, ...} -> a full spec; errors name the config key."""
    spec = {"url": item} if isinstance(item, str) else dict(item or {})
    if not spec.get("url"):
        raise ConfigError(f"config {where} entry {item!r}: needs a url (a benchmark folder), "
                          f"e.g. {{name: xm3600, type: xm3600, url: s3://bucket/xm3600}}")
    spec["url"] = str(spec["url"])
    spec.setdefault("type", detect_type(spec["url"]))
    if spec["type"] not in TYPES:
        raise ConfigError(f"config {where} entry {spec.get('name', spec['url'])!r}: "
                          f"type={spec['type']!r}; must be one of {', '.join(TYPES)}")
    spec.setdefault("name", posixpath.basename(spec["url"].rstrip("/")) or spec["type"])
    return spec


def load(spec: dict[str, Any], languages: list[str] | None = None) -> Benchmark:
    loader = {"xm3600": load_xm3600, "babel_imagenet": load_babel_imagenet, "wds": load_wds,
              "embedded": load_embedded, "cvqa": load_cvqa}[spec["type"]]
    return loader(spec, languages)


def load_images(spec: dict[str, Any]) -> tuple[list[str], Sequence[bytes]]:
    """(keys, images) of a benchmark: what decontamination hashes (CVQA: every image, also
    those of questions whose answer is withheld). The images are references, read when
    indexed or sliced (pipelines/benchmarks/images.py)."""
    if spec["type"] == "cvqa":
        d = read_cvqa(spec, images_only=True)
        return list(d.keys), d.images
    b = load(spec)
    return list(b.keys), b.images


def _langs(available: list[str], languages: list[str] | None, name: str) -> list[str]:
    if not languages:
        return available
    missing = [g for g in languages if g not in available]
    if missing:
        raise ConfigError(f"benchmark {name!r}: languages {missing} are not in it (it has "
                          f"{available}); drop them from the suite entry's languages")
    return list(languages)


# ---------------------------------------------------------------------------- loaders

def load_xm3600(spec: dict[str, Any], languages: list[str] | None = None) -> Benchmark:
    url = spec["url"]
    lines = [json.loads(x) for x in storage.read_text(storage.join(url, "captions.jsonl"))
             .splitlines() if x.strip()]
    present = {posixpath.basename(u) for u in storage.glob(storage.join(url, "images", "*"))}
    keep = [d for d in lines if f"{d['image/key']}.jpg" in present]
    if len(keep) < len(lines):
        log.warning("xm3600 %s: %d of %d images missing; skipped", url,
                    len(lines) - len(keep), len(lines))
    available = sorted({k for d in keep for k, v in d.items()
                        if isinstance(v, dict) and "caption" in v})
    langs = _langs(available, languages or spec.get("languages"), spec["name"])
    keys = [str(d["image/key"]) for d in keep]
    images = ImageRefs([ImageRef(storage.join(url, "images", f"{k}.jpg")) for k in keys])
    # CLIP_benchmark scores XM3600 on each image's FIRST caption per language (the paper's
    # protocol); spec all_captions: true counts every caption as a positive instead.
    first = not spec.get("all_captions", False)
    captions = {g: [list((d.get(g) or {}).get("caption") or [])[: 1 if first else None]
                    for d in keep] for g in langs}
    return Benchmark(spec["name"], "xm3600", keys, images, captions=captions)


def _image_folder(url: str) -> tuple[list[str], list[str]]:
    """(sorted class folders, image URLs with their folder) one level below url."""
    files = [f for f in storage.glob(storage.join(url, "*", "*"))
             if f.lower().rsplit(".", 1)[-1] in _IMAGE_EXTS]
    folders = sorted({posixpath.basename(posixpath.dirname(f)) for f in files})
    return folders, sorted(files)


def load_babel_imagenet(spec: dict[str, Any], languages: list[str] | None = None) -> Benchmark:
    url = spec["url"]
    folders, files = _image_folder(url)
    if not files:
        raise FileNotFoundError(f"babel_imagenet {url!r}: no <wnid>/*.JPEG images (ImageNet "
                                f"val in ImageFolder layout)")
    index = {w: i for i, w in enumerate(folders)}
    global_label = np.array([index[posixpath.basename(posixpath.dirname(f))] for f in files])
    names = storage.read_json(spec.get("classnames") or storage.join(url, "babel_imagenet.json"))
    prompts = storage.read_json(spec["templates"]) if spec.get("templates") else {}
    available = sorted(g.lower() for g in names)
    langs = _langs(available, languages or spec.get("languages"), spec["name"])
    b = Benchmark(spec["name"], "babel_imagenet",
                  [f"{posixpath.basename(posixpath.dirname(f))}/{posixpath.basename(f)}"
                   for f in files], ImageRefs([ImageRef(f) for f in files]))
    for g in langs:
        idxs, cls = names[g.upper()]
        if len(idxs) != len(cls):
            raise ValueError(f"babel_imagenet class file: language {g.upper()} lists "
                             f"{len(idxs)} indices but {len(cls)} names")
        local = {int(i): j for j, i in enumerate(idxs)}
        rows = np.array([r for r, lab in enumerate(global_label) if int(lab) in local],
                        dtype=np.int64)
        b.rows[g] = rows
        b.labels[g] = np.array([local[int(global_label[r])] for r in rows], dtype=np.int64)
        b.classnames[g] = [str(c) for c in cls]
        b.templates[g] = list(prompts.get(g.upper()) or DEFAULT_TEMPLATES.get(g)
                              or FALLBACK_TEMPLATES)
    return b


def _tar_samples(data: bytes, where: str
                 ) -> tuple[dict[str, dict[str, bytes]], dict[str, dict[str, int]]]:
    """WebDataset grouping: key = member path up to the first dot of its basename. Also each
    member's offset in `data` (-1 in a compressed tar: no byte range to read it back by)."""
    out: dict[str, dict[str, bytes]] = {}
    offsets: dict[str, dict[str, int]] = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for m in tar:
            if not m.isfile():
                continue
            if m.name.startswith("/") or ".." in m.name.split("/"):
                raise ValueError(f"{where}: unsafe tar member {m.name!r}")
            d, base = posixpath.split(m.name)
            stem, _, ext = base.partition(".")
            f = tar.extractfile(m)
            if f is not None:
                body, at = f.read(), m.offset_data
                key = posixpath.join(d, stem)
                out.setdefault(key, {})[ext.lower()] = body
                raw = data[at:at + len(body)] == body
                offsets.setdefault(key, {})[ext.lower()] = at if raw else -1
    return out, offsets


def load_wds(spec: dict[str, Any], languages: list[str] | None = None) -> Benchmark:
    url, split = spec["url"], spec.get("split", "test")
    type_url = storage.join(url, "dataset_type.txt")
    kind = storage.read_text(type_url).strip().lower() if storage.exists(type_url) \
        else "classification"
    if kind not in ("classification", "retrieval"):
        raise ValueError(f"wds benchmark {url!r}: dataset_type {kind!r} is not supported "
                         f"(classification or retrieval)")
    nshards = int(storage.read_text(storage.join(url, split, "nshards.txt")).strip())
    lang = str(spec.get("language", "en"))
    keys, images, labels, caps = [], [], [], []
    for i in range(nshards):
        shard = storage.join(url, split, f"{i}.tar")
        samples, offsets = _tar_samples(storage.read_bytes(shard), shard)
        for key, parts in samples.items():
            ext = next((e for e in _IMAGE_EXTS if e in parts), None)
            if ext is None:
                continue
            keys.append(f"{i}/{key}")
            at = offsets[key][ext]
            images.append(ImageRef(shard, at, len(parts[ext])) if at >= 0
                          else ImageRef(shard, data=parts[ext]))
            if kind == "retrieval":
                caps.append([c for c in parts.get("txt", b"").decode("utf-8").splitlines()
                             if c.strip()])
            else:
                if "cls" not in parts:
                    raise ValueError(f"{shard}: sample {key!r} has no .cls label")
                labels.append(int(parts["cls"].decode().strip()))
    b = Benchmark(spec["name"], "wds", keys, ImageRefs(images))
    if kind == "retrieval":
        b.captions[lang] = caps
        return b
    names = [x.strip() for x in storage.read_text(storage.join(url, "classnames.txt"))
             .splitlines() if x.strip()]
    t_url = storage.join(url, "zeroshot_classification_templates.txt")
    templates = [x.strip().replace("{c}", "{}") for x in storage.read_text(t_url).splitlines()
                 if x.strip()] if storage.exists(t_url) else ["{}"]
    b.classnames[lang], b.templates[lang] = names, templates
    b.labels[lang] = np.array(labels, dtype=np.int64)
    b.rows[lang] = np.arange(len(keys), dtype=np.int64)
    if len(labels) and (min(labels) < 0 or max(labels) >= len(names)):
        raise ValueError(f"wds benchmark {url!r}: labels span [{min(labels)}, {max(labels)}] "
                         f"but classnames.txt has {len(names)} names")
    return b


def load_embedded(spec: dict[str, Any], languages: list[str] | None = None) -> Benchmark:
    es = load_eval_set(spec["url"])
    langs = _langs(es.languages, languages or spec.get("languages"), spec["name"])
    b = Benchmark(spec["name"], "embedded", list(es.keys), list(es.images))
    for g in langs:
        b.classnames[g] = es.classnames[g]
        b.templates[g] = es.templates[g]
        b.labels[g] = np.asarray(es.labels, dtype=np.int64)
        b.rows[g] = np.arange(len(es.keys), dtype=np.int64)
        if g in es.captions:
            b.captions[g] = [[c] if c else [] for c in es.captions[g]]
    return b


def load_cvqa(spec: dict[str, Any], languages: list[str] | None = None) -> Benchmark:
    d = read_cvqa(spec, languages)
    return Benchmark(spec["name"], "cvqa", d.keys, d.images, choices=d.choices,
                     dropped=d.dropped)
