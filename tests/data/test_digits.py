"""scikit-learn digits: offline, 0..16 grey scaled to RGB uint8, labels "0".."9"."""
from __future__ import annotations

import numpy as np
import pytest

from revelio_svc.config import DataConfig
from revelio_svc.data import DigitsDataset, load_dataset


def test_all_digits_with_labels_and_classes():
    ds = DigitsDataset(image_size=16, n_images=0)
    assert len(ds) == 1797
    assert ds.label_names() == {"label": [str(d) for d in range(10)]}
    labels = ds.labels("label")
    assert labels.dtype == np.int64 and set(labels.tolist()) == set(range(10))


def test_images_are_rgb_uint8_scaled_from_0_16():
    from sklearn.datasets import load_digits

    ds = DigitsDataset(image_size=8, n_images=5)
    raw = load_digits().images[0]
    img = ds.image(0)
    assert img.shape == (8, 8, 3) and img.dtype == np.uint8
    # at the native size no resampling happens, so pixels are exactly 0..16 scaled to 0..255
    assert np.array_equal(img[..., 0], np.round(raw * 255 / 16).astype(np.uint8))
    assert (img[..., 0] == img[..., 1]).all()
    assert ds.image(4).shape == (8, 8, 3) and DigitsDataset(image_size=32, n_images=1).image(0).shape == (32, 32, 3)


def test_first_n_and_too_many():
    first = DigitsDataset(image_size=8, n_images=10)
    every = DigitsDataset(image_size=8, n_images=0)
    assert len(first) == 10
    assert np.array_equal(first.labels("label"), every.labels("label")[:10])
    assert np.array_equal(first.image(9), every.image(9))
    assert len(DigitsDataset(image_size=8, n_images=5000)) == 1797
    with pytest.raises(ValueError, match="n_images >= 0"):
        DigitsDataset(n_images=-1)
    with pytest.raises(IndexError):
        first.image(10)


def test_describe_and_fingerprint_are_stable():
    a, b = DigitsDataset(image_size=16, n_images=20), DigitsDataset(image_size=16, n_images=20)
    assert a.describe() == b.describe() and a.fingerprint() == b.fingerprint()
    assert a.fingerprint() != DigitsDataset(image_size=32, n_images=20).fingerprint()
    assert a.fingerprint() != DigitsDataset(image_size=16, n_images=21).fingerprint()


def test_load_dataset_dispatches_digits():
    ds = load_dataset(DataConfig(source="digits", n_images=30, image_size=16))
    assert isinstance(ds, DigitsDataset) and len(ds) == 30 and ds.image(0).shape == (16, 16, 3)
