"""Writers of small benchmark fixtures in the REAL distributed formats (docs/operations.md,
"Eval suites"): Crossmodal-3600, Babel-ImageNet (ImageNet val ImageFolder + class file) and
the CLIP_benchmark WebDataset layout. Used by tests and by bench/ scripts."""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Sequence

import numpy as np
from PIL import Image


def photo_jpeg(rng: np.random.Generator, size: int = 160, quality: int = 90) -> bytes:
    """A photograph stand-in: multi-scale smooth colour noise (no flat regions, so distinct
    images are far apart in perceptual-hash space, as real photos are)."""
    img = np.zeros((size, size, 3))
    for s, w in ((4, 1.0), (8, 0.6), (32, 0.3), (size, 0.15)):
        small = rng.normal(0, 1, (s, s, 3))
        small = ((small - small.min()) / (np.ptp(small) + 1e-9) * 255).astype(np.uint8)
        up = np.asarray(Image.fromarray(small).resize((size, size), Image.BICUBIC), float)
        img += w * (up - 128)
    buf = io.BytesIO()
    Image.fromarray(np.clip(128 + img / 1.5, 0, 255).astype(np.uint8)).save(
        buf, "JPEG", quality=quality)
    return buf.getvalue()


def write_xm3600(root: str, images: Sequence[bytes], captions: dict[str, Sequence[list[str]]],
                 keys: Sequence[str] | None = None) -> list[str]:
    """root/captions.jsonl (one line per image: image/key, image/locale, then per language
    {"caption": [...], "caption/tokenized": [...], "caption/tokenized/lowercase": [...]}) and
    root/images/<key>.jpg, as Google distributes Crossmodal-3600."""
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    keys = list(keys or [f"{i:016x}" for i in range(len(images))])
    with open(os.path.join(root, "captions.jsonl"), "w", encoding="utf-8") as f:
        for i, (k, img) in enumerate(zip(keys, images, strict=True)):
            line: dict = {"image/key": k, "image/locale": "en"}
            for lang, caps in captions.items():
                c = list(caps[i])
                line[lang] = {"caption": c, "caption/tokenized": c,
                              "caption/tokenized/lowercase": [x.lower() for x in c]}
            f.write(json.dumps(line, ensure_ascii=False) + "\n")
            with open(os.path.join(root, "images", f"{k}.jpg"), "wb") as g:
                g.write(img)
    return keys


def write_babel_imagenet(root: str, images_per_class: Sequence[Sequence[bytes]],
                         names: dict[str, tuple[list[int], list[str]]],
                         prompts: dict[str, list[str]] | None = None) -> None:
    """ImageNet val in ImageFolder layout (root/<wnid>/ILSVRC2012_val_<n>.JPEG, wnids sorted =
    class index) and root/babel_imagenet.json {"DE": [[class indices], [names]]} as
    Babel-ImageNet (and CLIP_benchmark) ship it; optional root/prompts.json {"DE": [...]}."""
    n = 0
    for c, imgs in enumerate(images_per_class):
        d = os.path.join(root, f"n{c:08d}")
        os.makedirs(d, exist_ok=True)
        for img in imgs:
            n += 1
            with open(os.path.join(d, f"ILSVRC2012_val_{n:08d}.JPEG"), "wb") as f:
                f.write(img)
    with open(os.path.join(root, "babel_imagenet.json"), "w", encoding="utf-8") as f:
        json.dump({k.upper(): [list(v[0]), list(v[1])] for k, v in names.items()}, f,
                  ensure_ascii=False)
    if prompts:
        with open(os.path.join(root, "prompts.json"), "w", encoding="utf-8") as f:
            json.dump({k.upper(): v for k, v in prompts.items()}, f, ensure_ascii=False)


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_clip_benchmark_wds(root: str, images: Sequence[bytes], *,
                             labels: Sequence[int] | None = None,
                             classnames: Sequence[str] | None = None,
                             templates: Sequence[str] | None = None,
                             captions: Sequence[list[str]] | None = None,
                             split: str = "test", per_shard: int = 4) -> None:
    """CLIP_benchmark's webdataset_builder layout: root/classnames.txt,
    root/zeroshot_classification_templates.txt ("{c}" placeholders), root/dataset_type.txt
    (retrieval only), root/<split>/nshards.txt, root/<split>/{0..n-1}.tar holding
    s%07d.jpg + s%07d.cls (label) or s%07d.txt (captions, one per line)."""
    os.makedirs(os.path.join(root, split), exist_ok=True)
    if captions is not None:
        with open(os.path.join(root, "dataset_type.txt"), "w") as f:
            print("retrieval", end="\n", file=f)
    else:
        with open(os.path.join(root, "classnames.txt"), "w", encoding="utf-8") as f:
            f.write("\n".join(classnames or []) + "\n")
        with open(os.path.join(root, "zeroshot_classification_templates.txt"), "w",
                  encoding="utf-8") as f:
            f.write("\n".join(templates or ["a photo of a {c}."]) + "\n")
    shards = 0
    for s in range(0, len(images), per_shard):
        with tarfile.open(os.path.join(root, split, f"{shards}.tar"), "w") as tar:
            for i in range(s, min(s + per_shard, len(images))):
                _add(tar, f"s{i:07d}.jpg", images[i])
                if captions is not None:
                    _add(tar, f"s{i:07d}.txt", "\n".join(captions[i]).encode())
                else:
                    _add(tar, f"s{i:07d}.cls", str(int(labels[i])).encode())
        shards += 1
    with open(os.path.join(root, split, "nshards.txt"), "w") as f:
        print(shards, end="\n", file=f)
