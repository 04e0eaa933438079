"""Manifest parts (docs/feature-store.md, "Distributed writing"): the merge rule, in one process."""
from __future__ import annotations

import numpy as np
import pytest

from revelio_svc.features.manifest import PARTS, ShardEntry, part_name, part_to_bytes
from revelio_svc.features.store import StoreError, StoreWriter, new_manifest, open_store, set_key

KEY = set_key("mid_block", 10, "mean")


def _manifest(hash_="h1"):
    return new_manifest({"x": 1}, hash_, 6, 2, {"c": ["a", "b"]},
                        {KEY: {"hook_point": "mid_block", "timestep": 10, "pooling": "mean", "shape": [3]}})


def _write(w: StoreWriter, i: int) -> None:
    idx = np.arange(2 * i, 2 * i + 2, dtype=np.int64)
    w.write_shard(i, {"index": idx, "split": np.zeros(2, np.uint8)}, {KEY: np.full((2, 3), i, np.float32)}, [])


def test_parts_fold_into_the_manifest_a_single_writer_would_write(tmp_path):
    single = StoreWriter(tmp_path / "one", _manifest())
    for i in range(3):
        _write(single, i)
    main = StoreWriter(tmp_path / "two", _manifest())
    rank1 = StoreWriter(tmp_path / "two", _manifest(), part=1)
    _write(main, 0)
    _write(rank1, 1)
    _write(main, 2)
    assert (tmp_path / "two" / part_name(1)).is_file()
    assert open_store(tmp_path / "two").shard_ids == [0, 2]  # a part is not visible to readers
    assert main.fold_parts() == 1
    assert not (tmp_path / "two" / PARTS).exists()
    assert (tmp_path / "one" / "manifest.json").read_bytes() == (tmp_path / "two" / "manifest.json").read_bytes()


def test_a_resuming_single_writer_keeps_the_shards_of_leftover_parts(tmp_path):
    StoreWriter(tmp_path, _manifest())
    _write(StoreWriter(tmp_path, _manifest(), part=3), 1)
    resumed = StoreWriter(tmp_path, _manifest())
    assert resumed.done == {1} and not (tmp_path / PARTS).exists()


def test_conflicting_entries_for_one_shard_are_refused_by_name(tmp_path):
    w = StoreWriter(tmp_path, _manifest())
    _write(w, 0)
    other = ShardEntry(2, {KEY: "0" * 64, "rows": "1" * 64})
    w.backend.write(part_name(1), part_to_bytes("h1", 1, {0: other}))
    with pytest.raises(StoreError, match="shard 0 is recorded twice"):
        w.fold_parts()


def test_a_part_of_another_store_is_refused(tmp_path):
    w = StoreWriter(tmp_path, _manifest())
    w.backend.write(part_name(1), part_to_bytes("h2", 1, {}))
    with pytest.raises(StoreError, match="config hash h2"):
        w.fold_parts()


def test_a_rank_other_than_0_needs_the_manifest_and_may_not_fold(tmp_path):
    with pytest.raises(StoreError, match="rank 0 creates it"):
        StoreWriter(tmp_path, _manifest(), part=1)
    StoreWriter(tmp_path, _manifest())
    with pytest.raises(StoreError, match="rank 1 may not write the manifest"):
        StoreWriter(tmp_path, _manifest(), part=1).fold_parts()
