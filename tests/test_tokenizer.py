"""Tokenizer: offline unigram training, save/load round trip, and the one-eos-per-row contract."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worldclip.models.presets import build_config, check_tokenizer
from worldclip.models.tokenizer import load_tokenizer, tokenize, train_tokenizer

CORPUS = [
    "a photo of a cat sitting on a red sofa",
    "the dog runs across the green park",
    "sunset over the mountains and the lake",
    "東京の夜景と高いビルの写真",
    "猫がソファの上で寝ている",
    "一只猫坐在红色的沙发上",
    "公园里的狗在草地上奔跑",
    "фотография кошки на красном диване",
    "собака бежит по зелёному парку",
    "صورة قطة تجلس على أريكة حمراء",
    "كلب يركض في الحديقة الخضراء",
    "una foto de un gato en el sofá rojo",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok")
    tokenizer = train_tokenizer(CORPUS * 20, vocab_size=400, out_dir=out)
    return tokenizer, out


def test_special_ids_match_xlmv(trained):
    tokenizer, _ = trained
    assert tokenizer.convert_tokens_to_ids(["<s>", "<pad>", "</s>", "<unk>"]) == [0, 1, 2, 3]
    assert (tokenizer.bos_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    assert 4 < len(tokenizer) <= 400


def test_encoding_is_bos_text_eos_and_decodes_back(trained):
    tokenizer, _ = trained
    for text in CORPUS:
        ids = tokenizer(text)["input_ids"]
        assert ids[0] == 0 and ids[-1] == 2 and 2 not in ids[1:-1]
        assert 3 not in ids, f"unknown piece in training text {text!r}"
        assert tokenizer.decode(ids, skip_special_tokens=True).strip() == text


def test_save_load_round_trip(trained):
    tokenizer, out = trained
    loaded = load_tokenizer(out)
    assert len(loaded) == len(tokenizer)
    a = tokenize(tokenizer, CORPUS)
    b = tokenize(loaded, CORPUS)
    assert torch.equal(a["input_ids"], b["input_ids"])
    assert torch.equal(a["attention_mask"], b["attention_mask"])


def _check_rows(batch: dict, eos: int = 2, pad: int = 1, length: int = 77) -> None:
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.shape == mask.shape == (len(ids), length)
    assert ids.dtype == mask.dtype == torch.int64
    for row_ids, row_mask in zip(ids.tolist(), mask.tolist()):
        assert row_ids.count(eos) == 1
        n = row_ids.index(eos) + 1  # eos is the last real token
        assert row_mask == [1] * n + [0] * (length - n)
        assert row_ids[n:] == [pad] * (length - n)


def test_shapes_and_one_eos_per_row(trained):
    tokenizer, _ = trained
    batch = tokenize(tokenizer, CORPUS)
    _check_rows(batch)
    # Untruncated rows keep the whole encoding.
    assert batch["attention_mask"][0].sum().item() == len(tokenizer(CORPUS[0])["input_ids"])


def test_truncation_keeps_eos_last(trained):
    tokenizer, _ = trained
    long_texts = [" ".join(CORPUS) * 5, "猫" * 500, "a" * 100_000]
    batch = tokenize(tokenizer, long_texts)
    _check_rows(batch)
    assert batch["attention_mask"].sum(dim=1).tolist() == [77, 77, 77]
    assert batch["input_ids"][:, 76].tolist() == [2, 2, 2]
    assert batch["input_ids"][:, 0].tolist() == [0, 0, 0]


def test_literal_eos_in_text_and_empty_text(trained):
    tokenizer, _ = trained
    batch = tokenize(tokenizer, ["a cat </s> on a sofa", "", "</s></s>"])
    _check_rows(batch)
    assert batch["input_ids"][1, :2].tolist() == [0, 2]


def test_short_context_and_numpy_output(trained):
    tokenizer, _ = trained
    batch = tokenize(tokenizer, CORPUS, context_length=8, return_tensors="np")
    assert isinstance(batch["input_ids"], np.ndarray)
    _check_rows({k: torch.from_numpy(v) for k, v in batch.items()}, length=8)


def test_bad_inputs_are_named(trained):
    tokenizer, _ = trained
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        tokenize(tokenizer, ["ok", None])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="vocab_size=3"):
        train_tokenizer(CORPUS, vocab_size=3)
    assert tokenize(tokenizer, [])["input_ids"].shape == (0, 77)


def test_check_tokenizer_against_config(trained):
    tokenizer, _ = trained
    check_tokenizer(build_config("tiny", vocab_size=len(tokenizer)), tokenizer)
    with pytest.raises(ValueError, match="vocab_size"):
        check_tokenizer(build_config("tiny", vocab_size=len(tokenizer) - 1), tokenizer)
    with pytest.raises(ValueError, match="eos_token_id"):
        check_tokenizer(build_config("tiny", text_config={"eos_token_id": 5}), tokenizer)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    texts=st.lists(st.text(max_size=300), min_size=1, max_size=6),
    length=st.integers(min_value=2, max_value=40),
)
def test_one_eos_per_row_property(trained, texts, length):
    tokenizer, _ = trained
    _check_rows(tokenize(tokenizer, texts, context_length=length), length=length)


def test_training_is_the_same_in_every_process(tmp_path):
    """The `tokenizers` trainer iterates hash maps seeded per process; the saved tokenizer
    must not depend on that (the demo's numbers changed from run to run because of it).
    Two fresh interpreters train on the same captions and write byte-identical files."""
    import subprocess
    import sys

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(CORPUS * 20), encoding="utf-8")
    code = ("import sys; from worldclip.models.tokenizer import train_tokenizer; "
            "texts = open(sys.argv[1], encoding='utf-8').read().splitlines(); "
            "train_tokenizer(texts, vocab_size=400, out_dir=sys.argv[2])")
    files = []
    for run in ("a", "b", "c"):
        subprocess.run([sys.executable, "-c", code, str(corpus), str(tmp_path / run)],
                       check=True)
        files.append((tmp_path / run / "tokenizer.json").read_bytes())
    assert files[0] == files[1] == files[2]
