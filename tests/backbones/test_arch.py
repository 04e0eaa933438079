"""The full-size architectures (`backbone.id: arch:<name>`): typed-in configs, random init, docs table.

Fast: nothing here allocates full-size weights (parts are built on the meta device). The real-size
extractions are in tests/fullsize (marker `fullsize`).
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from revelio_svc.backbones import load_backbone
from revelio_svc.backbones.arch import (
    build_random,
    check_arch_config,
    count_params,
    hook_shapes,
    meta_part,
    models_markdown,
    stand_in_tokenizer,
    tensor_seed,
)
from revelio_svc.backbones.arch_configs import (
    ARCHS,
    DIT_XL_2_256,
    SD15,
    SD21,
    SDXL_BASE,
    get_arch,
)
from revelio_svc.config import BackboneConfig, ConfigError

DOCS = Path(__file__).resolve().parents[2] / "docs" / "models.md"


@pytest.mark.parametrize("name,part", [(n, p) for n, a in ARCHS.items() for p in a.params])
def test_every_part_has_the_published_parameter_count(name, part):
    spec = ARCHS[name]
    assert count_params(meta_part(spec.part(part))) == spec.params[part]


def test_the_fields_the_issue_names():
    sd21 = SD21.parts
    assert SD21.native_resolution == 768 and sd21["scheduler"]["prediction_type"] == "v_prediction"
    assert sd21["unet"]["use_linear_projection"] and sd21["unet"]["upcast_attention"]
    assert sd21["unet"]["attention_head_dim"] == [5, 10, 20, 20]
    assert SD15.native_resolution == 512 and SD15.parts["scheduler"]["prediction_type"] == "epsilon"
    xl = SDXL_BASE.parts
    assert SDXL_BASE.native_resolution == 1024 and {"text_encoder", "text_encoder_2"} <= set(xl)
    assert xl["unet"]["cross_attention_dim"] == xl["text_encoder"]["hidden_size"] + xl["text_encoder_2"]["hidden_size"]
    assert xl["unet"]["projection_class_embeddings_input_dim"] == (
        6 * xl["unet"]["addition_time_embed_dim"] + xl["text_encoder_2"]["projection_dim"])
    dit = DIT_XL_2_256.parts["transformer"]
    assert DIT_XL_2_256.native_resolution == 256
    assert (dit["patch_size"], dit["num_embeds_ada_norm"], dit["out_channels"]) == (2, 1000, 8)
    assert dit["num_attention_heads"] * dit["attention_head_dim"] == 1152 and dit["num_layers"] == 28


def test_arch_ids_need_random_init_and_the_right_kind():
    with pytest.raises(ConfigError, match="backbone.init=random"):
        load_backbone(BackboneConfig(kind="sd", id="arch:sd15"))
    with pytest.raises(ConfigError, match="set backbone.kind: sdxl"):
        load_backbone(BackboneConfig(kind="sd", id="arch:sdxl-base", init="random"))
    with pytest.raises(ConfigError, match="arch:sd15, arch:sd21"):
        load_backbone(BackboneConfig(kind="sd", id="arch:sd3", init="random"))
    with pytest.raises(ConfigError, match="revision"):
        check_arch_config(BackboneConfig(kind="dit", id="arch:dit-xl-2-256", init="random", revision="main"))
    assert check_arch_config(BackboneConfig(kind="dit", id="arch:dit-xl-2-256", init="random")) is DIT_XL_2_256
    with pytest.raises(KeyError):
        get_arch("arch:nope")


_SMALL_VAE = {"_class_name": "AutoencoderKL", "block_out_channels": [32, 32], "latent_channels": 4,
              "down_block_types": ["DownEncoderBlock2D"] * 2, "up_block_types": ["UpDecoderBlock2D"] * 2,
              "layers_per_block": 1, "norm_num_groups": 32, "sample_size": 16}


def test_random_fill_is_deterministic_whatever_the_threads():
    a = build_random(_SMALL_VAE, torch.float32, seed=3, part="vae", workers=1)
    b = build_random(_SMALL_VAE, torch.float32, seed=3, part="vae", workers=2)
    c = build_random(_SMALL_VAE, torch.float32, seed=4, part="vae", workers=2)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa if sa[k].dim() >= 2)
    assert tensor_seed(3, "vae", "x") != tensor_seed(3, "unet", "x")
    for name, mod in a.named_modules():
        if isinstance(mod, torch.nn.GroupNorm):
            assert torch.all(mod.weight == 1) and torch.all(mod.bias == 0), name
        if isinstance(mod, torch.nn.Conv2d):
            bound = 1 / (mod.weight[0].numel() ** 0.5)
            assert mod.weight.abs().max() <= bound and mod.weight.std() > bound / 3, name
    assert not any(p.requires_grad or p.is_meta for p in a.parameters())


def test_fill_in_bfloat16_allocates_only_bfloat16():
    m = build_random(_SMALL_VAE, torch.bfloat16, seed=0, part="vae")
    assert {p.dtype for p in m.parameters()} == {torch.bfloat16}
    assert all(torch.isfinite(p.float()).all() for p in m.parameters())


@pytest.mark.parametrize("spec,pad", [(SD15, 49407), (SD21, 0)])
def test_stand_in_tokenizer_has_clip_special_ids_and_length(spec, pad):
    tok = stand_in_tokenizer(spec.part("tokenizer"))
    ids = tok(["a photo of a cat"], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    assert ids.shape == (1, 77) and ids[0, 0] == 49406 and int(ids.max()) == 49407 and ids[0, -1] == pad
    end = int((ids[0] == 49407).nonzero()[0])  # the end token closes the prompt, padding follows
    assert 1 < end < 76 and bool((ids[0, end + 1:] == pad).all())


def _docs_tables() -> dict[str, dict[str, tuple[int, int, int]]]:
    out: dict[str, dict[str, tuple[int, int, int]]] = {}
    current = None
    for line in DOCS.read_text().splitlines():
        m = re.match(r"### `(arch:[\w.-]+)`", line)
        if m:
            current = out.setdefault(m.group(1), {})
            continue
        m = re.match(r"\| `([\w.]+)` \| (\d+) × (\d+) × (\d+) \|", line)
        if m and current is not None:
            current[m.group(1)] = (int(m.group(2)), int(m.group(3)), int(m.group(4)))
    return out


def docs_shapes(arch_id: str) -> dict[str, tuple[int, int, int]]:
    """The (C, H, W) table of docs/models.md for one architecture at its native resolution."""
    return _docs_tables()[arch_id]


@pytest.mark.parametrize("name", list(ARCHS))
def test_docs_table_is_what_the_models_give(name):
    spec = ARCHS[name]
    assert docs_shapes(spec.id) == hook_shapes(spec)


def test_docs_hold_the_generated_tables():
    text = DOCS.read_text()
    for line in models_markdown().splitlines():
        assert line in text, f"docs/models.md is out of date (regenerate: python -m revelio_svc.backbones.arch): {line}"


def test_hook_shapes_follow_the_resolution():
    half = hook_shapes(SDXL_BASE, 512)
    full = hook_shapes(SDXL_BASE)
    assert {k: (c, 2 * h, 2 * w) for k, (c, h, w) in half.items()} == full
