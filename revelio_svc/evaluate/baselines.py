"""Dictionaries an SAE has to beat on the sparsity frontier, each encoded by the SAE's own selection (TopK or
BatchTopK with the same k) so they differ from it only in where their directions come from:

- `random_matched` (`interpret.controls.matched_random`): random unit directions read through the SAE's own
  input normalisation (whitening, for the default SAE) and centre;
- `random_raw`: random unit directions on the raw features (scalar normalisation, centred on the geometric
  median), whatever the SAE's normalisation;
- `pca_topk`: the principal directions of the raw features and their negatives (2·d_in latents), centred on
  the mean: TopK of the projections is the best k-term reconstruction in the PCA basis.

Raw channels (ReLU of each channel, pooled like the latents) need no dictionary: `interpret.purity
.direction_activations`.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ..interpret.controls import matched_random
from ..sae.base import SparseAutoencoder
from ..sae.io import build_sae

BASELINES = ("random_matched", "random_raw", "pca_topk")


def _vectors(sample) -> torch.Tensor:
    x = sample if torch.is_tensor(sample) else torch.from_numpy(np.ascontiguousarray(sample))
    return x.float().reshape(-1, x.shape[-1])


@torch.no_grad()
def random_raw(sae: SparseAutoencoder, seed: int, sample) -> SparseAutoencoder:
    """Random directions on the raw features (see the module docstring)."""
    raw = build_sae(dataclasses.replace(sae.config, normalize="scalar"))
    raw.init_from_data(_vectors(sample))
    return matched_random(raw, seed, calibration=sample)


@torch.no_grad()
def pca_topk(sae: SparseAutoencoder, sample) -> SparseAutoencoder:
    """The principal directions ± of the raw features, selected by the SAE's TopK (see the module docstring)."""
    d = sae.d_in
    conf = dataclasses.replace(sae.config, normalize="scalar", n_latents=2 * d, k=min(sae.k, 2 * d))
    ctrl = build_sae(conf)
    x = _vectors(sample)
    ctrl.fit_normalization(x)
    xn = ctrl.normalize(x).double()
    mean = xn.mean(0)
    _, vec = torch.linalg.eigh(((xn - mean).T @ (xn - mean)) / max(1, len(xn) - 1))
    v = vec.flip(1).T.float()  # rows: principal directions, largest variance first
    w = torch.cat([v, -v])
    ctrl.W_enc.copy_(w)
    ctrl.W_dec.copy_(w)
    ctrl.b_enc.zero_()
    ctrl.b_pre.copy_(mean.float())
    if conf.variant == "batchtopk":
        from ..interpret.controls import calibrate_threshold

        ctrl.threshold.fill_(calibrate_threshold(ctrl, x))
    return ctrl.eval()


def baseline(sae: SparseAutoencoder, name: str, sample, seed: int = 1) -> SparseAutoencoder:
    if name == "random_matched":
        return matched_random(sae, seed, calibration=sample)
    if name == "random_raw":
        return random_raw(sae, seed, sample)
    if name == "pca_topk":
        return pca_topk(sae, sample)
    raise ValueError(f"unknown baseline {name!r}; known: {', '.join(BASELINES)}")
