"""`revelio plan` without weights: the model on the meta device, analytic shapes, a warning when the
peak-memory estimate exceeds the machine's memory, and no warnings from the libraries."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import pytest
import torch

from revelio_svc.backbones.meta import load_meta_backbone
from revelio_svc.cli import main
from revelio_svc.config import BackboneConfig, replace
from revelio_svc.features import plan as plan_mod
from revelio_svc.features.plan import plan
from tests.backbones import tiny_models as tm


@pytest.mark.parametrize("name,kind", [("sd", "sd"), ("sdxl", "sdxl"), ("dit", "dit")])
def test_plan_on_the_meta_device_matches_the_plan_with_weights(tmp_path_factory, tiny_cfg, name, kind):
    model_dir = tm.pipeline_dir(tmp_path_factory, name)
    hooks = ("transformer_blocks.1", "transformer_blocks.3") if kind == "dit" else ("down_blocks.0", "mid_block")
    cfg = replace(tiny_cfg, **{"data.image_size": tm.IMAGE_SIZE, "data.n_images": 10, "backbone.kind": kind,
                               "backbone.id": str(model_dir), "backbone.device": "cpu",
                               "extract.hook_points": hooks, "extract.timesteps": (10,), "extract.batch_size": 3})
    adapter = load_meta_backbone(cfg.backbone)
    assert adapter.device.type == "meta" and str(adapter.plan_device) == "cpu"
    assert all(p.is_meta for m in plan_mod.adapter_modules(adapter) for p in m.parameters())
    meta = plan(cfg, adapter=adapter, probe=False)
    real = plan(cfg, probe=True)
    assert real.shapes_verified and meta.time is None and not meta.shapes_verified
    assert meta.sets == real.sets and meta.store == real.store and meta.store_uri == real.store_uri
    assert dataclasses.asdict(meta.memory) == dataclasses.asdict(real.memory)
    assert plan(cfg, probe=False).sets == real.sets  # plan() builds on meta itself without the probe


def test_a_full_size_model_is_planned_without_its_weights():
    before = _rss()
    adapter = load_meta_backbone(BackboneConfig(kind="sd", id="arch:sd15", init="random", device="cpu"))
    n = sum(p.numel() for p in adapter.unet.parameters())
    assert n == 859_520_964  # SD 1.5's UNet, counted without a byte of it
    assert all(p.is_meta for m in plan_mod.adapter_modules(adapter) for p in m.parameters())
    assert _rss() - before < 500 * 2 ** 20  # its 3.4 GB of float32 weights were never allocated
    shapes = {h: tuple(m.shape[1:]) for h, m in adapter.capture(
        torch.empty(1, 4, 8, 8, device="meta"), 10, adapter.conditioning(1), ["mid_block", "up_blocks.1"]).items()}
    assert shapes == {"mid_block": (1280, 1, 1), "up_blocks.1": (1280, 4, 4)}


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_warns_when_the_peak_memory_estimate_exceeds_the_machine(tiny_cfg, tmp_path, monkeypatch, capsys):
    args = ["plan", "--set", "data.n_images=20", "--set", "data.image_size=16", "--set",
            f"backbone.id={tiny_cfg.backbone.id}", "--set", f"output_dir={tmp_path / 'out'}"]
    assert main(args) == 0
    assert "warning" not in capsys.readouterr().err
    monkeypatch.setattr(plan_mod, "machine_memory", lambda device: ("RAM", 1000))
    assert main(args) == 0
    cap = capsys.readouterr()
    assert "exceeds this machine's RAM (1000 B)" in cap.err and cap.err.startswith("revelio plan: warning: ")
    assert "warning: the peak-memory estimate" in cap.out
    p = plan(replace(tiny_cfg, **{"data.n_images": 20}), probe=False)
    assert p.warnings and "Lower extract.batch_size" in p.warnings[0]
    assert plan_mod.memory_warning(p.memory, "RAM", p.memory.peak, 8) is None


def test_read_only_images_give_no_warning():
    code = ("import numpy as np; from revelio_svc.backbones.sd import preprocess_images; "
            "a = np.zeros((1, 16, 16, 3), np.uint8); a.flags.writeable = False; "
            "print(tuple(preprocess_images(a, 8).shape))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert p.returncode == 0 and p.stdout.strip() == "(1, 3, 8, 8)"
    assert p.stderr == ""
