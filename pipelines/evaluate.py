"""Evaluation: zero-shot classification and image-text retrieval, per language.

Zero-shot is a function of (model, tokenizer, classnames, templates), as in open_clip: each
class is the normalised mean of its prompt embeddings, an image is assigned the class with the
highest cosine. Retrieval is XM3600-style: the same images, one caption per image in each
language, recall@k both ways. Everything here is plain torch on one device; `evaluate_ray`
only moves the image tower onto a Ray Data actor pool for large eval sets and then scores with
the same functions.

Eval set layouts (`load_eval_set`), any storage URL:

    <url>/eval.parquet (or any *.parquet, or the .parquet file itself)
        image binary, label int (class index), optional key string, optional captions
        (JSON string or map {lang: caption}: the embedded world writes JSON strings)
    <url>/<class index or class name>/*.jpg|jpeg|png|webp     (image folder)
    <url>/classnames.json   {lang: [name per class]} (a plain list means English); an image
                            folder without it takes its sorted folder names as English names
    <url>/templates.json    optional {lang: [prompt templates with "{}"]}; languages without
                            templates get DEFAULT_TEMPLATES, then "{}"

Ties in scores (a collapsed model gives every class the same score) are broken uniformly at
random in expectation, so a degenerate model scores chance rather than 100%.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import posixpath
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from transformers import PreTrainedTokenizerBase

from worldclip.models.clip import ClipModel
from worldclip.models.tokenizer import tokenize
from worldclip.platform import storage

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")

# Prompt templates for languages an eval set brings none for ("a photo of a {}." in the
# languages of the embedded world; wordings that need no inflection of the class name).
DEFAULT_TEMPLATES: dict[str, list[str]] = {
    "en": ["a photo of a {}.", "a photo of the {}.", "an image of a {}.", "a picture of a {}."],
    "de": ["ein Foto von {}.", "ein Bild von {}."],
    "es": ["una foto de {}.", "una imagen de {}."],
    "fr": ["une photo de {}.", "une image de {}."],
    "it": ["una foto di {}.", "un'immagine di {}."],
    "pt": ["uma foto de {}.", "uma imagem de {}."],
    "id": ["foto {}.", "gambar {}."],
    "tr": ["{} fotoğrafı.", "{} resmi."],
    "ru": ["фотография: {}.", "изображение: {}."],
    "ar": ["صورة {}."],
    "fa": ["عکس {}.", "تصویر {}."],
    "ja": ["{}の写真。", "{}の画像。"],
    "zh": ["{}的照片。", "一张{}的图片。"],
    "ko": ["{} 사진.", "{}의 사진."],
}
FALLBACK_TEMPLATES = ["{}"]

_QUERY_CHUNK = 2048  # queries scored at once: bounds the [Q, K] score matrix


# ---------------------------------------------------------------------------- metrics

def _expected_hits(scores: torch.Tensor, positive: torch.Tensor,
                   ks: Sequence[int]) -> dict[int, torch.Tensor]:
    """Per query, the probability that a positive lands in the top k under random tie-breaking.

    rank = negatives scoring above the best positive; the negatives tied with it share its
    slot at random, so hit@k = clamp((k - above) / (tied + 1), 0, 1). Exact for one positive;
    positives tied with each other count as one.
    """
    out: dict[int, list[torch.Tensor]] = {k: [] for k in ks}
    for start in range(0, scores.shape[0], _QUERY_CHUNK):
        s = scores[start:start + _QUERY_CHUNK].float()
        pos = positive[start:start + _QUERY_CHUNK].to(s.device)
        if not bool(pos.any(dim=1).all()):
            raise ValueError("every query needs at least one positive (a label or a caption)")
        best = s.masked_fill(~pos, -math.inf).amax(dim=1, keepdim=True)
        neg = ~pos
        above = ((s > best) & neg).sum(dim=1).float()
        tied = ((s == best) & neg).sum(dim=1).float()
        for k in ks:
            out[k].append(((k - above) / (tied + 1.0)).clamp(0.0, 1.0).cpu())
    return {k: torch.cat(v) if v else torch.zeros(0) for k, v in out.items()}


def zero_shot(image_features: torch.Tensor, labels: torch.Tensor | np.ndarray,
              class_emb: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[str, Any]:
    """Top-k accuracy of cosine zero-shot classification.

    Returns {"top1": float, "top5": float, ..., "per_class": float array [C]} where per_class
    is the top-1 accuracy of each class (NaN for classes without images). k is capped at C.
    """
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    num_classes = class_emb.shape[0]
    if labels.numel() != image_features.shape[0]:
        raise ValueError(f"zero_shot: {image_features.shape[0]} image features but "
                         f"{labels.numel()} labels; pass one label per image")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"zero_shot: labels must lie in [0, {num_classes}) (one class "
                         f"embedding per class); got [{int(labels.min())}, {int(labels.max())}]")
    scores = image_features.float() @ class_emb.float().to(image_features.device).T
    positive = torch.nn.functional.one_hot(labels, num_classes).bool()
    hits = _expected_hits(scores, positive, [min(k, num_classes) for k in ks])
    out: dict[str, Any] = {}
    for k in ks:
        h = hits[min(k, num_classes)]
        out[f"top{k}"] = float(h.double().mean()) if h.numel() else float("nan")
    h1 = hits[1].double()
    totals = torch.zeros(num_classes, dtype=torch.float64).index_add_(0, labels, h1)
    counts = torch.bincount(labels, minlength=num_classes).double()
    per_class = (totals / counts).numpy()  # 0/0 -> NaN: classes without images
    out["per_class"] = per_class
    return out


def retrieval(image_features: torch.Tensor, text_features: torch.Tensor,
              ks: Sequence[int] = (1, 5, 10),
              positives: torch.Tensor | None = None) -> dict[str, float]:
    """Recall@k image->text and text->image.

    Default: one caption per image, pair i <-> i (text_features[i] describes image i).
    positives [N_images, N_texts] bool generalises it (several images sharing one caption
    string, COCO-style several captions per image). Returns {"i2t_r@k", "t2i_r@k"}.
    """
    n_img, n_txt = image_features.shape[0], text_features.shape[0]
    if positives is None:
        if n_img != n_txt:
            raise ValueError(f"retrieval: {n_img} images but {n_txt} texts; with one caption "
                             f"per image pass equal counts, or a positives matrix")
        positives = torch.eye(n_img, dtype=torch.bool)
    if tuple(positives.shape) != (n_img, n_txt):
        raise ValueError(f"retrieval: positives has shape {tuple(positives.shape)}, expected "
                         f"({n_img}, {n_txt}) = (images, texts)")
    scores = image_features.float() @ text_features.float().to(image_features.device).T
    positives = positives.to(torch.bool)
    i2t = _expected_hits(scores, positives, [min(k, n_txt) for k in ks])
    t2i = _expected_hits(scores.T, positives.T, [min(k, n_img) for k in ks])
    out: dict[str, float] = {}
    for k in ks:
        out[f"i2t_r@{k}"] = float(i2t[min(k, n_txt)].double().mean())
    for k in ks:
        out[f"t2i_r@{k}"] = float(t2i[min(k, n_img)].double().mean())
    return out


def head_tail_accuracy(per_class: Sequence[float | None], class_counts: Sequence[float],
                       tail_share: float = 0.5) -> dict[str, float]:
    """Mean per-class accuracy of head and tail concepts: the tail is the tail_share least
    frequent classes by class_counts (e.g. training pairs per concept). Classes without
    accuracy (None/NaN) are left out."""
    acc = np.array([np.nan if a is None else a for a in per_class], dtype=np.float64)
    counts = np.asarray(class_counts, dtype=np.float64)
    if acc.shape != counts.shape:
        raise ValueError(f"head_tail_accuracy: {acc.size} per-class accuracies but "
                         f"{counts.size} class counts; pass one count per class")
    if not 0.0 < tail_share < 1.0:
        raise ValueError(f"head_tail_accuracy tail_share={tail_share}: must be in (0, 1)")
    order = np.argsort(counts, kind="stable")  # rarest first
    n_tail = max(1, int(round(tail_share * len(order))))
    tail, head = order[:n_tail], order[n_tail:]
    return {"head": float(np.nanmean(acc[head])) if np.isfinite(acc[head]).any() else math.nan,
            "tail": float(np.nanmean(acc[tail])) if np.isfinite(acc[tail]).any() else math.nan}


# ---------------------------------------------------------------------------- embedding

def _device_of(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _dtype_of(model: torch.nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@torch.no_grad()
def embed_texts(model: ClipModel, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str],
                batch_size: int = 256) -> torch.Tensor:
    """Normalised text embeddings [N, D] (float32, on the model's device).

    Texts are batched by token length and each batch is cut after its longest row: the text
    tower is causal and pools at eos, so padding beyond it cannot change the result, and
    prompts of ~10 tokens then cost ~10/77 of a full-context pass.
    """
    device = _device_of(model)
    context = int(model.config.text_config.max_position_embeddings)
    out = torch.zeros(len(texts), model.config.projection_dim, device=device)
    if not texts:
        return out
    tok = tokenize(tokenizer, list(texts), context_length=context)
    lengths = tok["attention_mask"].sum(dim=1)
    order = torch.argsort(lengths, stable=True)
    for start in range(0, len(texts), batch_size):
        rows = order[start:start + batch_size]
        width = int(lengths[rows].max())
        ids = tok["input_ids"][rows, :width].to(device)
        mask = tok["attention_mask"][rows, :width].to(device)
        out[rows.to(device)] = model.encode_text(ids, mask).float()
    return out


def _decode_batch(images: Sequence[bytes], size: int, pool: ThreadPoolExecutor | None
                  ) -> np.ndarray:
    from worldclip.pipelines.transforms import eval_transform

    fn = lambda data: eval_transform(data, size)  # noqa: E731
    arrays = list(pool.map(fn, images)) if pool is not None else [fn(d) for d in images]
    return np.stack(arrays)


@torch.no_grad()
def embed_images(model: ClipModel, images: Sequence[bytes], batch_size: int = 256,
                 image_size: int | None = None, workers: int | None = None) -> torch.Tensor:
    """Normalised image embeddings [N, D] (float32, on the model's device) from encoded bytes,
    centre-cropped at the vision tower's image_size; decoding runs on a few threads."""
    device, dtype = _device_of(model), _dtype_of(model)
    size = int(image_size or model.config.vision_config.image_size)
    workers = workers if workers is not None else min(8, os.cpu_count() or 1)
    parts = []
    with ThreadPoolExecutor(workers) if workers > 1 else contextlib.nullcontext() as pool:
        for start in range(0, len(images), batch_size):
            pixels = _decode_batch(images[start:start + batch_size], size, pool)
            pixels_t = torch.from_numpy(pixels).to(device=device, dtype=dtype)
            parts.append(model.encode_image(pixels_t).float())
    if not parts:
        return torch.zeros(0, model.config.projection_dim, device=device)
    return torch.cat(parts)


def _fill(template: str, name: str) -> str:
    return template.replace("{}", name)


@torch.no_grad()
def class_embeddings(model: ClipModel, tokenizer: PreTrainedTokenizerBase,
                     classnames: Sequence[str], templates: Sequence[str],
                     batch_size: int = 256) -> torch.Tensor:
    """[C, D]: per class, the mean of its normalised prompt embeddings, re-normalised
    (open_clip's zero-shot classifier). Every template must contain "{}"."""
    templates = list(templates) or FALLBACK_TEMPLATES
    bad = [t for t in templates if "{}" not in t]
    if bad:
        raise ValueError(f"class_embeddings: templates {bad} have no '{{}}' for the class name; "
                         f"write them like 'a photo of a {{}}.'")
    texts = [_fill(t, name) for name in classnames for t in templates]
    emb = embed_texts(model, tokenizer, texts, batch_size)
    emb = emb.reshape(len(classnames), len(templates), -1).mean(dim=1)
    return torch.nn.functional.normalize(emb, dim=-1)


# ---------------------------------------------------------------------------- eval sets

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


def _parquet_files(url: str) -> list[str]:
    if url.endswith(".parquet"):
        return [url]
    return storage.glob(storage.join(url, "*.parquet"))


def _read_parquet(files: Sequence[str], columns: Sequence[str] | None) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

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


def _image_folder_files(url: str) -> list[tuple[str, str]]:
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
    files = _parquet_files(url)
    captions: dict[str, list[str | None]] = {}
    image_bytes: list[bytes] = []
    if files:
        if classnames is None:
            raise ValueError(f"eval set {url!r}: no classnames.json beside the Parquet files; "
                             f"write {{lang: [name per class]}} there")
        cols = ["key", "label", "captions"] + (["image"] if images else [])
        table = _read_parquet(files, cols)
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
        found = _image_folder_files(url)
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


# ---------------------------------------------------------------------------- models

def _has_hf_config(url: str) -> bool:
    return storage.exists(storage.join(url, "config.json"))


def resolve_checkpoint(path: str) -> str:
    """A URL holding an HF save_pretrained directory for path: itself when it has a
    config.json, else the trainer's export of the run dir or checkpoint it names."""
    if _has_hf_config(path):
        return path
    if not storage.exists(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist; set eval.checkpoint to an "
                                f"HF model dir, a training run dir or a checkpoint")
    from worldclip.pipelines.train import export_for_eval  # the trainer owns consolidation

    hf_dir = str(export_for_eval(path))
    if not _has_hf_config(hf_dir):
        raise FileNotFoundError(f"export_for_eval({path!r}) returned {hf_dir!r} without "
                                f"config.json")
    return hf_dir


def load_model(path: str) -> tuple[ClipModel, PreTrainedTokenizerBase]:
    """(ClipModel in eval mode on CPU, tokenizer) from an HF dir (exported worldclip model or a
    released MetaCLIP 2 dir with its tokenizer), a run dir or checkpoint (via the trainer's
    export_for_eval), local or s3://."""
    from worldclip.models.export import load_hf
    from worldclip.models.presets import check_tokenizer

    hf_url = resolve_checkpoint(str(path))
    if storage.is_s3(hf_url):
        with tempfile.TemporaryDirectory(prefix="worldclip-eval-") as tmp:
            storage.download_dir(hf_url, tmp)
            model, tokenizer = load_hf(tmp)
    else:
        model, tokenizer = load_hf(storage.strip_scheme(hf_url))
    if tokenizer is None:
        raise FileNotFoundError(f"checkpoint {hf_url!r} has no tokenizer files "
                                f"(tokenizer.json, ...); save the tokenizer beside the model "
                                f"(tokenizer.save_pretrained(dir))")
    check_tokenizer(model.config, tokenizer)
    model.eval()
    return model, tokenizer


# ---------------------------------------------------------------------------- evaluation

def _check_languages(eval_set: EvalSet, languages: Sequence[str] | None) -> list[str]:
    langs = list(languages) if languages else eval_set.languages
    bad = [lang for lang in langs if lang not in eval_set.classnames]
    if bad:
        raise ValueError(f"eval languages {bad}: the eval set has class names for "
                         f"{eval_set.languages} only; drop them or leave eval.languages empty")
    return langs


def _caption_retrieval(image_features: torch.Tensor, captions: Sequence[str | None],
                       model: ClipModel, tokenizer: PreTrainedTokenizerBase,
                       batch_size: int) -> dict[str, float] | None:
    """Retrieval over the images that have a caption; identical caption strings are one text
    whose positives are all their images (no tie between copies of the same string)."""
    idx = [i for i, c in enumerate(captions) if c]
    if len(idx) < 2:
        return None
    unique: dict[str, int] = {}
    text_of = [unique.setdefault(captions[i], len(unique)) for i in idx]
    positives = torch.zeros(len(idx), len(unique), dtype=torch.bool)
    positives[torch.arange(len(idx)), torch.tensor(text_of)] = True
    text_features = embed_texts(model, tokenizer, list(unique), batch_size)
    sel = torch.tensor(idx, device=image_features.device)
    out = retrieval(image_features[sel], text_features, positives=positives)
    out["images"] = len(idx)
    out["texts"] = len(unique)
    return out


def score_languages(model: ClipModel, tokenizer: PreTrainedTokenizerBase,
                    image_features: torch.Tensor, eval_set: EvalSet,
                    languages: Sequence[str] | None = None, batch_size: int = 256
                    ) -> dict[str, Any]:
    """All metrics from precomputed image features (rows in eval_set order); the text tower
    runs here. Shared by `evaluate_model` and `evaluate_ray`."""
    langs = _check_languages(eval_set, languages)
    labels = eval_set.labels
    zs: dict[str, dict[str, float]] = {}
    per_class: dict[str, list[float | None]] = {}
    ret: dict[str, dict[str, float]] = {}
    for lang in langs:
        cls = class_embeddings(model, tokenizer, eval_set.classnames[lang],
                               eval_set.templates.get(lang) or FALLBACK_TEMPLATES, batch_size)
        res = zero_shot(image_features, labels, cls)
        zs[lang] = {"top1": res["top1"], "top5": res["top5"]}
        per_class[lang] = [None if math.isnan(a) else float(a) for a in res["per_class"]]
        if lang in eval_set.captions:
            r = _caption_retrieval(image_features, eval_set.captions[lang], model, tokenizer,
                                   batch_size)
            if r is not None:
                ret[lang] = r
    overall: dict[str, float] = {}
    for key in ("top1", "top5"):
        overall[key] = float(np.mean([zs[lang][key] for lang in langs])) if langs else math.nan
    if ret:
        for key in next(iter(ret.values())):
            if "@" in key:
                overall[key] = float(np.mean([r[key] for r in ret.values()]))
    num_classes = eval_set.num_classes
    return {
        "num_images": int(len(labels)),
        "num_classes": num_classes,
        "chance_top1": 1.0 / num_classes,
        "languages": langs,
        "overall": overall,
        "zero_shot": zs,
        "per_class_top1": per_class,
        "retrieval": ret,
    }


def evaluate_model(model: ClipModel, tokenizer: PreTrainedTokenizerBase, eval_set: EvalSet,
                   languages: Sequence[str] | None = None, batch_size: int = 256,
                   device: str | torch.device | None = None) -> dict[str, Any]:
    """Zero-shot top-1/top-5 and retrieval recall@1/5/10 per language, their means over
    languages ("overall") and per-class top-1 per language (for head/tail splits).

    Images are embedded once; the model is moved to `device` (default: cuda when available;
    it stays there), runs under no_grad and is put back in its original train/eval mode
    afterwards (it may be mid-training).
    """
    if not eval_set.images:
        raise ValueError(f"eval set {eval_set.url!r} was loaded without images; use "
                         f"load_eval_set(url, images=True)")
    device = torch.device(device or default_device())
    was_training = model.training
    model.to(device).eval()
    try:
        image_features = embed_images(model, eval_set.images, batch_size)
        return score_languages(model, tokenizer, image_features, eval_set, languages,
                               batch_size)
    finally:
        model.train(was_training)


# ---------------------------------------------------------------------------- stage

def _checkpoint_url(cfg: DictConfig) -> str:
    return str(cfg.eval.checkpoint) or storage.join(str(cfg.train.out), str(cfg.train.name),
                                                    "export")


def plot_top1(metrics: dict[str, Any], url: str) -> None:
    """Bar plot of per-language zero-shot top-1 (and top-5), chance marked."""
    from worldclip.pipelines.report import plt, save_figure

    langs = metrics["languages"]
    top1 = [metrics["zero_shot"][lang]["top1"] for lang in langs]
    top5 = [metrics["zero_shot"][lang]["top5"] for lang in langs]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.55 * len(langs) + 1.5), 3.2))
    x = np.arange(len(langs))
    ax.bar(x - 0.2, top1, 0.4, label="top-1")
    ax.bar(x + 0.2, top5, 0.4, label="top-5", alpha=0.6)
    ax.axhline(metrics["chance_top1"], color="k", ls="--", lw=0.8, label="chance (top-1)")
    ax.set_xticks(x, langs)
    ax.set_ylim(0, 1)
    ax.set_ylabel("zero-shot accuracy")
    ax.set_title(f"zero-shot per language ({metrics['num_images']} images, "
                 f"{metrics['num_classes']} classes)")
    ax.legend(fontsize=7, loc="upper right")
    save_figure(fig, url)


