"""The raw-feature controls: encoded like an SAE (centre, project, TopK, ReLU, pool), built as described."""
from __future__ import annotations

import numpy as np
import torch

from revelio_svc.interpret import dictionaries as dicts
from revelio_svc.interpret.purity import direction_activations
from revelio_svc.sae import image_latents


def tokens(n=6, hw=4, d=8, seed=3):
    return (np.random.default_rng(seed).standard_normal((n, hw, hw, d)) * 3 + 1).astype(np.float32)


def test_a_dictionary_encodes_centre_project_topk_relu_and_pools_like_an_sae():
    sample = tokens(50).reshape(-1, 8)
    d = dicts.random_raw(sample, n_units=20, k=3, seed=1, pooling="max")
    assert d.n_latents == 20 and np.allclose(np.linalg.norm(d.rows, axis=1), 1, atol=1e-5)
    assert np.allclose(d.centre, sample.mean(0), atol=1e-5)
    x = tokens()
    acts = image_latents(d, x)
    pre = torch.from_numpy((x.reshape(-1, 8) - d.centre) @ d.rows.T)
    top = pre.topk(3, dim=1)
    kept = torch.zeros_like(pre).scatter(1, top.indices, top.values).clamp_min(0).reshape(6, 16, 20)
    assert np.allclose(acts, kept.amax(1).numpy(), atol=1e-5)
    assert not np.allclose(d.rows, dicts.random_raw(sample, 20, 3, seed=2).rows)


def test_channels_are_relu_of_the_raw_channels():
    x = tokens()
    assert np.allclose(image_latents(dicts.channels(8, "mean"), x), direction_activations(x, None, "mean"), atol=1e-5)


def test_pca_has_both_signs_of_orthonormal_principal_directions():
    rng = np.random.default_rng(0)
    sample = (rng.standard_normal((500, 6)) * np.array([5, 3, 1, 1, 0.5, 0.1])).astype(np.float32)
    d = dicts.pca(sample, k=2)
    assert d.n_latents == 12 and np.allclose(d.rows[:6], -d.rows[6:])
    assert np.allclose(d.rows[:6] @ d.rows[:6].T, np.eye(6), atol=1e-5)
    assert abs(d.rows[0, 0]) > 0.99  # the largest-variance axis first


def test_kmeans_finds_planted_directions_and_reads_one_unit_per_vector():
    rng = np.random.default_rng(0)
    centres = np.linalg.qr(rng.standard_normal((8, 8)))[0][:4]
    sample = (np.repeat(centres, 200, 0) * 4 + 0.1 * rng.standard_normal((800, 8))).astype(np.float32)
    sample = sample - sample.mean(0) + 2.0  # an offset the dictionary centres away
    d = dicts.kmeans(sample, n_units=4, seed=0)
    assert d.k == 1
    found = np.abs(d.rows @ dicts._unit(centres - centres.mean(0)).T).max(0)
    assert (found > 0.95).all()  # every planted cluster has its centroid
    vals, idx = d.encode_sparse(torch.from_numpy(sample[:10]))
    assert idx.shape == (10, 1) and (vals >= 0).all()


def test_token_rows_are_centred_training_vectors():
    sample = tokens(20).reshape(-1, 8)
    d = dicts.token_rows(sample, n_units=30, k=4, seed=0)
    c = sample - sample.mean(0)
    cos = dicts._unit(c) @ d.rows.T
    assert np.allclose(cos.max(0), 1.0, atol=1e-4)  # every row is one of them
