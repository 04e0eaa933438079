"""Train/test assignment by hash of (seed, id); few-shot picks among train candidates."""
from __future__ import annotations

import numpy as np
import pytest

from revelio_svc.data import (
    FewShotShortfall,
    assign_split,
    few_shot_indices,
    train_test_indices,
)

IDS = [f"img-{i}" for i in range(400)]


def test_split_is_seeded_and_deterministic():
    a = assign_split(IDS, seed=0, test_fraction=0.25)
    assert a.dtype == np.bool_ and a.shape == (400,)
    assert np.array_equal(a, assign_split(IDS, seed=0, test_fraction=0.25))
    assert not np.array_equal(a, assign_split(IDS, seed=1, test_fraction=0.25))
    assert 0.15 < a.mean() < 0.35


def test_split_does_not_depend_on_order_or_count():
    full = dict(zip(IDS, assign_split(IDS, seed=5, test_fraction=0.3)))
    shuffled = list(np.random.default_rng(0).permutation(IDS))[:123]
    part = assign_split(shuffled, seed=5, test_fraction=0.3)
    assert all(full[i] == t for i, t in zip(shuffled, part))


def test_train_test_indices_partition_and_reject_an_empty_side():
    train, test = train_test_indices(IDS, seed=0, test_fraction=0.25)
    assert len(np.intersect1d(train, test)) == 0 and len(train) + len(test) == 400
    with pytest.raises(ValueError, match="test split is empty"):
        train_test_indices(IDS[:3], seed=0, test_fraction=1e-9)
    with pytest.raises(ValueError, match="test_fraction"):
        assign_split(IDS, seed=0, test_fraction=1.5)


def test_few_shot_picks_n_per_class_from_train_only():
    labels = np.arange(400) % 4
    train, test = train_test_indices(IDS, seed=0, test_fraction=0.25)
    picks = few_shot_indices(labels, train, n_per_class=5, seed=0)
    assert len(np.intersect1d(picks, test)) == 0
    assert np.bincount(labels[picks], minlength=4).tolist() == [5, 5, 5, 5]
    assert np.all(np.diff(picks) > 0)


def test_few_shot_is_seeded_nested_and_order_independent():
    labels = np.arange(300) % 3
    cand = np.arange(0, 300, 2)
    p5 = few_shot_indices(labels, cand, 5, seed=0)
    assert np.array_equal(p5, few_shot_indices(labels, cand[::-1].tolist(), 5, seed=0))
    assert not np.array_equal(p5, few_shot_indices(labels, cand, 5, seed=1))
    assert set(few_shot_indices(labels, cand, 2, seed=0)) <= set(p5)


def test_few_shot_shortfall_raises_or_takes_all_with_a_warning():
    labels = np.array([0] * 10 + [1] * 2 + [-1] * 5)
    cand = np.arange(17)
    with pytest.raises(ValueError, match="class 1 has 2"):
        few_shot_indices(labels, cand, 3, seed=0)
    with pytest.warns(FewShotShortfall, match="class 1 has 2"):
        picks = few_shot_indices(labels, cand, 3, seed=0, allow_fewer=True)
    assert np.bincount(labels[picks]).tolist() == [3, 2]  # unlabelled (-1) rows are never picked
    with pytest.raises(ValueError, match="class 2 has 0"):
        few_shot_indices(labels, cand, 1, seed=0, n_classes=3)


def test_few_shot_bad_arguments():
    with pytest.raises(ValueError, match="out of range"):
        few_shot_indices(np.zeros(5, np.int64), [7], 1, seed=0)
    with pytest.raises(ValueError, match="n_per_class"):
        few_shot_indices(np.zeros(5, np.int64), [1], 0, seed=0)


def test_validation_mask_is_a_seeded_share_decided_by_the_index_alone():
    from revelio_svc.data.splits import validation_mask

    idx = np.arange(5000)
    m = validation_mask(idx, 0.2, seed=0)
    assert 0.18 < m.mean() < 0.22
    perm = np.random.default_rng(0).permutation(5000)
    assert np.array_equal(validation_mask(idx[perm], 0.2, seed=0), m[perm])
    assert not np.array_equal(validation_mask(idx, 0.2, seed=1), m)
    with pytest.raises(ValueError, match="validation fraction"):
        validation_mask(idx, 1.0, seed=0)


def test_stratified_sample_keeps_class_shares_and_ignores_candidate_order():
    from revelio_svc.data.splits import stratified_sample

    labels = np.repeat([0, 1, 2], [600, 300, 100])  # stored class by class
    pick = stratified_sample(labels, np.arange(1000), 100, seed=0)
    assert len(pick) == 100 and np.bincount(labels[pick]).tolist() == [60, 30, 10]
    assert np.array_equal(stratified_sample(labels, np.arange(1000)[::-1], 100, seed=0), pick)
    assert np.array_equal(stratified_sample(labels, np.arange(1000), 5000, seed=0), np.arange(1000))
