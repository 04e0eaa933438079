"""SDXL adapter: two text encoders, pooled text embeddings and time ids, on a tiny local pipeline."""
from __future__ import annotations

import logging
import shutil
import time

import pytest
import torch

from revelio_svc.backbones import ModelUnavailableError, load_backbone
from revelio_svc.backbones.sd import StableDiffusionAdapter
from revelio_svc.config import BackboneConfig, ConfigError
from tests.backbones import tiny_models as tm
from tests.backbones.tiny_models import FireCounter, features

IDS4 = ["x-0", "x-1", "x-2", "x-3"]
EXPECTED = {
    "down_blocks.0": (32, 4, 4),
    "down_blocks.1": (64, 4, 4),
    "mid_block": (64, 4, 4),
    "up_blocks.0": (64, 8, 8),
    "up_blocks.1": (32, 8, 8),
    "down_blocks.1.attentions.0": (64, 4, 4),
}


@pytest.fixture(scope="session")
def sdxl_dir(tmp_path_factory):
    return tm.pipeline_dir(tmp_path_factory, "sdxl")


@pytest.fixture(scope="module")
def xl(sdxl_dir):
    return load_backbone(BackboneConfig(kind="sdxl", id=str(sdxl_dir), device="cpu"))


def adapter(sdxl_dir, **kw):
    return StableDiffusionAdapter(BackboneConfig(kind="sdxl", id=str(sdxl_dir), device="cpu", **kw))


def test_loads_both_text_encoders_and_the_euler_schedule(xl):
    assert isinstance(xl, StableDiffusionAdapter) and xl.is_xl
    assert len(xl.text_encoders) == 2 and len(xl.tokenizers) == 2
    assert xl.scheduler_class == "EulerDiscreteScheduler"
    assert xl.resolution == tm.IMAGE_SIZE


@pytest.mark.parametrize("name", list(EXPECTED))
def test_every_hook_point_captures_maps_of_the_expected_shape(xl, name):
    xl.validate_hook_points([name])
    maps = features(xl, tm.images(2), IDS4[:2], 100, [name])
    assert tuple(maps[name].shape) == (2, *EXPECTED[name])
    assert torch.isfinite(maps[name]).all()


def test_conditioning_has_concatenated_states_pooled_text_and_time_ids(xl):
    cond = xl.conditioning(3).kwargs
    hidden = cond["encoder_hidden_states"]
    added = cond["added_cond_kwargs"]
    assert hidden.shape == (3, tm.TEXT_MAX_LENGTH, 2 * tm.TEXT_HIDDEN)
    assert added["text_embeds"].shape == (3, tm.TEXT_HIDDEN)
    r = tm.IMAGE_SIZE  # (original size, crop top-left, target size)
    assert added["time_ids"].tolist() == [[r, r, 0, 0, r, r]] * 3
    # the same thing computed directly: penultimate layers of both encoders, pooled projection of the second
    with torch.no_grad():
        outs = []
        for tok, te in zip(xl.tokenizers, xl.text_encoders):
            ids = tok([""], padding="max_length", max_length=tm.TEXT_MAX_LENGTH, return_tensors="pt").input_ids
            outs.append(te(ids, output_hidden_states=True))
    torch.testing.assert_close(hidden[0], torch.cat([o.hidden_states[-2][0] for o in outs], dim=-1))
    torch.testing.assert_close(added["text_embeds"][0], outs[1].text_embeds[0])


def test_time_ids_follow_the_resolution(sdxl_dir):
    a = adapter(sdxl_dir, resolution=32)
    assert a.conditioning(1).kwargs["added_cond_kwargs"]["time_ids"].tolist() == [[32, 32, 0, 0, 32, 32]]
    assert features(a, tm.images(1), IDS4[:1], 10, ["up_blocks.1"])["up_blocks.1"].shape == (1, 32, 16, 16)


def test_pooled_text_and_time_ids_reach_the_unet(xl):
    imgs = tm.images(2)
    x_t = xl.add_noise(xl.encode(imgs), 100, IDS4[:2], 0)
    cond = xl.conditioning(2)
    base = xl.capture(x_t, 100, cond, ["mid_block"])["mid_block"]
    for key in ("text_embeds", "time_ids"):
        changed = {**cond.kwargs["added_cond_kwargs"], key: cond.kwargs["added_cond_kwargs"][key] + 1.0}
        other = xl.capture(x_t, 100, type(cond)({**cond.kwargs, "added_cond_kwargs": changed}), ["mid_block"])
        assert not torch.allclose(other["mid_block"], base, atol=1e-5), key


@pytest.mark.parametrize("mode", ["empty", "generic", "class", "caption"])
def test_every_prompt_mode(sdxl_dir, xl, mode):
    a = adapter(sdxl_dir, prompt_mode=mode)
    kw = {"class_names": ["cat", "dog"], "captions": ["a dog", "the cat"]}
    f = features(a, tm.images(2), IDS4[:2], 100, ["up_blocks.0"], **kw)["up_blocks.0"]
    empty = features(xl, tm.images(2), IDS4[:2], 100, ["up_blocks.0"])["up_blocks.0"]
    assert (torch.allclose(f, empty)) == (mode == "empty")
    pooled = a.conditioning(2, **kw).kwargs["added_cond_kwargs"]["text_embeds"]
    assert torch.allclose(pooled[0], pooled[1]) == (mode in ("empty", "generic"))


