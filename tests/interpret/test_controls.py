"""Matched controls follow the SAE's config: width, k, selection, normalisation, centre and pooling."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from revelio_svc.interpret.controls import (
    control_image_acts,
    matched_random,
    mean_sd,
    sae_init,
)
from revelio_svc.sae import BatchTopKSAEConfig, TopKSAEConfig, build_sae, image_latents


def trained_like(config, seed: int = 0):
    """An SAE with non-trivial normalisation, centre and encoder bias, as training would leave it."""
    sae = build_sae(config, seed=seed)
    rng = np.random.default_rng(seed)
    feats = torch.from_numpy(rng.standard_normal((500, config.d_in)).astype(np.float32) * 3 + 1)
    sae.init_from_data(feats)
    with torch.no_grad():
        sae.b_enc.copy_(torch.from_numpy(rng.standard_normal(config.n_latents).astype(np.float32)))
        sae.b_pre.add_(0.1)
    return sae


def tokens(n: int = 6, hw: int = 4, d: int = 8, seed: int = 3) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((n, hw, hw, d)) * 3 + 1).astype(np.float32)


@pytest.mark.parametrize("pooling", ["max", "mean"])
def test_random_control_follows_width_k_normalisation_centre_and_pooling(pooling):
    cfg = TopKSAEConfig(d_in=8, n_latents=40, k=3, normalize="standard", input="tokens", latent_pooling=pooling)
    sae = trained_like(cfg)
    ctrl = matched_random(sae, seed=1)
    assert ctrl.config == sae.config and type(ctrl) is type(sae)
    for name in ("norm_mean", "norm_scale", "b_pre"):
        assert torch.equal(getattr(ctrl, name), getattr(sae, name))
    assert torch.count_nonzero(ctrl.b_enc) == 0
    assert torch.allclose(torch.linalg.vector_norm(ctrl.W_enc, dim=1), torch.ones(40))
    assert not torch.allclose(ctrl.W_enc, sae.W_enc)

    x = tokens()
    acts = control_image_acts(sae, x, "random", seeds=(1,))[0]
    assert acts.shape == (6, 40)
    # the reference: normalise, centre, project on the random rows, keep the k largest, ReLU, pool
    xn = (torch.from_numpy(x).reshape(-1, 8) - sae.norm_mean) / sae.norm_scale - sae.b_pre
    pre = (xn @ ctrl.W_enc.T).detach()
    kept = torch.zeros_like(pre).scatter(1, pre.topk(3, dim=1).indices, pre.topk(3, dim=1).values).clamp_min(0)
    assert int((kept > 0).sum(1).max()) <= 3
    kept = kept.reshape(6, 16, 40)
    ref = kept.amax(1) if pooling == "max" else kept.mean(1)
    assert np.allclose(acts, ref.numpy(), atol=1e-5)


def test_seeds_give_different_dictionaries_and_the_same_seed_the_same_one():
    sae = trained_like(TopKSAEConfig(d_in=8, n_latents=16, k=2))
    a, b, a2 = (matched_random(sae, s).W_enc for s in (1, 2, 1))
    assert torch.equal(a, a2) and not torch.allclose(a, b)


def test_batchtopk_control_keeps_k_per_vector_on_average():
    cfg = BatchTopKSAEConfig(d_in=8, n_latents=32, k=4, normalize="scalar", input="tokens", threshold=0.3)
    sae = trained_like(cfg)
    x = tokens(n=40)
    ctrl = matched_random(sae, seed=5, calibration=x)
    vals, _ = ctrl.encode_sparse(torch.from_numpy(x).reshape(-1, 8))
    assert (vals > 0).sum(1).float().mean().item() == pytest.approx(4.0, abs=0.05)
    with pytest.raises(ValueError, match="calibration"):
        matched_random(sae, seed=5)


def test_sae_init_is_what_training_starts_from():
    cfg = TopKSAEConfig(d_in=8, n_latents=24, k=3, normalize="scalar", input="pooled")
    sample = tokens(n=50)[:, 0, 0]
    fresh = build_sae(cfg, seed=7)
    fresh.init_from_data(torch.from_numpy(sample))
    trained = trained_like(cfg, seed=7)
    trained.init_from_data(torch.from_numpy(sample))  # same normalisation as training would fit
    with torch.no_grad():
        trained.W_enc.mul_(1.5)
        trained.b_pre.add_(1.0)
    init = sae_init(trained, seed=7, sample=sample)
    assert torch.equal(init.W_enc, fresh.W_enc) and torch.equal(init.W_dec, fresh.W_dec)
    assert torch.allclose(init.b_pre, fresh.b_pre, atol=1e-5)
    assert torch.count_nonzero(init.b_enc) == 0
    assert np.allclose(image_latents(init, sample), image_latents(fresh, sample), atol=1e-5)


def test_mean_sd_over_seeds():
    assert mean_sd([1.0, 2.0, 3.0]) == (2.0, 1.0)
    m, s = mean_sd([4.0])
    assert m == 4.0 and np.isnan(s)
