"""Hugging Face datasets: a tiny local dataset built with `datasets`, and the offline failure for a hub id."""
from __future__ import annotations

import io
import time

import numpy as np
import pytest
from PIL import Image

from revelio_svc.config import ConfigError, DataConfig
from revelio_svc.data import BadImageError, DatasetUnavailableError, load_dataset
from revelio_svc.data.hf import HFDataset

COLOURS = [(255, 0, 0), (0, 0, 255), None, (0, 255, 0)]  # None = a corrupt image


def png(colour) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (12, 8), colour).save(buf, "PNG")
    return buf.getvalue()


def rows():
    return {
        "image": [{"bytes": png(c) if c else b"definitely not an image", "path": None} for c in COLOURS],
        "label": [0, 1, 1, 0],
        "caption": ["a red thing", "a blue thing", None, "a green thing"],
        "breed": ["tabby", "beagle", "beagle", "abyssinian"],
    }


@pytest.fixture(scope="module")
def parquet_dir(tmp_path_factory):
    """A directory `datasets.load_dataset` opens like a hub repo: data/train-*.parquet."""
    from datasets import ClassLabel, Dataset, Features, Value
    from datasets import Image as HFImage

    features = Features({"image": HFImage(), "label": ClassLabel(names=["cat", "dog"]),
                         "caption": Value("string"), "breed": Value("string")})
    root = tmp_path_factory.mktemp("hfdata") / "tiny"
    (root / "data").mkdir(parents=True)
    Dataset.from_dict(rows(), features=features).to_parquet(str(root / "data" / "train-00000-of-00001.parquet"))
    return root


def cfg(root, **kw) -> DataConfig:
    base = {"source": "hf", "id": str(root), "split": "train", "n_images": 0, "image_size": 8,
            "caption_column": "caption"}
    base.update(kw)
    return DataConfig(**base)


def test_local_parquet_dataset_loads_labels_names_and_captions(parquet_dir, tmp_path):
    ds = HFDataset(cfg(parquet_dir), cache_dir=tmp_path / "cache")
    assert len(ds) == 4
    assert ds.label_names() == {"label": ["cat", "dog"]}
    assert ds.labels("label").tolist() == [0, 1, 1, 0] and ds.labels("label").dtype == np.int64
    assert [ds.caption(i) for i in range(4)] == ["a red thing", "a blue thing", "", "a green thing"]
    assert tuple(ds.image(0)[0, 0]) == (255, 0, 0)
    assert ds.image(1).shape == (8, 8, 3) and tuple(ds.image(1)[4, 4]) == (0, 0, 255)
    d = ds.describe()
    assert d["id"] == str(parquet_dir) and d["split"] == "train" and d["n"] == 4 and d["image_size"] == 8
    assert d["columns"] == {"image": "image", "label": "label", "caption": "caption"}
    assert d["label_source"] == "ClassLabel" and d.get("datasets_fingerprint")
    assert ds.ids() == ["train:0", "train:1", "train:2", "train:3"]


def test_a_bad_image_is_a_per_index_error_and_nothing_shifts(parquet_dir, tmp_path):
    ds = HFDataset(cfg(parquet_dir), cache_dir=tmp_path / "cache")
    with pytest.raises(BadImageError, match="not an image"):
        ds.image(2)
    assert tuple(ds.image(3)[0, 0]) == (0, 255, 0)
    assert ds.labels("label")[3] == 0 and ds.caption(3) == "a green thing"


def test_non_classlabel_column_uses_sorted_unique_values(parquet_dir, tmp_path):
    ds = HFDataset(cfg(parquet_dir, label_column="breed", caption_column=""), cache_dir=tmp_path / "cache")
    assert ds.label_names() == {"breed": ["abyssinian", "beagle", "tabby"]}
    assert ds.labels("breed").tolist() == [2, 1, 1, 0]
    assert "not a ClassLabel" in ds.describe()["label_source"]
    assert ds.caption(0) == ""


def test_first_n_images(parquet_dir, tmp_path):
    ds = HFDataset(cfg(parquet_dir, n_images=2), cache_dir=tmp_path / "cache")
    assert len(ds) == 2 and ds.labels("label").tolist() == [0, 1]
    assert ds.describe()["n_available"] == 4
    assert ds.fingerprint() != HFDataset(cfg(parquet_dir), cache_dir=tmp_path / "cache").fingerprint()


@pytest.mark.parametrize("key", ["image_column", "label_column", "caption_column"])
def test_missing_column_lists_the_columns_that_exist(parquet_dir, tmp_path, key):
    with pytest.raises(ConfigError, match=rf"data\.{key}='nope'.*columns are: image, label, caption, breed"):
        HFDataset(cfg(parquet_dir, **{key: "nope"}), cache_dir=tmp_path / "cache")


