"""Stable Diffusion 1.x/2.x adapter on a tiny random-weight pipeline built locally."""
from __future__ import annotations

import logging
import shutil
import time

import numpy as np
import pytest
import torch

from revelio_svc.backbones import ModelUnavailableError, load_backbone
from revelio_svc.backbones.sd import (
    StableDiffusionAdapter,
    preprocess_images,
    tokens_to_map,
)
from revelio_svc.config import BackboneConfig, ConfigError
from tests.backbones import tiny_models as tm
from tests.backbones.tiny_models import FireCounter, features

IDS4 = ["img-a", "img-b", "img-c", "img-d"]
# tiny UNet (32, 64) on 8×8 latents: level 0 downsamples, level 1 does not; up block 0 upsamples
EXPECTED = {
    "down_blocks.0": (32, 4, 4),
    "down_blocks.1": (64, 4, 4),
    "mid_block": (64, 4, 4),
    "up_blocks.0": (64, 8, 8),
    "up_blocks.1": (32, 8, 8),
    # attention sub-modules by path: a Transformer2DModel (maps) and a transformer block (tokens)
    "down_blocks.0.attentions.0": (32, 8, 8),
    "up_blocks.1.attentions.0.transformer_blocks.0": (32, 8, 8),
}


@pytest.fixture(scope="session")
def sd_dir(tmp_path_factory):
    return tm.pipeline_dir(tmp_path_factory, "sd")


@pytest.fixture(scope="module")
def sd(sd_dir):
    return load_backbone(BackboneConfig(kind="sd", id=str(sd_dir), device="cpu"))


def adapter(sd_dir, **kw):
    return StableDiffusionAdapter(BackboneConfig(kind="sd", id=str(sd_dir), device="cpu", **kw))


# --------------------------------------------------------------------------- loading, hook points
def test_load_backbone_dispatches_and_reads_the_pipeline(sd):
    assert isinstance(sd, StableDiffusionAdapter)
    assert sd.resolution == tm.IMAGE_SIZE  # unet sample_size 8 × VAE factor 2
    assert sd.vae_scale_factor == tm.VAE_SCALE
    assert sd.scheduler_class == "PNDMScheduler"
    assert sd.dtype == torch.float32 and sd.device.type == "cpu"
    assert sd.vae.dtype == torch.float32


def test_hook_points_are_listed_in_execution_order(sd):
    names = sd.hook_points()
    assert names == ["down_blocks.0", "down_blocks.1", "mid_block", "up_blocks.0", "up_blocks.1"]
    order = []
    handles = [sd.unet.get_submodule(n).register_forward_hook(lambda *_, n=n: order.append(n)) for n in names]
    try:
        features(sd, tm.images(1), IDS4[:1], 10, ["up_blocks.1"])
    finally:
        for h in handles:
            h.remove()
    assert order == names


@pytest.mark.parametrize("name", list(EXPECTED))
def test_every_hook_point_captures_maps_of_the_expected_shape(sd, name):
    sd.validate_hook_points([name])
    maps = features(sd, tm.images(2), IDS4[:2], 50, [name])
    assert set(maps) == {name}
    assert tuple(maps[name].shape) == (2, *EXPECTED[name])
    assert torch.isfinite(maps[name]).all()


def test_all_hook_points_in_one_forward(sd):
    maps = features(sd, tm.images(2), IDS4[:2], 50, sd.hook_points())
    assert {k: tuple(v.shape[1:]) for k, v in maps.items()} == {k: EXPECTED[k] for k in sd.hook_points()}


def test_unknown_hook_point_is_rejected_with_the_known_ones(sd):
    with pytest.raises(ConfigError, match=r"up_blocks\.7.*down_blocks\.0, down_blocks\.1, mid_block"):
        sd.validate_hook_points(["up_blocks.7"])


