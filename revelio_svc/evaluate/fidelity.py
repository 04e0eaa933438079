"""Fidelity inside the model: what the backbone loses when an SAE's reconstruction replaces a hook point.

The SAE is *spliced* into the backbone with a forward hook on its hook point: the module's output h is
replaced by the SAE's reconstruction and the rest of the network runs on that. A token SAE encodes and
decodes every spatial position in its own input space (normalisation, whitening) and maps back to the
backbone's units (`SparseAutoencoder.forward` does both); a pooled SAE reconstructs the pooled vector x and
every position is shifted by its error, h ← h + (x̂ − x), so the spliced map pools (mean or max) to x̂
exactly.

    denoising loss L = E ‖f(x_t, t) − target‖²       (target from the scheduler: ε, v or x₀)
    loss recovered   = (L_ablated − L_spliced) / (L_ablated − L_clean)

with two floors for L_ablated: *zero-ablation* (h ← 0) and *mean-ablation* (h ← the mean map of the hook
point over training images at the same timestep). 1 means the SAE costs the model nothing, 0 means the
model is as lost as if the hook point carried no information about the image.

Sampling: DDIM from the same seeds with and without the SAE spliced at every step; the mean absolute
pixel difference is reported beside the same difference between clean samples of different seeds (what
"another image" costs).
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..backbones.base import seeded_noise
from ..sae.base import SparseAutoencoder

MODES = ("clean", "spliced", "zero", "mean")


def loss_recovered(l_clean: float, l_spliced: float, l_ablated: float) -> float:
    """(L_ablated − L_spliced) / (L_ablated − L_clean): 1 = no loss from splicing, 0 = as bad as ablation.

    NaN when the ablation does not hurt (L_ablated ≤ L_clean): there is nothing to recover.
    """
    gap = float(l_ablated) - float(l_clean)
    if not np.isfinite(gap) or gap <= 0:
        return float("nan")
    return (float(l_ablated) - float(l_spliced)) / gap


def _replace_output(out, fn: Callable[[torch.Tensor], torch.Tensor]):
    """Apply `fn` to a module output's main tensor (a tuple's first item, `.sample`, or the tensor)."""
    if isinstance(out, tuple):
        return (fn(out[0]), *out[1:])
    if hasattr(out, "sample"):
        out.sample = fn(out.sample)
        return out
    return fn(out)


@torch.no_grad()
def splice(sae: SparseAutoencoder, h: torch.Tensor) -> torch.Tensor:
    """h (B, C, H, W) or (B, N, C) with the SAE's reconstruction in place (see the module docstring)."""
    if h.dim() == 4:
        x = h.permute(0, 2, 3, 1)  # (B, H, W, C): one vector per position
    elif h.dim() == 3:
        x = h
    else:
        raise ValueError(f"cannot splice into a hook output of shape {tuple(h.shape)}; expected (B, C, H, W) "
                         "or (B, N, C)")
    if x.shape[-1] != sae.d_in:
        raise ValueError(f"the hook point gives {x.shape[-1]} channels but the SAE reads {sae.d_in}: splice it "
                         "at its own hook point")
    xf = x.float()
    if sae.config.input == "tokens":
        y = sae(xf.reshape(-1, sae.d_in)).reshape(xf.shape)
    else:
        axes = tuple(range(1, xf.dim() - 1))
        pooled = xf.amax(axes) if (sae.config.pooling or "mean") == "max" else xf.mean(axes)
        shift = sae(pooled) - pooled
        y = xf + shift.reshape(shift.shape[0], *([1] * len(axes)), shift.shape[-1])
    y = y.to(h.dtype)
    return y.permute(0, 3, 1, 2) if h.dim() == 4 else y


