"""`evaluate_ray`: `worldclip eval eval.ray_actors=N` for large eval sets, with the image
tower on a Ray Data actor pool and the text tower and scoring on the driver (the same
functions as scoring.evaluate_model). tests/test_evaluate.py pins that it gives
evaluate_model's metrics."""

from __future__ import annotations

import os
import posixpath
from typing import Any

import numpy as np
import ray
import torch
from omegaconf import DictConfig

from worldclip.pipelines.checkpoint_io import resolve_checkpoint
from worldclip.pipelines.evaluate.embed import default_device, embed_images
from worldclip.pipelines.evaluate.evalsets import (
    image_folder_files,
    load_eval_set,
    parquet_files,
    read_parquet,
)
from worldclip.pipelines.evaluate.model import checkpoint_url, load_model
from worldclip.pipelines.evaluate.scoring import score_languages
from worldclip.pipelines.evaluate.stage import write_outputs
from worldclip.platform import storage
from worldclip.platform.runtime import init_ray


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
    files = parquet_files(url)
    if files:
        table_schema = read_parquet(files[:1], ["key"]).column_names
        if "key" not in table_schema:
            raise ValueError(f"eval set {url!r}: evaluate_ray needs a unique 'key' column to "
                             f"join image features back; add one or use `worldclip eval`")
        _, fs = storage.ray_path(files[0])
        return ray.data.read_parquet([storage.strip_scheme(f) for f in files], filesystem=fs,
                                     columns=["key", "image"],
                                     override_num_blocks=max(blocks, len(files)))
    found = image_folder_files(url)
    _, fs = storage.ray_path(url)
    ds = ray.data.read_binary_files([storage.strip_scheme(f) for _, f in found],
                                    include_paths=True, filesystem=fs)
    return ds.map_batches(_folder_key, batch_format="numpy")


def evaluate_ray(cfg: DictConfig, concurrency: int = 1, num_gpus: float | None = None
                 ) -> dict[str, Any]:
    """`run` for large eval sets: images are decoded and embedded by a Ray Data actor pool
    (`concurrency` actors, each with num_gpus GPUs; default 1 when the cluster has GPUs), the
    text tower and scoring run on the driver. Same outputs as `run`."""
    init_ray(cfg)
    ckpt = checkpoint_url(cfg)
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
    return write_outputs(cfg, metrics)
