"""`manifest.json`, the one record of what a feature store holds (docs/feature-store.md).

`Manifest` is the only code that reads or writes it: every other module sees typed fields. The JSON
written is `json.dumps(manifest.to_dict(), indent=1, sort_keys=True)`, so equal manifests are equal bytes
(a store written by one process and by several is byte-identical).
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import StoreError

FORMAT = "revelio-feature-store"
VERSION = 1
MANIFEST = "manifest.json"
PART_FORMAT = "revelio-feature-store-part"
PARTS = "_parts"  # per-rank manifest parts of a distributed extraction; folded in and deleted, never kept


def part_name(rank: int) -> str:
    return f"{PARTS}/rank-{rank:05d}.json"


@dataclass(frozen=True)
class FeatureSetSpec:
    """One (hook point, timestep, pooling): per-row shape and the dtype it is stored in."""

    hook_point: str
    timestep: int
    pooling: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def key(self) -> str:
        return f"{self.hook_point}/t{self.timestep}/{self.pooling}"

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.shape)) * np.dtype(self.dtype).itemsize


@dataclass(frozen=True)
class ShardEntry:
    """A finished shard: its row count, the SHA-256 of each of its files, the images it skipped."""

    n_rows: int
    sha256: Mapping[str, str]
    skipped: tuple[Mapping[str, Any], ...] = ()


@dataclass(frozen=True)
class Manifest:
    config_hash: str
    config: Mapping[str, Any]
    n_images: int
    shard_size: int
    label_names: Mapping[str, list[str]]
    feature_sets: Mapping[str, FeatureSetSpec]
    shards: Mapping[int, ShardEntry] = field(default_factory=dict)

    @property
    def n_shards(self) -> int:
        return (self.n_images + self.shard_size - 1) // self.shard_size

    @property
    def complete(self) -> bool:
        return len(self.shards) == self.n_shards

    @property
    def n_rows(self) -> int:
        return sum(s.n_rows for s in self.shards.values())

    @property
    def shard_ids(self) -> list[int]:
        return sorted(self.shards)

    def shard_range(self, i: int) -> range:
        """Dataset indices of shard i (fixed by the contract: [i·shard_size, min((i+1)·shard_size, n_images)))."""
        return range(i * self.shard_size, min((i + 1) * self.shard_size, self.n_images))

    @property
    def skipped(self) -> list[Mapping[str, Any]]:
        return [s for i in self.shard_ids for s in self.shards[i].skipped]

    def with_shard(self, i: int, entry: ShardEntry) -> Manifest:
        if not 0 <= i < self.n_shards:
            raise StoreError(f"shard {i} is outside the store's {self.n_shards} shards")
        return dataclasses.replace(self, shards={**self.shards, i: entry})

    def merged(self, shards: Mapping[int, ShardEntry], where: str) -> Manifest:
        """This manifest plus the shards of a part (docs/feature-store.md, "Distributed writing").

        A shard already present must have the same entry: two writers of one shard write the same bytes
        (extraction is deterministic), so a difference means the store was written by something else.
        """
        for i, e in shards.items():
            if i in self.shards and self.shards[i] != e:
                raise StoreError(f"{where}: shard {i} is recorded twice with different checksums; the store "
                                 "was written by different configurations or code. Start a new store.")
        new = dict(self.shards)
        for i, e in shards.items():
            if not 0 <= i < self.n_shards:
                raise StoreError(f"{where}: shard {i} is outside the store's {self.n_shards} shards")
            new[i] = e
        return dataclasses.replace(self, shards=new)

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "version": VERSION, "config_hash": self.config_hash, "config": self.config,
            "n_images": self.n_images, "shard_size": self.shard_size, "n_shards": self.n_shards,
            "label_names": {k: list(v) for k, v in self.label_names.items()},
            "feature_sets": {k: {"hook_point": s.hook_point, "timestep": s.timestep, "pooling": s.pooling,
                                 "shape": list(s.shape), "dtype": s.dtype} for k, s in self.feature_sets.items()},
            "shards": shards_to_dict(self.shards),
            "complete": self.complete,
        }

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes, where: str = "the store") -> Manifest:
        try:
            d = json.loads(data)
        except json.JSONDecodeError as e:
            raise StoreError(f"{where}: {MANIFEST} is not valid JSON ({e})") from e
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise StoreError(f"{where} is not a revelio feature store")
        if d.get("version") != VERSION:
            raise StoreError(f"{where} has store version {d.get('version')}; this revelio reads version {VERSION}")
        try:
            return cls(
                config_hash=d["config_hash"], config=d["config"], n_images=int(d["n_images"]),
                shard_size=int(d["shard_size"]), label_names=d["label_names"],
                feature_sets={k: FeatureSetSpec(v["hook_point"], int(v["timestep"]), v["pooling"],
                                                tuple(int(x) for x in v["shape"]), v.get("dtype", "float32"))
                              for k, v in d["feature_sets"].items()},
                shards=shards_from_dict(d["shards"]))
        except (KeyError, TypeError, ValueError) as e:
            raise StoreError(f"{where}: {MANIFEST} is malformed ({type(e).__name__}: {e})") from e


def shards_to_dict(shards: Mapping[int, ShardEntry]) -> dict[str, Any]:
    return {str(i): {"n_rows": e.n_rows, "sha256": dict(e.sha256), "skipped": [dict(x) for x in e.skipped]}
            for i, e in shards.items()}


def shards_from_dict(d: Mapping[str, Any]) -> dict[int, ShardEntry]:
    return {int(k): ShardEntry(int(v["n_rows"]), dict(v["sha256"]), tuple(v.get("skipped", ()))) for k, v in d.items()}


def part_to_bytes(config_hash: str, rank: int, shards: Mapping[int, ShardEntry]) -> bytes:
    """A rank's record of the shards it finished, until rank 0 folds it into the manifest."""
    return json.dumps({"format": PART_FORMAT, "version": VERSION, "config_hash": config_hash, "rank": rank,
                       "shards": shards_to_dict(shards)}, indent=1, sort_keys=True).encode()


def part_from_bytes(data: bytes, config_hash: str, where: str) -> dict[int, ShardEntry]:
    try:
        d = json.loads(data)
        if not isinstance(d, dict) or d.get("format") != PART_FORMAT or d.get("version") != VERSION:
            raise StoreError(f"{where} is not a version {VERSION} manifest part")
        if d.get("config_hash") != config_hash:
            raise StoreError(f"{where} belongs to a store with config hash {d.get('config_hash')}, "
                             f"not {config_hash}")
        return shards_from_dict(d["shards"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        if isinstance(e, StoreError):
            raise
        raise StoreError(f"{where} is malformed ({type(e).__name__}: {e})") from e
