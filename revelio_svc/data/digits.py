"""scikit-learn's handwritten digits: a real (if tiny) image dataset that ships inside the package, so it
works offline. 8x8 grey images with values 0..16 become RGB uint8 at `image_size`."""
from __future__ import annotations

import logging

import numpy as np

from .base import Concept, ImageDataset
from .images import load_rgb

log = logging.getLogger(__name__)

CLASSES = tuple(str(d) for d in range(10))
_MAX_VALUE = 16.0  # load_digits counts set pixels in 4x4 blocks: 0..16


class DigitsDataset(ImageDataset):
    """The first `n_images` of the 1797 digits (0 = all); one concept, "label", with classes "0".."9"."""

    def __init__(self, image_size: int = 32, n_images: int = 0):
        if n_images < 0:
            raise ValueError(f"digits needs n_images >= 0 (0 = all), got {n_images}")
        from sklearn.datasets import load_digits

        bunch = load_digits()
        total = len(bunch.target)
        if n_images > total:
            log.warning("digits has %d images; n_images=%d asks for more, using all %d", total, n_images, total)
        self.n = min(n_images, total) if n_images else total
        self.image_size = image_size
        self.name = "digits"
        self._pixels = np.round(bunch.images[: self.n] * (255.0 / _MAX_VALUE)).astype(np.uint8)
        self._labels = bunch.target[: self.n].astype(np.int64)

    def __len__(self) -> int:
        return self.n

    def image(self, i: int) -> np.ndarray:
        if not 0 <= i < self.n:
            raise IndexError(f"index {i} out of range for {self.n} images")
        # max_pixels only guards decoding untrusted files; an 8x8 array needs no limit
        return load_rgb(self._pixels[i], self.image_size, max_pixels=64)

    @property
    def concepts(self) -> tuple[Concept, ...]:
        return (Concept("label", CLASSES),)

    def labels(self, concept: str) -> np.ndarray:
        self.concept(concept)
        return self._labels

    def describe(self) -> dict:
        return {"name": "digits", "source": "sklearn.datasets.load_digits", "n": self.n,
                "image_size": self.image_size, "version": 1}
