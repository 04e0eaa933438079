import numpy as np
import pytest
import scipy.sparse as sp

from revelio_svc.probe.linear import LinearProbe, fit_linear_probe
from revelio_svc.probe.sparse import (
    fit_sparse_probe,
    smallest_within,
    sparsity_curve,
    top_m_mask,
    validation_split,
)


def _data(n_per=60, K=4, U=40, seed=0):
    """Each class has two informative latents; the rest are label-blind noise."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(K), n_per)
    X = rng.random((len(y), U)) * (rng.random((len(y), U)) < 0.3)
    for c in range(K):
        on = y == c
        X[on, 2 * c] += 1.0 + rng.random(on.sum())
        X[on, 2 * c + 1] += 0.5 * rng.random(on.sum())
    return sp.csr_matrix(X), y


def test_top_m_mask_keeps_the_largest_positive_weights():
    coef = np.array([[0.5, -2.0, 1.0, 0.2], [-1.0, -0.5, -0.1, 0.3]])
    assert top_m_mask(coef, 2).tolist() == [[True, False, True, False], [False, False, False, True]]
    with pytest.raises(ValueError, match=">= 1"):
        top_m_mask(coef, 0)


def test_each_class_reads_at_most_m_latents_and_the_probe_round_trips(tmp_path):
    X, y = _data()
    probe = fit_sparse_probe(X, y, 2, C=1.0)
    assert ((probe.coef != 0).sum(1) <= 2).all()
    # the informative latent of each class is among its kept ones
    for c in range(4):
        assert probe.coef[c, 2 * c] > 0
    assert np.mean(probe.predict(X) == y) > 0.95
    assert probe.meta["latents_per_class"] == 2 and probe.meta["latents_used"] <= 8
    probe.save(tmp_path / "p")
    back = LinearProbe.load(tmp_path / "p")
    np.testing.assert_array_equal(back.predict_proba(X), probe.predict_proba(X))


def test_refit_improves_on_the_masked_dense_probe():
    X, y = _data(seed=1)
    dense = fit_linear_probe(X, y)
    probe = fit_sparse_probe(X, y, 1)
    masked = LinearProbe(dense.coef * top_m_mask(dense.coef, 1), dense.intercept, dense.scaler_mean,
                         dense.scaler_scale, dense.classes)

    def nll(p):
        pr = p.predict_proba(X)
        return -np.mean(np.log(pr[np.arange(len(y)), np.searchsorted(p.classes, y)]))

    assert nll(probe) < nll(masked)


def test_sparsity_curve_and_the_smallest_m_within_two_points():
    X, y = _data(seed=2)
    held = validation_split(y, 0.25, seed=0)
    assert all(held[y == c].sum() == 15 for c in range(4))
    curve = sparsity_curve(X, y, held, ms=(1, 2, 4, 40))
    assert set(curve) == {"dense", "1", "2", "4", "40"}
    assert curve["40"] == pytest.approx(curve["dense"], abs=0.05)
    m = smallest_within(curve, 0.02)
    assert m is not None and curve[str(m)] >= curve["dense"] - 0.02
    assert all(curve[str(k)] < curve["dense"] - 0.02 for k in (1, 2, 4, 40) if k < m)
    assert smallest_within({"dense": 0.9, "1": 0.5}, 0.02) is None
