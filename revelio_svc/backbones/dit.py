"""Class-conditional latent DiT backbone (`kind: dit`), e.g. facebook/DiT-XL-2-256.

A model is a diffusers pipeline directory or hub id with transformer/, vae/ and scheduler/. The hub
checkpoints save the transformer as `Transformer2DModel`; diffusers remaps an ada_norm_zero
`Transformer2DModel` to `DiTTransformer2DModel` when it is loaded through `Transformer2DModel`.
"""
from __future__ import annotations

import logging
import numbers
from collections.abc import Sequence

import torch
from diffusers import DiTTransformer2DModel, Transformer2DModel

from ..config import BackboneConfig, ConfigError
from .base import Conditioning, ModelUnavailableError
from .sd import LatentDiffusionAdapter

log = logging.getLogger(__name__)


class DiTAdapter(LatentDiffusionAdapter):
    """Hook points `transformer_blocks.N`; their (B, N, C) token outputs become (B, C, √N, √N) maps."""

    required_parts = ("transformer", "vae", "scheduler")

    def __init__(self, cfg: BackboneConfig):
        if cfg.kind != "dit":
            raise ConfigError(f"backbone.kind: DiTAdapter handles dit, not {cfg.kind!r}")
        if cfg.prompt_mode == "caption":
            raise ConfigError("backbone.prompt_mode=caption: DiT is conditioned on class labels, not text; "
                              "use empty (the null class) or class")
        self._init_common(cfg)
        # Transformer2DModel.from_pretrained remaps the hub's legacy class name to DiTTransformer2DModel
        self.model = self.transformer = self._load_denoiser("transformer", Transformer2DModel, Transformer2DModel)
        if not isinstance(self.transformer, DiTTransformer2DModel):
            raise ModelUnavailableError(
                f"{cfg.id}: transformer/ is a {type(self.transformer).__name__} (norm_type="
                f"{self.transformer.config.get('norm_type')!r}), not a DiT with ada_norm_zero class conditioning")
        self._load_vae_and_scheduler()
        self._set_resolution(int(self.transformer.config.sample_size))
        patch = int(self.transformer.config.patch_size)
        if (self.resolution // self.vae_scale_factor) % patch:
            raise ConfigError(f"backbone.resolution: {self.resolution} px gives "
                              f"{self.resolution // self.vae_scale_factor} latent pixels, not a multiple of the "
                              f"DiT patch size {patch}")
        # the label-embedding table has one extra row after the real classes: the classifier-free null class
        self.num_classes = int(self.transformer.config.num_embeds_ada_norm)
        self.null_class = self.num_classes
        self._warned: set[str] = set()

    def hook_points(self) -> list[str]:
        return dit_hook_points(self.transformer)

    def describe(self) -> dict:
        d = super().describe()
        d["null_class"] = self.null_class
        return d

    def _warn_once(self, key: str, msg: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(msg)

    def class_labels(self, batch_size: int, class_names: Sequence[str] | None = None) -> torch.Tensor:
        """The label id of each image: the null class, or the class id in prompt_mode=class when the
        class names are ids of the model's classes (ImageNet ids for the hub DiTs)."""
        mode = self.cfg.prompt_mode
        null = torch.full((batch_size,), self.null_class, dtype=torch.long, device=self.device)
        if mode == "empty":
            return null
        if mode == "generic":
            self._warn_once("generic", "backbone.prompt_mode=generic: DiT has no text encoder; "
                                       "using the null class, as prompt_mode=empty does")
            return null
        if mode == "class":
            if class_names is None:
                raise ConfigError("backbone.prompt_mode=class needs the class of every image; the dataset gave none")
            if len(class_names) != batch_size:
                raise ValueError(f"prompt_mode=class: got {len(class_names)} class names for {batch_size} images")
            ids = [_as_class_id(n, self.num_classes) for n in class_names]
            if any(i is None for i in ids):
                self._warn_once("not-ids", f"backbone.prompt_mode=class: the class names are not class ids of "
                                           f"this DiT (integers in [0, {self.num_classes})); using the null class")
                return null
            self._warn_once("leak", "backbone.prompt_mode=class conditions DiT on each image's label: the features "
                                    "then carry the label itself; use it only as an upper-bound control")
            return torch.tensor(ids, dtype=torch.long, device=self.device)
        raise ConfigError(f"backbone.prompt_mode={mode!r} is not supported by DiT; use empty or class")

    def conditioning(self, batch_size: int, class_names: Sequence[str] | None = None,
                     captions: Sequence[str] | None = None) -> Conditioning:
        return Conditioning({"class_labels": self.class_labels(batch_size, class_names)})

    def denoise_forward(self, x_t: torch.Tensor, t: int, cond: Conditioning) -> torch.Tensor:
        ts = torch.full((x_t.shape[0],), t, device=x_t.device, dtype=torch.long)
        # with learned sigma the output has 2 × in channels (ε and the variance); both are returned as is
        return self.transformer(x_t.to(self.device, self.dtype), timestep=ts, **cond.kwargs).sample


def dit_hook_points(transformer: torch.nn.Module) -> list[str]:
    """A DiT's hook points in execution order: one per transformer block."""
    return [f"transformer_blocks.{i}" for i in range(len(transformer.transformer_blocks))]


def _as_class_id(name, num_classes: int) -> int | None:
    if isinstance(name, bool):
        return None
    if isinstance(name, numbers.Integral):
        value = int(name)
    elif isinstance(name, str) and name.strip().isdigit():
        value = int(name.strip())
    else:
        return None
    return value if 0 <= value < num_classes else None
