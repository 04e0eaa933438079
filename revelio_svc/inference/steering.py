"""Causal steering: sample from a backbone while an SAE latent is pushed in, or taken out, at its hook point.

    x_T (seeded per seed) ─► denoiser ─► … ─► x_0 ─► pixels       (the same seeds with and without)
                              │
                   hook point map h (B, C, H, W) or tokens (B, N, C), at timesteps in [t_min, t_max]:
                     add:     h ← h + α_b · d_j                 (every position; α per batch element)
                     ablate:  h ← h − z_j(h) · d_j               (the latent's share of the reconstruction)

d_j is latent j's decoder direction in the backbone's own units: row j of W_dec through the linear part of
the SAE's denormalisation (x̂ = (W_decᵀ z + b_pre) · scale + mean, so one unit of z_j moves the features by
W_dec[j] · scale; for a whitened SAE, x̂ = (W_decᵀ z + b_pre) · W⁻¹ + mean and the move is W_dec[j] · W⁻¹).
Ablation encodes every position with the SAE and subtracts exactly the part of the reconstruction that
latent j carries, leaving the SAE's error term alone; a pooled SAE encodes the pooled vector per image and
subtracts that share at every position.

One code path for every adapter (`unet2d`, `sd`, `sdxl`, `dit`): the sample shape, conditioning, scheduler
and decoding come from the adapter (`sample_shape`, `decode_samples`); DDPM and DDIM steps come from
diffusers. DDPM's per-step noise is drawn from one generator per batch element seeded by its seed, so a
seed's trajectory differs between the variants only through the intervention.

Thread safety: each denoiser call registers its hook and runs under the adapter's capture lock (the lock
`BackboneAdapter.capture` holds), so classification requests interleave between steps instead of waiting
for the whole sampling run, and never see the steering hook.
"""
from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from ..backbones.base import split_hook_point

SAMPLERS = ("ddim", "ddpm")
MODES = ("add", "ablate")
MAX_BATCH = 64  # seeds × variants per denoiser call; more are run in chunks


@dataclass(frozen=True)
class SteeringSpec:
    """What to do to which latent, when."""

    latent: int
    mode: str = "add"  # add | ablate
    strengths: tuple[float, ...] = (1.0, 2.0, 4.0)  # α per variant (add), in the units of z_j
    t_min: int = 0
    t_max: int = 999

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.t_min > self.t_max:
            raise ValueError(f"the timestep range is empty: t_min={self.t_min} > t_max={self.t_max}")
        if self.mode == "add" and not self.strengths:
            raise ValueError("mode 'add' needs at least one strength")
        if any(not math.isfinite(float(a)) for a in self.strengths):
            raise ValueError(f"strengths must be finite numbers, got {list(self.strengths)}")

    @property
    def variants(self) -> list[str]:
        """Column names: the unsteered baseline first."""
        if self.mode == "ablate":
            return ["baseline", f"latent {self.latent} zeroed"]
        return ["baseline"] + [f"α={a:g}" for a in self.strengths]


@dataclass
class SteeringResult:
    spec: SteeringSpec
    seeds: list[int]
    images: np.ndarray  # (n_variants, n_seeds, S, S, 3) uint8; variant 0 = baseline
    variants: list[str]
    sampler: str
    steps: int
    steered_steps: int  # denoiser calls in [t_min, t_max]
    seconds: float = 0.0
    change: list[float] = field(default_factory=list)  # mean |pixel difference| to the baseline per variant

    def summary(self) -> dict[str, Any]:
        return {"latent": self.spec.latent, "mode": self.spec.mode, "strengths": list(self.spec.strengths),
                "t_range": [self.spec.t_min, self.spec.t_max], "seeds": self.seeds, "variants": self.variants,
                "sampler": self.sampler, "steps": self.steps, "steered_steps": self.steered_steps,
                "seconds": round(self.seconds, 3), "mean_abs_change": [round(c, 3) for c in self.change]}


