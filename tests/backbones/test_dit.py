"""DiT adapter on a tiny class-conditional DiTTransformer2DModel pipeline built locally."""
from __future__ import annotations

import logging
import time

import pytest
import torch
from diffusers import DiTTransformer2DModel

from revelio_svc.backbones import ModelUnavailableError, load_backbone
from revelio_svc.backbones.dit import DiTAdapter
from revelio_svc.config import BackboneConfig, ConfigError
from tests.backbones import tiny_models as tm
from tests.backbones.tiny_models import FireCounter, features

IDS4 = ["d0", "d1", "d2", "d3"]
GRID = tm.LATENT_SIZE // tm.DIT_PATCH  # 4 × 4 tokens


@pytest.fixture(scope="session")
def dit_dir(tmp_path_factory):
    return tm.pipeline_dir(tmp_path_factory, "dit")


@pytest.fixture(scope="module")
def dit(dit_dir):
    return load_backbone(BackboneConfig(kind="dit", id=str(dit_dir), device="cpu"))


def adapter(path, **kw):
    return DiTAdapter(BackboneConfig(kind="dit", id=str(path), device="cpu", **kw))


def test_load_backbone_dispatches(dit):
    assert isinstance(dit, DiTAdapter)
    assert isinstance(dit.transformer, DiTTransformer2DModel)
    assert dit.resolution == tm.IMAGE_SIZE
    assert dit.null_class == tm.DIT_CLASSES
    assert dit.hook_points() == [f"transformer_blocks.{i}" for i in range(tm.DIT_LAYERS)]


@pytest.mark.parametrize("name", [f"transformer_blocks.{i}" for i in range(tm.DIT_LAYERS)]
                         + ["transformer_blocks.1.attn1", "transformer_blocks.2.ff"])
def test_every_hook_point_captures_token_maps(dit, name):
    dit.validate_hook_points([name])
    maps = features(dit, tm.images(2), IDS4[:2], 100, [name])
    assert tuple(maps[name].shape) == (2, tm.DIT_WIDTH, GRID, GRID)
    assert torch.isfinite(maps[name]).all()


