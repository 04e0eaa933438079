"""SCR and TPP on planted activations: units that ARE a concept behave as the metrics promise."""
from __future__ import annotations

import numpy as np
import pytest

from revelio_svc.evaluate.concepts import ablated, biased_rows, scr, tpp


def _planted_scr(n: int = 2400, seed: int = 0):
    """Two shapes, two backgrounds, independent. Units 0 and 1 are the backgrounds (one-hot), units 2 and 3
    read the shape with 20 % of rows flipped, the rest is noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(2, size=n)
    s = rng.integers(2, size=n)
    flip = rng.random(n) < 0.2
    seen = np.where(flip, 1 - y, y)
    acts = np.abs(rng.standard_normal((n, 12))) * 0.3
    acts[:, 0] = s == 0
    acts[:, 1] = s == 1
    acts[:, 2] = seen == 0
    acts[:, 3] = seen == 1
    return acts, y, s, np.arange(n) % 4 == 3


def test_biased_rows_have_the_asked_correlation():
    acts, y, s, test = _planted_scr()
    rows = biased_rows(y, s, np.flatnonzero(~test), (0, 1), (0, 1), 0.95, np.random.default_rng(0))
    aligned = (y[rows] == s[rows]).mean()
    assert aligned == pytest.approx(0.95, abs=0.01)
    assert (y[rows] == 0).mean() == pytest.approx(0.5, abs=0.01)
    assert not test[rows].any()


def test_ablating_the_background_units_recovers_the_unbiased_accuracy():
    acts, y, s, test = _planted_scr()
    res = scr(acts, y, s, test, ns=(1, 2, 5), draws=1, correlation=0.95)
    assert res.oracle == pytest.approx(0.8, abs=0.06)  # the shape units alone
    assert res.base < res.oracle - 0.1  # the biased probe leans on the background
    assert res.share(2) > 0.95 and res.shift(2) > 0.85  # both background units gone: unbiased again
    assert res.accuracy[5] == pytest.approx(res.accuracy[2], abs=0.03)  # the next units are noise
    m = res.metrics()
    assert m["scr.share.n2"] == res.share(2) and m["scr.oracle_accuracy"] == res.oracle


def test_scr_of_units_without_background_recovers_nothing():
    acts, y, s, test = _planted_scr()
    no_bg = ablated(acts, [0, 1])  # the background is nowhere: the probe cannot lean on it
    res = scr(no_bg, y, s, test, ns=(2,), draws=1)
    assert abs(res.base - res.oracle) < 0.05
    assert res.accuracy[2] == pytest.approx(res.base, abs=0.05)


def test_scr_refuses_a_bad_correlation_and_empty_cells():
    acts, y, s, test = _planted_scr(400)
    with pytest.raises(ValueError, match="correlation"):
        scr(acts, y, s, test, correlation=0.4)
    with pytest.raises(ValueError, match="no \\(class pair"):
        scr(acts, np.zeros_like(y), s, test, pairs=[((0, 1), (0, 1))])


def _planted_tpp(n: int = 1600, k: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.integers(k, size=n)
    acts = np.abs(rng.standard_normal((n, k + 8))) * 0.3
    acts[np.arange(n), y] += 1.0  # unit i is class i
    return acts, y, np.arange(n) % 4 == 3


def test_ablating_a_class_unit_hurts_only_that_class_probe():
    acts, y, test = _planted_tpp()
    res = tpp(acts, y, test, ns=(1, 3))
    assert res.accuracy.min() > 0.9
    assert res.intended(1) > 0.3  # probe i falls towards chance (0.5) without unit i
    assert abs(res.unintended(1)) < 0.03  # the other probes do not notice
    assert res.score(1) > 0.3
    assert set(res.metrics()) >= {"tpp.n1", "tpp.intended.n3", "tpp.unintended.n3", "tpp.probe_accuracy"}


def test_tpp_of_noise_is_near_zero():
    rng = np.random.default_rng(1)
    acts, y, test = _planted_tpp()
    res = tpp(rng.permutation(acts), y, test, ns=(1,))  # rows shuffled: no unit follows the class
    assert abs(res.score(1)) < 0.05
