"""A training run's checkpoints on disk: the layout and what reads it back.

The one module that both training (which writes checkpoints, pipelines/train/checkpointer.py)
and evaluation (which reads any of a run dir, a checkpoint or an HF dir,
pipelines/evaluate/model.py) use, so neither imports the other (docs/architecture.md,
"Training"). A checkpoint directory, as Ray Train stores it under <train.out>/<train.name>:

    checkpoint_NNNNNN/
        ckpt/                 every rank's DeepSpeed shard (tag CKPT_TAG)
        state.json            pipelines/train/state.py TrainState (rank 0)
        model_config.json     the MetaClip2Config (rank 0)
        tokenizer/            the run's tokenizer, save_pretrained (rank 0)
        data_rank<R>.json     rank R's data position and node
        export/               HF save_pretrained directory, written on first use

Every file is loaded through platform/checkpoints.py: weights_only + DeepSpeed's allow-list.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile

from transformers import MetaClip2Config

from worldclip.models.clip import ClipModel
from worldclip.models.export import load_state_dict_into, save_hf
from worldclip.models.tokenizer import load_tokenizer
from worldclip.platform import storage
from worldclip.platform.checkpoints import consolidate_zero

log = logging.getLogger(__name__)

CKPT_TAG = "ckpt"
STATE_FILE = "state.json"
MODEL_CONFIG_FILE = "model_config.json"
TOKENIZER_DIR = "tokenizer"
EXPORT_DIR = "export"
HF_CONFIG_FILE = "config.json"  # what marks an HF save_pretrained directory


def data_position_file(rank: int) -> str:
    return f"data_rank{rank}.json"


def consolidate(ckpt_dir: str) -> ClipModel:
    """A ClipModel with the full fp32 weights of a (ZeRO-sharded) DeepSpeed checkpoint."""
    with open(os.path.join(ckpt_dir, MODEL_CONFIG_FILE)) as f:
        mcfg = MetaClip2Config.from_dict(json.load(f))
    # zero_to_fp32 under weights_only + the allow-list: no code from the files runs
    sd = consolidate_zero(ckpt_dir, CKPT_TAG)
    model = ClipModel(mcfg)
    load_state_dict_into(model, sd)
    return model.eval()


def export_checkpoint(ckpt_dir: str, out_url: str) -> str:
    """Consolidate ZeRO shards -> HF save_pretrained dir (safetensors + tokenizer)."""
    model = consolidate(ckpt_dir)
    tok = load_tokenizer(os.path.join(ckpt_dir, TOKENIZER_DIR))
    if storage.is_s3(out_url):
        with tempfile.TemporaryDirectory() as d:
            save_hf(model, d, tok)
            storage.upload_dir(d, out_url)
    else:
        save_hf(model, storage.strip_scheme(out_url), tok)
    log.info("exported HF MetaClip2 directory to %s", out_url)
    return out_url


def latest_checkpoint(url: str) -> str:
    """The newest checkpoint dir of a run dir (or url itself if it is a checkpoint)."""
    if storage.exists(storage.join(url, STATE_FILE)):
        return url
    cands = [u.rsplit("/", 1)[0] for u in storage.glob(storage.join(url, "checkpoint_*",
                                                                     STATE_FILE))]
    if not cands:
        raise FileNotFoundError(f"{url}: no checkpoint (checkpoint_*/state.json); give a run "
                                "directory <train.out>/<train.name> or a checkpoint directory")
    return max(cands, key=lambda u: storage.read_json(storage.join(u, STATE_FILE))["step"])


def export_for_eval(path: str) -> str:
    """HF directory for a run dir or checkpoint (exported on first use)."""
    if storage.exists(storage.join(path, HF_CONFIG_FILE)):
        return path
    if storage.exists(storage.join(path, EXPORT_DIR, HF_CONFIG_FILE)):
        return storage.join(path, EXPORT_DIR)
    ckpt = latest_checkpoint(path)
    out = storage.join(ckpt, EXPORT_DIR)
    if not storage.exists(storage.join(out, HF_CONFIG_FILE)):
        export_checkpoint(storage.local_dir(ckpt), out)
    return out


def _has_hf_config(url: str) -> bool:
    return storage.exists(storage.join(url, HF_CONFIG_FILE))


def resolve_checkpoint(path: str) -> str:
    """A URL holding an HF save_pretrained directory for path: itself when it has a
    config.json, else the export of the run dir or checkpoint it names."""
    if _has_hf_config(path):
        return path
    if not storage.exists(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist; set eval.checkpoint to an "
                                f"HF model dir, a training run dir or a checkpoint")
    hf_dir = str(export_for_eval(path))
    if not _has_hf_config(hf_dir):
        raise FileNotFoundError(f"export_for_eval({path!r}) returned {hf_dir!r} without "
                                f"config.json")
    return hf_dir
