"""Tiny random-weight latent-diffusion pipelines built locally, in the diffusers directory layout.

Nothing here touches the hub: every model is built from a small config and saved with
`save_pretrained`, and the CLIP tokenizer's vocab.json / merges.txt are written by hand. The
builders cache by name inside one session's `tmp_path_factory` so each pipeline is built once per
test session even when several test modules ask for it.

Architectural facts the tests rely on (kept here, next to the configs that make them true):
- VAE: two levels → scale factor 2, 4 latent channels.
- SD / SDXL UNet: sample_size 8 latents → 16 px images; block_out_channels (32, 64).
- DiT: sample_size 8 latents, patch 2 → 4 × 4 = 16 tokens of width 16; learned sigma (out = 2 × in).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from revelio_svc.backbones.arch import byte_vocab

VAE_SCALE = 2
LATENT_CHANNELS = 4
LATENT_SIZE = 8
IMAGE_SIZE = LATENT_SIZE * VAE_SCALE  # the adapters' native resolution for these models
UNET_CHANNELS = (32, 64)
TEXT_HIDDEN = 32
TEXT_MAX_LENGTH = 77
DIT_HEADS, DIT_HEAD_DIM, DIT_LAYERS, DIT_PATCH, DIT_CLASSES = 2, 8, 4, 2, 10
DIT_WIDTH = DIT_HEADS * DIT_HEAD_DIM
SDXL_TIME_DIM = 8

_WORDS = ("a", "photo", "of", "cat", "dog", "the")
_cache: dict[str, Path] = {}


# --------------------------------------------------------------------------- tokenizer
def write_clip_tokenizer(folder: Path, max_length: int = TEXT_MAX_LENGTH) -> int:
    """Write a CLIP byte-level BPE tokenizer (vocab.json, merges.txt); returns its vocab size."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = byte_vocab()
    merges: list[str] = []
    # a few whole-word merges so that prompts are not purely character-level
    for word in _WORDS:
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        cur = pieces[0]
        for nxt in pieces[1:]:
            merges.append(f"{cur} {nxt}")
            cur = cur + nxt
            vocab.setdefault(cur, len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "model_max_length": max_length,
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}))
    return len(vocab)


def _text_config(vocab_size: int, projection_dim: int | None = None):
    from transformers import CLIPTextConfig

    kw = {"projection_dim": projection_dim} if projection_dim else {}
    return CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=TEXT_HIDDEN, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=TEXT_MAX_LENGTH,
        bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1, **kw)


# --------------------------------------------------------------------------- models
def tiny_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(32, 32), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=LATENT_CHANNELS, norm_num_groups=32, sample_size=IMAGE_SIZE)


def tiny_sd_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=LATENT_SIZE, in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS,
        block_out_channels=UNET_CHANNELS, layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_HIDDEN, attention_head_dim=8, norm_num_groups=32)


def tiny_sdxl_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=LATENT_SIZE, in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS,
        block_out_channels=UNET_CHANNELS, layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, transformer_layers_per_block=(1, 2),
        # the two text encoders' hidden states are concatenated: 32 + 32
        cross_attention_dim=2 * TEXT_HIDDEN,
        addition_embed_type="text_time", addition_time_embed_dim=SDXL_TIME_DIM,
        # 6 time ids × addition_time_embed_dim + the pooled projection of text encoder 2
        projection_class_embeddings_input_dim=6 * SDXL_TIME_DIM + TEXT_HIDDEN, norm_num_groups=32)


def tiny_dit():
    from diffusers import DiTTransformer2DModel

    return DiTTransformer2DModel(
        num_attention_heads=DIT_HEADS, attention_head_dim=DIT_HEAD_DIM, in_channels=LATENT_CHANNELS,
        out_channels=2 * LATENT_CHANNELS, num_layers=DIT_LAYERS, sample_size=LATENT_SIZE,
        patch_size=DIT_PATCH, num_embeds_ada_norm=DIT_CLASSES)


def _seeded(seed: int):
    torch.manual_seed(seed)


