"""sigma_label, label_purity and their baselines on planted activations with known answers."""
from __future__ import annotations

import numpy as np
import pytest

from revelio_svc.interpret import (
    chance_purity,
    compare_purity,
    direction_activations,
    label_purity,
    purity_summary,
    random_directions,
    sigma_label,
    top_rows,
)


def test_top_rows_orders_by_activation_then_row():
    acts = np.array([[0.0, 1.0], [3.0, 1.0], [2.0, 5.0], [3.0, 0.0]])
    assert top_rows(acts, 2).tolist() == [[1, 3], [2, 0]]
    assert top_rows(acts, 4).tolist() == [[1, 3, 2, 0], [2, 0, 1, 3]]


def planted_sigma():
    """60 images; labels 0..5 (10 each); top_n = 10. Unit 0: top-10 images all label 2 (spread 0). Unit 1:
    top-10 are labels 0 and 4, five each (spread sqrt(2·½·½) = sqrt(½)). Unit 2: active on 9 images
    (fewer than top_n: excluded even though pure)."""
    labels = np.repeat(np.arange(6), 10)
    acts = np.zeros((60, 3))
    acts[20:30, 0] = 10 + np.arange(10)  # label 2
    acts[0:5, 0] = 1.0  # weaker, label 0 (outside the top 10)
    acts[0:5, 1] = 20.0  # label 0
    acts[40:45, 1] = 19.0  # label 4
    acts[50:52, 1] = 1.0  # label 5, weaker
    acts[30:39, 2] = 100.0  # label 3, but only 9 images
    return acts, labels


def test_sigma_label_planted_values():
    acts, labels = planted_sigma()
    assert sigma_label(acts, labels, top_n=10) == pytest.approx((0.0 + np.sqrt(0.5)) / 2)
    assert sigma_label(acts[:, :1], labels, top_n=10) == 0.0
    assert np.isnan(sigma_label(np.zeros((60, 3)), labels))


def test_sigma_label_does_not_depend_on_class_numbering():
    """The issue's bug: the std of integer ids changed when classes were renumbered."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 6, 300)
    acts = np.maximum(rng.standard_normal((300, 40)) + (labels[:, None] == np.arange(40)[None] % 6), 0)
    perm = np.array([3, 0, 5, 1, 4, 2])
    for top_n in (10, 20):
        a, b = sigma_label(acts, labels, top_n), sigma_label(acts, perm[labels], top_n)
        assert a == pytest.approx(b, abs=1e-12)
        assert 0 < a < np.sqrt(1 - 1 / 6)
    # the float is the headline of the full statistics (the one definition, used by the sweep too)
    from revelio_svc.interpret.purity import sigma_label_stats

    assert sigma_label(acts, labels) == sigma_label_stats(acts, labels, 6, top_n=20)["sigma_label"]


def test_label_purity_planted_values_and_eligibility():
    labels = np.array([0] * 30 + [1] * 30)
    acts = np.zeros((60, 4))
    acts[30:50, 0] = 1 + np.arange(20)  # top 20 all label 1 → 1.0
    acts[0:12, 1] = 5.0  # 12 of label 0 ...
    acts[30:38, 1] = 4.0  # ... and 8 of label 1 → 0.6
    acts[0:60, 2] = np.arange(60)  # top 20 = rows 40..59, label 1 → 1.0
    acts[0:5, 3] = 1.0  # active on 5 images: not eligible
    p = label_purity(acts, labels, top_n=20)
    assert p[:3] == pytest.approx([1.0, 0.6, 1.0])
    assert np.isnan(p[3])
    s = purity_summary(p, threshold=0.6)
    assert s == {"mean": pytest.approx(2.6 / 3), "share_above": pytest.approx(2 / 3), "max": 1.0, "n_units": 3}


def test_chance_purity_matches_the_binomial_expectation():
    labels = np.array([0, 1] * 500)
    # two random images: same label with probability ~1/2 → purity 1, else 1/2 → expectation 0.75
    assert chance_purity(labels, top_n=2, n_draws=4000) == pytest.approx(0.75, abs=0.02)
    assert chance_purity(np.zeros(50, np.int64), top_n=20) == 1.0


def test_random_directions_and_channel_activations():
    d = random_directions(6, 10, seed=1)
    assert d.shape == (10, 6) and np.allclose(np.linalg.norm(d, axis=1), 1.0)
    assert not np.allclose(d, random_directions(6, 10, seed=2))
    rng = np.random.default_rng(0)
    tokens = rng.standard_normal((4, 3, 3, 6)).astype(np.float32)
    got = direction_activations(tokens, d, "max", batch=3)
    ref = np.maximum(np.einsum("nhwc,uc->nhwu", tokens, d), 0).max(axis=(1, 2))
    assert np.allclose(got, ref, atol=1e-5)
    ch = direction_activations(tokens, None, "mean")
    assert np.allclose(ch, np.maximum(tokens, 0).mean(axis=(1, 2)), atol=1e-6)
    pooled = tokens[:, 0, 0]
    assert np.allclose(direction_activations(pooled, d), np.maximum(pooled @ d.T, 0), atol=1e-5)


def test_compare_purity_separates_a_concept_detector_from_random_units():
    rng = np.random.default_rng(0)
    labels = {"shape": rng.integers(0, 4, 400)}
    detector = (labels["shape"] == 2) * (1 + rng.random(400))  # fires only on shape 2
    noise = rng.random((400, 30))
    summary, purities = compare_purity({"sae": np.c_[detector, noise[:, :5]], "random": noise}, labels)
    assert purities["shape"]["sae"][0] == 1.0
    assert summary["shape"]["sae"]["max"] == 1.0 and summary["shape"]["random"]["max"] < 0.8
    assert summary["shape"]["sae"]["share_above"] > summary["shape"]["random"]["share_above"]
    assert 0.3 < summary["shape"]["chance"] < 0.6


def test_redundancy_groups_join_copies_and_keep_distinct_units_apart():
    from revelio_svc.interpret.purity import redundancy_groups

    rng = np.random.default_rng(1)
    base = rng.random((200, 4))
    acts = np.c_[base, base[:, 0] * 2.0 + 1e-3 * rng.random(200), base[:, 1] + 0.5, base[:, 2]]
    g = redundancy_groups(acts)
    assert g[4] == g[0] and g[5] == g[1] and g[6] == g[2]
    assert len({g[0], g[1], g[2], g[3]}) == 4 and g.max() == 3


def test_purity_report_counts_near_duplicate_pure_units_once():
    from revelio_svc.interpret.purity import purity_report

    rng = np.random.default_rng(2)
    labels = rng.integers(0, 4, 400)
    detector = (labels == 2) * (1 + rng.random(400))
    noise = rng.random((400, 6))
    copies = detector[:, None] * (1 + 0.01 * rng.random((400, 20)))  # 20 copies of one pure unit
    r = purity_report(np.c_[detector, copies, noise], labels, top_n=20)
    assert r["n_pure"] == 21 and r["share_above"] == pytest.approx(21 / 27)
    assert r["n_groups"] == 7 and r["n_pure_dedup"] == 1 and r["share_above_dedup"] == pytest.approx(1 / 7)
    assert r["best.2"] == 1.0 and r["classes_with_pure_unit"] == 1
    relabelled = purity_report(np.c_[detector, copies, noise], (labels + 1) % 4, top_n=20)
    assert relabelled["best.3"] == 1.0 and relabelled["share_above_dedup"] == r["share_above_dedup"]