def test_unknown_split_is_named(parquet_dir, tmp_path):
    with pytest.raises(ConfigError, match="no split 'validation'"):
        HFDataset(cfg(parquet_dir, split="validation"), cache_dir=tmp_path / "cache")


def test_save_to_disk_directory_loads(tmp_path):
    from datasets import ClassLabel, Dataset, Features, Value
    from datasets import Image as HFImage

    features = Features({"image": HFImage(), "label": ClassLabel(names=["cat", "dog"]),
                         "caption": Value("string"), "breed": Value("string")})
    Dataset.from_dict(rows(), features=features).save_to_disk(str(tmp_path / "saved"))
    ds = load_dataset(cfg(tmp_path / "saved"))
    assert isinstance(ds, HFDataset) and ds.labels("label").tolist() == [0, 1, 1, 0]
    assert tuple(ds.image(1)[0, 0]) == (0, 0, 255)


def test_unknown_hub_id_offline_fails_at_once_with_instructions(tmp_path):
    t = time.perf_counter()
    with pytest.raises(DatasetUnavailableError) as e:
        HFDataset(cfg("nobody-here/no-such-dataset"), cache_dir=tmp_path / "cache")
    assert time.perf_counter() - t < 5.0
    msg = str(e.value)
    for needed in ("'nobody-here/no-such-dataset'", "offline mode", "not in the local datasets cache",
                   "load_dataset(", "--repo-type dataset nobody-here/no-such-dataset", "HF_HOME",
                   "data.source=imagefolder"):
        assert needed in msg, needed


def test_unreachable_hub_without_offline_flag_fails_at_once(tmp_path, monkeypatch):
    """No HF_*_OFFLINE and no network: the short probe must stop the ~23 s of retries."""
    import datasets.config
    from huggingface_hub import constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    # nothing listens on port 9 of this machine: the connection is refused at once
    monkeypatch.setattr(datasets.config, "HF_ENDPOINT", "http://127.0.0.1:9")
    t = time.perf_counter()
    with pytest.raises(DatasetUnavailableError, match=r"could not be reached.*HF_HOME"):
        HFDataset(cfg("nobody-here/no-such-dataset"), cache_dir=tmp_path / "cache")
    assert time.perf_counter() - t < 5.0
    assert datasets.config.HF_HUB_OFFLINE is False and constants.HF_HUB_OFFLINE is False  # restored


def test_local_folder_without_data_files_is_unavailable(tmp_path):
    (tmp_path / "nothing").mkdir()
    (tmp_path / "nothing" / "weights.bin").write_bytes(b"\0" * 16)  # no format datasets reads
    with pytest.raises(DatasetUnavailableError, match="no data files"):
        HFDataset(cfg(tmp_path / "nothing"), cache_dir=tmp_path / "cache")


def test_image_column_of_the_wrong_type_is_a_config_error(parquet_dir, tmp_path):
    with pytest.raises(ConfigError, match="expected an Image column"):
        HFDataset(cfg(parquet_dir, image_column="label"), cache_dir=tmp_path / "cache")



def test_cached_hub_dataset_loads_without_network(parquet_dir, tmp_path, monkeypatch):
    """A hub id whose prepared copy is in the datasets cache loads with no hub at all.

    The cache entry is made by loading the local copy and renaming its folder to the name datasets gives
    a hub id (`owner___name`), which is what a networked `load_dataset('me/tiny')` would have left."""
    import datasets.config
    from huggingface_hub import constants

    cache = tmp_path / "cache"
    HFDataset(cfg(parquet_dir), cache_dir=cache)
    (cache / parquet_dir.name).rename(cache / f"me___{parquet_dir.name}")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_ENDPOINT", "http://127.0.0.1:9")
    ds = HFDataset(cfg(f"me/{parquet_dir.name}"), cache_dir=cache)
    assert ds.reached == "cache"
    assert ds.labels("label").tolist() == [0, 1, 1, 0] and ds.caption(0) == "a red thing"
    assert tuple(ds.image(1)[0, 0]) == (0, 0, 255)


def test_local_image_folder_through_datasets_keeps_bad_files_per_index(tmp_path):
    # datasets reads a folder of class sub-folders as its imagefolder builder: ClassLabel + image paths
    for name, colour in (("cat/a.png", (255, 0, 0)), ("dog/b.png", (0, 0, 255))):
        (tmp_path / "imgs" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (9, 9), colour).save(tmp_path / "imgs" / name)
    (tmp_path / "imgs" / "dog" / "c.png").write_bytes(b"junk")
    ds = HFDataset(cfg(tmp_path / "imgs", caption_column=""), cache_dir=tmp_path / "cache")
    assert ds.label_names() == {"label": ["cat", "dog"]} and ds.labels("label").tolist() == [0, 1, 1]
    assert tuple(ds.image(1)[0, 0]) == (0, 0, 255)
    with pytest.raises(BadImageError, match="c.png"):
        ds.image(2)
