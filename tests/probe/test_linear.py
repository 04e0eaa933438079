from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.metrics import f1_score

from revelio_svc.interpret.purity import label_spread, sigma_label_stats
from revelio_svc.probe import linear, read_probe
from revelio_svc.probe.linear import LinearProbe, ProbeFormatError, fit_linear_probe
from revelio_svc.probe.metrics import accuracy, confusion, macro_f1, per_class_accuracy


def planted(n=300, d=20, k=3, sep=3.0, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(k, size=n)
    X = rng.standard_normal((n, d))
    X[np.arange(n), y] += sep
    X[:, -1] *= 100.0  # one channel on a very different scale: standardisation must handle it
    return X, y


def sparse_latents(n=300, width=64, k=3, seed=0):
    """Non-negative, mostly zero, with class-specific latents firing: like SAE latents."""
    rng = np.random.default_rng(seed)
    y = rng.integers(k, size=n)
    Z = np.zeros((n, width))
    for i in range(n):
        on = rng.choice(width, 4, replace=False)
        Z[i, on] = rng.random(4)
        Z[i, 10 * y[i]] = 1.0 + rng.random()
    return sp.csr_matrix(Z), y


def test_planted_separable_data_is_probed_accurately():
    X, y = planted()
    tr, te = slice(0, 200), slice(200, None)
    p = fit_linear_probe(X[tr], y[tr], C=1.0)
    assert accuracy(y[te], p.predict(X[te])) > 0.95
    proba = p.predict_proba(X[te])
    assert proba.shape == (100, 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert p.meta["converged"]


def test_noise_gives_chance_accuracy():
    rng = np.random.default_rng(1)
    X, y = rng.standard_normal((1200, 30)), rng.integers(4, size=1200)
    p = fit_linear_probe(X[:800], y[:800], C=0.1)
    acc = accuracy(y[800:], p.predict(X[800:]))
    assert 0.15 < acc < 0.35  # chance 0.25


def test_probe_agrees_with_the_solver_it_was_fitted_with(monkeypatch):
    fitted = {}

    class Spy(linear.LogisticRegression):
        def fit(self, X, y, *a, **kw):
            out = super().fit(X, y, *a, **kw)
            fitted["solver"], fitted["X"] = self, X
            return out

    monkeypatch.setattr(linear, "LogisticRegression", Spy)
    X, y = planted(k=4)
    p = fit_linear_probe(X, y)
    # the plain-array probe reproduces sklearn's own predictions on the standardised matrix
    np.testing.assert_array_equal(p.predict(X), fitted["solver"].predict(fitted["X"]))
    np.testing.assert_allclose(p.predict_proba(X), fitted["solver"].predict_proba(fitted["X"]), atol=1e-10)


def test_binary_probe_matches_sklearn_probabilities(monkeypatch):
    fitted = {}

    class Spy(linear.LogisticRegression):
        def fit(self, X, y, *a, **kw):
            fitted["solver"], fitted["X"] = self, X
            return super().fit(X, y, *a, **kw)

    monkeypatch.setattr(linear, "LogisticRegression", Spy)
    X, y = planted(k=2)
    p = fit_linear_probe(X, y)
    assert p.coef.shape[0] == 2
    np.testing.assert_allclose(p.predict_proba(X), fitted["solver"].predict_proba(fitted["X"]), atol=1e-10)


def test_sae_latents_reach_the_solver_sparse(monkeypatch):
    seen = []

    class Spy(linear.LogisticRegression):
        def fit(self, X, y, *a, **kw):
            seen.append(X)
            return super().fit(X, y, *a, **kw)

    monkeypatch.setattr(linear, "LogisticRegression", Spy)
    Z, y = sparse_latents()
    p = fit_linear_probe(Z[:200], y[:200])
    (X,) = seen
    assert sp.issparse(X) and X.format == "csr"
    assert X.nnz == Z[:200].nnz  # scaled, not centred: no entry became non-zero
    assert np.all(p.scaler_mean == 0) and p.meta["sparse_input"]
    assert accuracy(y[200:], p.predict(Z[200:])) > 0.9
    # the same rows densified give the same scaled values, so sparsity changed nothing but memory
    np.testing.assert_allclose(X.toarray(), Z[:200].toarray() / p.scaler_scale)


def test_dense_input_is_centred(monkeypatch):
    seen = []

    class Spy(linear.LogisticRegression):
        def fit(self, X, y, *a, **kw):
            seen.append(X)
            return super().fit(X, y, *a, **kw)

    monkeypatch.setattr(linear, "LogisticRegression", Spy)
    X, y = planted()
    fit_linear_probe(X, y)
    assert isinstance(seen[0], np.ndarray)
    np.testing.assert_allclose(seen[0].mean(axis=0), 0, atol=1e-9)
    np.testing.assert_allclose(seen[0].std(axis=0), 1, atol=1e-9)


@pytest.mark.parametrize("kind", ["dense", "sparse", "binary"])
def test_save_load_round_trip_is_identical_without_pickle(tmp_path, monkeypatch, kind):
    if kind == "sparse":
        X, y = sparse_latents()
    else:
        X, y = planted(k=2 if kind == "binary" else 3)
    p = fit_linear_probe(X, y, C=0.5, meta={"concept": "shape", "class_names": ["a", "b", "c"],
                                           "sae": {"path": "sae/dir"} if kind == "sparse" else None})
    files = p.save(tmp_path / "probe")
    assert sorted(f.name for f in (tmp_path / "probe").iterdir()) == ["probe.json", "probe.safetensors"]
    meta = json.loads(files["meta"].read_text())
    assert meta["kind"] == "linear" and meta["C"] == 0.5 and meta["concept"] == "shape"

    def no_pickle(*a, **k):
        raise AssertionError("a probe must load without unpickling")

    monkeypatch.setattr(pickle, "load", no_pickle)
    monkeypatch.setattr(pickle, "loads", no_pickle)
    q = read_probe(tmp_path / "probe")
    assert isinstance(q, LinearProbe)
    np.testing.assert_array_equal(q.predict_proba(X), p.predict_proba(X))
    np.testing.assert_array_equal(q.predict(X), p.predict(X))
    assert q.meta["sae"] == p.meta["sae"]


def test_load_rejects_foreign_files(tmp_path):
    with pytest.raises(ProbeFormatError, match="missing probe.json"):
        read_probe(tmp_path)
    (tmp_path / "probe.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ProbeFormatError, match="not a revelio probe"):
        read_probe(tmp_path)


def test_probe_rejects_wrong_width_and_single_class():
    X, y = planted()
    p = fit_linear_probe(X, y)
    with pytest.raises(ValueError, match="takes \\(n, 20\\)"):
        p.predict(X[:, :5])
    with pytest.raises(ValueError, match="at least two classes"):
        fit_linear_probe(X[:10], np.zeros(10, int))


# --------------------------------------------------------------------------- metrics
def test_metrics_on_a_known_case():
    y = np.array([0, 0, 1, 1, 2, 2])
    p = np.array([0, 1, 1, 1, 0, 2])
    assert accuracy(y, p) == pytest.approx(4 / 6)
    np.testing.assert_array_equal(confusion(y, p, 4), [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]])
    pca = per_class_accuracy(y, p, 4)
    np.testing.assert_allclose(pca[:3], [0.5, 1.0, 0.5])
    assert np.isnan(pca[3])  # class 3 never occurs: no accuracy rather than a fake 0
    assert macro_f1(y, p, 4) == pytest.approx(f1_score(y, p, average="macro"))


def test_sigma_label_is_zero_for_a_pure_unit_and_high_for_a_mixed_one():
    rng = np.random.default_rng(0)
    labels = rng.integers(3, size=300)
    pure = (labels == 0) * (1 + rng.random(300))  # fires only on class 0
    mixed = rng.random(300)  # ignores the label
    acts = np.stack([pure, mixed], axis=1)
    s_pure = sigma_label_stats(acts[:, :1], labels, 3)["sigma_label"]
    s_mixed = sigma_label_stats(acts[:, 1:], labels, 3)
    assert s_pure == 0.0
    assert s_mixed["sigma_label"] > 0.6 and s_mixed["sigma_label_chance"] == pytest.approx(label_spread(labels, 3))
    assert sigma_label_stats(np.zeros((300, 2)), labels, 3)["sigma_label_units"] == 0


def test_l1_probe_rests_each_class_on_few_latents():
    Z, y = sparse_latents(n=400, width=64)
    dense = fit_linear_probe(Z[:300], y[:300], C=0.5)
    l1 = fit_linear_probe(Z[:300], y[:300], C=0.5, penalty="l1")
    assert l1.meta["penalty"] == "l1" and dense.meta["penalty"] == "l2"
    assert accuracy(y[300:], l1.predict(Z[300:])) > 0.9
    used = (np.abs(l1.coef) > 0).sum(1)
    assert used.max() < (np.abs(dense.coef) > 0).sum(1).min() // 2
    # the planted detector of each class (latent 10·c) carries that class's largest weight
    assert [int(np.argmax(l1.coef[c])) for c in range(3)] == [0, 10, 20]


def test_an_l1_few_shot_fit_keeps_the_penalty_per_row():
    Z, y = sparse_latents(n=400, width=64)
    one_shot = np.concatenate([np.flatnonzero(y[:300] == c)[:1] for c in range(3)])  # one row per class
    # C stated for all 300 train rows: unscaled on 3 rows, the penalty wins and every weight is zero
    flat = fit_linear_probe(Z[one_shot], y[one_shot], C=0.5, penalty="l1")
    assert not np.abs(flat.coef).any()
    scaled = fit_linear_probe(Z[one_shot], y[one_shot], C=0.5, penalty="l1", n_ref=300)
    assert scaled.meta["C"] == 0.5 and scaled.meta["C_fit"] == pytest.approx(0.5 * 300 / 3)
    assert np.abs(scaled.coef).any() and accuracy(y[300:], scaled.predict(Z[300:])) > 1 / 3 + 0.2
    # with every row C is as stated, and an L2 probe never rescales
    full = fit_linear_probe(Z[:300], y[:300], C=0.5, penalty="l1", n_ref=300)
    assert "C_fit" not in full.meta
    assert np.array_equal(fit_linear_probe(Z[one_shot], y[one_shot], C=0.5, n_ref=300).coef,
                          fit_linear_probe(Z[one_shot], y[one_shot], C=0.5).coef)


def test_unknown_penalty_is_refused():
    X, y = planted(n=60)
    with pytest.raises(ValueError, match="penalty must be one of l2, l1"):
        fit_linear_probe(X, y, penalty="elasticnet")
