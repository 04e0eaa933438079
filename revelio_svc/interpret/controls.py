"""The controls an SAE's latents are judged against: the same encoder, without what training learned.

A trained SAE turns features into image-level activations through a chain of choices — input
normalisation (and its statistics), the centre `b_pre`, TopK or BatchTopK selection with its k, ReLU,
and pooling of token latents over positions. Any of those alone can make units look concept-aligned
(wide non-linear pooling does, on these features), so a fair control keeps every one of them and
replaces only the learned directions:

- `matched_random`: the SAE's own class and config, its normalisation buffers and centre, with unit
  random directions as encoder and decoder rows and a zero encoder bias. BatchTopK keeps k active
  latents per vector on average by calibrating its threshold on given vectors (a random dictionary has
  no training run to estimate one).
- `sae_init`: what training starts from (same seed, same random rows, `b_pre` the geometric median of
  the normalised sample), so "trained − init" is what training added.

Image activations of a control come from `image_latents`, the function the SAE itself is read with:
there is one code path, so the control cannot drift from the SAE's encode and pooling.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..sae.base import SparseAutoencoder, geometric_median
from ..sae.io import build_sae
from ..sae.latents import image_latents

CONTROLS = ("random", "sae_init")


def _vectors(feats) -> torch.Tensor:
    x = feats if torch.is_tensor(feats) else torch.from_numpy(np.ascontiguousarray(feats))
    return x.float().reshape(-1, x.shape[-1])


@torch.no_grad()
def _copy_input_side(dst: SparseAutoencoder, src: SparseAutoencoder) -> None:
    """Normalisation statistics, centre and any variant/option buffers the encoder reads."""
    dst_state = dst.state_dict()
    for name, value in src.state_dict().items():
        if name not in ("W_enc", "W_dec", "b_enc") and name in dst_state:
            dst_state[name].copy_(value)


@torch.no_grad()
def calibrate_threshold(sae: SparseAutoencoder, vectors) -> float:
    """BatchTopK threshold giving k active latents per vector on average over `vectors` (raw features):
    the (N·k)-th largest pre-activation, as BatchTopK's selection over that batch would keep."""
    x = _vectors(vectors)
    pre = sae.pre_activations(sae.normalize(x.to(sae.W_enc.dtype)))
    kk = min(sae.k * pre.shape[0], pre.numel())
    thr = float(pre.reshape(-1).topk(kk).values[-1])
    return max(thr, 0.0) if sae.config.relu else thr


@torch.no_grad()
def matched_random(sae: SparseAutoencoder, seed: int, calibration=None) -> SparseAutoencoder:
    """A random dictionary encoded exactly like `sae` (see the module docstring).

    `calibration`: raw feature vectors (..., d_in) for a BatchTopK SAE's threshold; required for BatchTopK.
    """
    ctrl = build_sae(sae.config)
    _copy_input_side(ctrl, sae)
    gen = np.random.default_rng([int(seed), 0x5EED])  # independent of torch's stream that seeds SAE inits
    w = gen.standard_normal((sae.n_latents, sae.d_in))
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    w = torch.from_numpy(w.astype(np.float32))
    ctrl.W_enc.copy_(w)
    ctrl.W_dec.copy_(w)
    ctrl.b_enc.zero_()
    return _finish(ctrl, sae, calibration)


def _finish(ctrl: SparseAutoencoder, sae: SparseAutoencoder, calibration) -> SparseAutoencoder:
    """A BatchTopK control gets its threshold calibrated (it has no training run to estimate one)."""
    if sae.config.variant == "batchtopk":
        if calibration is None:
            raise ValueError("a BatchTopK control needs calibration vectors to set its threshold")
        ctrl.threshold.fill_(calibrate_threshold(ctrl, calibration))
    ctrl.eval()
    return ctrl


@torch.no_grad()
def sae_init(sae: SparseAutoencoder, seed: int, sample=None, calibration=None) -> SparseAutoencoder:
    """The SAE as training initialised it with `seed`: its random rows, zero encoder bias, the trained
    SAE's normalisation (fixed before training) and `b_pre` = geometric median of the normalised
    `sample` (the trained `b_pre` when no sample is given)."""
    ctrl = build_sae(sae.config, seed=seed)
    _copy_input_side(ctrl, sae)
    if sample is not None:
        ctrl.b_pre.copy_(geometric_median(ctrl.normalize(_vectors(sample))[:8192]))
    return _finish(ctrl, sae, calibration)


def control_sae(sae: SparseAutoencoder, kind: str, seed: int, sample=None) -> SparseAutoencoder:
    """`matched_random` or `sae_init` by name; `sample` calibrates BatchTopK and centres `sae_init`."""
    if kind == "random":
        return matched_random(sae, seed, calibration=sample)
    if kind == "sae_init":
        return sae_init(sae, seed, sample=sample, calibration=sample)
    raise ValueError(f"unknown control {kind!r}; known: {', '.join(CONTROLS)}")


def control_image_acts(sae: SparseAutoencoder, feats, kind: str = "random", seeds: Sequence[int] = (1, 2, 3),
                       sample=None, pooling: str | None = None) -> list[np.ndarray]:
    """Image-level activations (n, n_latents) of one control per seed, read exactly as the SAE is."""
    return [image_latents(control_sae(sae, kind, s, sample), feats, pooling) for s in seeds]


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample std (ddof=1) over control seeds; sd is NaN with one seed."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], np.float64)
    if v.size == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else float("nan")