# --------------------------------------------------------------------------- the hook
def decoder_direction(sae, latent: int) -> torch.Tensor:
    """Latent `latent`'s decoder direction in raw feature units (d_in,), see the module docstring."""
    j = int(latent)
    if not 0 <= j < sae.n_latents:
        raise ValueError(f"latent must be in [0, {sae.n_latents - 1}], got {latent}")
    with torch.no_grad():
        # the linear part of the SAE's denormalisation applied to the row: × norm_scale, or through the
        # inverse whitening matrix for normalize=whiten (where norm_scale is 1 and the scale alone is wrong)
        w = sae.W_dec[j:j + 1].float()
        return (sae.denormalize(w) - sae.denormalize(torch.zeros_like(w)))[0].detach().clone()


def _as_tokens(h: torch.Tensor) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """(B, C, H, W) or (B, N, C) → ((B, N, C) view, function mapping tokens back to the original layout)."""
    if h.dim() == 4:
        b, c, hh, ww = h.shape
        tok = h.permute(0, 2, 3, 1).reshape(b, hh * ww, c)
        return tok, lambda t: t.reshape(b, hh, ww, c).permute(0, 3, 1, 2)
    if h.dim() == 3:
        return h, lambda t: t
    raise ValueError(f"cannot steer a hook output of shape {tuple(h.shape)}; expected (B, C, H, W) or (B, N, C)")


class LatentIntervention:
    """A forward hook that adds α_b · d_j, or removes z_j · d_j, in the hook point's output."""

    def __init__(self, sae, spec: SteeringSpec, alphas: torch.Tensor, direction: torch.Tensor | None = None):
        self.sae = sae
        self.spec = spec
        self.alphas = alphas.float()  # (B,) over the whole batch; α of an element of an ablation = 1
        # `direction` replaces the latent's decoder direction in "add" mode: (d_in,) at every position (a
        # control: a random direction), or (positions, d_in), a field placing latents where an exemplar has them
        if direction is None:
            self.direction = decoder_direction(sae, spec.latent)
        else:
            d = direction.float()
            if d.dim() > 3:
                raise ValueError(f"a steering direction is (d_in,), (positions, d_in) or (H, W, d_in); got "
                                 f"{tuple(d.shape)}")
            # one vector in any layout is added everywhere; a field keeps one row per position
            self.direction = d.reshape(-1) if d.numel() == d.shape[-1] else d.reshape(-1, d.shape[-1])
        self.t: int | None = None
        self.offset = 0  # where the current chunk starts in the batch
        self.calls = 0
        self.update = False  # the hook point is PATH:update (set by the sampler)

    def active(self) -> bool:
        return self.t is not None and self.spec.t_min <= self.t <= self.spec.t_max

    def __call__(self, _module, inp, out):
        if not self.active():
            return None
        # capture mode update: the SAE reads output − input, so an ablation reads z_j there (adding α·d to
        # the output adds it to the update alike)
        base = None
        if self.update and self.spec.mode != "add":
            if not inp or not torch.is_tensor(inp[0]):
                raise ValueError("steering an update hook point needs the block's input as its first argument")
            base = inp[0]
        if isinstance(out, tuple):
            return (self.apply(out[0], base), *out[1:])
        if hasattr(out, "sample"):
            out.sample = self.apply(out.sample, base)
            return out
        return self.apply(out, base)

    @torch.no_grad()
    def apply(self, h: torch.Tensor, base: torch.Tensor | None = None) -> torch.Tensor:
        tok, back = _as_tokens(h)
        if tok.shape[-1] != self.direction.shape[-1]:
            raise ValueError(f"the hook point gives {tok.shape[-1]} channels but the SAE reads "
                             f"{self.direction.shape[-1]}: steer at the SAE's own hook point")
        if self.direction.dim() == 2 and self.direction.shape[0] != tok.shape[1]:
            raise ValueError(f"the steering field has {self.direction.shape[0]} positions but the hook point gives "
                             f"{tok.shape[1]}")
        self.calls += 1
        d = self.direction.to(tok.device, torch.float32)
        a = self.alphas.to(tok.device)[self.offset:self.offset + tok.shape[0]]
        x = tok.float()
        if self.spec.mode == "add":
            x = x + a[:, None, None] * d
        else:
            read = x if base is None else x - _as_tokens(base)[0].float()
            x = x - self._latent_value(read)[..., None] * a[:, None, None] * d
        return back(x.to(h.dtype))

    def _latent_value(self, x: torch.Tensor) -> torch.Tensor:
        """z_j per token (B, N) for a token SAE; per image, repeated over positions, for a pooled SAE."""
        j = int(self.spec.latent)
        sae = self.sae
        if sae.config.input == "pooled":
            pooled = x.amax(1) if (sae.config.pooling or "mean") == "max" else x.mean(1)
            vals, idx = sae.encode_sparse(pooled)
            z = (vals * (idx == j)).sum(-1)
            return z[:, None].expand(x.shape[0], x.shape[1])
        vals, idx = sae.encode_sparse(x.reshape(-1, x.shape[-1]))
        return (vals * (idx == j)).sum(-1).reshape(x.shape[0], x.shape[1]).float()


