"""Latent-diffusion backbones: Stable Diffusion 1.x / 2.x (`kind: sd`) and SDXL (`kind: sdxl`).

A model is a diffusers pipeline directory (local path or hub id) with the subfolders unet/, vae/,
text_encoder/, tokenizer/, scheduler/ and, for SDXL, text_encoder_2/ and tokenizer_2/.

`LatentDiffusionAdapter` holds what SD and DiT share: loading parts with errors that say what to do,
image → VAE latent encoding, and forward-process noising with the model's own noise schedule.
"""
from __future__ import annotations

import json
import logging
import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

from ..config import BackboneConfig, ConfigError
from .base import (
    BackboneAdapter,
    Conditioning,
    ModelUnavailableError,
    resolve_device,
    resolve_dtype,
    seeded_noise,
)
from .hub import resolve_local, unavailable

log = logging.getLogger(__name__)

# Distinct prompts whose embeddings are kept (caption mode can have one prompt per image).
PROMPT_CACHE_SIZE = 1024


def tokens_to_map(name: str, output: Any) -> torch.Tensor:
    """A hook point's output → (B, C, H, W); token sequences (B, N, C) become square maps."""
    if isinstance(output, (tuple, list)):
        output = output[0]
    if hasattr(output, "sample"):
        output = output.sample
    if output.dim() == 4:
        return output
    if output.dim() == 3:
        b, n, c = output.shape
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"hook point {name} gave {n} tokens, which is not a square grid; "
                             f"cannot reshape its (B, N, C) output to a spatial map")
        return output.transpose(1, 2).reshape(b, c, side, side)
    raise ValueError(f"hook point {name} gave a {tuple(output.shape)} output; expected (B, C, H, W) or (B, N, C)")


def unet_hook_points(unet: torch.nn.Module) -> list[str]:
    """A UNet's block-level hook points in execution order: down blocks, mid block, up blocks."""
    return ([f"down_blocks.{i}" for i in range(len(unet.down_blocks))]
            + (["mid_block"] if getattr(unet, "mid_block", None) is not None else [])
            + [f"up_blocks.{i}" for i in range(len(unet.up_blocks))])


