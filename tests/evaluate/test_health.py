"""Dictionary health: dead, dense and duplicate latents are counted as such."""
from __future__ import annotations

import numpy as np
import torch

from revelio_svc.evaluate.health import dictionary_health, encoder_decoder_cosine, max_decoder_cosine
from revelio_svc.sae import TopKSAE, TopKSAEConfig


def _sae() -> TopKSAE:
    torch.manual_seed(0)
    sae = TopKSAE(TopKSAEConfig(d_in=8, n_latents=10, k=2, normalize="none"))
    with torch.no_grad():
        w = torch.nn.functional.normalize(torch.randn(10, 8), dim=1)
        w[2] = w[1]  # a duplicate
        sae.W_dec.copy_(w)
        sae.W_enc.copy_(w)
        sae.W_enc[3] = -w[3]  # an encoder reading the opposite of what its decoder writes
        sae.b_enc.zero_()
        sae.b_enc[0] = 100.0  # fires on everything
        sae.b_enc[9] = -100.0  # never fires
    return sae.eval()


def test_dead_dense_and_duplicate_latents_are_counted(tmp_path):
    sae = _sae()
    x = np.random.default_rng(0).standard_normal((500, 8)).astype(np.float32)
    h = dictionary_health(sae, x)
    assert h.density[0] == 1.0 and h.density[9] == 0.0
    m = h.metrics()
    assert m["health.dead"] >= 1 and m["health.dense"] >= 1
    assert m["health.duplicates"] == 2 and m["health.max_dec_cosine_max"] > 0.999
    assert np.isclose(h.enc_dec_cosine[3], -1.0) and np.isclose(h.enc_dec_cosine[4], 1.0)
    assert 1.9 < h.density.sum() <= 2.0  # k = 2 kept per vector (a kept value the ReLU zeroes is not active)
    path = h.figure(tmp_path / "health.png")
    assert path.stat().st_size > 1000


def test_cosines_of_an_orthogonal_dictionary():
    sae = TopKSAE(TopKSAEConfig(d_in=4, n_latents=4, k=1))
    with torch.no_grad():
        sae.W_dec.copy_(torch.eye(4))
        sae.W_enc.copy_(torch.eye(4))
    assert np.allclose(max_decoder_cosine(sae), 0.0) and np.allclose(encoder_decoder_cosine(sae), 1.0)