# --------------------------------------------------------------------------- sampling
def sample_shape(adapter) -> tuple[int, ...]:
    """The denoiser's input shape for one sample: pixels for unet2d, VAE latents for the latent models."""
    r = int(adapter.resolution)
    vae = getattr(adapter, "vae", None)
    if vae is not None:
        f = int(getattr(adapter, "vae_scale_factor", 2 ** (len(vae.config.block_out_channels) - 1)))
        return (int(vae.config.latent_channels), r // f, r // f)
    return (int(adapter.model.config.in_channels), r, r)


@torch.no_grad()
def decode_samples(adapter, x: torch.Tensor) -> np.ndarray:
    """x_0 from the sampler → uint8 (B, S, S, 3)."""
    vae = getattr(adapter, "vae", None)
    if vae is not None:
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        x = vae.decode(x.float() / vae.config.scaling_factor + shift).sample
    img = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return img.permute(0, 2, 3, 1).cpu().numpy()


def make_scheduler(adapter, sampler: str, steps: int):
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    n_train = int(adapter.scheduler.config.num_train_timesteps)
    if not 1 <= int(steps) <= n_train:
        raise ValueError(f"steps must be in [1, {n_train}], got {steps}")
    cls = DDIMScheduler if sampler == "ddim" else DDPMScheduler
    # x0 clipping to [-1, 1] is for pixels; VAE latents span a wider range (a PNDM/Euler config has no such
    # key, and DDIM/DDPM would otherwise default to clipping them)
    kw = {"clip_sample": False} if getattr(adapter, "vae", None) is not None else {}
    sched = cls.from_config(adapter.scheduler.config, **kw)
    sched.set_timesteps(int(steps))
    return sched


def _capture_lock(adapter) -> threading.Lock:
    # the same lock BackboneAdapter.capture takes: hooks on the shared model never overlap
    return adapter.__dict__.setdefault("_capture_lock", threading.Lock())


def _noise(shape: Sequence[int], seeds: Sequence[int]) -> torch.Tensor:
    out = torch.empty((len(seeds), *shape))
    for i, s in enumerate(seeds):
        out[i] = torch.randn(tuple(shape), generator=torch.Generator().manual_seed(int(s)))
    return out


@dataclass
class Trajectory:
    """A sampling run: the state before every step (to branch from) and the decoded result."""

    timesteps: list[int]
    states: list[torch.Tensor]  # states[k] = x before step k, (n_seeds, *shape)
    images: np.ndarray  # (n_seeds, S, S, 3) uint8


class _Sampler:
    """DDPM/DDIM steps of one adapter, with an optional intervention hook, under the capture lock."""

    def __init__(self, adapter, hook_point: str, sampler: str, steps: int):
        self.adapter = adapter
        self.sched = make_scheduler(adapter, sampler, steps)
        self.timesteps = [int(t) for t in self.sched.timesteps]
        self.ddpm = sampler == "ddpm"
        path, mode = split_hook_point(hook_point)
        self.module = adapter.model.get_submodule(path)
        self.update = mode == "update"
        self.lock = _capture_lock(adapter)

    def run(self, x: torch.Tensor, seeds: Sequence[int], start: int, hook: LatentIntervention | None,
            tick: Callable[[], None], record: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Steps `start`… from state x; DDPM noise of a step depends only on (seed, step): branches agree."""
        for k in range(start, len(self.timesteps)):
            t = self.timesteps[k]
            if record is not None:
                record.append(x.clone())
            x = torch.cat([self._step(x[s:s + MAX_BATCH], seeds[s:s + MAX_BATCH], k, t, hook, s)
                           for s in range(0, x.shape[0], MAX_BATCH)])
            tick()
        return x

    def _step(self, x, seeds, k, t, hook, offset):
        cond = self.adapter.conditioning(x.shape[0])
        with self.lock:
            handle = None
            if hook is not None:
                hook.t, hook.offset, hook.update = t, offset, self.update
                handle = self.module.register_forward_hook(hook)
            try:
                with torch.inference_mode():
                    eps = self.adapter.denoise_forward(self.sched.scale_model_input(x, t), t, cond).float()
            finally:
                if handle is not None:
                    handle.remove()
        if eps.shape[1] != x.shape[1]:  # learned sigma (DiT): ε is the first half
            eps = eps[:, : x.shape[1]]
        kw = {}
        if self.ddpm:
            kw["generator"] = [torch.Generator().manual_seed(int(s) * 100_003 + k + 1) for s in seeds]
        return self.sched.step(eps.to(x.device), t, x, **kw).prev_sample.float()


def baseline_key(adapter, seeds: Sequence[int], sampler: str, steps: int) -> tuple:
    return (id(adapter), tuple(int(s) for s in seeds), sampler, int(steps))


def steer(adapter, sae, hook_point: str, spec: SteeringSpec, seeds: Sequence[int], *, steps: int = 20,
          sampler: str = "ddim", progress: Callable[[int, int], None] | None = None,
          cache: dict | None = None, direction: torch.Tensor | None = None) -> SteeringResult:
    """Sample `seeds` once per variant (baseline, then each strength or the ablation), see the module doc.

    The baseline does not depend on the latent: with a `cache` dict (the caller keeps it) it is sampled once
    per (adapter, seeds, sampler, steps), and every variant branches from the baseline's state at the first
    steered timestep, so steps before the range are not repeated. `progress(done, total)` is called after
    every denoising step. `direction` (raw feature units, (d_in,), or (positions, d_in) for a field that differs
    per position) is added instead of the latent's decoder direction in "add" mode: the control of
    `inference.steering_eval`, or an exemplar's latents in place (`exemplar_field`).
    """
    t0 = time.perf_counter()
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("give at least one seed")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct, got {seeds}")
    if direction is not None and spec.mode != "add":
        raise ValueError("a direction of one's own can only be added (mode 'add'), not ablated")
    adapter.validate_hook_points([hook_point])
    run = _Sampler(adapter, hook_point, sampler, steps)
    ts = run.timesteps
    first = next((k for k, t in enumerate(ts) if spec.t_min <= t <= spec.t_max), len(ts))
    key = baseline_key(adapter, seeds, sampler, steps)
    base = cache.get(key) if cache is not None else None
    alphas = [float(a) for a in spec.strengths] if spec.mode == "add" else [1.0]
    total = (0 if base is not None else len(ts)) + (len(ts) - first)
    done = [0]

    def tick():
        done[0] += 1
        if progress is not None:
            progress(done[0], total)

    if base is None:
        states: list[torch.Tensor] = []
        x0 = _noise(sample_shape(adapter), seeds).to(adapter.device) * float(run.sched.init_noise_sigma)
        out = run.run(x0, seeds, 0, None, tick, states)
        base = Trajectory(ts, states, decode_samples(adapter, out))
        if cache is not None:
            cache[key] = base
    n = len(seeds)
    if first < len(ts):
        x = base.states[first].repeat(len(alphas), *([1] * (base.states[first].dim() - 1)))
        hook = LatentIntervention(sae, spec, torch.tensor(alphas).repeat_interleave(n), direction)
        steered = decode_samples(adapter, run.run(x, seeds * len(alphas), first, hook, tick))
    else:  # no step falls in the range: nothing is steered
        steered = np.concatenate([base.images] * len(alphas))
    images = np.concatenate([base.images[None], steered.reshape(len(alphas), n, *steered.shape[1:])])
    ref = images[0].astype(np.float32)
    change = [float(np.abs(v.astype(np.float32) - ref).mean()) for v in images]
    return SteeringResult(spec, seeds, images, spec.variants, sampler, int(steps), len(ts) - first,
                          time.perf_counter() - t0, change)