def _write_outputs(cfg: DictConfig, metrics: dict[str, Any]) -> dict[str, Any]:
    from worldclip.platform.config import save_config

    out = str(cfg.eval.out)
    storage.write_json(storage.join(out, "metrics.json"), metrics)
    plot_top1(metrics, storage.join(out, "zero_shot_top1.png"))
    save_config(cfg, out)
    log.info("eval: overall %s -> %s", metrics["overall"], out)
    return {"out": out, "checkpoint": metrics["checkpoint"], "overall": metrics["overall"],
            "top1": {lang: round(v["top1"], 4) for lang, v in metrics["zero_shot"].items()},
            "num_images": metrics["num_images"]}


def run(cfg: DictConfig) -> dict[str, Any]:
    """`worldclip eval`: evaluate eval.checkpoint (default: the train run's export) on
    eval.data; writes metrics.json, zero_shot_top1.png and config.yaml to eval.out and returns
    a summary (overall and per-language top-1; the full metrics are in metrics.json).
    With eval.suite set, runs the benchmark suite instead (pipelines/eval_suite.py)."""
    if cfg.eval.get("suite"):
        from worldclip.pipelines.eval_suite import run_suite

        return run_suite(cfg)
    ckpt = _checkpoint_url(cfg)
    model, tokenizer = load_model(ckpt)
    eval_set = load_eval_set(str(cfg.eval.data))
    metrics = evaluate_model(model, tokenizer, eval_set, list(cfg.eval.languages) or None,
                             int(cfg.eval.batch_size))
    metrics.update(checkpoint=ckpt, data=str(cfg.eval.data))
    return _write_outputs(cfg, metrics)


