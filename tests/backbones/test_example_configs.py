"""Every example config loads, and the SD / SDXL / DiT ones name hook points their architecture has."""
from __future__ import annotations

from pathlib import Path

import pytest

from revelio_svc.backbones.dit import dit_hook_points
from revelio_svc.backbones.sd import unet_hook_points
from revelio_svc.config import load_config
from tests.backbones import tiny_models as tm

CONFIG_DIR = Path(__file__).resolve().parents[2] / "mlproject" / "configs"
CONFIGS = sorted(CONFIG_DIR.glob("*.yaml"))
PAPER_CONFIGS = {
    "sd15_pets.yaml": ("sd", "stable-diffusion-v1-5/stable-diffusion-v1-5", "timm/oxford-iiit-pet"),
    "sd15_caltech.yaml": ("sd", "stable-diffusion-v1-5/stable-diffusion-v1-5", "dpdl-benchmark/caltech101"),
    "sd15_aircraft.yaml": ("sd", "stable-diffusion-v1-5/stable-diffusion-v1-5", "dpdl-benchmark/fgvc_aircraft"),
    "sd15_dtd.yaml": ("sd", "stable-diffusion-v1-5/stable-diffusion-v1-5", "dpdl-benchmark/dtd"),
    "sd21_pets.yaml": ("sd", "stabilityai/stable-diffusion-2-1", "timm/oxford-iiit-pet"),
    "sdxl_pets.yaml": ("sdxl", "stabilityai/stable-diffusion-xl-base-1.0", "timm/oxford-iiit-pet"),
    "dit_xl2_256.yaml": ("dit", "facebook/DiT-XL-2-256", "timm/oxford-iiit-pet"),
}
_family_cache: dict[str, object] = {}


def family(kind: str):
    if kind not in _family_cache:
        _family_cache[kind] = tm.family_model(kind)
    return _family_cache[kind]


def known_hook_points(kind: str) -> list[str]:
    model = family(kind)
    return dit_hook_points(model) if kind == "dit" else unet_hook_points(model)


def test_the_paper_configs_are_all_there():
    missing = sorted(set(PAPER_CONFIGS) - {p.name for p in CONFIGS})
    assert not missing, f"missing example configs in {CONFIG_DIR}: {missing}"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_example_config_loads(path):
    cfg = load_config(path)
    assert cfg.sae.hook_point in cfg.extract.hook_points, "the SAE needs features that extract produces"
    assert cfg.sae.timestep in cfg.extract.timesteps
    assert cfg.probe.hook_point in cfg.extract.hook_points
    assert cfg.probe.timestep in cfg.extract.timesteps


@pytest.mark.parametrize("name", sorted(PAPER_CONFIGS))
def test_paper_configs_name_hook_points_of_their_architecture(name):
    cfg = load_config(CONFIG_DIR / name)
    kind, model_id, dataset_id = PAPER_CONFIGS[name]
    assert (cfg.backbone.kind, cfg.backbone.id, cfg.data.source, cfg.data.id) == (kind, model_id, "hf", dataset_id)
    known = known_hook_points(kind)
    model = family(kind)
    for hp in cfg.extract.hook_points:
        # a block name, or a sub-module path inside one (attention layers)
        ok = hp in known or (any(hp.startswith(k + ".") for k in known) and _has_submodule(model, hp))
        assert ok, f"{name}: hook point {hp!r} does not exist in a {kind} model; it has {known}"
    # the VAE downsamples by 8; DiT then patches the latent by 2
    assert cfg.backbone.resolution % (16 if kind == "dit" else 8) == 0
    assert cfg.data.image_size == cfg.backbone.resolution
    assert (cfg.sae.expansion, cfg.sae.k) == (16, 32)
    assert set(cfg.extract.pooling) == {"mean", "tokens"}
    assert cfg.backbone.dtype == "auto" and cfg.backbone.device == "auto"


def _has_submodule(model, path: str) -> bool:
    try:
        model.get_submodule(path)
    except AttributeError:
        return False
    return True


def test_the_family_check_can_fail():
    # up_blocks.3 exists in SD 1.5 / 2.1 (four levels) but not in SDXL (three); DiT-XL stops at block 27
    assert "up_blocks.3" in known_hook_points("sd")
    assert "up_blocks.3" not in known_hook_points("sdxl")
    assert "transformer_blocks.27" in known_hook_points("dit")
    assert "transformer_blocks.28" not in known_hook_points("dit")
