"""Rendering helpers and the consistency of the quick classifier used by tests and the benchmark."""
from __future__ import annotations

import numpy as np
import pytest

from revelio_svc.app import views
from revelio_svc.app.service import InputError, decode_upload

from .helpers import bad_files, example


def test_overlay_colours_where_the_latent_fires_and_scales_by_the_given_maximum():
    rgb = np.full((16, 16, 3), 200, np.uint8)
    heat = np.zeros((4, 4), np.float32)
    heat[0, 0] = 2.0
    full = views.overlay(rgb, heat)  # scaled by its own maximum
    assert full.shape == (views.VIEW, views.VIEW, 3) and full.dtype == np.uint8
    hot, cold = full[5, 5].astype(int), full[-5, -5].astype(int)
    assert np.abs(hot - cold).sum() > 100  # the firing corner looks different from the silent one
    weak = views.overlay(rgb, heat, scale=20.0)  # the same map is weak against a strong latent
    assert np.abs(weak[5, 5].astype(int) - cold).sum() < np.abs(hot - cold).sum() / 2
    silent = views.overlay(rgb, np.zeros((4, 4), np.float32))
    assert np.array_equal(silent[0, 0], silent[-1, -1])  # no activation: uniform tint, no false hot spot


def test_strip_places_thumbnails_side_by_side():
    a, b = np.zeros((8, 8, 3), np.uint8), np.full((8, 8, 3), 255, np.uint8)
    s = views.strip([a, b], size=10, gap=2)
    assert s.shape == (10, 22, 3)
    assert s[:, :10].max() == 0 and s[:, 12:].min() == 255


def test_contribution_frame_keeps_the_order_of_the_explanation():
    exp = {"contributions": [{"latent": 7, "contribution": 2.0, "activation": 1.0, "weight": 2.0},
                             {"latent": 3, "contribution": 0.5, "activation": 0.5, "weight": 1.0}]}
    df = views.contribution_frame(exp)
    assert list(df["latent"]) == ["#7", "#3"] and list(df["contribution"]) == [2.0, 0.5]


def test_decode_upload_reasons(tmp_path):
    bad = bad_files(tmp_path)
    with pytest.raises(InputError, match="not an image file"):
        decode_upload(bad["text"], 16, 10_000)
    with pytest.raises(InputError, match="empty"):
        decode_upload(bad["empty"], 16, 10_000)
    with pytest.raises(InputError, match=r"too large \(96×96 = 9,216 pixels; this demo accepts at most 9,000\)"):
        decode_upload(example("star"), 16, 9_000)
    with pytest.raises(InputError, match="no image given"):
        decode_upload(None, 16, 10_000)
    ok = decode_upload(example("star"), 16, 10_000)
    assert ok.rgb.shape == (16, 16, 3) and ok.notes == [] and ok.size == (96, 96)


def test_quick_classifier_top_images_agree_with_the_classifier_feature_path(tiny_clf):
    """Top images were computed by app.quick's own forward; the Classifier's path must give the same latents."""
    ds = tiny_clf.dataset()
    z = tiny_clf.latents(ds.images(range(len(ds))), ds.ids())
    for j in range(tiny_clf.n_latents):
        i0 = int(tiny_clf.top_indices[j, 0])
        if i0 < 0:
            assert z[:, j].max() <= 0
            continue
        assert z[i0, j] == pytest.approx(float(tiny_clf.top_values[j, 0]), rel=1e-4, abs=1e-5)
        assert z[:, j].max() == pytest.approx(float(tiny_clf.top_values[j, 0]), rel=1e-4, abs=1e-5)
