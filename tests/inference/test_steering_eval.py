"""Steering measured: the flip metric on planted verdicts, latent choice, and the driver on a tiny UNet."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from revelio_svc.backbones import load_backbone
from revelio_svc.config import BackboneConfig
from revelio_svc.inference.steering import SteeringSpec, steer
from revelio_svc.inference.steering_eval import (
    class_specific_latents,
    exemplar_field,
    exemplar_fields,
    exemplar_row,
    flip_stats,
    measure_steering,
    random_direction,
)
from revelio_svc.sae import TopKSAEConfig, build_sae

N_CLASSES = 6


def _probs(classes, conf=0.9):
    """(n,) class indices → one-hot-ish probabilities with top probability `conf`."""
    classes = np.asarray(classes)
    p = np.full((len(classes), N_CLASSES), (1 - conf) / (N_CLASSES - 1))
    p[np.arange(len(classes)), classes] = conf
    return p


def test_a_direction_the_judge_reads_as_the_class_flips_every_seed():
    base = _probs([0, 1, 4, 5])
    steered = _probs([2, 2, 2, 2])
    s = flip_stats(np.stack([base, base, steered]), target=2, strengths=(1.0, 2.0))
    assert s.flip == (0.0, 1.0) and s.flip_rate == 1.0 and s.strength == 2.0
    assert s.n_eligible == 4 and s.in_dist == (1.0, 1.0)


def test_a_null_direction_flips_nothing():
    base = _probs([0, 1, 4, 5])
    s = flip_stats(np.stack([base, base, base]), target=2, strengths=(1.0, 4.0))
    assert s.flip == (0.0, 0.0) and s.flip_rate == 0.0 and s.strength is None


def test_out_of_distribution_verdicts_and_seeds_already_of_the_class_do_not_count():
    base = _probs([2, 0, 0, 0])  # seed 0 is already the target: not eligible
    steered = np.concatenate([_probs([2]), _probs([2], conf=0.4), _probs([2, 2], conf=0.6)])  # seed 1 unsure
    s = flip_stats(np.stack([base, steered]), target=2, strengths=(8.0,))
    assert s.n_eligible == 3
    assert s.flip == pytest.approx((2 / 3,))
    assert s.in_dist == (0.75,)


def test_the_headline_is_the_smallest_strength_reaching_the_most_flips():
    base = _probs([0, 0, 0, 0])
    rows = [_probs([3, 0, 0, 0]), _probs([3, 3, 3, 0]), _probs([3, 3, 3, 0]), _probs([1, 1, 1, 1], conf=0.3)]
    s = flip_stats(np.stack([base, *rows]), target=3, strengths=(1, 2, 4, 8))
    assert s.flip == pytest.approx((0.25, 0.75, 0.75, 0.0)) and s.strength == 2 and s.flip_rate == 0.75


def test_flip_stats_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="strengths"):
        flip_stats(np.zeros((2, 3, N_CLASSES)), 0, (1.0, 2.0))
    with pytest.raises(ValueError, match="target class"):
        flip_stats(np.zeros((2, 3, N_CLASSES)), 7, (1.0,))


def test_class_specific_latents_finds_the_planted_latent_and_skips_rare_ones():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 20)
    Z = rng.uniform(0, 1, (60, 5))  # dense latents: no class preference
    Z[:, 3] = np.where(y == 1, 2.0, 0.0)  # fires only on class 1
    Z[:, 4] = 0.0
    Z[0, 4] = 9.0  # fires on one class-0 image only: too rare to be chosen
    got = class_specific_latents(Z, y, 3, per_class=2, min_active=5)
    assert got[1][0] == 3
    assert all(4 not in g for g in got)
    assert 3 not in got[0] and 3 not in got[2]


def test_random_direction_has_the_norm_of_the_latent_direction():
    d = torch.randn(32) * 7
    r = random_direction(d, 3)
    assert float(r.norm()) == pytest.approx(float(d.norm()), rel=1e-5)
    assert abs(float(torch.nn.functional.cosine_similarity(r, d, 0))) < 0.9
    assert torch.equal(r, random_direction(d, 3))


@pytest.fixture(scope="module")
def unet(tiny_unet_dir):
    return load_backbone(BackboneConfig(id=str(tiny_unet_dir), device="cpu"))


def test_measure_steering_on_planted_directions(unet):
    """A latent pushed hard changes every sample (the planted judge calls any change class 2): 100 % flips.
    A latent whose decoder direction is zero changes nothing, and its random control (same norm: zero) neither."""
    hp = "up_blocks.0"
    c = int(unet.model.get_submodule(hp).resnets[-1].conv2.out_channels)
    sae = build_sae(TopKSAEConfig(d_in=c, n_latents=4, k=2, normalize="none", hook_point=hp, timestep=10), seed=0)
    with torch.no_grad():
        sae.W_dec.zero_()
        sae.W_dec[1] = 1.0
    seeds = [0, 1, 2]
    base = steer(unet, sae, hp, SteeringSpec(0, "add", (0.0,)), seeds, steps=4).images[0]
    known = {im.tobytes() for im in base}

    def judge(images):  # class 0 for an unsteered baseline image, class 2 for anything else
        return _probs([0 if im.tobytes() in known else 2 for im in images])

    ev = measure_steering(unet, sae, hp, {2: 1, 3: 0}, {1: 5.0, 0: 5.0}, judge, [f"c{i}" for i in range(N_CLASSES)],
                          strengths=(1.0, 4.0), seeds=seeds, steps=4)
    planted, null = ev.classes
    assert (planted.latent, planted.label, planted.scale) == (1, "c2", 5.0)
    assert planted.latent_stats.flip_rate == 1.0 and planted.latent_stats.strength == 1.0
    assert null.latent_stats.flip_rate == 0.0 and null.random_stats.flip_rate == 0.0
    assert planted.verdicts["baseline"] == ["c0"] * 3 and planted.verdicts["latent r=4"] == ["c2"] * 3
    m = ev.metrics()
    assert m["steering.flip_rate"] == 0.5 and m["steering.flip_rate.c2"] == 1.0 and m["steering.flip_rate.c3"] == 0.0
    assert "c2" in ev.table() and ev.to_dict()["classes"][0]["latent"] == 1


def test_steer_refuses_a_direction_with_ablation(unet):
    hp = "up_blocks.0"
    c = int(unet.model.get_submodule(hp).resnets[-1].conv2.out_channels)
    sae = build_sae(TopKSAEConfig(d_in=c, n_latents=4, k=2, normalize="none", hook_point=hp, timestep=10), seed=0)
    with pytest.raises(ValueError, match="added"):
        steer(unet, sae, hp, SteeringSpec(0, "ablate"), [0], steps=2, direction=torch.zeros(c))


def test_exemplar_field_places_each_latent_where_the_exemplar_has_it():
    """A 2×2 exemplar whose top-left token fires latent 0 only and top-right latent 1 only: the field is z·d_0
    at the first position, z·d_1 at the second (row-major, as the hook point's tokens), zero where neither
    fires; random directions are placed by the same codes."""
    sae = build_sae(TopKSAEConfig(d_in=4, n_latents=4, k=1, normalize="none", hook_point="h", timestep=10), seed=0)
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(4))
        sae.b_enc.zero_()
        sae.b_pre.zero_()
        sae.W_dec.copy_(torch.eye(4) * 2)
    tokens = np.zeros((2, 2, 4), np.float32)
    tokens[0, 0, 0] = 3.0
    tokens[0, 1, 1] = 5.0
    field = exemplar_field(sae, tokens, [0, 1])
    assert field.shape == (4, 4)
    assert torch.allclose(field[0], torch.tensor([6.0, 0, 0, 0])) and torch.allclose(field[1], torch.tensor([0, 10.0, 0, 0]))
    assert float(field[2].abs().sum()) == 0 and float(field[3].abs().sum()) == 0
    rnd = torch.randn(2, 4)
    moved = exemplar_field(sae, tokens, [0, 1], rnd)
    assert torch.allclose(moved[0], 3 * rnd[0]) and torch.allclose(moved[1], 5 * rnd[1])
    with pytest.raises(ValueError, match="directions"):
        exemplar_field(sae, tokens, [0, 1], torch.randn(3, 4))
    with pytest.raises(ValueError, match="at least one"):
        exemplar_field(sae, tokens, [])


def test_the_exemplar_is_the_class_row_where_the_latents_fire_most():
    Z = np.array([[5.0, 0, 0], [0, 1, 1], [0, 2, 3], [9, 9, 9]])
    y = np.array([0, 1, 1, 2])
    assert exemplar_row(Z, y, 1, [1, 2], "b") == 2  # mass 5 beats 2; row 3 is another class
    import scipy.sparse as sp

    assert exemplar_row(sp.csr_matrix(Z), y, 1, [1, 2], "b") == 2
    with pytest.raises(ValueError, match="class 'd' has no rows"):
        exemplar_row(Z, y, 3, [0], "d")
    with pytest.raises(ValueError, match="none of the latents chosen for class 'a'"):
        exemplar_row(Z, y, 0, [1, 2], "a")


def test_the_control_field_has_the_latent_fields_norm_at_every_position():
    sae = build_sae(TopKSAEConfig(d_in=8, n_latents=16, k=3, normalize="none", hook_point="h", timestep=10), seed=0)
    tokens = np.random.default_rng(0).standard_normal((3, 3, 8)).astype(np.float32)
    field, control = exemplar_fields(sae, tokens, [0, 3, 5], seed=7)
    assert field.shape == control.shape == (9, 8)
    assert torch.allclose(field.norm(dim=1), control.norm(dim=1), atol=1e-5)
    assert torch.equal(field, exemplar_field(sae, tokens, [0, 3, 5]))
    cos = torch.nn.functional.cosine_similarity(field, control, dim=1)
    assert float(cos[field.norm(dim=1) > 0].abs().max()) < 0.99  # other directions, not the latents'
    again = exemplar_fields(sae, tokens, [0, 3, 5], seed=7)[1]
    assert torch.equal(control, again) and not torch.equal(control, exemplar_fields(sae, tokens, [0, 3, 5], 8)[1])


def test_a_field_steers_only_where_it_is_nonzero_and_must_match_the_positions(unet):
    """A per-position field added at one position changes the samples; a zero field changes nothing; a field
    with the wrong number of positions is refused with both counts named."""
    hp = "up_blocks.0"
    c = int(unet.model.get_submodule(hp).resnets[-1].conv2.out_channels)
    sae = build_sae(TopKSAEConfig(d_in=c, n_latents=4, k=2, normalize="none", hook_point=hp, timestep=10), seed=0)
    spec = SteeringSpec(0, "add", (4.0,))
    cache: dict = {}
    n_pos = 16 * 16  # the tiny UNet's up_blocks.0 output
    zero = steer(unet, sae, hp, spec, [0], steps=3, cache=cache, direction=torch.zeros(n_pos, c))
    assert np.array_equal(zero.images[0], zero.images[1])
    field = torch.zeros(n_pos, c)
    field[5] = 3.0
    moved = steer(unet, sae, hp, spec, [0], steps=3, cache=cache, direction=field)
    assert not np.array_equal(moved.images[0], moved.images[1])
    with pytest.raises(ValueError, match="positions"):
        steer(unet, sae, hp, spec, [0], steps=3, cache=cache, direction=torch.zeros(7, c))


def test_an_intervention_adds_a_field_at_its_own_positions_only():
    """A field with one nonzero position changes that token of the hook output and no other; an (H, W, d_in)
    field is read row-major like the tokens; a 4-D direction is refused."""
    from revelio_svc.inference.steering import LatentIntervention

    sae = build_sae(TopKSAEConfig(d_in=3, n_latents=4, k=1, normalize="none", hook_point="h", timestep=10), seed=0)
    field = torch.zeros(2, 2, 3)
    field[0, 1] = torch.tensor([1.0, 2.0, 3.0])
    hook = LatentIntervention(sae, SteeringSpec(0, "add", (2.0,)), torch.tensor([2.0]), field)
    h = torch.zeros(1, 3, 2, 2)  # (B, C, H, W)
    out = hook.apply(h)
    assert torch.allclose(out[0, :, 0, 1], torch.tensor([2.0, 4.0, 6.0]))
    out[0, :, 0, 1] = 0
    assert float(out.abs().sum()) == 0
    with pytest.raises(ValueError, match="steering direction"):
        LatentIntervention(sae, SteeringSpec(0, "add", (1.0,)), torch.tensor([1.0]), torch.zeros(1, 2, 2, 3))