def test_class_and_caption_modes_need_their_inputs(sdxl_dir, caplog):
    with pytest.raises(ConfigError, match="class name"):
        adapter(sdxl_dir, prompt_mode="class").conditioning(1)
    with pytest.raises(ConfigError, match="caption"):
        adapter(sdxl_dir, prompt_mode="caption").conditioning(1)
    a = adapter(sdxl_dir, prompt_mode="class")
    with caplog.at_level(logging.WARNING, logger="revelio_svc.backbones.sd"):
        a.conditioning(1, class_names=["cat"])
        a.conditioning(1, class_names=["dog"])
    assert sum("label" in r.getMessage() for r in caplog.records) == 1


def test_both_text_encoders_run_once_per_distinct_prompt(sdxl_dir):
    a = adapter(sdxl_dir, prompt_mode="caption")
    with FireCounter(a.text_encoders[0], [""]) as c1, FireCounter(a.text_encoders[1], [""]) as c2:
        a.conditioning(4, captions=["a", "b", "a", "b"])
        a.conditioning(2, captions=["b", "a"])
    assert c1.counts[""] == 1 and c2.counts[""] == 1


def test_features_are_deterministic_and_independent_of_the_batch(xl):
    imgs = tm.images(4, seed=5)
    batch = features(xl, imgs, IDS4, 500, ["down_blocks.1", "up_blocks.1"])
    again = features(xl, imgs, IDS4, 500, ["down_blocks.1", "up_blocks.1"])
    assert all(torch.equal(batch[n], again[n]) for n in batch)
    for j in range(4):
        one = features(xl, imgs[j:j + 1], IDS4[j:j + 1], 500, ["down_blocks.1", "up_blocks.1"])
        for n in batch:
            torch.testing.assert_close(one[n][0], batch[n][j], atol=1e-5, rtol=1e-4)


def test_add_noise_is_variance_preserving_despite_the_euler_sampler(xl):
    x0 = xl.encode(tm.images(2))
    from revelio_svc.backbones.base import seeded_noise

    t = 700
    noise = seeded_noise(x0.shape[1:], 3, IDS4[:2], t)
    a = xl.scheduler.alphas_cumprod[t]
    torch.testing.assert_close(xl.add_noise(x0, t, IDS4[:2], 3), a.sqrt() * x0 + (1 - a).sqrt() * noise)


def test_capture_stops_after_the_deepest_requested_hook_point(xl):
    later = ["mid_block", "up_blocks.0", "up_blocks.1", "conv_out"]
    with FireCounter(xl.unet, later) as fc:
        maps = features(xl, tm.images(1), IDS4[:1], 10, ["down_blocks.0", "down_blocks.1"])
    assert set(maps) == {"down_blocks.0", "down_blocks.1"}
    assert fc.counts == {n: 0 for n in later}
    with FireCounter(xl.unet, later) as fc:
        features(xl, tm.images(1), IDS4[:1], 10, ["down_blocks.0"], stop_early=False)
    assert fc.counts == {n: 1 for n in later}


def test_random_init_differs_from_pretrained(sdxl_dir, xl):
    r = adapter(sdxl_dir, init="random", init_seed=0)
    f_pre = features(xl, tm.images(2), IDS4[:2], 50, ["up_blocks.0"])["up_blocks.0"]
    f_rand = features(r, tm.images(2), IDS4[:2], 50, ["up_blocks.0"])["up_blocks.0"]
    assert not torch.allclose(f_pre, f_rand, atol=1e-4)
    assert r.unet.config.addition_embed_type == "text_time"  # same architecture


def test_sdxl_needs_the_second_text_encoder(sdxl_dir, tmp_path):
    broken = tmp_path / "xl"
    shutil.copytree(sdxl_dir, broken)
    shutil.rmtree(broken / "tokenizer_2")
    with pytest.raises(ModelUnavailableError, match="tokenizer_2/"):
        adapter(broken)


def test_sd_pipeline_loaded_as_sdxl_says_to_use_kind_sd(tmp_path_factory):
    with pytest.raises(ConfigError, match="kind: sd"):
        StableDiffusionAdapter(BackboneConfig(kind="sdxl", id=str(tm.pipeline_dir(tmp_path_factory, "sd")),
                                              device="cpu"))


def test_unknown_hub_id_fails_fast_with_instructions(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(ModelUnavailableError) as err:
        load_backbone(BackboneConfig(kind="sdxl", id="nonexistent-org/nonexistent-model", device="cpu"))
    assert time.monotonic() - start < 5
    assert "nonexistent-org/nonexistent-model" in str(err.value)
    assert "download" in str(err.value) and "local directory" in str(err.value)
