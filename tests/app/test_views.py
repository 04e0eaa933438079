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


def test_sheet_draws_rows_of_tiles_and_maps_clicks_back_to_them():
    a, b = np.zeros((8, 8, 3), np.uint8), np.full((8, 8, 3), 255, np.uint8)
    img, sheet = views.draw_sheet([[a, b], [b]], ["first row × α", "second"], tile=20)
    assert img.shape == (sheet.size[1], sheet.size[0], 3) == (2 * (views.CAPTION + 20) + views.GAP, 44, 3)
    x, y = sheet.origin(0, 0)
    assert img[y + 5, x + 5].max() == 0 and img[y + 5, sheet.origin(0, 1)[0] + 5].min() == 255
    assert sheet.cell(x + 3, y + 3) == (0, 0) and sheet.cell(*sheet.origin(1, 0)) == (1, 0)
    assert sheet.cell(x + 21, y + 3) is None  # the gap between tiles
    assert sheet.cell(3, 3) is None  # the caption line
    assert sheet.cell(500, 500) is None


def test_atlas_raster_puts_points_where_clicks_find_them():
    xy = np.array([[0.0, 0.0], [1.0, 1.0], [0.25, 0.75]], np.float32)
    colours = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)
    img = views.render_atlas(xy, colours, size=100)
    px = views.atlas_pixels(xy, 100)
    for (x, y), c in zip(px, colours):
        assert (img[y, x] == c).all()
        assert np.allclose(views.atlas_coords(x, y, 100), xy[list(map(tuple, px)).index((x, y))], atol=0.02)
    rgb, legend = views.categorical_colours(["a", "b", "a", None])
    assert [v for v, _ in legend] == ["a", "b", "—"] and (rgb[0] == rgb[2]).all()
    assert views.continuous_colours(np.array([np.nan, 1.0]))[0].tolist() == [190, 190, 190]


def test_resize_notes_name_the_original_size():
    from revelio_svc.app.service import resize_notes

    assert resize_notes((96, 96), 32) == []
    (tiny,) = resize_notes((1, 1), 32)
    assert tiny.startswith("resized from 1×1") and "32×32" in tiny
    (wide,) = resize_notes((400, 40), 32)
    assert wide.startswith("resized from 400×40") and "10% of the image" in wide


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


@pytest.mark.slow
def test_atlas_and_latent_pages_at_50k_images(tiny_clf, tmp_path):
    """The service's atlas, colouring, click lookup and latent pages on 50,000 images' latents (synthetic codes
    in place of a 50k-image backbone pass): landmark t-SNE, every point drawn, nothing dense per image × latent."""
    import time

    import scipy.sparse as sp

    from revelio_svc.app.service import DemoService
    from revelio_svc.inference.latent_stats import DatasetLatents

    n, L = 50_000, tiny_clf.n_latents
    rng = np.random.default_rng(0)
    Z = sp.random(n, L, density=0.2, format="csr", random_state=1, dtype=np.float32)
    labels = {"shape": (list(tiny_clf.class_names), rng.integers(0, 6, n))}
    svc = DemoService(tiny_clf, cache_dir=tmp_path)
    svc._dl = DatasetLatents(Z, np.arange(n) % 40, labels, rng.random((n, 64), dtype=np.float32), "test control")
    t = time.perf_counter()
    xy = svc.atlas("images")
    values, _ = svc.atlas_values("images", "shape")
    colours, legend = views.categorical_colours(values)
    img = views.render_atlas(xy, colours)
    assert xy.shape == (n, 2) and img.shape == (views.ATLAS_SIZE, views.ATLAS_SIZE, 3) and len(legend) == 6
    assert svc.pick("images", *xy[123]) is not None
    page = svc.latent_page(svc.useful_latent())
    assert page["n_images"] == n and sum(page["histogram_counts"]) == page["n_active"]
    assert time.perf_counter() - t < 300


def test_a_model_whose_dataset_is_missing_still_builds_and_says_why(tiny_clf):
    import copy

    from revelio_svc.app.main import build_app
    from revelio_svc.app.service import DemoService
    from revelio_svc.config import DataConfig

    clf = copy.copy(tiny_clf)
    clf.data, clf._dataset = DataConfig(source="imagefolder", id="/nonexistent/revelio-images"), None
    svc = DemoService(clf)
    assert tiny_clf.top_indices[svc.useful_latent(), 0] >= 0  # still a live latent, from the saved top images
    with pytest.raises(InputError, match="cannot be loaded here"):
        svc.latent_page(0)
    with pytest.raises(InputError, match="cannot be loaded here"):
        svc.atlas("images")
    assert build_app(clf, service=svc) is not None


def test_dataset_statistics_and_atlases_are_computed_once_per_model(tiny_clf, tmp_path, monkeypatch):
    from revelio_svc.app.service import DemoService

    first = DemoService(tiny_clf, cache_dir=tmp_path, browse_images=40)
    xy = first.atlas("images")
    lat = first.atlas("latents")
    files = sorted(p.name for p in tmp_path.iterdir())
    assert [f.split("-")[0] for f in files] == ["atlas", "atlas", "latents"]
    assert all(first.model_key in f for f in files)

    def no_forward(*a, **k):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(tiny_clf, "tokens", no_forward)
    again = DemoService(tiny_clf, cache_dir=tmp_path, browse_images=40)
    assert np.array_equal(again.atlas("images"), xy) and np.array_equal(again.atlas("latents"), lat)
    assert (again.dataset_latents().Z != first.dataset_latents().Z).nnz == 0
