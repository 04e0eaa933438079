"""Causal steering: the same seeds with and without an SAE latent, on every backbone kind (tiny local models)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from revelio_svc.backbones import load_backbone
from revelio_svc.config import BackboneConfig
from revelio_svc.inference.steering import (
    LatentIntervention,
    SteeringSpec,
    decoder_direction,
    sample_shape,
    steer,
)
from revelio_svc.sae import TopKSAEConfig, build_sae
from tests.backbones import tiny_models as tm


def _sae(adapter, hook_point: str, n_latents: int = 16, k: int = 4, input: str = "tokens"):
    """An untrained SAE fitted to the hook point's channels (initialised from real features)."""
    x0 = adapter.encode(tm.images(4, adapter.resolution))
    xt = adapter.add_noise(x0, 10, [f"i{i}" for i in range(4)], 0)
    m = adapter.capture(xt, 10, adapter.conditioning(4), [hook_point])[hook_point]
    tok = m.float().permute(0, 2, 3, 1).reshape(-1, m.shape[1])
    sae = build_sae(TopKSAEConfig(d_in=int(m.shape[1]), n_latents=n_latents, k=k, normalize="scalar",
                                  hook_point=hook_point, timestep=10, input=input), seed=0)
    sae.init_from_data(tok)
    return sae.eval()


@pytest.fixture(scope="module")
def unet(tiny_unet_dir):
    return load_backbone(BackboneConfig(id=str(tiny_unet_dir), device="cpu"))


def _hook_output(adapter, hook_point, hook=None, t=500):
    x = torch.randn(2, *sample_shape(adapter), generator=torch.Generator().manual_seed(0))
    got = {}
    mod = adapter.model.get_submodule(hook_point)
    handles = [mod.register_forward_hook(hook)] if hook is not None else []
    handles.append(mod.register_forward_hook(lambda _m, _i, out: got.setdefault("out", adapter.to_map(hook_point, out))))
    try:
        with torch.inference_mode():
            adapter.denoise_forward(x, t, adapter.conditioning(2))
    finally:
        for h in handles:
            h.remove()
    return got["out"].float()


def test_add_moves_the_hook_output_by_alpha_times_the_decoder_direction(unet):
    hp = "up_blocks.0"
    sae = _sae(unet, hp)
    spec = SteeringSpec(latent=3, mode="add", strengths=(2.5,))
    hook = LatentIntervention(sae, spec, torch.tensor([0.0, 2.5]))
    hook.t = 500
    base, steered = _hook_output(unet, hp), _hook_output(unet, hp, hook)
    d = decoder_direction(sae, 3)
    assert torch.allclose(steered[0], base[0])  # α = 0: the baseline element is untouched
    assert torch.allclose(steered[1] - base[1], 2.5 * d[:, None, None].expand_as(base[1]), atol=1e-4)
    hook.t = 10  # outside [t_min, t_max] = [0, 999]? no: inside; a narrower range leaves it alone
    narrow = LatentIntervention(sae, SteeringSpec(3, "add", (2.5,), t_min=600, t_max=900), torch.tensor([0.0, 2.5]))
    narrow.t = 500
    assert torch.allclose(_hook_output(unet, hp, narrow), base)


def test_ablate_removes_exactly_the_latents_share_of_the_reconstruction(unet):
    hp = "up_blocks.0"
    sae = _sae(unet, hp)
    base = _hook_output(unet, hp)
    tok = base.permute(0, 2, 3, 1).reshape(-1, base.shape[1])
    vals, idx = sae.encode_sparse(tok)
    j = int(idx[0, 0])  # a latent that is active somewhere
    hook = LatentIntervention(sae, SteeringSpec(j, "ablate"), torch.tensor([1.0, 1.0]))
    hook.t = 500
    out = _hook_output(unet, hp, hook).permute(0, 2, 3, 1).reshape(-1, base.shape[1])
    z_j = (vals * (idx == j)).sum(-1)
    expect = tok - z_j[:, None] * decoder_direction(sae, j)
    assert torch.allclose(out, expect, atol=1e-4)
    after = sae.encode_sparse(out)
    # the latent no longer wins the top-k where it was strongest
    assert ((after[1] == j) & (after[0] > 0)).sum() < ((idx == j) & (vals > 0)).sum()


