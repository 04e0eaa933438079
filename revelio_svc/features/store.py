"""The feature store: a manifest plus fixed-range shards, the contract between extract and every later stage.

The normative description is docs/feature-store.md; any divergence in this code is a bug.
"""
from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from .backends import backend_for
from .errors import StoreError, StoreMismatchError
from .manifest import (
    MANIFEST,
    PARTS,
    FeatureSetSpec,
    Manifest,
    ShardEntry,
    part_from_bytes,
    part_name,
    part_to_bytes,
)

ROWS = "rows"


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


# --------------------------------------------------------------------------- manifest
def new_manifest(config: dict[str, Any], config_hash: str, n_images: int, shard_size: int,
                 label_names: dict[str, list[str]], feature_sets: dict[str, dict]) -> Manifest:
    """An empty store's manifest; `feature_sets`: key → {hook_point, timestep, pooling, shape, dtype}."""
    specs = {k: FeatureSetSpec(v["hook_point"], int(v["timestep"]), v["pooling"], tuple(int(x) for x in v["shape"]),
                               v.get("dtype", "float32")) for k, v in feature_sets.items()}
    return Manifest(config_hash=config_hash, config=config, n_images=n_images, shard_size=shard_size,
                    label_names=label_names, feature_sets=specs)


def diff_configs(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for k in sorted(set(a) | set(b)):
            out += diff_configs(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else k)
        return out
    return [] if a == b else [f"{prefix}: store has {a!r}, request has {b!r}"]


# --------------------------------------------------------------------------- writer
class StoreWriter:
    """Creates or resumes a store; a shard becomes visible only once all its files are written.

    `part=None` (one process, or rank 0 of a distributed extraction) owns `manifest.json`: it folds in
    any manifest parts left by ranks of an earlier launch and cleans up temp files. `part=r` is rank r
    of a distributed extraction joining a store rank 0 opened: it records its shards in its own part
    (`_parts/rank-<r>.json`), which rank 0 folds into the manifest (`fold_parts`).
    """

    def __init__(self, uri: str | Path, manifest: Manifest, part: int | None = None):
        self.backend = backend_for(uri)
        self.uri = str(uri)
        self.part = part
        self._part_shards: dict[int, ShardEntry] = {}
        if part is not None:
            if not self.backend.exists(MANIFEST):
                raise StoreError(f"rank {part}: no manifest at {self.uri}; rank 0 creates it before the others join")
            self.manifest = Manifest.from_bytes(self.backend.read(MANIFEST), self.uri)
            if self.manifest.config_hash != manifest.config_hash:
                raise StoreMismatchError(f"rank {part}: the store at {self.uri} has config hash "
                                         f"{self.manifest.config_hash}, this rank computes {manifest.config_hash}; "
                                         "every rank must run the same configuration")
        elif self.backend.exists(MANIFEST):
            existing = Manifest.from_bytes(self.backend.read(MANIFEST), self.uri)
            if existing.config_hash != manifest.config_hash:
                diffs = diff_configs(existing.config, manifest.config)
                raise StoreMismatchError(
                    f"the feature store at {self.uri} was written for another configuration "
                    f"(config hash {existing.config_hash} vs {manifest.config_hash}); it is not mixed "
                    f"with new features. Differences: {'; '.join(diffs[:8]) or 'format'}. Use a new "
                    f"extract.store path (or leave it empty to get one named by the config hash).")
            self.manifest = existing
            # a killed writer may have left half-written temp files; they are never part of the store
            cleanup = getattr(self.backend, "remove_stale_temp", None)
            if cleanup is not None:
                cleanup()
            # shards a killed distributed launch finished are kept, not recomputed
            self.fold_parts()
        else:
            self.manifest = manifest
            self._write_manifest()

    @property
    def done(self) -> set[int]:
        return set(self.manifest.shards)

    def _write_manifest(self) -> None:
        self.backend.write(MANIFEST, self.manifest.to_bytes())

    def write_shard_files(self, i: int, rows: dict[str, np.ndarray], sets: dict[str, np.ndarray],
                          skipped: list[dict[str, Any]]) -> ShardEntry:
        """Write a shard's files (not the manifest); returns the entry that makes it visible."""
        files: dict[str, str] = {}
        n = int(len(rows["index"]))
        for key, arr in sets.items():
            if len(arr) != n:
                raise StoreError(f"shard {i}: feature set {key} has {len(arr)} rows, expected {n}")
            blob = st_save({"features": np.ascontiguousarray(arr)})
            self.backend.write(f"{key}/{shard_name(i)}", blob)
            files[key] = sha256(blob)
        blob = st_save({k: np.ascontiguousarray(v) for k, v in rows.items()})
        self.backend.write(f"{ROWS}/{shard_name(i)}", blob)
        files[ROWS] = sha256(blob)
        return ShardEntry(n, files, tuple(skipped))

    def add_shard(self, i: int, entry: ShardEntry) -> None:
        self.manifest = self.manifest.with_shard(i, entry)
        if self.part is None:
            self._write_manifest()
        else:
            self._part_shards[i] = entry
            self.backend.write(part_name(self.part), part_to_bytes(self.manifest.config_hash, self.part,
                                                                  self._part_shards))

    def fold_parts(self) -> int:
        """Merge every manifest part into the manifest, write it, then delete the parts (in that order, so
        a kill in between loses nothing). Returns the number of shards the parts added."""
        if self.part is not None:
            raise StoreError(f"rank {self.part} may not write the manifest; rank 0 folds the parts")
        names = self.backend.list(PARTS)
        if not names:
            return 0
        before = len(self.manifest.shards)
        for name in names:
            where = f"{self.uri}/{name}"
            self.manifest = self.manifest.merged(part_from_bytes(self.backend.read(name), self.manifest.config_hash,
                                                                 where), where)
        self._write_manifest()
        for name in names:
            self.backend.delete(name)
        return len(self.manifest.shards) - before

    def reload(self) -> None:
        """Re-read the manifest (a rank other than 0, after rank 0 folded the parts)."""
        self.manifest = Manifest.from_bytes(self.backend.read(MANIFEST), self.uri)

    def write_shard(self, i: int, rows: dict[str, np.ndarray], sets: dict[str, np.ndarray],
                    skipped: list[dict[str, Any]]) -> None:
        self.add_shard(i, self.write_shard_files(i, rows, sets, skipped))


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
        return self.spec.shape

    @property
    def spec(self) -> FeatureSetSpec:
        return self.store.manifest.feature_sets[self.key]

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
            raise StoreError(f"no feature store at {self.uri} (missing {MANIFEST}); `revelio extract` with the same "
                             "--config and options writes it (`revelio run` does too), or point sae.store / "
                             "probe.store at an existing store")
        self.manifest = Manifest.from_bytes(self.backend.read(MANIFEST), self.uri)
        self.verify = verify
        self._rows: dict[str, np.ndarray] | None = None

    # metadata ---------------------------------------------------------------
    @property
    def complete(self) -> bool:
        return self.manifest.complete

    @property
    def shard_ids(self) -> list[int]:
        return self.manifest.shard_ids

    @property
    def n_rows(self) -> int:
        return self.manifest.n_rows

    @property
    def label_names(self) -> Mapping[str, list[str]]:
        return self.manifest.label_names

    @property
    def config(self) -> Mapping[str, Any]:
        return self.manifest.config

    @property
    def config_hash(self) -> str:
        return self.manifest.config_hash

    @property
    def skipped(self) -> list[Mapping[str, Any]]:
        return self.manifest.skipped

    def keys(self) -> list[str]:
        return sorted(self.manifest.feature_sets)

    def has(self, hook_point: str, timestep: int, pooling: str) -> bool:
        return set_key(hook_point, timestep, pooling) in self.manifest.feature_sets

    def feature_set(self, hook_point: str, timestep: int, pooling: str) -> FeatureSet:
        key = set_key(hook_point, timestep, pooling)
        if key not in self.manifest.feature_sets:
            raise KeyError(f"the store at {self.uri} has no features for {key}; it has: {', '.join(self.keys())}")
        return FeatureSet(self, key)

    # rows -------------------------------------------------------------------
    def _read(self, rel: str, key: str, i: int) -> dict[str, np.ndarray]:
        if i not in self.manifest.shards:
            raise StoreError(f"shard {i} of {self.uri} is not complete")
        blob = self.backend.read(rel)
        if self.verify:
            want = self.manifest.shards[i].sha256[key]
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
        for i, entry in self.manifest.shards.items():
            for key, want in entry.sha256.items():
                rel = f"{key}/{shard_name(i)}"
                if sha256(self.backend.read(rel)) != want:
                    raise StoreError(f"checksum mismatch for {rel} in {self.uri}")


def open_store(uri: str | Path, verify: bool = False) -> FeatureStore:
    """Open a feature store: a local directory, file:// or s3:// URI."""
    return FeatureStore(uri, verify=verify)
