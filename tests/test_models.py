"""Model presets, the DeepSpeed-safe ClipModel wrapper, param groups and HF export."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
from transformers import MetaClip2Config, MetaClip2Model

from worldclip.models.clip import LOGIT_SCALE_MAX, ClipModel, from_hf, param_groups, to_hf
from worldclip.models.export import load_hf, load_state_dict_into, save_hf
from worldclip.models.loss import ClipLoss
from worldclip.models.presets import (
    PRESETS,
    build_config,
    flops_per_sample,
    param_count,
    preset_kwargs,
)

VOCAB = 300


def _inputs(n: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randn(n, 3, 32, 32, generator=g)
    ids = torch.randint(4, VOCAB, (n, 77), generator=g)
    mask = torch.zeros(n, 77, dtype=torch.int64)
    for row, length in enumerate(range(5, 5 + 3 * n, 3)):
        ids[row, 0] = 0
        ids[row, length - 1] = 2  # eos
        ids[row, length:] = 1  # pad
        mask[row, :length] = 1
    return pixels, ids, mask


@pytest.fixture()
def tiny() -> ClipModel:
    torch.manual_seed(0)
    return ClipModel(build_config("tiny", vocab_size=VOCAB))


# ---------------------------------------------------------------- presets


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_builds_a_config(name):
    config = build_config(name)
    assert isinstance(config, MetaClip2Config)
    v, t = config.vision_config, config.text_config
    assert v.hidden_act == t.hidden_act == "quick_gelu"
    assert t.max_position_embeddings == 77
    assert (t.bos_token_id, t.pad_token_id, t.eos_token_id) == (0, 1, 2)
    assert v.hidden_size % v.num_attention_heads == 0
    assert config.logit_scale_init_value == pytest.approx(math.log(1 / 0.07))
    if name != "tiny":
        assert v.image_size == 224 and t.vocab_size == 901_629


def test_headline_h14_matches_the_paper():
    v, t = build_config("H/14").vision_config, build_config("H/14").text_config
    assert (v.hidden_size, v.num_hidden_layers, v.hidden_size // v.num_attention_heads) == (
        1280,
        32,
        80,
    )
    assert (t.hidden_size, t.num_hidden_layers, t.num_attention_heads) == (1024, 24, 16)
    assert build_config("H/14").projection_dim == 1024
    g = build_config("bigG/14").vision_config
    assert (g.hidden_size, g.num_hidden_layers, g.intermediate_size) == (1664, 48, 8192)


def test_preset_aliases_overrides_and_errors():
    assert build_config("ViT-H-14").to_dict() == build_config("H/14").to_dict()
    assert build_config("vit_bigg_14").vision_config.hidden_size == 1664
    config = build_config(
        "tiny", vocab_size=1234, projection_dim=32, vision_config={"image_size": 64}
    )
    assert config.text_config.vocab_size == 1234
    assert config.projection_dim == 32 and config.vision_config.image_size == 64
    assert PRESETS["tiny"]["vision_config"]["image_size"] == 32  # presets are not mutated
    with pytest.raises(ValueError, match="unknown: choose one of tiny, S/16"):
        build_config("Z/99")
    with pytest.raises(ValueError, match="vision_config.hidden_sise"):
        build_config("tiny", vision_config={"hidden_sise": 8})
    with pytest.raises(ValueError, match="projection_dimm"):
        preset_kwargs("tiny", projection_dimm=8)


def test_param_counts_grow_with_size_and_h14_is_about_1_9b():
    counts = {name: param_count(name) for name in PRESETS}
    chain = ["tiny", "S/16", "M/16", "B/16", "L/14", "H/14", "bigG/14"]
    assert [counts[n] for n in chain] == sorted(counts[n] for n in chain)
    assert abs(counts["B/32"] - counts["B/16"]) < 0.01 * counts["B/16"]  # patch size only
    assert 1.8e9 < counts["H/14"] < 1.95e9  # 1.86B published (XLM-V 901k vocab)
    assert 3.5e9 < counts["bigG/14"] < 3.8e9
    # The vocabulary is most of a small model: a mT5-size vocab shrinks S/16 a lot.
    assert param_count("S/16", vocab_size=250_000) < 0.5 * counts["S/16"]


def test_flops_per_sample_by_hand():
    config = build_config("tiny")
    # vision: 16 patches + cls = 17 tokens, width 64, mlp 256, 2 layers
    dense_v = 2 * 17 * (4 * 64 * 64 + 2 * 64 * 256)
    attn_v = 4 * 17 * 17 * 64
    patch = 2 * 16 * 3 * 8 * 8 * 64
    dense_t = 2 * 77 * (4 * 64 * 64 + 2 * 64 * 256)
    attn_t = 4 * 77 * 77 * 64
    proj = 2 * 64 * (64 + 64)
    expected = 2 * (dense_v + attn_v) + patch + 2 * (dense_t + attn_t) + proj
    assert flops_per_sample(config) == pytest.approx(expected)
    assert flops_per_sample(build_config("H/14")) > 10 * flops_per_sample(build_config("B/32"))


# ---------------------------------------------------------------- wrapper


def test_logit_scale_is_1d_and_no_parameter_is_0d(tiny):
    assert tiny.logit_scale.shape == (1,)
    assert tiny.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    assert all(p.ndim > 0 for p in tiny.parameters())  # deepspeed 0.19.8 crashes on 0-dim
    assert "logit_scale" not in dict(tiny.model.named_parameters())


def test_forward_gives_normalised_features(tiny):
    pixels, ids, mask = _inputs()
    image, text, scale = tiny(pixels, ids, mask)
    assert image.shape == text.shape == (4, 64)
    torch.testing.assert_close(image.norm(dim=-1), torch.ones(4))
    torch.testing.assert_close(text.norm(dim=-1), torch.ones(4))
    assert scale.item() == pytest.approx(1 / 0.07, rel=1e-5)


def test_text_is_pooled_at_eos(tiny):
    tiny.eval()
    pixels, ids, mask = _inputs()
    base = tiny.encode_text(ids, mask)
    after = ids.clone()
    after[0, 10:] = 7  # row 0 has eos at 4: tokens after it cannot matter (causal mask)
    torch.testing.assert_close(tiny.encode_text(after, mask), base)
    before = ids.clone()
    before[0, 2] = 9 if ids[0, 2] != 9 else 10
    assert not torch.allclose(tiny.encode_text(before, mask)[0], base[0])


def test_logit_scale_clamp(tiny):
    with torch.no_grad():
        tiny.logit_scale.fill_(10.0)
    assert tiny.scale().item() == pytest.approx(100.0)
    tiny.scale().backward()
    assert tiny.logit_scale.grad.item() == 0.0  # clamped: no gradient pushes it further
    tiny.clamp_logit_scale_()
    assert tiny.logit_scale.item() == pytest.approx(LOGIT_SCALE_MAX)
    with torch.no_grad():
        tiny.logit_scale.fill_(-3.0)
    assert tiny.scale().item() == pytest.approx(1.0)


def test_param_groups_split(tiny):
    groups = param_groups(tiny, weight_decay=0.1)
    decay, no_decay = groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    ids_no_decay = {id(p) for p in no_decay["params"]}
    ids_decay = {id(p) for p in decay["params"]}
    assert id(tiny.logit_scale) in ids_no_decay
    assert not ids_decay & ids_no_decay
    assert ids_decay | ids_no_decay == {id(p) for p in tiny.parameters()}
    for name, p in tiny.named_parameters():
        if p.ndim < 2 or name.endswith("bias") or "norm" in name:
            assert id(p) in ids_no_decay, name
        else:
            assert id(p) in ids_decay, name
    tiny.model.text_model.requires_grad_(False)
    frozen = param_groups(tiny, 0.1)
    assert sum(len(g["params"]) for g in frozen) < len(ids_decay | ids_no_decay)


def _loss_and_grads(model: ClipModel) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.train()
    model.zero_grad()
    pixels, ids, mask = _inputs()
    loss = ClipLoss()(*model(pixels, ids, mask))
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_gradient_checkpointing_gives_same_loss_and_grads():
    torch.manual_seed(0)
    plain = ClipModel(build_config("tiny", vocab_size=VOCAB))
    torch.manual_seed(0)
    config = build_config("tiny", vocab_size=VOCAB, gradient_checkpointing=True)
    ckpt = ClipModel(config)
    assert ckpt.is_gradient_checkpointing and not plain.is_gradient_checkpointing
    assert not hasattr(config, "gradient_checkpointing")  # consumed: not saved in config.json
    loss_a, grads_a = _loss_and_grads(plain)
    loss_b, grads_b = _loss_and_grads(ckpt)
    torch.testing.assert_close(loss_a, loss_b)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], msg=name)
    ckpt.gradient_checkpointing_disable()
    assert not ckpt.is_gradient_checkpointing


# ---------------------------------------------------------------- HF export


def test_to_hf_shares_weights_and_has_0d_logit_scale(tiny):
    hf = to_hf(tiny)
    assert isinstance(hf, MetaClip2Model)
    assert hf.logit_scale.shape == () and hf.logit_scale.item() == pytest.approx(
        tiny.logit_scale.item()
    )
    w = tiny.model.visual_projection.weight
    assert hf.visual_projection.weight.data_ptr() == w.data_ptr()  # no second copy
    assert all(b.device.type == "cpu" for b in hf.buffers())
    # The wrapper keeps working (its HF module is untouched).
    assert all(p.ndim > 0 for p in tiny.parameters())


def test_save_hf_loads_in_plain_transformers(tiny, tmp_path):
    tiny.eval()
    with torch.no_grad():
        tiny.logit_scale.fill_(3.0)
    pixels, ids, mask = _inputs()
    image, text, _ = tiny(pixels, ids, mask)
    save_hf(tiny, tmp_path / "export")
    assert (tmp_path / "export" / "model.safetensors").exists()
    assert not list((tmp_path / "export").glob("*.bin"))
    hf = MetaClip2Model.from_pretrained(tmp_path / "export").eval()
    out = hf(input_ids=ids, pixel_values=pixels, attention_mask=mask)
    torch.testing.assert_close(out.image_embeds, image, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.text_embeds, text, atol=1e-5, rtol=0)
    assert hf.logit_scale.item() == pytest.approx(3.0)
    assert "gradient_checkpointing" not in (tmp_path / "export" / "config.json").read_text()

    loaded, tokenizer = load_hf(tmp_path / "export")
    assert tokenizer is None
    assert loaded.logit_scale.shape == (1,) and loaded.logit_scale.item() == pytest.approx(3.0)
    image2, text2, _ = loaded.eval()(pixels, ids, mask)
    torch.testing.assert_close(image2, image, atol=1e-5, rtol=0)
    torch.testing.assert_close(text2, text, atol=1e-5, rtol=0)


def test_save_hf_with_tokenizer(tiny, tmp_path):
    from worldclip.models.tokenizer import train_tokenizer

    tokenizer = train_tokenizer(["a cat", "un chat", "猫の写真"] * 10, vocab_size=60)
    save_hf(tiny, tmp_path, tokenizer=tokenizer)
    _, loaded = load_hf(tmp_path)
    assert loaded is not None and loaded("a cat")["input_ids"] == tokenizer("a cat")["input_ids"]


def test_load_hf_refuses_a_directory_without_safetensors(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_hf(tmp_path)


def test_from_hf_and_load_state_dict_into_both_layouts(tiny):
    pixels, ids, mask = _inputs()
    tiny.eval()
    with torch.no_grad():
        tiny.logit_scale.fill_(2.0)
    ref = tiny(pixels, ids, mask)

    torch.manual_seed(1)
    other = ClipModel(build_config("tiny", vocab_size=VOCAB)).eval()
    load_state_dict_into(other, tiny.state_dict())  # wrapper layout, (1,) scale
    for a, b in zip(other(pixels, ids, mask), ref):
        torch.testing.assert_close(a, b)

    torch.manual_seed(2)
    third = ClipModel(build_config("tiny", vocab_size=VOCAB)).eval()
    load_state_dict_into(third, to_hf(tiny).state_dict())  # HF layout, 0-dim scale
    for a, b in zip(third(pixels, ids, mask), ref):
        torch.testing.assert_close(a, b)

    wrapped = from_hf(to_hf(tiny)).eval()
    for a, b in zip(wrapped(pixels, ids, mask), ref):
        torch.testing.assert_close(a, b)


def test_models_import_neither_ray_deepspeed_nor_pipelines_platform():
    code = (
        "import sys\n"
        "import worldclip.models.presets, worldclip.models.clip, worldclip.models.loss\n"
        "import worldclip.models.tokenizer, worldclip.models.export\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('ray', 'deepspeed')\n"
        "       or m.startswith(('worldclip.pipelines', 'worldclip.platform'))]\n"
        "print(bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
