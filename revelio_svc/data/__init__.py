"""Datasets: every source becomes an `ImageDataset` (stable ids, RGB uint8 images, integer labels)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..config import DataConfig
from .base import BadImageError, Concept, DatasetUnavailableError, ImageDataset
from .digits import DigitsDataset
from .folder import ImageFolderDataset
from .images import load_rgb
from .shapes import ShapesDataset
from .splits import FewShotShortfall, assign_split, few_shot_indices, train_test_indices

if TYPE_CHECKING:
    from .hf import HFDataset

__all__ = [
    "BadImageError", "Concept", "DatasetUnavailableError", "DigitsDataset", "FewShotShortfall", "HFDataset",
    "ImageDataset", "ImageFolderDataset", "ShapesDataset", "assign_split", "few_shot_indices", "load_dataset",
    "load_rgb", "train_test_indices",
]


def load_dataset(cfg: DataConfig) -> ImageDataset:
    """The dataset `cfg` describes. shapes with n_images=0 draws 2000 images (it has no natural size)."""
    if cfg.source == "shapes":
        return ShapesDataset(n=cfg.n_images or 2000, image_size=cfg.image_size, seed=cfg.seed)
    if cfg.source == "digits":
        return DigitsDataset(image_size=cfg.image_size, n_images=cfg.n_images)
    if cfg.source == "imagefolder":
        return ImageFolderDataset(cfg.id, image_size=cfg.image_size, n_images=cfg.n_images,
                                  max_pixels=cfg.max_pixels, split=cfg.split)
    if cfg.source == "hf":
        from .hf import HFDataset

        return HFDataset(cfg)
    raise ValueError(f"data.source={cfg.source!r} is not one of: shapes, digits, hf, imagefolder")


def __getattr__(name: str) -> Any:
    # importing `datasets` takes seconds; only pay for it when HFDataset is used
    if name == "HFDataset":
        from .hf import HFDataset

        return HFDataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
