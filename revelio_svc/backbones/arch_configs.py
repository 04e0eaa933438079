"""Full-size architectures typed in from the published model configurations (no download).

`backbone.id: arch:<name>` with `backbone.init: random` builds one of these pipelines with random
weights (see `arch.py`), so every adapter path runs offline at the real size. The numbers below are the
fields of the published `config.json` files of each pipeline part, written out by hand:

| arch id | published pipeline | parts |
|---|---|---|
| `arch:sd15` | `stable-diffusion-v1-5/stable-diffusion-v1-5` | unet, vae, text_encoder (CLIP ViT-L/14), PNDM scheduler |
| `arch:sd21` | `stabilityai/stable-diffusion-2-1` | unet (768 px, per-block head dims, linear projections, upcast attention), vae, text_encoder (OpenCLIP ViT-H/14), DDIM scheduler (v-prediction) |
| `arch:sdxl-base` | `stabilityai/stable-diffusion-xl-base-1.0` | unet (added time ids), vae (scaling 0.13025), text_encoder (CLIP ViT-L/14), text_encoder_2 (OpenCLIP ViT-bigG/14 with projection), Euler scheduler |
| `arch:dit-xl-2-256` | `facebook/DiT-XL-2-256` | transformer (DiT-XL/2: 28 blocks, width 1152, patch 2, 1000 classes + null, learned sigma), vae, DDIM scheduler (linear betas) |

Only configuration values that change the architecture, the noise schedule or the tokenizer's padding
matter here; bookkeeping fields (`_diffusers_version`, `architectures`, `torch_dtype`) are left out.
`PARAMS` holds each part's parameter count, which the tests check the built modules against (an
independent check of the typed-in numbers: a wrong width or depth changes the count).

Tokenizers are the one part that cannot be typed in (CLIP's 49 408-entry BPE vocabulary): an `arch:`
pipeline uses a byte-level stand-in with the real special-token ids (start 49406, end 49407), the real
padding token and 77 positions, so the text encoders see sequences of the real length and id range.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

PREFIX = "arch:"

_VAE_SD = {
    "_class_name": "AutoencoderKL",
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}

# what every UNet2DConditionModel config here shares (SD 1.x, SD 2.x and SDXL base alike)
_UNET_BASE = {
    "_class_name": "UNet2DConditionModel",
    "act_fn": "silu",
    "center_input_sample": False,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "downsample_padding": 1,
    "dual_cross_attention": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "num_class_embeds": None,
    "only_cross_attention": False,
}

_UNET_SD_COMMON = {
    **_UNET_BASE,
    "block_out_channels": [320, 640, 1280, 1280],
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}

# CLIP ViT-L/14 text tower (SD 1.x text_encoder, SDXL text_encoder)
_CLIP_L = {
    "model_type": "clip_text_model",
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-05,
    "projection_dim": 768,
    "attention_dropout": 0.0,
    "dropout": 0.0,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    # the hub files keep the legacy ids: eos_token_id 2 makes CLIP pool at the highest id (49407, the end token)
    "bos_token_id": 0,
    "eos_token_id": 2,
    "pad_token_id": 1,
}

_SCALED_LINEAR = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
                  "num_train_timesteps": 1000, "trained_betas": None, "clip_sample": False,
                  "set_alpha_to_one": False, "steps_offset": 1}

_TOKENIZER_SD = {"model_max_length": 77, "pad_token": "<|endoftext|>"}
_TOKENIZER_OPENCLIP = {"model_max_length": 77, "pad_token": "!"}  # OpenCLIP pads with "!" (id 0)


@dataclass(frozen=True)
class ArchSpec:
    """One full-size pipeline: its parts' configurations and what the adapters need to know."""

    name: str  # without the prefix
    kind: str  # backbone.kind it belongs to
    published: str  # the hub pipeline whose configuration it reproduces
    summary: str
    parts: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: parameter count of each model part (the published models' counts)
    params: dict[str, int] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return PREFIX + self.name

    def part(self, what: str) -> dict[str, Any]:
        if what not in self.parts:
            raise KeyError(f"{self.id} has no part {what!r}; it has {', '.join(self.parts)}")
        return copy.deepcopy(self.parts[what])

    @property
    def native_resolution(self) -> int:
        den = self.parts.get("unet") or self.parts["transformer"]
        scale = 2 ** (len(self.parts["vae"]["block_out_channels"]) - 1)
        return int(den["sample_size"]) * scale


SD15 = ArchSpec(
    name="sd15", kind="sd", published="stable-diffusion-v1-5/stable-diffusion-v1-5",
    summary="Stable Diffusion 1.5: 512 px, ε-prediction, CLIP ViT-L/14 text encoder",
    parts={
        "unet": {**_UNET_SD_COMMON, "attention_head_dim": 8, "cross_attention_dim": 768, "sample_size": 64,
                 "use_linear_projection": False, "upcast_attention": False},
        "vae": dict(_VAE_SD),
        "text_encoder": {"_class_name": "CLIPTextModel", **_CLIP_L},
        "tokenizer": dict(_TOKENIZER_SD),
        "scheduler": {"_class_name": "PNDMScheduler", **_SCALED_LINEAR, "prediction_type": "epsilon",
                      "skip_prk_steps": True},
    },
    params={"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480},
)

SD21 = ArchSpec(
    name="sd21", kind="sd", published="stabilityai/stable-diffusion-2-1",
    summary="Stable Diffusion 2.1: 768 px, v-prediction, OpenCLIP ViT-H/14 text encoder (penultimate layer)",
    parts={
        # per-block head dims: 5, 10, 20, 20 heads of 64 channels; linear projections in and out of the
        # transformers; attention upcast to fp32 (2.1, not 2.0)
        "unet": {**_UNET_SD_COMMON, "attention_head_dim": [5, 10, 20, 20], "cross_attention_dim": 1024,
                 "sample_size": 96, "use_linear_projection": True, "upcast_attention": True},
        "vae": {**_VAE_SD, "sample_size": 768},
        # the diffusers conversion keeps 23 of OpenCLIP ViT-H's 24 text layers (SD 2 uses the penultimate)
        "text_encoder": {"_class_name": "CLIPTextModel", **_CLIP_L, "hidden_size": 1024, "intermediate_size": 4096,
                         "num_hidden_layers": 23, "num_attention_heads": 16, "hidden_act": "gelu",
                         "projection_dim": 512},
        "tokenizer": dict(_TOKENIZER_OPENCLIP),
        "scheduler": {"_class_name": "DDIMScheduler", **_SCALED_LINEAR, "prediction_type": "v_prediction",
                      "skip_prk_steps": True},
    },
    params={"unet": 865_910_724, "vae": 83_653_863, "text_encoder": 340_387_840},
)

SDXL_BASE = ArchSpec(
    name="sdxl-base", kind="sdxl", published="stabilityai/stable-diffusion-xl-base-1.0",
    summary="SDXL base 1.0: 1024 px, three UNet levels with 1/2/10 transformer layers, two text encoders, "
            "pooled text + 6 time ids",
    parts={
        "unet": {
            **_UNET_BASE,
            "addition_embed_type": "text_time",
            "addition_embed_type_num_heads": 64,
            "addition_time_embed_dim": 256,
            "attention_head_dim": [5, 10, 20],
            "block_out_channels": [320, 640, 1280],
            "class_embed_type": None,
            "conv_in_kernel": 3,
            "conv_out_kernel": 3,
            "cross_attention_dim": 2048,  # 768 (text_encoder) + 1280 (text_encoder_2)
            "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
            "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
            "projection_class_embeddings_input_dim": 2816,  # 6 time ids × 256 + pooled text 1280
            "resnet_time_scale_shift": "default",
            "sample_size": 128,
            "time_embedding_type": "positional",
            "transformer_layers_per_block": [1, 2, 10],
            "upcast_attention": None,
            "use_linear_projection": True,
        },
        "vae": {**_VAE_SD, "sample_size": 1024, "scaling_factor": 0.13025, "force_upcast": True},
        "text_encoder": {"_class_name": "CLIPTextModel", **_CLIP_L},
        "text_encoder_2": {"_class_name": "CLIPTextModelWithProjection", **_CLIP_L, "hidden_size": 1280,
                           "intermediate_size": 5120, "num_hidden_layers": 32, "num_attention_heads": 20,
                           "hidden_act": "gelu", "projection_dim": 1280},
        "tokenizer": dict(_TOKENIZER_SD),
        "tokenizer_2": dict(_TOKENIZER_OPENCLIP),
        "scheduler": {"_class_name": "EulerDiscreteScheduler", **_SCALED_LINEAR, "prediction_type": "epsilon",
                      "interpolation_type": "linear", "timestep_spacing": "leading", "use_karras_sigmas": False,
                      "skip_prk_steps": True, "sample_max_value": 1.0},
    },
    params={"unet": 2_567_463_684, "vae": 83_653_863, "text_encoder": 123_060_480,
            "text_encoder_2": 694_659_840},
)

DIT_XL_2_256 = ArchSpec(
    name="dit-xl-2-256", kind="dit", published="facebook/DiT-XL-2-256",
    summary="DiT-XL/2 at 256 px: 28 transformer blocks of width 1152 (16 heads × 72), patch 2 → 16 × 16 tokens, "
            "1000 ImageNet classes + the null class, learned sigma",
    parts={
        # the hub file names the class Transformer2DModel; diffusers maps ada_norm_zero to DiTTransformer2DModel
        "transformer": {
            "_class_name": "DiTTransformer2DModel",
            "activation_fn": "gelu-approximate",
            "attention_bias": True,
            "attention_head_dim": 72,
            "num_attention_heads": 16,
            "dropout": 0.0,
            "in_channels": 4,
            "out_channels": 8,
            "norm_elementwise_affine": False,
            "norm_num_groups": 32,
            "norm_type": "ada_norm_zero",
            "num_embeds_ada_norm": 1000,
            "num_layers": 28,
            "patch_size": 2,
            "sample_size": 32,
            "upcast_attention": False,
        },
        "vae": {**_VAE_SD, "sample_size": 256},
        "scheduler": {"_class_name": "DDIMScheduler", "beta_start": 0.0001, "beta_end": 0.02,
                      "beta_schedule": "linear", "num_train_timesteps": 1000, "trained_betas": None,
                      "clip_sample": False, "prediction_type": "epsilon", "set_alpha_to_one": True,
                      "steps_offset": 0},
    },
    # the DiT paper's 675,129,632 counts its fixed sin-cos position table (256 × 1152, a parameter there, a
    # buffer in diffusers) and one shared timestep + label embedder; diffusers keeps one embedder
    # (2,777,472 parameters) in each of the 28 blocks: 675,129,632 - 294,912 + 27 × 2,777,472
    params={"transformer": 749_826_464, "vae": 83_653_863},
)

ARCHS: dict[str, ArchSpec] = {a.name: a for a in (SD15, SD21, SDXL_BASE, DIT_XL_2_256)}


def is_arch_id(model_id: str) -> bool:
    return model_id.startswith(PREFIX)


def arch_names() -> list[str]:
    return [PREFIX + n for n in ARCHS]


def get_arch(model_id: str) -> ArchSpec:
    """The spec of an `arch:` id; a ValueError naming the known ids otherwise."""
    name = model_id[len(PREFIX):] if is_arch_id(model_id) else model_id
    if name not in ARCHS:
        raise KeyError(f"unknown architecture {model_id!r}; known: {', '.join(arch_names())}")
    return ARCHS[name]
