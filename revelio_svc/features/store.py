"""The feature store: a manifest plus fixed-range shards, the contract between extract and every later stage.

The normative description is docs/feature-store.md; any divergence in this code is a bug.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

FORMAT = "revelio-feature-store"
VERSION = 1
MANIFEST = "manifest.json"
ROWS = "rows"


class StoreError(RuntimeError):
    pass


class StoreMismatchError(StoreError):
    """The store at the path was written for another config or dataset; it is never mixed."""


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def set_key(hook_point: str, timestep: int, pooling: str) -> str:
    return f"{hook_point}/t{timestep}/{pooling}"


def parse_set_key(key: str) -> tuple[str, int, str]:
    m = re.fullmatch(r"(.+)/t(\d+)/(mean|max|tokens)", key)
    if not m:
        raise StoreError(f"malformed feature-set key {key!r}")
    return m.group(1), int(m.group(2)), m.group(3)


def shard_name(i: int) -> str:
    return f"shard-{i:05d}.safetensors"


# --------------------------------------------------------------------------- backends
class LocalBackend:
    """Files under a directory; writes are atomic (temp file + rename) so a kill never leaves half a file."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.uri = str(self.root)

    def exists(self, rel: str) -> bool:
        return (self.root / rel).is_file()

    def read(self, rel: str) -> bytes:
        return (self.root / rel).read_bytes()

    def write(self, rel: str, data: bytes) -> None:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def local_path(self, rel: str) -> Path | None:
        return self.root / rel

    def remove_stale_temp(self) -> int:
        """Delete temp files a killed writer left behind (`<name>.<pid>.tmp`); returns how many."""
        n = 0
        if self.root.is_dir():
            for p in self.root.rglob("*.tmp"):
                if re.fullmatch(r".+\.\d+\.tmp", p.name):
                    p.unlink(missing_ok=True)
                    n += 1
        return n


def backend_for(uri: str | Path):
    s = str(uri)
    if s.startswith("s3://"):
        from .s3 import S3Backend
        return S3Backend(s)
    if s.startswith("file://"):
        s = s[len("file://"):]
    return LocalBackend(s)


# --------------------------------------------------------------------------- manifest
def new_manifest(config: dict[str, Any], config_hash: str, n_images: int, shard_size: int,
                 label_names: dict[str, list[str]], feature_sets: dict[str, dict]) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "version": VERSION,
        "config_hash": config_hash,
        "config": config,
        "n_images": n_images,
        "shard_size": shard_size,
        "n_shards": (n_images + shard_size - 1) // shard_size,
        "label_names": label_names,
        "feature_sets": feature_sets,
        "shards": {},
        "complete": False,
    }


