from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from revelio_svc.config import replace
from revelio_svc.features.store import open_store
from revelio_svc.probe.controls import (
    ControlError,
    align_rows,
    downsample,
    pixel_control,
    random_init_config,
    random_relu_expansion,
)


def test_random_relu_expansion_matches_sae_width_and_pooling():
    rng = np.random.default_rng(0)
    tokens = rng.standard_normal((10, 4, 4, 6)).astype(np.float32)
    Z = random_relu_expansion(tokens, 32, fit_rows=np.arange(8), pooling="max", seed=1)
    assert sp.issparse(Z) and Z.shape == (10, 32) and Z.min() >= 0
    # max over positions of ReLU(W(x - mu)) computed densely for one image
    mu = tokens[:8].mean(axis=(0, 1, 2))
    W = np.random.default_rng(1).standard_normal((6, 32)).astype(np.float32) / np.sqrt(6)
    want = np.maximum((tokens[3] - mu) @ W, 0).max(axis=(0, 1))
    np.testing.assert_allclose(Z[3].toarray().ravel(), want, rtol=1e-5, atol=1e-6)
    # the centre comes from the rows given, never from the others (test rows stay unseen)
    moved = tokens.copy()
    moved[8:] += 100
    np.testing.assert_allclose(random_relu_expansion(moved, 32, np.arange(8), "max", 1)[:8].toarray(),
                               Z[:8].toarray(), rtol=1e-6)
    pooled = random_relu_expansion(tokens.mean(axis=(1, 2)), 32, np.arange(8))
    assert pooled.shape == (10, 32)


def test_align_rows_finds_rows_by_dataset_index_and_reports_gaps():
    np.testing.assert_array_equal(align_rows(np.array([0, 2, 3, 7]), np.array([2, 7])), [1, 3])
    with pytest.raises(ControlError, match="lacks 1 of the model's rows"):
        align_rows(np.array([0, 2, 3]), np.array([2, 5]))


def test_downsample_is_a_box_filter():
    img = np.zeros((1, 8, 8, 3), np.uint8)
    img[0, :4, :4] = 255
    out = downsample(img, 2)
    np.testing.assert_allclose(out[0, :, :, 0], [[1, 0], [0, 0]])


def test_random_init_config_keeps_everything_but_the_weights(extracted):
    cfg, _ = extracted
    r = random_init_config(replace(cfg, **{"extract.store": "/somewhere"}), ["up_blocks.1"], [10], ["mean"])
    assert r.backbone.init == "random" and r.backbone.id == cfg.backbone.id
    assert r.extract.store == "" and r.extract.hook_points == ("up_blocks.1",) and r.data == cfg.data


def test_pixel_control_rows_are_the_store_rows(extracted):
    cfg, uri = extracted
    store = open_store(uri)
    X = pixel_control(cfg, store, size=8)
    assert X.shape == (store.n_rows, 8 * 8 * 3) and 0 <= X.min() and X.max() <= 1
    from revelio_svc.data import load_dataset

    img = load_dataset(cfg.data).image(int(store.index()[5]))
    np.testing.assert_allclose(X[5], downsample(img[None], 8).ravel())
    # a data section describing other images is refused rather than silently misaligned
    other = replace(cfg, **{"data.seed": 9})
    with pytest.raises(ControlError, match="another dataset"):
        pixel_control(other, store)


def test_random_init_control_refuses_another_architecture(extracted):
    from revelio_svc.probe.controls import random_init_store

    cfg, _ = extracted
    with pytest.raises(ControlError, match="same architecture"):
        random_init_store(cfg, ["up_blocks.1"], [10], ["mean"],
                          model_backbone={"kind": "unet2d", "id": "some/other-model"})


def test_the_random_init_control_elsewhere_is_not_bound_by_the_models_token_filters():
    from revelio_svc.config import load_config

    cfg = load_config(None)  # the defaults keep token maps at up_blocks.1, t=10 only
    r = random_init_config(cfg, ["mid_block"], [100], ["tokens"])
    assert r.extract.poolings_for("mid_block", 100) == ("tokens",)


def test_top_q_pooling_of_tokens_and_random_relu():
    from revelio_svc.probe.controls import pool_tokens

    rng = np.random.default_rng(0)
    tokens = rng.standard_normal((4, 3, 3, 5)).astype(np.float32)
    flat = tokens.reshape(4, 9, 5)
    want = np.sort(flat, axis=1)[:, ::-1][:, :2].mean(1)
    np.testing.assert_allclose(pool_tokens(tokens, "top2"), want, atol=1e-6)
    np.testing.assert_allclose(pool_tokens(tokens, "top1"), pool_tokens(tokens, "max"), atol=1e-6)
    with pytest.raises(ValueError, match="top<q>"):
        pool_tokens(tokens, "sum")
    z_max = random_relu_expansion(tokens, 16, np.arange(4), "max", 1).toarray()
    z_top = random_relu_expansion(tokens, 16, np.arange(4), "top3", 1).toarray()
    assert (z_top <= z_max + 1e-6).all() and ((z_top > 0) == (z_max > 0)).all()