def test_tokens_to_map_reshapes_square_token_grids_and_rejects_others():
    tokens = torch.arange(2 * 16 * 3, dtype=torch.float32).reshape(2, 16, 3)
    m = tokens_to_map("x", tokens)
    assert m.shape == (2, 3, 4, 4)
    # token k is at row k // 4, column k % 4
    assert torch.equal(m[:, :, 2, 1], tokens[:, 9, :])
    with pytest.raises(ValueError, match="not a square grid"):
        tokens_to_map("x", torch.zeros(1, 15, 3))


# --------------------------------------------------------------------------- images → latents → x_t
def test_encode_is_the_vae_mode_times_the_scaling_factor(sd):
    imgs = tm.images(3)
    x0 = sd.encode(imgs)
    assert x0.shape == (3, tm.LATENT_CHANNELS, tm.LATENT_SIZE, tm.LATENT_SIZE)
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        ref = sd.vae.encode(x).latent_dist.mode() * sd.vae.config.scaling_factor
    torch.testing.assert_close(x0, ref)
    assert sd.vae.config.scaling_factor != 1.0  # the factor is really applied


def test_images_are_resized_and_centre_cropped_to_the_resolution(sd):
    centre = tm.images(1, seed=3)
    wide = tm.images(1, size=tm.IMAGE_SIZE + 8, height=tm.IMAGE_SIZE, seed=4)
    wide[:, :, 4:4 + tm.IMAGE_SIZE] = centre  # margins differ, the centre square is `centre`
    torch.testing.assert_close(sd.encode(wide), sd.encode(centre))
    big = np.repeat(np.repeat(centre, 2, axis=1), 2, axis=2)  # 32×32 → resized down to 16×16
    assert sd.encode(big).shape == (1, tm.LATENT_CHANNELS, tm.LATENT_SIZE, tm.LATENT_SIZE)
    # images of different sizes in one list
    assert sd.encode([centre[0], wide[0], big[0]]).shape[0] == 3
    with pytest.raises(ValueError, match=r"\(B, H, W, 3\)"):
        sd.encode(np.zeros((2, 16, 16), dtype=np.uint8))


def test_preprocess_maps_uint8_to_minus_one_one():
    x = preprocess_images(np.array([[[[0, 255, 127]]]], dtype=np.uint8).repeat(4, 1).repeat(4, 2), 4)
    assert x.shape == (1, 3, 4, 4)
    assert x[0, 0, 0, 0] == -1 and x[0, 1, 0, 0] == 1


def test_add_noise_uses_the_models_training_schedule_and_per_image_seeds(sd):
    x0 = sd.encode(tm.images(4))
    t = 300
    x_t = sd.add_noise(x0, t, IDS4, seed=7)
    # SD's scaled_linear betas, independent of the PNDM sampler class it ships
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    a = torch.cumprod(1 - betas, 0)[t].float()
    noise = torch.stack([tm_noise(sd, x0, 7, iid, t) for iid in IDS4])
    torch.testing.assert_close(x_t, a.sqrt() * x0 + (1 - a).sqrt() * noise)
    # image "img-c" gets the same noise alone as in the batch
    torch.testing.assert_close(sd.add_noise(x0[2:3], t, IDS4[2:3], seed=7), x_t[2:3])
    assert not torch.allclose(sd.add_noise(x0, t, IDS4, seed=8), x_t)
    with pytest.raises(ConfigError, match="outside"):
        sd.add_noise(x0, 1000, IDS4, seed=7)


def tm_noise(sd, x0, seed, iid, t):
    from revelio_svc.backbones.base import seeded_noise

    return seeded_noise(x0.shape[1:], seed, [iid], t)[0]


# --------------------------------------------------------------------------- prompt modes
def test_prompt_modes_give_the_expected_prompts(sd_dir):
    names = ["cat", "dog"]
    assert adapter(sd_dir).prompts(2) == ["", ""]
    assert adapter(sd_dir, prompt_mode="generic", generic_prompt="a photo").prompts(2) == ["a photo"] * 2
    assert adapter(sd_dir, prompt_mode="class").prompts(2, class_names=names) == ["a photo of a cat",
                                                                                "a photo of a dog"]
    assert adapter(sd_dir, prompt_mode="caption").prompts(2, captions=["x", "y"]) == ["x", "y"]


