from __future__ import annotations

import numpy as np
import pytest

from revelio_svc.probe.fewshot import (
    LeakError,
    check_no_leak,
    few_shot_rows,
    parse_shots,
    run_few_shot,
)


def split(n=200, k=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(k, size=n), rng.random(n) < 0.3


@pytest.mark.parametrize("k", [1, 5, 10, None])
def test_sampler_never_picks_test_rows(k):
    labels, is_test = split()
    for seed in range(5):
        rows = few_shot_rows(labels, is_test, k, seed)
        assert rows.size > 0 and not is_test[rows].any()
        if k is not None:
            counts = np.bincount(labels[rows], minlength=4)
            assert (counts == k).all()  # every class has ≥ 10 train rows here


def test_sampler_is_seeded_and_nested():
    labels, is_test = split()
    a, b = few_shot_rows(labels, is_test, 5, seed=0), few_shot_rows(labels, is_test, 5, seed=0)
    np.testing.assert_array_equal(a, b)
    c = few_shot_rows(labels, is_test, 5, seed=1)
    assert not np.array_equal(a, c)
    one = few_shot_rows(labels, is_test, 1, seed=0)
    assert set(one) <= set(a)  # larger k only adds rows


def test_sampler_picks_follow_the_image_not_the_row_position():
    labels, is_test = split()
    index = np.arange(len(labels)) * 3 + 7  # the store skipped images: rows ≠ dataset indices
    rows = few_shot_rows(labels, is_test, 2, 0, index=index)
    # dropping one unpicked training row (an image that failed to decode) leaves the other picks alone
    drop = np.setdiff1d(np.flatnonzero(~is_test), rows)[0]
    keep = np.delete(np.arange(len(labels)), drop)
    rows2 = few_shot_rows(labels[keep], is_test[keep], 2, 0, index=index[keep])
    np.testing.assert_array_equal(index[keep][rows2], index[rows])


def test_short_classes_give_what_they_have():
    labels = np.array([0] * 10 + [1] * 2)
    is_test = np.zeros(12, bool)
    rows = few_shot_rows(labels, is_test, 5, 0)
    assert np.bincount(labels[rows]).tolist() == [5, 2]


def test_check_no_leak_raises_on_a_leak():
    is_test = np.array([False, False, True, True])
    check_no_leak(np.array([0, 1]), np.array([2, 3]), is_test)
    with pytest.raises(LeakError, match="test-split row"):
        check_no_leak(np.array([0, 2]), np.array([3]), is_test)
    with pytest.raises(LeakError, match="train-split row"):
        check_no_leak(np.array([0]), np.array([1, 3]), is_test)


def test_parse_shots():
    assert parse_shots(["1", "5", "all"]) == [1, 5, None]
    with pytest.raises(ValueError, match="positive integers"):
        parse_shots(["0"])


class Majority:
    def __init__(self, y):
        self.c = np.bincount(y).argmax()

    def predict(self, X):
        return np.full(len(X), self.c)


def test_protocol_trains_on_train_rows_and_reports_mean_std():
    labels, is_test = split(n=300)
    X = np.arange(len(labels))[:, None]  # each row carries its own id, so the fit can check where it came from
    seen = []

    def fit(Xtr, ytr, seed):
        seen.append((Xtr[:, 0].copy(), seed))
        assert not is_test[Xtr[:, 0]].any()
        return Majority(ytr)

    res = run_few_shot(fit, X, labels, is_test, ["1", "5", "all"], seeds=3, n_classes=4, deterministic=True,
                       keep=[("all", 0)])
    assert [r["shots"] for r in res.runs] == ["1"] * 3 + ["5"] * 3 + ["all"]  # k=all once: same rows, same model
    assert res.summary["5"]["n_runs"] == 3 and res.summary["5"]["n_train_mean"] == 20
    assert res.summary["all"]["accuracy_std"] == 0.0
    assert 0 <= res.summary["1"]["accuracy_mean"] <= 1
    assert ("all", 0) in res.models and res.predictions[("all", 0)].shape == (is_test.sum(),)
    # different seeds drew different 5-shot rows
    five = [s for s in seen if len(s[0]) == 20]
    assert not np.array_equal(five[0][0], five[1][0])


def test_protocol_refuses_a_store_without_test_rows():
    labels = np.zeros(10, int)
    with pytest.raises(ValueError, match="no test rows"):
        run_few_shot(lambda *a: None, np.zeros((10, 1)), labels, np.zeros(10, bool), ["1"], 1, 2)
