"""The run's tokenizer: a given HF tokenizer, or one trained on the curated captions and
saved with the dataset (<data>/tokenizer); `worldclip tune` shares one across trials."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterable
from typing import Any

from omegaconf import DictConfig

from worldclip.models.tokenizer import load_tokenizer, train_tokenizer
from worldclip.pipelines.ingest import Source, cached_tokenizer
from worldclip.platform import storage

log = logging.getLogger(__name__)


def tokenizer_path(url: str) -> str:
    """What load_tokenizer takes for train.tokenizer: a local copy of an s3:// directory, a
    local directory, or a hub id (XLM-V, mT5) left as it is."""
    if storage.is_s3(url):
        return storage.local_dir(url)
    local = storage.strip_scheme(url)
    return local if os.path.isdir(local) else url


def run_tokenizer(url: str) -> Any:
    """The run's tokenizer, loaded once per worker process (shared with the ingest)."""
    return cached_tokenizer(tokenizer_path(url))


def prepare_tokenizer(cfg: DictConfig, captions: Iterable[str] | None = None,
                      url: str | None = None) -> tuple[str, int]:
    """The tokenizer URL and vocab size: a given HF tokenizer, or one trained on the curated
    captions and saved with the dataset (<data>/tokenizer). `worldclip tune` passes its own
    captions (every matched pair's) and url (<tune.out>/tokenizer): one for all trials."""
    tc = cfg.train
    url = tc.tokenizer or url or storage.join(tc.data, "tokenizer")
    if not tc.tokenizer and not storage.exists(storage.join(url, "tokenizer.json")):
        log.info("training a %d-token unigram tokenizer on the curated captions",
                 tc.tokenizer_vocab)
        with tempfile.TemporaryDirectory() as d:
            train_tokenizer(Source.open(tc.data).captions() if captions is None else captions,
                            vocab_size=tc.tokenizer_vocab, out_dir=d)
            storage.upload_dir(d, url)
    tok = load_tokenizer(tokenizer_path(url))
    return url, len(tok)