@pytest.mark.parametrize("mode", ["empty", "generic", "class", "caption"])
def test_every_prompt_mode_conditions_the_unet(sd_dir, sd, mode):
    a = adapter(sd_dir, prompt_mode=mode)
    kw = {"class_names": ["cat", "dog"], "captions": ["a dog", "the cat"]}
    cond = a.conditioning(2, **kw)
    assert cond.kwargs["encoder_hidden_states"].shape == (2, tm.TEXT_MAX_LENGTH, tm.TEXT_HIDDEN)
    assert "added_cond_kwargs" not in cond.kwargs
    maps = features(a, tm.images(2), IDS4[:2], 50, ["up_blocks.1"], **kw)["up_blocks.1"]
    empty = features(sd, tm.images(2), IDS4[:2], 50, ["up_blocks.1"])["up_blocks.1"]
    if mode == "empty":
        torch.testing.assert_close(maps, empty)
    else:
        assert not torch.allclose(maps, empty, atol=1e-5), f"prompt_mode={mode} did not change the features"
    if mode in ("class", "caption"):  # per-image prompts: the two images get different conditioning
        h = cond.kwargs["encoder_hidden_states"]
        assert not torch.allclose(h[0], h[1])


def test_class_mode_needs_class_names_and_warns_once_about_the_label_leak(sd_dir, caplog):
    a = adapter(sd_dir, prompt_mode="class")
    with pytest.raises(ConfigError, match="class name"):
        a.conditioning(2)
    with pytest.raises(ValueError, match="1 class names for 2 images"):
        a.conditioning(2, class_names=["cat"])
    with caplog.at_level(logging.WARNING, logger="revelio_svc.backbones.sd"):
        a.conditioning(2, class_names=["cat", "dog"])
        a.conditioning(2, class_names=["dog", "dog"])
    leaks = [r for r in caplog.records if "label" in r.getMessage()]
    assert len(leaks) == 1


def test_caption_mode_errors_without_captions(sd_dir):
    a = adapter(sd_dir, prompt_mode="caption")
    with pytest.raises(ConfigError, match="caption_column"):
        a.conditioning(2)


def test_each_distinct_prompt_is_encoded_once(sd_dir):
    a = adapter(sd_dir, prompt_mode="caption")
    with FireCounter(a.text_encoders[0], [""]) as fc:  # "" = the text encoder module itself
        h1 = a.conditioning(3, captions=["a cat", "a dog", "a cat"]).kwargs["encoder_hidden_states"]
        h2 = a.conditioning(2, captions=["a dog", "a cat"]).kwargs["encoder_hidden_states"]
        assert fc.counts[""] == 1  # one batch with the two distinct captions, then only the cache
        a.conditioning(1, captions=["the dog"])
        assert fc.counts[""] == 2
    torch.testing.assert_close(h1[0], h1[2])
    torch.testing.assert_close(h2[0], h1[1])
    assert a.text_encoder_calls == 2


# --------------------------------------------------------------------------- determinism, early stop
def test_features_are_deterministic_and_independent_of_the_batch(sd):
    imgs = tm.images(4, seed=11)
    names = ["down_blocks.1", "up_blocks.1"]
    first = features(sd, imgs, IDS4, 200, names)
    again = features(sd, imgs, IDS4, 200, names)
    for n in names:
        assert torch.equal(first[n], again[n])
    for j in range(4):
        alone = features(sd, imgs[j:j + 1], IDS4[j:j + 1], 200, names)
        for n in names:
            torch.testing.assert_close(alone[n][0], first[n][j], atol=1e-5, rtol=1e-4)
    # a different image id is different noise, so a different feature
    other = features(sd, imgs[:1], ["img-z"], 200, names)
    assert not torch.allclose(other["up_blocks.1"][0], first["up_blocks.1"][0], atol=1e-4)