# ---------------------------------------------------------------------------- Ray

class ImageEmbedder:
    """Ray Data actor: holds the model once, embeds batches of encoded images."""

    def __init__(self, checkpoint: str, batch_size: int):
        self.model, _ = load_model(checkpoint)
        self.model.to(default_device())
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feats = embed_images(self.model, list(batch["image"]), self.batch_size, workers=1)
        return {"key": np.asarray(batch["key"]), "image_features": feats.cpu().numpy()}


def _folder_key(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    paths = [str(p).replace(os.sep, "/") for p in batch["path"]]
    keys = [f"{posixpath.basename(posixpath.dirname(p))}/{posixpath.basename(p)}"
            for p in paths]
    return {"key": np.asarray(keys, dtype=object), "image": batch["bytes"]}


def _image_dataset(url: str, blocks: int) -> Any:
    import ray

    files = _parquet_files(url)
    if files:
        table_schema = _read_parquet(files[:1], ["key"]).column_names
        if "key" not in table_schema:
            raise ValueError(f"eval set {url!r}: evaluate_ray needs a unique 'key' column to "
                             f"join image features back; add one or use `worldclip eval`")
        _, fs = storage.ray_path(files[0])
        return ray.data.read_parquet([storage.strip_scheme(f) for f in files], filesystem=fs,
                                     columns=["key", "image"],
                                     override_num_blocks=max(blocks, len(files)))
    found = _image_folder_files(url)
    _, fs = storage.ray_path(url)
    ds = ray.data.read_binary_files([storage.strip_scheme(f) for _, f in found],
                                    include_paths=True, filesystem=fs)
    return ds.map_batches(_folder_key, batch_format="numpy")


def evaluate_ray(cfg: DictConfig, concurrency: int = 1, num_gpus: float | None = None
                 ) -> dict[str, Any]:
    """`run` for large eval sets: images are decoded and embedded by a Ray Data actor pool
    (`concurrency` actors, each with num_gpus GPUs; default 1 when the cluster has GPUs), the
    text tower and scoring run on the driver. Same outputs as `run`."""
    import ray

    from worldclip.platform.runtime import init_ray

    init_ray(cfg)
    ckpt = _checkpoint_url(cfg)
    hf_url = resolve_checkpoint(ckpt)  # export once on the driver, not in every actor
    data = str(cfg.eval.data)
    eval_set = load_eval_set(data, images=False)
    if num_gpus is None:
        num_gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
    batch_size = int(cfg.eval.batch_size)
    # several blocks per actor, so one big Parquet file still feeds every actor
    ds = _image_dataset(data, 4 * concurrency).map_batches(
        ImageEmbedder, fn_constructor_kwargs={"checkpoint": hf_url, "batch_size": batch_size},
        batch_size=batch_size, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=concurrency), num_gpus=num_gpus, num_cpus=1)
    row_of = {k: i for i, k in enumerate(eval_set.keys)}
    features: np.ndarray | None = None
    seen = 0
    for batch in ds.iter_batches(batch_format="numpy", batch_size=None):
        feats = np.asarray(batch["image_features"], dtype=np.float32)
        if features is None:
            features = np.zeros((len(eval_set), feats.shape[1]), dtype=np.float32)
        rows = [row_of[str(k)] for k in batch["key"]]
        features[rows] = feats
        seen += len(rows)
    if features is None or seen != len(eval_set):
        raise RuntimeError(f"evaluate_ray: embedded {seen} of {len(eval_set)} images of {data}")
    model, tokenizer = load_model(hf_url)
    model.to(default_device())
    image_features = torch.from_numpy(features).to(default_device())
    metrics = score_languages(model, tokenizer, image_features, eval_set,
                              list(cfg.eval.languages) or None, batch_size)
    metrics.update(checkpoint=ckpt, data=data)
    return _write_outputs(cfg, metrics)
