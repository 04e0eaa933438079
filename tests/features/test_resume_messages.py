"""Resume messages say what will really be skipped: manifest parts count, and train-sae names its step."""
from __future__ import annotations

import numpy as np
import pytest

from revelio_svc.features.manifest import part_name
from revelio_svc.features.plan import resume_note
from revelio_svc.features.space import done_shards, written_shards
from revelio_svc.features.store import StoreWriter, new_manifest, set_key

KEY = set_key("mid_block", 10, "mean")


def _manifest():
    # 8 shards of 2 images, the last one short (15 images)
    return new_manifest({"x": 1}, "h1", 15, 2, {"c": ["a", "b"]},
                        {KEY: {"hook_point": "mid_block", "timestep": 10, "pooling": "mean", "shape": [3]}})


def _write(w: StoreWriter, i: int) -> None:
    n = 2 if i < 7 else 1
    idx = np.arange(2 * i, 2 * i + n, dtype=np.int64)
    w.write_shard(i, {"index": idx, "split": np.zeros(n, np.uint8)}, {KEY: np.full((n, 3), i, np.float32)}, [])


def test_shards_left_in_parts_count_as_written(tmp_path):
    main = StoreWriter(tmp_path, _manifest())
    for i in (0, 1, 2):
        _write(main, i)
    rank1 = StoreWriter(tmp_path, _manifest(), part=1)
    for i in (3, 4, 5):
        _write(rank1, i)
    assert (tmp_path / part_name(1)).is_file()  # a killed distributed launch left its part
    assert written_shards(str(tmp_path), "h1") == ({0, 1, 2}, {3, 4, 5})
    assert done_shards(str(tmp_path), "h1") == {0, 1, 2, 3, 4, 5}
    rows = [2] * 7 + [1]
    assert resume_note(str(tmp_path), "h1", rows) == (
        "resuming: 6 of 8 shards are already written (3 in the manifest, 3 more in _parts/ from an earlier "
        "distributed launch, folded in first) and skipped; 2 shard(s) (3 images) left to extract")
    # what the resuming writer really skips is what the note says
    assert StoreWriter(tmp_path, _manifest()).done == {0, 1, 2, 3, 4, 5}
    assert resume_note(str(tmp_path), "h1", rows) == (
        "resuming: 6 of 8 shards are already written and skipped; 2 shard(s) (3 images) left to extract")
    assert written_shards(str(tmp_path), "other-hash") == (set(), set())


def test_train_sae_says_from_which_step_it_resumes(tmp_path, capsys):
    from tests.sae.helpers import build_store, tiny_cfg

    from revelio_svc.sae.trainer import CHECKPOINT_FILE, train_sae

    store = build_store(tmp_path / "store", n_images=120, shard_size=60)
    out = tmp_path / "sae"
    cfg = tiny_cfg(tmp_path, store, output=str(out), steps=30, checkpoint_every=10, eval_every=15, dead_window=256)

    class Stop(Exception):
        pass

    def stop_at_25(step, _):
        if step == 25:
            raise Stop

    with pytest.raises(Stop):
        train_sae(cfg, on_step=stop_at_25, progress=False)
    assert (out / CHECKPOINT_FILE).is_file()
    capsys.readouterr()
    res = train_sae(cfg, progress=True)
    assert res.resumed_from == 20
    assert (f"train-sae: resuming from the checkpoint at step 20 of 30 in {out} (10 steps left; "
            "force=true starts over)") in capsys.readouterr().out
