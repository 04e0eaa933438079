"""Pixel-space DDPM backbone: diffusers `UNet2DModel` + `DDPMScheduler` (the embedded default).

A local folder whose layout `unet2d_native` supports (the shipped backbone's) loads without importing
diffusers: the model is built on the meta device and given the safetensors' tensors, and the noise schedule
is computed from scheduler_config.json. diffusers is imported only when something needs it (another layout,
a hub id, random initialisation, `adapter.scheduler` for sampling).
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from ..config import BackboneConfig, PretrainConfig
from .base import (
    BackboneAdapter,
    Conditioning,
    resolve_device,
    resolve_dtype,
    seeded_noise,
)
from .hub import resolve_local, unavailable

if TYPE_CHECKING:
    from diffusers import DDPMScheduler, UNet2DModel

SCHEDULER_CONFIG = "scheduler_config.json"


def build_unet(cfg: PretrainConfig, sample_size: int) -> UNet2DModel:
    """The default backbone's architecture, built from the pretrain config."""
    from diffusers import UNet2DModel

    n = len(cfg.block_out_channels)
    return UNet2DModel(
        sample_size=sample_size,
        in_channels=3,
        out_channels=3,
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        norm_num_groups=cfg.norm_num_groups,
        down_block_types=("DownBlock2D",) * n,
        up_block_types=("UpBlock2D",) * n,
        add_attention=cfg.attention_mid_block,
    )


def default_scheduler() -> DDPMScheduler:
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")


def alphas_cumprod(sched: dict) -> torch.Tensor | None:
    """ᾱ_t of a DDPM/DDIM scheduler config, computed as diffusers does (float32); None for a schedule this
    does not cover (diffusers then builds the scheduler)."""
    if sched.get("trained_betas") is not None or sched.get("rescale_betas_zero_snr"):
        return None
    n = int(sched.get("num_train_timesteps", 1000))
    b0, b1 = float(sched.get("beta_start", 0.0001)), float(sched.get("beta_end", 0.02))
    how = sched.get("beta_schedule", "linear")
    if how == "linear":
        betas = torch.linspace(b0, b1, n, dtype=torch.float32)
    elif how == "scaled_linear":
        betas = torch.linspace(b0**0.5, b1**0.5, n, dtype=torch.float32) ** 2
    else:
        return None
    return torch.cumprod(1.0 - betas, dim=0)


def _native_parts(path: Path | None, cfg: BackboneConfig):
    """(model, scheduler config) read without diffusers, or None when the folder needs diffusers."""
    if path is None or cfg.init != "pretrained":
        return None
    sched: dict = {"num_train_timesteps": 1000, "beta_schedule": "linear"}  # default_scheduler()'s
    sfile = path / SCHEDULER_CONFIG
    if sfile.is_file():
        try:
            sched = json.loads(sfile.read_text())
        except (OSError, ValueError):
            return None
        if sched.get("_class_name") not in ("DDPMScheduler", "DDIMScheduler"):
            return None
    if alphas_cumprod(sched) is None:
        return None
    from .unet2d_native import load_native_unet

    model = load_native_unet(path)
    return None if model is None else (model, sched)


class UNet2DAdapter(BackboneAdapter):
    def __init__(self, cfg: BackboneConfig):
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.dtype = resolve_dtype(cfg.dtype, self.device)
        path = resolve_local(cfg.id)
        self._src = str(path) if path is not None else cfg.id
        self._scheduler = None
        native = _native_parts(path, cfg)
        if native is not None:
            model, self._sched_config = native
            self.model = model.to(self.device, self.dtype).eval()
            self.resolution = cfg.resolution or int(self.model.config.sample_size)
            self._alphas = alphas_cumprod(self._sched_config)
            return
        self._load_with_diffusers(cfg, path)

    def _load_with_diffusers(self, cfg: BackboneConfig, path: Path | None) -> None:
        from diffusers import DDPMScheduler, UNet2DModel
        from diffusers.utils import logging as diffusers_logging

        src = self._src
        kw = {"revision": cfg.revision} if cfg.revision and path is None else {}
        diffusers_logging.set_verbosity_error()  # accelerate/dtype notices are noise for our use
        try:
            model = UNet2DModel.from_pretrained(src, torch_dtype=torch.float32, **kw)
        except Exception as e:  # diffusers raises OSError/EnvironmentError/HTTP errors
            if path is not None:
                raise
            try:
                model = UNet2DModel.from_pretrained(src, subfolder="unet", torch_dtype=torch.float32, **kw)
            except Exception:
                raise unavailable(cfg.id, e) from e
        if cfg.init == "random":
            torch.manual_seed(cfg.init_seed)
            model = UNet2DModel.from_config(model.config)
        self.model = model.to(self.device, self.dtype).eval()
        try:
            self._scheduler = DDPMScheduler.from_pretrained(src, **kw) if path is not None and (
                path / SCHEDULER_CONFIG).is_file() else default_scheduler()
        except Exception:
            self._scheduler = default_scheduler()
        self.resolution = cfg.resolution or int(self.model.config.sample_size)
        self._alphas = self.scheduler.alphas_cumprod.to(torch.float32)

    @property
    def scheduler(self):
        """The diffusers scheduler (built on first use when the model was loaded without diffusers)."""
        if self._scheduler is None:
            from diffusers import DDPMScheduler

            self._scheduler = DDPMScheduler.from_config(self._sched_config)
        return self._scheduler

    @property
    def backbone_id(self) -> str:
        return self.cfg.id

    def hook_points(self) -> list[str]:
        n_down = len(self.model.down_blocks)
        n_up = len(self.model.up_blocks)
        return ([f"down_blocks.{i}" for i in range(n_down)] + ["mid_block"]
                + [f"up_blocks.{i}" for i in range(n_up)])

    def encode(self, images: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        if x.shape[-1] != self.resolution or x.shape[-2] != self.resolution:
            x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear", antialias=True,
                              align_corners=False)
        return x.to(self.device)

    def add_noise(self, x0: torch.Tensor, t: int, image_ids: Sequence[str], seed: int) -> torch.Tensor:
        noise = seeded_noise(x0.shape[1:], seed, image_ids, t).to(x0.device)
        a = self._alphas[t]
        return (a.sqrt() * x0.float() + (1 - a).sqrt() * noise)

    def conditioning(self, batch_size: int, class_names=None, captions=None) -> Conditioning:
        return Conditioning({})  # unconditional

    def denoise_forward(self, x_t: torch.Tensor, t: int, cond: Conditioning) -> torch.Tensor:
        ts = torch.full((x_t.shape[0],), t, device=x_t.device, dtype=torch.long)
        return self.model(x_t.to(self.dtype), ts, **cond.kwargs).sample
