"""Backbones on the meta device: every model part built from its configuration, without weights.

`revelio plan` needs shapes, parameter counts and peak-memory estimates, not numbers: building SD 1.5 with its
weights took 14.8 GB of RAM and a long forward on a laptop. `load_meta_backbone(cfg)` builds the same adapter
(the real encode, conditioning and capture code) from the parts' configuration files only: parameters on
the meta device (their sizes, no memory), small buffers real, tokenizers and schedulers as usual. The adapter's
`device` is `meta`, so everything it computes has shapes and no data; `plan_device` keeps the device the
configuration resolves to (what the estimates are for).

Only latent-diffusion backbones (sd, sdxl, dit, and the `arch:` ids) are built this way; the pixel-space
`unet2d` is small and loads as usual.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..config import BackboneConfig
from .arch import _meta_module, meta_part
from .base import BackboneAdapter


class _MetaParts:
    """Mixed in before an adapter class: its parts come from configurations, with parameters on meta."""

    cfg: BackboneConfig

    def _init_common(self, cfg: BackboneConfig) -> None:
        super()._init_common(cfg)  # type: ignore[misc]
        self.plan_device = self.device
        self.device = torch.device("meta")

    def _meta_from(self, what: str, cls: Any) -> nn.Module:
        if hasattr(self, "arch"):  # typed-in configurations (backbones/arch.py)
            return meta_part(self.arch.part(what), cls)
        if hasattr(cls, "load_config"):  # a diffusers model: config.json of the subfolder
            conf = super()._load(what, cls.load_config)  # type: ignore[misc]
            if cls.__name__ == "Transformer2DModel" and conf.get("norm_type") == "ada_norm_zero":
                from diffusers import DiTTransformer2DModel  # the hub's legacy name, remapped as from_pretrained does

                cls = DiTTransformer2DModel
            return _meta_module(lambda: cls.from_config(conf))
        config = super()._load(what, cls.config_class.from_pretrained)  # type: ignore[misc]  # transformers
        return _meta_module(lambda: cls(config))

    def _load(self, what: str, fn: Any, **kw: Any) -> Any:
        if getattr(fn, "__name__", "") != "from_pretrained" or not hasattr(fn, "__self__") or \
                not issubclass(fn.__self__, nn.Module):
            return super()._load(what, fn, **kw)  # type: ignore[misc]  # tokenizers, scheduler configs
        return _on_meta(self._meta_from(what, fn.__self__), kw.get("torch_dtype") or kw.get("dtype") or torch.float32)

    def _load_denoiser(self, what: str, cls: Any, config_cls: Any | None = None) -> nn.Module:
        return _on_meta(self._meta_from(what, cls), self.dtype)  # type: ignore[attr-defined]


def _on_meta(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    # buffers (position tables, ids) too: every input of a forward must be on one device
    nn.Module.to(model, device="meta", dtype=dtype)
    return model.eval().requires_grad_(False)


def meta_supported(cfg: BackboneConfig) -> bool:
    return cfg.id.startswith("arch:") or cfg.kind in ("sd", "sdxl", "dit")


def load_meta_backbone(cfg: BackboneConfig) -> BackboneAdapter:
    """The adapter of `cfg` with its parts on the meta device (see the module doc); `unet2d` loads as usual."""
    if not meta_supported(cfg):
        from . import load_backbone

        return load_backbone(cfg)
    if cfg.id.startswith("arch:"):
        from .arch import check_arch_config

        spec = check_arch_config(cfg)
        if spec.kind in ("sd", "sdxl"):
            from .sd import StableDiffusionAdapter

            from .arch import _ArchParts

            class MetaArchSD(_MetaParts, _ArchParts, StableDiffusionAdapter):
                arch = spec

            return MetaArchSD(cfg)
        from .arch import _ArchParts
        from .dit import DiTAdapter

        class MetaArchDiT(_MetaParts, _ArchParts, DiTAdapter):
            arch = spec

        return MetaArchDiT(cfg)
    if cfg.kind in ("sd", "sdxl"):
        from .sd import StableDiffusionAdapter

        class MetaSD(_MetaParts, StableDiffusionAdapter):
            pass

        return MetaSD(cfg)
    from .dit import DiTAdapter

    class MetaDiT(_MetaParts, DiTAdapter):
        pass

    return MetaDiT(cfg)
