"""Explanation precision of an SAE against its controls, and the pooling comparison."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from revelio_svc.inference.precision import (
    METHODS,
    density_stats,
    explanation_report,
    headline,
    pooling_comparison,
    pooling_figure,
)
from revelio_svc.sae import TopKSAEConfig, build_sae

K, D, L = 4, 32, 24


def planted(n_per: int = 40, seed: int = 0):
    """Token features where class c puts a strong value on channel c at one position, and an SAE whose
    first K latents read exactly those channels: a dictionary with one detector per class."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(K), n_per)
    feats = rng.standard_normal((len(y), 3, 3, D)).astype(np.float32)  # label-blind noise everywhere
    pos = rng.integers(0, 9, len(y))
    feats.reshape(len(y), 9, D)[np.arange(len(y)), pos, y] += 5.0
    sae = build_sae(TopKSAEConfig(d_in=D, n_latents=L, k=2, normalize="none", input="tokens",
                                  latent_pooling="max"), seed=1)
    with torch.no_grad():
        w = torch.from_numpy(rng.standard_normal((L, D)).astype(np.float32))
        w[:K] = torch.eye(D)[:K] * 2.0
        sae.W_enc.copy_(w / w.norm(dim=1, keepdim=True))
        sae.W_dec.copy_(sae.W_enc)
        sae.b_enc.zero_()
        sae.b_pre.zero_()
    test = np.zeros(len(y), bool)
    test[rng.permutation(len(y))[: len(y) // 4]] = True
    return sae, feats, y, test


def test_a_planted_dictionary_explains_precisely_and_its_controls_do_not():
    sae, feats, y, test = planted()
    # a sparse probe (one latent per class) reads each class off its detector
    rep = explanation_report(sae, feats, y, test, seeds=(1, 2), latents_per_class=1)
    assert set(rep) == set(METHODS)
    s, r = rep["sae"], rep["random"]
    assert s["accuracy"] == 1.0
    assert s["precision.contrastive"] == 1.0 and s["precision.logit"] == 1.0
    assert r["precision.contrastive"] < 0.8 and "precision.contrastive_sd" in r
    assert s["chance"] == pytest.approx(0.25, abs=0.02)
    for m in METHODS:
        assert 0 <= rep[m]["density"] <= 1 and 0 <= rep[m]["dense_share"] <= 1
    h = headline(rep)
    assert h["explanation_precision"] == 1.0
    assert h["explanation_precision_ratio_random"] == pytest.approx(1.0 / r["precision.contrastive"])
    assert h["explanation_precision_logit"] == s["precision.logit"]
    assert all("." not in k for k in h)  # they become registry version tags


def test_pooling_comparison_rows_and_figure():
    sae, feats, y, test = planted(n_per=20, seed=1)
    rows = pooling_comparison(sae, feats, y, test, ("max", "mean", "top3"), seeds=(1,), latents_per_class=(0, 2))
    assert [(r["pooling"], r["latents_per_class"], r["method"]) for r in rows] == [
        (p, m, k) for p in ("max", "mean", "top3") for m in (0, 2) for k in METHODS]
    # one encoding serves every pooling: the same numbers as the report for one pooling
    one = explanation_report(sae, feats, y, test, pooling="top3", seeds=(1,))
    got = next(r for r in rows if (r["pooling"], r["latents_per_class"], r["method"]) == ("top3", 0, "sae"))
    assert got["precision.contrastive"] == one["sae"]["precision.contrastive"]
    assert got["accuracy"] == one["sae"]["accuracy"]
    fig = pooling_figure(rows, "test")
    assert len(fig.axes) == 4


def test_density_stats():
    acts = np.array([[1.0, 0.0, 0.0], [1.0, 2.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    d = density_stats(acts)
    assert d["density"] == pytest.approx((0.75 + 0.25 + 0) / 3)
    assert d["dense_share"] == pytest.approx(0.5)  # of the two live units, one fires on > 50 %


def test_an_l1_probe_is_scored_with_l1_controls():
    sae, feats, y, test = planted()
    rep = explanation_report(sae, feats, y, test, seeds=(1,), penalty="l1", C=0.5)
    dense = explanation_report(sae, feats, y, test, seeds=(1,), C=0.5)
    for m in METHODS:  # every dictionary gets the same kind of probe
        assert rep[m]["units_per_class"] < dense[m]["units_per_class"]
    assert rep["sae"]["accuracy"] == 1.0 and rep["sae"]["precision.contrastive"] > 0.9


def test_top_images_can_be_ranked_by_another_pooling_than_the_probe_reads():
    """`rank_acts` changes only which images a unit shows: ranking by the same pooling gives the same score;
    ranking by a scrambled copy (each unit's activations over images permuted) shows unrelated images, and the
    planted dictionary's precision falls to about chance while the probe's accuracy stays."""
    from revelio_svc.inference.precision import unit_precision
    from revelio_svc.sae.latents import image_latents_pooled

    sae, feats, y, test = planted()
    acts = image_latents_pooled(sae, feats, ("max",))["max"]
    dense = acts.toarray() if hasattr(acts, "toarray") else np.asarray(acts)
    kw = dict(latents_per_class=1)
    base = unit_precision(dense, y, test, **kw)
    same = unit_precision(dense, y, test, rank_acts=dense, **kw)
    scrambled = dense[np.random.default_rng(0).permutation(len(dense))]
    moved = unit_precision(dense, y, test, rank_acts=scrambled, **kw)
    assert same["precision.contrastive"] == base["precision.contrastive"] == 1.0
    assert moved["accuracy"] == base["accuracy"]
    assert moved["precision.contrastive"] < 0.6
    kw2 = dict(seeds=(1,), latents_per_class=(1,))
    ranked = pooling_comparison(sae, feats, y, test, ("mean",), rank_pooling="max", **kw2)
    plain = pooling_comparison(sae, feats, y, test, ("mean",), **kw2)
    assert {r["pooling"] for r in ranked} == {"mean"} and len(ranked) == len(METHODS)
    # the probes still read mean-pooled units (same accuracy as without ranking); the images shown are ranked
    # by max pooling, which moves some dictionary's precision
    for r, p in zip(ranked, plain):
        assert r["accuracy"] == p["accuracy"]
    assert any(r["precision.contrastive"] != p["precision.contrastive"] for r, p in zip(ranked, plain))
    with pytest.raises(ValueError, match="token features"):
        pooling_comparison(sae, feats.reshape(len(feats), -1, D).mean(1), y, test, ("max",), rank_pooling="max", **kw2)


def test_the_report_does_not_depend_on_how_many_fits_run_side_by_side(monkeypatch):
    sae, feats, y, test = planted(seed=3)
    monkeypatch.setenv("REVELIO_FIT_WORKERS", "1")
    serial = explanation_report(sae, feats, y, test, seeds=(1, 2, 3), penalty="l1", C=0.5)
    monkeypatch.setenv("REVELIO_FIT_WORKERS", "4")
    assert explanation_report(sae, feats, y, test, seeds=(1, 2, 3), penalty="l1", C=0.5) == serial
