"""What every dataset provides: stable ids, RGB images at one size, integer labels per concept."""
from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np


class BadImageError(ValueError):
    """An image could not be decoded or converted; the extractor skips it and records why."""


class DatasetUnavailableError(RuntimeError):
    """A dataset could not be loaded (no network, not cached, wrong id); the message says what to do."""


@dataclass(frozen=True)
class Concept:
    name: str
    classes: tuple[str, ...]


class ImageDataset(ABC):
    """Indexable images with labels.

    `image(i)` returns an `(image_size, image_size, 3)` uint8 array or raises `BadImageError`; labels and ids
    never depend on whether an image decodes, so skipping one never shifts any other index.
    """

    name: str
    image_size: int

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def image(self, i: int) -> np.ndarray: ...

    @property
    @abstractmethod
    def concepts(self) -> tuple[Concept, ...]: ...

    @abstractmethod
    def labels(self, concept: str) -> np.ndarray:
        """int64 label per image for one concept."""

    def ids(self) -> list[str]:
        return [f"{self.name}:{i}" for i in range(len(self))]

    def caption(self, i: int) -> str:
        return ""

    def describe(self) -> dict:
        """What identifies the images (source, split, preprocessing); hashed into the fingerprint."""
        return {"name": self.name, "n": len(self), "image_size": self.image_size}

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        h.update(json.dumps(self.describe(), sort_keys=True, default=str).encode())
        for s in self.ids():
            h.update(s.encode())
            h.update(b"\0")
        return h.hexdigest()[:16]

    def concept(self, name: str) -> Concept:
        for c in self.concepts:
            if c.name == name:
                return c
        raise KeyError(f"unknown concept {name!r}; this dataset has: {', '.join(c.name for c in self.concepts)}")

    def label_names(self) -> dict[str, list[str]]:
        return {c.name: list(c.classes) for c in self.concepts}

    def all_labels(self) -> dict[str, np.ndarray]:
        return {c.name: self.labels(c.name) for c in self.concepts}

    def images(self, indices) -> np.ndarray:
        return np.stack([self.image(int(i)) for i in indices])
