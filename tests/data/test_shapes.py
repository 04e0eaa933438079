"""Procedural shapes: image i is a function of (seed, i) only; labels match the drawn image."""
from __future__ import annotations

import numpy as np
import pytest

from revelio_svc.config import DataConfig
from revelio_svc.data import load_dataset
from revelio_svc.data.shapes import ShapesDataset


def test_same_seed_and_index_give_the_same_image_whatever_the_order_or_count():
    small, large = ShapesDataset(n=6, image_size=16, seed=3), ShapesDataset(n=40, image_size=16, seed=3)
    forward = [small.image(i) for i in range(6)]
    backward = [large.image(i) for i in reversed(range(6))][::-1]
    for a, b in zip(forward, backward):
        assert np.array_equal(a, b)
    assert forward[0].shape == (16, 16, 3) and forward[0].dtype == np.uint8
    assert not np.array_equal(forward[0], forward[1])


def test_labels_are_in_range_and_match_sample():
    ds = ShapesDataset(n=12, image_size=16, seed=1)
    for c in ds.concepts:
        labels = ds.labels(c.name)
        assert labels.dtype == np.int64 and labels.shape == (12,)
        assert labels.min() >= 0 and labels.max() < len(c.classes)
    for i in (0, 5, 11):
        img, lab = ds.sample(i)
        assert np.array_equal(img, ds.image(i))
        assert all(ds.labels(k)[i] == v for k, v in lab.items())


def test_different_seeds_give_different_images():
    a, b = ShapesDataset(n=4, image_size=16, seed=0), ShapesDataset(n=4, image_size=16, seed=1)
    assert not all(np.array_equal(a.image(i), b.image(i)) for i in range(4))


def test_fingerprint_is_stable_and_changes_with_seed_n_and_size():
    base = ShapesDataset(n=10, image_size=16, seed=0)
    assert base.fingerprint() == ShapesDataset(n=10, image_size=16, seed=0).fingerprint()
    others = [ShapesDataset(n=10, image_size=16, seed=1), ShapesDataset(n=11, image_size=16, seed=0),
              ShapesDataset(n=10, image_size=32, seed=0)]
    prints = {base.fingerprint()} | {o.fingerprint() for o in others}
    assert len(prints) == 4


def test_out_of_range_index_and_bad_n_are_errors():
    ds = ShapesDataset(n=3, image_size=16)
    with pytest.raises(IndexError, match="out of range"):
        ds.image(3)
    with pytest.raises(ValueError, match="n_images > 0"):
        ShapesDataset(n=0)
    with pytest.raises(KeyError, match="unknown concept"):
        ds.labels("texture")


def test_load_dataset_dispatches_shapes_and_defaults_n():
    ds = load_dataset(DataConfig(source="shapes", n_images=0, image_size=16, seed=2))
    assert isinstance(ds, ShapesDataset) and len(ds) == 2000 and ds.seed == 2
    assert len(load_dataset(DataConfig(source="shapes", n_images=7, image_size=16))) == 7


def _plain_background_indices(ds: ShapesDataset, shape: str | None = None) -> list[int]:
    from revelio_svc.data.shapes import BACKGROUNDS, SHAPES

    bg, sh = ds.labels("background"), ds.labels("shape")
    keep = (bg == BACKGROUNDS.index("plain"))
    if shape is not None:
        keep &= sh == SHAPES.index(shape)
    return [int(i) for i in np.flatnonzero(keep)]


def test_object_mask_matches_the_pixels_on_a_plain_background():
    """On a plain background each pixel is bg + c·(fg − bg) with c its shape coverage; the mask is c ≥ ½."""
    ds = ShapesDataset(n=120, image_size=32, seed=0)
    checked = 0
    for i in _plain_background_indices(ds):
        img, m = ds.image(i).astype(np.float64), ds.masks(i)["object"]
        def mode(px: np.ndarray) -> np.ndarray:
            colours, counts = np.unique(px, axis=0, return_counts=True)
            return colours[counts.argmax()]

        bg, fg = mode(img[~m]), mode(img[m])  # flat background, flat shape interior
        assert np.abs(fg - bg).sum() > 30
        cover = ((img - bg) @ (fg - bg)) / ((fg - bg) @ (fg - bg))
        assert m.sum() > 10
        assert (cover[m] > 0.45).all(), f"image {i}: a mask pixel is mostly background"
        assert (cover[~m] < 0.55).all(), f"image {i}: a pixel outside the mask is mostly shape"
        assert np.array_equal(m, cover > 0.5) or np.abs(cover[m != (cover > 0.5)] - 0.5).max() < 0.05
        checked += 1
    assert checked >= 20


def test_parts_lie_inside_the_object_and_follow_the_shape():
    from revelio_svc.data.shapes import MASK_NAMES, PARTS, SHAPES

    ds = ShapesDataset(n=60, image_size=32, seed=2)
    shapes = ds.labels("shape")
    assert ds.mask_names == MASK_NAMES
    for i in range(60):
        m = ds.masks(i)
        assert set(m) == set(MASK_NAMES)
        assert all(v.shape == (32, 32) and v.dtype == bool for v in m.values())
        name = SHAPES[shapes[i]]
        for part in MASK_NAMES[1:]:
            assert not (m[part] & ~m["object"]).any()
            if part in PARTS[name]:
                assert 0 < m[part].sum() < m["object"].sum(), f"image {i} ({name}): {part}"
            else:
                assert not m[part].any(), f"image {i} ({name}) should have no {part}"


def test_masks_are_deterministic_and_leave_the_image_unchanged():
    from revelio_svc.data.shapes import render_with_masks

    ds = ShapesDataset(n=8, image_size=32, seed=5)
    before = [ds.image(i) for i in range(8)]
    batch = ds.masks_batch(range(8))
    for i in range(8):
        img, lab, m = render_with_masks(ds._rng(i), 32)
        assert np.array_equal(img, before[i]) and np.array_equal(img, ds.image(i))
        assert lab == ds.sample(i)[1]
        for k, v in ds.masks(i).items():
            assert np.array_equal(v, m[k]) and np.array_equal(v, batch[k][i])
    with pytest.raises(IndexError):
        ds.masks(8)
