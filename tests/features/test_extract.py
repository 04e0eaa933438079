"""Extraction: one pass per (batch, t), determinism, resumability, refusal of mismatched stores."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from revelio_svc.backbones import load_backbone
from revelio_svc.config import ConfigError, replace, to_dict
from revelio_svc.features import open_store
from revelio_svc.features.extract import extract
from revelio_svc.features.store import StoreMismatchError


def _arrays(uri):
    store = open_store(uri, verify=True)
    return {k: np.concatenate([a for _, a in store.feature_set(*_split(k)).iter_shards()]) for k in store.keys()}


def _split(key):
    from revelio_svc.features.store import parse_set_key
    return parse_set_key(key)


def test_extract_writes_every_set(tiny_cfg):
    res = extract(tiny_cfg, progress=False)
    store = open_store(res.store_uri, verify=True)
    assert store.complete and store.n_rows == 40
    assert len(store.keys()) == 3 * 2 * 3
    assert store.feature_set("mid_block", 10, "mean").shape == (16,)
    assert store.feature_set("mid_block", 200, "tokens").shape == (8, 8, 16)
    assert store.feature_set("up_blocks.0", 200, "tokens").shape == (16, 16, 16)  # after its upsampler
    assert store.feature_set("down_blocks.0", 10, "max").load().shape == (40, 8)
    assert store.config["dataset"]["fingerprint"]
    assert set(store.label_names) >= {"shape", "colour", "size", "background"}
    np.testing.assert_array_equal(store.labels("shape")[:5], np.array(
        [__import__("revelio_svc.data", fromlist=["x"]).load_dataset(tiny_cfg.data).labels("shape")[i]
         for i in range(5)]))
    tok = store.feature_set("mid_block", 10, "tokens").load()
    mean = store.feature_set("mid_block", 10, "mean").load()
    np.testing.assert_allclose(tok.mean(axis=(1, 2)), mean, rtol=1e-4, atol=1e-5)


def test_features_do_not_depend_on_batch_size(tiny_cfg, tmp_path):
    a = extract(replace(tiny_cfg, **{"extract.batch_size": 3, "extract.store": str(tmp_path / "a")}), progress=False)
    b = extract(replace(tiny_cfg, **{"extract.batch_size": 16, "extract.store": str(tmp_path / "b")}), progress=False)
    fa, fb = _arrays(a.store_uri), _arrays(b.store_uri)
    assert fa.keys() == fb.keys()
    for k in fa:
        np.testing.assert_allclose(fa[k], fb[k], rtol=1e-4, atol=1e-5, err_msg=k)


def test_token_sets_only_where_asked(tiny_cfg):
    cfg = replace(tiny_cfg, **{"extract.token_hook_points": ("mid_block",), "extract.token_timesteps": (10,)})
    store = open_store(extract(cfg, progress=False).store_uri)
    tokens = [k for k in store.keys() if k.endswith("/tokens")]
    assert tokens == ["mid_block/t10/tokens"]


def test_float16_storage(tiny_cfg):
    store = open_store(extract(replace(tiny_cfg, **{"extract.dtype": "float16"}), progress=False).store_uri)
    assert store.feature_set("mid_block", 10, "mean").shard(0).dtype == np.float16


def test_forward_stops_after_deepest_hook(tiny_cfg):
    adapter = load_backbone(tiny_cfg.backbone)
    fired = []
    h = adapter.model.up_blocks[1].register_forward_hook(lambda *a: fired.append(1))
    x = adapter.encode(np.zeros((2, 16, 16, 3), np.uint8))
    maps = adapter.capture(adapter.add_noise(x, 10, ["a", "b"], 0), 10, adapter.conditioning(2),
                           ["down_blocks.0", "mid_block"])
    assert set(maps) == {"down_blocks.0", "mid_block"} and not fired
    adapter.capture(adapter.add_noise(x, 10, ["a", "b"], 0), 10, adapter.conditioning(2), ["up_blocks.1"])
    assert fired
    h.remove()


def test_unknown_hook_point_lists_known(tiny_cfg):
    cfg = replace(tiny_cfg, **{"extract.hook_points": ("up_blocks.7",)})
    with pytest.raises(ConfigError) as e:
        extract(cfg, progress=False)
    assert "up_blocks.7" in str(e.value) and "mid_block" in str(e.value) and "down_blocks.0" in str(e.value)


def test_mismatched_store_is_refused(tiny_cfg, tmp_path):
    store = str(tmp_path / "s")
    extract(replace(tiny_cfg, **{"extract.store": store}), progress=False)
    with pytest.raises(StoreMismatchError) as e:
        extract(replace(tiny_cfg, **{"extract.store": store, "data.seed": 5}), progress=False)
    assert "fingerprint" in str(e.value) or "seed" in str(e.value)


def test_bad_images_are_skipped_and_listed(tiny_cfg, tmp_path):
    from PIL import Image

    root = tmp_path / "folder"
    rng = np.random.default_rng(0)
    for c in ("cats", "dogs"):
        (root / c).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    (root / "cats" / "2.png").write_bytes(b"not an image at all")
    Image.fromarray(rng.integers(0, 255, (20, 24), dtype=np.uint8), mode="L").save(root / "dogs" / "g.png")
    Image.fromarray(rng.integers(0, 255, (20, 24, 4), dtype=np.uint8), mode="RGBA").save(root / "dogs" / "a.png")
    cfg = replace(tiny_cfg, **{"data.source": "imagefolder", "data.id": str(root), "data.n_images": 0})
    res = extract(cfg, progress=False)
    store = open_store(res.store_uri)
    assert len(res.skipped) == 1 and res.skipped[0]["id"].endswith("2.png")
    assert store.n_rows == 9
    assert res.skipped[0]["index"] not in store.index().tolist()
    assert store.labels("label").tolist().count(0) == 3


def _cli(cfg_path, env=None):
    return [sys.executable, "-m", "revelio_svc.cli", "extract", "--no-mlflow", "--config", str(cfg_path)]


def test_kill_and_resume_equals_uninterrupted(tiny_cfg, tmp_path):
    cfg = replace(tiny_cfg, **{"data.n_images": 64, "extract.shard_size": 8, "extract.batch_size": 4})
    d = to_dict(cfg)
    ref = extract(replace(cfg, **{"extract.store": str(tmp_path / "ref")}), progress=False)
    d["extract"]["store"] = str(tmp_path / "killed")
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(d))
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(_cli(p), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    manifest = tmp_path / "killed" / "manifest.json"
    deadline = time.time() + 60
    import json
    while time.time() < deadline:
        if manifest.is_file():
            try:
                if len(json.loads(manifest.read_text())["shards"]) >= 2:
                    break
            except ValueError:
                pass
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = json.loads(manifest.read_text())
    assert not partial["complete"], "the run finished before it could be killed; make it longer"
    out = subprocess.run(_cli(p), env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    files = sorted(x.relative_to(tmp_path / "ref") for x in (tmp_path / "ref").rglob("*") if x.is_file())
    files2 = sorted(x.relative_to(tmp_path / "killed") for x in (tmp_path / "killed").rglob("*") if x.is_file())
    assert files == files2
    for f in files:
        assert (tmp_path / "ref" / f).read_bytes() == (tmp_path / "killed" / f).read_bytes(), f
    assert ref.n_rows == open_store(tmp_path / "killed").n_rows == 64


def test_extract_command_logs_to_mlflow(tiny_cfg, mlflow_tmp, tmp_path):
    import mlflow

    from revelio_svc.cli import main
    d = to_dict(tiny_cfg)
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(d))
    assert main(["extract", "--config", str(p)]) == 0
    runs = mlflow.search_runs(experiment_names=["revelio"], output_format="list")
    assert len(runs) == 1
    r = runs[0]
    assert r.data.tags["stage"] == "extract"
    assert r.data.metrics["images_per_s"] > 0 and r.data.metrics["skipped_images"] == 0
    assert r.data.params["extract.hook_points"] == "down_blocks.0,mid_block,up_blocks.0"
    # the dataset and the feature store are the run's inputs, with the fingerprint and config hash as digests
    store = open_store(r.data.tags["store_uri"])
    inputs = {d.dataset.name: d.dataset.digest for d in r.inputs.dataset_inputs}
    assert inputs == {"shapes": store.config["dataset"]["fingerprint"][:36],
                      f"features-{store.config_hash[:8]}": store.config_hash}
    arts = [a.path for a in mlflow.MlflowClient().list_artifacts(r.info.run_id, "feature_store")]
    assert "feature_store/manifest.json" in arts
    assert Path(r.data.tags["store_uri"]).is_dir()
