"""The model to evaluate, from any checkpoint URL (pipelines/checkpoint_io.py resolves a run
dir or checkpoint to its HF export)."""

from __future__ import annotations

import tempfile

from omegaconf import DictConfig
from transformers import PreTrainedTokenizerBase

from worldclip.models.clip import ClipModel
from worldclip.models.export import load_hf
from worldclip.models.presets import check_tokenizer
from worldclip.pipelines.checkpoint_io import EXPORT_DIR, resolve_checkpoint
from worldclip.platform import storage


def load_model(path: str) -> tuple[ClipModel, PreTrainedTokenizerBase]:
    """(ClipModel in eval mode on CPU, tokenizer) from an HF dir (exported worldclip model or a
    released MetaCLIP 2 dir with its tokenizer), a run dir or checkpoint (exported on first
    use, pipelines/checkpoint_io.py), local or s3://."""
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


def checkpoint_url(cfg: DictConfig) -> str:
    """eval.checkpoint, or by default the train run's export."""
    return str(cfg.eval.checkpoint) or storage.join(str(cfg.train.out), str(cfg.train.name),
                                                    EXPORT_DIR)
