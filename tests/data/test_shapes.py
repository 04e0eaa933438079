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