def test_to_map_puts_token_k_at_row_k_div_w_column_k_mod_w(dit):
    raw = {}
    handle = dit.transformer.get_submodule("transformer_blocks.2").register_forward_hook(
        lambda _m, _i, out: raw.setdefault("x", out.clone()))
    try:
        maps = features(dit, tm.images(1), IDS4[:1], 100, ["transformer_blocks.2"])
    finally:
        handle.remove()
    tokens = raw["x"]
    assert tokens.shape == (1, GRID * GRID, tm.DIT_WIDTH)
    for k in (0, 5, GRID * GRID - 1):
        torch.testing.assert_close(maps["transformer_blocks.2"][0, :, k // GRID, k % GRID], tokens[0, k])


def test_learned_sigma_output_does_not_break_the_forward(dit):
    assert dit.transformer.config.out_channels == 2 * dit.transformer.config.in_channels
    x_t = dit.add_noise(dit.encode(tm.images(2)), 10, IDS4[:2], 0)
    out = dit.denoise_forward(x_t, 10, dit.conditioning(2))
    assert out.shape == (2, 2 * tm.LATENT_CHANNELS, tm.LATENT_SIZE, tm.LATENT_SIZE)
    last = f"transformer_blocks.{tm.DIT_LAYERS - 1}"
    maps = dit.capture(x_t, 10, dit.conditioning(2), [last], stop_early=False)
    assert maps[last].shape == (2, tm.DIT_WIDTH, GRID, GRID)


# --------------------------------------------------------------------------- conditioning
def test_empty_and_generic_use_the_null_class(dit_dir, dit, caplog):
    assert dit.conditioning(3).kwargs["class_labels"].tolist() == [tm.DIT_CLASSES] * 3
    g = adapter(dit_dir, prompt_mode="generic")
    with caplog.at_level(logging.WARNING, logger="revelio_svc.backbones.dit"):
        labels = g.conditioning(2).kwargs["class_labels"]
        g.conditioning(2)
    assert labels.tolist() == [tm.DIT_CLASSES] * 2
    assert sum("null class" in r.getMessage() for r in caplog.records) == 1


def test_class_mode_uses_class_ids_when_given_and_the_null_class_otherwise(dit_dir, dit, caplog):
    a = adapter(dit_dir, prompt_mode="class")
    assert a.conditioning(2, class_names=["3", 7]).kwargs["class_labels"].tolist() == [3, 7]
    with caplog.at_level(logging.WARNING, logger="revelio_svc.backbones.dit"):
        assert a.conditioning(2, class_names=["cat", "dog"]).kwargs["class_labels"].tolist() == [10, 10]
        # out of range for this model's classes → not an id
        assert a.conditioning(1, class_names=["10"]).kwargs["class_labels"].tolist() == [10]
    assert any("not class ids" in r.getMessage() for r in caplog.records)
    with pytest.raises(ConfigError, match="class"):
        a.conditioning(2)
    f_class = features(a, tm.images(2), IDS4[:2], 100, ["transformer_blocks.1"], class_names=["3", "7"])
    f_null = features(dit, tm.images(2), IDS4[:2], 100, ["transformer_blocks.1"])
    assert not torch.allclose(f_class["transformer_blocks.1"], f_null["transformer_blocks.1"], atol=1e-5)


def test_caption_mode_is_refused(dit_dir):
    with pytest.raises(ConfigError, match="caption.*class labels"):
        adapter(dit_dir, prompt_mode="caption")


# --------------------------------------------------------------------------- determinism, early stop
def test_features_are_deterministic_and_independent_of_the_batch(dit):
    imgs = tm.images(4, seed=9)
    names = ["transformer_blocks.0", "transformer_blocks.3"]
    batch = features(dit, imgs, IDS4, 250, names)
    again = features(dit, imgs, IDS4, 250, names)
    assert all(torch.equal(batch[n], again[n]) for n in names)
    for j in range(4):
        one = features(dit, imgs[j:j + 1], IDS4[j:j + 1], 250, names)
        for n in names:
            torch.testing.assert_close(one[n][0], batch[n][j], atol=1e-5, rtol=1e-4)


def test_capture_stops_after_the_deepest_requested_block(dit):
    later = ["transformer_blocks.1", "transformer_blocks.3", "proj_out_2"]
    with FireCounter(dit.transformer, later) as fc:
        maps = features(dit, tm.images(2), IDS4[:2], 10, ["transformer_blocks.0"])
    assert set(maps) == {"transformer_blocks.0"}
    assert fc.counts == {n: 0 for n in later}
    with FireCounter(dit.transformer, later) as fc:
        features(dit, tm.images(2), IDS4[:2], 10, ["transformer_blocks.0"], stop_early=False)
    assert fc.counts == {n: 1 for n in later}


# --------------------------------------------------------------------------- checkpoints, init, errors
def test_hub_style_transformer2dmodel_checkpoint_loads_as_dit(tmp_path_factory, dit):
    legacy = adapter(tm.pipeline_dir(tmp_path_factory, "dit-legacy"))
    assert isinstance(legacy.transformer, DiTTransformer2DModel)
    # built from the same seed: the remapped model is the same network
    a = features(legacy, tm.images(2), IDS4[:2], 100, ["transformer_blocks.3"])
    b = features(dit, tm.images(2), IDS4[:2], 100, ["transformer_blocks.3"])
    torch.testing.assert_close(a["transformer_blocks.3"], b["transformer_blocks.3"])


def test_random_init_differs_from_pretrained(dit_dir, dit):
    r = adapter(dit_dir, init="random", init_seed=0)
    r2 = adapter(dit_dir, init="random", init_seed=0)
    f = [features(m, tm.images(2), IDS4[:2], 100, ["transformer_blocks.2"])["transformer_blocks.2"]
         for m in (dit, r, r2)]
    assert not torch.allclose(f[0], f[1], atol=1e-4)
    torch.testing.assert_close(f[1], f[2])


def test_resolution_must_fit_the_patch_size(dit_dir):
    a = adapter(dit_dir, resolution=32)
    maps = features(a, tm.images(1), IDS4[:1], 10, ["transformer_blocks.0"])
    assert maps["transformer_blocks.0"].shape == (1, tm.DIT_WIDTH, 8, 8)
    with pytest.raises(ConfigError, match="patch size"):
        adapter(dit_dir, resolution=18)  # 9 latent pixels, patch 2


def test_unknown_hub_id_fails_fast_with_instructions(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(ModelUnavailableError) as err:
        load_backbone(BackboneConfig(kind="dit", id="nonexistent-org/nonexistent-model", device="cpu"))
    assert time.monotonic() - start < 5
    assert "nonexistent-org/nonexistent-model" in str(err.value)
    assert "download" in str(err.value) and "local directory" in str(err.value)
