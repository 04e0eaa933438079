"""k-sparse probing: a planted informative unit wins at k = 1; selection never looks at test rows."""
from __future__ import annotations

import numpy as np
import pytest

from revelio_svc.interpret.sparse_probe import KS, rank_units, sparse_probe_curve


def planted(n: int = 600, units: int = 50, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    acts = rng.random((n, units)) * 5.0  # noise units, on a larger scale than the planted one
    acts[:, 17] = y + 0.1 * rng.standard_normal(n)
    test = np.zeros(n, bool)
    test[::4] = True
    return acts, y, test


def test_planted_unit_is_picked_at_k1_and_scores_high():
    acts, y, test = planted()
    assert rank_units(acts[~test], y[~test])[0] == 17
    curve = sparse_probe_curve(acts, y, test, ks=(1, 4, 64))
    assert curve[1] > 0.95
    assert set(curve) == {1, 4, 64}


def test_selection_uses_train_rows_only():
    acts, y, test = planted()
    base = sparse_probe_curve(acts, y, test, ks=(1,))
    # make a noise unit a perfect predictor on the test rows only: ranking must not notice
    leaked = acts.copy()
    leaked[test, 3] = y[test] * 100.0
    assert rank_units(leaked[~test], y[~test])[0] == 17
    assert sparse_probe_curve(leaked, y, test, ks=(1,)) == base
    # whereas changing train rows does change the choice
    moved = acts.copy()
    moved[~test, 3] = y[~test] * 3.0
    assert rank_units(moved[~test], y[~test])[0] == 3


def test_multiclass_ranking_is_scale_free_and_curve_covers_the_default_ks():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 6, 900)
    acts = rng.random((900, 80))
    acts[:, 5] = (y == 4) * 1e-3 + 1e-4 * rng.random(900)  # tiny scale, but detects class 4 exactly
    test = rng.random(900) < 0.25
    assert rank_units(acts[~test], y[~test])[0] == 5
    curve = sparse_probe_curve(acts, y, test)
    assert tuple(curve) == KS
    assert all(0.0 <= v <= 1.0 for v in curve.values())
    with pytest.raises(ValueError, match="train and test"):
        sparse_probe_curve(acts, y, np.zeros(900, bool))
