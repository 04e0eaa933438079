"""The storage contract of docs/feature-store.md, including property tests of the indexing."""
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from revelio_svc.features.manifest import Manifest
from revelio_svc.features.store import (
    MANIFEST,
    StoreError,
    StoreMismatchError,
    StoreWriter,
    new_manifest,
    open_store,
    parse_set_key,
    set_key,
)


def _write(root, n, shard_size, skip, d=4, config=None):
    sets = {set_key("mid_block", 10, "mean"): {"hook_point": "mid_block", "timestep": 10, "pooling": "mean",
                                               "shape": [d], "dtype": "float32"}}
    m = new_manifest(config or {"a": 1}, "h" + json.dumps(config or {"a": 1}), n, shard_size,
                     {"label": ["x", "y"]}, sets)
    w = StoreWriter(root, m)
    for s in range(m.n_shards):
        idx = [i for i in range(s * shard_size, min((s + 1) * shard_size, n)) if i not in skip]
        idx_arr = np.array(idx, np.int64)
        feats = np.stack([np.full(d, i, np.float32) for i in idx]) if idx else np.zeros((0, d), np.float32)
        w.write_shard(s, {"index": idx_arr, "split": (idx_arr % 4 == 0).astype(np.uint8),
                          "label.label": idx_arr % 2},
                      {set_key("mid_block", 10, "mean"): feats},
                      [{"index": i, "id": f"x:{i}", "reason": "bad"} for i in range(s * shard_size,
                                                                                    min((s + 1) * shard_size, n))
                       if i in skip])
    return w


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 60), shard_size=st.integers(1, 17), data=st.data())
def test_rows_follow_the_indexing_math(tmp_path_factory, n, shard_size, data):
    skip = set(data.draw(st.lists(st.integers(0, n - 1), max_size=n // 2)))
    root = tmp_path_factory.mktemp("store")
    _write(root, n, shard_size, skip)
    store = open_store(root, verify=True)
    assert store.manifest.n_shards == -(-n // shard_size)
    assert store.complete
    kept = [i for i in range(n) if i not in skip]
    assert store.index().tolist() == kept
    feats = store.feature_set("mid_block", 10, "mean").load()
    assert feats.shape == (len(kept), 4)
    assert feats[:, 0].tolist() == kept  # row r holds the r-th kept image in shard order
    assert store.labels("label").tolist() == [i % 2 for i in kept]
    assert sorted(s["index"] for s in store.skipped) == sorted(skip)
    store.verify_all()


def test_key_round_trip():
    assert parse_set_key(set_key("up_blocks.1.attentions.0", 25, "tokens")) == ("up_blocks.1.attentions.0", 25,
                                                                                  "tokens")


def test_mismatched_config_is_refused(tmp_path):
    _write(tmp_path, 10, 4, set(), config={"backbone": "a"})
    with pytest.raises(StoreMismatchError) as e:
        _write(tmp_path, 10, 4, set(), config={"backbone": "b"})
    assert "backbone" in str(e.value) and str(tmp_path) in str(e.value)


def test_incomplete_shard_is_invisible(tmp_path):
    w = _write(tmp_path, 10, 4, set())
    m = w.manifest.to_dict()
    del m["shards"]["2"]
    m["complete"] = False
    (tmp_path / MANIFEST).write_text(json.dumps(m))
    store = open_store(tmp_path)
    assert not store.complete and store.shard_ids == [0, 1]
    assert store.index().tolist() == list(range(8))
    with pytest.raises(StoreError, match="not complete"):
        store.feature_set("mid_block", 10, "mean").shard(2)


def test_corrupt_shard_detected(tmp_path):
    _write(tmp_path, 10, 4, set())
    f = tmp_path / "mid_block" / "t10" / "mean" / "shard-00001.safetensors"
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="checksum"):
        open_store(tmp_path, verify=True).feature_set("mid_block", 10, "mean").shard(1)


def test_unknown_set_lists_available(tmp_path):
    _write(tmp_path, 5, 5, set())
    with pytest.raises(KeyError, match="mid_block/t10/mean"):
        open_store(tmp_path).feature_set("up_blocks.1", 10, "mean")


def test_not_a_store_and_wrong_version(tmp_path):
    with pytest.raises(StoreError, match="no feature store"):
        open_store(tmp_path)
    _write(tmp_path, 5, 5, set())
    m = json.loads((tmp_path / MANIFEST).read_text())
    m["version"] = 99
    (tmp_path / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(StoreError, match="version 99"):
        open_store(tmp_path)


def test_files_are_safetensors_not_pickle(tmp_path):
    _write(tmp_path, 5, 5, set())
    for f in tmp_path.rglob("*.safetensors"):
        header_len = int.from_bytes(f.read_bytes()[:8], "little")
        json.loads(f.read_bytes()[8:8 + header_len])


def test_resuming_writer_removes_stale_temp_files(tmp_path):
    _write(tmp_path, 10, 4, set())
    stale = tmp_path / "mid_block" / "t10" / "mean" / "shard-00001.safetensors.12345.tmp"
    stale.write_bytes(b"half a file")
    StoreWriter(tmp_path, Manifest.from_bytes((tmp_path / MANIFEST).read_bytes()))
    assert not stale.exists()
    assert len(list(tmp_path.rglob("*.safetensors"))) == 3 * 2
