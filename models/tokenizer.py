"""Tokenizers for the text tower: load XLM-V/mT5 (real runs) or train a small unigram one offline.

The text tower pools at the first </s> (eos) of each row, so `tokenize` guarantees exactly one
eos per row, at the end of the real tokens, also when a caption is truncated or contains the
literal string "</s>". Special ids of trained tokenizers match XLM-V: <s>=0 <pad>=1 </s>=2 <unk>=3.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from worldclip.models.presets import CONTEXT_LENGTH

logger = logging.getLogger(__name__)

SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>")  # ids 0, 1, 2, 3 as in XLM-V
# Captions longer than this many characters per context slot are cut before tokenising: no
# real token spans 64 characters, so the kept prefix still fills the context.
_CHARS_PER_TOKEN_CAP = 64


def load_tokenizer(path_or_id: str | os.PathLike[str]) -> PreTrainedTokenizerBase:
    """Load any HF tokenizer: a local directory (offline, never touches the hub) or a hub id."""
    path = Path(path_or_id)
    if path.is_dir():
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    else:
        tokenizer = AutoTokenizer.from_pretrained(str(path_or_id))
    if tokenizer.eos_token_id is None:
        raise ValueError(
            f"tokenizer {str(path_or_id)!r} has no eos token: the text tower pools at </s>; "
            f"use a tokenizer with an eos token (XLM-V, mT5, or train_tokenizer's output)"
        )
    return tokenizer


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 8000,
    out_dir: str | os.PathLike[str] | None = None,
) -> PreTrainedTokenizerFast:
    """Train a SentencePiece-style unigram tokenizer offline on captions.

    NFKC normalisation and a Metaspace pre-tokenizer, as SentencePiece does; scripts without
    spaces (ja, zh) are segmented by the unigram model itself. The post-processor writes
    `<s> text </s>` like XLM-V. With out_dir, the result is saved so load_tokenizer reads it.
    vocab_size is an upper bound: a small corpus yields fewer pieces.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from tokenizers.trainers import UnigramTrainer

    if vocab_size <= len(SPECIAL_TOKENS):
        raise ValueError(
            f"train_tokenizer vocab_size={vocab_size}: must exceed the {len(SPECIAL_TOKENS)} "
            f"special tokens; 8000 suits the embedded demo corpus"
        )
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = UnigramTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        unk_token="<unk>",
        show_progress=False,
    )
    tok.train_from_iterator((t for t in texts if t), trainer=trainer)
    tok.model = _canonical_unigram(tok)
    ids = [tok.token_to_id(t) for t in SPECIAL_TOKENS]
    if ids != [0, 1, 2, 3]:  # the trainer places special tokens first; guard the contract
        raise RuntimeError(f"unigram trainer put special tokens {SPECIAL_TOKENS} at ids {ids}")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", 0), ("</s>", 2)],
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=CONTEXT_LENGTH,
    )
    logger.info("trained unigram tokenizer: %d pieces (asked %d)", len(tokenizer), vocab_size)
    if out_dir is not None:
        tokenizer.save_pretrained(str(out_dir))
    return tokenizer


SCORE_DECIMALS = 6
_REQUIRED_CHAR_STEP = 1e-4  # tokenizers' unigram trainer: min_score_penalty_delta


def _canonical_unigram(tok: Any) -> Any:
    """The trained unigram model with its pieces in a canonical order and canonical scores.

    The `tokenizers` trainer iterates Rust hash maps seeded per process, so the same
    captions gave the same pieces in another order (other ids), with scores differing in the
    last bits (summation order), and with the characters it adds so every character can be
    encoded ("required chars") scored min_score - k * 1e-4 in hash order. The demo's
    tokenizer, and every number trained on it, changed from run to run. Here: special tokens
    first (ids 0-3); each run of such required characters gets its lowest score (they are
    distinct single characters: none competes with another for a span); scores rounded to
    SCORE_DECIMALS; then pieces sorted by score, then by piece (tests/test_tokenizer.py
    trains in two processes and compares the files)."""
    import json

    from tokenizers import models

    vocab = json.loads(tok.to_str())["model"]["vocab"]
    special = sorted(((p, float(s)) for p, s in vocab if p in SPECIAL_TOKENS),
                     key=lambda x: SPECIAL_TOKENS.index(x[0]))
    rest = sorted(((p, float(s)) for p, s in vocab if p not in SPECIAL_TOKENS),
                  key=lambda x: -x[1])
    i = 0
    while i < len(rest):
        j = i
        while (j + 1 < len(rest) and len(rest[j][0]) == 1 and len(rest[j + 1][0]) == 1
               and abs(rest[j][1] - rest[j + 1][1] - _REQUIRED_CHAR_STEP) < 1e-7):
            j += 1
        if j > i:  # a run of single characters spaced exactly by the step
            low = rest[j][1]
            rest[i: j + 1] = [(p, low) for p, _ in rest[i: j + 1]]
        i = j + 1
    rest = sorted(((p, round(s, SCORE_DECIMALS)) for p, s in rest), key=lambda x: (-x[1], x[0]))
    return models.Unigram(special + rest, unk_id=SPECIAL_TOKENS.index("<unk>"),
                          byte_fallback=False)


def tokenize(
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    context_length: int = CONTEXT_LENGTH,
    return_tensors: str = "pt",
) -> dict[str, Any]:
    """Token ids and attention mask [N, context_length] (int64), eos last among real tokens.

    Rows are the tokenizer's own encoding (<s> ... </s> for XLM-V), truncated to
    context_length keeping </s> as the last real token, then padded with the pad id. Any
    eos inside the text itself is dropped, so the text tower's first-eos pooling lands on
    the final one. return_tensors: "pt" (torch) or "np" (numpy, e.g. for Ray Data batches).
    """
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("tokenize: the tokenizer has no eos token (the text tower pools at it)")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    if context_length < 2:
        raise ValueError(f"tokenize context_length={context_length}: must be >= 2")
    if return_tensors not in ("pt", "np"):
        raise ValueError(f"tokenize return_tensors={return_tensors!r}: use 'pt' or 'np'")
    cap = context_length * _CHARS_PER_TOKEN_CAP
    clean = []
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"tokenize: texts[{i}] is {type(text).__name__}, expected str")
        clean.append(text[:cap])
    input_ids = np.full((len(clean), context_length), pad, dtype=np.int64)
    attention_mask = np.zeros((len(clean), context_length), dtype=np.int64)
    if clean:
        encoded = tokenizer(
            clean, add_special_tokens=True, truncation=True, max_length=context_length
        )["input_ids"]
        for row, ids in enumerate(encoded):
            ids = [t for t in ids if t != eos][: context_length - 1] + [eos]
            input_ids[row, : len(ids)] = ids
            attention_mask[row, : len(ids)] = 1
    if return_tensors == "pt":
        return {
            "input_ids": torch.from_numpy(input_ids),
            "attention_mask": torch.from_numpy(attention_mask),
        }
    return {"input_ids": input_ids, "attention_mask": attention_mask}
