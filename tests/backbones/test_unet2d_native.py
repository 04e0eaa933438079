"""The diffusers-free UNet2DModel: same modules, same weights, same outputs and hook maps as diffusers'."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from revelio_svc.backbones.hub import resolve_local
from revelio_svc.backbones.unet2d import UNet2DAdapter, alphas_cumprod
from revelio_svc.backbones.unet2d_native import NativeUNet2D, load_native_unet, native_unsupported, read_unet_config
from revelio_svc.config import BackboneConfig

ROOT = Path(__file__).resolve().parents[2]


def _both(path):
    from diffusers import UNet2DModel

    return load_native_unet(path).eval(), UNet2DModel.from_pretrained(str(path), torch_dtype=torch.float32).eval()


@pytest.mark.parametrize("which", ["tiny", "builtin"])
def test_native_unet_equals_diffusers(which, tiny_unet_dir):
    path = tiny_unet_dir if which == "tiny" else resolve_local("builtin:shapes-unet")
    native, ref = _both(path)
    assert isinstance(native, NativeUNet2D)
    assert [n for n, _ in native.named_modules()] == [n for n, _ in ref.named_modules()]
    assert native.state_dict().keys() == ref.state_dict().keys()
    assert not any(p.is_meta for p in native.parameters())
    size = int(ref.config.sample_size)
    x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        for t in (0, 10, 500, 999):
            ts = torch.full((3,), t)
            assert torch.equal(native(x, ts).sample, ref(x, ts).sample), t


def test_hook_maps_are_those_of_the_diffusers_model(tiny_unet_dir):
    cfg = BackboneConfig(id=str(tiny_unet_dir), device="cpu")
    ad = UNet2DAdapter(cfg)
    assert isinstance(ad.model, NativeUNet2D)
    from diffusers import UNet2DModel

    ref = UNet2DAdapter(cfg)
    ref.model = UNet2DModel.from_pretrained(str(tiny_unet_dir), torch_dtype=torch.float32).eval()
    names = ad.hook_points() + ["mid_block.attentions.0", "down_blocks.0.resnets.0", "up_blocks.1.resnets.1"]
    assert ad.hook_points() == ref.hook_points()
    x0 = ad.encode(torch.randint(0, 255, (2, 16, 16, 3), dtype=torch.uint8).numpy())
    xt = ad.add_noise(x0, 50, ["a", "b"], 0)
    got = ad.capture(xt, 50, ad.conditioning(2), names, stop_early=False)
    want = ref.capture(xt, 50, ref.conditioning(2), names, stop_early=False)
    for n in names:
        assert torch.equal(got[n], want[n]), n


def test_noise_schedule_and_lazy_scheduler_match_diffusers():
    from diffusers import DDPMScheduler

    path = resolve_local("builtin:shapes-unet")
    sched = json.loads((path / "scheduler_config.json").read_text())
    ref = DDPMScheduler.from_pretrained(str(path))
    assert torch.equal(alphas_cumprod(sched), ref.alphas_cumprod.float())
    scaled = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "num_train_timesteps": 1000}
    assert torch.allclose(alphas_cumprod(scaled), DDPMScheduler.from_config(scaled).alphas_cumprod.float())
    assert alphas_cumprod({"beta_schedule": "squaredcos_cap_v2"}) is None  # left to diffusers
    ad = UNet2DAdapter(BackboneConfig(id="builtin:shapes-unet", device="cpu"))
    assert ad._scheduler is None  # not built by the load ...
    assert torch.equal(ad.scheduler.alphas_cumprod, ref.alphas_cumprod)  # ... but there when sampling needs it


def test_layouts_it_does_not_build_go_to_diffusers(tmp_path):
    from diffusers import UNet2DModel

    UNet2DModel(sample_size=8, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
                down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                up_block_types=("AttnUpBlock2D", "UpBlock2D")).save_pretrained(tmp_path)
    assert "AttnDownBlock2D" in native_unsupported(read_unet_config(tmp_path))
    assert load_native_unet(tmp_path) is None
    ad = UNet2DAdapter(BackboneConfig(id=str(tmp_path), device="cpu"))
    assert isinstance(ad.model, UNet2DModel)
    rnd = UNet2DAdapter(BackboneConfig(id="builtin:shapes-unet", device="cpu", init="random"))
    assert isinstance(rnd.model, UNet2DModel)  # random weights: diffusers' seeded initialisation


def test_saved_native_model_loads_in_diffusers(tmp_path, tiny_unet_dir):
    from diffusers import UNet2DModel

    native = load_native_unet(tiny_unet_dir)
    native.save_pretrained(tmp_path)
    back = UNet2DModel.from_pretrained(str(tmp_path), torch_dtype=torch.float32)
    for k, v in native.state_dict().items():
        assert torch.equal(v, back.state_dict()[k]), k


def test_loading_the_default_backbone_does_not_import_diffusers():
    code = ("import sys; from revelio_svc.backbones import load_backbone; from revelio_svc.config import "
            "BackboneConfig; ad = load_backbone(BackboneConfig(id='builtin:shapes-unet', device='cpu')); "
            "print(type(ad.model).__name__, 'diffusers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["NativeUNet2D", "False"]
