"""Eval sets on any storage URL, read into an `EvalSet` (`load_eval_set`). Layouts:

    <url>/eval.parquet (or any *.parquet, or the .parquet file itself)
        image binary, label int (class index), optional key string, optional captions
        (JSON string or map {lang: caption}: the embedded world writes JSON strings)
    <url>/<class index or class name>/*.jpg|jpeg|png|webp     (image folder)
    <url>/classnames.json   {lang: [name per class]} (a plain list means English); an image
                            folder without it takes its sorted folder names as English names
    <url>/templates.json    optional {lang: [prompt templates with "{}"]}; languages without
                            templates get DEFAULT_TEMPLATES, then "{}"
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from worldclip.pipelines.evaluate.templates import DEFAULT_TEMPLATES, FALLBACK_TEMPLATES
from worldclip.platform import storage

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")


@dataclass
class EvalSet:
    """An eval set in memory. images may be empty (metadata only, for `evaluate_ray`)."""

    keys: list[str]
    labels: np.ndarray  # int64 [N]
    classnames: dict[str, list[str]]  # lang -> name per class
    templates: dict[str, list[str]]  # lang -> prompt templates
    captions: dict[str, list[str | None]] = field(default_factory=dict)  # lang -> per image
    images: list[bytes] = field(default_factory=list)
    url: str = ""

    @property
    def languages(self) -> list[str]:
        return list(self.classnames)

    @property
    def num_classes(self) -> int:
        return len(next(iter(self.classnames.values())))

    def __len__(self) -> int:
        return len(self.keys)


def _read_classnames(url: str) -> dict[str, list[str]] | None:
    path = storage.join(url, "classnames.json")
    if not storage.exists(path):
        return None
    data = storage.read_json(path)
    if isinstance(data, list):
        data = {"en": data}
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{path}: expected {{lang: [class name, ...]}} or a list of names")
    sizes = {lang: len(names) for lang, names in data.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"{path}: languages list different numbers of classes {sizes}; "
                         f"every language needs one name per class")
    return {str(lang): [str(n) for n in names] for lang, names in data.items()}


def _read_templates(url: str, languages: Sequence[str]) -> dict[str, list[str]]:
    path = storage.join(url, "templates.json")
    given = storage.read_json(path) if storage.exists(path) else {}
    if isinstance(given, list):
        given = {"en": given}
    return {lang: list(given.get(lang) or DEFAULT_TEMPLATES.get(lang) or FALLBACK_TEMPLATES)
            for lang in languages}


def _parse_captions(value: Any) -> dict[str, str]:
    """{lang: caption} from a JSON string, a dict or a pyarrow map (list of pairs)."""
    if value is None:
        return {}
    if isinstance(value, str | bytes):
        value = json.loads(value) if value else {}
    if isinstance(value, list):
        value = dict(value)
    if not isinstance(value, dict):
        raise ValueError(f"captions value {value!r}: expected a JSON object {{lang: caption}}")
    return {str(k): str(v) for k, v in value.items() if v}


def parquet_files(url: str) -> list[str]:
    """The eval set's Parquet files: url itself when it is one, else every *.parquet in it."""
    if url.endswith(".parquet"):
        return [url]
    return storage.glob(storage.join(url, "*.parquet"))


def read_parquet(files: Sequence[str], columns: Sequence[str] | None) -> Any:
    """One Arrow table of the files' columns (those of `columns` that each file has)."""
    tables = []
    for f in files:
        path, fs = storage.ray_path(f)
        schema = pq.read_schema(path, filesystem=fs)
        cols = [c for c in columns if c in schema.names] if columns is not None else None
        tables.append(pq.read_table(path, filesystem=fs, columns=cols))
    return pa.concat_tables(tables) if len(tables) > 1 else tables[0]


def _class_index(name: str, classnames: dict[str, list[str]], where: str) -> int:
    if name.isdigit():
        return int(name)
    for names in classnames.values():
        if name in names:
            return names.index(name)
        spaced = name.replace("_", " ")
        if spaced in names:
            return names.index(spaced)
    raise ValueError(f"{where}: folder {name!r} is neither a class index nor a name in "
                     f"classnames.json; rename it to the class index or add the name")


def image_folder_files(url: str) -> list[tuple[str, str]]:
    """(class folder name, file URL) for every image one level below url."""
    out = []
    for f in storage.glob(storage.join(url, "*", "*")):
        if f.lower().endswith(IMAGE_EXTENSIONS):
            out.append((posixpath.basename(posixpath.dirname(f.replace(os.sep, "/"))), f))
    return out


def load_eval_set(url: str, images: bool = True) -> EvalSet:
    """Read an eval set (Parquet or image folder, see the module docstring) from any URL.

    images=False reads everything but the image bytes (what `evaluate_ray` needs on the
    driver). Labels are checked against the number of class names.
    """
    base = posixpath.dirname(url) if url.endswith(".parquet") else url
    classnames = _read_classnames(base)
    files = parquet_files(url)
    captions: dict[str, list[str | None]] = {}
    image_bytes: list[bytes] = []
    if files:
        if classnames is None:
            raise ValueError(f"eval set {url!r}: no classnames.json beside the Parquet files; "
                             f"write {{lang: [name per class]}} there")
        cols = ["key", "label", "captions"] + (["image"] if images else [])
        table = read_parquet(files, cols)
        missing = [c for c in ("label",) + (("image",) if images else ())
                   if c not in table.column_names]
        if missing:
            raise ValueError(f"eval set {url!r}: Parquet lacks column(s) {missing}; it needs "
                             f"image (bytes) and label (class index)")
        labels = np.asarray(table.column("label").to_pylist(), dtype=np.int64)
        keys = ([str(k) for k in table.column("key").to_pylist()]
                if "key" in table.column_names else [str(i) for i in range(len(labels))])
        if "captions" in table.column_names:
            parsed = [_parse_captions(v) for v in table.column("captions").to_pylist()]
            for lang in sorted({lang for p in parsed for lang in p}):
                captions[lang] = [p.get(lang) for p in parsed]
        if images:
            image_bytes = table.column("image").to_pylist()
    else:
        found = image_folder_files(url)
        if not found:
            raise FileNotFoundError(f"eval set {url!r}: no *.parquet and no <class>/*.jpg "
                                    f"images there; point eval.data at an eval dir")
        if classnames is None:  # torchvision ImageFolder: sorted folder names are the classes
            folders = sorted({name for name, _ in found})
            classnames = {"en": [name.replace("_", " ") for name in folders]}
            labels = np.asarray([folders.index(name) for name, _ in found], dtype=np.int64)
        else:
            labels = np.asarray([_class_index(name, classnames, url) for name, _ in found],
                                dtype=np.int64)
        keys = [f"{name}/{posixpath.basename(f)}" for name, f in found]
        if images:
            with ThreadPoolExecutor(16) as pool:
                image_bytes = list(pool.map(storage.read_bytes, [f for _, f in found]))
    num_classes = len(next(iter(classnames.values())))
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"eval set {url!r}: labels span [{labels.min()}, {labels.max()}] but "
                         f"classnames.json has {num_classes} classes")
    if len(set(keys)) != len(keys):
        raise ValueError(f"eval set {url!r}: keys are not unique; give each image its own key")
    templates = _read_templates(base, list(classnames))
    log.info("eval set %s: %d images, %d classes, languages %s", url, len(keys), num_classes,
             ",".join(classnames))
    return EvalSet(keys=keys, labels=labels, classnames=classnames, templates=templates,
                   captions=captions, images=image_bytes, url=url)