def diff_configs(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for k in sorted(set(a) | set(b)):
            out += diff_configs(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else k)
        return out
    return [] if a == b else [f"{prefix}: store has {a!r}, request has {b!r}"]


# --------------------------------------------------------------------------- writer
class StoreWriter:
    """Creates or resumes a store; a shard becomes visible only once all its files are written."""

    def __init__(self, uri: str | Path, manifest: dict[str, Any]):
        self.backend = backend_for(uri)
        self.uri = str(uri)
        if self.backend.exists(MANIFEST):
            existing = json.loads(self.backend.read(MANIFEST))
            if existing.get("config_hash") != manifest["config_hash"]:
                diffs = diff_configs(existing.get("config"), manifest["config"])
                raise StoreMismatchError(
                    f"the feature store at {self.uri} was written for another configuration "
                    f"(config hash {existing.get('config_hash')} vs {manifest['config_hash']}); it is not mixed "
                    f"with new features. Differences: {'; '.join(diffs[:8]) or 'format'}. Use a new "
                    f"extract.store path (or leave it empty to get one named by the config hash).")
            self.manifest = existing
            # a killed writer may have left half-written temp files; they are never part of the store
            cleanup = getattr(self.backend, "remove_stale_temp", None)
            if cleanup is not None:
                cleanup()
        else:
            self.manifest = manifest
            self._write_manifest()

    @property
    def done(self) -> set[int]:
        return {int(k) for k in self.manifest["shards"]}

    def _write_manifest(self) -> None:
        self.backend.write(MANIFEST, json.dumps(self.manifest, indent=1, sort_keys=True).encode())

    def write_shard(self, i: int, rows: dict[str, np.ndarray], sets: dict[str, np.ndarray],
                    skipped: list[dict[str, Any]]) -> None:
        files: dict[str, str] = {}
        n = int(len(rows["index"]))
        for key, arr in sets.items():
            if len(arr) != n:
                raise StoreError(f"shard {i}: feature set {key} has {len(arr)} rows, expected {n}")
            blob = st_save({"features": np.ascontiguousarray(arr)})
            rel = f"{key}/{shard_name(i)}"
            self.backend.write(rel, blob)
            files[key] = sha256(blob)
        blob = st_save({k: np.ascontiguousarray(v) for k, v in rows.items()})
        self.backend.write(f"{ROWS}/{shard_name(i)}", blob)
        files[ROWS] = sha256(blob)
        self.manifest["shards"][str(i)] = {"n_rows": n, "sha256": files, "skipped": skipped}
        self.manifest["complete"] = len(self.manifest["shards"]) == self.manifest["n_shards"]
        self._write_manifest()


# --------------------------------------------------------------------------- reader
@dataclass
class FeatureSet:
    """The features of one (hook point, timestep, pooling), read shard by shard."""

    store: "FeatureStore"
    key: str

    @property
    def hook_point(self) -> str:
        return parse_set_key(self.key)[0]

    @property
    def timestep(self) -> int:
        return parse_set_key(self.key)[1]

    @property
    def pooling(self) -> str:
        return parse_set_key(self.key)[2]

    @property
    def shape(self) -> tuple[int, ...]:
        """Per-row shape: (C,) for mean/max, (H, W, C) for tokens."""
        return tuple(self.store.manifest["feature_sets"][self.key]["shape"])

    @property
    def dim(self) -> int:
        return int(self.shape[-1])

    @property
    def n_rows(self) -> int:
        return self.store.n_rows

    def shard(self, i: int) -> np.ndarray:
        return self.store._read(f"{self.key}/{shard_name(i)}", self.key, i)["features"]

    def iter_shards(self, order: list[int] | None = None) -> Iterator[tuple[int, np.ndarray]]:
        for i in order if order is not None else self.store.shard_ids:
            yield i, self.shard(i)

    def load(self, dtype=np.float32) -> np.ndarray:
        """Every row in store order (fine for pooled sets; token sets may not fit in memory)."""
        parts = [a for _, a in self.iter_shards()]
        if not parts:
            return np.zeros((0, *self.shape), dtype)
        return np.concatenate(parts).astype(dtype, copy=False)


class FeatureStore:
    """Read side of a store. Rows are the images that decoded, in dataset-index order."""

    def __init__(self, uri: str | Path, verify: bool = False):
        self.uri = str(uri)
        self.backend = backend_for(uri)
        if not self.backend.exists(MANIFEST):
            raise StoreError(f"no feature store at {self.uri} (missing {MANIFEST})")
        self.manifest = json.loads(self.backend.read(MANIFEST))
        if self.manifest.get("format") != FORMAT:
            raise StoreError(f"{self.uri} is not a revelio feature store")
        if self.manifest.get("version") != VERSION:
            raise StoreError(f"{self.uri} has store version {self.manifest.get('version')}; "
                             f"this revelio reads version {VERSION}")
        self.verify = verify
        self._rows: dict[str, np.ndarray] | None = None

    # metadata ---------------------------------------------------------------
    @property
    def complete(self) -> bool:
        return bool(self.manifest["complete"])

    @property
    def shard_ids(self) -> list[int]:
        return sorted(int(k) for k in self.manifest["shards"])

    @property
    def n_rows(self) -> int:
        return sum(s["n_rows"] for s in self.manifest["shards"].values())

    @property
    def label_names(self) -> dict[str, list[str]]:
        return self.manifest["label_names"]

    @property
    def config(self) -> dict[str, Any]:
        return self.manifest["config"]

    @property
    def skipped(self) -> list[dict[str, Any]]:
        return [s for k in sorted(self.manifest["shards"], key=int) for s in self.manifest["shards"][k]["skipped"]]

    def keys(self) -> list[str]:
        return sorted(self.manifest["feature_sets"])

    def feature_set(self, hook_point: str, timestep: int, pooling: str) -> FeatureSet:
        key = set_key(hook_point, timestep, pooling)
        if key not in self.manifest["feature_sets"]:
            raise KeyError(f"the store at {self.uri} has no features for {key}; it has: {', '.join(self.keys())}")
        return FeatureSet(self, key)

    # rows -------------------------------------------------------------------
    def _read(self, rel: str, key: str, i: int) -> dict[str, np.ndarray]:
        if str(i) not in self.manifest["shards"]:
            raise StoreError(f"shard {i} of {self.uri} is not complete")
        blob = self.backend.read(rel)
        if self.verify:
            want = self.manifest["shards"][str(i)]["sha256"][key]
            if sha256(blob) != want:
                raise StoreError(f"checksum mismatch for {rel} in {self.uri}: the file is corrupt")
        return st_load(blob)

    def rows(self, i: int) -> dict[str, np.ndarray]:
        return self._read(f"{ROWS}/{shard_name(i)}", ROWS, i)

    def _all_rows(self) -> dict[str, np.ndarray]:
        if self._rows is None:
            parts = [self.rows(i) for i in self.shard_ids]
            keys = parts[0].keys() if parts else ["index", "split"]
            self._rows = {k: np.concatenate([p[k] for p in parts]) if parts else np.zeros(0, np.int64) for k in keys}
        return self._rows

    def index(self) -> np.ndarray:
        """Dataset index of every row."""
        return self._all_rows()["index"]

    def is_test(self) -> np.ndarray:
        return self._all_rows()["split"].astype(bool)

    def labels(self, concept: str) -> np.ndarray:
        key = f"label.{concept}"
        rows = self._all_rows()
        if key not in rows:
            raise KeyError(f"the store has no labels for concept {concept!r}; it has: {', '.join(self.label_names)}")
        return rows[key]

    def verify_all(self) -> None:
        """Re-read every file and compare its checksum with the manifest."""
        for k, s in self.manifest["shards"].items():
            for key, want in s["sha256"].items():
                rel = f"{key}/{shard_name(int(k))}"
                if sha256(self.backend.read(rel)) != want:
                    raise StoreError(f"checksum mismatch for {rel} in {self.uri}")


def open_store(uri: str | Path, verify: bool = False) -> FeatureStore:
    """Open a feature store: a local directory, file:// or s3:// URI."""
    return FeatureStore(uri, verify=verify)
