"""The SAE spliced into the backbone: loss recovered is 1 for an identity SAE and 0 for a zero one."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from revelio_svc.backbones import load_backbone
from revelio_svc.config import BackboneConfig, DataConfig
from revelio_svc.data import load_dataset
from revelio_svc.evaluate.fidelity import (
    SpliceHook,
    denoising_losses,
    loss_recovered,
    mean_maps,
    sample_with_splice,
    splice,
)
from revelio_svc.sae import TopKSAE, TopKSAEConfig

HOOK = "up_blocks.1"  # 128 channels, 16×16 in the shipped 32-px UNet


def test_loss_recovered_is_one_at_clean_and_zero_at_the_floor():
    assert loss_recovered(1.0, 1.0, 3.0) == 1.0
    assert loss_recovered(1.0, 3.0, 3.0) == 0.0
    assert loss_recovered(1.0, 2.0, 3.0) == pytest.approx(0.5)
    assert loss_recovered(1.0, 4.0, 3.0) == pytest.approx(-0.5)  # worse than the floor: negative
    assert math.isnan(loss_recovered(1.0, 1.0, 0.5))  # ablation does not hurt: nothing to recover


def _sae(d: int, kind: str, input_: str = "tokens", pooling: str = "") -> TopKSAE:
    """identity: z = [relu(x), relu(−x)], x̂ = z₊ − z₋ = x (k = every latent); zero: x̂ = 0."""
    sae = TopKSAE(TopKSAEConfig(d_in=d, n_latents=2 * d, k=2 * d, normalize="none", hook_point=HOOK, timestep=10,
                                input=input_, pooling=pooling))
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye]))
        sae.W_dec.copy_(torch.cat([eye, -eye]) if kind == "identity" else torch.zeros(2 * d, d))
    return sae.eval()


@pytest.fixture(scope="module")
def backbone():
    return load_backbone(BackboneConfig(id="builtin:shapes-unet", device="cpu"))


@pytest.fixture(scope="module")
def images():
    ds = load_dataset(DataConfig(source="shapes", n_images=8, image_size=32, seed=3))
    return np.stack([ds.image(i) for i in range(8)]), ds.ids()


def test_identity_sae_recovers_one_and_zero_sae_recovers_zero(backbone, images):
    imgs, ids = images
    ts = [10, 250]
    means = mean_maps(backbone, HOOK, imgs[4:], ids[4:], ts, noise_seed=0)
    assert means[10].shape == (128, 16, 16)
    ident = denoising_losses(backbone, _sae(128, "identity"), HOOK, imgs[:4], ids[:4], ts, means, 0)
    zero = denoising_losses(backbone, _sae(128, "zero"), HOOK, imgs[:4], ids[:4], ts, means, 0)
    assert ident.n_images == 4
    for t in ts:
        L = ident.losses[t]
        assert L["zero"] > L["clean"] and L["mean"] > L["clean"]  # the floors do hurt
        assert ident.recovered(t, "zero") == pytest.approx(1.0, abs=1e-4)
        assert ident.recovered(t, "mean") == pytest.approx(1.0, abs=1e-4)
        assert zero.recovered(t, "zero") == pytest.approx(0.0, abs=1e-6)
        assert zero.losses[t]["clean"] == pytest.approx(L["clean"])  # the same images and noise
    m = ident.metrics(10)
    assert m["loss_recovered.zero"] == pytest.approx(1.0, abs=1e-4) and "loss.spliced.t250" in m


def test_splice_keeps_the_layout_and_a_pooled_sae_fixes_the_pooled_vector():
    torch.manual_seed(0)
    h = torch.randn(2, 6, 4, 5)
    assert torch.allclose(splice(_sae(6, "identity"), h), h, atol=1e-5)
    for pooling, pool in (("mean", lambda x: x.mean((2, 3))), ("max", lambda x: x.amax((2, 3)))):
        sae = TopKSAE(TopKSAEConfig(d_in=6, n_latents=12, k=3, normalize="scalar", input="pooled", pooling=pooling))
        sae.init_from_data(torch.randn(64, 6))
        out = splice(sae, h)
        # every position shifted by the pooled vector's reconstruction error: it pools to the reconstruction
        assert torch.allclose(pool(out), sae(pool(h)), atol=1e-5)
    with pytest.raises(ValueError, match="channels"):
        splice(_sae(5, "identity"), h)


def test_hook_replaces_a_tuple_output_and_needs_its_mean_map():
    hook = SpliceHook(None, "zero")
    out = hook(None, None, (torch.ones(1, 2, 3, 3), "res"))
    assert torch.equal(out[0], torch.zeros(1, 2, 3, 3)) and out[1] == "res"
    mean = SpliceHook(None, "mean", {10: torch.full((2, 3, 3), 7.0)})
    mean.t = 10
    assert torch.equal(mean(None, None, torch.zeros(4, 2, 3, 3)), torch.full((4, 2, 3, 3), 7.0))
    mean.t = 99
    with pytest.raises(KeyError, match="99"):
        mean(None, None, torch.zeros(1, 2, 3, 3))
    with pytest.raises(ValueError):
        SpliceHook(None, "spliced")


def test_ddim_samples_with_an_identity_sae_equal_the_clean_ones(backbone):
    res = sample_with_splice(backbone, _sae(128, "identity"), HOOK, [0, 1], steps=3)
    assert res.clean.shape == (2, 32, 32, 3) and res.clean.dtype == np.uint8
    m = res.metrics()
    assert m["sampling.pixel_mae"] < 0.05 * m["sampling.pixel_mae_between_seeds"]
    zero = sample_with_splice(backbone, _sae(128, "zero"), HOOK, [0, 1], steps=3).metrics()
    assert zero["sampling.pixel_mae"] > 10 * max(m["sampling.pixel_mae"], 0.01)