def test_steer_keeps_seeds_and_the_baseline_and_caches_it(unet):
    hp = "up_blocks.0"
    sae = _sae(unet, hp)
    spec = SteeringSpec(2, "add", (5.0, 50.0))
    cache: dict = {}
    calls = []
    res = steer(unet, sae, hp, spec, [0, 1, 2], steps=6, cache=cache, progress=lambda d, t: calls.append((d, t)))
    assert res.images.shape == (3, 3, 16, 16, 3) and res.images.dtype == np.uint8
    assert res.variants[0] == "baseline" and res.steered_steps == 6
    assert calls[-1] == (12, 12)  # 6 baseline steps + 6 steered steps
    again = steer(unet, sae, hp, spec, [0, 1, 2], steps=6, cache=cache, progress=lambda d, t: calls.append((d, t)))
    assert calls[-1] == (6, 6)  # the baseline came from the cache
    assert np.array_equal(again.images, res.images)
    alone = steer(unet, sae, hp, SteeringSpec(2, "add", (5.0,)), [1], steps=6)
    # a seed's sample does not depend on its batch (up to float rounding of batched kernels)
    assert np.abs(alone.images[0, 0].astype(int) - res.images[0, 1]).max() <= 2
    none = steer(unet, sae, hp, SteeringSpec(2, "add", (5.0,), t_min=998, t_max=999), [0], steps=6)
    assert none.steered_steps == 0 and np.array_equal(none.images[0], none.images[1])


def test_ddpm_branches_share_the_noise_of_their_seed(unet):
    hp = "up_blocks.0"
    sae = _sae(unet, hp)
    res = steer(unet, sae, hp, SteeringSpec(1, "add", (0.0,)), [4, 5], steps=5, sampler="ddpm")
    assert np.array_equal(res.images[0], res.images[1])  # α = 0 is the baseline, step noise included


@pytest.mark.parametrize("kind,hook_point", [("sd", "mid_block"), ("sdxl", "down_blocks.1"),
                                             ("dit", "transformer_blocks.1")])
def test_the_same_code_path_steers_latent_diffusion_adapters(tmp_path_factory, kind, hook_point):
    path = tm.pipeline_dir(tmp_path_factory, kind)
    ad = load_backbone(BackboneConfig(kind=kind, id=str(path), device="cpu"))
    sae = _sae(ad, hook_point)
    res = steer(ad, sae, hook_point, SteeringSpec(0, "add", (200.0,)), [0, 1], steps=3)
    assert res.images.shape == (2, 2, tm.IMAGE_SIZE, tm.IMAGE_SIZE, 3)
    assert res.change[1] > 0  # the latent's direction changed the samples
    abl = steer(ad, sae, hook_point, SteeringSpec(0, "ablate"), [0], steps=3)
    assert abl.variants == ["baseline", "latent 0 zeroed"]


def test_bad_specs_are_refused():
    with pytest.raises(ValueError, match="mode"):
        SteeringSpec(0, "scale")
    with pytest.raises(ValueError, match="empty"):
        SteeringSpec(0, t_min=10, t_max=5)
    with pytest.raises(ValueError, match="finite"):
        SteeringSpec(0, strengths=(float("nan"),))


@pytest.mark.parametrize("normalize", ["scalar", "standard", "whiten"])
def test_decoder_direction_is_what_one_unit_of_the_latent_adds_to_the_reconstruction(normalize):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 12, generator=g) @ torch.randn(12, 12, generator=g) * 3 + 1  # correlated, off-centre
    sae = build_sae(TopKSAEConfig(d_in=12, n_latents=8, k=2, normalize=normalize, hook_point="h", timestep=10,
                                  whiten_power=1.0), seed=0)
    sae.init_from_data(x)
    z = torch.zeros(2, 8)
    z[1, 5] = 1.0
    with torch.no_grad():
        rec = sae.decode(z)
    assert torch.allclose(decoder_direction(sae, 5), rec[1] - rec[0], atol=1e-4)
