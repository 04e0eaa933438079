"""The backbone adapter interface: everything extraction needs from a diffusion model.

An adapter encodes images into the model's input space (pixels or VAE latents), noises them to a
timestep with a per-(image, t) seeded generator, builds conditioning for a prompt mode, names its
hook points, and runs a forward that captures the requested hook points and stops after the
deepest one.
"""
from __future__ import annotations

import hashlib
import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..config import BackboneConfig, ConfigError


class ModelUnavailableError(RuntimeError):
    """A model id could not be loaded (no network, not cached, bad path); the message says what to do."""


class _StopForward(Exception):
    """Raised from the deepest hook so the rest of the network never runs."""


@dataclass
class Conditioning:
    """Keyword arguments for the denoiser's forward beyond (sample, timestep)."""

    kwargs: dict


def noise_seed(base: int, image_id: str, t: int) -> int:
    """Seed of the noise for one (image, timestep): independent of batch size and order."""
    h = hashlib.sha256(f"{base}|{image_id}|{t}".encode()).digest()
    return int.from_bytes(h[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def seeded_noise(shape: Sequence[int], base: int, image_ids: Sequence[str], t: int) -> torch.Tensor:
    out = torch.empty((len(image_ids), *shape), dtype=torch.float32)
    g = torch.Generator()
    for j, iid in enumerate(image_ids):
        g.manual_seed(noise_seed(base, iid, t))
        out[j] = torch.randn(tuple(shape), generator=g)
    return out


class BackboneAdapter(ABC):
    """Base class; subclasses set `self.model` (the denoiser) and `self.scheduler`."""

    cfg: BackboneConfig
    model: nn.Module
    device: torch.device
    dtype: torch.dtype

    # ---------------------------------------------------------------- identity
    @property
    @abstractmethod
    def backbone_id(self) -> str: ...

    def describe(self) -> dict:
        """What identifies the weights; hashed into feature-store config hashes."""
        return backbone_describe(self.cfg)

    # ---------------------------------------------------------------- hook points
    @abstractmethod
    def hook_points(self) -> list[str]:
        """Names of the modules whose outputs can be captured, in execution order."""

    def validate_hook_points(self, names: Sequence[str]) -> None:
        known = self.hook_points()
        for n in names:
            path, mode = split_hook_point(n)
            if mode not in CAPTURE_MODES:
                raise ConfigError(f"extract.hook_points: {n!r} asks for capture mode {mode!r}; a hook point is "
                                  f"PATH or PATH:MODE with MODE one of {', '.join(CAPTURE_MODES)}")
            if path not in known and not self._is_submodule_path(path):
                raise ConfigError(f"extract.hook_points: unknown hook point {path!r} for {self.backbone_id}; "
                                  f"this backbone has: {', '.join(known)} (and their sub-modules by path)")

    def _is_submodule_path(self, name: str) -> bool:
        # attention sub-modules etc. by path, e.g. up_blocks.1.attentions.0
        if "." not in name or name in self.hook_points():
            return False
        try:
            self.model.get_submodule(name)
        except AttributeError:
            return False
        return any(name.startswith(h + ".") for h in self.hook_points())

    # ---------------------------------------------------------------- inputs
    @abstractmethod
    def encode(self, images: np.ndarray) -> torch.Tensor:
        """uint8 (B, H, W, 3) → clean model input x0 (B, C, h, w) on the device."""

    @abstractmethod
    def add_noise(self, x0: torch.Tensor, t: int, image_ids: Sequence[str], seed: int) -> torch.Tensor:
        """x_t from x0 with noise seeded per (image, t)."""

    @abstractmethod
    def conditioning(self, batch_size: int, class_names: Sequence[str] | None = None,
                     captions: Sequence[str] | None = None) -> Conditioning:
        """Conditioning for the configured prompt mode."""

    @abstractmethod
    def denoise_forward(self, x_t: torch.Tensor, t: int, cond: Conditioning) -> torch.Tensor:
        """One call of the denoiser."""

    def to_map(self, name: str, output) -> torch.Tensor:
        """A hook point's raw output → spatial map (B, C, H, W)."""
        if isinstance(output, (tuple, list)):
            output = output[0]
        if hasattr(output, "sample"):
            output = output.sample
        if output.dim() != 4:
            raise ValueError(f"hook point {name} gave a {tuple(output.shape)} output; expected (B, C, H, W)")
        return output

    # ---------------------------------------------------------------- capture
    def capture(self, x_t: torch.Tensor, t: int, cond: Conditioning, names: Sequence[str],
                stop_early: bool = True) -> dict[str, torch.Tensor]:
        """Forward once and return each requested hook point's map (B, C, H, W).

        With `stop_early`, the forward is aborted right after the last requested hook point fires.
        """
        wanted = list(dict.fromkeys(names))
        maps: dict[str, torch.Tensor] = {}
        handles = []
        # hooks live on the shared model: two captures at once would see each other's hooks
        lock = self.__dict__.setdefault("_capture_lock", threading.Lock())
        with lock:
            return self._capture_locked(x_t, t, cond, wanted, maps, handles, stop_early)

    def _capture_locked(self, x_t, t, cond, wanted, maps, handles, stop_early) -> dict[str, torch.Tensor]:

        def make_hook(n: str):
            update = split_hook_point(n)[1] == "update"

            def hook(_module, args, kwargs, out):
                out_map = self.to_map(n, out)
                if update:  # what the block adds to its input (a residual block's own contribution)
                    inp = args[0] if args else kwargs.get("hidden_states", kwargs.get("sample"))
                    in_map = self.to_map(n, inp) if inp is not None else None
                    if in_map is None or in_map.shape != out_map.shape:
                        raise ValueError(f"hook point {n}: capture mode update needs the module's input and output "
                                         f"to have one shape; got {None if in_map is None else tuple(in_map.shape)} "
                                         f"and {tuple(out_map.shape)}")
                    out_map = out_map - in_map
                maps[n] = out_map
                if stop_early and len(maps) == len(wanted):
                    raise _StopForward
            return hook

        for n in wanted:
            module = self.model.get_submodule(split_hook_point(n)[0])
            handles.append(module.register_forward_hook(make_hook(n), with_kwargs=True))
        try:
            with torch.inference_mode():
                self.denoise_forward(x_t, t, cond)
        except _StopForward:
            pass
        finally:
            for h in handles:
                h.remove()
        missing = [n for n in wanted if n not in maps]
        if missing:
            raise RuntimeError(f"hook points {missing} never fired during the forward of {self.backbone_id}")
        return maps


# How a hook point's map is read: `PATH` is the module's output, `PATH:update` its output minus its input
# (what a residual block such as an attention block adds; the published SDXL-Turbo SAEs read that).
CAPTURE_MODES = ("output", "update")


def split_hook_point(name: str) -> tuple[str, str]:
    """`down_blocks.2.attentions.1:update` → (module path, capture mode); a bare path is mode `output`."""
    path, sep, mode = name.partition(":")
    return path, (mode if sep else "output")


def backbone_describe(cfg: BackboneConfig) -> dict:
    return {"kind": cfg.kind, "id": cfg.id, "revision": cfg.revision, "init": cfg.init,
            "init_seed": cfg.init_seed if cfg.init == "random" else None}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("backbone.device: 'cuda' was requested but no CUDA device is available; use auto or cpu")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]
