import numpy as np
import pytest

from revelio_svc.interpret.explanation import (
    chance_precision,
    contributions,
    explanation_precision,
    precision_per_row,
    top_contributors,
    unit_top_images,
)


def test_contrastive_cancels_a_unit_that_lifts_every_class():
    # unit 0 pushes every class alike (dense, class-agnostic); unit 1 separates class 2 from class 1
    coef = np.array([[5.0, 0.0], [5.0, 0.5], [5.0, 2.0]])
    xs = np.array([[3.0, 1.0]])
    plain, pred, runner = contributions(xs, coef, np.zeros(3), "logit")
    con, pred2, _ = contributions(xs, coef, np.zeros(3), "contrastive")
    assert pred[0] == pred2[0] == 2 and runner[0] == 1
    assert plain[0, 0] > plain[0, 1]  # the logit share is dominated by the class-agnostic unit
    assert con[0, 0] == 0.0 and con[0, 1] == pytest.approx(1.5)
    # the contrastive shares sum to the margin between the two logits
    logits = xs @ coef.T
    assert con.sum() == pytest.approx(logits[0, 2] - logits[0, 1])


def test_contributions_reject_a_bad_mode_and_shape():
    with pytest.raises(ValueError, match="attribution must be one of"):
        contributions(np.zeros((1, 2)), np.zeros((2, 2)), np.zeros(2), "gradient")
    with pytest.raises(ValueError, match="units"):
        contributions(np.zeros((1, 3)), np.zeros((2, 2)), np.zeros(2))


def test_top_contributors_only_present_units():
    contrib = np.array([[0.1, 5.0, 0.3, 0.2]])
    present = np.array([[True, False, True, False]])
    assert top_contributors(contrib, present, 3).tolist() == [[2, 0, -1]]


def test_unit_top_images_strongest_first_and_silent_rows_excluded():
    acts = np.array([[0.0, 1.0], [3.0, 0.0], [2.0, 0.5], [1.0, 0.0]])
    assert unit_top_images(acts, n=3).tolist() == [[1, 2, 3], [0, 2, -1]]
    assert unit_top_images(acts, rows=np.array([0, 3]), n=2).tolist() == [[3, -1], [0, -1]]


def test_precision_per_row_counts_shown_images():
    labels = np.array([0, 0, 1, 1])
    top = np.array([[0, 1], [2, 3], [0, 2]])
    p = precision_per_row(np.array([[0, 2], [-1, -1]]), np.array([0, 1]), top, labels)
    assert p[0] == pytest.approx(3 / 4) and np.isnan(p[1])
    assert chance_precision(labels, np.array([0, 0])) == pytest.approx(0.5)


def _planted(n_per_class=40, n_classes=4, noise_units=12, seed=0):
    """Each class has one unit firing only on its images, plus units that ignore the label."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_classes), n_per_class)
    acts = np.zeros((len(labels), n_classes + noise_units))
    acts[np.arange(len(labels)), labels] = 1.0 + rng.random(len(labels))
    acts[:, n_classes:] = rng.random((len(labels), noise_units)) * (rng.random((len(labels), noise_units)) < 0.6)
    return acts, labels


def test_a_planted_explanation_scores_one():
    acts, labels = _planted()
    K = 4
    coef = np.zeros((K, acts.shape[1]))
    coef[np.arange(K), np.arange(K)] = 3.0  # the probe reads each class off its own unit
    res = explanation_precision(acts, coef, np.zeros(K), np.arange(K), acts, labels, np.arange(len(labels)),
                                n_units=1)
    assert res["accuracy"] == 1.0 and res["n_explained"] == len(labels)
    assert res["precision"] == 1.0
    assert res["chance"] == pytest.approx(0.25)


def test_a_random_explanation_scores_near_chance():
    rng = np.random.default_rng(1)
    n, U, K = 600, 64, 4
    labels = rng.integers(0, K, n)
    acts = rng.random((n, U)) * (rng.random((n, U)) < 0.5)  # units unrelated to the label
    coef = rng.standard_normal((K, U))
    res = explanation_precision(acts, coef, np.zeros(K), np.arange(K), acts, labels, np.arange(n))
    # only the rows the random probe gets right count; their shown images are a label-blind draw
    assert res["n_explained"] > 50
    assert abs(res["precision"] - res["chance"]) < 0.06
    assert res["chance"] == pytest.approx(0.25, abs=0.05)


def test_contrastive_precision_beats_plain_when_a_dense_unit_dominates():
    acts, labels = _planted(seed=2)
    K = 4
    dense = np.ones((len(labels), 1)) * 5.0 + np.random.default_rng(3).random((len(labels), 1))
    X = np.concatenate([acts, dense], axis=1)
    coef = np.zeros((K, X.shape[1]))
    coef[np.arange(K), np.arange(K)] = 1.0
    coef[:, -1] = 2.0  # a dense unit every class leans on: it wins the plain logit share
    args = (X, coef, np.zeros(K), np.arange(K), X, labels, np.arange(len(labels)))
    plain = explanation_precision(*args, mode="logit", n_units=1)
    con = explanation_precision(*args, mode="contrastive", n_units=1)
    assert con["precision"] == 1.0
    assert plain["precision"] < 0.5
