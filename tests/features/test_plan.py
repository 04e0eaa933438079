"""`revelio plan`: exact store sizes, shapes, estimates, and the free-space refusal (tiny models, fast)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save as st_save

from revelio_svc.cli import main
from revelio_svc.config import replace
from revelio_svc.features import open_store, space
from revelio_svc.features import plan as plan_mod
from revelio_svc.features.extract import extract
from revelio_svc.features.plan import format_plan, plan
from revelio_svc.features.space import (
    InsufficientSpaceError,
    rows_file_size,
    safetensors_size,
)
from tests.backbones import tiny_models as tm


def _disk_bytes(root) -> int:
    return sum(p.stat().st_size for p in Path(root).rglob("*") if p.is_file())


@pytest.mark.parametrize("shape,dtype", [((0, 7), "float32"), ((3,), "float16"), ((1, 1280), "float32"),
                                         ((17, 32, 32, 1280), "float16"), ((512, 2560), "float32"),
                                         ((5, 3, 3, 9), "int64"), ((1234567,), "uint8")])
def test_safetensors_size_is_the_serialised_size(shape, dtype):
    arr = np.zeros(shape, dtype)
    assert safetensors_size({"features": (dtype, shape)}) == len(st_save({"features": arr}))


@pytest.mark.parametrize("n", [0, 1, 9, 100, 100_000])
def test_rows_file_size_is_exact_for_any_number_of_concepts(n):
    for concepts in ([], ["label"], ["shape", "colour", "size", "background", "position"]):
        rows = {"index": np.zeros(n, np.int64), "split": np.zeros(n, np.uint8)}
        rows.update({f"label.{c}": np.zeros(n, np.int64) for c in concepts})
        assert rows_file_size(concepts, n) == len(st_save(rows))


def test_plan_is_exact_on_the_default_backbone(tiny_cfg, tmp_path):
    cfg = replace(tiny_cfg, **{"data.n_images": 37, "extract.shard_size": 16, "extract.token_hook_points": ("mid_block",),
                               "extract.dtype": "float16"})
    p = plan(cfg)
    assert p.shapes_verified and p.n_shards == 3 and p.time is not None and p.time.total_s > 0
    assert not Path(p.store_uri).exists()  # planning writes nothing
    res = extract(cfg, progress=False)
    assert res.store_uri == p.store_uri
    assert _disk_bytes(res.store_uri) == p.store.total == p.store.to_write
    store = open_store(res.store_uri)
    assert store.manifest.to_dict()["feature_sets"] == p.feature_sets()
    for s in p.sets:
        fs = store.feature_set(s.hook_point, s.timestep, s.pooling)
        assert fs.shape == s.shape and fs.load(np.float16).nbytes == s.bytes_per_image * store.n_rows
    assert p.memory.peak > p.memory.weights > 0 and p.memory.capture_peak > 0
    text = format_plan(p)
    assert "store size (exact, every file)" in text and f"{p.store.total:,} bytes" in text

    again = plan(cfg)  # complete: only the manifest would be rewritten, and no probe runs
    assert again.store.to_write == again.store.manifest and again.time is None
    assert again.store.total == p.store.total


@pytest.mark.parametrize("name,kind", [("sd", "sd"), ("sdxl", "sdxl"), ("dit", "dit")])
def test_plan_is_exact_on_latent_pipelines(tmp_path_factory, tiny_cfg, name, kind):
    model_dir = tm.pipeline_dir(tmp_path_factory, name)
    hooks = ("transformer_blocks.1", "transformer_blocks.3") if kind == "dit" else ("down_blocks.0", "mid_block",
                                                                                     "up_blocks.1")
    cfg = replace(tiny_cfg, **{"data.image_size": tm.IMAGE_SIZE, "data.n_images": 10, "backbone.kind": kind,
                               "backbone.id": str(model_dir), "backbone.device": "cpu",
                               "extract.hook_points": hooks, "extract.timesteps": (10, 500),
                               "extract.shard_size": 4, "extract.batch_size": 3})
    p = plan(cfg)
    assert p.shapes_verified
    res = extract(cfg, progress=False, feature_sets=p.feature_sets())
    assert _disk_bytes(res.store_uri) == p.store.total
    ref = extract(replace(cfg, **{"extract.store": str(Path(res.store_uri).parent / "ref")}), progress=False)
    # the plan's shapes (used instead of extract's own probe forward) give the identical store
    for f in Path(ref.store_uri).rglob("*.safetensors"):
        assert f.read_bytes() == (Path(res.store_uri) / f.relative_to(ref.store_uri)).read_bytes()


def test_memory_estimate_grows_with_the_batch(tiny_cfg):
    small = plan(replace(tiny_cfg, **{"extract.batch_size": 2}), probe=False)
    large = plan(replace(tiny_cfg, **{"extract.batch_size": 32}), probe=False)
    assert large.memory.capture_peak > 4 * small.memory.capture_peak
    assert large.memory.weights == small.memory.weights and small.time is None


def test_extract_refuses_a_store_that_does_not_fit(tiny_cfg, tmp_path, monkeypatch, capsys):
    store = tmp_path / "nospace" / "store"
    cfg = replace(tiny_cfg, **{"extract.store": str(store)})
    need = plan(cfg, probe=False).store.total
    for mod in (plan_mod, space):  # the plan, and extract's own check before the first file
        monkeypatch.setattr(mod, "free_bytes", lambda uri: need - 1)
    args = ["extract", "--no-mlflow", "--set", f"extract.store={store}"]
    for k, v in (("data.n_images", 40), ("data.image_size", 16), ("backbone.id", tiny_cfg.backbone.id),
                 ("extract.hook_points", "[down_blocks.0, mid_block, up_blocks.0]"), ("extract.timesteps", "[10, 200]"),
                 ("extract.token_hook_points", "[]"), ("extract.token_timesteps", "[]"), ("extract.dtype", "float32"),
                 ("extract.batch_size", 8), ("extract.shard_size", 16), ("output_dir", tmp_path / "out")):
        args += ["--set", f"{k}={v}"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert f"needs {need:,} bytes" in err and f"only {need - 1:,} bytes" in err and "nothing was written" in err
    assert not store.exists() and not (tmp_path / "nospace").exists()
    # the library path (revelio run, tune) refuses too, before the first file
    with pytest.raises(InsufficientSpaceError):
        extract(cfg, progress=False)
    assert not store.exists()
    # with enough room it goes ahead
    for mod in (plan_mod, space):
        monkeypatch.setattr(mod, "free_bytes", lambda uri: need)
    assert main(args) == 0 and _disk_bytes(store) == need


def test_plan_command(tiny_cfg, tmp_path, capsys):
    args = ["plan", "--set", "data.n_images=20", "--set", "data.image_size=16", "--set",
            f"backbone.id={tiny_cfg.backbone.id}", "--set", f"output_dir={tmp_path / 'out'}"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "peak memory (estimate)" in out and "run time (estimate" not in out and "fits" in out
    assert main(args + ["--time"]) == 0  # the timed forward is opt-in
    assert "run time (estimate" in capsys.readouterr().out
    assert main(args + ["--json", "--no-probe"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["time"] is None and d["store"]["total"] > 0 and d["fits"] is True
    assert not (tmp_path / "out").exists()
