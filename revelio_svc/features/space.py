"""Exact sizes of a feature store's files, and the refusal to start a store that would not fit.

Every feature file and `rows/` file is a safetensors file: 8 bytes + its JSON header (padded to 8 bytes) +
its data. `manifest.json` is the final manifest serialised with placeholder checksums (a SHA-256 hex
digest has a fixed length). So the bytes of a finished store are known before it is written, provided
every image decodes.
"""
from __future__ import annotations

import json
import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .backends import backend_for
from .errors import StoreError
from .manifest import MANIFEST, PARTS, Manifest, ShardEntry, part_from_bytes
from .store import ROWS

SHA256_HEX = "0" * 64  # the manifest stores one SHA-256 hex digest per file: fixed length


class InsufficientSpaceError(StoreError):
    """The store would not fit on the destination's file system; nothing was written."""


# --------------------------------------------------------------------------- exact file sizes
_ST_DTYPES = {"float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16", "int64": "I64",
              "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL"}


def safetensors_size(tensors: dict[str, tuple[str, Sequence[int]]]) -> int:
    """Bytes of the file `safetensors.numpy.save` writes for tensors {name: (numpy dtype name, shape)}.

    Layout: 8-byte little-endian header length, the JSON header (tensors ordered by element size, largest
    first, then by name; no spaces; padded with spaces to a multiple of 8), then the data.
    """
    order = sorted(tensors, key=lambda k: (-np.dtype(tensors[k][0]).itemsize, k))
    header: dict[str, Any] = {}
    offset = 0
    for name in order:
        dt, shape = tensors[name]
        nbytes = int(np.dtype(dt).itemsize * math.prod(shape))
        header[name] = {"dtype": _ST_DTYPES[np.dtype(dt).name], "shape": [int(s) for s in shape],
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    n = len(json.dumps(header, separators=(",", ":")).encode())
    n += (-n) % 8
    return 8 + n + offset


def shard_rows(n_images: int, shard_size: int) -> list[int]:
    return [min(shard_size, n_images - s * shard_size) for s in range((n_images + shard_size - 1) // shard_size)]


def feature_file_size(shape: Sequence[int], dtype: str, n_rows: int) -> int:
    return safetensors_size({"features": (dtype, (n_rows, *shape))})


def rows_file_size(concepts: Sequence[str], n_rows: int) -> int:
    tensors = {"index": ("int64", (n_rows,)), "split": ("uint8", (n_rows,))}
    tensors.update({f"label.{c}": ("int64", (n_rows,)) for c in concepts})
    return safetensors_size(tensors)


def final_manifest(manifest: Manifest) -> Manifest:
    """The manifest of the finished store, with placeholder checksums (same length as real ones)."""
    for i, n in enumerate(shard_rows(manifest.n_images, manifest.shard_size)):
        manifest = manifest.with_shard(i, ShardEntry(n, {k: SHA256_HEX for k in [*manifest.feature_sets, ROWS]}))
    return manifest


def manifest_size(manifest: Manifest) -> int:
    return len(manifest.to_bytes())  # exactly what StoreWriter writes


@dataclass(frozen=True)
class StoreBytes:
    features: int  # all feature files
    rows: int  # all rows/ files
    manifest: int  # manifest.json of the finished store
    to_write: int  # what is still to be written (complete shards of a resumed store excluded)
    shards_done: int = 0

    @property
    def total(self) -> int:
        return self.features + self.rows + self.manifest


def store_bytes(manifest: Manifest, concepts: Sequence[str], done: set[int] = frozenset()) -> StoreBytes:
    """Exact bytes of the store a manifest describes, once complete (every image decoded)."""
    n, s = manifest.n_images, manifest.shard_size
    sets = manifest.feature_sets
    feat = rows = feat_todo = rows_todo = 0
    for i, n_rows in enumerate(shard_rows(n, s)):
        f = sum(feature_file_size(fs.shape, fs.dtype, n_rows) for fs in sets.values())
        r = rows_file_size(concepts, n_rows)
        feat, rows = feat + f, rows + r
        if i not in done:
            feat_todo, rows_todo = feat_todo + f, rows_todo + r
    man = manifest_size(final_manifest(manifest))
    return StoreBytes(feat, rows, man, feat_todo + rows_todo + man, len(done))


# --------------------------------------------------------------------------- free space
def local_store_path(uri: str) -> Path | None:
    if uri.startswith("s3://"):
        return None
    return Path(uri[len("file://"):] if uri.startswith("file://") else uri)


def free_bytes(uri: str) -> int | None:
    """Free bytes on the file system that would hold a local store (its nearest existing ancestor)."""
    path = local_store_path(uri)
    if path is None:
        return None
    p = path.resolve()
    while not p.exists():
        p = p.parent
    return shutil.disk_usage(p).free


def written_shards(uri: str, chash: str) -> tuple[set[int], set[int]]:
    """(shards in the manifest, further shards only recorded in manifest parts `_parts/`) of an existing
    store with this config hash. A resume folds the parts into the manifest first, so it skips both."""
    try:
        backend = backend_for(uri)
        if not backend.exists(MANIFEST):
            return set(), set()
        m = Manifest.from_bytes(backend.read(MANIFEST), uri)
    except StoreError:
        return set(), set()
    if m.config_hash != chash:
        return set(), set()
    in_parts: set[int] = set()
    for name in backend.list(PARTS):
        try:
            in_parts |= set(part_from_bytes(backend.read(name), chash, f"{uri}/{name}"))
        except StoreError:
            continue  # folding it fails with the reason; a plan only counts what it can read
    in_manifest = set(m.shards)
    return in_manifest, {i for i in in_parts - in_manifest if 0 <= i < m.n_shards}


def done_shards(uri: str, chash: str) -> set[int]:
    """Complete shards of an existing store with this config hash, its manifest parts included (a resume
    writes only the rest)."""
    in_manifest, in_parts = written_shards(uri, chash)
    return in_manifest | in_parts


def ensure_fits(uri: str, need: int, free: int | None, total: int | None = None) -> None:
    if free is None or need <= free:
        return
    gib = 2 ** 30
    raise InsufficientSpaceError(
        f"the feature store at {uri} needs {need:,} bytes ({need / gib:.2f} GiB) still to be written"
        + (f" (store total {total:,} bytes)" if total is not None and total != need else "")
        + f", but its file system has only {free:,} bytes ({free / gib:.2f} GiB) free; nothing was written. "
        f"Free space, point extract.store at a larger disk, keep fewer token sets (extract.token_hook_points, "
        f"extract.token_timesteps) or store float16 (extract.dtype=float16).")


def check_manifest_fits(uri: str, manifest: Manifest, concepts: Sequence[str]) -> StoreBytes:
    """Called by extract before anything is written: refuses a local store that would not fit."""
    sb = store_bytes(manifest, concepts, done_shards(uri, manifest.config_hash))
    ensure_fits(uri, sb.to_write, free_bytes(uri), sb.total)
    return sb


