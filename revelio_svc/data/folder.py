"""A folder of images with one sub-folder per class: the offline way to bring your own data.

    root/
      cat/001.jpg
      cat/more/002.png      (nested folders inside a class are included)
      dog/003.jpg

Classes are the sorted names of the sub-folders that hold at least one image; files are listed once,
sorted, and decoded only when asked for, so a bad file raises `BadImageError` from `image(i)` while every
id and label stays where it was.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from .base import Concept, DatasetUnavailableError, ImageDataset
from .images import load_rgb
from .splits import stable_unit

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".tif", ".tiff",
                              ".webp", ".ppm", ".pgm", ".pbm", ".pnm"})
SPLIT_NAMES = frozenset({"train", "test", "val", "valid", "validation", "dev"})


def _hidden(name: str) -> bool:
    return name.startswith(".")


def _image_files(class_dir: Path) -> list[Path]:
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(class_dir):
        dirnames[:] = [d for d in dirnames if not _hidden(d)]  # prune .git, .thumbnails, ...
        for f in filenames:
            if not _hidden(f) and os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS:
                found.append(Path(dirpath) / f)
    return found


def _subdirs(p: Path) -> list[Path]:
    return sorted((d for d in p.iterdir() if d.is_dir() and not _hidden(d.name)), key=lambda d: d.name)


class ImageFolderDataset(ImageDataset):
    """Images under `root/<class>/...`; ids are paths relative to the class root, in POSIX form.

    `split`: when every sub-folder of `root` is a split name (train, test, val, validation, ...), the
    classes are read from `root/<split>`; otherwise `root` itself holds the classes (so a class that
    happens to be called "train" is still a class).
    `n_images` > 0 keeps that many files, chosen by a hash of their path: an even spread over the
    classes that does not depend on the listing order (taking the first n sorted files would keep only
    the first classes).
    """

    def __init__(self, root: str | os.PathLike, image_size: int = 32, n_images: int = 0,
                 max_pixels: int = 50_000_000, split: str = ""):
        if n_images < 0:
            raise ValueError(f"imagefolder needs n_images >= 0 (0 = all), got {n_images}")
        root = Path(root).expanduser()
        if not root.is_dir():
            what = "is a file, not a folder" if root.exists() else "does not exist"
            raise DatasetUnavailableError(f"image folder {root} {what}; data.id must name a folder with one "
                                          "sub-folder per class (root/<class>/<image files>)")
        self.root, self.split = root, ""
        dirs = _subdirs(root)
        if split and dirs and all(d.name.lower() in SPLIT_NAMES for d in dirs):
            if not (root / split).is_dir():
                raise DatasetUnavailableError(f"image folder {root} has splits {', '.join(d.name for d in dirs)} "
                                              f"but no {split!r}; set data.split to one of them")
            self.split, self.class_root = split, root / split
            dirs = _subdirs(self.class_root)
        else:
            self.class_root = root

        per_class = [(d.name, sorted(_image_files(d))) for d in dirs]
        per_class = [(name, files) for name, files in per_class if files]
        if not per_class:
            loose = [f for f in root.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS]
            hint = (f"; it holds {len(loose)} image files directly, but each class needs its own sub-folder"
                    if loose else "")
            raise DatasetUnavailableError(
                f"image folder {self.class_root} has no class sub-folder with image files "
                f"({', '.join(sorted(IMAGE_EXTENSIONS))}){hint}")

        self._classes = tuple(name for name, _ in per_class)
        files = [(f, k) for k, (_, fs) in enumerate(per_class) for f in fs]
        self.n_files = len(files)
        if n_images and n_images < len(files):
            rel = [f.relative_to(self.class_root).as_posix() for f, _ in files]
            keep = set(sorted(range(len(files)), key=lambda j: (stable_unit(0, rel[j], salt="subset"), rel[j]))
                       [:n_images])
            files = [x for j, x in enumerate(files) if j in keep]
        self._files = [f for f, _ in files]
        self._ids = [f.relative_to(self.class_root).as_posix() for f in self._files]
        self._labels = np.array([k for _, k in files], dtype=np.int64)
        self.image_size, self.max_pixels = image_size, max_pixels
        self.name = "imagefolder"
        # names and sizes identify the content; the absolute root would make a copied folder look new
        h = hashlib.sha256()
        for rel, f in zip(self._ids, self._files):
            h.update(f"{rel}\0{f.stat().st_size}\0".encode())
        self._digest = h.hexdigest()[:16]

    def __len__(self) -> int:
        return len(self._files)

    def image(self, i: int) -> np.ndarray:
        if not 0 <= i < len(self._files):
            raise IndexError(f"index {i} out of range for {len(self._files)} images")
        return load_rgb(self._files[i], self.image_size, self.max_pixels)

    def path(self, i: int) -> Path:
        return self._files[i]

    def ids(self) -> list[str]:
        return list(self._ids)

    @property
    def concepts(self) -> tuple[Concept, ...]:
        return (Concept("label", self._classes),)

    def labels(self, concept: str) -> np.ndarray:
        self.concept(concept)
        return self._labels

    def describe(self) -> dict:
        return {"name": "imagefolder", "folder": self.root.name, "split": self.split, "classes": list(self._classes),
                "n": len(self), "n_files": self.n_files, "image_size": self.image_size,
                "max_pixels": self.max_pixels, "files_digest": self._digest, "version": 1}
