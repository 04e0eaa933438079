"""Backbone adapters: load a diffusion model, name its hook points, capture activations."""
from __future__ import annotations

from ..config import BackboneConfig
from .base import (
    BackboneAdapter,
    Conditioning,
    ModelUnavailableError,
    backbone_describe,
    noise_seed,
    seeded_noise,
)


def load_backbone(cfg: BackboneConfig) -> BackboneAdapter:
    # one adapter module per kind, imported on demand: SD/SDXL/DiT pull in transformers (seconds)
    if cfg.id.startswith("arch:"):  # full-size architecture, random weights (backbones/arch.py)
        from .arch import load_arch_backbone
        return load_arch_backbone(cfg)
    if cfg.kind == "unet2d":
        from .unet2d import UNet2DAdapter
        return UNet2DAdapter(cfg)
    if cfg.kind in ("sd", "sdxl"):
        from .sd import StableDiffusionAdapter  # noqa: F401
        return StableDiffusionAdapter(cfg)
    if cfg.kind == "dit":
        from .dit import DiTAdapter
        return DiTAdapter(cfg)
    raise ValueError(f"unknown backbone kind {cfg.kind!r}")


__all__ = ["BackboneAdapter", "backbone_describe", "Conditioning", "ModelUnavailableError", "load_backbone", "noise_seed", "seeded_noise"]