def test_capture_stops_after_the_deepest_requested_hook_point(sd):
    later = ["down_blocks.1", "mid_block", "up_blocks.0", "up_blocks.1", "conv_out"]
    with FireCounter(sd.unet, later) as fc:
        maps = features(sd, tm.images(2), IDS4[:2], 10, ["down_blocks.0"])
    assert set(maps) == {"down_blocks.0"}
    assert fc.counts == {n: 0 for n in later}
    # the same counters fire when the forward is not stopped, so the check above can fail
    with FireCounter(sd.unet, later) as fc:
        features(sd, tm.images(2), IDS4[:2], 10, ["down_blocks.0"], stop_early=False)
    assert fc.counts == {n: 1 for n in later}


# --------------------------------------------------------------------------- random init, errors
def test_random_init_differs_from_pretrained_and_is_seeded(sd_dir, sd):
    rand0 = adapter(sd_dir, init="random", init_seed=0)
    rand0b = adapter(sd_dir, init="random", init_seed=0)
    rand1 = adapter(sd_dir, init="random", init_seed=1)
    w = "conv_in.weight"
    p = dict(sd.unet.named_parameters())[w]
    r0, r0b, r1 = (dict(a.unet.named_parameters())[w] for a in (rand0, rand0b, rand1))
    assert not torch.allclose(p, r0)
    assert torch.equal(r0, r0b)
    assert not torch.allclose(r0, r1)
    f_pre = features(sd, tm.images(2), IDS4[:2], 50, ["mid_block"])["mid_block"]
    f_rand = features(rand0, tm.images(2), IDS4[:2], 50, ["mid_block"])["mid_block"]
    assert not torch.allclose(f_pre, f_rand, atol=1e-4)
    # only the denoiser is re-initialised: the VAE (and so x0) is the pretrained one
    torch.testing.assert_close(rand0.encode(tm.images(2)), sd.encode(tm.images(2)))
    assert rand0.describe()["init"] == "random" and rand0.describe()["init_seed"] == 0


def test_describe_names_what_changes_the_features(sd_dir, sd):
    d = sd.describe()
    assert d["kind"] == "sd" and d["id"] == str(sd_dir) and d["resolution"] == tm.IMAGE_SIZE
    assert d["prompt_mode"] == "empty"
    assert adapter(sd_dir, prompt_mode="generic", generic_prompt="a dog").describe()["generic_prompt"] == "a dog"


def test_resolution_override_changes_the_latent_size(sd_dir):
    a = adapter(sd_dir, resolution=32)
    assert a.encode(tm.images(1)).shape[-2:] == (16, 16)
    maps = features(a, tm.images(1), IDS4[:1], 10, ["up_blocks.1"])
    assert maps["up_blocks.1"].shape == (1, 32, 16, 16)
    with pytest.raises(ConfigError, match="multiple"):
        adapter(sd_dir, resolution=17)


def test_unknown_hub_id_fails_fast_with_instructions(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model_id = "nonexistent-org/nonexistent-model"
    start = time.monotonic()
    with pytest.raises(ModelUnavailableError) as err:
        load_backbone(BackboneConfig(kind="sd", id=model_id, device="cpu"))
    assert time.monotonic() - start < 5
    msg = str(err.value)
    assert model_id in msg
    assert "download" in msg and "local directory" in msg


def test_local_directory_missing_a_part_names_it(sd_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(sd_dir, broken)
    shutil.rmtree(broken / "text_encoder")
    with pytest.raises(ModelUnavailableError, match=r"missing subfolder\(s\) text_encoder/"):
        adapter(broken)


def test_sdxl_pipeline_loaded_as_sd_says_to_use_kind_sdxl(tmp_path_factory):
    with pytest.raises(ConfigError, match="kind: sdxl"):
        StableDiffusionAdapter(BackboneConfig(kind="sd", id=str(tm.pipeline_dir(tmp_path_factory, "sdxl")),
                                              device="cpu"))


def test_pickled_weights_are_never_loaded(sd_dir, tmp_path):
    only_bin = tmp_path / "only-bin"
    shutil.copytree(sd_dir, only_bin)
    (only_bin / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    # a .bin next to it must not be picked up as a fallback (its content is never read)
    (only_bin / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelUnavailableError, match=r"unet/.*no \.safetensors weights"):
        adapter(only_bin)
