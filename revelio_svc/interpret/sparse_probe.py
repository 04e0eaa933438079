"""k-sparse probing (Gurnee et al. 2023): how much of a concept k units carry, for k = 1 … 64.

A dictionary whose units align with a concept needs few of them to predict it; a dense probe on all
units cannot tell that apart from a concept smeared over many units. For each k the probe sees only
the k units ranked best for the concept, ranked on TRAIN rows only:

    score_u = max_c |mean(a_u | y = c) − mean(a_u | y ≠ c)| / std(a_u)      (train rows)

(the largest standardised one-vs-rest class-mean difference, so the scale of a unit does not matter),
then fits a multinomial logistic regression on those k standardised units (train rows) and reports
test accuracy. Any (n_images, n_units) activation matrix works: SAE latents, controls, channels.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

KS = (1, 2, 4, 8, 16, 32, 64)


def rank_units(acts_train: np.ndarray, y_train: np.ndarray) -> np.ndarray:
    """Unit indices ordered best first by the standardised class-mean difference (module docstring).

    Ties (e.g. constant units, score 0) keep index order.
    """
    a = np.asarray(acts_train, np.float64)
    y = np.asarray(y_train)
    classes = np.unique(y)
    sd = a.std(0)
    score = np.zeros(a.shape[1])
    total = a.sum(0)
    n = len(y)
    for c in classes:
        on = y == c
        k = int(on.sum())
        if k == 0 or k == n:
            continue
        mu_c = a[on].mean(0)
        mu_rest = (total - a[on].sum(0)) / (n - k)
        score = np.maximum(score, np.abs(mu_c - mu_rest))
    with np.errstate(invalid="ignore", divide="ignore"):
        score = np.where(sd > 1e-12, score / np.where(sd > 1e-12, sd, 1.0), 0.0)
    return np.argsort(-score, kind="stable")


def sparse_probe_curve(acts: np.ndarray, labels: np.ndarray, is_test: np.ndarray, ks: Sequence[int] = KS,
                       C: float = 1.0, max_iter: int = 2000) -> dict[int, float]:
    """Test accuracy of a logistic-regression probe on the top-k units (chosen on train rows), per k.

    k larger than the number of units uses them all.
    """
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    acts = np.asarray(acts, np.float64)
    labels = np.asarray(labels)
    test = np.asarray(is_test, bool)
    if acts.shape[0] != labels.shape[0] or test.shape[0] != labels.shape[0]:
        raise ValueError(f"acts ({acts.shape[0]}), labels ({labels.shape[0]}) and is_test ({test.shape[0]}) "
                         "must have one row per image")
    if test.all() or not test.any():
        raise ValueError("sparse probing needs both train and test rows")
    Xtr, ytr, Xte, yte = acts[~test], labels[~test], acts[test], labels[test]
    order = rank_units(Xtr, ytr)
    out: dict[int, float] = {}
    for k in ks:
        sel = order[:min(k, acts.shape[1])]
        mu, sd = Xtr[:, sel].mean(0), Xtr[:, sel].std(0)
        sd[sd < 1e-12] = 1.0
        with threadpool_limits(1):
            clf = LogisticRegression(C=C, max_iter=max_iter)
            clf.fit((Xtr[:, sel] - mu) / sd, ytr)
            out[int(k)] = float((clf.predict((Xte[:, sel] - mu) / sd) == yte).mean())
    return out