# --------------------------------------------------------------------------- pipelines
def build_sd(root: Path) -> Path:
    """SD 1.x/2.x layout: unet/ vae/ text_encoder/ tokenizer/ scheduler/ (PNDM, as SD 1.5 ships)."""
    from diffusers import PNDMScheduler
    from transformers import CLIPTextModel

    with torch.random.fork_rng(devices=[]):
        _seeded(1000)
        tiny_sd_unet().save_pretrained(root / "unet")
        tiny_vae().save_pretrained(root / "vae")
        n_vocab = write_clip_tokenizer(root / "tokenizer")
        CLIPTextModel(_text_config(n_vocab)).save_pretrained(root / "text_encoder")
    PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                  skip_prk_steps=True).save_pretrained(root / "scheduler")
    (root / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    return root


def build_sdxl(root: Path) -> Path:
    """SDXL layout: adds text_encoder_2/ (with projection) and tokenizer_2/; Euler scheduler as SDXL ships."""
    from diffusers import EulerDiscreteScheduler
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    with torch.random.fork_rng(devices=[]):
        _seeded(1001)
        tiny_sdxl_unet().save_pretrained(root / "unet")
        tiny_vae().save_pretrained(root / "vae")
        n_vocab = write_clip_tokenizer(root / "tokenizer")
        write_clip_tokenizer(root / "tokenizer_2")
        CLIPTextModel(_text_config(n_vocab)).save_pretrained(root / "text_encoder")
        CLIPTextModelWithProjection(_text_config(n_vocab, projection_dim=TEXT_HIDDEN)).save_pretrained(
            root / "text_encoder_2")
    EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear").save_pretrained(
        root / "scheduler")
    (root / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline"}))
    return root


def build_dit(root: Path, legacy_class_name: bool = False) -> Path:
    """DiT layout: transformer/ vae/ scheduler/. `legacy_class_name` saves the config as the hub's
    facebook/DiT-XL-2-256 does (`Transformer2DModel`), which diffusers remaps on load."""
    from diffusers import DDIMScheduler

    with torch.random.fork_rng(devices=[]):
        _seeded(1002)
        tiny_dit().save_pretrained(root / "transformer")
        tiny_vae().save_pretrained(root / "vae")
    DDIMScheduler(beta_schedule="linear").save_pretrained(root / "scheduler")
    if legacy_class_name:
        cfg_path = root / "transformer" / "config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["_class_name"] = "Transformer2DModel"
        cfg_path.write_text(json.dumps(cfg))
    (root / "model_index.json").write_text(json.dumps({"_class_name": "DiTPipeline"}))
    return root


_BUILDERS = {
    "sd": build_sd,
    "sdxl": build_sdxl,
    "dit": build_dit,
    "dit-legacy": lambda root: build_dit(root, legacy_class_name=True),
}


def pipeline_dir(tmp_path_factory, name: str) -> Path:
    """The tiny pipeline `name` (sd, sdxl, dit, dit-legacy), built once per test session."""
    if name not in _cache:
        _cache[name] = _BUILDERS[name](tmp_path_factory.mktemp(f"tiny-{name}"))
    return _cache[name]


def images(n: int, size: int = IMAGE_SIZE, seed: int = 0, height: int | None = None):
    """n random uint8 RGB images (n, H, W, 3)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, height or size, size, 3), dtype=np.uint8)


def features(adapter, imgs, ids, t: int, names, seed: int = 0, stop_early: bool = True, **cond_kw):
    """encode → add_noise → conditioning → capture, as extraction does it."""
    x0 = adapter.encode(imgs)
    x_t = adapter.add_noise(x0, t, ids, seed)
    cond = adapter.conditioning(len(ids), **cond_kw)
    return adapter.capture(x_t, t, cond, names, stop_early=stop_early)


class FireCounter:
    """Counts calls of forward hooks on named sub-modules (to prove what ran and what did not)."""

    def __init__(self, model, names):
        self.counts = {n: 0 for n in names}
        self.handles = [model.get_submodule(n).register_forward_hook(self._hook(n)) for n in names]

    def _hook(self, name):
        def hook(*_):
            self.counts[name] += 1
        return hook

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


# --------------------------------------------------------------------------- real architecture families
# The block layout (not the widths) of the released models, so that hook-point names can be checked
# without their weights. Block types are those of the models' unet/config.json and transformer/config.json.
FAMILIES = {
    # SD 1.5 and SD 2.1: four levels, cross-attention in the first three down and last three up blocks
    "sd": {"down": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
           "up": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3},
    # SDXL base: three levels, no attention at the highest resolution
    "sdxl": {"down": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
             "up": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")},
    # DiT-XL/2: 28 transformer blocks
    "dit": {"layers": 28},
}


def family_model(kind: str):
    """A denoiser with the block layout of the released `kind` models and tiny widths (weights irrelevant)."""
    from diffusers import DiTTransformer2DModel, UNet2DConditionModel

    fam = FAMILIES[kind]
    if kind == "dit":
        return DiTTransformer2DModel(num_attention_heads=1, attention_head_dim=8, in_channels=4,
                                     out_channels=8, num_layers=fam["layers"], sample_size=4, patch_size=2)
    n = len(fam["down"])
    return UNet2DConditionModel(
        sample_size=8, block_out_channels=(8,) * n, layers_per_block=1, norm_num_groups=8,
        down_block_types=fam["down"], up_block_types=fam["up"], cross_attention_dim=8, attention_head_dim=2)
