"""Any Hugging Face dataset (hub id or local directory) as an `ImageDataset`.

Images are read undecoded (`Image(decode=False)`) and decoded one at a time through `load_rgb`, so one
corrupt file is a `BadImageError` for its index instead of an exception that ends the whole iteration.

Without network the hub libraries retry each request for ~23 s before giving up. We ask the hub once,
with a short timeout, before loading: when it cannot be reached, the load runs in offline mode, which
uses the local cache if the dataset is there and otherwise fails at once with a message that says how
to get the data here.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from ..config import ConfigError, DataConfig
from .base import BadImageError, Concept, DatasetUnavailableError, ImageDataset
from .images import load_rgb

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 3.0
_offline_lock = threading.Lock()
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


# --------------------------------------------------------------------------- reaching the hub
def _offline_mode() -> bool:
    import datasets.config
    from huggingface_hub import constants

    return bool(datasets.config.HF_HUB_OFFLINE or constants.is_offline_mode())


def hub_reachable(endpoint: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """True when `endpoint` answers HTTP at all (any status) within `timeout` seconds.

    Runs in a thread because a hanging DNS lookup ignores socket timeouts. urllib honours the
    HTTP(S)_PROXY variables, so a machine that reaches the hub through a proxy counts as online.
    """
    answer: list[bool] = []

    def probe() -> None:
        try:
            urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=timeout).close()
            answer.append(True)
        except urllib.error.HTTPError:
            answer.append(True)  # an error status still proves the server is there
        except Exception:  # noqa: BLE001 - any other failure means "not reachable"
            answer.append(False)

    t = threading.Thread(target=probe, name="hf-hub-probe", daemon=True)
    t.start()
    t.join(timeout + 0.5)
    return bool(answer and answer[0])


@contextlib.contextmanager
def _forced_offline():
    """Offline mode for one load. Both libraries read a module flag set from the environment at import
    time, so the flag itself is switched (under a lock, and restored) rather than the environment."""
    import datasets.config
    from huggingface_hub import constants

    with _offline_lock:
        saved = (datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE, constants.HF_HUB_OFFLINE)
        datasets.config.HF_HUB_OFFLINE = datasets.config.HF_DATASETS_OFFLINE = constants.HF_HUB_OFFLINE = True
        try:
            yield
        finally:
            (datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE, constants.HF_HUB_OFFLINE) = saved


def unavailable_message(dataset_id: str, split: str, reason: str, cache_dir: str) -> str:
    return (
        f"Hugging Face dataset {dataset_id!r} (split {split!r}) is not available: {reason}, and it is not in "
        f"the local datasets cache ({cache_dir}). To fix it, either "
        f"(1) on a machine with network run "
        f"`python -c \"import datasets; datasets.load_dataset('{dataset_id}', split='{split}')\"`, copy its "
        f"Hugging Face cache here and set HF_HOME to that folder; or "
        f"(2) run `hf download --repo-type dataset {dataset_id} --local-dir DIR` "
        f"(older huggingface_hub: `huggingface-cli download --repo-type dataset {dataset_id} --local-dir DIR`) "
        f"and set data.id=DIR; or "
        f"(3) use data.source=imagefolder with data.id=/path/to/folder holding one sub-folder per class."
    )


def _is_save_to_disk_dir(p: Path) -> bool:
    return (p / "dataset_dict.json").is_file() or ((p / "state.json").is_file() and (p / "dataset_info.json").is_file())


def _load_local(path: Path, split: str, cache_dir: str | None):
    import datasets

    if _is_save_to_disk_dir(path):
        # written by Dataset(Dict).save_to_disk: Arrow files plus JSON, which load_dataset does not read
        obj = datasets.load_from_disk(str(path))
        if isinstance(obj, datasets.DatasetDict):
            if split not in obj:
                raise ConfigError(f"data.split: {path} has no split {split!r}; its splits are: {', '.join(obj)}")
            return obj[split]
        return obj
    return datasets.load_dataset(str(path), split=split, cache_dir=cache_dir)


def _load(cfg: DataConfig, cache_dir: str | None):
    """Returns (dataset, how it was reached) or raises DatasetUnavailableError / ConfigError."""
    import datasets
    from datasets.exceptions import DataFilesNotFoundError, DatasetNotFoundError

    cache_shown = cache_dir or datasets.config.HF_DATASETS_CACHE
    local = Path(cfg.id).expanduser()
    try:
        if local.is_dir():
            try:
                return _load_local(local, cfg.split, cache_dir), "local"
            except (DataFilesNotFoundError, FileNotFoundError) as e:
                raise DatasetUnavailableError(f"{local} holds no data files that datasets can read "
                                              f"(parquet, arrow, csv/json, or an image folder): {e}") from e
        if _offline_mode():
            reason, offline = "offline mode is on (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set)", True
        elif not hub_reachable(datasets.config.HF_ENDPOINT):
            reason, offline = f"the Hugging Face Hub ({datasets.config.HF_ENDPOINT}) could not be reached", True
        else:
            reason, offline = "", False
        try:
            if offline:
                with _forced_offline():
                    return datasets.load_dataset(cfg.id, split=cfg.split, cache_dir=cache_dir), "cache"
            return datasets.load_dataset(cfg.id, split=cfg.split, cache_dir=cache_dir), "hub"
        except DatasetNotFoundError as e:
            raise DatasetUnavailableError(
                f"Hugging Face dataset {cfg.id!r} was not found: {e} Check the id (e.g. 'timm/oxford-iiit-pet'); "
                "for a gated or private dataset log in with `hf auth login` or set HF_TOKEN") from e
        except (ConnectionError, FileNotFoundError) as e:
            why = reason or f"the Hugging Face Hub could not be reached ({type(e).__name__})"
            raise DatasetUnavailableError(unavailable_message(cfg.id, cfg.split, why, str(cache_shown))) from e
    except ValueError as e:
        if "Unknown split" in str(e):
            raise ConfigError(f"data.split: {cfg.id} has no split {cfg.split!r} ({e})") from e
        raise


# --------------------------------------------------------------------------- the dataset
def _column_error(key: str, column: str, cfg: DataConfig, columns: list[str]) -> ConfigError:
    return ConfigError(f"{key}={column!r} is not a column of {cfg.id} (split {cfg.split!r}); "
                       f"its columns are: {', '.join(columns)}")


class HFDataset(ImageDataset):
    """A Hugging Face dataset split: images from `cfg.image_column`, one concept from `cfg.label_column`
    (named after the column; "" = no labels), captions from `cfg.caption_column` ("" = none).

    Label names come from the column's `ClassLabel` feature; any other column gets its sorted unique
    values as names (describe() says which). Missing labels (None, or ClassLabel's -1) are -1.
    `cfg.n_images` > 0 keeps the first n rows of the split (fewer if the split is shorter).
    `cache_dir` overrides the datasets cache for this load (tests, or a cache copied from elsewhere).
    """

    def __init__(self, cfg: DataConfig, cache_dir: str | os.PathLike | None = None):
        import datasets
        from datasets import ClassLabel, Value
        from datasets import Image as HFImage

        self.cfg, self.image_size, self.max_pixels = cfg, cfg.image_size, cfg.max_pixels
        self.name = "hf"
        ds, self.reached = _load(cfg, str(cache_dir) if cache_dir is not None else None)
        if isinstance(ds, (datasets.IterableDataset, datasets.IterableDatasetDict, datasets.DatasetDict)):
            raise ConfigError(f"{cfg.id} loaded as {type(ds).__name__}; a map-style split is needed")
        self._local_root = Path(cfg.id).expanduser() if Path(cfg.id).expanduser().is_dir() else None

        columns = list(ds.column_names)
        if cfg.image_column not in columns:
            raise _column_error("data.image_column", cfg.image_column, cfg, columns)
        for key, col in (("data.label_column", cfg.label_column), ("data.caption_column", cfg.caption_column)):
            if col and col not in columns:
                raise _column_error(key, col, cfg, columns)

        self.n_available = len(ds)
        if cfg.n_images and cfg.n_images < len(ds):
            ds = ds.select(range(cfg.n_images))
        elif cfg.n_images > len(ds):
            log.warning("%s split %s has %d rows; n_images=%d asks for more, using all", cfg.id, cfg.split,
                        len(ds), cfg.n_images)
        self.datasets_fingerprint = getattr(ds, "_fingerprint", None)
        self.revision = next((part for f in ds.cache_files for part in Path(f.get("filename", "")).parts
                              if _COMMIT.match(part)), None)
        self.info = ds.info

        feature = ds.features[cfg.image_column]
        if isinstance(feature, HFImage):
            ds = ds.cast_column(cfg.image_column, HFImage(decode=False))
        elif not (isinstance(feature, Value) and feature.dtype in ("string", "large_string", "binary", "large_binary")):
            raise ConfigError(f"data.image_column={cfg.image_column!r} of {cfg.id} holds {feature}; expected an "
                              "Image column, image file paths or encoded image bytes")
        self._images = ds.select_columns([cfg.image_column])
        arrow = ds.with_format("arrow")

        self._concepts: tuple[Concept, ...] = ()
        self._labels = np.zeros(0, np.int64)
        self.label_source = "none"
        if cfg.label_column:
            lf = ds.features[cfg.label_column]
            values = arrow[cfg.label_column].to_pylist()
            if isinstance(lf, ClassLabel):
                names = list(lf.names)
                self._labels = np.array([-1 if v is None else int(v) for v in values], dtype=np.int64)
                self.label_source = "ClassLabel"
            elif isinstance(lf, Value):
                present = sorted({v for v in values if v is not None}, key=lambda v: (type(v).__name__, v))
                names = [str(v) for v in present]
                index = {v: k for k, v in enumerate(present)}
                self._labels = np.array([-1 if v is None else index[v] for v in values], dtype=np.int64)
                self.label_source = "sorted unique values (column is not a ClassLabel)"
            else:
                raise ConfigError(f"data.label_column={cfg.label_column!r} of {cfg.id} holds {lf}; one class per "
                                  "image is needed (a ClassLabel, string or integer column)")
            self._concepts = (Concept(cfg.label_column, tuple(names)),)
        self._captions: list[str] | None = None
        if cfg.caption_column:
            self._captions = ["" if c is None else str(c) for c in arrow[cfg.caption_column].to_pylist()]
        self._n = len(ds)

    def __len__(self) -> int:
        return self._n

    def ids(self) -> list[str]:
        # position in the split; where the dataset lives is in describe(), so a moved copy keeps its ids
        return [f"{self.cfg.split}:{i}" for i in range(self._n)]

    def _source(self, value: Any) -> Any:
        if isinstance(value, dict) and value.get("bytes") is None:
            value = value.get("path")
        if isinstance(value, str):
            if "://" in value or "::" in value:
                from datasets.utils.file_utils import xopen

                try:
                    with xopen(value, "rb") as f:
                        return f.read()
                except Exception as e:  # a file that cannot be fetched is that image's problem only
                    raise BadImageError(f"{value}: could not be read ({type(e).__name__}: {e})") from e
            if self._local_root is not None and not os.path.isabs(value):
                return self._local_root / value
        if value is None:
            raise BadImageError("no image in this row (empty value)")
        return value

    def image(self, i: int) -> np.ndarray:
        if not 0 <= i < self._n:
            raise IndexError(f"index {i} out of range for {self._n} images")
        value = self._images[i][self.cfg.image_column]
        return load_rgb(self._source(value), self.image_size, self.max_pixels)

    @property
    def concepts(self) -> tuple[Concept, ...]:
        return self._concepts

    def labels(self, concept: str) -> np.ndarray:
        self.concept(concept)
        return self._labels

    def caption(self, i: int) -> str:
        if not 0 <= i < self._n:
            raise IndexError(f"index {i} out of range for {self._n} images")
        return self._captions[i] if self._captions is not None else ""

    def describe(self) -> dict:
        d = {"name": "hf", "id": self.cfg.id, "split": self.cfg.split,
             "columns": {"image": self.cfg.image_column, "label": self.cfg.label_column,
                         "caption": self.cfg.caption_column},
             "label_source": self.label_source, "n": self._n, "n_available": self.n_available,
             "image_size": self.image_size, "max_pixels": self.max_pixels, "version": 1}
        if self.datasets_fingerprint:
            d["datasets_fingerprint"] = self.datasets_fingerprint
        if self.revision:
            d["revision"] = self.revision
        if self.info is not None and self.info.config_name:
            d["config_name"] = self.info.config_name
        return d
