"""Stores are named by the weights behind backbone.id, not only by the id."""
from __future__ import annotations

import os
import shutil

from revelio_svc.backbones.hub import BUILTIN_DIR, weights_fingerprint
from revelio_svc.config import load_config
from revelio_svc.data import load_dataset
from revelio_svc.features.extract import store_config, store_identity


def _cfg(backbone_id: str, init: str = "pretrained"):
    return load_config(None, [f"backbone.id={backbone_id}", f"backbone.init={init}", "data.n_images=20"])


def test_builtin_weights_are_fingerprinted_by_content():
    fp = weights_fingerprint("builtin:shapes-unet")
    assert fp is not None and len(fp) == 16 and fp == weights_fingerprint("builtin:shapes-unet")
    assert store_config(_cfg("builtin:shapes-unet"), load_dataset(_cfg("builtin:shapes-unet").data))[
        "backbone"]["weights"] == fp


def test_new_weights_behind_the_same_directory_make_a_new_store(tmp_path):
    d = tmp_path / "model"
    shutil.copytree(BUILTIN_DIR / "shapes-unet", d)
    cfg = _cfg(str(d))
    before_fp, before_id = weights_fingerprint(str(d)), store_identity(cfg)
    assert before_fp is not None and store_identity(cfg) == before_id  # stable while nothing changes
    w = d / "diffusion_pytorch_model.safetensors"
    data = bytearray(w.read_bytes())
    data[-1] ^= 1  # other weights, same size
    w.write_bytes(bytes(data))
    st = w.stat()
    os.utime(w, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert weights_fingerprint(str(d)) != before_fp
    assert store_identity(cfg) != before_id


def test_copies_of_one_model_name_the_same_store_and_a_config_change_a_new_one(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(BUILTIN_DIR / "shapes-unet", a)
    shutil.copytree(BUILTIN_DIR / "shapes-unet", b)
    for f in b.rglob("*"):  # another machine's copy: other modification times
        os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 5 * 10**9))
    assert weights_fingerprint(str(a)) == weights_fingerprint(str(b))
    sched = b / "scheduler_config.json"
    sched.write_text(sched.read_text().replace('"num_train_timesteps": 1000', '"num_train_timesteps": 500'))
    assert weights_fingerprint(str(a)) != weights_fingerprint(str(b))


def test_hub_ids_and_random_init_carry_no_weights_key():
    assert weights_fingerprint("some-org/some-model") is None
    cfg = _cfg("builtin:shapes-unet", init="random")
    assert "weights" not in store_config(cfg, load_dataset(cfg.data))["backbone"]
