"""Image folders: sorted classes and files, lazy decoding, bad files never shift ids or labels."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from revelio_svc.config import DataConfig
from revelio_svc.data import (
    BadImageError,
    DatasetUnavailableError,
    ImageFolderDataset,
    load_dataset,
)


def write_png(path, colour, size=(12, 10)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


@pytest.fixture()
def folder(tmp_path):
    root = tmp_path / "pets"
    write_png(root / "dog" / "b.png", (0, 0, 255))
    write_png(root / "dog" / "a.png", (0, 0, 200))
    write_png(root / "cat" / "2.png", (255, 0, 0))
    (root / "cat" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")  # bad file, first in its class
    (root / "cat" / "3.jpg").write_text("not a jpeg")  # bad file, last in its class
    write_png(root / "cat" / "nested" / "4.png", (200, 0, 0))
    write_png(root / "cat" / ".hidden.png", (0, 255, 0))  # hidden: ignored
    (root / "cat" / "notes.txt").write_text("ignored: not an image extension")
    write_png(root / ".cache" / "x.png", (0, 255, 0))  # hidden class folder: ignored
    (root / "empty").mkdir()  # no images: not a class
    return root


def test_classes_ids_and_labels(folder):
    ds = ImageFolderDataset(folder, image_size=8)
    assert ds.label_names() == {"label": ["cat", "dog"]}
    assert ds.ids() == ["cat/1.png", "cat/2.png", "cat/3.jpg", "cat/nested/4.png", "dog/a.png", "dog/b.png"]
    assert ds.labels("label").tolist() == [0, 0, 0, 0, 1, 1]


def test_bad_files_raise_per_index_and_do_not_shift_anything(folder):
    ds = ImageFolderDataset(folder, image_size=8)
    ids, labels = ds.ids(), ds.labels("label").copy()
    with pytest.raises(BadImageError, match="1.png"):
        ds.image(0)
    with pytest.raises(BadImageError, match="3.jpg"):
        ds.image(2)
    # neighbours of the bad files decode to their own colours
    assert tuple(ds.image(1)[0, 0]) == (255, 0, 0)
    assert tuple(ds.image(3)[0, 0]) == (200, 0, 0)
    assert tuple(ds.image(5)[0, 0]) == (0, 0, 255)
    assert ds.image(4).shape == (8, 8, 3)
    assert ds.ids() == ids and np.array_equal(ds.labels("label"), labels)


def test_missing_empty_and_flat_folders_are_clear_errors(tmp_path):
    with pytest.raises(DatasetUnavailableError, match="does not exist"):
        ImageFolderDataset(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetUnavailableError, match="no class sub-folder"):
        ImageFolderDataset(tmp_path / "empty")
    write_png(tmp_path / "flat" / "a.png", (1, 2, 3))
    with pytest.raises(DatasetUnavailableError, match="each class needs its own sub-folder"):
        ImageFolderDataset(tmp_path / "flat")


def test_split_folders_and_a_class_named_train(tmp_path):
    write_png(tmp_path / "s" / "train" / "cat" / "a.png", (1, 1, 1))
    write_png(tmp_path / "s" / "test" / "dog" / "b.png", (2, 2, 2))
    assert ImageFolderDataset(tmp_path / "s", split="test").label_names() == {"label": ["dog"]}
    with pytest.raises(DatasetUnavailableError, match="no 'validation'"):
        ImageFolderDataset(tmp_path / "s", split="validation")
    # "train" next to a non-split folder is a class, not a split
    write_png(tmp_path / "v" / "train" / "a.png", (1, 1, 1))
    write_png(tmp_path / "v" / "bus" / "b.png", (2, 2, 2))
    assert ImageFolderDataset(tmp_path / "v", split="train").label_names() == {"label": ["bus", "train"]}


def test_n_images_spreads_over_classes_and_is_stable(tmp_path):
    for c in ("a", "b", "c"):
        for j in range(20):
            (tmp_path / "r" / c).mkdir(parents=True, exist_ok=True)
            (tmp_path / "r" / c / f"{j:02d}.png").write_bytes(b"")  # content is never read here
    sub = ImageFolderDataset(tmp_path / "r", n_images=15)
    assert len(sub) == 15 and sub.n_files == 60
    assert set(sub.labels("label").tolist()) == {0, 1, 2}
    assert sub.ids() == ImageFolderDataset(tmp_path / "r", n_images=15).ids()
    assert set(sub.ids()) <= set(ImageFolderDataset(tmp_path / "r", n_images=30).ids())


def test_fingerprint_follows_content_not_location(folder, tmp_path):
    import shutil

    a = ImageFolderDataset(folder, image_size=8)
    copy = tmp_path / "elsewhere" / "pets"
    shutil.copytree(folder, copy)
    assert ImageFolderDataset(copy, image_size=8).fingerprint() == a.fingerprint()
    write_png(copy / "dog" / "b.png", (0, 0, 255), size=(40, 40))  # same name, other content
    assert ImageFolderDataset(copy, image_size=8).fingerprint() != a.fingerprint()
    assert ImageFolderDataset(folder, image_size=16).fingerprint() != a.fingerprint()


def test_load_dataset_dispatches_imagefolder(folder):
    ds = load_dataset(DataConfig(source="imagefolder", id=str(folder), n_images=0, image_size=8))
    assert isinstance(ds, ImageFolderDataset) and len(ds) == 6