class SpliceHook:
    """A forward hook replacing the hook point's output: `mode` spliced | zero | mean | clean (no change).

    `t` and `offset` follow the sampler's protocol (inference.steering): the current timestep and where the
    current chunk starts in the batch; `mean_maps[t]` is the mean-ablation map (C, H, W) at timestep t.
    """

    def __init__(self, sae: SparseAutoencoder | None, mode: str = "spliced",
                 mean_maps: Mapping[int, torch.Tensor] | None = None):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if mode == "spliced" and sae is None:
            raise ValueError("splicing needs an SAE")
        self.sae, self.mode, self.mean_maps = sae, mode, dict(mean_maps or {})
        self.t: int | None = None
        self.offset = 0
        self.calls = 0

    def _apply(self, h: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.mode == "spliced":
            return splice(self.sae, h)
        if self.mode == "zero":
            return torch.zeros_like(h)
        if self.mode == "mean":
            if self.t not in self.mean_maps:
                raise KeyError(f"no mean-ablation map for timestep {self.t}")
            return self.mean_maps[self.t].to(h.device, h.dtype).expand_as(h).clone()
        return h

    def __call__(self, _module, _inp, out):
        if self.mode == "clean":
            return None
        return _replace_output(out, self._apply)


def _target(adapter, x0: torch.Tensor, noise: torch.Tensor, t: int) -> torch.Tensor:
    """What the denoiser is trained to predict at t: ε, v or x₀ (scheduler.config.prediction_type)."""
    kind = getattr(adapter.scheduler.config, "prediction_type", "epsilon")
    if kind == "epsilon":
        return noise
    if kind == "sample":
        return x0
    if kind == "v_prediction":
        ts = torch.full((x0.shape[0],), int(t), dtype=torch.long)
        return adapter.scheduler.get_velocity(x0.float().cpu(), noise.float().cpu(), ts).to(x0.device)
    raise ValueError(f"unknown prediction_type {kind!r}")


def _forward(adapter, module: torch.nn.Module, hook: SpliceHook | None, x_t: torch.Tensor, t: int) -> torch.Tensor:
    """One denoiser call with `hook` on `module`, under the adapter's capture lock."""
    # the lock BackboneAdapter.capture takes: hooks on the shared model never overlap
    lock = adapter.__dict__.setdefault("_capture_lock", threading.Lock())
    with lock:
        handle = module.register_forward_hook(hook) if hook is not None else None
        try:
            with torch.inference_mode():
                out = adapter.denoise_forward(x_t, t, adapter.conditioning(x_t.shape[0])).float()
        finally:
            if handle is not None:
                handle.remove()
    if out.shape[1] != x_t.shape[1]:  # learned sigma (DiT): the prediction is the first half
        out = out[:, :x_t.shape[1]]
    return out


@torch.no_grad()
def mean_maps(adapter, hook_point: str, images: np.ndarray, ids: Sequence[str], timesteps: Sequence[int],
              noise_seed: int, batch_size: int = 64) -> dict[int, torch.Tensor]:
    """Mean map (C, H, W) of `hook_point` over `images` at each timestep: the mean-ablation floor."""
    out: dict[int, torch.Tensor] = {}
    for t in timesteps:
        total, n = None, 0
        for s in range(0, len(images), batch_size):
            x0 = adapter.encode(images[s:s + batch_size])
            b_ids = list(ids[s:s + batch_size])
            m = adapter.capture(adapter.add_noise(x0, int(t), b_ids, noise_seed), int(t),
                                adapter.conditioning(len(b_ids)), [hook_point])[hook_point].float()
            total = m.sum(0) if total is None else total + m.sum(0)
            n += m.shape[0]
        out[int(t)] = (total / max(n, 1)).cpu()
    return out


@dataclass(frozen=True)
class FidelityResult:
    """Denoising losses per (timestep, mode) and the loss recovered against each floor."""

    losses: Mapping[int, Mapping[str, float]]  # t → mode → mean squared error
    n_images: int

    def recovered(self, t: int, floor: str) -> float:
        L = self.losses[t]
        return loss_recovered(L["clean"], L["spliced"], L[floor])

    def metrics(self, sae_timestep: int) -> dict[str, float]:
        out: dict[str, float] = {}
        for t, L in self.losses.items():
            for mode, v in L.items():
                out[f"loss.{mode}.t{t}"] = v
            for floor in ("zero", "mean"):
                out[f"loss_recovered.{floor}.t{t}"] = self.recovered(t, floor)
        if sae_timestep in self.losses:
            out["loss_recovered.zero"] = self.recovered(sae_timestep, "zero")
            out["loss_recovered.mean"] = self.recovered(sae_timestep, "mean")
        return {k: float(v) for k, v in out.items() if np.isfinite(v)}


@torch.no_grad()
def denoising_losses(adapter, sae: SparseAutoencoder, hook_point: str, images: np.ndarray, ids: Sequence[str],
                     timesteps: Sequence[int], means: Mapping[int, torch.Tensor], noise_seed: int,
                     batch_size: int = 64, modes: Sequence[str] = MODES) -> FidelityResult:
    """Mean squared denoising error on `images` at each timestep, clean and with each intervention."""
    module = adapter.model.get_submodule(hook_point)
    sums = {int(t): {m: 0.0 for m in modes} for t in timesteps}
    n = 0
    for s in range(0, len(images), batch_size):
        x0 = adapter.encode(images[s:s + batch_size])
        b_ids = list(ids[s:s + batch_size])
        for t in timesteps:
            t = int(t)
            noise = seeded_noise(x0.shape[1:], noise_seed, b_ids, t).to(x0.device)
            x_t = adapter.add_noise(x0, t, b_ids, noise_seed)
            target = _target(adapter, x0, noise, t).float()
            for m in modes:
                hook = None if m == "clean" else SpliceHook(sae, m, means)
                if hook is not None:
                    hook.t = t
                pred = _forward(adapter, module, hook, x_t, t)
                sums[t][m] += float(((pred - target) ** 2).mean(dim=tuple(range(1, pred.dim()))).sum())
        n += x0.shape[0]
    return FidelityResult({t: {m: v / max(n, 1) for m, v in L.items()} for t, L in sums.items()}, n)


@dataclass(frozen=True)
class SamplingResult:
    clean: np.ndarray  # (n, S, S, 3) uint8
    spliced: np.ndarray
    seeds: tuple[int, ...]
    steps: int

    def metrics(self) -> dict[str, float]:
        a, b = self.clean.astype(np.float32), self.spliced.astype(np.float32)
        out = {"sampling.pixel_mae": float(np.abs(a - b).mean()),
               "sampling.pixel_rmse": float(np.sqrt(((a - b) ** 2).mean()))}
        if len(a) > 1:  # the scale of "a different image": clean samples of neighbouring seeds
            out["sampling.pixel_mae_between_seeds"] = float(np.abs(a - np.roll(a, 1, axis=0)).mean())
        return out


@torch.no_grad()
def sample_with_splice(adapter, sae: SparseAutoencoder, hook_point: str, seeds: Sequence[int],
                       steps: int = 20) -> SamplingResult:
    """DDIM samples of `seeds`, clean and with the SAE spliced at its hook point at every step."""
    from ..inference.steering import _noise, _Sampler, decode_samples, sample_shape

    seeds = [int(s) for s in seeds]
    run = _Sampler(adapter, hook_point, "ddim", steps)
    x = _noise(sample_shape(adapter), seeds).to(adapter.device) * float(run.sched.init_noise_sigma)
    clean = decode_samples(adapter, run.run(x.clone(), seeds, 0, None, lambda: None))
    spliced = decode_samples(adapter, run.run(x.clone(), seeds, 0, SpliceHook(sae, "spliced"), lambda: None))
    return SamplingResult(clean, spliced, tuple(seeds), int(steps))