def preprocess_images(images: np.ndarray | Sequence[np.ndarray], resolution: int) -> torch.Tensor:
    """uint8 (B, H, W, 3) (or a list of (H, W, 3) of different sizes) → float (B, 3, res, res) in [-1, 1].

    The short side is resized to `resolution` and the centre is cropped, as the SD training data was.
    """
    if isinstance(images, np.ndarray):
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must be uint8 (B, H, W, 3); got shape {images.shape}")
        groups = [images]
    else:
        groups = [np.asarray(im)[None] for im in images]
        for g in groups:
            if g.ndim != 4 or g.shape[-1] != 3:
                raise ValueError(f"each image must be uint8 (H, W, 3); got shape {g.shape[1:]}")
    out = []
    for g in groups:
        # a read-only array (a dataset's cached image) would make torch warn on every first use
        x = torch.from_numpy(np.require(g, requirements=["C", "W"])).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        h, w = x.shape[-2:]
        if (h, w) != (resolution, resolution):
            scale = resolution / min(h, w)
            nh, nw = max(resolution, round(h * scale)), max(resolution, round(w * scale))
            x = F.interpolate(x, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
            top, left = (nh - resolution) // 2, (nw - resolution) // 2
            x = x[..., top:top + resolution, left:left + resolution]
        out.append(x)
    return torch.cat(out, dim=0).clamp_(-1.0, 1.0)


class LatentDiffusionAdapter(BackboneAdapter):
    """Shared by SD and DiT: pipeline-directory loading, VAE encoding, seeded forward noising."""

    #: subfolders that must exist in a local pipeline directory
    required_parts: tuple[str, ...] = ("vae", "scheduler")

    def _init_common(self, cfg: BackboneConfig) -> None:
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.dtype = resolve_dtype(cfg.dtype, self.device)
        self.path: Path | None = resolve_local(cfg.id)
        self.src = str(self.path) if self.path is not None else cfg.id
        self._hub_kw = {"revision": cfg.revision} if cfg.revision and self.path is None else {}
        if self.path is not None:
            missing = [p for p in self.required_parts if not (self.path / p).is_dir()]
            if missing:
                self._check_kind_from_layout(missing)
                raise ModelUnavailableError(
                    f"{self.path} is not a diffusers {cfg.kind} pipeline directory: missing subfolder(s) "
                    f"{', '.join(m + '/' for m in missing)} (expected {', '.join(p + '/' for p in self.required_parts)}). "
                    f"Save the whole pipeline with `pipeline.save_pretrained(dir)` or point backbone.id at a hub id.")

    def _check_kind_from_layout(self, missing: list[str]) -> None:
        """Hook for a clearer error when the missing parts mean that backbone.kind is wrong."""

    def _load(self, what: str, fn: Callable[..., Any], **kw: Any) -> Any:
        """Load one part; a hub failure becomes ModelUnavailableError with download instructions.

        Model weights are loaded with use_safetensors=True: pickled .bin checkpoints are never unpickled.
        """
        try:
            return fn(self.src, subfolder=what, **self._hub_kw, **kw)
        except ModelUnavailableError:
            raise
        except Exception as e:  # diffusers/transformers raise OSError, HTTP and cache errors alike
            if self.path is None:
                raise unavailable(self.cfg.id, e) from e
            hint = ""
            if kw.get("use_safetensors") and not any((self.path / what).glob("*.safetensors")):
                hint = (f" There are no .safetensors weights in {self.path / what}; pickled .bin checkpoints are "
                        f"not loaded. Convert them once (load the pipeline in diffusers and `save_pretrained` it).")
            raise ModelUnavailableError(
                f"could not load {what}/ of the {self.cfg.kind} pipeline at {self.path}: "
                f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}.{hint}") from e

    def _load_denoiser(self, what: str, cls: Any, config_cls: Any | None = None) -> torch.nn.Module:
        """The denoiser, pretrained, or re-initialised from its config with cfg.init_seed (the control)."""
        if self.cfg.init == "random":
            config = self._load(what, (config_cls or cls).load_config)
            # a private RNG stream: the same seed gives the same weights whatever ran before
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.cfg.init_seed)
                model = cls.from_config(config)
            # plain nn.Module.to: diffusers' override warns on any dtype cast outside from_pretrained
            torch.nn.Module.to(model, dtype=self.dtype)
        else:
            model = self._load(what, cls.from_pretrained, torch_dtype=self.dtype, use_safetensors=True)
        return model.to(self.device).eval().requires_grad_(False)

    def _load_vae_and_scheduler(self) -> None:
        # fp32 VAE: the SDXL VAE overflows in fp16, and encoding runs once per image for all timesteps
        self.vae = self._load("vae", AutoencoderKL.from_pretrained, torch_dtype=torch.float32,
                              use_safetensors=True).to(self.device).eval()
        self.vae.requires_grad_(False)
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        # Pipelines ship sampling schedulers (PNDM, Euler, DDIM); all share the training betas. A DDPM
        # scheduler built from that config gives the variance-preserving q(x_t | x_0) the denoiser was
        # trained on (Euler's own add_noise works in sigma space and needs set_timesteps first).
        sched_cfg = self._load("scheduler", DDPMScheduler.load_config)
        self.scheduler_class = sched_cfg.get("_class_name", "DDPMScheduler")
        self.scheduler = DDPMScheduler.from_config(sched_cfg)
        self.num_train_timesteps = int(self.scheduler.config.num_train_timesteps)

    def _set_resolution(self, native_latent: int) -> None:
        self.resolution = self.cfg.resolution or native_latent * self.vae_scale_factor
        if self.resolution % self.vae_scale_factor:
            raise ConfigError(f"backbone.resolution: {self.resolution} must be a multiple of the VAE's "
                              f"downsampling factor {self.vae_scale_factor}")

    # ---------------------------------------------------------------- identity
    @property
    def backbone_id(self) -> str:
        return self.cfg.id

    def describe(self) -> dict:
        d = super().describe()
        d.update({"resolution": self.resolution, "prompt_mode": self.cfg.prompt_mode})
        return d

    # ---------------------------------------------------------------- inputs
    def encode(self, images: np.ndarray | Sequence[np.ndarray]) -> torch.Tensor:
        x = preprocess_images(images, self.resolution).to(self.device)
        with torch.no_grad():
            latents = self.vae.encode(x).latent_dist.mode()
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        return (latents - shift) * self.vae.config.scaling_factor

    def add_noise(self, x0: torch.Tensor, t: int, image_ids: Sequence[str], seed: int) -> torch.Tensor:
        if not 0 <= t < self.num_train_timesteps:
            raise ConfigError(f"extract.timesteps: {t} is outside [0, {self.num_train_timesteps - 1}] for {self.backbone_id}")
        if len(image_ids) != x0.shape[0]:
            raise ValueError(f"got {len(image_ids)} image ids for a batch of {x0.shape[0]}")
        noise = seeded_noise(x0.shape[1:], seed, image_ids, t).to(x0.device)
        ts = torch.full((x0.shape[0],), t, dtype=torch.long, device=x0.device)
        return self.scheduler.add_noise(x0.float(), noise, ts)

    def to_map(self, name: str, output) -> torch.Tensor:
        return tokens_to_map(name, output)


