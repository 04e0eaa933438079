"""The frontier's baselines: PCA directions with TopK, random directions on raw or normalised features."""
from __future__ import annotations

import numpy as np
import torch

from revelio_svc.evaluate.baselines import BASELINES, baseline, pca_topk
from revelio_svc.sae import TopKSAE, TopKSAEConfig
from revelio_svc.sae.metrics import fvu


def _whitened_sae(k: int) -> tuple[TopKSAE, np.ndarray]:
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((2000, 6)) * np.array([5, 3, 1, 0.5, 0.2, 0.1]) + 2.0).astype(np.float32)
    sae = TopKSAE(TopKSAEConfig(d_in=6, n_latents=24, k=k, normalize="whiten"))
    sae.init_from_data(torch.from_numpy(x))
    return sae, x


def test_pca_topk_with_k_equal_to_the_dimension_reconstructs_exactly():
    sae, x = _whitened_sae(6)
    pca = pca_topk(sae, x)
    assert pca.n_latents == 12 and pca.config.normalize == "scalar"
    xt = torch.from_numpy(x)
    assert fvu(xt, pca(xt)) < 1e-6
    # one latent per vector: the principal direction it projects on most, at least as good as the first
    # direction alone, which leaves 1 − 25 / 35.3 of the variance
    one = pca_topk(_whitened_sae(1)[0], x)
    assert 0.05 < fvu(xt, one(xt)) < 1 - 25 / 35.3


def test_every_baseline_keeps_the_width_and_k_and_only_random_raw_drops_whitening():
    sae, x = _whitened_sae(3)
    for name in BASELINES:
        b = baseline(sae, name, x)
        assert b.k == 3
        assert b.config.normalize == ("whiten" if name == "random_matched" else "scalar")
        vals, _ = b.encode_sparse(torch.from_numpy(x[:5]))
        assert vals.shape == (5, 3)