class StableDiffusionAdapter(LatentDiffusionAdapter):
    """SD 1.x / 2.x (text encoder's last hidden state) and SDXL (two encoders, pooled text, time ids)."""

    def __init__(self, cfg: BackboneConfig):
        if cfg.kind not in ("sd", "sdxl"):
            raise ConfigError(f"backbone.kind: StableDiffusionAdapter handles sd and sdxl, not {cfg.kind!r}")
        from transformers import (
            CLIPTextModel,
            CLIPTextModelWithProjection,
            CLIPTokenizer,
        )

        self.is_xl = cfg.kind == "sdxl"
        self.required_parts = ("unet", "vae", "text_encoder", "tokenizer", "scheduler") + (
            ("text_encoder_2", "tokenizer_2") if self.is_xl else ())
        self._init_common(cfg)
        # the unet first: for a hub id it is the call that fails fast when nothing is cached
        self.model = self.unet = self._load_denoiser("unet", UNet2DConditionModel)
        self._load_vae_and_scheduler()
        self.tokenizers = [self._load("tokenizer", CLIPTokenizer.from_pretrained)]
        self.text_encoders = [self._load("text_encoder", CLIPTextModel.from_pretrained, dtype=self.dtype,
                                         use_safetensors=True)]
        if self.is_xl:
            self.tokenizers.append(self._load("tokenizer_2", CLIPTokenizer.from_pretrained))
            self.text_encoders.append(
                self._load("text_encoder_2", CLIPTextModelWithProjection.from_pretrained, dtype=self.dtype,
                           use_safetensors=True))
        for te in self.text_encoders:
            te.to(self.device, self.dtype).eval().requires_grad_(False)
        self._check_architecture()
        self._set_resolution(int(self.unet.config.sample_size))
        self._cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor | None]] = OrderedDict()
        self._warned_class = False
        self.text_encoder_calls = 0  # distinct-prompt batches encoded; lets callers see the cache work

    def _check_kind_from_layout(self, missing: list[str]) -> None:
        if self.is_xl and set(missing) <= {"text_encoder_2", "tokenizer_2"}:
            unet_cfg = self.path / "unet" / "config.json"
            try:
                xl_unet = json.loads(unet_cfg.read_text()).get("addition_embed_type") == "text_time"
            except (OSError, ValueError):
                return
            if not xl_unet:
                raise ConfigError(f"backbone.kind: {self.cfg.id} is a Stable Diffusion 1.x/2.x pipeline (one text "
                                  f"encoder, no SDXL time conditioning); set backbone.kind: sd")

    def _check_architecture(self) -> None:
        xl_unet = self.unet.config.addition_embed_type == "text_time"
        if xl_unet and not self.is_xl:
            raise ConfigError(f"backbone.kind: {self.cfg.id} has an SDXL UNet (addition_embed_type=text_time); "
                              f"set backbone.kind: sdxl")
        if self.is_xl and not xl_unet:
            raise ConfigError(f"backbone.kind: {self.cfg.id} is not an SDXL model (its UNet takes no pooled text "
                              f"or time ids); set backbone.kind: sd")
        text_dim = sum(te.config.hidden_size for te in self.text_encoders)
        if text_dim != self.unet.config.cross_attention_dim:
            raise ModelUnavailableError(
                f"{self.cfg.id}: the text encoder(s) give {text_dim}-dim states but the UNet cross-attends to "
                f"{self.unet.config.cross_attention_dim}; the pipeline's parts do not belong together")
        if self.is_xl:
            passed = self.unet.config.addition_time_embed_dim * 6 + self.text_encoders[1].config.projection_dim
            expected = self.unet.add_embedding.linear_1.in_features
            if passed != expected:
                raise ModelUnavailableError(
                    f"{self.cfg.id}: the UNet expects an added embedding of {expected} values but 6 time ids × "
                    f"{self.unet.config.addition_time_embed_dim} + pooled text {self.text_encoders[1].config.projection_dim} "
                    f"= {passed}; check unet/config.json and text_encoder_2/config.json")

    # ---------------------------------------------------------------- identity
    def describe(self) -> dict:
        d = super().describe()
        if self.cfg.prompt_mode == "generic":
            d["generic_prompt"] = self.cfg.generic_prompt
        if self.cfg.prompt_mode == "class":
            d["class_template"] = self.cfg.class_template
        return d

    def hook_points(self) -> list[str]:
        return unet_hook_points(self.unet)

    # ---------------------------------------------------------------- conditioning
    def prompts(self, batch_size: int, class_names: Sequence[str] | None = None,
                captions: Sequence[str] | None = None) -> list[str]:
        """The prompt of each image for the configured prompt mode."""
        mode = self.cfg.prompt_mode
        if mode == "empty":
            return [""] * batch_size
        if mode == "generic":
            return [self.cfg.generic_prompt] * batch_size
        if mode == "class":
            _check_per_image(class_names, batch_size, "class names", "backbone.prompt_mode=class needs the class "
                             "name of every image; the dataset gave none (it needs a label column with class names)")
            if not self._warned_class:
                log.warning("backbone.prompt_mode=class puts each image's class name in the prompt: the features "
                            "then carry the label itself, so probe accuracy on them overstates what the model "
                            "represents; use it only as an upper-bound control")
                self._warned_class = True
            return [self.cfg.class_template.format(n) for n in class_names]
        if mode == "caption":
            _check_per_image(captions, batch_size, "captions", "backbone.prompt_mode=caption needs a caption for "
                             "every image; set data.caption_column to a dataset column holding captions")
            return [str(c) for c in captions]
        raise ConfigError(f"backbone.prompt_mode: unknown mode {mode!r}")

    def _encode_prompts(self, prompts: list[str]) -> None:
        """Encode prompts not yet cached, in one text-encoder batch."""
        hidden_parts, pooled = [], None
        with torch.no_grad():
            for i, (tok, te) in enumerate(zip(self.tokenizers, self.text_encoders)):
                max_len = min(tok.model_max_length, te.config.max_position_embeddings)
                enc = tok(prompts, padding="max_length", max_length=max_len, truncation=True, return_tensors="pt")
                ids = enc.input_ids.to(self.device)
                mask = (enc.attention_mask.to(self.device)
                        if getattr(te.config, "use_attention_mask", False) else None)
                out = te(ids, attention_mask=mask, output_hidden_states=self.is_xl)
                if self.is_xl:
                    # SDXL conditions on the penultimate layer of both encoders
                    hidden_parts.append(out.hidden_states[-2])
                    if i == len(self.text_encoders) - 1:
                        pooled = out.text_embeds
                else:
                    hidden_parts.append(out.last_hidden_state)
        self.text_encoder_calls += 1
        hidden = torch.cat(hidden_parts, dim=-1).to(self.dtype)
        for j, p in enumerate(prompts):
            self._cache[p] = (hidden[j], None if pooled is None else pooled[j].to(self.dtype))
        while len(self._cache) > PROMPT_CACHE_SIZE:
            self._cache.popitem(last=False)

    def prompt_embeddings(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, L, D) hidden states and, for SDXL, (B, P) pooled embeddings; each distinct prompt encoded once."""
        todo = [p for p in dict.fromkeys(prompts) if p not in self._cache]
        if todo:
            self._encode_prompts(todo)
        for p in dict.fromkeys(prompts):
            self._cache.move_to_end(p)
        hidden = torch.stack([self._cache[p][0] for p in prompts])
        pooled = torch.stack([self._cache[p][1] for p in prompts]) if self.is_xl else None
        return hidden, pooled

    def add_time_ids(self, batch_size: int) -> torch.Tensor:
        """SDXL micro-conditioning: (original size, crop top-left, target size); images are already
        resized and centre-cropped to the resolution, so they are (res, res), (0, 0), (res, res)."""
        r = self.resolution
        ids = torch.tensor([[r, r, 0, 0, r, r]], dtype=self.dtype, device=self.device)
        return ids.expand(batch_size, -1)

    def conditioning(self, batch_size: int, class_names: Sequence[str] | None = None,
                     captions: Sequence[str] | None = None) -> Conditioning:
        hidden, pooled = self.prompt_embeddings(self.prompts(batch_size, class_names, captions))
        kwargs: dict[str, Any] = {"encoder_hidden_states": hidden}
        if self.is_xl:
            kwargs["added_cond_kwargs"] = {"text_embeds": pooled, "time_ids": self.add_time_ids(batch_size)}
        return Conditioning(kwargs)

    def denoise_forward(self, x_t: torch.Tensor, t: int, cond: Conditioning) -> torch.Tensor:
        ts = torch.full((x_t.shape[0],), t, device=x_t.device, dtype=torch.long)
        return self.unet(x_t.to(self.device, self.dtype), ts, **cond.kwargs).sample


def _check_per_image(values: Sequence[str] | None, batch_size: int, what: str, missing: str) -> None:
    if values is None:
        raise ConfigError(missing)
    if len(values) != batch_size:
        raise ValueError(f"got {len(values)} {what} for {batch_size} images")
